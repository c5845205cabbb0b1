//! The watcher thread of one volume: reads a batch of changes, has the volume's writer apply
//! it in one transaction ([`crate::writer::Job::Watch`]), then does what the disk needs
//! ([`super::disk`]) and counts it ([`super::figures`]). The barrier of `deskd flush` takes
//! the same turn ([`process`] under the source's lock), so every change read before it is
//! applied, on disk and in the desktop, before the flush.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deskd_db::now_unix;
use std::path::PathBuf;

use deskd_watch::{Batch, Change};
use tracing::{debug, error, info, warn};

use super::{burst, disk, owed, rescan, Running};
use crate::apply::watched::DiskWork;
use crate::rebuild::Registry;
use crate::volume::VolumeHandle;
use crate::writer::Job;

/// The longest one read waits for a first change: how long a barrier waits for its turn at
/// worst, and how often an idle watcher wakes.
pub(crate) const WAIT: Duration = Duration::from_millis(50);

/// How long after its oldest event a batch is applied at the earliest: a client that made the
/// change itself (`dt cp`, the Netatalk bridge) tells the server within milliseconds, with what
/// only it knows (type and creator, the ID to keep), and its request should be first.
const SETTLE: Duration = Duration::from_millis(20);

/// How long after a batch of a steady stream was taken the next is taken at the earliest
/// (a stream: the batch had [`GATHER_FROM`] to [`GATHER_UPTO`] changes). Each batch costs
/// the same whatever its size (the writer's wake-up, transaction and commit, the folders
/// pinned again for its disk work, the thread's own wake-ups): at 1,000 renames a second the
/// batches were about 25 ms apart, 25 renames each, and taking one every 40 ms cut the
/// server's CPU per rename (docs/PERFORMANCE.md, "Live tracking (issue 23) — stop 42"). The
/// oldest change of a batch waits this long at most (the lag target is 100 ms at p99).
const GATHER: Duration = Duration::from_millis(40);
/// The fewest changes of a batch after which the next is gathered: a lone change (a user's
/// `mv`, the polled lag of `scripts/bench-watch.sh`) is applied after [`SETTLE`] only.
const GATHER_FROM: usize = 8;
/// The most: a burst's backlog (batches up to `deskd_watch`'s bound) is applied without a
/// pause.
const GATHER_UPTO: usize = 1_000;

/// When the next batch may be taken after one of `changes` changes taken at `taken`: None
/// at once.
fn gather_until(changes: usize, taken: Instant) -> Option<Instant> {
    (GATHER_FROM..=GATHER_UPTO)
        .contains(&changes)
        .then(|| taken + GATHER)
}

/// Wait until the batch is [`SETTLE`] old.
fn settle(batch: &Batch) {
    if let (Some(oldest), false) = (batch.oldest, batch.changes.is_empty()) {
        if let Some(left) = SETTLE.checked_sub(oldest.elapsed()) {
            std::thread::sleep(left);
        }
    }
}

