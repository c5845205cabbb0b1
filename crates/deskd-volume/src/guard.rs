//! Checks made before a desktop is opened, created or read by an admin command (`deskd serve`,
//! `rebuild`, `backup`, `restore`):
//!
//! * [`require_admin`]: reading a volume's desktop needs root, the volume owner (the owner of
//!   the root directory) or the user that owns the desktop (deskd's own user); anyone else is
//!   refused before anything is read, whatever the file's mode says.
//! * Nesting: a volume root inside another volume ([`enclosing_volume`]: an ancestor holds a
//!   `.Desktop`) or around one ([`volume_below`]: a directory below holds one) would give the
//!   same objects two sets of IDs and have two desktops fight over their ID mirrors.
//! * [`world_writable`]: a root every user may write (`/tmp`) lets any user plant files where
//!   deskd keeps its own (`.Desktop`, `.Desktop-rebuild`, `.rsrc`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::DESKTOP_FILE;

/// Why [`require_admin`] refused an admin command.
///
/// The I/O error is part of the message and deliberately not a `source`, as in
/// [`crate::VolumeError`]: printed with anyhow's `{:#}` it would otherwise show twice.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The volume root could not be examined (to learn its owner).
    #[error("{}: {error}", root.display())]
    Root {
        /// The volume root.
        root: PathBuf,
        /// Why it could not be examined.
        error: std::io::Error,
    },
    /// The user running the command is neither root, the volume owner nor the desktop's owner.
    #[error(
        "{}: {what} reads the volume's desktop, which only root or the volume owner (uid \
         {owner}) may do; you are uid {me}",
        root.display()
    )]
    NotAdmin {
        /// The volume root.
        root: PathBuf,
        /// The command that was refused ("backup", "rebuild", ...).
        what: String,
        /// The volume owner's uid.
        owner: u32,
        /// The uid that asked.
        me: u32,
    },
}

/// Why a `.Desktop` below a volume root is not another volume's desktop
/// ([`desktop_counts`]), for the warning [`planted_message`] makes of it.
#[derive(Debug, thiserror::Error)]
pub enum NotADesktop {
    /// `lstat` of the file failed.
    #[error("cannot examine it: {0}")]
    Unexamined(std::io::Error),
    /// Its folder could not be opened without following links.
    #[error("cannot open its folder: {0}")]
    FolderUnopened(std::io::Error),
    /// A symbolic link someone other than root or deskd's user made.
    #[error("a symbolic link owned by uid {0}, not root or deskd's user")]
    ForeignLink(u32),
    /// A folder, device or other non-file.
    #[error("not a file")]
    NotAFile,
    /// A file whose owner could not have made a desktop here.
    #[error("owned by uid {0}, which is neither root, deskd's user nor the volume owner")]
    ForeignOwner(u32),
    /// A file without the SQLite header.
    #[error("not an SQLite database")]
    NotSqlite,
}

/// The effective uid of this process.
fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Refuse (with the message to show) when the user running this may not read the desktop of
/// the volume at `root`: only root, the volume owner and the owner of the desktop file itself
/// (the user deskd runs as) may. `what` names the command for the message.
pub fn require_admin(root: &Path, desktop: &Path, what: &str) -> Result<(), AdminError> {
    let me = euid();
    if me == 0 {
        return Ok(());
    }
    let owner = std::fs::metadata(root)
        .map_err(|error| AdminError::Root {
            root: root.to_path_buf(),
            error,
        })?
        .uid();
    let desktop_owner = std::fs::metadata(desktop).map(|m| m.uid()).ok();
    if me == owner || desktop_owner == Some(me) {
        return Ok(());
    }
    Err(AdminError::NotAdmin {
        root: root.to_path_buf(),
        what: what.to_string(),
        owner,
        me,
    })
}

/// Why this process may not read the desktop file at `desktop`, when the kernel refuses it
/// read access: `you may not read it (owned by uid N, mode 0600)`. A volume owner passes
/// [`require_admin`] but cannot read the 0600 desktop a root-run deskd made. `None` when it may
/// read it, or the file cannot be examined. Nothing is opened.
pub fn unreadable_desktop(desktop: &Path) -> Option<String> {
    use rustix::io::Errno;
    match rustix::fs::access(desktop, rustix::fs::Access::READ_OK) {
        // What io::ErrorKind::PermissionDenied stands for.
        Err(Errno::ACCESS | Errno::PERM) => {}
        // Readable, or not to be examined (a NUL in the path, no such file, ...).
        _ => return None,
    }
    let m = std::fs::metadata(desktop).ok()?;
    Some(format!(
        "you may not read it (owned by uid {}, mode {:04o})",
        m.uid(),
        m.mode() & 0o7777
    ))
}

