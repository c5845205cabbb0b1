//! What changed on a served volume, whoever changed it (issue 23).
//!
//! A [`Watcher`] per volume reads the kernel's change events (fanotify with file-handle
//! events and one filesystem mark; inotify where fanotify is not available) and hands them to
//! the server as [`Change`]s: paths relative to the volume root, already filtered of deskd's
//! own names (`.rsrc`, `.Desktop*`, the desktop's files) and coalesced within a batch. This crate
//! knows no desktop: the server decides what a change means for the IDs and verifies every
//! change against the disk before it applies it, exactly as it verifies a client's claim.
//!
//! Modules: `fanotify` (the group, the mark, placing events; `records` parses the kernel's
//! bytes, `handles` is the directory-handle cache, `sys` the two handle system calls, the
//! crate's only `unsafe`), `inotify` (the fallback), `coalesce`, `names` (the ignore list),
//! `stopper`.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod coalesce;
mod fanotify;
mod inotify;
mod names;
mod stopper;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use fanotify::Floor;
pub use fanotify::Pumped;
pub use stopper::Stopper;

use coalesce::Coalescer;
use fanotify::FanotifySource;
use inotify::InotifySource;
use names::Ignore;

/// The `watch` setting of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    /// fanotify where it can be used, else inotify, saying at start which and why.
    Auto,
    /// fanotify, or an error saying why not (deskd then serves the volume unwatched, and warns).
    Fanotify,
    /// inotify (a watch per directory; see docs/deskd.md for its limits).
    Inotify,
    /// No watching: changes made outside deskd reach the desktop by a client or a rebuild.
    #[default]
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
    /// and the whole volume must be re-scanned. `losses` says why, and how many times.
    pub overflow: bool,
    /// Why events were lost, each loss counted once (all 0 unless `overflow`).
    pub losses: Losses,
    /// When the oldest event of this batch was read from the kernel (for the lag figure).
    pub oldest: Option<Instant>,
}

/// The losses of events behind a batch's `overflow`, by cause: each counts once in status's
/// `overflows` and says its own cause in the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Losses {
    /// The kernel lost events (its queue overflowed: fanotify's `FAN_Q_OVERFLOW`, inotify's
    /// `IN_Q_OVERFLOW`), or a read could not be understood or placed: 1 for the batch.
    pub kernel: u64,
    /// Times the events a fanotify watcher held unread passed `held_max` (`watch_held_mib`)
    /// and were dropped.
    pub held: u64,
    /// More events in one read than the test setting `watch_queue` allows: 1 for the batch.
    pub queue_limit: u64,
}

impl Losses {
    /// Every loss, whatever its cause.
    pub fn total(&self) -> u64 {
        self.kernel + self.held + self.queue_limit
    }
}

/// What a watcher is told besides its root and mode.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Names never reported, in any directory (deskd's own: ".rsrc", ".Desktop*", the desktop's
    /// file names and their -wal/-shm/-journal). Exact names and prefixes ending in '*'.
    /// `.rsrc` and `.Desktop*` are always ignored, listed here or not.
    pub ignore: Vec<OsString>,
    /// Test setting `watch_queue`: report `overflow` once more than this many events are
    /// waiting unread/unapplied (None: only the kernel's own overflow).
    pub queue_limit: Option<usize>,
    /// Most bytes of events a fanotify watcher holds unread in the server's memory (setting
    /// `watch_held_mib`); beyond, they are dropped and `overflow` reported (a rescan). None:
    /// [`DEFAULT_HELD_BYTES_MAX`].
    pub held_max: Option<u64>,
}

/// The default of [`WatchOptions::held_max`]: 192 MiB, about 2 million creates of short names.
pub const DEFAULT_HELD_BYTES_MAX: u64 = fanotify::HELD_BYTES_MAX;

/// What [`Watcher::start`] got.
#[derive(Debug)]
pub enum Started {
    /// Watching, with why `auto` did not get fanotify (None when it did or was asked for inotify).
    Watching(Watcher, Option<String>),
    /// `off`, or `auto` with neither interface usable: why.
    Off(String),
}

/// Why a watcher could not start or read.
#[derive(thiserror::Error, Debug)]
pub enum WatchError {
    #[error("cannot watch {root}: {source}")]
    Root {
        root: PathBuf,
        source: std::io::Error,
    },
    #[error("{root} is not a directory")]
    NotADirectory { root: PathBuf },
    #[error("fanotify cannot be used: {reason}")]
    FanotifyInit { reason: String },
    #[error("fanotify cannot watch {root}: {reason}")]
    FanotifyMark { root: PathBuf, reason: String },
    #[error("inotify cannot be used: {0}")]
    InotifyInit(std::io::Error),
    #[error("inotify cannot watch {0}: {1}")]
    InotifyWatch(PathBuf, std::io::Error),
    #[error(
        "inotify watch limit reached after {watches} directories \
         (raise fs.inotify.max_user_watches, or run as root for fanotify)"
    )]
    InotifyLimit { watches: usize },
    #[error("cannot make the watcher's stop signal: {0}")]
    Stopper(std::io::Error),
    #[error("reading change events: {0}")]
    Read(std::io::Error),
}

