//! `deskd migrate`: move a volume's desktop between its SQLite file and a PostgreSQL database,
//! with every ID, record, the counter and the volume's identity (issue 28).
//!
//! Both directions run offline: the desktop's lock (the one `deskd serve` holds) is taken
//! first, so a served volume is refused before anything is read or written. Into PostgreSQL
//! the copy is one transaction (`deskd_pg::transfer::import`): a refusal or a failure leaves
//! the database as it was. Back to SQLite the new desktop is written under the rebuild's
//! temporary name with deskd-db's bulk loader, checked, and renamed into place; a desktop
//! already there is replaced only with `--replace`, and kept as `.Desktop.before-migrate`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use deskd_db::bulk::{BulkLoad, Identity};
use deskd_db::Read as _;
use deskd_pg::transfer::{self, Counts, VolumeHeader};
use deskd_pg::{ConnectOptions, PgError, VolumeKey};

/// The suffix the desktop a migration back to SQLite replaced is kept under.
pub const BEFORE_MIGRATE_SUFFIX: &str = ".before-migrate";

/// What went wrong; nothing was changed unless the message says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A file-system call failed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the kernel said.
        error: std::io::Error,
    },
    /// The volume root's checks (its relocation link, the user's right to its desktop).
    #[error("{0}")]
    Volume(String),
    /// A running server (or a rebuild) holds the desktop's lock.
    #[error(
        "{}: the desktop is open by a running deskd serve (or a rebuild); stop serving the \
         volume first, nothing was changed",
        root.display()
    )]
    Served {
        /// The volume root.
        root: PathBuf,
    },
    /// There is no SQLite desktop to move into PostgreSQL.
    #[error("no desktop at {}; nothing to migrate", desktop.display())]
    NoDesktop {
        /// Where it was looked for.
        desktop: PathBuf,
    },
    /// The desktop carries no identity (`volume_uuid`), which the database keys volumes by.
    #[error(
        "{}: the desktop has no volume identity (meta volume_uuid); serve it once or run \
         deskd rebuild -f, then migrate",
        desktop.display()
    )]
    NoIdentity {
        /// The desktop.
        desktop: PathBuf,
    },
    /// Back to SQLite over a desktop, without `--replace`.
    #[error(
        "{}: the volume has a desktop already; give --replace to replace it (it is kept as \
         {}), nothing was changed",
        desktop.display(),
        before.display()
    )]
    DesktopExists {
        /// The desktop.
        desktop: PathBuf,
        /// Where `--replace` would keep it.
        before: PathBuf,
    },
    /// The place the replaced desktop would be kept is taken (an earlier migration's).
    #[error(
        "{}: exists (a desktop an earlier migration replaced); move it away first, nothing \
         was changed",
        path.display()
    )]
    BeforeExists {
        /// The file.
        path: PathBuf,
    },
    /// The database's volume is not the one whose desktop would be replaced.
    #[error(
        "{}: the desktop is volume identity {desktop:016x}, the database's volume {name:?} is \
         {database:016x}: another volume; nothing was changed",
        root.display()
    )]
    OtherVolume {
        /// The volume root.
        root: PathBuf,
        /// The name in the database.
        name: String,
        /// The identity of the desktop in the volume.
        desktop: u64,
        /// The identity of the database's volume.
        database: u64,
    },
    /// The volume's path is no UTF-8, so it cannot be its name in the database.
    #[error("{}: the path is not UTF-8; give the volume's name with --name", root.display())]
    NoName {
        /// The volume root.
        root: PathBuf,
    },
    /// The SQLite desktop refused or failed.
    #[error("{}: {error}", desktop.display())]
    Desktop {
        /// The desktop file.
        desktop: PathBuf,
        /// deskd-db's error.
        error: deskd_db::DbError,
    },
    /// The desktop to move fails the start-up check.
    #[error("{}: the desktop fails its check ({problems}); repair it with deskd rebuild first", desktop.display())]
    Unsound {
        /// The desktop.
        desktop: PathBuf,
        /// What the check found.
        problems: String,
    },
    /// PostgreSQL refused or failed (deskd-pg's words).
    #[error("{0}")]
    Postgres(#[from] PgError),
}

