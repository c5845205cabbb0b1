//! Hostile-user tests, part `mv` (see main.rs).
