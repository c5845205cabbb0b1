//! Online rebuild: the server runs the walk and the plan while clients go on working, then
//! applies the plan inside its writer thread (so no client write lands in between), as a diff
//! against the live desktop rather than a new file.
//!
//! What keeps every acknowledged write (docs/rebuild.md, "Online"):
//! * The server records the ID of every row a client batch changes from just before the
//!   snapshot the plan starts from ([`deskd_db::TouchLog`]). A recorded object, a recorded row
//!   at an object's place, and everything below them are left as the clients made them.
//! * Every change is re-checked against the disk first: an object is only written when its
//!   path still shows the device and inode the walk saw; a row is only removed when its object
//!   is really gone; a resource file or mirror is only written after reading it again.
//! * New IDs come from the live counter, which clients may have moved since the snapshot.
//! * Only objects with a difference (or whose parent's ID changed) are touched, so the writer
//!   holds client writes back for a moment proportional to the damage, not to the volume.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use deskd_db::{DbError, Kind, Object, Read, WriteBatch, ROOT_ID};
use deskd_volume::rsrc::{self, ResourceHeader};

use crate::plan::{Fix, OldDesktop, Plan};
use crate::walk::Walk;
use crate::Mode;

/// What one online pass needs.
pub struct Pass<'a> {
    pub mode: Mode,
    pub walk: &'a Walk,
    pub plan: &'a Plan,
    /// The desktop the plan started from.
    pub snapshot: Option<&'a OldDesktop>,
    /// IDs clients changed since the snapshot.
    pub touched: &'a HashSet<u32>,
    /// The volume keeps user xattrs (mirrors are expected).
    pub xattrs: bool,
}

/// What one online pass did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Objects whose row, resource file or mirror changed.
    pub changed: u64,
    /// New IDs handed out (objects without one, and renumbered duplicates).
    pub new_ids: u64,
    /// Rows of vanished objects and orphaned resource files removed.
    pub removed: u64,
    /// Objects left alone because a client changed them (or the disk moved on) meanwhile.
    pub left: u64,
    /// Of those, how many had a difference the pass did not repair (another pass looks again).
    pub left_with_differences: u64,
    /// Repairs that failed, each logged as one line.
    pub errors: Vec<RepairFailure>,
}

