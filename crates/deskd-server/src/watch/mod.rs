//! Live tracking (issue 23): a watcher per served, writable volume, so that changes made
//! outside deskd (Samba, NFS, a shell's `mv`, rsync, a restore) reach the desktop within
//! milliseconds and keep their IDs.
//!
//! The kernel side is the crate `deskd-watch` (fanotify or inotify, coalesced batches of
//! [`deskd_watch::Change`]); this module is the server side, one job per file: starting it for
//! a volume and what the log says (`kernel`), the thread that has the writer apply each batch
//! in one transaction (`thread`; the mapping itself is [`crate::apply::watched`]), what the
//! disk needs afterwards (`disk`), creates the desktop already has dropped before they take the
//! writer (`known`), the rescans by the online repair at every start and after
//! an overflow (`rescan`), and the figures status and metrics show (`figures`).
//!
//! The watchers live here, beside the volumes, not in the volume handle (as the online
//! rebuilds do): a watcher drives its handle's writer, and the handle need know nothing of it.

mod burst;
mod disk;
mod figures;
mod kernel;
mod known;
mod owed;
mod rescan;
mod source;
mod thread;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use deskd_proto::VolumeWatch;
use deskd_watch::WatchMode;
use tracing::{info, warn};

use crate::config::VolumeConfig;
use crate::limits::RateLimited;
use crate::mapped_reader::MappedReader;
use crate::rebuild;
use crate::volume::VolumeHandle;
use figures::WatchFigures;
use source::ChangeSource;

/// One volume's watcher, while its opening is served.
pub(crate) struct Running {
    /// The opening of the volume it watches ([`VolumeHandle::opening`]).
    opening: u64,
    /// What it was started with (a reload that changes them restarts it).
    mode: WatchMode,
    limits: Limits,
    /// The change stream (None: not watching), held by the thread for each read and apply,
    /// and by a barrier.
    source: Mutex<Option<Box<dyn ChangeSource>>>,
    stopper: Option<Box<dyn Fn() + Send + Sync>>,
    stopping: AtomicBool,
    /// Barriers waiting for the source: the thread lets them have it before its next read,
    /// waiting on `barriers_done` until none is left (or the watcher stops).
    barriers_waiting: Mutex<usize>,
    barriers_done: Condvar,
    figures: Mutex<WatchFigures>,
    /// The warnings of changes not applied as seen, at most one per 10 s whether the thread
    /// or a barrier met them.
    failures: RateLimited,
    /// The warnings of lost events ([`thread::process`]), and the losses not said yet.
    losses_said: RateLimited,
    losses_unsaid: Mutex<deskd_watch::Losses>,
    rescans: Mutex<rescan::RescanState>,
    /// Told when no rescan runs any more ([`wait_for_rescan`]).
    rescans_done: Condvar,
    /// Stamps whose objects had moved on before the disk work, since when.
    moved_on: Mutex<Vec<(crate::apply::watched::DiskWork, std::time::Instant)>>,
    /// Creates of the last batch whose path was stale, tried once more with the next.
    unplaced: Mutex<Vec<deskd_watch::Change>>,
    /// When the writer's spending window that deferred new objects has ended: then the thread
    /// gives the writer a turn (its rescan of their folders) even if nothing new was seen.
    spending_due: Mutex<Option<std::time::Instant>>,
    /// Stamps of a busy batch's new objects, written in the background ([`owed`]).
    owed: Mutex<owed::Owed>,
    /// Told when stamps are owed, or the watcher stops (the stamper waits on it).
    owed_ready: Condvar,
    /// When a batch last owed its stamps: the stamper waits until bursts pause.
    last_burst: Mutex<Option<std::time::Instant>>,
    /// The thread that writes owed stamps at the lowest CPU priority.
    stamper: Mutex<Option<JoinHandle<()>>>,
    /// Held while a share of owed stamps is paid (taken and written): a barrier that finds
    /// none left owed waits for the share the stamper is writing.
    paying: Mutex<()>,
    /// How many stamps the share being paid holds: taken out of `owed` and not written yet,
    /// still owed as far as status is concerned.
    in_hand: std::sync::atomic::AtomicU64,
    /// The read connection of [`known`] and of the stamps tried again, opened at first need
    /// and kept while the watcher runs (closed by [`stop_running`]).
    reader: Mutex<Option<MappedReader>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Running {
    fn new(opening: u64, mode: WatchMode, limits: Limits, opened: kernel::Opened) -> Running {
        Running {
            opening,
            mode,
            limits,
            source: Mutex::new(opened.source),
            stopper: opened.stopper,
            stopping: AtomicBool::new(false),
            barriers_waiting: Mutex::new(0),
            barriers_done: Condvar::new(),
            figures: Mutex::new(WatchFigures::new(opened.kind, opened.note)),
            failures: RateLimited::new(Duration::from_secs(10)),
            losses_said: RateLimited::new(thread::LOSSES_SAID_EVERY),
            losses_unsaid: Mutex::default(),
            rescans: Mutex::default(),
            rescans_done: Condvar::new(),
            moved_on: Mutex::default(),
            unplaced: Mutex::default(),
            spending_due: Mutex::default(),
            owed: Mutex::new(owed::Owed::default()),
            owed_ready: Condvar::new(),
            last_burst: Mutex::new(None),
            stamper: Mutex::new(None),
            paying: Mutex::new(()),
            in_hand: std::sync::atomic::AtomicU64::new(0),
            reader: Mutex::new(None),
            thread: Mutex::new(None),
        }
    }

    /// `f` with the watcher's read connection to the desktop (None: it cannot be opened). A
    /// stopped watcher keeps none: a barrier that still runs after the stop gets its own.
    fn with_reader<T>(
        &self,
        handle: &VolumeHandle,
        f: impl FnOnce(Option<&MappedReader>) -> T,
    ) -> T {
        let mut kept = self.reader.lock().unwrap();
        if self.stopping.load(Ordering::SeqCst) {
            drop(kept);
            return f(handle.open_reader().ok().as_ref());
        }
        if kept.is_none() {
            *kept = handle.open_reader().ok();
        }
        if let Some(reader) = kept.as_mut() {
            // Maps more of the desktop as it grows, as a client's connection does.
            reader.refresh(true);
        }
        f(kept.as_ref())
    }

    /// Wait until no barrier waits for the source any more, or the watcher stops.
    fn let_barriers_pass(&self) {
        let waiting = self.barriers_waiting.lock().unwrap();
        drop(
            self.barriers_done
                .wait_while(waiting, |n| *n > 0 && !self.stopping.load(Ordering::SeqCst))
                .unwrap(),
        );
    }
}

/// The watchers of the served volumes, by handle. Clones share them.
#[derive(Default, Clone)]
pub(crate) struct Registry(
    Arc<Mutex<HashMap<u32, Arc<Running>>>>,
    /// The counters of stopped watchers, by volume root, which the next watcher of the same
    /// root goes on from ([`figures::Totals`]).
    Arc<Mutex<HashMap<PathBuf, figures::Totals>>>,
);

impl Registry {
    /// The watcher of this opening of the volume.
    fn of(&self, handle: &VolumeHandle) -> Option<Arc<Running>> {
        self.0
            .lock()
            .unwrap()
            .get(&handle.index)
            .filter(|r| r.opening == handle.opening)
            .cloned()
    }

