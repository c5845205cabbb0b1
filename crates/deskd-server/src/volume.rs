//! One served volume: opening its desktop (relocation, read-only, locking, the unclean-shutdown
//! line, the background check) and the writer thread that owns the write connection.
//!
//! The writer drains its queue, applies everything that arrived as one transaction (each
//! request in its own savepoint), commits, and only then acknowledges (group commit with no added
//! delay). Between batches it runs the flush, idle-close, WAL-limit and freeze timers. Before a
//! commit it keeps `min_free` free beyond the WAL ([`crate::space`]); a desktop that cannot be
//! opened for writing for want of space is served read-only, by a writer without a desktop.

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use deskd_db::{Desktop, NameIndex, Read, TouchLog};
use deskd_proto::{ErrorCode, ErrorReply, Request, Response, VolumeStatus};
use deskd_volume::Volume;
use tracing::{error, info, warn};

use crate::apply::{apply_write, db_error, DirCache, Reply};
use crate::config::VolumeConfig;
use crate::conn::ReplySink;
use crate::limits::RateLimited;
use crate::space;
use crate::ServerError;

/// Work for a volume's writer thread.
pub enum Job {
    Write {
        request: Request,
        reply: ReplySink,
    },
    Flush(Sender<Reply>),
    Freeze(Option<u32>, Sender<Reply>),
    Thaw(Sender<Reply>),
    /// New settings (flush_delay, idle_close, freeze_default, freeze_max, wal_limit, min_free
    /// and durability) from a reloaded configuration; read_only needs the volume reopened.
    Retime(VolumeConfig, Sender<()>),
    /// Work on the desktop between two batches (an online rebuild's apply); returns whether
    /// it committed.
    Run(Box<dyn FnOnce(&mut Desktop) -> bool + Send>),
    /// Commit, close the desktop cleanly and release its lock, so that it can be opened again
    /// (a reload that reopens or stops serving the volume). Refused while the volume is frozen:
    /// a backup may be copying the file, and closing writes to it.
    Close(Sender<Result<(), String>>),
    Shutdown(Sender<()>),
}

/// State shared between the writer and status readers.
#[derive(Debug, Default, Clone)]
pub struct SharedState {
    pub last_flush: i64,
    pub frozen_until: Option<i64>,
    pub clean_at_start: bool,
    pub check_problems: Vec<String>,
}

/// A served volume.
pub struct VolumeHandle {
    pub index: u32,
    pub volume: Volume,
    pub desktop_path: PathBuf,
    /// The settings this opening was made with. The writer keeps the timers and durability in
    /// force, which a reload may have changed since.
    pub config: VolumeConfig,
    pub queue: Sender<Job>,
    pub state: Arc<Mutex<SharedState>>,
    pub owner_uid: u32,
    /// Commits so far; readers start a new snapshot when it moves (read-your-writes).
    pub commits: Arc<AtomicU64>,
    /// The in-memory name index that answers `find` (built in the background at open).
    pub names: Arc<NameIndex>,
    /// The IDs client batches change while an online rebuild runs.
    pub touches: Arc<TouchLog>,
    /// The running or last online rebuild.
    pub rebuild: Mutex<Option<Arc<crate::rebuild::RebuildJob>>>,
    /// Tells this opening from an earlier one of the same volume (a reload may reopen it under
    /// the same handle): connections keep read connections per opening.
    pub opening: u64,
    /// Why the volume is served read-only though its configuration says writable
    /// ([`crate::space::FULL_REASON`]); a reload tries to open it writable again.
    pub read_only_reason: Option<String>,
    /// What readers open: the desktop, or a copy of it when it had to be read elsewhere.
    reads: PathBuf,
    /// Readers open `reads` immutable (a full file system: no `-shm` can be made).
    immutable: bool,
}

/// What opening a desktop produced, for [`VolumeHandle::serve`].
struct Opened {
    reads: PathBuf,
    immutable: bool,
    read_only_reason: Option<String>,
    clean_at_start: bool,
    names: Arc<NameIndex>,
    touches: Arc<TouchLog>,
}

/// Numbers the openings of volumes, for [`VolumeHandle::opening`].
static OPENINGS: AtomicU64 = AtomicU64::new(1);

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `ctime(3)`-style local time, as in HELIOS log lines: `Thu Nov 24 18:22:48 2009`.
pub fn ctime_string(unix: i64) -> String {
    use chrono::TimeZone;
    chrono::Local
        .timestamp_opt(unix, 0)
        .single()
        .map(|t| t.format("%a %b %e %H:%M:%S %Y").to_string())
        .unwrap_or_else(|| unix.to_string())
}

