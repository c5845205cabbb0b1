//! The mapping of watched changes onto the desktop and the disk, driven through a volume's
//! writer as the watcher thread drives it ([`thread::process`]), with [`Change`]s made by hand.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use deskd_db::Read;
use deskd_volume::rsrc;
use deskd_watch::{Batch, Change};

use super::*;
use crate::config::Replaced;
use crate::test_support::config_for;

/// A served volume in a temp dir, with a watcher entry fed by hand.
struct Vol {
    _dir: tempfile::TempDir,
    root: PathBuf,
    handle: Arc<VolumeHandle>,
    running: Arc<Running>,
    rebuilds: rebuild::Registry,
}

impl Vol {
    fn new() -> Vol {
        Vol::with(Replaced::KeepId)
    }

    fn with(replaced: Replaced) -> Vol {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vol");
        fs::create_dir(&root).unwrap();
        let root = fs::canonicalize(&root).unwrap();
        let mut config = config_for(&root);
        config.replaced = replaced;
        let handle = VolumeHandle::open(0, config).unwrap();
        let opened = kernel::Opened {
            source: None,
            stopper: None,
            kind: "inotify",
            note: None,
        };
        let running = Arc::new(Running::new(
            handle.opening,
            WatchMode::Auto,
            Limits::of(&handle.config),
            opened,
        ));
        Vol {
            _dir: dir,
            root,
            handle,
            running,
            rebuilds: rebuild::Registry::default(),
        }
    }

    /// Apply `changes` as one batch, as the watcher thread does.
    fn feed(&self, changes: Vec<Change>) {
        let batch = Batch {
            changes,
            oldest: Some(std::time::Instant::now()),
            ..Batch::default()
        };
        thread::process(&self.running, &self.handle, &self.rebuilds, batch, false);
    }

    fn id(&self, path: &str) -> Option<u32> {
        let r = self.handle.open_reader().unwrap();
        let names: Vec<&[u8]> = path.split('/').map(str::as_bytes).collect();
        r.id_of_path(&names).unwrap()
    }

    fn last_id(&self) -> u32 {
        let r = self.handle.open_reader().unwrap();
        r.stats().unwrap().last_id
    }

    fn rsrc_id(&self, path: &str) -> Option<u32> {
        let p = rsrc::rsrc_path(&self.root.join(path)).unwrap();
        rsrc::read_header(&p).unwrap().map(|h| h.id)
    }

    fn p(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }
}

fn created(path: &str) -> Change {
    Change::Created {
        path: path.into(),
        dir: false,
    }
}

fn moved(from: &str, to: &str) -> Change {
    Change::Moved {
        from: from.into(),
        to: to.into(),
        dir: false,
    }
}

/// Whether this file system keeps user xattrs (the mirror is skipped where it does not).
fn xattrs(dir: &Path) -> bool {
    let probe = dir.join(".probe");
    fs::write(&probe, b"").unwrap();
    let ok = deskd_volume::write_id_xattr(&probe, 7).is_ok()
        && deskd_volume::read_id_xattr(&probe) == Some(7);
    fs::remove_file(&probe).unwrap();
    ok
}

#[test]
fn a_new_file_gets_an_id_its_resource_file_and_mirror() {
    let v = Vol::new();
    fs::write(v.p("a.txt"), b"x").unwrap();
    v.feed(vec![created("a.txt")]);
    let id = v.id("a.txt").expect("registered");
    assert_eq!(v.rsrc_id("a.txt"), Some(id));
    if xattrs(&v.root) {
        assert_eq!(deskd_volume::read_id_xattr(&v.p("a.txt")), Some(id));
    }
    let f = v.running.figures.lock().unwrap();
    assert_eq!((f.events, f.applied), (1, 1));
    drop(f);
    // Seen again (dt registered it too, or a second event): nothing changes.
    v.feed(vec![created("a.txt")]);
    assert_eq!(v.id("a.txt"), Some(id));
    assert_eq!(v.running.figures.lock().unwrap().applied, 1);
}

#[test]
fn a_file_gone_before_the_batch_is_applied_burns_no_id() {
    let v = Vol::new();
    let before = v.last_id();
    v.feed(vec![created("tmp.1"), created("dir/tmp.2")]);
    assert_eq!(v.last_id(), before);
    assert_eq!(v.id("tmp.1"), None);
}

