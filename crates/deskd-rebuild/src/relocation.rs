//! `rebuild -f` of a volume whose desktop is still in its root while `desktop_location` names
//! a place for it: the new desktop is written there and `ROOT/.Desktop` becomes the relocation
//! symlink, as the server makes it for a new volume (HELIOS's rebuild does the same).

use std::path::{Path, PathBuf};

use crate::{Mode, Options, RebuildError};

/// Where the new desktop goes when this rebuild relocates it: only for `-f`, only when the
/// options name a location, and only when the desktop is not relocated already (a link made
/// earlier is followed, wherever it points). Creates the location's directory.
pub(crate) fn target(
    root: &Path,
    desktop: &Path,
    options: &Options,
) -> Result<Option<PathBuf>, RebuildError> {
    let Some(dir) = &options.relocate_to else {
        return Ok(None);
    };
    if options.mode != Mode::Fresh || desktop != root.join(deskd_volume::DESKTOP_FILE) {
        return Ok(None);
    }
    std::fs::create_dir_all(dir).map_err(|e| RebuildError::io(dir, e))?;
    Ok(Some(dir.join(deskd_volume::DESKTOP_FILE)))
}

/// Replace the old desktop in the root by a symlink to `target` in one rename, then drop the
/// old file's WAL. The link is made by this process (root, or deskd's user), so the server
/// follows it; a user's file at the temporary name is removed first (never followed).
pub(crate) fn link(root: &Path, old: &Path, target: &Path) -> Result<(), RebuildError> {
    let temp = root.join(".Desktop-relocate");
    match std::fs::remove_file(&temp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(RebuildError::io(&temp, e))
        }
        _ => {}
    }
    // symlink() fails rather than follow or replace anything put there meanwhile.
    std::os::unix::fs::symlink(target, &temp).map_err(|e| RebuildError::io(&temp, e))?;
    std::fs::rename(&temp, old).map_err(|e| RebuildError::io(old, e))?;
    std::fs::File::open(root)
        .and_then(|d| d.sync_all())
        .map_err(|e| RebuildError::io(root, e))?;
    for side in [deskd_db::wal_path(old), deskd_db::shm_path(old)] {
        match std::fs::remove_file(&side) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(RebuildError::io(&side, e))
            }
            _ => {}
        }
    }
    Ok(())
}
