//! Where a volume's desktop lives: in the root, relocated under `desktop_location` (the
//! root's `.Desktop` a symlink to it), or, for a read-only volume deskd may not write, a
//! private copy under the temp directory; and the private directories and copies those need.
//! Kept apart from the volume handle so that [`crate::space`] can make its full-disk copies
//! with the same rules without depending on the handle.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use deskd_db::Read;

use crate::config::VolumeConfig;
use crate::error::ServerError;

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

/// For a read-only volume: the volume's own `.Desktop` when deskd may write it (or create it,
/// so that dt and other tools recognise the volume), else a temporary copy (or a new temporary
/// desktop) under the temp directory named `desksrv…`.
pub(crate) fn read_only_desktop(path: &Path, root: &Path) -> Result<PathBuf, ServerError> {
    let writable = if path.exists() {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .is_ok()
    } else {
        rustix::fs::access(root, rustix::fs::Access::WRITE_OK).is_ok()
    };
    if writable {
        return Ok(path.to_path_buf());
    }
    let dir = std::env::temp_dir().join(format!(
        "desksrv.{}.{}",
        std::process::id(),
        root.as_os_str()
            .as_bytes()
            .iter()
            .fold(0u32, |h, &b| h.wrapping_mul(31).wrapping_add(b as u32))
    ));
    private_dir(&dir)?;
    let temp = dir.join(deskd_volume::DESKTOP_FILE);
    if path.exists() && !temp.exists() {
        // A valid desktop on read-only media: work on a copy so IDs stay as recorded.
        if deskd_db::Reader::open(path).and_then(|r| r.stats()).is_ok() {
            copy_private(path, &temp).map_err(|source| ServerError::DesktopCopy {
                path: temp.clone(),
                source,
            })?;
        }
    }
    Ok(temp)
}

/// Make `dir` (in the shared temp directory, whose names anyone can take first) a directory
/// only deskd's user can enter: created 0700, or, when it is there already, refused unless it
/// is a real directory of deskd's user that no one else may enter.
pub(crate) fn private_dir(dir: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let refuse = |source| ServerError::PrivateDir {
        dir: dir.to_path_buf(),
        source,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(refuse(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(refuse)?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me || meta.permissions().mode() & 0o077 != 0 {
        return Err(ServerError::NotPrivate {
            dir: dir.to_path_buf(),
            me,
            owner: meta.uid(),
            mode: meta.permissions().mode() & 0o7777,
        });
    }
    Ok(())
}

/// Copy the desktop `from` to the new file `to`, mode 0600 whatever `from`'s mode is.
pub(crate) fn copy_private(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut source = File::open(from)?;
    let mut dest = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(to)?;
    std::io::copy(&mut source, &mut dest)?;
    dest.sync_all()
}

/// A read connection to `path`, immutable or not (see [`crate::volume::VolumeHandle::open_reader`]).
pub(crate) fn open_reader_at(path: &Path, immutable: bool) -> deskd_db::Result<deskd_db::Reader> {
    if immutable {
        deskd_db::Reader::open_immutable(path)
    } else {
        deskd_db::Reader::open(path)
    }
}