#[test]
fn a_moved_file_keeps_its_id_and_its_resource_file_follows() {
    let v = Vol::new();
    fs::create_dir(v.p("d")).unwrap();
    fs::write(v.p("a"), b"x").unwrap();
    v.feed(vec![created("d"), created("a")]);
    let id = v.id("a").unwrap();
    fs::rename(v.p("a"), v.p("d/b")).unwrap();
    v.feed(vec![moved("a", "d/b")]);
    assert_eq!(v.id("d/b"), Some(id));
    assert_eq!(v.id("a"), None);
    assert_eq!(v.rsrc_id("d/b"), Some(id));
    assert!(
        !v.p(".rsrc/a").exists(),
        "the resource file was carried, not copied"
    );
    // The same move seen again (dt mv recorded it first): a no-op.
    v.feed(vec![moved("a", "d/b")]);
    assert_eq!(v.id("d/b"), Some(id));
}

#[test]
fn a_rename_within_a_folder_keeps_its_id_and_a_name_still_there_is_a_second_name() {
    // The old name is checked on the folder the walk to the new one holds (stop 42): the
    // same answers as the walk from the root, in one folder and across two.
    let v = Vol::new();
    fs::create_dir_all(v.p("d/e")).unwrap();
    fs::write(v.p("d/a"), b"x").unwrap();
    fs::write(v.p("d/k"), b"y").unwrap();
    v.feed(vec![
        created("d"),
        created("d/e"),
        created("d/a"),
        created("d/k"),
    ]);
    let (a, k) = (v.id("d/a").unwrap(), v.id("d/k").unwrap());
    fs::rename(v.p("d/a"), v.p("d/b")).unwrap();
    v.feed(vec![moved("d/a", "d/b")]);
    assert_eq!((v.id("d/b"), v.id("d/a")), (Some(a), None));
    assert_eq!(v.rsrc_id("d/b"), Some(a));
    assert!(!v.p("d/.rsrc/a").exists(), "carried, not copied");
    // A move whose old name holds the inode again (a hard link made, then renamed): the new
    // name is a second name with its own ID, the old keeps its record, in one folder...
    fs::hard_link(v.p("d/k"), v.p("d/l")).unwrap();
    v.feed(vec![moved("d/k", "d/l")]);
    assert_eq!(v.id("d/k"), Some(k));
    let l = v.id("d/l").expect("the second name registered");
    assert_ne!(l, k);
    // ... and across two.
    fs::hard_link(v.p("d/k"), v.p("d/e/m")).unwrap();
    v.feed(vec![moved("d/k", "d/e/m")]);
    assert_eq!(v.id("d/k"), Some(k));
    let m = v.id("d/e/m").expect("the second name registered");
    assert!(m != k && m != l);
}

#[test]
fn a_move_seen_only_as_a_new_folder_or_a_create_carries_the_resource_file() {
    let v = Vol::new();
    fs::create_dir(v.p("a")).unwrap();
    fs::write(v.p("a/f"), b"x").unwrap();
    fs::write(v.p("g"), b"y").unwrap();
    v.feed(vec![created("a"), created("g")]);
    let (f, g) = (v.id("a/f").unwrap(), v.id("g").unwrap());
    let header = fs::read(v.p("a/.rsrc/f")).unwrap();
    // The folder `b` made and `a/f` moved into it before the watcher read either event: the
    // batch holds only `b`'s create (the kernel's move event came with the next read).
    fs::create_dir(v.p("b")).unwrap();
    fs::rename(v.p("a/f"), v.p("b/f")).unwrap();
    // A create and the move of its object in one batch, coalesced into a create at the end.
    fs::rename(v.p("g"), v.p("h")).unwrap();
    v.feed(vec![created("b"), created("h")]);
    assert_eq!(v.id("b/f"), Some(f));
    assert_eq!(v.id("h"), Some(g));
    assert_eq!(fs::read(v.p("b/.rsrc/f")).unwrap(), header, "carried whole");
    assert!(!v.p("a/.rsrc/f").exists() && !v.p(".rsrc/g").exists());
    assert_eq!(v.rsrc_id("h"), Some(g));
}

#[test]
fn a_create_a_later_move_replaced_in_the_batch_is_not_a_save() {
    let v = Vol::new();
    fs::write(v.p("x"), b"x").unwrap();
    fs::write(v.p("y"), b"y").unwrap();
    v.feed(vec![created("x"), created("y")]);
    let x = v.id("x").unwrap();
    fs::rename(v.p("x"), v.p("y")).unwrap();
    // `y`'s create (a client made it just before) and `mv x y`, in one batch: the moved
    // object keeps its ID whatever the batch says first, as `dt mv` does... unless `x` is a
    // temporary the watcher registered moments ago, which `x` here is: a save.
    v.feed(vec![created("y"), moved("x", "y")]);
    assert_eq!(v.id("x"), None);
    assert!(v.id("y").is_some());
    assert_ne!(
        v.id("y"),
        Some(x),
        "a temporary the watcher registered is a save"
    );
}

