//! Control verbs and preferences: status, flush, freeze/thaw, idle close, config file,
//! read-only volumes, relocated desktops, a desktop locked by another server.

mod common;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn status_flush_freeze_and_thaw() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/a", b"vol/b"]);
    let s = env.status_json();
    assert_eq!(s["objects"], 3);
    assert_eq!(s["clean_at_start"], true);
    assert!(s["frozen_until"].is_null());
    assert_eq!(s["last_flush"], 0);
    assert!(s["path"].as_str().unwrap().ends_with("/vol"));
    let text = env.deskd_ok(&["status"]);
    assert!(
        text.contains("objects:      3") && text.contains("not frozen"),
        "{text}"
    );

    env.deskd_ok(&["flush"]);
    let s = env.status_json();
    assert!(s["last_flush"].as_i64().unwrap() > 0);
    assert_eq!(s["wal_bytes"], 0, "a flush empties the WAL");
    let db = env.path("vol/.Desktop");
    let a_id = env.id_of(&env.path("vol/a")).to_string();
    // Right after a flush the main file alone holds the data.
    let copy = env.path("copy.db");
    std::fs::copy(&db, &copy).unwrap();
    assert_eq!(sqlite3(&copy, "SELECT count(*) FROM objects"), "3");
    assert_eq!(sqlite3(&copy, "PRAGMA integrity_check"), "ok");

    // Freeze: .Desktop stays byte-identical while writes continue into the WAL.
    let out = env.deskd_ok(&["freeze", "30"]);
    assert!(out.contains("frozen until"));
    let frozen_bytes = std::fs::read(&db).unwrap();
    assert!(!env.status_json()["frozen_until"].is_null());
    for i in 0..50 {
        env.dt_ok(&[b"touch", format!("vol/during-{i}").as_bytes()]);
    }
    assert!(
        env.deskd(&["flush"]).status.code() == Some(1),
        "flush refuses while frozen"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        frozen_bytes,
        ".Desktop changed during the freeze"
    );
    assert_eq!(env.status_json()["objects"], 53, "writes were not blocked");
    // Over freeze_max: clamped with the HELIOS-style message.
    let out = env.deskd_ok(&["freeze", "500"]);
    assert!(
        out.contains("FreezeTime (500) > FreezeMax (60), using new value: 60"),
        "{out}"
    );
    env.deskd_ok(&["thaw"]);
    assert!(env.status_json()["frozen_until"].is_null());
    env.deskd_ok(&["flush"]);
    assert_ne!(std::fs::read(&db).unwrap(), frozen_bytes);
    assert_eq!(
        sqlite3(
            &db,
            &format!("SELECT count(*) FROM objects WHERE id = {a_id}")
        ),
        "1"
    );
}

