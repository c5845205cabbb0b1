//! Coalescing within one batch, so a temporary file never gets an ID:
//!
//! - `Created(p)` … `Removed(p)` gives `Removed(p)` (where the removal was);
//! - `Created(p)` … `Moved(p → q)` gives `Moved(p → q)` (where the move was), and for a
//!   directory `Created(q)` after it, which registers what was made in it;
//!
//! The create goes, the removal or move stays: a client (`dt`, afpd) may have registered `p`
//! between the two, and only the removal or move takes that record away or along. For a name
//! no one registered the server finds no record at `p`: the removal costs one lookup, the move
//! is the create of `q` (`apply::watched::moved` in deskd-server).
//!
//! - a second `Created(p)` while the first stands is dropped (inotify's scan of a new
//!   directory and the events for what is made in it can both report a name);
//! - a `Created` below a directory created in this batch (and not moved or removed since) is
//!   dropped: the server registers the whole subtree of a created directory from the disk, so
//!   a `cp -a` or `mkdir -p` of a tree is one change;
//! - the `Removed` entries directly before a `Removed` of their directory are dropped: the
//!   server removes a directory's records with everything below it, so an `rm -r` is one change.
//!
//! Only a `Created` that nothing has touched since is folded: a change at or under a created
//! directory, or a move or delete of one of its ancestors, makes it stand as it is, so the
//! order the server sees is always one that happened. Everything is O(1) per change except a
//! directory move or delete, which looks at the `Created` entries still foldable. A path's
//! ancestors are looked up in the maps only when their key (hashed for all of them in one pass
//! over the path) was stored in this batch, so a change `depth` folders down costs O(length of
//! its path), not O(depth × length): a deep chain of folders cannot stall the watcher.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::Change;

#[derive(Default)]
pub(crate) struct Coalescer {
    changes: Vec<Option<Change>>,
    /// Live `Created` entries that may still be folded: path → index in `changes`.
    foldable: HashMap<PathBuf, usize>,
    /// Directories created in this batch, not moved or removed since: what is created below
    /// them is part of their subtree.
    new_dirs: HashSet<PathBuf>,
    /// The directories of the `Rescan` entries in `changes` (one each).
    rescans: HashSet<PathBuf>,
    /// The [`Coalescer::keys`] of every path put in `foldable` or `new_dirs` in this batch
    /// (kept until the batch ends: a stale key only costs a lookup). An ancestor whose key is
    /// not here is in neither map, and is not looked up.
    stored: HashSet<u64>,
    hasher: RandomState,
    /// Ancestors looked up in `foldable` or `new_dirs` (for the deep-chain test).
    #[cfg(test)]
    ancestor_lookups: std::cell::Cell<u64>,
}

impl Coalescer {
    pub(crate) fn push(&mut self, change: Change) {
        match change {
            Change::Created { path, dir } => {
                if self.under_new_dir(&path) {
                    return;
                }
                self.touch_ancestors(&path);
                if self.foldable.contains_key(&path) {
                    return;
                }
                self.store_created(path, dir);
            }
            Change::Removed { path, dir } => {
                self.touch_ancestors(&path);
                self.forget_new_dirs(&path);
                if let Some(i) = self.foldable.remove(&path) {
                    self.changes[i] = None;
                }
                if dir {
                    self.touch_under(&path);
                    self.drop_removed_just_below(&path);
                }
                self.changes.push(Some(Change::Removed { path, dir }));
            }
            Change::Moved { from, to, dir } => {
                self.touch_ancestors(&from);
                self.touch_ancestors(&to);
                self.forget_new_dirs(&from);
                self.forget_new_dirs(&to);
                // Whatever was created at `to` in this batch has been replaced.
                self.foldable.remove(&to);
                if dir {
                    self.touch_under(&to);
                }
                let created_here = self.foldable.remove(&from);
                if let Some(i) = created_here {
                    self.changes[i] = None;
                }
                if dir {
                    self.touch_under(&from);
                }
                self.changes.push(Some(Change::Moved {
                    from,
                    to: to.clone(),
                    dir,
                }));
                if created_here.is_some() && dir {
                    // What was made in it was folded into its create: registered from the
                    // disk by this one, also when a client registered the folder (the move
                    // then only moves its record).
                    self.store_created(to, dir);
                }
            }
            Change::Rescan { path } => {
                if !self.rescans.contains(&path) {
                    self.touch_under(&path);
                    self.rescans.insert(path.clone());
                    self.changes.push(Some(Change::Rescan { path }));
                }
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.changes.clear();
        self.foldable.clear();
        self.new_dirs.clear();
        self.rescans.clear();
        self.stored.clear();
    }

    pub(crate) fn finish(&mut self) -> Vec<Change> {
        self.foldable.clear();
        self.new_dirs.clear();
        self.rescans.clear();
        self.stored.clear();
        self.changes.drain(..).flatten().collect()
    }

    /// A `Created` that stands, foldable from now on.
    fn store_created(&mut self, path: PathBuf, dir: bool) {
        let key = self.keys(&path).last().map(|(k, _)| *k);
        self.stored.extend(key);
        if dir {
            self.new_dirs.insert(path.clone());
        }
        self.foldable.insert(path.clone(), self.changes.len());
        self.changes.push(Some(Change::Created { path, dir }));
    }

    /// The key of each of `path`'s ancestors and of `path` itself (last), top down, hashed in
    /// one pass over its components; equal paths have equal keys.
    fn keys<'p>(&self, path: &'p Path) -> Vec<(u64, &'p Path)> {
        let mut prefixes: Vec<&Path> = path
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty())
            .collect();
        prefixes.reverse();
        let mut hasher = self.hasher.build_hasher();
        prefixes
            .into_iter()
            .map(|prefix| {
                if let Some(last) = prefix.components().next_back() {
                    hasher.write(last.as_os_str().as_bytes());
                }
                hasher.write_u8(0);
                (hasher.clone().finish(), prefix)
            })
            .collect()
    }

