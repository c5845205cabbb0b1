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
    // Throughout the flood, root connects again and again and is answered every time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let root_client = {
        let (stop, socket, log) = (stop.clone(), env.socket.clone(), env.log.clone());
        std::thread::spawn(move || {
            let mut answered = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let mut c = deskd_client::Client::connect(&socket, Duration::from_secs(10))
                    .unwrap_or_else(|e| {
                        panic!(
                            "root refused during the flood: {e}: {}",
                            std::fs::read_to_string(&log).unwrap_or_default()
                        )
                    });
                c.volumes().unwrap();
                answered += 1;
            }
            answered
        })
    };
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
    // Root was answered every time during nobody's flood.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(root_client.join().expect("root kept being answered") > 0);
    // A second user fills the rest of the 50 slots (connections just closed may still count
    // a moment); the next is over the total...
    let (second, report) = hold(&env, 65533, 25, 0);
    let accepted = report["accepted"].as_u64().unwrap();
    assert!((15..=20).contains(&accepted), "{report}");
    assert_eq!(
        report["refused"].as_u64().unwrap(),
        25 - accepted,
        "{report}"
    );
    let refusal = report["refusal"].as_str().unwrap();
    assert!(
        refusal.contains("too many connections are open (max_connections"),
        "{refusal}"
    );
    // ...and a dt of a third user says so clearly. (A slot freed late by a connection that
    // just closed is taken by one more holder first.)
    let mut holders = vec![nobody, second];
    let third = (0..10)
        .find_map(|round| {
            let out = env
                .as_user(
                    65532,
                    DT,
                    &[b"info", env.path("vol/f").as_os_str().as_encoded_bytes()],
                    &[],
                )
                .unwrap();
            if !out.status.success() {
                return Some(out);
            }
            holders.push(hold(&env, 65520 + round, 5, 0).0);
            None
        })
        .expect("the total limit never refused the third user");
    assert!(
        stderr(&third).contains("deskd refused the connection: too many connections"),
        "{}",
        stderr(&third)
    );
    // Root's reserve still lets root in. One root process that holds many connections (as
    // the Netatalk bridge does, one per afpd connection) gets only a few of the reserve...
    let mut root_held = Vec::new();
    while let Ok(mut c) = deskd_client::Client::connect(&env.socket, Duration::from_secs(10)) {
        c.volumes().unwrap();
        root_held.push(c);
        assert!(root_held.len() <= 10, "one process took the whole reserve");
    }
    assert!(root_held.len() >= 4, "{} root connections", root_held.len());
    // ...so root's dt, each run a process of its own, still gets in.
    for _ in 0..5 {
        root_dt_works(&env);
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
    for holder in holders {
        release(holder);
    }
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
        env.wait_for_log("listening on tcp ", 1);
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

// --- full disks ---

/// The registered ID of `rel` (a path in the volume `root`), read with a lookup (no write).
fn looked_up(env: &Env, root: &std::path::Path, rel: &str) -> u32 {
    let mut c = env.client();
    let vol = c.open_volume(root).unwrap().vol;
    c.maybe_object(deskd_client::Request::LookupPath {
        vol,
        path: rel.as_bytes().to_vec(),
    })
    .unwrap()
    .unwrap_or_else(|| panic!("{rel} not registered"))
    .id
}

fn status_json(env: &Env, root: &std::path::Path) -> serde_json::Value {
    let out = env.deskd_ok(&["status", "--json", "--volume", root.to_str().unwrap()]);
    serde_json::from_str(out.lines().next().unwrap()).unwrap()
}

/// The desktop is sound: SQLite's integrity check, read without creating any side file.
fn assert_sound(desktop: &std::path::Path) {
    let uri = format!("file:{}?immutable=1", desktop.display());
    assert_eq!(
        sqlite3(std::path::Path::new(&uri), "PRAGMA integrity_check"),
        "ok"
    );
}

fn assert_no_wal(desktop: &std::path::Path, env: &Env) {
    for side in ["-wal", "-shm"] {
        let mut path = desktop.as_os_str().to_owned();
        path.push(side);
        assert!(
            !std::path::Path::new(&path).exists(),
            "{} left behind: {}",
            std::path::Path::new(&path).display(),
            env.log_text()
        );
    }
}

/// `vol`, a new folder on a 16 MiB ext4 mounted at `env`'s `mnt`, with `n` empty files
/// `{prefix}{i}` in it; the file system stays mounted while the first value lives.
fn files_on_a_small_disk(
    env: &Env,
    prefix: &str,
    n: usize,
) -> (SmallExt4, std::path::PathBuf, Vec<String>) {
    let fs = SmallExt4::mount(env.path("mnt"), 16);
    let vol = fs.mnt.join("vol");
    std::fs::create_dir(&vol).unwrap();
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    for name in &names {
        std::fs::write(vol.join(name), b"").unwrap();
    }
    (fs, vol, names)
}

#[test]
fn a_volume_on_a_full_file_system_opens_read_only_and_serves_reads() {
    let mut env = Env::new(&[]);
    let (fs, vol, names) = files_on_a_small_disk(&env, "f", 20);
    let vol_arg = vol.display().to_string();
    env.start(&[&vol_arg]);
    let paths: Vec<_> = names.iter().map(|n| vol.join(n)).collect();
    let ids: Vec<u64> = env
        .ids(&paths)
        .iter()
        .map(|v| v["id"].as_u64().unwrap())
        .collect();
    env.term();
    fs.fill_leaving("fill", 0);
    assert!(fs.free_bytes() < 4096, "{} bytes free", fs.free_bytes());

    // It opens, read-only, and says why in the log and in status.
    env.start(&[&vol_arg]);
    assert!(
        env.log_text().contains("read-only: file system full"),
        "{}",
        env.log_text()
    );
    let status = status_json(&env, &vol);
    assert_eq!(status["read_only"], true, "{status}");
    assert_eq!(status["read_only_reason"], "file system full", "{status}");
    let text = env.deskd_ok(&["status", "--volume", &vol_arg]);
    assert!(
        text.contains("read-only:    yes: file system full"),
        "{text}"
    );
    // Reads are served, with the IDs as recorded.
    for (n, id) in names.iter().zip(&ids) {
        assert_eq!(looked_up(&env, &vol, n) as u64, *id);
    }
    let listing = env.dt_ok(&[b"ls", b"-l", vol_arg.as_bytes()]);
    assert!(listing.contains(&ids[3].to_string()), "{listing}");
    // A write is refused, saying why.
    let errors = register_all(&env, &vol, &["f1".to_string()]);
    let error = errors[0].clone().expect("refused");
    assert!(error.contains("read-only: file system full"), "{error}");
    let out = env.dt(&[b"mkdir", vol.join("new").as_os_str().as_encoded_bytes()]);
    assert!(
        stderr(&out).contains("volume is read-only"),
        "{}",
        stderr(&out)
    );
    // `dt info` of a registered object needs no write.
    assert_eq!(env.id_of(&vol.join("f2")) as u64, ids[2]);
    // SIGTERM leaves no WAL (nor anything else the failed writable open made).
    env.term();
    assert_no_wal(&vol.join(".Desktop"), &env);
    assert_sound(&vol.join(".Desktop"));

    // Space comes back: a SIGHUP opens it writable again.
    env.start(&[&vol_arg]);
    std::fs::remove_file(fs.mnt.join("fill")).unwrap();
    env.sighup(1);
    let status = status_json(&env, &vol);
    assert_eq!(status["read_only"], false, "{status}");
    assert!(status["read_only_reason"].is_null(), "{status}");
    std::fs::write(vol.join("later"), b"").unwrap();
    let later = env.id_of(&vol.join("later"));
    assert!(later as u64 > *ids.iter().max().unwrap());
    env.term();
    assert_no_wal(&vol.join(".Desktop"), &env);
    assert_sound(&vol.join(".Desktop"));
}

/// Register `paths` (relative to `root`) through one pipelining client; the error of each
/// refused one.
fn register_all(env: &Env, root: &std::path::Path, paths: &[String]) -> Vec<Option<String>> {
    let mut c = env.client();
    let vol = c.open_volume(root).unwrap().vol;
    let sent: Vec<u64> = paths
        .iter()
        .map(|p| c.send(add_path(vol, p.clone().into_bytes())).unwrap())
        .collect();
    c.flush().unwrap();
    sent.into_iter()
        .map(|id| c.wait(id).err().map(|e| e.to_string()))
        .collect()
}

#[test]
fn the_wal_never_takes_the_last_space_and_flush_works_on_a_full_disk() {
    const MIN_FREE: u64 = 1 << 20;
    let mut env = Env::new(&[]);
    let fs = SmallExt4::mount(env.path("mnt"), 24);
    let vol = fs.mnt.join("vol");
    std::fs::create_dir(&vol).unwrap();
    let config = env.path("deskd.toml");
    // No timed checkpoint during the test: only the free-space rule can empty the WAL.
    // Not watched: the registrations under test would find their files registered.
    let settings = |min_free: u64| {
        format!(
            "[defaults]\nmin_free = {min_free}\nflush_delay = 3600\nidle_close = 3600\n\
             watch = \"off\"\n"
        )
    };
    std::fs::write(&config, settings(MIN_FREE)).unwrap();
    let (config, vol_arg) = (config.display().to_string(), vol.display().to_string());
    env.start(&["--config", &config, &vol_arg]);
    fs.fill_leaving("fill", MIN_FREE + (1536 << 10));

    // Rounds of 100 registrations, each a commit that grows the WAL, until space runs out.
    let mut registered = Vec::new();
    let mut refused = None;
    'rounds: for round in 0..50 {
        let names: Vec<String> = (0..100).map(|i| format!("r{round}-{i}")).collect();
        for n in &names {
            if std::fs::write(vol.join(n), b"").is_err() {
                break 'rounds; // out of inodes or directory blocks: enough
            }
        }
        for (name, error) in names.iter().zip(register_all(&env, &vol, &names)) {
            match error {
                None => registered.push(name.clone()),
                Some(e) => {
                    refused = Some(e);
                    break 'rounds;
                }
            }
        }
        // The commits left room for their checkpoint (and more).
        assert!(
            fs.free_bytes() >= MIN_FREE / 2,
            "{} bytes free after round {round}",
            fs.free_bytes()
        );
    }
    let log = env.log_text();
    assert!(
        log.contains("WAL checkpointed before a commit"),
        "the free-space rule never checkpointed: {log}"
    );
    if let Some(e) = &refused {
        assert!(e.contains("nearly full"), "{e}");
    }
    // Every acknowledged registration is there, the WAL can be folded in, reads go on.
    env.deskd_ok(&["flush", "--volume", &vol_arg]);
    assert_eq!(status_json(&env, &vol)["wal_bytes"], 0);
    assert!(looked_up(&env, &vol, &registered[0]) > 0);
    assert!(looked_up(&env, &vol, registered.last().unwrap()) > 0);

    // New objects in the WAL, then the disk filled to the last block by someone else: the
    // checkpoint would have to grow the desktop, so `deskd flush` fails and says why; once
    // space is back it goes through. Nothing is lost meanwhile. With min_free the space rule
    // would checkpoint before each of these commits, and what the last batch left in the WAL
    // (batches are as the writer happens to take the requests) might fit the desktop's pages:
    // without it every new object stays in the WAL, and the desktop must grow.
    std::fs::write(&config, settings(0)).unwrap();
    env.sighup(1);
    let desktop = vol.join(".Desktop");
    let mut out = None;
    // Once under CI load a flush here went through: the new rows fitted pages the desktop
    // already had (a legitimate success, checked below). Then more objects are made and the
    // disk filled again, until the checkpoint must grow the desktop (twice at most).
    for round in 0..2 {
        let more: Vec<String> = (0..100 + 900 * round)
            .map(|i| format!("late{round}-{i}"))
            .collect();
        for n in &more {
            std::fs::write(vol.join(n), b"").unwrap();
        }
        assert!(register_all(&env, &vol, &more).iter().all(Option::is_none));
        registered.extend(more);
        fs.fill_leaving("fill3", 0);
        let size = std::fs::metadata(&desktop).unwrap().len();
        let flushed = env.deskd(&["flush", "--volume", &vol_arg]);
        if flushed.status.success() {
            assert_eq!(
                std::fs::metadata(&desktop).unwrap().len(),
                size,
                "a flush on a full disk grew the desktop"
            );
            std::fs::remove_file(fs.mnt.join("fill3")).unwrap();
            continue;
        }
        out = Some(flushed);
        break;
    }
    let out = out.expect("a flush whose checkpoint must grow the desktop on a full disk");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}",
        stderr(&out),
        env.log_text()
    );
    assert!(
        stderr(&out).contains("no space left for the checkpoint"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(fs.mnt.join("fill3")).unwrap();
    env.deskd_ok(&["flush", "--volume", &vol_arg]);
    assert_eq!(status_json(&env, &vol)["wal_bytes"], 0);
    std::fs::write(&config, settings(MIN_FREE)).unwrap();
    env.sighup(2);

    // A WAL of changes to existing rows, then the disk filled to the last block by someone
    // else: `deskd flush` folds it in (no new page is needed) and gives its space back.
    let mut c = env.client();
    let v = c.open_volume(&vol).unwrap().vol;
    for name in registered.iter().take(50) {
        let id = looked_up(&env, &vol, name);
        c.object(deskd_client::Request::SetInfo {
            vol: v,
            id,
            type_code: Some(*b"TEXT"),
            creator: Some(*b"ttxt"),
            flags: None,
        })
        .unwrap();
    }
    assert!(status_json(&env, &vol)["wal_bytes"].as_u64().unwrap() > 0);
    fs.fill_leaving("fill2", 0);
    env.deskd_ok(&["flush", "--volume", &vol_arg]);
    assert_eq!(status_json(&env, &vol)["wal_bytes"], 0);
    // With less than min_free left, a write is refused with a clear error; reads go on.
    let errors = register_all(&env, &vol, &[registered[0].clone(), "r0-0-new".into()]);
    let error = errors[1].clone().expect("refused");
    assert!(
        error.contains("nearly full") && error.contains("nothing was recorded"),
        "{error}"
    );
    assert!(looked_up(&env, &vol, &registered[1]) > 0);

    // SIGTERM on the full disk leaves no WAL, and the desktop is sound, also with a client
    // connected whose read connection the server holds open to the end.
    let mut reader = env.client();
    let v = reader.open_volume(&vol).unwrap().vol;
    reader
        .maybe_object(deskd_client::Request::LookupPath {
            vol: v,
            path: registered[2].clone().into_bytes(),
        })
        .unwrap()
        .expect("registered");
    env.term();
    drop(reader);
    assert_no_wal(&vol.join(".Desktop"), &env);
    assert_sound(&vol.join(".Desktop"));
    let objects = sqlite3(
        std::path::Path::new(&format!("file:{}/.Desktop?immutable=1", vol.display())),
        "SELECT count(*) FROM objects",
    );
    assert!(
        objects.parse::<usize>().unwrap() > registered.len(),
        "{objects}"
    );
}

// --- the Netatalk bridge ---

impl Bridge {
    /// afpd's handshake for volume `root`.
    fn hello(root: &std::path::Path) -> Vec<u8> {
        deskd_netatalk::wire::encode_handshake(&deskd_netatalk::wire::Handshake {
            volume_name: b"Public".to_vec(),
            volume_path: root.as_os_str().as_encoded_bytes().to_vec(),
            user: b"alice".to_vec(),
        })
    }

    /// A GETSTAMP request.
    fn getstamp() -> Vec<u8> {
        deskd_netatalk::wire::encode_request(&deskd_netatalk::wire::Request::new(
            deskd_netatalk::wire::op::GETSTAMP,
            0,
            0,
            b"",
        ))
    }

    /// An afpd connection to `root` that the bridge answered (None: it was closed).
    fn served(&self, root: &std::path::Path) -> Option<TcpStream> {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&Bridge::hello(root)).ok()?;
        Bridge::stamp(&mut s).then_some(s)
    }

    /// Whether a GETSTAMP on `s` is answered.
    fn stamp(s: &mut TcpStream) -> bool {
        s.write_all(&Bridge::getstamp()).is_ok() && deskd_netatalk::wire::read_reply(s).is_ok()
    }
}

