//! Shared pieces of the `deskd` and `dt` command-line tools: the connection options
//! ([`connection`]), finding which volume a path is in
//! and talking to its server ([`target`]), printing names and codes ([`output`]), and the file
//! copying that cross-volume moves need ([`fsops`]).

pub mod connection;
pub mod fsops;
pub mod output;
pub mod target;