/// Read and apply batches until the watcher is stopped or fails.
pub(crate) fn run(running: Arc<Running>, handle: Arc<VolumeHandle>, rebuilds: Registry) {
    let root = handle.volume.root().display().to_string();
    // Events held past GIVE_BACK_FROM since their memory was last given back.
    let mut backlog = false;
    // Whether the events held now are a burst's, left for when it slows (`burst`).
    let mut deferral = burst::Deferral::default();
    // The test hook's deferral is on (`forced_deferral`).
    let mut forced = false;
    // The deferred burst's start and what the pump had taken then; when it slowed.
    let mut burst_began: Option<(Instant, deskd_watch::Pumped)> = None;
    // When it slowed, and the bytes pumped by then: it is applied once the watcher has taken
    // them all (what deskd writes meanwhile, held after them, is not the burst's).
    let mut applying_burst: Option<(Instant, u64)> = None;
    // A steady stream's next batch is taken no sooner than this ([`GATHER`]).
    let mut next_at: Option<Instant> = None;
    loop {
        if running.stopping.load(Ordering::SeqCst) {
            return;
        }
        hold_watcher(&running);
        if let Some(left) = next_at
            .take()
            .and_then(|at| at.checked_duration_since(Instant::now()))
        {
            // Outside the source's lock: a flush meanwhile takes the source and applies what
            // is held at once.
            std::thread::sleep(left);
        }
        {
            let mut guard = running.source.lock().unwrap();
            let Some(source) = guard.as_mut() else {
                return;
            };
            let (held, peak) = source.held_bytes();
            let pumped = source.pumped();
            let was_deferring = deferral.deferring() || forced;
            let was_forced = forced;
            let decision = match forced_deferral(held, &mut forced) {
                Some(first) => burst::Decision::Defer { first },
                None => deferral.look(
                    held,
                    pumped.others(),
                    running.limits.held_max,
                    Instant::now(),
                ),
            };
            if let burst::Decision::Defer { first } = decision {
                drop(guard);
                if first {
                    burst_began = Some((Instant::now(), pumped));
                }
                defer(&running, &root, held, peak, first);
                continue;
            }
            if was_deferring {
                running.figures.lock().unwrap().deferring = false;
                if let Some((began, then)) = burst_began {
                    // What came during the deferral, and how much of it deskd's own writes
                    // (the stamper's resource files): those do not keep a burst going.
                    let own = pumped.own - then.own;
                    info!(
                        "watching {root}: the burst {} after {:.1} s; applying {} MiB of \
                         events held ({} KiB of them deskd's own writes)",
                        if was_forced {
                            "slowed"
                        } else {
                            deferral.ended()
                        },
                        began.elapsed().as_secs_f64(),
                        held >> 20,
                        own >> 10
                    );
                    applying_burst = Some((Instant::now(), pumped.all));
                }
            }
            match source.next_batch(WAIT) {
                Ok(batch) => {
                    next_at = gather_until(batch.changes.len(), Instant::now());
                    let (held, peak) = source.held_bytes();
                    deferral.read(source.pumped().others(), held, Instant::now());
                    {
                        let mut figures = running.figures.lock().unwrap();
                        figures.queued_bytes = held;
                        figures.queued_peak_bytes = peak;
                    }
                    backlog |= held >= GIVE_BACK_FROM;
                    if held == 0 && std::mem::take(&mut backlog) {
                        // A burst's backlog is applied: its pages go back to the system
                        // rather than staying in the server's RSS.
                        crate::allocator::give_back();
                    }
                    settle(&batch);
                    process(&running, &handle, &rebuilds, batch, false);
                    let taken = source.pumped().taken;
                    if applying_burst.is_some_and(|(_, until)| taken >= until) {
                        if let Some((slowed, _)) = applying_burst.take() {
                            // The end a test (and an admin) waits on: the burst is in the
                            // desktop.
                            info!(
                                "watching {root}: a burst's held events are applied, {:.1} s \
                                 after it slowed",
                                slowed.elapsed().as_secs_f64()
                            );
                            burst_began = None;
                        }
                    }
                }
                Err(e) => {
                    if running.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    error!(
                        "watching {root} ended: {e}; changes made outside deskd reach the \
                            desktop by a client or a rebuild until deskd is reloaded or restarted"
                    );
                    let mut figures = running.figures.lock().unwrap();
                    figures.kind = "off".into();
                    figures.note = Some(format!("the watcher failed: {e}"));
                    return;
                }
            }
        }
        // A barrier waiting for the source gets it before the next read.
        running.let_barriers_pass();
    }
}

