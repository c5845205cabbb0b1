//! IDs end to end: allocation from 17, stability across dt mv of files and of a directory with
//! 1,000 descendants, resolve, rm, no reuse, and every kind of name.

mod common;
use common::*;
use deskd_volume::rsrc;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

#[test]
fn ids_start_at_17_and_follow_mkdir_and_touch() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"mkdir", b"vol/dir"]);
    env.dt_ok(&[b"touch", b"vol/dir/file"]);
    let ids = env.ids(&[env.path("vol/dir"), env.path("vol/dir/file")]);
    assert_eq!(ids[0]["id"], 17);
    assert_eq!(ids[0]["parent_id"], 2);
    assert_eq!(ids[0]["kind"], "dir");
    assert_eq!(ids[1]["id"], 18);
    assert_eq!(ids[1]["parent_id"], 17);
    assert_eq!(ids[1]["type"], "UNIX");
    assert_eq!(ids[1]["creator"], "UNKN");
    for key in ["path", "name"] {
        assert!(ids[1][key].is_string(), "{key} present");
    }
    // The resource files and the xattr mirror carry the IDs.
    let header = rsrc::read_header(&env.path("vol/dir/.rsrc/file"))
        .unwrap()
        .unwrap();
    assert_eq!(header.id, 18);
    assert_eq!(&header.type_code, b"UNIX");
    assert_eq!(
        rsrc::read_header(&env.path("vol/.rsrc/dir"))
            .unwrap()
            .unwrap()
            .id,
        17
    );
    assert_eq!(
        rsrc::read_header(&env.path("vol/.rsrc/.rsrc"))
            .unwrap()
            .unwrap()
            .id,
        2
    );
    if let Some(x) = deskd_volume::read_id_xattr(&env.path("vol/dir/file")) {
        assert_eq!(x, 18);
    }
    // The desktop itself, read by the sqlite3 CLI.
    let db = env.path("vol/.Desktop");
    assert_eq!(
        sqlite3(
            &db,
            "SELECT id FROM objects WHERE name = CAST('file' AS BLOB)"
        ),
        "18"
    );
    // mkdir -p registers every level.
    env.dt_ok(&[b"mkdir", b"-p", b"vol/p/q/r"]);
    let ids = env.ids(&[
        env.path("vol/p"),
        env.path("vol/p/q"),
        env.path("vol/p/q/r"),
    ]);
    assert_eq!(
        ids.iter()
            .map(|v| v["id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![19, 20, 21]
    );
}

#[test]
fn mv_keeps_ids_of_a_file_and_of_a_directory_with_1000_descendants() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"mkdir", b"-p", b"vol/src", b"vol/dest"]);
    // 1,000 descendants: 10 directories with 99 files each.
    let mut paths: Vec<PathBuf> = Vec::new();
    for d in 0..10 {
        let dir = env.path(&format!("vol/src/d{d}"));
        std::fs::create_dir(&dir).unwrap();
        paths.push(dir.clone());
        for f in 0..99 {
            let file = dir.join(format!("f{f}"));
            std::fs::write(&file, b"x").unwrap();
            paths.push(file);
        }
    }
    assert_eq!(paths.len(), 1000);
    let before = env.ids(&paths);
    env.dt_ok(&[b"touch", b"vol/single"]);
    let single = env.id_of(&env.path("vol/single"));

    env.dt_ok(&[b"mv", b"vol/single", b"vol/dest/renamed"]);
    assert_eq!(env.id_of(&env.path("vol/dest/renamed")), single);
    assert!(!env.path("vol/.rsrc/single").exists());
    assert_eq!(
        rsrc::read_header(&env.path("vol/dest/.rsrc/renamed"))
            .unwrap()
            .unwrap()
            .id,
        single
    );

    env.dt_ok(&[b"mv", b"vol/src", b"vol/dest/moved"]);
    let moved: Vec<PathBuf> = paths
        .iter()
        .map(|p| {
            env.path("vol/dest/moved")
                .join(p.strip_prefix(env.path("vol/src")).unwrap())
        })
        .collect();
    let after = env.ids(&moved);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b["id"], a["id"], "{} changed its ID", a["path"]);
    }
    // resolve answers with the new path.
    let id = after[500]["id"].as_u64().unwrap().to_string();
    let vol = env.path("vol");
    let out = env.dt_ok(&[b"resolve", vol.as_os_str().as_bytes(), id.as_bytes()]);
    assert_eq!(
        out.trim_end(),
        moved[500].canonicalize().unwrap().display().to_string()
    );
    // Moving into a directory keeps the name.
    env.dt_ok(&[b"mv", b"vol/dest/renamed", b"vol/dest/moved"]);
    assert_eq!(env.id_of(&env.path("vol/dest/moved/renamed")), single);
}

