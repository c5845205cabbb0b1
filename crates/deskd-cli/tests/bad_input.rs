//! Bad input gets a clear error, leaves the desktop unchanged, and the server keeps serving.

mod common;
use common::*;
use deskd_client::{ErrorCode, Request};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

fn setup() -> (Env, std::path::PathBuf) {
    let mut env = Env::new(&["vol", "outside"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"mkdir", b"vol/dir"]);
    env.dt_ok(&[b"touch", b"vol/dir/a"]);
    std::os::unix::fs::symlink(env.path("outside"), env.path("vol/out")).unwrap();
    // The barrier: the watcher has recorded the link before the tests take their "before".
    env.deskd_ok(&["flush"]);
    let db = env.path("vol/.Desktop");
    (env, db)
}

#[test]
fn dt_refuses_escapes_protected_and_long_names() {
    let (env, db) = setup();
    let before = objects_dump(&db);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"vol/out/x".to_vec(), "leaves the volume"),
        (b"vol/.Desktop".to_vec(), "protected name"),
        (b"vol/.rsrc".to_vec(), "protected name"),
        (b"vol/dir/.rsrc/a".to_vec(), "protected name"),
        (
            [b"vol/".to_vec(), vec![b'n'; 256]].concat(),
            "longer than 255 bytes",
        ),
    ];
    for (path, message) in &cases {
        for verb in [&b"touch"[..], b"mkdir"] {
            let out = env.dt(&[verb, path]);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{}",
                String::from_utf8_lossy(path)
            );
            assert!(
                stderr(&out).contains(message),
                "{}: {}",
                String::from_utf8_lossy(path),
                stderr(&out)
            );
        }
    }
    assert!(
        !env.path("outside/x").exists(),
        "nothing was created outside"
    );
    for args in [
        &[&b"rm"[..], b"vol/.Desktop"][..],
        &[b"mv", b"vol/dir/a", b"vol/.rsrc"],
        &[b"rm", b"-r", b"vol/dir/.rsrc"],
    ] {
        let out = env.dt(args);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("protected name"), "{}", stderr(&out));
    }
    assert!(env.path("vol/.Desktop").exists());
    // Info outside any volume says so.
    let out = env.dt(&[b"info", b"outside"]);
    assert!(stderr(&out).contains("not in a deskd volume"));
    assert_eq!(objects_dump(&db), before, "the desktop is unchanged");
}

#[test]
fn protocol_refuses_escapes_and_false_claims() {
    let (env, db) = setup();
    let before = objects_dump(&db);
    let mut c = env.client();
    let root = env.path("vol").canonicalize().unwrap();
    let vol = c.open_volume(&root).unwrap().vol;
    let add = |path: &[u8]| Request::AddPath {
        vol,
        path: path.to_vec(),
        hint: None,
        type_code: None,
        creator: None,
        carried: None,
    };
    let expect = |c: &mut deskd_client::Client, req: Request, code: ErrorCode| {
        let err = c.call(req.clone()).unwrap_err();
        assert_eq!(err.code(), Some(code), "{req:?}: {err}");
        assert!(!err.to_string().is_empty());
    };
    expect(&mut c, add(b"../etc/passwd"), ErrorCode::Escape);
    expect(&mut c, add(b"dir/../../x"), ErrorCode::Escape);
    expect(&mut c, add(b"out/x"), ErrorCode::Escape);
    expect(&mut c, add(b".Desktop"), ErrorCode::Protected);
    expect(&mut c, add(&[b'x'; 256]), ErrorCode::InvalidName);
    expect(&mut c, add(b"dir/not-on-disk"), ErrorCode::ClaimRejected);
    // A rename that did not happen on disk.
    let err = c
        .call(Request::RenamePath {
            vol,
            from: b"dir/a".to_vec(),
            to: b"dir/b".to_vec(),
            replace: false,
            hint: None,
        })
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ClaimRejected));
    assert!(err.to_string().contains("still exists on disk"), "{err}");
    // A rename onto an existing file that is another object.
    std::fs::write(env.path("vol/dir/other"), b"").unwrap();
    let err = c
        .call(Request::RenamePath {
            vol,
            from: b"dir/a".to_vec(),
            to: b"dir/other".to_vec(),
            replace: true,
            hint: None,
        })
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ClaimRejected));
    std::fs::remove_file(env.path("vol/dir/other")).unwrap();
    // A delete of something still on disk.
    expect(
        &mut c,
        Request::DeletePath {
            vol,
            path: b"dir/a".to_vec(),
            recursive: false,
        },
        ErrorCode::ClaimRejected,
    );
    // An add whose dev/ino do not match the disk.
    expect(
        &mut c,
        Request::Add {
            vol,
            parent: 2,
            name: b"dir".to_vec(),
            dev: 1,
            ino: 1,
            hint: None,
            type_code: None,
            creator: None,
            carried: None,
        },
        ErrorCode::ClaimRejected,
    );
    // Unknown volume handle and a path that is no volume.
    expect(
        &mut c,
        Request::Resolve { vol: 99, id: 2 },
        ErrorCode::NoSuchVolume,
    );
    let err = c.open_volume(&env.path("outside")).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NoSuchVolume));
    // Root cannot be deleted or renamed.
    expect(
        &mut c,
        Request::Delete {
            vol,
            id: 2,
            recursive: true,
        },
        ErrorCode::PermissionDenied,
    );
    assert_eq!(objects_dump(&db), before, "the desktop is unchanged");
}

