//! Issue 24, item 4 (seed 002): a volume on a read-only file system is served read-only by
//! itself, with a temporary desktop (a copy of a valid `.Desktop` found there, or a new one)
//! in a private `desksrv.*` directory under the temp directory; `dt info`, `dt ls -l`,
//! `deskd find` and `rebuild -s` work on it through the server; `--read-only` serves writable
//! folders read-only; temporary desktops go at a clean stop, are not multiplied by restarts,
//! and a crashed server's leftover is removed by the next start, never anyone else's.
//!
//! Real binaries on a loop-mounted ext4 remounted `-o ro`; runs as root.

mod common;
use common::*;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NOBODY: u32 = 65534;

/// Whether the tests can run here (root: mounting); otherwise `skip` (a failure under CI).
fn can_mount() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("loop-mounting ext4 needs root");
        return false;
    }
    true
}

/// An ext4 at `mnt` holding the volume `mnt/vol`, remounted read-only or back.
struct Medium {
    fs: SmallExt4,
}

impl Medium {
    fn new(env: &Env) -> Medium {
        let fs = SmallExt4::mount(env.path("mnt"), 16);
        std::fs::create_dir(fs.mnt.join("vol")).unwrap();
        std::fs::set_permissions(&fs.mnt, std::fs::Permissions::from_mode(0o755)).unwrap();
        Medium { fs }
    }

    fn vol(&self) -> PathBuf {
        self.fs.mnt.join("vol")
    }

    fn remount(&self, read_only: bool) {
        let how = if read_only {
            "remount,ro"
        } else {
            "remount,rw"
        };
        let out = Command::new("mount")
            .args(["-o", how])
            .arg(&self.fs.mnt)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount -o {how}: {}", stderr(&out));
    }
}

/// An Env whose servers use `tmp` in it as their temp directory ($TMPDIR), so that the
/// `desksrv.*` directories counted are this test's only.
fn env_with_private_tmp() -> Env {
    let mut env = Env::new(&["tmp"]);
    let tmp = env.path("tmp").display().to_string();
    env.server_env.push(("TMPDIR".into(), tmp));
    env
}

/// The `desksrv.*` entries in the env's temp directory.
fn temp_desktops(env: &Env) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(env.path("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().as_bytes().starts_with(b"desksrv."))
        .collect();
    found.sort();
    found
}

/// The first volume's `deskd status --json`.
fn status(env: &Env) -> serde_json::Value {
    let out = env.deskd_ok(&["status", "--json"]);
    serde_json::from_str(out.lines().next().unwrap()).unwrap()
}

/// Every name under `dir` with its size and mtime, to show nothing on disk changed.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, i64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.push((p, m.len(), m.mtime()));
        }
    }
    out.sort();
    out
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn helios_rebuild(env: &Env, args: &[&str]) -> Output {
    let helios = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/helios/bin/rebuild");
    Command::new("perl")
        .arg(helios)
        .args(args)
        .current_dir(env.dir.path())
        .env("DESKD_BIN", DESKD)
        .env("DESKD_SOCKET", &env.socket)
        .output()
        .unwrap()
}

