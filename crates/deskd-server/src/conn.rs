//! One client connection: handshake, then frames. Reads are answered on this thread with its
//! own read-only connections; writes go to the volume's writer and are acknowledged from there
//! once committed, so replies may come back out of order (clients match them by request id).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deskd_db::{Read, Reader};
use deskd_proto::{
    decode, read_frame_body, ErrorCode, ErrorReply, ProtoError, ReplyFrame, Request, RequestFrame,
    Response, Stream, VolumeInfo,
};
use tracing::{debug, warn};

use crate::access::{self, Access, Credentials};
use crate::apply::{apply_read_cached, Reply};
use crate::audit;
use crate::clients::Client;
use crate::db_reply::db_error;
use crate::limits::RateLimited;
use crate::mapped_reader::MappedReader;
use crate::outbox::Outbox;
use crate::shared::Shared;
use crate::sight;
use crate::volume::VolumeHandle;
use crate::writer::{Job, Replier, ReplyTo};

mod in_process;

pub use in_process::InProcessConnection;

/// Where a connection's replies go: encoded frames to its socket, or replies handed to the
/// thread that asked ([`in_process`]).
#[derive(Clone)]
enum Destination {
    Socket(Arc<Outbox>),
    InProcess(Arc<in_process::Mailbox>),
}

/// Where the reply to one request goes.
#[derive(Clone)]
pub(crate) struct ReplySink {
    to: Destination,
    id: u64,
    /// Whose request it is: an unprivileged peer's errors never say more than [`sight::unseen`]
    /// where they would tell a missing object from a hidden one.
    access: Arc<Access>,
    /// The request names an object the peer may not see (a move or removal allowed by a
    /// folder it may write but not list): any error is [`sight::unseen`], since the writer's
    /// detailed refusals (`still exists on disk`, with the path) would name it.
    unseen_errors: bool,
    /// The connection, as the registry of live connections holds it (who asked, for the
    /// audit log; its request figures).
    client: Arc<Client>,
    /// The request this reply answers, counted with its latency when the reply is queued
    /// (None: an answer to no request, such as a bad frame).
    timing: Option<Timing>,
}

/// When a request arrived, and what it was, for its latency figure ([`crate::figures`]).
#[derive(Clone, Copy)]
struct Timing {
    began: Instant,
    vol: u32,
    kind: u8,
}

impl ReplySink {
    /// Where the reply to request `id` goes, for the peer `access` describes.
    fn new(writer: &Arc<Outbox>, id: u64, access: &Arc<Access>, client: &Arc<Client>) -> Self {
        ReplySink {
            to: Destination::Socket(writer.clone()),
            id,
            access: access.clone(),
            unseen_errors: false,
            client: client.clone(),
            timing: None,
        }
    }
}

/// The writer acknowledges a connection's writes through its reply sink.
impl ReplyTo for ReplySink {
    fn access(&self) -> &Access {
        &self.access
    }

    /// Buffer the reply; it leaves with the next flush on this connection, so a burst of
    /// pipelined replies costs one write.
    fn queue(&self, result: Reply) {
        if let Some(t) = self.timing {
            let took = t.began.elapsed();
            (self.client.requests).record(t.vol, t.kind, took, result.is_err());
        }
        let result = result.map_err(|e| {
            if self.unseen_errors && !self.access.is_trusted() {
                sight::unseen()
            } else {
                sight::for_peer(&self.access, e)
            }
        });
        let writer = match &self.to {
            Destination::Socket(writer) => writer,
            Destination::InProcess(mailbox) => return mailbox.put(result),
        };
        let frame = ReplyFrame {
            id: self.id,
            result,
        };
        let bytes = match deskd_proto::encode_frame_within(&frame, deskd_proto::MAX_REPLY_FRAME) {
            Ok(bytes) => bytes,
            // Never leave a request unanswered: a client would wait for its timeout.
            Err(e) => deskd_proto::encode_frame(&ReplyFrame {
                id: self.id,
                result: Err(ErrorReply::new(
                    ErrorCode::FrameTooLarge,
                    format!("the reply cannot be sent: {e}"),
                )),
            })
            .expect("an error reply fits a frame"),
        };
        writer.push(&bytes);
    }

    /// Push buffered replies to the client (never waiting for it to read).
    fn flush(&self) {
        match &self.to {
            Destination::Socket(writer) => writer.flush(),
            Destination::InProcess(mailbox) => mailbox.wake(),
        }
    }

    /// The outbox's (or mailbox's) address: one per connection.
    fn connection(&self) -> usize {
        match &self.to {
            Destination::Socket(writer) => Arc::as_ptr(writer) as usize,
            Destination::InProcess(mailbox) => Arc::as_ptr(mailbox) as usize,
        }
    }

    fn who(&self) -> Arc<str> {
        self.client.who.clone()
    }
}

/// A write's reply sink that counts the connection's writes not yet answered: the count goes
/// down when the writer is done with the write (answered, or refused at a close).
struct WaitingWrite {
    sink: ReplySink,
    waiting: Arc<AtomicUsize>,
}

impl Drop for WaitingWrite {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        // An in-process caller waits for its write: answered or not, it may look again.
        if let Destination::InProcess(mailbox) = &self.sink.to {
            mailbox.wake();
        }
    }
}

impl ReplyTo for WaitingWrite {
    fn access(&self) -> &Access {
        self.sink.access()
    }
    fn queue(&self, reply: Reply) {
        self.sink.queue(reply)
    }
    fn flush(&self) {
        self.sink.flush()
    }
    fn connection(&self) -> usize {
        self.sink.connection()
    }
    fn who(&self) -> Arc<str> {
        self.sink.who()
    }
}

/// Who is at the other end of a connection.
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    /// A local process, with its uid from `SO_PEERCRED` (None when the kernel would not say;
    /// the connection thread reads it again with the rest of the credentials).
    Unix { uid: Option<u32> },
    /// A TCP client that proved it holds the token.
    Tcp { addr: SocketAddr },
}

/// How long a TCP client that gave a wrong token waits for its answer (slows guessing).
const WRONG_TOKEN_PENALTY: Duration = Duration::from_secs(1);

