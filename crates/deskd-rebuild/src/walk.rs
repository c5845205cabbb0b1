//! Pass 1: walk the whole volume in parallel and record, for every object, what the disk says
//! about it — kind, device and inode, its resource file, its xattr mirror and any Netatalk
//! metadata — plus the resource files that have no object.
//!
//! The unit of work is a directory: a worker lists it, reads its `.rsrc/` listing once, and
//! examines every entry relative to the directory's descriptor (`fstatat`, `openat`), so the
//! cost per object is a handful of system calls that do not re-walk the path.
//!
//! A rebuild holds what the walk found until its plan is made, so each object is kept compact
//! ([`Found`], 64 bytes): integers, its name in one arena shared by all, and the rare parts
//! (Netatalk metadata, why a resource file is corrupt, a resource file's comment) aside.

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

/// What the resource file of an object holds, as the walker reads it ([`Entry::rsrc`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rsrc {
    Missing,
    Corrupt(String),
    Valid(ResourceHeader),
}

/// What a rebuild keeps of a valid resource file header: what the plan decides from. The rest
/// (serial number, dates, the other Finder info) is read again when a header is rewritten, and
/// the comment, which few files have, is kept aside ([`Walk::comment`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RsrcInfo {
    pub id: u32,
    pub type_code: [u8; 4],
    pub creator: [u8; 4],
    pub finder_flags: u16,
}

/// The state of an object's resource file as the walk keeps it ([`Found::rsrc`]); why a corrupt
/// one is corrupt is kept aside ([`Walk::corrupt_reason`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsrcState {
    Missing,
    Corrupt,
    Valid(RsrcInfo),
}

/// One object as the walker reads it (and as the unit tests make one), every field its own.
/// The walk keeps it as a [`Found`]: a rebuild holds one per object until its plan is made.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Index of the parent directory in the walk's list; `u32::MAX` for the root.
    pub parent: u32,
    pub name: Vec<u8>,
    pub kind: Kind,
    pub dev: u64,
    pub ino: u64,
    pub ctime: i64,
    /// The object's owner: the carrier of its xattr mirror and Netatalk metadata.
    pub uid: u32,
    /// Group or others may write the object (a write bit for them in its mode): then its
    /// mirror, which anyone who may write the file sets, is not its owner's word.
    pub others_write: bool,
    pub rsrc: Rsrc,
    /// The owner of the resource file, when there is one (whose word its ID is); `None` also
    /// when group or others may write it (then it is no one's word).
    pub rsrc_uid: Option<u32>,
    /// The owner and mode of the `.rsrc` directory holding it (who could have renamed another
    /// resource file into its place). Kept once per directory ([`Walk::rsrc_dir`]).
    pub rsrc_dir: Option<(u32, u32)>,
    /// The `user.deskd.id` mirror.
    pub xattr_id: Option<u32>,
    /// Netatalk's metadata, read only when neither a resource file nor a mirror gives an ID.
    pub netatalk: Option<NetatalkInfo>,
}

/// `Found::bits`: the kept resource file state (two bits) and which optional fields are set.
const RSRC_MISSING: u8 = 0;
const RSRC_CORRUPT: u8 = 1;
const RSRC_VALID: u8 = 2;
const RSRC_STATE: u8 = 0b11;
const HAS_RSRC_UID: u8 = 1 << 2;
const HAS_XATTR_ID: u8 = 1 << 3;
const OTHERS_WRITE: u8 = 1 << 4;

/// One object found on disk, as the walk keeps it: 64 bytes of integers, its name in the
/// walk's arena ([`Walk::name`]), and the rare parts (Netatalk metadata, a corrupt resource
/// file's reason, a comment) in the walk's side lists.
#[derive(Debug, Clone, Copy)]
pub struct Found {
    pub dev: u64,
    pub ino: u64,
    pub ctime: i64,
    /// Where the name starts in the walk's arena; it ends where the next object's starts.
    name_start: u64,
    /// Index of the parent directory in the walk's list; `u32::MAX` for the root.
    pub parent: u32,
    /// The object's owner: the carrier of its xattr mirror and Netatalk metadata.
    pub uid: u32,
    rsrc_uid: u32,
    xattr_id: u32,
    rsrc_id: u32,
    type_code: [u8; 4],
    creator: [u8; 4],
    finder_flags: u16,
    pub kind: Kind,
    bits: u8,
}

