//! The daemon loop: watch the service subtree with RFC 4533 content sync (refreshAndPersist,
//! cookie kept in COOKIE_FILE) or, when the server has no syncprov, by polling; hand every entry
//! the selfcare rule accepts to a worker; reconnect with the configured SLEEP/ATTEMPTS; on
//! SIGTERM finish the entries in hand and stop.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ldap3::controls::{
    parse_syncinfo, ControlType, EntryState, MakeCritical, RefreshMode, SyncInfo, SyncRequest,
    SyncState,
};
use ldap3::{Ldap, LdapError, Scope, SearchEntry};
use tokio::sync::{watch, Mutex, Semaphore};
use tokio::task::JoinSet;

use crate::account::{decide, entry_uid, single, Account, Attributes, Decision, EntryError, Mode};
use crate::config::{Config, EPOCH_CSN};
use crate::cookie;
use crate::directory::{self, RC_UNAVAILABLE_CRITICAL_EXTENSION};
use crate::provision::{Provisioner, WorkError};

/// Today's local date as YYYYMMDD.
pub fn today() -> u32 {
    chrono::Local::now()
        .format("%Y%m%d")
        .to_string()
        .parse()
        .unwrap_or(0)
}

/// The completion stamp written into sstProvisioningState.
pub fn utc_stamp() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
}

/// What the workers share.
struct Shared {
    config: Config,
    provisioner: Provisioner,
    dry_run: bool,
    slots: Semaphore,
    /// The write connection, opened on first use and again after it broke.
    writer: Mutex<Option<Ldap>>,
}

impl Shared {
    async fn writer(&self) -> Result<Ldap, LdapError> {
        let mut guard = self.writer.lock().await;
        if let Some(l) = guard.as_mut() {
            if !l.is_closed() {
                return Ok(l.clone());
            }
        }
        let l = directory::connect(&self.config.database).await?;
        *guard = Some(l.clone());
        Ok(l)
    }

    async fn drop_writer(&self) {
        *self.writer.lock().await = None;
    }

