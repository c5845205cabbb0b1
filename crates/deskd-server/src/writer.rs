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
//! The writer knows nothing of connections: a write carries a [`ReplyTo`], which the
//! connection implements, so this module can be driven (and tested) without a socket.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use deskd_db::{now_unix, Desktop};
use deskd_proto::{ErrorCode, ErrorReply, Request, Response};
use deskd_volume::Volume;
use tracing::{error, info, warn};

use crate::access::Access;
use crate::apply::{apply_write, db_error, DirCache, Reply};
use crate::config::VolumeConfig;
use crate::limits::RateLimited;
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
    /// Send the reply now.
    fn send(&self, reply: Reply) {
        self.queue(reply);
        self.flush();
    }
}

/// Where a write's reply goes (one allocation per write; the writer needs no type of its
/// caller's).
pub(crate) type Replier = Box<dyn ReplyTo>;

/// Work for a volume's writer thread.
pub(crate) enum Job {
    Write {
        request: Request,
        reply: Replier,
    },
    Flush(Sender<Reply>),
    Freeze(Option<u32>, Sender<Reply>),
    Thaw(Sender<Reply>),
    /// New settings (flush_delay, idle_close, freeze_default, freeze_max, wal_limit, min_free
    /// and durability) from a reloaded configuration; read_only needs the volume reopened.
    Retime(VolumeConfig, Sender<()>),
    /// Work on the desktop between two batches (an online rebuild's apply); returns whether
    /// it committed.
    Run(Box<dyn FnOnce(&mut Desktop) -> bool + Send>),
    /// Commit, close the desktop cleanly and release its lock, so that it can be opened again
    /// (a reload that reopens or stops serving the volume). Refused while the volume is frozen:
    /// a backup may be copying the file, and closing writes to it.
    Close(Sender<Result<(), CloseRefused>>),
    Shutdown(Sender<()>),
}

/// Why a writer does not close its desktop when asked ([`Job::Close`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CloseRefused {
    /// A backup may be copying the file, and closing writes to it.
    #[error("frozen")]
    Frozen,
}

/// State shared between the writer and status readers.
#[derive(Debug, Default, Clone)]
pub(crate) struct SharedState {
    pub(crate) last_flush: i64,
    pub(crate) frozen_until: Option<i64>,
    pub(crate) clean_at_start: bool,
    pub(crate) check_problems: Vec<String>,
}

/// What one run of a batch produced.
enum Attempt {
    /// Committed (or, for a lone failed request, rolled back); one reply per request.
    Done(Vec<Reply>),
    /// A request failed in a non-isolated run; nothing was committed.
    Retry,
}

/// Apply `writes` in one transaction. With `isolated`, each request runs in its own savepoint
/// so a failure undoes only that request; without, the first failure abandons the batch.
fn run_batch(
    desktop: &mut Desktop,
    volume: &Volume,
    read_only: bool,
    writes: &[(Request, Replier)],
    isolated: bool,
) -> Result<Attempt, deskd_db::DbError> {
    let mut batch = desktop.batch()?;
    let mut replies = Vec::with_capacity(writes.len());
    let mut cache = DirCache::default();
    for (request, sink) in writes {
        let access = sink.access();
        if isolated {
            replies.push(batch.step(|b| {
                Ok(apply_write(
                    b, volume, read_only, request, &mut cache, access,
                ))
            })?);
            continue;
        }
        let reply = apply_write(&mut batch, volume, read_only, request, &mut cache, access);
        if reply.is_err() {
            if writes.len() > 1 {
                return Ok(Attempt::Retry); // dropping the batch rolls it back
            }
            drop(batch); // a lone request: undo whatever it did, answer its error
            return Ok(Attempt::Done(vec![reply]));
        }
        replies.push(reply);
    }
    batch.commit()?;
    Ok(Attempt::Done(replies))
}

/// Most writes taken into one transaction.
const MAX_BATCH: usize = 4096;

