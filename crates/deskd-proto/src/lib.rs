//! The deskd wire protocol.
//!
//! A connection starts with a handshake: the client sends the 8 bytes
//! `"DSKD" ++ u16 version ++ u16 flags` (big-endian); the server answers `"DSKD" ++ u16 version
//! ++ u16 status` where status 0 accepts and 1 refuses (unsupported version; the server closes);
//! 4 and 5 refuse a connection over the connection limits ([`transport`]).
//! Over TCP the server first challenges the client to prove it holds the shared token
//! ([`transport`]).
//!
//! After that, both sides send frames: a big-endian `u32` length (at most [`MAX_FRAME`] for a
//! request, [`MAX_REPLY_FRAME`] for a reply) then a [postcard]-encoded body: [`RequestFrame`] from the client, [`ReplyFrame`] from the server.
//! Every request carries an id chosen by the client; replies carry the same id and may arrive in
//! any order, so a client can pipeline. Every error is an [`ErrorCode`] plus a human message.
//! `docs/protocol.md` documents the format byte by byte.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod deadline;
pub mod ratelimit;
pub mod spin;
pub mod transport;

use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use transport::{
    client_hello, parse_hello, parse_server_hello, server_hello, Endpoint, Stream,
};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 3;
/// Handshake magic.
pub const MAGIC: [u8; 4] = *b"DSKD";
/// The largest request frame body the server accepts, in bytes: what any local process may
/// make the server read and hold.
pub const MAX_FRAME: u32 = 1 << 20;
/// The largest reply frame body, in bytes. Replies come from the trusted server and can be big
/// (the entries of a directory of a million files); a reply that would be larger still is
/// replaced by a `FrameTooLarge` error, never dropped.
pub const MAX_REPLY_FRAME: u32 = 256 << 20;
/// The longest Finder comment a `CommentSet` may store, in bytes. AFP's FPAddComment carries at
/// most 199 and a resource file holds that much; deskd keeps a longer one whole in the desktop
/// (docs/dt.md), up to this bound, so that no peer can grow the root-owned desktop, which user
/// quotas do not limit, by a megabyte per request.
pub const MAX_COMMENT: usize = 1024;
/// The largest icon bitmap an `IconAdd` may store, in bytes: the most AFP's FPAddIcon (a 16-bit
/// size) and Netatalk's `.icon` records can carry, far above every classic Finder icon kind
/// (`ICN#` 256, `icl8` 1024, `ich8` 2304 bytes).
pub const MAX_ICON_BITMAP: usize = u16::MAX as usize;

/// Errors of framing and encoding.
///
/// The causes (`io::Error` aside) are part of the message and deliberately not a `source`:
/// printed with anyhow's `{:#}` (as dt and deskd do) a source would be repeated after it.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The connection failed; the client turns timeouts and closed sockets into its own
    /// errors, so they can be told apart from other failures.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// A frame's length prefix is over the limit: refused before its body is read, so a peer
    /// cannot make the other side allocate at will.
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    FrameTooLarge {
        /// The length the prefix announced (or the encoded length, when sending).
        len: u32,
        /// The limit: [`MAX_FRAME`] for requests, [`MAX_REPLY_FRAME`] for replies.
        limit: u32,
    },
    /// A body postcard cannot encode or decode (a peer speaking another shape, a truncated
    /// frame).
    #[error("malformed message: {0}")]
    Malformed(postcard::Error),
    /// The peer's hello or status is not the deskd protocol's; the text says what came.
    #[error("bad handshake: {0}")]
    Handshake(String),
    /// The system's random source failed, so the server could not make a TCP challenge.
    #[error("bad handshake: no random challenge: {0}")]
    Random(getrandom::Error),
    /// The two sides speak different protocol versions; the server closes.
    #[error("server speaks protocol {server}, this client speaks {client}")]
    VersionMismatch {
        /// The server's version.
        server: u16,
        /// The client's version.
        client: u16,
    },
    /// The TCP token check failed or could not be done (no token, wrong answer); the text
    /// says what to give.
    #[error("authentication: {0}")]
    Auth(String),
    /// The server turned the connection away (a connection limit); it closes.
    #[error("deskd refused the connection: {0}")]
    Refused(String),
}

/// What an object is.
///
/// The one definition: the desktop database (`deskd_db::Kind`) re-exports it, so a record
/// reaches the wire without a translation that could drift. The order of the variants is the
/// wire encoding; the database stores its own numbers (`deskd_db`'s `kind_to_sql`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A plain file.
    File,
    /// A directory: the only kind that may be a parent.
    Dir,
    /// A symbolic link, registered as itself and never followed.
    Symlink,
}

impl Kind {
    /// A short lower-case name for listings: `file`, `dir`, `symlink`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
        }
    }
}

/// How `Find` matches a pattern against names (always case-insensitive, NFC and NFD alike).
///
/// The one definition: the desktop database (`deskd_db::FindMode`) re-exports it, so a request
/// reaches the database without a translation that could drift. The order of the variants is
/// the wire encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FindMode {
    /// The name contains the pattern.
    Substring,
    /// The name starts with the pattern.
    Prefix,
    /// The whole name matches a shell glob (`*`, `?`, `[...]`).
    Glob,
    /// The whole name equals the pattern.
    Exact,
}

/// A volume handle: the index the server gave the volume at start-up.
pub type VolumeId = u32;

