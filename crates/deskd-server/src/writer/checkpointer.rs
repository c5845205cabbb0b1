//! The volume's checkpointer: a thread with a desktop connection of its own that folds the WAL
//! into `.Desktop` while the writer goes on committing.
//!
//! A checkpoint on the writer's connection held every write behind it: the fsync of the WAL,
//! the copy, the fsync of the desktop and, with TRUNCATE, freeing the WAL file (22–49 ms for
//! 64 MiB on the test VM's ext4 mounted `discard`; docs/PERFORMANCE.md, issue 22). The
//! checkpoints nobody waits for (the WAL past a quarter of `wal_limit`, `flush_delay`,
//! `idle_close`) run here instead, PASSIVE: SQLite lets a checkpointer and the writer work at
//! once, so no write waits. Nothing is truncated: after a checkpoint that copied every frame,
//! the next commit restarts the WAL from its start and reuses the file, whose length
//! `journal_size_limit` bounds. A write burst that never pauses keeps the WAL from restarting
//! (a checkpoint completes only for the frames that were there when it began), and so does a
//! reader's snapshot taken just before a round ended, at the next commit: after a round, while
//! the WAL in use is over a quarter of `wal_limit` and has not restarted, this thread waits
//! until the writer has paused ([`SETTLE`]) and goes again, so the WAL restarts in the next
//! pause. A burst that reaches `wal_limit` regardless
//! is checkpointed by the writer itself, which then has only the frames since this thread's
//! last round left to copy ([`super::checkpoint`]).
//!
//! The checkpoints the writer runs itself (`deskd flush`, `deskd freeze`, the space rule, the
//! `wal_limit` bound, close) take the [`Gate`] first, so they never meet one of this thread's
//! half-way, and a freeze is set under it: no checkpoint of this thread starts during a
//! freeze.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use deskd_db::{now_unix, CheckpointConnection, CheckpointMode, Durability, WalIndex};
use tracing::{debug, info, warn};

use super::checkpoint::CHECKPOINT_RETRY;
use super::SharedState;
use crate::limits::RateLimited;

/// How long the writer must have committed nothing before another round goes for a WAL
/// restart (a round that commits overtook cannot restart the WAL).
pub(super) const SETTLE: Duration = Duration::from_millis(10);

/// How long, after a round that copied everything, the next commit is watched for (to see that
/// it restarted the WAL).
const WATCH_NEXT_COMMIT: Duration = Duration::from_secs(1);

/// How often a failing checkpoint is logged.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// The checkpoint lock of a volume: held by whichever of the writer and the checkpointer
/// checkpoints, with what both must agree on.
pub(super) struct Gate {
    /// The checkpointer's connection (gone once it stopped).
    conn: Option<CheckpointConnection>,
    /// No checkpoint before this: a freeze. The writer sets it under the gate.
    pub(super) frozen_until: Option<Instant>,
    /// Since when readers of older snapshots have held checkpoints back (logged once when it
    /// begins and once when a checkpoint gets through, by whichever side meets it).
    pub(super) held_back_since: Option<Instant>,
}

/// What the writer asks of the thread.
#[derive(Default)]
struct Signal {
    /// Why a checkpoint is wanted (for the log), until a round starts.
    wanted: Option<&'static str>,
    /// WAL in use (bytes) from which a restart is worth a round after a pause.
    restart_above: u64,
    stop: bool,
}

struct Shared {
    gate: Mutex<Gate>,
    signal: Mutex<Signal>,
    wake: Condvar,
    /// The writer's commit count (a round that commits overtook did not restart the WAL).
    commits: Arc<AtomicU64>,
    /// Where `last_flush` is kept for status.
    state: Arc<Mutex<SharedState>>,
    index: Arc<WalIndex>,
    root: String,
}

/// The handle the writer keeps (cloned to hold the gate while it checkpoints itself).
#[derive(Clone)]
pub(super) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

/// How one round ended.
enum Round {
    /// Everything the WAL held when it began is in the desktop.
    Done,
    /// A reader of an older snapshot kept frames from being copied.
    HeldBack,
    /// A freeze is on until then.
    Frozen(Instant),
    Failed,
}

