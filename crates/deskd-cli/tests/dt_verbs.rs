//! dt cp, chmod, chown, chgrp, set and find, through the real binaries: copies get new IDs and
//! carry their Mac information, resource files follow modes and owners, Mac information reaches
//! the desktop and the resource file alike, and find stays below its directory.

mod common;
use common::*;
use deskd_client::{Request, Response};
use deskd_volume::rsrc;
use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn header(p: &Path) -> rsrc::ResourceHeader {
    rsrc::read_header(p).unwrap().expect("a resource file")
}

/// The ID of every object below `dir` (relative to the env), directories first.
fn tree_ids(env: &Env, dir: &str) -> Vec<(String, u32)> {
    let mut paths = vec![];
    let mut stack = vec![env.path(dir)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_name() == ".rsrc" {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            paths.push(e.path());
        }
    }
    paths.sort();
    env.ids(&paths)
        .into_iter()
        .map(|v| {
            (
                v["path"].as_str().unwrap().to_string(),
                v["id"].as_u64().unwrap() as u32,
            )
        })
        .collect()
}

#[test]
fn cp_gives_copies_new_ids_and_carries_their_mac_information() {
    let mut env = Env::new(&["vol", "other", "plain"]);
    env.serve(&["vol", "other"]);
    env.dt_ok(&[b"mkdir", b"-p", b"vol/src/sub"]);
    env.dt_ok(&[b"touch", b"vol/src/a"]);
    for i in 0..10 {
        env.dt_ok(&[b"touch", format!("vol/src/sub/b{i}").as_bytes()]);
    }
    // A name that is not UTF-8 is copied and registered like any other.
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9");
    std::fs::write(env.path("vol/src").join(latin1), b"latin-1").unwrap();
    std::fs::write(env.path("vol/src/a"), b"data of a").unwrap();
    env.dt_ok(&[
        b"set",
        b"-t",
        b"TEXT",
        b"-c",
        b"ttxt",
        b"--comment",
        b"hello",
        b"-l",
        b"red",
        b"vol/src/a",
    ]);
    // A resource fork after the 512-byte header travels too.
    let mut fork = std::fs::read(env.path("vol/src/.rsrc/a")).unwrap();
    fork.extend_from_slice(b"FORK-BYTES");
    std::fs::write(env.path("vol/src/.rsrc/a"), &fork).unwrap();
    let sources = tree_ids(&env, "vol/src");
    let latin1_id = header(&env.path("vol/src/.rsrc").join(latin1)).id;
    assert_ne!(latin1_id, 0);
    let source_ids: HashSet<u32> = sources.iter().map(|(_, id)| *id).collect();
    let a = env.id_of(&env.path("vol/src/a"));

    // One file.
    env.dt_ok(&[b"cp", b"vol/src/a", b"vol/a-copy"]);
    let copy = &env.ids(&[env.path("vol/a-copy")])[0];
    let copy_id = copy["id"].as_u64().unwrap() as u32;
    assert!(
        !source_ids.contains(&copy_id),
        "the copy took a source's ID"
    );
    assert_eq!(
        (copy["type"].as_str(), copy["creator"].as_str()),
        (Some("TEXT"), Some("ttxt"))
    );
    // The desktop's record of the copy has the label (Finder flags) and the comment too, not
    // only its resource file.
    assert_eq!(
        (copy["label"].as_str(), copy["comment"].as_str()),
        (Some("red"), Some("hello")),
        "{copy}"
    );
    assert_eq!(std::fs::read(env.path("vol/a-copy")).unwrap(), b"data of a");
    let h = header(&env.path("vol/.rsrc/a-copy"));
    assert_eq!((h.id, h.comment.as_slice()), (copy_id, &b"hello"[..]));
    assert!(std::fs::read(env.path("vol/.rsrc/a-copy"))
        .unwrap()
        .ends_with(b"FORK-BYTES"));
    assert_eq!(
        deskd_volume::read_id_xattr(&env.path("vol/a-copy")),
        Some(copy_id)
    );
    assert_eq!(
        env.id_of(&env.path("vol/src/a")),
        a,
        "the source keeps its ID"
    );

    // A tree: every copy is a new object with its own ID; the sources keep theirs.
    env.dt_ok(&[b"cp", b"-R", b"vol/src", b"vol/dst"]);
    let copies = tree_ids(&env, "vol/dst");
    assert_eq!(copies.len(), sources.len());
    let copy_ids: HashSet<u32> = copies.iter().map(|(_, id)| *id).collect();
    assert_eq!(copy_ids.len(), copies.len(), "IDs repeat among the copies");
    assert!(
        copy_ids.is_disjoint(&source_ids),
        "a copy took a source's ID"
    );
    assert_eq!(tree_ids(&env, "vol/src"), sources);
    let copied = header(&env.path("vol/dst/.rsrc").join(latin1)).id;
    assert!(copied != 0 && copied != latin1_id && copy_ids.contains(&copied));
    assert_eq!(
        std::fs::read(env.path("vol/dst").join(latin1)).unwrap(),
        b"latin-1"
    );
    for (path, id) in &copies {
        if path.contains("\\x") {
            continue; // shown with \xNN escapes: checked above by its real name
        }
        let p = PathBuf::from(path);
        let r = p
            .parent()
            .unwrap()
            .join(".rsrc")
            .join(p.file_name().unwrap());
        assert_eq!(header(&r).id, *id, "{path}");
    }
    assert_eq!(header(&env.path("vol/dst/.rsrc/a")).type_code, *b"TEXT");
    env.rebuild_scan_silent("vol");

    // Into an existing directory: the copy goes inside it. A second time: no merging.
    env.dt_ok(&[b"mkdir", b"vol/into"]);
    env.dt_ok(&[b"cp", b"-R", b"vol/src/sub", b"vol/into"]);
    assert!(env.path("vol/into/sub/b0").exists());
    let out = env.dt(&[b"cp", b"-R", b"vol/src/sub", b"vol/into"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("does not merge directories"),
        "{}",
        stderr(&out)
    );

    // Across volumes, and out of and into one.
    env.dt_ok(&[b"cp", b"-R", b"vol/src", b"other/src"]);
    assert_eq!(tree_ids(&env, "other/src").len(), sources.len());
    env.rebuild_scan_silent("other");
    env.dt_ok(&[b"cp", b"vol/src/a", b"plain/a"]);
    assert_eq!(std::fs::read(env.path("plain/a")).unwrap(), b"data of a");
    assert!(
        !env.path("plain/.rsrc").exists(),
        "no resource files outside volumes"
    );
    env.dt_ok(&[b"cp", b"plain/a", b"vol/from-plain"]);
    let v = &env.ids(&[env.path("vol/from-plain")])[0];
    assert_eq!(v["type"], "UNIX");

    // Over an existing file: new data, same object, same ID; -n leaves it alone.
    let b0 = env.id_of(&env.path("vol/dst/sub/b0"));
    env.dt_ok(&[b"cp", b"vol/src/a", b"vol/dst/sub/b0"]);
    assert_eq!(
        std::fs::read(env.path("vol/dst/sub/b0")).unwrap(),
        b"data of a"
    );
    assert_eq!(env.id_of(&env.path("vol/dst/sub/b0")), b0);
    env.dt_ok(&[b"cp", b"-n", b"vol/src/sub/b1", b"vol/dst/sub/b0"]);
    assert_eq!(
        std::fs::read(env.path("vol/dst/sub/b0")).unwrap(),
        b"data of a"
    );

    // Refusals, each leaving nothing behind.
    for (args, says) in [
        (
            vec![&b"cp"[..], b"vol/src", b"vol/x"],
            "is a directory (use -R)",
        ),
        (
            vec![&b"cp"[..], b"-R", b"vol", b"other/whole"],
            "cannot copy a volume root",
        ),
        (
            vec![&b"cp"[..], b"-R", b"vol/src", b"vol/src/sub/in"],
            "into itself",
        ),
        (
            vec![&b"cp"[..], b"vol/src/a", b"vol/src/a"],
            "are the same file",
        ),
        (vec![&b"cp"[..], b"vol/src/a", b"vol/.rsrc"], "protected"),
    ] {
        let out = env.dt(&args);
        // An invalid mode is a usage error (2), as an invalid option is.
        let code = if says == "invalid mode" { 2 } else { 1 };
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    assert!(!env.path("vol/x").exists() && !env.path("other/whole").exists());
    env.rebuild_scan_silent("vol");
}

#[test]
fn cp_keeps_modes_and_times_with_p_only_as_cp_does() {
    let env = Env::new(&["plain"]);
    let src = env.path("plain/f");
    std::fs::write(&src, b"x").unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o4757)).unwrap();
    deskd_cli::fsops::set_times(&src, Some((1000, 0, 2000, 0))).unwrap();
    for flag in [None, Some("-p")] {
        let ours = env.path(&format!("plain/dt{}", flag.unwrap_or("")));
        let theirs = env.path(&format!("plain/cp{}", flag.unwrap_or("")));
        let mut cp = std::process::Command::new("cp");
        let mut args: Vec<&[u8]> = vec![b"cp"];
        if let Some(f) = flag {
            cp.arg(f);
            args.push(f.as_bytes());
        }
        assert!(cp.arg(&src).arg(&theirs).status().unwrap().success());
        args.push(src.as_os_str().as_encoded_bytes());
        args.push(ours.as_os_str().as_encoded_bytes());
        env.dt_ok(&args);
        assert_eq!(mode_of(&ours), mode_of(&theirs), "mode with {flag:?}");
        let (o, t) = (
            std::fs::metadata(&ours).unwrap(),
            std::fs::metadata(&theirs).unwrap(),
        );
        assert_eq!(o.mtime() == 2000, t.mtime() == 2000, "mtime with {flag:?}");
    }
}

