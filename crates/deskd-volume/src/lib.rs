//! The file-system side of a deskd volume.
//!
//! * [`rsrc`]: resource files `DIR/.rsrc/NAME` in the public HELIOS header layout; the volume
//!   root's own record is `ROOT/.rsrc/.rsrc`.
//! * The ID mirror: the xattr `user.deskd.id` (4 bytes, big-endian), so an object moved by a
//!   plain `mv` still carries its ID ([`read_id_xattr`], [`write_id_xattr`]).
//! * [`netatalk`]: Netatalk's `org.netatalk.Metadata` xattr, read when migrating a volume.
//! * Protected names (`.Desktop*`, `.rsrc`) that no client may see, create, rename or delete
//!   ([`is_protected`]).
//! * [`Volume`]: the one place where a client path is turned into a path inside the volume,
//!   refusing `..` escapes, symlinks that leave the volume and invalid names.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod guard;
pub mod netatalk;
pub mod pin;
pub mod rsrc;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Name of the desktop database file in a volume root.
pub const DESKTOP_FILE: &str = ".Desktop";
/// The xattr that mirrors an object's ID.
pub const ID_XATTR: &str = "user.deskd.id";
/// The longest name a component may have.
pub const MAX_NAME_LEN: usize = 255;

/// Names hidden from listings and refused for any client operation.
pub const PROTECTED_NAMES: &[&str] = &[
    ".Desktop",
    ".Desktop-wal",
    ".Desktop-shm",
    ".Desktop-journal",
    ".Desktop-rebuild",
    ".Desktop-rebuild-journal",
    // The desktop `deskd migrate --to sqlite --replace` replaced (docs/deskd.md).
    ".Desktop.before-migrate",
    ".rsrc",
];

/// The temporary name `deskd rebuild` writes a new desktop under, beside the desktop.
pub const REBUILD_FILE: &str = ".Desktop-rebuild";

/// Where `ROOT/.Desktop` points when it is a relocation symlink (relative targets are taken
/// from the root); `None` when it is no symlink (a plain file, or nothing yet).
///
/// Only a link owned by root or by the user deskd runs as is followed: a volume root is often
/// writable by its users, and a link one of them planted would have the server open — and
/// `rebuild -f` replace — any file it names. Any other owner is an error (`PermissionDenied`).
pub fn desktop_link(root: &Path) -> std::io::Result<Option<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    let in_root = root.join(DESKTOP_FILE);
    match std::fs::symlink_metadata(&in_root) {
        Ok(m) if m.file_type().is_symlink() => {
            let deskd_user = rustix::process::geteuid().as_raw();
            if m.uid() != 0 && m.uid() != deskd_user {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "{DESKTOP_FILE} is a relocation link owned by uid {}, not by root or \
                         deskd's user (uid {deskd_user}); not followed",
                        m.uid()
                    ),
                ));
            }
            let target = std::fs::read_link(&in_root)?;
            Ok(Some(if target.is_absolute() {
                target
            } else {
                root.join(target)
            }))
        }
        _ => Ok(None),
    }
}

/// Open (creating if missing) the desktop file and take the exclusive lock that makes its holder
/// the only writer — `deskd serve` and `deskd rebuild` both take it. `Ok(None)` when another
/// process holds it.
///
/// A desktop this creates is private (mode 0600): it will hold every name of the volume, and
/// SQLite gives its WAL and shared-memory files the same mode. A symbolic link at `path` is
/// refused (`ELOOP`): relocation links are resolved by [`desktop_link`] before this.
pub fn lock_desktop(path: &Path) -> std::io::Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let locked = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive);
    Ok(locked.is_ok().then_some(file))
}

