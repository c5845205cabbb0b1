//! What the rebuild's unit tests share: walked objects and desktop rows built by hand, so each
//! test states only the fields it is about.

use deskd_db::{Kind, Object, ROOT_ID};

use crate::walk::{Entry, Rsrc};

/// A walked object with no resource file, mirror or Netatalk data, owned by root.
pub(crate) fn found(parent: u32, name: &str, kind: Kind, dev: u64, ino: u64) -> Entry {
    Entry {
        parent,
        name: name.as_bytes().to_vec(),
        kind,
        dev,
        ino,
        ctime: 0,
        uid: 0,
        others_write: false,
        rsrc: Rsrc::Missing,
        rsrc_uid: None,
        rsrc_dir: None,
        xattr_id: None,
        netatalk: None,
    }
}

/// The desktop row of a TEXT/ttxt file `f` in the root with ID `id` (dev 1, ino 3).
pub(crate) fn file_row(id: u32) -> Object {
    Object {
        id,
        parent: ROOT_ID,
        name: b"f".to_vec(),
        kind: Kind::File,
        dev: 1,
        ino: 3,
        type_code: *b"TEXT",
        creator: *b"ttxt",
        flags: 0,
        ctime: 100,
    }
}
