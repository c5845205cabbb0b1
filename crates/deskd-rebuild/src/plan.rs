//! Pass 2: decide every object's ID from what the walk found, and list the differences and the
//! repairs. Nothing is changed here.
//!
//! Rules (DESIGN §8, docs/rebuild.md):
//! * An object's claim is the ID in its resource file; without a usable one, its xattr mirror;
//!   without that, Netatalk's cached CNID. The resource file wins over the desktop, but only a
//!   claim the [`ClaimPolicy`] accepts counts (its carrier written by root or the volume owner,
//!   or the desktop having that ID for the same object); the first accepted one is taken.
//! * Only true duplicates are renumbered: when several objects claim one ID, the one whose place
//!   (its path) matches the desktop's row for that ID keeps it; failing that the one with the
//!   recorded device and inode; failing that a trusted claim (root's or the volume owner's);
//!   failing that one from a resource file; failing that the first by path. The others get new
//!   IDs.
//! * An object with no claim keeps the ID the desktop has at its place (when nobody else claims
//!   it), else gets a new one from the counter, which never goes back.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use deskd_db::{ids, ApplRecord, IconRecord, Kind, Object, ROOT_ID, ROOT_PARENT_ID};
use deskd_volume::netatalk::NetatalkInfo;
use deskd_volume::rsrc::{self, ResourceHeader};
use serde::Serialize;

use crate::claims::{Claim, ClaimPolicy, Verdict};
pub use crate::old_rows::{OldRow, Rows};
use crate::walk::{Found, RsrcInfo, RsrcState, Walk};

/// The old desktop, as far as a rebuild uses it.
#[derive(Default)]
pub struct OldDesktop {
    /// Its rows by ID, and by place (directory ID, name) once indexed
    /// ([`Rows::index_places`]).
    pub objects: Rows,
    pub last_id: u32,
    pub comments: HashMap<u32, Vec<u8>>,
    pub icons: Vec<IconRecord>,
    pub appl: Vec<ApplRecord>,
    pub identity: Option<deskd_db::bulk::Identity>,
    /// Its note that the volume left its database ([`deskd_db::LEFT_DATABASE`]), carried
    /// into the new desktop.
    pub left_database: Option<i64>,
}

impl OldDesktop {
    /// The path of `id` relative to the root, from the old rows.
    pub(crate) fn rel_path(&self, id: u32) -> Option<Vec<u8>> {
        let mut parts = Vec::new();
        let mut current = id;
        while current != ROOT_ID {
            let o = self.objects.get(&current)?;
            parts.push(self.objects.name(o));
            current = o.parent;
            if parts.len() > 4096 {
                return None;
            }
        }
        parts.reverse();
        Some(parts.join(&b'/'))
    }
}

/// One difference between the disk and the desktop (one `-s` line).
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// The object's index in the walk, for differences about a walked object.
    #[serde(skip)]
    pub object: Option<u32>,
    /// The ID concerned (the object's, or a vanished row's).
    #[serde(skip)]
    pub id: Option<u32>,
    pub kind: &'static str,
    /// Absolute path, as bytes (printed raw).
    #[serde(serialize_with = "crate::bytes_lossy")]
    pub path: Vec<u8>,
    pub detail: String,
}

/// A repair on disk.
#[derive(Debug, Clone)]
pub enum Fix {
    /// Write this header into the object's resource file (creating it; fork bytes are kept).
    WriteRsrc {
        path: PathBuf,
        header: ResourceHeader,
    },
    /// Move a resource file left behind by a plain `mv` to the object that carries its ID.
    MoveRsrc { from: PathBuf, to: PathBuf, id: u32 },
    /// Set the `user.deskd.id` mirror.
    WriteXattr { path: PathBuf, id: u32 },
    /// Remove a resource file that belongs to no object.
    RemoveOrphan { path: PathBuf },
}

/// Counts for the summary line: the protocol's, so the offline report and the server's online
/// summary count the same things under the same names.
pub use deskd_proto::RebuildCounts as Counts;

/// A row of the new desktop as the plan keeps it: what the walk does not say. The parent's ID,
/// the name, kind, device and inode come from the walk ([`Plan::object`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewRow {
    pub id: u32,
    pub type_code: [u8; 4],
    pub creator: [u8; 4],
    pub flags: u16,
    pub ctime: i64,
}

/// The outcome of pass 2.
pub struct Plan {
    /// The new desktop's rows, parents before children (row `i` is walked object `i`); 24
    /// bytes each, the rest is the walk's ([`Plan::object`]).
    pub rows: Vec<NewRow>,
    /// Per row: its ID is a new one from the counter (an online rebuild re-allocates these
    /// from the live counter, which may have moved since the snapshot).
    pub new_id: Vec<bool>,
    pub comments: Vec<(u32, Vec<u8>)>,
    pub differences: Vec<Difference>,
    /// The orphans' fixes (moves and removals). The walked objects' own repairs are not listed
    /// (some 250 bytes each): [`plan_compact`] returns them as [`ObjectRepair`]s, and the online
    /// rebuild makes its own after reading the disk again.
    pub fixes: Vec<Fix>,
    pub last_id: u32,
    pub counts: Counts,
}

impl Plan {
    /// The ID of the directory holding walked object `i` in the new desktop.
    pub fn parent_id(&self, walk: &Walk, i: usize) -> u32 {
        match walk.found[i].parent {
            u32::MAX => ROOT_PARENT_ID,
            parent => self.rows[parent as usize].id,
        }
    }

    /// The new desktop's whole row for walked object `i`.
    pub fn object(&self, walk: &Walk, i: usize) -> Object {
        let (f, row) = (&walk.found[i], &self.rows[i]);
        Object {
            id: row.id,
            parent: self.parent_id(walk, i),
            name: walk.name(i as u32).to_vec(),
            kind: f.kind,
            dev: f.dev,
            ino: f.ino,
            type_code: row.type_code,
            creator: row.creator,
            flags: row.flags,
            ctime: row.ctime,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    Root,
    Rsrc,
    Xattr,
    Netatalk,
}

impl Source {
    fn describe(self) -> &'static str {
        match self {
            Source::Root => "root",
            Source::Rsrc => "resource file",
            Source::Xattr => "xattr mirror",
            Source::Netatalk => "Netatalk metadata",
        }
    }
}

fn usable(id: u32) -> bool {
    !ids::is_forbidden(id)
}

fn four(code: [u8; 4]) -> String {
    String::from_utf8_lossy(&code).into_owned()
}

/// Decide IDs and repairs. `old` is `None` for `rebuild -f` (a new desktop from the disk alone);
/// `xattrs` tells whether the file system keeps user xattrs; `policy` which claims count.
///
/// The phases, in order (each a function below, with its own tests):
/// 1. `accepted_claims`: every object's claim, the first one the policy accepts;
/// 2. `admit_unchecked`: claims no reference can know, kept only up to the highest ID known
///    to have been handed out;
/// 3. `settle_duplicates`: one winner per ID claimed several times, the others lose it;
/// 4. `counter_start`: the counter new IDs come from;
/// 5. `assign`: each object's ID and row, its differences with the desktop, its repairs;
/// 6. `place_orphans`: resource files of no object, moved to their object or removed;
/// 7. `drop_replaced_headers`: no fresh header where an orphan moves in;
/// 8. `vanished`: desktop rows of objects that are gone.
///
/// This is the online rebuild's plan: [`plan_compact`] with the differences collected, and only
/// the orphans' fixes listed (see [`Plan::fixes`]).
pub fn plan(
    walk: &Walk,
    old: Option<&OldDesktop>,
    old_counter: u32,
    xattrs: bool,
    policy: &ClaimPolicy<'_>,
) -> Plan {
    let mut differences = Vec::new();
    let (mut plan, _made_online) = plan_compact(walk, old, old_counter, xattrs, policy, &mut |d| {
        differences.push(d)
    });
    plan.differences = differences;
    plan
}

/// A repair of one walked object's resource file or mirror, kept as the object's index until
/// it is made: a [`Fix`] with its path and header costs some 200 bytes, this 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectRepair {
    /// [`rsrc_repair`]'s fix of object `i`.
    Rsrc(u32),
    /// [`mirror_repair`]'s fix of object `i`.
    Mirror(u32),
}

impl ObjectRepair {
    /// The fix, made from the walk and the plan's rows as the plan decided it. A header
    /// that only needs the object's ID is read again here (through the volume root, following
    /// no symlink on the way), so what the walk did not keep of it is kept; one that cannot be
    /// read any more is made afresh from the row.
    pub fn fix(self, walk: &Walk, rows: &[NewRow]) -> Fix {
        let i = match self {
            ObjectRepair::Rsrc(i) | ObjectRepair::Mirror(i) => i as usize,
        };
        let f = &walk.found[i];
        let disk_path = walk.path(i as u32);
        let made = match self {
            ObjectRepair::Rsrc(_) => {
                let rsrc_path = rsrc_path_of(i, &disk_path);
                rsrc_repair(walk, i, &rows[i], &[], true).map(|(_, repair)| {
                    let current = match repair {
                        RsrcRepair::SetId => read_header_below(&walk.path(0), &rsrc_path),
                        RsrcRepair::Fresh => None,
                    };
                    Fix::WriteRsrc {
                        header: repaired_header(current, &rows[i]),
                        path: rsrc_path,
                    }
                })
            }
            ObjectRepair::Mirror(_) => {
                mirror_repair(f, i, rows[i].id, true, Vec::new(), disk_path).map(|(_, fix)| fix)
            }
        };
        made.expect("a planned repair is still needed by the same plan")
    }

