//! The fanotify source: one group in FID mode (`FAN_REPORT_DFID_NAME | FAN_REPORT_FID |
//! FAN_REPORT_TARGET_FID`), one `FAN_MARK_FILESYSTEM` mark on the volume root's file system
//! for create, delete and rename (`FAN_RENAME` gives both ends of a move in one event).
//!
//! Every event names a directory by its file handle; [`handles::HandleCache`] says where that
//! directory is. The start walks the volume and caches every directory; events are placed in
//! the order they happened and the cache follows the directory events as they are placed, so a
//! path is the one the object had at that moment. While the cache holds every directory of the
//! volume, a miss means "outside" and the event is dropped with no system call.
//!
//! Only when the volume has more directories than the cache does the kernel place a handle
//! (`open_by_handle_at`). Then an event whose directory cannot be opened any more (deleted
//! before the event was read) waits for that directory's own delete or rename event, which
//! tells where it was, and so does an event in a directory this read renames later; what
//! still waits at the end of the batch asks for a rescan of the volume.

mod floor;
pub use floor::Floor;
pub use pump::Pumped;
pub(crate) mod handles;
mod pump;
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

/// Most bytes of events the watcher holds unread (its pump, [`pump`], takes them out of the
/// kernel as they come): beyond, they are dropped and the volume rescanned, as after the
/// kernel's own overflow. The kernel's queue is unlimited (`FAN_UNLIMITED_QUEUE`) and kept
/// short by the pump: its default of 16,384 events lasts 0.15 s when a program creates 100,000
/// files a second, less than one batch of the server takes to apply. An event takes about 100
/// bytes here with a 20-byte name (a create: its folder's handle and name, the file's handle),
/// up to about 600 for a rename between two 255-byte names: this bound holds about 2 million
/// creates of short names, 350,000 such renames at worst, in the server's own memory (its RSS
/// shows it; the kernel's queue holds what arrived in the last [`pump`] pause).
pub(crate) const HELD_BYTES_MAX: u64 = 192 << 20;

pub(crate) const INIT_FLAGS: u32 = libc::FAN_CLASS_NOTIF
    | libc::FAN_CLOEXEC
    | libc::FAN_NONBLOCK
    | libc::FAN_REPORT_DFID_NAME
    | libc::FAN_REPORT_FID
    | libc::FAN_REPORT_TARGET_FID
    | libc::FAN_UNLIMITED_QUEUE;

pub(crate) const EVENTS: u64 =
    libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_RENAME | libc::FAN_ONDIR;

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
    /// The group: its mark lasts as long as it (the pump reads a duplicate).
    _group: Fanotify,
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
    /// Not complete only: directories (by handle) renamed in the read being placed → the index
    /// of their last rename there, and the index of the event being placed.
    renamed_later: HashMap<Box<[u8]>, usize>,
    event_index: usize,
    /// Takes the events out of the kernel as they come, while this thread is elsewhere.
    pump: pump::Pump,
}

/// A fanotify group made as the watcher's ([`INIT_FLAGS`]) with one filesystem mark for
/// [`EVENTS`] on `root`'s file system, and `root` opened (`O_PATH`).
pub(crate) fn marked_group(root: &Path) -> Result<(Fanotify, OwnedFd), WatchError> {
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
    Ok((group, root_fd))
}

impl FanotifySource {
    /// `root` must be absolute and canonical.
    /// `held_max`: most bytes of events held unread ([`HELD_BYTES_MAX`] by default).
    pub(crate) fn open(root: &Path, ignore: Ignore, held_max: u64) -> Result<Self, WatchError> {
        Self::open_with_capacity(root, ignore, handles::DEFAULT_CAPACITY, held_max)
    }

