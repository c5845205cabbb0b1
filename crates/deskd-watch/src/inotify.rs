//! The inotify fallback: a watch per directory of the volume (not `.rsrc` ones, not other file
//! systems), added as directories appear. A directory made and filled before its watch is
//! added is scanned and its contents reported as `Created`. Moves are paired by cookie: an
//! unpaired `IN_MOVED_FROM` is a move out (`Removed`), an unpaired `IN_MOVED_TO` a move in
//! (`Created`). The per-user watch limit (`fs.inotify.max_user_watches`) reached is an error
//! at start and an overflow later (the server re-scans; the directories beyond the limit are
//! not watched until a restart).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;

use crate::fanotify::handles::{absolute, join_rel, parent_rel};
use crate::fanotify::records::is_plain_name;
use crate::names::Ignore;
use crate::{Change, Sink, WatchError};

const READ_BUFFER: usize = 64 * 1024;

/// How long the end of a batch waits for the `IN_MOVED_TO` of an unpaired `IN_MOVED_FROM`
/// (the kernel queues the two one after the other within the same rename).
const PAIR_WAIT: Duration = Duration::from_millis(2);

/// The watched directories: wd ↔ path relative to the root.
struct Tree {
    root: PathBuf,
    dev: u64,
    by_wd: HashMap<i32, PathBuf>,
    by_path: HashMap<PathBuf, i32>,
    /// `IN_MOVED_FROM` waiting for its `IN_MOVED_TO`: cookie, path, is a directory.
    moved_from: Vec<(u32, PathBuf, bool)>,
    /// The watch limit was reached (logged once).
    limit_reached: bool,
    /// A directory move onto a watched directory, held until the next event: if that is the
    /// move back, the two were one `renameat2(RENAME_EXCHANGE)`.
    held: Option<(PathBuf, PathBuf)>,
}

pub(crate) struct InotifySource {
    fd: OwnedFd,
    buf: Vec<MaybeUninit<u8>>,
    tree: Tree,
}

fn watch_flags() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::ONLYDIR
        | WatchFlags::DONT_FOLLOW
        | WatchFlags::EXCL_UNLINK
}

impl InotifySource {
    /// `root` must be absolute and canonical.
    pub(crate) fn open(root: &Path, ignore: &Ignore) -> Result<Self, WatchError> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
            .map_err(|e| WatchError::InotifyInit(e.into()))?;
        let dev = std::fs::metadata(root)
            .map_err(|e| WatchError::Root {
                root: root.to_path_buf(),
                source: e,
            })?
            .dev();
        let mut source = InotifySource {
            fd,
            buf: vec![MaybeUninit::uninit(); READ_BUFFER],
            tree: Tree {
                root: root.to_path_buf(),
                dev,
                by_wd: HashMap::new(),
                by_path: HashMap::new(),
                moved_from: Vec::new(),
                limit_reached: false,
                held: None,
            },
        };
        source
            .tree
            .add_tree(source.fd.as_fd(), Path::new("."), ignore, None)?;
        Ok(source)
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    #[cfg(test)]
    pub(crate) fn watches(&self) -> usize {
        self.tree.by_wd.len()
    }

    /// One read(2). `Ok(false)`: nothing was queued.
    pub(crate) fn read_once(
        &mut self,
        ignore: &Ignore,
        sink: &mut Sink<'_>,
    ) -> Result<bool, WatchError> {
        let fd = self.fd.as_fd();
        let mut reader = inotify::Reader::new(fd, &mut self.buf);
        let mut first = true;
        loop {
            if !first && reader.is_buffer_empty() {
                return Ok(true);
            }
            let event = match reader.next() {
                Ok(event) => event,
                Err(Errno::AGAIN) => return Ok(!first),
                Err(Errno::INTR) => return Ok(true),
                Err(e) => return Err(WatchError::Read(e.into())),
            };
            first = false;
            let name = event.file_name().map(|n| OsStr::from_bytes(n.to_bytes()));
            self.tree.event(
                fd,
                event.wd(),
                event.events(),
                event.cookie(),
                name,
                ignore,
                sink,
            );
        }
    }

