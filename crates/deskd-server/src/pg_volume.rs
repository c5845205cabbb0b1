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
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use deskd_db::names::search_key;
use deskd_db::{DbError, Durability, NameChange, NameIndex, Read};
use deskd_pg::{ConnectOptions, PgDesktop, VolumeKey};
use tracing::{error, info, warn};

use crate::error::ServerError;

/// How long the follower waits for a notice before it reads the change log anyway: the
/// documented lag when a notice is lost (ARCHITECTURE.md, "Following the other servers").
pub(crate) const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// How long a thaw waits for the freeze's snapshot to be released.
const THAW_WAIT: Duration = Duration::from_secs(5);

/// The change log keeps the newest this many batches of a volume (ARCHITECTURE.md,
/// "Following the other servers"): a server whose name index is further behind (its
/// follower cut off that long) loads the index again from the objects.
const CHANGES_KEEP: u64 = 10_000;

/// The log is pruned when a server's catching up crosses a multiple of this many batches.
const CHANGES_PRUNE_EVERY: u64 = 1_000;

/// [`CHANGES_KEEP`] and [`CHANGES_PRUNE_EVERY`]; a test (`DESKD_TEST_PG_CHANGES_KEEP=N`, with
/// the `test-hooks` feature) keeps fewer to see the pruning and a reload without 10,000 batches.
fn changes_kept() -> (u64, u64) {
    #[cfg(feature = "test-hooks")]
    if let Some(keep) = std::env::var("DESKD_TEST_PG_CHANGES_KEEP")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&k| k > 0)
    {
        return (keep, (keep / 10).max(1));
    }
    (CHANGES_KEEP, CHANGES_PRUNE_EVERY)
}

/// Idle read connections a volume keeps for client connections (more are closed when given
/// back): a client connection holds one only while it has requests to answer.
const IDLE_READERS: usize = 16;

/// Read connections a volume lends at once, idle ones not counted: however many client
/// connections have requests waiting, a server makes at most this many PostgreSQL sessions
/// for reads of a volume (beside its writer's, the follower's two and, at start, the name
/// index's loader and the check), so that clients cannot use up the database's
/// `max_connections`. A client connection past it waits for one to be given back.
pub(crate) const READERS_MAX: usize = 16;

/// An opening (`OpenVolume`) is told the volume writable without a read of its own when the
/// database answered a catch-up (the follower's, at least once a [`FOLLOW_POLL`] while it
/// answers, or the writer's after a commit) this recently: no round trip per open.
pub(crate) const ANSWERED_RECENTLY: Duration = Duration::from_secs(2);

/// With every read connection lent (none to probe with), an opening is told read-only when no
/// catch-up has been answered for this long: the follower, on sessions of its own, has not
/// been able to read the change log (a lost or hung database), whatever the lent ones wait for.
pub(crate) const SILENT_LOST: Duration = Duration::from_secs(5);

/// How long a client connection waits for a read connection when [`READERS_MAX`] are lent;
/// then its request is answered busy (try again).
const READER_WAIT: Duration = Duration::from_secs(10);

