//! Issue 22: IDs follow objects moved outside deskd, stay with names through an exchange, and
//! a replaced name keeps its ID or not as the volume's `replaced` setting says. Requests as
//! afpd sends them (traced from afpd 3.2.0 under afptest), read back through the listener and
//! with `sqlite3`. Each case takes the listener it runs through: `netatalk_ids.rs` runs them
//! through the standalone bridge, `netatalk_inserve.rs` through `deskd serve`'s own listener.

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::common::*;
use deskd_netatalk::wire::{self, op, res, Reply, Request};

/// The `#[test]`s of these cases, each run through afpd's listener `$via`.
#[macro_export]
macro_rules! id_cases {
    ($via:expr) => {
        #[test]
        fn a_file_renamed_or_moved_on_disk_keeps_its_id() {
            id_cases::a_file_renamed_or_moved_on_disk_keeps_its_id($via)
        }
        #[test]
        fn a_folder_moved_on_disk_keeps_its_id_and_its_contents_follow() {
            id_cases::a_folder_moved_on_disk_keeps_its_id_and_its_contents_follow($via)
        }
        #[test]
        fn a_hard_link_gets_its_own_id_and_the_first_name_keeps_its_record() {
            id_cases::a_hard_link_gets_its_own_id_and_the_first_name_keeps_its_record($via)
        }
        #[test]
        fn an_exchange_keeps_ids_with_names_when_replaced_keeps_ids() {
            id_cases::an_exchange_keeps_ids_with_names_when_replaced_keeps_ids($via)
        }
        #[test]
        fn an_exchange_keeps_ids_with_names_when_replaced_gives_new_ids() {
            id_cases::an_exchange_keeps_ids_with_names_when_replaced_gives_new_ids($via)
        }
        #[test]
        fn a_name_replaced_on_disk_keeps_its_id_with_keep_id() {
            id_cases::a_name_replaced_on_disk_keeps_its_id_with_keep_id($via)
        }
        #[test]
        fn a_name_replaced_on_disk_gets_a_new_id_with_new_id_and_the_old_one_is_retired() {
            id_cases::a_name_replaced_on_disk_gets_a_new_id_with_new_id_and_the_old_one_is_retired(
                $via,
            )
        }
        #[test]
        fn a_name_made_again_after_its_object_was_removed_does_not_keep_the_record() {
            id_cases::a_name_made_again_after_its_object_was_removed_does_not_keep_the_record($via)
        }
        #[test]
        fn replaced_changes_at_a_sighup() {
            id_cases::replaced_changes_at_a_sighup($via)
        }
        #[test]
        fn a_flood_of_deletes_does_not_hold_a_record_forever() {
            id_cases::a_flood_of_deletes_does_not_hold_a_record_forever($via)
        }
    };
}

/// `deskd serve` of the Env's "vol" with `replaced` set as given, and afpd's listener `via`.
pub fn serve_replaced(env: &mut Env, via: Via, replaced: &str) -> Cnid {
    let config = format!(
        "[volume.\"{}\"]
replaced = \"{replaced}\"
",
        env.path("vol").display()
    );
    env.serve_cnid(via, &[], &config, None)
}

/// An afpd connection to the volume at `path`, opened.
pub fn afpd(cnid: &Cnid, path: &Path) -> TcpStream {
    let mut s = cnid.afpd(path, b"Public");
    assert_eq!(
        call(&mut s, Request::new(op::OPEN, 0, 0, b"")).result,
        res::OK
    );
    s
}

pub fn call(s: &mut TcpStream, q: Request) -> Reply {
    s.write_all(&wire::encode_request(&q)).unwrap();
    wire::read_reply(s).unwrap()
}

/// ADD as afpd sends it: the object's dev/ino from stat, its type, and the CNID its
/// AppleDouble metadata carries (0: none). Returns the ID, requiring OK.
pub fn add(s: &mut TcpStream, path: &Path, did: u32, hint: u32) -> u32 {
    let m = std::fs::symlink_metadata(path).unwrap();
    let r = call(
        s,
        Request {
            op: op::ADD,
            cnid: hint,
            dev: m.dev(),
            ino: m.ino(),
            kind: m.is_dir() as u32,
            did,
            name: path.file_name().unwrap().as_encoded_bytes().to_vec(),
        },
    );
    assert_eq!(r.result, res::OK, "ADD {}", path.display());
    r.cnid
}

