//! The adaptive rule's bookkeeping: whether polling has been paying on one connection.
//!
//! A poll pays when the message arrives inside the window: the reader is then awake when it
//! comes and no wake-up is paid. It does not pay when the window runs out and the message comes
//! soon after (within another window): on a loaded machine the poll held the very CPU the peer
//! needed to send it (a peer that sleeps in `read(2)`, as afpd does, needs a CPU to wake on),
//! which is how polling every time turned ~18 µs into ~217 µs. A message that comes long after
//! the window is a pause of the peer's (the end of a burst of requests): it is not counted
//! either way, so bursty traffic on a quiet machine keeps polling.
//! [`Pays`] remembers the outcome of the last [`HISTORY`] polls of one reader and decides:
//!
//! * **poll** while at least fifteen in sixteen of them paid (and always for the first [`WARM_UP`]
//!   waits), for
//!   the window bounded by the recent paid gap ([`bounded`]): no longer than
//!   [`GAP_FACTOR`]× the smoothed time a paying poll waited, and never less than [`FLOOR`].
//!   Polling must nearly always pay to be worth it: a poll that pays saves a wake-up (~50 µs
//!   on an idle VM, a few µs on a busy machine), one that does not costs the whole window;
//! * **sleep** otherwise, with a probe (a poll for the whole window) after [`PROBE_EVERY`]
//!   waits, so that polling resumes once it pays again. Each probe that does not pay doubles
//!   the waits before the next, up to [`PROBE_EVERY_MAX`]; one that pays halves them, and
//!   polling again brings them back to [`PROBE_EVERY`]. A probe that does not pay costs its request the poll and a wake-up (and
//!   the peer the CPU), so under lasting load probes must be rarer than the 1 % a 99th
//!   percentile sees. The probe measures polling with polling on, where it counts: a blocking
//!   read's own wait says nothing about how long the peer would take while this reader held a
//!   CPU.
//!
//! A 99th percentile sees one request in a hundred, so a rule that kept polling through one
//! poll in vain in eight would set it; one in sixteen is the most the history can tell.
//!
//! It stops quickly (two polls in vain of the last sixteen) and resumes slowly (probes refill the history), because
//! a poll that does not pay costs others CPU time while a sleep costs only this reader a
//! wake-up.

use std::time::Duration;

/// How many polls the rule remembers.
pub const HISTORY: u32 = 16;
/// Waits polled whatever the history says, at the start of a connection.
pub const WARM_UP: u32 = 4;
/// While polling does not pay, a wait after this many polls anyway (a probe)...
pub const PROBE_EVERY: u32 = 16;
/// ...and after up to this many once probes keep failing.
pub const PROBE_EVERY_MAX: u32 = 1024;
/// The bounded window is this many times the smoothed paid gap...
pub const GAP_FACTOR: u32 = 8;
/// ...and never shorter than this.
pub const FLOOR: Duration = Duration::from_micros(20);

/// What the reader should do while it waits for the next message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Poll this long, then block.
    Poll(Duration),
    /// Block at once.
    Sleep,
}

/// One reader's record of its recent polls.
#[derive(Clone, Debug, Default)]
pub struct Pays {
    /// The last polls' outcomes, newest in bit 0: 1 paid, 0 did not.
    outcomes: u32,
    /// How many of those bits are real (at most [`HISTORY`]).
    polls: u32,
    /// Waits since the last poll.
    slept: u32,
    /// Waits between probes beyond [`PROBE_EVERY`], as a power of two (0: [`PROBE_EVERY`]).
    backoff: u32,
    /// Smoothed wait of the polls that paid, in nanoseconds (0: none yet).
    gap_ns: u64,
}

impl Pays {
    /// What to do on the next wait, polling at most `window`.
    pub fn plan(&self, window: Duration) -> Plan {
        if window.is_zero() {
            return Plan::Sleep;
        }
        if self.polls < WARM_UP {
            return Plan::Poll(window);
        }
        if self.paying() {
            return Plan::Poll(bounded(window, self.gap()));
        }
        if self.slept + 1 >= self.probe_every() {
            return Plan::Poll(window);
        }
        Plan::Sleep
    }

    /// The waits from one probe to the next while polling does not pay.
    pub fn probe_every(&self) -> u32 {
        (PROBE_EVERY << self.backoff).min(PROBE_EVERY_MAX)
    }

