//! One served volume: opening its desktop (where it is: [`crate::location`]; its lock:
//! [`crate::desktop_lock`]; the unclean-shutdown line), starting the background threads
//! ([`crate::background`]) and its writer ([`crate::writer`]), and the handle connections use
//! to reach them: the writer's queue, the commit count readers follow, the name index, the
//! state `status` shows.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use deskd_db::{now_unix, Desktop, NameIndex, Read, TouchLog};
use deskd_proto::{ErrorReply, RebuildState, VolumeStatus};
use deskd_volume::Volume;
use tracing::{error, info, warn};

use crate::background::{spawn_check, spawn_name_index_load};
use crate::config::VolumeConfig;
use crate::db_reply::db_error;
use crate::desktop_lock::{check_desktop_owner, lock_exclusive};
use crate::error::ServerError;
use crate::local_time::CTIME_FORMAT;
use crate::location::{desktop_path, existing_desktop_path, open_reader_at, read_only_desktop};
use crate::mapped_reader::MappedReader;
use crate::pg_volume::PgVolume;
use crate::private_temp::{on_read_only_fs, PrivateTemp};
use crate::space;
use crate::writer::{Job, SharedState, Writer, WriterShare};

/// A served volume.
pub struct VolumeHandle {
    pub index: u32,
    pub volume: Volume,
    pub desktop_path: PathBuf,
    /// The settings this opening was made with. The writer keeps the timers and durability in
    /// force, which a reload may have changed since.
    pub config: VolumeConfig,
    pub queue: Sender<Job>,
    /// The writer itself, for a connection thread that commits a lone write while the writer
    /// thread is idle.
    pub(crate) writer: WriterShare,
    pub state: Arc<Mutex<SharedState>>,
    /// The volume root, opened at open (`O_PATH`): [`VolumeHandle::owner_uid`] reads its
    /// owner when asked.
    root_fd: Option<std::os::fd::OwnedFd>,
    /// The root's owner at open, if `root_fd` could not be had.
    opened_owner: u32,
    /// Commits so far; readers start a new snapshot when it moves (read-your-writes).
    pub commits: Arc<AtomicU64>,
    /// The in-memory name index that answers `find` (built in the background at open).
    pub names: Arc<NameIndex>,
    /// The IDs client batches change while an online rebuild runs.
    pub touches: Arc<TouchLog>,
    /// Tells this opening from an earlier one of the same volume (a reload may reopen it under
    /// the same handle): connections keep read connections per opening.
    pub opening: u64,
    /// Why the volume is served read-only though its configuration may say writable
    /// ([`crate::space::FULL_REASON`], [`RO_FS_REASON`]); a reload tries to open it writable
    /// again when that may have changed ([`VolumeHandle::worth_reopening`]).
    pub read_only_reason: Option<String>,
    /// What readers open: the desktop, or a copy of it when it had to be read elsewhere.
    reads: PathBuf,
    /// Readers open `reads` immutable (a full file system: no `-shm` can be made).
    immutable: bool,
    /// The read connections to this opening's desktop now (clients' and background ones).
    pub(crate) read_connections: Arc<AtomicU32>,
    /// The writer holds a connection to the desktop (not when it could not be opened for
    /// writing for want of space).
    pub(crate) writer_connected: bool,
    /// The start-up check's thread, until [`crate::autorepair::watch`] takes it.
    check: Mutex<Option<JoinHandle<Vec<String>>>>,
    /// The volume's desktop in PostgreSQL (`backend =`); None: the SQLite desktop.
    pub(crate) pg: Option<Arc<PgVolume>>,
}

/// What opening a desktop produced, for [`VolumeHandle::serve`].
struct Opened {
    reads: PathBuf,
    immutable: bool,
    read_only_reason: Option<String>,
    clean_at_start: bool,
    names: Arc<NameIndex>,
    touches: Arc<TouchLog>,
    /// Private temp directories this opening uses (a temporary desktop, a full disk's copy),
    /// removed when it closes.
    temp: Vec<PrivateTemp>,
    /// The settings the writer enforces: `read_only` also when the file system is.
    writer_config: VolumeConfig,
}

