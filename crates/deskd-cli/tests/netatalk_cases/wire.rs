//! afpd's CNID protocol (Netatalk `dbd`) served from deskd, with requests built byte by byte
//! as afpd sends them; every answer is checked against the desktop through `dt` and `sqlite3`.
//! Each case takes the listener it runs through: `netatalk.rs` runs them through the
//! standalone bridge, `netatalk_inserve.rs` through `deskd serve`'s own listener.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use crate::common::*;
use deskd_netatalk::wire::{self, op, res, Reply, Request};

/// The `#[test]`s of these cases, each run through afpd's listener `$via`.
#[macro_export]
macro_rules! wire_cases {
    ($via:expr) => {
        #[test]
        fn afpd_requests_keep_ids_in_the_deskd_desktop() {
            wire_cases::afpd_requests_keep_ids_in_the_deskd_desktop($via)
        }
        #[test]
        fn an_add_caught_by_a_reopening_is_sent_again() {
            wire_cases::an_add_caught_by_a_reopening_is_sent_again($via)
        }
        #[test]
        fn an_add_is_never_answered_with_an_error_that_ends_the_session() {
            wire_cases::an_add_is_never_answered_with_an_error_that_ends_the_session($via)
        }
        #[test]
        fn the_bridge_makes_afpds_vol_dbpath_folder() {
            wire_cases::the_bridge_makes_afpds_vol_dbpath_folder($via)
        }
        #[test]
        fn bad_connections_are_closed() {
            wire_cases::bad_connections_are_closed($via)
        }
    };
}

pub fn call(s: &mut TcpStream, q: Request) -> Reply {
    s.write_all(&wire::encode_request(&q)).unwrap();
    wire::read_reply(s).unwrap()
}

pub fn request(op: i32, cnid: u32, did: u32, name: &[u8]) -> Request {
    Request::new(op, cnid, did, name)
}

/// ADD as afpd sends it: the object's dev/ino from stat, its type, and a hint (0: none).
pub fn add(s: &mut TcpStream, path: &std::path::Path, did: u32, hint: u32) -> Reply {
    let m = std::fs::symlink_metadata(path).unwrap();
    call(
        s,
        Request {
            op: op::ADD,
            cnid: hint,
            dev: m.dev(),
            ino: m.ino(),
            kind: m.is_dir() as u32,
            did,
            name: path.file_name().unwrap().as_encoded_bytes().to_vec(),
        },
    )
}
/// An afpd connection to the volume at `path` (afp.conf's `[Public]`).
pub fn afpd(cnid: &Cnid, path: &std::path::Path) -> TcpStream {
    cnid.afpd(path, b"Public")
}

