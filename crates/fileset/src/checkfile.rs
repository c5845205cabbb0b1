//! The check file: which files make up a set, with their sizes and modification times, guarded
//! by a CRC-32.
//!
//! Both formats start with the same 16-byte header of little-endian u32s: `crc`, `nfiles`, `ver`,
//! `spare` (0). The CRC is CRC-32 (IEEE 802.3, as zlib's `crc32`) over every byte after the `crc`
//! field, header included, so a flipped bit anywhere is caught.
//!
//! * Version 1 (the QNX layout): `nfiles` entries of 128 bytes: `mtime` u32, `size` u32, and the
//!   name in 120 bytes, NUL-terminated (so at most 119 bytes, no `/`).
//! * Version 2: `nfiles` entries of variable size: `mtime_sec` i64, `mtime_nsec` u32, `size` u64,
//!   `sha256` 32 bytes, `name_len` u16, then the name (a relative path with `/`, up to 4,095 bytes).

/// Size of the header.
pub const HEADER_LEN: usize = 16;
/// Size of a version-1 entry.
pub const V1_ENTRY_LEN: usize = 128;
/// Longest name in version 1 (120 bytes with its NUL).
pub const V1_MAX_NAME: usize = 119;
/// Longest relative path in version 2.
pub const V2_MAX_NAME: usize = 4095;
/// Most entries a check file may claim (protects against absurd allocations).
pub const MAX_FILES: u32 = 1_000_000;
/// The fixed part of a version-2 entry (times, size, SHA-256, name length): its smallest size.
const V2_FIXED_LEN: usize = 8 + 4 + 8 + 32 + 2;

/// What is wrong with a check file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckError {
    #[error("check file is truncated ({0} bytes)")]
    Truncated(usize),
    #[error("check file CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc { stored: u32, computed: u32 },
    #[error("check file version {0} is not supported (1 and 2 are)")]
    BadVersion(u32),
    #[error("check file is malformed: {0}")]
    Malformed(String),
    #[error("{name}: {reason} (format 1 cannot hold it; use --format 2)")]
    TooBigForV1 { name: String, reason: &'static str },
    #[error(
        "{0}: the name is not UTF-8, and check files hold UTF-8 names \
         (rename it, or leave it out with -p)"
    )]
    NameNotUtf8(String),
    #[error("{name}: a {kind}, and a set holds regular files only (leave it out with -p)")]
    NotRegular { name: String, kind: &'static str },
    #[error("{0} files, more than a check file holds ({MAX_FILES}); narrow the set with -p")]
    TooManyFiles(usize),
}

/// One file of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Name relative to the set directory (`/`-separated in version 2).
    pub name: String,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// SHA-256 of the contents (version 2 only; zero in version 1).
    pub sha256: [u8; 32],
}

/// A whole check file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFile {
    pub version: u32,
    pub entries: Vec<Entry>,
}

