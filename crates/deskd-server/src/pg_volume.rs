//! A volume whose desktop is in PostgreSQL (issue 28, `backend = "postgresql://…"`): its
//! identity in the volume root, its connections (the writer's, a pool of read connections
//! lent to client connections, the name index's loader, the follower), and the name index
//! kept in step with the change log.
//!
//! The name index is fed from the change log (`deskd.changes`), for this server's batches as
//! for every other server's: the writer catches up after each commit, before it answers, so a
//! `find` after an acknowledged rename sees it; the follower thread catches up when another
//! server's commit is announced (`LISTEN deskd_changes`) and at least once a second.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deskd_db::names::search_key;
use deskd_db::{DbError, Durability, NameChange, NameIndex, Read};
use deskd_pg::{ConnectOptions, PgDesktop, VolumeKey};
use tracing::{info, warn};

use crate::config::VolumeConfig;
use crate::error::ServerError;

/// How long the follower waits for a notice before it reads the change log anyway: the
/// documented lag when a notice is lost (ARCHITECTURE.md, "Following the other servers").
pub(crate) const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// How long a thaw waits for the freeze's snapshot to be released.
const THAW_WAIT: Duration = Duration::from_secs(5);

/// Idle read connections a volume keeps for client connections (more are closed when given
/// back): a client connection holds one only while it has requests to answer.
const IDLE_READERS: usize = 16;

/// What the connections of one opening of a PostgreSQL volume share.
pub(crate) struct PgVolume {
    options: ConnectOptions,
    pub(crate) key: VolumeKey,
    durability: Durability,
    /// `user@host:port/db` of the database (no password), for status and the log.
    pub(crate) shown: String,
    /// The volume's key in the database, which change notices carry.
    vid: i64,
    /// The newest batch (`change_seq`) whose changes are in `names`.
    seen: Mutex<u64>,
    names: Arc<NameIndex>,
    /// Set when the opening is closed: the follower ends.
    closed: AtomicBool,
    /// Read connections not lent to a client connection now.
    idle: Mutex<Vec<PgDesktop>>,
    /// The running freeze: its snapshot, held on a connection and thread of their own.
    frozen: Mutex<Option<FreezeHold>>,
}

/// A freeze of a PostgreSQL volume (`deskd freeze`): a `REPEATABLE READ` transaction that
/// exported its snapshot ([`deskd_pg::Frozen`]), held by a thread until the freeze's end, a
/// thaw or the volume's close. Writes go on meanwhile; `pg_dump
/// --snapshot=NAME` sees the database as it stood when the freeze began.
struct FreezeHold {
    snapshot: String,
    until: i64,
    /// When the snapshot was taken: it is held at most `freeze_max` from then.
    taken: Instant,
    /// Shared with the holder: its deadline (a freeze asked again while one runs moves it
    /// later), and whether it ended, under one lock, so a freeze never gets a snapshot that
    /// is being released.
    shared: Arc<(Mutex<HoldState>, std::sync::Condvar)>,
}

struct HoldState {
    deadline: Instant,
    /// Thawed (or the volume closed): end now.
    thawed: bool,
    /// The holder has let the snapshot go, or is about to: a new freeze takes a new one.
    ended: bool,
    /// The snapshot's transaction has ended (a thaw waits for it).
    released: bool,
}

impl PgVolume {
    /// Connect and open volume `key` (made, with its root, when the database has neither its
    /// name nor its identity). Returns the writer's desktop beside the shared state, and
    /// whether the volume was created.
    pub(crate) fn open(
        options: ConnectOptions,
        key: VolumeKey,
        durability: Durability,
        names: Arc<NameIndex>,
    ) -> Result<(PgVolume, PgDesktop, bool), deskd_pg::PgError> {
        let shown = deskd_pg::connect::describe(&deskd_pg::connect::parse_target(&options.target)?);
        let client = deskd_pg::connect(&options)?;
        let (mut desktop, created) = PgDesktop::open(client, &key, durability)?;
        // Read before the name index loads: a change committed between the two is in the
        // load or after `seen` in the log, and applying it twice is harmless.
        let seen = desktop.change_seq()?;
        let vid = desktop.volume_key_in_db();
        Ok((
            PgVolume {
                options,
                key,
                durability,
                shown,
                vid,
                seen: Mutex::new(seen),
                names,
                closed: AtomicBool::new(false),
                idle: Mutex::new(Vec::new()),
                frozen: Mutex::new(None),
            },
            desktop,
            created,
        ))
    }

