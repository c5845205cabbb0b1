//! fileset: checkpoint copies of a set of files between a permanent directory (on disk) and a
//! working directory (usually tmpfs), guarded by a check file with a CRC — the QNX QDB utility,
//! made crash-atomic.
//!
//! * [`checkfile`]: the check-file formats (version 1 = the QNX layout, version 2 = 64-bit
//!   sizes, nanosecond times, paths, SHA-256).
//! * [`copy`]: kernel-side copying with a read/write fallback, and `O_DIRECT` writes of
//!   spliced pages for save.
//! * [`readahead`]: `O_DIRECT` reads on a thread of their own for load.
//! * [`load`], [`save`], [`test`](fn@test): the three commands.
//!
//! **How save stays atomic.** Changed files are written next to their final names under
//! temporary names and fsynced; then the new check file is written to `<check>.new` and fsynced
//! (the *intent*); then the files are renamed into place and `<check>.new` is renamed to
//! `<check>`, with the directory fsynced. Whoever next opens the directory ([`recover`]) finishes
//! an interrupted save whose intent is complete and valid (roll forward), and otherwise deletes
//! the temporary files and the broken intent (roll back). Old data are only replaced after the
//! intent is durable, so a crash at any instant leaves the complete old set or the complete new
//! set. `docs/fileset.md` has the details.

#![forbid(unsafe_code)]

pub mod checkfile;
pub mod copy;
pub mod readahead;

use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use checkfile::{CheckError, CheckFile, Entry};
use sha2::{Digest, Sha256};

/// The default check-file name.
pub const DEFAULT_CHECK_NAME: &str = "_FILESET_";
/// Suffix of fileset's temporary files.
pub const TEMP_SUFFIX: &str = ".fileset-tmp";
/// Suffix of the check file written by a save that has not finished.
pub const INTENT_SUFFIX: &str = ".new";
/// Most `-p` patterns.
pub const MAX_PATTERNS: usize = 16;

/// Everything that can go wrong, each with its exit status (see [`FilesetError::exit_code`]).
#[derive(Debug, thiserror::Error)]
pub enum FilesetError {
    #[error("{0}: check file missing")]
    MissingCheck(PathBuf),
    #[error("{0}: {1}")]
    BadCheck(PathBuf, CheckError),
    #[error("{0}: file in the set is missing")]
    MissingFile(PathBuf),
    #[error("{path}: {what}")]
    Mismatch { path: PathBuf, what: String },
    #[error("{0}")]
    Format(CheckError),
    #[error("{0}: contents differ from the SHA-256 in the check file")]
    Digest(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(#[from] UsageError),
}

/// Options no command can work with (exit status 64), found before anything is touched.
// The glob error is part of the message and deliberately not a `source`: printed with
// anyhow's `{:#}` a source would be repeated after the message.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// A `-p` pattern that does not compile.
    #[error("pattern {pattern:?}: {error}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// Why glob refuses it.
        error: glob::PatternError,
    },
    /// More than [`MAX_PATTERNS`] `-p` patterns (the QNX tool's limit).
    #[error("at most {MAX_PATTERNS} -p patterns")]
    TooManyPatterns,
    /// A check-file name that is not a plain name in the set's directory: `-c /etc/x` would
    /// make a save replace `/etc/x`, `-c sub/x` or `..` would fail halfway.
    #[error(
        "check-file name {0:?}: must be a file name in the set's directory \
         (no '/', not . or .., at most {max} bytes, not ending in {TEMP_SUFFIX})",
        max = 255 - INTENT_SUFFIX.len()
    )]
    CheckName(String),
    /// A command that copies between the directories was given only one.
    #[error("{0} needs PERMDIR and TMPDIR")]
    NoTmpdir(&'static str),
}

impl FilesetError {
    /// Exit status: 2 check file missing, 3 check file bad (CRC, version, malformed), 4 a file
    /// of the set missing, 5 a size or mtime mismatch, 6 a file the set cannot hold, 7 a
    /// SHA-256 mismatch, 1 an I/O error, 64 a usage error.
    pub fn exit_code(&self) -> u8 {
        match self {
            FilesetError::MissingCheck(_) => 2,
            FilesetError::BadCheck(..) => 3,
            FilesetError::MissingFile(_) => 4,
            FilesetError::Mismatch { .. } => 5,
            FilesetError::Format(_) => 6,
            FilesetError::Digest(_) => 7,
            FilesetError::Io { .. } => 1,
            FilesetError::Usage(_) => 64,
        }
    }
}

type Result<T> = std::result::Result<T, FilesetError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FilesetError + '_ {
    move |source| FilesetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Options shared by the commands.
