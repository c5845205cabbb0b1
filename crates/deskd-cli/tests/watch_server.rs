//! Live tracking, the server side (issue 23): a watched volume follows changes made with plain
//! file system calls (no dt), `deskd flush` is the barrier that applies what the kernel has
//! queued, status tells which watcher and how its rescan went, and a user who swaps a folder
//! for a link cannot lead the server's writes out of the volume.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::Env;

/// Serve `vol` with `settings` in its volume table, watched unless `settings` say otherwise
/// (the callers wait for the start-up rescan themselves).
fn serve_with(env: &mut Env, vol: &str, settings: &str) {
    let cfg = env.path("deskd.toml");
    fs::write(
        &cfg,
        format!(
            "[volume.\"{}\"]\n{}{settings}\n",
            env.path(vol).display(),
            // Watching is off by default: these tests ask for it unless they say otherwise.
            if settings.contains("watch") {
                ""
            } else {
                "watch = \"auto\"\n"
            }
        ),
    )
    .unwrap();
    env.start(&["--config", cfg.to_str().unwrap()]);
}

/// The value of the volume's sample of the metric `name` in `deskd metrics` (None: no sample:
/// an unwatched volume has none of the `deskd_watch_` ones).
fn watch_metric(env: &Env, vol: &std::path::Path, name: &str) -> Option<f64> {
    let text = env.deskd_ok(&["metrics"]);
    let sample = format!("{name}{{volume=\"{}\"}} ", vol.display());
    text.lines()
        .find_map(|l| l.strip_prefix(&sample))
        .map(|v| v.trim().parse().unwrap())
}

#[test]
fn a_plain_mv_keeps_its_id_once_flush_returns() {
    let mut env = Env::new(&["vol"]);
    let vol = env.path("vol");
    fs::create_dir(vol.join("in")).unwrap();
    fs::write(vol.join("report.txt"), b"x").unwrap();
    serve_with(&mut env, "vol", "");
    env.wait_for_log("watch rescan of", 2); // started, finished
    let status = env.watch_status("vol");
    let kind = status["kind"].as_str().unwrap().to_owned();
    assert!(kind == "fanotify" || kind == "inotify", "{status}");
    assert_eq!(status["rescan"]["reason"], "start");
    assert_eq!(status["rescan"]["running"], false);
    let id = env.id_of(&vol.join("report.txt"));
    // No dt: a plain rename across folders, then the barrier.
    fs::rename(vol.join("report.txt"), vol.join("in/final.txt")).unwrap();
    env.watch_barrier("vol");
    assert_eq!(env.id_of(&vol.join("in/final.txt")), id);
    assert!(
        vol.join("in/.rsrc/final.txt").is_file(),
        "the resource file follows"
    );
    assert!(!vol.join(".rsrc/report.txt").exists());
    // A new file gets its ID, resource file and mirror at once.
    fs::write(vol.join("in/new.txt"), b"y").unwrap();
    env.watch_barrier("vol");
    assert!(vol.join("in/.rsrc/new.txt").is_file());
    // A removal is followed too.
    fs::remove_file(vol.join("in/new.txt")).unwrap();
    env.watch_barrier("vol");
    assert!(!vol.join("in/.rsrc/new.txt").exists());
    env.rebuild_scan_silent("vol");
    let status = env.watch_status("vol");
    assert!(status["applied"].as_u64().unwrap() >= 3, "{status}");
    // And /metrics counts them.
    let events = watch_metric(&env, &vol, "deskd_watch_events_total");
    assert!(events.is_some_and(|n| n >= 3.0), "{events:?}");
    assert_eq!(
        watch_metric(&env, &vol, "deskd_watch_overflows_total"),
        Some(0.0)
    );
    assert!(watch_metric(&env, &vol, "deskd_watch_lag_seconds").is_some());
    // Plain status has one line of it.
    let plain = env.deskd_ok(&["status", "--volume", vol.to_str().unwrap()]);
    assert!(
        plain.contains(&format!("  watch:        {kind}")),
        "{plain}"
    );
    // The server stops with its watcher.
    env.term();
    assert!(
        env.log_text().contains("deskd stopped cleanly"),
        "{}",
        env.log_text()
    );
}

#[test]
fn a_move_made_while_deskd_was_down_keeps_its_id_after_the_start_up_rescan() {
    let mut env = Env::new(&["vol"]);
    let vol = env.path("vol");
    fs::create_dir(vol.join("a")).unwrap();
    fs::create_dir(vol.join("b")).unwrap();
    fs::write(vol.join("a/doc"), b"x").unwrap();
    serve_with(&mut env, "vol", "");
    env.wait_for_log("watch rescan of", 2);
    let id = env.id_of(&vol.join("a/doc"));
    env.watch_barrier("vol");
    env.kill9();
    // While deskd is down: a plain move (the mirror goes with the inode).
    fs::rename(vol.join("a/doc"), vol.join("b/doc moved")).unwrap();
    serve_with(&mut env, "vol", "");
    env.wait_for_log("watch rescan of", 2);
    let status = env.watch_status("vol");
    assert_eq!(status["rescan"]["reason"], "start", "{status}");
    assert_eq!(status["rescan"]["running"], false, "{status}");
    assert!(
        status["rescan"]["objects"].as_u64().unwrap() >= 4,
        "{status}"
    );
    assert_eq!(env.id_of(&vol.join("b/doc moved")), id);
    env.rebuild_scan_silent("vol");
}

