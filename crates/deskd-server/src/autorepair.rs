//! Automatic repair (`auto_repair = true`): when the start-up check of a volume's desktop
//! finds problems, the server starts an online repair of its own, as HELIOS rebuilds a
//! damaged desktop in the background while the volume stays served.
//!
//! No client polls such a job ([`rebuild::start`] runs it without a watchdog); this module's
//! thread waits for it, logs the outcome and checks the desktop again.

use std::sync::Arc;
use std::time::Duration;

use deskd_db::Read;
use deskd_proto::RebuildMode;
use tracing::{error, info, warn};

use crate::rebuild::{self, Registry};
use crate::volume::VolumeHandle;

/// How often the waiting thread looks whether the repair has ended.
const POLL: Duration = Duration::from_millis(200);

/// Wait, off the start-up path, for `handle`'s start-up check; when it failed and the volume
/// has `auto_repair` on (and is writable), repair the desktop online.
pub(crate) fn watch(registry: &Registry, handle: &Arc<VolumeHandle>) {
    let Some(check) = handle.take_check() else {
        return;
    };
    if !handle.config.auto_repair || handle.read_only() {
        return;
    }
    let registry = registry.clone();
    let handle = handle.clone();
    let _ = std::thread::Builder::new()
        .name("auto-repair".into())
        .spawn(move || {
            let problems = check.join().unwrap_or_default();
            if !problems.is_empty() {
                repair(&registry, &handle);
            }
        });
}

/// `auto_repair` turned on at a reload (SIGHUP): repair the desktop now if its start-up
/// check failed and no rebuild is running.
pub(crate) fn repair_if_check_failed(registry: &Registry, handle: &Arc<VolumeHandle>) {
    let failed = !handle.state.lock().unwrap().check_problems.is_empty();
    if !failed || handle.read_only() || registry.running(handle) {
        return;
    }
    let registry = registry.clone();
    let handle = handle.clone();
    let _ = std::thread::Builder::new()
        .name("auto-repair".into())
        .spawn(move || repair(&registry, &handle));
}

/// How long a repair waits for a rebuild already running (the watcher's start-up rescan).
const WAIT_FOR_OTHER: Duration = Duration::from_secs(120);

fn repair(registry: &Registry, handle: &Arc<VolumeHandle>) {
    let root = handle.volume.root().display().to_string();
    let began = std::time::Instant::now();
    while registry.running(handle) && began.elapsed() < WAIT_FOR_OTHER {
        std::thread::sleep(POLL);
    }
    let job = match rebuild::start(
        registry,
        handle,
        RebuildMode::Repair,
        None,
        false,
        None,
        "deskd (auto_repair)",
    ) {
        Ok(job) => job,
        Err(e) => {
            error!(
                "automatic repair of [{root}] could not start: {}",
                e.message
            );
            return;
        }
    };
    info!(volume = %root, job, "automatic repair started (auto_repair = true): the desktop check failed");
    let Some(current) = registry.current(handle) else {
        return;
    };
    while !current.is_finished() {
        std::thread::sleep(POLL);
    }
    let state = current.state(u64::MAX);
    match state.finished {
        Some(Ok(summary)) => {
            let again = handle.open_reader().and_then(|r| r.quick_check());
            match again {
                Ok(problems) if problems.is_empty() => {
                    handle.state.lock().unwrap().check_problems.clear();
                    info!(volume = %root, job, differences = summary.differences,
                        "automatic repair finished; the desktop check passes");
                }
                Ok(problems) => {
                    warn!(volume = %root, job, "automatic repair finished, but the desktop check still fails: {}; run `deskd rebuild -f {root}`", problems.join("; "));
                    handle.state.lock().unwrap().check_problems = problems;
                }
                Err(e) => {
                    warn!(volume = %root, job, "automatic repair finished; the desktop check could not run again: {e}")
                }
            }
        }
        Some(Err(e)) => warn!(volume = %root, job, "automatic repair ended: {e}"),
        None => {}
    }
}
