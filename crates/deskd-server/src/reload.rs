//! What a SIGHUP changes in a running server (HELIOS `srvutil reconf desksrv`).
//!
//! Every setting of a reloaded configuration takes effect without a restart, except the TCP
//! address: timers and durability on the volume's writer, `read_only` by closing and reopening
//! the desktop under the same handle, volumes new in the file are opened, volumes gone from it
//! are closed cleanly and no longer served, and the TCP token file, `tcp_admin`,
//! `tcp_max_connections` and the connection limits (`max_connections`,
//! `max_connections_per_uid`, `frame_timeout`) are taken at once. A volume served read-only
//! because its file system was full is closed and opened again, writable if space came back
//! (also on a SIGHUP without a configuration file); so is one whose file system was remounted
//! read-write or read-only since it was opened (its temporary desktop, and the IDs only that
//! held, go with the old opening). A volume that is frozen (a backup may be copying its
//! desktop) or rebuilding online is not closed; the log says so, and the next reload after that
//! ends does it.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::info;

use crate::config::{Config, TcpConfig, VolumeConfig};
use crate::rebuild::Registry;
use crate::shared::Slot;
use crate::volume::VolumeHandle;
use crate::writer::Job;
use crate::Server;

/// Where a volume's configuration is found: its root as the server knows it (canonical).
fn canonical(v: &VolumeConfig) -> PathBuf {
    std::fs::canonicalize(&v.root).unwrap_or(v.root.clone())
}

/// Why a served volume cannot be closed now, if it cannot.
fn cannot_close(rebuilds: &Registry, handle: &VolumeHandle) -> Option<&'static str> {
    rebuilds
        .running(handle)
        .then_some("an online rebuild is running")
}

impl Server {
    /// SIGHUP: apply a reloaded configuration (`new`; None when there is no file to read),
    /// flush every volume that is not frozen, and re-read the TCP token file (a token that
    /// cannot be read keeps the old one). Returns the problems and notes, each also logged.
    pub fn reconfigure(&self, new: Option<&Config>) -> Vec<String> {
        let mut notes = Vec::new();
        // No volume refused for want of the database is opened by crate::retry meanwhile.
        let changing = self.shared.changing_list.lock().unwrap();
        if let Some(new) = new {
            self.reload_volumes(new, &mut notes);
            self.shared.limits.set(new.limits);
            crate::mmap_budget::global().set_total(new.mmap_total);
        } else {
            // No file to read: only volumes served read-only for want of space, or whose file
            // system was remounted, are opened again, with the settings they have.
            for handle in &self.shared.volumes() {
                if handle.worth_reopening() {
                    self.reopen(handle, &handle.config.clone(), &mut notes);
                }
            }
        }
        drop(changing);
        for handle in &self.shared.volumes() {
            if let Some(Err(e)) = handle.ask(Job::Flush) {
                // The writer's messages may already name the volume; name it once.
                let root = handle.volume.root().display().to_string();
                let why = e
                    .message
                    .strip_prefix(&format!("{root}: "))
                    .unwrap_or(&e.message);
                notes.push(format!("{root}: not flushed: {why}"));
            }
        }
        if self.shared.tcp.is_some() || new.is_some_and(|n| n.tcp.is_some()) {
            self.reload_tcp(new.map(|n| n.tcp.as_ref()), &mut notes);
        }
        for note in &notes {
            tracing::warn!("reconfigure: {note}");
        }
        // Openings closed by this reload may have left released lock descriptors nothing
        // holds open any more.
        crate::desktop_lock::close_unused_released();
        info!(
            "reconfigured: {}desktops flushed{}",
            if new.is_some() {
                "settings reloaded, "
            } else {
                ""
            },
            if self.shared.tcp.is_some() {
                ", token file read"
            } else {
                ""
            }
        );
        notes
    }

