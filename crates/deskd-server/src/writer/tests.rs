//! The writer driven through its queue, with no socket: replies go to [`Recorded`]
//! connections that keep what they were sent.

use super::*;
use crate::test_support::config_for;
use deskd_db::Read;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A connection as the writer sees it: replies are queued, and sent when flushed.
#[derive(Default)]
struct TestConnection {
    queued: Mutex<Vec<(&'static str, Reply)>>,
    sent: Mutex<Vec<(&'static str, Reply)>>,
    flushes: AtomicUsize,
}

impl TestConnection {
    /// The replies sent so far, by request tag.
    fn sent(&self) -> Vec<(&'static str, Reply)> {
        self.sent.lock().unwrap().clone()
    }
}

/// The reply to one request (`tag`), on `connection`.
struct Recorded {
    tag: &'static str,
    connection: Arc<TestConnection>,
    access: Access,
    /// Told when the connection is flushed (to wait for a reply from a writer thread).
    flushed: Option<Sender<()>>,
}

impl ReplyTo for Recorded {
    fn access(&self) -> &Access {
        &self.access
    }
    fn queue(&self, reply: Reply) {
        self.connection
            .queued
            .lock()
            .unwrap()
            .push((self.tag, reply));
    }
    fn flush(&self) {
        let mut queued = self.connection.queued.lock().unwrap();
        self.connection.sent.lock().unwrap().append(&mut queued);
        self.connection.flushes.fetch_add(1, Ordering::SeqCst);
        if let Some(flushed) = &self.flushed {
            let _ = flushed.send(());
        }
    }
    fn connection(&self) -> usize {
        Arc::as_ptr(&self.connection) as usize
    }
}

/// Register `name` (a path relative to the volume root), answered on `connection`.
fn add(name: &'static str, connection: &Arc<TestConnection>) -> Job {
    Job::Write {
        request: Request::AddPath {
            vol: 0,
            path: name.as_bytes().to_vec(),
            hint: None,
            type_code: None,
            creator: None,
            carried: None,
        },
        reply: Box::new(Recorded {
            tag: name,
            connection: connection.clone(),
            access: Access::Trusted,
            flushed: None,
        }),
    }
}

/// A writer of a new desktop in `root`, and its commit count.
fn writer_for(root: &Path) -> (Writer, Arc<AtomicU64>) {
    writer_configured(root, config_for(root))
}

/// [`writer_for`] with `wal_limit` set before the writer is made, so that the WAL's size limit
/// and the checkpointer's restart threshold follow it, as in the server.
fn writer_with_wal_limit(root: &Path, wal_limit: u64) -> Writer {
    let mut config = config_for(root);
    config.wal_limit = wal_limit;
    writer_configured(root, config).0
}

fn writer_configured(root: &Path, config: VolumeConfig) -> (Writer, Arc<AtomicU64>) {
    let volume = Volume::new(root).unwrap();
    let path = volume.root().join(deskd_volume::DESKTOP_FILE);
    let lock = crate::desktop_lock::lock_exclusive(&path, volume.root()).unwrap();
    let (desktop, _) = Desktop::open(&path, config.durability).unwrap();
    let commits = Arc::new(AtomicU64::new(0));
    let writer = Writer::new(
        Some(desktop),
        lock,
        volume,
        config,
        Arc::default(),
        commits.clone(),
        &path,
        Vec::new(),
    );
    (writer, commits)
}

/// Shut the writer thread down, and wait until it has.
fn shut_down(tx: &Sender<Job>) {
    let (done, stopped) = crossbeam_channel::bounded(1);
    tx.send(Job::Shutdown(done)).unwrap();
    stopped.recv_timeout(Duration::from_secs(10)).unwrap();
}

/// Queue `jobs` and then a shutdown before the writer runs, so that they all wait in its
/// queue at once, and run the writer on this thread until it has shut down.
fn run_queued(writer: Writer, jobs: Vec<Job>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    for job in jobs {
        tx.send(job).unwrap();
    }
    let (done, _done) = crossbeam_channel::bounded(1);
    tx.send(Job::Shutdown(done)).unwrap();
    drop(tx);
    WriterShare::new(writer).run(rx);
}

fn files(root: &Path, names: &[&str]) {
    for name in names {
        std::fs::write(root.join(name), b"").unwrap();
    }
}

fn id_of(reply: &Reply) -> u32 {
    match reply {
        Ok(Response::Object(o)) => o.id,
        other => panic!("not an object: {other:?}"),
    }
}

#[test]
fn writes_waiting_together_are_committed_once() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path(), &["a", "b", "c"]);
    let (writer, commits) = writer_for(dir.path());
    let (one, two) = (Arc::default(), Arc::default());
    run_queued(writer, vec![add("a", &one), add("b", &two), add("c", &one)]);
    assert_eq!(
        commits.load(Ordering::SeqCst),
        1,
        "one commit for the batch"
    );
    let (one, two) = (one.sent(), two.sent());
    assert_eq!(one.iter().map(|r| r.0).collect::<Vec<_>>(), ["a", "c"]);
    assert_eq!(two.iter().map(|r| r.0).collect::<Vec<_>>(), ["b"]);
    let mut ids: Vec<u32> = one.iter().chain(&two).map(|r| id_of(&r.1)).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three new objects");
}

