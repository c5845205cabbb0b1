//! Records in the form the protocol sends them.

use deskd_db::Object;
use deskd_proto::ObjectInfo;

/// The wire form of an object, with its path when `path` is given.
pub(super) fn info(o: &Object, path: Option<Vec<u8>>, created: bool) -> ObjectInfo {
    ObjectInfo {
        id: o.id,
        parent: o.parent,
        name: o.name.clone(),
        kind: o.kind,
        type_code: o.type_code,
        creator: o.creator,
        flags: o.flags,
        path,
        created,
    }
}

/// Join path components with `/`.
pub(super) fn join(components: &[Vec<u8>]) -> Vec<u8> {
    components.join(&b'/')
}
