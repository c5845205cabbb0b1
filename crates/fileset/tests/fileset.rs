//! fileset end to end, driving the real binary.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};

const FILESET: &str = env!("CARGO_BIN_EXE_fileset");

fn run(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(FILESET);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok(args: &[&str]) -> Output {
    let out = run(args, &[]);
    assert!(
        out.status.success(),
        "fileset {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Contents and mtimes (seconds) of the regular files of a directory, by name.
type Snapshot = BTreeMap<String, (Vec<u8>, i64)>;

/// The snapshot of the regular files directly in `dir`, except fileset's own.
fn snapshot(dir: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("_FILESET_")
            || name.contains(".fileset-tmp")
            || !e.file_type().unwrap().is_file()
        {
            continue;
        }
        out.insert(
            name,
            (
                std::fs::read(e.path()).unwrap(),
                e.metadata().unwrap().mtime(),
            ),
        );
    }
    out
}

fn write_set(dir: &Path, files: &[(&str, &[u8])], mtime: i64) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, data) in files {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime as u64);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
}

struct Dirs {
    _d: tempfile::TempDir,
    perm: PathBuf,
    tmp: PathBuf,
    root: PathBuf,
}

fn dirs() -> Dirs {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().to_path_buf();
    let perm = root.join("perm");
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&perm).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    Dirs {
        _d: d,
        perm,
        tmp,
        root,
    }
}

#[test]
fn save_then_load_reproduces_the_set_with_mtimes() {
    for format in ["1", "2"] {
        let d = dirs();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        write_set(
            &d.tmp,
            &[
                ("a.dat", b"alpha"),
                ("b.dat", &big),
                ("empty.dat", b""),
                ("skip.txt", b"x"),
            ],
            1_600_000_000,
        );
        ok(&[
            "--format",
            format,
            "-p",
            "*.dat",
            "save",
            s(&d.perm),
            s(&d.tmp),
        ]);
        ok(&["test", s(&d.perm)]);
        let loaded = d.root.join("loaded");
        ok(&["-m", "load", s(&d.perm), s(&loaded)]);
        let mut expected = snapshot(&d.tmp);
        expected.remove("skip.txt");
        assert_eq!(snapshot(&loaded), expected, "format {format}");
        assert_eq!(snapshot(&d.perm), expected);
    }
}

/// More files than one fsync batch, and files longer than one pipe load, saved twice (the
/// second save replaces the first set): every byte and mtime arrives.
#[test]
fn save_of_many_files_in_several_fsync_batches_round_trips() {
    let d = dirs();
    let names: Vec<String> = (0..150).map(|i| format!("f{i:03}.dat")).collect();
    for round in 0..2u32 {
        let contents: Vec<Vec<u8>> = (0..150u32)
            .map(|i| {
                // Mostly small files; every 50th is 9 MB and a bit, past a 4 MiB pipe twice.
                let len = if i % 50 == 7 {
                    9_437_184 + 123
                } else {
                    1 + i as usize * 97
                };
                (0..len as u32)
                    .map(|b| ((b ^ i ^ round) % 251) as u8)
                    .collect()
            })
            .collect();
        let files: Vec<(&str, &[u8])> = names
            .iter()
            .zip(&contents)
            .map(|(n, c)| (n.as_str(), c.as_slice()))
            .collect();
        write_set(&d.tmp, &files, 1_600_000_000 + round as i64);
        ok(&["save", s(&d.perm), s(&d.tmp)]);
        ok(&["test", s(&d.perm)]);
        let loaded = d.root.join(format!("loaded{round}"));
        ok(&["-m", "load", s(&d.perm), s(&loaded)]);
        assert_eq!(snapshot(&loaded), snapshot(&d.tmp), "round {round}");
        assert_eq!(snapshot(&d.perm), snapshot(&d.tmp), "round {round}");
    }
}

