//! Pass 1: walk the whole volume in parallel and record, for every object, what the disk says
//! about it — kind, device and inode, its resource file, its xattr mirror and any Netatalk
//! metadata — plus the resource files that have no object.
//!
//! The unit of work is a directory: a worker lists it, reads its `.rsrc/` listing once, and
//! examines every entry relative to the directory's descriptor (`fstatat`, `openat`), so the
//! cost per object is a handful of system calls that do not re-walk the path.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use deskd_db::Kind;
use deskd_volume::netatalk::{self, NetatalkInfo};
use deskd_volume::rsrc::{self, ResourceHeader};

use crate::RebuildError;

/// What the resource file of an object holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rsrc {
    Missing,
    Corrupt(String),
    Valid(ResourceHeader),
}

/// One object found on disk.
#[derive(Debug, Clone)]
pub struct Found {
    /// Index of the parent directory in the walk's list; `u32::MAX` for the root.
    pub parent: u32,
    pub name: Vec<u8>,
    pub kind: Kind,
    pub dev: u64,
    pub ino: u64,
    pub ctime: i64,
    /// The object's owner: the carrier of its xattr mirror and Netatalk metadata.
    pub uid: u32,
    pub rsrc: Rsrc,
    /// The owner of the resource file, when there is one (whose word its ID is).
    pub rsrc_uid: Option<u32>,
    /// The owner and mode of the `.rsrc` directory holding it (who could have renamed another
    /// resource file into its place).
    pub rsrc_dir: Option<(u32, u32)>,
    /// The `user.deskd.id` mirror.
    pub xattr_id: Option<u32>,
    /// Netatalk's metadata, read only when neither a resource file nor a mirror gives an ID.
    pub netatalk: Option<NetatalkInfo>,
}

/// The result of pass 1.
pub struct Walk {
    /// Every object; index 0 is the volume root; a directory comes before its entries.
    pub found: Vec<Found>,
    /// Resource files without an object: (index of the directory, name).
    pub orphans: Vec<(u32, Vec<u8>)>,
    /// Full path of every directory in `found` (by index), for reports and repairs.
    pub dir_paths: std::collections::HashMap<u32, PathBuf>,
    /// Directories below the root that hold a `.Desktop`: roots of other volumes.
    pub nested_volumes: Vec<PathBuf>,
}

impl Walk {
    /// The absolute path of object `index`.
    pub fn path(&self, index: u32) -> PathBuf {
        let f = &self.found[index as usize];
        if f.parent == u32::MAX {
            return self.dir_paths[&0].clone();
        }
        self.dir_paths[&f.parent].join(std::ffi::OsStr::from_bytes(&f.name))
    }

    /// The path of object `index` relative to the root, as bytes (`""` for the root).
    pub fn rel_path(&self, index: u32) -> Vec<u8> {
        let mut parts = Vec::new();
        let mut i = index;
        while self.found[i as usize].parent != u32::MAX {
            parts.push(&self.found[i as usize].name[..]);
            i = self.found[i as usize].parent;
        }
        parts.reverse();
        parts.join(&b'/')
    }
}

struct Queue {
    dirs: Vec<(u32, PathBuf)>,
    busy: usize,
    failed: Option<RebuildError>,
}

/// What the workers have collected: objects, orphaned resource files, directory paths.
type Collected = (Vec<Found>, Vec<(u32, Vec<u8>)>, Vec<(u32, PathBuf)>);

struct Shared<'a> {
    /// The volume root: every directory below it is opened from here without following a
    /// symlink on the way, so a folder a user swaps for a link during the walk does not lend
    /// the walk another folder's entries (names, inodes, resource files, mirrors).
    root: &'a Path,
    queue: Mutex<Queue>,
    ready: Condvar,
    found: Mutex<Collected>,
    progress: AtomicU64,
    stop: &'a AtomicBool,
    /// Directories below the root met holding a `.Desktop` that could be a volume's.
    nested: Mutex<Vec<PathBuf>>,
    /// The owner of the volume root (who may make desktops below it).
    outer_owner: u32,
    /// Test hook (`DESKD_REBUILD_DIR_DELAY_MS`): a pause per directory, so the tests can act
    /// while a walk is under way.
    dir_delay: Option<std::time::Duration>,
}

