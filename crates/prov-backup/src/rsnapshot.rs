//! The per-account rsnapshot configuration: rendering it and having rsnapshot check it.

use std::path::Path;
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
        account.uid, account.dn
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

/// Runs `rsnapshot -c FILE configtest`; Ok when it says `Syntax OK`, else its output.
pub fn configtest(rsnapshot: &Path, file: &Path) -> Result<(), String> {
    let out = Command::new(rsnapshot)
        .arg("-c")
        .arg(file)
        .arg("configtest")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", rsnapshot.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.contains("Syntax OK") {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = format!("{}{}", stdout.trim(), stderr.trim());
    Err(text.split_whitespace().collect::<Vec<_>>().join(" "))
}
