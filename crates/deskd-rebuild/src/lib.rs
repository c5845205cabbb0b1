//! `deskd rebuild`: re-create, repair or check a volume's desktop from what is on disk — the
//! resource files, the `user.deskd.id` mirrors and Netatalk's metadata.
//!
//! Two passes (DESIGN §8): [`walk`] reads the whole volume in parallel; [`plan`] then decides
//! every ID (renumbering only true duplicates) and lists the differences and repairs. `-s` prints
//! the differences; the other modes repair the disk (resource files, mirrors, orphans) and write a
//! complete new desktop under a temporary name, which replaces `.Desktop` by one atomic rename.
//! The old desktop is untouched until that rename, so a rebuild killed at any moment leaves a
//! desktop the server can open, and running it again completes the work.
//!
//! This runs offline: the desktop is locked exclusively (`flock`, the same lock `deskd serve`
//! holds), so a running server makes the rebuild stop with a clear message.

#![forbid(unsafe_code)]

pub mod claims;
mod old_rows;
pub mod online;
pub mod plan;
mod relocation;
#[cfg(test)]
mod test_support;
pub mod walk;

use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use deskd_db::bulk::{BulkLoad, Identity};
use serde::Serialize;

pub use claims::ClaimPolicy;
pub use plan::{Counts, Difference, Fix, OldDesktop, Plan};

/// Errors of a rebuild. Each variant says what failed; the causes are part of the message and
/// deliberately not a `source` (named `error`, as in [`deskd_volume::VolumeError`]): printed with
/// anyhow's `{:#}` a source would be repeated after the message.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The volume's desktop is in PostgreSQL ([`deskd_volume::BACKEND_XATTR`]): an offline
    /// rebuild of its SQLite file would hand out IDs the database has given.
    #[error("{0}")]
    InPostgresql(String),
    /// The volume root (or the root given to the walk) is no directory.
    #[error("{}: not a directory", path.display())]
    NotADirectory { path: PathBuf },
    /// A path with a NUL byte, which no system call takes.
    #[error("{}: NUL in path", path.display())]
    NulInPath { path: PathBuf },
    /// The desktop's lock was refused: this user may not write the desktop.
    #[error(
        "{}: {error}: you may not write the desktop{}; run this as root, or while deskd \
         serves the volume (the server runs the rebuild)",
        desktop.display(),
        owner_and_mode(*owner)
    )]
    MayNotWrite {
        desktop: PathBuf,
        error: std::io::Error,
        /// The desktop's owner uid and permission bits, when they could be read.
        owner: Option<(u32, u32)>,
    },
    /// The desktop is locked by a server (or another rebuild) this command cannot reach.
    #[error(
        "{}: the desktop is open by a running deskd serve that this command cannot reach (or by \
         another rebuild); give its socket with --socket or DESKD_SOCKET to rebuild online, or \
         stop the server",
        root.display()
    )]
    Busy { root: PathBuf },
    /// The walk's stop flag was set (an online rebuild cancelled or timed out).
    #[error("the walk was stopped")]
    Cancelled,
    /// Less than twice the desktop's size is free where the new desktop is written.
    #[error(
        "{}: only {free} bytes free, a rebuild needs at least twice the desktop's {size} bytes; \
         free space or use --force",
        dir.display()
    )]
    NoSpace { dir: PathBuf, free: u64, size: u64 },
    /// The user may not read this volume's desktop.
    #[error("{0}")]
    NotAdmin(deskd_volume::guard::AdminError),
    /// A desktop (the volume's or the backup to restore) of a newer format than this deskd's.
    #[error("{}: {error}; {refused}", path.display())]
    FormatTooNew {
        path: PathBuf,
        /// [`deskd_db::DbError::FormatTooNew`].
        error: deskd_db::DbError,
        /// Which desktop it is, and so why it is refused.
        refused: NewerDesktop,
    },
    /// The volume lies inside another volume, and `--nested` was not given.
    #[error("{}", deskd_volume::guard::inside_message(root, outer))]
    Inside { root: PathBuf, outer: PathBuf },
    /// Another volume lies below this one, and `--nested` was not given.
    #[error("{}", deskd_volume::guard::around_message(root, inner))]
    Around { root: PathBuf, inner: PathBuf },
    /// Every user may write the volume root, and `--world-writable` was not given.
    #[error("{}", deskd_volume::guard::world_writable_message(root))]
    WorldWritable { root: PathBuf },
    /// A repair (not `-f`) of a volume without a desktop.
    #[error("no desktop at {}; use deskd rebuild -f to create one", desktop.display())]
    NoDesktop { desktop: PathBuf },
    /// The backup to restore from is empty.
    #[error("{}: empty desktop", backup.display())]
    EmptyBackup { backup: PathBuf },
    /// The backup to restore from cannot be read.
    #[error("{}: cannot read the desktop to restore ({error})", backup.display())]
    UnreadableBackup {
        backup: PathBuf,
        error: Box<RebuildError>,
    },
    /// The volume's desktop cannot be read for a repair or scan. `denied` is why this user may
    /// not read it ([`deskd_volume::guard::unreadable_desktop`]), when that is the reason.
    #[error(
        "{}: cannot read the desktop ({error}); {}",
        root.display(),
        unreadable_advice(denied.as_deref())
    )]
    UnreadableDesktop {
        root: PathBuf,
        error: Box<RebuildError>,
        denied: Option<String>,
    },
    #[error("desktop: {0}")]
    Db(#[from] deskd_db::DbError),
    #[error("{0}")]
    Volume(#[from] deskd_volume::VolumeError),
}

/// Which desktop of a newer format was refused ([`RebuildError::FormatTooNew`]); its display
/// is why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewerDesktop {
    /// The backup to restore from.
    Backup,
    /// The volume's own desktop, under a scan or a repair, or `-f` with `--downgrade` (logged).
    Volume,
    /// The volume's own desktop under `-f` without `--downgrade`.
    VolumeFresh,
}