/// One look of a deferred burst ([`burst`]): say so at its start, keep the stamper waiting
/// (its resource files would contend with the burst's creates), show what is held, and let a
/// barrier that waits have the source before the next look.
fn defer(running: &Running, root: &str, held: u64, peak: u64, first: bool) {
    if first {
        info!(
            "watching {root}: a burst ({} MiB of events held and growing fast); applied when \
             it slows, within {} s, or at a flush",
            held >> 20,
            burst::DEFER_AT_MOST.as_secs()
        );
    }
    *running.last_burst.lock().unwrap() = Some(Instant::now());
    {
        let mut figures = running.figures.lock().unwrap();
        figures.queued_bytes = held;
        figures.queued_peak_bytes = peak;
        figures.deferring = true;
    }
    running.let_barriers_pass();
    // A stop is seen at the next look, LOOK later at most.
    std::thread::sleep(burst::LOOK);
}

/// Test hook (`DESKD_TEST_DEFER_UNTIL=<file>`): events held are deferred as a burst's until
/// `<file>` exists, whatever their rate, so a test sees what a client and a flush get
/// meanwhile. `Some(first)` while it defers.
#[cfg(feature = "test-hooks")]
fn forced_deferral(held: u64, forced: &mut bool) -> Option<bool> {
    static UNTIL: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let until = UNTIL.get_or_init(|| std::env::var_os("DESKD_TEST_DEFER_UNTIL").map(PathBuf::from));
    let defer = held > 0 && until.as_deref().is_some_and(|u| !u.exists());
    let first = defer && !*forced;
    *forced = defer;
    defer.then_some(first)
}

/// Without the `test-hooks` feature the hook is compiled out.
#[cfg(not(feature = "test-hooks"))]
fn forced_deferral(_: u64, _: &mut bool) -> Option<bool> {
    None
}

/// Events held (bytes) from which their memory is given back once they are all applied.
const GIVE_BACK_FROM: u64 = 16 << 20;

/// Most stale creates kept for the next batch (beyond, a rescan finds what they named).
const MAX_UNPLACED: usize = 10_000;
/// How long a stamp whose object had moved on is tried again (at each batch, where the
/// desktop then says the object is): its move reaches the desktop within this in practice.
const STAMP_RETRY_FOR: Duration = Duration::from_secs(5);
/// Most stamps waiting to be tried again (a storm of moves): beyond, the rescan's repair
/// writes what is missing.
const MAX_MOVED_ON: usize = 10_000;

/// The stamps of earlier batches whose objects had moved on, tried again where the desktop
/// now says their objects are (by ID); then this batch's. Returns the errors to log.
fn retry_moved_on(running: &Running, handle: &VolumeHandle, done: disk::Done) -> Vec<String> {
    use deskd_db::Read;
    let mut errors = done.errors;
    let mut waiting = running.moved_on.lock().unwrap();
    let mut earlier = std::mem::take(&mut *waiting);
    // This batch's carries whose target folder had moved on within the batch: the desktop
    // says where their objects are now, so they are carried there at once (a flush that
    // follows finds them done).
    let (carries, later): (Vec<DiskWork>, Vec<DiskWork>) = done
        .moved_on
        .into_iter()
        .partition(|work| matches!(work, DiskWork::Carry { .. }));
    earlier.extend(carries.into_iter().map(|work| (work, Instant::now())));
    if !earlier.is_empty() {
        running.with_reader(handle, |reader| {
            let Some(reader) = reader else {
                return;
            };
            for (mut work, since) in earlier {
                // A carry whose folders were gone goes where the object is now, from where
                // the folder it left is now (the resource file went along with that folder).
                // Looked up once: a resource file not there then went with its folder (`rm -r`)
                // and the object is stamped afresh.
                if let DiskWork::Carry {
                    from, from_folder, ..
                } = &mut work
                {
                    if let (Some(Ok(mut now)), Some(name)) =
                        (from_folder.take().map(|f| reader.path_of(f)), from.last())
                    {
                        now.push(name.clone());
                        *from = now;
                    }
                }
                let carried_from = match &work {
                    DiskWork::Carry { from, .. } => Some(from.clone()),
                    _ => None,
                };
                let stamp = match &mut work {
                    DiskWork::Carry { stamp, .. } => &mut **stamp,
                    other => other,
                };
                let DiskWork::Stamp { id, path, .. } = stamp else {
                    continue;
                };
                match reader.path_of(*id) {
                    Ok(now) => *path = now,
                    Err(_) => {
                        // The record is gone (its object left the volume): nothing to stamp,
                        // and a resource file left at the old name goes, as a removal's does
                        // (not when an object is at that name again).
                        if let Some(from) = carried_from {
                            let unstamp = DiskWork::Unstamp { path: from };
                            errors.extend(
                                disk::apply(&handle.volume, std::slice::from_ref(&unstamp)).errors,
                            );
                        }
                        continue;
                    }
                }
                let result = disk::apply(&handle.volume, std::slice::from_ref(&work));
                errors.extend(result.errors);
                if !result.moved_on.is_empty() && since.elapsed() < STAMP_RETRY_FOR {
                    waiting.push((work, since));
                }
            }
        });
    }
    for work in later {
        if waiting.len() < MAX_MOVED_ON {
            waiting.push((work, Instant::now()));
        }
    }
    errors
}