/// What a migration did, for its summary line.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The volume root.
    pub root: PathBuf,
    /// The volume's name and identity in the database, its counter and creation time.
    pub header: VolumeHeader,
    /// The records copied.
    pub counts: Counts,
    /// `user@host:port/db` of the database (no password).
    pub database: String,
    /// The desktop a migration to SQLite replaced, where it is kept.
    pub kept: Option<PathBuf>,
    /// How long it took.
    pub seconds: f64,
}

impl Summary {
    /// The one-line summary `deskd migrate` prints.
    pub fn line(&self, to_postgresql: bool) -> String {
        let c = &self.counts;
        let (from, to) = if to_postgresql {
            (self.root.display().to_string(), self.database.clone())
        } else {
            (self.database.clone(), self.root.display().to_string())
        };
        let kept = match &self.kept {
            Some(path) => format!(" (the old desktop kept as {})", path.display()),
            None => String::new(),
        };
        format!(
            "migrate {:?}: {} objects, {} comments, {} APPL records, {} icon records, last ID {}, \
             identity {:016x}: {from} -> {to}{kept}, {:.2}s",
            self.header.key.name,
            c.objects,
            c.comments,
            c.appl,
            c.icons,
            self.header.last_id,
            self.header.key.identity,
            self.seconds
        )
    }
}

/// The volume's root (absolute, links resolved) and its desktop (following a relocation link),
/// once the user is known to be allowed to change it.
fn volume_paths(volume: &Path) -> Result<(PathBuf, PathBuf), MigrateError> {
    let root = std::fs::canonicalize(volume).map_err(|error| MigrateError::Io {
        path: volume.to_path_buf(),
        error,
    })?;
    if !root.is_dir() {
        return Err(MigrateError::Volume(format!(
            "{}: not a directory",
            root.display()
        )));
    }
    let desktop =
        deskd_rebuild::desktop_path(&root).map_err(|e| MigrateError::Volume(e.to_string()))?;
    deskd_volume::guard::require_admin(&root, &desktop, "deskd migrate")
        .map_err(|e| MigrateError::Volume(e.to_string()))?;
    Ok((root, desktop))
}

/// The volume's name in the database: `name`, or the root's path (as `[volume."PATH"]` in the
/// server's configuration names it).
fn volume_name(root: &Path, name: Option<&str>) -> Result<String, MigrateError> {
    match name {
        Some(name) => Ok(name.to_owned()),
        None => root
            .to_str()
            .map(str::to_owned)
            .ok_or_else(|| MigrateError::NoName {
                root: root.to_path_buf(),
            }),
    }
}

/// The desktop's lock, or [`MigrateError::Served`] when a server holds it.
fn lock(root: &Path, desktop: &Path) -> Result<std::fs::File, MigrateError> {
    deskd_volume::lock_desktop(desktop)
        .map_err(|error| MigrateError::Io {
            path: desktop.to_path_buf(),
            error,
        })?
        .ok_or_else(|| MigrateError::Served {
            root: root.to_path_buf(),
        })
}

fn db_error(desktop: &Path) -> impl Fn(deskd_db::DbError) -> MigrateError + '_ {
    move |error| MigrateError::Desktop {
        desktop: desktop.to_path_buf(),
        error,
    }
}

