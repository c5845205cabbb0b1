//! The sending half of a client connection, which never makes its callers wait for the client.
//!
//! Replies come from two kinds of thread: the connection's own (reads) and the volumes' writers
//! (writes, after their commit). If either waited for a client that does not read — a pipelining
//! client that sends all its requests before it reads a reply, or a hung process — the connection
//! thread would stop reading requests while the client waits to send them (a deadlock until the
//! client's timeout), and a volume's writer would stop committing for every other client. So
//! replies go into an outbox and are sent with `send(MSG_DONTWAIT)` from the calling thread;
//! what the socket does not take at once is sent by a drainer thread that waits for the client
//! to read, and exits when the outbox is empty.

use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};

use deskd_proto::Stream;

/// More unsent bytes than this, and the client is not reading: the connection is closed.
const MAX_UNSENT: usize = 2 * deskd_proto::MAX_REPLY_FRAME as usize;

/// The sending half of a connection, shared by the connection thread and the writers.
pub struct Outbox {
    stream: Stream,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Bytes queued; those before `sent` are on their way.
    pending: Vec<u8>,
    sent: usize,
    /// A drainer thread is sending the rest.
    draining: bool,
    /// The client is gone (or did not read): everything is dropped from now on.
    broken: bool,
}

impl Outbox {
    pub fn new(stream: Stream) -> Arc<Outbox> {
        Arc::new(Outbox {
            stream,
            state: Mutex::new(State::default()),
        })
    }

    /// Queue one encoded frame; it leaves with the next [`Outbox::flush`].
    pub fn push(&self, frame: &[u8]) {
        let mut state = self.state.lock().unwrap();
        if !state.broken {
            state.pending.extend_from_slice(frame);
        }
    }

    /// Send what is queued, as far as the socket takes it now; a drainer sends the rest.
    pub fn flush(self: &Arc<Self>) {
        let mut state = self.state.lock().unwrap();
        self.send_some(&mut state);
        if state.pending.len() > state.sent && !state.draining && !state.broken {
            state.draining = true;
            let outbox = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("deskd-drain".into())
                .spawn(move || outbox.drain());
            if spawned.is_err() {
                state.draining = false;
                self.break_off(&mut state);
            }
        }
    }

    /// Send without blocking until the socket is full or everything is sent.
    fn send_some(&self, state: &mut State) {
        while !state.broken && state.sent < state.pending.len() {
            let rest = &state.pending[state.sent..];
            // SAFETY: send reads at most rest.len() bytes from rest, a valid slice.
            let n = unsafe {
                libc::send(
                    self.stream.as_raw_fd(),
                    rest.as_ptr() as *const libc::c_void,
                    rest.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                state.sent += n as usize;
                continue;
            }
            match std::io::Error::last_os_error().kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => break,
                _ => self.break_off(state),
            }
        }
        if state.sent == state.pending.len() {
            state.pending.clear();
            state.sent = 0;
        } else if state.pending.len() - state.sent > MAX_UNSENT {
            tracing::warn!(
                "a client has not read {} bytes of replies; closing its connection",
                state.pending.len() - state.sent
            );
            self.break_off(state);
        } else if state.sent > (1 << 20) && state.sent * 2 > state.pending.len() {
            state.pending.drain(..state.sent);
            state.sent = 0;
        }
    }

    /// Drop everything and end the connection (the connection thread's read then ends too).
    fn break_off(&self, state: &mut State) {
        state.broken = true;
        state.pending = Vec::new();
        state.sent = 0;
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// The drainer: wait until the client reads, send, until nothing is left.
    fn drain(self: Arc<Self>) {
        loop {
            let mut poll = libc::pollfd {
                fd: self.stream.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd; a timeout bounds the wait so a broken flag is seen.
            unsafe { libc::poll(&mut poll, 1, 1000) };
            let mut state = self.state.lock().unwrap();
            self.send_some(&mut state);
            if state.broken || state.sent == state.pending.len() {
                state.draining = false;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_client_that_reads_late_gets_every_byte_and_nobody_waits() {
        let (server, mut client) = UnixStream::pair().unwrap();
        let outbox = Outbox::new(Stream::Unix(server));
        // Far more than a socket buffer holds, pushed while the client reads nothing: every
        // flush returns at once.
        let frame: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let started = std::time::Instant::now();
        for _ in 0..64 {
            outbox.push(&frame);
            outbox.flush();
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let mut got = vec![0u8; frame.len() * 64];
        client.read_exact(&mut got).unwrap();
        assert!(got.chunks(frame.len()).all(|c| c == frame.as_slice()));
    }

    #[test]
    fn a_client_that_went_away_breaks_the_outbox() {
        let (server, client) = UnixStream::pair().unwrap();
        let outbox = Outbox::new(Stream::Unix(server));
        drop(client);
        outbox.push(b"reply");
        outbox.flush();
        assert!(outbox.state.lock().unwrap().broken);
        outbox.push(b"more");
        assert!(outbox.state.lock().unwrap().pending.is_empty());
    }
}
