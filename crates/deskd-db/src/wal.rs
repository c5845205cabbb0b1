//! The WAL as the server's checkpoints see it: how much of it is in use and how much of that
//! is not yet in `.Desktop` ([`WalIndex`], read from SQLite's shared-memory index), and a
//! connection of its own for checkpoints that must not hold up the writer
//! ([`CheckpointConnection`]).
//!
//! A WAL that SQLite reuses from its start after a complete checkpoint (instead of a checkpoint
//! truncating it to nothing) keeps its length: the file's size no longer says how much of it
//! holds changes. The wal-index header does (the format is SQLite's documented "wal-index
//! header" and "checkpoint information", <https://www.sqlite.org/walformat.html>): `mxFrame`,
//! the frames in use since the WAL last restarted, and `nBackfill`, how many of them a
//! checkpoint has copied into the main file.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::{shm_path, wal_path, Durability, Result};

/// The first bytes of the wal-index: two copies of its 48-byte header, then the checkpoint
/// information (whose first field is `nBackfill`).
const HEADER_BYTES: usize = 136;
/// Where `isInit` (one byte), `szPage` (u16) and `mxFrame` (u32) are in each header copy.
const IS_INIT: usize = 12;
const PAGE_SIZE: usize = 14;
const MX_FRAME: usize = 16;
/// Where `nBackfill` is (after both header copies).
const N_BACKFILL: usize = 96;
/// The WAL file's own header, before its first frame.
const WAL_HEADER: u64 = 32;
/// Each frame's header, before its page.
const FRAME_HEADER: u64 = 24;

/// How much of a desktop's WAL is in use, from its wal-index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WalState {
    /// Frames written since the WAL last restarted from its start.
    pub frames: u32,
    /// How many of them are copied into the main file.
    pub backfilled: u32,
    /// The database page size (each frame holds one page).
    pub page_size: u32,
}

impl WalState {
    fn frame_bytes(&self, frames: u32) -> u64 {
        frames as u64 * (self.page_size as u64 + FRAME_HEADER)
    }

    /// Bytes of the WAL file in use: its header and every frame since it last restarted.
    pub fn used_bytes(&self) -> u64 {
        match self.frames {
            0 => 0,
            n => WAL_HEADER + self.frame_bytes(n),
        }
    }

    /// Bytes of frames not yet copied into the main file (0 once a checkpoint copied them all,
    /// even while the WAL file still holds them).
    pub fn pending_bytes(&self) -> u64 {
        self.frame_bytes(self.frames.saturating_sub(self.backfilled))
    }
}

/// A desktop's wal-index (`.Desktop-shm`), opened once and read on demand.
///
/// Its descriptor is **not closed** while SQLite may use the file: SQLite locks the wal-index
/// with POSIX record locks, and closing any descriptor of a file drops every such lock the
/// process holds on it (the writer's, the readers', the one that tells other processes the
/// index is in use), which can corrupt the desktop. So the descriptors are kept in [`KEPT`]:
/// an opening of the same file shares the one there, and one nobody uses is closed once SQLite
/// has removed its file, so that reopening a volume again and again does not pile them up.
pub struct WalIndex {
    file: Arc<File>,
}

/// Every wal-index descriptor this process opened and has not closed. One is closed only when
/// no [`WalIndex`] uses it and its file has no name left: SQLite removes `-shm` only as the
/// last connection to the desktop, in any process, closes (holding its exclusive lock), and no
/// connection can open a file without a name, so no lock of this process is on it any more.
/// (Whoever may write the volume's root could remove it under open connections; that alone
/// already splits the connections that use it from those that come after.)
static KEPT: Mutex<Vec<Arc<File>>> = Mutex::new(Vec::new());

impl WalIndex {
    /// Open the wal-index beside `desktop`, which a connection must have open. Read-only, no
    /// link followed, and only a regular file (whoever may write the volume's root could put
    /// something else there; a FIFO must not block the open). The descriptor of the same file
    /// is shared when this process has one.
    pub fn open(desktop: &Path) -> std::io::Result<WalIndex> {
        let path = shm_path(desktop);
        let mut kept = KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        kept.retain(|f| Arc::strong_count(f) > 1 || f.metadata().map_or(true, |m| m.nlink() > 0));
        if let Ok(now) = std::fs::symlink_metadata(&path) {
            let same = |f: &&Arc<File>| {
                f.metadata()
                    .is_ok_and(|m| (m.dev(), m.ino()) == (now.dev(), now.ino()))
            };
            if let Some(file) = kept.iter().find(same) {
                return Ok(WalIndex { file: file.clone() });
            }
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)?;
        if !file.metadata()?.is_file() {
            // Not SQLite's index (SQLite's is a regular file): closing it drops no lock of it.
            return Err(std::io::Error::other("the wal-index is not a regular file"));
        }
        let file = Arc::new(file);
        kept.push(file.clone());
        Ok(WalIndex { file })
    }