#[test]
fn a_name_moved_over_keeps_its_id_under_keep_id_and_the_mover_s_under_new_id() {
    for (replaced, keeps_target) in [(Replaced::KeepId, true), (Replaced::NewId, false)] {
        let v = Vol::with(replaced);
        fs::write(v.p("doc"), b"old").unwrap();
        fs::write(v.p("doc.tmp"), b"new").unwrap();
        v.feed(vec![created("doc"), created("doc.tmp")]);
        let (doc, tmp) = (v.id("doc").unwrap(), v.id("doc.tmp").unwrap());
        fs::rename(v.p("doc.tmp"), v.p("doc")).unwrap();
        v.feed(vec![moved("doc.tmp", "doc")]);
        let expected = if keeps_target { doc } else { tmp };
        assert_eq!(v.id("doc"), Some(expected), "{replaced:?}");
        assert_eq!(v.id("doc.tmp"), None);
        assert_eq!(v.rsrc_id("doc"), Some(expected), "{replaced:?}");
        assert!(!v.p(".rsrc/doc.tmp").exists(), "{replaced:?}");
        // The record describes the inode now at the name.
        let r = v.handle.open_reader().unwrap();
        let o = r.get(expected).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(o.ino, fs::metadata(v.p("doc")).unwrap().ino());
    }
}

#[test]
fn a_removal_drops_the_record_and_resource_file_only_once_the_disk_shows_it() {
    let v = Vol::new();
    fs::create_dir_all(v.p("d/e")).unwrap();
    fs::write(v.p("d/e/f"), b"x").unwrap();
    v.feed(vec![Change::Created {
        path: "d".into(),
        dir: true,
    }]);
    let f = v.id("d/e/f").expect("the subtree is registered");
    assert_eq!(v.rsrc_id("d/e/f"), Some(f));
    // Still on disk: an event that says otherwise changes nothing.
    v.feed(vec![Change::Removed {
        path: "d/e/f".into(),
        dir: false,
    }]);
    assert_eq!(v.id("d/e/f"), Some(f));
    fs::remove_dir_all(v.p("d")).unwrap();
    v.feed(vec![Change::Removed {
        path: "d".into(),
        dir: true,
    }]);
    assert_eq!(v.id("d"), None);
    assert_eq!(v.id("d/e/f"), None);
    assert!(!v.p(".rsrc/d").exists());
}

#[test]
fn a_copy_with_its_original_s_claim_gets_a_new_id_and_its_claim_rewritten() {
    let v = Vol::new();
    fs::write(v.p("a"), b"x").unwrap();
    v.feed(vec![created("a")]);
    let a = v.id("a").unwrap();
    // cp -a: the copy carries the original's mirror (and here its resource file too).
    fs::write(v.p("b"), b"x").unwrap();
    let has_xattrs = xattrs(&v.root);
    if has_xattrs {
        deskd_volume::write_id_xattr(&v.p("b"), a).unwrap();
    }
    fs::copy(v.p(".rsrc/a"), v.p(".rsrc/b")).unwrap();
    v.feed(vec![created("b")]);
    let b = v.id("b").unwrap();
    assert_ne!(a, b);
    assert_eq!(v.id("a"), Some(a));
    assert_eq!(v.rsrc_id("b"), Some(b));
    if has_xattrs {
        assert_eq!(deskd_volume::read_id_xattr(&v.p("b")), Some(b));
    }
}

#[test]
fn a_claim_above_the_counter_is_never_taken() {
    let v = Vol::new();
    if !xattrs(&v.root) {
        return;
    }
    fs::write(v.p("greedy"), b"x").unwrap();
    deskd_volume::write_id_xattr(&v.p("greedy"), 0xFFFF_0000).unwrap();
    v.feed(vec![created("greedy")]);
    let id = v.id("greedy").unwrap();
    assert!(id < 1000, "{id}");
    assert!(v.last_id() < 1000);
}

#[test]
fn a_dead_id_claimed_by_another_users_file_is_not_given() {
    let v = Vol::new();
    if !xattrs(&v.root) || !rustix::process::geteuid().is_root() {
        return;
    }
    fs::write(v.p("old"), b"x").unwrap();
    v.feed(vec![created("old")]);
    let dead = v.id("old").unwrap();
    fs::remove_file(v.p("old")).unwrap();
    v.feed(vec![Change::Removed {
        path: "old".into(),
        dir: false,
    }]);
    assert_eq!(v.id("old"), None);
    // nobody's file names the dead ID in its mirror: a fresh ID, not the dead one.
    fs::write(v.p("nobodys"), b"x").unwrap();
    std::os::unix::fs::chown(v.p("nobodys"), Some(65534), Some(65534)).unwrap();
    deskd_volume::write_id_xattr(&v.p("nobodys"), dead).unwrap();
    v.feed(vec![created("nobodys")]);
    assert_ne!(v.id("nobodys"), Some(dead));
    // root's own restored file may take it back (a restore).
    fs::write(v.p("restored"), b"x").unwrap();
    deskd_volume::write_id_xattr(&v.p("restored"), dead).unwrap();
    v.feed(vec![created("restored")]);
    assert_eq!(v.id("restored"), Some(dead));
}

