//! The deskd daemon.
//!
//! [`Server::start`] opens every configured volume (`volume`: where the desktop is,
//! `location`; its exclusive lock, `desktop_lock`; the `missing DB shutdown` line; the
//! name-index load and logical check off the start-up path, `background`), starts one writer
//! thread per volume (`writer`: group commit and the flush/idle/WAL/freeze timers), binds the
//! Unix socket (and, when configured, a TCP address whose clients must prove they hold a shared
//! token) and serves each connection on its own thread (`conn`), within the connection limits
//! and frame timeout of `limits`. What the connection threads share is in `shared`. A
//! desktop on a full file system is served read-only, and no commit takes the space its
//! checkpoint needs (`space`). Every client claim is verified against the file system before
//! the desktop changes (`apply`). Online rebuilds run beside the writer (`rebuild`). A
//! SIGHUP's reload (`reload`) applies a new configuration to the running server. The figures
//! the hot paths record (`figures`) become the Prometheus text of [`Server::metrics_text`]
//! (`metrics`), read without waiting for any writer.
//! [`Server::shutdown`] commits, flushes and records the clean-shutdown flag on every volume.

#![deny(clippy::undocumented_unsafe_blocks)]

// Private modules: the CLI needs only [`Server`], its configuration and [`ServerError`].
// Dependencies point one way (checked by the unit test in module_graph.rs): conn → writer, volume →
// writer, rebuild → volume; the writer knows no connection (it answers through
// [`writer::ReplyTo`]) and no volume handle.
mod access;
mod allocator;
mod apply;
mod audit;
mod autorepair;
mod background;
mod clients;
mod config;
mod conn;
mod db_reply;
mod desktop_lock;
mod error;
mod figures;
mod folders;
mod hints;
mod limits;
mod local_time;
mod location;
mod mapped_reader;
mod memory;
mod metrics;
mod mmap_budget;
#[cfg(test)]
mod module_graph;
mod outbox;
mod pg_volume;
mod preflight;
mod private_temp;
mod read_cache;
mod rebuild;
mod reload;
mod retry;
mod scrape_cache;
mod shared;
mod sight;
mod space;
#[cfg(test)]
mod test_support;
mod volume;
mod walk;
mod watch;
mod withheld;
mod writer;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use deskd_proto::Stream;
use tracing::{error, info};

pub use config::{
    Config, ConfigFile, HttpAuth, HttpConfig, NetatalkPrefs, TcpConfig, VolumeConfig, VolumePrefs,
};
pub use conn::InProcessConnection;
use conn::Peer;
pub use error::{ServerError, VolumeFailure};
pub use metrics::MetricsSource;
use shared::{Shared, Slot, TcpAccess, TcpSlot};
use volume::VolumeHandle;
use writer::Job;

/// A running server.
pub struct Server {
    shared: Arc<Shared>,
    socket: PathBuf,
    /// The TCP address listened on, if any (only a restart changes it).
    tcp_listen: Option<String>,
}

/// Makes [`InProcessConnection`]s to a running server, from any thread.
#[derive(Clone)]
pub struct InProcessConnector(Arc<Shared>);

impl InProcessConnector {
    /// A new connection whose peer is the server's own user (see [`InProcessConnection`]),
    /// listed among the clients (`deskd status`, the audit log) as `who` (untrusted text: it is
    /// escaped where shown).
    pub fn connect_as(&self, who: &str) -> InProcessConnection {
        InProcessConnection::new(self.0.clone(), who)
    }
}

/// Read the token and bind the TCP address.
fn bind_tcp(tcp: &TcpConfig) -> Result<(TcpListener, TcpAccess), ServerError> {
    let token = deskd_proto::transport::read_server_token_file(&tcp.token_file)
        .map_err(|source| ServerError::TokenFile { source })?;
    let listener = TcpListener::bind(&tcp.listen).map_err(|source| ServerError::Tcp {
        addr: tcp.listen.clone(),
        source,
    })?;
    Ok((
        listener,
        TcpAccess {
            token: RwLock::new(token),
            token_file: RwLock::new(tcp.token_file.clone()),
            admin: AtomicBool::new(tcp.admin),
            max_connections: AtomicUsize::new(tcp.max_connections),
            open: Arc::new(AtomicUsize::new(0)),
        },
    ))
}

/// What a connection holds while it lives: its place under a connection limit, given back
/// when the slot is dropped (it is held, never read).
#[allow(dead_code)]
enum ConnSlot {
    Unix(limits::UnixSlot),
    Tcp(TcpSlot),
}

