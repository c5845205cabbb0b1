//! The deskd daemon.
//!
//! [`Server::start`] opens every configured volume ([`volume`]: desktop location, exclusive
//! lock, the `missing DB shutdown` line, a background logical check, one writer thread with
//! group commit and the flush/idle/WAL/freeze timers), binds the Unix socket (and, when
//! configured, a TCP address whose clients must prove they hold a shared token) and serves each
//! connection on its own thread ([`conn`]). Every client claim is verified against the file
//! system before the desktop changes ([`apply`]). [`Server::shutdown`] commits, flushes and
//! records the clean-shutdown flag on every volume.

pub mod access;
pub mod apply;
pub mod config;
pub mod conn;
pub mod outbox;
pub mod rebuild;
pub mod volume;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use deskd_proto::Stream;
use tracing::{error, info};

pub use config::{Config, ConfigFile, TcpConfig, VolumeConfig, VolumePrefs};
use conn::Peer;
use volume::{Job, VolumeHandle};

/// Errors that stop the server or a volume from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Volume(String),
    #[error("socket {path}: {message}")]
    Socket { path: PathBuf, message: String },
    #[error("tcp {addr}: {message}")]
    Tcp { addr: String, message: String },
}

/// What TCP connections need: the token they must prove they hold (re-read from its file on
/// [`Server::reconfigure`]), and whether they may use the admin verbs.
pub struct TcpAccess {
    token: RwLock<Vec<u8>>,
    token_file: PathBuf,
    pub admin: bool,
    /// Connections beyond this many are closed at once: each costs a thread, and anyone who
    /// can reach the port can open them (before the token is asked for).
    pub max_connections: usize,
    open: Arc<AtomicUsize>,
}

/// Counts one open TCP connection while it lives.
pub struct TcpSlot(Arc<AtomicUsize>);

impl Drop for TcpSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TcpAccess {
    /// A slot for one more connection, or None when `max_connections` are open.
    fn slot(&self) -> Option<TcpSlot> {
        let taken = self
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_connections).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| TcpSlot(self.open.clone()))
    }

    /// The token connections must prove they hold now.
    pub fn token(&self) -> Vec<u8> {
        self.token.read().unwrap().clone()
    }
}

/// What every connection thread shares.
pub struct Shared {
    /// Served volumes; a handle is the position. A reload may add volumes at the end; none is
    /// removed while the server runs, so a handle never changes meaning.
    volumes: RwLock<Vec<Arc<VolumeHandle>>>,
    pub shutting_down: AtomicBool,
    pub tcp: Option<TcpAccess>,
}

impl Shared {
    /// Every served volume, in handle order.
    pub fn volumes(&self) -> Vec<Arc<VolumeHandle>> {
        self.volumes.read().unwrap().clone()
    }

    /// The volume with handle `vol`.
    pub fn volume(&self, vol: u32) -> Option<Arc<VolumeHandle>> {
        self.volumes.read().unwrap().get(vol as usize).cloned()
    }
}

/// A running server.
pub struct Server {
    shared: Arc<Shared>,
    socket: PathBuf,
    /// The TCP settings in force (a reload compares against them).
    tcp_config: Option<TcpConfig>,
}

/// Read the token and bind the TCP address.
fn bind_tcp(tcp: &TcpConfig) -> Result<(TcpListener, TcpAccess), ServerError> {
    let token =
        deskd_proto::transport::read_token_file(&tcp.token_file).map_err(ServerError::Config)?;
    let listener = TcpListener::bind(&tcp.listen).map_err(|e| ServerError::Tcp {
        addr: tcp.listen.clone(),
        message: e.to_string(),
    })?;
    Ok((
        listener,
        TcpAccess {
            token: RwLock::new(token),
            token_file: tcp.token_file.clone(),
            admin: tcp.admin,
            max_connections: tcp.max_connections,
            open: Arc::new(AtomicUsize::new(0)),
        },
    ))
}

/// One accepted connection to serve, and the TCP slot it holds while it lives.
type Accepted = (Stream, Peer, Option<TcpSlot>);

