//! Reading a set from disk for `load`: a reader thread reads each file with `O_DIRECT` into
//! huge-page buffers — the device fills them, so the CPU copies nothing on the way in and the
//! page cache gets no second copy of the set — while the caller writes the filled buffers into
//! tmpfs, the one copy a load cannot avoid. Reading the next piece overlaps writing this one.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use rustix::io::Errno;

use crate::copy::{clear_direct, DIRECT_ALIGN};

/// Bytes per read: two huge pages, several device requests.
const PIECE_BYTES: usize = 4 << 20;
/// Buffers in flight: one being filled, one being written, one waiting.
const BUFFERS: usize = 3;
/// The transparent huge page size of x86-64 and most arm64 kernels.
pub const HUGE_PAGE: usize = 2 << 20;

/// An anonymous mapping aligned to a huge page and advised to use huge pages where the system
/// allows (`transparent_hugepage` = `madvise` or `always`): pinning it for a device read then
/// costs one step per 2 MiB, not per 4 KiB, and a long read goes to the device in fewer, larger
/// requests. Zero-filled by the kernel; suitably aligned for `O_DIRECT`.
///
/// Through memmap2, whose anonymous mappings and `Advice` values are safe calls: the same
/// `mmap`, `madvise` and (on drop) `munmap` as raw libc, without an unsafe block here.
pub struct HugePageBuffer {
    /// `len` bytes and a huge page more, so an aligned `len` bytes fit inside.
    mapping: memmap2::MmapMut,
    /// Where the aligned buffer starts in the mapping (less than a huge page).
    skip: usize,
    len: usize,
}

impl HugePageBuffer {
    /// A buffer of `len` bytes.
    pub fn new(len: usize) -> io::Result<HugePageBuffer> {
        let mapping = memmap2::MmapMut::map_anon(len + HUGE_PAGE)?;
        let skip = mapping.as_ptr().align_offset(HUGE_PAGE);
        // A hint only: without huge pages the buffer works the same, a little slower.
        let _ = mapping.advise_range(memmap2::Advice::HugePage, skip, len);
        Ok(HugePageBuffer { mapping, skip, len })
    }

    /// The first `len` bytes (all of them if `len` is more).
    pub fn bytes(&self, len: usize) -> &[u8] {
        &self.mapping[self.skip..self.skip + len.min(self.len)]
    }

    /// The whole buffer, to write into.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.mapping[self.skip..self.skip + self.len]
    }
}

/// What the reader sends for each file, in order: any number of `Data`, then `End` or
/// `Failed` — exactly one of those two per file.
enum Piece {
    Data(HugePageBuffer, usize),
    End,
    Failed(io::Error),
}

/// Which side of [`ReadAhead::copy_next`] failed: the source file (opening or reading it) or
/// the destination (writing it).
#[derive(Debug)]
pub enum CopyFailure {
    Reading(io::Error),
    Writing(io::Error),
}

/// The files of a load being read ahead, in the order given to [`ReadAhead::start`]; each call
/// of [`ReadAhead::copy_next`] writes the next one out.
pub struct ReadAhead {
    // Fields drop in this order: closing both channels first makes a reader still at work
    // stop at its next send or wait, so the join that follows does not wait for ever.
    pieces: Receiver<Piece>,
    free: SyncSender<HugePageBuffer>,
    _reader: JoinOnDrop,
}

/// Joins the reader thread when dropped, after the channels (see [`ReadAhead`]).
struct JoinOnDrop(Option<JoinHandle<()>>);

impl Drop for JoinOnDrop {
    fn drop(&mut self) {
        if let Some(reader) = self.0.take() {
            let _ = reader.join();
        }
    }
}

/// Whether `dir` is on a file system whose files live in memory (tmpfs, ramfs): `O_DIRECT`
/// there is an ordinary copy through the page cache, so reading ahead would add a copy that
/// `sendfile` does not make.
pub fn in_memory(dir: &Path) -> bool {
    let Ok(st) = rustix::fs::statfs(dir) else {
        return false;
    };
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    // f_type and the libc constant are c_long on some targets and narrower on others.
    #[allow(clippy::unnecessary_cast)]
    let (magic, tmpfs) = (st.f_type as i64, libc::TMPFS_MAGIC as i64);
    magic == tmpfs || magic == RAMFS_MAGIC
}

