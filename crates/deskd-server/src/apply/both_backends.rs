//! The write handlers are written once, over `deskd_db::WriteBatch`: the same client requests
//! (files and folders added, renamed, moved and deleted on disk first, as a client does; Mac
//! records; a hint; refused claims) go through [`apply_write`] on an SQLite `Batch` and on a
//! PostgreSQL `PgBatch` of a volume made for the same folder, in lock step, so both see the same
//! disk. Their replies and the rows they leave must be equal.
//!
//! PostgreSQL is a throw-away cluster (`deskd_pg::test_cluster`); without one the test says it
//! skipped, except under CI, where it fails.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use deskd_db::{DbError, Desktop, Durability, Read, WriteBatch, ROOT_ID};
use deskd_pg::test_cluster::TestCluster;
use deskd_pg::{connect, ConnectOptions, PasswordSource, PgDesktop, VolumeKey};
use deskd_proto::{Request, Response};
use deskd_volume::Volume;

use super::*;
use crate::access::Access;

/// Each request in its own step, as the writer's isolated run: a refused request undoes
/// only its own changes and the others stay.
fn run<B: WriteBatch>(b: &mut B, vol: &Volume, requests: &[Request]) -> Vec<Reply> {
    let mut cache = DirCache::default();
    let mut replies = Vec::new();
    for request in requests {
        let mut reply = None;
        let stepped = b.step(|b| {
            let r = apply_write(
                b,
                vol,
                Policy::default(),
                request,
                &mut cache,
                &Access::Trusted,
            );
            let refused = r.is_err();
            reply = Some(r);
            if refused {
                return Err(DbError::Backend("refused: roll this request back".into()));
            }
            Ok(())
        });
        let reply = reply.expect("the step ran");
        assert_eq!(stepped.is_ok(), reply.is_ok(), "{request:?}: {stepped:?}");
        replies.push(reply);
    }
    replies
}

/// The same folder with a desktop on each back end.
struct Both {
    _dir: tempfile::TempDir,
    vol: Volume,
    sqlite: Desktop,
    pg: PgDesktop,
}

impl Both {
    /// One batch of `requests` on each back end, each committed; the replies, equal on both.
    fn batch(&mut self, requests: &[Request]) -> Vec<Reply> {
        let mut b = self.sqlite.batch().unwrap();
        let on_sqlite = run(&mut b, &self.vol, requests);
        b.commit().unwrap();
        let mut b = self.pg.batch().unwrap();
        let on_postgres = run(&mut b, &self.vol, requests);
        b.commit().unwrap();
        assert_eq!(on_sqlite, on_postgres, "replies differ for {requests:?}");
        on_sqlite
    }

    fn on_disk(&self, rel: &str) -> std::path::PathBuf {
        self.vol.root().join(rel)
    }

    /// A read request answered from each back end's desktop, equal on both.
    fn read(&self, request: Request) -> Reply {
        let names = NameIndex::new();
        let on_sqlite = apply_read(&self.sqlite, &self.vol, &names, &request, &Access::Trusted);
        let on_postgres = apply_read(&self.pg, &self.vol, &names, &request, &Access::Trusted);
        assert_eq!(on_sqlite, on_postgres, "{request:?}");
        on_sqlite
    }
}

fn add_path(path: &str, hint: Option<u32>, type_code: Option<[u8; 4]>) -> Request {
    Request::AddPath {
        vol: 0,
        path: path.into(),
        hint,
        type_code,
        creator: type_code.map(|_| *b"MyAp"),
        carried: None,
    }
}

/// `Add` of `name` in `parent` with the dev/ino of `on_disk` (plus `ino_offset`: a false
/// claim) and `hint`.
fn add(parent: u32, name: &str, on_disk: &Path, ino_offset: u64, hint: Option<u32>) -> Request {
    let m = std::fs::symlink_metadata(on_disk).unwrap();
    Request::Add {
        vol: 0,
        parent,
        name: name.into(),
        dev: m.dev(),
        ino: m.ino() + ino_offset,
        hint,
        type_code: None,
        creator: None,
        carried: None,
    }
}

