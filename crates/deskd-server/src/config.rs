//! Server configuration: a TOML file with a `[server]` table, one `[defaults]` table and one
//! `[volume."<path>"]` table per volume (DESIGN §6.6). Every key is optional.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use deskd_db::Durability;
use serde::Deserialize;

use crate::error::ServerError;

/// Per-volume preferences; `[defaults]` supplies what a volume table leaves out.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VolumePrefs {
    /// Seconds committed changes may stay only in the WAL (HELIOS `SQLFlushDelay`).
    pub flush_delay: Option<u64>,
    /// Seconds without writes after which the volume is flushed.
    pub idle_close: Option<u64>,
    /// Freeze length when none is given.
    pub freeze_default: Option<u32>,
    /// Longest freeze allowed.
    pub freeze_max: Option<u32>,
    /// Seconds a write waits while another process (an `sqlite3` session) holds the desktop's
    /// write lock, before it is refused with `Busy` (default 30, half the client timeout).
    pub busy_wait: Option<u64>,
    pub durability: Option<Durability>,
    /// WAL size in bytes that triggers a passive checkpoint.
    pub wal_limit: Option<u64>,
    /// Bytes kept free on the desktop's file system beyond the WAL (default 4 MiB, or 1/64 of a
    /// smaller file system's size): a commit
    /// that would leave less checkpoints first, and is refused when that does not make room.
    pub min_free: Option<u64>,
    /// Keep desktops under `<location>/<volume path>/.Desktop` (relative: under `state_dir`).
    pub desktop_location: Option<PathBuf>,
    /// Refuse client changes; use a valid `.Desktop` if present, else a temporary desktop.
    pub read_only: Option<bool>,
    /// Serve the volume although its root is inside or around another volume's root.
    pub nested: Option<bool>,
    /// Serve the volume although every user may write its root (mode o+w, like /tmp).
    pub world_writable: Option<bool>,
    /// Start an online repair by itself when the start-up check of the desktop fails
    /// (default false, [`DEFAULT_AUTO_REPAIR`]).
    pub auto_repair: Option<bool>,
    /// What a name replaced by another object of its kind outside deskd (save-by-replace,
    /// delete and create) keeps: its ID (`keep-id`, the default) or not (`new-id`, Netatalk's
    /// rule).
    pub replaced: Option<Replaced>,
    /// Live tracking of changes made outside deskd (issue 23): `off` (default), `auto`,
    /// `fanotify` or `inotify` ([`crate::watch`]).
    pub watch: Option<deskd_watch::WatchMode>,
    /// Test setting: the watcher reports an overflow once more than this many events wait
    /// (forces the overflow rescan); unset, only the kernel's own overflow counts.
    pub watch_queue: Option<usize>,
    /// Most MiB of events the fanotify watcher holds unread in the server's memory (default
    /// 192, 1 to 4096); beyond, they are dropped and the volume rescanned.
    pub watch_held_mib: Option<u64>,
    /// New IDs the watcher hands out for one user's objects per `watch_budget_seconds`
    /// (default 60,000); beyond, that user's new objects wait for the rescan of their folders
    /// at the window's end ([`crate::apply::spending`]).
    pub watch_budget: Option<u64>,
    /// The window of `watch_budget`, seconds (default 60).
    pub watch_budget_seconds: Option<u64>,
    /// Where the desktop lives (issue 28): `sqlite` (the default, the `.Desktop` file) or a
    /// PostgreSQL target: a `postgresql://user@host:port/db` URL, a libpq `key=value` list or
    /// `service=NAME`, with no password in it.
    pub backend: Option<String>,
    /// The PostgreSQL password: the first line of this file (mode 0600 or stricter).
    pub backend_password_file: Option<PathBuf>,
    /// The PostgreSQL password: this environment variable of the server (`PGPASSWORD`).
    pub backend_password_env: Option<String>,
}

/// The `replaced` setting: whether an object found at a registered name with another inode
/// (of the same kind) takes over that name's ID.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Replaced {
    /// The name keeps its ID (and so its aliases, comments): a save-by-replace is the same
    /// document.
    #[default]
    KeepId,
    /// The old record goes (its ID is never handed out again) and the object gets a new ID,
    /// unless the request's hint or carried ID names the record (an exchange, dt's replace).
    NewId,
}

/// `auto_repair` when not set: off. A failed check is reported (log, `deskd status`) and the
/// administrator decides, since a repair rewrites records clients may be using.
pub const DEFAULT_AUTO_REPAIR: bool = false;

/// Bytes kept free beside the WAL when `min_free` is not set: room for a large batch's frames
/// and for the checkpoint that folds them into the desktop. On a file system smaller than 256
/// MiB it is 1/64 of its size instead ([`crate::space::min_free`]).
pub const DEFAULT_MIN_FREE: u64 = 4 << 20;