/// Where the desktop of `root` lives, creating the relocation symlink for a new volume.
fn desktop_path(cfg: &VolumeConfig, root: &Path) -> Result<PathBuf, ServerError> {
    let in_root = root.join(deskd_volume::DESKTOP_FILE);
    let misc = || ServerError::Volume(format!("OpenDesk {}: Miscellaneous error", root.display()));
    match deskd_volume::desktop_link(root) {
        Err(e) => Err(ServerError::Volume(format!(
            "OpenDesk {}: Miscellaneous error ({e})",
            root.display()
        ))),
        // Relocated: the target's directory must exist.
        Ok(Some(target)) => match target.parent() {
            Some(dir) if dir.is_dir() => Ok(target),
            _ => Err(misc()),
        },
        Ok(None) if std::fs::symlink_metadata(&in_root).is_ok() => Ok(in_root),
        Ok(None) => match &cfg.desktop_location {
            None => Ok(in_root),
            Some(location) => {
                let rel = root.strip_prefix("/").unwrap_or(root);
                let dir = location.join(rel);
                std::fs::create_dir_all(&dir).map_err(|e| {
                    ServerError::Volume(format!(
                        "{}: cannot create desktop directory: {e}",
                        dir.display()
                    ))
                })?;
                let target = dir.join(deskd_volume::DESKTOP_FILE);
                std::os::unix::fs::symlink(&target, &in_root).map_err(|e| {
                    ServerError::Volume(format!(
                        "{}: cannot create symlink: {e}",
                        in_root.display()
                    ))
                })?;
                Ok(target)
            }
        },
    }
}

/// For a read-only volume: the volume's own `.Desktop` when deskd may write it (or create it,
/// so that dt and other tools recognise the volume), else a temporary copy (or a new temporary
/// desktop) under the temp directory named `desksrv…`.
fn read_only_desktop(path: &Path, root: &Path) -> Result<PathBuf, ServerError> {
    let writable = if path.exists() {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .is_ok()
    } else {
        let c_root = std::ffi::CString::new(root.as_os_str().as_bytes())
            .map_err(|_| ServerError::Volume(format!("{}: NUL in path", root.display())))?;
        // SAFETY: access(2) with a valid NUL-terminated path.
        unsafe { libc::access(c_root.as_ptr(), libc::W_OK) == 0 }
    };
    if writable {
        return Ok(path.to_path_buf());
    }
    let dir = std::env::temp_dir().join(format!(
        "desksrv.{}.{}",
        std::process::id(),
        root.as_os_str()
            .as_bytes()
            .iter()
            .fold(0u32, |h, &b| h.wrapping_mul(31).wrapping_add(b as u32))
    ));
    private_dir(&dir)?;
    let temp = dir.join(deskd_volume::DESKTOP_FILE);
    if path.exists() && !temp.exists() {
        // A valid desktop on read-only media: work on a copy so IDs stay as recorded.
        if deskd_db::Reader::open(path).and_then(|r| r.stats()).is_ok() {
            copy_private(path, &temp)
                .map_err(|e| ServerError::Volume(format!("{}: {e}", temp.display())))?;
        }
    }
    Ok(temp)
}

