//! A backup account as its LDAP entry describes it, the selfcare rule that decides whether the
//! daemon acts on an entry, and where the account lives under the backup root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The attributes of one entry, as the directory returned them (names in any case).
pub type Attributes = HashMap<String, Vec<String>>;

/// What an entry asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Add,
    Modify,
    Delete,
}

impl Mode {
    /// The value that asks for this work.
    pub fn requested(self) -> &'static str {
        match self {
            Mode::Add => "add",
            Mode::Modify => "modify",
            Mode::Delete => "delete",
        }
    }
    /// The value written while the work runs (and left behind when it fails).
    pub fn running(self) -> &'static str {
        match self {
            Mode::Add => "adding",
            Mode::Modify => "modifying",
            Mode::Delete => "deleting",
        }
    }
    /// The value written when the work is done.
    pub fn done(self) -> &'static str {
        match self {
            Mode::Add => "added",
            Mode::Modify => "modified",
            Mode::Delete => "deleted",
        }
    }
}

/// The decision of the selfcare rule for one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Act now.
    Work(Mode),
    /// Asked for, but its execution date (YYYYMMDD) is after today.
    Later(Mode, u32),
    /// Asked for, but the request itself is malformed: claimed and failed with a message.
    Bad(Mode, EntryError),
    /// Nothing to do: not a provisioning entry, already done, in progress, or not "0".
    Ignore,
}

/// Why an entry cannot be worked on.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{attribute}: {why}")]
pub struct EntryError {
    pub attribute: &'static str,
    pub why: String,
}

fn err(attribute: &'static str, why: impl Into<String>) -> EntryError {
    EntryError {
        attribute,
        why: why.into(),
    }
}

/// The single value of an attribute, looked up without regard to case.
pub fn single<'a>(attrs: &'a Attributes, name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first())
        .map(String::as_str)
}

/// The selfcare rule (research/prov-backup.md §2), with one deliberate change: the original
/// acts only when sstProvisioningExecutionDate is 0 or exactly today, so an entry whose date
/// passed while the daemon was down is never done; we act when it is 0 or not after today.
pub fn decide(attrs: &Attributes, today: u32) -> Decision {
    let mode = match single(attrs, "sstProvisioningMode") {
        Some("add") => Mode::Add,
        Some("modify") => Mode::Modify,
        Some("delete") => Mode::Delete,
        _ => return Decision::Ignore,
    };
    if single(attrs, "sstProvisioningState") != Some("0") {
        return Decision::Ignore;
    }
    let Some(text) = single(attrs, "sstProvisioningExecutionDate") else {
        return Decision::Bad(mode, err("sstProvisioningExecutionDate", "missing"));
    };
    let date = match text.parse::<u32>() {
        Ok(d) if d == 0 || (19700101..=99991231).contains(&d) => d,
        _ => {
            return Decision::Bad(
                mode,
                err(
                    "sstProvisioningExecutionDate",
                    format!("{text:?} is not 0 or YYYYMMDD"),
                ),
            )
        }
    };
    if date > today {
        return Decision::Later(mode, date);
    }
    Decision::Work(mode)
}

/// A uid that is safe to use as a path component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uid(String);