fn id(reply: &Reply) -> u32 {
    match reply {
        Ok(Response::Object(o)) => o.id,
        other => panic!("expected an object, got {other:?}"),
    }
}

#[test]
fn the_write_handlers_answer_and_record_alike_on_sqlite_and_postgresql() {
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("vol")).unwrap();
    let vol = Volume::new(&dir.path().join("vol")).unwrap();
    let (sqlite, _) = Desktop::open(&dir.path().join("desktop"), Durability::Normal).unwrap();
    cluster.create_database("server");
    let options = ConnectOptions {
        target: cluster.url("server"),
        password: PasswordSource::File(cluster.password_file("pw-server", cluster.password())),
    };
    let key = VolumeKey {
        name: vol.root().display().to_string(),
        identity: 0x5e4e,
    };
    let (pg, _) = PgDesktop::open(connect(&options).unwrap(), &key, Durability::Normal).unwrap();
    let mut t = Both {
        _dir: dir,
        vol,
        sqlite,
        pg,
    };

    // Folders and files registered by path (the folders above on the way); an application.
    std::fs::create_dir_all(t.on_disk("Docs/Sub")).unwrap();
    for file in ["notes.md", "Docs/a.txt", "Docs/Sub/deep.txt", "App"] {
        std::fs::write(t.on_disk(file), file).unwrap();
    }
    std::fs::create_dir(t.on_disk("Pics")).unwrap();
    std::fs::write(t.on_disk("hinted.txt"), "").unwrap();
    let r = t.batch(&[
        add_path("Docs", None, None),
        add_path("notes.md", None, None),
        add_path("Docs/Sub/deep.txt", None, None),
        add_path("App", None, Some(*b"APPL")),
    ]);
    let (docs, notes, app) = (id(&r[0]), id(&r[1]), id(&r[3]));
    assert_eq!(docs, deskd_db::FIRST_ID);

    // By parent and name: a file, a folder, one with a free hint, the same file again
    // (lookup-or-add), and a false dev/ino claim (refused, the others kept).
    let r = t.batch(&[
        add(docs, "a.txt", &t.on_disk("Docs/a.txt"), 0, None),
        add(ROOT_ID, "Pics", &t.on_disk("Pics"), 0, None),
        add(
            ROOT_ID,
            "hinted.txt",
            &t.on_disk("hinted.txt"),
            0,
            Some(1000),
        ),
        add(docs, "a.txt", &t.on_disk("Docs/a.txt"), 0, None),
        add(ROOT_ID, "notes.md", &t.on_disk("notes.md"), 1, None),
    ]);
    let (a, pics, hinted) = (id(&r[0]), id(&r[1]), id(&r[2]));
    assert_eq!(hinted, 1000, "the free hint is honoured");
    assert_eq!(id(&r[3]), a);
    assert!(r[4].is_err(), "a claim the disk does not show: {:?}", r[4]);

    // Renamed and moved on disk first, then told; a rename the disk does not show is refused.
    std::fs::rename(t.on_disk("notes.md"), t.on_disk("notes2.md")).unwrap();
    std::fs::rename(t.on_disk("Docs/a.txt"), t.on_disk("Pics/a.txt")).unwrap();
    std::fs::rename(t.on_disk("Docs"), t.on_disk("Documents")).unwrap();
    let r = t.batch(&[
        Request::Rename {
            vol: 0,
            id: notes,
            new_parent: ROOT_ID,
            new_name: "notes2.md".into(),
            replace: false,
        },
        Request::RenamePath {
            vol: 0,
            from: "Docs/a.txt".into(),
            to: "Pics/a.txt".into(),
            replace: false,
            hint: None,
        },
        Request::Rename {
            vol: 0,
            id: docs,
            new_parent: ROOT_ID,
            new_name: "Documents".into(),
            replace: false,
        },
        Request::Rename {
            vol: 0,
            id: hinted,
            new_parent: pics,
            new_name: "not-moved.txt".into(),
            replace: false,
        },
    ]);
    assert!(r[..3].iter().all(|r| r.is_ok()), "{r:?}");
    assert!(r[3].is_err(), "{:?}", r[3]);

    // Mac records: Finder info, comments, APPL and icons; one on an ID that is not there.
    let r = t.batch(&[
        Request::SetInfo {
            vol: 0,
            id: a,
            type_code: Some(*b"TEXT"),
            creator: Some(*b"ttxt"),
            flags: Some(0x0100),
        },
        Request::CommentSet {
            vol: 0,
            id: a,
            text: b"read me \xff".to_vec(),
        },
        Request::CommentSet {
            vol: 0,
            id: notes,
            text: b"gone soon".to_vec(),
        },
        Request::CommentRemove { vol: 0, id: notes },
        Request::ApplAdd {
            vol: 0,
            creator: *b"ttxt",
            app_id: app,
            tag: 7,
        },
        Request::ApplRemove {
            vol: 0,
            creator: *b"MyAp",
            app_id: app,
        },
        Request::IconAdd {
            vol: 0,
            creator: *b"ttxt",
            type_code: *b"TEXT",
            itype: 1,
            tag: 3,
            bitmap: vec![1, 2, 3],
        },
        Request::IconAdd {
            vol: 0,
            creator: *b"ttxt",
            type_code: *b"TEXT",
            itype: 1,
            tag: 4,
            bitmap: vec![4, 5],
        },
        Request::SetInfo {
            vol: 0,
            id: 4242,
            type_code: Some(*b"TEXT"),
            creator: None,
            flags: None,
        },
    ]);
    assert!(r[..8].iter().all(|r| r.is_ok()), "{r:?}");
    assert!(r[8].is_err(), "{:?}", r[8]);

    // Removed on disk first, then told; a delete of what is still there is refused.
    std::fs::remove_file(t.on_disk("hinted.txt")).unwrap();
    std::fs::remove_dir_all(t.on_disk("Documents/Sub")).unwrap();
    let r = t.batch(&[
        Request::Delete {
            vol: 0,
            id: hinted,
            recursive: false,
        },
        Request::DeletePath {
            vol: 0,
            path: "Documents/Sub".into(),
            recursive: true,
        },
        Request::Delete {
            vol: 0,
            id: a,
            recursive: false,
        },
    ]);
    assert!(r[..2].iter().all(|r| r.is_ok()), "{r:?}");
    assert!(r[2].is_err(), "{:?}", r[2]);

    // What the client reads back, and every row, alike.
    for request in [
        Request::Resolve { vol: 0, id: a },
        Request::Children {
            vol: 0,
            dir: ROOT_ID,
        },
        Request::CommentGet { vol: 0, id: a },
        Request::ApplGet {
            vol: 0,
            creator: *b"ttxt",
        },
    ] {
        assert!(t.read(request).is_ok());
    }
    let rows = |db: &dyn Read| {
        let mut objects = db.all_objects().unwrap();
        objects.retain(|o| o.id != ROOT_ID); // each desktop's root is its own (made at open)
        (
            objects,
            db.all_comments().unwrap(),
            db.all_appl().unwrap(),
            db.all_icons().unwrap(),
            db.meta("last_id").unwrap(),
        )
    };
    let on_sqlite = rows(&t.sqlite);
    assert_eq!(on_sqlite, rows(&t.pg));
    let (objects, comments, appl, icons, last_id) = on_sqlite;
    // Sub (19) and its file (20) went with the folder, the hinted file by ID.
    assert_eq!(
        objects.iter().map(|o| o.id).collect::<Vec<_>>(),
        [docs, notes, app, a, pics],
        "{objects:?}"
    );
    assert_eq!(comments, [(a, b"read me \xff".to_vec())]);
    assert_eq!(appl.len(), 1, "{appl:?}");
    assert_eq!((icons.len(), icons[0].tag), (1, 4));
    assert_eq!(last_id, Some(1000));
}
