//! Paths walked race-free, by whoever the calling thread is at the moment (the server, or a peer
//! whose identity it wears, see [`crate::access`]): one `openat(O_PATH | O_NOFOLLOW)` per name
//! from a descriptor of the volume root, so the kernel checks search permission on every
//! directory on the way for that identity, and no symlink is ever followed behind the walker's
//! back. What the walk reports (dev, ino, kind) is `fstat` of the descriptors it holds, and the
//! checks that follow are made on the last of them, so what is checked and what is recorded is
//! what the walk reached — never what a path names a moment later, after someone swapped a
//! directory on the way for a symlink.
//!
//! A client's path may go through a symlink to a directory inside the volume (as the path
//! resolver of `deskd-volume` allows): [`walk_client`] reads such a link on the descriptor it
//! reached, replaces the names so far by where the link leads, and walks again from the root.

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use deskd_db::Kind;
use deskd_volume::VolumeError;
use rustix::fs::{FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

/// What one name on the way is, from `fstat` of the descriptor the walk holds for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub dev: u64,
    pub ino: u64,
    pub kind: Kind,
    pub ctime: i64,
    /// The owner (`st_uid`).
    pub uid: u32,
    /// Names the inode has (`st_nlink`): a file with more than one may be another user's,
    /// linked by whoever could (the watcher's budget does not charge its owner).
    pub nlink: u64,
    /// Its birth time (Unix seconds) when the walk read it (`statx` of the descriptor it
    /// held) and the file system keeps one; `None` otherwise.
    pub btime: Option<i64>,
}

/// Where a walk got to.
#[derive(Debug)]
pub struct Walked {
    /// The names walked from the root (for a client's path, links on the way replaced by
    /// where they lead).
    pub components: Vec<Vec<u8>>,
    /// What each name is, as far as the walk got (all of them when it got to the end).
    pub nodes: Vec<Node>,
    /// The descriptor of the last name reached (the root's when `nodes` is empty); `None`
    /// when not even the root could be opened, or from [`crate::folders::Folders::walk`],
    /// which looks at the last name without opening it.
    pub fd: Option<OwnedFd>,
    /// The descriptor of the directory holding the last name reached (`None` for the root);
    /// shared with the [`crate::folders::Folders`] a batch holds.
    pub up: Option<Arc<OwnedFd>>,
    /// Why the walk stopped before the end (`ENOENT`: the name is not there; anything else:
    /// the walker may not go there, or a non-directory is in the way).
    pub stopped: Option<Errno>,
    /// For a walk by a viewer ([`walk_as`]): the first name reached that the viewer could not
    /// see, being neither its own nor in a folder it may list.
    pub hidden: Option<usize>,
}

impl Walked {
    /// The final object, when the walk got to it.
    pub fn last(&self) -> Option<&Node> {
        if self.stopped.is_some() {
            return None;
        }
        self.nodes.last()
    }

    /// True when the walk stopped for another reason than a missing name: the walker may not
    /// see what lies beyond, or a file or symlink stood where a directory had to be.
    pub fn refused(&self) -> bool {
        self.stopped.is_some_and(|e| e != Errno::NOENT)
    }

    /// True when every name but the last was reached as a directory (the last may be missing).
    #[cfg(test)]
    pub fn reached_folder(&self) -> bool {
        match self.stopped {
            None => true,
            Some(Errno::NOENT) => self.nodes.len() + 1 == self.components.len(),
            Some(_) => false,
        }
    }
}

const PATH_ONLY: OFlags = OFlags::PATH.union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// What the descriptor `fd` holds, with its birth time (one `statx`, as cheap as the `fstat`
/// it replaces, and the check of a followed move needs no second look by path).
fn node_of(fd: BorrowedFd<'_>) -> Result<Node, Errno> {
    node_statx(fd, c"", rustix::fs::AtFlags::EMPTY_PATH)
}

