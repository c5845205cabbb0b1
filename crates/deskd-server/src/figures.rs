//! The figures the hot paths record for `/metrics` (rendered by [`crate::metrics`]): requests
//! by volume and kind with their latencies, per connection, and each volume's commit batch
//! sizes.
//!
//! Recording must cost next to nothing beside a ~10 µs request, and must never make a scrape
//! wait for the writer. So request figures live in the connection's own [`RequestFigures`]
//! (a mutex only its own thread and, for a write's reply, its volume's writer ever take, held
//! for a few additions), summed over the open connections at scrape time; the figures of a
//! closed connection are folded into a total once, when it closes. Batch sizes are relaxed
//! atomics the writer adds to and a scrape reads. No module of this crate is used here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use deskd_proto::Request;

/// The upper bounds (inclusive, in nanoseconds) of the request latency buckets: 5 µs to 1 s.
pub(crate) const LATENCY_BOUNDS_NS: [u64; 17] = [
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// Latency buckets, the last one for what took longer than every bound (`+Inf`).
const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_NS.len() + 1;

/// The volume key of a request that names no single served volume (`Volumes`, `OpenVolume`,
/// `Status` of every volume, `Metrics`, or a handle the server never gave out).
pub(crate) const NO_VOLUME: u32 = u32::MAX;

/// The request kinds, in the order of [`deskd_proto::Request`]'s variants: the `kind` label.
pub(crate) const KINDS: [&str; 34] = [
    "Volumes",
    "OpenVolume",
    "Add",
    "AddPath",
    "Lookup",
    "LookupPath",
    "Resolve",
    "Children",
    "Rename",
    "RenamePath",
    "Delete",
    "DeletePath",
    "SetInfo",
    "Find",
    "ApplAdd",
    "ApplGet",
    "ApplRemove",
    "IconAdd",
    "IconGet",
    "IconList",
    "CommentSet",
    "CommentGet",
    "CommentRemove",
    "Status",
    "Flush",
    "Freeze",
    "Thaw",
    "RebuildStart",
    "RebuildPoll",
    "RebuildCancel",
    "Metrics",
    "Memory",
    "Watch",
    "NotServed",
];

/// The index of `request`'s kind in [`KINDS`]. (Exhaustive on purpose: a new request must
/// get a kind of its own, or the label set would lie.)
pub(crate) fn kind_of(request: &Request) -> u8 {
    use Request::*;
    match request {
        Volumes => 0,
        OpenVolume { .. } => 1,
        Add { .. } => 2,
        AddPath { .. } => 3,
        Lookup { .. } => 4,
        LookupPath { .. } => 5,
        Resolve { .. } => 6,
        Children { .. } => 7,
        Rename { .. } => 8,
        RenamePath { .. } => 9,
        Delete { .. } => 10,
        DeletePath { .. } => 11,
        SetInfo { .. } => 12,
        Find { .. } => 13,
        ApplAdd { .. } => 14,
        ApplGet { .. } => 15,
        ApplRemove { .. } => 16,
        IconAdd { .. } => 17,
        IconGet { .. } => 18,
        IconList { .. } => 19,
        CommentSet { .. } => 20,
        CommentGet { .. } => 21,
        CommentRemove { .. } => 22,
        Status { .. } => 23,
        Flush { .. } => 24,
        Freeze { .. } => 25,
        Thaw { .. } => 26,
        RebuildStart { .. } => 27,
        RebuildPoll { .. } => 28,
        RebuildCancel { .. } => 29,
        Metrics => 30,
        Memory => 31,
        Watch { .. } => 32,
        NotServed => 33,
    }
}

/// One (volume, kind)'s requests: a latency histogram and the failures among them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Latencies {
    /// Requests per latency bucket (not cumulative; the last one is `+Inf`).
    pub(crate) buckets: [u64; LATENCY_BUCKETS],
    /// Total latency, in nanoseconds.
    pub(crate) sum_ns: u64,
    /// Requests answered with an error.
    pub(crate) errors: u64,
}

impl Latencies {
    fn record(&mut self, took: Duration, failed: bool) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NS.partition_point(|&bound| bound < ns);
        self.buckets[bucket] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.errors += u64::from(failed);
    }

    /// Add `other`'s requests to these.
    pub(crate) fn add(&mut self, other: &Latencies) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.errors += other.errors;
    }

    /// Requests counted.
    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// A (volume, kind) key: the volume handle ([`NO_VOLUME`] for none) and the kind's index.
