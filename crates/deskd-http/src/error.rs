//! Why the HTTP side cannot start.

use std::path::PathBuf;

/// A refusal at start: each message names the setting or file to fix.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The token file is unusable (missing, readable by others, too short). The reason is
    /// part of the message, not a `source`, so anyhow's `{:#}` does not print it twice.
    #[error("http: {0}")]
    Token(deskd_proto::transport::TokenFileError),
    /// The address cannot be listened on.
    #[error("http_listen {listen}: {error}")]
    Bind {
        listen: String,
        error: std::io::Error,
    },
    /// `backup_dir` is missing, not a directory, relative, or others may write into it.
    #[error("backup_dir {}: {why}", path.display())]
    BackupDir { path: PathBuf, why: String },
    /// The runtime's thread could not be made.
    #[error("http: cannot start the HTTP thread: {0}")]
    Runtime(std::io::Error),
}
