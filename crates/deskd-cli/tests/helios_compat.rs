//! HELIOS compatibility commands (contrib/helios): seed 000's backup script run unchanged by
//! `perl` against a served volume under write load, and `srvmsg`, `srvutil`, `rebuild` and
//! `prefvalue` as a HELIOS administrator's scripts call them.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The compatibility commands as shipped: `contrib/helios` holds `bin/srvmsg` and the rest.
fn helios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/helios")
}

/// Where docs/helios.md installs the commands (the shipped `HELIOSInstallPath` names it).
const INSTALLED: &str = "/usr/local/lib/deskd/helios";

/// A command that runs in a private mount namespace where contrib/helios is installed as
/// docs/helios.md says (commands under [`INSTALLED`], the shipped `/etc/HELIOSInstallPath`),
/// on overlays of `/etc` and `/usr/local` kept on a private tmpfs (the host's are not
/// touched), with `deskd` on PATH and this Env's socket; None (the test skips, or fails under CI) when
/// that cannot be set up here (not root, no unshare).
fn on_a_helios_host(env: &Env, program: &str, args: &[&str]) -> Option<Command> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("a private /etc/HELIOSInstallPath needs root (a mount namespace)");
        return None;
    }
    let probe = Command::new("unshare").args(["-m", "true"]).output();
    if !matches!(probe, Ok(ref o) if o.status.success()) {
        skip("unshare -m does not work here");
        return None;
    }
    let layer = env.path("etc-layer");
    std::fs::create_dir_all(&layer).unwrap();
    let setup = r#"set -e
mount --make-rprivate /
mount -t tmpfs tmpfs "$LAYER"
for dir in /etc /usr/local; do
    mkdir -p "$LAYER/upper$dir" "$LAYER/work$dir"
    mount -t overlay overlay -o "lowerdir=$dir,upperdir=$LAYER/upper$dir,workdir=$LAYER/work$dir" "$dir"
