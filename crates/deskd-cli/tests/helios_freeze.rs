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
