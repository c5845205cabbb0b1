//! What a peer that is neither trusted nor a volume's admin (root, deskd's user, the volume
//! owner) learns of the volume's activity from `Status`, `Watch`, `Memory` and `Metrics`:
//! none of the figures that move with every change (objects, the ID counter, the WAL, the
//! watcher's counts, a rebuild's counts, the desktop's and name index's sizes; in metrics the
//! commits and batch sizes too). They are sent as [`WITHHELD`] (metrics leave their samples
//! out), which clients show as absent.
//!
//! They used to be rounded down to thousands (a hostile review of 2026-12-06, finding 7), but
//! rounding does not protect: any local user can move each of them by one at will (its own
//! files, comments), bring one to one below a step, and then see the next single change of
//! anyone's, in folders it may not list (hostile review of stop 41, finding 2). Figures that
//! move only on a timer would still tell "someone changed something this minute"; the figures
//! serve the admin's monitoring, so only the admin gets them (docs/security.md, "A volume's
//! activity figures: its admins' only").

use deskd_proto::{
    RebuildState, ServerMemory, VolumeMemory, VolumeStatus, VolumeWatch, WITHHELD, WITHHELD_ID,
};

/// A volume's status as such a peer sees it. What it needs to use the volume stays: served,
/// read-only and why, frozen, last flush, the check's result, a rebuild's phase.
pub(crate) fn status(s: &mut VolumeStatus) {
    s.objects = WITHHELD;
    s.last_id = WITHHELD_ID;
    s.wal_bytes = WITHHELD;
    if let Some(rebuild) = s.rebuild.as_mut() {
        rebuild_counts(rebuild);
    }
}

/// A rebuild's counts (objects walked, differences, a finished one's totals): the walk's count
/// is the volume's object count.
pub(crate) fn rebuild_counts(r: &mut RebuildState) {
    r.objects = WITHHELD;
    r.next = WITHHELD;
    if let Some(Ok(summary)) = r.finished.as_mut() {
        let c = &mut summary.counts;
        for n in [
            &mut c.objects,
            &mut c.directories,
            &mut c.new_ids,
            &mut c.renumbered,
            &mut c.repaired,
            &mut c.removed,
            &mut summary.differences,
            &mut summary.left,
        ] {
            *n = WITHHELD;
        }
    }
}

/// A volume's live tracking as such a peer sees it: the kind, why it is not the one asked for,
/// the overflows and whether a burst is deferred stay (what a user needs to know whether its
/// changes are followed). The last batch's lag would change with each batch, so it is given as
/// the 99th percentile over the last 1,000 (which the admin sees too).
pub(crate) fn watch(w: &mut VolumeWatch) {
    for n in [
        &mut w.events,
        &mut w.applied,
        &mut w.pending,
        &mut w.owed_stamps,
        &mut w.held_back,
        &mut w.queued_bytes,
        &mut w.queued_peak_bytes,
    ] {
        *n = WITHHELD;
    }
    w.lag_ms = w.lag_p99_ms;
    if let Some(rescan) = w.rescan.as_mut() {
        rescan.objects = WITHHELD;
        rescan.changed = WITHHELD;
    }
}

/// A volume's memory figures as such a peer sees them: the desktop's size, what of it is
/// mapped and resident, and the name index's heap move with the volume's changes (after a
/// flush the resident mapping was the desktop's size to the byte); the page cache limit and
/// the connections stay.
pub(crate) fn volume_memory(v: &mut VolumeMemory) {
    for n in [
        &mut v.desktop_bytes,
        &mut v.mapped,
        &mut v.mapped_resident,
        &mut v.name_index,
    ] {
        *n = WITHHELD;
    }
}

/// The process-wide memory figures as a peer that is not the server's admin (root, deskd's
/// user, a trusted peer) sees them: the resident, peak and mapped totals and the mapping
/// budget granted follow every volume's desktop; the budget's total, the connections and
/// the short readers stay.
pub(crate) fn server_memory(m: &mut ServerMemory) {
    for n in [
        &mut m.rss_anon,
        &mut m.rss_file,
        &mut m.vm_hwm,
        &mut m.mapped,
        &mut m.mapped_resident,
        &mut m.mmap_granted,
    ] {
        *n = WITHHELD;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_activity_figures_are_withheld_and_the_state_kept() {
        let mut s = VolumeStatus {
            objects: 112,
            last_id: 73_548,
            wal_bytes: 4_096,
            read_only: true,
            read_only_reason: Some("file system full".into()),
            ..Default::default()
        };
        status(&mut s);
        assert!(s.figures_withheld());
        assert_eq!((s.objects_shown(), s.last_id_shown()), (None, None));
        assert_eq!(s.wal_bytes, WITHHELD);
        assert!(s.read_only && s.read_only_reason.is_some());
        let mut w = VolumeWatch {
            kind: "fanotify".into(),
            events: 250_123,
            applied: 250_001,
            pending: 7,
            lag_ms: 11,
            lag_p99_ms: 40,
            overflows: 1,
            ..Default::default()
        };
        watch(&mut w);
        assert!(w.figures_withheld());
        assert_eq!(
            (w.applied, w.pending, w.lag_ms, w.overflows, w.kind.as_str()),
            (WITHHELD, WITHHELD, 40, 1, "fanotify")
        );
    }
}
