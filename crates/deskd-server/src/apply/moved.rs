//! Following a move made outside deskd (`rename(2)`, `mv`, another file server): an object
//! registered at a place without a record, that carries an ID (the request's hint or
//! `carried`: afpd's AppleDouble CNID, dt's xattr mirror), is the record of that ID when the
//! record is of the object's kind, has the object's dev/ino, and its recorded place no longer
//! holds that inode (if it still does, the new place is a hard link: a second name, its own
//! ID). The record is then moved, keeping its ID; what is below a moved folder follows.
//! Netatalk's cnid_dbd (`dbd_lookup.c`) does the same by dev/ino.
//!
//! The check is by inode against deskd's own record, so any peer may name an ID: naming
//! another user's ID moves nothing, the victim's record has the victim's inode. An inode
//! number alone is not enough, though: a file system gives a freed number to the next new file
//! at once, so a user whose file got the number of a deleted (or saved-by-replace) object of
//! someone else's would take its ID. Two more checks close that:
//!
//! * the object must have been born no later than the record's inode was recorded (`statx`
//!   birth time against the record's `ctime`, the inode's change time when it was registered):
//!   a reused number belongs to a newer file. Where the file system keeps no birth time, no
//!   move is followed.
//! * a peer that is not trusted must be able to have made the move: write and search the
//!   record's old folder, as itself.
//! * a file must have no other name (`st_nlink` 1): a hard link shares the inode and its
//!   mirror, and the other name may be the record's object, moved by its owner a moment
//!   before (not applied yet: a deferred burst); a link made by anyone who may write the file
//!   took the ID. A file whose other names are gone is the object.
//!
//! The clients that know an object's carriers send them (dt the mirror, the bridge afpd's
//! CNID); the watcher's claim reads the `user.deskd.id` mirror itself. Only a registration
//! that carries no ID and whose mirror was not read has the mirror read here, as one more
//! candidate (`register::mirror_of`: afpd after a plain `mv` that left its AppleDouble
//! behind). The mirror is the file owner's to write: it proves nothing, the inode check
//! decides.

use deskd_db::{DbError, Object, WriteBatch, ROOT_ID};
use deskd_proto::ErrorReply;

use super::errors::db_error;
use super::Writing;
use crate::walk::{self, Node};

/// The record an object at (`parent`, `name`) was moved from, moved there: the first of
/// `candidates` that passes the checks above. `None` when none does (the caller registers the
/// object as usual).
pub(super) fn follow_move<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    candidates: &[Option<u32>],
    node: &Node,
    parent: u32,
    name: &[u8],
) -> Result<Option<Object>, ErrorReply> {
    // A file with another name is not followed: the other name may be where the record's
    // object went (its owner's `mv`, not applied yet), and whoever could link the file (any
    // user who may write it: protected_hardlinks) took its ID with the mirror the names
    // share (hostile review of stop 42, finding 1). With its other names gone it has one.
    if node.kind != deskd_db::Kind::Dir && node.nlink > 1 {
        return Ok(None);
    }
    for id in candidates.iter().flatten().copied() {
        if id == ROOT_ID {
            continue;
        }
        let record = match w.b.get(id) {
            Ok(record) => record,
            Err(DbError::NoSuchId(_)) => continue,
            Err(e) => return Err(db_error(e)),
        };
        // (A record from before deskd kept dev/ino, 0/0, matches no object on disk.)
        if record.kind != node.kind || (record.dev, record.ino) != (node.dev, node.ino) {
            continue;
        }
        // Walked as the server: is the inode still at its recorded place for anyone?
        let old = w.b.path_of(id).map_err(db_error)?;
        let still_there = walk::walk(w.vol.root(), &old)
            .last()
            .is_some_and(|n| (n.dev, n.ino) == (record.dev, record.ino));
        if still_there {
            continue;
        }
        if !born_by(w, parent, name, node, record.ctime) || !could_have_moved(w, &old) {
            continue;
        }
        match w.b.rename(id, parent, name, false) {
            Ok(_) => {}
            // The desktop still has the new place inside the folder (stale records): not a
            // move it can record; the object is registered as usual.
            Err(DbError::IntoItself(_)) => continue,
            Err(e) => return Err(db_error(e)),
        }
        if record.kind == deskd_db::Kind::Dir {
            w.cache.clear();
        }
        tracing::debug!(
            "ID {id} followed a move made outside deskd to {}",
            w.vol.path_of(&w.b.path_of(id).map_err(db_error)?).display()
        );
        return Ok(Some(w.b.get(id).map_err(db_error)?));
    }
    Ok(None)
}

/// Whether the object at (`parent`, `name`), the walked `node`, was born no later than `when`
/// (Unix seconds). `false` when its birth time cannot be read, or when what is at the path now
/// is no longer `node` (replaced since the walk).
fn born_by<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    parent: u32,
    name: &[u8],
    node: &Node,
    when: i64,
) -> bool {
    let Ok(mut components) = w.b.path_of(parent) else {
        return false;
    };
    components.push(name.to_vec());
    super::paths::born_no_later(&w.vol.path_of(&components), node, when) == Some(true)
}

/// Whether the peer may have moved the object out of the folder at `old` (its recorded
/// place): trusted peers, and others that may write and search that folder as themselves.
fn could_have_moved<B: WriteBatch + ?Sized>(w: &mut Writing<'_, B>, old: &[Vec<u8>]) -> bool {
    may_change_folder(w, &old[..old.len().saturating_sub(1)])
}

/// Whether the peer may change the entries of the folder at `folder` (names from the root):
/// trusted peers, and others that may write and search it as themselves.
pub(super) fn may_change_folder<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    folder: &[Vec<u8>],
) -> bool {
    use rustix::fs::{accessat, Access, AtFlags, CWD};
    if w.access.is_trusted() {
        return true;
    }
    let folder = w.vol.path_of(folder);
    w.access
        .wear(|| {
            accessat(
                CWD,
                &folder,
                Access::WRITE_OK | Access::EXEC_OK,
                AtFlags::EACCESS,
            )
            .is_ok()
        })
        .unwrap_or(false)
}
