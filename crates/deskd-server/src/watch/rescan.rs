//! Rescans of a watched volume by the online repair (`deskd rebuild`'s repair mode, run by the
//! server): at every start of a watched volume (changes made while deskd was down), and after
//! events were lost (an overflow). The repair keeps IDs by the xattr mirror and dev/ino, as a
//! `deskd rebuild` does, and puts resource files and mirrors right.
//!
//! Rate-limited: one rescan per volume at a time; an overflow during one asks for one more
//! after it, at least [`RESCAN_GAP`] after its end, however many overflows came meanwhile.
//! Logged at info level: `watch rescan of ROOT started (start|overflow)` and `watch rescan of
//! ROOT finished: …`, which gives both the difference lines and the objects repaired, new and
//! removed (the job's audit lines' counts, summed over its passes).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deskd_db::now_unix;
use deskd_proto::{ErrorCode, RebuildMode, WatchRescan};
use tracing::{info, warn};

use super::Running;
use crate::rebuild::{self, Registry};
use crate::volume::VolumeHandle;

/// The least time between the end of one rescan and the start of the next.
pub(crate) const RESCAN_GAP: Duration = Duration::from_secs(2);
/// How long a rescan waits after another rebuild of the volume ended, before it starts.
const AFTER_ANOTHER: Duration = Duration::from_secs(3);
/// How often the rescan's thread looks at the repair (and, while another rebuild runs, waits).
const POLL: Duration = Duration::from_millis(100);

/// Whether a rescan runs, and which reason the next one has.
#[derive(Debug, Default)]
pub(crate) struct RescanState {
    running: bool,
    again: Option<&'static str>,
    /// The online rebuild job of the running rescan.
    job: Option<u64>,
}

/// Wait, at most `limit`, while a rescan of the watcher's volume runs (or waits to start).
pub(crate) fn wait(running: &Running, limit: Duration) {
    let state = running.rescans.lock().unwrap();
    drop(
        running
            .rescans_done
            .wait_timeout_while(state, limit, |s| s.running)
            .unwrap(),
    );
}

/// Whether a rescan runs, or waits to start after the running one.
pub(crate) fn is_running(running: &Running) -> bool {
    running.rescans.lock().unwrap().running
}

/// No rescan runs any more: tell [`wait`].
fn ended(running: &Running, state: &mut RescanState) {
    state.running = false;
    running.rescans_done.notify_all();
}