/// Errors of the file-system side.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    // The I/O error is part of the message and deliberately not a `source`: printed with
    // anyhow's `{:#}` (as dt and deskd do) a source would be repeated after the message
    // ("…: Permission denied (os error 13): Permission denied (os error 13)").
    /// A file-system call on `path` failed.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// What the kernel said.
        error: std::io::Error,
    },
    /// A resource file that is not one: wrong magic or version, too short, or a symbolic
    /// link (which could send a root-run tool outside the volume). The text says which.
    #[error("bad resource file: {0}")]
    BadResourceFile(String),
    /// A path that would lead outside the volume (`.` or `..`, a symbolic link to outside);
    /// refused because the server acts for clients who may not reach beyond it.
    #[error("{0}: path leaves the volume")]
    Escape(String),
    /// A path through `.Desktop` or `.rsrc`, which only deskd may change.
    #[error("{0}: protected name (.Desktop and .rsrc belong to deskd)")]
    Protected(String),
    /// A name no object may have (empty, longer than 255 bytes, a `/` or NUL in it); the
    /// second field says which rule it breaks.
    #[error("{0}: invalid name: {1}")]
    InvalidName(String, &'static str),
}

impl VolumeError {
    /// [`VolumeError::Io`] for `path`: the shape every file-system failure here takes. A path
    /// through a pinned folder is kept as the folder's real path ([`pin::shown_path`]), so the
    /// message names it.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        VolumeError::Io {
            path: pin::shown_path(path),
            error: source,
        }
    }
}

/// True for names that belong to deskd itself.
pub fn is_protected(name: &[u8]) -> bool {
    PROTECTED_NAMES.iter().any(|p| p.as_bytes() == name)
}

/// Check one path component given by a client.
pub fn check_name(name: &[u8]) -> Result<(), VolumeError> {
    let shown = || String::from_utf8_lossy(name).into_owned();
    if name.is_empty() {
        return Err(VolumeError::InvalidName(shown(), "empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(VolumeError::InvalidName(
            format!("{}...", String::from_utf8_lossy(&name[..32])),
            "longer than 255 bytes",
        ));
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(VolumeError::InvalidName(shown(), "contains '/' or NUL"));
    }
    if name == b"." || name == b".." {
        return Err(VolumeError::Escape(shown()));
    }
    if is_protected(name) {
        return Err(VolumeError::Protected(shown()));
    }
    Ok(())
}

/// Read the ID mirror of `path` (not following a final symlink: a link carries no mirror, and
/// its target's is another object's). `None` when absent, malformed or unsupported by the file
/// system.
pub fn read_id_xattr(path: &Path) -> Option<u32> {
    // One lgetxattr(2) into 4 bytes (the `xattr` crate asks the size first): a longer value is
    // ERANGE, a shorter one the wrong length; neither is an ID.
    let mut bytes = [0u8; 4];
    match rustix::fs::lgetxattr(path, ID_XATTR, &mut bytes[..]) {
        Ok(4) => Some(u32::from_be_bytes(bytes)),
        _ => None,
    }
}

/// Write the ID mirror. File systems without user xattrs (and symlinks, which cannot carry
/// them on Linux) are skipped silently: the resource file remains the durable copy.
pub fn write_id_xattr(path: &Path, id: u32) -> Result<(), VolumeError> {
    if std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
    {
        return Ok(());
    }
    match xattr::set(path, ID_XATTR, &id.to_be_bytes()) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOTSUP) | Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::EROFS)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(VolumeError::io(path, e)),
    }
}

/// The xattr on a volume root that holds the volume's identity when its desktop is in
/// PostgreSQL (issue 28): 8 bytes, big-endian. A SQLite desktop keeps it as `volume_uuid`.
pub const VOLUME_XATTR: &str = "user.deskd.volume";

/// The identity stamped on `root` ([`VOLUME_XATTR`]), if any.
pub fn read_volume_identity(root: &Path) -> Option<u64> {
    let value = xattr::get(root, VOLUME_XATTR).ok()??;
    let bytes: [u8; 8] = value.as_slice().try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Stamp `identity` on `root` unless one is there already, and return the one that is there
/// now: of two servers starting at once on a new volume, both use the first's.
pub fn stamp_volume_identity(root: &Path, identity: u64) -> Result<u64, VolumeError> {
    use rustix::fs::{setxattr, XattrFlags};
    match setxattr(
        root,
        VOLUME_XATTR,
        &identity.to_be_bytes(),
        XattrFlags::CREATE,
    ) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(VolumeError::io(root, std::io::Error::from(e))),
    }
    read_volume_identity(root).ok_or_else(|| {
        VolumeError::io(
            root,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{VOLUME_XATTR} is not 8 bytes"),
            ),
        )
    })
}

