//! A stand-in for Netatalk's `cnid_metad` + `cnid_dbd`: afpd's `dbd` CNID protocol
//! ([`wire`]) served from deskd, so a Netatalk file server keeps its IDs in the deskd desktop
//! that `dt`, HELIOS-style tools and other file servers share.
//!
//! [`serve`] accepts afpd connections, one thread each, at most [`Limits::max_connections`] at
//! once (anyone on the host can connect, and each connection also holds a connection to deskd).
//! Each afpd connection names its volume in the handshake and then sends one request at a time;
//! the handshake, and each request once begun, must arrive whole within
//! [`Limits::frame_timeout`] (idle time between requests is not bounded). [`serve_connection`]
//! maps every request onto the deskd protocol through its own [`Desk`]: a
//! [`deskd_client::Client`] for the standalone bridge (`deskd netatalk`), or a connection inside
//! `deskd serve` that runs the request on the same thread (deskd-cli's `cnid_listener`). So
//! deskd's rules hold unchanged either way: every claim is verified on disk,
//! a write is acknowledged only once committed, IDs are never reused. Where Netatalk's own
//! rules differ (its LOOKUP "salvation" deletes records on a mismatch; deskd keeps an ID across
//! a save-by-replace), deskd's apply; `docs/netatalk.md` lists each mapping.

#![forbid(unsafe_code)]

pub mod dbpath;
pub mod wire;

use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deskd_client::{Client, ClientError, ErrorCode, FindMode, Kind, ObjectInfo, Request, Response};
use deskd_proto::ratelimit::RateLimited;
use deskd_proto::spin::{Settings as SpinSettings, SpinRead};
use deskd_proto::Stream;
use tracing::{debug, warn};

use wire::{op, res, Reply, WireError};

/// How many afpd connections the bridge serves at once, and how long a handshake or a started
/// request may take to arrive whole.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub frame_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            frame_timeout: Duration::from_secs(10),
        }
    }
}

/// How long a request waits for deskd to come back after its connection broke; afpd's own
/// read timeout is 5 s.
pub const RECONNECT_FOR: Duration = Duration::from_secs(4);

/// Errors that end one afpd connection.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The handshake's volume cannot be served (the message names it).
    #[error("{0}")]
    Volume(VolumeRefused),
    #[error("operation {0} is not supported (Netatalk's cnid_dbd ends the connection too)")]
    Unsupported(i32),
    /// The handshake or a begun request did not arrive whole in time.
    #[error("{0} did not arrive whole within the frame timeout")]
    Stalled(&'static str),
}

/// Why the volume of an afpd handshake is not served; `volume` is its path as afpd sent it.
// The causes are part of the message and deliberately not a `source`: printed with anyhow's
// `{:#}` a source would be repeated after the message.
#[derive(Debug, thiserror::Error)]
pub enum VolumeRefused {
    /// The path does not resolve on this host.
    #[error("{volume}: {error}")]
    Resolve {
        volume: String,
        error: std::io::Error,
    },
    /// deskd answered with an error (not a volume it serves); its message names the path
    /// (escaped here: the path is the peer's, and a line feed in it would forge log lines).
    #[error("{}", .0.to_string().escape_debug())]
    Deskd(deskd_client::ErrorReply),
    /// deskd could not be asked (not running, timed out, refused the connection).
    #[error("{volume}: {error}")]
    Unreachable { volume: String, error: ClientError },
}

/// The afp.conf line that hides deskd's own files from afpd (docs/netatalk.md).
pub const VETO_LINE: &str = "veto files = /.Desktop/.Desktop-wal/.Desktop-shm/.Desktop-journal/.Desktop-rebuild/.Desktop-rebuild-journal/.Desktop.before-migrate/.rsrc/";

/// What [`BridgeError::Stalled`] calls a handshake that did not end in time.
const HANDSHAKE: &str = "the handshake";

/// A read that ran out of time becomes [`BridgeError::Stalled`].
fn stalled(e: WireError, what: &'static str) -> BridgeError {
    match e {
        WireError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            BridgeError::Stalled(what)
        }
        other => BridgeError::Wire(other),
    }
}

