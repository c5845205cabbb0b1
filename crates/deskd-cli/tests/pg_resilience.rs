//! A volume served from PostgreSQL (`backend =`, issue 28) under load and under failure,
//! driving the real `deskd` against a real throw-away PostgreSQL (deskd_pg::test_cluster; a
//! machine without PostgreSQL skips, CI fails): two servers with four clients each creating,
//! renaming and deleting for 30 s; the database stopped for 10 s under load; one server
//! SIGKILLed under load; a server started while the database is down; the change log pruned
//! and a server left behind it; many busy client connections against the read pool's cap.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use deskd_client::{ErrorCode, Request, Response};

/// Start `env`'s server again with the config file it was first started with.
fn restart(env: &mut Env) {
    let cfg = env.path("deskd.toml");
    env.start(&["--config", cfg.to_str().unwrap()]);
}

/// What one client of a load did: the objects it was acknowledged and has not deleted (ID,
/// path relative to the root), every ID it was given, the IDs it deleted, and the refusals
/// it saw (code, text), with how many acknowledgements came after the first refusal.
#[derive(Default)]
struct Churned {
    live: HashMap<u32, String>,
    given: Vec<u32>,
    deleted: Vec<u32>,
    refused: Vec<(ErrorCode, String)>,
    acked_after_refusal: usize,
    /// The connection broke (its server was killed): the client stopped.
    cut_off: bool,
    /// The rename or delete in flight when the connection broke: its server may have
    /// committed it before it died, or not, so its ID is checked by neither path (it was
    /// taken out of `live`): its ID, its path before, and after (`None`: deleted).
    in_doubt: Option<(u32, String, Option<String>)>,
}

/// The object's resource file and xattr mirror, as dt and the file servers write them after
/// the server acknowledged (what `deskd rebuild -s` checks beside the desktop).
fn write_record(root: &Path, rel: &str, o: &deskd_client::ObjectInfo) {
    use deskd_volume::rsrc;
    let path = root.join(rel);
    let at = rsrc::rsrc_path(&path).unwrap();
    rsrc::make_rsrc_dir(&at).unwrap();
    let now = deskd_db::now_unix() as u32;
    let header = rsrc::ResourceHeader::new(o.id, o.type_code, o.creator, now);
    rsrc::write_header(&at, &header).unwrap();
    deskd_volume::write_id_xattr(&path, o.id).unwrap();
}

/// Shared progress of a load, for the test to wait on.
#[derive(Default)]
struct Progress {
    acks: AtomicUsize,
    refusals: AtomicUsize,
    acks_after_refusal: AtomicUsize,
    /// Clients that had a write acknowledged after a refusal.
    clients_writable_again: AtomicUsize,
}

