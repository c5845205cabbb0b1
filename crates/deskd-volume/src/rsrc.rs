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
    pub serno: u32,
    pub attr: u16,
    pub open_max: u16,
    pub backup_cleared: u32,
    /// The object's ID; 0 means "let the server allocate one".
    pub id: u32,
    pub create_time: u32,
    pub backup_time: u32,
    pub type_code: [u8; 4],
    pub creator: [u8; 4],
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

/// Read the header of a resource file. `Ok(None)` when the file does not exist.
pub fn read_header(path: &Path) -> Result<Option<ResourceHeader>, VolumeError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(VolumeError::io(path, e)),
    };
    read_header_from(&mut file, path)
        .map(Some)
        .map_err(|e| match e {
            VolumeError::BadResourceFile(m) => {
                VolumeError::BadResourceFile(format!("{}: {m}", path.display()))
            }
            other => other,
        })
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
/// and keeping any resource fork bytes after offset 512.
pub fn write_header(path: &Path, header: &ResourceHeader) -> Result<(), VolumeError> {
    if let Some(dir) = path.parent() {
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(VolumeError::io(dir, e)),
        }
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| VolumeError::io(path, e))?;
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(&header.encode()))
        .map_err(|e| VolumeError::io(path, e))
}

/// Update only the ID (and type/creator when given) of an existing resource file, or create it
/// from `fallback` when missing or unreadable.
pub fn ensure_id(
    path: &Path,
    id: u32,
    fallback: impl FnOnce() -> ResourceHeader,
) -> Result<ResourceHeader, VolumeError> {
    let mut header = match read_header(path) {
        Ok(Some(h)) => h,
        Ok(None) | Err(VolumeError::BadResourceFile(_)) => fallback(),
        Err(e) => return Err(e),
    };
    if header.id != id {
        header.id = id;
        write_header(path, &header)?;
    } else if !path.exists() {
        write_header(path, &header)?;
    }
    Ok(header)
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
