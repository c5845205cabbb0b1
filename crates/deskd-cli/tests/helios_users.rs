//! Issue 24, item 7: HELIOS Admin's "Active Users" and an audit trail. `deskd status [--json]`
//! lists the connected clients of each volume (uid, pid, program, since, TCP peer); a peer that
//! is neither root nor the volume's owner sees only its own uid's. The server log says, under
//! the target `deskd::audit`, who changed what (uid, pid, program, request, ID, path) once it
//! committed, and who asked for a freeze, thaw or flush; names cannot forge lines, and
//! `DESKD_LOG=…,deskd::audit=off` silences it. The audit tests serve unwatched (`watch =
//! "off"`): a watcher would register the files they make before the client's request does.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use deskd_client::Request;

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `deskd status --json` (as root, or as `uid`): one object per volume.
fn status_json(env: &Env, uid: Option<u32>) -> Vec<serde_json::Value> {
    let args: &[&[u8]] = &[b"status", b"--json"];
    let out = match uid {
        None => env.deskd(&["status", "--json"]),
        Some(uid) => env.as_user(uid, DESKD, args, &[]).expect("runs as root"),
    };
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The `clients` of the volume whose path ends with `/name`.
fn clients_of(statuses: &[serde_json::Value], name: &str) -> Vec<serde_json::Value> {
    let volume = statuses
        .iter()
        .find(|s| s["path"].as_str().unwrap().ends_with(&format!("/{name}")))
        .unwrap_or_else(|| panic!("no volume {name}: {statuses:?}"));
    volume["clients"].as_array().unwrap().clone()
}

/// Serve `vol` (with a folder `vol/pub` everyone may write) and `other` from a configuration
/// file, every write held in the server's test hook until [`Env::release_writes`], so a `dt`
/// stays connected, waiting for its answer, for as long as a test looks at it.
fn serve_two_holding_writes(env: &mut Env) {
    // The folder and the one beside it where dt writes its resource files.
    for public in ["vol/pub", "vol/.rsrc/pub"] {
        let public = env.path(public);
        std::fs::create_dir_all(&public).unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let config = format!(
        "[volume.\"{}\"]\n[volume.\"{}\"]\n",
        env.path("vol").display(),
        env.path("other").display()
    );
    std::fs::write(env.path("deskd.toml"), config).unwrap();
    let release = env.path("release-writes").display().to_string();
    env.server_env
        .push(("DESKD_TEST_HOLD_WRITES_UNTIL".into(), release));
    let config = env.path("deskd.toml").display().to_string();
    env.start(&["--config", &config]);
}

/// `dt touch PATH` as `uid` (None: root), left running.
fn spawn_dt_touch(env: &Env, uid: Option<u32>, path: &str) -> Child {
    match uid {
        Some(uid) => env.spawn_as_user(uid, DT, &[b"touch", path.as_bytes()]),
        None => env
            .command_for(DT, &[b"touch", path.as_bytes()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    }
}

/// Poll `deskd status --json` until `done` holds for it (20 s at most).
fn wait_for_status(env: &Env, what: &str, done: impl Fn(&[serde_json::Value]) -> bool) {
    let began = Instant::now();
    loop {
        let statuses = status_json(env, None);
        if done(&statuses) {
            return;
        }
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "waited for {what}: {statuses:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn status_lists_each_volumes_clients_and_forgets_those_that_leave() {
    let mut env = Env::new(&["vol", "other"]);
    serve_two_holding_writes(&mut env);
    let began = now_unix();
    // Two dt clients, root's and nobody's, each connected and waiting for its write.
    let mut root_dt = spawn_dt_touch(&env, None, "vol/by-root");
    let mut nobody_dt = spawn_dt_touch(&env, Some(65534), "vol/pub/by-nobody");
    env.wait_for_held_write(2);
    // And a connection this test holds, on the other volume only.
    let mut held = env.client();
    held.open_volume(&env.path("other")).unwrap();

    let statuses = status_json(&env, None);
    let on_vol = clients_of(&statuses, "vol");
    assert_eq!(on_vol.len(), 2, "{on_vol:?}");
    for (child, uid) in [(&root_dt, 0), (&nobody_dt, 65534)] {
        let entry = on_vol
            .iter()
            .find(|c| c["pid"] == child.id())
            .unwrap_or_else(|| panic!("pid {} not listed: {on_vol:?}", child.id()));
        assert_eq!(entry["uid"], uid);
        assert_eq!(entry["program"], "dt");
        assert_eq!(entry["tcp_peer"], serde_json::Value::Null);
        let since = entry["since"].as_i64().unwrap();
        assert!(since >= began - 1 && since <= now_unix() + 1, "{entry}");
    }
    let root_entry = on_vol.iter().find(|c| c["uid"] == 0).unwrap();
    assert_eq!(root_entry["user"], "root");
    let on_other = clients_of(&statuses, "other");
    assert_eq!(on_other.len(), 1, "{on_other:?}");
    assert_eq!(on_other[0]["pid"], std::process::id());
    assert_eq!(on_other[0]["uid"], 0);

    // The text output: an "active users:" block per volume.
    let text = env.deskd_ok(&["status"]);
    assert!(text.contains("active users: 2"), "{text}");
    assert!(text.contains("active users: 1"), "{text}");
    for child in [&root_dt, &nobody_dt] {
        assert!(
            text.contains(&format!(" pid {} dt  since ", child.id())),
            "{text}"
        );
    }
    assert!(text.contains("uid 0 (root) pid "), "{text}");
    assert!(text.contains("uid 65534 "), "{text}");

    // nobody sees its own dt only, and how many others there are.
    let as_nobody = status_json(&env, Some(65534));
    let seen = clients_of(&as_nobody, "vol");
    assert_eq!(seen.len(), 1, "nobody sees others' connections: {seen:?}");
    assert_eq!(seen[0]["pid"], nobody_dt.id());
    let vol_status = as_nobody
        .iter()
        .find(|s| s["path"].as_str().unwrap().ends_with("/vol"))
        .unwrap();
    assert_eq!(vol_status["hidden_clients"], 1);
    assert!(clients_of(&as_nobody, "other").is_empty());
    let text = env.as_nobody(DESKD, &[b"status"]).expect("runs as root");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(!text.contains(&format!("pid {} ", root_dt.id())), "{text}");
    assert!(
        !text.contains(&format!("pid {} ", std::process::id())),
        "{text}"
    );
    assert!(text.contains("of other users not shown"), "{text}");

    // Those that leave are gone from the list.
    env.release_writes();
    assert!(root_dt.wait().unwrap().success());
    assert!(nobody_dt.wait().unwrap().success());
    drop(held);
    wait_for_status(&env, "every client gone", |s| {
        clients_of(s, "vol").is_empty() && clients_of(s, "other").is_empty()
    });
}

/// A connection that stalls in the middle of a frame is closed by the frame timeout, and
/// leaves the list as one that ends normally does.
#[test]
fn a_connection_closed_by_the_frame_timeout_leaves_the_list() {
    use std::io::Write;
    let mut env = Env::new(&["vol"]);
    let vol = env.path("vol").display().to_string();
    let config = format!("[server]\nframe_timeout = 1\n[volume.\"{vol}\"]\n");
    std::fs::write(env.path("deskd.toml"), config).unwrap();
    let config = env.path("deskd.toml").display().to_string();
    env.start(&["--config", &config]);
    // A raw connection: handshake, OpenVolume, then half a frame.
    let mut stream = std::os::unix::net::UnixStream::connect(&env.socket).unwrap();
    stream
        .write_all(&deskd_proto::client_hello(deskd_proto::PROTOCOL_VERSION))
        .unwrap();
    let mut hello = [0u8; 8];
    std::io::Read::read_exact(&mut stream, &mut hello).unwrap();
    let open = deskd_proto::RequestFrame {
        id: 1,
        request: Request::OpenVolume {
            root: vol.as_bytes().to_vec(),
        },
    };
    stream
        .write_all(&deskd_proto::encode_frame(&open).unwrap())
        .unwrap();
    wait_for_status(&env, "the raw connection listed", |s| {
        clients_of(s, "vol").len() == 1
    });
    stream.write_all(&100u32.to_be_bytes()).unwrap();
    stream.write_all(&[0u8; 10]).unwrap();
    env.wait_for_log("did not arrive whole within 1 s", 1);
    wait_for_status(&env, "the stalled connection gone", |s| {
        clients_of(s, "vol").is_empty()
    });
}

/// A TCP client is listed with its peer address (and no uid or pid).
#[test]
fn a_tcp_client_is_listed_with_its_peer_address() {
    let mut env = Env::new(&["vol"]);
    let token = env.path("token");
    std::fs::write(&token, b"k3Jq9vX2pL7sW0eRt5YzA8bN1cM4dF6h\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let vol = env.path("vol").display().to_string();
    let token_arg = token.display().to_string();
    env.start(&["--listen", "127.0.0.1:0", "--token-file", &token_arg, &vol]);
    env.wait_for_log("listening on tcp ", 1);
    let log = env.log_text();
    let addr = log.split("listening on tcp ").nth(1).unwrap();
    let addr = addr.split_whitespace().next().unwrap().to_string();
    let mut tcp = deskd_client::Client::connect_to(
        &deskd_proto::Endpoint::Tcp(addr),
        Some(b"k3Jq9vX2pL7sW0eRt5YzA8bN1cM4dF6h"),
        Duration::from_secs(10),
    )
    .unwrap();
    tcp.open_volume(&env.path("vol")).unwrap();
    let clients = clients_of(&status_json(&env, None), "vol");
    assert_eq!(clients.len(), 1, "{clients:?}");
    let peer = clients[0]["tcp_peer"].as_str().unwrap();
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");
    assert_eq!(clients[0]["uid"], serde_json::Value::Null);
    assert_eq!(clients[0]["pid"], serde_json::Value::Null);
    let text = env.deskd_ok(&["status"]);
    assert!(text.contains(&format!("    tcp {peer}  since ")), "{text}");
}

/// The audit lines of the log (`deskd::audit`).
fn audit_lines(env: &Env) -> Vec<String> {
    env.log_text()
        .lines()
        .filter(|l| l.contains(" deskd::audit: "))
        .map(str::to_owned)
        .collect()
}

/// The one audit line holding every one of `parts`, once it is written (the server's audit
/// thread writes the lines a moment after the replies; 20 s at most).
fn audit_line(env: &Env, parts: &[&str]) -> String {
    let began = Instant::now();
    loop {
        let lines = audit_lines(env);
        let found: Vec<&String> = lines
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .collect();
        match found.len() {
            0 if began.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            1 => return found[0].clone(),
            _ => panic!("{parts:?} in {lines:#?}"),
        }
    }
}

#[test]
fn each_committed_change_is_logged_with_who_what_id_and_path() {
    let mut env = Env::new(&["vol"]);
    env.serve_unwatched(&["vol"]);
    let root = env.path("vol").display().to_string();
    env.dt_ok(&[b"mkdir", b"vol/d"]);
    let dt = |args: &[&str]| {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let child = env
            .command_for(DT, &args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "dt {args:?}: {}", stderr(&out));
        format!("uid 0 pid {pid} (dt) on {root}: ")
    };
    let who = dt(&["touch", "vol/d/a"]);
    let id = env.id_of(&env.path("vol/d/a"));
    audit_line(&env, &[&who, &format!("add id {id} path \"d/a\"")]);
    let who = dt(&["mv", "vol/d/a", "vol/b"]);
    audit_line(
        &env,
        &[&who, &format!("rename id {id} path \"d/a\" to \"b\"")],
    );
    let who = dt(&["set", "--type", "TEXT", "--creator", "ttxt", "vol/b"]);
    audit_line(
        &env,
        &[
            &who,
            &format!("set info id {id} path \"b\" type \"TEXT\" creator \"ttxt\""),
        ],
    );
    let who = dt(&["set", "--comment", "hello", "vol/b"]);
    audit_line(
        &env,
        &[&who, &format!("set comment id {id} path \"b\" (5 bytes)")],
    );
    let who = dt(&["set", "--comment", "", "vol/b"]);
    audit_line(&env, &[&who, &format!("remove comment id {id} path \"b\"")]);
    let who = dt(&["rm", "vol/b"]);
    audit_line(&env, &[&who, &format!("delete id {id} path \"b\"")]);
    // Every line is at info level under the audit target.
    for line in audit_lines(&env) {
        assert!(line.contains(" INFO deskd::audit: uid 0 pid "), "{line}");
    }

    // Registering what is registered already changes nothing: no line.
    let before = audit_lines(&env).len();
    let mut c = env.client();
    let vol = c.open_volume(&env.path("vol")).unwrap().vol;
    let again = c
        .call(Request::AddPath {
            vol,
            path: b"d".to_vec(),
            hint: None,
            type_code: None,
            creator: None,
            carried: None,
        })
        .unwrap();
    assert!(matches!(again, deskd_client::Response::Object(ref o) if !o.created));
    // A change after it: once its line is written, any line of the request before it would
    // be too (the lines are written in the order of the commits).
    env.dt_ok(&[b"touch", b"vol/last"]);
    audit_line(&env, &["path \"last\""]);
    let lines = audit_lines(&env);
    assert_eq!(lines.len(), before + 1, "{lines:#?}");
    assert!(lines[before].contains("add id ") && lines[before].contains("path \"last\""));
}

#[test]
fn refused_requests_leave_no_audit_line() {
    let mut env = Env::new(&["vol"]);
    env.serve_unwatched(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/kept"]);
    let id = env.id_of(&env.path("vol/kept"));
    let before = audit_lines(&env);

    // Refused by the writer: the file is still there, so its record may not go.
    let mut c = env.client();
    let vol = c.open_volume(&env.path("vol")).unwrap().vol;
    let err = c
        .call(Request::Delete {
            vol,
            id,
            recursive: false,
        })
        .unwrap_err();
    assert!(err.to_string().contains("exists"), "{err}");
    // Refused at the door: nobody may not comment on root's file.
    let out = env
        .as_nobody(DT, &[b"set", b"--comment", b"mine", b"vol/kept"])
        .expect("runs as root");
    assert!(!out.status.success());
    // Refused in a batch with others that commit: only those are logged.
    let mut pipelined = Vec::new();
    for name in ["p1", "p2"] {
        std::fs::write(env.path("vol").join(name), b"").unwrap();
        pipelined.push(Request::AddPath {
            vol,
            path: name.as_bytes().to_vec(),
            hint: None,
            type_code: None,
            creator: None,
            carried: None,
        });
    }
    pipelined.insert(
        1,
        Request::Delete {
            vol,
            id,
            recursive: false,
        },
    );
    // Sent before any answer is read: the writer takes them as one batch when it can.
    let ids: Vec<u64> = pipelined.into_iter().map(|r| c.send(r).unwrap()).collect();
    c.flush().unwrap();
    for id in ids {
        let _ = c.wait(id);
    }
    env.dt_ok(&[b"touch", b"vol/last"]);
    audit_line(&env, &["path \"last\""]);

    let after = audit_lines(&env);
    let new: Vec<&String> = after[before.len()..].iter().collect();
    assert_eq!(new.len(), 3, "{new:#?}");
    assert!(new[2].contains("path \"last\""), "{new:#?}");
    assert!(
        new.iter()
            .all(|l| !l.contains("delete") && !l.contains("comment")),
        "{new:#?}"
    );
    assert!(
        new[0].contains("path \"p1\"") && new[1].contains("path \"p2\""),
        "{new:#?}"
    );
}

#[test]
fn freeze_thaw_and_flush_say_who_asked() {
    let mut env = Env::new(&["vol"]);
    env.serve_unwatched(&["vol"]);
    let root = env.path("vol").display().to_string();
    let deskd = |args: &[&str]| {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let child = env
            .command_for(DESKD, &args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "deskd {args:?}: {}", stderr(&out));
        format!("uid 0 pid {pid} (deskd) on {root}: ")
    };
    let who = deskd(&["freeze", "30"]);
    audit_line(&env, &[&who, "freeze 30 s (frozen until "]);
    let who = deskd(&["thaw"]);
    audit_line(&env, &[&who, "thaw"]);
    let who = deskd(&["flush"]);
    audit_line(&env, &[&who, "flush"]);
    // Refused to nobody, who is not the volume's owner: no line (by the time the flush after
    // it has its line).
    let out = env.as_nobody(DESKD, &[b"flush"]).expect("runs as root");
    assert!(!out.status.success());
    let who = deskd(&["flush"]);
    audit_line(&env, &[&who, "flush"]);
    // A reload names the process that sent SIGHUP (here: this test).
    env.sighup(1);
    audit_line(
        &env,
        &[
            &format!("uid 0 pid {} (", std::process::id()),
            "reload (SIGHUP)",
        ],
    );
    assert!(!env.log_text().contains("uid 65534"), "{}", env.log_text());
}

#[test]
fn a_hostile_name_cannot_forge_a_log_line() {
    let mut env = Env::new(&["vol"]);
    env.serve_unwatched(&["vol"]);
    let forged = "2026-01-01T00:00:00.000000Z  INFO deskd::audit: uid 1234 pid 1 (dt) fake";
    let mut name = b"vol/x\n".to_vec();
    name.extend_from_slice(forged.as_bytes());
    name.extend_from_slice(b"\r\x1b[2K\xff");
    env.dt_ok(&[b"touch", &name]);
    let line = audit_line(&env, &["add id "]);
    let log = env.log_text();
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01")),
        "a forged line: {log}"
    );
    assert!(
        line.contains(&format!("path \"x\\n{forged}\\r\\u{{1b}}[2K\\xff\"")),
        "{line}"
    );
    assert!(!log.contains('\u{1b}'), "an escape reached the log: {log}");

    // The program name is the client's word too: dt run under a name with a newline (the
    // kernel takes a process's name from the file it ran, 15 bytes at most).
    let hostile_dt = env.path("d\n2026 INFO f");
    std::os::unix::fs::symlink(DT, &hostile_dt).unwrap();
    let out = env
        .command_for(
            hostile_dt.to_str().unwrap(),
            &[b"touch", b"vol/by-hostile-dt"],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let line = audit_line(&env, &["path \"by-hostile-dt\""]);
    assert!(line.contains("(d\\n2026 INFO f) on "), "{line}");
    assert!(
        !env.log_text().lines().any(|l| l.starts_with("2026 INFO")),
        "{}",
        env.log_text()
    );
}

#[test]
fn the_audit_target_can_be_turned_off() {
    let mut env = Env::new(&["vol"]);
    env.server_env
        .push(("DESKD_LOG".into(), "info,deskd::audit=off".into()));
    env.serve_unwatched(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/a"]);
    env.dt_ok(&[b"mv", b"vol/a", b"vol/b"]);
    env.deskd_ok(&["freeze", "5"]);
    env.deskd_ok(&["thaw"]);
    env.deskd_ok(&["flush"]);
    // A clean stop writes out every audit line handed over before it.
    env.term();
    let log = env.log_text();
    assert!(log.contains("deskd stopped cleanly"), "{log}");
    // The rest of the info log is still there.
    assert!(log.contains("deskd serving"), "{log}");
    assert!(audit_lines(&env).is_empty(), "{log}");
}

#[test]
fn an_online_rebuild_says_who_started_it_and_what_it_repaired() {
    let mut env = Env::new(&["vol"]);
    env.serve_unwatched(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/registered"]);
    // A file the desktop does not know: the repair gives it an ID.
    std::fs::write(env.path("vol/unregistered"), b"").unwrap();
    let root = env.path("vol").display().to_string();
    let child = env
        .command_for(DESKD, &[b"rebuild", root.as_bytes()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let who = format!("uid 0 pid {pid} (deskd) on {root}: ");
    let start = audit_line(&env, &[&who, "rebuild start job "]);
    assert!(start.ends_with("(repair)"), "{start}");
    env.wait_for_log("online rebuild done", 1);
    let pass = audit_line(&env, &[&who, "pass 1 repaired "]);
    assert!(pass.contains("new IDs 1,"), "{pass}");

    // A job started and cancelled by request: both lines name this process.
    let mut c = env.client();
    let vol = c.open_volume(&env.path("vol")).unwrap().vol;
    let job = match c
        .call(Request::RebuildStart {
            vol,
            mode: deskd_proto::RebuildMode::Scan,
            threads: Some(1),
            force: false,
            timeout_secs: 60,
        })
        .unwrap()
    {
        deskd_client::Response::RebuildStarted { job } => job,
        other => panic!("{other:?}"),
    };
    c.call(Request::RebuildCancel { vol, job }).unwrap();
    let me = format!("uid 0 pid {} (", std::process::id());
    audit_line(&env, &[&me, &format!("rebuild start job {job} (scan)")]);
    audit_line(&env, &[&me, &format!("rebuild cancel job {job}")]);
}

/// The audit lines are written by a thread of their own: a clean stop waits until every line
/// of what was committed is in the log.
#[test]
fn a_clean_stop_writes_every_audit_line() {
    let mut env = Env::new(&["vol"]);
    env.serve_unwatched(&["vol"]);
    let names: Vec<String> = (0..3000).map(|i| format!("f{i:05}")).collect();
    for n in &names {
        std::fs::write(env.path("vol").join(n), b"").unwrap();
    }
    let mut c = env.client();
    let vol = c.open_volume(&env.path("vol")).unwrap().vol;
    register_pipelined(&mut c, vol, &names);
    drop(c);
    env.term();
    let log = env.log_text();
    let added = log
        .lines()
        .filter(|l| l.contains(" deskd::audit: ") && l.contains(": add id "))
        .count();
    assert_eq!(added, names.len(), "{log}");
    let stopped = log.find("deskd stopped cleanly").expect("a clean stop");
    assert!(log.rfind(": add id ").unwrap() < stopped);
}

/// The volume's owner is its admin (as for flush and freeze): it sees every connection.
#[test]
fn the_volume_owner_sees_every_client() {
    let mut env = Env::new(&["vol"]);
    std::os::unix::fs::chown(env.path("vol"), Some(65534), Some(65534)).unwrap();
    env.serve_unwatched(&["vol"]);
    let mut held = env.client();
    held.open_volume(&env.path("vol")).unwrap();
    let seen = clients_of(&status_json(&env, Some(65534)), "vol");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["pid"], std::process::id());
    assert_eq!(seen[0]["uid"], 0);
    // Another unprivileged user still sees none of it.
    let other = clients_of(&status_json(&env, Some(65533)), "vol");
    assert!(other.is_empty(), "{other:?}");
}

/// A program name with control characters reaches `deskd status` escaped (text) or as a JSON
/// string, never raw to the terminal.
#[test]
fn a_hostile_program_name_is_escaped_in_status() {
    let mut env = Env::new(&["vol", "other"]);
    serve_two_holding_writes(&mut env);
    let hostile_dt = env.path("d\n\u{1b}[2Jx");
    std::os::unix::fs::symlink(DT, &hostile_dt).unwrap();
    let mut held = env
        .command_for(hostile_dt.to_str().unwrap(), &[b"touch", b"vol/held"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    env.wait_for_held_write(1);
    let text = env.deskd_ok(&["status"]);
    assert!(text.contains(" d\\n\\u{1b}[2Jx  since "), "{text}");
    assert!(!text.contains('\u{1b}'), "{text}");
    let clients = clients_of(&status_json(&env, None), "vol");
    assert_eq!(clients[0]["program"], "d\n\u{1b}[2Jx");
    env.release_writes();
    assert!(held.wait().unwrap().success());
}