#[test]
fn a_rescan_registers_what_is_there_and_drops_what_is_gone() {
    let v = Vol::new();
    fs::create_dir(v.p("d")).unwrap();
    fs::write(v.p("d/old"), b"x").unwrap();
    v.feed(vec![Change::Created {
        path: "d".into(),
        dir: true,
    }]);
    let old = v.id("d/old").unwrap();
    // Events lost: old moved to new, another file came.
    fs::rename(v.p("d/old"), v.p("d/new")).unwrap();
    fs::rename(v.p("d/.rsrc/old"), v.p("d/.rsrc/new")).unwrap();
    fs::write(v.p("d/more"), b"y").unwrap();
    v.feed(vec![Change::Rescan { path: "d".into() }]);
    assert_eq!(v.id("d/old"), None);
    assert!(v.id("d/more").is_some());
    if xattrs(&v.root) {
        // The mirror carried the ID: the move is followed.
        assert_eq!(v.id("d/new"), Some(old));
    } else {
        assert!(v.id("d/new").is_some());
    }
}

#[test]
fn names_that_are_not_utf8_or_long_are_tracked() {
    use std::os::unix::ffi::OsStrExt;
    let v = Vol::new();
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9 \xff");
    let long = "n".repeat(255);
    fs::write(v.root.join(odd), b"x").unwrap();
    fs::write(v.p(&long), b"x").unwrap();
    v.feed(vec![
        Change::Created {
            path: PathBuf::from(odd),
            dir: false,
        },
        created(&long),
    ]);
    let r = v.handle.open_reader().unwrap();
    let id = r
        .id_of_path(&[b"caf\xe9 \xff".as_slice()])
        .unwrap()
        .unwrap();
    assert_eq!(v.rsrc_id(&long), v.id(&long));
    let p = rsrc::rsrc_path(&v.root.join(odd)).unwrap();
    assert_eq!(rsrc::read_header(&p).unwrap().unwrap().id, id);
}

#[test]
fn a_folder_swapped_for_a_link_leads_no_write_outside_the_volume() {
    let v = Vol::new();
    let outside = v._dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::create_dir(v.p("d")).unwrap();
    fs::write(v.p("d/f"), b"x").unwrap();
    // Registered in the desktop, then the folder is swapped for a link before the disk work.
    let batch = vec![created("d"), created("d/f")];
    let outcome = v
        .handle
        .ask(|tx| crate::writer::Job::Watch(batch, false, tx))
        .unwrap();
    assert_eq!(outcome.disk.len(), 2, "{:?}", outcome.disk);
    fs::rename(v.p("d"), v.p("d.real")).unwrap();
    fs::write(outside.join("f"), b"victim").unwrap();
    std::os::unix::fs::symlink(&outside, v.p("d")).unwrap();
    let done = disk::apply(&v.handle.volume, &outcome.disk);
    assert!(!outside.join(".rsrc").exists(), "wrote through the link");
    // Refused, never followed: the stamp waits for the desktop to say where `f` went.
    assert_eq!(done.moved_on.len(), 2, "{done:?}");
    // And a change naming a path through the link registers nothing there.
    v.feed(vec![created("d/f")]);
    let r = v.handle.open_reader().unwrap();
    let d = v.id("d").unwrap();
    assert_eq!(
        r.get(d).unwrap().kind,
        deskd_db::Kind::Dir,
        "the record is not made a link"
    );
    assert!(!outside.join(".rsrc").exists());
}

#[test]
fn an_overflow_is_counted() {
    let v = Vol::new();
    // Read-only rebuild registry: the rescan thread starts the repair; the count is at once.
    let batch = Batch {
        overflow: true,
        ..Batch::default()
    };
    thread::process(&v.running, &v.handle, &v.rebuilds, batch, false);
    // Three drops past watch_held_mib between two reads, and the kernel's overflow: four
    // losses (the newcomer review of stop 40 saw three drops counted as one).
    let batch = Batch {
        overflow: true,
        losses: deskd_watch::Losses {
            kernel: 1,
            held: 3,
            queue_limit: 0,
        },
        ..Batch::default()
    };
    thread::process(&v.running, &v.handle, &v.rebuilds, batch, false);
    let f = v.running.figures.lock().unwrap();
    assert_eq!(f.overflows, 1 + 4);
    assert!(f.last_overflow.is_some());
    assert_eq!(
        f.rescan.as_ref().map(|r| r.reason.as_str()),
        Some("overflow")
    );
}

