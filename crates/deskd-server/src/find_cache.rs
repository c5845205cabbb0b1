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
use std::time::{Duration, Instant};

use deskd_db::{Kind, Object, Read, Result};
use tracing::debug;

/// Rows held at most, and their bytes (names up to 255 bytes: the count alone bounds them to
/// about 25 MiB); past either the rows are dropped wholesale (simple, and a find refills what
/// it needs).
const ROWS_MAX: usize = 65_536;
const ROWS_BYTES: usize = 16 << 20;

/// Folder paths held at most, and their bytes (a path may be 4 KiB: a local user making deep
/// folders must not grow the server by the count alone); likewise.
const PATHS_MAX: usize = 16_384;
const PATHS_BYTES: usize = 8 << 20;

/// What a held row costs, roughly (the map's own overhead counted once in the struct's size).
fn row_bytes(o: &Object) -> usize {
    std::mem::size_of::<Object>() + 16 + o.name.len()
}

/// What a held path costs, roughly.
fn path_bytes(p: &[Vec<u8>]) -> usize {
    48 + p.iter().map(|c| 24 + c.len()).sum::<usize>()
}

/// The cache is used only while a catch-up began within this long: a server cut off from the
/// database's change log (its follower failing, a network partition from a database the other
/// servers still write to) must not answer from rows it can no longer keep right. Three times the
/// follower's poll, so a loaded machine does not turn it off.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(3);

/// A folder's path components, as [`Read::paths_of`] gives them.
pub(crate) type Components = Arc<Vec<Vec<u8>>>;

#[derive(Default)]
struct Held {
    /// Bumped by every change and clear: a fill read before it is refused.
    generation: u64,
    rows: HashMap<u32, Object>,
    /// [`row_bytes`] of `rows`.
    rows_bytes: usize,
    paths: HashMap<u32, Components>,
    /// [`path_bytes`] of `paths`.
    paths_bytes: usize,
    /// When the last successful catch-up began (its change log read after it): held rows
    /// miss no change committed before it.
    caught_up: Option<Instant>,
}

impl Held {
    /// Whether the held rows may be answered: caught up lately. When not, they are dropped.
    fn usable(&mut self) -> bool {
        if self.caught_up.is_some_and(|t| t.elapsed() <= FRESH_FOR) {
            return true;
        }
        if !self.rows.is_empty() || !self.paths.is_empty() {
            self.generation += 1;
            self.rows.clear();
            self.rows_bytes = 0;
            self.clear_paths();
        }
        false
    }

    fn hold_row(&mut self, o: &Object) {
        if self.rows.len() >= ROWS_MAX || self.rows_bytes + row_bytes(o) > ROWS_BYTES {
            self.rows.clear();
            self.rows_bytes = 0;
        }
        self.rows_bytes += row_bytes(o);
        if let Some(old) = self.rows.insert(o.id, o.clone()) {
            self.rows_bytes -= row_bytes(&old);
        }
    }

    fn drop_row(&mut self, id: u32) -> Option<Object> {
        let old = self.rows.remove(&id)?;
        self.rows_bytes -= row_bytes(&old);
        Some(old)
    }

    fn hold_path(&mut self, id: u32, p: &Components) {
        if self.paths.len() >= PATHS_MAX || self.paths_bytes + path_bytes(p) > PATHS_BYTES {
            self.clear_paths();
        }
        self.paths_bytes += path_bytes(p);
        if let Some(old) = self.paths.insert(id, p.clone()) {
            self.paths_bytes -= path_bytes(&old);
        }
    }

