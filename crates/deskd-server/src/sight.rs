//! What a peer may see of the desktop's objects, decided on descriptors walked as the peer
//! ([`crate::walk`]), and the one refusal an unprivileged peer gets for what it may not see.
//!
//! A peer *sees* an object when it is the volume root (and the peer may search the root), or
//! when the peer reaches the folder holding it and may list that folder — exactly when the
//! peer's own `ls` would show the name. The folder reached must be the desktop's folder (same
//! dev/ino), so a folder renamed away and replaced by one of the peer's own does not lend its
//! listing to the names recorded in the old one. Every folder name on the object's path must be
//! one the peer could see as well (its own folder, or one in a folder it may list: see
//! [`walk::walk_as`]), since a reply with the path shows them all: an object below a folder
//! whose name the peer never could have listed is one it may not see.
//!
//! For an object the peer may not see, every request gets [`unseen`], the very reply a
//! request about an ID or a name that does not exist gets: code `NotFound`, no path, no name.
//! Trusted peers keep the detailed messages.

use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use deskd_db::{Kind, Object, Read};
use deskd_proto::{ErrorCode, ErrorReply};
use deskd_volume::Volume;

use crate::access::{self, Access};
use crate::walk::{self, Walked};
use rustix::io::Errno;

/// The message of [`unseen`].
pub const UNSEEN_MESSAGE: &str = "no such object";

/// The reply an unprivileged peer gets for an object it may not see and for one that does
/// not exist, alike.
pub fn unseen() -> ErrorReply {
    ErrorReply::new(ErrorCode::NotFound, UNSEEN_MESSAGE)
}

/// What an unprivileged peer hears instead of `reply`: any `NotFound` is [`unseen`], so the
/// words of a missing ID, name or path never differ from those of a hidden one. A peer whose
/// access this server cannot check at all is told why, about everything alike.
pub fn for_peer(access: &Access, reply: ErrorReply) -> ErrorReply {
    match access {
        _ if reply.code != ErrorCode::NotFound => reply,
        Access::Trusted => reply,
        Access::Peer(_) => unseen(),
        Access::Unverifiable { uid } => ErrorReply::new(
            ErrorCode::NotFound,
            format!(
                "{UNSEEN_MESSAGE}: deskd does not run as root, so it cannot check what uid \
                 {uid} may see"
            ),
        ),
    }
}

/// How a peer stands to one desktop object.
#[derive(Debug, Clone, Copy, Default)]
pub struct Look {
    /// The peer may see the object (see the module documentation).
    pub seen: bool,
    /// Every name of the object's path, its own included, is one the peer could see (its
    /// folder may be listed, or the peer owns it): the path may be shown, as a folder's to
    /// which a name is added (`Lookup`, `Add`). Known only when `object` was asked.
    pub named: bool,
    /// The peer may do the `object` mode asked for to the object itself (false for a symlink:
    /// its own permission bits say nothing).
    pub object: bool,
    /// The peer may do the `folder` mode asked for to the folder holding it.
    pub folder: bool,
}

impl Look {
    /// A trusted peer's ([`Access::Trusted`]): everything.
    const TRUSTED: Look = Look {
        seen: true,
        named: true,
        object: true,
        folder: true,
    };
}

/// What to ask of the object and of its folder, besides whether the peer sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask {
    pub object: Option<libc::c_int>,
    pub folder: Option<libc::c_int>,
    /// Write access to a sticky folder counts only for the owner of the object or of the
    /// folder ([`sticky_forbids`]): for changes deskd makes without the disk. A move or removal
    /// is made on disk by the peer, where the kernel applied that rule already (and the object
    /// may be gone from the folder).
    pub sticky: bool,
}

/// The walk reached the desktop's object. By inode number alone: a replacement made by
/// someone else has another inode (the replaced one still exists wherever it was moved, so
/// its number cannot be reused), while a device number may change when the file system is
/// mounted again, which must not hide every object from every user.
fn same(o: &Object, node: &walk::Node) -> bool {
    o.ino == 0 || o.ino == node.ino
}

