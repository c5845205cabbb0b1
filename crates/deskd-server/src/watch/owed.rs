//! Stamps owed: the resource files and `user.deskd.id` mirrors of objects a busy batch
//! registered, written by a thread of the lowest CPU priority rather than during the burst.
//!
//! A plain program creating files as fast as the disk allows (an `rsync`, an unpacked archive)
//! would otherwise have the server create a second file (`.rsrc/NAME`) and write an xattr for
//! every one while it runs, on the same file system and cores: the program then ran at about
//! two thirds of its speed without the watcher (docs/PERFORMANCE.md, "Live tracking"). The
//! desktop still registers every object at once (an ID, `find` sees it); only the copy of its
//! ID on disk follows. They are kept as runs of IDs (a busy batch hands out consecutive IDs),
//! so a million owed stamps take a few bytes, and are paid:
//!
//! * by the stamper, a thread of the watcher's running at the lowest CPU priority
//!   (`crate::watch::thread::stamp_in_background`), [`SHARE`] at a time, as soon as any are
//!   owed: with whatever CPU the programs making the burst leave, so it never slows them, and
//!   it never starves (the scheduler gives a thread at nice 19 a little even on a busy machine);
//! * all of them at a barrier (`deskd flush`, freeze, a rebuild job), so that what the barrier
//!   promises (every change applied, on disk and in the desktop) holds.
//!
//! A stamp is paid where the desktop says the object is *then* (by ID), so an object moved or
//! removed in between is stamped at its new place or not at all. If the server stops owing
//! some, the rescan at its next start writes what is missing (it repairs every missing
//! resource file and mirror).

/// Batches with at least this many stamps owe them instead of paying at once: smaller ones
/// are a user's own changes, stamped within the batch as before.
pub(crate) const OWE_FROM: usize = 64;

/// Most stamps owed: beyond, a batch pays its own at once (the runs then stay bounded even if
/// every other ID was a client's).
pub(crate) const MAX_OWED: u64 = 4_000_000;

/// How many stamps are paid in one go (about 20–60 ms of work) before the payer looks again
/// (the stamper whether it must stop, a barrier whether any are left).
pub(crate) const SHARE: usize = 1024;

/// The IDs whose stamps are owed, as runs `first..=last`.
#[derive(Debug, Default)]
pub(crate) struct Owed {
    runs: Vec<(u32, u32)>,
    count: u64,
}

impl Owed {
    /// Whether nothing is owed.
    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// How many stamps are owed.
    pub(crate) fn len(&self) -> u64 {
        self.count
    }

    /// Whether `more` stamps fit.
    pub(crate) fn has_room_for(&self, more: usize) -> bool {
        self.count + more as u64 <= MAX_OWED
    }

    /// Owe the stamp of `id`.
    pub(crate) fn owe(&mut self, id: u32) {
        match self.runs.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(id) => *last = id,
            _ => self.runs.push((id, id)),
        }
        self.count += 1;
    }

    /// Take up to `n` IDs to pay, oldest runs first.
    pub(crate) fn take(&mut self, n: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(n.min(self.count as usize));
        let mut used = 0;
        for run in self.runs.iter_mut() {
            let want = n - out.len();
            if want == 0 {
                break;
            }
            let (first, last) = *run;
            if ((last - first) as usize) < want {
                out.extend(first..=last);
                used += 1;
            } else {
                let end = first + want as u32;
                out.extend(first..end);
                run.0 = end;
                break;
            }
        }
        self.runs.drain(..used);
        self.count -= out.len() as u64;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_ids_are_one_run_and_are_taken_in_order() {
        let mut owed = Owed::default();
        for id in 100..1100 {
            owed.owe(id);
        }
        owed.owe(5000);
        assert_eq!(owed.runs.len(), 2);
        assert_eq!(owed.len(), 1001);
        assert_eq!(owed.take(3), vec![100, 101, 102]);
        let rest = owed.take(10_000);
        assert_eq!(rest.len(), 998);
        assert_eq!(rest[0], 103);
        assert_eq!(*rest.last().unwrap(), 5000);
        assert!(owed.is_empty());
        assert!(owed.runs.is_empty());
    }

    #[test]
    fn a_take_that_ends_on_a_runs_last_id_drops_the_run() {
        let mut owed = Owed::default();
        for id in [17, 18, 40, 41] {
            owed.owe(id);
        }
        assert_eq!(owed.take(2), vec![17, 18]);
        assert_eq!(owed.runs, vec![(40, 41)]);
        assert_eq!(owed.take(1), vec![40]);
        assert_eq!(owed.runs, vec![(41, 41)]);
        assert_eq!(owed.take(5), vec![41]);
        assert!(owed.is_empty());
    }

    #[test]
    fn room_is_bounded() {
        let mut owed = Owed::default();
        owed.owe(20);
        assert!(owed.has_room_for(1));
        assert!(!owed.has_room_for(MAX_OWED as usize));
    }
}