/// The per-directory pause `DESKD_REBUILD_DIR_DELAY_MS` asks for (a test hook).
#[cfg(feature = "test-hooks")]
fn dir_delay_hook() -> Option<std::time::Duration> {
    std::env::var("DESKD_REBUILD_DIR_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_millis)
}

/// Without the `test-hooks` feature the hook is compiled out (release binaries hold none).
#[cfg(not(feature = "test-hooks"))]
fn dir_delay_hook() -> Option<std::time::Duration> {
    None
}

/// Test hook (`DESKD_TEST_REBUILD_HOLD_WALK_UNTIL=<file>`, read once): before each directory,
/// while `<file>` does not exist, say so on stderr and wait; so a test acts while a walk is
/// surely under way, then creates the file to let it finish.
/// Then the pause of `DESKD_REBUILD_DIR_DELAY_MS`, said first so a test can act while the walker
/// waits before this directory.
#[cfg(feature = "test-hooks")]
fn hold_walk_hook(path: &Path, delay: Option<std::time::Duration>) {
    static UNTIL: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let until = UNTIL
        .get_or_init(|| std::env::var_os("DESKD_TEST_REBUILD_HOLD_WALK_UNTIL").map(PathBuf::from));
    if let Some(until) = until.as_deref().filter(|f| !f.exists()) {
        eprintln!(
            "test hook: walk held before {} until {} exists",
            path.display(),
            until.display()
        );
        while !until.exists() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    if let Some(delay) = delay {
        eprintln!(
            "test hook: waiting {} ms before {}",
            delay.as_millis(),
            path.display()
        );
        std::thread::sleep(delay);
    }
}

/// Without the `test-hooks` feature the hook is compiled out (release binaries hold none).
#[cfg(not(feature = "test-hooks"))]
fn hold_walk_hook(_path: &Path, _delay: Option<std::time::Duration>) {}

/// Walk the volume at `root` with `threads` workers; `on_progress` gets the number of objects
/// walked so far. Setting `stop` ends the walk early with [`RebuildError::Cancelled`].
/// Directories removed while the walk runs are passed over (their entries are not there).
pub fn walk(
    root: &Path,
    threads: usize,
    on_progress: &(dyn Fn(u64) + Sync),
    stop: &AtomicBool,
) -> Result<Walk, RebuildError> {
    let meta = std::fs::symlink_metadata(root).map_err(|e| RebuildError::io(root, e))?;
    if !meta.is_dir() {
        return Err(RebuildError::NotADirectory {
            path: root.to_path_buf(),
        });
    }
    use std::os::unix::fs::MetadataExt;
    let root_rsrc_path = rsrc::root_rsrc_path(root);
    let root_rsrc = read_rsrc_path(&root_rsrc_path);
    let root_rsrc_uid = std::fs::symlink_metadata(&root_rsrc_path)
        .ok()
        .map(|m| m.uid());
    let root_rsrc_dir = std::fs::symlink_metadata(root.join(rsrc::RSRC_DIR))
        .ok()
        .map(|m| (m.uid(), m.mode()));
    let root_found = Found {
        parent: u32::MAX,
        name: Vec::new(),
        kind: Kind::Dir,
        dev: meta.dev(),
        ino: meta.ino(),
        ctime: meta.ctime(),
        uid: meta.uid(),
        rsrc: root_rsrc,
        rsrc_uid: root_rsrc_uid,
        rsrc_dir: root_rsrc_dir,
        xattr_id: deskd_volume::read_id_xattr(root),
        netatalk: None,
    };
    let shared = Shared {
        root,
        queue: Mutex::new(Queue {
            dirs: vec![(0, root.to_path_buf())],
            busy: 0,
            failed: None,
        }),
        ready: Condvar::new(),
        found: Mutex::new((vec![root_found], Vec::new(), vec![(0, root.to_path_buf())])),
        progress: AtomicU64::new(1),
        nested: Mutex::new(Vec::new()),
        outer_owner: meta.uid(),
        stop,
        dir_delay: dir_delay_hook(),
    };
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| worker(&shared, on_progress));
        }
    });
    let queue = shared.queue.into_inner().unwrap();
    if let Some(e) = queue.failed {
        return Err(e);
    }
    if stop.load(Ordering::SeqCst) {
        return Err(RebuildError::Cancelled);
    }
    let (mut found, orphans, dirs) = shared.found.into_inner().unwrap();
    // The list grew by doubling; what it holds is kept until the end of the rebuild, so the
    // spare room (up to half of it, some 100 bytes an object) is given back now.
    found.shrink_to_fit();
    let mut nested_volumes = shared.nested.into_inner().unwrap();
    nested_volumes.sort();
    Ok(Walk {
        found,
        orphans,
        dir_paths: dirs.into_iter().collect(),
        nested_volumes,
    })
}

fn worker(shared: &Shared<'_>, on_progress: &(dyn Fn(u64) + Sync)) {
    loop {
        let (index, path) = {
            let mut q = shared.queue.lock().unwrap();
            loop {
                if q.failed.is_some() || shared.stop.load(Ordering::Relaxed) {
                    shared.ready.notify_all();
                    return;
                }
                if let Some(job) = q.dirs.pop() {
                    q.busy += 1;
                    break job;
                }
                if q.busy == 0 {
                    shared.ready.notify_all();
                    return;
                }
                q = shared.ready.wait(q).unwrap();
            }
        };
        let result = scan_dir(shared, index, &path, on_progress);
        let mut q = shared.queue.lock().unwrap();
        q.busy -= 1;
        match result {
            Ok(subdirs) => q.dirs.extend(subdirs),
            Err(e) => {
                q.failed.get_or_insert(e);
            }
        }
        shared.ready.notify_all();
    }
}

