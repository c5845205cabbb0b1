//! The reader of a fanotify group's kernel queue, a thread of its own: it keeps the kernel's
//! queue short by moving its events into the watcher's memory as they come, bounded there.
//!
//! The watcher's thread reads the kernel only between batches, and a batch can take long (a
//! writer applying 65,536 creates, a frozen desktop, a rebuild). Left in the kernel, a burst's
//! events (a program creating 100,000 files a second) piled up past any queue bound worth
//! its kernel memory: at a million files the queue held 262,144 events and overflowed, and
//! counting it (`FIONREAD`, which walks the whole queue under the group's lock, the lock the
//! creating program takes for each event it adds) cost the program too. So this thread
//! reads whatever the kernel has every [`PAUSE`] (not for each event: being woken per event
//! cost the creating program about a fifth of its rate) into chunks of raw event bytes, and
//! the watcher takes those chunks first, then the kernel's, in order (both read under one
//! lock, so no event overtakes another). The chunks are counted as they are kept, for
//! nothing: past `max` bytes everything held and queued is dropped and the watcher's next
//! batch reports an overflow (the volume is rescanned), and the memory comes back at once.
//! Every drop is counted (the watcher's batch says how many, and status counts each), and
//! said at warning level, at most once per [`SAY_EVERY`] (a user flooding the file system
//! with a small `watch_held_mib` could otherwise write a line every few milliseconds).

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use crate::stopper::Stopper;

/// How long the pump lets events gather after reading what was queued.
pub(super) const PAUSE: Duration = Duration::from_millis(10);

/// Bytes one read(2) of the pump takes at most.
pub(super) const CHUNK: usize = 64 * 1024;

/// The least time between two warnings of drops (each drop is counted all the same).
const SAY_EVERY: Duration = Duration::from_secs(10);

/// What the pump holds for the watcher.
#[derive(Default)]
struct Held {
    chunks: VecDeque<Box<[u8]>>,
    bytes: u64,
    /// The most held at once since the start.
    peak: u64,
    /// Times events were dropped (over the bound) since the watcher last asked.
    drops: u64,
    /// When a drop was last said in the log, and the drops not said since.
    said: Option<Instant>,
    unsaid: u64,
    /// Bytes of events taken from the kernel since the start, and of those the bytes of
    /// events deskd itself caused (its pid: resource files, the desktop's side files).
    pumped: Pumped,
}

/// Bytes of events the pump took from the kernel since the start (monotonic: a rate is
/// the difference of two).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pumped {
    /// All of them.
    pub all: u64,
    /// Those of events caused by this process (the event's pid is ours).
    pub own: u64,
    /// Those no longer held (taken by the watcher, or dropped over the bound), as of the
    /// same moment as `all`.
    pub taken: u64,
}

impl Pumped {
    /// Bytes of events other processes caused.
    pub fn others(&self) -> u64 {
        self.all - self.own
    }
}

/// Bytes of the events in `buf` (whole `fanotify_event_metadata` records) caused by the
/// process `pid`. The pid is the metadata's at offset 20 (a thread group id: the group is
/// not made with `FAN_REPORT_TID`); a short or corrupt record ends the count.
fn bytes_of_pid(buf: &[u8], pid: i32) -> u64 {
    let mut own = 0u64;
    let mut rest = buf;
    while rest.len() >= 24 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        if len < 24 || len > rest.len() {
            break;
        }
        if i32::from_ne_bytes(rest[20..24].try_into().expect("4 bytes")) == pid {
            own += len as u64;
        }
        rest = &rest[len..];
    }
    own
}

struct Shared {
    /// A descriptor of the group (a duplicate of the watcher's).
    group: OwnedFd,
    held: Mutex<Held>,
    /// Readable while chunks are held (the watcher polls it instead of the group).
    ready: OwnedFd,
    max: u64,
    /// The volume root, for the log.
    root: String,
    /// This process's id: its own events are counted apart ([`Pumped`]).
    pid: i32,
}

