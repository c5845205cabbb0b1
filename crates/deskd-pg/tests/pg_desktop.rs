//! The PostgreSQL desktop against a real PostgreSQL: a throw-away cluster per test
//! (deskd_pg::test_cluster), reached over TCP with a password as a server would.

use std::collections::HashSet;

use deskd_db::{DbError, Durability, Kind, NewObject};
use deskd_pg::test_cluster::TestCluster;
use deskd_pg::{connect, ConnectOptions, PasswordSource, PgDesktop, PgError, VolumeKey};

fn options(cluster: &TestCluster, db: &str) -> ConnectOptions {
    let file = cluster.dir().join(format!("pw-{db}"));
    if !file.exists() {
        // Threads may get here at once: each writes its own and renames it into place, so no
        // one reads a half-written file or fails on another's.
        let own = format!("pw-{db}-{:?}", std::thread::current().id());
        let written = cluster.password_file(&own, cluster.password());
        std::fs::rename(written, &file).unwrap();
    }
    ConnectOptions {
        target: cluster.url(db),
        password: PasswordSource::File(file),
    }
}

fn key(name: &str, identity: u64) -> VolumeKey {
    VolumeKey {
        name: name.to_owned(),
        identity,
    }
}

fn open(cluster: &TestCluster, db: &str, key: &VolumeKey) -> Result<(PgDesktop, bool), PgError> {
    PgDesktop::open(connect(&options(cluster, db))?, key, Durability::Normal)
}

fn new(parent: u32, name: &str, kind: Kind) -> NewObject {
    NewObject {
        parent,
        name: name.as_bytes().to_vec(),
        kind,
        dev: 1,
        ino: 0,
        type_code: *b"TEXT",
        creator: *b"ttxt",
        flags: 0,
        ctime: 0,
        hint: None,
    }
}

#[test]
fn objects_renames_deletes_and_comments() {
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    cluster.create_database("desk");
    let vol = key("projects", 0x1234);
    let (mut desk, created) = open(&cluster, "desk", &vol).unwrap();
    assert!(created);
    let root = desk.get(deskd_db::ROOT_ID).unwrap();
    assert_eq!(
        (root.parent, root.kind),
        (deskd_db::ROOT_PARENT_ID, Kind::Dir)
    );

    let mut b = desk.batch().unwrap();
    let (docs, added) = b.add(&new(2, "Docs", Kind::Dir)).unwrap();
    assert!(added);
    assert_eq!(docs.id, deskd_db::FIRST_ID, "the first ID is 17");
    let (note, _) = b.add(&new(docs.id, "note.txt", Kind::File)).unwrap();
    let (again, added) = b.add(&new(docs.id, "note.txt", Kind::File)).unwrap();
    assert_eq!((again.id, added), (note.id, false), "lookup-or-add");
    let (sub, _) = b.add(&new(docs.id, "Sub", Kind::Dir)).unwrap();
    assert!(matches!(
        b.add(&new(note.id, "x", Kind::File)),
        Err(PgError::Desktop(DbError::NotADirectory(_)))
    ));
    assert!(matches!(
        b.add(&new(2, "a/b", Kind::File)),
        Err(PgError::Desktop(DbError::InvalidName(..)))
    ));
    b.comment_set(note.id, b"first").unwrap();
    b.comment_set(note.id, b"second").unwrap();
    let seq = b.commit().unwrap().expect("the batch changed something");

    assert_eq!(
        desk.comment(note.id).unwrap().as_deref(),
        Some(&b"second"[..])
    );
    let names: Vec<Vec<u8>> = desk
        .children(docs.id)
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(names, [b"Sub".to_vec(), b"note.txt".to_vec()]);
    assert_eq!(
        desk.lookup(2, b"Docs").unwrap().map(|o| o.id),
        Some(docs.id)
    );
    let changed: Vec<u32> = desk
        .changes_since(seq - 1)
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(changed, [docs.id, note.id, sub.id]);

    let mut b = desk.batch().unwrap();
    assert!(matches!(
        b.rename(docs.id, sub.id, b"Docs", false),
        Err(PgError::Desktop(DbError::IntoItself(_)))
    ));
    b.add(&new(2, "taken", Kind::File)).unwrap();
    assert!(matches!(
        b.rename(note.id, 2, b"taken", false),
        Err(PgError::Desktop(DbError::Exists { .. }))
    ));
    assert!(matches!(
        b.rename(2, 2, b"x", false),
        Err(PgError::Desktop(DbError::Root(_)))
    ));
    // A failed step undoes only itself.
    let failed = b.step(|b| {
        b.add(&new(2, "kept-out", Kind::File))?;
        b.delete(docs.id, false)
    });
    assert!(matches!(
        failed,
        Err(PgError::Desktop(DbError::NotEmpty(_)))
    ));
    assert!(b.lookup(2, b"kept-out").unwrap().is_none());
    let removed = b.rename(note.id, 2, b"taken", true).unwrap();
    assert_eq!(removed.len(), 1, "the replaced object");
    b.commit().unwrap();
    let moved = desk.get(note.id).unwrap();
    assert_eq!((moved.parent, moved.name.as_slice()), (2, &b"taken"[..]));
    assert_eq!(
        desk.comment(note.id).unwrap().as_deref(),
        Some(&b"second"[..])
    );

    let mut b = desk.batch().unwrap();
    let mut gone = b.delete(docs.id, true).unwrap();
    gone.sort();
    assert_eq!(gone, [docs.id, sub.id]);
    b.delete(note.id, false).unwrap();
    let (fresh, _) = b.add(&new(2, "Docs", Kind::Dir)).unwrap();
    b.commit().unwrap();
    assert!(
        fresh.id > removed[0],
        "a deleted ID is never handed out again"
    );
    assert!(matches!(
        desk.get(note.id),
        Err(PgError::Desktop(DbError::NoSuchId(_)))
    ));
    // The comment went with its object.
    assert_eq!(desk.comment(note.id).unwrap(), None);
    let last = desk.last_id().unwrap();
    drop(desk);

    let (mut desk, created) = open(&cluster, "desk", &vol).unwrap();
    assert!(!created, "the second open finds the volume");
    assert_eq!(desk.last_id().unwrap(), last);
    assert_eq!(desk.lookup(2, b"Docs").unwrap().unwrap().id, fresh.id);
}