/// The nearest ancestor of `root` (not `root` itself) that is a volume root: it holds a
/// `.Desktop` (a file, or the symlink to a relocated desktop). `root` must be absolute.
pub fn enclosing_volume(root: &Path) -> Option<PathBuf> {
    root.parent().and_then(crate::locate_volume)
}

/// The first bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Whether the `.Desktop` in the directory open as `dir` (below a volume root owned by
/// `outer_owner`) could be another volume's desktop, so that the nesting rule applies to it.
/// Only root, deskd's own user (this process's) and the outer volume's owner can make desktops
/// there: a `.Desktop` anyone else made in a folder of theirs is planted, and must not make
/// admin tools refuse the whole volume. So it counts only when it is a regular file owned by
/// one of them that starts with the SQLite header, or a relocation symlink owned by root or
/// deskd's user. `Err` says why it does not count (for a warning line).
pub fn desktop_counts(
    dir: std::os::fd::BorrowedFd<'_>,
    outer_owner: u32,
) -> Result<(), NotADesktop> {
    use std::io::Read;
    let name = std::ffi::CString::new(DESKTOP_FILE).expect("no NUL");
    let st = crate::rsrc::lstat_at(dir, &name).map_err(NotADesktop::Unexamined)?;
    let me = euid();
    let kind = st.st_mode & libc::S_IFMT;
    if kind == libc::S_IFLNK {
        return if st.st_uid == 0 || st.st_uid == me {
            Ok(())
        } else {
            Err(NotADesktop::ForeignLink(st.st_uid))
        };
    }
    if kind != libc::S_IFREG {
        return Err(NotADesktop::NotAFile);
    }
    if st.st_uid != 0 && st.st_uid != me && st.st_uid != outer_owner {
        return Err(NotADesktop::ForeignOwner(st.st_uid));
    }
    let Ok(mut file) = crate::rsrc::open_at(dir, &name, libc::O_RDONLY | libc::O_NONBLOCK, 0)
    else {
        // A desktop of a trusted owner this process may not read: it counts.
        return Ok(());
    };
    let mut head = [0u8; 16];
    if file.read_exact(&mut head).is_ok() && &head == SQLITE_HEADER {
        Ok(())
    } else {
        Err(NotADesktop::NotSqlite)
    }
}

/// [`desktop_counts`] for the directory at `dir` (opened without following a last symlink).
pub fn desktop_counts_at(dir: &Path, outer_owner: u32) -> Result<(), NotADesktop> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .map_err(NotADesktop::FolderUnopened)?;
    desktop_counts(std::os::fd::AsFd::as_fd(&opened), outer_owner)
}

/// The warning for a `.Desktop` below a volume root that is not another volume's.
pub fn planted_message(dir: &Path, why: &NotADesktop) -> String {
    format!(
        "{}: ignored for the nesting rule ({why}): only root, deskd's user or the volume owner \
         can make a desktop there",
        dir.join(DESKTOP_FILE).display()
    )
}

