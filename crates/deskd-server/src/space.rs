//! Free space on a desktop's file system.
//!
//! SQLite fails a commit cleanly when the disk is full, but a WAL that took the last free
//! block can then never be checkpointed when the checkpoint must grow the desktop: the volume
//! would stay stuck. So the writer keeps `min_free` bytes free beyond the WAL: a commit that
//! finds less checkpoints first, and is refused with `DiskFull` when even that leaves less
//! than `min_free` ([`Room`]). A desktop that cannot be opened for writing because the file
//! system is full is served read-only ([`FULL_REASON`]), from the file itself when its WAL is
//! empty (an immutable read needs no `-shm`), else from a copy in a private directory under
//! the temp directory ([`crate::private_temp`]).

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::config::DEFAULT_MIN_FREE;

/// What status and the log say of a volume served read-only for want of space.
pub const FULL_REASON: &str = "file system full";

/// Below this many free bytes an open that fails is put down to a full file system, whatever
/// SQLite said (a `-shm` that cannot grow is reported as a plain I/O error).
const NEARLY_FULL: u64 = 1 << 20;

/// A file system's size and the bytes free on it for the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub free: u64,
    pub size: u64,
}

/// Size and free bytes of the file system under `path` (statvfs: `f_blocks`, `f_bavail`).
pub fn usage(path: &Path) -> io::Result<Usage> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let st = rustix::fs::statvfs(c.as_c_str())?;
    let block = st.f_frsize;
    Ok(Usage {
        free: st.f_bavail * block,
        size: st.f_blocks * block,
    })
}

/// Bytes free for the server under `path`.
#[cfg(test)]
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    usage(path).map(|u| u.free)
}

/// The reserve kept beyond the WAL: `configured`, else [`DEFAULT_MIN_FREE`] or 1/64 of a
/// file system of `size` bytes when that is less (a 16 MiB file system keeps 256 KiB).
pub fn min_free(configured: Option<u64>, size: u64) -> u64 {
    configured.unwrap_or((size / 64).min(DEFAULT_MIN_FREE))
}

/// The directory a desktop is in (where its WAL grows).
pub fn desktop_dir(desktop: &Path) -> &Path {
    desktop
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Whether an open of `desktop` that failed with `error` failed for want of space.
pub fn open_failed_for_space(
    error: &deskd_db::DbError,
    desktop: &Path,
    configured_min_free: Option<u64>,
) -> bool {
    error.is_disk_full() || short_of_space(desktop, configured_min_free)
}

/// Whether the desktop's file system is so nearly full that a failed write there is put down
/// to it. The server then marks the session open at once, so that
/// a full disk shows at the open (and the volume is served read-only) as it always did, not at
/// the first client's write.
pub fn short_of_space(desktop: &Path, configured_min_free: Option<u64>) -> bool {
    usage(desktop_dir(desktop))
        .is_ok_and(|u| u.free < NEARLY_FULL.min(min_free(configured_min_free, u.size)))
}

/// Whether a commit may go ahead on the desktop's file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// Free space covers the WAL and `min_free`.
    Enough,
    /// Less: checkpoint (emptying the WAL) first.
    CheckpointFirst,
}

/// Whether there is room for a commit: `free` must cover the WAL (what a checkpoint may need
/// to grow the desktop) and `min_free` (the commit's own frames).
pub fn room(free: u64, wal: u64, min_free: u64) -> Room {
    if free >= wal.saturating_add(min_free) {
        Room::Enough
    } else {
        Room::CheckpointFirst
    }
}

/// The `-wal` and `-shm` files of a desktop that did not exist before an open: an open that
/// fails for want of space removes what it left, so nothing is left taking space.
pub struct SideFiles(Vec<PathBuf>);

impl SideFiles {
    pub fn missing_now(desktop: &Path) -> SideFiles {
        SideFiles(
            [deskd_db::wal_path(desktop), deskd_db::shm_path(desktop)]
                .into_iter()
                .filter(|p| std::fs::symlink_metadata(p).is_err())
                .collect(),
        )
    }