    /// The resource file a repair of the resource file writes.
    fn rsrc_path(self, walk: &Walk) -> Option<PathBuf> {
        match self {
            ObjectRepair::Rsrc(i) => Some(rsrc_path_of(i as usize, &walk.path(i))),
            ObjectRepair::Mirror(_) => None,
        }
    }
}

/// The header at `rsrc_path` now, read below `root` without following a symlink on the way:
/// the folders are held by `pin`, and `rsrc::read_header` refuses a `.rsrc` or a resource file
/// that is a link (one could lend root's read another folder's header, which the write would
/// then put here); `None` when it cannot be read.
fn read_header_below(
    root: &std::path::Path,
    rsrc_path: &std::path::Path,
) -> Option<ResourceHeader> {
    let pinned = deskd_volume::pin::pin(root, rsrc_path, 2).ok()?;
    rsrc::read_header(&pinned.path).ok().flatten()
}

/// The header to write for `row`: the `current` one with the row's ID, or, when there is none
/// to keep, a new one with the row's Finder info and creation time.
fn repaired_header(current: Option<ResourceHeader>, row: &NewRow) -> ResourceHeader {
    match current {
        Some(mut h) => {
            h.id = row.id;
            h
        }
        None => {
            let mut header =
                ResourceHeader::new(row.id, row.type_code, row.creator, row.ctime.max(0) as u32);
            header.finder_flags = row.flags;
            header
        }
    }
}

/// [`plan`] for a rebuild that cannot hold every difference and repair: each difference goes
/// to `on_difference` as soon as it is known (in the same order `plan` lists them), and the
/// repairs of walked objects come back as [`ObjectRepair`]s, in the order `plan` lists their
/// fixes and before `Plan::fixes` (which holds only the orphans' fixes here). The returned
/// plan's `differences` is empty. `old` must have its places indexed
/// ([`Rows::index_places`]).
pub fn plan_compact(
    walk: &Walk,
    old: Option<&OldDesktop>,
    old_counter: u32,
    xattrs: bool,
    policy: &ClaimPolicy<'_>,
    on_difference: &mut dyn FnMut(Difference),
) -> (Plan, Vec<ObjectRepair>) {
    let volume_owner = walk.found.first().map_or(0, |f| f.uid);
    let mut counts = tally(walk);

    let mut claims = accepted_claims(walk, policy, volume_owner);
    std::mem::take(&mut claims.rejections)
        .into_iter()
        .for_each(&mut *on_difference);
    let bound = policy
        .recorded_max
        .max(claims.highest_trusted)
        .max(old_counter);
    admit_unchecked(walk, &mut claims, bound)
        .into_iter()
        .for_each(&mut *on_difference);
    let losers = settle_duplicates(walk, old, &mut claims);
    let counter = counter_start(old_counter, old, &claims.chosen);

    // The orphans' headers are read first, so only the objects an orphan could move to are
    // remembered among those without a resource file.
    let orphans = read_orphans(walk);
    let wanted: HashSet<u32> = orphans.iter().filter_map(|o| o.read.id).collect();
    let assigned = assign(
        walk,
        old,
        &claims,
        &losers,
        counter,
        xattrs,
        &wanted,
        on_difference,
    );
    drop(claims);
    counts.new_ids += assigned.new_ids;
    counts.renumbered += assigned.renumbered;
    counts.repaired += assigned.repaired;
    let mut repairs = assigned.repairs;

    let placed = place_orphans(orphans, policy, volume_owner, &assigned.missing_rsrc);
    counts.removed += placed.removed;
    placed.differences.into_iter().for_each(&mut *on_difference);
    if !placed.moved_to.is_empty() {
        // Phase 7, on the few headers that could be replaced (made to be compared).
        drop_replaced_headers(&mut repairs, walk, &placed.moved_to);
    }

    if let Some(o) = old {
        let gone = vanished(walk, o, &assigned.rows);
        counts.removed += gone.len() as u64;
        gone.into_iter().for_each(&mut *on_difference);
    }
    let max_assigned = assigned.rows.iter().map(|r| r.id).max().unwrap_or(0);
    let plan = Plan {
        rows: assigned.rows,
        new_id: assigned.new_id,
        comments: assigned.comments,
        differences: Vec::new(),
        fixes: placed.fixes,
        last_id: assigned.counter.max(max_assigned),
        counts,
    };
    (plan, repairs)
}

/// The counts known before anything is decided: objects and directories walked.
fn tally(walk: &Walk) -> Counts {
    Counts {
        objects: walk.found.len() as u64,
        directories: walk.found.iter().filter(|f| f.kind == Kind::Dir).count() as u64,
        ..Default::default()
    }
}

/// A claim the policy could not check (no reference can know it), kept aside until the bound
/// is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unchecked {
    object: usize,
    id: u32,
    source: Source,
    carrier_uid: Option<u32>,
}

/// What phase 1 (and 2, 3) decided about the claims.
#[derive(Debug, Default)]
struct Claims {
    /// Per walked object: the ID it keeps and where that came from (`None`: no claim counts).
    chosen: Vec<Option<(u32, Source)>>,
    /// Per walked object: its claim was believed for who wrote it (it may raise the counter and
    /// wins a duplicate against an unvouched claim).
    trusted: Vec<bool>,
    /// Claims left for [`admit_unchecked`], in walk order.
    unchecked: Vec<Unchecked>,
    /// The highest ID of a trusted claim (the root's aside).
    highest_trusted: u32,
    /// `claim-rejected` differences, in walk order.
    rejections: Vec<Difference>,
}

/// What the policy made of one object's claims.
#[derive(Debug, Default, PartialEq)]
struct ObjectClaim {
    chosen: Option<(u32, Source)>,
    trusted: bool,
    /// The first claim the policy could not check, when none was accepted.
    unchecked: Option<Unchecked>,
    /// The first claim rejected, when none was accepted: (id, carrier, why).
    rejection: Option<(u32, Source, String)>,
}

/// Phase 1: every object's claim, the first one the policy accepts in the order resource
/// file, xattr mirror, Netatalk (the root always has [`ROOT_ID`]).
fn accepted_claims(walk: &Walk, policy: &ClaimPolicy<'_>, volume_owner: u32) -> Claims {
    let n = walk.found.len();
    let mut claims = Claims {
        chosen: Vec::with_capacity(n),
        trusted: vec![false; n],
        ..Default::default()
    };
    for i in 0..n {
        if i == 0 {
            claims.chosen.push(Some((ROOT_ID, Source::Root)));
            claims.trusted[0] = true;
            continue;
        }
        let judged = judge_object(walk, i, policy, volume_owner);
        if judged.trusted {
            claims.trusted[i] = true;
            if let Some((id, _)) = judged.chosen {
                claims.highest_trusted = claims.highest_trusted.max(id);
            }
        }
        if judged.chosen.is_none() {
            claims.unchecked.extend(judged.unchecked);
            if let Some((id, source, why)) = judged.rejection {
                claims.rejections.push(Difference {
                    object: Some(i as u32),
                    id: Some(id),
                    kind: "claim-rejected",
                    path: walk.path(i as u32).as_os_str().as_bytes().to_vec(),
                    detail: format!("the {} claims ID {id}, {why}; ignored", source.describe()),
                });
            }
        }
        claims.chosen.push(judged.chosen);
    }
    claims
}

/// One ID an object carries, with who could have written it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    id: u32,
    source: Source,
    /// The carrier's owner.
    carrier_uid: Option<u32>,
    /// For a resource file: the owner and mode of the `.rsrc` directory holding it.
    carrier_dir: Option<(u32, u32)>,
}

/// The usable IDs object `i` carries, in the order they are tried: resource file, xattr
/// mirror, Netatalk's cached CNID.
fn candidates(walk: &Walk, i: usize) -> [Option<Candidate>; 3] {
    let f = &walk.found[i];
    let from_rsrc = match f.rsrc() {
        RsrcState::Valid(h) if h.id != 0 && usable(h.id) => Some(Candidate {
            id: h.id,
            source: Source::Rsrc,
            carrier_uid: f.rsrc_uid(),
            carrier_dir: walk.rsrc_dir(i as u32),
        }),
        _ => None,
    };
    // The mirror and Netatalk's metadata are written by anyone who may write the object: its
    // owner's word only when no one else may (hostile review of stop 42, finding 3: nobody's
    // ID in root's 0666 file's mirror moved the counter to it).
    let owned_by_object = |id: u32, source| Candidate {
        id,
        source,
        carrier_uid: (!f.others_write()).then_some(f.uid),
        carrier_dir: None,
    };
    [
        from_rsrc,
        f.xattr_id()
            .filter(|&id| usable(id))
            .map(|id| owned_by_object(id, Source::Xattr)),
        walk.netatalk(i as u32)
            .and_then(|m| m.cnid)
            .filter(|&id| usable(id))
            .map(|id| owned_by_object(id, Source::Netatalk)),
    ]
}

