//! Changes the volume's watcher saw (issue 23: a `mv` over SMB, an `rm -r` in a shell), applied
//! to the desktop as the server's own requests, with the verification a client's claim gets:
//! every path is walked by the server from the volume root without following a link, a change
//! the disk does not show any more is dropped, and one the desktop already has is a no-op (so
//! a `dt mv`, which the watcher sees too, is not applied twice).
//!
//! * `Created`: the object is registered (a directory with its whole subtree). Its claim (the
//!   `user.deskd.id` mirror, else its resource file's ID) follows a move when the record of
//!   that ID has the object's inode ([`super::moved`]), is kept when it names an ID this
//!   desktop once handed out and is free (a restore), and is otherwise ignored: a `cp -a`
//!   copy's claim is its original's, so the copy gets a new ID.
//! * `Removed`: the record (and everything below it) goes once the disk no longer shows it.
//! * `Moved`: the record moves, keeping its ID. Over a registered file, the moved object keeps
//!   its ID and the replaced one's is retired, as `dt mv` does — except a save: a file the
//!   watcher itself registered less than [`SAVE_WINDOW`] ago (a temporary, written and renamed
//!   over the document) leaves the name its ID under `replaced = "keep-id"` (the same
//!   document); `new-id` always keeps the moved object's. A directory moved over a (necessarily empty) one always
//!   keeps its own ID: its entries' records are under it.
//! * `Rescan`: everything under the path is registered, and records whose objects are gone
//!   from it are removed.
//!
//! What the disk needs afterwards (a resource file and mirror with the new ID, a resource file
//! carried along or removed) is returned as [`DiskWork`], done after the commit by the
//! watcher's thread (`crate::watch::disk`), never by the writer.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use deskd_db::{Kind, Object, WriteBatch};
use deskd_proto::ErrorReply;
use deskd_watch::Change;
use rustix::fs::{AtFlags, Mode, OFlags};

use super::errors::db_error;
use super::paths::{registered, same_object, verify_gone, verify_gone_beside};
use super::register::{register_walked, Asked};
use super::spending::Spending;
use super::Writing;
use crate::config::Replaced;
use crate::walk::{self, Node};

/// Most objects one `Created` directory or `Rescan` registers in one transaction; a larger
/// tree is left to the online repair (the caller asks for one), so one event cannot hold the
/// writer for minutes.
pub const MAX_TREE: usize = 20_000;

/// How long after the watcher registered a file its rename over a registered file counts as a
/// save (write-temp-then-rename): long enough for a large document written over SMB, short
/// enough that a file made with plain tools and moved over another later is moved as `dt mv`
/// would (its own ID kept).
pub const SAVE_WINDOW: Duration = Duration::from_secs(120);

/// Most recently registered objects remembered for [`SAVE_WINDOW`]; beyond it the oldest are
/// forgotten (their renames then keep their own IDs, as `dt mv`).
const YOUNG_MAX: usize = 65_536;

/// The files the watcher registered itself within [`SAVE_WINDOW`], kept by the writer between
/// batches.
#[derive(Debug, Default)]
pub struct Young {
    when: std::collections::HashMap<u32, Instant>,
    order: std::collections::VecDeque<(u32, Instant)>,
}

impl Young {
    fn note(&mut self, id: u32, now: Instant) {
        self.forget_old(now);
        if self.order.len() >= YOUNG_MAX {
            if let Some((old, at)) = self.order.pop_front() {
                if self.when.get(&old) == Some(&at) {
                    self.when.remove(&old);
                }
            }
        }
        self.when.insert(id, now);
        self.order.push_back((id, now));
    }

    fn is_young(&self, id: u32, now: Instant) -> bool {
        self.when
            .get(&id)
            .is_some_and(|&at| now.duration_since(at) < SAVE_WINDOW)
    }

    fn forget(&mut self, id: u32) {
        self.when.remove(&id);
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some(&(id, at)) = self.order.front() {
            if now.duration_since(at) < SAVE_WINDOW {
                break;
            }
            self.order.pop_front();
            if self.when.get(&id) == Some(&at) {
                self.when.remove(&id);
            }
        }
    }
}

/// What the disk needs once the desktop change is committed. Paths are names from the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskWork {
    /// Make the resource file (`DIR/.rsrc/NAME`) and the mirror of the object at `path` carry
    /// `id`, if it is still the inode `dev`/`ino`.
    Stamp {
        path: Vec<Vec<u8>>,
        id: u32,
        dev: u64,
        ino: u64,
        kind: Kind,
        type_code: [u8; 4],
        creator: [u8; 4],
        ctime: i64,
    },
    /// The object moved from `from` to `to`: its resource file follows it, then as `Stamp`.
    /// `onto_free`: only if no resource file is at `to` yet (a move the desktop had recorded
    /// already, whose resource file was left behind: nothing at `to` is replaced).
    /// `from_folder`: the record of the folder `from` was in, when known: that folder moved
    /// on later in the batch (`mv d/a d/b; mv d e`) took the resource file along, and it is
    /// carried from where the desktop says that folder is after the batch.
    Carry {
        from: Vec<Vec<u8>>,
        from_folder: Option<u32>,
        stamp: Box<DiskWork>,
        onto_free: bool,
    },
    /// The object at `path` is gone: remove its resource file if the name is still empty.
    Unstamp { path: Vec<Vec<u8>> },
}

