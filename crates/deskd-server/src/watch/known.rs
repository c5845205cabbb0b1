//! Creates the desktop already has, dropped before the batch takes the writer.
//!
//! Most objects a client makes itself (afpd's folders, `dt mkdir`, a file `dt cp` copied) are
//! registered by that client's own request before the watcher's batch settles. Applying such a
//! `Created` changes nothing, but it takes the writer's lock and a transaction, and a client's
//! lone write arriving meanwhile is queued for the writer's thread instead of being committed by
//! its own (a wake-up each: lantest's tree of 1,000 folders through afpd lost 15 % to it). So a
//! create whose path the desktop already records with the inode the disk now shows there is
//! dropped here, on a read connection; a folder only when it holds nothing yet (its entries may
//! have been folded into its create by the watcher's coalescing). Anything else, and every
//! other kind of change, goes to the writer, which verifies it as before: a wrong guess here
//! can only send a no-op to the writer, or leave an object that moved meanwhile to the next
//! batch's change for it. Nothing is written here.

use std::os::unix::ffi::OsStrExt;

use deskd_db::Read;
use deskd_watch::Change;
use rustix::fs::{AtFlags, FileType, CWD};

use super::Running;
use crate::volume::VolumeHandle;

/// `changes` without the creates the desktop already has, read through the watcher's read
/// connection. Any error keeps the change.
pub(super) fn drop_known(
    running: &Running,
    handle: &VolumeHandle,
    changes: Vec<Change>,
) -> Vec<Change> {
    if !changes.iter().any(|c| matches!(c, Change::Created { .. })) {
        return changes;
    }
    let root = handle.volume.root();
    running.with_reader(handle, |reader| {
        let Some(reader) = reader else {
            return changes;
        };
        changes
            .into_iter()
            .filter(|change| {
                let Change::Created { path, dir } = change else {
                    return true;
                };
                !known(&**reader, root, path, *dir)
            })
            .collect()
    })
}

/// Whether the desktop records the object now at `path` (same inode), and, for a folder,
/// whether it is still empty (only a `.rsrc` in it).
fn known(reader: &impl Read, root: &std::path::Path, path: &std::path::Path, dir: bool) -> bool {
    // The names as the writer reads them: deskd's own, `..` or the root are not dropped here.
    let Some(names) = crate::apply::watched::components(path).filter(|n| !n.is_empty()) else {
        return false;
    };
    let names: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
    let Ok(Some(id)) = reader.id_of_path(&names) else {
        return false;
    };
    let Ok(object) = reader.get(id) else {
        return false;
    };
    let full = root.join(path);
    let Ok(stat) = rustix::fs::statat(CWD, &full, AtFlags::SYMLINK_NOFOLLOW) else {
        return false;
    };
    let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
    if is_dir != dir
        || object.dev == 0
        || object.dev != stat.st_dev
        || object.ino != stat.st_ino
        || (object.kind == deskd_db::Kind::Dir) != is_dir
    {
        return false;
    }
    if !is_dir {
        return true;
    }
    match std::fs::read_dir(&full) {
        Ok(entries) => entries
            .take(2)
            .all(|e| e.is_ok_and(|e| e.file_name().as_bytes() == b".rsrc")),
        Err(_) => false,
    }
}
