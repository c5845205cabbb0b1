//! Netatalk's per-file metadata (`appledouble = ea`), read so that a volume that ran under
//! Netatalk keeps its IDs, types and creators when deskd rebuilds its desktop.
//!
//! Netatalk 3 stores an AppleDouble header in the extended attribute `org.netatalk.Metadata`
//! (`user.org.netatalk.Metadata` on Linux, where only the `user.` namespace is open to
//! applications): magic `0x00051607`, version `0x00020000`, 16 filler bytes, a 16-bit entry count,
//! then 12-byte entries (id, offset, length; all big-endian). The entries deskd reads are the
//! Finder info (id 9: type, creator, flags) and the cached CNID (id 19, or `0x8053567E` as Netatalk
//! writes its private entries), a 4-byte big-endian number. `docs/desktop-format.md` shows the
//! 402-byte layout Netatalk writes.

/// The xattr holding Netatalk's metadata, as Linux names it.
pub const NETATALK_XATTR: &str = "user.org.netatalk.Metadata";

/// AppleDouble magic number.
pub const APPLEDOUBLE_MAGIC: u32 = 0x0005_1607;
/// AppleDouble version 2.
pub const APPLEDOUBLE_VERSION: u32 = 0x0002_0000;
/// Entry id of the 32-byte Finder info.
pub const ENTRY_FINDER_INFO: u32 = 9;
/// Entry id of the cached CNID (Netatalk's private number for it, and the on-disk value).
pub const ENTRY_CNID: u32 = 19;
/// The entry id Netatalk actually writes for the cached CNID (its private id range); read too.
pub const ENTRY_CNID_ON_DISK: u32 = 0x8053_567E;

const HEADER_LEN: usize = 26;
const ENTRY_LEN: usize = 12;

/// What deskd takes from Netatalk's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetatalkInfo {
    /// The cached CNID, when present and non-zero.
    pub cnid: Option<u32>,
    /// The Finder type code from the Finder info entry (zeros when there is none).
    pub type_code: [u8; 4],
    /// The Finder creator code from the Finder info entry (zeros when there is none).
    pub creator: [u8; 4],
    /// The Finder flags from the Finder info entry (0 when there is none).
    pub finder_flags: u16,
}

/// Why a metadata blob could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetatalkError {
    /// Fewer bytes than the 26-byte header (the length is given).
    #[error("shorter than an AppleDouble header ({0} bytes)")]
    Short(usize),
    /// Not AppleDouble: the first four bytes are not [`APPLEDOUBLE_MAGIC`].
    #[error("bad AppleDouble magic {0:#010x}")]
    Magic(u32),
    /// AppleDouble of a version other than [`APPLEDOUBLE_VERSION`].
    #[error("unsupported AppleDouble version {0:#010x}")]
    Version(u32),
    /// The entry count or an entry's offset and length point past the blob: truncated or
    /// forged, so nothing in it is believed.
    #[error("entry table runs past the end")]
    Entries,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// Parse an `org.netatalk.Metadata` value. Entries that point outside the blob are ignored.
pub fn parse(bytes: &[u8]) -> Result<NetatalkInfo, NetatalkError> {
    if bytes.len() < HEADER_LEN {
        return Err(NetatalkError::Short(bytes.len()));
    }
    let magic = be32(bytes, 0);
    if magic != APPLEDOUBLE_MAGIC {
        return Err(NetatalkError::Magic(magic));
    }
    let version = be32(bytes, 4);
    if version != APPLEDOUBLE_VERSION {
        return Err(NetatalkError::Version(version));
    }
    let count = u16::from_be_bytes([bytes[24], bytes[25]]) as usize;
    if HEADER_LEN + count * ENTRY_LEN > bytes.len() {
        return Err(NetatalkError::Entries);
    }
    let mut info = NetatalkInfo::default();
    for i in 0..count {
        let at = HEADER_LEN + i * ENTRY_LEN;
        let (id, off, len) = (
            be32(bytes, at),
            be32(bytes, at + 4) as usize,
            be32(bytes, at + 8) as usize,
        );
        let Some(data) = off
            .checked_add(len)
            .filter(|&end| end <= bytes.len())
            .map(|end| &bytes[off..end])
        else {
            continue;
        };
        match id {
            ENTRY_FINDER_INFO if data.len() >= 10 => {
                info.type_code.copy_from_slice(&data[0..4]);
                info.creator.copy_from_slice(&data[4..8]);
                info.finder_flags = u16::from_be_bytes([data[8], data[9]]);
            }
            ENTRY_CNID | ENTRY_CNID_ON_DISK if data.len() == 4 => {
                info.cnid = Some(be32(data, 0)).filter(|&c| c != 0);
            }
            _ => {}
        }
    }
    Ok(info)
}

/// Read the Netatalk metadata of `path` (not following a final symlink); `None` when absent,
/// unreadable or malformed.
pub fn read(path: &std::path::Path) -> Option<NetatalkInfo> {
    let value = xattr::get(path, NETATALK_XATTR).ok()??;
    parse(&value).ok()
}

/// The 402-byte blob Netatalk 3 writes (entry order and offsets of its `entry_order_ea`) for a
/// file of type `type_code` and creator `creator` whose cached CNID is `cnid`: the one
/// definition the tests (here and deskd-cli's) build Netatalk metadata with. Compiled for tests
/// only (the `test-hooks` feature, which deskd-cli's tests turn on).
#[cfg(any(test, feature = "test-hooks"))]
pub fn netatalk3_blob(cnid: u32, type_code: &[u8; 4], creator: &[u8; 4]) -> Vec<u8> {
    let mut b = vec![0u8; 402];
    b[0..4].copy_from_slice(&APPLEDOUBLE_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&APPLEDOUBLE_VERSION.to_be_bytes());
    b[24..26].copy_from_slice(&8u16.to_be_bytes());
    let entries: [(u32, u32, u32); 8] = [
        (9, 122, 32),
        (4, 154, 0),
        (8, 354, 16),
        (14, 370, 4),
        (0x8044_4556, 374, 8),
        (0x8049_4E4F, 382, 8),
        (0x8053_594E, 390, 8),
        (0x8053_567E, 398, 4),
    ];
    for (i, (id, off, len)) in entries.iter().enumerate() {
        let at = 26 + i * 12;
        b[at..at + 4].copy_from_slice(&id.to_be_bytes());
        b[at + 4..at + 8].copy_from_slice(&off.to_be_bytes());
        b[at + 8..at + 12].copy_from_slice(&len.to_be_bytes());
    }
    b[122..126].copy_from_slice(type_code);
    b[126..130].copy_from_slice(creator);
    b[398..402].copy_from_slice(&cnid.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_the_netatalk_3_layout() {
        let info = parse(&netatalk3_blob(4711, b"TEXT", b"ttxt")).unwrap();
        assert_eq!(info.cnid, Some(4711));
        assert_eq!(&info.type_code, b"TEXT");
        assert_eq!(&info.creator, b"ttxt");
    }

    #[test]
    fn rejects_foreign_blobs() {
        assert_eq!(parse(&[0; 10]), Err(NetatalkError::Short(10)));
        let mut b = netatalk3_blob(1, b"TEXT", b"ttxt");
        b[3] = 0;
        assert!(matches!(parse(&b), Err(NetatalkError::Magic(_))));
    }

    proptest! {
        /// Any bytes: parse never panics; a valid blob always yields its CNID.
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), cnid in 1u32..) {
            let _ = parse(&bytes);
            prop_assert_eq!(parse(&netatalk3_blob(cnid, b"APPL", b"abcd")).unwrap().cnid, Some(cnid));
        }
    }
}
