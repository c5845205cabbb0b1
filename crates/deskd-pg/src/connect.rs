//! Connecting to PostgreSQL: a URL (`postgresql://user@host:port/db`), a libpq `key=value`
//! list, or `service=NAME` from a libpq service file; the password comes only from a file or an
//! environment variable, never from the target itself (which may sit in a readable config or
//! on a command line).

use std::io::Read as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, Config, NoTls};

use crate::error::{error_chain, PgError, Result};

/// How long connecting may take when the target does not say (`connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the password comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PasswordSource {
    /// No password (peer, trust or certificate authentication).
    #[default]
    None,
    /// The first line of a file that only its owner may read (mode 0600 or stricter).
    File(PathBuf),
    /// An environment variable of the server's process (`PGPASSWORD`, say).
    Env(String),
}

/// What to connect to and how to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// A `postgresql://` URL, a `key=value` list, or `service=NAME`.
    pub target: String,
    /// Where the password comes from.
    pub password: PasswordSource,
}

/// The `application_name` deskd's sessions carry unless the target gives one: the verb, the
/// process id and the host (`deskd serve pid 6500 on fs1`), so that a refusal naming who holds
/// a serving lock (`serving_lock_holders`), and `pg_stat_activity`, tell which deskd on which
/// host it is (the session's own pid is the database's, not deskd's: newcomer review of stop
/// 42). PostgreSQL keeps the first 63 bytes. Read once a process (argv and the host name do not
/// change; a server connects again at every reconnection and for each read connection).
fn default_application_name() -> String {
    let verb = std::env::args()
        .nth(1)
        .filter(|a| !a.is_empty() && a.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'))
        .map(|a| format!(" {a}"))
        .unwrap_or_default();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    let mut name = format!("deskd{verb} pid {}", std::process::id());
    if !host.is_empty() {
        name.push_str(" on ");
        name.push_str(&host);
    }
    name
}

/// Connect as `options` say. A refused password is [`PgError::AuthFailed`], a server that
/// cannot be reached [`PgError::Unreachable`].
pub fn connect(options: &ConnectOptions) -> Result<Client> {
    let mut config = parse_target(&options.target)?;
    if let Some(password) = read_password(&options.password)? {
        config.password(password);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        config.application_name(NAME.get_or_init(default_application_name));
    }
    let shown = describe(&config);
    config.connect(NoTls).map_err(|e| {
        let refused = e.code().is_some_and(|code| {
            *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        });
        // rust-postgres says so without a kind to match: "invalid configuration: password
        // missing", when the server asked for a password the configuration does not give.
        if e.as_db_error().is_none() && error_chain(&e).contains("password missing") {
            return PgError::PasswordMissing {
                target: shown.clone(),
                user: config.get_user().unwrap_or_default().to_owned(),
            };
        }
        match (refused, e.as_db_error()) {
            (true, Some(db)) => PgError::AuthFailed {
                target: shown.clone(),
                user: config.get_user().unwrap_or_default().to_owned(),
                message: db.message().to_owned(),
            },
            _ => PgError::Unreachable {
                target: shown.clone(),
                message: error_chain(&e),
            },
        }
    })
}

/// Read `target` into a client configuration, refusing an embedded password.
pub fn parse_target(target: &str) -> Result<Config> {
    let text = match target.trim().strip_prefix("service=") {
        Some(name) => service_conninfo(name.trim())?,
        None => target.to_owned(),
    };
    let config = Config::from_str(&text).map_err(|e| PgError::BadTarget {
        // The target is shown only once it is known to hold no password.
        target: if text.contains("password") || text.contains(':') && text.contains('@') {
            "(not shown: it may hold a password)".to_owned()
        } else {
            target.to_owned()
        },
        reason: error_chain(&e),
    })?;
    if config.get_password().is_some() {
        return Err(PgError::PasswordInTarget(describe(&config)));
    }
    if config.get_user().is_none() {
        return Err(PgError::BadTarget {
            target: describe(&config),
            reason: "it names no user (add user@ to the URL or user= to the list)".to_owned(),
        });
    }
    Ok(config)
}

/// `user@host:port/dbname` of a configuration, for messages (never the password).
pub fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(host, port)| match host {
            postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
            postgres::config::Host::Unix(dir) => format!("{}:{port}", dir.display()),
        })
        .collect();
    format!(
        "{}@{}/{}",
        config.get_user().unwrap_or("?"),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// The password `source` gives, if any.
fn read_password(source: &PasswordSource) -> Result<Option<Vec<u8>>> {
    match source {
        PasswordSource::None => Ok(None),
        PasswordSource::Env(var) => match std::env::var_os(var) {
            Some(value) => Ok(Some(value.into_encoded_bytes())),
            None => Err(PgError::PasswordEnvMissing(var.clone())),
        },
        PasswordSource::File(path) => read_password_file(path).map(Some),
    }
}

/// The first line of a password file that no one but its owner may read.
fn read_password_file(path: &Path) -> Result<Vec<u8>> {
    let refuse = |reason: String| PgError::PasswordFile {
        path: path.to_path_buf(),
        reason,
    };
    // Never through a link: one put in its place could have deskd send another file's first
    // line to whatever server the target names.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_nofollow())
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() => refuse(
                "it is a symbolic link, which is not followed (one put in its place could send \
                 another file's first line): name the file itself"
                    .to_owned(),
            ),
            _ => refuse(format!("cannot open it: {e}")),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| refuse(format!("cannot read its mode: {e}")))?;
    if !meta.is_file() {
        return Err(refuse("not a regular file".to_owned()));
    }
    // Owned by this process's user or root, as ssh asks of its keys: a file another user
    // made (in a folder others may write, or left by a careless copy) is that user's word,
    // not the admin's.
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(refuse(format!(
            "it belongs to user {} (not to this process's user, {euid}, nor root); chown it",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(refuse(format!(
            "its mode {:o} lets others read it; chmod 600 it",
            meta.mode() & 0o777
        )));
    }
    let mut text = Vec::new();
    file.by_ref()
        .take(4096)
        .read_to_end(&mut text)
        .map_err(|e| refuse(format!("cannot read it: {e}")))?;
    let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(refuse("its first line is empty".to_owned()));
    }
    Ok(line.to_vec())
}

fn libc_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// The `key='value'` list of service `name`, from the first libpq service file that has it:
/// `$PGSERVICEFILE` or `~/.pg_service.conf`, then `$PGSYSCONFDIR/pg_service.conf` or
/// Debian's `/etc/postgresql-common/pg_service.conf`.
fn service_conninfo(name: &str) -> Result<String> {
    let user_file = std::env::var_os("PGSERVICEFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pg_service.conf")));
    let system_file = std::env::var_os("PGSYSCONFDIR")
        .map(|d| Path::new(&d).join("pg_service.conf"))
        .unwrap_or_else(|| PathBuf::from("/etc/postgresql-common/pg_service.conf"));
    for file in user_file.into_iter().chain([system_file]) {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        if let Some(pairs) = service_section(&text, name) {
            if pairs.iter().any(|(k, _)| k == "password") {
                return Err(PgError::PasswordInTarget(format!(
                    "service={name} in {}",
                    file.display()
                )));
            }
            return Ok(pairs
                .iter()
                .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
                .collect::<Vec<_>>()
                .join(" "));
        }
    }
    Err(PgError::BadTarget {
        target: format!("service={name}"),
        reason: "no service file ($PGSERVICEFILE, ~/.pg_service.conf, $PGSYSCONFDIR/pg_service.conf) has it".to_owned(),
    })
}