/// Whether to log the end of a connection by `error` now. Errors a peer can cause at will
/// (a stalled handshake or request, a volume deskd will not serve it, deskd refusing one
/// more connection) are logged at most every 10 s for each kind, so that a flood of them
/// cannot fill the log; others always.
fn log_now(error: &BridgeError) -> bool {
    static HANDSHAKES: RateLimited = RateLimited::new(Duration::from_secs(10));
    static REQUESTS: RateLimited = RateLimited::new(Duration::from_secs(10));
    static VOLUMES: RateLimited = RateLimited::new(Duration::from_secs(10));
    let which = match error {
        BridgeError::Stalled(what) if *what == HANDSHAKE => &HANDSHAKES,
        BridgeError::Stalled(_) => &REQUESTS,
        BridgeError::Volume(_) => &VOLUMES,
        _ => return true,
    };
    which.now()
}

/// One connection to deskd that answers requests, one at a time: the socket client of the
/// standalone bridge ([`Client`]), or a connection inside `deskd serve` itself that runs each
/// request through the server's own dispatch on the calling thread. The mapping of afpd's
/// requests onto deskd's ([`serve_connection`]) is written once, against this.
pub trait Desk {
    /// Send one request; deskd's refusals are [`ClientError::Server`].
    fn call(&mut self, request: Request) -> Result<Response, ClientError>;
}

impl Desk for Client {
    fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        Client::call(self, request)
    }
}

/// A new connection to deskd: made for each afpd connection, and again after deskd went away.
/// Its argument names the afpd connection (`afpd PEER user NAME`, the name as afpd sent it,
/// escaped), for a server that lists its clients (`deskd status`, the audit log).
pub type Connect<'a> = &'a (dyn Fn(&str) -> Result<Box<dyn Desk>, ClientError> + Sync);

/// What [`serve`] makes each afpd connection's [`Connect`] from.
pub type SharedConnect = Arc<dyn Fn(&str) -> Result<Box<dyn Desk>, ClientError> + Send + Sync>;

/// The deskd side of one afpd connection: a connection to deskd and the volume's handle, made
/// again when deskd restarts.
struct Session<'a> {
    connect: Connect<'a>,
    /// Who this afpd connection is (see [`Connect`]).
    label: String,
    root: std::path::PathBuf,
    desk: Option<(Box<dyn Desk>, u32)>,
    /// DELETEs held back: their names hold an object of their kind again (see
    /// [`EXCHANGE_WINDOW`]); at most [`MAX_HELD`], none twice.
    held_deletes: Vec<u32>,
    /// When the first of them was held: they go at most [`EXCHANGE_WINDOW`] later, however
    /// many requests arrive meanwhile.
    held_since: Option<Instant>,
}

/// An exchange holds two DELETEs; more than this and the oldest are sent (a peer that sends
/// DELETE after DELETE cannot grow the list or keep records alive).
const MAX_HELD: usize = 2;

/// How long a DELETE whose name holds an object of its kind again is held back. afpd's
/// FPExchangeFiles swaps two files on disk, then sends DELETE for both IDs and UPDATE for both
/// (Netatalk deletes the records and adds them again with the same IDs): an UPDATE of a held
/// ID within this time, with no other request between, cancels its DELETE, so each name keeps
/// its ID. Any other request, the end of the connection or this much idle time sends the held
/// DELETEs, and deskd drops a record only when its inode is gone from its place: a user who
/// made the name again gets no one's ID.
pub const EXCHANGE_WINDOW: Duration = Duration::from_millis(50);

/// Volumes whose afpd showed deskd's own files: warned about once each.
static UNVETOED: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