/// `watch_budget` when not set: new IDs the watcher hands out for one user's objects per
/// window, 1,000 a second, well above what a person's work or a large copy over SMB makes (the
/// rescan at the window's end registers a larger copy all the same).
pub const DEFAULT_WATCH_BUDGET: u64 = 60_000;

/// `watch_budget_seconds` when not set.
pub const DEFAULT_WATCH_BUDGET_SECONDS: u64 = 60;

/// How long a write waits for a desktop another process holds locked, when `busy_wait` is not
/// set: half the client's default timeout (60 s), so the client gets the `Busy` error rather
/// than a timeout of its own.
pub const DEFAULT_BUSY_WAIT: u64 = 30;

/// The `[server]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerPrefs {
    pub socket: Option<PathBuf>,
    /// Base for relative `desktop_location` values (default `/var/lib/deskd`).
    pub state_dir: Option<PathBuf>,
    /// Also listen on TCP at this address (`HOST:PORT`); needs `token_file`.
    pub listen: Option<String>,
    /// The shared token TCP clients must prove they hold.
    pub token_file: Option<PathBuf>,
    /// Whether TCP clients may use the admin verbs (flush, freeze, thaw, rebuild); default no.
    pub tcp_admin: Option<bool>,
    /// Most TCP connections open at once (default 1024); more are closed at once.
    pub tcp_max_connections: Option<usize>,
    /// Most Unix-socket connections open at once (default 4096); root and the server's own
    /// uid have a reserve of slots beyond it.
    pub max_connections: Option<usize>,
    /// Most Unix-socket connections one uid may hold (default 256; root and the server's own
    /// uid are not counted against it).
    pub max_connections_per_uid: Option<usize>,
    /// Seconds a started frame (and the handshake) may take to arrive whole (default 10).
    pub frame_timeout: Option<u64>,
    /// The most the read connections map of the desktops together (default
    /// [`crate::mmap_budget::DEFAULT_MMAP_TOTAL`]; `0`: no mapping, every read by `pread(2)`).
    pub mmap_total: Option<ByteSize>,
    /// Serve `/metrics`, the admin page and its actions over HTTP at this address (`HOST:PORT`;
    /// off when not set). Needs `http_token_file`, or `token_file` with `tcp_admin = true`.
    pub http_listen: Option<String>,
    /// Who must show the admin token: `actions` (default: reading is open) or `all`.
    pub http_auth: Option<HttpAuth>,
    /// The admin page's own token; without it, the TCP `token_file`'s token, but only when
    /// `tcp_admin = true` (its holders may run the admin verbs anyway).
    pub http_token_file: Option<PathBuf>,
    /// Host names (besides IP addresses and `localhost`) the HTTP side answers to.
    pub http_hosts: Option<Vec<String>>,
    /// Most HTTP connections open at once (default 1024); more are closed at once.
    pub http_max_connections: Option<usize>,
    /// Where the admin page's backup action writes (a new file per run); no backup action
    /// without it.
    pub backup_dir: Option<PathBuf>,
}

/// A size in the configuration: a number of bytes, or a string of a number and a binary unit
/// (`"512MiB"`, `"2GiB"`, `"64K"`; `B`, `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(i64),
            Text(String),
        }
        match Written::deserialize(d)? {
            Written::Bytes(n) => u64::try_from(n)
                .map(ByteSize)
                .map_err(|_| serde::de::Error::custom(format!("{n}: a size cannot be negative"))),
            Written::Text(text) => parse_size(&text)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// `"512MiB"` and the like (see [`ByteSize`]) in bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "{text:?}: a whole number is needed (say \"1536MiB\" for 1.5 GiB)"
        ));
    }
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        other => {
            let units = "B, K or KiB, M or MiB, G or GiB, T or TiB";
            return Err(format!(
                "{text:?}: unknown unit {other:?} (a number of bytes, or with {units})"
            ));
        }
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: not a size (e.g. \"512MiB\")"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?}: too large"))
}

/// The `[netatalk]` table: `deskd serve` answers afpd's CNID protocol itself, on `listen`
/// (docs/netatalk.md). The other keys are the `deskd netatalk` bridge's options of the same
/// names; `deskd serve` reads them at start (a change needs a restart).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetatalkPrefs {
    /// Where afpd connects (`HOST:PORT`; the protocol has no authentication: keep it on
    /// loopback).
    pub listen: String,
    /// Most afpd connections served at once (default 256); more are closed at once.
    pub max_connections: Option<usize>,
    /// Seconds a handshake, or a request once begun, may take to arrive whole (default 10).
    pub frame_timeout: Option<u64>,
    /// Netatalk's afp.conf, read for each volume's `vol dbpath` folder (default
    /// /etc/netatalk/afp.conf when it exists).
    pub afp_conf: Option<PathBuf>,
    /// The `vol dbpath` of volumes afp.conf names none for (`$v`: the volume's name).
    pub dbpath: Option<String>,
}

