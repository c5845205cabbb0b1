//! The deskd schema in PostgreSQL: its tables, its format version, and the volumes a database
//! holds, each under a name and an identity that must match the volume opened.
//!
//! Every table lives in the PostgreSQL schema `deskd`, so a database may hold other
//! applications' tables too. `docs/ARCHITECTURE.md` ("The desktop on PostgreSQL") explains
//! the choices.

use postgres::{Client, GenericClient, Transaction};

use crate::error::{PgError, Result};

/// The format of the `deskd` schema this build writes; a newer one is refused.
pub const FORMAT_VERSION: i32 = 1;

/// The advisory lock key under which the schema is created or migrated, so that two servers
/// starting at once do not both create it ("dskd" in ASCII).
const SCHEMA_LOCK: i64 = 0x6473_6b64;

/// The advisory lock key under which a new volume is looked up and created ("dskv").
pub(crate) const VOLUME_LOCK: i64 = 0x6473_6b76;

/// The first key of the advisory lock a serving writer holds shared on its volume (the second
/// is the volume's `vid`), for as long as its session lives ("dsks"): `deskd migrate --to
/// sqlite` takes it exclusively, so it never copies a desktop servers still write, and no
/// server opens the volume while a migration copies it.
pub(crate) const SERVE_LOCK: i32 = 0x6473_6b73;

/// The `deskd.meta` key a volume's row carries once `deskd restore --leave-postgresql --config`
/// or `deskd migrate --to sqlite` moved it out of the database (its value: when, Unix seconds).
/// Written under the serving lock held exclusively and read by a server right after it takes
/// the lock: a server still configured with `backend` (a host down during the move) then
/// refuses the stale copy instead of handing out IDs from it again (hostile review of stop 42).
pub(crate) const MOVED_OUT_KEY: &str = "moved_out";

/// Format 1. The columns and numbers are those of the SQLite desktop (docs/desktop-format.md),
/// with the volume's key `vid` in front of every key.
const SCHEMA_V1: &str = r#"
CREATE SCHEMA IF NOT EXISTS deskd;
CREATE TABLE deskd.format (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version  integer NOT NULL
);
-- One row a volume. last_id is the ID counter (row-locked by the writer that allocates);
-- change_seq numbers the committed batches that changed the volume (deskd.changes).
CREATE TABLE deskd.volume (
    vid        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    identity   bigint NOT NULL UNIQUE,
    last_id    bigint NOT NULL CHECK (last_id BETWEEN 16 AND 4294967294),
    change_seq bigint NOT NULL DEFAULT 0,
    created    bigint NOT NULL
);
CREATE TABLE deskd.meta (
    vid   bigint NOT NULL REFERENCES deskd.volume ON DELETE CASCADE,
    key   text NOT NULL,
    value bigint NOT NULL,
    PRIMARY KEY (vid, key)
);
CREATE TABLE deskd.objects (
    vid     bigint NOT NULL REFERENCES deskd.volume ON DELETE CASCADE,
    id      bigint NOT NULL CHECK (id BETWEEN 2 AND 4294967294),
    parent  bigint NOT NULL,
    name    bytea NOT NULL,
    kind    smallint NOT NULL CHECK (kind IN (0, 1, 2)),
    dev     bigint NOT NULL DEFAULT 0,
    ino     bigint NOT NULL DEFAULT 0,
    type    bytea NOT NULL DEFAULT '\x00000000' CHECK (length(type) = 4),
    creator bytea NOT NULL DEFAULT '\x00000000' CHECK (length(creator) = 4),
    flags   integer NOT NULL DEFAULT 0,
    ctime   bigint NOT NULL DEFAULT 0,
    -- The search key (deskd_db::names::search_key: NFC, lower case) the servers' in-memory
    -- name index is loaded from, as in the SQLite desktop.
    skey    text NOT NULL,
    PRIMARY KEY (vid, id),
    UNIQUE (vid, parent, name)
);
CREATE TABLE deskd.appl (
    vid     bigint NOT NULL,
    creator bytea NOT NULL CHECK (length(creator) = 4),
    app_id  bigint NOT NULL,
    tag     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (vid, creator, app_id),
    FOREIGN KEY (vid, app_id) REFERENCES deskd.objects (vid, id) ON DELETE CASCADE
);
CREATE INDEX appl_app ON deskd.appl (vid, app_id);
-- An object whose type is APPL is its creator's application, as in the SQLite desktop's
-- appl_register and appl_reregister triggers.
CREATE FUNCTION deskd.appl_register() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND old.type = '\x4150504c'::bytea THEN
        DELETE FROM deskd.appl
            WHERE vid = old.vid AND app_id = old.id AND creator = old.creator;
    END IF;
    IF new.type = '\x4150504c'::bytea THEN
        INSERT INTO deskd.appl (vid, creator, app_id, tag) VALUES (new.vid, new.creator, new.id, 0)
            ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER appl_register AFTER INSERT OR UPDATE OF type, creator ON deskd.objects
    FOR EACH ROW EXECUTE FUNCTION deskd.appl_register();