    /// `path`'s ancestors that may be in `foldable` or `new_dirs` (their key was stored).
    fn stored_ancestors<'p>(&self, path: &'p Path) -> Vec<&'p Path> {
        let mut keys = self.keys(path);
        keys.pop();
        keys.retain(|(key, _)| self.stored.contains(key));
        #[cfg(test)]
        self.ancestor_lookups
            .set(self.ancestor_lookups.get() + keys.len() as u64);
        keys.into_iter().map(|(_, ancestor)| ancestor).collect()
    }

    /// Whether a directory above `path` was created in this batch and still stands.
    fn under_new_dir(&self, path: &Path) -> bool {
        !self.new_dirs.is_empty()
            && self
                .stored_ancestors(path)
                .into_iter()
                .any(|a| self.new_dirs.contains(a))
    }

    /// `path` was moved or removed: it and what is below it are no longer new directories.
    fn forget_new_dirs(&mut self, path: &Path) {
        if !self.new_dirs.is_empty() {
            self.new_dirs.retain(|d| !d.starts_with(path));
        }
    }

    /// A directory is removed: the removals just before it (an `rm -r` removes what is
    /// inside first) are part of it. Only the unbroken run: a change of any other kind
    /// between may have changed what the directory's path names. The run and the empty slots
    /// at the end are cut off (no foldable entry is there), so an `rm -r` of a deep chain does
    /// not walk back over the slots of the levels below again and again.
    fn drop_removed_just_below(&mut self, dir: &Path) {
        while let Some(last) = self.changes.last() {
            match last {
                None => {}
                Some(Change::Removed { path, .. }) if path.starts_with(dir) && path != dir => {}
                Some(_) => break,
            }
            self.changes.pop();
        }
    }

    /// A change below a created directory: the directory is no longer foldable.
    fn touch_ancestors(&mut self, path: &Path) {
        if self.foldable.is_empty() {
            return;
        }
        for ancestor in self.stored_ancestors(path) {
            self.foldable.remove(ancestor);
        }
    }

    /// A directory moved or deleted: what was created under it is no longer foldable.
    fn touch_under(&mut self, dir: &Path) {
        if self.foldable.is_empty() {
            return;
        }
        let root = dir == Path::new(".");
        self.foldable.retain(|p, _| !(root || p.starts_with(dir)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn created(p: &str) -> Change {
        Change::Created {
            path: p.into(),
            dir: false,
        }
    }
    fn removed(p: &str) -> Change {
        Change::Removed {
            path: p.into(),
            dir: false,
        }
    }
    fn moved(a: &str, b: &str, dir: bool) -> Change {
        Change::Moved {
            from: a.into(),
            to: b.into(),
            dir,
        }
    }

    fn run(changes: Vec<Change>) -> Vec<Change> {
        let mut c = Coalescer::default();
        for change in changes {
            c.push(change);
        }
        c.finish()
    }

    #[test]
    fn a_temporary_file_is_only_its_removal() {
        // Its create goes; its removal stays, for a record a client may have made meanwhile.
        assert_eq!(run(vec![created("t"), removed("t")]), vec![removed("t")]);
        assert_eq!(
            run(vec![created("a"), created("t"), removed("t")]),
            vec![created("a"), removed("t")]
        );
    }

    #[test]
    fn write_temp_then_rename_is_the_move_alone() {
        assert_eq!(
            run(vec![
                created("a"),
                created(".x.tmp"),
                moved(".x.tmp", "x", false)
            ]),
            vec![created("a"), moved(".x.tmp", "x", false)]
        );
    }

    #[test]
    fn duplicate_creates_are_one() {
        assert_eq!(run(vec![created("a"), created("a")]), vec![created("a")]);
    }

    #[test]
    fn a_move_of_an_existing_name_stands() {
        let changes = vec![moved("a", "b", false), removed("c")];
        assert_eq!(run(changes.clone()), changes);
    }

    fn created_dir(p: &str) -> Change {
        Change::Created {
            path: p.into(),
            dir: true,
        }
    }
    fn removed_dir(p: &str) -> Change {
        Change::Removed {
            path: p.into(),
            dir: true,
        }
    }

    #[test]
    fn a_tree_made_in_one_batch_is_its_top_directory() {
        let changes = vec![
            created_dir("d"),
            created("d/a"),
            created_dir("d/b"),
            created("d/b/c"),
            created("e"),
        ];
        assert_eq!(run(changes), vec![created_dir("d"), created("e")]);
        // mkdir tmp; fill it; mv tmp final: the move, then one create of the final name
        // (what was made in it); a create below it after that is part of that one.
        let changes = vec![
            created_dir("tmp"),
            created("tmp/x"),
            moved("tmp", "final", true),
            created("final/y"),
        ];
        assert_eq!(
            run(changes),
            vec![moved("tmp", "final", true), created_dir("final")]
        );
    }

    #[test]
    fn a_tree_removed_in_one_batch_is_its_top_directory() {
        let changes = vec![
            removed("keep"),
            moved("x", "y", false),
            removed("d/a"),
            removed("d/b/c"),
            removed_dir("d/b"),
            removed("d/e"),
            removed_dir("d"),
        ];
        assert_eq!(
            run(changes),
            vec![removed("keep"), moved("x", "y", false), removed_dir("d")]
        );
        // Only the unbroken run just before: a move between may have changed what "d" names.
        let changes = vec![removed("d/a"), moved("x", "y", false), removed_dir("d")];
        assert_eq!(run(changes.clone()), changes);
    }

    #[test]
    fn a_created_directory_with_a_move_into_it_is_not_folded() {
        // An object with an ID moved into a new directory: the move stands, and so does the
        // directory's create; a create below it after that is still part of its subtree.
        let changes = vec![
            created_dir("d"),
            moved("elsewhere", "d/f", false),
            moved("d", "e", true),
        ];
        assert_eq!(run(changes.clone()), changes);
        let changes = vec![created_dir("d"), moved("x", "d/f", false), created("d/g")];
        assert_eq!(
            run(changes),
            vec![created_dir("d"), moved("x", "d/f", false)]
        );
    }

    #[test]
    fn a_create_under_a_moved_directory_is_not_folded_across_the_move() {
        // Created(d/f), then d moves to e, then a new d/f is removed: the first d/f is e/f now.
        let changes = vec![created("d/f"), moved("d", "e", true), removed("d/f")];
        assert_eq!(run(changes.clone()), changes);
    }

    #[test]
    fn a_move_over_a_created_name_keeps_both() {
        let changes = vec![created("x"), moved("y", "x", false), removed("x")];
        assert_eq!(run(changes.clone()), changes);
    }

    #[test]
    fn a_deep_chain_of_folders_looks_up_only_the_ancestors_stored_in_the_batch() {
        // `mkdir dd; cd dd` DEPTH times, a file at the top, then the chain removed deepest
        // first: every change walks its ancestors, and each look-up of one hashes its path.
        const DEPTH: usize = 300;
        let chain: Vec<String> = (1..=DEPTH).map(|n| vec!["dd"; n].join("/")).collect();
        let mut c = Coalescer::default();
        c.push(created("f"));
        for p in &chain {
            c.push(created_dir(p));
        }
        for p in chain.iter().rev() {
            c.push(removed_dir(p));
        }
        let lookups = c.ancestor_lookups.get();
        assert_eq!(
            c.finish(),
            vec![created("f"), created_dir("dd"), removed_dir("dd")]
        );
        // Only "dd" (and "f") were stored: one look-up per change, not one per ancestor
        // (DEPTH² of them, each hashing a path DEPTH components long).
        assert!(lookups <= 2 * DEPTH as u64, "{lookups} ancestor look-ups");
    }

    #[test]
    fn rescans_of_one_directory_are_one_and_end_what_was_foldable_under_it() {
        let rescan = |p: &str| Change::Rescan { path: p.into() };
        let changes = vec![
            created("d/f"),
            rescan("d"),
            rescan("e"),
            rescan("d"),
            removed("d/f"),
        ];
        assert_eq!(
            run(changes),
            vec![created("d/f"), rescan("d"), rescan("e"), removed("d/f")]
        );
    }

    #[test]
    fn a_deep_chain_removed_is_its_top_directory_after_what_came_before() {
        let chain: Vec<String> = (1..=50).map(|n| vec!["dd"; n].join("/")).collect();
        let mut changes = vec![created("keep"), moved("x", "y", false)];
        for p in chain.iter().rev() {
            changes.push(removed(&format!("{p}/leaf")));
            changes.push(removed_dir(p));
        }
        assert_eq!(
            run(changes),
            vec![created("keep"), moved("x", "y", false), removed_dir("dd")]
        );
    }
}