/// Serve every connection `next` yields, each on its own thread (`Ok(None)`: one that was
/// turned away).
fn spawn_acceptor(
    name: &str,
    shared: Arc<Shared>,
    mut next: impl FnMut() -> std::io::Result<Option<Accepted>> + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || loop {
            match next() {
                Ok(None) => {}
                Ok(Some((stream, peer, slot))) => {
                    let shared = shared.clone();
                    let spawned =
                        std::thread::Builder::new()
                            .name("conn".into())
                            .spawn(move || {
                                let _slot = slot;
                                conn::serve_connection(stream, peer, shared)
                            });
                    // The connection (and its slot) is dropped: the client sees it closed.
                    if let Err(e) = spawned {
                        error!("cannot start a thread for a connection: {e}");
                    }
                }
                Err(e) => {
                    error!("accept failed: {e}");
                    // Out of descriptors and the like: do not spin at full speed.
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        })
        .map(|_| ())
}

fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let err = |message: String| ServerError::Socket {
        path: path.to_path_buf(),
        message,
    };
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(err("another deskd is already serving on this socket".into()));
        }
        std::fs::remove_file(path).map_err(|e| err(format!("cannot remove stale socket: {e}")))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create directory: {e}")))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    // Anyone may connect: claims are verified and admin verbs check peer credentials.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| err(e.to_string()))?;
    Ok(listener)
}

impl Server {
    /// Open the volumes, bind the socket and start serving in background threads. Volumes that
    /// fail to open are logged and skipped; if none opens, start-up fails.
    pub fn start(config: Config) -> Result<Server, ServerError> {
        // A bad token file or a taken port stops the start before any desktop is opened.
        let tcp = config.tcp.as_ref().map(bind_tcp).transpose()?;
        let mut volumes = Vec::new();
        let mut failures = Vec::new();
        for vc in config.volumes {
            let root = vc.root.clone();
            match VolumeHandle::open(volumes.len() as u32, vc) {
                Ok(h) => volumes.push(h),
                Err(e) => {
                    error!("{e}");
                    failures.push(format!("{}: {e}", root.display()));
                }
            }
        }
        if volumes.is_empty() {
            return Err(ServerError::Volume(format!(
                "no volume could be opened: {}",
                failures.join("; ")
            )));
        }
        let listener = bind(&config.socket)?;
        let (tcp_listener, tcp_access) = tcp.unzip();
        let shared = Arc::new(Shared {
            volumes: RwLock::new(volumes),
            shutting_down: AtomicBool::new(false),
            tcp: tcp_access,
        });
        spawn_acceptor("accept", shared.clone(), move || {
            let (stream, _) = listener.accept()?;
            let uid = conn::peer_uid(&stream);
            Ok(Some((Stream::Unix(stream), Peer::Unix { uid }, None)))
        })
        .map_err(|e| ServerError::Socket {
            path: config.socket.clone(),
            message: e.to_string(),
        })?;
        if let Some(listener) = tcp_listener {
            let addr = listener.local_addr().map_err(|e| ServerError::Tcp {
                addr: format!("{:?}", config.tcp.as_ref().map(|t| &t.listen)),
                message: e.to_string(),
            })?;
            let access = shared.clone();
            let mut last_warning: Option<std::time::Instant> = None;
            spawn_acceptor("accept-tcp", shared.clone(), move || {
                let (stream, addr) = listener.accept()?;
                let tcp = access
                    .tcp
                    .as_ref()
                    .expect("a TCP listener has TCP settings");
                let Some(slot) = tcp.slot() else {
                    // Closed at once; said at most every 10 s, so a flood cannot fill the log.
                    if !matches!(last_warning, Some(t) if t.elapsed().as_secs() < 10) {
                        tracing::warn!(
                            "{addr}: refused: {} TCP connections are open \
                             (tcp_max_connections)",
                            tcp.max_connections
                        );
                        last_warning = Some(std::time::Instant::now());
                    }
                    return Ok(None);
                };
                if let Err(e) = deskd_proto::transport::tune_tcp(&stream) {
                    tracing::debug!("{addr}: cannot set TCP options: {e}");
                }
                Ok(Some((Stream::Tcp(stream), Peer::Tcp { addr }, Some(slot))))
            })
            .map_err(|e| ServerError::Tcp {
                addr: addr.to_string(),
                message: e.to_string(),
            })?;
            info!(
                "listening on tcp {addr} (token required; admin verbs {})",
                if shared.tcp.as_ref().is_some_and(|t| t.admin) {
                    "allowed"
                } else {
                    "refused"
                }
            );
        }
        info!(socket = %config.socket.display(), volumes = shared.volumes().len(), "deskd serving");
        Ok(Server {
            shared,
            socket: config.socket,
            tcp_config: config.tcp,
        })
    }

