//! Turning requests into desktop changes, after verifying every client claim against the file
//! system (DESIGN §5): the object exists at the new place with the recorded dev/ino, the old
//! name is gone. Every path is walked race-free as the peer ([`crate::walk`]) and what is
//! recorded is what the walk reached. Reads are answered here too, showing a peer only what it
//! may see ([`crate::sight`]).

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use deskd_db::{Batch, DbError, InfoUpdate, Kind, NameIndex, NewObject, Object, Read};
use deskd_proto::{ErrorCode, ErrorReply, ObjectInfo, Request, Response};
use deskd_volume::{Volume, VolumeError};

use crate::access::{self, Access};
pub use crate::db_reply::db_error;
use crate::sight;
use crate::walk::{self, Node, Walked};

pub type Reply = Result<Response, ErrorReply>;

const UNIX_TYPE: [u8; 4] = *b"UNIX";
const UNKN_CREATOR: [u8; 4] = *b"UNKN";
/// Upper bound for one `Find` page.
pub const MAX_FIND_LIMIT: u32 = 10_000;

pub fn volume_error(e: VolumeError) -> ErrorReply {
    let code = match &e {
        VolumeError::Escape(_) => ErrorCode::Escape,
        VolumeError::Protected(_) => ErrorCode::Protected,
        VolumeError::InvalidName(..) => ErrorCode::InvalidName,
        _ => ErrorCode::Internal,
    };
    ErrorReply::new(code, e.to_string())
}

fn claim(message: String) -> ErrorReply {
    ErrorReply::new(ErrorCode::ClaimRejected, message)
}

fn kind_to_wire(k: Kind) -> deskd_proto::Kind {
    match k {
        Kind::File => deskd_proto::Kind::File,
        Kind::Dir => deskd_proto::Kind::Dir,
        Kind::Symlink => deskd_proto::Kind::Symlink,
    }
}

/// The wire form of an object, with its path when `path` is given.
pub fn info(o: &Object, path: Option<Vec<u8>>, created: bool) -> ObjectInfo {
    ObjectInfo {
        id: o.id,
        parent: o.parent,
        name: o.name.clone(),
        kind: kind_to_wire(o.kind),
        type_code: o.type_code,
        creator: o.creator,
        flags: o.flags,
        path,
        created,
    }
}

/// Join path components with `/`.
pub fn join(components: &[Vec<u8>]) -> Vec<u8> {
    components.join(&b'/')
}

fn same_object(o: &Object, dev: u64, ino: u64) -> bool {
    (o.dev == 0 && o.ino == 0) || (o.dev == dev && o.ino == ino)
}

/// Desktop paths of directories already looked up in this batch (by ID). Requests that rename
/// or delete clear it, so an entry is never stale.
#[derive(Default)]
pub struct DirCache(HashMap<u32, Vec<Vec<u8>>>);

/// The names from the root to a registered object.
fn components_of<R: Read>(
    db: &R,
    id: u32,
    cache: &mut DirCache,
) -> Result<Vec<Vec<u8>>, ErrorReply> {
    if let Some(hit) = cache.0.get(&id) {
        return Ok(hit.clone());
    }
    let components = db.path_of(id).map_err(db_error)?;
    cache.0.insert(id, components.clone());
    Ok(components)
}