    /// What `deskd status` shows of the volume's watcher.
    pub(crate) fn status(&self, handle: &VolumeHandle) -> VolumeWatch {
        match self.of(handle) {
            Some(running) => {
                let mut wire = running.figures.lock().unwrap().to_wire(handle.index);
                wire.owed_stamps = running.owed.lock().unwrap().len()
                    + running.in_hand.load(std::sync::atomic::Ordering::SeqCst);
                wire
            }
            None => WatchFigures::new("off", Some("not watched".into())).to_wire(handle.index),
        }
    }
}

/// Start watching the volume as its configuration says, with a start-up rescan in the
/// background. A read-only volume is not watched (nothing may change its desktop).
pub(crate) fn start(registry: &Registry, rebuilds: &rebuild::Registry, handle: &Arc<VolumeHandle>) {
    start_with(
        registry,
        rebuilds,
        handle,
        handle.config.watch,
        Limits::of(&handle.config),
    );
}

/// The bounds a watcher is started with (a reload that changes them restarts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// `watch_queue` (a test setting).
    queue: Option<usize>,
    /// `watch_held_mib`, in bytes.
    held_max: u64,
}

impl Limits {
    fn of(config: &VolumeConfig) -> Limits {
        Limits {
            queue: config.watch_queue,
            held_max: config.watch_held_max,
        }
    }
}