/// A request. Ids in the names are object IDs of the volume `vol`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// List the served volumes.
    Volumes,
    /// The handle of the volume rooted at `root` (an absolute path).
    OpenVolume {
        /// The volume root, an absolute path as bytes.
        root: Vec<u8>,
    },
    /// ID of `name` in directory `parent`, registering it if needed (lookup-or-add). The server
    /// checks that `dev`/`ino` match the object on disk. `hint` is an ID to keep if free.
    Add {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// The ID of the directory holding the object.
        parent: u32,
        /// The name in that directory, as bytes (Linux names need not be UTF-8).
        name: Vec<u8>,
        /// The device the client sees the object on; the server checks it.
        dev: u64,
        /// The inode the client sees; the server checks it.
        ino: u64,
        /// An ID to keep when it is free and the peer may give hints (see docs/protocol.md).
        hint: Option<u32>,
        /// The Mac type code for a new object (`None`: the default).
        type_code: Option<[u8; 4]>,
        /// The Mac creator code for a new object (`None`: the default).
        creator: Option<[u8; 4]>,
        /// An ID the object's own metadata carries from where it was (afpd's AppleDouble
        /// CNID, dt's xattr mirror): used only to follow a move made outside deskd (the record
        /// of that ID has this object's dev/ino and is no longer at its place), never to pick
        /// a free ID. Any peer may send it (protocol 3).
        carried: Option<u32>,
    },
    /// Register the object at `path` (relative to the root) and any unregistered directory above
    /// it; the server stats each itself. Returns the final object.
    AddPath {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// A path relative to the volume root.
        path: Vec<u8>,
        /// An ID to keep when it is free and the peer may give hints (see docs/protocol.md).
        hint: Option<u32>,
        /// The Mac type code for a new object (`None`: the default).
        type_code: Option<[u8; 4]>,
        /// The Mac creator code for a new object (`None`: the default).
        creator: Option<[u8; 4]>,
        /// As [`Request::Add`]'s `carried`: an ID to follow a move by, never to pick.
        carried: Option<u32>,
    },
    /// The registered object `name` in `parent` (no registration).
    Lookup {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// The ID of the directory holding the object.
        parent: u32,
        /// The name in that directory, as bytes (Linux names need not be UTF-8).
        name: Vec<u8>,
    },
    /// The registered object at `path` (no registration).
    LookupPath {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// A path relative to the volume root.
        path: Vec<u8>,
    },
    /// The object with this ID, with its path.
    Resolve {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// The object's ID.
        id: u32,
    },
    /// The registered children of a directory.
    Children {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// The directory's ID.
        dir: u32,
    },
    /// The client renamed/moved object `id` to `new_parent`/`new_name`; the server verifies it.
    Rename {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// The object's ID.
        id: u32,
        /// The directory it is in now.
        new_parent: u32,
        /// The name it has now.
        new_name: Vec<u8>,
        /// Replace an object that has the target name (its IDs are removed); else `Exists`.
        replace: bool,
    },
    /// The client renamed `from` to `to` (paths relative to the root); the server verifies it.
    /// An unregistered `from` is registered at `to` (keeping `hint` if free).
    RenamePath {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// Where it was, relative to the root.
        from: Vec<u8>,
        /// Where it is now, relative to the root.
        to: Vec<u8>,
        /// Replace an object that has the target name (its IDs are removed); else `Exists`.
        replace: bool,
        /// An ID to keep when it is free and the peer may give hints (see docs/protocol.md).
        hint: Option<u32>,
    },
    /// The client removed object `id` (and, with `recursive`, everything below); verified.
    Delete {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// The object's ID.
        id: u32,
        /// Remove everything below too (a directory with children is refused otherwise).
        recursive: bool,
    },
    /// The client removed `path`; verified. An unregistered path is not an error.
    DeletePath {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// A path relative to the volume root.
        path: Vec<u8>,
        /// Remove everything below too (a directory with children is refused otherwise).
        recursive: bool,
    },
    /// Change type, creator or Finder flags.
    SetInfo {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// The object's ID.
        id: u32,
        /// A new Mac type code (`None` leaves it).
        type_code: Option<[u8; 4]>,
        /// A new Mac creator code (`None` leaves it).
        creator: Option<[u8; 4]>,
        /// New Finder flags (`None` leaves them).
        flags: Option<u16>,
    },
    /// Names matching `pattern`, in ID order after `after_id`, at most `limit` (≤ 10,000).
    Find {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// What names are matched against.
        pattern: String,
        /// How the pattern matches.
        mode: FindMode,
        /// Most results (at most 10,000); fewer means there are no more.
        limit: u32,
        /// Only IDs above this one: 0, then the last ID of the previous page.
        after_id: u32,
    },
    /// Register `app_id` as an application for documents of `creator` (AFP FPAddAPPL).
    ApplAdd {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// The creator code of the documents the application opens.
        creator: [u8; 4],
        /// The ID of the application.
        app_id: u32,
        /// The client's tag, kept and returned as given.
        tag: u32,
    },
    /// The applications for documents of `creator`: `(app_id, tag)` pairs (FPGetAPPL).
    ApplGet {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// The creator code of the documents.
        creator: [u8; 4],
    },
    /// Unregister an application (FPRemoveAPPL); `NotFound` when it was not.
    ApplRemove {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// The creator code of the documents.
        creator: [u8; 4],
        /// The ID of the application.
        app_id: u32,
    },
    /// Store an icon bitmap for (creator, type, icon kind), replacing one (FPAddIcon).
    IconAdd {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// The creator code the icon is for.
        creator: [u8; 4],
        /// The type code the icon is for.
        type_code: [u8; 4],
        /// The icon kind (AFP's icon type).
        itype: u8,
        /// The client's tag, kept and returned as given.
        tag: u32,
        /// The bitmap, at most [`MAX_ICON_BITMAP`] bytes.
        bitmap: Vec<u8>,
    },
    /// The icon for (creator, type, icon kind), with its tag (FPGetIcon).
    IconGet {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// The creator code the icon is for.
        creator: [u8; 4],
        /// The type code the icon is for.
        type_code: [u8; 4],
        /// The icon kind (AFP's icon type).
        itype: u8,
    },
    /// The icons stored for `creator`: (type, icon kind, tag) (FPGetIconInfo).
    IconList {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// The creator code whose icons are listed.
        creator: [u8; 4],
    },
    /// Set the Finder comment of object `id` (FPAddComment).
    CommentSet {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// The object's ID.
        id: u32,
        /// The comment, at most [`MAX_COMMENT`] bytes; it replaces any other.
        text: Vec<u8>,
    },
    /// The Finder comment of object `id` (FPGetComment).
    CommentGet {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// The object's ID.
        id: u32,
    },
    /// Remove the Finder comment of object `id` (FPRemoveComment).
    CommentRemove {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// The object's ID.
        id: u32,
    },
    /// Per-volume state; `vol: None` for all volumes.
    Status {
        /// One volume, or `None` for all.
        vol: Option<VolumeId>,
    },
    /// Commit and TRUNCATE-checkpoint (admin).
    Flush {
        /// One volume, or `None` for all.
        vol: Option<VolumeId>,
    },
    /// Flush, then keep `.Desktop` byte-stable for `seconds` (admin; `None` = default). On a
    /// frozen volume it only extends the freeze: a running freeze that ends later keeps its end.
    Freeze {
        /// One volume, or `None` for all.
        vol: Option<VolumeId>,
        /// How long (`None`: the configured default; clamped to `freeze_max`).
        seconds: Option<u32>,
    },
    /// End a freeze early (admin).
    Thaw {
        /// One volume, or `None` for all.
        vol: Option<VolumeId>,
    },
    /// Start an online rebuild of a served volume (admin). The job ends by itself when no
    /// [`Request::RebuildPoll`] arrives for `timeout_secs` (the client is gone).
    RebuildStart {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// Scan, repair or fresh.
        mode: RebuildMode,
        /// Walker threads (`None`: the rebuild's default).
        threads: Option<u32>,
        /// Go on when the file system has less than twice the desktop free.
        force: bool,
        /// Stop the job when no poll arrives for this long.
        timeout_secs: u32,
    },
    /// The state of rebuild `job`, with its difference lines from number `from` on (admin).
    /// Every poll keeps the job alive.
    RebuildPoll {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// The job number [`Response::RebuildStarted`] gave.
        job: u64,
        /// The first difference line wanted (`u64::MAX`: none).
        from: u64,
    },
    /// Stop rebuild `job` (admin); nothing is applied after the stop.
    RebuildCancel {
        /// The volume handle [`Request::OpenVolume`] gave.
        vol: VolumeId,
        /// The job number [`Response::RebuildStarted`] gave.
        job: u64,
    },
    /// The server's figures in the Prometheus text format (`deskd metrics`), as much as the
    /// asker may see of them (the same rule as `Status`; docs/protocol.md). Added after
    /// protocol 3 without a version change: a server that predates it answers `BadRequest`.
    Metrics,
    /// The server's memory figures ([`Response::Memory`]); any peer may ask. Appended after
    /// version 3 without changing the version: no earlier message encodes differently, and a
    /// server that predates it answers `BadRequest`.
    Memory,
    /// Each volume's live tracking ([`Response::Watch`]; `vol`: None for every volume); any
    /// peer may ask (counts and times, no path). Appended after version 3 without changing
    /// the version, as `Memory` was: no earlier message encodes differently, and a server
    /// that predates it answers `BadRequest`.
    Watch {
        /// The volume handle, or None for every served volume.
        vol: Option<VolumeId>,
    },
    /// The configured volumes the server does not serve, and why ([`Response::NotServed`]);
    /// any peer may ask (the reason only to root and each volume root's owner). Appended
    /// after `Watch` the same way: a server that predates it answers `BadRequest`.
    NotServed,
}

