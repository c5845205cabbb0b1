//! The watcher on real temporary directories (as root: fanotify needs CAP_SYS_ADMIN), each
//! scenario for fanotify and inotify. The kernel queues an event before the system call that
//! caused it returns, so `drain_now` right after the change is the barrier: no sleeps.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn created(p: &str, dir: bool) -> Change {
    Change::Created {
        path: p.into(),
        dir,
    }
}
fn removed(p: &str, dir: bool) -> Change {
    Change::Removed {
        path: p.into(),
        dir,
    }
}
fn moved(a: &str, b: &str, dir: bool) -> Change {
    Change::Moved {
        from: a.into(),
        to: b.into(),
        dir,
    }
}

/// A temporary parent holding the volume root `vol` and a sibling `outside`.
struct Scene {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("vol");
        let outside = tmp.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        Scene {
            _tmp: tmp,
            root,
            outside,
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn watch(&self, mode: WatchMode, options: WatchOptions) -> Watcher {
        match Watcher::start(&self.root, mode, options).unwrap() {
            Started::Watching(w, note) => {
                assert_eq!(note, None);
                w
            }
            Started::Off(why) => panic!("not watching: {why}"),
        }
    }
}

const MODES: [WatchMode; 2] = [WatchMode::Fanotify, WatchMode::Inotify];

fn drain(w: &mut Watcher) -> Vec<Change> {
    let batch = w.drain_now().unwrap();
    assert!(!batch.overflow, "unexpected overflow");
    batch.changes
}

#[test]
fn kinds_are_what_was_asked_for() {
    let s = Scene::new();
    assert_eq!(
        s.watch(WatchMode::Fanotify, Default::default()).kind(),
        WatchKind::Fanotify
    );
    assert_eq!(
        s.watch(WatchMode::Inotify, Default::default()).kind(),
        WatchKind::Inotify
    );
    match Watcher::start(&s.root, WatchMode::Auto, Default::default()).unwrap() {
        Started::Watching(w, None) => assert_eq!(w.kind(), WatchKind::Fanotify),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Watcher::start(&s.root, WatchMode::Off, Default::default()).unwrap(),
        Started::Off(_)
    ));
}

#[test]
fn create_delete_and_rename_in_place() {
    for mode in MODES {
        let s = Scene::new();
        let mut w = s.watch(mode, Default::default());
        fs::write(s.p("a"), b"x").unwrap();
        fs::create_dir(s.p("d")).unwrap();
        assert_eq!(
            drain(&mut w),
            vec![created("a", false), created("d", true)],
            "{mode:?}"
        );
        fs::rename(s.p("a"), s.p("b")).unwrap();
        assert_eq!(drain(&mut w), vec![moved("a", "b", false)], "{mode:?}");
        fs::remove_file(s.p("b")).unwrap();
        fs::remove_dir(s.p("d")).unwrap();
        assert_eq!(
            drain(&mut w),
            vec![removed("b", false), removed("d", true)],
            "{mode:?}"
        );
        assert_eq!(drain(&mut w), vec![], "{mode:?}");
    }
}

#[test]
fn move_across_directories_and_over_an_existing_name() {
    for mode in MODES {
        let s = Scene::new();
        fs::create_dir_all(s.p("a/x")).unwrap();
        fs::create_dir(s.p("b")).unwrap();
        fs::write(s.p("a/f"), b"1").unwrap();
        fs::write(s.p("b/g"), b"2").unwrap();
        let mut w = s.watch(mode, Default::default());
        fs::rename(s.p("a/f"), s.p("b/f")).unwrap();
        fs::rename(s.p("a/x"), s.p("b/x")).unwrap();
        assert_eq!(
            drain(&mut w),
            vec![moved("a/f", "b/f", false), moved("a/x", "b/x", true)],
            "{mode:?}"
        );
        // Over an existing name: one move, the server applies `replaced`.
        fs::rename(s.p("b/f"), s.p("b/g")).unwrap();
        assert_eq!(drain(&mut w), vec![moved("b/f", "b/g", false)], "{mode:?}");
    }
}

