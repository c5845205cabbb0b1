//! Turning requests into desktop changes, after verifying every client claim against the file
//! system (DESIGN §5): the object exists at the new place with the recorded dev/ino, the old
//! name is gone. Reads are answered here too.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use deskd_db::{Batch, DbError, InfoUpdate, Kind, NameIndex, NewObject, Object, Read};
use deskd_proto::{ErrorCode, ErrorReply, ObjectInfo, Request, Response};
use deskd_volume::{Volume, VolumeError};

use crate::access::{self, Access};

pub type Reply = Result<Response, ErrorReply>;

const UNIX_TYPE: [u8; 4] = *b"UNIX";
const UNKN_CREATOR: [u8; 4] = *b"UNKN";
/// Upper bound for one `Find` page.
pub const MAX_FIND_LIMIT: u32 = 10_000;

pub fn db_error(e: DbError) -> ErrorReply {
    let code = match &e {
        DbError::NoSuchId(_) | DbError::NoSuchName { .. } => ErrorCode::NotFound,
        DbError::Exists { .. } => ErrorCode::Exists,
        DbError::NotADirectory(_) => ErrorCode::NotADirectory,
        DbError::NotEmpty(_) => ErrorCode::NotEmpty,
        DbError::InvalidName(..) => ErrorCode::InvalidName,
        DbError::IntoItself(_) => ErrorCode::IntoItself,
        DbError::Root(_) => ErrorCode::PermissionDenied,
        DbError::IdSpaceExhausted => ErrorCode::IdSpaceExhausted,
        e if e.is_disk_full() => ErrorCode::DiskFull,
        DbError::Sqlite(rusqlite_err) if rusqlite_err.to_string().contains("locked") => {
            ErrorCode::Busy
        }
        _ => ErrorCode::Internal,
    };
    ErrorReply::new(code, e.to_string())
}

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

/// What `lstat` says about a path: (dev, ino, kind, ctime), or `None` when it does not exist.
fn stat(path: &Path) -> Option<(u64, u64, Kind, i64)> {
    let m = std::fs::symlink_metadata(path).ok()?;
    let kind = if m.file_type().is_dir() {
        Kind::Dir
    } else if m.file_type().is_symlink() {
        Kind::Symlink
    } else {
        Kind::File
    };
    Some((m.dev(), m.ino(), kind, m.ctime()))
}

fn same_object(o: &Object, dev: u64, ino: u64) -> bool {
    (o.dev == 0 && o.ino == 0) || (o.dev == dev && o.ino == ino)
}

/// Directory paths already resolved in this batch (by ID). Requests that rename or delete
/// clear it, so an entry is never stale.
#[derive(Default)]
pub struct DirCache(HashMap<u32, (Vec<u8>, PathBuf)>);

/// The physical path of a registered object, checked to lie inside the volume.
fn object_path<R: Read>(
    db: &R,
    vol: &Volume,
    id: u32,
    cache: &mut DirCache,
) -> Result<(Vec<u8>, PathBuf), ErrorReply> {
    if let Some(hit) = cache.0.get(&id) {
        return Ok(hit.clone());
    }
    let rel = join(&db.path_of(id).map_err(db_error)?);
    let resolved = vol.resolve_relative(&rel).map_err(volume_error)?;
    cache.0.insert(id, (rel.clone(), resolved.path.clone()));
    Ok((rel, resolved.path))
}

