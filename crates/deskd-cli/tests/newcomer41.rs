//! What the newcomer review of stop 41 found about a PostgreSQL volume whose database is down,
//! beside an SQLite volume of the same server, through the real binaries and a real
//! PostgreSQL (deskd_pg::test_cluster; a machine without PostgreSQL skips, CI fails):
//! `deskd find` over every volume prints the hits it could read and names the volume it could
//! not search (exit 1); `dt`'s read-only refusal says the database is unreachable; `deskd
//! status --json` says null, not 0, for counts it cannot read; `deskd flush` of such a volume
//! succeeds (every acknowledged write is committed already); and the `--timeout` help of
//! `deskd flush`/`freeze` (no limit by default) is theirs, not dt's.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use common::*;

/// `deskd status --volume ROOT --json`.
fn status_of(env: &Env, root: &std::path::Path) -> serde_json::Value {
    let out = env.deskd_ok(&["status", "--volume", root.to_str().unwrap(), "--json"]);
    serde_json::from_str(out.lines().next().unwrap()).unwrap()
}

#[test]
fn a_database_down_leaves_the_other_volumes_searchable_and_says_so_everywhere() {
    let Some((mut cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let mut env = Env::new(&["pg", "sq"]);
    let pg = std::fs::canonicalize(env.path("pg")).unwrap();
    let sq = std::fs::canonicalize(env.path("sq")).unwrap();
    let cfg = env.path("deskd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[volume.\"{}\"]\n[volume.\"{}\"]\n{}",
            sq.display(),
            pg.display(),
            backend_lines(&url, &pw)
        ),
    )
    .unwrap();
    env.start(&["--config", cfg.to_str().unwrap()]);
    env.dt_ok(&[b"touch", b"pg/Report-pg.pdf", b"sq/Report-sq.pdf"]);
    let all = env.deskd_ok(&["find", "report"]);
    assert_eq!(all.lines().count(), 2, "{all}");

    cluster.stop();
    // The server learns it at its next read of the database: status reads it.
    let began = Instant::now();
    let status = loop {
        let status = status_of(&env, &pg);
        if status["read_only"] == true {
            break status;
        }
        assert!(began.elapsed() < Duration::from_secs(30), "{status}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let why = status["read_only_reason"].as_str().unwrap();
    assert!(why.starts_with("database unreachable"), "{status}");
    // Counts it cannot read are null (unknown), not 0; the text says unknown.
    assert!(status["objects"].is_null(), "{status}");
    assert!(status["last_id"].is_null(), "{status}");
    assert!(status["ids_left"].is_null(), "{status}");
    let text = env.deskd_ok(&["status", "--volume", pg.to_str().unwrap()]);
    assert!(text.contains("objects:      unknown"), "{text}");
    // The SQLite volume's counts are numbers as ever.
    assert!(status_of(&env, &sq)["objects"].as_u64().unwrap() >= 2);

    // find over every volume: the SQLite volume's hit printed, the PostgreSQL volume named on
    // stderr with why, exit 1.
    let out = env.deskd(&["find", "report"]);
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    let hits = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        hits.lines().collect::<Vec<_>>(),
        vec![sq.join("Report-sq.pdf").to_str().unwrap()],
        "{said}"
    );
    assert!(
        said.contains(&format!("deskd find: {}: not searched", pg.display()))
            && said.contains("unavailable"),
        "{said}"
    );
    // One volume asked for: its error, as before.
    let out = env.deskd(&["find", "--volume", pg.to_str().unwrap(), "report"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    env.deskd_ok(&["find", "--volume", sq.to_str().unwrap(), "report"]);

    // dt's refusal names the database, not only configuration and file system.
    let out = env.dt(&[b"mkdir", b"pg/whiledown"]);
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("volume is read-only: database unreachable"),
        "{said}"
    );
    assert!(!pg.join("whiledown").exists());

    // flush of a PostgreSQL volume while its database is down: nothing to flush (every
    // acknowledged write was committed), exit 0, as documented.
    let out = env.deskd(&["flush", "--volume", pg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    cluster.restart();
    let began = Instant::now();
    while status_of(&env, &pg)["read_only"] != false {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "never writable again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let p = pg.join("after");
    env.dt_ok(&[b"mkdir", p.as_os_str().as_bytes()]);
    let out = env.deskd_ok(&["find", "report"]);
    assert_eq!(out.lines().count(), 2, "{out}");
}

/// `deskd flush` and `freeze` wait for their answer without a limit unless told one; their
/// own `--timeout` help says so, and dt's (whose verbs wait 60 s) does not.
#[test]
fn the_no_limit_timeout_note_is_on_flush_and_freeze_not_dt() {
    let env = Env::new(&[]);
    for verb in ["flush", "freeze"] {
        let help = env.deskd_ok(&[verb, "--help"]);
        let line = help.lines().find(|l| l.contains("--timeout")).unwrap();
        assert!(line.contains("Default: no limit"), "{verb}: {line}");
        assert!(!line.contains("else 60"), "{verb}: {line}");
    }
    let help = env.deskd_ok(&["status", "--help"]);
    assert!(help.contains("else 60"), "{help}");
    let out = env.dt(&[b"resolve", b"--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(!help.contains("deskd flush"), "{help}");
    assert!(help.contains("else 60"), "{help}");
}
