//! What a local client may see and change, decided by the kernel as if the client itself had
//! asked. The socket is open to every local user, and the desktop knows every name on the
//! volume, so without this any user could list the names in a folder they cannot open (`find`,
//! `resolve`) or rewrite the Finder information and comments of files they cannot write.
//!
//! Root peers (the file servers, which check their own users) and TCP peers (services holding
//! the token) are trusted. For every other local peer, the connection's thread takes the peer's
//! uid, gid and groups (`SO_PEERCRED`, `SO_PEERGROUPS`) as its file-system identity for the
//! length of one request (`setfsuid`, `setfsgid` and the raw `setgroups` system call, all of
//! which change only the calling thread on Linux), walks the paths it needs as the peer and
//! asks `faccessat2(…, AT_EACCESS)` on the descriptors the walk holds ([`crate::walk`],
//! [`crate::sight`]), and takes its own identity back. So ACLs and every other rule the kernel
//! applies count, exactly as for the peer's own `ls` or `open`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use rustix::process::Gid;

/// A local peer's identity, read from its socket when it connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<Gid>,
}

impl Credentials {
    /// The identity of the process at the other end of a Unix socket.
    pub fn of_peer(socket: &impl AsFd) -> io::Result<Credentials> {
        let cred = peer_ucred(socket)?;
        Ok(Credentials {
            uid: cred.uid,
            gid: cred.gid,
            groups: peer_groups(socket.as_fd())?,
        })
    }
}

/// The pid, uid and gid of the process at the other end of a Unix socket (`SO_PEERCRED`).
///
/// Through nix's `PeerCredentials`, not rustix's `socket_peercred`: rustix's `UCred` holds the
/// pid as a non-zero `Pid`, and the kernel reports pid 0 for a peer in a pid namespace this one
/// cannot see (a container); nix hands the kernel's `ucred` back as it is.
pub fn peer_ucred(socket: &impl AsFd) -> io::Result<libc::ucred> {
    let cred = getsockopt(&socket.as_fd(), PeerCredentials)?;
    Ok(cred.into())
}

/// The supplementary groups of the peer (`SO_PEERGROUPS`, Linux 4.13, which neither rustix nor
/// nix wraps: nix's socket options are fixed-size values, and this answer is a list whose
/// length only the kernel knows), growing the buffer when the kernel says it is too small.
fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<Gid>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `groups`, which holds that many,
        // and `fd` is a descriptor borrowed for the call.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr() as *mut libc::c_void,
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            // Collected in place (same layout): no second allocation.
            return Ok(groups.into_iter().map(Gid::from_raw).collect());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && count > groups.len() {
            groups.resize(count, 0);
            continue;
        }
        return Err(err);
    }
}

/// Who decides what a connection may do.
#[derive(Debug, Clone)]
pub enum Access {
    /// Root, or a TCP service holding the token: everything.
    Trusted,
    /// A local user: what the kernel lets that user do.
    Peer(Credentials),
    /// A local user whose access this server cannot check (it does not run as root, and the
    /// peer is someone else): only what names no object.
    Unverifiable { uid: u32 },
}

/// `faccessat` modes.
pub const SEARCH: libc::c_int = libc::X_OK;
pub const LIST: libc::c_int = libc::R_OK | libc::X_OK;
pub const WRITE: libc::c_int = libc::W_OK;
/// Read an object's contents (a file's bytes, a folder's listing): also what its Finder comment
/// needs.
pub const READ: libc::c_int = libc::R_OK;

impl Access {
    /// The access rule for a local peer with `credentials` (None when they cannot be read).
    pub fn for_local(credentials: Option<Credentials>) -> Access {
        let me = rustix::process::geteuid().as_raw();
        match credentials {
            Some(c) if c.uid == 0 => Access::Trusted,
            Some(c) if c.uid == me => Access::Trusted,
            Some(c) if me == 0 => Access::Peer(c),
            Some(c) => Access::Unverifiable { uid: c.uid },
            None => Access::Unverifiable { uid: u32::MAX },
        }
    }

    pub fn is_trusted(&self) -> bool {
        matches!(self, Access::Trusted)
    }

