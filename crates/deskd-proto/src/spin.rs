//! A socket reader that polls briefly before it sleeps.
//!
//! Waking a thread that sleeps in `read(2)` costs tens of microseconds on virtual machines (on
//! the project's VM a bare cross-process round trip takes ~57 µs that way, ~5 µs when the reader
//! is already awake). [`SpinRead`] first polls with `recv(MSG_DONTWAIT)` for a short window and
//! only then blocks, so a request that follows quickly on the previous one is read without a
//! wake-up. The window is `$DESKD_SPIN_US` microseconds (default 100; 0 disables polling).
//! Blocking reads keep the socket's read timeout; while a deadline is set
//! ([`SpinRead::set_deadline`]), a blocking read that would end after it fails with
//! [`io::ErrorKind::TimedOut`] instead.

use crate::Stream;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// The polling window when `$DESKD_SPIN_US` is not set.
pub const DEFAULT_SPIN_US: u64 = 100;

/// The polling window from `$DESKD_SPIN_US`.
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
        if !self.spin.is_zero() {
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
}
