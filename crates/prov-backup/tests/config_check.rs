//! The configuration files, driving the real binary: `--check-config` (no LDAP server, the
//! shipped samples accepted), unknown keys and sections refused with the file, section and key
//! named, the unit's ExecStart without `-g`, and a dry run that prints each action once.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const PROV: &str = env!("CARGO_BIN_EXE_prov-backup");

fn sample(name: &str) -> PathBuf {
    repo_root().join("contrib/prov-backup").join(name)
}

fn prov(args: &[&str]) -> Output {
    Command::new(PROV).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn check_config_accepts_the_samples_without_ldap() {
    let service = sample("Rsnapshot.conf");
    let global = sample("Global.conf");
    for args in [
        vec!["--check-config", "-c", s(&service)],
        vec!["--check-config", "-c", s(&service), "-g", s(&global)],
    ] {
        // The sample's SERVER (ldap.example.org) is never asked: nothing listens there.
        let out = prov(&args);
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 3, "{stdout}");
        assert!(
            lines[0].starts_with(&format!("{}: good (global file: ", service.display())),
            "{stdout}"
        );
        assert!(
            lines[1].starts_with(
                "would watch ou=accounts,ou=backup,ou=services,dc=stoney-cloud,dc=org on \
                 ldap://ldap.example.org:389/ (StartTLS)"
            ),
            "{stdout}"
        );
        assert!(lines[2].contains("accounts under /var/backup"), "{stdout}");
        assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    }
}

