//! Hostile-user tests, part `limits` (see main.rs).