    /// A poll ended: the message came after `waited`, or (None) the window ran out first.
    pub fn polled(&mut self, waited: Option<Duration>) {
        // A probe is a poll made while polling did not pay.
        if self.polls >= WARM_UP && !self.paying() {
            self.backoff = match waited {
                Some(_) => self.backoff.saturating_sub(1),
                None if self.probe_every() < PROBE_EVERY_MAX => self.backoff + 1,
                None => self.backoff,
            };
        }
        self.outcomes = (self.outcomes << 1) | u32::from(waited.is_some());
        self.polls = (self.polls + 1).min(HISTORY);
        self.slept = 0;
        if self.paying() {
            self.backoff = 0;
        }
        if let Some(waited) = waited {
            let ns = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
            // An exponential average over ~8 paying polls; the first one sets it.
            self.gap_ns = if self.gap_ns == 0 {
                ns.max(1)
            } else {
                (self.gap_ns - self.gap_ns / 8 + ns / 8).max(1)
            };
        }
    }

    /// A poll ran out, and the message came `late` after it gave up. Soon after (within
    /// `window`), the peer was kept from running, often by this very poll holding the CPU it
    /// needed: the poll did not pay. Long after, the peer paused (the end of a burst of
    /// requests): that says nothing about polling, and is not remembered.
    pub fn ran_out(&mut self, late: Duration, window: Duration) {
        if late <= window {
            self.polled(None);
        } else {
            self.slept = 0;
        }
    }

    /// A wait blocked without polling.
    pub fn slept(&mut self) {
        self.slept = self.slept.saturating_add(1);
    }

    /// Whether at least fifteen in sixteen of the remembered polls paid.
    pub fn paying(&self) -> bool {
        let mask = if self.polls >= 32 {
            u32::MAX
        } else {
            (1u32 << self.polls) - 1
        };
        16 * (self.outcomes & mask).count_ones() >= 15 * self.polls
    }

    /// The smoothed wait of the paying polls (None before the first).
    pub fn gap(&self) -> Option<Duration> {
        (self.gap_ns != 0).then(|| Duration::from_nanos(self.gap_ns))
    }
}

