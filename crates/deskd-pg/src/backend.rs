//! deskd-db's storage traits on PostgreSQL: [`deskd_db::Read`] for [`PgDesktop`] and
//! [`PgBatch`], [`deskd_db::WriteBatch`] for [`PgBatch`] and [`deskd_db::Store`] for
//! [`PgDesktop`], so code written against the traits runs on either back end. Errors become [`DbError`]s: the desktop's own rules as they are, a
//! lost or unreachable database as [`DbError::Unavailable`] (the server's read-only path),
//! anything else as [`DbError::Backend`] with PostgreSQL's words.
//!
//! A reader's reads take `&self` (the traits' shape): the connection or transaction sits in a
//! `RefCell`, so a desktop or batch is used by one thread at a time, as a server's reader is.

use std::cell::{RefCell, RefMut};
use std::time::Duration;

use deskd_db::{
    names, ApplRecord, DbError, Durability, FindQuery, IconRecord, InfoUpdate, Kind, NameChange,
    NewObject, Object, Read, Stats, Store, WriteBatch, ROOT_ID, ROOT_PARENT_ID,
};
use postgres::fallible_iterator::FallibleIterator;
use postgres::GenericClient;

use crate::error::PgError;
use crate::store::{
    four, object_from_row, read, Db, PgBatch, PgDesktop, OBJECT_COLUMNS, ROWS_OF_IDS,
};

impl From<PgError> for DbError {
    fn from(e: PgError) -> DbError {
        match e {
            PgError::Desktop(rule) => rule,
            e if e.is_unavailable() => DbError::Unavailable(e.to_string()),
            e if e.is_busy() => DbError::Busy(e.to_string()),
            e => DbError::Backend(e.to_string()),
        }
    }
}

type DbResult<T> = deskd_db::Result<T>;

fn pg<T>(r: Result<T, postgres::Error>) -> DbResult<T> {
    r.map_err(|e| DbError::from(PgError::from(e)))
}

/// The connection of a `&self` read. Busy only when a callback of a streaming read
/// (`for_each_object`, `for_each_search_key`) reads through the same handle: PostgreSQL is still
/// sending the stream on that connection, so that is refused rather than a panic.
fn borrow<T>(cell: &RefCell<T>) -> DbResult<RefMut<'_, T>> {
    cell.try_borrow_mut().map_err(|_| {
        DbError::Backend(
            "this PostgreSQL connection is streaming a read: a for_each callback may not read \
             through the same handle"
                .into(),
        )
    })
}

/// The reads [`deskd_db::Read`] has beyond the ones the store answered already.
mod more {
    use super::*;

    pub fn id_of_path(
        c: &mut Db<'_, impl GenericClient>,
        vid: i64,
        components: &[&[u8]],
    ) -> DbResult<Option<u32>> {
        let mut current = ROOT_ID;
        for name in components {
            match read::lookup(c, vid, current, name)? {
                Some(o) => current = o.id,
                None => return Ok(None),
            }
        }
        Ok(Some(current))
    }

    /// The table scan of [`Read::find`]: search keys streamed in ID order, matched by SQLite's
    /// GLOB rule ([`names::glob_matches`]), so both back ends answer alike.
    pub fn find(
        c: &mut Db<'_, impl GenericClient>,
        vid: i64,
        query: &FindQuery,
    ) -> DbResult<Vec<Object>> {
        let folded = names::fold_pattern(&query.pattern);
        let glob = deskd_db::find_glob(query.mode, &folded);
        let limit = query.limit.max(1) as usize;
        let mut hits = Vec::new();
        {
            let mut rows = pg(c.query_raw(
                "SELECT id, skey FROM deskd.objects WHERE vid = $1 AND id > $2 AND id <> $3
                 ORDER BY id",
                [&vid, &i64::from(query.after_id), &i64::from(ROOT_ID)],
            ))?;
            while let Some(row) = pg(rows.next())? {
                if names::glob_matches(&glob, row.get(1)) {
                    hits.push(row.get::<_, i64>(0) as u32);
                    if hits.len() == limit {
                        break;
                    }
                }
            }
        }
        get_many(c, vid, &hits)
    }

    pub fn get_many(
        c: &mut Db<'_, impl GenericClient>,
        vid: i64,
        ids: &[u32],
    ) -> DbResult<Vec<Object>> {
        let ids: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
        Ok(pg(c.query(
            &format!("SELECT {OBJECT_COLUMNS} FROM {ROWS_OF_IDS} ORDER BY id"),
            &[&vid, &ids],
        ))?
        .iter()
        .map(object_from_row)
        .collect())
    }

