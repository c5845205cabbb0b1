//! The same assertions, through deskd-db's storage traits only (`&dyn Read`,
//! `Box<dyn WriteBatch>`), against an SQLite desktop in a temp directory and a PostgreSQL
//! desktop on a throw-away cluster: what code written once against the traits may rely on.
//! Each run also writes a transcript of every answer; the two transcripts must be equal.

use deskd_db::{
    ApplRecord, DbError, Desktop, Durability, FindMode, FindQuery, IconRecord, InfoUpdate, Kind,
    NameChange, NameIndex, NewObject, Read, WriteBatch, ROOT_ID,
};
use deskd_pg::test_cluster::TestCluster;
use deskd_pg::{connect, ConnectOptions, PasswordSource, PgDesktop, VolumeKey};

/// What the test needs of a store beyond the two traits: a batch and the handle's reads.
trait Store {
    fn batch(&mut self) -> Box<dyn WriteBatch + '_>;
    fn reads(&self) -> &dyn Read;
}

impl Store for Desktop {
    fn batch(&mut self) -> Box<dyn WriteBatch + '_> {
        Box::new(Desktop::batch(self).unwrap())
    }
    fn reads(&self) -> &dyn Read {
        self
    }
}

impl Store for PgDesktop {
    fn batch(&mut self) -> Box<dyn WriteBatch + '_> {
        Box::new(PgDesktop::batch(self).unwrap())
    }
    fn reads(&self) -> &dyn Read {
        self
    }
}

fn new(parent: u32, name: &str, kind: Kind) -> NewObject {
    NewObject {
        parent,
        name: name.as_bytes().to_vec(),
        kind,
        dev: 7,
        ino: 100,
        type_code: *b"TEXT",
        creator: *b"ttxt",
        flags: 0,
        ctime: 1_700_000_000,
        hint: None,
    }
}

fn find(mode: FindMode, pattern: &str) -> FindQuery {
    FindQuery {
        pattern: pattern.into(),
        mode,
        limit: 100,
        after_id: 0,
    }
}

fn names(objects: &[deskd_db::Object]) -> Vec<String> {
    objects
        .iter()
        .map(|o| format!("{}:{}", o.id, String::from_utf8_lossy(&o.name)))
        .collect()
}