/// What applying one batch of changes did.
#[derive(Debug, Default)]
pub struct WatchedOutcome {
    /// Changes that changed the desktop.
    pub applied: u64,
    /// Changes the desktop already had, or the disk no longer showed.
    pub unchanged: u64,
    /// Changes refused (an error: logged by the caller, which may ask for a rescan).
    pub failed: Vec<String>,
    /// The online repair must look (a tree larger than [`MAX_TREE`], or a rescan of the
    /// whole volume, was left to it).
    pub needs_repair: bool,
    /// Creates whose path the disk did not show when the batch was applied: a folder on the
    /// way may have been moved since (its move comes in a later batch). The watcher's thread
    /// tries each once more with the next batch, whose moves it then follows.
    pub unplaced: Vec<Change>,
    /// What the disk needs now.
    pub disk: Vec<DiskWork>,
    /// The writer could not apply the batch (closed, full disk, busy desktop): nothing was
    /// recorded.
    pub refused: Option<String>,
    /// Users whose new objects were first left unregistered in this window, over their budget
    /// of new IDs ([`super::spending`]): `(uid, budget, window)`.
    pub over_budget: Vec<(u32, u64, Duration)>,
    /// New objects left unregistered in this batch (over their owner's budget).
    pub deferred: u64,
    /// The spending window that ended with this batch (its deferred objects were tried
    /// again in it).
    pub window: Option<super::spending::WindowEnded>,
    /// When the current spending window ends, if it deferred objects: the watcher's thread
    /// gives the writer a turn then.
    pub deferred_until: Option<Instant>,
    /// The online repair must walk the volume for objects the budget deferred (more than it
    /// keeps to try again).
    pub budget_repair: bool,
    /// New objects held back now, over the budget, to try again at the window's end.
    pub held_back: u64,
}

impl WatchedOutcome {
    /// Nothing was applied, for `why`.
    pub fn refused(why: &str) -> WatchedOutcome {
        WatchedOutcome {
            refused: Some(why.to_string()),
            ..WatchedOutcome::default()
        }
    }
}

/// The names of a watcher path (relative to the root, `"."` for the root itself). `None`
/// when a name is one of deskd's own (the watcher filters them; this is the second line).
pub fn components(path: &Path) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for part in path.as_os_str().as_bytes().split(|&b| b == b'/') {
        if part.is_empty() || part == b"." {
            continue;
        }
        if part == b".." || deskd_volume::check_name(part).is_err() {
            return None;
        }
        out.push(part.to_vec());
    }
    Some(out)
}

/// Apply `changes` inside the batch, in order, walking as the server (trusted). A change that
/// fails is reported in [`WatchedOutcome::failed`] and the others still apply. `young` and
/// `spending` are the writer's, kept between batches; when the spending window has ended, the
/// folders whose new objects it deferred are rescanned first.
pub fn apply_all<B: WriteBatch + ?Sized>(
    b: &mut B,
    vol: &deskd_volume::Volume,
    replaced: Replaced,
    changes: &[Change],
    young: &mut Young,
    spending: &mut Spending,
) -> WatchedOutcome {
    let mut out = WatchedOutcome::default();
    let window = spending.roll(Instant::now());
    let rules = ClaimRules {
        last_id: b.meta("last_id").ok().flatten().unwrap_or(0) as u32,
        choosers: Choosers::of(vol),
    };
    let mut cache = super::DirCache::default();
    let access = crate::access::Access::Trusted;
    let w = &mut Writing {
        b,
        vol,
        access: &access,
        cache: &mut cache,
        replaced,
        folders: Default::default(),
        watching: true,
    };
    // The objects the last window deferred, tried again as creates charged to this one.
    let retries: Vec<Change> = window
        .iter()
        .flat_map(|w| &w.retry)
        .map(|names| Change::Created {
            path: Path::new(OsStr::from_bytes(&names.join(&b'/'))).to_path_buf(),
            dir: false,
        })
        .collect();
    if window.as_ref().is_some_and(|w| w.repair) {
        out.needs_repair = true;
        out.budget_repair = true;
    }
    out.window = window;
    for change in &retries {
        match apply_change(w, change, rules, young, Some(&mut *spending), &mut out) {
            Ok(true) => out.applied += 1,
            Ok(false) => out.unchanged += 1,
            Err(e) => out.failed.push(format!("{change:?}: {}", e.message)),
        }
    }
    for change in &follow_directory_moves(without_replaced_creates(changes)) {
        let mark = w.b.change_mark();
        match apply_change(w, change, rules, young, Some(&mut *spending), &mut out) {
            Ok(true) => out.applied += 1,
            Ok(false) => out.unchanged += 1,
            Err(e) => out.failed.push(format!("{change:?}: {}", e.message)),
        }
        // The folders' records kept for this batch's renames stay only while none of them
        // was renamed or removed (`crate::folders`).
        w.folders.forget_touched(w.b.changed_since(mark));
    }
    out.deferred_until = spending.due();
    out.held_back = spending.held_back();
    out
}

/// `changes` without the creates of names that a later move of the batch moved another object
/// over: what was created there is gone (replaced), and registering it first would make the
/// move look like a save over a registered name (`dt touch y` then `mv x y` in one batch).
fn without_replaced_creates(changes: &[Change]) -> Vec<Change> {
    // A batch of renames only (1,000 a second: docs/PERFORMANCE.md) has no create to drop:
    // no map of its targets (its growth was a fifth of the writer's allocations).
    if !changes.iter().any(|c| matches!(c, Change::Created { .. })) {
        return changes.to_vec();
    }
    let mut replaced_at = std::collections::HashMap::with_capacity(changes.len());
    for (i, change) in changes.iter().enumerate() {
        if let Change::Moved { to, .. } = change {
            replaced_at.insert(to.as_path(), i);
        }
    }
    changes
        .iter()
        .enumerate()
        .filter(|(i, change)| match change {
            Change::Created { path, .. } => replaced_at.get(path.as_path()).is_none_or(|&m| m < *i),
            _ => true,
        })
        .map(|(_, change)| change.clone())
        .collect()
}

