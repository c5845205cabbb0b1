//! Item 6 of issue 24: when the start-up check of a desktop fails, `auto_repair = true` starts
//! an online repair by itself (as HELIOS rebuilds in the background); with `auto_repair =
//! false` (the default) nothing runs until it is turned on, which a SIGHUP applies.

mod common;

use common::{sqlite3, Env};

/// Serve `vol` once to give `vol/dir/file` an ID, stop cleanly, then point the file's record
/// at a parent that does not exist, which the start-up check reports. Returns the IDs of
/// `dir` and `file`.
fn damaged_desktop(env: &mut Env) -> (u32, u32) {
    std::fs::create_dir(env.path("vol/dir")).unwrap();
    std::fs::write(env.path("vol/dir/file"), b"x").unwrap();
    env.serve_unwatched(&["vol"]);
    let dir = env.id_of(&env.path("vol/dir"));
    let file = env.id_of(&env.path("vol/dir/file"));
    env.term();
    let db = env.path("vol/.Desktop");
    sqlite3(
        &db,
        &format!("PRAGMA foreign_keys=OFF; UPDATE objects SET parent = 999999 WHERE id = {file};"),
    );
    (dir, file)
}

fn write_config(env: &Env, auto_repair: Option<bool>) -> String {
    let cfg = env.path("deskd.toml");
    let setting = auto_repair.map_or(String::new(), |on| format!("auto_repair = {on}\n"));
    // Not watched: a watched volume's start-up rescan is itself an online repair, and these
    // tests are about the one auto_repair starts.
    std::fs::write(
        &cfg,
        format!(
            "[defaults]\nwatch = \"off\"\n{setting}\n[volume.\"{}\"]\n",
            env.path("vol").display()
        ),
    )
    .unwrap();
    cfg.display().to_string()
}

fn parent_of(env: &Env, id: u32) -> String {
    sqlite3(
        &env.path("vol/.Desktop"),
        &format!("SELECT parent FROM objects WHERE id = {id}"),
    )
}

fn status_json(env: &Env) -> serde_json::Value {
    let out = env.deskd_ok(&["status", "--json"]);
    serde_json::from_str(out.lines().next().unwrap()).unwrap()
}

#[test]
fn auto_repair_fixes_a_desktop_whose_check_failed() {
    let mut env = Env::new(&["vol"]);
    let (dir, file) = damaged_desktop(&mut env);
    let cfg = write_config(&env, Some(true));
    env.start(&["--config", &cfg]);
    env.wait_for_log("desktop check failed", 1);
    env.wait_for_log("automatic repair started", 1);
    env.wait_for_log("automatic repair finished; the desktop check passes", 1);
    let log = env.log_text();
    assert!(log.contains("online rebuild done"), "{log}");
    // The record is back under its directory, with its ID kept.
    env.deskd_ok(&["flush"]);
    assert_eq!(parent_of(&env, file), dir.to_string());
    assert_eq!(env.id_of(&env.path("vol/dir/file")), file);
    // Status shows the finished repair and no problems left.
    let status = status_json(&env);
    assert_eq!(status["rebuild"]["mode"], "repair", "{status}");
    assert_eq!(status["rebuild"]["phase"], "done", "{status}");
    assert_eq!(status["check_problems"], serde_json::json!([]), "{status}");
    env.term();
}

#[test]
fn without_auto_repair_nothing_runs_until_a_sighup_turns_it_on() {
    let mut env = Env::new(&["vol"]);
    let (dir, file) = damaged_desktop(&mut env);
    // Not set: the default (false).
    let cfg = write_config(&env, None);
    env.start(&["--config", &cfg]);
    env.wait_for_log("desktop check failed", 1);
    let status = status_json(&env);
    assert!(status["rebuild"].is_null(), "{status}");
    assert_ne!(status["check_problems"], serde_json::json!([]), "{status}");
    assert_eq!(parent_of(&env, file), "999999");
    // Explicitly false, applied at SIGHUP: still nothing.
    write_config(&env, Some(false));
    env.sighup(1);
    let status = status_json(&env);
    assert!(status["rebuild"].is_null(), "{status}");
    assert!(
        !env.log_text().contains("automatic repair"),
        "{}",
        env.log_text()
    );
    // Turned on at SIGHUP: the failed desktop is repaired now.
    write_config(&env, Some(true));
    env.sighup(2);
    env.wait_for_log("automatic repair finished; the desktop check passes", 1);
    env.deskd_ok(&["flush"]);
    assert_eq!(parent_of(&env, file), dir.to_string());
    env.term();
}
