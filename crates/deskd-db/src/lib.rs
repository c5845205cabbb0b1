//! The deskd desktop database: one SQLite file per volume (`.Desktop`).
//!
//! It gives every object of a volume a 32-bit ID that never changes on rename or move and is never
//! reused ([`ids`]), keeps the Mac APPL, icon and comment records, and answers "find file" by
//! prefix, substring or glob ([`names`], and the in-memory [`name_index`] the server keeps). The schema is versioned and migrated
//! forward ([`schema`]); `docs/desktop-format.md` describes it.
//!
//! * [`Desktop`] is the write handle. The server holds exactly one per volume; every mutation is a
//!   method of a [`Batch`] (one transaction, committed by the caller), and each request inside a
//!   batch can be isolated with [`Batch::step`] so one failing request does not undo the others.
//! * [`Reader`] is a read-only connection; any number may be open. Both implement [`Read`].
//! * [`Read`], [`WriteBatch`] and [`Store`] (the write handle) are the storage interface, free
//!   of SQLite: the `deskd-pg` crate implements them on PostgreSQL.
//! * No SQL lives outside this crate.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bench_names;
pub mod bulk;
pub mod files;
pub mod ids;
pub mod name_index;
pub mod names;
pub mod schema;
pub mod snapshot;
mod sqlite_read;
pub mod store;
pub mod wal;
pub mod write_batch;
mod write_tx;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

pub use ids::{FIRST_ID, LAST_USABLE_ID, ROOT_ID, ROOT_PARENT_ID};
pub use name_index::{NameChange, NameIndex};
pub use schema::FORMAT_VERSION;
pub(crate) use sqlite_read::SqliteConn;
pub use store::Store;
pub use wal::{CheckpointConnection, CheckpointMode, CheckpointOutcome, WalIndex, WalState};
pub use write_batch::WriteBatch;

/// The longest name (in bytes) an object may have; the usual Linux `NAME_MAX`.
pub const MAX_NAME_LEN: usize = 255;

/// How much of a desktop file one connection memory-maps at most (address space only; pages
/// load on use). The server may give its read connections less ([`Reader::open_mapped`]).
pub const MMAP_SIZE: i64 = 4 << 30;

/// The page cache a read connection may hold (`PRAGMA cache_size`), in bytes.
pub const READER_CACHE_BYTES: u64 = 8 << 20;

/// The page cache the write connection may hold (`PRAGMA cache_size`), in bytes.
pub const WRITER_CACHE_BYTES: u64 = 64 << 20;

/// The page cache of a [`bulk::BulkLoad`] (a rebuild's new desktop), in bytes. A rebuild holds
/// its plan meanwhile; a cache the size of the desktop (it was 256 MiB) would add some 150
/// bytes an object to its peak. Pages beyond it go to the file (no journal), and come back
/// from the kernel's page cache.
pub const BULK_CACHE_BYTES: u64 = 32 << 20;

/// How long the write connection waits for a lock another process holds.
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// The Mac type that marks an application.
pub const APPL: [u8; 4] = *b"APPL";

/// Errors of the desktop database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite failed; [`DbError::is_disk_full`] and the server's busy check look at its code.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Every ID up to [`LAST_USABLE_ID`] has been handed out; IDs are never reused, since a
    /// client may still hold an old one.
    #[error("ID space exhausted: no 32-bit ID is left in this volume (rebuild cannot help; IDs are never reused)")]
    IdSpaceExhausted,
    /// No object has this ID (never registered, or removed).
    #[error("no object with ID {0}")]
    NoSuchId(u32),
    /// The directory holds no object of this name.
    #[error("no object named {name:?} in directory {parent}")]
    NoSuchName {
        /// The directory's ID.
        parent: u32,
        /// The name looked for, lossily decoded for the message.
        name: String,
    },
    /// The name is taken in that directory; `(parent, name)` is unique.
    #[error("an object named {name:?} already exists in directory {parent} (ID {existing})")]
    Exists {
        /// The directory's ID.
        parent: u32,
        /// The name, lossily decoded for the message.
        name: String,
        /// The ID of the object that has it, so a caller can reuse or report it.
        existing: u32,
    },
    /// A directory was needed (as a parent, for a listing) and the object is not one.
    #[error("object {0} is not a directory")]
    NotADirectory(u32),
    /// A directory with children cannot be removed: its children would lose their parent.
    #[error("directory {0} is not empty")]
    NotEmpty(u32),
    /// A name no object may have; the second field says which rule it breaks.
    #[error("invalid name {0:?}: {1}")]
    InvalidName(String, &'static str),
    /// A move that would put a directory below itself and cut its subtree off the root.
    #[error("cannot move directory {0} into itself or one of its descendants")]
    IntoItself(u32),
    /// The root (ID 2) cannot be moved, renamed or deleted; the text says which was asked.
    #[error("the volume root cannot be {0}")]
    Root(&'static str),
    /// A desktop written by a newer deskd: opening it could lose what this one does not know.
    #[error(
        "desktop format {found} is newer than this deskd supports ({supported}); upgrade deskd"
    )]
    FormatTooNew {
        /// The file's `PRAGMA user_version`.
        found: i32,
        /// [`FORMAT_VERSION`], the newest this build reads.
        supported: i32,
    },
    /// An SQLite file without deskd's tables: not opened, so that it is not changed.
    #[error("the file is an SQLite database but not a deskd desktop")]
    NotADesktop,
    /// The desktop breaks one of its invariants (docs/desktop-format.md); the text says
    /// which. `deskd rebuild` repairs it.
    #[error("desktop is corrupt: {0}")]
    Corrupt(String),
    /// The file system of this file is full.
    #[error("{0}: no space left on the device")]
    NoSpace(std::path::PathBuf),
    // The I/O error is part of the message and deliberately not a `source`: printed with
    // anyhow's `{:#}` (as dt and deskd do) a source would be repeated after the message.
    /// A file operation beside SQLite failed: creating the desktop file, reading
    /// `/dev/urandom` for a fresh volume's identity, syncing a rewritten file. Not
    /// corruption: no desktop was damaged.
    #[error("cannot {op} {}: {error}", .path.display())]
    Io {
        /// What was being done, after "cannot": `read`, `sync`, `create the desktop`.
        op: &'static str,
        /// The file it was about.
        path: std::path::PathBuf,
        /// What the kernel said.
        error: std::io::Error,
    },
    /// The database cannot be reached or its session was lost (a PostgreSQL server stopped,
    /// restarting, or the network broke): not a refusal and not corruption. The server answers
    /// read-only and reconnects; the text says what the back end reported.
    #[error("the desktop database is unavailable: {0}")]
    Unavailable(String),
    /// Another writer held what this one needed for longer than it may wait (PostgreSQL: the
    /// volume's row lock past `busy_wait`, a deadlock, a serialization failure): nothing was
    /// done, and the same request may succeed when tried again. Not a lost database.
    #[error("the desktop is busy: {0}")]
    Busy(String),
    // Not a `source`, as with `Io`: the back end's message holds its causes already.
    /// Another back end (PostgreSQL) failed in a way none of the variants above names; the
    /// text is the back end's error with its causes.
    #[error("{0}")]
    Backend(String),
}

