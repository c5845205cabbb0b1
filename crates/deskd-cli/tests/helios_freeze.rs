//! Issue 24, item 2: a second freeze never shortens a running one (a backup script's
//! `freeze 60` must not be cut short by someone's `freeze 5`), it only extends it, and the
//! HELIOS `FreezeTime (N) > FreezeMax (M)` message stays as it was.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn frozen_until(env: &Env) -> i64 {
    let out = env.deskd_ok(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    status["frozen_until"]
        .as_i64()
        .unwrap_or_else(|| panic!("not frozen: {out}"))
}

#[test]
fn a_shorter_second_freeze_keeps_the_running_ones_end() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/a"]);
    let db = env.path("vol/.Desktop");

    let first = env.deskd_ok(&["freeze", "60"]);
    assert!(first.contains("frozen until"), "{first}");
    let until = frozen_until(&env);
    let frozen_bytes = std::fs::read(&db).unwrap();

    // A shorter freeze answers with the running freeze's end, which stays.
    let second = env.deskd_ok(&["freeze", "5"]);
    let first_end = first.lines().last().unwrap();
    assert!(
        second.contains(first_end),
        "the second freeze reports another end: {second} (first: {first})"
    );
    assert_eq!(frozen_until(&env), until, "the freeze was shortened");
    env.wait_for_log("already frozen for longer; the freeze keeps its end", 1);

    // Still frozen: writes go on into the WAL, .Desktop stays byte-identical, flush refuses.
    for i in 0..20 {
        env.dt_ok(&[b"touch", format!("vol/during-{i}").as_bytes()]);
    }
    assert_eq!(env.deskd(&["flush"]).status.code(), Some(1));
    assert_eq!(std::fs::read(&db).unwrap(), frozen_bytes);

    // Over freeze_max on a frozen volume: the HELIOS message as before, and the end is kept
    // or moved later, never earlier.
    let out = env.deskd_ok(&["freeze", "500"]);
    assert!(
        out.contains("FreezeTime (500) > FreezeMax (60), using new value: 60"),
        "{out}"
    );
    assert!(frozen_until(&env) >= until);

    // thaw still ends it at once.
    env.deskd_ok(&["thaw"]);
    env.deskd_ok(&["flush"]);
    assert_ne!(std::fs::read(&db).unwrap(), frozen_bytes);
}

#[test]
fn a_longer_second_freeze_extends_the_running_one() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.deskd_ok(&["freeze", "5"]);
    let until = frozen_until(&env);
    env.deskd_ok(&["freeze", "40"]);
    assert!(
        frozen_until(&env) >= until + 30,
        "not extended: {} then {}",
        until,
        frozen_until(&env)
    );
    env.wait_for_log("freeze extended", 1);
    env.deskd_ok(&["thaw"]);
}

/// The timer itself, not only what status says: `freeze 3` then `freeze 1` ends after 3 s.
#[test]
fn the_freeze_ends_when_the_longer_one_is_up() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    let began = Instant::now();
    env.deskd_ok(&["freeze", "3"]);
    env.deskd_ok(&["freeze", "1"]);
    env.wait_for_log("freeze ended", 1);
    assert!(
        began.elapsed() >= Duration::from_millis(2500),
        "the freeze ended after {:?}, before the first one's 3 s",
        began.elapsed()
    );
}

// Issue 24, item 8: the messages an administrator coming from HELIOS reads.

/// After a crash the HELIOS line stays word for word (scripts grep it), and deskd says that
/// the WAL was recovered and no rebuild is needed.
#[test]
fn missing_db_shutdown_keeps_helios_words_and_says_no_rebuild_is_needed() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/a"]);
    let id = env.id_of(&env.path("vol/a"));
    env.kill9();
    env.serve(&["vol"]);
    let log = env.log_text();
    let root = std::fs::canonicalize(env.path("vol")).unwrap();
    assert!(
        log.contains(&format!("missing DB shutdown:[{}] at ", root.display()))
            && log.contains(
                "recommend rebuild to re-create desktop file (deskd: the committed writes were \
                 recovered from the WAL; no rebuild is needed)"
            ),
        "{log}"
    );
    assert_eq!(env.id_of(&env.path("vol/a")), id, "the write was recovered");
}