    /// Runs a write, reconnecting with the [Operation Mode] policy when the connection broke, so
    /// an slapd restart in the middle of the work does not strand the entry half-way.
    async fn write<F, Fut>(&self, what: &str, op: F) -> Result<(), LdapError>
    where
        F: Fn(Ldap) -> Fut,
        Fut: std::future::Future<Output = Result<(), LdapError>>,
    {
        let policy = self.config.reconnect;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match self.writer().await {
                Ok(l) => op(l).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if attempt < policy.attempts && is_connection_error(&e) => {
                    tracing::warn!(
                        "{what}: {e}; reconnecting in {} s (attempt {attempt} of {})",
                        policy.sleep.as_secs(),
                        policy.attempts
                    );
                    self.drop_writer().await;
                    tokio::time::sleep(policy.sleep).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Is this the connection failing rather than the server refusing the operation?
/// Tell systemd about a state change when it started us with `$NOTIFY_SOCKET` (else nothing).
pub fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

fn is_connection_error(e: &LdapError) -> bool {
    !matches!(e, LdapError::LdapResult { .. })
}

/// The daemon; `run` returns when told to stop or when LDAP stayed away too long.
pub struct Daemon {
    shared: Arc<Shared>,
    jobs: JoinSet<String>,
    /// DNs (lower case) being worked on: never two workers on one entry.
    in_flight: HashSet<String>,
    /// In a dry run, the requests (DN in lower case, mode) already shown. Nothing is written
    /// back, so the entry still asks after its dry run: the start-up scan and the sync
    /// stream's refresh would each show it, as would every later day's scan.
    dry_run_shown: HashSet<(String, Mode)>,
    cookie: Option<Vec<u8>>,
    cookie_dirty: bool,
    stop: watch::Receiver<bool>,
    scanned_on: u32,
}

impl Daemon {
    pub fn new(
        config: Config,
        dry_run: bool,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Daemon> {
        let cookie = cookie::load(&config.database.cookie_file)?;
        let provisioner = Provisioner::new(config.backup.clone(), dry_run);
        let slots = Semaphore::new(config.backup.workers);
        Ok(Daemon {
            shared: Arc::new(Shared {
                config,
                provisioner,
                dry_run,
                slots,
                writer: Mutex::new(None),
            }),
            jobs: JoinSet::new(),
            in_flight: HashSet::new(),
            dry_run_shown: HashSet::new(),
            cookie,
            cookie_dirty: false,
            stop,
            scanned_on: 0,
        })
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Connects (start-up policy, then the running policy once connected) and serves until
    /// stopped; finishes the entries in hand before returning.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut was_connected = false;
        let mut failures = 0u32;
        let result = loop {
            if self.stopping() {
                break Ok(());
            }
            let mut connected = false;
            // A session returns Ok only when told to stop.
            let Err(err) = self.session(&mut connected).await else {
                break Ok(());
            };
            if connected {
                was_connected = true;
                failures = 0;
            }
            failures += 1;
            let policy = if was_connected {
                self.shared.config.reconnect
            } else {
                self.shared.config.connect
            };
            if failures >= policy.attempts {
                // A server that answered but said no (a wrong password, TLS required) is not
                // "unreachable"; the administrator looks in a different place for each.
                let bind_refused = !connected && matches!(err, ldap3::LdapError::LdapResult { .. });
                break Err(anyhow::anyhow!(
                    "LDAP server {} {} after {} attempts: {err}",
                    self.shared.config.database.url,
                    if bind_refused {
                        format!(
                            "refused the bind as {}",
                            self.shared.config.database.admin_user
                        )
                    } else {
                        "unreachable".to_owned()
                    },
                    failures
                ));
            }
            let retry = format!(
                "LDAP {}: {err}; retrying in {} s (attempt {} of {})",
                self.shared.config.database.url,
                policy.sleep.as_secs(),
                failures + 1,
                policy.attempts
            );
            tracing::warn!("{retry}");
            notify_systemd(&[sd_notify::NotifyState::Status(&retry)]);
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(policy.sleep) => {}
                _ = stop.changed() => {}
            }
        };
        // Finish what is in hand, then keep the cookie.
        while let Some(done) = self.jobs.join_next().await {
            self.job_done(done);
        }
        self.save_cookie();
        if let Some(mut l) = self.shared.writer.lock().await.take() {
            let _ = l.unbind().await;
        }
        result
    }

    fn job_done(&mut self, done: Result<String, tokio::task::JoinError>) {
        match done {
            Ok(dn) => {
                self.in_flight.remove(&dn);
            }
            Err(e) => tracing::error!("a worker failed: {e}"),
        }
        if self.jobs.is_empty() {
            self.in_flight.clear();
            self.save_cookie();
        }
    }

    /// Keeps the newest cookie, but only once every entry received before it is finished: a
    /// restart then never skips an entry that was still being worked on.
    fn save_cookie(&mut self) {
        if !self.cookie_dirty || !self.jobs.is_empty() || self.shared.dry_run {
            return;
        }
        if let Some(c) = &self.cookie {
            match cookie::save(&self.shared.config.database.cookie_file, c) {
                Ok(()) => self.cookie_dirty = false,
                Err(e) => tracing::error!("{e}"),
            }
        }
    }

    fn new_cookie(&mut self, c: Option<Vec<u8>>) {
        if let Some(c) = c {
            if self.cookie.as_ref() != Some(&c) {
                self.cookie = Some(c);
                self.cookie_dirty = true;
            }
        }
        self.save_cookie();
    }

    /// The selfcare rule for one delivered entry; starts a worker when it asks for work now.
    fn consider(&mut self, dn: String, attrs: &Attributes) {
        let (mode, problem) = match decide(attrs, today()) {
            Decision::Work(mode) => (mode, None),
            Decision::Bad(mode, e) => (mode, Some(e)),
            Decision::Later(mode, date) => {
                tracing::debug!(
                    "{dn}: {} waits for its execution date {date}",
                    mode.requested()
                );
                return;
            }
            Decision::Ignore => return,
        };
        let key = dn.to_ascii_lowercase();
        if self.shared.dry_run && !self.dry_run_shown.insert((key.clone(), mode)) {
            tracing::debug!("{dn}: {} already shown in this dry run", mode.requested());
            return;
        }
        if !self.in_flight.insert(key.clone()) {
            tracing::debug!("{dn}: already being worked on");
            return;
        }
        let shared = self.shared.clone();
        self.jobs.spawn(async move {
            work_on(shared, dn, mode, problem).await;
            key
        });
    }

    async fn scan(&mut self, ldap: &mut Ldap) -> Result<(), LdapError> {
        let base = self.shared.config.database.service_subtree.clone();
        let entries = directory::pending(ldap, &base).await?;
        tracing::debug!("scan of {base}: {} entries ask for work", entries.len());
        for (dn, attrs) in entries {
            self.consider(dn, &attrs);
        }
        self.scanned_on = today();
        Ok(())
    }

    /// The sync search filter: SEARCH_FILTER with %entryCSN% replaced.
    fn sync_filter(&self) -> String {
        let csn = self
            .cookie
            .as_deref()
            .and_then(cookie::csn_of)
            .unwrap_or_else(|| EPOCH_CSN.to_owned());
        self.shared
            .config
            .database
            .search_filter
            .replace("%entryCSN%", &csn)
    }

    /// Serves one connection: Ok when told to stop, Err when the connection failed.
    async fn session(&mut self, connected: &mut bool) -> Result<(), LdapError> {
        let db = self.shared.config.database.clone();
        let mut ldap = directory::connect(&db).await?;
        *connected = true;
        tracing::info!(
            "connected to {} as {} ({})",
            db.url,
            db.admin_user,
            db.protection()
        );
        // Entries that asked while we were away, whose date has come, or that a lost cookie
        // would hide: one search for everything pending, then the live stream.
        self.scan(&mut ldap).await?;

        let request = SyncRequest {
            mode: RefreshMode::RefreshAndPersist,
            cookie: self.cookie.clone(),
            reload_hint: false,
        };
        let filter = self.sync_filter();
        let mut stream = ldap
            .clone()
            .with_controls(request.critical())
            .streaming_search(&db.service_subtree, Scope::Subtree, &filter, vec!["*"])
            .await?;
        // Connected, and every entry pending from before is in hand: ready (systemd
        // Type=notify; repeated after a reconnect, which systemd ignores).
        notify_systemd(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&format!(
                "watching {} on {}",
                db.service_subtree, db.url
            )),
        ]);
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    let id = stream.ldap_handle().last_id();
                    let _ = ldap.abandon(id).await;
                    let _ = ldap.unbind().await;
                    return Ok(());
                }
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => self.job_done(done),
                _ = tick.tick() => {
                    if today() != self.scanned_on {
                        tracing::info!("a new day: looking for entries whose date has come");
                        self.scan(&mut ldap).await?;
                    }
                }
                message = stream.next() => match message? {
                    Some(entry) if entry.is_intermediate() => match parse_syncinfo(entry) {
                        SyncInfo::NewCookie(c) => self.new_cookie(Some(c)),
                        SyncInfo::RefreshDelete { cookie, .. }
                        | SyncInfo::RefreshPresent { cookie, .. } => self.new_cookie(cookie),
                        SyncInfo::SyncIdSet { cookie, refresh_deletes, sync_uuids } => {
                            if refresh_deletes && !sync_uuids.is_empty() {
                                tracing::warn!(
                                    "{} entries were deleted from the directory while prov-backup \
                                     was not watching; their accounts, if any, were left in place",
                                    sync_uuids.len()
                                );
                            }
                            self.new_cookie(cookie)
                        }
                    },
                    Some(entry) if entry.is_ref() => {}
                    Some(entry) => {
                        let state = entry
                            .1
                            .iter()
                            .find(|c| matches!(c.0, Some(ControlType::SyncState)))
                            .map(|c| c.1.parse::<SyncState>());
                        let e = SearchEntry::construct(entry);
                        let cookie = match state {
                            Some(SyncState { state: EntryState::Delete, cookie, .. }) => {
                                tracing::warn!(
                                    "{}: deleted from the directory; its account, if any, was left in place \
                                     (set sstProvisioningMode to delete to remove an account)",
                                    e.dn
                                );
                                cookie
                            }
                            Some(SyncState { cookie, .. }) => {
                                self.consider(e.dn, &e.attrs);
                                cookie
                            }
                            None => {
                                self.consider(e.dn, &e.attrs);
                                None
                            }
                        };
                        self.new_cookie(cookie);
                    }
                    None => {
                        let result = stream.finish().await;
                        if result.rc == RC_UNAVAILABLE_CRITICAL_EXTENSION {
                            return self.poll(ldap).await;
                        }
                        return Err(LdapError::LdapResult { result });
                    }
                },
            }
        }
    }

    /// Without syncprov: search for pending entries every POLL_INTERVAL.
    async fn poll(&mut self, mut ldap: Ldap) -> Result<(), LdapError> {
        let every = self.shared.config.backup.poll_interval;
        tracing::warn!(
            "{} offers no content sync (syncprov overlay); polling every {} s instead",
            self.shared.config.database.url,
            every.as_secs()
        );
        notify_systemd(&[sd_notify::NotifyState::Status(&format!(
            "polling {} every {} s (no content sync)",
            self.shared.config.database.url,
            every.as_secs()
        ))]);
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    let _ = ldap.unbind().await;
                    return Ok(());
                }
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => self.job_done(done),
                _ = tokio::time::sleep(every) => self.scan(&mut ldap).await?,
            }
        }
    }
}