impl Session<'_> {
    /// DELETE `cnid` now. afpd counts the call as done whatever deskd says, unless deskd cannot
    /// be reached.
    fn delete(&mut self, cnid: u32) -> Reply {
        match self.call(|vol| Request::Delete {
            vol,
            id: cnid,
            recursive: true,
        }) {
            Ok(_) => Reply::status(res::OK),
            // Still on disk: deskd keeps it (and its ID); afpd counts the call as done.
            Err(e) if e.code() == Some(ErrorCode::ClaimRejected) => {
                debug!("delete of {cnid}: {e}; kept");
                Reply::status(res::OK)
            }
            Err(e) => failed("delete", &wire::Request::new(op::DELETE, cnid, 0, b""), &e),
        }
    }

    /// Send the DELETEs held back (their answers went to afpd already).
    fn send_held_deletes(&mut self) {
        self.held_since = None;
        for cnid in std::mem::take(&mut self.held_deletes) {
            self.delete(cnid);
        }
    }

    /// Hold the DELETE of `cnid` (see [`EXCHANGE_WINDOW`]).
    fn hold_delete(&mut self, cnid: u32) {
        if self.held_deletes.contains(&cnid) {
            return;
        }
        if self.held_deletes.len() == MAX_HELD {
            let oldest = self.held_deletes.remove(0);
            self.delete(oldest);
        }
        self.held_deletes.push(cnid);
        self.held_since.get_or_insert_with(Instant::now);
    }

    /// When the held DELETEs must go, if any are held.
    fn held_until(&self) -> Option<Instant> {
        self.held_since.map(|since| since + EXCHANGE_WINDOW)
    }

    /// Whether the name of `cnid`'s record holds an object of its kind (afpd's exchange, or a
    /// name made again) rather than nothing.
    fn name_taken_again(&mut self, cnid: u32) -> bool {
        let Ok(o) = object(self.call(|vol| Request::Resolve { vol, id: cnid })) else {
            return false;
        };
        let path = self
            .root
            .join(std::ffi::OsStr::from_bytes(&o.path.unwrap_or_default()));
        std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir() == (o.kind == Kind::Dir))
    }

    /// Say once per volume that afpd sees deskd's own files: afp.conf lacks `veto files`.
    fn warn_unvetoed(&self, name: &[u8]) {
        let mut warned = UNVETOED.lock().unwrap();
        if !warned.contains(&self.root) {
            warned.push(self.root.clone());
            warn!(
                "{}: afpd asked for an ID for {:?}, one of deskd's own files: add `{VETO_LINE}` \
                 to this volume's section in afp.conf (docs/netatalk.md); until then afpd gets \
                 ERR_MAX for them",
                self.root.display(),
                String::from_utf8_lossy(name)
            );
        }
    }

    fn desk(&mut self) -> Result<(&mut dyn Desk, u32), ClientError> {
        if self.desk.is_none() {
            let mut desk = (self.connect)(&self.label)?;
            let vol = match desk.call(Request::OpenVolume {
                root: self.root.as_os_str().as_bytes().to_vec(),
            })? {
                Response::Volume(v) => v.vol,
                other => return Err(ClientError::Unexpected(Box::new(other))),
            };
            self.desk = Some((desk, vol));
        }
        let (desk, vol) = self.desk.as_mut().expect("just set");
        Ok((&mut **desk, *vol))
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
            let result = match self.desk() {
                Ok((desk, vol)) => desk.call(make(vol)),
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
                self.desk = None;
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
        other => Err(ClientError::Unexpected(Box::new(other))),
    }
}

fn kind_code(kind: Kind) -> u32 {
    match kind {
        Kind::Dir => 1,
        _ => 0,
    }
}