#[test]
fn two_connections_allocate_ids_without_duplicates() {
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    cluster.create_database("desk");
    let vol = key("shared", 7);
    // Both "servers" open at once: the schema and the volume are created once.
    let opened: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| open(&cluster, "desk", &vol).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        opened.iter().filter(|(_, created)| *created).count(),
        1,
        "one of them created the volume"
    );
    let ids: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = opened
            .into_iter()
            .enumerate()
            .map(|(server, (mut desk, _))| {
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for batch in 0..25 {
                        let mut b = desk.batch().unwrap();
                        for n in 0..8 {
                            let name = format!("s{server}-b{batch}-{n}");
                            mine.push(b.add(&new(2, &name, Kind::File)).unwrap().0.id);
                        }
                        mine.push(b.allocate_id().unwrap());
                        b.commit().unwrap();
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<u32> = ids.concat();
    let unique: HashSet<u32> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "no ID was handed out twice");
    assert_eq!(all.len(), 2 * 25 * 9);
    assert!(all.iter().all(|&id| !deskd_db::ids::is_forbidden(id)));
    let (mut desk, _) = open(&cluster, "desk", &vol).unwrap();
    assert_eq!(desk.last_id().unwrap(), *all.iter().max().unwrap());
    assert_eq!(desk.children(2).unwrap().len(), 2 * 25 * 8);
    assert_eq!(desk.change_seq().unwrap(), 50, "one batch number a batch");
}

#[test]
fn the_id_rules_hold() {
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    cluster.create_database("desk");
    let (mut desk, _) = open(&cluster, "desk", &key("v", 1)).unwrap();
    let mut admin = cluster.admin("desk");
    let set_counter = |admin: &mut postgres::Client, v: u32| {
        admin
            .execute("UPDATE deskd.volume SET last_id = $1", &[&i64::from(v)])
            .unwrap();
    };

    set_counter(&mut admin, (1 << 24) - 1);
    let mut b = desk.batch().unwrap();
    assert_eq!(
        b.allocate_id().unwrap(),
        (1 << 24) + 1,
        "k * 2^24 is skipped"
    );
    // A forbidden hint is ignored; a free one is used and raises the counter.
    let mut hinted = new(2, "hinted", Kind::File);
    hinted.hint = Some(3 << 24);
    assert_eq!(b.add(&hinted).unwrap().0.id, (1 << 24) + 2);
    hinted.name = b"far".to_vec();
    hinted.hint = Some(40_000_000);
    assert_eq!(b.add(&hinted).unwrap().0.id, 40_000_000);
    // A hint that is taken is not used.
    hinted.name = b"taken".to_vec();
    assert_eq!(b.add(&hinted).unwrap().0.id, 40_000_001);
    b.commit().unwrap();
    assert_eq!(desk.last_id().unwrap(), 40_000_001);

    set_counter(&mut admin, deskd_db::LAST_USABLE_ID - 1);
    let mut b = desk.batch().unwrap();
    assert_eq!(b.allocate_id().unwrap(), deskd_db::LAST_USABLE_ID);
    assert!(matches!(
        b.allocate_id(),
        Err(PgError::Desktop(DbError::IdSpaceExhausted))
    ));
    b.commit().unwrap();
    assert_eq!(desk.last_id().unwrap(), deskd_db::LAST_USABLE_ID);
}

#[test]
fn a_newer_format_is_refused_and_nothing_changes() {
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    cluster.create_database("desk");
    drop(open(&cluster, "desk", &key("v", 1)).unwrap());
    let mut admin = cluster.admin("desk");
    admin
        .execute("UPDATE deskd.format SET version = 99", &[])
        .unwrap();
    let e = open(&cluster, "desk", &key("other", 2)).err().unwrap();
    assert!(matches!(e, PgError::FormatTooNew { found: 99, .. }), "{e}");
    assert!(e.to_string().contains("upgrade deskd"), "{e}");
    let volumes: i64 = admin
        .query_one("SELECT count(*) FROM deskd.volume", &[])
        .unwrap()
        .get(0);
    assert_eq!(volumes, 1, "no volume was added");

    // A `deskd` schema that deskd did not make is left alone.
    cluster.create_database("foreign");
    cluster
        .admin("foreign")
        .batch_execute("CREATE SCHEMA deskd; CREATE TABLE deskd.objects (x int)")
        .unwrap();
    let e = open(&cluster, "foreign", &key("v", 1)).err().unwrap();
    assert!(matches!(e, PgError::NotADesktop), "{e}");
}

#[test]
fn another_volume_is_refused() {
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    cluster.create_database("desk");
    let (mut a, _) = open(&cluster, "desk", &key("projects", 0xaaaa)).unwrap();
    let mut b = a.batch().unwrap();
    b.add(&new(2, "in-a", Kind::File)).unwrap();
    b.commit().unwrap();

    // One database, many volumes: another name and identity is a volume of its own.
    let (mut other, created) = open(&cluster, "desk", &key("archive", 0xbbbb)).unwrap();
    assert!(created);
    assert!(other.lookup(2, b"in-a").unwrap().is_none());
    let mut b = other.batch().unwrap();
    assert_eq!(b.add(&new(2, "in-b", Kind::File)).unwrap().0.id, 17);
    b.commit().unwrap();

    let e = open(&cluster, "desk", &key("projects", 0xcccc))
        .err()
        .unwrap();
    assert!(matches!(e, PgError::OtherVolume { .. }), "{e}");
    assert!(e.to_string().contains("000000000000aaaa"), "{e}");
    let e = open(&cluster, "desk", &key("renamed", 0xaaaa))
        .err()
        .unwrap();
    assert!(e.to_string().contains("\"projects\""), "{e}");
    let volumes: i64 = cluster
        .admin("desk")
        .query_one("SELECT count(*) FROM deskd.volume", &[])
        .unwrap()
        .get(0);
    assert_eq!(volumes, 2, "nothing was added");
}

#[test]
fn bad_credentials_and_targets_are_refused_clearly() {
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    cluster.create_database("desk");
    let wrong = cluster.password_file("wrong", "not-the-password");
    let e = connect(&ConnectOptions {
        target: cluster.url("desk"),
        password: PasswordSource::File(wrong),
    })
    .err()
    .unwrap();
    let text = e.to_string();
    assert!(matches!(e, PgError::AuthFailed { .. }), "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(text.contains("deskd_test"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");

    // No password configured where the server asks for one: a configuration to mend, not a
    // database to wait for (it read as unreachable, retried for ever: newcomer, stop 43).
    let e = connect(&ConnectOptions {
        target: cluster.url("desk"),
        password: PasswordSource::None,
    })
    .err()
    .unwrap();
    assert!(matches!(e, PgError::PasswordMissing { .. }), "{e}");
    assert!(!e.is_unavailable(), "{e}");
    assert!(e.to_string().contains("backend_password_file"), "{e}");

    let e = connect(&ConnectOptions {
        target: cluster.url("desk"),
        password: PasswordSource::Env("DESKD_PG_TEST_UNSET_VARIABLE".to_owned()),
    })
    .err()
    .unwrap();
    assert!(matches!(e, PgError::PasswordEnvMissing(_)), "{e}");

    let e = connect(&ConnectOptions {
        target: format!(
            "postgresql://deskd_test:{}@127.0.0.1:{}/desk",
            cluster.password(),
            cluster.port()
        ),
        password: PasswordSource::None,
    })
    .err()
    .unwrap();
    assert!(matches!(e, PgError::PasswordInTarget(_)), "{e}");
    assert!(!e.to_string().contains(cluster.password()), "{e}");

    // No server on that port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let e = connect(&ConnectOptions {
        target: format!("postgresql://deskd_test@127.0.0.1:{port}/desk"),
        password: PasswordSource::None,
    })
    .err()
    .unwrap();
    assert!(matches!(e, PgError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("refused"), "{e}");

    // And the right password works.
    connect(&options(&cluster, "desk")).unwrap();
    assert_ne!(cluster.server_uid(), 0, "PostgreSQL never runs as root");
}