/// The real use: the working set on tmpfs, the permanent set on disk. Save writes the tmpfs
/// pages with O_DIRECT, load reads the disk with O_DIRECT on a reader thread (verbose output
/// names the way), and the set arrives whole both ways, in both formats.
#[test]
fn tmpfs_to_disk_and_back_uses_the_direct_paths() {
    let shm = Path::new("/dev/shm");
    let tmpfs = tempfile::tempdir_in(shm).expect("tmpfs at /dev/shm for this test");
    let d = dirs();
    let work = tmpfs.path().join("work");
    let big: Vec<u8> = (0..5_000_123u32).map(|i| (i % 247) as u8).collect();
    write_set(
        &work,
        &[("big.dat", &big), ("small.dat", b"tiny")],
        1_600_000_000,
    );
    let out = ok(&["-vvv", "save", s(&d.perm), s(&work)]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("by DirectSplice"), "{said}");
    // Each write is a whole number of pages, no more than the largest pipe fileset asks for
    // (16 MiB, granted to root with CAP_SYS_RESOURCE).
    let chunk: u64 = said
        .lines()
        .find_map(|l| l.strip_prefix("O_DIRECT writes of up to "))
        .and_then(|l| l.strip_suffix(" bytes"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no write size in {said}"));
    assert!(
        chunk >= 4096 && chunk.trailing_zeros() >= 12 && chunk <= 16 << 20,
        "{chunk}"
    );
    let back = tmpfs.path().join("back");
    let out = ok(&["-m", "-vvv", "load", s(&d.perm), s(&back)]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("by DirectRead"), "{said}");
    assert!(!said.contains("by Sendfile"), "{said}");
    assert_eq!(snapshot(&back), snapshot(&work));
    assert_eq!(snapshot(&d.perm), snapshot(&work));

    // Format 2: the digest is taken on the way in, and a wrong one is still caught.
    let perm2 = d.root.join("perm2");
    ok(&["-m", "--format", "2", "save", s(&perm2), s(&work)]);
    let back2 = tmpfs.path().join("back2");
    let out = ok(&["-m", "-vvv", "load", s(&perm2), s(&back2)]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("by DirectRead"));
    assert_eq!(snapshot(&back2), snapshot(&work));
    flip_a_byte_keeping_size_and_mtime(&perm2.join("big.dat"), 4_000_000);
    assert_load_fails_on_the_digest(&perm2, &tmpfs.path().join("back3"), "big.dat");
}

/// Changes one byte of `path` and puts its mtime back: only a SHA-256 can tell.
fn flip_a_byte_keeping_size_and_mtime(path: &Path, at: usize) {
    let mut changed = std::fs::read(path).unwrap();
    changed[at] ^= 1;
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    std::fs::write(path, &changed).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

fn assert_load_fails_on_the_digest(perm: &Path, tmpdir: &Path, name: &str) {
    let out = run(&["-m", "load", s(perm), s(tmpdir)], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(err.contains("SHA-256"), "{err}");
    assert!(
        !tmpdir.join(name).exists(),
        "a file failing its digest was left in tmpdir"
    );
}

/// `-vvv` output of a load that took copy_file_range or sendfile for every file, never the
/// reader thread.
fn assert_copied_in_the_kernel(out: &Output) {
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("by Sendfile") || said.contains("by CopyFileRange"),
        "{said}"
    );
    assert!(!said.contains("by DirectRead"), "{said}");
}

/// A permanent set that is itself in memory is copied in the kernel (copy_file_range or
/// sendfile), without the reader thread (O_DIRECT on tmpfs would be one more copy). With
/// `-6`, a load from disk is a kernel copy too, in transfers that keep within 64 KiB
/// boundaries, not the reader thread's 4 MiB reads.
#[test]
fn load_from_memory_and_with_dash_6_copies_in_the_kernel() {
    let shm = Path::new("/dev/shm");
    let tmpfs = tempfile::tempdir_in(shm).expect("tmpfs at /dev/shm for this test");
    let perm = tmpfs.path().join("perm");
    let work = tmpfs.path().join("work");
    let data: Vec<u8> = (0..300_001u32).map(|i| (i % 253) as u8).collect();
    write_set(&work, &[("a.dat", &data), ("b.dat", b"b")], 1_600_000_000);
    ok(&["-m", "save", s(&perm), s(&work)]);
    let back = tmpfs.path().join("back");
    let out = ok(&["-m", "-vvv", "load", s(&perm), s(&back)]);
    assert_copied_in_the_kernel(&out);
    assert_eq!(snapshot(&back), snapshot(&work));
    // Format 2 this way: the digest is taken from the loaded copy, and a wrong one is caught.
    let perm2 = tmpfs.path().join("perm2");
    ok(&["-m", "--format", "2", "save", s(&perm2), s(&work)]);
    let back2 = tmpfs.path().join("back2");
    assert_copied_in_the_kernel(&ok(&["-m", "-vvv", "load", s(&perm2), s(&back2)]));
    assert_eq!(snapshot(&back2), snapshot(&work));
    flip_a_byte_keeping_size_and_mtime(&perm2.join("a.dat"), 1234);
    assert_load_fails_on_the_digest(&perm2, &tmpfs.path().join("back3"), "a.dat");

    let d = dirs();
    ok(&["save", s(&d.perm), s(&work)]);
    let back6 = tmpfs.path().join("back6");
    let out = ok(&["-6", "-m", "-vvv", "load", s(&d.perm), s(&back6)]);
    assert_copied_in_the_kernel(&out);
    assert_eq!(snapshot(&back6), snapshot(&work));
}

#[test]
fn format_2_keeps_nanoseconds_paths_and_long_names() {
    let d = dirs();
    let long = "n".repeat(200);
    std::fs::create_dir_all(d.tmp.join("sub/deeper")).unwrap();
    std::fs::write(d.tmp.join("sub/deeper/x.dat"), b"nested").unwrap();
    std::fs::write(d.tmp.join(&long), b"long").unwrap();
    let nsec = std::fs::metadata(d.tmp.join("sub/deeper/x.dat"))
        .unwrap()
        .mtime_nsec();
    ok(&["--format", "2", "save", s(&d.perm), s(&d.tmp)]);
    let loaded = d.root.join("loaded");
    ok(&["-m", "load", s(&d.perm), s(&loaded)]);
    assert_eq!(
        std::fs::read(loaded.join("sub/deeper/x.dat")).unwrap(),
        b"nested"
    );
    assert_eq!(
        std::fs::metadata(loaded.join("sub/deeper/x.dat"))
            .unwrap()
            .mtime_nsec(),
        nsec
    );
    assert_eq!(std::fs::read(loaded.join(&long)).unwrap(), b"long");
    // Same size and mtime but other contents: only format 2 notices (SHA-256).
    flip_a_byte_keeping_size_and_mtime(&d.perm.join("sub/deeper/x.dat"), 0);
    let out = run(&["test", s(&d.perm)], &[]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("SHA-256"));
}

#[test]
fn format_1_refuses_what_it_cannot_hold() {
    let d = dirs();
    std::fs::write(d.tmp.join("n".repeat(120)), b"x").unwrap();
    let out = run(&["save", s(&d.perm), s(&d.tmp)], &[]);
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("longer than 119 bytes"));
    let d = dirs();
    std::fs::create_dir(d.tmp.join("subdir")).unwrap();
    let out = run(&["save", s(&d.perm), s(&d.tmp)], &[]);
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("subdirectory"));
    assert!(!d.perm.join("_FILESET_").exists(), "nothing written");
}

/// Runs `args`, expecting exit `code` and a message on stderr that contains `words`.
fn fails_with(args: &[&str], code: i32, words: &str) {
    let out = run(args, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "fileset {args:?}: {stderr}");
    assert!(
        stderr.contains(words),
        "fileset {args:?}: {stderr:?} lacks {words:?}"
    );
}

#[test]
fn a_new_set_refuses_names_and_kinds_it_cannot_keep() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    // A name that is not UTF-8 cannot go into a check file under its own name: refused, not
    // left out silently nor saved under a lossy one; left out with -p, the rest saves.
    for format in ["1", "2"] {
        let d = dirs();
        write_set(&d.tmp, &[("ok.dat", b"fine")], 1_600_000_000);
        std::fs::write(d.tmp.join(OsStr::from_bytes(b"bad\xff.dat")), b"x").unwrap();
        let args = ["--format", format, "save", s(&d.perm), s(&d.tmp)];
        fails_with(&args, 6, "not UTF-8");
        assert!(!d.perm.join("_FILESET_").exists(), "nothing committed");
        assert_eq!(snapshot(&d.perm), Snapshot::new(), "nothing written");
        let args = [
            "--format",
            format,
            "-p",
            "ok*",
            "save",
            s(&d.perm),
            s(&d.tmp),
        ];
        ok(&args);
        assert_eq!(snapshot(&d.perm), snapshot(&d.tmp).split_off("ok"));
    }
    // Format 2 walks into a directory whose name is not UTF-8; only a file the set would take
    // under it is refused.
    let d = dirs();
    write_set(&d.tmp, &[("ok.dat", b"fine")], 1_600_000_000);
    let odd_dir = d.tmp.join(OsStr::from_bytes(b"d\xfe"));
    std::fs::create_dir(&odd_dir).unwrap();
    std::fs::write(odd_dir.join("in.txt"), b"x").unwrap();
    fails_with(
        &["--format", "2", "save", s(&d.perm), s(&d.tmp)],
        6,
        "not UTF-8",
    );
    ok(&[
        "--format",
        "2",
        "-p",
        "*.dat",
        "save",
        s(&d.perm),
        s(&d.tmp),
    ]);
    // A symbolic link would be saved as whatever it points to; a socket has no contents.
    let d = dirs();
    write_set(&d.tmp, &[("ok.dat", b"fine")], 1_600_000_000);
    std::os::unix::fs::symlink("ok.dat", d.tmp.join("link.dat")).unwrap();
    fails_with(&["save", s(&d.perm), s(&d.tmp)], 6, "symbolic link");
    std::fs::remove_file(d.tmp.join("link.dat")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(d.tmp.join("ctl.sock")).unwrap();
    fails_with(&["save", s(&d.perm), s(&d.tmp)], 6, "socket");
    assert!(!d.perm.join("_FILESET_").exists(), "nothing committed");
    ok(&["-p", "*.dat", "save", s(&d.perm), s(&d.tmp)]);
    assert_eq!(snapshot(&d.perm).keys().collect::<Vec<_>>(), ["ok.dat"]);
}

#[test]
fn a_huge_file_under_the_check_file_name_is_refused_without_reading_it_into_memory() {
    use std::os::unix::process::CommandExt;
    let d = dirs();
    // A format-1 header for no files with a right CRC over 256 MiB of zeros (sparse on disk).
    let len: u64 = 256 << 20;
    let mut header = [0u8; 16];
    header[8..12].copy_from_slice(&1u32.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[4..]);
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(len - 16) / zeros.len() as u64 {
        crc.update(&zeros);
    }
    crc.update(&zeros[..((len - 16) % zeros.len() as u64) as usize]);
    header[0..4].copy_from_slice(&crc.finalize().to_le_bytes());
    let check = d.perm.join("_FILESET_");
    std::fs::write(&check, header).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&check)
        .unwrap()
        .set_len(len)
        .unwrap();
    let tested = |check_bytes: Option<&[u8; 16]>| {
        if let Some(h) = check_bytes {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::options().write(true).open(&check).unwrap();
            f.write_all_at(h, 0).unwrap();
        }
        let mut cmd = Command::new(FILESET);
        cmd.args(["test", s(&d.perm)]);
        // 128 MiB of address space: reading the file whole would fail.
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 128 << 20,
                    rlim_max: 128 << 20,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = tested(None);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("more than 0 files can take"), "{stderr}");
    // A flipped bit is still a CRC error first.
    header[4] ^= 1;
    let (code, stderr) = tested(Some(&header));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("CRC mismatch"), "{stderr}");
}

