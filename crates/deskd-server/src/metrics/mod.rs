//! The server's figures in the Prometheus text format, for `GET /metrics` and `deskd metrics`.
//!
//! A scrape never waits for a writer: it reads what the writer publishes without its lock
//! (the commit count and batch sizes as atomics, the flush, freeze and check state under the
//! small state mutex the writer holds only to store a value), the connections' own request
//! figures ([`crate::figures`]), the name index's size for the object count, the rebuild job's
//! progress, and the ID counter through a read connection of its own (WAL readers never wait
//! for the writer). A freeze or a long rebuild leaves every one of these readable.
//!
//! What a peer is shown follows `deskd status`'s rule (docs/protocol.md, "What a local user
//! may see"): see [`View`].

mod text;

use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use deskd_db::{now_unix, Read};
use deskd_proto::shown;

use crate::figures::{self, Latencies, KINDS, LATENCY_BOUNDS_NS, NO_VOLUME};
use crate::shared::Shared;
use crate::volume::VolumeHandle;
use text::{Exposition, Type};

/// What the asker may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    /// Everything: root, a TCP client holding the token, an HTTP request showing the HTTP
    /// side's token.
    Full,
    /// A local user (not root), or an HTTP request without the token (`uid` None). As
    /// `Status` shows it other users' clients only as a count, it is shown the requests of its
    /// own uid only, and a volume's activity figures not at all ([`withhold`]), except on the
    /// volumes it administers (where `Status` shows it everything); the server-wide
    /// connections per transport (which `Status` does not give it) are left out.
    Peer { uid: Option<u32> },
}

/// A cheap, cloneable way to get the whole server's metrics text, for a thread of its own
/// (the HTTP listener): [`crate::Server::metrics`].
#[derive(Clone)]
pub struct MetricsSource {
    shared: Arc<Shared>,
}

impl MetricsSource {
    pub(crate) fn new(shared: Arc<Shared>) -> MetricsSource {
        MetricsSource { shared }
    }

    /// Every figure of every served volume, in the Prometheus text format (0.0.4): for a
    /// request that showed the admin token.
    pub fn text(&self) -> String {
        render(&self.shared, View::Full)
    }

    /// What a reader without the token gets (`http_auth = "actions"` lets any local user
    /// read `/metrics`): what a local user who administers no volume gets from the socket,
    /// without even its own requests (it has no uid here).
    pub fn text_for_anyone(&self) -> String {
        render(&self.shared, View::Peer { uid: None })
    }
}

/// What one volume shows, gathered before any family is written (a family's samples must
/// be contiguous).
struct VolumeFigures {
    label: String,
    handle: Arc<VolumeHandle>,
    objects: Option<u64>,
    last_id: Option<u32>,
    state: crate::writer::SharedState,
    wal_bytes: Option<u64>,
    clients: u64,
    rebuild: Option<deskd_proto::RebuildState>,
    batches: Option<figures::BatchSizes>,
    /// Transactions committed (`deskd_commits_total`).
    commits: Option<u64>,
    /// Whether the asker is the volume's admin (else [`withhold`] took its activity figures).
    admin: bool,
    /// Live tracking (issue 23); `kind` is `off` when the volume is not watched.
    watch: deskd_proto::VolumeWatch,
    /// A PostgreSQL volume's read cache (issue 28).
    read_cache: Option<crate::read_cache::CacheFigures>,
}

/// The text for `view`.
pub(crate) fn render(shared: &Shared, view: View) -> String {
    let mut volumes: Vec<VolumeFigures> = shared
        .volumes()
        .into_iter()
        .map(|handle| gather(shared, handle))
        .collect();
    if let View::Peer { uid } = view {
        // Root, deskd's own user and the volume's owner are its admins, as for status.
        let server = rustix::process::geteuid().as_raw();
        for v in volumes.iter_mut().filter(|v| {
            uid.is_none_or(|uid| uid != 0 && uid != server && uid != v.handle.owner_uid())
        }) {
            withhold(v);
        }
    }
    prune_readers(shared, &volumes);
    let mut out = Exposition::default();
    out.family(
        "deskd_build_info",
        Type::Gauge,
        "Always 1; the version label says which deskd runs.",
    );
    out.sample(
        "deskd_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1u64,
    );
    out.family(
        "deskd_start_time_seconds",
        Type::Gauge,
        "Unix time the server started.",
    );
    out.sample("deskd_start_time_seconds", &[], shared.metrics.started);
    if view == View::Full {
        let (local, tcp, in_process) = shared.clients.per_transport();
        out.family(
            "deskd_connections",
            Type::Gauge,
            "Open client connections, by transport.",
        );
        out.sample("deskd_connections", &[("transport", "unix")], local);
        out.sample("deskd_connections", &[("transport", "tcp")], tcp);
        // afpd's connections to the CNID listener inside `deskd serve`.
        out.sample(
            "deskd_connections",
            &[("transport", "netatalk")],
            in_process,
        );
    }
    per_volume(&mut out, &volumes);
    memory(&mut out, &volumes, view);
    requests(&mut out, shared, view, &volumes);
    out.finish()
}