/// GET: the ID registered as `name` in `did` (None: NOTFOUND). Registers nothing.
pub fn get(s: &mut TcpStream, did: u32, name: &[u8]) -> Option<u32> {
    let r = call(s, Request::new(op::GET, 0, did, name));
    match r.result {
        res::OK => Some(r.cnid),
        res::NOTFOUND => None,
        other => panic!("GET answered {other}"),
    }
}

/// RESOLVE: the folder and name of `id` (None: NOTFOUND).
pub fn resolve(s: &mut TcpStream, id: u32) -> Option<(u32, Vec<u8>)> {
    let r = call(s, Request::new(op::RESOLVE, id, 0, b""));
    match r.result {
        res::OK => {
            let name = r.payload[28..].split(|&b| b == 0).next().unwrap().to_vec();
            Some((r.did, name))
        }
        res::NOTFOUND => None,
        other => panic!("RESOLVE answered {other}"),
    }
}

pub fn a_file_renamed_or_moved_on_disk_keeps_its_id(via: Via) {
    let mut env = Env::new(&["vol"]);
    let cnid = env.serve_cnid(via, &["vol"], "", None);
    let mut s = afpd(&cnid, &env.path("vol"));
    std::fs::write(env.path("vol/t331 file"), b"x").unwrap();
    let file = add(&mut s, &env.path("vol/t331 file"), 2, 0);

    // T2 test331: rename(2) on disk, then afpd's ADD with the CNID of the file's metadata.
    std::fs::rename(
        env.path("vol/t331 file"),
        env.path("vol/t331 file new name"),
    )
    .unwrap();
    assert_eq!(
        add(&mut s, &env.path("vol/t331 file new name"), 2, file),
        file
    );
    assert_eq!(get(&mut s, 2, b"t331 file"), None);
    assert_eq!(
        resolve(&mut s, file),
        Some((2, b"t331 file new name".to_vec()))
    );

    // Moved to another folder on disk: the same ID there.
    std::fs::create_dir(env.path("vol/other")).unwrap();
    let other = add(&mut s, &env.path("vol/other"), 2, 0);
    std::fs::rename(
        env.path("vol/t331 file new name"),
        env.path("vol/other/moved"),
    )
    .unwrap();
    assert_eq!(add(&mut s, &env.path("vol/other/moved"), other, file), file);
    assert_eq!(resolve(&mut s, file), Some((other, b"moved".to_vec())));
    assert_eq!(
        desktop_paths(&env.path("vol")).get("other/moved"),
        Some(&file)
    );

    // `cnid dev = no` (dev 0 in the ADD: the server reads the object from disk) follows too.
    std::fs::rename(env.path("vol/other/moved"), env.path("vol/other/again")).unwrap();
    let r = call(
        &mut s,
        Request {
            ino: std::fs::metadata(env.path("vol/other/again"))
                .unwrap()
                .ino(),
            ..Request::new(op::ADD, file, other, b"again")
        },
    );
    assert_eq!((r.result, r.cnid), (res::OK, file));
}

