//! The writer thread of one volume: the only write connection to its desktop.
//!
//! It drains its queue, applies everything that arrived as one transaction, commits, and only
//! then acknowledges (group commit with no added delay): the batch runs without savepoints and,
//! only when a request in it fails, again with one savepoint per request, so the failing
//! request gets its error and the others still commit. Between batches it runs the flush,
//! idle-close, WAL-limit and freeze timers. Before a commit it keeps `min_free` free beyond the
//! WAL ([`crate::space`]); a desktop that cannot be opened for writing for want of space is
//! served read-only, by a writer without a desktop.
//!
//! When another process holds the desktop's write lock, writes wait (bounded by `busy_wait`)
//! while control jobs are still served ([`busy`]).
//!
//! Group commit is in [`batch`], the timers and checkpoints in [`checkpoint`], a lone write
//! committed by the connection thread that read it (the writer idle) in [`alone`]. The writer
//! knows nothing of connections: a write carries a [`ReplyTo`], which the
//! connection implements, so this module can be driven (and tested) without a socket.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use deskd_db::{now_unix, CheckpointMode, Desktop};
use deskd_proto::{ErrorCode, ErrorReply, Request, Response};
use deskd_volume::Volume;
use tracing::{error, info, warn};

mod alone;
mod batch;
mod busy;
mod checkpoint;
mod checkpointer;
pub(crate) mod pg;
mod priority;
mod wal_writeback;
mod watched;

use checkpoint::REQUESTED_CHECKPOINT_WAIT;
#[cfg(test)]
mod tests;

use crate::access::Access;
use crate::apply::watched::WatchedOutcome;
use crate::apply::Reply;
use crate::config::VolumeConfig;
use crate::figures::CommitFigures;
use crate::limits::RateLimited;
use crate::private_temp::PrivateTemp;
use crate::space;

/// Where the writer sends the reply to one write, once its batch is committed (or refused).
/// The connection thread implements it ([`crate::conn::ReplySink`]); tests record replies.
pub(crate) trait ReplyTo: Send {
    /// Whose request it is: the writer walks every path as this peer.
    fn access(&self) -> &Access;
    /// Buffer the reply; it leaves with the next [`ReplyTo::flush`] of its connection, so a
    /// committed batch costs one write per connection, not one per reply.
    fn queue(&self, reply: Reply);
    /// Push the buffered replies of this reply's connection to the client.
    fn flush(&self);
    /// Which connection the reply goes to: replies with the same key share one flush.
    fn connection(&self) -> usize;
    /// Who asked, for the audit log (`uid 501 pid 4242 (dt)`, `tcp 10.0.0.2:5123`).
    fn who(&self) -> std::sync::Arc<str> {
        "an unknown client".into()
    }
    /// Send the reply now.
    fn send(&self, reply: Reply) {
        self.queue(reply);
        self.flush();
    }
}

/// Where a write's reply goes (one allocation per write; the writer needs no type of its
/// caller's).
pub(crate) type Replier = Box<dyn ReplyTo>;

/// A write taken from the queue, waiting for its batch's commit.
pub(super) struct Pending {
    request: Request,
    reply: Replier,
    /// When the writer took it (a write waits for a busy desktop at most `busy_wait`).
    queued: Instant,
}

/// Work for a volume's writer thread.
pub(crate) enum Job {
    Write {
        request: Request,
        reply: Replier,
    },
    Flush(Sender<Reply>),
    Freeze(Option<u32>, Sender<Reply>),
    Thaw(Sender<Reply>),
    /// New settings (flush_delay, idle_close, freeze_default, freeze_max, busy_wait, wal_limit, min_free,
    /// replaced and durability) from a reloaded configuration; read_only needs the volume reopened.
    Retime(VolumeConfig, Sender<()>),
    /// Work on the desktop between two batches (an online rebuild's apply); returns whether
    /// it committed.
    Run(Box<dyn FnOnce(&mut Desktop) -> bool + Send>),
    /// Commit, close the desktop cleanly and release its lock, so that it can be opened again
    /// (a reload that reopens or stops serving the volume). Refused while the volume is frozen:
    /// a backup may be copying the file, and closing writes to it.
    Close(Sender<Result<(), CloseRefused>>),
    Shutdown(Sender<()>),
    /// One batch of the changes the volume's watcher saw (issue 23), applied in one
    /// transaction as the server's own requests ([`crate::apply::watched`]). The flag: a
    /// barrier (`deskd flush`) waits for it, so a burst's batch is not applied at the lowered
    /// priority of [`priority`] (the burst is over or the client asked for it now).
    Watch(Vec<deskd_watch::Change>, bool, Sender<WatchedOutcome>),
    /// Wake the thread so that it sets its timers again: a lone write committed by a
    /// connection thread made the desktop dirty while the writer thread slept with no timer,
    /// or with one too late for the new flush ([`WriterShare::commit_alone`]).
    Tick,
}