impl DbError {
    /// Whether SQLite said the file system is full (`SQLITE_FULL`). Some writes that fail
    /// for want of space (the `-shm` file's) report only an I/O error; callers that must know
    /// ask the file system how much is free.
    pub fn is_disk_full(&self) -> bool {
        match self {
            DbError::NoSpace(_) => true,
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            _ => false,
        }
    }
}

/// A desktop operation's result.
pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// What an object is: the protocol's type (one definition, see [`deskd_proto::Kind`]).
pub use deskd_proto::Kind;

/// The number a kind is stored as in the `objects` table's `kind` column. These numbers are
/// the desktop format: never change them (a unit test holds them).
fn kind_to_sql(kind: Kind) -> i64 {
    match kind {
        Kind::File => 0,
        Kind::Dir => 1,
        Kind::Symlink => 2,
    }
}

/// The kind a stored number stands for; an unknown number reads as a file.
fn kind_from_sql(v: i64) -> Kind {
    match v {
        1 => Kind::Dir,
        2 => Kind::Symlink,
        _ => Kind::File,
    }
}

/// The GLOB pattern (SQLite's rules, [`names::glob_matches`]) that a search key must match
/// for `mode` and the folded pattern: every back end's find matches with it.
pub fn find_glob(mode: FindMode, folded: &str) -> String {
    match mode {
        FindMode::Substring => format!("*{}*", names::glob_escape_literal(folded)),
        FindMode::Glob => folded.to_string(),
        FindMode::Prefix => format!("{}*", names::glob_escape_literal(folded)),
        FindMode::Exact => names::glob_escape_literal(folded),
    }
}

/// One row of the objects table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    /// The object's ID (the root is 2): what AFP clients keep, so it never changes.
    pub id: u32,
    /// The ID of the directory holding it (1 for the root).
    pub parent: u32,
    /// The name as bytes: Linux names need not be UTF-8.
    pub name: Vec<u8>,
    /// File, directory or symbolic link.
    pub kind: Kind,
    /// The device last seen for the object; with `ino`, how a moved object is recognised.
    pub dev: u64,
    /// The inode last seen for the object.
    pub ino: u64,
    /// The Mac type code (files default to `UNIX`).
    pub type_code: [u8; 4],
    /// The Mac creator code (files default to `UNKN`).
    pub creator: [u8; 4],
    /// The Finder flags.
    pub flags: u16,
    /// Unix time the object was registered.
    pub ctime: i64,
}

/// What a caller knows about an object it registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewObject {
    /// The directory it goes into, which must exist and be a directory.
    pub parent: u32,
    /// Its name (checked: 1–255 bytes, no `/` or NUL, not `.` or `..`).
    pub name: Vec<u8>,
    /// File, directory or symbolic link.
    pub kind: Kind,
    /// The device it is on.
    pub dev: u64,
    /// Its inode.
    pub ino: u64,
    /// The Mac type code.
    pub type_code: [u8; 4],
    /// The Mac creator code.
    pub creator: [u8; 4],
    /// The Finder flags.
    pub flags: u16,
    /// Unix time of the registration.
    pub ctime: i64,
    /// An ID to reuse if it is free (from a resource file or xattr mirror).
    pub hint: Option<u32>,
}

/// Mac information that can be changed on an object; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InfoUpdate {
    /// A new Mac type code.
    pub type_code: Option<[u8; 4]>,
    /// A new Mac creator code.
    pub creator: Option<[u8; 4]>,
    /// New Finder flags.
    pub flags: Option<u16>,
}

/// How a find pattern is matched against names: the protocol's type, so a `Find` request
/// reaches the database as it came.
pub use deskd_proto::FindMode;

/// A find request: results come in ascending ID order, after `after_id`, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindQuery {
    /// What names are matched against, folded like the names (see [`FindMode`]).
    pub pattern: String,
    /// How the pattern matches.
    pub mode: FindMode,
    /// Most results in one answer; callers page with `after_id`.
    pub limit: u32,
    /// Only IDs above this one (0 for the first page), so paging needs no server state.
    pub after_id: u32,
}

/// An APPL record: `app_id` is an application for documents of `creator`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplRecord {
    /// The creator code of the documents.
    pub creator: [u8; 4],
    /// The ID of the application; the record goes when the object does.
    pub app_id: u32,
    /// The client's tag (AFP's APPL tag), kept and returned as given.
    pub tag: u32,
}

/// An icon record, keyed by (creator, type, icon kind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IconRecord {
    /// The creator code the icon is for.
    pub creator: [u8; 4],
    /// The type code the icon is for.
    pub type_code: [u8; 4],
    /// The icon kind (AFP's icon type: `ICN#`, `icl8`, … as a number).
    pub itype: u8,
    /// The client's tag, kept and returned as given.
    pub tag: u32,
    /// The icon bitmap, as the client sent it.
    pub bitmap: Vec<u8>,
}

/// Counters of a desktop, for status displays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Registered objects, the root included.
    pub objects: u64,
    /// The highest ID handed out; the next new object gets a higher one.
    pub last_id: u32,
    /// The desktop format (`PRAGMA user_version`).
    pub format_version: i32,
}

/// How hard commits are pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// WAL + `synchronous=NORMAL`: a committed write survives a crash of the process.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is fsynced and survives power loss.
    Full,
}