    /// Give each served volume its new settings, close those no longer configured, and open
    /// those new in the file.
    fn reload_volumes(&self, new: &Config, notes: &mut Vec<String>) {
        // A volume out of the configuration is no longer "not served" (status lists those
        // configured); the others are tried again below.
        self.shared
            .keep_refused(|r| new.volumes.iter().any(|v| v.root == r || canonical(v) == r));
        for handle in &self.shared.volumes() {
            let root = handle.volume.root();
            let Some(v) = new.volumes.iter().find(|v| canonical(v) == root) else {
                self.stop_serving(handle, notes);
                continue;
            };
            let old = &handle.config;
            if v.desktop_location != old.desktop_location {
                notes.push(format!(
                    "{}: desktop_location applies only to a volume that has no desktop yet; \
                     this one stays at {}",
                    root.display(),
                    handle.desktop_path.display()
                ));
            }
            // A volume served read-only for want of space is tried writable again; one whose
            // file system was remounted read-only (or back) is opened as it now is.
            let retry = handle.worth_reopening();
            // Another back end (or database) is another desktop: the volume is opened again.
            let moved = v.backend != old.backend;
            if (v.read_only != old.read_only || moved || retry) && self.reopen(handle, v, notes) {
                continue;
            }
            handle.ask(|done| Job::Retime(v.clone(), done));
            crate::watch::retune(&self.shared.watchers, &self.shared.rebuilds, handle, v);
            // Turned on: a desktop whose start-up check failed is repaired now.
            if v.auto_repair && !old.auto_repair {
                crate::autorepair::repair_if_check_failed(&self.shared.rebuilds, handle);
            }
        }
        // Volumes new in the configuration (or back in it) are opened now. Only this (the
        // signal) thread changes the list, so a handle stays free while the desktop opens
        // outside the lock.
        for v in &new.volumes {
            let root = canonical(v);
            if self
                .shared
                .volumes()
                .iter()
                .any(|h| h.volume.root() == root)
            {
                continue;
            }
            let served: Vec<PathBuf> = self
                .shared
                .volumes()
                .iter()
                .map(|h| h.volume.root().to_path_buf())
                .chain(
                    crate::preflight::canonical_roots(&new.volumes)
                        .into_iter()
                        .flatten(),
                )
                .collect();
            if let Err(e) = crate::preflight::check_volume(v, &served) {
                notes.push(format!("{}: not served: {e}", v.root.display()));
                self.shared.refuse(&v.root, e.to_string(), None);
                continue;
            }
            let index = self.shared.handle_for(&root);
            match VolumeHandle::open(index, v.clone()) {
                Ok(handle) => {
                    info!("{}: now served", handle.volume.root().display());
                    self.shared.keep_refused(|r| r != v.root && r != root);
                    crate::autorepair::watch(&self.shared.rebuilds, &handle);
                    crate::watch::start(&self.shared.watchers, &self.shared.rebuilds, &handle);
                    self.shared.serve(index, handle);
                }
                Err(e) => {
                    notes.push(format!("{}: not served: {e}", v.root.display()));
                    crate::retry::refuse(&self.shared, &v.root, &e, v);
                }
            }
        }
    }

    /// Close the desktop of `handle` cleanly, with requests for it waiting meanwhile. Returns
    /// false, with the slot served again, when it is frozen or rebuilding.
    fn close(&self, handle: &Arc<VolumeHandle>, notes: &mut Vec<String>, later: &str) -> bool {
        let root = handle.volume.root().display();
        // The watcher stops before the desktop closes, its rescan cancelled (the reopened
        // volume's start-up rescan finds what it did not apply); a refused close starts it
        // again.
        crate::watch::stop(&self.shared.watchers, &self.shared.rebuilds, handle);
        if let Some(why) = cannot_close(&self.shared.rebuilds, handle) {
            crate::watch::start(&self.shared.watchers, &self.shared.rebuilds, handle);
            notes.push(format!("{root}: {why}; {later}"));
            return false;
        }
        self.shared.set_slot(handle.index, Slot::Changing);
        match handle.ask(Job::Close) {
            Some(Ok(())) => {
                self.shared.closings.fetch_add(1, Ordering::SeqCst);
                true
            }
            Some(Err(why)) => {
                crate::watch::start(&self.shared.watchers, &self.shared.rebuilds, handle);
                self.shared.serve(handle.index, handle.clone());
                notes.push(format!("{root}: {why}; {later}"));
                false
            }
            // The writer is gone: the server is stopping.
            None => true,
        }
    }

