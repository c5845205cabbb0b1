//! Issue 24, item 3: a desktop another process holds locked for writing (an `sqlite3` session
//! inside `BEGIN IMMEDIATE`). The server logs HELIOS's "Warning, desktop DB busy by another
//! process" once, clients' writes wait (at most `busy_wait`) instead of failing, and what they
//! made on disk gets its ID once the lock is released.

mod common;
use common::*;
use std::process::{Child, Stdio};
use std::time::Duration;

const WARNING: &str = "Warning, desktop DB busy by another process";

fn finished(child: Child, what: &str) -> std::process::Output {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn clients_wait_while_sqlite3_holds_the_desktop_and_their_objects_get_ids() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"mkdir", b"vol/pub"]);
    std::os::unix::fs::chown(env.path("vol/pub"), Some(65534), Some(65534)).unwrap();
    let desktop = env.path("vol/.Desktop");
    let lock = Sqlite3Lock::take(&desktop);
    // Root makes a directory; nobody (the unprivileged user) makes a file in its own one.
    let mkdir = env
        .command_for(DT, &[b"mkdir", b"vol/d"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let touch = env.spawn_as_user(65534, DT, &[b"touch", b"vol/pub/f"]);
    env.wait_for_log(WARNING, 1);
    // The server still answers control requests while the writes wait, saying why.
    let flush = env.deskd(&["flush"]);
    assert!(!flush.status.success(), "a flush cannot checkpoint now");
    assert!(
        stderr(&flush).contains("busy by another process"),
        "{}",
        stderr(&flush)
    );
    // A freeze (a backup's first step) cannot flush either, and says so at once.
    let freeze = env.deskd(&["freeze", "5"]);
    assert!(!freeze.status.success(), "a freeze cannot checkpoint now");
    assert!(
        stderr(&freeze).contains("busy by another process"),
        "{}",
        stderr(&freeze)
    );
    lock.release();
    finished(mkdir, "dt mkdir");
    finished(touch, "dt touch as nobody");
    env.wait_for_log("desktop DB no longer busy", 1);
    // What each client made on disk has its ID, recorded in the desktop itself.
    let ids = env.ids(&[env.path("vol/d"), env.path("vol/pub/f")]);
    for (entry, name) in ids.iter().zip(["d", "f"]) {
        let id = entry["id"].as_u64().unwrap();
        assert_eq!(
            sqlite3(
                &desktop,
                &format!("SELECT name FROM objects WHERE id = {id}")
            ),
            name
        );
    }
    let log = env.log_text();
    assert_eq!(
        log.matches(WARNING).count(),
        1,
        "once per busy spell: {log}"
    );
    assert!(!log.contains("commit failed"), "{log}");
}

#[test]
fn a_write_that_waited_busy_wait_gets_busy_and_its_object_an_id_later() {
    let mut env = Env::new(&["vol"]);
    let cfg = env.path("deskd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[defaults]\nbusy_wait = 10\n\n[volume.\"{}\"]\n",
            env.path("vol").display()
        ),
    )
    .unwrap();
    env.start(&["--config", cfg.to_str().unwrap()]);
    let desktop = env.path("vol/.Desktop");
    let before = objects_dump(&desktop);
    let lock = Sqlite3Lock::take(&desktop);
    let out = env.dt(&[b"mkdir", b"vol/d"]);
    assert!(!out.status.success(), "refused after busy_wait");
    let err = stderr(&out);
    assert!(
        err.contains("busy by another process") && err.contains("nothing was recorded"),
        "{err}"
    );
    assert!(env.log_text().contains(WARNING), "{}", env.log_text());
    lock.release();
    assert_eq!(objects_dump(&desktop), before, "nothing was recorded");
    // The directory dt made is on disk; the next look gives it its ID.
    let id = env.id_of(&env.path("vol/d"));
    assert_eq!(
        sqlite3(
            &desktop,
            &format!("SELECT name FROM objects WHERE id = {id}")
        ),
        "d"
    );
    // The next write commits at once: the spell is over (within it, it would wait busy_wait,
    // 10 s; the bound leaves a loaded CI machine 8 s for a dt run and its commit).
    let began = std::time::Instant::now();
    env.dt_ok(&[b"touch", b"vol/e"]);
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "{:?}",
        began.elapsed()
    );
    env.wait_for_log("desktop DB no longer busy", 1);
}

#[test]
fn pipelined_writes_of_several_clients_wait_and_all_commit() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    let desktop = env.path("vol/.Desktop");
    let count = || -> u64 {
        sqlite3(&desktop, "SELECT count(*) FROM objects")
            .parse()
            .unwrap()
    };
    let before = count();
    let lock = Sqlite3Lock::take(&desktop);
    std::thread::scope(|s| {
        let env = &env;
        let clients: Vec<_> = (0..3)
            .map(|c| {
                s.spawn(move || {
                    let paths: Vec<String> = (0..300).map(|i| format!("c{c}-{i}")).collect();
                    make_and_register(env, "vol", &paths);
                })
            })
            .collect();
        env.wait_for_log(WARNING, 1);
        lock.release();
        for c in clients {
            c.join().expect("every registration acknowledged");
        }
    });
    assert_eq!(count(), before + 900, "every waiting write committed");
    assert_eq!(env.log_text().matches(WARNING).count(), 1);
}

#[test]
fn a_reload_puts_off_reopening_a_desktop_another_process_holds() {
    let mut env = Env::new(&["vol"]);
    env.set_read_only(false);
    let config = env.path("deskd.toml").display().to_string();
    env.start(&["--config", &config]);
    let desktop = env.path("vol/.Desktop");
    let lock = Sqlite3Lock::take(&desktop);
    let mkdir = env
        .command_for(DT, &[b"mkdir", b"vol/d"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    env.wait_for_log(WARNING, 1);
    // A read_only change needs the desktop closed and opened again: neither can be done while
    // sqlite3 holds it, so the volume stays as it is, served, and the log says why.
    env.set_read_only(true);
    env.sighup(1);
    let log = env.log_text();
    assert!(
        log.contains("desktop DB busy by another process; read_only changes at a reload"),
        "{log}"
    );
    lock.release();
    finished(mkdir, "dt mkdir");
    let id = env.id_of(&env.path("vol/d"));
    assert_eq!(
        sqlite3(
            &desktop,
            &format!("SELECT name FROM objects WHERE id = {id}")
        ),
        "d"
    );
    // The next reload applies it.
    env.sighup(2);
    let out = env.dt(&[b"mkdir", b"vol/e"]);
    assert!(!out.status.success(), "read-only now: {}", stderr(&out));
}