#[test]
fn directories_moved_in_from_outside_and_out_again() {
    for mode in MODES {
        let s = Scene::new();
        fs::create_dir_all(s.outside.join("tree/sub")).unwrap();
        fs::write(s.outside.join("tree/sub/f"), b"1").unwrap();
        let mut w = s.watch(mode, Default::default());
        fs::rename(s.outside.join("tree"), s.p("tree")).unwrap();
        assert_eq!(drain(&mut w), vec![created("tree", true)], "{mode:?}");
        // Now inside: events under it are placed.
        fs::write(s.p("tree/sub/g"), b"2").unwrap();
        assert_eq!(
            drain(&mut w),
            vec![created("tree/sub/g", false)],
            "{mode:?}"
        );
        fs::rename(s.p("tree"), s.outside.join("back")).unwrap();
        assert_eq!(drain(&mut w), vec![removed("tree", true)], "{mode:?}");
        // Out again: nothing under it is reported any more.
        fs::write(s.outside.join("back/sub/h"), b"3").unwrap();
        fs::remove_file(s.outside.join("back/sub/f")).unwrap();
        assert_eq!(drain(&mut w), vec![], "{mode:?}");
        // In and out within one batch, with changes inside it while in and after.
        fs::rename(s.outside.join("back"), s.p("again")).unwrap();
        fs::write(s.p("again/in"), b"4").unwrap();
        fs::rename(s.p("again"), s.outside.join("gone")).unwrap();
        fs::write(s.outside.join("gone/out"), b"5").unwrap();
        fs::write(s.outside.join("gone/sub/out"), b"5").unwrap();
        // Created, filled, moved out: its removal alone (no record of it, or a client's).
        assert_eq!(drain(&mut w), vec![removed("again", true)], "{mode:?}");
    }
}

#[test]
fn a_renamed_directory_places_the_events_inside_it_at_its_new_name() {
    for mode in MODES {
        let s = Scene::new();
        fs::create_dir_all(s.p("old/deep")).unwrap();
        let mut w = s.watch(mode, Default::default());
        // Events inside before the rename warm the cache with the old name.
        fs::write(s.p("old/deep/a"), b"1").unwrap();
        assert_eq!(
            drain(&mut w),
            vec![created("old/deep/a", false)],
            "{mode:?}"
        );
        fs::rename(s.p("old"), s.p("new")).unwrap();
        fs::write(s.p("new/deep/b"), b"2").unwrap();
        fs::rename(s.p("new/deep/a"), s.p("new/deep/c")).unwrap();
        assert_eq!(
            drain(&mut w),
            vec![
                moved("old", "new", true),
                created("new/deep/b", false),
                moved("new/deep/a", "new/deep/c", false)
            ],
            "{mode:?}"
        );
        fs::rename(s.p("new"), s.p("newer")).unwrap();
        fs::remove_file(s.p("newer/deep/b")).unwrap();
        assert_eq!(
            drain(&mut w),
            vec![moved("new", "newer", true), removed("newer/deep/b", false)],
            "{mode:?}"
        );
    }
}

#[test]
fn temporaries_coalesce_within_a_batch() {
    for mode in MODES {
        let s = Scene::new();
        fs::write(s.p("doc"), b"old").unwrap();
        let mut w = s.watch(mode, Default::default());
        // A temporary that comes and goes is its removal alone (a record a client made
        // meanwhile goes with it).
        fs::write(s.p("tmp1"), b"x").unwrap();
        fs::remove_file(s.p("tmp1")).unwrap();
        // A save by write-temp-then-rename is the move alone.
        fs::write(s.p(".doc.tmp"), b"new").unwrap();
        fs::rename(s.p(".doc.tmp"), s.p("new-doc")).unwrap();
        // Over an existing name as well.
        fs::write(s.p(".doc.tmp2"), b"newer").unwrap();
        fs::rename(s.p(".doc.tmp2"), s.p("doc")).unwrap();
        assert_eq!(
            drain(&mut w),
            vec![
                removed("tmp1", false),
                moved(".doc.tmp", "new-doc", false),
                moved(".doc.tmp2", "doc", false)
            ],
            "{mode:?}"
        );
    }
}

