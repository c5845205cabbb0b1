//! deskd over TCP: the real `deskd serve --listen`, the real `dt` and `deskd` verbs with
//! `--socket tcp://…`, the token challenge, and what is refused (wrong or missing token, admin
//! verbs without `tcp_admin`, unsafe token files, a listener without a token).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &[u8] = b"k3Jq9vX2pL7sW0eRt5YzA8bN1cM4dF6h\n";

fn write_token(path: &Path, token: &[u8], mode: u32) {
    std::fs::write(path, token).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A server on a Unix socket and on a TCP port of its choosing; returns the TCP address.
fn serve_tcp(env: &mut Env, extra: &[&str]) -> String {
    let token = env.path("token");
    write_token(&token, TOKEN, 0o600);
    let vol = env.path("vol").display().to_string();
    let token = token.display().to_string();
    let mut args = vec!["--listen", "127.0.0.1:0", "--token-file", &token];
    args.extend_from_slice(extra);
    if extra.contains(&"--config") {
        args.push(&vol);
        env.start(&args);
    } else {
        // Not watched: these tests count what clients registered over TCP, and files made
        // on disk for them would be registered by the watcher too.
        env.serve_unwatched_with(&["vol"], &args);
    }
    tcp_address(env)
}

/// The address the server logged for its TCP listener.
fn tcp_address(env: &Env) -> String {
    let began = Instant::now();
    loop {
        if let Some(rest) = env.log_text().split("listening on tcp ").nth(1) {
            return rest.split_whitespace().next().unwrap().to_string();
        }
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "no TCP listener in the log: {}",
            env.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `bin args` pointed at the TCP endpoint with `token` (or none).
fn over_tcp(env: &Env, bin: &str, addr: &str, token: Option<&Path>, args: &[&[u8]]) -> Output {
    let mut cmd: Command = env.command_for(bin, args);
    cmd.env("DESKD_SOCKET", format!("tcp://{addr}"));
    match token {
        Some(t) => cmd.env("DESKD_TOKEN_FILE", t),
        None => cmd.env_remove("DESKD_TOKEN_FILE"),
    };
    cmd.output().unwrap()
}

/// Run a `deskd serve` that must refuse to start; one that starts anyway is killed after 20 s
/// (and the test fails on its exit status) rather than hanging the test.
fn refused_start(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let began = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if began.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `deskd status --json` over TCP (one volume).
fn tcp_status(env: &Env, addr: &str, token: &Path) -> serde_json::Value {
    let out = ok(over_tcp(
        env,
        DESKD,
        addr,
        Some(token),
        &[b"status", b"--json"],
    ));
    serde_json::from_str(out.trim()).unwrap()
}

/// The command failed with exit status 1 and a message containing `text`.
fn fails_with(out: &Output, text: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", stderr(out));
    assert!(stderr(out).contains(text), "{}", stderr(out));
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "failed: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `deskd status` over TCP, tried until a connection slot is free (within 10 s).
fn status_once_a_slot_is_free(env: &Env, addr: &str, token: &Path) {
    let began = Instant::now();
    loop {
        let out = over_tcp(env, DESKD, addr, Some(token), &[b"status"]);
        if out.status.success() {
            return;
        }
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "{}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn token_path(env: &Env) -> PathBuf {
    env.path("token")
}

#[test]
fn dt_and_deskd_work_over_tcp_with_the_token() {
    let mut env = Env::new(&["vol"]);
    let addr = serve_tcp(&mut env, &[]);
    let tok = token_path(&env);
    ok(over_tcp(
        &env,
        DT,
        &addr,
        Some(&tok),
        &[b"mkdir", b"vol/dir"],
    ));
    ok(over_tcp(
        &env,
        DT,
        &addr,
        Some(&tok),
        &[b"touch", b"vol/dir/a"],
    ));
    // A tree is registered pipelined (hundreds of requests per round trip).
    for i in 0..300 {
        std::fs::write(env.path(&format!("vol/dir/f{i}")), b"x").unwrap();
    }
    ok(over_tcp(
        &env,
        DT,
        &addr,
        Some(&tok),
        &[b"cp", b"-R", b"vol/dir", b"vol/copy"],
    ));
    ok(over_tcp(
        &env,
        DT,
        &addr,
        Some(&tok),
        &[b"mv", b"vol/dir/a", b"vol/b"],
    ));
    // The Unix socket sees the same desktop: the ID made over TCP, now under its new name.
    let via_tcp = over_tcp(&env, DT, &addr, Some(&tok), &[b"info", b"--json", b"vol/b"]);
    let tcp_info: serde_json::Value = serde_json::from_str(&ok(via_tcp)).unwrap();
    assert_eq!(
        env.id_of(&env.path("vol/b")) as u64,
        tcp_info["id"].as_u64().unwrap()
    );
    let copied = sqlite3(
        &env.path("vol/.Desktop"),
        "SELECT count(*) FROM objects o JOIN objects p ON o.parent = p.id \
         WHERE CAST(p.name AS TEXT) = 'copy'",
    );
    assert_eq!(copied.trim(), "301", "a and f0..f299");
    // Read verbs of deskd work over TCP.
    let status = tcp_status(&env, &addr, &tok);
    // root, dir, b, copy and the 301 objects in copy (dir's f* were never registered).
    assert_eq!(status["objects"].as_u64(), Some(305), "{status}");
    let found = ok(over_tcp(
        &env,
        DESKD,
        &addr,
        Some(&tok),
        &[b"find", b"--exact", b"f299"],
    ));
    assert_eq!(
        found.trim(),
        env.path("vol/copy/f299").display().to_string()
    );
}

#[test]
fn a_wrong_or_missing_token_is_refused_and_logged() {
    let mut env = Env::new(&["vol"]);
    let addr = serve_tcp(&mut env, &[]);
    let wrong = env.path("wrong");
    write_token(&wrong, b"not-the-token-but-long-enough\n", 0o600);
    let before = objects_dump(&env.path("vol/.Desktop"));
    std::fs::write(env.path("vol/new"), b"x").unwrap();
    let out = over_tcp(&env, DT, &addr, Some(&wrong), &[b"touch", b"vol/new"]);
    fails_with(&out, "deskd refused the token");
    let out = over_tcp(&env, DESKD, &addr, None, &[b"status"]);
    fails_with(&out, "needs a token");
    assert!(env
        .log_text()
        .contains("refused a TCP client that gave a wrong token"));
    assert_eq!(
        objects_dump(&env.path("vol/.Desktop")),
        before,
        "nothing registered"
    );
    // A token file others may read is refused by the client too, before connecting.
    let open = env.path("open");
    write_token(&open, TOKEN, 0o644);
    let out = over_tcp(&env, DESKD, &addr, Some(&open), &[b"status"]);
    fails_with(&out, "other users may read it");
}

#[test]
fn a_replayed_answer_and_raw_garbage_get_nothing() {
    let mut env = Env::new(&["vol"]);
    let addr = serve_tcp(&mut env, &[]);
    let token = TOKEN.trim_ascii_end();
    let challenge = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&deskd_proto::client_hello(deskd_proto::PROTOCOL_VERSION))
            .unwrap();
        let mut hello = [0u8; 8];
        s.read_exact(&mut hello).unwrap();
        assert_eq!(deskd_proto::parse_server_hello(&hello).unwrap(), 2);
        let mut c = [0u8; 32];
        s.read_exact(&mut c).unwrap();
        c
    };
    // A right answer to one challenge...
    let mut first = TcpStream::connect(&addr).unwrap();
    let c1 = challenge(&mut first);
    let answer = deskd_proto::transport::challenge_answer(token, &c1);
    // ...replayed on another connection: that one has a fresh challenge, so it is refused.
    let mut second = TcpStream::connect(&addr).unwrap();
    let c2 = challenge(&mut second);
    assert_ne!(c1, c2, "every connection gets its own challenge");
    second.write_all(&answer).unwrap();
    let mut hello = [0u8; 8];
    second.read_exact(&mut hello).unwrap();
    assert_eq!(
        deskd_proto::parse_server_hello(&hello).unwrap(),
        3,
        "refused"
    );
    assert_eq!(second.read(&mut [0u8; 1]).unwrap(), 0, "then closed");
    first.write_all(&answer).unwrap();
    first.read_exact(&mut hello).unwrap();
    assert_eq!(
        deskd_proto::parse_server_hello(&hello).unwrap(),
        0,
        "accepted"
    );
    // Not our protocol at all: closed without an answer; the server goes on.
    let mut http = TcpStream::connect(&addr).unwrap();
    http.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    http.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(http.read(&mut [0u8; 8]).unwrap_or(0), 0);
    let tok = token_path(&env);
    ok(over_tcp(&env, DESKD, &addr, Some(&tok), &[b"status"]));
}

#[test]
fn admin_verbs_over_tcp_need_tcp_admin() {
    let mut env = Env::new(&["vol"]);
    let addr = serve_tcp(&mut env, &[]);
    let tok = token_path(&env);
    let out = over_tcp(&env, DESKD, &addr, Some(&tok), &[b"flush"]);
    fails_with(
        &out,
        "not allowed over TCP (tcp_admin = true in [server] allows them)",
    );
    let out = over_tcp(&env, DESKD, &addr, Some(&tok), &[b"freeze", b"5"]);
    fails_with(&out, "not allowed over TCP");
    env.term();
    // With tcp_admin = true in the config file they work.
    let config = env.path("deskd.toml");
    std::fs::write(&config, "[server]\ntcp_admin = true\n").unwrap();
    let config = config.display().to_string();
    let addr = serve_tcp(&mut env, &["--config", &config]);
    assert!(env.log_text().contains("admin verbs allowed"));
    ok(over_tcp(&env, DESKD, &addr, Some(&tok), &[b"flush"]));
    ok(over_tcp(&env, DESKD, &addr, Some(&tok), &[b"freeze", b"5"]));
    let status = tcp_status(&env, &addr, &tok);
    assert!(status["frozen_until"].is_i64(), "frozen: {status}");
    ok(over_tcp(&env, DESKD, &addr, Some(&tok), &[b"thaw"]));
}

#[test]
fn the_server_refuses_unsafe_tcp_settings() {
    let env = Env::new(&["vol"]);
    let vol = env.path("vol").display().to_string();
    let sock = env.socket.display().to_string();
    let serve = |args: &[&str]| {
        let mut cmd = Command::new(DESKD);
        cmd.args(["serve", "--socket", &sock])
            .args(args)
            .arg(&vol)
            .env_remove("DESKD_TOKEN_FILE");
        refused_start(cmd)
    };
    let out = serve(&["--listen", "127.0.0.1:0"]);
    fails_with(&out, "listen needs token_file");
    let open = env.path("open").display().to_string();
    write_token(Path::new(&open), TOKEN, 0o604);
    let out = serve(&["--listen", "127.0.0.1:0", "--token-file", &open]);
    fails_with(&out, "other users may read it (mode 0604)");
    let short = env.path("short").display().to_string();
    write_token(Path::new(&short), b"abc\n", 0o600);
    let out = serve(&["--listen", "127.0.0.1:0", "--token-file", &short]);
    fails_with(&out, "the token has 3 bytes");
    // A token file another user owns: that user could choose the token the next reload reads.
    let theirs = env.path("theirs").display().to_string();
    write_token(Path::new(&theirs), TOKEN, 0o600);
    std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
    let out = serve(&["--listen", "127.0.0.1:0", "--token-file", &theirs]);
    fails_with(&out, "owned by uid 65534, who could choose the token");
    // A port taken by someone else.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let good = env.path("good").display().to_string();
    write_token(Path::new(&good), TOKEN, 0o600);
    let out = serve(&["--listen", &port, "--token-file", &good]);
    fails_with(&out, &format!("tcp {port}"));
    assert!(!env.socket.exists(), "no socket left behind");
    // --socket must stay a Unix socket path for the server.
    let mut cmd = Command::new(DESKD);
    cmd.args(["serve", "--socket", "tcp://127.0.0.1:1", &vol]);
    let out = refused_start(cmd);
    fails_with(&out, "--listen HOST:PORT");
}

#[test]
fn sighup_flushes_and_rereads_the_token() {
    let mut env = Env::new(&["vol"]);
    let addr = serve_tcp(&mut env, &[]);
    let tok = token_path(&env);
    ok(over_tcp(&env, DT, &addr, Some(&tok), &[b"touch", b"vol/a"]));
    let old = env.path("old-token");
    write_token(&old, TOKEN, 0o600);
    // A new token in the file; the running server still wants the old one...
    write_token(&tok, b"a-new-token-after-rotation\n", 0o600);
    ok(over_tcp(&env, DESKD, &addr, Some(&old), &[b"status"]));
    let wal_before = wal_bytes(&env);
    assert!(wal_before > 0, "the touch is in the WAL");
    // ...until SIGHUP: then only the new one, and every desktop is flushed.
    env.sighup(1);
    let out = over_tcp(&env, DESKD, &addr, Some(&old), &[b"status"]);
    assert!(
        stderr(&out).contains("refused the token"),
        "{}",
        stderr(&out)
    );
    ok(over_tcp(&env, DESKD, &addr, Some(&tok), &[b"status"]));
    assert_eq!(wal_bytes(&env), 0, "flushed by SIGHUP");
    // A token file that cannot be used leaves the token in force, and says why.
    std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o644)).unwrap();
    env.sighup(2);
    assert!(env.log_text().contains(
        "other users may read it (mode 0644); `chmod o-rwx` it; the previous token stays in force"
    ));
    std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o600)).unwrap();
    ok(over_tcp(&env, DESKD, &addr, Some(&tok), &[b"status"]));
}