#[test]
fn the_watcher_keeps_its_read_connection_until_it_is_stopped() {
    let v = Vol::new();
    fs::write(v.p("a"), b"").unwrap();
    v.feed(vec![created("a")]);
    assert!(v.id("a").is_some());
    assert!(
        v.running.reader.lock().unwrap().is_some(),
        "opened for the known creates, and kept for the next batch"
    );
    stop_running(&v.running);
    assert!(
        v.running.reader.lock().unwrap().is_none(),
        "no read connection past the stop: the desktop is closed next"
    );
}

/// Hostile review of stop 40: a folder held by [`disk::apply`] across items, then renamed away
/// by its owner while the batch's later items run. Its work list: a stamp in `share/a` whose
/// object was replaced (it holds `share/a` and nothing below), padding, then an unstamp of
/// `share/a/y`. Meanwhile the owner of `share` (a drop folder) renames `a` away and another
/// user's folder `c` to `a`: the unstamp checks `y` in the held (old) folder, where it is gone,
/// but resolves `.rsrc/y` from the root, in the other user's folder, and removes it.
fn held_folder_race(swap: impl Fn(&Vol) + Send + Sync + 'static) -> (Vol, disk::Done) {
    use std::os::unix::fs::MetadataExt;
    let v = Vol::new();
    for d in ["share", "share/a", "share/c", "share/c/.rsrc", "share/pad"] {
        fs::create_dir(v.p(d)).unwrap();
    }
    fs::write(v.p("share/a/z"), b"z").unwrap();
    fs::write(v.p("share/a/w"), b"w").unwrap();
    fs::write(v.p("share/c/y"), b"victim's file").unwrap();
    let victim_rsrc = v.p("share/c/.rsrc/y");
    rsrc::write_header(
        &victim_rsrc,
        &rsrc::ResourceHeader::new(77, *b"TEXT", *b"ttxt", 0),
    )
    .unwrap();
    let names = |p: &str| -> Vec<Vec<u8>> { p.split('/').map(|n| n.as_bytes().to_vec()).collect() };
    let stamp = |p: &str, dev: u64, ino: u64| crate::apply::watched::DiskWork::Stamp {
        path: names(p),
        id: 1000,
        dev,
        ino,
        kind: deskd_db::Kind::File,
        type_code: *b"TEXT",
        creator: *b"ttxt",
        ctime: 0,
    };
    let w = fs::metadata(v.p("share/a/w")).unwrap();
    let mut work = vec![stamp("share/a/z", 0, 0)]; // replaced: MovedOn, `share/a` held
    for i in 0..100_000 {
        work.push(crate::apply::watched::DiskWork::Unstamp {
            path: names(&format!("share/pad/q{i}")),
        });
    }
    work.push(crate::apply::watched::DiskWork::Unstamp {
        path: names("share/a/y"),
    });
    work.push(stamp("share/a/w", w.dev(), w.ino()));
    let v = Arc::new(v);
    let swapper = {
        let v = Arc::clone(&v);
        let swap = Arc::new(swap);
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            swap(&v);
        })
    };
    let done = disk::apply(&v.handle.volume, &work);
    swapper.join().unwrap();
    (Arc::into_inner(v).unwrap(), done)
}

#[test]
fn hostile40_a_held_folder_swapped_mid_batch_unstamps_another_folders_resource_file() {
    let (v, _done) = held_folder_race(|v| {
        fs::rename(v.p("share/a"), v.p("share/b")).unwrap();
        fs::rename(v.p("share/c"), v.p("share/a")).unwrap();
    });
    // The victim's folder is now `share/a`; its `y` never left.
    assert!(v.p("share/a/y").exists());
    assert!(
        v.p("share/a/.rsrc/y").exists(),
        "the server removed the resource file of another user's file that is still there"
    );
}

#[test]
fn hostile40_a_held_folder_moved_out_of_the_volume_mid_batch_gets_no_write() {
    let (v, _done) = held_folder_race(|v| {
        fs::rename(v.p("share/a"), v._dir.path().join("moved-out")).unwrap();
    });
    let out = v._dir.path().join("moved-out");
    assert!(out.join("w").exists());
    assert!(
        !out.join(".rsrc").exists(),
        "the server wrote a resource file outside the volume"
    );
}

fn moved_dir(from: &str, to: &str) -> Change {
    Change::Moved {
        from: from.into(),
        to: to.into(),
        dir: true,
    }
}

