//! The fanotify source: one group in FID mode (`FAN_REPORT_DFID_NAME | FAN_REPORT_FID |
//! FAN_REPORT_TARGET_FID`), one `FAN_MARK_FILESYSTEM` mark on the volume root's file system
//! for create, delete and rename (`FAN_RENAME` gives both ends of a move in one event).
//!
//! Every event names a directory by its file handle; [`handles::HandleCache`] says where that
//! directory is. Events are placed in the order they happened and the cache follows the
//! directory events as they are placed, so a path is the one the object had at that moment.
//! An event whose directory cannot be opened any more (it was deleted before the event was
//! read) waits until the end of the batch for that directory's own delete or rename event,
//! which tells where it was; if none comes, the batch asks for a rescan of the volume.

pub(crate) mod handles;
pub(crate) mod records;
mod sys;

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};
use rustix::io::Errno;

use crate::names::Ignore;
use crate::{Change, Sink, WatchError};
use handles::{relative_to, HandleCache};
use records::{is_plain_name, DirName, Handle, Malformed, RawEvent};

/// Bytes per read(2): about 500 events with names.
const READ_BUFFER: usize = 64 * 1024;

const INIT_FLAGS: u32 = libc::FAN_CLASS_NOTIF
    | libc::FAN_CLOEXEC
    | libc::FAN_NONBLOCK
    | libc::FAN_REPORT_DFID_NAME
    | libc::FAN_REPORT_FID
    | libc::FAN_REPORT_TARGET_FID;

const EVENTS: u64 = libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_RENAME | libc::FAN_ONDIR;

/// One end of an event (a directory handle and a name), owned: for events that must wait.
struct OwnedEnd {
    dir: Box<[u8]>,
    name: OsString,
}

/// An event whose directory could not be placed yet.
struct Waiting {
    is_dir: bool,
    is_rename: bool,
    old: Option<OwnedEnd>,
    new: Option<OwnedEnd>,
    fid: Option<Box<[u8]>>,
}

pub(crate) struct FanotifySource {
    group: Fanotify,
    root: PathBuf,
    /// The root, opened read-only: the mount fd of `open_by_handle_at`.
    root_fd: OwnedFd,
    cache: HandleCache,
    buf: Vec<u8>,
    /// Events waiting for a directory (by its handle) that could not be placed.
    waiting: HashMap<Box<[u8]>, Vec<Waiting>>,
    /// Directories deleted in this batch → where they were (for the waiting events).
    deleted: HashMap<Box<[u8]>, PathBuf>,
    /// Handles the kernel could not open in this batch: not asked again.
    dead: std::collections::HashSet<Box<[u8]>>,
    ignore: Ignore,
    /// The last walk cached every directory of the volume.
    walked_all: bool,
}

impl FanotifySource {
    /// `root` must be absolute and canonical.
    pub(crate) fn open(root: &Path, ignore: Ignore) -> Result<Self, WatchError> {
        Self::open_with_capacity(root, ignore, handles::DEFAULT_CAPACITY)
    }

    pub(crate) fn open_with_capacity(
        root: &Path,
        ignore: Ignore,
        capacity: usize,
    ) -> Result<Self, WatchError> {
        let group = Fanotify::init(
            InitFlags::from_bits_retain(INIT_FLAGS),
            EventFFlags::from_bits_retain((libc::O_RDONLY | libc::O_CLOEXEC) as u32),
        )
        .map_err(|e| WatchError::FanotifyInit {
            reason: init_reason(e),
        })?;
        let root_fd = open_path(root).map_err(|e| WatchError::Root {
            root: root.to_path_buf(),
            source: e,
        })?;
        group
            .mark(
                MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
                MaskFlags::from_bits_retain(EVENTS),
                root_fd.as_fd(),
                Some(root),
            )
            .map_err(|e| WatchError::FanotifyMark {
                root: root.to_path_buf(),
                reason: mark_reason(e),
            })?;
        let mut source = FanotifySource {
            group,
            root: root.to_path_buf(),
            root_fd,
            cache: HandleCache::new(capacity),
            buf: vec![0; READ_BUFFER],
            waiting: HashMap::new(),
            deleted: HashMap::new(),
            dead: Default::default(),
            ignore,
            walked_all: true,
        };
        // After the mark, so a directory made while we walk is seen by one or the other.
        source.walk(Path::new("."));
        Ok(source)
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.group.as_fd()
    }

    /// How many handles the kernel had to place (the rest came from the cache).
    #[cfg(test)]
    pub(crate) fn kernel_lookups(&self) -> u64 {
        self.cache.kernel_lookups
    }