#[test]
fn saving_a_directory_into_itself_makes_a_check_file_for_the_files_there() {
    // The seed's "create a check file for an existing file set": the files are already in the
    // permanent directory, so it is saved into itself.
    let d = dirs();
    write_set(
        &d.perm,
        &[("a.db", b"alpha"), ("b.db", b"beta"), ("notes.txt", b"x")],
        1_600_000_000,
    );
    let before = snapshot(&d.perm);
    ok(&["-p", "*.db", "save", s(&d.perm), s(&d.perm)]);
    assert_eq!(snapshot(&d.perm), before, "contents and times unchanged");
    ok(&["test", s(&d.perm)]);
    ok(&["load", s(&d.perm), s(&d.tmp)]);
    let mut loaded = before.clone();
    loaded.remove("notes.txt");
    assert_eq!(
        snapshot(&d.tmp),
        loaded,
        "the set is the files the patterns took"
    );
}

#[test]
fn a_load_that_fails_leaves_the_working_directory_as_it_was() {
    let d = dirs();
    write_set(
        &d.tmp,
        &[("a.db", b"saved a"), ("b.db", b"saved b")],
        1_600_000_000,
    );
    ok(&["--format", "2", "save", s(&d.perm), s(&d.tmp)]);
    // The working directory moves on; then the saved b.db is damaged (same size and time, so
    // only its digest tells, and only once a.db has been copied).
    write_set(
        &d.tmp,
        &[("a.db", b"newer a"), ("b.db", b"newer b")],
        1_700_000_000,
    );
    let working = snapshot(&d.tmp);
    flip_a_byte_keeping_size_and_mtime(&d.perm.join("b.db"), 0);
    fails_with(&["-v", "load", s(&d.perm), s(&d.tmp)], 7, "SHA-256");
    assert_eq!(snapshot(&d.tmp), working, "the working set is untouched");
    let names: Vec<_> = std::fs::read_dir(&d.tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temporary left: {names:?}");
}

#[test]
fn a_permanent_directory_inside_the_working_one_is_not_taken_into_the_set() {
    for format in ["1", "2"] {
        let d = dirs();
        write_set(&d.tmp, &[("a.db", b"alpha")], 1_600_000_000);
        let inside = d.tmp.join("saved");
        let args = ["--format", format, "-m", "save", s(&inside), s(&d.tmp)];
        ok(&args);
        // A second save: the set is still the one file (not saved/a.db, saved/saved/...).
        std::fs::remove_file(inside.join("_FILESET_")).unwrap();
        ok(&args);
        ok(&["test", s(&inside)]);
        let fresh = d.root.join("fresh");
        ok(&["-m", "load", s(&inside), s(&fresh)]);
        let names: Vec<_> = std::fs::read_dir(&fresh)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.db"], "format {format}");
    }
}

/// Saves `live.db` (`size` bytes, in a directory on tmpfs where there is one, so the save
/// takes its O_DIRECT splice path) four times while `writer` rewrites it, until told to stop,
/// with versions that differ in every byte. Each save either keeps a copy of one version whole
/// or is refused and leaves the set saved before it.
fn saves_while_written(size: usize, writer: impl Fn(&std::fs::File, &AtomicBool) + Sync) {
    let shm = Path::new("/dev/shm");
    let work = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    saves_in_while_written(work.path(), size, writer);
}

/// [`saves_while_written`] with the working directory `work`.
fn saves_in_while_written(
    work: &Path,
    size: usize,
    writer: impl Fn(&std::fs::File, &AtomicBool) + Sync,
) {
    let d = dirs();
    let live = work.join("live.db");
    std::fs::write(&live, vec![0u8; size]).unwrap();
    ok(&["save", s(&d.perm), s(work)]);
    let mut saved = snapshot(&d.perm);
    let stop = AtomicBool::new(false);
    // Stops the writer however the saves end: a failed assertion must fail the test, not
    // leave the scope waiting for the writer forever.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let to = std::fs::File::options().write(true).open(&live).unwrap();
            writer(&to, &stop);
        });
        let _stop = StopOnDrop(&stop);
        for _ in 0..4 {
            let out = run(&["save", s(&d.perm), s(work)], &[]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            match out.status.code() {
                // Refused: the saved set is the last one saved, whole.
                Some(5) => {
                    assert!(stderr.contains("changed while saving"), "{stderr}");
                    assert_eq!(snapshot(&d.perm), saved);
                }
                // Saved: the copy is one of the writer's versions, never a mix of two.
                Some(0) => {
                    let copy = std::fs::read(d.perm.join("live.db")).unwrap();
                    assert_eq!(copy.len(), size);
                    let torn = copy.iter().filter(|&&b| b != copy[0]).count();
                    assert_eq!(torn, 0, "a torn copy was saved ({torn} bytes differ)");
                    saved = snapshot(&d.perm);
                }
                other => panic!("save ended with {other:?}: {stderr}"),
            }
            ok(&["test", s(&d.perm)]);
        }
    });
}