/// Why a writer does not close its desktop when asked ([`Job::Close`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CloseRefused {
    /// A backup may be copying the file, and closing writes to it.
    #[error("frozen")]
    Frozen,
    /// Another process holds the desktop's write lock: the desktop could neither be closed
    /// cleanly nor opened again.
    #[error("desktop DB busy by another process")]
    Busy,
}

/// State shared between the writer and status readers.
#[derive(Debug, Default, Clone)]
pub(crate) struct SharedState {
    pub(crate) last_flush: i64,
    pub(crate) frozen_until: Option<i64>,
    pub(crate) clean_at_start: bool,
    pub(crate) check_problems: Vec<String>,
    /// Unix time the start-up check ended (None while it runs).
    pub(crate) check_finished: Option<i64>,
    /// A PostgreSQL volume whose database cannot be reached: since when (Unix time) and the
    /// last error; writes are refused read-only meanwhile ([`pg`]).
    pub(crate) unavailable: Option<(i64, String)>,
}

/// A volume's writer as its thread and the connection threads share it ([`Writer::spawn`]),
/// and its batch sizes and wal-index, which status and a scrape read without the writer.
/// A PostgreSQL volume's writer ([`pg`]) shares only its figures: its thread commits every
/// write.
#[derive(Clone)]
pub(crate) struct WriterShare(
    Option<Arc<Mutex<Writer>>>,
    Arc<CommitFigures>,
    Option<Arc<deskd_db::WalIndex>>,
);

/// Most writes taken into one transaction.
const MAX_BATCH: usize = 4096;

/// The writer of one volume: its desktop (None: served read-only for want of space), the lock
/// that makes it the only one, and the timers' state. Made by [`Writer::new`], run on its own
/// thread by [`Writer::spawn`].
pub(crate) struct Writer {
    desktop: Option<Desktop>,
    /// The exclusive lock that makes this the only writer, held until the desktop is closed.
    lock: Option<crate::desktop_lock::DesktopLock>,
    volume: Volume,
    config: VolumeConfig,
    state: Arc<Mutex<SharedState>>,
    commits: Arc<AtomicU64>,
    wal_path: PathBuf,
    /// When the oldest committed but not yet checkpointed change was made.
    dirty_since: Option<Instant>,
    last_write: Instant,
    frozen_until: Option<Instant>,
    /// After a checkpoint that readers held back: no timed checkpoint before this.
    checkpoint_after: Option<Instant>,
    /// Since when timed checkpoints have been held back by a reader (for the log).
    held_back_since: Option<Instant>,
    /// Where the WAL grows: its free space is checked before each commit.
    desktop_dir: PathBuf,
    /// Writes refused for want of space (logged at most once a minute).
    low_space_logged: RateLimited,
    /// A commit that had to checkpoint first for want of space (logged likewise).
    low_space_checkpointed: RateLimited,
    /// The private temp directories of this opening (a read-only volume's temporary desktop,
    /// the copy a full-disk opening reads), removed at close.
    temp_copy: Vec<PrivateTemp>,
    /// Another process holds the desktop's write lock (writes wait).
    busy: Option<busy::BusySpell>,
    /// While the writer thread waits for its queue: until when (`Some(None)`: with no timer).
    /// A commit made meanwhile on another thread wakes it when its timers need an earlier turn.
    sleeping_until: Option<Option<Instant>>,
    /// Sizes of the committed client batches (`/metrics`).
    figures: Arc<CommitFigures>,
    /// Starts writing the WAL out as it grows, so a checkpoint's fsync finds little to do.
    wal_writeback: wal_writeback::WalWriteback,
    /// The objects the watcher registered lately: a temporary renamed over a name (a save).
    watch_young: crate::apply::watched::Young,
    /// New IDs the watcher handed out per user in the current window (hostile review of 2026-12-06, finding 4).
    watch_spending: crate::apply::spending::Spending,
    /// Folders' paths looked up by client batches, kept for the next batch (a folder tree
    /// made one ADD at a time reads each parent's path once) while nothing else wrote.
    dir_paths: crate::apply::DirCache,
    /// When `dir_paths` was last right: the commit count after the client batch that used it
    /// (other connections' commits the cache checks itself, inside the next batch's write
    /// lock). `None` after anything else ran on the desktop.
    dir_paths_seen: Option<u64>,
    /// Runs the checkpoints nobody waits for beside the writer (None: its connection could
    /// not be opened, or no desktop; then the writer runs them itself, as writes wait).
    checkpointer: Option<checkpointer::Checkpointer>,
    /// The WAL's wal-index: how much of the WAL is in use and not yet checkpointed (None: the
    /// WAL file's length says it, as when every checkpoint truncated it).
    wal_index: Option<Arc<deskd_db::WalIndex>>,
}

