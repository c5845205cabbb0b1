//! Registering objects: `Add` (a name in a registered folder, with the dev/ino the client saw)
//! and `AddPath` (a path, with every unregistered folder above it). Registration is allowed on
//! read-only volumes: a client needs IDs to browse.
//!
//! A place without a record may be where a registered object was moved outside deskd
//! ([`super::moved`]); a registered name that now holds another inode of its kind keeps its
//! ID or not as the volume's `replaced` setting says ([`take_over`]).

use deskd_db::{Kind, NewObject, Object, Read, WriteBatch};
use deskd_proto::{ErrorReply, Response};

use super::errors::{claim, db_error, kind_changed, volume_error};
use super::moved::follow_move;
use super::paths::{reached, walk_names, walk_path};
use super::wire::{info, join};
use super::{Reply, Writing};
use crate::config::Replaced;
use crate::walk::Node;

/// The type code of a plain file registered without one (as Netatalk shows Unix files).
const UNIX_TYPE: [u8; 4] = *b"UNIX";
/// The creator code of a plain file registered without one.
const UNKN_CREATOR: [u8; 4] = *b"UNKN";

/// What a client asks of the record it registers, used only when the record is new.
#[derive(Clone, Copy, Default)]
pub(super) struct Asked {
    /// An ID to keep if it is free (a restore, a move between volumes).
    pub(super) hint: Option<u32>,
    pub(super) type_code: Option<[u8; 4]>,
    pub(super) creator: Option<[u8; 4]>,
    /// The ID the object carries from where it was: only to follow a move ([`follow_move`])
    /// and, with `replaced = "new-id"`, to keep the ID of the name it replaced.
    pub(super) carried: Option<u32>,
    /// A registration (`Add`, `AddPath`, a `RenamePath` of an unregistered object): the
    /// last name follows a move and obeys `replaced`. Not the folder a rename goes into.
    pub(super) registering: bool,
    /// The caller has read the object's ID mirror already (the watcher's claim: `carried`
    /// is what it found): [`mirror_of`] does not read it a second time.
    pub(super) mirror_read: bool,
}

impl Asked {
    /// What a client asks when registering an object.
    pub(super) fn registering(self) -> Asked {
        Asked {
            registering: true,
            ..self
        }
    }

    /// The IDs the object says it had: a move is followed by them. `mirror`: the ID mirror
    /// the object carries on disk ([`mirror_of`]), when the request carries none.
    fn candidates(&self, mirror: Option<u32>) -> [Option<u32>; 3] {
        [
            self.hint,
            self.carried.filter(|&c| Some(c) != self.hint),
            mirror.filter(|&m| Some(m) != self.hint && Some(m) != self.carried),
        ]
    }

    /// Whether the request says the object is the one with `id`.
    fn names(&self, id: u32) -> bool {
        self.hint == Some(id) || self.carried == Some(id)
    }
}

/// The ID mirror on the object at `components` (its extended attribute; a link is not
/// followed), asked only when the request carries no ID: a file moved by plain `mv` or over SMB
/// keeps its mirror, so a client registering it at its new name before the watcher has applied
/// the move (afpd, whose AppleDouble file stayed behind; any client during a deferred burst)
/// follows the move instead of being given a new ID that the move would then retire. Only a
/// candidate: [`follow_move`] takes it for the record of this very inode, no longer at its
/// recorded place, that the peer could have moved; anything else a user wrote there is ignored.
fn mirror_of<B: WriteBatch + ?Sized>(
    w: &Writing<'_, B>,
    asked: &Asked,
    node: &Node,
    components: &[Vec<u8>],
) -> Option<u32> {
    if asked.carried.is_some() || asked.mirror_read || node.kind == Kind::Symlink {
        return None;
    }
    deskd_volume::read_id_xattr(&w.vol.path_of(components))
}

