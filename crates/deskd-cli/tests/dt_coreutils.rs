//! dt side by side with coreutils: two identical trees, `dt VERB ARGS` on the one in a served
//! volume and the coreutils `VERB ARGS` on the one outside it, then the same names, modes,
//! contents and link targets on disk, the same exit status and the same `-v` lines. Plus what
//! only dt does: IDs kept by mv (and a replaced object's ID retired), `dt info`'s Mac fields
//! and `dt set` by name.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A served volume `vol` with the tree in `vol/t`, and the same tree outside it in `cu/t`.
struct Twins {
    env: Env,
}

impl Twins {
    fn new() -> Twins {
        let mut env = Env::new(&["vol", "cu"]);
        env.serve(&["vol"]);
        let twins = Twins { env };
        for root in [twins.dt_root(), twins.cu_root()] {
            make_tree(&root);
        }
        twins
    }

    fn dt_root(&self) -> PathBuf {
        self.env.path("vol/t")
    }

    fn cu_root(&self) -> PathBuf {
        self.env.path("cu/t")
    }

    /// `dt ARGS` in the volume's tree, with `stdin` fed to it.
    fn dt(&self, args: &[&str], stdin: &str) -> Output {
        let mut cmd = Command::new(DT);
        cmd.env("DESKD_SOCKET", &self.env.socket).args(args);
        run_in(cmd, &self.dt_root(), stdin)
    }

    /// The coreutils command `args[0]` with the rest, in the tree outside the volume.
    fn cu(&self, args: &[&str], stdin: &str) -> Output {
        run_in(coreutils(args), &self.cu_root(), stdin)
    }

    /// Run both; the trees, the exit statuses and stdout must be the same (stdout's lines
    /// sorted with `sort_lines`, where coreutils walk a directory in no set order). Returns
    /// dt's output.
    fn same(&self, args: &[&str], stdin: &str, sort_lines: bool) -> Output {
        let ours = self.dt(args, stdin);
        let theirs = self.cu(args, stdin);
        let shown = |o: &Output| {
            let mut lines: Vec<String> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(String::from)
                .collect();
            if sort_lines {
                lines.sort();
            }
            lines
        };
        assert_eq!(
            ours.status.code(),
            theirs.status.code(),
            "exit status of {args:?}: dt said {:?}, coreutils {:?}",
            stderr(&ours),
            stderr(&theirs)
        );
        assert_eq!(shown(&ours), shown(&theirs), "stdout of {args:?}");
        assert_eq!(
            snapshot(&self.dt_root()),
            snapshot(&self.cu_root()),
            "trees after {args:?}: dt said {:?}, coreutils {:?}",
            stderr(&ours),
            stderr(&theirs)
        );
        ours
    }

    /// Run both where dt's exit status is `dt_code` (a usage error: 2) and coreutils fails in
    /// its own way; the trees must still be the same.
    fn same_tree_failing(&self, args: &[&str], dt_code: i32) -> Output {
        let ours = self.dt(args, "");
        let theirs = self.cu(args, "");
        assert_eq!(
            ours.status.code(),
            Some(dt_code),
            "{args:?}: {}",
            stderr(&ours)
        );
        assert!(!theirs.status.success(), "coreutils {args:?} succeeded");
        assert_eq!(snapshot(&self.dt_root()), snapshot(&self.cu_root()));
        ours
    }

    fn id(&self, rel: &str) -> u32 {
        self.env.id_of(&self.dt_root().join(rel))
    }
}

/// A coreutils command in the C locale (the quotes, dates and words dt uses, whatever the
/// machine's locale).
fn coreutils(args: &[&str]) -> Command {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]).env("LC_ALL", "C");
    cmd
}