impl std::fmt::Display for NewerDesktop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NewerDesktop::Backup => "it cannot be restored",
            NewerDesktop::Volume => "rebuilding it would drop what this deskd does not know",
            NewerDesktop::VolumeFresh => {
                "rebuilding it would drop what this deskd does not know (--downgrade replaces \
                 it with a new desktop anyway)"
            }
        })
    }
}

/// ` (owned by uid N, mode 0600)`, or nothing when the desktop could not be examined.
fn owner_and_mode(owner: Option<(u32, u32)>) -> String {
    owner
        .map(|(uid, mode)| format!(" (owned by uid {uid}, mode {mode:04o})"))
        .unwrap_or_default()
}

/// What to do about a desktop that cannot be read: `-f` is no way out for a desktop this user
/// may not read, as it cannot replace it either (a root-run deskd's desktop is root's, 0600).
fn unreadable_advice(denied: Option<&str>) -> String {
    match denied {
        Some(why) => format!(
            "{why}; run this as root, or while deskd serves the volume (the server runs the \
             rebuild)"
        ),
        None => "run `deskd rebuild -f` to build a new one".to_string(),
    }
}

impl RebuildError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        RebuildError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What a rebuild does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `-s`: report differences, change nothing.
    Scan,
    /// default: repair the disk and the desktop, using the desktop where the disk is silent.
    Repair,
    /// `-f`: a new desktop from the disk alone.
    Fresh,
}

/// Options of a rebuild.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    pub threads: usize,
    /// Skip the free-space check.
    pub force: bool,
    /// Take the desktop records from this desktop (a backup being restored) instead of the
    /// volume's own, which the new desktop replaces whether it can be read or not.
    pub start_from: Option<PathBuf>,
    /// The new desktop's ID counter is at least this (a restore: IDs handed out after the
    /// backup was made must not be handed out again).
    pub min_last_id: u32,
    /// Rebuild a volume inside or around another volume's root (`--nested`).
    pub nested: bool,
    /// Rebuild a volume whose root every user may write (`--world-writable`).
    pub world_writable: bool,
    /// With `-f`: replace a desktop of a newer format (`--downgrade`); what this deskd does not
    /// know of it is lost.
    pub downgrade: bool,
    /// Accept every ID claim of the resource files and mirrors, whoever wrote them
    /// (`--trust-ids`, e.g. after a tar restore of the user files).
    pub trust_ids: bool,
    /// With `-f`: the directory the volume's `desktop_location` names for it
    /// (`<location>/<volume path>`). A desktop still in the root is written there instead,
    /// and `ROOT/.Desktop` becomes the relocation symlink to it; one already relocated stays.
    pub relocate_to: Option<PathBuf>,
}