/// [`Node`] of `name` in `dir` (the descriptor itself with `EMPTY_PATH`), by `statx` with the
/// birth time, not following a link.
fn node_statx<P: rustix::path::Arg>(
    dir: BorrowedFd<'_>,
    name: P,
    flags: rustix::fs::AtFlags,
) -> Result<Node, Errno> {
    use rustix::fs::{statx, AtFlags, StatxFlags};
    let stx = statx(
        dir,
        name,
        flags | AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS | StatxFlags::BTIME,
    )?;
    let kind = match FileType::from_raw_mode(u32::from(stx.stx_mode)) {
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::File,
    };
    let born = StatxFlags::from_bits_retain(stx.stx_mask).contains(StatxFlags::BTIME);
    Ok(Node {
        dev: rustix::fs::makedev(stx.stx_dev_major, stx.stx_dev_minor),
        ino: stx.stx_ino,
        kind,
        ctime: stx.stx_ctime.tv_sec,
        uid: stx.stx_uid,
        nlink: u64::from(stx.stx_nlink),
        btime: born.then_some(stx.stx_btime.tv_sec),
    })
}

/// What the name `name` in the folder held as `dir` is (not following a link): the [`Node`]
/// a walk that went one name further would report, by one `statx` on the descriptor.
pub fn node_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Node, Errno> {
    node_statx(dir, name, rustix::fs::AtFlags::empty())
}

/// The [`Node`] of a `stat` result (no birth time).
pub(crate) fn node_from(st: &rustix::fs::Stat) -> Node {
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::File,
    };
    Node {
        dev: st.st_dev,
        ino: st.st_ino,
        kind,
        ctime: st.st_ctime,
        uid: st.st_uid,
        nlink: st.st_nlink,
        btime: None,
    }
}

/// Walk `components` (names as the desktop records them) from `root`, following no symlink.
pub fn walk(root: &Path, components: &[Vec<u8>]) -> Walked {
    walk_as(root, components, None)
}

/// [`walk`], also noting for `viewer` (a uid; the thread must wear its identity) the first
/// name on the way it could not see ([`Walked::hidden`]): a name is seen when the folder
/// holding it may be listed (read and search, checked on the descriptor the walk holds) or
/// when the viewer owns it. One more check per name, none once one name is hidden.
pub fn walk_as(root: &Path, components: &[Vec<u8>], viewer: Option<u32>) -> Walked {
    let mut walked = Walked {
        components: components.to_vec(),
        nodes: Vec::with_capacity(components.len()),
        fd: None,
        up: None,
        stopped: None,
        hidden: None,
    };
    // The root's own path is canonical (no symlink in it); opening it by path as the walker
    // also checks search permission on the folders above the volume, as a path would.
    let mut fd = match rustix::fs::openat(CWD, root, PATH_ONLY | OFlags::DIRECTORY, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            walked.stopped = Some(e);
            return walked;
        }
    };
    for (i, name) in components.iter().enumerate() {
        let last = i + 1 == components.len();
        let next = match rustix::fs::openat(&fd, OsStr::from_bytes(name), PATH_ONLY, Mode::empty())
        {
            Ok(next) => next,
            Err(e) => {
                walked.stopped = Some(e);
                break;
            }
        };
        let node = match node_of(next.as_fd()) {
            Ok(node) => node,
            Err(e) => {
                walked.stopped = Some(e);
                break;
            }
        };
        if let Some(uid) = viewer {
            if walked.hidden.is_none() && node.uid != uid && !may(fd.as_fd(), crate::access::LIST) {
                walked.hidden = Some(i);
            }
        }
        walked.nodes.push(node);
        walked.up = Some(Arc::new(std::mem::replace(&mut fd, next)));
        if !last && node.kind != Kind::Dir {
            walked.stopped = Some(if node.kind == Kind::Symlink {
                Errno::LOOP
            } else {
                Errno::NOTDIR
            });
            break;
        }
    }
    walked.fd = Some(fd);
    walked
}

