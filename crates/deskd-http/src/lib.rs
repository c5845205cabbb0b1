//! deskd's HTTP side: Prometheus `/metrics`, the admin page (`/`), its JSON API
//! (`/api/status`, `/api/volumes/<name>/<action>`, `/api/jobs/<id>`) and the jobs the page's
//! long actions run.
//!
//! It lives beside the server, not inside it: it reads the metrics through a closure the
//! `deskd serve` wiring hands it, and every action goes through the server's own control
//! socket, as the server's uid, like `deskd flush` would; so every rule of the socket (who
//! may do what, the audit log) applies, and this crate depends on deskd-proto and
//! deskd-client only, never on deskd-server.
//!
//! One dedicated thread runs a single-threaded tokio runtime with hyper's HTTP/1 server:
//! 1,000 idle or slow connections are 1,000 small tasks, not threads; blocking work (a
//! socket request, the metrics text) goes to a small blocking pool, and jobs to threads of
//! their own, capped. Nothing here holds a lock the server's writer takes.

#![forbid(unsafe_code)]

mod api;
mod auth;
mod backup_dir;
mod control;
mod error;
mod jobs;
mod listener;
mod page;
mod routes;

use std::path::PathBuf;
use std::sync::Arc;

pub use auth::{AuthMode, Token};
pub use error::HttpError;
pub use listener::{Bound, HttpServer};

/// The Prometheus text, made fresh at each scrape; the argument says whether the request showed
/// the admin token (without it, a volume's activity figures are left out, as for a local user
/// who is not the volume's admin: docs/security.md, "A volume's activity figures: its admins'
/// only").
pub type MetricsFn = Arc<dyn Fn(bool) -> String + Send + Sync>;

/// What the HTTP side is told at start (resolved from `[server] http_*` and `backup_dir`).
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen (`HOST:PORT`).
    pub listen: String,
    /// Who must show the token.
    pub auth: AuthMode,
    /// The token file (`http_token_file`, else the TCP `token_file` when `tcp_admin = true`).
    pub token_file: PathBuf,
    /// Whether `token_file` is the TCP token (said in the clear-text warning).
    pub token_is_tcp: bool,
    /// Host names the `Host` header may carry besides IP addresses and `localhost`.
    pub hosts: Vec<String>,
    /// Most connections open at once; more are closed at once.
    pub max_connections: usize,
    /// The backup action's directory.
    pub backup_dir: Option<PathBuf>,
    /// The server's control socket the actions go through.
    pub socket: PathBuf,
    /// The exports of the volumes whose desktop is not an SQLite file (PostgreSQL): the
    /// backup action backs those up from their database, as `deskd backup --config` does.
    pub exports: ExportFor,
}

/// For a volume root (as the server shows it), an export of its desktop when that desktop is
/// in a database (PostgreSQL), else `None` (the SQLite `.Desktop` is copied).
#[derive(Clone)]
pub struct ExportFor(pub Arc<ExportFn>);

/// What [`ExportFor`] holds.
pub type ExportFn =
    dyn Fn(&std::path::Path) -> Option<Box<dyn deskd_backup::Export + Send>> + Send + Sync;

impl std::fmt::Debug for ExportFor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExportFor")
    }
}

/// Check the options, read the token and bind the address; serving starts with
/// [`Bound::serve`]. Every refusal is an [`HttpError`] that names what to fix.
pub fn bind(options: Options) -> Result<Bound, HttpError> {
    listener::bind(options)
}
