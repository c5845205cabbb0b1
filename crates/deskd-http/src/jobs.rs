//! The page's long actions (rebuild -s, repair rebuild, backup) as jobs: each runs on a thread
//! of its own (a few at most), and the page polls `GET /api/jobs/<id>` for its progress, its
//! difference lines and its outcome. Finished jobs are kept (the last [`KEEP_FINISHED`]) so an
//! outcome can still be read after the page reloads.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deskd_proto::{RebuildMode, RebuildState};
use serde::Serialize;

use crate::backup_dir::BackupDir;
use crate::control::{Control, RebuildRun};

/// Jobs running at once; one more is refused (429) rather than queued.
pub const MAX_RUNNING: usize = 4;
/// Finished jobs remembered.
const KEEP_FINISHED: usize = 32;
/// Difference lines kept per job; the rest are counted (`lines_dropped`), and the job's
/// total stays right (`differences`).
const MAX_LINES: usize = 10_000;
/// How often a rebuild job asks the server for news.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    RebuildCheck,
    RebuildRepair,
    Backup,
}

impl JobKind {
    pub fn name(self) -> &'static str {
        match self {
            JobKind::RebuildCheck => "rebuild-check",
            JobKind::RebuildRepair => "rebuild-repair",
            JobKind::Backup => "backup",
        }
    }
}

/// One difference a rebuild reported.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub kind: String,
    pub path: String,
    pub detail: String,
}

/// A job as `GET /api/jobs/<id>` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: u64,
    pub action: &'static str,
    pub volume: String,
    /// Unix time it started.
    pub started: i64,
    /// `starting`, the rebuild's phase (`walking`, `planning`, `applying`), `copying`, then
    /// `done` or `failed`.
    pub phase: String,
    pub pass: u32,
    /// Objects walked in this pass (rebuilds).
    pub objects: u64,
    /// Pages copied and in all (backups).
    pub pages_done: u64,
    pub pages_total: u64,
    /// Difference lines, from the poll's `from` on.
    pub lines: Vec<Line>,
    /// Number of the line after the last one kept.
    pub next: u64,
    /// Lines not kept past [`MAX_LINES`].
    pub lines_dropped: u64,
    pub finished: bool,
    /// Set when finished: whether it succeeded.
    pub ok: Option<bool>,
    /// Set when finished: the outcome in words (totals, or why it failed).
    pub outcome: Option<String>,
    /// Differences found (rebuilds, when finished).
    pub differences: Option<u64>,
    /// The file written (backups).
    pub backup_file: Option<String>,
}

impl Job {
    /// The job's end in the log (the HTTP side's audit line, with its start's).
    fn log_end(&self) {
        tracing::info!(
            "http job {}: {} on {} ended: {}",
            self.id,
            self.action,
            self.volume,
            self.outcome.as_deref().unwrap_or("?")
        );
    }

    fn new(id: u64, kind: JobKind, volume: String) -> Job {
        Job {
            id,
            action: kind.name(),
            volume,
            started: now(),
            phase: "starting".into(),
            pass: 0,
            objects: 0,
            pages_done: 0,
            pages_total: 0,
            lines: Vec::new(),
            next: 0,
            lines_dropped: 0,
            finished: false,
            ok: None,
            outcome: None,
            differences: None,
            backup_file: None,
        }
    }

    fn finish(&mut self, result: Result<String, String>) {
        self.finished = true;
        self.phase = if result.is_ok() { "done" } else { "failed" }.into();
        self.ok = Some(result.is_ok());
        self.outcome = Some(result.unwrap_or_else(|e| e));
    }

    /// A copy with the lines from `from` on only.
    fn view(&self, from: u64) -> Job {
        let kept_from = self.next - self.lines.len() as u64;
        let skip = from.saturating_sub(kept_from).min(self.lines.len() as u64) as usize;
        Job {
            lines: self.lines[skip..].to_vec(),
            ..self.clone_without_lines()
        }
    }

    fn clone_without_lines(&self) -> Job {
        // The fields not named here are Copy, so `..*self` takes them.
        Job {
            lines: Vec::new(),
            volume: self.volume.clone(),
            phase: self.phase.clone(),
            outcome: self.outcome.clone(),
            backup_file: self.backup_file.clone(),
            ..*self
        }
    }

    /// Take in a rebuild poll's state.
    fn absorb(&mut self, state: &RebuildState) {
        self.phase = state.phase.clone();
        self.pass = state.pass;
        self.objects = state.objects;
        for line in &state.lines {
            if self.lines.len() < MAX_LINES {
                self.lines.push(Line {
                    kind: line.kind.clone(),
                    path: String::from_utf8_lossy(&line.path).into_owned(),
                    detail: line.detail.clone(),
                });
                self.next += 1;
            } else {
                self.lines_dropped += 1;
            }
        }
    }
}