/// A volume's figures as a local user who is not its admin sees them: none of those that move
/// with the volume's activity, their samples left out ([`crate::withheld`]). Not even rounded:
/// a user moves each of them one at a time at will (its own files and comments for the objects,
/// the ID counter, the commits and batches; a resolve of an ID never given for the read cache's
/// misses), so it can bring one to just below a step and then see a single change or resolve of
/// another user's (hostile review of stop 41, findings 1 and 2).
fn withhold(v: &mut VolumeFigures) {
    v.admin = false;
    v.objects = None;
    v.last_id = None;
    v.wal_bytes = None;
    crate::withheld::watch(&mut v.watch);
    v.batches = None;
    v.commits = None;
    v.read_cache = None;
    if let Some(rebuild) = v.rebuild.as_mut() {
        crate::withheld::rebuild_counts(rebuild);
    }
}

/// Read what a scrape shows of one volume.
fn gather(shared: &Shared, handle: Arc<VolumeHandle>) -> VolumeFigures {
    let label = String::from_utf8_lossy(handle.volume.root().as_os_str().as_bytes()).into_owned();
    let state = handle.state.lock().unwrap().clone();
    let (objects, last_id) = counter_and_objects(shared, &handle);
    VolumeFigures {
        label,
        objects,
        last_id,
        state,
        // A desktop in PostgreSQL has no WAL here (its `desktop_path` is no file).
        wal_bytes: Some(match handle.pg {
            Some(_) => 0,
            None => handle.writer.wal_pending_bytes(&handle.desktop_path),
        }),
        clients: shared.clients.of_volume_count(handle.index),
        rebuild: shared
            .rebuilds
            .current(&handle)
            .map(|job| job.state(u64::MAX)),
        batches: Some(handle.writer.figures().read()),
        commits: Some(handle.commits.load(std::sync::atomic::Ordering::Relaxed)),
        admin: true,
        watch: shared.watchers.status(&handle),
        read_cache: handle.pg.as_ref().map(|pg| pg.read_cache().figures()),
        handle,
    }
}

/// The object count (the name index's names and the root, or counted by the reader while
/// the index still loads) and the ID counter, through this volume's cached read connection.
fn counter_and_objects(shared: &Shared, handle: &VolumeHandle) -> (Option<u64>, Option<u32>) {
    let mut readers = shared.metrics.readers.lock().unwrap();
    let fresh =
        !matches!(readers.get(&handle.index), Some((opening, _)) if *opening == handle.opening);
    if fresh {
        match handle.open_unmapped_reader() {
            Ok(reader) => {
                readers.insert(handle.index, (handle.opening, reader));
            }
            Err(e) => {
                tracing::debug!(volume = %handle.volume.root().display(),
                    "metrics: cannot open a reader: {e}");
                readers.remove(&handle.index);
            }
        }
    }
    let reader = readers.get(&handle.index).map(|(_, r)| r);
    let last_id = reader
        .and_then(|r| r.meta("last_id").ok())
        .map(|v| v.unwrap_or(0) as u32);
    let objects = match handle.names.names() {
        Some(names) => Some(names as u64 + 1),
        None => reader.and_then(|r| r.stats().ok()).map(|s| s.objects),
    };
    (objects, last_id)
}