/// `deskd migrate VOLUME --to postgresql://…`: copy the volume's SQLite desktop into the
/// database as volume `name` (default: the root's path). `progress` gets the objects sent.
pub fn to_postgresql(
    volume: &Path,
    name: Option<&str>,
    database: &ConnectOptions,
    progress: &dyn Fn(u64),
) -> Result<Summary, MigrateError> {
    let started = Instant::now();
    let (root, desktop) = volume_paths(volume)?;
    let name = volume_name(&root, name)?;
    // A desktop in PostgreSQL already: a `.Desktop` left beside it is stale.
    deskd_volume::refuse_if_in_postgresql(&root).map_err(MigrateError::Volume)?;
    // Before the lock, which would create an empty file where there is none.
    if !std::fs::metadata(&desktop).is_ok_and(|m| m.len() > 0) {
        return Err(MigrateError::NoDesktop { desktop });
    }
    deskd_db::files::check_format(&desktop).map_err(db_error(&desktop))?;
    let _lock = lock(&root, &desktop)?;
    let reader = deskd_db::Reader::open_mapped(&desktop, false, 0).map_err(db_error(&desktop))?;
    reader.begin_snapshot().map_err(db_error(&desktop))?;
    let meta = |key| reader.meta(key).map_err(db_error(&desktop));
    let (Some(identity), Some(created)) = (meta("volume_uuid")?, meta("created")?) else {
        return Err(MigrateError::NoIdentity { desktop });
    };
    let last_id = meta("last_id")?.unwrap_or(0) as u32;
    let problems = reader.quick_check().map_err(db_error(&desktop))?;
    if !problems.is_empty() {
        return Err(MigrateError::Unsound {
            desktop,
            problems: problems.join("; "),
        });
    }
    let header = VolumeHeader {
        key: VolumeKey {
            name,
            identity: identity as u64,
        },
        created,
        last_id,
    };
    let shown = deskd_pg::connect::describe(&deskd_pg::connect::parse_target(&database.target)?);
    let mut client = deskd_pg::connect(database)?;
    let counts = transfer::import(&mut client, &header, &reader, progress)?;
    drop(reader);
    // From now on the offline tools keep off the SQLite file left beside the volume.
    deskd_volume::mark_desktop_in_postgresql(&root, true).map_err(|e| {
        MigrateError::Volume(format!(
            "the desktop was copied into the database, but the volume root could not be \
             marked as having its desktop there ({}): {e}",
            deskd_volume::BACKEND_XATTR
        ))
    })?;
    // The file left behind is not the volume's desktop any more: a note from a restore or
    // migrate that once moved the volume out of a database would refuse it a server of this
    // database after a copy that lost the root's mark. Removed after the mark is set (the
    // mark decides while it is there): a migrate stopped between the two leaves a marked
    // volume its servers serve, not one both they and a second migrate refuse (hostile
    // review of stop 43). A failure here only says so.
    if let Err(e) = deskd_volume::note_root_left_database(&root, None) {
        tracing::warn!(
            "the root's note that {} left a database ({}) could not be removed: {e}",
            root.display(),
            deskd_volume::LEFT_DATABASE_XATTR
        );
    }
    if let Err(e) = deskd_db::note_left_database(&desktop, false) {
        tracing::warn!(
            "the note that {} left a database could not be removed from the SQLite desktop \
             left behind ({e}); it matters only if the root's mark is lost (a copy without \
             extended attributes)",
            root.display()
        );
    }
    Ok(Summary {
        root,
        header,
        counts,
        database: shown,
        kept: None,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `deskd migrate VOLUME --from postgresql://… --to sqlite`: write the database's volume
/// `name` (default: the root's path) as the volume's new SQLite desktop. A desktop already
/// there is refused, or with `replace` kept as `.Desktop.before-migrate` (it must then be the
/// same volume: the same identity). `progress` gets the objects written.
pub fn to_sqlite(
    volume: &Path,
    name: Option<&str>,
    database: &ConnectOptions,
    replace: bool,
    progress: &dyn Fn(u64),
) -> Result<Summary, MigrateError> {
    let started = Instant::now();
    let (root, desktop) = volume_paths(volume)?;
    let name = volume_name(&root, name)?;
    let before = {
        let mut s = OsString::from(desktop.as_os_str());
        s.push(BEFORE_MIGRATE_SUFFIX);
        PathBuf::from(s)
    };
    let had_file = std::fs::symlink_metadata(&desktop).is_ok();
    let had_desktop = std::fs::metadata(&desktop).is_ok_and(|m| m.len() > 0);
    if had_desktop && !replace {
        return Err(MigrateError::DesktopExists { desktop, before });
    }
    if had_desktop && std::fs::symlink_metadata(&before).is_ok() {
        return Err(MigrateError::BeforeExists { path: before });
    }
    let lock = lock(&root, &desktop)?;
    let temp = desktop
        .parent()
        .unwrap_or(Path::new("/"))
        .join(deskd_volume::REBUILD_FILE);
    let result = write_from_database(
        &root,
        &desktop,
        &temp,
        &name,
        database,
        had_desktop.then_some(before.as_path()),
        progress,
    );
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
        // The lock made an empty desktop where there was none: a failure leaves none.
        if !had_file && std::fs::metadata(&desktop).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(&desktop);
        }
    }
    drop(lock);
    let (header, counts, shown) = result?;
    Ok(Summary {
        root,
        header,
        counts,
        database: shown,
        kept: had_desktop.then_some(before),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// [`to_sqlite`] under the lock: the new desktop at `temp`, then renamed over `desktop`
/// (the old one linked to `keep_as` first, when there is one).
fn write_from_database(
    root: &Path,
    desktop: &Path,
    temp: &Path,
    name: &str,
    database: &ConnectOptions,
    keep_as: Option<&Path>,
    progress: &dyn Fn(u64),
) -> Result<(VolumeHeader, Counts, String), MigrateError> {
    let old_identity = match keep_as {
        Some(_) => {
            let reader =
                deskd_db::Reader::open_mapped(desktop, false, 0).map_err(db_error(desktop))?;
            reader.meta("volume_uuid").map_err(db_error(desktop))?
        }
        None => None,
    };
    let shown = deskd_pg::connect::describe(&deskd_pg::connect::parse_target(&database.target)?);
    // No server writes the volume while it is copied: the lock is held by a session of its
    // own until this function returns (the export reads on another).
    let mut holder = deskd_pg::connect(database)?;
    transfer::hold_unserved(&mut holder, name)?;
    for stale in [temp.to_path_buf(), {
        let mut j = OsString::from(temp.as_os_str());
        j.push("-journal");
        PathBuf::from(j)
    }] {
        match std::fs::remove_file(&stale) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(MigrateError::Io { path: stale, error })
            }
            _ => {}
        }
    }
    let (header, counts) = export_into(database, name, temp, progress)?;
    // Noted in the new desktop as in the database (below): a server still configured with
    // `backend` refuses the database's stale copy by either.
    deskd_db::note_left_database(temp, true).map_err(db_error(temp))?;
    if let Some(old) = old_identity {
        if old as u64 != header.key.identity {
            return Err(MigrateError::OtherVolume {
                root: root.to_path_buf(),
                name: name.to_owned(),
                desktop: old as u64,
                database: header.key.identity,
            });
        }
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| MigrateError::Io { path, error }
    };
    if let Some(keep_as) = keep_as {
        // The old desktop whole in its main file (its WAL folded in), then a second name for
        // it: the rename below replaces `.Desktop` in one step, and the old file lives on.
        deskd_db::checkpoint_file(desktop).map_err(db_error(desktop))?;
        std::fs::hard_link(desktop, keep_as).map_err(io(keep_as))?;
    }
    for side in [deskd_db::wal_path(desktop), deskd_db::shm_path(desktop)] {
        match std::fs::remove_file(&side) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(MigrateError::Io { path: side, error })
            }
            _ => {}
        }
    }
    std::fs::rename(temp, desktop).map_err(io(desktop))?;
    let dir = desktop.parent().unwrap_or(Path::new("/"));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    // Recorded in the database first, under the lock: a server still configured with
    // `backend` that starts later refuses the stale copy (hostile review of stop 42, finding 1).
    transfer::record_moved_out(&mut holder, name)?;
    // And on the root, beside the mark (a server that cannot read the desktop's own note).
    deskd_volume::note_root_left_database(root, Some(deskd_db::now_unix())).map_err(|e| {
        MigrateError::Volume(format!(
            "the desktop was written to {}, but the root's note that the volume left the \
             database ({}) could not be written: {e}",
            desktop.display(),
            deskd_volume::LEFT_DATABASE_XATTR
        ))
    })?;
    // Under the serving lock (`holder`, held exclusively): a server that reconnects later takes
    // the lock, then reads the mark, and so sees the volume moved out (the newcomer review of
    // stop 41, finding 1); removed after the lock was let go, such a server saw it still there.
    deskd_volume::mark_desktop_in_postgresql(root, false).map_err(|e| {
        MigrateError::Volume(format!(
            "the desktop was written to {}, but the volume root's mark ({}) could not be \
             removed: {e}",
            desktop.display(),
            deskd_volume::BACKEND_XATTR
        ))
    })?;
    #[cfg(feature = "test-hooks")]
    test_pause("unmarked");
    drop(holder);
    Ok((header, counts, shown))
}

