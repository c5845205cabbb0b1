//! Review F6: no error about a malformed configuration file shows the LDAP password. A line
//! without `=` (`ADMIN_PASSWORD hunter2`) was joined by the INI reader into the next key, and the
//! "unknown key" error printed that key, password included, to stderr (the journal).

mod common;

use std::process::Command;

use common::*;

const PROV: &str = env!("CARGO_BIN_EXE_prov-backup");
const SECRET: &str = "hunter2-TOPSECRET";

/// The shipped sample with its password line replaced by `line`.
fn malformed(line: &str) -> String {
    let sample =
        std::fs::read_to_string(repo_root().join("contrib/prov-backup/Rsnapshot.conf")).unwrap();
    assert!(sample.contains("\nADMIN_PASSWORD = secret\n"));
    sample.replace("\nADMIN_PASSWORD = secret\n", &format!("\n{line}\n"))
}

#[test]
fn no_error_about_a_malformed_file_shows_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        format!("ADMIN_PASSWORD {SECRET}"),
        format!("admin_password\t{SECRET}"),
        format!("ADMIN_PASWORD = {SECRET}"),
        format!("ADMIN_PASSWORD = \"{SECRET}"),
        format!("ADMIN_PASSWORD{SECRET} = x"),
        format!("ADMIN_SECRET{SECRET}"),
        format!("MY_PASSWORD {SECRET} = x"),
        format!("[Database {SECRET}\nADMIN_PASSWORD = x"),
        format!("[ADMIN_PASSWORD = {SECRET}]"),
        format!("[Database]\nADMIN_PASSWORD = x\n[Secret {SECRET}]"),
        // A password wrapped onto a line of its own, or a stray line holding only it.
        format!("ADMIN_PASSWORD =\n{SECRET}"),
        format!("ADMIN_PASSWORD = x\n  {SECRET}"),
        SECRET.to_string(),
    ];
    for (i, line) in cases.iter().enumerate() {
        let file = dir.path().join(format!("{i}.conf"));
        std::fs::write(&file, malformed(line)).unwrap();
        let out = Command::new(PROV)
            .args(["--check-config", "-c"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_ne!(out.status.code(), Some(0), "{line:?} accepted: {stdout}");
        assert!(
            !stderr.contains("hunter2") && !stdout.contains("hunter2"),
            "{line:?}: the password is shown: {stderr}{stdout}"
        );
    }
}

#[test]
fn a_line_without_equals_is_named_by_its_line_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("Rsnapshot.conf");
    let text = malformed(&format!("ADMIN_PASSWORD {SECRET}"));
    let line = text
        .lines()
        .position(|l| l.starts_with("ADMIN_PASSWORD "))
        .unwrap()
        + 1;
    std::fs::write(&file, text).unwrap();
    let out = Command::new(PROV)
        .args(["--check-config", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: line {line}: no '=' (KEY = VALUE expected; the line is not shown, it may hold \
             a password)",
            file.display()
        )),
        "{stderr}"
    );
}
