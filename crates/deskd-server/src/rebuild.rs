//! Online rebuild jobs: `deskd rebuild` on a served volume asks the server to do the work.
//!
//! A job runs on its own thread: it starts the volume's touch log, reads a snapshot of the
//! desktop, walks the volume (clients go on working), plans, and hands the plan to the
//! volume's writer, which applies it between two client batches
//! ([`deskd_rebuild::online::apply`]). When clients changed objects the pass had to leave
//! alone and some of those still differ, another pass follows (at most [`MAX_PASSES`]).
//!
//! The requesting client polls; a job that hears no poll for its timeout stops at once (the
//! client is gone or cut off), before anything is applied if it is still walking.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deskd_proto::{
    DifferenceLine, ErrorCode, ErrorReply, RebuildMode, RebuildState, RebuildSummary,
};
use deskd_rebuild::online::{self, Applied, Pass};
use deskd_rebuild::{Difference, Mode, OldDesktop, Plan};
use tracing::{info, warn};

use deskd_db::now_unix;

use crate::volume::VolumeHandle;
use crate::writer::Job;

/// Why an online rebuild ended early. Clients get its text (the protocol carries the outcome
/// as a string, [`RebuildState::finished`]); the log and the job keep the kind.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RebuildFailure {
    /// The client stopped polling for the timeout, or cancelled.
    #[error(
        "stopped: no word from the client for {} s (communication timeout) or cancelled",
        timeout.as_secs()
    )]
    Stopped { timeout: Duration },
    /// The desktop's snapshot could not be read, or the walk failed.
    #[error("{0}")]
    Rebuild(#[from] deskd_rebuild::RebuildError),
    /// Another volume lies below this one, which is not served `nested`.
    #[error("{}", deskd_volume::guard::around_message(root, inner))]
    VolumeBelow { root: PathBuf, inner: PathBuf },
    /// The repairs could not be committed.
    #[error("the desktop could not take the repairs: {0}")]
    Repairs(#[source] deskd_db::DbError),
    /// The writer was gone (deskd stopping, or a reload closing the volume) before the apply.
    #[error("the desktop was closed before the repairs could be applied")]
    DesktopClosed,
}

/// Most passes one job makes.
pub const MAX_PASSES: u32 = 3;

/// The running or last online rebuild of each volume, by handle. It lives beside the rebuild,
/// not in the volume handle: the rebuild drives the handle's writer, and the handle need know
/// nothing of rebuilds. A job belongs to one opening of its volume: a volume reopened by a
/// reload has none until one is started on it.
/// Clones share the jobs (an automatic repair's thread holds one, [`crate::autorepair`]).
#[derive(Default, Clone)]
pub(crate) struct Registry(Arc<Mutex<HashMap<u32, Arc<RebuildJob>>>>);

impl Registry {
    /// The running or last job of this opening of the volume.
    pub(crate) fn current(&self, handle: &VolumeHandle) -> Option<Arc<RebuildJob>> {
        Self::of(&self.0.lock().unwrap(), handle)
    }

    /// Whether a job is running on this opening of the volume.
    pub(crate) fn running(&self, handle: &VolumeHandle) -> bool {
        self.current(handle).is_some_and(|job| !job.is_finished())
    }

    fn of(jobs: &HashMap<u32, Arc<RebuildJob>>, handle: &VolumeHandle) -> Option<Arc<RebuildJob>> {
        jobs.get(&handle.index)
            .filter(|job| job.opening == handle.opening)
            .cloned()
    }
}

/// One online rebuild.
pub(crate) struct RebuildJob {
    pub(crate) id: u64,
    pub(crate) mode: RebuildMode,
    /// The opening of the volume it runs on ([`VolumeHandle::opening`]).
    opening: u64,
    started: i64,
    began: Instant,
    timeout: Duration,
    phase: Mutex<&'static str>,
    pass: AtomicU32,
    objects: AtomicU64,
    stop: AtomicBool,
    last_heard: Mutex<Instant>,
    lines: Mutex<Vec<DifferenceLine>>,
    finished: Mutex<Option<Result<RebuildSummary, String>>>,
}

/// Difference lines per poll reply: a volume with millions of differences is sent in pieces
/// that each fit a reply frame (a line holds a path of up to 4 KiB).
pub const LINES_PER_POLL: usize = 10_000;

impl RebuildJob {
    /// The job's state, with at most [`LINES_PER_POLL`] difference lines from `from` on (a
    /// client that shows none asks from `u64::MAX`). The end of the job is reported only with
    /// the last line, so a client that polls until it sees the end has them all.
    pub fn state(&self, from: u64) -> RebuildState {
        let lines = self.lines.lock().unwrap();
        let from = usize::try_from(from).unwrap_or(usize::MAX).min(lines.len());
        let to = (from + LINES_PER_POLL).min(lines.len());
        // The phase read under the outcome's lock: the job's end sets both at once.
        let finished_guard = self.finished.lock().unwrap();
        let finished = finished_guard.clone();
        let phase = self.phase.lock().unwrap().to_string();
        drop(finished_guard);
        RebuildState {
            job: self.id,
            mode: self.mode,
            phase,
            pass: self.pass.load(Ordering::SeqCst),
            objects: self.objects.load(Ordering::Relaxed),
            started: self.started,
            lines: lines[from..to].to_vec(),
            next: to as u64,
            finished: if to == lines.len() { finished } else { None },
        }
    }

    /// The client is still there.
    pub fn heard(&self) {
        *self.last_heard.lock().unwrap() = Instant::now();
    }

    /// Stop the job (nothing more is applied).
    pub fn cancel(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn is_finished(&self) -> bool {
        self.finished.lock().unwrap().is_some()
    }

    fn set_phase(&self, phase: &'static str) {
        *self.phase.lock().unwrap() = phase;
    }

    fn stopped(&self) -> Result<(), RebuildFailure> {
        if self.stop.load(Ordering::SeqCst) {
            Err(RebuildFailure::Stopped {
                timeout: self.timeout,
            })
        } else {
            Ok(())
        }
    }
}

static NEXT_JOB: AtomicU64 = AtomicU64::new(1);

fn mode_of(mode: RebuildMode) -> Mode {
    match mode {
        RebuildMode::Scan => Mode::Scan,
        RebuildMode::Repair => Mode::Repair,
        RebuildMode::Fresh => Mode::Fresh,
    }
}

/// Start a job on `handle`; refused while another runs or when the volume is read-only.
/// `timeout_secs` is how long the job waits for its client's next poll; None for a job the
/// server started itself (an automatic repair): no client polls it, so no watchdog stops it.
pub(crate) fn start(
    registry: &Registry,
    handle: &Arc<VolumeHandle>,
    mode: RebuildMode,
    threads: Option<u32>,
    force: bool,
    timeout_secs: Option<u32>,
    asker: &str,
) -> Result<u64, ErrorReply> {
    start_after(
        registry,
        handle,
        mode,
        threads,
        force,
        timeout_secs,
        asker,
        None,
    )
}

/// Work a job does first, in its own thread (phase `writing owed stamps`), before it walks.
pub(crate) type Before = Box<dyn FnOnce() + Send>;

/// [`start`], the job doing `before` first (an asker's job: the stamps the watcher owes,
/// which may take longer than a request may).
#[allow(clippy::too_many_arguments)]
pub(crate) fn start_after(
    registry: &Registry,
    handle: &Arc<VolumeHandle>,
    mode: RebuildMode,
    threads: Option<u32>,
    force: bool,
    timeout_secs: Option<u32>,
    asker: &str,
    before: Option<Before>,
) -> Result<u64, ErrorReply> {
    let root = handle.volume.root().display().to_string();
    if handle.read_only() && mode != RebuildMode::Scan {
        return Err(ErrorReply::new(
            ErrorCode::ReadOnly,
            format!("{root}: the volume is read-only; only rebuild -s can run"),
        ));
    }
    let mut jobs = registry.0.lock().unwrap();
    if let Some(job) = Registry::of(&jobs, handle) {
        if !job.is_finished() {
            return Err(ErrorReply::new(
                ErrorCode::Busy,
                format!("{root}: rebuild job {} is already running", job.id),
            ));
        }
    }
    // A desktop in PostgreSQL takes its repairs in the database, not in a new file.
    if mode != RebuildMode::Scan && !force && handle.pg.is_none() {
        deskd_rebuild::check_space(&handle.desktop_path)
            .map_err(|e| ErrorReply::new(ErrorCode::Internal, e.to_string()))?;
    }
    let job = Arc::new(RebuildJob {
        id: NEXT_JOB.fetch_add(1, Ordering::SeqCst),
        mode,
        opening: handle.opening,
        started: now_unix(),
        began: Instant::now(),
        timeout: Duration::from_secs(timeout_secs.unwrap_or(0).max(1) as u64),
        phase: Mutex::new("starting"),
        pass: AtomicU32::new(0),
        objects: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        last_heard: Mutex::new(Instant::now()),
        lines: Mutex::new(Vec::new()),
        finished: Mutex::new(None),
    });
    jobs.insert(handle.index, job.clone());
    drop(jobs);
    let threads = threads
        .map(|t| t as usize)
        .unwrap_or_else(deskd_rebuild::default_threads);
    let id = job.id;
    if timeout_secs.is_some() {
        spawn_watchdog(job.clone());
    }
    let worker_handle = handle.clone();
    let asker = asker.to_owned();
    std::thread::Builder::new()
        .name(format!("rebuild-{id}"))
        .spawn(move || {
            info!(volume = %worker_handle.volume.root().display(), job = id, mode = ?mode, "online rebuild started");
            if let Some(before) = before {
                job.set_phase("writing owed stamps");
                before();
            }
            let result = run(&worker_handle, &job, threads, &asker);
            // Recording is only for a running job.
            worker_handle.touches.take();
            match &result {
                Ok(s) => info!(volume = %worker_handle.volume.root().display(), job = id,
                    differences = s.differences, new_ids = s.counts.new_ids, removed = s.counts.removed,
                    left = s.left, passes = s.passes, "online rebuild done"),
                Err(e) => warn!(volume = %worker_handle.volume.root().display(), job = id, "online rebuild ended: {e}"),
            }
            let phase = match &result {
                Ok(_) => "done",
                Err(_) if job.stop.load(Ordering::SeqCst) => "stopped",
                Err(_) => "failed",
            };
            // The job's walk, snapshot and plan are freed: give their pages back before the
            // client hears the end (a caller measuring memory after the job sees them gone).
            crate::allocator::give_back();
            // The protocol carries the outcome as text. The final phase and the outcome are
            // set together under the outcome's lock, which `state` holds while it reads the
            // phase: a status that shows "stopped" or "failed" also shows why (the phase was
            // set first, and the give-back between them left a status without the reason:
            // CI saw it).
            let mut finished = job.finished.lock().unwrap();
            job.set_phase(phase);
            *finished = Some(result.map_err(|e| e.to_string()));
        })
        .map_err(|e| ErrorReply::new(ErrorCode::Internal, format!("cannot start the job: {e}")))?;
    Ok(id)
}

/// Stop the job when its client has not polled for the timeout.
fn spawn_watchdog(job: Arc<RebuildJob>) {
    let _ = std::thread::Builder::new()
        .name(format!("rebuild-watch-{}", job.id))
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(100));
            if job.is_finished() {
                return;
            }
            if job.last_heard.lock().unwrap().elapsed() > job.timeout {
                warn!(
                    job = job.id,
                    "no poll from the rebuild's client within {} s; stopping it",
                    job.timeout.as_secs()
                );
                job.cancel();
                return;
            }
        });
}

