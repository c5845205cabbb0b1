//! The rows and folder paths read from PostgreSQL, kept per volume (issue 28): `resolve`
//! answers a held row whose folder's path is held from memory (no round trip, the target
//! of stop 41), and a repeated or overlapping `find` confirms its hits and joins their paths
//! without a round trip. SQLite volumes have none (their reads are in-process).
//!
//! **Kept right.** Every change to the volume reaches the cache through
//! [`crate::pg_volume::PgVolume::catch_up`], which reads the change log and the changed rows
//! again: every row read is held (new objects, made by this server or another, resolve from
//! memory) and a gone one dropped; the path cache is cleared when a changed ID is, or was, or
//! may have been, a folder. This server's writer catches up after each commit and before it
//! answers (and clears the whole cache when it cannot), so a read after an acknowledged write
//! through the same server sees it; another server's write is seen within the follower's lag
//! (ARCHITECTURE.md, "Following the other servers"; at most [`FRESH_FOR`], after which
//! nothing is answered from memory).
//!
//! **Checked against the disk.** A resolve answered from memory first `lstat`s the object's
//! path and compares its inode with the row's: a file moved behind deskd's back (or by
//! another server whose change the follower has not read yet) is read from the database.
//!
//! **Races.** A reader reads its misses outside the lock; a catch-up between its read and its
//! fill may have changed those rows, and a fill would put the older row back. Every change
//! bumps a generation, and a fill made under another generation than the one read before the
//! read is dropped (the rows are still answered: they were read after the request began).
//!
//! **Bounded.** Rows and paths are each held in two generations (current and previous, each
//! bounded in count and bytes): a hit in the previous moves the entry to the current, and
//! when the current is full the previous is dropped and the current becomes it. Recently
//! used entries stay; a local user making many long names or deep folders grows the server
//! by at most the bounds.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deskd_db::{Kind, Object, Read, Result, ROOT_ID};
use tracing::debug;

/// Rows held at most (both generations), and their bytes (names up to 255 bytes: the count
/// alone bounds them to about 45 MiB).
const ROWS_MAX: usize = 131_072;
const ROWS_BYTES: usize = 32 << 20;

/// Folder paths held at most (both generations), and their bytes (a path may be 4 KiB: a local
/// user making deep folders must not grow the server by the count alone).
const PATHS_MAX: usize = 16_384;
const PATHS_BYTES: usize = 8 << 20;

/// What a held row costs, roughly (the map's own overhead counted once in the struct's size).
fn row_bytes(o: &Object) -> usize {
    std::mem::size_of::<Object>() + 16 + o.name.len()
}

/// What a held path costs, roughly.
fn path_bytes(p: &Components) -> usize {
    48 + p.iter().map(|c| 24 + c.len()).sum::<usize>()
}

/// The cache is used only while a catch-up began within this long: a server cut off from the
/// database's change log (its follower failing, a network partition from a database the other
/// servers still write to) must not answer from rows it can no longer keep right. Three times the
/// follower's poll, so a loaded machine does not turn it off.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(3);

/// A resolve's answer: the row and its path components.
pub(crate) type Resolved = (Object, Vec<Vec<u8>>);

/// A folder's path components, as [`Read::paths_of`] gives them.
pub(crate) type Components = Arc<Vec<Vec<u8>>>;

/// A map by ID bounded in count and bytes, evicting by two generations: the entries used
/// since the current generation began stay at least one more.
struct TwoGen<V> {
    current: HashMap<u32, V>,
    current_bytes: usize,
    previous: HashMap<u32, V>,
    previous_bytes: usize,
    /// Per generation.
    max: usize,
    max_bytes: usize,
    cost: fn(&V) -> usize,
}

impl<V> TwoGen<V> {
    /// At most `max` entries and `max_bytes` (both generations together).
    fn new(max: usize, max_bytes: usize, cost: fn(&V) -> usize) -> TwoGen<V> {
        TwoGen {
            current: HashMap::new(),
            current_bytes: 0,
            previous: HashMap::new(),
            previous_bytes: 0,
            max: max / 2,
            max_bytes: max_bytes / 2,
            cost,
        }
    }

    /// The entry of `id`; one found in the previous generation moves to the current.
    fn get(&mut self, id: u32) -> Option<&V> {
        if !self.current.contains_key(&id) {
            let v = self.previous.remove(&id)?;
            self.previous_bytes -= (self.cost)(&v);
            self.insert(id, v);
        }
        self.current.get(&id)
    }

    fn contains(&self, id: u32) -> bool {
        self.current.contains_key(&id) || self.previous.contains_key(&id)
    }

