//! The two threads a volume's opening starts off the start-up path: the name index's load
//! (until it is ready `find` scans the table) and the quick logical check of DESIGN §6.5.

use std::path::Path;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use deskd_db::{NameIndex, Read};
use tracing::{error, info};

use crate::location::open_reader_at;
use crate::writer::SharedState;

/// Build the name index off the start-up path; `find` scans the table until it is ready.
pub(crate) fn spawn_name_index_load(
    desktop: &Path,
    immutable: bool,
    count: &Arc<AtomicU32>,
    root: &Path,
    names: Arc<NameIndex>,
) {
    let (desktop, count) = (desktop.to_path_buf(), count.clone());
    spawn_name_index_load_with(root, names, move |names| {
        open_reader_at(&desktop, immutable, &count).and_then(|r| names.load(&*r))
    });
}

/// [`spawn_name_index_load`] with the loading given (a PostgreSQL volume's reads its rows
/// through a connection of its own).
pub(crate) fn spawn_name_index_load_with(
    root: &Path,
    names: Arc<NameIndex>,
    load: impl FnOnce(&NameIndex) -> deskd_db::Result<()> + Send + 'static,
) {
    let root = root.to_path_buf();
    let _ = std::thread::Builder::new()
        .name("name-index".into())
        .spawn(move || {
            let began = Instant::now();
            match load(&names) {
                Ok(()) => {
                    info!(
                        volume = %root.display(),
                        names = names.names().unwrap_or(0),
                        ms = began.elapsed().as_millis() as u64,
                        "name index ready"
                    );
                    // Until these are in, find scans the index's keys.
                    let began = Instant::now();
                    names.index_trigrams();
                    info!(
                        volume = %root.display(),
                        ms = began.elapsed().as_millis() as u64,
                        "name index trigram lists ready"
                    );
                }
                Err(e) => error!(
                    "cannot build the name index of [{}]: {e}; find scans the desktop instead",
                    root.display()
                ),
            }
        });
}

/// The quick logical check of DESIGN §6.5, off the start-up path. The thread's result is the
/// problems found (an error of the check itself counts as one), for an automatic repair
/// ([`crate::autorepair`]); None when the thread could not be started.
pub(crate) fn spawn_check(
    desktop: &Path,
    immutable: bool,
    count: &Arc<AtomicU32>,
    root: &Path,
    state: Arc<Mutex<SharedState>>,
) -> Option<JoinHandle<Vec<String>>> {
    let (desktop, count) = (desktop.to_path_buf(), count.clone());
    spawn_check_with(root, state, move || {
        open_reader_at(&desktop, immutable, &count).and_then(|r| r.quick_check())
    })
}

/// [`spawn_check`] with the check given (a PostgreSQL volume's runs on a connection of its
/// own).
pub(crate) fn spawn_check_with(
    root: &Path,
    state: Arc<Mutex<SharedState>>,
    check: impl FnOnce() -> deskd_db::Result<Vec<String>> + Send + 'static,
) -> Option<JoinHandle<Vec<String>>> {
    let root = root.to_path_buf();
    std::thread::Builder::new()
        .name("check".into())
        .spawn(move || {
            let result = check();
            let finished = Some(deskd_db::now_unix());
            match result {
                Ok(problems) if problems.is_empty() => {
                    state.lock().unwrap().check_finished = finished;
                    problems
                }
                Ok(problems) => {
                    error!(
                        "desktop check failed for [{}]: {}; run `deskd rebuild {}` to repair it",
                        root.display(),
                        problems.join("; "),
                        root.display()
                    );
                    let mut state = state.lock().unwrap();
                    state.check_problems = problems.clone();
                    state.check_finished = finished;
                    problems
                }
                Err(e) => {
                    error!("desktop check of [{}] could not run: {e}", root.display());
                    let problems = vec![e.to_string()];
                    let mut state = state.lock().unwrap();
                    state.check_problems = problems.clone();
                    state.check_finished = finished;
                    problems
                }
            }
        })
        .ok()
}