fn raw_connect(env: &Env) -> UnixStream {
    let s = UnixStream::connect(&env.socket).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s
}

fn handshake(s: &mut UnixStream, version: u16) -> [u8; 8] {
    s.write_all(&deskd_proto::client_hello(version)).unwrap();
    let mut reply = [0u8; 8];
    s.read_exact(&mut reply).unwrap();
    reply
}

fn read_reply(s: &mut UnixStream) -> deskd_proto::ReplyFrame {
    let mut body = Vec::new();
    assert!(deskd_proto::read_frame_body(s, &mut body).unwrap());
    deskd_proto::decode(&body).unwrap()
}

#[test]
fn malformed_oversized_and_wrong_version_frames() {
    let (env, db) = setup();
    let before = objects_dump(&db);
    // Wrong protocol version: refused in the handshake, connection closed.
    let mut s = raw_connect(&env);
    let reply = handshake(&mut s, 999);
    assert_eq!(&reply[..4], b"DSKD");
    assert_eq!(
        u16::from_be_bytes([reply[6], reply[7]]),
        1,
        "status 1 = unsupported version"
    );
    assert_eq!(s.read(&mut [0u8; 1]).unwrap(), 0, "closed");
    // Not our protocol at all.
    let mut s = raw_connect(&env);
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(
        s.read(&mut [0u8; 8]).unwrap_or(0),
        0,
        "closed without an answer"
    );
    // A malformed body: a BadRequest reply, and the connection keeps working.
    let mut s = raw_connect(&env);
    handshake(&mut s, deskd_proto::PROTOCOL_VERSION);
    s.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).unwrap();
    let r = read_reply(&mut s);
    assert_eq!(r.id, 0);
    assert_eq!(r.result.unwrap_err().code, ErrorCode::BadRequest);
    deskd_proto::write_frame(
        &mut s,
        &deskd_proto::RequestFrame {
            id: 7,
            request: Request::Volumes,
        },
    )
    .unwrap();
    let r = read_reply(&mut s);
    assert_eq!(r.id, 7);
    assert!(r.result.is_ok());
    // An oversized frame: FrameTooLarge, then the connection is closed.
    s.write_all(&(64u32 << 20).to_be_bytes()).unwrap();
    let r = read_reply(&mut s);
    assert_eq!(r.result.unwrap_err().code, ErrorCode::FrameTooLarge);
    assert_eq!(s.read(&mut [0u8; 1]).unwrap_or(0), 0, "closed");
    // A client that connects and says nothing does not block others.
    let _silent = raw_connect(&env);
    // The server keeps serving other clients.
    let mut c = env.client();
    assert_eq!(c.volumes().unwrap().len(), 1);
    env.dt_ok(&[b"touch", b"vol/after"]);
    assert_eq!(
        objects_dump(&db).lines().count(),
        before.lines().count() + 1
    );
}

