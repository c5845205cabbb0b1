//! The reply for a database error: an [`ErrorCode`] the client can act on (the name exists,
//! try again, no such ID) and the error's text. Its own module because every layer that reads
//! the desktop answers with it (the handlers in [`crate::apply`], what a peer may see in
//! [`crate::sight`], the writer, the volume's status), and none of them should depend on
//! another for it.

use deskd_db::DbError;
use deskd_proto::{ErrorCode, ErrorReply};

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
        // A PostgreSQL desktop's database cannot be reached: try again (the writer answers
        // writes read-only itself, `writer::pg`).
        DbError::Unavailable(_) => ErrorCode::Busy,
        // Another writer held the desktop past the wait: try again (the database is there).
        DbError::Busy(_) => ErrorCode::Busy,
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
pub(crate) fn is_busy(e: &DbError) -> bool {
    match e {
        DbError::Sqlite(e) => e
            .sqlite_error()
            .is_some_and(|f| matches!(f.extended_code & 0xff, SQLITE_BUSY | SQLITE_LOCKED)),
        _ => false,
    }
}