/// How long a timed or WAL-limit checkpoint waits for readers of older snapshots: long enough
/// for the server's own short reads, short enough that a long reader (a backup, an `sqlite3`
/// session) never holds up the writes queued behind the checkpoint.
const TIMED_CHECKPOINT_WAIT: Duration = Duration::from_millis(20);
/// How long `deskd flush` and `deskd freeze` wait for such readers.
const REQUESTED_CHECKPOINT_WAIT: Duration = Duration::from_millis(500);
/// After a checkpoint that readers held back, no timed one is tried again before this.
const CHECKPOINT_RETRY: Duration = Duration::from_secs(1);

/// The writer of one volume: its desktop (None: served read-only for want of space), the lock
/// that makes it the only one, and the timers' state. Made by [`Writer::new`], run on its own
/// thread by [`Writer::spawn`].
pub(crate) struct Writer {
    desktop: Option<Desktop>,
    /// The exclusive lock that makes this the only writer, held until the desktop is closed.
    lock: Option<File>,
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
    /// The temporary directory holding the copy a full-disk opening reads, removed at close.
    temp_copy: Option<PathBuf>,
}

/// How often the log may say that space is short (a nearly full disk affects every commit).
const LOW_SPACE_LOG_EVERY: Duration = Duration::from_secs(60);

