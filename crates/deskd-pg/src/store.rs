//! A volume's desktop in PostgreSQL: reads on the connection, writes in a [`PgBatch`] (one
//! transaction, group commit), IDs from the volume's counter row under the ID rules of
//! [`deskd_db::ids`].
//!
//! A batch locks its volume's row (`SELECT ... FOR UPDATE`) when it starts and keeps the lock
//! to its commit. So the batches of one volume commit one at a time across every server, as
//! SQLite's one writer does: the counter a batch reads is the newest, an ID is handed out once,
//! and the batch numbers (`change_seq`) of the change log become visible in their order.
//!
//! A batch buffers its new rows and sends them in one INSERT before any statement that could
//! see them, and sends a step's savepoint only with the step's first statement
//! ([`PgBatch::ready`]): a batch of registrations costs a constant number of round trips, not
//! a few each (docs/ARCHITECTURE.md, "The batch's writes since stop 40").

use deskd_db::write_batch::{lookup_or_add, AddSteps};
use deskd_db::{
    ids, validate_name, ApplRecord, DbError, Durability, IconRecord, InfoUpdate, Kind, NameChange,
    NewObject, Object,
};
use std::cell::{Cell, RefCell, RefMut};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{BorrowToSql, ToSql};
use postgres::{Client, GenericClient, Row, RowIter, Statement};

use crate::error::{PgError, Result};
use crate::schema::{self, VolumeKey};

/// The columns of an object row, in the order [`object_from_row`] reads them.
pub(crate) const OBJECT_COLUMNS: &str =
    "id, parent, name, kind, dev, ino, type, creator, flags, ctime";

/// The rows `o` of volume `$1` whose IDs are in the array `$2` (each once), one probe of the
/// primary key an ID: a LATERAL subquery with a LIMIT is not flattened into a join, so the plan
/// stays a nested loop over the IDs whatever the table's statistics say. (`vid = $1 AND id =
/// ANY($2)` got a generic plan, made while the table was nearly empty, that read the volume's
/// every row through the `(vid, parent, name)` index and filtered them: a second server's
/// catch-up of 50,000 new rows then took up to 1.1 s a call and two servers created at a
/// quarter of one's rate, in one run of three.)
pub const ROWS_OF_IDS: &str = "(SELECT DISTINCT unnest($2::bigint[]) AS want) w
     CROSS JOIN LATERAL (
        SELECT * FROM deskd.objects o WHERE o.vid = $1 AND o.id = w.want LIMIT 1) o";

/// Delete the rows of volume `$1` whose IDs are in the array `$2`: a join of the IDs with the
/// primary key (`vid = $1 AND id = ANY($2)` had the generic plan of [`ROWS_OF_IDS`]'s, which
/// read the volume).
pub const DELETE_ROWS_OF_IDS: &str = "DELETE FROM deskd.objects o
    USING (SELECT DISTINCT unnest($2::bigint[]) AS want) w
    WHERE o.vid = $1 AND o.id = w.want";

/// The number a kind is stored as: the SQLite desktop's numbers (docs/desktop-format.md).
pub(crate) fn kind_to_sql(kind: Kind) -> i16 {
    match kind {
        Kind::File => 0,
        Kind::Dir => 1,
        Kind::Symlink => 2,
    }
}

fn kind_from_sql(v: i16) -> Kind {
    match v {
        1 => Kind::Dir,
        2 => Kind::Symlink,
        _ => Kind::File,
    }
}

pub(crate) fn four(v: &[u8]) -> [u8; 4] {
    let mut out = [0u8; 4];
    let n = v.len().min(4);
    out[..n].copy_from_slice(&v[..n]);
    out
}

/// An object as the twelve values of a `deskd.objects` row (vid first, the search key last): the
/// one conversion both an insert and the migration's `COPY` send.
pub(crate) struct ObjectRow<'a> {
    vid: i64,
    object: &'a Object,
    id: i64,
    parent: i64,
    kind: i16,
    dev: i64,
    ino: i64,
    flags: i32,
    type_code: &'a [u8],
    creator: &'a [u8],
    skey: String,
}

impl<'a> ObjectRow<'a> {
    pub(crate) fn new(vid: i64, object: &'a Object) -> ObjectRow<'a> {
        ObjectRow {
            vid,
            object,
            id: i64::from(object.id),
            parent: i64::from(object.parent),
            kind: kind_to_sql(object.kind),
            dev: object.dev as i64,
            ino: object.ino as i64,
            flags: i32::from(object.flags),
            type_code: &object.type_code,
            creator: &object.creator,
            skey: deskd_db::names::search_key(&object.name),
        }
    }

    /// The values, in the columns' order.
    pub(crate) fn values(&self) -> [&(dyn postgres::types::ToSql + Sync); 12] {
        [
            &self.vid,
            &self.id,
            &self.parent,
            &self.object.name,
            &self.kind,
            &self.dev,
            &self.ino,
            &self.type_code,
            &self.creator,
            &self.flags,
            &self.object.ctime,
            &self.skey,
        ]
    }
}

/// An icon record from `SELECT creator, type, itype, tag, bitmap`.
pub(crate) fn icon_from_row(r: &Row) -> IconRecord {
    IconRecord {
        creator: four(r.get(0)),
        type_code: four(r.get(1)),
        itype: r.get::<_, i16>(2) as u8,
        tag: r.get::<_, i64>(3) as u32,
        bitmap: r.get(4),
    }
}

pub(crate) fn object_from_row(r: &Row) -> Object {
    Object {
        id: r.get::<_, i64>(0) as u32,
        parent: r.get::<_, i64>(1) as u32,
        name: r.get(2),
        kind: kind_from_sql(r.get(3)),
        dev: r.get::<_, i64>(4) as u64,
        ino: r.get::<_, i64>(5) as u64,
        type_code: four(r.get(6)),
        creator: four(r.get(7)),
        flags: r.get::<_, i32>(8) as u16,
        ctime: r.get(9),
    }
}

/// The statements prepared on one connection, by SQL text (issue 28). rust-postgres's sync
/// client prepares a text statement anew each time it runs (a round trip to parse and
/// describe, another to run); a statement prepared once stays valid on its connection (also
/// across transactions and rolled-back savepoints: preparing is not transactional), so the
/// second and later runs cost one round trip. The cache lives and dies with its
/// [`PgDesktop`]: a reconnection makes a new desktop, with an empty cache.
#[derive(Default)]
pub(crate) struct Statements(RefCell<HashMap<String, Statement>>);

/// A connection (or transaction) with its connection's [`Statements`]: the calls of
/// [`GenericClient`] the reads and writes use, each through the cache.
pub(crate) struct Db<'a, C> {
    c: &'a mut C,
    st: &'a Statements,
}

impl<'a, C: GenericClient> Db<'a, C> {
    pub(crate) fn new(c: &'a mut C, st: &'a Statements) -> Db<'a, C> {
        Db { c, st }
    }

    fn prepared(&mut self, sql: &str) -> std::result::Result<Statement, postgres::Error> {
        if let Some(statement) = self.st.0.borrow().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.c.prepare(sql)?;
        self.st
            .0
            .borrow_mut()
            .insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    pub(crate) fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, postgres::Error> {
        let statement = self.prepared(sql)?;
        self.c.query(&statement, params)
    }

    pub(crate) fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Option<Row>, postgres::Error> {
        let statement = self.prepared(sql)?;
        self.c.query_opt(&statement, params)
    }

    pub(crate) fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Row, postgres::Error> {
        let statement = self.prepared(sql)?;
        self.c.query_one(&statement, params)
    }

    pub(crate) fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<u64, postgres::Error> {
        let statement = self.prepared(sql)?;
        self.c.execute(&statement, params)
    }

    pub(crate) fn query_raw<P, I>(
        &mut self,
        sql: &str,
        params: I,
    ) -> std::result::Result<RowIter<'_>, postgres::Error>
    where
        P: BorrowToSql,
        I: IntoIterator<Item = P>,
        I::IntoIter: ExactSizeIterator,
    {
        let statement = self.prepared(sql)?;
        self.c.query_raw(&statement, params)
    }
}

