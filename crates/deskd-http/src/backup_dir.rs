//! `backup_dir`, held open: the directory is opened once at start (never through a link) and
//! every backup's files are made relative to that descriptor (`openat`, `renameat`), so a user
//! who owns the directory's parent and renames or replaces it after start cannot redirect a
//! backup. Its owner and mode
//! are checked at start and again before each backup.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};

use crate::error::HttpError;

/// The open `backup_dir`.
#[derive(Debug)]
pub struct BackupDir {
    /// The configured path, for messages only (never resolved again).
    path: PathBuf,
    fd: OwnedFd,
}

impl BackupDir {
    /// Open `dir` (absolute, a real directory, not a link) and check it.
    pub fn open(dir: &Path) -> Result<BackupDir, HttpError> {
        let refuse = |why: String| HttpError::BackupDir {
            path: dir.to_path_buf(),
            why,
        };
        if !dir.is_absolute() {
            return Err(refuse("not an absolute path".into()));
        }
        let fd = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP => {
                refuse("not a directory (or a symbolic link to one)".into())
            }
            e => refuse(std::io::Error::from(e).to_string()),
        })?;
        let held = BackupDir {
            path: dir.to_path_buf(),
            fd,
        };
        held.check().map_err(refuse)?;
        Ok(held)
    }

    /// The directory as opened must belong to root or deskd's user and be writable by no one
    /// else (one who could write would rename, delete or replace the backups).
    pub fn check(&self) -> Result<(), String> {
        let stat = rustix::fs::fstat(&self.fd).map_err(|e| std::io::Error::from(e).to_string())?;
        let owner = stat.st_uid;
        let me = rustix::process::geteuid().as_raw();
        if owner != 0 && owner != me {
            return Err(format!(
                "owned by uid {owner}, who may change the backups; it must belong to root or \
                 deskd's user (uid {me}): `chown {me}` it"
            ));
        }
        let mode = stat.st_mode & 0o7777;
        if mode & 0o022 != 0 {
            return Err(format!(
                "other users may write into it (mode {mode:04o}); `chmod go-w` it"
            ));
        }
        Ok(())
    }

    /// The configured path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Create `name` new in the directory: mode 0600, `O_EXCL`, never through a link.
    pub fn create_new(&self, name: &str) -> std::io::Result<File> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok(File::from(fd))
    }

    /// Rename `temp` to `name` inside the directory, never over an existing file.
    pub fn publish(&self, temp: &str, name: &str) -> std::io::Result<()> {
        rustix::fs::renameat_with(&self.fd, temp, &self.fd, name, RenameFlags::NOREPLACE)?;
        Ok(())
    }

    /// Remove `name`, a file this side created.
    pub fn remove(&self, name: &str) {
        let _ = rustix::fs::unlinkat(&self.fd, name, AtFlags::empty());
    }

    /// Make the directory's new entries durable.
    pub fn sync(&self) -> std::io::Result<()> {
        rustix::fs::fsync(&self.fd)?;
        Ok(())
    }
}
