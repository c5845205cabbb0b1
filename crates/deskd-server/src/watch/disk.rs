//! What the disk needs after a watched change is committed ([`DiskWork`]): the resource file
//! (`DIR/.rsrc/NAME`) and `user.deskd.id` mirror of a new object, a resource file carried along
//! with a move, the resource file of a removed object taken away — what `dt` leaves, so that
//! `deskd rebuild -s` finds nothing to say afterwards.
//!
//! The server runs as root and the events come from every user, so every path is opened below
//! the volume root without following a link on the way ([`deskd_volume::pin`]), the last name
//! with `O_NOFOLLOW` (resource files) or never followed (the mirror is not written on a link),
//! and an object is stamped only while it is still the inode the desktop recorded. A user who
//! swaps a folder for a link between the event and this work gets an error in the log, and
//! nothing is written outside the volume or through the link.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use deskd_db::Kind;
use deskd_volume::pin::{pin, Pinned};
use deskd_volume::rsrc::{self, ResourceHeader};
use deskd_volume::{Volume, VolumeError};

use crate::apply::watched::DiskWork;

/// What doing the disk work gave.
#[derive(Debug, Default)]
pub(crate) struct Done {
    /// What failed (for the log), each with its path.
    pub(crate) errors: Vec<String>,
    /// Stamps whose object was no longer at its path (moved on since the batch: a later batch
    /// tells the desktop where), to try again at the object's place then.
    pub(crate) moved_on: Vec<DiskWork>,
}

/// Do `work` on the volume.
pub(crate) fn apply(vol: &Volume, work: &[DiskWork]) -> Done {
    let mut done = Done::default();
    let mut pins = Pins::new(vol.root());
    for item in work {
        pins.between_items();
        let result = match item {
            DiskWork::Stamp { .. } => stamp(vol, &mut pins, item),
            DiskWork::Carry {
                from,
                stamp: then,
                onto_free,
                from_folder,
            } => match carry(
                vol,
                &mut pins,
                from,
                from_folder.is_some(),
                then,
                *onto_free,
            ) {
                // The folder it goes to, or the one it comes from, is gone from the path the
                // batch recorded (moved on in the same batch: `mv a d/c; mv d e`, or
                // `mv d/a d/b; mv d e`): carried between where the desktop says they are,
                // after this batch.
                Ok(Carried::TargetGone | Carried::SourceGone) => {
                    done.moved_on.push(item.clone());
                    continue;
                }
                Ok(Carried::Moved) => after_carry(vol, &mut pins, then),
                Ok(Carried::Nothing) => stamp(vol, &mut pins, then),
                Err(e) => Err(e),
            },
            DiskWork::Unstamp { path } => unstamp(vol, &mut pins, path).map(|()| Stamped::Yes),
        };
        match result {
            Ok(Stamped::Yes) => {}
            Ok(Stamped::MovedOn) => done.moved_on.push(match item {
                DiskWork::Carry { stamp: then, .. } => (**then).clone(),
                other => other.clone(),
            }),
            Err(e) => done.errors.push(e.to_string()),
        }
    }
    done
}

/// Most folders one [`apply`] holds open at once (beyond, it lets them all go and starts again:
/// a batch of creates across 10,000 folders must not run the server out of descriptors).
const PINS_HELD: usize = 64;

/// The folders [`apply`] has pinned ([`pin`]: opened below the root, following no link), kept
/// for the rest of its work: a batch's renames are mostly in a few folders, and opening every
/// folder on the way again for each name was most of the watcher's own CPU at 1,000 renames a
/// second (docs/PERFORMANCE.md, "Live tracking (issue 23)"). A folder held is the folder it was
/// when opened, wherever it is moved meanwhile, as with a pin taken for each name; so at the
/// first use in each item it is checked to be at its path still (one `readlink` of its
/// descriptor), else let go and pinned anew: the batch's later items must not act in a folder
/// its owner renamed away (out of the volume, or another user's folder renamed in its place:
/// the hostile review of stop 40). The stamps still check the object's inode.
struct Pins<'r> {
    root: &'r Path,
    /// Folder (relative to the root) → its pin, its `/proc/self/fd/N` path, and whether it
    /// was seen at its path during this item.
    held: HashMap<PathBuf, (Pinned, PathBuf, bool)>,
    /// `.rsrc` folders (relative to the root) known to be there, a folder and not a link,
    /// with their owner set, since this `apply` began.
    rsrc_ready: HashSet<PathBuf>,
}

