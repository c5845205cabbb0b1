//! The Finder's records: an object's type, creator and flags (`SetInfo`), the APPL records
//! that map a creator to applications, icons, and comments. These change no name and walk no
//! path; the only file-system question is whether the peer may see what a reply names.

use deskd_db::{ApplRecord, IconRecord, InfoUpdate, Kind, Read, WriteBatch};
use deskd_proto::{ErrorCode, ErrorReply, Response};

use super::errors::db_error;
use super::wire::info;
use super::{Reading, Reply};
use crate::sight;

/// `SetInfo`: change the type, creator or Finder flags of `id` (what is `None` stays).
pub(super) fn set_info<B: WriteBatch + ?Sized>(
    b: &mut B,
    id: u32,
    type_code: Option<[u8; 4]>,
    creator: Option<[u8; 4]>,
    flags: Option<u16>,
) -> Reply {
    let update = InfoUpdate {
        type_code,
        creator,
        flags,
    };
    let o = b.set_info(id, &update).map_err(db_error)?;
    Ok(Response::Object(info(&o, None, false)))
}

/// `ApplAdd`: record that application `app_id` opens documents of `creator`.
pub(super) fn appl_add<B: WriteBatch + ?Sized>(
    b: &mut B,
    creator: [u8; 4],
    app_id: u32,
    tag: u32,
) -> Reply {
    let record = ApplRecord {
        creator,
        app_id,
        tag,
    };
    b.appl_add(&record).map_err(db_error)?;
    Ok(Response::Done)
}

/// `ApplRemove`: forget an application of `creator`; not found when there was none.
pub(super) fn appl_remove<B: WriteBatch + ?Sized>(
    b: &mut B,
    creator: [u8; 4],
    app_id: u32,
) -> Reply {
    if b.appl_remove(creator, app_id).map_err(db_error)? {
        Ok(Response::Done)
    } else {
        Err(ErrorReply::new(
            ErrorCode::NotFound,
            format!("no APPL record for {app_id}"),
        ))
    }
}

/// `IconAdd`: store an icon bitmap for a creator, type and icon type.
pub(super) fn icon_add<B: WriteBatch + ?Sized>(
    b: &mut B,
    creator: [u8; 4],
    type_code: [u8; 4],
    itype: u8,
    tag: u32,
    bitmap: &[u8],
) -> Reply {
    let icon = IconRecord {
        creator,
        type_code,
        itype,
        tag,
        bitmap: bitmap.to_vec(),
    };
    b.icon_add(&icon).map_err(db_error)?;
    Ok(Response::Done)
}

/// `CommentSet`: the Finder comment of `id`.
pub(super) fn comment_set<B: WriteBatch + ?Sized>(b: &mut B, id: u32, text: &[u8]) -> Reply {
    b.comment_set(id, text).map_err(db_error)?;
    Ok(Response::Done)
}

/// `CommentRemove`: drop the Finder comment of `id`.
pub(super) fn comment_remove<B: WriteBatch + ?Sized>(b: &mut B, id: u32) -> Reply {
    b.comment_remove(id).map_err(db_error)?;
    Ok(Response::Done)
}

/// `ApplGet`: the applications recorded for `creator`, with their tags.
pub(super) fn appl_get<R: Read>(r: &Reading<'_, R>, creator: [u8; 4]) -> Reply {
    let mut apps = Vec::new();
    for record in r.db.appl_for(creator).map_err(db_error)? {
        // An application the peer may not see is not named to it, not even by ID.
        let seen = r.access.is_trusted()
            || sight::look(r.db, r.vol, r.access, record.app_id, sight::Ask::default())
                .is_ok_and(|l| l.seen);
        if seen {
            apps.push((record.app_id, record.tag));
        }
    }
    Ok(Response::Appl(apps))
}

/// `IconGet`: the icon of one creator, type and icon type, if stored.
pub(super) fn icon_get<R: Read>(
    r: &Reading<'_, R>,
    creator: [u8; 4],
    type_code: [u8; 4],
    itype: u8,
) -> Reply {
    Ok(Response::Icon(
        r.db.icon(creator, type_code, itype)
            .map_err(db_error)?
            .map(|i| (i.tag, i.bitmap)),
    ))
}

/// `IconList`: the icons stored for `creator` (type, icon type, tag; no bitmaps).
pub(super) fn icon_list<R: Read>(r: &Reading<'_, R>, creator: [u8; 4]) -> Reply {
    Ok(Response::Icons(
        r.db.icons_for(creator)
            .map_err(db_error)?
            .into_iter()
            .map(|i| (i.type_code, i.itype, i.tag))
            .collect(),
    ))
}

/// `CommentGet`: the Finder comment of `id`, if the peer may read the object itself (an
/// unknown ID is `NotFound` before anything is looked at on disk). The comment is free text
/// about the object, kept by the Mac in its resource data: as private as its contents, so a
/// `chmod 600` file's or a 0700 folder's comment is not shown to the others who see its name
/// (review F7). Refused as unseen where the peer may not see the object, else "permission
/// denied". A symlink (whose mode says nothing) gives its comment to whoever sees it.
pub(super) fn comment_get<R: Read>(r: &Reading<'_, R>, id: u32) -> Reply {
    let object = r.db.get(id).map_err(db_error)?;
    let ask = sight::Ask {
        object: Some(crate::access::READ),
        folder: None,
        sticky: false,
    };
    let look = sight::look(r.db, r.vol, r.access, id, ask)?;
    let readable = look.object || (object.kind == Kind::Symlink && look.seen);
    sight::refuse_unless(
        readable,
        &look,
        r.access,
        || r.vol.path_of(&r.db.path_of(id).unwrap_or_default()),
        "read it, which its comment needs",
    )?;
    Ok(Response::Comment(r.db.comment(id).map_err(db_error)?))
}