fn run_in(mut cmd: Command, dir: &Path, stdin: &str) -> Output {
    let mut child = cmd
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Files a, b (with contents), an empty file, a link to a and one to d, a directory d with a
/// file and a subdirectory, an empty directory e, a hidden file.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("d/sub")).unwrap();
    std::fs::create_dir(root.join("e")).unwrap();
    std::fs::write(root.join("a"), b"contents of a\n").unwrap();
    std::fs::write(root.join("b"), b"contents of b\n").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join(".hidden"), b"h").unwrap();
    std::fs::write(root.join("d/x"), b"x").unwrap();
    std::fs::write(root.join("d/sub/y"), b"yy").unwrap();
    std::os::unix::fs::symlink("a", root.join("l")).unwrap();
    std::os::unix::fs::symlink("d", root.join("ld")).unwrap();
    std::fs::set_permissions(root.join("b"), std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Every object below `root` (deskd's `.rsrc` left out): its mode and its contents, link
/// target or `dir`.
fn snapshot(root: &Path) -> BTreeMap<String, (u32, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_name() == ".rsrc" {
                continue;
            }
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let what = if meta.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if meta.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else {
                String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned()
            };
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            out.insert(rel, (meta.mode() & 0o7777, what));
        }
    }
    out
}

fn mtime(p: &Path) -> (i64, i64) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec())
}

#[test]
fn mkdir_m_and_p_match_coreutils() {
    let t = Twins::new();
    t.same(&["mkdir", "-m", "700", "n"], "", false);
    t.same(&["mkdir", "-m", "u=rwx,g=rx,o=", "n2"], "", false);
    t.same(&["mkdir", "-m", "go-w", "n3"], "", false);
    // A classless clause leaves the umask's bits alone; a mode may start with '-'.
    t.same(&["mkdir", "-m", "-w", "n4"], "", false);
    t.same(&["mkdir", "-m", "=rx", "n5"], "", false);
    // Only the last directory gets the mode; parents get the default, one that was there is
    // left as it was.
    t.same(&["mkdir", "-p", "-m", "750", "p/q/r"], "", false);
    t.same(&["mkdir", "-p", "-m", "700", "p/q"], "", false);
    // Errors: the name is there, the parent is not; missing operand and a bad mode are usage
    // errors (2; coreutils says 1).
    t.same(&["mkdir", "a"], "", false);
    t.same(&["mkdir", "-m", "700", "nope/x"], "", false);
    t.same_tree_failing(&["mkdir"], 2);
    let bad = t.same_tree_failing(&["mkdir", "-m", "999", "z"], 2);
    assert!(stderr(&bad).contains("invalid mode"), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("Usage: dt mkdir"), "{}", stderr(&bad));
    // In the volume the new directory is registered and its resource file follows its mode.
    assert!(t.id("n") >= 17);
    let record = t.dt_root().join(".rsrc/n");
    assert_eq!(mode_of(&record) & 0o777, 0o600, "the record keeps rw only");
}

