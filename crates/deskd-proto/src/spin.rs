//! A socket reader that polls briefly before it sleeps, while polling pays.
//!
//! Waking a thread that sleeps in `read(2)` costs tens of microseconds on virtual machines (on
//! the project's VM a bare cross-process round trip takes ~57 µs that way, ~5 µs when the reader
//! is already awake). [`SpinRead`] first polls with `recv(MSG_DONTWAIT)` for a short window and
//! only then blocks, so a request that follows quickly on the previous one is read without a
//! wake-up. The window is `$DESKD_SPIN_US` microseconds (default 100; 0 disables polling).
//! Blocking reads keep the socket's read timeout; while a deadline is set
//! ([`SpinRead::set_deadline`]), a blocking read that would end after it fails with
//! [`io::ErrorKind::TimedOut`] instead.
//!
//! Polling pays only on a machine with a CPU to spare. When other work waits for a CPU, a
//! polling thread takes the CPU that work needs, and the CPU time it burns costs it the
//! wake-up preference the scheduler gives threads that sleep. With `$DESKD_SPIN_ADAPT=1` a
//! reader polls only while no other work waits: [`contention::busy`] samples the number of
//! runnable threads (`/proc/loadavg`, at most every 2 ms per process) and polling stops while
//! it exceeds the CPUs this process may use. It is not the default: measured on 2 vCPUs
//! (docs/PERFORMANCE.md, "Polling under load"), it helps a chain with a party that never polls
//! (afpd → the bridge → deskd, with compilers running: GET through the bridge p50 ~217 →
//! ~17 µs) but costs the pair deskd client ↔ server, which polls on both sides, its tail
//! (quiet p99 ~13 → ~40 µs; with busy loops beside it up to 1.5 ms in one run where always
//! polling kept 16 µs).

use crate::Stream;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// The polling window when `$DESKD_SPIN_US` is not set.
pub const DEFAULT_SPIN_US: u64 = 100;

/// The polling window from `$DESKD_SPIN_US` (zero when polling is off).
pub fn spin_window() -> Duration {
    let us = std::env::var("DESKD_SPIN_US")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_SPIN_US);
    Duration::from_micros(us.min(10_000))
}

/// Reads from a stream, polling for `spin` before a blocking read.
pub struct SpinRead {
    stream: Stream,
    spin: Duration,
    deadline: Option<Instant>,
}

impl SpinRead {
    /// Reads from `stream`, polling for `spin` first ([`spin_window`] gives the default).
    pub fn new(stream: Stream, spin: Duration) -> SpinRead {
        SpinRead {
            stream,
            spin,
            deadline: None,
        }
    }

    /// Bound every later read by `deadline` (None: no bound). A server sets one while a frame
    /// has started to arrive, so a peer cannot hold a half-sent frame open.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }
}