#[test]
fn a_connection_is_flushed_once_per_commit() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path(), &["a", "b", "c"]);
    let (writer, _) = writer_for(dir.path());
    let (one, two): (Arc<TestConnection>, Arc<TestConnection>) = (Arc::default(), Arc::default());
    run_queued(writer, vec![add("a", &one), add("b", &two), add("c", &one)]);
    assert_eq!(one.flushes.load(Ordering::SeqCst), 1);
    assert_eq!(two.flushes.load(Ordering::SeqCst), 1);
}

#[test]
fn a_failing_request_gets_its_error_and_the_rest_of_its_batch_commits() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path(), &["a", "b"]);
    let (writer, commits) = writer_for(dir.path());
    let desktop = dir.path().join(deskd_volume::DESKTOP_FILE);
    let before = deskd_db::Reader::open(&desktop).unwrap().stats().unwrap();
    let client = Arc::default();
    run_queued(
        writer,
        vec![
            add("a", &client),
            add("missing", &client),
            add("b", &client),
        ],
    );
    let sent = client.sent();
    assert_eq!(
        sent.iter().map(|r| r.0).collect::<Vec<_>>(),
        ["a", "missing", "b"]
    );
    let error = sent[1].1.as_ref().unwrap_err();
    assert_eq!(error.code, ErrorCode::ClaimRejected, "{error:?}");
    let (a, b) = (id_of(&sent[0].1), id_of(&sent[2].1));
    assert_eq!(commits.load(Ordering::SeqCst), 1, "still one commit");
    // What the acknowledged requests did is on the desktop; the failed one left nothing.
    let reader = deskd_db::Reader::open(&desktop).unwrap();
    assert_eq!(reader.get(a).unwrap().name, b"a");
    assert_eq!(reader.get(b).unwrap().name, b"b");
    assert_eq!(reader.stats().unwrap().objects, before.objects + 2);
}

#[test]
fn a_write_caught_by_a_close_is_refused_and_its_retry_commits_after_the_reopening() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path(), &["a"]);
    let (writer, _) = writer_for(dir.path());
    let (tx, rx) = crossbeam_channel::unbounded();
    writer.spawn(0, rx).unwrap();
    let (closed, close) = crossbeam_channel::bounded(1);
    tx.send(Job::Close(closed)).unwrap();
    assert_eq!(close.recv().unwrap(), Ok(()));
    // A connection that took the old opening's queue before the close: answered, not lost.
    let client: Arc<TestConnection> = Arc::default();
    let (flushed, replied) = crossbeam_channel::unbounded();
    let write = |flushed: &Sender<()>| Job::Write {
        request: Request::AddPath {
            vol: 0,
            path: b"a".to_vec(),
            hint: None,
            type_code: None,
            creator: None,
            carried: None,
        },
        reply: Box::new(Recorded {
            tag: "a",
            connection: client.clone(),
            access: Access::Trusted,
            flushed: Some(flushed.clone()),
        }),
    };
    tx.send(write(&flushed)).unwrap();
    replied
        .recv_timeout(Duration::from_secs(10))
        .expect("the refusal of a write caught by the close");
    let refusal = client.sent().remove(0).1.unwrap_err();
    assert_eq!(refusal.code, ErrorCode::ShuttingDown, "{refusal:?}");
    assert!(refusal.message.contains("try again"), "{}", refusal.message);
    // The close released the lock: the reopening gets it, and the retry commits.
    let (writer, commits) = writer_for(dir.path());
    run_queued(writer, vec![write(&flushed)]);
    assert_eq!(commits.load(Ordering::SeqCst), 1);
    let sent = client.sent();
    assert_eq!(sent.len(), 2);
    let reader = deskd_db::Reader::open(&dir.path().join(deskd_volume::DESKTOP_FILE)).unwrap();
    assert_eq!(reader.get(id_of(&sent[1].1)).unwrap().name, b"a");
}