#[test]
fn timeout_reports_read_only_and_changes_nothing() {
    let env = Env::new(&["vol"]);
    // A "server" that accepts and never answers.
    std::fs::write(env.path("vol/.Desktop"), b"").unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&env.socket).unwrap();
    let _hold = std::thread::spawn(move || {
        let conns: Vec<_> = listener.incoming().take(2).collect();
        std::thread::sleep(std::time::Duration::from_secs(30));
        drop(conns);
    });
    let started = std::time::Instant::now();
    let out = env.dt(&[b"--timeout", b"0.5", b"touch", b"vol/new"]);
    assert_eq!(out.status.code(), Some(1));
    let volume = env.path("vol").canonicalize().unwrap();
    assert!(
        stderr(&out).contains(&format!(
            "{}: deskd: timed out; only read-only access possible",
            volume.display()
        )),
        "{}",
        stderr(&out)
    );
    assert!(!env.path("vol/new").exists(), "nothing done on disk");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // The environment variable works too.
    let mut cmd = std::process::Command::new(DT);
    let out = cmd
        .env("DESKD_SOCKET", &env.socket)
        .env("DESKD_CLIENT_TIMEOUT", "0.5")
        .args(["mkdir"])
        .arg(env.path("vol/d"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timed out; only read-only access possible")
    );
    // No server at all: a clear message too.
    let out = std::process::Command::new(DT)
        .env("DESKD_SOCKET", env.path("none.sock"))
        .arg("touch")
        .arg(env.path("vol/x"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to deskd"));
    assert!(!env.path("vol/x").exists());
}

#[test]
fn dt_mv_onto_another_file_system_in_the_volume_keeps_the_id_and_follows_no_link() {
    let mut env = Env::new(&["vol", "outside"]);
    let Some(_mnt) = Mounted::tmpfs(env.path("vol/mnt")) else {
        return;
    };
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/a.txt"]);
    std::fs::write(env.path("vol/a.txt"), b"contents").unwrap();
    let id = env.id_of(std::path::Path::new("vol/a.txt"));
    // Give the resource file a fork, so the move is seen to carry all of it.
    let from_rsrc = env.path("vol/.rsrc/a.txt");
    let mut rsrc = std::fs::read(&from_rsrc).unwrap();
    rsrc.extend_from_slice(b"fork bytes");
    std::fs::write(&from_rsrc, &rsrc).unwrap();
    // A link planted where the moved resource file will land, pointing outside the volume.
    let victim = env.path("outside/victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::fs::create_dir(env.path("vol/mnt/.rsrc")).unwrap();
    std::os::unix::fs::symlink(&victim, env.path("vol/mnt/.rsrc/a.txt")).unwrap();
    env.dt_ok(&[b"mv", b"vol/a.txt", b"vol/mnt/a.txt"]);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(
        std::fs::read(env.path("vol/mnt/a.txt")).unwrap(),
        b"contents"
    );
    let moved_rsrc = env.path("vol/mnt/.rsrc/a.txt");
    assert!(std::fs::symlink_metadata(&moved_rsrc).unwrap().is_file());
    assert_eq!(
        std::fs::read(&moved_rsrc).unwrap(),
        rsrc,
        "header and fork moved"
    );
    assert!(!env.path("vol/a.txt").exists() && !from_rsrc.exists());
    assert_eq!(
        env.id_of(std::path::Path::new("vol/mnt/a.txt")),
        id,
        "the ID survives"
    );
}

#[test]
fn dt_mv_into_a_directory_whose_rsrc_is_a_link_moves_nothing() {
    let (env, db) = setup();
    env.dt_ok(&[b"mkdir", b"vol/target"]);
    let id = env.id_of(std::path::Path::new("vol/dir/a"));
    std::os::unix::fs::symlink(env.path("outside"), env.path("vol/target/.rsrc")).unwrap();
    let before = objects_dump(&db);
    let out = env.dt(&[b"mv", b"vol/dir/a", b"vol/target/a"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("symbolic link where a real .rsrc directory belongs"),
        "{}",
        stderr(&out)
    );
    assert!(env.path("vol/dir/a").exists() && !env.path("vol/target/a").exists());
    assert!(
        env.path("vol/dir/.rsrc/a").is_file(),
        "the resource file stays home"
    );
    assert_eq!(std::fs::read_dir(env.path("outside")).unwrap().count(), 0);
    assert_eq!(objects_dump(&db), before);
    assert_eq!(env.id_of(std::path::Path::new("vol/dir/a")), id);
}

#[test]
fn a_full_volume_fails_commits_clearly_and_serves_again_when_space_returns() {
    let mut env = Env::new(&["outside"]);
    let Some(_mnt) = Mounted::tmpfs(env.path("vol")) else {
        return;
    };
    // A new tmpfs is 1777, like /tmp, and deskd refuses a root every user may write.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.path("vol"), std::fs::Permissions::from_mode(0o755)).unwrap();
    env.serve(&["vol"]);
    env.dt_ok(&[b"mkdir", b"vol/a"]);
    env.dt_ok(&[b"touch", b"vol/a/before"]);
    let db = env.path("vol/.Desktop");
    let before = objects_dump(&db);
    // Fill the volume (a 4 MiB tmpfs) to the last block.
    let fill = env.path("vol/fill");
    let mut f = std::fs::File::create(&fill).unwrap();
    let block = vec![0u8; 1 << 16];
    while f.write_all(&block).is_ok() {}
    drop(f);
    for name in ["vol/a/during1", "vol/a/during2"] {
        let out = env.dt(&[b"touch", name.as_bytes()]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        // Refused before the commit: the WAL must not take the last of the space.
        assert!(
            stderr(&out).contains("nearly full") && stderr(&out).contains("nothing was recorded"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(objects_dump(&db), before, "nothing half-recorded");
    assert!(env.log_text().contains("writes refused"));
    // Space comes back: the same server records again, and the desktop is sound.
    std::fs::remove_file(&fill).unwrap();
    env.dt_ok(&[b"touch", b"vol/a/after"]);
    let ids = env.ids(&[
        std::path::PathBuf::from("vol/a/before"),
        std::path::PathBuf::from("vol/a/during1"),
        std::path::PathBuf::from("vol/a/after"),
    ]);
    let mut seen: Vec<u64> = ids.iter().map(|v| v["id"].as_u64().unwrap()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 3, "three objects, three IDs: {ids:?}");
    env.term();
    assert_eq!(sqlite3(&db, "PRAGMA integrity_check"), "ok");
}
