//! `deskd migrate` between a volume's SQLite desktop and PostgreSQL (issue 28), driving the
//! real `deskd` against a real throw-away PostgreSQL (deskd_pg::test_cluster; a machine
//! without PostgreSQL skips, CI fails): a volume made by `deskd-bench populate` and `deskd
//! rebuild -f` with comments, APPL and icon records goes into the database and back, and the
//! two SQLite desktops are compared row by row; each refusal changes nothing.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use common::{pg_database, sqlite3, stderr, stdout, Env, DESKD};
use deskd_db::{ApplRecord, Durability, IconRecord, InfoUpdate};
use deskd_pg::test_cluster::TestCluster;

const BENCH: &str = env!("CARGO_BIN_EXE_deskd-bench");

/// Files in the round-trip volume: 100 directories of 1,000 (the 100,000 objects).
const DIRS: u32 = 100;
const PER_DIR: u32 = 1000;

/// `DIRS`×`PER_DIR` empty files in `root` (deskd-bench populate), registered by an offline
/// `deskd rebuild -f`.
fn make_volume(root: &Path, dirs: u32, per_dir: u32) {
    let out = Command::new(BENCH)
        .args(["--socket", "/nonexistent", "--volume"])
        .arg(root)
        .args(["populate", "--dirs", &dirs.to_string()])
        .args(["--per-dir", &per_dir.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "populate: {}", stderr(&out));
    let out = deskd(&["rebuild".as_ref(), "-f".as_ref(), root.as_os_str()]);
    assert!(out.status.success(), "rebuild -f: {}", stderr(&out));
}

/// `deskd rebuild -s`'s differences, without the summary's timing.
fn scan(root: &Path) -> String {
    let out = deskd(&["rebuild".as_ref(), "-s".as_ref(), root.as_os_str()]);
    assert!(
        out.status.code() == Some(1) || out.status.success(),
        "{}",
        stderr(&out)
    );
    stdout(&out)
        .lines()
        .map(|l| {
            l.rsplit_once(", ")
                .filter(|_| l.starts_with("rebuild "))
                .map_or(l, |(a, _)| a)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn deskd(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(DESKD).args(args).output().unwrap()
}

/// `deskd migrate` with these arguments (strings).
fn migrate(args: &[&str]) -> Output {
    Command::new(DESKD)
        .arg("migrate")
        .args(args)
        .output()
        .unwrap()
}

/// Comments, APPL records (one with a tag, one an APPL object's own, one removed) and icons
/// written into the desktop offline, and two objects deleted (the highest among them, so the
/// counter is above every ID left).
fn add_records(desktop: &Path) {
    use deskd_db::Read as _;
    let (mut desk, _) = deskd_db::Desktop::open(desktop, Durability::Normal).unwrap();
    let mut b = desk.batch().unwrap();
    let last = b.meta("last_id").unwrap().unwrap() as u32;
    assert_eq!(
        b.get(last).unwrap().kind,
        deskd_db::Kind::File,
        "the last ID a file"
    );
    // Files of the first directory.
    let dir = b.children(deskd_db::ROOT_ID).unwrap()[0].id;
    let ids: Vec<u32> = b.children(dir).unwrap()[..8].iter().map(|o| o.id).collect();
    b.comment_set(ids[0], b"first comment").unwrap();
    b.comment_set(ids[1], "\u{e9}t\u{e9} \u{2013} bytes \x01".as_bytes())
        .unwrap();
    b.comment_set(last - 5, b"near the end").unwrap();
    // An application: its own APPL record (tag 0) by the trigger.
    let app = InfoUpdate {
        type_code: Some(*b"APPL"),
        creator: Some(*b"ttxt"),
        flags: Some(0x2000),
    };
    b.set_info(ids[2], &app).unwrap();
    // Another one whose own record was removed: it must stay removed.
    let gone = InfoUpdate {
        type_code: Some(*b"APPL"),
        creator: Some(*b"MSWD"),
        flags: None,
    };
    b.set_info(ids[3], &gone).unwrap();
    assert!(b.appl_remove(*b"MSWD", ids[3]).unwrap());
    b.appl_add(&ApplRecord {
        creator: *b"R*ch",
        app_id: ids[4],
        tag: 0xdead_beef,
    })
    .unwrap();
    for (itype, bitmap) in [(1u8, vec![0xaa; 128]), (4, vec![0x55; 256])] {
        b.icon_add(&IconRecord {
            creator: *b"ttxt",
            type_code: *b"TEXT",
            itype,
            tag: 7,
            bitmap,
        })
        .unwrap();
    }
    b.set_info(
        ids[5],
        &InfoUpdate {
            type_code: Some(*b"TEXT"),
            creator: Some(*b"ttxt"),
            flags: Some(0x0100),
        },
    )
    .unwrap();
    b.delete(last, false).unwrap();
    b.delete(ids[7], false).unwrap();
    b.commit().unwrap();
    desk.close_clean().unwrap();
}

/// Every row of a desktop that a migration must keep, as text: objects (every column),
/// comments, APPL and icon records, and the meta keys but the session's own (clean, last_seen).
fn dump(desktop: &Path) -> String {
    [
        "SELECT id, parent, hex(name), kind, dev, ino, hex(type), hex(creator), flags, ctime, skey
         FROM objects ORDER BY id",
        "SELECT id, hex(text) FROM comments ORDER BY id",
        "SELECT hex(creator), app_id, tag FROM appl ORDER BY creator, app_id",
        "SELECT hex(creator), hex(type), itype, tag, hex(bitmap) FROM icons
         ORDER BY creator, type, itype",
        // `left_database`: the note a desktop moved out of a database carries (compared
        // apart: `left_database`).
        "SELECT key, value FROM meta WHERE key NOT IN ('clean', 'last_seen', 'left_database')
         ORDER BY key",
    ]
    .iter()
    .map(|sql| sqlite3(desktop, sql))
    .collect::<Vec<_>>()
    .join("\n--\n")
}

/// The desktop's note that its volume left a database (`deskd_db::LEFT_DATABASE`), if any.
fn left_database(desktop: &Path) -> Option<String> {
    Some(sqlite3(
        desktop,
        "SELECT value FROM meta WHERE key = 'left_database'",
    ))
    .filter(|v| !v.trim().is_empty())
}

/// What the database holds, as text (for "nothing changed"): the format, every volume row,
/// and every volume's record counts. Empty when there is no deskd schema.
fn database_state(cluster: &TestCluster, db: &str) -> String {
    let mut c = cluster.admin(db);
    let exists: bool = c
        .query_one("SELECT to_regclass('deskd.volume') IS NOT NULL", &[])
        .unwrap()
        .get(0);
    if !exists {
        return String::new();
    }
    let mut text = String::new();
    for row in c
        .query(
            "SELECT (SELECT version FROM deskd.format), v.vid, v.name, v.identity, v.last_id,
                    v.created, v.change_seq,
                    (SELECT count(*) FROM deskd.objects o WHERE o.vid = v.vid),
                    (SELECT count(*) FROM deskd.comments o WHERE o.vid = v.vid),
                    (SELECT count(*) FROM deskd.appl o WHERE o.vid = v.vid),
                    (SELECT count(*) FROM deskd.icons o WHERE o.vid = v.vid)
             FROM deskd.volume v ORDER BY v.vid",
            &[],
        )
        .unwrap()
    {
        text.push_str(&format!(
            "{:?} {} {} {} {} {} {} {} {} {} {}\n",
            row.get::<_, i32>(0),
            row.get::<_, i64>(1),
            row.get::<_, String>(2),
            row.get::<_, i64>(3),
            row.get::<_, i64>(4),
            row.get::<_, i64>(5),
            row.get::<_, i64>(6),
            row.get::<_, i64>(7),
            row.get::<_, i64>(8),
            row.get::<_, i64>(9),
            row.get::<_, i64>(10),
        ));
    }
    text
}

fn refused(out: &Output, says: &str) {
    assert_eq!(out.status.code(), Some(2), "{}{}", stdout(out), stderr(out));
    assert!(
        stderr(out).contains(says),
        "expected {says:?} in: {}",
        stderr(out)
    );
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "deskd migrate: {}{}",
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn sqlite_to_postgresql_and_back_keeps_every_id_and_record() {
    let Some((cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let mut env = Env::new(&["vol"]);
    let root = std::fs::canonicalize(env.path("vol")).unwrap();
    let desktop = root.join(".Desktop");
    let began = Instant::now();
    make_volume(&root, DIRS, PER_DIR);
    add_records(&desktop);
    eprintln!("volume made in {:.1}s", began.elapsed().as_secs_f64());
    let before = dump(&desktop);
    // The records written offline are not on disk (no resource files): the scan's differences
    // before the migration are what the desktop back from PostgreSQL must show too.
    let scan_before = scan(&root);
    let objects = u64::from(1 + DIRS + DIRS * PER_DIR - 2);
    assert_eq!(
        sqlite3(&desktop, "SELECT count(*) FROM objects"),
        objects.to_string()
    );

    // Into PostgreSQL.
    let began = Instant::now();
    let out = ok(&migrate(&[
        path_str(&root),
        "--to",
        &url,
        "--password-file",
        path_str(&pw),
    ]));
    eprintln!("to PostgreSQL in {:.1}s", began.elapsed().as_secs_f64());
    assert!(
        out.contains(&format!(
            "{objects} objects, 3 comments, 2 APPL records, 2 icon records"
        )),
        "{out}"
    );
    let state = database_state(&cluster, "desk");
    assert!(
        state.contains(&format!(" {objects} 3 2 2\n")),
        "the database holds every record: {state}"
    );
    let counter = sqlite3(&desktop, "SELECT value FROM meta WHERE key = 'last_id'");
    let identity = sqlite3(&desktop, "SELECT value FROM meta WHERE key = 'volume_uuid'");
    assert!(
        state.contains(&format!(" {} {identity} {counter} ", path_str(&root))),
        "the volume's name (its path), identity and counter: {state}"
    );
    assert_eq!(
        std::fs::read_dir(&root)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() == ".Desktop.before-migrate")
            .count(),
        0
    );

    // Back to SQLite: a desktop there is refused without --replace, and left alone.
    let back = [
        path_str(&root),
        "--from",
        &url,
        "--to",
        "sqlite",
        "--password-file",
        path_str(&pw),
    ];
    refused(&migrate(&back), "give --replace");
    assert_eq!(dump(&desktop), before);
    let began = Instant::now();
    let out = ok(&migrate(&[&back[..], &["--replace"]].concat()));
    eprintln!("back to SQLite in {:.1}s", began.elapsed().as_secs_f64());
    assert!(out.contains(".Desktop.before-migrate"), "{out}");
    let kept = root.join(".Desktop.before-migrate");
    assert_eq!(dump(&kept), before, "the replaced desktop is kept whole");
    assert!(
        left_database(&desktop).is_some(),
        "no note in the desktop that it left the database"
    );
    let after = dump(&desktop);
    if after != before {
        let (a, b): (Vec<_>, Vec<_>) = (before.lines().collect(), after.lines().collect());
        let first = a.iter().zip(&b).position(|(x, y)| x != y);
        panic!(
            "the desktop back from PostgreSQL differs: first at line {first:?}: {:?} / {:?} ({} / {} lines)",
            first.map(|i| a[i]),
            first.map(|i| b[i]),
            a.len(),
            b.len()
        );
    }
    // The kept desktop is deskd's own file (hidden, no object of the volume), and the new
    // desktop agrees with the disk as the old one did.
    assert_eq!(scan(&root), scan_before);

    // Into a volume without a desktop, and served at once with the same IDs.
    std::fs::remove_file(&desktop).unwrap();
    std::fs::remove_file(&kept).unwrap();
    ok(&migrate(&back));
    assert_eq!(dump(&desktop), before);
    env.serve(&["vol"]);
    let file = root
        .join("dir0042")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let name = file.file_name().unwrap().to_str().unwrap().to_owned();
    let recorded = sqlite3(
        &desktop,
        &format!(
            "SELECT o.id FROM objects o JOIN objects d ON o.parent = d.id
             WHERE d.name = CAST('dir0042' AS BLOB) AND o.name = CAST('{name}' AS BLOB)"
        ),
    );
    assert_eq!(env.id_of(&file).to_string(), recorded);
    env.term();
}

#[test]
fn refusals_change_nothing() {
    let Some((mut cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let mut env = Env::new(&["vol", "other"]);
    let root = std::fs::canonicalize(env.path("vol")).unwrap();
    let other = std::fs::canonicalize(env.path("other")).unwrap();
    make_volume(&root, 3, 20);
    make_volume(&other, 2, 10);
    let (desktop, other_desktop) = (root.join(".Desktop"), other.join(".Desktop"));
    let to_pg = |volume: &Path, extra: &[&str]| {
        let mut args = vec![path_str(volume), "--to", &url];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--password-file", path_str(&pw)]);
        migrate(&args)
    };

    // A served volume: refused before the database is touched.
    env.serve(&["vol"]);
    refused(&to_pg(&root, &[]), "open by a running deskd serve");
    env.term();
    assert_eq!(database_state(&cluster, "desk"), "", "no schema made");

    // A failure half-way (the objects sent, then a comment of no object, which SQLite's
    // check does not catch and PostgreSQL's foreign key refuses): all of it rolled back, the
    // schema made in the same transaction included.
    sqlite3(
        &other_desktop,
        "INSERT INTO comments (id, text) VALUES (999999, x'6f727068616e')",
    );
    refused(&to_pg(&other, &[]), "violates foreign key constraint");
    assert_eq!(database_state(&cluster, "desk"), "", "nothing half-copied");
    sqlite3(&other_desktop, "DELETE FROM comments WHERE id = 999999");

    // A wrong password, and a password on the command line (never echoed).
    let wrong = cluster.password_file("wrong", "not-the-password");
    refused(
        &migrate(&[
            path_str(&root),
            "--to",
            &url,
            "--password-file",
            path_str(&wrong),
        ]),
        "password authentication failed",
    );
    let with_password = url.replace("deskd_test@", "deskd_test:hunter2@");
    let out = migrate(&[path_str(&root), "--to", &with_password]);
    refused(&out, "holds a password");
    assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));
    // A password file others may read.
    let loose = cluster.password_file("loose", cluster.password());
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    refused(
        &migrate(&[
            path_str(&root),
            "--to",
            &url,
            "--password-file",
            path_str(&loose),
        ]),
        "chmod 600",
    );
    assert_eq!(database_state(&cluster, "desk"), "", "no schema made");

    // Nobody may not migrate root's volume.
    let nobody = env
        .as_nobody_with(
            DESKD,
            &[
                b"migrate",
                root.as_os_str().as_encoded_bytes(),
                b"--to",
                url.as_bytes(),
                b"--password-env",
                b"PW",
            ],
            &[("PW", cluster.password().to_owned())],
        )
        .expect("the tests run as root");
    assert_eq!(nobody.status.code(), Some(2), "{}", stderr(&nobody));
    assert_eq!(database_state(&cluster, "desk"), "", "no schema made");

    // The volume goes in once; a second time it is there already.
    ok(&to_pg(&root, &[]));
    let state = database_state(&cluster, "desk");
    // The root is marked: a second migration is refused before the database is asked.
    refused(&to_pg(&root, &[]), "desktop is in postgresql");
    // Without the mark (lost, say), the database refuses it as well.
    deskd_volume::mark_desktop_in_postgresql(&root, false).unwrap();
    refused(&to_pg(&root, &[]), "holds volume");
    // Another volume under this one's name.
    refused(
        &to_pg(&other, &["--name", path_str(&root)]),
        "another volume",
    );
    // This volume's identity under another name.
    refused(&to_pg(&root, &["--name", "elsewhere"]), "another volume");
    assert_eq!(database_state(&cluster, "desk"), state);

    // Back into another volume's desktop: its identity is not the database volume's.
    let other_before = dump(&other_desktop);
    refused(
        &migrate(&[
            path_str(&other),
            "--from",
            &url,
            "--to",
            "sqlite",
            "--replace",
            "--name",
            path_str(&root),
            "--password-file",
            path_str(&pw),
        ]),
        "another volume",
    );
    assert_eq!(dump(&other_desktop), other_before);
    assert!(!other.join(".Desktop.before-migrate").exists());
    assert!(!other.join(".Desktop-rebuild").exists());
    // A volume the database does not hold.
    let empty = env.path("empty");
    std::fs::create_dir(&empty).unwrap();
    refused(
        &migrate(&[
            path_str(&empty),
            "--from",
            &url,
            "--to",
            "sqlite",
            "--password-file",
            path_str(&pw),
        ]),
        "no deskd volume named",
    );
    assert!(
        std::fs::read_dir(&empty).unwrap().next().is_none(),
        "no desktop left behind"
    );

    // A database of a newer format: refused both ways.
    cluster
        .admin("desk")
        .batch_execute("UPDATE deskd.format SET version = 99")
        .unwrap();
    let state = database_state(&cluster, "desk");
    refused(&to_pg(&other, &[]), "upgrade deskd");
    let desktop_before = dump(&desktop);
    refused(
        &migrate(&[
            path_str(&root),
            "--from",
            &url,
            "--to",
            "sqlite",
            "--replace",
            "--password-file",
            path_str(&pw),
        ]),
        "upgrade deskd",
    );
    assert_eq!(database_state(&cluster, "desk"), state);
    assert_eq!(dump(&desktop), desktop_before);

    // A database whose `deskd` schema is another application's: left alone.
    let foreign = cluster.create_database("foreign");
    cluster
        .admin("foreign")
        .batch_execute("CREATE SCHEMA deskd; CREATE TABLE deskd.theirs (x int)")
        .unwrap();
    refused(
        &migrate(&[
            path_str(&other),
            "--to",
            &foreign,
            "--password-file",
            path_str(&pw),
        ]),
        "that deskd did not create",
    );
    let tables: i64 = cluster
        .admin("foreign")
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'deskd'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 1, "only their table");

    // Options that do not go together.
    refused(
        &migrate(&[path_str(&root), "--to", "sqlite"]),
        "needs --from",
    );
    refused(
        &migrate(&[path_str(&root), "--to", &url, "--replace"]),
        "--replace is for --to sqlite",
    );
    refused(
        &migrate(&[path_str(&root), "--to", &url, "--from", &url]),
        "--from is for --to sqlite",
    );

    // A database that cannot be reached.
    cluster.stop();
    refused(&to_pg(&other, &[]), "cannot connect to PostgreSQL");
    assert_eq!(dump(&other_desktop), other_before);
}