fn line(d: &Difference) -> DifferenceLine {
    DifferenceLine {
        kind: d.kind.to_string(),
        path: d.path.clone(),
        detail: d.detail.clone(),
    }
}

/// What the writer hands back from applying one pass.
struct PassResult {
    applied: Applied,
    lines: Vec<DifferenceLine>,
}

fn run(
    handle: &Arc<VolumeHandle>,
    job: &Arc<RebuildJob>,
    threads: usize,
    asker: &str,
) -> Result<RebuildSummary, RebuildFailure> {
    let mode = mode_of(job.mode);
    let root = handle.volume.root().to_path_buf();
    let xattrs = deskd_rebuild::xattrs_supported(&root);
    let mut summary = RebuildSummary {
        counts: Default::default(),
        differences: 0,
        left: 0,
        passes: 0,
        millis: 0,
    };
    for pass in 1..=MAX_PASSES {
        job.pass.store(pass, Ordering::SeqCst);
        summary.passes = pass;
        // Recording first, then the snapshot: every commit is either in the snapshot or
        // recorded. On PostgreSQL the change log records every server's commits: the batch
        // number before the snapshot marks where the rebuild's "touched" begin.
        let (snapshot, mut pg_at) = match &handle.pg {
            None => {
                handle.touches.start();
                (deskd_rebuild::read_old(&handle.desktop_path)?, None)
            }
            Some(pg) => {
                let mut db = pg.connect().map_err(deskd_rebuild::RebuildError::from)?;
                let seq = db
                    .change_seq()
                    .map_err(|e| deskd_rebuild::RebuildError::from(deskd_db::DbError::from(e)))?;
                let old = deskd_rebuild::read_old_from(&db)?;
                (Some(old), Some((db, seq)))
            }
        };
        job.set_phase("walking");
        job.objects.store(0, Ordering::Relaxed);
        let walk = deskd_rebuild::walk::walk(
            &root,
            threads,
            &|n| job.objects.store(n, Ordering::Relaxed),
            &job.stop,
        )
        .map_err(|e| match e {
            deskd_rebuild::RebuildError::Cancelled => RebuildFailure::Stopped {
                timeout: job.timeout,
            },
            other => other.into(),
        })?;
        job.stopped()?;
        // Another volume below this one: its objects are its own desktop's, and a rebuild
        // here would give them IDs here and rewrite their mirrors (unless served `nested`).
        if let (Some(inner), false) = (walk.nested_volumes.first(), handle.config.nested) {
            return Err(RebuildFailure::VolumeBelow {
                root,
                inner: inner.clone(),
            });
        }
        job.set_phase("planning");
        let counter = snapshot.as_ref().map_or(0, |s| s.last_id);
        let decide_from = match mode {
            Mode::Fresh => None,
            _ => snapshot.as_ref(),
        };
        // Claims are checked against the live desktop (the snapshot), in every mode.
        let policy = deskd_rebuild::ClaimPolicy {
            references: snapshot.iter().collect(),
            ..Default::default()
        };
        let plan = deskd_rebuild::plan::plan(&walk, decide_from, counter, xattrs, &policy);
        summary.counts.objects = plan.counts.objects;
        summary.counts.directories = plan.counts.directories;
        if mode != Mode::Scan {
            summary.counts.renumbered += plan.counts.renumbered;
        }
        job.stopped()?;
        let result = if let Some((db, seq)) = pg_at.as_mut() {
            if mode != Mode::Scan {
                job.set_phase("applying");
            }
            let pg = handle.pg.as_ref().expect("a PostgreSQL volume");
            let wait = Duration::from_secs(handle.config.busy_wait);
            apply_in_database(
                pg,
                db,
                *seq,
                wait,
                mode,
                &walk,
                &plan,
                snapshot.as_ref(),
                xattrs,
                job,
            )?
        } else if mode == Mode::Scan {
            let touched = handle.touches.take();
            let lines = online::settled(&walk, &plan, &touched)
                .into_iter()
                .map(line)
                .collect();
            PassResult {
                applied: Applied::default(),
                lines,
            }
        } else {
            job.set_phase("applying");
            apply_in_writer(handle, mode, walk, plan, snapshot, xattrs)?
        };
        let applied = &result.applied;
        if applied.changed + applied.new_ids + applied.removed > 0 {
            // Committed (the writer answered after its commit): one audit line per pass.
            crate::audit::log(
                asker,
                &root,
                &format!(
                    "rebuild job {} pass {pass} repaired {}, new IDs {}, removed {}",
                    job.id, applied.changed, applied.new_ids, applied.removed
                ),
            );
        }
        summary.differences += result.lines.len() as u64;
        summary.counts.repaired += result.applied.changed;
        summary.counts.new_ids += result.applied.new_ids;
        summary.counts.removed += result.applied.removed;
        summary.left = result.applied.left_with_differences;
        for e in &result.applied.errors {
            warn!(volume = %root.display(), "rebuild could not repair {e}");
        }
        job.lines.lock().unwrap().extend(result.lines);
        if mode == Mode::Scan || result.applied.left_with_differences == 0 {
            break;
        }
    }
    summary.millis = job.began.elapsed().as_millis() as u64;
    Ok(summary)
}

