//! Working on files by open directory descriptors rather than by path names, as fts(3) and
//! coreutils do, so that a user who may write a folder on the way cannot turn what root's `dt`
//! does there against another file by swapping a name for a symlink between two steps
//! (docs/security.md, "dt's path races"). An operand is resolved once to a descriptor of the
//! directory holding it; everything after is relative to that descriptor, never follows a
//! symlink (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`) and checks, before it descends into a
//! directory, that what it opened is what it looked at (device and inode).
//!
//! Also the test hook that makes dt wait at such a step ([`race_pause`]).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, Stat};

/// The error for an object that is not what was looked at a moment before.
pub fn replaced() -> io::Error {
    io::Error::other("replaced while being worked on")
}

/// Whether two stats are of the same object.
pub fn same(a: &Stat, b: &Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// Whether `st` is a directory.
pub fn is_dir(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Whether `st` is a symlink.
pub fn is_symlink(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

/// `name` in `dir`, not following a final symlink.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Stat> {
    Ok(rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// Open directory `name` in `dir`: never through a symlink.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?)
}

/// Open directory `name` in `dir` to walk through it (`O_PATH`: search permission is enough,
/// as for a path), never through a symlink.
pub fn walk_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?)
}

/// The path through `/proc/self/fd` of the object open at `fd`: a change of mode or owner by
/// this path reaches that very object (also for an `O_PATH` descriptor).
pub fn fd_path(fd: BorrowedFd<'_>) -> std::path::PathBuf {
    use std::os::fd::AsRawFd;
    std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Open directory `name` in `dir` and require it to be the object `seen` (a stat taken
/// before): the descriptor then leads where the name led when it was looked at.
pub fn open_dir_checked(dir: BorrowedFd<'_>, name: &OsStr, seen: &Stat) -> io::Result<OwnedFd> {
    let fd = match open_dir_at(dir, name) {
        // A symlink, or something not a directory, in its place.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            return Err(replaced())
        }
        other => other?,
    };
    if !same(&rustix::fs::fstat(&fd)?, seen) {
        return Err(replaced());
    }
    Ok(fd)
}

/// Open anything but a symlink named `name` in `dir` for reading (a FIFO or device without
/// blocking), and require it to be the object `seen`.
pub fn open_checked(dir: BorrowedFd<'_>, name: &OsStr, seen: &Stat) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
    let flags = if seen.st_mode & libc::S_IFMT == libc::S_IFREG || is_dir(seen) {
        flags
    } else {
        flags | OFlags::NONBLOCK
    };
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Err(e) if e.raw_os_error() == libc::ELOOP => return Err(replaced()),
        other => other?,
    };
    if !same(&rustix::fs::fstat(&fd)?, seen) {
        return Err(replaced());
    }
    Ok(fd)
}

/// The directory holding `path` (opened by its path, once: the operand as the user named it)
/// and the name of `path` in it.
pub fn open_parent(path: &Path) -> io::Result<(OwnedFd, OsString)> {
    let (parent, name) = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => (parent.to_path_buf(), name.to_os_string()),
        // `..`, `/`: the real name, from the canonical path.
        _ => {
            let canonical = fs::canonicalize(path)?;
            match (canonical.parent(), canonical.file_name()) {
                (Some(parent), Some(name)) => (parent.to_path_buf(), name.to_os_string()),
                _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
            }
        }
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".").to_path_buf()
    } else {
        parent
    };
    // O_PATH: search permission is enough (a drop box may be written, not read).
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(rustix::fs::CWD, &parent, flags, Mode::empty())?;
    Ok((fd, name))
}

/// `name` in `dir` opened `O_PATH` (for a change of mode or owner through
/// `/proc/self/fd/N`, or `fstat`): a final symlink followed only with `follow`, else opened as
/// itself.
pub fn open_path_at(dir: BorrowedFd<'_>, name: &OsStr, follow: bool) -> io::Result<OwnedFd> {
    let mut flags = OFlags::PATH | OFlags::CLOEXEC;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    Ok(rustix::fs::openat(dir, name, flags, Mode::empty())?)
}

/// The names in the directory open at `dir` (not `.` and `..`), sorted.
pub fn names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut listing = rustix::fs::Dir::read_from(dir)?;
    let mut names = Vec::new();
    while let Some(entry) = listing.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Remove `name` in `dir`, whatever it is: a directory with everything below it, walked by
/// descriptors; a symlink is removed, never followed.
pub fn remove_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let st = lstat_at(dir, name)?;
    if is_dir(&st) {
        let sub = open_dir_checked(dir, name, &st)?;
        empty_dir(sub.as_fd())?;
        Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
    } else {
        Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?)
    }
}

