use super::*;
use proptest::prelude::*;

fn open_temp() -> (tempfile::TempDir, Desktop) {
    let dir = tempfile::tempdir().unwrap();
    let (desk, report) = Desktop::open(&dir.path().join(".Desktop"), Durability::Normal).unwrap();
    assert!(report.created);
    (dir, desk)
}

pub(crate) fn file(parent: u32, name: &[u8]) -> NewObject {
    NewObject {
        parent,
        name: name.to_vec(),
        kind: Kind::File,
        dev: 1,
        ino: 1,
        type_code: *b"UNIX",
        creator: *b"UNKN",
        flags: 0,
        ctime: 0,
        hint: None,
    }
}

fn dir(parent: u32, name: &[u8]) -> NewObject {
    NewObject {
        kind: Kind::Dir,
        ..file(parent, name)
    }
}

pub(crate) fn add(desk: &mut Desktop, new: NewObject) -> u32 {
    let mut b = desk.batch().unwrap();
    let (o, _) = b.add(&new).unwrap();
    b.commit().unwrap();
    o.id
}

#[test]
fn root_and_first_ids() {
    let (_d, mut desk) = open_temp();
    let root = desk.get(ROOT_ID).unwrap();
    assert_eq!(root.parent, ROOT_PARENT_ID);
    assert_eq!(root.kind, Kind::Dir);
    assert_eq!(add(&mut desk, file(ROOT_ID, b"a")), 17);
    assert_eq!(add(&mut desk, file(ROOT_ID, b"b")), 18);
}

#[test]
fn deleted_ids_are_not_reused_even_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".Desktop");
    let (mut desk, _) = Desktop::open(&path, Durability::Normal).unwrap();
    let a = add(&mut desk, file(ROOT_ID, b"a"));
    let mut b = desk.batch().unwrap();
    b.delete(a, false).unwrap();
    b.commit().unwrap();
    drop(desk);
    let (mut desk, report) = Desktop::open(&path, Durability::Normal).unwrap();
    assert!(!report.was_clean, "dropping without close_clean is unclean");
    let b_id = add(&mut desk, file(ROOT_ID, b"a"));
    assert!(b_id > a);
    desk.close_clean().unwrap();
    let (_desk, report) = Desktop::open(&path, Durability::Normal).unwrap();
    assert!(report.was_clean);
}

#[test]
fn opening_for_serving_writes_nothing_until_the_first_batch_which_marks_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".Desktop");
    // A new desktop is written (and marked) at once.
    let (desk, report) = Desktop::open_for_serving(&path, Durability::Normal).unwrap();
    assert!(report.created);
    desk.close_clean().unwrap();
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let wal = dir.path().join(".Desktop-wal");

    // An existing one is not written by the open: a session that ends (crashes) before its
    // first batch leaves the clean mark of the one before, which is still true.
    let (desk, report) = Desktop::open_for_serving(&path, Durability::Normal).unwrap();
    assert!(report.was_clean);
    assert_eq!(size(&wal), 0, "the open wrote to the WAL");
    drop(desk);
    let (mut desk, report) = Desktop::open_for_serving(&path, Durability::Normal).unwrap();
    assert!(
        report.was_clean,
        "a session that wrote nothing is as it was left"
    );

    // The first batch marks the session open in its own transaction; a crash after it shows.
    let a = add(&mut desk, file(ROOT_ID, b"a"));
    let r = Reader::open(&path).unwrap();
    assert_eq!(r.meta("clean").unwrap(), Some(0));
    drop(r);
    drop(desk);
    let (mut desk, report) = Desktop::open_for_serving(&path, Durability::Normal).unwrap();
    assert!(!report.was_clean, "a crash after a write is unclean");
    assert_eq!(desk.get(a).unwrap().name, b"a");

    // A rolled-back batch does not count: the mark comes with the next committed one.
    drop(desk.batch().unwrap());
    let b = add(&mut desk, file(ROOT_ID, b"b"));
    assert!(b > a);
    desk.close_clean().unwrap();
    let (_desk, report) = Desktop::open_for_serving(&path, Durability::Normal).unwrap();
    assert!(report.was_clean);
}
#[test]
fn hint_is_honoured_when_free_and_raises_the_counter() {
    let (_d, mut desk) = open_temp();
    let mut n = file(ROOT_ID, b"restored");
    n.hint = Some(5000);
    assert_eq!(add(&mut desk, n), 5000);
    let mut dup = file(ROOT_ID, b"copy");
    dup.hint = Some(5000);
    assert_eq!(
        add(&mut desk, dup),
        5001,
        "a taken hint falls back to the counter"
    );
    let mut bad = file(ROOT_ID, b"reserved");
    bad.hint = Some(1 << 24);
    assert_eq!(
        add(&mut desk, bad),
        5002,
        "skipped values are never honoured"
    );
}