/// What a rebuild does (see `deskd rebuild`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RebuildMode {
    /// `-s`: report differences, change nothing.
    Scan,
    /// Repair the disk and the desktop.
    Repair,
    /// `-f`: decide every ID from the disk alone.
    Fresh,
}

/// One difference a rebuild found (one `-s` line: `<kind> <path>: <detail>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DifferenceLine {
    /// What differs, a short word (`orphan-rsrc`, …) scripts can match on.
    pub kind: String,
    /// The absolute path concerned, as bytes.
    pub path: Vec<u8>,
    /// What was found and what the rebuild does about it.
    pub detail: String,
}

/// What a rebuild counted: the summary line of `deskd rebuild`, offline (`deskd_rebuild::Counts`
/// is this type) and online (inside [`RebuildSummary`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildCounts {
    /// Objects walked, the root included.
    pub objects: u64,
    /// Directories among them.
    pub directories: u64,
    /// Objects given an ID from the counter.
    pub new_ids: u64,
    /// Objects that lost a duplicated ID and got a new one.
    pub renumbered: u64,
    /// Objects with something repaired (desktop row, resource file or mirror).
    pub repaired: u64,
    /// Desktop rows and orphaned resource files removed.
    pub removed: u64,
}

/// The totals of a finished rebuild. (On the wire, `counts` encodes exactly as its six fields
/// did when they stood here: postcard writes a struct's fields in order with no framing.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildSummary {
    /// What was counted (objects, new IDs, repairs, removals).
    pub counts: RebuildCounts,
    /// Difference lines reported.
    pub differences: u64,
    /// Objects left to clients that changed them meanwhile, with a difference still open.
    pub left: u64,
    /// Passes run (one more each time clients changed objects a pass had to leave alone).
    pub passes: u32,
    /// How long the rebuild took, in milliseconds.
    pub millis: u64,
}

/// A rebuild job as the server reports it (in a poll reply and in `Status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildState {
    /// The job number, as [`Response::RebuildStarted`] gave it.
    pub job: u64,
    /// What the job does.
    pub mode: RebuildMode,
    /// `walking`, `planning`, `applying`, `done`, `failed` or `stopped`.
    pub phase: String,
    /// Passes so far (a pass is repeated when clients changed objects it had to leave alone).
    pub pass: u32,
    /// Objects walked in this pass.
    pub objects: u64,
    /// Unix time the job started.
    pub started: i64,
    /// Difference lines from the poll's `from` on (empty in `Status`).
    pub lines: Vec<DifferenceLine>,
    /// Number of the line after the last one sent.
    pub next: u64,
    /// Set when the job has ended: its totals, or why it failed or stopped.
    ///
    /// The why is a `String` on purpose: it crosses the socket, where an error's type and
    /// source chain cannot go, and a client only shows it; the server sends the failure's
    /// message (with its causes) here.
    pub finished: Option<Result<RebuildSummary, String>>,
}

impl Request {
    /// An `AddPath` of `path` (relative to the volume's root) with no hint, type, creator or
    /// carried ID: a plain registration.
    pub fn add_path(vol: VolumeId, path: Vec<u8>) -> Request {
        Request::AddPath {
            vol,
            path,
            hint: None,
            type_code: None,
            creator: None,
            carried: None,
        }
    }