CREATE TABLE deskd.icons (
    vid     bigint NOT NULL REFERENCES deskd.volume ON DELETE CASCADE,
    creator bytea NOT NULL CHECK (length(creator) = 4),
    type    bytea NOT NULL CHECK (length(type) = 4),
    itype   smallint NOT NULL,
    tag     bigint NOT NULL DEFAULT 0,
    bitmap  bytea NOT NULL,
    PRIMARY KEY (vid, creator, type, itype)
);
CREATE TABLE deskd.comments (
    vid  bigint NOT NULL,
    id   bigint NOT NULL,
    text bytea NOT NULL,
    PRIMARY KEY (vid, id),
    FOREIGN KEY (vid, id) REFERENCES deskd.objects (vid, id) ON DELETE CASCADE
);
-- The change log: the IDs each committed batch changed, by batch number, so that every
-- server's name index and caches can follow the others (NOTIFY deskd_changes says when).
CREATE TABLE deskd.changes (
    vid bigint NOT NULL REFERENCES deskd.volume ON DELETE CASCADE,
    seq bigint NOT NULL,
    id  bigint NOT NULL,
    PRIMARY KEY (vid, seq, id)
);
"#;

/// Which volume a desktop is: the name it is configured under and the identity stamped in
/// the volume (a random number made when the volume was first served). The database refuses
/// to open a name under another identity, or an identity under another name: two volumes
/// configured against one database by mistake never share IDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeKey {
    /// The volume's name in the database (unique there).
    pub name: String,
    /// The volume's identity (unique there).
    pub identity: u64,
}

/// Create the schema in an empty database, or check that the one there is of a format this
/// build reads. Safe to run from several servers at once.
pub fn ensure_schema(client: &mut Client) -> Result<()> {
    let mut tx = client.transaction()?;
    ensure_schema_in(&mut tx)?;
    tx.commit()?;
    Ok(())
}

/// [`ensure_schema`] inside the caller's transaction (a migration creates the schema and its
/// volume in one commit, so a failure leaves the database as it was).
pub(crate) fn ensure_schema_in(tx: &mut Transaction<'_>) -> Result<()> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
    match format_version(tx)? {
        Some(found) if found > FORMAT_VERSION => {
            return Err(PgError::FormatTooNew {
                found,
                supported: FORMAT_VERSION,
            })
        }
        // Later formats: `Some(v) if v < FORMAT_VERSION` steps go here, forward only.
        Some(_) => return Ok(()),
        None => {}
    }
    let schema_exists: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'deskd')",
            &[],
        )?
        .get(0);
    if schema_exists {
        return Err(PgError::NotADesktop);
    }
    tx.batch_execute(SCHEMA_V1)?;
    tx.execute(
        "INSERT INTO deskd.format (version) VALUES ($1)",
        &[&FORMAT_VERSION],
    )?;
    Ok(())
}

