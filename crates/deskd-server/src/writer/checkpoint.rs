//! The writer's timers and checkpoints: `flush_delay` and `idle_close` after writes, the WAL
//! limit after each commit, the freeze (no checkpoint until it ends), and the back-off after a
//! checkpoint that readers of older snapshots held back. A checkpoint runs on the writer's
//! thread, so it never waits long for readers: writes queue behind it.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use deskd_db::now_unix;
use deskd_proto::{ErrorCode, ErrorReply};
use tracing::{info, warn};

use super::Writer;
use crate::db_reply::db_error;

/// How long a timed or WAL-limit checkpoint waits for readers of older snapshots: long enough
/// for the server's own short reads, short enough that a long reader (a backup, an `sqlite3`
/// session) never holds up the writes queued behind the checkpoint.
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
                self.timed_flush("timed flush");
            }
        }
    }

    pub(super) fn check_wal_limit(&mut self) {
        if self.frozen() || self.backing_off() {
            return;
        }
        let (size, ino) = std::fs::metadata(&self.wal_path)
            .map(|m| (m.len(), m.ino()))
            .unwrap_or((0, 0));
        if size > self.config.wal_limit {
            // A truncating checkpoint that readers hold back still copies every frame it can
            // (SQLite then proceeds as PASSIVE), so one call covers both cases.
            self.timed_flush("WAL over its limit");
        } else if ino != 0 {
            let step = super::wal_writeback::step(self.config.wal_limit);
            self.wal_writeback.grown(&self.wal_path, size, ino, step);
        }
    }

    /// A checkpoint nobody asked for: logged once when readers start holding checkpoints
    /// back and once when one gets through, not at every retry.
    pub(super) fn timed_flush(&mut self, why: &str) {
        let root = self.volume.root().display().to_string();
        match self.flush(TIMED_CHECKPOINT_WAIT) {
            Ok(()) => {
                self.busy_checkpointed();
                if let Some(since) = self.held_back_since.take() {
                    info!(volume = %root, "{why}: checkpoint done after readers held it back for {} s", since.elapsed().as_secs());
                }
            }
            // Another process holds the write lock: the busy warning said so already.
            Err(e) if e.code == ErrorCode::Busy && self.busy.is_some() => {
                tracing::debug!(volume = %root, "{why}: desktop DB busy by another process");
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
    pub(super) fn flush(&mut self, wait: Duration) -> Result<(), ErrorReply> {
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
}
