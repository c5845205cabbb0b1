//! Transports and the handshake: a Unix socket (the default) or TCP guarded by a shared token.
//!
//! [`Endpoint`] names where a server is (`tcp://HOST:PORT`, else a socket path); [`Stream`] is
//! either kind of connection with one interface. [`client_handshake`] and [`server_handshake`]
//! are the two halves of the handshake in `docs/protocol.md`. Over TCP the server sends a random
//! 32-byte challenge after accepting the version and the client answers
//! HMAC-SHA256(token, `"deskd-tcp-auth"` ++ challenge): the token itself never crosses the
//! network, and an answer seen once is useless for the next connection.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{ProtoError, MAGIC, PROTOCOL_VERSION};

/// Handshake status: accepted.
pub const STATUS_ACCEPTED: u16 = 0;
/// Handshake status: the server does not speak the client's version (it closes).
pub const STATUS_BAD_VERSION: u16 = 1;
/// Handshake status: a [`CHALLENGE_LEN`]-byte challenge follows; answer it with the token.
pub const STATUS_CHALLENGE: u16 = 2;
/// Handshake status: the answer to the challenge was wrong (the server closes).
pub const STATUS_AUTH_FAILED: u16 = 3;
/// Handshake status: the peer's uid has `max_connections_per_uid` connections open already
/// (the server closes). A server may send it before it reads the client's hello.
pub const STATUS_TOO_MANY_OF_USER: u16 = 4;
/// Handshake status: `max_connections` connections are open already (the server closes).
pub const STATUS_TOO_MANY: u16 = 5;
/// Length of the server's challenge and of the client's answer.
pub const CHALLENGE_LEN: usize = 32;
/// Shortest token a server or client accepts, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;
/// The URL scheme that makes an endpoint TCP.
pub const TCP_SCHEME: &str = "tcp://";

/// Where a deskd server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP address, `HOST:PORT` (`[v6]:PORT` for IPv6).
    Tcp(String),
}

impl Endpoint {
    /// `tcp://HOST:PORT` is TCP; anything else is a socket path.
    pub fn parse(text: &OsStr) -> Endpoint {
        match text.as_bytes().strip_prefix(TCP_SCHEME.as_bytes()) {
            Some(addr) => Endpoint::Tcp(String::from_utf8_lossy(addr).into_owned()),
            None => Endpoint::Unix(PathBuf::from(text)),
        }
    }

    /// The endpoint every deskd client uses: `explicit`, else `$DESKD_SOCKET`, else the socket
    /// path rule of [`crate::socket_path`].
    pub fn resolve(explicit: Option<&OsStr>) -> Endpoint {
        if let Some(text) = explicit {
            return Endpoint::parse(text);
        }
        match std::env::var_os("DESKD_SOCKET").filter(|v| !v.is_empty()) {
            Some(text) => Endpoint::parse(&text),
            None => Endpoint::Unix(crate::socket_path(None)),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "{TCP_SCHEME}{addr}"),
        }
    }
}

/// One connection, over either transport.
#[derive(Debug)]
pub enum Stream {
    /// A Unix socket connection (the default; the peer's uid is known).
    Unix(UnixStream),
    /// A TCP connection (guarded by the token handshake).
    Tcp(TcpStream),
}

impl Stream {
    /// A second handle on the same connection (one for reading, one for writing).
    pub fn try_clone(&self) -> io::Result<Stream> {
        match self {
            Stream::Unix(s) => s.try_clone().map(Stream::Unix),
            Stream::Tcp(s) => s.try_clone().map(Stream::Tcp),
        }
    }

