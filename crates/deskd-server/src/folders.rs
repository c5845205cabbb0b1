//! The folders one batch of watched changes walked to, held open for the rest of the batch.
//!
//! The watcher's renames come by the thousand a second, mostly within one folder or a few;
//! walking each new name from the volume root (an `openat` and a `statx` per folder, then
//! the name itself opened) was a sixth of the writer's work per rename
//! (docs/PERFORMANCE.md, "Live tracking (issue 23)"). A folder walked once is held here, and
//! a name in it is looked at with one `statx` on its descriptor.
//!
//! A folder held is the folder it was when walked (from the root as the server, following no
//! link), wherever it is moved meanwhile: a name found in it is in that folder, whose record
//! the desktop still holds at the walked path until the folder's own move is applied. The
//! batch's changes to folders (a folder made, moved or removed, a rescan) let every folder
//! held go ([`Folders::clear`]), so no change is applied through a folder the batch itself
//! moved.
//!
//! The desktop's record of a folder held is kept too, once a rename in it has read it: the
//! next renames in that folder find their objects by the folder's ID (one statement each,
//! not the folder's path walked in the desktop again) and need not read it again. A batch
//! change that renames or removes a kept record, or removes any record (a record removed
//! may be a folder's, or below one), lets them all go ([`Folders::forget_touched`]).

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use deskd_db::{NameChange, Object};

use crate::walk::{self, Node, Walked};

/// Most folders held at once (beyond, all are let go and walked again).
const FOLDERS_HELD: usize = 64;

/// A folder held: its descriptor and the nodes of the folders from the root to it.
type Held = (Arc<OwnedFd>, Vec<Node>);

/// The folders held, by their names from the root.
#[derive(Default)]
pub struct Folders {
    held: HashMap<Vec<Vec<u8>>, Held>,
    /// The desktop's records of folders held, by the same names.
    records: HashMap<Vec<Vec<u8>>, Object>,
}

impl Folders {
    /// Let every folder held go (a folder of the volume was made, moved or removed).
    pub fn clear(&mut self) {
        self.held.clear();
        self.records.clear();
    }

    /// The record kept for the folder held at `folder`.
    pub fn record(&self, folder: &[Vec<u8>]) -> Option<&Object> {
        self.records.get(folder)
    }

    /// Keep `record` as the desktop's record of the folder held at `folder` (read in this
    /// batch, and checked to be that folder's inode).
    pub fn keep_record(&mut self, folder: &[Vec<u8>], record: Object) {
        if self.held.contains_key(folder) {
            self.records.insert(folder.to_vec(), record);
        }
    }

    /// After a change of the batch made `changes` to the desktop: a record removed, or a
    /// kept one renamed, lets every folder go.
    pub fn forget_touched(&mut self, changes: &[NameChange]) {
        if self.records.is_empty() {
            return;
        }
        let touched = changes.iter().any(|change| match change {
            NameChange::Remove(_) => true,
            NameChange::Set(id, _) => self.records.values().any(|r| r.id == *id),
        });
        if touched {
            self.clear();
        }
    }

    /// [`walk::walk`] of `components` from `root`, through the held folder of the last name
    /// (walked from the root and held first when it is not): the last name is looked at
    /// with one `statx` on the folder's descriptor, and not opened ([`Walked::fd`] is
    /// `None`; [`Walked::up`] is the folder's).
    pub fn walk(&mut self, root: &Path, components: &[Vec<u8>]) -> Walked {
        let Some((name, folder)) = components.split_last() else {
            return walk::walk(root, components);
        };
        if !self.held.contains_key(folder) {
            let mut walked = walk::walk(root, folder);
            let reached = walked.stopped.is_none()
                && walked
                    .nodes
                    .last()
                    .is_none_or(|n| n.kind == deskd_db::Kind::Dir);
            let Some(fd) = walked.fd.take().filter(|_| reached) else {
                // Not a folder reached: the walk of the whole path says what stopped it.
                return walk::walk(root, components);
            };
            if self.held.len() >= FOLDERS_HELD {
                self.clear();
            }
            self.held
                .insert(folder.to_vec(), (Arc::new(fd), walked.nodes));
        }
        let (fd, nodes) = &self.held[folder];
        let mut walked = Walked {
            components: components.to_vec(),
            nodes: nodes.clone(),
            fd: None,
            up: Some(Arc::clone(fd)),
            stopped: None,
            hidden: None,
        };
        match walk::node_at(fd.as_fd(), name) {
            Ok(node) => walked.nodes.push(node),
            Err(e) => walked.stopped = Some(e),
        }
        walked
    }
}
