//! The server's memory figures in `deskd status` and the cap on what its read connections map
//! of a desktop together (`[server] mmap_total`; docs/PERFORMANCE.md, "Memory").

mod common;

use std::collections::BTreeSet;

use common::{make_and_register, stderr, Env, DESKD};
use deskd_client::{Client, Request, Response};
use serde_json::Value;

/// Objects in the test desktop: enough for a desktop of some hundreds of KiB.
const OBJECTS: usize = 4000;
/// Clients reading the whole desktop at once: more than the capped budget maps fully.
const CLIENTS: usize = 6;

/// A volume "v" of `OBJECTS` registered files (long names, so the desktop is not tiny),
/// served with `mmap_total` as given.
fn served(mmap_total: &str) -> Env {
    let mut env = Env::new(&["v"]);
    let names = names();
    make_and_register_unserved(&mut env, &names);
    restart_with(&mut env, mmap_total);
    env
}

fn names() -> Vec<String> {
    (0..OBJECTS)
        .map(|i| format!("a-file-with-a-long-name-so-the-desktop-has-some-size-{i:05}"))
        .collect()
}

/// Register `names` with a plain server, then stop it (the desktop stays).
fn make_and_register_unserved(env: &mut Env, names: &[String]) {
    env.serve(&["v"]);
    make_and_register(env, "v", names);
    env.deskd_ok(&["flush"]);
    env.term();
}

fn restart_with(env: &mut Env, mmap_total: &str) {
    let cfg = env.path("deskd.toml");
    std::fs::write(
        &cfg,
        format!(
            // Not watched: the start-up rescan's walk would take its share of the memory
            // these figures compare.
            "[server]\nmmap_total = {mmap_total}\n[defaults]\nwatch = \"off\"\n[volume.\"{}\"]\n",
            env.path("v").display()
        ),
    )
    .unwrap();
    env.start(&["--config", cfg.to_str().unwrap()]);
    // The background reader that builds the name index has mapped and closed by then.
    env.wait_for_log("name index ready", 1);
}

/// `CLIENTS` connections, each having read every object of the volume (so each maps what it
/// was granted), kept open; checks each answer.
fn readers(env: &Env) -> Vec<Client> {
    let expected: BTreeSet<Vec<u8>> = names().into_iter().map(String::into_bytes).collect();
    (0..CLIENTS)
        .map(|_| {
            let mut c = env.client();
            let vol = c.open_volume(&env.path("v")).unwrap().vol;
            let Response::Objects(children) = c
                .call(Request::Children {
                    vol,
                    dir: deskd_db::ROOT_ID,
                })
                .unwrap()
            else {
                panic!("children: another reply")
            };
            let got: BTreeSet<Vec<u8>> = children
                .iter()
                .map(|o| o.name.clone())
                .filter(|n| !n.starts_with(b"."))
                .collect();
            assert_eq!(
                got, expected,
                "every client gets every object, mapped or not"
            );
            for o in children.iter().step_by(97) {
                let again = c.object(Request::Resolve { vol, id: o.id }).unwrap();
                assert_eq!(again.name, o.name);
            }
            c
        })
        .collect()
}