/// The deepest a path may be before a parent loop is reported (the SQLite desktop's bound).
const MAX_DEPTH: i32 = 4096;

/// The reads both the desktop and a batch answer, on one volume.
pub(crate) mod read {
    use super::*;

    pub fn get(c: &mut Db<'_, impl GenericClient>, vid: i64, id: u32) -> Result<Object> {
        c.query_opt(
            &format!("SELECT {OBJECT_COLUMNS} FROM deskd.objects WHERE vid = $1 AND id = $2"),
            &[&vid, &i64::from(id)],
        )?
        .map(|r| object_from_row(&r))
        .ok_or(PgError::Desktop(DbError::NoSuchId(id)))
    }

    pub fn lookup(
        c: &mut Db<'_, impl GenericClient>,
        vid: i64,
        parent: u32,
        name: &[u8],
    ) -> Result<Option<Object>> {
        Ok(c.query_opt(
            &format!(
                "SELECT {OBJECT_COLUMNS} FROM deskd.objects
                     WHERE vid = $1 AND parent = $2 AND name = $3"
            ),
            &[&vid, &i64::from(parent), &name],
        )?
        .map(|r| object_from_row(&r)))
    }

    pub fn children(
        c: &mut Db<'_, impl GenericClient>,
        vid: i64,
        parent: u32,
    ) -> Result<Vec<Object>> {
        // Byte order of the names, as SQLite's BLOB order (bytea compares bytewise).
        Ok(c.query(
            &format!(
                "SELECT {OBJECT_COLUMNS} FROM deskd.objects
                 WHERE vid = $1 AND parent = $2 ORDER BY name"
            ),
            &[&vid, &i64::from(parent)],
        )?
        .iter()
        .map(object_from_row)
        .collect())
    }

    /// The names from the root down to `id`, in one round trip (a recursive query up the
    /// parents), where the SQLite desktop asks once a level.
    /// The object `id` and the names from the root down to it, in one round trip (a resolve:
    /// `get` then `path_of` were two).
    pub fn get_with_path(
        c: &mut Db<'_, impl GenericClient>,
        vid: i64,
        id: u32,
    ) -> Result<(Object, Vec<Vec<u8>>)> {
        // The walk of `path_of`, every row with all its columns (in `object_from_row`'s
        // order, the depth last): the first is the object. (A LEFT JOIN of the object's row
        // onto the walk got a generic plan that scanned the table: 350 µs a resolve.)
        let rows = c.query(
            "WITH RECURSIVE up(id, parent, name, kind, dev, ino, type, creator, flags, ctime,
                               depth) AS (
                SELECT id, parent, name, kind, dev, ino, type, creator, flags, ctime, 0
                FROM deskd.objects WHERE vid = $1 AND id = $2
                UNION ALL
                SELECT o.id, o.parent, o.name, o.kind, o.dev, o.ino, o.type, o.creator,
                       o.flags, o.ctime, up.depth + 1
                FROM deskd.objects o JOIN up ON o.id = up.parent
                WHERE o.vid = $1 AND up.id <> $3 AND up.depth < $4)
             SELECT id, parent, name, kind, dev, ino, type, creator, flags, ctime, depth
             FROM up ORDER BY depth",
            &[
                &vid,
                &i64::from(id),
                &i64::from(deskd_db::ROOT_ID),
                &MAX_DEPTH,
            ],
        )?;
        let (Some(own), Some(top)) = (rows.first(), rows.last()) else {
            return Err(DbError::NoSuchId(id).into());
        };
        if top.get::<_, i64>(0) != i64::from(deskd_db::ROOT_ID) {
            if top.get::<_, i32>(10) >= MAX_DEPTH {
                return Err(DbError::Corrupt(format!("parent loop above ID {id}")).into());
            }
            return Err(DbError::NoSuchId(top.get::<_, i64>(1) as u32).into());
        }
        let path = rows[..rows.len() - 1]
            .iter()
            .rev()
            .map(|r| r.get(2))
            .collect();
        Ok((object_from_row(own), path))
    }

    pub fn path_of(c: &mut Db<'_, impl GenericClient>, vid: i64, id: u32) -> Result<Vec<Vec<u8>>> {
        let rows = c.query(
            "WITH RECURSIVE up(id, parent, name, depth) AS (
                SELECT id, parent, name, 0 FROM deskd.objects WHERE vid = $1 AND id = $2
                UNION ALL
                SELECT o.id, o.parent, o.name, up.depth + 1
                FROM deskd.objects o JOIN up ON o.id = up.parent
                WHERE o.vid = $1 AND up.id <> $3 AND up.depth < $4)
             SELECT id, parent, name, depth FROM up ORDER BY depth",
            &[
                &vid,
                &i64::from(id),
                &i64::from(deskd_db::ROOT_ID),
                &MAX_DEPTH,
            ],
        )?;
        let walk: Vec<&Row> = rows.iter().collect();
        path_from_walk(id, &walk, 0)
    }

    /// The path components of `id` from its walk up (`walk`: its rows from itself to the root,
    /// their columns id, parent, name, depth from column `first`): the root's own name left
    /// out; a walk that ends short of the root names the missing folder, or a parent loop.
    fn path_from_walk(id: u32, walk: &[&Row], first: usize) -> Result<Vec<Vec<u8>>> {
        let Some(top) = walk.last() else {
            return Err(DbError::NoSuchId(id).into());
        };
        if top.get::<_, i64>(first) != i64::from(deskd_db::ROOT_ID) {
            if top.get::<_, i32>(first + 3) >= MAX_DEPTH {
                return Err(DbError::Corrupt(format!("parent loop above ID {id}")).into());
            }
            return Err(DbError::NoSuchId(top.get::<_, i64>(first + 1) as u32).into());
        }
        Ok(walk[..walk.len() - 1]
            .iter()
            .rev()
            .map(|r| r.get(first + 2))
            .collect())
    }

    /// [`path_of`] of each of `ids`, in their order, in one round trip: the walks up from
    /// every ID together, each row tagged with the ID it started from.
    pub fn paths_of(
        c: &mut Db<'_, impl GenericClient>,
        vid: i64,
        ids: &[u32],
    ) -> Result<Vec<Vec<Vec<u8>>>> {
        if ids.len() <= 2 {
            // `path_of`'s statement gets a generic plan after its first runs; this one, its
            // length of array unknown to the plan, is planned anew at each run (0.13 ms here),
            // which costs more than the round trip it saves for one or two folders.
            return ids.iter().map(|&id| path_of(c, vid, id)).collect();
        }
        let starts: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
        let rows = c.query(
            &format!(
                "WITH RECURSIVE up(start, id, parent, name, depth) AS (
                    SELECT o.id, o.id, o.parent, o.name, 0 FROM {ROWS_OF_IDS}
                    UNION ALL
                    SELECT up.start, o.id, o.parent, o.name, up.depth + 1
                    FROM up CROSS JOIN LATERAL (
                        SELECT * FROM deskd.objects o
                        WHERE o.vid = $1 AND o.id = up.parent LIMIT 1) o
                    WHERE up.id <> $3 AND up.depth < $4)
                 SELECT start, id, parent, name, depth FROM up ORDER BY start, depth"
            ),
            &[&vid, &starts, &i64::from(deskd_db::ROOT_ID), &MAX_DEPTH],
        )?;
        // Each start's rows, from itself up to the root (the root's own name left out).
        let mut walks: HashMap<u32, Vec<&Row>> = HashMap::new();
        for row in &rows {
            walks
                .entry(row.get::<_, i64>(0) as u32)
                .or_default()
                .push(row);
        }
        ids.iter()
            .map(|&id| {
                let walk = walks.get(&id).map(Vec::as_slice).unwrap_or_default();
                path_from_walk(id, walk, 1)
            })
            .collect()
    }

    /// The applications recorded for documents of `creator`, by ID.
    pub fn appl_for(
        c: &mut Db<'_, impl GenericClient>,
        vid: i64,
        creator: [u8; 4],
    ) -> Result<Vec<ApplRecord>> {
        Ok(c.query(
            "SELECT app_id, tag FROM deskd.appl WHERE vid = $1 AND creator = $2 ORDER BY app_id",
            &[&vid, &&creator[..]],
        )?
        .iter()
        .map(|r| ApplRecord {
            creator,
            app_id: r.get::<_, i64>(0) as u32,
            tag: r.get::<_, i64>(1) as u32,
        })
        .collect())
    }

    /// The icon for (creator, type, icon kind), if recorded.
    pub fn icon(
        c: &mut Db<'_, impl GenericClient>,
        vid: i64,
        creator: [u8; 4],
        type_code: [u8; 4],
        itype: u8,
    ) -> Result<Option<IconRecord>> {
        Ok(c.query_opt(
            "SELECT tag, bitmap FROM deskd.icons
             WHERE vid = $1 AND creator = $2 AND type = $3 AND itype = $4",
            &[&vid, &&creator[..], &&type_code[..], &i16::from(itype)],
        )?
        .map(|r| IconRecord {
            creator,
            type_code,
            itype,
            tag: r.get::<_, i64>(0) as u32,
            bitmap: r.get(1),
        }))
    }

    pub fn comment(
        c: &mut Db<'_, impl GenericClient>,
        vid: i64,
        id: u32,
    ) -> Result<Option<Vec<u8>>> {
        Ok(c.query_opt(
            "SELECT text FROM deskd.comments WHERE vid = $1 AND id = $2",
            &[&vid, &i64::from(id)],
        )?
        .map(|r| r.get(0)))
    }
}