/// Most directory moves in one batch whose earlier creates are made to follow them; beyond it
/// (a storm of directory renames) a create below a moved directory may be dropped, and the
/// next rescan registers it.
const MAX_FOLLOWED_MOVES: usize = 1000;

/// `changes` in an order the desktop can follow: a create below a directory that a later
/// change of the batch moves (the name the event gave is stale by the time the batch is
/// applied) becomes a create at the new place, right after the move. Removals keep their old
/// path (their record is still there until the move is applied).
fn follow_directory_moves(changes: Vec<Change>) -> Vec<Change> {
    // Taken and given back as they are when no folder moves (no copy of every change).
    if !changes
        .iter()
        .any(|c| matches!(c, Change::Moved { dir: true, .. }))
    {
        return changes;
    }
    let mut out: Vec<Change> = Vec::with_capacity(changes.len());
    let mut followed = 0;
    for change in changes {
        let Change::Moved {
            from,
            to,
            dir: true,
        } = &change
        else {
            out.push(change);
            continue;
        };
        followed += 1;
        if followed > MAX_FOLLOWED_MOVES {
            out.push(change);
            continue;
        }
        let mut along = Vec::new();
        out.retain(|earlier| match earlier {
            Change::Created { path, dir } => match path.strip_prefix(from) {
                Ok(rest) if !rest.as_os_str().is_empty() => {
                    along.push(Change::Created {
                        path: to.join(rest),
                        dir: *dir,
                    });
                    false
                }
                _ => true,
            },
            _ => true,
        });
        out.push(change);
        out.extend(along);
    }
    out
}

/// Apply one change inside the batch, claims judged by `rules`; new objects are counted against
/// their payers' budget in `spending` when given.
pub(super) fn apply_change<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    change: &Change,
    rules: ClaimRules,
    young: &mut Young,
    spending: Option<&mut Spending>,
    out: &mut WatchedOutcome,
) -> Result<bool, ErrorReply> {
    if matches!(
        change,
        Change::Created { dir: true, .. }
            | Change::Removed { dir: true, .. }
            | Change::Moved { dir: true, .. }
            | Change::Rescan { .. }
    ) {
        // A folder made, moved or removed: none held may be walked through again.
        w.folders.clear();
    }
    match change {
        Change::Created { path, .. } => {
            let Some(names) = components(path) else {
                return Ok(false);
            };
            let applied = created(w, &names, rules, young, spending, out)?;
            if !applied && std::fs::symlink_metadata(w.vol.path_of(&names)).is_err() {
                out.unplaced.push(change.clone());
            }
            Ok(applied)
        }
        Change::Removed { path, .. } => {
            let Some(names) = components(path) else {
                return Ok(false);
            };
            removed(w, &names, out)
        }
        Change::Moved { from, to, .. } => {
            let (Some(from), Some(to)) = (components(from), components(to)) else {
                return Ok(false);
            };
            moved(w, &from, &to, rules, young, spending, out)
        }
        Change::Rescan { path } => {
            let Some(names) = components(path) else {
                return Ok(false);
            };
            if names.is_empty() {
                // The whole volume: the online repair's job (rate-limited), not the writer's.
                out.needs_repair = true;
                return Ok(false);
            }
            rescan(w, &names, rules, young, spending, out)
        }
    }
}

/// The walk of `names` by the server (no link followed), when it reached the end.
fn walk_to<B: WriteBatch + ?Sized>(w: &Writing<'_, B>, names: &[Vec<u8>]) -> Option<walk::Walked> {
    let walked = walk::walk(w.vol.root(), names);
    walked.last()?;
    Some(walked)
}

/// What the object's own metadata says: the ID it claims (its mirror, else its resource
/// file's) and the type and creator of its resource file (what `dt cp`, `cp -a` or `rsync -a`
/// brought along). Read through descriptors held below the root (a folder swapped for a link
/// since the walk leads nowhere else); a symbolic link has no mirror of its own and its
/// target's is never read.
fn claim<B: WriteBatch + ?Sized>(w: &Writing<'_, B>, names: &[Vec<u8>], node: &Node) -> Claim {
    use std::os::unix::fs::MetadataExt;
    let root = w.vol.root();
    let path = w.vol.path_of(names);
    let mut out = Claim::default();
    if node.kind != Kind::Symlink {
        if let Ok(pinned) = deskd_volume::pin::pin(root, &path, 1) {
            let it = std::fs::symlink_metadata(&pinned.path).ok().filter(|m| {
                (m.dev(), m.ino()) == (node.dev, node.ino) && !m.file_type().is_symlink()
            });
            if let Some(m) = it {
                out.id = deskd_volume::read_id_xattr(&pinned.path);
                out.mirror_read = true;
                out.owners_own = only_its_owner_writes(m.mode());
            }
        }
    }
    let header = deskd_volume::rsrc::rsrc_path(&path)
        .and_then(|rsrc| deskd_volume::pin::pin(root, &rsrc, 2).ok())
        .and_then(|pinned| {
            let header = deskd_volume::rsrc::read_header(&pinned.path)
                .ok()
                .flatten()?;
            let file = std::fs::symlink_metadata(&pinned.path).ok();
            let dir = pinned.path.parent().and_then(|d| std::fs::metadata(d).ok());
            let owners_own = match (file, dir) {
                (Some(f), Some(d)) => {
                    header_is_owners(node.uid, (f.uid(), f.mode()), (d.uid(), d.mode()))
                }
                _ => false,
            };
            Some((header, owners_own))
        });
    if let Some((h, owners_own)) = header {
        take_header(&mut out, &h, owners_own);
    }
    out
}

