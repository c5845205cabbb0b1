//! SIGKILL under load: every acknowledged create survives, the restart is quick and logs the
//! missing-shutdown line, the desktop passes `PRAGMA integrity_check`; after SIGTERM it does not.

mod common;
use common::*;
use deskd_client::{Request, Response};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An acknowledged create: the ID and the path it was given for.
type Acked = (u32, Vec<u8>);

#[test]
fn sigkill_during_4_concurrent_writers_loses_no_acknowledged_create() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    let vol_root = env.path("vol").canonicalize().unwrap();
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..4 {
        std::fs::create_dir(vol_root.join(format!("t{t}"))).unwrap();
        let (socket, acked, stop, root) = (
            env.socket.clone(),
            acked.clone(),
            stop.clone(),
            vol_root.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut c = deskd_client::Client::connect(&socket, Duration::from_secs(5)).unwrap();
            let vol = c.open_volume(&root).unwrap().vol;
            let mut i = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let rel = format!("t{t}/f{i}");
                std::fs::write(root.join(&rel), b"").unwrap();
                // Pipeline a few requests at a time, as a file server would.
                let req = Request::AddPath {
                    vol,
                    path: rel.clone().into_bytes(),
                    hint: None,
                    type_code: None,
                    creator: None,
                    carried: None,
                };
                match c.call(req) {
                    Ok(Response::Object(o)) => acked.lock().unwrap().push((o.id, rel.into_bytes())),
                    Ok(other) => panic!("unexpected {other:?}"),
                    Err(_) => break, // the server died: this create was never acknowledged
                }
                i += 1;
            }
        }));
    }
    // Kill the server once the load is well under way (creates acknowledged, more in flight).
    common::wait_for_acks(&acked, 200);
    env.kill9();
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "load too small to mean anything: {}",
        acked.len()
    );

    let ready = env.serve(&["vol"]);
    // No rebuild at start (the log lines below say what was found); the bound only catches a
    // start that walks the volume, with room for a loaded CI machine.
    assert!(ready < Duration::from_secs(15), "restart took {ready:?}");
    let log = env.log_text();
    assert!(
        log.contains(&format!("missing DB shutdown:[{}] at ", vol_root.display()))
            && log.contains("recommend rebuild to re-create desktop file"),
        "log: {log}"
    );
    let mut c = env.client();
    let vol = c.open_volume(&vol_root).unwrap().vol;
    for (id, rel) in &acked {
        let o = c.object(Request::Resolve { vol, id: *id }).unwrap();
        assert_eq!(o.path.as_deref(), Some(rel.as_slice()), "ID {id}");
    }
    let db = env.path("vol/.Desktop");
    assert_eq!(sqlite3(&db, "PRAGMA integrity_check"), "ok");

    // A clean stop records the clean flag: no line on the next start.
    env.term();
    assert_eq!(
        sqlite3(&db, "SELECT value FROM meta WHERE key = 'clean'"),
        "1"
    );
    env.serve(&["vol"]);
    assert!(
        !env.log_text().contains("missing DB shutdown"),
        "{}",
        env.log_text()
    );
    env.term();
    assert_eq!(sqlite3(&db, "PRAGMA integrity_check"), "ok");
}

#[test]
fn sigint_also_shuts_down_cleanly() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/a"]);
    env.stop_with(libc::SIGINT);
    let db = env.path("vol/.Desktop");
    assert_eq!(
        sqlite3(&db, "SELECT value FROM meta WHERE key = 'clean'"),
        "1"
    );
    assert!(!env.path("vol/.Desktop-wal").exists(), "flushed and closed");
    assert!(!env.socket.exists(), "socket removed");
}