    fn insert(&mut self, id: u32, v: V) {
        self.remove(id);
        let cost = (self.cost)(&v);
        if self.current.len() >= self.max || self.current_bytes + cost > self.max_bytes {
            // The previous generation goes; the current becomes it.
            self.previous = std::mem::take(&mut self.current);
            self.previous_bytes = std::mem::replace(&mut self.current_bytes, 0);
        }
        self.current_bytes += cost;
        self.current.insert(id, v);
    }

    fn remove(&mut self, id: u32) -> Option<V> {
        if let Some(v) = self.current.remove(&id) {
            self.current_bytes -= (self.cost)(&v);
            return Some(v);
        }
        let v = self.previous.remove(&id)?;
        self.previous_bytes -= (self.cost)(&v);
        Some(v)
    }

    fn clear(&mut self) {
        self.current.clear();
        self.previous.clear();
        self.current_bytes = 0;
        self.previous_bytes = 0;
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.current_bytes + self.previous_bytes
    }
}

struct Held {
    /// Bumped by every change and clear: a fill read before it is refused.
    generation: u64,
    rows: TwoGen<Object>,
    paths: TwoGen<Components>,
    /// When the last successful catch-up began (its change log read after it): held rows
    /// miss no change committed before it.
    caught_up: Option<Instant>,
}

impl Default for Held {
    fn default() -> Held {
        Held {
            generation: 0,
            rows: TwoGen::new(ROWS_MAX, ROWS_BYTES, row_bytes),
            paths: TwoGen::new(PATHS_MAX, PATHS_BYTES, path_bytes),
            caught_up: None,
        }
    }
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
            self.paths.clear();
        }
        false
    }

    fn hold_row(&mut self, o: &Object) {
        self.rows.insert(o.id, o.clone());
    }

    fn hold_path(&mut self, id: u32, p: &Components) {
        self.paths.insert(id, p.clone());
    }

    /// The held row of `id` and its path components, when its folder's path is held too
    /// (or its folder is the root).
    fn with_path(&mut self, id: u32) -> Option<(Object, Vec<Vec<u8>>)> {
        let o = self.rows.get(id)?.clone();
        let components = if o.id == ROOT_ID {
            Vec::new()
        } else if o.parent == ROOT_ID {
            vec![o.name.clone()]
        } else {
            let mut c = Vec::clone(self.paths.get(o.parent)?);
            c.push(o.name.clone());
            c
        };
        Some((o, components))
    }
}

/// Whether `components` below `root` is, on the disk now, the object of `o` (its inode, and
/// its device when the row has one). `lstat` of the whole path: the last name is not followed;
/// a symlinked folder on the way only decides between the held answer and the database's.
fn on_disk(root: &Path, components: &[Vec<u8>], o: &Object) -> bool {
    let mut path = root.as_os_str().as_bytes().to_vec();
    for c in components {
        path.push(b'/');
        path.extend_from_slice(c);
    }
    match rustix::fs::statat(
        rustix::fs::CWD,
        OsStr::from_bytes(&path),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => st.st_ino == o.ino && (o.dev == 0 || st.st_dev == o.dev),
        Err(_) => false,
    }
}

/// What the cache has done since start (`deskd status`, `deskd metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CacheFigures {
    /// Resolves answered from memory.
    pub(crate) hits: u64,
    /// Resolves read from the database (not held, or the disk check failed).
    pub(crate) misses: u64,
    /// Of the misses: a held row whose path on the disk is not its inode now.
    pub(crate) disk_mismatches: u64,
    /// Rows and folder paths held now.
    pub(crate) rows: u64,
    pub(crate) paths: u64,
}

/// One PostgreSQL volume's cache of rows and folder paths.
#[derive(Default)]
pub(crate) struct ReadCache {
    held: Mutex<Held>,
    /// Row reads (`get_many`) and path reads (`paths_of`) sent to the database for find's
    /// misses: what the tests count.
    row_reads: AtomicU64,
    path_reads: AtomicU64,
    /// Resolves answered from memory, read from the database, and of those the disk's refusals.
    hits: AtomicU64,
    misses: AtomicU64,
    disk_mismatches: AtomicU64,
}

impl ReadCache {
    /// A resolve: the row `id` and its path components, from memory when the row and its
    /// folder's path are held and the disk below `root` still has the row's inode there; else
    /// one [`Read::get_with_path`] (then the row and its folder's path held).
    #[cfg(test)]
    pub(crate) fn get_with_path<R: Read + ?Sized>(
        &self,
        db: &R,
        root: &Path,
        id: u32,
    ) -> Result<(Object, Vec<Vec<u8>>)> {
        let (held, generation) = self.held_with_path(id);
        if let Some((o, components)) = held {
            if self.on_disk(root, &o, &components) {
                return Ok((o, components));
            }
        }
        self.read_with_path(db, id, generation)
    }

