//! The exclusive lock that makes a writer the only one of its desktop, and the owner check
//! made on the locked file before anything in it is trusted.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

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
pub(crate) fn lock_exclusive(path: &Path, root: &Path) -> Result<File, ServerError> {
    deskd_volume::lock_desktop(path)
        .map_err(|source| ServerError::DesktopLock {
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| ServerError::DesktopBusy {
            root: root.to_path_buf(),
        })
}
