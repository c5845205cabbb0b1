//! Group commit: every write that waits in the queue goes into one transaction, committed
//! once, and only then acknowledged, each connection flushed once. The batch runs without
//! savepoints (a savepoint per request costs a statement journal per request); only when a
//! request in it fails is it rolled back and run again with one savepoint per request, so the
//! failing request gets its error and never commits half its work, and the others still
//! commit. Before the commit, the space the WAL and `min_free` need is checked. When another
//! process holds the desktop's write lock, the batch waits ([`super::busy`]).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use deskd_db::{DbError, NameChange, Store, WriteBatch};
use deskd_proto::{ErrorCode, ErrorReply, Request};
use deskd_volume::Volume;
use tracing::{error, info, warn};

use super::busy::BUSY_TRY;
use super::checkpoint::REQUESTED_CHECKPOINT_WAIT;
use super::{Pending, Replier, Writer};
use crate::access::Access;
use crate::apply::{apply_write, DirCache, Policy, Reply};
use crate::audit;
use crate::db_reply::{db_error, is_busy};
use crate::space;

/// What one run of a batch produced.
pub(super) enum Attempt {
    /// Committed (or, for a lone failed request, rolled back); one reply per request, each
    /// with its audit line when the audit is on and the request changed something.
    Done(Vec<(Reply, Option<String>)>),
    /// A request failed in a non-isolated run; nothing was committed.
    Retry,
}

/// What a refused request's step fails with, telling it from a failure of the savepoint.
const REFUSED: &str = "the request was refused";

/// Apply `writes` in one transaction. With `isolated`, each request runs in its own savepoint
/// so a failure undoes only that request; without, the first failure abandons the batch.
/// Generic over the store: monomorphised for SQLite's `Desktop`, the batch is its `Batch`,
/// called with no `dyn` per request or row.
pub(super) fn run_batch<S: Store>(
    desktop: &mut S,
    volume: &Volume,
    policy: Policy,
    writes: &[Pending],
    isolated: bool,
    audit_on: bool,
    cache: &mut DirCache,
) -> Result<Attempt, DbError> {
    let mut batch = desktop.batch_within(BUSY_TRY)?;
    let mut replies = Vec::with_capacity(writes.len());
    // Paths kept from earlier batches hold only if no other connection committed since.
    cache.check_others(batch.others_commits()?);
    if isolated {
        // The run before was abandoned: paths it looked up may name what it made.
        cache.clear();
    }
    // The places the registrations will look up: read ahead in one query a folder where a
    // lookup is a round trip (PostgreSQL).
    let places: Vec<(u32, &[u8])> = writes
        .iter()
        .filter_map(|w| match &w.request {
            Request::Add { parent, name, .. } => Some((*parent, name.as_slice())),
            _ => None,
        })
        .collect();
    if places.len() > 1 {
        batch.prefetch_places(&places)?;
    }
    // One request: its reply, and (audit on) the line saying what it changed, made while the
    // batch still holds the paths of objects named by ID.
    let apply = |b: &mut S::Batch<'_>, cache: &mut DirCache, request: &Request, access: &Access| {
        let resolved = if audit_on {
            audit::before(b, cache, request)
        } else {
            audit::Resolved::default()
        };
        let reply = apply_write(b, volume, policy, request, cache, access);
        let line = match &reply {
            Ok(response) if audit_on => {
                let resolved = audit::after(b, cache, request, resolved);
                audit::describe(request, response, &resolved)
            }
            _ => None,
        };
        (reply, line)
    };
    for Pending { request, reply, .. } in writes {
        let access = reply.access();
        if isolated {
            // A refused request fails its step, so the savepoint undoes what it did before it
            // was refused (folders registered on the way, a replaced record removed); its
            // reply comes out through `done`.
            let mut done = None;
            let stepped = batch.step(|b| {
                let (reply, line) = apply(b, cache, request, access);
                let refused = reply.is_err();
                done = Some((reply, line));
                if refused {
                    return Err(DbError::Backend(REFUSED.into()));
                }
                Ok(())
            });
            match (stepped, done) {
                (Ok(()), Some(done)) => replies.push(done),
                (Err(DbError::Backend(why)), Some(done)) if why == REFUSED && done.0.is_err() => {
                    // Undone: a folder it registered on the way is no longer there.
                    cache.clear();
                    replies.push(done)
                }
                // The savepoint itself failed: nothing of this batch commits.
                (Err(e), _) => return Err(e),
                (Ok(()), None) => unreachable!("a step that succeeded ran its request"),
            }
            continue;
        }
        let (reply, line) = apply(&mut batch, cache, request, access);
        if reply.is_err() {
            if writes.len() > 1 {
                return Ok(Attempt::Retry); // dropping the batch rolls it back
            }
            drop(batch); // a lone request: undo whatever it did, answer its error
            return Ok(Attempt::Done(vec![(reply, None)]));
        }
        replies.push((reply, line));
    }
    // A folder's path cached before a removal or rename in this batch may be gone or moved
    // (renames and deletes clear the cache as they run; this also covers a record retired
    // by a registration and anything else that removed or renamed).
    if batch.changed_since(0).iter().any(|c| match c {
        NameChange::Remove(_) => true,
        NameChange::Set(id, _) => cache.holds(*id),
    }) {
        cache.clear();
    }
    batch.commit_owned()?;
    Ok(Attempt::Done(replies))
}