impl<'r> Pins<'r> {
    fn new(root: &'r Path) -> Self {
        Pins {
            root,
            held: HashMap::new(),
            rsrc_ready: HashSet::new(),
        }
    }

    /// As [`pin`]`(root, path, keep)`, but a folder pinned before is not opened again.
    fn pin(&mut self, path: &Path, keep: usize) -> Result<PathBuf, VolumeError> {
        let Some((dir, rest)) = split(self.root, path, keep) else {
            // Not a plain path below the root: `pin` says why.
            return pin(self.root, path, keep).map(|p| p.path);
        };
        if let Some((_, at, checked)) = self.held.get_mut(&dir) {
            // Still at its path (one readlink of the descriptor, not a walk from the root):
            // a folder its owner renamed away since is let go and its path pinned anew.
            if *checked || std::fs::read_link(&*at).is_ok_and(|now| now == self.root.join(&dir)) {
                *checked = true;
                return Ok(rest.iter().fold(at.clone(), |p, n| p.join(n)));
            }
            self.held.remove(&dir);
            self.rsrc_ready.clear();
        }
        let pinned = pin(self.root, path, keep)?;
        let mut at = pinned.path.clone();
        for _ in 0..keep {
            at.pop();
        }
        let full = pinned.path.clone();
        self.held.insert(dir, (pinned, at, true));
        Ok(full)
    }

    /// `path` through its folder when that is held already, not checked to be at its path
    /// (no `readlink`): for a read whose answer decides nothing but whether more is checked
    /// ([`after_carry`]); else [`Pins::pin`]`(path, 1)`.
    fn peek(&mut self, path: &Path) -> Result<PathBuf, VolumeError> {
        if let Some((dir, rest)) = split(self.root, path, 1) {
            if let Some((_, at, _)) = self.held.get(&dir) {
                return Ok(rest.iter().fold(at.clone(), |p, n| p.join(n)));
            }
        }
        self.pin(path, 1)
    }

    /// What is at `path` (its last name, not following a link), by `statat` on its held
    /// folder; None when it cannot be pinned or is not there.
    fn stat(&mut self, path: &Path) -> Option<rustix::fs::Stat> {
        let (dir, name) = self.at(path)?;
        rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).ok()
    }

    /// The held folder of `path` and its last name (pinned as [`Pins::pin`] with `keep` 1).
    fn at<'p>(&mut self, path: &'p Path) -> Option<(BorrowedFd<'_>, &'p OsStr)> {
        self.pin(path, 1).ok()?;
        let (dir, _) = split(self.root, path, 1)?;
        let name = path.file_name()?;
        Some((self.held.get(&dir)?.0.dir(), name))
    }

    /// `renameat` from `from` to `to` (each by its held folder and last name).
    fn rename(&mut self, from: &Path, to: &Path) -> Result<(), VolumeError> {
        self.rename_with(from, to, rustix::fs::RenameFlags::empty())
    }

    /// [`Pins::rename`] with `renameat2(2)` flags (`NOREPLACE`: never over a name in use).
    fn rename_with(
        &mut self,
        from: &Path,
        to: &Path,
        flags: rustix::fs::RenameFlags,
    ) -> Result<(), VolumeError> {
        self.pin(from, 1)?;
        self.pin(to, 1)?;
        let (held, root) = (&self.held, self.root);
        let at = |p: &'_ Path| -> Option<BorrowedFd<'_>> {
            let (dir, _) = split(root, p, 1)?;
            Some(held.get(&dir)?.0.dir())
        };
        let (Some(a), Some(a_name), Some(b), Some(b_name)) =
            (at(from), from.file_name(), at(to), to.file_name())
        else {
            return Err(VolumeError::io(
                from,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        };
        rustix::fs::renameat_with(a, a_name, b, b_name, flags)
            .map_err(|e| VolumeError::io(from, e.into()))
    }

    /// Between two items of work (never within one: the paths it was given name the held
    /// descriptors): past [`PINS_HELD`] folders, let them all go.
    fn between_items(&mut self) {
        if self.held.len() >= PINS_HELD {
            self.held.clear();
        }
        for (_, _, checked) in self.held.values_mut() {
            *checked = false;
        }
        if self.rsrc_ready.len() >= PINS_HELD {
            self.rsrc_ready.clear();
        }
    }

    /// [`make_rsrc_dir_like_its_folder`], once per `.rsrc` folder of this `apply`.
    fn rsrc_dir(&mut self, rsrc_path: &Path, pinned: &Path) -> Result<(), VolumeError> {
        let key = split(self.root, rsrc_path, 1).map(|(dir, _)| dir);
        if key.as_ref().is_some_and(|k| self.rsrc_ready.contains(k)) {
            return Ok(());
        }
        rsrc::make_rsrc_dir_like_its_folder(pinned)?;
        if let Some(key) = key {
            self.rsrc_ready.insert(key);
        }
        Ok(())
    }
}

/// `path` below `root` as the folder holding its last `keep` names (relative to the root) and
/// those names; None unless every name is a plain one.
fn split<'p>(root: &Path, path: &'p Path, keep: usize) -> Option<(PathBuf, Vec<&'p OsStr>)> {
    let rel = path.strip_prefix(root).ok()?;
    let names = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    if names.len() < keep {
        return None;
    }
    let (dir, rest) = names.split_at(names.len() - keep);
    Some((dir.iter().collect(), rest.to_vec()))
}

