//! The checkpointer thread (issue 22's folder tree): the checkpoints nobody waits for run
//! beside the writer, so a write is answered while one runs; `deskd flush` and `deskd freeze`
//! keep their truncating checkpoint and wait for a running one; a freeze keeps it off the
//! desktop; status says what is not yet checkpointed. The server's test hook
//! `DESKD_TEST_HOLD_CHECKPOINT_UNTIL` holds each of its rounds as a slow checkpoint would.

mod common;
use common::*;
use std::time::{Duration, Instant};

/// A server of `vol` with the smallest `wal_limit` (1 MiB: the checkpointer is asked at
/// 256 KiB not yet checkpointed), no timed checkpoint during the test, and its checkpoint
/// rounds held until `release-checkpoint` exists.
fn holding_checkpoints() -> Env {
    let mut env = Env::new(&["vol"]);
    let release = env.path("release-checkpoint").display().to_string();
    env.server_env
        .push(("DESKD_TEST_HOLD_CHECKPOINT_UNTIL".into(), release));
    env.serve_with_defaults(
        "vol",
        "wal_limit = 1048576\nflush_delay = 3600\nidle_close = 3600\n",
    );
    env
}

/// Register `n` new files named `{prefix}-…`: about 12 KiB of WAL each.
fn register(env: &Env, prefix: &str, n: usize) {
    std::fs::create_dir_all(env.path("vol/many")).unwrap();
    let names: Vec<String> = (0..n)
        .map(|i| format!("many/{prefix}-a-fairly-long-file-name-{i:05}.txt"))
        .collect();
    make_and_register(env, "vol", &names);
}

