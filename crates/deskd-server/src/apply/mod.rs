//! Turning requests into desktop changes, after verifying every client claim against the file
//! system (DESIGN §5): the object exists at the new place with the recorded dev/ino, the old
//! name is gone. Every path is walked race-free as the peer ([`crate::walk`]) and what is
//! recorded is what the walk reached. Reads are answered here too, showing a peer only what it
//! may see ([`crate::sight`]).
//!
//! One handler per request kind, in a file per family (as Netatalk's `dbd_add.c`,
//! `dbd_lookup.c`, …): `register` (`Add`, `AddPath`; `moved` follows a move made outside
//! deskd), `rename`, `delete`, `lookup`
//! (`Lookup`, `LookupPath`, `Resolve`, `Children`), `find`, and `records` (type/creator,
//! APPL, icons, comments). [`apply_write`] and [`apply_read`] only dispatch; what handlers
//! share is in `paths` (walking and checking claims), `errors` (the replies for errors)
//! and `wire` (records as the protocol sends them). Two things are decided by the kind of
//! a write before it is dispatched: whether it may change folder paths (the batch's
//! [`DirCache`] is emptied) and whether a read-only volume refuses it (all but registration).

mod delete;
mod errors;
mod find;
mod lookup;
mod moved;
mod paths;
mod records;
mod register;
mod rename;
pub mod spending;
pub mod watched;
mod wire;

#[cfg(test)]
mod both_backends;
#[cfg(test)]
mod tests;

use deskd_db::{NameIndex, Read, WriteBatch};
use deskd_proto::{ErrorCode, ErrorReply, Request, Response};
use deskd_volume::Volume;

use crate::access::Access;
use crate::config::Replaced;

pub use paths::DirCache;

/// What a request gets back: its response, or the error the client is sent.
pub type Reply = Result<Response, ErrorReply>;

/// Upper bound for one `Find` page.
const MAX_FIND_LIMIT: u32 = 10_000;

/// The volume's settings a write obeys: whether it is read-only, and whether a replaced name
/// keeps its ID ([`Replaced`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    pub read_only: bool,
    pub replaced: Replaced,
}

/// What every write handler works in: the batch (one transaction for many requests, group
/// commit), the volume, the peer its paths are walked as, the batch's folder paths, and what
/// a replaced name keeps. Generic over the back end's batch: monomorphised for SQLite's
/// `Batch` the writer's hot path has no `dyn` call per row; `B = dyn WriteBatch` works too.
struct Writing<'a, B: ?Sized> {
    b: &'a mut B,
    vol: &'a Volume,
    access: &'a Access,
    cache: &'a mut DirCache,
    replaced: Replaced,
    /// The folders this batch's watched changes walked to, held ([`crate::folders`]): the
    /// watcher's renames only; empty for clients' requests.
    folders: crate::folders::Folders,
    /// Applying the watcher's changes, which the disk may have overtaken: a folder on the way
    /// whose record has another inode is refused ([`register::register_walked`]).
    watching: bool,
}

/// What every read handler works in: a read snapshot, the volume, its name index (for
/// `Find`), and the peer whose sight bounds the answer.
struct Reading<'a, R> {
    db: &'a R,
    vol: &'a Volume,
    names: &'a NameIndex,
    access: &'a Access,
    /// A PostgreSQL volume's rows and folder paths for `resolve` and `find`
    /// ([`crate::read_cache`]).
    read_cache: Option<&'a crate::read_cache::ReadCache>,
}

/// An `Add` of an object registered already, as [`apply_write`] would answer it, from a read
/// snapshot (no write transaction, no wait for the writer); `None` when the write path must
/// decide (anything but an unchanged registration, or not an `Add` with a device).
pub fn add_known<R: Read>(
    db: &R,
    vol: &Volume,
    request: &Request,
    access: &Access,
) -> Option<Reply> {
    match request {
        Request::Add {
            parent,
            name,
            dev,
            ino,
            ..
        } if *dev != 0 => register::add_known(db, vol, access, *parent, name, (*dev, *ino)),
        _ => None,
    }
}

/// Apply one write request inside the batch. Read-only volumes (`policy`) refuse changes but
/// still register objects (a client needs IDs to browse). Every path is walked race-free as
/// the peer (`access`), and what is recorded is what the walk reached.
pub fn apply_write<B: WriteBatch + ?Sized>(
    b: &mut B,
    vol: &Volume,
    policy: Policy,
    request: &Request,
    cache: &mut DirCache,
    access: &Access,
) -> Reply {
    let moves = moves_names(request);
    if moves {
        cache.clear();
    }
    let reply = apply_write_uncleared(b, vol, policy, request, cache, access);
    // Cleared after too: the request itself looks up the old path of what it moves or
    // deletes (the hostile review of stop 39), which a later add of this batch into a moved
    // folder must not walk.
    if moves {
        cache.clear();
    }
    reply
}