/// The `synchronous_commit` a durability maps onto.
fn synchronous_commit(durability: Durability) -> &'static str {
    match durability {
        // Flushed on this database server before the commit returns (a crash of deskd or of
        // PostgreSQL loses nothing acknowledged); standbys are not waited for.
        Durability::Normal => "SET synchronous_commit = local",
        // Also on the synchronous standbys, when the cluster has them.
        Durability::Full => "SET synchronous_commit = on",
    }
}

/// One volume's desktop on a PostgreSQL connection.
pub struct PgDesktop {
    /// In a cell so that the reads of [`deskd_db::Read`] take `&self`; a desktop belongs to
    /// one thread (it is not `Sync`).
    pub(crate) client: RefCell<Client>,
    /// The statements prepared on `client`.
    pub(crate) statements: Statements,
    pub(crate) vid: i64,
    key: VolumeKey,
    /// The volume's counter as the last batch read it, and the counter at which the tables'
    /// statistics are taken again ([`PgDesktop::refresh_statistics`]).
    counter_seen: Cell<u32>,
    statistics_at: Cell<u32>,
}

/// The counter at which a server first takes the tables' statistics itself; then at each
/// doubling.
const STATISTICS_FROM: u32 = 1_000;

/// Longest a writer waits for the lock ANALYZE takes ([`PgDesktop::refresh_statistics`]).
const STATISTICS_LOCK_WAIT: Duration = Duration::from_millis(20);

/// What a batch changed, read back from the change log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The batch's number in the volume (grows by one with each committed batch that changed
    /// something).
    pub seq: u64,
    /// An ID the batch added, changed or removed.
    pub id: u32,
}

impl PgDesktop {
    /// No places are read ahead outside a batch (the reads' shared macro asks).
    pub(crate) fn place_hit(&self, _parent: u32, _name: &[u8]) -> Option<Option<Object>> {
        None
    }

    /// Open volume `key` on `client`: create or check the schema, then find the volume (or
    /// create it with its root when the database has neither its name nor its identity).
    /// Commits wait as `durability` says (`synchronous_commit`). Returns whether the volume
    /// was created.
    pub fn open(
        client: Client,
        key: &VolumeKey,
        durability: Durability,
    ) -> Result<(PgDesktop, bool)> {
        PgDesktop::open_with(client, key, durability, true)
    }

    /// [`PgDesktop::open`], creating the volume only when `create`: a volume whose root says
    /// its desktop is in PostgreSQL already is never made afresh ([`PgError::NotInDatabase`];
    /// nothing is made in the database, not even the schema).
    pub fn open_with(
        mut client: Client,
        key: &VolumeKey,
        durability: Durability,
        create: bool,
    ) -> Result<(PgDesktop, bool)> {
        if !create && !schema::has_volumes_table(&mut client)? {
            return Err(PgError::NotInDatabase {
                name: key.name.clone(),
                identity: key.identity,
            });
        }
        schema::ensure_schema(&mut client)?;
        client.batch_execute(synchronous_commit(durability))?;
        let (vid, created) = schema::open_volume(&mut client, key, deskd_db::now_unix(), create)?;
        Ok((
            PgDesktop {
                client: RefCell::new(client),
                statements: Statements::default(),
                vid,
                key: key.clone(),
                counter_seen: Cell::new(0),
                statistics_at: Cell::new(STATISTICS_FROM),
            },
            created,
        ))
    }

    /// The volume this desktop is.
    pub fn key(&self) -> &VolumeKey {
        &self.key
    }

    /// The volume's key in this database (`vid`), which change notices carry.
    pub fn volume_key_in_db(&self) -> i64 {
        self.vid
    }

    /// The object with this ID.
    pub fn get(&mut self, id: u32) -> Result<Object> {
        read::get(
            &mut Db::new(self.client.get_mut(), &self.statements),
            self.vid,
            id,
        )
    }

    /// The object called `name` in directory `parent`, if any.
    pub fn lookup(&mut self, parent: u32, name: &[u8]) -> Result<Option<Object>> {
        if let Some(hit) = self.place_hit(parent, name) {
            return Ok(hit);
        }
        read::lookup(
            &mut Db::new(self.client.get_mut(), &self.statements),
            self.vid,
            parent,
            name,
        )
    }

    /// The children of a directory, in name (byte) order.
    pub fn children(&mut self, parent: u32) -> Result<Vec<Object>> {
        read::children(
            &mut Db::new(self.client.get_mut(), &self.statements),
            self.vid,
            parent,
        )
    }

    /// The Finder comment of an object, if it has one.
    pub fn comment(&mut self, id: u32) -> Result<Option<Vec<u8>>> {
        read::comment(
            &mut Db::new(self.client.get_mut(), &self.statements),
            self.vid,
            id,
        )
    }

    /// The names from the root down to `id` (empty for the root).
    pub fn path_of(&mut self, id: u32) -> Result<Vec<Vec<u8>>> {
        read::path_of(
            &mut Db::new(self.client.get_mut(), &self.statements),
            self.vid,
            id,
        )
    }

    /// The applications recorded for documents of `creator`.
    pub fn appl_for(&mut self, creator: [u8; 4]) -> Result<Vec<ApplRecord>> {
        read::appl_for(
            &mut Db::new(self.client.get_mut(), &self.statements),
            self.vid,
            creator,
        )
    }

    /// The icon for (creator, type, icon kind), if recorded.
    pub fn icon(
        &mut self,
        creator: [u8; 4],
        type_code: [u8; 4],
        itype: u8,
    ) -> Result<Option<IconRecord>> {
        read::icon(
            &mut Db::new(self.client.get_mut(), &self.statements),
            self.vid,
            creator,
            type_code,
            itype,
        )
    }

    /// The highest ID handed out in this volume.
    pub fn last_id(&mut self) -> Result<u32> {
        let row = Db::new(self.client.get_mut(), &self.statements).query_one(
            "SELECT last_id FROM deskd.volume WHERE vid = $1",
            &[&self.vid],
        )?;
        Ok(row.get::<_, i64>(0) as u32)
    }