#[test]
fn mv_replaces_like_mv_and_n_i_v_match_coreutils() {
    let t = Twins::new();
    // -n refuses, quietly and successfully, as mv(1) does.
    t.same(&["mv", "-n", "a", "b"], "", false);
    // -i: "n" keeps the target, "y" replaces it; the question goes to stderr.
    let asked = t.same(&["mv", "-i", "a", "b"], "n\n", false);
    assert!(
        stderr(&asked).contains("dt: overwrite 'b'? "),
        "{}",
        stderr(&asked)
    );
    t.same(&["mv", "-i", "a", "b"], "Y\n", false);
    // The default replaces, -v says so as mv -v does.
    t.same(&["mv", "-v", "b", "empty"], "", false);
    t.same(&["mv", "-f", "-v", "empty", "a"], "", false);
    // Into a directory; a directory into one where its name is an empty directory (replaced).
    t.same(&["mv", "-v", "a", "d"], "", false);
    for root in [t.dt_root(), t.cu_root()] {
        std::fs::create_dir(root.join("e/d")).unwrap();
    }
    t.same(&["mv", "-v", "d", "e"], "", false);
    // Errors: nonexistent source, a directory onto a non-empty one, a file onto a directory,
    // a directory onto a file, several sources onto a file.
    t.same(&["mv", "nope", "x"], "", false);
    std::fs::create_dir(t.dt_root().join("f")).unwrap();
    std::fs::create_dir(t.cu_root().join("f")).unwrap();
    // A directory onto a non-empty one.
    for root in [t.dt_root(), t.cu_root()] {
        std::fs::create_dir(root.join("f/d")).unwrap();
    }
    t.same(&["mv", "f/d", "e"], "", false);
    t.same(&["mv", "-v", "e/d/x", "e/d/sub"], "", false);
    t.same(&["mv", "e/d/sub/x", "e/d/sub/y"], "", false);
    t.same(&["mv", "e/d/sub", "e/d/sub/y"], "", false);
    t.same(&["mv", "l", ".hidden", "e/d/sub/y"], "", false);
    // A name onto itself, or onto a hard link of it: "the same file", nothing moves.
    for root in [t.dt_root(), t.cu_root()] {
        std::fs::hard_link(root.join("l"), root.join("hard")).unwrap();
    }
    t.same(&["mv", "hard", "l"], "", false);
    t.same(&["mv", "l", "l"], "", false);
    t.same(&["mv", "e", "."], "", false);
    // A missing operand is a usage error.
    let missing = t.same_tree_failing(&["mv", "l"], 2);
    assert!(
        stderr(&missing).contains("Usage: dt mv <SOURCE>... <DEST>"),
        "{}",
        stderr(&missing)
    );
    let help = t.dt(&["mv", "--help"], "");
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("Usage: dt mv [OPTIONS] <SOURCE>... <DEST>")
    );
}