impl Shared {
    /// Mark the eventfd readable (chunks held) or not.
    fn signal(&self, held: bool) {
        if held {
            let _ = rustix::io::write(&self.ready, &1u64.to_ne_bytes());
        } else {
            let mut count = [0u8; 8];
            let _ = rustix::io::read(&self.ready, &mut count);
        }
    }

    /// One read of the kernel's queue into a held chunk; false when nothing was queued (or
    /// everything was dropped over the bound).
    fn fill_once(&self, scratch: &mut [u8]) -> bool {
        let mut held = self.held.lock().unwrap();
        let n = match rustix::io::read(&self.group, &mut *scratch) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        held.pumped.all += n as u64;
        held.pumped.own += bytes_of_pid(&scratch[..n], self.pid);
        held.chunks.push_back(Box::from(&scratch[..n]));
        held.bytes += n as u64;
        held.peak = held.peak.max(held.bytes);
        if held.bytes > self.max {
            // Everything, not down to the bound: what is held now is lost anyway (the
            // rescan finds it), and the memory comes back at once.
            self.drop_all(&mut held, scratch);
            held.drops += 1;
            held.unsaid += 1;
            if held.said.is_none_or(|at| at.elapsed() >= SAY_EVERY) {
                // The admin sees why a rescan follows, and what to raise.
                let more = match held.unsaid - 1 {
                    0 => String::new(),
                    n => format!(" ({n} more drop(s) since the last such line)"),
                };
                let mib = self.max.div_ceil(1 << 20);
                tracing::warn!(
                    "watch: more than {mib} MiB of events held unread (watch_held_mib = {mib}) \
                     for {}; dropped, and the volume is rescanned{more}: raise watch_held_mib \
                     if the server has the memory (docs/deskd.md, \"Live tracking\")",
                    self.root
                );
                held.said = Some(Instant::now());
                held.unsaid = 0;
            }
            return false;
        }
        if held.chunks.len() == 1 {
            self.signal(true);
        }
        true
    }

    /// Drop everything held and queued (called with `held` locked).
    fn drop_all(&self, held: &mut Held, scratch: &mut [u8]) {
        held.chunks.clear();
        held.bytes = 0;
        // The allocator may keep the freed chunks; give them back at once.
        held.chunks.shrink_to_fit();
        while let Ok(n) = rustix::io::read(&self.group, &mut *scratch) {
            if n == 0 {
                break;
            }
        }
        self.signal(false);
    }
}

/// The pump of one group; stops its thread when dropped.
pub(crate) struct Pump {
    shared: Arc<Shared>,
    stopper: Stopper,
    thread: Option<JoinHandle<()>>,
}

impl Pump {
    /// Read the group `group` (a descriptor of its own) of the volume at `root`, holding at
    /// most `max` bytes.
    pub(crate) fn start(group: OwnedFd, max: u64, root: &std::path::Path) -> std::io::Result<Pump> {
        let shared = Arc::new(Shared {
            group,
            held: Mutex::default(),
            ready: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?,
            max,
            root: root.display().to_string(),
            pid: std::process::id() as i32,
        });
        let stopper = Stopper::new()?;
        let thread = {
            let (shared, stopper) = (shared.clone(), stopper.clone());
            std::thread::Builder::new()
                .name("watch-queue".into())
                .spawn(move || pump(&shared, &stopper))?
        };
        Ok(Pump {
            shared,
            stopper,
            thread: Some(thread),
        })
    }

