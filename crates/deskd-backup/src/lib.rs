//! `deskd backup` and `deskd restore`: a consistent copy of a live desktop, with a manifest that
//! says what it holds, and putting such a copy back on its volume.
//!
//! * [`backup`] copies the desktop in one SQLite read snapshot ([`deskd_db::snapshot`]) while the
//!   server goes on writing, checks the copy (`integrity_check`, the same counts as the
//!   snapshot), syncs it and renames it into place, and writes the manifest last, so a backup
//!   with a manifest is always complete.
//! * [`verify`] checks a backup against its manifest (size, SHA-256, integrity, counts).
//! * [`restore`] puts a verified backup back: the volume's desktop is rebuilt from the backup's
//!   records and what is on the disk now ([`deskd_rebuild`] in repair mode, starting from the
//!   backup), so objects made, moved or deleted since the backup are right too, and the ID
//!   counter never goes back (IDs handed out after the backup are never handed out again).

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read as _, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use deskd_db::now_unix;
use deskd_db::snapshot::{check_copy, copy_snapshot, CopyInfo};
use deskd_db::Read as _;
use deskd_rebuild::{Difference, Mode, RebuildError, Report};
use rustix::fs::{AtFlags, FileType, Mode as FsMode, OFlags, RenameFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What names a manifest, beside its backup: `FILE` → `FILE.manifest.json`.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// The manifest's `kind`.
pub const MANIFEST_KIND: &str = "deskd-backup";
/// The manifest layout this deskd writes and reads.
pub const MANIFEST_VERSION: u32 = 1;
/// How far a restore moves the ID counter past the backup's when the volume's own desktop cannot
/// be read, so that IDs handed out after the backup (to objects since deleted, which no resource
/// file remembers) are not handed out again.
pub const DEFAULT_ID_GAP: u32 = 1 << 20;

/// Errors of backup, verify and restore.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Wrong arguments or a state the user must change (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The backup does not pass its checks.
    #[error("{0}")]
    Invalid(CheckFailure),
    /// The volume is served or being rebuilt.
    #[error("{0}")]
    Busy(String),
    /// The user may not read the volume's desktop file (a volume owner and a root-run deskd's
    /// 0600 desktop); `why` is [`deskd_volume::guard::unreadable_desktop`]'s reason.
    #[error(
        "{}: {why}; back it up as root (or as the desktop's owner)",
        desktop.display()
    )]
    Unreadable { desktop: PathBuf, why: String },
    /// The user may not read this volume's desktop: neither root nor the volume owner.
    #[error("{0}")]
    NotAdmin(deskd_volume::guard::AdminError),
    /// The volume's desktop is of a newer format than this deskd's: a copy or restore of it
    /// would lose what this deskd does not know. The cause is part of the message, not a
    /// `source` (printed with anyhow's `{:#}` it would be repeated).
    #[error("{}: {error}; {what} refuses it", desktop.display())]
    FormatTooNew {
        desktop: PathBuf,
        /// [`deskd_db::DbError::FormatTooNew`].
        error: deskd_db::DbError,
        /// The command that refused it (`deskd backup`, ...).
        what: String,
    },
    #[error("{path}: {source}")]
    Desktop {
        path: PathBuf,
        source: deskd_db::DbError,
    },
    #[error("{0}")]
    Rebuild(#[from] RebuildError),
    /// The desktop could not be exported from its database (the whole message).
    #[error("{0}")]
    Export(String),
    /// The volume is marked as served from a database ([`deskd_volume::BACKEND_XATTR`] on its
    /// root): a backup of its SQLite `.Desktop` would copy a stale file, a restore over it
    /// would put a desktop beside servers that go on handing out IDs from the database. The
    /// message says what to run instead; nothing was written.
    #[error("{0}")]
    InDatabase(String),
}