pub(crate) type RequestKey = (u32, u8);

/// One connection's requests so far. A connection uses few (volume, kind) pairs, so they are
/// kept in a short list searched in order.
#[derive(Debug, Default)]
pub(crate) struct RequestFigures {
    cells: Mutex<Vec<(RequestKey, Latencies)>>,
}

impl RequestFigures {
    /// Count one answered request of `kind` on volume `vol` that took `took`.
    pub(crate) fn record(&self, vol: u32, kind: u8, took: Duration, failed: bool) {
        let key = (vol, kind);
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        match cells.iter_mut().find(|(k, _)| *k == key) {
            Some((_, cell)) => cell.record(took, failed),
            None => {
                let mut cell = Latencies::default();
                cell.record(took, failed);
                cells.push((key, cell));
            }
        }
    }

    /// Call `each` with every (volume, kind) of this connection and its figures.
    pub(crate) fn each(&self, mut each: impl FnMut(RequestKey, &Latencies)) {
        let cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        for (key, cell) in cells.iter() {
            each(*key, cell);
        }
    }
}

/// The upper bounds of the commit batch size buckets (requests per committed batch).
pub(crate) const BATCH_BOUNDS: [u64; 13] =
    [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// A volume's committed client batches, as the writer records them: sizes per bucket (the
/// last for larger ones, `+Inf`) and their sum. Relaxed atomics: only one thread at a time
/// commits (it holds the writer), and a scrape needs no exact cut between two fields.
#[derive(Debug, Default)]
pub(crate) struct CommitFigures {
    buckets: [AtomicU64; BATCH_BOUNDS.len() + 1],
    requests: AtomicU64,
}

/// What a scrape reads of [`CommitFigures`].
pub(crate) struct BatchSizes {
    /// Batches per bucket (not cumulative; the last one is `+Inf`).
    pub(crate) buckets: Vec<u64>,
    /// Requests in every batch together.
    pub(crate) requests: u64,
}

impl CommitFigures {
    /// Count one committed batch of `size` requests.
    pub(crate) fn batch(&self, size: usize) {
        let size = size as u64;
        let bucket = BATCH_BOUNDS.partition_point(|&bound| bound < size);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(size, Ordering::Relaxed);
    }

    /// The batches so far.
    pub(crate) fn read(&self) -> BatchSizes {
        BatchSizes {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_the_bucket_of_their_bound() {
        let figures = RequestFigures::default();
        figures.record(0, 6, Duration::from_micros(5), false);
        figures.record(0, 6, Duration::from_nanos(5_001), true);
        figures.record(0, 6, Duration::from_secs(2), false);
        figures.record(1, 2, Duration::from_micros(1), false);
        let mut seen = Vec::new();
        figures.each(|key, cell| seen.push((key, cell.clone())));
        assert_eq!(seen.len(), 2);
        let (key, resolve) = &seen[0];
        assert_eq!(*key, (0, 6));
        assert_eq!(resolve.buckets[0], 1);
        assert_eq!(resolve.buckets[1], 1);
        assert_eq!(resolve.buckets[LATENCY_BUCKETS - 1], 1);
        assert_eq!(resolve.count(), 3);
        assert_eq!(resolve.errors, 1);
        assert_eq!(resolve.sum_ns, 5_000 + 5_001 + 2_000_000_000);
    }

    #[test]
    fn every_kind_has_a_name() {
        // The last request appended to the protocol has the last name.
        assert_eq!(kind_of(&Request::NotServed) as usize, KINDS.len() - 1);
        assert_eq!(KINDS[kind_of(&Request::Metrics) as usize], "Metrics");
        assert_eq!(
            KINDS[kind_of(&Request::Resolve { vol: 0, id: 2 }) as usize],
            "Resolve"
        );
        assert_eq!(
            KINDS[kind_of(&Request::Thaw { vol: None }) as usize],
            "Thaw"
        );
    }

    #[test]
    fn batch_sizes_are_bucketed() {
        let commits = CommitFigures::default();
        commits.batch(1);
        commits.batch(3);
        commits.batch(5000);
        let read = commits.read();
        assert_eq!(read.buckets[0], 1);
        assert_eq!(read.buckets[2], 1);
        assert_eq!(read.buckets[BATCH_BOUNDS.len()], 1);
        assert_eq!(read.requests, 5004);
    }
}