/// A read-only medium without `.Desktop`, served with no configuration key: read-only, the log
/// and status say why, and the client tools work on it through the server; changes are
/// refused before anything on disk is touched.
#[test]
fn a_read_only_medium_without_a_desktop_is_served_by_itself() {
    if !can_mount() {
        return;
    }
    let mut env = env_with_private_tmp();
    let medium = Medium::new(&env);
    let vol = medium.vol();
    std::fs::create_dir(vol.join("docs")).unwrap();
    std::fs::write(vol.join("docs/report.txt"), b"quarterly").unwrap();
    std::fs::write(vol.join("readme.txt"), b"hello").unwrap();
    medium.remount(true);
    let before = snapshot(&vol);

    env.start(&[vol.to_str().unwrap()]);
    env.wait_for_log(
        "read-only file system; served read-only with a temporary desktop at",
        1,
    );
    let s = status(&env);
    assert_eq!(s["read_only"], true, "{s}");
    assert_eq!(s["read_only_reason"], "read-only file system", "{s}");
    let plain = env.deskd_ok(&["status"]);
    assert!(plain.contains("read-only file system"), "{plain}");
    assert_eq!(temp_desktops(&env).len(), 1);

    // dt finds the volume through the server (there is no .Desktop on it) and registers.
    let report = vol.join("docs/report.txt");
    let id = env.id_of(&report);
    assert!(id >= 17, "a new desktop's IDs start at 17: {id}");
    assert_eq!(env.id_of(&report), id, "asked again: the same ID");
    let listing = env.dt_ok(&[b"ls", b"-l", vol.join("docs").as_os_str().as_bytes()]);
    let line = listing
        .lines()
        .find(|l| l.ends_with("report.txt"))
        .unwrap_or_else(|| panic!("{listing}"));
    assert!(line.contains(&id.to_string()), "{listing}");
    let found = env.deskd_ok(&["find", "report"]);
    assert!(found.contains("docs/report.txt"), "{found}");
    let dt_found = env.dt_ok(&[b"find", vol.as_os_str().as_bytes(), b"report"]);
    assert!(dt_found.contains("docs/report.txt"), "{dt_found}");

    // rebuild -s runs online: the temporary desktop lacks what the disk has.
    let v = vol.to_str().unwrap();
    let scan = env.deskd(&["rebuild", "-s", v]);
    assert_eq!(scan.status.code(), Some(1), "{}", text(&scan));
    assert!(
        String::from_utf8_lossy(&scan.stdout).contains("readme.txt"),
        "{}",
        text(&scan)
    );
    let helios = helios_rebuild(&env, &["-s", v]);
    assert_eq!(helios.status.code(), Some(1), "{}", text(&helios));
    assert!(
        String::from_utf8_lossy(&helios.stdout).contains("readme.txt"),
        "{}",
        text(&helios)
    );
    // The other modes are refused: they would write the medium.
    let repair = env.deskd(&["rebuild", v]);
    assert_eq!(repair.status.code(), Some(2), "{}", text(&repair));
    assert!(text(&repair).contains("read-only"), "{}", text(&repair));

    // Changes are refused with the read-only message, before touching the disk.
    for args in [
        vec![
            b"mv".as_slice(),
            report.as_os_str().as_bytes(),
            vol.join("moved.txt").as_os_str().as_bytes(),
        ],
        vec![b"rm", vol.join("readme.txt").as_os_str().as_bytes()],
        vec![b"touch", vol.join("new.txt").as_os_str().as_bytes()],
    ] {
        let out = env.dt(&args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains("volume is read-only"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(snapshot(&vol), before, "nothing on the medium changed");

    // Outside any volume dt still says so.
    let out = env.dt(&[b"info", env.path("tmp").as_os_str().as_bytes()]);
    assert!(
        stderr(&out).contains("not in a deskd volume"),
        "{}",
        stderr(&out)
    );
    env.term();
    assert!(temp_desktops(&env).is_empty(), "{:?}", temp_desktops(&env));
}

/// With no server running, a path on the medium is outside any volume, as before.
#[test]
fn without_a_server_the_medium_is_no_volume() {
    if !can_mount() {
        return;
    }
    let env = env_with_private_tmp();
    let medium = Medium::new(&env);
    std::fs::write(medium.vol().join("a.txt"), b"a").unwrap();
    medium.remount(true);
    let out = env.dt(&[b"info", medium.vol().join("a.txt").as_os_str().as_bytes()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not in a deskd volume"),
        "{}",
        stderr(&out)
    );
}

/// A medium with a valid `.Desktop` (made while it was writable, by a served volume): the
/// server works on a copy, and answers the IDs recorded on the medium.
#[test]
fn a_valid_desktop_on_a_read_only_medium_keeps_its_ids() {
    if !can_mount() {
        return;
    }
    let mut env = env_with_private_tmp();
    let medium = Medium::new(&env);
    let vol = medium.vol();
    std::fs::create_dir(vol.join("sub")).unwrap();
    std::fs::write(vol.join("sub/a.txt"), b"a").unwrap();
    std::fs::write(vol.join("b.txt"), b"b").unwrap();
    env.start(&[vol.to_str().unwrap()]);
    let recorded: Vec<u32> = ["sub/a.txt", "b.txt"]
        .iter()
        .map(|p| env.id_of(&vol.join(p)))
        .collect();
    env.term();
    medium.remount(true);
    let desktop_before = std::fs::read(vol.join(".Desktop")).unwrap();

    env.start(&[vol.to_str().unwrap()]);
    env.wait_for_log(
        "read-only file system; served read-only with its own desktop (read only, copied to",
        1,
    );
    let answered: Vec<u32> = ["sub/a.txt", "b.txt"]
        .iter()
        .map(|p| env.id_of(&vol.join(p)))
        .collect();
    assert_eq!(answered, recorded);
    // Up to date: the copy is the medium's desktop.
    let scan = env.deskd(&["rebuild", "-s", vol.to_str().unwrap()]);
    assert_eq!(scan.status.code(), Some(0), "{}", text(&scan));
    assert!(scan.stdout.is_empty(), "{}", text(&scan));
    let out = env.dt(&[
        b"mv",
        vol.join("b.txt").as_os_str().as_bytes(),
        vol.join("c.txt").as_os_str().as_bytes(),
    ]);
    assert!(
        stderr(&out).contains("volume is read-only"),
        "{}",
        stderr(&out)
    );
    env.term();
    assert_eq!(std::fs::read(vol.join(".Desktop")).unwrap(), desktop_before);
    assert!(temp_desktops(&env).is_empty());
}

/// `deskd serve --read-only` on a writable folder: served read-only, writes refused, the
/// folder unchanged.
#[test]
fn the_read_only_flag_refuses_writes_on_a_writable_folder() {
    let mut env = Env::new(&["vol"]);
    std::fs::write(env.path("vol/a.txt"), b"a").unwrap();
    let vol = env.path("vol").display().to_string();
    env.start(&["--read-only", &vol]);
    let s = status(&env);
    assert_eq!(s["read_only"], true, "{s}");
    assert!(s["read_only_reason"].is_null(), "{s}");
    let before = std::fs::read_dir(env.path("vol")).unwrap().count();
    for args in [
        vec![b"mv".as_slice(), b"vol/a.txt", b"vol/b.txt"],
        vec![b"touch", b"vol/new.txt"],
        vec![b"mkdir", b"vol/dir"],
    ] {
        let out = env.dt(&args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains("volume is read-only"),
            "{}",
            stderr(&out)
        );
    }
    assert!(env.path("vol/a.txt").exists() && !env.path("vol/b.txt").exists());
    assert_eq!(std::fs::read_dir(env.path("vol")).unwrap().count(), before);
    // Reading still works.
    assert!(env.id_of(&env.path("vol/a.txt")) > 0);
    let help = env.deskd_ok(&["serve", "--help"]);
    assert!(help.contains("--read-only"), "{help}");
}

/// Three restarts leave at most one `desksrv.*` directory of deskd's, a clean stop (SIGTERM,
/// SIGINT) none; after a SIGKILL the next start removes the leftover; a directory planted by
/// nobody and a symlink named like one are neither used, followed nor removed.
#[test]
fn temporary_desktops_go_at_a_clean_stop_and_are_not_multiplied() {
    if !can_mount() {
        return;
    }
    let mut env = env_with_private_tmp();
    let tmp = env.path("tmp");
    // A shared temp directory, as /tmp is: nobody may plant names in it.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let medium = Medium::new(&env);
    let vol = medium.vol();
    std::fs::write(vol.join("a.txt"), b"a").unwrap();
    medium.remount(true);
    let v = vol.to_str().unwrap().to_string();

    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGTERM] {
        env.start(&[&v]);
        assert_eq!(temp_desktops(&env).len(), 1, "{:?}", temp_desktops(&env));
        env.id_of(&vol.join("a.txt"));
        env.stop_with(signal);
        assert!(temp_desktops(&env).is_empty(), "{:?}", temp_desktops(&env));
    }

    env.start(&[&v]);
    let left = temp_desktops(&env);
    assert_eq!(left.len(), 1);
    let dir = &left[0];
    assert_eq!(std::fs::metadata(dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(
        std::fs::metadata(dir.join(".Desktop")).unwrap().mode() & 0o777,
        0o600
    );
    env.kill9();
    assert_eq!(temp_desktops(&env), left, "a SIGKILL leaves it");

    // Planted: nobody's own directory with a marker naming a dead pid, and a symlink to a
    // directory of root's that looks like a dead server's.
    let planted = tmp.join("desksrv.planted");
    let as_nobody = |args: &[&str]| {
        use std::os::unix::process::CommandExt;
        let out = Command::new(args[0])
            .args(&args[1..])
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    };
    as_nobody(&["mkdir", "-m", "0700", planted.to_str().unwrap()]);
    as_nobody(&[
        "sh",
        "-c",
        &format!("echo 1 > {}/deskd.pid", planted.display()),
    ]);
    let elsewhere = env.path("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(elsewhere.join("deskd.pid"), b"1").unwrap();
    std::fs::write(elsewhere.join("keep.txt"), b"mine").unwrap();
    let link = tmp.join("desksrv.link");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();

    env.start(&[&v]);
    env.wait_for_log("ended without a clean stop", 1);
    let log = env.log_text();
    assert!(log.contains(&dir.display().to_string()), "{log}");
    assert!(!dir.exists(), "the leftover was removed");
    let now = temp_desktops(&env);
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(planted.join("deskd.pid").exists());
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(elsewhere.join("keep.txt").exists());
    let ours: Vec<&PathBuf> = now
        .iter()
        .filter(|p| **p != planted && **p != link)
        .collect();
    assert_eq!(ours.len(), 1);
    assert_ne!(ours[0], dir);
    // Neither was used for the desktop.
    assert_eq!(std::fs::read_dir(&planted).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 2);
    env.term();
    assert_eq!(temp_desktops(&env).len(), 2, "only the planted names stay");
}

/// As nobody: the temporary desktop cannot be read, and `dt info` answers only what nobody may
/// see (a folder closed to nobody stays closed).
#[test]
fn nobody_sees_only_what_the_access_rules_allow() {
    if !can_mount() {
        return;
    }
    let mut env = env_with_private_tmp();
    std::fs::set_permissions(env.path("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let medium = Medium::new(&env);
    let vol = medium.vol();
    std::fs::create_dir(vol.join("closed")).unwrap();
    std::fs::write(vol.join("closed/secret.txt"), b"s").unwrap();
    std::fs::set_permissions(vol.join("closed"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(vol.join("open.txt"), b"o").unwrap();
    std::fs::set_permissions(vol.join("open.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
    medium.remount(true);
    env.start(&[vol.to_str().unwrap()]);
    // Something for the desktop to hold: the closed file registered by root.
    let secret_id = env.id_of(&vol.join("closed/secret.txt"));

    let dirs = temp_desktops(&env);
    let desktop = dirs[0].join(".Desktop");
    for path in [&dirs[0], &desktop] {
        use std::os::unix::process::CommandExt;
        let out = Command::new("cat")
            .arg(path)
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap();
        assert!(!out.status.success(), "nobody read {}", path.display());
        assert!(
            stderr(&out).contains("Permission denied"),
            "{}",
            stderr(&out)
        );
    }

    let open = env
        .as_nobody(
            DT,
            &[
                b"info",
                b"--json",
                vol.join("open.txt").as_os_str().as_bytes(),
            ],
        )
        .unwrap();
    assert!(open.status.success(), "{}", stderr(&open));
    let info: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&open.stdout).trim()).unwrap();
    assert!(info["id"].as_u64().unwrap() >= 17, "{info}");

    let closed = env
        .as_nobody(
            DT,
            &[
                b"info",
                vol.join("closed/secret.txt").as_os_str().as_bytes(),
            ],
        )
        .unwrap();
    assert!(!closed.status.success());
    assert!(
        !String::from_utf8_lossy(&closed.stdout).contains(&secret_id.to_string()),
        "{}",
        text(&closed)
    );
    let found = env.as_nobody(DESKD, &[b"find", b"secret"]).unwrap();
    assert!(found.status.success(), "{}", stderr(&found));
    assert!(
        !String::from_utf8_lossy(&found.stdout).contains("secret"),
        "{}",
        text(&found)
    );
    let mv = env
        .as_nobody(
            DT,
            &[
                b"mv",
                vol.join("open.txt").as_os_str().as_bytes(),
                vol.join("x.txt").as_os_str().as_bytes(),
            ],
        )
        .unwrap();
    assert!(
        stderr(&mv).contains("volume is read-only"),
        "{}",
        stderr(&mv)
    );
    env.term();
}

/// A medium remounted read-write while served read-only: a reload (SIGHUP) opens it again,
/// writable, with a desktop of its own, and the temporary one goes.
#[test]
fn a_reload_after_a_remount_read_write_makes_the_volume_writable() {
    if !can_mount() {
        return;
    }
    let mut env = env_with_private_tmp();
    let medium = Medium::new(&env);
    let vol = medium.vol();
    std::fs::write(vol.join("a.txt"), b"a").unwrap();
    medium.remount(true);
    env.start(&[vol.to_str().unwrap()]);
    assert_eq!(status(&env)["read_only_reason"], "read-only file system");
    // Unchanged file system: a reload keeps the opening (and its temporary desktop).
    let first = temp_desktops(&env);
    env.sighup(1);
    assert_eq!(temp_desktops(&env), first);

    medium.remount(false);
    env.sighup(2);
    env.wait_for_log("reopened, writable", 1);
    let s = status(&env);
    assert_eq!(s["read_only"], false, "{s}");
    assert!(s["read_only_reason"].is_null(), "{s}");
    assert!(temp_desktops(&env).is_empty(), "{:?}", temp_desktops(&env));
    env.dt_ok(&[
        b"mv",
        vol.join("a.txt").as_os_str().as_bytes(),
        vol.join("b.txt").as_os_str().as_bytes(),
    ]);
    assert!(vol.join(".Desktop").exists() && vol.join("b.txt").exists());
    env.term();
}

/// A `.Desktop` on the medium that is no desktop (garbage): the log says so and the volume is
/// served with a new temporary desktop.
#[test]
fn an_invalid_desktop_on_a_read_only_medium_is_replaced_by_a_new_temporary_one() {
    if !can_mount() {
        return;
    }
    let mut env = env_with_private_tmp();
    let medium = Medium::new(&env);
    let vol = medium.vol();
    std::fs::write(vol.join(".Desktop"), vec![0x5au8; 8192]).unwrap();
    std::fs::write(vol.join("a.txt"), b"a").unwrap();
    medium.remount(true);
    env.start(&[vol.to_str().unwrap()]);
    env.wait_for_log(
        "read-only file system; served read-only with a temporary desktop at",
        1,
    );
    let log = env.log_text();
    assert!(log.contains("not a valid desktop"), "{log}");
    assert!(env.id_of(&vol.join("a.txt")) >= 17);
    env.term();
    assert!(temp_desktops(&env).is_empty());
}

/// A medium whose server was killed (committed IDs still in `.Desktop-wal`) and then made
/// read-only: the WAL is copied with the desktop, so every acknowledged ID is answered.
#[test]
fn a_crashed_desktop_on_a_read_only_medium_keeps_the_ids_in_its_wal() {
    if !can_mount() {
        return;
    }
    let mut env = env_with_private_tmp();
    let medium = Medium::new(&env);
    let vol = medium.vol();
    let names: Vec<String> = (0..20).map(|i| format!("f{i}.txt")).collect();
    for n in &names {
        std::fs::write(vol.join(n), n.as_bytes()).unwrap();
    }
    env.start(&[vol.to_str().unwrap()]);
    let paths: Vec<PathBuf> = names.iter().map(|n| vol.join(n)).collect();
    let recorded: Vec<u64> = env
        .ids(&paths)
        .iter()
        .map(|v| v["id"].as_u64().unwrap())
        .collect();
    env.kill9();
    let wal = std::fs::metadata(vol.join(".Desktop-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(wal > 0, "the IDs are in the WAL");
    medium.remount(true);

    env.start(&[vol.to_str().unwrap()]);
    env.wait_for_log("with its own desktop (read only, copied to", 1);
    let answered: Vec<u64> = env
        .ids(&paths)
        .iter()
        .map(|v| v["id"].as_u64().unwrap())
        .collect();
    assert_eq!(answered, recorded);
    env.term();
    assert!(temp_desktops(&env).is_empty());
}