    /// Cache every directory at and under `rel` (the volume's at start, a directory moved in
    /// from outside later), so events inside the volume are placed from the cache, in event
    /// order. While every directory of the volume is cached ([`Self::complete`]) a handle the
    /// cache does not know is outside the volume: its event is dropped with no system call.
    fn walk(&mut self, rel: &Path) {
        use std::os::unix::fs::MetadataExt;
        let limit = self.cache.walk_limit();
        let Ok(root_meta) = std::fs::metadata(&self.root) else {
            self.walked_all = false;
            return;
        };
        let mut stack = vec![rel.to_path_buf()];
        while let Some(rel) = stack.pop() {
            if self.cache.len() >= limit {
                if self.walked_all {
                    tracing::info!(
                        "watch: {} has more than {limit} directories; the rest are placed \
                         by the kernel on demand",
                        self.root.display()
                    );
                }
                self.walked_all = false;
                return;
            }
            let abs = if rel == Path::new(".") {
                self.root.clone()
            } else {
                self.root.join(&rel)
            };
            let Ok(entries) = std::fs::read_dir(&abs) else {
                // Moved or deleted since the event that led here: what is under it can no
                // longer be cached by path, so a cache miss no longer means "outside".
                self.walked_all = false;
                continue;
            };
            let Some(key) = sys::handle_of(self.root_fd.as_fd(), &rel) else {
                self.walked_all = false;
                continue;
            };
            self.cache.insert(&key, abs);
            for entry in entries.flatten() {
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if !is_dir || self.ignore.name(&entry.file_name()) {
                    continue;
                }
                let same_fs = entry
                    .metadata()
                    .map(|m| m.dev() == root_meta.dev())
                    .unwrap_or(false);
                if same_fs {
                    stack.push(handles::join_rel(&rel, &entry.file_name()));
                }
            }
        }
    }

    /// Every directory of the volume is in the cache: a miss means "outside".
    fn complete(&self) -> bool {
        self.walked_all && !self.cache.evicted()
    }

    /// One read(2). `Ok(false)`: nothing was queued.
    pub(crate) fn read_once(&mut self, sink: &mut Sink<'_>) -> Result<bool, WatchError> {
        let n = match rustix::io::read(&self.group, &mut self.buf[..]) {
            Ok(0) | Err(Errno::AGAIN) => return Ok(false),
            Err(Errno::INTR) => return Ok(true),
            Ok(n) => n,
            Err(e) => return Err(WatchError::Read(e.into())),
        };
        let buf = std::mem::take(&mut self.buf);
        for event in records::events(&buf[..n]) {
            match event {
                Ok(event) => self.event(event, sink),
                Err(Malformed(why)) => {
                    tracing::warn!("watch: unreadable fanotify event ({why}); re-scanning");
                    sink.overflow = true;
                }
            }
        }
        self.buf = buf;
        Ok(true)
    }

    fn event(&mut self, event: RawEvent<'_>, sink: &mut Sink<'_>) {
        sys::close_event_fd(event.fd);
        if event.mask & libc::FAN_Q_OVERFLOW != 0 {
            sink.overflow = true;
            return;
        }
        let records = match records::records(event.info) {
            Ok(r) => r,
            Err(Malformed(why)) => {
                tracing::warn!("watch: unreadable fanotify record ({why}); re-scanning");
                sink.overflow = true;
                return;
            }
        };
        let is_dir = event.mask & libc::FAN_ONDIR != 0;
        let fid = records.fid.map(|h| h.0);
        if event.mask & libc::FAN_RENAME != 0 {
            // Never merged with another event by the kernel.
            if records.old.is_some() || records.new.is_some() {
                self.place_or_wait(is_dir, true, records.old, records.new, fid, sink);
            }
            return;
        }
        let Some(end) = records.dfid_name else {
            return;
        };
        let create = event.mask & libc::FAN_CREATE != 0;
        let delete = event.mask & libc::FAN_DELETE != 0;
        match (create, delete) {
            (true, false) => self.place_or_wait(is_dir, false, None, Some(end), fid, sink),
            (false, true) => self.place_or_wait(is_dir, false, Some(end), None, fid, sink),
            (true, true) => {
                // The kernel merged a create and a delete of the same object at the same name;
                // which came first is not said. Still there: it was deleted and linked again.
                let there_now = self.exists_now(end);
                let steps = if there_now {
                    [(Some(end), None), (None, Some(end))]
                } else {
                    [(None, Some(end)), (Some(end), None)]
                };
                for (old, new) in steps {
                    self.place_or_wait(is_dir, false, old, new, fid, sink);
                }
            }
            (false, false) => {}
        }
    }

