//! The system calls neither rustix nor nix wraps: `name_to_handle_at`, `open_by_handle_at`, and
//! taking ownership of an fd that came inside an fanotify event. The only `unsafe` of the crate.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::records::{Handle, MAX_HANDLE_BYTES};

/// `struct file_handle` with room for the largest handle, aligned for the kernel.
#[repr(C)]
struct FileHandleBuf {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_BYTES],
}

/// The handle of `path` (relative to `dir`, not following a last symlink), as the handle
/// bytes an fanotify record carries, or `None` where the file system gives none.
pub(crate) fn handle_of(dir: BorrowedFd<'_>, path: &Path) -> Option<Vec<u8>> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = FileHandleBuf {
        handle_bytes: MAX_HANDLE_BYTES as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_BYTES],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `buf` is a `struct file_handle` with `handle_bytes` set to the room that follows
    // it; the kernel writes at most that much. `c_path` is NUL-terminated and outlives the call.
    let rc = unsafe {
        libc::name_to_handle_at(
            dir.as_raw_fd(),
            c_path.as_ptr(),
            (&mut buf as *mut FileHandleBuf).cast::<libc::file_handle>(),
            &mut mount_id,
            0,
        )
    };
    let len = buf.handle_bytes as usize;
    if rc != 0 || len > MAX_HANDLE_BYTES {
        return None;
    }
    let mut key = Vec::with_capacity(8 + len);
    key.extend_from_slice(&buf.handle_bytes.to_ne_bytes());
    key.extend_from_slice(&buf.handle_type.to_ne_bytes());
    key.extend_from_slice(&buf.f_handle[..len]);
    Some(key)
}

/// `open_by_handle_at(mount, handle, O_PATH | O_CLOEXEC)`. `mount` must not be an O_PATH fd.
pub(crate) fn open_handle(mount: BorrowedFd<'_>, handle: Handle<'_>) -> io::Result<OwnedFd> {
    let opaque = handle.opaque();
    if opaque.len() > MAX_HANDLE_BYTES {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut buf = FileHandleBuf {
        handle_bytes: opaque.len() as u32,
        handle_type: handle.handle_type(),
        f_handle: [0; MAX_HANDLE_BYTES],
    };
    buf.f_handle[..opaque.len()].copy_from_slice(opaque);
    // SAFETY: `buf` is a valid `struct file_handle` whose `handle_bytes` matches the bytes
    // that follow it; the kernel only reads it.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&mut buf as *mut FileHandleBuf).cast::<libc::file_handle>(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Closes the fd an fanotify event carried (never in FID mode; closed so it cannot leak).
pub(crate) fn close_event_fd(fd: i32) {
    if fd >= 0 {
        // SAFETY: the kernel opened this fd for us with the event; nothing else owns it.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}
