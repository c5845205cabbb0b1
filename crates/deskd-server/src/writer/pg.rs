//! The writer thread of a volume whose desktop is in PostgreSQL (issue 28).
//!
//! The same group commit as SQLite's writer ([`super::batch::run_batch`] over
//! [`deskd_db::Store`], monomorphised for `PgDesktop`), without SQLite's housekeeping: no
//! desktop lock (writes serialise on the volume's row in the database), no WAL, checkpoints,
//! space checks or timers, no lone write committed by a connection thread. After each commit
//! it catches the name index up from the change log before it answers
//! ([`crate::pg_volume::PgVolume::catch_up`]).
//!
//! **Losing the database.** A batch that fails for want of the database
//! (`DbError::Unavailable`) is answered with `ReadOnly` ("database unreachable"), nothing of
//! it acknowledged; the writer drops its connection and tries once more at once (the database
//! may be back already: only the idle connection died); failing, status shows the volume
//! read-only and why, and the writer connects again with back-off (0.5 s doubling to 5 s),
//! answering writes read-only meanwhile. No server exits for it. A server started while the
//! database was unreachable begins in that state: its writer makes the first opening (the
//! volume's row found or made) when the database answers, and starts the name index's load,
//! the check and the follower then ([`crate::pg_volume::start_background`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use deskd_db::DbError;
use deskd_pg::PgDesktop;
use deskd_proto::{ErrorCode, ErrorReply, Response};
use deskd_volume::Volume;
use tracing::{error, info, warn};

use super::batch::{acknowledge, refuse_failed_commit, run_batch, Attempt};
use super::{refuse_all, Job, Pending, SharedState, WriterShare, MAX_BATCH};
use crate::apply::watched::WatchedOutcome;
use crate::apply::Policy;
use crate::audit;
use crate::config::VolumeConfig;
use crate::figures::CommitFigures;
use crate::pg_volume::{Opened, PgVolume};

/// The first wait before connecting again after the database was lost; it doubles to
/// [`RECONNECT_MAX`].
pub(crate) const RECONNECT_FIRST: Duration = Duration::from_millis(500);
pub(crate) const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// While idle, the writer looks at least this often whether the follower lost the database.
const IDLE_LOOK: Duration = Duration::from_secs(1);

/// While idle, the writer asks its own session at least this often (one small query): a
/// session killed alone (`pg_terminate_backend`) loses the serving lock without the follower
/// noticing.
const IDLE_PROBE: Duration = Duration::from_secs(5);

/// The writer's store: the volume's row (which another server's batch holds until it commits)
/// is waited for up to `busy_wait`, not SQLite's short [`super::busy::BUSY_TRY`] between
/// retries: on PostgreSQL the wait is in the database's lock queue, which serves the servers
/// in turn, and a longer wait fails the batch (`lock_not_available`, nothing recorded).
struct RowWait<'a> {
    desktop: &'a mut PgDesktop,
    wait: Duration,
    /// The last batch could not even start: nothing of the writes ran in it, and an earlier
    /// run of them was rolled back, so they may be run again on a new connection.
    start_failed: bool,
}

impl RowWait<'_> {
    fn start(&mut self) -> deskd_db::Result<deskd_pg::PgBatch<'_>> {
        let started = self.desktop.batch_within(self.wait);
        self.start_failed = started.is_err();
        Ok(started?)
    }
}

impl deskd_db::Store for RowWait<'_> {
    type Batch<'b>
        = deskd_pg::PgBatch<'b>
    where
        Self: 'b;

    fn batch(&mut self) -> deskd_db::Result<Self::Batch<'_>> {
        self.start()
    }

    fn batch_within(&mut self, _: Duration) -> deskd_db::Result<Self::Batch<'_>> {
        self.start()
    }

    fn set_durability(&mut self, durability: deskd_db::Durability) -> deskd_db::Result<()> {
        Ok(self.desktop.set_durability(durability)?)
    }

    fn backend(&self) -> &'static str {
        "postgresql"
    }
}