/// One client creating (6 in 10), renaming (3 in 10) and, with `deletes`, deleting (1 in 10)
/// files in folder `dir` of the volume through `env`'s server, each change made on disk first
/// and then told to the server, as a file server does. A change refused read-only (or busy)
/// is undone on disk (a refused deletion cannot be: `deletes` is for loads without outages).
fn churn(
    env: &Env,
    root: &Path,
    dir: &str,
    deletes: bool,
    stop: &AtomicBool,
    progress: &Progress,
) -> Churned {
    let mut out = Churned::default();
    let mut c = env.client();
    let vol = c.open_volume(root).unwrap().vol;
    std::fs::create_dir(root.join(dir)).unwrap();
    let dir_object = c.object(add_path(vol, dir.as_bytes().to_vec())).unwrap();
    write_record(root, dir, &dir_object);
    let dir_id = dir_object.id;
    let mut order: Vec<u32> = Vec::new();
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let op = n % 10;
        // (request, what to undo on disk if refused, what to record if acknowledged)
        enum Done {
            Created(String),
            Renamed(u32, String),
            Deleted(u32),
        }
        let (request, undo, done): (Request, Box<dyn FnOnce()>, Done) =
            if op < 6 || order.is_empty() {
                let rel = format!("{dir}/f{n}");
                let path = root.join(&rel);
                std::fs::write(&path, b"").unwrap();
                (
                    add_path(vol, rel.clone().into_bytes()),
                    Box::new(move || std::fs::remove_file(&path).unwrap()),
                    Done::Created(rel),
                )
            } else if op < 9 || !deletes {
                let id = order[n % order.len()];
                let from = root.join(&out.live[&id]);
                let name = format!("r{n}");
                let rel = format!("{dir}/{name}");
                let to = root.join(&rel);
                std::fs::rename(&from, &to).unwrap();
                (
                    Request::Rename {
                        vol,
                        id,
                        new_parent: dir_id,
                        new_name: name.into_bytes(),
                        replace: false,
                    },
                    Box::new(move || std::fs::rename(&to, &from).unwrap()),
                    Done::Renamed(id, rel),
                )
            } else {
                let at = n % order.len();
                let id = order[at];
                std::fs::remove_file(root.join(&out.live[&id])).unwrap();
                (
                    Request::Delete {
                        vol,
                        id,
                        recursive: false,
                    },
                    Box::new(move || panic!("deletion of ID {id} refused")),
                    Done::Deleted(id),
                )
            };
        match c.call(request) {
            Ok(reply) => {
                match done {
                    Done::Created(rel) => {
                        let Response::Object(o) = reply else {
                            panic!("{reply:?}")
                        };
                        assert!(o.created, "{rel}: not new: {o:?}");
                        write_record(root, &rel, &o);
                        out.given.push(o.id);
                        order.push(o.id);
                        out.live.insert(o.id, rel);
                    }
                    Done::Renamed(id, rel) => {
                        // The resource file follows its object (the mirror moved with it).
                        let rsrc = |p: &str| deskd_volume::rsrc::rsrc_path(&root.join(p)).unwrap();
                        std::fs::rename(rsrc(&out.live[&id]), rsrc(&rel)).unwrap();
                        out.live.insert(id, rel);
                    }
                    Done::Deleted(id) => {
                        let rsrc = deskd_volume::rsrc::rsrc_path(&root.join(&out.live[&id]));
                        std::fs::remove_file(rsrc.unwrap()).unwrap();
                        out.live.remove(&id);
                        order.retain(|&o| o != id);
                        out.deleted.push(id);
                    }
                }
                progress.acks.fetch_add(1, Ordering::SeqCst);
                if !out.refused.is_empty() {
                    out.acked_after_refusal += 1;
                    progress.acks_after_refusal.fetch_add(1, Ordering::SeqCst);
                    if out.acked_after_refusal == 1 {
                        progress
                            .clients_writable_again
                            .fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            Err(e) => match e.code() {
                Some(code @ (ErrorCode::ReadOnly | ErrorCode::Busy)) => {
                    undo();
                    out.refused.push((code, e.to_string()));
                    progress.refusals.fetch_add(1, Ordering::SeqCst);
                }
                Some(_) => panic!("{dir}: {e}"),
                None => {
                    // No answer: the server is gone (a test kills one). What was in flight
                    // may or may not have been committed: its object is in doubt.
                    out.cut_off = true;
                    out.in_doubt = match done {
                        Done::Renamed(id, rel) => out.live.remove(&id).map(|p| (id, p, Some(rel))),
                        Done::Deleted(id) => out.live.remove(&id).map(|p| (id, p, None)),
                        Done::Created(_) => None,
                    };
                    return out;
                }
            },
        }
    }
    out
}

/// Resolve every `live` ID (its path expected) and every `deleted` one (gone) through `env`'s
/// server, pipelined.
fn check_through(env: &Env, root: &Path, live: &HashMap<u32, String>, deleted: &[u32]) {
    let mut c = env.client();
    let vol = c.open_volume(root).unwrap().vol;
    let asked: Vec<(u32, Option<&String>)> = live
        .iter()
        .map(|(id, p)| (*id, Some(p)))
        .chain(deleted.iter().map(|id| (*id, None)))
        .collect();
    for window in asked.chunks(64) {
        let sent: Vec<u64> = window
            .iter()
            .map(|(id, _)| c.send(Request::Resolve { vol, id: *id }).unwrap())
            .collect();
        c.flush().unwrap();
        for (request, (id, expected)) in sent.into_iter().zip(window) {
            match (c.wait(request), expected) {
                (Ok(Response::Object(o)), Some(path)) => {
                    assert_eq!(o.path.as_deref(), Some(path.as_bytes()), "ID {id}")
                }
                (Err(e), None) => assert_eq!(e.code(), Some(ErrorCode::NotFound), "ID {id}: {e}"),
                (other, _) => panic!("ID {id} (expected {expected:?}): {other:?}"),
            }
        }
    }
}

/// Every ID given once: none twice, none given again after a deletion.
fn given_once(loads: &[Churned]) -> usize {
    let mut given: Vec<u32> = loads.iter().flat_map(|l| l.given.iter().copied()).collect();
    let n = given.len();
    given.sort_unstable();
    given.dedup();
    assert_eq!(given.len(), n, "an ID was given twice");
    n
}

fn all_live(loads: &[Churned]) -> HashMap<u32, String> {
    loads.iter().flat_map(|l| l.live.clone()).collect()
}

fn all_deleted(loads: &[Churned]) -> Vec<u32> {
    loads
        .iter()
        .flat_map(|l| l.deleted.iter().copied())
        .collect()
}

fn no_errors_logged(env: &Env, whose: &str) {
    let log = env.log_text();
    assert!(!log.contains("panicked"), "{whose}: {log}");
}

#[test]
fn two_servers_four_clients_each_create_rename_and_delete_for_30_s_and_agree() {
    let Some((_cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let defaults = backend_lines(&url, &pw);
    let mut a = Env::new(&["vol"]);
    let root = std::fs::canonicalize(a.path("vol")).unwrap();
    a.serve_with_defaults("vol", &defaults);
    let mut b = second_server(&root, &defaults, &[]);

    let stop = AtomicBool::new(false);
    let progress = Progress::default();
    let began = Instant::now();
    let loads: Vec<Churned> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let env = if i % 2 == 0 { &a } else { &b };
                let (root, stop, progress) = (&root, &stop, &progress);
                s.spawn(move || churn(env, root, &format!("c{i}"), true, stop, progress))
            })
            .collect();
        // The 30 s of load.
        while began.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::SeqCst);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let changes = progress.acks.load(Ordering::SeqCst);
    let given = given_once(&loads);
    let (live, deleted) = (all_live(&loads), all_deleted(&loads));
    eprintln!(
        "30 s: {changes} changes acknowledged ({:.0}/s), {given} IDs given, {} live, {} deleted",
        changes as f64 / 30.0,
        live.len(),
        deleted.len()
    );
    // Nothing refused but `Busy` (a batch that waited longer than busy_wait for the other
    // server's row lock, on a loaded machine: the client tries again; undone on disk).
    for load in &loads {
        assert!(!load.cut_off);
        let other: Vec<_> = (load.refused.iter())
            .filter(|(code, _)| *code != ErrorCode::Busy)
            .collect();
        assert!(other.is_empty(), "{other:?}");
        if !load.refused.is_empty() {
            eprintln!("busy: {:?}", load.refused.first());
        }
    }
    assert!(given > 100 && !deleted.is_empty(), "load too small");
    for env in [&a, &b] {
        check_through(env, &root, &live, &deleted);
        no_errors_logged(env, "server");
        assert!(!env.log_text().contains(" ERROR "), "{}", env.log_text());
    }
    // Both servers' name indexes have every name (B's find of A's clients' and back).
    for (env, i) in [(&a, 1), (&b, 0)] {
        let (id, path) = loads[i].live.iter().next().unwrap();
        let name = path.rsplit('/').next().unwrap();
        let began = Instant::now();
        let want = format!("{}/{path}", root.display());
        while !env
            .deskd_ok(&["find", "--exact", name])
            .lines()
            .any(|l| l == want)
        {
            assert!(
                began.elapsed() < Duration::from_secs(15),
                "ID {id}: {want} not found"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // `deskd rebuild -s` agrees with the desktop: moved back to SQLite (every server
    // stopped first) and scanned offline.
    a.term();
    b.term();
    let out = std::process::Command::new(DESKD)
        .arg("migrate")
        .arg(&root)
        .args(["--from", &url, "--to", "sqlite", "--password-file"])
        .arg(&pw)
        .output()
        .unwrap();
    assert!(out.status.success(), "migrate: {}", stderr(&out));
    let out = std::process::Command::new(DESKD)
        .args(["rebuild", "-s"])
        .arg(&root)
        .output()
        .unwrap();
    let said = stdout(&out);
    assert!(out.status.success(), "rebuild -s: {said}{}", stderr(&out));
    // Clean: no difference listed (at most its summary line).
    assert!(
        said.lines().all(|l| l.starts_with("rebuild ")),
        "rebuild -s: {said}"
    );
}

#[test]
fn the_database_stopped_for_10_s_under_load_makes_clients_see_read_only_then_writable() {
    let Some((mut cluster, mut a, mut b, root, _defaults)) = two_servers_pg("desk") else {
        return;
    };

    let stop = AtomicBool::new(false);
    let progress = Progress::default();
    let mut outage = Duration::ZERO;
    let loads: Vec<Churned> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let env = if i % 2 == 0 { &a } else { &b };
                let (root, stop, progress) = (&root, &stop, &progress);
                s.spawn(move || churn(env, root, &format!("c{i}"), false, stop, progress))
            })
            .collect();
        wait_until(Duration::from_secs(30), "acknowledgements", || {
            progress.acks.load(Ordering::SeqCst) >= 200
        });
        cluster.stop();
        let stopped = Instant::now();
        wait_until(Duration::from_secs(30), "refusals", || {
            progress.refusals.load(Ordering::SeqCst) >= 4
        });
        // Status says why, on both servers.
        for env in [&a, &b] {
            let status = env.status_json();
            assert_eq!(status["read_only"], true, "{status}");
            let why = status["read_only_reason"].as_str().unwrap();
            assert!(why.contains("database unreachable"), "{why}");
        }
        // The 10 s, counted from the stop.
        while stopped.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(100));
        }
        outage = stopped.elapsed();
        cluster.restart();
        let restarted = Instant::now();
        // Every client, each server reconnecting on its own back-off: the first server back
        // may give its clients the 40 acknowledgements before the other is.
        wait_until(Duration::from_secs(60), "writable again", || {
            progress.acks_after_refusal.load(Ordering::SeqCst) >= 40
                && progress.clients_writable_again.load(Ordering::SeqCst) >= 4
        });
        eprintln!(
            "database down {outage:?}; writable {:?} after it started again",
            restarted.elapsed()
        );
        stop.store(true, Ordering::SeqCst);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Every client saw read-only, then had writes acknowledged again; refusals were read-only
    // (or busy, for a read the database could not answer), never a broken connection.
    for (i, load) in loads.iter().enumerate() {
        assert!(!load.cut_off, "client {i}");
        assert!(!load.refused.is_empty(), "client {i} saw no refusal");
        assert!(
            load.refused
                .iter()
                .any(|(code, text)| *code == ErrorCode::ReadOnly
                    && text.contains("database is unreachable")),
            "client {i}: {:?}",
            load.refused.first()
        );
        assert!(
            load.acked_after_refusal > 0,
            "client {i} never writable again"
        );
    }
    // Nothing acknowledged lost, through either server; no ID twice; no server exited.
    given_once(&loads);
    let live = all_live(&loads);
    for env in [&mut a, &mut b] {
        check_through(env, &root, &live, &[]);
        assert!(env.server.as_mut().unwrap().try_wait().unwrap().is_none());
        let status = env.status_json();
        assert_eq!(status["read_only"], false, "{status}");
        let log = env.log_text();
        assert!(log.contains("database unreachable"), "{log}");
        assert!(log.contains("database reachable again"), "{log}");
        no_errors_logged(env, "server");
    }
}