#[test]
fn mv_keeps_the_moved_id_and_retires_the_replaced_one() {
    let t = Twins::new();
    let a = t.id("a");
    let b = t.id("b");
    let d = t.id("d");
    let x = t.id("d/x");
    // -n and a declined -i change nothing, IDs included.
    t.dt(&["mv", "-n", "a", "b"], "");
    t.dt(&["mv", "-i", "a", "b"], "no\n");
    assert_eq!((t.id("a"), t.id("b")), (a, b));
    // Replacing: the moved object keeps its ID, the replaced one's is gone for good.
    let out = t.dt(&["mv", "a", "b"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(t.id("b"), a);
    let vol = t.env.path("vol");
    let gone = t.env.dt(&[
        b"resolve",
        vol.to_str().unwrap().as_bytes(),
        b.to_string().as_bytes(),
    ]);
    assert_eq!(
        gone.status.code(),
        Some(1),
        "the replaced ID still resolves"
    );
    // The replaced object's resource file went with it: the one there is the moved one's.
    let record = deskd_volume::rsrc::read_header(&t.dt_root().join(".rsrc/b"))
        .unwrap()
        .expect("a resource file");
    assert_eq!(record.id, a);
    // A directory moved onto an empty one (e/d) keeps its ID and its contents theirs; the
    // empty one's ID is retired.
    std::fs::create_dir(t.dt_root().join("e/d")).unwrap();
    let empty = t.id("e/d");
    let out = t.dt(&["mv", "d", "e"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!((t.id("e/d"), t.id("e/d/x")), (d, x));
    let gone = t.env.dt(&[
        b"resolve",
        vol.to_str().unwrap().as_bytes(),
        empty.to_string().as_bytes(),
    ]);
    assert_eq!(
        gone.status.code(),
        Some(1),
        "the replaced ID still resolves"
    );
}

#[test]
fn rm_i_v_match_coreutils() {
    let t = Twins::new();
    t.same(&["rm", "-v", "a"], "", false);
    let asked = t.same(&["rm", "-i", "b"], "n\n", false);
    assert!(
        stderr(&asked).contains("dt: remove regular file 'b'? "),
        "{}",
        stderr(&asked)
    );
    t.same(&["rm", "-i", "b"], "y\n", false);
    t.same(&["rm", "-i", "empty", "l"], "y\ny\n", false);
    // -f after -i does not ask; -i after -f does.
    t.same(&["rm", "-i", "-f", ".hidden"], "", false);
    // Errors: a directory without -r, a nonexistent operand (-f: fine).
    t.same(&["rm", "d"], "", false);
    t.same(&["rm", "nope"], "", false);
    t.same(&["rm", "-f", "nope"], "", false);
    // rm -ri: "n" to descending leaves the tree; a declined entry leaves its directory, which
    // then cannot go (exit 1); yes to everything removes it all. (Coreutils walk a directory
    // in no set order: the trees asked about with mixed answers have one entry a level.)
    t.same(&["rm", "-ri", "d"], "n\n", false);
    for root in [t.dt_root(), t.cu_root()] {
        std::fs::create_dir_all(root.join("one/two")).unwrap();
        std::fs::write(root.join("one/two/f"), b"f").unwrap();
        std::fs::create_dir(root.join("hollow")).unwrap();
    }
    let asked = t.same(&["rm", "-ri", "one"], "y\ny\nn\ny\ny\n", false);
    assert_eq!(
        stderr(&asked).matches("? ").count(),
        5,
        "descend one, descend two, f, two, one: {}",
        stderr(&asked)
    );
    t.same(
        &["rm", "-rvi", "one", "hollow"],
        "y\ny\ny\ny\ny\ny\n",
        false,
    );
    t.same(&["rm", "-rvi", "d"], &"y\n".repeat(7), true);
    // rm -rv lists every object, each directory after what it held (order within a
    // directory is coreutils' walk: compared sorted).
    for root in [t.dt_root(), t.cu_root()] {
        make_tree(&root.join("again"));
    }
    t.same(&["rm", "-rv", "again"], "", true);
    t.same_tree_failing(&["rm"], 2);
}

#[test]
fn cp_a_matches_coreutils_and_keeps_times() {
    let t = Twins::new();
    // Old times, odd modes: -a must keep them.
    for root in [t.dt_root(), t.cu_root()] {
        std::fs::set_permissions(root.join("d/x"), std::fs::Permissions::from_mode(0o751)).unwrap();
        let old = std::fs::File::options()
            .write(true)
            .open(root.join("d/x"))
            .unwrap();
        old.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
            .unwrap();
    }
    t.same(&["cp", "-a", "d", "d2"], "", false);
    t.same(&["cp", "-a", "a", "l", "e"], "", false);
    assert_eq!(
        mtime(&t.dt_root().join("d2/x")),
        mtime(&t.cu_root().join("d2/x"))
    );
    assert_eq!(mtime(&t.dt_root().join("d2/x")).0, 1_000_000);
    // The copies are new objects with IDs of their own.
    assert_ne!(t.id("d2/x"), t.id("d/x"));
    t.same(&["cp", "-a", "nope", "x"], "", false);
    // -v says what was copied, each object of a tree (compared sorted: coreutils walk a
    // directory in no set order); -n and -i leave an existing file, -i when told "n".
    t.same(&["cp", "-Rv", "d", "d3"], "", true);
    t.same(&["cp", "-v", "a", "b", "e"], "", false);
    t.same(&["cp", "-n", "b", "a"], "", false);
    let asked = t.same(&["cp", "-i", "b", "a"], "n\n", false);
    assert!(
        stderr(&asked).contains("dt: overwrite 'a'? "),
        "{}",
        stderr(&asked)
    );
    let a = t.id("a");
    t.same(&["cp", "-iv", "b", "a"], "y\n", false);
    // Overwritten in place: the same object, its ID kept.
    assert_eq!(t.id("a"), a);
}

/// The words of each line of an `ls -l` listing; with `deskd_columns` (dt's) without the ID,
/// type and creator columns (the 9th to 11th) of the entry lines.
fn ls_words(text: &str, deskd_columns: bool) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| {
            let mut w: Vec<String> = l.split_whitespace().map(String::from).collect();
            if deskd_columns && w.len() > 11 && !l.starts_with("total") {
                w.drain(8..11);
            }
            w
        })
        .collect()
}

#[test]
fn ls_matches_ls() {
    let t = Twins::new();
    // Without -l the two trees list alike (dt hides deskd's .rsrc, which only the volume has).
    for args in [
        &["ls"][..],
        &["ls", "-1"],
        &["ls", "-a"],
        &["ls", "-A"],
        &["ls", "-R"],
        &["ls", "-d", "d", "a"],
        &["ls", "-1", "a", "d", "e"],
        &["ls", "-aR", "d"],
        &["ls", "ld", "l"],
        &["ls", "-d", "ld"],
    ] {
        t.same(args, "", false);
    }
    // -t and -S (ties by name), -r: the same times and sizes in both trees.
    for root in [t.dt_root(), t.cu_root()] {
        for (i, name) in ["a", "b", "empty", "d", "e", "l", ".hidden"]
            .iter()
            .enumerate()
        {
            let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
            // Two share a time, to show the ties.
            let when = when + std::time::Duration::from_secs((i as u64).min(5) * 1000);
            let f = std::fs::File::open(root.join(name)).unwrap();
            f.set_modified(when).unwrap();
        }
        // The links' own times (ls -t sorts a link by its own, and the loop above set their
        // targets'): else a link's time is when it was made, and two made within one clock
        // tick tie in one tree and not in the other (CI saw `l`, `ld` against `ld`, `l`).
        for (name, secs) in [("l", 7_000), ("ld", 8_000)] {
            let when = rustix::fs::Timespec {
                tv_sec: 1_700_000_000 + secs,
                tv_nsec: 0,
            };
            rustix::fs::utimensat(
                rustix::fs::CWD,
                root.join(name),
                &rustix::fs::Timestamps {
                    last_access: when,
                    last_modification: when,
                },
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .unwrap();
        }
        // `-a` lists `.` and `..` too: the tree and the folder above it (the volume, or the
        // coreutils side's folder) get the same times on both sides, else their order depends
        // on what was last made in them.
        let base = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        for (dir, secs) in [
            (root.clone(), 10_000),
            (root.parent().unwrap().into(), 20_000),
        ] {
            let dir: PathBuf = dir;
            std::fs::File::open(&dir)
                .unwrap()
                .set_modified(base + std::time::Duration::from_secs(secs))
                .unwrap();
        }
    }
    for args in [
        &["ls", "-t"][..],
        &["ls", "-tr"],
        &["ls", "-S"],
        &["ls", "-Sr"],
        &["ls", "-r"],
        &["ls", "-atr"],
        &["ls", "-St"],
        &["ls", "-tS", "d", "a", "b"],
    ] {
        t.same(args, "", false);
    }
    // An operand that is not there is ls's "serious trouble": 2, the others still listed.
    t.same(&["ls", "nope", "a"], "", false);
    // -l on the same tree: ls -l's columns, then ID, type and creator.
    t.dt(&["set", "-t", "TEXT", "-c", "ttxt", "a"], "");
    let root = t.dt_root();
    for args in [
        &["-l"][..],
        &["-lh"],
        &["-l", "l", "a", "d", "ld"],
        &["-ld", "d", "e"],
        &["-lR", "d"],
        &["-lt"],
        &["-lSr"],
    ] {
        let ours = t.dt(&[&["ls"][..], args].concat(), "");
        let theirs = run_in(coreutils(&[&["ls"][..], args].concat()), &root, "");
        assert!(ours.status.success(), "{}", stderr(&ours));
        let ours_text = String::from_utf8_lossy(&ours.stdout).into_owned();
        let theirs_text = String::from_utf8_lossy(&theirs.stdout).into_owned();
        assert_eq!(
            ls_words(&ours_text, true),
            ls_words(&theirs_text, false),
            "ls {args:?}:\n{ours_text}\nagainst\n{theirs_text}"
        );
    }
    // The deskd columns: a's ID, type and creator; a folder's type and creator as "-".
    let long = t.dt(&["ls", "-l", "a", "d"], "");
    let text = String::from_utf8_lossy(&long.stdout).into_owned();
    let a_line = text.lines().find(|l| l.ends_with(" a")).unwrap();
    let words: Vec<&str> = a_line.split_whitespace().collect();
    assert_eq!(words[8], t.id("a").to_string());
    assert_eq!((words[9], words[10]), ("TEXT", "ttxt"));
    let link = t.dt(&["ls", "-l", "l"], "");
    assert!(String::from_utf8_lossy(&link.stdout).ends_with(" l -> a\n"));
}

#[test]
fn ls_h_is_human_sizes_and_help_stays_on_help() {
    let t = Twins::new();
    for root in [t.dt_root(), t.cu_root()] {
        std::fs::write(root.join("big"), vec![7u8; 5000]).unwrap();
    }
    let out = t.dt(&["ls", "-lh", "big"], "");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains("Usage"), "{text}");
    assert_eq!(text.split_whitespace().nth(4), Some("4.9K"), "{text}");
    for verb in ["ls", "chown", "chgrp", "touch"] {
        let help = t.dt(&[verb, "--help"], "");
        assert!(help.status.success());
        assert!(
            String::from_utf8_lossy(&help.stdout).contains(&format!("Usage: dt {verb}")),
            "dt {verb} --help"
        );
    }
    // touch -h is what dt touch always does: the link's own times.
    t.same(&["touch", "-h", "l"], "", false);
    // chown -h changes a link given as an operand, not what it names, as chown -h does.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("chown to another user needs root");
        return;
    }
    t.same(&["chown", "-h", "65534", "l"], "", false);
    for root in [t.dt_root(), t.cu_root()] {
        assert_eq!(
            std::fs::symlink_metadata(root.join("l")).unwrap().uid(),
            65534
        );
        assert_eq!(std::fs::metadata(root.join("a")).unwrap().uid(), 0);
    }
    t.same(&["chgrp", "-h", "65534", "l"], "", false);
}

#[test]
fn chmod_v_c_match_coreutils_and_a_bad_mode_is_a_usage_error() {
    let t = Twins::new();
    t.same(&["chmod", "-v", "755", "a"], "", false);
    t.same(&["chmod", "-v", "755", "a"], "", false);
    t.same(&["chmod", "-c", "755", "a"], "", false);
    t.same(&["chmod", "-c", "u=rw,go=", "a", "b"], "", false);
    t.same(&["chmod", "-Rv", "go-w,u+s", "d"], "", true);
    t.same(&["chmod", "-Rc", "g+w", "d"], "", true);
    t.same(&["chmod", "-v", "644", "nope"], "", false);
    // A mode that starts with '-' is a mode, as chmod takes it.
    t.same(&["chmod", "-w", "a"], "", false);
    t.same(&["chmod", "-Rv", "-w", "d"], "", true);
    let bad = t.same_tree_failing(&["chmod", "999", "a"], 2);
    assert!(stderr(&bad).contains("invalid mode"), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("Usage: dt chmod"), "{}", stderr(&bad));
    t.same_tree_failing(&["chmod", "755"], 2);
}

#[test]
fn info_shows_every_mac_field_and_set_takes_names() {
    let t = Twins::new();
    let info = |rel: &str| {
        let out = t.dt(&["info", rel], "");
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let field = |text: &str, key: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
            .trim()
            .to_string()
    };
    // A folder: no type or creator to show.
    let d = info("d");
    assert_eq!(field(&d, "type"), "-");
    assert_eq!(field(&d, "creator"), "-");
    assert_eq!(field(&d, "flags"), "- (0x0000)");
    assert_eq!(field(&d, "label"), "none");
    assert_eq!(field(&d, "comment"), "");
    assert!(!field(&d, "modified").is_empty());
    // Flags by ad set letters and by name, a label by name; the comment reads back.
    let set = t.dt(
        &[
            "set",
            "-t",
            "TEXT",
            "-c",
            "ttxt",
            "-f",
            "VD",
            "-l",
            "red",
            "--comment",
            "hi there",
            "a",
        ],
        "",
    );
    assert!(set.status.success(), "{}", stderr(&set));
    let a = info("a");
    assert_eq!(field(&a, "type"), "TEXT");
    assert_eq!(field(&a, "creator"), "ttxt");
    assert_eq!(field(&a, "flags"), "on-desk invisible (0x400d)");
    assert_eq!(field(&a, "label"), "red");
    assert_eq!(field(&a, "comment"), "hi there");
    // Lowercase clears, names with + and - set and clear; the label stays.
    t.dt(&["set", "--flags", "d,+alias", "a"], "");
    assert_eq!(field(&info("a"), "flags"), "invisible alias (0xc00c)");
    t.dt(
        &["set", "--flags", "-invisible", "--label", "green", "a"],
        "",
    );
    let a = info("a");
    assert_eq!(field(&a, "flags"), "alias (0x8004)");
    assert_eq!(field(&a, "label"), "green");
    // A number replaces them all (label included), as before.
    t.dt(&["set", "--flags", "0x4000", "a"], "");
    assert_eq!(field(&info("a"), "label"), "none");
    t.dt(&["set", "-l", "7", "a"], "");
    assert_eq!(field(&info("a"), "label"), "orange");
    // The resource file says the same as the desktop.
    let record = deskd_volume::rsrc::read_header(&t.dt_root().join(".rsrc/a"))
        .unwrap()
        .unwrap();
    assert_eq!(record.finder_flags, 0x400e);
    assert_eq!(record.comment, b"hi there");
    // JSON carries them too.
    let json = t.dt(&["info", "--json", "a"], "");
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["flags"], 0x400e);
    assert_eq!(v["flag_names"], serde_json::json!(["invisible"]));
    assert_eq!(v["label"], "orange");
    assert_eq!(v["comment"], "hi there");
    assert!(v["modified"].as_i64().unwrap() > 0);
    // An unknown name or letter is a usage error; nothing changes.
    for bad in [["-l", "pink"], ["-f", "Q"], ["-f", "+nothing"]] {
        let out = t.dt(&["set", bad[0], bad[1], "a"], "");
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("Usage: dt set"), "{}", stderr(&out));
    }
    assert_eq!(field(&info("a"), "flags"), "invisible (0x400e)");
    // The comment removed reads back empty.
    t.dt(&["set", "--comment", "", "a"], "");
    assert_eq!(field(&info("a"), "comment"), "");
}