/// An `sqlite3` CLI session holding the desktop's write lock (`BEGIN IMMEDIATE`) until
/// released: what HELIOS calls "desktop DB busy by another process".
struct Sqlite3Lock(std::process::Child);

impl Sqlite3Lock {
    fn take(desktop: &Path) -> Sqlite3Lock {
        use std::io::{BufRead, Write};
        use std::process::{Command, Stdio};
        let mut child = Command::new("sqlite3")
            .arg(desktop)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the sqlite3 CLI is installed");
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, "BEGIN IMMEDIATE; SELECT 'locked';").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked", "sqlite3 took the write lock");
        Sqlite3Lock(child)
    }

    /// End the session (its transaction is rolled back), releasing the lock.
    fn release(mut self) {
        drop(self.0.stdin.take());
        assert!(self.0.wait().unwrap().success());
    }
}

/// Register `name`, telling `flushed` when its reply is sent.
fn add_told(name: &'static str, connection: &Arc<TestConnection>, flushed: &Sender<()>) -> Job {
    match add(name, connection) {
        Job::Write { request, .. } => Job::Write {
            request,
            reply: Box::new(Recorded {
                tag: name,
                connection: connection.clone(),
                access: Access::Trusted,
                flushed: Some(flushed.clone()),
            }),
        },
        _ => unreachable!(),
    }
}

#[test]
fn a_write_waits_while_another_process_holds_the_desktop_and_commits_after() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path(), &["a"]);
    let (writer, commits) = writer_for(dir.path());
    let desktop = dir.path().join(deskd_volume::DESKTOP_FILE);
    let (tx, rx) = crossbeam_channel::unbounded();
    writer.spawn(0, rx).unwrap();
    let lock = Sqlite3Lock::take(&desktop);
    let client: Arc<TestConnection> = Arc::default();
    let (flushed, replied) = crossbeam_channel::unbounded();
    tx.send(add_told("a", &client, &flushed)).unwrap();
    // The writer still serves control jobs while the write waits, and says why it cannot.
    let (flush, flush_reply) = crossbeam_channel::bounded(1);
    tx.send(Job::Flush(flush)).unwrap();
    let refused = flush_reply
        .recv_timeout(Duration::from_secs(10))
        .expect("a flush answered while a write waits")
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::Busy, "{refused:?}");
    assert!(
        refused.message.contains("busy by another process"),
        "{}",
        refused.message
    );
    assert!(
        replied.try_recv().is_err(),
        "the write waits: {:?}",
        client.sent()
    );
    assert_eq!(commits.load(Ordering::SeqCst), 0);
    lock.release();
    replied
        .recv_timeout(Duration::from_secs(10))
        .expect("the waiting write answered once the lock is released");
    let sent = client.sent();
    let reader = deskd_db::Reader::open(&desktop).unwrap();
    assert_eq!(reader.get(id_of(&sent[0].1)).unwrap().name, b"a");
    assert_eq!(commits.load(Ordering::SeqCst), 1);
    shut_down(&tx);
}

#[test]
fn a_write_that_waited_busy_wait_gets_busy_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path(), &["a"]);
    let (mut writer, commits) = writer_for(dir.path());
    writer.config.busy_wait = 1;
    let desktop = dir.path().join(deskd_volume::DESKTOP_FILE);
    let before = deskd_db::Reader::open(&desktop).unwrap().stats().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    writer.spawn(0, rx).unwrap();
    let lock = Sqlite3Lock::take(&desktop);
    let client: Arc<TestConnection> = Arc::default();
    let (flushed, replied) = crossbeam_channel::unbounded();
    let began = Instant::now();
    tx.send(add_told("a", &client, &flushed)).unwrap();
    replied
        .recv_timeout(Duration::from_secs(10))
        .expect("the refusal after busy_wait");
    assert!(
        began.elapsed() >= Duration::from_secs(1),
        "waited busy_wait"
    );
    let refusal = client.sent().remove(0).1.unwrap_err();
    assert_eq!(refusal.code, ErrorCode::Busy, "{refusal:?}");
    assert!(
        refusal.message.contains("busy by another process")
            && refusal.message.contains("nothing was recorded"),
        "{}",
        refusal.message
    );
    lock.release();
    assert_eq!(commits.load(Ordering::SeqCst), 0);
    let reader = deskd_db::Reader::open(&desktop).unwrap();
    assert_eq!(reader.stats().unwrap().objects, before.objects);
    shut_down(&tx);
}