/// [`apply_write`] without the cache's clearing around requests that move names.
fn apply_write_uncleared<B: WriteBatch + ?Sized>(
    b: &mut B,
    vol: &Volume,
    policy: Policy,
    request: &Request,
    cache: &mut DirCache,
    access: &Access,
) -> Reply {
    if policy.read_only && changes_desktop(request) {
        return Err(ErrorReply::new(
            ErrorCode::ReadOnly,
            format!("{}: volume is read-only", vol.root().display()),
        ));
    }
    let w = &mut Writing {
        b,
        vol,
        access,
        cache,
        replaced: policy.replaced,
        folders: Default::default(),
        watching: false,
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
            carried,
            ..
        } => register::add(
            w,
            *parent,
            name,
            (*dev, *ino),
            register::Asked {
                hint: *hint,
                type_code: *type_code,
                creator: *creator,
                carried: *carried,
                registering: true,
                mirror_read: false,
            },
        ),
        Request::AddPath {
            path,
            hint,
            type_code,
            creator,
            carried,
            ..
        } => register::add_path(
            w,
            path,
            register::Asked {
                hint: *hint,
                type_code: *type_code,
                creator: *creator,
                carried: *carried,
                registering: true,
                mirror_read: false,
            },
        ),
        Request::Rename {
            id,
            new_parent,
            new_name,
            replace,
            ..
        } => rename::rename(w, *id, *new_parent, new_name, *replace),
        Request::RenamePath {
            from,
            to,
            replace,
            hint,
            ..
        } => rename::rename_path(w, from, to, *replace, *hint),
        Request::Delete { id, recursive, .. } => delete::delete(w, *id, *recursive),
        Request::DeletePath {
            path, recursive, ..
        } => delete::delete_path(w, path, *recursive),
        Request::SetInfo {
            id,
            type_code,
            creator,
            flags,
            ..
        } => records::set_info(w.b, *id, *type_code, *creator, *flags),
        Request::ApplAdd {
            creator,
            app_id,
            tag,
            ..
        } => records::appl_add(w.b, *creator, *app_id, *tag),
        Request::ApplRemove {
            creator, app_id, ..
        } => records::appl_remove(w.b, *creator, *app_id),
        Request::IconAdd {
            creator,
            type_code,
            itype,
            tag,
            bitmap,
            ..
        } => records::icon_add(w.b, *creator, *type_code, *itype, *tag, bitmap),
        Request::CommentSet { id, text, .. } => records::comment_set(w.b, *id, text),
        Request::CommentRemove { id, .. } => records::comment_remove(w.b, *id),
        other => Err(ErrorReply::new(
            ErrorCode::Internal,
            format!("not a write request: {other:?}"),
        )),
    }
}

/// Requests after which a folder's path may differ: the batch's [`DirCache`] is emptied first.
fn moves_names(request: &Request) -> bool {
    matches!(
        request,
        Request::Rename { .. }
            | Request::RenamePath { .. }
            | Request::Delete { .. }
            | Request::DeletePath { .. }
    )
}

/// Write requests a read-only volume refuses: all but registration (`Add`, `AddPath`), which
/// only records what is on disk.
fn changes_desktop(request: &Request) -> bool {
    request.is_write() && !matches!(request, Request::Add { .. } | Request::AddPath { .. })
}

/// Answer a read request from any connection; what names an object is answered only where
/// the peer could see that object itself ([`crate::sight`]).
#[cfg(test)]
pub fn apply_read<R: Read>(
    db: &R,
    vol: &Volume,
    names: &NameIndex,
    request: &Request,
    access: &Access,
) -> Reply {
    apply_read_cached(db, vol, names, None, request, access)
}

/// [`apply_read`], `find` going through a PostgreSQL volume's cache when there is one.
pub(crate) fn apply_read_cached<R: Read>(
    db: &R,
    vol: &Volume,
    names: &NameIndex,
    read_cache: Option<&crate::read_cache::ReadCache>,
    request: &Request,
    access: &Access,
) -> Reply {
    let r = &Reading {
        db,
        vol,
        names,
        access,
        read_cache,
    };
    match request {
        Request::Lookup { parent, name, .. } => lookup::lookup(r, *parent, name),
        Request::LookupPath { path, .. } => lookup::lookup_path(r, path),
        Request::Resolve { id, .. } => lookup::resolve(r, *id),
        Request::Children { dir, .. } => lookup::children(r, *dir),
        Request::Find {
            pattern,
            mode,
            limit,
            after_id,
            ..
        } => find::find(r, pattern, *mode, *limit, *after_id),
        Request::ApplGet { creator, .. } => records::appl_get(r, *creator),
        Request::IconGet {
            creator,
            type_code,
            itype,
            ..
        } => records::icon_get(r, *creator, *type_code, *itype),
        Request::IconList { creator, .. } => records::icon_list(r, *creator),
        Request::CommentGet { id, .. } => records::comment_get(r, *id),
        other => Err(ErrorReply::new(
            ErrorCode::Internal,
            format!("not a read request: {other:?}"),
        )),
    }
}
