//! A desktop another process holds locked for writing (an `sqlite3` session inside `BEGIN
//! IMMEDIATE`; HELIOS logs "Warning, desktop DB busy by another process"). The writes wait
//! instead of failing: the writer tries the batch again every [`BUSY_RETRY`], each try waiting
//! only [`BUSY_TRY`] for the lock, and serves its control jobs (flush, freeze, shutdown) in
//! between. A write that has waited `busy_wait` seconds is refused with `Busy`, saying nothing
//! was recorded. The log says so once when a busy spell begins and once when a commit (or a
//! timed checkpoint) gets through again.

use std::time::{Duration, Instant};

use deskd_proto::{ErrorCode, ErrorReply};
use tracing::{info, warn};

use super::{Pending, Writer};

/// How long one try waits for the lock (SQLite's busy handler polls within it): short, so
/// that a control job queued behind a waiting batch is served at once.
pub(super) const BUSY_TRY: Duration = Duration::from_millis(100);
/// How long the writer serves its queue between two tries of a waiting batch.
pub(super) const BUSY_RETRY: Duration = Duration::from_millis(150);

/// Since when another process has held the desktop locked, as far as the writer knows.
pub(super) struct BusySpell {
    since: Instant,
    /// When the waiting writes are tried again (`None`: none wait).
    next_try: Option<Instant>,
    /// Writes refused because they waited `busy_wait` (for the log at the spell's end).
    refused: usize,
}

impl Writer {
    /// Whether the waiting writes may be tried now: always, except between two tries of a
    /// busy spell.
    pub(super) fn may_try(&self) -> bool {
        match &self.busy {
            Some(BusySpell {
                next_try: Some(at), ..
            }) => Instant::now() >= *at,
            _ => true,
        }
    }

    /// When writes that wait for a busy desktop are tried again.
    pub(super) fn busy_retry_at(&self) -> Option<Instant> {
        self.busy.as_ref().and_then(|b| b.next_try)
    }

    /// The batch found the desktop locked by another process: nothing was recorded. Keep the
    /// writes to try again, except those that have waited `busy_wait`, which get `Busy`.
    pub(super) fn busy_wait(&mut self, writes: &mut Vec<Pending>) {
        let root = self.volume.root().display().to_string();
        let bound = Duration::from_secs(self.config.busy_wait);
        let spell = self.busy.get_or_insert_with(|| {
            warn!(volume = %root,
                "Warning, desktop DB busy by another process (it holds the desktop's write lock: \
                 an sqlite3 session in a transaction?); writes wait for it, each at most {} s \
                 (busy_wait), then get Busy", bound.as_secs());
            BusySpell {
                since: Instant::now(),
                next_try: None,
                refused: 0,
            }
        });
        let held = spell.since.elapsed().as_secs();
        let (expired, waiting): (Vec<Pending>, Vec<Pending>) =
            writes.drain(..).partition(|w| w.queued.elapsed() >= bound);
        *writes = waiting;
        spell.refused += expired.len();
        spell.next_try = (!writes.is_empty()).then(|| Instant::now() + BUSY_RETRY);
        let refusal = ErrorReply::new(
            ErrorCode::Busy,
            format!(
                "{root}: desktop DB busy by another process (it has held the desktop's write \
                 lock for {held} s; a write waits at most busy_wait = {} s); nothing was \
                 recorded, try again when it is done",
                bound.as_secs()
            ),
        );
        for w in expired {
            w.reply.send(Err(refusal.clone()));
        }
    }

    /// A commit got through: the busy spell, if any, is over.
    pub(super) fn busy_over(&mut self) {
        if let Some(spell) = self.busy.take() {
            info!(volume = %self.volume.root().display(),
                "desktop DB no longer busy after {} ms: writes commit again ({} refused after \
                 waiting busy_wait)", spell.since.elapsed().as_millis(), spell.refused);
        }
    }

    /// A timed checkpoint got through, so nobody else holds the write lock now: a spell with no
    /// writes waiting is over (with writes waiting, their next try ends it, and keeps the
    /// writer's deadline for it).
    pub(super) fn busy_checkpointed(&mut self) {
        if self.busy.as_ref().is_some_and(|b| b.next_try.is_none()) {
            self.busy_over();
        }
    }

    /// The reply to a control job that needs the desktop's lock (flush, freeze) while another
    /// process holds it.
    pub(super) fn busy_refusal(&self, what: &str) -> Option<ErrorReply> {
        self.busy.as_ref().map(|spell| {
            ErrorReply::new(
                ErrorCode::Busy,
                format!(
                    "{}: desktop DB busy by another process (for {} s): cannot {what} until it \
                     releases the desktop's write lock",
                    self.volume.root().display(),
                    spell.since.elapsed().as_secs()
                ),
            )
        })
    }

    /// Whether another process still holds the desktop's write lock, asked before a close
    /// that the desktop would reopen (a reload): a desktop closed now could not be marked clean
    /// nor opened again, so the volume would stop being served. Outside a busy spell, no; in
    /// one, the waiting writes are tried (or, with none waiting, a checkpoint), and a success
    /// ends the spell.
    pub(super) fn still_busy(&mut self, writes: &mut Vec<Pending>) -> bool {
        if self.busy.is_none() {
            return false;
        }
        if writes.is_empty() {
            if self.flush(super::REQUESTED_CHECKPOINT_WAIT).is_ok() {
                self.busy_over();
            }
        } else {
            self.commit_batch(writes);
        }
        self.busy.is_some()
    }

    /// The desktop closes (shutdown, a reload's reopening) while writes still wait for it:
    /// answer them, since none was recorded.
    pub(super) fn refuse_waiting(&mut self, writes: &mut Vec<Pending>) {
        if writes.is_empty() {
            return;
        }
        let refusal = ErrorReply::new(
            ErrorCode::ShuttingDown,
            format!(
                "{}: the desktop was closed while another process held it locked (desktop DB \
                 busy); nothing was recorded, try again",
                self.volume.root().display()
            ),
        );
        warn!(volume = %self.volume.root().display(),
            "writes that waited for a busy desktop refused at its close: {}", writes.len());
        for w in writes.drain(..) {
            w.reply.send(Err(refusal.clone()));
        }
    }
}