#[test]
fn chmod_chown_and_chgrp_take_the_resource_records_along() {
    let mut env = Env::new(&["vol", "plain"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"mkdir", b"-p", b"vol/d/e"]);
    env.dt_ok(&[b"touch", b"vol/d/f"]);
    std::fs::write(env.path("plain/outside"), b"").unwrap();
    std::fs::set_permissions(
        env.path("plain/outside"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    // A link inside the tree to a file outside the volume is not followed by -R.
    std::os::unix::fs::symlink(env.path("plain/outside"), env.path("vol/d/link")).unwrap();

    env.dt_ok(&[b"chmod", b"640", b"vol/d/f"]);
    assert_eq!(mode_of(&env.path("vol/d/f")), 0o640);
    assert_eq!(mode_of(&env.path("vol/d/.rsrc/f")), 0o640);
    env.dt_ok(&[b"chmod", b"-R", b"go-rwx,u+rwX", b"vol/d"]);
    for (p, want) in [
        ("vol/d", 0o700),
        ("vol/d/e", 0o700),
        ("vol/d/f", 0o600),
        // A directory's .rsrc takes its mode; resource files the read/write bits only.
        ("vol/d/.rsrc", 0o700),
        ("vol/.rsrc/d", 0o600),
        ("vol/d/.rsrc/e", 0o600),
        ("vol/d/.rsrc/f", 0o600),
        ("plain/outside", 0o644),
    ] {
        assert_eq!(mode_of(&env.path(p)), want, "{p}");
    }

    env.dt_ok(&[b"chown", b"-R", b"nobody:nogroup", b"vol/d"]);
    for p in [
        "vol/d",
        "vol/d/e",
        "vol/d/f",
        "vol/d/.rsrc",
        "vol/.rsrc/d",
        "vol/d/.rsrc/f",
    ] {
        let m = std::fs::symlink_metadata(env.path(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534), "{p}");
    }
    let link = std::fs::symlink_metadata(env.path("vol/d/link")).unwrap();
    assert_eq!(link.uid(), 65534, "the link itself changes owner");
    assert_eq!(
        std::fs::metadata(env.path("plain/outside")).unwrap().uid(),
        0,
        "not its target"
    );
    env.dt_ok(&[b"chgrp", b"0", b"vol/d/f"]);
    for p in ["vol/d/f", "vol/d/.rsrc/f"] {
        let m = std::fs::metadata(env.path(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 0), "{p}");
    }
    env.dt_ok(&[b"chown", b"root:", b"vol/d/f"]);
    assert_eq!(
        std::fs::metadata(env.path("vol/d/.rsrc/f")).unwrap().uid(),
        0
    );

    for (args, says) in [
        (
            vec![&b"chown"[..], b"no-such-user-here", b"vol/d/f"],
            "invalid user",
        ),
        (
            vec![&b"chgrp"[..], b"no-such-group-here", b"vol/d/f"],
            "invalid group",
        ),
        (vec![&b"chmod"[..], b"u+q", b"vol/d/f"], "invalid mode"),
        (
            vec![&b"chmod"[..], b"600", b"vol/d/missing"],
            "cannot access",
        ),
    ] {
        let out = env.dt(&args);
        // An invalid mode is a usage error (2), as an invalid option is.
        let code = if says == "invalid mode" { 2 } else { 1 };
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    // An entry that cannot be changed (immutable, even for root) is reported, and the rest of
    // the tree is still done, as chmod -R does.
    env.dt_ok(&[b"touch", b"vol/d/e/stuck", b"vol/d/e/zz"]);
    let immutable = std::process::Command::new("chattr")
        .arg("+i")
        .arg(env.path("vol/d/e/stuck"))
        .status()
        .unwrap()
        .success();
    if immutable {
        let out = env.dt(&[b"chmod", b"-R", b"a+r", b"vol/d"]);
        std::process::Command::new("chattr")
            .arg("-i")
            .arg(env.path("vol/d/e/stuck"))
            .status()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("stuck"), "{}", stderr(&out));
        assert_eq!(
            mode_of(&env.path("vol/d/e/zz")) & 0o444,
            0o444,
            "the rest was done"
        );
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chattr +i must work in CI (root on ext4)"
        );
    }
    // Outside volumes: the plain command, no server needed.
    env.term();
    env.dt_ok(&[b"chmod", b"600", b"plain/outside"]);
    assert_eq!(mode_of(&env.path("plain/outside")), 0o600);
    // Inside one with no server: refused before anything changes.
    let before = mode_of(&env.path("vol/d/f"));
    let out = env.dt(&[b"chmod", b"777", b"vol/d/f"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(mode_of(&env.path("vol/d/f")), before);
}

#[test]
fn set_writes_mac_information_to_the_desktop_and_the_resource_file() {
    let mut env = Env::new(&["vol", "plain"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/app"]);
    env.dt_ok(&[
        b"set",
        b"-t",
        b"APPL",
        b"-c",
        b"ttxt",
        b"--flags",
        b"0x100",
        b"--comment",
        b"a note",
        b"vol/app",
    ]);
    let v = &env.ids(&[env.path("vol/app")])[0];
    let id = v["id"].as_u64().unwrap() as u32;
    assert_eq!(
        (
            v["type"].as_str(),
            v["creator"].as_str(),
            v["flags"].as_u64()
        ),
        (Some("APPL"), Some("ttxt"), Some(0x100))
    );
    let h = header(&env.path("vol/.rsrc/app"));
    assert_eq!(
        (
            h.id,
            h.type_code,
            h.creator,
            h.finder_flags,
            h.comment.as_slice()
        ),
        (id, *b"APPL", *b"ttxt", 0x100, &b"a note"[..])
    );
    // APPL registers the application with its creator.
    assert_eq!(
        sqlite3(
            &env.path("vol/.Desktop"),
            "SELECT app_id FROM appl WHERE creator = CAST('ttxt' AS BLOB)"
        ),
        id.to_string()
    );
    let mut c = env.client();
    let vol = c.open_volume(&env.path("vol")).unwrap().vol;
    assert_eq!(
        c.call(Request::CommentGet { vol, id }).unwrap(),
        Response::Comment(Some(b"a note".to_vec()))
    );
    env.rebuild_scan_silent("vol");
    env.dt_ok(&[b"set", b"--comment", b"", b"vol/app"]);
    assert_eq!(
        c.call(Request::CommentGet { vol, id }).unwrap(),
        Response::Comment(None)
    );
    assert!(header(&env.path("vol/.rsrc/app")).comment.is_empty());

    std::fs::write(env.path("plain/x"), b"").unwrap();
    for (args, code, says) in [
        (
            vec![&b"set"[..], b"-t", b"TOOLONG", b"vol/app"],
            2,
            "exactly 4 characters",
        ),
        (
            vec![&b"set"[..], b"--flags", b"0x10000", b"vol/app"],
            2,
            "16-bit",
        ),
        (vec![&b"set"[..], b"vol/app"], 2, "required"),
        (
            vec![&b"set"[..], b"-t", b"TEXT", b"plain/x"],
            1,
            "not in a deskd volume",
        ),
        (
            vec![&b"set"[..], b"-t", b"TEXT", b"vol/missing"],
            1,
            "no such file",
        ),
    ] {
        let out = env.dt(&args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(header(&env.path("vol/.rsrc/app")).type_code, *b"APPL");
}

#[test]
fn find_keeps_to_the_directory_it_is_given() {
    let mut env = Env::new(&["vol", "plain"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"mkdir", b"-p", b"vol/a/x", b"vol/b", b"vol/ab"]);
    for f in [
        "vol/a/report1",
        "vol/a/x/Report3",
        "vol/b/report2",
        "vol/ab/report4",
    ] {
        env.dt_ok(&[b"touch", f.as_bytes()]);
    }
    let lines = |args: &[&[u8]]| -> Vec<String> {
        let mut l: Vec<String> = env.dt_ok(args).lines().map(String::from).collect();
        l.sort();
        l
    };
    let full = |rel: &str| env.path(rel).display().to_string();
    // "vol/a" is not "vol/ab".
    assert_eq!(
        lines(&[b"find", b"vol/a", b"report"]),
        vec![full("vol/a/report1"), full("vol/a/x/Report3")]
    );
    assert_eq!(lines(&[b"find", b"vol", b"report"]).len(), 4);
    assert_eq!(
        lines(&[b"find", b"--exact", b"vol", b"report2"]),
        vec![full("vol/b/report2")]
    );
    assert_eq!(
        lines(&[b"find", b"vol", b"rep*3"]),
        vec![full("vol/a/x/Report3")]
    );
    let json = env.dt_ok(&[b"find", b"--json", b"vol/b", b"report"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["id"], env.id_of(&env.path("vol/b/report2")));
    let out = env.dt(&[b"find", b"plain", b"x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("use find(1) outside volumes"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn cp_keep_ids_restores_a_file_level_backup_with_its_ids() {
    let mut env = Env::new(&["vol", "backup"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"mkdir", b"-p", b"vol/Projects/2026"]);
    env.dt_ok(&[b"touch", b"vol/Projects/2026/Report.indd"]);
    env.dt_ok(&[b"touch", b"vol/Projects/notes"]);
    env.dt_ok(&[
        b"set",
        b"-t",
        b"IDd8",
        b"-c",
        b"InDn",
        b"vol/Projects/2026/Report.indd",
    ]);
    let before = tree_ids(&env, "vol/Projects");
    let top = env.id_of(&env.path("vol/Projects"));
    // A file-level backup of the volume, as tar or rsync makes it: data and .rsrc directories.
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(env.path("vol/Projects"))
        .arg(env.path("vol/.rsrc"))
        .arg(env.path("backup"))
        .status()
        .unwrap();
    assert!(status.success());
    env.dt_ok(&[b"rm", b"-r", b"vol/Projects"]);
    assert!(env.dt(&[b"info", b"vol/Projects"]).status.code() != Some(0));

    // Restored with --keep-ids: every object has its old ID again, the top one too (its record
    // is beside it in the backup, not in the tree), with its Mac information.
    env.dt_ok(&[
        b"cp",
        b"-R",
        b"-p",
        b"--keep-ids",
        b"backup/Projects",
        b"vol/Projects",
    ]);
    assert_eq!(tree_ids(&env, "vol/Projects"), before);
    assert_eq!(env.id_of(&env.path("vol/Projects")), top);
    let report = &env.ids(&[env.path("vol/Projects/2026/Report.indd")])[0];
    assert_eq!(
        (report["type"].as_str(), report["creator"].as_str()),
        (Some("IDd8"), Some("InDn"))
    );
    let resolved = env.dt_ok(&[b"resolve", b"vol", before[0].1.to_string().as_bytes()]);
    assert_eq!(resolved.trim(), before[0].0);

    // The same backup restored a second time: those IDs are in use, so this copy gets new
    // ones, and its resource files say so.
    env.dt_ok(&[
        b"cp",
        b"-R",
        b"--keep-ids",
        b"backup/Projects",
        b"vol/Again",
    ]);
    let again = tree_ids(&env, "vol/Again");
    let first: HashSet<u32> = before.iter().map(|(_, id)| *id).collect();
    assert!(again.iter().all(|(_, id)| !first.contains(id)), "{again:?}");
    assert_eq!(
        header(&env.path("vol/Again/2026/.rsrc/Report.indd")).id,
        env.id_of(&env.path("vol/Again/2026/Report.indd"))
    );
    env.rebuild_scan_silent("vol");
}