/// After the commit: each write's reply, one flush per connection, then the audit lines
/// (waking the audit thread is no part of a client's wait).
/// A batch whose commit failed: logged, and each of its requests answered that nothing of
/// it was recorded (one wording for both back ends).
pub(super) fn refuse_failed_commit(root: &Path, writes: &mut Vec<Pending>, e: DbError) {
    error!(volume = %root.display(), "commit failed: {e}");
    let busy = matches!(e, DbError::Busy(_));
    let reply = ErrorReply::new(
        db_error(e).code,
        if busy {
            // PostgreSQL: another server's batch (or an online rebuild's chunk) held the
            // volume's row past busy_wait. The database is there: try again.
            format!(
                "{}: the desktop is busy (another writer held it longer than busy_wait); \
                 nothing in this batch was recorded, try again",
                root.display()
            )
        } else {
            format!(
                "{}: desktop commit failed; nothing in this batch was recorded",
                root.display()
            )
        },
    );
    for w in writes.drain(..) {
        w.reply.send(Err(reply.clone()));
    }
}

pub(super) fn acknowledge(
    root: &Path,
    writes: &mut Vec<Pending>,
    replies: Vec<(Reply, Option<String>)>,
) {
    let mut connections: Vec<Replier> = Vec::new();
    let mut said = Vec::new();
    for (Pending { reply: sink, .. }, (reply, line)) in writes.drain(..).zip(replies) {
        // Committed: now it may be said (a rolled-back request has no line).
        if let Some(line) = line {
            said.push((sink.who(), line));
        }
        sink.queue(reply);
        if !connections
            .iter()
            .any(|c| c.connection() == sink.connection())
        {
            connections.push(sink);
        }
    }
    for c in connections {
        c.flush();
    }
    if !said.is_empty() {
        let root = audit::root_text(root);
        for (who, line) in said {
            audit::committed(who, root.clone(), line);
        }
    }
}

impl Writer {
    /// Commit the waiting writes, unless they wait for a busy desktop and their next try is
    /// not due yet.
    pub(super) fn commit_due(&mut self, writes: &mut Vec<Pending>) {
        if self.may_try() {
            self.commit_batch(writes);
        }
    }

