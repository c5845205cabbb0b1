//! What every connection thread shares with the server: the served volumes by handle (and
//! what a handle stands for while a reload changes it), the TCP settings a reload may change,
//! the connection limits, the online rebuilds and the open connections.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use deskd_proto::{ErrorCode, ErrorReply};

use crate::scrape_cache::ScrapeCache;
use crate::volume::VolumeHandle;
use crate::{clients, limits, rebuild, watch};

/// What TCP connections need: the token they must prove they hold (re-read from its file on
/// [`crate::Server::reconfigure`]), and whether they may use the admin verbs. All but the address
/// can change on a reload.
pub struct TcpAccess {
    pub(crate) token: RwLock<Vec<u8>>,
    pub(crate) token_file: RwLock<PathBuf>,
    pub(crate) admin: AtomicBool,
    /// Connections beyond this many are closed at once: each costs a thread, and anyone who
    /// can reach the port can open them (before the token is asked for).
    pub(crate) max_connections: AtomicUsize,
    pub(crate) open: Arc<AtomicUsize>,
}

/// Counts one open TCP connection while it lives.
pub struct TcpSlot(Arc<AtomicUsize>);

impl Drop for TcpSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TcpAccess {
    /// A slot for one more connection, or None when `max_connections` are open.
    pub(crate) fn slot(&self) -> Option<TcpSlot> {
        let max = self.max_connections();
        let taken = self
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| TcpSlot(self.open.clone()))
    }

    /// The token connections must prove they hold now.
    pub fn token(&self) -> Vec<u8> {
        self.token.read().unwrap().clone()
    }

    /// Whether TCP clients may use the admin verbs (`tcp_admin`).
    pub fn admin(&self) -> bool {
        self.admin.load(Ordering::SeqCst)
    }

    /// Most TCP connections open at once (`tcp_max_connections`).
    pub fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::SeqCst)
    }
}

/// What a volume handle stands for. A handle is a position in [`Shared`]'s list and keeps its
/// meaning for the server's life: a volume that is reopened keeps it, and one that is served
/// again after it was taken out of the configuration gets its old handle back.
pub(crate) enum Slot {
    Served(Arc<VolumeHandle>),
    /// Being closed and opened again, or closed, by a reload: requests wait for the outcome.
    Changing,
    /// No longer in the configuration; the volume root it was.
    Retired(PathBuf),
}

/// How long a request waits for a volume that a reload is closing or reopening.
const CHANGING_WAIT: Duration = Duration::from_secs(30);

/// What every connection thread shares.
pub struct Shared {
    pub(crate) volumes: RwLock<Vec<Slot>>,
    /// Counts reloads that closed a desktop: connections then drop read connections to
    /// desktops no longer served.
    pub(crate) closings: AtomicU64,
    pub shutting_down: AtomicBool,
    pub tcp: Option<TcpAccess>,
    /// Connection counts and limits, and the frame timeout (both transports).
    pub limits: Arc<limits::ConnectionLimits>,
    /// The running or last online rebuild of each volume.
    pub(crate) rebuilds: rebuild::Registry,
    /// The volumes' watchers (live tracking, issue 23).
    pub(crate) watchers: watch::Registry,
    /// The open connections (`deskd status`'s active users).
    pub(crate) clients: Arc<clients::Clients>,
    /// What `/metrics` keeps between scrapes (the start time, its read connections).
    pub(crate) metrics: ScrapeCache,
    /// The configured volumes refused at start or at a reload, and why (`deskd status`).
    pub(crate) not_served: std::sync::Mutex<Vec<NotServed>>,
    /// Held by whoever adds volumes to the list or changes what a handle stands for at a
    /// reload (the signal thread) or when a volume refused for want of the database is tried
    /// again ([`crate::retry`]), and by the shutdown: one at a time.
    pub(crate) changing_list: std::sync::Mutex<()>,
    /// Whether the thread trying refused volumes again runs ([`crate::retry`]).
    pub(crate) retrying: AtomicBool,
}

/// A volume refused only because the database could not be reached to check it: when and with
/// what settings it is tried again ([`crate::retry`]).
#[derive(Debug, Clone)]
pub(crate) struct Retry {
    pub config: crate::config::VolumeConfig,
    /// The wait after the next try, should it fail too (the writer's reconnect back-off).
    pub wait: Duration,
    pub next: Instant,
}