    pub(crate) fn open_with_capacity(
        root: &Path,
        ignore: Ignore,
        capacity: usize,
        held_max: u64,
    ) -> Result<Self, WatchError> {
        let (group, root_fd) = marked_group(root)?;
        let pump = rustix::io::fcntl_dupfd_cloexec(&group, 0)
            .map_err(std::io::Error::from)
            .and_then(|fd| pump::Pump::start(fd, held_max, root))
            .map_err(|e| WatchError::FanotifyInit {
                reason: format!("the queue's reader thread: {e}"),
            })?;
        let mut source = FanotifySource {
            _group: group,
            pump,
            root: root.to_path_buf(),
            root_fd,
            cache: HandleCache::new(capacity),
            buf: vec![0; READ_BUFFER],
            waiting: HashMap::new(),
            deleted: HashMap::new(),
            dead: Default::default(),
            ignore,
            walked_all: true,
            renamed_later: HashMap::new(),
            event_index: 0,
        };
        // After the mark, so a directory made while we walk is seen by one or the other.
        source.walk(Path::new("."));
        Ok(source)
    }

    /// Readable while events wait (the pump's, which holds what the kernel had).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.pump.ready_fd()
    }

    /// How many times the pump dropped events over its bound (`held_max`) since the last
    /// call (each an overflow).
    pub(crate) fn drops(&self) -> u64 {
        self.pump.take_drops()
    }

    /// Drop everything held and queued (the rescan that follows an overflow finds what they
    /// said), so the memory is given back at once.
    pub(crate) fn discard_queued(&mut self) {
        self.pump.discard();
    }

    /// Bytes of events held unread now, and the most held at once.
    pub(crate) fn held_bytes(&self) -> (u64, u64) {
        self.pump.held_bytes()
    }

    /// Bytes of events the pump took from the kernel since the start, all and deskd's own.
    pub(crate) fn pumped(&self) -> pump::Pumped {
        self.pump.pumped()
    }

    /// Forget every directory: from now on each is placed by the kernel first.
    #[cfg(test)]
    pub(crate) fn forget_cache(&mut self) {
        self.cache.clear();
        self.walked_all = false;
    }

    /// Forget the directories at and under `rel` but stay complete: as if the start-up walk
    /// had missed them (a directory moved across the walk while it ran).
    #[cfg(test)]
    pub(crate) fn forget_under(&mut self, rel: &Path) {
        self.cache.remove_under(&self.root.join(rel));
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
            let abs = handles::absolute(&self.root, &rel);
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
        // Without a complete cache, everything by now in one read (`Pump::read_all`).
        let complete = self.complete();
        let mut buf = std::mem::take(&mut self.buf);
        let read = if complete {
            buf.resize(READ_BUFFER, 0);
            self.pump.read(&mut buf[..])
        } else {
            self.pump.read_all(&mut buf)
        };
        let n = match read {
            Ok(0) | Err(Errno::AGAIN) => {
                self.buf = buf;
                return Ok(false);
            }
            Err(Errno::INTR) => {
                self.buf = buf;
                return Ok(true);
            }
            Ok(n) => n,
            Err(e) => {
                self.buf = buf;
                return Err(WatchError::Read(e.into()));
            }
        };
        self.note_renames(&buf[..n]);
        let events: Vec<_> = records::events(&buf[..n]).collect();
        // Second halves of exchanges already placed with their first half.
        let mut paired = std::collections::HashSet::new();
        for (i, event) in events.iter().enumerate() {
            self.event_index = i + 1;
            if paired.remove(&i) {
                continue;
            }
            match event {
                Ok(event) => match second_half(event, &events[i + 1..]) {
                    Some((j, (first, second))) => {
                        paired.insert(i + 1 + j);
                        self.exchange(first, second, sink);
                    }
                    None => self.event(*event, sink),
                },
                Err(Malformed(why)) => {
                    tracing::warn!("watch: unreadable fanotify event ({why}); re-scanning");
                    sink.overflow = true;
                }
            }
        }
        // A large read's buffer is not kept (its memory is the held events').
        if buf.capacity() > READ_BUFFER {
            buf = vec![0; READ_BUFFER];
        }
        self.buf = buf;
        Ok(true)
    }

    /// Without a complete cache a directory is placed by the kernel where it is *now*; if it
    /// is renamed later in this read, its earlier events must wait for that rename (which says
    /// where it was) instead. So note which directories this read renames, and where.
    fn note_renames(&mut self, buf: &[u8]) {
        self.renamed_later.clear();
        if self.complete() {
            return;
        }
        for (index, event) in records::events(buf).enumerate() {
            let Ok(event) = event else { break };
            if event.mask & libc::FAN_RENAME == 0 || event.mask & libc::FAN_ONDIR == 0 {
                continue;
            }
            if let Some(fid) = records::records(event.info).ok().and_then(|r| r.fid) {
                self.renamed_later.insert(fid.0.into(), index + 1);
            }
        }
    }

    /// `renameat2(RENAME_EXCHANGE)`: two names swapped their objects. No `Change` says that,
    /// so the server re-scans both parents; the cache swaps the two subtrees.
    fn exchange(&mut self, first: Swap<'_>, second: Swap<'_>, sink: &mut Sink<'_>) {
        let complete = self.complete();
        let a = self.place_end(complete, first.from.dir.0, first.from.name);
        let b = self.place_end(complete, first.to.dir.0, first.to.name);
        let (Ok(a), Ok(b)) = (a, b) else {
            sink.emit(Change::Rescan {
                path: PathBuf::from("."),
            });
            return;
        };
        if first.is_dir || second.is_dir {
            if let (Some(a), Some(b)) = (a.as_deref(), b.as_deref()) {
                // A name no path can have (it holds a NUL) parks one subtree meanwhile.
                let parked = Path::new("/\0deskd-exchange");
                self.cache.rename_prefix(a, parked);
                self.cache.rename_prefix(b, a);
                self.cache.rename_prefix(parked, b);
            }
            if let (true, Some(fid), Some(b)) = (first.is_dir, first.fid, b.as_deref()) {
                self.cache.insert(fid, b.to_path_buf());
            }
            if let (true, Some(fid), Some(a)) = (second.is_dir, second.fid, a.as_deref()) {
                self.cache.insert(fid, a.to_path_buf());
            }
        }
        let a_rel = a.as_deref().and_then(|p| relative_to(&self.root, p));
        let b_rel = b.as_deref().and_then(|p| relative_to(&self.root, p));
        match (a_rel, b_rel) {
            (Some(a), Some(b)) => {
                for path in [a, b] {
                    sink.emit(Change::Rescan {
                        path: handles::parent_rel(&path),
                    });
                }
            }
            // Across the volume's edge: the name inside lost its object and got another.
            (Some(inside), None) => self.swapped_at_edge(
                inside,
                first.is_dir,
                second.is_dir,
                a.as_deref(),
                b.as_deref(),
                sink,
            ),
            (None, Some(inside)) => self.swapped_at_edge(
                inside,
                second.is_dir,
                first.is_dir,
                b.as_deref(),
                a.as_deref(),
                sink,
            ),
            (None, None) => {}
        }
    }

    /// An exchange between a name inside (`inside`, whose object was a directory if
    /// `was_dir`, and is one now if `is_dir`) and one outside.
    fn swapped_at_edge(
        &mut self,
        inside: PathBuf,
        was_dir: bool,
        is_dir: bool,
        inside_abs: Option<&Path>,
        outside_abs: Option<&Path>,
        sink: &mut Sink<'_>,
    ) {
        if let Some(outside_abs) = outside_abs {
            self.cache.remove_under(outside_abs);
        }
        if is_dir && self.complete() && inside_abs.is_some() {
            self.walk(&inside);
        }
        sink.emit(Change::Removed {
            path: inside.clone(),
            dir: was_dir,
        });
        sink.emit(Change::Created {
            path: inside,
            dir: is_dir,
        });
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

    /// Where a name in a directory (by handle) is: `Ok(None)` outside the volume (or not a
    /// plain name), `Err(handle)` when the directory cannot be placed yet.
    fn place_end(
        &mut self,
        complete: bool,
        dir: &[u8],
        name: &std::ffi::OsStr,
    ) -> Result<Option<PathBuf>, Box<[u8]>> {
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
        if complete {
            // Every directory of the volume is cached: this one is outside.
            return Ok(None);
        }
        if self.dead.contains(dir) {
            return Err(dir.into());
        }
        if self
            .renamed_later
            .get(dir)
            .is_some_and(|&at| at > self.event_index)
        {
            // Renamed later in this read: placed by that rename (see `note_renames`).
            return Err(dir.into());
        }
        match self.cache.place(self.root_fd.as_fd(), Handle(dir)) {
            Some(abs) => Ok(Some(abs.join(name))),
            None => {
                self.dead.insert(dir.into());
                Err(dir.into())
            }
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
        let from = match old {
            Some((dir, name)) => self.place_end(complete, dir, name)?,
            None => None,
        };
        let to = match new {
            Some((dir, name)) => self.place_end(complete, dir, name)?,
            None => None,
        };
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
            let was_cached = fid.is_some_and(|f| self.cache.contains(f));
            self.follow_directory(from.as_deref(), to.as_deref(), fid, is_rename);
            if is_rename && complete && !was_cached {
                self.walk_arrived(to.as_deref());
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

    /// A directory the cache did not know was moved to `to`: moved in from outside or from
    /// an ignored name, or moved from a part of the volume the start-up walk had not reached
    /// yet into one it had passed. Cache what is under it, so the cache stays complete.
    fn walk_arrived(&mut self, to: Option<&Path>) {
        if let Some(rel) = to.and_then(|a| relative_to(&self.root, a)) {
            if !self.ignore.path(&rel) {
                self.walk(&rel);
            }
        }
    }

    /// Whether directories at `abs` are kept in the cache: inside the volume, not ignored
    /// (events under `.rsrc` and ignored names are dropped by a cache miss, the cheapest way).
    fn cached_place(&self, abs: &Path) -> bool {
        relative_to(&self.root, abs).is_some_and(|rel| !self.ignore.path(&rel))
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
            (None, Some(to)) if self.complete() && !self.cached_place(to) => {}
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
            // The delete event of a directory that is gone is queued by now: read it (a few
            // reads at most, so a storm cannot hold the batch).
            for _ in 0..4 {
                if !self.read_once(sink)? {
                    break;
                }
            }
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

/// One half of an exchange: an object moved from one name to the other.
struct Swap<'a> {
    from: DirName<'a>,
    to: DirName<'a>,
    fid: Option<&'a [u8]>,
    is_dir: bool,
}

/// How many events after a rename's are searched for the other half of an exchange.
const EXCHANGE_LOOKAHEAD: usize = 64;

/// The other half of an exchange whose first half is `first`: the rename in `later` that
/// [`exchange_pair`] matches with it, with its index there. Other events may come between (the
/// kernel queues events of other directories meanwhile, and a filesystem mark sees the whole
/// file system), but none in the two directories of the exchange: it holds their locks until
/// both halves are queued, so such an event means the names changed in between.
fn second_half<'a>(
    first: &RawEvent<'a>,
    later: &[Result<RawEvent<'a>, Malformed>],
) -> Option<(usize, (Swap<'a>, Swap<'a>))> {
    if first.mask & libc::FAN_RENAME == 0 {
        return None;
    }
    let r = records::records(first.info).ok()?;
    let dirs = [r.old?.dir, r.new?.dir];
    for (j, event) in later.iter().take(EXCHANGE_LOOKAHEAD).enumerate() {
        let event = event.as_ref().ok()?;
        if let Some(pair) = exchange_pair(first, event) {
            return Some((j, pair));
        }
        let r = records::records(event.info).ok()?;
        if [r.old, r.new, r.dfid_name]
            .iter()
            .flatten()
            .any(|end| dirs.contains(&end.dir))
        {
            return None;
        }
    }
    None
}

/// Two rename events that swapped two names (`renameat2(RENAME_EXCHANGE)` reports one rename
/// per object): the second goes where the first came from, and they moved different objects.
fn exchange_pair<'a>(first: &RawEvent<'a>, second: &RawEvent<'a>) -> Option<(Swap<'a>, Swap<'a>)> {
    let swap = |event: &RawEvent<'a>| -> Option<Swap<'a>> {
        if event.mask & libc::FAN_RENAME == 0 {
            return None;
        }
        let r = records::records(event.info).ok()?;
        Some(Swap {
            from: r.old?,
            to: r.new?,
            fid: r.fid.map(|h| h.0),
            is_dir: event.mask & libc::FAN_ONDIR != 0,
        })
    };
    let (a, b) = (swap(first)?, swap(second)?);
    let same = |x: &DirName<'_>, y: &DirName<'_>| x.dir == y.dir && x.name == y.name;
    let different_objects = match (a.fid, b.fid) {
        (Some(x), Some(y)) => x != y,
        _ => false,
    };
    (same(&a.from, &b.to) && same(&a.to, &b.from) && different_objects).then_some((a, b))
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