/// Check that `name` may be stored as an object name.
pub fn validate_name(name: &[u8]) -> Result<()> {
    let shown = || String::from_utf8_lossy(name).into_owned();
    if name.is_empty() {
        return Err(DbError::InvalidName(shown(), "empty name"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(DbError::InvalidName(shown(), "longer than 255 bytes"));
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(DbError::InvalidName(shown(), "contains '/' or NUL"));
    }
    if name == b"." || name == b".." {
        return Err(DbError::InvalidName(shown(), "'.' and '..' are not names"));
    }
    Ok(())
}

/// The `objects` columns [`object_from_row`] reads, in its order: a macro, so that the hot
/// statements are whole literals (`concat!`), not a `format!` on every call.
macro_rules! object_columns {
    () => {
        "id, parent, name, kind, dev, ino, type, creator, flags, ctime"
    };
}
pub(crate) use object_columns;

pub(crate) const OBJECT_COLUMNS: &str = object_columns!();

fn four(v: Vec<u8>) -> [u8; 4] {
    let mut out = [0u8; 4];
    let n = v.len().min(4);
    out[..n].copy_from_slice(&v[..n]);
    out
}

pub(crate) fn object_from_row(r: &Row<'_>) -> rusqlite::Result<Object> {
    Ok(Object {
        id: r.get::<_, i64>(0)? as u32,
        parent: r.get::<_, i64>(1)? as u32,
        name: r.get(2)?,
        kind: kind_from_sql(r.get(3)?),
        dev: r.get::<_, i64>(4)? as u64,
        ino: r.get::<_, i64>(5)? as u64,
        type_code: four(r.get(6)?),
        creator: four(r.get(7)?),
        flags: r.get::<_, i64>(8)? as u16,
        ctime: r.get(9)?,
    })
}

fn meta_get(conn: &Connection, key: &str) -> Result<Option<i64>> {
    // Cached: the watcher's every batch asks for `last_id`.
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

/// An APPL row: `creator, app_id, tag`.
fn appl_from_row(r: &Row<'_>) -> rusqlite::Result<ApplRecord> {
    Ok(ApplRecord {
        creator: four(r.get(0)?),
        app_id: r.get::<_, i64>(1)? as u32,
        tag: r.get::<_, i64>(2)? as u32,
    })
}

/// An icon row: `creator, type, itype, tag, bitmap`.
fn icon_from_row(r: &Row<'_>) -> rusqlite::Result<IconRecord> {
    Ok(IconRecord {
        creator: four(r.get(0)?),
        type_code: four(r.get(1)?),
        itype: r.get::<_, i64>(2)? as u8,
        tag: r.get::<_, i64>(3)? as u32,
        bitmap: r.get(4)?,
    })
}

/// Insert one object row with its search key (no checks: callers check first).
fn insert_object(conn: &Connection, o: &Object, key: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO objects (id, parent, name, kind, dev, ino, type, creator, flags, ctime, skey)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        o.id,
        o.parent,
        o.name,
        kind_to_sql(o.kind),
        o.dev as i64,
        o.ino as i64,
        &o.type_code[..],
        &o.creator[..],
        o.flags,
        o.ctime,
        key,
    ])?;
    Ok(())
}

/// Set one `meta` value. The statement is cached: every commit that handed out an ID runs it
/// (the counter), and parsing it anew each time cost about a tenth of an ADD's time on the
/// writer's thread (docs/PERFORMANCE.md, "A directory's ADD").
/// Mark a session open: cleared until [`Desktop::close_clean`], so that the next open can tell
/// that this one ended without it.
fn mark_session_open(conn: &Connection) -> Result<()> {
    meta_set(conn, "clean", 0)?;
    meta_set(conn, "last_seen", now_unix())
}

fn meta_set(conn: &Connection, key: &str, value: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

/// The reads of a desktop, on any back end: shared by the write handle, its batches and
/// read-only connections. Object-safe (`&dyn Read`), so the server, rebuild, backup and find
/// are written once for SQLite ([`Reader`], [`Desktop`], [`Batch`]) and PostgreSQL (the
/// `deskd-pg` crate). Errors of a back end that cannot be reached are
/// [`DbError::Unavailable`].
pub trait Read {
    /// The object with this ID.
    fn get(&self, id: u32) -> Result<Object>;

    /// The objects of these IDs (ascending) that exist, in the same order; missing IDs are
    /// left out. What a name index confirms its candidates with: one round trip a window on
    /// a networked back end.
    fn get_many(&self, ids: &[u32]) -> Result<Vec<Object>>;

    /// The object called `name` in directory `parent`, if any.
    fn lookup(&self, parent: u32, name: &[u8]) -> Result<Option<Object>>;

    /// The children of a directory, in name order.
    fn children(&self, parent: u32) -> Result<Vec<Object>>;

    /// The names from the root down to `id` (empty for the root itself).
    fn path_of(&self, id: u32) -> Result<Vec<Vec<u8>>>;

    /// The [`Read::path_of`] of each of `ids`, in their order (`find` asks for its hits'
    /// folders at once: one round trip on a networked back end, where a call a folder was
    /// one each).
    fn paths_of(&self, ids: &[u32]) -> Result<Vec<Vec<Vec<u8>>>> {
        ids.iter().map(|&id| self.path_of(id)).collect()
    }

    /// The object `id` and its [`Read::path_of`] (a resolve): one round trip on a networked
    /// back end, where the two calls would be two.
    fn get_with_path(&self, id: u32) -> Result<(Object, Vec<Vec<u8>>)> {
        let object = self.get(id)?;
        let path = self.path_of(object.id)?;
        Ok((object, path))
    }

    /// The ID reached by walking `components` down from the root, if every step exists.
    fn id_of_path(&self, components: &[&[u8]]) -> Result<Option<u32>>;

    /// Objects whose names match `query`, in ID order, by scanning the table (the server
    /// answers from its [`NameIndex`] instead, and uses this only while the index loads).
    /// Matching is SQLite's GLOB on the search keys on every back end ([`names::glob_matches`]).
    fn find(&self, query: &FindQuery) -> Result<Vec<Object>>;

    /// The applications registered for `creator`, in ID order.
    fn appl_for(&self, creator: [u8; 4]) -> Result<Vec<ApplRecord>>;

    /// The icon for (creator, type, icon kind), if recorded.
    fn icon(&self, creator: [u8; 4], type_code: [u8; 4], itype: u8) -> Result<Option<IconRecord>>;

    /// Every object, in ID order (rebuild compares a whole desktop with the disk).
    fn all_objects(&self) -> Result<Vec<Object>>;

    /// Every object, in ID order, handed to `each` one at a time: [`Read::all_objects`] without
    /// holding them all (a rebuild keeps them more compactly than as `Object`s). `each` must
    /// not read through the same handle: PostgreSQL streams the rows on its one connection
    /// (that read fails there; SQLite allows it).
    fn for_each_object(&self, each: &mut dyn FnMut(Object)) -> Result<()>;

    /// How many objects the desktop has.
    fn object_count(&self) -> Result<u64>;

    /// Every Finder comment, by object ID.
    fn all_comments(&self) -> Result<Vec<(u32, Vec<u8>)>>;

    /// Every icon record.
    fn all_icons(&self) -> Result<Vec<IconRecord>>;

    /// Every APPL record.
    fn all_appl(&self) -> Result<Vec<ApplRecord>>;

    /// The icons recorded for a creator (AFP `FPGetIconInfo` iterates these).
    fn icons_for(&self, creator: [u8; 4]) -> Result<Vec<IconRecord>>;

    /// The Finder comment of an object, if any.
    fn comment(&self, id: u32) -> Result<Option<Vec<u8>>>;

    /// Object count, last allocated ID and format version.
    fn stats(&self) -> Result<Stats>;

    /// The quick logical check run at start-up: root present, no dangling parents, counter
    /// sane. Returns the problems found (empty when the desktop is sound).
    fn quick_check(&self) -> Result<Vec<String>>;

    /// The value of a numeric `meta` key.
    fn meta(&self, key: &str) -> Result<Option<i64>>;

    /// Every object's ID and search key ([`names::search_key`] of its name), in ID order,
    /// handed to `each` one at a time: what a [`NameIndex`] is loaded from.
    fn for_each_search_key(&self, each: &mut dyn FnMut(u32, &str)) -> Result<()>;
}
/// The WAL file SQLite keeps beside a desktop (`.Desktop-wal`).
pub fn wal_path(desktop: &Path) -> std::path::PathBuf {
    let mut s = desktop.as_os_str().to_os_string();
    s.push("-wal");
    s.into()
}

/// The shared-memory index SQLite keeps beside a desktop in WAL mode (`.Desktop-shm`).
pub fn shm_path(desktop: &Path) -> std::path::PathBuf {
    let mut s = desktop.as_os_str().to_os_string();
    s.push("-shm");
    s.into()
}

/// Fold a desktop's WAL into its main file and close it; no server may have it open.
pub fn checkpoint_file(path: &Path) -> Result<()> {
    let conn =
        Connection::open_with_flags(path, OpenFlags::default() | OpenFlags::SQLITE_OPEN_NOFOLLOW)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
    if busy != 0 {
        return Err(DbError::Corrupt(format!(
            "{}: another connection blocks the checkpoint",
            path.display()
        )));
    }
    conn.close().map_err(|(_, e)| DbError::from(e))?;
    Ok(())
}

/// The `meta` key of a desktop whose volume was moved out of a database (`deskd restore
/// --leave-postgresql`, `deskd migrate --to sqlite`); its value is when (Unix seconds). A
/// server configured with a database refuses to serve the volume from there while its SQLite
/// desktop says this (the database's copy is stale), also when the database could not be
/// told (a restore with `--ids-from-backup` and the database down).
pub const LEFT_DATABASE: &str = "left_database";

/// Note in the desktop file at `path` (not served: the caller holds its lock) that its volume
/// left its database now, or with `left == false` forget that (`deskd migrate --to` a
/// database: the file left behind is not the volume's desktop any more).
pub fn note_left_database(path: &Path, left: bool) -> Result<()> {
    note_left_database_at(path, left.then(now_unix))
}

/// [`note_left_database`] with the time it happened (`None`: forget it), for a note carried
/// from another desktop (a restore over one that had it).
pub fn note_left_database_at(path: &Path, when: Option<i64>) -> Result<()> {
    let conn =
        Connection::open_with_flags(path, OpenFlags::default() | OpenFlags::SQLITE_OPEN_NOFOLLOW)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    match when {
        Some(when) => meta_set(&conn, LEFT_DATABASE, when)?,
        None => {
            conn.execute("DELETE FROM meta WHERE key = ?1", params![LEFT_DATABASE])?;
        }
    }
    conn.close().map_err(|(_, e)| DbError::from(e))?;
    Ok(())
}

/// `file:` URI of `path` with `immutable=1`; every byte but the unreserved ones and `/` is
/// percent-encoded, so no name can add URI parameters.
fn immutable_uri(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?immutable=1");
    uri
}

/// A read-only connection to a desktop.
pub struct Reader {
    conn: Connection,
}

impl Reader {
    /// Open `path` read-only. Readers never block the writer (WAL).
    pub fn open(path: &Path) -> Result<Reader> {
        Reader::open_mapped(path, false, MMAP_SIZE as u64)
    }

    /// Open `path` read-only as an immutable file: no lock, no `-shm`, no `-wal` (nothing is
    /// created or written, so it works on a full file system). Only for a desktop that nothing
    /// writes and whose WAL is empty or gone: committed frames in a WAL would not be seen.
    pub fn open_immutable(path: &Path) -> Result<Reader> {
        Reader::open_mapped(path, true, MMAP_SIZE as u64)
    }

    /// [`Reader::open`] (or [`Reader::open_immutable`]) mapping at most `mmap_bytes` of the
    /// file (0: no mapping, pages are read with `pread(2)`). The limit is set before the
    /// first page is read, so no larger mapping ever exists.
    pub fn open_mapped(path: &Path, immutable: bool, mmap_bytes: u64) -> Result<Reader> {
        let conn = if immutable {
            Connection::open_with_flags(
                immutable_uri(path),
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI,
            )?
        } else {
            // A read-only open creates the shared-memory file when it is missing, with the
            // main file's mode: that must be private first.
            files::make_private(path);
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(Duration::from_secs(5))?;
            conn
        };
        // Map the file: page reads become memory reads instead of pread(2) calls.
        conn.pragma_update(None, "mmap_size", mmap_bytes.min(MMAP_SIZE as u64) as i64)?;
        conn.pragma_update(None, "query_only", true)?;
        conn.pragma_update(None, "cache_size", -((READER_CACHE_BYTES >> 10) as i64))?;
        Ok(Reader { conn })
    }

    /// Change how much of the file this connection maps. Only between snapshots (SQLite
    /// ignores the change while pages are in use): returns false, changing nothing, when a
    /// snapshot is open.
    pub fn set_mmap_size(&self, mmap_bytes: u64) -> Result<bool> {
        if !self.conn.is_autocommit() {
            return Ok(false);
        }
        self.conn
            .pragma_update(None, "mmap_size", mmap_bytes.min(MMAP_SIZE as u64) as i64)?;
        Ok(true)
    }

    /// Start one read snapshot for several reads (one WAL read lock instead of one per
    /// statement). Reads see the state as of the first read after this call.
    pub fn begin_snapshot(&self) -> Result<()> {
        if self.conn.is_autocommit() {
            // Cached: a connection begins and ends a snapshot per request (afpd's ADD of a new
            // object looks it up here first), and `execute_batch` parses the text each time.
            self.conn.prepare_cached("BEGIN")?.execute([])?;
        }
        Ok(())
    }

    /// End the snapshot started by [`Reader::begin_snapshot`] (no-op when none is open), so
    /// the next read sees the newest commit and checkpoints are not held back.
    pub fn end_snapshot(&self) -> Result<()> {
        if !self.conn.is_autocommit() {
            self.conn.prepare_cached("COMMIT")?.execute([])?;
        }
        Ok(())
    }
}

impl SqliteConn for Reader {
    fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// What opening a desktop found out about its previous session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// True when the file was created by this open.
    pub created: bool,
    /// False when the previous session did not shut down cleanly.
    pub was_clean: bool,
    /// Unix time of the previous session's last recorded activity (its open, or its first
    /// write when opened with [`Desktop::open_for_serving`], or its clean shutdown).
    pub last_seen: i64,
}

/// The write handle of a desktop. Exactly one exists per volume (the server's writer thread).
pub struct Desktop {
    conn: Connection,
    last_id: u32,
    /// Told about every committed name change, when attached.
    names: Option<Arc<NameIndex>>,
    /// Told which objects every committed batch changed, when attached.
    touches: Option<Arc<TouchLog>>,
    /// The session is not yet marked open (`clean = 0`): the next batch marks it in its own
    /// transaction ([`Desktop::open_for_serving`]).
    unmarked: bool,
}

/// The IDs whose rows committed batches changed while recording is on. An online rebuild
/// starts recording before it reads its snapshot, and leaves every recorded object to the
/// clients that changed it: their change is newer than anything the rebuild saw.
#[derive(Debug, Default)]
pub struct TouchLog {
    recording: std::sync::Mutex<Option<std::collections::HashSet<u32>>>,
}

impl TouchLog {
    /// Start (or restart) recording with an empty set.
    pub fn start(&self) {
        *self.recording.lock().unwrap() = Some(Default::default());
    }

    /// Stop recording and return what was recorded.
    pub fn take(&self) -> std::collections::HashSet<u32> {
        self.recording.lock().unwrap().take().unwrap_or_default()
    }

    /// What was recorded so far (recording goes on).
    pub fn peek(&self) -> std::collections::HashSet<u32> {
        self.recording.lock().unwrap().clone().unwrap_or_default()
    }

    fn record(&self, ids: &[u32]) {
        if let Some(set) = self.recording.lock().unwrap().as_mut() {
            set.extend(ids.iter().copied());
        }
    }
}

impl SqliteConn for Desktop {
    fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// Seconds since the Unix epoch (0 for a clock set before it): the one clock of the
/// workspace's records (the desktop's `created`/`last_seen`, the server's flush and freeze
/// times, backup manifests).
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Desktop {
    /// Open (creating if missing) the desktop at `path`, migrate it, make sure the root exists
    /// and mark the session open (the clean flag is cleared until [`Desktop::close_clean`]).
    pub fn open(path: &Path, durability: Durability) -> Result<(Desktop, OpenReport)> {
        Self::open_marking(path, durability, true)
    }

    /// Like [`Desktop::open`], but an existing desktop is not written at all until the first
    /// batch, which marks the session open in its own transaction. The server answers reads
    /// right after a start (a restart after a crash included) instead of after a commit and
    /// its `fsync`. Nothing is lost: until that first batch the desktop is exactly what the
    /// previous session left, so a crash before it leaves the previous session's mark, clean
    /// or not, and that mark is still true. A new desktop is written at once, as by `open`.
    pub fn open_for_serving(path: &Path, durability: Durability) -> Result<(Desktop, OpenReport)> {
        Self::open_marking(path, durability, false)
    }

    fn open_marking(
        path: &Path,
        durability: Durability,
        mark_now: bool,
    ) -> Result<(Desktop, OpenReport)> {
        // A missing or empty file (the server may have created it to lock it) is new.
        let created = std::fs::metadata(path)
            .map(|m| m.len() == 0)
            .unwrap_or(true);
        // Private before SQLite opens it: the WAL and shared-memory files take its mode.
        files::create_private(path).map_err(|error| DbError::Io {
            op: "create the desktop",
            path: path.to_path_buf(),
            error,
        })?;
        files::make_private(path);
        // Never through a link: one put in place of the desktop (in a root its users may
        // write) would have deskd turn any empty file it names into a desktop.
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::default() | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )?;
        conn.busy_timeout(WRITER_BUSY_TIMEOUT)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(DbError::Corrupt(format!(
                "cannot switch to WAL journal (got {mode})"
            )));
        }
        set_synchronous(&conn, durability)?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // 64 MiB of page cache: index pages of a large volume stay in memory between batches.
        conn.pragma_update(None, "cache_size", -((WRITER_CACHE_BYTES >> 10) as i64))?;
        conn.pragma_update(None, "mmap_size", MMAP_SIZE)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&mut conn)?;

        let was_clean = meta_get(&conn, "clean")?.map(|v| v != 0).unwrap_or(true);
        let last_seen = meta_get(&conn, "last_seen")?.unwrap_or(0);
        let unmarked = !mark_now && Self::complete(&conn)?;
        if !unmarked {
            Self::complete_and_mark(&mut conn)?;
        }
        let last_id = meta_get(&conn, "last_id")?.unwrap_or((FIRST_ID - 1) as i64) as u32;
        Ok((
            Desktop {
                conn,
                last_id,
                names: None,
                touches: None,
                unmarked,
            },
            OpenReport {
                created,
                was_clean: created || was_clean,
                last_seen,
            },
        ))
    }

    /// Whether the desktop has its creation records and its root: nothing to write at open.
    fn complete(conn: &Connection) -> Result<bool> {
        Ok(meta_get(conn, "created")?.is_some()
            && conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM objects WHERE id = ?1)",
                [ROOT_ID],
                |r| r.get(0),
            )?)
    }

    /// Write what a new desktop lacks (creation records, the root) and mark the session open.
    fn complete_and_mark(conn: &mut Connection) -> Result<()> {
        let tx = conn.transaction()?;
        if meta_get(&tx, "created")?.is_none() {
            meta_set(&tx, "created", now_unix())?;
            meta_set(&tx, "last_id", (FIRST_ID - 1) as i64)?;
            let uuid = random_u64()?;
            meta_set(&tx, "volume_uuid", uuid as i64)?;
        }
        let root_exists: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM objects WHERE id = ?1)",
            [ROOT_ID],
            |r| r.get(0),
        )?;
        if !root_exists {
            tx.execute(
                "INSERT INTO objects (id, parent, name, kind, skey, ctime) VALUES (?1, ?2, x'', 1, '', ?3)",
                params![ROOT_ID, ROOT_PARENT_ID, now_unix()],
            )?;
        }
        mark_session_open(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// Keep `index` in step with every batch committed from now on.
    pub fn attach_name_index(&mut self, index: Arc<NameIndex>) {
        self.names = Some(index);
    }

    /// Record the IDs every batch committed from now on changes (while `log` records).
    pub fn attach_touch_log(&mut self, log: Arc<TouchLog>) {
        self.touches = Some(log);
    }

    /// Start a batch: one transaction for many requests (group commit).
    pub fn batch(&mut self) -> Result<Batch<'_>> {
        let tx = write_tx::WriteTx::begin_immediate(&self.conn)?;
        Ok(Batch {
            tx,
            last_id_at_start: self.last_id,
            last_id: &mut self.last_id,
            names: self.names.as_deref(),
            changes: Vec::new(),
            touches: self.touches.as_deref(),
            touched: Vec::new(),
            unmarked: &mut self.unmarked,
        })
    }

    /// Start a batch, waiting at most `wait` (not the writer's usual 2 s) for a write lock
    /// another process holds: the server's writer tries again and again while an `sqlite3`
    /// session holds the lock, and between its short tries it serves its control jobs.
    pub fn batch_within(&mut self, wait: Duration) -> Result<Batch<'_>> {
        self.conn.busy_timeout(wait)?;
        // A shared borrow (the writer's connection is never in a transaction between
        // batches), so that a failed start can put the usual wait back.
        let tx = match write_tx::WriteTx::begin_immediate(&self.conn) {
            Ok(tx) => tx,
            Err(e) => {
                self.conn.busy_timeout(WRITER_BUSY_TIMEOUT)?;
                return Err(e.into());
            }
        };
        tx.busy_timeout(WRITER_BUSY_TIMEOUT)?;
        Ok(Batch {
            tx,
            last_id_at_start: self.last_id,
            last_id: &mut self.last_id,
            names: self.names.as_deref(),
            changes: Vec::new(),
            touches: self.touches.as_deref(),
            touched: Vec::new(),
            unmarked: &mut self.unmarked,
        })
    }

    /// Checkpoint the WAL into the main file and empty the WAL file (TRUNCATE), waiting at most
    /// `wait` for readers of older snapshots to finish. When readers still hold it back, SQLite
    /// copies what it can and reports busy. The wait blocks this connection, the only writer,
    /// so callers that must not hold up writes pass a short one: a backup or an `sqlite3`
    /// session may hold its snapshot for minutes.
    /// Returns (busy, frames in WAL, frames checkpointed).
    pub fn checkpoint(&self, wait: Duration) -> Result<(i64, i64, i64)> {
        let done = self.checkpoint_in(CheckpointMode::Truncate, wait)?;
        Ok((done.busy as i64, done.frames, done.checkpointed))
    }

    /// Checkpoint on the write connection in `mode`, waiting at most `wait` for readers of
    /// older snapshots (see [`Desktop::checkpoint`]).
    pub fn checkpoint_in(&self, mode: CheckpointMode, wait: Duration) -> Result<CheckpointOutcome> {
        wal::checkpoint_on(&self.conn, mode, wait, WRITER_BUSY_TIMEOUT)
    }

    /// Keep the WAL file at most `bytes` long when SQLite restarts it from its start after a
    /// complete checkpoint (`PRAGMA journal_size_limit`): a WAL that grew past it (a reader
    /// held checkpoints back) is cut back then; one within it is reused as it is, with no
    /// truncation on the write path.
    pub fn set_wal_size_limit(&self, bytes: u64) -> Result<()> {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let _: i64 =
            self.conn
                .query_row(&format!("PRAGMA journal_size_limit = {bytes}"), [], |r| {
                    r.get(0)
                })?;
        Ok(())
    }

    /// Record a clean shutdown and flush everything into the main file. The WAL is emptied
    /// first, so the two rows of the clean mark never need space the WAL already took (on a
    /// full file system the mark may still fail: then the WAL is emptied all the same, and
    /// the error says the mark is missing).
    pub fn close_clean(self) -> Result<()> {
        let first = self.checkpoint(WRITER_BUSY_TIMEOUT);
        let marked = meta_set(&self.conn, "clean", 1)
            .and_then(|_| meta_set(&self.conn, "last_seen", now_unix()));
        self.checkpoint(WRITER_BUSY_TIMEOUT)?;
        first?;
        marked
    }

    /// Change the durability of the commits from now on (a reloaded configuration).
    pub fn set_durability(&self, durability: Durability) -> Result<()> {
        set_synchronous(&self.conn, durability)
    }

    /// The durability in force, as SQLite reports it (`PRAGMA synchronous`).
    pub fn durability(&self) -> Result<Durability> {
        let level: i64 = self
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        Ok(if level >= 2 {
            Durability::Full
        } else {
            Durability::Normal
        })
    }
}