/// Every assertion, through the traits. Returns the transcript of the answers.
fn exercise(store: &mut dyn Store) -> Vec<String> {
    let mut log = Vec::new();

    // Add, lookup-or-add, and reads inside the batch see the batch.
    let mut b = store.batch();
    let (docs, made) = b.add(&new(ROOT_ID, "Docs", Kind::Dir)).unwrap();
    assert!(made);
    assert_eq!(docs.id, deskd_db::FIRST_ID, "the first ID is 17 on both");
    let mark = b.change_mark();
    let (report, _) = b.add(&new(docs.id, "Report.txt", Kind::File)).unwrap();
    let (notes, _) = b.add(&new(ROOT_ID, "notes.md", Kind::File)).unwrap();
    let (again, made) = b.add(&new(ROOT_ID, "notes.md", Kind::File)).unwrap();
    assert!(!made);
    assert_eq!(again.id, notes.id);
    assert_eq!(
        b.changed_since(mark),
        &[
            NameChange::Set(report.id, "report.txt".into()),
            NameChange::Set(notes.id, "notes.md".into())
        ]
    );
    assert_eq!(
        b.lookup(docs.id, b"Report.txt").unwrap().unwrap().id,
        report.id
    );
    b.commit().unwrap();
    log.push(format!("ids {} {} {}", docs.id, report.id, notes.id));

    let r = store.reads();
    assert_eq!(r.get(report.id).unwrap().name, b"Report.txt");
    assert_eq!(r.get(report.id).unwrap().parent, docs.id);
    assert!(matches!(r.get(999_999), Err(DbError::NoSuchId(999_999))));
    assert_eq!(r.lookup(ROOT_ID, b"nothing").unwrap(), None);
    let many = r.get_many(&[docs.id, report.id, 999_999]).unwrap();
    assert_eq!(
        many.iter().map(|o| o.id).collect::<Vec<_>>(),
        vec![docs.id, report.id],
        "a missing ID left out"
    );
    log.push(format!(
        "children {:?}",
        names(&r.children(ROOT_ID).unwrap())
    ));
    assert_eq!(
        r.path_of(report.id).unwrap(),
        vec![b"Docs".to_vec(), b"Report.txt".to_vec()]
    );
    assert!(r.path_of(ROOT_ID).unwrap().is_empty());
    // A resolve's one call (one round trip on PostgreSQL) answers as the two.
    assert_eq!(
        r.get_with_path(report.id).unwrap(),
        (r.get(report.id).unwrap(), r.path_of(report.id).unwrap())
    );
    assert!(r.get_with_path(ROOT_ID).unwrap().1.is_empty());
    assert!(matches!(
        r.get_with_path(999_999),
        Err(DbError::NoSuchId(999_999))
    ));
    assert_eq!(
        r.id_of_path(&[b"Docs", b"Report.txt"]).unwrap(),
        Some(report.id)
    );
    assert_eq!(r.id_of_path(&[b"Docs", b"missing"]).unwrap(), None);
    assert_eq!(r.id_of_path(&[]).unwrap(), Some(ROOT_ID));

    // Rename, Mac info (APPL registers itself), comments, APPL and icon records.
    let mut b = store.batch();
    assert!(b
        .rename(report.id, ROOT_ID, b"Final Report.TXT", false)
        .unwrap()
        .is_empty());
    assert!(matches!(
        b.rename(report.id, ROOT_ID, b"notes.md", false),
        Err(DbError::Exists { existing, .. }) if existing == notes.id
    ));
    assert!(matches!(
        b.rename(ROOT_ID, docs.id, b"x", false),
        Err(DbError::Root(_))
    ));
    assert!(matches!(
        b.rename(docs.id, docs.id, b"inside", false),
        Err(DbError::IntoItself(_))
    ));
    let (app, _) = b.add(&new(docs.id, "Editor", Kind::File)).unwrap();
    let info = InfoUpdate {
        type_code: Some(*b"APPL"),
        creator: Some(*b"EDIT"),
        flags: Some(0x20),
    };
    assert_eq!(b.set_info(app.id, &info).unwrap().flags, 0x20);
    b.set_devino(app.id, 8, 200, 1_700_000_100).unwrap();
    b.comment_set(notes.id, b"read me").unwrap();
    b.comment_set(notes.id, b"read me first").unwrap();
    b.comment_set(report.id, b"final").unwrap();
    b.appl_add(&ApplRecord {
        creator: *b"ttxt",
        app_id: app.id,
        tag: 5,
    })
    .unwrap();
    for (itype, tag) in [(1u8, 10u32), (2, 20)] {
        b.icon_add(&IconRecord {
            creator: *b"ttxt",
            type_code: *b"TEXT",
            itype,
            tag,
            bitmap: vec![itype; 32],
        })
        .unwrap();
    }
    assert!(matches!(
        b.comment_set(999_999, b"x"),
        Err(DbError::NoSuchId(999_999))
    ));
    b.commit().unwrap();

    let r = store.reads();
    assert_eq!(r.get(report.id).unwrap().name, b"Final Report.TXT");
    let app_now = r.get(app.id).unwrap();
    assert_eq!(
        (app_now.dev, app_now.ino, app_now.ctime),
        (8, 200, 1_700_000_100)
    );
    assert_eq!(app_now.type_code, *b"APPL");
    assert_eq!(r.comment(notes.id).unwrap().unwrap(), b"read me first");
    assert_eq!(r.comment(docs.id).unwrap(), None);
    let edit = r.appl_for(*b"EDIT").unwrap();
    assert_eq!(edit.len(), 1, "an APPL object registers itself");
    assert_eq!(edit[0].app_id, app.id);
    assert_eq!(r.appl_for(*b"ttxt").unwrap()[0].tag, 5);
    assert_eq!(r.icon(*b"ttxt", *b"TEXT", 2).unwrap().unwrap().tag, 20);
    assert_eq!(r.icon(*b"ttxt", *b"TEXT", 9).unwrap(), None);
    assert_eq!(r.icons_for(*b"ttxt").unwrap().len(), 2);
    let mut appl = r.all_appl().unwrap();
    appl.sort_by_key(|a| (a.creator, a.app_id));
    log.push(format!("appl {appl:?}"));
    let mut icons = r.all_icons().unwrap();
    icons.sort_by_key(|i| (i.creator, i.type_code, i.itype));
    log.push(format!("icons {icons:?}"));
    log.push(format!("comments {:?}", r.all_comments().unwrap()));

    // Find by the table scan and through a name index loaded from the same reads.
    let index = NameIndex::new();
    index.load(r).unwrap();
    for (mode, pattern) in [
        (FindMode::Substring, "REPORT"),
        (FindMode::Prefix, "final"),
        (FindMode::Glob, "*.md"),
        (FindMode::Glob, "[ef]*"),
        (FindMode::Exact, "notes.md"),
        (FindMode::Substring, "nothing"),
    ] {
        let query = find(mode, pattern);
        let scanned = r.find(&query).unwrap();
        assert_eq!(
            index.find(r, &query).unwrap(),
            scanned,
            "{mode:?} {pattern}"
        );
        log.push(format!("find {mode:?} {pattern}: {:?}", names(&scanned)));
    }
    let paged = r
        .find(&FindQuery {
            limit: 1,
            after_id: docs.id,
            ..find(FindMode::Substring, "")
        })
        .unwrap();
    log.push(format!("paged {:?}", names(&paged)));

    // A failing step undoes only itself; the batch goes on.
    let mut b = store.batch();
    let mut kept = 0;
    b.step_dyn(&mut |b| {
        kept = b.add(&new(docs.id, "kept", Kind::File))?.0.id;
        Ok(())
    })
    .unwrap();
    let failed = b.step_dyn(&mut |b| {
        b.add(&new(docs.id, "undone", Kind::File))?;
        b.add(&new(notes.id, "under a file", Kind::File))?;
        Ok(())
    });
    assert!(matches!(failed, Err(DbError::NotADirectory(id)) if id == notes.id));
    assert!(b.lookup(docs.id, b"undone").unwrap().is_none());
    assert!(b.lookup(docs.id, b"kept").unwrap().is_some());

    // Delete: not empty, recursive, and removed IDs are never handed out again.
    assert!(matches!(
        b.delete(docs.id, false),
        Err(DbError::NotEmpty(_))
    ));
    let mut removed = b.delete(docs.id, true).unwrap();
    removed.sort_unstable();
    log.push(format!("removed {removed:?}"));
    assert!(removed.contains(&app.id) && removed.contains(&kept));
    assert!(b.comment_remove(notes.id).unwrap());
    assert!(!b.comment_remove(notes.id).unwrap());
    assert!(b.appl_remove(*b"ttxt", app.id).is_ok());
    let fresh = b.allocate_id().unwrap();
    assert!(fresh > *removed.iter().max().unwrap(), "no ID is reused");
    b.raise_counter(fresh + 10);
    let (later, _) = b.add(&new(ROOT_ID, "later", Kind::File)).unwrap();
    assert_eq!(later.id, fresh + 11);
    b.commit().unwrap();
    log.push(format!("fresh {fresh} later {}", later.id));

    // Dropping a batch rolls it back.
    {
        let mut b = store.batch();
        b.add(&new(ROOT_ID, "rolled back", Kind::File)).unwrap();
    }

    let r = store.reads();
    assert!(matches!(r.get(docs.id), Err(DbError::NoSuchId(_))));
    assert!(r.lookup(ROOT_ID, b"rolled back").unwrap().is_none());
    assert!(
        r.appl_for(*b"EDIT").unwrap().is_empty(),
        "gone with its object"
    );
    let mut seen = Vec::new();
    r.for_each_object(&mut |o| seen.push(o.id)).unwrap();
    assert_eq!(seen.len() as u64, r.object_count().unwrap());
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in ID order");
    assert_eq!(r.all_objects().unwrap().len(), seen.len());
    let mut keys = Vec::new();
    r.for_each_search_key(&mut |id, key| keys.push(format!("{id}:{key}")))
        .unwrap();
    log.push(format!("keys {keys:?}"));
    let stats = r.stats().unwrap();
    assert_eq!(stats.objects, seen.len() as u64);
    assert_eq!(stats.last_id, later.id);
    assert_eq!(r.meta("last_id").unwrap(), Some(i64::from(later.id)));
    assert!(r.meta("created").unwrap().is_some());
    assert_eq!(r.meta("no such key").unwrap(), None);
    assert!(r.quick_check().unwrap().is_empty());
    log.push(format!("objects {} last {}", stats.objects, stats.last_id));
    log
}