    pub fn for_each_object(
        c: &mut Db<'_, impl GenericClient>,
        vid: i64,
        each: &mut dyn FnMut(Object),
    ) -> DbResult<()> {
        let mut rows = pg(c.query_raw(
            &format!("SELECT {OBJECT_COLUMNS} FROM deskd.objects WHERE vid = $1 ORDER BY id"),
            [&vid],
        ))?;
        while let Some(row) = pg(rows.next())? {
            each(object_from_row(&row));
        }
        Ok(())
    }

    pub fn for_each_search_key(
        c: &mut Db<'_, impl GenericClient>,
        vid: i64,
        each: &mut dyn FnMut(u32, &str),
    ) -> DbResult<()> {
        let mut rows = pg(c.query_raw(
            "SELECT id, skey FROM deskd.objects WHERE vid = $1 ORDER BY id",
            [&vid],
        ))?;
        while let Some(row) = pg(rows.next())? {
            each(row.get::<_, i64>(0) as u32, row.get(1));
        }
        Ok(())
    }

    pub fn object_count(c: &mut Db<'_, impl GenericClient>, vid: i64) -> DbResult<u64> {
        let row = pg(c.query_one("SELECT count(*) FROM deskd.objects WHERE vid = $1", &[&vid]))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    pub fn all_comments(
        c: &mut Db<'_, impl GenericClient>,
        vid: i64,
    ) -> DbResult<Vec<(u32, Vec<u8>)>> {
        Ok(pg(c.query(
            "SELECT id, text FROM deskd.comments WHERE vid = $1 ORDER BY id",
            &[&vid],
        ))?
        .iter()
        .map(|r| (r.get::<_, i64>(0) as u32, r.get(1)))
        .collect())
    }

    fn icons_where(
        c: &mut Db<'_, impl GenericClient>,
        vid: i64,
        creator: Option<[u8; 4]>,
    ) -> DbResult<Vec<IconRecord>> {
        let creator = creator.map(|c| c.to_vec());
        Ok(pg(c.query(
            "SELECT creator, type, itype, tag, bitmap FROM deskd.icons
             WHERE vid = $1 AND ($2::bytea IS NULL OR creator = $2) ORDER BY creator, type, itype",
            &[&vid, &creator],
        ))?
        .iter()
        .map(crate::store::icon_from_row)
        .collect())
    }

    pub fn all_icons(c: &mut Db<'_, impl GenericClient>, vid: i64) -> DbResult<Vec<IconRecord>> {
        icons_where(c, vid, None)
    }

    pub fn icons_for(
        c: &mut Db<'_, impl GenericClient>,
        vid: i64,
        creator: [u8; 4],
    ) -> DbResult<Vec<IconRecord>> {
        icons_where(c, vid, Some(creator))
    }

    pub fn all_appl(c: &mut Db<'_, impl GenericClient>, vid: i64) -> DbResult<Vec<ApplRecord>> {
        Ok(pg(c.query(
            "SELECT creator, app_id, tag FROM deskd.appl WHERE vid = $1 ORDER BY creator, app_id",
            &[&vid],
        ))?
        .iter()
        .map(|r| ApplRecord {
            creator: four(r.get(0)),
            app_id: r.get::<_, i64>(1) as u32,
            tag: r.get::<_, i64>(2) as u32,
        })
        .collect())
    }

    /// A numeric `meta` key. The SQLite desktop's `last_id`, `created` and `volume_uuid` are
    /// columns of the volume's row here; other keys are rows of `deskd.meta`.
    pub fn meta(c: &mut Db<'_, impl GenericClient>, vid: i64, key: &str) -> DbResult<Option<i64>> {
        let column = match key {
            "last_id" => Some("last_id"),
            "created" => Some("created"),
            "volume_uuid" => Some("identity"),
            _ => None,
        };
        let row = match column {
            Some(column) => pg(c.query_opt(
                &format!("SELECT {column} FROM deskd.volume WHERE vid = $1"),
                &[&vid],
            ))?,
            None => pg(c.query_opt(
                "SELECT value FROM deskd.meta WHERE vid = $1 AND key = $2",
                &[&vid, &key],
            ))?,
        };
        Ok(row.map(|r| r.get(0)))
    }

    pub fn stats(c: &mut Db<'_, impl GenericClient>, vid: i64) -> DbResult<Stats> {
        let row = pg(c.query_one(
            "SELECT (SELECT count(*) FROM deskd.objects WHERE vid = $1),
                    (SELECT last_id FROM deskd.volume WHERE vid = $1),
                    (SELECT version FROM deskd.format)",
            &[&vid],
        ))?;
        Ok(Stats {
            objects: row.get::<_, i64>(0) as u64,
            last_id: row.get::<_, Option<i64>>(1).unwrap_or(0) as u32,
            format_version: row.get(2),
        })
    }

    /// The start-up check of the SQLite desktop, in the same words.
    pub fn quick_check(c: &mut Db<'_, impl GenericClient>, vid: i64) -> DbResult<Vec<String>> {
        let mut problems = Vec::new();
        match read::get(c, vid, ROOT_ID).map_err(DbError::from) {
            Ok(root) if root.parent == ROOT_PARENT_ID && root.kind == Kind::Dir => {}
            Ok(_) => problems.push("the root record (ID 2) is malformed".to_string()),
            Err(DbError::NoSuchId(_)) => problems.push("the root record (ID 2) is missing".into()),
            Err(e) => return Err(e),
        }
        let row = pg(c.query_one(
            "SELECT
                (SELECT count(*) FROM deskd.objects o WHERE o.vid = $1 AND o.id <> $2
                 AND NOT EXISTS (SELECT 1 FROM deskd.objects p
                                 WHERE p.vid = $1 AND p.id = o.parent AND p.kind = 1)),
                (SELECT coalesce(max(id), 0) FROM deskd.objects WHERE vid = $1),
                (SELECT last_id FROM deskd.volume WHERE vid = $1)",
            &[&vid, &i64::from(ROOT_ID)],
        ))?;
        let dangling: i64 = row.get(0);
        let max_id: i64 = row.get(1);
        let last: i64 = row.get::<_, Option<i64>>(2).unwrap_or(0);
        if dangling > 0 {
            problems.push(format!(
                "{dangling} object(s) have a missing or non-directory parent"
            ));
        }
        if last < max_id {
            problems.push(format!(
                "the ID counter ({last}) is below the largest ID in use ({max_id})"
            ));
        }
        Ok(problems)
    }
}

impl PgDesktop {
    /// The connection of a read (`flush` means nothing here: a desktop buffers nothing).
    fn conn(&self, _flush: bool) -> DbResult<RefMut<'_, postgres::Client>> {
        borrow(&self.client)
    }