/// Ask the policy about object `i`'s claims until one is accepted.
fn judge_object(walk: &Walk, i: usize, policy: &ClaimPolicy<'_>, volume_owner: u32) -> ObjectClaim {
    let f = &walk.found[i];
    let rel_path = || walk.rel_path(i as u32);
    let mut out = ObjectClaim::default();
    for Candidate {
        id,
        source,
        carrier_uid,
        carrier_dir,
    } in candidates(walk, i).into_iter().flatten()
    {
        let verdict = policy.judge(
            &Claim {
                id,
                carrier_uid,
                carrier_dir,
                rel_path: &rel_path,
                dev: f.dev,
                ino: f.ino,
            },
            volume_owner,
        );
        match verdict {
            Verdict::Trusted => {
                out.trusted = true;
                out.chosen = Some((id, source));
            }
            Verdict::Verified => out.chosen = Some((id, source)),
            Verdict::Unchecked => {
                out.unchecked.get_or_insert(Unchecked {
                    object: i,
                    id,
                    source,
                    carrier_uid,
                });
                continue;
            }
            Verdict::Rejected(why) => {
                out.rejection.get_or_insert((id, source, why));
                continue;
            }
        }
        break;
    }
    if out.chosen.is_some() {
        out.unchecked = None;
        out.rejection = None;
    }
    out
}

/// Phase 2: claims no reference can know (none, or above all their counters). One no one
/// vouches for may not reach past `bound`, the highest ID known to have been handed out, so it
/// cannot move the counter. Returns the `claim-rejected` differences of those above it.
fn admit_unchecked(walk: &Walk, claims: &mut Claims, bound: u32) -> Vec<Difference> {
    let mut rejected = Vec::new();
    for u in std::mem::take(&mut claims.unchecked) {
        if u.id <= bound {
            claims.chosen[u.object] = Some((u.id, u.source));
            continue;
        }
        rejected.push(Difference {
            object: Some(u.object as u32),
            id: Some(u.id),
            kind: "claim-rejected",
            path: walk.path(u.object as u32).as_os_str().as_bytes().to_vec(),
            detail: format!(
                "the {} claims ID {}, written by {} (not root or the volume owner), \
                 above every ID known to have been handed out ({bound}); ignored",
                u.source.describe(),
                u.id,
                u.carrier_uid
                    .map_or_else(|| "an unknown owner".to_owned(), |u| format!("uid {u}")),
            ),
        });
    }
    rejected
}

/// Phase 3: several objects claiming one ID. One keeps it ([`duplicate_winner`]); the others
/// lose their claim. Returns loser -> (the ID, the winner), by walk index.
fn settle_duplicates(
    walk: &Walk,
    old: Option<&OldDesktop>,
    claims: &mut Claims,
) -> HashMap<u32, (u32, u32)> {
    // (ID, walk index) pairs sorted: the claimants of one ID are one run, in walk order. Eight
    // bytes an object, where a map of lists cost a hundred.
    let mut claimants: Vec<(u32, u32)> = claims
        .chosen
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.map(|(id, _)| (id, i as u32)))
        .collect();
    claimants.sort_unstable();
    let mut loser_of = HashMap::new();
    for run in claimants
        .chunk_by(|a, b| a.0 == b.0)
        .filter(|r| r.len() > 1)
    {
        let id = run[0].0;
        let list: Vec<u32> = run.iter().map(|&(_, i)| i).collect();
        let winner = duplicate_winner(walk, old, claims, id, &list);
        for &i in &list {
            if i != winner {
                loser_of.insert(i, (id, winner));
            }
        }
    }
    drop(claimants);
    for &loser in loser_of.keys() {
        claims.chosen[loser as usize] = None;
    }
    loser_of
}

/// Which of `list` (walk indices, at least two) keeps `id`: the one at the desktop's place for
/// it; failing that the one with the recorded device and inode; failing that a trusted claim;
/// failing that one from a resource file; failing that the first by path.
fn duplicate_winner(
    walk: &Walk,
    old: Option<&OldDesktop>,
    claims: &Claims,
    id: u32,
    list: &[u32],
) -> u32 {
    let mut candidates: Vec<(Vec<u8>, u32)> = list.iter().map(|&i| (walk.rel_path(i), i)).collect();
    candidates.sort();
    let old_row = old.and_then(|o| o.objects.get(&id));
    let old_path = old.and_then(|o| o.rel_path(id));
    candidates
        .iter()
        .find(|(p, _)| Some(p) == old_path.as_ref())
        .or_else(|| {
            candidates.iter().find(|(_, i)| {
                let f = &walk.found[*i as usize];
                old_row.is_some_and(|r| (r.dev, r.ino) == (f.dev, f.ino))
            })
        })
        // A claim no one vouches for never takes an ID from one someone does.
        .or_else(|| candidates.iter().find(|(_, i)| claims.trusted[*i as usize]))
        .or_else(|| {
            candidates
                .iter()
                .find(|(_, i)| claims.chosen[*i as usize].map(|c| c.1) == Some(Source::Rsrc))
        })
        .unwrap_or(&candidates[0])
        .1
}

/// Phase 4: the counter starts above every ID anyone has seen, so new IDs are never old ones.
fn counter_start(
    old_counter: u32,
    old: Option<&OldDesktop>,
    chosen: &[Option<(u32, Source)>],
) -> u32 {
    old_counter
        .max(old.map_or(0, |o| o.last_id))
        .max(
            chosen
                .iter()
                .filter_map(|c| c.map(|(id, _)| id))
                .max()
                .unwrap_or(0),
        )
        .max(ids::FIRST_ID - 1)
}

/// What phase 5 decided.
#[derive(Default)]
struct Assigned {
    /// Each walked object's row (and so its ID).
    rows: Vec<NewRow>,
    new_id: Vec<bool>,
    comments: Vec<(u32, Vec<u8>)>,
    /// The repairs of resource files and mirrors, in object order.
    repairs: Vec<ObjectRepair>,
    /// Objects without a resource file whose ID an orphan carries, by that ID: where the
    /// orphan would go, with the object's owner (only its own or a trusted resource file may
    /// move to it).
    missing_rsrc: HashMap<u32, (PathBuf, u32)>,
    /// The counter after the new IDs.
    counter: u32,
    new_ids: u64,
    renumbered: u64,
    repaired: u64,
}

/// Hands out the IDs of objects whose claim did not count.
struct Unclaimed<'a> {
    old: Option<&'a OldDesktop>,
    /// Every ID kept by a claim, sorted.
    claimed: Vec<u32>,
    /// Old rows whose ID was already given to an object at their place, by position in the
    /// old rows ([`Rows::index_of`]), a bit each.
    used_old_place: Vec<u64>,
    counter: u32,
}

impl Unclaimed<'_> {
    /// The ID for an unclaimed object of `kind` whose place has `place_id` in the old desktop:
    /// that one when nobody claims it, it is not taken yet and its row is of the same kind;
    /// else the next from the counter. The flag says the ID is a new one.
    fn id(&mut self, place_id: Option<u32>, kind: Kind) -> (u32, bool) {
        let at_place = place_id.and_then(|id| {
            let old = self.old?;
            let at = old.objects.index_of(id)?;
            let free = self.claimed.binary_search(&id).is_err()
                && self.used_old_place[at / 64] & (1 << (at % 64)) == 0
                && old.objects[&id].kind == kind;
            free.then_some((id, at))
        });
        match at_place {
            Some((id, at)) => {
                self.used_old_place[at / 64] |= 1 << (at % 64);
                (id, false)
            }
            None => {
                // A counter past 2^32 - 2 cannot happen for a walk of < 2^32 objects above the
                // largest claimed ID unless the space is truly used up.
                self.counter = ids::next_candidate(self.counter).unwrap_or(ids::LAST_USABLE_ID);
                (self.counter, true)
            }
        }
    }
}

/// Phase 5: every object's ID, parents first (the walk lists a directory before its entries),
/// its new row and comment, its differences with the desktop and the repairs of its resource
/// file and mirror. Differences go to `on_difference` as they are found.
#[allow(clippy::too_many_arguments)]
fn assign(
    walk: &Walk,
    old: Option<&OldDesktop>,
    claims: &Claims,
    loser_of: &HashMap<u32, (u32, u32)>,
    counter: u32,
    xattrs: bool,
    orphan_ids: &HashSet<u32>,
    on_difference: &mut dyn FnMut(Difference),
) -> Assigned {
    let found = &walk.found;
    let n = found.len();
    let mut claimed: Vec<u32> = claims
        .chosen
        .iter()
        .filter_map(|c| c.map(|(id, _)| id))
        .collect();
    claimed.sort_unstable();
    claimed.dedup();
    let mut ids = Unclaimed {
        old,
        claimed,
        used_old_place: vec![0; old.map_or(0, |o| o.objects.len().div_ceil(64))],
        counter,
    };
    let mut out = Assigned {
        rows: Vec::with_capacity(n),
        new_id: vec![false; n],
        ..Default::default()
    };
    for (i, f) in found.iter().enumerate() {
        let parent_id = if i == 0 {
            ROOT_PARENT_ID
        } else {
            out.rows[f.parent as usize].id
        };
        let name = walk.name(i as u32);
        // The ID the old desktop has at this place (used for unclaimed objects and the report).
        let place_id = old.and_then(|o| o.objects.place(parent_id, name));
        let (id, source) = match claims.chosen[i] {
            Some((id, source)) => (id, Some(source)),
            None => {
                let (id, new) = ids.id(place_id, f.kind);
                if new {
                    out.new_ids += 1;
                    out.new_id[i] = true;
                }
                (id, None)
            }
        };
        let old_row = old.and_then(|o| o.objects.get(&id));
        let row = new_row(f, walk.netatalk(i as u32), id, old_row);
        if let Some(text) = comment(old, id, walk.comment(i as u32)) {
            out.comments.push((id, text));
        }

        // Differences with the desktop.
        let disk_path = walk.path(i as u32);
        let path = disk_path.as_os_str().as_bytes().to_vec();
        let mut repaired = false;
        let loser = loser_of.get(&(i as u32));
        if let Some(&(dup_id, winner)) = loser {
            out.renumbered += 1;
            on_difference(Difference {
                object: Some(i as u32),
                id: Some(id),
                kind: "duplicate",
                path: path.clone(),
                detail: format!(
                    "ID {dup_id} is also claimed by {}, which keeps it; this one gets ID {id}",
                    walk.path(winner).display()
                ),
            });
        } else if let Some(o) = old {
            let seen = Seen {
                object: i,
                id,
                source,
                place_id,
                parent_id,
                type_code: row.type_code,
                creator: row.creator,
            };
            if let Some((difference, repairs)) =
                desktop_difference(f, name, o, old_row, &seen, &path)
            {
                repaired |= repairs;
                on_difference(difference);
            }
        }

        // Repairs on disk: the resource file and the mirror.
        let rsrc_path = rsrc_path_of(i, &disk_path);
        if f.rsrc() == RsrcState::Missing && orphan_ids.contains(&id) {
            out.missing_rsrc.insert(id, (rsrc_path.clone(), f.uid));
        }
        // (The fixes themselves are made again when applied: see ObjectRepair.)
        if let Some((difference, _)) = rsrc_repair(walk, i, &row, &path, loser.is_some()) {
            difference.into_iter().for_each(&mut *on_difference);
            out.repairs.push(ObjectRepair::Rsrc(i as u32));
            repaired = true;
        }
        if let Some((difference, _)) = mirror_repair(f, i, id, xattrs, path, disk_path) {
            on_difference(difference);
            out.repairs.push(ObjectRepair::Mirror(i as u32));
            repaired = true;
        }
        if repaired {
            out.repaired += 1;
        }
        out.rows.push(row);
    }
    out.counter = ids.counter;
    out
}