#[derive(Debug, Clone)]
pub struct Options {
    pub check_name: String,
    /// `-m`: create missing directories.
    pub make_dirs: bool,
    /// `-p`: name patterns for a new set (default `*`).
    pub patterns: Vec<String>,
    /// `-v` count.
    pub verbose: u8,
    /// `-x`: save only files that changed.
    pub only_changed: bool,
    /// `-t`: modification time given to saved files.
    pub save_time: Option<i64>,
    /// `-P`: permission bits of saved files.
    pub perms: Option<u32>,
    /// `-6`: no transfer crosses a 64 KiB boundary.
    pub boundary_64k: bool,
    /// Check-file format of a new set (1 or 2).
    pub format: u32,
    /// `-b`: where `load` goes when the permanent directory fails.
    pub backup: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            check_name: DEFAULT_CHECK_NAME.into(),
            make_dirs: false,
            patterns: Vec::new(),
            verbose: 0,
            only_changed: false,
            save_time: None,
            perms: None,
            boundary_64k: false,
            format: 1,
            backup: None,
        }
    }
}

impl Options {
    /// The `-p` patterns (`*` when none), compiled.
    fn compiled_patterns(&self) -> Result<Vec<glob::Pattern>> {
        if self.patterns.is_empty() {
            return Ok(vec![glob::Pattern::new("*").expect("valid")]);
        }
        self.patterns
            .iter()
            .map(|p| {
                glob::Pattern::new(p).map_err(|error| {
                    FilesetError::from(UsageError::Pattern {
                        pattern: p.clone(),
                        error,
                    })
                })
            })
            .collect()
    }

    /// Refuse options no command can work with: a `-p` pattern that does not compile, more
    /// than [`MAX_PATTERNS`] of them, or a check-file name that is not a plain name in the
    /// set's directory (`-c /etc/x` would make a save replace `/etc/x`; `-c sub/x` or `..`
    /// would fail halfway).
    pub fn validate(&self) -> Result<()> {
        if self.patterns.len() > MAX_PATTERNS {
            return Err(UsageError::TooManyPatterns.into());
        }
        self.compiled_patterns()?;
        let name = self.check_name.as_str();
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\0')
            || name.ends_with(TEMP_SUFFIX)
            || name.len() + INTENT_SUFFIX.len() > 255
        {
            return Err(UsageError::CheckName(name.to_string()).into());
        }
        Ok(())
    }

    /// Print a progress line at verbosity `level` and above. A reader that went away (`-v |
    /// head`) must not stop a save or load halfway, so write errors are ignored.
    pub fn say(&self, level: u8, text: impl FnOnce() -> String) {
        if self.verbose >= level {
            let _ = writeln!(std::io::stdout().lock(), "{}", text());
        }
    }
}

/// The testing hook: `FILESET_CRASH_AFTER=K` aborts the process right after save step K, so
/// tests can stop a save at every point. Steps are numbered from 1.
struct CrashHook {
    after: Option<u64>,
    step: u64,
}

impl CrashHook {
    fn from_env() -> CrashHook {
        // Compiled only with the `test-hooks` feature: release binaries hold no hook.
        #[cfg(feature = "test-hooks")]
        let after = std::env::var("FILESET_CRASH_AFTER")
            .ok()
            .and_then(|v| v.parse().ok());
        #[cfg(not(feature = "test-hooks"))]
        let after = None;
        CrashHook { after, step: 0 }
    }

    fn step(&mut self) {
        self.step += 1;
        if self.after == Some(self.step) {
            std::process::abort();
        }
    }
}

/// `dir/name` for a `/`-separated relative name (format 2's subdirectories), refusing a
/// symbolic link in place of any directory on the way: a link planted as `tmpdir/sub` must
/// not send `load` writing, or `save` reading, outside the set's directories. The last
/// component is the caller's to check (it is opened without following links). A component
/// that does not exist yet is fine: load and save make it.
fn join(dir: &Path, name: &str) -> Result<PathBuf> {
    let mut p = dir.to_path_buf();
    let mut parts = name.split('/').peekable();
    while let Some(part) = parts.next() {
        p.push(part);
        if parts.peek().is_some()
            && fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink())
        {
            return Err(FilesetError::Mismatch {
                path: p,
                what: "a symbolic link where a directory of the set belongs".into(),
            });
        }
    }
    Ok(p)
}

/// The temporary name next to `final_path`: `.NAME.fileset-tmp`.
fn temp_path(final_path: &Path) -> PathBuf {
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    final_path.with_file_name(format!(".{name}{TEMP_SUFFIX}"))
}

