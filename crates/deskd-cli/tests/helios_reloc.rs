//! Issue 24, item 5: `deskd rebuild -f --config FILE` of a volume whose `desktop_location` is
//! set moves its desktop there and leaves `.Desktop` as the relocation symlink (seed 002), and
//! a start that leaves an existing desktop in the root says so in the log.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A configuration file serving `vol` with `desktop_location = "desktops"` under `state`.
fn config_with_location(env: &Env) -> PathBuf {
    let cfg = env.path("deskd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nstate_dir = \"{}\"\n[defaults]\ndesktop_location = \"desktops\"\n[volume.\"{}\"]\n",
            env.path("state").display(),
            env.path("vol").display()
        ),
    )
    .unwrap();
    cfg
}

/// Where `desktop_location` puts the desktop of the env's `vol`.
fn relocated_desktop(env: &Env) -> PathBuf {
    let vol = std::fs::canonicalize(env.path("vol")).unwrap();
    env.path("state/desktops")
        .join(vol.strip_prefix("/").unwrap())
        .join(".Desktop")
}

/// A volume served without a location: its desktop is in its root, and `vol/f` has an ID.
fn volume_with_desktop_in_root(env: &mut Env) -> u32 {
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/f"]);
    let id = env.id_of(&env.path("vol/f"));
    env.term();
    assert!(std::fs::symlink_metadata(env.path("vol/.Desktop"))
        .unwrap()
        .file_type()
        .is_file());
    id
}

#[test]
fn a_start_leaving_the_desktop_in_the_root_says_so() {
    let mut env = Env::new(&["vol", "state"]);
    volume_with_desktop_in_root(&mut env);
    let cfg = config_with_location(&env);
    env.start(&["--config", cfg.to_str().unwrap()]);
    env.wait_for_log(
        "desktop_location applies only to a volume that has no desktop yet; this one stays at",
        1,
    );
    assert!(std::fs::symlink_metadata(env.path("vol/.Desktop"))
        .unwrap()
        .file_type()
        .is_file());
    assert!(!relocated_desktop(&env).exists());
}

