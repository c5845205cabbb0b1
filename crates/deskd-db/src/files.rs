//! The desktop's files on disk: who may read them, and which format they hold, found out
//! without opening them as a database.
//!
//! A desktop names every object of its volume, so its files (`.Desktop`, `-wal`, `-shm`) are
//! private to the user deskd runs as: created 0600 ([`create_private`]), and an existing file
//! that gives group or other users any access loses those bits when it is opened
//! ([`make_private`], with a log line). SQLite creates the WAL and the shared-memory index with
//! the main file's mode, so a private main file keeps them private too.

use std::fs::OpenOptions;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::{shm_path, wal_path, DbError, Result, FORMAT_VERSION};

/// The mode of every file that holds desktop records.
pub const PRIVATE_MODE: u32 = 0o600;

/// Create the empty file `path`, mode 0600, unless something is there already (never through a
/// symbolic link).
pub fn create_private(path: &Path) -> std::io::Result<()> {
    match create_new_private(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Create the empty file `path`, mode 0600; `AlreadyExists` when anything is there, a dangling
/// symbolic link included.
pub fn create_new_private(path: &Path) -> std::io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map(drop)
}

/// Take group and other bits off the desktop at `desktop` and its `-wal` and `-shm`, logging
/// each file changed. Returns the files changed, with their old modes. Files this process may
/// not change (another owner) are left as they are: the caller's open then decides.
pub fn make_private(desktop: &Path) -> Vec<(PathBuf, u32)> {
    let mut changed = Vec::new();
    for path in [desktop.to_path_buf(), wal_path(desktop), shm_path(desktop)] {
        // An O_PATH descriptor: closing it does not drop the POSIX locks SQLite holds on the
        // file in this process (closing any other descriptor of it would), and with
        // O_NOFOLLOW the mode is changed on the file itself, never on what a link names.
        let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        else {
            continue;
        };
        let Ok(meta) = file.metadata() else { continue };
        let mode = meta.mode() & 0o7777;
        if !meta.is_file() || mode & 0o077 == 0 {
            continue;
        }
        let private = mode & 0o7700;
        // fchmod does not take an O_PATH descriptor; its /proc link names exactly that file.
        let by_descriptor = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        match std::fs::set_permissions(&by_descriptor, std::fs::Permissions::from_mode(private)) {
            Ok(()) => {
                tracing::warn!(
                    "{}: mode {mode:04o} let other users read the desktop; now {private:04o}",
                    path.display()
                );
                changed.push((path, mode));
            }
            Err(e) => tracing::debug!(
                "{}: mode {mode:04o} gives other users access, but cannot be changed: {e}",
                path.display()
            ),
        }
    }
    changed
}

/// The format version (`PRAGMA user_version`) in the header of the database file at `path`,
/// read as bytes: nothing is opened as a database, nothing is created. Not for a file this
/// process has open in SQLite: closing the descriptor read here would drop SQLite's locks. `None` for a missing
/// or empty file. A version set in a WAL not yet checkpointed is not seen here; the open that
/// follows ([`crate::schema::migrate`]) refuses it then.
pub fn header_format(path: &Path) -> std::io::Result<Option<i32>> {
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        other => other?,
    };
    let mut header = [0u8; 64];
    let mut filled = 0;
    while filled < header.len() {
        match file.read(&mut header[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    if filled == 0 {
        return Ok(None);
    }
    if filled < header.len() || !header.starts_with(b"SQLite format 3\0") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not an SQLite database",
        ));
    }
    Ok(Some(i32::from_be_bytes(
        header[60..64].try_into().expect("four bytes"),
    )))
}

/// Refuse a desktop whose format is newer than this deskd writes ([`DbError::FormatTooNew`]):
/// rebuilding, restoring or backing it up would drop what this deskd does not know. The header
/// is read first; when a WAL with frames is beside the file, a read-only connection reads the
/// version again, so one still in the WAL counts. A missing or empty file passes (there is
/// nothing to lose). The one check every command uses.
pub fn check_format(path: &Path) -> Result<()> {
    if std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) == 0 {
        return Ok(());
    }
    // The header first: a newer file is refused without SQLite touching it at all.
    if let Ok(Some(found)) = header_format(path) {
        if found > FORMAT_VERSION {
            return Err(DbError::FormatTooNew {
                found,
                supported: FORMAT_VERSION,
            });
        }
    }
    // Only a WAL with frames can hold a newer version than the header; a read-only open
    // would leave empty side files behind, so it is made only then.
    if std::fs::metadata(wal_path(path)).map_or(true, |m| m.len() == 0) {
        return Ok(());
    }
    make_private(path);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let found: i32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > FORMAT_VERSION {
        return Err(DbError::FormatTooNew {
            found,
            supported: FORMAT_VERSION,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_desktop_and_its_side_files_are_private() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(".Desktop");
        let (desktop, _) = crate::Desktop::open(&path, crate::Durability::Normal).unwrap();
        for p in [path.clone(), wal_path(&path), shm_path(&path)] {
            let mode = std::fs::metadata(&p).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        drop(desktop);
    }

    #[test]
    fn an_open_takes_group_and_other_bits_off() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(".Desktop");
        drop(crate::Desktop::open(&path, crate::Durability::Normal).unwrap());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (desktop, _) = crate::Desktop::open(&path, crate::Durability::Normal).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        drop(desktop);
    }

    #[test]
    fn a_newer_format_is_refused_without_change() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(".Desktop");
        drop(crate::Desktop::open(&path, crate::Durability::Normal).unwrap());
        crate::checkpoint_file(&path).unwrap();
        assert_eq!(header_format(&path).unwrap(), Some(FORMAT_VERSION));
        check_format(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let before = std::fs::read(&path).unwrap();
        assert!(matches!(
            check_format(&path),
            Err(DbError::FormatTooNew { found: 99, .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(header_format(&d.path().join("none")).unwrap(), None);
    }

    #[test]
    fn a_newer_format_still_in_the_wal_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(".Desktop");
        drop(crate::Desktop::open(&path, crate::Durability::Normal).unwrap());
        crate::checkpoint_file(&path).unwrap();
        // Kept open with checkpoints off: the new version is only in the WAL.
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        assert_eq!(header_format(&path).unwrap(), Some(FORMAT_VERSION));
        assert!(matches!(
            check_format(&path),
            Err(DbError::FormatTooNew { found: 99, .. })
        ));
        drop(conn);
    }
}
