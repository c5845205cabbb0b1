//! The listener: checks at start, then one thread with a single-threaded tokio runtime that
//! accepts connections under a cap and serves each with hyper's HTTP/1, bounded in every
//! dimension a hostile peer controls (header size and time, body size and time, connection
//! count and lifetime).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Notify, Semaphore};

use crate::auth::Token;
use crate::backup_dir::BackupDir;
use crate::control::Control;
use crate::error::HttpError;
use crate::jobs::Jobs;
use crate::routes::{self, State};
use crate::{MetricsFn, Options};

/// A request's head (request line and headers) must arrive whole within this (slowloris); an
/// idle kept-alive connection is closed after it too.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of a request's head; more is answered 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most headers in a request.
const MAX_HEADERS: usize = 64;
/// A connection is asked to close after this long (a reader too slow to take its answers
/// holds its slot no longer), and dropped [`CLOSE_GRACE`] later.
const MAX_CONNECTION_LIFE: Duration = Duration::from_secs(120);
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// Threads for blocking work (socket requests, the metrics text).
const BLOCKING_THREADS: usize = 4;

/// A checked configuration with its address bound, not yet serving.
pub struct Bound {
    listener: std::net::TcpListener,
    runtime: tokio::runtime::Runtime,
    token: Token,
    /// `backup_dir`, opened and checked.
    backup_dir: Option<Arc<BackupDir>>,
    options: Options,
}

/// The running HTTP side; [`HttpServer::shutdown`] stops it.
pub struct HttpServer {
    state: Arc<State>,
    stop: Arc<Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
    addr: SocketAddr,
}

pub fn bind(options: Options) -> Result<Bound, HttpError> {
    let secret = deskd_proto::transport::read_server_token_file(&options.token_file)
        .map_err(HttpError::Token)?;
    let backup_dir = match &options.backup_dir {
        Some(dir) => Some(Arc::new(BackupDir::open(dir)?)),
        None => None,
    };
    let listener =
        std::net::TcpListener::bind(&options.listen).map_err(|error| HttpError::Bind {
            listen: options.listen.clone(),
            error,
        })?;
    listener
        .set_nonblocking(true)
        .map_err(|error| HttpError::Bind {
            listen: options.listen.clone(),
            error,
        })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("deskd-http")
        .build()
        .map_err(HttpError::Runtime)?;
    Ok(Bound {
        listener,
        runtime,
        token: Token::new(&secret),
        backup_dir,
        options,
    })
}

impl Bound {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Start serving on the HTTP thread, with `metrics` making `/metrics`' text.
    pub fn serve(self, metrics: MetricsFn) -> Result<HttpServer, HttpError> {
        let addr = self.local_addr();
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "http_listen {addr} is not a loopback address: whoever reaches it can read \
                 /metrics and /api/status{}; actions need the token{}, which crosses the \
                 network in clear text (put a TLS proxy in front)",
                match self.options.auth {
                    crate::AuthMode::All => " only with the token (http_auth = \"all\")",
                    crate::AuthMode::Actions => "",
                },
                if self.options.token_is_tcp {
                    format!(
                        " (the TCP token_file {}, which TCP never sends; an http_token_file \
                         of its own keeps it off the wire)",
                        self.options.token_file.display()
                    )
                } else {
                    format!(" (http_token_file {})", self.options.token_file.display())
                }
            );
        }
        let state = Arc::new(State {
            token: std::sync::RwLock::new(self.token),
            token_file: self.options.token_file.clone(),
            auth: self.options.auth,
            hosts: self.options.hosts.clone(),
            jobs: Jobs::new(
                Control::new(self.options.socket.clone()),
                self.backup_dir,
                self.options.exports.clone(),
            ),
            control: Control::new(self.options.socket.clone()),
            metrics,
            last_refusal_log: std::sync::Mutex::new(None),
            refusals_unlogged: Default::default(),
        });
        let stop = Arc::new(Notify::new());
        let max = self.options.max_connections;
        let listener = self.listener;
        let runtime = self.runtime;
        let thread = std::thread::Builder::new()
            .name("deskd-http".into())
            .spawn({
                let (stop, state) = (stop.clone(), state.clone());
                move || runtime.block_on(accept_loop(listener, state, max, stop))
            })
            .map_err(HttpError::Runtime)?;
        tracing::info!(
            "listening on http {addr} (actions need the token; reading {})",
            match self.options.auth {
                crate::AuthMode::All => "needs it too",
                crate::AuthMode::Actions => "is open",
            }
        );
        Ok(HttpServer {
            state,
            stop,
            thread: Some(thread),
            addr,
        })
    }
}

impl HttpServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Read the token file again (SIGHUP): a rotated token takes effect without a restart; an
    /// unusable file leaves the previous token in force.
    pub fn reload_token(&self) -> Result<(), HttpError> {
        let secret = deskd_proto::transport::read_server_token_file(&self.state.token_file)
            .map_err(HttpError::Token)?;
        *self.state.token.write().unwrap() = Token::new(&secret);
        Ok(())
    }

    /// Stop accepting and end the HTTP thread (open connections are dropped).
    pub fn shutdown(mut self) {
        self.stop.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    state: Arc<State>,
    max_connections: usize,
    stop: Arc<Notify>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("http: cannot serve: {e}");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.notified() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors, most likely: wait a little instead of spinning.
                tracing::warn!("http: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closed at once; said at most every 10 s so a flood cannot fill the log.
            if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(
                    "http: {peer}: refused: {max_connections} connections are open \
                     (http_max_connections)"
                );
                last_warning = Some(Instant::now());
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                routes::handle(state.clone(), peer, request)
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = tokio::time::sleep(MAX_CONNECTION_LIFE) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
                }
            }
        });
    }
}
