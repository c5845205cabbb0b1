//! The per-account rsnapshot configuration: rendering it and having rsnapshot check it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::account::{Account, AccountPaths};

/// The configuration for one account (tab-separated, directories with a trailing slash, as
/// rsnapshot requires). `sync_first` so an interrupted run never leaves a half snapshot in a
/// level; `no_create_root` so a missing account tree makes rsnapshot fail instead of writing
/// somewhere else; the backup point without `--relative` so each snapshot mirrors `incoming/`.
pub fn render(account: &Account, paths: &AccountPaths, rsync: &Path, lock_dir: &Path) -> String {
    let home = paths.home.display();
    let mut out = String::new();
    out.push_str(&format!(
        "# rsnapshot configuration of backup account {} ({}).\n\
         # Written by prov-backup; it is rewritten when the account is modified.\n",
        account.uid,
        one_line(&account.dn)
    ));
    out.push_str("config_version\t1.2\n");
    out.push_str(&format!("snapshot_root\t{home}/.snapshots/\n"));
    out.push_str("no_create_root\t1\n");
    out.push_str(&format!("cmd_rsync\t{}\n", rsync.display()));
    out.push_str(&format!(
        "lockfile\t{}/rsnapshot-{}.pid\n",
        lock_dir.display(),
        account.uid
    ));
    out.push_str("sync_first\t1\n");
    for (level, count) in account.intervals.levels() {
        out.push_str(&format!("retain\t{level}\t{count}\n"));
    }
    out.push_str(&format!(
        "backup\t{home}/incoming/\t./\trsync_long_args=--delete --numeric-ids --delete-excluded\n"
    ));
    out
}

/// `text` with every control character shown as `\xNN`: a DN is the directory's to choose, and
/// a newline in one would end the comment it is quoted in and start a directive of its own
/// (`cmd_preexec`, run by root).
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                format!("\\x{:02X}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Why `rsnapshot configtest` did not accept a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigTestError {
    /// rsnapshot could not be started (`[Backup] RSNAPSHOT` wrong, not installed).
    #[error("cannot run {}: {source}", .rsnapshot.display())]
    Start {
        rsnapshot: PathBuf,
        source: std::io::Error,
    },
    /// It ran and did not say `Syntax OK`; `output` is what it said, on one line (the log
    /// and the directory's return value keep one line per failure).
    #[error("{output}")]
    Refused { output: String },
}

/// Runs `rsnapshot -c FILE configtest`; Ok when it says `Syntax OK`, else its output.
pub fn configtest(rsnapshot: &Path, file: &Path) -> Result<(), ConfigTestError> {
    let out = Command::new(rsnapshot)
        .arg("-c")
        .arg(file)
        .arg("configtest")
        .output()
        .map_err(|source| ConfigTestError::Start {
            rsnapshot: rsnapshot.to_path_buf(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.contains("Syntax OK") {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = format!("{}{}", stdout.trim(), stderr.trim());
    Err(ConfigTestError::Refused {
        output: text.split_whitespace().collect::<Vec<_>>().join(" "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::{Intervals, Uid};

    /// A stand-in rsnapshot: a shell script that prints `out` and exits with `code`. Written by
    /// a child `sh`, not through a descriptor of this process: another test thread forking
    /// while this process held the file open for writing would make running it fail with
    /// ETXTBSY ("Text file busy").
    fn fake_rsnapshot(dir: &Path, out: &str, code: i32) -> PathBuf {
        let path = dir.join("rsnapshot");
        let script = format!("#!/bin/sh\nprintf '{out}'\nexit {code}\n");
        let status = std::process::Command::new("sh")
            .args([
                "-c",
                "printf '%s' \"$1\" > \"$2\" && chmod 755 \"$2\"",
                "sh",
            ])
            .arg(&script)
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        path
    }

    #[test]
    fn configtest_passes_on_syntax_ok_only() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("a.conf");
        let ok = fake_rsnapshot(dir.path(), "Syntax OK\\n", 0);
        configtest(&ok, &conf).unwrap();
        let silent = fake_rsnapshot(dir.path(), "", 0);
        assert!(matches!(
            configtest(&silent, &conf),
            Err(ConfigTestError::Refused { output }) if output.is_empty()
        ));
    }

    #[test]
    fn configtest_gives_what_rsnapshot_said_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let bad = fake_rsnapshot(dir.path(), "ERROR: line 3\\n  retain  bad\\n", 1);
        let e = configtest(&bad, &dir.path().join("a.conf")).unwrap_err();
        assert_eq!(e.to_string(), "ERROR: line 3 retain bad");
    }

    #[test]
    fn configtest_names_an_rsnapshot_it_cannot_run() {
        let e = configtest(Path::new("/nonexistent/rsnapshot"), Path::new("a.conf")).unwrap_err();
        assert!(matches!(e, ConfigTestError::Start { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("cannot run /nonexistent/rsnapshot: "),
            "{e}"
        );
    }

    #[test]
    fn a_dn_cannot_add_a_directive() {
        let account = Account {
            dn: "uid=eve\ncmd_preexec\t/bin/sh -c id\r,ou=backup".into(),
            uid: Uid::parse("eve").unwrap(),
            uid_number: 1000,
            gid_number: 1000,
            intervals: Intervals {
                hourly: 0,
                daily: 7,
                weekly: 4,
                monthly: 0,
                yearly: 0,
            },
            quota_bytes: None,
            home_directory: None,
        };
        let paths = AccountPaths::new(Path::new("/srv/backup"), &account.uid);
        let text = render(
            &account,
            &paths,
            Path::new("/usr/bin/rsync"),
            Path::new("/run"),
        );
        let directives: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split('\t').next().unwrap())
            .collect();
        assert_eq!(
            directives,
            [
                "config_version",
                "snapshot_root",
                "no_create_root",
                "cmd_rsync",
                "lockfile",
                "sync_first",
                "retain",
                "retain",
                "backup"
            ]
        );
        assert!(text.contains("uid=eve\\x0Acmd_preexec\\x09/bin/sh -c id\\x0D,ou=backup"));
    }
}
