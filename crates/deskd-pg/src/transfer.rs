//! Moving a whole volume's desktop into and out of the database (`deskd migrate`): every
//! object with its own ID, every comment, APPL and icon record, the counter and the volume's
//! identity.
//!
//! [`import`] runs in one transaction (the schema, if the database has none yet, the volume's
//! row and every record): another session sees nothing until it commits, and any failure rolls
//! all of it back. The rows go in with `COPY` (binary), not one `INSERT` a row. [`export`]
//! reads in one `REPEATABLE READ READ ONLY` transaction, so what it hands out is one
//! consistent state even while servers write.

use deskd_db::{ApplRecord, IconRecord, Object};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{ToSql, Type};
use postgres::{Client, Transaction};

use crate::error::{PgError, Result};
use crate::schema::{self, VolumeKey, FORMAT_VERSION, VOLUME_LOCK};
use crate::store::{four, object_from_row, OBJECT_COLUMNS};

/// What a volume is besides its records: which volume, since when, and its ID counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeHeader {
    /// Its name and identity (the SQLite desktop's `volume_uuid`).
    pub key: VolumeKey,
    /// Unix time its desktop was first created (the SQLite desktop's `created`).
    pub created: i64,
    /// The highest ID it handed out (the counter, never lowered).
    pub last_id: u32,
}

/// How many records were copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Objects, the root included.
    pub objects: u64,
    /// Finder comments.
    pub comments: u64,
    /// APPL records.
    pub appl: u64,
    /// Icon records.
    pub icons: u64,
}

/// The records of a volume other than its objects (few, next to the objects), as
/// [`export`] hands them out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    /// Finder comments by object ID, in ID order.
    pub comments: Vec<(u32, Vec<u8>)>,
    /// APPL records.
    pub appl: Vec<ApplRecord>,
    /// Icon records.
    pub icons: Vec<IconRecord>,
}

/// Objects are sent to the server in `COPY` streams; progress is reported this often.
const PROGRESS_EVERY: u64 = 4096;

/// Copy the volume `source` (any desktop: an SQLite [`deskd_db::Reader`] in practice) into
/// the database as a new volume with `header`'s name, identity, creation time and counter.
/// One transaction: the schema is created if the database has none, a database of a newer
/// format ([`PgError::FormatTooNew`]) or another application's `deskd` schema
/// ([`PgError::NotADesktop`]) is refused, and so is a volume the database has under this
/// name or identity ([`PgError::VolumeExists`], [`PgError::OtherVolume`]). The objects
/// copied are counted back in the database before the commit. `progress` gets the number of
/// objects sent so far.
pub fn import(
    client: &mut Client,
    header: &VolumeHeader,
    source: &dyn deskd_db::Read,
    progress: &dyn Fn(u64),
) -> Result<Counts> {
    let mut tx = client.transaction()?;
    schema::ensure_schema_in(&mut tx)?;
    let vid = new_volume_row(&mut tx, header)?;
    let mut counts = Counts {
        objects: copy_objects(&mut tx, vid, source, progress)?,
        ..Counts::default()
    };
    // The objects' trigger registered each APPL-typed object as its creator's application
    // (tag 0); the source's own records replace those, so a record the source had removed
    // does not come back and every tag is the source's.
    tx.execute("DELETE FROM deskd.appl WHERE vid = $1", &[&vid])?;
    let appl = source.all_appl()?;
    copy_rows(
        &mut tx,
        "COPY deskd.appl (vid, creator, app_id, tag) FROM STDIN (FORMAT binary)",
        &[Type::INT8, Type::BYTEA, Type::INT8, Type::INT8],
        appl.iter().map(|r| {
            vec![
                Box::new(vid) as Box<dyn ToSql + Sync>,
                Box::new(r.creator.to_vec()),
                Box::new(i64::from(r.app_id)),
                Box::new(i64::from(r.tag)),
            ]
        }),
    )?;
    counts.appl = appl.len() as u64;
    let comments = source.all_comments()?;
    copy_rows(
        &mut tx,
        "COPY deskd.comments (vid, id, text) FROM STDIN (FORMAT binary)",
        &[Type::INT8, Type::INT8, Type::BYTEA],
        comments.iter().map(|(id, text)| {
            vec![
                Box::new(vid) as Box<dyn ToSql + Sync>,
                Box::new(i64::from(*id)),
                Box::new(text.clone()),
            ]
        }),
    )?;
    counts.comments = comments.len() as u64;
    let icons = source.all_icons()?;
    copy_rows(
        &mut tx,
        "COPY deskd.icons (vid, creator, type, itype, tag, bitmap) FROM STDIN (FORMAT binary)",
        &[
            Type::INT8,
            Type::BYTEA,
            Type::BYTEA,
            Type::INT2,
            Type::INT8,
            Type::BYTEA,
        ],
        icons.iter().map(|i| {
            vec![
                Box::new(vid) as Box<dyn ToSql + Sync>,
                Box::new(i.creator.to_vec()),
                Box::new(i.type_code.to_vec()),
                Box::new(i16::from(i.itype)),
                Box::new(i64::from(i.tag)),
                Box::new(i.bitmap.clone()),
            ]
        }),
    )?;
    counts.icons = icons.len() as u64;
    let stored = count_in(&mut tx, vid)?;
    if stored != counts {
        return Err(deskd_db::DbError::Corrupt(format!(
            "the database holds {stored:?} after the copy, the desktop {counts:?}; rolled back"
        ))
        .into());
    }
    tx.commit()?;
    Ok(counts)
}