#[test]
fn skips_multiples_of_2_pow_24_and_reports_exhaustion() {
    let (_d, mut desk) = open_temp();
    let mut b = desk.batch().unwrap();
    b.raise_counter((1 << 24) - 1);
    let id = b.add(&file(ROOT_ID, b"x")).unwrap().0.id;
    assert_eq!(id, (1 << 24) + 1);
    b.raise_counter(LAST_USABLE_ID - 1);
    let id = b.add(&file(ROOT_ID, b"y")).unwrap().0.id;
    assert_eq!(id, LAST_USABLE_ID);
    let err = b.add(&file(ROOT_ID, b"z")).unwrap_err();
    assert!(matches!(err, DbError::IdSpaceExhausted));
    assert!(err.to_string().contains("ID space exhausted"));
}

#[test]
fn names_are_bytes_and_validated() {
    let (_d, mut desk) = open_temp();
    let id = add(&mut desk, file(ROOT_ID, b"bad\xff\xfename"));
    assert_eq!(desk.get(id).unwrap().name, b"bad\xff\xfename");
    let mut b = desk.batch().unwrap();
    assert!(matches!(
        b.add(&file(ROOT_ID, &[b'a'; 256])),
        Err(DbError::InvalidName(..))
    ));
    assert!(b.add(&file(ROOT_ID, &[b'a'; 255])).is_ok());
    assert!(matches!(
        b.add(&file(ROOT_ID, b"a/b")),
        Err(DbError::InvalidName(..))
    ));
    assert!(matches!(
        b.add(&file(ROOT_ID, b"..")),
        Err(DbError::InvalidName(..))
    ));
}

#[test]
fn rename_keeps_ids_of_a_subtree_and_paths_follow() {
    let (_d, mut desk) = open_temp();
    let a = add(&mut desk, dir(ROOT_ID, b"a"));
    let b_dir = add(&mut desk, dir(ROOT_ID, b"b"));
    let inner = add(&mut desk, dir(a, b"inner"));
    let leaf = add(&mut desk, file(inner, b"leaf"));
    let mut b = desk.batch().unwrap();
    b.rename(a, b_dir, b"moved", false).unwrap();
    assert!(matches!(
        b.rename(b_dir, inner, b"loop", false),
        Err(DbError::IntoItself(_))
    ));
    b.commit().unwrap();
    assert_eq!(
        desk.path_of(leaf).unwrap(),
        vec![
            b"b".to_vec(),
            b"moved".to_vec(),
            b"inner".to_vec(),
            b"leaf".to_vec()
        ]
    );
    assert_eq!(
        desk.id_of_path(&[b"b", b"moved", b"inner", b"leaf"])
            .unwrap(),
        Some(leaf)
    );
}

#[test]
fn rename_onto_existing_needs_replace() {
    let (_d, mut desk) = open_temp();
    let a = add(&mut desk, file(ROOT_ID, b"a"));
    let b_id = add(&mut desk, file(ROOT_ID, b"b"));
    let mut b = desk.batch().unwrap();
    assert!(matches!(
        b.rename(a, ROOT_ID, b"b", false),
        Err(DbError::Exists { .. })
    ));
    assert_eq!(b.rename(a, ROOT_ID, b"b", true).unwrap(), vec![b_id]);
    b.commit().unwrap();
    assert_eq!(desk.lookup(ROOT_ID, b"b").unwrap().unwrap().id, a);
}

#[test]
fn rename_read_moves_a_file_over_what_the_caller_found_and_checks_a_folder() {
    let (_d, mut desk) = open_temp();
    let d = add(&mut desk, dir(ROOT_ID, b"d"));
    let e = add(&mut desk, dir(d, b"e"));
    let a = add(&mut desk, file(d, b"a"));
    let x = add(&mut desk, file(d, b"x"));
    let mut b = desk.batch().unwrap();
    let (ao, xo, dd, ed) = (
        b.get(a).unwrap(),
        b.get(x).unwrap(),
        b.get(d).unwrap(),
        b.get(e).unwrap(),
    );
    // Over the name the caller found taken: that record goes, as rename(2) replaces it.
    assert_eq!(b.rename_read(&ao, &dd, b"x", Some(&xo)).unwrap(), vec![x]);
    // Found at its own new place already: nothing to do.
    let moved = b.get(a).unwrap();
    assert!(b
        .rename_read(&moved, &dd, b"x", Some(&moved))
        .unwrap()
        .is_empty());
    // A folder keeps the checks: never into itself.
    assert!(matches!(
        b.rename_read(&dd, &ed, b"loop", None),
        Err(DbError::IntoItself(_))
    ));
    assert!(matches!(
        b.rename_read(&moved, &dd, b"a/b", None),
        Err(DbError::InvalidName(..))
    ));
    b.commit().unwrap();
    assert_eq!(desk.lookup(d, b"x").unwrap().unwrap().id, a);
    assert!(matches!(desk.get(x), Err(DbError::NoSuchId(_))));
    assert_eq!(desk.lookup(d, b"a").unwrap(), None);
}