/// Stop the running rescan's repair (a reload closing the volume: the reopened volume's own
/// start-up rescan finds what it did not), waiting at most `limit` for it to end.
pub(crate) fn cancel(
    rebuilds: &Registry,
    handle: &VolumeHandle,
    running: &Running,
    limit: Duration,
) {
    let Some(job) = running.rescans.lock().unwrap().job else {
        return;
    };
    let Some(current) = rebuilds.current(handle).filter(|j| j.id == job) else {
        return;
    };
    current.cancel();
    let began = std::time::Instant::now();
    while !current.is_finished() && began.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The start-up rescan of a desktop that records no object but the root: there is no ID to
/// keep, so nothing is walked (what is on disk is registered as it changes or is asked for,
/// as without a watcher); logged and shown as a finished rescan of nothing.
pub(crate) fn nothing_to_keep(handle: &VolumeHandle, running: &Running) {
    let root = handle.volume.root().display().to_string();
    info!(target: "deskd", "watch rescan of {root} started (start)");
    let now = now_unix();
    running.figures.lock().unwrap().rescan = Some(WatchRescan {
        reason: "start".into(),
        running: false,
        started: now,
        finished: Some(now),
        ..WatchRescan::default()
    });
    info!(target: "deskd",
        "watch rescan of {root} finished: 0 objects, 0 differences repaired (start: a new \
         desktop has no ID to keep)");
}

/// Ask for a rescan of the volume for `reason` (`start`, `overflow`): started now on a thread
/// of its own, or after the running one.
pub(crate) fn request(
    rebuilds: &Registry,
    handle: &Arc<VolumeHandle>,
    running: &Arc<Running>,
    reason: &'static str,
) {
    {
        let mut state = running.rescans.lock().unwrap();
        if state.running {
            state.again = Some(reason);
            return;
        }
        state.running = true;
    }
    announce(running, reason);
    let (rebuilds, handle, mine) = (rebuilds.clone(), handle.clone(), running.clone());
    let spawned = std::thread::Builder::new()
        .name("watch-rescan".into())
        .spawn(move || {
            let running = mine;
            let mut reason = reason;
            loop {
                run(&rebuilds, &handle, &running, reason);
                let next = {
                    let mut state = running.rescans.lock().unwrap();
                    let next = state.again.take();
                    if next.is_none() || running.stopping.load(Ordering::SeqCst) {
                        ended(&running, &mut state);
                        state.again = None;
                        return;
                    }
                    next
                };
                std::thread::sleep(RESCAN_GAP);
                reason = next.unwrap_or("overflow");
                announce(&running, reason);
            }
        });
    if spawned.is_err() {
        ended(running, &mut running.rescans.lock().unwrap());
        warn!("cannot start a thread for the watch rescan");
    }
}

/// Status shows the rescan as running from the moment it is asked for.
fn announce(running: &Running, reason: &'static str) {
    running.figures.lock().unwrap().rescan = Some(WatchRescan {
        reason: reason.into(),
        running: true,
        started: now_unix(),
        ..WatchRescan::default()
    });
}

fn set(figures: &Mutex<super::figures::WatchFigures>, f: impl FnOnce(&mut WatchRescan)) {
    if let Some(rescan) = figures.lock().unwrap().rescan.as_mut() {
        f(rescan);
    }
}

/// One rescan: start the repair (waiting while another rebuild runs), follow it to its end.
fn run(rebuilds: &Registry, handle: &Arc<VolumeHandle>, running: &Running, reason: &'static str) {
    let root = handle.volume.root().display().to_string();
    info!(target: "deskd", "watch rescan of {root} started ({reason})");
    let mut waited = false;
    let job = loop {
        if running.stopping.load(Ordering::SeqCst) {
            set(&running.figures, |r| {
                r.running = false;
                r.error = Some("the volume was closed".into());
            });
            return;
        }
        // The volume keeps one job's state: after another job, its client gets the time to
        // read the end of it before this one takes its place.
        if waited && !rebuilds.running(handle) {
            std::thread::sleep(AFTER_ANOTHER);
        }
        match rebuild::start(
            rebuilds,
            handle,
            RebuildMode::Repair,
            None,
            false,
            None,
            "deskd (watch rescan)",
        ) {
            Ok(job) => {
                running.rescans.lock().unwrap().job = Some(job);
                break job;
            }
            // Another rebuild runs (an administrator's, or the automatic repair): after it.
            Err(e) if e.code == ErrorCode::Busy => {
                waited = true;
                std::thread::sleep(POLL);
            }
            Err(e) => {
                warn!(target: "deskd", "watch rescan of {root} could not start: {}", e.message);
                set(&running.figures, |r| {
                    r.running = false;
                    r.finished = Some(now_unix());
                    r.error = Some(e.message.clone());
                });
                return;
            }
        }
    };
    let Some(current) = rebuilds.current(handle).filter(|j| j.id == job) else {
        return;
    };
    while !current.is_finished() {
        let objects = current.state(u64::MAX).objects;
        set(&running.figures, |r| r.objects = objects);
        std::thread::sleep(POLL);
    }
    let state = current.state(u64::MAX);
    match state.finished {
        Some(Ok(summary)) => {
            // Two counts, each named: the difference lines (`rebuild -s`'s, several for one
            // object: its row, its resource file, its mirror), and the objects, as the job's
            // audit lines (`repaired X, new IDs Y, removed Z`, one per pass) count them; the
            // newcomer review of stop 40 could not tell why 662,553 "differences" were
            // 187,651 "repaired".
            let c = &summary.counts;
            info!(target: "deskd",
                "watch rescan of {root} finished: {} objects, {} differences repaired (the \
                 lines rebuild -s lists: one object can have several); by object, as the \
                 audit lines of rebuild job {job} count them: repaired {}, new IDs {} (of the \
                 repaired), removed {} ({reason})",
                state.objects, summary.differences, c.repaired, c.new_ids, c.removed);
            set(&running.figures, |r| {
                r.running = false;
                r.finished = Some(now_unix());
                r.objects = state.objects;
                r.changed = summary.differences;
            });
        }
        Some(Err(e)) => {
            warn!(target: "deskd", "watch rescan of {root} finished: failed: {e} ({reason})");
            set(&running.figures, |r| {
                r.running = false;
                r.finished = Some(now_unix());
                r.error = Some(e);
            });
        }
        None => {}
    }
}