#[test]
fn a_file_written_to_during_the_save_is_never_saved_torn() {
    // Large enough that each copy spans many of the writer's passes. A writer stalled mid-pass
    // for the whole copy is the case the next test makes on purpose.
    const SIZE: usize = 48 << 20;
    saves_while_written(SIZE, |to, stop| {
        let mut value = 1u8;
        while !stop.load(Ordering::Relaxed) {
            to.write_all_at(&vec![value; SIZE], 0).unwrap();
            value = value.wrapping_add(1).max(1);
        }
    });
}

/// A write already under way when the save takes its first look (its times set, its bytes
/// still going in) must not be copied half done. The writer's bytes come from disk through a
/// mapping whose pages were dropped from the cache, so each of its writes stays under way while
/// it faults them in: the stall the in-memory writer above meets only by bad luck.
#[test]
fn a_write_under_way_when_the_save_starts_is_not_saved_half_done() {
    let writer = StalledWriter::new();
    saves_while_written(StalledWriter::SIZE, |to, stop| writer.run(to, stop));
}

/// The same on disk file systems, which take a writer's lock in different calls: `SEEK_DATA`
/// on ext4 and btrfs (where, without the wait, half-done copies were saved), reads on xfs.
#[test]
fn a_write_under_way_is_waited_for_on_ext4_xfs_and_btrfs() {
    let writer = StalledWriter::new();
    for (kind, mib) in [("ext4", 64), ("xfs", 320), ("btrfs", 128)] {
        let Some(fs) = SmallFs::of(kind, mib) else {
            return;
        };
        eprintln!("on {kind}:");
        // A folder of its own: ext4's root holds lost+found.
        let work = fs.mnt.join("work");
        std::fs::create_dir(&work).unwrap();
        saves_in_while_written(&work, StalledWriter::SIZE, |to, stop| writer.run(to, stop));
    }
}

/// A writer whose every write stays under way for a long time: its bytes (two versions, all
/// 1s and all 2s) come from files on the build's disk through a mapping whose pages were
/// dropped from the cache, faulted in one page at a time.
struct StalledWriter {
    _disk: tempfile::TempDir,
    sources: Vec<std::fs::File>,
}

impl StalledWriter {
    /// Each write faults its 4,096 pages in one at a time (MADV_RANDOM: no read-ahead), some
    /// 0.3 s here; a save's copy takes a tenth of that.
    const SIZE: usize = 16 << 20;

    fn new() -> StalledWriter {
        // On the build's disk, not on a tmpfs /tmp.
        let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let sources = [1u8, 2]
            .iter()
            .map(|&value| {
                let path = disk.path().join(format!("source{value}"));
                std::fs::write(&path, vec![value; Self::SIZE]).unwrap();
                let f = std::fs::File::open(&path).unwrap();
                f.sync_all().unwrap();
                f
            })
            .collect();
        StalledWriter {
            _disk: disk,
            sources,
        }
    }

