//! The work on disk for add, modify and delete: the account tree under the backup root, the
//! rsnapshot configuration and the quota. Nothing outside the backup root (and the rsnapshot
//! configuration directory) is ever created or removed. In a dry run every step is printed
//! (`DRY-RUN:  …`) and nothing changes.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

use crate::account::{Account, AccountPaths, EntryError, Uid};
use crate::config::{Backup, QuotaMode};
use crate::rsnapshot;

/// Why the work for one entry failed; `return_value` is what goes into
/// sstProvisioningReturnValue.
#[derive(Debug, Error)]
pub enum WorkError {
    #[error("bad entry: {0}")]
    Entry(#[from] EntryError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rsnapshot configtest refused {path}: {source}")]
    ConfigTest {
        path: PathBuf,
        source: rsnapshot::ConfigTestError,
    },
    #[error("quota: {0}")]
    Quota(#[from] QuotaError),
    #[error("refused: {0}")]
    Refused(String),
    #[error("jail: {0}")]
    Jail(#[from] JailError),
}

/// Why an external tool (the jail command, setquota) did not do its job. The message holds
/// the command line as the log shows it, so an administrator can run it by hand.
#[derive(Debug, Error)]
pub enum ToolError {
    /// The program could not be started (missing, not executable).
    #[error("cannot run {shown}: {source}")]
    Start {
        shown: String,
        source: std::io::Error,
    },
    /// It ran and exited non-zero; `stderr` is what it said, trimmed.
    #[error("{shown} failed ({status}): {stderr}")]
    Failed {
        shown: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Why the jail of an account could not be made.
#[derive(Debug, Error)]
pub enum JailError {
    /// `JAIL_INIT` is set but names no program.
    #[error("JAIL_INIT is empty")]
    Empty,
    #[error(transparent)]
    Tool(#[from] ToolError),
}

/// Why the quota of an account could not be set.
#[derive(Debug, Error)]
pub enum QuotaError {
    /// The mount holding the backup root is needed to give setquota its file system.
    #[error("cannot read the mount table: {0}")]
    MountTable(#[source] MountError),
    #[error(transparent)]
    Tool(#[from] ToolError),
}

/// Why the mount holding a path was not found in /proc/self/mountinfo.
#[derive(Debug, Error)]
pub enum MountError {
    #[error("{0}")]
    Read(#[source] std::io::Error),
    /// No line of the table is a prefix of the path (a broken mount namespace).
    #[error("no mount holds {}", .0.display())]
    NoMount(PathBuf),
}

impl WorkError {
    /// 1 bad entry, 2 file-system error, 3 rsnapshot refused the configuration, 4 quota,
    /// 5 refused for safety (path not a plain directory, tree missing), 6 jail command.
    pub fn return_value(&self) -> i32 {
        match self {
            WorkError::Entry(_) => 1,
            WorkError::Io { .. } => 2,
            WorkError::ConfigTest { .. } => 3,
            WorkError::Quota(_) => 4,
            WorkError::Refused(_) => 5,
            WorkError::Jail(_) => 6,
        }
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> WorkError {
    let path = path.to_owned();
    move |source| WorkError::Io { op, path, source }
}

/// Does the work for one account entry at a time; cheap to share between workers.
#[derive(Clone, Debug)]
pub struct Provisioner {
    backup: Backup,
    dry_run: bool,
}

/// Who owns a directory of the account tree, and its mode.
#[derive(Clone, Copy)]
struct Owner {
    uid: Option<u32>,
    gid: Option<u32>,
    mode: u32,
}

const ROOT_OWNED: Owner = Owner {
    uid: None,
    gid: None,
    mode: 0o755,
};

impl Provisioner {
    pub fn new(backup: Backup, dry_run: bool) -> Provisioner {
        Provisioner { backup, dry_run }
    }

    /// Runs one step, or prints it in a dry run.
    fn step(
        &self,
        what: String,
        f: impl FnOnce() -> Result<(), WorkError>,
    ) -> Result<(), WorkError> {
        if self.dry_run {
            crate::log::dry_run(&what);
            tracing::info!(target: crate::log::DRY_RUN_TARGET, "DRY-RUN:  {what}");
            return Ok(());
        }
        tracing::debug!("{what}");
        f()
    }

    /// The backup root, which must exist: a missing root usually means an unmounted volume,
    /// and creating it would fill the wrong file system.
    fn root(&self) -> Result<PathBuf, WorkError> {
        let root = &self.backup.root;
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => fs::canonicalize(root).map_err(io("resolve", root)),
            Ok(_) => Err(WorkError::Refused(format!(
                "backup root {} is not a directory",
                root.display()
            ))),
            Err(e) => Err(WorkError::Io {
                op: "open backup root",
                path: root.clone(),
                source: e,
            }),
        }
    }

    /// Creates add's tree, the jail (when JAIL_INIT is set), the rsnapshot configuration and
    /// the quota. Runs again without harm on an existing account.
    pub fn add(&self, account: &Account) -> Result<(), WorkError> {
        let root = self.root()?;
        let paths = AccountPaths::new(&root, &account.uid);
        self.warn_home_directory(account, &paths);
        self.create_tree(&root, &paths, account)?;
        if let Some(cmd) = &self.backup.jail_init {
            self.run_jail_init(cmd, &paths.jail)?;
        }
        self.write_config(account, &paths)?;
        self.set_quota(&root, account.uid_number, account.quota_bytes)
    }

    /// Rewrites the rsnapshot configuration and the quota; the tree must exist.
    pub fn modify(&self, account: &Account) -> Result<(), WorkError> {
        let root = self.root()?;
        let paths = AccountPaths::new(&root, &account.uid);
        self.warn_home_directory(account, &paths);
        if !self.dry_run && !real_dir_below(&root, &paths.home)? {
            return Err(WorkError::Refused(format!(
                "account tree {} is missing; set sstProvisioningMode to add to create it",
                paths.home.display()
            )));
        }
        self.write_config(account, &paths)?;
        self.set_quota(&root, account.uid_number, account.quota_bytes)
    }

    /// Removes the rsnapshot configuration, the account tree and the quota. An account that
    /// is already gone is not an error.
    pub fn delete(&self, uid: &Uid, uid_number: Option<u32>) -> Result<(), WorkError> {
        let root = self.root()?;
        let paths = AccountPaths::new(&root, uid);
        let conf = self.config_path(uid);
        if fs::symlink_metadata(&conf).is_ok() {
            self.step(format!("remove {}", conf.display()), || {
                fs::remove_file(&conf).map_err(io("remove", &conf))?;
                sync_dir(&self.backup.rsnapshot_config_dir)
            })?;
        }
        if real_dir_below(&root, &paths.account_dir)? {
            let dir = &paths.account_dir;
            self.step(format!("remove tree {}", dir.display()), || {
                // std's remove_dir_all does not follow symlinks inside the tree.
                fs::remove_dir_all(dir).map_err(io("remove tree", dir))
            })?;
            // Tidy the hash levels that became empty; a level still in use stays.
            if !self.dry_run {
                let mut level = dir.parent();
                while let Some(d) = level {
                    if d == root || fs::remove_dir(d).is_err() {
                        break;
                    }
                    level = d.parent();
                }
            }
        } else {
            tracing::info!(
                "{}: no account tree at {}",
                uid,
                paths.account_dir.display()
            );
        }
        match uid_number {
            Some(n) if n != 0 => self.set_quota(&root, n, Some(0)),
            _ => {
                tracing::info!("{uid}: no uidNumber in the entry; quota left as it is");
                Ok(())
            }
        }
    }

    fn warn_home_directory(&self, account: &Account, paths: &AccountPaths) {
        if let Some(hd) = &account.home_directory {
            let ours = paths.home_directory();
            if *hd != ours {
                tracing::warn!(
                    "{}: homeDirectory {hd} differs from the account's home {ours}; logins will not find it",
                    account.uid
                );
            }
        }
    }

    fn create_tree(&self, root: &Path, paths: &AccountPaths, a: &Account) -> Result<(), WorkError> {
        let user = Owner {
            uid: Some(a.uid_number),
            gid: Some(a.gid_number),
            mode: 0o700,
        };
        // Root owns everything down to the home so the user cannot swap .snapshots for a
        // symlink and steer root's rsnapshot elsewhere; the group may read the snapshots.
        let readable = Owner {
            uid: None,
            gid: Some(a.gid_number),
            mode: 0o750,
        };
        let mut dirs: Vec<(PathBuf, Owner)> = Vec::new();
        let mut levels: Vec<PathBuf> = paths
            .account_dir
            .ancestors()
            .take_while(|p| *p != root)
            .map(Path::to_owned)
            .collect();
        levels.reverse();
        for l in levels {
            dirs.push((l, ROOT_OWNED));
        }
        dirs.push((paths.jail.clone(), ROOT_OWNED));
        dirs.push((paths.jail.join("home"), ROOT_OWNED));
        dirs.push((paths.home.clone(), readable));
        dirs.push((paths.home.join(".snapshots"), readable));
        for sub in ["incoming", ".ssh", ".sepiola_backup"] {
            dirs.push((paths.home.join(sub), user));
        }
        for (dir, owner) in dirs {
            self.ensure_dir(&dir, owner)?;
        }
        Ok(())
    }

    fn ensure_dir(&self, dir: &Path, owner: Owner) -> Result<(), WorkError> {
        let who = match (owner.uid, owner.gid) {
            (Some(u), Some(g)) => format!(" owner {u}:{g}"),
            (None, Some(g)) => format!(" group {g}"),
            _ => String::new(),
        };
        self.step(
            format!("mkdir {} mode {:o}{who}", dir.display(), owner.mode),
            || {
                match fs::symlink_metadata(dir) {
                    Ok(m) if m.file_type().is_dir() => {}
                    Ok(_) => {
                        return Err(WorkError::Refused(format!(
                            "{} exists and is not a directory (a symlink or a file)",
                            dir.display()
                        )))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        fs::DirBuilder::new()
                            .mode(owner.mode)
                            .create(dir)
                            .map_err(io("mkdir", dir))?;
                    }
                    Err(e) => return Err(io("stat", dir)(e)),
                }
                fs::set_permissions(dir, fs::Permissions::from_mode(owner.mode))
                    .map_err(io("chmod", dir))?;
                if owner.uid.is_some() || owner.gid.is_some() {
                    std::os::unix::fs::lchown(dir, owner.uid, owner.gid)
                        .map_err(io("chown", dir))?;
                }
                Ok(())
            },
        )
    }

    fn run_jail_init(&self, cmd: &[String], jail: &Path) -> Result<(), WorkError> {
        let shown = format!("{} {}", cmd.join(" "), jail.display());
        self.step(format!("run {shown}"), || {
            let (prog, args) = cmd.split_first().ok_or(JailError::Empty)?;
            run_tool(Command::new(prog).args(args).arg(jail), &shown).map_err(JailError::from)?;
            Ok(())
        })
    }

    fn config_path(&self, uid: &Uid) -> PathBuf {
        self.backup.rsnapshot_config_dir.join(format!("{uid}.conf"))
    }

    /// Writes the configuration under a temporary name, has rsnapshot check it and only then
    /// renames it into place, so a configuration rsnapshot refuses never replaces a good one.
    fn write_config(&self, a: &Account, paths: &AccountPaths) -> Result<(), WorkError> {
        let dir = &self.backup.rsnapshot_config_dir;
        let conf = self.config_path(&a.uid);
        let tmp = dir.join(format!(".{}.conf.tmp", a.uid));
        let text = rsnapshot::render(
            a,
            paths,
            &self.backup.rsync,
            &self.backup.rsnapshot_lock_dir,
        );
        if self.dry_run {
            crate::log::dry_run(format_args!(
                "write {} and check it with rsnapshot configtest:",
                conf.display()
            ));
            for line in text.lines() {
                crate::log::dry_run(format_args!("    {line}"));
            }
            tracing::info!(target: crate::log::DRY_RUN_TARGET, "DRY-RUN:  write {}", conf.display());
            return Ok(());
        }
        tracing::debug!("write {}", conf.display());
        fs::create_dir_all(dir).map_err(io("mkdir", dir))?;
        {
            let mut f = fs::File::create(&tmp).map_err(io("create", &tmp))?;
            f.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("fsync", &tmp))?;
        }
        if let Err(source) = rsnapshot::configtest(&self.backup.rsnapshot, &tmp) {
            let _ = fs::remove_file(&tmp);
            return Err(WorkError::ConfigTest { path: conf, source });
        }
        fs::rename(&tmp, &conf).map_err(io("rename", &conf))?;
        sync_dir(dir)
    }

    fn set_quota(&self, root: &Path, uid_number: u32, bytes: Option<u64>) -> Result<(), WorkError> {
        let Some(bytes) = bytes else {
            tracing::info!("uid {uid_number}: the entry has no sstQuota; no quota set");
            return Ok(());
        };
        if self.backup.quota == QuotaMode::Never {
            tracing::debug!("uid {uid_number}: quotas are off (QUOTA = never)");
            return Ok(());
        }
        let mount = mount_of(root).map_err(QuotaError::MountTable)?;
        if self.backup.quota == QuotaMode::Auto && !mount.user_quota {
            tracing::info!(
                "uid {uid_number}: quota of {bytes} bytes not set: {} is not mounted with user quotas \
                 (mount it with usrquota, or set QUOTA = never in [Backup])",
                mount.point.display()
            );
            return Ok(());
        }
        // setquota counts 1 KiB blocks; round up so the limit is never below what was sold.
        let blocks = bytes.div_ceil(1024).to_string();
        let cmd = &self.backup.quota_command;
        let shown = format!(
            "{} -u {uid_number} {blocks} {blocks} 0 0 {}",
            cmd.display(),
            mount.point.display()
        );
        self.step(format!("run {shown}"), || {
            run_tool(
                Command::new(cmd)
                    .arg("-u")
                    .arg(uid_number.to_string())
                    .args([&blocks, &blocks, "0", "0"])
                    .arg(&mount.point),
                &shown,
            )
            .map_err(QuotaError::from)?;
            Ok(())
        })
    }
}

/// Runs an external tool; Err with what it said when it cannot start or exits non-zero.
fn run_tool(cmd: &mut Command, shown: &str) -> Result<(), ToolError> {
    let out = cmd.output().map_err(|source| ToolError::Start {
        shown: shown.to_string(),
        source,
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(ToolError::Failed {
        shown: shown.to_string(),
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Is `path` an existing plain directory, reached from `root` through plain directories only?
/// A symlink anywhere below the root is refused: it could point outside the backup root.
fn real_dir_below(root: &Path, path: &Path) -> Result<bool, WorkError> {
    let rel = path.strip_prefix(root).map_err(|_| {
        WorkError::Refused(format!("{} is outside the backup root", path.display()))
    })?;
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(n) => cur.push(n),
            _ => {
                return Err(WorkError::Refused(format!(
                    "{} is not a plain path",
                    path.display()
                )))
            }
        }
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(WorkError::Refused(format!(
                    "{} is not a directory (a symlink or a file); not touching it",
                    cur.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io("stat", &cur)(e)),
        }
    }
    Ok(true)
}

fn sync_dir(dir: &Path) -> Result<(), WorkError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

/// The mount holding a path, from /proc/self/mountinfo.
struct Mount {
    point: PathBuf,
    user_quota: bool,
}

fn unescape_mount(s: &str) -> String {
    // mountinfo writes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mount_of(path: &Path) -> Result<Mount, MountError> {
    let table = fs::read_to_string("/proc/self/mountinfo").map_err(MountError::Read)?;
    let mut best: Option<Mount> = None;
    for line in table.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 10 {
            continue;
        }
        let point = PathBuf::from(unescape_mount(fields[4]));
        if !path.starts_with(&point) {
            continue;
        }
        let sep = fields
            .iter()
            .position(|f| *f == "-")
            .unwrap_or(fields.len());
        let mut options: Vec<&str> = fields[5].split(',').collect();
        if let Some(sup) = fields.get(sep + 3) {
            options.extend(sup.split(','));
        }
        let user_quota = options.iter().any(|o| {
            matches!(*o, "usrquota" | "quota" | "uquota" | "uqnoenforce")
                || o.starts_with("usrjquota=")
        });
        if best
            .as_ref()
            .is_none_or(|b| point.as_os_str().len() >= b.point.as_os_str().len())
        {
            best = Some(Mount { point, user_quota });
        }
    }
    best.ok_or_else(|| MountError::NoMount(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_names_are_unescaped() {
        assert_eq!(unescape_mount("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert_eq!(unescape_mount("/end\\04"), "/end\\04");
    }

    #[test]
    fn a_tool_that_cannot_start_is_named_with_why() {
        let e = run_tool(&mut Command::new("/nonexistent/setquota"), "setquota -u 7").unwrap_err();
        assert!(matches!(e, ToolError::Start { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.starts_with("cannot run setquota -u 7: "), "{text}");
        assert!(text.contains("No such file"), "{text}");
    }

    #[test]
    fn a_failing_tool_gives_its_status_and_what_it_said() {
        let e = run_tool(
            Command::new("sh").args(["-c", "echo ' no quota here ' >&2; exit 3"]),
            "setquota -u 7",
        )
        .unwrap_err();
        assert!(matches!(e, ToolError::Failed { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "setquota -u 7 failed (exit status: 3): no quota here"
        );
        run_tool(Command::new("sh").args(["-c", "exit 0"]), "true").unwrap();
    }

    #[test]
    fn work_errors_keep_their_words_and_return_values() {
        let jail = WorkError::from(JailError::Empty);
        assert_eq!(jail.to_string(), "jail: JAIL_INIT is empty");
        assert_eq!(jail.return_value(), 6);
        let quota = WorkError::from(QuotaError::MountTable(MountError::NoMount("/x".into())));
        assert_eq!(
            quota.to_string(),
            "quota: cannot read the mount table: no mount holds /x"
        );
        assert_eq!(quota.return_value(), 4);
        let refused = WorkError::ConfigTest {
            path: "/etc/r/a.conf".into(),
            source: rsnapshot::ConfigTestError::Refused {
                output: "ERROR: bad".into(),
            },
        };
        assert_eq!(
            refused.to_string(),
            "rsnapshot configtest refused /etc/r/a.conf: ERROR: bad"
        );
        assert_eq!(refused.return_value(), 3);
    }

    #[test]
    fn the_root_mount_holds_everything() {
        let m = mount_of(Path::new("/")).unwrap();
        assert_eq!(m.point, Path::new("/"));
    }
}