pub fn afpd_requests_keep_ids_in_the_deskd_desktop(via: Via) {
    let mut env = Env::new(&["vol"]);
    let cnid = env.serve_cnid(via, &["vol"], "", None);
    let mut s = afpd(&cnid, &env.path("vol"));
    assert_eq!(call(&mut s, request(op::OPEN, 0, 0, b"")).result, res::OK);

    // ADD registers (the same answer twice); dt sees the ID.
    std::fs::write(env.path("vol/a"), b"x").unwrap();
    let a = add(&mut s, &env.path("vol/a"), 2, 0);
    assert_eq!(a.result, res::OK);
    assert!(a.cnid >= 17);
    assert_eq!(add(&mut s, &env.path("vol/a"), 2, 0).cnid, a.cnid);
    assert_eq!(env.id_of(&env.path("vol/a")), a.cnid);
    // GET and LOOKUP by parent and name; LOOKUP also wants the right type.
    assert_eq!(call(&mut s, request(op::GET, 0, 2, b"a")).cnid, a.cnid);
    assert_eq!(call(&mut s, request(op::LOOKUP, 0, 2, b"a")).cnid, a.cnid);
    let mut as_dir = request(op::LOOKUP, 0, 2, b"a");
    as_dir.kind = 1;
    assert_eq!(call(&mut s, as_dir).result, res::NOTFOUND);
    assert_eq!(
        call(&mut s, request(op::GET, 0, 2, b"none")).result,
        res::NOTFOUND
    );
    // RESOLVE: the parent, and the record with the name at offset 28.
    let r = call(&mut s, request(op::RESOLVE, a.cnid, 0, b""));
    assert_eq!((r.result, r.did), (res::OK, 2));
    assert_eq!(&r.payload[..4], &a.cnid.to_be_bytes());
    assert_eq!(&r.payload[28..], b"a\0");

    // A move done by afpd, then UPDATE: the same ID at the new place.
    std::fs::create_dir(env.path("vol/dir")).unwrap();
    let dir = add(&mut s, &env.path("vol/dir"), 2, 0);
    std::fs::rename(env.path("vol/a"), env.path("vol/dir/b")).unwrap();
    let u = call(&mut s, request(op::UPDATE, a.cnid, dir.cnid, b"b"));
    assert_eq!((u.result, u.cnid), (res::OK, a.cnid));
    assert_eq!(env.id_of(&env.path("vol/dir/b")), a.cnid);
    // The same UPDATE again (a resend after a lost answer): already done, so OK.
    let u = call(&mut s, request(op::UPDATE, a.cnid, dir.cnid, b"b"));
    assert_eq!((u.result, u.cnid), (res::OK, a.cnid));
    // A claim the disk does not show changes nothing: "a" is not in "dir".
    let wrong = call(&mut s, request(op::UPDATE, a.cnid, 2, b"elsewhere"));
    assert_eq!(wrong.result, res::ERR_DB);
    assert_eq!(env.id_of(&env.path("vol/dir/b")), a.cnid);

    // Save-by-replace (a new inode under the same name) keeps the name's ID.
    std::fs::write(env.path("vol/dir/new"), b"saved").unwrap();
    std::fs::rename(env.path("vol/dir/new"), env.path("vol/dir/b")).unwrap();
    let saved = add(&mut s, &env.path("vol/dir/b"), dir.cnid, 0);
    assert_eq!((saved.result, saved.cnid), (res::OK, a.cnid));
    // The ID afpd cached in the file's metadata is not a hint (users can write that metadata
    // and the bridge connects as root): a free 5000 is not taken, the next ID is given.
    std::fs::write(env.path("vol/c"), b"c").unwrap();
    let c = add(&mut s, &env.path("vol/c"), 2, 5000);
    assert_eq!(c.result, res::OK);
    assert_ne!(c.cnid, 5000);
    assert!(c.cnid < 5000);
    // REBUILD_ADD (Netatalk's dbd tool) is an ADD whose hint is never used either.
    std::fs::write(env.path("vol/e"), b"e").unwrap();
    let m = std::fs::metadata(env.path("vol/e")).unwrap();
    let rebuilt = call(
        &mut s,
        Request {
            dev: m.dev(),
            ino: m.ino(),
            ..Request::new(op::REBUILD_ADD, 5000, 2, b"e")
        },
    );
    assert_eq!(rebuilt.result, res::OK);
    assert_ne!(rebuilt.cnid, 5000);
    assert_eq!(env.id_of(&env.path("vol/e")), rebuilt.cnid);
    // `cnid dev = no` (dev 0): the server reads the object from disk itself.
    std::fs::write(env.path("vol/dir/d"), b"d").unwrap();
    let mut no_dev = request(op::ADD, 0, dir.cnid, b"d");
    no_dev.ino = std::fs::metadata(env.path("vol/dir/d")).unwrap().ino();
    let d = call(&mut s, no_dev);
    assert_eq!(d.result, res::OK);
    assert_eq!(env.id_of(&env.path("vol/dir/d")), d.cnid);

    // SEARCH: name prefix, IDs in network order.
    let found = call(&mut s, request(op::SEARCH, 0, 0, b"di"));
    assert_eq!(found.result, res::OK);
    let ids: Vec<u32> = found
        .payload
        .chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(ids, vec![dir.cnid]);
    // GETSTAMP: 8 bytes, the same each time.
    let stamp = call(&mut s, request(op::GETSTAMP, 0, 0, b""));
    assert_eq!((stamp.result, stamp.payload.len()), (res::OK, 8));
    assert_eq!(
        call(&mut s, request(op::GETSTAMP, 0, 0, b"")).payload,
        stamp.payload
    );
    // WIPE is refused, and the desktop keeps everything.
    assert_eq!(
        call(&mut s, request(op::WIPE, 0, 0, b"")).result,
        res::ERR_DB
    );
    assert_eq!(env.id_of(&env.path("vol/dir")), dir.cnid);

    // DELETE after afpd removed the file; the ID is gone for good.
    std::fs::remove_file(env.path("vol/dir/b")).unwrap();
    assert_eq!(
        call(&mut s, request(op::DELETE, a.cnid, 0, b"")).result,
        res::OK
    );
    assert_eq!(
        call(&mut s, request(op::RESOLVE, a.cnid, 0, b"")).result,
        res::NOTFOUND
    );
    let rows = sqlite3(
        &env.path("vol/.Desktop"),
        &format!("SELECT count(*) FROM objects WHERE id = {}", a.cnid),
    );
    assert_eq!(rows.trim(), "0");
    // DELETE of something still on disk keeps it (deskd verifies) and is not an error to afpd.
    assert_eq!(
        call(&mut s, request(op::DELETE, c.cnid, 0, b"")).result,
        res::OK
    );
    assert_eq!(env.id_of(&env.path("vol/c")), c.cnid);
    assert_eq!(call(&mut s, request(op::CLOSE, 0, 0, b"")).result, res::OK);
}

