//! Hostile-user tests, part `admin` (see main.rs).
