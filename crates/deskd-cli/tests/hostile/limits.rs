//! Item 5 and 6 of issue 21: a local user cannot crowd others out of deskd (connection limits
//! per uid and in all, with a reserve for root; a half-sent frame or handshake is closed after
//! `frame_timeout`, over the Unix socket and TCP), and a volume on a full file system opens,
//! serves reads and never lets its WAL take the last of the space.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::common::*;

/// `deskd-bench hold` as `uid`: `count` connections, `half` of them stalled mid-frame. Returns
/// the holder (close its stdin to let go) and its JSON report.
fn hold(env: &Env, uid: u32, count: u32, half: u32) -> (Child, serde_json::Value) {
    let socket = env.socket.display().to_string();
    let (count, half) = (count.to_string(), half.to_string());
    let mut child = env.spawn_as_user(
        uid,
        BENCH,
        &[
            b"--socket",
            socket.as_bytes(),
            b"hold",
            b"--count",
            count.as_bytes(),
            b"--half-frames",
            half.as_bytes(),
            b"--seconds",
            b"120",
        ],
    );
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let report = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("hold as uid {uid}: {e}: {line:?}: {}", env.log_text()));
    (child, report)
}

fn release(mut holder: Child) {
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
}

/// Serve `vol` with `[server]` settings `server`; returns the config path.
fn serve_with(env: &mut Env, server: &str) -> String {
    let config = env.path("deskd.toml");
    std::fs::write(&config, format!("[server]\n{server}\n")).unwrap();
    let config = config.display().to_string();
    let vol = env.path("vol").display().to_string();
    env.start(&["--config", &config, &vol]);
    config
}

/// Root's `dt info` of `vol/f` (any file registered before) answers.
fn root_dt_works(env: &Env) {
    let f = env.path("vol/f");
    env.dt_ok(&[b"info", f.as_os_str().as_encoded_bytes()]);
}

#[test]
fn a_flood_by_one_user_keeps_no_one_else_out() {
    let mut env = Env::new(&["vol"]);
    std::fs::write(env.path("vol/f"), b"x").unwrap();
    // Every user may look at it (dt also mirrors its ID into an xattr).
    std::fs::set_permissions(env.path("vol/f"), std::fs::Permissions::from_mode(0o666)).unwrap();
    serve_with(
        &mut env,
        "max_connections = 50\nmax_connections_per_uid = 30\nframe_timeout = 60",
    );
    root_dt_works(&env);
    // nobody opens 200 connections, 10 of them stalled in the middle of a frame.
    let (nobody, report) = hold(&env, 65534, 200, 10);
    assert_eq!(report["accepted"], 30, "{report}");
    assert_eq!(report["refused"], 170, "{report}");
    let refusal = report["refusal"].as_str().unwrap();
    assert!(refusal.contains("max_connections_per_uid"), "{refusal}");
    // Root, and another unprivileged user, still get in.
    root_dt_works(&env);
    let other = env
        .as_user(
            65533,
            DT,
            &[b"info", env.path("vol/f").as_os_str().as_encoded_bytes()],
            &[],
        )
        .unwrap();
    assert!(other.status.success(), "{}", stderr(&other));
    // A second user fills the rest of the 50 slots; the next is over the total...
    let (second, report) = hold(&env, 65533, 25, 0);
    assert_eq!(report["accepted"], 20, "{report}");
    let refusal = report["refusal"].as_str().unwrap();
    assert!(
        refusal.contains("too many connections are open (max_connections"),
        "{refusal}"
    );
    // ...and a dt of a third user says so clearly, while root's reserve still lets root in.
    let third = env
        .as_user(
            65532,
            DT,
            &[b"info", env.path("vol/f").as_os_str().as_encoded_bytes()],
            &[],
        )
        .unwrap();
    assert!(!third.status.success());
    assert!(
        stderr(&third).contains("deskd refused the connection: too many connections"),
        "{}",
        stderr(&third)
    );
    for _ in 0..5 {
        root_dt_works(&env);
    }
    let mut root_clients: Vec<_> = (0..20).map(|_| env.client()).collect();
    for c in &mut root_clients {
        c.volumes().unwrap();
    }
    let log = env.log_text();
    assert!(
        log.contains(
            "refused a connection: uid 65534 holds 30 connections (max_connections_per_uid)"
        ),
        "{log}"
    );
    // The refusals are logged at most every 10 s, not once per connection.
    assert!(log.matches("refused a connection").count() <= 3, "{log}");
    release(nobody);
    release(second);
}