/// The window for a reader whose paying polls waited `gap` on average: long enough for the
/// message that comes as usual, not a CPU held for the whole `window` when it does not.
pub fn bounded(window: Duration, gap: Option<Duration>) -> Duration {
    match gap {
        None => window,
        Some(gap) => window.min((gap * GAP_FACTOR).max(FLOOR)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_micros(100);
    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn a_new_connection_polls_the_whole_window() {
        let pays = Pays::default();
        assert_eq!(pays.plan(WINDOW), Plan::Poll(WINDOW));
        assert_eq!(pays.gap(), None);
    }

    #[test]
    fn no_window_no_polling() {
        let mut pays = Pays::default();
        assert_eq!(pays.plan(Duration::ZERO), Plan::Sleep);
        for _ in 0..HISTORY {
            pays.polled(Some(us(3)));
        }
        assert_eq!(pays.plan(Duration::ZERO), Plan::Sleep);
    }

    #[test]
    fn polls_that_pay_keep_polling_bounded_by_their_gap() {
        let mut pays = Pays::default();
        for _ in 0..HISTORY {
            pays.polled(Some(us(5)));
        }
        assert!(pays.paying());
        assert_eq!(pays.gap(), Some(us(5)));
        // 8 × 5 µs = 40 µs, inside the 100 µs window.
        assert_eq!(pays.plan(WINDOW), Plan::Poll(us(40)));
        // A peer that answers after ~50 µs (a wake-up on an idle CPU) gets the whole window.
        let mut slow = Pays::default();
        for _ in 0..HISTORY {
            slow.polled(Some(us(50)));
        }
        assert_eq!(slow.plan(WINDOW), Plan::Poll(WINDOW));
    }

    #[test]
    fn the_bound_has_a_floor_and_a_ceiling() {
        assert_eq!(bounded(WINDOW, None), WINDOW);
        assert_eq!(bounded(WINDOW, Some(Duration::ZERO)), FLOOR);
        assert_eq!(bounded(WINDOW, Some(us(1))), FLOOR);
        assert_eq!(bounded(WINDOW, Some(us(4))), us(32));
        assert_eq!(bounded(WINDOW, Some(us(1000))), WINDOW);
        // A window shorter than the floor stays as short as asked.
        assert_eq!(bounded(us(10), Some(us(1))), us(10));
    }

    #[test]
    fn the_gap_is_smoothed_over_several_polls() {
        let mut pays = Pays::default();
        pays.polled(Some(us(8)));
        assert_eq!(pays.gap(), Some(us(8)));
        // One slow paying poll moves it by an eighth of the difference.
        pays.polled(Some(us(88)));
        assert_eq!(pays.gap(), Some(us(18)));
        // Polls that did not pay leave it alone.
        pays.polled(None);
        assert_eq!(pays.gap(), Some(us(18)));
    }

    #[test]
    fn polls_that_do_not_pay_stop_polling_and_probes_follow() {
        let mut pays = Pays::default();
        for _ in 0..HISTORY {
            pays.polled(Some(us(5)));
        }
        // Stops once more than one poll in sixteen did not pay: 1 miss in 16 still polls...
        assert!(matches!(pays.plan(WINDOW), Plan::Poll(_)));
        pays.polled(None);
        assert!(pays.paying());
        // ...the 2nd tips it.
        pays.polled(None);
        assert!(!pays.paying());
        // Then it sleeps, polling (the whole window) after PROBE_EVERY waits, then twice as
        // many after each probe that did not pay, up to PROBE_EVERY_MAX.
        let mut every = Vec::new();
        for _ in 0..10 {
            let mut waits = 1;
            while pays.plan(WINDOW) == Plan::Sleep {
                pays.slept();
                waits += 1;
            }
            assert_eq!(pays.plan(WINDOW), Plan::Poll(WINDOW));
            pays.polled(None);
            every.push(waits);
        }
        assert_eq!(every, [16, 32, 64, 128, 256, 512, 1024, 1024, 1024, 1024]);
        // A probe that pays halves the waits to the next.
        for _ in 0..PROBE_EVERY_MAX - 1 {
            pays.slept();
        }
        assert_eq!(pays.plan(WINDOW), Plan::Poll(WINDOW));
        pays.polled(Some(us(10)));
        assert_eq!(pays.probe_every(), PROBE_EVERY_MAX / 2);
    }

    #[test]
    fn paying_probes_bring_polling_back() {
        let mut pays = Pays::default();
        for _ in 0..HISTORY {
            pays.polled(None);
        }
        assert_eq!(pays.plan(WINDOW), Plan::Sleep);
        assert_eq!(pays.probe_every(), PROBE_EVERY_MAX);
        // Probes that pay refill the history, each halving the waits to the next; polling
        // resumes once fifteen in sixteen of the history paid.
        let mut waits = Vec::new();
        while pays.plan(WINDOW) == Plan::Sleep {
            let mut n = 1;
            while pays.plan(WINDOW) == Plan::Sleep {
                pays.slept();
                n += 1;
            }
            assert_eq!(pays.plan(WINDOW), Plan::Poll(WINDOW));
            pays.polled(Some(us(10)));
            waits.push(n);
        }
        assert_eq!(
            waits,
            [1024, 512, 256, 128, 64, 32, 16, 16, 16, 16, 16, 16, 16, 16, 16]
        );
        assert_eq!(pays.plan(WINDOW), Plan::Poll(us(80)));
        assert_eq!(pays.probe_every(), PROBE_EVERY);
    }

    #[test]
    fn probes_that_pay_now_and_then_stay_rare() {
        // Under lasting load a probe pays one time in three: the probes drift towards the
        // longest wait instead of every PROBE_EVERY.
        let mut pays = Pays::default();
        for _ in 0..HISTORY {
            pays.polled(None);
        }
        let (mut waits, mut probes) = (0u32, 0u32);
        for probe in 0..60 {
            while pays.plan(WINDOW) == Plan::Sleep {
                pays.slept();
                waits += 1;
            }
            pays.polled((probe % 3 == 0).then(|| us(10)));
            assert!(!pays.paying(), "probe {probe}");
            waits += 1;
            probes += 1;
        }
        assert!(
            waits / probes >= 256,
            "one probe in {} waits",
            waits / probes
        );
    }

    #[test]
    fn a_message_long_after_the_window_is_a_pause_not_a_miss() {
        let mut pays = Pays::default();
        for _ in 0..HISTORY {
            pays.polled(Some(us(5)));
        }
        // Bursts of three requests, each burst ending in a pause of a millisecond: polling
        // stays on.
        for _ in 0..50 {
            pays.ran_out(us(1000), WINDOW);
            assert!(pays.paying());
            pays.polled(Some(us(5)));
            pays.polled(Some(us(5)));
        }
        assert_eq!(pays.plan(WINDOW), Plan::Poll(us(40)));
        // A message right after the window: the peer was held back, twice in a row.
        for _ in 0..2 {
            pays.ran_out(us(30), WINDOW);
        }
        assert!(!pays.paying());
        assert_eq!(pays.plan(WINDOW), Plan::Sleep);
        // A pause during a probe is not a verdict: the next probe comes as planned.
        let mut n = 1;
        while pays.plan(WINDOW) == Plan::Sleep {
            pays.slept();
            n += 1;
        }
        assert_eq!(n, PROBE_EVERY);
        pays.ran_out(us(5000), WINDOW);
        assert_eq!(pays.plan(WINDOW), Plan::Sleep);
        assert_eq!(pays.probe_every(), PROBE_EVERY);
    }

    #[test]
    fn the_first_waits_poll_whatever_they_find() {
        let mut pays = Pays::default();
        for _ in 0..WARM_UP {
            assert_eq!(pays.plan(WINDOW), Plan::Poll(WINDOW));
            pays.polled(None);
        }
        assert_eq!(pays.plan(WINDOW), Plan::Sleep);
    }
}