    fn clear_paths(&mut self) {
        self.paths.clear();
        self.paths_bytes = 0;
    }
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
            let mut held = self.held.lock().unwrap();
            if !held.usable() {
                return db.get_many(ids);
            }
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
            self.fill_rows(generation, &read);
            out.extend(read);
            out.sort_unstable_by_key(|o| o.id);
        }
        Ok(out)
    }

    /// Hold `rows`, read after `generation` was current; not if a change came since (they
    /// may be older than it).
    fn fill_rows(&self, generation: u64, rows: &[Object]) {
        let mut held = self.held.lock().unwrap();
        if held.generation == generation {
            for o in rows {
                held.hold_row(o);
            }
        }
    }

    /// The path components of each folder of `ids` (in order), held ones from the cache, the
    /// others in one read from `db` (then held).
    pub(crate) fn paths_of<R: Read + ?Sized>(
        &self,
        db: &R,
        ids: &[u32],
    ) -> Result<Vec<Components>> {
        let (mut out, missing, generation) = {
            let mut held = self.held.lock().unwrap();
            if !held.usable() {
                return Ok(db.paths_of(ids)?.into_iter().map(Arc::new).collect());
            }
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
            let read: Vec<Components> = db.paths_of(&missing)?.into_iter().map(Arc::new).collect();
            debug!(
                ids = missing.len(),
                reads = n,
                "find cache: paths read from the database"
            );
            let mut held = self.held.lock().unwrap();
            let fill = held.generation == generation;
            let mut read = missing.iter().zip(read);
            for slot in out.iter_mut().filter(|p| p.is_none()) {
                let (id, path) = read.next().expect("one path per folder asked");
                if fill {
                    held.hold_path(*id, &path);
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
            let before = held.drop_row(*id);
            let now = rows.get(id);
            folders_changed |= match (&before, now) {
                (Some(b), Some(n)) => b.kind == Kind::Dir || n.kind == Kind::Dir,
                _ => true,
            } || held.paths.contains_key(id);
            if let (Some(_), Some(n)) = (before, now) {
                held.hold_row(n);
            }
        }
        if folders_changed {
            held.clear_paths();
        }
    }

    /// A catch-up that began at `began` succeeded: every change committed before it is in
    /// the cache, which may be used until [`FRESH_FOR`] after it.
    pub(crate) fn caught_up(&self, began: Instant) {
        let mut held = self.held.lock().unwrap();
        if held.caught_up.is_none_or(|t| t < began) {
            held.caught_up = Some(began);
        }
    }

    /// Drop everything: a change not known row by row (the name index loaded again, or this
    /// server's commit not caught up).
    pub(crate) fn clear(&self) {
        let mut held = self.held.lock().unwrap();
        held.generation += 1;
        held.rows.clear();
        held.rows_bytes = 0;
        held.clear_paths();
    }

    /// Row reads and path reads sent for find's misses since start (tests).
    #[cfg(test)]
    pub(crate) fn reads(&self) -> (u64, u64) {
        (
            self.row_reads.load(Ordering::Relaxed),
            self.path_reads.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deskd_db::{Desktop, Durability, NewObject, ROOT_ID};

    fn new(parent: u32, name: &[u8], kind: Kind) -> NewObject {
        NewObject {
            parent,
            name: name.to_vec(),
            kind,
            dev: 1,
            ino: u64::from(name[0]),
            type_code: *b"UNIX",
            creator: *b"UNKN",
            flags: 0,
            ctime: 0,
            hint: None,
        }
    }

    fn add(desk: &mut Desktop, o: NewObject) -> u32 {
        let mut b = desk.batch().unwrap();
        let (o, _) = b.add(&o).unwrap();
        b.commit().unwrap();
        o.id
    }

    /// What catch-up does after a commit: the changed IDs' rows read again.
    fn catch_up(cache: &FindCache, desk: &Desktop, ids: &[u32]) {
        let rows = desk
            .get_many(ids)
            .unwrap()
            .into_iter()
            .map(|o| (o.id, o))
            .collect();
        cache.changed(ids, &rows);
    }

    #[test]
    fn repeated_reads_hit_and_changes_replace_or_drop_what_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let (mut desk, _) =
            Desktop::open(&dir.path().join(".Desktop"), Durability::Normal).unwrap();
        let folder = add(&mut desk, new(ROOT_ID, b"docs", Kind::Dir));
        let a = add(&mut desk, new(folder, b"alpha", Kind::File));
        let b = add(&mut desk, new(folder, b"beta", Kind::File));
        let cache = FindCache::default();
        cache.caught_up(Instant::now());

        let rows = cache.get_many(&desk, &[b, a, 999]).unwrap();
        assert_eq!(rows.iter().map(|o| o.id).collect::<Vec<_>>(), vec![a, b]);
        let paths = cache.paths_of(&desk, &[folder]).unwrap();
        assert_eq!(*paths[0], vec![b"docs".to_vec()]);
        assert_eq!(cache.reads(), (1, 1));
        // Again, and a part: no read (999, never found, is asked again: not held as gone).
        assert_eq!(cache.get_many(&desk, &[a, b]).unwrap(), rows);
        assert_eq!(cache.paths_of(&desk, &[folder]).unwrap(), paths);
        assert_eq!(cache.reads(), (1, 1));

        // A file renamed (held as a file): its row replaced, the paths kept.
        {
            let mut batch = desk.batch().unwrap();
            batch.rename(a, folder, b"gamma", false).unwrap();
            batch.commit().unwrap();
        }
        catch_up(&cache, &desk, &[a]);
        assert_eq!(cache.get_many(&desk, &[a]).unwrap()[0].name, b"gamma");
        cache.paths_of(&desk, &[folder]).unwrap();
        assert_eq!(cache.reads(), (1, 1));

        // The folder renamed: its path read again.
        {
            let mut batch = desk.batch().unwrap();
            batch.rename(folder, ROOT_ID, b"papers", false).unwrap();
            batch.commit().unwrap();
        }
        catch_up(&cache, &desk, &[folder]);
        assert_eq!(
            *cache.paths_of(&desk, &[folder]).unwrap()[0],
            vec![b"papers".to_vec()]
        );
        assert_eq!(cache.reads(), (1, 2));

        // A file deleted: gone from the cache (read, not found), and the paths dropped (a
        // changed ID not known to be a file may have been a folder).
        {
            let mut batch = desk.batch().unwrap();
            batch.delete(b, false).unwrap();
            batch.commit().unwrap();
        }
        catch_up(&cache, &desk, &[b]);
        assert!(cache.get_many(&desk, &[b]).unwrap().is_empty());
        cache.paths_of(&desk, &[folder]).unwrap();
        assert_eq!(cache.reads(), (2, 3));
    }

    #[test]
    fn a_fill_read_before_a_change_is_not_held() {
        let dir = tempfile::tempdir().unwrap();
        let (mut desk, _) =
            Desktop::open(&dir.path().join(".Desktop"), Durability::Normal).unwrap();
        let a = add(&mut desk, new(ROOT_ID, b"alpha", Kind::File));
        let cache = FindCache::default();
        cache.caught_up(Instant::now());
        // A find read `a` (old) under generation 0; a catch-up ran before its fill.
        let generation = cache.held.lock().unwrap().generation;
        let old = desk.get_many(&[a]).unwrap();
        {
            let mut batch = desk.batch().unwrap();
            batch.rename(a, ROOT_ID, b"omega", false).unwrap();
            batch.commit().unwrap();
        }
        catch_up(&cache, &desk, &[a]);
        // The fill as get_many makes it: refused.
        cache.fill_rows(generation, &old);
        assert_eq!(cache.get_many(&desk, &[a]).unwrap()[0].name, b"omega");
    }

    #[test]
    fn rows_are_not_answered_when_no_catch_up_began_lately() {
        let dir = tempfile::tempdir().unwrap();
        let (mut desk, _) =
            Desktop::open(&dir.path().join(".Desktop"), Durability::Normal).unwrap();
        let a = add(&mut desk, new(ROOT_ID, b"alpha", Kind::File));
        let cache = FindCache::default();
        // Never caught up: every call reads, nothing is held.
        cache.get_many(&desk, &[a]).unwrap();
        cache.get_many(&desk, &[a]).unwrap();
        assert_eq!(cache.reads(), (0, 0));
        assert!(cache.held.lock().unwrap().rows.is_empty());
        // Caught up long ago (the follower cut off): the held rows are dropped, not answered.
        cache.caught_up(Instant::now());
        cache.get_many(&desk, &[a]).unwrap();
        assert_eq!(cache.reads(), (1, 0));
        cache.held.lock().unwrap().caught_up = Some(Instant::now() - FRESH_FOR * 2);
        cache.get_many(&desk, &[a]).unwrap();
        assert!(cache.held.lock().unwrap().rows.is_empty());
    }

    #[test]
    fn rows_and_paths_are_bounded_in_count_and_bytes() {
        let mut held = Held::default();
        let mut o = deskd_db::Object {
            id: 0,
            parent: ROOT_ID,
            name: vec![b'x'; 255],
            kind: Kind::File,
            dev: 0,
            ino: 0,
            type_code: *b"UNIX",
            creator: *b"UNKN",
            flags: 0,
            ctime: 0,
        };
        for id in 0..200_000 {
            o.id = id;
            held.hold_row(&o);
            assert!(held.rows.len() <= ROWS_MAX && held.rows_bytes <= ROWS_BYTES);
        }
        let deep: Components = Arc::new(vec![vec![b'y'; 255]; 16]);
        for id in 0..20_000 {
            held.hold_path(id, &deep);
            assert!(held.paths.len() <= PATHS_MAX && held.paths_bytes <= PATHS_BYTES);
        }
    }
}