/// [`claim`] of the entry `name` of a folder held open (`dir`, and its `.rsrc` if it has
/// one), as [`register_tree`] lists it: the same reads through the descriptors, without
/// walking from the root again for every entry.
fn claim_in(dir: &OwnedFd, rsrc_dir: Option<&OwnedFd>, name: &[u8], node: &Node) -> Claim {
    use std::os::fd::{AsFd, AsRawFd};
    let name = OsStr::from_bytes(name);
    let mut out = Claim::default();
    // The name must still hold the inode just listed (as `claim` checks): a file swapped in
    // since would lend its mirror. Not followed: a link has no mirror of its own.
    let still_it = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .filter(|st| (st.st_dev, st.st_ino) == (node.dev, node.ino));
    if let (true, Some(st)) = (node.kind != Kind::Symlink, still_it) {
        let path = Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
        out.id = deskd_volume::read_id_xattr(&path);
        out.mirror_read = true;
        out.owners_own = only_its_owner_writes(st.st_mode);
    }
    // Opened in the `.rsrc` held open: a path through /proc/self/fd is a link, which the
    // path-based reader refuses (the hostile review of 2026-12-07, finding 2: no header was
    // ever read here, and a folder moved in lost its entries' type and creator).
    let header = rsrc_dir.and_then(|rsrc| {
        let header = deskd_volume::rsrc::read_header_at(rsrc.as_fd(), name)
            .ok()
            .flatten()?;
        let file = rustix::fs::statat(rsrc, name, AtFlags::SYMLINK_NOFOLLOW).ok();
        let folder = rustix::fs::fstat(rsrc).ok();
        let owners_own = match (file, folder) {
            (Some(f), Some(d)) => {
                header_is_owners(node.uid, (f.st_uid, f.st_mode), (d.st_uid, d.st_mode))
            }
            _ => false,
        };
        Some((header, owners_own))
    });
    if let Some((h, owners_own)) = header {
        take_header(&mut out, &h, owners_own);
    }
    out
}

/// The resource file's header into `out`: its ID when the mirror gave none, its type and
/// creator.
fn take_header(out: &mut Claim, h: &deskd_volume::rsrc::ResourceHeader, owners_own: bool) {
    if out.id.is_none() && h.id != 0 {
        out.id = Some(h.id);
        out.owners_own = owners_own;
    }
    if h.type_code != [0; 4] || h.creator != [0; 4] {
        out.codes = Some((h.type_code, h.creator));
    }
}

/// Whether no one but the owner (and root) may write a file of mode `mode`: no write bit for
/// group or others. (With an ACL the group bits are its mask, which bounds every named entry.)
/// The `user.deskd.id` mirror is written by anyone who may write the file, so only then is the
/// owner the one who wrote it (hostile review of stop 42, finding 3).
fn only_its_owner_writes(mode: u32) -> bool {
    mode & 0o022 == 0
}

/// Whether a resource file header's ID is the object owner's word: the resource file is the
/// object owner's (`owner`) and no one else may write it, and its `.rsrc` folder lets no one
/// else rename entries in (no write for others, or the sticky bit), as `deskd rebuild` asks
/// (`deskd_rebuild::claims`).
fn header_is_owners(owner: u32, (uid, mode): (u32, u32), (dir_uid, dir_mode): (u32, u32)) -> bool {
    uid == owner
        && only_its_owner_writes(mode)
        && (dir_uid == owner || dir_uid == 0)
        && (only_its_owner_writes(dir_mode) || dir_mode & 0o1000 != 0)
}

/// What [`claim`] read.
#[derive(Default, Clone, Copy)]
struct Claim {
    id: Option<u32>,
    codes: Option<([u8; 4], [u8; 4])>,
    /// The object's mirror was read (its answer is in `id`, before the resource file's).
    mirror_read: bool,
    /// `id` was written by the object's owner: no one else may write its carrier
    /// ([`only_its_owner_writes`]). Otherwise it is only followed as a move.
    owners_own: bool,
}

/// Who may choose an object's ID by its claim (docs/security.md, "IDs under attack"): the
/// owner of the object must be root, the server's own user or the volume's owner — those who
/// could restore the volume anyway. Anyone else's claim is only followed as a move.
#[derive(Clone, Copy)]
pub(super) struct Choosers {
    server: u32,
    volume_owner: Option<u32>,
}

impl Choosers {
    pub(super) fn of(vol: &deskd_volume::Volume) -> Choosers {
        use std::os::unix::fs::MetadataExt;
        Choosers {
            server: rustix::process::geteuid().as_raw(),
            volume_owner: std::fs::metadata(vol.root()).ok().map(|m| m.uid()),
        }
    }

    fn may_choose(&self, owner: u32) -> bool {
        owner == 0 || owner == self.server || Some(owner) == self.volume_owner
    }
}

/// What a claim may choose in one batch, worked out once at its start.
#[derive(Clone, Copy)]
pub(super) struct ClaimRules {
    /// The desktop's counter when the batch began: a claim above it was never handed out here
    /// and is not kept.
    last_id: u32,
    choosers: Choosers,
}

/// What a registration asks with the object's claim: followed as a move always; kept as a
/// hint only when the object's owner may choose IDs, wrote the claim (no one else may write
/// its carrier) and this desktop once handed the ID out (a restore: a mirror cannot raise the
/// counter).
fn asked_with(claim: Claim, owner: u32, rules: ClaimRules) -> Asked {
    Asked {
        hint: claim.id.filter(|&id| {
            id <= rules.last_id
                && id > deskd_db::ROOT_ID
                && claim.owners_own
                && rules.choosers.may_choose(owner)
        }),
        carried: claim.id,
        type_code: claim.codes.map(|c| c.0),
        creator: claim.codes.map(|c| c.1),
        mirror_read: claim.mirror_read,
        ..Asked::default()
    }
    .registering()
}

fn stamp(names: &[Vec<u8>], o: &Object) -> DiskWork {
    DiskWork::stamp_of(names, o)
}

