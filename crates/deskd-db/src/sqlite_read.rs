//! The SQLite implementation of [`Read`]: every read is SQL on the handle's connection, with
//! the hot statements (get, lookup, children, path walks) in the connection's prepared-statement
//! cache. [`Reader`](crate::Reader), [`Desktop`](crate::Desktop), [`Batch`](crate::Batch) and
//! [`BulkLoad`](crate::bulk::BulkLoad) implement [`SqliteConn`] and get [`Read`] from it.

use rusqlite::{params, Connection, OptionalExtension};

use crate::{
    appl_from_row, find_glob, icon_from_row, meta_get, names, object_columns, object_from_row,
    ApplRecord, DbError, FindQuery, IconRecord, Kind, Object, Read, Result, Stats, OBJECT_COLUMNS,
    ROOT_ID, ROOT_PARENT_ID,
};

/// A handle on an SQLite desktop: its connection (the old `Read::conn`, now crate-private).
pub(crate) trait SqliteConn {
    /// The connection the reads run on.
    fn conn(&self) -> &Connection;
}

/// One object by ID: the statement of every resolve and of find's confirmations.
const GET: &str = concat!("SELECT ", object_columns!(), " FROM objects WHERE id = ?1");

impl<T: SqliteConn> Read for T {
    /// The object with this ID.
    fn get(&self, id: u32) -> Result<Object> {
        self.conn()
            .prepare_cached(GET)?
            .query_row([id], object_from_row)
            .optional()?
            .ok_or(DbError::NoSuchId(id))
    }

