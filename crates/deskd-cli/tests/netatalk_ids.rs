//! Issue 22: IDs follow objects moved outside deskd, stay with names through an exchange, and
//! a replaced name keeps its ID or not as the volume's `replaced` setting says. Driven through
//! a real `deskd serve` and the real `deskd netatalk` with requests as afpd sends them (traced
//! from afpd 3.2.0 under afptest), and through the real `dt`, also as nobody. Records are read
//! back through the bridge and with `sqlite3`.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use deskd_netatalk::wire::{self, op, res, Reply, Request};

/// `deskd serve` of the Env's "vol" with `replaced` set as given.
fn serve_replaced(env: &mut Env, replaced: &str) {
    let cfg = env.path("deskd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[volume.\"{}\"]\nreplaced = \"{replaced}\"\n",
            env.path("vol").display()
        ),
    )
    .unwrap();
    env.start(&["--config", cfg.to_str().unwrap()]);
}

/// An afpd connection to the volume at `path`, opened.
fn afpd(bridge: &Bridge, path: &Path) -> TcpStream {
    let mut s = bridge.afpd(path, b"Public");
    assert_eq!(
        call(&mut s, Request::new(op::OPEN, 0, 0, b"")).result,
        res::OK
    );
    s
}

fn call(s: &mut TcpStream, q: Request) -> Reply {
    s.write_all(&wire::encode_request(&q)).unwrap();
    wire::read_reply(s).unwrap()
}

