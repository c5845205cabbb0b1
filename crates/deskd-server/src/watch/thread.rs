//! The watcher thread of one volume: reads a batch of changes, has the volume's writer apply
//! it in one transaction ([`crate::writer::Job::Watch`]), then does what the disk needs
//! ([`super::disk`]) and counts it ([`super::figures`]). The barrier of `deskd flush` takes
//! the same turn ([`process`] under the source's lock), so every change read before it is
//! applied, on disk and in the desktop, before the flush.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deskd_db::now_unix;
use deskd_watch::Batch;
use tracing::{debug, error, warn};

use super::{disk, rescan, Running};
use crate::limits::RateLimited;
use crate::rebuild::Registry;
use crate::volume::VolumeHandle;
use crate::writer::Job;

/// The longest one read waits for a first change: how long a barrier waits for its turn at
/// worst, and how often an idle watcher wakes.
pub(crate) const WAIT: Duration = Duration::from_millis(50);

/// Read and apply batches until the watcher is stopped or fails.
pub(crate) fn run(running: Arc<Running>, handle: Arc<VolumeHandle>, rebuilds: Registry) {
    let root = handle.volume.root().display().to_string();
    let failures = RateLimited::new(Duration::from_secs(10));
    loop {
        if running.stopping.load(Ordering::SeqCst) {
            return;
        }
        {
            let mut source = running.source.lock().unwrap();
            let Some(source) = source.as_mut() else {
                return;
            };
            match source.next_batch(WAIT) {
                Ok(batch) => process(&running, &handle, &rebuilds, batch, &failures),
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
        while running.barrier_waiting.load(Ordering::SeqCst) > 0
            && !running.stopping.load(Ordering::SeqCst)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Apply one batch: overflow first (a rescan), then the changes through the writer, then the
/// disk work. Called with the source's lock held.
pub(crate) fn process(
    running: &Arc<Running>,
    handle: &Arc<VolumeHandle>,
    rebuilds: &Registry,
    batch: Batch,
    failures: &RateLimited,
) {
    let root = handle.volume.root();
    if batch.overflow {
        {
            let mut figures = running.figures.lock().unwrap();
            figures.overflows += 1;
            figures.last_overflow = Some(now_unix());
        }
        warn!(
            "watching {}: events were lost (queue overflow); the volume is rescanned",
            root.display()
        );
        rescan::request(rebuilds, handle, running, "overflow");
    }
    if batch.changes.is_empty() {
        return;
    }
    let count = batch.changes.len() as u64;
    let oldest = batch.oldest.unwrap_or_else(Instant::now);
    running.figures.lock().unwrap().pending = count;
    let outcome = handle.ask(|tx| Job::Watch(batch.changes, tx));
    let lag = oldest.elapsed();
    let Some(outcome) = outcome else {
        running.figures.lock().unwrap().pending = 0;
        return; // the writer is gone: deskd is stopping
    };
    let errors = disk::apply(&handle.volume, &outcome.disk);
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
    if !problems.is_empty() && failures.now() {
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
    } else if outcome.too_large {
        rescan::request(rebuilds, handle, running, "overflow");
    }
}