/// Walk to desktop object `id` as the peer and see how it stands to it. Unknown IDs are
/// `NotFound` (the caller turns that into [`unseen`] for an unprivileged peer).
pub fn look<R: Read>(
    db: &R,
    vol: &Volume,
    access: &Access,
    id: u32,
    ask: Ask,
) -> Result<Look, ErrorReply> {
    if access.is_trusted() {
        return Ok(Look::TRUSTED);
    }
    let object = db.get(id).map_err(crate::db_reply::db_error)?;
    let components = db.path_of(id).map_err(crate::db_reply::db_error)?;
    look_at(db, vol, access, &object, &components, ask)
}

/// [`look`] for an object already read, with its names from the root.
pub fn look_at<R: Read>(
    db: &R,
    vol: &Volume,
    access: &Access,
    object: &Object,
    components: &[Vec<u8>],
    ask: Ask,
) -> Result<Look, ErrorReply> {
    if access.is_trusted() {
        return Ok(Look::TRUSTED);
    }
    let folder = if components.is_empty() {
        None
    } else {
        Some(db.get(object.parent).map_err(crate::db_reply::db_error)?)
    };
    Ok(look_at_with(
        vol,
        access,
        object,
        folder.as_ref(),
        components,
        ask,
    ))
}

/// [`look_at`] with the object's folder's record read already (`None` for the root): a
/// PostgreSQL volume's resolve takes it from its cache ([`crate::read_cache`]). The walk as
/// the peer is the same.
pub fn look_at_with(
    vol: &Volume,
    access: &Access,
    object: &Object,
    folder: Option<&Object>,
    components: &[Vec<u8>],
    ask: Ask,
) -> Look {
    if access.is_trusted() {
        return Look::TRUSTED;
    }
    access
        .wear(|| look_as_peer(vol, access.viewer(), object, folder, components, ask))
        .unwrap_or_default()
}

/// [`look`] once the thread wears the peer's identity (`viewer`, its uid).
pub fn look_as_peer(
    vol: &Volume,
    viewer: Option<u32>,
    object: &Object,
    folder: Option<&Object>,
    components: &[Vec<u8>],
    ask: Ask,
) -> Look {
    let n = components.len();
    let walk_to = if ask.object.is_some() || n == 0 {
        components
    } else {
        &components[..n - 1]
    };
    let walked = walk::walk_as(vol.root(), walk_to, viewer);
    let Some(fd) = walked.fd.as_ref() else {
        return Look::default();
    };
    if n == 0 {
        // The root: seen by whoever may search it.
        let seen = walked.stopped.is_none() && walk::may(fd.as_fd(), access::SEARCH);
        return Look {
            seen,
            named: seen,
            object: seen && ask.object.is_some_and(|m| walk::may(fd.as_fd(), m)),
            folder: false,
        };
    }
    // A folder on the way whose name the peer could not see: the object's path would tell
    // it, so the object is one it may not see, whatever it may do there.
    if walked.hidden.is_some_and(|i| i + 1 < n) {
        return Look::default();
    }
    // The folder's descriptor: the last one when the walk stopped there (or went only so far).
    let (folder_fd, object_node) = match (walked.nodes.len(), walked.stopped) {
        (reached, None) if reached == walk_to.len() && walk_to.len() == n => {
            (walked.up.as_deref(), walked.last().copied())
        }
        (reached, None) if reached == walk_to.len() => (Some(fd), None),
        // Stopped opening the last name (not at a non-directory on the way).
        (reached, Some(e)) if reached + 1 == n && e != Errno::LOOP && e != Errno::NOTDIR => {
            (Some(fd), None)
        }
        _ => return Look::default(),
    };
    let Some(folder_fd) = folder_fd else {
        return Look::default();
    };
    // The folder reached must be the desktop's (the root needs no such check).
    let folder_node = if n == 1 {
        None
    } else {
        walked.nodes.get(n - 2).copied()
    };
    if let Some(node) = folder_node {
        if node.kind != Kind::Dir || folder.is_some_and(|f| !same(f, &node)) {
            return Look::default();
        }
    }
    let seen = walk::may(folder_fd.as_fd(), access::LIST);
    let folder_ok = ask.folder.is_some_and(|m| {
        walk::may(folder_fd.as_fd(), m)
            && (!ask.sticky
                || m & access::WRITE == 0
                || !sticky_forbids(folder_fd.as_fd(), &components[n - 1], object, viewer))
    });
    let object_ok = match (ask.object, object_node) {
        (Some(mode), Some(node)) if node.kind != Kind::Symlink && same(object, &node) => {
            walk::may(fd.as_fd(), mode)
        }
        _ => false,
    };
    Look {
        seen,
        named: object_node.is_some() && walked.hidden.is_none(),
        object: object_ok,
        folder: folder_ok,
    }
}