#[test]
fn the_netatalk_bridge_limits_connections_and_half_sent_requests() {
    let mut env = Env::new(&["vol"]);
    std::fs::write(env.path("vol/f"), b"x").unwrap();
    // (One process of root, as the bridge is, cannot use up deskd's reserve either: see
    // a_flood_by_one_user_keeps_no_one_else_out.)
    serve_with(&mut env, "max_connections = 64");
    root_dt_works(&env);
    let vol = env.path("vol");
    let bridge = Bridge::start(&env, &["--max-connections", "20", "--frame-timeout", "1"]);

    // Half-sent input is cut off: a trickled handshake, and half a request after a good one.
    let mut idle = bridge.served(&vol).expect("served");
    let mut trickle = TcpStream::connect(&bridge.addr).unwrap();
    trickle
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    trickle_until_closed(&mut trickle, &Bridge::hello(&vol), &env, "bridge handshake");
    let mut half = bridge.served(&vol).expect("served");
    half.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    half.write_all(&Bridge::getstamp()[..20]).unwrap();
    closed_within(&mut half, Duration::from_secs(8), "bridge request", &env);
    bridge.wait_for_log("a request did not arrive whole within the frame timeout");
    // An idle afpd connection, quiet for longer than the frame timeout, is still served.
    assert!(Bridge::stamp(&mut idle));
    drop(idle);

    // A flood of afpd connections (anyone on the host can make them): at most 20 are served
    // by the bridge, the rest closed at once; root's dt still gets in.
    let began = Instant::now();
    let mut served = Vec::new();
    let mut closed = 0;
    for _ in 0..40 {
        match bridge.served(&vol) {
            Some(s) => served.push(s),
            None => closed += 1,
        }
    }
    assert!(served.len() <= 20, "{} served", served.len());
    assert!(closed >= 20, "{closed} closed");
    bridge.wait_for_log("refused: 20 afpd connections are open (--max-connections)");
    for _ in 0..3 {
        root_dt_works(&env);
    }
    assert!(began.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_crashed_volume_on_a_full_disk_serves_what_its_wal_holds() {
    let mut env = Env::new(&[]);
    let (fs, vol, names) = files_on_a_small_disk(&env, "w", 30);
    crate::start_keeping_the_wal(&mut env, &vol);
    assert!(register_all(&env, &vol, &names).iter().all(Option::is_none));
    let ids: Vec<u32> = names.iter().map(|n| looked_up(&env, &vol, n)).collect();
    // A crash leaves them in the WAL only (and, as after a restore of the desktop and its WAL,
    // no `-shm`); then the disk fills up, so not even the `-shm` can be made.
    env.kill9();
    let wal = vol.join(".Desktop-wal");
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "the WAL holds them"
    );
    std::fs::remove_file(vol.join(".Desktop-shm")).unwrap();
    fs.fill_leaving("fill", 0);

    crate::start_keeping_the_wal(&mut env, &vol);
    let log = env.log_text();
    assert!(log.contains("read-only: file system full"), "{log}");
    assert!(log.contains("(a copy)"), "{log}");
    assert_eq!(
        status_json(&env, &vol)["read_only_reason"],
        "file system full"
    );
    // Every acknowledged registration is served, from the WAL's copy.
    for (n, id) in names.iter().zip(&ids) {
        assert_eq!(looked_up(&env, &vol, n), *id, "{n}");
    }
    // The crashed desktop and its WAL are left as they were, for a later writable open; the
    // copy is gone.
    let copy = log
        .split("reads are served from ")
        .nth(1)
        .and_then(|rest| rest.split(" (a copy)").next())
        .map(std::path::PathBuf::from)
        .expect("the copy named in the log");
    assert!(copy.exists(), "{}", copy.display());
    env.term();
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    assert!(!copy.exists(), "{} left behind", copy.display());
    std::fs::remove_file(fs.mnt.join("fill")).unwrap();
    crate::start_keeping_the_wal(&mut env, &vol);
    assert_eq!(status_json(&env, &vol)["read_only"], false);
    for (n, id) in names.iter().zip(&ids) {
        assert_eq!(looked_up(&env, &vol, n), *id, "{n}");
    }
    env.term();
    assert_no_wal(&vol.join(".Desktop"), &env);
    assert_sound(&vol.join(".Desktop"));
}

/// How many connections nobody floods from, and how many `Find`s it pipelines on each.
const FLOOD_CONNECTIONS: usize = 3;
const FLOOD_FINDS: usize = 25;

/// The server's resident memory in bytes (`VmRSS` in /proc/PID/status).
fn vm_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// The flooder, run as nobody by the test below: on each connection, pipeline many `Find`s of
/// megabytes of replies each and read none of them; print `flooding`, hold until stdin closes.
fn flood_finds_without_reading() {
    let socket = std::env::var("DESKD_SOCKET").unwrap();
    let mut held = Vec::new();
    for _ in 0..FLOOD_CONNECTIONS {
        let mut c =
            deskd_client::Client::connect(std::path::Path::new(&socket), Duration::from_secs(30))
                .unwrap();
        let vol = c.volumes().unwrap()[0].vol;
        for _ in 0..FLOOD_FINDS {
            if c.send(deskd_client::Request::Find {
                vol,
                pattern: "hoarded".into(),
                mode: deskd_client::FindMode::Substring,
                limit: 10_000,
                after_id: 0,
            })
            .is_err()
            {
                break;
            }
        }
        // With backpressure the server stops reading: what is left may not fit the socket.
        let _ = c.flush();
        held.push(c);
    }
    println!("flooding");
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(held);
}

#[test]
fn a_client_that_never_reads_its_replies_cannot_take_the_servers_memory() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 65534 {
        return flood_finds_without_reading();
    }
    let mut env = Env::new(&["vol"]);
    // 10,000 files whose paths are long: one Find page of them is megabytes.
    let long = |c: char| std::iter::repeat_n(c, 200).collect::<String>();
    let dir = format!("{}/{}", long('d'), long('e'));
    std::fs::create_dir_all(env.path("vol").join(&dir)).unwrap();
    env.serve_unwatched(&["vol"]);
    let paths: Vec<String> = (0..10_000)
        .map(|i| format!("{dir}/hoarded-{i:05}-{}", long('f')))
        .collect();
    let mut dirs = vec![long('d'), dir.clone()];
    dirs.extend(paths.iter().cloned());
    for p in &paths {
        std::fs::write(env.path("vol").join(p), b"").unwrap();
    }
    let mut root = env.client();
    let vol = root.open_volume(&env.path("vol")).unwrap().vol;
    register_pipelined(&mut root, vol, &dirs);
    let find = deskd_client::Request::Find {
        vol,
        pattern: "hoarded".into(),
        mode: deskd_client::FindMode::Substring,
        limit: 10_000,
        after_id: 0,
    };
    // The size of one reply, as nobody gets it (it sees every hit).
    let reply = match root.call(find.clone()).unwrap() {
        deskd_client::Response::Objects(hits) => {
            assert_eq!(hits.len(), 10_000);
            deskd_proto::encode_frame_within(
                &deskd_proto::ReplyFrame {
                    id: 1,
                    result: Ok(deskd_client::Response::Objects(hits)),
                },
                deskd_proto::MAX_REPLY_FRAME,
            )
            .unwrap()
            .len() as u64
        }
        other => panic!("{other:?}"),
    };
    assert!(reply > 5 << 20, "one reply is {reply} bytes");
    let pid = env.server.as_ref().unwrap().id();
    let before = vm_rss(pid);
    // Per connection: the backlog bound, and about four replies' worth (the hits, the encoded
    // frame, its copy in the outbox, whose buffer may have doubled); twice that for the
    // allocator's slack, and 64 MiB for the rest. Without backpressure the server holds all
    // 75 replies (over 600 MB).
    let per_connection: u64 = 2 << 20;
    let bound = before + FLOOD_CONNECTIONS as u64 * 2 * (per_connection + 4 * reply) + (64 << 20);
    let me = std::env::current_exe().unwrap();
    let test = "limits::a_client_that_never_reads_its_replies_cannot_take_the_servers_memory";
    let mut nobody = env.spawn_as_user(
        65534,
        me.to_str().unwrap(),
        &[
            b"--exact",
            test.as_bytes(),
            b"--nocapture",
            b"--test-threads=1",
        ],
    );
    let mut out = BufReader::new(nobody.stdout.take().unwrap());
    let mut line = String::new();
    while !line.trim_end().ends_with("flooding") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the flooder ended");
    }
    // Watch the server while it answers what it read; root is answered all along.
    let mut peak = before;
    let watch = Instant::now();
    let mut root_answers = 0;
    while watch.elapsed() < Duration::from_secs(20) {
        peak = peak.max(vm_rss(pid));
        assert!(
            peak <= bound,
            "the server grew from {} MB to {} MB (bound {} MB) for a client that reads nothing",
            before >> 20,
            peak >> 20,
            bound >> 20
        );
        root.volumes().unwrap();
        root_answers += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(root_answers > 10);
    // Root's own big request is answered meanwhile, from a new connection too.
    assert!(matches!(
        root.call(find.clone()).unwrap(),
        deskd_client::Response::Objects(hits) if hits.len() == 10_000
    ));
    root_dt_works_on(&env, &format!("vol/{}", paths[0]));
    eprintln!(
        "server memory: {} MB before, peak {} MB, bound {} MB; one reply {} MB",
        before >> 20,
        peak >> 20,
        bound >> 20,
        reply >> 20
    );
    drop(nobody.stdin.take());
    nobody.wait().unwrap();
}

