//! Fixes of a hostile review, each attack replayed as user nobody (uid 65534) against the real
//! binaries; races are made deterministic with the `test-hooks` holds, never with sleeps.
//! F5: a stream backup's manifest lands in the folder checked before the stream, whatever is
//! swapped under its path meanwhile, and never over a file that appeared there.
//! F7: a Finder comment is shown only to who may read the object.
//! F8: in a sticky folder only the owner of an object (or of the folder) changes its Finder
//! information and comment, and `dt set` changes the desktop only once the resource file is written.

mod common;

use std::io::{BufRead, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Run a command (a coreutils tool) as nobody; it must succeed.
fn nobody_runs(program: &str, args: &[&Path]) {
    let out = Command::new(program)
        .args(args)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", stderr(&out));
}

/// The temp dir open to everybody, a served volume `vol` with a file, and a folder `mx` with
/// `mx/sub` owned by nobody (where root is asked to put a manifest).
fn manifest_setup() -> Env {
    let mut env = Env::new(&["vol", "tmp", "victim"]);
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/a"]);
    for d in ["mx", "mx/sub"] {
        std::fs::create_dir(env.path(d)).unwrap();
        std::os::unix::fs::chown(env.path(d), Some(65534), Some(65534)).unwrap();
    }
    std::fs::write(env.path("victim/important.manifest.json"), "precious\n").unwrap();
    env
}

/// Root's `deskd backup vol - --manifest mx/sub/important.manifest.json` (plus `extra`), held
/// after the stream before the manifest until `go` exists; returns once it is held.
fn held_backup(env: &Env, extra: &[&str]) -> (Child, std::thread::JoinHandle<String>) {
    let go = env.path("go");
    let mut child = env
        .command_for(DESKD, &[])
        .args([
            "backup",
            env.path("vol").to_str().unwrap(),
            "-",
            "--manifest",
        ])
        .arg(env.path("mx/sub/important.manifest.json"))
        .args(extra)
        .env("TMPDIR", env.path("tmp"))
        .env("DESKD_TEST_HOLD_MANIFEST_UNTIL", &go)
        .stdout(std::fs::File::create(env.path("out.desktop")).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert_ne!(err.read_line(&mut line).unwrap(), 0, "deskd ended unheld");
        if line.starts_with("test hook: manifest held") {
            break;
        }
    }
    // The rest of stderr, read to the end in the background so deskd never blocks on it.
    let rest = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    (child, rest)
}

/// Lets the held backup go on; its exit code and the rest of its stderr, whole (the reading
/// thread ends at the end of the stream, which follows deskd's exit).
fn release(
    env: &Env,
    mut child: Child,
    rest: std::thread::JoinHandle<String>,
) -> (Option<i32>, String) {
    std::fs::write(env.path("go"), "").unwrap();
    let status = child.wait().unwrap();
    (status.code(), rest.join().unwrap())
}

#[test]
fn f5_a_folder_swapped_for_a_link_during_the_stream_does_not_redirect_the_manifest() {
    if !is_root() {
        return skip("needs root (the attacker is nobody)");
    }
    let env = manifest_setup();
    for force in [false, true] {
        let _ = std::fs::remove_file(env.path("go"));
        let extra: &[&str] = if force { &["--force"] } else { &[] };
        let (child, rest) = held_backup(&env, extra);
        // Nobody swaps its folder for a link to root's folder while root's deskd streams.
        let real = env.path(&format!("mx/sub.real{}", force as u8));
        nobody_runs("mv", &[&env.path("mx/sub"), &real]);
        nobody_runs(
            "ln",
            &[Path::new("-s"), &env.path("victim"), &env.path("mx/sub")],
        );
        let (code, err) = release(&env, child, rest);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(
            std::fs::read_to_string(env.path("victim/important.manifest.json")).unwrap(),
            "precious\n",
            "root's file behind the link was replaced (force {force})"
        );
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(real.join("important.manifest.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(m["file"], "important");
        assert_eq!(
            mode_of(&real.join("important.manifest.json")) & 0o777,
            0o600
        );
        // Nothing else was left in either folder.
        assert_eq!(std::fs::read_dir(&real).unwrap().count(), 1);
        assert_eq!(std::fs::read_dir(env.path("victim")).unwrap().count(), 1);
        std::fs::remove_file(env.path("mx/sub")).unwrap();
        std::fs::create_dir(env.path("mx/sub")).unwrap();
        std::os::unix::fs::chown(env.path("mx/sub"), Some(65534), Some(65534)).unwrap();
    }
}

#[test]
fn f5_a_manifest_that_appears_during_the_stream_is_not_replaced_without_force() {
    if !is_root() {
        return skip("needs root (the attacker is nobody)");
    }
    let env = manifest_setup();
    let (child, rest) = held_backup(&env, &[]);
    let target = env.path("mx/sub/important.manifest.json");
    nobody_runs(
        "sh",
        &[
            Path::new("-c"),
            Path::new(&format!("echo theirs > {}", target.display())),
        ],
    );
    let (code, err) = release(&env, child, rest);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "theirs\n");
    assert!(
        err.contains("appeared while the backup was streamed"),
        "{err}"
    );
    // The manifest is not lost: the error names where it is.
    let kept = std::fs::read_dir(env.path("mx/sub"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p != &target)
        .expect("the manifest is kept");
    assert!(err.contains(kept.to_str().unwrap()), "{err}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&kept).unwrap()).unwrap();
    assert_eq!(m["file"], "important");
}

#[test]
fn f5_a_temporary_name_taken_beforehand_does_not_stop_the_manifest() {
    if !is_root() {
        return skip("needs root (the attacker is nobody)");
    }
    let env = manifest_setup();
    // Nobody takes the old fixed temporary name with a folder root's deskd cannot remove.
    let taken = env.path("mx/sub/.important.manifest.json.partial");
    nobody_runs("mkdir", &[&taken]);
    nobody_runs("touch", &[&taken.join("x")]);
    let out = env
        .command_for(DESKD, &[])
        .args([
            "backup",
            env.path("vol").to_str().unwrap(),
            "-",
            "--manifest",
        ])
        .arg(env.path("mx/sub/important.manifest.json"))
        .env("TMPDIR", env.path("tmp"))
        .stdout(std::fs::File::create(env.path("out.desktop")).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(env.path("mx/sub/important.manifest.json").is_file());
}

/// The temp dir open to everybody and a served volume `vol`.
fn served_volume() -> Env {
    let mut env = Env::new(&["vol"]);
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    env.serve(&["vol"]);
    env
}

fn chmod(env: &Env, rel: &str, mode: u32) {
    std::fs::set_permissions(env.path(rel), std::fs::Permissions::from_mode(mode)).unwrap();
}

fn comment_shown_to_nobody(env: &Env, rel: &str) -> serde_json::Value {
    let out = env
        .as_nobody(DT, &[b"info", b"--json", rel.as_bytes()])
        .unwrap();
    assert!(out.status.success(), "dt info {rel}: {}", stderr(&out));
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    v["comment"].clone()
}

#[test]
fn f7_the_comment_of_a_private_file_or_folder_is_as_private_as_it() {
    if !is_root() {
        return skip("needs root (the reader is nobody)");
    }
    let env = served_volume();
    env.dt_ok(&[b"touch", b"vol/s600", b"vol/public"]);
    env.dt_ok(&[b"mkdir", b"vol/d700"]);
    for rel in ["vol/s600", "vol/public", "vol/d700"] {
        env.dt_ok(&[b"set", b"--comment", b"payroll password", rel.as_bytes()]);
    }
    env.dt_ok(&[b"chmod", b"600", b"vol/s600"]);
    env.dt_ok(&[b"chmod", b"700", b"vol/d700"]);
    // Nobody sees all three names, and may read only the public file.
    assert_eq!(
        comment_shown_to_nobody(&env, "vol/public"),
        "payroll password"
    );
    assert_eq!(
        comment_shown_to_nobody(&env, "vol/s600"),
        serde_json::Value::Null
    );
    assert_eq!(
        comment_shown_to_nobody(&env, "vol/d700"),
        serde_json::Value::Null
    );
    // Root (and the owner) still see them.
    let out = env.dt_ok(&[b"info", b"--json", b"vol/s600"]);
    assert!(out.contains("payroll password"), "{out}");
}

fn flags_of(env: &Env, name: &str) -> String {
    sqlite3(
        &env.path("vol/.Desktop"),
        &format!("SELECT flags FROM objects WHERE CAST(name AS TEXT) = '{name}'"),
    )
    .trim()
    .to_owned()
}

fn comments_of(env: &Env, name: &str) -> String {
    sqlite3(
        &env.path("vol/.Desktop"),
        &format!(
            "SELECT count(*) FROM comments JOIN objects USING (id) \
             WHERE CAST(name AS TEXT) = '{name}'"
        ),
    )
    .trim()
    .to_owned()
}

/// `vol/tmp` sticky and open to all (as /tmp), with root's file `vf2` in it.
fn sticky_folder() -> Env {
    let env = served_volume();
    env.dt_ok(&[b"mkdir", b"vol/tmp"]);
    env.dt_ok(&[b"touch", b"vol/tmp/vf2", b"vol/tmp/vf3", b"vol/tmp/mine"]);
    chmod(&env, "vol/tmp", 0o1777);
    for rel in ["vol/tmp/mine", "vol/tmp/.rsrc/mine"] {
        std::os::unix::fs::chown(env.path(rel), Some(65534), Some(65534)).unwrap();
    }
    env
}

#[test]
fn f8_in_a_sticky_folder_the_server_refuses_changing_anothers_label_and_comment() {
    if !is_root() {
        return skip("needs root (the attacker is nobody)");
    }
    let env = sticky_folder();
    // Root's resource file open to all: dt's own write cannot stop nobody, only the server.
    chmod(&env, "vol/tmp/.rsrc/vf2", 0o666);
    let before = flags_of(&env, "vf2");
    let rsrc_before = std::fs::read(env.path("vol/tmp/.rsrc/vf2")).unwrap();
    let out = env
        .as_nobody(DT, &[b"set", b"-l", b"red", b"vol/tmp/vf2"])
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
    let out = env
        .as_nobody(DT, &[b"set", b"--comment", b"defaced", b"vol/tmp/vf2"])
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(flags_of(&env, "vf2"), before, "the label was stored");
    assert_eq!(comments_of(&env, "vf2"), "0", "the comment was stored");
    // What the server refused, dt took back from the resource file it wrote first.
    assert_eq!(
        std::fs::read(env.path("vol/tmp/.rsrc/vf2")).unwrap(),
        rsrc_before
    );
    // Its own file there, nobody labels as before.
    let out = env
        .as_nobody(
            DT,
            &[
                b"set",
                b"-l",
                b"red",
                b"--comment",
                b"mine",
                b"vol/tmp/mine",
            ],
        )
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(flags_of(&env, "mine"), before);
    assert_eq!(comments_of(&env, "mine"), "1");
}

#[test]
fn f8_dt_set_changes_no_desktop_when_the_resource_file_cannot_be_written() {
    if !is_root() {
        return skip("needs root (the user is nobody)");
    }
    let env = sticky_folder();
    // Nobody's file (the server lets it change its information) whose resource file is
    // root's (0644): the kernel refuses dt's write of it.
    std::os::unix::fs::chown(env.path("vol/tmp/vf3"), Some(65534), Some(65534)).unwrap();
    let before = flags_of(&env, "vf3");
    let out = env
        .as_nobody(
            DT,
            &[b"set", b"-l", b"red", b"--comment", b"x", b"vol/tmp/vf3"],
        )
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot write resource file"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        flags_of(&env, "vf3"),
        before,
        "the desktop says what the disk does not"
    );
    assert_eq!(comments_of(&env, "vf3"), "0");
}

#[test]
fn f8_moves_and_removals_in_a_sticky_drop_folder_go_on_as_the_kernel_allows() {
    if !is_root() {
        return skip("needs root (the user is nobody)");
    }
    let env = served_volume();
    env.dt_ok(&[b"mkdir", b"vol/drop"]);
    chmod(&env, "vol/drop", 0o1733);
    let nobody_ok = |args: &[&[u8]]| {
        let out = env.as_nobody(DT, args).unwrap();
        assert!(out.status.success(), "dt {args:?}: {}", stderr(&out));
    };
    nobody_ok(&[b"touch", b"vol/drop/mine", b"vol/drop/gone"]);
    nobody_ok(&[b"set", b"-l", b"red", b"vol/drop/mine"]);
    nobody_ok(&[b"mv", b"vol/drop/mine", b"vol/drop/moved"]);
    nobody_ok(&[b"rm", b"vol/drop/gone"]);
    let names = sqlite3(
        &env.path("vol/.Desktop"),
        "SELECT CAST(name AS TEXT) FROM objects ORDER BY 1",
    );
    assert!(names.lines().any(|n| n == "moved"), "{names}");
    assert!(
        !names.lines().any(|n| n == "gone" || n == "mine"),
        "{names}"
    );
}

/// Run as nobody by the test below: `Delete` by ID of `DESKD_PROBE_STICKY_ID`, answer printed.
fn probe_delete_by_id() {
    let id: u32 = std::env::var("DESKD_PROBE_STICKY_ID")
        .unwrap()
        .parse()
        .unwrap();
    let socket = std::env::var("DESKD_SOCKET").unwrap();
    let mut c =
        deskd_client::Client::connect(Path::new(&socket), std::time::Duration::from_secs(10))
            .unwrap();
    let vol = c.volumes().unwrap()[0].vol;
    let answer = c.call(deskd_proto::Request::Delete {
        vol,
        id,
        recursive: false,
    });
    match answer {
        Ok(_) => println!("delete=ok"),
        Err(e) => println!("delete={e}"),
    }
}

#[test]
fn f8_a_removal_by_id_in_a_sticky_drop_folder_is_still_recorded() {
    if std::env::var_os("DESKD_PROBE_STICKY_ID").is_some() {
        return probe_delete_by_id();
    }
    if !is_root() {
        return skip("needs root (the user is nobody)");
    }
    // A 1733 drop folder: nobody may write and search it, not list it, and does not own it.
    // Nobody removes its own file there on disk, then the record by ID (as a file server
    // does): the kernel applied the sticky rule already, and the file is gone from the folder,
    // so the server's sticky rule for Mac information must not refuse this.
    let env = served_volume();
    env.dt_ok(&[b"mkdir", b"vol/drop"]);
    chmod(&env, "vol/drop", 0o1733);
    let out = env.as_nobody(DT, &[b"touch", b"vol/drop/gone"]).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = env.id_of(&env.path("vol/drop/gone"));
    nobody_runs("rm", &[&env.path("vol/drop/gone")]);
    let me = std::env::current_exe().unwrap();
    let args: [&[u8]; 4] = [
        b"--exact",
        b"f8_a_removal_by_id_in_a_sticky_drop_folder_is_still_recorded",
        b"--nocapture",
        b"--test-threads=1",
    ];
    let out = env
        .as_nobody_with(
            me.to_str().unwrap(),
            &args,
            &[("DESKD_PROBE_STICKY_ID", id.to_string())],
        )
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("delete=ok"), "{said}{}", stderr(&out));
    let names = sqlite3(
        &env.path("vol/.Desktop"),
        "SELECT CAST(name AS TEXT) FROM objects ORDER BY 1",
    );
    assert!(!names.lines().any(|n| n == "gone"), "{names}");
}
