//! Resource files: `DIR/.rsrc/NAME`, in the public HELIOS header layout.
//!
//! The first 512 bytes are the header (all fields big-endian); the resource fork follows at
//! offset 512. `docs/desktop-format.md` lists every field.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::VolumeError;

/// Magic number at offset 0 of every resource file.
pub const MAGIC: u32 = 0x0368_1093;
/// Header version at offset 8.
pub const VERSION: u16 = 0x0102;
/// Size of the header; the resource fork starts here.
pub const HEADER_LEN: usize = 512;
/// The directory that holds the resource files of a directory's entries.
pub const RSRC_DIR: &str = ".rsrc";
/// The name of the volume root's own record inside `ROOT/.rsrc/`. `.rsrc` itself is a protected
/// name, so no real object can ever claim this record.
pub const ROOT_RECORD: &str = ".rsrc";
/// Maximum comment length stored in the header (XFileInfo comment field).
pub const MAX_COMMENT: usize = 200;

const OFF_ID: usize = 20;
const OFF_FINDER: usize = 32;
const OFF_COMMENT: usize = 64 + 16 + 36;

/// The fields of a resource-file header that deskd reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceHeader {
    /// The serial number at offset 4 (HELIOS's; kept, not interpreted).
    pub serno: u32,
    /// The attributes at offset 10 (HELIOS's; kept, not interpreted).
    pub attr: u16,
    /// The open maximum at offset 12 (HELIOS's; kept, not interpreted).
    pub open_max: u16,
    /// When the backup bit was cleared (offset 16; kept, not interpreted).
    pub backup_cleared: u32,
    /// The object's ID; 0 means "let the server allocate one".
    pub id: u32,
    /// Creation time, Unix seconds (what AFP reports as the object's creation date).
    pub create_time: u32,
    /// Backup time (offset 28; kept, not interpreted).
    pub backup_time: u32,
    /// The Finder type code (`TEXT`, `APPL`, …): with the creator, what opens the file.
    pub type_code: [u8; 4],
    /// The Finder creator code: the application that owns the file.
    pub creator: [u8; 4],
    /// The Finder flags (invisible, has custom icon, …), as the Finder info holds them.
    pub finder_flags: u16,
    /// The remaining 22 bytes of Finder info (location, folder, extended info), kept verbatim.
    pub finder_rest: [u8; 22],
    /// The Finder comment (at most 200 bytes); empty when none.
    pub comment: Vec<u8>,
}

impl ResourceHeader {
    /// A fresh header for a new object with the given ID, type and creator.
    pub fn new(id: u32, type_code: [u8; 4], creator: [u8; 4], create_time: u32) -> Self {
        ResourceHeader {
            id,
            type_code,
            creator,
            create_time,
            ..Default::default()
        }
    }

