//! Copying file contents in the kernel (`copy_file_range`), falling back to read/write where
//! the kernel or file systems cannot.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;

/// The DMA boundary `-6` keeps transfers from crossing.
pub const BOUNDARY_64K: u64 = 64 * 1024;
const CHUNK: u64 = 16 << 20;

/// How a copy was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Kernel,
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
    let mut done: u64 = 0;
    while done < len {
        let mut want = (len - done).min(CHUNK);
        if boundary_64k {
            want = want.min(BOUNDARY_64K - done % BOUNDARY_64K);
        }
        // SAFETY: both descriptors are open files owned by the caller; null offsets use and
        // advance the files' own positions.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                std::ptr::null_mut(),
                dst.as_raw_fd(),
                std::ptr::null_mut(),
                want as usize,
                0,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            let unsupported = matches!(
                err.raw_os_error(),
                Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL)
            );
            if unsupported && done == 0 {
                return read_write(src, dst, boundary_64k).map(|n| (n, Method::ReadWrite));
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
    Ok((done, Method::Kernel))
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
        // The fallback path on its own.
        let mut src = File::open(d.path().join("src")).unwrap();
        let mut dst = File::create(d.path().join("dst2")).unwrap();
        assert_eq!(
            read_write(&mut src, &mut dst, true).unwrap(),
            data.len() as u64
        );
        drop(dst);
        assert_eq!(std::fs::read(d.path().join("dst2")).unwrap(), data);
    }
}