fn intent_path(dir: &Path, opts: &Options) -> PathBuf {
    dir.join(format!("{}{INTENT_SUFFIX}", opts.check_name))
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Set a file's times to (sec, nsec) for both access and modification.
fn set_mtime(file: &File, sec: i64, nsec: u32, path: &Path) -> Result<()> {
    use rustix::fs::{Timespec, Timestamps};
    let time = Timespec {
        tv_sec: sec as _,
        tv_nsec: nsec as _,
    };
    let times = Timestamps {
        last_access: time,
        last_modification: time,
    };
    rustix::fs::futimens(file, &times).map_err(|e| io_err(path)(e.into()))
}

fn read_check(path: &Path) -> Result<CheckFile> {
    let bad = |e| FilesetError::BadCheck(path.to_path_buf(), e);
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FilesetError::MissingCheck(path.to_path_buf()))
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut bytes = Vec::new();
    let mut header = [0u8; checkfile::HEADER_LEN];
    if len >= header.len() as u64 {
        file.read_exact(&mut header).map_err(io_err(path))?;
        if len > checkfile::longest_for(&header) {
            // Longer than any check file with this header: judged by streaming its CRC,
            // never held in memory.
            let mut crc = crc32fast::Hasher::new();
            crc.update(&header[4..]);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                match file.read(&mut buf).map_err(io_err(path))? {
                    0 => break,
                    n => crc.update(&buf[..n]),
                }
            }
            return Err(bad(checkfile::judge_overlong(&header, len, crc.finalize())));
        }
        bytes.reserve_exact(len as usize);
        bytes.extend_from_slice(&header);
    }
    file.read_to_end(&mut bytes).map_err(io_err(path))?;
    CheckFile::decode(&bytes).map_err(bad)
}

fn sha256_of(path: &Path) -> Result<[u8; 32]> {
    let mut f = copy::open_source(path, 0).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

/// What a directory entry that is not a regular file is, for messages.
fn kind_of(ft: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

/// Check that `path` is the file `e` describes (size and mtime; SHA-256 too when asked).
fn verify_file(path: &Path, e: &Entry, version: u32, hash: bool) -> Result<fs::Metadata> {
    let m = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(FilesetError::MissingFile(path.to_path_buf()))
        }
        Err(err) => return Err(io_err(path)(err)),
    };
    let mismatch = |what: String| {
        Err(FilesetError::Mismatch {
            path: path.to_path_buf(),
            what,
        })
    };
    if !m.is_file() {
        return mismatch(format!("not a regular file ({})", kind_of(&m.file_type())));
    }
    if m.len() != e.size {
        return mismatch(format!(
            "size {} differs from the check file's {}",
            m.len(),
            e.size
        ));
    }
    let nsec_differs = version >= 2 && m.mtime_nsec() as u32 != e.mtime_nsec;
    if m.mtime() != e.mtime_sec || nsec_differs {
        return mismatch(format!(
            "modification time {}.{:09} differs from the check file's {}.{:09}",
            m.mtime(),
            m.mtime_nsec(),
            e.mtime_sec,
            e.mtime_nsec
        ));
    }
    if hash && version >= 2 && sha256_of(path)? != e.sha256 {
        return Err(FilesetError::Digest(path.to_path_buf()));
    }
    Ok(m)
}

/// Where each entry of an unfinished save's intent is now: its temporary name if that is
/// there and right, else its final name if that is right. `None` when the intent cannot be
/// completed (it must be rolled back).
fn intent_locations(dir: &Path, intent: &CheckFile) -> Option<Vec<(PathBuf, PathBuf)>> {
    let mut out = Vec::new();
    for e in &intent.entries {
        // A link on the way makes the intent unusable: it is rolled back.
        let final_path = join(dir, &e.name).ok()?;
        let temp = temp_path(&final_path);
        if verify_file(&temp, e, intent.version, false).is_ok() {
            out.push((temp, final_path));
        } else if verify_file(&final_path, e, intent.version, false).is_ok() {
            out.push((final_path.clone(), final_path));
        } else {
            return None;
        }
    }
    Some(out)
}