    /// Readable while events wait in the pump (the kernel's own wait there until read).
    pub(crate) fn ready_fd(&self) -> BorrowedFd<'_> {
        self.shared.ready.as_fd()
    }

    /// The next events, into `buf`: a held chunk, else one read(2) of the kernel's queue.
    /// As read(2): `Err(AGAIN)` or `Ok(0)` when nothing waits.
    pub(crate) fn read(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        let mut held = self.shared.held.lock().unwrap();
        if let Some(chunk) = held.chunks.pop_front() {
            held.bytes -= chunk.len() as u64;
            if held.chunks.is_empty() {
                self.shared.signal(false);
            }
            // Chunks are at most CHUNK bytes, and `buf` is the watcher's READ_BUFFER.
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            return Ok(n);
        }
        // Under the lock: the pump cannot read (and hold) newer events meanwhile.
        rustix::io::read(&self.shared.group, buf)
    }

    /// Everything that happened by now, as one read: what the kernel has queued is taken in
    /// first, then every held chunk goes into `buf` (replaced). For a watcher that places
    /// directories by the kernel, where they are *now*: a directory's later rename must be in
    /// the same read as its earlier events (`note_renames`), as when the watcher read the
    /// kernel itself. As read(2) otherwise.
    pub(crate) fn read_all(&self, buf: &mut Vec<u8>) -> Result<usize, Errno> {
        let mut scratch = vec![0u8; CHUNK];
        while self.shared.fill_once(&mut scratch) {}
        let mut held = self.shared.held.lock().unwrap();
        if held.chunks.is_empty() {
            drop(held);
            buf.resize(CHUNK, 0);
            return self.read(buf);
        }
        buf.clear();
        buf.reserve(held.bytes as usize);
        for chunk in held.chunks.drain(..) {
            buf.extend_from_slice(&chunk);
        }
        held.bytes = 0;
        self.shared.signal(false);
        Ok(buf.len())
    }

    /// How many times events were dropped over the bound since the last call.
    pub(crate) fn take_drops(&self) -> u64 {
        std::mem::take(&mut self.shared.held.lock().unwrap().drops)
    }

    /// Drop everything held and queued (the rescan after an overflow finds what they said).
    pub(crate) fn discard(&self) {
        let mut scratch = vec![0u8; CHUNK];
        let mut held = self.shared.held.lock().unwrap();
        self.shared.drop_all(&mut held, &mut scratch);
    }

    /// Bytes held now, and the most held at once.
    pub(crate) fn held_bytes(&self) -> (u64, u64) {
        let held = self.shared.held.lock().unwrap();
        (held.bytes, held.peak)
    }

    /// Bytes of events taken from the kernel since the start, all and deskd's own.
    pub(crate) fn pumped(&self) -> Pumped {
        let held = self.shared.held.lock().unwrap();
        Pumped {
            taken: held.pumped.all - held.bytes,
            ..held.pumped
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn pump(shared: &Shared, stopper: &Stopper) {
    let pause = Timespec::try_from(PAUSE).expect("a short timeout");
    let mut scratch = vec![0u8; CHUNK];
    loop {
        {
            let stop_fd = stopper.fd();
            let mut fds = [
                PollFd::new(&shared.group, PollFlags::IN),
                PollFd::new(&stop_fd, PollFlags::IN),
            ];
            let _ = poll(&mut fds, None);
        }
        if stopper.is_stopped() {
            return;
        }
        while shared.fill_once(&mut scratch) {}
        // Let events gather rather than wake for each.
        let stop_fd = stopper.fd();
        let mut fds = [PollFd::new(&stop_fd, PollFlags::IN)];
        let _ = poll(&mut fds, Some(&pause));
        if stopper.is_stopped() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};
    use std::os::fd::AsFd;

    /// A group watching a new folder's file system the way the watcher's does.
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
    fn only_whole_records_of_the_pid_are_counted() {
        let record = |len: u32, pid: i32| {
            let mut r = vec![0u8; len as usize];
            r[0..4].copy_from_slice(&len.to_ne_bytes());
            r[20..24].copy_from_slice(&pid.to_ne_bytes());
            r
        };
        let mut buf = record(40, 7);
        buf.extend(record(30, 8));
        buf.extend(record(50, 7));
        assert_eq!(bytes_of_pid(&buf, 7), 90);
        assert_eq!(bytes_of_pid(&buf, 8), 30);
        // A record longer than what is left ends the count, as does one too short.
        buf.extend(record(24, 7));
        let n = buf.len();
        buf[n - 24..n - 20].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(bytes_of_pid(&buf, 7), 90);
        assert_eq!(bytes_of_pid(&record(24, 7)[..10], 7), 0);
    }

    fn readable(pump: &Pump) -> bool {
        let ready = pump.ready_fd();
        let mut fds = [PollFd::new(&ready, PollFlags::IN)];
        poll(&mut fds, Some(&Timespec::try_from(Duration::ZERO).unwrap())).unwrap();
        !fds[0].revents().is_empty()
    }

    #[test]
    fn events_past_the_bound_are_dropped_and_said_while_the_watcher_reads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let group = group(dir.path());
        let dup = rustix::io::fcntl_dupfd_cloexec(group.as_fd(), 0).unwrap();
        let pump = Pump::start(dup, 64 * 1024, dir.path()).unwrap();
        assert_eq!(pump.take_drops(), 0);
        // Events the watcher's thread does not read (it is held elsewhere): far more than
        // 64 KiB of them.
        for i in 0..5_000 {
            std::fs::File::create(dir.path().join(format!("file-{i}"))).unwrap();
        }
        let began = std::time::Instant::now();
        while pump.take_drops() == 0 {
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "the pump did not drop the events"
            );
            std::thread::yield_now();
        }
        assert!(pump.held_bytes().1 > 64 * 1024);
        drop(pump); // stops its thread (the test would hang on join otherwise)
    }

    #[test]
    fn events_are_held_out_of_the_kernel_and_read_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let group = group(dir.path());
        let dup = rustix::io::fcntl_dupfd_cloexec(group.as_fd(), 0).unwrap();
        let pump = Pump::start(dup, 1 << 30, dir.path()).unwrap();
        let files = 3_000;
        for i in 0..files {
            std::fs::File::create(dir.path().join(format!("in-order-{i}"))).unwrap();
        }
        // The pump takes them out of the kernel while nobody reads (the eventfd says so).
        let began = std::time::Instant::now();
        while pump.held_bytes().0 == 0 {
            assert!(began.elapsed() < Duration::from_secs(30), "nothing held");
            std::thread::yield_now();
        }
        assert!(readable(&pump), "ready while held");
        // This process made them: counted as its own (at least the creates held so far).
        let pumped = pump.pumped();
        assert!(pumped.own > 0 && pumped.own <= pumped.all, "{pumped:?}");
        // Every create, once, in order, held chunks first and then the kernel's (the mark
        // covers the whole file system: other tests' names are left out).
        let mut buf = vec![0u8; super::super::READ_BUFFER];
        let mut names = Vec::new();
        loop {
            let n = match pump.read(&mut buf) {
                Ok(0) | Err(Errno::AGAIN) => break,
                Ok(n) => n,
                Err(e) => panic!("{e}"),
            };
            for event in super::super::records::events(&buf[..n]) {
                let event = event.unwrap();
                super::super::sys::close_event_fd(event.fd);
                let records = super::super::records::records(event.info).unwrap();
                if let Some(end) = records.dfid_name.or(records.new).or(records.old) {
                    names.push(end.name.to_string_lossy().into_owned());
                }
            }
        }
        let ours: Vec<&String> = names
            .iter()
            .filter(|n| n.starts_with("in-order-"))
            .collect();
        assert_eq!(ours.len(), files);
        for (i, name) in ours.iter().enumerate() {
            assert_eq!(**name, format!("in-order-{i}"));
        }
        // Read out, none of ours is left. (The mark covers the whole file system, so other
        // processes' and tests' events may be held again meanwhile: CI once found 184 bytes
        // held here; only ours are this test's to count.)
        let mut again = Vec::new();
        while let Ok(n) = pump.read(&mut buf) {
            if n == 0 {
                break;
            }
            for event in super::super::records::events(&buf[..n]) {
                let event = event.unwrap();
                super::super::sys::close_event_fd(event.fd);
                let records = super::super::records::records(event.info).unwrap();
                if let Some(end) = records.dfid_name.or(records.new).or(records.old) {
                    again.push(end.name.to_string_lossy().into_owned());
                }
            }
        }
        assert!(
            !again.iter().any(|n| n.starts_with("in-order-")),
            "read twice: {again:?}"
        );
    }
}
