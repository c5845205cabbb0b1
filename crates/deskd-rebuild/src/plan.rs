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

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use deskd_db::{ids, ApplRecord, IconRecord, Kind, Object, ROOT_ID, ROOT_PARENT_ID};
use deskd_volume::rsrc::{self, ResourceHeader};
use serde::Serialize;

use crate::claims::{Claim, ClaimPolicy, Verdict};
use crate::walk::{Rsrc, Walk};

/// The old desktop, as far as a rebuild uses it.
#[derive(Default)]
pub struct OldDesktop {
    pub objects: HashMap<u32, Object>,
    pub by_place: HashMap<(u32, Vec<u8>), u32>,
    pub last_id: u32,
    pub comments: HashMap<u32, Vec<u8>>,
    pub icons: Vec<IconRecord>,
    pub appl: Vec<ApplRecord>,
    pub identity: Option<deskd_db::bulk::Identity>,
}

impl OldDesktop {
    /// The path of `id` relative to the root, from the old rows.
    pub(crate) fn rel_path(&self, id: u32) -> Option<Vec<u8>> {
        let mut parts = Vec::new();
        let mut current = id;
        while current != ROOT_ID {
            let o = self.objects.get(&current)?;
            parts.push(&o.name[..]);
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

/// Counts for the summary line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub objects: u64,
    pub directories: u64,
    pub new_ids: u64,
    pub renumbered: u64,
    pub repaired: u64,
    pub removed: u64,
}

/// The outcome of pass 2.
pub struct Plan {
    /// The new desktop's rows, parents before children (row `i` is walked object `i`).
    pub rows: Vec<Object>,
    /// Per row: its ID is a new one from the counter (an online rebuild re-allocates these
    /// from the live counter, which may have moved since the snapshot).
    pub new_id: Vec<bool>,
    pub comments: Vec<(u32, Vec<u8>)>,
    pub differences: Vec<Difference>,
    pub fixes: Vec<Fix>,
    pub last_id: u32,
    pub counts: Counts,
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
pub fn plan(
    walk: &Walk,
    old: Option<&OldDesktop>,
    old_counter: u32,
    xattrs: bool,
    policy: &ClaimPolicy<'_>,
) -> Plan {
    let found = &walk.found;
    let n = found.len();
    let mut differences = Vec::new();
    let mut fixes = Vec::new();
    let mut counts = Counts {
        objects: n as u64,
        directories: found.iter().filter(|f| f.kind == Kind::Dir).count() as u64,
        ..Default::default()
    };

    // Claims: the first one the policy accepts, in the order resource file, mirror, Netatalk.
    let volume_owner = found.first().map_or(0, |f| f.uid);
    let mut claim: Vec<Option<(u32, Source)>> = Vec::with_capacity(n);
    let mut trusted = vec![false; n];
    let mut unchecked: Vec<(usize, u32, Source, Option<u32>)> = Vec::new();
    let mut highest_trusted = 0u32;
    for (i, f) in found.iter().enumerate() {
        if i == 0 {
            claim.push(Some((ROOT_ID, Source::Root)));
            trusted[0] = true;
            continue;
        }
        let from_rsrc = match &f.rsrc {
            Rsrc::Valid(h) if h.id != 0 && usable(h.id) => {
                Some((h.id, Source::Rsrc, f.rsrc_uid, f.rsrc_dir))
            }
            _ => None,
        };
        let candidates = [
            from_rsrc,
            f.xattr_id
                .filter(|&id| usable(id))
                .map(|id| (id, Source::Xattr, Some(f.uid), None)),
            f.netatalk
                .as_ref()
                .and_then(|m| m.cnid)
                .filter(|&id| usable(id))
                .map(|id| (id, Source::Netatalk, Some(f.uid), None)),
        ];
        let rel_path = || walk.rel_path(i as u32);
        let mut chosen = None;
        let mut first_unchecked = None;
        let mut first_rejection = None;
        for (id, source, carrier_uid, carrier_dir) in candidates.into_iter().flatten() {
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
                    trusted[i] = true;
                    highest_trusted = highest_trusted.max(id);
                    chosen = Some((id, source));
                }
                Verdict::Verified => chosen = Some((id, source)),
                Verdict::Unchecked => {
                    first_unchecked.get_or_insert((i, id, source, carrier_uid));
                    continue;
                }
                Verdict::Rejected(why) => {
                    first_rejection.get_or_insert((id, source, why));
                    continue;
                }
            }
            break;
        }
        if chosen.is_none() {
            unchecked.extend(first_unchecked);
        }
        if let (None, Some((id, source, why))) = (chosen, first_rejection) {
            differences.push(Difference {
                object: Some(i as u32),
                id: Some(id),
                kind: "claim-rejected",
                path: walk.path(i as u32).as_os_str().as_bytes().to_vec(),
                detail: format!("the {} claims ID {id}, {why}; ignored", source.describe()),
            });
        }
        claim.push(chosen);
    }
    // Claims no reference can know (none, or above all their counters): one no one vouches for
    // may not reach past the highest ID known to have been handed out, so it cannot move the
    // counter.
    let bound = policy.recorded_max.max(highest_trusted).max(old_counter);
    for (i, id, source, carrier_uid) in unchecked {
        if id <= bound {
            claim[i] = Some((id, source));
        } else {
            differences.push(Difference {
                object: Some(i as u32),
                id: Some(id),
                kind: "claim-rejected",
                path: walk.path(i as u32).as_os_str().as_bytes().to_vec(),
                detail: format!(
                    "the {} claims ID {id}, written by {} (not root or the volume owner), \
                     above every ID known to have been handed out ({bound}); ignored",
                    source.describe(),
                    carrier_uid
                        .map_or_else(|| "an unknown owner".to_owned(), |u| format!("uid {u}")),
                ),
            });
        }
    }

    // Duplicates: several objects claiming one ID.
    let mut claimants: HashMap<u32, Vec<u32>> = HashMap::with_capacity(n);
    for (i, c) in claim.iter().enumerate() {
        if let Some((id, _)) = c {
            claimants.entry(*id).or_default().push(i as u32);
        }
    }
    let mut loser_of: HashMap<u32, (u32, u32)> = HashMap::new(); // loser -> (id, winner)
    for (&id, list) in claimants.iter().filter(|(_, l)| l.len() > 1) {
        let mut candidates: Vec<(Vec<u8>, u32)> =
            list.iter().map(|&i| (walk.rel_path(i), i)).collect();
        candidates.sort();
        let old_row = old.and_then(|o| o.objects.get(&id));
        let old_path = old.and_then(|o| o.rel_path(id));
        let winner = candidates
            .iter()
            .find(|(p, _)| Some(p) == old_path.as_ref())
            .or_else(|| {
                candidates.iter().find(|(_, i)| {
                    let f = &found[*i as usize];
                    old_row.is_some_and(|r| (r.dev, r.ino) == (f.dev, f.ino))
                })
            })
            // A claim no one vouches for never takes an ID from one someone does.
            .or_else(|| candidates.iter().find(|(_, i)| trusted[*i as usize]))
            .or_else(|| {
                candidates
                    .iter()
                    .find(|(_, i)| claim[*i as usize].map(|c| c.1) == Some(Source::Rsrc))
            })
            .unwrap_or(&candidates[0])
            .1;
        for &(_, i) in &candidates {
            if i != winner {
                loser_of.insert(i, (id, winner));
            }
        }
    }
    for &loser in loser_of.keys() {
        claim[loser as usize] = None;
    }
    let claimed: std::collections::HashSet<u32> =
        claim.iter().filter_map(|c| c.map(|(id, _)| id)).collect();

    // The counter starts above every ID anyone has seen, so new IDs are never old ones.
    let mut counter = old_counter
        .max(old.map_or(0, |o| o.last_id))
        .max(claimed.iter().copied().max().unwrap_or(0))
        .max(ids::FIRST_ID - 1);

    // Assign, parents first (the walk lists a directory before its entries).
    let mut final_ids = vec![0u32; n];
    let mut new_id = vec![false; n];
    let mut rows = Vec::with_capacity(n);
    let mut comments = Vec::new();
    let mut used_old_place: std::collections::HashSet<u32> = Default::default();
    // Objects without a resource file, by their ID: where a left-behind one would go.
    // (With the object's owner: only its own or a trusted resource file may move to it.)
    let mut missing_rsrc: HashMap<u32, (PathBuf, u32)> = HashMap::new();
    for i in 0..n {
        let f = &found[i];
        let parent_id = if i == 0 {
            ROOT_PARENT_ID
        } else {
            final_ids[f.parent as usize]
        };
        // The ID the old desktop has at this place (used for unclaimed objects and the report).
        let place_id = old.and_then(|o| o.by_place.get(&(parent_id, f.name.clone())).copied());
        let mut source = claim[i].map(|c| c.1);
        let id = match claim[i] {
            Some((id, _)) => id,
            None => {
                let at_place = place_id.filter(|id| {
                    !claimed.contains(id)
                        && !used_old_place.contains(id)
                        && old.and_then(|o| o.objects.get(id)).map(|r| r.kind) == Some(f.kind)
                });
                match at_place {
                    Some(id) => {
                        used_old_place.insert(id);
                        id
                    }
                    None => {
                        // A counter past 2^32 - 2 cannot happen for a walk of < 2^32 objects
                        // above the largest claimed ID unless the space is truly used up.
                        counter = ids::next_candidate(counter).unwrap_or(ids::LAST_USABLE_ID);
                        counts.new_ids += 1;
                        new_id[i] = true;
                        source = None;
                        counter
                    }
                }
            }
        };
        final_ids[i] = id;
        let old_row = old.and_then(|o| o.objects.get(&id));
        let header = match &f.rsrc {
            Rsrc::Valid(h) => Some(h),
            _ => None,
        };
        let (type_code, creator, flags) = if let Some(h) = header {
            (h.type_code, h.creator, h.finder_flags)
        } else if let Some(m) = &f.netatalk {
            (m.type_code, m.creator, m.finder_flags)
        } else if let Some(r) = old_row {
            (r.type_code, r.creator, r.flags)
        } else if f.kind == Kind::File {
            (*b"UNIX", *b"UNKN", 0)
        } else {
            ([0; 4], [0; 4], 0)
        };
        let row = Object {
            id,
            parent: parent_id,
            name: f.name.clone(),
            kind: f.kind,
            dev: f.dev,
            ino: f.ino,
            type_code,
            creator,
            flags,
            ctime: old_row.map_or(f.ctime, |r| r.ctime),
        };
        if let Some(text) = old
            .and_then(|o| o.comments.get(&id))
            .cloned()
            .or_else(|| header.map(|h| h.comment.clone()).filter(|c| !c.is_empty()))
        {
            comments.push((id, text));
        }

        // Differences with the desktop.
        let disk_path = walk.path(i as u32);
        let path = disk_path.as_os_str().as_bytes().to_vec();
        let mut repaired = false;
        if let Some(&(dup_id, winner)) = loser_of.get(&(i as u32)) {
            counts.renumbered += 1;
            differences.push(Difference {
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
            match (old_row, place_id) {
                (_, Some(place_id)) if place_id != id => {
                    repaired = true;
                    differences.push(Difference {
                        object: Some(i as u32),
                        id: Some(id),
                        kind: "id-mismatch",
                        path: path.clone(),
                        detail: format!(
                            "the {} says ID {id}, the desktop has ID {place_id} here",
                            source.unwrap_or(Source::Rsrc).describe()
                        ),
                    });
                }
                (None, _) => differences.push(Difference {
                    object: Some(i as u32),
                    id: Some(id),
                    kind: "new",
                    path: path.clone(),
                    detail: match source {
                        Some(s) if s != Source::Root => {
                            format!(
                                "not in the desktop; keeps ID {id} from its {}",
                                s.describe()
                            )
                        }
                        _ => format!("not in the desktop; gets ID {id}"),
                    },
                }),
                (Some(r), _) => {
                    let detail = if (r.parent, &r.name) != (parent_id, &f.name) {
                        Some((
                            "moved",
                            format!(
                                "ID {id} was at {}",
                                o.rel_path(id)
                                    .map(|p| String::from_utf8_lossy(&p).into_owned())
                                    .unwrap_or_else(|| "an unknown place".into())
                            ),
                        ))
                    } else if r.kind != f.kind {
                        Some((
                            "changed",
                            format!("was a {}, is a {}", r.kind.as_str(), f.kind.as_str()),
                        ))
                    } else if (r.type_code, r.creator) != (type_code, creator) {
                        Some((
                            "changed",
                            format!(
                                "type/creator {}/{} on disk, {}/{} in the desktop",
                                four(type_code),
                                four(creator),
                                four(r.type_code),
                                four(r.creator)
                            ),
                        ))
                    } else if i != 0 && (r.dev, r.ino) != (f.dev, f.ino) {
                        // (The root's row carries no inode: the root is found by its path.)
                        Some((
                            "changed",
                            format!("inode {} on disk, {} in the desktop", f.ino, r.ino),
                        ))
                    } else {
                        None
                    };
                    if let Some((kind, detail)) = detail {
                        repaired = true;
                        differences.push(Difference {
                            object: Some(i as u32),
                            id: Some(id),
                            kind,
                            path: path.clone(),
                            detail,
                        });
                    }
                }
            }
        }

        // Repairs on disk: the resource file and the mirror.
        let rsrc_path = if i == 0 {
            rsrc::root_rsrc_path(&disk_path)
        } else {
            rsrc::rsrc_path(&disk_path).expect("a child has a parent")
        };
        if f.rsrc == Rsrc::Missing {
            missing_rsrc.insert(id, (rsrc_path.clone(), f.uid));
        }
        match &f.rsrc {
            Rsrc::Valid(h) if h.id == id => {}
            Rsrc::Valid(h) => {
                let mut fixed = h.clone();
                fixed.id = id;
                if !loser_of.contains_key(&(i as u32)) {
                    differences.push(Difference {
                        object: Some(i as u32),
                        id: Some(id),
                        kind: "rsrc-id",
                        path: path.clone(),
                        detail: format!("the resource file says ID {}, the ID is {id}", h.id),
                    });
                }
                fixes.push(Fix::WriteRsrc {
                    path: rsrc_path,
                    header: fixed,
                });
                repaired = true;
            }
            state => {
                let why = match state {
                    Rsrc::Corrupt(why) => ("corrupt-rsrc", why.clone()),
                    _ => (
                        "missing-rsrc",
                        format!("no resource file; one is made for ID {id}"),
                    ),
                };
                differences.push(Difference {
                    object: Some(i as u32),
                    id: Some(id),
                    kind: why.0,
                    path: path.clone(),
                    detail: why.1,
                });
                let mut header =
                    ResourceHeader::new(id, type_code, creator, row.ctime.max(0) as u32);
                header.finder_flags = flags;
                fixes.push(Fix::WriteRsrc {
                    path: rsrc_path,
                    header,
                });
                repaired = true;
            }
        }
        if xattrs && f.kind != Kind::Symlink && f.xattr_id != Some(id) {
            differences.push(Difference {
                object: Some(i as u32),
                id: Some(id),
                kind: "mirror",
                path: path.clone(),
                detail: match f.xattr_id {
                    Some(x) => format!("the xattr mirror says ID {x}, the ID is {id}"),
                    None => format!("no xattr mirror; set to ID {id}"),
                },
            });
            fixes.push(Fix::WriteXattr {
                path: disk_path,
                id,
            });
            repaired = true;
        }
        if repaired {
            counts.repaired += 1;
        }
        rows.push(row);
    }

    // Resource files that belong to no object. One left behind by a plain `mv` moves to the
    // object that now carries its ID (its fork and comment go with it).
    let mut moved_to = std::collections::HashSet::new();
    for (dir, name) in &walk.orphans {
        let path = walk.dir_paths[dir]
            .join(rsrc::RSRC_DIR)
            .join(std::ffi::OsStr::from_bytes(name));
        // The owner of the very file whose header is read.
        let (header, orphan_owner) = rsrc::read_header_and_owner(&path).ok().flatten().unzip();
        // A resource file someone else planted does not become this object's.
        let may_move = |object_owner: u32| {
            policy.trust_all
                || orphan_owner.is_some_and(|u| u == 0 || u == volume_owner || u == object_owner)
        };
        match header.and_then(|h| {
            missing_rsrc
                .get(&h.id)
                .filter(|(_, owner)| may_move(*owner))
                .map(|(to, _)| (h.id, to.clone()))
        }) {
            Some((id, to)) if !moved_to.contains(&to) => {
                moved_to.insert(to.clone());
                differences.push(Difference {
                    object: None,
                    id: None,
                    kind: "orphan-rsrc",
                    path: path.as_os_str().as_bytes().to_vec(),
                    detail: format!("left behind by a move; goes to {}", to.display()),
                });
                fixes.push(Fix::MoveRsrc { from: path, to, id });
            }
            _ => {
                counts.removed += 1;
                differences.push(Difference {
                    object: None,
                    id: None,
                    kind: "orphan-rsrc",
                    path: path.as_os_str().as_bytes().to_vec(),
                    detail: "no object of that name; removed".into(),
                });
                fixes.push(Fix::RemoveOrphan { path });
            }
        }
    }
    // A moved resource file replaces the fresh header that would have been written.
    fixes.retain(|f| match f {
        Fix::WriteRsrc { path, .. } => !moved_to.contains(path),
        _ => true,
    });

    // Desktop rows of objects that are gone.
    if let Some(o) = old {
        let alive: std::collections::HashSet<u32> = final_ids.iter().copied().collect();
        let mut gone: Vec<u32> = o
            .objects
            .keys()
            .copied()
            .filter(|id| !alive.contains(id))
            .collect();
        gone.sort_unstable();
        let root = walk.path(0);
        for id in gone {
            counts.removed += 1;
            let rel = o.rel_path(id).unwrap_or_default();
            let mut path = root.as_os_str().as_bytes().to_vec();
            path.push(b'/');
            path.extend_from_slice(&rel);
            differences.push(Difference {
                object: None,
                id: Some(id),
                kind: "vanished",
                path,
                detail: format!("ID {id} is in the desktop but not on disk; removed"),
            });
        }
    }
    let max_assigned = final_ids.iter().copied().max().unwrap_or(0);
    Plan {
        rows,
        new_id,
        comments,
        differences,
        fixes,
        last_id: counter.max(max_assigned),
        counts,
    }
}
