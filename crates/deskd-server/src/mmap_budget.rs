//! The cap on what the server's read connections memory-map of their desktops together
//! (`[server] mmap_total`).
//!
//! SQLite maps the desktop once per connection, and the kernel counts each mapping's resident
//! pages in the process's RSS again, though the page cache holds them once: with four
//! clients a 144 MB desktop showed as 718 MB peak RSS. Each read connection therefore takes
//! a grant from one budget before it maps anything: its desktop's size and an eighth for
//! growth, or what is left; a connection that got less reads the rest with `pread(2)` (same
//! answers, a system call per page its page cache misses) and asks again when the budget has
//! room. A grant goes back when its connection closes. Each volume's writer maps its desktop
//! outside the budget: there is one per volume, and its mapping serves every write.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// `mmap_total` when the configuration does not say: a 1,000,000-object desktop (about
/// 144 MB) mapped whole by six read connections (four clients, `deskd status` and one more),
/// so that the usual few clients lose nothing (docs/PERFORMANCE.md, "Memory").
pub const DEFAULT_MMAP_TOTAL: u64 = 1 << 30;

/// Grants are whole multiples of this (a smaller rest of the budget is not handed out).
pub const GRANULE: u64 = 64 << 10;

/// The budget every read connection of this server draws from.
pub fn global() -> &'static MmapBudget {
    static GLOBAL: MmapBudget = MmapBudget::new(DEFAULT_MMAP_TOTAL);
    &GLOBAL
}

/// What a read connection asks for to map a desktop of `desktop_len` bytes whole, with room
/// for an eighth's growth: whole granules, at most SQLite's per-connection limit.
pub fn wanted_for(desktop_len: u64) -> u64 {
    let with_growth = desktop_len.saturating_add(desktop_len / 8);
    let most = deskd_db::MMAP_SIZE as u64;
    (with_growth.min(most).div_ceil(GRANULE).max(1) * GRANULE).min(most)
}

/// A total and what of it is granted now.
#[derive(Debug)]
pub struct MmapBudget {
    total: AtomicU64,
    granted: AtomicU64,
    grants: AtomicU32,
    short: AtomicU32,
}

impl MmapBudget {
    /// A budget of `total` bytes, none granted.
    pub const fn new(total: u64) -> MmapBudget {
        MmapBudget {
            total: AtomicU64::new(total),
            granted: AtomicU64::new(0),
            grants: AtomicU32::new(0),
            short: AtomicU32::new(0),
        }
    }

    /// Set the total (start-up, reload). Grants already made are kept: a lower total only
    /// stops new ones until enough connections have closed.
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::SeqCst);
    }

    /// The total.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// What is granted now.
    pub fn granted(&self) -> u64 {
        self.granted.load(Ordering::Relaxed)
    }

    /// Live grants (read connections), short or not.
    pub fn grants(&self) -> u32 {
        self.grants.load(Ordering::Relaxed)
    }

    /// Live grants smaller than what their connection wanted.
    pub fn short(&self) -> u32 {
        self.short.load(Ordering::Relaxed)
    }

    /// Whether a grant could grow now (cheap: two loads).
    fn has_room(&self) -> bool {
        self.total().saturating_sub(self.granted()) >= GRANULE
    }

    /// Take up to `want` bytes in whole granules; what was taken (maybe 0).
    fn take(&self, want: u64) -> u64 {
        let mut granted = self.granted.load(Ordering::SeqCst);
        loop {
            let free = self.total().saturating_sub(granted);
            let got = want.min(free) / GRANULE * GRANULE;
            if got == 0 {
                return 0;
            }
            match self.granted.compare_exchange_weak(
                granted,
                granted + got,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return got,
                Err(now) => granted = now,
            }
        }
    }

    /// A new grant towards `wanted` bytes.
    pub fn grant(&'static self, wanted: u64) -> MmapGrant {
        let bytes = self.take(wanted);
        self.grants.fetch_add(1, Ordering::SeqCst);
        let grant = MmapGrant {
            budget: self,
            bytes,
            wanted,
            short: false,
        };
        grant.with_short_counted()
    }
}

/// One connection's share of an [`MmapBudget`], given back when dropped.
#[derive(Debug)]
pub struct MmapGrant {
    budget: &'static MmapBudget,
    bytes: u64,
    wanted: u64,
    /// Counted in the budget's `short` now.
    short: bool,
}

impl MmapGrant {
    /// The bytes the connection may map.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the grant is less than the connection wants.
    pub fn is_short(&self) -> bool {
        self.bytes < self.wanted
    }

