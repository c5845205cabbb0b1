//! The `--socket`, `--token-file` and `--timeout` options every client verb has, and how they
//! resolve; [`verbs`]: `deskd`'s, by kind of verb.

pub mod verbs;

use std::path::PathBuf;
use std::time::Duration;

use deskd_client::{Client, ClientError};
use deskd_proto::Endpoint;

/// Where the server is and how long to wait for it (flattened into each tool's options).
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectionArgs {
    /// Socket path, or tcp://HOST:PORT for a deskd listening on TCP (default: $DESKD_SOCKET,
    /// else /run/deskd/deskd.sock for root, else $XDG_RUNTIME_DIR/deskd.sock, else
    /// /tmp/deskd-UID/deskd.sock).
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// File holding the shared token a deskd on TCP asks for.
    #[arg(long, global = true, env = "DESKD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Seconds to wait for deskd before giving up; then a volume counts as read-only
    /// (default: $DESKD_CLIENT_TIMEOUT, else 60).
    #[arg(long, global = true, env = "DESKD_CLIENT_TIMEOUT", value_parser = parse_timeout)]
    pub timeout: Option<f64>,
}

/// A `--timeout` (or `$DESKD_CLIENT_TIMEOUT`) value: a number of seconds. Zero and negative
/// numbers pass (they mean the default); `inf`, NaN and numbers past what a `Duration` holds
/// are refused here, as a clear usage error, instead of panicking when the timeout is made.
pub fn parse_timeout(value: &str) -> Result<f64, String> {
    let secs: f64 = value
        .trim()
        .parse()
        .map_err(|e| format!("not a number of seconds: {e}"))?;
    if secs > 0.0 && deskd_client::timeout_secs(secs).is_none() || secs.is_nan() {
        return Err(format!(
            "{value}: not a number of seconds a timeout can wait (give a finite number of \
             seconds, at most {})",
            u64::MAX
        ));
    }
    Ok(secs)
}

/// Where a client connects and with what: resolved once, used for every connection.
#[derive(Debug, Clone)]
pub struct ServerAddress {
    pub endpoint: Endpoint,
    /// Which part of the socket rule gave `endpoint`, named when nothing answers there.
    pub chosen_by: SocketChoice,
    pub token_file: Option<PathBuf>,
    pub timeout: Duration,
}

impl ServerAddress {
    /// Connect and handshake. A TCP endpoint needs the token file; its errors name the file.
    pub fn connect(&self) -> Result<Client, ClientError> {
        let token = match (&self.endpoint, &self.token_file) {
            (Endpoint::Tcp(_), Some(path)) => {
                Some(deskd_proto::transport::read_token_file(path).map_err(ClientError::Token)?)
            }
            _ => None,
        };
        Client::connect_to(&self.endpoint, token.as_deref(), self.timeout).map_err(|e| match e {
            ClientError::Connect {
                endpoint,
                source,
                hint,
                ..
            } => ClientError::Connect {
                endpoint,
                chosen_by: self.chosen_by.explained(),
                source,
                hint,
            },
            other => other,
        })
    }
}

/// The socket rule all deskd programs share, in the words of the `cannot connect` message.
const SOCKET_RULE: &str = "the socket is --socket, else $DESKD_SOCKET, else \
                           /run/deskd/deskd.sock for root and $XDG_RUNTIME_DIR/deskd.sock (or \
                           /tmp/deskd-<uid>/deskd.sock) for other users";

/// Which part of the socket rule chose the server's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketChoice {
    /// `--socket` on the command line.
    Option,
    /// `$DESKD_SOCKET`.
    Environment,
    /// Neither: the default for the user.
    Default,
}

impl SocketChoice {
    /// ` (from …; <the rule>)`, for the `cannot connect` message: a user who did not know
    /// where the tool looked learns it, and how to point it elsewhere.
    fn explained(self) -> String {
        let from = match self {
            SocketChoice::Option => "from --socket",
            SocketChoice::Environment => "from $DESKD_SOCKET",
            SocketChoice::Default => "the default: neither --socket nor $DESKD_SOCKET is set",
        };
        format!(" ({from}; {SOCKET_RULE})")
    }
}

impl ConnectionArgs {
    /// Where the server is, by the rule all deskd programs share.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::resolve(self.socket.as_deref().map(|p| p.as_os_str()))
    }

    /// Whether the user set a timeout (`--timeout` or `$DESKD_CLIENT_TIMEOUT`).
    pub fn timeout_given(&self) -> bool {
        self.timeout.is_some_and(|t| t > 0.0)
    }

    /// The client timeout: `--timeout`, else `$DESKD_CLIENT_TIMEOUT`, else 60 s.
    pub fn timeout(&self) -> Duration {
        self.timeout
            .filter(|t| *t > 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or_else(deskd_client::default_timeout)
    }

    /// Which part of the socket rule [`ConnectionArgs::endpoint`] takes the address from.
    pub fn socket_choice(&self) -> SocketChoice {
        if self.socket.is_some() {
            SocketChoice::Option
        } else if std::env::var_os("DESKD_SOCKET").is_some_and(|v| !v.is_empty()) {
            SocketChoice::Environment
        } else {
            SocketChoice::Default
        }
    }

    /// Endpoint, token file and timeout together.
    pub fn address(&self) -> ServerAddress {
        ServerAddress {
            endpoint: self.endpoint(),
            chosen_by: self.socket_choice(),
            token_file: self.token_file.clone(),
            timeout: self.timeout(),
        }
    }

    /// Connect to the server these options name.
    pub fn connect(&self) -> Result<Client, ClientError> {
        self.address().connect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_no_duration_holds_is_a_usage_error() {
        assert_eq!(parse_timeout("2.5"), Ok(2.5));
        assert_eq!(parse_timeout("0"), Ok(0.0));
        assert!(parse_timeout("soon").is_err());
        for bad in ["inf", "infinity", "NaN", "1e30"] {
            let e = parse_timeout(bad).unwrap_err();
            assert!(e.contains("finite"), "{bad}: {e}");
        }
    }
}
