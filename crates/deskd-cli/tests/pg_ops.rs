//! The admin verbs on a volume served from PostgreSQL (issue 28), driving the real `deskd` and
//! `dt` against a real throw-away PostgreSQL (deskd_pg::test_cluster; a machine without
//! PostgreSQL skips, CI fails): `deskd backup --config` / `verify` / `restore` (the backup is
//! an SQLite desktop, restored as the volume's SQLite desktop or moved back into a database
//! with `deskd migrate`), `deskd freeze` holding a snapshot the real `pg_dump --snapshot` reads,
//! and the online `deskd rebuild` and `rebuild -s` of a served PostgreSQL volume.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use deskd_client::{Request, Response};

/// The ID of each path, through the served volume.
fn ids_of(env: &Env, paths: &[PathBuf]) -> Vec<u32> {
    env.ids(paths)
        .iter()
        .map(|v| v["id"].as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn a_postgresql_volume_is_backed_up_live_verified_and_restored_as_sqlite_with_every_id() {
    let Some((_cluster, mut env, root, config)) = served_pg("desk") else {
        return;
    };
    env.dt_ok(&[b"mkdir", b"-p", b"vol/Projects/2024"]);
    for i in 0..40 {
        let p = root.join(format!("Projects/2024/file-{i}.txt"));
        env.dt_ok(&[b"touch", p.as_os_str().as_bytes()]);
    }
    // A folder moved into a newer one: in ID order a child comes before its parent.
    env.dt_ok(&[b"mkdir", b"vol/Later"]);
    env.dt_ok(&[b"mv", b"vol/Projects/2024", b"vol/Later/2024"]);
    let mut paths = vec![root.join("Later"), root.join("Later/2024")];
    for i in 0..40 {
        paths.push(root.join(format!("Later/2024/file-{i}.txt")));
    }
    env.dt_ok(&[
        b"set",
        b"--comment",
        b"kept through the backup",
        b"vol/Later/2024/file-7.txt",
    ]);

    // Clients go on creating while the backups run: each backup is one snapshot, whole.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let socket = env.path("deskd.sock");
        let root = root.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let p = root.join(format!("Projects/during-{n}.txt"));
                let out = Command::new(DT)
                    .env("DESKD_SOCKET", &socket)
                    .arg("touch")
                    .arg(&p)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", stderr(&out));
                n += 1;
            }
            n
        })
    };
    let backups = env.path("backups");
    std::fs::create_dir(&backups).unwrap();
    let file = backups.join("vol.desktop");
    let cfg = config.to_str().unwrap();
    // Without the configuration there is no SQLite desktop to copy: said, with the way out.
    let bare = env.deskd(&["backup", root.to_str().unwrap(), file.to_str().unwrap()]);
    assert_eq!(bare.status.code(), Some(2));
    assert!(
        stderr(&bare).contains("give the server's configuration with --config"),
        "{}",
        stderr(&bare)
    );
    assert!(!file.exists());
    let summary = env.deskd_ok(&[
        "backup",
        "--config",
        cfg,
        root.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert!(summary.contains("integrity ok"), "{summary}");
    // And to standard output with its manifest elsewhere (as a backup tool reads it).
    let streamed = env.path("backups/streamed.desktop");
    let out = env
        .command_for(
            DESKD,
            &[
                b"backup",
                b"--config",
                cfg.as_bytes(),
                root.as_os_str().as_bytes(),
                b"-",
                b"--manifest",
                env.path("backups/streamed.desktop.manifest.json")
                    .as_os_str()
                    .as_bytes(),
            ],
        )
        .stdout(std::fs::File::create(&streamed).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stop.store(true, Ordering::SeqCst);
    let made_during = writer.join().unwrap();
    assert!(made_during > 0);

    // The manifest names the database, not a file; verify needs no database.
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(backups.join("vol.desktop.manifest.json")).unwrap(),
    )
    .unwrap();
    let desktop = manifest["desktop"].as_str().unwrap();
    assert!(
        desktop.starts_with("postgresql deskd_test@127.0.0.1:"),
        "{desktop}"
    );
    assert!(
        !desktop.contains(_cluster.password()),
        "the password in the manifest"
    );
    env.deskd_ok(&["verify", file.to_str().unwrap()]);
    env.deskd_ok(&["verify", streamed.to_str().unwrap()]);
    // No export is left beside the backups.
    let mut left: Vec<String> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "streamed.desktop",
            "streamed.desktop.manifest.json",
            "vol.desktop",
            "vol.desktop.manifest.json"
        ]
    );
    // A backup changed afterwards fails verify.
    let copy = env.path("copy.desktop");
    std::fs::copy(&file, &copy).unwrap();
    std::fs::copy(
        backups.join("vol.desktop.manifest.json"),
        env.path("copy.desktop.manifest.json"),
    )
    .unwrap();
    let mut bytes = std::fs::read(&copy).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&copy, bytes).unwrap();
    let bad = env.deskd(&["verify", copy.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));

    // Every ID as the database has it, the writes made during the backup included.
    for n in 0..made_during {
        paths.push(root.join(format!("Projects/during-{n}.txt")));
    }
    let before = ids_of(&env, &paths);
    let last_id = env.status_json()["last_id"].as_u64().unwrap();
    env.term();

    // Restored as the volume's SQLite desktop (served without `backend` from now on): the
    // backup's records brought up to the disk, so the files made after the backup keep the
    // IDs their mirrors carry, and the counter goes past every ID handed out.
    // The volume is marked as served from the database: a backup without --config (it
    // would copy the stale .Desktop, if any) and a restore without --leave-postgresql (its
    // servers might still hand out IDs) are refused, nothing written.
    let stale = env.deskd(&[
        "backup",
        root.to_str().unwrap(),
        env.path("stale.db").to_str().unwrap(),
    ]);
    assert_eq!(stale.status.code(), Some(2));
    assert!(stderr(&stale).contains("--config"), "{}", stderr(&stale));
    assert!(!env.path("stale.db").exists());
    let refused = env.deskd(&["restore", file.to_str().unwrap(), root.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("--leave-postgresql"),
        "{}",
        stderr(&refused)
    );
    assert!(!root.join(".Desktop").exists());
    // Nor without --config: the database's ID counter, which the backup may lack, is unread.
    let refused = env.deskd(&[
        "restore",
        "--leave-postgresql",
        file.to_str().unwrap(),
        root.to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("--ids-from-backup"),
        "{}",
        stderr(&refused)
    );
    assert!(!root.join(".Desktop").exists());
    let out = restore_leaving_postgresql(&env, cfg, file.to_str().unwrap(), root.to_str().unwrap());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(root.join(".Desktop").exists());
    assert!(
        deskd_volume::desktop_backend(&root).is_none(),
        "the mark is gone"
    );
    env.serve(&["vol"]);
    assert_eq!(ids_of(&env, &paths), before, "an ID changed in the restore");
    assert!(env.status_json()["last_id"].as_u64().unwrap() >= last_id);
    let mut c = env.client();
    let vol = c.open_volume(&root).unwrap().vol;
    let id = before[2 + 7];
    match c.call(Request::CommentGet { vol, id }).unwrap() {
        Response::Comment(text) => {
            assert_eq!(text.as_deref(), Some(&b"kept through the backup"[..]))
        }
        other => panic!("{other:?}"),
    }
    drop(c);
    env.rebuild_scan_silent("vol");
}

#[test]
fn a_backup_of_a_postgresql_volume_goes_back_into_a_database_with_deskd_migrate() {
    let Some((cluster, mut env, root, config)) = served_pg("first") else {
        return;
    };
    env.dt_ok(&[b"mkdir", b"-p", b"vol/a/b"]);
    env.dt_ok(&[b"touch", b"vol/a/b/one", b"vol/a/two"]);
    let paths = [root.join("a"), root.join("a/b/one"), root.join("a/two")];
    let before = ids_of(&env, &paths);
    let file = env.path("vol.desktop");
    // A root that is another volume than the database's of its name: refused, nothing written.
    let stamped = xattr::get(&root, "user.deskd.volume").unwrap().unwrap();
    xattr::set(&root, "user.deskd.volume", &0x1234_5678_u64.to_be_bytes()).unwrap();
    let other = env.deskd(&[
        "backup",
        "--config",
        config.to_str().unwrap(),
        root.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert_eq!(other.status.code(), Some(2), "{}", stderr(&other));
    assert!(
        stderr(&other).contains("another volume; nothing was backed up"),
        "{}",
        stderr(&other)
    );
    assert!(!file.exists());
    assert_eq!(
        std::fs::read_dir(env.path(""))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".export")
            })
            .count(),
        0,
        "an export left behind"
    );
    xattr::set(&root, "user.deskd.volume", &stamped).unwrap();
    env.deskd_ok(&[
        "backup",
        "--config",
        config.to_str().unwrap(),
        root.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    env.term();
    // Restore as SQLite, then into a database that does not hold the volume (a new one, as
    // after losing the first), and serve it from there.
    env.deskd_ok(&[
        "restore",
        "--leave-postgresql",
        "--config",
        config.to_str().unwrap(),
        file.to_str().unwrap(),
        root.to_str().unwrap(),
    ]);
    let url = cluster.create_database("second");
    let pw = cluster.password_file("pw2", cluster.password());
    env.deskd_ok(&[
        "migrate",
        root.to_str().unwrap(),
        "--to",
        &url,
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    std::fs::rename(root.join(".Desktop"), env.path("old.Desktop")).unwrap();
    env.serve_with_defaults("vol", &backend_lines(&url, &pw));
    assert!(env.status_json()["desktop"]
        .as_str()
        .unwrap()
        .contains("/second"));
    assert_eq!(ids_of(&env, &paths), before);
}

#[test]
fn freeze_on_postgresql_holds_a_snapshot_that_pg_dump_reads_while_writes_go_on() {
    let Some((cluster, env, root, _config)) = served_pg("desk") else {
        return;
    };
    env.dt_ok(&[b"touch", b"vol/before-freeze.txt"]);
    let out = env.deskd_ok(&["freeze", "--volume", root.to_str().unwrap(), "60"]);
    let snapshot = out
        .lines()
        .find_map(|l| l.strip_prefix("snapshot "))
        .unwrap_or_else(|| panic!("no snapshot in {out:?}"))
        .to_owned();
    assert!(env.status_json()["frozen_until"].as_i64().is_some());
    // Writes go on during the freeze; the snapshot does not see them.
    env.dt_ok(&[b"touch", b"vol/after-freeze.txt"]);
    // Asked again while frozen: the same snapshot (a dump may be using it).
    let again = env.deskd_ok(&["freeze", "--volume", root.to_str().unwrap(), "60"]);
    assert!(again.contains(&format!("snapshot {snapshot}")), "{again}");

    let pg_dump = |snapshot: &str| {
        Command::new(cluster.bin_dir().join("pg_dump"))
            .args(["-h", "127.0.0.1", "-p", &cluster.port().to_string()])
            .args(["-U", "deskd_test", "-n", "deskd", "--data-only"])
            .arg(format!("--snapshot={snapshot}"))
            .arg("desk")
            .env("PGPASSWORD", cluster.password())
            .output()
            .unwrap()
    };
    let dump = pg_dump(&snapshot);
    assert!(dump.status.success(), "pg_dump: {}", stderr(&dump));
    let text = String::from_utf8_lossy(&dump.stdout);
    // Names are bytea: pg_dump writes them in hex.
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    assert!(text.contains(&hex("before-freeze.txt")), "{text}");
    assert!(
        !text.contains(&hex("after-freeze.txt")),
        "the dump holds a write made after the freeze"
    );

    // Thawed: the snapshot is gone.
    env.deskd_ok(&["thaw", "--volume", root.to_str().unwrap()]);
    assert!(env.status_json()["frozen_until"].is_null());
    let late = pg_dump(&snapshot);
    assert!(!late.status.success(), "pg_dump with a released snapshot");
    assert!(stderr(&late).contains("snapshot"), "{}", stderr(&late));
    env.wait_for_log("freeze ended; its snapshot is released", 1);

    // A freeze that ends by itself lets its snapshot go too; the next freeze takes a new one.
    let short = env.deskd_ok(&["freeze", "--volume", root.to_str().unwrap(), "1"]);
    let second = short
        .lines()
        .find_map(|l| l.strip_prefix("snapshot "))
        .unwrap_or_else(|| panic!("no snapshot in {short:?}"))
        .to_owned();
    assert_ne!(second, snapshot);
    env.wait_for_log("freeze ended; its snapshot is released", 2);
    assert!(!pg_dump(&second).status.success());
}

#[test]
fn an_online_rebuild_of_a_postgresql_volume_finds_and_repairs_and_then_finds_nothing() {
    let Some((cluster, env, root, _config)) = served_pg("desk") else {
        return;
    };
    env.dt_ok(&[b"mkdir", b"-p", b"vol/docs"]);
    env.dt_ok(&[b"touch", b"vol/docs/kept.txt", b"vol/docs/lost-row.txt"]);
    let lost = env.id_of(&root.join("docs/lost-row.txt"));
    env.rebuild_scan_silent("vol");

    // Damage: a file made behind deskd's back, and a row lost from the database (its file
    // and mirror still on the disk).
    std::fs::write(root.join("docs/unregistered.txt"), b"x").unwrap();
    let deleted = cluster
        .admin("desk")
        .execute(
            "DELETE FROM deskd.objects WHERE id = $1",
            &[&i64::from(lost)],
        )
        .unwrap();
    assert_eq!(deleted, 1);

    let scan = env.deskd(&["rebuild", "-s", root.to_str().unwrap()]);
    assert_eq!(scan.status.code(), Some(1), "{}", stderr(&scan));
    let lines = String::from_utf8_lossy(&scan.stdout).into_owned();
    assert!(lines.contains("docs/unregistered.txt"), "{lines}");
    assert!(lines.contains("docs/lost-row.txt"), "{lines}");

    let repair = env.deskd(&["rebuild", root.to_str().unwrap()]);
    assert!(repair.status.success(), "{}", stderr(&repair));
    env.rebuild_scan_silent("vol");
    // The lost row is back under its own ID (its mirror's); the new file has one; find sees
    // both at once (the name index follows the repairs).
    assert_eq!(env.id_of(&root.join("docs/lost-row.txt")), lost);
    let found = env.deskd_ok(&["find", "unregistered"]);
    assert!(found.contains("docs/unregistered.txt"), "{found}");
    let found = env.deskd_ok(&["find", "lost-row"]);
    assert!(found.contains("docs/lost-row.txt"), "{found}");
}

#[test]
fn an_online_rebuild_leaves_what_another_server_changed_meanwhile_and_both_see_its_repairs() {
    let Some((_cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let defaults = backend_lines(&url, &pw);
    let mut a = Env::new(&["vol"]);
    let root = std::fs::canonicalize(a.path("vol")).unwrap();
    // A's rebuild walks only once the test lets it: it has read its snapshot by then.
    let go_on = a.hook_file("DESKD_TEST_REBUILD_HOLD_WALK_UNTIL", "walk-on");
    a.serve_with_defaults("vol", &defaults);
    let b = second_server(&root, &defaults, &[]);
    a.dt_ok(&[b"mkdir", b"vol/docs"]);
    a.dt_ok(&[b"touch", b"vol/docs/draft.txt"]);
    let draft = a.id_of(&root.join("docs/draft.txt"));
    std::fs::write(root.join("docs/unregistered.txt"), b"x").unwrap();

    let scan = a
        .command_for(DESKD, &[b"rebuild", b"-s", root.as_os_str().as_bytes()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    a.wait_for_log("test hook: walk held before", 1);
    // Through B, after A's snapshot: a rename A's own clients never made.
    let b_abs = |rel: &str| root.join(rel).into_os_string();
    b.dt_ok(&[
        b"mv",
        b_abs("docs/draft.txt").as_bytes(),
        b_abs("docs/final.txt").as_bytes(),
    ]);
    std::fs::write(&go_on, b"").unwrap();
    let out = scan.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{lines}{}", stderr(&out));
    // The damage is reported; B's rename, newer than the snapshot, is not (the change log
    // names it, whichever server wrote it).
    assert!(lines.contains("docs/unregistered.txt"), "{lines}");
    assert!(!lines.contains("final.txt"), "{lines}");
    assert!(!lines.contains("draft.txt"), "{lines}");

    // Repaired through A; B's find has the new object within its lag, and B's scan is clean.
    a.deskd_ok(&["rebuild", root.to_str().unwrap()]);
    let began = std::time::Instant::now();
    while !b
        .deskd_ok(&["find", "unregistered"])
        .contains("docs/unregistered.txt")
    {
        assert!(
            began.elapsed() < std::time::Duration::from_secs(15),
            "B's find never saw the repair"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let clean = b.deskd(&["rebuild", "-s", root.to_str().unwrap()]);
    assert!(
        clean.status.success() && clean.stdout.is_empty(),
        "{}{}",
        String::from_utf8_lossy(&clean.stdout),
        stderr(&clean)
    );
    assert_eq!(b.id_of(&root.join("docs/final.txt")), draft);
}

#[test]
fn watch_auto_in_defaults_serves_a_postgresql_volume_unwatched_and_says_why() {
    let Some((_cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let mut env = Env::new(&["vol"]);
    // `auto` for every volume in [defaults], as a site watching its SQLite volumes sets it.
    env.serve_with_defaults(
        "vol",
        &format!("{}watch = \"auto\"\n", backend_lines(&url, &pw)),
    );
    env.wait_for_log("a desktop in PostgreSQL is not watched yet", 1);
    env.dt_ok(&[b"mkdir", b"vol/Served"]);
    let root = std::fs::canonicalize(env.path("vol")).unwrap();
    assert!(env.id_of(&root.join("Served")) >= 17);
    let status = env.status_json();
    let text = status.to_string();
    assert!(
        text.contains("not watched yet"),
        "status says why the volume is not watched: {text}"
    );
}

#[test]
fn backend_set_over_a_registered_sqlite_desktop_is_refused_until_it_is_migrated() {
    let Some((cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let mut env = Env::new(&["vol"]);
    let root = std::fs::canonicalize(env.path("vol")).unwrap();
    // A volume served from its SQLite desktop for years.
    env.serve(&["vol"]);
    env.dt_ok(&[b"mkdir", b"-p", b"vol/Jobs/2026"]);
    env.dt_ok(&[b"touch", b"vol/Jobs/2026/layout.indd"]);
    let paths = [root.join("Jobs"), root.join("Jobs/2026/layout.indd")];
    let before = ids_of(&env, &paths);
    env.term();
    // The admin sets `backend` and forgets `deskd migrate`: refused, nothing made anywhere.
    let cfg = config_with_volumes(&env, &backend_lines(&url, &pw), &[root.as_path()]);
    let out = env.serve_refused(&env.path("s.sock"), &["--config", cfg.to_str().unwrap()]);
    let said = stderr(&out);
    assert!(
        said.contains("holds 4 objects") && said.contains("deskd migrate"),
        "{said}"
    );
    assert!(
        deskd_volume::read_volume_identity(&root).is_none(),
        "no identity stamped"
    );
    let mut admin = cluster.admin("desk");
    let schema = admin
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'deskd'",
            &[],
        )
        .unwrap();
    assert_eq!(schema.get::<_, i64>(0), 0, "nothing made in the database");
    // Migrated, the same configuration serves it with every ID.
    env.deskd_ok(&[
        "migrate",
        root.to_str().unwrap(),
        "--to",
        &url,
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    env.start(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(ids_of(&env, &paths), before);
}

#[test]
fn freezing_again_and_again_holds_one_snapshot_no_longer_than_freeze_max() {
    let Some((_cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let mut env = Env::new(&["vol"]);
    let root = std::fs::canonicalize(env.path("vol")).unwrap();
    env.serve_with_defaults(
        "vol",
        &format!("{}freeze_max = 2\n", backend_lines(&url, &pw)),
    );
    let freeze = || {
        let out = env.deskd_ok(&["freeze", "--volume", root.to_str().unwrap(), "2"]);
        out.lines()
            .find_map(|l| l.strip_prefix("snapshot "))
            .unwrap_or_else(|| panic!("no snapshot in {out:?}"))
            .to_owned()
    };
    // A volume owner freezing again and again (each asks for freeze_max): the first snapshot
    // is let go freeze_max after it was taken, and a later freeze gets a new one, so VACUUM
    // is never held back longer than that by one snapshot.
    // Taken before the first freeze, so a late start of it cannot eat into the lower bound.
    let began = std::time::Instant::now();
    let first = freeze();
    loop {
        let now = freeze();
        if now != first {
            break;
        }
        assert!(
            began.elapsed() < std::time::Duration::from_secs(10),
            "the first snapshot was still held {:?} after it was taken (freeze_max 2 s)",
            began.elapsed()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(began.elapsed() >= std::time::Duration::from_millis(1500));
    env.wait_for_log("freeze ended; its snapshot is released", 1);
}

/// The hostile review of stop 39 planted 20,040 files and a write of root's waited 13.7 s for
/// the online rebuild's apply, which held the volume's row lock from start to end. The apply
/// now commits in chunks of about 200 ms: writes through this server and through a second one
/// are answered while it still runs, and the result is right (a scan afterwards is clean,
/// and what the writes made keeps its IDs).
#[test]
fn writes_through_both_servers_are_answered_during_a_long_online_rebuild_of_planted_files() {
    let Some((_cluster, a, b, root, _defaults)) = two_servers_pg("desk") else {
        return;
    };
    a.dt_ok(&[b"mkdir", b"vol/docs"]);
    // Planted behind deskd's back, each one a repair (an ID, a row, a resource file).
    for d in 0..10 {
        let dir = root.join(format!("planted{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..600 {
            std::fs::write(dir.join(format!("f{f}")), b"").unwrap();
        }
    }
    let mut rebuild = a
        .command_for(DESKD, &[b"rebuild", root.as_os_str().as_bytes()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    a.wait_for_log("rebuild applies in chunks: the first is committed", 1);
    let began = std::time::Instant::now();
    a.dt_ok(&[b"mkdir", b"vol/docs/during-a"]);
    let b_abs = root.join("docs/during-b").into_os_string();
    b.dt_ok(&[b"mkdir", b_abs.as_bytes()]);
    let waited = began.elapsed();
    // Both writes were answered while the rebuild was still applying.
    assert!(
        rebuild.try_wait().unwrap().is_none(),
        "the rebuild ended before the writes were answered ({waited:?}): plant more files"
    );
    assert!(waited < std::time::Duration::from_secs(5), "{waited:?}");
    let during_a = a.id_of(&root.join("docs/during-a"));
    let during_b = b.id_of(&root.join("docs/during-b"));
    let out = rebuild.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let chunks = a.log_text().matches("rebuild chunk committed").count();
    eprintln!("writes answered in {waited:?} during the rebuild");
    let _ = chunks;
    // Right afterwards: nothing left to repair, through either server; the writes keep
    // their IDs; every planted file has one of its own.
    a.rebuild_scan_silent("vol");
    let clean = b.deskd(&["rebuild", "-s", root.to_str().unwrap()]);
    assert!(
        clean.status.success() && clean.stdout.is_empty(),
        "{}{}",
        String::from_utf8_lossy(&clean.stdout),
        stderr(&clean)
    );
    assert_eq!(a.id_of(&root.join("docs/during-a")), during_a);
    assert_eq!(a.id_of(&root.join("docs/during-b")), during_b);
    let planted: Vec<PathBuf> = (0..10)
        .flat_map(|d| (0..600).map(move |f| (d, f)))
        .step_by(97)
        .map(|(d, f)| root.join(format!("planted{d}/f{f}")))
        .collect();
    let ids = ids_of(&a, &planted);
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
}

/// `deskd freeze` without `--volume` freezes every volume and prints every volume's answer,
/// each led by its root: two volumes in one database, each with its own snapshot (it printed
/// only the last volume's answer before stop 40).
#[test]
fn freeze_without_a_volume_prints_every_volumes_snapshot() {
    let Some((_cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let mut env = Env::new(&["vol", "other"]);
    let cfg = config_with_volumes(
        &env,
        &backend_lines(&url, &pw),
        &[&env.path("vol"), &env.path("other")],
    );
    env.start(&["--config", cfg.to_str().unwrap()]);
    let out = env.deskd_ok(&["freeze", "60"]);
    let mut snapshots = Vec::new();
    for name in ["vol", "other"] {
        let root = std::fs::canonicalize(env.path(name)).unwrap();
        let lead = format!("{}: ", root.display());
        assert!(out.contains(&format!("{lead}frozen until ")), "{out}");
        let snapshot = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{lead}snapshot ")))
            .unwrap_or_else(|| panic!("no snapshot for {name} in {out:?}"));
        snapshots.push(snapshot.to_owned());
    }
    assert_ne!(snapshots[0], snapshots[1], "{out}");
    let status = env.deskd_ok(&["status", "--json"]);
    assert_eq!(status.lines().count(), 2, "{status}");
    for line in status.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["frozen_until"].as_i64().is_some(), "{v}");
    }
    env.deskd_ok(&["thaw"]);
}

/// A volume the server refused at start (here `backend` set over a registered SQLite desktop,
/// `deskd migrate` forgotten) was missing from `deskd status`: it is now listed after the
/// served ones, with why, to root (and the root's owner); nobody sees it refused but not why
/// (the reason may name the database). Text and JSON.
#[test]
fn a_volume_refused_at_start_is_in_status_with_why() {
    let Some((_cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let mut env = Env::new(&["vol", "old"]);
    // "old" was served from its SQLite desktop.
    let old = sqlite_desktop_with_objects(&mut env, "old");
    let cfg = config_with_volumes(
        &env,
        &backend_lines(&url, &pw),
        &[&env.path("vol"), old.as_path()],
    );
    env.start(&["--config", cfg.to_str().unwrap()]);
    let text = env.deskd_ok(&["status"]);
    let at = text
        .find(&format!("{}\n  NOT SERVED:   ", old.display()))
        .unwrap_or_else(|| panic!("{text}"));
    let refusal = text[at..].lines().nth(1).unwrap();
    assert!(
        refusal.contains("holds") && refusal.contains("deskd migrate"),
        "{refusal}"
    );
    let json = env.deskd_ok(&["status", "--json"]);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{json}");
    assert_eq!(lines[1]["path"], old.display().to_string());
    assert_eq!(lines[1]["served"], false);
    assert!(
        lines[1]["not_served"]
            .as_str()
            .unwrap()
            .contains("deskd migrate"),
        "{json}"
    );
    // A reload tries it again and refuses it again: still "since" its first refusal (was the
    // reload's time), once the clock has moved past it.
    let since = lines[1]["since"].as_i64().unwrap();
    while deskd_db::now_unix() <= since {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    env.sighup(1);
    let json = env.deskd_ok(&["status", "--json"]);
    let again: serde_json::Value = serde_json::from_str(json.lines().nth(1).unwrap()).unwrap();
    assert_eq!(again["since"].as_i64(), Some(since), "{json}");
    // --volume names served volumes only: the refused one is not listed then.
    let vol = std::fs::canonicalize(env.path("vol")).unwrap();
    let one = env.deskd_ok(&["status", "--volume", vol.to_str().unwrap()]);
    assert!(!one.contains("NOT SERVED"), "{one}");
    // Another user sees that it is refused, not why.
    let Some(out) = env.as_nobody(DESKD, &[b"status"]) else {
        skip("needs root to act as another user");
        return;
    };
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        said.contains("NOT SERVED:   refused (root or the volume owner"),
        "{said}"
    );
    assert!(
        !said.contains("deskd migrate") && !said.contains("holds"),
        "{said}"
    );
}

/// A volume refused at start because the database could not be reached to check it (an
/// SQLite desktop with objects, no mark on the root) said only "cannot connect", stayed
/// refused after the database came back until a reload, was "not a volume served" to
/// `status --volume`, and "add it to the configuration" to dt (newcomer review of stop 40).
/// Now: the real situation in status, `status --volume` and dt (why to root, not to
/// nobody); once the database is back, tried again without a reload: one the database holds
/// (its mark lost) is served with its IDs, one it does not hold is refused for that.
#[test]
fn a_volume_refused_while_the_database_is_down_is_checked_again_when_it_comes_back() {
    let Some((mut cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let mut env = Env::new(&["vol", "old", "moved"]);
    let old = std::fs::canonicalize(env.path("old")).unwrap();
    let moved = std::fs::canonicalize(env.path("moved")).unwrap();
    // Both served from their SQLite desktops; "moved" then moved into the database, and its
    // root's mark lost (a restore of the root directory, a copy without xattrs).
    env.serve(&["old", "moved"]);
    env.dt_ok(&[b"touch", b"old/kept.txt", b"moved/kept.txt"]);
    let kept = env.id_of(&moved.join("kept.txt"));
    env.term();
    let moved_arg = moved.to_str().unwrap();
    env.deskd_ok(&[
        "migrate",
        moved_arg,
        "--to",
        &url,
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    deskd_volume::mark_desktop_in_postgresql(&moved, false).unwrap();
    cluster.stop();
    let cfg = config_with_volumes(
        &env,
        &backend_lines(&url, &pw),
        &[&env.path("vol"), old.as_path(), moved.as_path()],
    );
    env.start(&["--config", cfg.to_str().unwrap()]);
    let unchecked = "cannot check whether the database holds this volume: cannot connect";
    let text = env.deskd_ok(&["status"]);
    for root in [&old, &moved] {
        let at = text
            .find(&format!("{}\n  NOT SERVED:   ", root.display()))
            .unwrap_or_else(|| panic!("{text}"));
        let refusal = text[at..].lines().nth(1).unwrap();
        assert!(refusal.contains(unchecked), "{refusal}");
        assert!(refusal.contains("tries again"), "{refusal}");
    }
    // `status --volume` of a refused volume: its note, and exit 1 (it is not served).
    let one = env.deskd(&["status", "--volume", old.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&one.stdout);
    assert_eq!(one.status.code(), Some(1), "{said}");
    assert!(
        said.contains("NOT SERVED:   ") && said.contains(unchecked),
        "{said}"
    );
    // dt says the server refused it and why, not "add it to the configuration".
    let out = env.dt(&[b"touch", b"old/new.txt"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("refused this volume") && err.contains(unchecked),
        "{err}"
    );
    assert!(!err.contains("add it to"), "{err}");
    if let Some(out) = env.as_nobody(DESKD, &[b"status", b"--volume", old.as_os_str().as_bytes()]) {
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("NOT SERVED:   refused (root or the volume owner"),
            "{said}"
        );
        assert!(!said.contains("cannot check"), "{said}");
        // dt likewise: refused, and why only to root and the owner.
        let out = env
            .as_nobody(DT, &[b"touch", old.join("x").as_os_str().as_bytes()])
            .unwrap();
        let err = stderr(&out);
        assert!(
            err.contains("refused this volume: refused (root or the volume owner"),
            "{err}"
        );
        assert!(!err.contains("cannot check"), "{err}");
    } else {
        skip("needs root to act as another user");
    }
    // The database comes back: no reload.
    cluster.restart();
    env.wait_for_log("now served (the database answered the check", 1);
    env.wait_for_log("the database has no copy of the volume", 1);
    assert_eq!(env.id_of(&moved.join("kept.txt")), kept);
    env.dt_ok(&[b"touch", b"moved/after.txt"]);
    let text = env.deskd_ok(&["status"]);
    assert!(
        !text.contains(&format!("{}\n  NOT SERVED", moved.display())),
        "{text}"
    );
    let at = text
        .find(&format!("{}\n  NOT SERVED:   ", old.display()))
        .unwrap_or_else(|| panic!("{text}"));
    let refusal = text[at..].lines().nth(1).unwrap();
    assert!(
        refusal.contains("deskd migrate") && !refusal.contains("cannot check"),
        "{refusal}"
    );
    assert!(
        !env.log_text().contains("reconfigured"),
        "{}",
        env.log_text()
    );
}

/// `deskd restore --leave-postgresql` trusted the admin that every server was stopped. With
/// `--config` it asks the volume's database for the servers' serving lock: refused while a
/// server serves the volume (nothing changed: no SQLite desktop written, the mark kept), done
/// once it is stopped. Without `--config` it says it did not check.
#[test]
fn restore_leaving_postgresql_is_refused_while_a_server_serves_the_volume() {
    let Some((_cluster, mut env, root, config)) = served_pg("desk") else {
        return;
    };
    env.dt_ok(&[b"touch", b"vol/kept.txt"]);
    let kept = env.id_of(&root.join("kept.txt"));
    let backups = env.path("backups");
    std::fs::create_dir(&backups).unwrap();
    let cfg = config.to_str().unwrap();
    env.deskd_ok(&[
        "backup",
        "--config",
        cfg,
        root.to_str().unwrap(),
        backups.to_str().unwrap(),
    ]);
    let file = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "desktop"))
        .unwrap();
    let file = file.to_str().unwrap();
    let volume = root.to_str().unwrap();
    let out = restore_leaving_postgresql(&env, cfg, file, volume);
    assert_refused(&out, "is being served from the database by deskd serve");
    // The holders name the deskd (its verb and own pid: the session's pid is the database's).
    let server_pid = env.server.as_ref().unwrap().id();
    assert!(
        stderr(&out).contains(&format!("application \"deskd serve pid {server_pid}")),
        "{}",
        stderr(&out)
    );
    assert!(deskd_volume::desktop_backend(&root).is_some());
    assert!(!root.join(".Desktop").exists());
    // The server goes on serving it, untouched.
    env.dt_ok(&[b"touch", b"vol/after.txt"]);
    env.term();
    env.deskd_ok(&[
        "restore",
        "--leave-postgresql",
        "--config",
        cfg,
        file,
        volume,
    ]);
    assert!(deskd_volume::desktop_backend(&root).is_none());
    assert!(root.join(".Desktop").exists());
    env.serve(&["vol"]);
    assert_eq!(env.id_of(&root.join("kept.txt")), kept);
    env.term();
    // Without --config: refused (the database's ID counter unread), then done with
    // --ids-from-backup, with a word that nothing was checked.
    deskd_volume::mark_desktop_in_postgresql(&root, true).unwrap();
    let out = env.deskd(&["restore", "--leave-postgresql", "--force", file, volume]);
    assert_refused(&out, "--ids-from-backup");
    assert!(deskd_volume::desktop_backend(&root).is_some());
    let out = env.deskd(&[
        "restore",
        "--leave-postgresql",
        "--ids-from-backup",
        "--force",
        file,
        volume,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not checked whether a deskd serve serves"),
        "{}",
        stderr(&out)
    );
    // With a --config that gives the volume no database (another file, a volume table
    // missing): said that nothing was checked, not silently, and refused without
    // --ids-from-backup (the database's counter unread); done with it.
    deskd_volume::mark_desktop_in_postgresql(&root, true).unwrap();
    let plain = env.path("plain.toml");
    std::fs::write(&plain, "[defaults]\n").unwrap();
    let plain = plain.to_str().unwrap();
    let args = [
        "restore",
        "--leave-postgresql",
        "--force",
        "--config",
        plain,
    ];
    let out = env.deskd(&[&args[..], &[file, volume]].concat());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no database (`backend`): not checked")
            && stderr(&out).contains("--ids-from-backup"),
        "{}",
        stderr(&out)
    );
    assert!(deskd_volume::desktop_backend(&root).is_some());
    let out = env.deskd(&[&args[..], &["--ids-from-backup", file, volume]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no database (`backend`): not checked"),
        "{}",
        stderr(&out)
    );
}

/// `deskd restore --leave-postgresql` of a volume moved into the database with `deskd
/// migrate` took its ID counter from the backup and the stale `.Desktop` migrate left behind,
/// never from the database: IDs the database handed out after the backup (to files since
/// deleted) were handed out again (newcomer review of stop 41, finding 2). With `--config` the
/// database's counter counts; a database that cannot be reached is refused unless
/// `--ids-from-backup` says the admin accepts the backup's counter.
#[test]
fn restore_leaving_postgresql_continues_after_every_id_the_database_gave() {
    let Some((cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let mut env = Env::new(&["vol"]);
    let root = sqlite_desktop_with_objects(&mut env, "vol");
    let volume = root.to_str().unwrap();
    env.deskd_ok(&[
        "migrate",
        volume,
        "--to",
        &url,
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    assert!(
        root.join(".Desktop").exists(),
        "migrate keeps the old desktop"
    );
    env.serve_with_defaults("vol", &backend_lines(&url, &pw));
    let cfg = env.path("deskd.toml");
    let cfg = cfg.to_str().unwrap();
    let file = env.path("vol.desktop");
    let file = file.to_str().unwrap();
    env.deskd_ok(&["backup", "--config", cfg, volume, file]);
    let backed_up = env.status_json()["last_id"].as_u64().unwrap() as u32;
    // IDs handed out after the backup, to files since deleted: known only to the database.
    let mut given = Vec::new();
    for n in 0..3 {
        let p = root.join(format!("gone-{n}"));
        env.dt_ok(&[b"touch", p.as_os_str().as_bytes()]);
        given.push(env.id_of(&p));
        env.dt_ok(&[b"rm", p.as_os_str().as_bytes()]);
    }
    let highest = *given.iter().max().unwrap();
    assert!(highest > backed_up, "{given:?} after {backed_up}");
    env.term();

    // The database down and no --ids-from-backup: refused, nothing changed.
    let mut cluster = cluster;
    cluster.stop();
    let out = restore_leaving_postgresql(&env, cfg, file, volume);
    assert_refused(&out, "--ids-from-backup");
    assert!(deskd_volume::desktop_backend(&root).is_some());
    cluster.restart();

    let out = restore_leaving_postgresql(&env, cfg, file, volume);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("IDs continue after {highest};")),
        "{said}"
    );
    // Served from the restored SQLite desktop: the next ID is above every one the database gave.
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/new"]);
    let next = env.id_of(&root.join("new"));
    assert!(
        next > highest,
        "ID {next} given again (the database gave {given:?})"
    );
}

/// A write that waits longer than `busy_wait` for the volume's row lock (here held by an
/// admin's open transaction, as a long batch of another server would) is refused as busy, to
/// try again; the writer does not take it for a lost database (no "database unreachable",
/// status not read-only), and the next write, once the lock is free, is recorded at once.
#[test]
fn a_row_lock_wait_past_busy_wait_is_busy_not_a_lost_database() {
    let Some((cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let mut env = Env::new(&["vol"]);
    let root = std::fs::canonicalize(env.path("vol")).unwrap();
    env.serve_with_defaults(
        "vol",
        &format!("{}busy_wait = 1\n", backend_lines(&url, &pw)),
    );
    env.dt_ok(&[b"mkdir", b"vol/docs"]);
    let mut admin = cluster.admin("desk");
    let mut held = admin.transaction().unwrap();
    held.query("SELECT last_id FROM deskd.volume FOR UPDATE", &[])
        .unwrap();
    std::fs::write(root.join("docs/new.txt"), b"").unwrap();
    let mut client = env.client();
    let vol = client.open_volume(&root).unwrap().vol;
    let refused = client
        .call(add_path(vol, b"docs/new.txt".to_vec()))
        .unwrap_err();
    held.rollback().unwrap();
    let said = format!("{refused}");
    assert!(
        matches!(
            &refused,
            deskd_client::ClientError::Server(e) if e.code == deskd_client::ErrorCode::Busy
        ),
        "{said}"
    );
    assert!(
        !env.log_text().contains("database unreachable"),
        "{}",
        env.log_text()
    );
    let status = env.status_json();
    assert_eq!(status["read_only"], false, "{status}");
    // The lock is free: the next write is recorded, with no reconnection in between.
    env.dt_ok(&[b"touch", b"vol/docs/after.txt"]);
    assert!(env.id_of(&root.join("docs/after.txt")) > 0);
    assert!(!env.log_text().contains("database unreachable"));
}

/// One request of a batch that fails for a conflict with another session (here a deadlock
/// PostgreSQL breaks by aborting the writer's statement) is answered busy; the writer asks the
/// database whether it is there before it takes the `Busy` for a lost database, so the volume
/// stays writable and the next write is recorded (before stop 40 any `Busy` among a batch's
/// replies made the writer drop its connection and answer read-only).
#[test]
fn a_deadlock_on_one_request_is_busy_and_the_volume_stays_writable() {
    let Some((cluster, env, root, _config)) = served_pg("desk") else {
        return;
    };
    env.dt_ok(&[b"touch", b"vol/doc.txt"]);
    let id = env.id_of(&root.join("doc.txt"));
    let mut admin = cluster.admin("desk");
    // This session's deadlock check comes long after the writer's (1 s by default), so the
    // writer's statement is the one PostgreSQL aborts.
    admin.batch_execute("SET deadlock_timeout = '20s'").unwrap();
    let mut held = admin.transaction().unwrap();
    held.query(
        "SELECT 1 FROM deskd.objects WHERE id = $1 FOR UPDATE",
        &[&i64::from(id)],
    )
    .unwrap();
    let socket = env.socket.clone();
    let asked = std::thread::spawn(move || {
        let mut client =
            deskd_client::Client::connect(&socket, std::time::Duration::from_secs(30)).unwrap();
        let vol = client.open_volume(&root).unwrap().vol;
        let reply = client.call(Request::SetInfo {
            vol,
            id,
            type_code: Some(*b"TEXT"),
            creator: None,
            flags: None,
        });
        (reply, root)
    });
    // The writer holds the volume's row and waits for the object's row; this session now
    // waits for the volume's row: a deadlock.
    // (Watched from a session of its own: statistics views keep one snapshot a transaction.)
    let mut watcher = cluster.admin("desk");
    let began = std::time::Instant::now();
    while watcher
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'desk' \
             AND wait_event_type = 'Lock'",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(
            began.elapsed() < std::time::Duration::from_secs(20),
            "the writer never waited"
        );
    }
    held.query("SELECT 1 FROM deskd.volume FOR UPDATE", &[])
        .unwrap();
    held.rollback().unwrap();
    let (reply, root) = asked.join().unwrap();
    let refused = reply.unwrap_err();
    assert!(
        matches!(
            &refused,
            deskd_client::ClientError::Server(e) if e.code == deskd_client::ErrorCode::Busy
        ),
        "{refused}"
    );
    assert!(
        !env.log_text().contains("database unreachable"),
        "{}",
        env.log_text()
    );
    assert_eq!(env.status_json()["read_only"], false);
    env.dt_ok(&[b"touch", b"vol/after.txt"]);
    assert!(env.id_of(&root.join("after.txt")) > 0);
    assert!(!env.log_text().contains("database unreachable"));
}

/// With the database down, `dt mkdir` and `dt touch` made the folder or file and then said
/// nothing was recorded (and `dt mkdir` again failed with `File exists`). The server now tells
/// a client opening a PostgreSQL volume that it is read-only when its database does not
/// answer, whether or not the writer has noticed yet, so dt refuses before it touches the
/// disk; with the database back, the same commands work.
#[test]
fn dt_refuses_before_touching_the_disk_while_the_database_is_down() {
    let Some((mut cluster, env, root, _config)) = served_pg("desk") else {
        return;
    };
    env.dt_ok(&[b"mkdir", b"vol/docs"]);
    // Stopped while the server is idle: its writer has not noticed. An opening takes the
    // follower's word while it was answered within 2 s (no read of its own): the follower
    // notices within its poll (1 s), and from then on openings read to check.
    cluster.stop();
    env.wait_for_log("follower: ", 1);
    for args in [
        &[&b"mkdir"[..], b"vol/docs/new"][..],
        &[b"touch", b"vol/docs/new.txt"],
        &[b"mkdir", b"-p", b"vol/docs/a/b"],
    ] {
        let out = env.dt(args);
        assert!(!out.status.success(), "dt {args:?} succeeded");
        let said = stderr(&out);
        assert!(said.contains("read-only"), "dt {args:?}: {said}");
    }
    assert!(!root.join("docs/new").exists(), "mkdir touched the disk");
    assert!(
        !root.join("docs/new.txt").exists(),
        "touch touched the disk"
    );
    assert!(!root.join("docs/a").exists(), "mkdir -p touched the disk");
    // Back: the next command's opening finds the database answering, and its write goes on
    // a new connection at once (the writer's died with the database).
    cluster.restart();
    env.dt_ok(&[b"mkdir", b"vol/docs/new"]);
    env.dt_ok(&[b"touch", b"vol/docs/new.txt"]);
    assert!(env.id_of(&root.join("docs/new")) > 0);
    assert!(env.id_of(&root.join("docs/new.txt")) > 0);
    env.rebuild_scan_silent("vol");
}

/// The database lost between dt's opening (the volume writable) and its write: the file is
/// made, the write refused. dt said "nothing was recorded, try again" (a retry finds the file
/// there); it now exits non-zero saying the change is on disk and not in the desktop, and the
/// command that records it, which does once the database is back.
#[test]
fn dt_says_what_is_on_disk_when_the_database_dies_between_its_check_and_its_write() {
    let Some((mut cluster, env, root, _config)) = served_pg("desk") else {
        return;
    };
    env.dt_ok(&[b"mkdir", b"vol/docs"]);
    let go = env.path("go");
    let child = dt_paused(&env, "touch-placed", &go, &[b"touch", b"vol/docs/late.txt"]);
    let (status, said) = at_pause(child, "touch-placed", &go, || cluster.stop());
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(root.join("docs/late.txt").exists());
    assert!(
        said.contains("docs/late.txt: changed on disk but NOT recorded in the desktop"),
        "{said}"
    );
    assert!(said.contains("database is unreachable"), "{said}");
    let rebuild = format!("deskd rebuild {}", root.display());
    assert!(said.contains(&rebuild), "{said}");
    assert!(!said.contains("try again"), "{said}");
    cluster.restart();
    // The writer reconnects with its back-off; then the command dt named records the file
    // (online, through the server).
    env.wait_for_log("database reachable again; the volume is writable", 1);
    let out = env.deskd(&["rebuild", root.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(env.id_of(&root.join("docs/late.txt")) > 0);
    env.rebuild_scan_silent("vol");
}

/// A verb that only looks (`dt info` of a file dt never saw, which registers it) changed
/// nothing on disk: the database lost between dt's opening and its registration is not
/// reported as a change "on disk but NOT recorded" (the read-through of stop 41 saw it).
#[test]
fn dt_info_with_the_database_lost_does_not_say_it_changed_the_disk() {
    let Some((mut cluster, env, _root, _config)) = served_pg("desk") else {
        return;
    };
    env.dt_ok(&[b"mkdir", b"vol/docs"]);
    std::fs::write(env.path("vol/docs/plain.txt"), b"x").unwrap();
    // Stopped: the opening may still be told writable (the follower answered within 2 s),
    // and the registration is then refused read-only.
    cluster.stop();
    let out = env.dt(&[b"info", b"vol/docs/plain.txt"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(!said.contains("changed on disk"), "{said}");
}

/// `dt set` registers the object before it writes anything: the database lost between dt's
/// check and that registration leaves the disk as it was, and dt must not say the change is
/// on disk and NOT recorded (the read-through of stop 41: only the reading verbs were fixed).
#[test]
fn dt_set_with_the_database_lost_does_not_say_it_changed_the_disk() {
    let Some((mut cluster, env, _root, _config)) = served_pg("desk") else {
        return;
    };
    env.dt_ok(&[b"mkdir", b"vol/docs"]);
    std::fs::write(env.path("vol/docs/plain.txt"), b"x").unwrap();
    cluster.stop();
    let out = env.dt(&[b"set", b"--comment", b"note", b"vol/docs/plain.txt"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(!said.contains("changed on disk"), "{said}");
    assert!(
        !env.path("vol/docs/.rsrc/plain.txt").exists(),
        "dt set wrote a resource file although the desktop refused: {said}"
    );
}

/// `deskd rebuild -f` online on a PostgreSQL volume: every ID is decided from the disk (the
/// mirrors and resource files): a row moved to another ID in the database behind deskd's back
/// goes back to the ID its file carries, a row lost comes back under its own, and `-s` is then
/// silent through the server.
#[test]
fn an_online_fresh_rebuild_of_a_postgresql_volume_takes_every_id_from_the_disk() {
    let Some((cluster, env, root, _config)) = served_pg("desk") else {
        return;
    };
    env.dt_ok(&[b"mkdir", b"-p", b"vol/docs/deep"]);
    env.dt_ok(&[b"touch", b"vol/docs/a.txt", b"vol/docs/deep/b.txt"]);
    let paths = [
        root.join("docs"),
        root.join("docs/deep"),
        root.join("docs/a.txt"),
        root.join("docs/deep/b.txt"),
    ];
    let before = ids_of(&env, &paths);
    let mut admin = cluster.admin("desk");
    // Damage: a.txt's row gone, b.txt's row under another ID than its file carries.
    admin
        .execute(
            "DELETE FROM deskd.objects WHERE id = $1",
            &[&i64::from(before[2])],
        )
        .unwrap();
    admin
        .execute(
            "UPDATE deskd.objects SET id = 900 WHERE id = $1",
            &[&i64::from(before[3])],
        )
        .unwrap();
    admin
        .execute(
            "UPDATE deskd.volume SET last_id = greatest(last_id, 900)",
            &[],
        )
        .unwrap();
    let out = env.deskd(&["rebuild", "-f", root.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.rebuild_scan_silent("vol");
    assert_eq!(ids_of(&env, &paths), before);
    let gone = admin
        .query_one("SELECT count(*) FROM deskd.objects WHERE id = 900", &[])
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(gone, 0, "the row under the wrong ID is gone");
}

/// An online repair whose walk outlasts the change log (more batches committed meanwhile than
/// it keeps, here 20 with the test hook) cannot know what clients changed: it is refused with
/// "the change log was pruned past the rebuild's snapshot … run it again", applies nothing,
/// and a second run repairs.
#[test]
fn an_online_rebuild_after_the_change_log_was_pruned_past_its_snapshot_is_refused() {
    let Some((_cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let mut env = Env::new(&["vol"]);
    let root = std::fs::canonicalize(env.path("vol")).unwrap();
    let go_on = env.path("walk-on");
    env.server_env = vec![
        ("DESKD_TEST_PG_CHANGES_KEEP".into(), "20".into()),
        (
            "DESKD_TEST_REBUILD_HOLD_WALK_UNTIL".into(),
            go_on.display().to_string(),
        ),
    ];
    env.serve_with_defaults("vol", &backend_lines(&url, &pw));
    env.dt_ok(&[b"mkdir", b"vol/docs"]);
    std::fs::write(root.join("docs/unregistered.txt"), b"x").unwrap();
    let rebuild = env
        .command_for(DESKD, &[b"rebuild", root.as_os_str().as_bytes()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    env.wait_for_log("test hook: walk held before", 1);
    // 60 batches, one a request, while the walk waits: the log keeps the newest 20.
    let mut c = env.client();
    let vol = c.open_volume(&root).unwrap().vol;
    for i in 0..60 {
        let rel = format!("docs/f{i}");
        std::fs::write(root.join(&rel), b"").unwrap();
        c.object(add_path(vol, rel.into_bytes())).unwrap();
    }
    env.wait_for_log("change log pruned", 1);
    std::fs::write(&go_on, b"").unwrap();
    let out = rebuild.wait_with_output().unwrap();
    let said = stderr(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("the change log was pruned past the rebuild's snapshot")
            && said.contains("run it again"),
        "{said}"
    );
    // Nothing applied: the unregistered file is still unregistered.
    let scan = env.deskd(&["rebuild", "-s", root.to_str().unwrap()]);
    assert_eq!(scan.status.code(), Some(1), "{}", stderr(&scan));
    assert!(
        String::from_utf8_lossy(&scan.stdout).contains("docs/unregistered.txt"),
        "{}",
        String::from_utf8_lossy(&scan.stdout)
    );
    env.deskd_ok(&["rebuild", root.to_str().unwrap()]);
    env.rebuild_scan_silent("vol");
}

/// A client from before PostgreSQL volumes (hello flags 0) cannot decode `FrozenSnapshot`, a
/// reply appended within protocol 3: it is refused, before anything is frozen, with an error
/// it can read; this build's client gets the snapshot from the same server.
#[test]
fn an_older_client_is_refused_a_postgresql_freeze_it_could_not_read() {
    use std::io::{Read as _, Write as _};
    let Some((_cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let mut env = Env::new(&["vol"]);
    let cfg = config_with_volumes(&env, &backend_lines(&url, &pw), &[&env.path("vol")]);
    env.start(&["--config", cfg.to_str().unwrap()]);
    let mut old = std::os::unix::net::UnixStream::connect(&env.socket).unwrap();
    old.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    old.write_all(&deskd_proto::transport::client_hello_with_flags(
        deskd_proto::PROTOCOL_VERSION,
        0,
    ))
    .unwrap();
    let mut hello = [0u8; 8];
    old.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[6..8], &[0, 0], "accepted");
    deskd_proto::write_frame(
        &mut old,
        &deskd_proto::RequestFrame {
            id: 7,
            request: Request::Freeze {
                vol: None,
                seconds: Some(60),
            },
        },
    )
    .unwrap();
    let mut body = Vec::new();
    assert!(deskd_proto::read_frame_body(&mut old, &mut body).unwrap());
    let reply: deskd_proto::ReplyFrame = deskd_proto::decode(&body).unwrap();
    let err = reply.result.expect_err("an older client is refused");
    assert_eq!(err.code, deskd_proto::ErrorCode::BadRequest, "{err:?}");
    assert!(err.message.contains("too old"), "{err:?}");
    let status = env.deskd_ok(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(status.lines().next().unwrap()).unwrap();
    assert!(v["frozen_until"].is_null(), "nothing was frozen: {v}");
    let out = env.deskd_ok(&["freeze", "60"]);
    assert!(out.contains("snapshot "), "{out}");
    env.deskd_ok(&["thaw"]);
}

/// Hostile review of stop 41, finding 5: the serving lock `deskd restore --leave-postgresql
/// --config` asks for is held by each server's writer session only. A server whose session
/// the database lost (a restart of PostgreSQL, a terminated backend, a network blip) still
/// serves the volume, and holds no lock until its writer connects again: the restore must
/// not take that for "no server serves it".
#[test]
fn restore_leaving_postgresql_is_refused_while_a_server_reconnects() {
    let Some((cluster, mut env, root, config)) = served_pg("desk") else {
        return;
    };
    env.dt_ok(&[b"touch", b"vol/kept.txt"]);
    let cfg = config.to_str().unwrap();
    let volume = root.to_str().unwrap();
    let file = backed_up(&env, &root, &config);
    // Every session of the server's ends (as at a restart of PostgreSQL), and is gone.
    let mut admin = cluster.admin("desk");
    let pids: Vec<i32> = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = 'desk' AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!pids.is_empty());
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid",
            &[&pids],
        )
        .unwrap();
    let began = std::time::Instant::now();
    loop {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&pids],
            )
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            began.elapsed() < std::time::Duration::from_secs(15),
            "{left} left"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Both of the server's sessions (the follower's within its poll, the writer's once it
    // sees the follower lost the database) hold the serving lock again: before, none did until
    // the server's next write, however long it stayed idle. Waited for both, not one: the
    // restore must then be refused, never let through to the moved-out backstop (which the
    // test accepted before, so it could pass without proving the refusal).
    wait_both_sessions_hold_the_lock(&cluster);
    let out = restore_leaving_postgresql(&env, cfg, &file, volume);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}\n{}",
        stderr(&out),
        env.log_text()
    );
    assert!(deskd_volume::desktop_backend(&root).is_some());
    assert!(!root.join(".Desktop").exists());
    env.term();
}

/// How many serving locks (shared, granted) the database's sessions hold now.
fn serving_locks(cluster: &deskd_pg::test_cluster::TestCluster) -> i64 {
    cluster
        .admin("desk")
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock' \
             AND granted",
            &[],
        )
        .unwrap()
        .get(0)
}

/// Wait until both of the server's sessions (its writer's and its follower's) hold the serving
/// lock: the follower makes its first connection beside the server's first requests, and one
/// that passed the test's hold-off check before the test set it would take the lock after
/// [`kill_lock_holders`] looked (then a migrate or restore is refused as served).
fn wait_both_sessions_hold_the_lock(cluster: &deskd_pg::test_cluster::TestCluster) {
    let began = std::time::Instant::now();
    while serving_locks(cluster) < 2 {
        assert!(
            began.elapsed() < std::time::Duration::from_secs(15),
            "the writer and the follower do not both hold the serving lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// End every session holding a serving lock (the server's writer and follower, as a restart
/// of PostgreSQL or the network would), waiting until they are gone.
fn kill_lock_holders(admin: &mut postgres::Client) {
    let killed: Vec<bool> = admin
        .query(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_locks WHERE locktype = 'advisory' \
             AND mode = 'ShareLock' AND granted",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !killed.is_empty() && killed.iter().all(|k| *k),
        "{killed:?}"
    );
}

/// Wait until no session holds a serving lock (a moved-out volume's follower ends within its
/// poll, a second).
fn wait_no_serving_lock(cluster: &deskd_pg::test_cluster::TestCluster) {
    let began = std::time::Instant::now();
    while serving_locks(cluster) != 0 {
        assert!(
            began.elapsed() < std::time::Duration::from_secs(15),
            "a session still holds the serving lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `deskd restore --leave-postgresql --config CFG BACKUP VOLUME`, as `env`'s user.
fn restore_leaving_postgresql(
    env: &Env,
    cfg: &str,
    backup: &str,
    volume: &str,
) -> std::process::Output {
    env.deskd(&[
        "restore",
        "--leave-postgresql",
        "--config",
        cfg,
        backup,
        volume,
    ])
}

/// `out` is a refusal (exit 2) whose stderr says `what`.
fn assert_refused(out: &std::process::Output, what: &str) {
    let said = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains(what), "{said}");
}

/// A backup of served volume "vol" (through `config`), in `env`'s dir: its path.
fn backed_up(env: &Env, root: &std::path::Path, config: &std::path::Path) -> String {
    let file = env.path("vol.desktop");
    env.deskd_ok(&[
        "backup",
        "--config",
        config.to_str().unwrap(),
        root.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    file.to_str().unwrap().to_owned()
}

/// The highest ID the database has handed out for its volumes.
fn last_id(admin: &mut postgres::Client) -> i64 {
    admin
        .query_one("SELECT max(last_id) FROM deskd.volume", &[])
        .unwrap()
        .get(0)
}

/// What [`served_pg_held_off`] gives.
struct HeldOff {
    cluster: deskd_pg::test_cluster::TestCluster,
    url: String,
    pw: PathBuf,
    env: Env,
    root: PathBuf,
    hold_off: PathBuf,
}

/// Served volume "vol" of a new Env, its desktop in database "desk" of a new cluster, with
/// `vol/kept.txt` registered; its writer is held off from connecting while the file `hold_off`
/// exists (the test hook DESKD_TEST_PG_WRITER_HOLD_OFF: a server cut off by the network).
/// None as [`pg_database`].
fn served_pg_held_off() -> Option<HeldOff> {
    let (cluster, url, pw) = pg_database("desk")?;
    let mut env = Env::new(&["vol"]);
    let root = std::fs::canonicalize(env.path("vol")).unwrap();
    let hold_off = env.hook_file("DESKD_TEST_PG_WRITER_HOLD_OFF", "hold-off");
    env.serve_with_defaults("vol", &backend_lines(&url, &pw));
    env.dt_ok(&[b"touch", b"vol/kept.txt"]);
    Some(HeldOff {
        cluster,
        url,
        pw,
        env,
        root,
        hold_off,
    })
}

/// The newcomer review of stop 41, findings 1 and 3: after the database restarts, with no
/// write after it, the writer connects again by itself, takes the serving lock again (seen in
/// pg_locks) and says so, so `restore --leave-postgresql --config` stays refused.
#[test]
fn a_database_restart_with_no_write_after_it_retakes_the_serving_lock_and_restore_stays_refused() {
    let Some((mut cluster, env, root, config)) = served_pg("desk") else {
        return;
    };
    env.dt_ok(&[b"touch", b"vol/kept.txt"]);
    let file = backed_up(&env, &root, &config);
    assert!(
        serving_locks(&cluster) >= 1,
        "the writer's (and the follower's)"
    );
    cluster.stop();
    env.wait_for_log("database unreachable (", 1);
    cluster.restart();
    env.wait_for_log("database reachable again; the volume is writable", 1);
    // The writer's session at least (the follower's comes within its poll).
    assert!(
        serving_locks(&cluster) >= 1,
        "the serving lock is not held again"
    );
    let volume = root.to_str().unwrap();
    let cfg = config.to_str().unwrap();
    let out = restore_leaving_postgresql(&env, cfg, &file, volume);
    assert_refused(&out, "is being served from the database by deskd serve");
    assert!(deskd_volume::desktop_backend(&root).is_some());
    assert!(!root.join(".Desktop").exists());
}

/// The newcomer review of stop 41, finding 1: a restore made while the server is cut off from
/// the database (no --config: the database cannot be asked) removes the root's mark; when the
/// database is back the server takes the serving lock, reads the mark, and no longer writes
/// the volume to the database: writes are refused as moved out, no ID is handed out there.
#[test]
fn a_volume_restored_while_its_server_was_cut_off_is_refused_as_moved_out_when_it_reconnects() {
    let Some((mut cluster, env, root, config)) = served_pg("desk") else {
        return;
    };
    env.dt_ok(&[b"touch", b"vol/kept.txt", b"vol/later.txt"]);
    let file = backed_up(&env, &root, &config);
    let before = last_id(&mut cluster.admin("desk"));
    // A client that opened the volume before: its handle is answered "not served" after.
    let mut c = env.client();
    let vol = c.open_volume(&root).unwrap().vol;
    cluster.stop();
    env.wait_for_log("database unreachable (", 1);
    // The database cannot be asked: no --config, so the backup's counter is taken on purpose.
    let out = env.deskd(&[
        "restore",
        "--leave-postgresql",
        "--ids-from-backup",
        &file,
        root.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(deskd_volume::desktop_backend(&root).is_none());
    cluster.restart();
    assert_moved_out_not_served(&env, &root, &mut c, vol);
    assert_eq!(
        last_id(&mut cluster.admin("desk")),
        before,
        "an ID was handed out from the database"
    );
    wait_no_serving_lock(&cluster);
}

/// The newcomer review of stop 41, finding 1: a server whose sessions were killed
/// (`pg_terminate_backend`; held off meanwhile by a test hook) connects again by itself; while a
/// restore or migrate holds the serving lock exclusively it cannot take it, writes nothing
/// (read-only, and says why), and serves again once the lock is free (the mark still there).
#[test]
fn a_writer_cut_off_alone_cannot_retake_the_lock_while_it_is_held_exclusively_and_writes_nothing() {
    let Some(HeldOff {
        cluster,
        env,
        root,
        hold_off,
        ..
    }) = served_pg_held_off()
    else {
        return;
    };
    let mut admin = cluster.admin("desk");
    let vid: i64 = admin
        .query_one("SELECT vid FROM deskd.volume", &[])
        .unwrap()
        .get(0);
    // The writer's session (the one holding the serving lock), killed and gone (waited for),
    // then the lock taken exclusively, as a restore or migrate takes it.
    wait_both_sessions_hold_the_lock(&cluster);
    std::fs::write(&hold_off, b"").unwrap();
    kill_lock_holders(&mut admin);
    admin
        .execute(
            "SELECT pg_advisory_lock(1685285747, ($1::bigint)::int)",
            &[&vid],
        )
        .unwrap();
    std::fs::remove_file(&hold_off).unwrap();
    env.wait_for_log("is being moved out of the database (by deskd migrate --to sqlite or deskd restore --leave-postgresql)", 1);
    let mut c = env.client();
    let vol = c.open_volume(&root).unwrap().vol;
    let add = || add_path(vol, b"kept.txt".to_vec());
    let refused = c.object(add()).unwrap_err();
    assert_eq!(
        refused.code(),
        Some(deskd_client::ErrorCode::ReadOnly),
        "{refused}"
    );
    assert!(refused.to_string().contains("being moved out"), "{refused}");
    // The lock let go (the mark still there: nothing was moved): served again.
    admin
        .execute("SELECT pg_advisory_unlock_all()", &[])
        .unwrap();
    env.wait_for_log("database reachable again; the volume is writable", 1);
    c.object(add()).unwrap();
}

/// The newcomer review of stop 41, finding 1, for `deskd migrate --to sqlite`: the writer's
/// session killed and the writer held off (a test hook: a server cut off by the network), the
/// migration runs with the database up (nothing holds the lock); the writer, let connect
/// again, takes the lock, finds the mark gone (migrate removed it under the lock) and writes
/// nothing to the database any more.
#[test]
fn a_volume_migrated_out_while_its_server_was_cut_off_is_refused_as_moved_out() {
    let Some(HeldOff {
        cluster,
        url,
        pw,
        mut env,
        root,
        hold_off,
    }) = served_pg_held_off()
    else {
        return;
    };
    let mut admin = cluster.admin("desk");
    let before = last_id(&mut admin);
    let kept = env.id_of(&root.join("kept.txt"));
    let mut c = env.client();
    let vol = c.open_volume(&root).unwrap().vol;
    wait_both_sessions_hold_the_lock(&cluster);
    std::fs::write(&hold_off, b"").unwrap();
    kill_lock_holders(&mut admin);
    env.wait_for_log("database unreachable (", 1);
    let out = env.deskd(&[
        "migrate",
        root.to_str().unwrap(),
        "--from",
        &url,
        "--password-file",
        pw.to_str().unwrap(),
        "--to",
        "sqlite",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(deskd_volume::desktop_backend(&root).is_none());
    std::fs::remove_file(&hold_off).unwrap();
    assert_moved_out_not_served(&env, &root, &mut c, vol);
    assert_eq!(
        last_id(&mut admin),
        before,
        "an ID was handed out from the database"
    );
    wait_no_serving_lock(&cluster);
    // As status says: `backend` taken out and a reload: served from its SQLite desktop under
    // its old handle, every ID kept.
    std::fs::write(
        env.path("deskd.toml"),
        format!("[volume.\"{}\"]\n", root.display()),
    )
    .unwrap();
    env.sighup(1);
    env.wait_for_log(&format!("{}: now served", root.display()), 1);
    assert_eq!(c.open_volume(&root).unwrap().vol, vol);
    assert_eq!(env.id_of(&root.join("kept.txt")), kept);
    env.dt_ok(&[b"touch", b"vol/after-the-reload.txt"]);
    assert!(!env.deskd_ok(&["status"]).contains("NOT SERVED"));
}

/// `deskd migrate --to sqlite` removes the root's mark while it holds the serving lock
/// exclusively (a test hook pauses it there, the mark gone, the lock held): a server started
/// then is refused the volume ("being moved out"), does not put the mark back (it marked the
/// root before it took the lock, so the volume moved out looked served from the database
/// again), and never serves it from the database; after the migration it stays not served,
/// and a reload without `backend` serves it from its SQLite desktop with every ID.
#[test]
fn a_server_started_while_migrate_to_sqlite_holds_the_lock_never_serves_the_volume_from_the_database(
) {
    use std::io::BufRead as _;
    let Some((_cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    // "other" (in the database too) keeps the server up while "vol" is refused.
    let mut env = Env::new(&["vol", "other"]);
    let root = std::fs::canonicalize(env.path("vol")).unwrap();
    let other = std::fs::canonicalize(env.path("other")).unwrap();
    let defaults = backend_lines(&url, &pw);
    let cfg = config_with_volumes(&env, &defaults, &[&root, &other]);
    let cfg_arg = cfg.to_str().unwrap();
    env.start(&["--config", cfg_arg]);
    env.dt_ok(&[b"touch", b"vol/kept.txt"]);
    let kept = env.id_of(&root.join("kept.txt"));
    env.term();
    let go = env.path("go");
    let mut migrate = env
        .command_for(
            DESKD,
            &[
                b"migrate",
                root.as_os_str().as_bytes(),
                b"--from",
                url.as_bytes(),
                b"--password-file",
                pw.as_os_str().as_bytes(),
                b"--to",
                b"sqlite",
            ],
        )
        .env(
            "DESKD_TEST_MIGRATE_PAUSE",
            format!("unmarked:{}", go.display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = std::io::BufReader::new(migrate.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("deskd migrate: test pause at unmarked") {
        line.clear();
        assert!(
            said.read_line(&mut line).unwrap() > 0,
            "migrate ended before its pause: {:?}",
            migrate.wait_with_output()
        );
    }
    assert!(deskd_volume::desktop_backend(&root).is_none());
    env.start(&["--config", cfg_arg]);
    let text = env.deskd_ok(&["status"]);
    let at = text
        .find(&format!("{}\n  NOT SERVED:   ", root.display()))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        text[at..].lines().nth(1).is_some_and(
            |refusal| refusal.contains("is being moved out of the database")
                // The new desktop, in place already, says it itself (stop 43).
                || refusal.contains("was moved out of this database (by deskd restore \
                                     --leave-postgresql or deskd migrate --to sqlite), as its \
                                     SQLite desktop")
        ),
        "{text}"
    );
    assert!(
        deskd_volume::desktop_backend(&root).is_none(),
        "the server put the mark back on a volume being moved out"
    );
    std::fs::write(&go, b"").unwrap();
    let out = migrate.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut said, &mut rest).unwrap();
    assert!(out.status.success(), "{rest}");
    assert!(deskd_volume::desktop_backend(&root).is_none());
    // Not served from the database after the migration either (no retry of this refusal).
    let refused = env.client().open_volume(&root).unwrap_err();
    assert_eq!(
        refused.code(),
        Some(deskd_client::ErrorCode::NoSuchVolume),
        "{refused}"
    );
    let write = env.dt(&[b"touch", b"vol/while-refused.txt"]);
    assert!(!write.status.success());
    // `backend` taken out for "vol", and a reload: served from its SQLite desktop.
    std::fs::write(
        &cfg,
        format!(
            "[volume.\"{}\"]\n[volume.\"{}\"]\n{defaults}",
            root.display(),
            other.display()
        ),
    )
    .unwrap();
    env.sighup(1);
    env.wait_for_log(&format!("{}: now served", root.display()), 1);
    assert_eq!(env.id_of(&root.join("kept.txt")), kept);
    env.dt_ok(&[b"touch", b"vol/after-the-reload.txt"]);
    assert!(deskd_volume::desktop_backend(&root).is_none());
}

/// Why a volume whose root's mark is gone is not served (the server's log and status).
const MOVED_OUT: &str = "moved out of the database (the root's mark is gone): a deskd restore \
                         --leave-postgresql or deskd migrate --to sqlite ran while this server \
                         was cut off from the database or starting; not served: take `backend` \
                         out of the volume's configuration (`backend = \"sqlite\"` in its \
                         `[volume.\"PATH\"]` table when `[defaults]` gives one) and reload \
                         (SIGHUP) to serve it from its SQLite desktop";

/// What the server says of a volume it found moved out of the database (its writer took the
/// serving lock again and read no mark on the root): taken out of the served list at once,
/// listed as not served with why, as a volume refused at start, in `deskd status` (text and
/// JSON), `status --volume` (exit 1) and dt, why only to root and the owner; a client's
/// earlier handle `vol` (on `c`) and a new opening are answered "not served", nothing read
/// from the database's copy (the status of the handle is refused too).
fn assert_moved_out_not_served(
    env: &Env,
    root: &std::path::Path,
    c: &mut deskd_client::Client,
    vol: u32,
) {
    let why = MOVED_OUT;
    env.wait_for_log(why, 1);
    env.wait_for_log("no longer served (moved out of the database", 1);
    for refused in [
        c.object(add_path(vol, b"later.txt".to_vec())).unwrap_err(),
        c.status(Some(vol)).unwrap_err(),
        c.open_volume(root).unwrap_err(),
    ] {
        assert_eq!(
            refused.code(),
            Some(deskd_client::ErrorCode::NoSuchVolume),
            "{refused}"
        );
    }
    let text = env.deskd_ok(&["status"]);
    let at = text
        .find(&format!("{}\n  NOT SERVED:   ", root.display()))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(text[at..].lines().nth(1).unwrap().contains(why), "{text}");
    let json = env.deskd_ok(&["status", "--json"]);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "no served volume is listed: {json}");
    assert_eq!(lines[0]["served"], false, "{json}");
    assert!(
        lines[0]["not_served"].as_str().unwrap().contains(why),
        "{json}"
    );
    let one = env.deskd(&["status", "--volume", root.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&one.stdout);
    assert_eq!(one.status.code(), Some(1), "{said}");
    assert!(
        said.contains("NOT SERVED:   ") && said.contains(why),
        "{said}"
    );
    let out = env.dt(&[b"touch", b"vol/after-it-moved.txt"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("refused this volume") && err.contains(why),
        "{err}"
    );
    if let Some(out) = env.as_nobody(
        DESKD,
        &[b"status", b"--volume", root.as_os_str().as_bytes()],
    ) {
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("NOT SERVED:   refused (root or the volume owner"),
            "{said}"
        );
        assert!(!said.contains("moved out"), "{said}");
    } else {
        skip("needs root to act as another user");
    }
}

/// Hostile review of stop 42 (hostile28), finding 1: after `restore --leave-postgresql
/// --config` moved the volume out of its database (the root's mark removed, the restored SQLite
/// desktop the volume's), host A serves it from that SQLite desktop; host B, down during the
/// restore and still configured with `backend`, starts later. It must not serve the volume from
/// the database's stale copy (it did: it marked the root again and handed out from the
/// database's counter the very IDs host A hands out from the restored desktop's).
#[test]
fn a_server_still_configured_with_backend_does_not_serve_a_volume_restored_out_of_the_database() {
    let Some((cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let defaults = backend_lines(&url, &pw);
    let mut a = Env::new(&["vol"]);
    let root = std::fs::canonicalize(a.path("vol")).unwrap();
    a.serve_with_defaults("vol", &defaults);
    let config = a.path("deskd.toml");
    a.dt_ok(&[b"touch", b"vol/kept.txt", b"vol/later.txt"]);
    let file = backed_up(&a, &root, &config);
    a.term();
    let volume = root.to_str().unwrap();
    let out = restore_leaving_postgresql(&a, config.to_str().unwrap(), &file, volume);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(deskd_volume::desktop_backend(&root).is_none());
    let db_last = last_id(&mut cluster.admin("desk"));
    // Host A, as the documented order says: `backend` taken out, served from SQLite.
    a.serve(&["vol"]);
    // Host B, still configured with `backend` (and a volume of its own, so that it starts).
    let mut b = Env::new(&["own"]);
    let cfg = config_with_volumes(&b, &defaults, &[root.as_path(), b.path("own").as_path()]);
    b.start(&["--config", cfg.to_str().unwrap()]);
    let from_a = root.join("from-a");
    let from_b = root.join("from-b");
    a.dt_ok(&[b"touch", from_a.as_os_str().as_bytes()]);
    let b_wrote = b.dt(&[b"touch", from_b.as_os_str().as_bytes()]);
    let id_a = a.id_of(&from_a);
    if b_wrote.status.success() {
        let id_b = b.id_of(&from_b);
        assert_ne!(
            id_a, id_b,
            "ID {id_a} given twice (host A's SQLite, host B's database)"
        );
        panic!(
            "host B served a moved-out volume from the database (ID {id_b}; database counter \
             was {db_last}, now {}; mark now {:?})",
            last_id(&mut cluster.admin("desk")),
            deskd_volume::desktop_backend(&root)
        );
    }
    assert_eq!(last_id(&mut cluster.admin("desk")), db_last);
    assert!(
        deskd_volume::desktop_backend(&root).is_none(),
        "the root was marked again"
    );
    let moved_out = "was moved out of this database (by deskd restore --leave-postgresql or \
                     deskd migrate --to sqlite)";
    let said = stderr(&b_wrote);
    assert!(said.contains(moved_out), "{said}");
    let text = b.deskd_ok(&["status"]);
    assert!(
        text.contains(&format!("{}\n  NOT SERVED:   ", root.display())) && text.contains(moved_out),
        "{text}"
    );
    // Host A goes on from its restored desktop, past every ID the database gave.
    a.dt_ok(&[b"touch", b"vol/after.txt"]);
    assert!(i64::from(a.id_of(&root.join("after.txt"))) > db_last);
}

/// Hostile review of stop 42 (hostile28), finding 3: `restore --leave-postgresql --config` with
/// a file naming a database that does not hold the volume (another database, a copy of the
/// file edited for another site) locked nothing and read no counter there. It was refused as
/// if no --config had been given ("Give --config FILE"), and with `--ids-from-backup` went
/// ahead without a word while the volume's server was running. Now it says what it found.
#[test]
fn restore_with_a_config_naming_a_database_without_the_volume_says_so() {
    let Some((cluster, env, root, config)) = served_pg("desk") else {
        return;
    };
    env.dt_ok(&[b"touch", b"vol/kept.txt"]);
    let file = backed_up(&env, &root, &config);
    let other = cluster.create_database("other");
    let wrong = env.path("wrong.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&cluster.url("desk"), &other);
    assert!(text.contains(&other), "{text}");
    std::fs::write(&wrong, text).unwrap();
    let volume = root.to_str().unwrap();
    let said = "holds no deskd volume named";
    let out = restore_leaving_postgresql(&env, wrong.to_str().unwrap(), &file, volume);
    assert_refused(&out, said);
    assert!(
        !stderr(&out).contains("Give --config FILE"),
        "{}",
        stderr(&out)
    );
    assert!(deskd_volume::desktop_backend(&root).is_some());
    let out = env.deskd(&[
        "restore",
        "--leave-postgresql",
        "--ids-from-backup",
        "--config",
        wrong.to_str().unwrap(),
        &file,
        volume,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(said) && err.contains("not checked"), "{err}");
}

/// Hostile review of stop 42 (hostile28), finding 2: a second host configured for the volume
/// with another database (a typo in `backend`, or the database replaced by an empty one) made
/// the volume afresh there and handed out from 17 again: host A's first file and host B's were
/// both given ID 17. The serving lock cannot see it (it is per database). A root marked as
/// having its desktop in PostgreSQL is now never made afresh in a database: refused, nothing
/// made there.
#[test]
fn a_marked_volume_is_not_made_afresh_in_another_database() {
    let Some((cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let other = cluster.create_database("other");
    let mut a = Env::new(&["vol"]);
    let root = std::fs::canonicalize(a.path("vol")).unwrap();
    a.serve_with_defaults("vol", &backend_lines(&url, &pw));
    let from_a = root.join("from-a");
    a.dt_ok(&[b"touch", from_a.as_os_str().as_bytes()]);
    let mut b = Env::new(&["own"]);
    let cfg = config_with_volumes(
        &b,
        &backend_lines(&other, &pw),
        &[root.as_path(), b.path("own").as_path()],
    );
    b.start(&["--config", cfg.to_str().unwrap()]);
    let from_b = root.join("from-b");
    let out = b.dt(&[b"touch", from_b.as_os_str().as_bytes()]);
    let said = stderr(&out);
    assert!(
        !out.status.success(),
        "ID {} given by B, {} by A",
        b.id_of(&from_b),
        a.id_of(&from_a)
    );
    assert!(
        said.contains("but this database holds no volume named"),
        "{said}"
    );
    // Nothing of the volume made in the other database (B's own volume is there).
    let names: Vec<String> = cluster
        .admin("other")
        .query("SELECT name FROM deskd.volume", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !names.contains(&root.to_str().unwrap().to_owned()),
        "{names:?}"
    );
    // Host A goes on.
    a.dt_ok(&[b"touch", from_b.as_os_str().as_bytes()]);
    assert!(a.id_of(&from_b) > a.id_of(&from_a));
}

/// Hostile review of stop 42 (hostile28), finding 4: any role that may connect to the database
/// takes the serving lock (an advisory lock needs no privilege, not even on the deskd schema):
/// a restore is then refused as if a deskd serve served the volume. The refusal now names who
/// holds the lock, as the database says it.
#[test]
fn a_refusal_for_the_serving_lock_names_who_holds_it() {
    let Some((cluster, mut env, root, config)) = served_pg("desk") else {
        return;
    };
    env.dt_ok(&[b"touch", b"vol/kept.txt"]);
    let file = backed_up(&env, &root, &config);
    env.term();
    cluster
        .admin("desk")
        .batch_execute("CREATE ROLE intruder LOGIN PASSWORD 'intruder'")
        .unwrap();
    let mut intruder = postgres::Config::new()
        .host("127.0.0.1")
        .port(cluster.port())
        .user("intruder")
        .password("intruder")
        .dbname("desk")
        .application_name("not-deskd")
        .connect(postgres::NoTls)
        .unwrap();
    assert!(intruder.query("SELECT vid FROM deskd.volume", &[]).is_err());
    let held: bool = intruder
        .query_one("SELECT pg_try_advisory_lock_shared(1685285747, 1)", &[])
        .unwrap()
        .get(0);
    assert!(held, "any role takes the serving lock");
    let out = restore_leaving_postgresql(
        &env,
        config.to_str().unwrap(),
        &file,
        root.to_str().unwrap(),
    );
    assert_refused(
        &out,
        "(the serving lock is held by: role intruder, application \"not-deskd\", from ",
    );
    assert!(
        stderr(&out).contains("database session pid "),
        "{}",
        stderr(&out)
    );
    assert!(deskd_volume::desktop_backend(&root).is_some());
}

/// Hostile review of stop 42 (hostile28), finding 1, for `deskd migrate --to sqlite`: a server
/// still configured with `backend` that starts after the migration refuses the volume (the
/// database records the move-out) and leaves the root unmarked; the migrated desktop is served.
#[test]
fn a_server_still_configured_with_backend_does_not_serve_a_volume_migrated_out() {
    let Some((cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let defaults = backend_lines(&url, &pw);
    let mut a = Env::new(&["vol"]);
    let root = std::fs::canonicalize(a.path("vol")).unwrap();
    a.serve_with_defaults("vol", &defaults);
    a.dt_ok(&[b"touch", b"vol/kept.txt"]);
    a.term();
    a.deskd_ok(&[
        "migrate",
        root.to_str().unwrap(),
        "--from",
        &url,
        "--password-file",
        pw.to_str().unwrap(),
        "--to",
        "sqlite",
    ]);
    let db_last = last_id(&mut cluster.admin("desk"));
    let mut b = Env::new(&["own"]);
    let cfg = config_with_volumes(&b, &defaults, &[root.as_path(), b.path("own").as_path()]);
    b.start(&["--config", cfg.to_str().unwrap()]);
    b.wait_for_log("was moved out of this database", 1);
    assert!(
        deskd_volume::desktop_backend(&root).is_none(),
        "the root was marked again"
    );
    a.serve(&["vol"]);
    a.dt_ok(&[b"touch", b"vol/after.txt"]);
    assert!(i64::from(a.id_of(&root.join("after.txt"))) > db_last);
    assert_eq!(last_id(&mut cluster.admin("desk")), db_last);
}

/// The hole the move-out record in the database left (stop 42's note): `restore
/// --leave-postgresql --ids-from-backup` without a database to ask (no `--config`, or the
/// database down) records nothing there, and host B, still configured with `backend`, served
/// the database's stale copy and handed out again the IDs the restored desktop hands out. The
/// restored desktop now says itself that the volume left its database, and host B refuses it
/// for that, the database untouched.
#[test]
fn a_restore_that_could_not_tell_the_database_is_refused_by_a_server_still_configured_with_it() {
    let Some((cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let defaults = backend_lines(&url, &pw);
    let (mut a, root) = restored_out_without_the_database(&defaults);
    assert!(deskd_volume::desktop_backend(&root).is_none());
    let db_last = last_id(&mut cluster.admin("desk"));
    let (b, said) = host_b_refuses(&defaults, &root);
    assert!(
        said.contains(
            "was moved out of this database (by deskd restore --leave-postgresql or \
                       deskd migrate --to sqlite), as its SQLite desktop"
        ) && said.contains("nothing was changed"),
        "{said}"
    );
    let text = b.deskd_ok(&["status"]);
    assert!(
        text.contains(&format!("{}\n  NOT SERVED:   ", root.display())),
        "{text}"
    );
    assert_eq!(last_id(&mut cluster.admin("desk")), db_last);
    assert!(
        deskd_volume::desktop_backend(&root).is_none(),
        "marked again"
    );
    // Host A serves the restored desktop from SQLite as before.
    a.serve(&["vol"]);
    assert!(a.id_of(&root.join("kept.txt")) >= 17);
}

/// The note of the test above is in the SQLite desktop, which host B cannot read when that
/// desktop is relocated to host A's own disk (`desktop_location`: `ROOT/.Desktop` is a link to
/// a folder host B does not have). Host B took that for "no SQLite desktop" and served the
/// database's stale copy (the hostile review of stop 43); an unmarked root whose relocated
/// desktop is not on this host is now refused, the database untouched.
#[test]
fn a_volume_whose_moved_out_desktop_is_relocated_out_of_reach_is_refused() {
    let Some((cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let defaults = backend_lines(&url, &pw);
    let (a, root) = restored_out_without_the_database(&defaults);
    // Without the root's own note (a restore of before stop 43's last change): the
    // relocation itself is what host B refuses here.
    deskd_volume::note_root_left_database(&root, None).unwrap();
    // Host A keeps its desktops on its own disk: the root holds a link there.
    let host_a = a.path("host-a-desktops/vol");
    std::fs::create_dir_all(&host_a).unwrap();
    std::fs::rename(root.join(".Desktop"), host_a.join(".Desktop")).unwrap();
    let elsewhere =
        std::path::Path::new("/nonexistent-host-a-disk").join(host_a.strip_prefix("/").unwrap());
    std::os::unix::fs::symlink(elsewhere.join(".Desktop"), root.join(".Desktop")).unwrap();
    let db_last = last_id(&mut cluster.admin("desk"));
    let (_b, said) = host_b_refuses(&defaults, &root);
    assert!(
        said.contains("whose folder is not on this host") && said.contains("nothing was changed"),
        "{said}"
    );
    assert_eq!(last_id(&mut cluster.admin("desk")), db_last);
    assert!(
        deskd_volume::desktop_backend(&root).is_none(),
        "marked again"
    );
}

/// The note of the tests above where host B cannot see the SQLite desktop at all (host A keeps
/// it on its own disk under the same `desktop_location` as host B's, whose folder there is
/// empty; here: no `.Desktop` in the root): the root itself says the volume left its database
/// (`user.deskd.left_database`, beside the mark), and host B refuses it (it served the stale
/// copy: the hostile review of stop 43, left open by it).
#[test]
fn a_volume_moved_out_is_refused_by_the_roots_note_where_its_desktop_cannot_be_seen() {
    let Some((cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let defaults = backend_lines(&url, &pw);
    let (a, root) = restored_out_without_the_database(&defaults);
    assert!(deskd_volume::root_left_database(&root).is_some());
    std::fs::rename(root.join(".Desktop"), a.path("desktop-on-host-a")).unwrap();
    let db_last = last_id(&mut cluster.admin("desk"));
    // Refused at start, said in the log, in status, and to `dt` (which, with no desktop in
    // the root to tell it a volume is there, took the path for one outside any volume and made
    // the file silently).
    let (b, said) = host_b_refuses(&defaults, &root);
    b.wait_for_log("as its root (user.deskd.left_database) says", 1);
    assert!(said.contains("refused this volume"), "{said}");
    assert!(!root.join("from-b").exists(), "dt made the file");
    let text = b.deskd_ok(&["status"]);
    assert!(
        text.contains(&format!("{}\n  NOT SERVED:   ", root.display()))
            && text.contains("nothing was changed"),
        "{text}"
    );
    assert_eq!(last_id(&mut cluster.admin("desk")), db_last);
    assert!(
        deskd_volume::desktop_backend(&root).is_none(),
        "marked again"
    );
}

/// Host B, still configured with `backend` (`defaults`) for `root` (and a volume of its own,
/// so that it starts), is asked by `dt` to make `root/from-b`: refused. Returns host B and what
/// `dt` said.
fn host_b_refuses(defaults: &str, root: &std::path::Path) -> (Env, String) {
    let mut b = Env::new(&["own"]);
    let cfg = config_with_volumes(&b, defaults, &[root, b.path("own").as_path()]);
    b.start(&["--config", cfg.to_str().unwrap()]);
    let wrote = b.dt(&[b"touch", root.join("from-b").as_os_str().as_bytes()]);
    assert!(
        !wrote.status.success(),
        "host B served the volume: {wrote:?}"
    );
    let said = stderr(&wrote);
    (b, said)
}

/// Host A serves `vol` from the database (`defaults`), backs it up with `kept.txt` in it, stops,
/// and restores it out of the database with `--ids-from-backup` and no `--config`: nothing is
/// recorded in the database. Returns host A (stopped) and the volume's root.
fn restored_out_without_the_database(defaults: &str) -> (Env, std::path::PathBuf) {
    let mut a = Env::new(&["vol"]);
    let root = std::fs::canonicalize(a.path("vol")).unwrap();
    a.serve_with_defaults("vol", defaults);
    let config = a.path("deskd.toml");
    a.dt_ok(&[b"touch", b"vol/kept.txt"]);
    let file = backed_up(&a, &root, &config);
    a.term();
    a.deskd_ok(&[
        "restore",
        "--leave-postgresql",
        "--ids-from-backup",
        &file,
        root.to_str().unwrap(),
    ]);
    (a, root)
}