fn remove_temps(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let ft = entry.file_type().map_err(io_err(&path))?;
        if ft.is_dir() {
            remove_temps(&path)?;
        } else if name.to_string_lossy().ends_with(TEMP_SUFFIX) {
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// An advisory `flock` on a set's directory, held while a command works on it: a save
/// started by cron while the shutdown save runs would otherwise unlink the other's temporary
/// files and commit an intent that lists sizes of one copy over files of the other. Released
/// when dropped (and by the kernel if the process dies).
struct DirLock {
    _dir: File,
}

/// Take the lock on `dir` — exclusive for save and load (which may finish or undo an
/// interrupted save), shared for test — waiting, with a line at `-v`, while another fileset
/// holds it. `None` where there is nothing to lock (no such directory: the command reports
/// that itself), the directory cannot be opened but its files may still be reachable (search
/// permission only), or the file system has no locks (some network file systems).
fn lock_dir(dir: &Path, exclusive: bool, opts: &Options) -> Result<Option<DirLock>> {
    let file = match File::open(dir) {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(io_err(dir)(e)),
    };
    use rustix::{fs::FlockOperation as Op, io::Errno};
    let (blocking, at_once) = if exclusive {
        (Op::LockExclusive, Op::NonBlockingLockExclusive)
    } else {
        (Op::LockShared, Op::NonBlockingLockShared)
    };
    let outcome = match rustix::fs::flock(&file, at_once) {
        Err(Errno::WOULDBLOCK) => {
            opts.say(1, || {
                format!("{}: waiting for another fileset to finish", dir.display())
            });
            rustix::fs::flock(&file, blocking)
        }
        other => other,
    };
    match outcome {
        Ok(()) => Ok(Some(DirLock { _dir: file })),
        Err(Errno::NOLCK | Errno::OPNOTSUPP) => Ok(None),
        Err(e) => Err(io_err(dir)(e.into())),
    }
}

/// What [`recover`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing was pending.
    Clean,
    /// An interrupted save was completed.
    RolledForward,
    /// An interrupted save was undone; the old set stands.
    RolledBack,
}

/// Finish or undo a save that was interrupted in `dir`.
pub fn recover(dir: &Path, opts: &Options) -> Result<Recovery> {
    opts.validate()?;
    let intent = intent_path(dir, opts);
    if !intent.exists() {
        remove_temps(dir)?;
        return Ok(Recovery::Clean);
    }
    let complete = read_check(&intent)
        .ok()
        .and_then(|c| intent_locations(dir, &c));
    match complete {
        Some(locations) => {
            for (from, to) in &locations {
                if from != to {
                    fs::rename(from, to).map_err(io_err(from))?;
                }
            }
            for d in locations
                .iter()
                .filter_map(|(_, to)| to.parent())
                .collect::<std::collections::BTreeSet<_>>()
            {
                fsync_dir(d)?;
            }
            let check = dir.join(&opts.check_name);
            fs::rename(&intent, &check).map_err(io_err(&intent))?;
            fsync_dir(dir)?;
            remove_temps(dir)?;
            opts.say(1, || {
                format!(
                    "recovered: finished an interrupted save in {}",
                    dir.display()
                )
            });
            Ok(Recovery::RolledForward)
        }
        None => {
            remove_temps(dir)?;
            fs::remove_file(&intent).map_err(io_err(&intent))?;
            fsync_dir(dir)?;
            opts.say(1, || {
                format!("recovered: undid an interrupted save in {}", dir.display())
            });
            Ok(Recovery::RolledBack)
        }
    }
}

/// `test`: the check file of `dir` is valid and every file matches it (version 2: contents
/// too). Read-only: an interrupted save is judged as [`recover`] would finish it.
pub fn test(dir: &Path, opts: &Options) -> Result<CheckFile> {
    opts.validate()?;
    let _lock = lock_dir(dir, false, opts)?;
    let intent = intent_path(dir, opts);
    if let Ok(c) = read_check(&intent) {
        if let Some(locations) = intent_locations(dir, &c) {
            for ((path, _), e) in locations.iter().zip(&c.entries) {
                verify_file(path, e, c.version, true)?;
            }
            return Ok(c);
        }
    }
    let c = read_check(&dir.join(&opts.check_name))?;
    for e in &c.entries {
        verify_file(&join(dir, &e.name)?, e, c.version, true)?;
    }
    Ok(c)
}

fn ensure_dir(dir: &Path, opts: &Options) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if dir.exists() {
        return Err(FilesetError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    if !opts.make_dirs {
        return Err(FilesetError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such directory (-m creates it)",
            ),
        });
    }
    fs::create_dir_all(dir).map_err(io_err(dir))
}

/// How [`copy_to_temp`] gets a file's contents.
enum Via<'a> {
    /// save: `O_DIRECT` writes of the source's spliced pages while there is a pipe; the pipe
    /// is dropped when the destination refuses them, so the rest of the set goes the
    /// ordinary way.
    Splice(&'a mut Option<copy::SplicePipe>),
    /// load: the next file of a read-ahead, fed to the digest too when given.
    ReadAhead(&'a mut readahead::ReadAhead, Option<&'a mut Sha256>),
    /// In the kernel (or a read/write loop where it cannot).
    Kernel,
}

/// Copy `src` to a temporary name next to `dst` and give it `mtime` and `mode`; returns the
/// temporary path, the byte count and the file, still open and not yet fsynced (the caller
/// fsyncs, alone or in a batch). On failure the temporary file is removed again.
fn copy_to_temp(
    src: &Path,
    dst: &Path,
    mtime: (i64, u32),
    mode: u32,
    opts: &Options,
    via: Via,
) -> Result<(PathBuf, u64, File)> {
    let temp = temp_path(dst);
    match fill_temp(src, &temp, mtime, mode, opts, via) {
        Ok((n, file)) => Ok((temp, n, file)),
        Err(e) => {
            // Nothing half-copied stays behind (a full tmpfs most of all).
            let _ = fs::remove_file(&temp);
            Err(e)
        }
    }
}