    /// Encode to the 512-byte on-disk form.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.serno.to_be_bytes());
        b[8..10].copy_from_slice(&VERSION.to_be_bytes());
        b[10..12].copy_from_slice(&self.attr.to_be_bytes());
        b[12..14].copy_from_slice(&self.open_max.to_be_bytes());
        b[16..20].copy_from_slice(&self.backup_cleared.to_be_bytes());
        b[OFF_ID..OFF_ID + 4].copy_from_slice(&self.id.to_be_bytes());
        b[24..28].copy_from_slice(&self.create_time.to_be_bytes());
        b[28..32].copy_from_slice(&self.backup_time.to_be_bytes());
        b[OFF_FINDER..OFF_FINDER + 4].copy_from_slice(&self.type_code);
        b[OFF_FINDER + 4..OFF_FINDER + 8].copy_from_slice(&self.creator);
        b[OFF_FINDER + 8..OFF_FINDER + 10].copy_from_slice(&self.finder_flags.to_be_bytes());
        b[OFF_FINDER + 10..OFF_FINDER + 32].copy_from_slice(&self.finder_rest);
        let n = self.comment.len().min(MAX_COMMENT);
        b[OFF_COMMENT..OFF_COMMENT + n].copy_from_slice(&self.comment[..n]);
        b
    }

    /// Decode a header; `bytes` may be shorter than 512 (missing fields read as zero) but must
    /// hold at least the magic and version.
    pub fn decode(bytes: &[u8]) -> Result<Self, VolumeError> {
        if bytes.len() < 64 {
            return Err(VolumeError::BadResourceFile(format!(
                "{} bytes, shorter than the 64-byte file info",
                bytes.len()
            )));
        }
        let mut full = [0u8; HEADER_LEN];
        let n = bytes.len().min(HEADER_LEN);
        full[..n].copy_from_slice(&bytes[..n]);
        let b = &full;
        let u32_at = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u16_at = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
        let magic = u32_at(0);
        if magic != MAGIC {
            return Err(VolumeError::BadResourceFile(format!(
                "magic {magic:#010x}, expected {MAGIC:#010x}"
            )));
        }
        let version = u16_at(8);
        if version != VERSION {
            return Err(VolumeError::BadResourceFile(format!(
                "version {version:#06x}, expected {VERSION:#06x}"
            )));
        }
        let mut finder_rest = [0u8; 22];
        finder_rest.copy_from_slice(&b[OFF_FINDER + 10..OFF_FINDER + 32]);
        let comment_field = &b[OFF_COMMENT..OFF_COMMENT + MAX_COMMENT];
        let comment_len = comment_field
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(MAX_COMMENT);
        Ok(ResourceHeader {
            serno: u32_at(4),
            attr: u16_at(10),
            open_max: u16_at(12),
            backup_cleared: u32_at(16),
            id: u32_at(OFF_ID),
            create_time: u32_at(24),
            backup_time: u32_at(28),
            type_code: b[OFF_FINDER..OFF_FINDER + 4].try_into().unwrap(),
            creator: b[OFF_FINDER + 4..OFF_FINDER + 8].try_into().unwrap(),
            finder_flags: u16_at(OFF_FINDER + 8),
            finder_rest,
            comment: comment_field[..comment_len].to_vec(),
        })
    }
}

/// The resource file of `object` (`DIR/.rsrc/NAME`); for a path with no parent (the volume
/// root, given as `root`) use [`root_rsrc_path`].
pub fn rsrc_path(object: &Path) -> Option<PathBuf> {
    let name = object.file_name()?;
    let dir = object.parent()?;
    Some(dir.join(RSRC_DIR).join(name))
}

/// The volume root's own record: `ROOT/.rsrc/.rsrc`.
pub fn root_rsrc_path(root: &Path) -> PathBuf {
    root.join(RSRC_DIR).join(ROOT_RECORD)
}

// Resource files live in a directory every user of the volume can write, and the tools that
// write them (rebuild, the server, dt) often run as root: a symbolic link planted as
// `.rsrc/NAME` or as `.rsrc` itself must never make them read or write a file outside. So the
// `.rsrc` directory is opened with O_NOFOLLOW and the file relative to it, with O_NOFOLLOW too.

/// The error for a link in place of the `.rsrc` directory `dir`.
fn link_refused(dir: &Path) -> VolumeError {
    VolumeError::io(
        dir,
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a symbolic link where a real .rsrc directory belongs; refused (move it away, then \
             run deskd rebuild)",
        ),
    )
}

/// Open the `.rsrc` directory holding `path`, never through a symbolic link. `Ok(None)` when
/// it does not exist.
fn open_rsrc_dir(path: &Path) -> Result<Option<(File, &std::ffi::OsStr)>, VolumeError> {
    use std::os::unix::fs::OpenOptionsExt;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(VolumeError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a resource-file path"),
        ));
    };
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
    {
        Ok(d) => Ok(Some((d, name))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        // With O_DIRECTORY, Linux reports a link as ENOTDIR, not ELOOP.
        Err(e)
            if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR))
                && fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) =>
        {
            Err(link_refused(dir))
        }
        Err(e) => Err(VolumeError::io(dir, e)),
    }
}

