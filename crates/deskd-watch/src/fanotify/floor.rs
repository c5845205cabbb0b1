//! The floor of what watching costs a program that creates files (issue 23, for
//! `deskd-bench populate --fanotify-floor`): a fanotify group made and marked exactly as the
//! watcher's ([`super::INIT_FLAGS`], one filesystem mark for [`super::EVENTS`]), whose events a
//! thread reads as the pump does (everything queued, then a pause of the pump's length) and
//! throws away. The kernel makes each event in the creating program's context, and the reader
//! takes a core's share on a machine of few: no watcher can cost the program less than this.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::thread::JoinHandle;

use nix::sys::fanotify::Fanotify;
use rustix::event::{poll, PollFd, PollFlags, Timespec};

use crate::{Stopper, WatchError};

/// A marked group whose events are read and dropped until [`Floor::stop`].
pub struct Floor {
    _group: Fanotify,
    stopper: Stopper,
    thread: Option<JoinHandle<u64>>,
}

impl Floor {
    /// Mark `root`'s file system as the watcher does and start discarding its events.
    pub fn start(root: &Path) -> Result<Floor, WatchError> {
        let (group, _root) = super::marked_group(root)?;
        let fd: OwnedFd =
            rustix::io::fcntl_dupfd_cloexec(&group, 0).map_err(|e| WatchError::Read(e.into()))?;
        let stopper = Stopper::new().map_err(WatchError::Stopper)?;
        let thread = {
            let stopper = stopper.clone();
            std::thread::Builder::new()
                .name("watch-floor".into())
                .spawn(move || discard(&fd, &stopper))
                .map_err(WatchError::Read)?
        };
        Ok(Floor {
            _group: group,
            stopper,
            thread: Some(thread),
        })
    }

    /// Stop reading; the bytes of events read and dropped.
    pub fn stop(mut self) -> u64 {
        self.stopper.stop();
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The pump's loop ([`super::pump`]) without keeping anything.
fn discard(group: &OwnedFd, stopper: &Stopper) -> u64 {
    let pause = Timespec::try_from(super::pump::PAUSE).expect("a short timeout");
    let mut scratch = vec![0u8; super::pump::CHUNK];
    let mut bytes = 0u64;
    loop {
        {
            let stop_fd = stopper.fd();
            let mut fds = [
                PollFd::new(group, PollFlags::IN),
                PollFd::new(&stop_fd, PollFlags::IN),
            ];
            let _ = poll(&mut fds, None);
        }
        let stopped = stopper.is_stopped();
        // Read after the stop was seen: what was queued before it is read (and counted)
        // before the thread ends.
        while let Ok(n @ 1..) = rustix::io::read(group, &mut scratch) {
            bytes += n as u64;
        }
        if stopped {
            return bytes;
        }
        let stop_fd = stopper.fd();
        let mut fds = [PollFd::new(&stop_fd, PollFlags::IN)];
        let _ = poll(&mut fds, Some(&pause));
    }
}