/// Opens a file to save (save's copies only: a load reads the saved set, which nothing
/// writes), once no write that began before the caller's look at its times is still putting
/// bytes in. Such a write has already set the times it will leave, so the times
/// compared after the copy would not show it; the copy starts after its last byte instead, and
/// any write that begins after the look changes the times (file systems with fine-grained times
/// once they have been looked at: Linux 6.13 and later; before, one within the same clock tick
/// may not).
fn open_settled_source(src: &Path) -> Result<File> {
    let mut from = copy::open_source(src, 0).map_err(io_err(src))?;
    copy::wait_for_writes_under_way(&from);
    from.seek(std::io::SeekFrom::Start(0))
        .map_err(io_err(src))?;
    Ok(from)
}

fn fill_temp(
    src: &Path,
    temp: &Path,
    mtime: (i64, u32),
    mode: u32,
    opts: &Options,
    via: Via,
) -> Result<(u64, File)> {
    let create = || copy::create_fresh(temp, mode, 0).map_err(io_err(temp));
    let (to, n, method) = match via {
        Via::ReadAhead(ahead, digest) => {
            let mut to = create()?;
            let n = ahead.copy_next(&mut to, digest).map_err(|e| match e {
                readahead::CopyFailure::Reading(e) => io_err(src)(e),
                readahead::CopyFailure::Writing(e) => io_err(temp)(e),
            })?;
            (to, n, copy::Method::DirectRead)
        }
        Via::Splice(pipe) => {
            let from = open_settled_source(src)?;
            let direct = match pipe {
                Some(p) if !opts.boundary_64k => {
                    copy::copy_direct_by_splice(&from, temp, mode, p).map_err(io_err(temp))?
                }
                _ => None,
            };
            match direct {
                Some((to, n)) => (to, n, copy::Method::DirectSplice),
                None => {
                    *pipe = None;
                    kernel_copy(from, create()?, src, temp, opts)?
                }
            }
        }
        Via::Kernel => {
            let from = copy::open_source(src, 0).map_err(io_err(src))?;
            kernel_copy(from, create()?, src, temp, opts)?
        }
    };
    to.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(temp))?;
    set_mtime(&to, mtime.0, mtime.1, temp)?;
    opts.say(3, || format!("  {n} bytes by {method:?}"));
    Ok((n, to))
}

/// A copy in the kernel (or the read/write loop). Its error does not say which side failed;
/// the errors only a destination gives (full, over quota, too large) are reported with the
/// destination's path, the rest with the source's.
fn kernel_copy(
    mut from: File,
    mut to: File,
    src: &Path,
    temp: &Path,
    opts: &Options,
) -> Result<(File, u64, copy::Method)> {
    let (n, method) = copy::copy_contents(&mut from, &mut to, opts.boundary_64k).map_err(|e| {
        match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => io_err(temp)(e),
            _ => io_err(src)(e),
        }
    })?;
    Ok((to, n, method))
}

/// How many saved files wait, open, for their fsync: fsyncs after a batch of writes find the
/// inode and directory blocks (and, with a journal, the transaction) the first one already
/// wrote, instead of writing them once per file. Bounded to stay far below the open-file limit.
const SYNC_BATCH: usize = 64;

/// Fsync and close the files written since the last batch.
fn sync_batch(unsynced: &mut Vec<(File, PathBuf)>) -> Result<()> {
    for (file, path) in unsynced.drain(..) {
        file.sync_all().map_err(io_err(&path))?;
    }
    Ok(())
}

/// `load`: copy the set from `permdir` to `tmpdir`; with `-b`, from the backup directory when
/// that fails. Returns the directory the set came from.
pub fn load(permdir: &Path, tmpdir: &Path, opts: &Options) -> Result<PathBuf> {
    opts.validate()?;
    match load_from(permdir, tmpdir, opts) {
        Ok(()) => Ok(permdir.to_path_buf()),
        Err(e) => match &opts.backup {
            Some(backup) => {
                eprintln!("fileset: {e}; loading from {} instead", backup.display());
                load_from(backup, tmpdir, opts)?;
                Ok(backup.clone())
            }
            None => Err(e),
        },
    }
}