impl DiskWork {
    /// The stamp of the object `o`, at `names`.
    pub fn stamp_of(names: &[Vec<u8>], o: &Object) -> DiskWork {
        DiskWork::Stamp {
            path: names.to_vec(),
            id: o.id,
            dev: o.dev,
            ino: o.ino,
            kind: o.kind,
            type_code: o.type_code,
            creator: o.creator,
            ctime: o.ctime,
        }
    }
}

/// The first of the folders above the object at `names` that has no record yet (their records
/// are made on the way, and need their resource files and mirrors too).
fn first_unregistered_above<B: WriteBatch + ?Sized>(
    w: &Writing<'_, B>,
    names: &[Vec<u8>],
) -> Result<Option<usize>, ErrorReply> {
    for end in 1..names.len() {
        if registered(w.b, &names[..end])?.is_none() {
            return Ok(Some(end));
        }
    }
    Ok(None)
}

/// Stamp the folders registered on the way to `names`, from the `first` unregistered one.
fn stamp_folders_on_the_way<B: WriteBatch + ?Sized>(
    w: &Writing<'_, B>,
    names: &[Vec<u8>],
    first: Option<usize>,
    out: &mut WatchedOutcome,
) -> Result<(), ErrorReply> {
    let Some(first) = first else {
        return Ok(());
    };
    for end in first..names.len() {
        if let Some(folder) = registered(w.b, &names[..end])? {
            out.disk.push(stamp(&names[..end], &folder));
        }
    }
    Ok(())
}

/// Register the object at `names` (and, a directory, what is below it).
fn created<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    names: &[Vec<u8>],
    rules: ClaimRules,
    young: &mut Young,
    mut spending: Option<&mut Spending>,
    out: &mut WatchedOutcome,
) -> Result<bool, ErrorReply> {
    if names.is_empty() {
        return Ok(false);
    }
    let Some(walked) = walk_to(w, names) else {
        return Ok(false); // gone again: a temporary file gets no ID
    };
    let node = *walked.last().expect("reached");
    let mut before = registered(w.b, names)?;
    if let Some(stale) = before.as_ref().filter(|o| o.kind != node.kind) {
        // Another kind of object holds the name now (a folder swapped for a link, a file
        // for a folder): the recorded one is not there any more.
        w.b.delete(stale.id, true).map_err(db_error)?;
        w.cache.clear();
        before = None;
    }
    if before.is_none() && deferred(spending.as_deref_mut(), &node, names, out) {
        return Ok(false);
    }
    let counter_before = w.b.counter();
    let folders = first_unregistered_above(w, names)?;
    let claimed = claim(w, names, &node);
    let done = register_following(
        w,
        names,
        &walked.nodes,
        before.as_ref(),
        claimed,
        rules,
        out,
    )?;
    stamp_folders_on_the_way(w, names, folders, out)?;
    if done.created && node.kind != Kind::Dir {
        young.note(done.object.id, Instant::now());
    }
    if let Some(spending) = spending.as_deref_mut() {
        spending.spent(
            super::spending::payer(&node),
            u64::from(w.b.counter() - counter_before),
        );
    }
    let mut below = false;
    if node.kind == Kind::Dir {
        let mut tree = Tree::default();
        below = register_tree(w, names, &walked, rules, out, &mut tree, spending)?;
        // A folder is what is in it now: a record of an entry made (by a client) and removed
        // before the watcher saw the folder (inotify adds its watch only then) goes too.
        if !out.needs_repair {
            below |= drop_vanished_below(w, names, &tree.listed, out)?;
        }
    }
    Ok(done.changed || below)
}

/// Whether the new object `node` at `names` is left for later because its payer is over the
/// budget of new IDs (and if so, noted in `spending` and `out`).
fn deferred(
    spending: Option<&mut Spending>,
    node: &Node,
    names: &[Vec<u8>],
    out: &mut WatchedOutcome,
) -> bool {
    let Some(spending) = spending else {
        return false;
    };
    let payer = super::spending::payer(node);
    if spending.allows(payer) {
        return false;
    }
    out.deferred += 1;
    if spending.defer(payer, names) {
        out.over_budget
            .push((payer, spending.budget(), spending.window()));
    }
    true
}

/// What [`register_following`] did.
struct Registered {
    object: Object,
    /// A new record was made.
    created: bool,
    /// The desktop changed at the name: a new record, or another ID or inode than `before`.
    changed: bool,
}

/// Register the object at `names` (walked as `nodes`, the last being `node`; `before` is the
/// record at that name, if any) with what it claims, and push its disk work: a stamp when the
/// desktop changed, and when the registration followed the claimed ID's record from another
/// place (a move whose two ends the watcher's coalescing folded into a create, or one seen only
/// as the entries of a new folder), its resource file is carried from there first, as for a
/// `Moved`, so its comment and fork go with it.
fn register_following<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    names: &[Vec<u8>],
    nodes: &[Node],
    before: Option<&Object>,
    claimed: Claim,
    rules: ClaimRules,
    out: &mut WatchedOutcome,
) -> Result<Registered, ErrorReply> {
    let node = nodes.last().expect("walked to the object");
    let claimed_at = claimed
        .id
        .filter(|&id| before.is_none_or(|b| b.id != id))
        .and_then(|id| Some((id, w.b.path_of(id).ok()?)))
        .filter(|(_, at)| at.as_slice() != names && !at.is_empty());
    let asked = asked_with(claimed, node.uid, rules);
    let (object, created) = register_walked(w, names, nodes, asked)?;
    let changed = created
        || before.is_none_or(|b| b.id != object.id || (b.dev, b.ino) != (object.dev, object.ino));
    match claimed_at {
        Some((id, from)) if !created && id == object.id => out.disk.push(DiskWork::Carry {
            from,
            from_folder: None,
            stamp: Box::new(stamp(names, &object)),
            onto_free: false,
        }),
        _ if changed => out.disk.push(stamp(names, &object)),
        _ => {}
    }
    Ok(Registered {
        object,
        created,
        changed,
    })
}

