//! `deskd`'s connection options by kind of verb, so that each verb's `--help` lists only what
//! applies to it: the client verbs (they ask a running deskd) take [`ClientOptions`], `deskd
//! serve` takes [`ServeOptions`] (where to listen, not where to connect), and the offline verbs
//! (backup, verify, restore: files only) take none. The options may also come before the verb
//! ([`BeforeVerb`], the spelling of earlier versions: `deskd --socket S status`); there they are
//! accepted for a verb that takes them and refused, with a clear error, for one that does not.
//!
//! The environment (`$DESKD_TOKEN_FILE`, `$DESKD_CLIENT_TIMEOUT`) is read here rather than by
//! clap, so that an option on the command line wins over it wherever the option was written.

use std::ffi::OsString;
use std::path::PathBuf;

use super::{parse_timeout, ConnectionArgs};

/// The options of a verb that asks a running deskd (listed apart in its `--help`).
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Connection to deskd")]
pub struct ClientOptions {
    /// The deskd to ask: its socket path, or tcp://HOST:PORT for a deskd listening on TCP
    /// (default: $DESKD_SOCKET, else /run/deskd/deskd.sock for root, else
    /// $XDG_RUNTIME_DIR/deskd.sock, else /tmp/deskd-UID/deskd.sock).
    #[arg(long, value_name = "SOCKET")]
    pub socket: Option<PathBuf>,
    /// File holding the shared token a deskd on TCP asks for (default: $DESKD_TOKEN_FILE).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Seconds to wait for each answer of deskd before giving up (default:
    /// $DESKD_CLIENT_TIMEOUT, else 60).
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout)]
    pub timeout: Option<f64>,
}

/// The options of `deskd serve` that name a socket and a token file: its own.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeOptions {
    /// The Unix socket to listen on (default: `socket` in [server] of --config, else
    /// $DESKD_SOCKET, else /run/deskd/deskd.sock for root, else $XDG_RUNTIME_DIR/deskd.sock,
    /// else /tmp/deskd-UID/deskd.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// For TCP (--listen, or `listen` in [server]): the file holding the token TCP clients
    /// must prove (default: $DESKD_TOKEN_FILE, else `token_file` in [server]).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// The same options written before the verb; hidden from `deskd --help` (each verb lists its
/// own). None of them is global: a verb's `--help` never lists one that does not apply.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BeforeVerb {
    #[arg(long, hide = true)]
    pub socket: Option<PathBuf>,
    #[arg(long, hide = true)]
    pub token_file: Option<PathBuf>,
    #[arg(long, hide = true, value_parser = parse_timeout)]
    pub timeout: Option<f64>,
}

/// An option before the verb that the verb does not take, or a bad environment value.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VerbOptionError {
    #[error(
        "{option} does not apply to `deskd {verb}`: it {what} and asks no running deskd \
         (see `deskd {verb} --help`)"
    )]
    NotForVerb {
        option: &'static str,
        verb: &'static str,
        what: &'static str,
    },
    #[error(
        "--timeout does not apply to `deskd serve`: it is how long a client waits for deskd \
         (the server's own timers are in the [server] and [defaults] tables of --config)"
    )]
    TimeoutOnServe,
    #[error("$DESKD_CLIENT_TIMEOUT={value}: {why}")]
    Environment { value: String, why: String },
}

/// A variable of the environment, unset when empty (as clap's `env` reads it).
fn env_var(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

impl BeforeVerb {
    /// A client verb's connection: its own option, else the one before the verb, else the
    /// environment (the socket's default rule is [`ConnectionArgs::endpoint`]'s).
    pub fn client(self, own: ClientOptions) -> Result<ConnectionArgs, VerbOptionError> {
        let timeout = match own.timeout.or(self.timeout) {
            Some(t) => Some(t),
            None => match env_var("DESKD_CLIENT_TIMEOUT") {
                None => None,
                Some(v) => {
                    let value = v.to_string_lossy().into_owned();
                    Some(
                        parse_timeout(&value)
                            .map_err(|why| VerbOptionError::Environment { value, why })?,
                    )
                }
            },
        };
        Ok(ConnectionArgs {
            socket: own.socket.or(self.socket),
            token_file: own
                .token_file
                .or(self.token_file)
                .or_else(|| env_var("DESKD_TOKEN_FILE").map(PathBuf::from)),
            timeout,
        })
    }

    /// `deskd serve`'s socket and token file; `--timeout` before it is refused.
    pub fn serve(self, own: ServeOptions) -> Result<ServeOptions, VerbOptionError> {
        if self.timeout.is_some() {
            return Err(VerbOptionError::TimeoutOnServe);
        }
        Ok(ServeOptions {
            socket: own.socket.or(self.socket),
            token_file: own
                .token_file
                .or(self.token_file)
                .or_else(|| env_var("DESKD_TOKEN_FILE").map(PathBuf::from)),
        })
    }

    /// An offline verb (`what` it works on, for the message) takes none of these.
    pub fn offline(self, verb: &'static str, what: &'static str) -> Result<(), VerbOptionError> {
        let given = [
            (self.socket.is_some(), "--socket"),
            (self.token_file.is_some(), "--token-file"),
            (self.timeout.is_some(), "--timeout"),
        ];
        match given.iter().find(|(set, _)| *set) {
            Some((_, option)) => Err(VerbOptionError::NotForVerb { option, verb, what }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verb_s_own_option_wins_over_the_one_before_it() {
        let before = BeforeVerb {
            socket: Some("before.sock".into()),
            token_file: Some("before.token".into()),
            timeout: Some(5.0),
        };
        let own = ClientOptions {
            socket: Some("own.sock".into()),
            token_file: None,
            timeout: Some(1.0),
        };
        let c = before.clone().client(own).unwrap();
        assert_eq!(c.socket, Some("own.sock".into()));
        assert_eq!(c.token_file, Some("before.token".into()));
        assert_eq!(c.timeout, Some(1.0));
        let e = before.offline("verify", "reads a backup file").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--socket does not apply to `deskd verify`: it reads a backup file and asks no \
             running deskd (see `deskd verify --help`)"
        );
        assert_eq!(
            BeforeVerb::default()
                .offline("verify", "reads a backup file")
                .ok(),
            Some(())
        );
    }
}