    /// Runs `f` wearing the peer's file-system identity (the server's own for a trusted peer),
    /// so every file-system call in `f` is checked by the kernel as the peer's own would be;
    /// `None` when this server cannot take the identity (then the peer sees nothing). `f` must
    /// not touch the file system for the server meanwhile (the writer threads and other
    /// connections are unaffected).
    pub fn wear<T>(&self, f: impl FnOnce() -> T) -> Option<T> {
        match self {
            Access::Trusted => Some(f()),
            Access::Unverifiable { .. } => None,
            Access::Peer(c) => match AsPeer::enter(c) {
                Ok(_worn) => Some(f()),
                Err(e) => {
                    // Once at error level: a unit without the capability would otherwise log
                    // every request of every user.
                    static SAID: std::sync::atomic::AtomicBool =
                        std::sync::atomic::AtomicBool::new(false);
                    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::error!(
                            "cannot take uid {}'s identity to check its access: {e} (requests \
                             of users other than root that name an object are refused; said \
                             once)",
                            c.uid
                        );
                    } else {
                        tracing::debug!("cannot take uid {}'s identity: {e}", c.uid);
                    }
                    None
                }
            },
        }
    }

    /// The uid whose sight of names is checked ([`crate::walk::walk_as`]): an unprivileged
    /// peer's; `None` for a trusted one.
    pub fn viewer(&self) -> Option<u32> {
        match self {
            Access::Peer(c) => Some(c.uid),
            Access::Unverifiable { uid } => Some(*uid),
            Access::Trusted => None,
        }
    }

    /// Why a check of an object the peer may see failed, for the error message.
    pub fn refusal(&self, path: &Path, what: &str) -> String {
        match self {
            Access::Unverifiable { uid } => format!(
                "{}: deskd does not run as root, so it cannot check what uid {uid} may {what}",
                path.display()
            ),
            _ => format!("{}: permission denied ({what})", path.display()),
        }
    }
}

/// The calling thread wearing a peer's file-system identity; dropping it restores the server's.
///
/// Groups go through rustix's `set_thread_groups`, the raw `setgroups` system call, which
/// changes the calling thread only (glibc's and nix's `setgroups` change every thread of the
/// process). The file-system uid and gid go through nix's `setfsuid`/`setfsgid`, which call
/// glibc's `setfsuid`/`setfsgid`: one system call each, per thread in the kernel, and not
/// broadcast to the other threads as glibc's `setuid`/`setgroups` are.
struct AsPeer {
    own_groups: &'static [Gid],
    own_uid: u32,
    own_gid: u32,
}

/// `setfsuid(uid)`: this thread's file-system uid; returns the previous one (also on failure,
/// so [`fs_ids`] asks again).
fn set_fsuid(uid: u32) -> u32 {
    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid)).as_raw()
}

/// `setfsgid(gid)`, as [`set_fsuid`].
fn set_fsgid(gid: u32) -> u32 {
    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid)).as_raw()
}

/// This thread's file-system uid and gid (`setfs*id(-1)` changes nothing and answers them).
fn fs_ids() -> (u32, u32) {
    (set_fsuid(u32::MAX), set_fsgid(u32::MAX))
}

impl AsPeer {
    fn enter(c: &Credentials) -> io::Result<AsPeer> {
        let own_groups = own_groups()?;
        // Groups first, while the thread still has the capability to set them. The raw system
        // call changes this thread only. If it fails nothing has changed yet, so there is
        // nothing to restore.
        rustix::thread::set_thread_groups(&c.groups)?;
        let worn = AsPeer {
            own_groups,
            own_uid: rustix::process::geteuid().as_raw(),
            own_gid: rustix::process::getegid().as_raw(),
        };
        set_fsgid(c.gid);
        set_fsuid(c.uid);
        // setfsuid reports failure by returning the old value: ask again to be sure.
        if fs_ids() != (c.uid, c.gid) {
            drop(worn);
            return Err(io::Error::other("setfsuid/setfsgid did not take"));
        }
        Ok(worn)
    }
}

/// The server's own supplementary groups, read once: every thread has them (only the threads
/// wearing a peer's identity change theirs, and they put them back), and reading them on every
/// change of identity cost two system calls per request.
fn own_groups() -> io::Result<&'static [Gid]> {
    static OWN: std::sync::OnceLock<Vec<Gid>> = std::sync::OnceLock::new();
    if let Some(groups) = OWN.get() {
        return Ok(groups);
    }
    let groups = rustix::process::getgroups()?;
    Ok(OWN.get_or_init(|| groups))
}

