//! [`Stopper`]: ends a blocking [`crate::Watcher::next_batch`] from another thread. An eventfd
//! that the watcher polls together with its kernel fd; once stopped it stays stopped.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rustix::event::{eventfd, EventfdFlags};

struct Inner {
    fd: OwnedFd,
    stopped: AtomicBool,
}

/// A handle another thread uses to end a blocking `next_batch` (shutdown).
#[derive(Clone)]
pub struct Stopper {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Stopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stopper")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl Stopper {
    pub(crate) fn new() -> std::io::Result<Self> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Stopper {
            inner: Arc::new(Inner {
                fd,
                stopped: AtomicBool::new(false),
            }),
        })
    }

    /// Ends the watcher's current and every later `next_batch` at once (with an empty batch).
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        // The counter is never read, so the fd stays readable: a later poll returns at once.
        // A full counter (EAGAIN) is readable too, so the result does not matter.
        let _ = rustix::io::write(&self.inner.fd, &1u64.to_ne_bytes());
    }

    /// Whether `stop` was called.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.inner.fd.as_fd()
    }
}