/// The writer of a PostgreSQL volume.
pub(crate) struct PgWriter {
    /// None while the database is unreachable.
    desktop: Option<PgDesktop>,
    pg: Arc<PgVolume>,
    volume: Volume,
    config: VolumeConfig,
    state: Arc<Mutex<SharedState>>,
    commits: Arc<AtomicU64>,
    figures: Arc<CommitFigures>,
    /// While the database is unreachable: the next try and the wait after it.
    reconnect: Option<(Instant, Duration)>,
    /// When the writer's session was last known alive (a commit, a probe, the opening).
    alive_at: Instant,
    /// The volume was moved out of the database while this server was cut off from it (a
    /// restore or a migrate removed the root's mark): why. The writer no longer connects,
    /// and every write is refused with this.
    moved_out: Option<String>,
}

impl PgWriter {
    /// `desktop`: None when the database was unreachable at start (`state` says so): the
    /// writer tries at once and then with back-off.
    pub(crate) fn new(
        desktop: Option<PgDesktop>,
        pg: Arc<PgVolume>,
        volume: Volume,
        config: VolumeConfig,
        state: Arc<Mutex<SharedState>>,
        commits: Arc<AtomicU64>,
    ) -> PgWriter {
        let reconnect = desktop
            .is_none()
            .then(|| (Instant::now() + RECONNECT_FIRST, RECONNECT_FIRST));
        PgWriter {
            desktop,
            pg,
            volume,
            config,
            state,
            commits,
            figures: Arc::default(),
            reconnect,
            alive_at: Instant::now(),
            moved_out: None,
        }
    }

    /// Run the writer on a thread of its own (`writer-<index>`).
    pub(crate) fn spawn(self, index: u32, rx: Receiver<Job>) -> std::io::Result<WriterShare> {
        let share = WriterShare(None, self.figures.clone(), None);
        std::thread::Builder::new()
            .name(format!("writer-{index}"))
            .spawn(move || self.run(rx))
            .map(|_| share)
    }