#[test]
fn a_server_sigkilled_under_load_leaves_the_other_serving_and_catches_up_when_restarted() {
    let Some((_cluster, mut a, b, root, _defaults)) = two_servers_pg("desk") else {
        return;
    };

    let stop = AtomicBool::new(false);
    let progress = Progress::default();
    let a_pid = a.server.as_ref().unwrap().id();
    let mut b_acks_after_kill = 0;
    let loads: Vec<Churned> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let env = if i % 2 == 0 { &a } else { &b };
                let (root, stop, progress) = (&root, &stop, &progress);
                s.spawn(move || churn(env, root, &format!("c{i}"), true, stop, progress))
            })
            .collect();
        wait_until(Duration::from_secs(30), "acknowledgements", || {
            progress.acks.load(Ordering::SeqCst) >= 300
        });
        // SAFETY: signalling our own child (`a` is borrowed by its clients meanwhile).
        unsafe { libc::kill(a_pid as i32, libc::SIGKILL) };
        let at_kill = progress.acks.load(Ordering::SeqCst);
        // B's clients go on: 300 more acknowledgements (A's clients are cut off).
        wait_until(Duration::from_secs(30), "B serving", || {
            progress.acks.load(Ordering::SeqCst) >= at_kill + 300
        });
        b_acks_after_kill = progress.acks.load(Ordering::SeqCst) - at_kill;
        stop.store(true, Ordering::SeqCst);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    a.kill9();
    for (i, load) in loads.iter().enumerate() {
        assert_eq!(load.cut_off, i % 2 == 0, "client {i}");
        assert!(load.refused.is_empty(), "client {i}: {:?}", load.refused);
    }
    eprintln!("{b_acks_after_kill} changes through B after A was killed");
    given_once(&loads);
    // What A's clients were acknowledged before the kill, and B's, through B.
    let (mut live, deleted) = (all_live(&loads), all_deleted(&loads));
    check_through(&b, &root, &live, &deleted);
    // A change in flight when A died was committed or not, never half: its ID has its path
    // from before or from after.
    for (id, before, after) in loads.iter().filter_map(|l| l.in_doubt.as_ref()) {
        let mut c = b.client();
        let vol = c.open_volume(&root).unwrap().vol;
        match (c.call(Request::Resolve { vol, id: *id }), after) {
            (Ok(Response::Object(o)), after) => {
                let path = o.path.unwrap_or_default();
                assert!(
                    path == before.as_bytes()
                        || after.as_ref().is_some_and(|a| path == a.as_bytes()),
                    "ID {id} in doubt: {:?} is neither {before} nor {after:?}",
                    String::from_utf8_lossy(&path)
                );
            }
            (Err(e), None) => assert_eq!(e.code(), Some(ErrorCode::NotFound), "ID {id}: {e}"),
            (other, _) => panic!("ID {id} in doubt ({before} -> {after:?}): {other:?}"),
        }
    }

    // A restarted: it answers for everything, made while it was down too, its find included;
    // and both go on giving IDs without a clash.
    restart(&mut a);
    check_through(&a, &root, &live, &deleted);
    let made_while_down = loads[1].live.values().max_by_key(|p| p.len()).unwrap();
    let name = made_while_down.rsplit('/').next().unwrap();
    let want = format!("{}/{made_while_down}", root.display());
    let began = Instant::now();
    while !a
        .deskd_ok(&["find", "--exact", name])
        .lines()
        .any(|l| l == want)
    {
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "{want} not found through A"
        );
    }
    let mut ids = Vec::new();
    for env in [&a, &b] {
        let mut c = env.client();
        let vol = c.open_volume(&root).unwrap().vol;
        for i in 0..20 {
            let rel = format!("after-{}-{i}", ids.len());
            std::fs::write(root.join(&rel), b"").unwrap();
            let o = c.object(add_path(vol, rel.clone().into_bytes())).unwrap();
            ids.push(o.id);
            live.insert(o.id, rel);
        }
    }
    let mut all: Vec<u32> = loads.iter().flat_map(|l| l.given.clone()).collect();
    all.extend(&ids);
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), n, "an ID given twice");
    check_through(&a, &root, &live, &deleted);
    no_errors_logged(&a, "A");
    no_errors_logged(&b, "B");
}