/// Answer one request.
fn answer(desk: &mut Session, q: wire::Request) -> Result<Reply, BridgeError> {
    // afpd's CNID in an ADD comes from the AppleDouble metadata of the file, which its owner
    // can write, and the bridge connects as root: it is never passed on as a hint, so a user
    // cannot pick an ID through afpd (docs/netatalk.md, docs/security.md).
    let hint = None;
    match q.op {
        // Held past their time (a peer sending DELETEs and UPDATEs back to back): send them.
        _ if desk
            .held_until()
            .is_some_and(|until| Instant::now() >= until) =>
        {
            desk.send_held_deletes();
        }
        // An UPDATE of a held ID is the second half of an exchange: its DELETE is cancelled.
        op::UPDATE => desk.held_deletes.retain(|&id| id != q.cnid),
        op::DELETE => {}
        _ => desk.send_held_deletes(),
    }
    let reply = match q.op {
        op::OPEN | op::CLOSE => Reply::status(res::OK),
        op::ADD | op::REBUILD_ADD => add(desk, &q, hint),
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
                Ok(other) => failed("lookup", &q, &ClientError::Unexpected(Box::new(other))),
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
                    match add_by_path(desk, q.did, &q.name, hint, None) {
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
        op::DELETE if desk.name_taken_again(q.cnid) => {
            desk.hold_delete(q.cnid);
            Reply::status(res::OK)
        }
        op::DELETE => desk.delete(q.cnid),
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
                Ok(other) => failed("search", &q, &ClientError::Unexpected(Box::new(other))),
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

/// How many registered folders an ADD whose folder does not hold its object may search below
/// that folder, and how deep (see [`find_below`]).
const SEARCH_DIRS: usize = 1024;
const SEARCH_DEPTH: usize = 8;

/// ADD (and REBUILD_ADD). afpd ends the session on `ERR_DB` and aborts on `NOTFOUND`
/// (`cnid_dbd_add`), so only an outage of deskd answers `ERR_DB`; what the request itself gets
/// wrong is mended where it can be, and otherwise answered `ERR_MAX`, which fails only the one
/// AFP call (afpd: `AFPERR_MISC`):
///
/// * the object is not the one at did/name (replaced between afpd's stat and the ADD): the one
///   there now is registered (`AddPath`);
/// * nothing is at did/name (afpd sends the request's base folder for a path of several
///   names): the object is looked for by dev/ino in the registered folders below did;
/// * deskd's own files (`.Desktop`, `.rsrc`), which `veto files` hides from afpd: `ERR_MAX`,
///   and the log says once per volume what afp.conf lacks.
fn add(desk: &mut Session, q: &wire::Request, hint: Option<u32>) -> Reply {
    // The CNID afpd read from the object's own metadata: used by deskd only to follow a move
    // made outside AFP (the record of that ID must have this object's dev/ino), never to pick
    // a free ID.
    let carried = (q.cnid != 0).then_some(q.cnid);
    if deskd_volume::is_protected(&q.name) {
        desk.warn_unvetoed(&q.name);
        return Reply::status(res::ERR_MAX);
    }
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
            carried,
        }))
    } else {
        // `cnid dev = no`: no device to check; the server reads the object from disk.
        add_by_path(desk, q.did, &q.name, hint, carried)
    };
    let e = match added {
        Ok(o) => return Reply::id(o.id),
        Err(e) if is_outage(&e) => return failed("add", q, &e),
        Err(e) => e,
    };
    match mend_add(desk, q, hint, carried) {
        Some(o) => {
            debug!(
                "add (did {}, {:?}): {e}; registered {}",
                q.did,
                String::from_utf8_lossy(&q.name),
                o.id
            );
            Reply::id(o.id)
        }
        None => {
            warn!(
                "add (cnid {}, did {}, {:?}): {e}; answered ERR_MAX (afpd fails this call only)",
                q.cnid,
                q.did,
                String::from_utf8_lossy(&q.name)
            );
            Reply::status(res::ERR_MAX)
        }
    }
}

/// An error that says deskd cannot answer now (not what the request says): afpd gets `ERR_DB`.
fn is_outage(e: &ClientError) -> bool {
    match e.code() {
        None => true,
        Some(code) => matches!(
            code,
            ErrorCode::ShuttingDown | ErrorCode::Internal | ErrorCode::Busy | ErrorCode::DiskFull
        ),
    }
}

