//! The configuration files of the original daemon (INI): the service file given with `-c` and the
//! optional global file given with `-g`, plus our `[Backup]` section.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use thiserror::Error;

/// Why a configuration file was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    // The parse error is part of the message and deliberately not a `source`: printed with
    // anyhow's `{:#}` (as main does) a source would be repeated after the message.
    #[error("{path}: not an INI file: {error}")]
    Syntax {
        path: PathBuf,
        error: ini::ParseError,
    },
    #[error("{path}: [{section}] {key} is missing")]
    Missing {
        path: PathBuf,
        section: &'static str,
        key: &'static str,
    },
    /// A key (or a section) this file may not hold: a misspelling would otherwise be ignored
    /// silently and its default used.
    #[error("{path}: [{section}] {key}: unknown key ({known})")]
    UnknownKey {
        path: PathBuf,
        section: String,
        key: String,
        known: String,
    },
    /// A line without `=`: the INI reader joins it (and the lines after it) into one key, which
    /// may hold a value such as the password (even its first word: a password wrapped onto a
    /// line of its own), so no word of it is shown, only where it is.
    #[error("{path}: line {line}: no '=' (KEY = VALUE expected; the line is not shown, it may hold a password)")]
    NoEquals { path: PathBuf, line: usize },
    /// A `[` line without `]`: the INI reader reads on to the next `]`, so the section name may
    /// hold the lines after it; only its first word is shown.
    #[error("{path}: line {line}: no ']' (section [{first}\u{2026})")]
    NoBracket {
        path: PathBuf,
        line: usize,
        first: String,
    },
    #[error("{path}: [{section}]: unknown section (this file may hold {known})")]
    UnknownSection {
        path: PathBuf,
        section: String,
        known: String,
    },
    #[error("{path}: {key}: outside any section (keys go under a [Section] line)")]
    NoSection { path: PathBuf, key: String },
    #[error("{path}: [{section}] {key} = {value:?}: {why}")]
    Invalid {
        path: PathBuf,
        section: &'static str,
        key: &'static str,
        value: String,
        why: String,
    },
}

/// Which log levels are written (`LOG_DEBUG`, `LOG_INFO`, `LOG_WARNING`, `LOG_ERR`, 0 or 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLevels {
    pub debug: bool,
    pub info: bool,
    pub warning: bool,
    pub err: bool,
}

/// The `[Database]` section: where the accounts live and how to watch them.
#[derive(Clone, Debug)]
pub struct Database {
    /// `ldap://host:port/`, `ldaps://host:port/` or `ldapi://…`, from SERVER (host or URI) and
    /// PORT.
    pub url: String,
    /// `START_TLS = 1`: upgrade an `ldap://` connection with StartTLS before the bind.
    pub start_tls: bool,
    /// `CA_FILE`: the certificates (PEM) that may sign the server's; None means the system's
    /// trusted CAs.
    pub ca_certificates: Option<Vec<CertificateDer<'static>>>,
    pub admin_user: String,
    pub admin_password: String,
    pub service_subtree: String,
    pub cookie_file: PathBuf,
    /// The search filter of the content-sync search; `%entryCSN%` is replaced by the CSN of the
    /// saved cookie (or the start of 2000 when there is none).
    pub search_filter: String,
}

impl Database {
    /// How the connection is protected, for the log: "TLS", "StartTLS" or "no TLS".
    pub fn protection(&self) -> &'static str {
        if self.url.starts_with("ldaps://") {
            "TLS"
        } else if self.start_tls {
            "StartTLS"
        } else {
            "no TLS"
        }
    }

    /// Whether the bind sends ADMIN_PASSWORD unencrypted to another host.
    pub fn password_in_clear(&self) -> bool {
        self.url.starts_with("ldap://") && !self.start_tls && !is_loopback_url(&self.url)
    }
}

/// When quotas are set (`[Backup] QUOTA`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaMode {
    /// Only where the file system holding the backup root is mounted with user quotas.
    Auto,
    /// Always run the quota command (it fails if the file system has none).
    Always,
    /// Never touch quotas.
    Never,
}