impl Writer {
    /// The writer of the desktop at `desktop_path`, opened (`desktop`) and locked (`lock`)
    /// by the caller. `temp_copy`: a directory holding a copy the readers use, removed at
    /// close.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        desktop: Option<Desktop>,
        lock: File,
        volume: Volume,
        config: VolumeConfig,
        state: Arc<Mutex<SharedState>>,
        commits: Arc<AtomicU64>,
        desktop_path: &Path,
        temp_copy: Option<PathBuf>,
    ) -> Writer {
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
        }
    }

    /// Run the writer on a thread of its own (`writer-<index>`) until its queue is closed or
    /// it is told to close or shut down.
    pub(crate) fn spawn(self, index: u32, rx: Receiver<Job>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name(format!("writer-{index}"))
            .spawn(move || self.run(rx))
            .map(|_| ())
    }

    /// Serve the queue: batches of writes, control jobs between them, timers when idle.
    fn run(mut self, rx: Receiver<Job>) {
        if self.desktop.is_none() {
            return self.serve_without_desktop(rx);
        }
        let mut writes: Vec<(Request, Replier)> = Vec::new();
        loop {
            let job = match self.next_deadline() {
                Some(deadline) => {
                    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout) => {
                            self.timers();
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
            let mut next = Some(job);
            while let Some(job) = next.take() {
                match job {
                    Job::Write { request, reply } => writes.push((request, reply)),
                    control => {
                        self.commit_batch(&mut writes);
                        match control {
                            Job::Shutdown(done) => {
                                self.shutdown();
                                self.remove_empty_wal();
                                let _ = done.send(());
                                return self.refuse_all(rx);
                            }
                            Job::Close(done) if self.frozen() => {
                                let _ = done.send(Err(CloseRefused::Frozen));
                            }
                            Job::Close(done) => {
                                self.shutdown();
                                let _ = done.send(Ok(()));
                                return self.refuse_all(rx);
                            }
                            control => self.control(control),
                        }
                    }
                }
                if writes.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.commit_batch(&mut writes);
            self.timers();
        }
        self.shutdown();
    }

    /// A volume served read-only for want of space has no write connection: writes are
    /// refused with `DiskFull`, a flush has nothing to do, and a freeze only says so (the
    /// desktop cannot change).
    fn serve_without_desktop(mut self, rx: Receiver<Job>) {
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
                Job::Run(_) => {}
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

    /// Remove the copy of the desktop a full-disk opening read (readers that still have it
    /// open keep reading the unlinked files until they notice the opening is gone).
    fn remove_temp_copy(&mut self) {
        if let Some(dir) = self.temp_copy.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Before a commit: free space must cover the WAL (what a checkpoint may need to grow
    /// the desktop) and `min_free`. When it does not, checkpoint first (the WAL's space comes
    /// back); when that does not leave `min_free` either, refuse the batch.
    fn make_room(&mut self) -> Result<(), ErrorReply> {
        let usage = |dir: &Path| {
            space::usage(dir).unwrap_or(space::Usage {
                free: u64::MAX,
                size: u64::MAX,
            })
        };
        let len = |file: &Path| std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        let now = usage(&self.desktop_dir);
        let min_free = space::min_free(self.config.min_free, now.size);
        if space::room(now.free, len(&self.wal_path), min_free) == space::Room::Enough {
            return Ok(());
        }
        let checkpointed = if self.frozen() {
            Err(ErrorReply::new(ErrorCode::Busy, "frozen"))
        } else {
            self.flush(REQUESTED_CHECKPOINT_WAIT)
        };
        let left = usage(&self.desktop_dir).free;
        let wal = len(&self.wal_path);
        if space::room(left, wal, min_free) == space::Room::Enough {
            if self.low_space_checkpointed.now() {
                info!(volume = %self.volume.root().display(),
                    "little space left on the desktop's file system: WAL checkpointed before a \
                     commit ({left} bytes free; said at most once a minute)");
            }
            return Ok(());
        }
        let root = self.volume.root().display().to_string();
        if self.low_space_logged.now() {
            warn!(volume = %root, "writes refused: {left} bytes free on the desktop's file system, \
            less than the WAL ({wal} bytes) and min_free ({min_free}){}",
            match &checkpointed {
                Ok(()) => String::new(),
                Err(e) => format!("; checkpoint: {}", e.message),
            });
        }
        Err(ErrorReply::new(
            ErrorCode::DiskFull,
            format!(
                "{root}: the desktop's file system is nearly full ({left} bytes free, min_free \
                 {min_free}); nothing was recorded. Reads go on; free space and try again"
            ),
        ))
    }

    /// After the desktop is closed: answer whatever still arrives, until the last sender is
    /// gone. A connection may have taken the handle just before the volume was closed; its
    /// request must get an answer, not wait forever.
    fn refuse_all(self, rx: Receiver<Job>) {
        let closed = || {
            ErrorReply::new(
                ErrorCode::ShuttingDown,
                format!(
                    "{}: the desktop was closed (deskd is stopping, or reopening or no longer \
                     serving the volume); nothing was recorded, try again",
                    self.volume.root().display()
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
                Job::Run(_) => {}
            }
        }
    }

    fn commit_batch(&mut self, writes: &mut Vec<(Request, Replier)>) {
        if writes.is_empty() {
            return;
        }
        if let Err(refusal) = self.make_room() {
            for (_, sink) in writes.drain(..) {
                sink.send(Err(refusal.clone()));
            }
            return;
        }
        let desktop = self.desktop.as_mut().expect("writer used after shutdown");
        let (volume, read_only) = (&self.volume, self.config.read_only);
        // Fast path: the whole batch in one transaction without savepoints (a savepoint per
        // request costs a statement journal per request). If a request fails, its
        // partial changes must not be committed: run the batch again, isolating each request.
        let outcome = match run_batch(desktop, volume, read_only, writes, false) {
            Ok(Attempt::Retry) => run_batch(desktop, volume, read_only, writes, true),
            other => other,
        };
        match outcome {
            Ok(Attempt::Retry) => unreachable!("an isolated run never asks for a retry"),
            Ok(Attempt::Done(replies)) => {
                tracing::debug!(batch = replies.len(), "committed");
                // Before any acknowledgement: readers must see this commit from now on.
                self.committed();
                let mut connections: Vec<Replier> = Vec::new();
                for ((_, sink), reply) in writes.drain(..).zip(replies) {
                    sink.queue(reply);
                    if !connections
                        .iter()
                        .any(|c| c.connection() == sink.connection())
                    {
                        connections.push(sink);
                    }
                }
                for c in connections {
                    c.flush();
                }
                self.check_wal_limit();
            }
            Err(e) => {
                error!(volume = %self.volume.root().display(), "commit failed: {e}");
                let reply = ErrorReply::new(
                    db_error(e).code,
                    format!(
                        "{}: desktop commit failed; nothing in this batch was recorded",
                        self.volume.root().display()
                    ),
                );
                for (_, sink) in writes.drain(..) {
                    sink.send(Err(reply.clone()));
                }
            }
        }
    }

    /// Bookkeeping after a commit: timers, and a new snapshot for readers.
    fn committed(&mut self) {
        self.last_write = Instant::now();
        self.dirty_since.get_or_insert(self.last_write);
        self.commits.fetch_add(1, Ordering::SeqCst);
    }

    fn frozen(&mut self) -> bool {
        match self.frozen_until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                self.frozen_until = None;
                self.state.lock().unwrap().frozen_until = None;
                info!(volume = %self.volume.root().display(), "freeze ended");
                false
            }
            None => false,
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut deadline: Option<Instant> = self.frozen_until;
        if let Some(since) = self.dirty_since {
            let flush = since + Duration::from_secs(self.config.flush_delay);
            let idle = self.last_write + Duration::from_secs(self.config.idle_close);
            let d = flush.min(idle);
            let d = match self.checkpoint_after {
                Some(after) => d.max(after),
                None => d,
            };
            let d = match self.frozen_until {
                Some(f) => d.max(f),
                None => d,
            };
            deadline = Some(deadline.map_or(d, |x| x.min(d)));
        }
        deadline
    }

    /// Whether a checkpoint that readers held back was tried too recently for another now.
    fn backing_off(&mut self) -> bool {
        match self.checkpoint_after {
            Some(after) if Instant::now() < after => true,
            _ => {
                self.checkpoint_after = None;
                false
            }
        }
    }

    fn timers(&mut self) {
        if self.frozen() || self.backing_off() {
            return;
        }
        if let Some(since) = self.dirty_since {
            let now = Instant::now();
            if now >= since + Duration::from_secs(self.config.flush_delay)
                || now >= self.last_write + Duration::from_secs(self.config.idle_close)
            {
                self.timed_flush("timed flush");
            }
        }
    }

    fn check_wal_limit(&mut self) {
        if self.frozen() || self.backing_off() {
            return;
        }
        let size = std::fs::metadata(&self.wal_path)
            .map(|m| m.len())
            .unwrap_or(0);
        if size > self.config.wal_limit {
            // A truncating checkpoint that readers hold back still copies every frame it can
            // (SQLite then proceeds as PASSIVE), so one call covers both cases.
            self.timed_flush("WAL over its limit");
        }
    }

    /// A checkpoint nobody asked for: logged once when readers start holding checkpoints
    /// back and once when one gets through, not at every retry.
    fn timed_flush(&mut self, why: &str) {
        let root = self.volume.root().display().to_string();
        match self.flush(TIMED_CHECKPOINT_WAIT) {
            Ok(()) => {
                if let Some(since) = self.held_back_since.take() {
                    info!(volume = %root, "{why}: checkpoint done after readers held it back for {} s", since.elapsed().as_secs());
                }
            }
            Err(e) if e.code == ErrorCode::Busy => {
                if self.held_back_since.is_none() {
                    self.held_back_since = Some(Instant::now());
                    warn!(volume = %root, "{why}: a reader of an older snapshot (a backup, an sqlite3 session) holds the checkpoint back; writes go on, retrying every {} s", CHECKPOINT_RETRY.as_secs());
                } else {
                    tracing::debug!(volume = %root, "{why}: checkpoint still held back");
                }
            }
            Err(e) => warn!(volume = %root, "{why} failed: {}", e.message),
        }
    }

    /// Checkpoint, waiting at most `wait` for readers of older snapshots.
    fn flush(&mut self, wait: Duration) -> Result<(), ErrorReply> {
        let desktop = self.desktop.as_ref().expect("writer used after shutdown");
        let (busy, _, _) = desktop.checkpoint(wait).map_err(|e| {
            if e.is_disk_full() {
                let wal = std::fs::metadata(&self.wal_path)
                    .map(|m| m.len())
                    .unwrap_or(0);
                ErrorReply::new(
                    ErrorCode::DiskFull,
                    format!(
                        "{}: no space left for the checkpoint: folding the WAL ({wal} bytes) \
                         into the desktop needs the desktop to grow; free space and flush \
                         again (nothing is lost: the WAL keeps every change)",
                        self.volume.root().display()
                    ),
                )
            } else {
                db_error(e)
            }
        })?;
        if busy != 0 {
            self.checkpoint_after = Some(Instant::now() + CHECKPOINT_RETRY);
            return Err(ErrorReply::new(
                ErrorCode::Busy,
                "checkpoint blocked by a reader; try again",
            ));
        }
        self.dirty_since = None;
        self.checkpoint_after = None;
        self.state.lock().unwrap().last_flush = now_unix();
        Ok(())
    }

    fn control(&mut self, job: Job) {
        match job {
            Job::Flush(reply) => {
                let result = if self.frozen() {
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
                // Flush first (a new freeze on a frozen volume just extends it).
                let result = if self.frozen() {
                    Ok(())
                } else {
                    self.flush(REQUESTED_CHECKPOINT_WAIT)
                };
                let result = result.map(|_| {
                    self.frozen_until = Some(Instant::now() + Duration::from_secs(secs as u64));
                    let until = now_unix() + secs as i64;
                    self.state.lock().unwrap().frozen_until = Some(until);
                    info!(volume = %self.volume.root().display(), seconds = secs, "frozen");
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
                let _ = reply.send(Ok(Response::Done));
            }
            Job::Retime(new, done) => {
                self.config.flush_delay = new.flush_delay;
                self.config.idle_close = new.idle_close;
                self.config.freeze_default = new.freeze_default;
                self.config.freeze_max = new.freeze_max;
                self.config.wal_limit = new.wal_limit;
                self.config.min_free = new.min_free;
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
        if let Some(desktop) = self.desktop.take() {
            match desktop.close_clean() {
                Ok(()) => info!(volume = %self.volume.root().display(), "desktop closed cleanly"),
                Err(e) => error!(volume = %self.volume.root().display(), "clean close failed: {e}"),
            }
        }
        // Only now may another opening of this desktop take the lock.
        self.lock = None;
    }
}

#[cfg(test)]
mod tests {
    //! The writer driven through its queue, with no socket: replies go to [`Recorded`]
    //! connections that keep what they were sent.

    use super::*;
    use crate::config::ConfigFile;
    use deskd_db::Read;
    use std::sync::atomic::AtomicUsize;

    /// A connection as the writer sees it: replies are queued, and sent when flushed.
    #[derive(Default)]
    struct TestConnection {
        queued: Mutex<Vec<(&'static str, Reply)>>,
        sent: Mutex<Vec<(&'static str, Reply)>>,
        flushes: AtomicUsize,
    }

    impl TestConnection {
        /// The replies sent so far, by request tag.
        fn sent(&self) -> Vec<(&'static str, Reply)> {
            self.sent.lock().unwrap().clone()
        }
    }

    /// The reply to one request (`tag`), on `connection`.
    struct Recorded {
        tag: &'static str,
        connection: Arc<TestConnection>,
        access: Access,
        /// Told when the connection is flushed (to wait for a reply from a writer thread).
        flushed: Option<Sender<()>>,
    }

    impl ReplyTo for Recorded {
        fn access(&self) -> &Access {
            &self.access
        }
        fn queue(&self, reply: Reply) {
            self.connection
                .queued
                .lock()
                .unwrap()
                .push((self.tag, reply));
        }
        fn flush(&self) {
            let mut queued = self.connection.queued.lock().unwrap();
            self.connection.sent.lock().unwrap().append(&mut queued);
            self.connection.flushes.fetch_add(1, Ordering::SeqCst);
            if let Some(flushed) = &self.flushed {
                let _ = flushed.send(());
            }
        }
        fn connection(&self) -> usize {
            Arc::as_ptr(&self.connection) as usize
        }
    }

    /// Register `name` (a path relative to the volume root), answered on `connection`.
    fn add(name: &'static str, connection: &Arc<TestConnection>) -> Job {
        Job::Write {
            request: Request::AddPath {
                vol: 0,
                path: name.as_bytes().to_vec(),
                hint: None,
                type_code: None,
                creator: None,
            },
            reply: Box::new(Recorded {
                tag: name,
                connection: connection.clone(),
                access: Access::Trusted,
                flushed: None,
            }),
        }
    }

    fn config_for(root: &Path) -> VolumeConfig {
        ConfigFile::default()
            .resolve("/unused".into(), &[root.to_path_buf()])
            .unwrap()
            .volumes
            .remove(0)
    }

    /// A writer of a new desktop in `root`, and its commit count.
    fn writer_for(root: &Path) -> (Writer, Arc<AtomicU64>) {
        let config = config_for(root);
        let volume = Volume::new(root).unwrap();
        let path = volume.root().join(deskd_volume::DESKTOP_FILE);
        let lock = crate::desktop_lock::lock_exclusive(&path, volume.root()).unwrap();
        let (desktop, _) = Desktop::open(&path, config.durability).unwrap();
        let commits = Arc::new(AtomicU64::new(0));
        let writer = Writer::new(
            Some(desktop),
            lock,
            volume,
            config,
            Arc::default(),
            commits.clone(),
            &path,
            None,
        );
        (writer, commits)
    }

    /// Queue `jobs` and then a shutdown before the writer runs, so that they all wait in its
    /// queue at once, and run the writer on this thread until it has shut down.
    fn run_queued(writer: Writer, jobs: Vec<Job>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        for job in jobs {
            tx.send(job).unwrap();
        }
        let (done, _done) = crossbeam_channel::bounded(1);
        tx.send(Job::Shutdown(done)).unwrap();
        drop(tx);
        writer.run(rx);
    }

    fn files(root: &Path, names: &[&str]) {
        for name in names {
            std::fs::write(root.join(name), b"").unwrap();
        }
    }

    fn id_of(reply: &Reply) -> u32 {
        match reply {
            Ok(Response::Object(o)) => o.id,
            other => panic!("not an object: {other:?}"),
        }
    }

    #[test]
    fn writes_waiting_together_are_committed_once() {
        let dir = tempfile::tempdir().unwrap();
        files(dir.path(), &["a", "b", "c"]);
        let (writer, commits) = writer_for(dir.path());
        let (one, two) = (Arc::default(), Arc::default());
        run_queued(writer, vec![add("a", &one), add("b", &two), add("c", &one)]);
        assert_eq!(
            commits.load(Ordering::SeqCst),
            1,
            "one commit for the batch"
        );
        let (one, two) = (one.sent(), two.sent());
        assert_eq!(one.iter().map(|r| r.0).collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(two.iter().map(|r| r.0).collect::<Vec<_>>(), ["b"]);
        let mut ids: Vec<u32> = one.iter().chain(&two).map(|r| id_of(&r.1)).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 3, "three new objects");
    }

    #[test]
    fn a_connection_is_flushed_once_per_commit() {
        let dir = tempfile::tempdir().unwrap();
        files(dir.path(), &["a", "b", "c"]);
        let (writer, _) = writer_for(dir.path());
        let (one, two): (Arc<TestConnection>, Arc<TestConnection>) =
            (Arc::default(), Arc::default());
        run_queued(writer, vec![add("a", &one), add("b", &two), add("c", &one)]);
        assert_eq!(one.flushes.load(Ordering::SeqCst), 1);
        assert_eq!(two.flushes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_failing_request_gets_its_error_and_the_rest_of_its_batch_commits() {
        let dir = tempfile::tempdir().unwrap();
        files(dir.path(), &["a", "b"]);
        let (writer, commits) = writer_for(dir.path());
        let desktop = dir.path().join(deskd_volume::DESKTOP_FILE);
        let before = deskd_db::Reader::open(&desktop).unwrap().stats().unwrap();
        let client = Arc::default();
        run_queued(
            writer,
            vec![
                add("a", &client),
                add("missing", &client),
                add("b", &client),
            ],
        );
        let sent = client.sent();
        assert_eq!(
            sent.iter().map(|r| r.0).collect::<Vec<_>>(),
            ["a", "missing", "b"]
        );
        let error = sent[1].1.as_ref().unwrap_err();
        assert_eq!(error.code, ErrorCode::ClaimRejected, "{error:?}");
        let (a, b) = (id_of(&sent[0].1), id_of(&sent[2].1));
        assert_eq!(commits.load(Ordering::SeqCst), 1, "still one commit");
        // What the acknowledged requests did is on the desktop; the failed one left nothing.
        let reader = deskd_db::Reader::open(&desktop).unwrap();
        assert_eq!(reader.get(a).unwrap().name, b"a");
        assert_eq!(reader.get(b).unwrap().name, b"b");
        assert_eq!(reader.stats().unwrap().objects, before.objects + 2);
    }

    #[test]
    fn a_write_caught_by_a_close_is_refused_and_its_retry_commits_after_the_reopening() {
        let dir = tempfile::tempdir().unwrap();
        files(dir.path(), &["a"]);
        let (writer, _) = writer_for(dir.path());
        let (tx, rx) = crossbeam_channel::unbounded();
        writer.spawn(0, rx).unwrap();
        let (closed, close) = crossbeam_channel::bounded(1);
        tx.send(Job::Close(closed)).unwrap();
        assert_eq!(close.recv().unwrap(), Ok(()));
        // A connection that took the old opening's queue before the close: answered, not lost.
        let client: Arc<TestConnection> = Arc::default();
        let (flushed, replied) = crossbeam_channel::unbounded();
        let write = |flushed: &Sender<()>| Job::Write {
            request: Request::AddPath {
                vol: 0,
                path: b"a".to_vec(),
                hint: None,
                type_code: None,
                creator: None,
            },
            reply: Box::new(Recorded {
                tag: "a",
                connection: client.clone(),
                access: Access::Trusted,
                flushed: Some(flushed.clone()),
            }),
        };
        tx.send(write(&flushed)).unwrap();
        replied
            .recv_timeout(Duration::from_secs(10))
            .expect("the refusal of a write caught by the close");
        let refusal = client.sent().remove(0).1.unwrap_err();
        assert_eq!(refusal.code, ErrorCode::ShuttingDown, "{refusal:?}");
        assert!(refusal.message.contains("try again"), "{}", refusal.message);
        // The close released the lock: the reopening gets it, and the retry commits.
        let (writer, commits) = writer_for(dir.path());
        run_queued(writer, vec![write(&flushed)]);
        assert_eq!(commits.load(Ordering::SeqCst), 1);
        let sent = client.sent();
        assert_eq!(sent.len(), 2);
        let reader = deskd_db::Reader::open(&dir.path().join(deskd_volume::DESKTOP_FILE)).unwrap();
        assert_eq!(reader.get(id_of(&sent[1].1)).unwrap().name, b"a");
    }
}
