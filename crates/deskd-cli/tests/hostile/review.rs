//! Hostile-user tests, part `review` (see main.rs): findings of the issue-21 attack review.
//!
//! A rebuild (offline or online) plans its fixes from a walk and then writes resource files,
//! sets `user.deskd.id` and removes orphaned resource files by path, as root. A user who owns
//! a folder of the volume can exchange it for a symlink to any directory between the walk and
//! the fixes (`renameat2(RENAME_EXCHANGE)` in a loop does it within a few rebuilds): before
//! the fix, root's rebuild then removed `.rsrc/NAME` files, wrote resource files and set xattrs
//! outside the volume. Now every fix is made below the root without following a symlink on
//! the way (`deskd_volume::pin`).

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{stderr, Env, DESKD};

const NOBODY: u32 = 65534;

fn chown_nobody(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: lchown with a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::lchown(c.as_ptr(), NOBODY, NOBODY) },
        0,
        "{}",
        path.display()
    );
}

#[test]
fn a_folder_swapped_for_a_symlink_before_the_fixes_leads_rebuild_nowhere_else() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the hostile-user tests must run as root"
    );
    let env = Env::new(&["vol", "outside/.rsrc"]);
    let vol = env.path("vol");
    let sub = vol.join("mine/sub");
    std::fs::create_dir_all(&sub).unwrap();
    let names: Vec<String> = (0..5).map(|i| format!("f{i}")).collect();
    for n in &names {
        std::fs::write(sub.join(n), b"").unwrap();
        std::fs::write(env.path("outside").join(n), b"").unwrap();
    }
    env.deskd_ok(&["rebuild", "-f", vol.to_str().unwrap()]);
    // What the repair will want to fix in nobody's folder: lost resource files and mirrors,
    // and an orphaned resource file.
    for n in &names {
        std::fs::remove_file(sub.join(".rsrc").join(n)).unwrap();
        let _ = xattr::remove(sub.join(n), "user.deskd.id");
    }
    std::fs::write(sub.join(".rsrc/orph"), [0u8; 512]).unwrap();
    // Root's files outside the volume, named like nobody's.
    std::fs::write(env.path("outside/.rsrc/orph"), b"root's").unwrap();
    for p in [
        vol.join("mine"),
        sub.clone(),
        sub.join(".rsrc"),
        sub.join(".rsrc/orph"),
    ] {
        chown_nobody(&p);
    }
    for n in &names {
        chown_nobody(&sub.join(n));
    }

    // The rebuild waits before its fixes until this file exists.
    let go_on = env.path("go-on");
    let mut child = Command::new(DESKD)
        .args(["rebuild", vol.to_str().unwrap()])
        .env("DESKD_TEST_REBUILD_HOLD_BEFORE_FIXES", &go_on)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the walk is planned and the rebuild pauses before its fixes.
    let mut errors = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("pausing") {
        let before = said.len();
        std::io::BufRead::read_line(&mut errors, &mut said).unwrap();
        assert!(said.len() > before, "the rebuild never paused: {said}");
    }
    // What nobody may do in its own folder: its sub/ becomes a link to root's directory.
    std::fs::rename(&sub, vol.join("mine/sub.real")).unwrap();
    std::os::unix::fs::symlink(env.path("outside"), &sub).unwrap();
    chown_nobody(&sub);
    std::fs::write(&go_on, b"").unwrap();
    std::io::Read::read_to_string(&mut errors, &mut said).unwrap();
    let out = child.wait_with_output().unwrap();

    assert_eq!(
        std::fs::read(env.path("outside/.rsrc/orph")).unwrap(),
        b"root's",
        "rebuild removed or rewrote a file outside the volume"
    );
    for n in &names {
        assert!(
            !env.path("outside/.rsrc").join(n).exists(),
            "rebuild wrote outside/.rsrc/{n}"
        );
        assert_eq!(
            xattr::get(env.path("outside").join(n), "user.deskd.id").unwrap(),
            None,
            "rebuild set an xattr on outside/{n}"
        );
    }
    assert!(
        !out.status.success(),
        "the rebuild went on through the link"
    );
    assert!(said.contains("symbolic link on the way"), "{said}");
}