pub(crate) fn set_synchronous(conn: &Connection, durability: Durability) -> Result<()> {
    let level = match durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", level)?;
    Ok(())
}

fn random_u64() -> Result<u64> {
    use std::io::Read as _;
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|error| DbError::Io {
            op: "read",
            path: "/dev/urandom".into(),
            error,
        })?;
    Ok(u64::from_le_bytes(bytes))
}

/// One write transaction. Dropping it without [`Batch::commit`] rolls everything back.
pub struct Batch<'a> {
    tx: write_tx::WriteTx<'a>,
    last_id: &'a mut u32,
    /// The counter when the batch began: a batch that handed out no ID leaves the stored
    /// counter as it is (one page less in the WAL for a DELETE or a rename).
    last_id_at_start: u32,
    names: Option<&'a NameIndex>,
    /// Name changes, handed to the name index once the commit succeeded.
    changes: Vec<NameChange>,
    touches: Option<&'a TouchLog>,
    /// IDs this batch changed, handed to the touch log once the commit succeeded.
    touched: Vec<u32>,
    /// The desktop's "session not yet marked open": this batch's commit marks it.
    unmarked: &'a mut bool,
}

impl SqliteConn for Batch<'_> {
    fn conn(&self) -> &Connection {
        &self.tx
    }
}

