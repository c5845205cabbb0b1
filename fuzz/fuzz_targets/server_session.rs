//! A hostile client of a real `deskd serve` (in this process, on a temp volume): each input is a
//! session of request frames. The server must answer or close, never hang on one client, and
//! stay alive: after every input a fresh client's `status` must be answered. A panic in any
//! server thread aborts the process, which the fuzzer reports.
//!
//! Input layout: a sequence of chunks `[n][n bytes of frame body]`; each body is sent with the
//! 4-byte length prefix of the protocol, so the fuzzer spends its time on request bodies
//! rather than on framing (proto_frames fuzzes the framing).
#![no_main]
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

use deskd_proto::transport::client_hello;
use deskd_proto::PROTOCOL_VERSION;
use libfuzzer_sys::fuzz_target;

#[path = "common/mod.rs"]
mod common;

fn server() -> &'static common::LiveServer {
    static RUNNING: OnceLock<common::LiveServer> = OnceLock::new();
    RUNNING.get_or_init(|| common::LiveServer::start(&["folder/file"]))
}

fn frames(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let body = &tail[..(n as usize).min(tail.len())];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
        rest = &tail[body.len()..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let running = server();
    let mut stream = UnixStream::connect(&running.socket).unwrap();
    stream.set_read_timeout(Some(common::PATIENCE)).unwrap();
    stream.set_write_timeout(Some(common::PATIENCE)).unwrap();
    stream.write_all(&client_hello(PROTOCOL_VERSION)).unwrap();
    let mut hello = [0u8; 8];
    stream.read_exact(&mut hello).unwrap();
    // The server may close early on a malformed frame; a write error is then expected.
    let _ = stream.write_all(&frames(data));
    let _ = stream.shutdown(std::net::Shutdown::Write);
    common::read_until_closed(&mut stream, "the server");
    let mut client = deskd_client::Client::connect(&running.socket, common::PATIENCE).unwrap();
    client
        .status(None)
        .expect("the server answers status after the session");
});