    fn place_or_wait(
        &mut self,
        is_dir: bool,
        is_rename: bool,
        old: Option<DirName<'_>>,
        new: Option<DirName<'_>>,
        fid: Option<&[u8]>,
        sink: &mut Sink<'_>,
    ) {
        let placed = self.apply(
            is_dir,
            is_rename,
            old.map(end_ref),
            new.map(end_ref),
            fid,
            sink,
        );
        if let Err(unknown) = placed {
            let waiting = Waiting {
                is_dir,
                is_rename,
                old: old.map(owned_end),
                new: new.map(owned_end),
                fid: fid.map(Into::into),
            };
            self.waiting.entry(unknown).or_default().push(waiting);
        }
    }

    /// Whether a name in a cached directory exists now (for merged events only).
    fn exists_now(&mut self, end: DirName<'_>) -> bool {
        match self.cache.get(end.dir) {
            Some(dir) => std::fs::symlink_metadata(dir.join(end.name)).is_ok(),
            None => false,
        }
    }

    /// Places both ends and reports the change. `Err(handle)`: that directory cannot be
    /// placed yet.
    fn apply(
        &mut self,
        is_dir: bool,
        is_rename: bool,
        old: Option<(&[u8], &std::ffi::OsStr)>,
        new: Option<(&[u8], &std::ffi::OsStr)>,
        fid: Option<&[u8]>,
        sink: &mut Sink<'_>,
    ) -> Result<(), Box<[u8]>> {
        let complete = self.complete();
        let mut place =
            |end: Option<(&[u8], &std::ffi::OsStr)>| -> Result<Option<PathBuf>, Box<[u8]>> {
                let Some((dir, name)) = end else {
                    return Ok(None);
                };
                if !is_plain_name(name) {
                    // Never from the kernel for these events; refuse rather than guess.
                    return Ok(None);
                }
                if let Some(abs) = self.deleted.get(dir) {
                    return Ok(Some(abs.join(name)));
                }
                if let Some(abs) = self.cache.get(Handle(dir)) {
                    return Ok(Some(abs.join(name)));
                }
                let dir_abs = if complete {
                    // Every directory of the volume is cached: this one is outside.
                    return Ok(None);
                } else if self.dead.contains(dir) {
                    return Err(dir.into());
                } else {
                    match self.cache.place(self.root_fd.as_fd(), Handle(dir)) {
                        Some(abs) => abs,
                        None => {
                            self.dead.insert(dir.into());
                            return Err(dir.into());
                        }
                    }
                };
                Ok(Some(dir_abs.join(name)))
            };
        let from = place(old)?;
        let to = place(new)?;
        if is_dir {
            // Events that waited for this directory can be placed now, where it was before
            // this delete or move, and go first: they happened before it.
            if let (Some(fid), Some(from)) = (fid, from.as_deref()) {
                if let Some(waiting) = self.waiting.remove(fid) {
                    self.dead.remove(fid);
                    self.deleted.insert(fid.into(), from.to_path_buf());
                    self.retry(waiting, sink);
                    if is_rename {
                        // Still there, elsewhere: later events are placed by the cache.
                        self.deleted.remove(fid);
                    }
                }
            }
            self.follow_directory(from.as_deref(), to.as_deref(), fid, is_rename);
            if is_rename && complete {
                self.walk_moved_in(from.as_deref(), to.as_deref());
            }
        }
        let from_rel = from.as_deref().and_then(|a| relative_to(&self.root, a));
        let to_rel = to.as_deref().and_then(|a| relative_to(&self.root, a));
        match (from_rel, to_rel) {
            (Some(from), Some(to)) => sink.emit(Change::Moved {
                from,
                to,
                dir: is_dir,
            }),
            (Some(path), None) => sink.emit(Change::Removed { path, dir: is_dir }),
            (None, Some(path)) => sink.emit(Change::Created { path, dir: is_dir }),
            (None, None) => {}
        }
        Ok(())
    }

    fn retry(&mut self, waiting: Vec<Waiting>, sink: &mut Sink<'_>) {
        for w in waiting {
            let old = w.old.as_ref().map(|e| (&*e.dir, e.name.as_os_str()));
            let new = w.new.as_ref().map(|e| (&*e.dir, e.name.as_os_str()));
            let fid = w.fid.as_deref();
            if let Err(unknown) = self.apply(w.is_dir, w.is_rename, old, new, fid, sink) {
                self.waiting.entry(unknown).or_default().push(w);
            }
        }
    }