    /// Writes `to` whole, version after version, until `stop`.
    fn run(&self, to: &std::fs::File, stop: &AtomicBool) {
        for pass in 0usize.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let from = &self.sources[pass % 2];
            // SAFETY: a read-only shared mapping of a file this test owns and never truncates,
            // unmapped before the next pass; the advice calls only drop or skip cached pages.
            unsafe {
                libc::posix_fadvise(from.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
                let map = libc::mmap(
                    std::ptr::null_mut(),
                    Self::SIZE,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    from.as_raw_fd(),
                    0,
                );
                assert_ne!(map, libc::MAP_FAILED);
                libc::madvise(map, Self::SIZE, libc::MADV_RANDOM);
                let bytes = std::slice::from_raw_parts(map as *const u8, Self::SIZE);
                to.write_all_at(bytes, 0).unwrap();
                libc::munmap(map, Self::SIZE);
            }
        }
    }
}

#[test]
fn a_second_fileset_waits_for_the_first() {
    use std::io::BufRead;
    use std::os::unix::io::AsRawFd;
    let d = dirs();
    write_set(&d.tmp, &[("a.dat", b"alpha")], 1_600_000_000);
    // This test holds the lock a running save would hold.
    let held = std::fs::File::open(&d.perm).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    let mut save = Command::new(FILESET)
        .args(["-v", "save", s(&d.perm), s(&d.tmp)])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(save.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("waiting for another fileset"), "{first}");
    assert!(save.try_wait().unwrap().is_none(), "it waits");
    assert!(
        !d.perm.join("_FILESET_").exists(),
        "and writes nothing meanwhile"
    );
    drop(held);
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(save.wait().unwrap().success(), "{rest:?}");
    ok(&["test", s(&d.perm)]);
    assert_eq!(snapshot(&d.perm), snapshot(&d.tmp));
}

#[test]
fn format_2_subdirectories_are_never_reached_through_a_link() {
    let d = dirs();
    std::fs::create_dir(d.tmp.join("sub")).unwrap();
    write_set(&d.tmp.join("sub"), &[("x.db", b"the set's")], 1_600_000_000);
    ok(&["--format", "2", "save", s(&d.perm), s(&d.tmp)]);
    let saved = std::fs::read(d.perm.join("sub/x.db")).unwrap();
    // Elsewhere: a directory holding a file of the same name, size and time.
    let outside = d.root.join("outside");
    write_set(&outside, &[("x.db", b"not yours")], 1_600_000_000);
    let link_in_place = |dir: &std::path::Path| {
        std::fs::remove_dir_all(dir.join("sub")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("sub")).unwrap();
    };
    // Load into a working directory whose `sub` is a link: refused, nothing written there.
    let work = d.root.join("work");
    std::fs::create_dir(&work).unwrap();
    std::os::unix::fs::symlink(&outside, work.join("sub")).unwrap();
    fails_with(
        &["load", s(&d.perm), s(&work)],
        5,
        "symbolic link where a directory",
    );
    assert_eq!(std::fs::read(outside.join("x.db")).unwrap(), b"not yours");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "no temporary left there"
    );
    // Save from a working directory whose `sub` became a link: refused, the saved set stands.
    link_in_place(&d.tmp);
    fails_with(
        &["save", s(&d.perm), s(&d.tmp)],
        5,
        "symbolic link where a directory",
    );
    assert_eq!(std::fs::read(d.perm.join("sub/x.db")).unwrap(), saved);
    ok(&["test", s(&d.perm)]);
    // A permanent directory whose `sub` became a link fails test and load.
    link_in_place(&d.perm);
    fails_with(&["test", s(&d.perm)], 5, "symbolic link where a directory");
    fails_with(
        &["load", s(&d.perm), s(&d.root.join("fresh"))],
        5,
        "symbolic link",
    );
}

#[test]
fn a_check_file_name_must_stay_in_the_set_directory() {
    let d = dirs();
    write_set(&d.tmp, &[("a.dat", b"alpha")], 1_600_000_000);
    let outside = d.root.join("outside");
    let outside_name = s(&outside).to_string();
    for name in [
        outside_name.as_str(),
        "",
        ".",
        "..",
        "sub/x",
        "x.fileset-tmp",
    ] {
        for command in ["save", "load", "test"] {
            fails_with(
                &["-c", name, command, s(&d.perm), s(&d.tmp)],
                64,
                "must be a file name",
            );
        }
    }
    assert!(!outside.exists() && !d.root.join("outside.new").exists());
    assert_eq!(
        std::fs::read_dir(&d.perm).unwrap().count(),
        0,
        "nothing written"
    );
    let long = "c".repeat(252);
    fails_with(
        &["-c", &long, "save", s(&d.perm), s(&d.tmp)],
        64,
        "251 bytes",
    );
    ok(&["-c", &"c".repeat(251), "save", s(&d.perm), s(&d.tmp)]);
}