done
install -d /usr/local/lib/deskd/helios/bin
install -m 755 "$HELIOS_DIR"/bin/* /usr/local/lib/deskd/helios/bin/
install -m 644 "$HELIOS_DIR"/HELIOSInstallPath /etc/HELIOSInstallPath
exec "$@""#;
    let deskd_dir = Path::new(DESKD).parent().unwrap();
    let path = format!(
        "{}:{}",
        deskd_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c", setup, "sh", program])
        .args(args)
        .current_dir(env.dir.path())
        .env("LAYER", &layer)
        .env("HELIOS_DIR", helios_dir().canonicalize().unwrap())
        .env("PATH", path)
        .env("DESKD_SOCKET", &env.socket);
    Some(cmd)
}

fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A file server's write load: creates files in `vol` and registers them through one
/// pipelining client, 20 at a time, until `stop`; every acknowledged (name, ID) goes to `acked`.
struct WriteLoad {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, u32)>>>,
    /// When each acknowledgement in `acked` arrived (same order).
    times: Arc<Mutex<Vec<SystemTime>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriteLoad {
    fn start(env: &Env, vol: &Path) -> WriteLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let times = Arc::new(Mutex::new(Vec::new()));
        let mut client = env.client();
        let handle = client.open_volume(vol).unwrap().vol;
        let (thread_stop, thread_acked, vol) = (stop.clone(), acked.clone(), vol.to_path_buf());
        let thread_times = times.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !thread_stop.load(Ordering::SeqCst) {
                let names: Vec<String> = (n..n + 20).map(|i| format!("load-{i:06}")).collect();
                n += 20;
                let requests: Vec<u64> = names
                    .iter()
                    .map(|name| {
                        std::fs::write(vol.join(name), b"").unwrap();
                        client
                            .send(deskd_client::Request::AddPath {
                                vol: handle,
                                path: name.clone().into_bytes(),
                                hint: None,
                                type_code: None,
                                creator: None,
                                carried: None,
                            })
                            .unwrap()
                    })
                    .collect();
                client.flush().unwrap();
                for (name, request) in names.into_iter().zip(requests) {
                    match client.wait(request) {
                        Ok(deskd_client::Response::Object(o)) => {
                            // Time first: an acknowledgement is never listed before it came.
                            let mut acked = thread_acked.lock().unwrap();
                            thread_times.lock().unwrap().push(SystemTime::now());
                            acked.push((name, o.id));
                        }
                        other => panic!("{name}: {other:?}"),
                    }
                }
            }
        });
        WriteLoad {
            stop,
            acked,
            times,
            thread: Some(thread),
        }
    }

    fn acked(&self) -> Vec<(String, u32)> {
        self.acked.lock().unwrap().clone()
    }

    /// The acknowledgements that arrived before `when`.
    fn acked_before(&self, when: SystemTime) -> Vec<(String, u32)> {
        let acked = self.acked.lock().unwrap();
        let times = self.times.lock().unwrap();
        acked
            .iter()
            .zip(times.iter())
            .filter(|(_, t)| **t < when)
            .map(|(a, _)| a.clone())
            .collect()
    }

    fn stop(mut self) -> Vec<(String, u32)> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.acked()
    }
}

/// The rows (ID, name) of a desktop's objects table.
fn rows_of(db: &Path) -> std::collections::HashMap<u32, String> {
    sqlite3(db, "SELECT id, CAST(name AS TEXT) FROM objects")
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(id, name)| (id.parse().unwrap(), name.to_string()))
        .collect()
}

/// When the server logged that it froze the desktop: its log's UTC timestamp
/// (`2026-12-06T04:03:02.489949Z`) of the line `… frozen volume=…`. The writer flushes, then
/// logs, then commits anything more: every write acknowledged before then is in `.Desktop`.
fn frozen_at(log: &str) -> SystemTime {
    let line = log
        .lines()
        .find(|l| l.contains(" frozen volume="))
        .unwrap_or_else(|| panic!("no freeze in the log: {log}"));
    let stamp = line.split_whitespace().next().unwrap();
    let field = |range: std::ops::Range<usize>| -> i64 { stamp[range].parse().unwrap() };
    let (year, month, day) = (field(0..4), field(5..7), field(8..10));
    let (hour, minute, second) = (field(11..13), field(14..16), field(17..19));
    let micros: u64 = stamp[20..26].parse().unwrap();
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + hour * 3600 + minute * 60 + second;
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_micros(micros)
}

fn assert_holds(db: &Path, acked: &[(String, u32)], what: &str) {
    let rows = rows_of(db);
    for (name, id) in acked {
        assert_eq!(
            rows.get(id),
            Some(name),
            "{what}: acknowledged ID {id} ({name}) missing"
        );
    }
}

/// Seed 000's `backup-desktop.pl`, unchanged, run by `perl` while a client keeps registering
/// files: it finds `srvmsg` through /etc/HELIOSInstallPath, freezes the desktop and copies
/// `.Desktop` with `cp -p`. The copy passes the integrity check and holds every ID acknowledged
/// before the script started (so before its freeze); the writes went on during the freeze and
/// none of them is lost.
#[test]
fn seed_000_backup_script_runs_unchanged_under_write_load() {
    let mut env = Env::new(&["vol", "backup"]);
    env.serve(&["vol"]);
    let vol = env.path("vol");
    let load = WriteLoad::start(&env, &vol);
    wait_for_acks(&load.acked, 200);
    let before_freeze = load.acked();

    // The seed's script as shipped in contrib/helios/examples; where the team's shared copy
    // is at hand (../shared beside the repository), it must be the same text.
    let script = helios_dir().join("examples/backup-desktop.pl");
    let shared =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/helios/backup-desktop.pl");
    if let Ok(original) = std::fs::read(&shared) {
        assert_eq!(
            std::fs::read(&script).unwrap(),
            original,
            "the script is changed"
        );
    }
    let Some(mut cmd) = on_a_helios_host(&env, "perl", &[script.to_str().unwrap(), "20"]) else {
        return;
    };
    let dest = env.path("backup");
    let script_started = SystemTime::now();
    let out = cmd
        .env("VOLPATH", &vol)
        .env("DEST", format!("{}/", dest.display()))
        .output()
        .unwrap();
    let during = load.acked().len();
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Using specified freeze time of 20"),
        "{report}"
    );
    assert!(stdout.contains("The time to copy took less ("), "{report}");

    let copy = dest.join(".Desktop");
    assert_eq!(sqlite3(&copy, "PRAGMA integrity_check"), "ok");
    assert_holds(&copy, &before_freeze, "the backup copy");
    // ... and every one acknowledged before the server froze the desktop, while perl started.
    let frozen = frozen_at(&env.log_text());
    assert!(script_started < frozen && frozen < SystemTime::now());
    let before_frozen = load.acked_before(frozen);
    eprintln!(
        "acknowledged: {} before the script, {} before the freeze",
        before_freeze.len(),
        before_frozen.len()
    );
    assert!(before_frozen.len() >= before_freeze.len());
    assert_holds(&copy, &before_frozen, "the backup copy");
    assert!(stdout.contains("frozen until "), "deskd's answer: {report}");
    let status = env.deskd_ok(&["status", "--json"]);
    assert!(
        !status.contains("\"frozen_until\":null"),
        "still frozen: {status}"
    );

    // The load was not held up by the freeze: more answers came after the script started.
    wait_for_acks(&load.acked, during + 100);
    // Run again after a thaw, asking for more than the script's FreezeMax: its own message,
    // a freeze of 60 s (deskd's freeze_max, so no second message), a good copy.
    env.deskd_ok(&["thaw"]);
    let before_second = load.acked();
    let dest = env.path("backup-2");
    std::fs::create_dir(&dest).unwrap();
    let mut cmd = on_a_helios_host(&env, "perl", &[script.to_str().unwrap(), "100"]).unwrap();
    let out = cmd
        .env("VOLPATH", &vol)
        .env("DEST", format!("{}/", dest.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = stdout_of(&out);
    assert!(
        stdout.contains("FreezeTime (100) > FreezeMax (60), using new value: 60\n"),
        "{}",
        text(&out)
    );
    assert_eq!(stdout.matches("FreezeMax").count(), 1, "{}", text(&out));
    let copy = dest.join(".Desktop");
    assert_eq!(sqlite3(&copy, "PRAGMA integrity_check"), "ok");
    assert_holds(&copy, &before_second, "the second copy");

    let all = load.stop();
    assert!(all.len() > before_freeze.len());
    env.deskd_ok(&["thaw"]);
    env.term();
    assert_holds(&vol.join(".Desktop"), &all, "the live desktop");
}

/// An administrator's routine: read and set desksrv's preferences with `prefvalue` (deskd's
/// configuration file), apply them with `srvutil reconf desksrv` (SIGHUP), check the server
/// with `srvutil status`, freeze with `srvmsg` past the new FreezeMax (HELIOS's message),
/// thaw and flush with `srvmsg`; mistakes get clear errors and exit 2.
#[test]
fn prefvalue_srvutil_and_srvmsg_do_an_administrators_jobs() {
    let mut env = Env::new(&["vol"]);
    let vol = env.path("vol");
    let config = env.path("deskd.toml");
    std::fs::write(
        &config,
        format!(
            "# site settings\n[defaults]\nflush_delay = 30 # s\n\n[volume.\"{}\"]\n",
            vol.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    env.start(&["--config", config.to_str().unwrap()]);
    let run = |env: &Env, program: &str, args: &[&str]| -> Option<Output> {
        let mut cmd = on_a_helios_host(env, program, args)?;
        Some(cmd.env("DESKD_CONFIG", &config).output().unwrap())
    };
    if run(&env, "true", &[]).is_none() {
        return;
    }
    let tool = |name: &str| format!("{INSTALLED}/bin/{name}");
    let pref = |key: &str| format!("Programs/desksrv/{key}");

    // Reading: a value set, and one left unset (nothing printed, exit 1).
    let out = run(&env, &tool("prefvalue"), &["-k", &pref("SQLFlushDelay")]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "30\n",
        "{}",
        text(&out)
    );
    let out = run(&env, &tool("prefvalue"), &["-k", &pref("FreezeMax")]).unwrap();
    assert_eq!(
        (out.status.code(), out.stdout.len()),
        (Some(1), 0),
        "{}",
        text(&out)
    );

    // Setting: FreezeMax 3 lands in [defaults], the rest of the file is kept.
    let out = run(
        &env,
        &tool("prefvalue"),
        &["-k", &pref("FreezeMax"), "-t", "int", "3"],
    )
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let file = std::fs::read_to_string(&config).unwrap();
    assert!(
        file.starts_with("# site settings\n[defaults]\nflush_delay = 30 # s\nfreeze_max = 3\n"),
        "{file}"
    );
    assert!(
        file.contains(&format!("[volume.\"{}\"]", vol.display())),
        "{file}"
    );
    assert_eq!(mode_of(&config), 0o640, "the file keeps its mode");
    let out = run(&env, &tool("prefvalue"), &["-k", &pref("FreezeMax")]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "3\n",
        "{}",
        text(&out)
    );

    // Bad input: clear errors, exit 2, the file unchanged.
    for (args, says) in [
        (vec!["-k", "Programs/desksrv/UseSQL"], "no preference"),
        (vec!["-k", "Programs/desksrv/FreezeMax", "0"], "at least 1"),
        (
            vec!["-k", "Programs/desksrv/FreezeMax", "soon"],
            "whole number",
        ),
        (
            vec!["-k", "Programs/desksrv/FreezeMax", "-t", "str", "9"],
            "type int",
        ),
    ] {
        let out = run(&env, &tool("prefvalue"), &args).unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out)
        );
    }
    assert_eq!(std::fs::read_to_string(&config).unwrap(), file);

    // srvutil reconf desksrv: the server re-reads the file (SIGHUP) and says so.
    let out = run(&env, &tool("srvutil"), &["reconf", "desksrv"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    env.wait_for_log("reconfigured: ", 1);
    let out = run(&env, &tool("srvutil"), &["status"]).unwrap();
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    let pid = env.server.as_ref().unwrap().id();
    assert!(out.status.success(), "{}", text(&out));
    assert!(status.starts_with("desksrv"), "{status}");
    assert!(
        status.contains(&format!(" running      pid {pid}, 1 volume,")),
        "{status}"
    );

    // The new FreezeMax applies: srvmsg freeze 20 is cut to 3 with HELIOS's message.
    let out = run(
        &env,
        &tool("srvmsg"),
        &["-c", "-n", "desksrv", "freeze", "20"],
    )
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("FreezeTime (20) > FreezeMax (3), using new value: 3"),
        "{}",
        text(&out)
    );
    let frozen = env.deskd_ok(&["status", "--json"]);
    assert!(!frozen.contains("\"frozen_until\":null"), "{frozen}");
    // thaw and flush have their deskd meaning.
    let out = run(&env, &tool("srvmsg"), &["-c", "-n", "desksrv", "thaw"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(env
        .deskd_ok(&["status", "--json"])
        .contains("\"frozen_until\":null"));
    env.dt_ok(&[b"touch", b"vol/after-thaw"]);
    let out = run(&env, &tool("srvmsg"), &["-c", "-n", "desksrv", "flush"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        env.deskd_ok(&["status", "--json"])
            .contains("\"wal_bytes\":0"),
        "a flush empties the WAL"
    );

    // Messages without a deskd meaning, and other servers, are refused with exit 2.
    for args in [
        vec!["-c", "-n", "desksrv", "shutdown"],
        vec!["-c", "-n", "afpsrv", "freeze"],
        vec!["-m", "-n", "desksrv", "hello"],
        vec!["-c", "-n", "desksrv", "freeze", "ten"],
    ] {
        let out = run(&env, &tool("srvmsg"), &args).unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(!out.stderr.is_empty(), "{args:?}: says why");
    }
    // `srvmsg -r -n desksrv` is a reconf too.
    let out = run(&env, &tool("srvmsg"), &["-r", "-n", "desksrv"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    env.wait_for_log("reconfigured: ", 2);

    // Deleting the preference brings deskd's default back.
    let out = run(&env, &tool("prefvalue"), &["-k", &pref("FreezeMax"), "-d"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!std::fs::read_to_string(&config)
        .unwrap()
        .contains("freeze_max"));

    // With the server gone: status says "not running" (exit 1), reconf fails naming the socket.
    env.term();
    let out = run(&env, &tool("srvutil"), &["status"]).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not running"),
        "{}",
        text(&out)
    );
    let out = run(&env, &tool("srvutil"), &["reconf", "desksrv"]).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(env.socket.to_str().unwrap()),
        "{}",
        text(&out)
    );
}

/// `bin/NAME` of contrib/helios run as `uid` (None: the test's user) with `deskd` on PATH and
/// this Env's socket.
fn helios_tool(env: &Env, uid: Option<u32>, name: &str, args: &[&str]) -> Output {
    use std::os::unix::process::CommandExt;
    let deskd = match uid {
        None => PathBuf::from(DESKD),
        Some(_) => env.linked_for_others(DESKD),
    };
    let path = format!(
        "{}:{}",
        deskd.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("perl");
    cmd.arg(helios_dir().join("bin").join(name))
        .args(args)
        .current_dir(env.dir.path())
        .env("PATH", path)
        .env("DESKD_SOCKET", &env.socket);
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    cmd.output().unwrap()
}

/// `rebuild -s` prints nothing and exits 0 when the desktop is up to date, prints the
/// differences and exits 1 when not; `rebuild` repairs (exit 0); usage errors and missing
/// volumes exit 2 with a message; with several volumes the worst status wins.
#[test]
fn rebuild_keeps_helios_output_and_exit_rules() {
    let mut env = Env::new(&["vol", "other"]);
    // Not watched: a file made behind deskd's back must stay unknown for `-s` to report it.
    env.serve_unwatched(&["vol", "other"]);
    env.dt_ok(&[b"touch", b"vol/known"]);
    let vol = env.path("vol").display().to_string();
    let other = env.path("other").display().to_string();

    let out = helios_tool(&env, None, "rebuild", &["-s", &vol]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "no output = up to date: {}",
        text(&out)
    );

    // A file made behind deskd's back (a host script, an FTP upload).
    std::fs::write(env.path("vol/uploaded"), b"x").unwrap();
    let out = helios_tool(&env, None, "rebuild", &["-s", &vol]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("uploaded"),
        "{}",
        text(&out)
    );
    let out = helios_tool(&env, None, "rebuild", &["-s", &other, &vol]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the worst of both: {}",
        text(&out)
    );

    let out = helios_tool(&env, None, "rebuild", &[&vol]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = helios_tool(&env, None, "rebuild", &["-s", &vol, &other]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    let id = env.id_of(&env.path("vol/uploaded"));
    let out = helios_tool(&env, None, "rebuild", &["-f", &vol]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        env.id_of(&env.path("vol/uploaded")),
        id,
        "rebuild -f loses no ID"
    );

    for (args, says) in [
        (vec!["-f", "-s", vol.as_str()], "exclude each other"),
        (vec!["-s"], "no volume"),
        (vec!["-x", vol.as_str()], "unknown option"),
    ] {
        let out = helios_tool(&env, None, "rebuild", &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out)
        );
    }
    let missing = env.path("missing").display().to_string();
    let out = helios_tool(&env, None, "rebuild", &["-s", &vol, &missing]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing"),
        "{}",
        text(&out)
    );
}

/// As an unprivileged user (nobody), `srvmsg` cannot freeze a volume it does not own and
/// `srvutil reconf` cannot signal the server: both say so and exit 1; nothing is frozen. A
/// socket some other process listens on does not get that process signalled.
#[test]
fn an_unprivileged_user_cannot_freeze_or_reconfigure() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("needs root to run the commands as nobody");
        return;
    }
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    let out = helios_tool(
        &env,
        Some(65534),
        "srvmsg",
        &["-c", "-n", "desksrv", "freeze", "30"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("need root or the volume owner"),
        "{}",
        text(&out)
    );
    assert!(env
        .deskd_ok(&["status", "--json"])
        .contains("\"frozen_until\":null"));
    let out = helios_tool(&env, Some(65534), "srvutil", &["reconf", "desksrv"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        text(&out)
    );
    assert!(
        !env.log_text().contains("reconfigured: "),
        "{}",
        env.log_text()
    );
    // A socket that is not deskd's (here the test's own): its process is not signalled.
    let planted = env.path("planted.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&planted).unwrap();
    let mut cmd = Command::new("perl");
    let out = cmd
        .arg(helios_dir().join("bin/srvutil"))
        .args(["reconf", "desksrv"])
        .env("DESKD_SOCKET", &planted)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("not deskd; not signalled"),
        "{}",
        text(&out)
    );
    let out = helios_tool(&env, Some(65534), "srvutil", &["status"]);
    assert!(out.status.success(), "any user may ask: {}", text(&out));
    assert!(stdout_of(&out).contains(" running "), "{}", text(&out));
}
