//! The watcher on real temporary directories (as root: fanotify needs CAP_SYS_ADMIN), each
//! scenario for fanotify and inotify. The kernel queues an event before the system call that
//! caused it returns, so `drain_now` right after the change is the barrier: no sleeps.

use std::fs;
use std::path::{Path, PathBuf};
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