/// How long one chunk of an online apply on PostgreSQL holds the volume's row lock before it
/// commits and lets the writes waiting for it in (security.md, "Known limits").
const CHUNK: Duration = Duration::from_millis(200);

/// What clients changed since the snapshot, as the change log of every server shows it,
/// read again at the start of each chunk of an apply (under the row lock).
struct TouchedSince {
    /// The last batch read.
    seen: u64,
    /// The rebuild's own batches (its committed chunks), which are not clients' changes.
    own: std::collections::HashSet<u64>,
    ids: std::collections::HashSet<u32>,
}

impl TouchedSince {
    /// Add the changes after `seen`. Batch numbers have no holes: a first batch after
    /// `seen` missing means the log was pruned past it (more batches than it keeps committed
    /// meanwhile), and what clients changed is no longer known.
    fn read(&mut self, changes: Vec<deskd_pg::Change>) -> Result<(), RebuildFailure> {
        if changes.first().is_some_and(|c| c.seq != self.seen + 1) {
            return Err(RebuildFailure::Repairs(deskd_db::DbError::Backend(
                "the change log was pruned past the rebuild's snapshot (clients committed more \
                 batches during the rebuild than the log keeps); run it again"
                    .into(),
            )));
        }
        for c in changes {
            self.seen = c.seq;
            if !self.own.contains(&c.seq) {
                self.ids.insert(c.id);
            }
        }
        Ok(())
    }
}

