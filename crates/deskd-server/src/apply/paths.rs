//! Paths, and the checks of a client's claims against them. Every path is walked race-free as
//! the peer ([`crate::walk`]), so a handler records what the walk reached, never what the
//! client said, and a peer learns nothing of names it could not see itself.

use std::collections::HashMap;

use deskd_db::{Object, Read};
use deskd_proto::ErrorReply;
use deskd_volume::Volume;

use super::errors::{claim, db_error, volume_error};
use crate::access::Access;
use crate::sight;
use crate::walk::{self, Node, Walked};

/// Desktop paths of directories already looked up (by ID), so that many adds into one folder
/// (a copy, a first scan, afpd making a folder tree) read the database once. Requests that
/// rename or delete clear it, so an entry is never stale; the SQLite writer keeps one across
/// its batches and clears it whenever anything else may have changed the desktop
/// (`writer::batch`).
#[derive(Default)]
pub struct DirCache {
    paths: HashMap<u32, Vec<Vec<u8>>>,
    /// The desktop's count of other connections' commits (`WriteBatch::others_commits`) the
    /// paths were read under; `None`: not known, nothing kept from an earlier batch.
    others_commits: Option<i64>,
}

/// Most paths a cache holds: past this it starts again (each path is a few names).
const DIR_CACHE_MAX: usize = 4096;

impl DirCache {
    /// Forget every path: a rename or a delete may have changed any of them.
    pub(crate) fn clear(&mut self) {
        self.paths.clear();
    }

    /// At the start of a batch, inside its write lock: keep the paths only if no other
    /// connection committed since they were read (`others` as the batch reads it now).
    pub(crate) fn check_others(&mut self, others: Option<i64>) {
        if others.is_none() || others != self.others_commits {
            self.paths.clear();
        }
        self.others_commits = others;
    }

    /// Whether the path of `id` is kept.
    pub(crate) fn holds(&self, id: u32) -> bool {
        self.paths.contains_key(&id)
    }

    /// The names from the root to a registered object.
    pub(crate) fn components_of<R: Read + ?Sized>(
        &mut self,
        db: &R,
        id: u32,
    ) -> Result<Vec<Vec<u8>>, ErrorReply> {
        if let Some(hit) = self.paths.get(&id) {
            return Ok(hit.clone());
        }
        let components = db.path_of(id).map_err(db_error)?;
        if self.paths.len() >= DIR_CACHE_MAX {
            self.paths.clear();
        }
        self.paths.insert(id, components.clone());
        Ok(components)
    }
}

/// Split a client's path into names, refusing `..`, `.`, protected and invalid names.
pub(super) fn client_names(rel: &[u8]) -> Result<Vec<Vec<u8>>, ErrorReply> {
    let mut out = Vec::new();
    for part in rel.split(|&b| b == b'/') {
        if part.is_empty() {
            continue;
        }
        deskd_volume::check_name(part).map_err(volume_error)?;
        out.push(part.to_vec());
    }
    Ok(out)
}

/// Walk a client's path race-free as the peer ([`walk::walk_client`]).
pub(super) fn walk_path(vol: &Volume, access: &Access, rel: &[u8]) -> Result<Walked, ErrorReply> {
    let names = client_names(rel)?;
    access
        .wear(|| walk::walk_client(vol.root(), names, rel, access.viewer()))
        .ok_or_else(sight::unseen)?
        .map(hide_unseen_names)
        .map_err(volume_error)
}

/// A walk that went through a folder whose name the peer could not see
/// ([`walk::Walked::hidden`]) is a refused one: a reply would show the path, and with it that
/// name. (The last name is the peer's own word, answered as `stat(2)` would.)
fn hide_unseen_names(mut walked: Walked) -> Walked {
    if walked
        .hidden
        .is_some_and(|i| i + 1 < walked.components.len())
        && !walked.refused()
    {
        walked.stopped = Some(rustix::io::Errno::ACCESS);
    }
    walked
}

/// Walk desktop names race-free as the peer ([`walk::walk`]).
pub(super) fn walk_names(
    vol: &Volume,
    access: &Access,
    components: &[Vec<u8>],
) -> Result<Walked, ErrorReply> {
    access
        .wear(|| walk::walk_as(vol.root(), components, access.viewer()))
        .map(hide_unseen_names)
        .ok_or_else(sight::unseen)
}

/// The walk got to its last name: else what stopped it (a refusal, or a missing name; the
/// same [`sight::unseen`] to an unprivileged peer, so a hidden name and a missing one sound
/// alike).
pub(super) fn reached(access: &Access, vol: &Volume, walked: Walked) -> Result<Walked, ErrorReply> {
    if walked.stopped.is_some() && !access.is_trusted() {
        return Err(sight::unseen());
    }
    if walked.refused() {
        return Err(sight::refused_walk(access, vol, &walked));
    }
    if walked.stopped.is_some() {
        return Err(claim(format!(
            "{}: no such file or directory on disk",
            vol.path_of(&walked.components).display()
        )));
    }
    Ok(walked)
}