#[test]
fn ignored_names_are_never_reported() {
    for mode in MODES {
        let s = Scene::new();
        fs::create_dir(s.p("d")).unwrap();
        let options = WatchOptions {
            ignore: vec!["desk.db".into(), "desk.db-*".into()],
            queue_limit: None,
            held_max: None,
        };
        let mut w = s.watch(mode, options);
        fs::create_dir(s.p(".rsrc")).unwrap();
        fs::write(s.p(".rsrc/f"), b"r").unwrap();
        fs::create_dir(s.p("d/.rsrc")).unwrap();
        fs::write(s.p("d/.rsrc/g"), b"r").unwrap();
        fs::write(s.p(".DesktopServer"), b"x").unwrap();
        fs::write(s.p("desk.db"), b"x").unwrap();
        fs::write(s.p("desk.db-wal"), b"x").unwrap();
        fs::rename(s.p("d/.rsrc/g"), s.p("d/.rsrc/h")).unwrap();
        fs::write(s.p("kept"), b"x").unwrap();
        // A move out of an ignored name is a create; into one, a delete.
        fs::rename(s.p(".rsrc/f"), s.p("d/from-rsrc")).unwrap();
        fs::rename(s.p("kept"), s.p("d/.rsrc/kept")).unwrap();
        assert_eq!(
            drain(&mut w),
            vec![created("d/from-rsrc", false), removed("kept", false)],
            "{mode:?}: kept was created and moved into .rsrc in one batch: its removal"
        );
    }
}

#[test]
fn more_events_than_the_queue_limit_is_an_overflow() {
    for mode in MODES {
        let s = Scene::new();
        let options = WatchOptions {
            ignore: vec![],
            queue_limit: Some(10),
            held_max: None,
        };
        let mut w = s.watch(mode, options);
        for i in 0..11 {
            fs::write(s.p(&format!("f{i}")), b"x").unwrap();
        }
        let batch = w.drain_now().unwrap();
        assert!(batch.overflow, "{mode:?}");
        assert!(batch.changes.is_empty(), "{mode:?}");
        assert!(batch.oldest.is_some(), "{mode:?}");
        // The watcher goes on after an overflow.
        for i in 0..10 {
            fs::remove_file(s.p(&format!("f{i}"))).unwrap();
        }
        let batch = w.drain_now().unwrap();
        assert!(!batch.overflow, "{mode:?}");
        assert_eq!(batch.changes.len(), 10, "{mode:?}");
    }
}

#[test]
fn stop_ends_a_blocking_wait_at_once() {
    for mode in MODES {
        let s = Scene::new();
        let mut w = s.watch(mode, Default::default());
        let stopper = w.stopper();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            tx.send(()).unwrap();
            let batch = w.next_batch(Duration::from_secs(3600)).unwrap();
            (batch.changes.len(), batch.overflow, w)
        });
        rx.recv().unwrap();
        stopper.stop();
        let (changes, overflow, mut w) = waiter.join().unwrap();
        assert_eq!((changes, overflow), (0, false), "{mode:?}");
        // Stopped stays stopped.
        fs::write(s.p("late"), b"x").unwrap();
        assert!(w
            .next_batch(Duration::from_secs(3600))
            .unwrap()
            .changes
            .is_empty());
    }
}

#[test]
fn next_batch_waits_for_an_event_and_times_out_empty() {
    for mode in MODES {
        let s = Scene::new();
        let mut w = s.watch(mode, Default::default());
        let batch = w.next_batch(Duration::from_millis(1)).unwrap();
        assert!(
            batch.changes.is_empty() && batch.oldest.is_none(),
            "{mode:?}"
        );
        fs::write(s.p("a"), b"x").unwrap();
        let batch = w.next_batch(Duration::from_secs(3600)).unwrap();
        assert_eq!(batch.changes, vec![created("a", false)], "{mode:?}");
        assert!(batch.oldest.is_some());
    }
}

