//! File operations the dt verbs share: recursive copy keeping (or, for a plain `dt cp`, not
//! keeping) modes, times and owners, symlinks as symlinks, and setting times.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Set access and modification times of `path` (not following a final symlink); `None` = now.
pub fn set_times(path: &Path, times: Option<(i64, i64, i64, i64)>) -> io::Result<()> {
    use rustix::fs::{Timespec, Timestamps, UTIME_NOW};
    // Both UTIME_NOW is what a null `times` means to utimensat(2), permission checks included.
    let (a, an, m, mn) = times.unwrap_or((0, UTIME_NOW, 0, UTIME_NOW));
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: a as _,
            tv_nsec: an as _,
        },
        last_modification: Timespec {
            tv_sec: m as _,
            tv_nsec: mn as _,
        },
    };
    let flags = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
    Ok(rustix::fs::utimensat(rustix::fs::CWD, path, &times, flags)?)
}

fn times_of(m: &fs::Metadata) -> (i64, i64, i64, i64) {
    (m.atime(), m.atime_nsec(), m.mtime(), m.mtime_nsec())
}

/// What a copy keeps of the original.
#[derive(Debug, Clone, Copy)]
pub struct CopyMode {
    /// Keep modes (set-ID bits too), times and, as root, owners — `cp -p`, and every move.
    /// Otherwise modes lose the umask's bits and the times are the copy's own, as cp(1) does.
    pub preserve: bool,
    /// The umask a copy without `preserve` applies.
    pub umask: u32,
    /// Resource files are copied with their ID cleared (before any byte is written), so a copy
    /// arriving in a volume carries no ID of where it came from, even when interrupted: such a
    /// copy gets new IDs ([`crate::fresh_ids`]).
    pub fresh_ids: bool,
}

impl CopyMode {
    /// What a move keeps: everything.
    pub const MOVE: CopyMode = CopyMode {
        preserve: true,
        umask: 0,
        fresh_ids: false,
    };

    /// What a move into another volume keeps: everything but the IDs.
    pub const ARRIVING: CopyMode = CopyMode {
        fresh_ids: true,
        ..CopyMode::MOVE
    };
}

/// Copy `from` to `to` (which must not exist) keeping everything, as a move does: files with
/// mode, times and (as root) owner, directories recursively, symlinks as symlinks.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    copy_tree_with(from, to, CopyMode::MOVE)
}

/// Copy `from` to `to` (which must not exist), keeping what `how` says.
pub fn copy_tree_with(from: &Path, to: &Path, how: CopyMode) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    let ft = meta.file_type();
    let mode = if how.preserve {
        meta.mode() & 0o7777
    } else {
        meta.mode() & 0o777 & !how.umask
    };
    if ft.is_symlink() {
        symlink(fs::read_link(from)?, to)?;
    } else if ft.is_dir() {
        fs::create_dir(to)?;
        let mut entries: Vec<_> = fs::read_dir(from)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            copy_tree_with(&entry.path(), &to.join(entry.file_name()), how)?;
        }
        // Owner first: a change of owner clears set-ID bits.
        if how.preserve {
            keep_owner(to, &meta)?;
        }
        fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    } else {
        // O_EXCL: `to` must not exist, and a link planted there (even a dangling one) must not
        // be written through. std's copy still uses copy_file_range or sendfile.
        let mut source = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(from)?;
        let mut dest = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(to)?;
        if how.fresh_ids && crate::fresh_ids::is_resource_file(from) {
            crate::fresh_ids::copy_cleared(&mut source, &mut dest)?;
        } else {
            io::copy(&mut source, &mut dest)?;
        }
        if how.preserve {
            keep_owner(to, &meta)?;
        }
        dest.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    if !how.preserve {
        return Ok(());
    }
    if ft.is_symlink() {
        keep_owner(to, &meta)?;
    }
    set_times(to, Some(times_of(&meta)))
}

/// Give `to` the owner and group of `meta`, where the caller may (root may; others may only
/// choose among their own groups, so a refusal is not an error, as for cp -p).
pub fn keep_owner(to: &Path, meta: &fs::Metadata) -> io::Result<()> {
    match std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid())) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(()),
        other => other,
    }
}

/// Remove `path`, whatever it is (a directory with everything below it).
pub fn remove_any(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_tree_keeps_structure_and_times() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("a/b/f"), b"data").unwrap();
        symlink("a/b/f", src.join("link")).unwrap();
        set_times(&src.join("a/b/f"), Some((1000, 0, 2000, 0))).unwrap();
        copy_tree(&src, &d.path().join("dst")).unwrap();
        let dst = d.path().join("dst");
        assert_eq!(fs::read(dst.join("a/b/f")).unwrap(), b"data");
        assert_eq!(fs::metadata(dst.join("a/b/f")).unwrap().mtime(), 2000);
        assert_eq!(fs::read_link(dst.join("link")).unwrap(), Path::new("a/b/f"));
        remove_any(&dst).unwrap();
        assert!(!dst.exists());
    }
}