/// A reload reopens the volume just as an ADD reaches it (the server's test hook holds the
/// write between taking the volume and queueing it, until the reload is over): deskd refuses it
/// with `ShuttingDown`, and the bridge sends it again rather than answer ERR_DB, which would end
/// afpd's session.
pub fn an_add_caught_by_a_reopening_is_sent_again(via: Via) {
    let mut env = Env::new(&["vol"]);
    let vol = env.path("vol");
    // As Env::start_holding_writes, with afpd's listener.
    let release = env.path("release-writes").display().to_string();
    env.server_env
        .push(("DESKD_TEST_HOLD_WRITES_UNTIL".into(), release));
    let config = format!("[volume.\"{}\"]\nread_only = false\n", vol.display());
    let cnid = env.serve_cnid(via, &[], &config, None);
    let mut s = afpd(&cnid, &vol);
    std::fs::write(vol.join("caught"), b"x").unwrap();
    let path = vol.join("caught");
    let adding = std::thread::spawn(move || add(&mut s, &path, 2, 0));
    // The ADD has taken the volume when the reload closes it, and reaches it after.
    env.wait_for_held_write(1);
    env.set_read_only(true);
    env.sighup(1);
    env.release_writes();
    let reply = adding.join().unwrap();
    assert_eq!(reply.result, res::OK, "{}", env.log_text());
    assert_eq!(env.id_of(&vol.join("caught")), reply.cnid);
    // The first attempt met the closed desktop: the log shows the reopening under it.
    assert!(env.log_text().contains("reopened, read-only"));
}

/// afpd ends its session on ERR_DB for an ADD and aborts on NOTFOUND: what an ADD gets wrong
/// is mended, and what cannot be mended gets ERR_MAX (issue 22, item 1).
pub fn an_add_is_never_answered_with_an_error_that_ends_the_session(via: Via) {
    let mut env = Env::new(&["vol"]);
    let cnid = env.serve_cnid(via, &["vol"], "", None);
    let mut s = afpd(&cnid, &env.path("vol"));

    // A client creates "dir/sub/file" in one call: afpd sends the base folder (the root) as
    // the did. The object is found below it by dev/ino and registered where it is.
    std::fs::create_dir_all(env.path("vol/dir/sub")).unwrap();
    let dir = add(&mut s, &env.path("vol/dir"), 2, 0);
    let sub = add(&mut s, &env.path("vol/dir/sub"), dir.cnid, 0);
    std::fs::write(env.path("vol/dir/sub/file"), b"x").unwrap();
    let file = add(&mut s, &env.path("vol/dir/sub/file"), 2, 0);
    assert_eq!(file.result, res::OK);
    assert_eq!(env.id_of(&env.path("vol/dir/sub/file")), file.cnid);
    let r = call(&mut s, request(op::RESOLVE, file.cnid, 0, b""));
    assert_eq!((r.result, r.did), (res::OK, sub.cnid));

    // The object at did/name was replaced after afpd's stat: the one there now is registered.
    std::fs::write(env.path("vol/doc"), b"1").unwrap();
    let before = std::fs::metadata(env.path("vol/doc")).unwrap();
    std::fs::write(env.path("vol/doc.new"), b"2").unwrap();
    std::fs::rename(env.path("vol/doc.new"), env.path("vol/doc")).unwrap();
    let stale = call(
        &mut s,
        Request {
            dev: before.dev(),
            ino: before.ino(),
            ..request(op::ADD, 0, 2, b"doc")
        },
    );
    assert_eq!(stale.result, res::OK);
    assert_eq!(env.id_of(&env.path("vol/doc")), stale.cnid);

    // deskd's own files (afp.conf without `veto files`): ERR_MAX, and the log says what to add.
    let desktop = std::fs::metadata(env.path("vol/.Desktop")).unwrap();
    let own = call(
        &mut s,
        Request {
            dev: desktop.dev(),
            ino: desktop.ino(),
            ..request(op::ADD, 0, 2, b".Desktop")
        },
    );
    assert_eq!(own.result, res::ERR_MAX);
    cnid.wait_for_log("one of deskd's own files: add `veto files =");

    // A folder ID deskd never gave, with nothing to find: ERR_MAX, never NOTFOUND or ERR_DB.
    std::fs::write(env.path("vol/lost"), b"x").unwrap();
    let lost = std::fs::metadata(env.path("vol/lost")).unwrap();
    let unknown = call(
        &mut s,
        Request {
            dev: lost.dev(),
            ino: lost.ino(),
            ..request(op::ADD, 0, 99_999, b"lost")
        },
    );
    assert_eq!(unknown.result, res::ERR_MAX);

    // A name no afpd sends (a path that leaves the volume) is answered without a look at the
    // disk (the bridge runs as root).
    let escape = call(
        &mut s,
        Request {
            dev: lost.dev(),
            ino: lost.ino(),
            ..request(op::ADD, 0, 2, b"../../../../etc/passwd")
        },
    );
    assert_eq!(escape.result, res::ERR_MAX);

    // The session goes on.
    assert_eq!(
        call(&mut s, request(op::GET, 0, 2, b"doc")).cnid,
        stale.cnid
    );
}