    /// A desktop buffers no rows.
    fn buffered(&self, _id: u32) -> Option<Object> {
        None
    }
}

impl<'a> PgBatch<'a> {
    /// The transaction of a read: the running steps' savepoints sent and, with `flush`, the
    /// rows this batch buffered written first, so the read sees them.
    fn conn(&self, flush: bool) -> DbResult<RefMut<'_, postgres::Transaction<'a>>> {
        Ok(self.ready(flush)?)
    }
}

/// `impl Read` for a type holding its PostgreSQL client (or transaction) in `RefCell` field
/// `$cell` (reached through its `conn`) and its volume's key in `vid`.
macro_rules! pg_read {
    ($ty:ty, $cell:ident, $st:ident) => {
        impl Read for $ty {
            fn get(&self, id: u32) -> DbResult<Object> {
                if let Some(o) = self.buffered(id) {
                    return Ok(o);
                }
                Ok(read::get(
                    &mut Db::new(&mut *self.conn(false)?, &self.$st),
                    self.vid,
                    id,
                )?)
            }
            fn get_many(&self, ids: &[u32]) -> DbResult<Vec<Object>> {
                more::get_many(
                    &mut Db::new(&mut *self.conn(true)?, &self.$st),
                    self.vid,
                    ids,
                )
            }
            fn lookup(&self, parent: u32, name: &[u8]) -> DbResult<Option<Object>> {
                if let Some(hit) = self.place_hit(parent, name) {
                    return Ok(hit);
                }
                Ok(read::lookup(
                    &mut Db::new(&mut *self.conn(false)?, &self.$st),
                    self.vid,
                    parent,
                    name,
                )?)
            }
            fn children(&self, parent: u32) -> DbResult<Vec<Object>> {
                Ok(read::children(
                    &mut Db::new(&mut *self.conn(true)?, &self.$st),
                    self.vid,
                    parent,
                )?)
            }
            fn path_of(&self, id: u32) -> DbResult<Vec<Vec<u8>>> {
                Ok(read::path_of(
                    &mut Db::new(&mut *self.conn(true)?, &self.$st),
                    self.vid,
                    id,
                )?)
            }
            fn paths_of(&self, ids: &[u32]) -> DbResult<Vec<Vec<Vec<u8>>>> {
                Ok(read::paths_of(
                    &mut Db::new(&mut *self.conn(true)?, &self.$st),
                    self.vid,
                    ids,
                )?)
            }
            fn get_with_path(&self, id: u32) -> DbResult<(Object, Vec<Vec<u8>>)> {
                Ok(read::get_with_path(
                    &mut Db::new(&mut *self.conn(true)?, &self.$st),
                    self.vid,
                    id,
                )?)
            }
            fn id_of_path(&self, components: &[&[u8]]) -> DbResult<Option<u32>> {
                more::id_of_path(
                    &mut Db::new(&mut *self.conn(true)?, &self.$st),
                    self.vid,
                    components,
                )
            }
            fn find(&self, query: &FindQuery) -> DbResult<Vec<Object>> {
                more::find(
                    &mut Db::new(&mut *self.conn(true)?, &self.$st),
                    self.vid,
                    query,
                )
            }
            fn appl_for(&self, creator: [u8; 4]) -> DbResult<Vec<ApplRecord>> {
                Ok(read::appl_for(
                    &mut Db::new(&mut *self.conn(true)?, &self.$st),
                    self.vid,
                    creator,
                )?)
            }
            fn icon(
                &self,
                creator: [u8; 4],
                type_code: [u8; 4],
                itype: u8,
            ) -> DbResult<Option<IconRecord>> {
                let mut c = self.conn(false)?;
                Ok(read::icon(
                    &mut Db::new(&mut *c, &self.$st),
                    self.vid,
                    creator,
                    type_code,
                    itype,
                )?)
            }
            fn all_objects(&self) -> DbResult<Vec<Object>> {
                let mut all = Vec::new();
                self.for_each_object(&mut |o| all.push(o))?;
                Ok(all)
            }
            fn for_each_object(&self, each: &mut dyn FnMut(Object)) -> DbResult<()> {
                more::for_each_object(
                    &mut Db::new(&mut *self.conn(true)?, &self.$st),
                    self.vid,
                    each,
                )
            }
            fn object_count(&self) -> DbResult<u64> {
                more::object_count(&mut Db::new(&mut *self.conn(true)?, &self.$st), self.vid)
            }
            fn all_comments(&self) -> DbResult<Vec<(u32, Vec<u8>)>> {
                more::all_comments(&mut Db::new(&mut *self.conn(true)?, &self.$st), self.vid)
            }
            fn all_icons(&self) -> DbResult<Vec<IconRecord>> {
                more::all_icons(&mut Db::new(&mut *self.conn(true)?, &self.$st), self.vid)
            }
            fn all_appl(&self) -> DbResult<Vec<ApplRecord>> {
                more::all_appl(&mut Db::new(&mut *self.conn(true)?, &self.$st), self.vid)
            }
            fn icons_for(&self, creator: [u8; 4]) -> DbResult<Vec<IconRecord>> {
                more::icons_for(
                    &mut Db::new(&mut *self.conn(true)?, &self.$st),
                    self.vid,
                    creator,
                )
            }
            fn comment(&self, id: u32) -> DbResult<Option<Vec<u8>>> {
                Ok(read::comment(
                    &mut Db::new(&mut *self.conn(true)?, &self.$st),
                    self.vid,
                    id,
                )?)
            }
            fn stats(&self) -> DbResult<Stats> {
                more::stats(&mut Db::new(&mut *self.conn(true)?, &self.$st), self.vid)
            }
            fn quick_check(&self) -> DbResult<Vec<String>> {
                more::quick_check(&mut Db::new(&mut *self.conn(true)?, &self.$st), self.vid)
            }
            fn meta(&self, key: &str) -> DbResult<Option<i64>> {
                more::meta(
                    &mut Db::new(&mut *self.conn(true)?, &self.$st),
                    self.vid,
                    key,
                )
            }
            fn for_each_search_key(&self, each: &mut dyn FnMut(u32, &str)) -> DbResult<()> {
                more::for_each_search_key(
                    &mut Db::new(&mut *self.conn(true)?, &self.$st),
                    self.vid,
                    each,
                )
            }
        }
    };
}