/// The xattr on a volume root that says its desktop is in PostgreSQL (value `postgresql`):
/// set by `deskd serve` when it serves the volume from a database and by `deskd migrate --to
/// postgresql`, removed by `deskd migrate --to sqlite`. The tools that work on an SQLite desktop
/// without a server (`deskd rebuild` offline, `deskd migrate --to postgresql`, an SQLite
/// `deskd serve`) refuse such a volume, as the desktop lock keeps them off a served SQLite
/// desktop: a `.Desktop` there is stale, or would be made empty and hand out IDs again.
pub const BACKEND_XATTR: &str = "user.deskd.backend";

/// What [`BACKEND_XATTR`] says of `root`: `Some("postgresql")` for a desktop in PostgreSQL.
pub fn desktop_backend(root: &Path) -> Option<String> {
    let value = xattr::get(root, BACKEND_XATTR).ok()??;
    Some(String::from_utf8_lossy(&value).into_owned())
}

/// Mark `root`'s desktop as being in PostgreSQL (`true`) or not (`false`, the mark removed).
pub fn mark_desktop_in_postgresql(root: &Path, in_postgresql: bool) -> Result<(), VolumeError> {
    let done = if in_postgresql {
        xattr::set(root, BACKEND_XATTR, b"postgresql")
    } else {
        match xattr::remove(root, BACKEND_XATTR) {
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
            other => other,
        }
    };
    done.map_err(|e| VolumeError::io(root, e))
}

/// The xattr on a volume's root that says its desktop left a database, and when (Unix time,
/// decimal): set by `deskd restore --leave-postgresql` and `deskd migrate --to sqlite` before
/// they remove [`BACKEND_XATTR`], removed by `deskd migrate --to` a database after it sets it.
/// A server still configured with the database refuses an unmarked root that has it, also when
/// it cannot read the SQLite desktop's own note (the desktop kept on another host's disk).
pub const LEFT_DATABASE_XATTR: &str = "user.deskd.left_database";

/// When [`LEFT_DATABASE_XATTR`] on `root` says its desktop left a database, if it does.
pub fn root_left_database(root: &Path) -> Option<i64> {
    let value = xattr::get(root, LEFT_DATABASE_XATTR).ok()??;
    std::str::from_utf8(&value).ok()?.trim().parse().ok()
}

/// Set [`LEFT_DATABASE_XATTR`] on `root` to `when` (Unix time), or remove it (`None`).
pub fn note_root_left_database(root: &Path, when: Option<i64>) -> Result<(), VolumeError> {
    let done = match when {
        Some(when) => xattr::set(root, LEFT_DATABASE_XATTR, when.to_string().as_bytes()),
        None => match xattr::remove(root, LEFT_DATABASE_XATTR) {
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
            other => other,
        },
    };
    done.map_err(|e| VolumeError::io(root, e))
}

/// The refusal of an offline tool on a volume whose desktop is in PostgreSQL, if it is.
pub fn refuse_if_in_postgresql(root: &Path) -> Result<(), String> {
    match desktop_backend(root) {
        Some(backend) => Err(format!(
            "{}: this volume's desktop is in {backend} (xattr {BACKEND_XATTR} on its root), \
             not in an SQLite file: use the deskd serve that serves it, or move the desktop \
             back with `deskd migrate ROOT --from TARGET --to sqlite` first; nothing was changed",
            root.display()
        )),
        None => Ok(()),
    }
}

/// Clean a path lexically: drop `.`, apply `..` to the preceding component. A `..` above the
/// start is kept so the caller can refuse it.
pub fn lexical_clean(path: &Path) -> PathBuf {
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) => {}
                _ => out.push(c),
            },
            other => out.push(other),
        }
    }
    out.iter().collect()
}

/// Make `path` absolute against the current directory and clean it lexically.
pub fn absolute(path: &Path) -> Result<PathBuf, VolumeError> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| VolumeError::io(Path::new("."), e))?
            .join(path)
    };
    Ok(lexical_clean(&abs))
}