/// The volume's row, made under the advisory lock new volumes are made under; refused when
/// the database knows its name or its identity.
fn new_volume_row(tx: &mut Transaction<'_>, header: &VolumeHeader) -> Result<i64> {
    let key = &header.key;
    let identity = key.identity as i64;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&VOLUME_LOCK])?;
    if let Some(row) = tx.query_opt(
        "SELECT identity FROM deskd.volume WHERE name = $1",
        &[&key.name],
    )? {
        let recorded: i64 = row.get(0);
        if recorded == identity {
            return Err(PgError::VolumeExists {
                name: key.name.clone(),
                identity: key.identity,
            });
        }
        return Err(PgError::OtherVolume {
            what: format!("the name {:?}", key.name),
            recorded: format!("identity {:016x}", recorded as u64),
            expected: format!("identity {:016x}", key.identity),
        });
    }
    crate::schema::refuse_identity_named_otherwise(tx, key)?;
    let counter = i64::from(header.last_id.max(deskd_db::FIRST_ID - 1));
    Ok(tx
        .query_one(
            "INSERT INTO deskd.volume (name, identity, last_id, created) VALUES ($1, $2, $3, $4)
             RETURNING vid",
            &[&key.name, &identity, &counter, &header.created],
        )?
        .get(0))
}

/// Stream every object of `source` into `deskd.objects` with its search key; returns how many.
fn copy_objects(
    tx: &mut Transaction<'_>,
    vid: i64,
    source: &dyn deskd_db::Read,
    progress: &dyn Fn(u64),
) -> Result<u64> {
    let sink = tx.copy_in(
        "COPY deskd.objects (vid, id, parent, name, kind, dev, ino, type, creator, flags, ctime, skey)
         FROM STDIN (FORMAT binary)",
    )?;
    let mut writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::INT8,
            Type::INT8,
            Type::INT8,
            Type::BYTEA,
            Type::INT2,
            Type::INT8,
            Type::INT8,
            Type::BYTEA,
            Type::BYTEA,
            Type::INT4,
            Type::INT8,
            Type::TEXT,
        ],
    );
    // The callback cannot return an error: the first one is kept and the rest skipped.
    let mut failed: Option<PgError> = None;
    let mut sent = 0u64;
    source.for_each_object(&mut |o: Object| {
        if failed.is_some() {
            return;
        }
        match writer.write(&crate::store::ObjectRow::new(vid, &o).values()) {
            Ok(()) => {
                sent += 1;
                if sent.is_multiple_of(PROGRESS_EVERY) {
                    progress(sent);
                }
            }
            Err(e) => failed = Some(e.into()),
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    writer.finish()?;
    progress(sent);
    Ok(sent)
}

/// `COPY` `rows` in with `statement` (binary, of these column types).
fn copy_rows(
    tx: &mut Transaction<'_>,
    statement: &str,
    types: &[Type],
    rows: impl Iterator<Item = Vec<Box<dyn ToSql + Sync>>>,
) -> Result<()> {
    let mut writer = BinaryCopyInWriter::new(tx.copy_in(statement)?, types);
    for row in rows {
        let refs: Vec<&(dyn ToSql + Sync)> = row.iter().map(|v| v.as_ref()).collect();
        writer.write(&refs)?;
    }
    writer.finish()?;
    Ok(())
}

/// How many records volume `vid` holds.
fn count_in(tx: &mut Transaction<'_>, vid: i64) -> Result<Counts> {
    let row = tx.query_one(
        "SELECT (SELECT count(*) FROM deskd.objects WHERE vid = $1),
                (SELECT count(*) FROM deskd.comments WHERE vid = $1),
                (SELECT count(*) FROM deskd.appl WHERE vid = $1),
                (SELECT count(*) FROM deskd.icons WHERE vid = $1)",
        &[&vid],
    )?;
    Ok(Counts {
        objects: row.get::<_, i64>(0) as u64,
        comments: row.get::<_, i64>(1) as u64,
        appl: row.get::<_, i64>(2) as u64,
        icons: row.get::<_, i64>(3) as u64,
    })
}

/// Hold volume `name`'s serving lock exclusively for as long as `client`'s session lives:
/// refused ([`PgError::Served`]) while any `deskd serve` serves the volume from the database,
/// and no server opens it meanwhile. A database without the volume holds nothing (the export
/// says so).
pub fn hold_unserved(client: &mut Client, name: &str) -> Result<()> {
    if !schema::has_volumes_table(client)? {
        return Ok(());
    }
    let Some(row) = client.query_opt("SELECT vid FROM deskd.volume WHERE name = $1", &[&name])?
    else {
        return Ok(());
    };
    let vid: i64 = row.get(0);
    let held: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, ($2::bigint)::int)",
            &[&schema::SERVE_LOCK, &vid],
        )?
        .get(0);
    if held {
        Ok(())
    } else {
        Err(PgError::Served {
            name: name.to_owned(),
            holders: serving_lock_holders(client, vid),
        })
    }
}