#[test]
fn delete_needs_recursive_for_non_empty_dirs() {
    let (_d, mut desk) = open_temp();
    let d = add(&mut desk, dir(ROOT_ID, b"d"));
    let f = add(&mut desk, file(d, b"f"));
    let mut b = desk.batch().unwrap();
    assert!(matches!(b.delete(d, false), Err(DbError::NotEmpty(_))));
    let mut removed = b.delete(d, true).unwrap();
    removed.sort();
    assert_eq!(removed, vec![d, f]);
    assert!(matches!(b.delete(ROOT_ID, true), Err(DbError::Root(_))));
    b.commit().unwrap();
    assert!(matches!(desk.get(f), Err(DbError::NoSuchId(_))));
}

#[test]
fn step_isolates_a_failing_request() {
    let (_d, mut desk) = open_temp();
    let mut b = desk.batch().unwrap();
    let ok = b.step(|b| b.add(&file(ROOT_ID, b"kept"))).unwrap().0.id;
    let failed = b.step(|b| {
        b.add(&file(ROOT_ID, b"undone"))?;
        b.delete(ROOT_ID, true)
    });
    assert!(failed.is_err());
    b.commit().unwrap();
    assert!(desk.get(ok).is_ok());
    assert!(desk.lookup(ROOT_ID, b"undone").unwrap().is_none());
}

#[test]
fn appl_type_registers_and_unregisters() {
    let (_d, mut desk) = open_temp();
    let mut app = file(ROOT_ID, b"SimpleText");
    app.type_code = APPL;
    app.creator = *b"ttxt";
    let id = add(&mut desk, app);
    assert_eq!(desk.appl_for(*b"ttxt").unwrap().len(), 1);
    assert_eq!(desk.appl_for(*b"ttxt").unwrap()[0].app_id, id);
    let mut b = desk.batch().unwrap();
    b.set_info(
        id,
        &InfoUpdate {
            type_code: Some(*b"TEXT"),
            ..Default::default()
        },
    )
    .unwrap();
    b.commit().unwrap();
    assert!(desk.appl_for(*b"ttxt").unwrap().is_empty());
    let mut b = desk.batch().unwrap();
    b.set_info(
        id,
        &InfoUpdate {
            type_code: Some(APPL),
            ..Default::default()
        },
    )
    .unwrap();
    b.commit().unwrap();
    assert_eq!(desk.appl_for(*b"ttxt").unwrap().len(), 1);
    let mut b = desk.batch().unwrap();
    b.delete(id, false).unwrap();
    b.commit().unwrap();
    assert!(
        desk.appl_for(*b"ttxt").unwrap().is_empty(),
        "deleting the app unregisters it"
    );
}

#[test]
fn icons_and_comments() {
    let (_d, mut desk) = open_temp();
    let id = add(&mut desk, file(ROOT_ID, b"doc"));
    let icon = IconRecord {
        creator: *b"ttxt",
        type_code: *b"TEXT",
        itype: 1,
        tag: 7,
        bitmap: vec![1, 2, 3],
    };
    let mut b = desk.batch().unwrap();
    b.icon_add(&icon).unwrap();
    b.comment_set(id, b"hello").unwrap();
    b.comment_set(id, b"replaced").unwrap();
    b.commit().unwrap();
    assert_eq!(
        desk.icon(*b"ttxt", *b"TEXT", 1).unwrap(),
        Some(icon.clone())
    );
    assert_eq!(desk.icons_for(*b"ttxt").unwrap(), vec![icon]);
    assert_eq!(desk.comment(id).unwrap(), Some(b"replaced".to_vec()));
    let mut b = desk.batch().unwrap();
    b.delete(id, false).unwrap();
    b.commit().unwrap();
    assert_eq!(
        desk.comment(id).unwrap(),
        None,
        "comments go with their object"
    );
}

