//! What the watcher spends of the ID space for each user (a hostile review of 2026-12-06,
//! finding 4). A user who creates and removes files in a loop, in a shell or over SMB, burns IDs
//! without any connection to deskd, so neither the audit log nor the list of active users would
//! name them.
//!
//! The writer counts the new IDs it hands out for the watcher by the payer of each new object,
//! over windows (`watch_budget_seconds`, [`DEFAULT_WINDOW`]): its owner (`st_uid`), except a
//! file with more than one name, which may be another user's linked by whoever could, and is
//! charged to one common payer ([`HARD_LINKS`]) so that nobody can spend a victim's budget. Every
//! object is checked, a created object, each entry of a tree registered with it (a folder moved
//! in), and those of a rescan the watcher asked for. Past the budget (`watch_budget`,
//! [`DEFAULT_BUDGET`]), the payer's further new objects (root's excepted: root can do anything to the volume
//! anyway) are not registered as they are seen:
//! their paths are kept (at most [`MAX_DEFERRED`]; beyond, the online repair walks the volume
//! once the window ends) and tried again when the window has ended, as creates charged to the
//! next window. So what still exists then gets its ID (and `rebuild -s` agrees again), what a
//! loop made and removed meanwhile never cost one, and the work at a window's end is bounded by
//! the budget, not by the size of the folders involved. A client that asks for such an object
//! first registers it as always. Each window ends with one audit line per payer, and the first
//! refusal of a window is a warning naming the payer.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use deskd_db::Kind;

use crate::walk::Node;

/// The window over which each user's new IDs are counted, unless configured.
pub const DEFAULT_WINDOW: Duration =
    Duration::from_secs(crate::config::DEFAULT_WATCH_BUDGET_SECONDS);
/// New IDs the watcher hands out for one user's objects in one window, unless configured.
pub const DEFAULT_BUDGET: u64 = crate::config::DEFAULT_WATCH_BUDGET;
/// Most objects kept to try again when the window ends.
pub const MAX_DEFERRED: usize = 10_000;
/// The payer of files with more than one name (uid -1, which no user has).
pub const HARD_LINKS: u32 = u32::MAX;
/// Root, whose objects are counted but never held back ([`Spending::allows`]).
pub const ROOT: u32 = 0;

/// Who pays for a new object: its owner, or [`HARD_LINKS`] for a file with other names.
pub fn payer(node: &Node) -> u32 {
    if node.kind != Kind::Dir && node.nlink > 1 {
        HARD_LINKS
    } else {
        node.uid
    }
}

/// A payer as the log names it.
pub fn payer_text(payer: u32) -> String {
    if payer == HARD_LINKS {
        "files with several names (hard links, whoever made them)".to_owned()
    } else {
        format!("uid {payer}")
    }
}

/// What one payer's objects cost in one window.
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
    /// Seconds from the window's start to its end (the first batch after it was over).
    pub seconds: u64,
    /// Each payer whose objects got IDs or were deferred, by uid.
    pub users: Vec<UserSpending>,
    /// Objects deferred, to try again now (names from the root).
    pub retry: Vec<Vec<Vec<u8>>>,
    /// More than [`MAX_DEFERRED`] were deferred: the online repair walks the volume.
    pub repair: bool,
}

/// The writer's count for the current window.
#[derive(Debug)]
pub struct Spending {
    budget: u64,
    window: Duration,
    started: Instant,
    users: HashMap<u32, UserSpending>,
    deferred: BTreeSet<Vec<Vec<u8>>>,
    too_many: bool,
}

impl Default for Spending {
    fn default() -> Self {
        Spending {
            budget: DEFAULT_BUDGET,
            window: DEFAULT_WINDOW,
            started: Instant::now(),
            users: HashMap::new(),
            deferred: BTreeSet::new(),
            too_many: false,
        }
    }
}

impl Spending {
    /// Use these limits from now on (the volume's settings; a reload may change them).
    pub fn set_limits(&mut self, budget: u64, window: Duration) {
        self.budget = budget;
        self.window = window.max(Duration::from_secs(1));
    }

    /// New IDs per payer per window.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// When the current window ends, if anything was counted in it: the watcher gives the
    /// writer a turn then, although nothing new may have been seen, so that what it held back
    /// is tried again and the window's audit lines come on time.
    pub fn due(&self) -> Option<Instant> {
        (!self.users.is_empty()).then_some(self.started + self.window)
    }