#[test]
fn writes_waiting_for_a_busy_desktop_are_answered_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path(), &["a"]);
    let (writer, _) = writer_for(dir.path());
    let desktop = dir.path().join(deskd_volume::DESKTOP_FILE);
    let (tx, rx) = crossbeam_channel::unbounded();
    writer.spawn(0, rx).unwrap();
    let lock = Sqlite3Lock::take(&desktop);
    let client: Arc<TestConnection> = Arc::default();
    let (flushed, replied) = crossbeam_channel::unbounded();
    tx.send(add_told("a", &client, &flushed)).unwrap();
    // A flush answered Busy shows the write's first try was made and it waits.
    let (flush, flush_reply) = crossbeam_channel::bounded(1);
    tx.send(Job::Flush(flush)).unwrap();
    assert!(flush_reply
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .is_err());
    let (done, stopped) = crossbeam_channel::bounded(1);
    tx.send(Job::Shutdown(done)).unwrap();
    replied
        .recv_timeout(Duration::from_secs(20))
        .expect("the waiting write answered at shutdown");
    let refusal = client.sent().remove(0).1.unwrap_err();
    assert_eq!(refusal.code, ErrorCode::ShuttingDown, "{refusal:?}");
    assert!(refusal.message.contains("try again"), "{}", refusal.message);
    stopped.recv_timeout(Duration::from_secs(20)).unwrap();
    lock.release();
}

#[test]
fn a_desktop_another_process_holds_is_not_closed_for_a_reopening() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path(), &["a"]);
    let (writer, _) = writer_for(dir.path());
    let desktop = dir.path().join(deskd_volume::DESKTOP_FILE);
    let (tx, rx) = crossbeam_channel::unbounded();
    writer.spawn(0, rx).unwrap();
    let lock = Sqlite3Lock::take(&desktop);
    let client: Arc<TestConnection> = Arc::default();
    let (flushed, replied) = crossbeam_channel::unbounded();
    tx.send(add_told("a", &client, &flushed)).unwrap();
    let close = || {
        let (closed, close) = crossbeam_channel::bounded(1);
        tx.send(Job::Close(closed)).unwrap();
        close.recv_timeout(Duration::from_secs(10)).unwrap()
    };
    // Closed now, the desktop could be neither marked clean nor opened again.
    assert_eq!(close(), Err(CloseRefused::Busy));
    assert!(replied.try_recv().is_err(), "the write still waits");
    lock.release();
    replied
        .recv_timeout(Duration::from_secs(10))
        .expect("the waiting write answered once the lock is released");
    assert!(client.sent()[0].1.is_ok(), "{:?}", client.sent());
    assert_eq!(close(), Ok(()));
}

/// The request and reply of `add_told`, to commit through [`WriterShare::commit_alone`].
fn write_parts(job: Job) -> (Request, Replier) {
    match job {
        Job::Write { request, reply } => (request, reply),
        _ => unreachable!(),
    }
}

#[test]
fn a_lone_write_is_committed_and_answered_by_the_thread_that_read_it() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path(), &["a", "b"]);
    let (writer, commits) = writer_for(dir.path());
    let (tx, rx) = crossbeam_channel::unbounded();
    let share = writer.spawn(0, rx).unwrap();
    let client: Arc<TestConnection> = Arc::default();
    let (flushed, _replied) = crossbeam_channel::unbounded();
    let (request, reply) = write_parts(add_told("a", &client, &flushed));
    assert!(share.commit_alone(request, reply, &tx).is_ok());
    // Answered before commit_alone returned: no other thread took part.
    let sent = client.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(commits.load(Ordering::SeqCst), 1);
    let desktop = dir.path().join(deskd_volume::DESKTOP_FILE);
    let reader = deskd_db::Reader::open(&desktop).unwrap();
    assert_eq!(reader.get(id_of(&sent[0].1)).unwrap().name, b"a");
    // The writer thread still serves its queue afterwards.
    shut_down(&tx);
}

