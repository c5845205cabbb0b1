//! The writer's timers and checkpoints: `flush_delay` and `idle_close` after writes, the WAL
//! limit after each commit, the freeze (no checkpoint until it ends), and the back-off after a
//! checkpoint that readers of older snapshots held back. The checkpoints nobody waits for go
//! to the checkpointer thread ([`super::checkpointer`]); those the writer runs itself (a
//! flush, a freeze, the space rule, the WAL at `wal_limit`) hold up the writes queued behind
//! them, so they never wait long for readers.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use deskd_db::{now_unix, CheckpointMode};
use deskd_proto::{ErrorCode, ErrorReply};
use tracing::{info, warn};

use super::Writer;
use crate::db_reply::db_error;

/// How long a checkpoint the writer runs unasked (the WAL at its limit) waits for readers of
/// older snapshots: long enough for the server's own short reads, short enough that a long
/// reader (a backup, an `sqlite3` session) never holds up the writes queued behind it.
pub(super) const TIMED_CHECKPOINT_WAIT: Duration = Duration::from_millis(20);
/// How long `deskd flush` and `deskd freeze` wait for such readers.
pub(super) const REQUESTED_CHECKPOINT_WAIT: Duration = Duration::from_millis(500);
/// After a checkpoint that readers held back, no timed one is tried again before this.
pub(super) const CHECKPOINT_RETRY: Duration = Duration::from_secs(1);

