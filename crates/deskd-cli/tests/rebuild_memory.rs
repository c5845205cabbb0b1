//! `deskd rebuild` as it keeps its memory down (docs/ARCHITECTURE.md, "Rebuild memory"): the
//! differences go out as the plan finds them and the repairs of objects are kept as object
//! numbers until they are made. These scenarios check that what comes out is what `-s` promised:
//! the same lines, every repair made once, an orphan moved rather than a
//! fresh header written in its place.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{desktop_paths, stdout, Env};

/// `dirs` folders of `per_dir` files each below `vol`, made with plain file system calls, then
/// a desktop for them from `rebuild -f` (resource files and mirrors everywhere).
fn volume_of(env: &Env, dirs: usize, per_dir: usize) {
    common::files_registered_offline(env, dirs, per_dir);
    let out = env.deskd(&["rebuild", "vol"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let scan = env.deskd(&["rebuild", "-s", "vol"]);
    assert_eq!(scan.status.code(), Some(0), "{}", stdout(&scan));
}

/// Remove every resource file below `root` (one level of folders) but the root's own and the
/// paths in `keep` (relative to `root`).
fn remove_resource_files(root: &Path, keep: &[&str]) {
    let mut folders = vec![root.to_path_buf()];
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && path.file_name().unwrap() != ".rsrc" {
            folders.push(path);
        }
    }
    for folder in folders {
        for file in std::fs::read_dir(folder.join(".rsrc")).unwrap() {
            let file = file.unwrap().path();
            let rel = file
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            let roots_own = file == deskd_volume::rsrc::root_rsrc_path(root);
            if !roots_own && !keep.contains(&rel.as_str()) {
                std::fs::remove_file(&file).unwrap();
            }
        }
    }
}

/// The ID in the resource file of `path` (`DIR/.rsrc/NAME`).
fn rsrc_id(path: &Path) -> u32 {
    let rsrc = deskd_volume::rsrc::rsrc_path(path).unwrap();
    deskd_volume::rsrc::read_header(&rsrc)
        .unwrap()
        .unwrap_or_else(|| panic!("no resource file for {}", path.display()))
        .id
}

#[test]
fn a_repair_of_thousands_of_lost_resource_files_does_what_scan_lists() {
    let env = Env::new(&["vol"]);
    volume_of(&env, 4, 1000);
    let root = env.path("vol");
    let ids = desktop_paths(&root);
    assert_eq!(ids.len(), 4005, "the root, 4 folders, 4000 files");
    remove_resource_files(&root, &[]);

    let scan = env.deskd(&["rebuild", "-s", "vol"]);
    assert_eq!(scan.status.code(), Some(1), "{}", common::stderr(&scan));
    let listed = stdout(&scan);
    let missing = listed
        .lines()
        .filter(|l| l.contains("missing-rsrc"))
        .count();
    assert_eq!(missing, 4004, "every object but the root:\n{listed}");
    let summary = common::stderr(&scan);
    assert!(summary.contains("4004 differences"), "{summary}");

    // The repair shows (-v) the very lines -s showed, then makes them all. (The walk is
    // parallel: the order of the folders may differ from one run to the next.)
    let repair = env.deskd(&["rebuild", "-v", "vol"]);
    assert!(repair.status.success(), "{}", common::stderr(&repair));
    let shown = stdout(&repair);
    let lines = |t: &str| -> Vec<String> {
        let mut lines: Vec<String> = t
            .lines()
            .filter(|l| !l.starts_with("rebuild "))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    };
    assert_eq!(lines(&shown), lines(&listed));
    assert!(shown.contains("4004 repaired"), "{shown}");

    let scan = env.deskd(&["rebuild", "-s", "vol"]);
    assert_eq!(scan.status.code(), Some(0), "{}", stdout(&scan));
    assert_eq!(desktop_paths(&root), ids, "every ID kept");
    for (path, id) in ids.iter().filter(|(p, _)| p.ends_with(".txt")) {
        assert_eq!(rsrc_id(&root.join(path)), *id, "{path}");
    }
}

#[test]
fn an_orphan_moves_to_its_object_while_thousands_of_fresh_headers_are_written() {
    let env = Env::new(&["vol"]);
    volume_of(&env, 2, 1000);
    let root = env.path("vol");
    let ids = desktop_paths(&root);
    // A plain mv leaves the resource file behind; every other resource file is lost.
    std::fs::rename(root.join("d1/file 7.txt"), root.join("d1/moved.txt")).unwrap();
    remove_resource_files(&root, &["d1/.rsrc/file 7.txt"]);
    let orphan = root.join("d1/.rsrc/file 7.txt");
    let orphan_inode = std::fs::metadata(&orphan).unwrap().ino();

    let repair = env.deskd(&["rebuild", "-v", "vol"]);
    assert!(repair.status.success(), "{}", common::stderr(&repair));
    let shown = stdout(&repair);
    assert!(
        shown.contains("left behind by a move; goes to"),
        "the orphan is moved:\n{shown}"
    );
    let fresh_for_moved = shown
        .lines()
        .filter(|l| l.contains("missing-rsrc") && l.contains("moved.txt"))
        .count();
    assert_eq!(
        fresh_for_moved, 1,
        "listed as missing, then moved in:\n{shown}"
    );

    // The very file moved (no fresh header was written over it), with the object's ID.
    let moved = root.join("d1/moved.txt");
    assert!(!orphan.exists());
    let arrived = deskd_volume::rsrc::rsrc_path(&moved).unwrap();
    assert_eq!(std::fs::metadata(&arrived).unwrap().ino(), orphan_inode);
    assert_eq!(rsrc_id(&moved), ids["d1/file 7.txt"]);
    let scan = env.deskd(&["rebuild", "-s", "vol"]);
    assert_eq!(scan.status.code(), Some(0), "{}", stdout(&scan));
    for (path, id) in desktop_paths(&root)
        .iter()
        .filter(|(p, _)| p.ends_with(".txt"))
    {
        assert_eq!(rsrc_id(&root.join(path)), *id, "{path}");
    }
}

/// `deskd rebuild ARGS` in the temp dir; whether it succeeded, and its peak resident memory in
/// bytes (the kernel's `ru_maxrss` of that one child, from `wait4`).
fn rebuild_peak(env: &Env, args: &[&str]) -> (bool, u64) {
    let mut all = vec!["rebuild"];
    all.extend_from_slice(args);
    let bytes: Vec<&[u8]> = all.iter().map(|a| a.as_bytes()).collect();
    // Reaped by wait4 below, which (unlike std's wait) gives the child's rusage.
    #[allow(clippy::zombie_processes)]
    let child = env
        .command_for(common::DESKD, &bytes)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, which std has not waited for.
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (ok, usage.ru_maxrss as u64 * 1024)
}

/// Issue 29: a rebuild in every mode in bounded memory, at most 300 bytes an object at its peak
/// at millions of objects (scripts/bench-rebuild-memory.sh measures that). Here the growth of
/// the peak between a volume of 4,000 and one of 40,000 files, so that what does not grow with
/// the volume (the binary, the threads) is left out: some 260-280 bytes an object, SQLite's
/// caches still growing with the desktop at this size (before the compact records, `-s` alone
/// took some 630).
#[test]
fn every_rebuild_mode_grows_by_at_most_400_bytes_an_object() {
    let (small, big) = (Env::new(&["vol"]), Env::new(&["vol"]));
    volume_of(&small, 4, 1000);
    volume_of(&big, 40, 1000);
    let objects = (
        desktop_paths(&small.path("vol")).len(),
        desktop_paths(&big.path("vol")).len(),
    );
    assert_eq!(objects, (4005, 40041));
    let per_object = |mode: &str, args: &[&str], before: &dyn Fn(&Env)| {
        let mut peaks = [0; 2];
        for (env, peak) in [&small, &big].into_iter().zip(&mut peaks) {
            before(env);
            let (ok, bytes) = rebuild_peak(env, args);
            assert!(ok, "rebuild {args:?} failed");
            *peak = bytes;
        }
        let grown = peaks[1].saturating_sub(peaks[0]) / (objects.1 - objects.0) as u64;
        eprintln!("{mode}: peaks {peaks:?} bytes, {grown} bytes an object more");
        assert!(
            grown <= 400,
            "{mode}: {grown} bytes an object (peaks {peaks:?} bytes)"
        );
    };
    per_object("scan", &["-s", "vol"], &|_| {});
    per_object("fresh", &["-f", "--force", "vol"], &|_| {});
    per_object("repair", &["vol"], &|env| {
        remove_resource_files(&env.path("vol"), &[])
    });
}