/// Stop 44: a batch of renames walks a folder once and keeps its record (`crate::folders`);
/// the batch's own move of that folder, a removal and a rename over a taken name in between
/// let them go, and every rename lands on the right record.
#[test]
fn renames_in_one_batch_through_a_folder_held_follow_its_own_move_and_removals() {
    let v = Vol::new();
    fs::create_dir(v.p("d")).unwrap();
    for n in ["a", "b", "c", "x", "y"] {
        fs::write(v.p(&format!("d/{n}")), n).unwrap();
    }
    v.feed(
        ["d", "d/a", "d/b", "d/c", "d/x", "d/y"]
            .map(created)
            .to_vec(),
    );
    let ids: Vec<u32> = ["a", "b", "c", "x", "y"]
        .iter()
        .map(|n| v.id(&format!("d/{n}")).unwrap())
        .collect();
    let d = v.id("d").unwrap();
    // a → a2 in d; d → e; b → b2 in e; y over x (x's record goes); c → c2.
    fs::rename(v.p("d/a"), v.p("d/a2")).unwrap();
    fs::rename(v.p("d"), v.p("e")).unwrap();
    fs::rename(v.p("e/b"), v.p("e/b2")).unwrap();
    fs::rename(v.p("e/y"), v.p("e/x")).unwrap();
    fs::rename(v.p("e/c"), v.p("e/c2")).unwrap();
    v.feed(vec![
        moved("d/a", "d/a2"),
        moved_dir("d", "e"),
        moved("e/b", "e/b2"),
        moved("e/y", "e/x"),
        moved("e/c", "e/c2"),
    ]);
    assert_eq!(v.id("e"), Some(d), "the folder kept its ID");
    assert_eq!(v.id("e/a2"), Some(ids[0]));
    assert_eq!(v.id("e/b2"), Some(ids[1]));
    assert_eq!(v.id("e/c2"), Some(ids[2]));
    assert_eq!(v.id("e/x"), Some(ids[4]), "y took the name x over");
    for (name, id) in [
        ("a2", ids[0]),
        ("b2", ids[1]),
        ("c2", ids[2]),
        ("x", ids[4]),
    ] {
        assert_eq!(v.rsrc_id(&format!("e/{name}")), Some(id), "e/{name}");
    }
    let r = v.handle.open_reader().unwrap();
    assert!(
        matches!(r.get(ids[3]), Err(deskd_db::DbError::NoSuchId(_))),
        "the replaced x's record is gone"
    );
    for gone in ["d/a", "e/b", "e/c", "e/y", "d"] {
        assert_eq!(v.id(gone), None, "{gone}");
    }
}

/// The stamp after a carry (stop 44): a carried resource file whose object carries the
/// record's ID in its mirror is left as it came; one whose mirror is not the ID (a stamp the
/// move cut short: the header written, the object moved before the mirror) is stamped in full
/// at the new place.
#[test]
fn a_carry_finishes_a_stamp_the_move_cut_short() {
    use std::os::unix::fs::MetadataExt;
    let v = Vol::new();
    if !xattrs(&v.root) {
        // No mirror on this file system: nothing to finish. CI's has them: never skipped there.
        assert!(
            std::env::var_os("CI").is_none(),
            "the temp dir keeps no user xattrs"
        );
        return;
    }
    fs::create_dir_all(v.p("d/.rsrc")).unwrap();
    let names = |p: &str| -> Vec<Vec<u8>> { p.split('/').map(|n| n.as_bytes().to_vec()).collect() };
    let header = rsrc::ResourceHeader::new(1000, *b"TEXT", *b"ttxt", 0);
    for n in ["whole", "cut"] {
        fs::write(v.p(&format!("d/{n}")), n).unwrap();
        rsrc::write_header(&v.p(&format!("d/.rsrc/{n}")), &header).unwrap();
    }
    deskd_volume::write_id_xattr(&v.p("d/whole"), 1000).unwrap();
    let mut work = Vec::new();
    for n in ["whole", "cut"] {
        let to = format!("d/{n}-moved");
        fs::rename(v.p(&format!("d/{n}")), v.p(&to)).unwrap();
        let m = fs::metadata(v.p(&to)).unwrap();
        work.push(crate::apply::watched::DiskWork::Carry {
            from: names(&format!("d/{n}")),
            from_folder: None,
            stamp: Box::new(crate::apply::watched::DiskWork::Stamp {
                path: names(&to),
                id: 1000,
                dev: m.dev(),
                ino: m.ino(),
                kind: deskd_db::Kind::File,
                type_code: *b"TEXT",
                creator: *b"ttxt",
                ctime: 0,
            }),
            onto_free: false,
        });
    }
    let done = disk::apply(&v.handle.volume, &work);
    assert!(
        done.errors.is_empty() && done.moved_on.is_empty(),
        "{done:?}"
    );
    for n in ["whole-moved", "cut-moved"] {
        assert_eq!(v.rsrc_id(&format!("d/{n}")), Some(1000), "{n}: carried");
        assert_eq!(
            deskd_volume::read_id_xattr(&v.p(&format!("d/{n}"))),
            Some(1000),
            "{n}: its mirror"
        );
    }
    assert!(!v.p("d/.rsrc/whole").exists() && !v.p("d/.rsrc/cut").exists());
}

