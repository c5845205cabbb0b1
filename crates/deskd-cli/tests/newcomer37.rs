//! What a newcomer found in dt's and deskd's error lines: a missing `dt mv` source named as
//! missing (not as a volume root to replace), read verbs that say what they need deskd for
//! when none answers (not "only read-only access possible", which is for verbs that change
//! something), and the "deskd:" prefix said once.

mod common;
use common::*;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// A served volume `vol` holding the file `vol/f` and the folder `vol/sub`.
fn served() -> Env {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/f"]);
    env.dt_ok(&[b"mkdir", b"vol/sub"]);
    env
}

/// The volume's root as dt names it in its errors (the physical path).
fn root(env: &Env) -> PathBuf {
    env.path("vol").canonicalize().unwrap()
}

/// A "server" at `socket` that accepts connections and never answers; it holds them until the
/// test ends (the thread is left behind with the listener).
fn silent_listener(socket: &Path) {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            held.push(c);
        }
    });
}

#[test]
fn mv_of_a_missing_source_names_it_even_onto_a_volume_root() {
    let env = served();
    let db = env.path("vol/.Desktop");
    env.deskd_ok(&["flush"]);
    let before = objects_dump(&db);
    // The volume root as the destination, with and without the slash; and a folder in it.
    for dest in [&b"vol/"[..], b"vol", b"vol/sub", b"vol/sub/"] {
        let out = env.dt(&[b"mv", b"MISSING", dest]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert_eq!(
            stderr(&out),
            "dt: cannot move MISSING: no such file or directory\n",
            "dt mv MISSING {}",
            String::from_utf8_lossy(dest)
        );
    }
    // Among several sources, the missing one is named and the others are moved.
    let out = env.dt(&[b"mv", b"MISSING", b"vol/f", b"vol/sub/"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "dt: cannot move MISSING: no such file or directory\n"
    );
    assert!(env.path("vol/sub/f").exists());
    // A missing source given inside the volume, onto the root: the same.
    let out = env.dt(&[b"mv", b"vol/sub/gone", b"vol/"]);
    assert_eq!(
        stderr(&out),
        "dt: cannot move vol/sub/gone: no such file or directory\n"
    );
    // The root itself is still refused, as a source and as a destination.
    let out = env.dt(&[b"mv", b"vol", b"other"]);
    assert_eq!(stderr(&out), "dt: vol: cannot move a volume root\n");
    // dt cp puts a missing source into the folder given, as before: the source is named.
    let out = env.dt(&[b"cp", b"MISSING", b"vol/"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "dt: cannot copy MISSING: No such file or directory\n"
    );
    // The same for a user who may not write the volume: their own missing path, nothing more.
    if let Some(out) = env.as_nobody(DT, &[b"mv", b"MISSING", b"vol/"]) {
        assert_eq!(
            stderr(&out),
            "dt: cannot move MISSING: no such file or directory\n"
        );
    } else {
        skip("not root: cannot run dt as nobody");
    }
    // Nothing but the one real move reached the desktop.
    env.deskd_ok(&["flush"]);
    let after = objects_dump(&db);
    assert_eq!(before.lines().count(), after.lines().count());
}

#[test]
fn read_verbs_with_no_server_say_what_they_need_deskd_for() {
    let mut env = served();
    env.term();
    let root = root(&env);
    let socket = env.socket.display().to_string();
    let need = format!(
        "reads this volume's desktop through deskd: start `deskd serve {}`, or name the socket \
         of the deskd that serves it (--socket, $DESKD_SOCKET)",
        root.display()
    );
    let reads: [(&str, &[&[u8]]); 4] = [
        ("info", &[b"info", b"vol/f"]),
        ("resolve", &[b"resolve", b"vol", b"17"]),
        ("find", &[b"find", b"vol", b"f"]),
        ("ls", &[b"ls", b"-l", b"vol"]),
    ];
    for (verb, args) in reads {
        let out = env.dt(args);
        let err = stderr(&out);
        // dt ls lists what it can without IDs, and exits 0.
        if verb != "ls" {
            assert_eq!(out.status.code(), Some(1), "dt {verb}: {err}");
        }
        assert!(!err.contains("read-only access"), "dt {verb}: {err}");
        assert!(
            err.starts_with(&format!(
                "dt: {}: cannot connect to deskd at {socket}",
                root.display()
            )),
            "dt {verb}: {err}"
        );
        assert!(
            err.contains(&format!("; dt {verb} {need}")),
            "dt {verb}: {err}"
        );
    }
    // dt ls -l still lists, without IDs.
    let out = env.dt(&[b"ls", b"-l", b"vol"]);
    assert!(stdout(&out).contains('f'), "{}", stdout(&out));
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).ends_with(" (listing without IDs)\n"));
    assert!(!stderr(&out).contains("(os error"), "{}", stderr(&out));
    // A verb that changes something keeps HELIOS's words.
    let out = env.dt(&[b"touch", b"vol/new"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).ends_with("; only read-only access possible\n"),
        "{}",
        stderr(&out)
    );
    assert!(!env.path("vol/new").exists());

    // A deskd that never answers: a read verb says who did not answer and within what.
    silent_listener(&env.socket);
    let out = env.dt(&[b"--timeout", b"0.5", b"resolve", b"vol", b"17"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "dt: {}: deskd at {socket} did not answer within the client timeout (--timeout, \
             $DESKD_CLIENT_TIMEOUT); dt resolve {need}\n",
            root.display()
        )
    );
    let out = env.dt(&[b"--timeout", b"0.5", b"touch", b"vol/new"]);
    assert_eq!(
        stderr(&out),
        format!(
            "dt: {}: deskd: timed out; only read-only access possible\n",
            root.display()
        )
    );
    assert!(!env.path("vol/new").exists());
}

#[test]
fn the_deskd_prefix_is_said_once() {
    let env = served();
    // The server's refusal, prefixed by dt once.
    let out = env.dt(&[b"resolve", b"vol", b"99999"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "dt: deskd: no object with ID 99999\n");
    if let Some(out) = env.as_nobody(DT, &[b"resolve", b"vol", b"99999"]) {
        assert_eq!(stderr(&out), "dt: deskd: no such object\n");
    } else {
        skip("not root: cannot run dt as nobody");
    }
    // deskd's own verbs against a deskd that never answers: "deskd: " once, then what
    // happened (it was "deskd: deskd: timed out; only read-only access possible").
    let silent = env.path("silent.sock");
    silent_listener(&silent);
    for verb in [&["status"][..], &["flush"], &["metrics"], &["find", "x"]] {
        let out = std::process::Command::new(DESKD)
            .env("DESKD_SOCKET", &silent)
            .env("DESKD_CLIENT_TIMEOUT", "0.5")
            .args(verb)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "deskd {verb:?}");
        assert_eq!(
            stderr(&out),
            "deskd: timed out waiting for deskd's answer\n",
            "deskd {verb:?}"
        );
    }
}