    /// Every object's ID and search key, in ID order, streamed (not collected): what a
    /// server's in-memory name index is loaded from.
    pub fn for_each_key(&mut self, each: &mut dyn FnMut(u32, &str)) -> Result<()> {
        let mut db = Db::new(self.client.get_mut(), &self.statements);
        let mut rows = db.query_raw(
            "SELECT id, skey FROM deskd.objects WHERE vid = $1 ORDER BY id",
            [&self.vid],
        )?;
        while let Some(row) = rows.next()? {
            each(row.get::<_, i64>(0) as u32, row.get(1));
        }
        Ok(())
    }

    /// The number of the newest committed batch that changed the volume.
    pub fn change_seq(&mut self) -> Result<u64> {
        let row = Db::new(self.client.get_mut(), &self.statements).query_one(
            "SELECT change_seq FROM deskd.volume WHERE vid = $1",
            &[&self.vid],
        )?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// The changes committed after batch `seq`, in order: what a server that has seen up to
    /// `seq` must look at again.
    pub fn changes_since(&mut self, seq: u64) -> Result<Vec<Change>> {
        Ok(Db::new(self.client.get_mut(), &self.statements)
            .query(
                "SELECT seq, id FROM deskd.changes WHERE vid = $1 AND seq > $2 ORDER BY seq, id",
                &[&self.vid, &(seq as i64)],
            )?
            .iter()
            .map(|r| Change {
                seq: r.get::<_, i64>(0) as u64,
                id: r.get::<_, i64>(1) as u32,
            })
            .collect())
    }

    /// Hold the volume's serving lock (shared with the other servers) for as long as this
    /// session lives: a migration out of the database waits for no server. Refused while a
    /// migration holds it ([`PgError::Migrating`]), and for a volume a restore or migration
    /// moved out of the database ([`PgError::MovedOut`]).
    pub fn hold_for_serving(&mut self) -> Result<()> {
        let held: bool = self
            .client
            .get_mut()
            .query_one(
                "SELECT pg_try_advisory_lock_shared($1, ($2::bigint)::int)",
                &[&schema::SERVE_LOCK, &self.vid],
            )?
            .get(0);
        if !held {
            return Err(PgError::Migrating {
                name: self.key.name.clone(),
                holders: crate::transfer::serving_lock_holders(self.client.get_mut(), self.vid),
            });
        }
        // Read under the lock: a restore or migrate records the move-out while it holds the
        // lock exclusively, so a server that takes it afterwards sees the record.
        let moved_out = self
            .client
            .get_mut()
            .query_opt(
                "SELECT 1 FROM deskd.meta WHERE vid = $1 AND key = $2",
                &[&self.vid, &schema::MOVED_OUT_KEY],
            )?
            .is_some();
        if moved_out {
            self.client.get_mut().execute(
                "SELECT pg_advisory_unlock_shared($1, ($2::bigint)::int)",
                &[&schema::SERVE_LOCK, &self.vid],
            )?;
            return Err(PgError::MovedOut(self.key.name.clone()));
        }
        Ok(())
    }

    /// Remove the change log's rows of batches `through` and older; returns how many went.
    /// Batch numbers have no holes (every batch that changed something takes the next one and
    /// logs at least one ID), so a reader that finds the batch after its own missing knows
    /// the log was pruned past it.
    pub fn prune_changes(&mut self, through: u64) -> Result<u64> {
        Ok(Db::new(self.client.get_mut(), &self.statements).execute(
            "DELETE FROM deskd.changes WHERE vid = $1 AND seq <= $2",
            &[&self.vid, &(through as i64)],
        )?)
    }

    /// Change the durability of the commits from now on (`synchronous_commit` of this
    /// session).
    pub fn set_durability(&mut self, durability: Durability) -> Result<()> {
        Ok(self
            .client
            .get_mut()
            .batch_execute(synchronous_commit(durability))?)
    }

    /// Start a batch: one transaction holding the volume's row lock until it commits.
    pub fn batch(&mut self) -> Result<PgBatch<'_>> {
        self.batch_waiting(None)
    }

    /// Start a batch, waiting at most `wait` for the volume's row lock (another server's
    /// batch holds it until that commits): a longer wait fails with PostgreSQL's
    /// `lock_not_available` (55P03), which the caller may retry.
    pub fn batch_within(&mut self, wait: Duration) -> Result<PgBatch<'_>> {
        self.batch_waiting(Some(wait))
    }

    /// Take the statistics of the objects and the change log again when the volume's counter
    /// has doubled since this server last did (from [`STATISTICS_FROM`]), outside any batch.
    /// A statement's cached generic plan is made from the statistics of when it was made: made
    /// while the tables were nearly empty (a new volume, a new database), a look-up by ID read
    /// the whole volume at every run until autovacuum's ANALYZE (its naptime is a minute) —
    /// one of two servers then created at a quarter of the other's rate (docs/PERFORMANCE.md,
    /// "Two servers"). ANALYZE makes every session re-plan; about 20 ms at 100,000 objects,
    /// and at most about 30 times in a volume's life. A role that does not own the tables only
    /// gets a warning, and autovacuum still does it.
    ///
    /// Only when the tables' lock for it is free within [`STATISTICS_LOCK_WAIT`]: ANALYZE
    /// waits for a VACUUM (an anti-wraparound one is not cancelled for it), a `CREATE INDEX
    /// CONCURRENTLY` or another ANALYZE of the same tables, which every volume of the database
    /// shares — the writer waited that long before its batch (the hostile review of stop 43).
    /// Skipped then: whoever holds the lock is taking the statistics, or will.
    fn refresh_statistics(&mut self) {
        if self.counter_seen.get() < self.statistics_at.get() {
            return;
        }
        self.statistics_at
            .set(self.counter_seen.get().saturating_mul(2));
        let ms = STATISTICS_LOCK_WAIT.as_millis();
        // In a transaction for `SET LOCAL` (ANALYZE may run in one); a failure rolls it back
        // when it is dropped, and leaves the connection to the batch that follows.
        let analyzed = self.client.get_mut().transaction().and_then(|mut tx| {
            tx.batch_execute(&format!(
                "SET LOCAL lock_timeout = {ms}; ANALYZE deskd.objects, deskd.changes"
            ))?;
            tx.commit()
        });
        // Not taken now (the lock was held, the role does not own the tables, the connection
        // failed: the batch that follows reports that): the next doubling, or autovacuum.
        let _ = analyzed;
    }

    fn batch_waiting(&mut self, wait: Option<Duration>) -> Result<PgBatch<'_>> {
        self.refresh_statistics();
        let mut tx = self.client.get_mut().transaction()?;
        let st = &self.statements;
        if let Some(wait) = wait {
            // At least 1 ms: 0 would mean no bound at all.
            let ms = wait.as_millis().clamp(1, i32::MAX as u128);
            tx.batch_execute(&format!("SET LOCAL lock_timeout = {ms}"))?;
        }
        let row = Db::new(&mut tx, st).query_one(
            "SELECT last_id FROM deskd.volume WHERE vid = $1 FOR UPDATE",
            &[&self.vid],
        )?;
        if wait.is_some() {
            // The bound is for the row lock only: the batch's own statements wait as usual.
            tx.batch_execute("SET LOCAL lock_timeout = 0")?;
        }
        let last_id = row.get::<_, i64>(0) as u32;
        self.counter_seen.set(last_id);
        Ok(PgBatch {
            tx: RefCell::new(tx),
            st,
            vid: self.vid,
            last_id,
            counter_read: last_id,
            changed: Vec::new(),
            names: Vec::new(),
            steps: RefCell::default(),
            rows: RefCell::default(),
            broken: Cell::new(false),
            known_dirs: HashSet::new(),
            places: RefCell::default(),
            counter_seen: &self.counter_seen,
        })
    }
}

