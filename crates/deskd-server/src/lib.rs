//! The deskd daemon.
//!
//! [`Server::start`] opens every configured volume ([`volume`]: desktop location, exclusive
//! lock, the `missing DB shutdown` line, a background logical check, one writer thread with
//! group commit and the flush/idle/WAL/freeze timers), binds the Unix socket and serves each
//! connection on its own thread ([`conn`]). Every client claim is verified against the file
//! system before the desktop changes ([`apply`]). [`Server::shutdown`] commits, flushes and
//! records the clean-shutdown flag on every volume.

pub mod apply;
pub mod config;
pub mod conn;
pub mod outbox;
pub mod rebuild;
pub mod volume;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tracing::{error, info};

pub use config::{Config, ConfigFile, VolumeConfig, VolumePrefs};
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
}

/// What every connection thread shares.
pub struct Shared {
    pub volumes: Vec<Arc<VolumeHandle>>,
    pub shutting_down: AtomicBool,
}

/// A running server.
pub struct Server {
    shared: Arc<Shared>,
    socket: PathBuf,
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
        let shared = Arc::new(Shared {
            volumes,
            shutting_down: AtomicBool::new(false),
        });
        let accept_shared = shared.clone();
        std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    match stream {
                        Ok(stream) => {
                            let shared = accept_shared.clone();
                            let _ = std::thread::Builder::new()
                                .name("conn".into())
                                .spawn(move || conn::serve_connection(stream, shared));
                        }
                        Err(e) => error!("accept failed: {e}"),
                    }
                }
            })
            .map_err(|e| ServerError::Socket {
                path: config.socket.clone(),
                message: e.to_string(),
            })?;
        info!(socket = %config.socket.display(), volumes = shared.volumes.len(), "deskd serving");
        Ok(Server {
            shared,
            socket: config.socket,
        })
    }

    /// Stop taking writes, commit what is queued, flush and mark every desktop clean.
    pub fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        for handle in &self.shared.volumes {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if handle.queue.send(Job::Shutdown(tx)).is_ok() {
                let _ = rx.recv();
            }
        }
        let _ = std::fs::remove_file(&self.socket);
        info!("deskd stopped cleanly");
    }
}