    /// True for requests that change the desktop (they go through the volume's writer).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Request::Add { .. }
                | Request::AddPath { .. }
                | Request::Rename { .. }
                | Request::RenamePath { .. }
                | Request::Delete { .. }
                | Request::DeletePath { .. }
                | Request::SetInfo { .. }
                | Request::ApplAdd { .. }
                | Request::ApplRemove { .. }
                | Request::IconAdd { .. }
                | Request::CommentSet { .. }
                | Request::CommentRemove { .. }
        )
    }

    /// Refuse a request that would store more than one record may hold ([`MAX_COMMENT`],
    /// [`MAX_ICON_BITMAP`]), before it reaches a volume's writer.
    pub fn check_sizes(&self) -> Result<(), ErrorReply> {
        match self {
            Request::CommentSet { text, .. } if text.len() > MAX_COMMENT => Err(ErrorReply::new(
                ErrorCode::BadRequest,
                format!(
                    "a comment of {} bytes is longer than the {MAX_COMMENT} bytes a comment may have",
                    text.len()
                ),
            )),
            Request::IconAdd { bitmap, .. } if bitmap.len() > MAX_ICON_BITMAP => {
                Err(ErrorReply::new(
                    ErrorCode::BadRequest,
                    format!(
                        "an icon bitmap of {} bytes is larger than the {MAX_ICON_BITMAP} bytes \
                         an icon may have",
                        bitmap.len()
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The volume a request addresses, if it addresses exactly one.
    pub fn volume(&self) -> Option<VolumeId> {
        use Request::*;
        match self {
            Volumes | OpenVolume { .. } | Metrics | Memory | NotServed => None,
            Watch { vol } | Status { vol } | Flush { vol } | Freeze { vol, .. } | Thaw { vol } => {
                *vol
            }
            RebuildStart { vol, .. } | RebuildPoll { vol, .. } | RebuildCancel { vol, .. } => {
                Some(*vol)
            }
            Add { vol, .. }
            | AddPath { vol, .. }
            | Lookup { vol, .. }
            | LookupPath { vol, .. }
            | Resolve { vol, .. }
            | Children { vol, .. }
            | Rename { vol, .. }
            | RenamePath { vol, .. }
            | Delete { vol, .. }
            | DeletePath { vol, .. }
            | SetInfo { vol, .. }
            | Find { vol, .. }
            | ApplAdd { vol, .. }
            | ApplGet { vol, .. }
            | ApplRemove { vol, .. }
            | IconAdd { vol, .. }
            | IconGet { vol, .. }
            | IconList { vol, .. }
            | CommentSet { vol, .. }
            | CommentGet { vol, .. }
            | CommentRemove { vol, .. } => Some(*vol),
        }
    }
}

/// An object as the server reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// The object's ID, which never changes while the object lives.
    pub id: u32,
    /// The ID of the directory holding it (1 for the root).
    pub parent: u32,
    /// Its name, as bytes.
    pub name: Vec<u8>,
    /// File, directory or symbolic link.
    pub kind: Kind,
    /// The Mac type code.
    pub type_code: [u8; 4],
    /// The Mac creator code.
    pub creator: [u8; 4],
    /// The Finder flags.
    pub flags: u16,
    /// The path relative to the volume root, when the request asked for it.
    pub path: Option<Vec<u8>>,
    /// True when this request registered the object.
    pub created: bool,
}

/// A served volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// The handle later requests name the volume by.
    pub vol: VolumeId,
    /// The volume root, an absolute path as bytes.
    pub root: Vec<u8>,
    /// Whether writes are refused (configured so, `deskd serve --read-only`, or the file system
    /// is read-only or full).
    pub read_only: bool,
}

/// What the server sends in place of a volume-wide activity figure (objects, the ID counter,
/// the WAL, the watcher's counts, a rebuild's counts, the desktop's and name index's sizes) to
/// a peer that is not the volume's admin (root, deskd's user, the volume's owner, a trusted TCP
/// peer): such a peer gets none of them, not even rounded, since any local user can step a
/// rounded count one at a time to just below a step and then see the next single change of
/// anyone's (docs/security.md, "A volume's activity figures: its admins' only"). No count can
/// be this large, so the value needs no new field (postcard has no field framing: a new field
/// would change how every version-3 peer decodes the reply). Clients show it as absent: JSON
/// null, `—` in text ([`shown`]).
pub const WITHHELD: u64 = u64::MAX;
/// [`WITHHELD`] for the ID counter: `u32::MAX` is never handed out (`deskd_db::ids`).
pub const WITHHELD_ID: u32 = u32::MAX;

/// `n` unless the server withheld it ([`WITHHELD`]).
pub fn shown(n: u64) -> Option<u64> {
    (n != WITHHELD).then_some(n)
}

/// State of one volume, for `deskd status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatus {
    /// The volume's handle.
    pub vol: VolumeId,
    /// The volume root, as bytes.
    pub root: Vec<u8>,
    /// The desktop file's path, as bytes.
    pub desktop: Vec<u8>,
    /// Registered objects.
    pub objects: u64,
    /// The highest ID handed out.
    pub last_id: u32,
    /// Whether writes are refused now.
    pub read_only: bool,
    /// Why the volume is read-only whatever its configuration says (`file system full`,
    /// `read-only file system`).
    pub read_only_reason: Option<String>,
    /// Unix time of the last checkpoint that copied everything committed before it (beside the
    /// writes, or a flush), 0 if none since start.
    pub last_flush: i64,
    /// False when the previous session ended without a clean shutdown.
    pub clean_at_start: bool,
    /// Unix time when the current freeze ends, if frozen.
    pub frozen_until: Option<i64>,
    /// Bytes of the WAL not yet checkpointed into the desktop (a WAL reused from its start
    /// keeps its file's length; this is what is left to copy).
    pub wal_bytes: u64,
    /// Problems found by the start-up check (empty = sound).
    pub check_problems: Vec<String>,
    /// The running (or last) online rebuild, if any since the server started.
    pub rebuild: Option<RebuildState>,
    /// The connections that have used this volume and are still open, oldest first (version
    /// 3). A peer that is neither trusted nor the volume's admin gets only those of its own
    /// uid.
    pub clients: Vec<ClientStatus>,
    /// Connections of this volume left out of `clients` because the asker may not see them
    /// (other users', to a peer that is neither trusted nor the volume's admin).
    pub hidden_clients: u32,
}

impl VolumeStatus {
    /// Whether `objects` and `last_id` are unknown rather than 0: a desktop in a database the
    /// server cannot reach has no counts to show. `deskd status` shows `unknown`, its
    /// `--json` and `/api/status` null (a monitor must not read a false 0).
    pub fn counts_unknown(&self) -> bool {
        self.last_id == 0
            && self
                .read_only_reason
                .as_deref()
                .is_some_and(|why| why.starts_with("database unreachable"))
    }

    /// Whether the server withheld this volume's activity figures (`objects`, `last_id`,
    /// `wal_bytes`, a rebuild's counts) from the asker: it is not the volume's admin
    /// ([`WITHHELD`]).
    pub fn figures_withheld(&self) -> bool {
        self.last_id == WITHHELD_ID
    }

    /// `objects` unless unknown or withheld.
    pub fn objects_shown(&self) -> Option<u64> {
        (!self.counts_unknown() && !self.figures_withheld()).then_some(self.objects)
    }

    /// `last_id` unless unknown or withheld.
    pub fn last_id_shown(&self) -> Option<u32> {
        (!self.counts_unknown() && !self.figures_withheld()).then_some(self.last_id)
    }
}

/// One connected client, as `deskd status` lists it ("Active Users").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStatus {
    /// The local peer's uid, from the kernel (`SO_PEERCRED`); None over TCP or when unknown.
    pub uid: Option<u32>,
    /// The local peer's pid at connect time; None over TCP or for a peer in another pid
    /// namespace (the kernel says 0).
    pub pid: Option<u32>,
    /// The peer's program name (`/proc/PID/comm`, read once at accept). Untrusted text: the
    /// process chose it.
    pub program: Option<String>,
    /// Unix time the connection was accepted.
    pub since: i64,
    /// The TCP peer address (`ip:port`) of a TCP connection.
    pub tcp_peer: Option<String>,
    /// This is the connection the `Status` request came on.
    pub asker: bool,
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The served volumes (to `Volumes`).
    Volumes(Vec<VolumeInfo>),
    /// One volume (to `OpenVolume`).
    Volume(VolumeInfo),
    /// One object (to `Add`, `AddPath`, `Resolve`, `SetInfo`).
    Object(ObjectInfo),
    /// An object if registered (to `Lookup`, `LookupPath`).
    MaybeObject(Option<ObjectInfo>),
    /// Objects (to `Children`, `Find`).
    Objects(Vec<ObjectInfo>),
    /// IDs removed by a delete or a replacing rename.
    Removed(Vec<u32>),
    /// `(app_id, tag)` pairs (to `ApplGet`).
    Appl(Vec<(u32, u32)>),
    /// `(tag, bitmap)` if stored (to `IconGet`).
    Icon(Option<(u32, Vec<u8>)>),
    /// `(type_code, itype, tag)` of each stored icon (to `IconList`).
    Icons(Vec<([u8; 4], u8, u32)>),
    /// The Finder comment if set (to `CommentGet`).
    Comment(Option<Vec<u8>>),
    /// Per-volume state (to `Status`).
    Status(Vec<VolumeStatus>),
    /// Frozen until this Unix time; `clamped` when the request exceeded `freeze_max`.
    Frozen {
        /// Unix time the freeze ends: the asked end, or a running freeze's later one.
        until: i64,
        /// The request asked for more than `max` seconds and got `max`.
        clamped: bool,
        /// The server's `freeze_max`, in seconds.
        max: u32,
    },
    /// The rebuild job began (to `RebuildStart`).
    RebuildStarted {
        /// Its number, for `RebuildPoll` and `RebuildCancel`.
        job: u64,
    },
    /// A rebuild job's state (to `RebuildPoll`).
    Rebuild(RebuildState),
    /// Done, nothing to report (to the other changes and admin verbs).
    Done,
    /// The Prometheus text exposition (to `Metrics`).
    Metrics(String),
    /// The server's memory figures (to `Memory`).
    Memory(ServerMemory),
    /// Each volume's live tracking (to `Watch`).
    Watch(Vec<VolumeWatch>),
    /// A volume whose desktop is in PostgreSQL is frozen (to `Freeze`): as [`Response::Frozen`],
    /// with the name of the snapshot the server holds until the freeze ends, which `pg_dump
    /// --snapshot=NAME` dumps. (Last of the variants: an older client that reads it fails on an
    /// unknown variant, not on a wrong field.)
    FrozenSnapshot {
        /// Unix time the freeze (and the snapshot) ends.
        until: i64,
        /// The request asked for more than `max` seconds and got `max`.
        clamped: bool,
        /// The server's `freeze_max`, in seconds.
        max: u32,
        /// The exported snapshot (`pg_export_snapshot()`), valid until `until` or a thaw.
        snapshot: String,
    },
    /// The configured volumes not served (to `NotServed`).
    NotServed(Vec<VolumeNotServed>),
}

/// A volume in the server's configuration that it does not serve: refused at start or at a
/// reload (a failed check, a desktop that would not open).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeNotServed {
    /// The volume root as configured, as bytes.
    pub root: Vec<u8>,
    /// Why: the message the server logged (to root and the root's owner; others get a note
    /// that it is hidden).
    pub why: String,
    /// Unix time it was refused.
    pub since: i64,
}

