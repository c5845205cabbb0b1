//! Coalescing within one batch, so a temporary file never gets an ID:
//!
//! - `Created(p)` … `Removed(p)` gives nothing;
//! - `Created(p)` … `Moved(p → q)` gives `Created(q)` (where the move was);
//! - a second `Created(p)` while the first stands is dropped (inotify's scan of a new
//!   directory and the events for what is made in it can both report a name).
//!
//! Only a `Created` that nothing has touched since is folded: a change at or under a created
//! directory, or a move or delete of one of its ancestors, makes it stand as it is, so the
//! order the server sees is always one that happened. Everything is O(1) per change except a
//! directory move or delete, which looks at the `Created` entries still foldable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::Change;

#[derive(Default)]
pub(crate) struct Coalescer {
    changes: Vec<Option<Change>>,
    /// Live `Created` entries that may still be folded: path → index in `changes`.
    foldable: HashMap<PathBuf, usize>,
}

impl Coalescer {
    pub(crate) fn push(&mut self, change: Change) {
        match change {
            Change::Created { path, dir } => {
                self.touch_ancestors(&path);
                if self.foldable.contains_key(&path) {
                    return;
                }
                self.foldable.insert(path.clone(), self.changes.len());
                self.changes.push(Some(Change::Created { path, dir }));
            }
            Change::Removed { path, dir } => {
                self.touch_ancestors(&path);
                if let Some(i) = self.foldable.remove(&path) {
                    self.changes[i] = None;
                    return;
                }
                if dir {
                    self.touch_under(&path);
                }
                self.changes.push(Some(Change::Removed { path, dir }));
            }
            Change::Moved { from, to, dir } => {
                self.touch_ancestors(&from);
                self.touch_ancestors(&to);
                // Whatever was created at `to` in this batch has been replaced.
                self.foldable.remove(&to);
                if dir {
                    self.touch_under(&to);
                }
                if let Some(i) = self.foldable.remove(&from) {
                    self.changes[i] = None;
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
    }

    pub(crate) fn finish(&mut self) -> Vec<Change> {
        self.foldable.clear();
        self.changes.drain(..).flatten().collect()
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

    #[test]
    fn a_created_directory_with_content_is_not_folded() {
        let d = Change::Created {
            path: "d".into(),
            dir: true,
        };
        let changes = vec![d, created("d/f"), moved("d", "e", true)];
        assert_eq!(run(changes.clone()), changes);
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