/// How many raw changes one batch takes at most; the rest waits for the next call.
const MAX_BATCH: usize = 1 << 16;
/// How many reads one batch makes at most, so a storm of events outside the volume (which
/// a filesystem mark sees too, and which do not count in `MAX_BATCH`) cannot hold a batch.
const MAX_READS: usize = 1024;

enum Source {
    Fanotify(Box<FanotifySource>),
    Inotify(Box<InotifySource>),
}

/// Where the changes of one read go: the ignore filter, then the coalescer.
pub(crate) struct Sink<'a> {
    ignore: &'a Ignore,
    coalescer: &'a mut Coalescer,
    /// Changes placed inside the volume (before filtering and coalescing).
    pub(crate) events: usize,
    /// The kernel lost events, or a read could not be understood.
    pub(crate) overflow: bool,
}

impl Sink<'_> {
    pub(crate) fn emit(&mut self, change: Change) {
        self.events += 1;
        let ignored = |p: &Path| self.ignore.path(p);
        let change = match change {
            Change::Created { path, .. } | Change::Removed { path, .. } if ignored(&path) => return,
            Change::Moved { from, to, dir } => match (ignored(&from), ignored(&to)) {
                (true, true) => return,
                (true, false) => Change::Created { path: to, dir },
                (false, true) => Change::Removed { path: from, dir },
                (false, false) => Change::Moved { from, to, dir },
            },
            Change::Rescan { path } => Change::Rescan {
                path: self.unignored_ancestor(path),
            },
            other => other,
        };
        self.coalescer.push(change);
    }

    /// The nearest directory at or above `path` that is not ignored ("." at worst).
    fn unignored_ancestor(&self, path: PathBuf) -> PathBuf {
        let mut kept = PathBuf::new();
        for c in path.iter() {
            if self.ignore.name(c) {
                break;
            }
            kept.push(c);
        }
        if kept.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            kept
        }
    }
}

/// A volume's watcher: reads the kernel's events for one root and gives them as [`Batch`]es.
pub struct Watcher {
    root: PathBuf,
    source: Source,
    stopper: Stopper,
    ignore: Ignore,
    queue_limit: Option<usize>,
    coalescer: Box<Coalescer>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("root", &self.root)
            .field("kind", &self.kind())
            .finish()
    }
}

impl Watcher {
    /// Starts watching `root` (a directory; made canonical here) as `mode` says.
    pub fn start(
        root: &Path,
        mode: WatchMode,
        options: WatchOptions,
    ) -> Result<Started, WatchError> {
        if mode == WatchMode::Off {
            return Ok(Started::Off("watch = off".into()));
        }
        let root = std::fs::canonicalize(root).map_err(|source| WatchError::Root {
            root: root.to_path_buf(),
            source,
        })?;
        if !root.is_dir() {
            return Err(WatchError::NotADirectory { root });
        }
        let ignore = Ignore::new(&options.ignore);
        let held_max = options.held_max.unwrap_or(DEFAULT_HELD_BYTES_MAX);
        let fanotify = || {
            FanotifySource::open(&root, ignore.clone(), held_max)
                .map(|s| Source::Fanotify(Box::new(s)))
        };
        let inotify = || InotifySource::open(&root, &ignore).map(|s| Source::Inotify(Box::new(s)));
        let (source, note) = match mode {
            WatchMode::Off => unreachable!("handled above"),
            WatchMode::Fanotify => (fanotify()?, None),
            WatchMode::Inotify => (inotify()?, None),
            WatchMode::Auto => match fanotify() {
                Ok(source) => (source, None),
                Err(why_not) => match inotify() {
                    Ok(source) => (source, Some(why_not.to_string())),
                    Err(e) => {
                        return Ok(Started::Off(format!("{why_not}; and {e}")));
                    }
                },
            },
        };
        let watcher = Watcher {
            root,
            source,
            stopper: Stopper::new().map_err(WatchError::Stopper)?,
            ignore,
            queue_limit: options.queue_limit,
            coalescer: Box::default(),
        };
        Ok(Started::Watching(watcher, note))
    }

    /// Which kernel interface this watcher uses.
    pub fn kind(&self) -> WatchKind {
        match self.source {
            Source::Fanotify(_) => WatchKind::Fanotify,
            Source::Inotify(_) => WatchKind::Inotify,
        }
    }