    /// Commit the waiting writes now (a write lock another process holds is waited for only
    /// [`BUSY_TRY`]; then they wait for the next try).
    pub(super) fn commit_batch(&mut self, writes: &mut Vec<Pending>) {
        if writes.is_empty() {
            return;
        }
        if let Err(refusal) = self.make_room() {
            for w in writes.drain(..) {
                w.reply.send(Err(refusal.clone()));
            }
            return;
        }
        let desktop = self.desktop.as_mut().expect("writer used after shutdown");
        // The paths the last client batch cached hold if nothing committed on this connection
        // since (the count); `run_batch` checks other connections' commits inside the lock.
        if Some(self.commits.load(Ordering::SeqCst)) != self.dir_paths_seen {
            self.dir_paths.clear();
        }
        self.dir_paths_seen = None;
        let volume = &self.volume;
        let policy = Policy {
            read_only: self.config.read_only,
            replaced: self.config.replaced,
        };
        // Fast path: the whole batch in one transaction without savepoints (a savepoint per
        // request costs a statement journal per request). If a request fails, its
        // partial changes must not be committed: run the batch again, isolating each request.
        let audit_on = audit::enabled();
        let cache = &mut self.dir_paths;
        let outcome = match run_batch(desktop, volume, policy, writes, false, audit_on, cache) {
            Ok(Attempt::Retry) => run_batch(desktop, volume, policy, writes, true, audit_on, cache),
            other => other,
        };
        match outcome {
            Ok(Attempt::Retry) => unreachable!("an isolated run never asks for a retry"),
            // Another process holds the write lock: nothing was recorded; wait and try again.
            Err(e) if is_busy(&e) => self.busy_wait(writes),
            Ok(Attempt::Done(replies)) => {
                tracing::debug!(batch = replies.len(), "committed");
                self.figures.batch(replies.len());
                self.busy_over();
                // Before any acknowledgement: readers must see this commit from now on.
                self.committed();
                self.dir_paths_seen = Some(self.commits.load(Ordering::SeqCst));
                acknowledge(self.volume.root(), writes, replies);
                self.check_wal_limit();
            }
            Err(e) => refuse_failed_commit(self.volume.root(), writes, e),
        }
    }

    /// Bookkeeping after a commit: timers, and a new snapshot for readers.
    pub(super) fn committed(&mut self) {
        self.last_write = Instant::now();
        self.dirty_since.get_or_insert(self.last_write);
        self.commits.fetch_add(1, Ordering::SeqCst);
    }

    /// Before a commit: free space must cover the WAL (what a checkpoint may need to grow
    /// the desktop) and `min_free`. When it does not, checkpoint first (the WAL's space comes
    /// back); when that does not leave `min_free` either, refuse the batch.
    pub(super) fn make_room(&mut self) -> Result<(), ErrorReply> {
        let usage = |dir: &Path| {
            space::usage(dir).unwrap_or(space::Usage {
                free: u64::MAX,
                size: u64::MAX,
            })
        };
        let len = |file: &Path| std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        let now = usage(&self.desktop_dir);
        let min_free = space::min_free(self.config.min_free, now.size);
        if space::room(now.free, len(&self.wal_path), min_free) == space::Room::Enough {
            return Ok(());
        }
        let checkpointed = if self.frozen() {
            Err(ErrorReply::new(ErrorCode::Busy, "frozen"))
        } else {
            self.flush(REQUESTED_CHECKPOINT_WAIT)
        };
        let left = usage(&self.desktop_dir).free;
        let wal = len(&self.wal_path);
        if space::room(left, wal, min_free) == space::Room::Enough {
            if self.low_space_checkpointed.now() {
                info!(volume = %self.volume.root().display(),
                    "little space left on the desktop's file system: WAL checkpointed before a \
                     commit ({left} bytes free; said at most once a minute)");
            }
            return Ok(());
        }
        let root = self.volume.root().display().to_string();
        if self.low_space_logged.now() {
            warn!(volume = %root, "writes refused: {left} bytes free on the desktop's file system, \
            less than the WAL ({wal} bytes) and min_free ({min_free}){}",
            match &checkpointed {
                Ok(()) => String::new(),
                Err(e) => format!("; checkpoint: {}", e.message),
            });
        }
        Err(ErrorReply::new(
            ErrorCode::DiskFull,
            format!(
                "{root}: the desktop's file system is nearly full ({left} bytes free, min_free \
                 {min_free}); nothing was recorded. Reads go on; free space and try again"
            ),
        ))
    }
}