#[test]
fn another_server_follows_the_change_log() {
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    cluster.create_database("desk");
    let vol = key("shared", 9);
    let (mut a, _) = open(&cluster, "desk", &vol).unwrap();
    let (mut b, _) = open(&cluster, "desk", &vol).unwrap();
    let mut listener =
        deskd_pg::ChangeListener::start(connect(&options(&cluster, "desk")).unwrap()).unwrap();
    let seen = b.change_seq().unwrap();

    // A rolled-back batch announces nothing and leaves nothing in the log.
    let mut batch = a.batch().unwrap();
    batch.add(&new(2, "never", Kind::File)).unwrap();
    drop(batch);
    // A forged notice is no change: followers read the log.
    cluster
        .admin("desk")
        .batch_execute("NOTIFY deskd_changes, 'not a notice'")
        .unwrap();
    let mut batch = a.batch().unwrap();
    let (doc, _) = batch.add(&new(2, "draft", Kind::File)).unwrap();
    batch.rename(doc.id, 2, b"final", false).unwrap();
    let seq = batch.commit().unwrap().unwrap();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut notices = Vec::new();
    while notices.is_empty() && std::time::Instant::now() < deadline {
        notices = listener.wait(std::time::Duration::from_secs(5)).unwrap();
    }
    assert_eq!(
        notices,
        [deskd_pg::Notice {
            vid: b.volume_key_in_db(),
            seq
        }]
    );
    let changes = b.changes_since(seen).unwrap();
    assert_eq!(
        changes,
        [deskd_pg::Change { seq, id: doc.id }],
        "one row an ID, the rolled-back batch's not among them"
    );
    assert_eq!(b.get(doc.id).unwrap().name, b"final");
    assert!(b.lookup(2, b"never").unwrap().is_none());
}

