//! The writer applies a burst the watcher saw (an `rsync`, an unpacked archive, a program
//! creating files as fast as it can) at a lower CPU priority than the program making it.
//!
//! The desktop's part of a created file costs the server about as much CPU as the program's
//! own create, so whatever CPU the writer takes during a burst the program (and the kernel's
//! writeback of its files) loses on a machine of few cores: the creation rate with the watcher
//! on was two thirds of the rate without (docs/PERFORMANCE.md, "Live tracking"). Lowered, the
//! writer takes what the program leaves; the events it has not applied yet wait in the
//! watcher's memory (bounded, `deskd_watch`'s pump) and it catches up as soon as the burst
//! slows. Only where the writer can raise its priority again afterwards (CAP_SYS_NICE: as
//! root, which fanotify needs anyway): a client's request after the batch must not wait on a
//! writer left at the lower priority.

use rustix::process::{getpriority_process, setpriority_process};
use rustix::thread::{capabilities, CapabilitySet};

/// The nice value of the writer while it applies a burst.
const BURST_NICE: i32 = 10;

/// Changes in one watcher batch from which it is a burst (as for stamps owed).
pub(super) const BURST_CHANGES: usize = 64;

/// The writer's priority lowered until dropped.
pub(super) struct Lowered {
    before: i32,
}

impl Lowered {
    /// Lower the calling thread (the writer) for a burst, when it may raise itself again.
    pub(super) fn for_a_burst() -> Option<Lowered> {
        if !may_raise_again() {
            return None;
        }
        // `None`: the calling thread (Linux keeps the nice value per thread).
        let before = getpriority_process(None).ok()?;
        if before >= BURST_NICE {
            return None;
        }
        setpriority_process(None, BURST_NICE).ok()?;
        Some(Lowered { before })
    }
}

impl Drop for Lowered {
    fn drop(&mut self) {
        if let Err(e) = setpriority_process(None, self.before) {
            tracing::warn!("the writer could not take its priority back: {e}");
        }
    }
}

/// Whether this thread may lower its nice value again (CAP_SYS_NICE), asked once.
fn may_raise_again() -> bool {
    static MAY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MAY.get_or_init(|| {
        capabilities(None).is_ok_and(|c| c.effective.contains(CapabilitySet::SYS_NICE))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_lowers_the_thread_and_the_end_of_it_raises_it_again() {
        let before = getpriority_process(None).unwrap();
        let lowered = Lowered::for_a_burst();
        if may_raise_again() && before < BURST_NICE {
            assert!(lowered.is_some());
            assert_eq!(getpriority_process(None).unwrap(), BURST_NICE);
        } else {
            assert!(lowered.is_none());
        }
        drop(lowered);
        assert_eq!(getpriority_process(None).unwrap(), before);
    }
}