fn start_with(
    registry: &Registry,
    rebuilds: &rebuild::Registry,
    handle: &Arc<VolumeHandle>,
    mode: WatchMode,
    limits: Limits,
) {
    let root = handle.volume.root().display().to_string();
    let opened = if handle.read_only() {
        kernel::Opened::off("the volume is read-only")
    } else if mode == WatchMode::Off {
        kernel::Opened::off("watch = \"off\"")
    } else if handle.pg.is_some() {
        // Only `auto` gets here (open_pg refuses the others): see docs/deskd.md for why.
        kernel::Opened::off("a desktop in PostgreSQL is not watched yet")
    } else {
        kernel::open(handle.volume.root(), mode, limits)
    };
    match (&opened.source, &opened.note) {
        (Some(_), None) => info!(target: "deskd", "watching {root} with {}", opened.kind),
        (Some(_), Some(why)) => {
            info!(target: "deskd", "watching {root} with {}: {why}", opened.kind)
        }
        (None, why) => {
            let why = why.as_deref().unwrap_or("no watcher");
            // Asked for by name (not `auto`): not getting it is worth a warning.
            if matches!(mode, WatchMode::Fanotify | WatchMode::Inotify) {
                let asked = format!("{mode:?}").to_lowercase();
                warn!(target: "deskd", "not watching {root}: {why} (watch = \"{asked}\")")
            } else {
                info!(target: "deskd", "not watching {root}: {why}")
            }
        }
    }
    let watching = opened.source.is_some();
    let running = Arc::new(Running::new(handle.opening, mode, limits, opened));
    let root_path = handle.volume.root().to_path_buf();
    if let Some(carried) = registry.1.lock().unwrap().remove(&root_path) {
        running.figures.lock().unwrap().carry(carried);
    }
    if let Some(old) = registry
        .0
        .lock()
        .unwrap()
        .insert(handle.index, running.clone())
    {
        stop_running(&old);
        let totals = old.figures.lock().unwrap().totals();
        running.figures.lock().unwrap().carry(totals);
    }
    if !watching {
        return;
    }
    let (thread_running, thread_handle, thread_rebuilds) =
        (running.clone(), handle.clone(), rebuilds.clone());
    match std::thread::Builder::new()
        .name(format!("watch-{}", handle.index))
        .spawn(move || thread::run(thread_running, thread_handle, thread_rebuilds))
    {
        Ok(join) => *running.thread.lock().unwrap() = Some(join),
        Err(e) => {
            warn!(target: "deskd", "not watching {root}: cannot start its thread: {e}");
            let mut figures = running.figures.lock().unwrap();
            figures.kind = "off".into();
            figures.note = Some(format!("cannot start its thread: {e}"));
            return;
        }
    }
    let (stamper_running, stamper_handle) = (running.clone(), handle.clone());
    match std::thread::Builder::new()
        .name(format!("stamp-{}", handle.index))
        .spawn(move || thread::stamp_in_background(stamper_running, stamper_handle))
    {
        Ok(join) => *running.stamper.lock().unwrap() = Some(join),
        // Owed stamps are then paid by barriers, rebuild jobs and the next start's rescan.
        Err(e) => warn!(target: "deskd", "watching {root}: no stamper thread: {e}"),
    }
    // Changes made while deskd was down (or before the watcher began) are found by a rescan;
    // a desktop that records nothing but the root has no ID to keep, and is not walked.
    let empty = handle
        .open_reader()
        .and_then(|r| deskd_db::Read::stats(&*r))
        .is_ok_and(|s| s.objects <= 1);
    if empty {
        rescan::nothing_to_keep(handle, &running);
    } else {
        rescan::request(rebuilds, handle, &running, "start");
    }
}

/// A reload's new settings: restart the watcher when `watch`, `watch_queue` or
/// `watch_held_mib` changed.
pub(crate) fn retune(
    registry: &Registry,
    rebuilds: &rebuild::Registry,
    handle: &Arc<VolumeHandle>,
    new: &VolumeConfig,
) {
    let Some(running) = registry.of(handle) else {
        return;
    };
    if running.mode == new.watch && running.limits == Limits::of(new) {
        return;
    }
    stop(registry, rebuilds, handle);
    start_with(registry, rebuilds, handle, new.watch, Limits::of(new));
}

/// Stop the volume's watcher (before its desktop is closed) and wait for its thread; a
/// rescan it started is cancelled (the volume's next opening rescans anyway), so it does not
/// hold off the close.
pub(crate) fn stop(registry: &Registry, rebuilds: &rebuild::Registry, handle: &VolumeHandle) {
    let running = {
        let mut all = registry.0.lock().unwrap();
        match all.get(&handle.index) {
            Some(r) if r.opening == handle.opening => all.remove(&handle.index),
            _ => None,
        }
    };
    if let Some(running) = running {
        stop_running(&running);
        rescan::cancel(rebuilds, handle, &running, Duration::from_secs(10));
        // Read after the thread has ended: its last batch counts.
        let totals = running.figures.lock().unwrap().totals();
        registry
            .1
            .lock()
            .unwrap()
            .insert(handle.volume.root().to_path_buf(), totals);
    }
}