/// What the connections of one opening of a PostgreSQL volume share.
pub(crate) struct PgVolume {
    options: ConnectOptions,
    pub(crate) key: VolumeKey,
    durability: Durability,
    /// `user@host:port/db` of the database (no password), for status and the log.
    pub(crate) shown: String,
    /// The volume's key in the database, which change notices carry: set by the first
    /// opening that reached the database (at start, or later when the database was down
    /// then: [`PgVolume::open_writer`]). Until then no reader connects.
    vid: OnceLock<i64>,
    /// The newest batch (`change_seq`) whose changes are in `names`.
    seen: Mutex<u64>,
    names: Arc<NameIndex>,
    /// The rows and folder paths `resolve` and `find` read (and every row catch-up reads), kept
    /// in step with the change log as `names` is.
    read_cache: crate::read_cache::ReadCache,
    /// Set when the opening is closed: the follower ends.
    closed: AtomicBool,
    /// Read connections not lent to a client connection now.
    idle: Mutex<Vec<PgDesktop>>,
    /// The running freeze: its snapshot, held on a connection and thread of their own.
    frozen: Mutex<Option<FreezeHold>>,
    /// How many read connections are lent now (at most [`READERS_MAX`]), and the wait for one
    /// to come back.
    lent: Mutex<usize>,
    returned: Condvar,
    /// When the database last answered a catch-up (or the writer's opening).
    answered: Mutex<Option<Instant>>,
    /// The follower lost its sessions since the writer last looked: the writer's session (and
    /// the serving lock on it) is likely gone too (a database restart), so the writer checks
    /// it now, not at the next write (the newcomer review of stop 41, findings 1 and 7).
    follower_lost: AtomicBool,
    /// Why the volume is no longer this server's to serve from the database (the writer found
    /// it moved out: [`moved_out`]); set once.
    moved_out: OnceLock<String>,
    /// Told once when it is: the server takes the volume out of its served list
    /// ([`crate::shared::Shared::serve`] sets it).
    on_moved_out: Mutex<Option<MovedOutHook>>,
    /// The root bears the mark (at the opening, or this server set it): only then is its loss
    /// a move out (a file system without user xattrs has no mark to lose).
    marked: AtomicBool,
    /// Whether the writer's first opening may make the volume in the database: not when the
    /// root was marked as having its desktop in PostgreSQL before this server opened it (its
    /// copy is in some database: not finding it here, the server refuses rather than start
    /// the volume afresh, hostile review of stop 42, finding 2). Never once opened.
    may_create: AtomicBool,
}

/// What [`PgVolume::open_writer`] found.
pub(crate) enum Opened {
    /// The writer's desktop, whether the volume was created, and whether this was the first
    /// opening that reached the database (the name index, the check and the follower are
    /// then to be started).
    Open {
        /// Boxed: the other variant is a line of text.
        desktop: Box<PgDesktop>,
        created: bool,
        first: bool,
    },
    /// The volume was moved out of the database: why ([`moved_out`]). The lock is let go
    /// with the session.
    MovedOut(String),
}

/// What [`PgVolume::when_moved_out`] is given.
pub(crate) type MovedOutHook = Box<dyn FnOnce(String) + Send>;

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

/// A read connection lent to a client connection for a run of requests: given back to the
/// pool (and its place among [`READERS_MAX`] freed) when dropped.
pub(crate) struct LentReader {
    db: Option<PgDesktop>,
    pool: Arc<PgVolume>,
}

impl LentReader {
    pub(crate) fn db(&self) -> &PgDesktop {
        self.db.as_ref().expect("held until dropped")
    }
}

impl Drop for LentReader {
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            self.pool.give_back(db);
        }
        self.pool.release();
    }
}

impl PgVolume {
    /// The volume's connections, none made yet: [`PgVolume::open_writer`] makes the first. A
    /// target that cannot be read is refused here. `marked`: the root bears the mark now.
    pub(crate) fn new(
        options: ConnectOptions,
        key: VolumeKey,
        durability: Durability,
        names: Arc<NameIndex>,
        marked: bool,
    ) -> Result<PgVolume, deskd_pg::PgError> {
        let shown = deskd_pg::connect::describe(&deskd_pg::connect::parse_target(&options.target)?);
        Ok(PgVolume {
            options,
            key,
            durability,
            shown,
            vid: OnceLock::new(),
            seen: Mutex::new(0),
            names,
            read_cache: crate::read_cache::ReadCache::default(),
            closed: AtomicBool::new(false),
            idle: Mutex::new(Vec::new()),
            frozen: Mutex::new(None),
            lent: Mutex::new(0),
            returned: Condvar::new(),
            answered: Mutex::new(None),
            follower_lost: AtomicBool::new(false),
            moved_out: OnceLock::new(),
            on_moved_out: Mutex::new(None),
            marked: AtomicBool::new(marked),
            may_create: AtomicBool::new(!marked),
        })
    }