/// Who must show the admin token on the HTTP side (`http_auth`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HttpAuth {
    /// Reading (the page, `/api/status`, `/metrics`) is open; actions need the token.
    #[default]
    Actions,
    /// Everything but the page's static HTML needs the token.
    All,
}

/// Resolved HTTP settings (`http_listen` and its companions).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    pub listen: String,
    pub auth: HttpAuth,
    /// `http_token_file`, else `token_file` (only with `tcp_admin = true`).
    pub token_file: PathBuf,
    /// Whether `token_file` is the TCP token (no `http_token_file`): the start-up warning of a
    /// non-loopback `http_listen` says that this token crosses the network in clear.
    pub token_is_tcp: bool,
    pub hosts: Vec<String>,
    pub max_connections: usize,
    pub backup_dir: Option<PathBuf>,
}

/// The `backend` setting of a volume (its own, else `[defaults]`'s) with its password source.
/// `sqlite` or nothing: the SQLite desktop.
fn backend_of(
    prefs: &VolumePrefs,
    d: &VolumePrefs,
    root: &Path,
) -> Result<Option<deskd_pg::ConnectOptions>, ServerError> {
    let target = match prefs.backend.as_ref().or(d.backend.as_ref()) {
        None => return Ok(None),
        Some(t) if t == "sqlite" => return Ok(None),
        Some(t) => t.clone(),
    };
    // Only the table that names the database names its password, or both come from
    // [defaults]: a volume's own target never takes another's password by accident.
    let (file, env) = if prefs.backend.is_some() {
        (&prefs.backend_password_file, &prefs.backend_password_env)
    } else {
        (&d.backend_password_file, &d.backend_password_env)
    };
    let password = match (file, env) {
        (Some(_), Some(_)) => {
            return Err(ServerError::BackendPassword {
                root: root.to_path_buf(),
            })
        }
        (Some(f), None) => deskd_pg::PasswordSource::File(f.clone()),
        (None, Some(v)) => deskd_pg::PasswordSource::Env(v.clone()),
        (None, None) => deskd_pg::PasswordSource::None,
    };
    Ok(Some(deskd_pg::ConnectOptions { target, password }))
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub server: ServerPrefs,
    /// The afpd CNID listener, when the table is there.
    pub netatalk: Option<NetatalkPrefs>,
    #[serde(default)]
    pub defaults: VolumePrefs,
    #[serde(default)]
    pub volume: BTreeMap<String, VolumePrefs>,
}

/// Resolved settings of one volume.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeConfig {
    pub root: PathBuf,
    pub flush_delay: u64,
    pub idle_close: u64,
    pub freeze_default: u32,
    pub freeze_max: u32,
    /// How long a write waits for a write lock another process holds, before `Busy`.
    pub busy_wait: u64,
    pub durability: Durability,
    pub wal_limit: u64,
    /// None: `DEFAULT_MIN_FREE` (4 MiB), or less on a small file system.
    pub min_free: Option<u64>,
    pub desktop_location: Option<PathBuf>,
    pub read_only: bool,
    /// Served although inside or around another volume's root (`nested`, `--nested`).
    pub nested: bool,
    /// Served although every user may write its root (`world_writable`, `--world-writable`).
    pub world_writable: bool,
    /// An online repair starts by itself when the start-up check fails ([`crate::autorepair`]).
    pub auto_repair: bool,
    /// Whether a replaced name keeps its ID (`replaced`; reloaded on SIGHUP).
    pub replaced: Replaced,
    /// How changes made outside deskd are tracked (`watch`; a reload restarts the watcher).
    pub watch: deskd_watch::WatchMode,
    /// The watcher's own queue bound (`watch_queue`, a test setting).
    pub watch_queue: Option<usize>,
    /// Most bytes of events the fanotify watcher holds unread (`watch_held_mib`).
    pub watch_held_max: u64,
    /// New IDs the watcher hands out per user per `watch_budget_window` (`watch_budget`).
    pub watch_budget: u64,
    /// The window of `watch_budget` (`watch_budget_seconds`, at least 1 s).
    pub watch_budget_window: std::time::Duration,
    /// The PostgreSQL database the desktop lives in (`backend`); None: the SQLite `.Desktop`.
    pub backend: Option<deskd_pg::ConnectOptions>,
}

/// Resolved TCP settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpConfig {
    pub listen: String,
    pub token_file: PathBuf,
    pub admin: bool,
    pub max_connections: usize,
}