/// The format of the schema in the database, `None` if there is none.
pub fn format_version(client: &mut impl GenericClient) -> Result<Option<i32>> {
    let exists: bool = client
        .query_one("SELECT to_regclass('deskd.format') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        return Ok(None);
    }
    Ok(client
        .query_opt("SELECT version FROM deskd.format", &[])?
        .map(|row| row.get(0)))
}

/// Refuse `key` when a volume of another name has its identity (checked once no volume has
/// its name).
pub(crate) fn refuse_identity_named_otherwise(
    tx: &mut impl postgres::GenericClient,
    key: &VolumeKey,
) -> Result<()> {
    if let Some(row) = tx.query_opt(
        "SELECT name FROM deskd.volume WHERE identity = $1",
        &[&(key.identity as i64)],
    )? {
        let recorded: String = row.get(0);
        return Err(PgError::OtherVolume {
            what: format!("the identity {:016x}", key.identity),
            recorded: format!("name {recorded:?}"),
            expected: format!("name {:?}", key.name),
        });
    }
    Ok(())
}

/// Whether the database has deskd's volume table (the schema, at any format).
pub(crate) fn has_volumes_table(client: &mut impl GenericClient) -> Result<bool> {
    Ok(client
        .query_one("SELECT to_regclass('deskd.volume') IS NOT NULL", &[])?
        .get(0))
}

/// Whether the database holds a volume of this name or identity (false without deskd's
/// schema): what a server asks before it would make a new volume over an SQLite desktop.
pub fn holds_volume(client: &mut Client, name: &str, identity: Option<u64>) -> Result<bool> {
    if !has_volumes_table(client)? {
        return Ok(false);
    }
    let identity = identity.map(|i| i as i64);
    Ok(client
        .query_opt(
            "SELECT 1 FROM deskd.volume WHERE name = $1 OR identity = $2",
            &[&name, &identity],
        )?
        .is_some())
}

/// The `vid` of volume `key`, creating its row and root (ID 2) when the database has neither
/// its name nor its identity and `create` (else [`PgError::NotInDatabase`]). Returns whether
/// it was created.
pub fn open_volume(
    client: &mut Client,
    key: &VolumeKey,
    now: i64,
    create: bool,
) -> Result<(i64, bool)> {
    let identity = key.identity as i64;
    let mut tx = client.transaction()?;
    // Two servers opening a new volume at once: the second waits, then finds the first's row.
    // An advisory lock, not a table lock: the batches of other volumes go on meanwhile (the
    // unique name and identity would refuse a duplicate anyway).
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&VOLUME_LOCK])?;
    let by_name = tx.query_opt(
        "SELECT vid, identity FROM deskd.volume WHERE name = $1",
        &[&key.name],
    )?;
    if let Some(row) = by_name {
        let recorded: i64 = row.get(1);
        if recorded != identity {
            return Err(PgError::OtherVolume {
                what: format!("the name {:?}", key.name),
                recorded: format!("identity {:016x}", recorded as u64),
                expected: format!("identity {:016x}", key.identity),
            });
        }
        return Ok((row.get(0), false));
    }
    refuse_identity_named_otherwise(&mut tx, key)?;
    if !create {
        return Err(PgError::NotInDatabase {
            name: key.name.clone(),
            identity: key.identity,
        });
    }
    let first_counter = i64::from(deskd_db::FIRST_ID - 1);
    let vid: i64 = tx
        .query_one(
            "INSERT INTO deskd.volume (name, identity, last_id, created) VALUES ($1, $2, $3, $4)
             RETURNING vid",
            &[&key.name, &identity, &first_counter, &now],
        )?
        .get(0);
    tx.execute(
        "INSERT INTO deskd.objects (vid, id, parent, name, kind, ctime, skey)
         VALUES ($1, $2, $3, '', 1, $4, '')",
        &[
            &vid,
            &i64::from(deskd_db::ROOT_ID),
            &i64::from(deskd_db::ROOT_PARENT_ID),
            &now,
        ],
    )?;
    tx.commit()?;
    Ok((vid, true))
}