impl Batch<'_> {
    /// SQLite's `data_version` read inside this batch's write lock: it changes whenever
    /// another connection commits to the desktop. Read here rather than before `BEGIN
    /// IMMEDIATE`, so that no other commit can come between the reading and the batch.
    pub fn others_commits(&self) -> Result<i64> {
        Ok(self
            .tx
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?)
    }

    /// A mark of the name changes made so far, for [`Batch::changed_since`].
    pub fn change_mark(&self) -> usize {
        self.changes.len()
    }

    /// The name changes this batch made since `mark` (new or renamed objects, removed ones), in
    /// order: what one request did, without looking it up again.
    pub fn changed_since(&self, mark: usize) -> &[NameChange] {
        self.changes.get(mark..).unwrap_or_default()
    }

    /// Run one request in a savepoint: if it fails, only its own changes are undone.
    pub fn step<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.tx.prepare_cached("SAVEPOINT step")?.execute([])?;
        let changes_mark = self.changes.len();
        let touched_mark = self.touched.len();
        match f(self) {
            Ok(v) => {
                self.tx.prepare_cached("RELEASE step")?.execute([])?;
                Ok(v)
            }
            Err(e) => {
                self.tx
                    .execute_batch("ROLLBACK TO step; RELEASE step")
                    .map_err(DbError::from)?;
                self.changes.truncate(changes_mark);
                self.touched.truncate(touched_mark);
                Err(e)
            }
        }
    }

    /// The ID counter as this batch has left it so far: the highest ID handed out.
    pub fn counter(&self) -> u32 {
        *self.last_id
    }

    /// Commit the batch (the counter is stored with it).
    pub fn commit(self) -> Result<()> {
        // IDs a rolled-back batch handed out were never stored with an object, so a counter
        // stored lower than the one in memory reuses none; the next batch that hands out an
        // ID stores it.
        if *self.last_id != self.last_id_at_start {
            meta_set(&self.tx, "last_id", *self.last_id as i64)?;
        }
        if *self.unmarked {
            mark_session_open(&self.tx)?;
        }
        self.tx.commit()?;
        *self.unmarked = false;
        if let Some(index) = self.names {
            index.apply(&self.changes);
        }
        if let Some(log) = self.touches {
            log.record(&self.touched);
        }
        Ok(())
    }

    fn id_taken(&self, id: u32) -> Result<bool> {
        Ok(self
            .tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM objects WHERE id = ?1)")?
            .query_row([id], |r| r.get(0))?)
    }

    fn require_dir(&self, id: u32) -> Result<()> {
        let kind: Option<i64> = self
            .tx
            .prepare_cached("SELECT kind FROM objects WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        match kind {
            None => Err(DbError::NoSuchId(id)),
            Some(k) if kind_from_sql(k) != Kind::Dir => Err(DbError::NotADirectory(id)),
            Some(_) => Ok(()),
        }
    }

    /// Pick the ID for a new object: the hint when it is usable and free, else the next free
    /// counter value. The counter never moves backwards, so IDs are never reused.
    fn allocate(&mut self, hint: Option<u32>) -> Result<u32> {
        if let Some(h) = hint {
            if !ids::is_forbidden(h) && !self.id_taken(h)? {
                *self.last_id = (*self.last_id).max(h);
                return Ok(h);
            }
        }
        // The counter is at least every ID in use (hints raise it), so the next candidate is
        // free; were the desktop corrupt, the primary key would refuse the insert rather than
        // reuse an ID.
        let candidate = ids::next_candidate(*self.last_id).ok_or(DbError::IdSpaceExhausted)?;
        *self.last_id = candidate;
        Ok(candidate)
    }

    /// Register a new object and return it with `true`. If the name is already registered in
    /// that directory, the existing object is returned with `false` (lookup-or-add; the rules
    /// are [`write_batch::lookup_or_add`]'s, shared with every store).
    pub fn add(&mut self, new: &NewObject) -> Result<(Object, bool)> {
        write_batch::lookup_or_add(self, new)
    }

    /// Insert a new object's row (checked by [`write_batch::lookup_or_add`]) with its search
    /// key, noting the name change and the touched ID.
    fn insert_new(&mut self, object: &Object) -> Result<()> {
        let key = names::search_key(&object.name);
        insert_object(&self.tx, object, &key)?;
        self.changes.push(NameChange::Set(object.id, key));
        self.touched.push(object.id);
        Ok(())
    }

    /// Update the recorded device and inode of an object (after a copy-replace on disk), and
    /// `ctime`, the new inode's change time: the record describes that inode since then (a
    /// newer file that gets the same inode number later is born after it).
    pub fn set_devino(&mut self, id: u32, dev: u64, ino: u64, ctime: i64) -> Result<()> {
        let n = self
            .tx
            .prepare_cached("UPDATE objects SET dev = ?2, ino = ?3, ctime = ?4 WHERE id = ?1")?
            .execute(params![id, dev as i64, ino as i64, ctime])?;
        if n == 0 {
            return Err(DbError::NoSuchId(id));
        }
        self.touched.push(id);
        Ok(())
    }

    /// Move and/or rename an object; its ID and its descendants' IDs stay. With `replace`, an
    /// object already at the destination is removed first (as `rename(2)` replaces it).
    /// Returns the IDs removed by the replacement.
    pub fn rename(
        &mut self,
        id: u32,
        new_parent: u32,
        new_name: &[u8],
        replace: bool,
    ) -> Result<Vec<u32>> {
        validate_name(new_name)?;
        if id == ROOT_ID {
            return Err(DbError::Root("renamed"));
        }
        let object = self.get(id)?;
        self.require_dir(new_parent)?;
        if object.kind == Kind::Dir {
            // Refuse a move into itself or a descendant.
            let mut cursor = new_parent;
            while cursor != ROOT_ID && cursor != ROOT_PARENT_ID {
                if cursor == id {
                    return Err(DbError::IntoItself(id));
                }
                cursor = self.get(cursor)?.parent;
            }
        }
        let mut removed = Vec::new();
        if let Some(existing) = self.lookup(new_parent, new_name)? {
            if existing.id == id {
                return Ok(removed);
            }
            if !replace {
                return Err(DbError::Exists {
                    parent: new_parent,
                    name: String::from_utf8_lossy(new_name).into_owned(),
                    existing: existing.id,
                });
            }
            removed = self.delete(existing.id, true)?;
        }
        let new_key = names::search_key(new_name);
        self.tx
            .prepare_cached("UPDATE objects SET parent = ?2, name = ?3, skey = ?4 WHERE id = ?1")?
            .execute(params![id, new_parent, new_name, new_key])?;
        self.changes.push(NameChange::Set(id, new_key));
        self.touched.push(id);
        Ok(removed)
    }

    /// [`Batch::rename`] with `replace` of records read in this batch
    /// ([`WriteBatch::rename_read`](crate::WriteBatch::rename_read)): a file's rename is the
    /// update alone (no read of the object, of its new folder, or of the name there: the
    /// caller's reads, made in this batch, are taken as they are); a folder's goes through
    /// the checked one (never into itself).
    pub fn rename_read(
        &mut self,
        object: &Object,
        new_parent: &Object,
        new_name: &[u8],
        displaced: Option<&Object>,
    ) -> Result<Vec<u32>> {
        if object.kind == Kind::Dir || new_parent.kind != Kind::Dir || object.id == ROOT_ID {
            return self.rename(object.id, new_parent.id, new_name, true);
        }
        validate_name(new_name)?;
        let mut removed = Vec::new();
        if let Some(existing) = displaced {
            if existing.id == object.id {
                return Ok(removed);
            }
            removed = self.delete(existing.id, true)?;
        }
        let new_key = names::search_key(new_name);
        self.tx
            .prepare_cached("UPDATE objects SET parent = ?2, name = ?3, skey = ?4 WHERE id = ?1")?
            .execute(params![object.id, new_parent.id, new_name, new_key])?;
        self.changes.push(NameChange::Set(object.id, new_key));
        self.touched.push(object.id);
        Ok(removed)
    }

    /// Remove an object; with `recursive`, a directory and everything below it. Returns the
    /// removed IDs. Removed IDs are never handed out again.
    pub fn delete(&mut self, id: u32, recursive: bool) -> Result<Vec<u32>> {
        if id == ROOT_ID {
            return Err(DbError::Root("deleted"));
        }
        let object = self.get(id)?;
        let rows: Vec<u32> = if object.kind == Kind::Dir {
            let mut stmt = self.tx.prepare_cached(
                "WITH RECURSIVE sub(id) AS (
                    SELECT ?1 UNION ALL SELECT o.id FROM objects o JOIN sub ON o.parent = sub.id)
                 SELECT id FROM sub",
            )?;
            let rows = stmt.query_map([id], |r| Ok(r.get::<_, i64>(0)? as u32))?;
            rows.collect::<rusqlite::Result<_>>()?
        } else {
            vec![id]
        };
        if rows.len() > 1 && !recursive {
            return Err(DbError::NotEmpty(id));
        }
        let mut stmt = self
            .tx
            .prepare_cached("DELETE FROM objects WHERE id = ?1")?;
        // Children first, so no row is ever left without its parent.
        for removed in rows.iter().rev() {
            stmt.execute([removed])?;
        }
        drop(stmt);
        self.changes
            .extend(rows.iter().map(|&removed| NameChange::Remove(removed)));
        self.touched.extend_from_slice(&rows);
        Ok(rows)
    }

    /// Change Mac type, creator or Finder flags. A type of `APPL` registers the object as its
    /// creator's application; changing it away unregisters it.
    pub fn set_info(&mut self, id: u32, update: &InfoUpdate) -> Result<Object> {
        let mut object = self.get(id)?;
        if let Some(t) = update.type_code {
            object.type_code = t;
        }
        if let Some(c) = update.creator {
            object.creator = c;
        }
        if let Some(f) = update.flags {
            object.flags = f;
        }
        self.tx
            .prepare_cached("UPDATE objects SET type = ?2, creator = ?3, flags = ?4 WHERE id = ?1")?
            .execute(params![
                id,
                &object.type_code[..],
                &object.creator[..],
                object.flags
            ])?;
        self.touched.push(id);
        Ok(object)
    }

    /// Add an APPL record (AFP `FPAddAPPL`): `app_id` opens documents of `creator`.
    pub fn appl_add(&mut self, record: &ApplRecord) -> Result<()> {
        self.get(record.app_id)?;
        self.tx.execute(
            "INSERT INTO appl (creator, app_id, tag) VALUES (?1, ?2, ?3)
             ON CONFLICT (creator, app_id) DO UPDATE SET tag = excluded.tag",
            params![&record.creator[..], record.app_id, record.tag],
        )?;
        Ok(())
    }

    /// Remove an APPL record; returns whether one was there.
    pub fn appl_remove(&mut self, creator: [u8; 4], app_id: u32) -> Result<bool> {
        Ok(self.tx.execute(
            "DELETE FROM appl WHERE creator = ?1 AND app_id = ?2",
            params![&creator[..], app_id],
        )? > 0)
    }

    /// Add or replace an icon record.
    pub fn icon_add(&mut self, icon: &IconRecord) -> Result<()> {
        self.tx.execute(
            "INSERT INTO icons (creator, type, itype, tag, bitmap) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (creator, type, itype) DO UPDATE SET tag = excluded.tag, bitmap = excluded.bitmap",
            params![
                &icon.creator[..],
                &icon.type_code[..],
                icon.itype,
                icon.tag,
                icon.bitmap
            ],
        )?;
        Ok(())
    }

    /// Set (replace) the Finder comment of an object.
    pub fn comment_set(&mut self, id: u32, text: &[u8]) -> Result<()> {
        self.get(id)?;
        self.tx.execute(
            "INSERT INTO comments (id, text) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET text = excluded.text",
            params![id, text],
        )?;
        Ok(())
    }

    /// Remove the Finder comment of an object; returns whether one was there.
    pub fn comment_remove(&mut self, id: u32) -> Result<bool> {
        Ok(self
            .tx
            .execute("DELETE FROM comments WHERE id = ?1", [id])?
            > 0)
    }

    /// A new ID from the counter (never one handed out before), for a rebuild's new objects.
    pub fn allocate_id(&mut self) -> Result<u32> {
        self.allocate(None)
    }

    /// Insert `o` with its own ID (a rebuild restoring an ID from the disk). The ID and the
    /// place must be free and the parent a directory; the counter rises to the ID.
    pub fn insert_with_id(&mut self, o: &Object) -> Result<()> {
        validate_name(&o.name)?;
        if ids::is_forbidden(o.id) || self.id_taken(o.id)? {
            return Err(DbError::Corrupt(format!("ID {} is not free", o.id)));
        }
        self.require_dir(o.parent)?;
        if let Some(existing) = self.lookup(o.parent, &o.name)? {
            return Err(DbError::Exists {
                parent: o.parent,
                name: String::from_utf8_lossy(&o.name).into_owned(),
                existing: existing.id,
            });
        }
        let key = names::search_key(&o.name);
        insert_object(&self.tx, o, &key)?;
        *self.last_id = (*self.last_id).max(o.id);
        self.changes.push(NameChange::Set(o.id, key));
        Ok(())
    }

    /// Overwrite the row of `o.id` with `o` (place, kind, inode, Mac info): a rebuild making the
    /// desktop say what the disk says. The place must be free and not inside the object itself.
    pub fn overwrite(&mut self, o: &Object) -> Result<()> {
        validate_name(&o.name)?;
        if o.id == ROOT_ID {
            return Err(DbError::Root("moved"));
        }
        self.require_dir(o.parent)?;
        let mut cursor = o.parent;
        while cursor != ROOT_ID && cursor != ROOT_PARENT_ID {
            if cursor == o.id {
                return Err(DbError::IntoItself(o.id));
            }
            cursor = self.get(cursor)?.parent;
        }
        if let Some(existing) = self.lookup(o.parent, &o.name)? {
            if existing.id != o.id {
                return Err(DbError::Exists {
                    parent: o.parent,
                    name: String::from_utf8_lossy(&o.name).into_owned(),
                    existing: existing.id,
                });
            }
        }
        let key = names::search_key(&o.name);
        let n = self
            .tx
            .prepare_cached(
                "UPDATE objects SET parent = ?2, name = ?3, skey = ?4, kind = ?5, dev = ?6,
                 ino = ?7, type = ?8, creator = ?9, flags = ?10 WHERE id = ?1",
            )?
            .execute(params![
                o.id,
                o.parent,
                o.name,
                key,
                kind_to_sql(o.kind),
                o.dev as i64,
                o.ino as i64,
                &o.type_code[..],
                &o.creator[..],
                o.flags
            ])?;
        if n == 0 {
            return Err(DbError::NoSuchId(o.id));
        }
        self.changes.push(NameChange::Set(o.id, key));
        Ok(())
    }

    /// Move the row of `id` out of its place to a name no file can have (it contains `/`),
    /// so another object can take the place; a rebuild then overwrites or removes it.
    pub fn park(&mut self, id: u32) -> Result<()> {
        let name = format!("park/{id}");
        self.tx
            .prepare_cached("UPDATE objects SET name = ?2, skey = ?3 WHERE id = ?1")?
            .execute(params![
                id,
                name.as_bytes(),
                names::search_key(name.as_bytes())
            ])?;
        self.changes.push(NameChange::Remove(id));
        Ok(())
    }

    /// Set the allocation counter (tests and migration tools); it never moves backwards.
    pub fn raise_counter(&mut self, at_least: u32) {
        *self.last_id = (*self.last_id).max(at_least);
    }
}

#[cfg(test)]
mod tests;