/// Reads the entry as it is now (not the copy that announced it) and does the disk work for
/// `mode`; None when the entry was deleted in the meantime.
async fn work_from_current_entry(
    shared: &Arc<Shared>,
    dn: &str,
    mode: Mode,
    problem: Option<EntryError>,
) -> Option<Result<(), WorkError>> {
    if let Some(p) = problem {
        return Some(Err(WorkError::Entry(p)));
    }
    let attrs = match shared.writer().await {
        Ok(mut l) => directory::read(&mut l, dn).await,
        Err(e) => Err(e),
    };
    let attrs = match attrs {
        Ok(Some(attrs)) => attrs,
        Ok(None) => return None,
        Err(e) => {
            return Some(Err(WorkError::Refused(format!(
                "cannot read the entry: {e}"
            ))))
        }
    };
    let sh = shared.clone();
    let dn = dn.to_owned();
    Some(
        tokio::task::spawn_blocking(move || do_work(&sh.provisioner, mode, &dn, &attrs))
            .await
            .unwrap_or_else(|e| Err(WorkError::Refused(format!("worker panicked: {e}")))),
    )
}

/// The work for one entry, start to end; every outcome is logged and written back.
async fn work_on(shared: Arc<Shared>, dn: String, mode: Mode, problem: Option<EntryError>) {
    let Ok(_slot) = shared.slots.acquire().await else {
        return;
    };
    if shared.dry_run {
        crate::log::dry_run(format_args!(
            "{dn}: set sstProvisioningMode {}",
            mode.running()
        ));
        match work_from_current_entry(&shared, &dn, mode, problem).await {
            Some(Ok(())) => crate::log::dry_run(format_args!(
                "{dn}: set sstProvisioningMode {}, sstProvisioningReturnValue 0, sstProvisioningState <UTC time>",
                mode.done()
            )),
            Some(Err(e)) => crate::log::dry_run(format_args!(
                "{dn}: would fail: {e}; set sstProvisioningReturnValue {}",
                e.return_value()
            )),
            None => crate::log::dry_run(format_args!("{dn}: no longer in the directory")),
        }
        return;
    }

    // The claim: if it cannot be written, leave the entry alone (the original's rule); it is
    // still "add/0" and the next scan picks it up.
    let claimed = match shared.writer().await {
        Ok(mut l) => directory::claim(&mut l, &dn, mode).await,
        Err(e) => Err(e),
    };
    match claimed {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!("{dn}: changed before it could be claimed; skipped");
            return;
        }
        Err(e) => {
            shared.drop_writer().await;
            tracing::error!(
                "{dn}: cannot write sstProvisioningMode {}: {e}; skipped",
                mode.running()
            );
            return;
        }
    }
    tracing::info!("{dn}: {}", mode.running());

    let Some(outcome) = work_from_current_entry(&shared, &dn, mode, problem).await else {
        tracing::warn!("{dn}: deleted from the directory while being claimed");
        return;
    };
    match outcome {
        Ok(()) => {
            let stamp = utc_stamp();
            let written = shared
                .write(&dn, |mut l| {
                    let (dn, stamp) = (dn.clone(), stamp.clone());
                    async move { directory::finish(&mut l, &dn, mode, &stamp).await }
                })
                .await;
            match written {
                Ok(()) => tracing::info!("{dn}: {} at {stamp}", mode.done()),
                Err(e) => tracing::error!(
                    "{dn}: {} on disk, but the entry could not be updated: {e}; it stays at {}",
                    mode.done(),
                    mode.running()
                ),
            }
        }
        Err(e) => {
            let rv = e.return_value();
            tracing::error!("{dn}: {} failed (return value {rv}): {e}", mode.requested());
            let written = shared
                .write(&dn, |mut l| {
                    let dn = dn.clone();
                    async move { directory::fail(&mut l, &dn, rv).await }
                })
                .await;
            if let Err(e) = written {
                tracing::error!("{dn}: cannot write sstProvisioningReturnValue {rv}: {e}");
            }
        }
    }
}

/// The disk work for one mode, from the entry's current attributes.
fn do_work(p: &Provisioner, mode: Mode, dn: &str, attrs: &Attributes) -> Result<(), WorkError> {
    match mode {
        Mode::Add => p.add(&Account::from_entry(dn, attrs)?),
        Mode::Modify => p.modify(&Account::from_entry(dn, attrs)?),
        Mode::Delete => {
            let uid = entry_uid(dn, attrs)?;
            let number = single(attrs, "uidNumber").and_then(|v| v.parse().ok());
            p.delete(&uid, number)
        }
    }
}