    /// Bound every read (`None`: wait for ever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(timeout),
            Stream::Tcp(s) => s.set_read_timeout(timeout),
        }
    }

    /// Bound every write (`None`: wait for ever).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(timeout),
            Stream::Tcp(s) => s.set_write_timeout(timeout),
        }
    }

    /// Shut down one or both directions of the connection.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.shutdown(how),
            Stream::Tcp(s) => s.shutdown(how),
        }
    }

    /// True for a TCP connection.
    pub fn is_tcp(&self) -> bool {
        matches!(self, Stream::Tcp(_))
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match *self {
            Stream::Unix(s) => (&*s).read(buf),
            Stream::Tcp(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match *self {
            Stream::Unix(s) => (&*s).write(buf),
            Stream::Tcp(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Set the options every TCP connection of deskd gets: no Nagle delay (requests and replies are
/// small and latency-bound) and keep-alive probes, so a connection whose peer vanished (a host
/// that lost power) is closed after about two minutes instead of holding its thread forever.
pub fn tune_tcp(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    use rustix::net::sockopt;
    sockopt::set_socket_keepalive(stream, true)?;
    sockopt::set_tcp_keepidle(stream, Duration::from_secs(60))?;
    sockopt::set_tcp_keepintvl(stream, Duration::from_secs(10))?;
    sockopt::set_tcp_keepcnt(stream, 6)?;
    Ok(())
}

/// Why a token file was not used. Every message starts with `token file PATH:` so that the
/// server's log and a client's error say which file to fix.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    // The I/O error is part of the message and deliberately not a `source`: printed with
    // anyhow's `{:#}` (as dt and deskd do) a source would be repeated after the message.
    /// It cannot be examined or read.
    #[error("token file {}: {error}", .path.display())]
    Io {
        /// The token file.
        path: PathBuf,
        /// What the kernel said.
        error: io::Error,
    },
    /// Other users may read it: the token is a password.
    #[error(
        "token file {}: other users may read it (mode {mode:04o}); `chmod o-rwx` it",
        .path.display()
    )]
    Readable {
        /// The token file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The token is shorter than [`MIN_TOKEN_LEN`] bytes: too easy to guess.
    #[error(
        "token file {}: the token has {len} bytes; at least {MIN_TOKEN_LEN} are needed \
         (make one with `head -c 32 /dev/urandom | base64`)",
        .path.display()
    )]
    TooShort {
        /// The token file.
        path: PathBuf,
        /// The token's length in bytes, trailing white space removed.
        len: usize,
    },
    /// The server's token file belongs to a user other than root and the server's own: that
    /// user could choose the token the next reload reads.
    #[error(
        "token file {}: owned by uid {uid}, who could choose the token; make root or the \
         server's user its owner",
        .path.display()
    )]
    Owner {
        /// The token file.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
}

/// Read the token file a server checks its clients against: as [`read_token_file`], and the
/// file must belong to root or to the server's own user (another owner could change it).
pub fn read_server_token_file(path: &Path) -> Result<Vec<u8>, TokenFileError> {
    let meta = std::fs::metadata(path).map_err(|error| TokenFileError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let uid = std::os::unix::fs::MetadataExt::uid(&meta);
    if uid != 0 && uid != rustix::process::geteuid().as_raw() {
        return Err(TokenFileError::Owner {
            path: path.to_path_buf(),
            uid,
        });
    }
    read_token_file(path)
}

/// Read a token file: its bytes without trailing white space. Refused: a file other users may
/// read (the token is a password), and a token shorter than [`MIN_TOKEN_LEN`] bytes.
pub fn read_token_file(path: &Path) -> Result<Vec<u8>, TokenFileError> {
    let what = |error: io::Error| TokenFileError::Io {
        path: path.to_path_buf(),
        error,
    };
    let meta = std::fs::metadata(path).map_err(what)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(TokenFileError::Readable {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut token = std::fs::read(path).map_err(what)?;
    while token.last().is_some_and(|b| b.is_ascii_whitespace()) {
        token.pop();
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(TokenFileError::TooShort {
            path: path.to_path_buf(),
            len: token.len(),
        });
    }
    Ok(token)
}

fn auth_mac(token: &[u8], challenge: &[u8; CHALLENGE_LEN]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(token).expect("HMAC takes a key of any length");
    mac.update(b"deskd-tcp-auth");
    mac.update(challenge);
    mac
}

/// The client's answer to a challenge.
pub fn challenge_answer(token: &[u8], challenge: &[u8; CHALLENGE_LEN]) -> [u8; CHALLENGE_LEN] {
    auth_mac(token, challenge).finalize().into_bytes().into()
}

/// Whether `answer` is right for `challenge` (compared in constant time).
pub fn answer_is_right(token: &[u8], challenge: &[u8; CHALLENGE_LEN], answer: &[u8]) -> bool {
    auth_mac(token, challenge).verify_slice(answer).is_ok()
}

/// The client's half of the handshake.
pub fn client_hello(version: u16) -> [u8; 8] {
    client_hello_with_flags(version, CLIENT_FLAGS)
}

/// The hello's flag a client sets when it decodes every reply appended within protocol 3
/// after its first release, to requests an earlier client also sends: `FrozenSnapshot` (to
/// `Freeze`). A client without it (flags 0) is sent an error it can decode instead.
pub const HELLO_KNOWS_APPENDED_REPLIES: u16 = 1;

/// The flags this build's clients say hello with.
pub const CLIENT_FLAGS: u16 = HELLO_KNOWS_APPENDED_REPLIES;

/// A client's hello with the given flags (an older client's is flags 0).
pub fn client_hello_with_flags(version: u16, flags: u16) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&MAGIC);
    b[4..6].copy_from_slice(&version.to_be_bytes());
    b[6..8].copy_from_slice(&flags.to_be_bytes());
    b
}

/// Parse the client's hello; returns the requested version.
pub fn parse_hello(b: &[u8; 8]) -> Result<u16, ProtoError> {
    parse_hello_with_flags(b).map(|(version, _)| version)
}

/// Parse the client's hello; returns the requested version and the client's flags.
pub fn parse_hello_with_flags(b: &[u8; 8]) -> Result<(u16, u16), ProtoError> {
    if b[..4] != MAGIC {
        return Err(ProtoError::Handshake(format!(
            "expected magic DSKD, got {:02x?}",
            &b[..4]
        )));
    }
    Ok((
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]),
    ))
}