/// Who holds volume `vid`'s serving lock besides this session, as words for a refusal:
/// `" (the serving lock is held by: role R, application A, from HOST, database session pid
/// P, shared; …)"`, or empty when the database does not say.
/// Any role that may connect to the database can take an advisory lock, so a refusal must
/// not only say "deskd serve" (hostile review of stop 42, finding 4). `usename` and
/// `application_name` are shown to every role.
pub fn serving_lock_holders(client: &mut Client, vid: i64) -> String {
    let rows = client.query(
        "SELECT coalesce(a.usename::text, '?'), coalesce(a.application_name, ''), l.pid, l.mode,
                coalesce(host(a.client_addr), 'local socket')
           FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
            AND l.classid::bigint = $1 AND l.objid::bigint = ($2::bigint)::int::bigint
            AND l.pid <> pg_backend_pid()
          ORDER BY l.pid LIMIT 8",
        &[&i64::from(schema::SERVE_LOCK), &vid],
    );
    let Ok(rows) = rows else {
        return String::new();
    };
    let held: Vec<String> = rows
        .iter()
        .map(|r| {
            let mode: String = r.get(3);
            // The pid is the database session's (deskd's own is in its application name).
            format!(
                "role {}, application {:?}, from {}, database session pid {}, {}",
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(4),
                r.get::<_, i32>(2),
                if mode == "ExclusiveLock" {
                    "exclusive"
                } else {
                    "shared"
                }
            )
        })
        .collect();
    if held.is_empty() {
        String::new()
    } else {
        format!(" (the serving lock is held by: {})", held.join("; "))
    }
}

/// Volume `name`'s serving lock, held exclusively on a session of its own until this is
/// dropped ([`hold_unserved_session`]).
pub struct UnservedHold {
    session: Client,
    name: String,
    /// The volume's ID counter in the database, read once the lock was held (no server can
    /// raise it meanwhile); None when the database has no such volume.
    pub last_id: Option<u32>,
}

/// Connect and hold volume `name`'s serving lock exclusively ([`hold_unserved`]) until the
/// returned hold is dropped: `deskd restore --leave-postgresql --config` is refused while a
/// server serves the volume from the database, and no server opens it while it restores.
pub fn hold_unserved_session(options: &crate::ConnectOptions, name: &str) -> Result<UnservedHold> {
    let mut session = crate::connect(options)?;
    hold_unserved(&mut session, name)?;
    let last_id = volume_last_id(&mut session, name)?;
    Ok(UnservedHold {
        session,
        name: name.to_owned(),
        last_id,
    })
}

impl UnservedHold {
    /// Record in the database that the volume was moved out of it ([`record_moved_out`]),
    /// while this hold keeps every server off.
    pub fn record_moved_out(&mut self) -> Result<()> {
        record_moved_out(&mut self.session, &self.name)
    }

    /// Take the record back ([`forget_moved_out`]): the restore it was made for failed.
    pub fn forget_moved_out(&mut self) -> Result<()> {
        forget_moved_out(&mut self.session, &self.name)
    }
}