impl Found {
    /// The resource file's state.
    pub fn rsrc(&self) -> RsrcState {
        match self.bits & RSRC_STATE {
            RSRC_VALID => RsrcState::Valid(RsrcInfo {
                id: self.rsrc_id,
                type_code: self.type_code,
                creator: self.creator,
                finder_flags: self.finder_flags,
            }),
            RSRC_CORRUPT => RsrcState::Corrupt,
            _ => RsrcState::Missing,
        }
    }

    /// The owner of the resource file, when there is one.
    pub fn rsrc_uid(&self) -> Option<u32> {
        (self.bits & HAS_RSRC_UID != 0).then_some(self.rsrc_uid)
    }

    /// The `user.deskd.id` mirror.
    pub fn xattr_id(&self) -> Option<u32> {
        (self.bits & HAS_XATTR_ID != 0).then_some(self.xattr_id)
    }

    /// Group or others may write the object ([`Entry::others_write`]).
    pub fn others_write(&self) -> bool {
        self.bits & OTHERS_WRITE != 0
    }
}

/// The objects of a walk (or of one directory, before it joins the walk): the records, the
/// names one after another, and the rare parts by object index, in index order.
#[derive(Default)]
struct Records {
    found: Vec<Found>,
    names: Vec<u8>,
    netatalk: Vec<(u32, NetatalkInfo)>,
    corrupt: Vec<(u32, Box<str>)>,
    comments: Vec<(u32, Box<[u8]>)>,
}

impl Records {
    /// Keep `entry` as the next object; returns the owner and mode of its `.rsrc` directory.
    fn push(&mut self, entry: Entry) -> Option<(u32, u32)> {
        let index = u32::try_from(self.found.len()).expect("fewer than 2^32 objects");
        let mut bits = 0;
        let (mut rsrc_id, mut type_code, mut creator, mut finder_flags) = (0, [0; 4], [0; 4], 0);
        match entry.rsrc {
            Rsrc::Missing => bits |= RSRC_MISSING,
            Rsrc::Corrupt(why) => {
                bits |= RSRC_CORRUPT;
                self.corrupt.push((index, why.into_boxed_str()));
            }
            Rsrc::Valid(h) => {
                bits |= RSRC_VALID;
                (rsrc_id, type_code, creator, finder_flags) =
                    (h.id, h.type_code, h.creator, h.finder_flags);
                if !h.comment.is_empty() {
                    self.comments.push((index, h.comment.into_boxed_slice()));
                }
            }
        }
        if entry.rsrc_uid.is_some() {
            bits |= HAS_RSRC_UID;
        }
        if entry.xattr_id.is_some() {
            bits |= HAS_XATTR_ID;
        }
        if entry.others_write {
            bits |= OTHERS_WRITE;
        }
        if let Some(m) = entry.netatalk {
            self.netatalk.push((index, m));
        }
        self.found.push(Found {
            dev: entry.dev,
            ino: entry.ino,
            ctime: entry.ctime,
            name_start: self.names.len() as u64,
            parent: entry.parent,
            uid: entry.uid,
            rsrc_uid: entry.rsrc_uid.unwrap_or(0),
            xattr_id: entry.xattr_id.unwrap_or(0),
            rsrc_id,
            type_code,
            creator,
            finder_flags,
            kind: entry.kind,
            bits,
        });
        self.names.extend_from_slice(&entry.name);
        entry.rsrc_dir
    }

    /// Add `other`'s objects after these; returns the index the first of them gets.
    fn append(&mut self, other: Records) -> u32 {
        let base = u32::try_from(self.found.len()).expect("fewer than 2^32 objects");
        let name_base = self.names.len() as u64;
        self.found.extend(other.found.into_iter().map(|f| Found {
            name_start: f.name_start + name_base,
            ..f
        }));
        self.names.extend_from_slice(&other.names);
        fn shifted<T>(list: Vec<(u32, T)>, base: u32) -> impl Iterator<Item = (u32, T)> {
            list.into_iter().map(move |(i, x)| (i + base, x))
        }
        self.netatalk.extend(shifted(other.netatalk, base));
        self.corrupt.extend(shifted(other.corrupt, base));
        self.comments.extend(shifted(other.comments, base));
        base
    }
}