/// Find by table scan and by a freshly loaded name index; both must agree exactly.
fn find(desk: &Desktop, pattern: &str, mode: FindMode) -> Vec<Vec<u8>> {
    let query = FindQuery {
        pattern: pattern.into(),
        mode,
        limit: 1000,
        after_id: 0,
    };
    let scanned = desk.find(&query).unwrap();
    let index = NameIndex::new();
    index.load(desk).unwrap();
    index.index_trigrams();
    assert_eq!(
        index.find(desk, &query).unwrap(),
        scanned,
        "{pattern:?} {mode:?}"
    );
    let mut names: Vec<Vec<u8>> = scanned.into_iter().map(|o| o.name).collect();
    names.sort();
    names
}

#[test]
fn find_modes_fold_case_and_normalisation() {
    let (_d, mut desk) = open_temp();
    for name in [
        "Report 2024.pdf",
        "report-final.DOC",
        "Caf\u{e9}.txt",
        "Cafe\u{301} Menu",
        "xy",
        "a*b",
    ] {
        add(&mut desk, file(ROOT_ID, name.as_bytes()));
    }
    let sub = find(&desk, "REPORT", FindMode::Substring);
    assert_eq!(sub.len(), 2);
    assert_eq!(find(&desk, "port", FindMode::Substring).len(), 2);
    assert_eq!(find(&desk, "rep", FindMode::Prefix).len(), 2);
    assert_eq!(find(&desk, "port", FindMode::Prefix).len(), 0);
    assert_eq!(
        find(&desk, "*.pdf", FindMode::Glob),
        vec![b"Report 2024.pdf".to_vec()]
    );
    assert_eq!(find(&desk, "report?final.*", FindMode::Glob).len(), 1);
    // NFD pattern finds the NFC name and vice versa.
    assert_eq!(find(&desk, "cafe\u{301}", FindMode::Substring).len(), 2);
    assert_eq!(find(&desk, "CAF\u{c9}", FindMode::Prefix).len(), 2);
    // Short patterns (fewer than 3 characters) still work.
    assert_eq!(find(&desk, "XY", FindMode::Substring), vec![b"xy".to_vec()]);
    // Glob metacharacters in a substring pattern are literal.
    assert_eq!(
        find(&desk, "a*b", FindMode::Substring),
        vec![b"a*b".to_vec()]
    );
    assert_eq!(find(&desk, "report 2024.PDF", FindMode::Exact).len(), 1);
    // Renamed objects are found under their new name only.
    let id = desk.lookup(ROOT_ID, b"xy").unwrap().unwrap().id;
    let mut b = desk.batch().unwrap();
    b.rename(id, ROOT_ID, b"zzz-renamed", false).unwrap();
    b.commit().unwrap();
    assert!(find(&desk, "xy", FindMode::Substring).is_empty());
    assert_eq!(find(&desk, "renamed", FindMode::Substring).len(), 1);
}

#[test]
fn find_pages_with_a_cursor() {
    let (_d, mut desk) = open_temp();
    for i in 0..25 {
        add(&mut desk, file(ROOT_ID, format!("page-{i}").as_bytes()));
    }
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = desk
            .find(&FindQuery {
                pattern: "page".into(),
                mode: FindMode::Substring,
                limit: 10,
                after_id: after,
            })
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().unwrap().id;
        seen.extend(page.into_iter().map(|o| o.id));
    }
    assert_eq!(seen.len(), 25);
}

#[test]
fn quick_check_finds_dangling_parents_and_counter_problems() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".Desktop");
    let (mut desk, _) = Desktop::open(&path, Durability::Normal).unwrap();
    add(&mut desk, file(ROOT_ID, b"a"));
    assert!(desk.quick_check().unwrap().is_empty());
    desk.close_clean().unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch("PRAGMA foreign_keys=OFF; UPDATE objects SET parent = 999 WHERE id = 17; UPDATE meta SET value = 3 WHERE key = 'last_id';").unwrap();
    drop(raw);
    let reader = Reader::open(&path).unwrap();
    let problems = reader.quick_check().unwrap();
    assert_eq!(problems.len(), 2, "{problems:?}");
}

#[test]
fn newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".Desktop");
    let (desk, _) = Desktop::open(&path, Durability::Normal).unwrap();
    desk.close_clean().unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    assert!(matches!(
        Desktop::open(&path, Durability::Normal),
        Err(DbError::FormatTooNew { found: 99, .. })
    ));
}