/// A configured volume this server does not serve.
#[derive(Debug, Clone)]
pub(crate) struct NotServed {
    /// The root as configured.
    pub root: PathBuf,
    /// The message logged when it was refused.
    pub why: String,
    /// Unix time it was refused.
    pub since: i64,
    /// The uid owning the root when it was refused, if it was a real directory then (not a
    /// link): who may see `why` besides root. Taken then, not at each request, so that
    /// nobody makes themselves the owner by creating the missing path afterwards (hostile
    /// review of stop 40), and a request never waits on a hung file system.
    pub owner: Option<u32>,
    /// Set when it is tried again as the database comes back.
    pub retry: Option<Retry>,
}

impl Shared {
    /// Every served volume, in handle order.
    pub fn volumes(&self) -> Vec<Arc<VolumeHandle>> {
        self.volumes
            .read()
            .unwrap()
            .iter()
            .filter_map(|slot| match slot {
                Slot::Served(handle) => Some(handle.clone()),
                _ => None,
            })
            .collect()
    }

    /// The volume with handle `vol`; while a reload reopens it, waits for it.
    pub fn volume(&self, vol: u32) -> Result<Arc<VolumeHandle>, ErrorReply> {
        let began = Instant::now();
        loop {
            match self.volumes.read().unwrap().get(vol as usize) {
                Some(Slot::Served(handle)) => return Ok(handle.clone()),
                Some(Slot::Changing) if began.elapsed() < CHANGING_WAIT => {}
                Some(Slot::Changing) => {
                    return Err(ErrorReply::new(
                        ErrorCode::Busy,
                        format!("volume handle {vol} is being reopened; try again"),
                    ))
                }
                Some(Slot::Retired(root)) => {
                    return Err(ErrorReply::new(
                        ErrorCode::NoSuchVolume,
                        format!(
                            "{}: no longer served (taken out of the configuration)",
                            root.display()
                        ),
                    ))
                }
                None => {
                    return Err(ErrorReply::new(
                        ErrorCode::NoSuchVolume,
                        format!("no volume with handle {vol}"),
                    ))
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Note `root` as not served, for `why` (replacing an earlier note of it); tried again
    /// per `retry` when set (the caller starts [`crate::retry`]'s thread).
    pub(crate) fn refuse(&self, root: &Path, why: String, retry: Option<Retry>) {
        let mut list = self.not_served.lock().unwrap();
        list.retain(|n| n.root != root);
        let owner = std::fs::symlink_metadata(root)
            .ok()
            .filter(|m| m.is_dir())
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        list.push(NotServed {
            root: root.to_path_buf(),
            why,
            since: deskd_db::now_unix(),
            owner,
            retry,
        });
    }

    /// Keep the notes of the roots `keep` says (a volume served now, or out of the
    /// configuration, is no longer "not served").
    pub(crate) fn keep_refused(&self, keep: impl Fn(&Path) -> bool) {
        self.not_served.lock().unwrap().retain(|n| keep(&n.root));
    }

    /// The handle for a volume about to be served: the one it had before it was taken out of
    /// the configuration, or a new one at the end. (Under [`Shared::changing_list`].)
    pub(crate) fn handle_for(&self, root: &Path) -> u32 {
        let slots = self.volumes.read().unwrap();
        let retired = slots
            .iter()
            .position(|slot| matches!(slot, Slot::Retired(r) if r == root));
        retired.unwrap_or(slots.len()) as u32
    }

    /// Make handle `index` stand for `slot` (a new handle when it is the next one).
    pub(crate) fn set_slot(&self, index: u32, slot: Slot) {
        let mut slots = self.volumes.write().unwrap();
        match slots.get_mut(index as usize) {
            Some(place) => *place = slot,
            None => slots.push(slot),
        }
    }

    /// Whether `vol` is a handle this server has given out (served now or not).
    pub fn is_handle(&self, vol: u32) -> bool {
        (vol as usize) < self.volumes.read().unwrap().len()
    }

    /// How many reloads have closed a desktop so far.
    pub fn closings(&self) -> u64 {
        self.closings.load(Ordering::SeqCst)
    }

    /// Whether opening `opening` of the volume with handle `vol` is still the one served.
    pub fn is_current(&self, vol: u32, opening: u64) -> bool {
        matches!(self.volumes.read().unwrap().get(vol as usize),
            Some(Slot::Served(h)) if h.opening == opening)
    }
}
