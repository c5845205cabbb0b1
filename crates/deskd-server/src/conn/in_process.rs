//! A connection inside the server process, for a front end the server runs itself (the afpd
//! CNID listener of `deskd serve`, docs/netatalk.md): it hands a [`Request`] to the same
//! dispatch code a socket connection runs (same checks, same peer rules, same audit, same
//! replies) and takes the reply back on the calling thread, with no socket and no second
//! thread between. A lone write is committed on the calling thread when the volume's writer is
//! idle ([`crate::writer`]'s `commit_alone`), and waits for the writer's answer when it is busy.
//!
//! Its peer is the server's own user, as a local connection from that user would be (root:
//! trusted, the same as a root client such as the standalone `deskd netatalk` bridge).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use deskd_proto::{ErrorCode, ErrorReply, Request, Response};

use super::{Connection, Destination, Peer, ReplySink};
use crate::access::{Access, Credentials};
use crate::apply::Reply;
use crate::clients::{Client, Registration};
use crate::shared::Shared;

/// Where the reply of the one request an in-process connection has out waits for its thread.
#[derive(Default)]
pub(crate) struct Mailbox {
    reply: Mutex<Option<Reply>>,
    ready: Condvar,
}

impl Mailbox {
    /// Keep the reply (the writer thread, or this thread when it committed the write itself).
    pub(super) fn put(&self, reply: Reply) {
        *self.reply.lock().unwrap() = Some(reply);
    }

    /// Wake the thread waiting for a reply.
    pub(super) fn wake(&self) {
        self.ready.notify_all();
    }
}

/// How long the waiting thread sleeps before it looks again whether its write is still
/// waiting (a wake-up it missed, a write dropped unanswered): a safety net only.
const RECHECK: Duration = Duration::from_millis(100);

/// One connection to the server from inside its own process, used by one thread.
pub struct InProcessConnection {
    conn: Connection,
    mailbox: Arc<Mailbox>,
    /// Listed among the live connections (`deskd status`) while it lives.
    _registration: Registration,
}

impl InProcessConnection {
    /// A connection whose peer is the server's own user.
    pub(crate) fn new(shared: Arc<Shared>, who: &str) -> InProcessConnection {
        let uid = rustix::process::geteuid().as_raw();
        let credentials = Credentials {
            uid,
            gid: rustix::process::getegid().as_raw(),
            groups: Vec::new(),
        };
        let registration = shared.clients.register(Client::in_process(uid, who));
        InProcessConnection {
            conn: Connection {
                shared,
                peer: Peer::Unix { uid: Some(uid) },
                access: Arc::new(Access::for_local(Some(credentials))),
                client: registration.client.clone(),
                volumes_used: Vec::new(),
                readers: Default::default(),
                closings_seen: 0,
                writes_waiting: Arc::default(),
                answered_at: None,
                // The server's own code (the admin page, the HTTP API) reads every reply.
                knows_appended_replies: true,
            },
            mailbox: Arc::default(),
            _registration: registration,
        }
    }

    /// Send one request and wait for its reply (a read, or a write the writer was idle for,
    /// is answered before dispatch returns, so no wait at all).
    pub fn call(&mut self, request: Request) -> Result<Response, ErrorReply> {
        let timing = Some(self.conn.timing(&request));
        let sink = ReplySink {
            to: Destination::InProcess(self.mailbox.clone()),
            id: 0,
            access: self.conn.access.clone(),
            unseen_errors: false,
            client: self.conn.client.clone(),
            timing,
        };
        self.conn.dispatch(request, sink, false);
        // As a socket connection with no request waiting: let checkpoints proceed.
        self.conn.end_snapshots();
        let mut reply = self.mailbox.reply.lock().unwrap();
        loop {
            if let Some(reply) = reply.take() {
                return reply;
            }
            // Every reply is put before its write stops counting as waiting: none is coming.
            if self.conn.writes_waiting.load(Ordering::SeqCst) == 0 {
                return Err(ErrorReply::new(
                    ErrorCode::Internal,
                    "the request was dropped unanswered",
                ));
            }
            reply = self.mailbox.ready.wait_timeout(reply, RECHECK).unwrap().0;
        }
    }
}
