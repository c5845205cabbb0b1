//! Copying file contents in the kernel: `copy_file_range(2)` (same file system: may share
//! blocks or copy without touching user memory), else `sendfile(2)` (any two files, e.g. disk
//! and tmpfs, which `copy_file_range` refuses with `EXDEV` on current kernels), else a
//! read/write loop.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::io::Errno;

/// Open `path` for reading, refusing a symbolic link in its place (`ELOOP`): a link planted
/// in a working directory must not make a privileged fileset copy the file it points to.
/// `flags` are added to the open (`O_DIRECT`).
pub fn open_source(path: &Path, flags: libc::c_int) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(flags | libc::O_NOFOLLOW)
        .open(path)
}

/// Returns once no write(2) that had begun on `file` before this call is still putting bytes
/// in. A buffered write holds the inode's lock from before it sets the file's times to its
/// last byte; `lseek(SEEK_DATA)` takes that lock on tmpfs, ext4 and btrfs, and on xfs every
/// read does (each measured on Linux 6.18: the call waited out a 1 GB write). On xfs the
/// copy's own reads would wait too; the read of one byte here makes the wait independent of
/// how the copy reads. A file system where neither call takes the lock, or any error, makes this
/// a no-op: the times compared around the copy are then the only check, as before. The
/// offset it moves is the caller's to reset.
pub fn wait_for_writes_under_way(file: &File) {
    let _ = rustix::fs::seek(file, rustix::fs::SeekFrom::Data(0));
    let _ = rustix::io::pread(file, &mut [0u8; 1], 0);
}

/// Create `path` afresh for writing with `mode`: whatever is under that name — a stale
/// temporary, or a symbolic link planted to make a privileged fileset write through it — is
/// unlinked first, and the file is made with `O_EXCL | O_NOFOLLOW`, so the bytes go into a new
/// file of ours or nowhere. `flags` are added to the open (`O_DIRECT`).
pub fn create_fresh(path: &Path, mode: u32, flags: libc::c_int) -> io::Result<File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(flags | libc::O_NOFOLLOW)
        .open(path)
}

/// The DMA boundary `-6` keeps transfers from crossing.
pub const BOUNDARY_64K: u64 = 64 * 1024;
const CHUNK: u64 = 16 << 20;

/// How a copy was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `O_DIRECT` writes of the source's pages spliced through a pipe: the device reads the
    /// source's memory.
    DirectSplice,
    /// `O_DIRECT` reads into huge-page buffers on a reader thread, written out by the caller
    /// (see the `readahead` module).
    DirectRead,
    CopyFileRange,
    Sendfile,
    ReadWrite,
}

/// Copy all of `src` (from its start) to `dst` (at its start); returns the bytes copied and
/// the method. With `boundary_64k`, no single transfer crosses a 64 KiB boundary.
pub fn copy_contents(
    src: &mut File,
    dst: &mut File,
    boundary_64k: bool,
) -> io::Result<(u64, Method)> {
    let len = src.metadata()?.len();
    let (s, d) = (src.as_fd(), dst.as_fd());
    // No offsets: both calls use and advance the files' own positions.
    let copied = kernel_copy(len, boundary_64k, |want| {
        rustix::fs::copy_file_range(s, None, d, None, want)
    })?;
    if let Some(n) = copied {
        return Ok((n, Method::CopyFileRange));
    }
    let sent = kernel_copy(len, boundary_64k, |want| {
        rustix::fs::sendfile(d, s, None, want)
    })?;
    if let Some(n) = sent {
        return Ok((n, Method::Sendfile));
    }
    read_write(src, dst, boundary_64k).map(|n| (n, Method::ReadWrite))
}