#[test]
fn symbolic_links_planted_in_either_directory_are_not_followed() {
    let d = dirs();
    let victim = d.root.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let secret = d.root.join("secret");
    std::fs::write(&secret, b"not for the set").unwrap();
    write_set(
        &d.tmp,
        &[("a.dat", b"alpha"), ("b.dat", b"beta")],
        1_600_000_000,
    );
    // Save: links under the temporary and intent names fileset is about to write.
    for planted in [".a.dat.fileset-tmp", "_FILESET_.new"] {
        std::os::unix::fs::symlink(&victim, d.perm.join(planted)).unwrap();
    }
    ok(&["save", s(&d.perm), s(&d.tmp)]);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    ok(&["test", s(&d.perm)]);
    assert_eq!(snapshot(&d.perm), snapshot(&d.tmp));
    // Load: a link under a temporary name in the working directory.
    let fresh = d.root.join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    std::os::unix::fs::symlink(&victim, fresh.join(".b.dat.fileset-tmp")).unwrap();
    ok(&["load", s(&d.perm), s(&fresh)]);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(snapshot(&fresh), snapshot(&d.tmp));
    assert!(
        !fresh.join("b.dat").is_symlink(),
        "the landed file is a file"
    );
    // Save of an existing set: a file of it replaced by a link to another file is refused,
    // and the saved set stands.
    let before = snapshot(&d.perm);
    std::fs::remove_file(d.tmp.join("b.dat")).unwrap();
    std::os::unix::fs::symlink(&secret, d.tmp.join("b.dat")).unwrap();
    fails_with(&["save", s(&d.perm), s(&d.tmp)], 5, "symbolic link");
    assert_eq!(snapshot(&d.perm), before);
    ok(&["test", s(&d.perm)]);
    // Load: a file of the set replaced by a link in the permanent directory is refused.
    std::fs::remove_file(d.perm.join("a.dat")).unwrap();
    std::os::unix::fs::symlink(&secret, d.perm.join("a.dat")).unwrap();
    let other = d.root.join("other");
    fails_with(&["-m", "load", s(&d.perm), s(&other)], 5, "symbolic link");
    assert_eq!(snapshot(&other), Snapshot::new(), "nothing loaded");
}

