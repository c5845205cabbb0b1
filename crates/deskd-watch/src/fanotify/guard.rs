//! The bound on the kernel's queue of a fanotify watcher, kept by a thread of its own.
//!
//! The group's queue is unlimited (`FAN_UNLIMITED_QUEUE`, see [`super::QUEUE_EVENTS_MAX`]), and
//! the watcher's thread looks at it only between batches. That thread can be held for long
//! (a batch waiting for a frozen desktop, a writer busy with a rebuild), while anyone who may
//! create files keeps adding events, each costing kernel memory charged to deskd. So a guard
//! thread looks every [`EVERY`], on a descriptor of the same group, and once more than
//! `QUEUE_EVENTS_MAX` wait it reads and drops them (the queue is one for both descriptors) and
//! notes it: the watcher's next batch reports an overflow, and the volume is rescanned.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::stopper::Stopper;

/// How often the guard looks at the queue's size.
/// (`FIONREAD` walks the whole queue under the group's lock, so not more often.)
const EVERY: Duration = Duration::from_millis(250);

/// The guard of one group; stops its thread when dropped.
pub(crate) struct QueueGuard {
    dropped: Arc<AtomicBool>,
    stopper: Stopper,
    thread: Option<JoinHandle<()>>,
}

impl QueueGuard {
    /// Guard the queue of the group `group` (a descriptor of its own) at `max` bytes.
    pub(crate) fn start(group: OwnedFd, max: u64) -> std::io::Result<QueueGuard> {
        let dropped = Arc::new(AtomicBool::new(false));
        let stopper = Stopper::new()?;
        let thread = {
            let (dropped, stopper) = (dropped.clone(), stopper.clone());
            std::thread::Builder::new()
                .name("watch-queue".into())
                .spawn(move || guard(&group, max, &dropped, &stopper))?
        };
        Ok(QueueGuard {
            dropped,
            stopper,
            thread: Some(thread),
        })
    }

    /// Whether the guard dropped events since the last call.
    pub(crate) fn take_dropped(&self) -> bool {
        self.dropped.swap(false, Ordering::SeqCst)
    }
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn guard(group: &OwnedFd, max: u64, dropped: &AtomicBool, stopper: &Stopper) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let timeout = Timespec::try_from(EVERY).expect("a short timeout");
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let stop_fd = stopper.fd();
        let mut fds = [PollFd::new(&stop_fd, PollFlags::IN)];
        let _ = poll(&mut fds, Some(&timeout));
        if stopper.is_stopped() {
            return;
        }
        if rustix::io::ioctl_fionread(group).unwrap_or(0) <= max {
            continue;
        }
        // Everything, not down to the bound: what is read now is lost anyway (the rescan
        // finds it), and the memory comes back at once.
        while let Ok(n) = rustix::io::read(group, &mut buf[..]) {
            if n == 0 {
                break;
            }
        }
        dropped.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};
    use std::os::fd::AsFd;

    /// A group watching a new folder's file system the way the watcher's does, never read.
    fn group(dir: &std::path::Path) -> Fanotify {
        let group = Fanotify::init(
            InitFlags::from_bits_retain(super::super::INIT_FLAGS),
            EventFFlags::from_bits_retain((libc::O_RDONLY | libc::O_CLOEXEC) as u32),
        )
        .expect("fanotify_init (the tests run as root)");
        let at = std::fs::File::open(dir).unwrap();
        group
            .mark(
                MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
                MaskFlags::from_bits_retain(super::super::EVENTS),
                at.as_fd(),
                Some(dir),
            )
            .expect("fanotify_mark");
        group
    }

    #[test]
    fn a_queue_past_its_bound_is_dropped_and_said_while_nobody_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let group = group(dir.path());
        let dup = rustix::io::fcntl_dupfd_cloexec(group.as_fd(), 0).unwrap();
        let guard = QueueGuard::start(dup, 64 * 1024).unwrap();
        assert!(!guard.take_dropped());
        // Events the watcher's thread does not read (it is held elsewhere): far more than
        // 64 KiB of them.
        for i in 0..5_000 {
            std::fs::File::create(dir.path().join(format!("file-{i}"))).unwrap();
        }
        let began = std::time::Instant::now();
        while !guard.take_dropped() {
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "the guard did not drop the queue"
            );
            std::thread::yield_now();
        }
        // (How much waits now depends on the rest of the file system: the mark is on all of it.)
        drop(guard); // stops its thread (the test would hang on join otherwise)
    }
}
