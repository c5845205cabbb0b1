//! The private directories deskd keeps in the temp directory (`$TMPDIR/desksrv.XXXXXX`, as
//! HELIOS's desktop server names its temporary desktops): the temporary desktop of a volume
//! served read-only that deskd may not write, and the copy a volume on a full disk is read from.
//!
//! Each opening of a volume that needs one gets its own: a random name made with `O_EXCL`
//! (no one can take it first), mode 0700, holding a marker file (`deskd.pid`) that the
//! opening keeps locked (`flock`) for as long as it lives. It is removed when the opening
//! closes (a clean stop, a reload that reopens the volume). A server that died without a
//! clean stop leaves its directories behind; the next start removes those of its own uid
//! whose marker no live process holds ([`remove_leftovers`]): never a directory of another
//! user, one that is not private, a symlink, or one a live deskd still holds.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, Mode, OFlags};
use tracing::{info, warn};

/// The start of every such directory's name.
pub(crate) const PREFIX: &str = "desksrv.";

/// The marker file: the pid of the deskd that made the directory, locked while it lives.
const MARKER: &str = "deskd.pid";

/// A private directory in the temp directory, removed with [`PrivateTemp::remove`] (or when
/// dropped).
#[derive(Debug)]
pub(crate) struct PrivateTemp {
    path: PathBuf,
    /// The locked marker; None once removed.
    marker: Option<File>,
}

impl PrivateTemp {
    /// A new private directory under the temp directory.
    pub(crate) fn new() -> io::Result<PrivateTemp> {
        Self::new_in(&std::env::temp_dir())
    }

    fn new_in(parent: &Path) -> io::Result<PrivateTemp> {
        let path = tempfile::Builder::new()
            .prefix(PREFIX)
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(parent)?
            .keep();
        // From here on, a failure removes what was made.
        let mut made = PrivateTemp { path, marker: None };
        // The umask may have taken bits the mode asked for; no other bits were ever there.
        std::fs::set_permissions(&made.path, std::fs::Permissions::from_mode(0o700))?;
        let mut marker = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(made.path.join(MARKER));
        if let Ok(file) = &mut marker {
            // Locked before the pid is written: a marker with a pid in it that no one holds is
            // one whose server is gone (see `dead_owner`).
            rustix::fs::flock(&*file, FlockOperation::LockExclusive)?;
            write!(file, "{}", std::process::id())?;
        }
        match marker {
            Ok(file) => {
                made.marker = Some(file);
                Ok(made)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&made.path);
                Err(e)
            }
        }
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Remove the directory and everything in it (readers that still have a file open keep
    /// reading the unlinked file).
    pub(crate) fn remove(&mut self) {
        if let Some(marker) = self.marker.take() {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                warn!("{}: cannot remove: {e}", self.path.display());
            }
            drop(marker);
        }
    }
}

impl Drop for PrivateTemp {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Remove the private directories deskd servers of this uid left in the temp directory when
/// they died without a clean stop. Returns how many were removed.
pub(crate) fn remove_leftovers() -> usize {
    remove_leftovers_in(&std::env::temp_dir())
}

fn remove_leftovers_in(parent: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let me = rustix::process::geteuid().as_raw();
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(PREFIX.as_bytes())
        {
            continue;
        }
        let path = entry.path();
        // Held locked while the directory goes: no deskd can be starting to use it.
        let Some((pid, _held)) = dead_owner(&path, me) else {
            continue;
        };
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                removed += 1;
                info!(
                    "{}: removed, left by deskd (pid {pid}) that ended without a clean stop",
                    path.display()
                );
            }
            Err(e) => warn!("{}: cannot remove a leftover: {e}", path.display()),
        }
    }
    removed
}

/// The pid in the marker of `dir` and the marker locked, when `dir` is a private directory
/// of uid `me` (not a symlink) whose marker no live process holds; None for anything else.
fn dead_owner(dir: &Path, me: u32) -> Option<(String, rustix::fd::OwnedFd)> {
    let mine = |st: &rustix::fs::Stat| st.st_uid == me && st.st_mode & 0o077 == 0;
    // O_NOFOLLOW: a symlink named like one of ours is not followed; the checks are made on
    // what was opened, not on the name.
    let dirfd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    if !mine(&rustix::fs::fstat(&dirfd).ok()?) {
        return None;
    }
    let marker = rustix::fs::openat(
        &dirfd,
        MARKER,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let st = rustix::fs::fstat(&marker).ok()?;
    if !mine(&st)
        || rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile
    {
        return None;
    }
    rustix::fs::flock(&marker, FlockOperation::NonBlockingLockExclusive).ok()?;
    let mut pid = String::new();
    File::from(marker.try_clone().ok()?)
        .take(32)
        .read_to_string(&mut pid)
        .ok()?;
    // Empty: a server is between making the marker and locking it.
    (!pid.trim().is_empty()).then(|| (pid.trim().to_string(), marker))
}

/// Whether the file system holding `path` is mounted read-only.
pub(crate) fn on_read_only_fs(path: &Path) -> bool {
    rustix::fs::statvfs(path)
        .is_ok_and(|st| st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_live_directory_is_kept_and_a_dead_ones_removed() {
        let parent = tempfile::tempdir().unwrap();
        let mut live = PrivateTemp::new_in(parent.path()).unwrap();
        let mode = std::fs::metadata(live.path()).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(remove_leftovers_in(parent.path()), 0);
        assert!(live.path().is_dir());
        // A server killed: its lock goes with it, the directory stays.
        let dead = live.path().to_path_buf();
        drop(live.marker.take());
        assert!(dead.is_dir());
        assert_eq!(remove_leftovers_in(parent.path()), 1);
        assert!(!dead.exists());
    }

    #[test]
    fn what_is_not_a_private_directory_of_deskd_is_left_alone() {
        let parent = tempfile::tempdir().unwrap();
        let p = parent.path();
        // Open to others, with a marker no one holds.
        let open = p.join("desksrv.open");
        std::fs::create_dir(&open).unwrap();
        std::fs::write(open.join(MARKER), "1").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        // No marker.
        let bare = p.join("desksrv.bare");
        std::fs::create_dir(&bare).unwrap();
        std::fs::set_permissions(&bare, std::fs::Permissions::from_mode(0o700)).unwrap();
        // A symlink to a dead-looking directory elsewhere.
        let target = tempfile::tempdir().unwrap();
        std::fs::set_permissions(target.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(target.path().join(MARKER), "1").unwrap();
        std::os::unix::fs::symlink(target.path(), p.join("desksrv.link")).unwrap();
        assert_eq!(remove_leftovers_in(p), 0);
        assert!(open.join(MARKER).exists() && bare.exists());
        assert!(target.path().join(MARKER).exists());
    }
}