#[test]
fn a_write_goes_to_the_queue_while_the_writer_serves_a_job() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path(), &["a"]);
    let (writer, commits) = writer_for(dir.path());
    let (tx, rx) = crossbeam_channel::unbounded();
    let share = writer.spawn(0, rx).unwrap();
    // A job the writer serves until told to go on (as an online rebuild's apply would run).
    let (started, running) = crossbeam_channel::bounded(1);
    let (go_on, wait) = crossbeam_channel::bounded::<()>(1);
    tx.send(Job::Run(Box::new(move |_| {
        started.send(()).unwrap();
        wait.recv().unwrap();
        false
    })))
    .unwrap();
    running.recv_timeout(Duration::from_secs(10)).unwrap();
    let client: Arc<TestConnection> = Arc::default();
    let (flushed, replied) = crossbeam_channel::unbounded();
    let (request, reply) = write_parts(add_told("a", &client, &flushed));
    let (request, reply) = share
        .commit_alone(request, reply, &tx)
        .expect_err("the writer is busy: the write is given back to be queued");
    tx.send(Job::Write { request, reply }).unwrap();
    assert_eq!(commits.load(Ordering::SeqCst), 0);
    go_on.send(()).unwrap();
    replied
        .recv_timeout(Duration::from_secs(10))
        .expect("the queued write answered by the writer thread");
    assert!(client.sent()[0].1.is_ok(), "{:?}", client.sent());
    assert_eq!(commits.load(Ordering::SeqCst), 1);
}

#[test]
fn a_lone_write_made_elsewhere_still_gets_its_timed_flush() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path(), &["a"]);
    let (mut writer, _) = writer_for(dir.path());
    writer.config.flush_delay = 1;
    let state = writer.state.clone();
    let (tx, rx) = crossbeam_channel::unbounded();
    let share = writer.spawn(0, rx).unwrap();
    // Wait until the writer thread sleeps with no timer (nothing to flush yet).
    let (asked, answered) = crossbeam_channel::bounded(1);
    tx.send(Job::Thaw(asked)).unwrap();
    answered
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    let client: Arc<TestConnection> = Arc::default();
    let (flushed, _replied) = crossbeam_channel::unbounded();
    let committed = loop {
        let (request, reply) = write_parts(add_told("a", &client, &flushed));
        match share.commit_alone(request, reply, &tx) {
            Ok(()) => break now_unix(),
            // The thread had not yet gone back to sleep: try again.
            Err(_) => std::thread::yield_now(),
        }
    };
    let flushed_at = |state: &Mutex<SharedState>| state.lock().unwrap().last_flush;
    let deadline = Instant::now() + Duration::from_secs(20);
    while flushed_at(&state) < committed {
        assert!(
            Instant::now() < deadline,
            "no timed flush after a write committed by another thread"
        );
        std::thread::yield_now();
    }
}

/// `n` files named `{prefix}-{i}` in `root`, as the `'static` names [`add`] takes.
fn many_files(root: &Path, prefix: &str, n: usize) -> Vec<&'static str> {
    (0..n)
        .map(|i| {
            let name: &'static str = Box::leak(format!("{prefix}-{i:05}").into_boxed_str());
            std::fs::write(root.join(name), b"").unwrap();
            name
        })
        .collect()
}

/// Commit `name` on this thread as a connection thread would (the writer thread idle),
/// and return its reply.
fn commit_here(share: &WriterShare, tx: &Sender<Job>, name: &'static str) -> Reply {
    let client: Arc<TestConnection> = Arc::default();
    let (flushed, _replied) = crossbeam_channel::unbounded();
    loop {
        let (request, reply) = write_parts(add_told(name, &client, &flushed));
        match share.commit_alone(request, reply, tx) {
            Ok(()) => break,
            // The writer thread was setting its timers: try again.
            Err(_) => std::thread::yield_now(),
        }
    }
    let sent = client.sent();
    assert_eq!(sent.len(), 1, "answered before commit_alone returned");
    sent[0].1.clone()
}

#[test]
fn writes_are_answered_while_a_checkpoint_runs_beside_them() {
    let dir = tempfile::tempdir().unwrap();
    let names = many_files(dir.path(), "f", 40);
    let writer = writer_with_wal_limit(dir.path(), 1 << 20);
    let checkpointer = writer.checkpointer.clone().expect("a checkpointer thread");
    let desktop = dir.path().join(deskd_volume::DESKTOP_FILE);
    let state = writer.state.clone();
    let (tx, rx) = crossbeam_channel::unbounded();
    let share = writer.spawn(0, rx).unwrap();
    // A checkpoint in progress holds the gate (as the test hook holds a round).
    let gate = checkpointer.hold();
    for name in &names {
        assert!(commit_here(&share, &tx, name).is_ok());
    }
    let pending = share.wal_pending_bytes(&desktop);
    assert!(
        pending >= checkpoint::background_at(1 << 20),
        "past a quarter of the limit: {pending}"
    );
    assert_eq!(
        state.lock().unwrap().last_flush,
        0,
        "nothing checkpointed yet"
    );
    // Let the checkpoint go: the writer asked for it, and it copies everything.
    drop(gate);
    let deadline = Instant::now() + Duration::from_secs(20);
    while share.wal_pending_bytes(&desktop) > 0 || state.lock().unwrap().last_flush == 0 {
        assert!(Instant::now() < deadline, "the checkpointer did not run");
        std::thread::sleep(Duration::from_millis(5));
    }
    let wal = deskd_db::wal_path(&desktop);
    let kept = std::fs::metadata(&wal).unwrap().len();
    assert!(kept >= pending, "the WAL file is kept, not truncated");
    shut_down(&tx);
    let reader = deskd_db::Reader::open(&desktop).unwrap();
    assert_eq!(reader.stats().unwrap().objects, 41);
}

