//! Hostile-user tests, part `ids` (see main.rs).