/// What status and the log say of a volume on a file system mounted read-only.
pub const RO_FS_REASON: &str = "read-only file system";

/// Numbers the openings of volumes, for [`VolumeHandle::opening`].
static OPENINGS: AtomicU64 = AtomicU64::new(1);

/// The volume root opened `O_PATH` (for [`VolumeHandle::owner_uid`]), and its owner now.
fn open_root(root: &Path) -> (Option<std::os::fd::OwnedFd>, u32) {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok();
    let owner = match &fd {
        Some(fd) => rustix::fs::fstat(fd).map(|st| st.st_uid).ok(),
        None => std::fs::metadata(root).map(|m| m.uid()).ok(),
    };
    (fd, owner.unwrap_or(0))
}

impl VolumeHandle {
    /// The owner of the volume root now, who administers the volume with root: read at each
    /// check (an fstat of the root opened at open, which costs about a microsecond), so a
    /// `chown` of the root while it is served takes effect at once (the newcomer review of
    /// stop 40 saw it only after a restart).
    pub fn owner_uid(&self) -> u32 {
        self.root_fd
            .as_ref()
            .and_then(|fd| rustix::fs::fstat(fd).ok())
            .map_or(self.opened_owner, |st| st.st_uid)
    }

    /// Queue a control job for the writer and wait for its answer; None when the writer is
    /// gone (the server is shutting down).
    pub fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Job) -> Option<T> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.queue.send(make(tx)).ok()?;
        rx.recv().ok()
    }

    /// Open the volume's desktop and start its writer thread. When the desktop cannot be
    /// opened for writing because its file system is full, the volume is served read-only
    /// (`read-only: file system full` in the log and in status) and writes are refused.
    pub fn open(index: u32, config: VolumeConfig) -> Result<Arc<VolumeHandle>, ServerError> {
        let volume = Volume::new(&config.root).map_err(|source| ServerError::Root {
            root: config.root.clone(),
            source,
        })?;
        if let Some(options) = config.backend.clone() {
            return Self::open_pg(index, config, volume, options);
        }
        let root = volume.root().to_path_buf();
        // Its desktop is in PostgreSQL (served from there, or migrated): an SQLite desktop
        // here would be stale, or made empty and hand out IDs the database has given.
        if let Err(why) = deskd_volume::refuse_if_in_postgresql(&root) {
            return Err(ServerError::InPostgresql(format!(
                "{why} (set backend = to serve it from the database)"
            )));
        }
        // A volume on a file system mounted read-only is served read-only, configured so or
        // not: nothing on it can change, nor can its desktop be written.
        let fs_read_only = on_read_only_fs(&root);
        let mut temp = Vec::new();
        let desktop_path = if config.read_only || fs_read_only {
            let own = if fs_read_only {
                existing_desktop_path(&root)?
            } else {
                desktop_path(&config, &root)?
            };
            let chosen = read_only_desktop(&own, &root, fs_read_only)?;
            if chosen.temp.is_some() {
                info!(
                    "{}: {}; served read-only with {}",
                    root.display(),
                    if fs_read_only {
                        RO_FS_REASON
                    } else {
                        "read-only (configured) and deskd may not write its desktop"
                    },
                    if chosen.copied {
                        format!(
                            "its own desktop (read only, copied to {})",
                            chosen.path.display()
                        )
                    } else {
                        format!("a temporary desktop at {}", chosen.path.display())
                    }
                );
            }
            temp.extend(chosen.temp);
            chosen.path
        } else {
            desktop_path(&config, &root)?
        };
        // The writer refuses changes on either ground; the handle keeps the configured value
        // (a reload compares it with the new one) and the reason.
        let read_only_reason = fs_read_only.then(|| RO_FS_REASON.to_string());
        let writer_config = VolumeConfig {
            read_only: config.read_only || fs_read_only,
            ..config.clone()
        };
        let lock = lock_exclusive(&desktop_path, &root)?;
        check_desktop_owner(&lock, &desktop_path, &root)?;
        let side_files = space::SideFiles::missing_now(&desktop_path);
        // The session is marked open with the first write, not before the first answer (a
        // restart answers without waiting for a commit's fsync), unless space is short.
        let opening = if space::short_of_space(&desktop_path, config.min_free) {
            Desktop::open(&desktop_path, config.durability)
        } else {
            Desktop::open_for_serving(&desktop_path, config.durability)
        };
        let (mut desktop, report) = match opening {
            Ok(opened) => opened,
            Err(e) if space::open_failed_for_space(&e, &desktop_path, config.min_free) => {
                side_files.remove_created();
                return Self::open_full(index, config, volume, desktop_path, lock, e, temp);
            }
            Err(source) => {
                return Err(ServerError::DesktopOpen {
                    root,
                    path: desktop_path,
                    source: Box::new(source),
                })
            }
        };
        if !report.was_clean {
            warn!(
                "missing DB shutdown:[{}] at {}, recommend rebuild to re-create desktop file \
                 (deskd: the committed writes were recovered from the WAL; no rebuild is needed)",
                root.display(),
                chrono::Local::now().format(CTIME_FORMAT)
            );
        }
        info!(
            volume = %root.display(),
            desktop = %desktop_path.display(),
            created = report.created,
            read_only = writer_config.read_only,
            durability = ?desktop.durability().map_err(|e| ServerError::Durability(Box::new(e)))?,
            "volume open"
        );
        if let Some(warning) = desktop
            .meta("last_id")
            .ok()
            .flatten()
            .and_then(|last| deskd_db::ids::space_warning(last as u32))
        {
            warn!(volume = %root.display(), "{warning}");
        }
        if !writer_config.read_only {
            ensure_root_record(&root);
        }
        // Attached before the loader takes its snapshot: no commit can fall between the two.
        let names = Arc::new(NameIndex::new());
        desktop.attach_name_index(names.clone());
        let touches = Arc::new(TouchLog::default());
        desktop.attach_touch_log(touches.clone());
        let opened = Opened {
            reads: desktop_path.clone(),
            immutable: false,
            read_only_reason,
            clean_at_start: report.was_clean,
            names,
            touches,
            temp,
            writer_config,
        };
        Self::serve(
            index,
            config,
            volume,
            desktop_path,
            lock,
            Some(desktop),
            opened,
        )
    }

    /// Serve a volume whose desktop cannot be opened for writing for want of space: reads
    /// only, from the desktop itself or a copy ([`space::full_disk_reads`]).
    fn open_full(
        index: u32,
        config: VolumeConfig,
        volume: Volume,
        desktop_path: PathBuf,
        lock: crate::desktop_lock::DesktopLock,
        why: deskd_db::DbError,
        mut temp: Vec<PrivateTemp>,
    ) -> Result<Arc<VolumeHandle>, ServerError> {
        let root = volume.root().to_path_buf();
        let cannot = |why, source: Box<dyn std::error::Error + Send + Sync>| {
            Err(ServerError::DesktopUnreadable {
                root: root.clone(),
                path: desktop_path.clone(),
                why: Box::new(why),
                source,
            })
        };
        let mut reads = match space::full_disk_reads(&desktop_path) {
            Ok(reads) => reads,
            Err(e) => return cannot(why, e.into()),
        };
        let (stats, clean) = match open_reader_at(&reads.path, reads.immutable, &Arc::default())
            .and_then(|r| Ok((r.stats()?, r.meta("clean")?)))
        {
            Ok(read) => read,
            Err(e) => return cannot(why, e.into()),
        };
        if stats.format_version > deskd_db::FORMAT_VERSION {
            let too_new = deskd_db::DbError::FormatTooNew {
                found: stats.format_version,
                supported: deskd_db::FORMAT_VERSION,
            };
            return cannot(why, too_new.into());
        }
        let clean_at_start = clean.map(|v| v != 0).unwrap_or(true);
        warn!(
            "{}: read-only: {} (cannot open the desktop for writing: {why}); reads are served \
             from {}{}; writes are refused until space is freed and deskd is reloaded (SIGHUP) \
             or restarted",
            root.display(),
            space::FULL_REASON,
            reads.path.display(),
            if reads.immutable { "" } else { " (a copy)" },
        );
        temp.extend(reads.temp.take());
        let opened = Opened {
            reads: reads.path,
            immutable: reads.immutable,
            read_only_reason: Some(space::FULL_REASON.to_string()),
            clean_at_start,
            names: Arc::new(NameIndex::new()),
            touches: Arc::new(TouchLog::default()),
            temp,
            writer_config: config.clone(),
        };
        Self::serve(index, config, volume, desktop_path, lock, None, opened)
    }

    /// The handle of an opened volume, with its background loader, check and writer started.
    fn serve(
        index: u32,
        config: VolumeConfig,
        volume: Volume,
        desktop_path: PathBuf,
        lock: crate::desktop_lock::DesktopLock,
        desktop: Option<Desktop>,
        opened: Opened,
    ) -> Result<Arc<VolumeHandle>, ServerError> {
        let root = volume.root().to_path_buf();
        let (root_fd, opened_owner) = open_root(&root);
        let state = Arc::new(Mutex::new(SharedState {
            clean_at_start: opened.clean_at_start,
            ..Default::default()
        }));
        let (tx, rx) = crossbeam_channel::unbounded();
        let commits = Arc::new(AtomicU64::new(0));
        let writer_connected = desktop.is_some();
        let writer = Writer::new(
            desktop,
            lock,
            volume.clone(),
            opened.writer_config,
            state.clone(),
            commits.clone(),
            &desktop_path,
            opened.temp,
        )
        .spawn(index, rx)
        .map_err(ServerError::WriterThread)?;
        let handle = Arc::new(VolumeHandle {
            index,
            volume,
            desktop_path: desktop_path.clone(),
            config: config.clone(),
            queue: tx,
            writer,
            state: state.clone(),
            root_fd,
            opened_owner,
            commits: commits.clone(),
            names: opened.names,
            touches: opened.touches,
            opening: OPENINGS.fetch_add(1, Ordering::SeqCst),
            read_only_reason: opened.read_only_reason,
            reads: opened.reads,
            immutable: opened.immutable,
            read_connections: Arc::default(),
            writer_connected,
            check: Mutex::new(None),
            pg: None,
        });
        let (reads, immutable, count) = (&handle.reads, handle.immutable, &handle.read_connections);
        spawn_name_index_load(reads, immutable, count, &root, handle.names.clone());
        *handle.check.lock().unwrap() = spawn_check(reads, immutable, count, &root, state.clone());
        Ok(handle)
    }

    /// Open a volume whose desktop is in PostgreSQL (`backend =`, issue 28): its identity from
    /// the root (stamped at the first serve), the volume found or made in the database, the
    /// writer and the follower started, the name index loaded from the database. No desktop
    /// lock, WAL, checkpointer or mapped readers: the database does that work.
    fn open_pg(
        index: u32,
        config: VolumeConfig,
        volume: Volume,
        options: deskd_pg::ConnectOptions,
    ) -> Result<Arc<VolumeHandle>, ServerError> {
        let root = volume.root().to_path_buf();
        let refused = |message: String| ServerError::PgOpen {
            root: root.clone(),
            message,
        };
        // `auto` (often set for every volume in [defaults]) serves the volume unwatched, as
        // on a file system fanotify cannot watch; a kernel interface named outright is refused.
        match config.watch {
            deskd_watch::WatchMode::Off | deskd_watch::WatchMode::Auto => {}
            mode => {
                return Err(refused(format!(
                    "watch = \"{}\" is not yet available for a desktop in PostgreSQL (set \
                     watch = \"off\", or \"auto\" to serve it unwatched)",
                    format!("{mode:?}").to_lowercase()
                )))
            }
        }
        crate::pg_volume::refuse_fresh_over_sqlite(&root, &options)?;
        let identity = crate::pg_volume::identity(&root)?;
        let key = deskd_pg::VolumeKey {
            name: root.to_string_lossy().into_owned(),
            identity,
        };
        let names = Arc::new(NameIndex::new());
        // Read again under the serving lock (PgVolume::open_writer), when it is there: a
        // restore or migrate that ended between the check above and the lock removed it, and
        // the volume is then not served from the database.
        let marked = deskd_volume::desktop_backend(&root).is_some();
        let pg = PgVolume::new(options, key, config.durability, names.clone(), marked)
            .map_err(|e| refused(e.to_string()))?;
        // A database that cannot be reached now (stopped, starting, the network down) is
        // waited for: the volume is served read-only and the writer keeps trying (issue 28).
        // Anything else (a wrong password, another volume, a newer format) is refused.
        let (desktop, created, unreachable) = match pg.open_writer(&root) {
            Ok(crate::pg_volume::Opened::Open {
                desktop, created, ..
            }) => (Some(*desktop), created, None),
            Ok(crate::pg_volume::Opened::MovedOut(why)) => return Err(refused(why)),
            Err(e) if e.is_unavailable() => (None, false, Some(e.to_string())),
            Err(e) => return Err(refused(e.to_string())),
        };
        // The offline tools keep off the volume from now on (deskd_volume::BACKEND_XATTR).
        // Marked only once the serving lock is held (or the database is unreachable): a
        // server started while `deskd migrate --to sqlite` or `restore --leave-postgresql`
        // holds it exclusively, after they removed the mark, is refused above and leaves the
        // root unmarked (marked first, it put the mark back on a volume moved out).
        if !marked {
            match deskd_volume::mark_desktop_in_postgresql(&root, true) {
                Ok(()) => pg.now_marked(),
                Err(e) => warn!(volume = %root.display(), "cannot mark the root as having its \
                    desktop in PostgreSQL ({}): offline tools are not kept off it: {e}",
                    deskd_volume::BACKEND_XATTR),
            }
        }
        let pg = Arc::new(pg);
        let read_only = config.read_only || on_read_only_fs(&root);
        match &unreachable {
            None => info!(
                volume = %root.display(),
                desktop = %pg.describe(),
                created,
                read_only,
                durability = ?config.durability,
                "volume open"
            ),
            Some(why) => error!(
                volume = %root.display(),
                desktop = %pg.describe(),
                "database unreachable at start ({why}); the volume is served read-only and \
                 opened once the database is reachable"
            ),
        }
        if !read_only {
            ensure_root_record(&root);
        }
        let state = Arc::new(Mutex::new(SharedState {
            clean_at_start: true,
            unavailable: unreachable.map(|why| (now_unix(), why)),
            ..Default::default()
        }));
        let (tx, rx) = crossbeam_channel::unbounded();
        let commits = Arc::new(AtomicU64::new(0));
        let writer_config = VolumeConfig {
            read_only,
            ..config.clone()
        };
        let opened = desktop.is_some();
        let writer = crate::writer::pg::PgWriter::new(
            desktop,
            pg.clone(),
            volume.clone(),
            writer_config,
            state.clone(),
            commits.clone(),
        )
        .spawn(index, rx)
        .map_err(ServerError::WriterThread)?;
        let (root_fd, opened_owner) = open_root(&root);
        let handle = Arc::new(VolumeHandle {
            index,
            volume,
            desktop_path: PathBuf::from(pg.describe()),
            config,
            queue: tx,
            writer,
            state: state.clone(),
            root_fd,
            opened_owner,
            commits,
            names,
            touches: Arc::new(TouchLog::default()),
            opening: OPENINGS.fetch_add(1, Ordering::SeqCst),
            read_only_reason: on_read_only_fs(&root).then(|| RO_FS_REASON.to_string()),
            reads: PathBuf::new(),
            immutable: false,
            read_connections: Arc::default(),
            // No SQLite connection (the memory figures count those).
            writer_connected: false,
            check: Mutex::new(None),
            pg: Some(pg.clone()),
        });
        if opened {
            *handle.check.lock().unwrap() = crate::pg_volume::start_background(&pg, &root, state);
        }
        Ok(handle)
    }

    /// The start-up check's thread (once: later calls get None).
    pub(crate) fn take_check(&self) -> Option<JoinHandle<Vec<String>>> {
        self.check.lock().unwrap().take()
    }

    /// Whether clients may change this volume: not when configured read-only, nor when served
    /// read-only for want of space or because its file system is mounted read-only.
    pub fn read_only(&self) -> bool {
        self.config.read_only || self.read_only_reason.is_some()
    }

    /// Why this opening of a PostgreSQL volume is no longer served, once its writer found the
    /// volume moved out of the database ([`crate::pg_volume::moved_out`]).
    pub(crate) fn moved_out(&self) -> Option<&str> {
        self.pg.as_ref().and_then(|pg| pg.moved_out_reason())
    }

    /// Whether a reload should close and open this volume again though its `read_only`
    /// setting is unchanged: it is served read-only for want of space (there may be room now),
    /// or its file system was remounted (read-only to read-write or back) since it was opened.
    pub fn worth_reopening(&self) -> bool {
        match self.read_only_reason.as_deref() {
            Some(space::FULL_REASON) => true,
            Some(_) => !on_read_only_fs(self.volume.root()),
            None => on_read_only_fs(self.volume.root()),
        }
    }

    /// A read connection to this opening's desktop, within the server's mapping budget.
    pub fn open_reader(&self) -> deskd_db::Result<MappedReader> {
        self.no_sqlite()?;
        open_reader_at(&self.reads, self.immutable, &self.read_connections)
    }

    /// A read connection that maps nothing (outside the `mmap_total` budget): for the metrics,
    /// which read a few rows per scrape and should not hold a client's share of the budget.
    pub(crate) fn open_unmapped_reader(&self) -> deskd_db::Result<deskd_db::Reader> {
        self.no_sqlite()?;
        deskd_db::Reader::open_mapped(&self.reads, self.immutable, 0)
    }

    /// An SQLite reader of a volume whose desktop is in PostgreSQL is an error, not a file
    /// made at an empty path.
    fn no_sqlite(&self) -> deskd_db::Result<()> {
        match &self.pg {
            Some(pg) => Err(deskd_db::DbError::Backend(format!(
                "the desktop is in PostgreSQL ({}), not in an SQLite file",
                pg.shown
            ))),
            None => Ok(()),
        }
    }

    /// The file read connections map (the desktop, or the copy reads are served from).
    pub(crate) fn reads_path(&self) -> &Path {
        &self.reads
    }

    /// Status of this volume, read through `reader`, with the state of its running or last
    /// online rebuild (kept by [`crate::rebuild::Registry`]).
    pub fn status<R: Read>(
        &self,
        reader: &R,
        rebuild: Option<RebuildState>,
    ) -> Result<VolumeStatus, ErrorReply> {
        let stats = reader.stats().map_err(db_error)?;
        Ok(self.status_of(stats, None, rebuild))
    }

    /// Status of a PostgreSQL volume whose database cannot be read (`why`): no counts, and
    /// read-only for that reason, whether or not the writer has noticed yet.
    pub(crate) fn status_unreachable(
        &self,
        why: &str,
        rebuild: Option<RebuildState>,
    ) -> VolumeStatus {
        let stats = deskd_db::Stats {
            objects: 0,
            last_id: 0,
            format_version: 0,
        };
        self.status_of(stats, Some(why), rebuild)
    }

    fn status_of(
        &self,
        stats: deskd_db::Stats,
        unreadable: Option<&str>,
        rebuild: Option<RebuildState>,
    ) -> VolumeStatus {
        let state = self.state.lock().unwrap().clone();
        let frozen_until = state.frozen_until.filter(|&t| t > now_unix());
        // A PostgreSQL volume whose database is lost is read-only until the writer is back.
        let unavailable = match (&state.unavailable, unreadable) {
            (Some((since, why)), _) => Some(format!(
                "database unreachable since {} ({why}); reconnecting",
                crate::local_time::ctime(*since)
            )),
            (None, Some(why)) => Some(format!("database unreachable ({why})")),
            (None, None) => None,
        };
        VolumeStatus {
            vol: self.index,
            root: self.volume.root().as_os_str().as_bytes().to_vec(),
            desktop: self.desktop_path.as_os_str().as_bytes().to_vec(),
            objects: stats.objects,
            last_id: stats.last_id,
            read_only: self.read_only() || unavailable.is_some(),
            read_only_reason: unavailable.or_else(|| self.read_only_reason.clone()),
            last_flush: state.last_flush,
            clean_at_start: state.clean_at_start,
            frozen_until,
            wal_bytes: match self.pg {
                Some(_) => 0,
                None => self.writer.wal_pending_bytes(&self.desktop_path),
            },
            check_problems: state.check_problems,
            rebuild,
            // Filled in by the connection, which knows what the asker may see.
            clients: Vec::new(),
            hidden_clients: 0,
        }
    }
}