impl Read for SpinRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.spin.is_zero() && !contention::busy() {
            let start = Instant::now();
            loop {
                match rustix::net::recv(&self.stream, &mut *buf, rustix::net::RecvFlags::DONTWAIT) {
                    Ok((n, _)) => return Ok(n),
                    Err(rustix::io::Errno::AGAIN) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
                if start.elapsed() >= self.spin {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        if let Some(deadline) = self.deadline {
            crate::deadline::wait_readable(self.stream.as_fd(), deadline)?;
        }
        self.stream.read(buf)
    }
}

/// Whether other work waits for a CPU, as [`SpinRead`] asks before it polls.
pub mod contention {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// How long one sample of the run queue stands for (readers of one process share it).
    pub const SAMPLE: Duration = Duration::from_millis(2);

    /// When the last sample was taken (ns since [`epoch`]; 0: never), and what it said.
    static SAMPLED_AT: AtomicU64 = AtomicU64::new(0);
    static BUSY: AtomicBool = AtomicBool::new(false);

    fn epoch() -> Instant {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    /// Whether polling adapts to the load (`$DESKD_SPIN_ADAPT=1`; by default it polls always).
    fn adaptive() -> bool {
        static ADAPT: OnceLock<bool> = OnceLock::new();
        *ADAPT.get_or_init(|| std::env::var("DESKD_SPIN_ADAPT").is_ok_and(|v| v.trim() == "1"))
    }

    /// The CPUs this process may run on (its affinity and cgroup quota).
    fn cpus() -> usize {
        static CPUS: OnceLock<usize> = OnceLock::new();
        *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Whether more threads are runnable than this process has CPUs, i.e. some wait: then
    /// polling would take a CPU others need. Sampled at most every [`SAMPLE`]; false when the
    /// rule is off or the kernel does not say (no `/proc`).
    pub fn busy() -> bool {
        if !adaptive() {
            return false;
        }
        let now = (epoch().elapsed().as_nanos() as u64).max(1);
        let at = SAMPLED_AT.load(Ordering::Relaxed);
        if at != 0 && now.saturating_sub(at) < SAMPLE.as_nanos() as u64 {
            return BUSY.load(Ordering::Relaxed);
        }
        // One reader samples; the others keep the last answer meanwhile.
        if SAMPLED_AT
            .compare_exchange(at, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return BUSY.load(Ordering::Relaxed);
        }
        let busy = std::fs::read("/proc/loadavg")
            .ok()
            .and_then(|text| runnable(&text))
            .is_some_and(|running| waiting(running, cpus()));
        BUSY.store(busy, Ordering::Relaxed);
        busy
    }

    /// The runnable threads in `/proc/loadavg` (`0.10 0.20 0.30 R/T LASTPID`: R, which counts
    /// the reader itself).
    pub fn runnable(loadavg: &[u8]) -> Option<usize> {
        let text = std::str::from_utf8(loadavg).ok()?;
        let field = text.split_ascii_whitespace().nth(3)?;
        field.split_once('/')?.0.parse().ok()
    }

    /// Whether `running` runnable threads (the asker among them) leave some waiting for one of
    /// `cpus` CPUs.
    pub fn waiting(running: usize, cpus: usize) -> bool {
        running > cpus
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn reads_what_was_written_and_sees_eof() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut r = SpinRead::new(Stream::Unix(a), Duration::from_micros(50));
        b.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        // Data that arrives after the window is still read (blocking).
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            b.write_all(b"late").unwrap();
        });
        let mut buf = [0u8; 4];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"late");
        writer.join().unwrap();
        assert_eq!(r.read(&mut [0u8; 1]).unwrap(), 0, "end of stream");
    }

    #[test]
    fn read_timeout_still_applies() {
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
        let mut r = SpinRead::new(Stream::Unix(a), Duration::from_micros(100));
        let err = r.read(&mut [0u8; 1]).unwrap_err();
        assert!(matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
    }

    #[test]
    fn the_run_queue_is_read_from_loadavg() {
        assert_eq!(
            contention::runnable(b"0.52 0.58 0.59 3/467 12345\n"),
            Some(3)
        );
        assert_eq!(contention::runnable(b"0.52 0.58 0.59 12/467 1\n"), Some(12));
        assert_eq!(contention::runnable(b"garbage"), None);
        assert_eq!(contention::runnable(b"0.1 0.2 0.3 x/4 5"), None);
        assert_eq!(contention::runnable(b"\xff\xfe"), None);
    }

    #[test]
    fn polling_stops_only_when_threads_wait_for_a_cpu() {
        // The reader and its peer on 2 CPUs: nobody waits.
        assert!(!contention::waiting(2, 2));
        // Two busy loops beside them: two wait.
        assert!(contention::waiting(4, 2));
        assert!(contention::waiting(2, 1));
        assert!(!contention::waiting(1, 1));
    }

    #[test]
    fn this_machine_says_how_busy_it_is() {
        // Sampled, then answered from the sample (no panic, whatever the load).
        contention::busy();
        contention::busy();
        let text = std::fs::read("/proc/loadavg").expect("Linux has /proc/loadavg");
        assert!(contention::runnable(&text).is_some(), "{text:?}");
    }
}
