//! Starting the kernel side ([`deskd_watch::Watcher`]) for a volume, and what the log and
//! status say about which watcher it got and why.

use std::ffi::OsString;
use std::path::Path;

use deskd_watch::{Started, WatchMode, WatchOptions, Watcher};

use super::source::ChangeSource;

/// What starting a volume's watcher gave.
pub(crate) struct Opened {
    /// The change stream; None: not watching.
    pub(crate) source: Option<Box<dyn ChangeSource>>,
    /// Ends a blocking read of the stream at once (shutdown).
    pub(crate) stopper: Option<Box<dyn Fn() + Send + Sync>>,
    /// `fanotify`, `inotify` or `off`.
    pub(crate) kind: &'static str,
    /// Why not the watcher asked for (or why none).
    pub(crate) note: Option<String>,
}

impl Opened {
    /// Not watching, for `why`.
    pub(crate) fn off(why: &str) -> Opened {
        Opened {
            source: None,
            stopper: None,
            kind: "off",
            note: Some(why.into()),
        }
    }
}

/// Names the watcher never reports: deskd's own (resource files, the desktop and its side
/// files, a rebuild's temporary desktop).
fn ignored() -> Vec<OsString> {
    vec![".rsrc".into(), ".Desktop*".into()]
}

impl ChangeSource for Watcher {
    fn next_batch(&mut self, wait: std::time::Duration) -> Result<deskd_watch::Batch, String> {
        Watcher::next_batch(self, wait).map_err(|e| e.to_string())
    }

    fn drain_now(&mut self) -> Result<deskd_watch::Batch, String> {
        Watcher::drain_now(self).map_err(|e| e.to_string())
    }

    fn held_bytes(&self) -> (u64, u64) {
        Watcher::held_bytes(self)
    }

    fn pumped(&self) -> deskd_watch::Pumped {
        Watcher::pumped(self)
    }
}

/// Start watching `root` as `mode` says, within `limits`.
pub(crate) fn open(root: &Path, mode: WatchMode, limits: super::Limits) -> Opened {
    let options = WatchOptions {
        ignore: ignored(),
        queue_limit: limits.queue,
        held_max: Some(limits.held_max),
    };
    match Watcher::start(root, mode, options) {
        Ok(Started::Watching(watcher, note)) => {
            let kind = match watcher.kind() {
                deskd_watch::WatchKind::Fanotify => "fanotify",
                deskd_watch::WatchKind::Inotify => "inotify",
            };
            let stopper = watcher.stopper();
            Opened {
                source: Some(Box::new(watcher)),
                stopper: Some(Box::new(move || stopper.stop())),
                kind,
                note,
            }
        }
        Ok(Started::Off(why)) => Opened::off(&why),
        Err(e) => Opened::off(&e.to_string()),
    }
}