/// A version-1 desktop (with the FTS5 name table) is migrated forward on open, keeping its rows.
#[test]
fn version_1_desktop_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".Desktop");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(schema::SCHEMA_V1).unwrap();
        conn.execute_batch(
            "INSERT INTO meta VALUES ('created', 1), ('last_id', 40);
             INSERT INTO objects (id, parent, name, kind, skey) VALUES (2, 1, x'', 1, '');
             INSERT INTO objects (id, parent, name, kind, skey) VALUES (40, 2, CAST('Old.txt' AS BLOB), 0, 'old.txt');
             INSERT INTO names_fts (rowid, skey) VALUES (2, ''), (40, 'old.txt');
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let (mut desk, report) = Desktop::open(&path, Durability::Normal).unwrap();
    assert!(!report.created);
    let version: i32 = desk
        .conn()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, FORMAT_VERSION);
    let fts: i64 = desk
        .conn()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name IN ('names_fts', 'objects_devino')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(fts, 0, "names_fts and objects_devino dropped");
    assert_eq!(
        find(&desk, "OLD", FindMode::Substring),
        vec![b"Old.txt".to_vec()]
    );
    assert_eq!(add(&mut desk, file(ROOT_ID, b"new")), 41, "counter kept");
}

#[test]
fn foreign_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".Desktop");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE t(x)")
        .unwrap();
    assert!(matches!(
        Desktop::open(&path, Durability::Normal),
        Err(DbError::NotADesktop)
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Whatever sequence of adds and deletes happens, IDs are unique, never below 17, never a
    /// skipped value, and a deleted ID never comes back.
    #[test]
    fn ids_are_unique_and_never_reused(ops in proptest::collection::vec((any::<bool>(), 0u8..20, proptest::option::of(17u32..200)), 1..60)) {
        let (_d, mut desk) = open_temp();
        let mut live: std::collections::HashMap<u8, u32> = Default::default();
        let mut ever: std::collections::HashSet<u32> = Default::default();
        let mut deleted: std::collections::HashSet<u32> = Default::default();
        for (is_add, slot, hint) in ops {
            let mut b = desk.batch().unwrap();
            if is_add {
                let mut n = file(ROOT_ID, format!("n{slot}").as_bytes());
                n.hint = hint.filter(|h| !deleted.contains(h)); // hints only ever come from live resource files
                let (o, created) = b.add(&n).unwrap();
                let id = o.id;
                if created {
                    prop_assert!(id >= FIRST_ID && !ids::is_forbidden(id));
                    prop_assert!(!ever.contains(&id), "ID {} handed out twice", id);
                    ever.insert(id);
                    live.insert(slot, id);
                } else {
                    prop_assert_eq!(live.get(&slot), Some(&id));
                }
            } else if let Some(id) = live.remove(&slot) {
                b.delete(id, false).unwrap();
                deleted.insert(id);
            }
            b.commit().unwrap();
        }
    }
}

/// An attached name index follows adds, renames, recursive deletes and rolled-back steps, and
/// changes committed while it loads are replayed.
#[test]
fn name_index_stays_consistent() {
    let (_tmp, mut desk) = open_temp();
    let index = Arc::new(NameIndex::new());
    desk.attach_name_index(index.clone());
    let d = add(&mut desk, dir(ROOT_ID, b"Folder"));
    let f = add(&mut desk, file(d, b"Alpha.txt"));
    add(&mut desk, file(d, b"beta.txt"));
    // Still loading: the changes above are queued; load replays them on top of the snapshot.
    assert!(!index.is_ready());
    index.load(&desk).unwrap();
    assert_eq!(index.names(), Some(3));
    let mut b = desk.batch().unwrap();
    b.rename(f, ROOT_ID, b"Gamma.txt", false).unwrap();
    let _ = b.step(|b| {
        b.add(&file(ROOT_ID, b"rolled-back.txt"))?;
        b.rename(d, d, b"x", false) // fails: into itself
    });
    b.commit().unwrap();
    let mut b = desk.batch().unwrap();
    b.add(&file(ROOT_ID, b"never-committed")).unwrap();
    drop(b);
    let mut b = desk.batch().unwrap();
    b.delete(d, true).unwrap();
    b.commit().unwrap();
    assert_eq!(index.names(), Some(1));
    let query = |pattern: &str| FindQuery {
        pattern: pattern.into(),
        mode: FindMode::Substring,
        limit: 100,
        after_id: 0,
    };
    for pattern in ["gamma", "alpha", "rolled", "beta", "never", "", "a"] {
        assert_eq!(
            index.find(&desk, &query(pattern)).unwrap(),
            desk.find(&query(pattern)).unwrap(),
            "{pattern}"
        );
    }
    assert_eq!(index.find(&desk, &query("gamma")).unwrap()[0].id, f);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// After any sequence of adds, renames and deletes, an index kept up to date by commits
    /// answers every mode exactly like a scan of the table, page by page.
    #[test]
    fn name_index_answers_like_a_table_scan(
        ops in proptest::collection::vec((0u8..3, 0u8..12, "[a-cA-C.*?]{0,4}"), 1..50),
        patterns in proptest::collection::vec(("[a-c.*?]{0,3}", 0u8..4, 1u32..4), 1..8),
    ) {
        let (_d, mut desk) = open_temp();
        let index = Arc::new(NameIndex::new());
        index.load(&desk).unwrap();
        index.index_trigrams();
        desk.attach_name_index(index.clone());
        for (op, slot, name) in ops {
            let name = format!("{name}{slot}");
            let mut b = desk.batch().unwrap();
            let existing = b.children(ROOT_ID).unwrap();
            match op {
                0 => { let _ = b.add(&file(ROOT_ID, name.as_bytes())); }
                1 => if let Some(o) = existing.get(slot as usize % existing.len().max(1)) {
                    let _ = b.step(|b| b.rename(o.id, ROOT_ID, name.as_bytes(), false));
                },
                _ => if let Some(o) = existing.get(slot as usize % existing.len().max(1)) {
                    b.delete(o.id, false).unwrap();
                },
            }
            b.commit().unwrap();
        }
        for (pattern, mode, limit) in patterns {
            let mode = [FindMode::Substring, FindMode::Prefix, FindMode::Glob, FindMode::Exact][mode as usize];
            let mut after_id = 0;
            loop {
                let q = FindQuery { pattern: pattern.clone(), mode, limit, after_id };
                let scanned = desk.find(&q).unwrap();
                prop_assert_eq!(&index.find(&desk, &q).unwrap(), &scanned);
                match scanned.last() {
                    Some(o) => after_id = o.id,
                    None => break,
                }
            }
        }
    }
}

#[test]
fn touch_log_records_committed_changes_only_while_recording() {
    let (_d, mut desk) = open_temp();
    let log = Arc::new(TouchLog::default());
    desk.attach_touch_log(log.clone());
    let before = add(&mut desk, file(ROOT_ID, b"before"));
    let untouched = add(&mut desk, file(ROOT_ID, b"untouched"));
    assert!(log.peek().is_empty(), "nothing is recorded before start");
    log.start();
    let a = add(&mut desk, file(ROOT_ID, b"a"));
    let d = add(&mut desk, dir(ROOT_ID, b"d"));
    let mut b = desk.batch().unwrap();
    b.rename(before, d, b"moved", false).unwrap();
    // A failed step is undone, and so is its record.
    let failed = b.step(|b| {
        b.set_info(untouched, &InfoUpdate::default())?;
        b.delete(999_999, false)
    });
    assert!(failed.is_err());
    b.commit().unwrap();
    // A batch rolled back (dropped) records nothing.
    let mut b = desk.batch().unwrap();
    b.set_info(untouched, &InfoUpdate::default()).unwrap();
    drop(b);
    let touched = log.take();
    let want: std::collections::HashSet<u32> = [a, d, before].into_iter().collect();
    assert_eq!(touched, want);
    add(&mut desk, file(ROOT_ID, b"after"));
    assert!(log.take().is_empty(), "take stops recording");
}

#[test]
fn rebuild_writes_keep_ids_places_and_the_counter_right() {
    let (_d, mut desk) = open_temp();
    let d = add(&mut desk, dir(ROOT_ID, b"d"));
    let a = add(&mut desk, file(ROOT_ID, b"a"));
    let sub = add(&mut desk, dir(d, b"sub"));
    let mut b = desk.batch().unwrap();
    // An ID from the disk, far above the counter: inserted as is, the counter follows.
    let restored = Object {
        id: 70_000,
        parent: d,
        name: b"restored".to_vec(),
        kind: Kind::File,
        dev: 1,
        ino: 9,
        type_code: *b"TEXT",
        creator: *b"ttxt",
        flags: 0,
        ctime: 0,
    };
    b.insert_with_id(&restored).unwrap();
    assert!(b.insert_with_id(&restored).is_err(), "the ID is taken now");
    assert!(b.allocate_id().unwrap() > 70_000);
    // Swap two names the way a rebuild does: park one, overwrite the other, then the first.
    let mut a_row = b.get(a).unwrap();
    let mut d_row = b.get(d).unwrap();
    b.park(a).unwrap();
    assert!(b.lookup(ROOT_ID, b"a").unwrap().is_none());
    d_row.name = b"a".to_vec();
    b.overwrite(&d_row).unwrap();
    a_row.name = b"d".to_vec();
    a_row.type_code = *b"APPL";
    b.overwrite(&a_row).unwrap();
    // A directory cannot go inside itself, nor onto a taken place.
    let mut d_into_sub = d_row.clone();
    d_into_sub.parent = sub;
    assert!(matches!(
        b.overwrite(&d_into_sub),
        Err(DbError::IntoItself(_))
    ));
    let mut clash = restored.clone();
    clash.name = b"sub".to_vec();
    assert!(matches!(b.overwrite(&clash), Err(DbError::Exists { .. })));
    b.commit().unwrap();
    assert_eq!(desk.lookup(ROOT_ID, b"a").unwrap().unwrap().id, d);
    let now_d = desk.lookup(ROOT_ID, b"d").unwrap().unwrap();
    assert_eq!((now_d.id, now_d.type_code), (a, *b"APPL"));
    assert_eq!(desk.get(70_000).unwrap(), restored);
    assert!(desk.quick_check().unwrap().is_empty());
}

#[test]
fn bulk_create_never_writes_through_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("elsewhere");
    let path = dir.path().join(".Desktop-rebuild");
    // A dangling link: `exists()` says no, and a plain open would create `elsewhere`.
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
    assert!(bulk::BulkLoad::create(&path).is_err());
    assert!(!elsewhere.exists(), "nothing made through the link");
    // A real new path works.
    std::fs::remove_file(&path).unwrap();
    let _bulk = bulk::BulkLoad::create(&path).unwrap();
    assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
}