#[test]
fn a_lost_database_is_unavailable_and_nothing_committed_is_lost() {
    let Some(mut cluster) = TestCluster::start_or_skip() else {
        return;
    };
    cluster.create_database("desk");
    let vol = key("v", 5);
    let (mut desk, _) = open(&cluster, "desk", &vol).unwrap();
    let mut b = desk.batch().unwrap();
    let (kept, _) = b.add(&new(2, "kept", Kind::File)).unwrap();
    b.commit().unwrap();
    let mut b = desk.batch().unwrap();
    b.add(&new(2, "in-flight", Kind::File)).unwrap();

    cluster.stop();
    let e = b.commit().err().unwrap();
    assert!(e.is_unavailable(), "a commit cut off: {e}");
    let e = desk.batch().err().unwrap();
    assert!(e.is_unavailable(), "a closed session: {e}");
    let e = open(&cluster, "desk", &vol).err().unwrap();
    assert!(
        matches!(e, PgError::Unreachable { .. }) && e.is_unavailable(),
        "{e}"
    );
    // Refusals are not outages.
    assert!(!PgError::Desktop(DbError::NoSuchId(5)).is_unavailable());
    assert!(!PgError::NotADesktop.is_unavailable());

    cluster.restart();
    let (mut desk, created) = open(&cluster, "desk", &vol).unwrap();
    assert!(!created);
    assert_eq!(
        desk.lookup(2, b"kept").unwrap().map(|o| o.id),
        Some(kept.id)
    );
    assert!(
        desk.lookup(2, b"in-flight").unwrap().is_none(),
        "the cut-off batch left nothing"
    );
    let mut b = desk.batch().unwrap();
    assert!(b.add(&new(2, "after", Kind::File)).unwrap().0.id > kept.id);
    b.commit().unwrap();
}

/// The test cluster trusts its unix socket: a local user who reached it would be the
/// database's superuser (and could run programs as the server's user). Only the server's
/// user may enter the socket's directory, and TCP asks for the password.
#[test]
fn nobody_cannot_use_the_test_clusters_trusted_socket() {
    use std::os::unix::process::CommandExt;
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    if !nix::unistd::Uid::effective().is_root() {
        // Not root: the cluster runs as the test's own user, and no other user is at hand.
        eprintln!("skipped: needs root to try as nobody");
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the tests as root"
        );
        return;
    }
    let psql = |args: &[&str]| {
        std::process::Command::new(cluster.bin_dir().join("psql"))
            .args(args)
            .args(["-U", deskd_pg::test_cluster::SUPERUSER, "-d", "postgres"])
            .args(["-w", "-c", "SELECT 1"])
            .env_remove("PGPASSWORD")
            .env("HOME", "/nonexistent")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let port = cluster.port().to_string();
    let socket = cluster.socket_dir();
    let by_socket = psql(&["-h", socket.to_str().unwrap(), "-p", &port]);
    assert!(
        !by_socket.status.success(),
        "nobody reached the trusted socket"
    );
    let by_tcp = psql(&["-h", "127.0.0.1", "-p", &port]);
    assert!(!by_tcp.status.success(), "nobody logged in over TCP");
    assert!(
        String::from_utf8_lossy(&by_tcp.stderr).contains("password"),
        "TCP asks for a password: {}",
        String::from_utf8_lossy(&by_tcp.stderr)
    );
}

