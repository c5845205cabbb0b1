//! What `deskd status` shows of a volume's live tracking (issue 23): the `watch` object of
//! `--json`, and one line of plain text.

use deskd_proto::{shown, VolumeWatch};

/// The volume's entry among `all` (None: a server that predates live tracking).
fn of(all: Option<&[VolumeWatch]>, vol: u32) -> Option<&VolumeWatch> {
    all?.iter().find(|w| w.vol == vol)
}

/// The `watch` object of `deskd status --json` (null when the server does not say).
pub fn json(all: Option<&[VolumeWatch]>, vol: u32) -> serde_json::Value {
    let Some(w) = of(all, vol) else {
        return serde_json::Value::Null;
    };
    serde_json::json!({
        "kind": w.kind,
        "note": w.note,
        // Null when the server withheld them (not the volume's admin: docs/security.md).
        "events": shown(w.events),
        "applied": shown(w.applied),
        "pending": shown(w.pending),
        "lag_ms": w.lag_ms,
        "lag_p99_ms": w.lag_p99_ms,
        "overflows": w.overflows,
        "last_overflow": w.last_overflow,
        "owed_stamps": shown(w.owed_stamps),
        "held_back": shown(w.held_back),
        "queued_bytes": shown(w.queued_bytes),
        "queued_peak_bytes": shown(w.queued_peak_bytes),
        "deferring": w.deferring,
        "rescan": w.rescan.as_ref().map(|r| serde_json::json!({
            "reason": r.reason,
            "running": r.running,
            "started": r.started,
            "finished": r.finished,
            "objects": shown(r.objects),
            "changed": shown(r.changed),
            "error": r.error,
        })),
    })
}

/// `  watch:        fanotify, 120 events (118 applied), lag 3 ms (p99 9 ms), 0 overflows,
/// rescan (start) finished: 5000 objects, 2 differences repaired`, with the stamps owed, the new
/// objects held back, the events held (a deferred burst's said as such) and the changes being
/// applied when there are any.
pub fn line(all: Option<&[VolumeWatch]>, vol: u32) -> Option<String> {
    let w = of(all, vol)?;
    if w.kind == "off" {
        let why = w.note.as_deref().unwrap_or("not watched");
        return Some(format!("  watch:        off ({why})"));
    }
    let note = w
        .note
        .as_ref()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    let overflows = format!(
        "{} overflow{}",
        w.overflows,
        if w.overflows == 1 { "" } else { "s" }
    );
    if w.figures_withheld() {
        // The counts are the volume's admin's; what tells a user whether its changes are
        // followed stays.
        let mut out = format!(
            "  watch:        {}{note}, lag p99 {} ms, {overflows}",
            w.kind, w.lag_p99_ms
        );
        if w.deferring {
            out.push_str(", a burst held, applied when it slows (within 30 s) or at a flush");
        }
        if let Some(r) = &w.rescan {
            out.push_str(&match (r.running, &r.error) {
                (true, _) => format!(", rescan ({}) running", r.reason),
                (false, Some(e)) => format!(", rescan ({}) failed: {e}", r.reason),
                (false, None) => format!(", rescan ({}) finished", r.reason),
            });
        }
        return Some(out);
    }
    let mut out = format!(
        "  watch:        {}{note}, {} events ({} applied), lag {} ms (p99 {} ms), {overflows}",
        w.kind, w.events, w.applied, w.lag_ms, w.lag_p99_ms,
    );
    if w.owed_stamps > 0 {
        out.push_str(&format!(
            ", {} resource file(s) and mirror(s) owed",
            w.owed_stamps
        ));
    }
    if w.held_back > 0 {
        out.push_str(&format!(", {} new object(s) held back", w.held_back));
    }
    // Not applied yet: without these the line looks caught up while a burst is held (finding
    // 5 of the stop-41 review).
    let held_mib = w.queued_bytes as f64 / 1_048_576.0;
    if w.deferring {
        out.push_str(&format!(
            ", a burst: {held_mib:.1} MiB of events held, applied when it slows (within 30 s) \
             or at a flush"
        ));
    } else if w.queued_bytes > 0 {
        out.push_str(&format!(", {held_mib:.1} MiB of events held unread"));
    }
    if w.pending > 0 {
        out.push_str(&format!(", {} change(s) being applied", w.pending));
    }
    if let Some(r) = &w.rescan {
        out.push_str(&match (r.running, &r.error) {
            (true, _) => format!(
                ", rescan ({}) running: {} objects so far",
                r.reason, r.objects
            ),
            (false, Some(e)) => format!(", rescan ({}) failed: {e}", r.reason),
            (false, None) => format!(
                ", rescan ({}) finished: {} objects, {} differences repaired",
                r.reason, r.objects, r.changed
            ),
        });
    }
    Some(out)
}