/// Our `[Backup]` section: where accounts go and which tools make them.
#[derive(Clone, Debug)]
pub struct Backup {
    /// Every account tree is created, changed and removed strictly below this directory.
    pub root: PathBuf,
    /// One rsnapshot configuration per account, `<uid>.conf`.
    pub rsnapshot_config_dir: PathBuf,
    pub rsnapshot: PathBuf,
    pub rsync: PathBuf,
    /// Where the per-account rsnapshot lock files go (`lockfile` of the generated config).
    pub rsnapshot_lock_dir: PathBuf,
    pub quota: QuotaMode,
    /// `setquota`-compatible: `CMD -u UID SOFT HARD 0 0 FILESYSTEM` with 1 KiB blocks.
    pub quota_command: PathBuf,
    /// Optional command that populates a new jail, run with the jail directory as last argument
    /// (for example `jk_init -j`), split on white space.
    pub jail_init: Option<Vec<String>>,
    /// Accounts worked on at the same time.
    pub workers: usize,
    /// Poll interval when the server has no content sync (syncprov).
    pub poll_interval: Duration,
    /// Single-instance lock file.
    pub lock_file: PathBuf,
}

/// A connect policy: how long to wait between attempts and how many attempts to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    pub sleep: Duration,
    pub attempts: u32,
}

/// Everything the daemon reads from its configuration files.
#[derive(Clone, Debug)]
pub struct Config {
    pub log: LogLevels,
    /// `[Global] ENVIRONMENT`: the host name used in messages.
    pub environment: Option<String>,
    pub database: Database,
    /// `[Service] SERVICE` and `TYPE` (Backup, Rsnapshot).
    pub service: String,
    pub kind: String,
    /// `[Service] SYSLOG`: prefix of every log message.
    pub syslog: String,
    pub backup: Backup,
    /// Global.conf `[Global] SLEEP/ATTEMPTS`: connecting at start-up.
    pub connect: Retry,
    /// Global.conf `[Operation Mode] SLEEP/ATTEMPTS`: reconnecting while running.
    pub reconnect: Retry,
}

/// The original's defaults: Global.conf `[Global]` (connecting at start-up) and
/// `[Operation Mode]` (reconnecting while running).
const CONNECT_DEFAULT: Retry = Retry {
    sleep: Duration::from_secs(10),
    attempts: 3,
};
const RECONNECT_DEFAULT: Retry = Retry {
    sleep: Duration::from_secs(30),
    attempts: 3,
};

/// The CSN used when no cookie is saved: every entry comes through (as in the original).
pub const EPOCH_CSN: &str = "20000101000000.000000Z#000000#000#000000";

type Sections = HashMap<String, HashMap<String, String>>;

/// The sections a configuration file may hold and their keys (upper case). `None`: a section of
/// the original's that nothing here reads; any key in it is accepted and ignored.
type Schema = &'static [(&'static str, Option<&'static [&'static str]>)];

const LOG_KEYS: [&str; 4] = ["LOG_DEBUG", "LOG_INFO", "LOG_WARNING", "LOG_ERR"];

/// The service file (`-c`): the original's sections and our `[Backup]`.
const SERVICE_SCHEMA: Schema = &[
    (
        "Global",
        Some(&[
            LOG_KEYS[0],
            LOG_KEYS[1],
            LOG_KEYS[2],
            LOG_KEYS[3],
            "ENVIRONMENT",
        ]),
    ),
    (
        "Database",
        Some(&[
            "BACKEND",
            "SERVER",
            "PORT",
            "START_TLS",
            "CA_FILE",
            "ADMIN_USER",
            "ADMIN_PASSWORD",
            "SERVICE_SUBTREE",
            "COOKIE_FILE",
            "DEFAULT_COOKIE",
            "SEARCH_FILTER",
        ]),
    ),
    (
        "Service",
        Some(&["MODUS", "TRANSPORTAPI", "SERVICE", "TYPE", "SYSLOG"]),
    ),
    (
        "Backup",
        Some(&[
            "BACKUP_ROOT",
            "RSNAPSHOT_CONFIG_DIR",
            "RSNAPSHOT",
            "RSYNC",
            "RSNAPSHOT_LOCK_DIR",
            "QUOTA",
            "QUOTA_COMMAND",
            "JAIL_INIT",
            "WORKERS",
            "POLL_INTERVAL",
            "LOCK_FILE",
        ]),
    ),
    ("Gateway", None),
    ("Mail", None),
];

