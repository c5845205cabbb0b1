//! The hostile-user tests (issue 21): each module attacks one promise of docs/security.md as an
//! unprivileged local user (`nobody`) against the real `deskd` and `dt` binaries, and fails on
//! any leak. They need root (to act as another uid and to mount small file systems); run
//! without it they fail rather than skip.
#[path = "../common/mod.rs"]
mod common;

mod admin;
mod ids;
mod limits;
mod mv;
mod oracle;
mod review;
