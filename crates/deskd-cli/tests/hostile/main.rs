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

/// Start `env`'s server on `vol` with no timed checkpoint and no idle close: what it registers
/// stays in the WAL.
fn start_keeping_the_wal(env: &mut common::Env, vol: &std::path::Path) {
    let config = env.path("deskd.toml");
    std::fs::write(
        &config,
        "[defaults]\nflush_delay = 3600\nidle_close = 3600\n",
    )
    .unwrap();
    let (config, vol_arg) = (config.display().to_string(), vol.display().to_string());
    env.start(&["--config", &config, &vol_arg]);
}
