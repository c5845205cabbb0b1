//! What a failed request tells the client: an [`ErrorCode`] it can act on (try again, the name
//! exists, the claim is wrong) and a message for people. Volume errors and rejected claims are
//! made here; database errors in [`crate::db_reply`], which the writer, [`crate::sight`] and
//! the volume's status use too (re-exported here for the handlers). So every handler answers
//! the same failure the same way.

use deskd_db::Object;
use deskd_proto::{ErrorCode, ErrorReply};
use deskd_volume::VolumeError;

use super::wire::join;
use crate::walk::Node;

pub(super) use crate::db_reply::db_error;

/// The reply for a volume error (a path that leaves the volume, a name deskd keeps for itself).
pub(super) fn volume_error(e: VolumeError) -> ErrorReply {
    let code = match &e {
        VolumeError::Escape(_) => ErrorCode::Escape,
        VolumeError::Protected(_) => ErrorCode::Protected,
        VolumeError::InvalidName(..) => ErrorCode::InvalidName,
        _ => ErrorCode::Internal,
    };
    ErrorReply::new(code, e.to_string())
}

/// A client's claim about the file system that the file system contradicts (DESIGN §5).
pub(super) fn claim(message: String) -> ErrorReply {
    ErrorReply::new(ErrorCode::ClaimRejected, message)
}

/// The refusal to record a name whose object on disk is of another kind than its record.
/// A watched change whose walk went through a folder the desktop records at that place with
/// another inode: the disk has moved on (a folder moved away and another put in its place
/// before the batch was applied), and what the walk found there is not in the recorded folder.
pub(super) fn stale_folder(components: &[Vec<u8>], recorded: &Object) -> ErrorReply {
    claim(format!(
        "{}: the folder there is not the one recorded (ID {}): moved since, not applied yet",
        String::from_utf8_lossy(&join(components)),
        recorded.id
    ))
}

pub(super) fn kind_changed(components: &[Vec<u8>], recorded: &Object, node: &Node) -> ErrorReply {
    claim(format!(
        "{}: is a {} on disk, recorded as a {} (ID {}); tell deskd of the removal first",
        String::from_utf8_lossy(&join(components)),
        node.kind.as_str(),
        recorded.kind.as_str(),
        recorded.id
    ))
}