/// What `deskd flush` says of the stamps still owed after it (nothing when none are).
pub fn owed_after_flush(all: &[VolumeWatch]) -> Option<String> {
    let owed: u64 = all.iter().filter_map(|w| shown(w.owed_stamps)).sum();
    (owed > 0).then(|| {
        format!(
            "{owed} resource file(s) and mirror(s) of new objects still owed: every object has \
             its ID in the desktop, and these are written in the background (deskd status \
             shows how many are left; a rebuild writes them first)"
        )
    })
}

/// How long `deskd flush` waits before it says what it waits for, and then how often.
const PROGRESS_AFTER: std::time::Duration = std::time::Duration::from_secs(2);
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// What a flush still waits for: the watcher's batch being applied, the events it holds
/// unread, the stamps owed (None when nothing is left of the watcher's work).
pub fn flush_waits_for(all: &[VolumeWatch]) -> Option<String> {
    // A volume whose figures the server withheld (one the asker does not administer, so not
    // one it flushes) counts for nothing.
    let pending: u64 = all.iter().filter_map(|w| shown(w.pending)).sum();
    let held: u64 = all.iter().filter_map(|w| shown(w.queued_bytes)).sum();
    let owed: u64 = all.iter().filter_map(|w| shown(w.owed_stamps)).sum();
    if pending == 0 && held == 0 {
        // The backlog is applied: what is left is the 2 s of owed stamps and the checkpoint.
        return (owed > 0).then(|| {
            format!(
                "flush: the watcher's changes are applied; writing owed resource files for 2 s \
                 at most ({owed} owed), then the checkpoint (docs/deskd.md, \"deskd flush\")"
            )
        });
    }
    Some(format!(
        "flush: waiting for the watcher's backlog: {pending} change(s) being applied, {:.1} MiB \
         of events held unread; {owed} resource file(s) owed (docs/deskd.md, \"deskd flush\")",
        held as f64 / 1_048_576.0
    ))
}

/// The progress lines of a flush (on stderr), from another connection's status, while the
/// flush request waits.
pub struct FlushProgress {
    done: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FlushProgress {
    /// Ask `status` for the watcher's figures after [`PROGRESS_AFTER`], then every
    /// [`PROGRESS_EVERY`], until [`FlushProgress::stop`].
    pub fn start(status: impl Fn() -> Option<Vec<VolumeWatch>> + Send + 'static) -> Self {
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut next = PROGRESS_AFTER;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(next) {
                if let Some(line) = status().as_deref().and_then(flush_waits_for) {
                    eprintln!("{line}");
                }
                next = PROGRESS_EVERY;
            }
        });
        FlushProgress {
            done: Some(done),
            thread: Some(thread),
        }
    }

    /// The flush answered: no more lines.
    pub fn stop(mut self) {
        drop(self.done.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deskd_proto::WITHHELD;

    fn withheld(vol: u32) -> VolumeWatch {
        VolumeWatch {
            vol,
            kind: "fanotify".into(),
            events: WITHHELD,
            applied: WITHHELD,
            pending: WITHHELD,
            owed_stamps: WITHHELD,
            held_back: WITHHELD,
            queued_bytes: WITHHELD,
            queued_peak_bytes: WITHHELD,
            lag_ms: 40,
            lag_p99_ms: 40,
            ..Default::default()
        }
    }

    /// A volume whose counts the server withheld (one the asker does not administer) shows
    /// them as absent, and counts for nothing in a flush's sums (it would overflow them).
    #[test]
    fn withheld_counts_are_absent_and_left_out_of_the_sums() {
        let mine = VolumeWatch {
            vol: 1,
            kind: "fanotify".into(),
            pending: 3,
            owed_stamps: 5,
            ..Default::default()
        };
        let all = [mine, withheld(2)];
        let line = line(Some(&all), 2).unwrap();
        assert_eq!(line, "  watch:        fanotify, lag p99 40 ms, 0 overflows");
        let json = json(Some(&all), 2);
        assert!(
            json["events"].is_null() && json["owed_stamps"].is_null(),
            "{json}"
        );
        assert_eq!(json["kind"], "fanotify");
        let waits = flush_waits_for(&all).unwrap();
        assert!(
            waits.contains("3 change(s)") && waits.contains("5 resource"),
            "{waits}"
        );
        assert!(owed_after_flush(&all).unwrap().starts_with("5 resource"));
        assert_eq!(owed_after_flush(&[withheld(3)]), None);
    }
}