#[test]
fn a_server_started_while_the_database_is_down_serves_read_only_until_it_is_reachable() {
    let Some((mut cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let mut env = Env::new(&["vol"]);
    let root = std::fs::canonicalize(env.path("vol")).unwrap();
    std::fs::create_dir(root.join("docs")).unwrap();
    std::fs::write(root.join("docs/first.txt"), b"").unwrap();
    cluster.stop();
    // The server starts and serves the volume, read-only, and says why.
    env.serve_with_defaults("vol", &backend_lines(&url, &pw));
    let status = env.status_json();
    assert_eq!(status["read_only"], true, "{status}");
    let why = status["read_only_reason"].as_str().unwrap();
    assert!(why.contains("database unreachable"), "{why}");
    let text = env.deskd_ok(&["status"]);
    assert!(text.contains("database unreachable"), "{text}");
    // No counts to read: said, not shown as 0 (which looks like a lost desktop).
    assert!(
        text.contains("objects:      unknown (the database is unreachable)"),
        "{text}"
    );
    let mut c = env.client();
    let vol = c.open_volume(&root).unwrap().vol;
    let add = || add_path(vol, b"docs/first.txt".to_vec());
    let refused = c.object(add()).unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::ReadOnly), "{refused}");
    assert!(
        refused.to_string().contains("database is unreachable"),
        "{refused}"
    );
    // A read is answered (busy: try again), not left waiting.
    let busy = c.object(Request::Resolve { vol, id: 2 }).unwrap_err();
    assert_eq!(busy.code(), Some(ErrorCode::Busy), "{busy}");
    let log = env.log_text();
    assert!(log.contains("database unreachable at start"), "{log}");

    // The database comes up: the writer opens the volume (made in the database now), the
    // name index loads, writes go through.
    cluster.restart();
    env.wait_for_log("volume open (the database is reachable)", 1);
    let began = Instant::now();
    let first = loop {
        match c.object(add()) {
            Ok(o) => break o,
            Err(e) if e.code() == Some(ErrorCode::ReadOnly) => {
                assert!(began.elapsed() < Duration::from_secs(30), "{e}")
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(first.id, 18, "docs is 17, then its file: {first:?}");
    let status = env.status_json();
    assert_eq!(status["read_only"], false, "{status}");
    env.wait_for_log("name index ready", 1);
    let found = env.deskd_ok(&["find", "first"]);
    assert_eq!(
        found.trim(),
        format!("{}/docs/first.txt", root.display()),
        "{found}"
    );
    assert!(env.server.as_mut().unwrap().try_wait().unwrap().is_none());
    no_errors_logged(&env, "server");
}

#[test]
fn the_change_log_is_pruned_and_a_server_left_behind_it_loads_its_index_again() {
    let Some((cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let defaults = backend_lines(&url, &pw);
    // Keep 50 batches (pruned every 5) instead of 10,000 (every 1,000).
    let keep = [("DESKD_TEST_PG_CHANGES_KEEP", "50")];
    let mut a = Env::new(&["vol"]);
    a.server_env = vec![(keep[0].0.into(), keep[0].1.into())];
    let root = std::fs::canonicalize(a.path("vol")).unwrap();
    a.serve_with_defaults("vol", &defaults);
    let b = second_server(&root, &defaults, &keep);
    let mut admin = cluster.admin("desk");
    let logged = |admin: &mut postgres::Client| -> (i64, i64) {
        let row = admin
            .query_one(
                "SELECT count(DISTINCT seq), count(*) FROM deskd.changes",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };

    // One batch a request: 300 batches through A.
    let batches = |env: &Env, from: usize, n: usize| {
        let mut c = env.client();
        let vol = c.open_volume(&root).unwrap().vol;
        for i in from..from + n {
            let rel = format!("f{i}");
            std::fs::write(root.join(&rel), b"").unwrap();
            c.object(add_path(vol, rel.into_bytes())).unwrap();
        }
    };
    batches(&a, 0, 300);
    let (kept, rows) = logged(&mut admin);
    assert!(kept <= 55, "{kept} batches in the log ({rows} rows)");
    assert!(kept >= 50, "{kept} batches in the log: pruned too far");
    a.wait_for_log("change log pruned", 1);
    // B followed all along: its find has the newest name.
    let last = format!("{}/f299", root.display());
    let began = Instant::now();
    while b.deskd_ok(&["find", "--exact", "f299"]).trim() != last {
        assert!(began.elapsed() < Duration::from_secs(15));
        std::thread::sleep(Duration::from_millis(50));
    }

    // B stopped (not killed): A makes 200 batches and renames one file meanwhile, so the log
    // no longer holds the batches B has not seen.
    let b_pid = b.server.as_ref().unwrap().id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(b_pid, libc::SIGSTOP) };
    let f5 = a.id_of(&root.join("f5"));
    std::fs::rename(root.join("f5"), root.join("renamed-while-b-slept")).unwrap();
    let mut c = a.client();
    let vol = c.open_volume(&root).unwrap().vol;
    c.call(Request::Rename {
        vol,
        id: f5,
        new_parent: 2,
        new_name: b"renamed-while-b-slept".to_vec(),
        replace: false,
    })
    .unwrap();
    batches(&a, 300, 200);
    let (kept, _) = logged(&mut admin);
    assert!(kept <= 55, "{kept}");
    // With 50 batches kept, B may have fallen behind once already while following the
    // first 300 (on a loaded machine): the reload awaited is the one after this.
    let reloads = b.log_text().matches("name index loaded again").count();
    // SAFETY: as above.
    unsafe { libc::kill(b_pid, libc::SIGCONT) };
    let log = wait_for_count(&b.log, "name index loaded again", reloads + 1, "B");
    assert!(
        log.contains("further behind than the change log keeps"),
        "{log}"
    );
    let want = format!("{}/renamed-while-b-slept", root.display());
    assert_eq!(
        b.deskd_ok(&["find", "--exact", "renamed-while-b-slept"])
            .trim(),
        want
    );
    let (in_a, in_b) = (
        a.deskd_ok(&["find", "--exact", "f5"]),
        b.deskd_ok(&["find", "--exact", "f5"]),
    );
    assert!(
        in_a.trim().is_empty() && in_b.trim().is_empty(),
        "A: {in_a} B: {in_b}"
    );
    let last = format!("{}/f499", root.display());
    assert_eq!(b.deskd_ok(&["find", "--exact", "f499"]).trim(), last);
    no_errors_logged(&a, "A");
    no_errors_logged(&b, "B");
}

#[test]
fn many_busy_client_connections_do_not_use_up_the_databases_connections() {
    let Some((cluster, env, root, _config)) = served_pg("desk") else {
        return;
    };
    env.dt_ok(&[b"touch", b"vol/a.txt"]);
    let id = env.id_of(&root.join("a.txt"));
    env.wait_for_log("name index ready", 1);
    let sessions = || -> i64 {
        cluster
            .admin("desk")
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'desk' \
                 AND application_name LIKE 'deskd serve %'",
                &[],
            )
            .unwrap()
            .get(0)
    };
    // 48 connections, each with 200 reads in flight at a time, for 3 s.
    const CLIENTS: usize = 48;
    let stop = AtomicBool::new(false);
    let answered = AtomicUsize::new(0);
    let most = Mutex::new(0i64);
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            s.spawn(|| {
                let mut c = env.client();
                let vol = c.open_volume(&root).unwrap().vol;
                while !stop.load(Ordering::SeqCst) {
                    let sent: Vec<u64> = (0..200)
                        .map(|_| c.send(Request::Resolve { vol, id }).unwrap())
                        .collect();
                    c.flush().unwrap();
                    for request in sent {
                        match c.wait(request) {
                            Ok(Response::Object(o)) => assert_eq!(o.id, id),
                            other => panic!("{other:?}"),
                        }
                    }
                    answered.fetch_add(200, Ordering::SeqCst);
                }
            });
        }
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(3) {
            let n = sessions();
            let mut most = most.lock().unwrap();
            *most = (*most).max(n);
        }
        stop.store(true, Ordering::SeqCst);
    });
    let most = most.into_inner().unwrap();
    eprintln!(
        "{} reads answered for {CLIENTS} connections; at most {most} PostgreSQL sessions",
        answered.load(Ordering::SeqCst)
    );
    // The 16 lent readers, the writer and the follower's two; the loader and the check
    // were done before.
    assert!(most <= 16 + 3, "{most} sessions");
    // Given back: idle ones stay (16 at most) beside the writer's and the follower's.
    let after = sessions();
    assert!(after <= 16 + 3, "{after}");

    // 40 connections that each send a read and then half of the next frame, and stay silent:
    // none keeps a read connection while it waits for the rest (up to frame_timeout, 10 s),
    // and another client is answered at once meanwhile.
    let vol = env.client().open_volume(&root).unwrap().vol;
    let silent: Vec<std::os::unix::net::UnixStream> = (0..40)
        .map(|i| {
            use std::io::{Read, Write};
            let mut s = std::os::unix::net::UnixStream::connect(&env.socket).unwrap();
            deskd_proto::transport::client_handshake(&s, None).unwrap();
            let mut bytes = Vec::new();
            let frame = deskd_proto::RequestFrame {
                id: 1,
                request: Request::Resolve { vol, id },
            };
            deskd_proto::write_frame(&mut bytes, &frame).unwrap();
            bytes.extend_from_slice(&40u32.to_be_bytes());
            bytes.extend_from_slice(&[0u8; 20]);
            s.write_all(&bytes).unwrap();
            // The read's answer came: the server read the half frame behind it too.
            let mut len = [0u8; 4];
            s.read_exact(&mut len).unwrap();
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut body).unwrap();
            assert!(i < 40);
            s
        })
        .collect();
    let held = sessions();
    let began = Instant::now();
    let mut c = env.client();
    let vol = c.open_volume(&root).unwrap().vol;
    assert_eq!(c.object(Request::Resolve { vol, id }).unwrap().id, id);
    let waited = began.elapsed();
    eprintln!(
        "{held} sessions with 40 connections each half-way through a frame; a read {waited:?}"
    );
    assert!(held <= 16 + 3, "{held} sessions held by silent connections");
    // Behind the silent connections it would wait for their frame_timeout (10 s).
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    drop(silent);
    no_errors_logged(&env, "server");
}