/// Register the object an ADD deskd refused as it stood: the object at did/name whatever its
/// inode, else the object with the ADD's dev/ino in a registered folder below did.
fn mend_add(
    desk: &mut Session,
    q: &wire::Request,
    hint: Option<u32>,
    carried: Option<u32>,
) -> Option<ObjectInfo> {
    use std::os::unix::fs::MetadataExt;
    let parent = object(desk.call(|vol| Request::Resolve { vol, id: q.did })).ok()?;
    let parent_path = parent.path.unwrap_or_default();
    let there = desk
        .root
        .join(std::ffi::OsStr::from_bytes(&parent_path))
        .join(std::ffi::OsStr::from_bytes(&q.name));
    if std::fs::symlink_metadata(&there).is_ok() {
        return add_by_path(desk, q.did, &q.name, hint, carried).ok();
    }
    let (dir, _) = find_below(desk, q.did, parent_path, &|path: &Path| {
        std::fs::symlink_metadata(path.join(std::ffi::OsStr::from_bytes(&q.name)))
            .is_ok_and(|m| m.ino() == q.ino && (q.dev == 0 || m.dev() == q.dev))
    })?;
    object(desk.call(|vol| Request::AddPath {
        vol,
        path: join_path(&dir, &q.name),
        hint,
        type_code: None,
        creator: None,
        carried,
    }))
    .ok()
}