/// The new desktop's row for walked object `f` (with Netatalk's metadata `netatalk`) with ID
/// `id`; the desktop's row with that ID (`old_row`) lends its creation time and, failing
/// better sources, its Finder info.
fn new_row(
    f: &Found,
    netatalk: Option<&NetatalkInfo>,
    id: u32,
    old_row: Option<&OldRow>,
) -> NewRow {
    let (type_code, creator, flags) = finder_info(f, netatalk, old_row);
    NewRow {
        id,
        type_code,
        creator,
        flags,
        ctime: old_row.map_or(f.ctime, |r| r.ctime),
    }
}

/// Where walked object `i` (at `disk_path`) keeps its resource file: `ROOT/.rsrc/.rsrc` for
/// the root, `DIR/.rsrc/NAME` for the rest.
fn rsrc_path_of(i: usize, disk_path: &std::path::Path) -> PathBuf {
    if i == 0 {
        rsrc::root_rsrc_path(disk_path)
    } else {
        rsrc::rsrc_path(disk_path).expect("a child has a parent")
    }
}

/// Type, creator and Finder flags: from the resource file, else Netatalk's metadata, else the
/// old row, else `UNIX`/`UNKN` for a file and nothing for the rest.
fn finder_info(
    f: &Found,
    netatalk: Option<&NetatalkInfo>,
    old_row: Option<&OldRow>,
) -> ([u8; 4], [u8; 4], u16) {
    if let RsrcState::Valid(h) = f.rsrc() {
        (h.type_code, h.creator, h.finder_flags)
    } else if let Some(m) = netatalk {
        (m.type_code, m.creator, m.finder_flags)
    } else if let Some(r) = old_row {
        (r.type_code, r.creator, r.flags)
    } else if f.kind == Kind::File {
        (*b"UNIX", *b"UNKN", 0)
    } else {
        ([0; 4], [0; 4], 0)
    }
}

/// The object's comment: the desktop's, else a non-empty one from its resource file
/// (`from_rsrc`, empty when there is none).
fn comment(old: Option<&OldDesktop>, id: u32, from_rsrc: &[u8]) -> Option<Vec<u8>> {
    old.and_then(|o| o.comments.get(&id))
        .cloned()
        .or_else(|| (!from_rsrc.is_empty()).then(|| from_rsrc.to_vec()))
}

/// What phase 5 decided about one object, as [`desktop_difference`] needs it.
struct Seen {
    object: usize,
    id: u32,
    /// Where its ID came from (`None`: not from a claim).
    source: Option<Source>,
    /// The ID the old desktop has at its place.
    place_id: Option<u32>,
    parent_id: u32,
    type_code: [u8; 4],
    creator: [u8; 4],
}

/// How the object differs from the old desktop's row (`old_row`, the row with its ID), if it
/// does; the flag says the difference is repaired (a `new` object is simply added).
fn desktop_difference(
    f: &Found,
    name: &[u8],
    old: &OldDesktop,
    old_row: Option<&OldRow>,
    seen: &Seen,
    path: &[u8],
) -> Option<(Difference, bool)> {
    let id = seen.id;
    let difference = |kind, detail| Difference {
        object: Some(seen.object as u32),
        id: Some(id),
        kind,
        path: path.to_vec(),
        detail,
    };
    match (old_row, seen.place_id) {
        (_, Some(place_id)) if place_id != id => Some((
            difference(
                "id-mismatch",
                format!(
                    "the {} says ID {id}, the desktop has ID {place_id} here",
                    seen.source.unwrap_or(Source::Rsrc).describe()
                ),
            ),
            true,
        )),
        (None, _) => Some((
            difference(
                "new",
                match seen.source {
                    Some(s) if s != Source::Root => {
                        format!(
                            "not in the desktop; keeps ID {id} from its {}",
                            s.describe()
                        )
                    }
                    _ => format!("not in the desktop; gets ID {id}"),
                },
            ),
            false,
        )),
        (Some(r), _) => {
            let (kind, detail) = if (r.parent, old.objects.name(r)) != (seen.parent_id, name) {
                (
                    "moved",
                    format!(
                        "ID {id} was at {}",
                        old.rel_path(id)
                            .map(|p| String::from_utf8_lossy(&p).into_owned())
                            .unwrap_or_else(|| "an unknown place".into())
                    ),
                )
            } else if r.kind != f.kind {
                (
                    "changed",
                    format!("was a {}, is a {}", r.kind.as_str(), f.kind.as_str()),
                )
            } else if (r.type_code, r.creator) != (seen.type_code, seen.creator) {
                (
                    "changed",
                    format!(
                        "type/creator {}/{} on disk, {}/{} in the desktop",
                        four(seen.type_code),
                        four(seen.creator),
                        four(r.type_code),
                        four(r.creator)
                    ),
                )
            } else if seen.object != 0 && (r.dev, r.ino) != (f.dev, f.ino) {
                // (The root's row carries no inode: the root is found by its path.)
                (
                    "changed",
                    format!("inode {} on disk, {} in the desktop", f.ino, r.ino),
                )
            } else {
                return None;
            };
            Some((difference(kind, detail), true))
        }
    }
}

/// What a resource file needs ([`rsrc_repair`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RsrcRepair {
    /// Its valid header with the object's ID (the rest kept: [`ObjectRepair::fix`]).
    SetId,
    /// A new header made from the row ([`repaired_header`]).
    Fresh,
}

/// The repair of walked object `object`'s resource file, when it does not hold a valid header
/// with the object's ID (`row`): its header rewritten with the ID, or a new one made. A
/// duplicate's loser is already reported as such, so its rewritten header is not reported
/// again.
fn rsrc_repair(
    walk: &Walk,
    object: usize,
    row: &NewRow,
    path: &[u8],
    loser: bool,
) -> Option<(Option<Difference>, RsrcRepair)> {
    let id = row.id;
    let difference = |kind, detail| Difference {
        object: Some(object as u32),
        id: Some(id),
        kind,
        path: path.to_vec(),
        detail,
    };
    match walk.found[object].rsrc() {
        RsrcState::Valid(h) if h.id == id => None,
        RsrcState::Valid(RsrcInfo { id: said, .. }) => {
            let reported = (!loser).then(|| {
                difference(
                    "rsrc-id",
                    format!("the resource file says ID {said}, the ID is {id}"),
                )
            });
            Some((reported, RsrcRepair::SetId))
        }
        state => {
            let (kind, detail) = match state {
                RsrcState::Corrupt => (
                    "corrupt-rsrc",
                    walk.corrupt_reason(object as u32).to_owned(),
                ),
                _ => (
                    "missing-rsrc",
                    format!("no resource file; one is made for ID {id}"),
                ),
            };
            Some((Some(difference(kind, detail)), RsrcRepair::Fresh))
        }
    }
}

/// The repair of the object's `user.deskd.id` mirror, when the file system keeps xattrs and the
/// mirror does not say `id` (symbolic links carry none).
fn mirror_repair(
    f: &Found,
    object: usize,
    id: u32,
    xattrs: bool,
    path: Vec<u8>,
    disk_path: PathBuf,
) -> Option<(Difference, Fix)> {
    if !xattrs || f.kind == Kind::Symlink || f.xattr_id() == Some(id) {
        return None;
    }
    Some((
        Difference {
            object: Some(object as u32),
            id: Some(id),
            kind: "mirror",
            path,
            detail: match f.xattr_id() {
                Some(x) => format!("the xattr mirror says ID {x}, the ID is {id}"),
                None => format!("no xattr mirror; set to ID {id}"),
            },
        },
        Fix::WriteXattr {
            path: disk_path,
            id,
        },
    ))
}

