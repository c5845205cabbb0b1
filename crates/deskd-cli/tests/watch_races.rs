//! A hostile writer races the watcher (issue 23; the hostile review of stop 35, findings 1 and
//! 2): nobody swaps a folder's `.rsrc` with a link to a root-owned folder outside the volume,
//! over and over, while the root server stamps the new files it makes there. Root must neither
//! give a file outside away (`fchown` through the swapped `.rsrc`) nor remove one (a link planted
//! in `.rsrc`, removed by a path that follows the swapped `.rsrc`). Nor may a hard link to
//! another user's file, made by nobody in a folder of its own, have the server rewrite that
//! file's ID mirror (finding 6) or give the file to nobody (put in place of a resource file the
//! server just made, before the server gives that file to the object's owner).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use common::Env;

/// Folders nobody races in, and new files per folder: enough rounds that the unfixed server
/// gave a file away or removed one in every run tried.
const FOLDERS: usize = 8;
const FILES: usize = 60;
const SWAPS_AFTER: usize = 20_000;

/// `renameat2(a, b, RENAME_EXCHANGE)`.
fn exchange(a: &Path, b: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::CString::new(a.as_os_str().as_bytes()).unwrap();
    let b = std::ffi::CString::new(b.as_os_str().as_bytes()).unwrap();
    // SAFETY: two valid NUL-terminated paths.
    unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        ) == 0
    }
}

/// The racer, run as nobody (this test binary again, `DESKD_RACE_BASE` set): in each folder
/// `dI` a real `.rsrc/` with links `.rsrc/uK -> /nonexistent` planted, and `L -> outside`.
/// One thread exchanges `.rsrc` and `L` in every folder while the files `cK` and `uK` are
/// made, which the watcher stamps, and a bounded number of rounds after.
fn racer(base: &Path, outside: &Path) {
    let dirs: Vec<PathBuf> = (0..FOLDERS).map(|i| base.join(format!("d{i}"))).collect();
    for d in &dirs {
        fs::create_dir(d).unwrap();
        fs::create_dir(d.join(".rsrc")).unwrap();
        for k in 0..FILES {
            std::os::unix::fs::symlink("/nonexistent", d.join(format!(".rsrc/u{k}"))).unwrap();
        }
        std::os::unix::fs::symlink(outside, d.join("L")).unwrap();
    }
    static MADE: AtomicBool = AtomicBool::new(false);
    let swapping = dirs.clone();
    let swapper = std::thread::spawn(move || {
        // Until every file is made, then SWAPS_AFTER rounds more while the watcher stamps
        // the last of them (a count, not a time).
        let mut after = 0;
        while after < SWAPS_AFTER {
            if MADE.load(Ordering::Relaxed) {
                after += 1;
            }
            for d in &swapping {
                exchange(&d.join(".rsrc"), &d.join("L"));
            }
        }
    });
    for k in 0..FILES {
        for d in &dirs {
            fs::write(d.join(format!("c{k}")), b"").unwrap();
            fs::write(d.join(format!("u{k}")), b"").unwrap();
        }
    }
    MADE.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    // The real folder back in its place.
    for d in &dirs {
        if fs::symlink_metadata(d.join(".rsrc")).is_ok_and(|m| m.file_type().is_symlink()) {
            assert!(exchange(&d.join(".rsrc"), &d.join("L")));
        }
    }
    println!("done");
}

