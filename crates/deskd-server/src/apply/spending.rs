//! What the watcher spends of the ID space for each user (a hostile review of 2026-12-06, finding 4). A user
//! who creates and removes files in a loop, in a shell or over SMB, burns IDs without any
//! connection to deskd, so neither the audit log nor the list of active users would name them.
//!
//! The writer counts the new IDs it hands out for the watcher by the owner (`st_uid`) of each
//! new object, over fixed windows (`watch_budget_seconds`, [`DEFAULT_WINDOW`]). Past the budget
//! (`watch_budget`, [`DEFAULT_BUDGET`]) in a window, that owner's
//! further new objects are not registered as they are seen: the folders they were made in are
//! kept (at most [`MAX_DEFERRED_DIRS`], beyond which the whole volume is rescanned) and
//! rescanned once the window has ended, so what still exists then gets its ID (and `rebuild -s`
//! agrees again), while what a loop made and removed meanwhile never cost one. A client that
//! asks for such an object meanwhile registers it as always. Each window's spending is one
//! audit line per user, and the first refusal of a window a warning naming the user.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// The window over which each user's new IDs are counted, unless configured.
pub const DEFAULT_WINDOW: Duration =
    Duration::from_secs(crate::config::DEFAULT_WATCH_BUDGET_SECONDS);
/// New IDs the watcher hands out for one user's objects in one window, unless configured.
pub const DEFAULT_BUDGET: u64 = crate::config::DEFAULT_WATCH_BUDGET;
/// Most folders remembered for the rescan at the window's end.
pub const MAX_DEFERRED_DIRS: usize = 1_000;

/// What one user's objects cost in one window.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UserSpending {
    pub uid: u32,
    /// New IDs handed out.
    pub ids: u64,
    /// New objects left unregistered (over the budget).
    pub deferred: u64,
}

/// What the end of a window leaves to do and to say.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WindowEnded {
    /// The window's length, seconds.
    pub seconds: u64,
    /// Each user whose objects got IDs or were deferred, by uid.
    pub users: Vec<UserSpending>,
    /// Folders with deferred objects, to rescan now (names from the root).
    pub rescan: Vec<Vec<Vec<u8>>>,
    /// More folders than [`MAX_DEFERRED_DIRS`] had deferred objects: rescan the whole volume.
    pub rescan_all: bool,
}

/// The writer's count for the current window.
#[derive(Debug)]
pub struct Spending {
    budget: u64,
    window: Duration,
    started: Instant,
    users: HashMap<u32, UserSpending>,
    deferred_dirs: BTreeSet<Vec<Vec<u8>>>,
    too_many_dirs: bool,
}

impl Default for Spending {
    fn default() -> Self {
        Spending {
            budget: DEFAULT_BUDGET,
            window: DEFAULT_WINDOW,
            started: Instant::now(),
            users: HashMap::new(),
            deferred_dirs: BTreeSet::new(),
            too_many_dirs: false,
        }
    }
}

impl Spending {
    /// Use these limits from now on (the volume's settings; a reload may change them).
    pub fn set_limits(&mut self, budget: u64, window: Duration) {
        self.budget = budget;
        self.window = window.max(Duration::from_secs(1));
    }

    /// New IDs per user per window.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Whether the window has ended by `now` with something deferred to rescan: the watcher
    /// then asks the writer for a turn although nothing new was seen.
    pub fn rescan_due(&self, now: Instant) -> bool {
        (self.too_many_dirs || !self.deferred_dirs.is_empty())
            && now.duration_since(self.started) >= self.window
    }

    /// End the window if it is over by `now`: what it spent and left to rescan (`None` when it
    /// is not over, or nothing happened in it). A new window starts.
    pub fn roll(&mut self, now: Instant) -> Option<WindowEnded> {
        let length = now.duration_since(self.started);
        if length < self.window {
            return None;
        }
        self.started = now;
        if self.users.is_empty() {
            return None;
        }
        let mut users: Vec<UserSpending> = self.users.drain().map(|(_, u)| u).collect();
        users.sort_by_key(|u| u.uid);
        Some(WindowEnded {
            seconds: length.as_secs(),
            users,
            rescan: std::mem::take(&mut self.deferred_dirs)
                .into_iter()
                .collect(),
            rescan_all: std::mem::take(&mut self.too_many_dirs),
        })
    }

    /// Whether a new object of `uid` may get an ID now.
    pub fn allows(&self, uid: u32) -> bool {
        self.users.get(&uid).is_none_or(|u| u.ids < self.budget)
    }

    /// Count `ids` new IDs handed out for objects of `uid`.
    pub fn spent(&mut self, uid: u32, ids: u64) {
        if ids > 0 {
            self.user(uid).ids += ids;
        }
    }

    /// Note a new object of `uid` in the folder `dir` left unregistered. True for the first of
    /// the window (the caller warns).
    pub fn defer(&mut self, uid: u32, dir: &[Vec<u8>]) -> bool {
        let user = self.user(uid);
        user.deferred += 1;
        let first = user.deferred == 1;
        if !self.deferred_dirs.contains(dir) {
            if self.deferred_dirs.len() < MAX_DEFERRED_DIRS {
                self.deferred_dirs.insert(dir.to_vec());
            } else {
                self.too_many_dirs = true;
            }
        }
        first
    }

    fn user(&mut self, uid: u32) -> &mut UserSpending {
        self.users.entry(uid).or_insert(UserSpending {
            uid,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: u64 = DEFAULT_BUDGET;
    const WINDOW: Duration = DEFAULT_WINDOW;

    #[test]
    fn a_user_over_the_budget_is_deferred_until_the_window_ends() {
        let mut s = Spending::default();
        let start = s.started;
        let dir = vec![b"nob".to_vec()];
        s.spent(1000, 5);
        assert!(s.allows(65534));
        s.spent(65534, BUDGET - 1);
        assert!(s.allows(65534));
        s.spent(65534, 1);
        assert!(!s.allows(65534), "at the budget");
        assert!(s.allows(1000), "others are not held back");
        assert!(s.defer(65534, &dir), "the first refusal is reported");
        assert!(!s.defer(65534, &dir), "once a window");
        assert!(s.roll(start + WINDOW / 2).is_none());
        assert!(!s.rescan_due(start + WINDOW / 2));
        assert!(s.rescan_due(start + WINDOW));
        let ended = s.roll(start + WINDOW).expect("the window ended");
        assert_eq!(ended.seconds, WINDOW.as_secs());
        assert_eq!(
            ended.users,
            vec![
                UserSpending {
                    uid: 1000,
                    ids: 5,
                    deferred: 0
                },
                UserSpending {
                    uid: 65534,
                    ids: BUDGET,
                    deferred: 2
                },
            ]
        );
        assert_eq!(ended.rescan, vec![dir]);
        assert!(!ended.rescan_all);
        assert!(s.allows(65534), "a new window, a new budget");
        assert!(!s.rescan_due(start + WINDOW * 3));
        assert!(
            s.roll(start + WINDOW * 3).is_none(),
            "an idle window says nothing"
        );
    }

    #[test]
    fn too_many_folders_make_a_rescan_of_the_whole_volume() {
        let mut s = Spending::default();
        s.spent(7, BUDGET);
        for i in 0..=MAX_DEFERRED_DIRS {
            s.defer(7, &[format!("d{i}").into_bytes()]);
        }
        let ended = s.roll(s.started + WINDOW).unwrap();
        assert_eq!(ended.rescan.len(), MAX_DEFERRED_DIRS);
        assert!(ended.rescan_all);
    }
}