/// Test hook (feature `test-hooks` only): with `DESKD_TEST_MIGRATE_PAUSE=<point>:<file>`,
/// `deskd migrate --to sqlite` says `deskd migrate: test pause at <point>` on stderr when it
/// reaches `point` and waits there until `file` exists. `unmarked`: the root's mark removed,
/// the serving lock still held exclusively (a server started then must not serve the volume).
#[cfg(feature = "test-hooks")]
fn test_pause(point: &str) {
    let Some((at, file)) = std::env::var("DESKD_TEST_MIGRATE_PAUSE")
        .ok()
        .and_then(|v| {
            v.split_once(':')
                .map(|(a, f)| (a.to_owned(), PathBuf::from(f)))
        })
    else {
        return;
    };
    if at != point {
        return;
    }
    eprintln!("deskd migrate: test pause at {point}");
    while !file.exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Write volume `name` of the database, read in one consistent snapshot
/// ([`transfer::export`]), as a new SQLite desktop at `file` (which must not exist) with
/// deskd-db's bulk loader: every object with its ID, the comments, APPL and icon records, the
/// counter and the identity. `progress` gets the objects written. Used by `deskd migrate --to
/// sqlite` and by `deskd backup` of a PostgreSQL volume.
pub fn export_into(
    database: &ConnectOptions,
    name: &str,
    file: &Path,
    progress: &dyn Fn(u64),
) -> Result<(VolumeHeader, Counts), MigrateError> {
    let temp = file;
    let mut client = deskd_pg::connect(database)?;
    let mut bulk = BulkLoad::create(temp).map_err(db_error(temp))?;
    let mut objects = 0u64;
    let (header, records) = transfer::export(&mut client, name, &mut |o| {
        bulk.insert(&o)?;
        objects += 1;
        if objects.is_multiple_of(4096) {
            progress(objects);
        }
        Ok(())
    })?;
    progress(objects);
    // The objects' trigger registered every APPL-typed object; the database's records are
    // the truth (one removed there stays removed).
    bulk.clear_appl().map_err(db_error(temp))?;
    for record in &records.appl {
        bulk.add_appl(record).map_err(db_error(temp))?;
    }
    for (id, text) in &records.comments {
        bulk.add_comment(*id, text).map_err(db_error(temp))?;
    }
    for icon in &records.icons {
        bulk.add_icon(icon).map_err(db_error(temp))?;
    }
    let identity = Identity {
        created: header.created,
        volume_uuid: header.key.identity as i64,
    };
    bulk.finish(header.last_id, identity)
        .map_err(db_error(temp))?;
    let counts = Counts {
        objects,
        comments: records.comments.len() as u64,
        appl: records.appl.len() as u64,
        icons: records.icons.len() as u64,
    };
    Ok((header, counts))
}