/// The entry for `index` in a list kept in index order.
fn by_index<T>(list: &[(u32, T)], index: u32) -> Option<&T> {
    list.binary_search_by_key(&index, |(i, _)| *i)
        .ok()
        .map(|at| &list[at].1)
}

/// The result of pass 1.
pub struct Walk {
    /// Every object; index 0 is the volume root; a directory comes before its entries.
    pub found: Vec<Found>,
    /// The names and the rare parts of `found`.
    records: RecordsRest,
    /// Resource files without an object: (index of the directory, name).
    pub orphans: Vec<(u32, Vec<u8>)>,
    /// Full path of every directory in `found` (by index), for reports and repairs.
    pub dir_paths: std::collections::HashMap<u32, PathBuf>,
    /// The owner and mode of each directory's `.rsrc` directory (by the directory's index),
    /// where it has one.
    rsrc_dirs: std::collections::HashMap<u32, (u32, u32)>,
    /// Directories below the root that hold a `.Desktop`: roots of other volumes.
    pub nested_volumes: Vec<PathBuf>,
}

/// [`Records`] without the records themselves (which are [`Walk::found`]).
#[derive(Default)]
struct RecordsRest {
    names: Vec<u8>,
    netatalk: Vec<(u32, NetatalkInfo)>,
    corrupt: Vec<(u32, Box<str>)>,
    comments: Vec<(u32, Box<[u8]>)>,
}

impl Walk {
    fn from_records(records: Records) -> Walk {
        Walk {
            found: records.found,
            records: RecordsRest {
                names: records.names,
                netatalk: records.netatalk,
                corrupt: records.corrupt,
                comments: records.comments,
            },
            orphans: Vec::new(),
            dir_paths: Default::default(),
            rsrc_dirs: Default::default(),
            nested_volumes: Vec::new(),
        }
    }

    /// A walk of `root` listing `entries` (index 0 the root, parents before children), with
    /// every directory's path; for tests that make a walk without a file system.
    #[cfg(test)]
    pub(crate) fn of(root: &Path, entries: Vec<Entry>) -> Walk {
        let mut records = Records::default();
        let mut rsrc_dirs = std::collections::HashMap::new();
        for entry in entries {
            let dir = if entry.parent == u32::MAX {
                0
            } else {
                entry.parent
            };
            if let Some(owner) = records.push(entry) {
                rsrc_dirs.insert(dir, owner);
            }
        }
        let mut walk = Walk::from_records(records);
        walk.rsrc_dirs = rsrc_dirs;
        walk.dir_paths.insert(0, root.to_path_buf());
        for i in 1..walk.found.len() as u32 {
            if walk.found[i as usize].kind == Kind::Dir {
                let p = walk.path(i);
                walk.dir_paths.insert(i, p);
            }
        }
        walk
    }

    /// The name of object `index` (empty for the root).
    pub fn name(&self, index: u32) -> &[u8] {
        let i = index as usize;
        let start = self.found[i].name_start as usize;
        let end = self
            .found
            .get(i + 1)
            .map_or(self.records.names.len(), |f| f.name_start as usize);
        &self.records.names[start..end]
    }

    /// Netatalk's metadata of object `index`, when it was read.
    pub fn netatalk(&self, index: u32) -> Option<&NetatalkInfo> {
        by_index(&self.records.netatalk, index)
    }

    /// Why the resource file of object `index` could not be read, when it is corrupt.
    pub fn corrupt_reason(&self, index: u32) -> &str {
        by_index(&self.records.corrupt, index).map_or("", |why| why)
    }

    /// The comment in the resource file of object `index` (empty when none).
    pub fn comment(&self, index: u32) -> &[u8] {
        by_index(&self.records.comments, index).map_or(&[], |c| c)
    }

