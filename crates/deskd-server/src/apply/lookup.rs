//! Reads that name objects: `Lookup`, `LookupPath`, `Resolve`, `Children`. Each answers only
//! what the peer could find out itself with `stat(2)` or `ls` ([`crate::sight`]), and nothing
//! is registered.

use deskd_db::{Object, Read};
use deskd_proto::{ErrorReply, ObjectInfo, Response};

use super::errors::db_error;
use super::paths::walk_path;
use super::wire::{info, join};
use super::{Reading, Reply};
use crate::access;
use crate::sight;

/// `Lookup`: the record `name` in the folder `parent`.
pub(super) fn lookup<R: Read>(r: &Reading<'_, R>, parent: u32, name: &[u8]) -> Reply {
    // As stat(2): finding a name you know needs only search access to its folder. A name in a
    // folder the peer cannot search is an object it may not see, whatever it may see of the
    // folder itself.
    let look = sight::look(
        r.db,
        r.vol,
        r.access,
        parent,
        sight::Ask {
            object: Some(access::SEARCH),
            folder: None,
            sticky: false,
        },
    )?;
    if !(look.object && look.named) {
        return Err(sight::unseen());
    }
    match r.db.lookup(parent, name).map_err(db_error)? {
        Some(o) => Ok(Response::MaybeObject(Some(with_path(r.db, &o)?))),
        None => Ok(Response::MaybeObject(None)),
    }
}

/// An object's wire form with its path read from the desktop.
fn with_path<R: Read>(db: &R, o: &Object) -> Result<ObjectInfo, ErrorReply> {
    let path = join(&db.path_of(o.id).map_err(db_error)?);
    Ok(info(o, Some(path), false))
}

/// `LookupPath`: the record at `path`.
pub(super) fn lookup_path<R: Read>(r: &Reading<'_, R>, path: &[u8]) -> Reply {
    // As stat(2) again: the walk as the peer must reach the folder of the last name; a path it
    // cannot walk is answered as one that names nothing.
    let walked = walk_path(r.vol, r.access, path)?;
    if walked.refused() {
        return Ok(Response::MaybeObject(None));
    }
    let names: Vec<&[u8]> = walked.components.iter().map(|c| c.as_slice()).collect();
    match r.db.id_of_path(&names).map_err(db_error)? {
        Some(id) => {
            let o = r.db.get(id).map_err(db_error)?;
            Ok(Response::MaybeObject(Some(info(
                &o,
                Some(join(&walked.components)),
                false,
            ))))
        }
        None => Ok(Response::MaybeObject(None)),
    }
}

/// `Resolve`: the record `id` with its path, if the peer may see the object.
/// On a PostgreSQL volume through its cache: a held row makes no round trip.
pub(super) fn resolve<R: Read>(r: &Reading<'_, R>, id: u32) -> Reply {
    // Whether the peer sees an answer: the walk as the peer, with the folder's record (its
    // dev/ino) read as `look_at` reads it, or held.
    let seen = |o: &Object, components: &[Vec<u8>]| -> Result<bool, ErrorReply> {
        let Some(cache) = r.read_cache else {
            let look = sight::look_at(r.db, r.vol, r.access, o, components, Default::default());
            return Ok(look?.seen);
        };
        if r.access.is_trusted() {
            return Ok(true);
        }
        let folder = match components.is_empty() {
            true => None,
            false => Some(cache.get(r.db, o.parent).map_err(db_error)?),
        };
        Ok(sight::look_at_with(
            r.vol,
            r.access,
            o,
            folder.as_ref(),
            components,
            sight::Ask::default(),
        )
        .seen)
    };
    let (o, components) = match r.read_cache {
        None => r.db.get_with_path(id).map_err(db_error)?,
        Some(cache) => {
            let (held, generation) = cache.held_with_path(id);
            if let Some((o, components)) = held {
                // Sight first, then the disk: a hidden object's refusal must not depend on
                // whether it is still where it was (the disk check's round trip would tell:
                // hostile review of stop 41, finding 3). The held answer is the database's
                // but for the follower's lag.
                if !seen(&o, &components)? {
                    cache.hidden_hit();
                    return Err(sight::unseen());
                }
                if cache.on_disk(r.vol.root(), &o, &components) {
                    return Ok(Response::Object(info(&o, Some(join(&components)), false)));
                }
            }
            cache
                .read_with_path(r.db, id, generation)
                .map_err(db_error)?
        }
    };
    if !seen(&o, &components)? {
        return Err(sight::unseen());
    }
    Ok(Response::Object(info(&o, Some(join(&components)), false)))
}

/// `Children`: the registered objects in the folder `dir`, if the peer may list it.
pub(super) fn children<R: Read>(r: &Reading<'_, R>, dir: u32) -> Reply {
    require_dir(r, dir, access::LIST, "list it")?;
    let children = r.db.children(dir).map_err(db_error)?;
    Ok(Response::Objects(
        children.iter().map(|o| info(o, None, false)).collect(),
    ))
}

/// The peer may do `mode` to the directory `dir` (refused as [`sight::unseen`] when it may not
/// even see it; `what` names the refused act in the error).
fn require_dir<R: Read>(
    r: &Reading<'_, R>,
    dir: u32,
    mode: libc::c_int,
    what: &str,
) -> Result<(), ErrorReply> {
    let look = sight::look(
        r.db,
        r.vol,
        r.access,
        dir,
        sight::Ask {
            object: Some(mode),
            folder: None,
            sticky: false,
        },
    )?;
    sight::refuse_unless(
        look.object && look.named,
        &look,
        r.access,
        || r.vol.path_of(&r.db.path_of(dir).unwrap_or_default()),
        what,
    )
}
