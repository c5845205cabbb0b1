//! `deskd serve` with a volume's desktop in PostgreSQL (`backend =`, issue 28), driving the
//! real `deskd` and `dt` against a real throw-away PostgreSQL (deskd_pg::test_cluster; a
//! machine without PostgreSQL skips, CI fails): writes through `dt` and the client, reads
//! from the database, `deskd find` from the name index, status naming the back end, and every
//! ID still there after a restart.

mod common;

use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use common::*;
use deskd_client::{ErrorCode, Request, Response};
use deskd_pg::test_cluster::TestCluster;

fn lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn a_volume_served_from_postgresql_answers_and_keeps_its_ids_across_a_restart() {
    let Some((cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let mut env = Env::new(&["vol"]);
    let root = std::fs::canonicalize(env.path("vol")).unwrap();
    let defaults = backend_lines(&url, &pw);
    env.serve_with_defaults("vol", &defaults);

    // Status names the database, not a file; no SQLite desktop is made.
    let status = env.status_json();
    let desktop = status["desktop"].as_str().unwrap().to_string();
    assert!(
        desktop.starts_with("postgresql deskd_test@127.0.0.1:"),
        "{desktop}"
    );
    assert!(desktop.contains(&format!("volume {:?}", root.display().to_string())));
    assert!(
        !root.join(".Desktop").exists(),
        "an SQLite desktop was made"
    );
    assert!(!root.join(".Desktop-wal").exists());
    assert_eq!(status["read_only"], false, "{status}");

    // Folders and files through dt: IDs from 17, lookup-or-add.
    env.dt_ok(&[b"mkdir", b"-p", b"vol/Projects/2024"]);
    env.dt_ok(&[
        b"touch",
        b"vol/Projects/2024/Report Final.PDF",
        b"vol/Projects/notes.txt",
        b"vol/Projects/2024/old.txt",
    ]);
    let projects = env.id_of(&root.join("Projects"));
    let year = env.id_of(&root.join("Projects/2024"));
    let report = env.id_of(&root.join("Projects/2024/Report Final.PDF"));
    let notes = env.id_of(&root.join("Projects/notes.txt"));
    let old = env.id_of(&root.join("Projects/2024/old.txt"));
    let mut all = vec![projects, year, report, notes, old];
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 5, "five objects, five IDs");
    assert_eq!(projects, 17, "the first ID");
    assert_eq!(
        env.id_of(&root.join("Projects/notes.txt")),
        notes,
        "asked again"
    );

    // The client: Add by parent and name, resolve, lookup, children.
    let mut c = env.client();
    let vol = c.open_volume(&root).unwrap().vol;
    std::fs::write(root.join("Projects/added.txt"), b"x").unwrap();
    let meta = std::fs::metadata(root.join("Projects/added.txt")).unwrap();
    let added = {
        use std::os::unix::fs::MetadataExt;
        c.object(Request::Add {
            vol,
            parent: projects,
            name: b"added.txt".to_vec(),
            dev: meta.dev(),
            ino: meta.ino(),
            hint: None,
            type_code: None,
            creator: None,
            carried: None,
        })
        .unwrap()
    };
    assert!(added.created && added.id > old, "{added:?}");
    let resolved = c.object(Request::Resolve { vol, id: report }).unwrap();
    assert_eq!(
        resolved.path.as_deref(),
        Some(&b"Projects/2024/Report Final.PDF"[..])
    );
    let looked = c
        .maybe_object(Request::Lookup {
            vol,
            parent: projects,
            name: b"notes.txt".to_vec(),
        })
        .unwrap()
        .expect("registered");
    assert_eq!(looked.id, notes);
    let children: Vec<Vec<u8>> = c
        .objects(Request::Children { vol, dir: projects })
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(
        children,
        [&b"2024"[..], b"added.txt", b"notes.txt"].map(|n| n.to_vec())
    );

    // Rename in place and move: the IDs stay.
    env.dt_ok(&[
        b"mv",
        b"vol/Projects/notes.txt",
        b"vol/Projects/2024/minutes.txt",
    ]);
    env.dt_ok(&[b"mv", b"vol/Projects/2024", b"vol/Projects/Year 2024"]);
    assert_eq!(
        env.id_of(&root.join("Projects/Year 2024/minutes.txt")),
        notes
    );
    assert_eq!(env.id_of(&root.join("Projects/Year 2024")), year);
    let resolved = c.object(Request::Resolve { vol, id: report }).unwrap();
    assert_eq!(
        resolved.path.as_deref(),
        Some(&b"Projects/Year 2024/Report Final.PDF"[..])
    );

    // A comment, through dt and read back through the client.
    env.dt_ok(&[
        b"set",
        b"--comment",
        b"minutes of the meeting",
        b"vol/Projects/Year 2024/minutes.txt",
    ]);
    match c.call(Request::CommentGet { vol, id: notes }).unwrap() {
        Response::Comment(text) => {
            assert_eq!(text.as_deref(), Some(&b"minutes of the meeting"[..]))
        }
        other => panic!("{other:?}"),
    }

    // Delete: the ID is gone and never handed out again.
    env.dt_ok(&[b"rm", b"vol/Projects/Year 2024/old.txt"]);
    let gone = c.object(Request::Resolve { vol, id: old }).unwrap_err();
    assert_eq!(gone.code(), Some(ErrorCode::NotFound), "{gone}");

    // find answers from the name index, the renames in it at once.
    let find = |env: &Env, pattern: &str| lines(&env.deskd_ok(&["find", pattern]));
    let r = root.display();
    assert_eq!(
        find(&env, "minutes"),
        vec![format!("{r}/Projects/Year 2024/minutes.txt")]
    );
    assert!(find(&env, "notes").is_empty());
    assert!(find(&env, "old.txt").is_empty());
    assert_eq!(
        find(&env, "REPORT"),
        vec![format!("{r}/Projects/Year 2024/Report Final.PDF")]
    );
    // The metrics answer too (no WAL, no mapping of a file that is not there).
    let metrics = env.deskd_ok(&["metrics"]);
    assert!(metrics.contains("deskd_"), "{metrics}");
    let status = env.status_json();
    // The root and five objects, as an SQLite desktop counts them.
    assert_eq!(status["objects"], 6, "{status}");
    drop(c);

    // Client connections borrow a read connection only while they have requests to answer:
    // 24 of them open at once, each idle after a read, do not make 24 PostgreSQL sessions.
    let clients: Vec<_> = (0..24)
        .map(|_| {
            let mut c = env.client();
            let vol = c.open_volume(&root).unwrap().vol;
            c.object(Request::Resolve { vol, id: report }).unwrap();
            c
        })
        .collect();
    let sessions: i64 = cluster
        .admin("desk")
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'desk' \
             AND application_name LIKE 'deskd serve %'",
            &[],
        )
        .unwrap()
        .get(0);
    // The writer, the follower's two, a few lent or idle readers.
    assert!(
        sessions < 10,
        "{sessions} sessions for 24 idle client connections"
    );
    drop(clients);

    // The rows are in the database, under the volume's name and the identity stamped on its
    // root.
    let identity = xattr_identity(&root);
    let mut admin = cluster.admin("desk");
    let row = admin
        .query_one(
            "SELECT v.identity, count(o.id) FROM deskd.volume v JOIN deskd.objects o \
             USING (vid) WHERE v.name = $1 GROUP BY v.identity",
            &[&root.display().to_string()],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0) as u64, identity);
    // The root and five objects.
    assert_eq!(row.get::<_, i64>(1), 6);

    let log = env.log_text();
    assert!(log.contains("stamped on the root"), "{log}");
    assert!(!log.contains(" WARN ") && !log.contains(" ERROR "), "{log}");

    // Restart: every ID is still there, find too, and new IDs go on above the old ones.
    env.term();
    env.serve_with_defaults("vol", &defaults);
    assert_eq!(xattr_identity(&root), identity, "the same identity");
    assert_eq!(
        env.id_of(&root.join("Projects/Year 2024/minutes.txt")),
        notes
    );
    assert_eq!(
        env.id_of(&root.join("Projects/Year 2024/Report Final.PDF")),
        report
    );
    assert_eq!(env.id_of(&root.join("Projects/added.txt")), added.id);
    assert_eq!(env.id_of(&root.join("Projects")), projects);
    assert_eq!(
        find(&env, "minutes"),
        vec![format!("{r}/Projects/Year 2024/minutes.txt")]
    );
    env.dt_ok(&[b"touch", b"vol/after.txt"]);
    assert!(env.id_of(&root.join("after.txt")) > added.id);
    let mut c = env.client();
    let vol = c.open_volume(&root).unwrap().vol;
    match c.call(Request::CommentGet { vol, id: notes }).unwrap() {
        Response::Comment(text) => {
            assert_eq!(text.as_deref(), Some(&b"minutes of the meeting"[..]))
        }
        other => panic!("{other:?}"),
    }
    let gone = c.object(Request::Resolve { vol, id: old }).unwrap_err();
    assert_eq!(gone.code(), Some(ErrorCode::NotFound), "{gone}");
    // Still no SQLite desktop.
    assert!(!root.join(".Desktop").exists());
    let status = env.deskd_ok(&["status"]);
    assert!(status.contains("desktop:      postgresql "), "{status}");
    // Nothing waits to be flushed on PostgreSQL; status says so, then when a flush was asked
    // (it said `never` after one: newcomer review of stop 43).
    assert!(
        status.contains("last flush:   none asked (each batch is committed in the database)"),
        "{status}"
    );
    env.deskd_ok(&["flush"]);
    let flushed = env.deskd_ok(&["status"]);
    assert!(
        !flushed.contains("last flush:   none asked") && !flushed.contains("last flush:   never"),
        "{flushed}"
    );
    // No WAL of deskd's for a desktop in PostgreSQL (it printed `WAL: 0 bytes`).
    assert!(!status.contains("  WAL:"), "{status}");
    // Nor mappings or SQLite page caches: its memory line gives the name index alone (it
    // spoke of a 0-byte desktop's mappings and SQLite connections).
    let memory = status
        .lines()
        .find(|l| l.starts_with("  memory:"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(
        memory.contains("name index") && !memory.contains("mapped (") && !memory.contains("SQLite"),
        "{memory}"
    );
    // The index loads in the background after the restart: waited for, not assumed (it was
    // not yet in the log once at load 6).
    env.wait_for_log("name index ready", 1);
    let log = env.log_text();
    assert!(!log.contains(" WARN ") && !log.contains(" ERROR "), "{log}");
}

/// The identity `deskd serve` stamped on a PostgreSQL volume's root.
fn xattr_identity(root: &Path) -> u64 {
    let path = std::ffi::CString::new(root.as_os_str().as_bytes()).unwrap();
    let mut value = [0u8; 8];
    // SAFETY: a valid C string and a buffer of the size given.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"user.deskd.volume".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    assert_eq!(n, 8, "the identity xattr");
    u64::from_be_bytes(value)
}

/// `AddPath` of each of `paths` (relative to the root), pipelined in windows of 16; the IDs.
fn add_paths(c: &mut deskd_client::Client, vol: u32, paths: &[String]) -> Vec<u32> {
    let mut ids = Vec::with_capacity(paths.len());
    for window in paths.chunks(16) {
        let mut sent = Vec::new();
        for p in window {
            sent.push(c.send(add_path(vol, p.clone().into_bytes())).unwrap());
        }
        c.flush().unwrap();
        for id in sent {
            match c.wait(id).unwrap() {
                Response::Object(o) => ids.push(o.id),
                other => panic!("{other:?}"),
            }
        }
    }
    ids
}

#[test]
fn two_servers_on_one_volume_follow_each_other_and_never_give_an_id_twice() {
    let Some((_cluster, a, b, root, _defaults)) = two_servers_pg("desk") else {
        return;
    };
    let abs = |rel: &str| root.join(rel).into_os_string().into_vec();

    // Made through A, the same ID through B.
    a.dt_ok(&[b"mkdir", b"vol/shared"]);
    a.dt_ok(&[b"touch", b"vol/shared/first draft.txt"]);
    let id = a.id_of(&root.join("shared/first draft.txt"));
    assert_eq!(b.id_of(&root.join("shared/first draft.txt")), id);

    // Renamed through A: B's find has it within the documented lag (a second and a query;
    // polled, with room for a loaded machine), and no longer the old name.
    a.dt_ok(&[
        b"mv",
        b"vol/shared/first draft.txt",
        b"vol/shared/final version.txt",
    ]);
    let began = std::time::Instant::now();
    let r = root.display();
    loop {
        let found = lines(&b.deskd_ok(&["find", "final version"]));
        if found == vec![format!("{r}/shared/final version.txt")] {
            break;
        }
        assert!(
            began.elapsed() < std::time::Duration::from_secs(15),
            "B's find after {:?}: {found:?}",
            began.elapsed()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let lag = began.elapsed();
    assert!(lines(&b.deskd_ok(&["find", "first draft"])).is_empty());
    eprintln!("rename through A found through B after {lag:?}");
    assert_eq!(b.id_of(&root.join("shared/final version.txt")), id);
    // And the other way: removed through B, gone from A's find.
    b.dt_ok(&[b"rm", &abs("shared/final version.txt")]);
    let began = std::time::Instant::now();
    while !lines(&a.deskd_ok(&["find", "final version"])).is_empty() {
        assert!(began.elapsed() < std::time::Duration::from_secs(15));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // Two clients on each server create files at once: no ID given twice, and each resolves
    // to its path through both servers.
    const PER_CLIENT: usize = 150;
    let mut names = Vec::new();
    for client in 0..4 {
        let dir = format!("c{client}");
        std::fs::create_dir(root.join(&dir)).unwrap();
        let paths: Vec<String> = (0..PER_CLIENT).map(|i| format!("{dir}/f{i}")).collect();
        for p in &paths {
            std::fs::write(root.join(p), b"").unwrap();
        }
        names.push(paths);
    }
    let servers = [&a, &b];
    let made: Vec<(String, u32)> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, paths)| {
                let env = servers[i % 2];
                let root = &root;
                s.spawn(move || {
                    let mut c = env.client();
                    let vol = c.open_volume(root).unwrap().vol;
                    let ids = add_paths(&mut c, vol, paths);
                    paths.iter().cloned().zip(ids).collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut ids: Vec<u32> = made.iter().map(|(_, id)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 4 * PER_CLIENT, "an ID given twice");
    for env in servers {
        let mut c = env.client();
        let vol = c.open_volume(&root).unwrap().vol;
        for (path, id) in &made {
            let o = c.object(Request::Resolve { vol, id: *id }).unwrap();
            assert_eq!(o.path.as_deref(), Some(path.as_bytes()), "ID {id}");
        }
    }
    for env in servers {
        let log = env.log_text();
        assert!(!log.contains(" ERROR "), "{log}");
    }
}

#[test]
fn a_lost_database_makes_the_volume_read_only_until_it_is_back_and_loses_nothing() {
    let Some((mut cluster, mut env, root, _config)) = served_pg("desk") else {
        return;
    };

    // A client writes all along: what it was acknowledged, and the refusals it saw.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let acked = std::sync::Mutex::new(Vec::<(String, u32)>::new());
    let refused = std::sync::Mutex::new(Vec::<(ErrorCode, String)>::new());
    let writable_again = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut c = env.client();
            let vol = c.open_volume(&root).unwrap().vol;
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let path = format!("f{n}");
                std::fs::write(root.join(&path), b"").unwrap();
                n += 1;
                let request = add_path(vol, path.clone().into_bytes());
                match c.object(request) {
                    Ok(o) => {
                        if !refused.lock().unwrap().is_empty() {
                            writable_again.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        acked.lock().unwrap().push((path, o.id))
                    }
                    Err(e) => {
                        let code = e.code().expect("an answer, not a broken connection");
                        refused.lock().unwrap().push((code, e.to_string()));
                    }
                }
            }
        });
        wait_for_acks(&acked, 20);
        cluster.stop();
        // The writes are refused read-only; status says why.
        let began = std::time::Instant::now();
        while refused.lock().unwrap().is_empty() {
            assert!(began.elapsed() < std::time::Duration::from_secs(30));
            std::thread::yield_now();
        }
        let status = env.status_json();
        assert_eq!(status["read_only"], true, "{status}");
        let why = status["read_only_reason"].as_str().unwrap().to_string();
        assert!(why.contains("database unreachable"), "{why}");
        let before_restart = acked.lock().unwrap().len();
        cluster.restart();
        // Writable again (the writer reconnects with back-off: 0.5 s doubling).
        let began = std::time::Instant::now();
        while writable_again.load(std::sync::atomic::Ordering::SeqCst) < 10 {
            assert!(
                began.elapsed() < std::time::Duration::from_secs(60),
                "still refused: {:?}",
                refused.lock().unwrap().last()
            );
            std::thread::yield_now();
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        eprintln!(
            "{before_restart} acknowledged before the restart, writable {:?} after it",
            began.elapsed()
        );
    });
    let refused = refused.into_inner().unwrap();
    for (code, text) in &refused {
        assert_eq!(*code, ErrorCode::ReadOnly, "{text}");
        assert!(text.contains("database is unreachable"), "{text}");
    }
    // Nothing acknowledged is lost; the server never exited.
    let acked = acked.into_inner().unwrap();
    let mut c = env.client();
    let vol = c.open_volume(&root).unwrap().vol;
    for (path, id) in &acked {
        let o = c.object(Request::Resolve { vol, id: *id }).unwrap();
        assert_eq!(o.path.as_deref(), Some(path.as_bytes()), "ID {id}");
    }
    let status = env.status_json();
    assert_eq!(status["read_only"], false, "{status}");
    assert!(env.server.as_mut().unwrap().try_wait().unwrap().is_none());
    let log = env.log_text();
    assert!(log.contains("database unreachable"), "{log}");
    assert!(log.contains("database reachable again"), "{log}");

    let mut earlier = c;
    // Stopped and started again while the server is idle: the next write goes through at
    // once (the writer's dead connection is made again and the batch, which could not start,
    // is run on the new one).
    cluster.stop();
    cluster.restart();
    let mut c = env.client();
    let vol = c.open_volume(&root).unwrap().vol;
    std::fs::write(root.join("after-idle.txt"), b"").unwrap();
    let o = c
        .object(add_path(vol, b"after-idle.txt".to_vec()))
        .expect("written at once after the restart");
    let back = c.object(Request::Resolve { vol, id: o.id }).unwrap();
    assert_eq!(back.path.as_deref(), Some(&b"after-idle.txt"[..]));
    assert!(acked.iter().all(|(_, id)| *id < o.id));
    // A connection whose reads began before the restart: answered at once too (its
    // PostgreSQL reader is made again and the read run on it), status as well.
    let back = earlier.object(Request::Resolve { vol, id: o.id }).unwrap();
    assert_eq!(back.path.as_deref(), Some(&b"after-idle.txt"[..]));
    let status = earlier.status(None).unwrap();
    assert!(!status[0].read_only, "{status:?}");
}

#[test]
fn a_wrong_password_target_or_setting_is_refused_clearly_and_nothing_is_made() {
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    let url = cluster.create_database("desk");
    let wrong = cluster.password_file("wrong", "not the password");
    let right = cluster.password_file("pw", cluster.password());
    let env = Env::new(&["vol"]);
    let root = std::fs::canonicalize(env.path("vol")).unwrap();
    // `deskd serve` with this volume table; it must exit (no volume could be opened).
    let serve = |table: &str| {
        let cfg = env.path("deskd.toml");
        std::fs::write(&cfg, format!("[volume.\"{}\"]\n{table}", root.display())).unwrap();
        let out = std::process::Command::new(DESKD)
            .args(["serve", "--socket"])
            .arg(env.path("s.sock"))
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success(), "served: {table}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = serve(&format!(
        "backend = \"{url}\"\nbackend_password_file = \"{}\"\n",
        wrong.display()
    ));
    assert!(
        said.contains("password authentication failed for user \"deskd_test\""),
        "{said}"
    );
    assert!(!said.contains("not the password"), "{said}");
    let with_password = url.replace(
        "deskd_test@",
        &format!("deskd_test:{}@", cluster.password()),
    );
    let said = serve(&format!("backend = \"{with_password}\"\n"));
    assert!(said.contains("password"), "{said}");
    assert!(
        !said.contains(cluster.password()),
        "the password echoed: {said}"
    );
    let said = serve(&format!(
        "backend = \"{url}\"\nbackend_password_file = \"{}\"\nwatch = \"fanotify\"\n",
        right.display()
    ));
    assert!(
        said.contains("watch = \"fanotify\" is not yet available"),
        "{said}"
    );
    let said = serve(&format!(
        "backend = \"{url}\"\nbackend_password_file = \"{}\"\nbackend_password_env = \"PW\"\n",
        right.display()
    ));
    assert!(said.contains("give one"), "{said}");
    // No password source at all where the server asks for one: refused at start as a
    // configuration to mend (it was served read-only as "database unreachable", retried for
    // ever: newcomer review of stop 43).
    let said = serve(&format!("backend = \"{url}\"\n"));
    assert!(
        said.contains("asks user \"deskd_test\" for a password and none is configured")
            && said.contains("backend_password_file")
            && !said.contains("unreachable"),
        "{said}"
    );
    // Nothing was made in the database, and no desktop file.
    let mut admin = cluster.admin("desk");
    let schema = admin
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'deskd'",
            &[],
        )
        .unwrap();
    assert_eq!(schema.get::<_, i64>(0), 0);
    assert!(!root.join(".Desktop").exists());
}

/// Find through `env`'s client: `(path, type, creator)` of each hit of `pattern` (substring).
fn find_infos(env: &Env, root: &Path, pattern: &str) -> Vec<(String, [u8; 4], [u8; 4])> {
    let mut c = env.client();
    let vol = c.open_volume(root).unwrap().vol;
    let mut found: Vec<_> = c
        .objects(Request::Find {
            vol,
            pattern: pattern.into(),
            mode: deskd_client::FindMode::Substring,
            limit: 100,
            after_id: 0,
        })
        .unwrap()
        .into_iter()
        .map(|o| {
            // The client's paths are the volume's own; `deskd find` prints them whole.
            let path = String::from_utf8(o.path.unwrap()).unwrap();
            (format!("{}/{path}", root.display()), o.type_code, o.creator)
        })
        .collect();
    found.sort();
    found
}

/// Poll `what` on a server until it is `want`, for at most the documented lag with room for
/// a loaded machine (a second's poll, a query, two busy cores: 15 s). 50 ms between looks, so
/// the looks (a process each) do not take the cores the servers need.
fn within_lag<T: PartialEq + std::fmt::Debug>(what: impl Fn() -> T, want: T, whose: &str) {
    let began = std::time::Instant::now();
    loop {
        let got = what();
        if got == want {
            eprintln!("{whose}: seen after {:?}", began.elapsed());
            return;
        }
        assert!(
            began.elapsed() < std::time::Duration::from_secs(15),
            "{whose} after {:?}: {got:?}, not {want:?}",
            began.elapsed()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn find_on_postgresql_reads_from_its_cache_and_follows_both_servers() {
    let Some((_cluster, url, pw)) = pg_database("desk") else {
        return;
    };
    let defaults = backend_lines(&url, &pw);
    // Each read find's cache sends to the database is logged (at debug): counted below.
    const LOG: (&str, &str) = ("DESKD_LOG", "info,deskd_server::read_cache=debug");
    let mut a = Env::new(&["vol"]);
    a.server_env.push((LOG.0.into(), LOG.1.into()));
    let root = std::fs::canonicalize(a.path("vol")).unwrap();
    a.serve_with_defaults("vol", &defaults);
    let b = second_server(&root, &defaults, &[LOG]);
    a.wait_for_log("name index ready", 1);
    b.wait_for_log("name index ready", 1);
    let r = root.display().to_string();
    let p = |rel: &str| format!("{r}/{rel}");
    a.dt_ok(&[b"mkdir", b"vol/docs"]);
    a.dt_ok(&[b"touch", b"vol/docs/report one.txt"]);
    a.dt_ok(&[b"touch", b"vol/docs/report two.txt"]);
    a.dt_ok(&[b"touch", b"vol/docs/other.txt"]);
    let both = vec![p("docs/report one.txt"), p("docs/report two.txt")];
    // B has followed all of A's writes (a later catch-up would change its cache).
    within_lag(
        || lines(&b.deskd_ok(&["find", ".txt"])).len(),
        3,
        "B's find of A's new files",
    );
    assert_eq!(lines(&b.deskd_ok(&["find", "report"])), both);

    // A second identical find (and one of a subset) reads neither rows nor paths.
    let reads = |env: &Env| {
        let log = env.log_text();
        (
            log.matches("find cache: rows read from the database")
                .count(),
            log.matches("find cache: paths read from the database")
                .count(),
        )
    };
    // The rows came with B's catch-ups of A's writes (every row read is held since stop 41),
    // so B's finds mostly read none (one racing the catch-up between the name index's update
    // and the cache's may); the folder's path was read.
    let before = reads(&b);
    assert!(before.1 > 0, "{before:?}");
    assert_eq!(lines(&b.deskd_ok(&["find", "report"])), both);
    assert_eq!(
        lines(&b.deskd_ok(&["find", "report two"])),
        vec![p("docs/report two.txt")]
    );
    assert_eq!(reads(&b), before, "a repeated find went to the database");
    // Through the client too (type and creator from the cache).
    let infos = find_infos(&b, &root, "report");
    assert_eq!(infos.len(), 2);
    assert_eq!(reads(&b), before, "a repeated find went to the database");

    // A's own rename, SetInfo and folder rename: A's find shows each at once (its cache
    // warmed first).
    assert_eq!(lines(&a.deskd_ok(&["find", "report"])), both);
    let _ = find_infos(&a, &root, "report");
    a.dt_ok(&[
        b"mv",
        b"vol/docs/report one.txt",
        b"vol/docs/summary one.txt",
    ]);
    assert_eq!(
        lines(&a.deskd_ok(&["find", "report"])),
        vec![p("docs/report two.txt")]
    );
    assert_eq!(
        lines(&a.deskd_ok(&["find", "summary"])),
        vec![p("docs/summary one.txt")]
    );
    let id = a.id_of(&root.join("docs/report two.txt"));
    {
        let mut c = a.client();
        let vol = c.open_volume(&root).unwrap().vol;
        c.call(Request::SetInfo {
            vol,
            id,
            type_code: Some(*b"TEXT"),
            creator: Some(*b"ttxt"),
            flags: None,
        })
        .unwrap();
    }
    let after_set = vec![(p("docs/report two.txt"), *b"TEXT", *b"ttxt")];
    assert_eq!(find_infos(&a, &root, "report two"), after_set);
    a.dt_ok(&[b"mv", b"vol/docs", b"vol/papers"]);
    let moved = vec![p("papers/report two.txt"), p("papers/summary one.txt")];
    assert_eq!(lines(&a.deskd_ok(&["find", ".txt"])).len(), 3);
    assert_eq!(
        lines(&a.deskd_ok(&["find", "o.txt"])),
        vec![p("papers/report two.txt")]
    );
    assert_eq!(
        lines(&a.deskd_ok(&["find", "one"])),
        vec![p("papers/summary one.txt")]
    );

    // B, whose cache held the old rows and paths, follows within the lag.
    within_lag(
        || lines(&b.deskd_ok(&["find", "t"])),
        {
            let mut all = moved.clone();
            all.push(p("papers/other.txt"));
            all.sort();
            all
        },
        "B's find after A's renames",
    );
    within_lag(
        || find_infos(&b, &root, "report"),
        vec![(p("papers/report two.txt"), *b"TEXT", *b"ttxt")],
        "B's find after A's SetInfo",
    );

    // Deleted through A: gone from A's find at once, from B's within the lag.
    a.dt_ok(&[b"rm", b"vol/papers/report two.txt"]);
    assert!(lines(&a.deskd_ok(&["find", "report"])).is_empty());
    within_lag(
        || lines(&b.deskd_ok(&["find", "report"])),
        Vec::<String>::new(),
        "B's find after A's delete",
    );
    // And B's own delete, gone from B's find at once.
    assert_eq!(
        lines(&b.deskd_ok(&["find", "other"])),
        vec![p("papers/other.txt")]
    );
    b.dt_ok(&[b"rm", p("papers/other.txt").as_bytes()]);
    assert!(lines(&b.deskd_ok(&["find", "other"])).is_empty());
    for env in [&a, &b] {
        let log = env.log_text();
        assert!(!log.contains(" WARN ") && !log.contains(" ERROR "), "{log}");
    }
}

/// A volume's read-cache figures from `deskd metrics`: (hits, misses, disk mismatches).
fn read_cache_figures(env: &Env) -> (u64, u64, u64) {
    let text = env.deskd_ok(&["metrics"]);
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .and_then(|l| l.rsplit_once(' '))
            .map(|(_, v)| v.parse::<f64>().unwrap() as u64)
            .unwrap_or_else(|| panic!("{name} not in\n{text}"))
    };
    (
        value("deskd_read_cache_hits_total"),
        value("deskd_read_cache_misses_total"),
        value("deskd_read_cache_disk_mismatches_total"),
    )
}

/// Resolve `id` through `env`'s server: its path and type code, or the error's text.
fn resolve_through(env: &Env, root: &Path, id: u32) -> Result<(String, [u8; 4]), String> {
    let mut c = env.client();
    let vol = c.open_volume(root).unwrap().vol;
    c.object(Request::Resolve { vol, id })
        .map(|o| {
            (
                String::from_utf8(o.path.unwrap_or_default()).unwrap(),
                o.type_code,
            )
        })
        .map_err(|e| e.to_string())
}

#[test]
fn resolve_on_postgresql_answers_from_memory_follows_the_other_server_and_checks_the_disk() {
    let Some(cluster) = TestCluster::start_or_skip() else {
        return;
    };
    let url = cluster.create_database("desk");
    let pw = cluster.password_file("pw", cluster.password());
    let defaults = backend_lines(&url, &pw);
    let mut a = Env::new(&["vol"]);
    let root = std::fs::canonicalize(a.path("vol")).unwrap();
    a.serve_with_defaults("vol", &defaults);
    let b = second_server(&root, &defaults, &[]);
    a.wait_for_log("name index ready", 1);
    b.wait_for_log("name index ready", 1);
    a.dt_ok(&[b"mkdir", b"vol/docs"]);
    a.dt_ok(&[b"touch", b"vol/docs/one.txt"]);
    let one = a.id_of(&root.join("docs/one.txt"));

    // (a) The row is held (A made it); its folder's path is read once, with the row: then
    // no statement at all.
    let before = read_cache_figures(&a);
    let first = resolve_through(&a, &root, one).unwrap();
    assert_eq!(first.0, "docs/one.txt");
    let after_first = read_cache_figures(&a);
    assert_eq!(after_first.1, before.1 + 1, "{before:?} {after_first:?}");
    for _ in 0..5 {
        assert_eq!(resolve_through(&a, &root, one).unwrap(), first);
    }
    let after = read_cache_figures(&a);
    assert_eq!(
        (after.0, after.1),
        (after_first.0 + 5, after_first.1),
        "a repeated resolve went to the database"
    );
    // A new file in that folder (made through A) resolves from memory at once: the
    // catch-up held its row and kept the folder's path.
    a.dt_ok(&[b"touch", b"vol/docs/two.txt"]);
    let two = a.id_of(&root.join("docs/two.txt"));
    let before = read_cache_figures(&a);
    assert_eq!(resolve_through(&a, &root, two).unwrap().0, "docs/two.txt");
    let after = read_cache_figures(&a);
    assert_eq!((after.0, after.1), (before.0 + 1, before.1), "{before:?}");

    // (b) B changes what A holds. A SetInfo changes no path (the disk check cannot see it):
    // A answers the new type within the follower's lag, and never the old one after.
    {
        let mut c = b.client();
        let vol = c.open_volume(&root).unwrap().vol;
        c.call(Request::SetInfo {
            vol,
            id: one,
            type_code: Some(*b"TEXT"),
            creator: Some(*b"ttxt"),
            flags: None,
        })
        .unwrap();
    }
    let want = Ok(("docs/one.txt".to_owned(), *b"TEXT"));
    within_lag(
        || resolve_through(&a, &root, one),
        want.clone(),
        "A's resolve after B's SetInfo",
    );
    let hits = read_cache_figures(&a).0;
    for _ in 0..20 {
        assert_eq!(resolve_through(&a, &root, one), want);
    }
    assert!(read_cache_figures(&a).0 >= hits + 20, "the new row is held");
    // A rename through B: the new path within the lag, never the old one after.
    b.dt_ok(&[
        b"mv",
        root.join("docs/one.txt").as_os_str().as_bytes(),
        root.join("docs/renamed.txt").as_os_str().as_bytes(),
    ]);
    let want = Ok(("docs/renamed.txt".to_owned(), *b"TEXT"));
    within_lag(
        || resolve_through(&a, &root, one),
        want.clone(),
        "A's resolve after B's rename",
    );
    for _ in 0..20 {
        assert_eq!(resolve_through(&a, &root, one), want);
    }
    // B's folder rename: its files' paths through A follow too.
    b.dt_ok(&[
        b"mv",
        root.join("docs").as_os_str().as_bytes(),
        root.join("papers").as_os_str().as_bytes(),
    ]);
    within_lag(
        || resolve_through(&a, &root, two).map(|r| r.0),
        Ok("papers/two.txt".to_owned()),
        "A's resolve after B's folder rename",
    );
    for _ in 0..20 {
        assert_eq!(resolve_through(&a, &root, two).unwrap().0, "papers/two.txt");
    }

    // (c) Renamed on the disk behind deskd's back (a PostgreSQL volume is not watched): the
    // held answer fails the disk check and the database is read (which says what it holds).
    assert_eq!(resolve_through(&a, &root, two).unwrap().0, "papers/two.txt");
    let before = read_cache_figures(&a);
    std::fs::rename(root.join("papers/two.txt"), root.join("papers/moved.txt")).unwrap();
    assert_eq!(resolve_through(&a, &root, two).unwrap().0, "papers/two.txt");
    let after = read_cache_figures(&a);
    assert_eq!(
        (after.0, after.1, after.2),
        (before.0, before.1 + 1, before.2 + 1),
        "{before:?}"
    );
    std::fs::rename(root.join("papers/moved.txt"), root.join("papers/two.txt")).unwrap();

    // (d) nobody: an object in a folder it may not search is not resolved, before the cache
    // holds it and after (the same answer); one it may see is, both times.
    a.dt_ok(&[b"mkdir", b"vol/secret"]);
    a.dt_ok(&[b"touch", b"vol/secret/hidden.txt"]);
    a.dt_ok(&[b"touch", b"vol/papers/open.txt"]);
    let hidden = a.id_of(&root.join("secret/hidden.txt"));
    let open = a.id_of(&root.join("papers/open.txt"));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("secret"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(root.join("papers"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |id: u32| {
        let out = resolve_as_nobody(&a, id);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr(&out),
        )
    };
    let hidden_cold = as_nobody(hidden);
    let open_cold = as_nobody(open);
    assert!(!hidden_cold.0, "{hidden_cold:?}");
    assert!(
        open_cold.0 && open_cold.1.ends_with("papers/open.txt\n"),
        "{open_cold:?}"
    );
    // Now held (root resolves both, twice: rows and paths filled, then hits).
    for _ in 0..2 {
        resolve_through(&a, &root, hidden).unwrap();
        resolve_through(&a, &root, open).unwrap();
    }
    let before = read_cache_figures(&a);
    assert_eq!(as_nobody(hidden), hidden_cold);
    assert_eq!(as_nobody(open), open_cold);
    let after = read_cache_figures(&a);
    assert_eq!(
        (after.0, after.1),
        (before.0 + 2, before.1),
        "nobody's resolves were not hits"
    );

    // Status shows the same figures (from the metrics text).
    let status: serde_json::Value =
        serde_json::from_str(lines(&a.deskd_ok(&["status", "--json"]))[0].as_str()).unwrap();
    let cache = &status["read_cache"];
    assert_eq!(cache["hits"].as_u64(), Some(after.0), "{status}");
    assert_eq!(cache["disk_mismatches"].as_u64(), Some(after.2), "{status}");
    assert!(cache["rows"].as_u64().unwrap() >= 4, "{status}");
    assert!(a.deskd_ok(&["status"]).contains("read cache:"));

    for env in [&a, &b] {
        let log = env.log_text();
        assert!(!log.contains(" WARN ") && !log.contains(" ERROR "), "{log}");
    }
}

/// `dt resolve vol ID` run as nobody (needs root: fails without).
fn resolve_as_nobody(env: &Env, id: u32) -> std::process::Output {
    env.as_nobody(DT, &[b"resolve", b"vol", id.to_string().as_bytes()])
        .expect("needs root to act as nobody")
}

/// Hostile review of stop 41, finding 1: the read cache's figures move one at a time at the
/// will of any local user (a resolve of an ID never given is a miss), so rounded to thousands
/// they still showed nobody a single resolve of another user's: nobody steps the misses until
/// the rounded figure moves (then it knows it exactly), adds 999 more, and the next miss of
/// anyone's moves it again. Now a user who is not the volume's admin gets none of them (nor
/// status its line); root still does.
#[test]
fn nobody_cannot_count_other_users_resolves_through_the_read_cache_figures() {
    let Some((_cluster, env, root, _config)) = served_pg("desk") else {
        return;
    };
    env.wait_for_log("name index ready", 1);
    env.dt_ok(&[b"touch", b"vol/mine.txt"]);
    let mine = env.id_of(&root.join("mine.txt"));
    // Root sees the figures.
    assert!(env
        .deskd_ok(&["metrics"])
        .contains("deskd_read_cache_misses_total{"));
    if env.as_nobody(DESKD, &[b"metrics"]).is_none() {
        panic!("needs root to act as nobody");
    }
    let deskd = env.linked_for_others(DESKD);
    let dt = env.linked_for_others(DT);
    let socket = env.socket.display();
    // Nobody's side of the attack: bring the misses to one below a step of the rounding.
    let prepare = format!(
        "export DESKD_SOCKET={socket}\n\
         m() {{ {deskd} metrics | awk '/^deskd_read_cache_misses_total[{{]/ {{print $2}}'; }}\n\
         v=$(m)\n\
         if [ -z \"$v\" ]; then echo none; exit 0; fi\n\
         i=0\n\
         while [ \"$(m)\" = \"$v\" ]; do\n\
           {dt} resolve vol 999999 >/dev/null 2>&1 || true\n\
           i=$((i+1)); [ $i -le 1100 ] || {{ echo never-moved; exit 0; }}\n\
         done\n\
         j=0\n\
         while [ $j -lt 999 ]; do {dt} resolve vol 999999 >/dev/null 2>&1 || true; j=$((j+1)); done\n\
         m\n",
        deskd = deskd.display(),
        dt = dt.display(),
    );
    let ready = env.sh_as_nobody(&prepare);
    // Someone else's one resolve of a row not held (root's here; afpd's open by CNID alike).
    resolve_through(&env, &root, mine + 1000).unwrap_err();
    let seen = env.sh_as_nobody(&format!(
        "DESKD_SOCKET={socket} {} metrics | awk '/^deskd_read_cache_misses_total[{{]/ {{print $2}}'",
        deskd.display()
    ));
    assert_eq!(
        (ready.trim(), seen.trim()),
        ("none", ""),
        "nobody counted another user's resolve through the read cache's figures"
    );
    // Status as nobody shows no read-cache line either; root's has it.
    let status = env.as_nobody(DESKD, &[b"status", b"--json"]).unwrap();
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&status.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(first["read_cache"].is_null(), "{first}");
    assert!(env.deskd_ok(&["status"]).contains("read cache:"));
}

/// Hostile review of stop 41, finding 3: a resolve answered from memory checked the held path
/// on the disk (as the server) before it looked whether the peer may see the object, so
/// nobody's resolve of a hidden object told it, by a database round trip (its time, and the
/// exact disk-mismatch count on the HTTP side's /metrics), whether that object was still at
/// its recorded place. Now an unprivileged peer's resolve of a held object it may not see is
/// refused from memory: no disk check, no read.
#[test]
fn nobodys_resolve_of_a_hidden_held_object_does_not_check_the_disk() {
    let Some((_cluster, env, root, _config)) = served_pg("desk") else {
        return;
    };
    env.wait_for_log("name index ready", 1);
    env.dt_ok(&[b"mkdir", b"vol/secret"]);
    env.dt_ok(&[b"touch", b"vol/secret/hidden.txt"]);
    env.dt_ok(&[b"touch", b"vol/open.txt"]);
    let hidden = env.id_of(&root.join("secret/hidden.txt"));
    let open = env.id_of(&root.join("open.txt"));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("secret"), std::fs::Permissions::from_mode(0o700)).unwrap();
    // Held (rows and paths), then moved behind deskd's back (the volume is not watched).
    for _ in 0..2 {
        resolve_through(&env, &root, hidden).unwrap();
        resolve_through(&env, &root, open).unwrap();
    }
    std::fs::rename(
        root.join("secret/hidden.txt"),
        root.join("secret/moved.txt"),
    )
    .unwrap();
    let as_nobody = |id: u32| {
        let out = resolve_as_nobody(&env, id);
        (out.status.success(), stderr(&out))
    };
    let before = read_cache_figures(&env);
    let refused = as_nobody(hidden);
    let after = read_cache_figures(&env);
    assert!(!refused.0, "{refused:?}");
    assert_eq!(
        (after.1, after.2),
        (before.1, before.2),
        "nobody's resolve of a hidden object checked it on the disk and read the database: \
         (hits, misses, mismatches) {before:?} -> {after:?}"
    );
    // The same words as for an ID never given.
    let never = as_nobody(999_999);
    assert_eq!(refused.1, never.1);
    // One it may see is still answered from memory, after the disk check.
    let before = read_cache_figures(&env);
    let seen = env
        .as_nobody(DT, &[b"resolve", b"vol", open.to_string().as_bytes()])
        .unwrap();
    assert!(seen.status.success(), "{}", stderr(&seen));
    assert!(String::from_utf8_lossy(&seen.stdout).ends_with("open.txt\n"));
    let after = read_cache_figures(&env);
    assert_eq!(after, (before.0 + 1, before.1, before.2));
}