/// How long a `rebuild` waits for the server's own rescan of a watched volume to end before it
/// is refused as busy (the client's own timeout is longer).
const RESCAN_WAIT: Duration = Duration::from_secs(30);

/// Serve one connection until the client leaves. A TCP client must first answer the token
/// challenge. A local peer's credentials (uid for the admin verbs, uid, gid and groups for
/// the access checks) are read here, once, with `SO_PEERCRED` and `SO_PEERGROUPS`.
pub fn serve_connection(stream: Stream, peer: Peer, shared: Arc<Shared>) {
    let token = match (peer, &shared.tcp) {
        (Peer::Tcp { .. }, Some(tcp)) => Some(tcp.token()),
        // Never serve TCP without a token, whatever the configuration says.
        (Peer::Tcp { .. }, None) => return,
        (Peer::Unix { .. }, _) => None,
    };
    let frame_timeout = shared.limits.frame_timeout();
    let hello_flags = match handshake(&stream, token.as_deref(), frame_timeout) {
        Ok(flags) => flags,
        Err(e) => {
            match (e, peer) {
                (ProtoError::Auth(_), Peer::Tcp { addr }) => {
                    warn!("{addr}: refused a TCP client that gave a wrong token")
                }
                (ProtoError::Io(e), _) if e.kind() == std::io::ErrorKind::TimedOut => {
                    stalled(peer, HANDSHAKE, frame_timeout)
                }
                (e, _) => debug!("handshake failed: {e}"),
            }
            return;
        }
    };
    let (peer, access, client) = match peer {
        Peer::Unix { .. } => {
            let credentials = Credentials::of_peer(&stream).ok();
            let uid = credentials.as_ref().map(|c| c.uid);
            let pid = access::peer_ucred(&stream).map_or(0, |c| c.pid);
            (
                Peer::Unix { uid },
                Access::for_local(credentials),
                Client::local(uid, pid),
            )
        }
        tcp @ Peer::Tcp { addr } => (tcp, Access::Trusted, Client::tcp(addr)),
    };
    // Listed until this function returns, whichever way it does.
    let registration = shared.clients.register(client);
    let access = Arc::new(access);
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let writer = Outbox::new(write_half);
    let spin = deskd_proto::spin::Settings::configured();
    let mut input =
        BufReader::with_capacity(64 * 1024, deskd_proto::spin::SpinRead::new(stream, spin));
    let mut conn = Connection {
        shared,
        peer,
        access,
        client: registration.client.clone(),
        volumes_used: Vec::new(),
        readers: HashMap::new(),
        closings_seen: 0,
        writes_waiting: Arc::default(),
        answered_at: None,
        knows_appended_replies: hello_flags & deskd_proto::transport::HELLO_KNOWS_APPENDED_REPLIES
            != 0,
    };
    let mut body = Vec::new();
    let backlog = if conn.access.is_trusted() {
        crate::outbox::BACKLOG_TRUSTED
    } else {
        crate::outbox::BACKLOG
    };
    loop {
        // Backpressure: a client that does not read its replies gets no further request read
        // (docs/security.md, "Resource limits"). Its read snapshots end first, so waiting
        // never holds up a checkpoint.
        if writer.unsent() > backlog {
            conn.end_snapshots();
            writer.wait_below(backlog);
            conn.answered_at = None;
        }
        if input.buffer().is_empty() {
            // The next request has yet to arrive: its latency begins when it is read.
            conn.answered_at = None;
        }
        // Idle between frames is fine; a frame once begun must arrive whole in time.
        input.get_mut().set_deadline(None);
        match input.fill_buf() {
            Ok([]) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        let frame_timeout = conn.shared.limits.frame_timeout();
        input
            .get_mut()
            .set_deadline(Some(Instant::now() + frame_timeout));
        match read_frame_body(&mut input, &mut body) {
            Ok(true) => {}
            Ok(false) => break,
            Err(ProtoError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                stalled(conn.peer, "a frame", frame_timeout);
                let sink = ReplySink::new(&writer, 0, &conn.access, &conn.client);
                sink.send(Err(ErrorReply::new(
                    ErrorCode::BadRequest,
                    format!(
                        "a frame did not arrive whole within {} s (frame_timeout); closing",
                        frame_timeout.as_secs()
                    ),
                )));
                break;
            }
            Err(ProtoError::FrameTooLarge { len: n, .. }) => {
                let sink = ReplySink::new(&writer, 0, &conn.access, &conn.client);
                sink.send(Err(ErrorReply::new(
                    ErrorCode::FrameTooLarge,
                    format!(
                        "frame of {n} bytes exceeds the {}-byte limit; closing",
                        deskd_proto::MAX_FRAME
                    ),
                )));
                break;
            }
            Err(_) => break,
        }
        let frame: RequestFrame = match decode(&body) {
            Ok(f) => f,
            Err(e) => {
                let sink = ReplySink::new(&writer, 0, &conn.access, &conn.client);
                sink.send(Err(ErrorReply::new(ErrorCode::BadRequest, e.to_string())));
                continue;
            }
        };
        let mut sink = ReplySink::new(&writer, frame.id, &conn.access, &conn.client);
        sink.timing = Some(conn.timing(&frame.request));
        // More requests already received: answer them before flushing (pipelining). Only a
        // whole frame counts: the start of one whose rest has yet to come could keep this
        // connection's read snapshot (a PostgreSQL volume's lent read connection) up to
        // frame_timeout while it waits.
        let more = whole_frame_buffered(input.buffer());
        conn.dispatch(frame.request, sink, more);
        if !more {
            conn.end_snapshots();
        }
    }
}

/// Whether `buffered` starts with a whole frame (its 4-byte length and body).
fn whole_frame_buffered(buffered: &[u8]) -> bool {
    match buffered.first_chunk::<4>() {
        Some(len) => buffered.len() - 4 >= u32::from_be_bytes(*len) as usize,
        None => false,
    }
}

/// Test hook (`DESKD_TEST_HOLD_WRITES_UNTIL=<file>`, read once): hold each write between taking
/// a volume's handle and queueing it, until `<file>` exists, saying so on stderr first. A reload
/// closing the volume can fall into that moment; a test reloads while the write is held (it
/// waits for the line) and creates the file once the volume is reopened. The write must then be
/// answered and refused, never lost or left waiting.
#[cfg(feature = "test-hooks")]
fn hold_before_queueing() {
    static UNTIL: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let until = UNTIL.get_or_init(|| {
        std::env::var_os("DESKD_TEST_HOLD_WRITES_UNTIL").map(std::path::PathBuf::from)
    });
    if let Some(until) = until.as_deref().filter(|f| !f.exists()) {
        eprintln!("test hook: write held until {} exists", until.display());
        while !until.exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Without the `test-hooks` feature the hook is compiled out (release binaries hold no hook).
#[cfg(not(feature = "test-hooks"))]
fn hold_before_queueing() {}

/// The handshake, which must be over within `timeout` of the connection's start (however
/// the client spaces its bytes).
fn handshake(stream: &Stream, token: Option<&[u8]>, timeout: Duration) -> Result<u16, ProtoError> {
    let timed = deskd_proto::deadline::Deadlined {
        stream,
        deadline: Instant::now() + timeout,
    };
    deskd_proto::transport::server_handshake(timed, token, WRONG_TOKEN_PENALTY)
}

/// What [`stalled`] calls a handshake that did not end in time.
const HANDSHAKE: &str = "the handshake";

/// Log a connection closed because `what` did not arrive whole in time, at most every 10 s
/// (a flood of stalled connections cannot fill the log).
fn stalled(peer: Peer, what: &str, timeout: Duration) {
    static HANDSHAKES: RateLimited = RateLimited::new(Duration::from_secs(10));
    static FRAMES: RateLimited = RateLimited::new(Duration::from_secs(10));
    let log = if what == HANDSHAKE {
        &HANDSHAKES
    } else {
        &FRAMES
    };
    if log.now() {
        let who = match peer {
            Peer::Unix { uid: Some(uid) } => format!("uid {uid}"),
            Peer::Unix { uid: None } => "a local peer".into(),
            Peer::Tcp { addr } => addr.to_string(),
        };
        warn!(
            "{who}: closed a connection: {what} did not arrive whole within {} s \
             (frame_timeout)",
            timeout.as_secs()
        );
    }
}

struct Connection {
    shared: Arc<Shared>,
    peer: Peer,
    /// What this peer may see and change (root and TCP: everything).
    access: Arc<Access>,
    /// This connection in the registry of live connections (`deskd status`).
    client: Arc<Client>,
    /// The volumes already recorded as used by this connection (saves the registry's lock
    /// on every request).
    volumes_used: Vec<u32>,
    /// Per volume handle: a read-only connection to one opening of its desktop.
    readers: HashMap<u32, CachedReader>,
    /// [`Shared::closings`] when the readers were last pruned.
    closings_seen: u64,
    /// This connection's writes not yet answered ([`WaitingWrite`]).
    writes_waiting: Arc<AtomicUsize>,
    /// When this thread answered the last read, kept only while the next request was
    /// already buffered: that request's latency begins there ([`Connection::timing`]).
    answered_at: Option<Instant>,
    /// The client said in its hello that it decodes the replies appended within protocol 3
    /// (`FrozenSnapshot`); an older client is refused a freeze it could not read the answer to.
    knows_appended_replies: bool,
}

/// A connection that ends lets go of its read connections: a released desktop lock kept for
/// them may now be closable ([`crate::desktop_lock::close_unused_released`]).
impl Drop for Connection {
    fn drop(&mut self) {
        self.readers.clear();
        crate::desktop_lock::close_unused_released();
    }
}

/// A connection's read connection to one opening of a volume's desktop.
struct CachedReader {
    reader: VolumeReader,
    /// The writer's commit count when its snapshot began.
    commits: u64,
    /// [`VolumeHandle::opening`]: a volume reopened by a reload needs a new reader.
    opening: u64,
}

/// A read connection of either back end: SQLite's mapped reader, or a PostgreSQL connection
/// (whose every statement sees every commit made before it: no snapshot to renew), lent by its
/// volume's pool for a run of requests and given back when the connection goes idle.
enum VolumeReader {
    Sqlite(MappedReader),
    /// Boxed: a PostgreSQL connection with its statement cache is far larger than SQLite's
    /// reader, and most volumes are SQLite's.
    Pg(Box<crate::pg_volume::LentReader>),
}

/// A borrowed [`VolumeReader`], for [`with_reader!`].
#[derive(Clone, Copy)]
enum ReaderRef<'a> {
    Sqlite(&'a Reader),
    Pg(&'a deskd_pg::PgDesktop),
}

/// Run `$body` with `$db` bound to the reader, monomorphised for each back end (no `dyn` on
/// SQLite's read path).
macro_rules! with_reader {
    ($reader:expr, $db:ident => $body:expr) => {
        match $reader {
            ReaderRef::Sqlite($db) => $body,
            ReaderRef::Pg($db) => $body,
        }
    };
}

impl Connection {
    fn targets(&self, vol: Option<u32>) -> Result<Vec<Arc<VolumeHandle>>, ErrorReply> {
        match vol {
            Some(v) => Ok(vec![self.shared.volume(v)?]),
            None => Ok(self.shared.volumes()),
        }
    }

    /// The read connection for a volume, inside a snapshot that includes every write
    /// acknowledged so far (a new commit ends the old snapshot).
    fn reader(&mut self, handle: &VolumeHandle) -> Result<ReaderRef<'_>, ErrorReply> {
        use std::collections::hash_map::Entry;
        let commits = handle.commits.load(Ordering::SeqCst);
        let open = || -> Result<CachedReader, ErrorReply> {
            let reader = match &handle.pg {
                Some(pg) => VolumeReader::Pg(Box::new(pg.lend().map_err(db_error)?)),
                None => VolumeReader::Sqlite(handle.open_reader().map_err(db_error)?),
            };
            Ok(CachedReader {
                reader,
                commits,
                opening: handle.opening,
            })
        };
        let entry = match self.readers.entry(handle.index) {
            Entry::Occupied(e) if e.get().opening == handle.opening => e.into_mut(),
            Entry::Occupied(mut e) => {
                e.insert(open()?);
                e.into_mut()
            }
            Entry::Vacant(e) => e.insert(open()?),
        };
        let reader = match &mut entry.reader {
            VolumeReader::Pg(lent) => return Ok(ReaderRef::Pg(lent.db())),
            VolumeReader::Sqlite(reader) => reader,
        };
        let wrote = entry.commits != commits;
        if wrote {
            reader.end_snapshot().map_err(db_error)?;
            entry.commits = commits;
        }
        // Between snapshots: the mapping may grow (the desktop did, or the budget has room
        // again for a connection that got less).
        reader.refresh(wrote);
        reader.begin_snapshot().map_err(db_error)?;
        Ok(ReaderRef::Sqlite(reader))
    }

    /// After a read of a PostgreSQL volume failed for want of the database (`Busy`): drop its
    /// connection, which the database may have lost, so the next request connects again.
    fn forget_pg_reader(&mut self, handle: &VolumeHandle) {
        if let Some(pg) = &handle.pg {
            self.readers.remove(&handle.index);
            pg.clear_idle();
        }
    }

    /// End every read snapshot (when no request is waiting), so checkpoints can proceed, and
    /// give PostgreSQL read connections back to their volume's pool.
    fn end_snapshots(&mut self) {
        let mut lent = false;
        for cached in self.readers.values() {
            match &cached.reader {
                VolumeReader::Sqlite(reader) => {
                    let _ = reader.end_snapshot();
                }
                VolumeReader::Pg(_) => lent = true,
            }
        }
        if lent {
            self.give_back_pg_readers();
        }
    }

    /// Give the PostgreSQL read connections this connection holds back to their pools
    /// ([`crate::pg_volume::LentReader`] goes back when dropped).
    fn give_back_pg_readers(&mut self) {
        self.readers
            .retain(|_, cached| !matches!(cached.reader, VolumeReader::Pg(_)));
    }

    /// The PostgreSQL reader of `handle` made again (the one held failed for want of the
    /// database): only a PostgreSQL volume's, so SQLite's read path keeps one call site.
    /// A volume as a client is told it when it opens it: a volume in PostgreSQL whose
    /// database does not answer now is read-only, whether or not its writer has noticed yet,
    /// so that `dt` (which checks before it touches the disk) refuses a `mkdir` rather than
    /// make the folder and then be told nothing was recorded. One indexed read on this
    /// connection's reader (again on a new one when that fails, as the reads do).
    fn volume_info_now(&mut self, h: &VolumeHandle) -> VolumeInfo {
        let mut info = volume_info(h);
        if h.pg.is_none() || info.read_only {
            return info;
        }
        if h.state.lock().unwrap().unavailable.is_some() {
            info.read_only = true;
            return info;
        }
        let pg = h.pg.as_ref().expect("checked above");
        // The database answered the follower (or the writer) lately: no read of our own.
        let silent = pg.silent_for();
        if silent.is_some_and(|s| s < crate::pg_volume::ANSWERED_RECENTLY) {
            return info;
        }
        // Every read connection lent, none to this connection: an opening must not wait for
        // one (a busy or hostile load), so the follower's word decides: read-only when it
        // has not been answered for a while (a lost or hung database).
        if pg.all_lent() && !self.readers.contains_key(&h.index) {
            info.read_only = silent.is_none_or(|s| s >= crate::pg_volume::SILENT_LOST);
            return info;
        }
        let down = |e: &deskd_db::DbError| matches!(e, deskd_db::DbError::Unavailable(_));
        let probe = |db: &deskd_pg::PgDesktop| match Read::get(db, deskd_db::ROOT_ID) {
            Err(e) if down(&e) => Err(()),
            _ => Ok(()),
        };
        let answered = match self.reader(h) {
            Ok(ReaderRef::Pg(db)) => probe(db),
            _ => Err(()),
        };
        if answered.is_err() {
            info.read_only = match self.pg_reader_again(h) {
                Ok(db) => probe(db).is_err(),
                // All lent meanwhile: not a lost database.
                Err(_) if pg.all_lent() => false,
                Err(_) => true,
            };
        }
        info
    }

    fn pg_reader_again(
        &mut self,
        handle: &VolumeHandle,
    ) -> Result<&deskd_pg::PgDesktop, ErrorReply> {
        self.forget_pg_reader(handle);
        match self.reader(handle)? {
            ReaderRef::Pg(db) => Ok(db),
            ReaderRef::Sqlite(_) => unreachable!("called for a PostgreSQL volume"),
        }
    }

    /// After a reload closed a desktop: close the read connections to openings no longer
    /// served, so none keeps an old desktop file open.
    fn prune_readers(&mut self) {
        let closings = self.shared.closings();
        if closings != self.closings_seen {
            self.closings_seen = closings;
            let shared = &self.shared;
            let before = self.readers.len();
            self.readers
                .retain(|&vol, cached| shared.is_current(vol, cached.opening));
            if self.readers.len() != before {
                // A closed opening's desktop may now be open nowhere in this process: its
                // kept lock descriptor can go too.
                crate::desktop_lock::close_unused_released();
            }
        }
    }

    /// Whether this peer's ID hints are honoured (see [`crate::hints`]).
    fn hints_trusted(&self, handle: &VolumeHandle) -> bool {
        let tcp_admin = self.shared.tcp.as_ref().is_some_and(|t| t.admin());
        match self.peer {
            Peer::Unix { uid } => {
                crate::hints::hints_trusted(uid, false, handle.owner_uid(), false)
            }
            Peer::Tcp { .. } => {
                crate::hints::hints_trusted(None, true, handle.owner_uid(), tcp_admin)
            }
        }
    }

    /// Admin verbs need root or the owner of the volume root; over TCP, `tcp_admin`.
    fn require_admin(&self, handle: &VolumeHandle) -> Result<(), ErrorReply> {
        match self.peer {
            Peer::Unix { uid: Some(0) } => Ok(()),
            Peer::Unix { uid: Some(uid) } if uid == handle.owner_uid() => Ok(()),
            Peer::Tcp { .. } if self.shared.tcp.as_ref().is_some_and(|t| t.admin()) => Ok(()),
            Peer::Tcp { .. } => Err(ErrorReply::new(
                ErrorCode::PermissionDenied,
                format!(
                    "{}: flush, freeze, thaw and rebuild are not allowed over TCP \
                     (tcp_admin = true in [server] allows them)",
                    handle.volume.root().display()
                ),
            )),
            Peer::Unix { .. } => Err(ErrorReply::new(
                ErrorCode::PermissionDenied,
                format!(
                    "{}: flush, freeze, thaw and rebuild need root or the volume owner",
                    handle.volume.root().display()
                ),
            )),
        }
    }

    /// Changes that touch no file, only what the desktop says of one, are checked here, as
    /// the peer: Finder information and comments need write access to the object or to its
    /// folder, an APPL record write access to the application's folder (as AFP's FPSetFileParms
    /// and FPAddAPPL). A move or a removal by ID needs the object seen or its folder writable.
    /// The changes the client made on disk itself were made with its own rights, and the
    /// writer verifies them against the disk, walking every path as the peer. An object the
    /// peer may not see is refused as one that does not exist ([`sight::unseen`]).
    ///
    /// `Ok(true)`: allowed, but the peer does not see the object (a move or removal in a
    /// folder it may write but not list), so no error may name it.
    fn may_change(&mut self, handle: &VolumeHandle, request: &Request) -> Result<bool, ErrorReply> {
        if self.access.is_trusted() {
            return Ok(false);
        }
        let folder_rw = Some(access::WRITE | access::SEARCH);
        // A registration or a move answers with the object's ID and path: the peer must be
        // able to reach the folder the object is in now, as for `stat(2)`.
        if let Request::Add { parent, .. }
        | Request::Rename {
            new_parent: parent, ..
        } = request
        {
            // (Where it cannot search, the object would be one it may not see.)
            let look = self.look(handle, *parent, Some(access::SEARCH), None, false)?;
            if !(look.object && look.named) {
                return Err(sight::unseen());
            }
        }
        let (id, object_mode, what) = match request {
            Request::Rename { id, .. } | Request::Delete { id, .. } => {
                let look = self.look(handle, *id, None, folder_rw, false)?;
                return if look.seen {
                    Ok(false)
                } else if look.folder {
                    Ok(true)
                } else {
                    Err(sight::unseen())
                };
            }
            Request::SetInfo { id, .. }
            | Request::CommentSet { id, .. }
            | Request::CommentRemove { id, .. } => (
                *id,
                Some(access::WRITE),
                "write it or the folder holding it (in a sticky folder, owning it or the folder)",
            ),
            Request::ApplAdd { app_id, .. } | Request::ApplRemove { app_id, .. } => {
                (*app_id, None, "write the folder holding the application")
            }
            _ => return Ok(false),
        };
        // In a sticky folder, only the owner of the object or of the folder (review F8).
        let look = self.look(handle, id, object_mode, folder_rw, true)?;
        sight::refuse_unless(
            look.object || look.folder,
            &look,
            &self.access,
            || self.path_for_message(handle, id),
            what,
        )
        .map(|()| !look.seen)
    }

    /// How the peer stands to object `id` ([`sight::look`]). An object this connection cannot
    /// see yet (unknown, or registered by a request still waiting for its answer) is not waved
    /// through: the check would have nothing to check.
    fn look(
        &mut self,
        handle: &VolumeHandle,
        id: u32,
        object: Option<libc::c_int>,
        folder: Option<libc::c_int>,
        sticky: bool,
    ) -> Result<sight::Look, ErrorReply> {
        let access = self.access.clone();
        let ask = sight::Ask {
            object,
            folder,
            sticky,
        };
        let reader = self.reader(handle)?;
        with_reader!(reader, db => sight::look(db, &handle.volume, &access, id, ask))
    }

    /// [`crate::apply::add_known`] on this connection's reader of the volume (`None` also when
    /// the reader cannot be had: the write path then answers).
    fn known_add(&mut self, handle: &VolumeHandle, request: &Request) -> Option<Reply> {
        if !matches!(request, Request::Add { dev, .. } if *dev != 0) {
            return None;
        }
        let access = self.access.clone();
        let reader = self.reader(handle).ok()?;
        let answer = with_reader!(reader, db => crate::apply::add_known(db, &handle.volume, request, &access));
        if let (None, ReaderRef::Sqlite(reader)) = (&answer, reader) {
            // The write path decides: no snapshot may hold checkpoints (or a reload's close)
            // back while the write waits for the writer.
            let _ = reader.end_snapshot();
        }
        answer
    }

    /// The path of object `id`, for the message refusing a peer what it sees but may not do.
    fn path_for_message(&self, handle: &VolumeHandle, id: u32) -> std::path::PathBuf {
        let components = self
            .readers
            .get(&handle.index)
            .and_then(|r| match &r.reader {
                VolumeReader::Sqlite(reader) => reader.path_of(id).ok(),
                VolumeReader::Pg(lent) => lent.db().path_of(id).ok(),
            })
            .unwrap_or_default();
        handle.volume.path_of(&components)
    }

    /// Record that this connection uses volume `vol` (for `deskd status`). Only handles the
    /// server has given out count: a peer naming any number it likes must not grow the list.
    fn uses(&mut self, vol: u32) {
        if !self.volumes_used.contains(&vol) && self.shared.is_handle(vol) {
            self.volumes_used.push(vol);
            self.client.used(vol);
        }
    }

    /// The latency figure's key for `request`, timed from now (or from the answer to the
    /// request before it, when this one was already buffered then). A handle the server never
    /// gave out counts as no volume: a peer cannot grow the figures by naming numbers.
    fn timing(&mut self, request: &Request) -> Timing {
        let vol = request
            .volume()
            .filter(|v| self.volumes_used.contains(v) || self.shared.is_handle(*v))
            .unwrap_or(crate::figures::NO_VOLUME);
        Timing {
            began: self.answered_at.take().unwrap_or_else(Instant::now),
            vol,
            kind: crate::figures::kind_of(request),
        }
    }

    fn dispatch(&mut self, mut request: Request, mut sink: ReplySink, more_pending: bool) {
        self.prune_readers();
        // Asking for status is no use of a volume (a monitor is not an active user).
        if let Some(vol) = request
            .volume()
            .filter(|_| !matches!(request, Request::Status { .. }))
        {
            self.uses(vol);
        }
        if request.is_write() {
            // Replies to earlier pipelined reads must not wait behind this write's commit.
            sink.flush();
            // What one request may store is bounded, for every peer: the desktop is deskd's
            // file, which the peer's disk quota does not limit.
            if let Err(e) = request.check_sizes() {
                return sink.send(Err(e));
            }
            let handle = match self.shared.volume(request.volume().unwrap_or(u32::MAX)) {
                Ok(h) => h,
                Err(e) => return sink.send(Err(e)),
            };
            match self.may_change(&handle, &request) {
                Err(e) => return sink.send(Err(e)),
                Ok(unseen) => sink.unseen_errors = unseen,
            }
            // A registration of what is registered already changes nothing: answered here,
            // from this connection's snapshot, with the write path's checks (afpd's get_id()
            // sends one for every object it looks at). Not ahead of this connection's own
            // writes still waiting: their answer may be what this one must see.
            if self.writes_waiting.load(Ordering::SeqCst) == 0 {
                if let Some(result) = self.known_add(&handle, &request) {
                    return sink.send(result);
                }
            }
            if !self.hints_trusted(&handle) && crate::hints::drop_hint(&mut request) {
                debug!(
                    "dropped the ID hint of an unprivileged peer ({:?})",
                    self.peer
                );
            }
            hold_before_queueing();
            if self.shared.shutting_down.load(Ordering::SeqCst) {
                return sink.send(Err(ErrorReply::new(
                    ErrorCode::ShuttingDown,
                    "deskd is shutting down",
                )));
            }
            // This connection's writes commit in order: a write commits on this thread (the
            // writer idle) only when none of the connection's earlier writes still waits.
            let earlier_waiting = self.writes_waiting.fetch_add(1, Ordering::SeqCst) > 0;
            let reply: Replier = Box::new(WaitingWrite {
                sink,
                waiting: self.writes_waiting.clone(),
            });
            let (request, reply) = if earlier_waiting {
                (request, reply)
            } else {
                match handle.writer.commit_alone(request, reply, &handle.queue) {
                    Ok(()) => return,
                    Err(back) => back,
                }
            };
            if let Err(crossbeam_channel::SendError(Job::Write { reply, .. })) =
                handle.queue.send(Job::Write { request, reply })
            {
                reply.send(Err(ErrorReply::new(
                    ErrorCode::ShuttingDown,
                    "deskd is shutting down",
                )));
            }
            return;
        }
        // A read is answered here: one clock read ends its latency and, when the next
        // request is already buffered, begins that one's (one clock read per pipelined read,
        // not two: each is ~20 ns beside a resolve's ~5 µs; docs/PERFORMANCE.md).
        let timing = sink.timing.take();
        let result = self.answer(request);
        if let Some(t) = timing {
            let answered = Instant::now();
            let took = answered.saturating_duration_since(t.began);
            (self.client.requests).record(t.vol, t.kind, took, result.is_err());
            if more_pending {
                self.answered_at = Some(answered);
            }
        }
        if more_pending {
            sink.queue(result);
        } else {
            sink.send(result);
        }
    }

    fn answer(&mut self, request: Request) -> Reply {
        match request {
            Request::Volumes => {
                let volumes = self.shared.volumes();
                Ok(Response::Volumes(
                    volumes.iter().map(|h| self.volume_info_now(h)).collect(),
                ))
            }
            Request::OpenVolume { root } => {
                let path = Path::new(std::ffi::OsStr::from_bytes(&root));
                // As the peer: a path through a folder closed to it must not resolve (else
                // `hidden/name/..` would tell whether `name` exists). A server that cannot
                // take identities (not root) sees no more than its own user anyway.
                let canonical = match &*self.access {
                    Access::Unverifiable { .. } => path.canonicalize().ok(),
                    access => access.wear(|| path.canonicalize().ok()).flatten(),
                };
                let found = self
                    .shared
                    .volumes()
                    .into_iter()
                    .find(|h| canonical.as_deref() == Some(h.volume.root()));
                if let Some(h) = &found {
                    self.uses(h.index);
                }
                found
                    .map(|h| Response::Volume(self.volume_info_now(&h)))
                    .ok_or_else(|| {
                        // The path only to whom it cannot tell anything hidden.
                        let shown = if self.access.is_trusted() {
                            format!("{}: ", path.display())
                        } else {
                            String::new()
                        };
                        ErrorReply::new(
                            ErrorCode::NoSuchVolume,
                            format!("{shown}not a volume served by this deskd"),
                        )
                    })
            }
            Request::Status { vol } => {
                let mut out = Vec::new();
                for handle in self.targets(vol)? {
                    let admin = self.access.is_trusted() || self.require_admin(&handle).is_ok();
                    let rebuild = self
                        .shared
                        .rebuilds
                        .current(&handle)
                        .map(|job| job.state(u64::MAX));
                    let mut status = self.reader(&handle).and_then(
                        |reader| with_reader!(reader, db => handle.status(db, rebuild.clone())),
                    );
                    let lost = |e: &ErrorReply| handle.pg.is_some() && e.code == ErrorCode::Busy;
                    if status.as_ref().is_err_and(lost) {
                        // Once more on a new connection: the database may be back.
                        status = self
                            .pg_reader_again(&handle)
                            .and_then(|db| handle.status(db, rebuild.clone()));
                    }
                    let mut status = match status {
                        // A PostgreSQL volume whose database is lost still has a status.
                        Err(e) if lost(&e) => {
                            self.forget_pg_reader(&handle);
                            handle.status_unreachable(&e.message, rebuild)
                        }
                        other => other?,
                    };
                    if !admin {
                        redact_details(&mut status);
                        crate::withheld::status(&mut status);
                    }
                    let shown = self
                        .shared
                        .clients
                        .of_volume(handle.index, &self.client, admin);
                    status.clients = shown.clients;
                    status.hidden_clients = shown.hidden;
                    out.push(status);
                }
                Ok(Response::Status(out))
            }
            Request::Metrics => {
                let view = if self.access.is_trusted() {
                    crate::metrics::View::Full
                } else {
                    match self.peer {
                        Peer::Unix { uid } => crate::metrics::View::Peer { uid },
                        Peer::Tcp { .. } => crate::metrics::View::Full,
                    }
                };
                Ok(Response::Metrics(crate::metrics::render(
                    &self.shared,
                    view,
                )))
            }
            // Sizes and counts, no paths: open to every peer but the sizes that move with a
            // volume's changes.
            Request::Memory => {
                let volumes = self.shared.volumes();
                let mut figures = crate::memory::figures(&volumes);
                // A desktop's size, its mappings' and its name index's move with the volume's
                // changes: withheld from those who are not its volume's admin, as status's
                // counts are (a user could step them: crate::withheld).
                for shown in &mut figures.volumes {
                    let admin = self.access.is_trusted()
                        || volumes
                            .iter()
                            .find(|h| h.index == shown.vol)
                            .is_some_and(|h| self.require_admin(h).is_ok());
                    if !admin {
                        crate::withheld::volume_memory(shown);
                    }
                }
                // The process's resident and mapped totals move with every volume's (the
                // mapped desktops after a flush were the withheld desktop size to the byte:
                // newcomer review of stop 42): the server's admins' only (trusted: root,
                // deskd's own user, a TCP token holder).
                if !self.access.is_trusted() {
                    crate::withheld::server_memory(&mut figures);
                }
                Ok(Response::Memory(figures))
            }
            // The barrier first: every change the volume's watcher has queued is applied
            // before the flush (and the freeze, which flushes).
            Request::Flush { vol } => {
                let shared = self.shared.clone();
                self.control(
                    vol,
                    "flush",
                    |handle| barrier(&shared, handle),
                    |_, tx| Job::Flush(tx),
                )
            }
            Request::Freeze { vol, seconds } => {
                self.refuse_snapshot_to_an_older_client(vol)?;
                let verb = match seconds {
                    Some(s) => format!("freeze {s} s"),
                    None => "freeze (freeze_default)".to_owned(),
                };
                let shared = self.shared.clone();
                self.control(
                    vol,
                    &verb,
                    |handle| barrier(&shared, handle),
                    |_, tx| Job::Freeze(seconds, tx),
                )
            }
            Request::Watch { vol } => {
                let mut out = Vec::new();
                for handle in self.targets(vol)? {
                    let admin = self.access.is_trusted() || self.require_admin(&handle).is_ok();
                    let mut watch = self.shared.watchers.status(&handle);
                    if !admin {
                        // A failed rescan's reason may name objects the asker may not see.
                        if let Some(rescan) = watch.rescan.as_mut() {
                            rescan.error = rescan.error.as_ref().map(|_| {
                                "the rescan failed (root or the volume owner sees why)".to_owned()
                            });
                        }
                        crate::withheld::watch(&mut watch);
                    }
                    out.push(watch);
                }
                Ok(Response::Watch(out))
            }
            Request::NotServed => {
                let list = self.shared.not_served.lock().unwrap().clone();
                let out = list
                    .into_iter()
                    .map(|n| {
                        // Why (a database's name, a path below the root) only to who may
                        // administer the volume: root, a trusted peer, the root's owner
                        // when it was refused.
                        let owner = n.owner;
                        let admin = self.access.is_trusted()
                            || match self.peer {
                                Peer::Unix { uid: Some(0) } => true,
                                Peer::Unix { uid: Some(uid) } => owner == Some(uid),
                                Peer::Tcp { .. } => {
                                    self.shared.tcp.as_ref().is_some_and(|t| t.admin())
                                }
                                Peer::Unix { uid: None } => false,
                            };
                        deskd_proto::VolumeNotServed {
                            root: n.root.as_os_str().as_bytes().to_vec(),
                            why: if admin {
                                n.why
                            } else {
                                deskd_proto::NOT_SERVED_REDACTED.to_owned()
                            },
                            since: n.since,
                        }
                    })
                    .collect();
                Ok(Response::NotServed(out))
            }
            Request::Thaw { vol } => self.control(vol, "thaw", |_| Ok(()), |_, tx| Job::Thaw(tx)),
            Request::RebuildStart {
                vol,
                mode,
                threads,
                force,
                timeout_secs,
            } => {
                let handle = self.shared.volume(vol)?;
                self.require_admin(&handle)?;
                // The server's own rescan of a watched volume (at its start) is short and
                // does what a repair does: the asker's job runs after it, not refused. And
                // the watcher's work first, so that the job compares against every change
                // made before it was asked: in the desktop here, on disk (the stamps a burst
                // left owed, which may take longer than a request may) as the job's first
                // work.
                let owed =
                    crate::watch::barrier(&self.shared.watchers, &self.shared.rebuilds, &handle);
                crate::watch::wait_for_rescan(&self.shared.watchers, &handle, RESCAN_WAIT);
                let before: Option<crate::rebuild::Before> = (owed > 0).then(|| {
                    let (watchers, handle) = (self.shared.watchers.clone(), handle.clone());
                    Box::new(move || crate::watch::pay_all_owed(&watchers, &handle))
                        as crate::rebuild::Before
                });
                let job = crate::rebuild::start_after(
                    &self.shared.rebuilds,
                    &handle,
                    mode,
                    threads,
                    force,
                    Some(timeout_secs),
                    &self.client.who,
                    before,
                )?;
                let mode = format!("{mode:?}").to_lowercase();
                audit::log(
                    &self.client.who,
                    handle.volume.root(),
                    &format!("rebuild start job {job} ({mode})"),
                );
                Ok(Response::RebuildStarted { job })
            }
            Request::RebuildPoll { vol, job, from } => {
                let handle = self.shared.volume(vol)?;
                self.require_admin(&handle)?;
                let current = self.rebuild_job(&handle, job)?;
                current.heard();
                Ok(Response::Rebuild(current.state(from)))
            }
            Request::RebuildCancel { vol, job } => {
                let handle = self.shared.volume(vol)?;
                self.require_admin(&handle)?;
                self.rebuild_job(&handle, job)?.cancel();
                audit::log(
                    &self.client.who,
                    handle.volume.root(),
                    &format!("rebuild cancel job {job}"),
                );
                Ok(Response::Done)
            }
            other => {
                let handle = self.shared.volume(other.volume().unwrap_or(u32::MAX))?;
                let access = self.access.clone();
                let read_cache = handle.pg.as_ref().map(|pg| pg.read_cache());
                let reply = self.reader(&handle).and_then(|reader| {
                    with_reader!(reader, db =>
                        apply_read_cached(db, &handle.volume, &handle.names, read_cache, &other, &access))
                });
                match reply {
                    // A PostgreSQL read that failed for want of the database: once more on a
                    // new connection (the database may be back, only this one gone).
                    Err(e) if handle.pg.is_some() && e.code == ErrorCode::Busy => {
                        let again = self.pg_reader_again(&handle).and_then(|db| {
                            apply_read_cached(
                                db,
                                &handle.volume,
                                &handle.names,
                                read_cache,
                                &other,
                                &access,
                            )
                        });
                        if again.as_ref().is_err_and(|e| e.code == ErrorCode::Busy) {
                            self.forget_pg_reader(&handle);
                        }
                        again
                    }
                    reply => reply,
                }
            }
        }
    }

    fn rebuild_job(
        &self,
        handle: &VolumeHandle,
        job: u64,
    ) -> Result<Arc<crate::rebuild::RebuildJob>, ErrorReply> {
        self.shared
            .rebuilds
            .current(handle)
            .filter(|j| j.id == job)
            .ok_or_else(|| {
                ErrorReply::new(
                    ErrorCode::NotFound,
                    format!("{}: no rebuild job {job}", handle.volume.root().display()),
                )
            })
    }

    /// A volume whose desktop is in PostgreSQL answers a freeze with `FrozenSnapshot`, a reply
    /// a client from before it fails to decode (and the volume would stay frozen with nobody
    /// knowing the snapshot): such a client is refused before anything is frozen.
    fn refuse_snapshot_to_an_older_client(&self, vol: Option<u32>) -> Result<(), ErrorReply> {
        if self.knows_appended_replies {
            return Ok(());
        }
        let targets = self.targets(vol)?;
        // Only an admin learns which volume it was (the freeze asks the same of everyone).
        for handle in &targets {
            self.require_admin(handle)?;
        }
        match targets.iter().find(|h| h.pg.is_some()) {
            None => Ok(()),
            Some(h) => Err(ErrorReply::new(
                ErrorCode::BadRequest,
                format!(
                    "{}: the desktop is in PostgreSQL, whose freeze answers with a snapshot this \
                     client is too old to read; freeze it with this server's deskd",
                    h.volume.root().display()
                ),
            )),
        }
    }

    /// Run the admin verb `verb` (flush, freeze, thaw) on `vol` (None: every volume), saying
    /// in the audit log who asked, for each volume where it was done.
    fn control(
        &mut self,
        vol: Option<u32>,
        verb: &str,
        prepare: impl Fn(&Arc<VolumeHandle>) -> Result<(), ErrorReply>,
        make: impl Fn(&Arc<VolumeHandle>, crossbeam_channel::Sender<Reply>) -> Job,
    ) -> Reply {
        let targets = self.targets(vol)?;
        // Every volume is tried, whatever another refused (a frozen one, one the asker does
        // not own): a flush must not leave the volumes after a frozen one unflushed, nor a
        // thaw the owner's own volume frozen. The refusals are all said, each led by its root.
        let mut last = Ok(Response::Done);
        let mut refused: Vec<ErrorReply> = Vec::new();
        for handle in &targets {
            if let Err(e) = self.require_admin(handle).and_then(|()| prepare(handle)) {
                refused.push(e);
                continue;
            }
            let reply = handle.ask(|tx| make(handle, tx)).ok_or_else(|| {
                ErrorReply::new(ErrorCode::ShuttingDown, "deskd is shutting down")
            })?;
            match reply {
                Ok(r) => {
                    let outcome = match &r {
                        Response::Frozen { until, .. } => format!(" (frozen until {until})"),
                        Response::FrozenSnapshot {
                            until, snapshot, ..
                        } => format!(" (frozen until {until}, snapshot {snapshot})"),
                        _ => String::new(),
                    };
                    audit::log(
                        &self.client.who,
                        handle.volume.root(),
                        &format!("{verb}{outcome}"),
                    );
                    last = Ok(r)
                }
                Err(e) => {
                    // Name the volume once: some messages begin with it already.
                    let root = format!("{}: ", handle.volume.root().display());
                    let message = if e.message.starts_with(&root) {
                        e.message
                    } else {
                        format!("{root}{}", e.message)
                    };
                    refused.push(ErrorReply::new(e.code, message));
                }
            }
        }
        match refused.len() {
            0 => last,
            1 => Err(refused.remove(0)),
            // The first refusal's code; every volume's message, one a line.
            _ => Err(ErrorReply::new(
                refused[0].code,
                refused
                    .iter()
                    .map(|e| e.message.as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
            )),
        }
    }
}

/// Before a flush or a freeze of `handle`: the watcher's changes applied (its barrier), and
/// no rescan still owed that changes made before it may be waiting for.
fn barrier(shared: &Shared, handle: &Arc<VolumeHandle>) -> Result<(), ErrorReply> {
    crate::watch::barrier(&shared.watchers, &shared.rebuilds, handle);
    crate::watch::rescan_outstanding(
        &shared.watchers,
        handle,
        crate::watch::barrier_waits_for_rescan(),
    )
}

fn volume_info(h: &VolumeHandle) -> VolumeInfo {
    VolumeInfo {
        vol: h.index,
        root: h.volume.root().as_os_str().as_bytes().to_vec(),
        read_only: h.read_only(),
    }
}

/// What `Status` tells a peer that is neither trusted nor the volume's admin: a failed
/// rebuild's reason can name objects in folders it may not list, so it learns only that the
/// rebuild ended early. (The start-up check's findings name no object.)
fn redact_details(status: &mut deskd_proto::VolumeStatus) {
    if let Some(Some(Err(why))) = status.rebuild.as_mut().map(|r| r.finished.as_mut()) {
        *why = "the rebuild ended early (root or the volume owner sees why)".to_owned();
    }
}