/// What a peer that is neither root nor the volume's owner (nor the HTTP side's reader
/// without the token) learns of why a volume is not served: the reason can name the database.
pub const NOT_SERVED_REDACTED: &str =
    "refused (root or the volume owner sees why; the server's log says it)";

impl VolumeNotServed {
    /// `why` without the leading `ROOT: ` the server's message often has (`root` as the caller
    /// shows the volume's root).
    pub fn why_past(&self, root: &str) -> &str {
        self.why
            .strip_prefix(root)
            .and_then(|why| why.strip_prefix(": "))
            .unwrap_or(&self.why)
    }
}

/// One volume's live tracking (issue 23), as `deskd status` shows it in `watch`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeWatch {
    /// The volume's handle.
    pub vol: VolumeId,
    /// `fanotify`, `inotify` or `off`.
    pub kind: String,
    /// Why the watcher is not the one asked for, or why there is none.
    pub note: Option<String>,
    /// Changes the watcher reported (after coalescing).
    pub events: u64,
    /// Changes that changed the desktop.
    pub applied: u64,
    /// Changes read and not yet applied.
    pub pending: u64,
    /// The last batch's time from its oldest event read to its commit, milliseconds.
    pub lag_ms: u64,
    /// The 99th percentile of `lag_ms` over the last 1,000 batches.
    pub lag_p99_ms: u64,
    /// Times events were lost, each counted once (the kernel's queue, every drop past
    /// `watch_held_mib`, `watch_queue`); a rescan follows. Kept across a watcher's restart.
    pub overflows: u64,
    /// Unix time of the last overflow.
    pub last_overflow: Option<i64>,
    /// The running or last rescan of the volume by the online repair.
    pub rescan: Option<WatchRescan>,
    /// New objects registered whose resource file and mirror are not written yet (a burst's,
    /// written in the background; a rebuild job writes them first).
    pub owed_stamps: u64,
    /// New objects the budget of new IDs per user held back, waiting for its window's end.
    pub held_back: u64,
    /// Bytes of events read from the kernel and not yet applied (fanotify), now.
    pub queued_bytes: u64,
    /// The most of `queued_bytes` at once since the watcher started.
    pub queued_peak_bytes: u64,
    /// Whether the events held are a burst's, deferred until it slows (at most 30 s) or a
    /// flush.
    pub deferring: bool,
}

impl VolumeWatch {
    /// Whether the server withheld the counts (events, applied, pending, stamps owed, held
    /// back, bytes held, a rescan's counts) from the asker ([`WITHHELD`]); the kind, note,
    /// lag percentile, overflows and whether a burst is deferred are given to every peer.
    pub fn figures_withheld(&self) -> bool {
        self.events == WITHHELD
    }
}

