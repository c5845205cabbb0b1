//! What `deskd status` and `/metrics` show of a volume's live tracking: which watcher, the
//! counts, the lag of the last batches, overflows and the running or last rescan.

use std::collections::VecDeque;
use std::time::Duration;

use deskd_proto::{VolumeWatch, WatchRescan};

/// Batches whose lag the p99 figure covers.
const LAG_WINDOW: usize = 1000;

/// The figures of one volume's watcher (behind a mutex; updated once per batch).
#[derive(Debug, Default)]
pub(crate) struct WatchFigures {
    pub(crate) kind: String,
    pub(crate) note: Option<String>,
    pub(crate) events: u64,
    pub(crate) applied: u64,
    pub(crate) pending: u64,
    pub(crate) lag_ms: u64,
    lags: VecDeque<u64>,
    pub(crate) overflows: u64,
    pub(crate) last_overflow: Option<i64>,
    pub(crate) rescan: Option<WatchRescan>,
    /// New objects the budget held back, waiting for the end of the window.
    pub(crate) held_back: u64,
    /// Bytes of events the pump holds (fanotify), and the most at once.
    pub(crate) queued_bytes: u64,
    pub(crate) queued_peak_bytes: u64,
    /// The events held are a burst's, left for when it slows ([`super::burst`]).
    pub(crate) deferring: bool,
}

/// The counters of [`WatchFigures`] kept across a restart of the volume's watcher.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Totals {
    events: u64,
    applied: u64,
    overflows: u64,
    last_overflow: Option<i64>,
}

impl WatchFigures {
    /// Figures of a volume watched by `kind` (`off`: not watched, `note` says why).
    pub(crate) fn new(kind: &str, note: Option<String>) -> WatchFigures {
        WatchFigures {
            kind: kind.into(),
            note,
            ..WatchFigures::default()
        }
    }

    /// The counters a restarted watcher of the same volume goes on from (a reload that changes
    /// `watch`, `watch_queue` or `watch_held_mib`, or reopens the volume): counters stay
    /// monotonic for Prometheus's `rate()` (the newcomer review of stop 40 saw them reset).
    pub(crate) fn totals(&self) -> Totals {
        Totals {
            events: self.events,
            applied: self.applied,
            overflows: self.overflows,
            last_overflow: self.last_overflow,
        }
    }

    /// Go on from an earlier watcher's `totals`.
    pub(crate) fn carry(&mut self, totals: Totals) {
        self.events += totals.events;
        self.applied += totals.applied;
        self.overflows += totals.overflows;
        self.last_overflow = self.last_overflow.or(totals.last_overflow);
    }

    /// One batch applied, `lag` after its oldest event was read.
    pub(crate) fn batch(&mut self, events: u64, applied: u64, lag: Duration) {
        self.events += events;
        self.applied += applied;
        self.lag_ms = lag.as_millis() as u64;
        if self.lags.len() == LAG_WINDOW {
            self.lags.pop_front();
        }
        self.lags.push_back(self.lag_ms);
    }

    /// The 99th percentile of the last batches' lag (nearest rank).
    pub(crate) fn lag_p99_ms(&self) -> u64 {
        if self.lags.is_empty() {
            return 0;
        }
        let mut sorted: Vec<u64> = self.lags.iter().copied().collect();
        sorted.sort_unstable();
        let rank = (sorted.len() * 99).div_ceil(100).max(1);
        sorted[rank - 1]
    }

    /// As the protocol carries it.
    pub(crate) fn to_wire(&self, vol: u32) -> VolumeWatch {
        VolumeWatch {
            vol,
            kind: self.kind.clone(),
            note: self.note.clone(),
            events: self.events,
            applied: self.applied,
            pending: self.pending,
            lag_ms: self.lag_ms,
            lag_p99_ms: self.lag_p99_ms(),
            overflows: self.overflows,
            last_overflow: self.last_overflow,
            rescan: self.rescan.clone(),
            owed_stamps: 0,
            held_back: self.held_back,
            queued_bytes: self.queued_bytes,
            queued_peak_bytes: self.queued_peak_bytes,
            deferring: self.deferring,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_covers_the_last_thousand_batches() {
        let mut f = WatchFigures::new("inotify", None);
        assert_eq!(f.lag_p99_ms(), 0);
        for ms in 1..=100 {
            f.batch(2, 1, Duration::from_millis(ms));
        }
        assert_eq!(f.lag_p99_ms(), 99);
        assert_eq!((f.events, f.applied, f.lag_ms), (200, 100, 100));
        // A slow batch long ago leaves the window.
        f.batch(1, 1, Duration::from_secs(9));
        for _ in 0..LAG_WINDOW {
            f.batch(1, 1, Duration::from_millis(5));
        }
        assert_eq!(f.lag_p99_ms(), 5);
        assert_eq!(f.to_wire(3).vol, 3);
    }
}