/// Find the volume that lexically contains `path`: the nearest ancestor directory holding a
/// `.Desktop` (a file, or a symlink to a relocated desktop) or marked as having its desktop in
/// PostgreSQL ([`BACKEND_XATTR`]). `path` must be absolute and clean.
pub fn locate_volume(path: &Path) -> Option<PathBuf> {
    let mut candidate = Some(path);
    while let Some(dir) = candidate {
        // A desktop in PostgreSQL leaves no `.Desktop`: the root's mark says it.
        if std::fs::symlink_metadata(dir.join(DESKTOP_FILE)).is_ok()
            || desktop_backend(dir).is_some()
        {
            return Some(dir.to_path_buf());
        }
        candidate = dir.parent();
    }
    None
}

/// A volume root, canonicalised, and the safe path resolver for it.
#[derive(Debug, Clone)]
pub struct Volume {
    root: PathBuf,
}

/// A client path resolved inside a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The names from the root down to the object (empty for the root).
    pub components: Vec<OsString>,
    /// The absolute, physical path (every directory symlink resolved, the last name not).
    pub path: PathBuf,
}

impl Resolved {
    /// The components as byte slices.
    pub fn names(&self) -> Vec<&[u8]> {
        self.components.iter().map(|c| c.as_bytes()).collect()
    }
}

impl Volume {
    /// A volume rooted at `root`, which must be an existing directory.
    pub fn new(root: &Path) -> Result<Volume, VolumeError> {
        let root = root.canonicalize().map_err(|e| VolumeError::io(root, e))?;
        if !root.is_dir() {
            return Err(VolumeError::io(
                &root,
                std::io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        Ok(Volume { root })
    }

    /// The canonical root path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolve a path relative to the volume root (bytes, `/`-separated, as sent by clients).
    /// `..` and `.` components, protected names, empty or over-long names are refused; any
    /// directory on the way that is a symlink must stay inside the volume.
    pub fn resolve_relative(&self, rel: &[u8]) -> Result<Resolved, VolumeError> {
        let mut components = Vec::new();
        for part in rel.split(|&b| b == b'/') {
            if part.is_empty() {
                continue;
            }
            check_name(part)?;
            components.push(OsStr::from_bytes(part).to_os_string());
        }
        self.physical(components, rel)
    }

    fn physical(&self, components: Vec<OsString>, shown: &[u8]) -> Result<Resolved, VolumeError> {
        let shown = || String::from_utf8_lossy(shown).into_owned();
        let Some((last, dirs)) = components.split_last() else {
            return Ok(Resolved {
                components,
                path: self.root.clone(),
            });
        };
        // Resolve the directories physically; the deepest existing one must stay inside.
        let mut dir = self.root.clone();
        let mut real_components: Vec<OsString> = Vec::new();
        let mut exists = true;
        for name in dirs {
            dir.push(name);
            if exists {
                match std::fs::symlink_metadata(&dir) {
                    Ok(m) if m.file_type().is_symlink() => {
                        let real = dir
                            .canonicalize()
                            .map_err(|_| VolumeError::Escape(shown()))?;
                        let inside = real
                            .strip_prefix(&self.root)
                            .map_err(|_| VolumeError::Escape(shown()))?;
                        real_components = inside.iter().map(|c| c.to_os_string()).collect();
                        for c in &real_components {
                            if is_protected(c.as_bytes()) {
                                return Err(VolumeError::Protected(shown()));
                            }
                        }
                        dir = real;
                        continue;
                    }
                    Ok(_) => {}
                    Err(_) => exists = false,
                }
            }
            real_components.push(name.clone());
        }
        real_components.push(last.clone());
        Ok(Resolved {
            path: dir.join(last),
            components: real_components,
        })
    }

    /// The absolute path of a list of components from the root.
    pub fn path_of(&self, components: &[Vec<u8>]) -> PathBuf {
        let mut p = self.root.clone();
        for c in components {
            p.push(OsStr::from_bytes(c));
        }
        p
    }
}

#[cfg(test)]
mod tests;
