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
//!
//! What a client does not read is bounded all the same: the connection thread reads no further
//! request while more than a bound ([`BACKLOG`], [`BACKLOG_TRUSTED`]) is unsent
//! ([`Outbox::wait_below`]), so a client that pipelines requests and never reads costs the server
//! at most about the bound plus the one reply that crossed it (and the answers to the writes it
//! had already queued), not the 512 MiB of [`MAX_UNSENT`].

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use deskd_proto::Stream;

/// More unsent bytes than this, and the client is not reading: the connection is closed.
const MAX_UNSENT: usize = 2 * deskd_proto::MAX_REPLY_FRAME as usize;

/// An unprivileged peer's connection reads no further request while more than this is unsent.
/// It is above what dt's pipelined registrations (512 at a time, each answered with its path)
/// can have unread, so they never wait for it.
pub const BACKLOG: usize = 2 << 20;

/// The same bound for trusted peers (root's file servers, TCP token holders), which are not
/// counted per uid and may pipeline thousands of registrations before they read a reply.
pub const BACKLOG_TRUSTED: usize = 64 << 20;

/// The sending half of a connection, shared by the connection thread and the writers.
pub struct Outbox {
    stream: Stream,
    state: Mutex<State>,
    /// Signalled whenever bytes leave (or the outbox breaks): [`Outbox::wait_below`] waits on it.
    sent_some: Condvar,
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
            sent_some: Condvar::new(),
        })
    }

    /// Bytes queued and not yet sent.
    pub fn unsent(&self) -> usize {
        let state = self.state.lock().unwrap();
        state.pending.len() - state.sent
    }

    /// Backpressure: send what is queued, then wait until at most `bound` bytes are unsent (or
    /// the client is gone). The connection thread calls this before it reads a request, so a
    /// client that does not read its replies is not read from either.
    pub fn wait_below(self: &Arc<Self>, bound: usize) {
        if self.unsent() <= bound {
            return;
        }
        self.flush();
        let mut state = self.state.lock().unwrap();
        while !state.broken && state.pending.len() - state.sent > bound {
            if !state.draining {
                // (The drainer could not be started: flush broke the outbox then.)
                break;
            }
            state = self
                .sent_some
                .wait_timeout(state, Duration::from_secs(1))
                .unwrap()
                .0;
        }
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
            let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
            match rustix::net::send(&self.stream, rest, flags) {
                Ok(n) => {
                    state.sent += n;
                    self.sent_some.notify_all();
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => break,
                Err(_) => self.break_off(state),
            }
        }
        if state.sent == state.pending.len() {
            state.pending.clear();
            state.sent = 0;
            // An idle connection keeps no big buffer: a user's many connections that each once
            // got a big reply would otherwise hold all that memory for as long as they are open.
            if state.pending.capacity() > 1 << 20 {
                state.pending = Vec::new();
            }
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
        self.sent_some.notify_all();
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// The drainer: wait until the client reads, send, until nothing is left.
    fn drain(self: Arc<Self>) {
        loop {
            use rustix::event::{PollFd, PollFlags, Timespec};
            let mut poll = [PollFd::new(&self.stream, PollFlags::OUT)];
            // A timeout bounds the wait so a broken flag is seen; its outcome is not needed
            // (send_some finds out).
            let second = Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            let _ = rustix::event::poll(&mut poll, Some(&second));
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
    fn wait_below_returns_once_the_client_has_read_enough() {
        let (server, mut client) = UnixStream::pair().unwrap();
        let outbox = Outbox::new(Stream::Unix(server));
        let frame = vec![7u8; 4 << 20];
        outbox.push(&frame);
        outbox.flush();
        assert!(outbox.unsent() > 1 << 20);
        let waiter = {
            let outbox = outbox.clone();
            std::thread::spawn(move || {
                outbox.wait_below(1 << 20);
                outbox.unsent()
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            !waiter.is_finished(),
            "it waited for a client that reads nothing"
        );
        let mut got = vec![0u8; frame.len()];
        client.read_exact(&mut got).unwrap();
        assert!(waiter.join().unwrap() <= 1 << 20);
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
