//! Consistent copies of a live desktop (`deskd backup`) and the checks a copy must pass before
//! it is trusted (`deskd restore`).
//!
//! The copy is SQLite's online backup run inside one read transaction of the source: every page
//! comes from the same snapshot, so writers go on committing into the WAL meanwhile and the copy
//! never restarts, however busy the volume is (a backup that opened a new snapshot per step would
//! start again from page 1 after every commit of the server).

use std::path::Path;
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use crate::{meta_get, DbError, Result, FORMAT_VERSION};

/// Pages copied per backup step, between two progress reports (4 MiB of 4 KiB pages).
const STEP_PAGES: i32 = 1024;

/// What a desktop copy holds, read in the snapshot it was copied from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyInfo {
    /// `PRAGMA user_version`: the desktop format.
    pub format: i32,
    /// `meta.volume_uuid`: names the desktop; a restore checks it against the volume's.
    pub volume_uuid: i64,
    /// `meta.created`.
    pub created: i64,
    /// `meta.last_id`: the ID counter at the snapshot.
    pub last_id: u32,
    /// Rows in `objects`.
    pub objects: u64,
    /// SQLite's page size in bytes.
    pub page_size: u64,
    /// Pages in the file; with `page_size`, its size, and the total of the progress reports.
    pub pages: u64,
}

/// Copy the desktop at `source` into `dest` (an existing empty file, which the caller made)
/// as one snapshot, and leave `dest` a self-contained rollback-journal database. `progress`
/// gets (pages copied, pages in all) after each step.
pub fn copy_snapshot(
    source: &Path,
    dest: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CopyInfo> {
    // The read-only open may create the shared-memory file, with the main file's mode.
    crate::files::make_private(source);
    let src = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    src.busy_timeout(Duration::from_secs(5))?;
    // The read transaction the whole copy runs in: the backup steps use it instead of opening
    // (and, after a commit elsewhere, restarting) one of their own.
    src.execute_batch("BEGIN")?;
    let info = read_info(&src)?;
    let mut dst = Connection::open_with_flags(
        dest,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    // A new private file: a failed copy is deleted, not rolled back; the caller syncs it.
    dst.pragma_update(None, "journal_mode", "OFF")?;
    dst.pragma_update(None, "synchronous", "OFF")?;
    {
        let backup = Backup::new(&src, &mut dst)?;
        loop {
            // A full disk can only be the copy's (the source is only read); SQLite reports it
            // with the source connection's message, which says nothing.
            let step = backup
                .step(STEP_PAGES)
                .map_err(|e| match e.sqlite_error_code() {
                    Some(rusqlite::ErrorCode::DiskFull) => DbError::NoSpace(dest.to_path_buf()),
                    _ => DbError::from(e),
                })?;
            match step {
                StepResult::Done => break,
                StepResult::More => {
                    let p = backup.progress();
                    let total = p.pagecount.max(0) as u64;
                    progress(total - (p.remaining.max(0) as u64).min(total), total);
                }
                // Only the destination can be locked (the source's snapshot is ours); it is
                // a file nobody else knows of, so this is transient.
                StepResult::Busy | StepResult::Locked => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
    progress(info.pages, info.pages);
    src.execute_batch("COMMIT")?;
    drop(src);
    // The copied header still says WAL; a backup is one file that any sqlite3 can open.
    let mode: String = dst
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => DbError::NoSpace(dest.to_path_buf()),
            _ => DbError::from(e),
        })?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(DbError::Corrupt(format!(
            "{}: cannot leave WAL mode (got {mode})",
            dest.display()
        )));
    }
    dst.close().map_err(|(_, e)| DbError::from(e))?;
    Ok(info)
}

/// Check a desktop copy without changing it: SQLite's `integrity_check` and `foreign_key_check`
/// pass, and it is a deskd desktop this deskd can read. Returns what it holds.
pub fn check_copy(path: &Path) -> Result<CopyInfo> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    conn.pragma_update(None, "query_only", true)?;
    let problems: Vec<String> = conn
        .prepare("PRAGMA integrity_check")?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<_>>()?;
    if problems != ["ok"] {
        return Err(DbError::Corrupt(format!(
            "integrity_check: {}",
            problems.join("; ")
        )));
    }
    let dangling: i64 =
        conn.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })?;
    if dangling != 0 {
        return Err(DbError::Corrupt(format!(
            "foreign_key_check: {dangling} records point at missing objects"
        )));
    }
    conn.execute_batch("BEGIN")?;
    read_info(&conn)
}

/// The desktop's format, identity and size, as the current transaction sees them.
fn read_info(conn: &Connection) -> Result<CopyInfo> {
    let format: i32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if format > FORMAT_VERSION {
        return Err(DbError::FormatTooNew {
            found: format,
            supported: FORMAT_VERSION,
        });
    }
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('meta', 'objects')",
        [],
        |r| r.get(0),
    )?;
    if format < 1 || tables != 2 {
        return Err(DbError::NotADesktop);
    }
    let need = |key: &str| -> Result<i64> {
        meta_get(conn, key)?.ok_or_else(|| DbError::Corrupt(format!("meta has no {key}")))
    };
    Ok(CopyInfo {
        format,
        volume_uuid: need("volume_uuid")?,
        created: need("created")?,
        last_id: u32::try_from(need("last_id")?)
            .map_err(|_| DbError::Corrupt("meta.last_id is out of range".into()))?,
        objects: conn.query_row("SELECT count(*) FROM objects", [], |r| r.get::<_, i64>(0))? as u64,
        page_size: conn.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))? as u64,
        pages: conn.query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))? as u64,
    })
}