/// A write transaction on one volume: many requests, one commit.
pub struct PgBatch<'a> {
    /// In a cell, as [`PgDesktop`]'s client.
    pub(crate) tx: RefCell<postgres::Transaction<'a>>,
    /// The statements prepared on the desktop's connection.
    pub(crate) st: &'a Statements,
    pub(crate) vid: i64,
    /// The counter, read under the row lock and written back at commit.
    last_id: u32,
    /// The counter as read, so that a batch that took no ID does not write it.
    counter_read: u32,
    /// IDs this batch changed, written to the change log at commit.
    changed: Vec<u32>,
    /// The name changes this batch made, in order ([`deskd_db::WriteBatch::changed_since`]).
    pub(crate) names: Vec<NameChange>,
    /// The running [`PgBatch::step`]s and their savepoints, sent only when a step sends a
    /// statement (issue 28).
    steps: RefCell<Steps>,
    /// New rows not sent yet: written with one multi-row INSERT before any statement that
    /// could see them, and at the commit (issue 28).
    rows: RefCell<Rows>,
    /// A write of buffered rows failed, or a statement failed outside any savepoint: the
    /// transaction cannot commit what its steps were told, so the commit is refused.
    broken: Cell<bool>,
    /// Directories this batch found to be directories: the many adds into one folder ask
    /// the database once (issue 28). The batch holds the volume's row lock, so only its own
    /// writes change them: a delete, an overwrite, a park or a rolled-back step forgets them.
    known_dirs: HashSet<u32>,
    /// Places (folder, name) read ahead for the batch's registrations in one query a folder
    /// ([`PgBatch::prefetch_places`]): what is there (`None`: nothing). Kept right by this
    /// batch's own inserts; any other change to objects, and a rolled-back step, forgets them
    /// all (the row lock keeps other servers' batches out meanwhile).
    places: RefCell<Places>,
    /// The desktop's [`PgDesktop::counter_seen`], set at the commit.
    counter_seen: &'a Cell<u32>,
}

/// What is at each place (folder, name) a batch read ahead (`None`: nothing).
type Places = HashMap<(u32, Vec<u8>), Option<Object>>;

/// The steps running in a batch, outermost first, and the deferred release of the last
/// outermost one. Savepoints go to the server lazily: a step that sends no statement (a
/// registration answered from the places read ahead, its row buffered) needs none, since
/// undoing it is dropping its buffered rows. The steps whose savepoints were sent are always
/// the outermost ones (a statement sends every missing savepoint, outermost first).
#[derive(Default)]
struct Steps {
    open: Vec<Step>,
    /// The last outermost step sent its savepoint, succeeded, and its savepoint is not
    /// released yet (the next savepoint's statement or the COMMIT releases it).
    release_pending: bool,
}

struct Step {
    /// Its savepoint was sent.
    sent: bool,
    /// [`Rows::total`] when it started: the rows from there on are its own.
    mark: usize,
}

/// Rows inserted by this batch and not sent yet. Every row is numbered in the order it was
/// buffered; `sent` of them went to the server, `pending` are the rest.
#[derive(Default)]
struct Rows {
    sent: usize,
    pending: Vec<Object>,
    /// Position in `pending` by ID and by place (folder, name): a batch's point reads see
    /// its own buffered rows without sending them.
    by_id: HashMap<u32, usize>,
    by_place: HashMap<(u32, Vec<u8>), usize>,
}

impl Rows {
    /// How many rows were ever buffered (and not undone).
    fn total(&self) -> usize {
        self.sent + self.pending.len()
    }

    fn push(&mut self, object: Object) {
        let at = self.pending.len();
        self.by_id.insert(object.id, at);
        self.by_place
            .insert((object.parent, object.name.clone()), at);
        self.pending.push(object);
    }

    /// Drop the pending rows from number `total` on (a failed step's own).
    fn truncate(&mut self, total: usize) {
        let keep = total.saturating_sub(self.sent);
        for o in self.pending.drain(keep.min(self.pending.len())..) {
            self.by_id.remove(&o.id);
            self.by_place.remove(&(o.parent, o.name));
        }
    }

    /// Take the pending rows up to number `upto` (all with `usize::MAX`) to send them.
    fn take(&mut self, upto: usize) -> Vec<Object> {
        let n = upto.saturating_sub(self.sent).min(self.pending.len());
        let taken: Vec<Object> = self.pending.drain(..n).collect();
        self.sent += taken.len();
        self.by_id.clear();
        self.by_place.clear();
        for (at, o) in self.pending.iter().enumerate() {
            self.by_id.insert(o.id, at);
            self.by_place.insert((o.parent, o.name.clone()), at);
        }
        taken
    }
}

/// Send `rows` in one INSERT: each column an array, `unnest`ed into rows (one round trip for
/// a batch's registrations, where a row each was one).
fn insert_rows(
    db: &mut Db<'_, impl GenericClient>,
    vid: i64,
    rows: &[Object],
) -> std::result::Result<u64, postgres::Error> {
    let mut ids = Vec::with_capacity(rows.len());
    let mut parents = Vec::with_capacity(rows.len());
    let mut names = Vec::with_capacity(rows.len());
    let mut kinds = Vec::with_capacity(rows.len());
    let mut devs = Vec::with_capacity(rows.len());
    let mut inos = Vec::with_capacity(rows.len());
    let mut types = Vec::with_capacity(rows.len());
    let mut creators = Vec::with_capacity(rows.len());
    let mut flags = Vec::with_capacity(rows.len());
    let mut ctimes = Vec::with_capacity(rows.len());
    let mut skeys = Vec::with_capacity(rows.len());
    for o in rows {
        ids.push(i64::from(o.id));
        parents.push(i64::from(o.parent));
        names.push(o.name.as_slice());
        kinds.push(kind_to_sql(o.kind));
        devs.push(o.dev as i64);
        inos.push(o.ino as i64);
        types.push(&o.type_code[..]);
        creators.push(&o.creator[..]);
        flags.push(i32::from(o.flags));
        ctimes.push(o.ctime);
        skeys.push(deskd_db::names::search_key(&o.name));
    }
    db.execute(
        "INSERT INTO deskd.objects
            (vid, id, parent, name, kind, dev, ino, type, creator, flags, ctime, skey)
         SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::bytea[], $5::smallint[],
             $6::bigint[], $7::bigint[], $8::bytea[], $9::bytea[], $10::integer[],
             $11::bigint[], $12::text[])",
        &[
            &vid, &ids, &parents, &names, &kinds, &devs, &inos, &types, &creators, &flags, &ctimes,
            &skeys,
        ],
    )
}

impl<'a> PgBatch<'a> {
    /// What [`PgBatch::prefetch_places`] read at `parent`/`name`, if it did, else a row of
    /// this batch not sent yet at that place.
    pub(crate) fn place_hit(&self, parent: u32, name: &[u8]) -> Option<Option<Object>> {
        if let Some(hit) = self.places.borrow().get(&(parent, name.to_vec())) {
            return Some(hit.clone());
        }
        let rows = self.rows.borrow();
        let at = *rows.by_place.get(&(parent, name.to_vec()))?;
        Some(Some(rows.pending[at].clone()))
    }

    /// The row of `id` if this batch buffered it and has not sent it yet.
    pub(crate) fn buffered(&self, id: u32) -> Option<Object> {
        let rows = self.rows.borrow();
        rows.by_id.get(&id).map(|&at| rows.pending[at].clone())
    }

    /// The transaction, ready for a statement: the savepoints of the running steps sent (each
    /// after the rows buffered before its step), and with `flush` every buffered row sent,
    /// so the statement sees them. A point read by ID or place needs no flush: it sees the
    /// buffered rows through [`PgBatch::buffered`] and [`PgBatch::place_hit`] (the rows sent
    /// and the rows buffered never overlap: only inserts are buffered, and every other write
    /// flushes first).
    pub(crate) fn ready(&self, flush: bool) -> Result<RefMut<'_, postgres::Transaction<'a>>> {
        let mut tx = self.tx.try_borrow_mut().map_err(|_| {
            PgError::Desktop(DbError::Backend(
                "this PostgreSQL transaction is streaming a read: a for_each callback may not \
                 read through the same batch"
                    .into(),
            ))
        })?;
        let prepared = self.prepare(&mut tx, flush);
        if prepared.is_err() {
            // Rows the steps before were told are written may be lost, or the transaction
            // aborted outside any savepoint: nothing of it may commit.
            self.broken.set(true);
        }
        prepared?;
        Ok(tx)
    }

