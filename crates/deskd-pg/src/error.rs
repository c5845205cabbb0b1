//! The errors of the PostgreSQL desktop: what a connection, the schema or the volume's
//! identity refused, and the desktop's own rules (reused from deskd-db, so callers match one
//! set of variants for both back ends).

use std::path::PathBuf;

/// Errors of the PostgreSQL desktop.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The connection string (URL, `key=value` list or service) could not be read.
    #[error("bad PostgreSQL target {target:?}: {reason}")]
    BadTarget {
        /// The target as given, with any password left out.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A password was written into the URL or service entry; it belongs in a file or the
    /// environment, where `ps` and a world-readable config do not show it.
    #[error("the PostgreSQL target {0:?} holds a password; put it in a password file or the environment instead")]
    PasswordInTarget(String),
    /// The password file could not be read, or others may read it.
    #[error("password file {}: {reason}", .path.display())]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// Why it was not used.
        reason: String,
    },
    /// The environment variable named as the password source is not set.
    #[error("the environment variable {0} (the PostgreSQL password) is not set")]
    PasswordEnvMissing(String),
    /// The server refused the user or the password.
    #[error("PostgreSQL at {target} refused user {user:?}: {message} (check the password file or environment variable)")]
    AuthFailed {
        /// Where it was connecting, without the password.
        target: String,
        /// The user it logged in as.
        user: String,
        /// PostgreSQL's own words.
        message: String,
    },
    /// The server asked for a password and none was configured: a configuration to mend,
    /// not a database to wait for (it was reported as unreachable and retried for ever).
    #[error("PostgreSQL at {target} asks user {user:?} for a password and none is configured: set backend_password_file or backend_password_env for the volume (deskd migrate, backup and restore: --password-file or --password-env, or the --config that names them)")]
    PasswordMissing {
        /// Where it was connecting.
        target: String,
        /// The user it logged in as.
        user: String,
    },
    /// The server could not be reached or the session could not start.
    #[error("cannot connect to PostgreSQL at {target}: {message}")]
    Unreachable {
        /// Where it was connecting, without the password.
        target: String,
        /// What went wrong.
        message: String,
    },
    /// The database holds a deskd schema written by a newer deskd.
    #[error("the deskd schema in this database is format {found}, newer than this deskd supports ({supported}); upgrade deskd")]
    FormatTooNew {
        /// The database's format.
        found: i32,
        /// [`crate::FORMAT_VERSION`].
        supported: i32,
    },
    /// The `deskd` schema exists but is not one deskd made: nothing is changed in it.
    #[error(
        "the database has a schema named deskd that deskd did not create; use another database"
    )]
    NotADesktop,
    /// The database's record of this volume name belongs to another volume (another
    /// identity), or this identity is recorded under another name.
    #[error("the database holds another volume under {what}: recorded {recorded}, this volume is {expected}; nothing was changed")]
    OtherVolume {
        /// Which key matched: the name or the identity.
        what: String,
        /// What the database has.
        recorded: String,
        /// What the caller opened.
        expected: String,
    },
    /// A migration into the database found the volume there already (same name and
    /// identity): its desktop was migrated before, and may be in use from there.
    #[error("the database holds volume {name:?} (identity {identity:016x}) already (a copy left by an earlier migrate or restore out of it, or one still served: stop its servers first); nothing was changed. To replace it with this desktop, remove it from the database first: DELETE FROM deskd.volume WHERE name = '{name}' (its records go with it), then migrate again")]
    VolumeExists {
        /// The volume's name in the database.
        name: String,
        /// Its identity.
        identity: u64,
    },
    /// A `deskd serve` serves the volume from the database (its writer holds the volume's
    /// serving lock): a migration out of the database is refused.
    /// `holders`: who holds the lock, as the database says (" (held by …)" or empty): any
    /// role that may connect can take an advisory lock (docs/security.md).
    #[error("volume {name:?} is being served from the database by deskd serve (on this host or another){holders}; stop every server of the volume first, nothing was changed")]
    Served {
        /// The volume's name.
        name: String,
        /// [`crate::transfer::serving_lock_holders`]' words.
        holders: String,
    },
    /// `deskd migrate --to sqlite` or `deskd restore --leave-postgresql --config` holds the
    /// volume's serving lock exclusively: it is not served meanwhile.
    #[error("volume {name:?} is being moved out of the database (by deskd migrate --to sqlite or deskd restore --leave-postgresql){holders}; it is not served meanwhile")]
    Migrating {
        /// The volume's name.
        name: String,
        /// [`crate::transfer::serving_lock_holders`]' words.
        holders: String,
    },
    /// `deskd restore --leave-postgresql --config` or `deskd migrate --to sqlite` moved the
    /// volume out of the database (recorded there under the serving lock, held exclusively):
    /// its SQLite desktop is the volume's, and the database's copy is stale; a server still
    /// configured with `backend` must not hand out IDs from it again.
    #[error("volume {0:?} was moved out of this database (by deskd restore --leave-postgresql or deskd migrate --to sqlite): its SQLite desktop is the volume's now and the database's copy is stale, so it is not served from the database; take `backend` out of this server's configuration for the volume (`backend = \"sqlite\"` in its `[volume.\"PATH\"]` table when `[defaults]` gives one) and reload (SIGHUP) to serve it from its SQLite desktop (or, if that restore or migrate did not finish, run it again)")]
    MovedOut(String),
    /// A server opening a volume whose root is marked as having its desktop in PostgreSQL
    /// found no copy of it in this database: the volume is served from another database (a
    /// host configured with another `backend`), or this one was emptied or replaced. Making it
    /// afresh here would hand out IDs from 17 again, IDs the volume's own database gave.
    #[error("the volume's root is marked as having its desktop in PostgreSQL, but this database holds no volume named {name:?} (identity {identity:016x}): it is served from another database (check `backend` on every server of the volume), or this database was emptied or replaced; not made afresh here, which would hand out again IDs its own database gave. To move it into this database: deskd restore --leave-postgresql its backup, then deskd migrate --to this database; to start it afresh here, every file a new ID, remove the mark (setfattr -x user.deskd.backend ROOT) and reload")]
    NotInDatabase {
        /// The volume's name.
        name: String,
        /// Its identity.
        identity: u64,
    },
    /// The database holds no volume of this name (or no deskd schema at all).
    #[error("the database holds no deskd volume named {0:?}")]
    NoSuchVolume(String),
    /// A rule of the desktop (no such ID, name taken, ID space exhausted, ...).
    #[error(transparent)]
    Desktop(#[from] deskd_db::DbError),
    // Not a `source`: the message holds the causes already, and anyhow's `{:#}` (as deskd
    // prints errors) would repeat them.
    /// PostgreSQL failed a statement. The message is the error with its causes: postgres'
    /// own text is only "db error", the server's words are in its source.
    #[error("postgresql: {}", error_chain(.0))]
    Postgres(postgres::Error),
}