/// How often the log may say that space is short (a nearly full disk affects every commit).
const LOW_SPACE_LOG_EVERY: Duration = Duration::from_secs(60);

impl Writer {
    /// The writer of the desktop at `desktop_path`, opened (`desktop`) and locked (`lock`)
    /// by the caller. `temp_copy`: private temp directories holding the desktop or a copy the
    /// readers use, removed at close.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        desktop: Option<Desktop>,
        lock: crate::desktop_lock::DesktopLock,
        volume: Volume,
        config: VolumeConfig,
        state: Arc<Mutex<SharedState>>,
        commits: Arc<AtomicU64>,
        desktop_path: &Path,
        temp_copy: Vec<PrivateTemp>,
    ) -> Writer {
        let (checkpointer, wal_index) = match &desktop {
            Some(open) => Writer::checkpointing(open, &config, &commits, &state, desktop_path),
            None => (None, None),
        };
        Writer {
            desktop,
            lock: Some(lock),
            volume,
            config,
            state,
            commits,
            wal_path: deskd_db::wal_path(desktop_path),
            desktop_dir: space::desktop_dir(desktop_path).to_path_buf(),
            dirty_since: None,
            last_write: Instant::now(),
            frozen_until: None,
            checkpoint_after: None,
            held_back_since: None,
            low_space_logged: RateLimited::new(LOW_SPACE_LOG_EVERY),
            low_space_checkpointed: RateLimited::new(LOW_SPACE_LOG_EVERY),
            temp_copy,
            busy: None,
            sleeping_until: None,
            figures: Arc::default(),
            wal_writeback: Default::default(),
            watch_young: Default::default(),
            watch_spending: Default::default(),
            dir_paths: Default::default(),
            dir_paths_seen: None,
            checkpointer,
            wal_index,
        }
    }

    /// What the checkpoints of the open `desktop` need: the WAL file kept within `wal_limit`
    /// when SQLite restarts it, the checkpointer thread and the wal-index. Without either of
    /// the last two (logged) the writer runs every checkpoint itself, truncating.
    fn checkpointing(
        desktop: &Desktop,
        config: &VolumeConfig,
        commits: &Arc<AtomicU64>,
        state: &Arc<Mutex<SharedState>>,
        desktop_path: &Path,
    ) -> (
        Option<checkpointer::Checkpointer>,
        Option<Arc<deskd_db::WalIndex>>,
    ) {
        let root = config.root.as_path();
        if let Err(e) = desktop.set_wal_size_limit(config.wal_limit) {
            warn!(volume = %root.display(), "WAL size limit not set: {e}");
        }
        // Without the wal-index the WAL's size is its file's length, which only a truncating
        // checkpoint brings back: then every checkpoint stays the writer's, truncating.
        let wal_index = match deskd_db::WalIndex::open(desktop_path) {
            Ok(index) if index.read().is_some() => Arc::new(index),
            other => {
                warn!(volume = %root.display(), "wal-index not readable ({}): the writer checkpoints itself, truncating the WAL",
                    other.err().map_or("not initialized".to_string(), |e| e.to_string()));
                return (None, None);
            }
        };
        match checkpointer::Checkpointer::start(
            desktop_path,
            config.durability,
            commits.clone(),
            state.clone(),
            wal_index.clone(),
            root,
        ) {
            Ok(c) => {
                c.restart_above(checkpoint::background_at(config.wal_limit));
                (Some(c), Some(wal_index))
            }
            Err(e) => {
                warn!(volume = %root.display(), "no checkpointer thread ({e}): the writer checkpoints itself, truncating the WAL");
                (None, None)
            }
        }
    }

    /// Run the writer on a thread of its own (`writer-<index>`) until its queue is closed or
    /// it is told to close or shut down. The returned share lets the thread that read a lone
    /// write commit it itself when this thread is idle ([`WriterShare::commit_alone`]).
    pub(crate) fn spawn(self, index: u32, rx: Receiver<Job>) -> std::io::Result<WriterShare> {
        let share = WriterShare::new(self);
        let thread_share = share.clone();
        std::thread::Builder::new()
            .name(format!("writer-{index}"))
            .spawn(move || thread_share.run(rx))
            .map(|_| share)
    }
}