#[test]
fn durability_changes_on_an_open_desktop() {
    let dir = tempfile::tempdir().unwrap();
    let (desk, _) = Desktop::open(&dir.path().join(".Desktop"), Durability::Normal).unwrap();
    assert_eq!(desk.durability().unwrap(), Durability::Normal);
    desk.set_durability(Durability::Full).unwrap();
    assert_eq!(desk.durability().unwrap(), Durability::Full);
    desk.set_durability(Durability::Normal).unwrap();
    assert_eq!(desk.durability().unwrap(), Durability::Normal);
}

#[test]
fn an_immutable_reader_needs_no_side_files_and_takes_any_name() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("a ?#%&=b");
    std::fs::create_dir(&odd).unwrap();
    let path = odd.join(".Desktop");
    let (d, _) = Desktop::open(&path, Durability::Normal).unwrap();
    d.close_clean().unwrap();
    assert!(!crate::wal_path(&path).exists());
    let r = Reader::open_immutable(&path).unwrap();
    assert_eq!(r.stats().unwrap().objects, 1, "the root");
    assert_eq!(r.meta("clean").unwrap(), Some(1));
    assert!(!crate::wal_path(&path).exists(), "no WAL made");
    assert!(!crate::shm_path(&path).exists(), "no -shm made");
}

