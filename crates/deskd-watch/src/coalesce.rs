//! Coalescing within one batch, so a temporary file never gets an ID:
//!
//! - `Created(p)` … `Removed(p)` gives nothing;
//! - `Created(p)` … `Moved(p → q)` gives `Created(q)` (where the move was);
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
//! directory move or delete, which looks at the `Created` entries still foldable.

use std::collections::{HashMap, HashSet};
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
                if dir {
                    self.new_dirs.insert(path.clone());
                }
                self.foldable.insert(path.clone(), self.changes.len());
                self.changes.push(Some(Change::Created { path, dir }));
            }
            Change::Removed { path, dir } => {
                self.touch_ancestors(&path);
                self.forget_new_dirs(&path);
                if let Some(i) = self.foldable.remove(&path) {
                    self.changes[i] = None;
                    return;
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
                if let Some(i) = self.foldable.remove(&from) {
                    self.changes[i] = None;
                    if dir {
                        self.new_dirs.insert(to.clone());
                    }
                    self.foldable.insert(to.clone(), self.changes.len());
                    self.changes.push(Some(Change::Created { path: to, dir }));
                    return;
                }
                if dir {
                    self.touch_under(&from);
                }
                self.changes.push(Some(Change::Moved { from, to, dir }));
            }
            Change::Rescan { path } => {
                let already = self
                    .changes
                    .iter()
                    .flatten()
                    .any(|c| matches!(c, Change::Rescan { path: p } if *p == path));
                if !already {
                    self.touch_under(&path);
                    self.changes.push(Some(Change::Rescan { path }));
                }
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.changes.clear();
        self.foldable.clear();
        self.new_dirs.clear();
    }

    pub(crate) fn finish(&mut self) -> Vec<Change> {
        self.foldable.clear();
        self.new_dirs.clear();
        self.changes.drain(..).flatten().collect()
    }

    /// Whether a directory above `path` was created in this batch and still stands.
    fn under_new_dir(&self, path: &Path) -> bool {
        !self.new_dirs.is_empty()
            && path
                .ancestors()
                .skip(1)
                .take_while(|a| !a.as_os_str().is_empty())
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
    /// between may have changed what the directory's path names.
    fn drop_removed_just_below(&mut self, dir: &Path) {
        for slot in self.changes.iter_mut().rev() {
            match slot {
                None => continue,
                Some(Change::Removed { path, .. }) if path.starts_with(dir) && path != dir => {
                    *slot = None;
                }
                Some(_) => break,
            }
        }
    }

    /// A change below a created directory: the directory is no longer foldable.
    fn touch_ancestors(&mut self, path: &Path) {
        if self.foldable.is_empty() {
            return;
        }
        for ancestor in path.ancestors().skip(1) {
            if ancestor.as_os_str().is_empty() {
                break;
            }
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
    fn a_temporary_file_leaves_nothing() {
        assert_eq!(run(vec![created("t"), removed("t")]), vec![]);
    }

    #[test]
    fn write_temp_then_rename_is_a_create_of_the_final_name() {
        assert_eq!(
            run(vec![
                created("a"),
                created(".x.tmp"),
                moved(".x.tmp", "x", false)
            ]),
            vec![created("a"), created("x")]
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
        // mkdir tmp; fill it; mv tmp final: one create of the final name.
        let changes = vec![
            created_dir("tmp"),
            created("tmp/x"),
            moved("tmp", "final", true),
        ];
        assert_eq!(run(changes), vec![created_dir("final")]);
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
}