/// A registered name found holding another inode of the record's kind (save-by-replace, an
/// exchange, delete and create). Under `keep-id`, or when the request names the record's ID,
/// the record takes the new inode and `true` is returned; under `new-id` the record is removed
/// (its ID is never handed out again) and `false` tells the caller to register the object anew.
fn take_over<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    object: &mut Object,
    node: &Node,
    asked: &Asked,
) -> Result<bool, ErrorReply> {
    // A record from before deskd kept dev/ino is taken at its word (as `same_object` does).
    let legacy = object.dev == 0 && object.ino == 0;
    let keep = legacy
        || !asked.registering
        || w.replaced == Replaced::KeepId
        || asked.names(object.id)
        // Retiring an ID is a change to the folder's names: not for a peer who may only
        // read the folder (it gets the record as it is, brought up to date).
        || !retire_allowed(w, object)?;
    if !keep {
        w.b.delete(object.id, true).map_err(db_error)?;
        if object.kind == Kind::Dir {
            w.cache.clear();
        }
        return Ok(false);
    }
    w.b.set_devino(object.id, node.dev, node.ino, node.ctime)
        .map_err(db_error)?;
    (object.dev, object.ino) = (node.dev, node.ino);
    Ok(true)
}

/// Whether the peer may retire `object`'s ID (`replaced = "new-id"`): it may change the
/// entries of the folder that holds it.
fn retire_allowed<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    object: &Object,
) -> Result<bool, ErrorReply> {
    let folder = if object.parent == deskd_db::ROOT_ID {
        Vec::new()
    } else {
        w.b.path_of(object.parent).map_err(db_error)?
    };
    Ok(super::moved::may_change_folder(w, &folder))
}

/// `Add`: register `name` in the registered folder `parent` after checking, walking as the
/// peer, that the object there has the `dev`/`ino` the client saw.
pub(super) fn add<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    parent: u32,
    name: &[u8],
    (dev, ino): (u64, u64),
    asked: Asked,
) -> Reply {
    deskd_volume::check_name(name).map_err(volume_error)?;
    let mut components = w.cache.components_of(w.b, parent)?;
    components.push(name.to_vec());
    let walked = reached(w.access, w.vol, walk_names(w.vol, w.access, &components)?)?;
    let node = *walked.last().expect("a walk that reached its end");
    if (node.dev, node.ino) != (dev, ino) {
        return Err(claim(format!(
            "{}: dev/ino {}/{} on disk, client said {dev}/{ino}",
            w.vol.path_of(&components).display(),
            node.dev,
            node.ino
        )));
    }
    let asked = asked.registering();
    if let Some(mut o) = w.b.lookup(parent, name).map_err(db_error)? {
        if o.kind != node.kind {
            return Err(kind_changed(&components, &o, &node));
        }
        if (o.dev, o.ino) == (node.dev, node.ino) || take_over(w, &mut o, &node, &asked)? {
            return Ok(Response::Object(info(&o, Some(join(&components)), false)));
        }
    }
    // No record at the place (or, with `new-id`, no longer): moved here from elsewhere?
    let mirror = mirror_of(w, &asked, &node, &components);
    if let Some(o) = follow_move(w, &asked.candidates(mirror), &node, parent, name)? {
        return Ok(Response::Object(info(&o, Some(join(&components)), false)));
    }
    let file = node.kind == Kind::File;
    let new = NewObject {
        parent,
        name: name.to_vec(),
        kind: node.kind,
        dev: node.dev,
        ino: node.ino,
        type_code: asked
            .type_code
            .unwrap_or(if file { UNIX_TYPE } else { [0; 4] }),
        creator: asked
            .creator
            .unwrap_or(if file { UNKN_CREATOR } else { [0; 4] }),
        flags: 0,
        ctime: node.ctime,
        hint: asked.hint,
    };
    // The place was looked up above in this batch and is empty (or emptied by `take_over`).
    let o = w.b.add_absent(&new).map_err(db_error)?;
    Ok(Response::Object(info(&o, Some(join(&components)), true)))
}

/// `Add` of an object registered already, answered from a read snapshot instead of a write
/// transaction: afpd's `get_id()` sends an ADD for every object it looks at, and most are
/// known. The checks are [`add`]'s: the name, the walk as the peer, the claim's dev/ino against
/// what is on disk; and the record at `parent`/`name` must be that very object, of its kind, as
/// when [`add`] answers it unchanged. Anything else (no record there, another inode, a refusal,
/// an error) is left to [`add`] on the write path, which decides and words it: `None`.
pub(super) fn add_known<R: Read>(
    db: &R,
    vol: &deskd_volume::Volume,
    access: &crate::access::Access,
    parent: u32,
    name: &[u8],
    (dev, ino): (u64, u64),
) -> Option<Reply> {
    deskd_volume::check_name(name).ok()?;
    // The record first (one index lookup): a new object, afpd's usual ADD, has none, and the
    // write path walks the disk anyway; walking here too would be done twice.
    let o = db.lookup(parent, name).ok()??;
    if (o.dev, o.ino) != (dev, ino) {
        return None;
    }
    let mut components = db.path_of(parent).ok()?;
    components.push(name.to_vec());
    let walked = reached(access, vol, walk_names(vol, access, &components).ok()?).ok()?;
    let node = *walked.last()?;
    if (node.dev, node.ino) != (dev, ino) || node.kind != o.kind {
        return None;
    }
    Some(Ok(Response::Object(info(
        &o,
        Some(join(&components)),
        false,
    ))))
}

