//! Where the watcher thread reads changes from: the kernel through [`deskd_watch::Watcher`], or,
//! in the unit tests, a list of batches. The thread knows only this trait.

use std::time::Duration;

use deskd_watch::Batch;

/// A stream of change batches of one volume.
pub(crate) trait ChangeSource: Send {
    /// Up to `wait` for the first change, then everything already queued, coalesced.
    fn next_batch(&mut self, wait: Duration) -> Result<Batch, String>;
    /// Everything queued by now, without waiting (the barrier of `deskd flush`).
    fn drain_now(&mut self) -> Result<Batch, String>;
    /// Bytes of events read from the kernel and not yet taken, and the most at once.
    fn held_bytes(&self) -> (u64, u64) {
        (0, 0)
    }
    /// Bytes of events taken from the kernel since the start, all and deskd's own.
    fn pumped(&self) -> deskd_watch::Pumped {
        deskd_watch::Pumped::default()
    }
}