/// Whether a stamp was made, or its object was no longer at its path.
enum Stamped {
    Yes,
    MovedOn,
}

/// `DIR/.rsrc/NAME` of the object at `names` (None for the root).
fn rsrc_of(vol: &Volume, names: &[Vec<u8>]) -> Option<std::path::PathBuf> {
    if names.is_empty() {
        return None;
    }
    rsrc::rsrc_path(&vol.path_of(names))
}

/// Whether what is at `path` is the inode `dev`/`ino` (not following a link).
fn is_inode(pins: &mut Pins<'_>, path: &Path, dev: u64, ino: u64) -> bool {
    pins.stat(path)
        .is_some_and(|st| (st.st_dev, st.st_ino) == (dev, ino))
}

fn stamp(vol: &Volume, pins: &mut Pins<'_>, item: &DiskWork) -> Result<Stamped, VolumeError> {
    let DiskWork::Stamp {
        path,
        id,
        dev,
        ino,
        kind,
        type_code,
        creator,
        ctime,
    } = item
    else {
        return Ok(Stamped::Yes);
    };
    let Some(rsrc_path) = rsrc_of(vol, path) else {
        return Ok(Stamped::Yes);
    };
    // A folder on the way gone, or swapped for a link (refused, never followed): the object
    // moved on, and is stamped where the desktop says it is after the next batch.
    let object_path = vol.path_of(path);
    let Ok(object) = pins.pin(&object_path, 1) else {
        return Ok(Stamped::MovedOn);
    };
    if !is_inode(pins, &object_path, *dev, *ino) {
        return Ok(Stamped::MovedOn); // moved or replaced since
    }
    // `rsrc` opens `.rsrc` itself without following a link: the path is through its folder.
    let pinned = pins.pin(&rsrc_path, 2)?;
    pins.rsrc_dir(&rsrc_path, &pinned)?;
    let (id, type_code, creator) = (*id, *type_code, *creator);
    let fallback = || ResourceHeader::new(id, type_code, creator, (*ctime).max(0) as u32);
    // The header read through the `.rsrc` folder held (after a carry, the one it renamed in:
    // no system call to reach it), which also says whether the file is new; only a header
    // to write goes by path ([`rsrc::ensure_id`]'s rule: missing, unreadable, a link in its
    // place, or another ID). Once per rename at 1,000 a second (docs/PERFORMANCE.md).
    let fresh = match pins.at(&rsrc_path) {
        Some((dir, name)) => {
            let found = rsrc::look_at(dir, name)?;
            let fresh = found == rsrc::Found::Missing;
            let header = match found {
                rsrc::Found::Header(header) if header.id == id => None,
                rsrc::Found::Header(header) => Some(ResourceHeader { id, ..header }),
                _ => Some(fallback()),
            };
            if let Some(header) = header {
                rsrc::write_header(&pinned, &header)?;
            }
            fresh
        }
        None => {
            // The `.rsrc` folder could not be held (just swapped for a link?): as before.
            let fresh = pins.stat(&rsrc_path).is_none();
            rsrc::ensure_id(&pinned, id, fallback)?;
            fresh
        }
    };
    if fresh {
        // Named inside the `.rsrc` folder held open (opened without following a link): a path
        // through `.rsrc` would let its owner swap it for a link after the write and send
        // root's `chown` anywhere (the review of stop 35). Swapped already: no chown.
        if let Ok(inside) = pins.pin(&rsrc_path, 1) {
            rsrc::give_to_the_objects_owner(&inside, &object);
        }
    }
    let mirror = match kind {
        Kind::Symlink => Some(id), // a link carries no mirror
        _ => deskd_volume::read_id_xattr(&object),
    };
    if mirror != Some(id) && !another_names_mirror(&object, *kind, mirror) {
        // Checked again: a link swapped in for the object since is never followed.
        if is_inode(pins, &object_path, *dev, *ino) {
            deskd_volume::write_id_xattr(&object, id)?;
        }
    }
    Ok(Stamped::Yes)
}

