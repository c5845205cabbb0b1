//! Hostile-user tests, part `admin` (see main.rs): the desktop files are private to deskd's
//! user, only root or the volume owner may have a desktop read (backup, rebuild, restore), and
//! no command rewrites a desktop of a newer format, makes a second desktop inside or around a
//! volume, repairs a desktop that is not there, or opens a desktop before `deskd serve`'s
//! checks (socket included) passed.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::{self, mode_of, sqlite3, stderr, Env, DESKD};

const NOBODY: u32 = 65534;

/// Run `bin ARGS` as nobody; the tests need root to do so, and fail without it.
fn as_nobody(env: &Env, bin: &str, args: &[&Path]) -> Output {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_os_str().as_bytes()).collect();
    env.as_user(NOBODY, bin, &args, &[])
        .expect("the hostile-user tests must run as root (to act as nobody)")
}

/// The three files of a live desktop.
fn desktop_files(vol: &Path) -> [PathBuf; 3] {
    let d = vol.join(".Desktop");
    [d.clone(), deskd_db::wal_path(&d), deskd_db::shm_path(&d)]
}

/// Nobody can read `path` at all: the kernel refuses the open.
fn assert_unreadable_by_nobody(env: &Env, path: &Path) {
    let out = as_nobody(env, "/bin/cat", &[path]);
    assert!(
        !out.status.success() && stderr(&out).contains("Permission denied"),
        "nobody read {} (mode {:o}): {}",
        path.display(),
        mode_of(path),
        stderr(&out)
    );
}

/// The files of `dir` (not below), each with a checksum of its content.
fn snapshot(dir: &Path) -> Vec<(String, u64)> {
    use std::hash::{Hash, Hasher};
    let mut out: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::fs::read(&p).unwrap().hash(&mut h);
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                h.finish(),
            )
        })
        .collect();
    out.sort();
    out
}

fn touch(dir: &Path, names: &[&str]) {
    for n in names {
        std::fs::write(dir.join(n), b"x").unwrap();
    }
}

fn deskd_ok(env: &Env, args: &[&str]) {
    env.deskd_ok(args);
}

fn assert_refused(out: &Output, code: i32, needle: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", stderr(out));
    assert!(stderr(out).contains(needle), "{}", stderr(out));
}