fn load_from(source: &Path, tmpdir: &Path, opts: &Options) -> Result<()> {
    let _lock = lock_dir(source, true, opts)?;
    // Finish or undo an interrupted save first; a read-only source is judged as it is.
    match recover(source, opts) {
        Ok(_) => {}
        Err(FilesetError::Io { source: e, .. }) if e.raw_os_error() == Some(libc::EROFS) => {}
        Err(e) => return Err(e),
    }
    let check = read_check(&source.join(&opts.check_name))?;
    // Each file's path and permission bits, found once.
    let mut sources: Vec<(PathBuf, u32)> = Vec::with_capacity(check.entries.len());
    for e in &check.entries {
        let src = join(source, &e.name)?;
        let m = verify_file(&src, e, check.version, false)?;
        sources.push((src, m.mode() & 0o7777));
    }
    ensure_dir(tmpdir, opts)?;
    // From a disk, the set is read ahead with O_DIRECT; from memory, the kernel copies once.
    let mut ahead = if opts.boundary_64k || readahead::in_memory(source) {
        None
    } else {
        let files = sources.iter().map(|(src, _)| src.clone()).collect();
        match readahead::ReadAhead::start(files) {
            Ok(a) => Some(a),
            Err(err) => {
                opts.say(3, || {
                    format!("no read-ahead ({err}): copying in the kernel")
                });
                None
            }
        }
    };
    // Every file is copied and checked under its temporary name first, and only then do they
    // all take their names: a load that fails leaves tmpdir as it found it, with no file of a
    // working set already there replaced by half of the saved one.
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let result = (|| -> Result<()> {
        for (e, (src, mode)) in check.entries.iter().zip(&sources) {
            let dst = join(tmpdir, &e.name)?;
            if let Some(parent) = dst.parent() {
                if !parent.is_dir() {
                    fs::create_dir_all(parent).map_err(io_err(parent))?;
                }
            }
            opts.say(1, || format!("load {} ({} bytes)", e.name, e.size));
            // Read ahead, a version-2 file is hashed on the way in.
            let mut digest = (check.version >= 2 && ahead.is_some()).then(Sha256::new);
            let via = match &mut ahead {
                Some(a) => Via::ReadAhead(a, digest.as_mut()),
                None => Via::Kernel,
            };
            let (temp, n, file) =
                copy_to_temp(src, &dst, (e.mtime_sec, e.mtime_nsec), *mode, opts, via)?;
            staged.push((temp.clone(), dst));
            file.sync_all().map_err(io_err(&temp))?;
            if n != e.size {
                return Err(FilesetError::Mismatch {
                    path: src.clone(),
                    what: format!("copied {n} bytes, the check file says {}", e.size),
                });
            }
            if check.version >= 2 {
                let got: [u8; 32] = match digest {
                    Some(d) => d.finalize().into(),
                    None => sha256_of(&temp)?,
                };
                if got != e.sha256 {
                    return Err(FilesetError::Digest(src.clone()));
                }
            }
        }
        for (temp, dst) in &staged {
            fs::rename(temp, dst).map_err(io_err(temp))?;
        }
        fsync_dir(tmpdir)
    })();
    if result.is_err() {
        // Leave nothing half-loaded behind (a temporary already renamed is no longer there).
        for (temp, _) in &staged {
            let _ = fs::remove_file(temp);
        }
    }
    result
}

/// The files of a new set: regular files in `tmpdir` matching any pattern (default `*`);
/// version 2 also descends into subdirectories (patterns then match the relative path).
/// The permanent directory is skipped if it lies inside `tmpdir`: taken into the set, each save
/// would copy the saved set into itself again.
fn select_new_set(tmpdir: &Path, permdir: &Path, opts: &Options) -> Result<Vec<String>> {
    let patterns = opts.compiled_patterns()?;
    let permdir_id = fs::metadata(permdir).map(|m| (m.dev(), m.ino())).ok();
    let mut names = Vec::new();
    // (directory, its path relative to tmpdir, whether that path is UTF-8). A name that is
    // not UTF-8 is matched in its lossy form and refused if the set would take a file under
    // it: never silently left out, never saved under another name.
    let mut stack = vec![(tmpdir.to_path_buf(), String::new(), true)];
    while let Some((dir, rel, rel_is_utf8)) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let raw_name = entry.file_name();
            let is_utf8 = rel_is_utf8 && raw_name.to_str().is_some();
            let name = raw_name.to_string_lossy().into_owned();
            let rel_name = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if name == opts.check_name
                || name.ends_with(TEMP_SUFFIX)
                || name == format!("{}{INTENT_SUFFIX}", opts.check_name)
            {
                continue;
            }
            let ft = entry.file_type().map_err(io_err(&entry.path()))?;
            if ft.is_dir()
                && permdir_id.is_some()
                && entry.metadata().map(|m| (m.dev(), m.ino())).ok() == permdir_id
            {
                opts.say(2, || {
                    format!(
                        "{}: the permanent directory, left out",
                        entry.path().display()
                    )
                });
                continue;
            }
            if ft.is_dir() {
                if opts.format >= 2 {
                    stack.push((entry.path(), rel_name, is_utf8));
                } else if patterns.iter().any(|p| p.matches(&name)) {
                    return Err(FilesetError::Format(CheckError::TooBigForV1 {
                        name: rel_name,
                        reason: "a subdirectory",
                    }));
                }
                continue;
            }
            if patterns
                .iter()
                .any(|p| p.matches(&rel_name) || p.matches(&name))
            {
                let shown = || entry.path().to_string_lossy().into_owned();
                // A symbolic link would be saved as the file it points to (or, planted,
                // as any file the saving user can read); a FIFO or socket has no contents.
                if !ft.is_file() {
                    return Err(FilesetError::Format(CheckError::NotRegular {
                        name: shown(),
                        kind: kind_of(&ft),
                    }));
                }
                if !is_utf8 {
                    return Err(FilesetError::Format(CheckError::NameNotUtf8(shown())));
                }
                names.push(rel_name);
            }
        }
    }
    names.sort();
    Ok(names)
}