impl Options {
    /// A rebuild of the volume's own desktop.
    pub fn new(mode: Mode, threads: usize, force: bool) -> Options {
        Options {
            mode,
            threads,
            force,
            start_from: None,
            min_last_id: 0,
            nested: false,
            world_writable: false,
            downgrade: false,
            trust_ids: false,
            relocate_to: None,
        }
    }
}

/// What a rebuild did (or, for `-s`, found).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: Mode,
    pub volume: String,
    #[serde(flatten)]
    pub counts: Counts,
    pub differences: usize,
    pub seconds: f64,
}

/// Serialise bytes as a string, invalid UTF-8 as `\xNN`.
pub(crate) fn bytes_lossy<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    s.serialize_str(&out)
}

/// Where the desktop of `root` lives (following a relocation symlink).
pub fn desktop_path(root: &Path) -> Result<PathBuf, RebuildError> {
    let link = deskd_volume::desktop_link(root)
        .map_err(|e| RebuildError::io(&root.join(deskd_volume::DESKTOP_FILE), e))?;
    Ok(link.unwrap_or_else(|| root.join(deskd_volume::DESKTOP_FILE)))
}

fn lock(desktop: &Path, root: &Path) -> Result<File, RebuildError> {
    deskd_volume::lock_desktop(desktop)
        .map_err(|e| {
            if e.kind() != std::io::ErrorKind::PermissionDenied {
                return RebuildError::io(desktop, e);
            }
            let owner = std::fs::metadata(desktop).ok().map(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.uid(), m.mode() & 0o7777)
            });
            RebuildError::MayNotWrite {
                desktop: desktop.to_path_buf(),
                error: e,
                owner,
            }
        })?
        .ok_or_else(|| RebuildError::Busy {
            root: root.to_path_buf(),
        })
}

/// Refuse when the file system of the desktop has less than twice the desktop's size free.
pub fn check_space(desktop: &Path) -> Result<(), RebuildError> {
    check_space_in(desktop, desktop.parent().unwrap_or(Path::new("/")))
}

/// [`check_space`] for a new desktop written in `dir` (a relocation's directory, which may be
/// on another file system than the desktop it replaces).
fn check_space_in(desktop: &Path, dir: &Path) -> Result<(), RebuildError> {
    let size = std::fs::metadata(desktop).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(deskd_db::wal_path(desktop))
            .map(|m| m.len())
            .unwrap_or(0);
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
        RebuildError::NulInPath {
            path: dir.to_path_buf(),
        }
    })?;
    let st = rustix::fs::statvfs(c.as_c_str()).map_err(|e| RebuildError::io(dir, e.into()))?;
    let free = st.f_bavail * st.f_frsize;
    if free < 2 * size {
        return Err(RebuildError::NoSpace {
            dir: dir.to_path_buf(),
            free,
            size,
        });
    }
    Ok(())
}

/// Read the old desktop completely; `None` when there is none (missing or empty file).
pub fn read_old(desktop: &Path) -> Result<Option<OldDesktop>, RebuildError> {
    read_desktop(desktop, true)
}

/// [`read_old`], with its IDs by place only when `places` (a plan decides from them; `-f` and
/// the reference desktops only check claims against the rows by ID, and the places would cost
/// some 40 bytes a row more).
fn read_desktop(desktop: &Path, places: bool) -> Result<Option<OldDesktop>, RebuildError> {
    if std::fs::metadata(desktop).map(|m| m.len()).unwrap_or(0) == 0 {
        return Ok(None);
    }
    // Not memory-mapped: every page is read once, and mapped pages would count in the
    // rebuild's resident memory (the whole desktop, some 145 bytes an object) while the rows
    // are read.
    let reader = deskd_db::Reader::open_mapped(desktop, false, 0)?;
    reader.begin_snapshot()?;
    read_from(&reader, places).map(Some)
}

/// [`read_old`] of a desktop of any back end (a volume's desktop in PostgreSQL, read by an
/// online rebuild). The caller chooses the snapshot: SQLite's reader one transaction; on
/// PostgreSQL each statement sees what was committed when it began, and the online rebuild
/// counts what clients changed from before the first one ([`online`]).
pub fn read_old_from(reader: &dyn deskd_db::Read) -> Result<OldDesktop, RebuildError> {
    read_from(reader, true)
}

