//! A hostile afpd talking to a real `deskd netatalk` bridge in front of a real deskd server
//! (both in this process, on a temp volume). Each input is a session of CNID requests; the
//! bridge must answer or close, and afterwards a fresh afpd connection must get GETSTAMP
//! answered. A panic in any thread aborts the process, which the fuzzer reports.
//!
//! Requests are built from fields (arbitrary), with names, directory IDs and dev/ino pairs
//! drawn partly from the objects that really exist, so ADD, LOOKUP and UPDATE get past the
//! server's checks and the fuzzer explores what happens after them.
#![no_main]
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use deskd_netatalk::wire::{self, op, Handshake, Request};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[path = "common/mod.rs"]
mod common;

struct Running {
    bridge: std::net::SocketAddr,
    volume: PathBuf,
    /// (name, dev, ino, is_dir) of the objects on the volume.
    objects: Vec<(Vec<u8>, u64, u64, bool)>,
    _server: common::LiveServer,
}

fn running() -> &'static Running {
    static RUNNING: OnceLock<Running> = OnceLock::new();
    RUNNING.get_or_init(|| {
        let server = common::LiveServer::start(&["file", "folder/inner"]);
        let volume = server.volume.clone();
        let objects = ["folder", "file", "folder/inner"]
            .iter()
            .map(|p| {
                let m = std::fs::metadata(volume.join(p)).unwrap();
                let name = p.rsplit('/').next().unwrap().as_bytes().to_vec();
                (name, m.dev(), m.ino(), m.is_dir())
            })
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let bridge = listener.local_addr().unwrap();
        let socket = server.socket.clone();
        std::thread::spawn(move || {
            deskd_netatalk::serve(
                listener,
                Arc::new(move |_: &str| {
                    deskd_client::Client::connect(&socket, common::PATIENCE)
                        .map(|c| Box::new(c) as Box<dyn deskd_netatalk::Desk>)
                }),
                deskd_netatalk::Limits::default(),
                None,
            )
        });
        Running {
            bridge,
            volume,
            objects,
            _server: server,
        }
    })
}

#[derive(Debug, Arbitrary)]
struct FuzzRequest {
    op: u8,
    cnid: u32,
    did: u32,
    /// Below 3 (with `real`): dev/ino and name of a real object.
    object: u8,
    real: bool,
    dev: u64,
    ino: u64,
    kind: u32,
    name: Vec<u8>,
}

fn build(f: &FuzzRequest, r: &Running) -> Request {
    let mut q = Request {
        op: i32::from(f.op % 16),
        cnid: f.cnid % 64,
        dev: f.dev,
        ino: f.ino,
        kind: f.kind % 3,
        did: f.did % 64,
        name: f.name.clone(),
    };
    if f.real {
        if let Some((name, dev, ino, is_dir)) = r.objects.get(f.object as usize) {
            q.dev = *dev;
            q.ino = *ino;
            q.kind = u32::from(*is_dir);
            q.name = name.clone();
        }
    }
    q
}

fn connect(r: &Running) -> TcpStream {
    let mut stream = TcpStream::connect(r.bridge).unwrap();
    stream.set_read_timeout(Some(common::PATIENCE)).unwrap();
    stream.set_write_timeout(Some(common::PATIENCE)).unwrap();
    let hello = Handshake {
        volume_name: b"fuzz".to_vec(),
        volume_path: r.volume.as_os_str().as_encoded_bytes().to_vec(),
        user: b"afpd".to_vec(),
    };
    stream.write_all(&wire::encode_handshake(&hello)).unwrap();
    stream
}

fuzz_target!(|requests: Vec<FuzzRequest>| {
    let r = running();
    let mut stream = connect(r);
    let mut bytes = Vec::new();
    for f in requests.iter().take(64) {
        bytes.extend_from_slice(&wire::encode_request(&build(f, r)));
    }
    // The bridge may close early (an unknown op ends the connection, as in cnid_dbd).
    let _ = stream.write_all(&bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    common::read_until_closed(&mut stream, "the bridge");
    let mut stream = connect(r);
    stream
        .write_all(&wire::encode_request(&Request::new(
            op::GETSTAMP,
            0,
            0,
            b"",
        )))
        .unwrap();
    let reply = wire::read_reply(&mut stream).expect("GETSTAMP answered after the session");
    assert_eq!(reply.result, wire::res::OK, "{reply:?}");
});
