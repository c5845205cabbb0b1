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
    for d in 0..dirs {
        let dir = env.path(&format!("vol/d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..per_dir {
            std::fs::write(dir.join(format!("file {f}.txt")), b"x").unwrap();
        }
    }
    let out = env.deskd(&["rebuild", "-f", "vol"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
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