/// The memory figures of `deskd status` that cost no walk of the process's mappings
/// (`/proc/self/status`, the mapping budget, the name indexes): a scrape every few seconds
/// must not read `/proc/self/smaps`, whose walk cost the socket clients 2 % of their
/// throughput at one scrape per 100 ms (docs/PERFORMANCE.md). The per-mapping figures stay
/// in `deskd status`.
///
/// The resident, peak and granted figures follow every volume's desktop (a flush made the
/// mapped desktop its size to the byte: newcomer review of stop 42): for a peer's view their
/// samples are left out, as `deskd status` withholds them from all but the server's admins.
fn memory(out: &mut Exposition, volumes: &[VolumeFigures], view: View) {
    let kernel = crate::memory::kernel_counts();
    let budget = crate::mmap_budget::global();
    let full = view == View::Full;
    let process: [(&str, &str, Option<u64>); 6] = [
        (
            "deskd_memory_anonymous_bytes",
            "Anonymous resident memory (RssAnon): what the server really uses.",
            full.then_some(kernel.rss_anon),
        ),
        (
            "deskd_memory_file_resident_bytes",
            "Resident file-backed pages (RssFile), each mapping of a desktop counted again.",
            full.then_some(kernel.rss_file),
        ),
        (
            "deskd_memory_peak_resident_bytes",
            "Peak resident set (VmHWM) since the server started.",
            full.then_some(kernel.vm_hwm),
        ),
        (
            "deskd_mmap_total_bytes",
            "The most the read connections may map of the desktops together (mmap_total).",
            Some(budget.total()),
        ),
        (
            "deskd_mmap_granted_bytes",
            "What the read connections have been granted of mmap_total now.",
            full.then_some(budget.granted()),
        ),
        (
            "deskd_mmap_short_readers",
            "Read connections mapping less than their desktop (the budget is spent): they read \
             the rest with pread; raise mmap_total when this stays above 0.",
            Some(u64::from(budget.short())),
        ),
    ];
    for (name, help, value) in process {
        out.family(name, Type::Gauge, help);
        if let Some(value) = value {
            out.sample(name, &[], value);
        }
    }
    each_volume(
        out,
        volumes,
        "deskd_volume_name_index_bytes",
        Type::Gauge,
        "Heap held by the volume's in-memory name index (find).",
        |v| v.admin.then(|| crate::memory::name_index_bytes(&v.handle)),
    );
}

/// Close the read connections of volumes no longer served (or reopened).
fn prune_readers(shared: &Shared, volumes: &[VolumeFigures]) {
    shared
        .metrics
        .readers
        .lock()
        .unwrap()
        .retain(|index, (opening, _)| {
            volumes
                .iter()
                .any(|v| v.handle.index == *index && v.handle.opening == *opening)
        });
}

/// One gauge (or counter) family with a sample per volume where `value` has one.
fn each_volume<V: text::Value>(
    out: &mut Exposition,
    volumes: &[VolumeFigures],
    name: &str,
    kind: Type,
    help: &str,
    value: impl Fn(&VolumeFigures) -> Option<V>,
) {
    out.family(name, kind, help);
    for v in volumes {
        if let Some(value) = value(v) {
            out.sample(name, &[("volume", &v.label)], value);
        }
    }
}