fn root_dt_works_on(env: &Env, rel: &str) {
    env.dt_ok(&[b"info", env.path(rel).as_os_str().as_encoded_bytes()]);
}

/// Run as nobody by the test below: 40 `IconAdd`s of 1 MB and a `CommentSet` of 1 MB on its own
/// file, each of which must be refused.
fn store_megabytes_in_the_desktop() {
    let socket = std::env::var("DESKD_SOCKET").unwrap();
    let mut c =
        deskd_client::Client::connect(std::path::Path::new(&socket), Duration::from_secs(30))
            .unwrap();
    let vol = c.volumes().unwrap()[0].vol;
    let mine = match c.call(deskd_client::Request::LookupPath {
        vol,
        path: b"mine/own.txt".to_vec(),
    }) {
        Ok(deskd_client::Response::MaybeObject(Some(o))) => o.id,
        other => panic!("nobody's own file: {other:?}"),
    };
    let mut requests: Vec<deskd_client::Request> = (0..40u32)
        .map(|i| deskd_client::Request::IconAdd {
            vol,
            creator: i.to_be_bytes(),
            type_code: *b"TEXT",
            itype: 1,
            tag: i,
            bitmap: vec![0xA5; 1_000_000],
        })
        .collect();
    requests.push(deskd_client::Request::CommentSet {
        vol,
        id: mine,
        text: vec![b'c'; 1_000_000],
    });
    for r in requests {
        match c.call(r) {
            Err(deskd_client::ClientError::Server(e))
                if e.code == deskd_client::ErrorCode::BadRequest => {}
            other => panic!("a megabyte was not refused: {other:?}"),
        }
    }
    println!("refused");
}