/// `parent/name` as a volume-relative path.
fn join_path(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = parent.to_vec();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// Breadth first through the registered folders below `did` (at `path`), at most
/// [`SEARCH_DIRS`] of them and [`SEARCH_DEPTH`] deep: the first whose folder on disk
/// `holds` is true for, as (its path, its ID).
fn find_below(
    desk: &mut Session,
    did: u32,
    path: Vec<u8>,
    holds: &dyn Fn(&Path) -> bool,
) -> Option<(Vec<u8>, u32)> {
    let mut queue = std::collections::VecDeque::from([(did, path, 0usize)]);
    let mut seen = 0;
    while let Some((dir, dir_path, depth)) = queue.pop_front() {
        if depth > 0 && holds(&desk.root.join(std::ffi::OsStr::from_bytes(&dir_path))) {
            return Some((dir_path, dir));
        }
        if depth == SEARCH_DEPTH {
            continue;
        }
        let Ok(Response::Objects(children)) = desk.call(|vol| Request::Children { vol, dir })
        else {
            continue;
        };
        for child in children.into_iter().filter(|c| c.kind == Kind::Dir) {
            seen += 1;
            if seen > SEARCH_DIRS {
                return None;
            }
            queue.push_back((child.id, join_path(&dir_path, &child.name), depth + 1));
        }
    }
    None
}

/// Whether deskd has `cnid` at `did`/`name` already.
fn already_at(desk: &mut Session, cnid: u32, did: u32, name: &[u8]) -> bool {
    matches!(
        desk.call(|vol| Request::Lookup { vol, parent: did, name: name.to_vec() }),
        Ok(Response::MaybeObject(Some(o))) if o.id == cnid
    )
}

/// Register `name` in directory `did` through its path, the server reading it from disk.
fn add_by_path(
    desk: &mut Session,
    did: u32,
    name: &[u8],
    hint: Option<u32>,
    carried: Option<u32>,
) -> Result<ObjectInfo, ClientError> {
    let parent = object(desk.call(|vol| Request::Resolve { vol, id: did }))?;
    let path = join_path(&parent.path.unwrap_or_default(), name);
    object(desk.call(|vol| Request::AddPath {
        vol,
        path: path.clone(),
        hint,
        type_code: None,
        creator: None,
        carried,
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

/// Counts one open afpd connection while it lives.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accept afpd connections on `listener` until it fails for good, serving each on its own
/// thread with its own connection to deskd (made by `connect`). Connections beyond
/// `limits.max_connections` are closed at once (logged at most every 10 s).
pub fn serve(
    listener: TcpListener,
    connect: SharedConnect,
    limits: Limits,
    afp_conf: Option<Arc<dbpath::AfpConf>>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let refusals = RateLimited::new(Duration::from_secs(10));
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
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let taken = open.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < limits.max_connections).then_some(n + 1)
        });
        if taken.is_err() {
            if refusals.now() {
                warn!(
                    "{peer}: refused: {} afpd connections are open (--max-connections)",
                    limits.max_connections
                );
            }
            continue; // dropped: closed at once
        }
        let slot = Slot(open.clone());
        let connect = connect.clone();
        let afp_conf = afp_conf.clone();
        let spawned = std::thread::Builder::new()
            .name("afpd".into())
            .spawn(move || {
                let _slot = slot;
                if let Err(e) =
                    serve_connection(stream, &*connect, limits.frame_timeout, afp_conf.as_deref())
                {
                    if log_now(&e) {
                        warn!("{peer}: {e}; connection closed");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start a thread for a connection: {e}");
        }
    }
}

/// Make afpd's `vol dbpath` folder for the volume afpd calls `name` at `root`, reading afp.conf
/// now; failures are logged (at most every 10 s), never fatal to the connection.
fn make_dbpath_folder(afp_conf: &dbpath::AfpConf, name: &[u8], root: &Path) {
    static FAILED: RateLimited = RateLimited::new(Duration::from_secs(10));
    let made = afp_conf
        .read()
        .map_err(|e| e.to_string())
        .and_then(|paths| match paths.folder_for(name, root) {
            Some(folder) => paths.ensure(&folder).map_err(|e| {
                format!(
                    "cannot make afpd's vol dbpath folder {}: {e}",
                    folder.display()
                )
            }),
            None => Ok(()),
        });
    if let Err(e) = made {
        if FAILED.now() {
            warn!("{}: {e}", root.display());
        }
    }
}

/// Serve one afpd connection until it closes. The handshake must be whole within `timeout` of
/// the start, and each request within `timeout` of its first byte. With `afp_conf` (read now),
/// the volume's `vol dbpath` folder is made once its volume is known to be served.
pub fn serve_connection(
    stream: TcpStream,
    connect: Connect,
    timeout: Duration,
    afp_conf: Option<&dbpath::AfpConf>,
) -> Result<(), BridgeError> {
    let _ = stream.set_nodelay(true);
    // afpd sleeps in read(2) between requests; the reader polls only while that pays
    // (deskd_proto::spin), and each read ends by its deadline.
    let read_half = stream.try_clone().map_err(WireError::from)?;
    let mut reader = SpinRead::new(Stream::Tcp(read_half), SpinSettings::configured());
    reader.set_deadline(Some(Instant::now() + timeout));
    let mut input = std::io::BufReader::new(reader);
    let hello = wire::read_handshake(&mut input).map_err(|e| stalled(e, HANDSHAKE))?;
    // The peer's bytes, escaped for the log (a line feed would forge a log line).
    let shown = String::from_utf8_lossy(&hello.volume_path)
        .escape_debug()
        .to_string();
    // afpd sends the volume's absolute path as afp.conf gives it. A `..` (or a relative path)
    // would let any local user probe, through this root-run resolution, which directories
    // exist anywhere on the host (`/root/x/../../srv/vol` is answered only when /root/x is).
    let requested = Path::new(std::ffi::OsStr::from_bytes(&hello.volume_path));
    if !requested.is_absolute()
        || requested.components().any(|c| {
            matches!(
                c,
                std::path::Component::ParentDir | std::path::Component::CurDir
            )
        })
    {
        return Err(BridgeError::Volume(VolumeRefused::Resolve {
            volume: shown,
            error: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not an absolute path free of . and .. components",
            ),
        }));
    }
    let root = std::fs::canonicalize(requested).map_err(|error| {
        BridgeError::Volume(VolumeRefused::Resolve {
            volume: shown.clone(),
            error,
        })
    })?;
    let label = format!(
        "afpd {} user {}",
        stream
            .peer_addr()
            .map_or_else(|_| "-".to_owned(), |a| a.to_string()),
        String::from_utf8_lossy(&hello.user).escape_debug()
    );
    let mut desk = Session {
        connect,
        label,
        root,
        desk: None,
        held_deletes: Vec::new(),
        held_since: None,
    };
    // The volume must be one deskd serves; afpd learns otherwise from a closed connection.
    desk.desk().map(|_| ()).map_err(|e| match e {
        // deskd's own message names the path already.
        ClientError::Server(reply) => BridgeError::Volume(VolumeRefused::Deskd(reply)),
        error => BridgeError::Volume(VolumeRefused::Unreachable {
            volume: shown.clone(),
            error,
        }),
    })?;
    debug!(volume = %shown, user = %String::from_utf8_lossy(&hello.user).escape_debug(), "afpd connected");
    if let Some(afp_conf) = afp_conf {
        make_dbpath_folder(afp_conf, &hello.volume_name, &desk.root);
    }
    let served = serve_requests(&mut desk, &mut input, &stream, timeout);
    // However the connection ends, what afpd was told is done is done.
    desk.send_held_deletes();
    served
}

/// The request loop of [`serve_connection`], after the handshake.
fn serve_requests(
    desk: &mut Session,
    input: &mut std::io::BufReader<SpinRead>,
    stream: &TcpStream,
    timeout: Duration,
) -> Result<(), BridgeError> {
    use std::io::BufRead;
    let mut output = stream;
    loop {
        // Idle between requests is fine (after EXCHANGE_WINDOW the held DELETEs go); a
        // request once begun must arrive whole in time.
        if desk.held_deletes.is_empty() {
            desk.held_since = None;
        }
        let held = desk.held_until();
        input.get_mut().set_deadline(held);
        match input.fill_buf() {
            Ok([]) => return Ok(()),
            Ok(_) => {}
            Err(e) if held.is_some() && e.kind() == std::io::ErrorKind::TimedOut => {
                desk.send_held_deletes();
                continue;
            }
            Err(e) => return Err(WireError::from(e).into()),
        }
        input.get_mut().set_deadline(Some(Instant::now() + timeout));
        let Some(q) = wire::read_request(input).map_err(|e| stalled(e, "a request"))? else {
            return Ok(());
        };
        let asked = tracing::enabled!(tracing::Level::TRACE).then(|| {
            format!(
                "op {} cnid {} did {} dev/ino {}/{} type {} name {:?}",
                q.op,
                q.cnid,
                q.did,
                q.dev,
                q.ino,
                q.kind,
                String::from_utf8_lossy(&q.name)
            )
        });
        let reply = answer(desk, q)?;
        if let Some(asked) = asked {
            tracing::trace!("{asked} -> result {} cnid {}", reply.result, reply.cnid);
        }
        wire::send(&mut output, &wire::encode_reply(&reply)).map_err(WireError::from)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_veto_line_names_every_file_of_deskds_own() {
        let names: Vec<&str> = VETO_LINE
            .strip_prefix("veto files = /")
            .unwrap()
            .trim_end_matches('/')
            .split('/')
            .collect();
        let mut protected = deskd_volume::PROTECTED_NAMES.to_vec();
        let mut vetoed = names.clone();
        protected.sort_unstable();
        vetoed.sort_unstable();
        assert_eq!(vetoed, protected);
        // The afp.conf docs/netatalk.md gives, and the conformance run uses, has this line.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for file in ["docs/netatalk.md", "third_party/netatalk/spectest.sh"] {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            assert!(text.contains(VETO_LINE), "{file} lacks {VETO_LINE}");
        }
    }

    #[test]
    fn only_an_outage_is_answered_err_db() {
        let reply = |code| ClientError::Server(deskd_client::ErrorReply::new(code, "x"));
        assert!(is_outage(&ClientError::Closed));
        assert!(is_outage(&reply(ErrorCode::ShuttingDown)));
        assert!(is_outage(&reply(ErrorCode::Busy)));
        assert!(!is_outage(&reply(ErrorCode::ClaimRejected)));
        assert!(!is_outage(&reply(ErrorCode::NotFound)));
        assert!(!is_outage(&reply(ErrorCode::Protected)));
    }
}