/// `cannot connect` names the socket tried, where it came from, and the rule.
#[test]
fn cannot_connect_names_the_socket_tried_and_the_socket_rule() {
    let env = Env::new(&["vol"]);
    let given = env.path("given.sock");
    let out = env.deskd(&["status", "--socket", given.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.contains(&format!(
            "cannot connect to deskd at {} (from --socket; the socket is --socket, else \
             $DESKD_SOCKET, else /run/deskd/deskd.sock for root",
            given.display()
        )),
        "{text}"
    );
    // The harness sets $DESKD_SOCKET (to a socket nothing listens on yet).
    let out = env.deskd(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.contains(&format!(
            "cannot connect to deskd at {} (from $DESKD_SOCKET; the socket is --socket",
            env.socket.display()
        )),
        "{text}"
    );
    assert_eq!(
        text.matches(&*env.socket.to_string_lossy()).count(),
        1,
        "{text}"
    );
}

/// A file in a folder the user may not search is "permission denied", not "no such file".
#[test]
fn a_name_the_user_may_not_reach_is_permission_denied_not_missing() {
    use std::os::unix::fs::PermissionsExt;
    let mut env = Env::new(&["vol"]);
    std::fs::create_dir(env.path("vol/secret")).unwrap();
    std::fs::write(env.path("vol/secret/f"), b"x").unwrap();
    std::fs::set_permissions(
        env.path("vol/secret"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    env.serve(&["vol"]);
    let secret = env.path("vol/secret/f");
    let elsewhere = env.path("vol/h");
    let Some(out) = env.as_nobody(DT, &[b"info", secret.as_os_str().as_encoded_bytes()]) else {
        return skip("needs root to run as nobody");
    };
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim_end(),
        format!("dt: {}: permission denied", secret.display())
    );
    let out = env
        .as_nobody(
            DT,
            &[
                b"mv",
                secret.as_os_str().as_encoded_bytes(),
                elsewhere.as_os_str().as_encoded_bytes(),
            ],
        )
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim_end(),
        format!("dt: cannot move {}: permission denied", secret.display())
    );
    assert!(secret.exists() && !elsewhere.exists());
    // Behind a volume root the user may not search: not "not in a deskd volume".
    std::fs::set_permissions(env.path("vol"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = env
        .as_nobody(DT, &[b"info", secret.as_os_str().as_encoded_bytes()])
        .unwrap();
    assert_eq!(
        stderr(&out).trim_end(),
        format!(
            "dt: {}: permission denied (cannot search {})",
            secret.display(),
            env.path("vol").display()
        )
    );
    // The root itself, which the user may stat but not search, is found through the server
    // and shown (it is the volume's root, ID 2), not "not in a deskd volume".
    let root = env.path("vol");
    let out = env
        .as_nobody(DT, &[b"info", root.as_os_str().as_encoded_bytes()])
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("id:        2"),
        "{out:?}"
    );
    std::fs::set_permissions(env.path("vol"), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A name that is really missing is still said to be missing.
    let missing = env.path("vol/nope");
    let out = env
        .as_nobody(DT, &[b"info", missing.as_os_str().as_encoded_bytes()])
        .unwrap();
    assert_eq!(
        stderr(&out).trim_end(),
        format!("dt: {}: no such file or directory", missing.display())
    );
}

/// `rebuild -s`'s summary (standard error, only when something differs) counts the
/// differences, as many as the lines it printed; online and offline.
#[test]
fn the_scan_summary_gives_the_number_of_differences() {
    let mut env = Env::new(&["vol", "bare"]);
    std::fs::write(env.path("bare/x"), b"x").unwrap();
    // Offline, no desktop: one difference (one line).
    let out = env.deskd(&["rebuild", "-s", "bare"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(
        stderr(&out).contains("rebuild bare: 1 difference, "),
        "{}",
        stderr(&out)
    );

    // Not watched: b and c are made behind the server's back for the scan to find.
    env.serve_unwatched(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/a"]);
    std::fs::write(env.path("vol/b"), b"b").unwrap();
    std::fs::write(env.path("vol/c"), b"c").unwrap();
    let out = env.deskd(&["rebuild", "-s", "vol"]);
    assert_eq!(out.status.code(), Some(1));
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(lines >= 2, "{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        stderr(&out).contains(&format!(" pass): {lines} differences, ")),
        "{}",
        stderr(&out)
    );
    // Up to date after a repair: no output at all, as HELIOS.
    env.deskd_ok(&["rebuild", "vol"]);
    let out = env.deskd(&["rebuild", "-s", "vol"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
}

/// An error names its path once: a resource file the user may not write is said once, with
/// the kernel's reason.
#[test]
fn a_resource_file_error_names_the_file_once() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/f"]);
    let file = env.path("vol/f");
    let Some(out) = env.as_nobody(
        DT,
        &[b"set", b"-t", b"TEXT", file.as_os_str().as_encoded_bytes()],
    ) else {
        return skip("needs root to run as nobody");
    };
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    // Which of the two it meets first depends on the file system (xattrs or not).
    let xattr = format!(
        "dt: cannot write ID xattr: {}: Permission denied",
        file.display()
    );
    let rsrc = format!(
        "dt: cannot write resource file: {}: Permission denied",
        env.path("vol/.rsrc/f").display()
    );
    // (The ID mirror is a cache a reader cannot keep: not writing it is no error, and deskd
    // itself then refuses the change.)
    let server = format!(
        "dt: deskd: {}: permission denied (write it or the folder holding it)",
        file.display()
    );
    let said = text.trim_end();
    assert!(said == xattr || said == rsrc || said == server, "{text}");
    assert_eq!(text.matches(&*env.dir.path().to_string_lossy()).count(), 1);
}

/// A refused name is said once: `vol/esc/x: path leaves the volume`, not
/// `vol/esc/x: esc/x: path leaves the volume`; a protected part deeper in the path is named.
#[test]
fn a_refused_name_is_said_once() {
    let mut env = Env::new(&["vol", "outside"]);
    std::os::unix::fs::symlink(env.path("outside"), env.path("vol/esc")).unwrap();
    std::fs::create_dir(env.path("vol/dir")).unwrap();
    env.serve(&["vol"]);
    for (path, message) in [
        (
            "vol/.Desktop",
            "dt: vol/.Desktop: protected name (.Desktop and .rsrc belong to deskd)",
        ),
        ("vol/esc/x", "dt: vol/esc/x: path leaves the volume"),
        (
            "vol/dir/.rsrc/a",
            "dt: vol/dir/.rsrc/a: .rsrc: protected name (.Desktop and .rsrc belong to deskd)",
        ),
    ] {
        let out = env.dt(&[b"touch", path.as_bytes()]);
        assert_eq!(out.status.code(), Some(1), "{path}");
        assert_eq!(stderr(&out).trim_end(), message);
    }
    assert!(!env.path("outside/x").exists());
}
