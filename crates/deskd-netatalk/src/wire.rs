//! The `dbd` CNID wire format, byte for byte (research/netatalk.md §1, Netatalk's
//! `include/atalk/cnid_bdb_private.h`): raw C structs of the host ABI. This build targets
//! 64-bit Linux (LP64): `int` 4 bytes, `dev_t`/`ino_t`/`size_t`/pointers 8, native byte order,
//! except CNIDs and parent DIDs, which are always in network order.
//!
//! ```text
//! handshake  i32 len[3] (native), then volume name (len[0], NUL included), volume path (len[1],
//!            NUL included), user name (len[2], may be 0)
//! request    48 bytes: op i32 @0 | cnid u32 BE @4 | dev u64 @8 | ino u64 @16 | type u32 @24 |
//!            did u32 BE @28 | name pointer @32 (junk) | namelen u64 @40; then namelen bytes
//! reply      32 bytes: result i32 @0 | cnid u32 BE @4 | did u32 BE @8 | pad @12 |
//!            name pointer @16 (0) | namelen u64 @24; then namelen bytes
//! ```

use std::io::{self, Read, Write};

/// Size of a request header.
pub const REQUEST_LEN: usize = 48;
/// Size of a reply header.
pub const REPLY_LEN: usize = 32;
/// Longest name a request may carry (afpd sends at most MAXPATHLEN).
pub const MAX_NAME: usize = 4096;
/// Longest volume name, path or user name in the handshake.
pub const MAX_HANDSHAKE_STRING: usize = 4096;

/// Operations (`CNID_DBD_OP_*`).
pub mod op {
    pub const OPEN: i32 = 1;
    pub const CLOSE: i32 = 2;
    pub const ADD: i32 = 3;
    pub const GET: i32 = 4;
    pub const RESOLVE: i32 = 5;
    pub const LOOKUP: i32 = 6;
    pub const UPDATE: i32 = 7;
    pub const DELETE: i32 = 8;
    pub const MANGLE_ADD: i32 = 9;
    pub const MANGLE_GET: i32 = 10;
    pub const GETSTAMP: i32 = 11;
    pub const REBUILD_ADD: i32 = 12;
    pub const SEARCH: i32 = 13;
    pub const WIPE: i32 = 14;
}

/// Results (`CNID_DBD_RES_*`).
pub mod res {
    pub const OK: i32 = 0;
    pub const NOTFOUND: i32 = 1;
    pub const ERR_DB: i32 = 2;
    pub const ERR_MAX: i32 = 3;
    pub const ERR_DUPLCNID: i32 = 4;
}

/// Errors reading the wire.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("{what} of {len} bytes is over the {max}-byte limit")]
    TooLong {
        what: &'static str,
        len: u64,
        max: usize,
    },
    #[error("handshake: {0}")]
    Handshake(String),
}

/// The connection's opening: which volume afpd means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub volume_name: Vec<u8>,
    pub volume_path: Vec<u8>,
    pub user: Vec<u8>,
}

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub op: i32,
    pub cnid: u32,
    pub dev: u64,
    pub ino: u64,
    /// 0 = file, 1 = directory.
    pub kind: u32,
    pub did: u32,
    pub name: Vec<u8>,
}

impl Request {
    /// A request without dev/ino or type (GET, RESOLVE, UPDATE, DELETE, SEARCH, …).
    pub fn new(op: i32, cnid: u32, did: u32, name: &[u8]) -> Request {
        Request {
            op,
            cnid,
            dev: 0,
            ino: 0,
            kind: 0,
            did,
            name: name.to_vec(),
        }
    }
}

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub result: i32,
    pub cnid: u32,
    pub did: u32,
    pub payload: Vec<u8>,
}

impl Reply {
    pub fn status(result: i32) -> Reply {
        Reply {
            result,
            cnid: 0,
            did: 0,
            payload: Vec::new(),
        }
    }

    pub fn id(cnid: u32) -> Reply {
        Reply {
            cnid,
            ..Reply::status(res::OK)
        }
    }
}