/// The modification time a saved entry records for a file with metadata `m`: `-t` when given,
/// else the file's own (nanoseconds in format 2 only).
fn recorded_time(m: &fs::Metadata, version: u32, opts: &Options) -> (i64, u32) {
    match opts.save_time {
        Some(t) => (t, 0),
        None if version >= 2 => (m.mtime(), m.mtime_nsec() as u32),
        None => (m.mtime(), 0),
    }
}

/// What changes when a file is written to: same inode, size, and modification and change
/// times before and after a copy mean nobody wrote to it meanwhile (ctime catches a writer
/// that puts the modification time back).
fn fingerprint(m: &fs::Metadata) -> (u64, u64, i64, i64, i64, i64) {
    (
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}

/// Whether `entry` fits the check-file format `version`.
fn fits_format(version: u32, entry: &Entry) -> Result<()> {
    let fits = if version == 1 {
        checkfile::check_v1(entry)
    } else {
        checkfile::check_v2(entry)
    };
    fits.map_err(FilesetError::Format)
}

/// Save's last `-v` line: the files it copied, not the ones `-x` found unchanged and kept.
fn saved_line(copied: usize, bytes: u64, total: usize, permdir: &Path) -> String {
    let files = |n: usize| if n == 1 { "file" } else { "files" };
    if copied == total {
        format!(
            "saved {copied} {} ({bytes} bytes) to {}",
            files(copied),
            permdir.display()
        )
    } else {
        format!(
            "saved {copied} of {total} files ({bytes} bytes) to {}; {} unchanged",
            permdir.display(),
            total - copied
        )
    }
}

/// How often save copies a file that is written to while it is copied before it gives up.
const COPY_ATTEMPTS: u32 = 3;

/// `save`: make the files of `tmpdir` the set in `permdir`, atomically.
pub fn save(permdir: &Path, tmpdir: &Path, opts: &Options) -> Result<CheckFile> {
    opts.validate()?;
    ensure_dir(permdir, opts)?;
    let _lock = lock_dir(permdir, true, opts)?;
    recover(permdir, opts)?;
    let old = read_check(&permdir.join(&opts.check_name));
    let (version, names, old_entries) = match &old {
        Ok(c) => (
            c.version,
            c.entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>(),
            c.entries.clone(),
        ),
        Err(e) => {
            opts.say(1, || format!("{e}: making a new set from the patterns"));
            (
                opts.format,
                select_new_set(tmpdir, permdir, opts)?,
                Vec::new(),
            )
        }
    };
    // Every entry is checked against the format before anything is written.
    checkfile::check_count(names.len()).map_err(FilesetError::Format)?;
    let mut plan = Vec::new();
    for name in &names {
        let src = join(tmpdir, name)?;
        // The file itself, not what a symbolic link in its place points to.
        let m = match fs::symlink_metadata(&src) {
            Ok(m) if m.is_file() => m,
            Ok(m) => {
                return Err(FilesetError::Mismatch {
                    what: format!("not a regular file ({})", kind_of(&m.file_type())),
                    path: src,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(FilesetError::MissingFile(src))
            }
            Err(e) => return Err(io_err(&src)(e)),
        };
        let (sec, nsec) = recorded_time(&m, version, opts);
        let entry = Entry {
            name: name.clone(),
            size: m.len(),
            mtime_sec: sec,
            mtime_nsec: nsec,
            sha256: [0; 32],
        };
        fits_format(version, &entry)?;
        let mode = opts.perms.unwrap_or(m.mode() & 0o7777);
        plan.push((entry, src, mode));
    }
    let mut hook = CrashHook::from_env();
    // The working set is normally on tmpfs: its pages go to the disk by O_DIRECT, uncopied.
    let mut pipe = copy::SplicePipe::new(permdir).ok();
    if let Some(p) = &pipe {
        opts.say(3, || {
            format!("O_DIRECT writes of up to {} bytes", p.chunk())
        });
    }
    let mut renames: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut unsynced: Vec<(File, PathBuf)> = Vec::new();
    let mut entries = Vec::new();
    // What this save really copied (with -x, the unchanged files are only listed again).
    let (mut copied, mut copied_bytes) = (0usize, 0u64);
    let outcome = (|| -> Result<()> {
        for (mut entry, src, mode) in plan {
            let dst = join(permdir, &entry.name)?;
            let previous = old_entries.iter().find(|e| e.name == entry.name);
            let unchanged = opts.only_changed
                && previous.is_some_and(|p| {
                    p.size == entry.size
                        && p.mtime_sec == entry.mtime_sec
                        && p.mtime_nsec == entry.mtime_nsec
                        && verify_file(&dst, p, version, false).is_ok()
                });
            if unchanged {
                entry.sha256 = previous.map(|p| p.sha256).unwrap_or_default();
                opts.say(2, || format!("unchanged {}", entry.name));
                entries.push(entry);
                continue;
            }
            if let Some(parent) = dst.parent() {
                if !parent.is_dir() {
                    fs::create_dir_all(parent).map_err(io_err(parent))?;
                }
            }
            opts.say(1, || format!("save {} ({} bytes)", entry.name, entry.size));
            // A file written to while it is copied would be saved torn under a valid check
            // file: it is copied again, and the save fails rather than keep a torn copy.
            let stat = |src: &Path| fs::symlink_metadata(src).map_err(io_err(src));
            let mut attempt = 1;
            let (temp, file) = loop {
                let before = stat(&src)?;
                entry.size = before.len();
                (entry.mtime_sec, entry.mtime_nsec) = recorded_time(&before, version, opts);
                let (temp, n, file) = copy_to_temp(
                    &src,
                    &dst,
                    (entry.mtime_sec, entry.mtime_nsec),
                    mode,
                    opts,
                    Via::Splice(&mut pipe),
                )?;
                if n == entry.size && fingerprint(&stat(&src)?) == fingerprint(&before) {
                    break (temp, file);
                }
                let _ = fs::remove_file(&temp);
                if attempt == COPY_ATTEMPTS {
                    return Err(FilesetError::Mismatch {
                        path: src,
                        what: format!(
                            "changed while saving, {COPY_ATTEMPTS} times in a row (a set \
                             must be saved while nothing writes to it)"
                        ),
                    });
                }
                opts.say(1, || {
                    format!("{}: written to while copied; copying it again", entry.name)
                });
                attempt += 1;
            };
            // Its size may have grown past what the format holds since the plan.
            fits_format(version, &entry)?;
            renames.push((temp.clone(), dst));
            copied += 1;
            copied_bytes += entry.size;
            unsynced.push((file, temp.clone()));
            if unsynced.len() >= SYNC_BATCH {
                sync_batch(&mut unsynced)?;
            }
            if version >= 2 {
                entry.sha256 = sha256_of(&temp)?;
            }
            entries.push(entry);
            hook.step();
        }
        sync_batch(&mut unsynced)?;
        // The temporary names must be on disk before the intent that points at them.
        for dir in renames
            .iter()
            .filter_map(|(temp, _)| temp.parent())
            .collect::<std::collections::BTreeSet<_>>()
        {
            fsync_dir(dir)?;
        }
        let check = CheckFile {
            version,
            entries: entries.clone(),
        };
        let bytes = check.encode().map_err(FilesetError::Format)?;
        let intent = intent_path(permdir, opts);
        {
            let mut f = copy::create_fresh(&intent, 0o666, 0).map_err(io_err(&intent))?;
            f.write_all(&bytes).map_err(io_err(&intent))?;
            f.sync_all().map_err(io_err(&intent))?;
        }
        fsync_dir(permdir)?;
        hook.step();
        // The intent is durable: from here on the new set wins, even after a crash.
        for (temp, dst) in renames.drain(..) {
            fs::rename(&temp, &dst).map_err(io_err(&temp))?;
            hook.step();
        }
        fs::rename(&intent, permdir.join(&opts.check_name)).map_err(io_err(&intent))?;
        hook.step();
        fsync_dir(permdir)?;
        hook.step();
        Ok(())
    })();
    match outcome {
        Ok(()) => {
            opts.say(1, || {
                saved_line(copied, copied_bytes, entries.len(), permdir)
            });
            Ok(CheckFile { version, entries })
        }
        Err(e) => {
            // Before the intent is on disk, undo this save; after, finish it if it can be
            // finished — either way the directory holds one whole set.
            if !intent_path(permdir, opts).exists() {
                for (temp, _) in &renames {
                    let _ = fs::remove_file(temp);
                }
            }
            let _ = recover(permdir, opts);
            Err(e)
        }
    }
}
