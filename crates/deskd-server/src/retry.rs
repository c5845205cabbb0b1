//! Volumes refused only because the database could not be reached to check them
//! ([`ServerError::PgUnchecked`], issue 28: an SQLite desktop with objects, no mark on the
//! root, and no database to say whether it holds a copy of the volume). They are tried again
//! with the PostgreSQL writer's reconnect back-off (0.5 s doubling to 5 s) by one thread per
//! server, and served, or refused for the real reason, once the database answers: no reload
//! is needed. `deskd status` lists each try's outcome as the other refusals.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::VolumeConfig;
use crate::error::ServerError;
use crate::shared::{Retry, Shared};
use crate::volume::VolumeHandle;
use crate::writer::pg::{RECONNECT_FIRST, RECONNECT_MAX};

/// Note `root` as not served for `error`; one refused only for want of the database is
/// tried again.
pub(crate) fn refuse(
    shared: &Arc<Shared>,
    root: &Path,
    error: &ServerError,
    config: &VolumeConfig,
) {
    if error.retried() {
        refused(shared, root, error.to_string(), config.clone());
    } else {
        shared.refuse(root, error.to_string(), None);
    }
}

/// Note `root` as not served for `why`, to be tried again with `config`.
pub(crate) fn refused(shared: &Arc<Shared>, root: &Path, why: String, config: VolumeConfig) {
    let retry = Retry {
        config,
        wait: RECONNECT_FIRST,
        next: Instant::now() + RECONNECT_FIRST,
    };
    shared.refuse(root, why, Some(retry));
    if !shared.retrying.swap(true, Ordering::SeqCst) {
        let shared = shared.clone();
        let started = std::thread::Builder::new()
            .name("pg-retry".into())
            .spawn(move || run(&shared));
        if let Err(e) = started {
            warn!("cannot start the thread that tries refused volumes again: {e}");
        }
    }
}

/// The thread: try each due volume, sleep until the next is due; end when none is left.
fn run(shared: &Arc<Shared>) {
    loop {
        if shared.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        let (due, next) = {
            let list = shared.not_served.lock().unwrap();
            let due: Vec<(PathBuf, Retry)> = list
                .iter()
                .filter_map(|n| n.retry.clone().map(|r| (n.root.clone(), r)))
                .filter(|(_, r)| r.next <= now)
                .collect();
            let next = list
                .iter()
                .filter_map(|n| n.retry.as_ref())
                .map(|r| r.next)
                .min();
            if next.is_none() {
                // Under the list's lock: a refusal noted after this starts a thread anew.
                shared.retrying.store(false, Ordering::SeqCst);
                return;
            }
            (due, next)
        };
        for (root, retry) in due {
            try_again(shared, &root, retry);
        }
        let wait = next
            .map(|n| n.saturating_duration_since(Instant::now()))
            .unwrap_or(RECONNECT_FIRST)
            .clamp(Duration::from_millis(20), RECONNECT_MAX);
        std::thread::sleep(wait);
    }
}

/// Open `root` again with the settings it was refused with, unless a reload or the shutdown
/// changed things meanwhile.
fn try_again(shared: &Arc<Shared>, root: &Path, retry: Retry) {
    // Whether the database answers, asked before the list's lock is taken: connecting to a
    // host that drops packets takes up to the connect timeout (10 s), which a reload or the
    // shutdown must not wait for.
    if let Some(options) = &retry.config.backend {
        if let Err(e) = deskd_pg::connect(options) {
            if e.is_unavailable() {
                later(shared, root, retry);
                return;
            }
        }
    }
    let _changing = shared.changing_list.lock().unwrap();
    if shared.shutting_down.load(Ordering::SeqCst) {
        return;
    }
    // Still refused, with these settings (a reload may have served it, or refused it anew).
    let current = shared
        .not_served
        .lock()
        .unwrap()
        .iter()
        .any(|n| n.root == root && n.retry.as_ref().is_some_and(|r| r.config == retry.config));
    if !current {
        return;
    }
    let canonical = std::fs::canonicalize(root).unwrap_or(root.to_path_buf());
    let served: Vec<PathBuf> = shared
        .volumes()
        .iter()
        .map(|h| h.volume.root().to_path_buf())
        .collect();
    if served.contains(&canonical) {
        shared.keep_refused(|r| r != root);
        return;
    }
    // The checks it passed when it was refused, against the volumes served now.
    if let Err(e) = crate::preflight::check_volume(&retry.config, &served) {
        warn!("{}: not served: {e}", root.display());
        shared.refuse(root, e.to_string(), None);
        return;
    }
    let index = shared.handle_for(&canonical);
    match VolumeHandle::open(index, retry.config.clone()) {
        Ok(handle) => {
            info!(
                "{}: now served (the database answered the check it was refused for)",
                handle.volume.root().display()
            );
            shared.keep_refused(|r| r != root && r != canonical);
            crate::autorepair::watch(&shared.rebuilds, &handle);
            crate::watch::start(&shared.watchers, &shared.rebuilds, &handle);
            shared.serve(index, handle);
        }
        Err(e) if e.retried() => later(shared, root, retry),
        Err(e) => {
            warn!("{}: not served: {e}", root.display());
            shared.refuse(root, e.to_string(), None);
        }
    }
}

/// Still unreachable: the same note (and its time), tried again after the back-off.
fn later(shared: &Shared, root: &Path, retry: Retry) {
    let mut list = shared.not_served.lock().unwrap();
    // Unless a reload served it or noted it anew meanwhile.
    let same = |n: &&mut crate::shared::NotServed| {
        n.root == root && n.retry.as_ref().is_some_and(|r| r.config == retry.config)
    };
    if let Some(n) = list.iter_mut().find(same) {
        let wait = (retry.wait * 2).min(RECONNECT_MAX);
        n.retry = Some(Retry {
            config: retry.config,
            wait,
            next: Instant::now() + retry.wait,
        });
    }
}