/// Create the `.rsrc` directory that holds the resource file `path`, unless it exists; a
/// symbolic link in its place is refused (for those who then rename a resource file into it).
pub fn make_rsrc_dir(path: &Path) -> Result<(), VolumeError> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            match fs::symlink_metadata(dir) {
                Ok(m) if m.file_type().is_symlink() => Err(link_refused(dir)),
                _ => Ok(()),
            }
        }
        Err(e) => Err(VolumeError::io(dir, e)),
    }
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`: a file relative to a directory
/// descriptor, never through a symbolic link in its place (`ELOOP`).
pub fn open_at(
    dir: std::os::unix::io::BorrowedFd<'_>,
    name: &std::ffi::CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> std::io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::from_bits_retain(flags as u32) | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(mode))?;
    Ok(File::from(fd))
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: what is at `name` in a directory descriptor,
/// a symbolic link itself rather than what it names.
pub fn lstat_at(
    dir: std::os::unix::io::BorrowedFd<'_>,
    name: &std::ffi::CStr,
) -> std::io::Result<rustix::fs::Stat> {
    Ok(rustix::fs::statat(
        dir,
        name,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// [`open_at`] with the name of a resource-file path.
fn open_in(
    dir: &File,
    name: &std::ffi::OsStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> std::io::Result<File> {
    use std::os::unix::io::AsFd;
    open_regular_at(dir.as_fd(), name, flags, mode)
}

/// [`open_at`] of a resource file: never blocks and never opens anything but a regular file.
/// A named pipe in a resource file's place (anyone who may write the folder can make one)
/// would otherwise block the opener until someone opened its other end, and the opener is the
/// server's writer or watcher (the hostile review of 2026-12-07, finding 1): `O_NONBLOCK`
/// makes the open return at once (a pipe with no reader refuses a writer with `ENXIO`), and
/// whatever is not a regular file is refused as `InvalidData`.
pub fn open_regular_at(
    dir: std::os::unix::io::BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> std::io::Result<File> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(name.as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let file = open_at(dir, &name, flags | libc::O_NONBLOCK, mode)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file (a pipe, device or socket in a resource file's place)",
        ));
    }
    // Back to blocking: reads and writes of a regular file are unaffected either way, but
    // the descriptor is handed on as an ordinary `File`.
    let flags = rustix::fs::fcntl_getfl(&file)?;
    rustix::fs::fcntl_setfl(&file, flags - rustix::fs::OFlags::NONBLOCK)?;
    Ok(file)
}

/// The header of the resource file `name` in the `.rsrc` folder held open as `dir` (opened
/// without following a link, never blocking, a regular file only): `None` when there is none.
pub fn read_header_at(
    dir: std::os::unix::io::BorrowedFd<'_>,
    name: &std::ffi::OsStr,
) -> Result<Option<ResourceHeader>, VolumeError> {
    let shown = || Path::new(RSRC_DIR).join(name);
    match open_regular_at(dir, name, libc::O_RDONLY, 0) {
        Ok(mut file) => read_header_from(&mut file, &shown()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Ok(None),
        Err(e) => Err(VolumeError::io(&shown(), e)),
    }
}

/// What is at a resource-file path, opened for reading without following links.
enum Existing {
    Missing,
    /// A symbolic link in the resource file's place: no resource file of ours.
    Link,
    File(File),
}

fn open_existing(path: &Path) -> Result<Existing, VolumeError> {
    let Some((dir, name)) = open_rsrc_dir(path)? else {
        return Ok(Existing::Missing);
    };
    match open_in(&dir, name, libc::O_RDONLY, 0) {
        Ok(f) => Ok(Existing::File(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Existing::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Ok(Existing::Link),
        Err(e) => Err(VolumeError::io(path, e)),
    }
}

/// Open a resource file for writing (`extra` adds `O_TRUNC`), creating it if missing. A
/// symbolic link in its place is no resource file of ours: it is removed — the link itself,
/// never what it points to — and a real file made.
fn open_for_writing(path: &Path, extra: libc::c_int) -> Result<File, VolumeError> {
    make_rsrc_dir(path)?;
    let Some((dir, name)) = open_rsrc_dir(path)? else {
        return Err(VolumeError::io(
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    };
    let flags = libc::O_WRONLY | libc::O_CREAT | extra;
    match open_in(&dir, name, flags, 0o666) {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            tracing::warn!(
                "{}: a symbolic link, replaced by a resource file",
                crate::pin::shown_path(path).display()
            );
            // Removed inside the `.rsrc` folder already open (without following a link), not
            // by path: a path through `.rsrc` could have been swapped for a link meanwhile and
            // would remove a file of the same name anywhere (the review of stop 35).
            rustix::fs::unlinkat(&dir, name, rustix::fs::AtFlags::empty())
                .map_err(|e| VolumeError::io(path, e.into()))?;
            open_in(&dir, name, flags | libc::O_EXCL, 0o666).map_err(|e| VolumeError::io(path, e))
        }
        Err(e) => Err(VolumeError::io(path, e)),
    }
}

/// Read the header of a resource file. `Ok(None)` when the file does not exist; a symbolic
/// link in its place is a bad resource file (not followed).
pub fn read_header(path: &Path) -> Result<Option<ResourceHeader>, VolumeError> {
    Ok(open_header(path)?.map(|(_, header)| header))
}

/// [`read_header`] and the owner of the very file read (`fstat`), for a caller that trusts a
/// header by who wrote it.
pub fn read_header_and_owner(path: &Path) -> Result<Option<(ResourceHeader, u32)>, VolumeError> {
    use std::os::unix::fs::MetadataExt;
    let Some((file, header)) = open_header(path)? else {
        return Ok(None);
    };
    let owner = file.metadata().map_err(|e| VolumeError::io(path, e))?.uid();
    Ok(Some((header, owner)))
}

/// The resource file at `path`, open, and its header (see [`read_header`]).
fn open_header(path: &Path) -> Result<Option<(File, ResourceHeader)>, VolumeError> {
    let mut file = match open_existing(path)? {
        Existing::File(f) => f,
        Existing::Missing => return Ok(None),
        Existing::Link => {
            return Err(VolumeError::BadResourceFile(format!(
                "{}: a symbolic link, not followed",
                crate::pin::shown_path(path).display()
            )))
        }
    };
    let header = read_header_from(&mut file, path).map_err(|e| match e {
        VolumeError::BadResourceFile(m) => {
            // A pinned path is named by its folder's real path, never the descriptor's.
            VolumeError::BadResourceFile(format!("{}: {m}", crate::pin::shown_path(path).display()))
        }
        other => other,
    })?;
    Ok(Some((file, header)))
}

/// Read the header of an open resource file (`path` names it in I/O errors only).
pub fn read_header_from(file: &mut File, path: &Path) -> Result<ResourceHeader, VolumeError> {
    let mut buf = Vec::with_capacity(HEADER_LEN);
    file.take(HEADER_LEN as u64)
        .read_to_end(&mut buf)
        .map_err(|e| VolumeError::io(path, e))?;
    ResourceHeader::decode(&buf)
}

/// Write `header` into the resource file at `path`, creating `.rsrc/` and the file if needed
/// and keeping any resource fork bytes after offset 512. Links are never followed (see
/// [`read_header`]; a link in the file's place is replaced by a real file).
pub fn write_header(path: &Path, header: &ResourceHeader) -> Result<(), VolumeError> {
    let mut file = open_for_writing(path, 0)?;
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(&header.encode()))
        .map_err(|e| VolumeError::io(path, e))
}

/// Copy the resource file `from` (header and fork) to `to`, replacing it; neither end is
/// followed through a symbolic link. `Ok(false)`, copying nothing, when `from` does not exist
/// or is a link (no resource file of ours: the object gets a fresh one when registered).
pub fn copy_file(from: &Path, to: &Path) -> Result<bool, VolumeError> {
    let Existing::File(mut source) = open_existing(from)? else {
        return Ok(false);
    };
    let mut dest = open_for_writing(to, libc::O_TRUNC)?;
    std::io::copy(&mut source, &mut dest).map_err(|e| VolumeError::io(to, e))?;
    Ok(true)
}

/// What [`look_at`] found at a resource file's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing at the name.
    Missing,
    /// A symbolic link in the resource file's place (not followed).
    Link,
    /// A regular file that is not a resource file (too short, another magic).
    Bad,
    /// A resource file, with its header.
    Header(ResourceHeader),
}

/// The resource file `name` in the `.rsrc` folder held open as `dir`, read as [`ensure_id`]
/// reads it (never through a link, never blocking, a regular file only: anything else is an
/// error), with one `openat` on the descriptor and one `pread`: no path through the folder
/// opened again, no `fcntl` to clear `O_NONBLOCK` (it changes nothing for a regular file's
/// read), no `stat` of the name before it to learn whether the file is new. The watcher's
/// stamp after each rename it carries a resource file for reads the header so
/// (docs/PERFORMANCE.md, "Live tracking (issue 23) — stop 42").
pub fn look_at(
    dir: std::os::unix::io::BorrowedFd<'_>,
    name: &std::ffi::OsStr,
) -> Result<Found, VolumeError> {
    use rustix::fs::{Mode, OFlags};
    use std::os::unix::ffi::OsStrExt;
    let shown = || Path::new(RSRC_DIR).join(name);
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, name.as_bytes(), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(Found::Missing),
        Err(rustix::io::Errno::LOOP) => return Ok(Found::Link),
        Err(e) => return Err(VolumeError::io(&shown(), e.into())),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| VolumeError::io(&shown(), e.into()))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(VolumeError::io(
            &shown(),
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a regular file (a pipe, device or socket in a resource file's place)",
            ),
        ));
    }
    let mut buf = [0u8; HEADER_LEN];
    let mut len = 0;
    while len < HEADER_LEN {
        match rustix::io::pread(&fd, &mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(VolumeError::io(&shown(), e.into())),
        }
    }
    Ok(match ResourceHeader::decode(&buf[..len]) {
        Ok(header) => Found::Header(header),
        Err(_) => Found::Bad,
    })
}

/// Update only the ID (and type/creator when given) of an existing resource file, or create it
/// from `fallback` when missing or unreadable.
pub fn ensure_id(
    path: &Path,
    id: u32,
    fallback: impl FnOnce() -> ResourceHeader,
) -> Result<ResourceHeader, VolumeError> {
    let (mut header, readable) = match read_header(path) {
        Ok(Some(h)) => (h, true),
        Ok(None) | Err(VolumeError::BadResourceFile(_)) => (fallback(), false),
        Err(e) => return Err(e),
    };
    // Missing, unreadable (a link in its place included) or holding another ID: written.
    if header.id != id || !readable {
        header.id = id;
        write_header(path, &header)?;
    }
    Ok(header)
}

/// Make the `.rsrc/` folder that holds the resource file `rsrc_path` (a pinned path) unless
/// it exists, with the owner, group and permissions of the folder it is in: whoever may make
/// entries in that folder may write their resource files, as when `dt` makes it as them (the
/// server is root, and a `.rsrc` of root's would shut them out). A link in its place is
/// refused ([`make_rsrc_dir`]).
pub fn make_rsrc_dir_like_its_folder(rsrc_path: &Path) -> Result<(), VolumeError> {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = rsrc_path.parent() else {
        return Ok(());
    };
    if std::fs::symlink_metadata(dir).is_ok() {
        return make_rsrc_dir(rsrc_path);
    }
    make_rsrc_dir(rsrc_path)?;
    let Some(folder) = dir.parent().and_then(|f| std::fs::metadata(f).ok()) else {
        return Ok(());
    };
    use rustix::fs::{Mode, OFlags};
    let Ok(fd) = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return Ok(());
    };
    own_like(&fd, folder.uid(), folder.gid(), folder.mode() & 0o3777);
    Ok(())
}

/// A resource file the server just made: the object's owner and group, and the object's read
/// and write bits (a private file's Finder comment stays private), as `dt` run by its owner
/// leaves it.
pub fn give_to_the_objects_owner(rsrc_file: &Path, object: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(object) else {
        return;
    };
    use rustix::fs::{Mode, OFlags};
    let Ok(fd) = rustix::fs::open(
        rsrc_file,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    // Only the file the server just made: the writer of `.rsrc` may have put a hard link to
    // another user's file at its name meanwhile, which must not be given away.
    let made_here = rustix::fs::fstat(&fd)
        .is_ok_and(|st| st.st_nlink == 1 && st.st_uid == rustix::process::geteuid().as_raw());
    if !made_here {
        return;
    }
    let mode = if meta.file_type().is_symlink() {
        0o644
    } else {
        meta.mode() & 0o666
    };
    own_like(&fd, meta.uid(), meta.gid(), mode);
}

/// Owner first (a change of owner clears set-ID bits), then the mode. Only root may give a
/// file away: otherwise nothing is changed.
fn own_like(fd: &impl std::os::fd::AsFd, uid: u32, gid: u32, mode: u32) {
    use rustix::fs::Mode;
    use rustix::process::{Gid, Uid};
    if rustix::process::geteuid().is_root() {
        let _ = rustix::fs::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    }
    let _ = rustix::fs::fchmod(fd, Mode::from_raw_mode(mode));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_matches_the_helios_spec() {
        let h = ResourceHeader::new(0x1122_3344, *b"TEXT", *b"ttxt", 7);
        let b = h.encode();
        assert_eq!(&b[0..4], &[0x03, 0x68, 0x10, 0x93]);
        assert_eq!(&b[8..10], &[0x01, 0x02]);
        assert_eq!(&b[20..24], &[0x11, 0x22, 0x33, 0x44]);
        assert_eq!(&b[24..28], &[0, 0, 0, 7]);
        assert_eq!(&b[32..36], b"TEXT");
        assert_eq!(&b[36..40], b"ttxt");
    }

    #[test]
    fn bad_magic_and_short_files_are_errors() {
        let mut b = ResourceHeader::default().encode();
        b[0] = 0;
        assert!(ResourceHeader::decode(&b).is_err());
        assert!(ResourceHeader::decode(&[0u8; 10]).is_err());
    }

    #[test]
    fn write_keeps_the_fork() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".rsrc").join("f");
        let h = ResourceHeader::new(17, *b"UNIX", *b"UNKN", 0);
        write_header(&path, &h).unwrap();
        let mut data = fs::read(&path).unwrap();
        data.extend_from_slice(b"fork bytes");
        fs::write(&path, &data).unwrap();
        let h2 = ResourceHeader { id: 99, ..h };
        write_header(&path, &h2).unwrap();
        let after = fs::read(&path).unwrap();
        assert_eq!(&after[512..], b"fork bytes");
        assert_eq!(read_header(&path).unwrap().unwrap().id, 99);
    }

    #[test]
    fn look_at_reads_what_ensure_id_reads_through_a_held_folder() {
        let dir = tempfile::tempdir().unwrap();
        let rsrc_dir = dir.path().join(RSRC_DIR);
        fs::create_dir_all(&rsrc_dir).unwrap();
        let held = File::open(&rsrc_dir).unwrap();
        use std::os::fd::AsFd;
        let look = |name: &str| look_at(held.as_fd(), std::ffi::OsStr::new(name));
        assert_eq!(look("none").unwrap(), Found::Missing);
        let h = ResourceHeader::new(77, *b"TEXT", *b"ttxt", 5);
        write_header(&rsrc_dir.join("good"), &h).unwrap();
        assert_eq!(look("good").unwrap(), Found::Header(h.clone()));
        fs::write(rsrc_dir.join("short"), b"not a header").unwrap();
        assert_eq!(look("short").unwrap(), Found::Bad);
        // A link is never followed, whatever it names.
        let victim = dir.path().join("victim");
        write_header(&dir.path().join(RSRC_DIR).join("v"), &h).unwrap();
        fs::rename(rsrc_dir.join("v"), &victim).unwrap();
        std::os::unix::fs::symlink(&victim, rsrc_dir.join("link")).unwrap();
        assert_eq!(look("link").unwrap(), Found::Link);
        // A named pipe is refused at once (never blocks), as ensure_id refuses it.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            rsrc_dir.join("pipe"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err = look("pipe").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(ensure_id(&rsrc_dir.join("pipe"), 1, ResourceHeader::default).is_err());
    }

    #[test]
    fn a_link_planted_as_a_resource_file_is_replaced_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let rsrc_dir = dir.path().join("vol").join(RSRC_DIR);
        fs::create_dir_all(&rsrc_dir).unwrap();
        let planted = rsrc_dir.join("f");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        // Reading it is an error, not the victim's bytes.
        let err = read_header(&planted).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // ensure_id (what rebuild and the server call) makes a real file in the link's place.
        let h = ensure_id(&planted, 42, || {
            ResourceHeader::new(0, *b"TEXT", *b"ttxt", 0)
        })
        .unwrap();
        assert_eq!(h.id, 42);
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(fs::symlink_metadata(&planted).unwrap().is_file());
        assert_eq!(read_header(&planted).unwrap().unwrap().id, 42);
        // Copying: from a link nothing is read, onto a link nothing is written through.
        let other = rsrc_dir.join("g");
        std::os::unix::fs::symlink(&victim, &other).unwrap();
        assert!(!copy_file(&other, &rsrc_dir.join("h")).unwrap());
        assert!(!rsrc_dir.join("h").exists(), "nothing copied from a link");
        assert!(copy_file(&planted, &other).unwrap());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(read_header(&other).unwrap().unwrap().id, 42);
    }

    #[test]
    fn a_link_planted_as_the_rsrc_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let vol = dir.path().join("vol");
        fs::create_dir(&vol).unwrap();
        std::os::unix::fs::symlink(&outside, vol.join(RSRC_DIR)).unwrap();
        let path = vol.join(RSRC_DIR).join("f");
        let h = ResourceHeader::new(7, *b"TEXT", *b"ttxt", 0);
        let err = write_header(&path, &h).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(read_header(&path)
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));
        assert!(make_rsrc_dir(&path).is_err(), "no rename into it either");
        let in_sub = vol.join("sub").join(RSRC_DIR).join("f");
        assert!(make_rsrc_dir(&in_sub).is_err(), "sub does not exist");
        fs::create_dir(vol.join("sub")).unwrap();
        make_rsrc_dir(&in_sub).unwrap();
        assert!(vol.join("sub").join(RSRC_DIR).is_dir());
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing written outside"
        );
    }

    #[test]
    fn an_unreadable_resource_file_with_the_right_id_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RSRC_DIR).join("f");
        fs::create_dir(path.parent().unwrap()).unwrap();
        fs::write(&path, vec![0xee; 600]).unwrap();
        ensure_id(&path, 5, || ResourceHeader::new(5, *b"TEXT", *b"ttxt", 0)).unwrap();
        let h = read_header(&path).unwrap().unwrap();
        assert_eq!((h.id, &h.type_code), (5, b"TEXT"));
        assert_eq!(
            fs::read(&path).unwrap()[512..],
            [0xee; 88],
            "the fork is kept"
        );
    }

    proptest! {
        #[test]
        fn header_round_trips(id in any::<u32>(), serno in any::<u32>(), attr in any::<u16>(),
                              t in any::<[u8; 4]>(), c in any::<[u8; 4]>(), flags in any::<u16>(),
                              rest in any::<[u8; 22]>(), ct in any::<u32>(),
                              comment in proptest::collection::vec(1u8..=255, 0..=200)) {
            let h = ResourceHeader { serno, attr, open_max: 3, backup_cleared: 9, id, create_time: ct,
                backup_time: 5, type_code: t, creator: c, finder_flags: flags, finder_rest: rest, comment };
            prop_assert_eq!(ResourceHeader::decode(&h.encode()).unwrap(), h);
        }
    }
}
