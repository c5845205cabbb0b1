//! Shared pieces of the `deskd` and `dt` command-line tools: the connection options
//! ([`connection`]), finding which volume a path is in
//! and talking to its server ([`target`]), printing names and codes ([`output`]), and the file
//! copying that `dt cp` and cross-volume moves need ([`fsops`]) and what it does to the IDs a copy
//! carries into another volume ([`fresh_ids`]), and the mode and owner arguments
//! of `dt chmod`, `chown` and `chgrp` ([`mode`]), and the active users and memory figures
//! `deskd status` lists ([`active_users`], [`memory_figures`]); for dt, Finder flags and labels by name ([`finder`]), the `ls -l`
//! columns ([`listing`]), coreutils' questions and `-v` lines ([`interact`]) and the orders
//! they report trees in ([`walk`]), and working on files through open directory descriptors
//! rather than path names, so a name swapped for a symlink turns nothing against another file
//! ([`at`]); the afpd CNID listener of `deskd netatalk` and `deskd serve` ([`cnid_listener`]);
//! `deskd serve`'s HTTP side ([`http_side`]); `deskd migrate` between SQLite and PostgreSQL
//! ([`migrate`]) and `deskd backup` of a PostgreSQL volume ([`pg_admin`]); and the log writer that keeps one event on one
//! line, whatever a logged name holds ([`log_lines`]).

#![forbid(unsafe_code)]

pub mod active_users;
pub mod at;
pub mod cnid_listener;
pub mod connection;
pub mod finder;
pub mod fresh_ids;
pub mod fsops;
pub mod http_side;
pub mod interact;
pub mod listing;
pub mod log_lines;
pub mod memory_figures;
pub mod migrate;
pub mod mode;
pub mod output;
pub mod pg_admin;
pub mod read_cache_figures;
pub mod target;
pub mod walk;
pub mod watch_figures;