fn per_volume(out: &mut Exposition, volumes: &[VolumeFigures]) {
    use Type::{Counter, Gauge};
    let now = now_unix();
    each_volume(
        out,
        volumes,
        "deskd_volume_objects",
        Gauge,
        "Objects registered in the volume's desktop (the root included).",
        |v| v.objects,
    );
    each_volume(
        out,
        volumes,
        "deskd_volume_ids_left",
        Gauge,
        "IDs the volume can still hand out before its 32-bit ID space runs out.",
        |v| v.last_id.map(deskd_db::ids::ids_left),
    );
    each_volume(
        out,
        volumes,
        "deskd_volume_read_only",
        Gauge,
        "1 when writes are refused (configured, read-only file system, or full disk).",
        |v| Some(v.handle.read_only()),
    );
    each_volume(
        out,
        volumes,
        "deskd_volume_clean_at_start",
        Gauge,
        "0 when the previous session ended without a clean shutdown.",
        |v| Some(v.state.clean_at_start),
    );
    let watched = |v: &VolumeFigures| v.watch.kind != "off";
    each_volume(
        out,
        volumes,
        "deskd_watch_events_total",
        Counter,
        "Changes made on the volume that its watcher reported (after coalescing).",
        |v| watched(v).then_some(v.watch.events).and_then(shown),
    );
    each_volume(
        out,
        volumes,
        "deskd_watch_lag_seconds",
        Gauge,
        "The last batch of watched changes: from its oldest event read to its commit (for a \
         reader who is not the volume's admin, the 99th percentile over the last 1,000 batches).",
        |v| watched(v).then_some(v.watch.lag_ms as f64 / 1000.0),
    );
    each_volume(
        out,
        volumes,
        "deskd_watch_overflows_total",
        Counter,
        "Times the watcher lost events (a rescan of the volume followed).",
        |v| watched(v).then_some(v.watch.overflows),
    );
    each_volume(
        out,
        volumes,
        "deskd_watch_owed_stamps",
        Gauge,
        "New objects whose resource file and mirror the watcher has not written yet.",
        |v| watched(v).then_some(v.watch.owed_stamps).and_then(shown),
    );
    each_volume(
        out,
        volumes,
        "deskd_watch_held_bytes",
        Gauge,
        "Bytes of events read from the kernel and not yet applied (fanotify).",
        |v| watched(v).then_some(v.watch.queued_bytes).and_then(shown),
    );
    each_volume(
        out,
        volumes,
        "deskd_watch_deferring",
        Gauge,
        "1 while the events held are a burst's, applied when it slows (within 30 s) or at a flush.",
        |v| watched(v).then_some(v.watch.deferring),
    );
    each_volume(
        out,
        volumes,
        "deskd_volume_clients",
        Gauge,
        "Open connections that have used the volume.",
        |v| Some(v.clients),
    );
    each_volume(
        out,
        volumes,
        "deskd_commits_total",
        Counter,
        "Transactions committed to the desktop (client batches and rebuild steps).",
        |v| v.commits,
    );
    each_volume(
        out,
        volumes,
        "deskd_read_cache_hits_total",
        Counter,
        "Resolves of a PostgreSQL volume answered from the server's memory.",
        |v| v.read_cache.map(|c| c.hits),
    );
    each_volume(
        out,
        volumes,
        "deskd_read_cache_misses_total",
        Counter,
        "Resolves of a PostgreSQL volume read from the database.",
        |v| v.read_cache.map(|c| c.misses),
    );
    each_volume(
        out,
        volumes,
        "deskd_read_cache_disk_mismatches_total",
        Counter,
        "Of the misses: a held row whose path on the disk was not its inode.",
        |v| v.read_cache.map(|c| c.disk_mismatches),
    );
    each_volume(
        out,
        volumes,
        "deskd_read_cache_rows",
        Gauge,
        "Rows of a PostgreSQL volume held in the server's memory.",
        |v| v.read_cache.map(|c| c.rows),
    );
    each_volume(
        out,
        volumes,
        "deskd_read_cache_paths",
        Gauge,
        "Folder paths of a PostgreSQL volume held in the server's memory.",
        |v| v.read_cache.map(|c| c.paths),
    );
    out.family(
        "deskd_commit_batch_requests",
        Type::Histogram,
        "Client requests per committed batch (group commit).",
    );
    let batch_bounds: Vec<f64> = figures::BATCH_BOUNDS.iter().map(|&b| b as f64).collect();
    for v in volumes {
        if let Some(batches) = &v.batches {
            out.histogram(
                "deskd_commit_batch_requests",
                &[("volume", &v.label)],
                &batch_bounds,
                &batches.buckets,
                batches.requests as f64,
            );
        }
    }
    each_volume(
        out,
        volumes,
        "deskd_wal_bytes",
        Gauge,
        "Bytes of the desktop's write-ahead log not yet checkpointed into .Desktop.",
        |v| v.wal_bytes,
    );
    each_volume(
        out,
        volumes,
        "deskd_last_flush_time_seconds",
        Gauge,
        "Unix time of the last complete checkpoint (beside the writes or a flush); 0 if none since start.",
        |v| Some(v.state.last_flush),
    );
    each_volume(
        out,
        volumes,
        "deskd_frozen_until_time_seconds",
        Gauge,
        "Unix time the current freeze ends; 0 when not frozen.",
        |v| Some(v.state.frozen_until.filter(|&t| t > now).unwrap_or(0)),
    );
    each_volume(
        out,
        volumes,
        "deskd_check_ok",
        Gauge,
        "1 when the start-up check found the desktop sound, 0 when it found problems; \
         absent while it runs.",
        |v| {
            v.state
                .check_finished
                .map(|_| v.state.check_problems.is_empty())
        },
    );
    each_volume(
        out,
        volumes,
        "deskd_check_problems",
        Gauge,
        "Problems the start-up check found (0 while it runs or after a repair).",
        |v| Some(v.state.check_problems.len() as u64),
    );
    each_volume(
        out,
        volumes,
        "deskd_check_time_seconds",
        Gauge,
        "Unix time the start-up check ended; absent while it runs.",
        |v| v.state.check_finished,
    );
    each_volume(
        out,
        volumes,
        "deskd_rebuild_running",
        Gauge,
        "1 while an online rebuild runs on the volume.",
        |v| Some(v.rebuild.as_ref().is_some_and(|r| r.finished.is_none())),
    );
    out.family(
        "deskd_rebuild_phase",
        Type::Gauge,
        "1 for the phase the running or last online rebuild is in (walking, planning, \
         applying, done, failed, stopped), and its mode (scan, repair, fresh).",
    );
    for v in volumes {
        if let Some(r) = &v.rebuild {
            // The mode tells a scan's differences (nothing repaired) from a repair's.
            let mode = match r.mode {
                deskd_proto::RebuildMode::Scan => "scan",
                deskd_proto::RebuildMode::Repair => "repair",
                deskd_proto::RebuildMode::Fresh => "fresh",
            };
            out.sample(
                "deskd_rebuild_phase",
                &[("volume", &v.label), ("phase", &r.phase), ("mode", mode)],
                1u64,
            );
        }
    }
    each_volume(
        out,
        volumes,
        "deskd_rebuild_objects_walked",
        Gauge,
        "Objects the running or last online rebuild walked in its current pass.",
        |v| v.rebuild.as_ref().and_then(|r| shown(r.objects)),
    );
    each_volume(
        out,
        volumes,
        "deskd_rebuild_differences",
        Gauge,
        "Differences the running or last online rebuild found so far.",
        |v| v.rebuild.as_ref().and_then(|r| shown(r.next)),
    );
    each_volume(
        out,
        volumes,
        "deskd_rebuild_start_time_seconds",
        Gauge,
        "Unix time the running or last online rebuild started.",
        |v| v.rebuild.as_ref().map(|r| r.started),
    );
}