/// Run a kernel copy call until `len` bytes are done. `Ok(None)` when the first call says the
/// kernel or the file systems cannot do it (nothing was copied), so the caller tries the next way.
fn kernel_copy(
    len: u64,
    boundary_64k: bool,
    mut call: impl FnMut(usize) -> rustix::io::Result<usize>,
) -> io::Result<Option<u64>> {
    let mut done: u64 = 0;
    while done < len {
        let mut want = (len - done).min(CHUNK);
        if boundary_64k {
            want = want.min(BOUNDARY_64K - done % BOUNDARY_64K);
        }
        let n = match call(want as usize) {
            Ok(n) => n,
            Err(Errno::XDEV | Errno::NOSYS | Errno::OPNOTSUPP | Errno::INVAL) if done == 0 => {
                return Ok(None)
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break; // the source shrank while we copied; the caller checks the size
        }
        done += n as u64;
    }
    Ok(Some(done))
}

fn read_write(src: &mut File, dst: &mut File, boundary_64k: bool) -> io::Result<u64> {
    let mut buf = vec![
        0u8;
        if boundary_64k {
            BOUNDARY_64K as usize
        } else {
            1 << 20
        }
    ];
    let mut total = 0;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Alignment `O_DIRECT` needs for offsets, lengths and memory on common devices.
pub(crate) const DIRECT_ALIGN: u64 = 4096;

/// One `splice(2)` from `from` to `to` (each a descriptor and, for a file, its offset, which
/// the kernel advances). `Ok(Some(n))`: `n` bytes moved; `Ok(None)`: the kernel refuses this
/// pairing (`EINVAL`) and nothing was written yet, so the caller copies another way. `EINTR` is
/// retried.
fn splice_step(
    from: (BorrowedFd<'_>, Option<&mut u64>),
    to: (BorrowedFd<'_>, Option<&mut u64>),
    len: usize,
    nothing_yet: bool,
) -> io::Result<Option<usize>> {
    let (from, mut from_off) = from;
    let (to, mut to_off) = to;
    loop {
        let flags = rustix::pipe::SpliceFlags::MOVE;
        match rustix::pipe::splice(
            from,
            from_off.as_deref_mut(),
            to,
            to_off.as_deref_mut(),
            len,
            flags,
        ) {
            Ok(n) => return Ok(Some(n)),
            Err(Errno::INTR) => continue,
            Err(Errno::INVAL) if nothing_yet => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The pipe sizes [`SplicePipe`] asks for, largest first: each `O_DIRECT` write is one pipe
/// load, and fewer, larger writes cost less (one system call, one sleep for the device; a
/// save of 1 GB took ~28 % less CPU with 4 MiB than with 1 MiB, and 16 MiB — a whole 5 MB
/// file per write — another ~15 % less, side by side). The pipe holds page references, not
/// copies: 16 MiB of pipe is a 160 KiB array. Above `/proc/sys/fs/pipe-max-size` (1 MiB by
/// default) the kernel grants a size only with `CAP_SYS_RESOURCE` (root, normally).
const SPLICE_PIPE_SIZES: [usize; 3] = [16 << 20, 4 << 20, 1 << 20];

/// The pipe [`copy_direct_by_splice`] moves page references through, made once per save and
/// used for every file (an empty pipe between copies; a copy that fails or is refused may
/// leave pages in it, so the caller drops it then).
pub struct SplicePipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes per `O_DIRECT` write: a whole number of the destination device's largest
    /// requests where that fits in the pipe, else the pipe's capacity.
    chunk: u64,
}

/// The largest request, in bytes, the block device holding `dir` takes for writes of
/// separate 4 KiB pages (tmpfs pages are rarely adjacent in memory): its segment limit in
/// pages, capped by its size limit — from `/sys/dev/block/MAJ:MIN/queue` (for a partition,
/// its disk's). `None` where the file system has no such device (tmpfs, btrfs, NFS).
fn device_request_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let node = std::path::PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        libc::major(dev),
        libc::minor(dev)
    ));
    let queue = [node.join("queue"), node.join("../queue")]
        .into_iter()
        .find(|q| q.is_dir())?;
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(queue.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let by_segments = read("max_segments")?.checked_mul(DIRECT_ALIGN)?;
    let by_size = read("max_sectors_kb")?.checked_mul(1024)?;
    let bytes = by_segments.min(by_size);
    (bytes >= DIRECT_ALIGN).then_some(bytes - bytes % DIRECT_ALIGN)
}

/// Bytes per `O_DIRECT` write through a pipe of `capacity` bytes to a device whose largest
/// request is `request` bytes. A write of 1 MiB to a device that takes 254 pages per request
/// becomes a full request and a 2-page one, and the block layer sends each large request to
/// the device at once (another doorbell, on a VM an exit); writing whole requests halves that.
fn chunk_for(capacity: u64, request: Option<u64>) -> u64 {
    match request {
        Some(r) if r <= capacity => capacity / r * r,
        _ => capacity,
    }
}

impl SplicePipe {
    /// Bytes per `O_DIRECT` write.
    pub fn chunk(&self) -> u64 {
        self.chunk
    }

    /// A pipe for copies into `dest_dir`, whose device sets the size of each write.
    pub fn new(dest_dir: &std::path::Path) -> io::Result<SplicePipe> {
        use rustix::pipe::{fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, PipeFlags};
        let (read, write) = pipe_with(PipeFlags::CLOEXEC)?;
        // A bigger pipe means bigger device writes; keep whatever size the system allows.
        for size in SPLICE_PIPE_SIZES {
            if fcntl_setpipe_size(&write, size).is_ok_and(|granted| granted > 0) {
                break;
            }
        }
        let capacity = match fcntl_getpipe_size(&write) {
            Ok(capacity) if capacity > 0 => capacity as u64,
            _ => 64 * 1024,
        };
        Ok(SplicePipe {
            read,
            write,
            chunk: chunk_for(capacity, device_request_bytes(dest_dir)),
        })
    }
}

/// Turn `O_DIRECT` off on an open file (for an unaligned tail, and for the caller).
pub(crate) fn clear_direct(file: &File) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    Ok(rustix::fs::fcntl_setfl(
        file,
        flags - rustix::fs::OFlags::DIRECT,
    )?)
}

/// Copy `src` to the file at `dst_path` (created and truncated) by `O_DIRECT` writes of the
/// source's own page-cache pages: `splice(2)` moves references to them into `pipe`, and from
/// the pipe into the `O_DIRECT` file, so the device reads the source's memory — no copy, no
/// user buffer, no mapping to build and pin. For sources in memory (tmpfs) going to disk.
/// Returns the destination (open for writing, `O_DIRECT` cleared) and the bytes copied, or
/// `None` when the destination file system does not take `O_DIRECT` writes this way (nothing
/// was written; the caller copies another way and drops the pipe). The unaligned tail is
/// written normally.
pub fn copy_direct_by_splice(
    src: &File,
    dst_path: &std::path::Path,
    mode: u32,
    pipe: &SplicePipe,
) -> io::Result<Option<(File, u64)>> {
    use std::os::unix::fs::FileExt;
    let len = src.metadata()?.len();
    let aligned = len - len % DIRECT_ALIGN;
    let direct = create_fresh(dst_path, mode, libc::O_DIRECT);
    let direct = match direct {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut read_at: u64 = 0;
    let mut write_at: u64 = 0;
    while read_at < aligned {
        let want = (aligned - read_at).min(pipe.chunk) as usize;
        let nothing_yet = write_at == 0;
        let Some(mut in_pipe) = splice_step(
            (src.as_fd(), Some(&mut read_at)),
            (pipe.write.as_fd(), None),
            want,
            nothing_yet,
        )?
        else {
            return Ok(None);
        };
        if in_pipe == 0 {
            // The source shrank while we copied; the caller checks the size.
            clear_direct(&direct)?;
            return Ok(Some((direct, write_at)));
        }
        while in_pipe > 0 {
            let nothing_yet = write_at == 0;
            let Some(out) = splice_step(
                (pipe.read.as_fd(), None),
                (direct.as_fd(), Some(&mut write_at)),
                in_pipe,
                nothing_yet,
            )?
            else {
                return Ok(None);
            };
            in_pipe -= out;
        }
    }
    clear_direct(&direct)?;
    if aligned < len {
        let mut tail = vec![0u8; (len - aligned) as usize];
        src.read_exact_at(&mut tail, aligned)?;
        direct.write_all_at(&tail, aligned)?;
    }
    Ok(Some((direct, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_exactly_with_and_without_boundary() {
        let d = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(d.path().join("src"), &data).unwrap();
        for boundary in [false, true] {
            let mut src = File::open(d.path().join("src")).unwrap();
            let mut dst = File::create(d.path().join("dst")).unwrap();
            let (n, _) = copy_contents(&mut src, &mut dst, boundary).unwrap();
            assert_eq!(n, data.len() as u64);
            drop(dst);
            assert_eq!(std::fs::read(d.path().join("dst")).unwrap(), data);
        }
        // The sendfile and read/write paths on their own.
        let src = File::open(d.path().join("src")).unwrap();
        let dst = File::create(d.path().join("dst1")).unwrap();
        let n = kernel_copy(data.len() as u64, true, |want| {
            rustix::fs::sendfile(&dst, &src, None, want)
        })
        .unwrap();
        assert_eq!(n, Some(data.len() as u64));
        drop(dst);
        assert_eq!(std::fs::read(d.path().join("dst1")).unwrap(), data);
        let mut src = File::open(d.path().join("src")).unwrap();
        let mut dst = File::create(d.path().join("dst2")).unwrap();
        assert_eq!(
            read_write(&mut src, &mut dst, true).unwrap(),
            data.len() as u64
        );
        drop(dst);
        assert_eq!(std::fs::read(d.path().join("dst2")).unwrap(), data);
        // O_DIRECT of spliced pages, where the file system takes it (tmpfs does not): empty,
        // page-aligned, with a tail, and over several pipe loads.
        // One pipe serves every copy.
        let pipe = SplicePipe::new(d.path()).unwrap();
        for size in [0usize, 8192, 300_000, 3 * pipe.chunk as usize + 4097] {
            let data: Vec<u8> = (0..size as u32).map(|i| (i * 13 % 253) as u8).collect();
            std::fs::write(d.path().join("src4"), &data).unwrap();
            let src = File::open(d.path().join("src4")).unwrap();
            let dst = d.path().join(format!("dst4-{size}"));
            if let Some((_, n)) = copy_direct_by_splice(&src, &dst, 0o644, &pipe).unwrap() {
                assert_eq!(n, size as u64);
                assert_eq!(std::fs::read(&dst).unwrap(), data, "size {size}");
            }
        }
    }

    #[test]
    fn writes_are_whole_device_requests_where_they_fit() {
        // virtio-blk: 254 segments, 4 MiB per request; 1 MiB and 4 MiB pipes.
        assert_eq!(chunk_for(1 << 20, Some(254 * 4096)), 254 * 4096);
        assert_eq!(chunk_for(4 << 20, Some(254 * 4096)), 4 * 254 * 4096);
        // NVMe with 127 segments: two requests per 1 MiB pipe load.
        assert_eq!(chunk_for(1 << 20, Some(127 * 4096)), 2 * 127 * 4096);
        // Requests larger than the pipe, or no device: the whole pipe.
        assert_eq!(chunk_for(1 << 20, Some(4 << 20)), 1 << 20);
        assert_eq!(chunk_for(1 << 20, None), 1 << 20);
    }

    #[test]
    fn device_limits_are_read_for_a_disk_and_absent_for_tmpfs() {
        // The root file system is on a block device wherever the tests run; /dev/shm is not.
        if let Some(bytes) = device_request_bytes(std::path::Path::new("/")) {
            assert!(
                bytes >= DIRECT_ALIGN && bytes % DIRECT_ALIGN == 0,
                "{bytes}"
            );
        }
        if std::path::Path::new("/dev/shm").is_dir() {
            assert_eq!(device_request_bytes(std::path::Path::new("/dev/shm")), None);
        }
    }
}