impl Clone for JobHandle {
    fn clone(&self) -> JobHandle {
        JobHandle(self.0.clone())
    }
}

/// A shared job, updated by its thread and read by the page's polls.
pub struct JobHandle(Arc<Mutex<Job>>);

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Why a job did not start.
#[derive(Debug)]
pub enum StartError {
    /// [`MAX_RUNNING`] jobs run already.
    Busy,
    /// No `backup_dir` configured.
    NoBackupDir,
    /// The server refused (a rebuild runs already, not an admin…).
    Refused(String),
}

/// Every job this side started.
pub struct Jobs {
    table: Mutex<VecDeque<JobHandle>>,
    next_id: Mutex<u64>,
    control: Control,
    backup_dir: Option<Arc<BackupDir>>,
    exports: crate::ExportFor,
}

impl Jobs {
    pub fn new(
        control: Control,
        backup_dir: Option<Arc<BackupDir>>,
        exports: crate::ExportFor,
    ) -> Jobs {
        Jobs {
            table: Mutex::new(VecDeque::new()),
            next_id: Mutex::new(1),
            control,
            backup_dir,
            exports,
        }
    }

    /// Job `id` with its lines from `from` on.
    pub fn get(&self, id: u64, from: u64) -> Option<Job> {
        let table = self.table.lock().unwrap();
        let handle = table.iter().find(|j| j.0.lock().unwrap().id == id)?;
        let job = handle.0.lock().unwrap();
        Some(job.view(from))
    }

    /// Every remembered job, without lines, newest first.
    pub fn list(&self) -> Vec<Job> {
        let table = self.table.lock().unwrap();
        table
            .iter()
            .rev()
            .map(|j| j.0.lock().unwrap().clone_without_lines())
            .collect()
    }

    /// Make room and register a new job; `None` when [`MAX_RUNNING`] run already.
    fn register(&self, kind: JobKind, volume: &str) -> Option<JobHandle> {
        let mut table = self.table.lock().unwrap();
        let running = table
            .iter()
            .filter(|j| !j.0.lock().unwrap().finished)
            .count();
        if running >= MAX_RUNNING {
            return None;
        }
        while table.len() >= KEEP_FINISHED + MAX_RUNNING {
            let Some(at) = table.iter().position(|j| j.0.lock().unwrap().finished) else {
                break;
            };
            table.remove(at);
        }
        let mut next = self.next_id.lock().unwrap();
        let handle = JobHandle(Arc::new(Mutex::new(Job::new(
            *next,
            kind,
            volume.to_string(),
        ))));
        *next += 1;
        table.push_back(handle.clone());
        Some(handle)
    }

    /// Start `kind` on volume `vol` (named `volume`, rooted at `root`); its job number.
    /// Blocking: the rebuild's start is asked of the server before this returns, so a refusal
    /// comes back as the request's answer.
    pub fn start(
        &self,
        kind: JobKind,
        vol: u32,
        volume: &str,
        root: &[u8],
    ) -> Result<u64, StartError> {
        if kind == JobKind::Backup && self.backup_dir.is_none() {
            return Err(StartError::NoBackupDir);
        }
        let handle = self.register(kind, volume).ok_or(StartError::Busy)?;
        let id = handle.0.lock().unwrap().id;
        let spawned = match kind {
            JobKind::RebuildCheck | JobKind::RebuildRepair => {
                let mode = match kind {
                    JobKind::RebuildCheck => RebuildMode::Scan,
                    _ => RebuildMode::Repair,
                };
                match RebuildRun::start(&self.control, vol, mode) {
                    Ok(run) => spawn(id, {
                        let handle = handle.clone();
                        move || follow_rebuild(run, handle)
                    }),
                    Err(why) => {
                        handle.0.lock().unwrap().finish(Err(why.clone()));
                        return Err(StartError::Refused(why));
                    }
                }
            }
            JobKind::Backup => {
                let root = PathBuf::from(std::ffi::OsStr::from_bytes(root));
                let dir = self.backup_dir.clone().expect("checked above");
                // A desktop in PostgreSQL is exported from its database (one snapshot).
                let export = (self.exports.0)(&root);
                spawn(id, {
                    let handle = handle.clone();
                    move || run_backup(&root, export, &dir, id, handle)
                })
            }
        };
        if let Err(e) = spawned {
            let why = format!("cannot start a thread: {e}");
            handle.0.lock().unwrap().finish(Err(why.clone()));
            return Err(StartError::Refused(why));
        }
        Ok(id)
    }
}

fn spawn(id: u64, work: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("http-job-{id}"))
        .spawn(work)
        .map(drop)
}

