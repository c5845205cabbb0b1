//! Issue 22: IDs follow objects moved outside deskd, stay with names through an exchange, and
//! a replaced name keeps its ID or not as the volume's `replaced` setting says. Driven through
//! a real `deskd serve` and the real `deskd netatalk` with requests as afpd sends them (traced
//! from afpd 3.2.0 under afptest), and through the real `dt`, also as nobody. Records are read
//! back through the bridge and with `sqlite3`. The cases in `netatalk_cases/ids.rs` run here
//! through the bridge (and in netatalk_inserve.rs through `deskd serve`'s own listener); the
//! tests below need no afpd. Their servers do not watch (`watch = "off"`): what a claim alone
//! may move is what they test, and the watcher would record the moves itself.

mod common;
#[path = "netatalk_cases/ids.rs"]
mod id_cases;

use common::*;

id_cases!(Via::Bridge);

/// As nobody, an object whose xattr mirror names another user's ID (which nobody can write on
/// its own file) gets an ID of its own: the record of that ID has the victim's inode. Even
/// with the victim's file moved away on disk (its old place empty), nothing moves.
#[test]
fn a_carried_id_naming_another_users_record_moves_nothing() {
    let mut env = Env::new(&["vol"]);
    env.serve_unwatched(&["vol"]);
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
    env.serve_unwatched(&["vol"]);
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
    env.serve_unwatched(&["vol"]);
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
    env.serve_unwatched(&["vol"]);
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
    env.serve_unwatched(&["vol"]);
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
    // No afpd here: the bridge is not needed.
    drop(id_cases::serve_replaced(&mut env, Via::Bridge, "new-id"));
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