    /// Connect the writer and open volume `key` (made, with its root, when the database has
    /// neither its name nor its identity), and take the serving lock. The mark of `root` is
    /// then read (when it bore one at the opening): a volume moved out of the database
    /// meanwhile (a restore or a migrate removes the mark while it holds the lock
    /// exclusively) is [`Opened::MovedOut`], before any reader may connect
    /// ([`PgVolume::opened`]).
    pub(crate) fn open_writer(&self, root: &Path) -> Result<Opened, deskd_pg::PgError> {
        let client = deskd_pg::connect(&self.options)?;
        let create = self.may_create.load(Ordering::SeqCst) && self.vid.get().is_none();
        let (mut desktop, created) =
            PgDesktop::open_with(client, &self.key, self.durability, create)?;
        // Held by the writer's session: `deskd migrate --to sqlite` waits for no server.
        desktop.hold_for_serving()?;
        self.answered_at(Instant::now());
        if let Some(why) = self.moved_out_now(root) {
            return Ok(Opened::MovedOut(why));
        }
        if self.vid.get().is_some() {
            return Ok(Opened::Open {
                desktop: Box::new(desktop),
                created,
                first: false,
            });
        }
        // Read before the name index loads: a change committed between the two is in the
        // load or after `seen` in the log, and applying it twice is harmless.
        *self.seen.lock().unwrap() = desktop.change_seq()?;
        let first = self.vid.set(desktop.volume_key_in_db()).is_ok();
        Ok(Opened::Open {
            desktop: Box::new(desktop),
            created,
            first,
        })
    }

    /// The volume's name index.
    pub(crate) fn names(&self) -> Arc<NameIndex> {
        self.names.clone()
    }

    /// The volume's read cache (`resolve`, `find`).
    pub(crate) fn read_cache(&self) -> &crate::read_cache::ReadCache {
        &self.read_cache
    }

    /// Whether an opening has reached the database (readers may connect).
    pub(crate) fn opened(&self) -> bool {
        self.vid.get().is_some()
    }

    /// Why the volume at `root` is moved out of the database, if it is ([`moved_out`]), when
    /// its root bore the mark: to be asked with the serving lock held.
    fn moved_out_now(&self, root: &Path) -> Option<String> {
        let marked = self.marked.load(Ordering::SeqCst);
        moved_out(root, self.key.identity).filter(|_| marked)
    }

    /// Why the volume is moved out when the database says so ([`deskd_pg::PgError::MovedOut`],
    /// `e`): in the words of the mark's check when the mark is gone (the usual case).
    pub(crate) fn moved_out_by_record(&self, root: &Path, e: &deskd_pg::PgError) -> String {
        moved_out(root, self.key.identity).unwrap_or_else(|| format!("{}: {e}", root.display()))
    }

    /// The server has marked the root ([`PgVolume::open_writer`] reads the mark from now on).
    pub(crate) fn now_marked(&self) {
        self.marked.store(true, Ordering::SeqCst);
    }

    /// Why the volume was found moved out of the database, once it was.
    pub(crate) fn moved_out_reason(&self) -> Option<&str> {
        self.moved_out.get().map(String::as_str)
    }

    /// The writer found the volume moved out (under the serving lock): no read connection is
    /// lent from now on, and the hook, if set, is told (once).
    pub(crate) fn mark_moved_out(&self, why: String) {
        if self.moved_out.set(why.clone()).is_err() {
            return;
        }
        let hook = self.on_moved_out.lock().unwrap().take();
        if let Some(hook) = hook {
            hook(why);
        }
    }

    /// Call `hook` when the volume is found moved out: at once if it was already (a hook set
    /// again replaces the one not yet called).
    pub(crate) fn when_moved_out(&self, hook: MovedOutHook) {
        let mut slot = self.on_moved_out.lock().unwrap();
        // Read under the hook's lock: a mark made before is seen here, one made after finds
        // the hook stored (exactly one of the two calls it).
        match self.moved_out.get() {
            Some(why) => {
                drop(slot);
                hook(why.clone());
            }
            None => *slot = Some(hook),
        }
    }