fn cstring(name: &[u8]) -> CString {
    // Names from readdir never contain NUL.
    CString::new(name).expect("NUL in a directory entry")
}

/// Open the directory `path` (below `root`, or the root itself) for reading, following no
/// symlink on the way and never leaving the root ([`deskd_volume::pin::open_dir_beneath`]).
fn open_dir_below(root: &Path, path: &Path) -> std::io::Result<OwnedFd> {
    let Ok(rel) = path.strip_prefix(root) else {
        return Err(std::io::Error::from_raw_os_error(libc::EXDEV));
    };
    deskd_volume::pin::open_dir_beneath(root, rel, true)
}

/// The directory `name` in `dir`, not through a symlink.
fn open_dir_at(dir: &OwnedFd, name: &str) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsFd;
    rsrc::open_at(
        dir.as_fd(),
        &cstring(name.as_bytes()),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )
    .map(OwnedFd::from)
}

/// A path that names the directory open on `fd` for as long as it stays open.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Names in a directory (without `.` and `..`).
fn list(path: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path)? {
        names.push(entry?.file_name().as_bytes().to_vec());
    }
    Ok(names)
}

fn read_rsrc_path(path: &Path) -> Rsrc {
    match rsrc::read_header(path) {
        Ok(Some(h)) => Rsrc::Valid(h),
        Ok(None) => Rsrc::Missing,
        Err(e) => Rsrc::Corrupt(e.to_string()),
    }
}

/// The resource file `name` in the `.rsrc` directory `dir`, and its owner.
fn read_rsrc_at(dir: &OwnedFd, name: &CString) -> (Rsrc, Option<u32>) {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsFd;
    let mut file = match rsrc::open_at(dir.as_fd(), name, libc::O_RDONLY, 0) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return (Rsrc::Missing, None),
        Err(e) => {
            return (
                Rsrc::Corrupt(format!("cannot open resource file: {e}")),
                None,
            )
        }
    };
    // The owner of the very file read (fstat), so a swap after the read changes nothing.
    let owner = file.metadata().ok().map(|m| m.uid());
    let shown = Path::new(std::ffi::OsStr::from_bytes(name.as_bytes()));
    match rsrc::read_header_from(&mut file, shown) {
        Ok(h) => (Rsrc::Valid(h), owner),
        Err(e) => (Rsrc::Corrupt(e.to_string()), owner),
    }
}