impl WriterShare {
    /// Share `writer` (its batch sizes stay readable without its lock).
    fn new(writer: Writer) -> WriterShare {
        let figures = writer.figures.clone();
        let wal_index = writer.wal_index.clone();
        WriterShare(Some(Arc::new(Mutex::new(writer))), figures, wal_index)
    }

    /// Bytes of the WAL not yet checkpointed into the desktop at `desktop_path` (read without
    /// the writer's lock: status and `/metrics`).
    pub(crate) fn wal_pending_bytes(&self, desktop_path: &Path) -> u64 {
        deskd_db::wal::pending_bytes(self.2.as_deref(), desktop_path)
    }

    /// The sizes of the batches committed so far (read without the writer's lock).
    pub(crate) fn figures(&self) -> &CommitFigures {
        &self.1
    }

    /// The writer, for its own thread (a panic elsewhere while holding it ends the writer
    /// as a panic on its thread did).
    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        let writer = self.0.as_ref().expect("an SQLite volume's writer");
        writer.lock().expect("the writer panicked")
    }

    /// Serve the queue: batches of writes, control jobs between them, timers when idle. The
    /// writer is locked while a batch or job is served, not while the thread waits, so that a
    /// connection may commit a lone write meanwhile.
    fn run(self, rx: Receiver<Job>) {
        let mut writer = self.lock();
        if writer.desktop.is_none() {
            // Locked for good: no write is committed elsewhere.
            return writer.serve_without_desktop(rx);
        }
        drop(writer);
        let mut writes: Vec<Pending> = Vec::new();
        loop {
            let deadline = {
                let mut writer = self.lock();
                let deadline = writer.next_deadline();
                writer.sleeping_until = Some(deadline);
                deadline
            };
            let job = match deadline {
                Some(deadline) => {
                    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout) => {
                            let mut writer = self.lock();
                            writer.sleeping_until = None;
                            writer.commit_due(&mut writes);
                            writer.timers();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match rx.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            let mut writer = self.lock();
            writer.sleeping_until = None;
            let mut next = Some(job);
            while let Some(job) = next.take() {
                match job {
                    Job::Write { request, reply } => writes.push(Pending {
                        request,
                        reply,
                        queued: Instant::now(),
                    }),
                    control => {
                        writer.commit_due(&mut writes);
                        match control {
                            Job::Shutdown(done) => {
                                writer.commit_batch(&mut writes); // a last try
                                writer.refuse_waiting(&mut writes);
                                writer.shutdown();
                                writer.remove_empty_wal();
                                let _ = done.send(());
                                // Still locked: nothing is committed inline any more.
                                return writer.refuse_all(rx);
                            }
                            Job::Close(done) if writer.frozen() => {
                                let _ = done.send(Err(CloseRefused::Frozen));
                            }
                            Job::Close(done) if writer.still_busy(&mut writes) => {
                                let _ = done.send(Err(CloseRefused::Busy));
                            }
                            Job::Close(done) => {
                                writer.commit_batch(&mut writes); // a last try
                                writer.refuse_waiting(&mut writes);
                                writer.shutdown();
                                let _ = done.send(Ok(()));
                                return writer.refuse_all(rx);
                            }
                            control => writer.control(control),
                        }
                    }
                }
                if writes.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            writer.commit_due(&mut writes);
            writer.timers();
        }
        let mut writer = self.lock();
        writer.commit_batch(&mut writes);
        writer.refuse_waiting(&mut writes);
        writer.shutdown();
    }
}

impl Writer {
    /// A volume served read-only for want of space has no write connection: writes are
    /// refused with `DiskFull`, a flush has nothing to do, and a freeze only says so (the
    /// desktop cannot change).
    fn serve_without_desktop(&mut self, rx: Receiver<Job>) {
        let refusal = || {
            ErrorReply::new(
                ErrorCode::DiskFull,
                format!(
                    "{}: read-only: {}; free space on it, then reload deskd (SIGHUP) to write \
                     again",
                    self.volume.root().display(),
                    space::FULL_REASON
                ),
            )
        };
        while let Ok(job) = rx.recv() {
            match job {
                Job::Write { reply, .. } => reply.send(Err(refusal())),
                Job::Flush(reply) | Job::Thaw(reply) => {
                    let _ = reply.send(Ok(Response::Done));
                }
                Job::Freeze(seconds, reply) => {
                    let secs = seconds
                        .unwrap_or(self.config.freeze_default)
                        .min(self.config.freeze_max)
                        .max(1);
                    let _ = reply.send(Ok(Response::Frozen {
                        until: now_unix() + secs as i64,
                        clamped: seconds.is_some_and(|s| s > self.config.freeze_max),
                        max: self.config.freeze_max,
                    }));
                }
                Job::Retime(new, done) => {
                    self.config = new;
                    let _ = done.send(());
                }
                Job::Run(_) | Job::Tick => {}
                Job::Watch(_, _, reply) => {
                    let _ = reply.send(WatchedOutcome::refused(space::FULL_REASON));
                }
                Job::Close(done) => {
                    self.lock = None;
                    self.remove_temp_copy();
                    let _ = done.send(Ok(()));
                    return self.refuse_all(rx);
                }
                Job::Shutdown(done) => {
                    self.lock = None;
                    self.remove_temp_copy();
                    let _ = done.send(());
                    return self.refuse_all(rx);
                }
            }
        }
    }

    /// Remove this opening's temp directories: a temporary desktop, the copy a full-disk
    /// opening read (readers that still have it open keep reading the unlinked files until
    /// they notice the opening is gone).
    fn remove_temp_copy(&mut self) {
        for mut temp in self.temp_copy.drain(..) {
            temp.remove();
        }
    }

    /// After the desktop is closed: answer whatever still arrives, until the last sender is
    /// gone. A connection may have taken the handle just before the volume was closed; its
    /// request must get an answer, not wait forever.
    fn refuse_all(&self, rx: Receiver<Job>) {
        refuse_all(self.volume.root(), rx)
    }

    fn control(&mut self, job: Job) {
        // A flush, freeze, reload, repair or the watcher's batch may change the desktop or
        // reopen it: the client batches' cached paths are not trusted after any of them.
        if !matches!(job, Job::Tick) {
            self.dir_paths_seen = None;
        }
        match job {
            Job::Flush(reply) => {
                let result = if let Some(busy) = self.busy_refusal("flush") {
                    Err(busy)
                } else if self.frozen() {
                    Err(ErrorReply::new(
                        ErrorCode::Busy,
                        format!(
                            "{}: frozen; flush after the freeze ends (or thaw)",
                            self.volume.root().display()
                        ),
                    ))
                } else {
                    self.flush(REQUESTED_CHECKPOINT_WAIT)
                        .map(|_| Response::Done)
                };
                let _ = reply.send(result);
            }
            Job::Freeze(seconds, reply) => {
                let wanted = seconds.unwrap_or(self.config.freeze_default);
                let clamped = wanted > self.config.freeze_max;
                let secs = wanted.min(self.config.freeze_max).max(1);
                // Flush first, unless already frozen: then the freeze is only extended, and
                // never shortened (a backup relying on `freeze 60` must not lose its time to
                // a later `freeze 5`).
                let running = if self.frozen() {
                    self.frozen_until
                } else {
                    None
                };
                // The flush and the freeze's start under the checkpoint gate: no round of the
                // checkpointer comes between them.
                let checkpointer = self.checkpointer.clone();
                let mut gate = checkpointer.as_ref().map(|c| c.hold());
                let result = if running.is_some() {
                    Ok(())
                } else if let Some(busy) = self.busy_refusal("freeze") {
                    Err(busy)
                } else {
                    self.checkpoint_held(CheckpointMode::Truncate, REQUESTED_CHECKPOINT_WAIT)
                };
                let result = result.map(|_| {
                    let asked = Instant::now() + Duration::from_secs(secs as u64);
                    let asked_unix = now_unix() + secs as i64;
                    let volume = self.volume.root().display();
                    let running_unix = self.state.lock().unwrap().frozen_until;
                    let until = match running {
                        Some(current) if current >= asked => {
                            info!(%volume, seconds = secs,
                                "already frozen for longer; the freeze keeps its end");
                            let left = (current - asked).as_secs() as i64;
                            running_unix.unwrap_or(asked_unix + left).max(asked_unix)
                        }
                        _ => {
                            self.frozen_until = Some(asked);
                            if running.is_some() {
                                info!(%volume, seconds = secs, "freeze extended");
                            } else {
                                info!(%volume, seconds = secs, "frozen");
                            }
                            asked_unix
                        }
                    };
                    self.state.lock().unwrap().frozen_until = Some(until);
                    if let Some(gate) = gate.as_deref_mut() {
                        gate.frozen_until = self.frozen_until;
                    }
                    Response::Frozen {
                        until,
                        clamped,
                        max: self.config.freeze_max,
                    }
                });
                let _ = reply.send(result);
            }
            Job::Thaw(reply) => {
                self.frozen_until = None;
                self.state.lock().unwrap().frozen_until = None;
                if let Some(checkpointer) = &self.checkpointer {
                    checkpointer.hold().frozen_until = None;
                    // A round waiting for the freeze's end may go now.
                    checkpointer.nudge();
                }
                let _ = reply.send(Ok(Response::Done));
            }
            Job::Retime(new, done) => {
                self.config.flush_delay = new.flush_delay;
                self.config.idle_close = new.idle_close;
                self.config.freeze_default = new.freeze_default;
                self.config.freeze_max = new.freeze_max;
                self.config.busy_wait = new.busy_wait;
                if new.wal_limit != self.config.wal_limit {
                    self.config.wal_limit = new.wal_limit;
                    let desktop = self.desktop.as_ref().expect("writer used after shutdown");
                    if let Err(e) = desktop.set_wal_size_limit(new.wal_limit) {
                        warn!(volume = %self.volume.root().display(), "WAL size limit not set: {e}");
                    }
                    if let Some(checkpointer) = &self.checkpointer {
                        checkpointer.restart_above(checkpoint::background_at(new.wal_limit));
                    }
                }
                self.config.min_free = new.min_free;
                self.config.replaced = new.replaced;
                if (new.watch_budget, new.watch_budget_window)
                    != (self.config.watch_budget, self.config.watch_budget_window)
                {
                    info!(volume = %self.volume.root().display(),
                        "watch budget now {} new IDs a payer per {} s",
                        new.watch_budget, new.watch_budget_window.as_secs());
                }
                self.config.watch_budget = new.watch_budget;
                self.config.watch_budget_window = new.watch_budget_window;
                if new.durability != self.config.durability {
                    let desktop = self.desktop.as_ref().expect("writer used after shutdown");
                    match desktop.set_durability(new.durability) {
                        Ok(()) => {
                            self.config.durability = new.durability;
                            info!(volume = %self.volume.root().display(),
                                "durability now {:?}", new.durability);
                        }
                        Err(e) => warn!(volume = %self.volume.root().display(),
                            "durability stays {:?}: {e}", self.config.durability),
                    }
                }
                let _ = done.send(());
            }
            Job::Run(work) => {
                let desktop = self.desktop.as_mut().expect("writer used after shutdown");
                if work(desktop) {
                    self.committed();
                    self.check_wal_limit();
                }
            }
            Job::Watch(changes, waited_for, reply) => {
                let lowered = (changes.len() >= priority::BURST_CHANGES && !waited_for)
                    .then(priority::Lowered::for_a_burst)
                    .flatten();
                let outcome = self.apply_watched(&changes);
                drop(lowered);
                let _ = reply.send(outcome);
            }
            // Only wakes the thread, to set its timers after a commit made elsewhere.
            Job::Tick => {}
            Job::Write { .. } | Job::Close(_) | Job::Shutdown(_) => {
                unreachable!("handled by run")
            }
        }
    }

    /// At the server's end, after a clean close: remove a WAL the checkpoint emptied (and its
    /// index), which the process's read connections would otherwise leave behind. Never done
    /// at a reload's close (readers of this opening may still use them), nor while another
    /// process (an `sqlite3` session, a backup) has the desktop open.
    fn remove_empty_wal(&self) {
        let wal = self.wal_path.as_os_str().as_bytes();
        let desktop = Path::new(std::ffi::OsStr::from_bytes(
            &wal[..wal.len() - "-wal".len()],
        ));
        if std::fs::metadata(&self.wal_path).is_ok_and(|m| m.len() == 0)
            && !space::open_elsewhere(desktop)
        {
            let _ = std::fs::remove_file(&self.wal_path);
            let _ = std::fs::remove_file(deskd_db::shm_path(desktop));
        }
    }

    fn shutdown(&mut self) {
        // Its round ends first: the clean close's checkpoint must be the last.
        if let Some(checkpointer) = self.checkpointer.take() {
            checkpointer.stop();
        }
        if let Some(desktop) = self.desktop.take() {
            match desktop.close_clean() {
                Ok(()) => info!(volume = %self.volume.root().display(), "desktop closed cleanly"),
                Err(e) => error!(volume = %self.volume.root().display(), "clean close failed: {e}"),
            }
        }
        // Only now may another opening of this desktop take the lock.
        self.lock = None;
        // A temporary desktop goes with its opening (seed 002: removed at a clean stop).
        self.remove_temp_copy();
    }
}

/// After the desktop is closed: answer whatever still arrives, until the last sender is
/// gone (a connection may have taken the handle just before the volume was closed).
pub(super) fn refuse_all(root: &Path, rx: Receiver<Job>) {
    let closed = || {
        ErrorReply::new(
            ErrorCode::ShuttingDown,
            format!(
                "{}: the desktop was closed (deskd is stopping, or reopening or no longer \
                 serving the volume); nothing was recorded, try again",
                root.display()
            ),
        )
    };
    for job in rx.iter() {
        match job {
            Job::Write { reply, .. } => reply.send(Err(closed())),
            Job::Flush(reply) | Job::Freeze(_, reply) | Job::Thaw(reply) => {
                let _ = reply.send(Err(closed()));
            }
            Job::Retime(_, done) | Job::Shutdown(done) => {
                let _ = done.send(());
            }
            Job::Close(done) => {
                let _ = done.send(Ok(()));
            }
            // Dropping an online rebuild's work tells it that the desktop is gone.
            Job::Run(_) | Job::Tick => {}
            Job::Watch(_, _, reply) => {
                let _ = reply.send(WatchedOutcome::refused("the desktop was closed"));
            }
        }
    }
}