/// Write `text` to `dir/name`.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn unknown_keys_and_sections_name_file_section_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let service_text = std::fs::read_to_string(sample("Rsnapshot.conf")).unwrap();
    let global_text = std::fs::read_to_string(sample("Global.conf")).unwrap();
    let global = sample("Global.conf");
    for (from, to, needle) in [
        (
            "PORT = 389",
            "PROT = 389",
            "[Database] PROT: unknown key (did you mean PORT?)",
        ),
        (
            "WORKERS = 4",
            "THREADS = 4",
            "[Backup] THREADS: unknown key (the keys of [Backup] are BACKUP_ROOT,",
        ),
        // Keys are read without regard to case, and so are misspellings named as written.
        (
            "QUOTA = auto",
            "Quotas = auto",
            "[Backup] Quotas: unknown key (did you mean QUOTA?)",
        ),
        (
            "\n[Backup]\n",
            "\n[Backups]\n",
            "[Backups]: unknown section (this file may hold [Global], [Database], [Service], \
             [Backup], [Gateway], [Mail])",
        ),
    ] {
        let edited = service_text.replacen(from, to, 1);
        assert_ne!(edited, service_text, "{from}");
        let service = write(dir.path(), "Rsnapshot.conf", &edited);
        // Refused alike by --check-config and by the daemon, before any LDAP.
        for extra in [&["--check-config"][..], &[][..]] {
            let mut args = extra.to_vec();
            args.extend(["-c", s(&service), "-g", s(&global)]);
            let out = prov(&args);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            assert!(
                stderr.contains(&format!("{}: {needle}", service.display())),
                "{to}: {stderr}"
            );
        }
    }
    // The original's sections nothing here reads take any key.
    let service = write(
        dir.path(),
        "Rsnapshot.conf",
        &format!(
            "{service_text}\n[Gateway]\nHOST = localhost\nDSA_FILE = /x\n[Mail]\nSENDTO = root\n"
        ),
    );
    assert_eq!(
        prov(&["--check-config", "-c", s(&service)]).status.code(),
        Some(0)
    );
    // The global file: a misspelled retry key, and a key of the service file.
    let service = write(dir.path(), "Rsnapshot.conf", &service_text);
    for (from, to, needle) in [
        (
            "ATTEMPTS = 3\n\n[Operation Mode]",
            "ATEMPTS = 3\n\n[Operation Mode]",
            "[Global] ATEMPTS: unknown key (did you mean ATTEMPTS?)",
        ),
        (
            "[Operation Mode]\n",
            "[Operation Mode]\nWORKERS = 2\n",
            "[Operation Mode] WORKERS: unknown key (the keys of [Operation Mode] are SLEEP, \
             ATTEMPTS)",
        ),
    ] {
        let edited = global_text.replacen(from, to, 1);
        assert_ne!(edited, global_text, "{from}");
        let global = write(dir.path(), "Global.conf", &edited);
        let out = prov(&["--check-config", "-c", s(&service), "-g", s(&global)]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("{}: {needle}", global.display())),
            "{stderr}"
        );
    }
    // A key before any section.
    let service = write(
        dir.path(),
        "Rsnapshot.conf",
        &format!("SLEEP = 1\n{service_text}"),
    );
    let out = prov(&["--check-config", "-c", s(&service)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(&format!(
            "{}: SLEEP: outside any section",
            service.display()
        )),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_config_warns_of_a_password_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let text_in = std::fs::read_to_string(sample("Rsnapshot.conf")).unwrap();
    let service = write(
        dir.path(),
        "Rsnapshot.conf",
        &text_in.replacen("START_TLS = 1", "START_TLS = 0", 1),
    );
    let out = prov(&["--check-config", "-c", s(&service)]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("ADMIN_PASSWORD would cross the network unencrypted"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("(no TLS)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn the_unit_runs_without_a_global_file() {
    let unit = std::fs::read_to_string(repo_root().join("contrib/prov-backup.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        words,
        [
            "/usr/local/bin/prov-backup",
            "-c",
            "/etc/Provisioning/Backup/Rsnapshot.conf"
        ]
    );
    // The same command line with the sample in place of the installed file: good.
    let out = prov(&["--check-config", "-c", s(&sample("Rsnapshot.conf"))]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn dry_run_prints_each_action_once() {
    let tmp = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(&tmp.path().join("ldap"), true);
    let setup = Setup::new(&tmp.path().join("prov"), &slapd.url(), "");
    // The harness runs it with -d, so both the log lines and the dry run's go to stdout.
    let mut dry = setup.start(&["-r"]);
    let dn = account_dn("4000123");
    dry.wait_log(&format!(
        "DRY-RUN:  {dn}: set sstProvisioningMode added, sstProvisioningReturnValue 0"
    ));
    // The dry run writes nothing back, so the entry still asks for its account: an edit of
    // another attribute delivers it again, after its dry run finished, as the sync stream's
    // refresh does when it comes after the start-up scan's. Shown once all the same. A second
    // account added after the edit tells when the stream has delivered the edit.
    slapd.set(&dn, &[("cn", "edited during the dry run")]);
    slapd.add(&account_ldif(
        "4000124",
        "add",
        "0",
        "0",
        [0, 7, 4, 3, 0],
        "",
    ));
    dry.wait_log(&format!(
        "DRY-RUN:  {}: set sstProvisioningMode added, sstProvisioningReturnValue 0",
        account_dn("4000124")
    ));
    assert_eq!(dry.terminate(), 0);
    let log = dry.log_text();
    let actions: Vec<&str> = log.lines().filter(|l| l.contains("DRY-RUN")).collect();
    assert!(actions.len() > 5, "{log}");
    for line in &actions {
        assert!(
            line.starts_with("DRY-RUN:  "),
            "a log line repeats an action: {line}\n{log}"
        );
    }
    let mkdir = format!(
        "DRY-RUN:  mkdir {}",
        setup.home("4000123").join("incoming").display()
    );
    assert_eq!(
        actions.iter().filter(|l| l.starts_with(&mkdir)).count(),
        1,
        "{log}"
    );
    assert_eq!(
        actions
            .iter()
            .filter(|l| l.starts_with("DRY-RUN:  write ") && l.contains("/4000123.conf"))
            .count(),
        1,
        "{log}"
    );
    // The INFO lines that are not actions are still there with -d.
    assert!(log.contains("INFO:  "), "{log}");
}
