//! Copying file contents in the kernel: `copy_file_range(2)` (same file system: may share
//! blocks or copy without touching user memory), else `sendfile(2)` (any two files, e.g. disk
//! and tmpfs, which `copy_file_range` refuses with `EXDEV` on current kernels), else a
//! read/write loop.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;

/// The DMA boundary `-6` keeps transfers from crossing.
pub const BOUNDARY_64K: u64 = 64 * 1024;
const CHUNK: u64 = 16 << 20;

/// How a copy was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `O_DIRECT` writes from a mapping of the source: the device reads the source's memory.
    DirectFromMap,
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
    let (s, d) = (src.as_raw_fd(), dst.as_raw_fd());
    // SAFETY (both closures): valid descriptors owned by the caller; null offsets use and
    // advance the files' own positions.
    let copied = kernel_copy(len, boundary_64k, |want| unsafe {
        libc::copy_file_range(s, std::ptr::null_mut(), d, std::ptr::null_mut(), want, 0)
    })?;
    if let Some(n) = copied {
        return Ok((n, Method::CopyFileRange));
    }
    let sent = kernel_copy(len, boundary_64k, |want| unsafe {
        libc::sendfile(d, s, std::ptr::null_mut(), want)
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
    mut call: impl FnMut(usize) -> isize,
) -> io::Result<Option<u64>> {
    let mut done: u64 = 0;
    while done < len {
        let mut want = (len - done).min(CHUNK);
        if boundary_64k {
            want = want.min(BOUNDARY_64K - done % BOUNDARY_64K);
        }
        let n = call(want as usize);
        if n < 0 {
            let err = io::Error::last_os_error();
            let unsupported = matches!(
                err.raw_os_error(),
                Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL)
            );
            if unsupported && done == 0 {
                return Ok(None);
            }
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
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
const DIRECT_ALIGN: u64 = 4096;

/// Copy `src` to the file at `dst_path` (created and truncated) by `O_DIRECT` writes straight
/// from a shared mapping of `src`: no page-cache copy and no user buffer. For sources in memory
/// (tmpfs) going to disk. Returns `None` when the destination file system does not take
/// `O_DIRECT` (the caller copies another way); the unaligned tail is written normally.
pub fn copy_direct_from_map(
    src: &File,
    dst_path: &std::path::Path,
    mode: u32,
) -> io::Result<Option<u64>> {
    use std::os::unix::fs::OpenOptionsExt;
    let len = src.metadata()?.len();
    let aligned = len - len % DIRECT_ALIGN;
    let direct = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_DIRECT)
        .open(dst_path);
    let direct = match direct {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
        Err(e) => return Err(e),
    };
    if len == 0 {
        return Ok(Some(0));
    }
    // SAFETY: mapping `len` bytes of a file we hold open, read-only and shared; the mapping
    // is unmapped below before returning and only read through the slice.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            src.as_raw_fd(),
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Ok(None);
    }
    let result = (|| -> io::Result<Option<u64>> {
        // SAFETY: the mapping is `len` bytes long and lives until munmap below.
        let data = unsafe { std::slice::from_raw_parts(map as *const u8, len as usize) };
        let mut done = 0u64;
        while done < aligned {
            let want = (aligned - done).min(CHUNK) as usize;
            // SAFETY: `data[done..done + want]` is in the mapping; offsets and lengths are
            // multiples of DIRECT_ALIGN and the mapping is page-aligned, as O_DIRECT wants.
            let n = unsafe {
                libc::pwrite(
                    direct.as_raw_fd(),
                    data.as_ptr().add(done as usize) as *const libc::c_void,
                    want,
                    done as i64,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if done == 0 && err.raw_os_error() == Some(libc::EINVAL) {
                    return Ok(None);
                }
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            done += n as u64;
        }
        if aligned < len {
            let mut tail = std::fs::OpenOptions::new().write(true).open(dst_path)?;
            std::io::Seek::seek(&mut tail, std::io::SeekFrom::Start(aligned))?;
            tail.write_all(&data[aligned as usize..])?;
        }
        Ok(Some(len))
    })();
    // SAFETY: unmapping exactly what was mapped above.
    unsafe { libc::munmap(map, len as usize) };
    result
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
        let (s, d2) = (src.as_raw_fd(), dst.as_raw_fd());
        let n = kernel_copy(data.len() as u64, true, |want| unsafe {
            libc::sendfile(d2, s, std::ptr::null_mut(), want)
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
        // O_DIRECT from a mapping, where the file system takes it (tmpfs does not).
        let src = File::open(d.path().join("src")).unwrap();
        if let Some(n) = copy_direct_from_map(&src, &d.path().join("dst3"), 0o644).unwrap() {
            assert_eq!(n, data.len() as u64);
            assert_eq!(std::fs::read(d.path().join("dst3")).unwrap(), data);
        }
    }
}