    fn prepare(&self, tx: &mut postgres::Transaction<'a>, flush: bool) -> Result<()> {
        let mut steps = self.steps.borrow_mut();
        let mut rows = self.rows.borrow_mut();
        let mut sql = String::new();
        let steps = &mut *steps;
        if let Some(first) = steps.open.iter().position(|s| !s.sent) {
            if first == 0 && steps.release_pending {
                sql.push_str("RELEASE SAVEPOINT step; ");
                steps.release_pending = false;
            }
            for step in &mut steps.open[first..] {
                if rows.sent < step.mark {
                    // Rows of the steps before belong outside this step's savepoint.
                    if !sql.is_empty() {
                        tx.batch_execute(&sql)?;
                        sql.clear();
                    }
                    let taken = rows.take(step.mark);
                    insert_rows(&mut Db::new(tx, self.st), self.vid, &taken)?;
                }
                sql.push_str("SAVEPOINT step; ");
                step.sent = true;
            }
        }
        if !sql.is_empty() {
            tx.batch_execute(&sql)?;
        }
        if flush && !rows.pending.is_empty() {
            let taken = rows.take(usize::MAX);
            insert_rows(&mut Db::new(tx, self.st), self.vid, &taken)?;
        }
        Ok(())
    }

    /// Run `f` on the transaction made [ready](PgBatch::ready).
    pub(crate) fn with_db<T>(
        &self,
        flush: bool,
        f: impl FnOnce(&mut Db<'_, postgres::Transaction<'a>>) -> Result<T>,
    ) -> Result<T> {
        let mut tx = self.ready(flush)?;
        let out = f(&mut Db::new(&mut *tx, self.st));
        if matches!(out, Err(PgError::Postgres(_)))
            && !self.steps.borrow().open.iter().any(|s| s.sent)
        {
            // A failed statement aborts the transaction, and no savepoint can undo it.
            self.broken.set(true);
        }
        out
    }

    /// Read what is at these places in one query, so that each registration's own lookup is
    /// answered without a round trip.
    pub fn prefetch_places(&mut self, places: &[(u32, &[u8])]) -> Result<()> {
        let parents: Vec<i64> = places.iter().map(|&(p, _)| i64::from(p)).collect();
        let names: Vec<&[u8]> = places.iter().map(|&(_, n)| n).collect();
        let vid = self.vid;
        // One index probe a place: a LATERAL subquery with a LIMIT is not flattened into a
        // join, so the plan stays a nested loop over the places. (`parent = $2 AND name =
        // ANY($3)` a folder got a generic plan that read the folder's every row and compared
        // each with every name: 100 ms for 1,000 names in a folder of 10,000.)
        let rows = self.with_db(true, |db| {
            Ok(db.query(
                "SELECT o.id, o.parent, o.name, o.kind, o.dev, o.ino, o.type, o.creator,
                        o.flags, o.ctime
                 FROM unnest($2::bigint[], $3::bytea[]) AS p(parent, name)
                 CROSS JOIN LATERAL (
                    SELECT * FROM deskd.objects o
                    WHERE o.vid = $1 AND o.parent = p.parent AND o.name = p.name LIMIT 1) o",
                &[&vid, &parents, &names],
            )?)
        })?;
        let cache = self.places.get_mut();
        for &(parent, name) in places {
            cache.insert((parent, name.to_vec()), None);
        }
        for row in &rows {
            let o = object_from_row(row);
            cache.insert((o.parent, o.name.clone()), Some(o));
        }
        Ok(())
    }

    /// Forget the places read ahead: something changed objects other than by an insert.
    fn forget_places(&mut self) {
        self.places.get_mut().clear();
    }

    /// The object with this ID, as this batch sees it.
    pub fn get(&mut self, id: u32) -> Result<Object> {
        if let Some(o) = self.buffered(id) {
            return Ok(o);
        }
        let vid = self.vid;
        self.with_db(false, |db| read::get(db, vid, id))
    }

    /// The object called `name` in directory `parent`, as this batch sees it.
    pub fn lookup(&mut self, parent: u32, name: &[u8]) -> Result<Option<Object>> {
        if let Some(hit) = self.place_hit(parent, name) {
            return Ok(hit);
        }
        let vid = self.vid;
        self.with_db(false, |db| read::lookup(db, vid, parent, name))
    }

    /// The children of a directory, as this batch sees them.
    pub fn children(&mut self, parent: u32) -> Result<Vec<Object>> {
        let vid = self.vid;
        self.with_db(true, |db| read::children(db, vid, parent))
    }