#[test]
fn serve_creates_the_desktop_files_private() {
    let mut env = Env::new(&["vol"]);
    env.server_wrapper = common::UMASK_022.iter().map(|s| s.to_string()).collect();
    env.serve(&["vol"]);
    let file = env.path("vol/secret-plan.txt");
    env.dt_ok(&[b"touch", file.as_os_str().as_bytes()]);
    for f in desktop_files(&env.path("vol")) {
        assert_eq!(mode_of(&f), 0o600, "{}", f.display());
        assert_unreadable_by_nobody(&env, &f);
    }
    // What the issue tried: read the names with sqlite3.
    let desktop = env.path("vol/.Desktop");
    let args: Vec<&[u8]> = vec![desktop.as_os_str().as_bytes(), b"SELECT name FROM objects"];
    let out = env.as_user(NOBODY, "/usr/bin/sqlite3", &args, &[]).unwrap();
    assert!(
        !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("secret"),
        "nobody read the names: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn serve_takes_group_and_other_bits_off_an_existing_desktop() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    let file = env.path("vol/secret-plan.txt");
    env.dt_ok(&[b"touch", file.as_os_str().as_bytes()]);
    // Killed: the WAL and the shared-memory file stay, as after a crash.
    env.kill9();
    let files = desktop_files(&env.path("vol"));
    for f in &files {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    env.serve(&["vol"]);
    for f in &files {
        assert_eq!(mode_of(f), 0o600, "{}", f.display());
        assert_unreadable_by_nobody(&env, f);
    }
    let log = env.log_text();
    assert!(
        log.contains(".Desktop: mode 0644 let other users read the desktop; now 0600"),
        "{log}"
    );
}

#[test]
fn backup_rebuild_and_restore_by_a_stranger_are_refused() {
    let mut env = Env::new(&["vol"]);
    let vol = env.path("vol");
    env.serve(&["vol"]);
    let secret = vol.join("secret-plan.txt");
    env.dt_ok(&[b"touch", secret.as_os_str().as_bytes()]);
    let backup = env.path("root.desktop");
    deskd_ok(
        &env,
        &["backup", vol.to_str().unwrap(), backup.to_str().unwrap()],
    );
    // A desktop left world-readable by an older deskd, with its WAL and shared memory (the
    // server was killed): only deskd's own check stands between nobody and the names.
    env.kill9();
    for f in desktop_files(&vol) {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let drop_box = env.path("drop");
    std::fs::create_dir(&drop_box).unwrap();
    std::fs::set_permissions(&drop_box, std::fs::Permissions::from_mode(0o777)).unwrap();
    let before = snapshot(&vol);

    let refusal = "only root or the volume owner (uid 0) may do; you are uid 65534";
    let out = as_nobody(&env, DESKD, &[Path::new("backup"), &vol, &drop_box]);
    assert_refused(&out, 2, refusal);
    assert_eq!(std::fs::read_dir(&drop_box).unwrap().count(), 0);
    let out = as_nobody(&env, DESKD, &[Path::new("backup"), &vol, Path::new("-")]);
    assert_refused(&out, 2, refusal);
    assert!(out.stdout.is_empty(), "the desktop went to standard output");

    let out = as_nobody(&env, DESKD, &[Path::new("rebuild"), Path::new("-s"), &vol]);
    assert_refused(&out, 2, refusal);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("secret"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = as_nobody(&env, DESKD, &[Path::new("rebuild"), &vol]);
    assert_refused(&out, 2, refusal);
    let out = as_nobody(&env, DESKD, &[Path::new("restore"), &backup, &vol]);
    assert_refused(&out, 2, refusal);
    assert_eq!(snapshot(&vol), before, "the volume's files changed");

    // Root's backup and its manifest are root's alone.
    for f in [backup.clone(), env.path("root.desktop.manifest.json")] {
        assert_eq!(mode_of(&f), 0o600, "{}", f.display());
        assert_unreadable_by_nobody(&env, &f);
    }
    let out = as_nobody(&env, DESKD, &[Path::new("verify"), &backup]);
    assert!(!out.status.success(), "nobody verified root's backup");

    // Online, the server refuses the same (its admin check).
    env.serve(&["vol"]);
    let out = as_nobody(&env, DESKD, &[Path::new("rebuild"), Path::new("-s"), &vol]);
    assert_refused(&out, 2, "need root or the volume owner");
}

#[test]
fn rebuild_temporaries_and_backups_are_private() {
    let env = Env::new(&["vol"]);
    let vol = env.path("vol");
    touch(&vol, &["a.txt", "b.txt"]);
    let v = vol.to_str().unwrap();
    // Killed right after the new desktop is written: the temporary is left as it was made.
    let out = env.deskd_umask_022(
        &["rebuild", "-f", v],
        &[("DESKD_REBUILD_CRASH_AFTER", "written")],
    );
    assert!(!out.status.success());
    let temp = vol.join(".Desktop-rebuild");
    assert_eq!(mode_of(&temp), 0o600);
    assert_unreadable_by_nobody(&env, &temp);
    let out = env.deskd_umask_022(&["rebuild", "-f", v], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode_of(&vol.join(".Desktop")), 0o600);
    let backup = env.path("b.desktop");
    let out = env.deskd_umask_022(&["backup", v, backup.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode_of(&backup), 0o600);
    assert_eq!(mode_of(&env.path("b.desktop.manifest.json")), 0o600);
}

#[test]
fn a_newer_format_desktop_is_refused_by_every_command() {
    let env = Env::new(&["vol", "other", "backups"]);
    let vol = env.path("vol");
    touch(&vol, &["a.txt", "b.txt"]);
    let v = vol.to_str().unwrap();
    deskd_ok(&env, &["rebuild", "-f", v]);
    let good = env.path("backups/good.desktop");
    deskd_ok(&env, &["backup", v, good.to_str().unwrap()]);
    let desktop = vol.join(".Desktop");
    sqlite3(&desktop, "PRAGMA user_version = 99");
    let before = snapshot(&vol);
    let newer = "desktop format 99 is newer than this deskd supports";
    let unchanged = |what: &str| {
        assert_eq!(snapshot(&vol), before, "{what} changed the volume's files");
        assert!(!deskd_db::wal_path(&desktop).exists(), "{what}: a WAL");
    };

    let out = env.serve_refused(&env.path("s.sock"), &[v]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(newer), "{}", stderr(&out));
    assert!(!env.path("s.sock").exists(), "serve bound its socket first");
    unchanged("serve");
    for args in [
        &["rebuild", "-s", v][..],
        &["rebuild", v],
        &["rebuild", "-f", v],
    ] {
        assert_refused(&env.deskd(args), 2, newer);
        unchanged(&args.join(" "));
    }
    let out = env.deskd(&["rebuild", "-f", v]);
    assert!(stderr(&out).contains("--downgrade"), "{}", stderr(&out));
    assert_refused(
        &env.deskd(&["backup", v, env.path("backups").to_str().unwrap()]),
        2,
        newer,
    );
    assert_eq!(std::fs::read_dir(env.path("backups")).unwrap().count(), 2);
    unchanged("backup");
    // A restore over it would replace it with the older format.
    assert_refused(
        &env.deskd(&["restore", good.to_str().unwrap(), v]),
        2,
        newer,
    );
    unchanged("restore");

    // A backup of a newer format is not restored either, not even with --force.
    let other = env.path("other");
    touch(&other, &["c.txt"]);
    deskd_ok(&env, &["rebuild", "-f", other.to_str().unwrap()]);
    let newer_backup = env.path("backups/newer.desktop");
    std::fs::copy(&good, &newer_backup).unwrap();
    sqlite3(&newer_backup, "PRAGMA user_version = 99");
    let other_before = snapshot(&other);
    let out = env.deskd(&[
        "restore",
        "--force",
        newer_backup.to_str().unwrap(),
        other.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(newer), "{}", stderr(&out));
    assert_eq!(snapshot(&other), other_before);

    // The way out that is asked for by name.
    deskd_ok(&env, &["rebuild", "-f", "--downgrade", v]);
    assert_eq!(
        sqlite3(&desktop, "PRAGMA user_version"),
        deskd_db::FORMAT_VERSION.to_string()
    );
}

/// The ID mirror of every entry of `dir`, by name.
fn mirrors(dir: &Path) -> Vec<(String, Option<u32>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                deskd_volume::read_id_xattr(&e.path()),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn serve_and_rebuild_refuse_a_volume_inside_another() {
    let env = Env::new(&["outer/inner/deeper"]);
    let (outer, inner) = (env.path("outer"), env.path("outer/inner"));
    touch(&inner, &["a.txt", "b.txt"]);
    deskd_ok(&env, &["rebuild", "-f", outer.to_str().unwrap()]);
    let ids = mirrors(&inner);
    assert!(ids.iter().all(|(_, id)| id.is_some()), "{ids:?}");
    let i = inner.to_str().unwrap();
    let says = format!("inside the volume {}", outer.display());

    let out = env.serve_refused(&env.path("s.sock"), &[i]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&says), "{}", stderr(&out));
    let backup = env.path("outer.desktop");
    deskd_ok(
        &env,
        &["backup", outer.to_str().unwrap(), backup.to_str().unwrap()],
    );
    let b = backup.to_str().unwrap();
    for args in [
        &["rebuild", "-f", i][..],
        &["rebuild", i],
        &["rebuild", "-s", i],
        &["restore", "--force", b, i],
    ] {
        assert_refused(&env.deskd(args), 2, &says);
    }
    assert!(std::fs::symlink_metadata(inner.join(".Desktop")).is_err());
    assert_eq!(
        mirrors(&inner),
        ids,
        "the inner folder's ID mirrors changed"
    );

    // Forced, it is done.
    deskd_ok(&env, &["rebuild", "-f", "--nested", i]);
    assert!(inner.join(".Desktop").exists());
    let inner_ids = mirrors(&inner);

    // Now the outer volume is around another one: the server's own (online) rebuild of it
    // refuses to rewrite the inner volume's mirrors.
    let mut env = env;
    env.serve(&["outer"]);
    let out = env.deskd(&["rebuild", "-f", outer.to_str().unwrap()]);
    assert_refused(
        &out,
        2,
        &format!("the volume {} is inside it", inner.display()),
    );
    assert_eq!(mirrors(&inner), inner_ids);
}

#[test]
fn serve_refuses_a_desktop_another_user_made_first() {
    let env = Env::new(&["shared"]);
    let root = env.path("shared");
    // A folder its group (nobody's) may write, as shared folders are.
    std::os::unix::fs::chown(&root, None, Some(NOBODY)).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o775)).unwrap();
    let planted = root.join(".Desktop");
    let out = as_nobody(&env, "/usr/bin/touch", &[&planted]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.serve_refused(&env.path("s.sock"), &[root.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is owned by uid 65534, which is neither root"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::metadata(&planted).unwrap().len(), 0);
}

#[test]
fn serve_and_rebuild_refuse_a_volume_around_another() {
    let env = Env::new(&["around/sub", "around/plain"]);
    let (around, sub) = (env.path("around"), env.path("around/sub"));
    touch(&sub, &["c.txt"]);
    touch(&env.path("around/plain"), &["d.txt"]);
    deskd_ok(&env, &["rebuild", "-f", sub.to_str().unwrap()]);
    let ids = mirrors(&sub);
    let a = around.to_str().unwrap();
    let says = format!("the volume {} is inside it", sub.display());

    let out = env.serve_refused(&env.path("s.sock"), &[a]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&says), "{}", stderr(&out));
    assert_refused(&env.deskd(&["rebuild", "-f", a]), 2, &says);
    assert!(std::fs::symlink_metadata(around.join(".Desktop")).is_err());
    assert!(
        !around.join(".rsrc").exists(),
        "resource files were written"
    );
    assert_eq!(
        mirrors(&env.path("around/plain")),
        vec![("d.txt".into(), None)]
    );
    assert_eq!(mirrors(&sub), ids);

    // Two configured volumes, one inside the other: neither is served.
    let out = env.serve_refused(&env.path("s.sock"), &[a, sub.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&says), "{}", stderr(&out));
    let inside = format!("{}: inside the volume {}", sub.display(), around.display());
    assert!(stderr(&out).contains(&inside), "{}", stderr(&out));
    assert!(std::fs::symlink_metadata(around.join(".Desktop")).is_err());
}

#[test]
fn a_repair_rebuild_without_a_desktop_creates_nothing() {
    let env = Env::new(&["vol"]);
    let vol = env.path("vol");
    touch(&vol, &["a.txt"]);
    let out = env.deskd(&["rebuild", vol.to_str().unwrap()]);
    assert_refused(
        &out,
        2,
        &format!(
            "no desktop at {}; use deskd rebuild -f to create one",
            vol.join(".Desktop").display()
        ),
    );
    let names: Vec<_> = std::fs::read_dir(&vol)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("a.txt")]);
    assert_eq!(deskd_volume::read_id_xattr(&vol.join("a.txt")), None);
}

#[test]
fn serve_with_its_socket_in_use_opens_no_desktop() {
    let mut env = Env::new(&["a", "b", "c"]);
    env.serve(&["a"]);
    let c = env.path("c");
    touch(&c, &["x.txt"]);
    deskd_ok(&env, &["rebuild", "-f", c.to_str().unwrap()]);
    let before = snapshot(&c);
    let modified = std::fs::metadata(c.join(".Desktop"))
        .unwrap()
        .modified()
        .unwrap();
    let out = env.serve_refused(
        &env.socket,
        &[env.path("b").to_str().unwrap(), c.to_str().unwrap()],
    );
    assert_refused(&out, 1, "another deskd is already serving on this socket");
    assert!(std::fs::symlink_metadata(env.path("b/.Desktop")).is_err());
    assert_eq!(snapshot(&c), before);
    assert_eq!(
        std::fs::metadata(c.join(".Desktop"))
            .unwrap()
            .modified()
            .unwrap(),
        modified
    );
    // The first server is untouched and still answers.
    env.dt_ok(&[b"touch", env.path("a/still.txt").as_os_str().as_bytes()]);
}

#[test]
fn a_world_writable_root_is_refused_unless_asked_for() {
    let env = Env::new(&["tmpish"]);
    let root = env.path("tmpish");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let r = root.to_str().unwrap();
    let out = env.serve_refused(&env.path("s.sock"), &[r]);
    assert!(
        stderr(&out).contains("every user may create files"),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::symlink_metadata(root.join(".Desktop")).is_err());
    assert_refused(&env.deskd(&["rebuild", "-f", r]), 2, "use --world-writable");
    assert!(std::fs::symlink_metadata(root.join(".Desktop")).is_err());
    deskd_ok(&env, &["rebuild", "-f", "--world-writable", r]);
    assert_eq!(mode_of(&root.join(".Desktop")), 0o600);
}

#[test]
fn a_read_only_volume_gets_a_private_temporary_desktop() {
    let mut env = Env::new(&["vol", "tmp"]);
    // deskd runs as nobody, who may not write the volume: its desktop goes to a temporary one.
    let tmp = env.path("tmp");
    std::os::unix::fs::chown(&tmp, Some(NOBODY), Some(NOBODY)).unwrap();
    env.server_uid = Some(NOBODY);
    env.socket = tmp.join("deskd.sock");
    env.server_env
        .push(("TMPDIR".into(), tmp.display().to_string()));
    env.server_wrapper = common::UMASK_022.iter().map(|s| s.to_string()).collect();
    env.set_read_only(true);
    let config = env.path("deskd.toml").display().to_string();
    env.start(&["--config", &config]);
    let dirs: Vec<PathBuf> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("desksrv.")
        })
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}: {}", env.log_text());
    assert_eq!(mode_of(&dirs[0]), 0o700);
    let desktop = dirs[0].join(".Desktop");
    for f in [
        desktop.clone(),
        deskd_db::wal_path(&desktop),
        deskd_db::shm_path(&desktop),
    ] {
        if f.exists() {
            assert_eq!(mode_of(&f), 0o600, "{}", f.display());
        }
    }
    assert!(desktop.exists());
}

#[test]
fn a_read_only_open_makes_the_desktop_private_before_its_shared_memory_exists() {
    let env = Env::new(&["vol"]);
    let vol = env.path("vol");
    touch(&vol, &["a.txt"]);
    let v = vol.to_str().unwrap();
    deskd_ok(&env, &["rebuild", "-f", v]);
    let [desktop, wal, shm] = desktop_files(&vol);
    for verb in [&["rebuild", "-s", v][..], &["backup", v, "-"]] {
        // A desktop left world-readable, without side files: the read-only open makes them.
        let _ = std::fs::remove_file(&wal);
        let _ = std::fs::remove_file(&shm);
        std::fs::set_permissions(&desktop, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = env.deskd_umask_022(verb, &[]);
        assert!(out.status.success(), "{verb:?}: {}", stderr(&out));
        assert!(shm.exists(), "{verb:?} made no shared-memory file");
        assert!(
            stderr(&out).contains(".Desktop: mode 0644 let other users read the desktop; now 0600"),
            "{verb:?}: {}",
            stderr(&out)
        );
        for f in [&desktop, &wal, &shm] {
            if f.exists() {
                assert_eq!(mode_of(f), 0o600, "{verb:?}: {}", f.display());
            }
        }
    }
}

#[test]
fn a_desktop_planted_by_a_user_does_not_block_the_admin_tools() {
    let mut env = Env::new(&["vol/mine/empty", "vol/mine/made", "vol/real"]);
    let vol = env.path("vol");
    let v = vol.to_str().unwrap().to_owned();
    let mine = env.path("vol/mine");
    touch(&mine, &["own.txt"]);
    touch(&env.path("vol/real"), &["r.txt"]);
    for p in [&mine, &mine.join("empty"), &mine.join("made")] {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    // nobody plants a `.Desktop` in two folders of its own: an empty one, and a real SQLite
    // database it made.
    let empty = mine.join("empty/.Desktop");
    let made = mine.join("made/.Desktop");
    let out = as_nobody(&env, "/usr/bin/touch", &[&empty]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = as_nobody(
        &env,
        "/usr/bin/sqlite3",
        &[&made, Path::new("CREATE TABLE objects (id)")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(&made)
        .unwrap()
        .starts_with(b"SQLite format 3\0"));
    let planted = || {
        (
            std::fs::read(&empty).unwrap(),
            std::fs::read(&made).unwrap(),
        )
    };
    let before = planted();

    // The first serve of the volume, which has no desktop yet, serves it...
    env.serve(&["vol"]);
    assert!(vol.join(".Desktop").exists());
    let log = env.log_text();
    assert!(
        log.contains(&format!("{}: ignored for the nesting rule", made.display())),
        "{log}"
    );
    // ...the online rebuilds of it proceed...
    for args in [
        &["rebuild", "-s", &v][..],
        &["rebuild", &v],
        &["rebuild", "-f", &v],
    ] {
        let out = env.deskd(args);
        assert!(
            out.status.code() == Some(0) || (args[1] == "-s" && out.status.code() == Some(1)),
            "deskd {args:?}: {}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("is inside it"), "{}", stderr(&out));
    }
    let backup = env.path("vol.desktop");
    deskd_ok(&env, &["backup", &v, backup.to_str().unwrap()]);
    env.term();
    // ...and so do the offline ones and a restore.
    for args in [
        &["rebuild", "-s", &v][..],
        &["rebuild", &v],
        &["rebuild", "-f", &v],
        &["restore", "--force", backup.to_str().unwrap(), &v],
    ] {
        let out = env.deskd(args);
        assert!(
            out.status.code() == Some(0) || (args[1] == "-s" && out.status.code() == Some(1)),
            "deskd {args:?}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("ignored for the nesting rule"),
            "{}",
            stderr(&out)
        );
    }
    // The user's own files are registered as ever; the planted files are left as they are.
    assert!(deskd_volume::read_id_xattr(&mine.join("own.txt")).is_some());
    assert_eq!(planted(), before);

    // A real volume inside, made by root, is still refused.
    let real = env.path("vol/real");
    deskd_ok(&env, &["rebuild", "-f", "--nested", real.to_str().unwrap()]);
    let says = format!("the volume {} is inside it", real.display());
    for args in [&["rebuild", "-f", &v][..], &["rebuild", &v]] {
        assert_refused(&env.deskd(args), 2, &says);
    }
    let out = env.deskd(&["restore", "--force", backup.to_str().unwrap(), &v]);
    assert_refused(&out, 2, &says);
    std::fs::remove_file(vol.join(".Desktop")).unwrap();
    let out = env.serve_refused(&env.path("s.sock"), &[&v]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&says), "{}", stderr(&out));
}