/// The server's answer with a status (`STATUS_*`).
pub fn server_hello(status: u16) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&MAGIC);
    b[4..6].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    b[6..8].copy_from_slice(&status.to_be_bytes());
    b
}

/// Parse the server's answer on the client side; returns its status.
pub fn parse_server_hello(b: &[u8; 8]) -> Result<u16, ProtoError> {
    if b[..4] != MAGIC {
        return Err(ProtoError::Handshake(
            "the server does not speak the deskd protocol".into(),
        ));
    }
    let server = u16::from_be_bytes([b[4], b[5]]);
    match u16::from_be_bytes([b[6], b[7]]) {
        STATUS_BAD_VERSION => Err(ProtoError::VersionMismatch {
            server,
            client: PROTOCOL_VERSION,
        }),
        status @ (STATUS_ACCEPTED | STATUS_CHALLENGE | STATUS_AUTH_FAILED) => Ok(status),
        STATUS_TOO_MANY_OF_USER => Err(ProtoError::Refused(
            "your user has too many connections open (max_connections_per_uid in deskd's \
             [server] settings); close some and try again"
                .into(),
        )),
        STATUS_TOO_MANY => Err(ProtoError::Refused(
            "too many connections are open (max_connections in deskd's [server] settings); \
             try again later"
                .into(),
        )),
        other => Err(ProtoError::Handshake(format!(
            "unknown handshake status {other}"
        ))),
    }
}