impl ReadAhead {
    /// Start reading `files` on a thread of its own. Fails only when the buffers cannot be
    /// made (no memory); a file that cannot be read shows as an error from its `copy_next`.
    pub fn start(files: Vec<PathBuf>) -> io::Result<ReadAhead> {
        let (free_tx, free_rx) = sync_channel(BUFFERS);
        for _ in 0..BUFFERS {
            free_tx
                .send(HugePageBuffer::new(PIECE_BYTES)?)
                .expect("the free list has room for every buffer");
        }
        let (piece_tx, piece_rx) = sync_channel(BUFFERS);
        let reader = std::thread::Builder::new()
            .name("fileset-read".into())
            .spawn(move || read_files(&files, &free_rx, &piece_tx))?;
        Ok(ReadAhead {
            pieces: piece_rx,
            free: free_tx,
            _reader: JoinOnDrop(Some(reader)),
        })
    }

    /// Write the next file's contents to `dst` (from its current position), feeding them to
    /// `digest` too when given; returns the bytes written. An error names no path: the caller
    /// knows which file it asked for.
    pub fn copy_next(
        &mut self,
        dst: &mut File,
        mut digest: Option<&mut sha2::Sha256>,
    ) -> Result<u64, CopyFailure> {
        use sha2::Digest;
        let (pieces, free) = (&self.pieces, &self.free);
        let mut total = 0u64;
        let mut write_error = None;
        loop {
            match pieces.recv() {
                Ok(Piece::Data(buf, len)) => {
                    let bytes = buf.bytes(len);
                    // After a failed write the rest of the file is only taken off the channel,
                    // so the next call starts at the next file.
                    if write_error.is_none() {
                        match dst.write_all(bytes) {
                            Ok(()) => {
                                if let Some(d) = digest.as_deref_mut() {
                                    d.update(bytes);
                                }
                                total += bytes.len() as u64;
                            }
                            Err(e) => write_error = Some(e),
                        }
                    }
                    // Every buffer goes back, or the reader would run out of them. The reader
                    // may have finished with every file and gone: no one to return it to.
                    let _ = free.send(buf);
                }
                Ok(Piece::End) => {
                    return match write_error {
                        None => Ok(total),
                        Some(e) => Err(CopyFailure::Writing(e)),
                    }
                }
                Ok(Piece::Failed(e)) => return Err(CopyFailure::Reading(e)),
                Err(_) => {
                    return Err(CopyFailure::Reading(io::Error::other(
                        "no more files were asked to be read",
                    )))
                }
            }
        }
    }
}

/// The reader thread: every file in order, one `End` or `Failed` each; returns early when the
/// writer has gone.
fn read_files(files: &[PathBuf], free: &Receiver<HugePageBuffer>, pieces: &SyncSender<Piece>) {
    // The buffer a file's last read found empty (or failed into) serves the next file: a
    // buffer dropped here would never come back, and the pipeline would stall for want of it.
    let mut held = None;
    for path in files {
        let last = match read_file(path, free, pieces, &mut held) {
            Ok(true) => Piece::End,
            Ok(false) => return,
            Err(e) => Piece::Failed(e),
        };
        if pieces.send(last).is_err() {
            return;
        }
    }
}

