//! Following a move made outside deskd (`rename(2)`, `mv`, another file server): an object
//! registered at a place without a record, that carries an ID (the request's hint or
//! `carried`: afpd's AppleDouble CNID, dt's xattr mirror), is the record of that ID when the
//! record is of the object's kind, has the object's dev/ino, and its recorded place no longer
//! holds that inode (if it still does, the new place is a hard link: a second name, its own
//! ID). The record is then moved, keeping its ID; what is below a moved folder follows.
//! Netatalk's cnid_dbd (`dbd_lookup.c`) does the same by dev/ino.
//!
//! The check is by inode against deskd's own record, so any peer may name an ID: naming
//! another user's ID moves nothing, the victim's record has the victim's inode.
//!
//! The server does not read an object's `user.deskd.id` mirror itself: the clients that know
//! an object's carriers send them (dt the mirror, the bridge afpd's CNID), and reading it here
//! would cost an open and a `getxattr` for every new registration while proving nothing more
//! (the mirror is the file owner's to write, and the inode check decides anyway).

use deskd_db::{DbError, Object, Read, ROOT_ID};
use deskd_proto::ErrorReply;

use super::errors::db_error;
use super::Writing;
use crate::walk::{self, Node};

/// The record an object at (`parent`, `name`) was moved from, moved there: the first of
/// `candidates` that passes the checks above. `None` when none does (the caller registers the
/// object as usual).
pub(super) fn follow_move(
    w: &mut Writing<'_, '_>,
    candidates: &[Option<u32>],
    node: &Node,
    parent: u32,
    name: &[u8],
) -> Result<Option<Object>, ErrorReply> {
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