/// The first directory below `root` that is a volume root (holds a `.Desktop` that
/// [`desktop_counts`]), found by a walk that reads directory listings only (no `stat` per
/// entry where the file system gives the entry's type). Symbolic links are not followed;
/// directories that cannot be read are passed over. `.rsrc` folders hold no volumes and are
/// skipped. A planted `.Desktop` is logged and passed over.
pub fn volume_below(root: &Path) -> Option<PathBuf> {
    let outer_owner = std::fs::metadata(root).map(|m| m.uid()).unwrap_or(0);
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if dir != root && name == DESKTOP_FILE {
                match desktop_counts_at(&dir, outer_owner) {
                    Ok(()) => return Some(dir),
                    Err(why) => tracing::warn!("{}", planted_message(&dir, &why)),
                }
                continue;
            }
            if name == crate::rsrc::RSRC_DIR {
                continue;
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    None
}

/// Whether every user may create and rename entries in `root` (the `w` bit for others, as on
/// `/tmp`, sticky or not).
pub fn world_writable(root: &Path) -> bool {
    std::fs::metadata(root).is_ok_and(|m| m.mode() & 0o002 != 0)
}

/// The message for a volume inside another.
pub fn inside_message(root: &Path, outer: &Path) -> String {
    format!(
        "{}: inside the volume {} (it has a {DESKTOP_FILE}); a second desktop there would give its \
         objects a second set of IDs and rewrite their ID mirrors; use --nested \
         (nested = true in the configuration) to do it anyway",
        root.display(),
        outer.display()
    )
}

/// The message for a volume around another.
pub fn around_message(root: &Path, inner: &Path) -> String {
    format!(
        "{}: the volume {} is inside it (it has a {DESKTOP_FILE}); a desktop here would give its \
         objects a second set of IDs and rewrite their ID mirrors; use --nested \
         (nested = true in the configuration) to do it anyway",
        root.display(),
        inner.display()
    )
}

/// The message for a root every user may write.
pub fn world_writable_message(root: &Path) -> String {
    format!(
        "{0}: every user may create files in this directory (mode o+w, like /tmp), so any user \
         could plant the files deskd keeps there; take that right away (`chmod o-w {0}`; a tmpfs \
         is mounted mode 1777 unless given mode=0755), or use --world-writable \
         (world_writable = true in the configuration) to do it anyway",
        root.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_inside_and_around_are_found() {
        let d = tempfile::tempdir().unwrap();
        let outer = d.path().join("outer");
        let inner = outer.join("a/b/inner");
        std::fs::create_dir_all(inner.join("deep")).unwrap();
        std::fs::create_dir_all(outer.join(".rsrc/x")).unwrap();
        assert_eq!(enclosing_volume(&inner), None);
        assert_eq!(volume_below(&outer), None);
        std::fs::write(outer.join(DESKTOP_FILE), b"").unwrap();
        assert_eq!(enclosing_volume(&inner), Some(outer.clone()));
        assert_eq!(enclosing_volume(&outer), None);
        // The root's own desktop is not a volume below it.
        assert_eq!(volume_below(&outer), None);
        // An empty file is no desktop; one that starts as SQLite databases do is.
        std::fs::write(inner.join(DESKTOP_FILE), b"").unwrap();
        assert_eq!(volume_below(&outer), None);
        std::fs::write(inner.join(DESKTOP_FILE), b"SQLite format 3\0 and pages").unwrap();
        assert_eq!(volume_below(&outer), Some(inner.clone()));
        assert_eq!(volume_below(&d.path().join("outer/a")), Some(inner));
    }

    fn as_root() -> bool {
        let root = euid() == 0;
        if !root {
            assert!(std::env::var_os("CI").is_none(), "needs root in CI");
            eprintln!("skipped: needs root to make files of other owners");
        }
        root
    }

    #[test]
    fn only_a_desktop_its_makers_could_have_made_counts() {
        use std::os::unix::fs::PermissionsExt;
        if !as_root() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let dir = |name: &str| {
            let dir = d.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            dir
        };
        let sqlite = dir("sqlite");
        std::fs::write(sqlite.join(DESKTOP_FILE), b"SQLite format 3\0 and pages").unwrap();
        assert!(desktop_counts_at(&sqlite, 1000).is_ok());
        let link = dir("link");
        std::os::unix::fs::symlink("/elsewhere", link.join(DESKTOP_FILE)).unwrap();
        assert!(desktop_counts_at(&link, 1000).is_ok());
        let empty = dir("empty");
        std::fs::write(empty.join(DESKTOP_FILE), b"").unwrap();
        assert!(matches!(
            desktop_counts_at(&empty, 1000),
            Err(NotADesktop::NotSqlite)
        ));
        let folder = dir("folder");
        std::fs::create_dir(folder.join(DESKTOP_FILE)).unwrap();
        assert!(matches!(
            desktop_counts_at(&folder, 1000),
            Err(NotADesktop::NotAFile)
        ));
        let foreign = dir("foreign");
        std::fs::write(foreign.join(DESKTOP_FILE), b"SQLite format 3\0 and pages").unwrap();
        std::os::unix::fs::chown(foreign.join(DESKTOP_FILE), Some(4242), None).unwrap();
        let why = desktop_counts_at(&foreign, 1000).unwrap_err();
        assert!(matches!(why, NotADesktop::ForeignOwner(4242)), "{why:?}");
        assert!(planted_message(&foreign, &why).contains("owned by uid 4242"));
        // The volume owner's own desktop counts.
        assert!(desktop_counts_at(&foreign, 4242).is_ok());
        let none = dir("none");
        assert!(matches!(
            desktop_counts_at(&none, 1000),
            Err(NotADesktop::Unexamined(_))
        ));
        // A private desktop: readable to root, not to anyone else (asked on a thread that
        // becomes nobody for the kernel, real uid included, as access(2) checks that one).
        let desktop = d.path().join("private");
        std::fs::write(&desktop, b"").unwrap();
        std::fs::set_permissions(&desktop, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(unreadable_desktop(&desktop), None);
        let public = d.path().join("public");
        std::fs::write(&public, b"").unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (private_why, public_why) = std::thread::spawn(move || {
            use rustix::process::{Gid, Uid};
            use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
            let (gid, uid) = (Gid::from_raw(65534), Uid::from_raw(65534));
            set_thread_groups(&[]).unwrap();
            set_thread_res_gid(gid, gid, gid).unwrap();
            set_thread_res_uid(uid, uid, uid).unwrap();
            (unreadable_desktop(&desktop), unreadable_desktop(&public))
        })
        .join()
        .unwrap();
        assert_eq!(
            private_why.as_deref(),
            Some("you may not read it (owned by uid 0, mode 0600)")
        );
        assert_eq!(public_why, None);
    }
}
