//! The writer's side of live tracking (issue 23): one batch of the watcher's changes applied
//! in one transaction, committed like a client batch (space checked first, readers told,
//! timers set), so a storm of creates makes few commits.

use deskd_watch::Change;
use tracing::warn;

use super::busy::BUSY_TRY;
use super::Writer;
use crate::apply::watched::{apply_all, WatchedOutcome};

impl Writer {
    /// Apply `changes` as the server's own requests and commit them.
    /// An empty `changes` is the watcher's turn for the rescans its spending window deferred
    /// (nothing to do until that window has ended).
    pub(super) fn apply_watched(&mut self, changes: &[Change]) -> WatchedOutcome {
        self.watch_spending
            .set_limits(self.config.watch_budget, self.config.watch_budget_window);
        let now = std::time::Instant::now();
        if changes.is_empty() && self.watch_spending.due().is_none_or(|due| now < due) {
            return WatchedOutcome {
                deferred_until: self.watch_spending.due(),
                held_back: self.watch_spending.held_back(),
                ..WatchedOutcome::default()
            };
        }
        if self.config.read_only {
            return WatchedOutcome::refused("the volume is read-only");
        }
        if let Err(refusal) = self.make_room() {
            return WatchedOutcome::refused(&refusal.message);
        }
        let desktop = self.desktop.as_mut().expect("writer used after shutdown");
        let mut batch = match desktop.batch_within(BUSY_TRY) {
            Ok(batch) => batch,
            Err(e) => return WatchedOutcome::refused(&format!("cannot start a batch: {e}")),
        };
        let outcome = apply_all(
            &mut batch,
            &self.volume,
            self.config.replaced,
            changes,
            &mut self.watch_young,
            &mut self.watch_spending,
        );
        if outcome.applied == 0 {
            // Nothing changed: no commit (and no new snapshot for readers).
            drop(batch);
            return outcome;
        }
        match batch.commit() {
            Ok(()) => {
                self.committed();
                self.check_wal_limit();
                outcome
            }
            Err(e) => {
                // The IDs this batch noted as the watcher's own were rolled back with it and
                // may be handed out again: forget them all (the next batches start afresh)
                // rather than take a later rename of one of those IDs for a save.
                self.watch_young = Default::default();
                warn!(volume = %self.volume.root().display(), "watched changes not committed: {e}");
                WatchedOutcome::refused(&format!("commit failed: {e}"))
            }
        }
    }
}