/// In a sticky folder (mode `+t`, as `/tmp`) writing the folder lets a peer change only what it
/// owns, or anything when it owns the folder: the kernel's rule for renames and removals there,
/// which deskd keeps for the changes it makes without the disk (Finder information, comments:
/// review F8). True when the folder is sticky and `viewer` owns neither it nor the object at
/// `name` (or that is not the desktop's object any more).
fn sticky_forbids(
    folder: std::os::fd::BorrowedFd<'_>,
    name: &[u8],
    object: &Object,
    viewer: Option<u32>,
) -> bool {
    use rustix::fs::{AtFlags, Mode};
    let Some(uid) = viewer else { return false };
    let Ok(dir) = rustix::fs::fstat(folder) else {
        return true;
    };
    if !Mode::from_raw_mode(dir.st_mode).contains(Mode::SVTX) || dir.st_uid == uid {
        return false;
    }
    let name = std::ffi::OsStr::from_bytes(name);
    match rustix::fs::statat(folder, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st.st_uid != uid || (object.ino != 0 && st.st_ino != object.ino),
        Err(_) => true,
    }
}

/// A walk as the peer that was refused (the peer may not go there): [`unseen`] for an
/// unprivileged peer; for a trusted one, what stood in the way.
pub fn refused_walk(access: &Access, vol: &Volume, walked: &Walked) -> ErrorReply {
    if !access.is_trusted() {
        return unseen();
    }
    let at = vol.path_of(&walked.components[..(walked.nodes.len()).min(walked.components.len())]);
    match walked.stopped {
        Some(Errno::NOTDIR) | Some(Errno::LOOP) => ErrorReply::new(
            ErrorCode::NotADirectory,
            format!("{}: not a directory", at.display()),
        ),
        Some(e) => ErrorReply::new(
            ErrorCode::Internal,
            format!("{}: {}", at.display(), std::io::Error::from(e)),
        ),
        None => ErrorReply::new(ErrorCode::Internal, "walk refused without a reason"),
    }
}

