//! File operations the dt verbs share: recursive copy keeping (or, for a plain `dt cp`, not
//! keeping) modes, times and owners, symlinks as symlinks, and setting times.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use crate::at;

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
///
/// The source is walked by descriptors, as cp(1) walks with fts: `from`'s folder is opened
/// once, each directory is opened without following a link and checked to be what was
/// looked at, each file is opened relative to its directory and checked the same way, and
/// what is kept (owner, mode, times) is that of the object opened. A tree whose owner swaps
/// a name for a symlink mid-copy makes the copy fail ("replaced while being copied"); it never
/// copies another file under the owner of the one looked at (docs/security.md, "dt's path
/// races").
pub fn copy_tree_with(from: &Path, to: &Path, how: CopyMode) -> io::Result<()> {
    let (dir, name) = at::open_parent(from)?;
    let (to_dir, to_name) = at::open_parent(to)?;
    copy_at(dir.as_fd(), &name, from, to_dir.as_fd(), &to_name, how)
}

/// The timestamps `utimensat(2)` takes, from `stat` fields.
fn timestamps(st: &rustix::fs::Stat) -> rustix::fs::Timestamps {
    use rustix::fs::{Timespec, Timestamps};
    Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

/// A change of owner that this user may not make is no error (as for cp -p).
fn permitted(result: rustix::io::Result<()>) -> io::Result<()> {
    match result {
        Err(rustix::io::Errno::PERM) => Ok(()),
        other => Ok(other?),
    }
}

/// [`copy_tree_with`] of `name` in the directory open at `dir` (`from` is its path, for the
/// messages and the resource-file test) to `to_name` in the directory open at `to_dir`: the
/// copy is made, and its owner, mode and times set, through descriptors too, so a folder of
/// the destination swapped for a link is never written through.
fn copy_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    from: &Path,
    to_dir: BorrowedFd<'_>,
    to_name: &OsStr,
    how: CopyMode,
) -> io::Result<()> {
    use rustix::fs::{AtFlags, Mode, OFlags};
    let replaced = |e: io::Error| {
        if e.to_string() == at::replaced().to_string() {
            io::Error::other(format!("{}: replaced while being copied", from.display()))
        } else {
            e
        }
    };
    let st = at::lstat_at(dir, name)?;
    let mode = if how.preserve {
        st.st_mode & 0o7777
    } else {
        st.st_mode & 0o777 & !how.umask
    };
    let (uid, gid) = (
        rustix::process::Uid::from_raw(st.st_uid),
        rustix::process::Gid::from_raw(st.st_gid),
    );
    if at::is_symlink(&st) {
        let target = rustix::fs::readlinkat(dir, name, Vec::new())?;
        rustix::fs::symlinkat(target.as_c_str(), to_dir, to_name)?;
        if how.preserve {
            permitted(rustix::fs::chownat(
                to_dir,
                to_name,
                Some(uid),
                Some(gid),
                AtFlags::SYMLINK_NOFOLLOW,
            ))?;
            rustix::fs::utimensat(to_dir, to_name, &timestamps(&st), AtFlags::SYMLINK_NOFOLLOW)?;
        }
        return Ok(());
    }
    let made = if at::is_dir(&st) {
        let source = at::open_dir_checked(dir, name, &st).map_err(replaced)?;
        // Closed to others until its mode is set, after its entries.
        rustix::fs::mkdirat(to_dir, to_name, Mode::from_raw_mode(0o700))?;
        let made = at::open_dir_at(to_dir, to_name).map_err(|e| {
            if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) {
                io::Error::other(format!("{}: replaced while being copied", from.display()))
            } else {
                e
            }
        })?;
        for entry in at::names(source.as_fd())? {
            copy_at(
                source.as_fd(),
                &entry,
                &from.join(&entry),
                made.as_fd(),
                &entry,
                how,
            )?;
        }
        fs::File::from(made)
    } else {
        at::race_pause("cp-open");
        let mut source = fs::File::from(at::open_checked(dir, name, &st).map_err(replaced)?);
        // O_EXCL: the copy must not exist, and a link planted there (even a dangling one) must
        // not be written through. std's copy still uses copy_file_range or sendfile.
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut dest = fs::File::from(rustix::fs::openat(
            to_dir,
            to_name,
            flags,
            Mode::from_raw_mode(0o600),
        )?);
        if how.fresh_ids && crate::fresh_ids::is_resource_file(from) {
            crate::fresh_ids::copy_cleared(&mut source, &mut dest)?;
        } else {
            io::copy(&mut source, &mut dest)?;
        }
        dest
    };
    // Owner first: a change of owner clears set-ID bits.
    if how.preserve {
        permitted(rustix::fs::fchown(&made, Some(uid), Some(gid)))?;
    }
    rustix::fs::fchmod(&made, Mode::from_raw_mode(mode))?;
    if how.preserve {
        rustix::fs::futimens(&made, &timestamps(&st))?;
    }
    Ok(())
}

/// Remove `path`, whatever it is (a directory with everything below it): its folder is
/// resolved once, everything after goes by descriptors and never through a symlink
/// ([`crate::at::remove_at`]).
pub fn remove_any(path: &Path) -> io::Result<()> {
    crate::at::remove_path(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt};

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