#[test]
fn rm_removes_and_ids_are_never_reused() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"mkdir", b"-p", b"vol/tree/sub"]);
    env.dt_ok(&[b"touch", b"vol/tree/sub/a", b"vol/gone"]);
    let gone = env.id_of(&env.path("vol/gone"));
    let db = env.path("vol/.Desktop");
    let max_before: u32 = sqlite3(&db, "SELECT max(id) FROM objects").parse().unwrap();
    env.dt_ok(&[b"rm", b"vol/gone"]);
    assert!(!env.path("vol/gone").exists());
    assert!(!env.path("vol/.rsrc/gone").exists());
    assert_eq!(
        sqlite3(
            &db,
            &format!("SELECT count(*) FROM objects WHERE id = {gone}")
        ),
        "0"
    );
    // A directory needs -r.
    let out = env.dt(&[b"rm", b"vol/tree"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is a directory"));
    env.dt_ok(&[b"rm", b"-r", b"vol/tree"]);
    assert_eq!(
        sqlite3(&db, "SELECT count(*) FROM objects"),
        "1",
        "only the root is left"
    );
    // Same name again: a new ID above every old one.
    env.dt_ok(&[b"touch", b"vol/gone"]);
    assert!(env.id_of(&env.path("vol/gone")) > max_before);
    // rm -f of a missing file is quiet; without -f it fails.
    env.dt_ok(&[b"rm", b"-f", b"vol/nothing"]);
    assert!(!env.dt(&[b"rm", b"vol/nothing"]).status.success());
    // rmdir removes an empty directory together with its .rsrc.
    env.dt_ok(&[b"mkdir", b"vol/empty"]);
    env.dt_ok(&[b"rmdir", b"vol/empty"]);
    assert!(!env.path("vol/empty").exists());
}

#[test]
fn names_with_spaces_nfc_nfd_and_non_utf8_bytes() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    let names: Vec<&[u8]> = vec![
        b"with space",
        "Caf\u{e9} NFC".as_bytes(),
        "Cafe\u{301} NFD".as_bytes(),
        b"latin1-\xe9t\xe9",
        b"\xff\xfe",
    ];
    let mut ids = Vec::new();
    for n in &names {
        let mut p = b"vol/".to_vec();
        p.extend_from_slice(n);
        env.dt_ok(&[b"touch", &p]);
        let path = env.path("vol").join(std::ffi::OsStr::from_bytes(n));
        assert!(path.exists());
        ids.push(env.id_of(&path));
        // Moves keep the ID for every kind of name.
        let mut to = p.clone();
        to.extend_from_slice(b" moved");
        env.dt_ok(&[b"mv", &p, &to]);
        let moved = env.path("vol").join(std::ffi::OsStr::from_bytes(&to[4..]));
        assert_eq!(env.id_of(&moved), *ids.last().unwrap());
        let out = env.dt(&[
            b"resolve",
            env.path("vol").as_os_str().as_bytes(),
            ids.last().unwrap().to_string().as_bytes(),
        ]);
        assert!(out.status.success());
        let mut expected = moved
            .canonicalize()
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        expected.push(b'\n');
        assert_eq!(
            out.stdout, expected,
            "resolve prints the raw bytes of the path"
        );
    }
    let mut sorted = ids.clone();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        names.len(),
        "NFC and NFD names are distinct objects"
    );
    // ls shows them, and -l shows their IDs.
    let ls = env.dt(&[b"ls", b"-l", b"vol"]);
    assert!(ls.status.success());
    for id in &ids {
        assert!(String::from_utf8_lossy(&ls.stdout).contains(&format!(" {id} ")));
    }
    assert!(
        ls.stdout.windows(2).any(|w| w == b"\xff\xfe"),
        "raw bytes are printed as they are"
    );
}

#[test]
fn ls_hides_protected_names_and_shows_ids() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"mkdir", b"vol/d"]);
    env.dt_ok(&[b"touch", b"vol/d/f", b"vol/.hidden"]);
    let plain = env.dt_ok(&[b"ls", b"vol"]);
    assert_eq!(plain, "d\n");
    let all = env.dt_ok(&[b"ls", b"-a", b"vol"]);
    assert_eq!(all, ".\n..\n.hidden\nd\n");
    let almost_all = env.dt_ok(&[b"ls", b"-A", b"vol"]);
    assert_eq!(almost_all, ".hidden\nd\n");
    let long = env.dt_ok(&[b"ls", b"-l", b"-R", b"vol"]);
    assert!(long.contains("vol/d:"));
    let f_line = long.lines().find(|l| l.ends_with(" f")).unwrap();
    assert!(f_line.contains(&env.id_of(&env.path("vol/d/f")).to_string()));
    assert!(f_line.contains("UNIX UNKN"));
    // A directory has no type or creator: "-", not zero bytes in hex.
    let d_line = long.lines().find(|l| l.ends_with(" d")).unwrap();
    let words: Vec<&str> = d_line.split_whitespace().collect();
    assert!(
        d_line.starts_with("drwx")
            && (words[9], words[10]) == ("-", "-")
            && !long.contains("0x00000000"),
        "{d_line}"
    );
    assert!(!long.contains(".rsrc") && !long.contains(".Desktop"));
}

#[test]
fn touch_updates_times_and_c_creates_nothing() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/f"]);
    let id = env.id_of(&env.path("vol/f"));
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(env.path("vol/f"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    env.dt_ok(&[b"touch", b"-c", b"vol/f", b"vol/missing"]);
    assert!(!env.path("vol/missing").exists(), "-c creates nothing");
    let mtime = std::fs::metadata(env.path("vol/f"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(mtime > old, "an existing file gets the current time");
    assert_eq!(env.id_of(&env.path("vol/f")), id, "and keeps its ID");
}
