//! What a failed request tells the client: an [`ErrorCode`] it can act on (try again, the name
//! exists, the claim is wrong) and a message for people. Database and volume errors are mapped
//! here once, so every handler answers the same failure the same way.

use deskd_db::{DbError, Object};
use deskd_proto::{ErrorCode, ErrorReply};
use deskd_volume::VolumeError;

use super::wire::join;
use crate::walk::Node;

/// SQLite's primary result code when another connection holds the lock the statement needs
/// (`SQLITE_BUSY`, <https://sqlite.org/rescode.html#busy>).
const SQLITE_BUSY: i32 = 5;
/// SQLite's primary result code when a table is locked by another statement of a shared cache
/// (`SQLITE_LOCKED`, <https://sqlite.org/rescode.html#locked>).
const SQLITE_LOCKED: i32 = 6;

/// The reply for a database error.
pub fn db_error(e: DbError) -> ErrorReply {
    let code = match &e {
        DbError::NoSuchId(_) | DbError::NoSuchName { .. } => ErrorCode::NotFound,
        DbError::Exists { .. } => ErrorCode::Exists,
        DbError::NotADirectory(_) => ErrorCode::NotADirectory,
        DbError::NotEmpty(_) => ErrorCode::NotEmpty,
        DbError::InvalidName(..) => ErrorCode::InvalidName,
        DbError::IntoItself(_) => ErrorCode::IntoItself,
        DbError::Root(_) => ErrorCode::PermissionDenied,
        DbError::IdSpaceExhausted => ErrorCode::IdSpaceExhausted,
        e if e.is_disk_full() => ErrorCode::DiskFull,
        e if is_busy(e) => ErrorCode::Busy,
        _ => ErrorCode::Internal,
    };
    ErrorReply::new(code, e.to_string())
}

/// Whether SQLite refused because another connection holds a lock (a backup's snapshot, an
/// `sqlite3` session): `Busy` tells the client to try again, where `Internal` would say the
/// desktop is broken. Decided by SQLite's result code (the low byte of the extended code), not
/// by the message, which may quote a path of any name.
fn is_busy(e: &DbError) -> bool {
    match e {
        DbError::Sqlite(e) => e
            .sqlite_error()
            .is_some_and(|f| matches!(f.extended_code & 0xff, SQLITE_BUSY | SQLITE_LOCKED)),
        _ => false,
    }
}

/// The reply for a volume error (a path that leaves the volume, a name deskd keeps for itself).
pub fn volume_error(e: VolumeError) -> ErrorReply {
    let code = match &e {
        VolumeError::Escape(_) => ErrorCode::Escape,
        VolumeError::Protected(_) => ErrorCode::Protected,
        VolumeError::InvalidName(..) => ErrorCode::InvalidName,
        _ => ErrorCode::Internal,
    };
    ErrorReply::new(code, e.to_string())
}

/// A client's claim about the file system that the file system contradicts (DESIGN §5).
pub(super) fn claim(message: String) -> ErrorReply {
    ErrorReply::new(ErrorCode::ClaimRejected, message)
}

/// The refusal to record a name whose object on disk is of another kind than its record.
pub(super) fn kind_changed(components: &[Vec<u8>], recorded: &Object, node: &Node) -> ErrorReply {
    claim(format!(
        "{}: is a {} on disk, recorded as a {} (ID {}); tell deskd of the removal first",
        String::from_utf8_lossy(&join(components)),
        node.kind.as_str(),
        recorded.kind.as_str(),
        recorded.id
    ))
}