/// Register the object at `components` (and every unregistered directory above it), reading
/// what it is from the file system. Returns the final object and whether it was created.
fn add_path(
    b: &mut Batch<'_>,
    vol: &Volume,
    components: &[Vec<u8>],
    hint: Option<u32>,
    type_code: Option<[u8; 4]>,
    creator: Option<[u8; 4]>,
) -> Result<(Object, bool), ErrorReply> {
    let mut current = b.get(deskd_db::ROOT_ID).map_err(db_error)?;
    let mut created = false;
    let mut path = vol.root().to_path_buf();
    for (i, name) in components.iter().enumerate() {
        let last = i + 1 == components.len();
        path.push(std::ffi::OsStr::from_bytes(name));
        let existing = b.lookup(current.id, name).map_err(db_error)?;
        if let Some(dir) = existing.as_ref().filter(|_| !last) {
            // A registered directory on the way: the resolver has just checked it on disk.
            current = dir.clone();
            created = false;
            continue;
        }
        let Some((dev, ino, kind, ctime)) = stat(&path) else {
            return Err(claim(format!(
                "{}: no such file or directory on disk",
                path.display()
            )));
        };
        if !last && kind != Kind::Dir {
            return Err(ErrorReply::new(
                ErrorCode::NotADirectory,
                format!("{}: not a directory", path.display()),
            ));
        }
        if let Some(mut object) = existing {
            if (object.dev, object.ino) != (dev, ino) {
                // Same name, new inode (save-by-replace, restore): the name keeps its ID.
                b.set_devino(object.id, dev, ino).map_err(db_error)?;
                (object.dev, object.ino) = (dev, ino);
            }
            current = object;
            created = false;
            continue;
        }
        let (default_type, default_creator) = if kind == Kind::File {
            (UNIX_TYPE, UNKN_CREATOR)
        } else {
            ([0; 4], [0; 4])
        };
        let new = NewObject {
            parent: current.id,
            name: name.clone(),
            kind,
            dev,
            ino,
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
            ctime,
            hint: if last { hint } else { None },
        };
        current = b.add(&new).map_err(db_error)?.0;
        created = true;
    }
    Ok((current, created))
}

pub fn resolve_components(vol: &Volume, rel: &[u8]) -> Result<Vec<Vec<u8>>, ErrorReply> {
    let r = vol.resolve_relative(rel).map_err(volume_error)?;
    Ok(r.components.iter().map(|c| c.as_bytes().to_vec()).collect())
}

fn registered(b: &Batch<'_>, components: &[Vec<u8>]) -> Result<Option<Object>, ErrorReply> {
    let names: Vec<&[u8]> = components.iter().map(|c| c.as_slice()).collect();
    match b.id_of_path(&names).map_err(db_error)? {
        Some(id) => Ok(Some(b.get(id).map_err(db_error)?)),
        None => Ok(None),
    }
}

/// Verify that `object` is no longer at `old_path`.
fn verify_gone(object: &Object, old_path: &Path) -> Result<(), ErrorReply> {
    if let Some((dev, ino, _, _)) = stat(old_path) {
        if object.dev != 0 && same_object(object, dev, ino) {
            return Err(claim(format!(
                "{}: still exists on disk; do the operation before telling deskd",
                old_path.display()
            )));
        }
    }
    Ok(())
}

/// Verify that `object` is now at `new_path`.
fn verify_arrived(object: &Object, new_path: &Path) -> Result<(u64, u64), ErrorReply> {
    match stat(new_path) {
        None => Err(claim(format!(
            "{}: no such file or directory on disk",
            new_path.display()
        ))),
        Some((dev, ino, _, _)) if !same_object(object, dev, ino) => Err(claim(format!(
            "{}: is not the object with ID {} (different inode)",
            new_path.display(),
            object.id
        ))),
        Some((dev, ino, _, _)) => Ok((dev, ino)),
    }
}

fn do_rename(
    b: &mut Batch<'_>,
    vol: &Volume,
    object: &Object,
    old_path: &Path,
    new_components: &[Vec<u8>],
    replace: bool,
) -> Reply {
    let (new_name, parent_components) = new_components.split_last().ok_or_else(|| {
        ErrorReply::new(
            ErrorCode::PermissionDenied,
            "cannot rename onto the volume root",
        )
    })?;
    let new_path = vol.path_of(new_components);
    verify_gone(object, old_path)?;
    let (dev, ino) = verify_arrived(object, &new_path)?;
    let (parent, _) = add_path(b, vol, parent_components, None, None, None)?;
    let removed = b
        .rename(object.id, parent.id, new_name, replace)
        .map_err(db_error)?;
    if object.dev == 0 && object.ino == 0 {
        b.set_devino(object.id, dev, ino).map_err(db_error)?;
    }
    Ok(Response::Removed(removed))
}