/// How a backup (or the copy a backup makes) fails its checks; every message starts with the
/// file it is about.
// The causes are part of the message and deliberately not a `source`: printed with anyhow's
// `{:#}` a source would be repeated after the message.
#[derive(Debug, thiserror::Error)]
pub enum CheckFailure {
    /// No manifest: the backup was interrupted (the manifest is written last) or is no backup.
    #[error(
        "{}: missing; {} is not a complete deskd backup (the manifest is written last)",
        .manifest.display(),
        .backup.display()
    )]
    ManifestMissing { manifest: PathBuf, backup: PathBuf },
    /// The manifest is not the JSON deskd writes.
    #[error("{}: not a deskd backup manifest: {error}", .manifest.display())]
    ManifestUnreadable {
        manifest: PathBuf,
        error: serde_json::Error,
    },
    /// A manifest of another kind, or of a version newer than this deskd reads.
    #[error(
        "{}: kind {kind:?} version {version}; this deskd reads {MANIFEST_KIND:?} up to version \
         {MANIFEST_VERSION}",
        .manifest.display()
    )]
    ManifestUnknown {
        manifest: PathBuf,
        kind: String,
        version: u32,
    },
    /// The backup's size is not the manifest's.
    #[error(
        "{}: {bytes} bytes, the manifest says {expected} (truncated or replaced)",
        .backup.display()
    )]
    Size {
        backup: PathBuf,
        bytes: u64,
        expected: u64,
    },
    /// The backup's SHA-256 is not the manifest's.
    #[error(
        "{}: SHA-256 {sha256} does not match the manifest's {expected} (the file was changed)",
        .backup.display()
    )]
    Digest {
        backup: PathBuf,
        sha256: String,
        expected: String,
    },
    /// SQLite's checks of the backup fail, or it is no deskd desktop.
    #[error("{}: {error}", .backup.display())]
    Check {
        backup: PathBuf,
        error: deskd_db::DbError,
    },
    /// The backup holds other objects or another identity than the manifest recorded.
    #[error("{}: holds {info:?}, the manifest says {expected:?}", .backup.display())]
    Contents {
        backup: PathBuf,
        info: Box<CopyInfo>,
        expected: Box<CopyInfo>,
    },
    /// The copy just written fails SQLite's checks.
    #[error("{}: the copy does not pass its check: {error}", .target.display())]
    CopyCheck {
        target: PathBuf,
        error: deskd_db::DbError,
    },
    /// The copy just written holds something else than the snapshot it was made from.
    #[error("{}: the copy holds {copied:?}, its snapshot held {snapshot:?}", .target.display())]
    CopyDiffers {
        target: PathBuf,
        copied: Box<CopyInfo>,
        snapshot: Box<CopyInfo>,
    },
    /// A restore forced past a failed verify, of a backup SQLite's checks refuse too.
    #[error("{}: {error}; not restored", .backup.display())]
    ForcedCheck {
        backup: PathBuf,
        error: deskd_db::DbError,
    },
    /// A restore refused because verify failed and `--force` was not given.
    #[error(
        "{0}; not restored (--force restores a backup that passes SQLite's integrity check anyway)"
    )]
    NotRestored(Box<CheckFailure>),
    /// The desktop a restore wrote cannot be opened again.
    #[error("{}: the restored desktop cannot be read back", .desktop.display())]
    ReadBack { desktop: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn db(path: &Path) -> impl FnOnce(deskd_db::DbError) -> BackupError + '_ {
    move |source| BackupError::Desktop {
        path: path.to_path_buf(),
        source,
    }
}

/// The manifest written beside every backup (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `deskd-backup`.
    pub kind: String,
    pub manifest_version: u32,
    /// The volume root the desktop belongs to.
    pub volume: String,
    /// The desktop file that was copied.
    pub desktop: String,
    /// The backup file's name (in the manifest's directory).
    pub file: String,
    pub bytes: u64,
    /// SHA-256 of the backup file, lower-case hex.
    pub sha256: String,
    /// Unix times: the copy started (its snapshot is from then) and the backup was complete.
    pub started: i64,
    pub finished: i64,
    pub deskd_version: String,
    /// What the desktop held, read in the copy's snapshot.
    #[serde(flatten)]
    pub desktop_info: CopyInfo,
}

/// The manifest path of a backup file.
pub fn manifest_path(backup: &Path) -> PathBuf {
    let mut s = backup.as_os_str().to_os_string();
    s.push(MANIFEST_SUFFIX);
    s.into()
}

/// Removes a temporary file unless [`TempFile::rename_to`] put it in place (errors, panics).
struct TempFile(Option<PathBuf>);

impl TempFile {
    /// Create `path` new (never through a link, never over an existing file), mode 0600.
    fn create(path: PathBuf) -> Result<(TempFile, File), BackupError> {
        let _ = std::fs::remove_file(&path);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io(&path))?;
        Ok((TempFile(Some(path)), file))
    }

    fn path(&self) -> &Path {
        self.0.as_deref().expect("temporary file kept already")
    }

    /// Rename into `target` and sync the directory.
    fn rename_to(mut self, target: &Path) -> Result<(), BackupError> {
        let temp = self.0.take().expect("temporary file kept already");
        if let Err(e) = std::fs::rename(&temp, target) {
            let _ = std::fs::remove_file(&temp);
            return Err(io(target)(e));
        }
        sync_dir(target)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn sync_dir(file: &Path) -> Result<(), BackupError> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Size and SHA-256 (hex) of a file.
fn digest(path: &Path) -> Result<(u64, String), BackupError> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((bytes, hex))
}

/// Where the backup goes: `dest` itself, or a new name in `dest` when it is a directory.
fn backup_target(root: &Path, dest: &Path, force: bool) -> Result<PathBuf, BackupError> {
    let target = if dest.is_dir() {
        let base = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".into());
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        // A name of our own making never replaces a backup: two volumes of the same name
        // backed up in the same second get -2, -3, ...
        let mut n = 1;
        loop {
            let name = match n {
                1 => format!("{base}-{stamp}.desktop"),
                _ => format!("{base}-{stamp}-{n}.desktop"),
            };
            let candidate = dest.join(name);
            if std::fs::symlink_metadata(&candidate).is_err() {
                return Ok(candidate);
            }
            n += 1;
        }
    } else {
        dest.to_path_buf()
    };
    if target.file_name().is_none() {
        return Err(BackupError::Usage(format!(
            "{}: not a file name",
            dest.display()
        )));
    }
    match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => Err(BackupError::Usage(format!(
            "{}: is a directory",
            target.display()
        ))),
        Ok(_) if !force => Err(BackupError::Usage(format!(
            "{}: exists; give another name, or --force to replace it",
            target.display()
        ))),
        _ => Ok(target),
    }
}

/// The canonical volume root and the path of its desktop.
fn volume_desktop(volume: &Path) -> Result<(PathBuf, PathBuf), BackupError> {
    let root = std::fs::canonicalize(volume).map_err(io(volume))?;
    if !root.is_dir() {
        return Err(BackupError::Usage(format!(
            "{}: not a directory",
            root.display()
        )));
    }
    let desktop = deskd_rebuild::desktop_path(&root)?;
    Ok((root, desktop))
}

