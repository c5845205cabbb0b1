//! File operations the dt verbs share: recursive copy keeping modes, times and symlinks, and
//! setting times.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Set access and modification times of `path` (not following a final symlink); `None` = now.
pub fn set_times(path: &Path, times: Option<(i64, i64, i64, i64)>) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let ts = times.map(|(a, an, m, mn)| {
        [
            libc::timespec {
                tv_sec: a as _,
                tv_nsec: an as _,
            },
            libc::timespec {
                tv_sec: m as _,
                tv_nsec: mn as _,
            },
        ]
    });
    let ptr = ts.as_ref().map_or(std::ptr::null(), |t| t.as_ptr());
    // SAFETY: `c` is a valid NUL-terminated path; `ptr` is null or points at two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ptr, libc::AT_SYMLINK_NOFOLLOW) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn times_of(m: &fs::Metadata) -> (i64, i64, i64, i64) {
    (m.atime(), m.atime_nsec(), m.mtime(), m.mtime_nsec())
}

/// Copy `from` to `to` (which must not exist): files with mode and times, directories
/// recursively, symlinks as symlinks.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        symlink(fs::read_link(from)?, to)?;
    } else if ft.is_dir() {
        fs::create_dir(to)?;
        let mut entries: Vec<_> = fs::read_dir(from)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
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
        io::copy(&mut source, &mut dest)?;
        dest.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    set_times(to, Some(times_of(&meta)))
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