    /// Run one request as a step: if it fails, only its own changes are undone (IDs it took
    /// from the counter stay taken: skipping is allowed, reuse is not). A step's savepoint is
    /// sent only with its first statement ([`PgBatch::ready`]); a step that sent none is
    /// undone by dropping the rows it buffered.
    pub fn step<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let mark = self.changed.len();
        let names_mark = self.names.len();
        let rows_mark = self.rows.get_mut().total();
        self.steps.get_mut().open.push(Step {
            sent: false,
            mark: rows_mark,
        });
        let outcome = f(self);
        let step = self
            .steps
            .get_mut()
            .open
            .pop()
            .expect("the step pushed above");
        let outermost = self.steps.get_mut().open.is_empty();
        match outcome {
            Ok(v) => {
                if step.sent {
                    if outermost {
                        // Released with the next savepoint or by the COMMIT: a request costs
                        // no round trip of its own for it (issue 28). Only outermost steps
                        // are deferred, so a ROLLBACK TO names the failed step's savepoint.
                        self.steps.get_mut().release_pending = true;
                    } else {
                        self.tx.get_mut().batch_execute("RELEASE SAVEPOINT step")?;
                    }
                }
                Ok(v)
            }
            Err(e) => {
                if step.sent {
                    self.tx
                        .get_mut()
                        .batch_execute("ROLLBACK TO SAVEPOINT step; RELEASE SAVEPOINT step")?;
                }
                let rows = self.rows.get_mut();
                if rows.sent > rows_mark {
                    // Its rows sent after its savepoint went with the rollback.
                    rows.sent = rows_mark;
                    rows.pending.clear();
                    rows.by_id.clear();
                    rows.by_place.clear();
                } else {
                    rows.truncate(rows_mark);
                }
                self.changed.truncate(mark);
                self.names.truncate(names_mark);
                self.known_dirs.clear();
                self.forget_places();
                Err(e)
            }
        }
    }

    /// The changes committed after batch `seq`, as this batch sees them: it holds the
    /// volume's row lock, so no other batch of the volume commits until it does (an online
    /// rebuild reads what clients changed since its snapshot here, then applies).
    pub fn changes_since(&mut self, seq: u64) -> Result<Vec<Change>> {
        Ok(Db::new(&mut *self.ready(false)?, self.st)
            .query(
                "SELECT seq, id FROM deskd.changes WHERE vid = $1 AND seq > $2 ORDER BY seq, id",
                &[&self.vid, &(seq as i64)],
            )?
            .iter()
            .map(|r| Change {
                seq: r.get::<_, i64>(0) as u64,
                id: r.get::<_, i64>(1) as u32,
            })
            .collect())
    }

    /// The ID counter as this batch has left it so far: the highest ID handed out.
    pub fn counter(&self) -> u32 {
        self.last_id
    }

    /// Commit: the counter, the change log and a `NOTIFY deskd_changes` ("vid:seq") go with
    /// the batch's rows. Returns the batch's number, `None` if it changed nothing.
    pub fn commit(mut self) -> Result<Option<u64>> {
        // The rows still buffered; then no statement may have failed unseen.
        drop(self.ready(true)?);
        if self.broken.get() {
            return Err(DbError::Backend(
                "a write of this batch failed after its request was answered; nothing of the \
                 batch is committed"
                    .into(),
            )
            .into());
        }
        let seq = if self.changed.is_empty() {
            if self.last_id != self.counter_read {
                Db::new(&mut *self.ready(true)?, self.st).execute(
                    "UPDATE deskd.volume SET last_id = $2 WHERE vid = $1",
                    &[&self.vid, &i64::from(self.last_id)],
                )?;
            }
            None
        } else {
            self.changed.sort_unstable();
            self.changed.dedup();
            let ids: Vec<i64> = self.changed.iter().map(|&id| i64::from(id)).collect();
            // The counter, the batch's number, its change-log rows and the notice in one
            // statement: one round trip before the COMMIT (issue 28).
            let seq: i64 = Db::new(&mut *self.ready(true)?, self.st)
                .query_one(
                    "WITH s AS (
                        UPDATE deskd.volume SET last_id = $2, change_seq = change_seq + 1
                        WHERE vid = $1 RETURNING vid, change_seq),
                     c AS (
                        INSERT INTO deskd.changes (vid, seq, id)
                        SELECT s.vid, s.change_seq, unnest($3::bigint[]) FROM s)
                     SELECT s.change_seq, pg_notify('deskd_changes', concat(s.vid, ':', s.change_seq))
                     FROM s",
                    &[&self.vid, &i64::from(self.last_id), &ids],
                )?
                .get(0);
            Some(seq as u64)
        };
        let counter_seen = self.counter_seen;
        let last_id = self.last_id;
        self.tx.into_inner().commit()?;
        counter_seen.set(last_id);
        Ok(seq)
    }

    fn id_taken(&mut self, id: u32) -> Result<bool> {
        if self.buffered(id).is_some() {
            return Ok(true);
        }
        Ok(Db::new(&mut *self.ready(false)?, self.st)
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM deskd.objects WHERE vid = $1 AND id = $2)",
                &[&self.vid, &i64::from(id)],
            )?
            .get(0))
    }

    /// A new ID from the counter, never one handed out before.
    pub fn allocate_id(&mut self) -> Result<u32> {
        self.pick_id(None)
    }

    /// Register a new object and return it with `true`; an object already registered under
    /// that name in that directory comes back with `false` (lookup-or-add, by deskd-db's
    /// [`lookup_or_add`], the same rules as the SQLite desktop's).
    pub fn add(&mut self, new: &NewObject) -> Result<(Object, bool)> {
        lookup_or_add(self, new)
    }

    /// Insert one object row with its search key (no checks: callers check first).
    /// Buffered, not sent: the rows go with the next statement that could see them or the
    /// commit, in one INSERT ([`PgBatch::ready`]).
    fn insert_row(&mut self, object: &Object) -> Result<()> {
        self.rows.get_mut().push(object.clone());
        self.changed.push(object.id);
        self.names.push(NameChange::Set(
            object.id,
            deskd_db::names::search_key(&object.name),
        ));
        if let Some(place) = self
            .places
            .get_mut()
            .get_mut(&(object.parent, object.name.clone()))
        {
            *place = Some(object.clone());
        }
        Ok(())
    }

    /// Insert `o` with its own ID (a migration or a rebuild keeping an ID). The ID and the
    /// place must be free and the parent a directory; the counter rises to the ID.
    pub fn insert_with_id(&mut self, o: &Object) -> Result<()> {
        validate_name(&o.name)?;
        if ids::is_forbidden(o.id) || self.id_taken(o.id)? {
            return Err(DbError::Corrupt(format!("ID {} is not free", o.id)).into());
        }
        self.check_directory(o.parent)?;
        if let Some(existing) = self.lookup(o.parent, &o.name)? {
            return Err(DbError::Exists {
                parent: o.parent,
                name: String::from_utf8_lossy(&o.name).into_owned(),
                existing: existing.id,
            }
            .into());
        }
        self.insert_row(o)?;
        self.last_id = self.last_id.max(o.id);
        Ok(())
    }

    /// Raise the counter to at least `at_least` (a migration carrying the old counter, so IDs
    /// deleted before it are never handed out here either).
    pub fn raise_counter(&mut self, at_least: u32) {
        self.last_id = self.last_id.max(at_least.min(deskd_db::LAST_USABLE_ID));
    }

    /// Move and/or rename an object (its ID and its descendants' stay). With `replace`, an
    /// object at the destination is removed first; its removed IDs are returned.
    pub fn rename(
        &mut self,
        id: u32,
        new_parent: u32,
        new_name: &[u8],
        replace: bool,
    ) -> Result<Vec<u32>> {
        self.forget_places();
        validate_name(new_name)?;
        if id == deskd_db::ROOT_ID {
            return Err(DbError::Root("renamed").into());
        }
        let object = self.get(id)?;
        self.check_directory(new_parent)?;
        if object.kind == Kind::Dir {
            let mut cursor = new_parent;
            while cursor != deskd_db::ROOT_ID && cursor != deskd_db::ROOT_PARENT_ID {
                if cursor == id {
                    return Err(DbError::IntoItself(id).into());
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
                }
                .into());
            }
            removed = self.delete(existing.id, true)?;
        }
        Db::new(&mut *self.ready(true)?, self.st).execute(
            "UPDATE deskd.objects SET parent = $3, name = $4, skey = $5 WHERE vid = $1 AND id = $2",
            &[
                &self.vid,
                &i64::from(id),
                &i64::from(new_parent),
                &new_name,
                &deskd_db::names::search_key(new_name),
            ],
        )?;
        self.changed.push(id);
        self.names
            .push(NameChange::Set(id, deskd_db::names::search_key(new_name)));
        Ok(removed)
    }

    /// Remove an object; with `recursive`, a directory and everything below it. Returns the
    /// removed IDs (never handed out again).
    pub fn delete(&mut self, id: u32, recursive: bool) -> Result<Vec<u32>> {
        self.forget_places();
        self.known_dirs.clear();
        if id == deskd_db::ROOT_ID {
            return Err(DbError::Root("deleted").into());
        }
        let object = self.get(id)?;
        let rows: Vec<i64> = if object.kind == Kind::Dir {
            Db::new(&mut *self.ready(true)?, self.st)
                .query(
                    "WITH RECURSIVE sub(id) AS (
                        SELECT $2::bigint
                        UNION ALL
                        SELECT o.id FROM deskd.objects o JOIN sub ON o.parent = sub.id
                        WHERE o.vid = $1)
                     SELECT id FROM sub",
                    &[&self.vid, &i64::from(id)],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect()
        } else {
            vec![i64::from(id)]
        };
        if rows.len() > 1 && !recursive {
            return Err(DbError::NotEmpty(id).into());
        }
        Db::new(&mut *self.ready(true)?, self.st)
            .execute(DELETE_ROWS_OF_IDS, &[&self.vid, &rows])?;
        let removed: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        self.changed.extend_from_slice(&removed);
        self.names
            .extend(removed.iter().map(|&gone| NameChange::Remove(gone)));
        Ok(removed)
    }

    /// Set (replace) the Finder comment of an object.
    pub fn comment_set(&mut self, id: u32, text: &[u8]) -> Result<()> {
        self.get(id)?;
        Db::new(&mut *self.ready(true)?, self.st).execute(
            "INSERT INTO deskd.comments (vid, id, text) VALUES ($1, $2, $3)
             ON CONFLICT (vid, id) DO UPDATE SET text = excluded.text",
            &[&self.vid, &i64::from(id), &text],
        )?;
        self.changed.push(id);
        Ok(())
    }

    /// Remove the Finder comment of an object; returns whether it had one.
    pub fn comment_remove(&mut self, id: u32) -> Result<bool> {
        let n = Db::new(&mut *self.ready(true)?, self.st).execute(
            "DELETE FROM deskd.comments WHERE vid = $1 AND id = $2",
            &[&self.vid, &i64::from(id)],
        )?;
        if n > 0 {
            self.changed.push(id);
        }
        Ok(n > 0)
    }

    /// The Finder comment of an object, as this batch sees it.
    pub fn comment(&mut self, id: u32) -> Result<Option<Vec<u8>>> {
        read::comment(
            &mut Db::new(&mut *self.ready(false)?, self.st),
            self.vid,
            id,
        )
    }

    /// Update the recorded device, inode and change time of an object (after a copy-replace
    /// on disk).
    pub fn set_devino(&mut self, id: u32, dev: u64, ino: u64, ctime: i64) -> Result<()> {
        self.forget_places();
        let n = Db::new(&mut *self.ready(true)?, self.st).execute(
            "UPDATE deskd.objects SET dev = $3, ino = $4, ctime = $5 WHERE vid = $1 AND id = $2",
            &[
                &self.vid,
                &i64::from(id),
                &(dev as i64),
                &(ino as i64),
                &ctime,
            ],
        )?;
        if n == 0 {
            return Err(DbError::NoSuchId(id).into());
        }
        self.changed.push(id);
        Ok(())
    }

    /// Change Mac type, creator or Finder flags. A type of `APPL` registers the object as its
    /// creator's application; changing it away unregisters it (the schema's trigger).
    pub fn set_info(&mut self, id: u32, update: &InfoUpdate) -> Result<Object> {
        self.forget_places();
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
        Db::new(&mut *self.ready(true)?, self.st).execute(
            "UPDATE deskd.objects SET type = $3, creator = $4, flags = $5 WHERE vid = $1 AND id = $2",
            &[
                &self.vid,
                &i64::from(id),
                &&object.type_code[..],
                &&object.creator[..],
                &i32::from(object.flags),
            ],
        )?;
        self.changed.push(id);
        Ok(object)
    }

    /// Add an APPL record (AFP `FPAddAPPL`): `app_id` opens documents of `creator`.
    pub fn appl_add(&mut self, record: &ApplRecord) -> Result<()> {
        self.get(record.app_id)?;
        Db::new(&mut *self.ready(true)?, self.st).execute(
            "INSERT INTO deskd.appl (vid, creator, app_id, tag) VALUES ($1, $2, $3, $4)
             ON CONFLICT (vid, creator, app_id) DO UPDATE SET tag = excluded.tag",
            &[
                &self.vid,
                &&record.creator[..],
                &i64::from(record.app_id),
                &i64::from(record.tag),
            ],
        )?;
        Ok(())
    }

    /// Remove an APPL record; returns whether one was there.
    pub fn appl_remove(&mut self, creator: [u8; 4], app_id: u32) -> Result<bool> {
        Ok(Db::new(&mut *self.ready(true)?, self.st).execute(
            "DELETE FROM deskd.appl WHERE vid = $1 AND creator = $2 AND app_id = $3",
            &[&self.vid, &&creator[..], &i64::from(app_id)],
        )? > 0)
    }

    /// Add or replace an icon record.
    pub fn icon_add(&mut self, icon: &IconRecord) -> Result<()> {
        Db::new(&mut *self.ready(true)?, self.st).execute(
            "INSERT INTO deskd.icons (vid, creator, type, itype, tag, bitmap)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (vid, creator, type, itype)
             DO UPDATE SET tag = excluded.tag, bitmap = excluded.bitmap",
            &[
                &self.vid,
                &&icon.creator[..],
                &&icon.type_code[..],
                &i16::from(icon.itype),
                &i64::from(icon.tag),
                &icon.bitmap,
            ],
        )?;
        Ok(())
    }

    /// Overwrite the row of `o.id` with `o` (place, kind, inode, Mac info): a rebuild making
    /// the desktop say what the disk says. The place must be free and not inside the object.
    pub fn overwrite(&mut self, o: &Object) -> Result<()> {
        self.forget_places();
        self.known_dirs.clear();
        validate_name(&o.name)?;
        if o.id == deskd_db::ROOT_ID {
            return Err(DbError::Root("moved").into());
        }
        self.check_directory(o.parent)?;
        let mut cursor = o.parent;
        while cursor != deskd_db::ROOT_ID && cursor != deskd_db::ROOT_PARENT_ID {
            if cursor == o.id {
                return Err(DbError::IntoItself(o.id).into());
            }
            cursor = self.get(cursor)?.parent;
        }
        if let Some(existing) = self.lookup(o.parent, &o.name)? {
            if existing.id != o.id {
                return Err(DbError::Exists {
                    parent: o.parent,
                    name: String::from_utf8_lossy(&o.name).into_owned(),
                    existing: existing.id,
                }
                .into());
            }
        }
        let key = deskd_db::names::search_key(&o.name);
        let n = Db::new(&mut *self.ready(true)?, self.st).execute(
            "UPDATE deskd.objects SET parent = $3, name = $4, skey = $5, kind = $6, dev = $7,
             ino = $8, type = $9, creator = $10, flags = $11 WHERE vid = $1 AND id = $2",
            &[
                &self.vid,
                &i64::from(o.id),
                &i64::from(o.parent),
                &o.name,
                &key,
                &kind_to_sql(o.kind),
                &(o.dev as i64),
                &(o.ino as i64),
                &&o.type_code[..],
                &&o.creator[..],
                &i32::from(o.flags),
            ],
        )?;
        if n == 0 {
            return Err(DbError::NoSuchId(o.id).into());
        }
        self.changed.push(o.id);
        self.names.push(NameChange::Set(o.id, key));
        Ok(())
    }

    /// Move the row of `id` out of its place to a name no file can have (it holds `/`), so
    /// another object can take the place; a rebuild then overwrites or removes it.
    pub fn park(&mut self, id: u32) -> Result<()> {
        self.forget_places();
        self.known_dirs.clear();
        let name = format!("park/{id}");
        Db::new(&mut *self.ready(true)?, self.st).execute(
            "UPDATE deskd.objects SET name = $3, skey = $4 WHERE vid = $1 AND id = $2",
            &[
                &self.vid,
                &i64::from(id),
                &name.as_bytes(),
                &deskd_db::names::search_key(name.as_bytes()),
            ],
        )?;
        self.changed.push(id);
        self.names.push(NameChange::Remove(id));
        Ok(())
    }
}