/// A rescan of a watched volume by the online repair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRescan {
    /// `start` (every start of a watched volume), `overflow` (events lost, or a tree too
    /// large to register inline), or `budget` (more new objects held back over the watcher's
    /// budget than it keeps to try again).
    pub reason: String,
    /// Whether it runs now.
    pub running: bool,
    /// Unix time it started.
    pub started: i64,
    /// Unix time it finished.
    pub finished: Option<i64>,
    /// Objects walked.
    pub objects: u64,
    /// Differences the repair found (and fixed).
    pub changed: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// The server process's memory as the kernel counts it, and what of it deskd's own structures
/// and mappings are (`deskd status`; docs/PERFORMANCE.md, "Memory"). Byte counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerMemory {
    /// Anonymous resident memory (`RssAnon`): the heap, stacks, the name indexes, SQLite's page
    /// caches. What the server really uses.
    pub rss_anon: u64,
    /// Resident file-backed pages (`RssFile`): mostly the desktop mappings, each mapping's
    /// pages counted again though the page cache holds them once.
    pub rss_file: u64,
    /// Peak resident set (`VmHWM`), both kinds, since the server started.
    pub vm_hwm: u64,
    /// Open SQLite connections: one writer per writable volume and one read connection per
    /// client per volume it used, plus any background reader running.
    pub sqlite_connections: u32,
    /// The desktop mappings' size, all volumes (what `/proc/self/smaps` shows for them).
    pub mapped: u64,
    /// The resident part of [`ServerMemory::mapped`].
    pub mapped_resident: u64,
    /// `mmap_total`: the most the read connections may map together.
    pub mmap_total: u64,
    /// What the read connections have been granted of `mmap_total` now.
    pub mmap_granted: u64,
    /// Read connections that got less than their desktop's size (reading the rest with
    /// `pread(2)`), now.
    pub short_readers: u32,
    /// Per served volume.
    pub volumes: Vec<VolumeMemory>,
    /// Milliseconds the figures took to gather (they are cached for a second).
    pub gather_millis: u32,
}

/// One volume's part of [`ServerMemory`]. Byte counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMemory {
    /// The volume's handle.
    pub vol: VolumeId,
    /// The desktop file's size.
    pub desktop_bytes: u64,
    /// Mappings of the desktop (one per connection that reads through a mapping).
    pub mappings: u32,
    /// Their size together.
    pub mapped: u64,
    /// Their resident pages together.
    pub mapped_resident: u64,
    /// SQLite connections to the desktop (writer and readers).
    pub connections: u32,
    /// The in-memory name index behind `find`.
    pub name_index: u64,
    /// The most the connections' SQLite page caches may hold together (their `cache_size`).
    pub page_cache_limit: u64,
}

/// Typed error codes; the message says the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The frame could not be decoded.
    BadRequest,
    /// A frame exceeded [`MAX_FRAME`]; the server closes the connection.
    FrameTooLarge,
    /// An unknown handle or path, or a volume no longer served.
    NoSuchVolume,
    /// No such ID, name or path, or one the peer may not see.
    NotFound,
    /// The target name is taken (a rename without `replace`).
    Exists,
    /// Empty, over 255 bytes, `/` or NUL.
    InvalidName,
    /// The path leaves the volume (`..`, a symlink, outside the root).
    Escape,
    /// The name belongs to deskd (`.Desktop`, `.rsrc`).
    Protected,
    /// The file system does not show what the client claims.
    ClaimRejected,
    /// A non-recursive delete of a directory with children.
    NotEmpty,
    /// A parent that is not a directory.
    NotADirectory,
    /// Moving a directory into its own subtree.
    IntoItself,
    /// No 32-bit ID is left in the volume.
    IdSpaceExhausted,
    /// The volume is read-only.
    ReadOnly,
    /// An admin verb by another user, the root renamed or deleted, or a change the peer may
    /// not make to an object it sees.
    PermissionDenied,
    /// The desktop is locked by another process.
    Busy,
    /// The server is shutting down.
    ShuttingDown,
    /// Anything else; the message says what.
    Internal,
    /// The desktop's file system is (nearly) full: the write was refused before it could take
    /// the space a checkpoint needs. Reads go on.
    DiskFull,
}

/// An error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What kind of failure, for programs to act on.
    pub code: ErrorCode,
    /// What happened, for people.
    pub message: String,
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl ErrorReply {
    /// An error reply with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            code,
            message: message.into(),
        }
    }
}

/// A request with its client-chosen id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Chosen by the client, so that pipelined replies can be matched up; 0 is best avoided,
    /// as replies about the connection itself carry it.
    pub id: u64,
    /// What is asked.
    pub request: Request,
}

/// A reply to the request with the same id (id 0: a connection-level error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyFrame {
    /// The id of the request answered; 0 for an error about the connection itself.
    pub id: u64,
    /// The answer, or why there is none.
    pub result: Result<Response, ErrorReply>,
}

/// Encode a value as one request frame (length prefix + postcard body, at most [`MAX_FRAME`]).
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, ProtoError> {
    encode_frame_within(value, MAX_FRAME)
}

/// Encode a value as one frame whose body is at most `limit` bytes.
pub fn encode_frame_within<T: Serialize>(value: &T, limit: u32) -> Result<Vec<u8>, ProtoError> {
    let mut out = vec![0u8; 4];
    out = postcard::to_extend(value, out).map_err(ProtoError::Malformed)?;
    let len = u32::try_from(out.len() - 4).unwrap_or(u32::MAX);
    if len > limit {
        return Err(ProtoError::FrameTooLarge { len, limit });
    }
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Write one frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, value: &T) -> Result<(), ProtoError> {
    w.write_all(&encode_frame(value)?)?;
    Ok(())
}

/// Read one request frame body (at most [`MAX_FRAME`]). `Ok(false)` on a clean end of stream
/// before the length prefix.
pub fn read_frame_body(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<bool, ProtoError> {
    read_frame_body_within(r, buf, MAX_FRAME)
}

/// Read one frame body of at most `limit` bytes; a longer one is refused before it is read.
pub fn read_frame_body_within(
    r: &mut impl Read,
    buf: &mut Vec<u8>,
    limit: u32,
) -> Result<bool, ProtoError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len > limit {
        return Err(ProtoError::FrameTooLarge { len, limit });
    }
    buf.clear();
    buf.resize(len as usize, 0);
    r.read_exact(buf)?;
    Ok(true)
}

