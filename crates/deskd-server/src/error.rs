//! Why the server, or one of its volumes, could not start: one variant per thing that failed,
//! with the error underneath as its source. The messages are the ones the log and `deskd
//! serve` have always printed (tests and HELIOS-trained administrators read them), so each
//! variant's text is spelled out here rather than built where it fails. Large sources are
//! boxed: every `Result` of the start-up path carries this type.

use std::io;
use std::path::PathBuf;

use deskd_volume::guard;

/// Errors that stop the server or a volume from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration file could not be read.
    // The cause is in the message and not a `source`: a reporter printing the chain (anyhow's
    // `{:#}`) would print TOML's whole multi-line message twice.
    #[error("configuration: {}: {error}", path.display())]
    ConfigRead { path: PathBuf, error: io::Error },
    /// The configuration file is not valid TOML for deskd.
    #[error("configuration: {}: {error}", path.display())]
    ConfigSyntax {
        path: PathBuf,
        error: Box<toml::de::Error>,
    },
    /// A volume's `freeze_max` is 0.
    #[error("configuration: {}: freeze_max must be at least 1 second", root.display())]
    FreezeMaxZero { root: PathBuf },
    /// A volume's `watch_held_mib` is outside 1–4096.
    #[error(
        "configuration: {}: watch_held_mib = {mib}: give 1 to 4096 (MiB of events the watcher \
         may hold unread)",
        root.display()
    )]
    WatchHeldMib { root: PathBuf, mib: u64 },
    /// A volume's `backend` names both a password file and a password variable.
    #[error(
        "configuration: {}: backend_password_file and backend_password_env: give one",
        root.display()
    )]
    BackendPassword { root: PathBuf },
    /// A volume's PostgreSQL desktop could not be opened (no connection, a refused login, a
    /// newer format, another volume's name or identity). The cause is in the message, which
    /// names the database as `user@host:port/db`; the configured target is not shown (it
    /// may hold a password, which is refused without being echoed).
    #[error("{}: desktop in PostgreSQL: {message}", root.display())]
    PgOpen { root: PathBuf, message: String },
    /// A volume whose SQLite desktop holds objects and whose root has no mark (it may need
    /// `deskd migrate` first) while the database cannot be reached to say whether it holds
    /// the volume: not served for now, and opened again as the database comes back
    /// ([`ServerError::retried`]).
    #[error("{}: desktop in PostgreSQL: {message}", root.display())]
    PgUnchecked { root: PathBuf, message: String },
    /// An SQLite desktop was asked for a volume whose desktop is in PostgreSQL (its root's
    /// mark, `deskd_volume::BACKEND_XATTR`).
    #[error("{0}")]
    InPostgresql(String),
    /// Neither the command line nor the file names a volume.
    #[error(
        "configuration: no volumes: name them on the command line or in [volume.\"<path>\"] tables"
    )]
    NoVolumes,
    /// `listen` without `token_file`.
    #[error(
        "configuration: listen needs token_file: TCP clients must prove they hold a shared token"
    )]
    ListenWithoutToken,
    /// `http_listen` without a token: the admin page's actions need one.
    #[error(
        "configuration: http_listen needs http_token_file (or token_file with tcp_admin = \
         true): the admin page's actions need a token"
    )]
    HttpWithoutToken,
    /// `http_listen` with `token_file` only, while `tcp_admin = false`: the TCP token's holders
    /// would get over HTTP the admin verbs TCP refuses them.
    #[error(
        "configuration: http_listen needs http_token_file: token_file's holders may not run \
         admin verbs (tcp_admin = false)"
    )]
    HttpTokenNotAdmin,
    /// The TCP token file is unusable (missing, readable by others, too short). The reason is
    /// part of the message, not a `source`, so anyhow's `{:#}` does not print it twice.
    #[error("configuration: {source}")]
    TokenFile {
        /// Why the file cannot be used.
        source: deskd_proto::transport::TokenFileError,
    },
    /// Another server answers on the socket.
    #[error("socket {}: another deskd is already serving on this socket", path.display())]
    SocketTaken { path: PathBuf },
    /// The socket could not be set up; `step` says which part (empty for the bind itself).
    #[error("socket {}: {step}{source}", path.display())]
    Socket {
        path: PathBuf,
        step: &'static str,
        source: io::Error,
    },
    /// The TCP address could not be bound or served.
    #[error("tcp {addr}: {source}")]
    Tcp { addr: String, source: io::Error },
    /// Every volume failed its checks or to open: each one's error.
    #[error("no volume could be opened: {}", joined(failures))]
    NoVolumeOpened { failures: Vec<VolumeFailure> },

    /// The volume root cannot be resolved.
    #[error("{}: {source}", root.display())]
    RootUnresolved { root: PathBuf, source: io::Error },
    /// The volume root is not usable as one.
    #[error("{}: {source}", root.display())]
    Root {
        root: PathBuf,
        source: deskd_volume::VolumeError,
    },
    /// The volume root is not a directory.
    #[error("{}: not a directory", root.display())]
    NotADirectory { root: PathBuf },
    /// The volume root is world-writable and `world_writable` does not allow it.
    #[error("{}", guard::world_writable_message(root))]
    WorldWritable { root: PathBuf },
    /// The volume lies inside another volume (`outer`) and is not served `nested`.
    #[error("{}", guard::inside_message(root, outer))]
    InsideVolume { root: PathBuf, outer: PathBuf },
    /// Another volume (`inner`) lies inside this one, which is not served `nested`.
    #[error("{}", guard::around_message(root, inner))]
    AroundVolume { root: PathBuf, inner: PathBuf },
    /// The root's `.Desktop` relocation link cannot be read (HELIOS's words).
    #[error("OpenDesk {}: Miscellaneous error ({source})", root.display())]
    DesktopLink { root: PathBuf, source: io::Error },
    /// The relocated desktop's directory is missing (HELIOS's words).
    #[error("OpenDesk {}: Miscellaneous error", root.display())]
    RelocationMissing { root: PathBuf },
    /// The directory `desktop_location` asks for cannot be made.
    #[error("{}: cannot create desktop directory: {source}", dir.display())]
    DesktopDir { dir: PathBuf, source: io::Error },
    /// The relocation symlink cannot be made.
    #[error("{}: cannot create symlink: {source}", link.display())]
    DesktopSymlink { link: PathBuf, source: io::Error },
    /// A private directory for a temporary desktop cannot be made in the temp directory.
    #[error("{}: cannot make a private directory for a temporary desktop: {source}", dir.display())]
    PrivateDir { dir: PathBuf, source: io::Error },
    /// The copy of a read-only volume's desktop cannot be made.
    #[error("{}: {source}", path.display())]
    DesktopCopy { path: PathBuf, source: io::Error },
    /// The desktop file cannot be opened to be locked, or looked at once locked.
    #[error("{}: cannot open desktop: {source}", path.display())]
    DesktopLock { path: PathBuf, source: io::Error },
    /// The locked desktop's owner cannot be read.
    #[error("{}: {source}", path.display())]
    DesktopMetadata { path: PathBuf, source: io::Error },
    /// Another process holds the desktop's lock (HELIOS's words).
    #[error("{}: Warning, desktop DB busy by another process", root.display())]
    DesktopBusy { root: PathBuf },
    /// The desktop belongs to someone who may not have made it.
    #[error(
        "{}: the desktop {} is owned by uid {owner}, which is neither root, deskd's user \
         (uid {me}) nor the volume owner; someone else made it, so it is not used (move it \
         away and serve the volume again)",
        root.display(),
        path.display()
    )]
    DesktopOwner {
        root: PathBuf,
        path: PathBuf,
        owner: u32,
        me: u32,
    },
    /// The desktop database cannot be opened.
    #[error("{}: cannot open desktop{}", root.display(), once(path, source))]
    DesktopOpen {
        root: PathBuf,
        path: PathBuf,
        source: Box<deskd_db::DbError>,
    },
    /// The desktop could not be opened for writing for want of space (`why`), and not even
    /// read-only.
    #[error(
        "{}: cannot open desktop {} ({}), not even read-only: {source}",
        root.display(),
        path.display(),
        without(path, why)
    )]
    DesktopUnreadable {
        root: PathBuf,
        path: PathBuf,
        why: Box<deskd_db::DbError>,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The desktop's durability setting cannot be read back.
    #[error("{0}")]
    Durability(#[source] Box<deskd_db::DbError>),
    /// The volume's writer thread cannot be started.
    #[error("cannot start writer thread: {0}")]
    WriterThread(#[source] io::Error),
}

/// A volume that is not served, one of [`ServerError::NoVolumeOpened`]'s failures.
#[derive(Debug)]
pub enum VolumeFailure {
    /// It failed a check made before any desktop is opened; every check's message begins with
    /// the volume's root already.
    Check(ServerError),
    /// It failed to open.
    Open {
        /// The volume's root as configured: named before the error unless its message does.
        root: PathBuf,
        error: ServerError,
    },
}

impl std::fmt::Display for VolumeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VolumeFailure::Check(error) => write!(f, "{error}"),
            VolumeFailure::Open { root, error } => {
                // Most messages name the volume first already; say it once.
                let text = error.to_string();
                if text.starts_with(&format!("{}: ", root.display())) {
                    f.write_str(&text)
                } else {
                    write!(f, "{}: {text}", root.display())
                }
            }
        }
    }
}