pg_read!(PgDesktop, client, statements);
pg_read!(PgBatch<'_>, tx, st);

impl WriteBatch for PgBatch<'_> {
    fn add(&mut self, new: &NewObject) -> DbResult<(Object, bool)> {
        Ok(PgBatch::add(self, new)?)
    }

    fn add_absent(&mut self, new: &NewObject) -> DbResult<Object> {
        Ok(deskd_db::write_batch::add_absent(self, new)?)
    }

    fn prefetch_places(&mut self, places: &[(u32, &[u8])]) -> DbResult<()> {
        Ok(PgBatch::prefetch_places(self, places)?)
    }

    fn set_devino(&mut self, id: u32, dev: u64, ino: u64, ctime: i64) -> DbResult<()> {
        Ok(PgBatch::set_devino(self, id, dev, ino, ctime)?)
    }

    fn rename(
        &mut self,
        id: u32,
        new_parent: u32,
        new_name: &[u8],
        replace: bool,
    ) -> DbResult<Vec<u32>> {
        Ok(PgBatch::rename(self, id, new_parent, new_name, replace)?)
    }

    fn delete(&mut self, id: u32, recursive: bool) -> DbResult<Vec<u32>> {
        Ok(PgBatch::delete(self, id, recursive)?)
    }

    fn set_info(&mut self, id: u32, update: &InfoUpdate) -> DbResult<Object> {
        Ok(PgBatch::set_info(self, id, update)?)
    }

    fn appl_add(&mut self, record: &ApplRecord) -> DbResult<()> {
        Ok(PgBatch::appl_add(self, record)?)
    }

    fn appl_remove(&mut self, creator: [u8; 4], app_id: u32) -> DbResult<bool> {
        Ok(PgBatch::appl_remove(self, creator, app_id)?)
    }

    fn icon_add(&mut self, icon: &IconRecord) -> DbResult<()> {
        Ok(PgBatch::icon_add(self, icon)?)
    }

    fn comment_set(&mut self, id: u32, text: &[u8]) -> DbResult<()> {
        Ok(PgBatch::comment_set(self, id, text)?)
    }

    fn comment_remove(&mut self, id: u32) -> DbResult<bool> {
        Ok(PgBatch::comment_remove(self, id)?)
    }

    fn allocate_id(&mut self) -> DbResult<u32> {
        Ok(PgBatch::allocate_id(self)?)
    }

    fn insert_with_id(&mut self, o: &Object) -> DbResult<()> {
        Ok(PgBatch::insert_with_id(self, o)?)
    }

    fn overwrite(&mut self, o: &Object) -> DbResult<()> {
        Ok(PgBatch::overwrite(self, o)?)
    }

    fn park(&mut self, id: u32) -> DbResult<()> {
        Ok(PgBatch::park(self, id)?)
    }

    fn raise_counter(&mut self, at_least: u32) {
        PgBatch::raise_counter(self, at_least)
    }

    fn change_mark(&self) -> usize {
        self.names.len()
    }

    fn changed_since(&self, mark: usize) -> &[NameChange] {
        self.names.get(mark..).unwrap_or_default()
    }

    fn counter(&self) -> u32 {
        PgBatch::counter(self)
    }

    fn step_dyn(&mut self, f: &mut dyn FnMut(&mut dyn WriteBatch) -> DbResult<()>) -> DbResult<()> {
        WriteBatch::step(self, |batch| f(batch))
    }

    fn step<T>(&mut self, f: impl FnOnce(&mut Self) -> DbResult<T>) -> DbResult<T> {
        // The request's own error comes back as it was; only the savepoint's SQL is PgError.
        let mut failed = None;
        let stepped = PgBatch::step(self, |batch| {
            f(batch).map_err(|e| {
                failed = Some(e);
                PgError::Desktop(DbError::Backend("the step failed".into()))
            })
        });
        match (stepped, failed) {
            (_, Some(e)) => Err(e),
            (Err(e), None) => Err(e.into()),
            (Ok(v), None) => Ok(v),
        }
    }

    fn commit(self: Box<Self>) -> DbResult<()> {
        PgBatch::commit(*self)?;
        Ok(())
    }

    fn commit_owned(self) -> DbResult<()> {
        PgBatch::commit(self)?;
        Ok(())
    }
}

impl Store for PgDesktop {
    type Batch<'a> = PgBatch<'a>;

    fn batch(&mut self) -> DbResult<PgBatch<'_>> {
        Ok(PgDesktop::batch(self)?)
    }

    fn batch_within(&mut self, wait: Duration) -> DbResult<PgBatch<'_>> {
        Ok(PgDesktop::batch_within(self, wait)?)
    }

    fn set_durability(&mut self, durability: Durability) -> DbResult<()> {
        Ok(PgDesktop::set_durability(self, durability)?)
    }

    fn backend(&self) -> &'static str {
        "postgresql"
    }
}