/// Decode a frame body.
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ProtoError> {
    postcard::from_bytes(body).map_err(ProtoError::Malformed)
}

/// The socket path every deskd program uses: `explicit`, else `$DESKD_SOCKET`, else
/// `/run/deskd/deskd.sock` for root, else `$XDG_RUNTIME_DIR/deskd.sock`, else
/// `/tmp/deskd-<uid>/deskd.sock`.
pub fn socket_path(explicit: Option<PathBuf>) -> PathBuf {
    let uid = rustix::process::geteuid().as_raw();
    socket_path_for(explicit, |name| std::env::var_os(name), uid)
}

/// [`socket_path`]'s rule with the environment (`env` reads a variable) and the effective uid
/// given, so each branch can be tested without changing the process's own.
fn socket_path_for(
    explicit: Option<PathBuf>,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
    uid: u32,
) -> PathBuf {
    if let Some(p) = explicit {
        return p;
    }
    if let Some(p) = env("DESKD_SOCKET").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if uid == 0 {
        return PathBuf::from("/run/deskd/deskd.sock");
    }
    if let Some(dir) = env("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("deskd.sock");
    }
    PathBuf::from(format!("/tmp/deskd-{uid}/deskd.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `RebuildSummary` as it was before its counts moved into [`RebuildCounts`]: an older
    /// client or server must read the new one's bytes and the other way round.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct FlatSummary {
        objects: u64,
        directories: u64,
        new_ids: u64,
        renumbered: u64,
        repaired: u64,
        removed: u64,
        differences: u64,
        left: u64,
        passes: u32,
        millis: u64,
    }

    #[test]
    fn the_rebuild_summary_encodes_as_its_flat_predecessor() {
        let summary = RebuildSummary {
            counts: RebuildCounts {
                objects: 1,
                directories: 2,
                new_ids: 300,
                renumbered: 4,
                repaired: 5,
                removed: 6,
            },
            differences: 7,
            left: 8,
            passes: 9,
            millis: 100_000,
        };
        let flat = FlatSummary {
            objects: 1,
            directories: 2,
            new_ids: 300,
            renumbered: 4,
            repaired: 5,
            removed: 6,
            differences: 7,
            left: 8,
            passes: 9,
            millis: 100_000,
        };
        let bytes = postcard::to_allocvec(&summary).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&flat).unwrap());
        assert_eq!(decode::<RebuildSummary>(&bytes).unwrap(), summary);
    }

    #[test]
    fn kinds_keep_their_wire_numbers() {
        for (kind, n) in [(Kind::File, 0u8), (Kind::Dir, 1), (Kind::Symlink, 2)] {
            assert_eq!(postcard::to_allocvec(&kind).unwrap(), [n]);
        }
    }

    #[test]
    fn find_modes_keep_their_wire_numbers() {
        for (mode, n) in [
            (FindMode::Substring, 0u8),
            (FindMode::Prefix, 1),
            (FindMode::Glob, 2),
            (FindMode::Exact, 3),
        ] {
            assert_eq!(postcard::to_allocvec(&mode).unwrap(), [n]);
        }
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (
                any::<u32>(),
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..300),
                any::<u64>(),
                any::<u64>(),
                any::<Option<u32>>()
            )
                .prop_map(|(vol, parent, name, dev, ino, hint)| Request::Add {
                    vol,
                    parent,
                    name,
                    dev,
                    ino,
                    hint,
                    type_code: Some(*b"TEXT"),
                    creator: None,
                    carried: hint.map(|h| h ^ 1),
                }),
            (any::<u32>(), any::<u32>()).prop_map(|(vol, id)| Request::Resolve { vol, id }),
            (any::<u32>(), ".{0,40}", any::<u32>()).prop_map(|(vol, pattern, after_id)| {
                Request::Find {
                    vol,
                    pattern,
                    mode: FindMode::Glob,
                    limit: 10,
                    after_id,
                }
            }),
            proptest::collection::vec(any::<u8>(), 0..100)
                .prop_map(|root| Request::OpenVolume { root }),
            (
                any::<u32>(),
                0..3u8,
                any::<Option<u32>>(),
                any::<bool>(),
                any::<u32>()
            )
                .prop_map(|(vol, mode, threads, force, timeout_secs)| {
                    Request::RebuildStart {
                        vol,
                        mode: [RebuildMode::Scan, RebuildMode::Repair, RebuildMode::Fresh]
                            [mode as usize],
                        threads,
                        force,
                        timeout_secs,
                    }
                }),
            (any::<u32>(), any::<u64>(), any::<u64>())
                .prop_map(|(vol, job, from)| Request::RebuildPoll { vol, job, from }),
            Just(Request::Metrics),
            Just(Request::Memory),
            proptest::option::of(any::<u32>()).prop_map(|vol| Request::Watch { vol }),
            Just(Request::NotServed),
        ]
    }

    #[test]
    fn metrics_and_memory_were_appended_without_changing_what_version_3_peers_exchange() {
        // The next numbers after version 3's last request (RebuildCancel, 29) and response
        // (Done, 14): every earlier message encodes as before.
        assert_eq!(postcard::to_allocvec(&Request::Metrics).unwrap(), [30]);
        assert_eq!(postcard::to_allocvec(&Request::Memory).unwrap(), [31]);
        assert_eq!(
            postcard::to_allocvec(&Request::RebuildCancel { vol: 1, job: 2 }).unwrap(),
            [29, 1, 2]
        );
        assert_eq!(postcard::to_allocvec(&Response::Done).unwrap(), [14]);
        let reply = Response::Memory(ServerMemory {
            rss_anon: 1 << 20,
            volumes: vec![VolumeMemory {
                vol: 3,
                mapped: 5,
                ..Default::default()
            }],
            ..Default::default()
        });
        let bytes = postcard::to_allocvec(&reply).unwrap();
        assert_eq!(bytes[0], 16);
        assert_eq!(
            postcard::to_allocvec(&Response::Metrics("x".into())).unwrap(),
            [15, 1, b'x']
        );
        assert_eq!(decode::<Response>(&bytes).unwrap(), reply);
    }

    #[test]
    fn watch_was_appended_after_memory() {
        assert_eq!(
            postcard::to_allocvec(&Request::Watch { vol: None }).unwrap(),
            [32, 0]
        );
        let reply = Response::Watch(vec![VolumeWatch {
            vol: 1,
            kind: "fanotify".into(),
            ..Default::default()
        }]);
        let bytes = postcard::to_allocvec(&reply).unwrap();
        assert_eq!(bytes[0], 17);
        assert_eq!(decode::<Response>(&bytes).unwrap(), reply);
    }

    #[test]
    fn not_served_was_appended_after_watch_and_frozen_snapshot() {
        assert_eq!(postcard::to_allocvec(&Request::NotServed).unwrap(), [33]);
        let reply = Response::NotServed(vec![VolumeNotServed {
            root: b"/srv/v".to_vec(),
            why: "refused".into(),
            since: 5,
        }]);
        let bytes = postcard::to_allocvec(&reply).unwrap();
        assert_eq!(bytes[0], 19);
        assert_eq!(decode::<Response>(&bytes).unwrap(), reply);
    }

    #[test]
    fn a_refusals_reason_is_shown_without_its_root() {
        let n = |why: &str| VolumeNotServed {
            root: b"/srv/v".to_vec(),
            why: why.into(),
            since: 5,
        };
        assert_eq!(n("/srv/v: no desktop").why_past("/srv/v"), "no desktop");
        assert_eq!(
            n("/srv/vx: no desktop").why_past("/srv/v"),
            "/srv/vx: no desktop"
        );
        assert_eq!(
            n("/srv/v no desktop").why_past("/srv/v"),
            "/srv/v no desktop"
        );
        assert_eq!(n("no desktop").why_past("/srv/v"), "no desktop");
    }

    proptest! {
        #[test]
        fn frames_round_trip(id in any::<u64>(), request in arb_request()) {
            let frame = RequestFrame { id, request };
            let bytes = encode_frame(&frame).unwrap();
            let mut cursor = io::Cursor::new(bytes);
            let mut body = Vec::new();
            prop_assert!(read_frame_body(&mut cursor, &mut body).unwrap());
            prop_assert_eq!(decode::<RequestFrame>(&body).unwrap(), frame);
        }

        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode::<RequestFrame>(&body);
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_reading() {
        let mut bytes = (MAX_FRAME + 1).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        let err = read_frame_body(&mut io::Cursor::new(bytes), &mut Vec::new()).unwrap_err();
        assert!(matches!(err, ProtoError::FrameTooLarge { .. }));
        // A reply may be larger than a request, up to its own limit.
        let reply = ReplyFrame {
            id: 1,
            result: Ok(Response::Comment(Some(vec![7; MAX_FRAME as usize + 1]))),
        };
        assert!(matches!(
            encode_frame(&reply),
            Err(ProtoError::FrameTooLarge { .. })
        ));
        let bytes = encode_frame_within(&reply, MAX_REPLY_FRAME).unwrap();
        let mut body = Vec::new();
        assert!(
            read_frame_body_within(&mut io::Cursor::new(bytes), &mut body, MAX_REPLY_FRAME)
                .unwrap()
        );
        assert_eq!(decode::<ReplyFrame>(&body).unwrap(), reply);
    }

    #[test]
    fn handshake() {
        assert_eq!(parse_hello(&client_hello(7)).unwrap(), 7);
        assert!(parse_hello(b"HTTP/1.1").is_err());
        assert_eq!(parse_server_hello(&server_hello(0)).unwrap(), 0);
        assert!(matches!(
            parse_server_hello(&server_hello(1)),
            Err(ProtoError::VersionMismatch { .. })
        ));
    }

    /// The example in docs/protocol.md, byte for byte.
    #[test]
    fn golden_bytes_match_the_documentation() {
        let frame = RequestFrame {
            id: 1,
            request: Request::Resolve { vol: 0, id: 300 },
        };
        assert_eq!(
            encode_frame(&frame).unwrap(),
            vec![0, 0, 0, 5, 0x01, 0x06, 0x00, 0xac, 0x02]
        );
        let reply = ReplyFrame {
            id: 1,
            result: Err(ErrorReply::new(ErrorCode::NotFound, "no")),
        };
        assert_eq!(
            encode_frame(&reply).unwrap(),
            vec![0, 0, 0, 6, 0x01, 0x01, 0x03, 0x02, b'n', b'o']
        );
    }

    #[test]
    fn socket_path_rule() {
        use std::ffi::OsString;
        // An environment holding `vars` (name, value).
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let both = env(&[
            ("DESKD_SOCKET", "/env.sock"),
            ("XDG_RUNTIME_DIR", "/run/user/7"),
        ]);
        let path = |p: &str| PathBuf::from(p);
        // 1. An explicit path wins over everything, for root and others.
        for uid in [0, 7] {
            assert_eq!(
                socket_path_for(Some("/x.sock".into()), both, uid),
                path("/x.sock")
            );
        }
        // 2. Else $DESKD_SOCKET, for root and others.
        for uid in [0, 7] {
            assert_eq!(socket_path_for(None, both, uid), path("/env.sock"));
        }
        // 3. Else root gets the system socket, whatever $XDG_RUNTIME_DIR says; an empty
        // $DESKD_SOCKET counts as unset.
        let xdg = env(&[("DESKD_SOCKET", ""), ("XDG_RUNTIME_DIR", "/run/user/7")]);
        assert_eq!(socket_path_for(None, xdg, 0), path("/run/deskd/deskd.sock"));
        // 4. Else a user's runtime directory...
        assert_eq!(
            socket_path_for(None, xdg, 7),
            path("/run/user/7/deskd.sock")
        );
        // 5. ...and without one (unset or empty), a directory in /tmp named for the uid.
        for none in [env(&[]), env(&[("XDG_RUNTIME_DIR", "")])] {
            assert_eq!(
                socket_path_for(None, none, 7),
                path("/tmp/deskd-7/deskd.sock")
            );
        }
        // The public function reads the real environment and uid the same way.
        assert_eq!(socket_path(Some("/x.sock".into())), path("/x.sock"));
    }

    #[test]
    fn comments_and_icons_are_bounded() {
        let comment = |len| Request::CommentSet {
            vol: 1,
            id: 17,
            text: vec![b'c'; len],
        };
        let icon = |len| Request::IconAdd {
            vol: 1,
            creator: *b"ttxt",
            type_code: *b"TEXT",
            itype: 1,
            tag: 0,
            bitmap: vec![0; len],
        };
        assert!(comment(MAX_COMMENT).check_sizes().is_ok());
        assert!(icon(MAX_ICON_BITMAP).check_sizes().is_ok());
        for too_big in [comment(MAX_COMMENT + 1), icon(MAX_ICON_BITMAP + 1)] {
            let e = too_big.check_sizes().unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest);
        }
    }
}