impl Drop for AsPeer {
    fn drop(&mut self) {
        set_fsuid(self.own_uid);
        set_fsgid(self.own_gid);
        if let Err(e) = rustix::thread::set_thread_groups(self.own_groups) {
            // A thread that cannot become the server again must not serve anyone.
            tracing::error!("cannot restore the server's groups: {e}");
            std::process::abort();
        }
        if set_fsuid(u32::MAX) != self.own_uid {
            tracing::error!("cannot restore the server's file-system uid");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;

    /// May the calling thread's identity do `mode` to `path`, walked from `/`?
    fn may(path: &Path, mode: libc::c_int) -> bool {
        let names: Vec<Vec<u8>> = path.iter().skip(1).map(|c| c.as_bytes().to_vec()).collect();
        let walked = crate::walk::walk(Path::new("/"), &names);
        walked.stopped.is_none()
            && walked
                .fd
                .as_ref()
                .is_some_and(|fd| crate::walk::may(fd.as_fd(), mode))
    }

    fn as_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    #[test]
    fn a_peer_sees_what_the_kernel_lets_it_see_and_the_thread_gets_its_identity_back() {
        if !as_root() {
            assert!(std::env::var_os("CI").is_none(), "needs root in CI");
            eprintln!("skipped: needs root to take another identity");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let closed = dir.path().join("closed");
        let open = dir.path().join("open");
        let group_only = dir.path().join("group-only");
        for (d, mode) in [(&closed, 0o700), (&open, 0o755), (&group_only, 0o770)] {
            std::fs::create_dir(d).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::os::unix::fs::chown(&group_only, Some(0), Some(4242)).unwrap();
        let nobody = Credentials {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        };
        let in_group = Credentials {
            groups: vec![Gid::from_raw(4242)],
            ..nobody.clone()
        };
        Access::Peer(nobody)
            .wear(|| {
                assert!(may(&open, LIST));
                assert!(!may(&closed, SEARCH));
                assert!(!may(&closed.join("x"), libc::F_OK));
                assert!(!may(&open, WRITE));
                assert!(!may(&group_only, LIST));
            })
            .unwrap();
        Access::Peer(in_group)
            .wear(|| assert!(may(&group_only, LIST | WRITE)))
            .unwrap();
        // Root again: the closed folder is open to this thread, with its groups back.
        assert!(may(&closed, LIST | WRITE));
        // SAFETY: plain identity queries.
        unsafe {
            assert_eq!(libc::setfsuid(u32::MAX), 0);
            assert_eq!(libc::setfsgid(u32::MAX), 0);
        }
        // A thread that was already running (as the server's other threads are) never wears
        // it. (A thread started during the check would: threads inherit their identity.)
        let (ask, asked) = std::sync::mpsc::channel::<()>();
        let (tell, told) = std::sync::mpsc::channel();
        let other = std::thread::spawn({
            let closed = closed.clone();
            move || {
                asked.recv().unwrap();
                tell.send(may(&closed, LIST)).unwrap();
            }
        });
        Access::Peer(Credentials {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        })
        .wear(|| {
            assert!(!may(&closed, LIST));
            ask.send(()).unwrap();
            assert!(told.recv().unwrap(), "another thread lost root's access");
        })
        .unwrap();
        other.join().unwrap();
    }

    /// The supplementary groups of one thread of this process, from the kernel.
    fn thread_groups(tid: i32) -> Vec<u32> {
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
        line["Groups:".len()..]
            .split_whitespace()
            .map(|g| g.parse().unwrap())
            .collect()
    }

    #[test]
    fn a_peers_groups_are_worn_by_the_asking_thread_only() {
        if !as_root() {
            assert!(std::env::var_os("CI").is_none(), "needs root in CI");
            eprintln!("skipped: needs root to take another identity");
            return;
        }
        let me = rustix::thread::gettid().as_raw_nonzero().get();
        let own = thread_groups(me);
        // Another thread of the server, already running, as the writer and the other
        // connections are.
        let (ask, asked) = std::sync::mpsc::channel::<()>();
        let (tell, told) = std::sync::mpsc::channel();
        let other = std::thread::spawn(move || {
            tell.send(rustix::thread::gettid().as_raw_nonzero().get())
                .unwrap();
            asked.recv().unwrap();
        });
        let other_tid = told.recv().unwrap();
        let peer = Credentials {
            uid: 65534,
            gid: 65534,
            groups: vec![Gid::from_raw(4242), Gid::from_raw(4343)],
        };
        Access::Peer(peer)
            .wear(|| {
                assert_eq!(thread_groups(me), vec![4242, 4343]);
                assert_eq!(
                    thread_groups(other_tid),
                    own,
                    "another thread's groups changed"
                );
            })
            .unwrap();
        assert_eq!(
            thread_groups(me),
            own,
            "the server's groups were not put back"
        );
        ask.send(()).unwrap();
        other.join().unwrap();
    }

    #[test]
    fn trusted_sees_all_and_unverifiable_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Access::Trusted.wear(|| 1), Some(1));
        assert_eq!(Access::Unverifiable { uid: 7 }.wear(|| 1), None);
        assert!(Access::Unverifiable { uid: 7 }
            .refusal(dir.path(), "list")
            .contains("cannot check what uid 7 may list"));
    }

    #[test]
    fn a_peer_of_a_socket_pair_is_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let c = Credentials::of_peer(&a).unwrap();
        // SAFETY: plain identity queries.
        unsafe {
            assert_eq!(c.uid, libc::geteuid());
            assert_eq!(c.gid, libc::getegid());
        }
        assert!(Access::for_local(Some(c)).is_trusted());
    }
}