#[test]
fn idle_close_and_flush_delay_checkpoint_by_themselves() {
    let mut env = Env::new(&["vol"]);
    let cfg = env.path("deskd.toml");
    std::fs::write(
        &cfg,
        format!(
            // --socket (which the harness passes) wins over [server] socket.
            "[server]\nsocket = \"{}\"\n[defaults]\nidle_close = 1\nflush_delay = 2\ndurability = \"full\"\n\n[volume.\"{}\"]\n",
            env.path("not-this.sock").display(),
            env.path("vol").display()
        ),
    )
    .unwrap();
    env.start(&["--config", cfg.to_str().unwrap()]);
    // durability = "full" reaches SQLite (PRAGMA synchronous = FULL, as the server logs it).
    assert!(
        env.log_text().contains("durability=Full"),
        "{}",
        env.log_text()
    );
    env.dt_ok(&[b"touch", b"vol/x"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = env.status_json();
        if s["wal_bytes"] == 0 && s["last_flush"].as_i64().unwrap() > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no idle flush: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn config_errors_are_clear() {
    let mut env = Env::new(&["vol"]);
    let cfg = env.path("bad.toml");
    std::fs::write(&cfg, "[defaults]\nflush_dealy = 3\n").unwrap();
    let out = env.deskd(&[
        "serve",
        "--socket",
        "x.sock",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown field `flush_dealy`"),
        "{}",
        stderr(&out)
    );
    let out = env.deskd(&["serve", "--socket", "x.sock", "/nonexistent/volume"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not a directory"));
    let out = env.deskd(&["serve", "--socket", "x.sock"]);
    assert!(stderr(&out).contains("no volumes"));
    // A second server on the same volume: the desktop is busy.
    env.serve(&["vol"]);
    let out = env.deskd(&[
        "serve",
        "--socket",
        "other.sock",
        env.path("vol").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Warning, desktop DB busy by another process"),
        "{}",
        stderr(&out)
    );
    // ... and the same socket is refused too.
    let out = env.deskd(&[
        "serve",
        "--socket",
        env.socket.to_str().unwrap(),
        env.path("vol").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn read_only_volume_refuses_changes_but_gives_ids() {
    let mut env = Env::new(&["vol"]);
    std::fs::write(env.path("vol/file"), b"").unwrap();
    let cfg = env.path("deskd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[volume.\"{}\"]\nread_only = true\n",
            env.path("vol").display()
        ),
    )
    .unwrap();
    env.start(&["--config", cfg.to_str().unwrap()]);
    let mut c = env.client();
    let vol = c.open_volume(&env.path("vol")).unwrap();
    assert!(vol.read_only);
    let o = c
        .object(deskd_client::Request::AddPath {
            vol: vol.vol,
            path: b"file".to_vec(),
            hint: None,
            type_code: None,
            creator: None,
            carried: None,
        })
        .unwrap();
    assert_eq!(o.id, 17);
    std::fs::rename(env.path("vol/file"), env.path("vol/moved")).unwrap();
    let err = c
        .call(deskd_client::Request::RenamePath {
            vol: vol.vol,
            from: b"file".to_vec(),
            to: b"moved".to_vec(),
            replace: false,
            hint: None,
        })
        .unwrap_err();
    assert_eq!(err.code(), Some(deskd_client::ErrorCode::ReadOnly));
    assert!(err.to_string().contains("read-only"));
    // dt refuses before touching the disk.
    let out = env.dt(&[b"mv", b"vol/moved", b"vol/again"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("volume is read-only"),
        "{}",
        stderr(&out)
    );
    assert!(env.path("vol/moved").exists() && !env.path("vol/again").exists());
    let out = env.dt(&[b"touch", b"vol/new"]);
    assert!(stderr(&out).contains("volume is read-only"));
    assert!(!env.path("vol/new").exists());
    // An online rebuild may only scan a read-only volume.
    let out = env.deskd(&["rebuild", "vol"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("only rebuild -s can run"),
        "{}",
        stderr(&out)
    );
    let out = env.deskd(&["rebuild", "-s", "vol"]);
    assert_ne!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn relocated_desktop_and_missing_target() {
    let mut env = Env::new(&["vol", "state"]);
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
    env.start(&["--config", cfg.to_str().unwrap()]);
    env.dt_ok(&[b"touch", b"vol/f"]);
    let link = env.path("vol/.Desktop");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let target = env
        .path("state/desktops")
        .join(env.path("vol").strip_prefix("/").unwrap())
        .join(".Desktop");
    assert_eq!(std::fs::read_link(&link).unwrap(), target);
    env.term();
    assert_eq!(sqlite3(&target, "SELECT count(*) FROM objects"), "2");
    // The target's directory vanishes: the HELIOS error, and nothing served.
    std::fs::remove_dir_all(env.path("state/desktops")).unwrap();
    let out = env.deskd(&[
        "serve",
        "--socket",
        "y.sock",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let vol = env.path("vol").canonicalize().unwrap();
    assert!(
        stderr(&out).contains(&format!("OpenDesk {}: Miscellaneous error", vol.display())),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_relocation_link_planted_by_a_user_is_not_followed() {
    let mut env = Env::new(&["vol"]);
    let victim = env.path("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let link = env.path("vol/.Desktop");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip("needs root to give the link another owner");
        return;
    }
    // As if user "nobody" had made it in a volume root open to everybody.
    std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
    let out = env.deskd(&["serve", "--socket", "x.sock", "vol"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("relocation link owned by uid 65534"),
        "{}",
        stderr(&out)
    );
    let out = env.deskd(&["rebuild", "-f", "vol"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not followed"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    // The same link made by root is the administrator's relocation, and is followed.
    std::fs::remove_file(&victim).unwrap();
    std::os::unix::fs::lchown(&link, Some(0), Some(0)).unwrap();
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/f"]);
    env.term();
    assert_eq!(sqlite3(&victim, "SELECT count(*) FROM objects"), "2");
}

#[test]
fn a_reader_holding_a_snapshot_does_not_hold_up_writes() {
    // A backup through SQLite, or an admin's sqlite3 session, keeps a read snapshot open for as
    // long as it likes. Checkpoints then cannot finish; the writes behind them must not wait.
    let mut env = Env::new(&["vol"]);
    let cfg = env.path("deskd.toml");
    std::fs::write(&cfg, "[defaults]\nflush_delay = 1\nidle_close = 1\n").unwrap();
    let vol = env.path("vol");
    env.start(&["--config", cfg.to_str().unwrap(), vol.to_str().unwrap()]);
    env.dt_ok(&[b"touch", b"vol/before"]);
    let reader = Sqlite3Lock::read_snapshot(&env.path("vol/.Desktop"));
    // A write the reader's snapshot does not have: a checkpoint can copy everything the
    // reader sees, but not this. Once a timed checkpoint has found the reader (it says so),
    // every later one finds it too.
    env.dt_ok(&[b"touch", b"vol/after-the-snapshot"]);
    env.wait_for_log("holds the checkpoint back", 1);
    let began = Instant::now();
    for i in 0..8 {
        env.dt_ok(&[b"touch", format!("vol/during-{i}").as_bytes()]);
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = began.elapsed();
    // 8 × 200 ms of pauses; each checkpoint used to wait 2 s for the reader, in front of a
    // write (17.6 s at least). The bound leaves a loaded machine 12 s for 8 dt runs.
    assert!(took < Duration::from_secs(14), "8 writes took {took:?}");
    let log = env.log_text();
    assert_eq!(
        log.matches("holds the checkpoint back").count(),
        1,
        "logged once, not per retry: {log}"
    );
    reader.release();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if env.status_json()["wal_bytes"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint after the reader left"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        env.log_text()
            .contains("checkpoint done after readers held it back"),
        "{}",
        env.log_text()
    );
    assert_eq!(env.status_json()["objects"], 11);
}

#[test]
fn wal_limit_bounds_the_wal() {
    let mut env = Env::new(&["vol"]);
    // The smallest allowed limit (1 MiB); flush_delay and idle_close far away so only the
    // limit can checkpoint. (With no limit this load grows the WAL past 10 MB.)
    env.serve_with_defaults(
        "vol",
        "wal_limit = 1048576\nflush_delay = 3600\nidle_close = 3600\n",
    );
    std::fs::create_dir(env.path("vol/many")).unwrap();
    let mut c = env.client();
    let vol = c.open_volume(&env.path("vol")).unwrap().vol;
    let mut max_wal = 0;
    for chunk in 0..20 {
        let names: Vec<String> = (0..500)
            .map(|i| format!("many/a-fairly-long-file-name-to-fill-pages-{chunk:03}-{i:05}.txt"))
            .collect();
        for name in &names {
            std::fs::write(env.path(&format!("vol/{name}")), b"").unwrap();
        }
        register_pipelined(&mut c, vol, &names);
        let wal = std::fs::metadata(env.path("vol/.Desktop-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
        max_wal = max_wal.max(wal);
    }
    assert!(max_wal > 0);
    // One batch may overshoot the limit before it is checkpointed, never by much.
    assert!(
        max_wal < 3 << 20,
        "WAL grew to {max_wal} bytes with a 1 MiB limit"
    );
    assert_eq!(env.status_json()["objects"], 10_002);
}

#[test]
fn admin_verbs_need_root_or_the_volume_owner() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    let as_nobody = |args: &[&str]| -> Option<std::process::Output> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        env.as_nobody(DESKD, &args)
    };
    if as_nobody(&["status"]).is_none() {
        skip("needs root to act as another user");
        return;
    }
    for verb in [&["flush"][..], &["freeze", "5"], &["thaw"]] {
        let out = as_nobody(verb).unwrap();
        assert_eq!(out.status.code(), Some(1), "{verb:?} as nobody");
        assert!(
            stderr(&out).contains("need root or the volume owner"),
            "{}",
            stderr(&out)
        );
    }
    // Reading is for everyone.
    let out = as_nobody(&["status", "--json"]).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        env.status_json()["frozen_until"].is_null(),
        "nobody's freeze was refused"
    );
}

#[test]
fn sighup_reloads_timers_read_only_and_volumes() {
    let mut env = Env::new(&["vol", "later"]);
    let config = env.path("deskd.toml");
    let vol = env.path("vol").display().to_string();
    let write_config = |freeze_max: u32, extra: &str| {
        std::fs::write(
            &config,
            format!("[defaults]\nfreeze_max = {freeze_max}\n[volume.\"{vol}\"]\n{extra}"),
        )
        .unwrap()
    };
    write_config(20, "");
    let config_arg = config.display().to_string();
    env.start(&["--config", &config_arg]);
    let out = env.deskd_ok(&["freeze", "50"]);
    assert!(out.contains("FreezeMax (20), using new value: 20"), "{out}");
    env.deskd_ok(&["thaw"]);
    env.dt_ok(&[b"touch", b"vol/before"]);
    let mut client = env.client();
    let handle = client.open_volume(&env.path("vol")).unwrap().vol;

    // A new freeze_max, a read_only change, a volume more and one that does not exist, then
    // SIGHUP.
    write_config(40, "read_only = true\n");
    let later = env.path("later").display().to_string();
    let missing = env.path("missing").display().to_string();
    std::fs::write(
        &config,
        format!(
            "{}[volume.\"{later}\"]\n[volume.\"{missing}\"]\n",
            std::fs::read_to_string(&config).unwrap()
        ),
    )
    .unwrap();
    env.sighup(1);
    let out = env.deskd_ok(&["freeze", "50"]);
    assert!(out.contains("FreezeMax (40), using new value: 40"), "{out}");
    env.deskd_ok(&["thaw"]);
    let log = env.log_text();
    // The volume was reopened read-only under the same handle, and the new one is served.
    assert!(
        log.contains(&format!("{vol}: reopened, read-only")),
        "{log}"
    );
    assert!(log.contains(&format!("{later}: now served")), "{log}");
    assert!(log.contains(&format!("{missing}: not served: ")), "{log}");
    let out = env.dt(&[b"touch", b"vol/x"]);
    assert!(
        stderr(&out).contains("volume is read-only"),
        "{}",
        stderr(&out)
    );
    assert!(!env.path("vol/x").exists());
    // A client connected before the reload goes on with its handle, and sees the change.
    let info = client.open_volume(&env.path("vol")).unwrap();
    assert_eq!((info.vol, info.read_only), (handle, true));
    let before = client
        .maybe_object(deskd_client::Request::LookupPath {
            vol: handle,
            path: b"before".to_vec(),
        })
        .unwrap()
        .expect("registered before the reload");
    assert_eq!(before.id, env.id_of(&env.path("vol/before")));
    env.dt_ok(&[b"touch", b"later/y"]);
    let later_db = env.path("later/.Desktop");
    assert_eq!(
        sqlite3(
            &later_db,
            "SELECT count(*) FROM objects WHERE CAST(name AS TEXT) = 'y'"
        )
        .trim(),
        "1"
    );
    let statuses = env.deskd_ok(&["status", "--json"]);
    // The two served, then the one the reload could not serve, with why (stop 40).
    assert_eq!(statuses.lines().count(), 3, "{statuses}");
    let refused: serde_json::Value =
        serde_json::from_str(statuses.lines().nth(2).unwrap()).unwrap();
    assert_eq!(refused["path"], serde_json::json!(missing), "{statuses}");
    assert_eq!(refused["served"], serde_json::json!(false), "{statuses}");
    // Who makes the missing root afterwards (here: nobody's own folder in its place) is not
    // its owner of record: nobody still sees that it is refused, not why (hostile review of
    // stop 40; the owner is taken when the volume is refused).
    std::fs::create_dir(&missing).unwrap();
    std::os::unix::fs::chown(&missing, Some(65534), Some(65534)).ok();
    match env.as_nobody(DESKD, &[b"status", b"--json"]) {
        Some(out) => {
            let said = String::from_utf8_lossy(&out.stdout);
            let refused: serde_json::Value =
                serde_json::from_str(said.lines().nth(2).expect(&said)).unwrap();
            assert!(
                refused["not_served"]
                    .as_str()
                    .unwrap()
                    .starts_with("refused (root or the volume owner"),
                "{said}"
            );
        }
        None => skip("needs root to act as another user"),
    }
    std::fs::remove_dir(&missing).unwrap();

    // A configuration that does not parse keeps the old one, and says so.
    std::fs::write(&config, "[defaults]\nfreeze_max = \"soon\"\n").unwrap();
    env.sighup(2);
    assert!(env
        .log_text()
        .contains("configuration not reloaded, the old one stays"));
    let out = env.deskd_ok(&["freeze", "50"]);
    assert!(out.contains("FreezeMax (40), using new value: 40"), "{out}");

    // A frozen desktop is neither flushed nor reopened by a SIGHUP (a backup may be copying
    // it), and the log says so; the next SIGHUP after the thaw does both.
    env.dt_ok(&[b"touch", b"later/while-frozen"]);
    let db = env.path("later/.Desktop");
    let frozen_bytes = std::fs::read(&db).unwrap();
    write_config(
        40,
        "read_only = true
",
    );
    std::fs::write(
        &config,
        format!(
            "{}[volume.\"{later}\"]\nread_only = true\n",
            std::fs::read_to_string(&config).unwrap()
        ),
    )
    .unwrap();
    env.sighup(3);
    let log = env.log_text();
    assert!(
        log.contains(&format!(
            "{later}: not flushed: frozen; flush after the freeze ends"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "{later}: frozen; read_only changes at a reload after that ends"
        )),
        "{log}"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        frozen_bytes,
        "a SIGHUP wrote to a frozen desktop"
    );
    env.dt_ok(&[b"touch", b"later/still-writable"]);
    env.deskd_ok(&["thaw"]);
    env.sighup(4);
    assert!(env
        .log_text()
        .contains(&format!("{later}: reopened, read-only")));
    assert_ne!(std::fs::read(&db).unwrap(), frozen_bytes);
    let out = env.dt(&[b"touch", b"later/z"]);
    assert!(
        stderr(&out).contains("volume is read-only"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sighup_stops_serving_a_volume_taken_out_and_serves_it_again() {
    let mut env = Env::new(&["vol", "other"]);
    let config = env.path("deskd.toml");
    let (vol, other) = (env.path("vol"), env.path("other"));
    let with_other = format!(
        "[volume.\"{}\"]\n[volume.\"{}\"]\n",
        vol.display(),
        other.display()
    );
    std::fs::write(&config, &with_other).unwrap();
    env.start(&["--config", &config.display().to_string()]);
    env.dt_ok(&[b"touch", b"other/a"]);
    let id = env.id_of(&other.join("a"));
    let mut client = env.client();
    let handle = client.open_volume(&other).unwrap().vol;
    // A read keeps a read connection to the desktop open in the client's server thread.
    let lookup_a = deskd_client::Request::LookupPath {
        vol: handle,
        path: b"a".to_vec(),
    };
    assert!(client.maybe_object(lookup_a.clone()).unwrap().is_some());
    let server = env.server.as_ref().unwrap().id();
    let db = other.join(".Desktop");
    let holds_db = || {
        std::fs::read_dir(format!("/proc/{server}/fd"))
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.unwrap().path()).ok())
            .any(|target| target == db)
    };
    assert!(holds_db());

    std::fs::write(&config, format!("[volume.\"{}\"]\n", vol.display())).unwrap();
    env.sighup(1);
    let log = env.log_text();
    let root = other.display();
    assert!(
        log.contains(&format!("{root}: no longer in the configuration")),
        "{log}"
    );
    assert!(
        log.contains(&format!("{root}: desktop closed; no longer served")),
        "{log}"
    );
    // Closed cleanly: marked clean, the WAL written into it, and its lock released.
    assert_eq!(
        sqlite3(&db, "SELECT value FROM meta WHERE key = 'clean'").trim(),
        "1"
    );
    // (Emptied, if not yet removed: the client's read connection still has the desktop open,
    // and SQLite removes the WAL with the last connection of any process.)
    assert_eq!(
        std::fs::metadata(other.join(".Desktop-wal")).map_or(0, |m| m.len()),
        0
    );
    let file = std::fs::File::open(&db).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    let locked = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(locked, 0, "the server still holds the desktop's lock");
    drop(file);
    // The client's handle now names a volume that is not served; the other volume goes on.
    let err = client.call(lookup_a.clone()).unwrap_err();
    assert_eq!(err.code(), Some(deskd_client::ErrorCode::NoSuchVolume));
    assert!(err.to_string().contains("no longer served"), "{err}");
    // The connection has let go of the closed desktop.
    assert!(!holds_db(), "the server still has the closed desktop open");
    let statuses = env.deskd_ok(&["status", "--json"]);
    assert_eq!(statuses.lines().count(), 1, "{statuses}");
    env.dt_ok(&[b"touch", b"vol/b"]);

    // Back in the configuration, it gets its old handle, and its IDs are as they were.
    std::fs::write(&config, &with_other).unwrap();
    env.sighup(2);
    assert!(env.log_text().contains(&format!("{root}: now served")));
    let again = client
        .maybe_object(lookup_a)
        .unwrap()
        .expect("registered before it was taken out");
    assert_eq!(again.id, id);
    assert_eq!(client.open_volume(&other).unwrap().vol, handle);
}

/// Registrations pipelined by a file server while SIGHUPs reopen its volume again and again:
/// every request is answered (none waits for its timeout), every acknowledged ID is in the
/// desktop, and a refusal is the one a closing desktop gives. (A read-only volume still gives
/// IDs, so registrations go on while it is read-only.)
#[test]
fn writes_during_reloads_are_answered_and_kept() {
    let mut env = Env::new(&["vol"]);
    let config = env.path("deskd.toml");
    let vol = env.path("vol");
    let write_config = |read_only: bool, durability: &str| {
        std::fs::write(
            &config,
            format!(
                "[volume.\"{}\"]\nread_only = {read_only}\ndurability = \"{durability}\"\n",
                vol.display()
            ),
        )
        .unwrap()
    };
    write_config(false, "normal");
    env.start(&["--config", &config.display().to_string()]);
    let mut client = env.client();
    let handle = client.open_volume(&vol).unwrap().vol;
    // Creates and registers files, 20 to a pipelined burst, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (writer_stop, writer_vol, writer_answered) = (stop.clone(), vol.clone(), answered.clone());
    let writer = std::thread::spawn(move || {
        let mut outcomes = Vec::new();
        while !writer_stop.load(std::sync::atomic::Ordering::SeqCst) {
            let names: Vec<String> = (outcomes.len()..outcomes.len() + 20)
                .map(|i| format!("f{i:05}"))
                .collect();
            let ids: Vec<u64> = names
                .iter()
                .map(|n| {
                    std::fs::write(writer_vol.join(n), b"").unwrap();
                    let request = deskd_client::Request::AddPath {
                        vol: handle,
                        path: n.clone().into_bytes(),
                        hint: None,
                        type_code: None,
                        creator: None,
                        carried: None,
                    };
                    client.send(request).unwrap()
                })
                .collect();
            client.flush().unwrap();
            for (n, id) in names.into_iter().zip(ids) {
                outcomes.push((n, client.wait(id)));
            }
            writer_answered.store(outcomes.len(), std::sync::atomic::Ordering::SeqCst);
        }
        outcomes
    });
    // read_only flips at rounds 1, 3, 5 and 6 (a reopening); durability alone at 2 and 4.
    let rounds = [(true, "normal"), (true, "full"), (false, "full")];
    let rounds = rounds
        .iter()
        .chain(&[(false, "normal"), (true, "normal"), (false, "normal")]);
    for (round, &(read_only, durability)) in rounds.enumerate() {
        let before = answered.load(std::sync::atomic::Ordering::SeqCst);
        write_config(read_only, durability);
        env.sighup(round + 1);
        // Writes go on across each reload: a whole burst answered after it.
        let began = std::time::Instant::now();
        while answered.load(std::sync::atomic::Ordering::SeqCst) < before + 40 {
            assert!(began.elapsed() < Duration::from_secs(20), "writes stopped");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let outcomes = writer.join().unwrap();
    let log = env.log_text();
    assert_eq!(log.matches("reopened, read-only").count(), 2, "{log}");
    assert_eq!(log.matches("reopened, writable").count(), 2, "{log}");
    assert!(
        log.contains("durability now Full"),
        "durability taken at a reload: {log}"
    );
    env.term();
    let db = vol.join(".Desktop");
    let rows = sqlite3(&db, "SELECT id, CAST(name AS TEXT) FROM objects");
    let in_desktop: std::collections::HashMap<u32, &str> = rows
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(id, name)| (id.parse().unwrap(), name))
        .collect();
    let (mut kept, mut refused) = (0, 0);
    let total = outcomes.len();
    for (name, outcome) in outcomes {
        match outcome {
            Ok(deskd_client::Response::Object(o)) => {
                let row = in_desktop.get(&o.id).copied();
                assert_eq!(row, Some(name.as_str()), "acknowledged ID {} lost", o.id);
                kept += 1;
            }
            Ok(other) => panic!("{name}: unexpected answer {other:?}"),
            Err(e) => {
                assert!(
                    matches!(e.code(), Some(deskd_client::ErrorCode::ShuttingDown)),
                    "{name}: {e}"
                );
                refused += 1;
            }
        }
    }
    assert!(kept > 0, "{kept} kept, {refused} refused");
    assert_eq!(kept + refused, total);
}

/// A write that took the volume just before a reload closed it (the server's test hook holds
/// it there) is answered with `ShuttingDown` and the reason, nothing of it is recorded, and the
/// same request sent again is recorded in the reopened desktop.
#[test]
fn a_write_caught_by_a_reopening_is_refused_and_can_be_sent_again() {
    let mut env = Env::new(&["vol"]);
    let vol = env.path("vol");
    env.start_holding_writes();
    std::fs::write(vol.join("caught"), b"").unwrap();
    let mut client = env.client();
    let handle = client.open_volume(&vol).unwrap().vol;
    let add = move || deskd_client::Request::AddPath {
        vol: handle,
        path: b"caught".to_vec(),
        hint: None,
        type_code: None,
        creator: None,
        carried: None,
    };
    let adding = std::thread::spawn(move || {
        let first = client.call(add());
        (client, first)
    });
    // The write has taken the volume when the reload closes it, and reaches it after.
    env.wait_for_held_write(1);
    env.set_read_only(true);
    env.sighup(1);
    env.release_writes();
    let (mut client, first) = adding.join().unwrap();
    let err = first.unwrap_err();
    assert_eq!(err.code(), Some(deskd_client::ErrorCode::ShuttingDown));
    assert!(err.to_string().contains("the desktop was closed"), "{err}");
    let db = vol.join(".Desktop");
    let count = "SELECT count(*) FROM objects WHERE CAST(name AS TEXT) = 'caught'";
    assert_eq!(sqlite3(&db, count).trim(), "0");
    client.call(add()).unwrap();
    assert_eq!(sqlite3(&db, count).trim(), "1");
}

/// A reload that reopens a volume while a connection still has a read connection of the old
/// opening leaves the server holding its locks on the desktop: another process's sqlite3 does
/// not take the desktop as unused (it would checkpoint it and delete the WAL under the server,
/// and the server's own reads would fail), and what the server commits after is in the WAL
/// that others read. (The reopening's writability check opened and closed the desktop, and
/// closing any descriptor of a file drops every POSIX lock the process holds on it.)
#[test]
fn a_reopening_under_a_reader_keeps_the_servers_locks_and_its_wal() {
    let mut env = Env::new(&["vol"]);
    let vol = env.path("vol");
    env.set_read_only(false);
    let config = env.path("deskd.toml").display().to_string();
    env.start(&["--config", &config]);
    std::fs::write(vol.join("after"), b"").unwrap();
    let mut client = env.client();
    let handle = client.open_volume(&vol).unwrap().vol;
    // A read: this connection now holds a read connection of the desktop.
    client
        .call(deskd_client::Request::Resolve {
            vol: handle,
            id: deskd_db::ROOT_ID,
        })
        .unwrap();
    env.set_read_only(true);
    env.sighup(1);
    assert!(env.log_text().contains("reopened, read-only"));
    let db = vol.join(".Desktop");
    let count = "SELECT count(*) FROM objects WHERE CAST(name AS TEXT) = 'after'";
    // Another process opens and closes the desktop: it must not find it unused.
    assert_eq!(sqlite3(&db, count).trim(), "0");
    let mut fresh = env.client();
    let vol_id = fresh.open_volume(&vol).unwrap().vol;
    fresh
        .call(deskd_client::Request::AddPath {
            vol: vol_id,
            path: b"after".to_vec(),
            hint: None,
            type_code: None,
            creator: None,
            carried: None,
        })
        .unwrap();
    assert!(
        vol.join(".Desktop-wal").exists(),
        "the WAL was deleted under the server"
    );
    assert_eq!(sqlite3(&db, count).trim(), "1", "{}", env.log_text());
    // The server reads its own commit (with the WAL gone it failed: disk I/O error).
    fresh
        .call(deskd_client::Request::LookupPath {
            vol: vol_id,
            path: b"after".to_vec(),
        })
        .unwrap();
    drop(client);
}

/// dt's registrations caught by a reopening (the server's test hook holds dt's first write
/// before it reaches the volume, until the reload is over) are sent again, alone and out of a
/// pipelined copy, and the commands succeed with every object recorded.
#[test]
fn dt_sends_a_registration_caught_by_a_reopening_again() {
    let mut env = Env::new(&["vol"]);
    let vol = env.path("vol");
    std::fs::create_dir(vol.join("src")).unwrap();
    for name in ["a", "b"] {
        std::fs::write(vol.join("src").join(name), name).unwrap();
    }
    env.start_holding_writes();
    // Each command starts on a writable volume, and a reload makes it read-only under it
    // (read-only volumes still give IDs).
    let mut reloads = 0;
    for (held, args) in [
        vec![&b"touch"[..], b"vol/touched"],
        vec![b"cp", b"-R", b"vol/src", b"vol/copy"],
    ]
    .into_iter()
    .enumerate()
    {
        if reloads > 0 {
            env.set_read_only(false);
            reloads += 1;
            env.sighup(reloads);
            env.hold_writes_again();
        }
        let mut dt = env.command_for(DT, &args);
        let running = std::thread::spawn(move || dt.output().unwrap());
        env.wait_for_held_write(held + 1);
        env.set_read_only(true);
        reloads += 1;
        env.sighup(reloads);
        env.release_writes();
        let out = running.join().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let db = vol.join(".Desktop");
    for path in ["touched", "copy", "copy/a", "copy/b"] {
        let id = env.id_of(&vol.join(path));
        let name = path.rsplit('/').next().unwrap();
        let row = sqlite3(
            &db,
            &format!("SELECT CAST(name AS TEXT) FROM objects WHERE id = {id}"),
        );
        assert_eq!(row.trim(), name);
    }
    assert_eq!(env.log_text().matches("reopened, ").count(), 3);
}

/// A volume running an online rebuild is not closed by a reload (the rebuild would lose its
/// desktop); the log says so, and the next reload after the rebuild ends applies the change.
#[test]
fn a_rebuilding_volume_is_reopened_only_after_its_rebuild() {
    let mut env = Env::new(&["vol"]);
    for d in 0..4 {
        std::fs::create_dir(env.path(&format!("vol/d{d}"))).unwrap();
    }
    // The walk holds before its first directory until the test lets it go on, so the rebuild
    // is surely running when the reload comes.
    let go_on = env.path("walk-on");
    env.server_env.push((
        "DESKD_TEST_REBUILD_HOLD_WALK_UNTIL".into(),
        go_on.display().to_string(),
    ));
    env.set_read_only(false);
    env.start(&["--config", &env.path("deskd.toml").display().to_string()]);
    let mut c = env.client();
    let vol = c.open_volume(&env.path("vol")).unwrap().vol;
    let job = match c
        .call(deskd_client::Request::RebuildStart {
            vol,
            mode: deskd_proto::RebuildMode::Repair,
            threads: Some(1),
            force: false,
            timeout_secs: 60,
        })
        .unwrap()
    {
        deskd_client::Response::RebuildStarted { job } => job,
        other => panic!("{other:?}"),
    };
    env.wait_for_log("test hook: walk held before", 1);
    env.set_read_only(true);
    env.sighup(1);
    let root = env.path("vol").display().to_string();
    assert!(
        env.log_text().contains(&format!(
            "{root}: an online rebuild is running; read_only changes at a reload after that ends"
        )),
        "{}",
        env.log_text()
    );
    assert!(!c.open_volume(&env.path("vol")).unwrap().read_only);
    std::fs::write(&go_on, b"").unwrap();
    // Once the rebuild has ended, the next reload reopens the volume.
    let began = Instant::now();
    loop {
        match c
            .call(deskd_client::Request::RebuildPoll { vol, job, from: 0 })
            .unwrap()
        {
            deskd_client::Response::Rebuild(s) if s.finished.is_some() => break,
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "rebuild never ended"
        );
    }
    env.sighup(2);
    assert!(env
        .log_text()
        .contains(&format!("{root}: reopened, read-only")));
    assert!(c.open_volume(&env.path("vol")).unwrap().read_only);
}

/// `deskd flush` and `deskd thaw` without `--volume` try every volume, whatever another
/// refused: a frozen first volume no longer leaves the second unflushed, and the owner of one
/// volume thaws it though another is not theirs (the newcomer review of stop 40).
#[test]
fn flush_and_thaw_of_every_volume_go_past_a_volume_that_refuses() {
    let mut env = Env::new(&["v1", "v2"]);
    // v2 is nobody's (the owner is read when the volume is opened).
    std::os::unix::fs::chown(env.path("v2"), Some(65534), Some(65534)).ok();
    env.serve(&["v1", "v2"]);
    env.dt_ok(&[b"touch", b"v1/a"]);
    env.dt_ok(&[b"touch", b"v2/b"]);
    let v1 = env.path("v1").display().to_string();
    let v2 = env.path("v2").display().to_string();
    env.deskd_ok(&["freeze", "--volume", &v1, "60"]);
    let wal = |root: &str| -> u64 {
        let out = env.deskd_ok(&["status", "--json"]);
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["path"].as_str() == Some(root))
            .unwrap()["wal_bytes"]
            .as_u64()
            .unwrap()
    };
    assert!(wal(&v2) > 0);
    let out = env.deskd(&["flush"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!("{v1}: ")) && said.contains("frozen"),
        "{said}"
    );
    assert_eq!(wal(&v2), 0, "v2 flushed though v1 refused: {said}");
    env.deskd_ok(&["thaw", "--volume", &v1]);

    // The owner of v2 alone: `thaw` thaws v2 and says v1 is not theirs.
    env.deskd_ok(&["freeze", "60"]);
    match env.as_nobody(DESKD, &[b"thaw"]) {
        Some(out) => {
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{said}");
            assert!(said.contains(&format!("{v1}: ")), "{said}");
            let frozen = |root: &str| {
                let out = env.deskd_ok(&["status", "--json"]);
                !out.lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                    .find(|v| v["path"].as_str() == Some(root))
                    .unwrap()["frozen_until"]
                    .is_null()
            };
            assert!(!frozen(&v2), "nobody thawed its own v2: {said}");
            assert!(frozen(&v1), "v1 is not nobody's: {said}");
        }
        None => skip("needs root to act as another user"),
    }
    env.deskd_ok(&["thaw"]);
}