/// The client's half: say hello and, when challenged, answer with `token`.
pub fn client_handshake(
    mut stream: impl Read + Write,
    token: Option<&[u8]>,
) -> Result<(), ProtoError> {
    let mut hello = [0u8; 8];
    if let Err(e) = stream.write_all(&client_hello(PROTOCOL_VERSION)) {
        // A server that refuses at once may have answered and closed before the hello got
        // there: its answer says more than the broken pipe.
        return match stream.read_exact(&mut hello) {
            Ok(()) => parse_server_hello(&hello).and(Err(e.into())),
            Err(_) => Err(e.into()),
        };
    }
    stream.read_exact(&mut hello)?;
    match parse_server_hello(&hello)? {
        STATUS_ACCEPTED => Ok(()),
        STATUS_CHALLENGE => {
            let mut challenge = [0u8; CHALLENGE_LEN];
            stream.read_exact(&mut challenge)?;
            let Some(token) = token else {
                return Err(ProtoError::Auth(
                    "this deskd needs a token: give --token-file or $DESKD_TOKEN_FILE".into(),
                ));
            };
            stream.write_all(&challenge_answer(token, &challenge))?;
            stream.read_exact(&mut hello)?;
            match parse_server_hello(&hello)? {
                STATUS_ACCEPTED => Ok(()),
                _ => Err(ProtoError::Auth("deskd refused the token".into())),
            }
        }
        _ => Err(ProtoError::Auth("deskd refused the connection".into())),
    }
}