fn read_from(reader: &dyn deskd_db::Read, places: bool) -> Result<OldDesktop, RebuildError> {
    let mut old = OldDesktop {
        last_id: reader.meta("last_id")?.unwrap_or(0) as u32,
        comments: reader.all_comments()?.into_iter().collect(),
        icons: reader.all_icons()?,
        appl: reader.all_appl()?,
        identity: match (reader.meta("created")?, reader.meta("volume_uuid")?) {
            (Some(created), Some(volume_uuid)) => Some(Identity {
                created,
                volume_uuid,
            }),
            _ => None,
        },
        left_database: reader.meta(deskd_db::LEFT_DATABASE)?,
        ..Default::default()
    };
    // One row at a time into the compact rows: the rows as `Object`s would cost some 100
    // bytes each on top, if only while they are read.
    old.objects
        .reserve(usize::try_from(reader.object_count()?).unwrap_or(0));
    reader.for_each_object(&mut |o| {
        old.objects.insert(o.id, o);
    })?;
    if places {
        old.objects.index_places();
    }
    Ok(old)
}

/// Whether the volume's file system keeps user xattrs (so mirrors are expected).
pub fn xattrs_supported(root: &Path) -> bool {
    match xattr::get(root, deskd_volume::ID_XATTR) {
        Ok(_) => true,
        Err(e) => !matches!(e.raw_os_error(), Some(libc::ENOTSUP)),
    }
}

/// Run a rebuild of the volume at `root`. `on_difference` receives each difference (for `-s`
/// and `-v`), `on_progress` the number of objects walked so far.
pub fn rebuild(
    root: &Path,
    options: &Options,
    on_progress: &(dyn Fn(u64) + Sync),
    on_difference: &mut dyn FnMut(&Difference),
) -> Result<Report, RebuildError> {
    let started = Instant::now();
    let root = std::fs::canonicalize(root).map_err(|e| RebuildError::io(root, e))?;
    if !root.is_dir() {
        return Err(RebuildError::NotADirectory { path: root });
    }
    // A restore (`start_from`) writes the SQLite desktop on purpose, and removes the mark.
    if options.start_from.is_none() {
        deskd_volume::refuse_if_in_postgresql(&root).map_err(RebuildError::InPostgresql)?;
    }
    let desktop = desktop_path(&root)?;
    refuse_unsafe(&root, &desktop, options)?;
    let relocated = relocation::target(&root, &desktop, options)?;
    // The lock creates the desktop file; a rebuild that fails must not leave one behind where
    // there was none (a nested volume found by the walk, say).
    let existed = std::fs::symlink_metadata(&desktop).is_ok();
    let result = rebuild_checked(
        &root,
        &desktop,
        relocated.as_deref(),
        options,
        started,
        on_progress,
        on_difference,
    );
    if result.is_err() && !existed && std::fs::metadata(&desktop).is_ok_and(|m| m.len() == 0) {
        let _ = std::fs::remove_file(&desktop);
    }
    result
}

/// What must hold before anything of the volume is read or written: the user may read its
/// desktop, it is of a format this deskd knows, it is no volume inside another one (or a root
/// every user may write) unless asked to be, and a repair has a desktop to repair. [`rebuild`]
/// checks it first; a restore checks it before it reads the backup.
pub fn refuse_unsafe(root: &Path, desktop: &Path, options: &Options) -> Result<(), RebuildError> {
    let what = match options.mode {
        Mode::Scan => "deskd rebuild -s",
        Mode::Repair => "deskd rebuild",
        Mode::Fresh => "deskd rebuild -f",
    };
    deskd_volume::guard::require_admin(root, desktop, what).map_err(RebuildError::NotAdmin)?;
    if let Some(backup) = &options.start_from {
        refuse_newer(backup, NewerDesktop::Backup)?;
    }
    if let Err(e) = refuse_newer(desktop, NewerDesktop::Volume) {
        if !(options.mode == Mode::Fresh && options.downgrade) {
            return Err(match e {
                RebuildError::FormatTooNew { path, error, .. } if options.mode == Mode::Fresh => {
                    RebuildError::FormatTooNew {
                        path,
                        error,
                        refused: NewerDesktop::VolumeFresh,
                    }
                }
                e => e,
            });
        }
        tracing::warn!("{e}; replacing it (--downgrade)");
    }
    if !options.nested {
        if let Some(outer) = deskd_volume::guard::enclosing_volume(root) {
            return Err(RebuildError::Inside {
                root: root.to_path_buf(),
                outer,
            });
        }
    }
    if !options.world_writable && deskd_volume::guard::world_writable(root) {
        return Err(RebuildError::WorldWritable {
            root: root.to_path_buf(),
        });
    }
    let has_desktop = std::fs::metadata(desktop).is_ok_and(|m| m.len() > 0);
    if options.mode == Mode::Repair && options.start_from.is_none() && !has_desktop {
        return Err(RebuildError::NoDesktop {
            desktop: desktop.to_path_buf(),
        });
    }
    Ok(())
}

