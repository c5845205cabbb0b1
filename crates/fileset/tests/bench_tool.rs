//! `fileset-bench`, the helper of scripts/bench-fileset.sh: the anchor loop copies byte for
//! byte, the floors do the half of a load they stand for, and bad usage fails loudly — a
//! benchmark whose contenders silently did less would report a floor that is not one.

use std::path::Path;
use std::process::{Command, Output};

use tempfile::TempDir;

const BENCH: &str = env!("CARGO_BIN_EXE_fileset-bench");

fn bench(args: &[&Path]) -> Output {
    Command::new(BENCH).args(args).output().unwrap()
}

fn succeeded(out: &Output) -> bool {
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    out.status.success()
}

/// Files of awkward sizes: empty, under a block, just over one, over the 2 MiB buffer unit.
fn make_set(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let set: Vec<(String, Vec<u8>)> = [0usize, 1, 4097, (3 << 20) + 123]
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let bytes = (0..len).map(|b| (b * 7 + i) as u8).collect();
            (format!("f{i}.dat"), bytes)
        })
        .collect();
    for (name, bytes) in &set {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    set
}

/// Runs `verb SRC DST` on a fresh set; the set and both directories, for checking.
fn run_on_a_set(verb: &str) -> (Vec<(String, Vec<u8>)>, TempDir, TempDir) {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let set = make_set(src.path());
    assert!(succeeded(&bench(&[
        Path::new(verb),
        src.path(),
        dst.path()
    ])));
    (set, src, dst)
}

#[test]
fn rwcopy_copies_every_file_byte_for_byte() {
    let (set, _src, dst) = run_on_a_set("rwcopy");
    for (name, bytes) in &set {
        assert_eq!(
            &std::fs::read(dst.path().join(name)).unwrap(),
            bytes,
            "{name}"
        );
    }
}

#[test]
fn writefloor_makes_files_of_the_same_sizes_and_readfloor_reads_them() {
    let (set, src, dst) = run_on_a_set("writefloor");
    for (name, bytes) in &set {
        let made = std::fs::metadata(dst.path().join(name)).unwrap().len();
        assert_eq!(made, bytes.len() as u64, "{name}");
    }
    assert!(succeeded(&bench(&[Path::new("readfloor"), src.path()])));
}

#[test]
fn the_floors_fail_on_a_missing_directory_and_on_bad_usage() {
    let missing = Path::new("/nonexistent/fileset-bench");
    let out = bench(&[Path::new("readfloor"), missing]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/fileset-bench"));
    let out = bench(&[Path::new("readfloor")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: fileset-bench"));
}