/// Register every entry below the directory `names` (walked as `walked`), depth first, no
/// link followed. Returns whether anything was registered.
fn register_tree<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    names: &[Vec<u8>],
    walked: &walk::Walked,
    rules: ClaimRules,
    out: &mut WatchedOutcome,
    tree: &mut Tree,
    mut spending: Option<&mut Spending>,
) -> Result<bool, ErrorReply> {
    let Some(fd) = walked.fd.as_ref() else {
        return Ok(false);
    };
    let mut any = false;
    // (directory names, its open descriptor, the nodes from the root to it)
    let Ok(first) = rustix::fs::openat(
        fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return Ok(false);
    };
    let mut stack = vec![(names.to_vec(), first, walked.nodes.clone())];
    while let Some((dir_names, dir_fd, dir_nodes)) = stack.pop() {
        let Ok(mut dir) = rustix::fs::Dir::read_from(&dir_fd) else {
            continue;
        };
        let mut entries = Vec::new();
        while let Some(Ok(entry)) = dir.next() {
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." || deskd_volume::check_name(name).is_err() {
                continue;
            }
            entries.push(name.to_vec());
        }
        entries.sort();
        // The folder's `.rsrc`, opened once (never through a link), for every entry's claim.
        let rsrc_dir = rustix::fs::openat(
            &dir_fd,
            deskd_volume::rsrc::RSRC_DIR,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok();
        for name in entries {
            if tree.budget == 0 {
                out.needs_repair = true;
                return Ok(any);
            }
            tree.budget -= 1;
            let Ok(st) =
                rustix::fs::statat(&dir_fd, OsStr::from_bytes(&name), AtFlags::SYMLINK_NOFOLLOW)
            else {
                continue; // gone since the listing
            };
            let node = walk::node_from(&st);
            let mut child_names = dir_names.clone();
            child_names.push(name.clone());
            let mut child_nodes = dir_nodes.clone();
            child_nodes.push(node);
            let before = registered(w.b, &child_names)?;
            if before.is_none() && deferred(spending.as_deref_mut(), &node, &child_names, out) {
                continue; // a folder: its whole subtree, when it is tried again
            }
            let counter_before = w.b.counter();
            let claimed = claim_in(&dir_fd, rsrc_dir.as_ref(), &name, &node);
            let done = match register_following(
                w,
                &child_names,
                &child_nodes,
                before.as_ref(),
                claimed,
                rules,
                out,
            ) {
                Ok(done) => done,
                Err(e) => {
                    out.failed.push(e.message);
                    continue;
                }
            };
            if let Some(spending) = spending.as_deref_mut() {
                spending.spent(
                    super::spending::payer(&node),
                    u64::from(w.b.counter() - counter_before),
                );
            }
            any |= done.changed;
            tree.listed.insert(done.object.id);
            if node.kind == Kind::Dir {
                // Opened below the folder just listed, never through a link; a directory
                // swapped for one since the stat is not entered.
                if let Ok(sub) = rustix::fs::openat(
                    &dir_fd,
                    OsStr::from_bytes(&name),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ) {
                    if rustix::fs::fstat(&sub)
                        .is_ok_and(|s| (s.st_dev, s.st_ino) == (node.dev, node.ino))
                    {
                        stack.push((child_names, sub, child_nodes));
                    }
                }
            }
        }
    }
    Ok(any)
}

/// Remove the record at `names` (and below) if the disk no longer shows its object there.
fn removed<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    names: &[Vec<u8>],
    out: &mut WatchedOutcome,
) -> Result<bool, ErrorReply> {
    if names.is_empty() {
        return Ok(false);
    }
    let Some(object) = registered(w.b, names)? else {
        return Ok(false);
    };
    if verify_gone(w.vol, &object, names).is_err() {
        return Ok(false); // still (or again) there: nothing to do
    }
    w.b.delete(object.id, true).map_err(db_error)?;
    w.cache.clear();
    out.disk.push(DiskWork::Unstamp {
        path: names.to_vec(),
    });
    Ok(true)
}

/// The IDs [`register_tree`] registered or found at the place it listed them, in one
/// transaction: [`drop_vanished_below`] need not ask the disk whether they are still there.
type Listed = std::collections::HashSet<u32>;

/// One [`register_tree`]'s work: the objects it may still register inline (then the online
/// repair takes over) and what it listed.
struct Tree {
    budget: usize,
    listed: Listed,
}

impl Default for Tree {
    fn default() -> Self {
        Tree {
            budget: MAX_TREE,
            listed: Listed::default(),
        }
    }
}