pub fn a_folder_moved_on_disk_keeps_its_id_and_its_contents_follow(via: Via) {
    let mut env = Env::new(&["vol"]);
    let cnid = env.serve_cnid(via, &["vol"], "", None);
    let mut s = afpd(&cnid, &env.path("vol"));
    std::fs::create_dir_all(env.path("vol/folder/inner")).unwrap();
    std::fs::write(env.path("vol/folder/inner/doc"), b"d").unwrap();
    let folder = add(&mut s, &env.path("vol/folder"), 2, 0);
    let inner = add(&mut s, &env.path("vol/folder/inner"), folder, 0);
    let doc = add(&mut s, &env.path("vol/folder/inner/doc"), inner, 0);
    std::fs::create_dir(env.path("vol/archive")).unwrap();
    let archive = add(&mut s, &env.path("vol/archive"), 2, 0);

    std::fs::rename(env.path("vol/folder"), env.path("vol/archive/folder 2024")).unwrap();
    assert_eq!(
        add(
            &mut s,
            &env.path("vol/archive/folder 2024"),
            archive,
            folder
        ),
        folder
    );
    // Everything below followed: the same IDs by name, and their paths are the new ones.
    assert_eq!(get(&mut s, folder, b"inner"), Some(inner));
    assert_eq!(get(&mut s, inner, b"doc"), Some(doc));
    let paths = desktop_paths(&env.path("vol"));
    assert_eq!(paths.get("archive/folder 2024/inner/doc"), Some(&doc));
    assert_eq!(paths.get("folder"), None);
    assert_eq!(
        add(
            &mut s,
            &env.path("vol/archive/folder 2024/inner/doc"),
            inner,
            doc
        ),
        doc
    );
}

pub fn a_hard_link_gets_its_own_id_and_the_first_name_keeps_its_record(via: Via) {
    let mut env = Env::new(&["vol"]);
    let cnid = env.serve_cnid(via, &["vol"], "", None);
    let mut s = afpd(&cnid, &env.path("vol"));
    std::fs::write(env.path("vol/first"), b"x").unwrap();
    let first = add(&mut s, &env.path("vol/first"), 2, 0);
    // The second name carries the first's metadata (the same inode), but the first name still
    // holds the inode: not a move.
    std::fs::hard_link(env.path("vol/first"), env.path("vol/second")).unwrap();
    let second = add(&mut s, &env.path("vol/second"), 2, first);
    assert_ne!(second, first);
    assert_eq!(get(&mut s, 2, b"first"), Some(first));
    assert_eq!(resolve(&mut s, first), Some((2, b"first".to_vec())));
    assert_eq!(resolve(&mut s, second), Some((2, b"second".to_vec())));
}

/// FPExchangeFiles as afpd 3.2.0 does it (spectest test108 and others): the contents swapped
/// on disk by renames, DELETE of both IDs (both names still exist), UPDATE of each ID at its
/// own name with the other inode, then ADDs with the IDs at their own names. The IDs stay with
/// the names, whatever `replaced` says.
pub fn exchange_keeps_ids_with_names(via: Via, replaced: &str) {
    let mut env = Env::new(&["vol"]);
    let cnid = serve_replaced(&mut env, via, replaced);
    let mut s = afpd(&cnid, &env.path("vol"));
    std::fs::create_dir(env.path("vol/dir")).unwrap();
    let dir = add(&mut s, &env.path("vol/dir"), 2, 0);
    std::fs::write(env.path("vol/dir/one"), b"1").unwrap();
    std::fs::write(env.path("vol/dir/two"), b"2").unwrap();
    let one = add(&mut s, &env.path("vol/dir/one"), dir, 0);
    let two = add(&mut s, &env.path("vol/dir/two"), dir, 0);

    std::fs::rename(env.path("vol/dir/one"), env.path("vol/dir/swap")).unwrap();
    std::fs::rename(env.path("vol/dir/two"), env.path("vol/dir/one")).unwrap();
    std::fs::rename(env.path("vol/dir/swap"), env.path("vol/dir/two")).unwrap();
    for id in [one, two] {
        let r = call(&mut s, Request::new(op::DELETE, id, 0, b""));
        assert_eq!(r.result, res::OK, "DELETE {id}");
    }
    for (id, name) in [(two, "two"), (one, "one")] {
        let m = std::fs::metadata(env.path(&format!("vol/dir/{name}"))).unwrap();
        let r = call(
            &mut s,
            Request {
                dev: m.dev(),
                ino: m.ino(),
                ..Request::new(op::UPDATE, id, dir, name.as_bytes())
            },
        );
        assert_eq!((r.result, r.cnid), (res::OK, id), "UPDATE {id}");
    }
    assert_eq!(add(&mut s, &env.path("vol/dir/one"), dir, one), one);
    assert_eq!(add(&mut s, &env.path("vol/dir/two"), dir, two), two);
    assert_eq!(get(&mut s, dir, b"one"), Some(one));
    assert_eq!(get(&mut s, dir, b"two"), Some(two));
    // The records now have the swapped inodes: an ADD without a hint finds the same IDs.
    assert_eq!(add(&mut s, &env.path("vol/dir/one"), dir, 0), one);
    assert_eq!(add(&mut s, &env.path("vol/dir/two"), dir, 0), two);
}

