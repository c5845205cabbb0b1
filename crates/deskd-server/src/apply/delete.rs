//! Removals the client has already done on disk: `Delete` (by ID) and `DeletePath`. A record
//! goes only once its inode is gone from its place for anyone (the server walks it itself).
//! Another object at the name (made since: a user who recreates the name at once) does not
//! keep the record, so it cannot take the removed object's ID; afpd's FPExchangeFiles, which
//! deletes two IDs whose names hold each other's inodes, is recognised by the Netatalk bridge.

use deskd_db::WriteBatch;
use deskd_proto::{ErrorCode, ErrorReply, Response};

use super::errors::db_error;
use super::paths::{registered, verify_gone, walk_path};
use super::{Reply, Writing};
use crate::sight;

/// `Delete`: remove the record `id` (with `recursive`, everything below it).
pub(super) fn delete<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    id: u32,
    recursive: bool,
) -> Reply {
    let object = w.b.get(id).map_err(db_error)?;
    let old = w.cache.components_of(w.b, id)?;
    verify_gone(w.vol, &object, &old)?;
    Ok(Response::Removed(
        w.b.delete(id, recursive).map_err(db_error)?,
    ))
}

/// `DeletePath`: remove the record at `path`; an unregistered path is not an error.
pub(super) fn delete_path<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    path: &[u8],
    recursive: bool,
) -> Reply {
    let walked = walk_path(w.vol, w.access, path)?;
    if walked.refused() {
        // Where the peer may not see, its path names nothing (and nothing is removed).
        if w.access.is_trusted() {
            return Err(sight::refused_walk(w.access, w.vol, &walked));
        }
        return Ok(Response::Removed(Vec::new()));
    }
    if walked.components.is_empty() {
        return Err(ErrorReply::new(
            ErrorCode::PermissionDenied,
            "the volume root cannot be deleted",
        ));
    }
    match registered(w.b, &walked.components)? {
        None => Ok(Response::Removed(Vec::new())),
        Some(object) => {
            verify_gone(w.vol, &object, &walked.components)?;
            Ok(Response::Removed(
                w.b.delete(object.id, recursive).map_err(db_error)?,
            ))
        }
    }
}