    /// Another connection to this volume (a client connection's reads, the loader's).
    pub(crate) fn connect(&self) -> Result<PgDesktop, DbError> {
        let client = deskd_pg::connect(&self.options)?;
        Ok(PgDesktop::open(client, &self.key, self.durability)?.0)
    }

    /// A read connection for a client connection's run of requests: an idle one, else a new
    /// one. Given back with [`PgVolume::give_back`].
    pub(crate) fn take_reader(&self) -> Result<PgDesktop, DbError> {
        let idle = self.idle.lock().unwrap().pop();
        match idle {
            Some(db) => Ok(db),
            None => self.connect(),
        }
    }

    /// A read connection back from a client connection gone idle (closed when enough are
    /// idle, or the opening is closed).
    pub(crate) fn give_back(&self, db: PgDesktop) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < IDLE_READERS {
            idle.push(db);
        }
    }

    /// Close the idle read connections: one failed for want of the database, and the others,
    /// made before, are likely gone as well.
    pub(crate) fn clear_idle(&self) {
        self.idle.lock().unwrap().clear();
    }

    /// What status shows as the volume's desktop.
    pub(crate) fn describe(&self) -> String {
        format!(
            "postgresql {} (volume {:?}, identity {:016x})",
            self.shown, self.key.name, self.key.identity
        )
    }

    /// Apply the batches committed since the last call (by any server) to the name index:
    /// the IDs they changed are read again, a row found is `Set`, a row gone `Remove`.
    pub(crate) fn catch_up(&self, db: &mut PgDesktop) -> Result<(), DbError> {
        let mut seen = self.seen.lock().unwrap();
        let changes = db.changes_since(*seen)?;
        let Some(last) = changes.last().map(|c| c.seq) else {
            return Ok(());
        };
        let mut ids: Vec<u32> = changes.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids.dedup();
        let found: HashMap<u32, String> = Read::get_many(&*db, &ids)?
            .into_iter()
            .map(|o| (o.id, search_key(&o.name)))
            .collect();
        let updates: Vec<NameChange> = ids
            .iter()
            .map(|id| match found.get(id) {
                Some(key) => NameChange::Set(*id, key.clone()),
                None => NameChange::Remove(*id),
            })
            .collect();
        self.names.apply(&updates);
        *seen = last;
        Ok(())
    }

    /// End the follower (the opening is closed), and a freeze.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.clear_idle();
        self.thaw();
    }

    /// Freeze for `seconds`: a snapshot of the whole database, exported and held until then.
    /// A freeze running already is made to last at least as long and keeps its snapshot (one
    /// `pg_dump` may be under way with it). Returns the snapshot's name and the end (Unix time).
    pub(crate) fn freeze(&self, seconds: u32, max: u32) -> Result<(String, i64), DbError> {
        let until = deskd_db::now_unix() + i64::from(seconds);
        let deadline = Instant::now() + Duration::from_secs(u64::from(seconds));
        let mut frozen = self.frozen.lock().unwrap();
        if let Some(hold) = frozen.as_mut() {
            let mut state = hold.shared.0.lock().unwrap();
            // An ended holder lets its snapshot go: then a new one below.
            if !state.ended {
                // Moved later, but never past `max` seconds after the snapshot was taken: an
                // open snapshot holds VACUUM back in the whole database, and a volume owner
                // freezing again and again kept one open for as long as it liked (the
                // hostile review of stop 39). pg_dump imports the snapshot when it starts,
                // so a dump begun in time goes on after the hold ends.
                let latest = hold.taken + Duration::from_secs(u64::from(max));
                let cut = deadline > latest;
                state.deadline = state.deadline.max(deadline.min(latest));
                let left = state.deadline.saturating_duration_since(Instant::now());
                hold.until = hold.until.max(if cut {
                    deskd_db::now_unix() + left.as_secs() as i64
                } else {
                    until
                });
                return Ok((hold.snapshot.clone(), hold.until));
            }
        }
        let held = deskd_pg::Frozen::start(deskd_pg::connect(&self.options)?)?;
        let snapshot = held.snapshot_name().to_owned();
        let shared = Arc::new((
            Mutex::new(HoldState {
                deadline,
                thawed: false,
                ended: false,
                released: false,
            }),
            std::sync::Condvar::new(),
        ));
        let holder = shared.clone();
        let name = self.key.name.clone();
        std::thread::Builder::new()
            .name("pg-freeze".into())
            .spawn(move || {
                let (lock, wake) = &*holder;
                let mut state = lock.lock().unwrap();
                loop {
                    let left = state.deadline.saturating_duration_since(Instant::now());
                    if state.thawed || left.is_zero() {
                        break;
                    }
                    state = wake.wait_timeout(state, left).unwrap().0;
                }
                state.ended = true;
                drop(state);
                if let Err(e) = held.thaw() {
                    warn!(volume = %name, "freeze: the snapshot's transaction did not end cleanly: {e}");
                }
                info!(volume = %name, "freeze ended; its snapshot is released");
                lock.lock().unwrap().released = true;
                wake.notify_all();
            })
            .map_err(|e| DbError::Backend(format!("cannot start the freeze's thread: {e}")))?;
        *frozen = Some(FreezeHold {
            snapshot: snapshot.clone(),
            until,
            taken: Instant::now(),
            shared,
        });
        Ok((snapshot, until))
    }

    /// End a freeze (its snapshot is released; nothing when none runs).
    /// When it returns the snapshot is gone (a `pg_dump` started after `deskd thaw` fails),
    /// unless the database does not answer within [`THAW_WAIT`].
    pub(crate) fn thaw(&self) {
        if let Some(hold) = self.frozen.lock().unwrap().take() {
            let (lock, wake) = &*hold.shared;
            let mut state = lock.lock().unwrap();
            state.thawed = true;
            wake.notify_all();
            let _ = wake
                .wait_timeout_while(state, THAW_WAIT, |s| !s.released)
                .unwrap();
        }
    }
}

