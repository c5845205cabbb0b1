//! `deskd rebuild` on real trees: -f after losing the desktop, -s and repair after plain-Unix
//! damage, HELIOS and Netatalk migration, refusal while served and on low space, and kills at
//! every step.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use common::{sqlite3, Env, DESKD};
use deskd_volume::netatalk::netatalk3_blob;

fn rebuild(env: &Env, args: &[&str]) -> Output {
    let mut cmd = Command::new(DESKD);
    cmd.arg("rebuild").args(args).current_dir(env.path(""));
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A served volume with nested directories and `files` files spread over them, made with dt;
/// returns every path made (relative to the temp dir).
fn populate(env: &mut Env, files: usize) -> Vec<PathBuf> {
    env.serve_unwatched(&["vol"]);
    let mut made = Vec::new();
    for a in 0..5 {
        for b in 0..4 {
            let dir = format!("vol/d{a}/e{b}");
            env.dt_ok(&[b"mkdir", b"-p", dir.as_bytes()]);
            made.push(PathBuf::from(format!("vol/d{a}")));
            made.push(PathBuf::from(&dir));
        }
    }
    made.sort();
    made.dedup();
    let per_dir = files / 20;
    for a in 0..5 {
        for b in 0..4 {
            let paths: Vec<String> = (0..per_dir)
                .map(|i| format!("vol/d{a}/e{b}/file {i}.txt"))
                .collect();
            let mut args: Vec<&[u8]> = vec![b"touch"];
            args.extend(paths.iter().map(|p| p.as_bytes()));
            env.dt_ok(&args);
            made.extend(paths.into_iter().map(PathBuf::from));
        }
    }
    made
}

fn ids_of(env: &Env, paths: &[PathBuf]) -> Vec<u32> {
    paths
        .chunks(200)
        .flat_map(|chunk| env.ids(chunk))
        .map(|v| v["id"].as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn fresh_rebuild_after_losing_the_desktop_keeps_every_id() {
    let mut env = Env::new(&["vol"]);
    let paths = populate(&mut env, 1000);
    assert!(paths.len() >= 1000);
    let before = ids_of(&env, &paths);
    env.term();
    for f in [".Desktop", ".Desktop-wal", ".Desktop-shm"] {
        let _ = std::fs::remove_file(env.path("vol").join(f));
    }
    let out = rebuild(&env, &["-f", "vol"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        text(&out).contains(&format!("{} objects", paths.len() + 1)),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("0 new IDs"), "{}", text(&out));
    let db = env.path("vol/.Desktop");
    assert_eq!(sqlite3(&db, "PRAGMA integrity_check"), "ok");
    let scan = rebuild(&env, &["-s", "vol"]);
    assert_eq!(
        scan.status.code(),
        Some(0),
        "{}{}",
        text(&scan),
        common::stderr(&scan)
    );
    assert_eq!(text(&scan), "");
    assert!(scan.stderr.is_empty());
    env.serve_unwatched(&["vol"]);
    assert_eq!(ids_of(&env, &paths), before, "every ID came back");
    // The counter did not go back: a new object gets a fresh ID.
    env.dt_ok(&[b"touch", b"vol/new-after-rebuild"]);
    let new_id = env.id_of(Path::new("vol/new-after-rebuild"));
    assert!(new_id > *before.iter().max().unwrap());
}

fn plain(cmd: &str, args: &[&str], dir: &Path) {
    let st = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "{cmd} {args:?}");
}

#[test]
fn scan_lists_plain_unix_damage_repair_fixes_it_and_ids_survive() {
    let mut env = Env::new(&["vol"]);
    env.serve_unwatched(&["vol"]);
    for d in ["vol/docs", "vol/docs/sub", "vol/photos", "vol/old"] {
        env.dt_ok(&[b"mkdir", d.as_bytes()]);
    }
    for f in [
        "vol/docs/a.txt",
        "vol/docs/b.txt",
        "vol/docs/sub/c.txt",
        "vol/photos/p.jpg",
        "vol/docs/gone.txt",
        "vol/docs/corrupt.txt",
        "vol/docs/wrong-id.txt",
    ] {
        env.dt_ok(&[b"touch", f.as_bytes()]);
    }
    let id = |env: &Env, p: &str| env.id_of(Path::new(p));
    let (a, sub, c, p, wrong) = (
        id(&env, "vol/docs/a.txt"),
        id(&env, "vol/docs/sub"),
        id(&env, "vol/docs/sub/c.txt"),
        id(&env, "vol/photos/p.jpg"),
        id(&env, "vol/docs/wrong-id.txt"),
    );
    env.term();
    let vol = env.path("vol");
    // Plain-Unix damage.
    plain("mv", &["docs/a.txt", "photos/a-moved.txt"], &vol); // file moved, rsrc left behind
    plain("mv", &["docs/sub", "old/sub"], &vol); // directory moved
    plain("cp", &["-a", "photos/p.jpg", "photos/p-copy.jpg"], &vol); // duplicate via xattr
    plain("cp", &["-a", "old/sub", "old/sub-copy"], &vol); // duplicate subtree with .rsrc
    plain("rm", &["docs/gone.txt"], &vol);
    plain("touch", &["docs/new.txt"], &vol);
    std::fs::write(vol.join("docs/.rsrc/corrupt.txt"), b"garbage, not a header").unwrap();
    let unused = 900_000u32;
    let rsrc = vol.join("docs/.rsrc/wrong-id.txt");
    let mut bytes = std::fs::read(&rsrc).unwrap();
    bytes[20..24].copy_from_slice(&unused.to_be_bytes());
    std::fs::write(&rsrc, bytes).unwrap();

    let scan = rebuild(&env, &["-s", "vol"]);
    assert_eq!(scan.status.code(), Some(1), "{}", common::stderr(&scan));
    let lines = text(&scan);
    let root = vol.canonicalize().unwrap();
    let has = |kind: &str, rel: &str| {
        let prefix = format!("{kind} {}/{rel}: ", root.display());
        lines.lines().any(|l| l.starts_with(&prefix))
    };
    for (kind, rel) in [
        ("moved", "photos/a-moved.txt"),
        ("missing-rsrc", "photos/a-moved.txt"),
        ("orphan-rsrc", "docs/.rsrc/a.txt"),
        ("moved", "old/sub"),
        ("duplicate", "photos/p-copy.jpg"),
        ("duplicate", "old/sub-copy"),
        ("duplicate", "old/sub-copy/c.txt"),
        ("vanished", "docs/gone.txt"),
        ("new", "docs/new.txt"),
        ("missing-rsrc", "docs/new.txt"),
        ("corrupt-rsrc", "docs/corrupt.txt"),
        ("id-mismatch", "docs/wrong-id.txt"),
    ] {
        assert!(has(kind, rel), "no `{kind} {rel}` line in:\n{lines}");
    }
    for line in lines.lines() {
        assert!(line.contains(": "), "line format: {line}");
    }
    let db = env.path("vol/.Desktop");
    let desktop_before = common::objects_dump(&db);

    let repair = rebuild(&env, &["vol"]);
    assert!(repair.status.success(), "{}", common::stderr(&repair));
    assert!(
        text(&repair).contains("renumbered duplicates"),
        "{}",
        text(&repair)
    );
    assert_ne!(common::objects_dump(&db), desktop_before);
    let again = rebuild(&env, &["-s", "vol"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(text(&again), "");

    env.serve_unwatched(&["vol"]);
    assert_eq!(
        id(&env, "vol/photos/a-moved.txt"),
        a,
        "moved file keeps its ID"
    );
    assert_eq!(id(&env, "vol/old/sub"), sub, "moved directory keeps its ID");
    assert_eq!(id(&env, "vol/old/sub/c.txt"), c);
    assert_eq!(id(&env, "vol/photos/p.jpg"), p, "the original keeps its ID");
    let copy = id(&env, "vol/photos/p-copy.jpg");
    assert_ne!(copy, p, "the copy is renumbered");
    assert_ne!(id(&env, "vol/old/sub-copy"), sub);
    assert_ne!(id(&env, "vol/old/sub-copy/c.txt"), c);
    assert_eq!(
        id(&env, "vol/docs/wrong-id.txt"),
        unused,
        "the resource file wins"
    );
    assert_ne!(wrong, unused);
    // The moved file's resource file followed it; the copy's now carries the new ID.
    assert!(!vol.join("docs/.rsrc/a.txt").exists());
    assert!(vol.join("photos/.rsrc/a-moved.txt").exists());
    let header = std::fs::read(vol.join("photos/.rsrc/p-copy.jpg")).unwrap();
    assert_eq!(u32::from_be_bytes(header[20..24].try_into().unwrap()), copy);
    let resolve = env.dt_ok(&[b"resolve", b"vol", a.to_string().as_bytes()]);
    assert!(
        resolve.trim_end().ends_with("photos/a-moved.txt"),
        "{resolve}"
    );
    assert!(env.dt(&[b"resolve", b"vol", b"17000000"]).status.code() != Some(0));
}

/// A HELIOS resource file from the documented layout: 512-byte header, fork after it.
fn helios_rsrc(
    id: u32,
    type_code: &[u8; 4],
    creator: &[u8; 4],
    comment: &[u8],
    fork: &[u8],
) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[0..4].copy_from_slice(&0x0368_1093u32.to_be_bytes());
    b[4..8].copy_from_slice(&77u32.to_be_bytes()); // serno
    b[8..10].copy_from_slice(&0x0102u16.to_be_bytes());
    b[20..24].copy_from_slice(&id.to_be_bytes());
    b[24..28].copy_from_slice(&1_200_000_000u32.to_be_bytes());
    b[32..36].copy_from_slice(type_code);
    b[36..40].copy_from_slice(creator);
    b[116..116 + comment.len()].copy_from_slice(comment);
    b.extend_from_slice(fork);
    b
}

#[test]
fn helios_volume_comes_through_fresh_rebuild_with_its_ids() {
    let env = Env::new(&["vol"]);
    let vol = env.path("vol");
    std::fs::create_dir_all(vol.join("Projects/.rsrc")).unwrap();
    std::fs::create_dir_all(vol.join(".rsrc")).unwrap();
    std::fs::write(
        vol.join(".rsrc/Projects"),
        helios_rsrc(100, &[0; 4], &[0; 4], b"", b""),
    )
    .unwrap();
    std::fs::write(vol.join("Projects/Layout.qxd"), b"data").unwrap();
    std::fs::write(
        vol.join("Projects/.rsrc/Layout.qxd"),
        helios_rsrc(
            4242,
            b"XDOC",
            b"XPR3",
            b"final version",
            b"RESOURCE FORK BYTES",
        ),
    )
    .unwrap();
    std::fs::write(vol.join("Projects/App"), b"exec").unwrap();
    // Newer HELIOS servers write only the 64-byte FileInfo.
    let mut short = helios_rsrc(5000, b"APPL", b"XPR3", b"", b"");
    short.truncate(64);
    std::fs::write(vol.join("Projects/.rsrc/App"), short).unwrap();

    let out = rebuild(&env, &["-f", "vol"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let db = vol.join(".Desktop");
    assert_eq!(
        sqlite3(&db, "SELECT id, hex(type), hex(creator) FROM objects WHERE id IN (100, 4242, 5000) ORDER BY id"),
        format!(
            "100|00000000|00000000\n4242|{}|{}\n5000|{}|{}",
            hex(b"XDOC"),
            hex(b"XPR3"),
            hex(b"APPL"),
            hex(b"XPR3")
        )
    );
    assert_eq!(
        sqlite3(&db, "SELECT text FROM comments WHERE id = 4242"),
        "final version"
    );
    assert_eq!(
        sqlite3(
            &db,
            "SELECT app_id FROM appl WHERE creator = CAST('XPR3' AS BLOB)"
        ),
        "5000"
    );
    // The fork is kept; the root got its record.
    let rsrc = std::fs::read(vol.join("Projects/.rsrc/Layout.qxd")).unwrap();
    assert!(rsrc.ends_with(b"RESOURCE FORK BYTES"));
    assert!(vol.join(".rsrc/.rsrc").exists());
    let scan = rebuild(&env, &["-s", "vol"]);
    assert_eq!(scan.status.code(), Some(0), "{}", text(&scan));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

#[test]
fn netatalk_volume_comes_through_fresh_rebuild_with_its_cnids() {
    let env = Env::new(&["vol"]);
    let vol = env.path("vol");
    std::fs::create_dir_all(vol.join("Shared")).unwrap();
    std::fs::write(vol.join("Shared/report.doc"), b"x").unwrap();
    std::fs::write(vol.join("Shared/plain.txt"), b"y").unwrap();
    let set = |p: &str, blob: Vec<u8>| {
        xattr::set(vol.join(p), "user.org.netatalk.Metadata", &blob).unwrap();
    };
    set("Shared", netatalk3_blob(31, &[0; 4], &[0; 4]));
    set("Shared/report.doc", netatalk3_blob(1234, b"W8BN", b"MSWD"));
    let out = rebuild(&env, &["-f", "vol"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let db = vol.join(".Desktop");
    assert_eq!(
        sqlite3(
            &db,
            "SELECT id, hex(type), hex(creator) FROM objects WHERE id IN (31, 1234) ORDER BY id"
        ),
        format!(
            "31|00000000|00000000\n1234|{}|{}",
            hex(b"W8BN"),
            hex(b"MSWD")
        )
    );
    // A file without metadata gets a new ID above every CNID, and UNIX/UNKN.
    let plain_id: u32 = sqlite3(
        &db,
        "SELECT id FROM objects WHERE name = CAST('plain.txt' AS BLOB)",
    )
    .parse()
    .unwrap();
    assert!(plain_id > 1234);
    // Resource files and mirrors now carry the IDs.
    let header = std::fs::read(vol.join("Shared/.rsrc/report.doc")).unwrap();
    assert_eq!(u32::from_be_bytes(header[20..24].try_into().unwrap()), 1234);
    assert_eq!(&header[32..40], b"W8BNMSWD");
    assert_eq!(
        xattr::get(vol.join("Shared/report.doc"), "user.deskd.id")
            .unwrap()
            .unwrap(),
        1234u32.to_be_bytes()
    );
    let scan = rebuild(&env, &["-s", "vol"]);
    assert_eq!(scan.status.code(), Some(0), "{}", text(&scan));
}

#[test]
fn rebuild_refuses_a_served_volume_and_low_space() {
    let mut env = Env::new(&["vol", "big"]);
    env.serve_unwatched(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/a"]);
    let out = rebuild(&env, &["vol"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::stderr(&out).contains("running deskd serve"),
        "{}",
        common::stderr(&out)
    );
    // -s works beside a running server (read-only).
    let scan = rebuild(&env, &["-s", "vol"]);
    assert_eq!(scan.status.code(), Some(0), "{}", text(&scan));
    env.term();

    // A (sparse) desktop larger than half the free space: refused, nothing touched.
    let big = env.path("big/.Desktop");
    let free = {
        let c = std::ffi::CString::new(env.path("big").as_os_str().as_bytes()).unwrap();
        // SAFETY: statvfs into a zeroed buffer; checked below.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail as u64 * st.f_frsize as u64
    };
    let len = free / 2 + (1 << 30);
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(len).unwrap();
    let out = rebuild(&env, &["-f", "big"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::stderr(&out).contains("twice the desktop"),
        "{}",
        common::stderr(&out)
    );
    assert_eq!(std::fs::metadata(&big).unwrap().len(), len);
    // --force skips the check (here the old file is no desktop, so -f builds from the disk).
    let out = rebuild(&env, &["-f", "--force", "big"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(sqlite3(&big, "PRAGMA integrity_check"), "ok");

    // Bad arguments are errors with status 2.
    let out = rebuild(&env, &["-s", "does-not-exist"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!common::stderr(&out).is_empty());
}

#[test]
fn a_rebuild_killed_at_any_step_leaves_an_openable_desktop() {
    let mut env = Env::new(&["vol"]);
    let paths = populate(&mut env, 200);
    let before = ids_of(&env, &paths);
    env.term();
    let vol = env.path("vol");
    // Damage that needs repairs on disk and in the desktop.
    plain("mv", &["d0/e0/file 0.txt", "d1/moved.txt"], &vol);
    plain("cp", &["-a", "d2", "d2-copy"], &vol);
    let steps = ["fixes", "written", "checkpointed", "sidefiles"];
    for step in steps {
        let out = Command::new(DESKD)
            .args(["rebuild", "vol"])
            .env("DESKD_REBUILD_CRASH_AFTER", step)
            .current_dir(env.path(""))
            .output()
            .unwrap();
        assert!(!out.status.success(), "crash hook {step} did not fire");
        let db = vol.join(".Desktop");
        assert_eq!(
            sqlite3(&db, "PRAGMA integrity_check"),
            "ok",
            "after a kill at {step}"
        );
        env.serve_unwatched(&["vol"]);
        env.term();
    }
    // Random SIGKILLs too.
    for delay_ms in [1u64, 5, 10, 20, 40] {
        let mut child = Command::new(DESKD)
            .args(["rebuild", "vol"])
            .current_dir(env.path(""))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            sqlite3(&vol.join(".Desktop"), "PRAGMA integrity_check"),
            "ok"
        );
    }
    let out = rebuild(&env, &["vol"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let scan = rebuild(&env, &["-s", "vol"]);
    assert_eq!(scan.status.code(), Some(0), "{}", text(&scan));
    env.serve_unwatched(&["vol"]);
    let mut moved_paths = paths.clone();
    let i = moved_paths
        .iter()
        .position(|p| p == Path::new("vol/d0/e0/file 0.txt"))
        .unwrap();
    moved_paths[i] = PathBuf::from("vol/d1/moved.txt");
    assert_eq!(
        ids_of(&env, &moved_paths),
        before,
        "no ID lost across the kills"
    );
}

#[test]
fn json_verbose_threads_and_the_summary_line_agree() {
    let mut env = Env::new(&["vol"]);
    env.serve_unwatched(&["vol"]);
    env.dt_ok(&[b"mkdir", b"vol/d"]);
    env.dt_ok(&[b"touch", b"vol/d/a", b"vol/d/b"]);
    env.term();
    let vol = env.path("vol");
    plain("cp", &["-a", "d/a", "d/a-copy"], &vol);
    plain("rm", &["d/b"], &vol);

    // -s --json: one object per difference, then the summary.
    let out = rebuild(&env, &["-s", "--json", "--threads", "1", "vol"]);
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    let lines: Vec<serde_json::Value> = text(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (summary, diffs) = lines.split_last().unwrap();
    let kinds: Vec<&str> = diffs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert!(
        kinds.contains(&"duplicate") && kinds.contains(&"vanished"),
        "{kinds:?}"
    );
    for d in diffs {
        assert!(d["path"].as_str().unwrap().starts_with('/'), "{d}");
        assert!(!d["detail"].as_str().unwrap().is_empty(), "{d}");
    }
    let s = &summary["summary"];
    assert_eq!(s["mode"], "scan");
    assert_eq!(s["objects"], 4, "root, d, a, a-copy: {s}");
    assert_eq!(s["directories"], 2);
    assert_eq!(s["renumbered"], 1);
    assert_eq!(s["new_ids"], 1);
    assert_eq!(s["removed"], 2, "the vanished row and its resource file");
    assert_eq!(s["differences"].as_u64().unwrap() as usize, diffs.len());

    // The same differences as text lines, with another thread count.
    let plain_scan = rebuild(&env, &["-s", "--threads", "2", "vol"]);
    assert_eq!(plain_scan.status.code(), Some(1));
    assert_eq!(text(&plain_scan).lines().count(), diffs.len());
    assert!(common::stderr(&plain_scan).contains("1 renumbered duplicates"));

    // -v prints each repair, then the summary line.
    let repair = rebuild(&env, &["-v", "vol"]);
    assert!(repair.status.success(), "{}", common::stderr(&repair));
    let out = text(&repair);
    let mut lines = out.lines().collect::<Vec<_>>();
    let last = lines.pop().unwrap();
    assert_eq!(lines.len(), diffs.len(), "{out}");
    assert!(
        last.starts_with(
            "rebuild vol: 4 objects, 2 directories, 1 new IDs, 1 renumbered duplicates, "
        ) && last.contains(" removed, "),
        "{last}"
    );
    // Without -v only the summary line.
    let quiet = rebuild(&env, &["vol"]);
    assert_eq!(text(&quiet).lines().count(), 1, "{}", text(&quiet));
}

/// Run dt against the server at `socket`, from `dir` (usable from several threads at once).
/// dt pauses 300 ms between the server's answer and writing the resource file, so a walk sees
/// objects in that state (which a rebuild must leave to the client).
fn dt_at(dir: &Path, socket: &Path, args: &[&str]) -> Output {
    Command::new(common::DT)
        .args(args)
        .current_dir(dir)
        .env("DESKD_SOCKET", socket)
        .env("DESKD_TEST_PAUSE_BEFORE_RECORD_MS", "300")
        .output()
        .unwrap()
}

/// The ID dt reports for `path`.
fn id_at(dir: &Path, socket: &Path, path: &str) -> u32 {
    let out = dt_at(dir, socket, &["info", "--json", path]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["id"].as_u64().unwrap() as u32
}

/// Wait (up to 20 s) until `deskd status` shows a rebuild line containing `phase`.
fn wait_for_phase(env: &Env, phase: &str) -> String {
    let began = std::time::Instant::now();
    loop {
        let status = env.deskd_ok(&["status"]);
        if let Some(line) = status.lines().find(|l| l.contains("rebuild:")) {
            if line.contains(phase) {
                return line.to_string();
            }
        }
        assert!(
            began.elapsed() < std::time::Duration::from_secs(20),
            "no rebuild {phase} in status:\n{status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn online_rebuild_while_two_clients_create_and_rename_keeps_every_acknowledged_write() {
    let mut env = Env::new(&["vol"]);
    // Every directory the walk visits takes 60 ms longer, so the clients' work overlaps it.
    env.server_env
        .push(("DESKD_REBUILD_DIR_DELAY_MS".into(), "60".into()));
    populate(&mut env, 200);
    let vol = env.path("vol");
    let id = |env: &Env, p: &str| env.id_of(Path::new(p));
    let moved_file = id(&env, "vol/d0/e0/file 0.txt");
    let moved_dir = id(&env, "vol/d0/e1");
    let original = id(&env, "vol/d1/e1/file 1.txt");
    // Plain-Unix damage behind the running server's back, in d0–d2.
    plain("mv", &["d0/e0/file 0.txt", "d1/e0/moved.txt"], &vol);
    plain("mv", &["d0/e1", "d2/e1-moved"], &vol);
    plain("cp", &["-a", "d1/e1/file 1.txt", "d1/e1/copy.txt"], &vol);
    plain("rm", &["d2/e2/file 2.txt"], &vol);
    plain("touch", &["d2/e3/plain-new.txt"], &vol);
    std::fs::write(vol.join("d1/e2/.rsrc/file 3.txt"), b"garbage").unwrap();

    let (dir, socket) = (env.path(""), env.socket.clone());
    let stop = std::sync::atomic::AtomicBool::new(false);
    // How many writes each client has had acknowledged so far.
    let counts = [AtomicUsize::new(0), AtomicUsize::new(0)];
    // Wait (up to 60 s) until each client has more than `at_least` writes acknowledged.
    let wait_for_clients = |at_least: [usize; 2]| {
        let began = std::time::Instant::now();
        while (0..2).any(|k| counts[k].load(SeqCst) <= at_least[k]) {
            assert!(
                began.elapsed() < std::time::Duration::from_secs(60),
                "the clients are stuck: {counts:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    let (acked, rebuild_out, status_line) = std::thread::scope(|s| {
        let clients: Vec<_> = (0..2)
            .map(|k| {
                let (dir, socket, stop, count) = (&dir, &socket, &stop, &counts[k]);
                s.spawn(move || {
                    // Each client: new files created (half of them then renamed) in its own
                    // directory, and existing files renamed in d3 or d4. Every acknowledged
                    // result is kept.
                    let mine = format!("vol/c{k}");
                    assert!(dt_at(dir, socket, &["mkdir", &mine]).status.success());
                    let mut acked: Vec<(String, u32)> = Vec::new();
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let made = format!("{mine}/new {n}");
                        if dt_at(dir, socket, &["touch", &made]).status.success() {
                            let id = id_at(dir, socket, &made);
                            // Half stay where they were made (a later walk finds them there).
                            let renamed = format!("{mine}/renamed {n}");
                            if n % 2 == 1
                                && dt_at(dir, socket, &["mv", &made, &renamed])
                                    .status
                                    .success()
                            {
                                acked.push((renamed, id));
                            } else {
                                acked.push((made, id));
                            }
                            count.fetch_add(1, SeqCst);
                        }
                        if n < 10 {
                            let old = format!("vol/d{}/e{}/file {n}.txt", 3 + k, n % 4);
                            let id = id_at(dir, socket, &old);
                            let new = format!("vol/d{}/e{}/client-{n}.txt", 3 + k, n % 4);
                            if dt_at(dir, socket, &["mv", &old, &new]).status.success() {
                                acked.push((new, id));
                                count.fetch_add(1, SeqCst);
                            }
                        }
                        n += 1;
                    }
                    acked
                })
            })
            .collect();
        // The rebuild starts once both clients are at work.
        wait_for_clients([0, 0]);
        let child = env
            .command_for(
                common::DESKD,
                &[b"rebuild", b"-v", b"--threads", b"2", b"vol"],
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let status_line = wait_for_phase(&env, "walking");
        let out = child.wait_with_output().unwrap();
        // The clients go on after the rebuild: two more acknowledged writes each.
        let at_the_end = [counts[0].load(SeqCst), counts[1].load(SeqCst)];
        wait_for_clients([at_the_end[0] + 1, at_the_end[1] + 1]);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let acked: Vec<(String, u32)> = clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        (acked, out, status_line)
    });
    assert!(
        rebuild_out.status.success(),
        "{}{}",
        text(&rebuild_out),
        common::stderr(&rebuild_out)
    );
    assert!(status_line.contains("objects walked"), "{status_line}");
    assert!(
        text(&rebuild_out).contains("(online,"),
        "{}",
        text(&rebuild_out)
    );
    assert!(acked.len() >= 4, "the clients did too little: {acked:?}");
    // Every acknowledged write is there, with the ID its client saw.
    for (path, want) in &acked {
        assert_eq!(id(&env, path), *want, "{path}");
    }
    // The damage is repaired: IDs followed the plain moves, the copy got its own.
    assert_eq!(id(&env, "vol/d1/e0/moved.txt"), moved_file);
    assert_eq!(id(&env, "vol/d2/e1-moved"), moved_dir);
    assert_eq!(id(&env, "vol/d1/e1/file 1.txt"), original);
    assert_ne!(id(&env, "vol/d1/e1/copy.txt"), original);
    // Online and offline scans agree that disk and desktop match.
    let scan = env.deskd(&["rebuild", "-s", "vol"]);
    assert_eq!(scan.status.code(), Some(0), "{}", text(&scan));
    assert_eq!(text(&scan), "");
    env.term();
    let scan = rebuild(&env, &["-s", "vol"]);
    assert_eq!(scan.status.code(), Some(0), "{}", text(&scan));
    assert_eq!(text(&scan), "");
}

#[test]
fn online_rebuild_ends_at_once_when_the_server_stops_answering_and_survives_a_kill() {
    let mut env = Env::new(&["vol"]);
    env.server_env
        .push(("DESKD_REBUILD_DIR_DELAY_MS".into(), "400".into()));
    populate(&mut env, 40);
    plain("touch", &["d0/e0/plain-new.txt"], &env.path("vol"));
    let child = env
        .command_for(common::DESKD, &[b"--timeout", b"1", b"rebuild", b"vol"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_phase(&env, "walking");
    // One job per volume at a time.
    let second = env.deskd(&["rebuild", "vol"]);
    assert_eq!(second.status.code(), Some(2));
    assert!(
        common::stderr(&second).contains("already running"),
        "{}",
        common::stderr(&second)
    );
    let server = env.server.as_ref().unwrap().id() as i32;
    // SAFETY: signals to our own child process.
    unsafe { libc::kill(server, libc::SIGSTOP) };
    let began = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    let waited = began.elapsed();
    unsafe { libc::kill(server, libc::SIGCONT) };
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        common::stderr(&out).contains("no answer from deskd within 1 s"),
        "{}",
        common::stderr(&out)
    );
    assert!(waited < std::time::Duration::from_secs(10), "{waited:?}");
    // The server, hearing no poll, stopped the job before applying anything.
    let line = wait_for_phase(&env, "stopped");
    assert!(line.contains("communication timeout"), "{line}");
    // A job can also be cancelled by request; it stops at once, nothing applied.
    let mut c = env.client();
    let vol = c.open_volume(&env.path("vol")).unwrap().vol;
    let job = match c
        .call(deskd_client::Request::RebuildStart {
            vol,
            mode: deskd_proto::RebuildMode::Repair,
            threads: Some(2),
            force: false,
            timeout_secs: 60,
        })
        .unwrap()
    {
        deskd_client::Response::RebuildStarted { job } => job,
        other => panic!("{other:?}"),
    };
    c.call(deskd_client::Request::RebuildCancel { vol, job })
        .unwrap();
    let began = std::time::Instant::now();
    let finished = loop {
        match c
            .call(deskd_client::Request::RebuildPoll { vol, job, from: 0 })
            .unwrap()
        {
            deskd_client::Response::Rebuild(s) if s.finished.is_some() => break s,
            _ => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    };
    assert!(began.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(finished.phase, "stopped");
    assert!(matches!(finished.finished, Some(Err(_))));
    let scan = env.deskd(&["rebuild", "-s", "vol"]);
    assert_eq!(scan.status.code(), Some(1), "{}", common::stderr(&scan));
    assert!(
        text(&scan).contains("plain-new.txt: not in the desktop"),
        "{}",
        text(&scan)
    );

    // A server killed in the middle of an online rebuild restarts on a sound desktop, and the
    // rebuild run again completes.
    let child = env
        .command_for(common::DESKD, &[b"rebuild", b"vol"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_phase(&env, "walking");
    env.kill9();
    let mut child = child;
    assert!(!child.wait().unwrap().success());
    env.server_env.clear();
    env.serve_unwatched(&["vol"]);
    assert_eq!(
        sqlite3(&env.path("vol/.Desktop"), "PRAGMA integrity_check"),
        "ok"
    );
    let out = env.deskd(&["rebuild", "vol"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let scan = env.deskd(&["rebuild", "-s", "vol"]);
    assert_eq!(scan.status.code(), Some(0), "{}", text(&scan));
    assert_eq!(text(&scan), "");
    let js = env.deskd(&["rebuild", "-s", "--json", "vol"]);
    assert_eq!(js.status.code(), Some(0), "{}", common::stderr(&js));
    let lines: Vec<serde_json::Value> = text(&js)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{}", text(&js));
    assert_eq!(lines[0]["summary"]["online"], true);
    assert_eq!(lines[0]["summary"]["differences"], 0);
    assert_eq!(lines[0]["summary"]["mode"], "scan");
}

#[test]
fn links_planted_in_rsrc_are_never_written_through() {
    let env = Env::new(&["vol"]);
    std::fs::write(env.path("vol/a.txt"), b"data").unwrap();
    let victim = env.path("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let first = rebuild(&env, &["-f", "vol"]);
    assert!(first.status.success(), "{}", common::stderr(&first));
    let rsrc = env.path("vol/.rsrc/a.txt");
    let id = deskd_volume::rsrc::read_header(&rsrc).unwrap().unwrap().id;
    // A resource file replaced by a link to a file outside: repair replaces the link with a
    // real resource file carrying the desktop's ID, and the outside file keeps its bytes.
    std::fs::remove_file(&rsrc).unwrap();
    std::os::unix::fs::symlink(&victim, &rsrc).unwrap();
    let scan = rebuild(&env, &["-s", "vol"]);
    assert_eq!(scan.status.code(), Some(1), "a difference is reported");
    let repair = rebuild(&env, &["vol"]);
    assert!(repair.status.success(), "{}", common::stderr(&repair));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(std::fs::symlink_metadata(&rsrc).unwrap().is_file());
    assert_eq!(
        deskd_volume::rsrc::read_header(&rsrc).unwrap().unwrap().id,
        id
    );
    // The .rsrc directory replaced by a link to a directory outside: refused by name, and
    // nothing is written there.
    let outside = env.path("outside");
    std::fs::rename(env.path("vol/.rsrc"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, env.path("vol/.rsrc")).unwrap();
    let before: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    let refused = rebuild(&env, &["vol"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        common::stderr(&refused).contains("symbolic link where a real .rsrc directory belongs"),
        "{}",
        common::stderr(&refused)
    );
    let after: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(before, after, "the outside directory is untouched");
}