/// Whether the mirror on the file at `path` is another name's: a file with more than one
/// name (a hard link anyone may make to a file they can read and write, in a folder of their
/// own) that carries an ID already keeps it; the new name's ID lives in its resource file.
/// Otherwise the server would rewrite another user's `user.deskd.id` (the hostile review of
/// stop 35, finding 6).
fn another_names_mirror(path: &Path, kind: Kind, mirror: Option<u32>) -> bool {
    kind == Kind::File
        && mirror.is_some()
        && std::fs::symlink_metadata(path).is_ok_and(|m| m.nlink() > 1)
}

/// What [`carry`] did.
enum Carried {
    /// The resource file was renamed to its object's new place.
    Moved,
    /// Nothing was carried: no resource file at `from` (none made yet: a stamp still owed),
    /// not a plain file there, not the object's (its header says another ID), or
    /// (`onto_free`) another one at `to`.
    Nothing,
    /// The folder of `to` is not on the disk (any more): nothing was done.
    TargetGone,
    /// The folder of `from` is not on the disk (any more), or holds another object's resource
    /// file by that name (another folder in its place?): nothing was done.
    SourceGone,
}

/// The stamp of an object whose resource file [`carry`] just moved along with it. `rename(2)`
/// changed neither the resource file's header nor the object's `user.deskd.id` mirror, both
/// written (header first) when the object was stamped at its old place; what a move can
/// leave undone is a stamp it cut short (the stamper wrote the header, the object moved
/// before the mirror), and the mirror shows that. So the mirror is read (one `getxattr`),
/// and only when it is not the record's ID is the whole stamp made (the carry read the
/// header: it is the record's ID, or nothing was carried). The whole stamp (a `stat` of the
/// object, the header opened and read again) was a fifth of the watcher's CPU per rename
/// (docs/PERFORMANCE.md, "Live tracking (issue 23)").
fn after_carry(vol: &Volume, pins: &mut Pins<'_>, then: &DiskWork) -> Result<Stamped, VolumeError> {
    let DiskWork::Stamp { path, id, kind, .. } = then else {
        return Ok(Stamped::Yes);
    };
    if *kind == Kind::Symlink {
        // A link has no mirror: its stamp is the header alone, carried.
        return Ok(Stamped::Yes);
    }
    // Read through the folder held (the mirror of whatever is at the name now: when it is
    // not the ID, the whole stamp checks the inode before it writes anything).
    let mirror = pins
        .peek(&vol.path_of(path))
        .ok()
        .and_then(|object| deskd_volume::read_id_xattr(&object));
    if mirror == Some(*id) {
        return Ok(Stamped::Yes);
    }
    stamp(vol, pins, then)
}

