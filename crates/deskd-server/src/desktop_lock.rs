//! The exclusive lock that makes a writer the only one of its desktop, and the owner check
//! made on the locked file before anything in it is trusted.
//!
//! The lock is `flock(2)` on a descriptor of the desktop file itself. That descriptor is
//! **never closed** while the process may have the file open in SQLite: SQLite locks the
//! desktop with POSIX record locks, and closing any descriptor of a file drops every such lock
//! the process holds on it. A reload reopening a volume ended the old opening (its lock
//! dropped) while connections of clients still had read connections of the file, and the new
//! opening's connections counted on the lock SQLite believed held: another process's sqlite3
//! then found the desktop unused, checkpointed it and deleted its WAL under the server. So a
//! released lock is unlocked (`LOCK_UN`, which touches no record lock) and its descriptor kept,
//! and the next lock of the same file takes that descriptor again.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

/// Descriptors of desktops whose lock was released, by (device, inode): kept open (see the
/// module's doc) for the next lock of the same file.
static RELEASED: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// The held lock of one desktop. Dropping it releases the lock and keeps the descriptor.
#[derive(Debug)]
pub(crate) struct DesktopLock(Option<File>);

impl std::ops::Deref for DesktopLock {
    type Target = File;

    fn deref(&self) -> &File {
        self.0.as_ref().expect("a held lock has its file")
    }
}

impl Drop for DesktopLock {
    fn drop(&mut self) {
        if let Some(file) = self.0.take() {
            let _ = rustix::fs::flock(&file, rustix::fs::FlockOperation::Unlock);
            let mut released = RELEASED.lock().unwrap_or_else(|e| e.into_inner());
            released.push(file);
        }
    }
}

/// Close the kept descriptors of files no other descriptor of this process has open (no
/// SQLite connection of this process can hold a record lock on them then): a volume taken out
/// of service leaves its desktop open nowhere once its last reader is gone. Called when
/// connections let go of a closed opening's readers, when a connection ends, and after each
/// reload.
pub(crate) fn close_unused_released() {
    let mut released = RELEASED.lock().unwrap_or_else(|e| e.into_inner());
    if released.is_empty() {
        return;
    }
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    // (device, inode) of every open descriptor, the kept ones included.
    let mut open: Vec<(u64, u64)> = fds
        .filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    open.sort_unstable();
    let count =
        |key: (u64, u64)| open.partition_point(|&k| k <= key) - open.partition_point(|&k| k < key);
    // Kept: still open elsewhere in the process, and still a file someone could open by name
    // (no other process can reach a desktop with no link left, so its locks guard nothing).
    released.retain(|f| {
        f.metadata()
            .is_ok_and(|m| m.nlink() > 0 && count((m.dev(), m.ino())) > 1)
    });
}

/// A released descriptor of the file now at `path` (not following a link), taken out of the
/// list. Descriptors of files no longer at any desktop path this asks for stay kept: SQLite
/// may still read such an unlinked file in this process.
fn take_released(path: &Path) -> Option<File> {
    let now = std::fs::symlink_metadata(path).ok()?;
    let mut released = RELEASED.lock().unwrap_or_else(|e| e.into_inner());
    let at = released.iter().position(|f| {
        f.metadata()
            .is_ok_and(|m| m.dev() == now.dev() && m.ino() == now.ino())
    })?;
    Some(released.swap_remove(at))
}

use crate::error::ServerError;

/// Refuse a desktop owned by anyone but root, deskd's user or the volume owner: in a root its
/// users may write, one of them could have made the file first, and would then read (and
/// change) every record deskd keeps in it whatever its mode.
pub(crate) fn check_desktop_owner(
    lock: &File,
    path: &Path,
    root: &Path,
) -> Result<(), ServerError> {
    let owner = lock
        .metadata()
        .map_err(|source| ServerError::DesktopMetadata {
            path: path.to_path_buf(),
            source,
        })?
        .uid();
    let me = rustix::process::geteuid().as_raw();
    let volume_owner = std::fs::metadata(root).map(|m| m.uid()).ok();
    if owner == 0 || owner == me || Some(owner) == volume_owner {
        return Ok(());
    }
    Err(ServerError::DesktopOwner {
        root: root.to_path_buf(),
        path: path.to_path_buf(),
        owner,
        me,
    })
}

/// Take the exclusive lock on the desktop at `path` (creating the file if needed): one
/// writer per desktop, whichever process it is in.
pub(crate) fn lock_exclusive(path: &Path, root: &Path) -> Result<DesktopLock, ServerError> {
    if let Some(file) = take_released(path) {
        let locked = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive);
        let held = DesktopLock(Some(file));
        return match locked {
            Ok(()) => Ok(held),
            // Another process took it meanwhile (dropping `held` keeps the descriptor).
            Err(_) => Err(ServerError::DesktopBusy {
                root: root.to_path_buf(),
            }),
        };
    }
    deskd_volume::lock_desktop(path)
        .map_err(|source| ServerError::DesktopLock {
            path: path.to_path_buf(),
            source,
        })?
        .map(|file| DesktopLock(Some(file)))
        .ok_or_else(|| ServerError::DesktopBusy {
            root: root.to_path_buf(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(path_meta: &std::fs::Metadata) -> bool {
        let released = RELEASED.lock().unwrap_or_else(|e| e.into_inner());
        released.iter().any(|f| {
            f.metadata()
                .is_ok_and(|m| m.dev() == path_meta.dev() && m.ino() == path_meta.ino())
        })
    }

    /// A desktop locked and released while another descriptor of it stays open (as a SQLite
    /// connection would hold one): its metadata and that descriptor.
    fn released_while_open_elsewhere(path: &Path, dir: &Path) -> (std::fs::Metadata, File) {
        let lock = lock_exclusive(path, dir).unwrap();
        let meta = std::fs::metadata(path).unwrap();
        let other = File::open(path).unwrap();
        drop(lock);
        (meta, other)
    }

    #[test]
    fn a_released_lock_is_kept_while_the_file_is_open_elsewhere_and_closed_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".Desktop");
        let (meta, other) = released_while_open_elsewhere(&path, dir.path());
        close_unused_released();
        assert!(kept(&meta), "closed while the file was open elsewhere");
        // Locked again: the kept descriptor is taken back.
        let again = lock_exclusive(&path, dir.path()).unwrap();
        assert!(!kept(&meta));
        drop(again);
        drop(other);
        close_unused_released();
        assert!(
            !kept(&meta),
            "kept with no other descriptor of the file open"
        );
    }

    #[test]
    fn a_released_lock_of_a_removed_desktop_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".Desktop");
        let (meta, other) = released_while_open_elsewhere(&path, dir.path());
        std::fs::remove_file(&path).unwrap();
        close_unused_released();
        assert!(!kept(&meta), "kept for a file with no name left");
        drop(other);
    }
}