impl CheckFile {
    /// Encode; fails if an entry does not fit the version.
    pub fn encode(&self) -> Result<Vec<u8>, CheckError> {
        check_count(self.entries.len())?;
        for e in &self.entries {
            check_name(&e.name)?;
        }
        check_consistent(&self.entries)?;
        let mut out = vec![0u8; HEADER_LEN];
        out[4..8].copy_from_slice(&(self.entries.len() as u32).to_le_bytes());
        out[8..12].copy_from_slice(&self.version.to_le_bytes());
        match self.version {
            1 => {
                for e in &self.entries {
                    check_v1(e)?;
                    let mut entry = [0u8; V1_ENTRY_LEN];
                    entry[0..4].copy_from_slice(&(e.mtime_sec as u32).to_le_bytes());
                    entry[4..8].copy_from_slice(&(e.size as u32).to_le_bytes());
                    entry[8..8 + e.name.len()].copy_from_slice(e.name.as_bytes());
                    out.extend_from_slice(&entry);
                }
            }
            2 => {
                for e in &self.entries {
                    check_v2(e)?;
                    out.extend_from_slice(&e.mtime_sec.to_le_bytes());
                    out.extend_from_slice(&e.mtime_nsec.to_le_bytes());
                    out.extend_from_slice(&e.size.to_le_bytes());
                    out.extend_from_slice(&e.sha256);
                    out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
                    out.extend_from_slice(e.name.as_bytes());
                }
            }
            v => return Err(CheckError::BadVersion(v)),
        }
        let crc = crc32fast::hash(&out[4..]);
        out[0..4].copy_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Decode and verify the CRC.
    pub fn decode(bytes: &[u8]) -> Result<CheckFile, CheckError> {
        if bytes.len() < HEADER_LEN {
            return Err(CheckError::Truncated(bytes.len()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        let stored = u32_at(0);
        let computed = crc32fast::hash(&bytes[4..]);
        if stored != computed {
            return Err(CheckError::BadCrc { stored, computed });
        }
        let nfiles = u32_at(4);
        let version = u32_at(8);
        if nfiles > MAX_FILES {
            return Err(CheckError::Malformed(format!("{nfiles} files")));
        }
        // Room for as many entries as the bytes can hold, not as many as the header claims.
        let mut entries = Vec::with_capacity((nfiles as usize).min(bytes.len() / V2_FIXED_LEN));
        let mut at = HEADER_LEN;
        match version {
            1 => {
                let expected = HEADER_LEN + nfiles as usize * V1_ENTRY_LEN;
                if bytes.len() < expected {
                    return Err(CheckError::Truncated(bytes.len()));
                }
                if bytes.len() > expected {
                    return Err(CheckError::Malformed(format!(
                        "{} bytes where {nfiles} files take {expected}",
                        bytes.len()
                    )));
                }
                for _ in 0..nfiles {
                    let e = &bytes[at..at + V1_ENTRY_LEN];
                    let field = &e[8..];
                    let len = field
                        .iter()
                        .position(|&c| c == 0)
                        .ok_or_else(|| CheckError::Malformed("name without NUL".into()))?;
                    let name = name_from(&field[..len])?;
                    // Format 1 lists the files of one directory; no writer puts a path in it.
                    if name.contains('/') {
                        return Err(CheckError::Malformed(format!(
                            "{name}: a path in a format 1 check file"
                        )));
                    }
                    entries.push(Entry {
                        name,
                        mtime_sec: u32::from_le_bytes(e[0..4].try_into().unwrap()) as i64,
                        mtime_nsec: 0,
                        size: u32::from_le_bytes(e[4..8].try_into().unwrap()) as u64,
                        sha256: [0; 32],
                    });
                    at += V1_ENTRY_LEN;
                }
            }
            2 => {
                for _ in 0..nfiles {
                    let fixed = V2_FIXED_LEN;
                    let e = bytes
                        .get(at..at + fixed)
                        .ok_or(CheckError::Truncated(bytes.len()))?;
                    let name_len = u16::from_le_bytes(e[52..54].try_into().unwrap()) as usize;
                    let name = bytes
                        .get(at + fixed..at + fixed + name_len)
                        .ok_or(CheckError::Truncated(bytes.len()))?;
                    entries.push(Entry {
                        mtime_sec: i64::from_le_bytes(e[0..8].try_into().unwrap()),
                        mtime_nsec: u32::from_le_bytes(e[8..12].try_into().unwrap()),
                        size: u64::from_le_bytes(e[12..20].try_into().unwrap()),
                        sha256: e[20..52].try_into().unwrap(),
                        name: name_from(name)?,
                    });
                    at += fixed + name_len;
                }
                if at != bytes.len() {
                    return Err(CheckError::Malformed("trailing bytes".into()));
                }
            }
            v => return Err(CheckError::BadVersion(v)),
        }
        // A CRC proves the bytes are the ones written, not that the writer wrote sense.
        check_consistent(&entries)?;
        Ok(CheckFile { version, entries })
    }
}

/// The most bytes a check file with this header can have: a reader refuses a longer file with
/// [`judge_overlong`] instead of holding it in memory. An unknown version counts as version 2
/// and a file count over [`MAX_FILES`] as `MAX_FILES`, so the bound never decides what only
/// the CRC should (a flipped bit in `ver` or `nfiles` is a CRC error first).
pub fn longest_for(header: &[u8; HEADER_LEN]) -> u64 {
    let nfiles = u32::from_le_bytes(header[4..8].try_into().unwrap()).min(MAX_FILES);
    let version = u32::from_le_bytes(header[8..12].try_into().unwrap());
    let longest_entry = if version == 1 {
        V1_ENTRY_LEN
    } else {
        V2_FIXED_LEN + V2_MAX_NAME
    };
    HEADER_LEN as u64 + u64::from(nfiles) * longest_entry as u64
}

/// What [`CheckFile::decode`] would say of a check file longer than [`longest_for`] its
/// header, from the header, the length and the CRC of every byte after the crc field (which
/// the caller computes as it streams the file): a CRC mismatch first, as decode does.
pub fn judge_overlong(header: &[u8; HEADER_LEN], len: u64, computed: u32) -> CheckError {
    let u32_at = |o: usize| u32::from_le_bytes(header[o..o + 4].try_into().unwrap());
    let (stored, nfiles, version) = (u32_at(0), u32_at(4), u32_at(8));
    if stored != computed {
        CheckError::BadCrc { stored, computed }
    } else if nfiles > MAX_FILES {
        CheckError::Malformed(format!("{nfiles} files"))
    } else if version != 1 && version != 2 {
        CheckError::BadVersion(version)
    } else {
        CheckError::Malformed(format!(
            "{len} bytes, more than {nfiles} files can take ({})",
            longest_for(header)
        ))
    }
}

/// A set of more files than [`MAX_FILES`] would make a check file no reader accepts.
pub fn check_count(files: usize) -> Result<(), CheckError> {
    if files > MAX_FILES as usize {
        return Err(CheckError::TooManyFiles(files));
    }
    Ok(())
}

/// What no set can hold, in either format: a time no file can have, or one name twice (it
/// would be loaded twice and counted twice). Checked on encode and decode alike; names are
/// checked one by one ([`check_name`]).
fn check_consistent(entries: &[Entry]) -> Result<(), CheckError> {
    if let Some(e) = entries.iter().find(|e| e.mtime_nsec >= 1_000_000_000) {
        return Err(CheckError::Malformed(format!(
            "{}: {} nanoseconds",
            e.name, e.mtime_nsec
        )));
    }
    let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(CheckError::Malformed(format!("{} listed twice", pair[0])));
    }
    Ok(())
}

fn name_from(bytes: &[u8]) -> Result<String, CheckError> {
    let name = std::str::from_utf8(bytes)
        .map_err(|_| CheckError::Malformed("name is not UTF-8".into()))?;
    check_name(name)?;
    Ok(name.to_string())
}

/// Names are relative, without `..`, `.` or empty components, so a check file can never make
/// load write outside its directory, and without NUL, which would end a format-1 name early.
/// Checked on encode and decode alike.
fn check_name(name: &str) -> Result<(), CheckError> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name.contains('\0')
        || name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(CheckError::Malformed(format!("unsafe name {name:?}")));
    }
    Ok(())
}

/// Whether an entry fits format 2: a path of 1 to 4,095 bytes.
pub fn check_v2(e: &Entry) -> Result<(), CheckError> {
    if e.name.is_empty() || e.name.len() > V2_MAX_NAME {
        return Err(CheckError::Malformed(format!(
            "{}...: a path of {} bytes (format 2 holds up to {V2_MAX_NAME})",
            e.name.chars().take(40).collect::<String>(),
            e.name.len()
        )));
    }
    Ok(())
}

/// Whether an entry fits format 1.
pub fn check_v1(e: &Entry) -> Result<(), CheckError> {
    let fail = |reason| CheckError::TooBigForV1 {
        name: e.name.clone(),
        reason,
    };
    if e.name.len() > V1_MAX_NAME {
        return Err(fail("name longer than 119 bytes"));
    }
    if e.name.contains('/') {
        return Err(fail("in a subdirectory"));
    }
    if e.size >= 1 << 32 {
        return Err(fail("4 GiB or larger"));
    }
    if !(0..1 << 32).contains(&e.mtime_sec) {
        return Err(fail("modification time outside 1970..2106"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(name: &str, size: u64, mtime: i64) -> Entry {
        Entry {
            name: name.into(),
            size,
            mtime_sec: mtime,
            mtime_nsec: 0,
            sha256: [0; 32],
        }
    }

    #[test]
    fn a_path_in_a_v1_check_file_is_refused_even_with_a_right_crc() {
        // Found by fuzz/fuzz_targets/check_file.rs: decode took what encode never writes.
        let mut bytes = CheckFile {
            version: 1,
            entries: vec![entry("a_b", 3, 5)],
        }
        .encode()
        .unwrap();
        bytes[HEADER_LEN + 8 + 1] = b'/';
        let crc = crc32fast::hash(&bytes[4..]);
        bytes[..4].copy_from_slice(&crc.to_le_bytes());
        let err = CheckFile::decode(&bytes).unwrap_err().to_string();
        assert!(
            err.contains("a/b: a path in a format 1 check file"),
            "{err}"
        );
    }

    #[test]
    fn v1_layout() {
        let c = CheckFile {
            version: 1,
            entries: vec![entry("a.dat", 3, 7)],
        };
        let b = c.encode().unwrap();
        assert_eq!(b.len(), 16 + 128);
        assert_eq!(&b[4..8], &1u32.to_le_bytes());
        assert_eq!(&b[8..12], &1u32.to_le_bytes());
        assert_eq!(&b[16..20], &7u32.to_le_bytes());
        assert_eq!(&b[20..24], &3u32.to_le_bytes());
        assert_eq!(&b[24..29], b"a.dat");
        assert_eq!(b[29], 0);
        assert_eq!(&b[0..4], &crc32fast::hash(&b[4..]).to_le_bytes());
    }

    #[test]
    fn v1_refuses_what_it_cannot_hold() {
        let long = "n".repeat(120);
        for e in [
            entry(&long, 1, 1),
            entry("d/x", 1, 1),
            entry("big", 1 << 32, 1),
        ] {
            let err = CheckFile {
                version: 1,
                entries: vec![e],
            }
            .encode()
            .unwrap_err();
            assert!(matches!(err, CheckError::TooBigForV1 { .. }), "{err}");
        }
        assert!(CheckFile {
            version: 1,
            entries: vec![entry(&"n".repeat(119), 1, 1)]
        }
        .encode()
        .is_ok());
    }

    #[test]
    fn v2_holds_paths_up_to_4095_bytes() {
        assert!(check_v2(&entry(&"p".repeat(V2_MAX_NAME), 1, 1)).is_ok());
        let long = entry(&"p".repeat(V2_MAX_NAME + 1), 1, 1);
        assert!(check_v2(&long)
            .unwrap_err()
            .to_string()
            .contains("4096 bytes"));
        let c = CheckFile {
            version: 2,
            entries: vec![long],
        };
        assert!(c.encode().is_err());
    }

    #[test]
    fn unsafe_names_are_refused_on_decode() {
        for name in ["../etc/passwd", "/abs", "a//b", "./x"] {
            // A format-2 entry as a careless writer would put it down (encode refuses it).
            let mut e = vec![0u8; V2_FIXED_LEN - 2];
            e.extend_from_slice(&(name.len() as u16).to_le_bytes());
            e.extend_from_slice(name.as_bytes());
            assert!(
                matches!(
                    CheckFile::decode(&unchecked(2, &e, 1)),
                    Err(CheckError::Malformed(_))
                ),
                "{name}"
            );
        }
    }

    /// Header and entries as a writer that does not check them would put them down.
    fn unchecked(version: u32, entries: &[u8], nfiles: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&nfiles.to_le_bytes());
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(entries);
        let crc = crc32fast::hash(&out[4..]);
        out[0..4].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn malformed(bytes: &[u8]) -> String {
        match CheckFile::decode(bytes) {
            Err(CheckError::Malformed(why)) => why,
            other => panic!("not refused as malformed: {other:?}"),
        }
    }

    #[test]
    fn sense_is_checked_behind_a_right_crc() {
        let one = CheckFile {
            version: 2,
            entries: vec![entry("a", 1, 1)],
        }
        .encode()
        .unwrap();
        let body = &one[HEADER_LEN..];
        // One name twice, in either format.
        let twice = [body, body].concat();
        assert!(malformed(&unchecked(2, &twice, 2)).contains("listed twice"));
        let v1 = CheckFile {
            version: 1,
            entries: vec![entry("a", 1, 1)],
        }
        .encode()
        .unwrap();
        let v1_twice = [&v1[HEADER_LEN..], &v1[HEADER_LEN..]].concat();
        assert!(malformed(&unchecked(1, &v1_twice, 2)).contains("listed twice"));
        // A nanosecond field of a second or more.
        let mut late = body.to_vec();
        late[8..12].copy_from_slice(&1_000_000_000u32.to_le_bytes());
        assert!(malformed(&unchecked(2, &late, 1)).contains("nanoseconds"));
        // Bytes after the last format-1 entry.
        let mut long = v1[HEADER_LEN..].to_vec();
        long.push(0);
        assert!(malformed(&unchecked(1, &long, 1)).contains("take"));
        // Too long for its header: the bound is exact for format 1, and the verdict on a file
        // over it is decode's, CRC first.
        let header: [u8; HEADER_LEN] = v1[..HEADER_LEN].try_into().unwrap();
        assert_eq!(longest_for(&header), v1.len() as u64);
        let crc_after = |bytes: &[u8]| crc32fast::hash(&bytes[4..]);
        let over = [&v1[..], &[0]].concat();
        assert!(matches!(
            judge_overlong(&header, over.len() as u64, crc_after(&over)),
            CheckError::BadCrc { .. }
        ));
        let over = unchecked(1, &long, 1);
        let header: [u8; HEADER_LEN] = over[..HEADER_LEN].try_into().unwrap();
        let verdict = judge_overlong(&header, over.len() as u64, crc_after(&over));
        assert!(matches!(verdict, CheckError::Malformed(ref why) if why.contains("can take")));
        let over = unchecked(7, &long, 0);
        let header: [u8; HEADER_LEN] = over[..HEADER_LEN].try_into().unwrap();
        let verdict = judge_overlong(&header, over.len() as u64, crc_after(&over));
        assert!(matches!(verdict, CheckError::BadVersion(7)));
        // A header claiming a million files in 16 bytes is short, and allocates nothing big.
        assert!(matches!(
            CheckFile::decode(&unchecked(2, &[], MAX_FILES)),
            Err(CheckError::Truncated(16))
        ));
        // The encoder refuses what the decoder would: too many files, an unsafe name, or a name
        // twice.
        for name in ["../up", "/abs", "a\0b", ""] {
            let bad = CheckFile {
                version: 2,
                entries: vec![entry(name, 1, 1)],
            };
            assert!(
                matches!(bad.encode(), Err(CheckError::Malformed(_))),
                "{name:?}"
            );
        }
        let many = CheckFile {
            version: 1,
            entries: vec![entry("a", 1, 1); MAX_FILES as usize + 1],
        };
        assert!(matches!(many.encode(), Err(CheckError::TooManyFiles(_))));
        let dup = CheckFile {
            version: 2,
            entries: vec![entry("a", 1, 1), entry("a", 2, 2)],
        };
        assert!(matches!(dup.encode(), Err(CheckError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn every_single_bit_flip_is_detected(bit in 0usize..(16 + 2 * 128) * 8) {
            let c = CheckFile { version: 1, entries: vec![entry("a", 1, 2), entry("b", 3, 4)] };
            let mut b = c.encode().unwrap();
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(CheckFile::decode(&b).is_err());
        }

        #[test]
        fn round_trip_v1(names in proptest::collection::btree_set("[a-zA-Z0-9._-]{1,119}", 0..20),
                         size in 0u64..(1 << 32), mtime in 0i64..(1 << 32)) {
            let entries: Vec<Entry> = names.into_iter().filter(|n| n != "." && n != "..").map(|n| entry(&n, size, mtime)).collect();
            let c = CheckFile { version: 1, entries };
            prop_assert_eq!(CheckFile::decode(&c.encode().unwrap()).unwrap(), c);
        }

        #[test]
        fn round_trip_v2(names in proptest::collection::btree_set("[a-z]{1,8}(/[a-z]{1,8}){0,3}", 0..20),
                         size in any::<u64>(), mtime in any::<i64>(), nsec in 0u32..1_000_000_000, sha in any::<[u8; 32]>()) {
            let entries: Vec<Entry> = names.into_iter().map(|n| Entry { name: n, size, mtime_sec: mtime, mtime_nsec: nsec, sha256: sha }).collect();
            let c = CheckFile { version: 2, entries };
            prop_assert_eq!(CheckFile::decode(&c.encode().unwrap()).unwrap(), c);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = CheckFile::decode(&bytes);
        }
    }
}