/// One pass on a desktop in PostgreSQL, on a connection of the rebuild's own, in chunks of
/// about [`CHUNK`] ([`online::Applier`]). Each chunk is a batch: it takes the volume's row
/// lock, which every server's writer takes for its batches too, reads what clients changed
/// since the snapshot (the change log after batch `seq`, all servers' commits, less the
/// rebuild's own chunks), repairs, and commits, so no client write commits between that
/// reading and the repairs that rely on it. Between chunks the writers get the lock.
/// A scan only reads.
#[allow(clippy::too_many_arguments)]
fn apply_in_database(
    pg: &crate::pg_volume::PgVolume,
    db: &mut deskd_pg::PgDesktop,
    seq: u64,
    wait: Duration,
    mode: Mode,
    walk: &deskd_rebuild::walk::Walk,
    plan: &Plan,
    snapshot: Option<&OldDesktop>,
    xattrs: bool,
    job: &RebuildJob,
) -> Result<PassResult, RebuildFailure> {
    let failed = |e: deskd_pg::PgError| RebuildFailure::Repairs(e.into());
    let mut touched = TouchedSince {
        seen: seq,
        own: Default::default(),
        ids: Default::default(),
    };
    if mode == Mode::Scan {
        touched.read(db.changes_since(seq).map_err(failed)?)?;
        let lines = online::settled(walk, plan, &touched.ids)
            .into_iter()
            .map(line)
            .collect();
        return Ok(PassResult {
            applied: Applied::default(),
            lines,
        });
    }
    let mut applier: Option<online::Applier> = None;
    let mut lines = Vec::new();
    let mut chunks = 0u32;
    loop {
        let mut batch = db.batch_within(wait).map_err(failed)?;
        touched.read(batch.changes_since(touched.seen).map_err(failed)?)?;
        let pass = Pass {
            mode,
            walk,
            plan,
            snapshot,
            touched: &touched.ids,
            xattrs,
        };
        let applier = applier.get_or_insert_with(|| {
            // The lines say what the pass found, as of its first chunk.
            lines = online::settled(walk, plan, &touched.ids)
                .into_iter()
                .map(line)
                .collect();
            online::Applier::new(&pass)
        });
        let done = applier.run(&mut batch, &pass, Some(Instant::now() + CHUNK));
        if let Some(own) = batch.commit().map_err(failed)? {
            touched.own.insert(own);
        }
        chunks += 1;
        // The name index follows the change log (as after a client batch): a find after the
        // rebuild's answer (or between its chunks) sees its repairs.
        if let Err(e) = pg.catch_up(db) {
            warn!("name index not caught up after a rebuild chunk: {e}");
        }
        if done {
            break;
        }
        // (The first at info: the tests wait for it to write during the apply.)
        if chunks == 1 {
            info!(
                job = job.id,
                "rebuild applies in chunks: the first is committed"
            );
        } else {
            tracing::debug!(job = job.id, chunks, "rebuild chunk committed");
        }
    }
    let applied = applier.expect("one chunk at least").finish();
    Ok(PassResult { applied, lines })
}

