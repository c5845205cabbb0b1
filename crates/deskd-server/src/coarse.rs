//! What a peer that is neither trusted nor a volume's admin (root, deskd's user, the volume
//! owner) learns of the volume's activity from `Status`, `Watch` and `Metrics`: the counts that
//! move with every change (objects, the ID counter, the WAL, the watcher's events, the commits)
//! rounded down to a grain, so that polling them does not show another user's work as it
//! happens, a file at a time, in folders the asker may not list (a hostile review of 2026-12-06, finding 7).
//! The volume's admin sees the exact figures. The rounding keeps every figure's direction
//! (counters never go down) and is documented in docs/security.md.

use deskd_proto::{VolumeStatus, VolumeWatch};

/// Counts (objects, IDs, events, commits) are shown in steps of this many.
pub(crate) const COUNT_GRAIN: u64 = 1_000;
/// Byte counts (the WAL) are shown in steps of this many.
pub(crate) const BYTES_GRAIN: u64 = 1 << 20;

pub(crate) fn count(n: u64) -> u64 {
    n - n % COUNT_GRAIN
}

pub(crate) fn id(n: u32) -> u32 {
    count(n as u64) as u32
}

pub(crate) fn bytes(n: u64) -> u64 {
    n - n % BYTES_GRAIN
}

/// A volume's status as such a peer sees it.
pub(crate) fn status(s: &mut VolumeStatus) {
    s.objects = count(s.objects);
    s.last_id = id(s.last_id);
    s.wal_bytes = bytes(s.wal_bytes);
    if let Some(rebuild) = s.rebuild.as_mut() {
        rebuild.objects = count(rebuild.objects);
    }
}

/// A volume's live tracking as such a peer sees it. The last batch's lag would change with each
/// batch, so it is given as the 99th percentile over the last 1,000 (which the admin sees too).
pub(crate) fn watch(w: &mut VolumeWatch) {
    w.events = count(w.events);
    w.applied = count(w.applied);
    w.pending = count(w.pending);
    w.owed_stamps = count(w.owed_stamps);
    w.held_back = count(w.held_back);
    w.queued_bytes = bytes(w.queued_bytes);
    w.queued_peak_bytes = bytes(w.queued_peak_bytes);
    w.lag_ms = w.lag_p99_ms;
    if let Some(rescan) = w.rescan.as_mut() {
        rescan.objects = count(rescan.objects);
        rescan.changed = count(rescan.changed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_rounded_down_to_their_grain() {
        assert_eq!(count(0), 0);
        assert_eq!(count(999), 0);
        assert_eq!(count(1_999), 1_000);
        assert_eq!(id(73_548), 73_000);
        assert_eq!(bytes((3 << 20) + 5), 3 << 20);
        let mut s = VolumeStatus {
            objects: 112,
            last_id: 73_548,
            wal_bytes: 4_096,
            ..Default::default()
        };
        status(&mut s);
        assert_eq!((s.objects, s.last_id, s.wal_bytes), (0, 73_000, 0));
        let mut w = VolumeWatch {
            events: 250_123,
            applied: 250_001,
            pending: 7,
            lag_ms: 11,
            lag_p99_ms: 40,
            ..Default::default()
        };
        watch(&mut w);
        assert_eq!(
            (w.events, w.applied, w.pending, w.lag_ms),
            (250_000, 250_000, 0, 40)
        );
    }
}