/// `AddPath`: register the object at `path` and every unregistered folder above it, as the
/// walk (as the peer) found them.
pub(super) fn add_path<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    path: &[u8],
    asked: Asked,
) -> Reply {
    let walked = reached(w.access, w.vol, walk_path(w.vol, w.access, path)?)?;
    if walked.components.is_empty() {
        let root = w.b.get(deskd_db::ROOT_ID).map_err(db_error)?;
        return Ok(Response::Object(info(&root, Some(Vec::new()), false)));
    }
    let (o, created) = register_walked(w, &walked.components, &walked.nodes, asked.registering())?;
    Ok(Response::Object(info(
        &o,
        Some(join(&walked.components)),
        created,
    )))
}

/// Register the objects walked (`components`, with what the walk found each to be) and every
/// unregistered directory above the last; `asked` applies to the last only. What is recorded
/// is what the walk's descriptors were. Returns the final object and whether it was created.
pub(super) fn register_walked<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    components: &[Vec<u8>],
    nodes: &[Node],
    asked: Asked,
) -> Result<(Object, bool), ErrorReply> {
    let mut current = w.b.get(deskd_db::ROOT_ID).map_err(db_error)?;
    let mut created = false;
    for (i, (name, node)) in components.iter().zip(nodes).enumerate() {
        let last = i + 1 == components.len();
        let existing = w.b.lookup(current.id, name).map_err(db_error)?;
        if let Some(dir) = existing.as_ref().filter(|_| !last) {
            // A registered directory on the way: the walk has just been through it.
            if dir.kind != Kind::Dir {
                return Err(kind_changed(&components[..=i], dir, node));
            }
            if w.watching && dir.dev != 0 && (dir.dev, dir.ino) != (node.dev, node.ino) {
                // The watcher's change, applied after the disk moved on: another folder holds
                // this place now (its owner moved the recorded one away and another in). What
                // the walk found in it is not in the recorded folder, and registering it there
                // (following its mirror) gave one user's ID to another's file (the hostile
                // review of stop 44: the watcher is trusted, so `could_have_moved` lets it
                // follow any mirror). The folders' own moves, later in the stream, put the
                // records right. A client's claim is checked as the client's own.
                return Err(super::errors::stale_folder(&components[..=i], dir));
            }
            current = dir.clone();
            created = false;
            continue;
        }
        if let Some(mut object) = existing {
            if object.kind != node.kind {
                // Not a new copy of the same thing (a symlink swapped in for a folder): the
                // record is never made to say the descriptor is what it is not.
                return Err(kind_changed(&components[..=i], &object, node));
            }
            if (object.dev, object.ino) == (node.dev, node.ino)
                || take_over(w, &mut object, node, &asked)?
            {
                current = object;
                created = false;
                continue;
            }
        }
        // No record at the place (or, with `new-id`, no longer): moved here from elsewhere?
        if last && asked.registering {
            let mirror = mirror_of(w, &asked, node, &components[..=i]);
            if let Some(object) = follow_move(w, &asked.candidates(mirror), node, current.id, name)?
            {
                current = object;
                created = false;
                continue;
            }
        }
        let (default_type, default_creator) = if node.kind == Kind::File {
            (UNIX_TYPE, UNKN_CREATOR)
        } else {
            ([0; 4], [0; 4])
        };
        let new = NewObject {
            parent: current.id,
            name: name.clone(),
            kind: node.kind,
            dev: node.dev,
            ino: node.ino,
            type_code: if last {
                asked.type_code.unwrap_or(default_type)
            } else {
                default_type
            },
            creator: if last {
                asked.creator.unwrap_or(default_creator)
            } else {
                default_creator
            },
            flags: 0,
            ctime: node.ctime,
            hint: if last { asked.hint } else { None },
        };
        // Looked up at the top of this step: the place is empty.
        current = w.b.add_absent(&new).map_err(db_error)?;
        created = true;
    }
    Ok((current, created))
}