/// Refuse the desktop at `path` when its format is newer than this deskd's.
fn refuse_newer(path: &Path, refused: NewerDesktop) -> Result<(), RebuildError> {
    match deskd_db::files::check_format(path) {
        Err(error @ deskd_db::DbError::FormatTooNew { .. }) => Err(RebuildError::FormatTooNew {
            path: path.to_path_buf(),
            error,
            refused,
        }),
        // Anything else (a damaged file) is for the rebuild itself to report or replace.
        _ => Ok(()),
    }
}

/// [`rebuild`] once the volume passed [`refuse_unsafe`].
fn rebuild_checked(
    root: &Path,
    desktop: &Path,
    relocated: Option<&Path>,
    options: &Options,
    started: Instant,
    on_progress: &(dyn Fn(u64) + Sync),
    on_difference: &mut dyn FnMut(&Difference),
) -> Result<Report, RebuildError> {
    let (root, desktop) = (root.to_path_buf(), desktop.to_path_buf());
    let _lock = match options.mode {
        Mode::Scan => None,
        _ => Some(lock(&desktop, &root)?),
    };
    if options.mode != Mode::Scan && !options.force {
        let written_in = relocated.unwrap_or(&desktop).parent();
        check_space_in(&desktop, written_in.unwrap_or(Path::new("/")))?;
    }
    let mut old = match &options.start_from {
        Some(backup) => match read_desktop(backup, options.mode != Mode::Fresh) {
            Ok(Some(old)) => Some(old),
            Ok(None) => {
                return Err(RebuildError::EmptyBackup {
                    backup: backup.clone(),
                })
            }
            Err(e) => {
                return Err(RebuildError::UnreadableBackup {
                    backup: backup.clone(),
                    error: Box::new(e),
                })
            }
        },
        None => match read_desktop(&desktop, options.mode != Mode::Fresh) {
            Ok(old) => old,
            Err(e) if options.mode == Mode::Fresh => {
                tracing::warn!(
                    "the old desktop cannot be read ({e}); building from the disk alone"
                );
                None
            }
            Err(e) => {
                return Err(RebuildError::UnreadableDesktop {
                    root: root.clone(),
                    error: Box::new(e),
                    denied: deskd_volume::guard::unreadable_desktop(&desktop),
                });
            }
        },
    };
    let walk = walk::walk(
        &root,
        options.threads,
        on_progress,
        &std::sync::atomic::AtomicBool::new(false),
    )?;
    if let (Some(inner), false) = (walk.nested_volumes.first(), options.nested) {
        return Err(RebuildError::Around {
            root: root.clone(),
            inner: inner.clone(),
        });
    }
    let (counter, identity) = match &old {
        Some(o) => (o.last_id.max(options.min_last_id), o.identity),
        None => (options.min_last_id, None),
    };
    let decide_from = match options.mode {
        Mode::Fresh => None,
        _ => old.as_ref(),
    };
    // Claims are checked against every desktop that can be read: the backup being restored
    // and the volume's own, or the volume's own (also for -f, when it can still be read).
    let live = match &options.start_from {
        Some(_) => read_desktop(&desktop, false).ok().flatten(),
        None => None,
    };
    let policy = ClaimPolicy {
        references: old.iter().chain(live.iter()).collect(),
        trust_all: options.trust_ids,
        recorded_max: options.min_last_id,
    };
    // Differences are passed on as the plan finds them, not held (a repair of a volume whose
    // every resource file is lost has one or two per object). Without any desktop, -s shows
    // one difference, not a million "new" lines (and the count, which the summary gives, is
    // of the lines shown).
    let no_desktop = options.mode == Mode::Scan && old.is_none();
    let mut differences = 0;
    let (plan, repairs) = plan::plan_compact(
        &walk,
        decide_from,
        counter,
        xattrs_supported(&root),
        &policy,
        &mut |d| {
            if !no_desktop {
                differences += 1;
                on_difference(&d);
            }
        },
    );
    drop(live);
    // What is left to do reads the old desktop only for its icons and APPL records.
    if let Some(o) = old.as_mut() {
        o.objects = Default::default();
    }
    if no_desktop {
        differences = 1;
        on_difference(&Difference {
            object: None,
            id: None,
            kind: "no-desktop",
            path: desktop.as_os_str().as_bytes().to_vec(),
            detail: "there is no desktop; run `deskd rebuild -f`".into(),
        });
    }
    if options.mode != Mode::Scan {
        test_pause_before_fixes();
        let object_fixes = repairs.iter().map(|r| r.fix(&walk, &plan.rows));
        apply_fixes(&root, object_fixes.chain(plan.fixes.iter().cloned()))?;
        crash_point("fixes");
        let replacing = match options.start_from {
            Some(_) => Replacing::AnyDesktop,
            None if old.is_some() => Replacing::ReadDesktop,
            None => Replacing::Unreadable,
        };
        match relocated {
            None => write_desktop(&desktop, &walk, &plan, old.as_ref(), identity, replacing)?,
            Some(target) => {
                // The old desktop stays whole (and locked) until the link replaces it; its
                // rows were read above, so its WAL has nothing left to give.
                let replacing = Replacing::Unreadable;
                write_desktop(target, &walk, &plan, old.as_ref(), identity, replacing)?;
                relocation::link(&root, &desktop, target)?;
            }
        }
    }
    Ok(Report {
        mode: options.mode,
        volume: root.display().to_string(),
        counts: plan.counts.clone(),
        differences,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Walker threads when none are asked for: they mostly wait on the disk (a cold cache means
/// one read per resource file), so more of them than CPUs keep the device queue full.
pub fn default_threads() -> usize {
    (std::thread::available_parallelism().map_or(2, |n| n.get()) * 8).clamp(8, 64)
}

/// Give the resource file `rsrc` (below `root`), just made by the rebuild, to its object's
/// owner. `written` is `rsrc` pinned with its object's folder held (`.rsrc/NAME` named from
/// it), so the object is named through that folder; the file is named inside its `.rsrc`
/// folder held open, so that a `.rsrc` swapped for a link after the write leads root's
/// `chown` nowhere ([`deskd_volume::pin`]).
fn give_made_rsrc(root: &Path, rsrc: &Path, written: &deskd_volume::pin::Pinned) {
    let Some(folder) = written.path.parent().and_then(Path::parent) else {
        return;
    };
    // The root's own record (`ROOT/.rsrc/.rsrc`) is the folder's; any other is `NAME`'s in it.
    let object = if rsrc == deskd_volume::rsrc::root_rsrc_path(root) {
        folder.to_path_buf()
    } else {
        match rsrc.file_name() {
            Some(name) => folder.join(name),
            None => return,
        }
    };
    if let Ok(inside) = deskd_volume::pin::pin(root, rsrc, 1) {
        deskd_volume::rsrc::give_to_the_objects_owner(&inside.path, &object);
    }
}

fn apply_fixes(root: &Path, fixes: impl Iterator<Item = Fix>) -> Result<(), RebuildError> {
    // Every path is opened below the root without following a symlink on the way: a user
    // who swaps a folder of its own for a link after the walk cannot lead root's writes,
    // xattrs or removals anywhere else (deskd_volume::pin).
    use deskd_volume::pin::pin;
    for fix in fixes {
        match &fix {
            Fix::WriteRsrc { path, header } => {
                let pinned = pin(root, path, 2)?;
                let existed = std::fs::symlink_metadata(&pinned.path).is_ok();
                // What is made here belongs to the object's and the folder's owners, as `dt`
                // run by them leaves it (docs/rebuild.md): root's `.rsrc/` in a user's
                // folder would shut the user's own `dt` out of it.
                deskd_volume::rsrc::make_rsrc_dir_like_its_folder(&pinned.path)?;
                deskd_volume::rsrc::write_header(&pinned.path, header)?;
                if !existed {
                    give_made_rsrc(root, path, &pinned);
                }
            }
            Fix::MoveRsrc { from, to, id } => {
                // A link in place of .rsrc is refused: nothing is renamed out of the volume.
                let to2 = pin(root, to, 2)?;
                deskd_volume::rsrc::make_rsrc_dir(&to2.path)?;
                let from1 = pin(root, from, 1)?;
                let to1 = pin(root, to, 1)?;
                std::fs::rename(&from1.path, &to1.path).map_err(|e| RebuildError::io(from, e))?;
                deskd_volume::rsrc::ensure_id(&to2.path, *id, || {
                    deskd_volume::rsrc::ResourceHeader::new(*id, [0; 4], [0; 4], 0)
                })?;
            }
            Fix::WriteXattr { path, id } if path == root => {
                deskd_volume::write_id_xattr(path, *id)?
            }
            Fix::WriteXattr { path, id } => {
                deskd_volume::write_id_xattr(&pin(root, path, 1)?.path, *id)?
            }
            Fix::RemoveOrphan { path } => match std::fs::remove_file(&pin(root, path, 1)?.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(RebuildError::io(path, e))
                }
                _ => {}
            },
        }
    }
    Ok(())
}

/// What the new desktop replaces, which decides what becomes of the old one's WAL.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Replacing {
    /// The desktop the plan was made from: its WAL must be folded in first.
    ReadDesktop,
    /// A desktop that could not be read: its WAL is worth nothing.
    Unreadable,
    /// Whatever the volume has (a restore): fold its WAL in if it can be, so the file stays
    /// whole until the rename; otherwise drop it.
    AnyDesktop,
}

/// Write the planned desktop under a temporary name and rename it over the old one.
fn write_desktop(
    desktop: &Path,
    walk: &walk::Walk,
    plan: &Plan,
    old: Option<&OldDesktop>,
    identity: Option<Identity>,
    replacing: Replacing,
) -> Result<(), RebuildError> {
    let dir = desktop.parent().unwrap_or(Path::new("/"));
    let temp = dir.join(deskd_volume::REBUILD_FILE);
    for stale in [temp.clone(), {
        let mut j = temp.as_os_str().to_os_string();
        j.push("-journal");
        PathBuf::from(j)
    }] {
        match std::fs::remove_file(&stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(RebuildError::io(&stale, e))
            }
            _ => {}
        }
    }
    let mut bulk = BulkLoad::create(&temp)?;
    // Each row is made whole (its name and place from the walk) as it is written.
    for i in 0..plan.rows.len() {
        bulk.insert(&plan.object(walk, i))?;
    }
    for (id, text) in &plan.comments {
        bulk.add_comment(*id, text)?;
    }
    if let Some(o) = old {
        for icon in &o.icons {
            bulk.add_icon(icon)?;
        }
        // The applications of the APPL records that are still there (few IDs to look for,
        // rather than a set of every row's).
        let wanted: std::collections::HashSet<u32> = o.appl.iter().map(|r| r.app_id).collect();
        let alive: std::collections::HashSet<u32> = plan
            .rows
            .iter()
            .map(|r| r.id)
            .filter(|id| wanted.contains(id))
            .collect();
        for record in o.appl.iter().filter(|r| alive.contains(&r.app_id)) {
            bulk.add_appl(record)?;
        }
        if let Some(when) = o.left_database {
            bulk.keep_left_database(when)?;
        }
    }
    let identity = match identity {
        Some(identity) => identity,
        None => Identity::fresh()?,
    };
    bulk.finish(plan.last_id, identity)?;
    crash_point("written");
    // The old desktop's WAL belongs to the old file: fold it in, then remove it, so it can never
    // be applied to the new one. The old file is still complete until the rename below.
    // (An unreadable old desktop has nothing worth folding in.)
    match replacing {
        Replacing::ReadDesktop => deskd_db::checkpoint_file(desktop)?,
        Replacing::AnyDesktop if std::fs::metadata(desktop).is_ok() => {
            if let Err(e) = deskd_db::checkpoint_file(desktop) {
                tracing::warn!(
                    "the desktop being replaced cannot be checkpointed ({e}); its WAL is dropped"
                );
            }
        }
        _ => {}
    }
    crash_point("checkpointed");
    for side in [deskd_db::wal_path(desktop), deskd_db::shm_path(desktop)] {
        match std::fs::remove_file(&side) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(RebuildError::io(&side, e))
            }
            _ => {}
        }
    }
    crash_point("sidefiles");
    std::fs::rename(&temp, desktop).map_err(|e| RebuildError::io(desktop, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RebuildError::io(dir, e))?;
    Ok(())
}