pub fn an_exchange_keeps_ids_with_names_when_replaced_keeps_ids(via: Via) {
    exchange_keeps_ids_with_names(via, "keep-id");
}

pub fn an_exchange_keeps_ids_with_names_when_replaced_gives_new_ids(via: Via) {
    exchange_keeps_ids_with_names(via, "new-id");
}

/// T2 test235: a file replaced locally (create file1, unlink file, rename file1 to file), then
/// afpd's ADD without a hint (file1 never had AppleDouble metadata).
pub fn replace_locally(env: &Env, s: &mut TcpStream) -> (u32, u32) {
    std::fs::write(env.path("vol/file"), b"old").unwrap();
    let old = add(s, &env.path("vol/file"), 2, 0);
    std::fs::write(env.path("vol/file1"), b"new").unwrap();
    std::fs::remove_file(env.path("vol/file")).unwrap();
    std::fs::rename(env.path("vol/file1"), env.path("vol/file")).unwrap();
    (old, add(s, &env.path("vol/file"), 2, 0))
}

pub fn a_name_replaced_on_disk_keeps_its_id_with_keep_id(via: Via) {
    let mut env = Env::new(&["vol"]);
    let cnid = serve_replaced(&mut env, via, "keep-id");
    let mut s = afpd(&cnid, &env.path("vol"));
    let (old, new) = replace_locally(&env, &mut s);
    assert_eq!(new, old);
}

pub fn a_name_replaced_on_disk_gets_a_new_id_with_new_id_and_the_old_one_is_retired(via: Via) {
    let mut env = Env::new(&["vol"]);
    let cnid = serve_replaced(&mut env, via, "new-id");
    let mut s = afpd(&cnid, &env.path("vol"));
    let (old, new) = replace_locally(&env, &mut s);
    assert_ne!(new, old);
    env.wait_for_log(&format!("(retired id {old}, replaced = new-id)"), 1);
    assert_eq!(resolve(&mut s, old), None);
    assert_eq!(get(&mut s, 2, b"file"), Some(new));
    // The old ID is never handed out again: not to the next objects, not when asked for
    // through the metadata an object carries.
    for i in 0..3 {
        let path = env.path(&format!("vol/more{i}"));
        std::fs::write(&path, b"m").unwrap();
        assert_ne!(add(&mut s, &path, 2, old), old);
    }
    // A replace that says it is the same object (dt's save keeps the ID in the xattr mirror,
    // afpd's exchange in the metadata) keeps the name's ID also with new-id.
    std::fs::write(env.path("vol/file1"), b"newer").unwrap();
    std::fs::rename(env.path("vol/file1"), env.path("vol/file")).unwrap();
    assert_eq!(add(&mut s, &env.path("vol/file"), 2, new), new);
    // A registered file renamed over another on disk: the object it is keeps its ID there (as
    // cnid_dbd finds it by dev/ino), the name's old record goes.
    std::fs::write(env.path("vol/mover"), b"m").unwrap();
    let mover = add(&mut s, &env.path("vol/mover"), 2, 0);
    std::fs::rename(env.path("vol/mover"), env.path("vol/file")).unwrap();
    assert_eq!(add(&mut s, &env.path("vol/file"), 2, mover), mover);
    assert_eq!(resolve(&mut s, new), None);
    assert_eq!(get(&mut s, 2, b"mover"), None);
}