/// The global file (`-g`): the retry policies and the log levels.
const GLOBAL_SCHEMA: Schema = &[
    (
        "Global",
        Some(&[
            LOG_KEYS[0],
            LOG_KEYS[1],
            LOG_KEYS[2],
            LOG_KEYS[3],
            "SLEEP",
            "ATTEMPTS",
        ]),
    ),
    ("Operation Mode", Some(&["SLEEP", "ATTEMPTS"])),
    ("Mail", None),
];

/// Every section and key of `ini` must be in `schema` (sections and keys without regard to
/// case, as they are read); the error names the file, the section and the key as written.
fn check_schema(
    path: &Path,
    text: &str,
    ini: &ini::Ini,
    schema: Schema,
) -> Result<(), ConfigError> {
    for (section, props) in ini.iter() {
        for (key, _) in props.iter() {
            if key.contains(char::is_whitespace) {
                return Err(no_equals(path, text, key));
            }
        }
        if let Some(name) = section.filter(|name| name.contains(['\n', '\r'])) {
            let head = name.lines().next().unwrap_or("").trim();
            return Err(ConfigError::NoBracket {
                path: path.to_owned(),
                line: line_of(text, &format!("[{head}")),
                first: shown_name(name).trim_end_matches('\u{2026}').to_owned(),
            });
        }
        let Some(section) = section else {
            if let Some((key, _)) = props.iter().next() {
                return Err(ConfigError::NoSection {
                    path: path.to_owned(),
                    key: shown_name(key),
                });
            }
            continue;
        };
        let Some((_, keys)) = schema
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(section.trim()))
        else {
            let names: Vec<String> = schema.iter().map(|(n, _)| format!("[{n}]")).collect();
            return Err(ConfigError::UnknownSection {
                path: path.to_owned(),
                section: redacted(section),
                known: names.join(", "),
            });
        };
        let Some(keys) = keys else { continue };
        for (key, _) in props.iter() {
            if !keys.iter().any(|k| k.eq_ignore_ascii_case(key)) {
                let known = match keys.iter().find(|k| near(k, key)) {
                    Some(k) => format!("did you mean {k}?"),
                    None => format!("the keys of [{section}] are {}", keys.join(", ")),
                };
                return Err(ConfigError::UnknownKey {
                    path: path.to_owned(),
                    section: redacted(section),
                    key: shown_name(key),
                    known,
                });
            }
        }
    }
    Ok(())
}

/// A name as it may be shown in an error: a name holding whitespace is cut at its first word, and
/// nothing after `PASSWORD` or `SECRET` (any case) is shown, whatever the INI reader made of the
/// line (review F6: the password of a line without `=` was printed as part of a key).
fn shown_name(name: &str) -> String {
    let first = name.split(char::is_whitespace).next().unwrap_or("");
    let upper = first.to_ascii_uppercase();
    let cut = ["PASSWORD", "SECRET"]
        .iter()
        .filter_map(|word| upper.find(word).map(|at| at + word.len()))
        .min();
    let shown = match cut {
        // `to_ascii_uppercase` keeps byte offsets, so `at` is a boundary of `first` too.
        Some(at) => &first[..at],
        None => first,
    };
    if shown.len() < name.len() {
        format!("{shown}\u{2026}")
    } else {
        shown.to_owned()
    }
}

/// A section name as it may be shown (spaces are part of such names, as in `[Operation Mode]`):
/// nothing after `PASSWORD` or `SECRET` (any case).
fn redacted(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    match ["PASSWORD", "SECRET"]
        .iter()
        .filter_map(|word| upper.find(word).map(|at| at + word.len()))
        .min()
    {
        Some(at) if at < name.len() => format!("{}\u{2026}", &name[..at]),
        _ => name.to_owned(),
    }
}

/// The error for a key the INI reader joined from a line without `=`: the line it starts on
/// only.
fn no_equals(path: &Path, text: &str, key: &str) -> ConfigError {
    let head = key.lines().next().unwrap_or("").trim();
    ConfigError::NoEquals {
        path: path.to_owned(),
        line: line_of(text, head),
    }
}