/// The registered object at desktop path `components`, if any.
pub(super) fn registered<R: Read + ?Sized>(
    b: &R,
    components: &[Vec<u8>],
) -> Result<Option<Object>, ErrorReply> {
    let Some((last, up)) = components.split_last() else {
        return b.get(deskd_db::ROOT_ID).map(Some).map_err(db_error);
    };
    // The folder's ID, then the object by its place (one statement, not its ID's and then
    // its record's).
    let names: Vec<&[u8]> = up.iter().map(|c| c.as_slice()).collect();
    match b.id_of_path(&names).map_err(db_error)? {
        Some(folder) => b.lookup(folder, last).map_err(db_error),
        None => Ok(None),
    }
}

/// Whether `o` is the object with `dev`/`ino` (a record without them, from before deskd kept
/// them, is taken at its word).
pub(super) fn same_object(o: &Object, dev: u64, ino: u64) -> bool {
    (o.dev == 0 && o.ino == 0) || (o.dev == dev && o.ino == ino)
}

/// Verify, before a rename records a move or a removal drops a record, that `object` (its
/// inode) is no longer at `old` (walked by the server: is it still there for anyone?).
pub(super) fn verify_gone(
    vol: &Volume,
    object: &Object,
    old: &[Vec<u8>],
) -> Result<(), ErrorReply> {
    let walked = walk::walk(vol.root(), old);
    gone_unless_at(vol, object, old, walked.last().copied())
}

/// [`verify_gone`] of `old` for an object whose walk to `new` reached its folder: when `old`
/// is in that same folder (a rename within a folder, the watcher's most common change), its
/// name is looked at on the descriptor the walk holds (one `statat`) instead of a walk from
/// the root, which opened every folder on the way again (the watcher's CPU at 1,000 renames
/// a second: docs/PERFORMANCE.md, "Live tracking (issue 23) — stop 42"). A file (or link) the
/// walk found to be the object's inode with one name (`st_nlink` 1) has no other name, so
/// none at `old`: nothing to look at (a look at a name gone from a large folder reads its
/// blocks: a twentieth of the watcher's CPU per rename, stop 44).
pub(super) fn verify_gone_beside(
    vol: &Volume,
    object: &Object,
    old: &[Vec<u8>],
    new: &[Vec<u8>],
    walked_new: &Walked,
) -> Result<(), ErrorReply> {
    use std::os::fd::AsFd;
    let one_name = walked_new.last().is_some_and(|n| {
        n.kind != deskd_db::Kind::Dir
            && n.nlink == 1
            && object.dev != 0
            && same_object(object, n.dev, n.ino)
    });
    if one_name {
        return Ok(());
    }
    let same_folder = old.len() == new.len()
        && old.len() == walked_new.components.len()
        && walked_new.last().is_some()
        && old[..old.len().saturating_sub(1)]
            == walked_new.components[..new.len().saturating_sub(1)];
    match (same_folder, old.last(), walked_new.up.as_ref()) {
        (true, Some(name), Some(up)) => {
            gone_unless_at(vol, object, old, walk::node_at(up.as_fd(), name).ok())
        }
        _ => verify_gone(vol, object, old),
    }
}

/// The check of [`verify_gone`] on what is at `old` now (`None`: nothing, or not reachable).
fn gone_unless_at(
    vol: &Volume,
    object: &Object,
    old: &[Vec<u8>],
    node: Option<Node>,
) -> Result<(), ErrorReply> {
    if let Some(node) = node.as_ref() {
        // The same inode number born after the record's inode was recorded is a new file
        // that got the freed number (a user who made the name again at once): gone.
        let reused = born_no_later(&vol.path_of(old), node, object.ctime) == Some(false);
        if object.dev != 0 && same_object(object, node.dev, node.ino) && !reused {
            return Err(claim(format!(
                "{}: still exists on disk; do the operation before telling deskd",
                vol.path_of(old).display()
            )));
        }
    }
    Ok(())
}

/// Verify, walking as the peer, that `object` is now at the end of `walked`.
pub(super) fn verify_arrived(
    access: &Access,
    vol: &Volume,
    object: &Object,
    walked: Walked,
) -> Result<Walked, ErrorReply> {
    let walked = reached(access, vol, walked)?;
    let node = walked.last().expect("a walk that reached its end");
    if !same_object(object, node.dev, node.ino) {
        return Err(claim(format!(
            "{}: is not the object with ID {} (different inode)",
            vol.path_of(&walked.components).display(),
            object.id
        )));
    }
    Ok(walked)
}

/// Whether the object at `path`, which a walk found as `node`, was born no later than `when`
/// (Unix seconds): by the birth time the walk read on the descriptor it held, else by a look
/// at `path` now (`Some(false)` also when that is not `node`: replaced since the walk);
/// `None` when the file system keeps no birth time. A file system gives a freed
/// inode number to the next new file at once, so a number alone does not say "the same
/// object"; a birth after the record's inode was recorded says "another one".
pub(super) fn born_no_later(path: &std::path::Path, node: &Node, when: i64) -> Option<bool> {
    if let Some(born) = node.btime {
        // Read by the walk that reached the node, on the descriptor it held: that inode's.
        return Some(born <= when);
    }
    use rustix::fs::{statx, AtFlags, StatxFlags, CWD};
    let stx = statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BTIME | StatxFlags::INO,
    )
    .ok()?;
    if !StatxFlags::from_bits_retain(stx.stx_mask).contains(StatxFlags::BTIME) {
        return None;
    }
    let dev = rustix::fs::makedev(stx.stx_dev_major, stx.stx_dev_minor);
    Some((dev, stx.stx_ino) == (node.dev, node.ino) && stx.stx_btime.tv_sec <= when)
}