    /// Another connection to this volume (a client connection's reads, the loader's).
    pub(crate) fn connect(&self) -> Result<PgDesktop, DbError> {
        if let Some(why) = self.moved_out_reason() {
            // Not the database's copy: the volume's desktop is elsewhere now.
            return Err(DbError::Unavailable(why.to_owned()));
        }
        if !self.opened() {
            // Not before the writer opened the volume (it may have to be made first).
            return Err(DbError::Unavailable(
                "the database has been unreachable since the server started".into(),
            ));
        }
        let client = deskd_pg::connect(&self.options)?;
        Ok(PgDesktop::open(client, &self.key, self.durability)?.0)
    }

    /// A read connection for a client connection's run of requests: an idle one, else a new
    /// one; when [`READERS_MAX`] are lent, the first given back within [`READER_WAIT`].
    pub(crate) fn lend(self: &Arc<Self>) -> Result<LentReader, DbError> {
        if let Some(why) = self.moved_out_reason() {
            return Err(DbError::Unavailable(why.to_owned()));
        }
        {
            let lent = self.lent.lock().unwrap();
            let (mut lent, waited) = self
                .returned
                .wait_timeout_while(lent, READER_WAIT, |n| *n >= READERS_MAX)
                .unwrap();
            if waited.timed_out() && *lent >= READERS_MAX {
                return Err(DbError::Unavailable(format!(
                    "all {READERS_MAX} read connections to the database are in use; try again"
                )));
            }
            *lent += 1;
        }
        let idle = self.idle.lock().unwrap().pop();
        let db = match idle {
            Some(db) => db,
            None => match self.connect() {
                Ok(db) => db,
                Err(e) => {
                    self.release();
                    return Err(e);
                }
            },
        };
        Ok(LentReader {
            db: Some(db),
            pool: self.clone(),
        })
    }

    /// The database answered a catch-up begun at `at`.
    fn answered_at(&self, at: Instant) {
        let mut answered = self.answered.lock().unwrap();
        *answered = Some(answered.map_or(at, |a| a.max(at)));
    }

    /// The follower lost its sessions (the database stopped, the network broke): an opening
    /// no longer takes the last answer's word for it.
    fn lost(&self) {
        *self.answered.lock().unwrap() = None;
        self.follower_lost.store(true, Ordering::SeqCst);
    }

    /// Whether the follower lost its sessions since the last call (the writer's check).
    pub(crate) fn take_follower_lost(&self) -> bool {
        self.follower_lost.swap(false, Ordering::SeqCst)
    }

    /// How long since the database last answered a catch-up (None: never, since this
    /// opening began).
    pub(crate) fn silent_for(&self) -> Option<Duration> {
        self.answered.lock().unwrap().map(|a| a.elapsed())
    }

    /// Whether every read connection is lent now (a lend would wait): the database answers
    /// them, whoever holds them.
    pub(crate) fn all_lent(&self) -> bool {
        *self.lent.lock().unwrap() >= READERS_MAX
    }

    /// A lent read connection's place is free again.
    fn release(&self) {
        *self.lent.lock().unwrap() -= 1;
        self.returned.notify_one();
    }