/// The number (from 1) of the first line of `text` starting with `head` (spaces aside), 0 if none.
fn line_of(text: &str, head: &str) -> usize {
    text.lines()
        .position(|l| !head.is_empty() && l.trim_start().starts_with(head))
        .map_or(0, |i| i + 1)
}

/// Whether `typed` is `known` with one letter wrong, missing, extra, or two swapped (case aside).
fn near(known: &str, typed: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (
        known.chars().collect(),
        typed.to_ascii_uppercase().chars().collect(),
    );
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = |skip_a: usize, skip_b: usize| {
        a.len() >= prefix + skip_a
            && b.len() >= prefix + skip_b
            && a[prefix + skip_a..] == b[prefix + skip_b..]
    };
    suffix(1, 1)
        || suffix(1, 0)
        || suffix(0, 1)
        || (a.len() == b.len()
            && prefix + 2 <= a.len()
            && a[prefix] == b[prefix + 1]
            && a[prefix + 1] == b[prefix]
            && a[prefix + 2..] == b[prefix + 2..])
}

fn parse_ini(path: &Path, schema: Schema) -> Result<Sections, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let ini = ini::Ini::load_from_str(&text).map_err(|error| ConfigError::Syntax {
        path: path.to_owned(),
        error,
    })?;
    check_schema(path, &text, &ini, schema)?;
    let mut out: Sections = HashMap::new();
    for (section, props) in ini.iter() {
        let entry = out
            .entry(section.unwrap_or("").to_ascii_lowercase())
            .or_default();
        for (k, v) in props.iter() {
            entry.insert(k.to_ascii_uppercase(), v.trim().to_owned());
        }
    }
    Ok(out)
}

struct Reader<'a> {
    path: &'a Path,
    sections: &'a Sections,
}

impl<'a> Reader<'a> {
    fn get(&self, section: &'static str, key: &'static str) -> Option<&'a str> {
        self.sections
            .get(&section.to_ascii_lowercase())
            .and_then(|s| s.get(key))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn require(&self, section: &'static str, key: &'static str) -> Result<&'a str, ConfigError> {
        self.get(section, key).ok_or_else(|| ConfigError::Missing {
            path: self.path.to_owned(),
            section,
            key,
        })
    }

    fn invalid(
        &self,
        section: &'static str,
        key: &'static str,
        value: &str,
        why: &str,
    ) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            section,
            key,
            value: value.to_owned(),
            why: why.to_owned(),
        }
    }

    fn number(&self, section: &'static str, key: &'static str) -> Result<Option<u64>, ConfigError> {
        match self.get(section, key) {
            None => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| self.invalid(section, key, v, "not a whole number")),
        }
    }

    fn flag(&self, section: &'static str, key: &'static str) -> Result<Option<bool>, ConfigError> {
        match self.get(section, key) {
            None => Ok(None),
            Some("1") | Some("yes") | Some("true") => Ok(Some(true)),
            Some("0") | Some("no") | Some("false") => Ok(Some(false)),
            Some(v) => Err(self.invalid(section, key, v, "expected 0 or 1")),
        }
    }

    fn absolute(
        &self,
        section: &'static str,
        key: &'static str,
        v: &str,
    ) -> Result<PathBuf, ConfigError> {
        let p = PathBuf::from(v);
        if p.is_absolute() {
            Ok(p)
        } else {
            Err(self.invalid(section, key, v, "must be an absolute path"))
        }
    }

    /// The PEM certificates of `file` (at least one).
    fn certificates(
        &self,
        section: &'static str,
        key: &'static str,
        file: &str,
    ) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        let path = self.absolute(section, key, file)?;
        let bytes = std::fs::read(&path)
            .map_err(|e| self.invalid(section, key, file, &format!("cannot read: {e}")))?;
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.invalid(section, key, file, &format!("not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(self.invalid(section, key, file, "holds no CERTIFICATE block"));
        }
        Ok(certs)
    }

    fn retry(&self, section: &'static str, default: Retry) -> Result<Retry, ConfigError> {
        Ok(Retry {
            sleep: self
                .number(section, "SLEEP")?
                .map(Duration::from_secs)
                .unwrap_or(default.sleep),
            attempts: self
                .number(section, "ATTEMPTS")?
                .map(|a| a.max(1) as u32)
                .unwrap_or(default.attempts),
        })
    }

    fn log_levels(&self, default: LogLevels) -> Result<LogLevels, ConfigError> {
        Ok(LogLevels {
            debug: self.flag("Global", "LOG_DEBUG")?.unwrap_or(default.debug),
            info: self.flag("Global", "LOG_INFO")?.unwrap_or(default.info),
            warning: self
                .flag("Global", "LOG_WARNING")?
                .unwrap_or(default.warning),
            err: self.flag("Global", "LOG_ERR")?.unwrap_or(default.err),
        })
    }
}