/// Move the resource file of the object that was at `from` to where `then` stamps it, as
/// `dt mv` does: a rename between folders held open below the root; the target's `.rsrc/`
/// is made if needed, and a link in its place is refused.
fn carry(
    vol: &Volume,
    pins: &mut Pins<'_>,
    from: &[Vec<u8>],
    from_folder_known: bool,
    then: &DiskWork,
    onto_free: bool,
) -> Result<Carried, VolumeError> {
    let DiskWork::Stamp { path: to, id, .. } = then else {
        return Ok(Carried::Nothing);
    };
    let (Some(from_rsrc), Some(to_rsrc)) = (rsrc_of(vol, from), rsrc_of(vol, to)) else {
        return Ok(Carried::Nothing);
    };
    match pins.pin(&from_rsrc, 1) {
        Ok(_) => {}
        Err(VolumeError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
            // No `.rsrc` there, or no folder at all any more (moved on with the resource
            // file in it: found where the desktop says that folder is, when it knows it).
            if !from_folder_known {
                return Ok(Carried::Nothing);
            }
            return Ok(match pins.pin(&from_rsrc, 2) {
                Err(VolumeError::Io { error, .. })
                    if error.kind() == std::io::ErrorKind::NotFound =>
                {
                    Carried::SourceGone
                }
                _ => Carried::Nothing,
            });
        }
        Err(e) => return Err(e),
    };
    // Only the object's own resource file moves: a regular file (a link planted there is
    // left where it is) whose header says the object's ID. The folder at `from`'s path may
    // be another one by now (its owner moved it away and another user's folder, holding a
    // resource file by that name, in its place before the batch was applied), and the name
    // may be another object's since (a carry tried again after its batch): renaming that
    // file would take it from its object, in a folder the mover may not write (the hostile
    // review of stop 44). One `openat` and one `pread` on the `.rsrc` folder held.
    let found = pins
        .at(&from_rsrc)
        .map(|(dir, name)| rsrc::look_at(dir, name));
    match found {
        Some(Ok(rsrc::Found::Header(h))) if h.id == *id => {}
        // Another object's: when the folder the object left is known, its own went along
        // with that folder if the folder moved (the other one came in its place), and is
        // looked for where the desktop says that folder is, after the batch.
        Some(Ok(rsrc::Found::Header(_))) if from_folder_known => return Ok(Carried::SourceGone),
        _ => return Ok(Carried::Nothing),
    }
    // A rename within a folder: the target's `.rsrc` is the one just pinned (held, checked
    // at its path, not a link), so it is there; else it is made if need be.
    let same_rsrc = from_rsrc
        .parent()
        .is_some_and(|up| Some(up) == to_rsrc.parent());
    if !same_rsrc {
        let target_dir = match pins.pin(&to_rsrc, 2) {
            Err(VolumeError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Carried::TargetGone);
            }
            other => other?,
        };
        pins.rsrc_dir(&to_rsrc, &target_dir)?;
    }
    if onto_free {
        // Never over a resource file at `to` (another object's): left where it is then.
        return match pins.rename_with(&from_rsrc, &to_rsrc, rustix::fs::RenameFlags::NOREPLACE) {
            Err(VolumeError::Io { error, .. })
                if error.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Ok(Carried::Nothing)
            }
            other => other.map(|()| Carried::Moved),
        };
    }
    pins.rename(&from_rsrc, &to_rsrc).map(|()| Carried::Moved)
}

/// Remove the resource file of an object gone from `names`, unless the name holds an object
/// again (its registration rewrites the file).
fn unstamp(vol: &Volume, pins: &mut Pins<'_>, names: &[Vec<u8>]) -> Result<(), VolumeError> {
    let Some(rsrc_path) = rsrc_of(vol, names) else {
        return Ok(());
    };
    let object = match pins.pin(&vol.path_of(names), 1) {
        Ok(p) => p,
        // The folder itself is gone (rm -r): its .rsrc went with it.
        Err(VolumeError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if std::fs::symlink_metadata(&object).is_ok() {
        return Ok(());
    }
    let pinned = match pins.pin(&rsrc_path, 1) {
        Ok(p) => p,
        Err(VolumeError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    match std::fs::remove_file(&pinned) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(VolumeError::io(&rsrc_path, e)),
        _ => Ok(()),
    }
}
