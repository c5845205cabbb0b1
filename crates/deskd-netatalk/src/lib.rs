//! A stand-in for Netatalk's `cnid_metad` + `cnid_dbd`: afpd's `dbd` CNID protocol
//! ([`wire`]) served from deskd, so a Netatalk file server keeps its IDs in the deskd desktop
//! that `dt`, HELIOS-style tools and other file servers share.
//!
//! [`serve`] accepts afpd connections, one thread each. Each afpd connection names its volume
//! in the handshake and then sends one request at a time. [`serve_connection`] maps every request onto the deskd protocol through its own
//! [`deskd_client::Client`], so deskd's rules hold unchanged: every claim is verified on disk,
//! a write is acknowledged only once committed, IDs are never reused. Where Netatalk's own
//! rules differ (its LOOKUP "salvation" deletes records on a mismatch; deskd keeps an ID across
//! a save-by-replace), deskd's apply; `docs/netatalk.md` lists each mapping.

pub mod wire;

use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deskd_client::{Client, ClientError, ErrorCode, FindMode, Kind, ObjectInfo, Request, Response};
use tracing::{debug, warn};

use wire::{op, res, Reply, WireError};

/// How long a new afpd connection may take to send its handshake.
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

/// How long a request waits for deskd to come back after its connection broke; afpd's own
/// read timeout is 5 s.
pub const RECONNECT_FOR: Duration = Duration::from_secs(4);

/// Errors that end one afpd connection.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The handshake's volume cannot be served (the text names it).
    #[error("{0}")]
    Volume(String),
    #[error("operation {0} is not supported (Netatalk's cnid_dbd ends the connection too)")]
    Unsupported(i32),
}

/// How the bridge reaches deskd (a new connection after deskd went away).
pub type Connect<'a> = &'a (dyn Fn() -> Result<Client, ClientError> + Sync);

/// The deskd side of one afpd connection: a client and the volume's handle, made again
/// when deskd restarts.
struct Desk<'a> {
    connect: Connect<'a>,
    root: std::path::PathBuf,
    client: Option<(Client, u32)>,
}