/// The volume's identity: the one stamped on its root (xattr `user.deskd.volume`); else the
/// SQLite desktop's `volume_uuid` when there is one (a volume moved by `deskd migrate`); else
/// a new random one. Stamped on the root when it was not there.
/// The SQLite desktop of `root` as the configuration places it, when there is one: how many
/// objects it holds and its volume identity.
pub(crate) fn sqlite_desktop(root: &Path, config: &VolumeConfig) -> Option<(u64, Option<u64>)> {
    use deskd_db::Read as _;
    let reader = crate::location::desktop_path(config, root)
        .ok()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .and_then(|p| deskd_db::Reader::open_mapped(&p, false, 0).ok())?;
    let objects = reader.object_count().ok()?;
    let identity = reader.meta("volume_uuid").ok().flatten().map(|u| u as u64);
    Some((objects, identity))
}

/// Refuse to start a volume anew in the database over an SQLite desktop that holds objects
/// (the site set `backend` and did not run `deskd migrate`): every file would get a new ID,
/// and every alias would break. Nothing is changed (checked before the identity is stamped).
pub(crate) fn refuse_fresh_over_sqlite(
    root: &Path,
    config: &VolumeConfig,
    options: &deskd_pg::ConnectOptions,
) -> Result<(), String> {
    let Some((objects, identity)) = sqlite_desktop(root, config) else {
        return Ok(());
    };
    // The root alone is a desktop that never registered anything.
    if objects <= 1 {
        return Ok(());
    }
    let identity = deskd_volume::read_volume_identity(root).or(identity);
    let mut client = deskd_pg::connect(options).map_err(|e| e.to_string())?;
    let name = root.to_string_lossy();
    match deskd_pg::schema::holds_volume(&mut client, &name, identity) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "the volume's SQLite desktop holds {objects} objects and the database has no copy of              the volume: serving it from the database would give every file a new ID. Move it              in first with `deskd migrate {} --to TARGET` (every ID kept), or move the SQLite              desktop aside to start the volume afresh; nothing was changed",
            root.display()
        )),
        Err(e) => Err(e.to_string()),
    }
}

