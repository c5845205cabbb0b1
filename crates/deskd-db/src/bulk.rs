//! Writing a whole new desktop file at once (`deskd rebuild`).
//!
//! A rebuild decides every row before it writes any, so the new file is written without a
//! journal and without per-row checks, in one transaction, and made durable and switched to WAL
//! only at the end. The caller writes it under a temporary name and renames it over `.Desktop`
//! once [`BulkLoad::finish`] returned: until then the old desktop is untouched, so a rebuild
//! killed at any moment leaves a desktop the server can open.

use std::path::Path;

use rusqlite::{params, Connection};

use crate::{
    meta_set, names, ApplRecord, DbError, IconRecord, Object, Read, Result, BULK_CACHE_BYTES,
};

/// A new desktop file being filled.
pub struct BulkLoad {
    conn: Connection,
}

/// What the new desktop keeps from its predecessor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Unix time the volume's desktop was first created.
    pub created: i64,
    /// The desktop's random name.
    pub volume_uuid: i64,
}

impl Identity {
    /// A new identity: created now, with a fresh random name.
    pub fn fresh() -> Result<Identity> {
        Ok(Identity {
            created: crate::now_unix(),
            volume_uuid: crate::random_u64()? as i64,
        })
    }
}

impl crate::sqlite_read::SqliteConn for BulkLoad {
    fn conn(&self) -> &Connection {
        &self.conn
    }
}

impl BulkLoad {
    /// Create a new, empty desktop at `path` (which must not exist, not even as a dangling
    /// symbolic link) with the current schema. SQLite is told not to follow a link there
    /// either: the path is in a directory users may write (the volume root), and a link
    /// planted between the check and the open must not have the desktop written elsewhere.
    pub fn create(path: &Path) -> Result<BulkLoad> {
        // Made here, new and private (0600), before SQLite opens it: SQLite would create it
        // with the umask's mode, readable by every user, and its journal and WAL take its mode.
        match crate::files::create_new_private(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(DbError::Corrupt(format!(
                    "{}: already exists; refusing to overwrite",
                    path.display()
                )))
            }
            Err(error) => {
                return Err(DbError::Io {
                    op: "create",
                    path: path.to_path_buf(),
                    error,
                })
            }
        }
        let mut conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::default() | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )?;
        conn.pragma_update(None, "journal_mode", "OFF")?;
        conn.pragma_update(None, "synchronous", "OFF")?;
        conn.pragma_update(None, "cache_size", -((BULK_CACHE_BYTES >> 10) as i64))?;
        crate::schema::migrate(&mut conn)?;
        conn.execute_batch("BEGIN")?;
        Ok(BulkLoad { conn })
    }

    /// Insert one object row exactly as given (the root included; the caller guarantees unique
    /// IDs, unique (parent, name) and parents before children).
    pub fn insert(&mut self, o: &Object) -> Result<()> {
        crate::insert_object(&self.conn, o, &names::search_key(&o.name))
    }

    /// Set a Finder comment.
    pub fn add_comment(&mut self, id: u32, text: &[u8]) -> Result<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO comments (id, text) VALUES (?1, ?2)")?
            .execute(params![id, text])?;
        Ok(())
    }

    /// Keep an icon record.
    pub fn add_icon(&mut self, icon: &IconRecord) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO icons (creator, type, itype, tag, bitmap) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                &icon.creator[..],
                &icon.type_code[..],
                icon.itype,
                icon.tag,
                icon.bitmap
            ])?;
        Ok(())
    }

    /// Keep an APPL record (its application must have been inserted).
    pub fn add_appl(&mut self, record: &ApplRecord) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO appl (creator, app_id, tag) VALUES (?1, ?2, ?3)
                 ON CONFLICT (creator, app_id) DO UPDATE SET tag = excluded.tag",
            )?
            .execute(params![&record.creator[..], record.app_id, record.tag])?;
        Ok(())
    }

    /// Carry the note that the volume left its database ([`crate::LEFT_DATABASE`], `when`
    /// in Unix seconds) into the new desktop: a rebuild or restore that dropped it let a
    /// server still configured with `backend` serve the database's stale copy again.
    pub fn keep_left_database(&mut self, when: i64) -> Result<()> {
        crate::meta_set(&self.conn, crate::LEFT_DATABASE, when)
    }

    /// Drop every APPL record, those the objects' trigger registered included: a migration
    /// then adds exactly the records its source has (one removed there stays removed).
    pub fn clear_appl(&mut self) -> Result<()> {
        self.conn.execute("DELETE FROM appl", [])?;
        Ok(())
    }

    /// Write the counter and identity, commit, switch the file to WAL and sync it to disk.
    /// The file is complete and closed when this returns.
    pub fn finish(self, last_id: u32, identity: Identity) -> Result<()> {
        meta_set(&self.conn, "created", identity.created)?;
        meta_set(&self.conn, "volume_uuid", identity.volume_uuid)?;
        meta_set(&self.conn, "last_id", last_id as i64)?;
        meta_set(&self.conn, "clean", 1)?;
        meta_set(&self.conn, "last_seen", crate::now_unix())?;
        self.conn.execute_batch("COMMIT")?;
        let problems = self.quick_check()?;
        if !problems.is_empty() {
            return Err(DbError::Corrupt(problems.join("; ")));
        }
        let conn = self.conn;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(DbError::Corrupt(format!(
                "cannot switch to WAL journal (got {mode})"
            )));
        }
        let path = conn.path().map(std::path::PathBuf::from);
        conn.close().map_err(|(_, e)| DbError::from(e))?;
        if let Some(path) = path {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|error| DbError::Io {
                    op: "sync",
                    path: path.clone(),
                    error,
                })?;
        }
        Ok(())
    }
}
