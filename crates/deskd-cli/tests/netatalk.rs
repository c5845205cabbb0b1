//! `deskd netatalk`: afpd's CNID protocol (Netatalk `dbd`) served from deskd, driven through a
//! real `deskd serve` and the real `deskd netatalk` with requests built byte by byte as afpd
//! sends them; every answer is checked against the desktop through `dt` and `sqlite3`, also
//! across a SIGKILL of deskd under load. The cases in `netatalk_cases/wire.rs` run here through
//! the bridge (and in netatalk_inserve.rs through `deskd serve`'s own listener); the tests below
//! are the bridge's own (deskd restarting under it, its start).

mod common;
#[path = "netatalk_cases/wire.rs"]
mod wire_cases;

use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use deskd_netatalk::wire::{self, op, res};
use wire_cases::{add, call, request};

wire_cases!(Via::Bridge);

fn start_bridge(env: &Env) -> Bridge {
    Bridge::start(env, &[])
}

/// An afpd connection to the volume at `path` (afp.conf's `[Public]`).
fn afpd(bridge: &Bridge, path: &std::path::Path) -> TcpStream {
    bridge.afpd(path, b"Public")
}

/// deskd restarts under a live afpd connection: the bridge reconnects by itself and the next
/// request is answered (afpd would end its session on an ERR_DB for an ADD).
#[test]
fn deskd_restarts_are_survived() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    let bridge = start_bridge(&env);
    let mut s = afpd(&bridge, &env.path("vol"));
    std::fs::write(env.path("vol/f"), b"f").unwrap();
    let f = add(&mut s, &env.path("vol/f"), 2, 0);
    env.term();
    env.serve(&["vol"]);
    let again = call(&mut s, request(op::GET, 0, 2, b"f"));
    assert_eq!((again.result, again.cnid), (res::OK, f.cnid));
    // Also when deskd is still starting: the request waits for it (up to 4 s). A stand-in on
    // deskd's socket shows when the bridge, with the ADD in hand, tries to reach deskd; it
    // closes that connection, and deskd starts only then.
    env.term();
    let _ = std::fs::remove_file(&env.socket);
    let stand_in = std::os::unix::net::UnixListener::bind(&env.socket).unwrap();
    stand_in.set_nonblocking(true).unwrap();
    std::fs::write(env.path("vol/g"), b"g").unwrap();
    let path = env.path("vol/g");
    let waiting = std::thread::spawn(move || add(&mut s, &path, 2, 0));
    let began = Instant::now();
    while stand_in.accept().is_err() {
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "the bridge never tried to reach deskd"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(stand_in);
    std::fs::remove_file(&env.socket).unwrap();
    env.serve(&["vol"]);
    let g = waiting.join().unwrap();
    assert_eq!(g.result, res::OK);
    assert_eq!(env.id_of(&env.path("vol/g")), g.cnid);
}

#[test]
fn the_wire_layout_is_the_c_layout_of_this_host() {
    // Netatalk's structs (include/atalk/cnid_bdb_private.h), compiled by this host's C
    // compiler: sizes and offsets must be the ones deskd reads and writes.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("layout.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
typedef uint32_t cnid_t;
struct cnid_dbd_rqst { int op; cnid_t cnid; dev_t dev; ino_t ino; uint32_t type; cnid_t did;
                       const char *name; size_t namelen; };
struct cnid_dbd_rply { int result; cnid_t cnid; cnid_t did; char *name; size_t namelen; };
int main(void) {
    printf("%zu %zu %zu %zu %zu %zu %zu %zu\n", sizeof(struct cnid_dbd_rqst),
           offsetof(struct cnid_dbd_rqst, cnid), offsetof(struct cnid_dbd_rqst, dev),
           offsetof(struct cnid_dbd_rqst, ino), offsetof(struct cnid_dbd_rqst, type),
           offsetof(struct cnid_dbd_rqst, did), offsetof(struct cnid_dbd_rqst, namelen),
           sizeof(struct cnid_dbd_rply));
    printf("%zu %zu %zu\n", offsetof(struct cnid_dbd_rply, cnid),
           offsetof(struct cnid_dbd_rply, did), offsetof(struct cnid_dbd_rply, namelen));
    return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.path().join("layout");
    let cc = Command::new("cc")
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(cc.status.success(), "{}", stderr(&cc));
    let out = Command::new(&exe).output().unwrap();
    let expected = format!(
        "{} 4 8 16 24 28 40 {}\n4 8 24\n",
        wire::REQUEST_LEN,
        wire::REPLY_LEN
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}

#[test]
fn sigkill_of_deskd_under_afpd_load_loses_no_answered_add() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    let bridge = start_bridge(&env);
    let root = env.path("vol").canonicalize().unwrap();
    let acked: Arc<Mutex<Vec<(u32, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..2 {
        let mut s = afpd(&bridge, &root);
        std::fs::create_dir(root.join(format!("t{t}"))).unwrap();
        let dir = add(&mut s, &root.join(format!("t{t}")), 2, 0).cnid;
        let (acked, stop, root) = (acked.clone(), stop.clone(), root.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let rel = format!("t{t}/f{i}");
                std::fs::write(root.join(&rel), b"").unwrap();
                let r = add(&mut s, &root.join(&rel), dir, 0);
                if r.result == res::OK {
                    acked.lock().unwrap().push((r.cnid, rel));
                }
                i += 1;
            }
        }));
    }
    // Kill deskd once the load is well under way (ADDs answered and more in flight).
    common::wait_for_acks(&acked, 200);
    env.kill9();
    // The ADDs in flight wait for deskd (up to 4 s); it comes back at once.
    env.serve(&["vol"]);
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "load too small: {}", acked.len());
    let ids: std::collections::HashSet<u32> = acked.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), acked.len(), "an ID was answered twice");
    let mut c = env.client();
    let vol = c.open_volume(&root).unwrap().vol;
    for (id, rel) in &acked {
        let o = c
            .object(deskd_client::Request::Resolve { vol, id: *id })
            .unwrap();
        assert_eq!(o.path.as_deref(), Some(rel.as_bytes()), "ID {id}");
    }
}

#[test]
fn the_bridge_needs_deskd_and_warns_off_loopback() {
    let env = Env::new(&["vol"]);
    // No deskd: exit 1 at once, with deskd's own message.
    let out = Command::new(DESKD)
        .args(["netatalk", "--listen", "127.0.0.1:0", "--socket"])
        .arg(&env.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot connect to deskd at"),
        "{}",
        stderr(&out)
    );
    // Listening beyond loopback is allowed, with a warning (checked before deskd is asked).
    let out = Command::new(DESKD)
        .args(["netatalk", "--listen", "0.0.0.0:0", "--socket"])
        .arg(&env.socket)
        .output()
        .unwrap();
    assert!(
        stderr(&out)
            .contains("is not a loopback address: afpd's CNID protocol has no authentication"),
        "{}",
        stderr(&out)
    );
}