/// The `key=value` lines of section `[name]` of a service file, or `None` without one.
fn service_section(text: &str, name: &str) -> Option<Vec<(String, String)>> {
    let mut inside = false;
    let mut found = false;
    let mut pairs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = section.trim() == name;
            found |= inside;
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                pairs.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
    }
    found.then_some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_the_target_is_refused_and_not_shown() {
        for target in [
            "postgresql://deskd:s3cret@db.example/desk",
            "host=db.example user=deskd password=s3cret dbname=desk",
        ] {
            let e = parse_target(target).unwrap_err();
            assert!(matches!(e, PgError::PasswordInTarget(_)), "{e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn a_target_without_a_user_is_refused() {
        let e = parse_target("postgresql://db.example/desk").unwrap_err();
        assert!(e.to_string().contains("names no user"), "{e}");
    }

    #[test]
    fn service_sections_are_read() {
        let text = "# c\n[other]\nhost=x\n[desk]\nhost = db1\nport=5433\nuser=deskd\n";
        let pairs = service_section(text, "desk").unwrap();
        assert_eq!(pairs[0], ("host".to_owned(), "db1".to_owned()));
        assert_eq!(pairs.len(), 3);
        assert!(service_section(text, "none").is_none());
    }

    #[test]
    fn a_password_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_password_file(&path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password_file(&path).unwrap(), b"s3cret");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = read_password_file(&link).unwrap_err();
        assert!(
            e.to_string().contains("symbolic link"),
            "a link is not followed: {e}"
        );
        // Another user's file (mode 0600 or not) is refused; this test runs as root or as
        // the file's owner, so it can only give it away as root.
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let e = read_password_file(&path).unwrap_err();
            assert!(e.to_string().contains("belongs to user 65534"), "{e}");
        } else {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        }
    }
}
