//! The bytes of a fanotify read in FID mode: `fanotify_event_metadata` followed by info records
//! (`fanotify_event_info_fid` with a `file_handle` and, for the `*_DFID_NAME` kinds, a name).
//!
//! nix 0.32 reads only the metadata, so this parser does the rest. It borrows from the read
//! buffer (no allocation), reads every field with `from_ne_bytes` (no alignment assumed) and
//! checks every length against what is left, so a short or corrupt buffer gives an error,
//! never a panic or an out-of-bounds read (the fuzz-style test below feeds it random bytes).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// `sizeof(struct fanotify_event_metadata)`.
const METADATA_LEN: usize = 24;
/// `FANOTIFY_METADATA_VERSION`.
const METADATA_VERSION: u8 = 3;
/// `sizeof(struct fanotify_event_info_header)`.
const INFO_HEADER_LEN: usize = 4;
/// Info header + `__kernel_fsid_t`.
const FID_HANDLE_OFFSET: usize = INFO_HEADER_LEN + 8;
/// `handle_bytes` + `handle_type` of `struct file_handle`.
const FILE_HANDLE_HEADER_LEN: usize = 8;
/// `MAX_HANDLE_SZ` in the kernel: a larger handle is corrupt.
pub(crate) const MAX_HANDLE_BYTES: usize = 128;

/// The buffer does not hold what the kernel promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

/// One event: its mask, its fd (always `FAN_NOFD` in FID mode) and its info records.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawEvent<'a> {
    pub(crate) mask: u64,
    pub(crate) fd: i32,
    pub(crate) info: &'a [u8],
}

/// A `file_handle` as it stands in a record: `handle_bytes`, `handle_type`, `f_handle`.
/// These bytes are the cache key and what `open_by_handle_at` needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Handle<'a>(pub(crate) &'a [u8]);

/// A directory handle and a name in it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DirName<'a> {
    pub(crate) dir: Handle<'a>,
    pub(crate) name: &'a OsStr,
}

/// The info records of one event that this crate uses.
#[derive(Debug, Default)]
pub(crate) struct Records<'a> {
    /// `FAN_EVENT_INFO_TYPE_DFID_NAME`: the directory and the name (create, delete).
    pub(crate) dfid_name: Option<DirName<'a>>,
    /// `FAN_EVENT_INFO_TYPE_OLD_DFID_NAME`: where a rename started.
    pub(crate) old: Option<DirName<'a>>,
    /// `FAN_EVENT_INFO_TYPE_NEW_DFID_NAME`: where a rename ended.
    pub(crate) new: Option<DirName<'a>>,
    /// `FAN_EVENT_INFO_TYPE_FID`: the object itself (FAN_REPORT_TARGET_FID).
    pub(crate) fid: Option<Handle<'a>>,
}

/// The events of one read, in order. Stops at the first malformed event.
pub(crate) struct Events<'a> {
    rest: &'a [u8],
}

pub(crate) fn events(buf: &[u8]) -> Events<'_> {
    Events { rest: buf }
}