#[test]
fn close_clean_leaves_an_empty_wal_and_a_clean_mark() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".Desktop");
    let (d, _) = Desktop::open(&path, Durability::Normal).unwrap();
    let reader = Reader::open(&path).unwrap();
    reader.stats().unwrap();
    d.close_clean().unwrap();
    // The reader keeps the WAL file; the checkpoint emptied it.
    assert_eq!(std::fs::metadata(crate::wal_path(&path)).unwrap().len(), 0);
    drop(reader);
    let (_, report) = Desktop::open(&path, Durability::Normal).unwrap();
    assert!(report.was_clean);
}

#[test]
fn a_desktop_that_cannot_be_created_is_an_io_error_not_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join(".Desktop");
    let err = match Desktop::open(&path, Durability::Normal) {
        Err(e) => e,
        Ok(_) => panic!("opened below a missing directory"),
    };
    assert!(matches!(err, DbError::Io { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("cannot create the desktop {}: ", path.display())),
        "{text}"
    );
    let err = match bulk::BulkLoad::create(&path) {
        Err(e) => e,
        Ok(_) => panic!("created below a missing directory"),
    };
    assert!(matches!(err, DbError::Io { op: "create", .. }), "{err:?}");
}

/// The `kind` column's numbers are the desktop format, apart from the wire's variant order.
#[test]
fn kinds_keep_their_stored_numbers() {
    for (kind, n) in [(Kind::File, 0), (Kind::Dir, 1), (Kind::Symlink, 2)] {
        assert_eq!(kind_to_sql(kind), n);
        assert_eq!(kind_from_sql(n), kind);
    }
    assert_eq!(kind_from_sql(7), Kind::File);
}