/// An opening (`OpenVolume`) is told whether a PostgreSQL volume is writable from the
/// follower's last answered catch-up (within 2 s: no read of its own), else from a read. With
/// all 16 read connections lent that check was skipped and the volume said writable whatever
/// the database did. Here every lent read, and the follower, wait on a lock an admin session
/// holds on the desktop's tables (a hung database): once the follower has not been answered
/// for 5 s an opening is told read-only, though no read connection is free to ask with; when
/// the lock goes, writable again.
#[test]
fn an_opening_with_every_read_connection_lent_is_told_read_only_when_the_database_hangs() {
    let Some((cluster, env, root, _config)) = served_pg("desk") else {
        return;
    };
    env.dt_ok(&[b"touch", b"vol/a.txt"]);
    let id = env.id_of(&root.join("a.txt"));
    env.wait_for_log("name index ready", 1);
    // One connection asking again and again (an opening holds no read connection).
    let asker = Mutex::new(env.client());
    let opening = || asker.lock().unwrap().open_volume(&root).unwrap().read_only;
    assert!(!opening());
    let mut admin = cluster.admin("desk");
    let mut lock = admin.transaction().unwrap();
    lock.batch_execute("LOCK TABLE deskd.objects, deskd.changes IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let waiting = || -> i64 {
        cluster
            .admin("desk")
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'desk' \
                 AND application_name LIKE 'deskd serve %' AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get(0)
    };
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                let mut c =
                    deskd_client::Client::connect(&env.socket, Duration::from_secs(60)).unwrap();
                let vol = c.open_volume(&root).unwrap().vol;
                // An ID never given: not in the server's read cache, so read from the
                // database (waiting on the lock); answered once the lock goes.
                let missing = c.object(Request::Resolve {
                    vol,
                    id: id + 100_000,
                });
                assert_eq!(missing.unwrap_err().code(), Some(ErrorCode::NotFound));
            });
        }
        // The 16 lent reads and the follower's catch-up wait on the lock.
        wait_until(Duration::from_secs(20), "17 sessions waiting", || {
            waiting() >= 17
        });
        wait_until(
            Duration::from_secs(20),
            "an opening told read-only",
            opening,
        );
        lock.rollback().unwrap();
    });
    wait_until(Duration::from_secs(20), "an opening told writable", || {
        !opening()
    });
    env.dt_ok(&[b"touch", b"vol/b.txt"]);
}