impl Uid {
    /// Accepts letters, digits, `_`, `-` and `.` (not first), at most 64 bytes: nothing that can
    /// climb out of the backup root or hide in a listing.
    pub fn parse(s: &str) -> Result<Uid, EntryError> {
        let bad = |why: &str| err("uid", format!("{s:?} {why}"));
        if s.is_empty() {
            return Err(bad("is empty"));
        }
        if s.len() > 64 {
            return Err(bad("is longer than 64 bytes"));
        }
        if s.starts_with('.') || s.starts_with('-') || s.ends_with('.') {
            return Err(bad("starts with '.' or '-' or ends with '.'"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(bad(
                "has a character other than letters, digits, '_', '-' and '.'",
            ));
        }
        Ok(Uid(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where one account lives (research §1, `getHomeDir` plus the jailkit layout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountPaths {
    /// `<root>/<last char>/<last 3>/<first 3 of last 6>/<uid>`: removed whole on delete.
    pub account_dir: PathBuf,
    /// `<account_dir>/chroot`: the jail the login is confined to.
    pub jail: PathBuf,
    /// `<jail>/home/<uid>`: holds incoming/, .snapshots/, .ssh/, .sepiola_backup/.
    pub home: PathBuf,
}

impl AccountPaths {
    /// The layout under `root`. Short uids are padded on the left with `0` to six characters
    /// for the hash levels (uid `123` lives in `3/123/000/123`).
    pub fn new(root: &Path, uid: &Uid) -> AccountPaths {
        let s = uid.as_str();
        let padded = format!("{s:0>6}");
        let n = padded.len();
        let last1 = &padded[n - 1..];
        let last3 = &padded[n - 3..];
        let mid3 = &padded[n - 6..n - 3];
        let account_dir = root.join(last1).join(last3).join(mid3).join(s);
        let jail = account_dir.join("chroot");
        let home = jail.join("home").join(s);
        AccountPaths {
            account_dir,
            jail,
            home,
        }
    }

    /// The login home as LDAP's homeDirectory writes it (jailkit's `/./` marks the jail).
    pub fn home_directory(&self) -> String {
        let jail = self.jail.display().to_string();
        let rel = self.home.strip_prefix(&self.jail).unwrap_or(&self.home);
        format!("{jail}/./{}", rel.display())
    }
}

/// Snapshot levels to keep, most frequent first (sstBackupInterval*, 0–99; 0 = none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intervals {
    pub hourly: u8,
    pub daily: u8,
    pub weekly: u8,
    pub monthly: u8,
    pub yearly: u8,
}

impl Intervals {
    /// The levels with a non-zero count, in rsnapshot's order.
    pub fn levels(&self) -> Vec<(&'static str, u8)> {
        [
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

/// Everything the work on disk needs from an account entry, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub dn: String,
    pub uid: Uid,
    pub uid_number: u32,
    pub gid_number: u32,
    pub intervals: Intervals,
    /// sstQuota in bytes; None when the entry has none.
    pub quota_bytes: Option<u64>,
    pub home_directory: Option<String>,
}

fn number<T: std::str::FromStr>(attrs: &Attributes, name: &'static str) -> Result<T, EntryError> {
    let v = single(attrs, name).ok_or_else(|| err(name, "missing"))?;
    v.parse::<T>()
        .map_err(|_| err(name, format!("{v:?} is not a number in range")))
}

/// The uid of an entry: the `uid` attribute, or the `uid=` RDN of its DN.
pub fn entry_uid(dn: &str, attrs: &Attributes) -> Result<Uid, EntryError> {
    if let Some(u) = single(attrs, "uid") {
        return Uid::parse(u);
    }
    let rdn = dn.split(',').next().unwrap_or("");
    match rdn.split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("uid") => Uid::parse(v.trim()),
        _ => Err(err("uid", "missing")),
    }
}

impl Account {
    /// Checks an entry for add and modify: uid, uidNumber, gidNumber (neither 0), the five
    /// intervals (0–99, at least one set, the most frequent ≥ 2 when more levels follow, as
    /// rsnapshot requires) and sstQuota when present.
    pub fn from_entry(dn: &str, attrs: &Attributes) -> Result<Account, EntryError> {
        let uid = entry_uid(dn, attrs)?;
        let uid_number: u32 = number(attrs, "uidNumber")?;
        let gid_number: u32 = number(attrs, "gidNumber")?;
        if uid_number == 0 {
            return Err(err("uidNumber", "0 (root) cannot own a backup account"));
        }
        if gid_number == 0 {
            return Err(err("gidNumber", "0 (root) cannot own a backup account"));
        }
        let interval = |name: &'static str| -> Result<u8, EntryError> {
            let v: i64 = number(attrs, name)?;
            if !(0..=99).contains(&v) {
                return Err(err(name, format!("{v} is out of range 0-99")));
            }
            Ok(v as u8)
        };
        let intervals = Intervals {
            hourly: interval("sstBackupIntervalHourly")?,
            daily: interval("sstBackupIntervalDaily")?,
            weekly: interval("sstBackupIntervalWeekly")?,
            monthly: interval("sstBackupIntervalMonthly")?,
            yearly: interval("sstBackupIntervalYearly")?,
        };
        let levels = intervals.levels();
        if levels.is_empty() {
            return Err(err(
                "sstBackupInterval*",
                "all five intervals are 0: nothing would be kept",
            ));
        }
        if levels.len() > 1 && levels[0].1 < 2 {
            return Err(err(
                "sstBackupInterval*",
                format!(
                    "{} is 1 but less frequent levels follow; rsnapshot needs at least 2",
                    levels[0].0
                ),
            ));
        }
        let quota_bytes = match single(attrs, "sstQuota") {
            None => None,
            Some(v) => Some(
                v.parse::<u64>()
                    .map_err(|_| err("sstQuota", format!("{v:?} is not a byte count")))?,
            ),
        };
        Ok(Account {
            dn: dn.to_owned(),
            uid,
            uid_number,
            gid_number,
            intervals,
            quota_bytes,
            home_directory: single(attrs, "homeDirectory").map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        let mut a = Attributes::new();
        for (k, v) in pairs {
            a.entry((*k).to_owned()).or_default().push((*v).to_owned());
        }
        a
    }

    fn example() -> Attributes {
        attrs(&[
            ("uid", "4000123"),
            ("uidNumber", "4000123"),
            ("gidNumber", "4000123"),
            ("sstBackupIntervalHourly", "0"),
            ("sstBackupIntervalDaily", "7"),
            ("sstBackupIntervalWeekly", "4"),
            ("sstBackupIntervalMonthly", "3"),
            ("sstBackupIntervalYearly", "0"),
            ("sstQuota", "1073741824"),
            ("sstProvisioningMode", "add"),
            ("sstProvisioningState", "0"),
            ("sstProvisioningExecutionDate", "0"),
        ])
    }

    #[test]
    fn home_path_rule_of_the_original() {
        let p = AccountPaths::new(Path::new("/var/backup"), &Uid::parse("3723707").unwrap());
        assert_eq!(p.account_dir, Path::new("/var/backup/7/707/723/3723707"));
        assert_eq!(
            p.home_directory(),
            "/var/backup/7/707/723/3723707/chroot/./home/3723707"
        );
        let p = AccountPaths::new(Path::new("/var/backup"), &Uid::parse("4000123").unwrap());
        assert_eq!(p.account_dir, Path::new("/var/backup/3/123/000/4000123"));
        let p = AccountPaths::new(Path::new("/b"), &Uid::parse("12").unwrap());
        assert_eq!(p.account_dir, Path::new("/b/2/012/000/12"));
    }

    #[test]
    fn selfcare_rule() {
        let today = 20261122;
        let mut a = example();
        assert_eq!(decide(&a, today), Decision::Work(Mode::Add));
        a.insert(
            "sstProvisioningExecutionDate".into(),
            vec!["20261122".into()],
        );
        assert_eq!(decide(&a, today), Decision::Work(Mode::Add));
        a.insert(
            "sstProvisioningExecutionDate".into(),
            vec!["20250101".into()],
        );
        assert_eq!(decide(&a, today), Decision::Work(Mode::Add));
        a.insert(
            "sstProvisioningExecutionDate".into(),
            vec!["20261123".into()],
        );
        assert_eq!(decide(&a, today), Decision::Later(Mode::Add, 20261123));
        a.insert("sstProvisioningExecutionDate".into(), vec!["0".into()]);
        a.insert(
            "sstProvisioningState".into(),
            vec!["20261122T101500Z".into()],
        );
        assert_eq!(decide(&a, today), Decision::Ignore);
        a.insert("sstProvisioningState".into(), vec!["0".into()]);
        for m in ["adding", "added", "modifying", "deleted", "bogus"] {
            a.insert("sstProvisioningMode".into(), vec![m.into()]);
            assert_eq!(decide(&a, today), Decision::Ignore, "{m}");
        }
        a.insert("sstProvisioningMode".into(), vec!["delete".into()]);
        assert_eq!(decide(&a, today), Decision::Work(Mode::Delete));
        a.insert("sstProvisioningExecutionDate".into(), vec!["12".into()]);
        assert!(matches!(decide(&a, today), Decision::Bad(Mode::Delete, _)));
    }

    #[test]
    fn account_checks() {
        let a = Account::from_entry("uid=4000123,ou=accounts", &example()).unwrap();
        assert_eq!(
            a.intervals.levels(),
            vec![("daily", 7), ("weekly", 4), ("monthly", 3)]
        );
        assert_eq!(a.quota_bytes, Some(1073741824));
        for (k, v, needle) in [
            ("uid", "../etc", "uid"),
            ("uid", "a/b", "uid"),
            ("uid", "..", "uid"),
            ("uidNumber", "0", "root"),
            ("uidNumber", "x", "uidNumber"),
            ("sstBackupIntervalDaily", "100", "out of range"),
            ("sstBackupIntervalDaily", "-1", "out of range"),
            ("sstBackupIntervalDaily", "1", "at least 2"),
            ("sstQuota", "-5", "sstQuota"),
        ] {
            let mut e = example();
            e.insert(k.into(), vec![v.into()]);
            let msg = Account::from_entry("uid=x", &e).unwrap_err().to_string();
            assert!(msg.contains(needle), "{k}={v}: {msg}");
        }
        let mut e = example();
        e.remove("gidNumber");
        assert_eq!(
            Account::from_entry("uid=x", &e).unwrap_err().to_string(),
            "gidNumber: missing"
        );
    }

    proptest! {
        /// Whatever the uid, an accepted one stays strictly inside the root, four levels down.
        #[test]
        fn accepted_uids_stay_inside_the_root(s in "\\PC{0,80}") {
            if let Ok(uid) = Uid::parse(&s) {
                let root = Path::new("/srv/backup");
                let p = AccountPaths::new(root, &uid);
                let rel = p.account_dir.strip_prefix(root).unwrap();
                let parts: Vec<_> = rel.components().collect();
                prop_assert_eq!(parts.len(), 4);
                for c in parts {
                    prop_assert!(matches!(c, std::path::Component::Normal(_)));
                }
                prop_assert_eq!(p.account_dir.file_name().unwrap().to_str().unwrap(), s.as_str());
            }
        }
    }
}