/// The steps of deskd-db's [`lookup_or_add`] on PostgreSQL; the checks and the allocation
/// here serve the batch's other writes too.
impl AddSteps for PgBatch<'_> {
    type Error = PgError;

    fn registered_as(&mut self, parent: u32, name: &[u8]) -> Result<Option<Object>> {
        // The places read ahead and the rows buffered first: no round trip when they know.
        self.lookup(parent, name)
    }

    fn check_directory(&mut self, id: u32) -> Result<()> {
        if self.known_dirs.contains(&id) {
            return Ok(());
        }
        match self.get(id)?.kind {
            Kind::Dir => {
                self.known_dirs.insert(id);
                Ok(())
            }
            _ => Err(DbError::NotADirectory(id).into()),
        }
    }

    /// The hint when it is allowed and free, else the counter's next allowed value.
    fn pick_id(&mut self, hint: Option<u32>) -> Result<u32> {
        if let Some(h) = hint.filter(|&h| !ids::is_forbidden(h)) {
            if !self.id_taken(h)? {
                self.last_id = self.last_id.max(h);
                return Ok(h);
            }
        }
        let candidate = ids::next_candidate(self.last_id).ok_or(DbError::IdSpaceExhausted)?;
        self.last_id = candidate;
        Ok(candidate)
    }

    fn insert_checked(&mut self, object: &Object) -> Result<()> {
        self.insert_row(object)
    }
}
