//! Where a directory file handle is: a bounded cache of handle bytes → absolute path, kept
//! right by the events themselves (a directory created, renamed, moved or deleted updates the
//! entries at and under it), filled at start with the volume's directories and, for handles it
//! does not know, by `open_by_handle_at(O_PATH)` and the `/proc/self/fd` link.
//!
//! Directories outside the volume are cached too (with their absolute path): a filesystem mark
//! sees the whole file system, and after the first lookup an event outside costs one hash
//! lookup. Keeping the absolute path (not just "outside") lets a directory moved into the
//! volume from outside, and everything cached under it, become "inside" by the same prefix
//! rewrite as any other move.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::records::Handle;
use super::sys;

/// How many directories the cache holds before it forgets the least recently used eighth.
pub(crate) const DEFAULT_CAPACITY: usize = 262_144;

struct Entry {
    abs: PathBuf,
    used: u64,
}

/// Handle bytes (as in the event: `handle_bytes`, `handle_type`, `f_handle`) → absolute path.
pub(crate) struct HandleCache {
    entries: HashMap<Box<[u8]>, Entry>,
    capacity: usize,
    clock: u64,
    evicted: bool,
    /// Lookups the kernel answered (for the figures in docs/PERFORMANCE.md and the tests).
    pub(crate) kernel_lookups: u64,
}

impl HandleCache {
    pub(crate) fn new(capacity: usize) -> Self {
        HandleCache {
            entries: HashMap::new(),
            capacity: capacity.max(16),
            clock: 0,
            evicted: false,
            kernel_lookups: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// How many directories a walk may cache, leaving room for the ones made later.
    pub(crate) fn walk_limit(&self) -> usize {
        self.capacity / 4 * 3
    }

    /// Whether entries were forgotten since the last `clear`.
    pub(crate) fn evicted(&self) -> bool {
        self.evicted
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.evicted = false;
    }

    /// The cached path of a handle.
    pub(crate) fn get(&mut self, handle: Handle<'_>) -> Option<&Path> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(handle.0).map(|e| {
            e.used = clock;
            e.abs.as_path()
        })
    }

    /// Where a handle is: the cache, else the kernel (then cached). `None`: it cannot be
    /// opened any more (deleted) or its path is not a plain one.
    pub(crate) fn place(&mut self, mount: BorrowedFd<'_>, handle: Handle<'_>) -> Option<PathBuf> {
        if let Some(abs) = self.get(handle) {
            return Some(abs.to_path_buf());
        }
        self.kernel_lookups += 1;
        let abs = path_of_handle(mount, handle)?;
        self.insert(handle.0, abs.clone());
        Some(abs)
    }

    /// Whether a handle is cached (without counting as a use).
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        self.entries.contains_key(key)
    }

    pub(crate) fn insert(&mut self, key: &[u8], abs: PathBuf) {
        self.clock += 1;
        if let Some(e) = self.entries.get_mut(key) {
            e.abs = abs;
            e.used = self.clock;
            return;
        }
        if self.entries.len() >= self.capacity {
            self.evict();
        }
        self.entries.insert(
            key.into(),
            Entry {
                abs,
                used: self.clock,
            },
        );
    }

    pub(crate) fn remove(&mut self, key: &[u8]) {
        self.entries.remove(key);
    }

    /// A directory moved from `from` to `to`: every entry at or under `from` follows it.
    pub(crate) fn rename_prefix(&mut self, from: &Path, to: &Path) {
        for e in self.entries.values_mut() {
            if let Ok(rest) = e.abs.strip_prefix(from) {
                e.abs = if rest.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rest)
                };
            }
        }
    }

    /// A directory was deleted: drop the entries at and under it.
    pub(crate) fn remove_under(&mut self, dir: &Path) {
        self.entries.retain(|_, e| !e.abs.starts_with(dir));
    }

    /// Forget the least recently used eighth (an O(n) selection, once per capacity/8 inserts).
    fn evict(&mut self) {
        let mut stamps: Vec<u64> = self.entries.values().map(|e| e.used).collect();
        let cut = stamps.len() / 8;
        if cut == 0 {
            return;
        }
        let (_, &mut threshold, _) = stamps.select_nth_unstable(cut);
        self.entries.retain(|_, e| e.used > threshold);
        self.evicted = true;
    }
}

/// Opens a handle with `O_PATH` and reads where it is. Needs CAP_DAC_READ_SEARCH.
fn path_of_handle(mount: BorrowedFd<'_>, handle: Handle<'_>) -> Option<PathBuf> {
    let fd = match sys::open_handle(mount, handle) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::trace!("watch: open_by_handle_at: {e}");
            return None;
        }
    };
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    // An unlinked directory still open somewhere reads as "PATH (deleted)": not a place.
    if link.as_os_str().as_bytes().ends_with(b" (deleted)") || !link.is_absolute() {
        return None;
    }
    Some(link)
}

/// `abs` relative to `root` (the root itself is "."), or `None` when it lies outside.
/// A prefix check on components, so `/srv/vol2` is not inside `/srv/vol`.
pub(crate) fn relative_to(root: &Path, abs: &Path) -> Option<PathBuf> {
    let rest = abs.strip_prefix(root).ok()?;
    if rest.as_os_str().is_empty() {
        return Some(PathBuf::from("."));
    }
    rest.components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
        .then(|| rest.to_path_buf())
}

/// Where a path relative to `root` is ("." is the root itself).
pub(crate) fn absolute(root: &Path, rel: &Path) -> PathBuf {
    if rel == Path::new(".") {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

/// The directory holding a relative `path` ("." for a name in the root).
pub(crate) fn parent_rel(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `dir` joined with one name; the root "." stays out of the result.
pub(crate) fn join_rel(dir: &Path, name: &OsStr) -> PathBuf {
    if dir == Path::new(".") {
        PathBuf::from(name)
    } else {
        dir.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_is_a_component_prefix() {
        let root = Path::new("/srv/vol");
        assert_eq!(relative_to(root, Path::new("/srv/vol")), Some(".".into()));
        assert_eq!(
            relative_to(root, Path::new("/srv/vol/a/b")),
            Some("a/b".into())
        );
        assert_eq!(relative_to(root, Path::new("/srv/vol2/a")), None);
        assert_eq!(relative_to(root, Path::new("/srv")), None);
    }

    #[test]
    fn renames_move_the_entries_under_a_directory() {
        let mut cache = HandleCache::new(100);
        cache.insert(b"a", "/v/a".into());
        cache.insert(b"b", "/v/a/b".into());
        cache.insert(b"c", "/v/ab".into());
        cache.rename_prefix(Path::new("/v/a"), Path::new("/w/x"));
        assert_eq!(cache.get(Handle(b"a")), Some(Path::new("/w/x")));
        assert_eq!(cache.get(Handle(b"b")), Some(Path::new("/w/x/b")));
        assert_eq!(cache.get(Handle(b"c")), Some(Path::new("/v/ab")));
        cache.remove_under(Path::new("/w/x"));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn the_cache_stays_bounded_and_keeps_recent_entries() {
        let mut cache = HandleCache::new(64);
        for i in 0..1000u32 {
            cache.insert(&i.to_ne_bytes(), format!("/d{i}").into());
            assert!(cache.get(Handle(&0u32.to_ne_bytes())).is_some(), "{i}");
        }
        assert!(cache.len() <= 64);
    }
}