/// Stop every watcher (the server's shutdown).
pub(crate) fn stop_all(registry: &Registry) {
    let all: Vec<Arc<Running>> = registry.0.lock().unwrap().drain().map(|(_, r)| r).collect();
    for running in all {
        stop_running(&running);
    }
}

fn stop_running(running: &Running) {
    running.stopping.store(true, Ordering::SeqCst);
    // Taken after `stopping` is set: a thread waiting for barriers sees it when woken.
    drop(running.barriers_waiting.lock().unwrap());
    running.barriers_done.notify_all();
    if let Some(stop) = &running.stopper {
        stop();
    }
    if let Some(join) = running.thread.lock().unwrap().take() {
        let _ = join.join();
    }
    // Taken after `stopping` is set: the stamper sees it when woken.
    drop(running.owed.lock().unwrap());
    running.owed_ready.notify_all();
    if let Some(join) = running.stamper.lock().unwrap().take() {
        let _ = join.join();
    }
    // Not kept past the stop: the desktop is closed next.
    *running.reader.lock().unwrap() = None;
    let owed = running.owed.lock().unwrap().len();
    if owed > 0 {
        info!(
            "watching stopped with {owed} resource file(s) and mirror(s) of new objects not \
             written yet: the rescan at the watcher's next start writes them"
        );
    }
}

/// Wait, at most `limit`, while the server's own rescan of the volume runs (a `rebuild` asked
/// meanwhile runs after it rather than being refused as busy).
pub(crate) fn wait_for_rescan(registry: &Registry, handle: &VolumeHandle, limit: Duration) {
    let Some(running) = registry.of(handle) else {
        return;
    };
    rescan::wait(&running, limit);
}

/// After a barrier (a flush, a freeze): a rescan of the volume running or asked for (events
/// were dropped, at an overflow or past `watch_held_mib`, or the start-up rescan of changes
/// made while deskd was down) means that changes made before the barrier may not be in the
/// desktop yet. Wait for it, at most `limit`; the refusal to give when it still runs then (the
/// newcomer review of stop 40: a flush said "applied" with 178,000 files not yet registered).
pub(crate) fn rescan_outstanding(
    registry: &Registry,
    handle: &VolumeHandle,
    limit: Duration,
) -> Result<(), deskd_proto::ErrorReply> {
    wait_for_rescan(registry, handle, limit);
    let Some(running) = registry.of(handle) else {
        return Ok(());
    };
    if !rescan::is_running(&running) {
        return Ok(());
    }
    let reason = running
        .figures
        .lock()
        .unwrap()
        .rescan
        .as_ref()
        .map_or_else(|| "rescan".to_owned(), |r| r.reason.clone());
    let why = match reason.as_str() {
        "start" => "the rescan at the watcher's start (changes made while it was not watching)",
        _ => "the rescan after events were dropped (an overflow, or past watch_held_mib)",
    };
    Err(deskd_proto::ErrorReply::new(
        deskd_proto::ErrorCode::Busy,
        format!(
            "{}: {why} still runs after {:.1} s, so changes made before this request may not \
             be in the desktop yet; `deskd status` shows the rescan: try again once it has \
             finished",
            handle.volume.root().display(),
            limit.as_secs_f64()
        ),
    ))
}

/// How long a flush or a freeze waits for a running rescan ([`rescan_outstanding`]): within
/// the client's 60 s with room for the flush itself.
const BARRIER_WAITS_FOR_RESCAN: Duration = Duration::from_secs(30);

/// [`BARRIER_WAITS_FOR_RESCAN`], or the test hook's `DESKD_TEST_BARRIER_WAITS_FOR_RESCAN_MS`.
pub(crate) fn barrier_waits_for_rescan() -> Duration {
    #[cfg(feature = "test-hooks")]
    if let Some(ms) = std::env::var("DESKD_TEST_BARRIER_WAITS_FOR_RESCAN_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Duration::from_millis(ms);
    }
    BARRIER_WAITS_FOR_RESCAN
}

/// Most reads a barrier makes (each up to 65,536 changes): a million events, whatever the
/// watcher's pump holds at its bound with short names (`deskd_watch`'s `HELD_BYTES_MAX`) and
/// more than the writer leaves behind at a million files created (docs/PERFORMANCE.md).
const BARRIER_ROUNDS: usize = 32;