/// Hostile review of stop 44: a carry whose source folder moved on in the batch
/// (`Carried::SourceGone`) is retried from where the desktop says that folder is, by the old
/// name; but another object took that name in the same batch (`mv d/a d/b; mv d e;
/// mv e/c e/a`), so the resource file found there is that other object's. It was carried to
/// `e/b` (and, the mirror of `e/b` being its ID, never rewritten): `e/b` got `c`'s header
/// and `e/a` lost its resource file. The old code stamped `e/b` afresh and left `e/a` alone.
#[test]
fn hostile44_a_source_gone_carry_takes_the_resource_file_of_the_object_that_took_the_name() {
    names_taken_in_one_batch(
        &["d", "d/a", "d/c"],
        &[("d/a", "d/b"), ("d", "e"), ("e/c", "e/a")],
        &[("d/a", "e/b"), ("d/c", "e/a")],
    );
}

/// The same with the target folder gone (`Carried::TargetGone`, retried from the old name
/// after the batch): `mv a d/c; mv d e; mv x a` carries `x`'s resource file (now at `.rsrc/a`)
/// to `e/.rsrc/c`. The old code then stamped `e/c` in full (its header got its own ID back);
/// since stop 44 the stamp after a carry reads only the mirror, and `e/c` keeps `x`'s header.
#[test]
fn hostile44_a_target_gone_carry_takes_the_resource_file_of_the_object_that_took_the_name() {
    names_taken_in_one_batch(
        &["d", "a", "x"],
        &[("a", "d/c"), ("d", "e"), ("x", "a")],
        &[("a", "e/c"), ("x", "a")],
    );
}

/// The two tests above: `made` (folders first, each name with a `/` inside a folder made
/// before it, a folder when it is "d") registered; `moves` made on the disk and fed as one
/// batch (a folder's as a folder's), then a later batch (whatever waits for one is done); each
/// of `ends` (where an object was, where it is now) has the object's ID and its own resource
/// file.
fn names_taken_in_one_batch(made: &[&str], moves: &[(&str, &str)], ends: &[(&str, &str)]) {
    let v = Vol::new();
    for name in made {
        if *name == "d" {
            fs::create_dir(v.p(name)).unwrap();
        } else {
            fs::write(v.p(name), name).unwrap();
        }
    }
    v.feed(made.iter().map(|n| created(n)).collect());
    let ids: Vec<u32> = ends.iter().map(|(was, _)| v.id(was).unwrap()).collect();
    for (was, id) in ends.iter().map(|(was, _)| was).zip(&ids) {
        assert_eq!(v.rsrc_id(was), Some(*id));
    }
    let mut changes = Vec::new();
    for (from, to) in moves {
        fs::rename(v.p(from), v.p(to)).unwrap();
        changes.push(if *from == "d" {
            moved_dir(from, to)
        } else {
            moved(from, to)
        });
    }
    v.feed(changes);
    fs::write(v.p("later"), b"").unwrap();
    v.feed(vec![created("later")]);
    for ((_, now), id) in ends.iter().zip(&ids) {
        assert_eq!(v.id(now), Some(*id), "{now}");
        assert_eq!(
            v.rsrc_id(now),
            Some(*id),
            "{now}'s resource file is its own"
        );
    }
}

/// Hostile review of stop 44 (older than stop 44: the code before it does the same): the
/// owner of a drop folder `P` renames a file in their folder `P/d` (`a` → `b`), then moves
/// `d` away and another user's folder `v` (which holds its own `a`) to `P/d` before the batch
/// is applied. The carry of `d/.rsrc/a` → `d/.rsrc/b`, done after the batch by path, renames
/// the other user's resource file, in the other user's folder: their `a` loses it.
#[test]
fn hostile44_a_folder_swapped_in_before_the_carry_keeps_its_resource_files() {
    let (v, mine, victims) = a_folder_swapped_in(&["a"]);
    fs::write(v.p("later"), b"").unwrap();
    v.feed(vec![created("later")]);
    assert_eq!(v.id("P/e/b"), Some(mine));
    assert_eq!(v.id("P/d/a"), Some(victims[0]));
    assert!(
        !v.p("P/d/.rsrc/b").exists(),
        "the server renamed a resource file in another user's folder"
    );
    assert_eq!(
        v.rsrc_id("P/d/a"),
        Some(victims[0]),
        "the other user's file keeps its resource file"
    );
    assert_eq!(
        v.rsrc_id("P/e/b"),
        Some(mine),
        "the mover's file has its own"
    );
    assert!(!v.p("P/e/.rsrc/a").exists(), "left behind");
}