    /// Bring the budget's count of short grants in line with this one.
    fn with_short_counted(mut self) -> MmapGrant {
        self.recount_short();
        self
    }

    fn recount_short(&mut self) {
        let short = self.is_short();
        if short != self.short {
            if short {
                self.budget.short.fetch_add(1, Ordering::SeqCst);
            } else {
                self.budget.short.fetch_sub(1, Ordering::SeqCst);
            }
            self.short = short;
        }
    }

    /// The connection now wants `wanted` bytes (its desktop grew); the grant is not changed
    /// until [`MmapGrant::grow`].
    pub fn want(&mut self, wanted: u64) {
        self.wanted = self.wanted.max(wanted);
        self.recount_short();
    }

    /// Take more of the budget towards what the connection wants; true when the grant grew.
    pub fn grow(&mut self) -> bool {
        if !self.is_short() || !self.budget.has_room() {
            return false;
        }
        let more = self.budget.take(self.wanted - self.bytes);
        self.bytes += more;
        self.recount_short();
        more > 0
    }
}

impl Drop for MmapGrant {
    fn drop(&mut self) {
        self.budget.granted.fetch_sub(self.bytes, Ordering::SeqCst);
        self.budget.grants.fetch_sub(1, Ordering::SeqCst);
        if self.short {
            self.budget.short.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(total: u64) -> &'static MmapBudget {
        Box::leak(Box::new(MmapBudget::new(total)))
    }

    #[test]
    fn wanted_is_the_desktop_and_an_eighth_in_whole_granules() {
        assert_eq!(wanted_for(0), GRANULE);
        assert_eq!(wanted_for(8 * GRANULE), 9 * GRANULE);
        assert_eq!(wanted_for(8 * GRANULE + 1), 10 * GRANULE);
        assert_eq!(wanted_for(u64::MAX), deskd_db::MMAP_SIZE as u64);
    }

    #[test]
    fn grants_never_exceed_the_total_and_go_back_when_dropped() {
        let b = budget(10 * GRANULE);
        let first = b.grant(6 * GRANULE);
        assert_eq!(first.bytes(), 6 * GRANULE);
        assert!(!first.is_short());
        let second = b.grant(6 * GRANULE);
        assert_eq!(second.bytes(), 4 * GRANULE, "what was left");
        let third = b.grant(6 * GRANULE);
        assert_eq!(third.bytes(), 0, "nothing left: reads with pread");
        assert_eq!((b.granted(), b.grants(), b.short()), (10 * GRANULE, 3, 2));
        drop(first);
        assert_eq!(b.granted(), 4 * GRANULE);
        let mut third = third;
        assert!(third.grow());
        assert_eq!(third.bytes(), 6 * GRANULE);
        assert_eq!(b.short(), 1);
        drop((second, third));
        assert_eq!((b.granted(), b.grants(), b.short()), (0, 0, 0));
    }

    #[test]
    fn a_lower_total_keeps_grants_and_stops_new_ones() {
        let b = budget(8 * GRANULE);
        let kept = b.grant(8 * GRANULE);
        b.set_total(4 * GRANULE);
        assert_eq!(kept.bytes(), 8 * GRANULE);
        assert_eq!(b.grant(GRANULE).bytes(), 0);
        drop(kept);
        assert_eq!(b.grant(8 * GRANULE).bytes(), 4 * GRANULE);
    }

    #[test]
    fn a_grown_desktop_makes_a_grant_short_until_it_grows() {
        let b = budget(100 * GRANULE);
        let mut g = b.grant(2 * GRANULE);
        g.want(5 * GRANULE);
        assert!(g.is_short());
        assert_eq!(b.short(), 1);
        assert!(g.grow());
        assert_eq!((g.bytes(), b.short()), (5 * GRANULE, 0));
        g.want(GRANULE);
        assert!(!g.is_short(), "a grant never shrinks");
    }

    #[test]
    fn concurrent_grants_stay_within_the_total() {
        let b = budget(64 * GRANULE);
        let grants: Vec<MmapGrant> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..8).map(|_| b.grant(3 * GRANULE)).collect::<Vec<_>>()))
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        });
        let sum: u64 = grants.iter().map(MmapGrant::bytes).sum();
        assert!(sum <= 64 * GRANULE, "{sum}");
        assert_eq!(sum, b.granted());
        drop(grants);
        assert_eq!(b.granted(), 0);
    }
}