fn wal_bytes(env: &Env) -> u64 {
    let status = env.deskd_ok(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
    status["wal_bytes"].as_u64().unwrap()
}

#[test]
fn connections_beyond_tcp_max_connections_are_closed_at_once() {
    let mut env = Env::new(&["vol"]);
    let config = env.path("deskd.toml");
    std::fs::write(&config, "[server]\ntcp_max_connections = 2\n").unwrap();
    let config = config.display().to_string();
    let addr = serve_tcp(&mut env, &["--config", &config]);
    let tok = token_path(&env);
    // Two connections that never say hello hold both slots...
    let first = TcpStream::connect(&addr).unwrap();
    let _second = TcpStream::connect(&addr).unwrap();
    // ...so a third is closed without an answer, and the log says why.
    let began = Instant::now();
    while !env
        .log_text()
        .contains("refused: 2 TCP connections are open")
    {
        let mut third = TcpStream::connect(&addr).unwrap();
        third
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = third.write_all(&deskd_proto::client_hello(deskd_proto::PROTOCOL_VERSION));
        assert_eq!(
            third.read(&mut [0u8; 8]).unwrap_or(0),
            0,
            "closed unanswered"
        );
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "{}",
            env.log_text()
        );
    }
    let out = over_tcp(&env, DESKD, &addr, Some(&tok), &[b"status"]);
    assert_eq!(out.status.code(), Some(1), "no slot free");
    // Once one leaves, its slot is free again.
    drop(first);
    status_once_a_slot_is_free(&env, &addr, &tok);
    // The Unix socket is never limited by it.
    env.deskd_ok(&["status"]);
}