/// What phase 6 decided about the resource files of no object.
#[derive(Default)]
struct Orphans {
    differences: Vec<Difference>,
    fixes: Vec<Fix>,
    /// Orphans removed.
    removed: u64,
    /// Resource file paths an orphan moves to.
    moved_to: HashSet<PathBuf>,
}

/// A resource file of no object, with what its header and owner say.
struct ReadOrphan {
    path: PathBuf,
    read: OrphanRsrc,
}

/// Read the header and owner of every resource file the walk found without an object.
fn read_orphans(walk: &Walk) -> Vec<ReadOrphan> {
    walk.orphans
        .iter()
        .map(|(dir, name)| {
            let path = walk.dir_paths[dir]
                .join(rsrc::RSRC_DIR)
                .join(std::ffi::OsStr::from_bytes(name));
            // The owner of the very file whose header is read.
            let (header, owner) = rsrc::read_header_and_owner(&path).ok().flatten().unzip();
            ReadOrphan {
                path,
                read: OrphanRsrc {
                    id: header.map(|h| h.id),
                    owner,
                },
            }
        })
        .collect()
}

/// Phase 6: resource files that belong to no object ([`read_orphans`]). One left behind by a
/// plain `mv` moves to the object that now carries its ID (its fork and comment go with it);
/// the others are removed.
fn place_orphans(
    orphans: Vec<ReadOrphan>,
    policy: &ClaimPolicy<'_>,
    volume_owner: u32,
    missing_rsrc: &HashMap<u32, (PathBuf, u32)>,
) -> Orphans {
    let mut out = Orphans::default();
    for ReadOrphan { path, read: orphan } in orphans {
        match orphan_destination(&orphan, missing_rsrc, policy.trust_all, volume_owner) {
            Some((id, to)) if !out.moved_to.contains(&to) => {
                out.moved_to.insert(to.clone());
                out.differences.push(Difference {
                    object: None,
                    id: None,
                    kind: "orphan-rsrc",
                    path: path.as_os_str().as_bytes().to_vec(),
                    detail: format!("left behind by a move; goes to {}", to.display()),
                });
                out.fixes.push(Fix::MoveRsrc { from: path, to, id });
            }
            _ => {
                out.removed += 1;
                out.differences.push(Difference {
                    object: None,
                    id: None,
                    kind: "orphan-rsrc",
                    path: path.as_os_str().as_bytes().to_vec(),
                    detail: "no object of that name; removed".into(),
                });
                out.fixes.push(Fix::RemoveOrphan { path });
            }
        }
    }
    out
}

/// A resource file of no object, as read: the ID in its header and its owner (`None` both when
/// it could not be read).
struct OrphanRsrc {
    id: Option<u32>,
    owner: Option<u32>,
}

/// Where an orphan may move: the resource file path of the object carrying its ID that has
/// none, when the orphan was written by root, the volume owner or that object's owner (a
/// resource file someone else planted does not become this object's), or by anyone under
/// `--trust-ids`.
fn orphan_destination(
    orphan: &OrphanRsrc,
    missing_rsrc: &HashMap<u32, (PathBuf, u32)>,
    trust_all: bool,
    volume_owner: u32,
) -> Option<(u32, PathBuf)> {
    let may_move = |object_owner: u32| {
        trust_all
            || orphan
                .owner
                .is_some_and(|u| u == 0 || u == volume_owner || u == object_owner)
    };
    let id = orphan.id?;
    missing_rsrc
        .get(&id)
        .filter(|(_, owner)| may_move(*owner))
        .map(|(to, _)| (id, to.clone()))
}

/// Phase 7: a moved resource file replaces the fresh header that would have been written.
fn drop_replaced_headers(
    repairs: &mut Vec<ObjectRepair>,
    walk: &Walk,
    moved_to: &HashSet<PathBuf>,
) {
    repairs.retain(|r| r.rsrc_path(walk).is_none_or(|p| !moved_to.contains(&p)));
}