/// Wait (polling) until `done`, at most `limit`; `what` names it in the failure.
fn wait_until(limit: Duration, what: &str, done: impl Fn() -> bool) {
    let began = Instant::now();
    while !done() {
        assert!(began.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn offline_tools_keep_off_a_volume_whose_desktop_is_in_postgresql() {
    let Some((_cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let mut env = Env::new(&["vol"]);
    let root = std::fs::canonicalize(env.path("vol")).unwrap();
    env.serve_with_defaults("vol", &backend_lines(&url, &pw));
    env.dt_ok(&[b"touch", b"vol/kept.txt"]);
    let kept = env.id_of(&root.join("kept.txt"));
    // The root is marked.
    assert_eq!(
        deskd_volume::desktop_backend(&root).as_deref(),
        Some("postgresql")
    );
    let deskd = |args: &[&std::ffi::OsStr]| {
        // No --socket: the default socket, where no server answers for this volume.
        std::process::Command::new(DESKD)
            .args(args)
            .env_remove("DESKD_SOCKET")
            .output()
            .unwrap()
    };
    let refused = |out: &std::process::Output, what: &str| {
        let said = stderr(out);
        assert!(!out.status.success(), "{what}: {}", stdout(out));
        assert!(said.contains("desktop is in postgresql"), "{what}: {said}");
    };
    // An offline rebuild, to scan or to make a new desktop, is refused and makes no file.
    for flag in ["-s", "-f"] {
        let out = deskd(&["rebuild".as_ref(), flag.as_ref(), root.as_os_str()]);
        refused(&out, flag);
        assert!(!root.join(".Desktop").exists(), "{flag} made a desktop");
    }
    // An SQLite server of it is refused.
    let other = Env::new(&[]);
    let out = other.serve_refused(&other.path("s.sock"), &[root.to_str().unwrap()]);
    refused(&out, "serve");
    assert!(stderr(&out).contains("set backend ="), "{}", stderr(&out));
    assert!(!root.join(".Desktop").exists());
    // Into PostgreSQL again: refused (a `.Desktop` beside it would be stale).
    let migrate = |args: &[&str]| {
        std::process::Command::new(DESKD)
            .arg("migrate")
            .arg(&root)
            .args(args)
            .arg("--password-file")
            .arg(&pw)
            .output()
            .unwrap()
    };
    refused(&migrate(&["--to", &url]), "migrate --to postgresql");
    // Out of the database while it is served: refused, nothing written.
    let out = migrate(&["--from", &url, "--to", "sqlite"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is being served from the database by deskd serve"),
        "{}",
        stderr(&out)
    );
    assert!(!root.join(".Desktop").exists());

    // With no server: dt does not work on the files as if they were outside a volume.
    env.term();
    let out = env.dt(&[b"rm", b"vol/kept.txt"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(root.join("kept.txt").exists());
    // Moved back to SQLite: the mark goes, the offline tools work again, the ID is kept.
    let out = migrate(&["--from", &url, "--to", "sqlite"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(deskd_volume::desktop_backend(&root), None);
    let out = deskd(&["rebuild".as_ref(), "-s".as_ref(), root.as_os_str()]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).lines().all(|l| l.starts_with("rebuild ")),
        "{}",
        stdout(&out)
    );
    env.serve(&["vol"]);
    assert_eq!(env.id_of(&root.join("kept.txt")), kept);
}

#[test]
fn a_migrated_volume_keeping_its_old_desktop_starts_read_only_while_the_database_is_down() {
    let Some((mut cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let mut env = Env::new(&["vol"]);
    let root = std::fs::canonicalize(env.path("vol")).unwrap();
    // Served from SQLite, then moved into the database: the old .Desktop stays (as documented).
    env.serve(&["vol"]);
    env.dt_ok(&[b"mkdir", b"-p", b"vol/docs/2026"]);
    env.term();
    env.deskd_ok(&[
        "migrate",
        root.to_str().unwrap(),
        "--to",
        &url,
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    assert!(root.join(".Desktop").exists());
    cluster.stop();
    // Not taken for a forgotten migration (that check needs the database): served read-only.
    env.serve_with_defaults("vol", &backend_lines(&url, &pw));
    let status = env.status_json();
    assert_eq!(status["read_only"], true, "{status}");
    cluster.restart();
    env.wait_for_log("volume open (the database is reachable)", 1);
}
