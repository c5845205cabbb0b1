//! Hostile-user tests, part `oracle` (see main.rs).