/// The root's own resource record (`ROOT/.rsrc/.rsrc`, ID 2) and mirror, as rebuild expects
/// them; clients never create the root, so the server writes them when it opens the volume.
fn ensure_root_record(root: &Path) {
    use deskd_volume::rsrc;
    let path = rsrc::root_rsrc_path(root);
    let made = rsrc::ensure_id(&path, deskd_db::ROOT_ID, || {
        rsrc::ResourceHeader::new(deskd_db::ROOT_ID, [0; 4], [0; 4], now_unix() as u32)
    })
    .map(|_| ())
    .and_then(|_| {
        // Only when missing: setting it anyway would change the root's ctime at every start.
        if deskd_volume::read_id_xattr(root) == Some(deskd_db::ROOT_ID) {
            Ok(())
        } else {
            deskd_volume::write_id_xattr(root, deskd_db::ROOT_ID)
        }
    });
    if let Err(e) = made {
        warn!(
            "{}: cannot write the root's resource record: {e}",
            root.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::config_for;

    #[test]
    fn a_closed_volume_releases_its_lock_and_answers_what_still_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_for(dir.path());
        let first = VolumeHandle::open(0, config.clone()).unwrap();
        // While it is open, nothing else may open the desktop.
        let Err(busy) = VolumeHandle::open(0, config.clone()) else {
            panic!("a second opening of an open desktop")
        };
        assert!(busy.to_string().contains("busy"), "{busy}");
        assert_eq!(first.ask(Job::Close), Some(Ok(())));
        // A request that took the handle before the close gets an answer, not silence.
        let late = first.ask(Job::Flush).expect("answered after the close");
        let message = late.unwrap_err().message;
        assert!(message.contains("the desktop was closed"), "{message}");
        // The lock went with the close, though the old handle still lives.
        let second = VolumeHandle::open(0, config).unwrap();
        assert_ne!(second.opening, first.opening);
        assert_eq!(second.ask(Job::Flush).map(|r| r.is_ok()), Some(true));
    }

    #[test]
    fn a_frozen_volume_is_not_closed() {
        let dir = tempfile::tempdir().unwrap();
        let handle = VolumeHandle::open(0, config_for(dir.path())).unwrap();
        assert!(matches!(
            handle.ask(|tx| Job::Freeze(Some(30), tx)),
            Some(Ok(_))
        ));
        assert_eq!(
            handle.ask(Job::Close),
            Some(Err(crate::writer::CloseRefused::Frozen))
        );
        // Still open and serving.
        assert!(matches!(handle.ask(Job::Thaw), Some(Ok(_))));
        assert_eq!(handle.ask(Job::Close), Some(Ok(())));
    }
}