impl From<postgres::Error> for PgError {
    fn from(e: postgres::Error) -> PgError {
        PgError::Postgres(e)
    }
}

/// An error and its causes in one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl PgError {
    /// Whether the database could not be reached or the session was lost (the server was
    /// stopped, crashed or is starting, the network broke): a server answers read-only and
    /// reconnects, rather than treating it as a refusal or corruption.
    pub fn is_unavailable(&self) -> bool {
        match self {
            PgError::Unreachable { .. } => true,
            PgError::Postgres(e) => {
                if e.is_closed() {
                    return true;
                }
                if let Some(code) = e.code() {
                    let code = code.code();
                    return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03");
                }
                // No SQLSTATE: the socket failed under the session.
                std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
            }
            _ => false,
        }
    }
}

impl PgError {
    /// Whether the database refused for a conflict with another session that a later try
    /// may not meet: the lock wait bounded by `lock_timeout` passed (`55P03`, as a batch's
    /// wait for the volume's row past `busy_wait`), a deadlock (`40P01`) or a serialization
    /// failure (`40001`). The database is there: the caller answers "busy", not read-only.
    pub fn is_busy(&self) -> bool {
        match self {
            PgError::Postgres(e) => e
                .code()
                .is_some_and(|c| matches!(c.code(), "55P03" | "40P01" | "40001")),
            _ => false,
        }
    }
}

/// A PostgreSQL desktop operation's result.
pub type Result<T, E = PgError> = std::result::Result<T, E>;
