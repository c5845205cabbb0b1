//! Early write-back of the WAL, so that a checkpoint does not stall the writes behind it.
//!
//! With `durability = "normal"` no commit syncs the WAL: its pages stay dirty in the page
//! cache until a checkpoint, whose first step is an fsync of the WAL. Each ADD or DELETE adds
//! about 12 KiB to the WAL (three pages), so a burst of afpd requests (lantest's folder tree)
//! fills the default 64 MiB `wal_limit`, and the checkpoint that follows had to write all of it
//! out at once: its fsync took 53-63 ms on the test VM, during which that write and every one
//! queued behind it waited (docs/PERFORMANCE.md, issue 22). Here, each time the WAL has grown
//! by [`STEP`] since the last call, the kernel is asked to start writing the new part out
//! (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`: it starts the I/O and does not wait for
//! it), so the checkpoint's fsync finds little left to write.
//!
//! It is only a hint: durability is what `durability` says (nothing is promised before the
//! checkpoint's fsync, as before), and a failure (the WAL gone, replaced, an old kernel) only
//! loses the hint.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// How much new WAL makes one write-back request: large enough to cost one system call per
/// few hundred commits, small enough that a checkpoint finds little left to write. A smaller
/// `wal_limit` takes a quarter of it ([`step`]).
pub(super) const STEP: u64 = 4 << 20;

/// The step for a WAL checkpointed at `wal_limit` bytes.
pub(super) fn step(wal_limit: u64) -> u64 {
    STEP.min(wal_limit / 4).max(64 << 10)
}

/// The WAL file this writer hints about, and how far it was asked to write it out.
#[derive(Default)]
pub(super) struct WalWriteback {
    /// The WAL open read-only (a hint needs no write access), with its inode number: a WAL
    /// removed at an idle close and made anew is another file.
    file: Option<(File, u64)>,
    /// Bytes of the WAL whose write-back was already started.
    started: u64,
}

impl WalWriteback {
    /// After a commit: the WAL at `path` is `size` bytes long (inode `ino`); start writing
    /// out what grew by `step` or more since the last request.
    pub(super) fn grown(&mut self, path: &Path, size: u64, ino: u64, step: u64) {
        if self.file.as_ref().is_some_and(|(_, i)| *i != ino) || size < self.started {
            // Another WAL, or this one checkpointed and truncated: start again from its start.
            self.file = None;
            self.started = 0;
        }
        if size < self.started + step {
            return;
        }
        if self.file.is_none() {
            // Whoever can write the volume's root could put something else at the WAL's
            // path: no symlink is followed, and a FIFO or device neither blocks the open nor
            // gets the hint.
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(path);
            match opened {
                Ok(f) if f.metadata().is_ok_and(|m| m.is_file() && m.ino() == ino) => {
                    self.file = Some((f, ino))
                }
                _ => return,
            }
        }
        let Some((file, _)) = &self.file else { return };
        let from = self.started;
        let len = size - from;
        // SAFETY: sync_file_range only reads its integer arguments; `file` is an open
        // descriptor owned by `self` for the whole call.
        let rc = unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                from as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if rc == 0 {
            self.started = size;
        } else {
            tracing::debug!(
                "WAL write-back hint failed: {}",
                std::io::Error::last_os_error()
            );
            // Asked again one step later, through a descriptor opened anew.
            self.file = None;
            self.started = size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn starts_write_back_each_step_and_again_after_a_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d-wal");
        let mut wal = File::create(&path).unwrap();
        let ino = wal.metadata().unwrap().ino();
        let mut hint = WalWriteback::default();
        hint.grown(&path, 4096, ino, STEP);
        assert_eq!(hint.started, 0, "less than a step: nothing asked");
        assert!(hint.file.is_none());
        wal.write_all(&vec![7u8; STEP as usize + 4096]).unwrap();
        hint.grown(&path, STEP + 4096, ino, STEP);
        assert_eq!(hint.started, STEP + 4096);
        hint.grown(&path, STEP + 8192, ino, STEP);
        assert_eq!(
            hint.started,
            STEP + 4096,
            "within the next step: not asked again"
        );
        // Checkpointed: the WAL is truncated, and grows again from its start.
        wal.set_len(0).unwrap();
        hint.grown(&path, 0, ino, STEP);
        assert_eq!(hint.started, 0);
        assert!(hint.file.is_none());
    }

    #[test]
    fn a_small_wal_limit_takes_a_quarter_of_it() {
        assert_eq!(step(64 << 20), STEP);
        assert_eq!(step(4 << 20), 1 << 20);
        assert_eq!(step(1 << 20), 256 << 10);
    }

    #[test]
    fn another_file_at_the_path_is_not_hinted_through_the_old_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d-wal");
        std::fs::write(&path, vec![1u8; STEP as usize]).unwrap();
        let old = std::fs::metadata(&path).unwrap().ino();
        let mut hint = WalWriteback::default();
        hint.grown(&path, STEP, old, STEP);
        assert_eq!(hint.file.as_ref().map(|(_, i)| *i), Some(old));
        // Removed at an idle close and made anew (another inode), then grown past a step.
        let keep = dir.path().join("keep");
        std::fs::rename(&path, &keep).unwrap();
        std::fs::write(&path, vec![2u8; 2 * STEP as usize]).unwrap();
        let new = std::fs::metadata(&path).unwrap().ino();
        assert_ne!(old, new);
        hint.grown(&path, 2 * STEP, new, STEP);
        assert_eq!(hint.file.as_ref().map(|(_, i)| *i), Some(new));
        assert_eq!(hint.started, 2 * STEP);
        // A symlink put in the WAL's place is not followed.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&keep, &path).unwrap();
        let mut fresh = WalWriteback::default();
        fresh.grown(&path, STEP, old, STEP);
        assert!(fresh.file.is_none());
        // Nor does a FIFO block the writer (its size is told as a step, as if it had grown).
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let fifo = std::fs::metadata(&path).unwrap().ino();
        fresh.grown(&path, STEP, fifo, STEP);
        assert!(fresh.file.is_none());
    }
}