impl<'a> Iterator for Events<'a> {
    type Item = Result<RawEvent<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let result = split_event(self.rest);
        match result {
            Ok((event, rest)) => {
                self.rest = rest;
                Some(Ok(event))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

fn split_event(buf: &[u8]) -> Result<(RawEvent<'_>, &[u8]), Malformed> {
    if buf.len() < METADATA_LEN {
        return Err(Malformed("short event metadata"));
    }
    let event_len = u32_at(buf, 0) as usize;
    let version = buf[4];
    let metadata_len = u16_at(buf, 6) as usize;
    if version != METADATA_VERSION {
        return Err(Malformed("unknown fanotify metadata version"));
    }
    if metadata_len < METADATA_LEN || event_len < metadata_len || event_len > buf.len() {
        return Err(Malformed("event length out of bounds"));
    }
    let mask = u64_at(buf, 8);
    let fd = i32::from_ne_bytes(array(buf, 16));
    let event = RawEvent {
        mask,
        fd,
        info: &buf[metadata_len..event_len],
    };
    Ok((event, &buf[event_len..]))
}

/// The info records of one event.
pub(crate) fn records(mut info: &[u8]) -> Result<Records<'_>, Malformed> {
    let mut records = Records::default();
    while !info.is_empty() {
        if info.len() < INFO_HEADER_LEN {
            return Err(Malformed("short info header"));
        }
        let kind = info[0];
        let len = u16_at(info, 2) as usize;
        if len < INFO_HEADER_LEN || len > info.len() {
            return Err(Malformed("info record length out of bounds"));
        }
        let record = &info[..len];
        info = &info[len..];
        match kind {
            libc::FAN_EVENT_INFO_TYPE_FID => records.fid = Some(fid(record)?.0),
            libc::FAN_EVENT_INFO_TYPE_DFID_NAME => records.dfid_name = Some(dir_name(record)?),
            libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME => records.old = Some(dir_name(record)?),
            libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME => records.new = Some(dir_name(record)?),
            // DFID without a name, pidfd, error records: not asked for; skipped.
            _ => {}
        }
    }
    Ok(records)
}

/// A fid record: the handle and what follows it (the name area of a DFID_NAME record).
fn fid(record: &[u8]) -> Result<(Handle<'_>, &[u8]), Malformed> {
    if record.len() < FID_HANDLE_OFFSET + FILE_HANDLE_HEADER_LEN {
        return Err(Malformed("short fid record"));
    }
    let handle_bytes = u32_at(record, FID_HANDLE_OFFSET) as usize;
    if handle_bytes > MAX_HANDLE_BYTES {
        return Err(Malformed("file handle too long"));
    }
    let end = FID_HANDLE_OFFSET + FILE_HANDLE_HEADER_LEN + handle_bytes;
    if end > record.len() {
        return Err(Malformed("file handle out of bounds"));
    }
    Ok((Handle(&record[FID_HANDLE_OFFSET..end]), &record[end..]))
}

fn dir_name(record: &[u8]) -> Result<DirName<'_>, Malformed> {
    let (dir, rest) = fid(record)?;
    let nul = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(Malformed("name without its NUL"))?;
    Ok(DirName {
        dir,
        name: OsStr::from_bytes(&rest[..nul]),
    })
}

impl Handle<'_> {
    /// `handle_type` of the `file_handle`.
    pub(crate) fn handle_type(&self) -> i32 {
        i32::from_ne_bytes(array(self.0, 4))
    }

    /// `f_handle`, the opaque bytes.
    pub(crate) fn opaque(&self) -> &[u8] {
        &self.0[FILE_HANDLE_HEADER_LEN..]
    }
}

/// A name the kernel gave that can be joined to a directory path safely: one component.
pub(crate) fn is_plain_name(name: &OsStr) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty() && bytes != b"." && bytes != b".." && !bytes.contains(&b'/')
}