/// The single volume's JSON line of `deskd status --json`.
fn status_json(env: &Env) -> Value {
    let out = env.deskd_ok(&["status", "--json"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "one line per volume: {out}");
    serde_json::from_str(lines[0]).unwrap()
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number: {v}"))
}

#[test]
fn status_shows_the_memory_figures_and_the_cap_bounds_the_mappings() {
    // Uncapped (as before the cap): every connection maps the whole desktop.
    let mut env = served("\"1GiB\"");
    let clients = readers(&env);
    let open = status_json(&env);
    let (free_server, free_volume) = (&open["server_memory"], &open["memory"]);
    let desktop = num(free_volume, "desktop_bytes");
    assert!(desktop > 256 << 10, "a desktop of some size: {desktop}");
    assert_eq!(num(free_server, "mmap_total_bytes"), 1 << 30);
    assert_eq!(num(free_server, "short_readers"), 0, "{free_server}");
    assert!(
        num(free_volume, "mappings") as usize > CLIENTS,
        "the writer and each client map the desktop: {free_volume}"
    );
    assert!(
        num(free_volume, "mapped_resident_bytes") >= CLIENTS as u64 * desktop / 2,
        "each mapping counts the pages again: {free_volume}"
    );
    assert!(num(free_volume, "sqlite_connections") as usize > CLIENTS);
    assert!(num(free_volume, "name_index_bytes") > (OBJECTS * 50) as u64);
    assert_eq!(
        num(free_volume, "name_index_bytes") % (1 << 20),
        0,
        "rounded to a MiB"
    );
    assert!(
        num(free_volume, "page_cache_limit_bytes")
            >= deskd_db::WRITER_CACHE_BYTES + CLIENTS as u64 * deskd_db::READER_CACHE_BYTES
    );
    for key in ["rss_anon_bytes", "rss_file_bytes", "vm_hwm_bytes"] {
        assert!(num(free_server, key) > 0, "{key}: {free_server}");
    }
    assert!(
        num(free_server, "rss_file_bytes") >= num(free_server, "mapped_resident_bytes"),
        "{free_server}"
    );
    drop(clients);
    env.term();

    // Capped to one and a half desktops: the writer maps outside the budget, the first reader
    // gets its whole desktop, the next part of it, the others read with pread.
    let cap = desktop * 3 / 2;
    restart_with(&mut env, &cap.to_string());
    let clients = readers(&env);
    let capped = status_json(&env);
    let (server, volume) = (&capped["server_memory"], &capped["memory"]);
    eprintln!("uncapped: {open}\ncapped: {capped}");
    assert_eq!(num(server, "mmap_total_bytes"), cap);
    assert!(num(server, "mmap_granted_bytes") <= cap, "{server}");
    assert!(
        num(server, "short_readers") as usize >= CLIENTS - 2,
        "{server}"
    );
    // The metrics say the cap bites as status does (and say what the budget holds).
    let metrics = env.deskd_ok(&["metrics"]);
    let gauge = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
            .parse()
            .unwrap()
    };
    assert!(gauge("deskd_mmap_short_readers") as usize >= CLIENTS - 2);
    assert_eq!(gauge("deskd_mmap_total_bytes"), cap);
    assert!(
        num(volume, "mapped_bytes") <= cap + num(volume, "desktop_bytes"),
        "the readers' mappings within the cap, the writer's one desktop besides: {volume}"
    );
    assert!(
        num(volume, "mappings") <= 3,
        "the writer and at most two readers map: {volume}"
    );
    assert!(num(volume, "sqlite_connections") as usize > CLIENTS);
    // What monitoring sees falls with it.
    let saved = num(free_volume, "mapped_resident_bytes") - num(volume, "mapped_resident_bytes");
    assert!(
        saved >= (CLIENTS as u64 - 2) * desktop / 2,
        "{free_volume} {volume}"
    );
    assert!(
        num(server, "rss_file_bytes") < num(free_server, "rss_file_bytes"),
        "capped {server}, uncapped {free_server}"
    );
    // (Not VmHWM: it is the peak of both kinds since start, and the anonymous part of it, the
    // name index's background build among it, varies with timing by more than a test volume's
    // mapped pages; it failed 1 run in 4 under load. rss_file above is what the cap bounds.)
    // Connections that close give their grants back (the server sees the closes, and the
    // figures, cached for a second, catch up); a connection that got less takes what is free
    // at its next read.
    drop(clients);
    let mut c = env.client();
    let vol = c.open_volume(&env.path("v")).unwrap().vol;
    let began = std::time::Instant::now();
    loop {
        c.object(Request::Resolve { vol, id: 2 }).unwrap();
        let Response::Memory(m) = c.call(Request::Memory).unwrap() else {
            panic!("memory: another reply")
        };
        if m.short_readers == 0 && m.volumes[0].connections == 2 {
            assert!(m.mmap_granted > 0 && m.mmap_granted <= cap, "{m:?}");
            break;
        }
        assert!(
            began.elapsed() < std::time::Duration::from_secs(20),
            "grants not given back: {m:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // The text output says the same in words.
    let text = env.deskd_ok(&["status"]);
    assert!(text.contains("server memory"), "{text}");
    assert!(text.contains("(RssAnon: what deskd itself uses)"), "{text}");
    assert!(text.contains("  memory:       "), "{text}");
}

#[test]
fn with_mmap_total_zero_nothing_is_mapped_but_the_writers_desktop_and_answers_are_right() {
    let env = served("0");
    let _clients = readers(&env);
    let line = status_json(&env);
    let volume = &line["memory"];
    assert_eq!(num(volume, "mappings"), 1, "only the writer maps: {volume}");
    assert_eq!(num(&line["server_memory"], "mmap_granted_bytes"), 0);
    assert!(num(&line["server_memory"], "short_readers") as usize >= CLIENTS);
}

#[test]
fn a_bad_mmap_total_stops_the_start_with_a_clear_error() {
    let env = Env::new(&["v"]);
    let cfg = env.path("bad.toml");
    std::fs::write(&cfg, "[server]\nmmap_total = \"512MB\"\n").unwrap();
    let out = env.deskd(&[
        "serve",
        "--socket",
        "x.sock",
        "--config",
        cfg.to_str().unwrap(),
        env.path("v").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown unit \"MB\""),
        "{}",
        stderr(&out)
    );
    // Said once: TOML's message is not printed again as the error's cause.
    assert_eq!(
        stderr(&out).matches("TOML parse error").count(),
        1,
        "{}",
        stderr(&out)
    );
    assert!(
        !env.path("v").join(".Desktop").exists(),
        "nothing opened or created"
    );
}

#[test]
fn nobody_sees_the_memory_figures_and_nothing_more() {
    let mut env = Env::new(&["v"]);
    env.serve(&["v"]);
    make_and_register(&env, "v", &names()[..50]);
    // Root's connection, which nobody must not see the details of.
    let _root_client = readers_of(&env, 1);
    let Some(out) = env.as_nobody(DESKD, &[b"status", b"--json"]) else {
        return common::skip("not root: cannot run as nobody");
    };
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let line: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    // The figures are numbers only: no path, uid, pid or program of anyone; the volume's
    // desktop, mapping and name index sizes, which move with its changes, are its admins' only
    // (null: hostile review of stop 41, finding 2), and the process's resident, peak and
    // mapped totals the server's admins' (after a flush nobody read the withheld desktop size
    // to the byte as the mapping's resident bytes: newcomer review of stop 42). Root gets them.
    const VOLUME_WITHHELD: [&str; 4] = [
        "desktop_bytes",
        "mapped_bytes",
        "mapped_resident_bytes",
        "name_index_bytes",
    ];
    const SERVER_WITHHELD: [&str; 6] = [
        "rss_anon_bytes",
        "rss_file_bytes",
        "vm_hwm_bytes",
        "mapped_bytes",
        "mapped_resident_bytes",
        "mmap_granted_bytes",
    ];
    for part in ["memory", "server_memory"] {
        let figures = line[part]
            .as_object()
            .unwrap_or_else(|| panic!("{part}: {line}"));
        assert!(!figures.is_empty());
        for (key, value) in figures {
            let withheld = match part {
                "memory" => VOLUME_WITHHELD.contains(&key.as_str()),
                _ => SERVER_WITHHELD.contains(&key.as_str()),
            };
            if withheld {
                assert!(value.is_null(), "{part}.{key} = {value}")
            } else {
                assert!(value.is_u64(), "{part}.{key} = {value}")
            }
        }
    }
    let roots = status_json(&env);
    for key in VOLUME_WITHHELD {
        assert!(roots["memory"][key].is_u64(), "{key}: {roots}");
    }
    for key in SERVER_WITHHELD {
        assert!(roots["server_memory"][key].is_u64(), "{key}: {roots}");
    }
    assert!(num(&roots["server_memory"], "rss_anon_bytes") > 0);
    // Nor in nobody's metrics: the process figures' samples are left out.
    let metrics = env
        .as_nobody(DESKD, &[b"metrics"])
        .expect("ran as nobody above");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    for family in [
        "deskd_memory_anonymous_bytes",
        "deskd_memory_file_resident_bytes",
        "deskd_memory_peak_resident_bytes",
        "deskd_mmap_granted_bytes",
    ] {
        assert!(
            !metrics
                .lines()
                .any(|l| l.starts_with(&format!("{family} "))),
            "{family} in nobody's metrics: {metrics}"
        );
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("deskd_mmap_total_bytes ")),
        "{metrics}"
    );
    // Root's connection stays hidden from nobody, as before.
    assert!(num(&line, "hidden_clients") >= 1, "{line}");
    // The raw reply too: a nobody client gets it, and it holds no path.
    let nobody_memory = env
        .as_nobody(DESKD, &[b"status"])
        .expect("ran as nobody above");
    let text = String::from_utf8_lossy(&nobody_memory.stdout);
    assert!(text.contains("server memory"), "{text}");
    let desktop = env.path("v").join(".Desktop");
    let memory_lines: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("server memory"))
        .collect();
    assert!(
        !memory_lines
            .iter()
            .any(|l| l.contains(desktop.to_str().unwrap())),
        "{text}"
    );
}

/// `n` open connections that have read the volume.
fn readers_of(env: &Env, n: usize) -> Vec<Client> {
    (0..n)
        .map(|_| {
            let mut c = env.client();
            let vol = c.open_volume(&env.path("v")).unwrap().vol;
            c.object(Request::Resolve { vol, id: 2 }).unwrap();
            c
        })
        .collect()
}