#[test]
fn events_outside_the_root_are_not_reported() {
    for mode in MODES {
        let s = Scene::new();
        // A sibling whose name starts like the root's: a byte prefix, not a component one.
        let look_alike = s.root.with_file_name("vol2");
        fs::create_dir(&look_alike).unwrap();
        let mut w = s.watch(mode, Default::default());
        for i in 0..50 {
            fs::write(s.outside.join(format!("f{i}")), b"x").unwrap();
            fs::write(look_alike.join(format!("f{i}")), b"x").unwrap();
        }
        fs::create_dir(s.outside.join("d")).unwrap();
        fs::rename(s.outside.join("f0"), s.outside.join("d/f0")).unwrap();
        fs::remove_dir_all(&s.outside).unwrap();
        assert_eq!(drain(&mut w), vec![], "{mode:?}");
        if mode == WatchMode::Fanotify {
            // Every directory of the volume is cached: nothing outside cost a lookup.
            assert_eq!(w.lookups_or_watches(), 0);
        }
    }
}

#[test]
fn hard_links_directory_renames_over_empty_ones_and_new_directories_renamed() {
    for mode in MODES {
        let s = Scene::new();
        fs::write(s.p("a"), b"x").unwrap();
        fs::create_dir_all(s.p("full/sub")).unwrap();
        fs::create_dir(s.p("empty")).unwrap();
        let mut w = s.watch(mode, Default::default());
        fs::hard_link(s.p("a"), s.p("link")).unwrap();
        // A directory renamed over an empty one.
        fs::rename(s.p("full"), s.p("empty")).unwrap();
        fs::write(s.p("empty/sub/f"), b"x").unwrap();
        // mkdir tmp; mv tmp final: the move, then one create of the final name.
        fs::create_dir(s.p("tmpdir")).unwrap();
        fs::rename(s.p("tmpdir"), s.p("final")).unwrap();
        assert_eq!(
            drain(&mut w),
            vec![
                created("link", false),
                moved("full", "empty", true),
                created("empty/sub/f", false),
                moved("tmpdir", "final", true),
                created("final", true),
            ],
            "{mode:?}"
        );
        // The same object unlinked and linked again at the same name (the kernel may merge
        // the two fanotify events into one): it ends as a create.
        fs::remove_file(s.p("link")).unwrap();
        fs::hard_link(s.p("a"), s.p("link")).unwrap();
        let changes = drain(&mut w);
        assert_eq!(
            changes.last(),
            Some(&created("link", false)),
            "{mode:?}: {changes:?}"
        );
    }
}

#[test]
fn a_tree_removed_whole_is_one_change() {
    for mode in MODES {
        let s = Scene::new();
        for d in ["t/a/b", "t/c"] {
            fs::create_dir_all(s.p(d)).unwrap();
        }
        for f in ["t/1", "t/a/2", "t/a/b/3", "t/c/4"] {
            fs::write(s.p(f), b"x").unwrap();
        }
        let mut w = s.watch(mode, Default::default());
        fs::remove_dir_all(s.p("t")).unwrap();
        // One change: the server removes a directory's records with everything below it.
        assert_eq!(drain(&mut w), vec![removed("t", true)], "{mode:?}");
    }
}

#[test]
fn a_deep_tree_made_at_once_is_one_change() {
    for mode in MODES {
        let s = Scene::new();
        let mut w = s.watch(mode, Default::default());
        fs::create_dir_all(s.p("x/y/z")).unwrap();
        fs::write(s.p("x/y/z/f"), b"1").unwrap();
        fs::write(s.p("x/g"), b"1").unwrap();
        // One change: the server registers the whole subtree of a created directory.
        assert_eq!(drain(&mut w), vec![created("x", true)], "{mode:?}");
        // Later events in the new directories are seen too (inotify: watches were added).
        fs::write(s.p("x/y/z/later"), b"1").unwrap();
        assert_eq!(
            drain(&mut w),
            vec![created("x/y/z/later", false)],
            "{mode:?}"
        );
    }
}

/// Set in the child of `fanotify_as_nobody_fails_clearly_and_auto_falls_back`.
const CHILD_ENV: &str = "DESKD_WATCH_TEST_AS_NOBODY";