    fn get_many(&self, ids: &[u32]) -> Result<Vec<Object>> {
        // One statement for the window (not a cache lookup per ID).
        let mut stmt = self.conn().prepare_cached(GET)?;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(object) = stmt.query_row([id], object_from_row).optional()? {
                out.push(object);
            }
        }
        Ok(out)
    }

    /// The object called `name` in directory `parent`, if any.
    fn lookup(&self, parent: u32, name: &[u8]) -> Result<Option<Object>> {
        Ok(self
            .conn()
            .prepare_cached(concat!(
                "SELECT ",
                object_columns!(),
                " FROM objects WHERE parent = ?1 AND name = ?2"
            ))?
            .query_row(params![parent, name], object_from_row)
            .optional()?)
    }

    /// The children of a directory, in name order.
    fn children(&self, parent: u32) -> Result<Vec<Object>> {
        let mut stmt = self.conn().prepare_cached(concat!(
            "SELECT ",
            object_columns!(),
            " FROM objects WHERE parent = ?1 ORDER BY name"
        ))?;
        let rows = stmt.query_map([parent], object_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The names from the root down to `id` (empty for the root itself).
    fn path_of(&self, id: u32) -> Result<Vec<Vec<u8>>> {
        let mut components = Vec::new();
        let mut current = id;
        let mut stmt = self
            .conn()
            .prepare_cached("SELECT parent, name FROM objects WHERE id = ?1")?;
        while current != ROOT_ID {
            let (parent, name): (i64, Vec<u8>) = stmt
                .query_row([current], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .ok_or(DbError::NoSuchId(current))?;
            components.push(name);
            if components.len() > 4096 {
                return Err(DbError::Corrupt(format!("parent loop above ID {id}")));
            }
            current = parent as u32;
        }
        components.reverse();
        Ok(components)
    }

    /// The ID reached by walking `components` down from the root, if every step exists.
    fn id_of_path(&self, components: &[&[u8]]) -> Result<Option<u32>> {
        let mut current = ROOT_ID;
        let mut stmt = self
            .conn()
            .prepare_cached("SELECT id FROM objects WHERE parent = ?1 AND name = ?2")?;
        for name in components {
            match stmt
                .query_row(params![current, name], |r| r.get::<_, i64>(0))
                .optional()?
            {
                Some(id) => current = id as u32,
                None => return Ok(None),
            }
        }
        Ok(Some(current))
    }

    /// Objects whose names match `query`, in ID order, by scanning the table (the server
    /// answers from its [`NameIndex`] instead, and uses this only while the index loads).
    fn find(&self, query: &FindQuery) -> Result<Vec<Object>> {
        let folded = names::fold_pattern(&query.pattern);
        let mut stmt = self.conn().prepare_cached(&format!(
            "SELECT {OBJECT_COLUMNS} FROM objects
             WHERE skey GLOB ?1 AND id > ?2 AND id != ?4 ORDER BY id LIMIT ?3"
        ))?;
        let rows = stmt.query_map(
            params![
                find_glob(query.mode, &folded),
                query.after_id,
                query.limit.max(1),
                ROOT_ID
            ],
            object_from_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The applications registered for `creator`, in ID order.
    fn appl_for(&self, creator: [u8; 4]) -> Result<Vec<ApplRecord>> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT creator, app_id, tag FROM appl WHERE creator = ?1 ORDER BY app_id",
        )?;
        let rows = stmt.query_map([&creator[..]], appl_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The icon for (creator, type, icon kind), if recorded.
    fn icon(&self, creator: [u8; 4], type_code: [u8; 4], itype: u8) -> Result<Option<IconRecord>> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT tag, bitmap FROM icons WHERE creator = ?1 AND type = ?2 AND itype = ?3",
            )?
            .query_row(params![&creator[..], &type_code[..], itype], |r| {
                Ok(IconRecord {
                    creator,
                    type_code,
                    itype,
                    tag: r.get::<_, i64>(0)? as u32,
                    bitmap: r.get(1)?,
                })
            })
            .optional()?)
    }

    /// Every object, in ID order (rebuild compares a whole desktop with the disk).
    fn all_objects(&self) -> Result<Vec<Object>> {
        let mut stmt = self
            .conn()
            .prepare(&format!("SELECT {OBJECT_COLUMNS} FROM objects ORDER BY id"))?;
        let rows = stmt.query_map([], object_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every object, in ID order, handed to `each` one at a time: [`Read::all_objects`] without
    /// holding them all (a rebuild keeps them more compactly than as `Object`s).
    fn for_each_object(&self, each: &mut dyn FnMut(Object)) -> Result<()> {
        let mut stmt = self
            .conn()
            .prepare(&format!("SELECT {OBJECT_COLUMNS} FROM objects ORDER BY id"))?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            each(object_from_row(row)?);
        }
        Ok(())
    }

    /// How many objects the desktop has.
    fn object_count(&self) -> Result<u64> {
        Ok(self
            .conn()
            .query_row("SELECT count(*) FROM objects", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    /// Every Finder comment, by object ID.
    fn all_comments(&self) -> Result<Vec<(u32, Vec<u8>)>> {
        let mut stmt = self
            .conn()
            .prepare("SELECT id, text FROM comments ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u32, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every icon record.
    fn all_icons(&self) -> Result<Vec<IconRecord>> {
        let mut stmt = self
            .conn()
            .prepare("SELECT creator, type, itype, tag, bitmap FROM icons")?;
        let rows = stmt.query_map([], icon_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every APPL record.
    fn all_appl(&self) -> Result<Vec<ApplRecord>> {
        let mut stmt = self
            .conn()
            .prepare("SELECT creator, app_id, tag FROM appl")?;
        let rows = stmt.query_map([], appl_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The icons recorded for a creator (AFP `FPGetIconInfo` iterates these).
    fn icons_for(&self, creator: [u8; 4]) -> Result<Vec<IconRecord>> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT creator, type, itype, tag, bitmap FROM icons WHERE creator = ?1 ORDER BY type, itype",
        )?;
        let rows = stmt.query_map([&creator[..]], icon_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The Finder comment of an object, if any.
    fn comment(&self, id: u32) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn()
            .prepare_cached("SELECT text FROM comments WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?)
    }

    /// Object count, last allocated ID and format version.
    fn stats(&self) -> Result<Stats> {
        let objects: i64 = self
            .conn()
            .query_row("SELECT count(*) FROM objects", [], |r| r.get(0))?;
        Ok(Stats {
            objects: objects as u64,
            last_id: meta_get(self.conn(), "last_id")?.unwrap_or(0) as u32,
            format_version: self
                .conn()
                .query_row("PRAGMA user_version", [], |r| r.get(0))?,
        })
    }

    /// The quick logical check run at start-up: root present, no dangling parents, counter
    /// sane. Returns the problems found (empty when the desktop is sound).
    fn quick_check(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        match self.get(ROOT_ID) {
            Ok(root) if root.parent == ROOT_PARENT_ID && root.kind == Kind::Dir => {}
            Ok(_) => problems.push("the root record (ID 2) is malformed".to_string()),
            Err(DbError::NoSuchId(_)) => problems.push("the root record (ID 2) is missing".into()),
            Err(e) => return Err(e),
        }
        let dangling: i64 = self.conn().query_row(
            "SELECT count(*) FROM objects o WHERE o.id != ?1
             AND NOT EXISTS (SELECT 1 FROM objects p WHERE p.id = o.parent AND p.kind = 1)",
            [ROOT_ID],
            |r| r.get(0),
        )?;
        if dangling > 0 {
            problems.push(format!(
                "{dangling} object(s) have a missing or non-directory parent"
            ));
        }
        let max_id: i64 =
            self.conn()
                .query_row("SELECT coalesce(max(id), 0) FROM objects", [], |r| r.get(0))?;
        let last = meta_get(self.conn(), "last_id")?.unwrap_or(0);
        if last < max_id {
            problems.push(format!(
                "the ID counter ({last}) is below the largest ID in use ({max_id})"
            ));
        }
        Ok(problems)
    }

    /// The value of a numeric `meta` key.
    fn meta(&self, key: &str) -> Result<Option<i64>> {
        meta_get(self.conn(), key)
    }

    fn for_each_search_key(&self, each: &mut dyn FnMut(u32, &str)) -> Result<()> {
        let mut stmt = self
            .conn()
            .prepare("SELECT id, skey FROM objects ORDER BY id")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let id = row.get::<_, i64>(0)? as u32;
            let key = row.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
            each(id, key);
        }
        Ok(())
    }
}