#[test]
fn a_write_burst_reuses_the_wal_within_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let names = many_files(dir.path(), "g", 600);
    let limit = 1 << 20;
    let writer = writer_with_wal_limit(dir.path(), limit);
    let desktop = dir.path().join(deskd_volume::DESKTOP_FILE);
    let wal = deskd_db::wal_path(&desktop);
    let (tx, rx) = crossbeam_channel::unbounded();
    let share = writer.spawn(0, rx).unwrap();
    let index = deskd_db::WalIndex::open(&desktop).unwrap();
    let (mut longest, mut restarts, mut last_used) = (0, 0, 0);
    for name in &names {
        assert!(commit_here(&share, &tx, name).is_ok());
        let len = std::fs::metadata(&wal).unwrap().len();
        let used = index.read().unwrap().used_bytes();
        if used < last_used {
            restarts += 1;
            assert!(len > 0, "restarted, not truncated to nothing");
        }
        last_used = used;
        longest = longest.max(len);
    }
    // 600 ADDs write several MiB of WAL: it restarted from its start, and one commit past
    // the limit is all it ever overshot.
    assert!(restarts >= 2, "the WAL restarted {restarts} times");
    assert!(
        longest <= limit + (64 << 10),
        "the WAL grew to {longest} bytes"
    );
    shut_down(&tx);
    let reader = deskd_db::Reader::open(&desktop).unwrap();
    assert_eq!(reader.stats().unwrap().objects, 601);
}

#[test]
fn the_wal_restarts_even_when_a_reader_kept_the_first_commit_after_a_checkpoint_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let names = many_files(dir.path(), "h", 40);
    let writer = writer_with_wal_limit(dir.path(), 1 << 20);
    let checkpointer = writer.checkpointer.clone().unwrap();
    let desktop = dir.path().join(deskd_volume::DESKTOP_FILE);
    let index = deskd_db::WalIndex::open(&desktop).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let share = writer.spawn(0, rx).unwrap();
    let gate = checkpointer.hold();
    for name in &names[..30] {
        assert!(commit_here(&share, &tx, name).is_ok());
    }
    // A connection reads (its snapshot includes every frame so far) just before the round
    // ends, and then sends a write.
    let reader = deskd_db::Reader::open(&desktop).unwrap();
    reader.begin_snapshot().unwrap();
    reader.stats().unwrap();
    drop(gate);
    let wait_until = |what: &str, done: &dyn Fn(deskd_db::WalState) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(index.read().unwrap()) {
            assert!(Instant::now() < deadline, "{what}: {:?}", index.read());
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    wait_until("copied", &|w| w.frames == w.backfilled);
    let before = index.read().unwrap();
    assert!(commit_here(&share, &tx, names[30]).is_ok());
    let after = index.read().unwrap();
    assert!(
        after.frames > before.frames,
        "the reader kept the WAL from restarting: {before:?} {after:?}"
    );
    reader.end_snapshot().unwrap();
    // The checkpointer saw it, waited for the pause, and went again: the next commit restarts.
    wait_until("copied again", &|w| w.frames == w.backfilled);
    assert!(commit_here(&share, &tx, names[31]).is_ok());
    let restarted = index.read().unwrap();
    assert!(restarted.frames < before.frames, "{restarted:?}");
    shut_down(&tx);
}

/// One run of group commit as [`Writer::commit_batch`] makes it (a refused request makes the
/// batch run again isolated), on any store; the replies.
fn commit_on<S: deskd_db::Store>(store: &mut S, volume: &Volume, writes: &[Pending]) -> Vec<Reply> {
    use super::batch::{run_batch, Attempt};
    let policy = crate::apply::Policy::default();
    let cache = &mut crate::apply::DirCache::default();
    let done = match run_batch(store, volume, policy, writes, false, true, cache).unwrap() {
        Attempt::Retry => run_batch(store, volume, policy, writes, true, true, cache).unwrap(),
        done => done,
    };
    match done {
        Attempt::Done(replies) => replies.into_iter().map(|(reply, _)| reply).collect(),
        Attempt::Retry => unreachable!("an isolated run never asks for a retry"),
    }
}

