//! What changed on a served volume, whoever changed it (issue 23).
//!
//! A [`Watcher`] per volume reads the kernel's change events (fanotify with file-handle
//! events and one filesystem mark; inotify where fanotify is not available) and hands them to
//! the server as [`Change`]s: paths relative to the volume root, already filtered of deskd's
//! own names (`.rsrc`, `.Desktop*`, the desktop's files) and coalesced within a batch. This crate
//! knows no desktop: the server decides what a change means for the IDs and verifies every
//! change against the disk before it applies it, exactly as it verifies a client's claim.

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// The `watch` setting of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    /// fanotify where it can be used, else inotify, saying at start which and why.
    #[default]
    Auto,
    /// fanotify or fail the volume's start with the reason.
    Fanotify,
    /// inotify (a watch per directory; see docs/deskd.md for its limits).
    Inotify,
    /// No watching: changes made outside deskd reach the desktop by a client or a rebuild.
    Off,
}

/// Which kernel interface a running watcher uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchKind {
    /// fanotify, file-handle events, one filesystem mark.
    Fanotify,
    /// inotify, one watch per directory.
    Inotify,
}

/// One change on the volume, with paths relative to the volume root (never empty, never
/// absolute, no `..`). `dir` tells whether the object is a directory, as the event said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A name appeared: a create, a hard link, or the end of a move whose start is unknown.
    Created { path: PathBuf, dir: bool },
    /// A name went away: a delete, or a move out of the volume.
    Removed { path: PathBuf, dir: bool },
    /// A name was moved within the volume (a rename, a move, possibly over an existing name).
    Moved {
        from: PathBuf,
        to: PathBuf,
        dir: bool,
    },
    /// What lies under this directory (the volume root is `"."`) is
    /// unknown: events were lost or could not be placed. The server re-scans it.
    Rescan { path: PathBuf },
}

/// What one read of the watcher gives.
#[derive(Debug, Default)]
pub struct Batch {
    /// The changes, in the order they happened, coalesced.
    pub changes: Vec<Change>,
    /// The kernel's queue overflowed (or the watcher's own bound was hit): events were lost
    /// and the whole volume must be re-scanned.
    pub overflow: bool,
    /// When the oldest event of this batch was read from the kernel (for the lag figure).
    pub oldest: Option<Instant>,
}