/// Examine one directory; returns its subdirectories to walk.
fn scan_dir(
    shared: &Shared<'_>,
    dir_index: u32,
    path: &Path,
    on_progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<(u32, PathBuf)>, RebuildError> {
    hold_walk_hook(path, shared.dir_delay);
    // A directory removed or replaced since its parent was listed is simply not there.
    let gone = |e: &std::io::Error| {
        dir_index != 0 && matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR))
    };
    // A link on the way (ELOOP) means a folder was swapped for a link: not there either.
    let gone =
        |e: &std::io::Error| gone(e) || (dir_index != 0 && e.raw_os_error() == Some(libc::ELOOP));
    let dir = match open_dir_below(shared.root, path) {
        Ok(fd) => fd,
        Err(e) if gone(&e) => return Ok(Vec::new()),
        Err(e) => return Err(RebuildError::io(path, e)),
    };
    // Everything below is read through the descriptors (/proc/self/fd/N names the very
    // directory opened, whatever is renamed meanwhile).
    let here = fd_path(&dir);
    let names = match list(&here) {
        Ok(names) => names,
        Err(e) if gone(&e) => return Ok(Vec::new()),
        Err(e) => return Err(RebuildError::io(path, e)),
    };
    let rsrc_dir_path = path.join(rsrc::RSRC_DIR);
    let (rsrc_dir, rsrc_names): (Option<OwnedFd>, HashSet<Vec<u8>>) =
        match open_dir_at(&dir, rsrc::RSRC_DIR) {
            Ok(fd) => {
                let listed =
                    list(&fd_path(&fd)).map_err(|e| RebuildError::io(&rsrc_dir_path, e))?;
                (Some(fd), listed.into_iter().collect())
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                (None, HashSet::new())
            }
            Err(e) => return Err(RebuildError::io(&rsrc_dir_path, e)),
        };
    // Owner and mode of the very .rsrc directory listed (who may rename entries in it).
    let rsrc_dir_owner = rsrc_dir
        .as_ref()
        .and_then(|fd| rustix::fs::fstat(fd).ok())
        .map(|st| (st.st_uid, st.st_mode));
    let mut found = Vec::with_capacity(names.len());
    let mut seen = HashSet::with_capacity(names.len());
    for name in names {
        if deskd_volume::is_protected(&name) {
            if dir_index != 0 && name == deskd_volume::DESKTOP_FILE.as_bytes() {
                use std::os::fd::AsFd;
                // Only a desktop its makers could have made is another volume's; a planted
                // one is a user's file (warned about, and otherwise passed over like one).
                match deskd_volume::guard::desktop_counts(dir.as_fd(), shared.outer_owner) {
                    Ok(()) => shared.nested.lock().unwrap().push(path.to_path_buf()),
                    Err(why) => {
                        tracing::warn!("{}", deskd_volume::guard::planted_message(path, &why))
                    }
                }
            }
            continue;
        }
        let c = cstring(&name);
        let st = match rsrc::lstat_at(std::os::fd::AsFd::as_fd(&dir), &c) {
            Ok(st) => st,
            // Removed while we walk: it is simply not there.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => {
                return Err(RebuildError::io(
                    &path.join(std::ffi::OsStr::from_bytes(&name)),
                    e,
                ))
            }
        };
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFREG => Kind::File,
            // Sockets, FIFOs and devices are not desktop objects.
            _ => continue,
        };
        let (rsrc, rsrc_uid) = match &rsrc_dir {
            Some(fd) if rsrc_names.contains(&name) => read_rsrc_at(fd, &c),
            _ => (Rsrc::Missing, None),
        };
        let full = here.join(std::ffi::OsStr::from_bytes(&name));
        let xattr_id = if kind == Kind::Symlink {
            None
        } else {
            deskd_volume::read_id_xattr(&full)
        };
        let netatalk = match (&rsrc, xattr_id, kind) {
            (Rsrc::Valid(h), _, _) if h.id != 0 => None,
            (_, Some(_), _) | (_, _, Kind::Symlink) => None,
            _ => netatalk::read(&full),
        };
        seen.insert(name.clone());
        found.push(Found {
            parent: dir_index,
            name,
            kind,
            dev: st.st_dev,
            ino: st.st_ino,
            ctime: st.st_ctime,
            uid: st.st_uid,
            rsrc,
            rsrc_uid,
            rsrc_dir: rsrc_uid.and(rsrc_dir_owner),
            xattr_id,
            netatalk,
        });
    }
    let mut orphans: Vec<Vec<u8>> = rsrc_names
        .into_iter()
        .filter(|n| !seen.contains(n))
        .filter(|n| !(dir_index == 0 && n == rsrc::ROOT_RECORD.as_bytes()))
        .filter(|n| {
            rsrc_dir.as_ref().is_some_and(|fd| {
                rsrc::lstat_at(std::os::fd::AsFd::as_fd(fd), &cstring(n))
                    .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
            })
        })
        .collect();
    orphans.sort();
    let count = found.len() as u64;
    let mut subdirs = Vec::new();
    {
        let mut all = shared.found.lock().unwrap();
        let base = all.0.len() as u32;
        for (i, f) in found.iter().enumerate() {
            if f.kind == Kind::Dir {
                let p = path.join(std::ffi::OsStr::from_bytes(&f.name));
                all.2.push((base + i as u32, p.clone()));
                subdirs.push((base + i as u32, p));
            }
        }
        all.0.extend(found);
        all.1.extend(orphans.into_iter().map(|n| (dir_index, n)));
    }
    let total = shared.progress.fetch_add(count, Ordering::Relaxed) + count;
    on_progress(total);
    Ok(subdirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(parent: u32, name: &str, kind: Kind) -> Found {
        crate::test_support::found(parent, name, kind, 1, 1)
    }

    #[test]
    fn paths_of_walked_objects_are_built_from_their_directory() {
        let walk = Walk {
            found: vec![
                found(u32::MAX, "", Kind::Dir),
                found(0, "docs", Kind::Dir),
                found(1, "a b", Kind::File),
                found(0, "top", Kind::File),
            ],
            orphans: Vec::new(),
            dir_paths: [(0, PathBuf::from("/vol")), (1, PathBuf::from("/vol/docs"))].into(),
            nested_volumes: Vec::new(),
        };
        assert_eq!(walk.path(0), Path::new("/vol"));
        assert_eq!(walk.path(2), Path::new("/vol/docs/a b"));
        assert_eq!(walk.path(3), Path::new("/vol/top"));
        assert_eq!(walk.rel_path(0), b"");
        assert_eq!(walk.rel_path(2), b"docs/a b");
        assert_eq!(walk.rel_path(3), b"top");
    }
}