#[test]
fn swapping_rsrc_for_a_link_leads_no_chown_or_unlink_outside() {
    if let Some(base) = std::env::var_os("DESKD_RACE_BASE") {
        let outside = std::env::var_os("DESKD_RACE_OUTSIDE").unwrap();
        return racer(Path::new(&base), Path::new(&outside));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return common::skip("needs root to run the racer as nobody");
    }
    let mut env = Env::new(&["vol", "outside"]);
    let vol = env.path("vol");
    let outside = env.path("outside");
    for p in [env.dir.path(), &vol, &outside] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Root's private files, named as nobody's new objects and their planted links.
    let names: Vec<String> = (0..FILES)
        .flat_map(|k| [format!("c{k}"), format!("u{k}")])
        .collect();
    for n in &names {
        fs::write(outside.join(n), b"root's").unwrap();
        fs::set_permissions(outside.join(n), fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mine = vol.join("mine");
    fs::create_dir(&mine).unwrap();
    std::os::unix::fs::chown(&mine, Some(65534), Some(65534)).unwrap();
    env.serve_watched(&["vol"], "");

    let me = env.linked_for_others(std::env::current_exe().unwrap().to_str().unwrap());
    let out = {
        Command::new(me)
            .args([
                "--exact",
                "swapping_rsrc_for_a_link_leads_no_chown_or_unlink_outside",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("DESKD_RACE_BASE", &mine)
            .env("DESKD_RACE_OUTSIDE", &outside)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("done"),
        "the racer failed: {said}"
    );
    env.watch_barrier("vol");

    let mut wrong = Vec::new();
    for n in &names {
        match fs::symlink_metadata(outside.join(n)) {
            Err(_) => wrong.push(format!("{n}: removed")),
            Ok(m) if m.uid() != 0 || m.gid() != 0 || m.mode() & 0o7777 != 0o600 => wrong.push(
                format!("{n}: now {}:{} {:o}", m.uid(), m.gid(), m.mode() & 0o7777),
            ),
            Ok(_) => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "root's files outside the volume changed: {wrong:?}\n{}",
        env.log_text()
    );
    // Refusals name the folders under attack, not the server's descriptors (review 35, 8).
    assert!(
        !env.log_text().contains("/proc/self/fd"),
        "{}",
        env.log_text()
    );
    // The race was run: the watcher stamped nobody's files (some, at least, while `.rsrc`
    // was in its place).
    let stamped = (0..FOLDERS)
        .flat_map(|i| (0..FILES).map(move |k| (i, k)))
        .filter(|(i, k)| common::rsrc_id(&mine.join(format!("d{i}/c{k}"))).is_some())
        .count();
    assert!(
        stamped > 0,
        "the watcher stamped nothing\n{}",
        env.log_text()
    );
}

#[test]
fn a_hard_link_nobody_makes_leaves_the_other_users_mirror_alone() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return common::skip("needs root to run a user's commands as nobody");
    }
    // Another user's file anyone may read and write (so protected_hardlinks lets nobody link
    // it), registered before nobody comes.
    const VICTIM: u32 = 4321;
    let mut env = Env::new(&["vol"]);
    let vol = env.path("vol");
    for p in [env.dir.path(), &vol] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    for (dir, uid) in [("vic", VICTIM), ("nob", 65534)] {
        fs::create_dir(vol.join(dir)).unwrap();
        std::os::unix::fs::chown(vol.join(dir), Some(uid), Some(uid)).unwrap();
    }
    let shared = vol.join("vic/shared");
    fs::write(&shared, b"victim's").unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o666)).unwrap();
    std::os::unix::fs::chown(&shared, Some(VICTIM), Some(VICTIM)).unwrap();
    env.serve_watched(&["vol"], "");
    env.watch_barrier("vol");
    let id = env.id_of(&shared);
    assert_eq!(deskd_volume::read_id_xattr(&shared), Some(id));

    let out = Command::new("/bin/ln")
        .arg(&shared)
        .arg(vol.join("nob/hl"))
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    env.watch_barrier("vol");
    // nobody's name has an ID of its own (in its resource file); victim's file keeps its
    // mirror and its ID.
    let other = common::rsrc_id(&vol.join("nob/hl")).expect("nobody's link was not stamped");
    assert_ne!(other, id);
    assert_eq!(deskd_volume::read_id_xattr(&shared), Some(id));
    assert_eq!(env.id_of(&shared), id);
}

/// The hard-link racer, run as nobody (`DESKD_RACE_LINK` set to another user's file anyone may
/// write): in `base/.rsrc/`, each resource file the server makes for a new file `cK` is
/// replaced by a hard link to that file, as fast as it shows up, while the files are made.
fn link_racer(base: &Path, victim: &Path) {
    use std::os::unix::fs::MetadataExt;
    let theirs = fs::metadata(victim).unwrap().ino();
    fs::create_dir(base.join(".rsrc")).unwrap();
    static MADE: AtomicBool = AtomicBool::new(false);
    let rsrc = base.join(".rsrc");
    let victim = victim.to_owned();
    let linker = std::thread::spawn(move || {
        let mut after = 0;
        while after < 2_000 {
            if MADE.load(Ordering::Relaxed) {
                after += 1;
            }
            for k in 0..FILES {
                let at = rsrc.join(format!("c{k}"));
                if fs::symlink_metadata(&at).is_ok_and(|m| m.ino() != theirs) {
                    let _ = fs::remove_file(&at);
                    let _ = fs::hard_link(&victim, &at);
                }
            }
        }
    });
    for k in 0..FILES {
        fs::write(base.join(format!("c{k}")), b"").unwrap();
    }
    MADE.store(true, Ordering::Relaxed);
    linker.join().unwrap();
    println!("done");
}

#[test]
fn a_hard_link_swapped_in_for_a_new_resource_file_is_not_given_away() {
    if let Some(victim) = std::env::var_os("DESKD_RACE_LINK") {
        let base = std::env::var_os("DESKD_RACE_BASE").unwrap();
        return link_racer(Path::new(&base), Path::new(&victim));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return common::skip("needs root to run the racer as nobody");
    }
    const VICTIM: u32 = 4321;
    let mut env = Env::new(&["vol"]);
    let vol = env.path("vol");
    for p in [env.dir.path(), &vol] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    for (dir, uid) in [("vic", VICTIM), ("nob", 65534)] {
        fs::create_dir(vol.join(dir)).unwrap();
        std::os::unix::fs::chown(vol.join(dir), Some(uid), Some(uid)).unwrap();
    }
    let shared = vol.join("vic/shared");
    fs::write(&shared, b"victim's").unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o666)).unwrap();
    std::os::unix::fs::chown(&shared, Some(VICTIM), Some(VICTIM)).unwrap();
    env.serve_watched(&["vol"], "");
    env.watch_barrier("vol");

    let me = env.linked_for_others(std::env::current_exe().unwrap().to_str().unwrap());
    let out = Command::new(me)
        .args([
            "--exact",
            "a_hard_link_swapped_in_for_a_new_resource_file_is_not_given_away",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DESKD_RACE_BASE", vol.join("nob"))
        .env("DESKD_RACE_LINK", &shared)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("done"),
        "the racer failed: {said}"
    );
    env.watch_barrier("vol");
    let m = fs::metadata(&shared).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (VICTIM, VICTIM),
        "the server gave another user's file to nobody"
    );
}