#[test]
fn sighup_applies_new_connection_limits() {
    let mut env = Env::new(&["vol"]);
    std::fs::write(env.path("vol/f"), b"x").unwrap();
    let config = serve_with(&mut env, "max_connections_per_uid = 30");
    let (first, report) = hold(&env, 65534, 8, 0);
    assert_eq!(report["accepted"], 8, "{report}");
    release(first);
    std::fs::write(&config, "[server]\nmax_connections_per_uid = 3\n").unwrap();
    env.sighup(1);
    // A uid that holds nothing (nobody's closed connections may still be counted a moment).
    let (second, report) = hold(&env, 65531, 8, 0);
    assert_eq!(report["accepted"], 3, "{report}");
    assert_eq!(report["refused"], 5, "{report}");
    root_dt_works(&env);
    release(second);
}

/// Wait until the server closes `stream` (end of stream or reset), at most `limit`; returns
/// what it sent before closing. Panics when it stays open.
fn closed_within(mut stream: impl Read, limit: Duration, what: &str, env: &Env) -> Vec<u8> {
    let began = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{what}: {e}"),
        }
        assert!(
            began.elapsed() < limit,
            "{what}: still open after {limit:?}: {}",
            env.log_text()
        );
    }
}

/// Send `bytes` one at a time, 200 ms apart, until the server closes (a trickle: every
/// silence is short, the whole is not), then wait for the close. Returns what it sent.
fn trickle_until_closed(
    stream: &mut (impl Read + Write),
    bytes: &[u8],
    env: &Env,
    what: &str,
) -> Vec<u8> {
    for b in bytes {
        if stream.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    closed_within(stream, Duration::from_secs(8), what, env)
}

fn half_a_request() -> Vec<u8> {
    let mut bytes = 40u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 30]);
    bytes
}

#[test]
fn half_sent_frames_are_closed_after_frame_timeout() {
    let mut env = Env::new(&["vol"]);
    std::fs::write(env.path("vol/f"), b"x").unwrap();
    let token = env.path("token");
    std::fs::write(&token, b"k3Jq9vX2pL7sW0eRt5YzA8bN1cM4dF6h\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    serve_with(
        &mut env,
        &format!(
            "frame_timeout = 1\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"",
            token.display()
        ),
    );
    let addr = {
        let log = env.log_text();
        log.split("listening on tcp ")
            .nth(1)
            .expect("a TCP listener")
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    // An idle connection is never closed for being idle.
    let mut idle = env.client();
    let hello = deskd_proto::client_hello(deskd_proto::PROTOCOL_VERSION);

    // Unix, during the handshake: a hello sent a byte every 200 ms is cut off.
    let mut unix = UnixStream::connect(&env.socket).unwrap();
    unix.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    trickle_until_closed(&mut unix, &hello, &env, "unix handshake");

    // Unix, after the handshake: half a frame, then silence.
    let mut unix = UnixStream::connect(&env.socket).unwrap();
    deskd_proto::transport::client_handshake(&unix, None).unwrap();
    unix.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    unix.write_all(&half_a_request()).unwrap();
    let said = closed_within(&mut unix, Duration::from_secs(8), "unix frame", &env);
    assert!(
        String::from_utf8_lossy(&said).contains("frame_timeout"),
        "the client is told why: {said:?}"
    );
    assert!(
        env.log_text()
            .contains("closed a connection: a frame did not arrive whole within 1 s"),
        "{}",
        env.log_text()
    );

    // Unix, after the handshake: half a frame trickled a byte every 200 ms.
    let mut unix = UnixStream::connect(&env.socket).unwrap();
    deskd_proto::transport::client_handshake(&unix, None).unwrap();
    unix.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    trickle_until_closed(&mut unix, &half_a_request(), &env, "unix trickled frame");

    // TCP, before the token is proven: a trickled hello.
    let mut tcp = TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    trickle_until_closed(&mut tcp, &hello, &env, "tcp handshake");

    // TCP, after the handshake: half a frame.
    let tcp = TcpStream::connect(&addr).unwrap();
    deskd_proto::transport::client_handshake(&tcp, Some(b"k3Jq9vX2pL7sW0eRt5YzA8bN1cM4dF6h"))
        .unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    (&tcp).write_all(&half_a_request()).unwrap();
    closed_within(&tcp, Duration::from_secs(8), "tcp frame", &env);

    // The idle connection, quiet for several frame timeouts, still answers.
    idle.volumes().unwrap();
    root_dt_works(&env);
}