/// The failures, each as it prints, separated by `; `.
fn joined(failures: &[VolumeFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// ` <path>: <reason>`, or `: <reason>` when the reason names the path already (a `DbError`
/// about the desktop file does), so that no message says the same path twice.
fn once(path: &std::path::Path, reason: &impl std::fmt::Display) -> String {
    let reason = reason.to_string();
    if reason.contains(&*path.to_string_lossy()) {
        format!(": {reason}")
    } else {
        format!(" {}: {reason}", path.display())
    }
}

/// The reason without a leading `<path>: `, for a message that names `path` before it.
fn without(path: &std::path::Path, reason: &impl std::fmt::Display) -> String {
    let reason = reason.to_string();
    let named = format!("{}: ", path.display());
    reason.strip_prefix(&named).unwrap_or(&reason).to_string()
}

impl ServerError {
    /// Whether the volume is opened again, without a reload, once the database answers: it
    /// was refused only because the database could not be reached to check it.
    pub fn retried(&self) -> bool {
        matches!(self, ServerError::PgUnchecked { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reason that names the desktop already is not preceded by the same path again.
    #[test]
    fn the_desktop_path_is_named_once() {
        let path = PathBuf::from("/v/.Desktop");
        let e = ServerError::DesktopOpen {
            root: "/v".into(),
            path: path.clone(),
            source: Box::new(deskd_db::DbError::Io {
                op: "create",
                path: path.clone(),
                error: io::Error::from_raw_os_error(13),
            }),
        };
        assert_eq!(
            e.to_string(),
            "/v: cannot open desktop: cannot create /v/.Desktop: Permission denied (os error 13)"
        );
        let e = ServerError::DesktopOpen {
            root: "/v".into(),
            path: path.clone(),
            source: Box::new(deskd_db::DbError::Corrupt("no root".into())),
        };
        assert_eq!(
            e.to_string(),
            "/v: cannot open desktop /v/.Desktop: desktop is corrupt: no root"
        );
        let e = ServerError::DesktopUnreadable {
            root: "/v".into(),
            path: path.clone(),
            why: Box::new(deskd_db::DbError::NoSpace(path)),
            source: "unreadable".into(),
        };
        assert_eq!(
            e.to_string(),
            "/v: cannot open desktop /v/.Desktop (no space left on the device), not even \
             read-only: unreadable"
        );
        assert_eq!(e.to_string().matches("/v/.Desktop").count(), 1);
    }

    /// The failures print as the log always showed them: a check's message as it is, an
    /// opening's with the root first, once.
    #[test]
    fn no_volume_opened_names_each_volume_once() {
        let e = ServerError::NoVolumeOpened {
            failures: vec![
                VolumeFailure::Check(ServerError::NotADirectory { root: "/a".into() }),
                VolumeFailure::Open {
                    root: "/b".into(),
                    error: ServerError::NotADirectory { root: "/b".into() },
                },
                VolumeFailure::Open {
                    root: "/c".into(),
                    error: ServerError::NoVolumes,
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "no volume could be opened: /a: not a directory; /b: not a directory; /c: \
             configuration: no volumes: name them on the command line or in \
             [volume.\"<path>\"] tables"
        );
    }
}