pub(crate) fn identity(root: &Path, config: &VolumeConfig) -> Result<u64, ServerError> {
    if let Some(id) = deskd_volume::read_volume_identity(root) {
        return Ok(id);
    }
    let from_desktop = crate::location::desktop_path(config, root)
        .ok()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .and_then(|p| deskd_db::Reader::open_mapped(&p, false, 0).ok())
        .and_then(|r| r.meta("volume_uuid").ok().flatten());
    let chosen = match from_desktop {
        Some(uuid) => uuid as u64,
        None => random_u64().map_err(|e| stamp_error(root, e.to_string()))?,
    };
    let stamped = deskd_volume::stamp_volume_identity(root, chosen)
        .map_err(|e| stamp_error(root, e.to_string()))?;
    info!(volume = %root.display(), "volume identity {stamped:016x} stamped on the root ({})",
        deskd_volume::VOLUME_XATTR);
    Ok(stamped)
}

fn stamp_error(root: &Path, why: String) -> ServerError {
    ServerError::PgOpen {
        root: root.to_path_buf(),
        message: format!(
            "cannot stamp the volume's identity on its root (xattr {}): {why}",
            deskd_volume::VOLUME_XATTR
        ),
    }
}

fn random_u64() -> std::io::Result<u64> {
    use std::io::Read as _;
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// The follower: wake on another server's announced commit of this volume, or every
/// [`FOLLOW_POLL`], and catch the name index up. A lost connection is made again (a second's
/// wait between tries).
pub(crate) fn spawn_follower(pg: Arc<PgVolume>, root: &Path) {
    let root = root.to_path_buf();
    let _ = std::thread::Builder::new()
        .name("pg-follow".into())
        .spawn(move || {
            let mut connection: Option<(deskd_pg::ChangeListener, PgDesktop)> = None;
            let mut logged_at: Option<Instant> = None;
            while !pg.closed.load(Ordering::SeqCst) {
                if connection.is_none() {
                    let made = deskd_pg::connect(&pg.options)
                        .map_err(DbError::from)
                        .and_then(|c| deskd_pg::ChangeListener::start(c).map_err(DbError::from))
                        .and_then(|l| Ok((l, pg.connect()?)));
                    match made {
                        Ok(made) => connection = Some(made),
                        Err(e) => {
                            if logged_at.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                                warn!(volume = %root.display(), "follower: {e}; trying again");
                                logged_at = Some(Instant::now());
                            }
                            std::thread::sleep(FOLLOW_POLL);
                            continue;
                        }
                    }
                }
                let (listener, db) = connection.as_mut().expect("connected above");
                // A notice of this volume, or none within the poll: read the log.
                let result =
                    listener
                        .wait(FOLLOW_POLL)
                        .map_err(DbError::from)
                        .and_then(|notices| {
                            if notices.is_empty() || notices.iter().any(|n| n.vid == pg.vid) {
                                pg.catch_up(db)
                            } else {
                                Ok(())
                            }
                        });
                if let Err(e) = result {
                    if logged_at.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        warn!(volume = %root.display(), "follower: {e}; connecting again");
                        logged_at = Some(Instant::now());
                    }
                    connection = None;
                }
            }
        });
}