    /// A resolve's first step: the held row of `id` and its path components, without the disk
    /// check (the caller makes it, [`ReadCache::on_disk`], once it knows the peer may see the
    /// answer: an unprivileged peer's resolve of a hidden object must not tell, by a round
    /// trip, whether the object is still where it was); and the generation a read of the
    /// database must be filled under (None: the cache is not usable now).
    pub(crate) fn held_with_path(&self, id: u32) -> (Option<Resolved>, Option<u64>) {
        let mut held = self.held.lock().unwrap();
        if !held.usable() {
            return (None, None);
        }
        (held.with_path(id), Some(held.generation))
    }

    /// Whether a held answer's path below `root` still has its inode on the disk: counted as
    /// a hit, or as a disk mismatch (then [`ReadCache::read_with_path`]). The check is made
    /// outside the lock: a syscall, and a slow disk must not hold others up.
    pub(crate) fn on_disk(&self, root: &Path, o: &Object, components: &[Vec<u8>]) -> bool {
        if on_disk(root, components, o) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.disk_mismatches.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// A held answer refused to an unprivileged peer that may not see it: answered from
    /// memory all the same (counted as a hit).
    pub(crate) fn hidden_hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// A resolve read from the database (a miss), then held if the cache was usable under
    /// `generation` and no change came since.
    pub(crate) fn read_with_path<R: Read + ?Sized>(
        &self,
        db: &R,
        id: u32,
        generation: Option<u64>,
    ) -> Result<(Object, Vec<Vec<u8>>)> {
        self.misses.fetch_add(1, Ordering::Relaxed);
        let (o, components) = db.get_with_path(id)?;
        if let Some(generation) = generation {
            self.fill_resolved(generation, &o, &components);
        }
        Ok((o, components))
    }

    /// Hold a resolve's row and its folder's path (`components` but the last), read after
    /// `generation` was current; not if a change came since (they may be older than it).
    fn fill_resolved(&self, generation: u64, o: &Object, components: &[Vec<u8>]) {
        let mut held = self.held.lock().unwrap();
        if held.generation != generation {
            return;
        }
        held.hold_row(o);
        if o.id != ROOT_ID && o.parent != ROOT_ID {
            if let Some((_, folder)) = components.split_last() {
                held.hold_path(o.parent, &Arc::new(folder.to_vec()));
            }
        }
    }

    /// The row `id`, from memory when held, else one [`Read::get`] (then held).
    pub(crate) fn get<R: Read + ?Sized>(&self, db: &R, id: u32) -> Result<Object> {
        let generation = {
            let mut held = self.held.lock().unwrap();
            if !held.usable() {
                return db.get(id);
            }
            if let Some(o) = held.rows.get(id) {
                return Ok(o.clone());
            }
            held.generation
        };
        let o = db.get(id)?;
        self.fill_rows(generation, std::slice::from_ref(&o));
        Ok(o)
    }

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
                match held.rows.get(*id) {
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
                ids.iter().map(|id| held.paths.get(*id).cloned()).collect();
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
    /// Every row read is held (replacing the held one); a gone one is dropped. The paths are
    /// cleared when a changed ID is a folder now, was one when held, is a folder whose path is
    /// held, or is gone and was not held (its kind unknown: it may have been a folder). A
    /// file's ID is in no path (a file has no children), so a new or changed file keeps them:
    /// an ID's kind changes only in an online rebuild's `overwrite` (the disk's kind over the
    /// desktop's), which moves or deletes the folder's children too (changes of folders,
    /// which clear), and a path through a folder become a file fails [`on_disk`] meanwhile.
    pub(crate) fn changed(&self, ids: &[u32], rows: &HashMap<u32, Object>) {
        if ids.is_empty() {
            return;
        }
        let mut held = self.held.lock().unwrap();
        held.generation += 1;
        let mut folders_changed = false;
        for id in ids {
            let before = held.rows.remove(*id);
            let now = rows.get(id);
            folders_changed |= match (&before, now) {
                (Some(b), Some(n)) => b.kind == Kind::Dir || n.kind == Kind::Dir,
                (None, Some(n)) => n.kind == Kind::Dir,
                (Some(b), None) => b.kind == Kind::Dir,
                (None, None) => true,
            } || held.paths.contains(*id);
            if let Some(n) = now {
                held.hold_row(n);
            }
        }
        if folders_changed {
            held.paths.clear();
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
        held.paths.clear();
    }

    /// What the cache has done since start, and holds now.
    pub(crate) fn figures(&self) -> CacheFigures {
        let (rows, paths) = {
            let held = self.held.lock().unwrap();
            (held.rows.len() as u64, held.paths.len() as u64)
        };
        CacheFigures {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            disk_mismatches: self.disk_mismatches.load(Ordering::Relaxed),
            rows,
            paths,
        }
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

    /// A new SQLite desktop in a temporary folder, and that folder's canonical path (the
    /// volume root of the disk checks).
    fn desktop() -> (tempfile::TempDir, std::path::PathBuf, Desktop) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let (desk, _) = Desktop::open(&root.join(".Desktop"), Durability::Normal).unwrap();
        (dir, root, desk)
    }

    /// A cache that has just caught up (usable).
    fn caught_up() -> ReadCache {
        let cache = ReadCache::default();
        cache.caught_up(Instant::now());
        cache
    }

    /// What catch-up does after a commit: the changed IDs' rows read again.
    fn catch_up(cache: &ReadCache, desk: &Desktop, ids: &[u32]) {
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
        let (_dir, _, mut desk) = desktop();
        let folder = add(&mut desk, new(ROOT_ID, b"docs", Kind::Dir));
        let a = add(&mut desk, new(folder, b"alpha", Kind::File));
        let b = add(&mut desk, new(folder, b"beta", Kind::File));
        let cache = caught_up();

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

        // A file deleted: gone from the cache (read, not found); the paths kept (it was held
        // as a file: in no path).
        {
            let mut batch = desk.batch().unwrap();
            batch.delete(b, false).unwrap();
            batch.commit().unwrap();
        }
        catch_up(&cache, &desk, &[b]);
        assert!(cache.get_many(&desk, &[b]).unwrap().is_empty());
        cache.paths_of(&desk, &[folder]).unwrap();
        assert_eq!(cache.reads(), (2, 2));
    }

    #[test]
    fn a_fill_read_before_a_change_is_not_held() {
        let (_dir, _, mut desk) = desktop();
        let a = add(&mut desk, new(ROOT_ID, b"alpha", Kind::File));
        let cache = caught_up();
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
        let (_dir, _, mut desk) = desktop();
        let a = add(&mut desk, new(ROOT_ID, b"alpha", Kind::File));
        let cache = ReadCache::default();
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
        let mut o = object(0, ROOT_ID, &[b'x'; 255], Kind::File);
        for id in 0..400_000 {
            o.id = id;
            held.hold_row(&o);
            assert!(held.rows.len() <= ROWS_MAX && held.rows.bytes() <= ROWS_BYTES);
        }
        // Full: the newest are held.
        assert!(held.rows.len() > ROWS_MAX / 4);
        assert!(held.rows.get(399_999).is_some());
        let deep: Components = Arc::new(vec![vec![b'y'; 255]; 16]);
        for id in 0..40_000 {
            held.hold_path(id, &deep);
            assert!(held.paths.len() <= PATHS_MAX && held.paths.bytes() <= PATHS_BYTES);
        }
    }

    #[test]
    fn eviction_keeps_what_was_used_lately() {
        let mut map: TwoGen<u32> = TwoGen::new(8, usize::MAX, |_| 1);
        for id in 0..4 {
            map.insert(id, id);
        }
        // 0..4 is the current generation; full: it becomes the previous one.
        for id in 4..8 {
            map.insert(id, id);
        }
        assert_eq!(map.len(), 8);
        // A hit in the previous generation moves 1 to the current (4, 5, 6, 7, 1: full again).
        assert_eq!(map.get(1), Some(&1));
        // The next insert drops the previous generation (0, 2, 3), not 1.
        map.insert(8, 8);
        assert!(map.contains(1) && map.contains(8) && map.contains(7));
        assert!(!map.contains(0) && !map.contains(2) && !map.contains(3));
        assert!(map.len() <= 8);
        assert_eq!(map.remove(1), Some(1));
        assert!(!map.contains(1));
    }

    fn object(id: u32, parent: u32, name: &[u8], kind: Kind) -> Object {
        Object {
            id,
            parent,
            name: name.to_vec(),
            kind,
            dev: 0,
            ino: 0,
            type_code: *b"UNIX",
            creator: *b"UNKN",
            flags: 0,
            ctime: 0,
        }
    }

    #[test]
    fn new_files_keep_the_paths_and_folder_changes_clear_them() {
        let cache = caught_up();
        let folder_path: Components = Arc::new(vec![b"docs".to_vec()]);
        let paths_held = |cache: &ReadCache| cache.held.lock().unwrap().paths.len();
        cache.held.lock().unwrap().hold_path(30, &folder_path);
        let changed = |cache: &ReadCache, o: Option<Object>, id: u32| {
            let rows: HashMap<u32, Object> = o.into_iter().map(|o| (o.id, o)).collect();
            cache.changed(&[id], &rows);
        };
        // A new file (made here or by another server): held, the paths kept.
        changed(&cache, Some(object(40, 30, b"new", Kind::File)), 40);
        assert_eq!(paths_held(&cache), 1);
        assert_eq!(
            cache.held.lock().unwrap().with_path(40).unwrap().1,
            vec![b"docs".to_vec(), b"new".to_vec()]
        );
        // That file renamed, then deleted (held as a file): the paths kept.
        changed(&cache, Some(object(40, 30, b"renamed", Kind::File)), 40);
        changed(&cache, None, 40);
        assert_eq!(paths_held(&cache), 1);
        assert!(cache.held.lock().unwrap().rows.get(40).is_none());
        // An ID gone that was not held: its kind unknown, the paths cleared.
        changed(&cache, None, 41);
        assert_eq!(paths_held(&cache), 0);
        // A new folder: cleared (it may be a renamed one's new self in another batch).
        cache.held.lock().unwrap().hold_path(30, &folder_path);
        changed(&cache, Some(object(42, 30, b"sub", Kind::Dir)), 42);
        assert_eq!(paths_held(&cache), 0);
        // A folder whose path is held, changed: cleared.
        cache.held.lock().unwrap().hold_path(30, &folder_path);
        changed(&cache, Some(object(30, ROOT_ID, b"papers", Kind::Dir)), 30);
        assert_eq!(paths_held(&cache), 0);
    }

    #[test]
    fn a_resolve_hits_only_when_the_disk_agrees() {
        let (_dir, root, mut desk) = desktop();
        std::fs::create_dir(root.join("docs")).unwrap();
        std::fs::write(root.join("docs/alpha"), b"a").unwrap();
        let ino = |p: &str| {
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(root.join(p)).unwrap())
        };
        let mut folder = new(ROOT_ID, b"docs", Kind::Dir);
        folder.ino = ino("docs");
        let folder = add(&mut desk, folder);
        let mut file = new(folder, b"alpha", Kind::File);
        file.ino = ino("docs/alpha");
        file.dev = 0;
        let a = add(&mut desk, file);
        let cache = caught_up();

        let (o, path) = cache.get_with_path(&desk, &root, a).unwrap();
        assert_eq!(path, vec![b"docs".to_vec(), b"alpha".to_vec()]);
        assert_eq!(
            cache.get_with_path(&desk, &root, a).unwrap(),
            (o.clone(), path.clone())
        );
        let f = cache.figures();
        assert_eq!(
            (f.hits, f.misses, f.disk_mismatches, f.rows, f.paths),
            (1, 1, 0, 1, 1)
        );

        // Moved behind deskd's back (no catch-up: nothing told the cache): the disk check
        // refuses the held answer and the database's is given (and held again).
        std::fs::rename(root.join("docs/alpha"), root.join("docs/other")).unwrap();
        assert_eq!(cache.get_with_path(&desk, &root, a).unwrap(), (o, path));
        let f = cache.figures();
        assert_eq!((f.hits, f.misses, f.disk_mismatches), (1, 2, 1));
        // Another file put at the held path: not its inode either.
        std::fs::write(root.join("docs/alpha"), b"b").unwrap();
        cache.get_with_path(&desk, &root, a).unwrap();
        assert_eq!(cache.figures().disk_mismatches, 2);
    }

    #[test]
    fn a_resolve_fill_read_before_a_change_is_not_held() {
        let (_dir, _, mut desk) = desktop();
        let folder = add(&mut desk, new(ROOT_ID, b"docs", Kind::Dir));
        let a = add(&mut desk, new(folder, b"alpha", Kind::File));
        let cache = caught_up();
        // A resolve read `a` under this generation; a catch-up ran before its fill.
        let generation = cache.held.lock().unwrap().generation;
        let (o, components) = desk.get_with_path(a).unwrap();
        cache.changed(&[folder], &HashMap::new());
        cache.fill_resolved(generation, &o, &components);
        let f = cache.figures();
        assert_eq!((f.rows, f.paths), (0, 0));
        // Under the current generation: held.
        let generation = cache.held.lock().unwrap().generation;
        cache.fill_resolved(generation, &o, &components);
        let f = cache.figures();
        assert_eq!((f.rows, f.paths), (1, 1));
    }
}