/// Run the apply of one pass on the writer thread and wait for it.
fn apply_in_writer(
    handle: &Arc<VolumeHandle>,
    mode: Mode,
    walk: deskd_rebuild::walk::Walk,
    plan: Plan,
    snapshot: Option<OldDesktop>,
    xattrs: bool,
) -> Result<PassResult, RebuildFailure> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let touches = handle.touches.clone();
    let work = move |desktop: &mut deskd_db::Desktop| -> bool {
        // On the writer: no client batch can commit between this and the apply's commit.
        let touched = touches.take();
        let pass = Pass {
            mode,
            walk: &walk,
            plan: &plan,
            snapshot: snapshot.as_ref(),
            touched: &touched,
            xattrs,
        };
        let lines: Vec<DifferenceLine> = online::settled(&walk, &plan, &touched)
            .into_iter()
            .map(line)
            .collect();
        let outcome = desktop.batch().and_then(|mut batch| {
            let applied = online::apply(&mut batch, &pass);
            batch.commit().map(|_| applied)
        });
        let committed = outcome.is_ok();
        let _ = tx.send(
            outcome
                .map(|applied| PassResult { applied, lines })
                .map_err(RebuildFailure::Repairs),
        );
        committed
    };
    // The writer drops the work once the desktop is closed (deskd stopping, or a reload
    // closing the volume as the rebuild started).
    handle
        .queue
        .send(Job::Run(Box::new(work)))
        .map_err(|_| RebuildFailure::DesktopClosed)?;
    rx.recv().map_err(|_| RebuildFailure::DesktopClosed)?
}