pub fn a_name_made_again_after_its_object_was_removed_does_not_keep_the_record(via: Via) {
    let mut env = Env::new(&["vol"]);
    let cnid = env.serve_cnid(via, &["vol"], "", None);
    let mut s = afpd(&cnid, &env.path("vol"));
    std::fs::write(env.path("vol/thing"), b"x").unwrap();
    let thing = add(&mut s, &env.path("vol/thing"), 2, 0);
    std::fs::write(env.path("vol/other"), b"x").unwrap();
    let other = add(&mut s, &env.path("vol/other"), 2, 0);
    // The records' inodes were recorded a while ago (a file born in the same second cannot be
    // told from the recorded one: the file system may give it the same inode number).
    drop(s);
    drop(cnid);
    env.term();
    sqlite3(
        &env.path("vol/.Desktop"),
        "UPDATE objects SET ctime = ctime - 10",
    );
    let cnid = env.serve_cnid(via, &["vol"], "", None);
    let mut s = afpd(&cnid, &env.path("vol"));
    // A file made again at the name (another user squatting it) does not keep the record
    // through DELETE: the new file cannot take the removed one's ID.
    std::fs::remove_file(env.path("vol/thing")).unwrap();
    std::fs::write(env.path("vol/thing"), b"y").unwrap();
    let r = call(&mut s, Request::new(op::DELETE, thing, 0, b""));
    assert_eq!(r.result, res::OK);
    assert_eq!(get(&mut s, 2, b"thing"), None);
    assert_eq!(resolve(&mut s, thing), None);
    // Nor does a folder made there.
    std::fs::remove_file(env.path("vol/other")).unwrap();
    std::fs::create_dir(env.path("vol/other")).unwrap();
    let r = call(&mut s, Request::new(op::DELETE, other, 0, b""));
    assert_eq!(r.result, res::OK);
    assert_eq!(resolve(&mut s, other), None);
}

/// `replaced` is taken at a SIGHUP, without reopening the volume.
pub fn replaced_changes_at_a_sighup(via: Via) {
    let mut env = Env::new(&["vol"]);
    let cnid = serve_replaced(&mut env, via, "keep-id");
    let mut s = afpd(&cnid, &env.path("vol"));
    let (old, new) = replace_locally(&env, &mut s);
    assert_eq!(new, old);
    std::fs::write(
        env.path("deskd.toml"),
        format!(
            "[defaults]\nreplaced = \"new-id\"\nwatch = \"off\"\n[volume.\"{}\"]\n",
            env.path("vol").display()
        ),
    )
    .unwrap();
    env.sighup(1);
    std::fs::remove_file(env.path("vol/file")).unwrap();
    let (old, new) = replace_locally(&env, &mut s);
    assert_ne!(new, old);
    assert!(!env.log_text().contains("reopened"), "{}", env.log_text());
}

/// A DELETE held for an exchange goes at most 50 ms after it was held, however many requests
/// the peer sends meanwhile: an afpd (or anyone at the port) repeating DELETEs cannot keep a
/// record alive for a name made again, nor grow the bridge's list.
pub fn a_flood_of_deletes_does_not_hold_a_record_forever(via: Via) {
    let mut env = Env::new(&["vol"]);
    let cnid = env.serve_cnid(via, &["vol"], "", None);
    let mut s = afpd(&cnid, &env.path("vol"));
    std::fs::write(env.path("vol/name"), b"old").unwrap();
    let old = add(&mut s, &env.path("vol/name"), 2, 0);
    // Another object at the name (a new inode: made before the old one goes).
    std::fs::write(env.path("vol/name.new"), b"new").unwrap();
    std::fs::rename(env.path("vol/name.new"), env.path("vol/name")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // OK while held or kept; NOTFOUND once the record is gone.
                let r = call(&mut s, Request::new(op::DELETE, old, 0, b"")).result;
                assert!(r == res::OK || r == res::NOTFOUND, "DELETE answered {r}");
            }
        })
    };
    // Another connection sees the record go while the DELETEs keep coming.
    let mut watcher = afpd(&cnid, &env.path("vol"));
    let began = std::time::Instant::now();
    while resolve(&mut watcher, old).is_some() {
        assert!(
            began.elapsed() < std::time::Duration::from_secs(10),
            "the record stayed while DELETEs kept coming"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.join().unwrap();
}