/// Builds the LDAP URL from SERVER (a host name or a URI) and PORT.
fn server_url(r: &Reader, server: &str, port: Option<u64>) -> Result<String, ConfigError> {
    if let Some((scheme, rest)) = server.split_once("://") {
        if !matches!(scheme, "ldap" | "ldaps" | "ldapi") {
            return Err(r.invalid("Database", "SERVER", server, "unknown URI scheme"));
        }
        let host_part = rest.split('/').next().unwrap_or("");
        if scheme != "ldapi" && !host_part.contains(':') {
            if let Some(port) = port {
                return Ok(format!("{scheme}://{host_part}:{port}/"));
            }
        }
        return Ok(server.to_owned());
    }
    if server.contains('/') || server.contains(' ') {
        return Err(r.invalid(
            "Database",
            "SERVER",
            server,
            "not a host name or ldap:// URI",
        ));
    }
    Ok(format!("ldap://{server}:{}/", port.unwrap_or(389)))
}

/// Whether an `ldap://` URL names this host (the password then never leaves it).
fn is_loopback_url(url: &str) -> bool {
    let host_port = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("");
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.rsplit_once(':').map_or(host_port, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Config {
    /// What the daemon would do with this configuration, in two lines (`--check-config`).
    pub fn describe(&self) -> String {
        let quota = match self.backup.quota {
            QuotaMode::Auto => "quotas where the backup root's file system has them",
            QuotaMode::Always => "quotas always",
            QuotaMode::Never => "no quotas",
        };
        format!(
            "would watch {} on {} ({}) as {}, cookie in {}\n\
             and keep {} {} accounts under {}, their rsnapshot configurations in {}, {quota}, \
             {} at a time",
            self.database.service_subtree,
            self.database.url,
            self.database.protection(),
            self.database.admin_user,
            self.database.cookie_file.display(),
            self.service,
            self.kind,
            self.backup.root.display(),
            self.backup.rsnapshot_config_dir.display(),
            self.backup.workers,
        )
    }

    /// Reads the service file and, when given, the global file.
    pub fn load(service_file: &Path, global_file: Option<&Path>) -> Result<Config, ConfigError> {
        let defaults = LogLevels {
            debug: false,
            info: true,
            warning: true,
            err: true,
        };
        let (global_log, connect, reconnect) = match global_file {
            Some(path) => {
                let sections = parse_ini(path, GLOBAL_SCHEMA)?;
                let g = Reader {
                    path,
                    sections: &sections,
                };
                (
                    g.log_levels(defaults)?,
                    g.retry("Global", CONNECT_DEFAULT)?,
                    g.retry("Operation Mode", RECONNECT_DEFAULT)?,
                )
            }
            None => (defaults, CONNECT_DEFAULT, RECONNECT_DEFAULT),
        };

        let sections = parse_ini(service_file, SERVICE_SCHEMA)?;
        let r = Reader {
            path: service_file,
            sections: &sections,
        };
        // The original reads LOG_* from the service file; Global.conf's values are the fallback.
        let log = r.log_levels(global_log)?;

        if let Some(backend) = r.get("Database", "BACKEND") {
            if !backend.eq_ignore_ascii_case("LDAP") {
                return Err(r.invalid("Database", "BACKEND", backend, "only LDAP is supported"));
            }
        }
        let server = r.require("Database", "SERVER")?;
        let port = r.number("Database", "PORT")?;
        let url = server_url(&r, server, port)?;
        let start_tls = r.flag("Database", "START_TLS")?.unwrap_or(false);
        if start_tls && !url.starts_with("ldap://") {
            return Err(r.invalid(
                "Database",
                "START_TLS",
                "1",
                "StartTLS upgrades an ldap:// connection (ldaps:// is encrypted from the start, \
                 ldapi:// is a local socket)",
            ));
        }
        let ca_certificates = match r.get("Database", "CA_FILE") {
            None => None,
            Some(file) if !start_tls && !url.starts_with("ldaps://") => {
                return Err(r.invalid(
                    "Database",
                    "CA_FILE",
                    file,
                    "only used with ldaps:// or START_TLS = 1",
                ))
            }
            Some(file) => Some(r.certificates("Database", "CA_FILE", file)?),
        };
        let search_filter = r
            .get("Database", "SEARCH_FILTER")
            .unwrap_or("(&(entryCSN>=%entryCSN%)(objectClass=*))")
            .to_owned();
        let database = Database {
            url,
            admin_user: r.require("Database", "ADMIN_USER")?.to_owned(),
            admin_password: r.require("Database", "ADMIN_PASSWORD")?.to_owned(),
            service_subtree: r.require("Database", "SERVICE_SUBTREE")?.to_owned(),
            cookie_file: r.absolute(
                "Database",
                "COOKIE_FILE",
                r.require("Database", "COOKIE_FILE")?,
            )?,
            search_filter,
            start_tls,
            ca_certificates,
        };

        let modus = r.get("Service", "MODUS").unwrap_or("selfcare");
        if !modus.eq_ignore_ascii_case("selfcare") {
            return Err(r.invalid(
                "Service",
                "MODUS",
                modus,
                "only selfcare is supported (accounts act on sstProvisioningMode)",
            ));
        }
        let service = r.get("Service", "SERVICE").unwrap_or("Backup").to_owned();
        let kind = r.get("Service", "TYPE").unwrap_or("Rsnapshot").to_owned();
        let syslog = r
            .get("Service", "SYSLOG")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{service}-{kind}"));

        let root = r.absolute(
            "Backup",
            "BACKUP_ROOT",
            r.get("Backup", "BACKUP_ROOT").unwrap_or("/var/backup"),
        )?;
        if root == Path::new("/") {
            return Err(r.invalid("Backup", "BACKUP_ROOT", "/", "the backup root cannot be /"));
        }
        let quota = match r.get("Backup", "QUOTA").unwrap_or("auto") {
            v if v.eq_ignore_ascii_case("auto") => QuotaMode::Auto,
            v if v.eq_ignore_ascii_case("always") => QuotaMode::Always,
            v if v.eq_ignore_ascii_case("never") => QuotaMode::Never,
            v => return Err(r.invalid("Backup", "QUOTA", v, "expected auto, always or never")),
        };
        let workers = match r.number("Backup", "WORKERS")? {
            None => 4,
            Some(0) => return Err(r.invalid("Backup", "WORKERS", "0", "at least 1")),
            Some(n) if n > 64 => {
                return Err(r.invalid("Backup", "WORKERS", &n.to_string(), "at most 64"))
            }
            Some(n) => n as usize,
        };
        let poll_interval = match r.number("Backup", "POLL_INTERVAL")? {
            None => Duration::from_secs(10),
            Some(0) => return Err(r.invalid("Backup", "POLL_INTERVAL", "0", "at least 1 second")),
            Some(n) => Duration::from_secs(n),
        };
        let jail_init = r
            .get("Backup", "JAIL_INIT")
            .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>());
        let default_lock = format!("/var/run/Provisioning-{service}-{kind}.lock");
        let backup = Backup {
            rsnapshot_config_dir: r.absolute(
                "Backup",
                "RSNAPSHOT_CONFIG_DIR",
                r.get("Backup", "RSNAPSHOT_CONFIG_DIR")
                    .unwrap_or("/etc/rsnapshot.d"),
            )?,
            rsnapshot: PathBuf::from(r.get("Backup", "RSNAPSHOT").unwrap_or("rsnapshot")),
            rsync: r.absolute(
                "Backup",
                "RSYNC",
                r.get("Backup", "RSYNC").unwrap_or("/usr/bin/rsync"),
            )?,
            rsnapshot_lock_dir: r.absolute(
                "Backup",
                "RSNAPSHOT_LOCK_DIR",
                r.get("Backup", "RSNAPSHOT_LOCK_DIR").unwrap_or("/var/run"),
            )?,
            quota,
            quota_command: PathBuf::from(r.get("Backup", "QUOTA_COMMAND").unwrap_or("setquota")),
            jail_init,
            workers,
            poll_interval,
            lock_file: r.absolute(
                "Backup",
                "LOCK_FILE",
                r.get("Backup", "LOCK_FILE").unwrap_or(&default_lock),
            )?,
            root,
        };
        Ok(Config {
            log,
            environment: r.get("Global", "ENVIRONMENT").map(str::to_owned),
            database,
            service,
            kind,
            syslog,
            backup,
            connect,
            reconnect,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const SERVICE: &str = "[Global]\nLOG_DEBUG = 1\nLOG_INFO = 1\nLOG_WARNING = 1\nLOG_ERR = 1\n\
        ENVIRONMENT = backup-01\n\n[Database]\nBACKEND = LDAP\nSERVER = ldap.example.org\nPORT = 3890\n\
        ADMIN_USER = cn=admin,dc=example\nADMIN_PASSWORD = pw\n\
        SERVICE_SUBTREE = ou=accounts,ou=backup,dc=example\nCOOKIE_FILE = /var/lib/prov/cookie\n\
        DEFAULT_COOKIE = rid=001,csn=\n\n[Service]\nMODUS = selfcare\nTRANSPORTAPI = LocalCLI\n\
        SERVICE = Backup\nTYPE = Rsnapshot\nSYSLOG = Backup-Rsnapshot\n\n[Gateway]\nHOST = localhost\n\n\
        [Backup]\nBACKUP_ROOT = /srv/backup\nWORKERS = 2\n";

    #[test]
    fn reads_the_original_keys_and_ours() {
        let dir = tempfile::tempdir().unwrap();
        let service = write(dir.path(), "s.conf", SERVICE);
        let global = write(
            dir.path(),
            "g.conf",
            "[Global]\nSLEEP = 2\nATTEMPTS = 5\n\n[Operation Mode]\nSLEEP = 1\nATTEMPTS = 7\n",
        );
        let c = Config::load(&service, Some(&global)).unwrap();
        assert_eq!(c.database.url, "ldap://ldap.example.org:3890/");
        assert_eq!(
            c.database.service_subtree,
            "ou=accounts,ou=backup,dc=example"
        );
        assert_eq!(
            c.database.search_filter,
            "(&(entryCSN>=%entryCSN%)(objectClass=*))"
        );
        assert_eq!(c.syslog, "Backup-Rsnapshot");
        assert!(c.log.debug);
        assert_eq!(c.environment.as_deref(), Some("backup-01"));
        assert_eq!(c.backup.root, PathBuf::from("/srv/backup"));
        assert_eq!(c.backup.workers, 2);
        assert_eq!(c.backup.quota, QuotaMode::Auto);
        assert_eq!(
            c.backup.lock_file,
            PathBuf::from("/var/run/Provisioning-Backup-Rsnapshot.lock")
        );
        assert_eq!(
            c.connect,
            Retry {
                sleep: Duration::from_secs(2),
                attempts: 5
            }
        );
        assert_eq!(
            c.reconnect,
            Retry {
                sleep: Duration::from_secs(1),
                attempts: 7
            }
        );
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        let dir = tempfile::tempdir().unwrap();
        for (from, to, needle) in [
            (
                "SERVER = ldap.example.org",
                "SERVER = ftp://x",
                "unknown URI scheme",
            ),
            ("MODUS = selfcare", "MODUS = ldap", "only selfcare"),
            (
                "BACKUP_ROOT = /srv/backup",
                "BACKUP_ROOT = relative",
                "absolute",
            ),
            (
                "BACKUP_ROOT = /srv/backup",
                "BACKUP_ROOT = /",
                "cannot be /",
            ),
            ("WORKERS = 2", "WORKERS = 0", "at least 1"),
            ("PORT = 3890", "PORT = many", "whole number"),
            ("ADMIN_PASSWORD = pw\n", "", "ADMIN_PASSWORD is missing"),
        ] {
            let text = SERVICE.replace(from, to);
            assert_ne!(text, SERVICE);
            let p = write(dir.path(), "s.conf", &text);
            let err = Config::load(&p, None).unwrap_err().to_string();
            assert!(err.contains(needle), "{to}: {err}");
        }
        let err = Config::load(&dir.path().join("absent.conf"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read"), "{err}");
    }

    /// SERVICE with the [Database] SERVER line replaced by `lines`.
    fn with_server(dir: &Path, lines: &str) -> Result<Config, ConfigError> {
        let text = SERVICE.replace("SERVER = ldap.example.org\n", lines);
        Config::load(&write(dir, "s.conf", &text), None)
    }

    #[test]
    fn tls_settings_are_checked_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/config-test-ca.pem");
        let ca = ca.display();

        let c = with_server(
            dir.path(),
            &format!("SERVER = ldaps://ldap.example.org\nCA_FILE = {ca}\n"),
        )
        .unwrap();
        assert_eq!(c.database.url, "ldaps://ldap.example.org:3890/");
        assert_eq!(c.database.ca_certificates.as_ref().map(Vec::len), Some(1));
        assert_eq!(c.database.protection(), "TLS");
        assert!(!c.database.password_in_clear());

        let c = with_server(dir.path(), "SERVER = ldap.example.org\nSTART_TLS = 1\n").unwrap();
        assert_eq!(c.database.url, "ldap://ldap.example.org:3890/");
        assert!(c.database.start_tls);
        assert!(c.database.ca_certificates.is_none(), "the system's CAs");
        assert_eq!(c.database.protection(), "StartTLS");
        assert!(!c.database.password_in_clear());

        let empty = write(dir.path(), "empty.pem", "no certificate here\n");
        let garbled = write(
            dir.path(),
            "garbled.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        for (lines, needle) in [
            (
                "SERVER = ldaps://h\nSTART_TLS = 1\n".to_owned(),
                "StartTLS upgrades an ldap://",
            ),
            (
                "SERVER = ldapi:///\nSTART_TLS = 1\n".to_owned(),
                "StartTLS upgrades an ldap://",
            ),
            (
                format!("SERVER = h\nCA_FILE = {ca}\n"),
                "only used with ldaps:// or START_TLS = 1",
            ),
            (
                "SERVER = ldaps://h\nCA_FILE = ca.pem\n".to_owned(),
                "must be an absolute path",
            ),
            (
                "SERVER = ldaps://h\nCA_FILE = /nonexistent/ca.pem\n".to_owned(),
                "cannot read",
            ),
            (
                format!("SERVER = ldaps://h\nCA_FILE = {}\n", empty.display()),
                "holds no CERTIFICATE block",
            ),
            (
                format!("SERVER = ldaps://h\nCA_FILE = {}\n", garbled.display()),
                "not PEM",
            ),
            (
                "SERVER = h\nSTART_TLS = maybe\n".to_owned(),
                "expected 0 or 1",
            ),
        ] {
            let err = with_server(dir.path(), &lines).unwrap_err().to_string();
            assert!(err.contains(needle), "{lines}: {err}");
        }
    }

    #[test]
    fn a_password_sent_in_clear_to_another_host_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        for (lines, in_clear) in [
            ("SERVER = ldap.example.org\n", true),
            ("SERVER = ldap://192.0.2.7/\n", true),
            ("SERVER = 127.0.0.1\n", false),
            ("SERVER = localhost\n", false),
            ("SERVER = ldap://[::1]:389/\n", false),
            ("SERVER = ldapi:///\n", false),
        ] {
            let c = with_server(dir.path(), lines).unwrap();
            assert_eq!(c.database.password_in_clear(), in_clear, "{lines}");
        }
    }

    #[test]
    fn the_sample_global_file_holds_the_defaults() {
        // contrib/prov-backup/Global.conf says that without -g its values apply.
        let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/prov-backup");
        let c = Config::load(
            &contrib.join("Rsnapshot.conf"),
            Some(&contrib.join("Global.conf")),
        )
        .unwrap();
        assert_eq!(
            (c.connect, c.reconnect),
            (CONNECT_DEFAULT, RECONNECT_DEFAULT)
        );
    }

    #[test]
    fn server_may_be_a_uri() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "s.conf",
            &SERVICE.replace("SERVER = ldap.example.org", "SERVER = ldap://127.0.0.1"),
        );
        assert_eq!(
            Config::load(&p, None).unwrap().database.url,
            "ldap://127.0.0.1:3890/"
        );
    }
}