/// Resolved connection limits (both transports; TCP's own count is [`TcpConfig`]'s).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Unix-socket connections open at once, all users but root and the server's uid.
    pub max_connections: usize,
    /// Unix-socket connections one uid may hold (root and the server's uid: no such limit).
    pub max_connections_per_uid: usize,
    /// How long a started frame, or the handshake, may take to arrive whole.
    pub frame_timeout: std::time::Duration,
}

impl Default for Limits {
    /// The defaults fit the systemd unit's `LimitNOFILE=65536` (docs/security.md, "Resource
    /// limits").
    fn default() -> Limits {
        Limits {
            max_connections: 4096,
            max_connections_per_uid: 256,
            frame_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// Resolved server settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub socket: PathBuf,
    pub limits: Limits,
    /// TCP listener, when `listen` is set.
    pub tcp: Option<TcpConfig>,
    /// HTTP listener, when `http_listen` is set.
    pub http: Option<HttpConfig>,
    pub state_dir: PathBuf,
    pub volumes: Vec<VolumeConfig>,
    /// The afpd CNID listener (`[netatalk]`), as the file gives it.
    pub netatalk: Option<NetatalkPrefs>,
    /// The most the read connections map of the desktops together ([`crate::mmap_budget`]).
    pub mmap_total: u64,
}

impl ConfigFile {
    /// Parse a configuration file.
    pub fn load(path: &Path) -> Result<ConfigFile, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|error| ServerError::ConfigRead {
            path: path.to_path_buf(),
            error,
        })?;
        toml::from_str(&text).map_err(|error| ServerError::ConfigSyntax {
            path: path.to_path_buf(),
            error: Box::new(error),
        })
    }

    /// The HTTP side's token file: `http_token_file`; else the TCP `token_file`, but only when
    /// `tcp_admin = true`: otherwise a TCP token holder, refused the admin verbs over TCP,
    /// could run them over HTTP.
    fn http_token_file(&self) -> Result<PathBuf, ServerError> {
        match (&self.server.http_token_file, &self.server.token_file) {
            (Some(http), _) => Ok(http.clone()),
            (None, Some(tcp)) if self.server.tcp_admin == Some(true) => Ok(tcp.clone()),
            (None, Some(_)) => Err(ServerError::HttpTokenNotAdmin),
            (None, None) => Err(ServerError::HttpWithoutToken),
        }
    }

