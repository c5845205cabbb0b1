//! Yielding to a burst (issue 23): while events pour in at a burst's rate, the watcher's
//! thread leaves them in the pump's memory (bounded by `watch_held_mib`) and applies them once
//! the rate falls, instead of having the writer register each file while the program creating
//! them runs. On a machine of few cores every cycle the server spends during the burst (the
//! writer's `lstat` and SQLite insert per file, the parse, the kernel's writeback of the
//! desktop) is taken from the program: profiled at a million files, the writer was 76 % of
//! the server's CPU in the creation window, the watcher's parse 7 %, the pump 11 % (the pump
//! keeps reading: it is the floor, `deskd-bench populate --fanotify-floor`).
//!
//! What it gives up: a change made during someone's burst on the same volume reaches the
//! desktop when the burst slows ([`DEFER_AT_MOST`] at most). A client asking for a new object
//! meanwhile registers it through the ordinary claim path (the watcher's later `Created` finds
//! it known); a barrier (`deskd flush`, freeze, a rebuild) applies everything held, as before.
//!
//! Whether events keep coming is judged on the events of other processes only (the pump
//! counts the bytes of events whose pid is deskd's, [`deskd_watch::Pumped`]): the stamper's
//! resource files, written during a long burst, are events on the same file system, and
//! counted with the rest they kept the burst "growing" seconds after the program ended
//! (finding 5 of the stop-41 review).

use std::time::{Duration, Instant};

/// How often the deferring thread looks at what the pump holds.
pub(super) const LOOK: Duration = Duration::from_millis(20);

/// Events held (bytes) from which a burst is deferred: about 10,000 creates.
const BURST_HELD: u64 = 1 << 20;

/// The rate (bytes of events a second) at which the held events must have grown since the
/// last read for a burst to begin: about 10,000 creates a second; 1,000 renames a second
/// between long names make 0.6 MB a second and are never deferred (nor is anything while the
/// watcher keeps up: less than [`BURST_HELD`] is held then).
const BURST_BYTES_PER_SECOND: f64 = 1024.0 * 1024.0;

/// [`BURST_HELD`] and [`BURST_BYTES_PER_SECOND`], or with the `test-hooks` feature
/// `DESKD_TEST_BURST_FROM=BYTES` for both (a test whose program may be slow on a loaded machine,
/// or whose watcher keeps up, still sees its burst deferred).
fn burst_from() -> (u64, f64) {
    #[cfg(feature = "test-hooks")]
    {
        static FROM: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
        let from = FROM.get_or_init(|| {
            std::env::var("DESKD_TEST_BURST_FROM")
                .ok()
                .and_then(|v| v.parse().ok())
        });
        if let Some(bytes) = *from {
            return (bytes, bytes as f64);
        }
    }
    (BURST_HELD, BURST_BYTES_PER_SECOND)
}

/// A burst has slowed when no event came for this long (a program on a loaded machine is
/// off its CPU for tens of milliseconds at a time: a look at each [`LOOK`] would end the
/// burst at each of those).
const SLOWED_AFTER: Duration = Duration::from_millis(200);

/// Growth (bytes of other processes' events) that counts as the burst going on: less in
/// [`SLOWED_AFTER`] (about 650 creates in 0.2 s, 320 KiB a second) is the file system's
/// background (the mark covers all of it: a build, a log, another user's editor), which on a
/// busy machine never stops for 0.2 s and kept a burst deferred to [`DEFER_AT_MOST`].
const STILL_GROWING: u64 = 64 * 1024;

/// How long one busy stretch is deferred at most: a volume that never slows down is applied
/// as it comes after that (until it slows), as before.
pub(super) const DEFER_AT_MOST: Duration = Duration::from_secs(30);