/// Poll the server until the rebuild ends, keeping the job up to date.
fn follow_rebuild(mut run: RebuildRun, handle: JobHandle) {
    let mut from = 0;
    loop {
        match run.poll(from) {
            Ok(state) => {
                from = state.next;
                let mut job = handle.0.lock().unwrap();
                job.absorb(&state);
                if let Some(finished) = &state.finished {
                    match finished {
                        Ok(summary) => {
                            job.differences = Some(summary.differences);
                            let c = &summary.counts;
                            job.finish(Ok(format!(
                                "{} difference(s) found; {} object(s) walked, {} new ID(s), \
                                 {} renumbered, {} repaired, {} removed, {} left to clients; \
                                 {} pass(es), {} ms",
                                summary.differences,
                                c.objects,
                                c.new_ids,
                                c.renumbered,
                                c.repaired,
                                c.removed,
                                summary.left,
                                summary.passes,
                                summary.millis
                            )));
                        }
                        Err(why) => job.finish(Err(why.clone())),
                    }
                    job.log_end();
                    return;
                }
            }
            Err(why) => {
                // The server stopped (or the connection broke): say so, as a finished job is.
                let mut job = handle.0.lock().unwrap();
                job.finish(Err(format!("lost the server: {why}")));
                job.log_end();
                return;
            }
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// Back the volume up into `dir` under a new name (never over an existing file):
/// `<volume>-<UTC time>-<job>.desktop`, so two jobs never pick the same name.
fn run_backup(
    root: &Path,
    export: Option<Box<dyn deskd_backup::Export + Send>>,
    dir: &BackupDir,
    id: u64,
    handle: JobHandle,
) {
    handle.0.lock().unwrap().phase = "copying".into();
    let result = backup_into(root, export, dir, id, &handle);
    let mut job = handle.0.lock().unwrap();
    match result {
        Ok((name, manifest)) => {
            job.backup_file = Some(name.clone());
            job.finish(Ok(format!(
                "backup written: {name} in backup_dir ({} bytes, SHA-256 {})",
                manifest.bytes, manifest.sha256
            )));
        }
        Err(e) => job.finish(Err(format!("backup failed: {e}"))),
    }
    job.log_end();
}

/// The backup itself, its files made relative to the held `backup_dir`. deskd-backup's
/// `backup` works by path, and SQLite refuses a path through `/proc/self/fd` (deskd-db opens
/// with "no symbolic links"), so the checked copy is streamed (made and checked in a private
/// directory first) into a file created here with `O_EXCL`, then renamed into place with
/// `RENAME_NOREPLACE`; its manifest likewise. Only files this job created are ever removed.
fn backup_into(
    root: &Path,
    export: Option<Box<dyn deskd_backup::Export + Send>>,
    dir: &BackupDir,
    id: u64,
    handle: &JobHandle,
) -> Result<(String, deskd_backup::Manifest), String> {
    let in_dir =
        |what: &str, e: std::io::Error| format!("backup_dir {}: {what}: {e}", dir.path().display());
    dir.check()
        .map_err(|why| format!("backup_dir {}: {why}", dir.path().display()))?;
    let base = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into());
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let name = format!("{base}-{stamp}-{id}.desktop");
    let manifest_name = deskd_backup::manifest_path(Path::new(&name))
        .to_string_lossy()
        .into_owned();
    let temp = format!(".{name}.partial");
    let mut file = dir.create_new(&temp).map_err(|e| in_dir(&temp, e))?;
    let mut progress = |done: u64, total: u64| {
        let mut job = handle.0.lock().unwrap();
        job.pages_done = done;
        job.pages_total = total;
    };
    let mut export = export;
    let mut source = match export.as_deref_mut() {
        Some(export) => deskd_backup::Source::Export(export),
        None => deskd_backup::Source::Desktop,
    };
    let streamed =
        deskd_backup::backup_to_stream_from(root, &mut source, &mut file, None, &mut progress)
            .map_err(|e| e.to_string())
            .and_then(|m| file.sync_all().map(|_| m).map_err(|e| in_dir(&temp, e)));
    drop(file);
    let mut manifest = match streamed {
        Ok(m) => m,
        Err(why) => {
            dir.remove(&temp);
            return Err(why);
        }
    };
    if let Err(e) = dir.publish(&temp, &name) {
        dir.remove(&temp);
        return Err(in_dir(&name, e));
    }
    manifest.file = name.clone();
    let mut text = serde_json::to_string_pretty(&manifest).expect("a manifest serialises");
    text.push('\n');
    let manifest_temp = format!(".{manifest_name}.partial");
    let written = dir.create_new(&manifest_temp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|_| dir.publish(&manifest_temp, &manifest_name)) {
        dir.remove(&manifest_temp);
        return Err(in_dir(&manifest_name, e));
    }
    dir.sync().map_err(|e| in_dir("sync", e))?;
    Ok((name, manifest))
}