#[test]
fn mv_into_another_volume_replaces_the_target_and_retires_its_id() {
    let mut env = Env::new(&["one", "two"]);
    env.serve(&["one", "two"]);
    std::fs::write(env.path("one/a"), b"from one").unwrap();
    std::fs::write(env.path("two/b"), b"old b").unwrap();
    std::fs::write(env.path("two/c"), b"old c").unwrap();
    let a = env.id_of(&env.path("one/a"));
    let b = env.id_of(&env.path("two/b"));
    env.id_of(&env.path("two/c"));
    // -n leaves it; the default replaces it: the arrival has a new ID of two's, b's is gone.
    env.dt_ok(&[b"mv", b"-n", b"one/a", b"two/b"]);
    assert_eq!(std::fs::read(env.path("two/b")).unwrap(), b"old b");
    let said = env.dt_ok(&[b"mv", b"-v", b"one/a", b"two/b"]);
    assert_eq!(said, "renamed 'one/a' -> 'two/b'\n");
    assert_eq!(std::fs::read(env.path("two/b")).unwrap(), b"from one");
    assert!(!env.path("one/a").exists());
    let arrived = env.id_of(&env.path("two/b"));
    assert_ne!(arrived, b);
    assert_ne!(arrived, a);
    let two = env.path("two");
    let gone = env.dt(&[
        b"resolve",
        two.to_str().unwrap().as_bytes(),
        b.to_string().as_bytes(),
    ]);
    assert_eq!(
        gone.status.code(),
        Some(1),
        "the replaced ID still resolves"
    );
    // A directory never replaces a file, nor a file a directory: nothing moves.
    std::fs::create_dir(env.path("one/d")).unwrap();
    let out = env.dt(&[b"mv", b"one/d", b"two/c"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot overwrite non-directory 'two/c'"),
        "{}",
        stderr(&out)
    );
    assert!(env.path("one/d").is_dir());
    assert_eq!(std::fs::read(env.path("two/c")).unwrap(), b"old c");
}