fn wal_len(env: &Env) -> u64 {
    std::fs::metadata(env.path("vol/.Desktop-wal"))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Wait until status says nothing is left to checkpoint.
fn wait_checkpointed(env: &Env) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = env.status_json();
        if s["wal_bytes"] == 0 {
            return s;
        }
        assert!(Instant::now() < deadline, "not checkpointed: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_write_is_answered_while_a_wal_limit_checkpoint_runs() {
    let env = holding_checkpoints();
    // One at a time, each its own commit, until the WAL passes a quarter of its limit and the
    // checkpointer's round starts (and is held).
    let mut c = env.client();
    let vol = c.open_volume(&env.path("vol")).unwrap().vol;
    std::fs::create_dir_all(env.path("vol/one")).unwrap();
    let mut n = 0;
    while !env.log_text().contains("test hook: checkpoint held") {
        assert!(n < 2000, "no checkpoint asked for: {}", env.log_text());
        let name = format!("one/file-{n:05}");
        std::fs::write(env.path(&format!("vol/{name}")), b"").unwrap();
        register_pipelined(&mut c, vol, &[name]);
        n += 1;
    }
    assert_eq!(env.status_json()["last_flush"], 0, "the round is held");
    // The round holds the checkpoint: writes are still answered, one by one and in a batch.
    let began = Instant::now();
    for i in 0..5 {
        env.dt_ok(&[b"touch", format!("vol/during-{i}").as_bytes()]);
    }
    register(&env, "held", 20);
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "writes waited for the checkpoint: {:?}",
        began.elapsed()
    );
    let before = env.status_json();
    assert!(before["wal_bytes"].as_u64().unwrap() > 0, "{before}");
    // `deskd flush` waits for the running round, then truncates as it always did.
    let flush = env
        .command_for(DESKD, &[b"flush"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::write(env.path("release-checkpoint"), b"").unwrap();
    let out = flush.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(wal_len(&env), 0, "a flush still empties the WAL file");
    let s = wait_checkpointed(&env);
    assert!(s["last_flush"].as_i64().unwrap() > 0, "{s}");
    assert_eq!(s["objects"].as_u64().unwrap(), 1 + 1 + n + 5 + 1 + 20);
}

#[test]
fn the_wal_limit_checkpoint_reuses_the_wal_and_status_says_what_is_left() {
    let env = holding_checkpoints();
    // Past a quarter of the limit: the checkpointer's round is asked for (and held until every
    // batch written is done, so it copies them all: a round that ended between two commits
    // of a batch, as on a loaded CI machine, left the rest below the size that asks for
    // another), then the WAL file stays.
    let mut batches = 0;
    while !env.log_text().contains("test hook: checkpoint held") {
        assert!(batches < 100, "no checkpoint asked for: {}", env.log_text());
        register(&env, &format!("first{batches}"), 40);
        batches += 1;
    }
    std::fs::write(env.path("release-checkpoint"), b"").unwrap();
    let s = wait_checkpointed(&env);
    assert!(s["last_flush"].as_i64().unwrap() > 0, "{s}");
    let kept = wal_len(&env);
    assert!(kept > 256 << 10, "the WAL file is kept ({kept} bytes)");
    // Writing on restarts the WAL from its start: the file does not grow, status counts only
    // the new frames. (The checkpointer held again meanwhile: it would copy them 10 ms after
    // the write, before a slow status call.)
    std::fs::remove_file(env.path("release-checkpoint")).unwrap();
    env.dt_ok(&[b"touch", b"vol/after"]);
    let s = env.status_json();
    let pending = s["wal_bytes"].as_u64().unwrap();
    assert!(pending > 0 && pending < 64 << 10, "{s}");
    assert_eq!(wal_len(&env), kept);
    std::fs::write(env.path("release-checkpoint"), b"").unwrap();
    // Much more than the limit, in bursts: the WAL stays bounded, nothing is lost.
    for round in 0..6 {
        register(&env, &format!("burst{round}"), 200);
        let len = wal_len(&env);
        assert!(len < 3 << 20, "WAL grew to {len} bytes with a 1 MiB limit");
    }
    assert_eq!(
        env.status_json()["objects"].as_u64().unwrap(),
        2 + 40 * batches + 1 + 1200
    );
}

#[test]
fn a_freeze_keeps_the_checkpointer_off_the_desktop() {
    let env = holding_checkpoints();
    std::fs::write(env.path("release-checkpoint"), b"").unwrap();
    env.dt_ok(&[b"touch", b"vol/before"]);
    env.deskd_ok(&["freeze", "60"]);
    let frozen = std::fs::read(env.path("vol/.Desktop")).unwrap();
    // Far past a quarter of the limit, and past the limit itself: no checkpoint of any kind.
    register(&env, "frozen", 150);
    assert_eq!(std::fs::read(env.path("vol/.Desktop")).unwrap(), frozen);
    let s = env.status_json();
    assert!(s["wal_bytes"].as_u64().unwrap() > 1 << 20, "{s}");
    let refused = env.deskd(&["flush"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert_eq!(std::fs::read(env.path("vol/.Desktop")).unwrap(), frozen);
    // Thawed: the next write finds the WAL past its limit, and it is checkpointed.
    env.deskd_ok(&["thaw"]);
    env.dt_ok(&[b"touch", b"vol/after"]);
    wait_checkpointed(&env);
    assert_ne!(std::fs::read(env.path("vol/.Desktop")).unwrap(), frozen);
    assert_eq!(
        env.status_json()["objects"].as_u64().unwrap(),
        1 + 1 + 1 + 150 + 1
    );
}

/// The server's descriptors of the volume's `.Desktop-shm` (SQLite's and the wal-index's):
/// (of the file there now, of removed ones).
fn shm_descriptors(env: &Env) -> (usize, usize) {
    let pid = env.server.as_ref().unwrap().id();
    let shm = env.path("vol/.Desktop-shm").display().to_string();
    let targets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .map(|target| target.display().to_string())
        .collect();
    let removed = format!("{shm} (deleted)");
    (
        targets.iter().filter(|t| **t == shm).count(),
        targets.iter().filter(|t| **t == removed).count(),
    )
}

#[test]
fn reopening_a_volume_does_not_pile_up_wal_index_descriptors() {
    // The wal-index descriptor is not closed while SQLite may lock the file, but one of a
    // file SQLite removed at the volume's close is, at the next opening.
    let mut env = Env::new(&["vol"]);
    env.set_read_only(false);
    env.start(&["--config", env.path("deskd.toml").to_str().unwrap()]);
    env.dt_ok(&[b"touch", b"vol/first"]);
    let (first, 0) = shm_descriptors(&env) else {
        panic!("no removed -shm yet");
    };
    let mut reloads = 0;
    for round in 0..8 {
        for read_only in [true, false] {
            env.set_read_only(read_only);
            reloads += 1;
            env.sighup(reloads);
        }
        env.dt_ok(&[b"touch", format!("vol/after-{round}").as_bytes()]);
    }
    // The last close's may still be open (removed after the new opening began).
    let (now, removed) = shm_descriptors(&env);
    assert!(
        now <= first && removed <= 1,
        "{first} at first; after 16 reopenings {now}, and {removed} of removed files"
    );
}