/// Whether to leave the held events where they are for now, and since when.
#[derive(Debug, Default)]
pub(super) struct Deferral {
    /// The bytes of other processes' events pumped by the last read, and when (the rate a
    /// burst begins at).
    read: Option<(u64, Instant)>,
    /// What the last read left held (all processes' bytes): a deferral begins only once the
    /// watcher has caught up, so a backlog is never deferred again.
    left: u64,
    /// Those bytes at the last look, and when they last grew.
    last: Option<(u64, Instant)>,
    /// Deferring since (this busy stretch).
    since: Option<Instant>,
    /// This busy stretch was deferred for [`DEFER_AT_MOST`], or up to two thirds of the bound:
    /// not again until it slows.
    spent: bool,
    /// Why the last deferral ended (for the log line that says it).
    ended: &'static str,
}

/// What [`Deferral::look`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decision {
    /// Read and apply now.
    Apply,
    /// Leave the events held; `first` for the first look of a busy stretch that defers.
    Defer { first: bool },
}

impl Deferral {
    /// Just after a read: `others`, the bytes of other processes' events pumped since the
    /// start ([`deskd_watch::Pumped::others`]); a burst begins when they grow fast from here.
    /// `left`: the bytes the read left held.
    pub(super) fn read(&mut self, others: u64, left: u64, now: Instant) {
        self.read = Some((others, now));
        self.last = Some((others, now));
        self.left = left;
    }

    /// Whether the held events are being deferred now.
    pub(super) fn deferring(&self) -> bool {
        self.since.is_some()
    }

