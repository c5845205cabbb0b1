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
    /// Taken out of the served list while configured: a PostgreSQL volume found moved out of
    /// the database ([`Shared::serve`]); the volume root (listed as not served, with why).
    NotServed(PathBuf),
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
    /// Unix time it was first refused (not served since; a refusal again keeps it).
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
                // One found moved out of the database is not served from the moment it is.
                Slot::Served(handle) if handle.moved_out().is_none() => Some(handle.clone()),
                _ => None,
            })
            .collect()
    }

    /// The volume with handle `vol`; while a reload reopens it, waits for it.
    pub fn volume(&self, vol: u32) -> Result<Arc<VolumeHandle>, ErrorReply> {
        let began = Instant::now();
        loop {
            match self.volumes.read().unwrap().get(vol as usize) {
                Some(Slot::Changing) if began.elapsed() < CHANGING_WAIT => {}
                Some(Slot::Changing) => {
                    return Err(ErrorReply::new(
                        ErrorCode::Busy,
                        format!("volume handle {vol} is being reopened; try again"),
                    ))
                }
                // Found moved out of the database, not yet taken out of the list: the same
                // answer as once it is, and nothing read from the database's copy.
                Some(Slot::Served(handle)) if handle.moved_out().is_some() => {
                    return Err(not_served(handle.volume.root()))
                }
                Some(Slot::Served(handle)) => return Ok(handle.clone()),
                Some(Slot::NotServed(root)) => return Err(not_served(root)),
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
    /// A root noted already keeps its first time: status says since when it has not been
    /// served, not when it was last tried (a reload, a retry refused for another reason).
    pub(crate) fn refuse(&self, root: &Path, why: String, retry: Option<Retry>) {
        let mut list = self.not_served.lock().unwrap();
        let first = list.iter().find(|n| n.root == root).map(|n| n.since);
        list.retain(|n| n.root != root);
        let owner = std::fs::symlink_metadata(root)
            .ok()
            .filter(|m| m.is_dir())
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        list.push(NotServed {
            root: root.to_path_buf(),
            why,
            since: first.unwrap_or_else(deskd_db::now_unix),
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
        let retired = slots.iter().position(|slot| match slot {
            Slot::Retired(r) | Slot::NotServed(r) => r == root,
            // Found moved out, and not yet taken out of the list (a reload opens it anew).
            Slot::Served(h) => h.moved_out().is_some() && h.volume.root() == root,
            Slot::Changing => false,
        });
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
            Some(Slot::Served(h)) if h.opening == opening && h.moved_out().is_none())
    }

    /// Make handle `index` stand for `handle`, served; a PostgreSQL volume found moved out of
    /// the database later is then taken out of the served list at once (listed as not
    /// served, with why), not served read-only from the database's copy until a reload.
    pub(crate) fn serve(self: &Arc<Self>, index: u32, handle: Arc<VolumeHandle>) {
        self.set_slot(index, Slot::Served(handle.clone()));
        self.watch_moved_out(&handle);
    }

    /// Set the hook of [`Shared::serve`] on a served `handle` (and on those served at start).
    pub(crate) fn watch_moved_out(self: &Arc<Self>, handle: &Arc<VolumeHandle>) {
        let Some(pg) = &handle.pg else {
            return;
        };
        // Weak: the hook is kept by the volume, which the list keeps.
        let shared = Arc::downgrade(self);
        let (index, opening) = (handle.index, handle.opening);
        let configured = handle.config.root.clone();
        pg.when_moved_out(Box::new(move |why| {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            // Listed as not served, and connections drop their read connections to it
            // (is_current is false for it now), before the slot itself changes.
            shared.refuse(&configured, why, None);
            shared.closings.fetch_add(1, Ordering::SeqCst);
            // The slot under the list's lock, which a reload may hold a while: not on the
            // writer's thread, which the reload may be waiting for.
            let started = std::thread::Builder::new()
                .name("moved-out".into())
                .spawn(move || shared.take_out(index, opening, &configured));
            if let Err(e) = started {
                tracing::warn!("cannot start the thread that takes a moved-out volume out: {e}");
            }
        }));
    }

    /// Take the opening `opening` of handle `index` (found moved out of the database) out of
    /// the served list and close it. A reload that opened the volume anew meanwhile has
    /// replaced it: then only its stale "not served" note goes.
    fn take_out(&self, index: u32, opening: u64, configured: &Path) {
        let _changing = self.changing_list.lock().unwrap();
        if self.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        let found = match self.volumes.read().unwrap().get(index as usize) {
            Some(Slot::Served(h)) if h.opening == opening => Some(h.clone()),
            _ => None,
        };
        let Some(handle) = found else {
            let root = std::fs::canonicalize(configured).unwrap_or(configured.to_path_buf());
            if self.volumes().iter().any(|h| h.volume.root() == root) {
                self.keep_refused(|r| r != configured);
            }
            return;
        };
        let root = handle.volume.root().to_path_buf();
        self.set_slot(index, Slot::NotServed(root.clone()));
        // The writer refuses what is queued and ends (its follower ended already).
        let _ = handle.ask(crate::writer::Job::Close);
        self.closings.fetch_add(1, Ordering::SeqCst);
        tracing::info!(
            "{}: no longer served (moved out of the database; deskd status says why)",
            root.display()
        );
    }
}

/// What a request naming a volume taken out of the served list is answered: as for a volume
/// refused at start, the reason only in status (to those who may see it).
fn not_served(root: &Path) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::NoSuchVolume,
        format!(
            "{}: not served by this deskd (deskd status says why)",
            root.display()
        ),
    )
}