    /// End of a batch: an `IN_MOVED_FROM` still unpaired is a move out of the volume.
    pub(crate) fn finish(
        &mut self,
        ignore: &Ignore,
        sink: &mut Sink<'_>,
    ) -> Result<(), WatchError> {
        if !self.tree.moved_from.is_empty() {
            let mut fds = [rustix::event::PollFd::new(
                &self.fd,
                rustix::event::PollFlags::IN,
            )];
            let timeout = rustix::event::Timespec::try_from(PAIR_WAIT).expect("a small duration");
            if rustix::event::poll(&mut fds, Some(&timeout)).unwrap_or(0) > 0 {
                for _ in 0..4 {
                    if !self.read_once(ignore, sink)? {
                        break;
                    }
                }
            }
        }
        self.tree.release_held(sink);
        for (_, path, dir) in std::mem::take(&mut self.tree.moved_from) {
            if dir {
                self.tree.forget_under(self.fd.as_fd(), &path);
            }
            sink.emit(Change::Removed { path, dir });
        }
        Ok(())
    }

    /// Events were lost: directories made meanwhile may have no watch. Walk again.
    pub(crate) fn after_overflow(&mut self, ignore: &Ignore) {
        self.tree.moved_from.clear();
        if let Err(e) = self
            .tree
            .add_tree(self.fd.as_fd(), Path::new("."), ignore, None)
        {
            tracing::error!("watch: {e}");
        }
    }
}

impl Tree {
    #[allow(clippy::too_many_arguments)]
    fn event(
        &mut self,
        fd: BorrowedFd<'_>,
        wd: i32,
        mask: ReadFlags,
        cookie: u32,
        name: Option<&OsStr>,
        ignore: &Ignore,
        sink: &mut Sink<'_>,
    ) {
        if mask.contains(ReadFlags::QUEUE_OVERFLOW) {
            sink.overflow = true;
            return;
        }
        if mask.contains(ReadFlags::IGNORED) {
            if let Some(path) = self.by_wd.remove(&wd) {
                if self.by_path.get(&path) == Some(&wd) {
                    self.by_path.remove(&path);
                }
            }
            return;
        }
        if !mask.contains(ReadFlags::MOVED_FROM) && !mask.contains(ReadFlags::MOVED_TO) {
            self.release_held(sink);
        }
        let Some(dir_path) = self.by_wd.get(&wd) else {
            return;
        };
        let Some(name) = name.filter(|n| is_plain_name(n)) else {
            return;
        };
        let path = join_rel(dir_path, name);
        let dir = mask.contains(ReadFlags::ISDIR);
        if mask.contains(ReadFlags::CREATE) {
            sink.emit(Change::Created {
                path: path.clone(),
                dir,
            });
            if dir && !ignore.name(name) {
                self.add_or_overflow(fd, &path, ignore, Some(sink));
            }
        } else if mask.contains(ReadFlags::DELETE) {
            if dir {
                self.forget_under(fd, &path);
            }
            sink.emit(Change::Removed { path, dir });
        } else if mask.contains(ReadFlags::MOVED_FROM) {
            self.moved_from.push((cookie, path, dir));
        } else if mask.contains(ReadFlags::MOVED_TO) {
            match self.moved_from.iter().position(|(c, _, _)| *c == cookie) {
                Some(i) => {
                    let (_, from, _) = self.moved_from.remove(i);
                    if !dir {
                        self.release_held(sink);
                        sink.emit(Change::Moved {
                            from,
                            to: path,
                            dir,
                        });
                        return;
                    }
                    let onto_watched = self.by_path.contains_key(&path);
                    if let Some((a, b)) = self.held.take() {
                        if a == path && b == from {
                            // The exchange's second half: the cache is right (see below); no
                            // Change says "swapped", so the server re-scans both parents.
                            for p in [a, b] {
                                sink.emit(Change::Rescan {
                                    path: parent_rel(&p),
                                });
                            }
                            return;
                        }
                        sink.emit(Change::Moved {
                            from: a,
                            to: b,
                            dir: true,
                        });
                    }
                    if onto_watched {
                        // Replaced or exchanged: which inode is where cannot be told from the
                        // events, so ask the kernel (add_watch returns an inode's existing wd).
                        self.unmap_under(&from);
                        self.unmap_under(&path);
                        for p in [&from, &path] {
                            self.add_or_overflow(fd, p, ignore, None);
                        }
                        self.held = Some((from, path));
                    } else {
                        self.rename_under(&from, &path);
                        sink.emit(Change::Moved {
                            from,
                            to: path,
                            dir,
                        });
                    }
                }
                None => {
                    self.release_held(sink);
                    sink.emit(Change::Created {
                        path: path.clone(),
                        dir,
                    });
                    if dir && !ignore.name(name) {
                        // Moved in whole: the server registers the subtree of a created
                        // directory, so only the watches are needed here.
                        self.add_or_overflow(fd, &path, ignore, None);
                    }
                }
            }
        }
    }

