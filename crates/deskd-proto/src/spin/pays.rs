//! The adaptive rule's bookkeeping: whether polling has been paying on one connection.
//!
//! A poll pays when the message arrives inside the window: the reader is awake when it comes
//! and no wake-up is paid. It does not pay when the window runs out and the message comes soon
//! after (within another window): on a loaded machine the poll held the very CPU the peer
//! needed to send it (a peer that sleeps in `read(2)`, as afpd does, needs a CPU to wake on),
//! which is how polling every time turned ~18 µs into ~217 µs. A message that comes long after
//! the window is a pause of the peer's (the end of a burst of requests): it is not counted
//! either way, so bursty traffic on a quiet machine keeps polling.
//!
//! [`Pays`] remembers the outcome of the last [`HISTORY`] polls of one reader and decides:
//!
//! * **poll** for the whole window while at least fifteen in sixteen of them paid (and always
//!   for the first [`WARM_UP`] waits). Polling must nearly always pay to be worth it: a poll
//!   that pays saves a wake-up (~50 µs on an idle VM, a few µs on a busy machine), one that
//!   does not costs the whole window, and a 99th percentile sees one request in a hundred. The
//!   window is not cut to the usual gap: a shorter poll ends before a peer it holds back can
//!   send, and "soon after the window" would no longer tell a held-back peer from a window cut
//!   too short;
//! * **sleep** otherwise, with a probe (a poll for the whole window) after [`PROBE_EVERY`]
//!   waits, so that polling resumes once it pays again. Each probe in vain doubles the waits
//!   before the next, up to [`PROBE_EVERY_MAX`], and so does each stop that follows a short
//!   stretch of polling (fewer than [`LONG_STREAK`] polls that paid): under lasting load the
//!   rule flaps, probes paying now and then and polling stopping again, and each of those
//!   rounds costs requests a window. They must come rarer than the 1 % a 99th percentile sees.
//!   Only a stop after a long stretch brings the probes back to every [`PROBE_EVERY`] waits. The probe measures polling with polling on, where it counts: a
//!   blocking read's own wait says nothing about how long the peer would take while this
//!   reader held a CPU.
//!
//! It stops quickly (two polls in vain of the last sixteen) and resumes slowly (probes refill
//! the history), because a poll in vain costs others CPU time while a sleep costs only this
//! reader a wake-up.

use std::time::Duration;

/// How many polls the rule remembers.
pub const HISTORY: u32 = 16;
// The outcomes fit one u32 with room for the shift that masks them.
const _: () = assert!(HISTORY < 32);
/// Waits polled whatever the history says, at the start of a connection.
pub const WARM_UP: u32 = 4;
/// While polling does not pay, a wait after this many polls anyway (a probe)...
pub const PROBE_EVERY: u32 = 16;
/// ...and after up to this many once probes keep failing.
pub const PROBE_EVERY_MAX: u32 = 1024;
/// Polls that paid in a row after which polling counts as settled: when it stops after such
/// a stretch, probes start again at every [`PROBE_EVERY`] waits.
pub const LONG_STREAK: u32 = 1024;

/// What the reader should do while it waits for the next message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Poll for the window, then block.
    Poll,
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
    /// Polls that paid in a row while polling.
    streak: u32,
}

impl Pays {
    /// What to do on the next wait.
    pub fn plan(&self) -> Plan {
        if self.polls < WARM_UP || self.paying() || self.slept + 1 >= self.probe_every() {
            Plan::Poll
        } else {
            Plan::Sleep
        }
    }

    /// The waits from one probe to the next while polling does not pay.
    pub fn probe_every(&self) -> u32 {
        (PROBE_EVERY << self.backoff).min(PROBE_EVERY_MAX)
    }

    /// A poll ended: the message came inside the window (`paid`), or soon after it.
    pub fn polled(&mut self, paid: bool) {
        let was_paying = self.polls < WARM_UP || self.paying();
        self.outcomes = (self.outcomes << 1) | u32::from(paid);
        self.polls = (self.polls + 1).min(HISTORY);
        self.slept = 0;
        let paying = self.paying();
        if !was_paying && !paid {
            // A probe in vain.
            self.back_off();
        }
        if was_paying && !paying {
            // Polling stops. After a long stretch of polls that paid this is news (probe soon
            // again); after a short one polling flaps, and each round of it must be rarer.
            if self.streak >= LONG_STREAK {
                self.backoff = 0;
            } else {
                self.back_off();
            }
            self.streak = 0;
        }
        if paying && paid {
            self.streak = self.streak.saturating_add(1);
        }
    }

    fn back_off(&mut self) {
        if self.probe_every() < PROBE_EVERY_MAX {
            self.backoff += 1;
        }
    }