    /// Why the last deferral ended: "slowed", or the bound it reached.
    pub(super) fn ended(&self) -> &'static str {
        self.ended
    }

    /// A look before the next read: `held` bytes held now (all processes'), `others` as in
    /// [`Deferral::read`], `max` the bound (`watch_held_mib`).
    pub(super) fn look(&mut self, held: u64, others: u64, max: u64, now: Instant) -> Decision {
        // `last` marks the bytes when it last grew by STILL_GROWING: a trickle below that
        // neither moves the mark nor keeps the burst going.
        self.last = match self.last {
            Some((before, at)) if others.saturating_sub(before) < STILL_GROWING => {
                Some((before, at))
            }
            _ => Some((others, now)),
        };
        let grew_at = self.last.map_or(now, |(_, at)| at);
        let (burst_held, burst_rate) = burst_from();
        let slowed = held < burst_held
            || self.read.is_none()
            || now.saturating_duration_since(grew_at) >= SLOWED_AFTER;
        if slowed {
            if self.since.take().is_some() {
                self.ended = "slowed";
            }
            self.spent = false;
            return Decision::Apply;
        }
        if self.spent {
            return Decision::Apply;
        }
        // Two thirds of the bound (128 MiB of the default 192: 1.2 million creates of short
        // names, a million-file burst whole): the rest is room for the events that come while
        // the writer catches up, so deferring does not end in an overflow by itself. A
        // deferral that reaches it ends for this busy stretch, as one past DEFER_AT_MOST does
        // (it would otherwise stop and start again at every batch read below the mark).
        if held >= max / 3 * 2 {
            if self.since.take().is_some() {
                self.ended = "reached two thirds of watch_held_mib";
            }
            self.spent = true;
            return Decision::Apply;
        }
        let Some(since) = self.since else {
            // Not deferring yet: only a fast burst begins it, and only once the watcher has
            // caught up (the last read left less than a burst held). Otherwise a flood that
            // pauses 0.2 s now and then had its backlog, and every other user's change in it,
            // deferred again after each pause, one batch applied per pause: a flood slower
            // than the writer (1.2 MiB/s) kept a change waiting 60 s with the default
            // `watch_held_mib`, 37 min with 4096 (hostile review of stop 42, finding 2).
            if self.left >= burst_held {
                return Decision::Apply;
            }
            let fast = self.read.is_some_and(|(then_others, then)| {
                let secs = now.saturating_duration_since(then).as_secs_f64();
                secs > 0.0 && others.saturating_sub(then_others) as f64 / secs >= burst_rate
            });
            if !fast {
                return Decision::Apply;
            }
            self.since = Some(now);
            return Decision::Defer { first: true };
        };
        if now.saturating_duration_since(since) >= DEFER_AT_MOST {
            self.spent = true;
            self.since = None;
            self.ended = "was deferred for the longest a burst is";
            return Decision::Apply;
        }
        Decision::Defer { first: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 192 << 20;

    #[test]
    fn a_burst_is_deferred_until_no_event_came_for_a_while() {
        let mut d = Deferral::default();
        let t0 = Instant::now();
        d.read(0, 0, t0);
        // 15 MB/s, a program creating 140,000 files a second.
        let mut t = t0 + Duration::from_millis(100);
        assert_eq!(
            d.look(1_500_000, 1_500_000, MAX, t),
            Decision::Defer { first: true }
        );
        t += LOOK;
        assert_eq!(
            d.look(1_800_000, 1_800_000, MAX, t),
            Decision::Defer { first: false }
        );
        // The program off its CPU for a while: still the same burst.
        t += SLOWED_AFTER / 2;
        assert_eq!(
            d.look(1_800_000, 1_800_000, MAX, t),
            Decision::Defer { first: false }
        );
        t += LOOK;
        assert_eq!(
            d.look(1_900_000, 1_900_000, MAX, t),
            Decision::Defer { first: false }
        );
        // No growth for SLOWED_AFTER: the burst is over.
        t += SLOWED_AFTER;
        assert_eq!(d.look(1_900_000, 1_900_000, MAX, t), Decision::Apply);
    }

    #[test]
    fn a_slow_stream_is_never_deferred() {
        let mut d = Deferral::default();
        let t0 = Instant::now();
        d.read(2 << 20, 0, t0);
        // 1,000 renames a second of 600 bytes each, on top of a held backlog.
        let t = t0 + Duration::from_millis(50);
        assert_eq!(
            d.look((2 << 20) + 30_000, (2 << 20) + 30_000, MAX, t),
            Decision::Apply
        );
        // Nothing held worth deferring, however fast it came.
        let mut d = Deferral::default();
        d.read(0, 0, t0);
        assert_eq!(d.look(100_000, 100_000, MAX, t), Decision::Apply);
        // No read before: no rate known.
        let mut d = Deferral::default();
        assert_eq!(d.look(50 << 20, 50 << 20, MAX, t), Decision::Apply);
    }

    #[test]
    fn deferring_stops_at_two_thirds_of_the_bound_and_after_its_longest() {
        let mut d = Deferral::default();
        let t0 = Instant::now();
        d.read(0, 0, t0);
        let t = t0 + Duration::from_secs(1);
        assert_eq!(d.look(MAX / 3 * 2, MAX / 3 * 2, MAX, t), Decision::Apply);
        let mut d = Deferral::default();
        d.read(0, 0, t0);
        let mut t = t0 + LOOK;
        let mut held = 2 << 20;
        assert_eq!(d.look(held, held, MAX, t), Decision::Defer { first: true });
        for _ in 0..299 {
            t += Duration::from_millis(100);
            held += 300_000;
            assert_eq!(
                d.look(held, held, MAX * 100, t),
                Decision::Defer { first: false }
            );
        }
        t += Duration::from_millis(100);
        held += 300_000;
        assert_eq!(d.look(held, held, MAX * 100, t), Decision::Apply);
        // Spent until the stretch ends, then deferred again.
        t += Duration::from_millis(100);
        held += 300_000;
        assert_eq!(d.look(held, held, MAX * 100, t), Decision::Apply);
        t += SLOWED_AFTER;
        assert_eq!(d.look(held, held, MAX * 100, t), Decision::Apply);
        d.read(held, 0, t);
        t += Duration::from_millis(100);
        assert_eq!(
            d.look(held + (3 << 20), held + (3 << 20), MAX * 100, t),
            Decision::Defer { first: true }
        );
    }

    #[test]
    fn a_deferral_that_reaches_two_thirds_ends_for_the_stretch_instead_of_starting_again() {
        let mut d = Deferral::default();
        let t0 = Instant::now();
        d.read(0, 0, t0);
        let mut t = t0 + Duration::from_millis(100);
        assert_eq!(
            d.look(2 << 20, 2 << 20, MAX, t),
            Decision::Defer { first: true }
        );
        t += LOOK;
        let full = MAX / 3 * 2;
        assert_eq!(d.look(full, full, MAX, t), Decision::Apply);
        assert!(!d.deferring(), "ended, not still deferring");
        assert_eq!(d.ended(), "reached two thirds of watch_held_mib");
        // A batch read brings it under the mark while the burst goes on: applied as it comes,
        // not deferred again until the stretch slows.
        d.read(full, full - 1, t);
        t += LOOK;
        assert_eq!(d.look(full - 1, full + (1 << 20), MAX, t), Decision::Apply);
        assert!(!d.deferring());
    }

    #[test]
    fn deskd_s_own_events_neither_begin_nor_prolong_a_burst() {
        let mut d = Deferral::default();
        let t0 = Instant::now();
        d.read(0, 0, t0);
        // 3 MiB held in 100 ms, all of them deskd's own writes (the stamper): no burst.
        let mut t = t0 + Duration::from_millis(100);
        assert_eq!(d.look(3 << 20, 0, MAX, t), Decision::Apply);
        // A program's burst begins it...
        d.read(0, 0, t);
        t += Duration::from_millis(100);
        assert_eq!(
            d.look(5 << 20, 2 << 20, MAX, t),
            Decision::Defer { first: true }
        );
        assert!(d.deferring());
        // ... and ends SLOWED_AFTER after the program's last event, however much the stamper
        // adds meanwhile.
        for i in 1..=10u64 {
            t += LOOK;
            let decision = d.look((5 << 20) + i * 100_000, 2 << 20, MAX, t);
            if t.saturating_duration_since(t0 + Duration::from_millis(200)) >= SLOWED_AFTER {
                assert_eq!(decision, Decision::Apply, "look {i}");
                assert!(!d.deferring());
                return;
            }
            assert_eq!(decision, Decision::Defer { first: false }, "look {i}");
        }
        panic!("the burst did not end");
    }

    #[test]
    fn a_trickle_of_other_events_does_not_keep_a_burst_going() {
        let mut d = Deferral::default();
        let t0 = Instant::now();
        d.read(0, 0, t0);
        let mut t = t0 + Duration::from_millis(100);
        let mut others = 2 << 20;
        assert_eq!(
            d.look(others, others, MAX, t),
            Decision::Defer { first: true }
        );
        // A build elsewhere on the file system: 100 KiB a second, forever.
        let mut looks = 0;
        loop {
            t += LOOK;
            others += 2 * 1024;
            looks += 1;
            if d.look(others, others, MAX, t) == Decision::Apply {
                break;
            }
            assert!(looks < 20, "a trickle kept the burst deferred");
        }
        assert!(t - (t0 + Duration::from_millis(100)) >= SLOWED_AFTER);
    }

    /// A flood that pauses 0.2 s now and then (hostile review of stop 42, finding 2): the
    /// pause ends the deferral, one batch is read, and the backlog it leaves is applied before
    /// anything is deferred again, however fast the flood resumes.
    #[test]
    fn a_backlog_left_by_a_read_is_not_deferred_again() {
        let mut d = Deferral::default();
        let t0 = Instant::now();
        d.read(0, 0, t0);
        let mut t = t0 + Duration::from_millis(100);
        let mut others = 3 << 20;
        assert_eq!(
            d.look(others, others, MAX, t),
            Decision::Defer { first: true }
        );
        // The flood pauses: no growth for SLOWED_AFTER ends the deferral.
        t += SLOWED_AFTER;
        assert_eq!(d.look(others, others, MAX, t), Decision::Apply);
        // One read takes a batch and leaves 2 MiB held; the flood resumes at 10 MiB/s.
        d.read(others, 2 << 20, t);
        for _ in 0..20 {
            t += LOOK;
            others += 200 << 10;
            let held = (2 << 20) + others - (3 << 20);
            assert_eq!(d.look(held, others, MAX, t), Decision::Apply);
        }
        // Caught up (the read left less than a burst): a new burst is deferred again.
        d.read(others, 1000, t);
        t += LOOK;
        others += 2 << 20;
        assert_eq!(
            d.look(2 << 20, others, MAX, t),
            Decision::Defer { first: true }
        );
    }
}
