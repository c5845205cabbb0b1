//! The desktop schema and its forward migrations, keyed by `PRAGMA user_version`.
//!
//! `docs/desktop-format.md` documents every table, index and invariant defined here.

use rusqlite::{Connection, OptionalExtension};

use crate::DbError;

/// The format version this build writes. Older files are migrated forward on open.
pub const FORMAT_VERSION: i32 = 2;

/// Version 1, as first released; later versions are steps on top of it.
pub(crate) const SCHEMA_V1: &str = r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value ANY NOT NULL
) STRICT;

CREATE TABLE objects (
    id      INTEGER PRIMARY KEY,
    parent  INTEGER NOT NULL,
    name    BLOB NOT NULL,
    kind    INTEGER NOT NULL CHECK (kind IN (0, 1, 2)),
    dev     INTEGER NOT NULL DEFAULT 0,
    ino     INTEGER NOT NULL DEFAULT 0,
    type    BLOB NOT NULL DEFAULT x'00000000' CHECK (length(type) = 4),
    creator BLOB NOT NULL DEFAULT x'00000000' CHECK (length(creator) = 4),
    flags   INTEGER NOT NULL DEFAULT 0,
    ctime   INTEGER NOT NULL DEFAULT 0,
    skey    TEXT NOT NULL,
    UNIQUE (parent, name)
) STRICT;
CREATE INDEX objects_devino ON objects (dev, ino);


-- Kept in step by deskd-db itself (not by triggers): a trigger would give every insert a
-- statement journal, and FTS5 writes its whole in-memory index out at each one.
CREATE VIRTUAL TABLE names_fts USING fts5 (
    skey, content = 'objects', content_rowid = 'id', tokenize = 'trigram', detail = 'none'
);
-- An object whose type is APPL is its creator's application (seed 002).
CREATE TABLE appl (
    creator BLOB NOT NULL CHECK (length(creator) = 4),
    app_id  INTEGER NOT NULL REFERENCES objects (id) ON DELETE CASCADE,
    tag     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (creator, app_id)
) STRICT;
CREATE INDEX appl_app ON appl (app_id);
CREATE TRIGGER appl_register AFTER INSERT ON objects WHEN new.type = x'4150504C' BEGIN
    INSERT OR IGNORE INTO appl (creator, app_id, tag) VALUES (new.creator, new.id, 0);
END;
CREATE TRIGGER appl_reregister AFTER UPDATE OF type, creator ON objects BEGIN
    DELETE FROM appl WHERE app_id = old.id AND old.type = x'4150504C' AND creator = old.creator;
    INSERT OR IGNORE INTO appl (creator, app_id, tag)
        SELECT new.creator, new.id, 0 WHERE new.type = x'4150504C';
END;

CREATE TABLE icons (
    creator BLOB NOT NULL CHECK (length(creator) = 4),
    type    BLOB NOT NULL CHECK (length(type) = 4),
    itype   INTEGER NOT NULL,
    tag     INTEGER NOT NULL DEFAULT 0,
    bitmap  BLOB NOT NULL,
    PRIMARY KEY (creator, type, itype)
) STRICT;

CREATE TABLE comments (
    id   INTEGER PRIMARY KEY REFERENCES objects (id) ON DELETE CASCADE,
    text BLOB NOT NULL
) STRICT;
"#;

/// Version 2: the name index moved out of the file (deskd-db's `name_index`, in memory), so the
/// writer no longer pays for FTS5 on every new name; the (dev, ino) index, which no query used,
/// is gone too (one B-tree insert less per new object).
const V1_TO_V2: &str = "DROP TABLE names_fts; DROP INDEX objects_devino;";

/// Bring `conn` to [`FORMAT_VERSION`], creating the schema on an empty file.
pub fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    let version: i32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > FORMAT_VERSION {
        return Err(DbError::FormatTooNew {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version == FORMAT_VERSION {
        return Ok(());
    }
    let tx = conn.transaction()?;
    if version < 1 {
        let has_tables: Option<String> = tx
            .query_row(
                "SELECT name FROM sqlite_master WHERE type = 'table' LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if has_tables.is_some() {
            return Err(DbError::NotADesktop);
        }
        tx.execute_batch(SCHEMA_V1)?;
    }
    if version < 2 {
        tx.execute_batch(V1_TO_V2)?;
    }
    // Future versions: `if version < 3 { ... }` steps go here, each forward only.
    tx.pragma_update(None, "user_version", FORMAT_VERSION)?;
    tx.commit()?;
    Ok(())
}