/// ADD as afpd sends it: the object's dev/ino from stat, its type, and the CNID its
/// AppleDouble metadata carries (0: none). Returns the ID, requiring OK.
fn add(s: &mut TcpStream, path: &Path, did: u32, hint: u32) -> u32 {
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
fn get(s: &mut TcpStream, did: u32, name: &[u8]) -> Option<u32> {
    let r = call(s, Request::new(op::GET, 0, did, name));
    match r.result {
        res::OK => Some(r.cnid),
        res::NOTFOUND => None,
        other => panic!("GET answered {other}"),
    }
}

/// RESOLVE: the folder and name of `id` (None: NOTFOUND).
fn resolve(s: &mut TcpStream, id: u32) -> Option<(u32, Vec<u8>)> {
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

#[test]
fn a_file_renamed_or_moved_on_disk_keeps_its_id() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    let bridge = Bridge::start(&env, &[]);
    let mut s = afpd(&bridge, &env.path("vol"));
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

#[test]
fn a_folder_moved_on_disk_keeps_its_id_and_its_contents_follow() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    let bridge = Bridge::start(&env, &[]);
    let mut s = afpd(&bridge, &env.path("vol"));
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

#[test]
fn a_hard_link_gets_its_own_id_and_the_first_name_keeps_its_record() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    let bridge = Bridge::start(&env, &[]);
    let mut s = afpd(&bridge, &env.path("vol"));
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
fn exchange_keeps_ids_with_names(replaced: &str) {
    let mut env = Env::new(&["vol"]);
    serve_replaced(&mut env, replaced);
    let bridge = Bridge::start(&env, &[]);
    let mut s = afpd(&bridge, &env.path("vol"));
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

#[test]
fn an_exchange_keeps_ids_with_names_when_replaced_keeps_ids() {
    exchange_keeps_ids_with_names("keep-id");
}

#[test]
fn an_exchange_keeps_ids_with_names_when_replaced_gives_new_ids() {
    exchange_keeps_ids_with_names("new-id");
}

/// T2 test235: a file replaced locally (create file1, unlink file, rename file1 to file), then
/// afpd's ADD without a hint (file1 never had AppleDouble metadata).
fn replace_locally(env: &Env, s: &mut TcpStream) -> (u32, u32) {
    std::fs::write(env.path("vol/file"), b"old").unwrap();
    let old = add(s, &env.path("vol/file"), 2, 0);
    std::fs::write(env.path("vol/file1"), b"new").unwrap();
    std::fs::remove_file(env.path("vol/file")).unwrap();
    std::fs::rename(env.path("vol/file1"), env.path("vol/file")).unwrap();
    (old, add(s, &env.path("vol/file"), 2, 0))
}

#[test]
fn a_name_replaced_on_disk_keeps_its_id_with_keep_id() {
    let mut env = Env::new(&["vol"]);
    serve_replaced(&mut env, "keep-id");
    let bridge = Bridge::start(&env, &[]);
    let mut s = afpd(&bridge, &env.path("vol"));
    let (old, new) = replace_locally(&env, &mut s);
    assert_eq!(new, old);
}

#[test]
fn a_name_replaced_on_disk_gets_a_new_id_with_new_id_and_the_old_one_is_retired() {
    let mut env = Env::new(&["vol"]);
    serve_replaced(&mut env, "new-id");
    let bridge = Bridge::start(&env, &[]);
    let mut s = afpd(&bridge, &env.path("vol"));
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

#[test]
fn a_name_made_again_after_its_object_was_removed_does_not_keep_the_record() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    let bridge = Bridge::start(&env, &[]);
    let mut s = afpd(&bridge, &env.path("vol"));
    std::fs::write(env.path("vol/thing"), b"x").unwrap();
    let thing = add(&mut s, &env.path("vol/thing"), 2, 0);
    std::fs::write(env.path("vol/other"), b"x").unwrap();
    let other = add(&mut s, &env.path("vol/other"), 2, 0);
    // The records' inodes were recorded a while ago (a file born in the same second cannot be
    // told from the recorded one: the file system may give it the same inode number).
    drop(s);
    drop(bridge);
    env.term();
    sqlite3(
        &env.path("vol/.Desktop"),
        "UPDATE objects SET ctime = ctime - 10",
    );
    env.serve(&["vol"]);
    let bridge = Bridge::start(&env, &[]);
    let mut s = afpd(&bridge, &env.path("vol"));
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

/// As nobody, an object whose xattr mirror names another user's ID (which nobody can write on
/// its own file) gets an ID of its own: the record of that ID has the victim's inode. Even
/// with the victim's file moved away on disk (its old place empty), nothing moves.
#[test]
fn a_carried_id_naming_another_users_record_moves_nothing() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    std::fs::create_dir(env.path("vol/nobodys")).unwrap();
    std::os::unix::fs::chown(env.path("vol/nobodys"), Some(65534), Some(65534)).unwrap();
    // Registered by root: nobody may not write the resource file of a name in the root.
    env.id_of(&env.path("vol/nobodys"));
    std::fs::write(env.path("vol/victim"), b"secret").unwrap();
    std::os::unix::fs::chown(env.path("vol/victim"), Some(1000), Some(1000)).unwrap();
    let victim = env.id_of(&env.path("vol/victim"));
    std::fs::rename(env.path("vol/victim"), env.path("vol/victim moved")).unwrap();

    std::fs::write(env.path("vol/nobodys/mine"), b"mine").unwrap();
    std::os::unix::fs::chown(env.path("vol/nobodys/mine"), Some(65534), Some(65534)).unwrap();
    if deskd_volume::write_id_xattr(&env.path("vol/nobodys/mine"), victim).is_err()
        || deskd_volume::read_id_xattr(&env.path("vol/nobodys/mine")) != Some(victim)
    {
        return skip("no user xattrs on the temp dir's file system");
    }
    let Some(out) = env.as_nobody(
        DT,
        &[
            b"info",
            b"--json",
            env.path("vol/nobodys/mine").as_os_str().as_encoded_bytes(),
        ],
    ) else {
        return skip("not root: cannot run dt as nobody");
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_ne!(info["id"].as_u64().unwrap() as u32, victim);
    let paths = desktop_paths(&env.path("vol"));
    assert_eq!(paths.get("victim"), Some(&victim));
    assert_ne!(paths.get("nobodys/mine"), Some(&victim));
    // The victim's own file, where it went, is still the victim's record (root's dt follows
    // the move by the file's xattr mirror).
    assert_eq!(env.id_of(&env.path("vol/victim moved")), victim);
}

/// The same rule serves dt: a plain `mv` on disk of a file dt registered (its xattr mirror
/// moves with it), then `dt info` at the new path as an ordinary user: the same ID.
#[test]
fn dt_follows_a_plain_mv_by_the_xattr_mirror_as_an_ordinary_user() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    // nobody's own folder (registered by root, whose resource files are in the root).
    std::fs::create_dir_all(env.path("vol/home/sub")).unwrap();
    for p in ["vol/home", "vol/home/sub"] {
        std::os::unix::fs::chown(env.path(p), Some(65534), Some(65534)).unwrap();
    }
    env.id_of(&env.path("vol/home"));
    std::fs::write(env.path("vol/home/report"), b"r").unwrap();
    std::os::unix::fs::chown(env.path("vol/home/report"), Some(65534), Some(65534)).unwrap();
    let info_as_nobody = |rel: &str| id_as_nobody(&env, rel);
    let Some(id) = info_as_nobody("vol/home/report") else {
        return skip("not root: cannot run dt as nobody");
    };
    if deskd_volume::read_id_xattr(&env.path("vol/home/report")) != Some(id) {
        return skip("no user xattrs on the temp dir's file system");
    }
    std::fs::rename(
        env.path("vol/home/report"),
        env.path("vol/home/sub/report 2"),
    )
    .unwrap();
    assert_eq!(info_as_nobody("vol/home/sub/report 2"), Some(id));
    // The audit trail says what happened, and who asked.
    env.wait_for_log(
        &format!("move id {id} from \"home/report\" to \"home/sub/report 2\" (found by its inode)"),
        1,
    );
    let line = env
        .log_text()
        .lines()
        .find(|l| l.contains(&format!("move id {id} ")))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("deskd::audit") && line.contains("uid 65534"),
        "{line}"
    );
    let paths = desktop_paths(&env.path("vol"));
    assert_eq!(paths.get("home/sub/report 2"), Some(&id));
    assert_eq!(paths.get("home/report"), None);
}

/// `replaced` is taken at a SIGHUP, without reopening the volume.
#[test]
fn replaced_changes_at_a_sighup() {
    let mut env = Env::new(&["vol"]);
    serve_replaced(&mut env, "keep-id");
    let bridge = Bridge::start(&env, &[]);
    let mut s = afpd(&bridge, &env.path("vol"));
    let (old, new) = replace_locally(&env, &mut s);
    assert_eq!(new, old);
    std::fs::write(
        env.path("deskd.toml"),
        format!(
            "[defaults]\nreplaced = \"new-id\"\n[volume.\"{}\"]\n",
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

/// `dt info --json PATH` as nobody: the ID, or None when this test cannot run dt as nobody.
fn id_as_nobody(env: &Env, rel: &str) -> Option<u32> {
    let out = env.as_nobody(
        DT,
        &[
            b"info",
            b"--json",
            env.path(rel).as_os_str().as_encoded_bytes(),
        ],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    Some(info["id"].as_u64().unwrap() as u32)
}

/// A file system gives a freed inode number to the next new file: an object born after its
/// record's inode was recorded is a newer file that got the number, not the recorded object,
/// and is not followed (else a user whose new file got the number of a deleted file of root's,
/// and who wrote root's ID into its xattr, would take that ID). Shown here by making the
/// record older than its object, as a reused number's record is.
#[test]
fn a_newer_file_with_a_recorded_inode_number_is_not_followed() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    std::fs::create_dir(env.path("vol/pub")).unwrap();
    std::fs::set_permissions(
        env.path("vol/pub"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    env.id_of(&env.path("vol/pub"));
    std::fs::write(env.path("vol/pub/bait"), b"b").unwrap();
    std::os::unix::fs::chown(env.path("vol/pub/bait"), Some(65534), Some(65534)).unwrap();
    let id = env.id_of(&env.path("vol/pub/bait"));
    if deskd_volume::read_id_xattr(&env.path("vol/pub/bait")) != Some(id) {
        return skip("no user xattrs on the temp dir's file system");
    }
    env.term();
    // The record's inode was recorded long before the object on disk was born.
    sqlite3(
        &env.path("vol/.Desktop"),
        &format!("UPDATE objects SET ctime = 1000 WHERE id = {id}"),
    );
    env.serve(&["vol"]);
    std::fs::rename(env.path("vol/pub/bait"), env.path("vol/pub/taken")).unwrap();
    // (nobody writes the resource files of its own files)
    std::os::unix::fs::chown(env.path("vol/pub/.rsrc"), Some(65534), Some(65534)).unwrap();
    let Some(got) = id_as_nobody(&env, "vol/pub/taken") else {
        return skip("not root: cannot run dt as nobody");
    };
    assert_ne!(got, id);
    // Nor for root: it is the object that is not the recorded one.
    std::fs::rename(env.path("vol/pub/taken"), env.path("vol/pub/again")).unwrap();
    std::fs::remove_file(env.path("vol/pub/.rsrc/taken")).ok();
    assert_ne!(env.id_of(&env.path("vol/pub/again")), id);
    assert!(!env.log_text().contains(&format!("move id {id} ")));
}

/// A user who could not have made a move (no write to the record's old folder) does not make
/// deskd follow it; root, who made it, does.
#[test]
fn a_move_out_of_a_folder_the_asker_cannot_write_is_followed_only_for_whoever_could() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    std::fs::create_dir(env.path("vol/staff")).unwrap(); // root's, 0755
    std::fs::create_dir(env.path("vol/pub")).unwrap();
    std::fs::set_permissions(
        env.path("vol/pub"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    // nobody's file in root's folder: nobody may not move it out.
    std::fs::write(env.path("vol/staff/memo"), b"m").unwrap();
    std::os::unix::fs::chown(env.path("vol/staff/memo"), Some(65534), Some(65534)).unwrap();
    let id = env.id_of(&env.path("vol/staff/memo"));
    if deskd_volume::read_id_xattr(&env.path("vol/staff/memo")) != Some(id) {
        return skip("no user xattrs on the temp dir's file system");
    }
    env.id_of(&env.path("vol/pub"));
    std::fs::rename(env.path("vol/staff/memo"), env.path("vol/pub/memo")).unwrap();
    // dt as nobody registers it without its ID (nobody cannot write staff/ ...
    let Some(got) = id_as_nobody(&env, "vol/pub/memo") else {
        return skip("not root: cannot run dt as nobody");
    };
    assert_ne!(got, id);
    let paths = desktop_paths(&env.path("vol"));
    assert_eq!(paths.get("staff/memo"), Some(&id));
    // ... while a move root can have made is followed when root asks.
    std::fs::write(env.path("vol/staff/note"), b"n").unwrap();
    let note = env.id_of(&env.path("vol/staff/note"));
    std::fs::rename(env.path("vol/staff/note"), env.path("vol/pub/note")).unwrap();
    assert_eq!(env.id_of(&env.path("vol/pub/note")), note);
}

/// With `replaced = "new-id"`, retiring the ID of a replaced file is a change to its folder:
/// a user who may only read the folder does not retire root's ID by looking first.
#[test]
fn a_reader_of_a_folder_does_not_retire_an_id_with_new_id() {
    let mut env = Env::new(&["vol"]);
    serve_replaced(&mut env, "new-id");
    std::fs::create_dir(env.path("vol/docs")).unwrap(); // root's, 0755
    std::fs::write(env.path("vol/docs/budget"), b"v1").unwrap();
    let id = env.id_of(&env.path("vol/docs/budget"));
    // Saved by replace (a new inode at the name), then looked at by nobody first.
    std::fs::write(env.path("vol/docs/.budget.tmp"), b"v2").unwrap();
    std::fs::rename(
        env.path("vol/docs/.budget.tmp"),
        env.path("vol/docs/budget"),
    )
    .unwrap();
    // A registration by path, as nobody, naming no ID (deskd-bench's AddPath).
    let socket = env.socket.as_os_str().as_encoded_bytes().to_vec();
    let vol = env.path("vol").as_os_str().as_encoded_bytes().to_vec();
    let Some(out) = env.as_nobody(
        BENCH,
        &[
            b"--socket",
            &socket,
            b"--volume",
            &vol,
            b"access-latency",
            b"--dir",
            b"docs",
            b"--ops",
            b"1",
        ],
    ) else {
        return skip("not root: cannot run a client as nobody");
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!env.log_text().contains(&format!("retired id {id}")));
    let paths = desktop_paths(&env.path("vol"));
    assert_eq!(paths.get("docs/budget"), Some(&id));
    // Root, who may change the folder, retires it.
    std::fs::write(env.path("vol/docs/.budget.tmp"), b"v3").unwrap();
    std::fs::rename(
        env.path("vol/docs/.budget.tmp"),
        env.path("vol/docs/budget"),
    )
    .unwrap();
    std::fs::remove_file(env.path("vol/docs/.rsrc/budget")).ok();
    assert_ne!(env.id_of(&env.path("vol/docs/budget")), id);
}

/// A DELETE held for an exchange goes at most 50 ms after it was held, however many requests
/// the peer sends meanwhile: an afpd (or anyone at the port) repeating DELETEs cannot keep a
/// record alive for a name made again, nor grow the bridge's list.
#[test]
fn a_flood_of_deletes_does_not_hold_a_record_forever() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    let bridge = Bridge::start(&env, &[]);
    let mut s = afpd(&bridge, &env.path("vol"));
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
    let mut watcher = afpd(&bridge, &env.path("vol"));
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