    /// Remove those of them the failed open created.
    pub fn remove_created(&self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The byte of a `-shm` file every SQLite connection holds a read lock on for its whole life
/// (SQLite's "DMS" lock: `(22 + 8) * 4` in the unix VFS).
const SHM_DMS_BYTE: libc::off_t = 128;

/// Whether another process has `desktop` open through SQLite (a lock on its `-shm` file's DMS
/// byte). This process's own locks are not seen. Asking closes a descriptor of the file, which
/// drops this process's own locks on it: only for the end of the server's life.
pub fn open_elsewhere(desktop: &Path) -> bool {
    use nix::fcntl::{fcntl, FcntlArg};
    let Ok(shm) = std::fs::File::open(deskd_db::shm_path(desktop)) else {
        return false;
    };
    // nix's fcntl: rustix wraps F_SETLK (`fcntl_lock`) but not the F_GETLK query.
    let mut lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: SHM_DMS_BYTE,
        l_len: 1,
        l_pid: 0,
    };
    let asked = fcntl(&shm, FcntlArg::F_GETLK(&mut lock));
    asked.is_err() || lock.l_type != libc::F_UNLCK as libc::c_short
}

/// Where a volume served read-only for want of space is read from.
pub struct FullDiskReads {
    /// The file readers open.
    pub path: PathBuf,
    /// True: the desktop itself, immutable (its WAL is empty or gone); false: a copy.
    pub immutable: bool,
    /// The private directory holding the copy, removed when the opening closes.
    pub temp: Option<crate::private_temp::PrivateTemp>,
}

/// How to read `desktop` when it cannot be opened for writing: in place when no committed
/// frame waits in its WAL, else from a copy (desktop and WAL) in a private temp directory, where
/// SQLite can fold the WAL in. A missing desktop gets an empty one there.
pub fn full_disk_reads(desktop: &Path) -> io::Result<FullDiskReads> {
    let wal = deskd_db::wal_path(desktop);
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let exists = std::fs::metadata(desktop).is_ok_and(|m| m.len() > 0);
    if exists && wal_len == 0 {
        return Ok(FullDiskReads {
            path: desktop.to_path_buf(),
            immutable: true,
            temp: None,
        });
    }
    // A private directory of this opening's own (see crate::private_temp): no user can
    // have made it first, so the copy never goes into a file or link a user put there.
    let temp = crate::private_temp::PrivateTemp::new()?;
    let dir = temp.path().to_path_buf();
    let copy = dir.join(deskd_volume::DESKTOP_FILE);
    if exists {
        crate::location::copy_private(desktop, &copy)?;
        if wal_len > 0 {
            crate::location::copy_private(&wal, &deskd_db::wal_path(&copy))?;
        }
    }
    // Fold the WAL in (or create the empty desktop), so reads need nothing more.
    let (made, _) = deskd_db::Desktop::open(&copy, deskd_db::Durability::Normal)
        .map_err(|e| io::Error::other(format!("{}: {e}", copy.display())))?;
    made.close_clean()
        .map_err(|e| io::Error::other(format!("{}: {e}", copy.display())))?;
    Ok(FullDiskReads {
        path: copy,
        immutable: false,
        temp: Some(temp),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_covers_the_wal_and_the_reserve() {
        assert_eq!(room(100, 10, 50), Room::Enough);
        assert_eq!(room(59, 10, 50), Room::CheckpointFirst);
        assert_eq!(room(u64::MAX, u64::MAX, 1), Room::Enough);
    }

    #[test]
    fn the_default_reserve_shrinks_on_small_file_systems() {
        assert_eq!(min_free(None, 16 << 20), 256 << 10);
        assert_eq!(min_free(None, 1 << 40), DEFAULT_MIN_FREE);
        assert_eq!(min_free(Some(7), 1 << 40), 7);
    }

    #[test]
    fn free_space_is_read() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert_eq!(desktop_dir(Path::new(".Desktop")), Path::new("."));
    }

    #[test]
    fn a_connection_of_another_process_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".Desktop");
        let (d, _) = deskd_db::Desktop::open(&path, deskd_db::Durability::Normal).unwrap();
        // This process's own connection does not count.
        assert!(!open_elsewhere(&path));
        let child = std::process::Command::new("sqlite3")
            .arg(&path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sqlite3 CLI installed");
        let mut child = child;
        {
            use std::io::{BufRead, Write};
            let stdin = child.stdin.as_mut().unwrap();
            writeln!(stdin, "SELECT count(*) FROM objects;").unwrap();
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line.trim(), "1");
        }
        assert!(
            open_elsewhere(&path),
            "the sqlite3 session holds the desktop"
        );
        drop(child.stdin.take());
        child.wait().unwrap();
        assert!(!open_elsewhere(&path));
        drop(d);
    }

    #[test]
    fn a_desktop_with_an_empty_wal_is_read_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".Desktop");
        let (d, _) = deskd_db::Desktop::open(&path, deskd_db::Durability::Normal).unwrap();
        d.close_clean().unwrap();
        let reads = full_disk_reads(&path).unwrap();
        assert!(reads.immutable);
        assert_eq!(reads.path, path);
    }
}