    /// End the window if it is over by `now`: what it spent and left to try again (`None` when
    /// it is not over, or nothing happened in it). A new window starts.
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
        let deferred = std::mem::take(&mut self.deferred);
        let repair = std::mem::take(&mut self.too_many);
        Some(WindowEnded {
            seconds: length.as_secs(),
            users,
            // The repair registers them all; trying them again would hold them back anew.
            retry: if repair {
                Vec::new()
            } else {
                deferred.into_iter().collect()
            },
            repair,
        })
    }

    /// Whether a new object of `payer` may get an ID now. Root's objects always may (still
    /// counted, for the audit line): root can do anything to the volume anyway, and a restore
    /// or an `rsync` run as root is the bulk the watcher must keep up with, not a user burning IDs.
    pub fn allows(&self, payer: u32) -> bool {
        payer == ROOT || self.users.get(&payer).is_none_or(|u| u.ids < self.budget)
    }

    /// Count `ids` new IDs handed out for objects of `payer`.
    pub fn spent(&mut self, payer: u32, ids: u64) {
        if ids > 0 {
            self.user(payer).ids += ids;
        }
    }

    /// New objects held back in this window, to try again at its end.
    pub fn held_back(&self) -> u64 {
        self.deferred.len() as u64
    }

    /// Note a new object of `payer` at `path` left unregistered (each object once a window).
    /// True for the payer's first of the window (the caller warns).
    pub fn defer(&mut self, payer: u32, path: &[Vec<u8>]) -> bool {
        if self.deferred.contains(path) {
            return false;
        }
        if self.deferred.len() < MAX_DEFERRED {
            self.deferred.insert(path.to_vec());
        } else {
            self.too_many = true;
        }
        let user = self.user(payer);
        user.deferred += 1;
        user.deferred == 1
    }

    fn user(&mut self, payer: u32) -> &mut UserSpending {
        self.users.entry(payer).or_insert(UserSpending {
            uid: payer,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: u64 = DEFAULT_BUDGET;
    const WINDOW: Duration = DEFAULT_WINDOW;

    fn node(uid: u32, kind: Kind, nlink: u64) -> Node {
        Node {
            dev: 1,
            ino: 2,
            kind,
            ctime: 0,
            uid,
            nlink,
            btime: None,
        }
    }

    #[test]
    fn roots_objects_are_counted_but_never_held_back() {
        let mut s = Spending::default();
        s.spent(ROOT, BUDGET * 3);
        assert!(s.allows(ROOT), "root is not limited");
        assert_eq!(s.users.get(&ROOT).map(|u| u.ids), Some(BUDGET * 3));
        s.spent(HARD_LINKS, BUDGET);
        assert!(!s.allows(HARD_LINKS), "hard links made by anyone still are");
    }

    #[test]
    fn a_user_over_the_budget_is_deferred_until_the_window_ends() {
        let mut s = Spending::default();
        let start = s.started;
        let path = vec![b"nob".to_vec(), b"f".to_vec()];
        s.spent(1000, 5);
        assert!(s.allows(65534));
        s.spent(65534, BUDGET - 1);
        assert!(s.allows(65534));
        s.spent(65534, 1);
        assert!(!s.allows(65534), "at the budget");
        assert!(s.allows(1000), "others are not held back");
        assert_eq!(
            s.due(),
            Some(start + WINDOW),
            "a window with spending ends on time"
        );
        assert!(s.defer(65534, &path), "the first refusal is reported");
        assert!(!s.defer(65534, &path), "once a window, and counted once");
        assert_eq!(s.due(), Some(start + WINDOW));
        assert!(s.roll(start + WINDOW / 2).is_none());
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
                    deferred: 1
                },
            ]
        );
        assert_eq!(ended.retry, vec![path]);
        assert!(!ended.repair);
        assert!(s.allows(65534), "a new window, a new budget");
        assert_eq!(s.due(), None);
        assert!(
            s.roll(start + WINDOW * 3).is_none(),
            "an idle window says nothing"
        );
    }

    #[test]
    fn too_many_deferred_objects_make_a_repair_of_the_volume() {
        let mut s = Spending::default();
        s.spent(7, BUDGET);
        for i in 0..=MAX_DEFERRED {
            s.defer(7, &[format!("f{i}").into_bytes()]);
        }
        let ended = s.roll(s.started + WINDOW).unwrap();
        assert!(ended.retry.is_empty(), "the repair registers them");
        assert!(ended.repair);
        assert_eq!(ended.users[0].deferred, MAX_DEFERRED as u64 + 1);
    }

    #[test]
    fn a_file_with_several_names_is_charged_to_no_user() {
        assert_eq!(payer(&node(1003, Kind::File, 1)), 1003);
        assert_eq!(payer(&node(1003, Kind::File, 2)), HARD_LINKS);
        assert_eq!(
            payer(&node(1003, Kind::Dir, 5)),
            1003,
            "a folder's links are its own"
        );
        assert!(payer_text(HARD_LINKS).contains("hard links"));
    }
}