#[test]
fn paths_mac_info_appl_and_icon_records() {
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    cluster.create_database("desk");
    let (mut desk, _) = open(&cluster, "desk", &key("v", 3)).unwrap();
    let mut b = desk.batch().unwrap();
    let (apps, _) = b.add(&new(2, "Apps", Kind::Dir)).unwrap();
    let (sub, _) = b.add(&new(apps.id, "Tools", Kind::Dir)).unwrap();
    let mut app = new(sub.id, "TeachText", Kind::File);
    app.type_code = *b"APPL";
    let (app, _) = b.add(&app).unwrap();
    let (doc, _) = b.add(&new(2, "readme", Kind::File)).unwrap();
    b.set_devino(doc.id, 9, 99, 1234).unwrap();
    assert!(matches!(
        b.set_devino(4_000_000, 1, 1, 1),
        Err(PgError::Desktop(DbError::NoSuchId(4_000_000)))
    ));
    b.icon_add(&deskd_db::IconRecord {
        creator: *b"ttxt",
        type_code: *b"TEXT",
        itype: 1,
        tag: 5,
        bitmap: vec![1, 2, 3],
    })
    .unwrap();
    b.icon_add(&deskd_db::IconRecord {
        creator: *b"ttxt",
        type_code: *b"TEXT",
        itype: 1,
        tag: 6,
        bitmap: vec![4],
    })
    .unwrap();
    b.commit().unwrap();

    assert_eq!(
        desk.path_of(app.id).unwrap(),
        [b"Apps".to_vec(), b"Tools".to_vec(), b"TeachText".to_vec()]
    );
    assert!(desk.path_of(deskd_db::ROOT_ID).unwrap().is_empty());
    assert!(matches!(
        desk.path_of(4_000_000),
        Err(PgError::Desktop(DbError::NoSuchId(4_000_000)))
    ));
    let d = desk.get(doc.id).unwrap();
    assert_eq!((d.dev, d.ino, d.ctime), (9, 99, 1234));
    // An APPL file registers itself as its creator's application.
    let appl = desk.appl_for(*b"ttxt").unwrap();
    assert_eq!(appl.iter().map(|a| a.app_id).collect::<Vec<_>>(), [app.id]);
    let icon = desk.icon(*b"ttxt", *b"TEXT", 1).unwrap().unwrap();
    assert_eq!(
        (icon.tag, icon.bitmap),
        (6, vec![4]),
        "the second replaced the first"
    );
    assert!(desk.icon(*b"ttxt", *b"TEXT", 2).unwrap().is_none());

    let mut b = desk.batch().unwrap();
    let changed = b
        .set_info(
            app.id,
            &deskd_db::InfoUpdate {
                type_code: Some(*b"TEXT"),
                flags: Some(0x100),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((changed.type_code, changed.flags), (*b"TEXT", 0x100));
    b.appl_add(&deskd_db::ApplRecord {
        creator: *b"MSWD",
        app_id: doc.id,
        tag: 7,
    })
    .unwrap();
    b.commit().unwrap();
    assert!(
        desk.appl_for(*b"ttxt").unwrap().is_empty(),
        "no longer an application"
    );
    assert_eq!(desk.appl_for(*b"MSWD").unwrap()[0].tag, 7);
    let mut b = desk.batch().unwrap();
    b.delete(doc.id, false).unwrap();
    b.commit().unwrap();
    assert!(
        desk.appl_for(*b"MSWD").unwrap().is_empty(),
        "the record went with its object"
    );
    // A parent loop (the database damaged by hand) is reported, not followed forever.
    let mut admin = cluster.admin("desk");
    admin
        .execute(
            "UPDATE deskd.objects SET parent = $1 WHERE id = $2",
            &[&i64::from(sub.id), &i64::from(apps.id)],
        )
        .unwrap();
    assert!(matches!(
        desk.path_of(app.id),
        Err(PgError::Desktop(DbError::Corrupt(_)))
    ));
    assert!(matches!(
        deskd_db::Read::get_with_path(&desk, app.id),
        Err(DbError::Corrupt(_))
    ));
}

#[test]
fn rows_keep_their_ids_and_the_name_keys_stream_out() {
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    cluster.create_database("desk");
    let (mut desk, _) = open(&cluster, "desk", &key("migrated", 11)).unwrap();
    let object = |id: u32, parent: u32, name: &str, kind: Kind| deskd_db::Object {
        id,
        parent,
        name: name.as_bytes().to_vec(),
        kind,
        dev: 0,
        ino: 0,
        type_code: *b"TEXT",
        creator: *b"ttxt",
        flags: 0,
        ctime: 0,
    };
    let mut b = desk.batch().unwrap();
    b.insert_with_id(&object(500, 2, "Dir", Kind::Dir)).unwrap();
    b.insert_with_id(&object(40, 500, "Cafe\u{301}.TXT", Kind::File))
        .unwrap();
    for refused in [
        object(40, 2, "same id", Kind::File),
        object(1 << 24, 2, "skipped id", Kind::File),
        object(600, 2, "Dir", Kind::File),
        object(601, 40, "under a file", Kind::File),
    ] {
        assert!(
            b.step(|b| b.insert_with_id(&refused)).is_err(),
            "{refused:?}"
        );
    }
    // The old desktop's counter came with it: IDs deleted there stay unused here.
    b.raise_counter(900);
    let (fresh, _) = b.add(&new(2, "new", Kind::File)).unwrap();
    b.commit().unwrap();
    assert_eq!(fresh.id, 901);
    assert_eq!(desk.last_id().unwrap(), 901);

    let mut keys = Vec::new();
    desk.for_each_key(&mut |id, key| keys.push((id, key.to_owned())))
        .unwrap();
    assert_eq!(
        keys,
        [
            (2, String::new()),
            (40, "caf\u{e9}.txt".to_owned()),
            (500, "dir".to_owned()),
            (901, "new".to_owned()),
        ]
    );
    let mut b = desk.batch().unwrap();
    b.rename(40, 2, b"Renamed", false).unwrap();
    b.commit().unwrap();
    let mut renamed = None;
    desk.for_each_key(&mut |id, key| {
        if id == 40 {
            renamed = Some(key.to_owned());
        }
    })
    .unwrap();
    assert_eq!(renamed.as_deref(), Some("renamed"));
}

#[test]
fn a_frozen_snapshot_is_what_pg_dump_reads_while_writes_go_on() {
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    cluster.create_database("desk");
    let (mut desk, _) = open(&cluster, "desk", &key("v", 13)).unwrap();
    let mut b = desk.batch().unwrap();
    b.add(&new(2, "before", Kind::File)).unwrap();
    b.commit().unwrap();

    let frozen = deskd_pg::Frozen::start(connect(&options(&cluster, "desk")).unwrap()).unwrap();
    let mut b = desk.batch().unwrap();
    b.add(&new(2, "after", Kind::File)).unwrap();
    b.commit().unwrap();

    let dump = |snapshot: &str| {
        std::process::Command::new(cluster.bin_dir().join("pg_dump"))
            .args(["-h", cluster.socket_dir().to_str().unwrap()])
            .args(["-p", &cluster.port().to_string()])
            .args(["-U", deskd_pg::test_cluster::SUPERUSER, "-d", "desk"])
            .args(["--data-only", "-n", "deskd", "-t", "deskd.objects"])
            .arg(format!("--snapshot={snapshot}"))
            .output()
            .unwrap()
    };
    let hex = |name: &str| name.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let out = dump(frozen.snapshot_name());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&hex("before")), "{text}");
    assert!(
        !text.contains(&hex("after")),
        "a write after the freeze: {text}"
    );

    let name = frozen.snapshot_name().to_owned();
    frozen.thaw().unwrap();
    let out = dump(&name);
    assert!(!out.status.success(), "a thawed snapshot is gone");
}

