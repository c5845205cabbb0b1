//! Synchronous client for the deskd desktop server, used by `dt`, `deskd` and file servers.
//!
//! [`Client::connect`] opens the Unix socket (see [`deskd_proto::socket_path`] for the rule every
//! program uses) and does the version handshake; [`Client::connect_to`] also reaches a server
//! over TCP, proving it holds the server's token ([`deskd_proto::transport`]). [`Client::call`]
//! sends one request and waits; [`Client::send`] / [`Client::recv`] pipeline many. Every wait is
//! bounded by the client timeout (default 60 s, `$DESKD_CLIENT_TIMEOUT`): past it the call fails
//! with [`ClientError::Timeout`], and callers treat the volume as read-only.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::net::TcpStream;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use deskd_proto::spin::{Settings as SpinSettings, SpinRead};
use deskd_proto::{Endpoint, ProtoError, ReplyFrame, RequestFrame, Stream};
pub use deskd_proto::{
    ErrorCode, ErrorReply, FindMode, Kind, ObjectInfo, Request, Response, ServerMemory, VolumeInfo,
    VolumeStatus,
};

/// The socket a deskd run as root listens on by default.
const SYSTEM_SOCKET: &str = "/run/deskd/deskd.sock";

/// When a user's own default socket (`$XDG_RUNTIME_DIR/deskd.sock`, `/tmp/deskd-<uid>/…`) has
/// no server but the system deskd's socket exists, say how to reach that one: a user who is not
/// root does not look there by itself.
fn system_socket_hint(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Unix(path)
            if path.as_path() != std::path::Path::new(SYSTEM_SOCKET)
                && std::fs::symlink_metadata(SYSTEM_SOCKET).is_ok() =>
        {
            format!(
                "; a deskd run as root listens on {SYSTEM_SOCKET}: give --socket \
                 {SYSTEM_SOCKET} or set DESKD_SOCKET={SYSTEM_SOCKET}"
            )
        }
        _ => String::new(),
    }
}

/// The client timeout when none is configured (HELIOS: 60 s).
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;

/// Errors of a client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the endpoint (no server, wrong socket, refused TCP connection).
    #[error(
        "cannot connect to deskd at {endpoint}{chosen_by}: {source} (is `deskd serve` \
         running?){hint}"
    )]
    Connect {
        /// The endpoint as the user would write it (`tcp://…` or a socket path).
        endpoint: String,
        /// How the endpoint was chosen, for a user who did not choose it (` (from
        /// $DESKD_SOCKET; …)`), or empty.
        chosen_by: String,
        /// What connect(2) said.
        #[source]
        source: std::io::Error,
        /// Where else a deskd listens, when one does: empty, or `; …`.
        hint: String,
    },
    /// No reply within the client timeout: callers then treat the volume as read-only, as
    /// HELIOS clients do, rather than hang a file server. The words carry no "deskd:" prefix
    /// and no consequence: a tool adds its own prefix, and says what the timeout means for
    /// what it was doing (dt's write verbs: "only read-only access possible").
    #[error("timed out waiting for deskd's answer")]
    Timeout,
    /// The server closed the connection (it stopped, or dropped a misbehaving client).
    #[error("deskd closed the connection")]
    Closed,
    /// The token file a TCP endpoint needs is missing, unreadable, readable by others or too
    /// short; its message names the file.
    #[error("{0}")]
    Token(deskd_proto::transport::TokenFileError),
    /// The server answered the connection but the handshake failed (version, token,
    /// connection limit).
    #[error("{endpoint}: {source}")]
    Handshake {
        /// The endpoint as the user would write it.
        endpoint: String,
        /// What went wrong, as the protocol layer saw it.
        #[source]
        source: ProtoError,
    },
    /// A framing or encoding error on an established connection.
    #[error("protocol: {0}")]
    Proto(#[from] ProtoError),
    /// The server carried out the request and refused it; [`ClientError::code`] says why.
    #[error("{0}")]
    Server(ErrorReply),
    /// The server answered with a response of another kind than the request asks for (a
    /// server of another version, or a bug); shown with `{:?}` since it is for a developer.
    #[error("unexpected reply from deskd: {0:?}")]
    Unexpected(Box<Response>),
}

impl ClientError {
    /// The server's error code, when the server answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(e) => Some(e.code),
            _ => None,
        }
    }
}

/// A client call's result.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

fn io_error(e: std::io::Error) -> ClientError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::Timeout,
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::ConnectionReset => ClientError::Closed,
        _ => ClientError::Proto(ProtoError::Io(e)),
    }
}