/// Make `dir` (in the shared temp directory, whose names anyone can take first) a directory
/// only deskd's user can enter: created 0700, or, when it is there already, refused unless it
/// is a real directory of deskd's user that no one else may enter.
pub(crate) fn private_dir(dir: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let refuse = |why: String| ServerError::Volume(format!("{}: {why}", dir.display()));
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(refuse(e.to_string())),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| refuse(e.to_string()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me || meta.permissions().mode() & 0o077 != 0 {
        return Err(refuse(format!(
            "exists and is not a private directory of uid {me} (owner {}, mode {:o}); \
             not used for the temporary desktop",
            meta.uid(),
            meta.permissions().mode() & 0o7777
        )));
    }
    Ok(())
}

/// Copy the desktop `from` to the new file `to`, mode 0600 whatever `from`'s mode is.
pub(crate) fn copy_private(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut source = File::open(from)?;
    let mut dest = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(to)?;
    std::io::copy(&mut source, &mut dest)?;
    dest.sync_all()
}

/// Refuse a desktop owned by anyone but root, deskd's user or the volume owner: in a root its
/// users may write, one of them could have made the file first, and would then read (and
/// change) every record deskd keeps in it whatever its mode.
fn check_desktop_owner(lock: &File, path: &Path, root: &Path) -> Result<(), ServerError> {
    let owner = lock
        .metadata()
        .map_err(|e| ServerError::Volume(format!("{}: {e}", path.display())))?
        .uid();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let volume_owner = std::fs::metadata(root).map(|m| m.uid()).ok();
    if owner == 0 || owner == me || Some(owner) == volume_owner {
        return Ok(());
    }
    Err(ServerError::Volume(format!(
        "{}: the desktop {} is owned by uid {owner}, which is neither root, deskd's user \
         (uid {me}) nor the volume owner; someone else made it, so it is not used (move it \
         away and serve the volume again)",
        root.display(),
        path.display()
    )))
}

fn lock_exclusive(path: &Path, root: &Path) -> Result<File, ServerError> {
    deskd_volume::lock_desktop(path)
        .map_err(|e| ServerError::Volume(format!("{}: cannot open desktop: {e}", path.display())))?
        .ok_or_else(|| {
            ServerError::Volume(format!(
                "{}: Warning, desktop DB busy by another process",
                root.display()
            ))
        })
}

impl VolumeHandle {
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
        let volume = Volume::new(&config.root)
            .map_err(|e| ServerError::Volume(format!("{}: {e}", config.root.display())))?;
        let root = volume.root().to_path_buf();
        let mut desktop_path = desktop_path(&config, &root)?;
        if config.read_only {
            desktop_path = read_only_desktop(&desktop_path, &root)?;
        }
        let lock = lock_exclusive(&desktop_path, &root)?;
        check_desktop_owner(&lock, &desktop_path, &root)?;
        let side_files = space::SideFiles::missing_now(&desktop_path);
        let (mut desktop, report) = match Desktop::open(&desktop_path, config.durability) {
            Ok(opened) => opened,
            Err(e) if space::open_failed_for_space(&e, &desktop_path, config.min_free) => {
                side_files.remove_created();
                return Self::open_full(index, config, volume, desktop_path, lock, e);
            }
            Err(e) => {
                return Err(ServerError::Volume(format!(
                    "{}: cannot open desktop {}: {e}",
                    root.display(),
                    desktop_path.display()
                )))
            }
        };
        if !report.was_clean {
            warn!(
                "missing DB shutdown:[{}] at {}, recommend rebuild to re-create desktop file",
                root.display(),
                ctime_string(now_unix())
            );
        }
        info!(
            volume = %root.display(),
            desktop = %desktop_path.display(),
            created = report.created,
            read_only = config.read_only,
            durability = ?desktop.durability().map_err(|e| ServerError::Volume(e.to_string()))?,
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
        if !config.read_only {
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
            read_only_reason: None,
            clean_at_start: report.was_clean,
            names,
            touches,
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
        lock: File,
        why: deskd_db::DbError,
    ) -> Result<Arc<VolumeHandle>, ServerError> {
        let root = volume.root().to_path_buf();
        let cannot = |e: String| {
            ServerError::Volume(format!(
                "{}: cannot open desktop {} ({why}), not even read-only: {e}",
                root.display(),
                desktop_path.display()
            ))
        };
        let reads =
            space::full_disk_reads(&desktop_path, &root).map_err(|e| cannot(e.to_string()))?;
        let (stats, clean) = open_reader_at(&reads.path, reads.immutable)
            .and_then(|r| Ok((r.stats()?, r.meta("clean")?)))
            .map_err(|e| cannot(e.to_string()))?;
        if stats.format_version > deskd_db::FORMAT_VERSION {
            return Err(cannot(
                deskd_db::DbError::FormatTooNew {
                    found: stats.format_version,
                    supported: deskd_db::FORMAT_VERSION,
                }
                .to_string(),
            ));
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
        let opened = Opened {
            reads: reads.path,
            immutable: reads.immutable,
            read_only_reason: Some(space::FULL_REASON.to_string()),
            clean_at_start,
            names: Arc::new(NameIndex::new()),
            touches: Arc::new(TouchLog::default()),
        };
        Self::serve(index, config, volume, desktop_path, lock, None, opened)
    }

    /// The handle of an opened volume, with its background loader, check and writer started.
    fn serve(
        index: u32,
        config: VolumeConfig,
        volume: Volume,
        desktop_path: PathBuf,
        lock: File,
        desktop: Option<Desktop>,
        opened: Opened,
    ) -> Result<Arc<VolumeHandle>, ServerError> {
        let root = volume.root().to_path_buf();
        let owner_uid = std::fs::metadata(&root).map(|m| m.uid()).unwrap_or(0);
        let state = Arc::new(Mutex::new(SharedState {
            clean_at_start: opened.clean_at_start,
            ..Default::default()
        }));
        let (tx, rx) = crossbeam_channel::unbounded();
        let commits = Arc::new(AtomicU64::new(0));
        let handle = Arc::new(VolumeHandle {
            index,
            volume: volume.clone(),
            desktop_path: desktop_path.clone(),
            config: config.clone(),
            queue: tx,
            state: state.clone(),
            owner_uid,
            commits: commits.clone(),
            names: opened.names,
            touches: opened.touches,
            rebuild: Mutex::new(None),
            opening: OPENINGS.fetch_add(1, Ordering::SeqCst),
            read_only_reason: opened.read_only_reason,
            reads: opened.reads,
            immutable: opened.immutable,
        });
        // A copy made for want of space goes when this opening is closed.
        let temp_copy = (handle.read_only_reason.is_some() && !handle.immutable)
            .then(|| handle.reads.parent().map(Path::to_path_buf))
            .flatten();
        spawn_name_index_load(&handle.reads, handle.immutable, &root, handle.names.clone());
        spawn_check(&handle.reads, handle.immutable, &root, state.clone());
        let writer = Writer {
            desktop,
            lock: Some(lock),
            volume,
            config,
            state,
            commits,
            wal_path: deskd_db::wal_path(&desktop_path),
            desktop_dir: space::desktop_dir(&desktop_path).to_path_buf(),
            dirty_since: None,
            last_write: Instant::now(),
            frozen_until: None,
            checkpoint_after: None,
            held_back_since: None,
            low_space_logged: RateLimited::new(LOW_SPACE_LOG_EVERY),
            low_space_checkpointed: RateLimited::new(LOW_SPACE_LOG_EVERY),
            temp_copy,
        };
        std::thread::Builder::new()
            .name(format!("writer-{index}"))
            .spawn(move || writer.run(rx))
            .map_err(|e| ServerError::Volume(format!("cannot start writer thread: {e}")))?;
        Ok(handle)
    }

    /// Whether clients may change this volume: not when configured read-only, nor when served
    /// read-only for want of space.
    pub fn read_only(&self) -> bool {
        self.config.read_only || self.read_only_reason.is_some()
    }

    /// A read connection to this opening's desktop.
    pub fn open_reader(&self) -> deskd_db::Result<deskd_db::Reader> {
        open_reader_at(&self.reads, self.immutable)
    }

    /// Status of this volume, read through `reader`.
    pub fn status<R: Read>(&self, reader: &R) -> Result<VolumeStatus, ErrorReply> {
        let stats = reader.stats().map_err(db_error)?;
        let state = self.state.lock().unwrap().clone();
        let frozen_until = state.frozen_until.filter(|&t| t > now_unix());
        Ok(VolumeStatus {
            vol: self.index,
            root: self.volume.root().as_os_str().as_bytes().to_vec(),
            desktop: self.desktop_path.as_os_str().as_bytes().to_vec(),
            objects: stats.objects,
            last_id: stats.last_id,
            read_only: self.read_only(),
            read_only_reason: self.read_only_reason.clone(),
            last_flush: state.last_flush,
            clean_at_start: state.clean_at_start,
            frozen_until,
            wal_bytes: std::fs::metadata(deskd_db::wal_path(&self.desktop_path))
                .map(|m| m.len())
                .unwrap_or(0),
            check_problems: state.check_problems,
            rebuild: self
                .rebuild
                .lock()
                .unwrap()
                .as_ref()
                .map(|job| job.state(u64::MAX)),
        })
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

/// A read connection to `path`, immutable or not (see [`VolumeHandle::open_reader`]).
fn open_reader_at(path: &Path, immutable: bool) -> deskd_db::Result<deskd_db::Reader> {
    if immutable {
        deskd_db::Reader::open_immutable(path)
    } else {
        deskd_db::Reader::open(path)
    }
}

/// Build the name index off the start-up path; `find` scans the table until it is ready.
fn spawn_name_index_load(desktop: &Path, immutable: bool, root: &Path, names: Arc<NameIndex>) {
    let desktop = desktop.to_path_buf();
    let root = root.to_path_buf();
    let _ = std::thread::Builder::new()
        .name("name-index".into())
        .spawn(move || {
            let began = Instant::now();
            match open_reader_at(&desktop, immutable).and_then(|r| names.load(&r)) {
                Ok(()) => info!(
                    volume = %root.display(),
                    names = names.names().unwrap_or(0),
                    ms = began.elapsed().as_millis() as u64,
                    "name index ready"
                ),
                Err(e) => error!(
                    "cannot build the name index of [{}]: {e}; find scans the desktop instead",
                    root.display()
                ),
            }
        });
}

/// The quick logical check of DESIGN §6.5, off the start-up path.
fn spawn_check(desktop: &Path, immutable: bool, root: &Path, state: Arc<Mutex<SharedState>>) {
    let desktop = desktop.to_path_buf();
    let root = root.to_path_buf();
    let _ = std::thread::Builder::new()
        .name("check".into())
        .spawn(move || {
            let result = open_reader_at(&desktop, immutable).and_then(|r| r.quick_check());
            match result {
                Ok(problems) if problems.is_empty() => {}
                Ok(problems) => {
                    error!(
                        "desktop check failed for [{}]: {}; run `deskd rebuild {}` to repair it",
                        root.display(),
                        problems.join("; "),
                        root.display()
                    );
                    state.lock().unwrap().check_problems = problems;
                }
                Err(e) => {
                    error!("desktop check of [{}] could not run: {e}", root.display());
                    state.lock().unwrap().check_problems = vec![e.to_string()];
                }
            }
        });
}

/// What one run of a batch produced.
enum Attempt {
    /// Committed (or, for a lone failed request, rolled back); one reply per request.
    Done(Vec<Reply>),
    /// A request failed in a non-isolated run; nothing was committed.
    Retry,
}

/// Apply `writes` in one transaction. With `isolated`, each request runs in its own savepoint
/// so a failure undoes only that request; without, the first failure abandons the batch.
fn run_batch(
    desktop: &mut Desktop,
    volume: &Volume,
    read_only: bool,
    writes: &[(Request, ReplySink)],
    isolated: bool,
) -> Result<Attempt, deskd_db::DbError> {
    let mut batch = desktop.batch()?;
    let mut replies = Vec::with_capacity(writes.len());
    let mut cache = DirCache::default();
    for (request, sink) in writes {
        let access = sink.access();
        if isolated {
            replies.push(batch.step(|b| {
                Ok(apply_write(
                    b, volume, read_only, request, &mut cache, access,
                ))
            })?);
            continue;
        }
        let reply = apply_write(&mut batch, volume, read_only, request, &mut cache, access);
        if reply.is_err() {
            if writes.len() > 1 {
                return Ok(Attempt::Retry); // dropping the batch rolls it back
            }
            drop(batch); // a lone request: undo whatever it did, answer its error
            return Ok(Attempt::Done(vec![reply]));
        }
        replies.push(reply);
    }
    batch.commit()?;
    Ok(Attempt::Done(replies))
}

/// Most writes taken into one transaction.
const MAX_BATCH: usize = 4096;

/// How long a timed or WAL-limit checkpoint waits for readers of older snapshots: long enough
/// for the server's own short reads, short enough that a long reader (a backup, an `sqlite3`
/// session) never holds up the writes queued behind the checkpoint.
const TIMED_CHECKPOINT_WAIT: Duration = Duration::from_millis(20);
/// How long `deskd flush` and `deskd freeze` wait for such readers.
const REQUESTED_CHECKPOINT_WAIT: Duration = Duration::from_millis(500);
/// After a checkpoint that readers held back, no timed one is tried again before this.
const CHECKPOINT_RETRY: Duration = Duration::from_secs(1);

struct Writer {
    desktop: Option<Desktop>,
    /// The exclusive lock that makes this the only writer, held until the desktop is closed.
    lock: Option<File>,
    volume: Volume,
    config: VolumeConfig,
    state: Arc<Mutex<SharedState>>,
    commits: Arc<AtomicU64>,
    wal_path: PathBuf,
    /// When the oldest committed but not yet checkpointed change was made.
    dirty_since: Option<Instant>,
    last_write: Instant,
    frozen_until: Option<Instant>,
    /// After a checkpoint that readers held back: no timed checkpoint before this.
    checkpoint_after: Option<Instant>,
    /// Since when timed checkpoints have been held back by a reader (for the log).
    held_back_since: Option<Instant>,
    /// Where the WAL grows: its free space is checked before each commit.
    desktop_dir: PathBuf,
    /// Writes refused for want of space (logged at most once a minute).
    low_space_logged: RateLimited,
    /// A commit that had to checkpoint first for want of space (logged likewise).
    low_space_checkpointed: RateLimited,
    /// The temporary directory holding the copy a full-disk opening reads, removed at close.
    temp_copy: Option<PathBuf>,
}

/// How often the log may say that space is short (a nearly full disk affects every commit).
const LOW_SPACE_LOG_EVERY: Duration = Duration::from_secs(60);

impl Writer {
    fn run(mut self, rx: Receiver<Job>) {
        if self.desktop.is_none() {
            return self.serve_without_desktop(rx);
        }
        let mut writes: Vec<(Request, ReplySink)> = Vec::new();
        loop {
            let job = match self.next_deadline() {
                Some(deadline) => {
                    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout) => {
                            self.timers();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match rx.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            let mut next = Some(job);
            while let Some(job) = next.take() {
                match job {
                    Job::Write { request, reply } => writes.push((request, reply)),
                    control => {
                        self.commit_batch(&mut writes);
                        match control {
                            Job::Shutdown(done) => {
                                self.shutdown();
                                self.remove_empty_wal();
                                let _ = done.send(());
                                return self.refuse_all(rx);
                            }
                            Job::Close(done) if self.frozen() => {
                                let _ = done.send(Err("frozen".into()));
                            }
                            Job::Close(done) => {
                                self.shutdown();
                                let _ = done.send(Ok(()));
                                return self.refuse_all(rx);
                            }
                            control => self.control(control),
                        }
                    }
                }
                if writes.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.commit_batch(&mut writes);
            self.timers();
        }
        self.shutdown();
    }

    /// A volume served read-only for want of space has no write connection: writes are
    /// refused with `DiskFull`, a flush has nothing to do, and a freeze only says so (the
    /// desktop cannot change).
    fn serve_without_desktop(mut self, rx: Receiver<Job>) {
        let refusal = || {
            ErrorReply::new(
                ErrorCode::DiskFull,
                format!(
                    "{}: read-only: {}; free space on it, then reload deskd (SIGHUP) to write \
                     again",
                    self.volume.root().display(),
                    space::FULL_REASON
                ),
            )
        };
        while let Ok(job) = rx.recv() {
            match job {
                Job::Write { reply, .. } => reply.send(Err(refusal())),
                Job::Flush(reply) | Job::Thaw(reply) => {
                    let _ = reply.send(Ok(Response::Done));
                }
                Job::Freeze(seconds, reply) => {
                    let secs = seconds
                        .unwrap_or(self.config.freeze_default)
                        .min(self.config.freeze_max)
                        .max(1);
                    let _ = reply.send(Ok(Response::Frozen {
                        until: now_unix() + secs as i64,
                        clamped: seconds.is_some_and(|s| s > self.config.freeze_max),
                        max: self.config.freeze_max,
                    }));
                }
                Job::Retime(new, done) => {
                    self.config = new;
                    let _ = done.send(());
                }
                Job::Run(_) => {}
                Job::Close(done) => {
                    self.lock = None;
                    self.remove_temp_copy();
                    let _ = done.send(Ok(()));
                    return self.refuse_all(rx);
                }
                Job::Shutdown(done) => {
                    self.lock = None;
                    self.remove_temp_copy();
                    let _ = done.send(());
                    return self.refuse_all(rx);
                }
            }
        }
    }

    /// Remove the copy of the desktop a full-disk opening read (readers that still have it
    /// open keep reading the unlinked files until they notice the opening is gone).
    fn remove_temp_copy(&mut self) {
        if let Some(dir) = self.temp_copy.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Before a commit: free space must cover the WAL (what a checkpoint may need to grow
    /// the desktop) and `min_free`. When it does not, checkpoint first (the WAL's space comes
    /// back); when that does not leave `min_free` either, refuse the batch.
    fn make_room(&mut self) -> Result<(), ErrorReply> {
        let usage = |dir: &Path| {
            space::usage(dir).unwrap_or(space::Usage {
                free: u64::MAX,
                size: u64::MAX,
            })
        };
        let len = |file: &Path| std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        let now = usage(&self.desktop_dir);
        let min_free = space::min_free(self.config.min_free, now.size);
        if space::room(now.free, len(&self.wal_path), min_free) == space::Room::Enough {
            return Ok(());
        }
        let checkpointed = if self.frozen() {
            Err(ErrorReply::new(ErrorCode::Busy, "frozen"))
        } else {
            self.flush(REQUESTED_CHECKPOINT_WAIT)
        };
        let left = usage(&self.desktop_dir).free;
        let wal = len(&self.wal_path);
        if space::room(left, wal, min_free) == space::Room::Enough {
            if self.low_space_checkpointed.now() {
                info!(volume = %self.volume.root().display(),
                    "little space left on the desktop's file system: WAL checkpointed before a \
                     commit ({left} bytes free; said at most once a minute)");
            }
            return Ok(());
        }
        let root = self.volume.root().display().to_string();
        if self.low_space_logged.now() {
            warn!(volume = %root, "writes refused: {left} bytes free on the desktop's file system, \
            less than the WAL ({wal} bytes) and min_free ({min_free}){}",
            match &checkpointed {
                Ok(()) => String::new(),
                Err(e) => format!("; checkpoint: {}", e.message),
            });
        }
        Err(ErrorReply::new(
            ErrorCode::DiskFull,
            format!(
                "{root}: the desktop's file system is nearly full ({left} bytes free, min_free \
                 {min_free}); nothing was recorded. Reads go on; free space and try again"
            ),
        ))
    }

    /// After the desktop is closed: answer whatever still arrives, until the last sender is
    /// gone. A connection may have taken the handle just before the volume was closed; its
    /// request must get an answer, not wait forever.
    fn refuse_all(self, rx: Receiver<Job>) {
        let closed = || {
            ErrorReply::new(
                ErrorCode::ShuttingDown,
                format!(
                    "{}: the desktop was closed (deskd is stopping, or reopening or no longer \
                     serving the volume); nothing was recorded, try again",
                    self.volume.root().display()
                ),
            )
        };
        for job in rx.iter() {
            match job {
                Job::Write { reply, .. } => reply.send(Err(closed())),
                Job::Flush(reply) | Job::Freeze(_, reply) | Job::Thaw(reply) => {
                    let _ = reply.send(Err(closed()));
                }
                Job::Retime(_, done) | Job::Shutdown(done) => {
                    let _ = done.send(());
                }
                Job::Close(done) => {
                    let _ = done.send(Ok(()));
                }
                // Dropping an online rebuild's work tells it that the desktop is gone.
                Job::Run(_) => {}
            }
        }
    }

    fn commit_batch(&mut self, writes: &mut Vec<(Request, ReplySink)>) {
        if writes.is_empty() {
            return;
        }
        if let Err(refusal) = self.make_room() {
            for (_, sink) in writes.drain(..) {
                sink.send(Err(refusal.clone()));
            }
            return;
        }
        let desktop = self.desktop.as_mut().expect("writer used after shutdown");
        let (volume, read_only) = (&self.volume, self.config.read_only);
        // Fast path: the whole batch in one transaction without savepoints (a savepoint per
        // request costs a statement journal per request). If a request fails, its
        // partial changes must not be committed: run the batch again, isolating each request.
        let outcome = match run_batch(desktop, volume, read_only, writes, false) {
            Ok(Attempt::Retry) => run_batch(desktop, volume, read_only, writes, true),
            other => other,
        };
        match outcome {
            Ok(Attempt::Retry) => unreachable!("an isolated run never asks for a retry"),
            Ok(Attempt::Done(replies)) => {
                tracing::debug!(batch = replies.len(), "committed");
                // Before any acknowledgement: readers must see this commit from now on.
                self.committed();
                let mut connections: Vec<ReplySink> = Vec::new();
                for ((_, sink), reply) in writes.drain(..).zip(replies) {
                    sink.queue(reply);
                    if !connections.iter().any(|c| c.same_connection(&sink)) {
                        connections.push(sink);
                    }
                }
                for c in connections {
                    c.flush();
                }
                self.check_wal_limit();
            }
            Err(e) => {
                error!(volume = %self.volume.root().display(), "commit failed: {e}");
                let reply = ErrorReply::new(
                    db_error(e).code,
                    format!(
                        "{}: desktop commit failed; nothing in this batch was recorded",
                        self.volume.root().display()
                    ),
                );
                for (_, sink) in writes.drain(..) {
                    sink.send(Err(reply.clone()));
                }
            }
        }
    }

    /// Bookkeeping after a commit: timers, and a new snapshot for readers.
    fn committed(&mut self) {
        self.last_write = Instant::now();
        self.dirty_since.get_or_insert(self.last_write);
        self.commits.fetch_add(1, Ordering::SeqCst);
    }

    fn frozen(&mut self) -> bool {
        match self.frozen_until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                self.frozen_until = None;
                self.state.lock().unwrap().frozen_until = None;
                info!(volume = %self.volume.root().display(), "freeze ended");
                false
            }
            None => false,
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut deadline: Option<Instant> = self.frozen_until;
        if let Some(since) = self.dirty_since {
            let flush = since + Duration::from_secs(self.config.flush_delay);
            let idle = self.last_write + Duration::from_secs(self.config.idle_close);
            let d = flush.min(idle);
            let d = match self.checkpoint_after {
                Some(after) => d.max(after),
                None => d,
            };
            let d = match self.frozen_until {
                Some(f) => d.max(f),
                None => d,
            };
            deadline = Some(deadline.map_or(d, |x| x.min(d)));
        }
        deadline
    }

    /// Whether a checkpoint that readers held back was tried too recently for another now.
    fn backing_off(&mut self) -> bool {
        match self.checkpoint_after {
            Some(after) if Instant::now() < after => true,
            _ => {
                self.checkpoint_after = None;
                false
            }
        }
    }

    fn timers(&mut self) {
        if self.frozen() || self.backing_off() {
            return;
        }
        if let Some(since) = self.dirty_since {
            let now = Instant::now();
            if now >= since + Duration::from_secs(self.config.flush_delay)
                || now >= self.last_write + Duration::from_secs(self.config.idle_close)
            {
                self.timed_flush("timed flush");
            }
        }
    }

    fn check_wal_limit(&mut self) {
        if self.frozen() || self.backing_off() {
            return;
        }
        let size = std::fs::metadata(&self.wal_path)
            .map(|m| m.len())
            .unwrap_or(0);
        if size > self.config.wal_limit {
            // A truncating checkpoint that readers hold back still copies every frame it can
            // (SQLite then proceeds as PASSIVE), so one call covers both cases.
            self.timed_flush("WAL over its limit");
        }
    }

    /// A checkpoint nobody asked for: logged once when readers start holding checkpoints
    /// back and once when one gets through, not at every retry.
    fn timed_flush(&mut self, why: &str) {
        let root = self.volume.root().display().to_string();
        match self.flush(TIMED_CHECKPOINT_WAIT) {
            Ok(()) => {
                if let Some(since) = self.held_back_since.take() {
                    info!(volume = %root, "{why}: checkpoint done after readers held it back for {} s", since.elapsed().as_secs());
                }
            }
            Err(e) if e.code == ErrorCode::Busy => {
                if self.held_back_since.is_none() {
                    self.held_back_since = Some(Instant::now());
                    warn!(volume = %root, "{why}: a reader of an older snapshot (a backup, an sqlite3 session) holds the checkpoint back; writes go on, retrying every {} s", CHECKPOINT_RETRY.as_secs());
                } else {
                    tracing::debug!(volume = %root, "{why}: checkpoint still held back");
                }
            }
            Err(e) => warn!(volume = %root, "{why} failed: {}", e.message),
        }
    }

    /// Checkpoint, waiting at most `wait` for readers of older snapshots.
    fn flush(&mut self, wait: Duration) -> Result<(), ErrorReply> {
        let desktop = self.desktop.as_ref().expect("writer used after shutdown");
        let (busy, _, _) = desktop.checkpoint(wait).map_err(|e| {
            if e.is_disk_full() {
                let wal = std::fs::metadata(&self.wal_path)
                    .map(|m| m.len())
                    .unwrap_or(0);
                ErrorReply::new(
                    ErrorCode::DiskFull,
                    format!(
                        "{}: no space left for the checkpoint: folding the WAL ({wal} bytes) \
                         into the desktop needs the desktop to grow; free space and flush \
                         again (nothing is lost: the WAL keeps every change)",
                        self.volume.root().display()
                    ),
                )
            } else {
                db_error(e)
            }
        })?;
        if busy != 0 {
            self.checkpoint_after = Some(Instant::now() + CHECKPOINT_RETRY);
            return Err(ErrorReply::new(
                ErrorCode::Busy,
                "checkpoint blocked by a reader; try again",
            ));
        }
        self.dirty_since = None;
        self.checkpoint_after = None;
        self.state.lock().unwrap().last_flush = now_unix();
        Ok(())
    }

    fn control(&mut self, job: Job) {
        match job {
            Job::Flush(reply) => {
                let result = if self.frozen() {
                    Err(ErrorReply::new(
                        ErrorCode::Busy,
                        format!(
                            "{}: frozen; flush after the freeze ends (or thaw)",
                            self.volume.root().display()
                        ),
                    ))
                } else {
                    self.flush(REQUESTED_CHECKPOINT_WAIT)
                        .map(|_| Response::Done)
                };
                let _ = reply.send(result);
            }
            Job::Freeze(seconds, reply) => {
                let wanted = seconds.unwrap_or(self.config.freeze_default);
                let clamped = wanted > self.config.freeze_max;
                let secs = wanted.min(self.config.freeze_max).max(1);
                // Flush first (a new freeze on a frozen volume just extends it).
                let result = if self.frozen() {
                    Ok(())
                } else {
                    self.flush(REQUESTED_CHECKPOINT_WAIT)
                };
                let result = result.map(|_| {
                    self.frozen_until = Some(Instant::now() + Duration::from_secs(secs as u64));
                    let until = now_unix() + secs as i64;
                    self.state.lock().unwrap().frozen_until = Some(until);
                    info!(volume = %self.volume.root().display(), seconds = secs, "frozen");
                    Response::Frozen {
                        until,
                        clamped,
                        max: self.config.freeze_max,
                    }
                });
                let _ = reply.send(result);
            }
            Job::Thaw(reply) => {
                self.frozen_until = None;
                self.state.lock().unwrap().frozen_until = None;
                let _ = reply.send(Ok(Response::Done));
            }
            Job::Retime(new, done) => {
                self.config.flush_delay = new.flush_delay;
                self.config.idle_close = new.idle_close;
                self.config.freeze_default = new.freeze_default;
                self.config.freeze_max = new.freeze_max;
                self.config.wal_limit = new.wal_limit;
                self.config.min_free = new.min_free;
                if new.durability != self.config.durability {
                    let desktop = self.desktop.as_ref().expect("writer used after shutdown");
                    match desktop.set_durability(new.durability) {
                        Ok(()) => {
                            self.config.durability = new.durability;
                            info!(volume = %self.volume.root().display(),
                                "durability now {:?}", new.durability);
                        }
                        Err(e) => warn!(volume = %self.volume.root().display(),
                            "durability stays {:?}: {e}", self.config.durability),
                    }
                }
                let _ = done.send(());
            }
            Job::Run(work) => {
                let desktop = self.desktop.as_mut().expect("writer used after shutdown");
                if work(desktop) {
                    self.committed();
                    self.check_wal_limit();
                }
            }
            Job::Write { .. } | Job::Close(_) | Job::Shutdown(_) => {
                unreachable!("handled by run")
            }
        }
    }

    /// At the server's end, after a clean close: remove a WAL the checkpoint emptied (and its
    /// index), which the process's read connections would otherwise leave behind. Never done
    /// at a reload's close (readers of this opening may still use them), nor while another
    /// process (an `sqlite3` session, a backup) has the desktop open.
    fn remove_empty_wal(&self) {
        let wal = self.wal_path.as_os_str().as_bytes();
        let desktop = Path::new(std::ffi::OsStr::from_bytes(
            &wal[..wal.len() - "-wal".len()],
        ));
        if std::fs::metadata(&self.wal_path).is_ok_and(|m| m.len() == 0)
            && !space::open_elsewhere(desktop)
        {
            let _ = std::fs::remove_file(&self.wal_path);
            let _ = std::fs::remove_file(deskd_db::shm_path(desktop));
        }
    }

    fn shutdown(&mut self) {
        if let Some(desktop) = self.desktop.take() {
            match desktop.close_clean() {
                Ok(()) => info!(volume = %self.volume.root().display(), "desktop closed cleanly"),
                Err(e) => error!(volume = %self.volume.root().display(), "clean close failed: {e}"),
            }
        }
        // Only now may another opening of this desktop take the lock.
        self.lock = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigFile;

    fn config_for(root: &Path) -> VolumeConfig {
        ConfigFile::default()
            .resolve("/unused".into(), &[root.to_path_buf()])
            .unwrap()
            .volumes
            .remove(0)
    }

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
        assert_eq!(handle.ask(Job::Close), Some(Err("frozen".to_string())));
        // Still open and serving.
        assert!(matches!(handle.ask(Job::Thaw), Some(Ok(_))));
        assert_eq!(handle.ask(Job::Close), Some(Ok(())));
    }
}