    /// The WAL's state now (`None`: no initialized index). SQLite updates the header's two
    /// copies one after the other: a read that finds them different caught an update and is
    /// made again.
    pub fn read(&self) -> Option<WalState> {
        let mut bytes = [0u8; HEADER_BYTES];
        for _ in 0..8 {
            if self.file.read_exact_at(&mut bytes, 0).is_err() {
                return None;
            }
            if bytes[..48] == bytes[48..96] {
                return parse(&bytes);
            }
            std::thread::yield_now();
        }
        None
    }
}

fn parse(bytes: &[u8; HEADER_BYTES]) -> Option<WalState> {
    let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
    if bytes[IS_INIT] == 0 {
        return None;
    }
    // szPage: the page size, 1 meaning 65536 (which does not fit its 16 bits).
    let page_size = match u16::from_ne_bytes([bytes[PAGE_SIZE], bytes[PAGE_SIZE + 1]]) {
        1 => 65536,
        n => n as u32,
    };
    Some(WalState {
        frames: u32_at(MX_FRAME),
        backfilled: u32_at(N_BACKFILL),
        page_size,
    })
}

/// Bytes of `desktop`'s WAL not yet copied into it: from its wal-index `index` (see
/// [`WalIndex`]: never opened here), else the WAL file's length (without an index, every
/// checkpoint truncates the WAL, so all of it is still to copy).
pub fn pending_bytes(index: Option<&WalIndex>, desktop: &Path) -> u64 {
    let file_len = std::fs::metadata(wal_path(desktop))
        .map(|m| m.len())
        .unwrap_or(0);
    if file_len == 0 {
        return 0;
    }
    match index.and_then(|index| index.read()) {
        Some(state) => state.pending_bytes(),
        None => file_len,
    }
}

/// How far a checkpoint goes ([SQLite's modes](https://www.sqlite.org/c3ref/wal_checkpoint_v2.html)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointMode {
    /// Copy what no reader still needs, without waiting for readers or the writer (the
    /// writer commits meanwhile). After a complete one, the next write restarts the WAL from
    /// its start, keeping the file.
    Passive,
    /// Copy everything, then wait (at most the wait given) until no reader uses the WAL, so
    /// that the next write restarts it; the file keeps its length. Writes wait meanwhile.
    Restart,
    /// As `Restart`, and the WAL file is truncated to nothing.
    Truncate,
}

impl CheckpointMode {
    fn pragma(self) -> &'static str {
        match self {
            CheckpointMode::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
            CheckpointMode::Restart => "PRAGMA wal_checkpoint(RESTART)",
            CheckpointMode::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
        }
    }
}

/// What a checkpoint did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointOutcome {
    /// SQLite could not do all it was asked: a reader of an older snapshot (or another
    /// checkpoint) was in the way.
    pub busy: bool,
    /// Frames in the WAL when it started (-1: unknown, when busy).
    pub frames: i64,
    /// Frames copied into the main file (-1: unknown).
    pub checkpointed: i64,
}

impl CheckpointOutcome {
    /// Everything the WAL held when the checkpoint started is now in the main file.
    pub fn complete(&self) -> bool {
        !self.busy && self.frames >= 0 && self.checkpointed == self.frames
    }
}

/// Run `mode` on `conn`, waiting at most `wait` for readers (the modes that wait at all),
/// and put `after` back as the connection's busy timeout.
pub(crate) fn checkpoint_on(
    conn: &Connection,
    mode: CheckpointMode,
    wait: Duration,
    after: Duration,
) -> Result<CheckpointOutcome> {
    conn.busy_timeout(wait)?;
    let result = conn.query_row(mode.pragma(), [], |r| {
        Ok(CheckpointOutcome {
            busy: r.get::<_, i64>(0)? != 0,
            frames: r.get(1)?,
            checkpointed: r.get(2)?,
        })
    });
    conn.busy_timeout(after)?;
    Ok(result?)
}

/// A connection of the server's own, beside the writer's, that only checkpoints: a passive
/// checkpoint on it runs while the writer commits (SQLite lets one checkpointer and one writer
/// work at once), so a thread of its own can fold the WAL into the desktop with no write
/// waiting for it.
pub struct CheckpointConnection {
    conn: Connection,
}

impl CheckpointConnection {
    /// Open the desktop at `path`, which the writer has open (so it exists and is in WAL
    /// mode). A checkpoint syncs the WAL before copying and the desktop after, at any
    /// `durability` but off, so that level is set for its own statements.
    pub fn open(path: &Path, durability: Durability) -> Result<CheckpointConnection> {
        crate::files::make_private(path);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        crate::set_synchronous(&conn, durability)?;
        Ok(CheckpointConnection { conn })
    }