fn array<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[at..at + N]);
    out
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes(array(buf, at))
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(array(buf, at))
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(array(buf, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One info record to build: its kind, the handle's bytes, the name if any.
    type RecordSpec<'a> = (u8, &'a [u8], Option<&'a [u8]>);

    /// Builds the bytes of one event the way the kernel lays them out.
    fn event_bytes(mask: u64, records: &[RecordSpec<'_>]) -> Vec<u8> {
        let mut info = Vec::new();
        for (kind, handle, name) in records {
            let mut rec = vec![*kind, 0, 0, 0];
            rec.extend_from_slice(&[7u8; 8]); // fsid
            rec.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
            rec.extend_from_slice(&1i32.to_ne_bytes());
            rec.extend_from_slice(handle);
            if let Some(name) = name {
                rec.extend_from_slice(name);
                rec.push(0);
            }
            while rec.len() % 4 != 0 {
                rec.push(0);
            }
            let len = rec.len() as u16;
            rec[2..4].copy_from_slice(&len.to_ne_bytes());
            info.extend_from_slice(&rec);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&((METADATA_LEN + info.len()) as u32).to_ne_bytes());
        out.push(METADATA_VERSION);
        out.push(0);
        out.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        out.extend_from_slice(&mask.to_ne_bytes());
        out.extend_from_slice(&libc::FAN_NOFD.to_ne_bytes());
        out.extend_from_slice(&0i32.to_ne_bytes());
        out.extend_from_slice(&info);
        out
    }

    #[test]
    fn a_rename_event_gives_both_ends_and_the_object() {
        let mut buf = event_bytes(
            libc::FAN_RENAME,
            &[
                (
                    libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
                    b"dir-a...",
                    Some(b"old"),
                ),
                (
                    libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
                    b"dir-b...",
                    Some(b"new name"),
                ),
                (libc::FAN_EVENT_INFO_TYPE_FID, b"object..", None),
            ],
        );
        buf.extend(event_bytes(libc::FAN_Q_OVERFLOW, &[]));
        let all: Vec<_> = events(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].mask, libc::FAN_RENAME);
        let r = records(all[0].info).unwrap();
        let old = r.old.unwrap();
        assert_eq!(old.dir.opaque(), b"dir-a...");
        assert_eq!(old.dir.handle_type(), 1);
        assert_eq!(old.name, "old");
        assert_eq!(r.new.unwrap().name, "new name");
        assert_eq!(r.fid.unwrap().opaque(), b"object..");
        assert!(r.dfid_name.is_none());
        assert_eq!(all[1].mask, libc::FAN_Q_OVERFLOW);
        assert!(records(all[1].info).unwrap().fid.is_none());
    }

    #[test]
    fn truncated_events_are_errors_not_panics() {
        let buf = event_bytes(
            libc::FAN_CREATE,
            &[(
                libc::FAN_EVENT_INFO_TYPE_DFID_NAME,
                b"12345678",
                Some(b"name"),
            )],
        );
        for cut in 0..buf.len() {
            let short = &buf[..cut];
            for event in events(short).flatten() {
                let _ = records(event.info);
            }
        }
    }

    #[test]
    fn random_buffers_never_panic() {
        // A small xorshift generator: deterministic, no dependency.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let template = event_bytes(
            libc::FAN_RENAME,
            &[
                (
                    libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
                    b"dir-a...",
                    Some(b"old"),
                ),
                (
                    libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
                    b"dir-b...",
                    Some(b"new"),
                ),
                (libc::FAN_EVENT_INFO_TYPE_FID, b"object..", None),
            ],
        );
        for round in 0..20_000 {
            let mut buf = if round % 2 == 0 {
                template.clone()
            } else {
                (0..(next() % 200) as usize).map(|_| next() as u8).collect()
            };
            // Flip some bytes (lengths, kinds, handle sizes included).
            for _ in 0..(next() % 6) {
                if !buf.is_empty() {
                    let at = (next() as usize) % buf.len();
                    buf[at] = next() as u8;
                }
            }
            for event in events(&buf) {
                let Ok(event) = event else { break };
                if let Ok(r) = records(event.info) {
                    for h in [r.fid, r.old.map(|d| d.dir), r.new.map(|d| d.dir)]
                        .into_iter()
                        .flatten()
                    {
                        assert!(h.opaque().len() <= MAX_HANDLE_BYTES);
                        let _ = h.handle_type();
                    }
                }
            }
        }
    }

    #[test]
    fn only_single_components_are_plain_names() {
        assert!(is_plain_name(OsStr::new("a b")));
        for bad in ["", ".", "..", "a/b", "/"] {
            assert!(!is_plain_name(OsStr::new(bad)), "{bad:?}");
        }
    }
}