/// The bridge makes afpd's `vol dbpath` folder as cnid_metad does, from afp.conf, and only for
/// a volume afp.conf has at the path deskd serves (the handshake comes from anyone).
pub fn the_bridge_makes_afpds_vol_dbpath_folder(via: Via) {
    use std::os::unix::fs::PermissionsExt;
    let mut env = Env::new(&["vol", "state"]);
    let conf = env.path("afp.conf");
    let vol = std::fs::canonicalize(env.path("vol")).unwrap();
    std::fs::write(
        &conf,
        format!(
            "[Global]\ncnid server = 127.0.0.1:4700\nvol dbpath = {}/CNID/$v/\n\n\
             [Public]\npath = {}\ncnid scheme = dbd\n\n[Other]\npath = /nonexistent\n",
            env.path("state").display(),
            vol.display()
        ),
    )
    .unwrap();
    let cnid = env.serve_cnid(via, &["vol"], "", Some(&conf));

    let mut s = cnid.afpd(&vol, b"Public");
    assert_eq!(call(&mut s, request(op::OPEN, 0, 0, b"")).result, res::OK);
    let folder = env.path("state/CNID/Public");
    let meta = std::fs::metadata(&folder).expect("vol dbpath folder made");
    assert!(meta.is_dir());
    assert_eq!(
        meta.permissions().mode() & 0o022,
        0,
        "not writable by others"
    );

    // Names afp.conf does not have at this path make nothing, wherever they point.
    for name in [&b"Other"[..], b"../../escape", b"..", b"Nope"] {
        let mut s = cnid.afpd(&vol, name);
        assert_eq!(call(&mut s, request(op::OPEN, 0, 0, b"")).result, res::OK);
    }
    let made: Vec<_> = std::fs::read_dir(env.path("state/CNID"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(made, vec![std::ffi::OsString::from("Public")]);
    assert!(!env.path("escape").exists() && !env.path("state/escape").exists());
}

/// A volume deskd does not serve, an operation cnid_dbd does not know, a name longer than any
/// path: each closes its connection and is logged.
pub fn bad_connections_are_closed(via: Via) {
    let mut env = Env::new(&["vol", "other"]);
    let cnid = env.serve_cnid(via, &["vol"], "", None);
    let closed = |s: &mut TcpStream| s.read(&mut [0u8; 1]).unwrap_or(0) == 0;
    // A volume deskd does not serve.
    let mut s = afpd(&cnid, &env.path("other"));
    assert!(closed(&mut s));
    // An operation cnid_dbd does not know either (it exits on one).
    let mut s = afpd(&cnid, &env.path("vol"));
    s.write_all(&wire::encode_request(&request(99, 0, 0, b"")))
        .unwrap();
    assert!(closed(&mut s));
    // A name longer than any path.
    let mut s = afpd(&cnid, &env.path("vol"));
    let mut q = wire::encode_request(&request(op::GET, 0, 2, b""));
    q[40..48].copy_from_slice(&(1u64 << 40).to_ne_bytes());
    s.write_all(&q).unwrap();
    assert!(closed(&mut s));
    // Each is logged (after its connection closed: poll for the lines).
    for line in [
        "other: not a volume served by this deskd; connection closed",
        "operation 99 is not supported",
        "name of 1099511627776 bytes",
    ] {
        let began = Instant::now();
        while !std::fs::read_to_string(&cnid.log).unwrap().contains(line) {
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "no {line:?} in the log"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