impl Writer {
    /// Whether a freeze is on; a freeze whose time is up ends here (and says so).
    pub(super) fn frozen(&mut self) -> bool {
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

    pub(super) fn next_deadline(&self) -> Option<Instant> {
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
        if let Some(retry) = self.busy_retry_at() {
            deadline = Some(deadline.map_or(retry, |x| x.min(retry)));
        }
        deadline
    }

    /// Whether a checkpoint that readers held back was tried too recently for another now.
    pub(super) fn backing_off(&mut self) -> bool {
        match self.checkpoint_after {
            Some(after) if Instant::now() < after => true,
            _ => {
                self.checkpoint_after = None;
                false
            }
        }
    }

    pub(super) fn timers(&mut self) {
        if self.frozen() || self.backing_off() {
            return;
        }
        if let Some(since) = self.dirty_since {
            let now = Instant::now();
            if now >= since + Duration::from_secs(self.config.flush_delay)
                || now >= self.last_write + Duration::from_secs(self.config.idle_close)
            {
                match &self.checkpointer {
                    // Handed over: the checkpointer retries until it gets through, and a
                    // commit from now on makes the desktop dirty again.
                    Some(checkpointer) if self.busy.is_none() => {
                        checkpointer.request("timed flush");
                        self.dirty_since = None;
                    }
                    // In a busy spell the writer's own truncating checkpoint also tells
                    // whether the other process has let go of the write lock.
                    _ => self.inline_checkpoint("timed flush", CheckpointMode::Truncate),
                }
            }
        }
    }

    /// After a commit: the WAL's size against `wal_limit`. Past a quarter of it not yet
    /// checkpointed, the checkpointer is asked (nothing waits); past `wal_limit` in use (a
    /// burst that never paused, or readers holding checkpoints back), the writer checkpoints
    /// itself, so the WAL stays bounded; with the checkpointer's rounds behind it, only the
    /// frames since its last one are left to copy, and nothing is truncated.
    pub(super) fn check_wal_limit(&mut self) {
        if self.frozen() {
            return;
        }
        let (file_len, ino) = std::fs::metadata(&self.wal_path)
            .map(|m| (m.len(), m.ino()))
            .unwrap_or((0, 0));
        let (in_use, pending) = match self.wal_index.as_ref().and_then(|i| i.read()) {
            Some(wal) => (wal.used_bytes(), wal.pending_bytes()),
            None => (file_len, file_len),
        };
        let limit = self.config.wal_limit;
        let inline = match &self.checkpointer {
            Some(_) if in_use > limit => Some(("WAL at its limit", CheckpointMode::Restart)),
            // A truncating checkpoint that readers hold back still copies every frame it can
            // (SQLite then proceeds as PASSIVE), so one call covers both.
            None if in_use > limit => Some(("WAL over its limit", CheckpointMode::Truncate)),
            Some(checkpointer) => {
                if pending >= background_at(limit) {
                    checkpointer.request("WAL past a quarter of its limit");
                }
                None
            }
            None => None,
        };
        if let Some((why, mode)) = inline {
            if !self.backing_off() {
                self.inline_checkpoint(why, mode);
            }
        }
        if ino != 0 {
            let step = super::wal_writeback::step(self.config.wal_limit);
            self.wal_writeback.grown(&self.wal_path, in_use, ino, step);
        }
    }

    /// A checkpoint nobody asked for, run by the writer itself (writes wait): logged once
    /// when readers start holding checkpoints back and once when one gets through, not at
    /// every retry.
    pub(super) fn inline_checkpoint(&mut self, why: &str, mode: CheckpointMode) {
        let root = self.volume.root().display().to_string();
        let checkpointer = self.checkpointer.clone();
        let mut gate = checkpointer.as_ref().map(|c| c.hold());
        let began = Instant::now();
        let result = self.checkpoint_held(mode, TIMED_CHECKPOINT_WAIT);
        let held_back_since = match gate.as_deref_mut() {
            Some(gate) => &mut gate.held_back_since,
            None => &mut self.held_back_since,
        };
        match result {
            Ok(()) => {
                if let Some(since) = held_back_since.take() {
                    info!(volume = %root, "{why}: checkpoint done after readers held it back for {} s", since.elapsed().as_secs());
                }
                tracing::debug!(volume = %root, "{why}: checkpointed on the write path ({mode:?}) in {} µs",
                    began.elapsed().as_micros());
                self.busy_checkpointed();
            }
            // Another process holds the write lock: the busy warning said so already.
            Err(e) if e.code == ErrorCode::Busy && self.busy.is_some() => {
                tracing::debug!(volume = %root, "{why}: desktop DB busy by another process");
            }
            Err(e) if e.code == ErrorCode::Busy => {
                if held_back_since.is_none() {
                    *held_back_since = Some(Instant::now());
                    warn!(volume = %root, "{why}: a reader of an older snapshot (a backup, an sqlite3 session) holds the checkpoint back; writes go on, retrying every {} s", CHECKPOINT_RETRY.as_secs());
                } else {
                    tracing::debug!(volume = %root, "{why}: checkpoint still held back");
                }
            }
            Err(e) => warn!(volume = %root, "{why} failed: {}", e.message),
        }
    }

    /// A truncating checkpoint (`deskd flush`, the space rule, a busy spell's end), waiting at
    /// most `wait` for readers of older snapshots; the checkpointer's round, if one runs,
    /// ends first.
    pub(super) fn flush(&mut self, wait: Duration) -> Result<(), ErrorReply> {
        let checkpointer = self.checkpointer.clone();
        let _gate = checkpointer.as_ref().map(|c| c.hold());
        self.checkpoint_held(CheckpointMode::Truncate, wait)
    }

    /// Checkpoint on the writer's connection in `mode`, waiting at most `wait` for readers of
    /// older snapshots; the caller holds the gate when there is a checkpointer.
    pub(super) fn checkpoint_held(
        &mut self,
        mode: CheckpointMode,
        wait: Duration,
    ) -> Result<(), ErrorReply> {
        let desktop = self.desktop.as_ref().expect("writer used after shutdown");
        let done = desktop.checkpoint_in(mode, wait).map_err(|e| {
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
        if done.busy {
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
}

/// How much of the WAL not yet checkpointed makes the writer ask the checkpointer: a quarter of
/// `wal_limit`, so that a burst has three quarters of it to fill before the writer has to
/// checkpoint itself.
pub(super) fn background_at(wal_limit: u64) -> u64 {
    wal_limit / 4
}