    /// A directory moved in from outside: cache what is under it, so the cache stays complete.
    fn walk_moved_in(&mut self, from: Option<&Path>, to: Option<&Path>) {
        let from_inside = from.is_some_and(|a| relative_to(&self.root, a).is_some());
        if from_inside {
            return;
        }
        if let Some(rel) = to.and_then(|a| relative_to(&self.root, a)) {
            self.walk(&rel);
        }
    }

    /// Keeps the cache right after a directory event.
    fn follow_directory(
        &mut self,
        from: Option<&Path>,
        to: Option<&Path>,
        fid: Option<&[u8]>,
        is_rename: bool,
    ) {
        if let Some(from) = from {
            if self.root.starts_with(from) {
                tracing::warn!(
                    "watch: the volume root {} (or a directory above it) was moved or deleted",
                    self.root.display()
                );
            }
        }
        match (from, to) {
            (Some(from), Some(to)) => {
                self.cache.rename_prefix(from, to);
                if let Some(fid) = fid {
                    self.cache.insert(fid, to.to_path_buf());
                }
            }
            (Some(from), None) => {
                // Deleted, or moved out of what this watcher can place.
                self.cache.remove_under(from);
                if let Some(fid) = fid {
                    self.cache.remove(fid);
                    if !is_rename {
                        // Only events from before the delete can name it: they may wait.
                        self.deleted.insert(fid.into(), from.to_path_buf());
                    }
                }
            }
            (None, Some(to)) => match fid {
                Some(fid) => self.cache.insert(fid, to.to_path_buf()),
                // The file system gave no handle for the new directory: it cannot be cached,
                // so a cache miss no longer proves "outside".
                None => self.walked_all = false,
            },
            (None, None) => {}
        }
    }

    /// End of a batch: place the waiting events now that their directories' own events may
    /// have been read; what still cannot be placed asks for a rescan of the volume.
    pub(crate) fn finish(&mut self, sink: &mut Sink<'_>) -> Result<(), WatchError> {
        if !self.waiting.is_empty() {
            // The delete event of a directory that is gone is queued by now: read it.
            while self.read_once(sink)? {}
        }
        if !self.waiting.is_empty() {
            tracing::debug!(
                "watch: events in {} directories that cannot be placed; re-scanning {}",
                self.waiting.len(),
                self.root.display()
            );
            self.waiting.clear();
            sink.emit(Change::Rescan {
                path: PathBuf::from("."),
            });
        }
        self.deleted.clear();
        self.dead.clear();
        Ok(())
    }

    /// Events were lost: the cache may be stale. Start again from the disk.
    pub(crate) fn after_overflow(&mut self) {
        self.cache.clear();
        self.walked_all = true;
        self.waiting.clear();
        self.deleted.clear();
        self.dead.clear();
        self.walk(Path::new("."));
    }
}

fn end_ref<'a>(end: DirName<'a>) -> (&'a [u8], &'a std::ffi::OsStr) {
    (end.dir.0, end.name)
}

fn owned_end(end: DirName<'_>) -> OwnedEnd {
    OwnedEnd {
        dir: end.dir.0.into(),
        name: end.name.to_os_string(),
    }
}

fn open_path(root: &Path) -> std::io::Result<OwnedFd> {
    use rustix::fs::{open, Mode, OFlags};
    Ok(open(
        root,
        // Not O_PATH: open_by_handle_at refuses an O_PATH mount fd (EBADF).
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn init_reason(e: nix::errno::Errno) -> String {
    match e {
        nix::errno::Errno::EPERM => {
            "fanotify_init: not permitted (needs CAP_SYS_ADMIN: run deskd serve as root)".into()
        }
        nix::errno::Errno::EINVAL => {
            "fanotify_init: this kernel lacks file-handle events (FAN_REPORT_TARGET_FID and \
             FAN_RENAME need Linux 5.17)"
                .into()
        }
        nix::errno::Errno::ENOSYS => "fanotify_init: the kernel has no fanotify".into(),
        other => format!("fanotify_init: {}", other.desc()),
    }
}

fn mark_reason(e: nix::errno::Errno) -> String {
    match e {
        nix::errno::Errno::ENODEV | nix::errno::Errno::EOPNOTSUPP => {
            "the file system does not report file handles".into()
        }
        nix::errno::Errno::EXDEV => {
            "the file system reports no unique file system id (a subvolume or overlay?)".into()
        }
        nix::errno::Errno::EPERM => "fanotify_mark: not permitted (needs CAP_SYS_ADMIN)".into(),
        other => format!("fanotify_mark: {}", other.desc()),
    }
}