    /// A volume taken out of the configuration: commit, close it cleanly and stop serving it.
    /// Requests naming its handle are then refused with `NoSuchVolume`.
    fn stop_serving(&self, handle: &Arc<VolumeHandle>, notes: &mut Vec<String>) {
        let later = "served until a reload after that ends";
        let root = handle.volume.root();
        notes.push(format!(
            "{}: no longer in the configuration",
            root.display()
        ));
        if self.close(handle, notes, later) {
            self.shared
                .set_slot(handle.index, Slot::Retired(root.to_path_buf()));
            info!("{}: desktop closed; no longer served", root.display());
        }
    }

    /// Close the volume and open it again with `new` under the same handle, for the settings
    /// only an opening applies (`read_only`). Returns false when it was not closed, so the
    /// old opening takes the other settings. When the volume cannot be opened with the new
    /// `read_only`, it is opened with the old one and the rest of the new settings.
    fn reopen(
        &self,
        handle: &Arc<VolumeHandle>,
        new: &VolumeConfig,
        notes: &mut Vec<String>,
    ) -> bool {
        let root = handle.volume.root().display().to_string();
        let later = "read_only changes at a reload after that ends";
        let began = std::time::Instant::now();
        if !self.close(handle, notes, later) {
            return false;
        }
        let closed = began.elapsed();
        let reopened = VolumeHandle::open(handle.index, new.clone()).or_else(|e| {
            notes.push(format!(
                "{root}: cannot open it with the new settings ({e}); the old ones stay"
            ));
            let kept = VolumeConfig {
                read_only: handle.config.read_only,
                backend: handle.config.backend.clone(),
                ..new.clone()
            };
            VolumeHandle::open(handle.index, kept)
        });
        match reopened {
            Ok(again) => {
                info!(
                    "{root}: reopened, {} (closed in {} ms, open again after {} ms)",
                    match (&again.read_only_reason, again.config.read_only) {
                        (Some(why), _) => format!("read-only: {why}"),
                        (None, true) => "read-only".into(),
                        (None, false) => "writable".into(),
                    },
                    closed.as_millis(),
                    began.elapsed().as_millis()
                );
                crate::autorepair::watch(&self.shared.rebuilds, &again);
                crate::watch::start(&self.shared.watchers, &self.shared.rebuilds, &again);
                self.shared.serve(handle.index, again);
            }
            Err(e) => {
                notes.push(format!("{root}: not served: {e}"));
                crate::retry::refuse(&self.shared, handle.volume.root(), &e, new);
                self.shared
                    .set_slot(handle.index, Slot::Retired(handle.volume.root().into()));
            }
        }
        true
    }

    /// The TCP settings of a reload (`new`: None when no file was read; Some(None) when the
    /// file has no TCP). The token file is read again either way.
    fn reload_tcp(&self, new: Option<Option<&TcpConfig>>, notes: &mut Vec<String>) {
        let Some(tcp) = &self.shared.tcp else {
            notes.push("TCP (listen) is turned on at the next start".into());
            return;
        };
        let token_file = match new {
            Some(None) => {
                notes.push("TCP (listen) is turned off at the next start".into());
                tcp.token_file.read().unwrap().clone()
            }
            Some(Some(new)) => {
                if Some(&new.listen) != self.tcp_listen.as_ref() {
                    notes.push(format!("listen: {} changes at the next start", new.listen));
                }
                tcp.admin.store(new.admin, Ordering::SeqCst);
                tcp.max_connections
                    .store(new.max_connections, Ordering::SeqCst);
                new.token_file.clone()
            }
            None => tcp.token_file.read().unwrap().clone(),
        };
        match deskd_proto::transport::read_server_token_file(&token_file) {
            Ok(token) => {
                *tcp.token.write().unwrap() = token;
                *tcp.token_file.write().unwrap() = token_file;
            }
            Err(e) => notes.push(format!("{e}; the previous token stays in force")),
        }
    }
}
