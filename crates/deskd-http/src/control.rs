//! Requests to the server over its own control socket, as the server's uid (blocking: called
//! from the blocking pool or a job's thread, never from the runtime's thread).

use std::path::{Path, PathBuf};

use deskd_client::Client;
use deskd_proto::{RebuildMode, RebuildState, Request, Response, VolumeStatus};

/// The control socket the actions go through.
#[derive(Debug, Clone)]
pub struct Control {
    socket: PathBuf,
}

/// A failed request: what the server (or the connection) said.
pub type ControlResult<T> = Result<T, String>;

fn said(e: deskd_client::ClientError) -> String {
    e.to_string()
}

impl Control {
    pub fn new(socket: PathBuf) -> Control {
        Control { socket }
    }

    pub fn connect(&self) -> ControlResult<Client> {
        Client::connect(&self.socket, deskd_client::default_timeout()).map_err(said)
    }

    /// Every served volume's state, with every client (the server's uid sees all).
    pub fn status(&self) -> ControlResult<Vec<VolumeStatus>> {
        self.connect()?.status(None).map_err(said)
    }

    /// The configured volumes the server refused, with why (the server's uid sees it); none
    /// from a server that predates the request.
    pub fn not_served(&self) -> Vec<deskd_proto::VolumeNotServed> {
        self.connect()
            .and_then(|mut c| c.not_served().map_err(said))
            .unwrap_or_default()
    }

    /// Flush, freeze (`seconds`, clamped by the server to `freeze_max`) or thaw `vol`; the
    /// outcome in words, and for a freeze its end (Unix time).
    pub fn simple(&self, vol: u32, action: SimpleAction) -> ControlResult<(String, Option<i64>)> {
        let vol = Some(vol);
        let request = match action {
            SimpleAction::Flush => Request::Flush { vol },
            SimpleAction::Freeze(seconds) => Request::Freeze { vol, seconds },
            SimpleAction::Thaw => Request::Thaw { vol },
        };
        match self.connect()?.call(request).map_err(said)? {
            Response::Done => Ok(("done".into(), None)),
            Response::Frozen {
                until,
                clamped,
                max,
            } => {
                let when = readable_utc(until);
                let text = match clamped {
                    true => format!("frozen until {when} (clamped to freeze_max {max} s)"),
                    false => format!("frozen until {when}"),
                };
                Ok((text, Some(until)))
            }
            Response::FrozenSnapshot {
                until,
                clamped,
                max,
                snapshot,
            } => {
                let when = readable_utc(until);
                let clamp = match clamped {
                    true => format!(" (clamped to freeze_max {max} s)"),
                    false => String::new(),
                };
                Ok((
                    format!("frozen until {when}{clamp}; pg_dump --snapshot={snapshot}"),
                    Some(until),
                ))
            }
            other => Err(format!("unexpected reply: {other:?}")),
        }
    }
}

/// A Unix time as people read it: `2026-12-06 12:05:02 UTC`.
pub fn readable_utc(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| format!("Unix time {unix}"))
}

/// An action that is done when its reply comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimpleAction {
    Flush,
    Freeze(Option<u32>),
    Thaw,
}

/// An online rebuild this side started, followed through one connection.
pub struct RebuildRun {
    client: Client,
    vol: u32,
    job: u64,
}

/// How long the server keeps a rebuild whose poller went quiet (this side polls far more
/// often; a stuck deskd-http lets the job end by itself).
const REBUILD_POLL_TIMEOUT_SECS: u32 = 60;

impl RebuildRun {
    pub fn start(control: &Control, vol: u32, mode: RebuildMode) -> ControlResult<RebuildRun> {
        let mut client = control.connect()?;
        let reply = client
            .call(Request::RebuildStart {
                vol,
                mode,
                threads: None,
                force: false,
                timeout_secs: REBUILD_POLL_TIMEOUT_SECS,
            })
            .map_err(said)?;
        match reply {
            Response::RebuildStarted { job } => Ok(RebuildRun { client, vol, job }),
            other => Err(format!("unexpected reply: {other:?}")),
        }
    }

    /// The job's state, with its difference lines from `from` on.
    pub fn poll(&mut self, from: u64) -> ControlResult<RebuildState> {
        let reply = self
            .client
            .call(Request::RebuildPoll {
                vol: self.vol,
                job: self.job,
                from,
            })
            .map_err(said)?;
        match reply {
            Response::Rebuild(state) => Ok(state),
            other => Err(format!("unexpected reply: {other:?}")),
        }
    }
}

/// The volume `name` names: its handle (`3`) or its root's last component (`projects`), when
/// only one served volume has it.
pub fn find_volume<'a>(volumes: &'a [VolumeStatus], name: &str) -> Option<&'a VolumeStatus> {
    if let Ok(handle) = name.parse::<u32>() {
        if let Some(v) = volumes.iter().find(|v| v.vol == handle) {
            return Some(v);
        }
    }
    let mut named = volumes.iter().filter(|v| volume_name(&v.root) == name);
    match (named.next(), named.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

/// A volume's short name: its root's last component (`/` for the root itself).
pub fn volume_name(root: &[u8]) -> String {
    use std::os::unix::ffi::OsStrExt;
    let root = Path::new(std::ffi::OsStr::from_bytes(root));
    root.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| root.to_string_lossy().into_owned())
}