/// How long a barrier pays owed stamps itself ([`owed`]): a flush answers within the
/// client's time (60 s) whatever a burst left owed, having written what it could (about
/// 50,000 resource files); the rest stays owed, paid by the stamper, shown by status, and paid
/// first by a rebuild job ([`pay_all_owed`]).
const BARRIER_PAYS_FOR: Duration = Duration::from_secs(2);

/// Test hook (`DESKD_TEST_HOLD_BARRIER_UNTIL=<file>`): a barrier waits, after applying what
/// the watcher held, until `<file>` exists (a flush as slow as after a burst of a million).
#[cfg(feature = "test-hooks")]
fn hold_barrier() {
    if let Some(until) = std::env::var_os("DESKD_TEST_HOLD_BARRIER_UNTIL") {
        while !std::path::Path::new(&until).exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Without the `test-hooks` feature the hook is compiled out.
#[cfg(not(feature = "test-hooks"))]
fn hold_barrier() {}

/// [`BARRIER_PAYS_FOR`], or the test hook's `DESKD_TEST_BARRIER_PAYS_MS`.
fn barrier_pays_for() -> Duration {
    #[cfg(feature = "test-hooks")]
    if let Some(ms) = std::env::var("DESKD_TEST_BARRIER_PAYS_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Duration::from_millis(ms);
    }
    BARRIER_PAYS_FOR
}

/// The barrier of `deskd flush` (and freeze, and a rebuild asked): apply every change the
/// kernel has queued for the volume by now, and everything read before, in the desktop; and
/// pay the stamps a burst left owed for at most [`BARRIER_PAYS_FOR`]. Returns how many are
/// still owed.
pub(crate) fn barrier(
    registry: &Registry,
    rebuilds: &rebuild::Registry,
    handle: &Arc<VolumeHandle>,
) -> u64 {
    let Some(running) = registry.of(handle) else {
        return 0;
    };
    *running.barriers_waiting.lock().unwrap() += 1;
    let mut source = running.source.lock().unwrap();
    {
        let mut waiting = running.barriers_waiting.lock().unwrap();
        *waiting -= 1;
        if *waiting == 0 {
            running.barriers_done.notify_all();
        }
    }
    let Some(source) = source.as_mut() else {
        return 0;
    };
    // One read takes at most 65,536 changes, and the queue may hold more: read until it is
    // empty (the hostile review of 2026-12-07, finding 4: a flush returned before a `mv` made
    // before it was applied), at most BARRIER_ROUNDS reads, so that a writer that never stops
    // cannot hold the flush for ever.
    for _ in 0..BARRIER_ROUNDS {
        match source.drain_now() {
            Ok(batch) => {
                // Live for status while the flush waits (`deskd flush` shows it).
                {
                    let mut figures = running.figures.lock().unwrap();
                    figures.queued_bytes = source.held_bytes().0;
                    // What a burst held is being applied: no longer deferred.
                    figures.deferring = false;
                }
                let empty = batch.changes.is_empty() && !batch.overflow;
                thread::process(&running, handle, rebuilds, batch, true);
                if empty {
                    break;
                }
            }
            Err(e) => {
                warn!(
                    "watching {}: the flush barrier could not read the queue: {e}",
                    handle.volume.root().display()
                );
                break;
            }
        }
    }
    hold_barrier();
    // On disk too, within bounds: the stamps a busy batch left owed. (Paying a million took
    // the flush past the client's 60 s: stop 38's runs.)
    let until = std::time::Instant::now() + barrier_pays_for();
    while std::time::Instant::now() < until && thread::pay_owed(&running, handle, owed::SHARE) > 0 {
    }
    let owed = running.owed.lock().unwrap().len();
    if owed == 0 {
        // The share the stamper is writing, if any, is written when it lets go.
        drop(running.paying.lock().unwrap());
    }
    owed
}

/// Pay every stamp the volume's watcher owes (a rebuild job's first work, in its thread: a
/// scan then compares against every file as `dt` would have left it).
pub(crate) fn pay_all_owed(registry: &Registry, handle: &VolumeHandle) {
    let Some(running) = registry.of(handle) else {
        return;
    };
    while !running.stopping.load(Ordering::SeqCst) {
        if thread::pay_owed(&running, handle, owed::SHARE) == 0 {
            break;
        }
    }
    drop(running.paying.lock().unwrap());
}