/// Run `f` on a thread of its own that is nobody (uid, gid, no groups) for the kernel: the raw
/// system calls change the calling thread only, and `SO_PEERCRED` reports the connecting
/// thread's credentials.
fn on_a_nobody_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: plain system calls on this thread's credentials.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresgid, NOBODY, NOBODY, NOBODY),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresuid, NOBODY, NOBODY, NOBODY),
                0
            );
        }
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn a_move_or_removal_by_id_in_a_write_only_folder_names_nothing() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the hostile-user tests must run as root"
    );
    use deskd_proto::{Request, Response};
    let mut env = Env::new(&["vol"]);
    std::fs::set_permissions(
        env.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    env.serve(&["vol"]);
    // A drop box: every user may put files in, none may list it (0733, as 1733).
    env.dt_ok(&[b"mkdir", b"vol/drop", b"vol/drop/salaries-2027"]);
    env.dt_ok(&[b"touch", b"vol/drop/board-minutes.txt"]);
    let ids: Vec<u32> = ["vol/drop/board-minutes.txt", "vol/drop/salaries-2027"]
        .iter()
        .map(|p| env.id_of(&env.path(p)))
        .collect();
    std::fs::set_permissions(
        env.path("vol/drop"),
        std::os::unix::fs::PermissionsExt::from_mode(0o733),
    )
    .unwrap();
    let socket = env.socket.clone();
    let root = env.path("vol");
    let answers = on_a_nobody_thread(move || {
        let mut c =
            deskd_client::Client::connect(&socket, std::time::Duration::from_secs(10)).unwrap();
        let vol = c.open_volume(&root).unwrap().vol;
        let mut answers = Vec::new();
        for id in ids.iter().copied().chain([999_999]) {
            for request in [
                Request::Delete {
                    vol,
                    id,
                    recursive: false,
                },
                Request::Delete {
                    vol,
                    id,
                    recursive: true,
                },
                Request::Rename {
                    vol,
                    id,
                    new_parent: 2,
                    new_name: b"taken".to_vec(),
                    replace: true,
                },
            ] {
                let answer = match c.call(request) {
                    Ok(Response::Removed(r)) => format!("removed {r:?}"),
                    Ok(other) => format!("{other:?}"),
                    Err(deskd_client::ClientError::Server(e)) => {
                        format!("{:?} {}", e.code, e.message)
                    }
                    Err(e) => format!("client error {e}"),
                };
                answers.push((id, answer));
            }
        }
        answers
    });
    let missing: Vec<&String> = answers
        .iter()
        .filter(|(id, _)| *id == 999_999)
        .map(|(_, a)| a)
        .collect();
    for (i, (id, answer)) in answers.iter().enumerate() {
        assert!(
            !answer.contains("board") && !answer.contains("salaries") && !answer.contains("drop"),
            "ID {id}: {answer}"
        );
        assert_eq!(answer, missing[i % 3], "ID {id}");
    }
    // Nothing was removed from the desktop.
    assert!(env.path("vol/drop/board-minutes.txt").exists());
    assert_eq!(
        env.id_of(&env.path("vol/drop/board-minutes.txt")),
        answers[0].0
    );
}