/// How often the watcher's warning of lost events is said at most (each loss is counted in
/// status all the same, and the next line says those not said).
pub(crate) const LOSSES_SAID_EVERY: Duration = Duration::from_secs(10);

/// What the log says of losses of events: each cause, how often, and what to do.
fn loss_causes(losses: deskd_watch::Losses, held_max: u64) -> String {
    let mut causes = Vec::new();
    if losses.held > 0 {
        let mib = held_max.div_ceil(1 << 20);
        causes.push(format!(
            "more than {mib} MiB of events were held unread (watch_held_mib = {mib}), {} \
             time(s), and dropped: the events on the volume's file system came faster than \
             the desktop took them; raise watch_held_mib if the server has the memory",
            losses.held
        ));
    }
    if losses.queue_limit > 0 {
        causes.push(format!(
            "more events at once than the test setting watch_queue allows, {} time(s)",
            losses.queue_limit
        ));
    }
    if losses.kernel > 0 || causes.is_empty() {
        causes.push(format!(
            "the kernel's event queue overflowed (inotify: raise \
             fs.inotify.max_queued_events), or an event could not be read, {} time(s)",
            losses.kernel.max(1)
        ));
    }
    causes.join("; and ")
}

/// Apply one batch: overflow first (a rescan), then the changes through the writer, then the
/// disk work. Called with the source's lock held; `by_barrier` when a barrier applies what is
/// held ([`super::barrier`]: its batches keep the writer's priority).
pub(crate) fn process(
    running: &Arc<Running>,
    handle: &Arc<VolumeHandle>,
    rebuilds: &Registry,
    batch: Batch,
    by_barrier: bool,
) {
    let root = handle.volume.root();
    if batch.overflow {
        let mut losses = batch.losses;
        if losses.total() == 0 {
            losses.kernel = 1;
        }
        {
            let mut figures = running.figures.lock().unwrap();
            // Each loss once (three drops past watch_held_mib between two reads are three).
            figures.overflows += losses.total();
            figures.last_overflow = Some(now_unix());
        }
        // Said at most once per LOSSES_SAID_EVERY, with every loss since the last line: a
        // user flooding the file system under a small watch_held_mib cannot fill the log.
        let said = {
            let mut unsaid = running.losses_unsaid.lock().unwrap();
            unsaid.kernel += losses.kernel;
            unsaid.held += losses.held;
            unsaid.queue_limit += losses.queue_limit;
            running
                .losses_said
                .now()
                .then(|| std::mem::take(&mut *unsaid))
        };
        if let Some(said) = said {
            warn!(
                "watching {}: events were lost ({}); the volume is rescanned",
                root.display(),
                loss_causes(said, running.limits.held_max)
            );
        }
        rescan::request(rebuilds, handle, running, "overflow");
    }
    // The writer's turn for the objects its spending window held back, once it has ended
    // (the writer says when; it sets the next time with its answer).
    let spending_turn = running
        .spending_due
        .lock()
        .unwrap()
        .is_some_and(|at| Instant::now() >= at);
    if batch.changes.is_empty() && !spending_turn {
        if !running.moved_on.lock().unwrap().is_empty() {
            let errors = retry_moved_on(running, handle, disk::Done::default());
            if !errors.is_empty() && running.failures.now() {
                warn!("watching {}: {}", root.display(), errors[0]);
            }
        }
        return;
    }
    tracing::trace!(volume = %root.display(), "changes: {:?}", batch.changes);
    let count = batch.changes.len() as u64;
    let oldest = batch.oldest.unwrap_or_else(Instant::now);
    running.figures.lock().unwrap().pending = count;
    // The last batch's creates whose path was stale go first, once: this batch's moves of
    // folders on their way take them along ([`crate::apply::watched`]).
    let carried = std::mem::take(&mut *running.unplaced.lock().unwrap());
    let carried_paths: std::collections::HashSet<PathBuf> = carried
        .iter()
        .filter_map(|c| match c {
            Change::Created { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect();
    let mut changes = carried;
    changes.extend(batch.changes);
    let changes = super::known::drop_known(running, handle, changes);
    // A burst's batch: the stamper waits until a while after its end (it may take long).
    let burst = changes.len() >= owed::OWE_FROM;
    if burst {
        *running.last_burst.lock().unwrap() = Some(Instant::now() + BURST_APPLYING);
    }
    let outcome = if changes.is_empty() && !spending_turn {
        // Nothing for the writer: what its window holds back stays due as it was.
        Some(crate::apply::watched::WatchedOutcome {
            deferred_until: *running.spending_due.lock().unwrap(),
            ..Default::default()
        })
    } else {
        // A flush waiting for this batch (or taking it itself): the burst is over or a client
        // asked, so the writer keeps its priority for it.
        let waited_for = by_barrier || *running.barriers_waiting.lock().unwrap() > 0;
        handle.ask(|tx| Job::Watch(changes, waited_for, tx))
    };
    if burst {
        *running.last_burst.lock().unwrap() = Some(Instant::now());
    }
    let lag = oldest.elapsed();
    let Some(mut outcome) = outcome else {
        running.figures.lock().unwrap().pending = 0;
        return; // the writer is gone: deskd is stopping
    };
    {
        let mut unplaced = running.unplaced.lock().unwrap();
        for change in &outcome.unplaced {
            let again =
                matches!(change, Change::Created { path, .. } if carried_paths.contains(path));
            if !again && unplaced.len() < MAX_UNPLACED {
                unplaced.push(change.clone());
            }
        }
    }
    report_spending(running, handle, &outcome);
    let now_work = owe_new_stamps(running, std::mem::take(&mut outcome.disk));
    let done = disk::apply(&handle.volume, &now_work);
    let errors = retry_moved_on(running, handle, done);
    {
        let mut figures = running.figures.lock().unwrap();
        figures.pending = 0;
        figures.batch(count, outcome.applied, lag);
    }
    debug!(
        volume = %root.display(),
        changes = count,
        applied = outcome.applied,
        ms = lag.as_millis() as u64,
        "watched changes applied"
    );
    let problems: Vec<&String> = outcome.failed.iter().chain(&errors).collect();
    if !problems.is_empty() && running.failures.now() {
        warn!(
            "watching {}: {} change(s) not applied as seen (e.g. {}); a rebuild puts it right",
            root.display(),
            problems.len(),
            problems[0]
        );
    }
    if let Some(why) = &outcome.refused {
        if !running.stopping.load(Ordering::SeqCst) {
            warn!(
                "watching {}: changes not applied: {why}; the volume is rescanned",
                root.display()
            );
            rescan::request(rebuilds, handle, running, "overflow");
        }
    } else if outcome.budget_repair {
        rescan::request(rebuilds, handle, running, "budget");
    } else if outcome.needs_repair {
        rescan::request(rebuilds, handle, running, "overflow");
    }
}

/// What the writer's count of new IDs per payer ([`crate::apply::spending`]) says after a
/// batch: a warning naming each payer first held back in the window, one audit line per payer
/// for a window that ended, and when the thread must give the writer its turn for the objects
/// held back.
fn report_spending(
    running: &Running,
    handle: &VolumeHandle,
    outcome: &crate::apply::watched::WatchedOutcome,
) {
    use crate::apply::spending::payer_text;
    let root = handle.volume.root();
    for (payer, budget, window) in &outcome.over_budget {
        warn!(
            "watching {}: the objects of {} reached the budget of {budget} new IDs in {} s \
             (watch_budget); their further new objects get theirs when a client asks for \
             them, or when they are tried again after the window (docs/security.md, \"IDs \
             cannot be burnt faster than files are kept\")",
            root.display(),
            payer_text(*payer),
            window.as_secs()
        );
    }
    *running.spending_due.lock().unwrap() = outcome.deferred_until;
    if outcome.refused.is_none() {
        running.figures.lock().unwrap().held_back = outcome.held_back;
    }
    if let Some(window) = &outcome.window {
        for user in &window.users {
            let held = if user.deferred > 0 {
                format!(
                    ", {} more new objects held back over the budget (tried again after it)",
                    user.deferred
                )
            } else {
                String::new()
            };
            crate::audit::log(
                &format!(
                    "{} (owner of objects the watcher saw)",
                    payer_text(user.uid)
                ),
                root,
                &format!(
                    "{} new ID{} in the last {} s{held}",
                    user.ids,
                    if user.ids == 1 { "" } else { "s" },
                    window.seconds
                ),
            );
        }
    }
}

/// The disk work of a batch to do now: all of it, except that a busy batch (at least
/// [`owed::OWE_FROM`] stamps) owes its stamps for later ([`super::owed`]) while there is room.
fn owe_new_stamps(running: &Running, work: Vec<DiskWork>) -> Vec<DiskWork> {
    let stamps = work
        .iter()
        .filter(|w| matches!(w, DiskWork::Stamp { .. }))
        .count();
    let mut owed = running.owed.lock().unwrap();
    if stamps < owed::OWE_FROM || !owed.has_room_for(stamps) {
        return work;
    }
    *running.last_burst.lock().unwrap() = Some(Instant::now());
    let now_work = work
        .into_iter()
        .filter(|w| match w {
            DiskWork::Stamp { id, .. } => {
                owed.owe(*id);
                false
            }
            _ => true,
        })
        .collect();
    running.owed_ready.notify_one();
    now_work
}

/// The stamper: writes owed stamps ([`super::owed`]) a share at a time, at the lowest CPU
/// priority of the system, from [`QUIET`] after the last batch that owed some, until the
/// watcher stops. So the resource files of a burst are
/// written with whatever CPU the programs making it leave, as soon as there is some; a barrier
/// pays what is left at its own priority. On a volume that never pauses for [`QUIET`], it
/// still pays for [`STARVED_SLICE`] every [`STARVED_AFTER`] it was held off: owed stamps are
/// paid at a bounded rate however busy the volume stays.
pub(crate) fn stamp_in_background(running: Arc<Running>, handle: Arc<VolumeHandle>) {
    // This thread only (Linux: the nice value is per thread); lowering needs no privilege.
    if let Err(e) = rustix::process::setpriority_process(None, 19) {
        debug!("the stamper keeps its priority: {e}");
    }
    let quiet = quiet();
    // Since when bursts have kept the stamper from paying (None: it is not held off).
    let mut held_off_since: Option<Instant> = None;
    // Whether this busy stretch's first slice was logged.
    let mut told = false;
    loop {
        {
            let owed = running.owed.lock().unwrap();
            if owed.is_empty() {
                // Held off from when stamps are owed again, not since an earlier burst.
                held_off_since = None;
            }
            let _owed = running
                .owed_ready
                .wait_while(owed, |o| {
                    o.is_empty() && !running.stopping.load(Ordering::SeqCst)
                })
                .unwrap();
        }
        if running.stopping.load(Ordering::SeqCst) {
            return;
        }
        // Not while a burst goes on: writing resource files creates as many inodes as the
        // program, in the same file system, and even at nice 19 that contention slowed it.
        let since = running
            .last_burst
            .lock()
            .unwrap()
            .map_or(quiet, |at| Instant::now().saturating_duration_since(at));
        if since < quiet {
            let held_off = held_off_since.get_or_insert_with(Instant::now).elapsed();
            if held_off < STARVED_AFTER {
                let owed = running.owed.lock().unwrap();
                let _ = running
                    .owed_ready
                    .wait_timeout_while(owed, (quiet - since).min(STARVED_AFTER - held_off), |_| {
                        !running.stopping.load(Ordering::SeqCst)
                    })
                    .unwrap();
                continue;
            }
            // The volume has not paused for STARVED_AFTER: pay a slice all the same, so
            // what a never-ending burst owes does not wait for its end.
            hold_stamper();
            let began = Instant::now();
            let mut paid = 0;
            while began.elapsed() < STARVED_SLICE && !running.stopping.load(Ordering::SeqCst) {
                let n = pay_owed(&running, &handle, owed::SHARE);
                if n == 0 {
                    break;
                }
                paid += n;
            }
            let left = running.owed.lock().unwrap().len();
            if !std::mem::replace(&mut told, true) {
                // Once per busy stretch: a million-file burst pays many slices.
                info!(
                    "watching {}: the stamper paid {paid} owed stamp(s) while the volume stays \
                     busy ({left} still owed; it pays a slice every {} s until it pauses)",
                    handle.volume.root().display(),
                    STARVED_AFTER.as_secs()
                );
            } else {
                debug!(volume = %handle.volume.root().display(), paid, left, "stamper slice");
            }
            held_off_since = Some(Instant::now());
            continue;
        }
        held_off_since = None;
        told = false;
        hold_stamper();
        pay_owed(&running, &handle, owed::SHARE);
    }
}

/// How long after the last batch that owed stamps the stamper begins paying them.
const QUIET: Duration = Duration::from_millis(250);
/// How long bursts may keep the stamper from paying before it pays a slice anyway.
const STARVED_AFTER: Duration = Duration::from_secs(2);
/// How long it pays then (shares of [`owed::SHARE`], the last one begun within it): at nice
/// 19, at most about a tenth of a core's time while a burst goes on, and only the CPU the
/// burst leaves.
const STARVED_SLICE: Duration = Duration::from_millis(100);
/// While a burst's batch is applied, the stamper waits as if it had ended this far ahead
/// (set back to its real end when it ends).
const BURST_APPLYING: Duration = Duration::from_secs(3600);

/// [`QUIET`], or with the `test-hooks` feature `DESKD_TEST_STAMPER_QUIET_MS` (a test sets
/// it to hours: the stamper then pays only as on a volume that never pauses).
fn quiet() -> Duration {
    #[cfg(feature = "test-hooks")]
    if let Some(ms) = std::env::var("DESKD_TEST_STAMPER_QUIET_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Duration::from_millis(ms);
    }
    QUIET
}

/// Test hook (`DESKD_TEST_HOLD_STAMPER_UNTIL=<file>`): the stamper pays nothing until `<file>`
/// exists, so a test sees what a barrier and a rebuild pay and what they leave owed.
#[cfg(feature = "test-hooks")]
fn hold_stamper() {
    static UNTIL: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let until =
        UNTIL.get_or_init(|| std::env::var_os("DESKD_TEST_HOLD_STAMPER_UNTIL").map(PathBuf::from));
    if let Some(until) = until.as_deref() {
        while !until.exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Without the `test-hooks` feature the hook is compiled out.
#[cfg(not(feature = "test-hooks"))]
fn hold_stamper() {}

/// Test hook (`DESKD_TEST_HOLD_WATCHER_UNTIL=<file>`): the watcher's thread reads nothing
/// until `<file>` exists (as when a batch takes long), so a test sees what the pump holds
/// meanwhile and what it drops past `watch_held_mib`.
#[cfg(feature = "test-hooks")]
fn hold_watcher(running: &Running) {
    static UNTIL: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let until =
        UNTIL.get_or_init(|| std::env::var_os("DESKD_TEST_HOLD_WATCHER_UNTIL").map(PathBuf::from));
    if let Some(until) = until.as_deref() {
        while !until.exists() && !running.stopping.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Without the `test-hooks` feature the hook is compiled out.
#[cfg(not(feature = "test-hooks"))]
fn hold_watcher(_: &Running) {}

/// Pay up to `share` owed stamps, each where the desktop says its object is now (an object
/// removed since needs none). Returns how many were taken.
pub(crate) fn pay_owed(running: &Running, handle: &VolumeHandle, share: usize) -> usize {
    let _paying = running.paying.lock().unwrap();
    let ids = {
        // Counted as owed (status) until written: taken out of `owed` under its lock and
        // counted in hand before that lock goes.
        let mut owed = running.owed.lock().unwrap();
        let ids = owed.take(share);
        running.in_hand.store(ids.len() as u64, Ordering::SeqCst);
        ids
    };
    struct Written<'a>(&'a std::sync::atomic::AtomicU64);
    impl Drop for Written<'_> {
        fn drop(&mut self) {
            self.0.store(0, Ordering::SeqCst);
        }
    }
    let _written = Written(&running.in_hand);
    if ids.is_empty() {
        return 0;
    }
    let work = running.with_reader(handle, |reader| {
        let reader = reader?;
        use deskd_db::Read;
        Some(
            ids.iter()
                .filter_map(|&id| {
                    let object = reader.get(id).ok()?;
                    let names = reader.path_of(id).ok()?;
                    Some(DiskWork::stamp_of(&names, &object))
                })
                .collect::<Vec<_>>(),
        )
    });
    let root = handle.volume.root();
    let Some(work) = work else {
        if running.failures.now() {
            warn!(
                "watching {}: {} resource file(s) of new objects not written (the desktop \
                 could not be read); the rescan at the watcher's next start writes them",
                root.display(),
                ids.len()
            );
        }
        return ids.len();
    };
    let done = disk::apply(&handle.volume, &work);
    let errors = retry_moved_on(running, handle, done);
    if !errors.is_empty() && running.failures.now() {
        warn!("watching {}: {}", root.display(), errors[0]);
    }
    ids.len()
}

#[cfg(test)]
mod gather_tests {
    use super::*;

    #[test]
    fn only_a_steady_streams_batches_wait_for_the_next() {
        let now = Instant::now();
        // A lone change (a user's mv, the polled lag) and an empty read: at once.
        assert_eq!(gather_until(0, now), None);
        assert_eq!(gather_until(1, now), None);
        assert_eq!(gather_until(GATHER_FROM - 1, now), None);
        // A stream's batch (1,000 renames a second gives about 25): the next after GATHER.
        assert_eq!(gather_until(GATHER_FROM, now), Some(now + GATHER));
        assert_eq!(gather_until(25, now), Some(now + GATHER));
        assert_eq!(gather_until(GATHER_UPTO, now), Some(now + GATHER));
        // A burst's backlog: at once.
        assert_eq!(gather_until(GATHER_UPTO + 1, now), None);
        // Well within the lag target (p99 100 ms) with the settling of a batch.
        assert!(GATHER + SETTLE < Duration::from_millis(100));
    }
}