/// The object at `from` is now at `to`.
fn moved<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    from: &[Vec<u8>],
    to: &[Vec<u8>],
    rules: ClaimRules,
    young: &mut Young,
    spending: Option<&mut Spending>,
    out: &mut WatchedOutcome,
) -> Result<bool, ErrorReply> {
    if from.is_empty() || to.is_empty() {
        return Ok(false);
    }
    // Through the folder held when this batch walked to it before (`crate::folders`).
    let walked = w.folders.walk(w.vol.root(), to);
    let Some(walked) = walked.last().is_some().then_some(walked) else {
        // Moved on again (or removed) since: what was at `from` is gone from there. Its
        // record follows the move as the kernel told it, when the folder named for `to` holds
        // nothing by that name: the change that took it on from there (its folder's move, its
        // own next move or removal) comes after this one and is applied to the record there.
        // It was removed, and `mv a d/c; mv d e` in one batch left `e/c` unregistered.
        if moved_as_told(w, from, to, out)? {
            return Ok(true);
        }
        return removed(w, from, out);
    };
    let node = *walked.last().expect("reached");
    let (to_name, to_parent) = to.split_last().expect("not the root");
    // A rename within a folder: the folders above `to` are those above `from`.
    let in_place = from.split_last().map(|(_, up)| up) == Some(to_parent);
    // The folder's record when an earlier rename of this batch in it kept it
    // (`crate::folders`): the object is looked up by the folder's ID.
    let kept_folder = if in_place {
        w.folders.record(to_parent).cloned()
    } else {
        None
    };
    // The record at `to`'s folder, read once here when none is kept (and used again below).
    let (overtaken, recorded_folder) = match kept_folder {
        Some(_) => (false, None),
        None => folder_overtaken(w, to_parent, &walked)?,
    };
    if overtaken {
        // The folder at `to`'s place is not the one recorded there: its owner moved that one
        // away and another in before this batch (`mv d/a d/b; mv d e; mv v d`). What the walk
        // found is another folder's; the kernel's own account is followed instead (the
        // record moves within the recorded folder; the folders' moves come next), and
        // nothing in the other folder is taken for this object (the hostile review of stop
        // 44: the other user's `b`, by its mirror, took this move).
        if moved_as_told(w, from, to, out)? {
            return Ok(true);
        }
        return removed(w, from, out);
    }
    // The record's object, not a newer one that got its freed inode number (a file system
    // hands a freed number out again at once): same kind, born no later than recorded.
    let to_path = w.vol.path_of(to);
    let at_from = match (&kept_folder, from.last()) {
        (Some(folder), Some(from_name)) => w.b.lookup(folder.id, from_name).map_err(db_error)?,
        _ => registered(w.b, from)?,
    };
    let source = at_from.filter(|o| {
        o.kind == node.kind
            && same_object(o, node.dev, node.ino)
            && super::paths::born_no_later(&to_path, &node, o.ctime) != Some(false)
    });
    let Some(source) = source else {
        // Not registered at `from` (never, or the move was recorded already): what is at `to`
        // is registered there; a record left at `from` goes if its object is gone. A move
        // recorded already by a client's registration at `to` that followed the object's
        // mirror (afpd without its AppleDouble, during a deferred burst) left the resource
        // file at `from` (`dt mv` carries it itself): it follows the record now at `to`, onto
        // a free name only.
        let gone = removed(w, from, out)?;
        if registered(w.b, from)?.is_none() {
            if let Some(at_to) = registered(w.b, to)?
                .filter(|o| o.kind == node.kind && same_object(o, node.dev, node.ino))
            {
                out.disk.push(DiskWork::Carry {
                    from: from.to_vec(),
                    from_folder: None,
                    stamp: Box::new(stamp(to, &at_to)),
                    onto_free: true,
                });
            }
        }
        return Ok(created(w, to, rules, young, spending, out)? || gone);
    };
    if verify_gone_beside(w.vol, &source, from, to, &walked).is_err() {
        // Still at `from` too: a hard link made and then renamed. The new name is registered.
        return created(w, to, rules, young, spending, out);
    }
    // Within a folder, the folders above `to` are those above `from`, where the record was
    // found, so all registered (no lookup of each again: docs/PERFORMANCE.md), and what
    // holds the new name is looked up in the record's folder (one statement, not a lookup
    // of every name on the path).
    let target = if in_place {
        w.b.lookup(source.parent, to_name).map_err(db_error)?
    } else {
        registered(w.b, to)?
    }
    .filter(|t| t.id != source.id);
    let folders = if in_place {
        None
    } else {
        first_unregistered_above(w, to)?
    };
    // Within a folder whose record is the folder the walk went through: that record (one
    // read), else the folders on the way registered as the walk found them.
    let folder_node = to_parent.len().checked_sub(1).map(|i| walked.nodes[i]);
    let same_folder = match (in_place, folder_node) {
        (true, Some(node)) => match kept_folder
            .or(recorded_folder)
            .filter(|f| f.id == source.parent)
        {
            Some(kept) => Some(kept),
            None => Some(w.b.get(source.parent).map_err(db_error)?),
        }
        .filter(|f| f.kind == Kind::Dir && (f.dev, f.ino) == (node.dev, node.ino)),
        _ => None,
    };
    if let Some(folder) = &same_folder {
        w.folders.keep_record(to_parent, folder.clone());
    }
    let parent = match same_folder {
        Some(folder) => folder,
        None => {
            register_walked(
                w,
                to_parent,
                &walked.nodes[..to_parent.len()],
                Asked::default(),
            )?
            .0
        }
    };
    stamp_folders_on_the_way(w, to, folders, out)?;
    w.cache.clear();
    match target {
        Some(mut target)
            if w.replaced == Replaced::KeepId
                && source.kind != Kind::Dir
                && target.kind == source.kind
                && young.is_young(source.id, Instant::now()) =>
        {
            young.forget(source.id);
            // The name keeps its ID (a save by write-temp-then-rename): its record takes the
            // moved inode, the moved object's record goes.
            w.b.delete(source.id, true).map_err(db_error)?;
            w.b.set_devino(target.id, node.dev, node.ino, node.ctime)
                .map_err(db_error)?;
            (target.dev, target.ino, target.ctime) = (node.dev, node.ino, node.ctime);
            out.disk.push(DiskWork::Unstamp {
                path: from.to_vec(),
            });
            out.disk.push(stamp(to, &target));
        }
        _ => {
            // Every record it needs was read above, in this batch: the rename is the update
            // alone (docs/PERFORMANCE.md).
            w.b.rename_read(&source, &parent, to_name, target.as_ref())
                .map_err(db_error)?;
            // The record as it is now, without reading it back: the rename set its folder
            // and name, and `set_devino` its inode and time.
            let source_folder = source.parent;
            let mut moved = renamed(source, parent.id, to_name);
            if moved.dev == 0 && moved.ino == 0 {
                w.b.set_devino(moved.id, node.dev, node.ino, node.ctime)
                    .map_err(db_error)?;
                (moved.dev, moved.ino, moved.ctime) = (node.dev, node.ino, node.ctime);
            }
            carry_to(out, from, source_folder, to, moved);
        }
    }
    Ok(true)
}