/// The walk itself: a folder of nobody's swapped for a link after the walk listed it, before
/// it opens the folder below, made the walk read another directory's entries (a folder closed
/// to nobody, or one outside the volume) as nobody's: their names, inodes, resource files and
/// mirrors went into the desktop under nobody's folder, where `dt find` showed them to nobody.
#[test]
fn a_folder_swapped_for_a_symlink_during_the_walk_lends_it_nothing() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the hostile-user tests must run as root"
    );
    let env = Env::new(&["vol/mine/s/deep", "outside/deep"]);
    let vol = env.path("vol");
    std::fs::write(env.path("outside/deep/topsecret.txt"), b"").unwrap();
    env.deskd_ok(&["rebuild", "-f", vol.to_str().unwrap()]);
    for p in ["vol/mine", "vol/mine/s", "vol/mine/s/deep"] {
        chown_nobody(&env.path(p));
    }
    // One walker, one second per directory: root, mine, mine/s, mine/s/deep in this order;
    // nobody swaps mine/s for a link while the walker waits before mine/s/deep.
    let mut child = Command::new(DESKD)
        .args(["rebuild", "-s", "--threads", "1", vol.to_str().unwrap()])
        .env("DESKD_REBUILD_DIR_DELAY_MS", "1000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The walker says where it waits; swap while it waits before mine/s/deep.
    let (at_deep, waiting) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    let said = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut text = String::new();
        for line in std::io::BufReader::new(err).lines() {
            let line = line.unwrap();
            if line.starts_with("test hook: waiting") && line.ends_with("mine/s/deep") {
                let _ = at_deep.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    waiting
        .recv_timeout(Duration::from_secs(60))
        .expect("the walker never reached mine/s/deep");
    std::fs::rename(vol.join("mine/s"), vol.join("mine/s.real")).unwrap();
    std::os::unix::fs::symlink(env.path("outside"), vol.join("mine/s")).unwrap();
    chown_nobody(&vol.join("mine/s"));
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        said.join().unwrap()
    );
    assert!(!text.contains("topsecret"), "{text}");
}

/// `deskd status` is open to every user; the reason an online rebuild failed may name any
/// path (here a nested volume's folder inside a root-only 0700 folder).
#[test]
fn status_tells_a_stranger_no_path_from_a_failed_rebuild() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the hostile-user tests must run as root"
    );
    let mut env = Env::new(&["vol/closed"]);
    std::fs::set_permissions(
        env.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    env.serve(&["vol"]);
    std::fs::set_permissions(
        env.path("vol/closed"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    std::fs::create_dir(env.path("vol/closed/acquisition-2027")).unwrap();
    // A desktop root made there (an SQLite file of root's: an empty one is no desktop).
    crate::common::sqlite3(
        &env.path("vol/closed/acquisition-2027/.Desktop"),
        "CREATE TABLE t (x)",
    );
    let out = env.deskd(&["rebuild", env.path("vol").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("acquisition-2027"),
        "{}",
        stderr(&out)
    );
    // Root still reads why.
    assert!(env.deskd_ok(&["status"]).contains("acquisition-2027"));
    for args in [&[b"status".as_slice()][..], &[b"status", b"--json"]] {
        let out = env.as_nobody(DESKD, args).unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(out.status.success(), "{text}");
        assert!(text.contains("failed"), "{text}");
        assert!(!text.contains("acquisition"), "{text}");
    }
}

/// A crashed volume on a full disk is read from a copy of its desktop and WAL in the temp
/// directory, under a name anyone can work out (`desksrv-full.<pid>.<hash of the root>`).
/// Before the fix a user who made that directory first, with a `.Desktop` file of its own in
/// it, got every record of the desktop written into its file.
#[test]
fn a_full_disk_copy_never_goes_into_a_directory_a_user_made_first() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the hostile-user tests must run as root"
    );
    let mut env = Env::new(&[]);
    let fs = crate::common::SmallExt4::mount(env.path("mnt"), 16);
    let vol = fs.mnt.join("vol");
    std::fs::create_dir_all(vol.join("closed")).unwrap();
    std::fs::write(vol.join("closed/merger-plans.txt"), b"").unwrap();
    crate::start_keeping_the_wal(&mut env, &vol);
    let id = env.id_of(&vol.join("closed/merger-plans.txt"));
    env.kill9();
    assert!(std::fs::metadata(vol.join(".Desktop-wal")).unwrap().len() > 0);
    let _ = std::fs::remove_file(vol.join(".Desktop-shm"));
    fs.fill_leaving("fill", 0);

    // nobody's directories for the next few thousand pids.
    let hash = vol
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0u32, |h, &b| h.wrapping_mul(31).wrapping_add(b as u32));
    let first = std::process::Command::new("/bin/sh")
        .args(["-c", "echo $$"])
        .output()
        .unwrap();
    let first: u32 = String::from_utf8_lossy(&first.stdout)
        .trim()
        .parse()
        .unwrap();
    let planted: Vec<std::path::PathBuf> = (first..first + 3000)
        .map(|pid| std::env::temp_dir().join(format!("desksrv-full.{pid}.{hash}")))
        .filter(|d| std::fs::create_dir(d).is_ok())
        .collect();
    for d in &planted {
        std::fs::write(d.join(".Desktop"), b"").unwrap();
        for p in [d.clone(), d.join(".Desktop")] {
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o777))
                .unwrap();
            chown_nobody(&p);
        }
    }
    struct Planted(Vec<std::path::PathBuf>);
    impl Drop for Planted {
        fn drop(&mut self) {
            for d in &self.0 {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    let planted = Planted(planted);

    crate::start_keeping_the_wal(&mut env, &vol);
    let log = env.log_text();
    assert!(log.contains("(a copy)"), "{log}");
    // Served, with the recorded ID, from a copy of deskd's own.
    assert_eq!(env.id_of(&vol.join("closed/merger-plans.txt")), id);
    for d in &planted.0 {
        assert_eq!(
            std::fs::metadata(d.join(".Desktop")).unwrap().len(),
            0,
            "deskd wrote the desktop into {}",
            d.display()
        );
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 1, "{}", d.display());
    }
    env.term();
}
