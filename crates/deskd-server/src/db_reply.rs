//! The reply for a database error: an [`ErrorCode`] the client can act on (the name exists,
//! try again, no such ID) and the error's text. Its own module because every layer that reads
//! the desktop answers with it (the handlers in [`crate::apply`], what a peer may see in
//! [`crate::sight`], the writer, the volume's status), and none of them should depend on
//! another for it.

use deskd_db::DbError;
use deskd_proto::{ErrorCode, ErrorReply};

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
        DbError::Sqlite(rusqlite_err) if rusqlite_err.to_string().contains("locked") => {
            ErrorCode::Busy
        }
        _ => ErrorCode::Internal,
    };
    ErrorReply::new(code, e.to_string())
}