/// Read one file into pieces. `Ok(false)` when the writer has gone. A buffer it takes and
/// does not send is left in `held`.
fn read_file(
    path: &Path,
    free: &Receiver<HugePageBuffer>,
    pieces: &SyncSender<Piece>,
    held: &mut Option<HugePageBuffer>,
) -> io::Result<bool> {
    let (file, mut direct) = match crate::copy::open_source(path, libc::O_DIRECT) {
        Ok(f) => (f, true),
        // The file system takes no O_DIRECT: read it through the page cache.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            (crate::copy::open_source(path, 0)?, false)
        }
        Err(e) => return Err(e),
    };
    // Reads stop at the size the file had when opened, rounded up to a block: a direct read
    // past the end fills the rest of the buffer with zeros, a copy for nothing. A file that
    // grew meanwhile is still read whole: reading on past that size finds its new end.
    let size_at_open = file.metadata()?.len();
    let mut offset = 0u64;
    loop {
        let want = if offset < size_at_open {
            let rest = (size_at_open - offset).next_multiple_of(DIRECT_ALIGN);
            rest.min(PIECE_BYTES as u64) as usize
        } else {
            PIECE_BYTES
        };
        let mut buf = match held.take() {
            Some(buf) => buf,
            None => match free.recv() {
                Ok(buf) => buf,
                Err(_) => return Ok(false),
            },
        };
        let n = match read_piece(&file, &mut buf, want, offset, &mut direct) {
            Ok(0) => {
                *held = Some(buf);
                return Ok(true);
            }
            Ok(n) => n,
            Err(e) => {
                *held = Some(buf);
                return Err(e);
            }
        };
        offset += n as u64;
        if pieces.send(Piece::Data(buf, n)).is_err() {
            return Ok(false);
        }
    }
}