/// What docs/ARCHITECTURE.md promises a server's role needs once the schema exists: USAGE on
/// the schema and its sequence, and SELECT, INSERT, UPDATE, DELETE on its tables. A role
/// without them is refused with PostgreSQL's "permission denied", not taken for an outage.
#[test]
fn a_server_role_needs_only_the_documented_grants() {
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    cluster.create_database("desk");
    drop(open(&cluster, "desk", &key("first", 1)).unwrap());
    let mut admin = cluster.admin("desk");
    admin
        .batch_execute(
            "CREATE ROLE deskd_srv LOGIN PASSWORD 'srv-secret';
             CREATE ROLE outsider LOGIN PASSWORD 'out-secret';
             REVOKE CREATE ON SCHEMA public FROM PUBLIC;
             GRANT USAGE ON SCHEMA deskd TO deskd_srv;
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA deskd TO deskd_srv;
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA deskd TO deskd_srv;",
        )
        .unwrap();
    let as_role = |user: &str, password: &str| {
        let file = cluster.password_file(&format!("pw-{user}"), password);
        let client = connect(&ConnectOptions {
            target: format!("postgresql://{user}@127.0.0.1:{}/desk", cluster.port()),
            password: PasswordSource::File(file),
        })
        .unwrap();
        PgDesktop::open(client, &key("second", 2), Durability::Full)
    };
    let (mut desk, created) = as_role("deskd_srv", "srv-secret").unwrap();
    assert!(created);
    let mut b = desk.batch().unwrap();
    let (dir, _) = b.add(&new(2, "d", Kind::Dir)).unwrap();
    b.rename(dir.id, 2, b"e", false).unwrap();
    b.comment_set(dir.id, b"c").unwrap();
    b.delete(dir.id, true).unwrap();
    b.commit().unwrap();

    let e = as_role("outsider", "out-secret").err().unwrap();
    assert_eq!(
        e.to_string(),
        "postgresql: db error: ERROR: permission denied for schema deskd"
    );
    assert!(std::error::Error::source(&e).is_none(), "said once");
    assert!(!e.is_unavailable(), "{e}");
}