/// Test hook: `DESKD_REBUILD_CRASH_AFTER=<step>` aborts the process right after that step, so the
/// tests can show that a rebuild killed there leaves a desktop the server can open.
/// Test hook: wait between the plan and its fixes until a file exists
/// (`DESKD_TEST_REBUILD_HOLD_BEFORE_FIXES=<file>`), so a test can swap a folder for a symlink
/// where a hostile user would race; it says on stderr when the wait begins, and the test
/// creates the file when its swap is done.
#[cfg(feature = "test-hooks")]
fn test_pause_before_fixes() {
    if let Some(until) = std::env::var_os("DESKD_TEST_REBUILD_HOLD_BEFORE_FIXES") {
        let until = std::path::Path::new(&until);
        eprintln!(
            "test hook: pausing before the fixes until {} exists",
            until.display()
        );
        while !until.exists() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

#[cfg(feature = "test-hooks")]
fn crash_point(step: &str) {
    if std::env::var("DESKD_REBUILD_CRASH_AFTER").is_ok_and(|s| s == step) {
        std::process::abort();
    }
}

// Without the `test-hooks` feature the hooks are compiled out (release binaries hold none).
#[cfg(not(feature = "test-hooks"))]
fn test_pause_before_fixes() {}
#[cfg(not(feature = "test-hooks"))]
fn crash_point(_step: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed errors print the very texts the string errors printed (users, scripts and the
    /// CLI tests read them).
    #[test]
    fn typed_errors_keep_their_messages() {
        let too_new = || deskd_db::DbError::FormatTooNew {
            found: 9,
            supported: 3,
        };
        let cases: Vec<(RebuildError, &str)> = vec![
            (
                RebuildError::FormatTooNew {
                    path: "/v/.Desktop".into(),
                    error: too_new(),
                    refused: NewerDesktop::VolumeFresh,
                },
                "/v/.Desktop: desktop format 9 is newer than this deskd supports (3); upgrade \
                 deskd; rebuilding it would drop what this deskd does not know (--downgrade \
                 replaces it with a new desktop anyway)",
            ),
            (
                RebuildError::FormatTooNew {
                    path: "/b".into(),
                    error: too_new(),
                    refused: NewerDesktop::Backup,
                },
                "/b: desktop format 9 is newer than this deskd supports (3); upgrade deskd; it \
                 cannot be restored",
            ),
            (
                RebuildError::Busy { root: "/v".into() },
                "/v: the desktop is open by a running deskd serve that this command cannot \
                 reach (or by another rebuild); give its socket with --socket or DESKD_SOCKET \
                 to rebuild online, or stop the server",
            ),
            (
                RebuildError::MayNotWrite {
                    desktop: "/v/.Desktop".into(),
                    error: std::io::Error::from_raw_os_error(libc::EACCES),
                    owner: Some((0, 0o600)),
                },
                "/v/.Desktop: Permission denied (os error 13): you may not write the desktop \
                 (owned by uid 0, mode 0600); run this as root, or while deskd serves the \
                 volume (the server runs the rebuild)",
            ),
            (
                RebuildError::NoSpace {
                    dir: "/v".into(),
                    free: 10,
                    size: 20,
                },
                "/v: only 10 bytes free, a rebuild needs at least twice the desktop's 20 bytes; \
                 free space or use --force",
            ),
            (
                RebuildError::UnreadableDesktop {
                    root: "/v".into(),
                    error: Box::new(RebuildError::NotADirectory { path: "/x".into() }),
                    denied: None,
                },
                "/v: cannot read the desktop (/x: not a directory); run `deskd rebuild -f` to \
                 build a new one",
            ),
            (
                RebuildError::UnreadableDesktop {
                    root: "/v".into(),
                    error: Box::new(RebuildError::NotADirectory { path: "/x".into() }),
                    denied: Some("you may not read it".into()),
                },
                "/v: cannot read the desktop (/x: not a directory); you may not read it; run \
                 this as root, or while deskd serves the volume (the server runs the rebuild)",
            ),
            (
                RebuildError::UnreadableBackup {
                    backup: "/b".into(),
                    error: Box::new(RebuildError::NulInPath { path: "/x".into() }),
                },
                "/b: cannot read the desktop to restore (/x: NUL in path)",
            ),
            (
                RebuildError::NoDesktop {
                    desktop: "/v/.Desktop".into(),
                },
                "no desktop at /v/.Desktop; use deskd rebuild -f to create one",
            ),
            (
                RebuildError::EmptyBackup {
                    backup: "/b".into(),
                },
                "/b: empty desktop",
            ),
            (RebuildError::Cancelled, "the walk was stopped"),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }
}
