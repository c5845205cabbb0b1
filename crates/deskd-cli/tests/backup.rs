//! `deskd backup`, `deskd verify` and `deskd restore`, driven as a user would: backups of a
//! live volume under write load, a restore after the desktop was destroyed, and the refusals.

mod common;
use common::*;
use deskd_client::{Request, Response};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn manifest(backup: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(manifest_path(backup)).unwrap()).unwrap()
}

/// `deskd backup --json VOLUME DEST`, which must succeed; returns the manifest it printed.
fn backup(env: &Env, volume: &str, dest: &Path) -> serde_json::Value {
    let out = env.deskd_ok(&[
        "backup",
        "--json",
        env.path(volume).to_str().unwrap(),
        dest.to_str().unwrap(),
    ]);
    serde_json::from_str(out.trim()).unwrap()
}

fn sha256sum(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Sets the flag when dropped: writer threads stop even when an assertion fails.
struct StopOnDrop(Arc<AtomicBool>);
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn backups_of_a_live_volume_are_consistent_snapshots_and_writers_go_on() {
    let mut env = Env::new(&["vol"]);
    let cfg = env.path("deskd.toml");
    // Checkpoints are due all the time, so they meet the backup's snapshot.
    std::fs::write(
        &cfg,
        "[defaults]\nflush_delay = 1\nidle_close = 1\nwal_limit = 1048576\n",
    )
    .unwrap();
    let vol_path = env.path("vol");
    env.start(&[
        "--config",
        cfg.to_str().unwrap(),
        vol_path.to_str().unwrap(),
    ]);
    // A desktop of several MB, so a copy takes more than one backup step (1,024 pages each).
    std::fs::create_dir(env.path("vol/bulk")).unwrap();
    let names: Vec<String> = (0..30_000)
        .map(|i| format!("bulk/{i:05}-a-long-name-so-the-desktop-spans-many-pages.txt"))
        .collect();
    make_and_register(&env, "vol", &names);
    // Four writers, each making w/00000, w/00001, ... one after the other, acknowledged
    // before the next: a snapshot holds, per writer, some first n of them and nothing else.
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(stop.clone());
    let socket = env.socket.clone();
    // How many writes each writer has had acknowledged so far.
    let acked: Arc<[AtomicU32; 4]> = Arc::default();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let dir = vol_path.join(format!("w{w}"));
            std::fs::create_dir(&dir).unwrap();
            let (stop, socket, vol_path) = (stop.clone(), socket.clone(), vol_path.clone());
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut c =
                    deskd_client::Client::connect(&socket, Duration::from_secs(10)).unwrap();
                let vol = c.open_volume(&vol_path).unwrap().vol;
                let mut n = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    let rel = format!("w{w}/{n:05}");
                    std::fs::write(vol_path.join(&rel), b"").unwrap();
                    c.object(add_path(vol, rel.into_bytes())).unwrap();
                    n += 1;
                    acked[w].store(n, Ordering::SeqCst);
                }
                n
            })
        })
        .collect();
    // The backups begin once every writer is under way.
    let began = std::time::Instant::now();
    while acked.iter().any(|n| n.load(Ordering::SeqCst) < 20) {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "the writers did not get going: {acked:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let backups = env.path("backups");
    std::fs::create_dir(&backups).unwrap();
    for round in 0..3 {
        let file = backups.join(format!("round-{round}.desktop"));
        let printed = backup(&env, "vol", &file);
        assert_eq!(printed, manifest(&file), "--json prints the manifest");
        // The copy is a self-contained, sound SQLite file (no WAL beside it).
        assert_eq!(sqlite3(&file, "PRAGMA integrity_check"), "ok");
        assert_eq!(sqlite3(&file, "PRAGMA journal_mode"), "delete");
        assert!(!backups.join(format!("round-{round}.desktop-wal")).exists());
        assert_eq!(printed["sha256"], sha256sum(&file));
        assert_eq!(printed["bytes"], std::fs::metadata(&file).unwrap().len());
        assert!(printed["pages"].as_u64().unwrap() > 1024, "{printed}");
        let objects: u64 = sqlite3(&file, "SELECT count(*) FROM objects")
            .parse()
            .unwrap();
        assert_eq!(printed["objects"], objects);
        // Per writer, names 0..n with no gap: one snapshot, not pages of different moments.
        for w in 0..4 {
            let names = sqlite3(
                &file,
                &format!(
                    "SELECT CAST(o.name AS TEXT) FROM objects o JOIN objects d ON o.parent = d.id \
                     WHERE d.name = CAST('w{w}' AS BLOB) ORDER BY o.name"
                ),
            );
            for (i, name) in names.lines().enumerate() {
                assert_eq!(name, format!("{i:05}"), "writer {w} in round {round}");
            }
        }
        env.deskd_ok(&["verify", file.to_str().unwrap()]);
    }
    // A later backup has more than an earlier one: the writers were never stopped.
    let counts: Vec<u64> = (0..3)
        .map(|r| {
            manifest(&backups.join(format!("round-{r}.desktop")))["objects"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(counts[0] < counts[1] && counts[1] < counts[2], "{counts:?}");
    stop.store(true, Ordering::SeqCst);
    let made: u32 = writers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(made > 0);
    // A directory as DEST gets a dated name; nothing but the backup and its manifest is left.
    let dated = backup(&env, "vol", &backups);
    let name = dated["file"].as_str().unwrap();
    assert!(
        name.starts_with("vol-") && name.ends_with("Z.desktop"),
        "{name}"
    );
    let mut left: Vec<String> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left.len(), 8, "{left:?}");
    assert!(left
        .iter()
        .all(|n| n.ends_with(".desktop") || n.ends_with(".desktop.manifest.json")));
}

/// The ID of every path under `root` (relative), through `dt info --json`.
fn ids_under(env: &Env, rels: &[&str]) -> Vec<(String, u64)> {
    let paths: Vec<PathBuf> = rels.iter().map(|r| env.path(r)).collect();
    env.ids(&paths)
        .into_iter()
        .zip(rels)
        .map(|(v, r)| (r.to_string(), v["id"].as_u64().unwrap()))
        .collect()
}

#[test]
fn restore_brings_back_the_desktop_and_catches_up_with_the_disk() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"mkdir", b"vol/d"]);
    for f in ["f1", "f2", "f3", "f4"] {
        env.dt_ok(&[b"touch", format!("vol/d/{f}").as_bytes()]);
    }
    // An icon lives only in the desktop: only the backup can bring it back.
    let mut c = env.client();
    let vol = c.open_volume(&env.path("vol")).unwrap().vol;
    c.call(Request::IconAdd {
        vol,
        creator: *b"ttxt",
        type_code: *b"TEXT",
        itype: 1,
        tag: 9,
        bitmap: vec![0xAA; 128],
    })
    .unwrap();
    drop(c);
    let bk = env.path("desktop.bk");
    let made = backup(&env, "vol", &bk);
    // After the backup: a new file, a rename, a delete, and an object made and deleted again.
    env.dt_ok(&[b"touch", b"vol/d/after"]);
    env.dt_ok(&[b"mv", b"vol/d/f2", b"vol/d/f2-renamed"]);
    let f3 = env.id_of(&env.path("vol/d/f3"));
    env.dt_ok(&[b"rm", b"vol/d/f3"]);
    env.dt_ok(&[b"touch", b"vol/d/gone"]);
    let gone = env.id_of(&env.path("vol/d/gone"));
    env.dt_ok(&[b"rm", b"vol/d/gone"]);
    let now = [
        "vol/d",
        "vol/d/f1",
        "vol/d/f2-renamed",
        "vol/d/f4",
        "vol/d/after",
    ];
    let before = ids_under(&env, &now);
    env.term();

    // Restoring onto a served volume is refused, and nothing changes.
    env.serve(&["vol"]);
    let out = env.deskd(&[
        "restore",
        bk.to_str().unwrap(),
        env.path("vol").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("stop serving this volume"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ids_under(&env, &now), before);
    env.term();

    // The desktop is destroyed.
    let desktop = env.path("vol/.Desktop");
    std::fs::write(&desktop, vec![0x5A; 8192]).unwrap();
    for side in [".Desktop-wal", ".Desktop-shm"] {
        let _ = std::fs::remove_file(env.path(&format!("vol/{side}")));
    }
    let out = env.deskd(&[
        "restore",
        "--json",
        bk.to_str().unwrap(),
        env.path("vol").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    let report = &report["restore"];
    assert_eq!(report["replaced_last_id"], serde_json::Value::Null);
    let gap = 1u64 << 20;
    assert_eq!(
        report["last_id_at_least"].as_u64().unwrap(),
        made["last_id"].as_u64().unwrap() + gap
    );
    assert_eq!(sqlite3(&desktop, "PRAGMA integrity_check"), "ok");

    env.serve(&["vol"]);
    // Every object has the ID it had before the desktop was lost, also those made or renamed
    // after the backup; the deleted one is gone.
    assert_eq!(ids_under(&env, &now), before);
    let out = env.dt(&[
        b"resolve",
        env.path("vol").to_str().unwrap().as_bytes(),
        f3.to_string().as_bytes(),
    ]);
    assert!(
        !out.status.success(),
        "ID {f3} of a deleted file still resolves"
    );
    // The icon only the backup had is back.
    let mut c = env.client();
    let vol = c.open_volume(&env.path("vol")).unwrap().vol;
    assert_eq!(
        text_icon(&mut c, vol),
        Response::Icon(Some((9, vec![0xAA; 128])))
    );
    // No ID is handed out twice: not the one given (after the backup) to a file since deleted.
    env.dt_ok(&[b"touch", b"vol/d/newest"]);
    let newest = env.id_of(&env.path("vol/d/newest"));
    assert!(
        u64::from(newest) > made["last_id"].as_u64().unwrap() + gap && newest > gone,
        "new ID {newest}, deleted after the backup {gone}"
    );
    env.term();

    // With the volume's own desktop readable, its counter is kept (no gap needed) and a second
    // restore changes no ID.
    let out = env.deskd(&[
        "restore",
        "--json",
        bk.to_str().unwrap(),
        env.path("vol").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["restore"]["replaced_last_id"], u64::from(newest));
    assert_eq!(report["restore"]["last_id"], u64::from(newest));
    env.serve(&["vol"]);
    assert_eq!(ids_under(&env, &now), before);
    assert_eq!(env.id_of(&env.path("vol/d/newest")), newest);
}

#[test]
fn damaged_incomplete_or_foreign_backups_are_refused() {
    let mut env = Env::new(&["vol", "other", "empty"]);
    env.serve(&["vol", "other"]);
    env.dt_ok(&[b"touch", b"vol/a", b"other/b"]);
    let bk = env.path("vol.bk");
    backup(&env, "vol", &bk);
    let vol = env.path("vol");
    let vol = vol.to_str().unwrap();

    // The volume of an offline server backs up too, and the target is never overwritten
    // without --force.
    env.term();
    let out = env.deskd(&["backup", vol, bk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("exists; give another name, or --force"),
        "{}",
        stderr(&out)
    );
    env.deskd_ok(&["backup", "--force", vol, bk.to_str().unwrap()]);
    env.deskd_ok(&["verify", bk.to_str().unwrap()]);
    // A volume without a desktop has nothing to back up.
    let out = env.deskd(&[
        "backup",
        env.path("empty").to_str().unwrap(),
        env.path("e.bk").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("has no desktop"), "{}", stderr(&out));
    assert!(!env.path("e.bk").exists());

    let desktop = env.path("vol/.Desktop");
    let dump = objects_dump(&desktop);
    let expect_refused = |args: &[&str], code: i32, says: &str| {
        let out = env.deskd(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert_eq!(objects_dump(&desktop), dump, "{args:?} changed the desktop");
    };

    // One byte changed: verify and restore say so, with exit 1.
    let bytes = std::fs::read(&bk).unwrap();
    let mut flipped = bytes.clone();
    let at = flipped.len() - 100;
    flipped[at] ^= 0x01;
    let damaged = env.path("damaged.bk");
    std::fs::write(&damaged, &flipped).unwrap();
    std::fs::copy(manifest_path(&bk), manifest_path(&damaged)).unwrap();
    expect_refused(
        &["verify", damaged.to_str().unwrap()],
        1,
        "does not match the manifest",
    );
    expect_refused(
        &["restore", damaged.to_str().unwrap(), vol],
        1,
        "does not match the manifest",
    );

    // Truncated.
    let short = env.path("short.bk");
    std::fs::write(&short, &bytes[..bytes.len() - 4096]).unwrap();
    std::fs::copy(manifest_path(&bk), manifest_path(&short)).unwrap();
    expect_refused(
        &["verify", short.to_str().unwrap()],
        1,
        "truncated or replaced",
    );

    // No manifest: not a complete backup; --force restores it, as it passes integrity_check.
    let bare = env.path("bare.bk");
    std::fs::write(&bare, &bytes).unwrap();
    expect_refused(
        &["verify", bare.to_str().unwrap()],
        1,
        "not a complete deskd backup",
    );
    expect_refused(
        &["restore", bare.to_str().unwrap(), vol],
        1,
        "not a complete deskd backup",
    );
    env.deskd_ok(&["restore", "--force", bare.to_str().unwrap(), vol]);
    assert_eq!(objects_dump(&desktop), dump);

    // Not SQLite at all: even --force refuses it.
    let junk = env.path("junk.bk");
    std::fs::write(&junk, vec![0x42; 8192]).unwrap();
    expect_refused(
        &["restore", "--force", junk.to_str().unwrap(), vol],
        1,
        "junk.bk",
    );

    // The backup of another volume's desktop.
    let foreign = env.path("other.bk");
    backup(&env, "other", &foreign);
    expect_refused(
        &["restore", foreign.to_str().unwrap(), vol],
        2,
        "is of another desktop",
    );
}

fn manifest_path(backup: &Path) -> PathBuf {
    let mut m = backup.as_os_str().to_os_string();
    m.push(".manifest.json");
    m.into()
}

#[test]
fn a_restore_killed_at_any_step_can_be_run_again() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"mkdir", b"vol/d"]);
    env.dt_ok(&[b"touch", b"vol/d/a", b"vol/d/b"]);
    let bk = env.path("vol.bk");
    backup(&env, "vol", &bk);
    env.dt_ok(&[b"touch", b"vol/d/after"]);
    let now = ["vol/d", "vol/d/a", "vol/d/b", "vol/d/after"];
    let before = ids_under(&env, &now);
    env.term();
    let vol = env.path("vol");
    for step in ["fixes", "written", "checkpointed", "sidefiles"] {
        let out = env
            .command_for(
                DESKD,
                &[
                    b"restore",
                    bk.as_os_str().as_encoded_bytes(),
                    vol.as_os_str().as_encoded_bytes(),
                ],
            )
            .env("DESKD_REBUILD_CRASH_AFTER", step)
            .output()
            .unwrap();
        assert!(!out.status.success(), "the hook at {step} did not fire");
        // Whatever the crash left, the desktop is whole, and the restore runs again to the end.
        env.deskd_ok(&["restore", bk.to_str().unwrap(), vol.to_str().unwrap()]);
        assert_eq!(
            sqlite3(&env.path("vol/.Desktop"), "PRAGMA integrity_check"),
            "ok"
        );
        env.serve(&["vol"]);
        assert_eq!(ids_under(&env, &now), before, "after a crash at {step}");
        env.term();
    }
}

#[test]
fn a_backup_killed_at_any_step_leaves_nothing_that_passes_for_a_backup() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/a"]);
    let vol = env.path("vol");
    let bk = env.path("vol.bk");
    for step in ["copied", "renamed"] {
        // The desktop differs from any earlier backup's.
        env.dt_ok(&[b"touch", format!("vol/before-{step}").as_bytes()]);
        let out = env
            .command_for(
                DESKD,
                &[
                    b"backup",
                    b"--force",
                    vol.as_os_str().as_encoded_bytes(),
                    bk.as_os_str().as_encoded_bytes(),
                ],
            )
            .env("DESKD_BACKUP_CRASH_AFTER", step)
            .output()
            .unwrap();
        assert!(!out.status.success(), "the hook at {step} did not fire");
        // Killed before its manifest: whatever is there is not taken for a backup — neither
        // a copy without a manifest, nor a new copy under the last backup's manifest.
        let out = env.deskd(&["verify", bk.to_str().unwrap()]);
        assert_ne!(out.status.code(), Some(0), "after {step}");
        let out = env.deskd(&["restore", bk.to_str().unwrap(), vol.to_str().unwrap()]);
        assert_ne!(out.status.code(), Some(0), "after {step}");
        // The next backup to the same name completes (and clears the leftover temporary).
        env.deskd_ok(&[
            "backup",
            "--force",
            vol.to_str().unwrap(),
            bk.to_str().unwrap(),
        ]);
        env.deskd_ok(&["verify", bk.to_str().unwrap()]);
        let left: Vec<_> = std::fs::read_dir(env.path(""))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("partial"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

#[test]
fn several_volumes_back_up_into_one_directory_and_one_failure_stops_none() {
    let mut env = Env::new(&["a/public", "b/public", "empty"]);
    env.serve(&["a/public", "b/public"]);
    env.dt_ok(&[b"touch", b"a/public/x", b"b/public/y"]);
    let dir = env.path("backups");
    std::fs::create_dir(&dir).unwrap();
    let (a, b, empty) = (
        env.path("a/public"),
        env.path("b/public"),
        env.path("empty"),
    );
    // The volume without a desktop fails (exit 2); the two others are backed up all the same,
    // under names that do not collide although both volumes are called "public".
    let out = env.deskd(&[
        "backup",
        "--json",
        a.to_str().unwrap(),
        empty.to_str().unwrap(),
        b.to_str().unwrap(),
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("has no desktop"), "{}", stderr(&out));
    let manifests: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(manifests.len(), 2);
    let files: std::collections::HashSet<&str> = manifests
        .iter()
        .map(|m| m["file"].as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    for m in &manifests {
        env.deskd_ok(&[
            "verify",
            dir.join(m["file"].as_str().unwrap()).to_str().unwrap(),
        ]);
    }
    // Several volumes need a directory to go into.
    let out = env.deskd(&[
        "backup",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        env.path("one-file").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a directory"), "{}", stderr(&out));
}

#[test]
fn a_backup_onto_a_full_disk_says_so_and_leaves_nothing() {
    let mut env = Env::new(&["vol"]);
    let Some(_mnt) = Mounted::tmpfs_of(env.path("small"), "1m") else {
        return;
    };
    env.serve(&["vol"]);
    // A desktop of several MB.
    std::fs::create_dir(env.path("vol/many")).unwrap();
    let names: Vec<String> = (0..20_000)
        .map(|i| format!("many/a-long-enough-name-to-make-the-desktop-grow-{i:05}"))
        .collect();
    make_and_register(&env, "vol", &names);
    let out = env.deskd(&[
        "backup",
        env.path("vol").to_str().unwrap(),
        env.path("small").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("small: No space left on device"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_dir(env.path("small")).unwrap().count(), 0);
    // The volume goes on.
    env.dt_ok(&[b"touch", b"vol/after"]);
}

#[test]
fn a_backup_to_standard_output_is_the_checked_copy_and_leaves_no_temporary() {
    let mut env = Env::new(&["vol", "empty", "tmp"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/a", b"vol/b"]);
    let vol = env.path("vol");
    let out = env
        .command_for(
            DESKD,
            &[
                b"backup",
                b"--json",
                vol.as_os_str().as_encoded_bytes(),
                b"-",
            ],
        )
        .env("TMPDIR", env.path("tmp"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // The manifest on standard error describes the bytes on standard output.
    let m: serde_json::Value = serde_json::from_str(stderr(&out).trim()).unwrap();
    let copy = env.path("from-stdout.desktop");
    std::fs::write(&copy, &out.stdout).unwrap();
    assert_eq!(m["bytes"], out.stdout.len());
    assert_eq!(m["sha256"], sha256sum(&copy));
    assert_eq!(sqlite3(&copy, "PRAGMA integrity_check"), "ok");
    assert_eq!(sqlite3(&copy, "SELECT count(*) FROM objects"), "3");
    assert_eq!(std::fs::read_dir(env.path("tmp")).unwrap().count(), 0);
    // A failed backup writes nothing to standard output (a backup tool then keeps no snapshot).
    let out = env
        .command_for(
            DESKD,
            &[
                b"backup",
                env.path("empty").as_os_str().as_encoded_bytes(),
                b"-",
            ],
        )
        .env("TMPDIR", env.path("tmp"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert_eq!(std::fs::read_dir(env.path("tmp")).unwrap().count(), 0);
    let out = env.deskd(&["backup", vol.to_str().unwrap(), vol.to_str().unwrap(), "-"]);
    assert_eq!(out.status.code(), Some(2));
}

/// The refusals for a volume marked as served from a database (`user.deskd.backend` on its
/// root) are deskd-backup's, so they hold for an unprivileged volume owner too: `nobody`, who
/// owns the volume root (and so passes the admin check), is refused a backup of the stale
/// `.Desktop` without `--config` (exit 2), a restore without `--leave-postgresql` (exit 2, a
/// refusal as `--help` documents it), and one with it but without the database's ID counter
/// (no `--config`, no `--ids-from-backup`: exit 2), and nothing is written, in a directory
/// nobody may write.
#[test]
fn a_volume_marked_as_in_a_database_is_refused_to_an_unprivileged_owner() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/f"]);
    let good = env.path("good.desktop");
    backup(&env, "vol", &good);
    env.term();
    let root = std::fs::canonicalize(env.path("vol")).unwrap();
    deskd_volume::mark_desktop_in_postgresql(&root, true).unwrap();
    let open = env.path("open");
    std::fs::create_dir(&open).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
        // (The manifest too: the restore with --leave-postgresql reads the backup's counter.)
        let manifest = env.path("good.desktop.manifest.json");
        std::fs::set_permissions(&manifest, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::os::unix::fs::chown(&root, Some(65534), Some(65534)).unwrap();
    let desktop_before = std::fs::read(root.join(".Desktop")).unwrap();
    let dest = open.join("stale.desktop");
    // Each as nobody, refused (exit 2): what it said.
    let refused = |args: &[&[u8]]| -> Option<String> {
        let out = env.as_nobody(DESKD, args)?;
        let said = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{said}");
        Some(said)
    };
    let (volume, good_file) = (
        root.to_str().unwrap().as_bytes(),
        good.to_str().unwrap().as_bytes(),
    );
    let Some(said) = refused(&[b"backup", volume, dest.to_str().unwrap().as_bytes()]) else {
        skip("needs root to act as another user");
        return;
    };
    assert!(
        said.contains("is in postgresql") && said.contains("--config"),
        "{said}"
    );
    assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0, "{said}");
    let said = refused(&[b"restore", good_file, volume]).unwrap();
    assert!(said.contains("--leave-postgresql"), "{said}");
    let said = refused(&[b"restore", b"--leave-postgresql", good_file, volume]).unwrap();
    assert!(said.contains("--ids-from-backup"), "{said}");
    assert_eq!(
        std::fs::read(root.join(".Desktop")).unwrap(),
        desktop_before
    );
    assert!(
        deskd_volume::desktop_backend(&root).is_some(),
        "the mark stays"
    );
}

/// The note that a volume left its database (`meta` `left_database`, which a server still
/// configured with `backend` refuses the volume by) outlives what rewrites the SQLite desktop:
/// a `deskd rebuild`, and a `deskd restore` of a backup taken before the move-out (which has
/// no note). Both wrote a desktop without it, and such a server then served the database's
/// stale copy again (the hostile review of stop 43).
#[test]
fn the_note_that_the_volume_left_its_database_outlives_rebuild_and_restore() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/kept"]);
    let bk = env.path("before.bk");
    backup(&env, "vol", &bk);
    env.term();
    let desktop = env.path("vol/.Desktop");
    // What `deskd restore --leave-postgresql` or `deskd migrate --to sqlite` writes.
    sqlite3(
        &desktop,
        "INSERT INTO meta (key, value) VALUES ('left_database', 1700000000)",
    );
    let note = || {
        sqlite3(
            &desktop,
            "SELECT value FROM meta WHERE key = 'left_database'",
        )
    };
    env.deskd_ok(&["rebuild", env.path("vol").to_str().unwrap()]);
    assert_eq!(note(), "1700000000", "the rebuild dropped the note");
    env.deskd_ok(&[
        "restore",
        bk.to_str().unwrap(),
        env.path("vol").to_str().unwrap(),
    ]);
    assert_eq!(note(), "1700000000", "the restore dropped the note");
    // Still the volume's desktop, IDs kept.
    env.serve(&["vol"]);
    assert!(env.id_of(&env.path("vol/kept")) >= 17);
}

/// A DEST ending in `/` names a folder; one not made yet got the file system's "Not a
/// directory (os error 20)", which said nothing of what to do (newcomer review of stop 43).
#[test]
fn a_backup_into_a_folder_not_made_yet_says_so() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    let missing = format!("{}/", env.path("not-made").display());
    let out = env.deskd(&["backup", env.path("vol").to_str().unwrap(), &missing]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("no such directory") && said.contains("create it first"),
        "{said}"
    );
    assert!(!env.path("not-made").exists());
}