#[test]
fn watch_off_leaves_changes_to_clients_and_rebuilds() {
    let mut env = Env::new(&["vol"]);
    let vol = env.path("vol");
    fs::write(vol.join("a"), b"x").unwrap();
    serve_with(&mut env, "vol", "watch = \"off\"");
    let status = env.watch_status("vol");
    assert_eq!(status["kind"], "off", "{status}");
    assert_eq!(
        watch_metric(&env, &vol, "deskd_watch_events_total"),
        None,
        "an unwatched volume has no watch metrics"
    );
    assert!(
        env.log_text().contains("not watching"),
        "{}",
        env.log_text()
    );
    env.id_of(&vol.join("a"));
    fs::rename(vol.join("a"), vol.join("b")).unwrap();
    env.watch_barrier("vol");
    // The desktop still has the old name: a rebuild reports it.
    let out = env.deskd(&["rebuild", "-s", vol.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "rebuild -s should see the move");
}

#[test]
fn a_read_only_volume_is_not_watched() {
    let mut env = Env::new(&["vol"]);
    serve_with(&mut env, "vol", "read_only = true");
    let status = env.watch_status("vol");
    assert_eq!(status["kind"], "off");
    assert!(
        status["note"].as_str().unwrap().contains("read-only"),
        "{status}"
    );
}

#[test]
fn a_folder_swapped_for_a_link_by_nobody_leads_no_write_outside() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        common::skip("needs root to run a user's commands as nobody");
        return;
    }
    let mut env = Env::new(&["vol", "outside"]);
    let vol = env.path("vol");
    let outside = env.path("outside");
    fs::write(outside.join("precious"), b"root's").unwrap();
    if let Ok(filter) = std::env::var("WATCH_TEST_LOG") {
        env.server_env.push(("DESKD_LOG".into(), filter));
    }
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&vol, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(vol.join("mine")).unwrap();
    std::os::unix::fs::chown(vol.join("mine"), Some(65534), Some(65534)).unwrap();
    serve_with(&mut env, "vol", "");
    env.wait_for_log("watch rescan of", 2);
    // Nobody makes files in a folder of its own and swaps the folder for a link to a folder
    // it may not write, over and over, while the server applies the events.
    let script = format!(
        "cd {mine} && for i in $(seq 1 200); do mkdir -p d; : > d/f$i; mv d d.$i; \
         ln -s {outside} d; rm d; done",
        mine = vol.join("mine").display(),
        outside = outside.display()
    );
    env.sh_as_nobody(&script);
    env.watch_barrier("vol");
    // Nothing of the server's outside the volume, and root's file untouched.
    let names: Vec<String> = fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["precious"], "the server wrote outside the volume");
    assert_eq!(deskd_volume::read_id_xattr(&outside.join("precious")), None);
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"root's");
    // The watcher goes on: a plain move after the attack is followed. (What the race itself
    // left, with inode numbers reused within a second, a rebuild settles: docs/security.md.)
    let before = env.id_of(&vol.join("mine/d.1"));
    fs::rename(vol.join("mine/d.1"), vol.join("mine/kept")).unwrap();
    env.watch_barrier("vol");
    assert_eq!(env.id_of(&vol.join("mine/kept")), before);
    assert!(vol.join("mine/.rsrc/kept").is_file());
}

#[test]
fn a_newline_in_a_name_nobody_makes_starts_no_log_line() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return common::skip("needs root to run a user's commands as nobody");
    }
    let mut env = Env::new(&["vol"]);
    let vol = env.path("vol");
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&vol, fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(vol.join("mine")).unwrap();
    std::os::unix::fs::chown(vol.join("mine"), Some(65534), Some(65534)).unwrap();
    serve_with(&mut env, "vol", "");
    env.wait_for_log("watch rescan of", 2);
    // A link planted where the new file's resource file goes: the server warns about it, by
    // name, and the name carries a whole forged audit line.
    let script = format!(
        "cd {mine} && n=$(printf 'evil\\n2026-12-06T15:00:00.000000Z  INFO deskd::audit: \
         uid 0 pid 1 (dt) on VOL: FORGED') && mkdir .rsrc && ln -s /nonexistent \".rsrc/$n\" \
         && : > \"$n\"",
        mine = vol.join("mine").display()
    );
    env.sh_as_nobody(&script);
    env.watch_barrier("vol");
    let log = env.log_text();
    assert!(
        log.contains("evil\\n2026-12-06T15:00:00.000000Z  INFO deskd::audit"),
        "no warning naming the file: {log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("2026-12-06T15:00:00")),
        "a name started a log line: {log}"
    );
}