#[test]
fn a_store_waits_a_bounded_time_for_another_servers_batch_and_changes_durability() {
    use deskd_db::{Store, WriteBatch};
    use std::time::{Duration, Instant};
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    cluster.create_database("wait");
    let vol = key("waited", 0x3a17);
    let (mut one, _) = open(&cluster, "wait", &vol).unwrap();
    let (mut two, _) = open(&cluster, "wait", &vol).unwrap();
    assert_eq!(Store::backend(&one), "postgresql");

    // One server's batch holds the volume's row: the other's gives up after its wait, with
    // PostgreSQL's lock_not_available, not an outage and not a hang.
    let mut held = Store::batch(&mut one).unwrap();
    held.add(&new(deskd_db::ROOT_ID, "first", Kind::File))
        .unwrap();
    let started = Instant::now();
    let refused = Store::batch_within(&mut two, Duration::from_millis(200)).err();
    let waited = started.elapsed();
    match &refused {
        // A lock conflict is Busy (the client may try again), not a failure of the database.
        Some(DbError::Busy(why)) => assert!(why.contains("lock"), "{why}"),
        other => panic!("expected a lock timeout, got {other:?}"),
    }
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    held.commit_owned().unwrap();

    // Free again: the wait bounds only taking the row, so the batch's statements run as usual.
    let mut b = Store::batch_within(&mut two, Duration::from_millis(200)).unwrap();
    let (second, _) = b
        .add(&new(deskd_db::ROOT_ID, "second", Kind::File))
        .unwrap();
    b.commit_owned().unwrap();
    assert_eq!(
        second.id,
        deskd_db::FIRST_ID + 1,
        "the counter the first wrote"
    );

    Store::set_durability(&mut two, Durability::Full).unwrap();
    let mut b = Store::batch(&mut two).unwrap();
    b.add(&new(deskd_db::ROOT_ID, "third", Kind::File)).unwrap();
    b.commit_owned().unwrap();
    Store::set_durability(&mut two, Durability::Normal).unwrap();
}

/// A step's savepoint is released with the next step's start (issue 28): a failed step, also
/// one inside another, still undoes only itself, and what succeeded before it stays.
#[test]
fn steps_undo_only_themselves_when_releases_are_deferred() {
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    cluster.create_database("desk");
    let (mut desk, _) = open(&cluster, "desk", &key("steps", 7)).unwrap();
    let root_error = |b: &mut deskd_pg::PgBatch<'_>| b.delete(deskd_db::ROOT_ID, false);
    let mut b = desk.batch().unwrap();
    b.step(|b| b.add(&new(2, "a", Kind::File))).unwrap();
    b.step(|b| b.add(&new(2, "b", Kind::File))).unwrap();
    assert!(b
        .step(|b| {
            b.add(&new(2, "c", Kind::File))?;
            root_error(b)
        })
        .is_err());
    b.step(|b| {
        b.add(&new(2, "d", Kind::File))?;
        assert!(b
            .step(|b| {
                b.add(&new(2, "e", Kind::File))?;
                root_error(b)
            })
            .is_err());
        Ok(())
    })
    .unwrap();
    assert!(b
        .step(|b| {
            b.add(&new(2, "f", Kind::File))?;
            b.step(|b| b.add(&new(2, "g", Kind::File)))?;
            root_error(b)
        })
        .is_err());
    b.step(|b| b.add(&new(2, "h", Kind::File))).unwrap();
    let seq = b.commit().unwrap().expect("the batch changed something");
    let names: Vec<String> = desk
        .children(2)
        .unwrap()
        .iter()
        .map(|o| String::from_utf8_lossy(&o.name).into_owned())
        .collect();
    assert_eq!(names, ["a", "b", "d", "h"]);
    let mut logged: Vec<u32> = desk
        .changes_since(seq - 1)
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    logged.sort_unstable();
    let mut kept: Vec<u32> = desk.children(2).unwrap().iter().map(|o| o.id).collect();
    kept.sort_unstable();
    assert_eq!(logged, kept, "the change log holds what the batch kept");
    assert_eq!(desk.change_seq().unwrap(), seq);
}