#[test]
fn group_commit_runs_alike_on_sqlite_and_postgresql_through_the_store_trait() {
    use deskd_db::{Desktop, Durability, Store};
    use deskd_pg::test_cluster::TestCluster;
    use deskd_pg::{connect, ConnectOptions, PasswordSource, PgDesktop, VolumeKey};
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("vol");
    std::fs::create_dir(&root).unwrap();
    files(&root, &["a", "b"]);
    std::fs::create_dir(root.join("d")).unwrap();
    files(&root.join("d"), &["c"]);
    let volume = Volume::new(&root).unwrap();
    let (mut sqlite, _) = Desktop::open(&dir.path().join("desktop"), Durability::Normal).unwrap();
    cluster.create_database("writer");
    let options = ConnectOptions {
        target: cluster.url("writer"),
        password: PasswordSource::File(cluster.password_file("pw-writer", cluster.password())),
    };
    let key = VolumeKey {
        name: root.display().to_string(),
        identity: 0x3717,
    };
    let (mut pg, _) =
        PgDesktop::open(connect(&options).unwrap(), &key, Durability::Normal).unwrap();
    assert_eq!((sqlite.backend(), pg.backend()), ("sqlite", "postgresql"));

    // A batch with a refused request (audit on, as `commit_batch` may run it): rolled back,
    // run again isolated, the refused one answered with its error, the rest committed, with
    // the same IDs on both.
    let client = Arc::default();
    let writes = |names: &[&'static str]| -> Vec<Pending> {
        names
            .iter()
            .map(|&name| match add(name, &client) {
                Job::Write { request, reply } => Pending {
                    request,
                    reply,
                    queued: Instant::now(),
                },
                _ => unreachable!(),
            })
            .collect()
    };
    let first = ["missing", "a", "d/c"];
    let on_sqlite = commit_on(&mut sqlite, &volume, &writes(&first));
    let on_postgres = commit_on(&mut pg, &volume, &writes(&first));
    assert_eq!(on_sqlite, on_postgres);
    assert_eq!(
        on_sqlite[0].as_ref().unwrap_err().code,
        ErrorCode::ClaimRejected
    );
    let ids: Vec<u32> = [1, 2].iter().map(|&i| id_of(&on_sqlite[i])).collect();
    assert_eq!(ids, [17, 19], "d (18) registered on the way to d/c");
    let rows = |db: &dyn deskd_db::Read| {
        let mut all = db.all_objects().unwrap();
        all.retain(|o| o.id != deskd_db::ROOT_ID);
        all
    };
    assert_eq!(rows(&sqlite), rows(&pg));
    assert_eq!(rows(&pg).len(), 3);

    // Refused after another request took an ID: the first run is rolled back. SQLite's
    // counter stays in memory, so that ID is skipped; PostgreSQL reads the counter row
    // again, so it is given back. Both keep the rule (no ID a client saw is handed out
    // again), and otherwise answer alike.
    let second = ["b", "missing"];
    let on_sqlite = commit_on(&mut sqlite, &volume, &writes(&second));
    let on_postgres = commit_on(&mut pg, &volume, &writes(&second));
    assert_eq!((id_of(&on_sqlite[0]), id_of(&on_postgres[0])), (21, 20));
    assert_eq!(on_sqlite[1], on_postgres[1]);
}

/// `Add` of `name` in folder `parent` as afpd sends it (dev/ino of what is on disk at `path`).
fn add_in(parent: u32, name: &'static str, path: &Path, connection: &Arc<TestConnection>) -> Job {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).unwrap();
    Job::Write {
        request: Request::Add {
            vol: 0,
            parent,
            name: name.as_bytes().to_vec(),
            dev: meta.dev(),
            ino: meta.ino(),
            hint: None,
            type_code: None,
            creator: None,
            carried: None,
        },
        reply: Box::new(Recorded {
            tag: name,
            connection: connection.clone(),
            access: Access::Trusted,
            flushed: None,
        }),
    }
}