/// One accepted connection to serve, and the slot it holds while it lives.
type Accepted = (Stream, Peer, ConnSlot);

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

/// Turn away a Unix connection over a limit: the handshake status that says which limit (sent
/// before the client's hello is read; a fresh socket's buffer always takes the 8 bytes, and
/// the write never waits), then the connection is closed. Logged at most every 10 s.
fn refuse_unix(stream: &UnixStream, refusal: limits::Refusal, log: &limits::RateLimited) {
    use std::io::Write;
    let _ = stream.set_nonblocking(true);
    let _ = (&*stream).write(&deskd_proto::server_hello(refusal.status()));
    if log.now() {
        tracing::warn!("refused a connection: {refusal}");
    }
}

fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let err = |step: &'static str| {
        move |source| ServerError::Socket {
            path: path.to_path_buf(),
            step,
            source,
        }
    };
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ServerError::SocketTaken {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(err("cannot remove stale socket: "))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err("cannot create directory: "))?;
    }
    let listener = UnixListener::bind(path).map_err(err(""))?;
    // Anyone may connect: claims are verified and admin verbs check peer credentials.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(err(""))?;
    Ok(listener)
}

impl Server {
    /// Check the volumes, bind the socket, open the volumes and start serving in background
    /// threads. Every check (the TCP token and port, each volume's root, nesting and desktop
    /// format, the socket) comes before any desktop is opened or created. Volumes that fail
    /// their checks or to open are logged and skipped; if none is left, start-up fails.
    pub fn start(config: Config) -> Result<Server, ServerError> {
        // Before any thread allocates: large buffers are mapped on their own (allocator.rs).
        allocator::configure();
        // A bad token file or a taken port stops the start before any desktop is opened.
        let tcp = config.tcp.as_ref().map(bind_tcp).transpose()?;
        // Temporary desktops and copies a server of this uid left when it died uncleanly.
        private_temp::remove_leftovers();
        // Before any desktop is opened: the volumes' first readers draw from it.
        mmap_budget::global().set_total(config.mmap_total);
        let roots = preflight::canonical_roots(&config.volumes);
        let mut failures = Vec::new();
        // (root, why) of each volume not served, for `deskd status`.
        let mut refused = Vec::new();
        let mut checked = Vec::new();
        for (i, vc) in config.volumes.into_iter().enumerate() {
            let others: Vec<PathBuf> = roots
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .filter_map(|(_, r)| r.clone())
                .collect();
            match preflight::check_volume(&vc, &others) {
                Ok(()) => checked.push(vc),
                Err(e) => {
                    error!("{e}");
                    refused.push((vc.root.clone(), e.to_string()));
                    failures.push(VolumeFailure::Check(e));
                }
            }
        }
        if checked.is_empty() {
            return Err(ServerError::NoVolumeOpened { failures });
        }
        let listener = bind(&config.socket)?;
        let mut volumes = Vec::new();
        // (root, why, settings) of each volume refused at its opening; the settings when it
        // is tried again as the database comes back (crate::retry).
        let mut retried = Vec::new();
        for vc in checked {
            let root = vc.root.clone();
            match VolumeHandle::open(volumes.len() as u32, vc.clone()) {
                Ok(h) => volumes.push(Slot::Served(h)),
                Err(e) => {
                    error!("{e}");
                    retried.push((root.clone(), e.to_string(), e.retried().then_some(vc)));
                    failures.push(VolumeFailure::Open { root, error: e });
                }
            }
        }
        if volumes.is_empty() {
            let _ = std::fs::remove_file(&config.socket);
            return Err(ServerError::NoVolumeOpened { failures });
        }
        let (tcp_listener, tcp_access) = tcp.unzip();
        let server_uid = rustix::process::geteuid().as_raw();
        let shared = Arc::new(Shared {
            volumes: RwLock::new(volumes),
            closings: AtomicU64::new(0),
            rebuilds: rebuild::Registry::default(),
            clients: Arc::default(),
            shutting_down: AtomicBool::new(false),
            tcp: tcp_access,
            limits: Arc::new(limits::ConnectionLimits::new(config.limits, server_uid)),
            metrics: scrape_cache::ScrapeCache::new(),
            watchers: watch::Registry::default(),
            not_served: Default::default(),
            changing_list: Default::default(),
            retrying: AtomicBool::new(false),
        });
        for (root, why) in refused {
            shared.refuse(&root, why, None);
        }
        for (root, why, config) in retried {
            match config {
                Some(config) => retry::refused(&shared, &root, why, config),
                None => shared.refuse(&root, why, None),
            }
        }
        for handle in shared.volumes() {
            shared.watch_moved_out(&handle);
            autorepair::watch(&shared.rebuilds, &handle);
            watch::start(&shared.watchers, &shared.rebuilds, &handle);
        }
        let limits = shared.limits.clone();
        let refusals = limits::RateLimited::new(Duration::from_secs(10));
        spawn_acceptor("accept", shared.clone(), move || {
            let (stream, _) = listener.accept()?;
            // The uid decides the slot; the rest of the credentials the connection's own
            // thread asks the kernel for.
            let cred = access::peer_ucred(&stream).ok();
            let (uid, pid) = (cred.map(|c| c.uid), cred.map_or(0, |c| c.pid));
            match limits.admit(uid, pid) {
                Ok(slot) => Ok(Some((
                    Stream::Unix(stream),
                    Peer::Unix { uid },
                    ConnSlot::Unix(slot),
                ))),
                Err(refusal) => {
                    refuse_unix(&stream, refusal, &refusals);
                    Ok(None)
                }
            }
        })
        .map_err(|source| ServerError::Socket {
            path: config.socket.clone(),
            step: "",
            source,
        })?;
        if let Some(listener) = tcp_listener {
            let addr = listener.local_addr().map_err(|source| ServerError::Tcp {
                addr: format!("{:?}", config.tcp.as_ref().map(|t| &t.listen)),
                source,
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
                            tcp.max_connections()
                        );
                        last_warning = Some(std::time::Instant::now());
                    }
                    return Ok(None);
                };
                if let Err(e) = deskd_proto::transport::tune_tcp(&stream) {
                    tracing::debug!("{addr}: cannot set TCP options: {e}");
                }
                Ok(Some((
                    Stream::Tcp(stream),
                    Peer::Tcp { addr },
                    ConnSlot::Tcp(slot),
                )))
            })
            .map_err(|source| ServerError::Tcp {
                addr: addr.to_string(),
                source,
            })?;
            info!(
                "listening on tcp {addr} (token required; admin verbs {})",
                if shared.tcp.as_ref().is_some_and(|t| t.admin()) {
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
            tcp_listen: config.tcp.map(|t| t.listen),
        })
    }

    /// Say in the audit log (`deskd::audit`) that the process `pid` of `uid` sent `what` (a
    /// signal: `reload (SIGHUP)`), once per served volume, as for the admin verbs; `None`: the
    /// kernel did not say who (the terminal, the kernel itself).
    pub fn audit_signal(&self, what: &str, sender: Option<(u32, i32)>) {
        let who = match sender {
            Some((uid, pid)) => clients::Client::local(Some(uid), pid).who,
            None => "an unknown sender".into(),
        };
        for handle in self.shared.volumes() {
            audit::log(&who, handle.volume.root(), what);
        }
    }

    /// What makes connections from inside this process ([`InProcessConnection`]), for the
    /// front ends `deskd serve` runs itself (the afpd CNID listener).
    pub fn in_process(&self) -> InProcessConnector {
        InProcessConnector(self.shared.clone())
    }

    /// Every figure of every served volume in the Prometheus text format (what `GET /metrics`
    /// serves). Never waits for a writer: a freeze or a long rebuild does not delay it.
    pub fn metrics_text(&self) -> String {
        self.metrics().text()
    }

    /// A cheap, cloneable handle whose [`MetricsSource::text`] gives [`Server::metrics_text`]
    /// from any thread, for as long as the process runs.
    pub fn metrics(&self) -> MetricsSource {
        MetricsSource::new(self.shared.clone())
    }

    /// How many volumes are served (those that failed to open are not).
    pub fn served_volumes(&self) -> usize {
        self.shared.volumes().len()
    }

    /// Stop taking writes, commit what is queued, flush and mark every desktop clean.
    pub fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        // A volume crate::retry is opening is in the list before its writer is asked to stop.
        let _changing = self.shared.changing_list.lock().unwrap();
        // The watchers first: what they have read is applied before the writers stop.
        watch::stop_all(&self.shared.watchers);
        for handle in &self.shared.volumes() {
            handle.ask(Job::Shutdown);
        }
        let _ = std::fs::remove_file(&self.socket);
        // Every audit line of what was committed is in the log before the process ends.
        audit::drain();
        info!("deskd stopped cleanly");
    }
}