/// Hostile review of stop 44, found older than stop 44 (bdd0278 gives the same): the
/// owner of a folder `P` that holds another user's folder `v` renames a file of its own folder
/// `P/d` (`a` → `b`), then moves `d` away and `v` to `P/d` before the batch is applied. The
/// walk of `P/d/b` finds the other user's `b`; its record (by its mirror) is taken to the
/// desktop's `P/d/b` (the mover's folder's record), which the batch's next change moves to
/// `P/e`: the other user's ID named the mover's file `P/e/b`, the mover's own record was gone
/// and the other user's `b` unregistered. Now a move whose walk went through a folder the
/// desktop records with another inode is applied as told, and a registration through such a
/// folder is refused (`register_walked`), never a claim followed into it.
#[test]
fn hostile44_a_folder_swapped_in_before_its_batch_gives_its_owners_id_to_the_movers_file() {
    let (v, mine, victims) = a_folder_swapped_in(&["a", "b"]);
    assert_eq!(
        v.id("P/d/b"),
        Some(victims[1]),
        "the other user's b keeps its ID"
    );
    assert_eq!(v.id("P/e/b"), Some(mine), "the mover's file keeps its own");
}

/// The swap of the two tests above: `P/d/a` (the mover's) and `P/v/NAME` for each of
/// `victims` (another user's, in the folder `v`) registered; then, in one batch, `P/d/a`
/// renamed to `P/d/b`, `P/d` moved to `P/e` and `P/v` to `P/d`. Returns the volume, the
/// mover's ID and the other user's IDs.
fn a_folder_swapped_in(victims: &[&str]) -> (Vol, u32, Vec<u32>) {
    let v = Vol::new();
    for d in ["P", "P/d", "P/v"] {
        fs::create_dir(v.p(d)).unwrap();
    }
    fs::write(v.p("P/d/a"), b"mine").unwrap();
    let mut made = vec!["P".to_string(), "P/d".into(), "P/d/a".into(), "P/v".into()];
    for name in victims {
        fs::write(v.p(&format!("P/v/{name}")), b"victim's").unwrap();
        made.push(format!("P/v/{name}"));
    }
    v.feed(made.iter().map(|p| created(p)).collect());
    let mine = v.id("P/d/a").unwrap();
    let ids: Vec<u32> = victims
        .iter()
        .map(|n| v.id(&format!("P/v/{n}")).unwrap())
        .collect();
    for (name, id) in victims.iter().zip(&ids) {
        assert_eq!(v.rsrc_id(&format!("P/v/{name}")), Some(*id));
    }
    fs::rename(v.p("P/d/a"), v.p("P/d/b")).unwrap();
    fs::rename(v.p("P/d"), v.p("P/e")).unwrap();
    fs::rename(v.p("P/v"), v.p("P/d")).unwrap();
    v.feed(vec![
        moved("P/d/a", "P/d/b"),
        moved_dir("P/d", "P/e"),
        moved_dir("P/v", "P/d"),
    ]);
    (v, mine, ids)
}

/// The create of the same swap (hostile review of stop 44): the owner of `P` makes `P/d/b`,
/// then moves `d` away and the other user's `v` (which holds a `b` of its own) to `P/d`
/// before the batch is applied. The walk of `P/d/b` reaches the other user's `b` through a
/// folder that is not the recorded `P/d`: the create is refused, and the other user's `b`
/// keeps its ID and its place (before, its record followed its mirror into the mover's
/// folder).
#[test]
fn hostile44_a_create_through_a_folder_swapped_in_takes_no_id_of_the_folder_s_owner() {
    let v = Vol::new();
    for d in ["P", "P/d", "P/v"] {
        fs::create_dir(v.p(d)).unwrap();
    }
    fs::write(v.p("P/v/b"), b"victim's b").unwrap();
    v.feed(["P", "P/d", "P/v", "P/v/b"].map(created).to_vec());
    let victims_b = v.id("P/v/b").unwrap();
    fs::write(v.p("P/d/b"), b"mine").unwrap();
    fs::rename(v.p("P/d"), v.p("P/e")).unwrap();
    fs::rename(v.p("P/v"), v.p("P/d")).unwrap();
    v.feed(vec![
        created("P/d/b"),
        moved_dir("P/d", "P/e"),
        moved_dir("P/v", "P/d"),
    ]);
    assert_eq!(
        v.id("P/d/b"),
        Some(victims_b),
        "the other user's b keeps its ID"
    );
    assert_ne!(
        v.id("P/e/b"),
        Some(victims_b),
        "no ID of the other user's on the mover's file"
    );
    assert_eq!(v.rsrc_id("P/d/b"), Some(victims_b));
}
