//! contrib/prov-backup.service passes `systemd-analyze verify` (with this build's binary in its
//! ExecStart), and its ExecStart options are ones prov-backup takes.

use std::path::Path;
use std::process::Command;

fn unit_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/prov-backup.service");
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn the_unit_file_verifies() {
    let binary = env!("CARGO_BIN_EXE_prov-backup");
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("prov-backup.service");
    std::fs::write(
        &unit,
        unit_text().replace("/usr/local/bin/prov-backup", binary),
    )
    .unwrap();
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
}

#[test]
fn exec_start_options_are_understood() {
    let text = unit_text();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let mut words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.remove(0), "/usr/local/bin/prov-backup");
    // The same options with missing files: prov-backup parses them and then names the missing
    // configuration file (exit 2), rather than rejecting the command line (clap's usage error).
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = words
        .iter()
        .map(|w| {
            if w.starts_with('/') {
                dir.path().join("missing.conf").display().to_string()
            } else {
                w.to_string()
            }
        })
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_prov-backup"))
        .args(&args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("missing.conf"), "{stderr}");
    assert!(!stderr.contains("Usage:"), "{stderr}");
}