fn proto_error(e: ProtoError) -> ClientError {
    match e {
        ProtoError::Io(io) => io_error(io),
        other => ClientError::Proto(other),
    }
}

/// The timeout from `$DESKD_CLIENT_TIMEOUT` (seconds), else 60 s.
pub fn default_timeout() -> Duration {
    timeout_from(std::env::var("DESKD_CLIENT_TIMEOUT").ok().as_deref())
}

/// The timeout a `$DESKD_CLIENT_TIMEOUT` value says: positive seconds (fractions allowed),
/// else (unset, unreadable, zero, negative, infinite or past what a `Duration` holds) the
/// default.
fn timeout_from(value: Option<&str>) -> Duration {
    value
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .and_then(timeout_secs)
        .unwrap_or(Duration::from_secs(DEFAULT_TIMEOUT_SECS))
}

/// `secs` seconds as a timeout, or `None` when no `Duration` holds it (NaN, infinite,
/// negative or too large): `Duration::from_secs_f64` would panic on those, and a user may
/// type `inf` or `1e30` for "wait forever".
pub fn timeout_secs(secs: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(secs).ok()
}

/// A connection to deskd.
pub struct Client {
    input: BufReader<SpinRead>,
    output: BufWriter<Stream>,
    next_id: u64,
    /// Replies that arrived while waiting for another id.
    early: HashMap<u64, std::result::Result<Response, ErrorReply>>,
    body: Vec<u8>,
}