    /// The owner and mode of the `.rsrc` directory holding the resource file of object
    /// `index`, when it has one.
    pub fn rsrc_dir(&self, index: u32) -> Option<(u32, u32)> {
        let f = &self.found[index as usize];
        f.rsrc_uid()?;
        let dir = if f.parent == u32::MAX { 0 } else { f.parent };
        self.rsrc_dirs.get(&dir).copied()
    }

    /// The absolute path of object `index`.
    pub fn path(&self, index: u32) -> PathBuf {
        let f = &self.found[index as usize];
        if f.parent == u32::MAX {
            return self.dir_paths[&0].clone();
        }
        self.dir_paths[&f.parent].join(std::ffi::OsStr::from_bytes(self.name(index)))
    }

    /// The path of object `index` relative to the root, as bytes (`""` for the root).
    pub fn rel_path(&self, index: u32) -> Vec<u8> {
        let mut parts = Vec::new();
        let mut i = index;
        while self.found[i as usize].parent != u32::MAX {
            parts.push(self.name(i));
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

/// What the workers have collected: objects, orphaned resource files, directory paths, the
/// owners and modes of the directories' `.rsrc` directories.
struct Collected {
    records: Records,
    orphans: Vec<(u32, Vec<u8>)>,
    dirs: Vec<(u32, PathBuf)>,
    rsrc_dirs: Vec<(u32, (u32, u32))>,
}

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
        .filter(|m| m.mode() & 0o022 == 0)
        .map(|m| m.uid());
    let root_found = Entry {
        parent: u32::MAX,
        name: Vec::new(),
        kind: Kind::Dir,
        dev: meta.dev(),
        ino: meta.ino(),
        ctime: meta.ctime(),
        uid: meta.uid(),
        others_write: meta.mode() & 0o022 != 0,
        rsrc: root_rsrc,
        rsrc_uid: root_rsrc_uid,
        // (The root's resource file is in its own `.rsrc`, which its walk examines.)
        rsrc_dir: None,
        xattr_id: deskd_volume::read_id_xattr(root),
        netatalk: None,
    };
    let mut first = Records::default();
    first.push(root_found);
    let shared = Shared {
        root,
        queue: Mutex::new(Queue {
            dirs: vec![(0, root.to_path_buf())],
            busy: 0,
            failed: None,
        }),
        ready: Condvar::new(),
        found: Mutex::new(Collected {
            records: first,
            orphans: Vec::new(),
            dirs: vec![(0, root.to_path_buf())],
            rsrc_dirs: Vec::new(),
        }),
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
    let Collected {
        mut records,
        orphans,
        dirs,
        rsrc_dirs,
    } = shared.found.into_inner().unwrap();
    // The lists grew by doubling; what they hold is kept until the end of the rebuild, so
    // the spare room is given back now.
    records.found.shrink_to_fit();
    records.names.shrink_to_fit();
    let mut nested_volumes = shared.nested.into_inner().unwrap();
    nested_volumes.sort();
    let mut walk = Walk::from_records(records);
    walk.orphans = orphans;
    walk.dir_paths = dirs.into_iter().collect();
    walk.rsrc_dirs = rsrc_dirs.into_iter().collect();
    walk.nested_volumes = nested_volumes;
    Ok(walk)
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
    // The owner of the very file read (fstat), so a swap after the read changes nothing; none
    // when group or others may write it: then anyone of them wrote the header's ID.
    let owner = file
        .metadata()
        .ok()
        .filter(|m| m.mode() & 0o022 == 0)
        .map(|m| m.uid());
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
    let mut found = Records::default();
    found.found.reserve_exact(names.len());
    let mut subdir_names: Vec<(u32, Vec<u8>)> = Vec::new();
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
        if kind == Kind::Dir {
            subdir_names.push((found.found.len() as u32, name.clone()));
        }
        found.push(Entry {
            parent: dir_index,
            name,
            kind,
            dev: st.st_dev,
            ino: st.st_ino,
            ctime: st.st_ctime,
            uid: st.st_uid,
            others_write: st.st_mode & 0o022 != 0,
            rsrc,
            rsrc_uid,
            rsrc_dir: None,
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
    let count = found.found.len() as u64;
    let mut subdirs = Vec::new();
    {
        let mut all = shared.found.lock().unwrap();
        let base = all.records.append(found);
        for (i, name) in subdir_names {
            let p = path.join(std::ffi::OsStr::from_bytes(&name));
            all.dirs.push((base + i, p.clone()));
            subdirs.push((base + i, p));
        }
        all.orphans
            .extend(orphans.into_iter().map(|n| (dir_index, n)));
        if let Some(owner) = rsrc_dir_owner {
            all.rsrc_dirs.push((dir_index, owner));
        }
    }
    let total = shared.progress.fetch_add(count, Ordering::Relaxed) + count;
    on_progress(total);
    Ok(subdirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(parent: u32, name: &str, kind: Kind) -> Entry {
        crate::test_support::found(parent, name, kind, 1, 1)
    }

    #[test]
    fn paths_of_walked_objects_are_built_from_their_directory() {
        let walk = Walk::of(
            Path::new("/vol"),
            vec![
                found(u32::MAX, "", Kind::Dir),
                found(0, "docs", Kind::Dir),
                found(1, "a b", Kind::File),
                found(0, "top", Kind::File),
            ],
        );
        assert_eq!(walk.path(0), Path::new("/vol"));
        assert_eq!(walk.path(2), Path::new("/vol/docs/a b"));
        assert_eq!(walk.path(3), Path::new("/vol/top"));
        assert_eq!(walk.rel_path(0), b"");
        assert_eq!(walk.rel_path(2), b"docs/a b");
        assert_eq!(walk.rel_path(3), b"top");
        assert_eq!(walk.name(1), b"docs");
        assert_eq!(walk.name(3), b"top");
    }

    #[test]
    fn a_kept_object_gives_back_what_the_walker_read() {
        let mut header = ResourceHeader::new(40, *b"TEXT", *b"ttxt", 7);
        header.finder_flags = 9;
        header.comment = b"a note".to_vec();
        let netatalk = NetatalkInfo {
            cnid: Some(77),
            type_code: *b"PDF ",
            creator: *b"CARO",
            finder_flags: 1,
        };
        let entries = vec![
            found(u32::MAX, "", Kind::Dir),
            Entry {
                rsrc: Rsrc::Valid(header),
                rsrc_uid: Some(1000),
                rsrc_dir: Some((1000, 0o40755)),
                xattr_id: Some(41),
                ctime: -5,
                uid: 65534,
                ..found(0, "with everything", Kind::File)
            },
            Entry {
                rsrc: Rsrc::Corrupt("short header".into()),
                netatalk: Some(netatalk.clone()),
                ..found(0, "", Kind::Symlink)
            },
            found(0, "plain", Kind::File),
        ];
        let walk = Walk::of(Path::new("/vol"), entries);
        assert_eq!(std::mem::size_of::<Found>(), 64);
        let f = &walk.found[1];
        assert_eq!(
            f.rsrc(),
            RsrcState::Valid(RsrcInfo {
                id: 40,
                type_code: *b"TEXT",
                creator: *b"ttxt",
                finder_flags: 9
            })
        );
        assert_eq!(
            (f.rsrc_uid(), f.xattr_id(), f.ctime, f.uid),
            (Some(1000), Some(41), -5, 65534)
        );
        assert_eq!(walk.rsrc_dir(1), Some((1000, 0o40755)));
        assert_eq!(walk.comment(1), b"a note");
        assert_eq!(walk.name(1), b"with everything");
        assert!(walk.netatalk(1).is_none());
        let g = &walk.found[2];
        assert_eq!((g.rsrc(), g.kind), (RsrcState::Corrupt, Kind::Symlink));
        assert_eq!(walk.corrupt_reason(2), "short header");
        assert_eq!(walk.netatalk(2), Some(&netatalk));
        assert_eq!(walk.name(2), b"");
        assert_eq!(
            walk.rsrc_dir(2),
            None,
            "no resource file, no .rsrc to trust"
        );
        let h = &walk.found[3];
        assert_eq!(
            (h.rsrc(), h.rsrc_uid(), h.xattr_id()),
            (RsrcState::Missing, None, None)
        );
        assert_eq!((walk.comment(3), walk.corrupt_reason(3)), (&b""[..], ""));
        assert_eq!(walk.name(3), b"plain");
    }
}