#[test]
fn fanotify_as_nobody_fails_clearly_and_auto_falls_back() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    // This test binary again, as nobody (uid/gid 65534, no capabilities), running only the
    // child half below.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::as_nobody_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "the child test did not run: {stdout}"
    );
}

#[test]
fn as_nobody_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    assert_ne!(rustix::process::geteuid().as_raw(), 0, "must run as nobody");
    let s = Scene::new();
    let err = Watcher::start(&s.root, WatchMode::Fanotify, Default::default()).unwrap_err();
    let text = err.to_string();
    // Since Linux 5.13 an unprivileged fanotify_init succeeds; the filesystem mark does not.
    assert!(
        matches!(
            err,
            WatchError::FanotifyInit { .. } | WatchError::FanotifyMark { .. }
        ) && text.contains("CAP_SYS_ADMIN"),
        "{text}"
    );
    match Watcher::start(&s.root, WatchMode::Auto, Default::default()).unwrap() {
        Started::Watching(mut w, Some(note)) => {
            assert_eq!(w.kind(), WatchKind::Inotify);
            assert!(note.contains("CAP_SYS_ADMIN"), "{note}");
            fs::write(s.p("a"), b"x").unwrap();
            assert_eq!(drain(&mut w), vec![created("a", false)]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn fanotify_with_more_directories_than_its_cache_places_by_the_kernel() {
    let s = Scene::new();
    for i in 0..40 {
        fs::create_dir_all(s.p(&format!("d{i}/sub"))).unwrap();
    }
    for d in ["t/a/b", "t/c", "fresh/sub"] {
        fs::create_dir_all(s.p(d)).unwrap();
    }
    for f in ["t/1", "t/a/2", "t/a/b/3", "t/c/4"] {
        fs::write(s.p(f), b"x").unwrap();
    }
    let mut w = Watcher::fanotify_with_cache(&s.root, 16);
    // Other processes share this file system; in this mode their deleted directories may
    // cost a rescan, so rescans are allowed here, and only here.
    let drain = |w: &mut Watcher| -> Vec<Change> {
        let mut changes = drain(w);
        changes.retain(|c| !matches!(c, Change::Rescan { .. }));
        changes
    };
    for i in 0..40 {
        fs::write(s.p(&format!("d{i}/sub/f")), b"x").unwrap();
    }
    let changes = drain(&mut w);
    let want: Vec<Change> = (0..40)
        .map(|i| created(&format!("d{i}/sub/f"), false))
        .collect();
    assert_eq!(changes, want);
    // A directory the kernel places is placed where it is *now*; its rename later in the same
    // read says where it was, so its earlier events wait for it and come just before it.
    // ("fresh/sub" was never looked up: the cache was emptied at start.)
    fs::write(s.p("fresh/sub/early"), b"x").unwrap();
    fs::rename(s.p("fresh/sub"), s.p("d3/later")).unwrap();
    fs::write(s.p("d3/later/late"), b"x").unwrap();
    assert_eq!(
        drain(&mut w),
        vec![
            created("fresh/sub/early", false),
            moved("fresh/sub", "d3/later", true),
            created("d3/later/late", false)
        ]
    );
    fs::rename(s.p("d0/sub"), s.p("d1/moved")).unwrap();
    fs::write(s.p("d1/moved/g"), b"x").unwrap();
    assert_eq!(
        drain(&mut w),
        vec![
            moved("d0/sub", "d1/moved", true),
            created("d1/moved/g", false)
        ]
    );
    assert!(w.lookups_or_watches() > 0, "the kernel placed no handle");
    // A tree removed whole: the events in its directories, gone before they are read, wait
    // for the directories' own delete events.
    fs::remove_dir_all(s.p("t")).unwrap();
    let changes = drain(&mut w);
    assert_eq!(changes.last(), Some(&removed("t", true)), "{changes:?}");
    for c in &changes {
        let path = match c {
            Change::Removed { path, .. } => path,
            other => panic!("{other:?}"),
        };
        assert!(path.starts_with("t"), "{c:?}");
    }
}

#[test]
fn inotify_watches_no_rsrc_directory() {
    let s = Scene::new();
    for d in ["a/.rsrc", "a/b/.rsrc", ".rsrc"] {
        fs::create_dir_all(s.p(d)).unwrap();
    }
    let w = s.watch(WatchMode::Inotify, Default::default());
    // ".", "a", "a/b".
    assert_eq!(w.lookups_or_watches(), 3);
}

#[test]
fn an_exchange_of_two_names_is_a_rescan_and_keeps_the_cache_right() {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    for mode in MODES {
        let s = Scene::new();
        fs::create_dir_all(s.p("x/a/in-a")).unwrap();
        fs::create_dir_all(s.p("y/b/in-b")).unwrap();
        let mut w = s.watch(mode, Default::default());
        renameat_with(CWD, s.p("x/a"), CWD, s.p("y/b"), RenameFlags::EXCHANGE).unwrap();
        // No Change says "swapped": both parents are re-scanned.
        let rescan = |p: &str| Change::Rescan { path: p.into() };
        assert_eq!(drain(&mut w), vec![rescan("x"), rescan("y")], "{mode:?}");
        // What was a/in-a is now y/b/in-a, and b/in-b is x/a/in-b.
        fs::write(s.p("y/b/in-a/f"), b"1").unwrap();
        fs::write(s.p("x/a/in-b/g"), b"1").unwrap();
        assert_eq!(
            drain(&mut w),
            vec![created("y/b/in-a/f", false), created("x/a/in-b/g", false)],
            "{mode:?}"
        );
    }
}

#[test]
fn a_kernel_queue_overflow_is_reported_and_the_watcher_goes_on_and_fanotify_has_none() {
    for mode in MODES {
        let s = Scene::new();
        fs::create_dir(s.p("d")).unwrap();
        let mut w = s.watch(mode, Default::default());
        // Both kernels queue 16,384 events per group by default (fs.fanotify.max_queued_events,
        // fs.inotify.max_queued_events); more than that unread is an overflow, unless the group
        // asked for an unlimited queue (fanotify's here).
        let limit = [
            "/proc/sys/fs/fanotify/max_queued_events",
            "/proc/sys/fs/inotify/max_queued_events",
        ]
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok()?.trim().parse::<usize>().ok())
        .max()
        .unwrap();
        for i in 0..limit + 100 {
            fs::File::create(s.p(&format!("d/f{i}"))).unwrap();
        }
        let mut overflowed = false;
        let mut created_files = 0;
        loop {
            let batch = w.drain_now().unwrap();
            overflowed |= batch.overflow;
            created_files += batch
                .changes
                .iter()
                .filter(|c| matches!(c, Change::Created { dir: false, .. }))
                .count();
            if batch.oldest.is_none() && batch.changes.is_empty() {
                break;
            }
        }
        if mode == WatchMode::Fanotify {
            // Its queue is unlimited up to fanotify::QUEUE_BYTES_MAX (a burst must not end
            // in a rescan of the whole volume): nothing is lost.
            assert!(!overflowed, "{mode:?}");
            assert_eq!(created_files, limit + 100, "{mode:?}");
        } else {
            assert!(overflowed, "{mode:?}");
        }
        // After an overflow the cache (fanotify) and the watches (inotify) are made again
        // from the disk: new events are placed.
        fs::rename(s.p("d"), s.p("e")).unwrap();
        fs::write(s.p("e/after"), b"x").unwrap();
        assert_eq!(
            drain(&mut w),
            vec![moved("d", "e", true), created("e/after", false)],
            "{mode:?}"
        );
    }
}

#[test]
fn watchers_move_to_their_thread_and_stoppers_are_shared() {
    fn send<T: Send>() {}
    fn shared<T: Send + Sync + Clone>() {}
    send::<Watcher>();
    shared::<Stopper>();
}

#[test]
fn a_directory_moved_out_of_an_ignored_one_is_followed() {
    for mode in MODES {
        let s = Scene::new();
        let mut w = s.watch(mode, Default::default());
        fs::create_dir_all(s.p(".rsrc/sub/deeper")).unwrap();
        fs::write(s.p(".rsrc/sub/deeper/f"), b"x").unwrap();
        assert_eq!(drain(&mut w), vec![], "{mode:?}");
        fs::rename(s.p(".rsrc/sub"), s.p("visible")).unwrap();
        fs::write(s.p("visible/deeper/g"), b"x").unwrap();
        // What is made in it in the same batch is part of its subtree, which the server
        // registers from the disk (inotify's watch on it comes only then, too).
        let want = vec![created("visible", true)];
        assert_eq!(drain(&mut w), want, "{mode:?}");
        fs::write(s.p("visible/deeper/h"), b"x").unwrap();
        assert_eq!(
            drain(&mut w),
            vec![created("visible/deeper/h", false)],
            "{mode:?}"
        );
    }
}

#[test]
fn fanotify_follows_a_directory_the_start_up_walk_missed() {
    let s = Scene::new();
    fs::create_dir_all(s.p("unwalked/sub/deeper")).unwrap();
    fs::create_dir(s.p("walked")).unwrap();
    let mut w = s.watch(WatchMode::Fanotify, Default::default());
    // As if "unwalked" had been moved into the walked part while the walk ran.
    w.forget_under(std::path::Path::new("unwalked"));
    fs::rename(s.p("unwalked"), s.p("walked/arrived")).unwrap();
    fs::write(s.p("walked/arrived/sub/deeper/f"), b"x").unwrap();
    assert_eq!(
        drain(&mut w),
        vec![
            moved("unwalked", "walked/arrived", true),
            created("walked/arrived/sub/deeper/f", false)
        ]
    );
    assert_eq!(
        w.lookups_or_watches(),
        0,
        "placed from the cache, not the kernel"
    );
}

#[test]
fn an_exchange_is_told_from_two_moves_while_the_file_system_is_busy() {
    // A filesystem mark sees the whole file system: events of other directories (here a
    // thread making and deleting files outside the volume) can be queued between the two
    // halves of an exchange. Read as two moves, the cache would put both subtrees at one name
    // and the server would move one record over the other and back.
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    for mode in MODES {
        let s = Scene::new();
        fs::create_dir_all(s.p("x/a/in-a")).unwrap();
        fs::create_dir_all(s.p("y/b/in-b")).unwrap();
        let mut w = s.watch(mode, Default::default());
        let stop = Arc::new(AtomicBool::new(false));
        let noise = {
            let (outside, stop) = (s.outside.clone(), stop.clone());
            std::thread::spawn(move || {
                for i in 0u64.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let p = outside.join(format!("n{}", i % 50));
                    fs::write(&p, b"1").unwrap();
                    fs::remove_file(&p).unwrap();
                }
            })
        };
        let rescan = |p: &str| Change::Rescan { path: p.into() };
        let wrong: Vec<Vec<Change>> = (0..2000)
            .map(|_| {
                renameat_with(CWD, s.p("x/a"), CWD, s.p("y/b"), RenameFlags::EXCHANGE).unwrap();
                drain(&mut w)
            })
            .filter(|changes| *changes != [rescan("x"), rescan("y")])
            .collect();
        stop.store(true, Ordering::Relaxed);
        noise.join().unwrap();
        assert_eq!(wrong.len(), 0, "{mode:?}: {:?}", wrong.first());
        // After 2,000 exchanges (an even number) each subtree is where it started.
        fs::write(s.p("x/a/in-a/f"), b"1").unwrap();
        fs::write(s.p("y/b/in-b/g"), b"1").unwrap();
        assert_eq!(
            drain(&mut w),
            vec![created("x/a/in-a/f", false), created("y/b/in-b/g", false)],
            "{mode:?}"
        );
    }
}

/// The floor of `deskd-bench populate --fanotify-floor`: its mark sees every create (each
/// event at least a header and a handle), whose events it reads and drops; stopping it reads
/// what is still queued and ends its thread.
#[test]
fn the_floor_reads_and_drops_the_events_of_its_mark() {
    let s = Scene::new();
    let floor = Floor::start(&s.root).unwrap();
    for i in 0..100 {
        fs::write(s.p(&format!("f{i}")), b"").unwrap();
    }
    let bytes = floor.stop();
    assert!(bytes >= 100 * 32, "{bytes} bytes for 100 creates");
}
