//! Creating the generated files: always new files, never through an existing name.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A generated file that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Creates `dir` (and its parents) if missing.
pub(crate) fn make_dir(dir: &Path) -> Result<(), WriteError> {
    std::fs::create_dir_all(dir).map_err(|source| WriteError {
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to the new file `path`. `create_new` is O_CREAT|O_EXCL, which fails on an
/// existing name and does not follow a symlink: run as root into a directory others can write,
/// this writes no file but its own.
pub(crate) fn new_file(path: PathBuf, bytes: &[u8]) -> Result<PathBuf, WriteError> {
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| f.write_all(bytes));
    match result {
        Ok(()) => Ok(path),
        Err(source) => Err(WriteError { path, source }),
    }
}