#[test]
fn a_reader_mapping_nothing_reads_the_same_and_its_limit_changes_only_between_snapshots() {
    let (dir, mut d) = open_temp();
    let a = add(&mut d, file(ROOT_ID, b"a"));
    let path = dir.path().join(".Desktop");
    let unmapped = Reader::open_mapped(&path, false, 0).unwrap();
    let mapped = Reader::open(&path).unwrap();
    assert_eq!(unmapped.get(a).unwrap().name, mapped.get(a).unwrap().name);
    let mmap = |r: &Reader| -> i64 {
        r.conn()
            .query_row("PRAGMA mmap_size", [], |row| row.get(0))
            .unwrap()
    };
    assert_eq!(mmap(&unmapped), 0);
    assert!(unmapped.set_mmap_size(1 << 20).unwrap());
    assert_eq!(mmap(&unmapped), 1 << 20);
    unmapped.begin_snapshot().unwrap();
    unmapped.get(a).unwrap();
    assert!(
        !unmapped.set_mmap_size(2 << 20).unwrap(),
        "refused in a snapshot"
    );
    unmapped.end_snapshot().unwrap();
    assert_eq!(mmap(&unmapped), 1 << 20);
    // Never more than one connection's limit (SQLite may cap it lower still).
    assert!(unmapped.set_mmap_size(u64::MAX).unwrap());
    assert!((2 << 20..=MMAP_SIZE).contains(&mmap(&unmapped)));
}

#[test]
fn the_name_index_counts_its_heap() {
    let (_dir, mut d) = open_temp();
    for i in 0..100 {
        add(&mut d, file(ROOT_ID, format!("name-{i}").as_bytes()));
    }
    let names = NameIndex::new();
    assert_eq!(names.heap_bytes(), 0);
    names.load(&d).unwrap();
    assert!(
        names.heap_bytes() >= 100 * "name-00".len() as u64,
        "{}",
        names.heap_bytes()
    );
}

// --- rebmem ---

#[test]
fn objects_come_one_at_a_time_as_all_objects_lists_them() {
    let (tmp, mut desk) = open_temp();
    let d = add(&mut desk, dir(ROOT_ID, b"d"));
    for name in [&b"b"[..], b"a", b"caf\xe9"] {
        add(&mut desk, file(d, name));
    }
    let reader = Reader::open_mapped(&tmp.path().join(".Desktop"), false, 0).unwrap();
    let mut one_by_one = Vec::new();
    reader.for_each_object(&mut |o| one_by_one.push(o)).unwrap();
    assert_eq!(one_by_one, reader.all_objects().unwrap());
    assert_eq!(reader.object_count().unwrap(), one_by_one.len() as u64);
    assert_eq!(one_by_one.len(), 5, "the root, d and three files");
    assert!(
        one_by_one.windows(2).all(|w| w[0].id < w[1].id),
        "in ID order"
    );
}

// --- i22tree: the counter is stored only by batches that hand out an ID ---

#[test]
fn a_batch_that_hands_out_no_id_leaves_the_stored_counter_and_reuses_no_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".Desktop");
    let (mut desk, _) = Desktop::open(&path, Durability::Normal).unwrap();
    let a = add(&mut desk, file(ROOT_ID, b"a"));
    let b_id = add(&mut desk, file(ROOT_ID, b"b"));
    let stored = |desk: &Desktop| meta_get(desk.conn(), "last_id").unwrap().unwrap();
    assert_eq!(stored(&desk), i64::from(b_id));
    // A batch rolled back after handing out an ID: the ID is gone with it, never stored.
    let mut rolled_back = desk.batch().unwrap();
    let (c, _) = rolled_back.add(&file(ROOT_ID, b"c")).unwrap();
    drop(rolled_back);
    // A batch that hands out none (a delete) commits without the counter's row.
    let mut b = desk.batch().unwrap();
    b.delete(b_id, false).unwrap();
    b.commit().unwrap();
    assert_eq!(stored(&desk), i64::from(b_id), "not written again");
    // The next ID is past the rolled-back one now, and past every stored one after a reopen.
    assert!(add(&mut desk, file(ROOT_ID, b"d")) > c.id);
    drop(desk);
    let (mut desk, _) = Desktop::open(&path, Durability::Normal).unwrap();
    let e = add(&mut desk, file(ROOT_ID, b"e"));
    assert!(e > c.id && e > a && e > b_id, "no ID handed out twice: {e}");
}