#[test]
fn rebuild_fresh_moves_the_desktop_to_its_location_and_links_it() {
    let mut env = Env::new(&["vol", "state"]);
    let id = volume_with_desktop_in_root(&mut env);
    let cfg = config_with_location(&env);

    // A user of the volume plants the temporary link name, pointing at a file of someone else.
    let victim = env.path("victim");
    std::fs::write(&victim, b"not a desktop").unwrap();
    let planted = env.path("vol/.Desktop-relocate");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::lchown(&planted, Some(65534), Some(65534)).unwrap();
    }

    let vol = env.path("vol");
    env.deskd_ok(&[
        "rebuild",
        "-f",
        "--config",
        cfg.to_str().unwrap(),
        vol.to_str().unwrap(),
    ]);

    let target = relocated_desktop(&env);
    let link = env.path("vol/.Desktop");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), target);
    assert!(std::fs::symlink_metadata(&target).unwrap().is_file());
    assert_eq!(std::fs::read(&victim).unwrap(), b"not a desktop");
    assert!(std::fs::symlink_metadata(&planted).is_err());
    assert!(!Path::new(&format!("{}-wal", link.display())).exists());
    assert!(sqlite3(&target, "PRAGMA integrity_check").contains("ok"));

    // The server opens the relocated desktop, says nothing about a desktop left behind, and
    // the file keeps its ID.
    env.start(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(env.id_of(&env.path("vol/f")), id);
    env.dt_ok(&[b"touch", b"vol/g"]);
    env.term();
    assert!(!env.log_text().contains("this one stays at"));
    let paths = desktop_paths(target.parent().unwrap());
    assert_eq!(paths.get("f"), Some(&id), "{paths:?}");
    assert!(paths.contains_key("g"), "{paths:?}");

    // A second rebuild -f follows the link and leaves it where it points.
    env.deskd_ok(&[
        "rebuild",
        "-f",
        "--config",
        cfg.to_str().unwrap(),
        vol.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_link(&link).unwrap(), target);
}

#[test]
fn moving_a_served_desktop_is_refused() {
    let mut env = Env::new(&["vol", "state"]);
    volume_with_desktop_in_root(&mut env);
    let cfg = config_with_location(&env);
    env.start(&["--config", cfg.to_str().unwrap()]);
    let vol = env.path("vol");
    let out = env.deskd(&[
        "rebuild",
        "-f",
        "--config",
        cfg.to_str().unwrap(),
        vol.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("works offline only"),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::symlink_metadata(env.path("vol/.Desktop"))
        .unwrap()
        .file_type()
        .is_file());
}

/// A user who owns a volume (and so may rebuild it) and runs `rebuild -f --config` with a
/// location of their own choosing makes a link only they own: the server does not follow it,
/// so no one but an administrator can point a served desktop elsewhere.
#[test]
fn a_users_relocation_is_not_followed_by_the_server() {
    use std::os::unix::fs::chown;
    let mut env = Env::new(&["vol", "state"]);
    volume_with_desktop_in_root(&mut env);
    let cfg = config_with_location(&env);
    env.linked_for_others(DESKD);
    if !rustix::process::geteuid().is_root() {
        return skip("needs root to run deskd as nobody");
    }
    for p in ["vol", "vol/f", "vol/.Desktop", "state"] {
        chown(env.path(p), Some(65534), Some(65534)).unwrap();
    }
    let vol = env.path("vol");
    let out = env
        .as_nobody(
            DESKD,
            &[
                b"rebuild",
                b"-f",
                b"--config",
                cfg.to_str().unwrap().as_bytes(),
                vol.to_str().unwrap().as_bytes(),
            ],
        )
        .expect("runs as root");
    assert!(out.status.success(), "{}", stderr(&out));
    let link = env.path("vol/.Desktop");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());

    // The volume is left unserved (here the only one, so the server does not start).
    let out = env.serve_refused(&env.socket, &["--config", cfg.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("relocation link owned by uid 65534"),
        "{}",
        stderr(&out)
    );
}

/// HELIOS's `rebuild -f VOLUME` (contrib/helios/bin/rebuild) passes deskd's configuration file
/// on, so a volume with `desktoplocation` gets its desktop moved, as on a HELIOS host; once
/// moved, `rebuild -f` of the served volume runs online (nothing is left to move).
#[test]
fn helios_rebuild_fresh_moves_the_desktop_and_a_moved_one_rebuilds_online() {
    let mut env = Env::new(&["vol", "state"]);
    let id = volume_with_desktop_in_root(&mut env);
    let cfg = config_with_location(&env);
    let deskd_dir = Path::new(DESKD).parent().unwrap().display().to_string();
    let helios_rebuild =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/helios/bin/rebuild");
    let vol = env.path("vol");
    let run = |env: &Env| {
        Command::new("perl")
            .arg(&helios_rebuild)
            .args(["-f", vol.to_str().unwrap()])
            .env(
                "PATH",
                format!("{deskd_dir}:{}", std::env::var("PATH").unwrap_or_default()),
            )
            .env("DESKD_SOCKET", &env.socket)
            .env("DESKD_CONFIG", &cfg)
            .output()
            .unwrap()
    };
    let out = run(&env);
    assert!(out.status.success(), "{}", stderr(&out));
    let target = relocated_desktop(&env);
    assert_eq!(
        std::fs::read_link(env.path("vol/.Desktop")).unwrap(),
        target
    );

    env.start(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(env.id_of(&env.path("vol/f")), id);
    let out = run(&env);
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_for_log("online rebuild done", 1);
    assert_eq!(env.id_of(&env.path("vol/f")), id);
    assert_eq!(
        std::fs::read_link(env.path("vol/.Desktop")).unwrap(),
        target
    );
}