/// Whether the folder the walk to `names` went through last is not the one the desktop
/// records at that place (another inode: moved there since, not applied yet), with the record
/// read there. The root is never overtaken; a record from before deskd kept inodes is taken
/// at its word.
fn folder_overtaken<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    folder: &[Vec<u8>],
    walked: &walk::Walked,
) -> Result<(bool, Option<Object>), ErrorReply> {
    let Some(node) = folder
        .len()
        .checked_sub(1)
        .and_then(|i| walked.nodes.get(i))
    else {
        return Ok((false, None));
    };
    let recorded = registered(w.b, folder)?;
    let overtaken = recorded.as_ref().is_some_and(|r| {
        r.kind == Kind::Dir && r.dev != 0 && (r.dev, r.ino) != (node.dev, node.ino)
    });
    Ok((overtaken, recorded))
}

/// [`moved`] of an object whose new place the disk no longer shows (moved on since): the
/// record at `from`, if its object has left `from`, is renamed to `to` when `to`'s folder is
/// registered and holds no other record by that name. Its resource file is carried where the
/// desktop says the object is after the batch (`watch::disk`, `Carried::TargetGone`).
fn moved_as_told<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    from: &[Vec<u8>],
    to: &[Vec<u8>],
    out: &mut WatchedOutcome,
) -> Result<bool, ErrorReply> {
    let Some(source) = registered(w.b, from)? else {
        return Ok(false);
    };
    if verify_gone(w.vol, &source, from).is_err() {
        return Ok(false);
    }
    let (to_name, to_parent) = to.split_last().expect("not the root");
    // (The root's path is empty: `registered` gives the root.)
    let Some(folder) =
        registered(w.b, to_parent)?.filter(|f| f.kind == Kind::Dir && f.id != source.id)
    else {
        return Ok(false);
    };
    match w.b.rename(source.id, folder.id, to_name, false) {
        // Another record holds the name there, or a folder was told to have moved into
        // itself (the names were reused meanwhile): not followed.
        Err(deskd_db::DbError::Exists { .. } | deskd_db::DbError::IntoItself(_)) => {
            return Ok(false)
        }
        other => other.map_err(db_error)?,
    };
    w.cache.clear();
    let source_folder = source.parent;
    carry_to(
        out,
        from,
        source_folder,
        to,
        renamed(source, folder.id, to_name),
    );
    Ok(true)
}

/// `record` as a rename to `name` in folder `parent` leaves it (not read back).
fn renamed(mut record: Object, parent: u32, name: &[u8]) -> Object {
    (record.parent, record.name) = (parent, name.to_vec());
    record
}

/// The disk work of a record moved from `from` (in the folder whose record is `from_folder`)
/// to `to`: its resource file carried, then stamped as `moved` says.
fn carry_to(
    out: &mut WatchedOutcome,
    from: &[Vec<u8>],
    from_folder: u32,
    to: &[Vec<u8>],
    moved: Object,
) {
    out.disk.push(DiskWork::Carry {
        from: from.to_vec(),
        from_folder: Some(from_folder),
        stamp: Box::new(stamp(to, &moved)),
        onto_free: false,
    });
}

/// Bring the records under `names` in line with the disk: register what is there, then remove
/// the records whose objects are gone. Registering first lets an object moved within the tree
/// keep its ID (by its mirror, [`super::moved`]).
fn rescan<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    names: &[Vec<u8>],
    rules: ClaimRules,
    young: &mut Young,
    spending: Option<&mut Spending>,
    out: &mut WatchedOutcome,
) -> Result<bool, ErrorReply> {
    let Some(walked) = walk_to(w, names) else {
        return removed(w, names, out);
    };
    if !names.is_empty() {
        // A folder's create drops the records of what is gone from it as well.
        return created(w, names, rules, young, spending, out);
    }
    let mut tree = Tree::default();
    let changed = register_tree(w, names, &walked, rules, out, &mut tree, spending)?;
    if out.needs_repair {
        return Ok(changed);
    }
    Ok(drop_vanished_below(w, names, &tree.listed, out)? || changed)
}

/// Remove the records below the folder `names` (the root when empty) whose objects are gone
/// from the disk, with everything below them.
fn drop_vanished_below<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    names: &[Vec<u8>],
    listed: &Listed,
    out: &mut WatchedOutcome,
) -> Result<bool, ErrorReply> {
    let mut changed = false;
    let Some(top) = registered(w.b, names)?.or_else(|| {
        names
            .is_empty()
            .then(|| w.b.get(deskd_db::ROOT_ID).ok())
            .flatten()
    }) else {
        return Ok(changed);
    };
    let mut stack = vec![(top.id, names.to_vec())];
    while let Some((id, dir_names)) = stack.pop() {
        for child in w.b.children(id).map_err(db_error)? {
            let mut child_names = dir_names.clone();
            child_names.push(child.name.clone());
            // Seen in the listing of this very transaction: there (a removal since is an
            // event of its own), so not looked up on the disk a second time.
            if !listed.contains(&child.id) && verify_gone(w.vol, &child, &child_names).is_ok() {
                w.b.delete(child.id, true).map_err(db_error)?;
                w.cache.clear();
                out.disk.push(DiskWork::Unstamp { path: child_names });
                changed = true;
            } else if child.kind == Kind::Dir {
                stack.push((child.id, child_names));
            }
        }
    }
    Ok(changed)
}