/// Record in the database that volume `name` was moved out of it (`deskd restore
/// --leave-postgresql --config`, `deskd migrate --to sqlite`): a server that takes the serving
/// lock afterwards refuses the volume ([`PgError::MovedOut`]) instead of handing out IDs from
/// the stale copy (a server still configured with `backend`, down while it was moved out).
/// Call it holding the lock exclusively ([`hold_unserved`]), before the root's mark is removed:
/// a move killed in between leaves the volume refused by servers, never served twice. Nothing
/// is recorded for a database without the volume.
pub fn record_moved_out(client: &mut Client, name: &str) -> Result<()> {
    if !schema::has_volumes_table(client)? {
        return Ok(());
    }
    client.execute(
        "INSERT INTO deskd.meta (vid, key, value)
             SELECT vid, $2, extract(epoch FROM now())::bigint FROM deskd.volume WHERE name = $1
         ON CONFLICT (vid, key) DO UPDATE SET value = excluded.value",
        &[&name, &schema::MOVED_OUT_KEY],
    )?;
    Ok(())
}

/// Remove [`record_moved_out`]'s record of volume `name` (a restore that failed after it).
pub fn forget_moved_out(client: &mut Client, name: &str) -> Result<()> {
    if !schema::has_volumes_table(client)? {
        return Ok(());
    }
    client.execute(
        "DELETE FROM deskd.meta WHERE key = $2
             AND vid = (SELECT vid FROM deskd.volume WHERE name = $1)",
        &[&name, &schema::MOVED_OUT_KEY],
    )?;
    Ok(())
}

/// Volume `name`'s ID counter in the database (the highest ID it handed out); None when the
/// database has no deskd schema or no such volume.
fn volume_last_id(client: &mut Client, name: &str) -> Result<Option<u32>> {
    if !schema::has_volumes_table(client)? {
        return Ok(None);
    }
    Ok(client
        .query_opt("SELECT last_id FROM deskd.volume WHERE name = $1", &[&name])?
        .map(|row| row.get::<_, i64>(0) as u32))
}

/// Read volume `name` out of the database in one consistent snapshot: each object, in ID
/// order, goes to `each_object` as it streams in (an error there ends the export); the header
/// and the other records are returned. A database without the volume is
/// [`PgError::NoSuchVolume`]; one of a newer format [`PgError::FormatTooNew`]. Nothing is
/// written.
pub fn export(
    client: &mut Client,
    name: &str,
    each_object: &mut dyn FnMut(Object) -> deskd_db::Result<()>,
) -> Result<(VolumeHeader, Records)> {
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    match schema::format_version(&mut tx)? {
        None => return Err(PgError::NoSuchVolume(name.to_owned())),
        Some(found) if found > FORMAT_VERSION => {
            return Err(PgError::FormatTooNew {
                found,
                supported: FORMAT_VERSION,
            })
        }
        Some(_) => {}
    }
    let Some(row) = tx.query_opt(
        "SELECT vid, identity, last_id, created FROM deskd.volume WHERE name = $1",
        &[&name],
    )?
    else {
        return Err(PgError::NoSuchVolume(name.to_owned()));
    };
    let vid: i64 = row.get(0);
    let header = VolumeHeader {
        key: VolumeKey {
            name: name.to_owned(),
            identity: row.get::<_, i64>(1) as u64,
        },
        last_id: row.get::<_, i64>(2) as u32,
        created: row.get(3),
    };
    let mut rows = tx.query_raw(
        &format!("SELECT {OBJECT_COLUMNS} FROM deskd.objects WHERE vid = $1 ORDER BY id"),
        [&vid],
    )?;
    while let Some(row) = rows.next()? {
        each_object(object_from_row(&row))?;
    }
    drop(rows);
    let records = Records {
        comments: tx
            .query(
                "SELECT id, text FROM deskd.comments WHERE vid = $1 ORDER BY id",
                &[&vid],
            )?
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u32, r.get(1)))
            .collect(),
        appl: tx
            .query(
                "SELECT creator, app_id, tag FROM deskd.appl WHERE vid = $1
                 ORDER BY creator, app_id",
                &[&vid],
            )?
            .iter()
            .map(|r| ApplRecord {
                creator: four(r.get(0)),
                app_id: r.get::<_, i64>(1) as u32,
                tag: r.get::<_, i64>(2) as u32,
            })
            .collect(),
        icons: tx
            .query(
                "SELECT creator, type, itype, tag, bitmap FROM deskd.icons WHERE vid = $1
                 ORDER BY creator, type, itype",
                &[&vid],
            )?
            .iter()
            .map(crate::store::icon_from_row)
            .collect(),
    };
    tx.commit()?;
    Ok((header, records))
}