impl Checkpointer {
    /// Open a checkpoint connection to the desktop at `path` and start its thread.
    /// `commits`, `state` and the wal-index `index` are the writer's.
    pub(super) fn start(
        path: &Path,
        durability: Durability,
        commits: Arc<AtomicU64>,
        state: Arc<Mutex<SharedState>>,
        index: Arc<WalIndex>,
        root: &Path,
    ) -> std::io::Result<Checkpointer> {
        let conn = CheckpointConnection::open(path, durability)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let shared = Arc::new(Shared {
            gate: Mutex::new(Gate {
                conn: Some(conn),
                frozen_until: None,
                held_back_since: None,
            }),
            signal: Mutex::default(),
            wake: Condvar::new(),
            commits,
            state,
            index,
            root: root.display().to_string(),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("checkpointer".into())
            .spawn(move || thread_shared.run())?;
        Ok(Checkpointer {
            shared,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Ask for a checkpoint (`why`, for the log); never waits.
    pub(super) fn request(&self, why: &'static str) {
        let mut signal = self.shared.signal.lock().unwrap();
        if signal.wanted.is_none() {
            signal.wanted = Some(why);
            self.shared.wake.notify_one();
        }
    }

    /// Set from which WAL size (bytes in use) a restart is worth a round after a pause.
    pub(super) fn restart_above(&self, bytes: u64) {
        self.shared.signal.lock().unwrap().restart_above = bytes;
    }

    /// Take the gate: wait for a round of the thread to end, and keep it from starting
    /// another until the guard is dropped.
    pub(super) fn hold(&self) -> MutexGuard<'_, Gate> {
        self.shared.gate.lock().unwrap()
    }

    /// Wake the thread (a thaw: a round waiting for the freeze's end may go now).
    pub(super) fn nudge(&self) {
        let _signal = self.shared.signal.lock().unwrap();
        self.shared.wake.notify_one();
    }

    /// Stop the thread (its round, if one runs, ends first) and close its connection, before
    /// the writer's clean close: that one must be the last checkpoint.
    pub(super) fn stop(&self) {
        self.shared.signal.lock().unwrap().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.lock().unwrap().take() {
            let _ = thread.join();
        }
        self.shared.gate.lock().unwrap().conn = None;
    }
}

impl Shared {
    fn run(&self) {
        let mut failures = RateLimited::new(FAILURE_LOG_EVERY);
        loop {
            let why = {
                let mut signal = self.signal.lock().unwrap();
                loop {
                    if signal.stop {
                        return;
                    }
                    if let Some(why) = signal.wanted {
                        break why;
                    }
                    signal = self.wake.wait(signal).unwrap();
                }
            };
            self.until_done(why, &mut failures);
        }
    }

    /// Rounds until everything is copied and the WAL can restart, or there is nothing more
    /// worth doing now: retried every [`CHECKPOINT_RETRY`] while readers hold it back, after
    /// the freeze while one is on, after a pause of the writer when commits overtook it.
    fn until_done(&self, why: &'static str, failures: &mut RateLimited) {
        loop {
            match self.round(why, failures) {
                Round::Failed => return,
                Round::Done => {
                    if !self.restart_pending() {
                        return;
                    }
                }
                Round::HeldBack => {
                    if !self.pause(CHECKPOINT_RETRY) {
                        return;
                    }
                }
                Round::Frozen(until) => {
                    if !self.pause(until.saturating_duration_since(Instant::now())) {
                        return;
                    }
                }
            }
        }
    }

    /// After a complete round: whether another is needed for the WAL to restart, once the
    /// writer has paused. None is while the WAL in use is small, or has restarted. A round
    /// that commits overtook left frames to copy. One that copied everything still restarts
    /// the WAL only if no reader holds a snapshot of the moment before it ended when the next
    /// commit begins (the connection that sends the write may have just read): so the next
    /// commit is watched for, up to [`WATCH_NEXT_COMMIT`] (without one, it is the commit that
    /// restarts the WAL).
    fn restart_pending(&self) -> bool {
        let mut watched = false;
        loop {
            let restart_above = self.signal.lock().unwrap().restart_above;
            let Some(wal) = self.index.read() else {
                return false;
            };
            if wal.used_bytes() < restart_above {
                return false;
            }
            if wal.frames > wal.backfilled {
                return self.settle();
            }
            if watched || !self.next_commit() {
                return false;
            }
            watched = true;
        }
    }

    /// Wait for the writer's next commit, at most [`WATCH_NEXT_COMMIT`]; false when none came
    /// (or the thread is told to stop).
    fn next_commit(&self) -> bool {
        let seen = self.commits.load(Ordering::SeqCst);
        let until = Instant::now() + WATCH_NEXT_COMMIT;
        while Instant::now() < until {
            if !self.pause(SETTLE) {
                return false;
            }
            if self.commits.load(Ordering::SeqCst) != seen {
                return true;
            }
        }
        false
    }

    /// One passive checkpoint, under the gate.
    fn round(&self, why: &'static str, failures: &mut RateLimited) -> Round {
        // This round covers every request made so far.
        self.signal.lock().unwrap().wanted = None;
        let mut gate = self.gate.lock().unwrap();
        if let Some(until) = gate.frozen_until.filter(|&t| Instant::now() < t) {
            return Round::Frozen(until);
        }
        let Some(conn) = gate.conn.as_ref() else {
            return Round::Failed;
        };
        self.hold_for_test();
        let commits = self.commits.load(Ordering::SeqCst);
        let began = Instant::now();
        match conn.checkpoint(CheckpointMode::Passive, Duration::ZERO) {
            Ok(done) if done.complete() => {
                self.state.lock().unwrap().last_flush = now_unix();
                if let Some(since) = gate.held_back_since.take() {
                    info!(volume = %self.root, "{why}: checkpoint done after readers held it back for {} s", since.elapsed().as_secs());
                }
                let overtaken = self.commits.load(Ordering::SeqCst) != commits;
                debug!(volume = %self.root, frames = done.frames, overtaken,
                    "{why}: checkpointed beside the writer in {} µs", began.elapsed().as_micros());
                Round::Done
            }
            Ok(_) => {
                if gate.held_back_since.is_none() {
                    gate.held_back_since = Some(Instant::now());
                    warn!(volume = %self.root, "{why}: a reader of an older snapshot (a backup, an sqlite3 session) holds the checkpoint back; writes go on, retrying every {} s", CHECKPOINT_RETRY.as_secs());
                } else {
                    debug!(volume = %self.root, "{why}: checkpoint still held back");
                }
                Round::HeldBack
            }
            Err(e) => {
                if failures.now() {
                    warn!(volume = %self.root, "{why}: checkpoint failed: {e} (said at most once a minute)");
                }
                Round::Failed
            }
        }
    }

    /// Wait until the writer has committed nothing for [`SETTLE`], or asks for another round
    /// (the burst goes on: the WAL grew by another quarter of its limit); false when told to
    /// stop.
    fn settle(&self) -> bool {
        let mut seen = self.commits.load(Ordering::SeqCst);
        loop {
            if !self.pause(SETTLE) {
                return false;
            }
            let now = self.commits.load(Ordering::SeqCst);
            if now == seen || self.signal.lock().unwrap().wanted.is_some() {
                return true;
            }
            seen = now;
        }
    }

    /// Sleep `how_long` (woken early by a request or a thaw); false when told to stop.
    fn pause(&self, how_long: Duration) -> bool {
        let signal = self.signal.lock().unwrap();
        if signal.stop {
            return false;
        }
        let (signal, _) = self.wake.wait_timeout(signal, how_long).unwrap();
        !signal.stop
    }

    /// Test hook (`DESKD_TEST_HOLD_CHECKPOINT_UNTIL=<file>`, read once): hold each round
    /// under the gate, as a slow checkpoint would, until `<file>` exists (or the thread is
    /// told to stop), saying so on stderr first.
    #[cfg(feature = "test-hooks")]
    fn hold_for_test(&self) {
        static UNTIL: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
        let until = UNTIL.get_or_init(|| {
            std::env::var_os("DESKD_TEST_HOLD_CHECKPOINT_UNTIL").map(std::path::PathBuf::from)
        });
        if let Some(until) = until.as_deref().filter(|f| !f.exists()) {
            eprintln!(
                "test hook: checkpoint held until {} exists",
                until.display()
            );
            while !until.exists() && !self.signal.lock().unwrap().stop {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Without the `test-hooks` feature the hook is compiled out.
    #[cfg(not(feature = "test-hooks"))]
    fn hold_for_test(&self) {}
}