#[test]
fn sighup_applies_tcp_admin_token_file_and_max_connections() {
    let mut env = Env::new(&["vol"]);
    let (tok_a, tok_b) = (env.path("token-a"), env.path("token-b"));
    write_token(&tok_a, TOKEN, 0o600);
    write_token(&tok_b, b"the-second-token-of-this-test\n", 0o600);
    let config = env.path("deskd.toml");
    let write_config = |listen: &str, token: &Path, admin: bool, max: usize| {
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"{listen}\"\ntoken_file = \"{}\"\ntcp_admin = {admin}\n\
                 tcp_max_connections = {max}\n",
                token.display()
            ),
        )
        .unwrap()
    };
    write_config("127.0.0.1:0", &tok_a, false, 100);
    let vol = env.path("vol").display().to_string();
    env.start(&["--config", &config.display().to_string(), &vol]);
    let addr = tcp_address(&env);
    let out = over_tcp(&env, DESKD, &addr, Some(&tok_a), &[b"flush"]);
    fails_with(&out, "not allowed over TCP");

    // tcp_admin, token_file and tcp_max_connections take effect at the SIGHUP.
    write_config("127.0.0.1:0", &tok_b, true, 1);
    env.sighup(1);
    ok(over_tcp(&env, DESKD, &addr, Some(&tok_b), &[b"flush"]));
    let out = over_tcp(&env, DESKD, &addr, Some(&tok_a), &[b"status"]);
    assert!(
        stderr(&out).contains("refused the token"),
        "{}",
        stderr(&out)
    );
    // One connection that never says hello now holds the only slot: a second is closed at
    // once. (Until the connections above are gone, they may hold it instead; then try again.)
    let still_open = |stream: &mut TcpStream, wait: Duration| {
        stream.set_read_timeout(Some(wait)).unwrap();
        matches!(stream.read(&mut [0u8; 8]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    };
    let began = Instant::now();
    let _idle = loop {
        let mut idle = TcpStream::connect(&addr).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let mut probe = TcpStream::connect(&addr).unwrap();
        let probe_refused = !still_open(&mut probe, Duration::from_secs(1));
        if probe_refused && still_open(&mut idle, Duration::from_millis(100)) {
            break idle;
        }
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "{}",
            env.log_text()
        );
    };
    let out = over_tcp(&env, DESKD, &addr, Some(&tok_b), &[b"status"]);
    assert_eq!(out.status.code(), Some(1), "no slot free");

    // Only the address waits for a restart, and the log says so.
    write_config("127.0.0.1:1", &tok_b, true, 100);
    env.sighup(2);
    assert!(
        env.log_text()
            .contains("listen: 127.0.0.1:1 changes at the next start"),
        "{}",
        env.log_text()
    );
    // A token file that cannot be used keeps the token (and the file) in force.
    write_config("127.0.0.1:0", &env.path("no-such-token"), true, 100);
    env.sighup(3);
    assert!(
        env.log_text().contains("the previous token stays in force"),
        "{}",
        env.log_text()
    );
    drop(_idle);
    status_once_a_slot_is_free(&env, &addr, &tok_b);
}

#[test]
fn the_server_raises_its_open_file_limit_to_the_hard_one() {
    // A server started by hand gets the shell's soft limit, often below the connection caps
    // together (socket, TCP, HTTP, afpd): each connection costs descriptors.
    let mut env = Env::new(&["vol"]);
    env.server_wrapper = vec!["prlimit".into(), "--nofile=256:8192".into()];
    let vol = env.path("vol").display().to_string();
    env.start(&[&vol]);
    // prlimit execs deskd, so the child's pid is the server's.
    let pid = env.server.as_ref().unwrap().id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[3..5], &["8192", "8192"], "{line}");
}
