//! Paths below a volume root made safe against symlink swaps, for tools that run as root
//! (rebuild) and write, rename or remove by path after a walk made earlier.
//!
//! Between the walk that planned a fix and the fix, a user can exchange a directory it owns
//! for a symlink to any directory (`renameat2(RENAME_EXCHANGE)`): a plain path would then
//! lead root's write, xattr or `unlink` out of the volume or into a folder closed to that
//! user. [`pin`] opens the folders of a path below the root one name at a time with
//! `openat(O_NOFOLLOW)` (no symlink anywhere on the way, never above the root) and returns
//! a path through `/proc/self/fd/N` that names the same entries for as long as the
//! [`Pinned`] lives, whatever is renamed meanwhile. The last `keep` names are left to the
//! caller, who opens them without following links (`.rsrc` and resource files are opened with
//! `O_NOFOLLOW`; xattrs are set with `lsetxattr`; `unlink` and `rename` never follow the last
//! name).

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::VolumeError;

/// A path whose folders are held open (see the module documentation).
#[derive(Debug)]
pub struct Pinned {
    _dir: OwnedFd,
    /// `/proc/self/fd/N/` followed by the names left to the caller.
    pub path: PathBuf,
}

impl Pinned {
    /// The folder held open (`O_PATH`): for `*at` calls on the names left to the caller,
    /// which cost less than a path through `/proc/self/fd`.
    pub fn dir(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self._dir.as_fd()
    }
}

/// `path` as an administrator can find it: a path through a [`Pinned`] folder
/// (`/proc/self/fd/N/...`) is given with where that folder is now (the descriptor's link), so a
/// message names the real folder, not a descriptor of the server. Call it while the descriptor
/// is open (when the message is made): a closed number may name another file by the time the
/// message is read. Other paths, and a number that is not open, are returned as they are.
pub fn shown_path(path: &Path) -> PathBuf {
    let Ok(rest) = path.strip_prefix("/proc/self/fd") else {
        return path.to_path_buf();
    };
    let mut names = rest.components();
    let Some(Component::Normal(number)) = names.next() else {
        return path.to_path_buf();
    };
    match std::fs::read_link(Path::new("/proc/self/fd").join(number)) {
        Ok(folder) if folder.is_absolute() => {
            let below = names.as_path();
            if below.as_os_str().is_empty() {
                folder
            } else {
                folder.join(below)
            }
        }
        _ => path.to_path_buf(),
    }
}

fn refused(path: &Path, why: &str) -> VolumeError {
    VolumeError::io(
        path,
        std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string()),
    )
}

fn open_at(dirfd: BorrowedFd<'_>, name: &OsStr, flags: OFlags) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dirfd,
        name,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Open the directory `rel` below `root` one name at a time (`openat` with `O_NOFOLLOW |
/// O_DIRECTORY` from the descriptor before): no symlink is followed anywhere on the way, and
/// `..` or an absolute name is refused. `read`: open the last one for reading its entries,
/// else `O_PATH`. (What `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` does, which
/// kernels before 5.6 lack.) A link on the way fails with `ELOOP` or `ENOTDIR`.
pub fn open_dir_beneath(root: &Path, rel: &Path, read: bool) -> std::io::Result<OwnedFd> {
    let last_flags = if read {
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW
    } else {
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW
    };
    let names: Vec<&OsStr> = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(std::io::Error::from_raw_os_error(libc::EXDEV)),
        })
        .collect::<Result<_, _>>()?;
    let mut fd = open_at(
        rustix::fs::CWD,
        root.as_os_str(),
        if names.is_empty() {
            last_flags - OFlags::NOFOLLOW
        } else {
            OFlags::PATH | OFlags::DIRECTORY
        },
    )?;
    for (i, name) in names.iter().enumerate() {
        let flags = if i + 1 == names.len() {
            last_flags
        } else {
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW
        };
        fd = open_at(fd.as_fd(), name, flags)?;
    }
    Ok(fd)
}

/// Hold the folders of `path` (below `root`, all names but the last `keep`) open without
/// following any symlink, and name `path` through them.
pub fn pin(root: &Path, path: &Path, keep: usize) -> Result<Pinned, VolumeError> {
    let rel = path
        .strip_prefix(root)
        .map_err(|_| refused(path, "not below the volume root"))?;
    let mut names = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => names.push(n),
            _ => return Err(refused(path, "not a plain path below the volume root")),
        }
    }
    if names.len() < keep {
        return Err(refused(path, "not below the volume root"));
    }
    let (dirs, rest) = names.split_at(names.len() - keep);
    let rel_dir: PathBuf = dirs.iter().collect();
    let dir = open_dir_beneath(root, &rel_dir, false).map_err(|e| {
        if matches!(
            e.raw_os_error(),
            Some(libc::ELOOP | libc::ENOTDIR | libc::EXDEV)
        ) {
            refused(
                path,
                "a symbolic link on the way (a folder was replaced by a link after the walk); \
                 refused",
            )
        } else {
            VolumeError::io(path, e)
        }
    })?;
    let mut pinned = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    for r in rest {
        pinned.push(r);
    }
    Ok(Pinned {
        _dir: dir,
        path: pinned,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_on_the_way_is_refused_and_a_real_folder_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vol");
        std::fs::create_dir_all(root.join("a/.rsrc")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside/.rsrc")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("l")).unwrap();
        assert!(pin(&root, &root.join("l/.rsrc/x"), 2).is_err());
        assert!(pin(&root, &root.join("l/.rsrc/x"), 1).is_err());
        let held = pin(&root, &root.join("a/.rsrc/x"), 2).unwrap();
        // Swapped after the pin: the held path still leads into the real folder.
        std::fs::rename(root.join("a"), root.join("b")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("a")).unwrap();
        std::fs::write(&held.path, b"x").unwrap();
        assert!(root.join("b/.rsrc/x").exists());
        assert!(!dir.path().join("outside/.rsrc/x").exists());
        // The root's own entries.
        assert!(pin(&root, &root.join(".rsrc/.rsrc"), 2).is_ok());
    }

    #[test]
    fn messages_name_a_pinned_folder_by_its_real_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vol");
        std::fs::create_dir_all(root.join("a/b/.rsrc")).unwrap();
        let held = pin(&root, &root.join("a/b/.rsrc/x"), 2).unwrap();
        assert!(held.path.starts_with("/proc/self/fd"), "{:?}", held.path);
        assert_eq!(shown_path(&held.path), root.join("a/b/.rsrc/x"));
        let held_dir = pin(&root, &root.join("a/b"), 0).unwrap();
        assert_eq!(shown_path(&held_dir.path), root.join("a/b"));
        // Renamed since: the folder's name now.
        std::fs::rename(root.join("a"), root.join("c")).unwrap();
        let said = crate::VolumeError::io(&held.path, std::io::ErrorKind::NotFound.into());
        assert_eq!(
            said.to_string(),
            format!("{}: entity not found", root.join("c/b/.rsrc/x").display())
        );
        // Paths not through a descriptor, or through none that is open, are left alone.
        assert_eq!(shown_path(Path::new("/a/b")), Path::new("/a/b"));
        let closed = Path::new("/proc/self/fd/999999/x");
        assert_eq!(shown_path(closed), closed);
    }
}
