//! Reading against a deadline: a peer that starts a handshake or a frame must finish it in time.
//!
//! A socket read timeout bounds each silence, so a peer that sends one byte every few seconds
//! would keep a half-sent frame (and the thread reading it) alive for ever. [`wait_readable`]
//! instead bounds the whole: it waits for data only until a fixed instant. [`Deadlined`] reads
//! a stream that way (the handshake); [`crate::spin::SpinRead`] does it while a frame is open.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use crate::Stream;

/// Wait until `fd` has something to read (data, end of stream or an error), or fail with
/// [`io::ErrorKind::TimedOut`] once `deadline` has passed.
pub fn wait_readable(fd: BorrowedFd<'_>, deadline: Instant) -> io::Result<()> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer did not finish in time",
            ));
        }
        let mut pollfd = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
        // Round up to whole milliseconds, as poll(2) counts them: a wait of 0 would spin until
        // the deadline.
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i64;
        let timeout = Timespec {
            tv_sec: ms / 1000,
            tv_nsec: (ms % 1000) * 1_000_000,
        };
        match rustix::event::poll(&mut pollfd, Some(&timeout)) {
            Ok(n) if n > 0 => return Ok(()),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// A stream whose reads all end by one deadline (writes are not bounded by it).
pub struct Deadlined<'a> {
    /// The connection read from.
    pub stream: &'a Stream,
    /// After this instant every read fails with `TimedOut`.
    pub deadline: Instant,
}

impl Read for Deadlined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        wait_readable(self.stream.as_fd(), self.deadline)?;
        self.stream.read(buf)
    }
}

impl Write for Deadlined<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    #[test]
    fn a_trickle_does_not_extend_the_deadline() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let stream = Stream::Unix(a);
        let began = Instant::now();
        let mut r = Deadlined {
            stream: &stream,
            deadline: began + Duration::from_secs(1),
        };
        let writer = std::thread::spawn(move || {
            // One byte every 40 ms: each silence is short, the whole (64 bytes: 2.6 s) too
            // long. A deadline moved on by each byte would let the read finish.
            for _ in 0..80 {
                if b.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(40));
            }
        });
        let mut buf = [0u8; 64];
        let err = r.read_exact(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // The deadline, with a second's room for a loaded machine: still well short of the
        // 2.6 s the whole trickle takes.
        assert!(
            began.elapsed() < Duration::from_secs(2),
            "{:?}",
            began.elapsed()
        );
        drop(stream);
        writer.join().unwrap();
    }

    #[test]
    fn data_in_time_is_read() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let stream = Stream::Unix(a);
        b.write_all(b"hello").unwrap();
        let mut r = Deadlined {
            stream: &stream,
            deadline: Instant::now() + Duration::from_secs(5),
        };
        let mut buf = [0u8; 5];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
    }
}
