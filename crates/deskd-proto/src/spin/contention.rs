//! Whether other work waits for a CPU: the `load` rule's signal (`DESKD_SPIN=load`).
//!
//! [`busy`] samples the number of runnable threads (`/proc/loadavg`, at most every [`SAMPLE`]
//! per process) and says whether it exceeds the CPUs this process may use. Measured on 2 vCPUs
//! it helps a chain with a party that never polls but costs a pair that polls on both sides
//! its tail (docs/PERFORMANCE.md, "Polling under load"), so it is an override, not the default.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long one sample of the run queue stands for (readers of one process share it).
pub const SAMPLE: Duration = Duration::from_millis(2);

/// When the last sample was taken (ns since [`epoch`]; 0: never), and what it said.
static SAMPLED_AT: AtomicU64 = AtomicU64::new(0);
static BUSY: AtomicBool = AtomicBool::new(false);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The CPUs this process may run on (its affinity and cgroup quota).
fn cpus() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Whether more threads are runnable than this process has CPUs, i.e. some wait: then
/// polling would take a CPU others need. Sampled at most every [`SAMPLE`]; false when the
/// kernel does not say (no `/proc`).
pub fn busy() -> bool {
    let now = (epoch().elapsed().as_nanos() as u64).max(1);
    let at = SAMPLED_AT.load(Ordering::Relaxed);
    if at != 0 && now.saturating_sub(at) < SAMPLE.as_nanos() as u64 {
        return BUSY.load(Ordering::Relaxed);
    }
    // One reader samples; the others keep the last answer meanwhile.
    if SAMPLED_AT
        .compare_exchange(at, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return BUSY.load(Ordering::Relaxed);
    }
    let busy = std::fs::read("/proc/loadavg")
        .ok()
        .and_then(|text| runnable(&text))
        .is_some_and(|running| waiting(running, cpus()));
    BUSY.store(busy, Ordering::Relaxed);
    busy
}

/// The runnable threads in `/proc/loadavg` (`0.10 0.20 0.30 R/T LASTPID`: R, which counts
/// the reader itself).
pub fn runnable(loadavg: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(loadavg).ok()?;
    let field = text.split_ascii_whitespace().nth(3)?;
    field.split_once('/')?.0.parse().ok()
}

/// Whether `running` runnable threads (the asker among them) leave some waiting for one of
/// `cpus` CPUs.
pub fn waiting(running: usize, cpus: usize) -> bool {
    running > cpus
}