#[test]
fn sqlite_and_postgresql_answer_alike_through_the_traits() {
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut sqlite, _) = Desktop::open(&dir.path().join(".Desktop"), Durability::Normal).unwrap();
    let on_sqlite = exercise(&mut sqlite);

    cluster.create_database("both");
    let options = ConnectOptions {
        target: cluster.url("both"),
        password: PasswordSource::File(cluster.password_file("pw-both", cluster.password())),
    };
    let key = VolumeKey {
        name: "both".into(),
        identity: 0xb07,
    };
    let (mut postgres, _) =
        PgDesktop::open(connect(&options).unwrap(), &key, Durability::Normal).unwrap();
    let on_postgres = exercise(&mut postgres);
    assert_eq!(on_sqlite, on_postgres);

    // A read from inside a streaming read's callback is refused on PostgreSQL, not a panic.
    let reads: &dyn Read = &postgres;
    let mut inner = Vec::new();
    reads
        .for_each_object(&mut |o| inner.push(reads.get(o.id).map(|_| ())))
        .unwrap();
    assert!(!inner.is_empty());
    assert!(inner.iter().all(|r| matches!(r, Err(DbError::Backend(_)))));
}

#[test]
fn a_lost_database_reads_as_unavailable_through_the_traits() {
    let Some(mut cluster) = TestCluster::start_or_skip() else {
        return;
    };
    cluster.create_database("lost");
    let options = ConnectOptions {
        target: cluster.url("lost"),
        password: PasswordSource::File(cluster.password_file("pw-lost", cluster.password())),
    };
    let key = VolumeKey {
        name: "lost".into(),
        identity: 0x1057,
    };
    let (desk, _) = PgDesktop::open(connect(&options).unwrap(), &key, Durability::Normal).unwrap();
    let reads: &dyn Read = &desk;
    assert_eq!(reads.get(ROOT_ID).unwrap().id, ROOT_ID);
    cluster.stop();
    match reads.get(ROOT_ID) {
        Err(DbError::Unavailable(message)) => assert!(!message.is_empty()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