/// One read of up to `want` bytes at `offset` into `buf`; 0 at the end of the file. Turns
/// `O_DIRECT` off (`direct` = false) where it cannot go on.
fn read_piece(
    file: &File,
    buf: &mut HugePageBuffer,
    want: usize,
    offset: u64,
    direct: &mut bool,
) -> io::Result<usize> {
    let n = loop {
        // Every buffer of the reader is PIECE_BYTES long, and read_file asks for no more.
        match rustix::io::pread(file, &mut buf.bytes_mut()[..want], offset) {
            Ok(n) => break n,
            Err(Errno::INTR) => continue,
            // The device wants another alignment than ours: read it the ordinary way.
            Err(Errno::INVAL) if *direct => {
                clear_direct(file)?;
                *direct = false;
            }
            Err(e) => return Err(e.into()),
        }
    };
    if *direct && n != 0 && (n as u64) & (DIRECT_ALIGN - 1) != 0 {
        // Short of a block: the end of the file. Any bytes after it (a file that grows
        // meanwhile) need an unaligned offset, which only a buffered read takes.
        clear_direct(file)?;
        *direct = false;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Runs `body` and fails the test when it does not finish in a minute: a lost buffer or a
    /// reader that never ends shows as a stall, which a plain test would wait on for ever.
    fn within_a_minute(body: impl FnOnce() + Send + 'static) {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            body();
            let _ = done_tx.send(());
        });
        match done_rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(()) => worker.join().unwrap(),
            // The body panicked: join to pass its message on.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => worker.join().unwrap(),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("stalled for a minute"),
        }
    }

    /// Files `f0`, `f1`, … in `dir`, with the sizes `size_of(i)` gives (`None`: no file, only
    /// its path), filled with [`content`] seeded by the index.
    fn make_files(
        dir: &Path,
        count: usize,
        size_of: impl Fn(usize) -> Option<usize>,
    ) -> Vec<PathBuf> {
        (0..count)
            .map(|i| {
                let p = dir.join(format!("f{i}"));
                if let Some(size) = size_of(i) {
                    std::fs::write(&p, content(size, i as u32)).unwrap();
                }
                p
            })
            .collect()
    }

    fn content(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
            .collect()
    }

    #[test]
    fn copies_every_size_exactly_and_in_order() {
        within_a_minute(|| {
            let d = tempfile::tempdir().unwrap();
            let sizes = [
                0,
                1,
                4095,
                4096,
                4097,
                PIECE_BYTES - 1,
                PIECE_BYTES,
                PIECE_BYTES + 1,
                3 * PIECE_BYTES + 12_345,
            ];
            let paths = make_files(d.path(), sizes.len(), |i| Some(sizes[i]));
            let mut ahead = ReadAhead::start(paths).unwrap();
            for (i, size) in sizes.iter().enumerate() {
                let out = d.path().join(format!("out{i}"));
                let mut dst = File::create(&out).unwrap();
                let mut digest = Sha256::new();
                let n = ahead.copy_next(&mut dst, Some(&mut digest)).unwrap();
                assert_eq!(n, *size as u64, "file {i}");
                let want = content(*size, i as u32);
                assert_eq!(std::fs::read(&out).unwrap(), want, "file {i}");
                assert_eq!(digest.finalize()[..], Sha256::digest(&want)[..], "file {i}");
            }
            assert!(ahead
                .copy_next(&mut File::create(d.path().join("extra")).unwrap(), None)
                .is_err());
        });
    }

    #[test]
    fn many_empty_and_failing_files_do_not_use_up_the_buffers() {
        within_a_minute(|| {
            let d = tempfile::tempdir().unwrap();
            // Empty, missing, 5000 bytes, empty, ….
            let files = make_files(d.path(), 4 * BUFFERS, |i| {
                [Some(0), None, Some(5000)][i % 3]
            });
            let mut ahead = ReadAhead::start(files).unwrap();
            let mut sink = File::create(d.path().join("out")).unwrap();
            for i in 0..(4 * BUFFERS) {
                let got = ahead.copy_next(&mut sink, None);
                match i % 3 {
                    0 => assert_eq!(got.unwrap(), 0, "file {i}"),
                    1 => assert!(got.is_err(), "file {i}"),
                    _ => assert_eq!(got.unwrap(), 5000, "file {i}"),
                }
            }
        });
    }

    #[test]
    fn a_failed_write_skips_to_the_next_file() {
        within_a_minute(|| {
            let d = tempfile::tempdir().unwrap();
            let files = make_files(d.path(), 2 * BUFFERS, |_| Some(3 * PIECE_BYTES));
            let mut ahead = ReadAhead::start(files).unwrap();
            for i in 0..(2 * BUFFERS) {
                let out = d.path().join(format!("out{i}"));
                std::fs::write(&out, b"").unwrap();
                if i % 2 == 0 {
                    // Opened read-only: every write fails.
                    let mut read_only = File::open(&out).unwrap();
                    match ahead.copy_next(&mut read_only, None) {
                        Err(CopyFailure::Writing(_)) => {}
                        other => panic!("file {i}: {other:?}"),
                    }
                } else {
                    let mut dst = File::create(&out).unwrap();
                    let n = ahead.copy_next(&mut dst, None).unwrap();
                    assert_eq!(n, 3 * PIECE_BYTES as u64, "file {i}");
                    assert_eq!(
                        std::fs::read(&out).unwrap(),
                        content(3 * PIECE_BYTES, i as u32),
                        "file {i}"
                    );
                }
            }
        });
    }

    #[test]
    fn an_unreadable_file_fails_alone() {
        let d = tempfile::tempdir().unwrap();
        let good = d.path().join("good");
        std::fs::write(&good, b"fine").unwrap();
        let files = vec![d.path().join("missing"), good];
        let mut ahead = ReadAhead::start(files).unwrap();
        let mut sink = File::create(d.path().join("out")).unwrap();
        match ahead.copy_next(&mut sink, None) {
            Err(CopyFailure::Reading(e)) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
        assert_eq!(ahead.copy_next(&mut sink, None).unwrap(), 4);
    }

    #[test]
    fn stopping_half_way_ends_the_reader() {
        within_a_minute(|| {
            let d = tempfile::tempdir().unwrap();
            let files = make_files(d.path(), 8, |_| Some(2 * PIECE_BYTES));
            let mut ahead = ReadAhead::start(files).unwrap();
            let mut sink = File::create(d.path().join("out")).unwrap();
            ahead.copy_next(&mut sink, None).unwrap();
            // Dropping joins the reader thread: the test hangs if the reader waits forever.
            drop(ahead);
        });
    }

    #[test]
    fn tmpfs_is_told_from_disk() {
        if Path::new("/dev/shm").is_dir() {
            assert!(in_memory(Path::new("/dev/shm")));
        }
        assert!(!in_memory(Path::new("/proc/self")));
    }
}