/// Ok when `look` allows it; otherwise a detailed refusal for what the peer sees, [`unseen`]
/// for what it does not.
pub fn refuse_unless(
    allowed: bool,
    look: &Look,
    access: &Access,
    path: impl FnOnce() -> std::path::PathBuf,
    what: &str,
) -> Result<(), ErrorReply> {
    if allowed {
        Ok(())
    } else if look.seen {
        Err(ErrorReply::new(
            ErrorCode::PermissionDenied,
            access.refusal(&path(), what),
        ))
    } else {
        Err(unseen())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Credentials;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn object(path: &std::path::Path, kind: Kind) -> Object {
        let m = std::fs::symlink_metadata(path).unwrap();
        Object {
            id: 0,
            parent: 0,
            name: Vec::new(),
            kind,
            dev: m.dev(),
            ino: m.ino(),
            type_code: [0; 4],
            creator: [0; 4],
            flags: 0,
            ctime: 0,
        }
    }

    fn names(path: &str) -> Vec<Vec<u8>> {
        path.split('/').map(|c| c.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_peer_sees_what_its_ls_would_show_and_nothing_through_a_swapped_folder() {
        if !rustix::process::geteuid().is_root() {
            assert!(std::env::var_os("CI").is_none(), "needs root in CI");
            eprintln!("skipped: needs root to take another identity");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path().join("vol");
        std::fs::create_dir_all(root.join("closed/inner")).unwrap();
        std::fs::create_dir_all(root.join("open")).unwrap();
        std::fs::write(root.join("closed/inner/f"), "").unwrap();
        std::fs::write(root.join("open/f"), "").unwrap();
        std::fs::set_permissions(root.join("closed"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        let vol = Volume::new(&root).unwrap();
        let nobody = Access::Peer(Credentials {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        });
        let look = |rel: &str, folder: &str, ask: Ask| {
            let o = object(&root.join(rel), Kind::File);
            let f = object(&root.join(folder), Kind::Dir);
            nobody
                .wear(|| look_as_peer(&vol, Some(65534), &o, Some(&f), &names(rel), ask))
                .unwrap()
        };
        let write = Ask {
            object: Some(access::WRITE),
            folder: Some(access::WRITE | access::SEARCH),
            sticky: true,
        };
        let open = look("open/f", "open", write);
        assert!(open.seen && !open.object && !open.folder);
        let closed = look("closed/inner/f", "closed/inner", write);
        assert!(!closed.seen && !closed.object && !closed.folder);
        // Below a search-only folder: the folder's name is one nobody never could list, so
        // nothing under it is seen; a folder of nobody's own there keeps its name.
        std::fs::create_dir_all(root.join("search/named")).unwrap();
        std::fs::create_dir_all(root.join("search/own")).unwrap();
        std::fs::write(root.join("search/named/f"), "").unwrap();
        std::fs::write(root.join("search/own/f"), "").unwrap();
        std::os::unix::fs::chown(root.join("search/own"), Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(root.join("search"), std::fs::Permissions::from_mode(0o711))
            .unwrap();
        assert!(!look("search/named/f", "search/named", Ask::default()).seen);
        assert!(look("search/own/f", "search/own", Ask::default()).seen);
        let dir = |rel: &str| {
            let o = object(&root.join(rel), Kind::Dir);
            let f = object(&root.join("search"), Kind::Dir);
            let ask = Ask {
                object: Some(access::LIST),
                folder: None,
                sticky: false,
            };
            nobody
                .wear(|| look_as_peer(&vol, Some(65534), &o, Some(&f), &names(rel), ask))
                .unwrap()
        };
        let named = dir("search/named");
        assert!(named.object && !named.named && !named.seen);
        let own = dir("search/own");
        assert!(own.object && own.named);
        // The open folder renamed away and replaced by another: its names are not lent.
        let f = object(&root.join("open/f"), Kind::File);
        let old_folder = object(&root.join("open"), Kind::Dir);
        std::fs::rename(root.join("open"), root.join("moved")).unwrap();
        std::fs::create_dir(root.join("open")).unwrap();
        let through_old_folder = || {
            nobody
                .wear(|| {
                    look_as_peer(
                        &vol,
                        Some(65534),
                        &f,
                        Some(&old_folder),
                        &names("open/f"),
                        Ask::default(),
                    )
                })
                .unwrap()
        };
        let swapped = through_old_folder();
        assert!(!swapped.seen);
        // Nor does a symlink in its place lead anywhere.
        std::fs::remove_dir(root.join("open")).unwrap();
        std::os::unix::fs::symlink("moved", root.join("open")).unwrap();
        let linked = through_old_folder();
        assert!(!linked.seen);
        // The reply to an unprivileged peer about anything missing is always the same.
        assert_eq!(
            for_peer(
                &nobody,
                ErrorReply::new(ErrorCode::NotFound, "no object with ID 7")
            ),
            unseen()
        );
    }
}
