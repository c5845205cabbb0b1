//! Renames and moves the client has already done on disk: `Rename` (by ID, to a folder and a
//! name) and `RenamePath` (by paths). deskd records a move only after seeing it: the object is
//! gone from the old place and is, with its recorded dev/ino, at the new one.

use deskd_db::{DbError, Object, WriteBatch};
use deskd_proto::{ErrorCode, ErrorReply, Response};

use super::errors::{db_error, volume_error};
use super::paths::{
    reached, registered, same_object, verify_arrived, verify_gone, walk_names, walk_path,
};
use super::register::{register_walked, Asked};
use super::{Reply, Writing};
use crate::sight;
use crate::walk::Walked;

/// `Rename`: the object `id` is now `new_name` in the folder `new_parent`.
pub(super) fn rename<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    id: u32,
    new_parent: u32,
    new_name: &[u8],
    replace: bool,
) -> Reply {
    deskd_volume::check_name(new_name).map_err(volume_error)?;
    let object = w.b.get(id).map_err(db_error)?;
    let old = w.cache.components_of(w.b, id)?;
    let mut components = w.b.path_of(new_parent).map_err(db_error)?;
    components.push(new_name.to_vec());
    let new = walk_names(w.vol, w.access, &components)?;
    move_verified(w, &object, &old, new, replace)
}

/// `RenamePath`: the object at `from` is now at `to`. An object never registered is registered
/// at `to` (keeping `hint` if free), as is one at a `from` the peer may not see: to it, such a
/// `from` names nothing.
pub(super) fn rename_path<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    from: &[u8],
    to: &[u8],
    replace: bool,
    hint: Option<u32>,
) -> Reply {
    let from_walk = walk_path(w.vol, w.access, from)?;
    let hidden_from = from_walk.refused() && !w.access.is_trusted();
    if from_walk.refused() && !hidden_from {
        return Err(sight::refused_walk(w.access, w.vol, &from_walk));
    }
    let to_walk = walk_path(w.vol, w.access, to)?;
    if from_walk.components.is_empty() || to_walk.components.is_empty() {
        return Err(ErrorReply::new(
            ErrorCode::PermissionDenied,
            "the volume root cannot be renamed",
        ));
    }
    let object = if hidden_from {
        None
    } else {
        registered(w.b, &from_walk.components)?
    };
    match object {
        Some(object) => move_verified(w, &object, &from_walk.components, to_walk, replace),
        None => register_in_place(w, to_walk, replace, hint),
    }
}

/// The end of a `RenamePath` whose `from` names no record: register the object where it is
/// now, replacing (with `replace`) a record of another object at that name.
fn register_in_place<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
    to_walk: Walked,
    replace: bool,
    hint: Option<u32>,
) -> Reply {
    let to_walk = reached(w.access, w.vol, to_walk)?;
    let node = *to_walk.last().expect("a walk that reached its end");
    let mut removed = Vec::new();
    if let Some(existing) = registered(w.b, &to_walk.components)? {
        if !same_object(&existing, node.dev, node.ino) {
            if !replace {
                return Err(db_error(DbError::Exists {
                    parent: existing.parent,
                    name: String::from_utf8_lossy(&existing.name).into_owned(),
                    existing: existing.id,
                }));
            }
            removed = w.b.delete(existing.id, true).map_err(db_error)?;
        }
    }
    let asked = Asked {
        hint,
        ..Asked::default()
    }
    .registering();
    register_walked(w, &to_walk.components, &to_walk.nodes, asked)?;
    Ok(Response::Removed(removed))
}

/// Record that `object` moved from `old` to the end of `new`, once the disk shows it: gone
/// from `old`, and at `new` with its own dev/ino. Folders above `new` not yet registered are
/// registered on the way. Returns the records a `replace` removed.
fn move_verified<B: WriteBatch + ?Sized>(
    w: &mut Writing<'_, B>,
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
    verify_gone(w.vol, object, old)?;
    let new = verify_arrived(w.access, w.vol, object, new)?;
    let (new_name, parent_components) = new.components.split_last().expect("not the root");
    let node = *new.last().expect("a walk that reached its end");
    let (parent, _) = register_walked(
        w,
        parent_components,
        &new.nodes[..parent_components.len()],
        Asked::default(),
    )?;
    let removed =
        w.b.rename(object.id, parent.id, new_name, replace)
            .map_err(db_error)?;
    if object.dev == 0 && object.ino == 0 {
        w.b.set_devino(object.id, node.dev, node.ino, node.ctime)
            .map_err(db_error)?;
    }
    Ok(Response::Removed(removed))
}