/// Remove everything in the directory open at `dir`.
pub fn empty_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    for name in names(dir)? {
        match remove_at(dir, &name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

/// Remove `path` whatever it is: its folder is resolved once, then [`remove_at`].
pub fn remove_path(path: &Path) -> io::Result<()> {
    let (dir, name) = open_parent(path)?;
    remove_at(dir.as_fd(), &name)
}

/// Test hook (feature `test-hooks` only): with `DESKD_TEST_DT_PAUSE=<point>:<file>`, dt says
/// `dt: test pause at <point>` on stderr when it reaches `point` and waits there until `file`
/// exists, so a test can change the file system at exactly that step and then let it go on.
#[cfg(feature = "test-hooks")]
pub fn race_pause(point: &str) {
    let Ok(value) = std::env::var("DESKD_TEST_DT_PAUSE") else {
        return;
    };
    let Some((at, file)) = value.split_once(':') else {
        return;
    };
    let file = Path::new(file);
    if at != point || file.exists() {
        return;
    }
    eprintln!("dt: test pause at {point}");
    while !file.exists() {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Without the `test-hooks` feature the hook is compiled out (release binaries hold none).
#[cfg(not(feature = "test-hooks"))]
pub fn race_pause(_point: &str) {}

/// A name pinned to the directory that held it when it was resolved: the directory stays
/// open, and [`Pinned::path`] leads through `/proc/self/fd` to that very directory, so only
/// the last name is looked up again when the path is used. What the folder's owner does to
/// the names on the way afterwards (a folder swapped for a symlink to another place) changes
/// nothing about where it leads.
#[derive(Debug)]
pub struct Pinned {
    dir: OwnedFd,
    name: OsString,
    /// The folder's `.rsrc`, once opened without following a link ([`Pinned::rsrc_dir`]).
    rsrc: std::sync::OnceLock<OwnedFd>,
}

impl Pinned {
    /// The directory's own path through its descriptor.
    fn dir_path(&self) -> std::path::PathBuf {
        fd_path(self.dir.as_fd())
    }

    /// The pinned name's path (through the open directory).
    pub fn path(&self) -> std::path::PathBuf {
        self.dir_path().join(&self.name)
    }

    /// The folder's `.rsrc`, opened without following a link: None while there is none. A
    /// symlink (or anything not a directory) in its place is refused: the folder's owner could
    /// point it at any directory, and a resource file moved, copied or removed through it
    /// would be another file of that name there (review 2, finding 3).
    pub fn rsrc_dir(&self) -> io::Result<Option<BorrowedFd<'_>>> {
        if let Some(fd) = self.rsrc.get() {
            return Ok(Some(fd.as_fd()));
        }
        match walk_dir_at(self.dir.as_fd(), OsStr::new(deskd_volume::rsrc::RSRC_DIR)) {
            Ok(fd) => {
                let _ = self.rsrc.set(fd);
                Ok(self.rsrc.get().map(|fd| fd.as_fd()))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                Err(io::Error::other(format!(
                    "{}: a symbolic link where a real .rsrc directory belongs; refused (move it \
                     away, then run deskd rebuild)",
                    readable(
                        &self
                            .dir_path()
                            .join(deskd_volume::rsrc::RSRC_DIR)
                            .to_string_lossy()
                    )
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Refuse a `.rsrc` that is not a real directory ([`Pinned::rsrc_dir`]).
    pub fn check_rsrc(&self) -> io::Result<()> {
        self.rsrc_dir().map(|_| ())
    }

    /// The path of the pinned object's resource file, in its directory's `.rsrc` (through the
    /// pinned folder: the resource-file code checks that `.rsrc` there is a real directory
    /// before it writes). Where a link or a file stands in place of `.rsrc`, a path no call can
    /// use (it holds a NUL byte: refused before any system call), so that nothing is renamed,
    /// removed or read through it; callers that must say so ask [`Pinned::check_rsrc`] first.
    pub fn rsrc_path(&self) -> std::path::PathBuf {
        match self.rsrc_dir() {
            Ok(_) => self
                .dir_path()
                .join(deskd_volume::rsrc::RSRC_DIR)
                .join(&self.name),
            Err(_) => {
                use std::os::unix::ffi::OsStringExt;
                std::path::PathBuf::from(OsString::from_vec(b"\0.rsrc is not a directory".to_vec()))
            }
        }
    }

    /// The open directory.
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// The pinned name in [`Pinned::dir`].
    pub fn name(&self) -> &OsStr {
        &self.name
    }
}

/// Pin `path` (not in a volume): its folder opened once, by the name the user gave.
pub fn pin(path: &Path) -> io::Result<Pinned> {
    let (dir, name) = open_parent(path)?;
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
    remember_shown(&dir, folder.unwrap_or(Path::new(".")));
    Ok(Pinned {
        dir,
        name,
        rsrc: Default::default(),
    })
}

/// Pin the object at `components` below the volume root `root`: every folder on the way is
/// opened relative to the one before without following a symlink, so the folder reached is
/// inside the volume (a symlink on the way, even one a check found leading inside, is
/// refused: it could be changed after the check).
pub fn pin_in_volume(root: &Path, components: &[Vec<u8>]) -> io::Result<Pinned> {
    let Some((name, folders)) = components.split_last() else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut dir = rustix::fs::openat(rustix::fs::CWD, root, flags, Mode::empty())?;
    for folder in folders {
        dir = match walk_dir_at(dir.as_fd(), OsStr::from_bytes(folder)) {
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(io::Error::other(format!(
                    "{}: a symbolic link on the way (not followed)",
                    String::from_utf8_lossy(folder)
                )))
            }
            other => other?,
        };
    }
    let mut shown = root.to_path_buf();
    for folder in folders {
        shown.push(OsStr::from_bytes(folder));
    }
    remember_shown(&dir, &shown);
    Ok(Pinned {
        dir,
        name: OsStr::from_bytes(name).to_os_string(),
        rsrc: Default::default(),
    })
}

/// The folders pinned so far, by descriptor number, as the user knows them: an error about a
/// path through `/proc/self/fd/N` is shown with the folder's own path ([`readable`]).
static SHOWN: std::sync::Mutex<Vec<(i32, std::path::PathBuf)>> = std::sync::Mutex::new(Vec::new());

fn remember_shown(dir: &OwnedFd, shown: &Path) {
    use std::os::fd::AsRawFd;
    let fd = dir.as_raw_fd();
    let mut known = SHOWN.lock().unwrap_or_else(|e| e.into_inner());
    // A number reused by a later pin names that folder now.
    known.retain(|(n, _)| *n != fd);
    known.push((fd, shown.to_path_buf()));
}

/// `text` (an error message) with every `/proc/self/fd/N` of a pinned folder written as the
/// folder's path: what dt opened by descriptor is said as the user named it.
pub fn readable(text: &str) -> String {
    let known = SHOWN.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_owned();
    // Longest numbers first, so /proc/self/fd/1 never eats the start of /proc/self/fd/12.
    let mut by_len: Vec<_> = known.iter().collect();
    by_len.sort_by_key(|(n, _)| std::cmp::Reverse(n.to_string().len()));
    for (fd, shown) in by_len {
        let through = format!("/proc/self/fd/{fd}");
        let mut rewritten = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(&through) {
            let after = &rest[at + through.len()..];
            rewritten.push_str(&rest[..at]);
            // Only the whole number: /proc/self/fd/5 is not the start of /proc/self/fd/57.
            if after.starts_with(|c: char| c.is_ascii_digit()) {
                rewritten.push_str(&through);
            } else {
                rewritten.push_str(&shown.to_string_lossy());
            }
            rest = after;
        }
        rewritten.push_str(rest);
        out = rewritten;
    }
    without_os_error_numbers(&out)
}

/// `text` without Rust's ` (os error N)` after a kernel message: coreutils says
/// "No such file or directory", and so does dt.
fn without_os_error_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(" (os error ") {
        let after = &rest[at + " (os error ".len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(')') {
            out.push_str(&rest[..at]);
            rest = &after[digits + 1..];
        } else {
            out.push_str(&rest[..at + 1]);
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_a_pinned_folder_as_the_user_named_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let pinned = pin(&dir.path().join("sub/file")).unwrap();
        let message = format!(
            "cannot write {}: Permission denied",
            pinned.rsrc_path().display()
        );
        assert!(message.contains("/proc/self/fd/"), "{message}");
        let shown = dir.path().join("sub/.rsrc/file");
        assert_eq!(
            readable(&message),
            format!("cannot write {}: Permission denied", shown.display())
        );
        // A number no pin holds is left as it is.
        assert_eq!(readable("/proc/self/fd/999999/x"), "/proc/self/fd/999999/x");
        // The kernel's words without Rust's error number, as coreutils says them.
        assert_eq!(
            readable("cannot remove 'x': No such file or directory (os error 2)"),
            "cannot remove 'x': No such file or directory"
        );
        assert_eq!(
            readable("a (os error x) b (os error 13)"),
            "a (os error x) b"
        );
    }
}