    /// A read connection back from a client connection gone idle (closed when enough are
    /// idle, or the opening is closed).
    fn give_back(&self, db: PgDesktop) {
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
    /// the IDs they changed are read again, a row found is `Set`, a row gone `Remove`. When
    /// the log was pruned past the batch after the last one seen, the index is loaded again.
    /// Prunes the log when the newest batch crosses a multiple of [`CHANGES_PRUNE_EVERY`].
    pub(crate) fn catch_up(&self, db: &mut PgDesktop) -> Result<(), DbError> {
        let mut seen = self.seen.lock().unwrap();
        // Before the log is read: every change committed before now is applied on success.
        let began = Instant::now();
        let changes = db.changes_since(*seen)?;
        self.answered_at(began);
        let Some(last) = changes.last().map(|c| c.seq) else {
            self.read_cache.caught_up(began);
            return Ok(());
        };
        let previous = *seen;
        if changes[0].seq != previous + 1 {
            // Batch numbers have no holes: the ones after `previous` were pruned. Read
            // under the lock, so no other catching up applies older changes over the load.
            let now = db.change_seq()?;
            let began = Instant::now();
            self.read_cache.clear();
            self.names.load(&*db)?;
            warn!(volume = %self.key.name, behind = now - previous,
                ms = began.elapsed().as_millis() as u64,
                "name index loaded again: it was further behind than the change log keeps");
            *seen = now;
            self.read_cache.caught_up(began);
            // The load has no trigram lists (find scans the keys until they are in): built
            // beside, as at start.
            let names = self.names.clone();
            let _ = std::thread::Builder::new()
                .name("name-index".into())
                .spawn(move || names.index_trigrams());
            return Ok(());
        }
        let mut ids: Vec<u32> = changes.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids.dedup();
        let found: HashMap<u32, deskd_db::Object> = Read::get_many(&*db, &ids)?
            .into_iter()
            .map(|o| (o.id, o))
            .collect();
        let updates: Vec<NameChange> = ids
            .iter()
            .map(|id| match found.get(id) {
                Some(o) => NameChange::Set(*id, search_key(&o.name)),
                None => NameChange::Remove(*id),
            })
            .collect();
        self.names.apply(&updates);
        // The rows as read now, after the changes: the read cache holds them (or drops them).
        self.read_cache.changed(&ids, &found);
        self.read_cache.caught_up(began);
        *seen = last;
        let (keep, every) = changes_kept();
        if last / every != previous / every && last > keep {
            // Every server does this as it passes the mark; a second DELETE finds nothing.
            match db.prune_changes(last - keep) {
                Ok(rows) => info!(volume = %self.key.name, through = last - keep, rows,
                    "change log pruned"),
                Err(e) => warn!(volume = %self.key.name, "change log not pruned: {e}"),
            }
        }
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

/// Why the volume at `root` is no longer this server's to serve from the database, if it is
/// not: the root's mark ([`deskd_volume::BACKEND_XATTR`]) is gone or names another backend, or
/// the root's identity is not `identity`. Read by the writer after it took the serving lock
/// again (a restore or a migrate out of the database removes the mark while it holds the lock
/// exclusively, so a mark read under the shared lock is the truth).
pub(crate) fn moved_out(root: &Path, identity: u64) -> Option<String> {
    let mark = deskd_volume::desktop_backend(root);
    let root_identity = deskd_volume::read_volume_identity(root);
    if mark.as_deref() == Some("postgresql") && root_identity == Some(identity) {
        return None;
    }
    let what = match (&mark, root_identity) {
        (None, _) => "the root's mark is gone".to_string(),
        (Some(m), _) if m != "postgresql" => format!("the root's mark names {m:?}"),
        (_, found) => format!(
            "the root's identity is {} (was {identity:016x})",
            found.map_or("gone".into(), |f| format!("{f:016x}"))
        ),
    };
    // A reload with `backend` still set would serve the database's copy again (and mark the
    // root again): the way back to the SQLite desktop is without it.
    Some(format!(
        "{}: moved out of the database ({what}): a deskd restore --leave-postgresql or deskd \
         migrate --to sqlite ran while this server was cut off from the database or starting; \
         not served: take `backend` out of the volume's configuration (`backend = \"sqlite\"` \
         in its `[volume.\"PATH\"]` table when `[defaults]` gives one) and reload (SIGHUP) to \
         serve it from its SQLite desktop",
        root.display()
    ))
}

/// The SQLite desktop of `root` (`.Desktop`, or where its relocation link points), when there
/// is one: how many objects it holds, its volume identity and its note that the volume left
/// its database.
pub(crate) fn sqlite_desktop(root: &Path) -> Option<SqliteDesktop> {
    use deskd_db::Read as _;
    // Found, never made: `location::desktop_path` makes a relocation link (and its folder)
    // for a volume without a desktop when `desktop_location` is set, which a volume served
    // from a database has no use for.
    let reader = crate::location::existing_desktop_path(root)
        .ok()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .and_then(|p| deskd_db::Reader::open_mapped(&p, false, 0).ok())?;
    Some(SqliteDesktop {
        objects: reader.object_count().ok()?,
        identity: reader.meta("volume_uuid").ok().flatten().map(|u| u as u64),
        left_database: reader.meta(deskd_db::LEFT_DATABASE).ok().flatten(),
    })
}

/// What [`sqlite_desktop`] read of a volume's SQLite desktop.
pub(crate) struct SqliteDesktop {
    objects: u64,
    identity: Option<u64>,
    /// When a restore or migrate moved the volume out of its database into this desktop
    /// ([`deskd_db::LEFT_DATABASE`]).
    left_database: Option<i64>,
}

/// Refuse to start a volume anew in the database over an SQLite desktop that holds objects
/// (the site set `backend` and did not run `deskd migrate`): every file would get a new ID,
/// and every alias would break. Nothing is changed (checked before the identity is stamped).
/// When the database cannot be reached to say whether it holds the volume, the refusal says
/// so and is [`ServerError::PgUnchecked`]: the server opens the volume again as the database
/// comes back (crate::retry).
pub(crate) fn refuse_fresh_over_sqlite(
    root: &Path,
    options: &deskd_pg::ConnectOptions,
) -> Result<(), ServerError> {
    // A volume served from a database before, or moved in with `deskd migrate`, is marked:
    // its `.Desktop` is the one migrate left behind, not a forgotten migration. (Checked
    // first: the check below needs the database, and such a volume must also start while
    // the database is down, read-only until it answers.)
    if deskd_volume::desktop_backend(root).is_some() {
        return Ok(());
    }
    let desktop = sqlite_desktop(root);
    // The desktop's own note, else the root's (read also where the desktop is not: kept on
    // another host's disk, its folder here empty).
    let left = match desktop.as_ref().and_then(|d| d.left_database) {
        Some(when) => Some((
            when,
            format!(
                "its SQLite desktop {}",
                crate::location::existing_desktop_path(root)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| ".Desktop".into())
            ),
        )),
        None => deskd_volume::root_left_database(root).map(|when| {
            (
                when,
                format!("its root ({})", deskd_volume::LEFT_DATABASE_XATTR),
            )
        }),
    };
    if let Some((when, said_by)) = left {
        // Moved out by a restore or migrate that removed the mark: the database's copy is
        // stale, whether or not the database could be told (a restore with
        // `--ids-from-backup` while it was down).
        return Err(ServerError::PgOpen {
            root: root.to_path_buf(),
            message: format!(
                "volume {} was moved out of this database (by deskd restore \
                 --leave-postgresql or deskd migrate --to sqlite), as {said_by} says (moved \
                 on {}): its SQLite desktop is the volume's now and the database's \
                 copy is stale, so it is not served from the database (which would hand out \
                 again IDs the SQLite desktop has given). Take `backend` out of this server's \
                 configuration for the volume (`backend = \"sqlite\"` in its \
                 `[volume.\"PATH\"]` table when `[defaults]` gives one) and reload (SIGHUP) to \
                 serve it from its SQLite desktop, or move it into the database again (remove \
                 the stale copy there first, `DELETE FROM deskd.volume WHERE name = '{}'`, then \
                 `deskd migrate {} --to TARGET`: every ID kept); nothing was changed",
                root.display(),
                crate::local_time::ctime(when),
                root.display(),
                root.display()
            ),
        });
    }
    let Some(SqliteDesktop {
        objects, identity, ..
    }) = desktop
    else {
        return refuse_unreadable_relocation(root);
    };
    // The root alone is a desktop that never registered anything.
    if objects <= 1 {
        return Ok(());
    }
    let refused = |message: String| ServerError::PgOpen {
        root: root.to_path_buf(),
        message,
    };
    let unchecked = |e: deskd_pg::PgError| ServerError::PgUnchecked {
        root: root.to_path_buf(),
        message: format!(
            "cannot check whether the database holds this volume: {e}. Its SQLite desktop \
             holds {objects} objects and its root is not marked as moved into a database \
             (`deskd migrate`), so it is not served until the database answers that check; \
             the server tries again as the database comes back (0.5 s doubling to 5 s \
             between tries), no reload needed"
        ),
    };
    let identity = deskd_volume::read_volume_identity(root).or(identity);
    let mut client = match deskd_pg::connect(options) {
        Ok(client) => client,
        Err(e) if e.is_unavailable() => return Err(unchecked(e)),
        Err(e) => return Err(refused(e.to_string())),
    };
    let name = root.to_string_lossy();
    match deskd_pg::schema::holds_volume(&mut client, &name, identity) {
        Ok(true) => Ok(()),
        Ok(false) => Err(refused(format!(
            "the volume's SQLite desktop holds {objects} objects and the database has no copy of \
             the volume: serving it from the database would give every file a new ID. Move it \
             in first with `deskd migrate {} --to TARGET` (every ID kept), or move the SQLite \
             desktop aside to start the volume afresh, then reload deskd (SIGHUP) to serve it; \
             nothing was changed",
            root.display()
        ))),
        Err(e) if e.is_unavailable() => Err(unchecked(e)),
        Err(e) => Err(refused(e.to_string())),
    }
}

/// An unmarked root whose SQLite desktop is relocated where this host cannot look (the link
/// names a folder that is not here: another host's disk, where the volume's SQLite server put
/// it; or a link deskd does not follow) is refused: whether that desktop holds objects, or
/// notes that the volume left this database, cannot be told, and serving the database's copy
/// (stale) or starting the volume afresh there (new IDs) is what those checks prevent (the
/// hostile review of stop 43). A link whose folder is here but holds no desktop yet is a
/// volume that never had one, as before.
fn refuse_unreadable_relocation(root: &Path) -> Result<(), ServerError> {
    let why = match deskd_volume::desktop_link(root) {
        Ok(None) => return Ok(()),
        Ok(Some(target)) if target.parent().is_some_and(Path::is_dir) => return Ok(()),
        Ok(Some(target)) => format!(
            "its SQLite desktop is relocated to {}, whose folder is not on this host",
            target.display()
        ),
        Err(e) => format!("its SQLite desktop's relocation link cannot be followed: {e}"),
    };
    Err(ServerError::PgOpen {
        root: root.to_path_buf(),
        message: format!(
            "volume {} is not marked as served from a database, and {why}: whether that \
             desktop holds the volume's IDs, or notes that the volume was moved out of this \
             database, cannot be told, so it is not served from the database. Serve it from \
             its SQLite desktop on the host that has it, or move it in with `deskd migrate {} \
             --to TARGET` there (every ID kept); a volume that never had an SQLite desktop: \
             remove the link {}, then reload deskd (SIGHUP); nothing was changed",
            root.display(),
            root.display(),
            root.join(deskd_volume::DESKTOP_FILE).display()
        ),
    })
}

/// The volume's identity: the one stamped on its root (xattr `user.deskd.volume`); else the
/// SQLite desktop's `volume_uuid` when there is one (a volume moved by `deskd migrate`); else
/// a new random one. Stamped on the root when it was not there.
pub(crate) fn identity(root: &Path) -> Result<u64, ServerError> {
    if let Some(id) = deskd_volume::read_volume_identity(root) {
        return Ok(id);
    }
    let from_desktop = sqlite_desktop(root).and_then(|d| d.identity);
    let chosen = match from_desktop {
        Some(uuid) => uuid,
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

/// A test (`DESKD_TEST_PG_WRITER_HOLD_OFF=FILE`, with the `test-hooks` feature) keeps the
/// writer and the follower from connecting again while FILE exists, as a server cut off from the database by
/// the network: a restore or migrate can then run while it is cut off.
pub(crate) fn held_off() -> Option<deskd_pg::PgError> {
    #[cfg(feature = "test-hooks")]
    if let Some(file) = std::env::var_os("DESKD_TEST_PG_WRITER_HOLD_OFF") {
        if std::path::Path::new(&file).exists() {
            return Some(deskd_pg::PgError::Unreachable {
                target: "(test)".into(),
                message: "held off by DESKD_TEST_PG_WRITER_HOLD_OFF".into(),
            });
        }
    }
    None
}

/// What a PostgreSQL volume runs beside its writer once an opening has reached the database:
/// the name index's load, the start-up check (its thread returned) and the follower. At start,
/// or by the writer when the database was unreachable then.
pub(crate) fn start_background(
    pg: &Arc<PgVolume>,
    root: &Path,
    state: Arc<Mutex<crate::writer::SharedState>>,
) -> Option<std::thread::JoinHandle<Vec<String>>> {
    let loader = pg.clone();
    crate::background::spawn_name_index_load_with(root, pg.names(), move |names| {
        names.load(&loader.connect()?)
    });
    let checker = pg.clone();
    let check =
        crate::background::spawn_check_with(root, state, move || checker.connect()?.quick_check());
    spawn_follower(pg.clone(), root);
    check
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
            // The last catch-up: notices of other volumes alone must not keep this one from
            // reading the log at least once a poll (the read cache is used only while it does).
            let mut last_catch_up = Instant::now();
            while !pg.closed.load(Ordering::SeqCst) {
                if connection.is_none() {
                    let made = deskd_pg::connect(&pg.options)
                        .map_err(DbError::from)
                        .and_then(|c| deskd_pg::ChangeListener::start(c).map_err(DbError::from))
                        .and_then(|l| {
                            // The follower's session holds the volume's serving lock too
                            // (shared): the writer's notices a lost database only at its next
                            // write, and an idle server whose sessions the database dropped (a
                            // restart) must not look unserved to `deskd restore --config` or
                            // `migrate --to sqlite` meanwhile (hostile review of stop 41,
                            // finding 5). Refused while one of those holds it: tried again.
                            if let Some(e) = held_off() {
                                return Err(DbError::from(e));
                            }
                            let mut db = pg.connect()?;
                            match db.hold_for_serving() {
                                // The database records the move-out (hostile review of stop
                                // 42, finding 1): as for a gone mark, below.
                                Err(e @ deskd_pg::PgError::MovedOut(_)) => {
                                    let why = pg.moved_out_by_record(&root, &e);
                                    error!(volume = %root.display(), "{why}; nothing more is read from the database");
                                    pg.close();
                                    pg.mark_moved_out(why.clone());
                                    return Err(DbError::Unavailable(why));
                                }
                                other => other.map_err(DbError::from)?,
                            }
                            // The mark read under the lock, as the writer does: the follower
                            // reconnects within a second, the writer on its back-off, and
                            // reads must not go to a copy moved out meanwhile.
                            if let Some(why) = pg.moved_out_now(&root) {
                                error!(volume = %root.display(), "{why}; nothing more is read from the database");
                                pg.close();
                                pg.mark_moved_out(why.clone());
                                return Err(DbError::Unavailable(why));
                            }
                            Ok((l, db))
                        });
                    match made {
                        Ok(made) => connection = Some(made),
                        Err(e) => {
                            pg.lost();
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
                            if notices.is_empty()
                                || notices.iter().any(|n| Some(&n.vid) == pg.vid.get())
                                || last_catch_up.elapsed() >= FOLLOW_POLL
                            {
                                last_catch_up = Instant::now();
                                pg.catch_up(db)
                            } else {
                                Ok(())
                            }
                        });
                if let Err(e) = result {
                    pg.lost();
                    if logged_at.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        warn!(volume = %root.display(), "follower: {e}; connecting again");
                        logged_at = Some(Instant::now());
                    }
                    connection = None;
                }
            }
        });
}