#[test]
fn a_folder_path_kept_across_batches_follows_renames_by_another_process_and_by_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    files(root, &["a/b/f1"]);
    let (writer, _) = writer_for(root);
    let (tx, rx) = crossbeam_channel::unbounded();
    let share = writer.spawn(0, rx).unwrap();
    let here = |job: Job| {
        let mut parts = write_parts(job);
        // Handed back while the writer thread sets its timers: try again.
        while let Err(back) = share.commit_alone(parts.0, parts.1, &tx) {
            parts = back;
            std::thread::yield_now();
        }
    };
    let client: Arc<TestConnection> = Arc::default();
    let last_id = |client: &TestConnection| match client.sent().last() {
        Some((tag, reply)) => match reply {
            Ok(Response::Object(o)) => o.id,
            other => panic!("{tag}: {other:?}"),
        },
        None => panic!("no reply"),
    };
    here(add("a/b", &client));
    let b = last_id(&client);
    // The writer now holds the path of b ("a/b") from this ADD.
    here(add_in(b, "f1", &root.join("a/b/f1"), &client));
    last_id(&client);

    // Another process renames a to c, on disk and in the desktop (a script, sqlite3).
    std::fs::rename(root.join("a"), root.join("c")).unwrap();
    let desktop = root.join(deskd_volume::DESKTOP_FILE);
    let by_hand = std::process::Command::new("sqlite3")
        .arg(&desktop)
        .arg(".timeout 5000")
        .arg("UPDATE objects SET name = x'63', skey = 'c' WHERE name = x'61'; SELECT changes();")
        .output()
        .expect("the sqlite3 CLI is installed");
    assert_eq!(
        String::from_utf8_lossy(&by_hand.stdout).trim(),
        "1",
        "{by_hand:?}"
    );
    files(root, &["c/b/f2"]);
    here(add_in(b, "f2", &root.join("c/b/f2"), &client));
    let f2 = last_id(&client);
    let reader = deskd_db::Reader::open(&desktop).unwrap();
    assert_eq!(reader.get(f2).unwrap().parent, b);

    // The writer itself renames c to d: a batch of its own clears what it kept.
    std::fs::rename(root.join("c"), root.join("d")).unwrap();
    let c = reader.lookup(deskd_db::ROOT_ID, b"c").unwrap().unwrap().id;
    here(Job::Write {
        request: Request::Rename {
            vol: 0,
            id: c,
            new_parent: deskd_db::ROOT_ID,
            new_name: b"d".to_vec(),
            replace: false,
        },
        reply: Box::new(Recorded {
            tag: "rename",
            connection: client.clone(),
            access: Access::Trusted,
            flushed: None,
        }),
    });
    files(root, &["d/b/f3"]);
    here(add_in(b, "f3", &root.join("d/b/f3"), &client));
    let f3 = last_id(&client);
    assert_eq!(reader.get(f3).unwrap().parent, b);
    shut_down(&tx);
}

#[test]
fn an_add_into_a_folder_renamed_earlier_in_the_same_batch_walks_its_new_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("a")).unwrap();
    files(root, &["a/f1"]);
    // First batch: the folder and a file in it (the writer now holds the folder's path).
    let (writer, _) = writer_for(root);
    let client: Arc<TestConnection> = Arc::default();
    run_queued(writer, vec![add("a/f1", &client)]);
    let desktop = root.join(deskd_volume::DESKTOP_FILE);
    let a = deskd_db::Reader::open(&desktop)
        .unwrap()
        .lookup(deskd_db::ROOT_ID, b"a")
        .unwrap()
        .unwrap()
        .id;
    // Renamed on disk, then one batch: the rename by ID, and an ADD into the folder by ID.
    std::fs::rename(root.join("a"), root.join("c")).unwrap();
    files(root, &["c/f2"]);
    let (writer, _) = writer_for(root);
    let client: Arc<TestConnection> = Arc::default();
    let rename = Job::Write {
        request: Request::Rename {
            vol: 0,
            id: a,
            new_parent: deskd_db::ROOT_ID,
            new_name: b"c".to_vec(),
            replace: false,
        },
        reply: Box::new(Recorded {
            tag: "rename",
            connection: client.clone(),
            access: Access::Trusted,
            flushed: None,
        }),
    };
    run_queued(
        writer,
        vec![rename, add_in(a, "f2", &root.join("c/f2"), &client)],
    );
    let sent = client.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    for (tag, reply) in &sent {
        assert!(reply.is_ok(), "{tag}: {reply:?}");
    }
    let reader = deskd_db::Reader::open(&desktop).unwrap();
    assert_eq!(reader.get(id_of(&sent[1].1)).unwrap().parent, a);
}
