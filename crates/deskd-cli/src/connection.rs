//! The `--socket` and `--timeout` options every client verb has, and how they resolve.

use std::path::PathBuf;
use std::time::Duration;

/// Where the server is and how long to wait for it (flattened into each tool's options).
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectionArgs {
    /// Socket path (default: $DESKD_SOCKET, else /run/deskd/deskd.sock for root, else
    /// $XDG_RUNTIME_DIR/deskd.sock).
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// Seconds to wait for deskd before giving up; then a volume counts as read-only.
    #[arg(long, global = true, env = "DESKD_CLIENT_TIMEOUT")]
    pub timeout: Option<f64>,
}

impl ConnectionArgs {
    /// The socket path by the rule all deskd programs share.
    pub fn socket_path(&self) -> PathBuf {
        deskd_proto::socket_path(self.socket.clone())
    }

    /// The client timeout: `--timeout`, else `$DESKD_CLIENT_TIMEOUT`, else 60 s.
    pub fn timeout(&self) -> Duration {
        self.timeout
            .filter(|t| *t > 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or_else(deskd_client::default_timeout)
    }
}
