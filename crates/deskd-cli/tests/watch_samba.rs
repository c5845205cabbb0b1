//! Live tracking (issue 23) with a real Samba: Debian's smbd, started by the test as root on
//! 127.0.0.1 with a free high port and a share on the served volume, and smbclient renaming,
//! moving, deleting and uploading. After `deskd flush --volume VOL` (the barrier) the desktop
//! has the IDs `dt` would have left, the resource files moved along, and `deskd rebuild -s`
//! prints nothing.

mod common;
use common::*;
use std::path::PathBuf;

fn root(env: &Env) -> PathBuf {
    env.path("vol")
}

/// A served, watched volume with registered objects (dt) and smbd sharing it.
fn setup() -> (Env, Samba) {
    let mut env = Env::new(&["vol"]);
    env.serve_watched(&["vol"], "");
    dt_mkdir(&env, &["dir1/inner", "dir2"]);
    dt_touch(&env, &["a", "dir1/b", "dir1/c", "dir1/inner/d"]);
    dt_comment(&env, "dir1/b", "of b");
    env.watch_barrier("vol");
    let samba = Samba::start(env.dir.path(), &root(&env));
    (env, samba)
}

#[test]
fn smb_rename_move_and_delete_keep_the_desktop_right() {
    let (env, samba) = setup();
    let before = desktop_paths(&root(&env));

    samba.client("rename a a-renamed; rename dir1\\b dir2\\b; rename dir1\\inner dir2\\inner");
    env.watch_barrier("vol");
    // Deleted after the barrier: smbd's `delete veto files` removes the old folder's .rsrc
    // with it, which would take a resource file the watcher had not carried out yet.
    samba.client("del dir1\\c; rmdir dir1");
    env.watch_barrier("vol");

    let desktop = desktop_paths(&root(&env));
    assert_like_dt(&env, &desktop, "a-renamed", before["a"]);
    assert_like_dt(&env, &desktop, "dir2/b", before["dir1/b"]);
    assert_like_dt(&env, &desktop, "dir2/inner", before["dir1/inner"]);
    assert_like_dt(&env, &desktop, "dir2/inner/d", before["dir1/inner/d"]);
    assert_eq!(rsrc_comment(&env, "dir2/b"), "of b");
    for gone in ["a", "dir1", "dir1/b", "dir1/c", "dir1/inner"] {
        assert!(!desktop.contains_key(gone), "{gone} stayed: {desktop:?}");
    }
    assert!(!desktop.values().any(|&id| id == before["dir1/c"]));
    assert!(no_rsrc(&env, "a") && no_rsrc(&env, "dir1"));
    assert_eq!(env.id_of(&root(&env).join("dir2/b")), before["dir1/b"]);
    env.rebuild_scan_silent("vol");
    assert_eq!(env.watch_status("vol")["kind"], "fanotify");
}

#[test]
fn smb_upload_gets_an_id_and_an_upload_over_a_name_keeps_it() {
    let (env, samba) = setup();
    let before = desktop_paths(&root(&env));
    let last = desktop_counter(&root(&env));
    let local = env.path("upload.txt");
    std::fs::write(&local, b"uploaded over SMB").unwrap();
    let l = local.display();

    samba.client(&format!(
        "put {l} new.txt; mkdir newdir; put {l} newdir\\inside.txt; put {l} a"
    ));
    env.watch_barrier("vol");

    let desktop = desktop_paths(&root(&env));
    for rel in ["new.txt", "newdir", "newdir/inside.txt"] {
        let id = *desktop
            .get(rel)
            .unwrap_or_else(|| panic!("{rel}: {desktop:?}"));
        assert!(id > last, "{rel} got an old ID {id}");
        assert_like_dt(&env, &desktop, rel, id);
    }
    // smbd writes an existing file in place: the name keeps its ID.
    assert_like_dt(&env, &desktop, "a", before["a"]);
    assert_eq!(
        std::fs::read(root(&env).join("newdir/inside.txt")).unwrap(),
        b"uploaded over SMB"
    );
    assert_eq!(env.id_of(&root(&env).join("new.txt")), desktop["new.txt"]);
    env.rebuild_scan_silent("vol");
}