/// A repair an online pass could not make ([`Applied::errors`]). The pass goes on with the
/// other objects; each failure displays as the line the server logs for it. The causes are
/// part of the message and deliberately not a `source` (as in [`crate::RebuildError`]).
#[derive(Debug, thiserror::Error)]
pub enum RepairFailure {
    /// The object's resource file or ID mirror could not be written.
    #[error("{}: {error}", path.display())]
    Disk {
        path: PathBuf,
        error: crate::RebuildError,
    },
    /// The object's row could not be placed in the desktop.
    #[error("{}: {error}", path.display())]
    Row { path: PathBuf, error: DbError },
    /// An orphaned resource file (or its owner's place) could not be reached below the root.
    #[error("{0}")]
    OrphanUnreachable(deskd_volume::VolumeError),
    /// An orphaned resource file could not be removed.
    #[error("{}: {error}", path.display())]
    OrphanKept {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The row of a vanished object could not be removed.
    #[error("ID {id}: {error}")]
    VanishedRow { id: u32, error: DbError },
}

/// What happened to one object.
enum Outcome {
    /// The row is now as planned, under this ID; `changed` when the desktop changed.
    Placed { id: u32, changed: bool, new: bool },
    /// Left alone; its ID in the live desktop if it has one there (its children go on).
    Left(Option<u32>),
}

fn get_opt<R: Read>(db: &R, id: u32) -> Result<Option<Object>, DbError> {
    match db.get(id) {
        Ok(o) => Ok(Some(o)),
        Err(DbError::NoSuchId(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The device and inode at `path` now (not following a symlink).
fn devino(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Same row, ignoring the creation time (which a rebuild keeps from the desktop).
fn same_row(a: &Object, b: &Object) -> bool {
    (
        a.parent,
        &a.name,
        a.kind,
        a.dev,
        a.ino,
        a.type_code,
        a.creator,
        a.flags,
    ) == (
        b.parent,
        &b.name,
        b.kind,
        b.dev,
        b.ino,
        b.type_code,
        b.creator,
        b.flags,
    )
}

/// Which walked objects the plan found a difference for.
fn differing(p: &Pass<'_>) -> Vec<bool> {
    let mut out = vec![false; p.walk.found.len()];
    for d in &p.plan.differences {
        if let Some(i) = d.object {
            out[i as usize] = true;
        }
    }
    out
}

/// Apply one pass inside the writer's batch. Returns what it did; the caller commits.
pub fn apply<B: WriteBatch>(batch: &mut B, p: &Pass<'_>) -> Applied {
    let mut applier = Applier::new(p);
    while !applier.run(batch, p, None) {}
    applier.finish()
}

/// Where a chunked apply ([`Applier`]) is.
enum Stage {
    /// The root's disk repair, then walked object `next` on.
    Objects {
        next: usize,
    },
    /// Reading the vanished rows' places: `candidates[at..]` are still to read.
    VanishedRead {
        candidates: Vec<u32>,
        at: usize,
        by_depth: Vec<(usize, u32)>,
    },
    /// Removing them, deepest first: `by_depth[at..]` are still to remove.
    VanishedRemove {
        by_depth: Vec<(usize, u32)>,
        at: usize,
    },
    Done,
}

/// One pass applied in chunks, each inside a batch of its own (issue 28): on a desktop in
/// PostgreSQL the apply holds the volume's row lock, which every server's writes wait for,
/// so the server commits a chunk, lets the writes in, and goes on in a new batch. Every
/// chunk gets the [`Pass`] again with `touched` grown by what clients changed meanwhile;
/// each repair checks it (and the disk) as it does in a single batch, so a write that came
/// in between is kept. What a chunk already committed stays: rows it parked (moved to a
/// `park/ID` name to free a place) are visible as such until a later chunk overwrites or
/// removes them.
pub struct Applier {
    differs: Vec<bool>,
    final_id: Vec<Option<u32>>,
    parked: HashSet<u32>,
    stage: Stage,
    out: Applied,
}

impl Applier {
    pub fn new(p: &Pass<'_>) -> Applier {
        let n = p.walk.found.len();
        let mut final_id = vec![None; n];
        if n > 0 {
            final_id[0] = Some(ROOT_ID);
        }
        Applier {
            differs: differing(p),
            final_id,
            parked: HashSet::new(),
            stage: Stage::Objects { next: 0 },
            out: Applied::default(),
        }
    }

    /// Apply inside `batch` until done or until `until` has passed (checked after each
    /// repair; `None`: to the end). Returns whether the pass is done; if not, the caller
    /// commits and calls again with a new batch.
    pub fn run<B: WriteBatch>(
        &mut self,
        batch: &mut B,
        p: &Pass<'_>,
        until: Option<std::time::Instant>,
    ) -> bool {
        let over = || until.is_some_and(|t| std::time::Instant::now() >= t);
        loop {
            match &mut self.stage {
                Stage::Objects { next } => {
                    let from = *next;
                    match self.objects(batch, p, from, &over) {
                        Some(at) => {
                            self.stage = Stage::Objects { next: at };
                            return false;
                        }
                        None => {
                            remove_orphans(p, &mut self.out);
                            self.stage = Stage::VanishedRead {
                                candidates: vanished_candidates(p, &self.final_id, &self.parked),
                                at: 0,
                                by_depth: Vec::new(),
                            };
                        }
                    }
                }
                Stage::VanishedRead {
                    candidates,
                    at,
                    by_depth,
                } => {
                    while *at < candidates.len() {
                        let id = candidates[*at];
                        *at += 1;
                        if let Some(depth) = vanished_depth(batch, p, &self.parked, id) {
                            by_depth.push((depth, id));
                        }
                        if over() {
                            return false;
                        }
                    }
                    let mut by_depth = std::mem::take(by_depth);
                    by_depth.sort_unstable_by(|a, b| b.cmp(a));
                    self.stage = Stage::VanishedRemove { by_depth, at: 0 };
                }
                Stage::VanishedRemove { by_depth, at } => {
                    while *at < by_depth.len() {
                        let (_, id) = by_depth[*at];
                        *at += 1;
                        // A client changed it since it was read (a chunk before): its row.
                        if !p.touched.contains(&id) {
                            match batch.step(|b| b.delete(id, false)) {
                                Ok(_) => self.out.removed += 1,
                                Err(DbError::NotEmpty(_)) => self.out.left += 1,
                                Err(error) => self
                                    .out
                                    .errors
                                    .push(RepairFailure::VanishedRow { id, error }),
                            }
                        }
                        if over() {
                            return false;
                        }
                    }
                    self.stage = Stage::Done;
                }
                Stage::Done => return true,
            }
        }
    }

    /// What the pass did (so far).
    pub fn finish(self) -> Applied {
        self.out
    }

    /// The walked objects from `from` on; `Some(i)` when `over` stopped it before object `i`.
    fn objects<B: WriteBatch>(
        &mut self,
        batch: &mut B,
        p: &Pass<'_>,
        from: usize,
        over: &dyn Fn() -> bool,
    ) -> Option<usize> {
        let walk = p.walk;
        let n = walk.found.len();
        let everything = p.mode == Mode::Fresh;
        let moves: HashMap<&Path, (&Path, u32)> = p
            .plan
            .fixes
            .iter()
            .filter_map(|f| match f {
                Fix::MoveRsrc { from, to, id } => Some((to.as_path(), (from.as_path(), *id))),
                _ => None,
            })
            .collect();
        let comments: HashMap<u32, &[u8]> = p
            .plan
            .comments
            .iter()
            .map(|(id, text)| (*id, &text[..]))
            .collect();
        let (differs, final_id, parked, out) = (
            &self.differs,
            &mut self.final_id,
            &mut self.parked,
            &mut self.out,
        );
        if from == 0 && n > 0 {
            let root = walk.path(0);
            if (everything || differs[0]) && !p.touched.contains(&ROOT_ID) {
                let row = p.plan.object(walk, 0);
                match fix_disk(
                    &root,
                    &rsrc::root_rsrc_path(&root),
                    &row,
                    ROOT_ID,
                    p,
                    &moves,
                ) {
                    Ok(true) => out.changed += 1,
                    Ok(false) => {}
                    Err(error) => out.errors.push(RepairFailure::Disk {
                        path: root.clone(),
                        error,
                    }),
                }
            }
        }
        for i in from.max(1)..n {
            let f = &walk.found[i];
            let planned = &p.plan.rows[i];
            let Some(parent) = final_id[f.parent as usize] else {
                out.left += 1;
                out.left_with_differences += differs[i] as u64;
                continue;
            };
            let needed = everything
                || differs[i]
                || p.plan.new_id[i]
                || parent != p.plan.parent_id(walk, i)
                || p.touched.contains(&planned.id);
            if !needed {
                final_id[i] = Some(planned.id);
                continue;
            }
            let path = walk.path(i as u32);
            // Rows this object pushed aside; they count only if its step commits.
            let mut pushed_aside = Vec::new();
            let outcome =
                batch.step(|b| place_object(b, p, i, parent, &path, &mut pushed_aside, &comments));
            match outcome {
                Ok(Outcome::Placed { id, changed, new }) => {
                    parked.extend(pushed_aside);
                    parked.remove(&id);
                    final_id[i] = Some(id);
                    out.new_ids += new as u64;
                    let rsrc_path = rsrc::rsrc_path(&path).expect("a child has a parent");
                    let row = Object {
                        id,
                        parent,
                        ..p.plan.object(walk, i)
                    };
                    match fix_disk(&path, &rsrc_path, &row, planned.id, p, &moves) {
                        Ok(disk) => out.changed += (changed || disk) as u64,
                        Err(error) => out.errors.push(RepairFailure::Disk {
                            path: path.clone(),
                            error,
                        }),
                    }
                }
                Ok(Outcome::Left(id)) => {
                    final_id[i] = id;
                    out.left += 1;
                    out.left_with_differences += differs[i] as u64;
                }
                Err(error) => {
                    out.errors.push(RepairFailure::Row {
                        path: path.clone(),
                        error,
                    });
                    out.left_with_differences += 1;
                }
            }
            if i + 1 < n && over() {
                return Some(i + 1);
            }
        }
        None
    }
}

/// Make the desktop hold walked object `i` at (`parent`, its name) with its planned ID.
fn place_object<B: WriteBatch>(
    b: &mut B,
    p: &Pass<'_>,
    i: usize,
    parent: u32,
    path: &Path,
    pushed_aside: &mut Vec<u32>,
    comments: &HashMap<u32, &[u8]>,
) -> Result<Outcome, DbError> {
    let f = &p.walk.found[i];
    let planned = p.plan.object(p.walk, i);
    // The disk must still show the object the walk saw.
    if devino(path) != Some((f.dev, f.ino)) {
        return Ok(Outcome::Left(None));
    }
    // A row a client put at this place since the snapshot is newer than the walk.
    let at_place = b.lookup(parent, &planned.name)?;
    if let Some(o) = &at_place {
        if p.touched.contains(&o.id) {
            return Ok(Outcome::Left(
                ((o.dev, o.ino) == (f.dev, f.ino)).then_some(o.id),
            ));
        }
    }
    let mut new = false;
    let id = if p.plan.new_id[i] {
        new = true;
        b.allocate_id()?
    } else if p.touched.contains(&planned.id) {
        match get_opt(b, planned.id)? {
            // A client changed this very object: its row is newer.
            Some(live) if (live.dev, live.ino) == (f.dev, f.ino) => {
                return Ok(Outcome::Left(Some(planned.id)))
            }
            // A client gave the ID to another object meanwhile: this one is the duplicate.
            _ => {
                new = true;
                b.allocate_id()?
            }
        }
    } else {
        planned.id
    };
    if let Some(o) = at_place {
        if o.id != id {
            b.park(o.id)?;
            pushed_aside.push(o.id);
        }
    }
    let planned_id = planned.id;
    let row = Object {
        id,
        parent,
        ..planned
    };
    let changed = match get_opt(b, id)? {
        Some(live) if same_row(&live, &row) => false,
        Some(_) => {
            b.overwrite(&row)?;
            true
        }
        None => {
            b.insert_with_id(&row)?;
            true
        }
    };
    if let Some(text) = comments.get(&planned_id) {
        if b.comment(id)?.is_none() {
            b.comment_set(id, text)?;
        }
    }
    Ok(Outcome::Placed { id, changed, new })
}

/// Make the resource file and the mirror of the object at `path` carry `row.id`, reading both
/// again first. A resource file left behind by a plain `mv` (planned for `planned_id`) moves
/// here when this object has none. Returns whether anything was written.
fn fix_disk(
    path: &Path,
    rsrc_path: &Path,
    row: &Object,
    planned_id: u32,
    p: &Pass<'_>,
    moves: &HashMap<&Path, (&Path, u32)>,
) -> Result<bool, crate::RebuildError> {
    let id = row.id;
    let mut wrote = false;
    // Opened below the root without following a symlink on the way (deskd_volume::pin): a
    // folder swapped for a link since the walk leads nowhere else.
    use deskd_volume::pin::pin;
    let root = p.walk.path(0);
    let planned_rsrc = rsrc_path;
    let object_pin = if path == root {
        None
    } else {
        Some(pin(&root, path, 1)?)
    };
    let path: &Path = object_pin.as_ref().map_or(path, |x| &x.path);
    let rsrc_pin = pin(&root, rsrc_path, 2)?;
    let rsrc_path: &Path = &rsrc_pin.path;
    // A resource file made here is given to its object's owner, and a `.rsrc/` made here to
    // its folder's, as the watcher's are (docs/deskd.md): the server is root, and root's
    // `.rsrc/` in a user's folder shut the user's own `dt` out of it. (`Ok(None)`: no file
    // there, so one written below is made here.)
    let header = rsrc::read_header(rsrc_path);
    let existed = !matches!(header, Ok(None));
    match header {
        Ok(Some(h)) if h.id == id => {}
        Ok(Some(mut h)) => {
            h.id = id;
            rsrc::write_header(rsrc_path, &h)?;
            wrote = true;
        }
        current => {
            let moved = match (&current, moves.get(planned_rsrc)) {
                (Ok(None), Some(&(from, moved_id)))
                    if moved_id == planned_id && !p.touched.contains(&moved_id) =>
                {
                    rsrc::make_rsrc_dir_like_its_folder(rsrc_path)?;
                    let from = pin(&root, from, 1)?;
                    let to = pin(&root, planned_rsrc, 1)?;
                    std::fs::rename(&from.path, &to.path).is_ok()
                }
                _ => false,
            };
            if moved {
                rsrc::ensure_id(rsrc_path, id, || {
                    ResourceHeader::new(id, row.type_code, row.creator, 0)
                })?;
            } else {
                let mut header =
                    ResourceHeader::new(id, row.type_code, row.creator, row.ctime.max(0) as u32);
                header.finder_flags = row.flags;
                rsrc::make_rsrc_dir_like_its_folder(rsrc_path)?;
                rsrc::write_header(rsrc_path, &header)?;
                if !existed {
                    // Named inside the `.rsrc` folder held open (no link followed on the way):
                    // through a path, its owner could swap `.rsrc` for a link after the write
                    // and send root's `chown` anywhere (the watcher's rule, review of stop 35).
                    if let Ok(inside) = pin(&root, planned_rsrc, 1) {
                        rsrc::give_to_the_objects_owner(&inside.path, path);
                    }
                }
            }
            wrote = true;
        }
    }
    if p.xattrs && row.kind != Kind::Symlink && deskd_volume::read_id_xattr(path) != Some(id) {
        deskd_volume::write_id_xattr(path, id)?;
        wrote = true;
    }
    Ok(wrote)
}

/// Remove the resource files the plan found without an object, if that is still so.
fn remove_orphans(p: &Pass<'_>, out: &mut Applied) {
    for fix in &p.plan.fixes {
        let Fix::RemoveOrphan { path } = fix else {
            continue;
        };
        let (Some(dir), Some(name)) = (path.parent().and_then(Path::parent), path.file_name())
        else {
            continue;
        };
        // Below the root without following a symlink on the way (deskd_volume::pin).
        let root = p.walk.path(0);
        let pinned = deskd_volume::pin::pin(&root, &dir.join(name), 1)
            .and_then(|owner| Ok((owner, deskd_volume::pin::pin(&root, path, 1)?)));
        let (owner, orphan) = match pinned {
            Ok(both) => both,
            Err(deskd_volume::VolumeError::Io { error, .. })
                if error.kind() == std::io::ErrorKind::NotFound =>
            {
                continue
            }
            Err(e) => {
                out.errors.push(RepairFailure::OrphanUnreachable(e));
                continue;
            }
        };
        let owner_back = std::fs::symlink_metadata(&owner.path).is_ok();
        let path = &orphan.path;
        let claimed_by_client = rsrc::read_header(path)
            .ok()
            .flatten()
            .is_some_and(|h| p.touched.contains(&h.id));
        if owner_back || claimed_by_client {
            continue;
        }
        match std::fs::remove_file(path) {
            Ok(()) => out.removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => out.errors.push(RepairFailure::OrphanKept {
                path: path.clone(),
                error,
            }),
        }
    }
}

/// The rows of objects that may be gone: rows of the snapshot the plan has no place for,
/// and rows parked to make room, unless a client changed them. Removed deepest first (a
/// directory after its entries) once each is read again ([`vanished_depth`]).
fn vanished_candidates(p: &Pass<'_>, final_id: &[Option<u32>], parked: &HashSet<u32>) -> Vec<u32> {
    // Sorted lists and a bit per snapshot row rather than sets of every ID: this runs for
    // every pass over the whole volume.
    let mut alive: Vec<u32> = final_id.iter().flatten().copied().collect();
    alive.sort_unstable();
    let mut candidates: Vec<u32> = p
        .snapshot
        .map(|s| {
            let mut planned = vec![0u64; s.objects.len().div_ceil(64)];
            for at in p.plan.rows.iter().filter_map(|r| s.objects.index_of(r.id)) {
                planned[at / 64] |= 1 << (at % 64);
            }
            s.objects
                .values()
                .enumerate()
                .filter(|(at, _)| planned[at / 64] & (1 << (at % 64)) == 0)
                .map(|(_, r)| r.id)
                .collect()
        })
        .unwrap_or_default();
    candidates.extend(parked.iter().copied());
    candidates
        .retain(|id| *id != ROOT_ID && alive.binary_search(id).is_err() && !p.touched.contains(id));
    candidates.sort_unstable();
    candidates.dedup();
    candidates
}

/// The depth of vanished candidate `id` if its row is to go: it is still in the desktop, not
/// changed by a client, and (unless parked) its object is not where the desktop says.
fn vanished_depth<B: WriteBatch>(
    batch: &mut B,
    p: &Pass<'_>,
    parked: &HashSet<u32>,
    id: u32,
) -> Option<usize> {
    if p.touched.contains(&id) {
        return None;
    }
    let live = get_opt(batch, id).ok()??;
    let components = batch.path_of(id).ok()?;
    if !parked.contains(&id) {
        let mut path = p.walk.path(0).as_os_str().as_bytes().to_vec();
        for c in &components {
            path.push(b'/');
            path.extend_from_slice(c);
        }
        let path = PathBuf::from(std::ffi::OsString::from(std::ffi::OsStr::from_bytes(&path)));
        if devino(&path) == Some((live.dev, live.ino)) {
            return None; // still there: the walk passed it by (moved into a walked directory)
        }
    }
    Some(components.len())
}

/// For a scan while clients work: drop the differences about objects a client changed since
/// the snapshot, or that the disk no longer shows as the walk saw them — they are the clients'
/// work in progress, not damage.
pub fn settled<'p>(
    walk: &Walk,
    plan: &'p Plan,
    touched: &HashSet<u32>,
) -> Vec<&'p crate::Difference> {
    plan.differences
        .iter()
        .filter(|d| match (d.object, d.id) {
            (Some(i), _) => {
                let f = &walk.found[i as usize];
                // (A planned new ID means nothing yet: clients may hold that number now.)
                let id_touched =
                    !plan.new_id[i as usize] && touched.contains(&plan.rows[i as usize].id);
                !id_touched && devino(&walk.path(i)) == Some((f.dev, f.ino))
            }
            (None, Some(id)) => !touched.contains(&id),
            (None, None) => true,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Counts, Difference};
    use crate::test_support::file_row as row;

    #[test]
    fn the_same_row_ignores_only_the_creation_time() {
        let a = row(20);
        assert!(same_row(
            &a,
            &Object {
                ctime: 5,
                ..row(20)
            }
        ));
        assert!(!same_row(
            &a,
            &Object {
                flags: 1,
                ..row(20)
            }
        ));
        assert!(!same_row(&a, &Object { ino: 4, ..row(20) }));
        assert!(!same_row(
            &a,
            &Object {
                name: b"g".to_vec(),
                ..row(20)
            }
        ));
    }

    /// A walk of the real directory `root` holding the file `f`, and a plan with one
    /// difference about it, one about a vanished row (ID 40) and one orphan.
    fn scanned(root: &Path) -> (Walk, Plan) {
        let meta = |p: &Path| std::fs::symlink_metadata(p).unwrap();
        let object = |parent, name: &str, m: std::fs::Metadata, kind| {
            crate::test_support::found(parent, name, kind, m.dev(), m.ino())
        };
        let walk = Walk::of(
            root,
            vec![
                object(u32::MAX, "", meta(root), Kind::Dir),
                object(0, "f", meta(&root.join("f")), Kind::File),
            ],
        );
        let difference = |object, id, kind| Difference {
            object,
            id,
            kind,
            path: Vec::new(),
            detail: String::new(),
        };
        let plan = Plan {
            rows: [row(ROOT_ID), row(20)]
                .iter()
                .map(|r| crate::plan::NewRow {
                    id: r.id,
                    type_code: r.type_code,
                    creator: r.creator,
                    flags: r.flags,
                    ctime: r.ctime,
                })
                .collect(),
            new_id: vec![false, false],
            comments: Vec::new(),
            differences: vec![
                difference(Some(1), Some(20), "mirror"),
                difference(None, Some(40), "vanished"),
                difference(None, None, "orphan-rsrc"),
            ],
            fixes: Vec::new(),
            last_id: 40,
            counts: Counts::default(),
        };
        (walk, plan)
    }

    fn kinds(differences: Vec<&Difference>) -> Vec<&'static str> {
        differences.into_iter().map(|d| d.kind).collect()
    }

    #[test]
    fn a_scan_keeps_differences_no_client_touched() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"").unwrap();
        let (walk, plan) = scanned(dir.path());
        assert_eq!(
            kinds(settled(&walk, &plan, &HashSet::new())),
            ["mirror", "vanished", "orphan-rsrc"]
        );
        assert_eq!(differing_of(&walk, &plan), [false, true]);
    }

    #[test]
    fn a_scan_drops_differences_about_what_clients_changed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"").unwrap();
        let (walk, mut plan) = scanned(dir.path());
        let touched = HashSet::from([20, 40]);
        assert_eq!(kinds(settled(&walk, &plan, &touched)), ["orphan-rsrc"]);
        // A planned new ID that clients happen to hold now says nothing.
        plan.new_id[1] = true;
        assert_eq!(
            kinds(settled(&walk, &plan, &touched)),
            ["mirror", "orphan-rsrc"]
        );
    }

    #[test]
    fn a_scan_drops_differences_about_objects_the_disk_moved_on_from() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"").unwrap();
        let (walk, plan) = scanned(dir.path());
        // Replaced by a save-by-rename: another inode at the path.
        std::fs::write(dir.path().join("g"), b"").unwrap();
        std::fs::rename(dir.path().join("g"), dir.path().join("f")).unwrap();
        assert_eq!(
            kinds(settled(&walk, &plan, &HashSet::new())),
            ["vanished", "orphan-rsrc"]
        );
    }

    fn differing_of(walk: &Walk, plan: &Plan) -> Vec<bool> {
        differing(&Pass {
            mode: Mode::Repair,
            walk,
            plan,
            snapshot: None,
            touched: &HashSet::new(),
            xattrs: false,
        })
    }
}