/// Apply one write request inside the batch. `read_only` volumes refuse changes but still
/// register objects (a client needs IDs to browse).
pub fn apply_write(
    b: &mut Batch<'_>,
    vol: &Volume,
    read_only: bool,
    request: &Request,
    cache: &mut DirCache,
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
            let (parent_rel, parent_path) = object_path(b, vol, *parent, cache)?;
            let path = parent_path.join(std::ffi::OsStr::from_bytes(name));
            let Some((sdev, sino, kind, ctime)) = stat(&path) else {
                return Err(claim(format!(
                    "{}: no such file or directory on disk",
                    path.display()
                )));
            };
            if (sdev, sino) != (*dev, *ino) {
                return Err(claim(format!(
                    "{}: dev/ino {sdev}/{sino} on disk, client said {dev}/{ino}",
                    path.display()
                )));
            }
            let file = kind == Kind::File;
            let new = NewObject {
                parent: *parent,
                name: name.clone(),
                kind,
                dev: sdev,
                ino: sino,
                type_code: type_code.unwrap_or(if file { UNIX_TYPE } else { [0; 4] }),
                creator: creator.unwrap_or(if file { UNKN_CREATOR } else { [0; 4] }),
                flags: 0,
                ctime,
                hint: *hint,
            };
            let (o, created) = b.add(&new).map_err(db_error)?;
            if !created && (o.dev, o.ino) != (sdev, sino) {
                // Same name, new inode (save-by-replace, restore): the name keeps its ID.
                b.set_devino(o.id, sdev, sino).map_err(db_error)?;
            }
            let mut rel = parent_rel;
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name);
            Ok(Response::Object(info(&o, Some(rel), created)))
        }
        Request::AddPath {
            path,
            hint,
            type_code,
            creator,
            ..
        } => {
            let components = resolve_components(vol, path)?;
            if components.is_empty() {
                let root = b.get(deskd_db::ROOT_ID).map_err(db_error)?;
                return Ok(Response::Object(info(&root, Some(Vec::new()), false)));
            }
            let (o, created) = add_path(b, vol, &components, *hint, *type_code, *creator)?;
            Ok(Response::Object(info(&o, Some(join(&components)), created)))
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
            let (_, old_path) = object_path(b, vol, *id, cache)?;
            let mut components = b.path_of(*new_parent).map_err(db_error)?;
            components.push(new_name.clone());
            do_rename(b, vol, &object, &old_path, &components, *replace)
        }
        Request::RenamePath {
            from,
            to,
            replace,
            hint,
            ..
        } => {
            refuse_ro()?;
            let from_c = resolve_components(vol, from)?;
            let to_c = resolve_components(vol, to)?;
            if from_c.is_empty() || to_c.is_empty() {
                return Err(ErrorReply::new(
                    ErrorCode::PermissionDenied,
                    "the volume root cannot be renamed",
                ));
            }
            match registered(b, &from_c)? {
                Some(object) => {
                    let old_path = vol.path_of(&from_c);
                    do_rename(b, vol, &object, &old_path, &to_c, *replace)
                }
                None => {
                    // Never registered: register it where it is now.
                    let mut removed = Vec::new();
                    if let Some(existing) = registered(b, &to_c)? {
                        if let Some((dev, ino, _, _)) = stat(&vol.path_of(&to_c)) {
                            if !same_object(&existing, dev, ino) {
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
                    }
                    add_path(b, vol, &to_c, *hint, None, None)?;
                    Ok(Response::Removed(removed))
                }
            }
        }
        Request::Delete { id, recursive, .. } => {
            refuse_ro()?;
            let object = b.get(*id).map_err(db_error)?;
            let (_, path) = object_path(b, vol, *id, cache)?;
            verify_gone(&object, &path)?;
            Ok(Response::Removed(
                b.delete(*id, *recursive).map_err(db_error)?,
            ))
        }
        Request::DeletePath {
            path, recursive, ..
        } => {
            refuse_ro()?;
            let components = resolve_components(vol, path)?;
            if components.is_empty() {
                return Err(ErrorReply::new(
                    ErrorCode::PermissionDenied,
                    "the volume root cannot be deleted",
                ));
            }
            match registered(b, &components)? {
                None => Ok(Response::Removed(Vec::new())),
                Some(object) => {
                    verify_gone(&object, &vol.path_of(&components))?;
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

/// The folder whose listing shows the object at `components`, and the access that listing
/// takes: its parent, read and searched; the root shows itself to whoever can search it.
fn shown_by(vol: &Volume, components: &[Vec<u8>]) -> (PathBuf, libc::c_int) {
    match components.split_last() {
        None => (vol.root().to_path_buf(), access::SEARCH),
        Some((_, parent)) => (vol.path_of(parent), access::LIST),
    }
}

/// Ok when the connection's peer may do `mode` to `path` (see [`access`]).
pub fn require(
    access: &Access,
    path: &Path,
    mode: libc::c_int,
    what: &str,
) -> Result<(), ErrorReply> {
    if access.is_trusted() || access.check(|may| may(path, mode)) {
        Ok(())
    } else {
        Err(ErrorReply::new(
            ErrorCode::PermissionDenied,
            access.refusal(path, what),
        ))
    }
}

/// Answer a read request from any connection; what names an object is answered only where
/// the peer could see that object itself (`access`).
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
    // The peer may do `mode` to the directory `dir` (its path looked up only when checked).
    let require_dir = |dir: u32, mode: libc::c_int, what: &str| -> Result<(), ErrorReply> {
        if access.is_trusted() {
            return Ok(());
        }
        let folder = vol.path_of(&db.path_of(dir).map_err(db_error)?);
        require(access, &folder, mode, what)
    };
    // Resolve and the like: the peer must be able to list the folder that shows the object.
    let require_visible = |id: u32| -> Result<(), ErrorReply> {
        if access.is_trusted() {
            return Ok(());
        }
        let (folder, mode) = shown_by(vol, &db.path_of(id).map_err(db_error)?);
        require(access, &folder, mode, "list the folder holding it")
    };
    match request {
        Request::Lookup { parent, name, .. } => {
            // As stat(2): finding a name you know needs only search access to its folder.
            require_dir(*parent, access::SEARCH, "search it")?;
            match db.lookup(*parent, name).map_err(db_error)? {
                Some(o) => Ok(Response::MaybeObject(Some(with_path(&o)?))),
                None => Ok(Response::MaybeObject(None)),
            }
        }
        Request::LookupPath { path, .. } => {
            let components = resolve_components(vol, path)?;
            if let Some((_, parent)) = components.split_last() {
                require(access, &vol.path_of(parent), access::SEARCH, "search it")?;
            }
            let names: Vec<&[u8]> = components.iter().map(|c| c.as_slice()).collect();
            match db.id_of_path(&names).map_err(db_error)? {
                Some(id) => {
                    let o = db.get(id).map_err(db_error)?;
                    Ok(Response::MaybeObject(Some(info(
                        &o,
                        Some(join(&components)),
                        false,
                    ))))
                }
                None => Ok(Response::MaybeObject(None)),
            }
        }
        Request::Resolve { id, .. } => {
            let o = db.get(*id).map_err(db_error)?;
            require_visible(o.id)?;
            Ok(Response::Object(with_path(&o)?))
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
                    // One change of identity for the whole page.
                    access.check(|may| {
                        candidates
                            .iter()
                            .map(|(_, c)| {
                                let (folder, mode) = shown_by(vol, c);
                                may(&folder, mode)
                            })
                            .collect()
                    })
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
        Request::ApplGet { creator, .. } => Ok(Response::Appl(
            db.appl_for(*creator)
                .map_err(db_error)?
                .into_iter()
                .map(|r| (r.app_id, r.tag))
                .collect(),
        )),
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