    /// How many volumes are served (those that failed to open are not).
    pub fn served_volumes(&self) -> usize {
        self.shared.volumes().len()
    }

    /// SIGHUP (HELIOS `srvutil reconf desksrv`): take the timer settings of a reloaded
    /// configuration (`new`), flush every volume that is not frozen, and re-read the TCP token
    /// file (a token that cannot be read keeps the old one). Settings that need a restart are
    /// named. Returns the problems and notes, each also logged.
    pub fn reconfigure(&self, new: Option<&Config>) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(new) = new {
            self.retime(new, &mut problems);
        }
        for handle in &self.shared.volumes() {
            if let Some(Err(e)) = handle.ask(Job::Flush) {
                // The writer's messages may already name the volume; name it once.
                let root = handle.volume.root().display().to_string();
                let why = e
                    .message
                    .strip_prefix(&format!("{root}: "))
                    .unwrap_or(&e.message);
                problems.push(format!("{root}: not flushed: {why}"));
            }
        }
        if let Some(tcp) = &self.shared.tcp {
            match deskd_proto::transport::read_token_file(&tcp.token_file) {
                Ok(token) => *tcp.token.write().unwrap() = token,
                Err(e) => problems.push(format!("{e}; the previous token stays in force")),
            }
        }
        for p in &problems {
            tracing::warn!("reconfigure: {p}");
        }
        info!(
            "reconfigured: {}desktops flushed{}",
            if new.is_some() {
                "settings reloaded, "
            } else {
                ""
            },
            if self.shared.tcp.is_some() {
                ", token file read"
            } else {
                ""
            }
        );
        problems
    }

    /// Hand each served volume its new timers; note what only a restart changes.
    fn retime(&self, new: &Config, notes: &mut Vec<String>) {
        let canonical = |v: &VolumeConfig| std::fs::canonicalize(&v.root).unwrap_or(v.root.clone());
        for handle in &self.shared.volumes() {
            let root = handle.volume.root();
            let Some(v) = new.volumes.iter().find(|v| canonical(v) == root) else {
                notes.push(format!(
                    "{}: no longer in the configuration; served until a restart",
                    root.display()
                ));
                continue;
            };
            let old = &handle.config;
            for (name, changed) in [
                ("read_only", v.read_only != old.read_only),
                ("durability", v.durability != old.durability),
                (
                    "desktop_location",
                    v.desktop_location != old.desktop_location,
                ),
            ] {
                if changed {
                    notes.push(format!(
                        "{}: {name} changes at the next start",
                        root.display()
                    ));
                }
            }
            handle.ask(|done| Job::Retime(v.clone(), done));
        }
        // Volumes new in the configuration are opened now, with the next handles. Only this
        // (the signal) thread adds volumes, so the handle stays free while the desktop opens
        // outside the lock.
        for v in &new.volumes {
            let served = self.shared.volumes();
            if served.iter().any(|h| canonical(v) == h.volume.root()) {
                continue;
            }
            match VolumeHandle::open(served.len() as u32, v.clone()) {
                Ok(handle) => {
                    info!("{}: now served", handle.volume.root().display());
                    self.shared.volumes.write().unwrap().push(handle);
                }
                Err(e) => notes.push(format!("{}: not served: {e}", v.root.display())),
            }
        }
        if new.tcp != self.tcp_config {
            notes.push(
                "listen, token_file, tcp_admin and tcp_max_connections change at the next start"
                    .into(),
            );
        }
    }

    /// Stop taking writes, commit what is queued, flush and mark every desktop clean.
    pub fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        for handle in &self.shared.volumes() {
            handle.ask(Job::Shutdown);
        }
        let _ = std::fs::remove_file(&self.socket);
        info!("deskd stopped cleanly");
    }
}