/// Phase 8: the `vanished` differences of the old desktop's rows whose ID no walked object has
/// (`rows`), in ID order.
fn vanished(walk: &Walk, old: &OldDesktop, rows: &[NewRow]) -> Vec<Difference> {
    // A bit per old row: its ID is given to a walked object.
    let mut alive = vec![0u64; old.objects.len().div_ceil(64)];
    for at in rows.iter().filter_map(|r| old.objects.index_of(r.id)) {
        alive[at / 64] |= 1 << (at % 64);
    }
    let mut gone: Vec<u32> = old
        .objects
        .values()
        .enumerate()
        .filter(|(at, _)| alive[at / 64] & (1 << (at % 64)) == 0)
        .map(|(_, r)| r.id)
        .collect();
    gone.sort_unstable();
    let root = walk.path(0);
    gone.into_iter()
        .map(|id| {
            let rel = old.rel_path(id).unwrap_or_default();
            let mut path = root.as_os_str().as_bytes().to_vec();
            path.push(b'/');
            path.extend_from_slice(&rel);
            Difference {
                object: None,
                id: Some(id),
                kind: "vanished",
                path,
                detail: format!("ID {id} is in the desktop but not on disk; removed"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! Each phase on a hand-built walk of `/vol` (no file system): objects are owned by the
    //! volume owner (uid 1000) unless a test says otherwise.

    use super::*;
    use crate::walk::{Entry, Rsrc};
    use deskd_volume::rsrc::ResourceHeader;

    const OWNER: u32 = 1000;
    const USER: u32 = 65534;

    fn object(parent: u32, name: &str, kind: Kind, ino: u64) -> Entry {
        Entry {
            ctime: 100,
            uid: OWNER,
            ..crate::test_support::found(parent, name, kind, 1, ino)
        }
    }

    fn root() -> Entry {
        object(u32::MAX, "", Kind::Dir, 2)
    }

    /// `f` with a resource file claiming `id`, written by `uid` in a safe `.rsrc`.
    fn with_rsrc(mut f: Entry, id: u32, uid: u32) -> Entry {
        f.rsrc = Rsrc::Valid(ResourceHeader::new(id, *b"TEXT", *b"ttxt", 0));
        f.rsrc_uid = Some(uid);
        f.rsrc_dir = Some((OWNER, 0o40755));
        f
    }

    fn with_xattr(mut f: Entry, id: u32) -> Entry {
        f.xattr_id = Some(id);
        f
    }

    /// A walk of `/vol` listing `found` (index 0 the root); directories get their paths.
    fn walk_of(found: Vec<Entry>) -> Walk {
        Walk::of(std::path::Path::new("/vol"), found)
    }

    /// A walk of the root and `f` (object 1), for the tests of one object.
    fn alone(f: Entry) -> Walk {
        walk_of(vec![root(), f])
    }

    /// An old desktop of `rows` (id, parent ID, name, kind, inode) below the root (ID 2).
    fn desktop(rows: &[(u32, u32, &str, Kind, u64)], last_id: u32) -> OldDesktop {
        let mut old = OldDesktop {
            last_id,
            ..Default::default()
        };
        for &(id, parent, name, kind, ino) in [(ROOT_ID, ROOT_PARENT_ID, "", Kind::Dir, 0)]
            .iter()
            .chain(rows)
        {
            old.objects.insert(
                id,
                Object {
                    id,
                    parent,
                    name: name.as_bytes().to_vec(),
                    kind,
                    dev: 1,
                    ino,
                    type_code: [0; 4],
                    creator: [0; 4],
                    flags: 0,
                    ctime: 50,
                },
            );
        }
        old.objects.index_places();
        old
    }

    #[test]
    fn an_old_rows_path_is_read_up_to_the_root() {
        let mut old = desktop(
            &[
                (30, ROOT_ID, "d", Kind::Dir, 3),
                (31, 30, "x", Kind::File, 4),
            ],
            40,
        );
        assert_eq!(old.rel_path(31), Some(b"d/x".to_vec()));
        assert_eq!(old.rel_path(ROOT_ID), Some(Vec::new()));
        // A parent the desktop does not have, and a loop: no path.
        assert_eq!(old.rel_path(99), None);
        old.objects.get_mut(&30).unwrap().parent = 31;
        assert_eq!(old.rel_path(31), None);
    }

    #[test]
    fn a_difference_prints_its_path_raw_and_keeps_its_indices_private() {
        let d = Difference {
            object: Some(1),
            id: Some(20),
            kind: "mirror",
            path: b"/vol/caf\xe9".to_vec(),
            detail: "x".into(),
        };
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            serde_json::json!({"kind": "mirror", "path": "/vol/caf\\xE9", "detail": "x"})
        );
    }

    #[test]
    fn the_report_lists_the_counts_beside_its_other_fields() {
        let report = crate::Report {
            mode: crate::Mode::Scan,
            volume: "/vol".into(),
            counts: Counts {
                objects: 1,
                directories: 2,
                new_ids: 3,
                renumbered: 4,
                repaired: 5,
                removed: 6,
            },
            differences: 7,
            seconds: 0.5,
        };
        assert_eq!(
            serde_json::to_value(&report).unwrap(),
            serde_json::json!({
                "mode": "scan", "volume": "/vol", "objects": 1, "directories": 2, "new_ids": 3,
                "renumbered": 4, "repaired": 5, "removed": 6, "differences": 7, "seconds": 0.5,
            })
        );
    }

    fn kinds(differences: &[Difference]) -> Vec<&'static str> {
        differences.iter().map(|d| d.kind).collect()
    }

    #[test]
    fn tally_counts_objects_and_directories() {
        let w = walk_of(vec![
            root(),
            object(0, "d", Kind::Dir, 3),
            object(1, "f", Kind::File, 4),
            object(0, "l", Kind::Symlink, 5),
        ]);
        let c = tally(&w);
        assert_eq!((c.objects, c.directories), (4, 2));
        assert_eq!(c.new_ids + c.renumbered + c.repaired + c.removed, 0);
    }

    #[test]
    fn the_resource_file_claim_comes_before_the_mirror_and_netatalk() {
        let mut f = with_xattr(with_rsrc(object(0, "f", Kind::File, 3), 40, OWNER), 41);
        f.netatalk = Some(NetatalkInfo {
            cnid: Some(42),
            type_code: [0; 4],
            creator: [0; 4],
            finder_flags: 0,
        });
        let w = walk_of(vec![root(), f]);
        let judged = judge_object(&w, 1, &ClaimPolicy::default(), OWNER);
        assert_eq!(judged.chosen, Some((40, Source::Rsrc)));
        assert!(judged.trusted);
        let order: Vec<_> = candidates(&w, 1)
            .iter()
            .flatten()
            .map(|c| c.source)
            .collect();
        assert_eq!(order, [Source::Rsrc, Source::Xattr, Source::Netatalk]);
    }

    #[test]
    fn forbidden_and_zero_ids_are_no_claim() {
        let w = walk_of(vec![
            root(),
            with_xattr(with_rsrc(object(0, "f", Kind::File, 3), 0, OWNER), 5),
        ]);
        assert!(candidates(&w, 1).iter().all(Option::is_none));
    }

    #[test]
    fn a_rejected_claim_gives_way_to_the_next_accepted_one() {
        // The user's resource file says ID 20, which the desktop has for another object; the
        // mirror (the object's owner is the volume owner) is trusted.
        let old = desktop(&[(20, ROOT_ID, "other", Kind::File, 9)], 30);
        let policy = ClaimPolicy {
            references: vec![&old],
            ..Default::default()
        };
        let w = walk_of(vec![
            root(),
            with_xattr(with_rsrc(object(0, "f", Kind::File, 3), 20, USER), 25),
        ]);
        let judged = judge_object(&w, 1, &policy, OWNER);
        assert_eq!(judged.chosen, Some((25, Source::Xattr)));
        assert_eq!(
            judged.rejection, None,
            "no rejection is reported when one counts"
        );
    }

    #[test]
    fn accepted_claims_report_rejections_and_keep_unchecked_ones() {
        let old = desktop(&[(20, ROOT_ID, "other", Kind::File, 9)], 30);
        let policy = ClaimPolicy {
            references: vec![&old],
            ..Default::default()
        };
        let w = walk_of(vec![
            root(),
            with_rsrc(object(0, "rejected", Kind::File, 3), 20, USER),
            with_rsrc(object(0, "unchecked", Kind::File, 4), 50, USER),
            with_rsrc(object(0, "trusted", Kind::File, 5), 60, OWNER),
        ]);
        let claims = accepted_claims(&w, &policy, OWNER);
        assert_eq!(
            claims.chosen,
            [
                Some((ROOT_ID, Source::Root)),
                None,
                None,
                Some((60, Source::Rsrc))
            ]
        );
        assert_eq!(claims.trusted, [true, false, false, true]);
        assert_eq!(claims.highest_trusted, 60);
        assert_eq!(kinds(&claims.rejections), ["claim-rejected"]);
        assert_eq!(claims.rejections[0].path, b"/vol/rejected");
        assert_eq!(claims.rejections[0].id, Some(20));
        assert_eq!(
            claims.unchecked,
            [Unchecked {
                object: 2,
                id: 50,
                source: Source::Rsrc,
                carrier_uid: Some(USER),
            }]
        );
    }

    #[test]
    fn unchecked_claims_are_kept_up_to_the_bound_only() {
        let w = walk_of(vec![
            root(),
            object(0, "low", Kind::File, 3),
            object(0, "high", Kind::File, 4),
        ]);
        let unchecked = |object, id| Unchecked {
            object,
            id,
            source: Source::Xattr,
            carrier_uid: Some(USER),
        };
        let mut claims = Claims {
            chosen: vec![Some((ROOT_ID, Source::Root)), None, None],
            unchecked: vec![unchecked(1, 40), unchecked(2, 41)],
            ..Default::default()
        };
        let rejected = admit_unchecked(&w, &mut claims, 40);
        assert_eq!(claims.chosen[1], Some((40, Source::Xattr)));
        assert_eq!(claims.chosen[2], None);
        assert_eq!(kinds(&rejected), ["claim-rejected"]);
        assert_eq!(rejected[0].path, b"/vol/high");
        assert!(
            rejected[0].detail.contains("uid 65534"),
            "{}",
            rejected[0].detail
        );
        assert!(claims.unchecked.is_empty());
    }

    /// Claims of `ids` (by walk index, index 0 the root), all from resource files, none trusted.
    fn claims_of(ids: &[Option<u32>]) -> Claims {
        Claims {
            chosen: ids.iter().map(|c| c.map(|id| (id, Source::Rsrc))).collect(),
            trusted: vec![false; ids.len()],
            ..Default::default()
        }
    }

    #[test]
    fn the_object_at_the_desktops_place_keeps_a_duplicated_id() {
        let old = desktop(&[(20, ROOT_ID, "b", Kind::File, 9)], 30);
        let w = walk_of(vec![
            root(),
            object(0, "a", Kind::File, 3),
            object(0, "b", Kind::File, 4),
        ]);
        let claims = claims_of(&[Some(ROOT_ID), Some(20), Some(20)]);
        assert_eq!(duplicate_winner(&w, Some(&old), &claims, 20, &[1, 2]), 2);
    }

    #[test]
    fn failing_the_place_the_recorded_inode_keeps_it() {
        let old = desktop(&[(20, ROOT_ID, "gone", Kind::File, 4)], 30);
        let w = walk_of(vec![
            root(),
            object(0, "a", Kind::File, 3),
            object(0, "b", Kind::File, 4),
        ]);
        let claims = claims_of(&[Some(ROOT_ID), Some(20), Some(20)]);
        assert_eq!(duplicate_winner(&w, Some(&old), &claims, 20, &[1, 2]), 2);
    }

    #[test]
    fn failing_the_desktop_a_trusted_then_a_resource_file_claim_keeps_it() {
        let w = walk_of(vec![
            root(),
            object(0, "a", Kind::File, 3),
            object(0, "b", Kind::File, 4),
            object(0, "c", Kind::File, 5),
        ]);
        let mut claims = claims_of(&[Some(ROOT_ID), Some(20), Some(20), Some(20)]);
        claims.chosen[1] = Some((20, Source::Xattr));
        // No trusted claim: the first resource-file claim by path.
        assert_eq!(duplicate_winner(&w, None, &claims, 20, &[1, 2, 3]), 2);
        // A trusted claim beats the resource files.
        claims.trusted[3] = true;
        assert_eq!(duplicate_winner(&w, None, &claims, 20, &[1, 2, 3]), 3);
    }

    #[test]
    fn failing_everything_the_first_by_path_keeps_it() {
        let w = walk_of(vec![
            root(),
            object(0, "b", Kind::File, 3),
            object(0, "a", Kind::File, 4),
        ]);
        let mut claims = claims_of(&[Some(ROOT_ID), Some(20), Some(20)]);
        claims.chosen[1] = Some((20, Source::Xattr));
        claims.chosen[2] = Some((20, Source::Netatalk));
        assert_eq!(duplicate_winner(&w, None, &claims, 20, &[1, 2]), 2);
    }

    #[test]
    fn duplicate_losers_lose_their_claim_and_know_the_winner() {
        let w = walk_of(vec![
            root(),
            object(0, "a", Kind::File, 3),
            object(0, "b", Kind::File, 4),
            object(0, "c", Kind::File, 5),
        ]);
        let mut claims = claims_of(&[Some(ROOT_ID), Some(20), Some(20), Some(21)]);
        let losers = settle_duplicates(&w, None, &mut claims);
        assert_eq!(losers, HashMap::from([(2, (20, 1))]));
        assert_eq!(claims.chosen[1], Some((20, Source::Rsrc)));
        assert_eq!(claims.chosen[2], None);
        assert_eq!(claims.chosen[3], Some((21, Source::Rsrc)));
    }

    #[test]
    fn the_counter_starts_above_every_id_seen() {
        let claimed = [
            Some((ROOT_ID, Source::Root)),
            Some((70, Source::Rsrc)),
            None,
        ];
        assert_eq!(counter_start(0, None, &[None]), ids::FIRST_ID - 1);
        assert_eq!(counter_start(50, None, &claimed), 70);
        assert_eq!(counter_start(80, None, &claimed), 80);
        let old = desktop(&[], 90);
        assert_eq!(counter_start(80, Some(&old), &claimed), 90);
    }

    #[test]
    fn an_unclaimed_object_keeps_the_id_at_its_place_once() {
        let old = desktop(&[(20, ROOT_ID, "f", Kind::File, 3)], 30);
        let mut ids = Unclaimed {
            old: Some(&old),
            claimed: Vec::new(),
            used_old_place: vec![0],
            counter: 30,
        };
        assert_eq!(ids.id(Some(20), Kind::File), (20, false));
        // Taken already: a new one from the counter.
        assert_eq!(ids.id(Some(20), Kind::File), (31, true));
        // Another kind at that place, or claimed by another object: new ones too.
        ids.used_old_place = vec![0];
        assert_eq!(ids.id(Some(20), Kind::Dir), (32, true));
        ids.claimed = vec![7, 20];
        assert_eq!(ids.id(Some(20), Kind::File), (33, true));
        assert_eq!(ids.id(None, Kind::File), (34, true));
        // An ID the desktop does not have.
        ids.claimed.clear();
        assert_eq!(ids.id(Some(25), Kind::File), (35, true));
    }

    #[test]
    fn new_ids_skip_the_forbidden_ones() {
        let mut ids = Unclaimed {
            old: None,
            claimed: Vec::new(),
            used_old_place: Vec::new(),
            counter: 0x0100_0000 - 1,
        };
        assert_eq!(ids.id(None, Kind::File), (0x0100_0001, true));
    }

    #[test]
    fn finder_info_comes_from_the_resource_file_then_netatalk_then_the_desktop() {
        let netatalk = NetatalkInfo {
            cnid: None,
            type_code: *b"APPL",
            creator: *b"ntlk",
            finder_flags: 7,
        };
        let mut old = desktop(&[(20, ROOT_ID, "f", Kind::File, 3)], 30);
        let row = old.objects.get_mut(&20).unwrap();
        row.type_code = *b"PDF ";
        row.creator = *b"prvw";
        row.flags = 9;
        let row = old.objects[&20];
        let mut f = with_rsrc(object(0, "f", Kind::File, 3), 20, OWNER);
        f.netatalk = Some(netatalk.clone());
        let info = |f: &Entry, old_row| {
            let w = alone(f.clone());
            finder_info(&w.found[1], w.netatalk(1), old_row)
        };
        assert_eq!(info(&f, Some(&row)), (*b"TEXT", *b"ttxt", 0));
        f.rsrc = Rsrc::Missing;
        assert_eq!(info(&f, Some(&row)), (*b"APPL", *b"ntlk", 7));
        f.netatalk = None;
        assert_eq!(info(&f, Some(&row)), (*b"PDF ", *b"prvw", 9));
        assert_eq!(info(&f, None), (*b"UNIX", *b"UNKN", 0));
        let d = object(0, "d", Kind::Dir, 4);
        assert_eq!(info(&d, None), ([0; 4], [0; 4], 0));
    }

    #[test]
    fn a_new_row_keeps_the_desktops_creation_time() {
        let w = alone(object(0, "f", Kind::File, 3));
        let f = &w.found[1];
        let fresh = new_row(f, None, 40, None);
        assert_eq!((fresh.id, fresh.ctime), (40, 100));
        let old = desktop(&[(40, ROOT_ID, "f", Kind::File, 3)], 50);
        assert_eq!(new_row(f, None, 40, old.objects.get(&40)).ctime, 50);
    }

    #[test]
    fn a_planned_row_is_made_whole_from_the_walk() {
        let w = walk_of(vec![
            root(),
            object(0, "d", Kind::Dir, 3),
            with_rsrc(object(1, "f", Kind::File, 4), 40, OWNER),
        ]);
        let p = plan(&w, None, 30, false, &ClaimPolicy::default());
        let d_id = p.rows[1].id;
        assert_eq!(p.parent_id(&w, 0), ROOT_PARENT_ID);
        assert_eq!(p.parent_id(&w, 2), d_id);
        let f = p.object(&w, 2);
        assert_eq!(
            (f.id, f.parent, &f.name[..], f.kind, f.dev, f.ino),
            (40, d_id, &b"f"[..], Kind::File, 1, 4)
        );
        assert_eq!((f.type_code, f.creator, f.ctime), (*b"TEXT", *b"ttxt", 100));
        assert_eq!(std::mem::size_of::<NewRow>(), 24);
    }

    #[test]
    fn the_root_keeps_its_resource_file_in_its_own_rsrc() {
        assert_eq!(
            rsrc_path_of(0, std::path::Path::new("/vol")),
            PathBuf::from("/vol/.rsrc/.rsrc")
        );
        assert_eq!(
            rsrc_path_of(3, std::path::Path::new("/vol/d/f")),
            PathBuf::from("/vol/d/.rsrc/f")
        );
    }

    #[test]
    fn the_desktops_comment_wins_over_the_resource_files() {
        let mut old = desktop(&[], 30);
        assert_eq!(comment(Some(&old), 20, b""), None, "empty is none");
        assert_eq!(
            comment(Some(&old), 20, b"from the file"),
            Some(b"from the file".to_vec())
        );
        old.comments.insert(20, b"from the desktop".to_vec());
        assert_eq!(
            comment(Some(&old), 20, b"from the file"),
            Some(b"from the desktop".to_vec())
        );
    }

    fn seen(object: usize, id: u32, place_id: Option<u32>) -> Seen {
        Seen {
            object,
            id,
            source: Some(Source::Xattr),
            place_id,
            parent_id: ROOT_ID,
            type_code: [0; 4],
            creator: [0; 4],
        }
    }

    /// The kind and repaired flag of what [`desktop_difference`] says of `f` against `old`.
    fn compare(f: &Entry, old: &OldDesktop, s: &Seen) -> Option<(&'static str, bool)> {
        let w = alone(f.clone());
        desktop_difference(
            &w.found[1],
            &f.name,
            old,
            old.objects.get(&s.id),
            s,
            b"/vol/f",
        )
        .map(|(d, r)| (d.kind, r))
    }

    #[test]
    fn the_desktop_difference_of_an_object_says_what_changed() {
        let old = desktop(
            &[
                (20, ROOT_ID, "f", Kind::File, 3),
                (21, ROOT_ID, "elsewhere", Kind::File, 4),
            ],
            30,
        );
        let f = object(0, "f", Kind::File, 3);
        // The same row: nothing.
        assert_eq!(compare(&f, &old, &seen(1, 20, Some(20))), None);
        // Another ID at its place.
        assert_eq!(
            compare(&f, &old, &seen(1, 21, Some(20))),
            Some(("id-mismatch", true))
        );
        // An ID the desktop has elsewhere: moved.
        assert_eq!(compare(&f, &old, &seen(1, 21, None)), Some(("moved", true)));
        // Not in the desktop: new, added rather than repaired.
        let w = alone(f.clone());
        let d = desktop_difference(&w.found[1], b"f", &old, None, &seen(1, 40, None), b"/vol/f")
            .unwrap();
        assert_eq!((d.0.kind, d.1), ("new", false));
        assert!(
            d.0.detail.contains("from its xattr mirror"),
            "{}",
            d.0.detail
        );
        // Another kind, type/creator, inode.
        let dir = object(0, "f", Kind::Dir, 3);
        assert_eq!(
            compare(&dir, &old, &seen(1, 20, Some(20))),
            Some(("changed", true))
        );
        let mut typed = seen(1, 20, Some(20));
        typed.type_code = *b"TEXT";
        assert_eq!(compare(&f, &old, &typed), Some(("changed", true)));
        let other_inode = object(0, "f", Kind::File, 8);
        assert_eq!(
            compare(&other_inode, &old, &seen(1, 20, Some(20))),
            Some(("changed", true))
        );
    }

    #[test]
    fn the_roots_inode_is_not_compared() {
        let old = desktop(&[], 30);
        let mut s = seen(0, ROOT_ID, Some(ROOT_ID));
        s.parent_id = ROOT_PARENT_ID;
        s.source = Some(Source::Root);
        let w = walk_of(vec![root()]);
        let d = desktop_difference(
            &w.found[0],
            b"",
            &old,
            old.objects.get(&ROOT_ID),
            &s,
            b"/vol",
        );
        assert!(d.is_none());
    }

    fn row_of(id: u32) -> NewRow {
        NewRow {
            id,
            type_code: *b"TEXT",
            creator: *b"ttxt",
            flags: 5,
            ctime: 100,
        }
    }

    /// [`rsrc_repair`] of `f` (object 1 of a walk of its own) for row `row`.
    fn repair_of(f: &Entry, row: &NewRow, loser: bool) -> Option<(Option<Difference>, RsrcRepair)> {
        rsrc_repair(&alone(f.clone()), 1, row, b"/vol/f", loser)
    }

    #[test]
    fn a_resource_file_with_the_right_id_needs_no_repair() {
        let f = with_rsrc(object(0, "f", Kind::File, 3), 20, OWNER);
        assert!(repair_of(&f, &row_of(20), false).is_none());
    }

    #[test]
    fn a_resource_file_with_another_id_gets_the_id_keeping_the_rest() {
        let f = with_rsrc(object(0, "f", Kind::File, 3), 20, OWNER);
        let (d, repair) = repair_of(&f, &row_of(40), false).unwrap();
        assert_eq!(d.map(|d| d.kind), Some("rsrc-id"));
        assert_eq!(repair, RsrcRepair::SetId);
        // The header as it is on disk when the fix is made, with the ID changed only.
        let mut on_disk = ResourceHeader::new(20, *b"PDF ", *b"CARO", 9);
        on_disk.comment = b"kept".to_vec();
        on_disk.serno = 77;
        let header = repaired_header(Some(on_disk.clone()), &row_of(40));
        assert_eq!(header, ResourceHeader { id: 40, ..on_disk });
        // A duplicate's loser is reported as a duplicate, not again here.
        let (d, _) = repair_of(&f, &row_of(40), true).unwrap();
        assert!(d.is_none());
    }

    #[test]
    fn a_missing_or_corrupt_resource_file_is_made_from_the_row() {
        let f = object(0, "f", Kind::File, 3);
        let (d, repair) = repair_of(&f, &row_of(40), false).unwrap();
        assert_eq!(d.map(|d| d.kind), Some("missing-rsrc"));
        assert_eq!(repair, RsrcRepair::Fresh);
        let header = repaired_header(None, &row_of(40));
        assert_eq!(
            (
                header.id,
                header.type_code,
                header.creator,
                header.finder_flags
            ),
            (40, *b"TEXT", *b"ttxt", 5)
        );
        assert_eq!(header.create_time, 100);
        let mut corrupt = f;
        corrupt.rsrc = Rsrc::Corrupt("short header".into());
        let (d, repair) = repair_of(&corrupt, &row_of(40), false).unwrap();
        let d = d.unwrap();
        assert_eq!((d.kind, &d.detail[..]), ("corrupt-rsrc", "short header"));
        assert_eq!(repair, RsrcRepair::Fresh);
    }

    #[test]
    fn a_header_that_only_needs_its_id_is_read_again_below_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("f"), b"data").unwrap();
        let rsrc_path = rsrc::rsrc_path(&root.join("f")).unwrap();
        rsrc::make_rsrc_dir(&rsrc_path).unwrap();
        let mut on_disk = ResourceHeader::new(20, *b"PDF ", *b"CARO", 9);
        on_disk.comment = b"a comment the walk kept aside".to_vec();
        rsrc::write_header(&rsrc_path, &on_disk).unwrap();
        let mut volume_root = root_entry();
        volume_root.rsrc = Rsrc::Valid(ResourceHeader::new(ROOT_ID, [0; 4], [0; 4], 0));
        let w = Walk::of(
            root,
            vec![
                volume_root,
                with_rsrc(object(0, "f", Kind::File, 3), 20, OWNER),
            ],
        );
        let rows = [row_of(ROOT_ID), row_of(40)];
        let Fix::WriteRsrc { path, header } = ObjectRepair::Rsrc(1).fix(&w, &rows) else {
            panic!("not a header")
        };
        assert_eq!(path, rsrc_path);
        assert_eq!(header, ResourceHeader { id: 40, ..on_disk });
        // Gone since the walk: a fresh one from the row.
        std::fs::remove_file(&rsrc_path).unwrap();
        let Fix::WriteRsrc { header, .. } = ObjectRepair::Rsrc(1).fix(&w, &rows) else {
            panic!("not a header")
        };
        assert_eq!(header, repaired_header(None, &row_of(40)));
        // A `.rsrc` swapped for a link to another folder's: its header is not read through it.
        let elsewhere = root.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let mut secret = ResourceHeader::new(20, *b"TEXT", *b"ttxt", 0);
        secret.comment = b"not for this file".to_vec();
        rsrc::write_header(&elsewhere.join("f"), &secret).unwrap();
        std::fs::remove_dir(rsrc_path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, rsrc_path.parent().unwrap()).unwrap();
        let Fix::WriteRsrc { header, .. } = ObjectRepair::Rsrc(1).fix(&w, &rows) else {
            panic!("not a header")
        };
        assert_eq!(header, repaired_header(None, &row_of(40)));
    }

    fn root_entry() -> Entry {
        root()
    }

    #[test]
    fn the_mirror_is_set_where_xattrs_are_kept_and_it_is_wrong() {
        let repair = |f: &Entry, xattrs| {
            let w = alone(f.clone());
            mirror_repair(
                &w.found[1],
                1,
                20,
                xattrs,
                b"/vol/f".to_vec(),
                "/vol/f".into(),
            )
            .map(|(d, _)| d.detail)
        };
        let f = object(0, "f", Kind::File, 3);
        assert_eq!(repair(&f, false), None);
        assert_eq!(
            repair(&f, true).as_deref(),
            Some("no xattr mirror; set to ID 20")
        );
        assert_eq!(repair(&with_xattr(f.clone(), 20), true), None);
        assert!(repair(&with_xattr(f, 21), true).is_some());
        assert_eq!(repair(&object(0, "l", Kind::Symlink, 4), true), None);
    }

    #[test]
    fn an_orphan_moves_only_to_an_object_without_one_and_only_when_trusted() {
        let missing = HashMap::from([(20, (PathBuf::from("/vol/.rsrc/new"), USER))]);
        let to = |id, owner, trust_all| {
            orphan_destination(&OrphanRsrc { id, owner }, &missing, trust_all, OWNER)
        };
        let moved = Some((20, PathBuf::from("/vol/.rsrc/new")));
        // Root's, the volume owner's, the object owner's.
        assert_eq!(to(Some(20), Some(0), false), moved);
        assert_eq!(to(Some(20), Some(OWNER), false), moved);
        assert_eq!(to(Some(20), Some(USER), false), moved);
        // Someone else's, unless --trust-ids; an unknown owner; an ID no object lacks.
        assert_eq!(to(Some(20), Some(4242), false), None);
        assert_eq!(to(Some(20), Some(4242), true), moved);
        assert_eq!(to(Some(20), None, false), None);
        assert_eq!(to(Some(21), Some(0), false), None);
        assert_eq!(to(None, Some(0), true), None);
    }

    #[test]
    fn a_moved_orphan_replaces_the_fresh_header() {
        let w = walk_of(vec![
            root(),
            object(0, "a", Kind::File, 3),
            object(0, "b", Kind::File, 4),
        ]);
        let mut repairs = vec![
            ObjectRepair::Rsrc(1),
            ObjectRepair::Rsrc(2),
            ObjectRepair::Mirror(1),
        ];
        drop_replaced_headers(
            &mut repairs,
            &w,
            &HashSet::from([PathBuf::from("/vol/.rsrc/a")]),
        );
        assert_eq!(repairs, [ObjectRepair::Rsrc(2), ObjectRepair::Mirror(1)]);
    }

    #[test]
    fn rows_no_object_has_vanish_in_id_order() {
        let old = desktop(
            &[
                (30, ROOT_ID, "d", Kind::Dir, 3),
                (31, 30, "x", Kind::File, 4),
                (20, ROOT_ID, "kept", Kind::File, 5),
            ],
            40,
        );
        let w = walk_of(vec![root()]);
        let gone = vanished(&w, &old, &[row_of(ROOT_ID), row_of(20)]);
        let seen: Vec<_> = gone.iter().map(|d| (d.id, d.path.clone())).collect();
        assert_eq!(
            seen,
            [
                (Some(30), b"/vol/d".to_vec()),
                (Some(31), b"/vol/d/x".to_vec())
            ]
        );
        assert_eq!(kinds(&gone), ["vanished", "vanished"]);
    }

    #[test]
    fn many_vanished_rows_come_sorted_by_id() {
        // (Enough rows that the desktop's hash order is not ID order by chance.)
        let rows: Vec<_> = (0..32u32)
            .map(|k| (100 - k, ROOT_ID, "x", Kind::File, u64::from(k)))
            .collect();
        let old = desktop(&rows, 100);
        let gone = vanished(&walk_of(vec![root()]), &old, &[row_of(ROOT_ID)]);
        let ids: Vec<u32> = gone.iter().filter_map(|d| d.id).collect();
        assert_eq!(ids, (69..=100).collect::<Vec<_>>());
    }

    #[test]
    fn the_counter_never_goes_back() {
        let old = desktop(&[(20, ROOT_ID, "a", Kind::File, 3)], 30);
        let w = walk_of(vec![
            root(),
            with_rsrc(object(0, "a", Kind::File, 3), 20, OWNER),
        ]);
        let p = plan(&w, Some(&old), 25, false, &ClaimPolicy::default());
        assert_eq!(p.last_id, 30);
        assert_eq!(p.counts.new_ids, 0);
    }

    #[test]
    fn a_whole_plan_renumbers_only_the_duplicate() {
        // The desktop has a = 20 and b = 21; on disk b was copied with its resource file (c),
        // d is new, and the row of e is gone.
        let mut old = desktop(
            &[
                (20, ROOT_ID, "a", Kind::File, 3),
                (21, ROOT_ID, "b", Kind::File, 4),
                (22, ROOT_ID, "e", Kind::File, 9),
            ],
            30,
        );
        for row in old.objects.values_mut().filter(|r| r.kind == Kind::File) {
            (row.type_code, row.creator) = (*b"TEXT", *b"ttxt");
        }
        let mut volume_root = root();
        volume_root.rsrc = Rsrc::Valid(ResourceHeader::new(ROOT_ID, [0; 4], [0; 4], 0));
        let w = walk_of(vec![
            volume_root,
            with_rsrc(object(0, "a", Kind::File, 3), 20, OWNER),
            with_rsrc(object(0, "b", Kind::File, 4), 21, OWNER),
            with_rsrc(object(0, "c", Kind::File, 5), 21, OWNER),
            object(0, "d", Kind::File, 6),
        ]);
        let policy = ClaimPolicy {
            references: vec![&old],
            ..Default::default()
        };
        let p = plan(&w, Some(&old), 30, false, &policy);
        let ids: Vec<u32> = p.rows.iter().map(|r| r.id).collect();
        assert_eq!(ids, [ROOT_ID, 20, 21, 31, 32]);
        assert_eq!(p.new_id, [false, false, false, true, true]);
        assert_eq!(p.last_id, 32);
        assert_eq!(
            kinds(&p.differences),
            ["duplicate", "new", "missing-rsrc", "vanished"]
        );
        let c = &p.counts;
        assert_eq!(
            (
                c.objects,
                c.directories,
                c.new_ids,
                c.renumbered,
                c.repaired,
                c.removed
            ),
            (5, 1, 2, 1, 2, 1)
        );
    }
}
