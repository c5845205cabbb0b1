//! The rows and folder paths `find` read from PostgreSQL, kept per volume (issue 28): a
//! repeated or overlapping `find` confirms its hits and joins their paths without a round trip.
//! SQLite volumes have none (their reads are in-process).
//!
//! **Kept right.** Every change to the volume reaches the cache through
//! [`crate::pg_volume::PgVolume::catch_up`], which reads the change log and the changed rows
//! again: a held row is replaced by the row read (or dropped when gone), and the path cache
//! is cleared when a changed ID is, or may have been, a folder. This server's writer catches
//! up after each commit and before it answers (and clears the whole cache when it cannot), so
//! a find after an acknowledged write through the same server sees it; another server's write
//! is seen within the follower's lag (ARCHITECTURE.md, "Following the other servers").
//!
//! **Races.** A find reads its misses outside the lock; a catch-up between its read and its
//! fill may have changed those rows, and a fill would put the older row back. Every change
//! bumps a generation, and a fill made under another generation than the one read before the
//! read is dropped (the rows are still answered: they were read after the find began).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use deskd_db::{Kind, Object, Read, Result};
use tracing::debug;

/// Rows held at most; past it the rows are dropped wholesale (simple, and a find refills what
/// it needs).
const ROWS_MAX: usize = 65_536;

/// Folder paths held at most; likewise.
const PATHS_MAX: usize = 16_384;

/// A folder's path components, as [`Read::paths_of`] gives them.
pub(crate) type Components = Arc<Vec<Vec<u8>>>;

#[derive(Default)]
struct Held {
    /// Bumped by every change and clear: a fill read before it is refused.
    generation: u64,
    rows: HashMap<u32, Object>,
    paths: HashMap<u32, Components>,
}

/// One PostgreSQL volume's cache for `find`.
#[derive(Default)]
pub(crate) struct FindCache {
    held: Mutex<Held>,
    /// Row reads (`get_many`) and path reads (`paths_of`) sent to the database for find's
    /// misses: what the tests count.
    row_reads: AtomicU64,
    path_reads: AtomicU64,
}

impl FindCache {
    /// The rows of `ids` (sorted, as [`Read::get_many`] answers), the held ones from the cache,
    /// the others in one read from `db` (then held).
    pub(crate) fn get_many<R: Read + ?Sized>(&self, db: &R, ids: &[u32]) -> Result<Vec<Object>> {
        let (mut out, missing, generation) = {
            let held = self.held.lock().unwrap();
            let mut out = Vec::with_capacity(ids.len());
            let mut missing = Vec::new();
            for id in ids {
                match held.rows.get(id) {
                    Some(o) => out.push(o.clone()),
                    None => missing.push(*id),
                }
            }
            (out, missing, held.generation)
        };
        if !missing.is_empty() {
            let n = self.row_reads.fetch_add(1, Ordering::Relaxed) + 1;
            let read = db.get_many(&missing)?;
            debug!(
                ids = missing.len(),
                found = read.len(),
                reads = n,
                "find cache: rows read from the database"
            );
            {
                let mut held = self.held.lock().unwrap();
                if held.generation == generation {
                    if held.rows.len() + read.len() > ROWS_MAX {
                        held.rows.clear();
                    }
                    for o in &read {
                        held.rows.insert(o.id, o.clone());
                    }
                }
            }
            out.extend(read);
            out.sort_unstable_by_key(|o| o.id);
        }
        Ok(out)
    }

    /// The path components of each folder of `ids` (in order), held ones from the cache, the
    /// others in one read from `db` (then held).
    pub(crate) fn paths_of<R: Read + ?Sized>(
        &self,
        db: &R,
        ids: &[u32],
    ) -> Result<Vec<Components>> {
        let (mut out, missing, generation) = {
            let held = self.held.lock().unwrap();
            let out: Vec<Option<Components>> =
                ids.iter().map(|id| held.paths.get(id).cloned()).collect();
            let missing: Vec<u32> = ids
                .iter()
                .zip(&out)
                .filter(|(_, p)| p.is_none())
                .map(|(id, _)| *id)
                .collect();
            (out, missing, held.generation)
        };
        if !missing.is_empty() {
            let n = self.path_reads.fetch_add(1, Ordering::Relaxed) + 1;
            let read: Vec<Components> = db
                .paths_of(&missing)?
                .into_iter()
                .map(Arc::new)
                .collect();
            debug!(
                ids = missing.len(),
                reads = n,
                "find cache: paths read from the database"
            );
            let mut held = self.held.lock().unwrap();
            let fill = held.generation == generation;
            if fill && held.paths.len() + read.len() > PATHS_MAX {
                held.paths.clear();
            }
            let mut read = missing.iter().zip(read);
            for slot in out.iter_mut().filter(|p| p.is_none()) {
                let (id, path) = read.next().expect("one path per folder asked");
                if fill {
                    held.paths.insert(*id, path.clone());
                }
                *slot = Some(path);
            }
        }
        Ok(out
            .into_iter()
            .map(|p| p.expect("every slot filled"))
            .collect())
    }

    /// IDs changed (by any server), with their rows as read after the change (absent: gone).
    /// A held row is replaced or dropped; the paths are cleared when a changed ID is a folder
    /// now, was one when held, is gone, is not held (it may have been a folder), or is a
    /// folder whose path is held. A file has no children, so a held file's ID is in no path.
    pub(crate) fn changed(&self, ids: &[u32], rows: &HashMap<u32, Object>) {
        if ids.is_empty() {
            return;
        }
        let mut held = self.held.lock().unwrap();
        held.generation += 1;
        let mut folders_changed = false;
        for id in ids {
            let before = held.rows.remove(id);
            let now = rows.get(id);
            folders_changed |= match (&before, now) {
                (Some(b), Some(n)) => b.kind == Kind::Dir || n.kind == Kind::Dir,
                _ => true,
            } || held.paths.contains_key(id);
            if let (Some(_), Some(n)) = (before, now) {
                held.rows.insert(*id, n.clone());
            }
        }
        if folders_changed {
            held.paths.clear();
        }
    }

    /// Drop everything: a change not known row by row (the name index loaded again, or this
    /// server's commit not caught up).
    pub(crate) fn clear(&self) {
        let mut held = self.held.lock().unwrap();
        held.generation += 1;
        held.rows.clear();
        held.paths.clear();
    }

    /// Row reads and path reads sent for find's misses since start.
    #[cfg(test)]
    pub(crate) fn reads(&self) -> (u64, u64) {
        (
            self.row_reads.load(Ordering::Relaxed),
            self.path_reads.load(Ordering::Relaxed),
        )
    }
}
