//! `deskd metrics`: the server's figures in the Prometheus text format, checked against what
//! the server was made to do (requests, a flush, a freeze, a scan rebuild of a damaged volume,
//! a read-only volume), accepted by `promtool check metrics`, answered at once while a freeze
//! and a rebuild run, and shown to a local user under `deskd status`'s rule. The contrib alert
//! rules are checked and unit-tested with `promtool`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Env;
use deskd_client::Request;

/// `promtool`, from Debian's `prometheus` package; None (the test fails under CI) without it.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file());
    if found.is_none() {
        common::skip("promtool is not installed (apt-get install prometheus)");
    }
    found
}

/// Run promtool with `args`, `stdin` fed to it; its output when it succeeded.
fn promtool_ok(promtool: &Path, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(promtool)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{said}");
    said
}

/// The samples of an exposition: `name{labels}` → value (labels as written).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').expect("a sample line");
            (key.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// The value of `name` with exactly these labels.
fn value(samples: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        format!("{name}{{{}}}", inner.join(","))
    };
    *samples
        .get(&key)
        .unwrap_or_else(|| panic!("no sample {key} in:\n{samples:#?}"))
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Serve `rw` (writable) and `ro` (read-only by configuration).
fn serve_two(env: &mut Env) {
    let cfg = env.path("deskd.toml");
    std::fs::write(
        &cfg,
        format!(
            // Not watched: the test makes a change behind the server's back for a scan to find.
            "[defaults]\nwatch = \"off\"\n[volume.\"{}\"]\n[volume.\"{}\"]\nread_only = true\n",
            env.path("rw").display(),
            env.path("ro").display()
        ),
    )
    .unwrap();
    env.start(&["--config", cfg.to_str().unwrap()]);
}

#[test]
fn metrics_show_what_two_volumes_went_through_and_promtool_accepts_them() {
    let Some(promtool) = promtool() else { return };
    let mut env = Env::new(&["rw", "ro"]);
    serve_two(&mut env);
    let files: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    common::make_and_register(&env, "rw", &files);
    let mut c = env.client();
    let rw = c.open_volume(&env.path("rw")).unwrap().vol;
    for _ in 0..7 {
        c.call(Request::Resolve { vol: rw, id: 2 }).unwrap();
    }
    // One refused request: an ID nobody has.
    assert!(c
        .call(Request::Resolve {
            vol: rw,
            id: 999_999
        })
        .is_err());
    env.deskd_ok(&["flush", "--volume", "rw"]);
    // Damage behind the server's back: a file it never heard of, then a scan finds it.
    std::fs::write(env.path("rw/plain-new"), b"").unwrap();
    let scan = env.deskd(&["rebuild", "-s", env.path("rw").to_str().unwrap()]);
    assert!(
        scan.status.code().is_some(),
        "rebuild -s died: {}",
        common::stderr(&scan)
    );
    env.deskd_ok(&["freeze", "--volume", "rw", "60"]);

    let text = env.deskd_ok(&["metrics"]);
    promtool_ok(&promtool, &["check", "metrics"], Some(&text));
    let m = samples(&text);
    let rw_label = env.path("rw").canonicalize().unwrap().display().to_string();
    let ro_label = env.path("ro").canonicalize().unwrap().display().to_string();
    let rw_l = [("volume", rw_label.as_str())];
    let ro_l = [("volume", ro_label.as_str())];
    // The same figures `deskd status` gives.
    let status: Vec<serde_json::Value> = env
        .deskd_ok(&["status", "--json", "--volume", "rw"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let objects = status[0]["objects"].as_u64().unwrap();
    assert_eq!(objects, 21, "the root and 20 files");
    assert_eq!(value(&m, "deskd_volume_objects", &rw_l), objects as f64);
    assert_eq!(value(&m, "deskd_volume_objects", &ro_l), 1.0);
    assert_eq!(
        value(&m, "deskd_volume_ids_left", &rw_l),
        status[0]["ids_left"].as_u64().unwrap() as f64
    );
    assert_eq!(value(&m, "deskd_volume_read_only", &rw_l), 0.0);
    assert_eq!(value(&m, "deskd_volume_read_only", &ro_l), 1.0);
    assert_eq!(value(&m, "deskd_volume_clean_at_start", &rw_l), 1.0);
    assert!(value(&m, "deskd_frozen_until_time_seconds", &rw_l) > now());
    assert_eq!(value(&m, "deskd_frozen_until_time_seconds", &ro_l), 0.0);
    let flushed = value(&m, "deskd_last_flush_time_seconds", &rw_l);
    assert!(
        flushed > now() - 600.0 && flushed <= now() + 1.0,
        "{flushed}"
    );
    assert!(value(&m, "deskd_commits_total", &rw_l) >= 1.0);
    assert_eq!(value(&m, "deskd_commits_total", &ro_l), 0.0);
    assert!(value(&m, "deskd_commit_batch_requests_count", &rw_l) >= 1.0);
    assert_eq!(value(&m, "deskd_commit_batch_requests_sum", &rw_l), 20.0);
    assert!(m.contains_key(&format!("deskd_wal_bytes{{volume=\"{rw_label}\"}}")));
    assert_eq!(value(&m, "deskd_check_ok", &rw_l), 1.0);
    assert_eq!(value(&m, "deskd_check_problems", &rw_l), 0.0);
    assert!(value(&m, "deskd_check_time_seconds", &rw_l) > now() - 600.0);
    // The memory figures `deskd status` shows: the process's, and the desktop's mappings.
    assert!(value(&m, "deskd_memory_anonymous_bytes", &[]) > 1e6);
    assert!(value(&m, "deskd_memory_peak_resident_bytes", &[]) > 1e6);
    assert!(value(&m, "deskd_mmap_total_bytes", &[]) > 0.0);
    assert_eq!(value(&m, "deskd_mmap_short_readers", &[]), 0.0);
    assert!(m.contains_key(&format!(
        "deskd_volume_name_index_bytes{{volume=\"{rw_label}\"}}"
    )));
    // The scan rebuild: done, the damage among its differences.
    assert!(value(&m, "deskd_rebuild_differences", &rw_l) >= 1.0);
    assert!(value(&m, "deskd_rebuild_objects_walked", &rw_l) >= 21.0);
    assert_eq!(value(&m, "deskd_rebuild_running", &rw_l), 0.0);
    assert_eq!(
        value(
            &m,
            "deskd_rebuild_phase",
            &[("volume", &rw_label), ("phase", "done"), ("mode", "scan")]
        ),
        1.0
    );
    assert!(value(&m, "deskd_rebuild_start_time_seconds", &rw_l) > now() - 600.0);
    // Requests by kind, with their latency histogram and errors.
    let resolve = [("volume", rw_label.as_str()), ("kind", "Resolve")];
    assert_eq!(
        value(&m, "deskd_request_duration_seconds_count", &resolve),
        8.0
    );
    assert_eq!(value(&m, "deskd_request_errors_total", &resolve), 1.0);
    let inf = [
        ("volume", rw_label.as_str()),
        ("kind", "Resolve"),
        ("le", "+Inf"),
    ];
    assert_eq!(
        value(&m, "deskd_request_duration_seconds_bucket", &inf),
        8.0
    );
    assert!(value(&m, "deskd_request_duration_seconds_sum", &resolve) > 0.0);
    let add = [("volume", rw_label.as_str()), ("kind", "AddPath")];
    assert_eq!(
        value(&m, "deskd_request_duration_seconds_count", &add),
        20.0
    );
    // make_and_register's client, this one, and the verbs given --volume.
    assert!(
        value(
            &m,
            "deskd_request_duration_seconds_count",
            &[("volume", ""), ("kind", "OpenVolume")]
        ) >= 2.0
    );
    // This test's client is still connected.
    assert!(value(&m, "deskd_connections", &[("transport", "unix")]) >= 1.0);
    assert_eq!(value(&m, "deskd_connections", &[("transport", "tcp")]), 0.0);
    // (The verbs' connections that used it may not be seen closed yet.)
    assert!(value(&m, "deskd_volume_clients", &rw_l) >= 1.0);
    assert_eq!(
        value(
            &m,
            "deskd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    let started = value(&m, "deskd_start_time_seconds", &[]);
    assert!(started > now() - 600.0 && started <= now() + 1.0);
    // Every family has its HELP and TYPE.
    for family in [
        "deskd_volume_objects",
        "deskd_request_duration_seconds",
        "deskd_commit_batch_requests",
    ] {
        assert!(text.contains(&format!("# HELP {family} ")), "{family}");
        assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
    }
}

#[test]
fn a_scrape_answers_at_once_while_a_freeze_and_a_slow_rebuild_run() {
    let mut env = Env::new(&["rw", "ro"]);
    // Every directory the walk visits takes 1 s: the rebuild runs for seconds (it is killed
    // once seen walking).
    env.server_env
        .push(("DESKD_REBUILD_DIR_DELAY_MS".into(), "1000".into()));
    serve_two(&mut env);
    for d in 0..8 {
        std::fs::create_dir(env.path(&format!("rw/d{d}"))).unwrap();
    }
    env.deskd_ok(&["freeze", "--volume", "rw", "60"]);
    let mut rebuild = env
        .command_for(common::DESKD, &[b"rebuild", b"-s", b"rw"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let rw_label = env.path("rw").canonicalize().unwrap().display().to_string();
    let walking =
        format!("deskd_rebuild_phase{{volume=\"{rw_label}\",phase=\"walking\",mode=\"scan\"}} 1");
    let began = Instant::now();
    let text = loop {
        let asked = Instant::now();
        let text = env.deskd_ok(&["metrics"]);
        // A process start and one round trip; nothing waits for the writer or the walk (a
        // scrape behind the walk would wait seconds; the bound leaves room for a loaded CI).
        assert!(
            asked.elapsed() < Duration::from_secs(4),
            "a scrape took {:?}",
            asked.elapsed()
        );
        if text.contains(&walking) {
            break text;
        }
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "the rebuild never showed as walking:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let m = samples(&text);
    assert_eq!(
        value(&m, "deskd_rebuild_running", &[("volume", &rw_label)]),
        1.0
    );
    assert!(
        value(
            &m,
            "deskd_frozen_until_time_seconds",
            &[("volume", &rw_label)]
        ) > now()
    );
    let _ = rebuild.kill();
    let _ = rebuild.wait();
}

#[test]
fn a_local_user_sees_in_metrics_what_status_shows_it() {
    let mut env = Env::new(&["rw", "mine"]);
    // `mine` belongs to nobody: there nobody is the admin, as `deskd status` counts it.
    std::os::unix::fs::chown(env.path("mine"), Some(65534), Some(65534)).unwrap();
    env.serve(&["rw", "mine"]);
    let mut c = env.client();
    let rw = c.open_volume(&env.path("rw")).unwrap().vol;
    let mine = c.open_volume(&env.path("mine")).unwrap().vol;
    for vol in [rw, mine] {
        c.call(Request::Resolve { vol, id: 2 }).unwrap();
    }
    // A handle the server never gave out counts as no volume: naming numbers grows nothing.
    for vol in [7, 4_000_000, u32::MAX - 1] {
        assert!(c.call(Request::Resolve { vol, id: 2 }).is_err());
    }
    let root_view = env.deskd_ok(&["metrics"]);
    let labels: std::collections::BTreeSet<&str> = root_view
        .lines()
        .filter(|l| l.starts_with("deskd_request_errors_total{"))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert_eq!(labels.len(), 3, "{labels:?}");
    assert!(
        root_view.contains("deskd_request_errors_total{volume=\"\",kind=\"Resolve\"} 3"),
        "{root_view}"
    );
    let Some(out) = env.as_nobody(common::DESKD, &[b"metrics"]) else {
        return common::skip("the tests do not run as root");
    };
    assert!(out.status.success(), "{}", common::stderr(&out));
    let nobody_view = String::from_utf8(out.stdout).unwrap();
    let rw_label = env.path("rw").canonicalize().unwrap().display().to_string();
    let mine_label = env
        .path("mine")
        .canonicalize()
        .unwrap()
        .display()
        .to_string();
    let resolve_on = |label: &str| {
        format!("deskd_request_duration_seconds_count{{volume=\"{label}\",kind=\"Resolve\"}} 1")
    };
    // Root sees every request; nobody only those on the volume it owns (root's there).
    assert!(root_view.contains(&resolve_on(&rw_label)), "{root_view}");
    assert!(root_view.contains(&resolve_on(&mine_label)), "{root_view}");
    assert!(
        !nobody_view.contains(&resolve_on(&rw_label)),
        "{nobody_view}"
    );
    assert!(
        nobody_view.contains(&resolve_on(&mine_label)),
        "{nobody_view}"
    );
    // Connections per transport are not in what status shows nobody.
    assert!(root_view.contains("deskd_connections{transport=\"unix\"}"));
    assert!(!nobody_view.contains("deskd_connections"), "{nobody_view}");
    // A volume's activity figures only on the volume it administers, as status gives them
    // (hostile review of stop 41, finding 2); its state on both.
    let objects = |label: &str| format!("deskd_volume_objects{{volume=\"{label}\"}} ");
    assert!(!nobody_view.contains(&objects(&rw_label)), "{nobody_view}");
    assert!(nobody_view.contains(&objects(&mine_label)), "{nobody_view}");
    assert!(
        nobody_view.contains(&format!(
            "deskd_volume_read_only{{volume=\"{rw_label}\"}} 0"
        )),
        "{nobody_view}"
    );
    // Its own requests it sees: a second scrape counts the first.
    let again = env
        .as_nobody(common::DESKD, &[b"metrics"])
        .expect("ran once already");
    let again = String::from_utf8(again.stdout).unwrap();
    assert!(
        again.contains("deskd_request_duration_seconds_count{volume=\"\",kind=\"Metrics\"}"),
        "{again}"
    );
}

#[test]
fn the_contrib_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let rules = root.join("contrib/prometheus/deskd-alerts.yml");
    let tests = root.join("contrib/prometheus/tests/deskd-alerts.test.yml");
    let said = promtool_ok(
        &promtool,
        &["check", "rules", rules.to_str().unwrap()],
        None,
    );
    assert!(said.contains("SUCCESS"), "{said}");
    // `promtool test rules` finds the rule file relative to the test file.
    let said = promtool_ok(&promtool, &["test", "rules", tests.to_str().unwrap()], None);
    assert!(said.contains("SUCCESS"), "{said}");
    // The dashboard is JSON with a datasource and a volume variable.
    let dashboard: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("contrib/grafana/deskd-dashboard.json")).unwrap(),
    )
    .unwrap();
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(variables.contains(&"datasource"), "{variables:?}");
    assert!(variables.contains(&"volume"), "{variables:?}");
    // Every panel's query parses: promtool checks them as recording rules.
    let mut exprs_as_rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut queries = Vec::new();
    collect_exprs(&dashboard, &mut queries);
    assert!(queries.len() >= 20, "{queries:?}");
    for (i, q) in queries.iter().enumerate() {
        let q = q
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace("$volume", ".*");
        exprs_as_rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::Value::String(q)
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let as_rules = dir.path().join("dashboard-queries.yml");
    std::fs::write(&as_rules, exprs_as_rules).unwrap();
    promtool_ok(
        &promtool,
        &["check", "rules", as_rules.to_str().unwrap()],
        None,
    );
    // Every metric the rules and panels use is one the server writes.
    let exprs = std::fs::read_to_string(&rules).unwrap()
        + &std::fs::read_to_string(root.join("contrib/grafana/deskd-dashboard.json")).unwrap();
    let server_src =
        std::fs::read_to_string(root.join("crates/deskd-server/src/metrics/mod.rs")).unwrap();
    for word in exprs.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(name) = word.strip_prefix("deskd_") {
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                server_src.contains(&format!("\"deskd_{family}\"")),
                "deskd_{name} is used in contrib but the server writes no such metric"
            );
        }
    }
}

/// Every `expr` of a Grafana dashboard (panel targets, at any depth).
fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(inner, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, out)),
        _ => {}
    }
}

#[test]
fn a_tcp_client_with_the_token_sees_everything_and_one_without_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let mut env = Env::new(&["vol"]);
    let token = env.path("token");
    std::fs::write(&token, b"k3Jq9vX2pL7sW0eRt5YzA8bN1cM4dF6h\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let vol = env.path("vol").display().to_string();
    let token_arg = token.display().to_string();
    env.start(&["--listen", "127.0.0.1:0", "--token-file", &token_arg, &vol]);
    let began = Instant::now();
    let addr = loop {
        if let Some(rest) = env.log_text().split("listening on tcp ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "{}",
            env.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let over_tcp = |token: Option<&Path>| {
        let mut cmd = env.command_for(common::DESKD, &[b"metrics"]);
        cmd.env("DESKD_SOCKET", format!("tcp://{addr}"));
        match token {
            Some(t) => cmd.env("DESKD_TOKEN_FILE", t),
            None => cmd.env_remove("DESKD_TOKEN_FILE"),
        };
        cmd.output().unwrap()
    };
    let out = over_tcp(Some(&token));
    assert!(out.status.success(), "{}", common::stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    // Its own connection is the TCP one counted.
    assert!(
        text.contains("deskd_connections{transport=\"tcp\"} 1\n"),
        "{text}"
    );
    // A wrong token gets no figures: the handshake fails before any request.
    let wrong = env.path("wrong");
    std::fs::write(&wrong, b"not-the-token-at-all-0123456789ab\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = over_tcp(Some(&wrong));
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    assert!(out.stdout.is_empty());
}