    /// Resolve against defaults; `extra_volumes` (from the command line) use `[defaults]`.
    /// `socket` is the path already chosen by the caller (`--socket`, else `[server] socket`,
    /// else the common rule).
    pub fn resolve(
        &self,
        socket: PathBuf,
        extra_volumes: &[PathBuf],
    ) -> Result<Config, ServerError> {
        let state_dir = self
            .server
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/deskd"));
        let mut volumes = Vec::new();
        let mut add = |root: PathBuf, prefs: &VolumePrefs| -> Result<(), ServerError> {
            let d = &self.defaults;
            let pick = |a: Option<u64>, b: Option<u64>, default: u64| a.or(b).unwrap_or(default);
            let freeze_max = prefs.freeze_max.or(d.freeze_max).unwrap_or(60);
            let freeze_default = prefs.freeze_default.or(d.freeze_default).unwrap_or(10);
            if freeze_max == 0 {
                return Err(ServerError::FreezeMaxZero { root });
            }
            // Out of range is said, not cut silently (the newcomer review of stop 40 set 0
            // and 5000 and was not told).
            if let Some(mib) = prefs
                .watch_held_mib
                .or(d.watch_held_mib)
                .filter(|mib| !(1..=4096).contains(mib))
            {
                return Err(ServerError::WatchHeldMib { root, mib });
            }
            let location = prefs
                .desktop_location
                .clone()
                .or(d.desktop_location.clone())
                .map(|l| {
                    if l.is_absolute() {
                        l
                    } else {
                        state_dir.join(l)
                    }
                });
            let cfg = VolumeConfig {
                flush_delay: pick(prefs.flush_delay, d.flush_delay, 60).max(1),
                idle_close: pick(prefs.idle_close, d.idle_close, 60).max(1),
                freeze_default: freeze_default.min(freeze_max),
                freeze_max,
                busy_wait: pick(prefs.busy_wait, d.busy_wait, DEFAULT_BUSY_WAIT).max(1),
                durability: prefs.durability.or(d.durability).unwrap_or_default(),
                wal_limit: pick(prefs.wal_limit, d.wal_limit, 64 << 20).max(1 << 20),
                min_free: prefs.min_free.or(d.min_free),
                desktop_location: location,
                read_only: prefs.read_only.or(d.read_only).unwrap_or(false),
                nested: prefs.nested.or(d.nested).unwrap_or(false),
                world_writable: prefs.world_writable.or(d.world_writable).unwrap_or(false),
                auto_repair: prefs
                    .auto_repair
                    .or(d.auto_repair)
                    .unwrap_or(DEFAULT_AUTO_REPAIR),
                replaced: prefs.replaced.or(d.replaced).unwrap_or_default(),
                watch: prefs.watch.or(d.watch).unwrap_or_default(),
                watch_queue: prefs.watch_queue.or(d.watch_queue).map(|n| n.max(1)),
                watch_held_max: prefs
                    .watch_held_mib
                    .or(d.watch_held_mib)
                    .map_or(deskd_watch::DEFAULT_HELD_BYTES_MAX, |mib| mib << 20),
                watch_budget: pick(prefs.watch_budget, d.watch_budget, DEFAULT_WATCH_BUDGET),
                watch_budget_window: std::time::Duration::from_secs(
                    pick(
                        prefs.watch_budget_seconds,
                        d.watch_budget_seconds,
                        DEFAULT_WATCH_BUDGET_SECONDS,
                    )
                    .max(1),
                ),
                backend: backend_of(prefs, d, &root)?,
                root,
            };
            volumes.push(cfg);
            Ok(())
        };
        for (root, prefs) in &self.volume {
            add(PathBuf::from(root), prefs)?;
        }
        // A root given on the command line and in a [volume] table is served once, with the
        // table's settings (opening it twice would find its own lock taken).
        let same = |a: &Path, b: &Path| {
            a == b
                || std::fs::canonicalize(a)
                    .is_ok_and(|a| std::fs::canonicalize(b).is_ok_and(|b| a == b))
        };
        for root in extra_volumes {
            if self.volume.keys().any(|r| same(Path::new(r), root)) {
                continue;
            }
            add(root.clone(), &VolumePrefs::default())?;
        }
        if volumes.is_empty() {
            return Err(ServerError::NoVolumes);
        }
        let tcp = match (&self.server.listen, &self.server.token_file) {
            (None, _) => None,
            (Some(_), None) => return Err(ServerError::ListenWithoutToken),
            (Some(listen), Some(token_file)) => Some(TcpConfig {
                listen: listen.clone(),
                token_file: token_file.clone(),
                admin: self.server.tcp_admin.unwrap_or(false),
                max_connections: self.server.tcp_max_connections.unwrap_or(1024).max(1),
            }),
        };
        let http = match &self.server.http_listen {
            None => None,
            Some(listen) => Some(HttpConfig {
                listen: listen.clone(),
                auth: self.server.http_auth.unwrap_or_default(),
                token_file: self.http_token_file()?,
                token_is_tcp: self.server.http_token_file.is_none(),
                hosts: self.server.http_hosts.clone().unwrap_or_default(),
                max_connections: self.server.http_max_connections.unwrap_or(1024).max(1),
                backup_dir: self.server.backup_dir.clone(),
            }),
        };
        let defaults = Limits::default();
        let limits = Limits {
            max_connections: self
                .server
                .max_connections
                .unwrap_or(defaults.max_connections)
                .max(1),
            max_connections_per_uid: self
                .server
                .max_connections_per_uid
                .unwrap_or(defaults.max_connections_per_uid)
                .max(1),
            frame_timeout: self
                .server
                .frame_timeout
                .map(|s| std::time::Duration::from_secs(s.max(1)))
                .unwrap_or(defaults.frame_timeout),
        };
        Ok(Config {
            socket,
            limits,
            tcp,
            http,
            state_dir,
            volumes,
            netatalk: self.netatalk.clone(),
            mmap_total: self
                .server
                .mmap_total
                .map(|size| size.0)
                .unwrap_or(crate::mmap_budget::DEFAULT_MMAP_TOTAL),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let file: ConfigFile = toml::from_str(
            r#"
            [server]
            state_dir = "/state"
            [defaults]
            flush_delay = 30
            freeze_max = 20
            durability = "full"
            desktop_location = "desktops"
            [volume."/srv/a"]
            read_only = true
            freeze_default = 50
            "#,
        )
        .unwrap();
        let cfg = file
            .resolve("/s.sock".into(), &[PathBuf::from("/srv/b")])
            .unwrap();
        assert_eq!(cfg.volumes.len(), 2);
        let a = &cfg.volumes[0];
        assert_eq!(a.root, PathBuf::from("/srv/a"));
        assert!(a.read_only);
        assert_eq!(a.flush_delay, 30);
        assert_eq!(a.freeze_default, 20, "clamped to freeze_max");
        assert_eq!(a.durability, Durability::Full);
        assert_eq!(a.desktop_location, Some(PathBuf::from("/state/desktops")));
        assert_eq!(cfg.volumes[1].idle_close, 60);
    }

    #[test]
    fn a_root_on_the_command_line_and_in_a_table_is_served_once_with_the_tables_settings() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("v");
        std::fs::create_dir(&root).unwrap();
        let file: ConfigFile = toml::from_str(&format!(
            "[volume.\"{}\"]\nread_only = true\n",
            root.display()
        ))
        .unwrap();
        // Named another way on the command line: the same directory.
        let again = dir.path().join(".").join("v");
        let cfg = file.resolve("/s.sock".into(), &[again]).unwrap();
        assert_eq!(cfg.volumes.len(), 1);
        assert!(cfg.volumes[0].read_only);
    }

    #[test]
    fn watch_held_mib_out_of_range_is_refused_and_in_range_taken_as_is() {
        for (mib, ok) in [(0, false), (1, true), (4096, true), (5000, false)] {
            let file: ConfigFile =
                toml::from_str(&format!("[defaults]\nwatch_held_mib = {mib}\n")).unwrap();
            let got = file.resolve("/s.sock".into(), &[PathBuf::from("/srv/b")]);
            match got {
                Ok(cfg) => {
                    assert!(ok, "{mib} taken");
                    assert_eq!(cfg.volumes[0].watch_held_max, mib << 20);
                }
                Err(e) => {
                    assert!(!ok, "{mib}: {e}");
                    assert!(e.to_string().contains("give 1 to 4096"), "{e}");
                }
            }
        }
    }

    /// The resolved volume served at `root`.
    fn volume_at<'a>(cfg: &'a Config, root: &str) -> &'a VolumeConfig {
        cfg.volumes
            .iter()
            .find(|v| v.root == Path::new(root))
            .unwrap()
    }

    #[test]
    fn backend_is_sqlite_by_default_and_a_database_with_its_password_source() {
        use deskd_pg::{ConnectOptions, PasswordSource};
        let file: ConfigFile = toml::from_str(
            "[defaults]\nbackend = \"postgresql://deskd@db/desk\"\n\
             backend_password_file = \"/etc/deskd/pg\"\n\
             [volume.\"/a\"]\n\
             [volume.\"/b\"]\nbackend = \"sqlite\"\n\
             [volume.\"/c\"]\nbackend = \"service=other\"\nbackend_password_env = \"PW\"\n\
             [volume.\"/d\"]\nbackend = \"host=db user=u\"\n",
        )
        .unwrap();
        let cfg = file.resolve("/s".into(), &[]).unwrap();
        let of = |root: &str| volume_at(&cfg, root).backend.clone();
        assert_eq!(
            of("/a"),
            Some(ConnectOptions {
                target: "postgresql://deskd@db/desk".into(),
                password: PasswordSource::File("/etc/deskd/pg".into()),
            })
        );
        assert_eq!(of("/b"), None);
        assert_eq!(of("/c").unwrap().password, PasswordSource::Env("PW".into()));
        // A volume's own target does not take [defaults]' password.
        assert_eq!(of("/d").unwrap().password, PasswordSource::None);
        let plain = ConfigFile::default()
            .resolve("/s".into(), &["/e".into()])
            .unwrap();
        assert_eq!(plain.volumes[0].backend, None);
        let both: ConfigFile = toml::from_str(
            "[volume.\"/a\"]\nbackend = \"service=x\"\nbackend_password_file = \"/f\"\n\
             backend_password_env = \"PW\"\n",
        )
        .unwrap();
        let refused = both.resolve("/s".into(), &[]).unwrap_err().to_string();
        assert!(refused.contains("give one"), "{refused}");
    }

    #[test]
    fn watch_is_off_by_default_and_set_per_volume_or_in_defaults() {
        use deskd_watch::WatchMode;
        let file: ConfigFile = toml::from_str(
            "[defaults]\nwatch = \"off\"\n[volume.\"/a\"]\n\
             [volume.\"/b\"]\nwatch = \"inotify\"\nwatch_queue = 0\n",
        )
        .unwrap();
        let cfg = file.resolve("/s".into(), &[]).unwrap();
        let of = |root: &str| volume_at(&cfg, root);
        assert_eq!(of("/a").watch, WatchMode::Off);
        assert_eq!(of("/b").watch, WatchMode::Inotify);
        // A bound of 0 would report an overflow for every event: at least 1.
        assert_eq!(of("/b").watch_queue, Some(1));
        let plain = ConfigFile::default()
            .resolve("/s".into(), &["/c".into()])
            .unwrap();
        assert_eq!(plain.volumes[0].watch, WatchMode::Off);
        assert_eq!(plain.volumes[0].watch_queue, None);
        assert!(toml::from_str::<ConfigFile>("[defaults]\nwatch = \"poll\"\n").is_err());
    }

    #[test]
    fn replaced_keeps_ids_by_default_and_is_set_per_volume_or_in_defaults() {
        let file: ConfigFile = toml::from_str(
            "[defaults]\nreplaced = \"new-id\"\n[volume.\"/a\"]\n\
             [volume.\"/b\"]\nreplaced = \"keep-id\"\n",
        )
        .unwrap();
        let cfg = file.resolve("/s".into(), &[]).unwrap();
        let of = |root: &str| volume_at(&cfg, root);
        assert_eq!(of("/a").replaced, Replaced::NewId);
        assert_eq!(of("/b").replaced, Replaced::KeepId);
        let plain = ConfigFile::default()
            .resolve("/s".into(), &["/c".into()])
            .unwrap();
        assert_eq!(plain.volumes[0].replaced, Replaced::KeepId);
        assert!(toml::from_str::<ConfigFile>("[defaults]\nreplaced = \"new\"\n").is_err());
    }

    #[test]
    fn auto_repair_is_off_by_default_and_set_per_volume_or_in_defaults() {
        let resolve = |text: &str| {
            let file: ConfigFile = toml::from_str(text).unwrap();
            file.resolve("/s.sock".into(), &[])
                .unwrap()
                .volumes
                .iter()
                .map(|v| v.auto_repair)
                .collect::<Vec<_>>()
        };
        // The documented default (docs/deskd.md): off.
        assert_eq!(resolve("[volume.\"/srv/a\"]\n"), vec![false]);
        assert_eq!(
            resolve(
                "[defaults]\nauto_repair = true\n[volume.\"/srv/a\"]\n[volume.\"/srv/b\"]\nauto_repair = false\n"
            ),
            vec![true, false]
        );
    }

    #[test]
    fn busy_wait_has_a_default_a_floor_and_a_volume_override() {
        let file: ConfigFile = toml::from_str(
            r#"
            [defaults]
            busy_wait = 0
            [volume."/srv/a"]
            busy_wait = 5
            "#,
        )
        .unwrap();
        let cfg = file
            .resolve("/s.sock".into(), &[PathBuf::from("/srv/b")])
            .unwrap();
        assert_eq!(cfg.volumes[0].busy_wait, 5);
        assert_eq!(cfg.volumes[1].busy_wait, 1, "at least 1 s");
        let plain = ConfigFile::default()
            .resolve("/s.sock".into(), &[PathBuf::from("/srv/b")])
            .unwrap();
        assert_eq!(plain.volumes[0].busy_wait, DEFAULT_BUSY_WAIT);
    }

    #[test]
    fn tcp_needs_a_token_file() {
        let parse = |text: &str| {
            toml::from_str::<ConfigFile>(text)
                .unwrap()
                .resolve("/s".into(), &[PathBuf::from("/v")])
        };
        let e = parse("[server]\nlisten = \"127.0.0.1:4700\"").unwrap_err();
        assert!(e.to_string().contains("listen needs token_file"), "{e}");
        let cfg = parse("[server]\nlisten = \"[::1]:4700\"\ntoken_file = \"/t\"").unwrap();
        assert_eq!(
            cfg.tcp,
            Some(TcpConfig {
                listen: "[::1]:4700".into(),
                token_file: "/t".into(),
                admin: false,
                max_connections: 1024,
            })
        );
        assert_eq!(parse("").unwrap().tcp, None);
    }

    #[test]
    fn http_needs_a_token_file_and_falls_back_to_the_tcp_one_only_with_tcp_admin() {
        let parse = |text: &str| {
            toml::from_str::<ConfigFile>(text)
                .unwrap()
                .resolve("/s".into(), &[PathBuf::from("/v")])
        };
        let e = parse("[server]\nhttp_listen = \"127.0.0.1:8470\"").unwrap_err();
        assert!(
            e.to_string().contains("http_listen needs http_token_file"),
            "{e}"
        );
        // The TCP token's holders may not run admin verbs (tcp_admin = false, the default):
        // they must not get them over HTTP either.
        for admin in ["", "tcp_admin = false\n"] {
            let e = parse(&format!(
                "[server]\nhttp_listen = \"127.0.0.1:8470\"\ntoken_file = \"/t\"\n{admin}"
            ))
            .unwrap_err();
            assert_eq!(
                e.to_string(),
                "configuration: http_listen needs http_token_file: token_file's holders may \
                 not run admin verbs (tcp_admin = false)"
            );
        }
        let cfg = parse(
            "[server]\nhttp_listen = \"127.0.0.1:8470\"\ntoken_file = \"/t\"\ntcp_admin = true",
        )
        .unwrap();
        assert_eq!(
            cfg.http,
            Some(HttpConfig {
                listen: "127.0.0.1:8470".into(),
                auth: HttpAuth::Actions,
                token_file: "/t".into(),
                token_is_tcp: true,
                hosts: Vec::new(),
                max_connections: 1024,
                backup_dir: None,
            })
        );
        let cfg = parse(
            "[server]\nhttp_listen = \"[::1]:1\"\ntoken_file = \"/t\"\nhttp_token_file = \"/h\"\n\
             http_auth = \"all\"\nhttp_hosts = [\"files.example\"]\nhttp_max_connections = 0\n\
             backup_dir = \"/b\"",
        )
        .unwrap()
        .http
        .unwrap();
        assert_eq!(cfg.token_file, PathBuf::from("/h"));
        assert!(!cfg.token_is_tcp);
        assert_eq!(cfg.auth, HttpAuth::All);
        assert_eq!(cfg.hosts, vec!["files.example".to_string()]);
        assert_eq!(cfg.max_connections, 1, "at least one");
        assert_eq!(cfg.backup_dir, Some(PathBuf::from("/b")));
        assert!(toml::from_str::<ConfigFile>("[server]\nhttp_auth = \"some\"").is_err());
        assert_eq!(parse("").unwrap().http, None);
    }

    #[test]
    fn connection_limits_have_defaults_and_floors() {
        let parse = |text: &str| {
            toml::from_str::<ConfigFile>(text)
                .unwrap()
                .resolve("/s".into(), &[PathBuf::from("/v")])
                .unwrap()
                .limits
        };
        assert_eq!(parse(""), Limits::default());
        let set =
            parse("[server]\nmax_connections = 50\nmax_connections_per_uid = 0\nframe_timeout = 3");
        assert_eq!(set.max_connections, 50);
        assert_eq!(set.max_connections_per_uid, 1, "at least one");
        assert_eq!(set.frame_timeout, std::time::Duration::from_secs(3));
    }

    #[test]
    fn mmap_total_has_a_default_and_takes_bytes_or_units() {
        let parse = |text: &str| {
            toml::from_str::<ConfigFile>(text).map(|f| {
                f.resolve("/s".into(), &[PathBuf::from("/v")])
                    .unwrap()
                    .mmap_total
            })
        };
        assert_eq!(parse("").unwrap(), crate::mmap_budget::DEFAULT_MMAP_TOTAL);
        assert_eq!(
            parse("[server]\nmmap_total = \"512MiB\"").unwrap(),
            512 << 20
        );
        assert_eq!(parse("[server]\nmmap_total = \"2G\"").unwrap(), 2 << 30);
        assert_eq!(parse("[server]\nmmap_total = 0").unwrap(), 0);
        assert_eq!(parse("[server]\nmmap_total = 4096").unwrap(), 4096);
        for bad in ["\"512MB\"", "\"lots\"", "-1", "\"99999999999TiB\""] {
            assert!(
                parse(&format!("[server]\nmmap_total = {bad}")).is_err(),
                "{bad}"
            );
        }
        let e = parse("[server]\nmmap_total = \"512MB\"").unwrap_err();
        assert!(e.to_string().contains("unknown unit \"MB\""), "{e}");
        assert!(e.to_string().contains("M or MiB"), "{e}");
        let e = parse_size("1.5GiB").unwrap_err();
        assert!(e.contains("a whole number is needed"), "{e}");
        let e = parse("[server]\nmmap_total = -1").unwrap_err();
        assert!(e.to_string().contains("cannot be negative"), "{e}");
    }

    #[test]
    fn unknown_keys_and_no_volumes_are_errors() {
        assert!(toml::from_str::<ConfigFile>("[defaults]\nflush_dealy = 3").is_err());
        assert!(ConfigFile::default().resolve("/s".into(), &[]).is_err());
    }

    #[test]
    fn the_netatalk_table_needs_listen_and_knows_its_keys() {
        let file: ConfigFile = toml::from_str(
            "[netatalk]\nlisten = \"127.0.0.1:4700\"\nmax_connections = 8\n\
             [volume.\"/v\"]\n",
        )
        .unwrap();
        let resolved = file.resolve("/s".into(), &[]).unwrap();
        let netatalk = resolved.netatalk.unwrap();
        assert_eq!(netatalk.listen, "127.0.0.1:4700");
        assert_eq!(netatalk.max_connections, Some(8));
        assert_eq!(netatalk.frame_timeout, None);
        // No table: no listener.
        let plain: ConfigFile = toml::from_str("[volume.\"/v\"]\n").unwrap();
        assert!(plain.resolve("/s".into(), &[]).unwrap().netatalk.is_none());
        assert!(toml::from_str::<ConfigFile>("[netatalk]\nmax_connections = 8").is_err());
        assert!(toml::from_str::<ConfigFile>("[netatalk]\nlisten = \"x\"\nport = 1").is_err());
    }
}