    /// The canonical root this watcher reports paths relative to.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Up to `wait` for the first event, then everything already queued (non-blocking), coalesced.
    /// Returns an empty batch after `wait` with nothing, or at once after `stopper().stop()`.
    pub fn next_batch(&mut self, wait: Duration) -> Result<Batch, WatchError> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        if self.stopper.is_stopped() {
            return Ok(Batch::default());
        }
        let ready = {
            let source_fd = match &self.source {
                Source::Fanotify(s) => s.fd(),
                Source::Inotify(s) => s.fd(),
            };
            let stop_fd = self.stopper.fd();
            let mut fds = [
                PollFd::new(&source_fd, PollFlags::IN),
                PollFd::new(&stop_fd, PollFlags::IN),
            ];
            let timeout = Timespec::try_from(wait).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            });
            match poll(&mut fds, Some(&timeout)) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => return Ok(Batch::default()),
                Err(e) => return Err(WatchError::Read(e.into())),
            }
            if !fds[1].revents().is_empty() || self.stopper.is_stopped() {
                return Ok(Batch::default());
            }
            !fds[0].revents().is_empty()
        };
        if !ready {
            return Ok(Batch::default());
        }
        self.collect()
    }

    /// Everything the kernel has queued by now, without waiting (the barrier of `deskd flush`).
    pub fn drain_now(&mut self) -> Result<Batch, WatchError> {
        self.collect()
    }

    /// Bytes of events read from the kernel and not yet taken by [`Watcher::next_batch`], and
    /// the most at once since the start (fanotify; inotify leaves them in the kernel: 0).
    pub fn held_bytes(&self) -> (u64, u64) {
        match &self.source {
            Source::Fanotify(s) => s.held_bytes(),
            Source::Inotify(_) => (0, 0),
        }
    }

    /// Bytes of events read from the kernel into memory since the start, all and those this
    /// process caused (fanotify; inotify holds none: zero).
    pub fn pumped(&self) -> Pumped {
        match &self.source {
            Source::Fanotify(s) => s.pumped(),
            Source::Inotify(_) => Pumped::default(),
        }
    }

    /// A handle another thread uses to end a blocking `next_batch` (shutdown).
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// A fanotify watcher whose handle cache holds `capacity` directories (tests of the
    /// degraded mode where the volume has more directories than the cache).
    #[cfg(test)]
    pub(crate) fn fanotify_with_cache(root: &Path, capacity: usize) -> Watcher {
        let root = std::fs::canonicalize(root).unwrap();
        let ignore = Ignore::new(&[]);
        let mut source = FanotifySource::open_with_capacity(
            &root,
            ignore.clone(),
            capacity,
            DEFAULT_HELD_BYTES_MAX,
        )
        .unwrap();
        source.forget_cache();
        Watcher {
            root,
            source: Source::Fanotify(Box::new(source)),
            stopper: Stopper::new().unwrap(),
            ignore,
            queue_limit: None,
            coalescer: Box::default(),
        }
    }

    /// fanotify: forget the directories at and under `rel` (the start-up walk missed them).
    #[cfg(test)]
    pub(crate) fn forget_under(&mut self, rel: &Path) {
        if let Source::Fanotify(s) = &mut self.source {
            s.forget_under(rel);
        }
    }

    /// fanotify: handles the kernel placed; inotify: directories watched.
    #[cfg(test)]
    pub(crate) fn lookups_or_watches(&self) -> u64 {
        match &self.source {
            Source::Fanotify(s) => s.kernel_lookups(),
            Source::Inotify(s) => s.watches() as u64,
        }
    }

    fn collect(&mut self) -> Result<Batch, WatchError> {
        let started = Instant::now();
        let mut sink = Sink {
            ignore: &self.ignore,
            coalescer: &mut self.coalescer,
            events: 0,
            overflow: false,
        };
        let mut read_any = false;
        for _ in 0..MAX_READS {
            let more = match &mut self.source {
                Source::Fanotify(s) => s.read_once(&mut sink)?,
                Source::Inotify(s) => s.read_once(&self.ignore, &mut sink)?,
            };
            read_any |= more;
            if !more || sink.events >= MAX_BATCH {
                break;
            }
        }
        match &mut self.source {
            Source::Fanotify(s) => s.finish(&mut sink)?,
            Source::Inotify(s) => s.finish(&self.ignore, &mut sink)?,
        }
        let over_limit = self.queue_limit.is_some_and(|limit| sink.events > limit);
        let held_drops = match &mut self.source {
            Source::Fanotify(s) => match s.drops() {
                0 => 0,
                n => {
                    s.discard_queued();
                    n
                }
            },
            _ => 0,
        };
        let over_bytes = held_drops > 0;
        let overflow = sink.overflow || over_limit || over_bytes;
        let events = sink.events;
        let losses = Losses {
            kernel: sink.overflow as u64,
            held: held_drops,
            queue_limit: over_limit as u64,
        };
        if overflow {
            tracing::debug!(
                "watch: overflow on {} ({} events in one read{})",
                self.root.display(),
                events,
                if over_limit {
                    ", over watch_queue"
                } else if over_bytes {
                    ", over the queue's bound"
                } else {
                    ""
                }
            );
            self.coalescer.clear();
            match &mut self.source {
                Source::Fanotify(s) => s.after_overflow(),
                Source::Inotify(s) => s.after_overflow(&self.ignore),
            }
        }
        Ok(Batch {
            changes: self.coalescer.finish(),
            overflow,
            losses,
            oldest: (read_any && (events > 0 || overflow)).then_some(started),
        })
    }
}

#[cfg(test)]
mod tests;
