//! Starting the kernel side ([`deskd_watch::Watcher`]) for a volume, and what the log and
//! status say about which watcher it got and why.

use std::path::Path;

use deskd_watch::WatchMode;

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

/// Until the kernel side (branch watchsrc) is merged: not watching.
pub(crate) fn open(_root: &Path, _mode: WatchMode, _queue: Option<usize>) -> Opened {
    Opened {
        source: None,
        stopper: None,
        kind: "off",
        note: Some("this build has no watcher yet".into()),
    }
}
