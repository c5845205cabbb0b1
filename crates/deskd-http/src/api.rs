//! The JSON the API answers with: the server's `Status` reply turned into what a page (or a
//! script) reads, in two views: everyone's (what any local user could learn from the socket)
//! and the token holder's (every connected client too).

use deskd_proto::{ClientStatus, RebuildMode, RebuildState, VolumeNotServed, VolumeStatus};
use serde::Serialize;

use crate::control::volume_name;
use crate::jobs::Job;

/// `GET /api/status`.
#[derive(Debug, Serialize)]
pub struct StatusView {
    /// Whether the request showed the token (then clients and jobs are listed).
    pub admin: bool,
    pub volumes: Vec<VolumeView>,
    /// The configured volumes the server refused (as `deskd status` lists them).
    pub not_served: Vec<NotServedView>,
    /// This side's jobs, newest first (token holders only).
    pub jobs: Option<Vec<Job>>,
}

/// A configured volume the server does not serve, and why.
#[derive(Debug, Serialize)]
pub struct NotServedView {
    pub root: String,
    /// Why (token holders only; others get [`NOT_SERVED_REDACTED`], as `deskd status` tells
    /// a user who is neither root nor the volume's owner: the reason can name the database).
    pub why: String,
    /// Unix time it was refused.
    pub since: i64,
}

/// What a reader without the token learns of why a volume is not served (the server's own
/// words to an unprivileged peer; the HTTP side asks as the server's uid, so it blanks the
/// reason itself).
pub use deskd_proto::NOT_SERVED_REDACTED;

/// One volume's state at a glance.
#[derive(Debug, Serialize)]
pub struct VolumeView {
    /// The handle, usable as `<name>` in `/api/volumes/<name>/<action>`.
    pub vol: u32,
    /// The root's last component, usable as `<name>` when no other volume has it.
    pub name: String,
    pub root: String,
    /// Null while the volume's database is unreachable (unknown, not 0), and for a reader
    /// without the token (the volume's activity figures are the admin's: the HTTP side asks
    /// the server as its own uid, so it leaves them out itself, as the socket does for a
    /// local user who is not the volume's admin).
    pub objects: Option<u64>,
    /// Null while the volume's database is unreachable, and for a reader without the token.
    pub last_id: Option<u32>,
    pub read_only: bool,
    pub read_only_reason: Option<String>,
    /// Unix time of the last flush (0: none since start).
    pub last_flush: i64,
    pub clean_at_start: bool,
    pub frozen_until: Option<i64>,
    /// Null for a reader without the token.
    pub wal_bytes: Option<u64>,
    pub check_problems: Vec<String>,
    pub rebuild: Option<RebuildView>,
    /// Connected clients (other than this page's own connection).
    pub client_count: u64,
    /// Who they are (token holders only).
    pub clients: Option<Vec<ClientView>>,
}

/// The volume's running (or last) online rebuild, as `Status` tells it.
#[derive(Debug, Serialize)]
pub struct RebuildView {
    pub job: u64,
    pub mode: &'static str,
    pub phase: String,
    pub pass: u32,
    /// Null for a reader without the token (the walk's count is the volume's object count).
    pub objects: Option<u64>,
    pub started: i64,
    pub finished: bool,
    /// Null for a reader without the token.
    pub differences: Option<u64>,
    pub error: Option<String>,
}

/// One connected client ("Active Users").
#[derive(Debug, Serialize)]
pub struct ClientView {
    pub uid: Option<u32>,
    pub pid: Option<u32>,
    /// The program's own name for itself: untrusted text (the page shows it as text only).
    pub program: Option<String>,
    pub since: i64,
    pub tcp_peer: Option<String>,
}

impl StatusView {
    pub fn new(
        volumes: Vec<VolumeStatus>,
        not_served: Vec<VolumeNotServed>,
        admin: bool,
        jobs: Option<Vec<Job>>,
    ) -> StatusView {
        let root_of = |root: &[u8]| String::from_utf8_lossy(root).into_owned();
        StatusView {
            admin,
            volumes: volumes.iter().map(|v| VolumeView::new(v, admin)).collect(),
            not_served: not_served
                .into_iter()
                .map(|n| {
                    let root = root_of(&n.root);
                    // The server's message often names the root already.
                    let why = match admin {
                        true => n.why_past(&root).to_owned(),
                        false => NOT_SERVED_REDACTED.to_owned(),
                    };
                    NotServedView {
                        root,
                        why,
                        since: n.since,
                    }
                })
                .collect(),
            jobs,
        }
    }
}

impl VolumeView {
    fn new(v: &VolumeStatus, admin: bool) -> VolumeView {
        let others: Vec<&ClientStatus> = v.clients.iter().filter(|c| !c.asker).collect();
        VolumeView {
            vol: v.vol,
            name: volume_name(&v.root),
            root: String::from_utf8_lossy(&v.root).into_owned(),
            objects: v.objects_shown().filter(|_| admin),
            last_id: v.last_id_shown().filter(|_| admin),
            read_only: v.read_only,
            read_only_reason: v.read_only_reason.clone(),
            last_flush: v.last_flush,
            clean_at_start: v.clean_at_start,
            frozen_until: v.frozen_until,
            wal_bytes: deskd_proto::shown(v.wal_bytes).filter(|_| admin),
            check_problems: v.check_problems.clone(),
            rebuild: v.rebuild.as_ref().map(|r| RebuildView::new(r, admin)),
            client_count: others.len() as u64 + u64::from(v.hidden_clients),
            clients: admin.then(|| {
                others
                    .iter()
                    .map(|c| ClientView {
                        uid: c.uid,
                        pid: c.pid,
                        program: c.program.clone(),
                        since: c.since,
                        tcp_peer: c.tcp_peer.clone(),
                    })
                    .collect()
            }),
        }
    }
}

/// What a reader without the token learns of a failed rebuild, as the socket tells an
/// unprivileged peer (the reason can name objects in folders that reader may not list; the
/// HTTP side asks the server as root, so it blanks the reason itself).
pub const REBUILD_ERROR_REDACTED: &str =
    "the rebuild ended early (root or the volume owner sees why)";

impl RebuildView {
    fn new(r: &RebuildState, admin: bool) -> RebuildView {
        RebuildView {
            job: r.job,
            mode: match r.mode {
                RebuildMode::Scan => "scan",
                RebuildMode::Repair => "repair",
                RebuildMode::Fresh => "fresh",
            },
            phase: r.phase.clone(),
            pass: r.pass,
            objects: deskd_proto::shown(r.objects).filter(|_| admin),
            started: r.started,
            finished: r.finished.is_some(),
            differences: match &r.finished {
                Some(Ok(summary)) if admin => deskd_proto::shown(summary.differences),
                _ => None,
            },
            error: match &r.finished {
                Some(Err(why)) if admin => Some(why.clone()),
                Some(Err(_)) => Some(REBUILD_ERROR_REDACTED.to_owned()),
                _ => None,
            },
        }
    }
}