/// Split a client's path into names, refusing `..`, `.`, protected and invalid names.
pub fn client_names(rel: &[u8]) -> Result<Vec<Vec<u8>>, ErrorReply> {
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
pub fn walk_path(vol: &Volume, access: &Access, rel: &[u8]) -> Result<Walked, ErrorReply> {
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
fn walk_names(vol: &Volume, access: &Access, components: &[Vec<u8>]) -> Result<Walked, ErrorReply> {
    access
        .wear(|| walk::walk_as(vol.root(), components, access.viewer()))
        .map(hide_unseen_names)
        .ok_or_else(sight::unseen)
}

/// The walk got to its last name: else what stopped it (a refusal, or a missing name; the
/// same [`sight::unseen`] to an unprivileged peer, so a hidden name and a missing one sound
/// alike).
fn reached(access: &Access, vol: &Volume, walked: Walked) -> Result<Walked, ErrorReply> {
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

/// Register the objects walked (`components`, with what the walk found each to be) and every
/// unregistered directory above the last. What is recorded is what the walk's descriptors
/// were. Returns the final object and whether it was created.
fn add_path(
    b: &mut Batch<'_>,
    components: &[Vec<u8>],
    nodes: &[Node],
    hint: Option<u32>,
    type_code: Option<[u8; 4]>,
    creator: Option<[u8; 4]>,
) -> Result<(Object, bool), ErrorReply> {
    let mut current = b.get(deskd_db::ROOT_ID).map_err(db_error)?;
    let mut created = false;
    for (i, (name, node)) in components.iter().zip(nodes).enumerate() {
        let last = i + 1 == components.len();
        let existing = b.lookup(current.id, name).map_err(db_error)?;
        if let Some(dir) = existing.as_ref().filter(|_| !last) {
            // A registered directory on the way: the walk has just been through it.
            if dir.kind != Kind::Dir {
                return Err(kind_changed(&components[..=i], dir, node));
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
            if (object.dev, object.ino) != (node.dev, node.ino) {
                // Same name, new inode (save-by-replace, restore): the name keeps its ID.
                b.set_devino(object.id, node.dev, node.ino)
                    .map_err(db_error)?;
                (object.dev, object.ino) = (node.dev, node.ino);
            }
            current = object;
            created = false;
            continue;
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
                type_code.unwrap_or(default_type)
            } else {
                default_type
            },
            creator: if last {
                creator.unwrap_or(default_creator)
            } else {
                default_creator
            },
            flags: 0,
            ctime: node.ctime,
            hint: if last { hint } else { None },
        };
        current = b.add(&new).map_err(db_error)?.0;
        created = true;
    }
    Ok((current, created))
}

/// The refusal to record a name whose object on disk is of another kind than its record.
fn kind_changed(components: &[Vec<u8>], recorded: &Object, node: &Node) -> ErrorReply {
    claim(format!(
        "{}: is a {} on disk, recorded as a {} (ID {}); tell deskd of the removal first",
        String::from_utf8_lossy(&join(components)),
        node.kind.as_str(),
        recorded.kind.as_str(),
        recorded.id
    ))
}

fn registered(b: &Batch<'_>, components: &[Vec<u8>]) -> Result<Option<Object>, ErrorReply> {
    let names: Vec<&[u8]> = components.iter().map(|c| c.as_slice()).collect();
    match b.id_of_path(&names).map_err(db_error)? {
        Some(id) => Ok(Some(b.get(id).map_err(db_error)?)),
        None => Ok(None),
    }
}

/// Verify that `object` is no longer at `old` (walked by the server: is it still there for
/// anyone?).
fn verify_gone(vol: &Volume, object: &Object, old: &[Vec<u8>]) -> Result<(), ErrorReply> {
    let walked = walk::walk(vol.root(), old);
    if let Some(node) = walked.last() {
        if object.dev != 0 && same_object(object, node.dev, node.ino) {
            return Err(claim(format!(
                "{}: still exists on disk; do the operation before telling deskd",
                vol.path_of(old).display()
            )));
        }
    }
    Ok(())
}

/// Verify, walking as the peer, that `object` is now at the end of `walked`.
fn verify_arrived(
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

fn do_rename(
    b: &mut Batch<'_>,
    vol: &Volume,
    access: &Access,
    object: &Object,
    old: &[Vec<u8>],
    new: Walked,
    replace: bool,
) -> Reply {
    if new.components.is_empty() {
        return Err(ErrorReply::new(
            ErrorCode::PermissionDenied,
            "cannot rename onto the volume root",
        ));
    }
    verify_gone(vol, object, old)?;
    let new = verify_arrived(access, vol, object, new)?;
    let (new_name, parent_components) = new.components.split_last().expect("not the root");
    let node = *new.last().expect("a walk that reached its end");
    let (parent, _) = add_path(
        b,
        parent_components,
        &new.nodes[..parent_components.len()],
        None,
        None,
        None,
    )?;
    let removed = b
        .rename(object.id, parent.id, new_name, replace)
        .map_err(db_error)?;
    if object.dev == 0 && object.ino == 0 {
        b.set_devino(object.id, node.dev, node.ino)
            .map_err(db_error)?;
    }
    Ok(Response::Removed(removed))
}

/// Apply one write request inside the batch. `read_only` volumes refuse changes but still
/// register objects (a client needs IDs to browse). Every path is walked race-free as the
/// peer (`access`), and what is recorded is what the walk reached.
pub fn apply_write(
    b: &mut Batch<'_>,
    vol: &Volume,
    read_only: bool,
    request: &Request,
    cache: &mut DirCache,
    access: &Access,
) -> Reply {
    if matches!(
        request,
        Request::Rename { .. }
            | Request::RenamePath { .. }
            | Request::Delete { .. }
            | Request::DeletePath { .. }
    ) {
        cache.0.clear();
    }
    let refuse_ro = || {
        if read_only {
            Err(ErrorReply::new(
                ErrorCode::ReadOnly,
                format!("{}: volume is read-only", vol.root().display()),
            ))
        } else {
            Ok(())
        }
    };
    match request {
        Request::Add {
            parent,
            name,
            dev,
            ino,
            hint,
            type_code,
            creator,
            ..
        } => {
            deskd_volume::check_name(name).map_err(volume_error)?;
            let parent_components = components_of(b, *parent, cache)?;
            let mut components = parent_components.clone();
            components.push(name.clone());
            let walked = reached(access, vol, walk_names(vol, access, &components)?)?;
            let node = *walked.last().expect("a walk that reached its end");
            if (node.dev, node.ino) != (*dev, *ino) {
                return Err(claim(format!(
                    "{}: dev/ino {}/{} on disk, client said {dev}/{ino}",
                    vol.path_of(&components).display(),
                    node.dev,
                    node.ino
                )));
            }
            let file = node.kind == Kind::File;
            let new = NewObject {
                parent: *parent,
                name: name.clone(),
                kind: node.kind,
                dev: node.dev,
                ino: node.ino,
                type_code: type_code.unwrap_or(if file { UNIX_TYPE } else { [0; 4] }),
                creator: creator.unwrap_or(if file { UNKN_CREATOR } else { [0; 4] }),
                flags: 0,
                ctime: node.ctime,
                hint: *hint,
            };
            let (o, created) = b.add(&new).map_err(db_error)?;
            if !created && o.kind != node.kind {
                return Err(kind_changed(&components, &o, &node));
            }
            if !created && (o.dev, o.ino) != (node.dev, node.ino) {
                // Same name, new inode (save-by-replace, restore): the name keeps its ID.
                b.set_devino(o.id, node.dev, node.ino).map_err(db_error)?;
            }
            Ok(Response::Object(info(&o, Some(join(&components)), created)))
        }
        Request::AddPath {
            path,
            hint,
            type_code,
            creator,
            ..
        } => {
            let walked = reached(access, vol, walk_path(vol, access, path)?)?;
            if walked.components.is_empty() {
                let root = b.get(deskd_db::ROOT_ID).map_err(db_error)?;
                return Ok(Response::Object(info(&root, Some(Vec::new()), false)));
            }
            let (o, created) = add_path(
                b,
                &walked.components,
                &walked.nodes,
                *hint,
                *type_code,
                *creator,
            )?;
            Ok(Response::Object(info(
                &o,
                Some(join(&walked.components)),
                created,
            )))
        }
        Request::Rename {
            id,
            new_parent,
            new_name,
            replace,
            ..
        } => {
            refuse_ro()?;
            deskd_volume::check_name(new_name).map_err(volume_error)?;
            let object = b.get(*id).map_err(db_error)?;
            let old = components_of(b, *id, cache)?;
            let mut components = b.path_of(*new_parent).map_err(db_error)?;
            components.push(new_name.clone());
            let new = walk_names(vol, access, &components)?;
            do_rename(b, vol, access, &object, &old, new, *replace)
        }
        Request::RenamePath {
            from,
            to,
            replace,
            hint,
            ..
        } => {
            refuse_ro()?;
            let from_walk = walk_path(vol, access, from)?;
            // Where the peer may not see, its `from` names nothing: as for a path that does
            // not exist, the object at `to` is registered where it is.
            let hidden_from = from_walk.refused() && !access.is_trusted();
            if from_walk.refused() && !hidden_from {
                return Err(sight::refused_walk(access, vol, &from_walk));
            }
            let to_walk = walk_path(vol, access, to)?;
            if from_walk.components.is_empty() || to_walk.components.is_empty() {
                return Err(ErrorReply::new(
                    ErrorCode::PermissionDenied,
                    "the volume root cannot be renamed",
                ));
            }
            let object = if hidden_from {
                None
            } else {
                registered(b, &from_walk.components)?
            };
            match object {
                Some(object) => do_rename(
                    b,
                    vol,
                    access,
                    &object,
                    &from_walk.components,
                    to_walk,
                    *replace,
                ),
                None => {
                    // Never registered: register it where it is now.
                    let to_walk = reached(access, vol, to_walk)?;
                    let node = *to_walk.last().expect("a walk that reached its end");
                    let mut removed = Vec::new();
                    if let Some(existing) = registered(b, &to_walk.components)? {
                        if !same_object(&existing, node.dev, node.ino) {
                            if !*replace {
                                return Err(db_error(DbError::Exists {
                                    parent: existing.parent,
                                    name: String::from_utf8_lossy(&existing.name).into_owned(),
                                    existing: existing.id,
                                }));
                            }
                            removed = b.delete(existing.id, true).map_err(db_error)?;
                        }
                    }
                    add_path(b, &to_walk.components, &to_walk.nodes, *hint, None, None)?;
                    Ok(Response::Removed(removed))
                }
            }
        }
        Request::Delete { id, recursive, .. } => {
            refuse_ro()?;
            let object = b.get(*id).map_err(db_error)?;
            let old = components_of(b, *id, cache)?;
            verify_gone(vol, &object, &old)?;
            Ok(Response::Removed(
                b.delete(*id, *recursive).map_err(db_error)?,
            ))
        }
        Request::DeletePath {
            path, recursive, ..
        } => {
            refuse_ro()?;
            let walked = walk_path(vol, access, path)?;
            if walked.refused() {
                // Where the peer may not see, its path names nothing (and nothing is removed).
                if access.is_trusted() {
                    return Err(sight::refused_walk(access, vol, &walked));
                }
                return Ok(Response::Removed(Vec::new()));
            }
            if walked.components.is_empty() {
                return Err(ErrorReply::new(
                    ErrorCode::PermissionDenied,
                    "the volume root cannot be deleted",
                ));
            }
            match registered(b, &walked.components)? {
                None => Ok(Response::Removed(Vec::new())),
                Some(object) => {
                    verify_gone(vol, &object, &walked.components)?;
                    Ok(Response::Removed(
                        b.delete(object.id, *recursive).map_err(db_error)?,
                    ))
                }
            }
        }
        Request::SetInfo {
            id,
            type_code,
            creator,
            flags,
            ..
        } => {
            refuse_ro()?;
            let update = InfoUpdate {
                type_code: *type_code,
                creator: *creator,
                flags: *flags,
            };
            let o = b.set_info(*id, &update).map_err(db_error)?;
            Ok(Response::Object(info(&o, None, false)))
        }
        Request::ApplAdd {
            creator,
            app_id,
            tag,
            ..
        } => {
            refuse_ro()?;
            let record = deskd_db::ApplRecord {
                creator: *creator,
                app_id: *app_id,
                tag: *tag,
            };
            b.appl_add(&record).map_err(db_error)?;
            Ok(Response::Done)
        }
        Request::ApplRemove {
            creator, app_id, ..
        } => {
            refuse_ro()?;
            if b.appl_remove(*creator, *app_id).map_err(db_error)? {
                Ok(Response::Done)
            } else {
                Err(ErrorReply::new(
                    ErrorCode::NotFound,
                    format!("no APPL record for {app_id}"),
                ))
            }
        }
        Request::IconAdd {
            creator,
            type_code,
            itype,
            tag,
            bitmap,
            ..
        } => {
            refuse_ro()?;
            let icon = deskd_db::IconRecord {
                creator: *creator,
                type_code: *type_code,
                itype: *itype,
                tag: *tag,
                bitmap: bitmap.clone(),
            };
            b.icon_add(&icon).map_err(db_error)?;
            Ok(Response::Done)
        }
        Request::CommentSet { id, text, .. } => {
            refuse_ro()?;
            b.comment_set(*id, text).map_err(db_error)?;
            Ok(Response::Done)
        }
        Request::CommentRemove { id, .. } => {
            refuse_ro()?;
            b.comment_remove(*id).map_err(db_error)?;
            Ok(Response::Done)
        }
        other => Err(ErrorReply::new(
            ErrorCode::Internal,
            format!("not a write request: {other:?}"),
        )),
    }
}

/// Answer a read request from any connection; what names an object is answered only where
/// the peer could see that object itself ([`sight`]).
pub fn apply_read<R: Read>(
    db: &R,
    vol: &Volume,
    names: &NameIndex,
    request: &Request,
    access: &Access,
) -> Reply {
    let with_path = |o: &Object| -> Result<ObjectInfo, ErrorReply> {
        let path = join(&db.path_of(o.id).map_err(db_error)?);
        Ok(info(o, Some(path), false))
    };
    // The peer may do `mode` to the directory `dir` (refused as `unseen` when it may not
    // even see it).
    let require_dir = |dir: u32, mode: libc::c_int, what: &str| -> Result<(), ErrorReply> {
        let look = sight::look(
            db,
            vol,
            access,
            dir,
            sight::Ask {
                object: Some(mode),
                folder: None,
            },
        )?;
        sight::refuse_unless(
            look.object && look.named,
            &look,
            access,
            || vol.path_of(&db.path_of(dir).unwrap_or_default()),
            what,
        )
    };
    // Resolve and the like: the peer must see the object (list the folder that shows it).
    let require_visible = |id: u32| -> Result<(), ErrorReply> {
        if sight::look(db, vol, access, id, sight::Ask::default())?.seen {
            Ok(())
        } else {
            Err(sight::unseen())
        }
    };
    match request {
        Request::Lookup { parent, name, .. } => {
            // As stat(2): finding a name you know needs only search access to its folder. A
            // name in a folder the peer cannot search is an object it may not see, whatever
            // it may see of the folder itself.
            let look = sight::look(
                db,
                vol,
                access,
                *parent,
                sight::Ask {
                    object: Some(access::SEARCH),
                    folder: None,
                },
            )?;
            if !(look.object && look.named) {
                return Err(sight::unseen());
            }
            match db.lookup(*parent, name).map_err(db_error)? {
                Some(o) => Ok(Response::MaybeObject(Some(with_path(&o)?))),
                None => Ok(Response::MaybeObject(None)),
            }
        }
        Request::LookupPath { path, .. } => {
            // As stat(2) again: the walk as the peer must reach the folder of the last name;
            // a path it cannot walk is answered as one that names nothing.
            let walked = walk_path(vol, access, path)?;
            if walked.refused() {
                return Ok(Response::MaybeObject(None));
            }
            let names: Vec<&[u8]> = walked.components.iter().map(|c| c.as_slice()).collect();
            match db.id_of_path(&names).map_err(db_error)? {
                Some(id) => {
                    let o = db.get(id).map_err(db_error)?;
                    Ok(Response::MaybeObject(Some(info(
                        &o,
                        Some(join(&walked.components)),
                        false,
                    ))))
                }
                None => Ok(Response::MaybeObject(None)),
            }
        }
        Request::Resolve { id, .. } => {
            let o = db.get(*id).map_err(db_error)?;
            let components = db.path_of(o.id).map_err(db_error)?;
            if !sight::look_at(db, vol, access, &o, &components, sight::Ask::default())?.seen {
                return Err(sight::unseen());
            }
            Ok(Response::Object(info(&o, Some(join(&components)), false)))
        }
        Request::Children { dir, .. } => {
            require_dir(*dir, access::LIST, "list it")?;
            let children = db.children(*dir).map_err(db_error)?;
            Ok(Response::Objects(
                children.iter().map(|o| info(o, None, false)).collect(),
            ))
        }
        Request::Find {
            pattern,
            mode,
            limit,
            after_id,
            ..
        } => {
            let mode = match mode {
                deskd_proto::FindMode::Substring => deskd_db::FindMode::Substring,
                deskd_proto::FindMode::Prefix => deskd_db::FindMode::Prefix,
                deskd_proto::FindMode::Glob => deskd_db::FindMode::Glob,
                deskd_proto::FindMode::Exact => deskd_db::FindMode::Exact,
            };
            if mode == deskd_db::FindMode::Glob {
                if let Some(at) = deskd_db::names::unclosed_bracket(pattern) {
                    return Err(ErrorReply::new(
                        ErrorCode::BadRequest,
                        format!(
                            "glob {pattern:?}: the '[' at byte {at} has no closing ']' \
                             (a literal '[' is written [[])"
                        ),
                    ));
                }
            }
            let limit = (*limit).clamp(1, MAX_FIND_LIMIT);
            let mut query = deskd_db::FindQuery {
                pattern: pattern.clone(),
                mode,
                limit,
                after_id: *after_id,
            };
            // A page shorter than `limit` means "no more" to every client, so hits left out
            // (deskd's own files, objects the peer cannot see) are made up from further down.
            let mut out = Vec::new();
            // Hits share folders: each folder's path is looked up once per request.
            let mut folders: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
            loop {
                let hits = names.find(db, &query).map_err(db_error)?;
                let last_page = (hits.len() as u32) < limit;
                let mut candidates = Vec::with_capacity(hits.len());
                for o in hits {
                    query.after_id = o.id;
                    if deskd_volume::is_protected(&o.name) {
                        continue;
                    }
                    let components = if o.id == deskd_db::ROOT_ID {
                        Vec::new()
                    } else {
                        let folder = match folders.entry(o.parent) {
                            Entry::Occupied(e) => e.into_mut(),
                            Entry::Vacant(e) => e.insert(db.path_of(o.parent).map_err(db_error)?),
                        };
                        let mut components = folder.clone();
                        components.push(o.name.clone());
                        components
                    };
                    candidates.push((o, components));
                }
                let shown: Vec<bool> = if access.is_trusted() {
                    vec![true; candidates.len()]
                } else {
                    // The folders' own records (for their dev/ino), read before the change of
                    // identity; then one change of identity for the whole page.
                    let mut holders: HashMap<u32, Option<Object>> = HashMap::new();
                    for (o, c) in &candidates {
                        if !c.is_empty() {
                            if let Entry::Vacant(e) = holders.entry(o.parent) {
                                e.insert(Some(db.get(o.parent).map_err(db_error)?));
                            }
                        }
                    }
                    access
                        .wear(|| {
                            let mut seen: HashMap<u32, bool> = HashMap::new();
                            candidates
                                .iter()
                                .map(|(o, c)| {
                                    let holder = if c.is_empty() { u32::MAX } else { o.parent };
                                    *seen.entry(holder).or_insert_with(|| {
                                        let folder =
                                            holders.get(&o.parent).and_then(|f| f.as_ref());
                                        sight::look_as_peer(
                                            vol,
                                            access.viewer(),
                                            o,
                                            folder,
                                            c,
                                            sight::Ask::default(),
                                        )
                                        .seen
                                    })
                                })
                                .collect()
                        })
                        .unwrap_or_else(|| vec![false; candidates.len()])
                };
                for ((o, components), shown) in candidates.into_iter().zip(shown) {
                    if shown && (out.len() as u32) < limit {
                        out.push(info(&o, Some(join(&components)), false));
                    }
                }
                if out.len() as u32 >= limit || last_page {
                    break;
                }
            }
            Ok(Response::Objects(out))
        }
        Request::ApplGet { creator, .. } => {
            let mut apps = Vec::new();
            for r in db.appl_for(*creator).map_err(db_error)? {
                // An application the peer may not see is not named to it, not even by ID.
                let seen = access.is_trusted()
                    || sight::look(db, vol, access, r.app_id, sight::Ask::default())
                        .is_ok_and(|l| l.seen);
                if seen {
                    apps.push((r.app_id, r.tag));
                }
            }
            Ok(Response::Appl(apps))
        }
        Request::IconGet {
            creator,
            type_code,
            itype,
            ..
        } => Ok(Response::Icon(
            db.icon(*creator, *type_code, *itype)
                .map_err(db_error)?
                .map(|i| (i.tag, i.bitmap)),
        )),
        Request::IconList { creator, .. } => Ok(Response::Icons(
            db.icons_for(*creator)
                .map_err(db_error)?
                .into_iter()
                .map(|i| (i.type_code, i.itype, i.tag))
                .collect(),
        )),
        Request::CommentGet { id, .. } => {
            db.get(*id).map_err(db_error)?;
            require_visible(*id)?;
            Ok(Response::Comment(db.comment(*id).map_err(db_error)?))
        }
        other => Err(ErrorReply::new(
            ErrorCode::Internal,
            format!("not a read request: {other:?}"),
        )),
    }
}
