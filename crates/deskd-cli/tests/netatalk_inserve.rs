//! `deskd serve` answering afpd's CNID protocol itself (`[netatalk]` in deskd.toml): every
//! wire-level case of the standalone bridge (`netatalk_cases/`) runs here through the server's
//! own listener, plus what is the listener's own: its connection limit, malformed and stalled
//! frames, and a write committed with the volume's writer idle and with it busy (another
//! process holding the desktop's write lock), in order per connection.

mod common;
#[path = "netatalk_cases/ids.rs"]
mod id_cases;
#[path = "netatalk_cases/wire.rs"]
mod wire_cases;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use common::*;
use deskd_netatalk::wire::{self, op, res, Request};
use wire_cases::{add, afpd, call, request};

wire_cases!(Via::InServe);
id_cases!(Via::InServe);

/// Whether the listener closed `s` (read returns end of file, or the connection was reset).
fn closed(s: &mut TcpStream) -> bool {
    s.read(&mut [0u8; 1]).unwrap_or(0) == 0
}

#[test]
fn connections_beyond_max_connections_are_closed_at_once() {
    let mut env = Env::new(&["vol"]);
    let cnid = env.serve_cnid(
        Via::InServe,
        &["vol"],
        "[netatalk]\nmax_connections = 2\n",
        None,
    );
    let vol = env.path("vol");
    let mut first = afpd(&cnid, &vol);
    let mut second = afpd(&cnid, &vol);
    for s in [&mut first, &mut second] {
        assert_eq!(call(s, request(op::OPEN, 0, 0, b"")).result, res::OK);
    }
    let mut third = afpd(&cnid, &vol);
    assert!(closed(&mut third));
    cnid.wait_for_log("refused: 2 afpd connections are open");
    // The two served go on; one closed makes room for another.
    assert_eq!(
        call(&mut first, request(op::GET, 0, 2, b"nothing")).result,
        res::NOTFOUND
    );
    drop(second);
    let began = std::time::Instant::now();
    loop {
        let mut again = afpd(&cnid, &vol);
        // The slot comes back once the closed connection's thread has ended; until then the
        // new connection is closed at once (its request may not even be taken).
        let sent = again.write_all(&wire::encode_request(&request(op::OPEN, 0, 0, b"")));
        if let Ok(reply) = sent
            .map_err(wire::WireError::from)
            .and_then(|()| wire::read_reply(&mut again))
        {
            assert_eq!(reply.result, res::OK);
            break;
        }
        assert!(began.elapsed() < std::time::Duration::from_secs(10));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn malformed_and_stalled_frames_close_only_their_connection() {
    let mut env = Env::new(&["vol"]);
    let cnid = env.serve_cnid(
        Via::InServe,
        &["vol"],
        "[netatalk]\nframe_timeout = 1\n",
        None,
    );
    let vol = env.path("vol");
    let mut good = afpd(&cnid, &vol);
    assert_eq!(
        call(&mut good, request(op::OPEN, 0, 0, b"")).result,
        res::OK
    );
    // A handshake with a negative length.
    let mut s = TcpStream::connect(&cnid.addr).unwrap();
    s.write_all(&[0xff; 12]).unwrap();
    assert!(closed(&mut s));
    cnid.wait_for_log("negative length of the volume name");
    // A handshake that never ends.
    let mut s = TcpStream::connect(&cnid.addr).unwrap();
    s.write_all(&[1, 0, 0]).unwrap();
    assert!(closed(&mut s));
    cnid.wait_for_log("the handshake did not arrive whole within the frame timeout");
    // A request cut short.
    let mut s = afpd(&cnid, &vol);
    let q = wire::encode_request(&request(op::GET, 0, 2, b"name"));
    s.write_all(&q[..q.len() / 2]).unwrap();
    assert!(closed(&mut s));
    cnid.wait_for_log("a request did not arrive whole within the frame timeout");
    // A name longer than any path.
    let mut s = afpd(&cnid, &vol);
    let mut q = wire::encode_request(&request(op::GET, 0, 2, b""));
    q[40..48].copy_from_slice(&(1u64 << 40).to_ne_bytes());
    s.write_all(&q).unwrap();
    assert!(closed(&mut s));
    // The server and the good connection are unharmed.
    std::fs::write(vol.join("f"), b"f").unwrap();
    let f = add(&mut good, &vol.join("f"), 2, 0);
    assert_eq!(f.result, res::OK);
    assert_eq!(env.id_of(&vol.join("f")), f.cnid);
}

/// With the writer idle an ADD is committed and answered at once; with it busy (sqlite3 holds
/// the desktop), it waits for the writer, reads on other connections are answered meanwhile,
/// and a GET sent right behind the ADD on the same connection waits for it and sees its ID.
#[test]
fn writes_commit_with_the_writer_idle_and_busy_in_order_per_connection() {
    let mut env = Env::new(&["vol"]);
    let cnid = env.serve_cnid(Via::InServe, &["vol"], "", None);
    let vol = env.path("vol");
    let mut s = afpd(&cnid, &vol);
    // Idle.
    std::fs::write(vol.join("idle"), b"i").unwrap();
    let idle = add(&mut s, &vol.join("idle"), 2, 0);
    assert_eq!(idle.result, res::OK);
    assert_eq!(env.id_of(&vol.join("idle")), idle.cnid);

    // Busy: the ADD and the GET behind it are sent together.
    let lock = Sqlite3Lock::take(&vol.join(".Desktop"));
    std::fs::write(vol.join("busy"), b"b").unwrap();
    let m = std::fs::metadata(vol.join("busy")).unwrap();
    let mut both = wire::encode_request(&Request {
        dev: std::os::unix::fs::MetadataExt::dev(&m),
        ino: std::os::unix::fs::MetadataExt::ino(&m),
        ..request(op::ADD, 0, 2, b"busy")
    });
    both.extend(wire::encode_request(&request(op::GET, 0, 2, b"busy")));
    s.write_all(&both).unwrap();
    env.wait_for_log("Warning, desktop DB busy by another process", 1);
    // Another connection's read is answered while the write waits.
    let mut other = afpd(&cnid, &vol);
    let r = call(&mut other, request(op::GET, 0, 2, b"idle"));
    assert_eq!((r.result, r.cnid), (res::OK, idle.cnid));
    lock.release();
    let added = wire::read_reply(&mut s).unwrap();
    assert_eq!(added.result, res::OK);
    let got = wire::read_reply(&mut s).unwrap();
    assert_eq!((got.result, got.cnid), (res::OK, added.cnid));
    assert_eq!(env.id_of(&vol.join("busy")), added.cnid);

    // Idle again: the next write is answered as before.
    std::fs::write(vol.join("after"), b"a").unwrap();
    let after = add(&mut s, &vol.join("after"), 2, 0);
    assert_eq!(after.result, res::OK);
    assert_eq!(env.id_of(&vol.join("after")), after.cnid);
}

/// afpd's get_id() sends an ADD for every object it looks at: one for an object registered
/// already, as the disk bears it out, is answered from a read snapshot with the write path's
/// checks, so it does not wait for the writer (here held up by sqlite3 holding the desktop);
/// one that changes anything (the name now holds another inode) still goes to the writer.
#[test]
fn an_add_of_what_is_registered_already_does_not_wait_for_the_writer() {
    let mut env = Env::new(&["vol"]);
    let cnid = env.serve_cnid(Via::InServe, &["vol"], "", None);
    let vol = env.path("vol");
    let mut s = afpd(&cnid, &vol);
    std::fs::write(vol.join("known"), b"k").unwrap();
    std::fs::write(vol.join("replaced"), b"r").unwrap();
    let known = add(&mut s, &vol.join("known"), 2, 0);
    assert_eq!(known.result, res::OK);
    let replaced = add(&mut s, &vol.join("replaced"), 2, 0);
    assert_eq!(replaced.result, res::OK);

    let lock = Sqlite3Lock::take(&vol.join(".Desktop"));
    // Without the snapshot's answer this ADD would wait for the lock: fail instead of hanging.
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let again = add(&mut s, &vol.join("known"), 2, 0);
    assert_eq!((again.result, again.cnid), (res::OK, known.cnid));
    assert_eq!(
        env.log_text()
            .matches("Warning, desktop DB busy by another process")
            .count(),
        0,
        "the known ADD went to the writer"
    );
    // A new inode under a registered name: the writer decides, once the lock is gone.
    // (Made beside it and renamed over it, so the inode number cannot be the old one's.)
    std::fs::write(vol.join("replacement"), b"new").unwrap();
    std::fs::rename(vol.join("replacement"), vol.join("replaced")).unwrap();
    let m = std::fs::metadata(vol.join("replaced")).unwrap();
    s.write_all(&wire::encode_request(&Request {
        dev: std::os::unix::fs::MetadataExt::dev(&m),
        ino: std::os::unix::fs::MetadataExt::ino(&m),
        ..request(op::ADD, 0, 2, b"replaced")
    }))
    .unwrap();
    env.wait_for_log("Warning, desktop DB busy by another process", 1);
    lock.release();
    let after = wire::read_reply(&mut s).unwrap();
    assert_eq!(after.result, res::OK);
    assert_eq!(env.id_of(&vol.join("replaced")), after.cnid);
}

/// A bad `[netatalk]` table stops `deskd serve` before it serves anything, with a clear error.
#[test]
fn a_bad_netatalk_table_stops_the_start() {
    let env = Env::new(&["vol"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (table, said) in [
        (
            format!("listen = \"{addr}\"\n"),
            "cannot listen on".to_owned(),
        ),
        ("max_connections = 2\n".to_owned(), "listen".to_owned()),
        (
            "listen = \"127.0.0.1:0\"\nafp_conf = \"/nonexistent/afp.conf\"\n".to_owned(),
            "/nonexistent/afp.conf".to_owned(),
        ),
    ] {
        std::fs::write(env.path("deskd.toml"), format!("[netatalk]\n{table}")).unwrap();
        let out = Command::new(DESKD)
            .arg("serve")
            .arg("--socket")
            .arg(&env.socket)
            .arg("--config")
            .arg(env.path("deskd.toml"))
            .arg(env.path("vol"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{table}: {stderr}");
        assert!(stderr.contains(&said), "{table}: {stderr}");
        assert!(
            !env.path("vol/.Desktop").exists(),
            "{table}: a desktop was made"
        );
    }
}

#[test]
fn afpd_connections_and_their_requests_show_in_the_metrics() {
    let mut env = Env::new(&["vol"]);
    let cnid = env.serve_cnid(Via::InServe, &["vol"], "", None);
    let vol = env.path("vol");
    std::fs::write(vol.join("counted"), b"x").unwrap();
    let mut s = afpd(&cnid, &vol);
    assert_eq!(call(&mut s, request(op::OPEN, 0, 0, b"")).result, res::OK);
    let reply = add(&mut s, &vol.join("counted"), 2, 0);
    assert_eq!(reply.result, res::OK);
    assert!(reply.cnid >= 17);
    let text = env.deskd_ok(&["metrics"]);
    assert!(
        text.contains("deskd_connections{transport=\"netatalk\"} 1"),
        "{text}"
    );
    // The ADD was answered through the server's own dispatch, so it was timed there.
    let timed = |kind: &str| {
        text.lines().any(|l| {
            l.starts_with("deskd_request_duration_seconds_count")
                && l.contains(&format!("kind=\"{kind}\""))
                && !l.ends_with(" 0")
        })
    };
    assert!(timed("Add") || timed("AddPath"), "{text}");
    // Status and the audit log name the afpd connection (its address and user), not deskd.
    let status = env.deskd_ok(&["status"]);
    assert!(
        status.contains("afpd 127.0.0.1:") && status.contains("user alice"),
        "{status}"
    );
    let log = env.log_text();
    assert!(
        log.lines().any(|l| l.contains("(afpd 127.0.0.1:")
            && l.contains("user alice)")
            && l.contains("counted")),
        "{log}"
    );
}

#[test]
fn handshake_paths_with_dot_dot_are_refused_and_peer_bytes_never_start_a_log_line() {
    let mut env = Env::new(&["vol"]);
    let cnid = env.serve_cnid(Via::InServe, &["vol"], "", None);
    let vol = env.path("vol");
    // Through `..` the served volume would be reached only when the first directory exists:
    // an oracle on any directory of the host. Refused before anything is resolved. The path's
    // line feed is the peer's: it stays inside the warning, escaped. (Refusals are logged at
    // most every 10 s, so one connection shows both.)
    let probe = format!(
        "{}/nosuch/../vol\n2026-12-06T00:00:00Z  INFO deskd::audit: uid 1000 forged",
        env.dir.path().display()
    );
    let mut s = afpd_at(&cnid.addr, std::path::Path::new(&probe), b"Public");
    assert!(closed(&mut s));
    let log = cnid.wait_for_log("not an absolute path free of . and .. components");
    assert!(log.contains("/nosuch/../vol\\n2026"), "{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("2026-12-06T00:00:00Z")),
        "{log}"
    );
    // The volume's own path is served as before.
    let mut good = afpd(&cnid, &vol);
    assert_eq!(
        call(&mut good, request(op::OPEN, 0, 0, b"")).result,
        res::OK
    );
}