    fn run(mut self, rx: Receiver<Job>) {
        let mut writes: Vec<Pending> = Vec::new();
        loop {
            // Connecting again on the back-off timer, or looking after the session while
            // idle: the serving lock lives on it, and a database restart with no write after
            // it must not leave the volume served without the lock (the newcomer review of
            // stop 41, finding 1).
            let wake = match (self.reconnect, &self.desktop) {
                (Some((at, _)), _) => Some(at.min(Instant::now() + IDLE_LOOK)),
                (None, Some(_)) => Some(Instant::now() + IDLE_LOOK),
                (None, None) => None,
            };
            let job = match wake {
                Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => {
                        if self.reconnect.is_some() {
                            if self.reconnect_due() {
                                self.try_reconnect();
                            }
                        } else {
                            self.look_after_session();
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            let mut next = Some(job);
            while let Some(job) = next.take() {
                match job {
                    Job::Write { request, reply } => writes.push(Pending {
                        request,
                        reply,
                        queued: Instant::now(),
                    }),
                    Job::Close(done) => {
                        self.commit(&mut writes);
                        self.close();
                        let _ = done.send(Ok(()));
                        return refuse_all(self.volume.root(), rx);
                    }
                    Job::Shutdown(done) => {
                        self.commit(&mut writes);
                        self.close();
                        let _ = done.send(());
                        return refuse_all(self.volume.root(), rx);
                    }
                    control => {
                        self.commit(&mut writes);
                        self.control(control);
                    }
                }
                if writes.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.commit(&mut writes);
        }
        self.commit(&mut writes);
        self.close();
    }

    /// Commit the waiting writes in one transaction (rerun isolated when one is refused),
    /// catch the name index up, then answer.
    fn commit(&mut self, writes: &mut Vec<Pending>) {
        self.commit_try(writes, true);
    }

    /// [`PgWriter::commit`]; `again`: a batch that could not start for want of the database
    /// is run once more on a new connection when one can be had at once.
    fn commit_try(&mut self, writes: &mut Vec<Pending>, again: bool) {
        if writes.is_empty() {
            return;
        }
        // Found by this writer, or by the follower (it reconnects sooner).
        if let Some(why) = self.moved_out.as_deref().or(self.pg.moved_out_reason()) {
            let refusal =
                ErrorReply::new(ErrorCode::ReadOnly, format!("{why}; nothing was recorded"));
            for w in writes.drain(..) {
                w.reply.send(Err(refusal.clone()));
            }
            return;
        }
        if self.desktop.is_none() && self.reconnect_due() {
            self.try_reconnect();
        }
        let Some(desktop) = self.desktop.as_mut() else {
            let refusal = self.unreachable_reply();
            for w in writes.drain(..) {
                w.reply.send(Err(refusal.clone()));
            }
            return;
        };
        let policy = Policy {
            read_only: self.config.read_only,
            replaced: self.config.replaced,
        };
        let audit_on = audit::enabled();
        let volume = &self.volume;
        let mut store = RowWait {
            desktop: &mut *desktop,
            wait: Duration::from_secs(self.config.busy_wait),
            start_failed: false,
        };
        // Other servers change the database too: paths are looked up afresh for each batch.
        let cache = &mut crate::apply::DirCache::default();
        let outcome = match run_batch(&mut store, volume, policy, writes, false, audit_on, cache) {
            Ok(Attempt::Retry) => {
                run_batch(&mut store, volume, policy, writes, true, audit_on, cache)
            }
            other => other,
        };
        let unstarted = store.start_failed;
        match outcome {
            Ok(Attempt::Retry) => unreachable!("an isolated run never asks for a retry"),
            Ok(Attempt::Done(mut replies)) => {
                // A request whose reads failed for want of the database is answered
                // read-only, and the writer connects again. `Busy` is that, or a conflict
                // with another writer (`DbError::Busy`: a lock wait past its bound, a
                // deadlock), after which the database is there: asked once, so that one
                // request's conflict does not make the volume read-only.
                let lost = replies
                    .iter()
                    .find_map(|(r, _)| match r {
                        Err(e) if e.code == ErrorCode::Busy => Some(e.message.clone()),
                        _ => None,
                    })
                    .filter(|_| desktop.change_seq().is_err_and(|e| e.is_unavailable()));
                if let Some(why) = lost {
                    self.lost(&why);
                    let refusal = self.unreachable_reply();
                    for (reply, line) in &mut replies {
                        if reply.as_ref().is_err_and(|e| e.code == ErrorCode::Busy) {
                            *reply = Err(refusal.clone());
                            *line = None;
                        }
                    }
                    acknowledge(self.volume.root(), writes, replies);
                    return;
                }
                self.alive_at = Instant::now();
                self.figures.batch(replies.len());
                // Before any acknowledgement: a find after the reply sees the change. A
                // failure here loses nothing (the follower reads the same log).
                if let Err(e) = self.pg.catch_up(desktop) {
                    warn!(volume = %self.volume.root().display(), "name index not caught up: {e}");
                    // Find's cache may hold rows this batch changed: dropped before the
                    // acknowledgement, so a find through this server after it sees the change.
                    self.pg.read_cache().clear();
                }
                self.commits.fetch_add(1, Ordering::SeqCst);
                acknowledge(self.volume.root(), writes, replies);
            }
            Err(DbError::Unavailable(why)) => {
                self.lost(&why);
                if again && unstarted && self.desktop.is_some() {
                    // Nothing ran: the same writes on the new connection.
                    return self.commit_try(writes, false);
                }
                let refusal = self.unreachable_reply();
                for w in writes.drain(..) {
                    w.reply.send(Err(refusal.clone()));
                }
            }
            Err(e) => refuse_failed_commit(self.volume.root(), writes, e),
        }
    }

    /// The database was lost: drop the connection, say so in status, try again soon.
    fn lost(&mut self, why: &str) {
        self.desktop = None;
        // A commit in doubt may have gone through: the read cache does not keep what it changed.
        self.pg.read_cache().clear();
        let since = deskd_db::now_unix();
        {
            let mut state = self.state.lock().unwrap();
            if state.unavailable.is_none() {
                error!(volume = %self.volume.root().display(),
                    "database unreachable ({why}); the volume is read-only until it is back");
                state.unavailable = Some((since, why.to_string()));
            }
        }
        // One try at once: a connection that died while the writer was idle (the database
        // restarted meanwhile) is made again before the next write; failing, the next try is
        // after RECONNECT_FIRST.
        self.reconnect = Some((Instant::now(), RECONNECT_FIRST / 2));
        self.try_reconnect();
    }

    /// Whether to connect again now: the back-off's time has come, or the follower has reached
    /// the database since (it tries every second), so it is back and the writes need not wait
    /// out the back-off.
    fn reconnect_due(&self) -> bool {
        let Some((at, _)) = self.reconnect else {
            return false;
        };
        at <= Instant::now()
            || self
                .pg
                .silent_for()
                .is_some_and(|d| d < crate::pg_volume::ANSWERED_RECENTLY)
    }

    /// Idle: when the follower lost the database, or every [`IDLE_PROBE`], ask the writer's
    /// session whether it lives; a dead one is made again now (the lock taken again with it).
    fn look_after_session(&mut self) {
        let follower_lost = self.pg.take_follower_lost();
        if !follower_lost && self.alive_at.elapsed() < IDLE_PROBE {
            return;
        }
        let Some(desktop) = self.desktop.as_mut() else {
            return;
        };
        match desktop.change_seq() {
            Ok(_) => self.alive_at = Instant::now(),
            Err(e) if e.is_unavailable() => self.lost(&e.to_string()),
            Err(e) => warn!(volume = %self.volume.root().display(),
                "the writer's session could not be checked: {e}"),
        }
    }

    /// Connect again; on failure wait twice as long (at most [`RECONNECT_MAX`]), with jitter.
    fn try_reconnect(&mut self) {
        let Some((_, wait)) = self.reconnect else {
            return;
        };
        if let Some(why) = self.pg.moved_out_reason() {
            // The follower found it moved out: nothing to connect for.
            self.reconnect = None;
            self.state.lock().unwrap().unavailable = Some((deskd_db::now_unix(), why.to_owned()));
            self.moved_out = Some(why.to_owned());
            return;
        }
        let opened = crate::pg_volume::held_off()
            .map_or_else(|| self.pg.open_writer(self.volume.root()), Err);
        match opened {
            // The serving lock is held again (open_writer took it, then read the root's
            // mark): a restore or migrate that moved the volume out while this server was
            // cut off (it removes the mark under the lock, held exclusively) is seen, and no
            // ID is handed out from the database after it.
            Ok(Opened::MovedOut(why)) => self.end_moved_out(why),
            Ok(Opened::Open { desktop, first, .. }) => {
                let mut desktop = *desktop;
                if first {
                    // The database was unreachable when the server started: the volume is
                    // open only now.
                    info!(volume = %self.volume.root().display(), desktop = %self.pg.describe(),
                        "volume open (the database is reachable)");
                    crate::pg_volume::start_background(
                        &self.pg,
                        self.volume.root(),
                        self.state.clone(),
                    );
                }
                // The durability a reload set since the opening (a new session starts with
                // the opening's).
                if let Err(e) = desktop.set_durability(self.config.durability) {
                    warn!(volume = %self.volume.root().display(), "durability not set: {e}");
                }
                if let Err(e) = self.pg.catch_up(&mut desktop) {
                    warn!(volume = %self.volume.root().display(), "name index not caught up: {e}");
                }
                self.desktop = Some(desktop);
                self.alive_at = Instant::now();
                self.reconnect = None;
                self.state.lock().unwrap().unavailable = None;
                info!(volume = %self.volume.root().display(),
                    "database reachable again; the volume is writable");
            }
            Err(e @ deskd_pg::PgError::MovedOut(_)) => {
                // The database records the volume as moved out (a restore or migrate made
                // while this server was cut off, its mark put back since by another server
                // or by hand): no ID from the database's stale copy (hostile review of stop
                // 42, finding 1).
                let why = self.pg.moved_out_by_record(self.volume.root(), &e);
                self.end_moved_out(why);
            }
            Err(e) => {
                if matches!(e, deskd_pg::PgError::Migrating { .. }) {
                    // A restore or migrate holds the serving lock exclusively: nothing is
                    // written meanwhile, and the log says why (once per change of reason).
                    let said = self
                        .state
                        .lock()
                        .unwrap()
                        .unavailable
                        .as_ref()
                        .map(|(_, w)| w.clone());
                    if said.as_deref() != Some(e.to_string().as_str()) {
                        warn!(volume = %self.volume.root().display(),
                            "{e}; the volume is read-only until the serving lock is free again");
                    }
                }
                let next = (wait * 2).min(RECONNECT_MAX);
                // Up to a quarter more: servers that lost the database together do not all
                // come back at the same instant.
                let jitter = next.mul_f64(f64::from(deskd_db::now_unix() as u32 % 256) / 1024.0);
                self.reconnect = Some((Instant::now() + next + jitter, next));
                let mut state = self.state.lock().unwrap();
                if let Some((_, why)) = state.unavailable.as_mut() {
                    *why = e.to_string();
                }
            }
        }
    }

    /// What a write is answered while the database is unreachable.
    fn unreachable_reply(&self) -> ErrorReply {
        let state = self.state.lock().unwrap();
        let why = state
            .unavailable
            .as_ref()
            .map_or("database unreachable".to_string(), |(_, w)| w.clone());
        ErrorReply::new(
            ErrorCode::ReadOnly,
            format!(
                "{}: read-only: the desktop's database is unreachable ({why}); nothing was \
                 recorded, try again when it is back",
                self.volume.root().display()
            ),
        )
    }

    /// The volume was moved out of the database (its root's mark gone, or the database's
    /// record of it): nothing more is written there. The follower's session lets the lock go
    /// too: this server serves the volume from the database no more, and no read connection
    /// is lent; the server takes it out of its served list (Shared::serve's hook).
    fn end_moved_out(&mut self, why: String) {
        error!(volume = %self.volume.root().display(), "{why}; no write is recorded in the database");
        self.pg.close();
        self.pg.mark_moved_out(why.clone());
        self.reconnect = None;
        self.state.lock().unwrap().unavailable = Some((deskd_db::now_unix(), why.clone()));
        self.moved_out = Some(why);
    }

    fn control(&mut self, job: Job) {
        match job {
            // Every acknowledged write is committed (as durable as synchronous_commit says):
            // nothing waits to be flushed.
            Job::Flush(reply) => {
                // Noted for status as on SQLite (it said `last flush: never` after a flush).
                self.state.lock().unwrap().last_flush = deskd_db::now_unix();
                let _ = reply.send(Ok(Response::Done));
            }
            Job::Thaw(reply) => {
                self.pg.thaw();
                self.state.lock().unwrap().frozen_until = None;
                let _ = reply.send(Ok(Response::Done));
            }
            // A freeze holds an exported snapshot for pg_dump (crate::pg_volume::FreezeHold);
            // writes go on meanwhile.
            Job::Freeze(seconds, reply) => {
                let max = self.config.freeze_max;
                let secs = seconds
                    .unwrap_or(self.config.freeze_default)
                    .min(max)
                    .max(1);
                let result = match self.pg.freeze(secs, max) {
                    Ok((snapshot, until)) => {
                        self.state.lock().unwrap().frozen_until = Some(until);
                        Ok(Response::FrozenSnapshot {
                            until,
                            clamped: seconds.is_some_and(|s| s > max),
                            max,
                            snapshot,
                        })
                    }
                    Err(e) => Err(ErrorReply::new(
                        ErrorCode::Busy,
                        format!(
                            "{}: freeze: no snapshot could be taken: {e}",
                            self.volume.root().display()
                        ),
                    )),
                };
                let _ = reply.send(result);
            }
            Job::Retime(new, done) => {
                if new.durability != self.config.durability {
                    if let Some(desktop) = self.desktop.as_mut() {
                        match desktop.set_durability(new.durability) {
                            Ok(()) => info!(volume = %self.volume.root().display(),
                                "durability now {:?}", new.durability),
                            Err(e) => warn!(volume = %self.volume.root().display(),
                                "durability not changed: {e}"),
                        }
                    }
                }
                let read_only = self.config.read_only;
                self.config = VolumeConfig { read_only, ..new };
                let _ = done.send(());
            }
            // No online rebuild on PostgreSQL yet (refused before it starts).
            Job::Run(_) | Job::Tick => {}
            Job::Watch(_, _, reply) => {
                let _ = reply.send(WatchedOutcome::refused(
                    "watching is not yet available for a desktop in PostgreSQL",
                ));
            }
            Job::Write { .. } | Job::Close(_) | Job::Shutdown(_) => {
                unreachable!("handled by run")
            }
        }
    }

    fn close(&mut self) {
        self.pg.close();
        if self.desktop.take().is_some() {
            info!(volume = %self.volume.root().display(), "desktop in PostgreSQL closed");
        }
    }
}
