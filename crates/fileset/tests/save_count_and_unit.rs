//! `fileset -x save` counts the files it copied, and contrib/fileset@.service: it verifies with
//! `systemd-analyze verify`, and its ExecStart/ExecStop lines, expanded from an instance's
//! configuration file as systemd expands them, load and save a set (first boot included).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FILESET: &str = env!("CARGO_BIN_EXE_fileset");

fn fileset(args: &[&str]) -> Output {
    Command::new(FILESET).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn set_mtime(path: &Path, secs: u64) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .unwrap();
}

/// The inode of every file in `dir`: a file save copied is a new inode (renamed into place).
fn inodes(dir: &Path) -> HashMap<String, u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().ino(),
            )
        })
        .collect()
}

#[test]
fn x_save_counts_only_the_files_it_copied() {
    let d = tempfile::tempdir().unwrap();
    let (perm, tmp) = (d.path().join("perm"), d.path().join("tmp"));
    std::fs::create_dir_all(&tmp).unwrap();
    for i in 0..100 {
        let p = tmp.join(format!("f{i:03}.dat"));
        std::fs::write(&p, format!("file {i}")).unwrap();
        set_mtime(&p, 1_700_000_000);
    }
    let (p, t) = (perm.to_str().unwrap(), tmp.to_str().unwrap());
    let out = fileset(&["-m", "-v", "-p", "*.dat", "save", p, t]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("saved 100 files ("), "{stdout}");

    let before = inodes(&perm);
    for i in [7, 42, 99] {
        let p = tmp.join(format!("f{i:03}.dat"));
        std::fs::write(&p, format!("file {i}, changed")).unwrap();
        set_mtime(&p, 1_700_000_100);
    }
    let out = fileset(&["-v", "-x", "save", p, t]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "saved 3 of 100 files ({} bytes) to {p}; 97 unchanged",
            "file 7, changed".len() + 2 * "file 42, changed".len()
        )),
        "{stdout}"
    );
    assert_eq!(stdout.matches("save f").count(), 3, "{stdout}");
    // And that is what happened on disk: three new inodes, the other 97 untouched.
    let after = inodes(&perm);
    let replaced: Vec<&String> = after
        .iter()
        .filter(|(name, ino)| name.ends_with(".dat") && before.get(*name) != Some(ino))
        .map(|(name, _)| name)
        .collect();
    assert_eq!(replaced.len(), 3, "{replaced:?}");

    // Nothing changed: nothing copied.
    let out = fileset(&["-v", "-x", "save", p, t]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("saved 0 of 100 files (0 bytes)"),
        "{}",
        text(&out.stdout)
    );
    assert!(fileset(&["test", p]).status.success());
}

fn unit_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/fileset@.service");
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn the_unit_file_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let text = unit_text();
    assert!(text.contains("/usr/local/bin/fileset "), "{text}");
    // An instance, as systemctl would start it (a template alone is not a unit that runs).
    let unit = dir.path().join("fileset@mme.service");
    std::fs::write(&unit, text.replace("/usr/local/bin/fileset", FILESET)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (package systemd; scripts/test.sh installs it)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "Type=oneshot",
        "RemainAfterExit=yes",
        "After=local-fs.target",
        "WantedBy=multi-user.target",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line}");
    }
}

/// The value of `key=` in the unit.
fn directive(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= line"))
        .to_owned()
}

/// An Exec line's words as systemd makes them: `${VAR}` is one word, `$VAR` splits on white
/// space (and is no word at all when empty); the binary is this build's.
fn expand(line: &str, env: &HashMap<String, String>) -> Vec<String> {
    let mut words = Vec::new();
    for word in line.split_whitespace() {
        if let Some(name) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
            words.push(env.get(name).cloned().unwrap_or_default());
        } else if let Some(name) = word.strip_prefix('$') {
            let value = env.get(name).cloned().unwrap_or_default();
            words.extend(value.split_whitespace().map(str::to_owned));
        } else {
            words.push(word.to_owned());
        }
    }
    assert_eq!(words.remove(0), "/usr/local/bin/fileset");
    words
}

/// Run an Exec line; the exit status and whether the unit counts it as success.
fn exec(line: &str, env: &HashMap<String, String>, success: &[i32]) -> (i32, Output) {
    let out = Command::new(FILESET)
        .args(expand(line, env))
        .output()
        .unwrap();
    let code = out.status.code().unwrap();
    assert!(
        code == 0 || success.contains(&code),
        "{line}: exit {code}: {}",
        text(&out.stderr)
    );
    (code, out)
}

#[test]
fn the_unit_loads_at_boot_and_saves_at_shutdown() {
    let unit = unit_text();
    let start = directive(&unit, "ExecStart");
    let stop = directive(&unit, "ExecStop");
    let success: Vec<i32> = directive(&unit, "SuccessExitStatus")
        .split_whitespace()
        .map(|c| c.parse().unwrap())
        .collect();
    let d = tempfile::tempdir().unwrap();
    let perm: PathBuf = d.path().join("hd/mme");
    let tmp: PathBuf = d.path().join("tmpfs/mme");
    // The instance's configuration file, as the unit's comment describes it.
    let env: HashMap<String, String> = [
        ("FILESET_PERMDIR", perm.display().to_string()),
        ("FILESET_TMPDIR", tmp.display().to_string()),
        ("FILESET_LOAD_OPTIONS", "-m".to_owned()),
        ("FILESET_SAVE_OPTIONS", "-m -p *.dat".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    // First boot: nothing saved yet. The load says so (exit 2), which the unit counts as success.
    std::fs::create_dir_all(&perm).unwrap();
    let (code, _) = exec(&start, &env, &success);
    assert_eq!(code, 2);
    // The program makes its files (in the tmpfs mount point); at shutdown the set is made from
    // the pattern and saved.
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("a.dat"), b"aaa").unwrap();
    std::fs::write(tmp.join("b.dat"), b"bb").unwrap();
    std::fs::write(tmp.join("scratch.tmp"), b"not in the set").unwrap();
    exec(&stop, &env, &success);
    // The next boot: the tmpfs is empty again, and the load brings the set back.
    std::fs::remove_dir_all(&tmp).unwrap();
    let (code, _) = exec(&start, &env, &success);
    assert_eq!(code, 0);
    assert_eq!(std::fs::read(tmp.join("a.dat")).unwrap(), b"aaa");
    assert_eq!(std::fs::read(tmp.join("b.dat")).unwrap(), b"bb");
    assert!(!tmp.join("scratch.tmp").exists());
    // A damaged saved set fails the start (exit 3): the unit is then not active, so no save at
    // shutdown writes over what is left of it.
    let check = perm.join("_FILESET_");
    let mut bytes = std::fs::read(&check).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&check, bytes).unwrap();
    let out = Command::new(FILESET)
        .args(expand(&start, &env))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(!success.contains(&3));
}