#[test]
fn test_exit_codes_name_the_cause() {
    let d = dirs();
    assert_eq!(
        run(&["test", s(&d.perm)], &[]).status.code(),
        Some(2),
        "missing check file"
    );
    write_set(&d.tmp, &[("a", b"one"), ("b", b"two")], 1_500_000_000);
    ok(&["save", s(&d.perm), s(&d.tmp)]);
    ok(&["test", s(&d.perm)]);
    std::fs::remove_file(d.perm.join("b")).unwrap();
    let out = run(&["test", s(&d.perm)], &[]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
    std::fs::write(d.perm.join("b"), b"two").unwrap(); // right size, wrong mtime
    let out = run(&["test", s(&d.perm)], &[]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("modification time"));
    let mut check = std::fs::read(d.perm.join("_FILESET_")).unwrap();
    check[40] ^= 0x01;
    std::fs::write(d.perm.join("_FILESET_"), &check).unwrap();
    let out = run(&["test", s(&d.perm)], &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CRC"));
    // Usage errors, found before anything is made.
    let new_perm = d.root.join("new-perm");
    fails_with(
        &["-m", "-p", "[", "save", s(&new_perm), s(&d.tmp)],
        64,
        "pattern",
    );
    assert!(
        !new_perm.exists(),
        "-m made nothing for a save that could not run"
    );
    let a_file = d.tmp.join("a");
    fails_with(&["save", s(&a_file), s(&d.tmp)], 1, "not a directory");
    assert_eq!(run(&["load", s(&d.perm)], &[]).status.code(), Some(64));
    assert_eq!(
        run(&["frobnicate", s(&d.perm)], &[]).status.code(),
        Some(64)
    );
}

#[test]
fn corrupt_check_file_falls_back_to_the_factory_set() {
    let d = dirs();
    let factory = d.root.join("factory");
    write_set(&factory, &[("cfg.dat", b"factory defaults")], 1_400_000_000);
    ok(&["save", s(&factory), s(&factory)]);
    write_set(
        &d.tmp,
        &[("cfg.dat", b"user settings"), ("more.dat", b"x")],
        1_600_000_000,
    );
    ok(&["save", s(&d.perm), s(&d.tmp)]);
    // One flipped bit in the permanent check file.
    let mut check = std::fs::read(d.perm.join("_FILESET_")).unwrap();
    check[20] ^= 0x10;
    std::fs::write(d.perm.join("_FILESET_"), &check).unwrap();
    let target = d.root.join("run");
    let out = run(&["-m", "load", s(&d.perm), s(&target)], &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CRC mismatch"));
    assert!(snapshot(&target).is_empty(), "nothing left behind");
    let out = run(
        &["-m", "-b", s(&factory), "load", s(&d.perm), s(&target)],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("loaded the set from"));
    assert_eq!(
        std::fs::read(target.join("cfg.dat")).unwrap(),
        b"factory defaults"
    );
    assert!(!target.join("more.dat").exists());
}

#[test]
fn truncated_data_file_fails_with_a_size_message() {
    let d = dirs();
    write_set(
        &d.tmp,
        &[("a.dat", b"0123456789"), ("b.dat", b"abc")],
        1_600_000_000,
    );
    ok(&["save", s(&d.perm), s(&d.tmp)]);
    let f = std::fs::File::options()
        .write(true)
        .open(d.perm.join("a.dat"))
        .unwrap();
    let mtime = f.metadata().unwrap().modified().unwrap();
    f.set_len(4).unwrap();
    f.set_modified(mtime).unwrap();
    let target = d.root.join("run");
    let out = run(&["-m", "load", s(&d.perm), s(&target)], &[]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("size 4 differs from the check file's 10")
    );
    assert!(snapshot(&target).is_empty());
}

#[test]
fn only_changed_times_and_perms() {
    let d = dirs();
    write_set(&d.tmp, &[("a", b"one"), ("b", b"two")], 1_600_000_000);
    ok(&[
        "-P",
        "0600",
        "-t",
        "1234567890",
        "save",
        s(&d.perm),
        s(&d.tmp),
    ]);
    let m = std::fs::metadata(d.perm.join("a")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600);
    assert_eq!(m.mtime(), 1234567890);
    ok(&["test", s(&d.perm)]);
    // -x: only the changed file is rewritten (the other keeps its inode). (With -t every
    // file's time is replaced, so -x compares against a fresh save.)
    ok(&["save", s(&d.perm), s(&d.tmp)]);
    let ino_a = std::fs::metadata(d.perm.join("a")).unwrap().ino();
    let ino_b = std::fs::metadata(d.perm.join("b")).unwrap().ino();
    write_set(&d.tmp, &[("b", b"TWO!")], 1_700_000_000);
    ok(&["-x", "save", s(&d.perm), s(&d.tmp)]);
    ok(&["-x", "save", s(&d.perm), s(&d.tmp)]);
    assert_eq!(std::fs::metadata(d.perm.join("a")).unwrap().ino(), ino_a);
    assert_ne!(std::fs::metadata(d.perm.join("b")).unwrap().ino(), ino_b);
    assert_eq!(std::fs::read(d.perm.join("b")).unwrap(), b"TWO!");
    ok(&["test", s(&d.perm)]);
}

/// Old set A and new set B differ in every file, and B has one file more.
fn crash_fixture() -> (Dirs, Snapshot, Snapshot) {
    let d = dirs();
    write_set(
        &d.tmp,
        &[
            ("one.dat", b"old 1"),
            ("two.dat", b"old 2"),
            ("three.dat", b"old 3"),
        ],
        1_500_000_000,
    );
    ok(&["save", s(&d.perm), s(&d.tmp)]);
    let old = snapshot(&d.perm);
    write_set(
        &d.tmp,
        &[
            ("one.dat", b"new one"),
            ("two.dat", b"new two"),
            ("three.dat", b"new three"),
        ],
        1_600_000_000,
    );
    let new = snapshot(&d.tmp);
    (d, old, new)
}

/// After a crash: test must pass, and load must give exactly the old or exactly the new set.
fn assert_whole_set(d: &Dirs, old: &Snapshot, new: &Snapshot, what: &str) -> bool {
    let out = run(&["test", s(&d.perm)], &[]);
    assert!(
        out.status.success(),
        "{what}: test failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = d.root.join(format!("load-{}", what.replace(' ', "-")));
    ok(&["-m", "load", s(&d.perm), s(&target)]);
    let got = snapshot(&target);
    assert!(
        got == *old || got == *new,
        "{what}: a mix of sets: {:?}",
        got.keys().collect::<Vec<_>>()
    );
    assert!(
        snapshot(&d.perm) == *old || snapshot(&d.perm) == *new,
        "{what}: permdir holds a mix"
    );
    got == *new
}

#[test]
fn save_killed_after_every_step_leaves_a_whole_set() {
    // 3 files: 3 temp writes, the intent, 3 renames, the check rename, the directory fsync.
    let steps = 3 + 1 + 3 + 1 + 1;
    let mut saw_old = false;
    let mut saw_new = false;
    for k in 1..=steps {
        let (d, old, new) = crash_fixture();
        let out = run(
            &["save", s(&d.perm), s(&d.tmp)],
            &[("FILESET_CRASH_AFTER", k.to_string())],
        );
        assert!(
            !out.status.success(),
            "step {k}: the hook should have aborted the save"
        );
        if assert_whole_set(&d, &old, &new, &format!("step {k}")) {
            saw_new = true;
        } else {
            saw_old = true;
        }
        // And the next save completes normally.
        ok(&["save", s(&d.perm), s(&d.tmp)]);
        assert_eq!(snapshot(&d.perm), new);
    }
    assert!(
        saw_old && saw_new,
        "crashes before and after the commit point were both exercised"
    );
}

#[test]
fn save_killed_at_random_moments_leaves_a_whole_set() {
    let mut seed = 0x9E3779B97F4A7C15u64;
    for round in 0..50 {
        let (d, old, new) = crash_fixture();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = std::time::Duration::from_micros(seed % 4000);
        let mut child = Command::new(FILESET)
            .args(["save", s(&d.perm), s(&d.tmp)])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        assert_whole_set(&d, &old, &new, &format!("round {round}"));
    }
}

#[test]
fn check_file_bytes_match_the_documentation() {
    // The fixed set of docs/fileset.md: a.dat (5 bytes, mtime 1000000000) and
    // config.ini (300 bytes, mtime 1700000000).
    let d = dirs();
    write_set(
        &d.tmp,
        &[("a.dat", b"hello"), ("config.ini", &[b'x'; 300])],
        0,
    );
    for (name, mtime) in [("a.dat", 1_000_000_000u64), ("config.ini", 1_700_000_000)] {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
        std::fs::File::options()
            .write(true)
            .open(d.tmp.join(name))
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    ok(&["save", s(&d.perm), s(&d.tmp)]);
    let bytes = std::fs::read(d.perm.join("_FILESET_")).unwrap();
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/fileset.md"
    ))
    .unwrap();
    let block = doc
        .split("<!-- golden-v1 -->")
        .nth(1)
        .expect("golden block in docs/fileset.md");
    let block = block.split("```").nth(1).unwrap();
    let mut documented = Vec::new();
    for line in block.lines() {
        // "0000: 12 34 ..." — offset, colon, hex bytes
        if let Some((_, hex)) = line.split_once(':') {
            for b in hex.split_whitespace() {
                documented.push(u8::from_str_radix(b, 16).unwrap());
            }
        }
    }
    assert_eq!(
        bytes, documented,
        "docs/fileset.md golden bytes are out of date"
    );
}

#[test]
fn progress_reader_that_goes_away_does_not_stop_save_or_load() {
    let d = dirs();
    let files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("f{i:02}.dat"), vec![i as u8; 3000 + i]))
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    write_set(&d.tmp, &refs, 1_600_000_000);
    let loaded = d.root.join("loaded");
    for args in [
        vec!["-vvv", "save", s(&d.perm), s(&d.tmp)],
        vec!["-vvv", "-m", "load", s(&d.perm), s(&loaded)],
    ] {
        // As `fileset -vvv save … | head -1`: the pipe's reader is gone before the first line.
        let mut child = Command::new(FILESET)
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ok(&["test", s(&d.perm)]);
    assert_eq!(snapshot(&d.perm), snapshot(&d.tmp));
    assert_eq!(snapshot(&loaded), snapshot(&d.tmp));
}

#[test]
fn check_file_name_64k_boundaries_and_verbose_progress() {
    let d = dirs();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    write_set(
        &d.tmp,
        &[("one.dat", &data), ("two.dat", b"2")],
        1_600_000_000,
    );
    let out = ok(&["-6", "-v", "-c", "SET.chk", "save", s(&d.perm), s(&d.tmp)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("save one.dat (200000 bytes)") && text.contains("save two.dat (1 bytes)"),
        "{text}"
    );
    assert!(d.perm.join("SET.chk").exists() && !d.perm.join("_FILESET_").exists());
    // Under the default name there is no set; under -c there is.
    assert_eq!(run(&["test", s(&d.perm)], &[]).status.code(), Some(2));
    ok(&["-c", "SET.chk", "test", s(&d.perm)]);
    let loaded = d.root.join("loaded");
    let out = ok(&[
        "-6",
        "-v",
        "-m",
        "-c",
        "SET.chk",
        "load",
        s(&d.perm),
        s(&loaded),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("load one.dat (200000 bytes)"));
    assert_eq!(snapshot(&loaded), snapshot(&d.tmp));
}

/// A small file system (an image, loop-mounted), unmounted when dropped. Needs root:
/// elsewhere the test that uses it says so and passes; under CI (`CI` set) it must run.
struct SmallFs {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl SmallFs {
    /// An 8 MiB ext4 on a loop device.
    fn mount() -> Option<SmallFs> {
        SmallFs::of("ext4", 8)
    }

    /// A file system of `kind` (ext4, xfs, btrfs: scripts/test.sh installs their mkfs) in an
    /// image of `mib` MiB (sparse), on a loop device.
    fn of(kind: &str, mib: u64) -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let mkfs = format!("mkfs.{kind}");
        let force = if kind == "ext4" { "-F" } else { "-f" };
        let steps: [&[&str]; 2] = [
            &[&mkfs, "-q", force, s(&image)],
            &["mount", "-o", "loop", s(&image), s(&mnt)],
        ];
        SmallFs::set_up(dir, mnt.clone(), &steps)
    }

    /// A 2 MiB tmpfs.
    fn tmpfs() -> Option<SmallFs> {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let steps: [&[&str]; 1] = [&["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", s(&mnt)]];
        SmallFs::set_up(dir, mnt.clone(), &steps)
    }

    /// Runs the steps that mount `mnt`; `None` (the test skips) where they fail outside CI.
    fn set_up(dir: tempfile::TempDir, mnt: PathBuf, steps: &[&[&str]]) -> Option<SmallFs> {
        for step in steps {
            let out = Command::new(step[0]).args(&step[1..]).output();
            let failed = match &out {
                Ok(o) if o.status.success() => continue,
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                std::env::var_os("CI").is_none(),
                "{step:?} failed under CI: {failed}"
            );
            eprintln!("skipped: {step:?} failed (needs root, and loop devices): {failed}");
            return None;
        }
        Some(SmallFs { _dir: dir, mnt })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

/// The disk fills up in the middle of a save: the save fails with exit 1 naming the cause, no
/// temporary file or intent is left, and the old set still tests good and loads exactly.
#[test]
fn full_disk_during_save_keeps_the_old_set() {
    let Some(small) = SmallFs::mount() else {
        return;
    };
    let d = dirs();
    let perm = small.mnt.join("perm");
    // Three files a.dat, b.dat, c.dat of `len` bytes each, filled with `fill`, `fill + 1`, ….
    let write_three = |len: usize, fill: u8, mtime: i64| {
        let contents: Vec<Vec<u8>> = (0..3u8).map(|i| vec![fill + i; len]).collect();
        let files: Vec<(&str, &[u8])> = ["a.dat", "b.dat", "c.dat"]
            .into_iter()
            .zip(contents.iter().map(|v| v.as_slice()))
            .collect();
        write_set(&d.tmp, &files, mtime);
    };
    write_three(1_000_000, 0, 1_600_000_000);
    ok(&["-m", "save", s(&perm), s(&d.tmp)]);
    let old_set = snapshot(&d.tmp);
    // The new set (9 MB) cannot fit beside the old one on the 8 MiB file system.
    write_three(3_000_000, 10, 1_700_000_000);
    let out = run(&["save", s(&perm), s(&d.tmp)], &[]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("No space left on device"), "{said}");
    let leftovers: Vec<String> = std::fs::read_dir(&perm)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".fileset-tmp") || n.ends_with(".new"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    ok(&["test", s(&perm)]);
    let loaded = d.root.join("loaded");
    ok(&["-m", "load", s(&perm), s(&loaded)]);
    assert_eq!(snapshot(&loaded), old_set);
}

/// tmpdir fills up in the middle of a load read from disk (the reader-thread path): the load
/// fails with exit 1 naming the cause, ends (the reader thread stops with it), and leaves no
/// file of the set — whole or partial — in tmpdir.
#[test]
fn full_tmpfs_during_load_leaves_nothing_behind() {
    let Some(small) = SmallFs::tmpfs() else {
        return;
    };
    let d = dirs();
    let files: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i + 1; 1_000_000]).collect();
    write_set(
        &d.tmp,
        &[
            ("a.dat", &files[0]),
            ("b.dat", &files[1]),
            ("c.dat", &files[2]),
        ],
        1_600_000_000,
    );
    ok(&["-m", "save", s(&d.perm), s(&d.tmp)]);
    // The reader-thread path, then (-6) the kernel-copy path.
    for (args, way) in [
        (&["-vvv"][..], "by DirectRead"),
        (&["-vvv", "-6"][..], "by Sendfile"),
    ] {
        let mut args = args.to_vec();
        args.extend(["load", s(&d.perm), s(&small.mnt)]);
        let out = run(&args, &[]);
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{said}");
        // The message names the file system that is full: tmpdir's, not the source's.
        assert!(said.contains("No space left on device"), "{said}");
        assert!(said.contains(s(&small.mnt)), "{said}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(way),
            "the load did not copy {way}"
        );
        let left: Vec<_> = std::fs::read_dir(&small.mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{way}: left in tmpdir: {left:?}");
    }
}