impl Desk<'_> {
    fn client(&mut self) -> Result<(&mut Client, u32), ClientError> {
        if self.client.is_none() {
            let mut client = (self.connect)()?;
            let vol = client.open_volume(&self.root)?.vol;
            self.client = Some((client, vol));
        }
        let (client, vol) = self.client.as_mut().expect("just set");
        Ok((client, *vol))
    }

    /// Send one request. When the connection to deskd broke (deskd restarted), reconnect and
    /// send it again for up to [`RECONNECT_FOR`]; when deskd refused it with `ShuttingDown`
    /// (stopping, or a reload reopening the volume as the request reached it; nothing was
    /// recorded), send it again the same way. afpd ends a session on `ERR_DB` for an ADD, and
    /// every request here is safe to repeat (ADD is lookup-or-add, UPDATE moves to where the
    /// object already is, a repeated DELETE finds nothing).
    fn call(&mut self, make: impl Fn(u32) -> Request) -> Result<Response, ClientError> {
        let began = std::time::Instant::now();
        loop {
            let result = match self.client() {
                Ok((client, vol)) => client.call(make(vol)),
                Err(e) => Err(e),
            };
            let broken = matches!(
                result,
                Err(ClientError::Closed | ClientError::Proto(_) | ClientError::Connect { .. })
            );
            let closed_desktop =
                matches!(&result, Err(e) if e.code() == Some(ErrorCode::ShuttingDown));
            if !broken && !closed_desktop {
                return result;
            }
            if broken {
                self.client = None;
            }
            if began.elapsed() >= RECONNECT_FOR {
                return result;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The netatalk result for a deskd error.
fn result_of(e: &ClientError) -> i32 {
    match e.code() {
        Some(ErrorCode::NotFound) => res::NOTFOUND,
        Some(ErrorCode::IdSpaceExhausted) => res::ERR_MAX,
        _ => res::ERR_DB,
    }
}

fn object(r: Result<Response, ClientError>) -> Result<ObjectInfo, ClientError> {
    match r? {
        Response::Object(o) => Ok(o),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

fn kind_code(kind: Kind) -> u32 {
    match kind {
        Kind::Dir => 1,
        _ => 0,
    }
}

/// Answer one request.
fn answer(desk: &mut Desk, q: wire::Request) -> Result<Reply, BridgeError> {
    // afpd's CNID in an ADD comes from the AppleDouble metadata of the file, which its owner
    // can write, and the bridge connects as root: it is never passed on as a hint, so a user
    // cannot pick an ID through afpd (docs/netatalk.md, docs/security.md).
    let hint = None;
    let reply = match q.op {
        op::OPEN | op::CLOSE => Reply::status(res::OK),
        op::ADD | op::REBUILD_ADD => {
            let added = if q.dev != 0 {
                object(desk.call(|vol| Request::Add {
                    vol,
                    parent: q.did,
                    name: q.name.clone(),
                    dev: q.dev,
                    ino: q.ino,
                    hint,
                    type_code: None,
                    creator: None,
                }))
            } else {
                // `cnid dev = no`: no device to check; the server reads the object from disk.
                add_by_path(desk, q.did, &q.name, hint)
            };
            match added {
                Ok(o) => Reply::id(o.id),
                Err(e) => failed("add", &q, &e),
            }
        }
        op::GET | op::LOOKUP => {
            let found = desk.call(|vol| Request::Lookup {
                vol,
                parent: q.did,
                name: q.name.clone(),
            });
            match found {
                Ok(Response::MaybeObject(Some(o)))
                    if q.op == op::GET || kind_code(o.kind) == q.kind =>
                {
                    Reply::id(o.id)
                }
                Ok(Response::MaybeObject(_)) => Reply::status(res::NOTFOUND),
                Ok(other) => failed("lookup", &q, &ClientError::Unexpected(format!("{other:?}"))),
                Err(e) => failed("lookup", &q, &e),
            }
        }
        op::RESOLVE => match object(desk.call(|vol| Request::Resolve { vol, id: q.cnid })) {
            Ok(o) => Reply {
                result: res::OK,
                cnid: q.cnid,
                did: o.parent,
                payload: wire::resolve_record(q.cnid, 0, 0, kind_code(o.kind), o.parent, &o.name),
            },
            Err(e) => failed("resolve", &q, &e),
        },
        op::UPDATE => {
            let moved = desk.call(|vol| Request::Rename {
                vol,
                id: q.cnid,
                new_parent: q.did,
                new_name: q.name.clone(),
                replace: true,
            });
            match moved {
                Ok(_) => Reply::id(q.cnid),
                // Not registered yet: register it where it is now, keeping its ID if free.
                Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                    match add_by_path(desk, q.did, &q.name, hint) {
                        Ok(o) => Reply::id(o.id),
                        Err(e) => failed("update", &q, &e),
                    }
                }
                // Already there (a resend, or afpd repeating itself): done.
                Err(e) if already_at(desk, q.cnid, q.did, &q.name) => {
                    debug!("update of {}: {e}; already in place", q.cnid);
                    Reply::id(q.cnid)
                }
                Err(e) => failed("update", &q, &e),
            }
        }
        op::DELETE => match desk.call(|vol| Request::Delete {
            vol,
            id: q.cnid,
            recursive: true,
        }) {
            Ok(_) => Reply::status(res::OK),
            // Still on disk: deskd keeps it (and its ID); afpd counts the call as done.
            Err(e) if e.code() == Some(ErrorCode::ClaimRejected) => {
                debug!("delete of {}: {e}; kept", q.cnid);
                Reply::status(res::OK)
            }
            Err(e) => failed("delete", &q, &e),
        },
        op::GETSTAMP => match desk.call(|vol| Request::Status { vol: Some(vol) }) {
            Ok(Response::Status(s)) if !s.is_empty() => Reply {
                payload: stamp(Path::new(std::ffi::OsStr::from_bytes(&s[0].desktop))).to_vec(),
                ..Reply::status(res::OK)
            },
            Ok(_) => Reply::status(res::ERR_DB),
            Err(e) => failed("getstamp", &q, &e),
        },
        op::SEARCH => {
            let pattern = String::from_utf8_lossy(&q.name).into_owned();
            match desk.call(|vol| Request::Find {
                vol,
                pattern: pattern.clone(),
                mode: FindMode::Prefix,
                limit: 100,
                after_id: 0,
            }) {
                Ok(Response::Objects(found)) => Reply {
                    payload: found.iter().flat_map(|o| o.id.to_be_bytes()).collect(),
                    ..Reply::status(res::OK)
                },
                Ok(other) => failed("search", &q, &ClientError::Unexpected(format!("{other:?}"))),
                Err(e) => failed("search", &q, &e),
            }
        }
        op::WIPE => {
            warn!(
                "{}: WIPE refused: deskd never empties a desktop for a client \
                 (deskd rebuild -f makes a new one without losing an ID)",
                desk.root.display()
            );
            Reply::status(res::ERR_DB)
        }
        other => return Err(BridgeError::Unsupported(other)),
    };
    Ok(reply)
}

/// Whether deskd has `cnid` at `did`/`name` already.
fn already_at(desk: &mut Desk, cnid: u32, did: u32, name: &[u8]) -> bool {
    matches!(
        desk.call(|vol| Request::Lookup { vol, parent: did, name: name.to_vec() }),
        Ok(Response::MaybeObject(Some(o))) if o.id == cnid
    )
}

/// Register `name` in directory `did` through its path, the server reading it from disk.
fn add_by_path(
    desk: &mut Desk,
    did: u32,
    name: &[u8],
    hint: Option<u32>,
) -> Result<ObjectInfo, ClientError> {
    let parent = object(desk.call(|vol| Request::Resolve { vol, id: did }))?;
    let mut path = parent.path.unwrap_or_default();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    object(desk.call(|vol| Request::AddPath {
        vol,
        path: path.clone(),
        hint,
        type_code: None,
        creator: None,
    }))
}

fn failed(what: &str, q: &wire::Request, e: &ClientError) -> Reply {
    let result = result_of(e);
    if result == res::NOTFOUND {
        debug!("{what} (cnid {}, did {}): {e}", q.cnid, q.did);
    } else {
        warn!("{what} (cnid {}, did {}): {e}", q.cnid, q.did);
    }
    Reply::status(result)
}

/// The 8-byte database stamp: the desktop file's inode number, which changes when the desktop
/// is made anew (`deskd rebuild -f`, a restore), as Netatalk's stamp (the creation time of its
/// database) does. Zeros when the desktop cannot be seen.
fn stamp(desktop: &Path) -> [u8; 8] {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(desktop)
        .map(|m| m.ino().to_be_bytes())
        .unwrap_or([0; 8])
}

/// Accept afpd connections on `listener` until it fails for good, serving each on its own
/// thread with its own connection to deskd (made by `connect`).
pub fn serve(
    listener: TcpListener,
    connect: Arc<dyn Fn() -> Result<Client, ClientError> + Send + Sync>,
) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("accept failed: {e}");
                // Out of descriptors and the like: do not spin at full speed.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let connect = connect.clone();
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let spawned = std::thread::Builder::new()
            .name("afpd".into())
            .spawn(move || {
                if let Err(e) = serve_connection(stream, &*connect, HANDSHAKE_WAIT) {
                    warn!("{peer}: {e}; connection closed");
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start a thread for a connection: {e}");
        }
    }
}

/// Serve one afpd connection until it closes. The handshake must come within `handshake_wait`.
pub fn serve_connection(
    stream: TcpStream,
    connect: Connect,
    handshake_wait: Duration,
) -> Result<(), BridgeError> {
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(handshake_wait))
        .map_err(WireError::from)?;
    let mut input = std::io::BufReader::new(&stream);
    let hello = wire::read_handshake(&mut input)?;
    stream.set_read_timeout(None).map_err(WireError::from)?;
    let shown = String::from_utf8_lossy(&hello.volume_path).into_owned();
    let root = std::fs::canonicalize(std::ffi::OsStr::from_bytes(&hello.volume_path))
        .map_err(|e| BridgeError::Volume(format!("{shown}: {e}")))?;
    let mut desk = Desk {
        connect,
        root,
        client: None,
    };
    // The volume must be one deskd serves; afpd learns otherwise from a closed connection.
    desk.client().map_err(|e| match e {
        // deskd's own message names the path already.
        ClientError::Server(reply) => BridgeError::Volume(reply.message),
        other => BridgeError::Volume(format!("{shown}: {other}")),
    })?;
    debug!(volume = %shown, user = %String::from_utf8_lossy(&hello.user), "afpd connected");
    let mut output = &stream;
    while let Some(q) = wire::read_request(&mut input)? {
        let reply = answer(&mut desk, q)?;
        wire::send(&mut output, &wire::encode_reply(&reply)).map_err(WireError::from)?;
    }
    Ok(())
}