/// The request latency histograms and error counts, by volume and kind.
fn requests(out: &mut Exposition, shared: &Shared, view: View, volumes: &[VolumeFigures]) {
    let owner_of = |vol: u32| {
        volumes
            .iter()
            .find(|v| v.handle.index == vol)
            .map(|v| v.handle.owner_uid())
    };
    let counts = |uid: Option<u32>, vol: u32| match view {
        View::Full => true,
        View::Peer { uid: asker } => {
            let admin = asker.is_some() && (asker == Some(0) || owner_of(vol) == asker);
            admin || (asker.is_some() && uid == asker)
        }
    };
    let sums = shared.clients.requests(counts);
    let label_of = |vol: u32| -> Option<&str> {
        if vol == NO_VOLUME {
            return Some("");
        }
        volumes
            .iter()
            .find(|v| v.handle.index == vol)
            .map(|v| v.label.as_str())
    };
    // In a stable order: volume handle, then kind; volumes no longer served are left out.
    let mut rows: Vec<(&str, u32, &str, &Latencies)> = sums
        .iter()
        .filter_map(|(&(vol, kind), cell)| Some((label_of(vol)?, vol, KINDS[kind as usize], cell)))
        .collect();
    rows.sort_by_key(|&(_, vol, kind, _)| (vol, kind));
    out.family(
        "deskd_request_duration_seconds",
        Type::Histogram,
        "Time from a request's arrival to its answer, by volume and request kind \
         (volume=\"\" for requests that name no single volume).",
    );
    let bounds: Vec<f64> = LATENCY_BOUNDS_NS
        .iter()
        .map(|&ns| ns as f64 / 1e9)
        .collect();
    for &(label, _, kind, cell) in &rows {
        out.histogram(
            "deskd_request_duration_seconds",
            &[("volume", label), ("kind", kind)],
            &bounds,
            &cell.buckets,
            cell.sum_ns as f64 / 1e9,
        );
    }
    out.family(
        "deskd_request_errors_total",
        Type::Counter,
        "Requests answered with an error, by volume and request kind.",
    );
    for &(label, _, kind, cell) in &rows {
        out.sample(
            "deskd_request_errors_total",
            &[("volume", label), ("kind", kind)],
            cell.errors,
        );
    }
}