/// The server's half; returns the client's hello flags ([`HELLO_KNOWS_APPENDED_REPLIES`]).
/// With `token`, the client must answer a fresh challenge first; a wrong answer gets
/// [`STATUS_AUTH_FAILED`] after `penalty` (which slows guessing) and an error.
pub fn server_handshake(
    mut stream: impl Read + Write,
    token: Option<&[u8]>,
    penalty: Duration,
) -> Result<u16, ProtoError> {
    let mut hello = [0u8; 8];
    stream.read_exact(&mut hello)?;
    let (version, flags) = parse_hello_with_flags(&hello)?;
    if version != PROTOCOL_VERSION {
        stream.write_all(&server_hello(STATUS_BAD_VERSION))?;
        return Err(ProtoError::VersionMismatch {
            server: PROTOCOL_VERSION,
            client: version,
        });
    }
    let Some(token) = token else {
        stream.write_all(&server_hello(STATUS_ACCEPTED))?;
        return Ok(flags);
    };
    let mut challenge = [0u8; CHALLENGE_LEN];
    getrandom::getrandom(&mut challenge).map_err(ProtoError::Random)?;
    let mut message = server_hello(STATUS_CHALLENGE).to_vec();
    message.extend_from_slice(&challenge);
    stream.write_all(&message)?;
    let mut answer = [0u8; CHALLENGE_LEN];
    stream.read_exact(&mut answer)?;
    if answer_is_right(token, &challenge, &answer) {
        stream.write_all(&server_hello(STATUS_ACCEPTED))?;
        Ok(flags)
    } else {
        std::thread::sleep(penalty);
        stream.write_all(&server_hello(STATUS_AUTH_FAILED))?;
        Err(ProtoError::Auth("wrong token".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &[u8] = b"0123456789abcdef-secret";

    fn run(
        server_token: Option<&'static [u8]>,
        client_token: Option<&[u8]>,
    ) -> (Result<(), ProtoError>, Result<u16, ProtoError>) {
        let (a, b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            server_handshake(&b, server_token, Duration::from_millis(1))
        });
        let client = client_handshake(&a, client_token);
        // A client that gives up closes its connection; the server then stops waiting.
        drop(a);
        (client, server.join().unwrap())
    }

    #[test]
    fn endpoints_parse_and_print() {
        let tcp = Endpoint::parse(OsStr::new("tcp://[::1]:4700"));
        assert_eq!(tcp, Endpoint::Tcp("[::1]:4700".into()));
        assert_eq!(tcp.to_string(), "tcp://[::1]:4700");
        let unix = Endpoint::parse(OsStr::new("/run/deskd/deskd.sock"));
        assert_eq!(unix, Endpoint::Unix("/run/deskd/deskd.sock".into()));
        assert_eq!(
            Endpoint::resolve(Some(OsStr::new("x.sock"))),
            Endpoint::Unix("x.sock".into())
        );
    }

    #[test]
    fn handshake_without_a_token() {
        let (client, server) = run(None, None);
        client.unwrap();
        assert_eq!(
            server.unwrap(),
            CLIENT_FLAGS,
            "the server hears the client's flags"
        );
    }

    #[test]
    fn handshake_with_the_right_token() {
        let (client, server) = run(Some(TOKEN), Some(TOKEN));
        client.unwrap();
        assert_eq!(server.unwrap(), HELLO_KNOWS_APPENDED_REPLIES);
    }

    #[test]
    fn an_older_clients_hello_has_no_flags_and_the_version_reads_the_same() {
        let old = client_hello_with_flags(PROTOCOL_VERSION, 0);
        assert_eq!(parse_hello_with_flags(&old).unwrap(), (PROTOCOL_VERSION, 0));
        assert_eq!(
            parse_hello(&client_hello(PROTOCOL_VERSION)).unwrap(),
            PROTOCOL_VERSION
        );
    }

    #[test]
    fn a_wrong_or_missing_token_is_refused() {
        let (client, server) = run(Some(TOKEN), Some(b"0123456789abcdef-guess"));
        assert!(matches!(client, Err(ProtoError::Auth(ref m)) if m.contains("refused the token")));
        assert!(matches!(server, Err(ProtoError::Auth(_))));
        let (client, _) = run(Some(TOKEN), None);
        assert!(matches!(client, Err(ProtoError::Auth(ref m)) if m.contains("--token-file")));
    }

    #[test]
    fn a_refusal_sent_before_the_hello_is_reported() {
        for (status, words) in [
            (STATUS_TOO_MANY_OF_USER, "max_connections_per_uid"),
            (STATUS_TOO_MANY, "max_connections"),
        ] {
            let (a, b) = UnixStream::pair().unwrap();
            (&b).write_all(&server_hello(status)).unwrap();
            drop(b);
            let e = client_handshake(&a, None).unwrap_err();
            assert!(
                matches!(e, ProtoError::Refused(ref m) if m.contains(words)),
                "{e}"
            );
        }
    }

    #[test]
    fn answers_depend_on_token_and_challenge() {
        let c1 = [1u8; CHALLENGE_LEN];
        let c2 = [2u8; CHALLENGE_LEN];
        let answer = challenge_answer(TOKEN, &c1);
        assert!(answer_is_right(TOKEN, &c1, &answer));
        assert!(!answer_is_right(TOKEN, &c2, &answer), "replayed answer");
        assert!(!answer_is_right(b"another token....", &c1, &answer));
        assert!(!answer_is_right(TOKEN, &c1, &answer[..31]));
    }

    #[test]
    fn tcp_connections_get_no_delay_and_keep_alive() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        tune_tcp(&client).unwrap();
        assert!(client.nodelay().unwrap());
        use rustix::net::sockopt;
        assert!(sockopt::socket_keepalive(&client).unwrap());
        assert_eq!(
            sockopt::tcp_keepidle(&client).unwrap(),
            Duration::from_secs(60)
        );
        assert_eq!(
            sockopt::tcp_keepintvl(&client).unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(sockopt::tcp_keepcnt(&client).unwrap(), 6);
    }

    #[test]
    fn token_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, b"0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(read_token_file(&path).unwrap(), b"0123456789abcdef");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_token_file(&path).unwrap_err();
        assert!(
            matches!(e, TokenFileError::Readable { mode: 0o644, .. }),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(text.starts_with(&format!("token file {}: ", path.display())));
        assert!(text.contains("other users may read it (mode 0644)"), "{e}");
        std::fs::write(&path, b"short\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = read_token_file(&path).unwrap_err();
        assert!(
            matches!(e, TokenFileError::TooShort { len: 5, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("the token has 5 bytes"), "{e}");
        let e = read_token_file(&dir.path().join("none")).unwrap_err();
        assert!(matches!(e, TokenFileError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("No such file"), "{e}");
    }
}