    /// Checkpoint in `mode`, waiting at most `wait` for readers where the mode waits.
    pub fn checkpoint(&self, mode: CheckpointMode, wait: Duration) -> Result<CheckpointOutcome> {
        checkpoint_on(&self.conn, mode, wait, Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Desktop;

    #[test]
    fn the_index_says_what_is_in_use_and_what_is_copied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".Desktop");
        let (mut desktop, _) = Desktop::open(&path, Durability::Normal).unwrap();
        let index = WalIndex::open(&path).unwrap();
        let opened = index.read().unwrap();
        assert!(opened.frames > 0, "the opening's own commit: {opened:?}");
        assert_eq!(opened.page_size, 4096);
        assert_eq!(opened.used_bytes(), 32 + opened.frames as u64 * 4120);
        assert_eq!(pending_bytes(Some(&index), &path), opened.pending_bytes());

        // A passive checkpoint on its own connection copies everything: nothing pending, the
        // WAL file still as long, and the next commit restarts the WAL from its start.
        let checkpointer = CheckpointConnection::open(&path, Durability::Normal).unwrap();
        let done = checkpointer
            .checkpoint(CheckpointMode::Passive, Duration::ZERO)
            .unwrap();
        assert!(done.complete(), "{done:?}");
        let copied = index.read().unwrap();
        assert_eq!(copied.backfilled, copied.frames);
        assert_eq!(copied.pending_bytes(), 0);
        assert_eq!(pending_bytes(Some(&index), &path), 0);
        let wal_len = std::fs::metadata(wal_path(&path)).unwrap().len();
        assert_eq!(wal_len, opened.used_bytes(), "not truncated");
        crate::tests::add(&mut desktop, crate::tests::file(crate::ROOT_ID, b"x"));
        let restarted = index.read().unwrap();
        assert!(restarted.frames < opened.frames, "{restarted:?}");
        assert_eq!(restarted.backfilled, 0);
        assert_eq!(
            std::fs::metadata(wal_path(&path)).unwrap().len(),
            wal_len,
            "the WAL file is reused, not truncated"
        );

        // A truncating checkpoint empties the file.
        desktop.checkpoint(Duration::ZERO).unwrap();
        assert_eq!(std::fs::metadata(wal_path(&path)).unwrap().len(), 0);
        assert_eq!(pending_bytes(Some(&index), &path), 0);
    }

    /// This process's descriptors of `desktop`'s wal-index: (of the file there now, of
    /// removed ones).
    fn shm_descriptors(desktop: &Path) -> (usize, usize) {
        let shm = shm_path(desktop);
        let (mut live, mut removed) = (0, 0);
        for fd in std::fs::read_dir("/proc/self/fd").unwrap() {
            let Ok(target) = std::fs::read_link(fd.unwrap().path()) else {
                continue;
            };
            if target == shm {
                live += 1;
            } else if target.as_os_str().as_encoded_bytes()
                == [shm.as_os_str().as_encoded_bytes(), b" (deleted)"].concat()
            {
                removed += 1;
            }
        }
        (live, removed)
    }

    #[test]
    fn reopening_takes_the_index_back_and_closes_removed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".Desktop");
        let (desktop, _) = Desktop::open(&path, Durability::Normal).unwrap();
        let index = WalIndex::open(&path).unwrap();
        let (sqlites, 0) = shm_descriptors(&path) else {
            panic!("nothing removed yet");
        };
        // Opened again while the file is the same, and after: its descriptor is shared.
        for _ in 0..3 {
            drop(WalIndex::open(&path).unwrap());
        }
        drop(index);
        let index = WalIndex::open(&path).unwrap();
        assert!(index.read().is_some());
        assert_eq!(shm_descriptors(&path), (sqlites, 0));
        // A clean close removes the file (the last connection); the next opening closes the
        // descriptor of the removed one.
        drop(index);
        desktop.close_clean().unwrap();
        assert!(!shm_path(&path).exists());
        assert_eq!(
            shm_descriptors(&path),
            (0, 1),
            "kept until the next opening"
        );
        let (_desktop, _) = Desktop::open(&path, Durability::Normal).unwrap();
        let index = WalIndex::open(&path).unwrap();
        assert!(index.read().is_some());
        assert_eq!(shm_descriptors(&path), (sqlites, 0));
    }

    #[test]
    fn a_torn_or_uninitialized_header_is_not_believed() {
        let mut bytes = [0u8; HEADER_BYTES];
        assert_eq!(parse(&bytes), None, "not initialized");
        bytes[IS_INIT] = 1;
        bytes[PAGE_SIZE..PAGE_SIZE + 2].copy_from_slice(&1u16.to_ne_bytes());
        bytes[MX_FRAME..MX_FRAME + 4].copy_from_slice(&10u32.to_ne_bytes());
        bytes[N_BACKFILL..N_BACKFILL + 4].copy_from_slice(&4u32.to_ne_bytes());
        let state = parse(&bytes).unwrap();
        assert_eq!(state.page_size, 65536);
        assert_eq!(state.pending_bytes(), 6 * (65536 + 24));
        // Not a regular file: refused (a FIFO in its place must not block the open either),
        // nor a link followed.
        let dir = tempfile::tempdir().unwrap();
        let desktop = dir.path().join(".Desktop");
        std::fs::create_dir(shm_path(&desktop)).unwrap();
        assert!(WalIndex::open(&desktop).is_err());
        std::fs::remove_dir(shm_path(&desktop)).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(shm_path(&desktop))
            .status()
            .unwrap();
        assert!(made.success());
        assert!(WalIndex::open(&desktop).is_err());
        std::fs::remove_file(shm_path(&desktop)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", shm_path(&desktop)).unwrap();
        assert!(WalIndex::open(&desktop).is_err());
    }
}