    fn add_or_overflow(
        &mut self,
        fd: BorrowedFd<'_>,
        path: &Path,
        ignore: &Ignore,
        report: Option<&mut Sink<'_>>,
    ) {
        let mut report = report;
        if let Err(e) = self.add_tree(fd, path, ignore, report.as_deref_mut()) {
            if !self.limit_reached {
                tracing::error!("watch: {e}; changes below the limit are re-scanned");
                self.limit_reached = true;
            }
            if let Some(sink) = report {
                sink.overflow = true;
            }
        }
    }

    /// Watches `rel` and every directory under it. With `report`, everything found under
    /// `rel` is reported as `Created` (it may have been made before the watch existed).
    fn add_tree(
        &mut self,
        fd: BorrowedFd<'_>,
        rel: &Path,
        ignore: &Ignore,
        mut report: Option<&mut Sink<'_>>,
    ) -> Result<(), WatchError> {
        let mut stack = vec![rel.to_path_buf()];
        while let Some(rel) = stack.pop() {
            let abs = absolute(&self.root, &rel);
            let wd = match inotify::add_watch(fd, &abs, watch_flags()) {
                Ok(wd) => wd,
                Err(Errno::NOSPC) => {
                    return Err(WatchError::InotifyLimit {
                        watches: self.by_wd.len(),
                    })
                }
                // Gone or replaced by a non-directory meanwhile: its own events say so.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::ACCESS | Errno::LOOP) => continue,
                Err(e) => return Err(WatchError::InotifyWatch(abs, e.into())),
            };
            if let Some(old) = self.by_path.insert(rel.clone(), wd) {
                if old != wd && self.by_wd.get(&old) == Some(&rel) {
                    self.by_wd.remove(&old);
                }
            }
            if let Some(old_path) = self.by_wd.insert(wd, rel.clone()) {
                if old_path != rel && self.by_path.get(&old_path) == Some(&wd) {
                    self.by_path.remove(&old_path);
                }
            }
            let Ok(entries) = std::fs::read_dir(&abs) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if ignore.name(&name) {
                    continue;
                }
                let path = join_rel(&rel, &name);
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if let Some(sink) = report.as_deref_mut() {
                    sink.emit(Change::Created {
                        path: path.clone(),
                        dir: is_dir,
                    });
                }
                let same_fs = is_dir
                    && entry
                        .metadata()
                        .map(|m| m.dev() == self.dev)
                        .unwrap_or(false);
                if same_fs {
                    stack.push(path);
                }
            }
        }
        Ok(())
    }

    /// A held directory move is reported once the next event shows it was not an exchange.
    fn release_held(&mut self, sink: &mut Sink<'_>) {
        if let Some((from, to)) = self.held.take() {
            sink.emit(Change::Moved {
                from,
                to,
                dir: true,
            });
        }
    }

    /// The watched paths at and under `dir`, with their watches.
    fn mapped_under(&self, dir: &Path) -> Vec<(PathBuf, i32)> {
        self.by_path
            .iter()
            .filter(|(p, _)| p.starts_with(dir))
            .map(|(p, wd)| (p.clone(), *wd))
            .collect()
    }

    /// Forgets the paths at and under `dir` without removing the watches (they are asked
    /// for again by path).
    fn unmap_under(&mut self, dir: &Path) {
        let gone = self.mapped_under(dir);
        for (path, wd) in gone {
            self.by_path.remove(&path);
            if self.by_wd.get(&wd) == Some(&path) {
                self.by_wd.remove(&wd);
            }
        }
    }

    /// A directory moved within the volume: its watches (and those under it) follow.
    fn rename_under(&mut self, from: &Path, to: &Path) {
        let moved = self.mapped_under(from);
        for (old, wd) in moved {
            self.by_path.remove(&old);
            let rest = old.strip_prefix(from).expect("filtered by prefix");
            let new = if rest.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rest)
            };
            self.by_wd.insert(wd, new.clone());
            self.by_path.insert(new, wd);
        }
    }

    /// A directory deleted or moved out: stop watching it and everything under it.
    fn forget_under(&mut self, fd: BorrowedFd<'_>, dir: &Path) {
        let gone = self.mapped_under(dir);
        for (path, wd) in gone {
            self.by_path.remove(&path);
            self.by_wd.remove(&wd);
            // Already gone with a deleted directory (EINVAL): nothing to undo.
            let _ = inotify::remove_watch(fd, wd);
        }
    }
}