#[test]
fn nobody_cannot_grow_the_desktop_by_a_megabyte_a_request() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 65534 {
        return store_megabytes_in_the_desktop();
    }
    let mut env = Env::new(&["vol/mine"]);
    std::fs::write(env.path("vol/mine/own.txt"), b"x").unwrap();
    for p in ["vol/mine", "vol/mine/own.txt"] {
        std::os::unix::fs::chown(env.path(p), Some(65534), Some(65534)).unwrap();
    }
    env.serve_unwatched(&["vol"]);
    env.dt_ok(&[b"info", b"vol/mine/own.txt"]);
    let desktop = env.path("vol/.Desktop");
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let wal = deskd_db::wal_path(&desktop);
    let before = size(&desktop) + size(&wal);
    let me = std::env::current_exe().unwrap();
    let test = "limits::nobody_cannot_grow_the_desktop_by_a_megabyte_a_request";
    let out = env
        .as_user(
            65534,
            me.to_str().unwrap(),
            &[
                b"--exact",
                test.as_bytes(),
                b"--nocapture",
                b"--test-threads=1",
            ],
            &[],
        )
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("refused"),
        "{stdout}{}",
        stderr(&out)
    );
    let after = size(&desktop) + size(&wal);
    assert!(
        after < before + (1 << 20),
        "the desktop grew from {before} to {after} bytes"
    );
}