    /// A poll ran out, and the message came `late` after it gave up. Soon after (within
    /// `window`), the peer was kept from running, often by this very poll holding the CPU it
    /// needed: the poll did not pay. Long after, the peer paused (the end of a burst of
    /// requests): that says nothing about polling, and is not remembered.
    pub fn ran_out(&mut self, late: Duration, window: Duration) {
        if late <= window {
            self.polled(false);
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
        // `polls` is at most HISTORY (16), so the shift cannot overflow.
        let mask = (1u32 << self.polls) - 1;
        16 * (self.outcomes & mask).count_ones() >= 15 * self.polls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_micros(100);
    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// Sleep through the waits until the rule polls again; how many waits that took.
    fn waits_to_next_poll(pays: &mut Pays) -> u32 {
        let mut n = 1;
        while pays.plan() == Plan::Sleep {
            pays.slept();
            n += 1;
        }
        n
    }

    #[test]
    fn a_new_connection_polls() {
        let pays = Pays::default();
        assert_eq!(pays.plan(), Plan::Poll);
    }

    #[test]
    fn the_first_waits_poll_whatever_they_find() {
        let mut pays = Pays::default();
        for _ in 0..WARM_UP {
            assert_eq!(pays.plan(), Plan::Poll);
            pays.polled(false);
        }
        assert_eq!(pays.plan(), Plan::Sleep);
    }

    #[test]
    fn polls_that_do_not_pay_stop_polling_and_probes_back_off() {
        let mut pays = Pays::default();
        for _ in 0..HISTORY {
            pays.polled(true);
        }
        // One poll in vain in sixteen still polls...
        pays.polled(false);
        assert_eq!(pays.plan(), Plan::Poll);
        // ...the second stops it.
        pays.polled(false);
        assert_eq!(pays.plan(), Plan::Sleep);
        // Then it sleeps, probing after twice PROBE_EVERY waits (the stretch of polling was
        // short), then twice as many after each probe in vain, up to PROBE_EVERY_MAX.
        let mut every = Vec::new();
        for _ in 0..9 {
            every.push(waits_to_next_poll(&mut pays));
            pays.polled(false);
        }
        assert_eq!(every, [32, 64, 128, 256, 512, 1024, 1024, 1024, 1024]);
        // A probe that pays leaves the waits as they are.
        waits_to_next_poll(&mut pays);
        pays.polled(true);
        assert_eq!(pays.probe_every(), PROBE_EVERY_MAX);
    }

    #[test]
    fn a_stop_after_a_long_stretch_probes_soon_and_flapping_slows_down() {
        let mut pays = Pays::default();
        for _ in 0..LONG_STREAK + HISTORY {
            pays.polled(true);
        }
        pays.polled(false);
        pays.polled(false);
        assert_eq!(pays.plan(), Plan::Sleep);
        assert_eq!(waits_to_next_poll(&mut pays), PROBE_EVERY);
        // Flapping: probes pay, polling resumes, and stops again at once; every round waits
        // twice as long as the one before.
        let mut rounds = Vec::new();
        for _ in 0..8 {
            let mut waits = 0;
            loop {
                pays.polled(true);
                if pays.paying() {
                    break;
                }
                waits += waits_to_next_poll(&mut pays);
            }
            pays.polled(false);
            pays.polled(false);
            assert_eq!(pays.plan(), Plan::Sleep);
            rounds.push(waits);
        }
        assert!(rounds.windows(2).all(|w| w[1] >= w[0]), "{rounds:?}");
        // Under lasting flapping, two polls in vain per round of ~15,000 waits.
        assert!(
            *rounds.last().unwrap() >= 14 * PROBE_EVERY_MAX,
            "{rounds:?}"
        );
    }

    #[test]
    fn paying_probes_bring_polling_back() {
        let mut pays = Pays::default();
        for _ in 0..HISTORY {
            pays.polled(false);
        }
        assert_eq!(pays.plan(), Plan::Sleep);
        assert_eq!(pays.probe_every(), PROBE_EVERY_MAX);
        // Probes that pay refill the history at the waits reached; polling resumes once
        // fifteen in sixteen of the history paid.
        let mut waits = Vec::new();
        while pays.plan() == Plan::Sleep {
            waits.push(waits_to_next_poll(&mut pays));
            pays.polled(true);
        }
        assert_eq!(waits, [PROBE_EVERY_MAX; 15]);
        assert!(pays.paying());
    }

    #[test]
    fn probes_that_pay_now_and_then_stay_rare() {
        // Under lasting load a probe pays one time in three: the probes drift towards the
        // longest wait instead of every PROBE_EVERY.
        let mut pays = Pays::default();
        for _ in 0..HISTORY {
            pays.polled(false);
        }
        let (mut waits, mut probes) = (0u32, 0u32);
        for probe in 0..60 {
            waits += waits_to_next_poll(&mut pays);
            pays.polled(probe % 3 == 0);
            assert!(!pays.paying(), "probe {probe}");
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
            pays.polled(true);
        }
        // Bursts of three requests, each burst ending in a pause of a millisecond: polling
        // stays on.
        for _ in 0..50 {
            pays.ran_out(us(1000), WINDOW);
            assert!(pays.paying());
            pays.polled(true);
            pays.polled(true);
        }
        assert_eq!(pays.plan(), Plan::Poll);
        // A message right after the window: the peer was held back, twice in a row.
        pays.ran_out(us(30), WINDOW);
        pays.ran_out(us(100), WINDOW);
        assert_eq!(pays.plan(), Plan::Sleep);
        // A pause during a probe is not a verdict: the next probe comes as planned.
        let every = pays.probe_every();
        assert_eq!(waits_to_next_poll(&mut pays), every);
        pays.ran_out(us(5000), WINDOW);
        assert_eq!(pays.plan(), Plan::Sleep);
        assert_eq!(pays.probe_every(), every);
    }
}