impl Client {
    /// Connect to the Unix socket at `path` and handshake, with `timeout` bounding every later
    /// wait.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client> {
        Client::connect_to(&Endpoint::Unix(path.to_path_buf()), None, timeout)
    }

    /// Connect to `endpoint` and handshake; a TCP server's challenge is answered with `token`.
    pub fn connect_to(
        endpoint: &Endpoint,
        token: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Client> {
        let connect_error = |source| ClientError::Connect {
            endpoint: endpoint.to_string(),
            chosen_by: String::new(),
            source,
            hint: system_socket_hint(endpoint),
        };
        let stream = match endpoint {
            Endpoint::Unix(path) => Stream::Unix(UnixStream::connect(path).map_err(connect_error)?),
            Endpoint::Tcp(addr) => {
                let stream = connect_tcp(addr, timeout).map_err(connect_error)?;
                deskd_proto::transport::tune_tcp(&stream).map_err(io_error)?;
                Stream::Tcp(stream)
            }
        };
        Client::over(stream, endpoint, token, timeout)
    }

    /// Handshake over `stream`, just connected to `endpoint` (named in errors), with `timeout`
    /// bounding this and every later wait.
    fn over(
        stream: Stream,
        endpoint: &Endpoint,
        token: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Client> {
        stream.set_read_timeout(Some(timeout)).map_err(io_error)?;
        stream.set_write_timeout(Some(timeout)).map_err(io_error)?;
        deskd_proto::transport::client_handshake(&stream, token).map_err(|e| match e {
            ProtoError::Io(io) => io_error(io),
            source => ClientError::Handshake {
                endpoint: endpoint.to_string(),
                source,
            },
        })?;
        let output = BufWriter::new(stream.try_clone().map_err(io_error)?);
        Ok(Client {
            input: BufReader::with_capacity(
                64 * 1024,
                SpinRead::new(stream, SpinSettings::configured()),
            ),
            output,
            next_id: 1,
            early: HashMap::new(),
            body: Vec::new(),
        })
    }

    /// Queue a request without waiting (pipelining); returns its id. Call [`Client::flush`]
    /// before waiting for replies.
    pub fn send(&mut self, request: Request) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        deskd_proto::write_frame(&mut self.output, &RequestFrame { id, request })
            .map_err(proto_error)?;
        Ok(id)
    }

    /// Push queued requests to the server.
    pub fn flush(&mut self) -> Result<()> {
        self.output.flush().map_err(io_error)
    }

    /// The next reply in arrival order: (request id, result).
    pub fn recv(&mut self) -> Result<(u64, std::result::Result<Response, ErrorReply>)> {
        if let Some(&id) = self.early.keys().next() {
            let r = self.early.remove(&id).expect("key present");
            return Ok((id, r));
        }
        self.read_reply()
    }

    fn read_reply(&mut self) -> Result<(u64, std::result::Result<Response, ErrorReply>)> {
        if !deskd_proto::read_frame_body_within(
            &mut self.input,
            &mut self.body,
            deskd_proto::MAX_REPLY_FRAME,
        )
        .map_err(proto_error)?
        {
            return Err(ClientError::Closed);
        }
        let frame: ReplyFrame = deskd_proto::decode(&self.body)?;
        if frame.id == 0 {
            // A connection-level error (malformed or oversized frame).
            if let Err(e) = frame.result {
                return Err(ClientError::Server(e));
            }
        }
        Ok((frame.id, frame.result))
    }

    /// Wait for the reply to request `id`.
    pub fn wait(&mut self, id: u64) -> Result<Response> {
        if let Some(r) = self.early.remove(&id) {
            return r.map_err(ClientError::Server);
        }
        loop {
            let (got, result) = self.read_reply()?;
            if got == id {
                return result.map_err(ClientError::Server);
            }
            self.early.insert(got, result);
        }
    }

    /// Bound every later wait for a reply by `timeout` (None: wait as long as the answer
    /// takes, as `deskd flush` does unless told a timeout).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        // The writer's stream is a clone of the reader's: one socket, one receive timeout.
        self.output
            .get_ref()
            .set_read_timeout(timeout)
            .map_err(io_error)
    }

    /// Send one request and wait for its reply.
    pub fn call(&mut self, request: Request) -> Result<Response> {
        let id = self.send(request)?;
        self.flush()?;
        self.wait(id)
    }

    /// The served volumes.
    pub fn volumes(&mut self) -> Result<Vec<VolumeInfo>> {
        match self.call(Request::Volumes)? {
            Response::Volumes(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// The handle of the volume rooted at `root`.
    pub fn open_volume(&mut self, root: &Path) -> Result<VolumeInfo> {
        match self.call(Request::OpenVolume {
            root: root.as_os_str().as_bytes().to_vec(),
        })? {
            Response::Volume(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Call a request that answers with one object.
    pub fn object(&mut self, request: Request) -> Result<ObjectInfo> {
        match self.call(request)? {
            Response::Object(o) => Ok(o),
            other => Err(unexpected(other)),
        }
    }

    /// Call a request that answers with an optional object.
    pub fn maybe_object(&mut self, request: Request) -> Result<Option<ObjectInfo>> {
        match self.call(request)? {
            Response::MaybeObject(o) => Ok(o),
            other => Err(unexpected(other)),
        }
    }

    /// Call a request that answers with a list of objects.
    pub fn objects(&mut self, request: Request) -> Result<Vec<ObjectInfo>> {
        match self.call(request)? {
            Response::Objects(o) => Ok(o),
            other => Err(unexpected(other)),
        }
    }

    /// Call a request that answers with removed IDs.
    pub fn removed(&mut self, request: Request) -> Result<Vec<u32>> {
        match self.call(request)? {
            Response::Removed(ids) => Ok(ids),
            other => Err(unexpected(other)),
        }
    }

    /// Status of one or all volumes.
    pub fn status(&mut self, vol: Option<u32>) -> Result<Vec<VolumeStatus>> {
        match self.call(Request::Status { vol })? {
            Response::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// The server's figures in the Prometheus text format, as much as this peer may see.
    pub fn metrics(&mut self) -> Result<String> {
        match self.call(Request::Metrics)? {
            Response::Metrics(text) => Ok(text),
            other => Err(unexpected(other)),
        }
    }

    /// The server's memory figures (a server older than this request answers `BadRequest`).
    pub fn memory(&mut self) -> Result<ServerMemory> {
        match self.call(Request::Memory)? {
            Response::Memory(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    /// Each volume's live tracking (`vol`: None for every volume). A server that predates
    /// it answers `BadRequest`.
    pub fn watch(&mut self, vol: Option<u32>) -> Result<Vec<deskd_proto::VolumeWatch>> {
        match self.call(Request::Watch { vol })? {
            Response::Watch(w) => Ok(w),
            other => Err(unexpected(other)),
        }
    }

    /// The configured volumes the server does not serve, and why. A server that predates
    /// it answers `BadRequest`.
    pub fn not_served(&mut self) -> Result<Vec<deskd_proto::VolumeNotServed>> {
        match self.call(Request::NotServed)? {
            Response::NotServed(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// The server's note of `root` when it is a configured volume it refused (after an
    /// `OpenVolume` answered `NoSuchVolume`): the root compared as given and resolved, on both
    /// sides. None when it is not configured, or the server predates the request.
    pub fn refused_volume(&mut self, root: &Path) -> Option<deskd_proto::VolumeNotServed> {
        let resolved = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let wanted = resolved(root);
        self.not_served().ok()?.into_iter().find(|n| {
            let theirs = Path::new(std::ffi::OsStr::from_bytes(&n.root));
            theirs == root || resolved(theirs) == wanted
        })
    }
}

/// Connect to the first address of `addr` that answers, each try bounded by `timeout`.
fn connect_tcp(addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let mut last = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "the name resolves to no address",
    );
    for candidate in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&candidate, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn unexpected(r: Response) -> ClientError {
    ClientError::Unexpected(Box::new(r))
}

#[cfg(test)]
mod tests {
    //! The client against a scripted server on the other end of a socket pair: the real
    //! handshake and frames, no daemon.

    use super::*;
    use deskd_proto::transport::{server_handshake, server_hello};
    use std::io::Read;
    use std::thread::JoinHandle;

    /// The time-out of the one test that waits for it to pass.
    const SHORT: Duration = Duration::from_millis(200);
    /// The time-out of every test that expects an answer: a server thread a loaded machine
    /// starts late must not turn into a time-out.
    const PATIENT: Duration = Duration::from_secs(30);

    /// A client connected to a server thread that handshakes, then runs `script` on its end.
    fn pair<F>(timeout: Duration, script: F) -> (Result<Client>, JoinHandle<()>)
    where
        F: FnOnce(&mut UnixStream) + Send + 'static,
    {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            server_handshake(&theirs, None, Duration::ZERO).unwrap();
            script(&mut theirs);
        });
        let endpoint = Endpoint::Unix("/test.sock".into());
        (
            Client::over(Stream::Unix(ours), &endpoint, None, timeout),
            server,
        )
    }

    /// Read one request frame.
    fn request(stream: &mut UnixStream) -> RequestFrame {
        let mut body = Vec::new();
        assert!(deskd_proto::read_frame_body(stream, &mut body).unwrap());
        deskd_proto::decode(&body).unwrap()
    }

    fn reply(stream: &mut UnixStream, id: u64, result: std::result::Result<Response, ErrorReply>) {
        let bytes = deskd_proto::encode_frame_within(
            &ReplyFrame { id, result },
            deskd_proto::MAX_REPLY_FRAME,
        )
        .unwrap();
        stream.write_all(&bytes).unwrap();
    }

    #[test]
    fn a_call_sends_one_frame_and_returns_its_reply() {
        let (client, server) = pair(PATIENT, |s| {
            let frame = request(s);
            assert_eq!(frame.request, Request::Status { vol: Some(3) });
            reply(s, frame.id, Ok(Response::Removed(vec![frame.id as u32])));
        });
        let got = client
            .unwrap()
            .call(Request::Status { vol: Some(3) })
            .unwrap();
        assert_eq!(
            got,
            Response::Removed(vec![1]),
            "the first request has id 1"
        );
        server.join().unwrap();
    }

    #[test]
    fn pipelined_replies_out_of_order_reach_their_request() {
        let (client, server) = pair(PATIENT, |s| {
            let first = request(s);
            let second = request(s);
            // The second is answered first.
            reply(s, second.id, Ok(Response::Removed(vec![2])));
            reply(s, first.id, Ok(Response::Removed(vec![1])));
        });
        let mut client = client.unwrap();
        let first = client.send(Request::Volumes).unwrap();
        let second = client.send(Request::Volumes).unwrap();
        client.flush().unwrap();
        assert_eq!(client.wait(first).unwrap(), Response::Removed(vec![1]));
        // Read while waiting for the first, kept for its own wait.
        assert_eq!(client.wait(second).unwrap(), Response::Removed(vec![2]));
        server.join().unwrap();
    }

    #[test]
    fn recv_hands_out_a_reply_kept_early_before_reading() {
        let (client, server) = pair(PATIENT, |s| {
            let first = request(s);
            let second = request(s);
            reply(s, second.id, Ok(Response::Removed(vec![2])));
            reply(s, first.id, Ok(Response::Removed(vec![1])));
        });
        let mut client = client.unwrap();
        let first = client.send(Request::Volumes).unwrap();
        let second = client.send(Request::Volumes).unwrap();
        client.flush().unwrap();
        client.wait(first).unwrap();
        let (id, result) = client.recv().unwrap();
        assert_eq!((id, result), (second, Ok(Response::Removed(vec![2]))));
        server.join().unwrap();
    }

    #[test]
    fn a_server_error_keeps_its_code() {
        let (client, server) = pair(PATIENT, |s| {
            let frame = request(s);
            reply(
                s,
                frame.id,
                Err(ErrorReply::new(ErrorCode::NotFound, "no such object")),
            );
        });
        let err = client.unwrap().call(Request::Volumes).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::NotFound));
        assert!(matches!(&err, ClientError::Server(e) if e.message == "no such object"));
        server.join().unwrap();
    }

    #[test]
    fn a_connection_level_error_fails_the_waiting_call() {
        let (client, server) = pair(PATIENT, |s| {
            request(s);
            reply(
                s,
                0,
                Err(ErrorReply::new(ErrorCode::BadRequest, "malformed frame")),
            );
        });
        let err = client.unwrap().call(Request::Volumes).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest));
        server.join().unwrap();
    }

    #[test]
    fn a_server_that_hangs_up_is_closed() {
        let (client, server) = pair(PATIENT, |s| {
            request(s);
        });
        let mut client = client.unwrap();
        let id = client.send(Request::Volumes).unwrap();
        client.flush().unwrap();
        server.join().unwrap(); // its end is dropped: the connection is closed
        assert!(matches!(client.wait(id), Err(ClientError::Closed)));
    }

    #[test]
    fn a_server_that_does_not_answer_times_out() {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let (client, server) = pair(SHORT, move |s| {
            request(s);
            // Hold the connection open, silent, until the client has given up.
            done_rx.recv().unwrap();
        });
        let err = client.unwrap().call(Request::Volumes).unwrap_err();
        assert!(matches!(err, ClientError::Timeout), "{err:?}");
        done_tx.send(()).unwrap();
        server.join().unwrap();
    }

    #[test]
    fn a_reply_of_the_wrong_shape_is_unexpected() {
        let (client, server) = pair(PATIENT, |s| {
            let frame = request(s);
            reply(s, frame.id, Ok(Response::Removed(vec![])));
        });
        let err = client.unwrap().volumes().unwrap_err();
        assert!(matches!(err, ClientError::Unexpected(_)), "{err:?}");
        server.join().unwrap();
    }

    #[test]
    fn a_refused_version_is_a_handshake_error_naming_the_endpoint() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut hello = [0u8; 8];
            theirs.read_exact(&mut hello).unwrap();
            theirs
                .write_all(&server_hello(deskd_proto::transport::STATUS_BAD_VERSION))
                .unwrap();
        });
        let endpoint = Endpoint::Unix("/test.sock".into());
        let err = Client::over(Stream::Unix(ours), &endpoint, None, PATIENT)
            .err()
            .expect("refused");
        assert!(
            matches!(&err, ClientError::Handshake { endpoint, .. } if endpoint.contains("/test.sock")),
            "{err:?}"
        );
        server.join().unwrap();
    }

    #[test]
    fn io_errors_become_timeout_closed_or_protocol() {
        use std::io::{Error, ErrorKind};
        for kind in [ErrorKind::WouldBlock, ErrorKind::TimedOut] {
            assert!(matches!(io_error(Error::from(kind)), ClientError::Timeout));
        }
        for kind in [
            ErrorKind::UnexpectedEof,
            ErrorKind::BrokenPipe,
            ErrorKind::ConnectionReset,
        ] {
            assert!(matches!(io_error(Error::from(kind)), ClientError::Closed));
        }
        assert!(matches!(
            io_error(Error::from(ErrorKind::PermissionDenied)),
            ClientError::Proto(ProtoError::Io(_))
        ));
        assert!(matches!(
            proto_error(ProtoError::Io(Error::from(ErrorKind::BrokenPipe))),
            ClientError::Closed
        ));
    }

    #[test]
    fn the_timeout_setting_takes_positive_seconds_only() {
        assert_eq!(
            timeout_from(None),
            Duration::from_secs(DEFAULT_TIMEOUT_SECS)
        );
        assert_eq!(timeout_from(Some(" 2.5 ")), Duration::from_millis(2500));
        for bad in ["0", "-1", "soon", "", "inf", "-inf", "NaN", "1e30"] {
            assert_eq!(
                timeout_from(Some(bad)),
                Duration::from_secs(DEFAULT_TIMEOUT_SECS),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn request_ids_count_up_from_one() {
        let (client, server) = pair(PATIENT, |s| {
            request(s);
            request(s);
        });
        let mut client = client.unwrap();
        assert_eq!(client.send(Request::Volumes).unwrap(), 1);
        assert_eq!(client.send(Request::Volumes).unwrap(), 2);
        client.flush().unwrap();
        server.join().unwrap();
    }
}