/// Refuse, before anything is read, a user who may not read the volume's desktop (only root,
/// the volume owner and deskd's own user may), and a desktop of a newer format than this
/// deskd's (a copy or restore of it would lose what this deskd does not know).
fn refuse_unsafe(root: &Path, desktop: &Path, what: &str) -> Result<(), BackupError> {
    deskd_volume::guard::require_admin(root, desktop, what).map_err(BackupError::NotAdmin)?;
    match deskd_db::files::check_format(desktop) {
        Err(error @ deskd_db::DbError::FormatTooNew { .. }) => Err(BackupError::FormatTooNew {
            desktop: desktop.to_path_buf(),
            error,
            what: what.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Where a backup's records come from.
pub enum Source<'a> {
    /// The volume's SQLite desktop (`.Desktop`, or where its relocation link points), copied
    /// in one SQLite read snapshot.
    Desktop,
    /// A desktop of another back end (PostgreSQL), written out as a new SQLite desktop first.
    Export(&'a mut dyn Export),
}

/// A desktop that is not an SQLite file (PostgreSQL, issue 28), exported for a backup: the
/// backup is then made of the export exactly as of an SQLite desktop, so it has the same
/// format, is checked and verified alike and can be restored to either back end.
pub trait Export {
    /// What the manifest names as the backed-up desktop (no password).
    fn describe(&self) -> String;
    /// Write the volume's records as they stood in one consistent snapshot as a new SQLite
    /// desktop at `file` (which does not exist yet). The error is the whole message.
    fn export(&mut self, file: &Path) -> Result<(), String>;
}

/// Back up the desktop of `volume` into `dest` (a file name, or a directory to make a dated
/// name in) while the volume stays in use. `progress` gets (pages copied, pages in all).
/// Returns the backup's path and manifest.
pub fn backup(
    volume: &Path,
    dest: &Path,
    force: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(PathBuf, Manifest), BackupError> {
    backup_from(volume, &mut Source::Desktop, dest, force, progress)
}

/// [`backup`] of the desktop `source` names: the volume's SQLite desktop, or an export of
/// its desktop in PostgreSQL.
pub fn backup_from(
    volume: &Path,
    source: &mut Source<'_>,
    dest: &Path,
    force: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(PathBuf, Manifest), BackupError> {
    let (root, desktop) = volume_desktop(volume)?;
    match source {
        Source::Desktop => {
            refuse_unsafe(&root, &desktop, "deskd backup")?;
            // A volume marked as served from a database keeps at most a stale `.Desktop` (the
            // one `deskd migrate` left): backing that up would pass every check and hold old
            // records.
            if let Some(backend) = deskd_volume::desktop_backend(&root) {
                return Err(BackupError::InDatabase(format!(
                    "{}: this volume's desktop is in {backend} (xattr {} on its root), and a \
                     .Desktop there is stale: give the server's configuration with --config \
                     FILE (that of the deskd serve that serves it); nothing was written",
                    root.display(),
                    deskd_volume::BACKEND_XATTR
                )));
            }
            // A volume owner may back up, but not read the 0600 desktop a root-run deskd
            // made; say so rather than pass on SQLite's "unable to open database file".
            if let Some(why) = deskd_volume::guard::unreadable_desktop(&desktop) {
                return Err(BackupError::Unreadable { desktop, why });
            }
            if std::fs::metadata(&desktop).map(|m| m.len()).unwrap_or(0) == 0 {
                // Only a server of a desktop in PostgreSQL stamps the root with an identity.
                let hint = match deskd_volume::read_volume_identity(&root) {
                    Some(_) => {
                        " (the root carries the identity a volume served from PostgreSQL \
                         gets: give the server's configuration with --config to back it up \
                         from its database)"
                    }
                    None => "",
                };
                return Err(BackupError::Usage(format!(
                    "{}: the volume has no desktop ({}); nothing to back up{hint}",
                    root.display(),
                    desktop.display()
                )));
            }
        }
        Source::Export(_) => {
            deskd_volume::guard::require_admin(&root, &desktop, "deskd backup")
                .map_err(BackupError::NotAdmin)?;
        }
    }
    let target = backup_target(&root, dest, force)?;
    let name = target
        .file_name()
        .expect("checked by backup_target")
        .to_string_lossy()
        .into_owned();
    let dir = target.parent().unwrap_or(Path::new("."));
    let (temp, file) = TempFile::create(dir.join(format!(".{name}.partial")))?;
    drop(file);
    let started = now_unix();
    // An export is written beside the backup under a temporary name (removed, with its WAL
    // and shared-memory files, however this ends) and copied as a desktop would be.
    let mut exported = Exported(None);
    let (desktop, shown) = match source {
        Source::Desktop => (desktop.clone(), desktop.display().to_string()),
        Source::Export(export) => {
            let file = dir.join(format!(".{name}.export"));
            exported.remove_stale(&file)?;
            exported.0 = Some(file.clone());
            export.export(&file).map_err(BackupError::Export)?;
            (file, export.describe())
        }
    };
    let info = copy_snapshot(&desktop, temp.path(), progress).map_err(|e| match e {
        deskd_db::DbError::NoSpace(_) => BackupError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        },
        e => db(&desktop)(e),
    })?;
    crash_point("copied");
    // The check and the digest each read the whole copy; on two cores they overlap.
    let (checked, digested) = std::thread::scope(|s| {
        let digest = s.spawn(|| digest(temp.path()));
        let checked = check_copy(temp.path());
        (
            checked,
            digest.join().expect("the digest thread does not panic"),
        )
    });
    let copied = checked.map_err(|error| {
        BackupError::Invalid(CheckFailure::CopyCheck {
            target: target.to_path_buf(),
            error,
        })
    })?;
    if copied != info {
        return Err(BackupError::Invalid(CheckFailure::CopyDiffers {
            target: target.to_path_buf(),
            copied: Box::new(copied),
            snapshot: Box::new(info),
        }));
    }
    let (bytes, sha256) = digested?;
    File::open(temp.path())
        .and_then(|f| f.sync_all())
        .map_err(io(temp.path()))?;
    temp.rename_to(&target)?;
    crash_point("renamed");
    let manifest = Manifest {
        kind: MANIFEST_KIND.into(),
        manifest_version: MANIFEST_VERSION,
        volume: root.display().to_string(),
        desktop: shown,
        file: name,
        bytes,
        sha256,
        started,
        finished: now_unix(),
        deskd_version: env!("CARGO_PKG_VERSION").into(),
        desktop_info: info,
    };
    drop(exported);
    write_manifest(&target, &manifest)?;
    Ok((target, manifest))
}

/// The export a backup copies, removed with its WAL and shared-memory files when dropped.
struct Exported(Option<PathBuf>);

impl Exported {
    /// Remove what an interrupted backup of the same name left.
    fn remove_stale(&self, file: &Path) -> Result<(), BackupError> {
        for path in Self::files(file) {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    fn files(file: &Path) -> [PathBuf; 3] {
        [
            file.to_path_buf(),
            deskd_db::wal_path(file),
            deskd_db::shm_path(file),
        ]
    }
}

impl Drop for Exported {
    fn drop(&mut self) {
        if let Some(file) = self.0.take() {
            for path in Self::files(&file) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Test hook: `DESKD_BACKUP_CRASH_AFTER=<step>` aborts the process right after that step, so the
/// tests can show what a backup killed there leaves behind.
#[cfg(feature = "test-hooks")]
fn crash_point(step: &str) {
    if std::env::var("DESKD_BACKUP_CRASH_AFTER").is_ok_and(|s| s == step) {
        std::process::abort();
    }
}

/// Without the `test-hooks` feature the hook is compiled out (release binaries hold none).
#[cfg(not(feature = "test-hooks"))]
fn crash_point(_step: &str) {}

/// Test hook (`DESKD_TEST_HOLD_MANIFEST_UNTIL=<file>`): after a stream backup's copy is out and
/// before its manifest is written, wait until `<file>` exists, saying so on stderr first; a test
/// swaps the manifest's folder for a link (or creates the manifest) meanwhile.
#[cfg(feature = "test-hooks")]
fn hold_before_manifest() {
    if let Some(until) = std::env::var_os("DESKD_TEST_HOLD_MANIFEST_UNTIL").map(PathBuf::from) {
        eprintln!("test hook: manifest held until {} exists", until.display());
        while !until.exists() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// Without the `test-hooks` feature the hook is compiled out (release binaries hold none).
#[cfg(not(feature = "test-hooks"))]
fn hold_before_manifest() {}

/// Where a stream backup's manifest goes (`deskd backup VOL - --manifest FILE`).
#[derive(Debug, Clone)]
pub struct ManifestTarget {
    pub path: PathBuf,
    /// Replace an existing file.
    pub force: bool,
}

/// The folder of a checked [`ManifestTarget`], held open (never through a link) from the check
/// before the stream to the write after it: whatever is renamed or swapped for a link under the
/// manifest's path meanwhile, the manifest lands in the folder that was checked (review F5).
struct ManifestDir {
    dir: OwnedFd,
    name: OsString,
}

impl ManifestTarget {
    /// Refuse, before anything is copied, a manifest that could not be written at the end: a
    /// directory, or an existing file without `force`; open its folder for the write.
    fn check(&self) -> Result<ManifestDir, BackupError> {
        let Some(name) = self.path.file_name() else {
            return Err(BackupError::Usage(format!(
                "{}: not a file name",
                self.path.display()
            )));
        };
        let parent = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let dir = rustix::fs::open(
            parent,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            FsMode::empty(),
        )
        .map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR => BackupError::Usage(format!(
                "{}: not a folder (a link is not followed); give the manifest's real folder",
                parent.display()
            )),
            e => io(parent)(e.into()),
        })?;
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => Err(
                BackupError::Usage(format!("{}: is a directory", self.path.display())),
            ),
            Ok(_) if !self.force => Err(BackupError::Usage(format!(
                "{}: exists; give another name, or --force to replace it",
                self.path.display()
            ))),
            _ => Ok(ManifestDir {
                dir,
                name: name.to_owned(),
            }),
        }
    }

    /// Write `manifest` into the folder opened by [`check`](Self::check): a new file (mode
    /// 0600, a random name, `O_EXCL`, never through a link) synced, renamed to the manifest's
    /// name — over an existing file only with `force` (`RENAME_NOREPLACE` otherwise) — and the
    /// folder synced. A file that appeared under the name during the stream is left alone and
    /// the manifest kept under its temporary name, which the error gives.
    fn write(&self, at: &ManifestDir, manifest: &Manifest) -> Result<(), BackupError> {
        let mut text = serde_json::to_string_pretty(manifest).expect("a manifest serialises");
        text.push('\n');
        let folder = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tries = 0;
        let (temp, file) = loop {
            let mut random = [0u8; 8];
            getrandom::getrandom(&mut random)
                .map_err(|e| io(folder)(std::io::Error::other(e.to_string())))?;
            let mut temp = OsString::from(".");
            temp.push(&at.name);
            temp.push(format!(".{:016x}.partial", u64::from_le_bytes(random)));
            match rustix::fs::openat(
                &at.dir,
                &temp,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                FsMode::from_raw_mode(0o600),
            ) {
                Ok(fd) => break (temp, File::from(fd)),
                Err(Errno::EXIST) if tries < 16 => tries += 1,
                Err(e) => return Err(io(&folder.join(&temp))(e.into())),
            }
        };
        let temp_path = folder.join(&temp);
        let written = (&file)
            .write_all(text.as_bytes())
            .and_then(|_| file.sync_all());
        drop(file);
        if let Err(e) = written {
            let _ = rustix::fs::unlinkat(&at.dir, &temp, AtFlags::empty());
            return Err(io(&temp_path)(e));
        }
        let renamed = if self.force {
            rustix::fs::renameat(&at.dir, &temp, &at.dir, &at.name)
        } else {
            rustix::fs::renameat_with(&at.dir, &temp, &at.dir, &at.name, RenameFlags::NOREPLACE)
        };
        match renamed {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                return Err(BackupError::Usage(format!(
                    "{}: appeared while the backup was streamed and is left as it is; the \
                     stream was sent and its manifest is in {}: rename it (or run again with \
                     --force)",
                    self.path.display(),
                    temp_path.display()
                )))
            }
            Err(e) => {
                let _ = rustix::fs::unlinkat(&at.dir, &temp, AtFlags::empty());
                return Err(io(&self.path)(e.into()));
            }
        }
        rustix::fs::fsync(&at.dir).map_err(|e| io(folder)(e.into()))
    }

    /// The backup's name as the manifest records it: `NAME` for a manifest called
    /// `NAME.manifest.json` (where `deskd verify NAME` looks), else `-` (standard output).
    fn backup_name(&self) -> String {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(MANIFEST_SUFFIX))
            .filter(|n| !n.is_empty())
            .unwrap_or("-")
            .to_owned()
    }
}

/// Back up the desktop of `volume` and write the checked copy to `out` (standard output, for a
/// backup tool that reads a stream: `restic backup --stdin-from-command -- deskd backup VOL -`).
/// The copy is made and checked in a private directory under `$TMPDIR` first, so nothing reaches
/// `out` unless the whole backup succeeded; the directory is removed afterwards. With `manifest`,
/// the manifest is written there once the whole copy is out (checked before anything is copied).
pub fn backup_to_stream(
    volume: &Path,
    out: &mut dyn Write,
    manifest: Option<&ManifestTarget>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Manifest, BackupError> {
    backup_to_stream_from(volume, &mut Source::Desktop, out, manifest, progress)
}

/// [`backup_to_stream`] of the desktop `source` names.
pub fn backup_to_stream_from(
    volume: &Path,
    source: &mut Source<'_>,
    out: &mut dyn Write,
    manifest: Option<&ManifestTarget>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Manifest, BackupError> {
    let manifest = match manifest {
        Some(target) => Some((target, target.check()?)),
        None => None,
    };
    let base = std::env::temp_dir();
    let dir = base.join(format!(
        ".deskd-backup-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(io(&dir))?;
    let result = (|| {
        let (path, mut written) =
            backup_from(volume, source, &dir.join("desktop"), false, progress)?;
        let mut file = File::open(&path).map_err(io(&path))?;
        std::io::copy(&mut file, out)
            .and_then(|_| out.flush())
            .map_err(|e| io(Path::new("standard output"))(e))?;
        match &manifest {
            Some((target, at)) => {
                written.file = target.backup_name();
                hold_before_manifest();
                target.write(at, &written)?;
            }
            None => written.file = "-".to_owned(),
        }
        Ok(written)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Write the manifest of `backup` atomically (temporary name, sync, rename, directory sync).
fn write_manifest(backup: &Path, manifest: &Manifest) -> Result<(), BackupError> {
    write_manifest_file(&manifest_path(backup), manifest)
}

/// Write `manifest` to `path` atomically: a new file (mode 0600, never through a link) under a
/// temporary name beside it, synced, renamed over `path`, the directory synced.
fn write_manifest_file(path: &Path, manifest: &Manifest) -> Result<(), BackupError> {
    let name = path
        .file_name()
        .expect("a backup path has a file name")
        .to_string_lossy()
        .into_owned();
    let (temp, mut file) = TempFile::create(
        path.parent()
            .unwrap_or(Path::new("."))
            .join(format!(".{name}.partial")),
    )?;
    let mut text = serde_json::to_string_pretty(manifest).expect("a manifest serialises");
    text.push('\n');
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(io(temp.path()))?;
    drop(file);
    temp.rename_to(path)
}

/// Check a backup against its manifest: kind and version, size, SHA-256, SQLite integrity, and
/// the counts the manifest recorded. Changes nothing.
pub fn verify(backup: &Path) -> Result<Manifest, BackupError> {
    verify_with(backup, &manifest_path(backup))
}

/// [`verify`] against the manifest at `manifest` (one written elsewhere, as for a backup to
/// standard output with `--manifest`).
pub fn verify_with(backup: &Path, manifest: &Path) -> Result<Manifest, BackupError> {
    let path = manifest.to_path_buf();
    let text = match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BackupError::Invalid(CheckFailure::ManifestMissing {
                manifest: path,
                backup: backup.to_path_buf(),
            }))
        }
        other => other.map_err(io(&path))?,
    };
    let manifest: Manifest = serde_json::from_str(&text).map_err(|error| {
        BackupError::Invalid(CheckFailure::ManifestUnreadable {
            manifest: path.clone(),
            error,
        })
    })?;
    if manifest.kind != MANIFEST_KIND || manifest.manifest_version > MANIFEST_VERSION {
        return Err(BackupError::Invalid(CheckFailure::ManifestUnknown {
            manifest: path,
            kind: manifest.kind,
            version: manifest.manifest_version,
        }));
    }
    let (bytes, sha256) = digest(backup)?;
    if bytes != manifest.bytes {
        return Err(BackupError::Invalid(CheckFailure::Size {
            backup: backup.to_path_buf(),
            bytes,
            expected: manifest.bytes,
        }));
    }
    if sha256 != manifest.sha256 {
        return Err(BackupError::Invalid(CheckFailure::Digest {
            backup: backup.to_path_buf(),
            sha256,
            expected: manifest.sha256,
        }));
    }
    let info = check_copy(backup).map_err(|error| {
        BackupError::Invalid(CheckFailure::Check {
            backup: backup.to_path_buf(),
            error,
        })
    })?;
    if info != manifest.desktop_info {
        return Err(BackupError::Invalid(CheckFailure::Contents {
            backup: backup.to_path_buf(),
            info: Box::new(info),
            expected: Box::new(manifest.desktop_info),
        }));
    }
    Ok(manifest)
}

/// Options of a restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub threads: usize,
    /// Restore a backup whose manifest is missing or does not match it, or that was made of
    /// another desktop than the volume's; skip the free-space check. The copy must still pass
    /// SQLite's integrity check.
    pub force: bool,
    /// How far past the backup's counter IDs start when the volume's own desktop cannot be read.
    pub id_gap: u32,
    /// Restore a volume inside or around another volume's root (`--nested`).
    pub nested: bool,
    /// Restore a volume whose root every user may write (`--world-writable`).
    pub world_writable: bool,
    /// Accept every ID claim on the disk, whoever wrote it (`--trust-ids`).
    pub trust_ids: bool,
    /// The backup's manifest, when it is not beside the backup (`--manifest`).
    pub manifest: Option<PathBuf>,
    /// Restore over a volume marked as served from a database (`--leave-postgresql`): the
    /// admin says every server of it is stopped and no longer configured with `backend`.
    pub leave_postgresql: bool,
    /// With `leave_postgresql`: the ID counter the volume's database holds for it (read under
    /// its serving lock, `--config`). IDs continue after the highest of it, the backup's and
    /// the old desktop's: the database handed out IDs the backup and the stale `.Desktop`
    /// never saw.
    pub database_last_id: Option<u32>,
    /// With `leave_postgresql` and no `database_last_id`: the admin accepts the backup's
    /// counter (`--ids-from-backup`), and so that IDs the database handed out after the
    /// backup may be handed out again. Without it such a restore is refused.
    pub ids_from_backup: bool,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub backup: String,
    /// The manifest, when the backup had a valid one.
    pub manifest: Option<Manifest>,
    /// The ID counter of the desktop the restore replaced, when it could be read.
    pub replaced_last_id: Option<u32>,
    /// The ID counter the restore asked for at least.
    pub last_id_at_least: u32,
    /// The restored desktop's ID counter: new IDs start after it.
    pub last_id: u32,
    /// The repair that brought the backup up to the disk.
    pub rebuild: Report,
}

/// Put the backup `backup` back as the desktop of `volume` (not served: the desktop is locked
/// as for an offline rebuild), then bring it up to what is on the disk now.
pub fn restore(
    backup: &Path,
    volume: &Path,
    options: &RestoreOptions,
    on_progress: &(dyn Fn(u64) + Sync),
    on_difference: &mut dyn FnMut(&Difference),
) -> Result<RestoreReport, BackupError> {
    // Who may, and over what, before the backup or the desktop is read.
    let (root, desktop) = volume_desktop(volume)?;
    refuse_unsafe(&root, &desktop, "deskd restore")?;
    // A volume served from a database: a restored SQLite desktop beside servers that go on
    // handing out IDs from the database would give IDs twice (the newcomer review of stop
    // 39). The admin says the servers are stopped.
    let marked = deskd_volume::desktop_backend(&root);
    if let (Some(backend), false) = (&marked, options.leave_postgresql) {
        return Err(BackupError::InDatabase(format!(
            "{}: this volume's desktop is in {backend} (xattr {} on its root). Stop every \
             deskd serve of the volume, restore with --leave-postgresql --config FILE (their \
             configuration, still naming the database: the restore checks that no server \
             serves the volume) to make the restored SQLite desktop the volume's, then take \
             `backend` out of their configuration (or restore elsewhere and move it into a \
             database with deskd migrate); nothing was changed",
            root.display(),
            deskd_volume::BACKEND_XATTR
        )));
    }
    let rebuild_options = deskd_rebuild::Options {
        start_from: Some(backup.to_path_buf()),
        nested: options.nested,
        world_writable: options.world_writable,
        ..deskd_rebuild::Options::new(Mode::Repair, options.threads, options.force)
    };
    deskd_rebuild::refuse_unsafe(&root, &desktop, &rebuild_options)?;
    let checked = match &options.manifest {
        Some(path) => verify_with(backup, path),
        None => verify(backup),
    };
    let manifest = match checked {
        Ok(m) => Some(m),
        Err(BackupError::Invalid(why)) if options.force => {
            tracing::warn!("{why}; restoring anyway (--force)");
            None
        }
        Err(BackupError::Invalid(why)) => {
            return Err(BackupError::Invalid(CheckFailure::NotRestored(Box::new(
                why,
            ))))
        }
        Err(e) => return Err(e),
    };
    let info = match &manifest {
        Some(m) => m.desktop_info.clone(),
        None => check_copy(backup).map_err(|error| {
            BackupError::Invalid(CheckFailure::ForcedCheck {
                backup: backup.to_path_buf(),
                error,
            })
        })?,
    };
    let current = read_current(&desktop);
    // The note that the volume left its database, in the desktop being replaced: kept in the
    // restored one (a backup from before the move-out has none, and a server still configured
    // with `backend` then served the database's stale copy again).
    let current_left = left_database_of(&desktop);
    if let Some((uuid, _)) = current {
        if uuid != info.volume_uuid && !options.force {
            return Err(BackupError::Usage(format!(
                "{}: the backup is of another desktop (volume_uuid {}) than this volume's ({uuid}); --force restores it anyway",
                backup.display(),
                info.volume_uuid
            )));
        }
    }
    // A volume served from a database: its `.Desktop` (if any) is the stale one `deskd
    // migrate` left behind, so its counter, like the backup's, misses every ID the database
    // handed out since (the newcomer review of stop 41). IDs are never given twice: the
    // database's counter counts, and without it the admin must accept the risk by name.
    let known = current.map_or(info.last_id, |(_, last)| last.max(info.last_id));
    if let (Some(backend), None, false) =
        (&marked, options.database_last_id, options.ids_from_backup)
    {
        return Err(BackupError::InDatabase(format!(
            "{}: the volume's ID counter is in its database ({backend}), which was not read: \
             the backup's counter is {} and the old desktop's {}, so IDs the database handed \
             out after {known} (to objects since deleted, or named by aliases) could be handed \
             out again. Give --config FILE with the servers' configuration that names the \
             volume's database (from before `backend` was taken out) to continue after its \
             counter, or --ids-from-backup to accept the backup's; nothing was changed",
            root.display(),
            info.last_id,
            current.map_or("unknown (none)".to_owned(), |(_, last)| last.to_string()),
        )));
    }
    let last_id_at_least = match (current, options.database_last_id) {
        (_, Some(db)) => known.max(db),
        (Some(_), None) => known,
        (None, None) => info
            .last_id
            .saturating_add(options.id_gap)
            .min(deskd_db::LAST_USABLE_ID),
    };
    let rebuild_options = deskd_rebuild::Options {
        min_last_id: last_id_at_least,
        trust_ids: options.trust_ids,
        ..rebuild_options
    };
    let report = match deskd_rebuild::rebuild(&root, &rebuild_options, on_progress, on_difference)
    {
        Err(RebuildError::Busy { .. }) => {
            return Err(BackupError::Busy(format!(
                "{}: the desktop is open by a running deskd serve (or a rebuild); stop serving this volume, restore, then serve it again",
                root.display()
            )))
        }
        other => other?,
    };
    // Noted in the restored desktop itself before the root's mark goes: a server still
    // configured with `backend` that starts later refuses the database's stale copy by this
    // note also when the database could not record the move-out (`--ids-from-backup` with
    // the database down: it served that copy and handed out the restored desktop's IDs again).
    let left = match &marked {
        Some(_) => Some(deskd_db::now_unix()),
        None => current_left,
    };
    if left.is_some() {
        deskd_db::note_left_database_at(&desktop, left).map_err(|e| {
            BackupError::InDatabase(format!(
                "{}: the backup was restored into {}, but the note that the volume left its \
                 database could not be written there ({e}){}: run the restore again",
                root.display(),
                desktop.display(),
                if marked.is_some() {
                    "; the root is still marked as served from the database"
                } else {
                    ""
                }
            ))
        })?;
    }
    // And on the root, beside the mark: read also where the desktop is not (a desktop kept on
    // this host's own disk, whose folder another host has empty: the hostile review of stop 43).
    if let (Some(_), Some(when)) = (&marked, left) {
        deskd_volume::note_root_left_database(&root, Some(when)).map_err(|e| {
            BackupError::InDatabase(format!(
                "{}: the backup was restored into {}, but the root's note that the volume left \
                 its database ({}) could not be written ({e}); the root is still marked as \
                 served from the database: run the restore again",
                root.display(),
                desktop.display(),
                deskd_volume::LEFT_DATABASE_XATTR
            ))
        })?;
    }
    // The restored SQLite desktop is the volume's now: the offline tools may use it, and a
    // `deskd migrate --to` can move it into a database again.
    if let Err(e) = deskd_volume::mark_desktop_in_postgresql(&root, false) {
        tracing::warn!(
            "{}: the mark that the desktop is in PostgreSQL could not be removed: {e}",
            root.display()
        );
    }
    let (_, last_id) = read_current(&desktop).ok_or_else(|| {
        BackupError::Invalid(CheckFailure::ReadBack {
            desktop: desktop.clone(),
        })
    })?;
    Ok(RestoreReport {
        backup: backup.display().to_string(),
        manifest,
        replaced_last_id: current.map(|(_, last)| last),
        last_id_at_least,
        last_id,
        rebuild: report,
    })
}

/// The desktop's note that its volume left its database ([`deskd_db::LEFT_DATABASE`]), when
/// it can be read.
fn left_database_of(desktop: &Path) -> Option<i64> {
    if std::fs::metadata(desktop).map(|m| m.len()).unwrap_or(0) == 0 {
        return None;
    }
    let reader = deskd_db::Reader::open(desktop).ok()?;
    reader.meta(deskd_db::LEFT_DATABASE).ok()?
}

/// The volume_uuid and ID counter of the desktop at `desktop`, when it can be read.
fn read_current(desktop: &Path) -> Option<(i64, u32)> {
    if std::fs::metadata(desktop).map(|m| m.len()).unwrap_or(0) == 0 {
        return None;
    }
    let reader = deskd_db::Reader::open(desktop).ok()?;
    reader.begin_snapshot().ok()?;
    let uuid = reader.meta("volume_uuid").ok()??;
    let last = reader.meta("last_id").ok()??;
    Some((uuid, u32::try_from(last).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_failures_say_which_file_and_what_to_do() {
        let size = CheckFailure::Size {
            backup: "/b/v.desktop".into(),
            bytes: 10,
            expected: 12,
        };
        assert_eq!(
            size.to_string(),
            "/b/v.desktop: 10 bytes, the manifest says 12 (truncated or replaced)"
        );
        assert_eq!(
            CheckFailure::NotRestored(Box::new(size)).to_string(),
            "/b/v.desktop: 10 bytes, the manifest says 12 (truncated or replaced); not restored \
             (--force restores a backup that passes SQLite's integrity check anyway)"
        );
        let unknown = CheckFailure::ManifestUnknown {
            manifest: "/b/v.desktop.manifest".into(),
            kind: "other".into(),
            version: 9,
        };
        assert_eq!(
            unknown.to_string(),
            format!(
                "/b/v.desktop.manifest: kind \"other\" version 9; this deskd reads \
                 {MANIFEST_KIND:?} up to version {MANIFEST_VERSION}"
            )
        );
        let missing = BackupError::Invalid(CheckFailure::ManifestMissing {
            manifest: "/b/v.desktop.manifest".into(),
            backup: "/b/v.desktop".into(),
        });
        assert_eq!(
            missing.to_string(),
            "/b/v.desktop.manifest: missing; /b/v.desktop is not a complete deskd backup \
             (the manifest is written last)"
        );
    }

    /// A library caller (not only the CLI) gets the refusals for a volume marked as served
    /// from a database: a backup of its (stale) `.Desktop`, a restore without
    /// `leave_postgresql`. Nothing is written.
    #[test]
    fn a_volume_marked_as_served_from_a_database_is_refused_here() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("vol");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join(".Desktop"), b"stale").unwrap();
        if deskd_volume::mark_desktop_in_postgresql(&root, true).is_err() {
            // No user xattrs on this file system: nothing to mark.
            assert!(std::env::var_os("CI").is_none(), "no user xattrs under CI");
            eprintln!("skipped: no user xattrs here");
            return;
        }
        let dest = d.path().join("out.desktop");
        let refused = backup(&root, &dest, false, &mut |_, _| {}).unwrap_err();
        assert!(matches!(refused, BackupError::InDatabase(_)), "{refused}");
        assert!(refused.to_string().contains("--config"), "{refused}");
        assert!(!dest.exists());
        let options = RestoreOptions {
            threads: 1,
            force: false,
            id_gap: DEFAULT_ID_GAP,
            nested: false,
            world_writable: false,
            trust_ids: false,
            manifest: None,
            leave_postgresql: false,
            database_last_id: None,
            ids_from_backup: false,
        };
        let refused = restore(&dest, &root, &options, &|_| {}, &mut |_| {}).unwrap_err();
        assert!(matches!(refused, BackupError::InDatabase(_)), "{refused}");
        assert!(
            refused.to_string().contains("--leave-postgresql"),
            "{refused}"
        );
        assert_eq!(std::fs::read(root.join(".Desktop")).unwrap(), b"stale");
    }

    #[test]
    fn a_name_of_our_making_never_replaces_a_backup() {
        let d = tempfile::tempdir().unwrap();
        let root = Path::new("/srv/public");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..5 {
            // --force replaces only a name the user gave.
            let t = backup_target(root, d.path(), true).unwrap();
            assert!(!t.exists(), "{}", t.display());
            let name = t.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                name.starts_with("public-") && name.ends_with(".desktop"),
                "{name}"
            );
            std::fs::write(&t, b"taken").unwrap();
            assert!(seen.insert(t));
        }
        let given = d.path().join("given.desktop");
        std::fs::write(&given, b"old").unwrap();
        assert!(matches!(
            backup_target(root, &given, false),
            Err(BackupError::Usage(_))
        ));
        assert_eq!(backup_target(root, &given, true).unwrap(), given);
    }
}