/// A batch's new rows are buffered and sent in one INSERT before any statement that could see
/// them (issue 28), and a step's savepoint is sent only with its first statement. Still: a
/// failed step leaves nothing of its own behind, whether its rows were still buffered or sent
/// inside it, also inside another step; the rows of the steps before it stay; and every read
/// of the batch sees its buffered rows.
#[test]
fn buffered_rows_and_lazy_savepoints_keep_steps_apart() {
    use deskd_db::Read;
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    cluster.create_database("desk");
    let (mut desk, _) = open(&cluster, "desk", &key("buffered", 8)).unwrap();
    let root_error = |b: &mut deskd_pg::PgBatch<'_>| b.delete(deskd_db::ROOT_ID, false);
    let mut b = desk.batch().unwrap();
    let dir = b.step(|b| b.add(&new(2, "dir", Kind::Dir))).unwrap().0;
    let a = b.step(|b| b.add(&new(dir.id, "a", Kind::File))).unwrap().0;
    // Buffered, yet seen by the point reads and the reads that send them first.
    assert_eq!(b.get(a.id).unwrap(), a);
    assert_eq!(Read::lookup(&b, dir.id, b"a").unwrap(), Some(a.clone()));
    assert_eq!(
        b.add(&new(dir.id, "a", Kind::File)).unwrap(),
        (a.clone(), false)
    );
    // A step that sends its rows and those of the steps before (the read of the folder),
    // then fails: its own row goes, the one before stays.
    assert!(b
        .step(|b| {
            b.add(&new(dir.id, "b", Kind::File))?;
            assert_eq!(b.children(dir.id)?.len(), 2);
            root_error(b)
        })
        .is_err());
    assert_eq!(Read::lookup(&b, dir.id, b"b").unwrap(), None);
    assert_eq!(Read::lookup(&b, dir.id, b"a").unwrap(), Some(a.clone()));
    // Inside an outer step: the inner one's rows, sent inside it, go; the outer's stay.
    b.step(|b| {
        b.add(&new(dir.id, "c", Kind::File))?;
        assert!(b
            .step(|b| {
                let d = b.add(&new(dir.id, "d", Kind::File))?.0;
                assert_eq!(
                    Read::get_with_path(&*b, d.id).unwrap().1,
                    [b"dir".to_vec(), b"d".to_vec()]
                );
                root_error(b)
            })
            .is_err());
        b.add(&new(dir.id, "e", Kind::File))?;
        Ok(())
    })
    .unwrap();
    // An outer step that fails after an inner one succeeded: both go.
    assert!(b
        .step(|b| {
            b.step(|b| b.add(&new(dir.id, "f", Kind::File)))?;
            b.add(&new(dir.id, "g", Kind::File))?;
            root_error(b)
        })
        .is_err());
    b.step(|b| b.add(&new(dir.id, "h", Kind::File))).unwrap();
    // A rename of a buffered row sends it first.
    b.step(|b| b.rename(a.id, dir.id, b"a2", false)).unwrap();
    let counter = b.counter();
    let seq = b.commit().unwrap().expect("the batch changed something");
    let names: Vec<String> = desk
        .children(dir.id)
        .unwrap()
        .iter()
        .map(|o| String::from_utf8_lossy(&o.name).into_owned())
        .collect();
    assert_eq!(names, ["a2", "c", "e", "h"]);
    let mut logged: Vec<u32> = desk
        .changes_since(seq - 1)
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    logged.sort_unstable();
    let mut kept: Vec<u32> = desk
        .children(dir.id)
        .unwrap()
        .iter()
        .map(|o| o.id)
        .collect();
    kept.push(dir.id);
    kept.sort_unstable();
    assert_eq!(logged, kept, "the change log holds what the batch kept");
    // IDs of the undone rows stay taken: the counter never goes back.
    assert_eq!(desk.last_id().unwrap(), counter);
    let mut b = desk.batch().unwrap();
    let next = b.add(&new(dir.id, "i", Kind::File)).unwrap().0;
    assert!(next.id > counter, "{} after {counter}", next.id);
    b.commit().unwrap();
}

/// `Read::paths_of` (find's folders in one query) answers what `path_of` answers for each ID,
/// in the order asked, for one, two (each by `path_of`) and more IDs (the one query), and
/// refuses an ID that is not there.
#[test]
fn paths_of_is_path_of_each() {
    use deskd_db::Read;
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    cluster.create_database("desk");
    let (mut desk, _) = open(&cluster, "desk", &key("paths", 9)).unwrap();
    let mut b = desk.batch().unwrap();
    let a = b.add(&new(2, "a", Kind::Dir)).unwrap().0;
    let ab = b.add(&new(a.id, "b", Kind::Dir)).unwrap().0;
    let abc = b.add(&new(ab.id, "c", Kind::Dir)).unwrap().0;
    let d = b.add(&new(2, "d", Kind::Dir)).unwrap().0;
    b.commit().unwrap();
    let each = |ids: &[u32]| -> Vec<Vec<Vec<u8>>> {
        ids.iter()
            .map(|&id| Read::path_of(&desk, id).unwrap())
            .collect()
    };
    for ids in [
        vec![abc.id],
        vec![d.id, a.id],
        vec![abc.id, 2, d.id, ab.id],
        vec![d.id, abc.id, a.id, ab.id, 2],
    ] {
        assert_eq!(Read::paths_of(&desk, &ids).unwrap(), each(&ids), "{ids:?}");
    }
    assert!(matches!(
        Read::paths_of(&desk, &[a.id, 999_999, d.id]),
        Err(DbError::NoSuchId(999_999))
    ));
}