fn string_without_nul(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

/// Read the handshake; the strings come back without their NULs.
pub fn read_handshake(r: &mut impl Read) -> Result<Handshake, WireError> {
    let mut lens = [0u8; 12];
    r.read_exact(&mut lens)?;
    let mut strings = Vec::with_capacity(3);
    for (i, what) in ["volume name", "volume path", "user name"]
        .into_iter()
        .enumerate()
    {
        let len = i32::from_ne_bytes(lens[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        if len < 0 {
            return Err(WireError::Handshake(format!(
                "negative length of the {what}"
            )));
        }
        if len as usize > MAX_HANDSHAKE_STRING {
            return Err(WireError::TooLong {
                what,
                len: len as u64,
                max: MAX_HANDSHAKE_STRING,
            });
        }
        let mut s = vec![0u8; len as usize];
        r.read_exact(&mut s)?;
        strings.push(string_without_nul(s));
    }
    let user = strings.pop().expect("three strings");
    let volume_path = strings.pop().expect("three strings");
    let volume_name = strings.pop().expect("three strings");
    Ok(Handshake {
        volume_name,
        volume_path,
        user,
    })
}

/// Encode a handshake as afpd sends it (the strings get their NULs; an empty user has none).
pub fn encode_handshake(h: &Handshake) -> Vec<u8> {
    let with_nul = |s: &[u8]| {
        let mut v = s.to_vec();
        v.push(0);
        v
    };
    let name = with_nul(&h.volume_name);
    let path = with_nul(&h.volume_path);
    let user = if h.user.is_empty() {
        Vec::new()
    } else {
        with_nul(&h.user)
    };
    let mut out = Vec::new();
    for s in [&name, &path, &user] {
        out.extend_from_slice(&(s.len() as i32).to_ne_bytes());
    }
    for s in [name, path, user] {
        out.extend_from_slice(&s);
    }
    out
}

/// Read one request; `Ok(None)` at a clean end of the stream.
pub fn read_request(r: &mut impl Read) -> Result<Option<Request>, WireError> {
    let mut head = [0u8; REQUEST_LEN];
    let mut got = 0;
    while got < REQUEST_LEN {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let u32_be = |at: usize| u32::from_be_bytes(head[at..at + 4].try_into().expect("4 bytes"));
    let u64_ne = |at: usize| u64::from_ne_bytes(head[at..at + 8].try_into().expect("8 bytes"));
    let namelen = u64_ne(40);
    if namelen > MAX_NAME as u64 {
        return Err(WireError::TooLong {
            what: "name",
            len: namelen,
            max: MAX_NAME,
        });
    }
    let mut name = vec![0u8; namelen as usize];
    r.read_exact(&mut name)?;
    Ok(Some(Request {
        op: i32::from_ne_bytes(head[0..4].try_into().expect("4 bytes")),
        cnid: u32_be(4),
        dev: u64_ne(8),
        ino: u64_ne(16),
        kind: u32::from_ne_bytes(head[24..28].try_into().expect("4 bytes")),
        did: u32_be(28),
        name,
    }))
}

/// Encode a request as afpd does (the pointer field is left 0).
pub fn encode_request(q: &Request) -> Vec<u8> {
    let mut out = vec![0u8; REQUEST_LEN];
    out[0..4].copy_from_slice(&q.op.to_ne_bytes());
    out[4..8].copy_from_slice(&q.cnid.to_be_bytes());
    out[8..16].copy_from_slice(&q.dev.to_ne_bytes());
    out[16..24].copy_from_slice(&q.ino.to_ne_bytes());
    out[24..28].copy_from_slice(&q.kind.to_ne_bytes());
    out[28..32].copy_from_slice(&q.did.to_be_bytes());
    out[40..48].copy_from_slice(&(q.name.len() as u64).to_ne_bytes());
    out.extend_from_slice(&q.name);
    out
}

/// Encode a reply.
pub fn encode_reply(p: &Reply) -> Vec<u8> {
    let mut out = vec![0u8; REPLY_LEN];
    out[0..4].copy_from_slice(&p.result.to_ne_bytes());
    out[4..8].copy_from_slice(&p.cnid.to_be_bytes());
    out[8..12].copy_from_slice(&p.did.to_be_bytes());
    out[24..32].copy_from_slice(&(p.payload.len() as u64).to_ne_bytes());
    out.extend_from_slice(&p.payload);
    out
}

/// Read a reply (the client's side; used by tests and tools).
pub fn read_reply(r: &mut impl Read) -> Result<Reply, WireError> {
    let mut head = [0u8; REPLY_LEN];
    r.read_exact(&mut head)?;
    let len = u64::from_ne_bytes(head[24..32].try_into().expect("8 bytes"));
    if len > (MAX_NAME + 64) as u64 {
        return Err(WireError::TooLong {
            what: "reply",
            len,
            max: MAX_NAME + 64,
        });
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    Ok(Reply {
        result: i32::from_ne_bytes(head[0..4].try_into().expect("4 bytes")),
        cnid: u32::from_be_bytes(head[4..8].try_into().expect("4 bytes")),
        did: u32::from_be_bytes(head[8..12].try_into().expect("4 bytes")),
        payload,
    })
}

/// The record RESOLVE returns: `CNID(4) | dev(8, BE) | ino(8, BE) | type(4, BE) | DID(4) |
/// name | NUL` (afpd reads the name at offset 28).
pub fn resolve_record(cnid: u32, dev: u64, ino: u64, kind: u32, did: u32, name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(29 + name.len());
    out.extend_from_slice(&cnid.to_be_bytes());
    out.extend_from_slice(&dev.to_be_bytes());
    out.extend_from_slice(&ino.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&did.to_be_bytes());
    out.extend_from_slice(name);
    out.push(0);
    out
}

/// Write all of `bytes`.
pub fn send(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    w.write_all(bytes)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn requests_round_trip(op in any::<i32>(), cnid in any::<u32>(), dev in any::<u64>(),
                               ino in any::<u64>(), kind in 0u32..2, did in any::<u32>(),
                               name in proptest::collection::vec(any::<u8>(), 0..300)) {
            let q = Request { op, cnid, dev, ino, kind, did, name };
            let bytes = encode_request(&q);
            prop_assert_eq!(bytes.len(), REQUEST_LEN + q.name.len());
            prop_assert_eq!(read_request(&mut bytes.as_slice()).unwrap(), Some(q));
        }

        #[test]
        fn replies_round_trip(result in 0i32..5, cnid in any::<u32>(), did in any::<u32>(),
                              payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let p = Reply { result, cnid, did, payload };
            prop_assert_eq!(read_reply(&mut encode_reply(&p).as_slice()).unwrap(), p);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = read_request(&mut bytes.as_slice());
            let _ = read_handshake(&mut bytes.as_slice());
        }
    }

    #[test]
    fn ids_are_in_network_order_and_the_rest_native() {
        let q = Request {
            op: op::ADD,
            cnid: 0x0102_0304,
            dev: 5,
            ino: 6,
            kind: 1,
            did: 0x0a0b_0c0d,
            name: b"x".to_vec(),
        };
        let b = encode_request(&q);
        assert_eq!(&b[4..8], &[1, 2, 3, 4]);
        assert_eq!(&b[28..32], &[0x0a, 0x0b, 0x0c, 0x0d]);
        assert_eq!(&b[0..4], &3i32.to_ne_bytes());
        assert_eq!(&b[8..16], &5u64.to_ne_bytes());
        assert_eq!(&b[40..48], &1u64.to_ne_bytes());
        assert_eq!(&b[48..], b"x");
    }

    #[test]
    fn oversized_names_are_refused_before_reading_them() {
        let mut b = encode_request(&Request {
            op: op::GET,
            cnid: 0,
            dev: 0,
            ino: 0,
            kind: 0,
            did: 2,
            name: Vec::new(),
        });
        b[40..48].copy_from_slice(&(u64::MAX).to_ne_bytes());
        assert!(matches!(
            read_request(&mut b.as_slice()),
            Err(WireError::TooLong { .. })
        ));
    }

    #[test]
    fn handshakes_round_trip() {
        let h = Handshake {
            volume_name: b"Public".to_vec(),
            volume_path: b"/srv/public".to_vec(),
            user: Vec::new(),
        };
        assert_eq!(
            read_handshake(&mut encode_handshake(&h).as_slice()).unwrap(),
            h
        );
    }
}