/// The most links one client path may go through (as the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Walk a client's path (already split into checked names) from `root`. A symlink on the way
/// (not the last name) is read on the descriptor that reached it and must lead to a directory
/// inside the volume; the names are then those of where it leads. Refused like
/// [`deskd_volume::Volume::resolve_relative`]: links leaving the volume, protected names.
pub fn walk_client(
    root: &Path,
    components: Vec<Vec<u8>>,
    shown: &[u8],
    viewer: Option<u32>,
) -> Result<Walked, VolumeError> {
    let shown = || String::from_utf8_lossy(shown).into_owned();
    let mut components = components;
    for _ in 0..=MAX_LINKS {
        let mut walked = walk_as(root, &components, viewer);
        let at = walked.nodes.len();
        if walked.stopped != Some(Errno::LOOP) || at == 0 {
            return Ok(walked);
        }
        // A symlink at `at - 1`: read it where the walk found it.
        let link = walked
            .fd
            .take()
            .expect("a walk that reached a name holds its descriptor");
        let target = match rustix::fs::readlinkat(&link, c"", Vec::new()) {
            Ok(t) => t,
            Err(e) => {
                walked.stopped = Some(e);
                return Ok(walked);
            }
        };
        components = follow(root, &components, at - 1, target.as_c_str())
            .ok_or_else(|| VolumeError::Escape(shown()))?;
        for name in &components {
            deskd_volume::check_name(name).map_err(|e| match e {
                VolumeError::Protected(_) => VolumeError::Protected(shown()),
                _ => VolumeError::Escape(shown()),
            })?;
        }
    }
    Err(VolumeError::Escape(shown()))
}

/// The names after replacing `components[link]`, a symlink to `target`, by where it leads;
/// `None` when that is outside the volume.
fn follow(root: &Path, components: &[Vec<u8>], link: usize, target: &CStr) -> Option<Vec<Vec<u8>>> {
    let target = target.to_bytes();
    let mut out: Vec<Vec<u8>> = if target.first() == Some(&b'/') {
        let inside = Path::new(OsStr::from_bytes(target));
        let inside = deskd_volume::lexical_clean(inside);
        let rest = inside.strip_prefix(root).ok()?;
        rest.iter().map(|c| c.as_bytes().to_vec()).collect()
    } else {
        let mut out = components[..link].to_vec();
        for part in target.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    out.pop()?;
                }
                name => out.push(name.to_vec()),
            }
        }
        out
    };
    out.extend_from_slice(&components[link + 1..]);
    Some(out)
}

/// `faccessat2(fd, "", mode, AT_EACCESS | AT_EMPTY_PATH)`: may the calling thread's current
/// file-system identity do `mode` to what `fd` is (not to whatever its path names now)?
///
/// Through nix's `faccessat`, which calls glibc's: since glibc 2.33 that is the `faccessat2`
/// system call with the flags as given, one call as before (Linux 5.8 or later). rustix's
/// `accessat` refuses `AT_EMPTY_PATH`. Where `faccessat2` is missing the answer is "no": a
/// C library emulating the flags has no empty-path case, so nothing is let through.
pub fn may(fd: BorrowedFd<'_>, mode: libc::c_int) -> bool {
    use nix::fcntl::AtFlags;
    use nix::unistd::{faccessat, AccessFlags};
    faccessat(
        fd,
        c"",
        AccessFlags::from_bits_retain(mode),
        AtFlags::AT_EACCESS | AtFlags::AT_EMPTY_PATH,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(path: &str) -> Vec<Vec<u8>> {
        path.split('/').map(|c| c.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_walk_follows_no_symlink_and_reports_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink("a", root.join("link")).unwrap();
        let w = walk(&root, &names("a/b/f"));
        assert!(w.stopped.is_none());
        assert_eq!(w.last().unwrap().kind, Kind::File);
        let w = walk(&root, &names("link/b/f"));
        assert_eq!(w.stopped, Some(Errno::LOOP));
        assert_eq!(w.nodes[0].kind, Kind::Symlink);
        let w = walk(&root, &names("a/missing/f"));
        assert_eq!(w.stopped, Some(Errno::NOENT));
        assert!(!w.refused() && !w.reached_folder());
        let w = walk(&root, &names("a/b/missing"));
        assert!(w.reached_folder());
        // A client path through the link is walked where the link leads.
        let w = walk_client(&root, names("link/b/f"), b"link/b/f", None).unwrap();
        assert_eq!(w.components, names("a/b/f"));
        assert!(w.last().is_some());
        std::os::unix::fs::symlink("../..", root.join("a/up")).unwrap();
        assert!(walk_client(&root, names("a/up/x"), b"a/up/x", None).is_err());
        std::os::unix::fs::symlink(&root, root.join("a/abs")).unwrap();
        let w = walk_client(&root, names("a/abs/a/b"), b"a/abs/a/b", None).unwrap();
        assert_eq!(w.components, names("a/b"));
    }
}
