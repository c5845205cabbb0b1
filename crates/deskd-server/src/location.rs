//! Where a volume's desktop lives: in the root, relocated under `desktop_location` (the
//! root's `.Desktop` a symlink to it), or, for a read-only volume deskd may not write (on a
//! read-only file system, say), a temporary desktop in a private directory under the temp
//! directory ([`crate::private_temp`]); and the private copies those need.
//! Kept apart from the volume handle so that [`crate::space`] can make its full-disk copies
//! with the same rules without depending on the handle.

use std::path::{Path, PathBuf};

use deskd_db::Read;

use crate::config::VolumeConfig;
use crate::error::ServerError;
use crate::private_temp::PrivateTemp;

/// Where the desktop of `root` lives, creating the relocation symlink for a new volume.
pub(crate) fn desktop_path(cfg: &VolumeConfig, root: &Path) -> Result<PathBuf, ServerError> {
    let in_root = root.join(deskd_volume::DESKTOP_FILE);
    let root_buf = || root.to_path_buf();
    match deskd_volume::desktop_link(root) {
        Err(source) => Err(ServerError::DesktopLink {
            root: root_buf(),
            source,
        }),
        // Relocated: the target's directory must exist.
        Ok(Some(target)) => match target.parent() {
            Some(dir) if dir.is_dir() => Ok(target),
            _ => Err(ServerError::RelocationMissing { root: root_buf() }),
        },
        Ok(None) if std::fs::symlink_metadata(&in_root).is_ok() => {
            // Moving a desktop is rebuild -f's job (with --config); say so, as a reload does.
            if cfg.desktop_location.is_some() {
                tracing::info!(
                    "{}: desktop_location applies only to a volume that has no desktop yet; \
                     this one stays at {}",
                    root.display(),
                    in_root.display()
                );
            }
            Ok(in_root)
        }
        Ok(None) => match &cfg.desktop_location {
            None => Ok(in_root),
            Some(location) => {
                let rel = root.strip_prefix("/").unwrap_or(root);
                let dir = location.join(rel);
                std::fs::create_dir_all(&dir).map_err(|source| ServerError::DesktopDir {
                    dir: dir.clone(),
                    source,
                })?;
                let target = dir.join(deskd_volume::DESKTOP_FILE);
                std::os::unix::fs::symlink(&target, &in_root).map_err(|source| {
                    ServerError::DesktopSymlink {
                        link: in_root.clone(),
                        source,
                    }
                })?;
                Ok(target)
            }
        },
    }
}

/// Where a read-only volume's desktop is: the volume's own `.Desktop`, or a temporary one.
#[derive(Debug)]
pub(crate) struct ReadOnlyDesktop {
    /// The desktop the server opens.
    pub path: PathBuf,
    /// The private directory holding a temporary desktop (None: the volume's own).
    pub temp: Option<PrivateTemp>,
    /// The temporary desktop started as a copy of the volume's own (IDs as recorded).
    pub copied: bool,
}

/// For a read-only volume: the volume's own `.Desktop` (at `path`) when deskd may write it (or
/// create it, so that dt and other tools recognise the volume) and its file system is not
/// mounted read-only (`fs_read_only`); else a temporary desktop in a new private directory
/// under the temp directory ([`PrivateTemp`]): a copy of the volume's own when that is a valid
/// desktop (its IDs as recorded), or a new one.
pub(crate) fn read_only_desktop(
    path: &Path,
    root: &Path,
    fs_read_only: bool,
) -> Result<ReadOnlyDesktop, ServerError> {
    let writable = !fs_read_only
        && if path.exists() {
            // Asked of the kernel, not by opening the file: this process may have the desktop
            // open in SQLite (a reload reopening the volume while connections of the old
            // opening still read it), and closing any descriptor of a file drops every POSIX
            // lock the process holds on it. Without its locks another process (sqlite3, a
            // backup tool) could take the desktop as unused, checkpoint it and delete the WAL
            // under the server. With the effective IDs, as an open would check.
            rustix::fs::accessat(
                rustix::fs::CWD,
                path,
                rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
                rustix::fs::AtFlags::EACCESS,
            )
            .is_ok()
        } else {
            rustix::fs::access(root, rustix::fs::Access::WRITE_OK).is_ok()
        };
    if writable {
        return Ok(ReadOnlyDesktop {
            path: path.to_path_buf(),
            temp: None,
            copied: false,
        });
    }
    let temp = PrivateTemp::new().map_err(|source| ServerError::PrivateDir {
        dir: std::env::temp_dir(),
        source,
    })?;
    let copy = temp.path().join(deskd_volume::DESKTOP_FILE);
    let copy_err = |source| ServerError::DesktopCopy {
        path: copy.clone(),
        source,
    };
    let mut copied = false;
    if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > 0) {
        // The WAL too: on read-only media the committed frames in it cannot be folded in.
        copy_private(path, &copy).map_err(copy_err)?;
        let wal = deskd_db::wal_path(path);
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
            copy_private(&wal, &deskd_db::wal_path(&copy)).map_err(copy_err)?;
        }
        // Checked on the copy (the original's -shm cannot be made on read-only media).
        copied = deskd_db::Reader::open(&copy)
            .and_then(|r| r.stats())
            .is_ok();
        if !copied {
            tracing::warn!(
                "{}: not a valid desktop; the temporary desktop starts empty",
                path.display()
            );
            for f in [
                copy.clone(),
                deskd_db::wal_path(&copy),
                deskd_db::shm_path(&copy),
            ] {
                let _ = std::fs::remove_file(f);
            }
        }
    }
    Ok(ReadOnlyDesktop {
        path: copy,
        temp: Some(temp),
        copied,
    })
}

/// Where the desktop of `root`, on a file system mounted read-only, is, without creating
/// anything: the target of its relocation symlink, else `.Desktop` in the root.
pub(crate) fn existing_desktop_path(root: &Path) -> Result<PathBuf, ServerError> {
    match deskd_volume::desktop_link(root) {
        Err(source) => Err(ServerError::DesktopLink {
            root: root.to_path_buf(),
            source,
        }),
        Ok(Some(target)) => Ok(target),
        Ok(None) => Ok(root.join(deskd_volume::DESKTOP_FILE)),
    }
}

/// Copy the desktop `from` to the new file `to`, mode 0600 whatever `from`'s mode is. Neither
/// is followed if it is a symlink: in a root its users may write, `from` could be one put there
/// to have deskd serve (and a user query) another desktop deskd may read.
pub(crate) fn copy_private(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut source = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(from)?;
    let mut dest = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(to)?;
    std::io::copy(&mut source, &mut dest)?;
    dest.sync_all()
}

/// A read connection to `path`, immutable or not, within the server's mapping budget and
/// counted in `count` (see [`crate::volume::VolumeHandle::open_reader`]).
pub(crate) fn open_reader_at(
    path: &Path,
    immutable: bool,
    count: &std::sync::Arc<std::sync::atomic::AtomicU32>,
) -> deskd_db::Result<crate::mapped_reader::MappedReader> {
    crate::mapped_reader::MappedReader::open(path, immutable, crate::mmap_budget::global(), count)
}
