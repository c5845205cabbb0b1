//! Test harness: a temp directory with volumes, a real `deskd serve` on a private socket, and
//! helpers to run the real `dt` and `deskd` binaries and read desktops with the sqlite3 CLI.
#![allow(dead_code)]

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const DESKD: &str = env!("CARGO_BIN_EXE_deskd");
pub const DT: &str = env!("CARGO_BIN_EXE_dt");

/// Says on stderr why a test cannot run here before it returns early; under CI (`CI` set, as
/// root) it fails instead, so a test that cannot run there never passes for one that ran.
pub fn skip(why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "cannot run under CI, which must run every test: {why}"
    );
    eprintln!("skipped: {why}");
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub server: Option<Child>,
    pub log: PathBuf,
    pub starts: u32,
    /// Extra environment for the servers this Env starts (test hooks).
    pub server_env: Vec<(String, String)>,
    /// Run the servers this Env starts as this uid (and gid), not as the test's user.
    pub server_uid: Option<u32>,
    /// A command (and its arguments) the servers this Env starts are run under, such as
    /// `setpriv` with capabilities taken away.
    pub server_wrapper: Vec<String>,
}

impl Env {
    /// A temp dir with volume directories `names` (not yet served).
    pub fn new(names: &[&str]) -> Env {
        let dir = tempfile::tempdir().unwrap();
        for n in names {
            std::fs::create_dir_all(dir.path().join(n)).unwrap();
        }
        let socket = dir.path().join("deskd.sock");
        let log = dir.path().join("server-0.log");
        Env {
            dir,
            socket,
            server: None,
            log,
            starts: 0,
            server_env: Vec::new(),
            server_uid: None,
            server_wrapper: Vec::new(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Start `deskd serve` with these extra arguments; wait until the socket answers.
    pub fn start(&mut self, args: &[&str]) -> Duration {
        self.starts += 1;
        self.log = self.dir.path().join(format!("server-{}.log", self.starts));
        let log = std::fs::File::create(&self.log).unwrap();
        let began = Instant::now();
        let deskd = match self.server_uid {
            None => PathBuf::from(DESKD),
            Some(_) => self.linked_for_others(DESKD),
        };
        let mut cmd = match self.server_wrapper.split_first() {
            None => Command::new(&deskd),
            Some((wrapper, args)) => {
                let mut cmd = Command::new(wrapper);
                cmd.args(args).arg(&deskd);
                cmd
            }
        };
        if let Some(uid) = self.server_uid {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(uid);
        }
        let child = cmd
            .arg("serve")
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .envs(self.server_env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.server = Some(child);
        self.wait_ready(began)
    }

    /// Serve the named volumes (relative to the temp dir).
    pub fn serve(&mut self, volumes: &[&str]) -> Duration {
        let paths: Vec<String> = volumes
            .iter()
            .map(|v| self.path(v).display().to_string())
            .collect();
        let refs: Vec<&str> = paths.iter().map(|s| s.as_str()).collect();
        self.start(&refs)
    }

    /// Serve `volume` (relative to the temp dir) with a deskd.toml whose `[defaults]` are the
    /// lines `defaults` (each ending in a newline).
    pub fn serve_with_defaults(&mut self, volume: &str, defaults: &str) -> Duration {
        let cfg = self.path("deskd.toml");
        let root = self.path(volume);
        std::fs::write(
            &cfg,
            format!("[defaults]\n{defaults}[volume.\"{}\"]\n", root.display()),
        )
        .unwrap();
        self.start(&["--config", cfg.to_str().unwrap()])
    }

    /// `deskd status --json`: the first volume's line.
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.deskd_ok(&["status", "--json"]);
        serde_json::from_str(out.lines().next().unwrap()).unwrap()
    }

    fn wait_ready(&mut self, began: Instant) -> Duration {
        loop {
            if let Ok(mut c) = deskd_client::Client::connect(&self.socket, Duration::from_secs(5)) {
                if c.volumes().is_ok() {
                    return began.elapsed();
                }
            }
            if let Some(status) = self.server.as_mut().unwrap().try_wait().unwrap() {
                panic!("deskd exited with {status}: {}", self.log_text());
            }
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "deskd did not start: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.server.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn term(&mut self) {
        self.stop_with(libc::SIGTERM);
    }

    /// Stop the server with `signal` and require a successful exit.
    pub fn stop_with(&mut self, signal: i32) {
        if let Some(mut c) = self.server.take() {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(c.id() as i32, signal) };
            let status = c.wait().unwrap();
            assert!(
                status.success(),
                "deskd exit status after SIGTERM: {status}"
            );
        }
    }

    /// SIGHUP the server and wait for its `n`th "reconfigured" log line.
    pub fn sighup(&mut self, n: usize) {
        let pid = self.server.as_ref().expect("a running server").id();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
        let began = Instant::now();
        while self.log_text().matches("reconfigured: ").count() < n {
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Write `deskd.toml` in the temp dir: volume `vol` alone, read-only or not. SIGHUP tests
    /// rewrite it and signal the server. Not watched (`watch = "off"`): these tests count what
    /// requests record across reopenings, which the watcher would record on its own.
    pub fn set_read_only(&self, read_only: bool) {
        let text = format!(
            "[volume.\"{}\"]\nread_only = {read_only}\nwatch = \"off\"\n",
            self.path("vol").display()
        );
        std::fs::write(self.path("deskd.toml"), text).unwrap()
    }

    /// Serve volume `vol`, writable, from `deskd.toml`, each write held between taking its
    /// volume and reaching the volume's writer until [`Env::release_writes`] (the server's
    /// `DESKD_TEST_HOLD_WRITES_UNTIL` hook), so a reload can close the volume under it.
    pub fn start_holding_writes(&mut self) {
        self.set_read_only(false);
        let release = self.path("release-writes").display().to_string();
        self.server_env
            .push(("DESKD_TEST_HOLD_WRITES_UNTIL".into(), release));
        let config = self.path("deskd.toml").display().to_string();
        self.start(&["--config", &config]);
    }

    /// Wait until the server holds its `n`-th write (counted from its start) in the hook of
    /// [`Env::start_holding_writes`].
    pub fn wait_for_held_write(&self, n: usize) {
        self.wait_for_log("test hook: write held until", n);
    }

    /// Let the held writes go on, and every later one through without holding it.
    pub fn release_writes(&self) {
        std::fs::write(self.path("release-writes"), b"").unwrap();
    }

    /// Hold writes again after [`Env::release_writes`].
    pub fn hold_writes_again(&self) {
        std::fs::remove_file(self.path("release-writes")).unwrap();
    }

    /// Point test hook `var` of the servers this Env starts at file `name` of its dir (not
    /// made: the hook holds until the test makes it); its path.
    pub fn hook_file(&mut self, var: &str, name: &str) -> PathBuf {
        let file = self.path(name);
        self.server_env
            .push((var.into(), file.display().to_string()));
        file
    }

    /// Wait until the server's log holds `what` `n` times (60 s at most: a loaded CI machine).
    pub fn wait_for_log(&self, what: &str, n: usize) {
        wait_for_count(&self.log, what, n, "the server's log");
    }

    pub fn client(&self) -> deskd_client::Client {
        deskd_client::Client::connect(&self.socket, Duration::from_secs(10)).unwrap()
    }

    /// `bin` with `args`, in the temp dir, talking to this Env's server.
    pub fn command_for(&self, bin: &str, args: &[&[u8]]) -> Command {
        let mut cmd = Command::new(bin);
        cmd.current_dir(self.dir.path())
            .env("DESKD_SOCKET", &self.socket);
        for a in args {
            cmd.arg(std::ffi::OsStr::from_bytes(a));
        }
        cmd
    }

    fn command(&self, bin: &str, args: &[&[u8]]) -> Output {
        self.command_for(bin, args).output().unwrap()
    }

    /// Run dt; arguments are bytes so tests can pass non-UTF-8 names.
    pub fn dt(&self, args: &[&[u8]]) -> Output {
        self.command(DT, args)
    }

    /// Run dt and require success; returns stdout.
    pub fn dt_ok(&self, args: &[&[u8]]) -> String {
        let out = self.dt(args);
        assert!(
            out.status.success(),
            "dt {:?} failed: {}",
            show(args),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn deskd(&self, args: &[&str]) -> Output {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.command(DESKD, &args)
    }

    pub fn deskd_ok(&self, args: &[&str]) -> String {
        let out = self.deskd(args);
        assert!(
            out.status.success(),
            "deskd {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `bin` (DESKD or DT) as user "nobody" (uid and gid 65534, no other groups) against
    /// this Env's server; None when the tests do not run as root.
    pub fn as_nobody(&self, bin: &str, args: &[&[u8]]) -> Option<Output> {
        self.as_user(65534, bin, args, &[])
    }

    /// `as_nobody` with environment variables.
    pub fn as_nobody_with(
        &self,
        bin: &str,
        args: &[&[u8]],
        envs: &[(&str, String)],
    ) -> Option<Output> {
        self.as_user(65534, bin, args, envs)
    }

    /// `bin` linked into the temp dir, which is opened to everybody (at least 0755): the build
    /// directory may not be reachable for other users.
    pub fn linked_for_others(&self, bin: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(self.dir.path())
            .unwrap()
            .permissions()
            .mode();
        std::fs::set_permissions(
            self.dir.path(),
            std::fs::Permissions::from_mode((mode & 0o7777) | 0o755),
        )
        .unwrap();
        let name = Path::new(bin).file_name().unwrap().to_owned();
        let linked = self.dir.path().join("bin-for-others").join(name);
        if !linked.exists() {
            std::fs::create_dir_all(linked.parent().unwrap()).unwrap();
            // A hard link involves no open write handle; a copy does, and a test thread
            // forking at that moment makes exec fail with ETXTBSY for a while, so runs are
            // retried then.
            if std::fs::hard_link(bin, &linked).is_err() {
                std::fs::copy(bin, &linked).unwrap();
            }
        }
        linked
    }

    /// Runs `bin` as `uid` (gid the same, no other groups) against this Env's server; None
    /// when the tests do not run as root.
    pub fn as_user(
        &self,
        uid: u32,
        bin: &str,
        args: &[&[u8]],
        envs: &[(&str, String)],
    ) -> Option<Output> {
        use std::os::unix::process::CommandExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // Says so, and fails under CI (which runs as root): a check as another user never
            // passes for one that ran.
            skip("running a program as another user needs root");
            return None;
        }
        let linked = self.linked_for_others(bin);
        for _ in 0..100 {
            let mut cmd = self.command_for(linked.to_str().unwrap(), args);
            cmd.envs(envs.iter().map(|(k, v)| (k, v)));
            // As root, std also drops every supplementary group.
            cmd.uid(uid).gid(uid);
            match cmd.output() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => return Some(other.unwrap()),
            }
        }
        panic!("{} stayed busy", linked.display());
    }

    /// Run `script` with sh as nobody (uid and gid 65534, no other groups) in the temp dir,
    /// failing the test unless it succeeds; `dt` is linked where nobody may run it.
    pub fn sh_as_nobody(&self, script: &str) -> String {
        use std::os::unix::process::CommandExt;
        self.linked_for_others(DT);
        // As root, std also drops every supplementary group.
        run_ok(
            Command::new("sh")
                .args(["-c", script])
                .current_dir(self.dir.path())
                .uid(65534)
                .gid(65534),
        )
    }

    /// `dt info --json` for each path: (path, id, parent_id).
    pub fn ids(&self, paths: &[PathBuf]) -> Vec<serde_json::Value> {
        let mut args: Vec<&[u8]> = vec![b"info", b"--json"];
        for p in paths {
            args.push(p.as_os_str().as_bytes());
        }
        let out = self.dt_ok(&args);
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn id_of(&self, path: &Path) -> u32 {
        self.ids(&[path.to_path_buf()])[0]["id"].as_u64().unwrap() as u32
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn show(args: &[&[u8]]) -> Vec<String> {
    args.iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Wait until a load's clients have `n` acknowledgements in `acked` (at most 30 s: a load that
/// cannot reach `n` is too small to show anything).
pub fn wait_for_acks<T>(acked: &std::sync::Mutex<Vec<T>>, n: usize) {
    let began = std::time::Instant::now();
    while acked.lock().unwrap().len() < n {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "load too small: {}",
            acked.lock().unwrap().len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An AddPath of `path` (relative to the volume's root) with no hint, type or creator.
pub fn add_path(vol: u32, path: Vec<u8>) -> deskd_client::Request {
    deskd_client::Request::add_path(vol, path)
}

/// Register existing paths (relative to the volume root) through one client, pipelined as a
/// file server would; panics on any error.
pub fn register_pipelined(c: &mut deskd_client::Client, vol: u32, paths: &[String]) {
    let mut ids = Vec::with_capacity(paths.len());
    for p in paths {
        let request = add_path(vol, p.clone().into_bytes());
        ids.push(c.send(request).unwrap());
    }
    c.flush().unwrap();
    for id in ids {
        c.wait(id).unwrap();
    }
}

/// The icon stored for creator `ttxt`, type `TEXT`, icon type 1, as the server answers it.
pub fn text_icon(c: &mut deskd_client::Client, vol: u32) -> deskd_client::Response {
    c.call(deskd_client::Request::IconGet {
        vol,
        creator: *b"ttxt",
        type_code: *b"TEXT",
        itype: 1,
    })
    .unwrap()
}

/// Create empty files at `paths` (relative to the volume `volume` of `env`) and register them
/// through one pipelining client, as a file server would.
pub fn make_and_register(env: &Env, volume: &str, paths: &[String]) {
    for p in paths {
        std::fs::write(env.path(volume).join(p), b"").unwrap();
    }
    let mut c = env.client();
    let vol = c.open_volume(&env.path(volume)).unwrap().vol;
    register_pipelined(&mut c, vol, paths);
}

/// Run the sqlite3 CLI on a desktop and return its output.
pub fn sqlite3(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 CLI installed");
    assert!(
        out.status.success(),
        "sqlite3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A snapshot of a desktop's objects table (for "unchanged" checks).
pub fn objects_dump(db: &Path) -> String {
    sqlite3(db, "SELECT id, parent, hex(name) FROM objects ORDER BY id")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A tmpfs mounted at `mnt` for the life of the guard; `None` (the test skips) where mounting
/// fails outside CI — it needs root, which CI has.
pub struct Mounted(std::path::PathBuf);

impl Mounted {
    /// A 4 MiB tmpfs.
    pub fn tmpfs(mnt: std::path::PathBuf) -> Option<Mounted> {
        Mounted::tmpfs_of(mnt, "4m")
    }

    /// A tmpfs of `size` (mount's `size=` syntax), its root 0755 as a volume's usually is (a
    /// new tmpfs is 1777, a world-writable root that deskd refuses to serve).
    pub fn tmpfs_of(mnt: std::path::PathBuf, size: &str) -> Option<Mounted> {
        std::fs::create_dir_all(&mnt).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&mnt)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Mounted(mnt)),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var_os("CI").is_none(),
                    "mount failed under CI: {why}"
                );
                eprintln!("skipped: mounting a tmpfs failed (needs root): {why}");
                None
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // Lazy: a server still holding files there (a test that failed early) cannot keep
        // the mount alive after the test.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

// --- admin ---

/// The permission bits of `path` (not following a final symlink).
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// `sh -c 'umask 022; exec "$@"'`: what a command creates gets the usual world-readable mode
/// unless the command itself asks for less, whatever the test runner's umask is.
pub const UMASK_022: [&str; 4] = ["sh", "-c", "umask 022 && exec \"$@\"", "sh"];

impl Env {
    /// `deskd ARGS` under umask 022 (see [`UMASK_022`]), with `envs`, in the temp dir.
    pub fn deskd_umask_022(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(UMASK_022[0]);
        cmd.args(&UMASK_022[1..])
            .arg(DESKD)
            .args(args)
            .current_dir(self.dir.path())
            .env("DESKD_SOCKET", &self.socket)
            .envs(envs.iter().copied());
        cmd.output().unwrap()
    }

    /// Run `deskd serve --socket SOCKET ARGS`, which must exit on its own (a refusal) within
    /// 60 s; a server that starts serving instead is killed and the test fails.
    pub fn serve_refused(&self, socket: &Path, args: &[&str]) -> Output {
        let mut child = Command::new(DESKD)
            .arg("serve")
            .arg("--socket")
            .arg(socket)
            .args(args)
            .current_dir(self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let began = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            if began.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "deskd serve {args:?} did not refuse to start: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

// --- mv ---

/// Every object in the desktop of the volume at `root`, by its path relative to the root
/// (`""` for the root itself): its ID. Read with the sqlite3 CLI (the server may be running).
pub fn desktop_paths(root: &Path) -> std::collections::BTreeMap<String, u32> {
    let out = sqlite3(
        &root.join(".Desktop"),
        "WITH RECURSIVE p(id, path) AS (
             SELECT id, '' FROM objects WHERE id = 2
             UNION ALL
             SELECT o.id, CASE p.path WHEN '' THEN CAST(o.name AS TEXT)
                          ELSE p.path || '/' || CAST(o.name AS TEXT) END
             FROM objects o JOIN p ON o.parent = p.id WHERE o.id <> 2)
         SELECT id || '|' || path FROM p",
    );
    out.lines()
        .map(|l| {
            let (id, path) = l.split_once('|').unwrap();
            (path.to_string(), id.parse().unwrap())
        })
        .collect()
}

/// The ID counter of the desktop of the volume at `root` (the last ID it gave out).
pub fn desktop_counter(root: &Path) -> u32 {
    sqlite3(
        &root.join(".Desktop"),
        "SELECT value FROM meta WHERE key = 'last_id'",
    )
    .parse()
    .unwrap()
}

/// Every object on disk at and below `top` (relative to the volume `root`), deskd's own
/// names left out: their paths relative to `root`.
pub fn disk_objects(root: &Path, top: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![top.to_string()];
    while let Some(rel) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(root.join(&rel)) else {
            continue;
        };
        if meta.is_dir() {
            for e in std::fs::read_dir(root.join(&rel)).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                if !deskd_volume::is_protected(name.as_bytes()) {
                    stack.push(format!("{rel}/{name}"));
                }
            }
        }
        out.push(rel);
    }
    out.sort();
    out
}

/// Run dt (as `uid` when given) with the test hook `DESKD_TEST_MV_PAUSE_AT=step`, wait until
/// it says it has reached that step, and kill it there with SIGKILL. Panics when dt ends
/// without reaching it.
pub fn dt_killed_at(env: &Env, uid: Option<u32>, step: &str, args: &[&[u8]]) {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let bin = match uid {
        None => PathBuf::from(DT),
        Some(_) => env.linked_for_others(DT),
    };
    let mut child = None;
    for _ in 0..100 {
        let mut cmd = env.command_for(bin.to_str().unwrap(), args);
        cmd.env("DESKD_TEST_MV_PAUSE_AT", step)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => {
                child = Some(other.unwrap());
                break;
            }
        }
    }
    let mut child = child.expect("dt stayed busy");
    let stderr = child.stderr.take().unwrap();
    let mut said = String::new();
    let wanted = format!("dt: test pause at {step}");
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if line == wanted {
            child.kill().unwrap();
            child.wait().unwrap();
            return;
        }
        said.push_str(&line);
        said.push('\n');
    }
    panic!(
        "dt {:?} ended ({:?}) without reaching step {step}: {said}",
        show(args),
        child.wait()
    );
}

// --- limits ---

pub const BENCH: &str = env!("CARGO_BIN_EXE_deskd-bench");

impl Env {
    /// Start `bin args` as `uid` (gid the same, no other groups) against this Env's server,
    /// with stdin and stdout piped (closing stdin ends a `deskd-bench hold`). Panics when the
    /// tests do not run as root: such a test cannot run and must fail, not skip.
    pub fn spawn_as_user(&self, uid: u32, bin: &str, args: &[&[u8]]) -> Child {
        use std::os::unix::process::CommandExt;
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
        let linked = self.linked_for_others(bin);
        for _ in 0..100 {
            let mut cmd = self.command_for(linked.to_str().unwrap(), args);
            cmd.uid(uid)
                .gid(uid)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => return other.unwrap(),
            }
        }
        panic!("{} stayed busy", linked.display());
    }
}

/// A small ext4 file system on a loop device, mounted at `mnt` for the life of the guard
/// (unmounted when dropped, also when the test fails). Needs root: it panics otherwise.
pub struct SmallExt4 {
    pub mnt: PathBuf,
    _image_dir: tempfile::TempDir,
}

impl SmallExt4 {
    /// An ext4 of `mib` MiB mounted at `mnt` (created if missing).
    pub fn mount(mnt: PathBuf, mib: u64) -> SmallExt4 {
        let image_dir = tempfile::tempdir().unwrap();
        let image = image_dir.path().join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        let run = |cmd: &mut Command| {
            let out = cmd
                .output()
                .unwrap_or_else(|e| panic!("{cmd:?}: {e} (needs e2fsprogs and root)"));
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        // No reserved blocks and no journal: "full" means full, for root too, and the
        // little space there is stays for the test.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-O", "^has_journal"])
            .arg(&image));
        run(Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(&image)
            .arg(&mnt));
        SmallExt4 {
            mnt,
            _image_dir: image_dir,
        }
    }

    /// Bytes free for an unprivileged writer (statvfs `f_bavail`).
    pub fn free_bytes(&self) -> u64 {
        free_bytes(&self.mnt)
    }

    /// Fill the file system with `name` (written as root) until at most `leave` bytes are free.
    pub fn fill_leaving(&self, name: &str, leave: u64) {
        use std::io::Write;
        let path = self.mnt.join(name);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let block = vec![0xa5u8; 4096];
        while self.free_bytes() > leave {
            let chunk = (self.free_bytes() - leave).min(1 << 20) as usize;
            let mut left = chunk.max(1);
            while left > 0 {
                let n = left.min(block.len());
                if f.write_all(&block[..n]).is_err() {
                    return;
                }
                left -= n;
            }
            f.sync_all().unwrap();
        }
    }
}

/// Bytes free under `path` for an unprivileged writer (statvfs `f_bavail`).
pub fn free_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs writes one struct statvfs; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

impl Drop for SmallExt4 {
    fn drop(&mut self) {
        // Lazy: a server still holding files there cannot keep the mount alive.
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

// --- the Netatalk bridge ---

/// `deskd netatalk` on a port of its choosing, talking to the Env's server; killed when dropped.
pub struct Bridge {
    pub child: Child,
    pub log: PathBuf,
    pub addr: String,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bridge {
    /// Start `deskd netatalk --listen 127.0.0.1:0 ARGS` and wait for the address it logs.
    pub fn start(env: &Env, args: &[&str]) -> Bridge {
        let log = env.path("netatalk.log");
        let child = Command::new(DESKD)
            .args(["netatalk", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("DESKD_SOCKET", &env.socket)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Killed on drop, also when the address never shows.
        let mut bridge = Bridge {
            child,
            log,
            addr: String::new(),
        };
        let began = Instant::now();
        loop {
            let text = bridge.log_text();
            if let Some(rest) = text.split("CNID protocol on ").nth(1) {
                bridge.addr = rest.split_whitespace().next().unwrap().to_string();
                return bridge;
            }
            assert!(began.elapsed() < Duration::from_secs(30), "{text}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A connection as afpd makes one: the handshake for the volume afp.conf names `name`, at
    /// `path`, as user alice (10 s read timeout).
    pub fn afpd(&self, path: &Path, name: &[u8]) -> std::net::TcpStream {
        afpd_at(&self.addr, path, name)
    }

    /// Wait (up to 60 s) until the bridge's log holds `what`; returns the log. The bridge logs
    /// a refused or cut-off connection after closing it, so a test that saw the close polls.
    pub fn wait_for_log(&self, what: &str) -> String {
        wait_for_text(&self.log, what, "the bridge's log")
    }
}

/// A connection to an afpd CNID listener at `addr` as afpd makes one: the handshake for the
/// volume afp.conf names `name`, at `path`, as user alice (10 s read timeout).
pub fn afpd_at(addr: &str, path: &Path, name: &[u8]) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&deskd_netatalk::wire::encode_handshake(
        &deskd_netatalk::wire::Handshake {
            volume_name: name.to_vec(),
            volume_path: path.as_os_str().as_encoded_bytes().to_vec(),
            user: b"alice".to_vec(),
        },
    ))
    .unwrap();
    s
}

/// Wait (up to 60 s) until the file `log` (`whose`, for the failure) holds `what`; returns its
/// text. A listener logs a refused or cut-off connection after closing it, so a test that saw
/// the close polls.
pub fn wait_for_text(log: &Path, what: &str, whose: &str) -> String {
    wait_for_count(log, what, 1, whose)
}

/// Wait (up to 60 s) until the file `log` (`whose`, for the failure) holds `what` at least `n`
/// times; returns its text.
pub fn wait_for_count(log: &Path, what: &str, n: usize, whose: &str) -> String {
    let began = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(what).count() >= n {
            return text;
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "waited for {n} times {what:?} in {whose}: {text}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

// --- issue 25 part PKG ---

/// The workspace's root (the clone under test).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The cargo target directory these tests were built in (`CARGO_TARGET_TMPDIR` is its `tmp`).
pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The release binaries of this tree (target/release), brought up to date by
/// `cargo build --release --workspace --bins --locked`: a check of a few seconds after
/// scripts/test.sh's own release build, which runs before the tests. None (the test skips, or
/// fails under CI) when there is no release build yet: a first one takes minutes.
pub fn release_bins() -> Option<PathBuf> {
    let bins = target_dir().join("release");
    if !bins.join("deskd").exists() {
        skip("no release build: run cargo build --release --workspace (scripts/test.sh does)");
        return None;
    }
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        without_cargos_test_env(&mut build);
        let out = build
            .args(["build", "--release", "--workspace", "--bins", "--locked"])
            .current_dir(workspace_root())
            .env("CARGO_TARGET_DIR", target_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cargo build --release: {}",
            stderr(&out)
        );
    });
    Some(bins)
}

/// Runs `cmd` and returns its stdout, failing the test (with stdout and stderr) unless it
/// exits 0.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/test.sh installs the tools)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes from `cmd`'s environment what cargo sets for a test process (`CARGO_PKG_NAME`,
/// `CARGO_MANIFEST_DIR`, …), so a cargo it runs sees the environment of a plain build. Some
/// build scripts (ring's) rerun when such a variable changes, and with them every crate above:
/// a minute of rebuilding, twice, for a build that is up to date.
pub fn without_cargos_test_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_by_cargo_test = name == "CARGO"
            || [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| name.starts_with(p))
            || ["CARGO_PRIMARY_PACKAGE", "CARGO_RUSTC_CURRENT_DIR"].contains(&name.as_ref());
        if set_by_cargo_test {
            cmd.env_remove(name.as_ref());
        }
    }
}

// --- issue 22 part INSERVE ---

/// Which of deskd's afpd CNID listeners a Netatalk test drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The standalone `deskd netatalk` bridge, a client of the server's socket.
    Bridge,
    /// The listener inside `deskd serve` itself (`[netatalk]` in deskd.toml).
    InServe,
}

/// afpd's way to deskd in a test: a [`Bridge`] process, or the server's own listener.
pub struct Cnid {
    pub via: Via,
    /// The log holding the listener's lines (the bridge's, or the server's).
    pub log: PathBuf,
    pub addr: String,
    /// Killed when dropped.
    bridge: Option<Bridge>,
}

impl Env {
    /// Serve `volumes` (relative to the temp dir) with `config` (deskd.toml's text, maybe
    /// empty) and open afpd's CNID listener as `via` says, reading `afp_conf` for the
    /// `vol dbpath` folders when given.
    pub fn serve_cnid(
        &mut self,
        via: Via,
        volumes: &[&str],
        config: &str,
        afp_conf: Option<&Path>,
    ) -> Cnid {
        let file = self.path("deskd.toml");
        // A `[netatalk]` table ending `config` gives the in-serve listener's other keys.
        let (mut text, own) = match config.split_once("[netatalk]\n") {
            Some((before, own)) => (before.to_owned(), own),
            None => (config.to_owned(), ""),
        };
        // Not watched: these tests drive what afpd's requests (and the claims they carry) do
        // with changes made on disk, which the watcher would record on its own.
        if !text.contains("[defaults]") {
            text.insert_str(0, "[defaults]\nwatch = \"off\"\n");
        }
        if via == Via::InServe {
            text.push_str("\n[netatalk]\nlisten = \"127.0.0.1:0\"\n");
            if let Some(conf) = afp_conf {
                text.push_str(&format!("afp_conf = \"{}\"\n", conf.display()));
            }
            text.push_str(own);
        }
        std::fs::write(&file, text).unwrap();
        let mut args = vec!["--config".to_owned(), file.display().to_string()];
        args.extend(volumes.iter().map(|v| self.path(v).display().to_string()));
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        self.start(&refs);
        match via {
            Via::Bridge => {
                let conf = afp_conf.map(|c| c.display().to_string());
                let bridge_args: Vec<&str> = match &conf {
                    Some(c) => vec!["--afp-conf", c],
                    None => Vec::new(),
                };
                let bridge = Bridge::start(self, &bridge_args);
                Cnid {
                    via,
                    log: bridge.log.clone(),
                    addr: bridge.addr.clone(),
                    bridge: Some(bridge),
                }
            }
            Via::InServe => {
                self.wait_for_log("CNID protocol on ", 1);
                let text = self.log_text();
                let rest = text.split("CNID protocol on ").nth(1).unwrap();
                Cnid {
                    via,
                    log: self.log.clone(),
                    addr: rest.split_whitespace().next().unwrap().to_string(),
                    bridge: None,
                }
            }
        }
    }
}

impl Cnid {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A connection as afpd makes one (see [`Bridge::afpd`]).
    pub fn afpd(&self, path: &Path, name: &[u8]) -> std::net::TcpStream {
        afpd_at(&self.addr, path, name)
    }

    /// Wait (up to 60 s) until the listener's log holds `what`; returns the log.
    pub fn wait_for_log(&self, what: &str) -> String {
        wait_for_text(&self.log, what, "the listener's log")
    }
}

// --- shared by helios_busy and netatalk_inserve ---

/// The real `sqlite3` CLI holding the desktop's write lock (or a read snapshot) until
/// released.
pub struct Sqlite3Lock(std::process::Child);

impl Sqlite3Lock {
    pub fn take(desktop: &std::path::Path) -> Sqlite3Lock {
        Sqlite3Lock::begin(desktop, "BEGIN IMMEDIATE; SELECT 'locked';\n")
    }

    /// A reader (a backup through SQLite, an admin's session) holding a snapshot of the
    /// desktop as it is now: returns once sqlite3 has read from it.
    pub fn read_snapshot(desktop: &std::path::Path) -> Sqlite3Lock {
        Sqlite3Lock::begin(
            desktop,
            "BEGIN; SELECT count(*) FROM objects; SELECT 'locked';\n",
        )
    }

    /// Run `sql`, ending in `SELECT 'locked'`, and wait until sqlite3 has answered it.
    fn begin(desktop: &std::path::Path, sql: &str) -> Sqlite3Lock {
        let mut child = std::process::Command::new("sqlite3")
            .arg(desktop)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the sqlite3 CLI is installed");
        use std::io::{BufRead, Write};
        let stdin = child.stdin.as_mut().unwrap();
        stdin.write_all(sql.as_bytes()).unwrap();
        stdin.flush().unwrap();
        let mut out = std::io::BufReader::new(child.stdout.as_mut().unwrap());
        let mut line = String::new();
        while line.trim() != "locked" {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "sqlite3 ended before it answered {sql:?}"
            );
        }
        Sqlite3Lock(child)
    }

    /// End the session: its transaction is rolled back and the lock released.
    pub fn release(mut self) {
        drop(self.0.stdin.take());
        assert!(self.0.wait().unwrap().success());
    }
}

// --- watch ---

impl Env {
    /// Serve `volumes` (relative to the temp dir) with `config` as deskd.toml (its `[defaults]`
    /// apply to them: `watch = "off"`, the test setting `watch_queue = N`), and wait until the
    /// log says how each is watched (`watching …` or `not watching …`).
    pub fn serve_watched(&mut self, volumes: &[&str], config: &str) {
        let file = self.path("deskd.toml");
        // Watching is off by default: ask for it (in `[defaults]`) unless `config` chooses.
        let config = if config.contains("watch =") {
            config.to_string()
        } else if config.contains("[defaults]\n") {
            config.replacen("[defaults]\n", "[defaults]\nwatch = \"auto\"\n", 1)
        } else {
            format!("[defaults]\nwatch = \"auto\"\n{config}")
        };
        std::fs::write(&file, config).unwrap();
        let mut args = vec!["--config".to_owned(), file.display().to_string()];
        args.extend(volumes.iter().map(|v| self.path(v).display().to_string()));
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        self.start(&refs);
        for v in volumes {
            // `not watching ROOT` holds it too.
            self.wait_for_log(&format!("watching {}", self.path(v).display()), 1);
        }
    }

    /// The barrier of issue 23: `deskd flush --volume VOL` applies every change the kernel
    /// has queued for the volume, then flushes; afterwards the desktop shows them.
    pub fn watch_barrier(&self, volume: &str) {
        let root = self.path(volume).display().to_string();
        self.deskd_ok(&["flush", "--volume", &root]);
    }

    /// The `watch` object of `deskd status --json` for `volume` (relative to the temp dir).
    pub fn watch_status(&self, volume: &str) -> serde_json::Value {
        let root = self.path(volume).display().to_string();
        let out = self.deskd_ok(&["status", "--json"]);
        let line = out
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["path"].as_str() == Some(root.as_str()))
            .unwrap_or_else(|| panic!("no status line for {root}: {out}"));
        let watch = line["watch"].clone();
        assert!(
            watch.is_object(),
            "no `watch` in the status of {root}: {line}"
        );
        watch
    }

    /// Wait (60 s at most) until every watch rescan of `volume` that the log shows started
    /// has finished, and at least `n` have; returns the log.
    pub fn wait_for_rescans(&self, volume: &str, n: usize) -> String {
        let root = self.path(volume).display().to_string();
        let started = format!("watch rescan of {root} started");
        let finished = format!("watch rescan of {root} finished");
        let began = Instant::now();
        loop {
            let log = self.log_text();
            let (s, f) = (
                log.matches(&started).count(),
                log.matches(&finished).count(),
            );
            if f >= n && f == s {
                return log;
            }
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "waited for {n} finished watch rescans of {root} ({s} started, {f} finished): {log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait (60 s at most) until the last loss of events the log shows for `volume` (the
    /// server's `watching ROOT: events were lost (…)` line: a queue overflow, `watch_queue`,
    /// or past `watch_held_mib`) is followed by a watch rescan that started after it and
    /// finished; returns the log.
    pub fn wait_for_rescan_after_overflow(&self, volume: &str) -> String {
        let root = self.path(volume).display().to_string();
        let started = format!("watch rescan of {root} started");
        let finished = format!("watch rescan of {root} finished");
        let began = Instant::now();
        loop {
            let log = self.log_text();
            let overflow = log.rfind(&format!("watching {root}: events were lost ("));
            let settled = overflow.is_some_and(|at| {
                log[at..]
                    .find(&started)
                    .is_some_and(|s| log[at + s..].contains(&finished))
            });
            if settled {
                return log;
            }
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "no overflow, or no watch rescan of {root} started and finished after the last \
                 overflow: {log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `deskd rebuild -s VOL` must print nothing and exit 0: the desktop, the resource files
    /// and the mirrors agree with the disk.
    pub fn rebuild_scan_silent(&self, volume: &str) {
        let out = self.deskd(&["rebuild", "-s", self.path(volume).to_str().unwrap()]);
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "rebuild -s of {volume} found differences ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
    }
}

// Helpers of the watch tests, for objects at paths `rel` relative to their volume `vol`.

/// `dt touch` (files) or `dt mkdir -p` (dirs) of paths relative to `vol`, 500 at a time:
/// registered objects with resource files and mirrors, as a user of dt has them.
pub fn dt_make(env: &Env, verb: &[&str], rels: &[String]) {
    let root = env.path("vol");
    for chunk in rels.chunks(500) {
        let full: Vec<String> = chunk
            .iter()
            .map(|r| root.join(r).display().to_string())
            .collect();
        let mut args: Vec<&[u8]> = verb.iter().map(|v| v.as_bytes()).collect();
        args.extend(full.iter().map(|f| f.as_bytes()));
        env.dt_ok(&args);
    }
}

pub fn dt_touch(env: &Env, rels: &[&str]) {
    let rels: Vec<String> = rels.iter().map(|r| r.to_string()).collect();
    dt_make(env, &["touch"], &rels);
}

pub fn dt_mkdir(env: &Env, rels: &[&str]) {
    let rels: Vec<String> = rels.iter().map(|r| r.to_string()).collect();
    dt_make(env, &["mkdir", "-p"], &rels);
}

pub fn dt_comment(env: &Env, rel: &str, comment: &str) {
    let path = env.path("vol").join(rel);
    env.dt_ok(&[
        b"set",
        b"--comment",
        comment.as_bytes(),
        path.as_os_str().as_encoded_bytes(),
    ]);
}

/// The comment in the resource file of the object at `rel`.
pub fn rsrc_comment(env: &Env, rel: &str) -> String {
    let rsrc = deskd_volume::rsrc::rsrc_path(&env.path("vol").join(rel)).unwrap();
    let h = deskd_volume::rsrc::read_header(&rsrc)
        .unwrap()
        .unwrap_or_else(|| panic!("no resource file {}", rsrc.display()));
    String::from_utf8_lossy(&h.comment).into_owned()
}

/// The object at `rel` is as dt leaves it: `desktop` (path → ID) has `id` there, its resource
/// file names `id`, and so does its mirror (not on symlinks, which carry no xattrs).
pub fn assert_like_dt(
    env: &Env,
    desktop: &std::collections::BTreeMap<String, u32>,
    rel: &str,
    id: u32,
) {
    let path = env.path("vol").join(rel);
    assert_eq!(
        desktop.get(rel).copied(),
        Some(id),
        "the desktop's ID at {rel}"
    );
    assert_eq!(rsrc_id(&path), Some(id), "the resource file's ID of {rel}");
    let link = std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink();
    if !link {
        assert_eq!(
            deskd_volume::read_id_xattr(&path),
            Some(id),
            "the mirror of {rel}"
        );
    }
}

/// The object at `rel` has no resource file.
pub fn no_rsrc(env: &Env, rel: &str) -> bool {
    let rsrc = deskd_volume::rsrc::rsrc_path(&env.path("vol").join(rel)).unwrap();
    std::fs::symlink_metadata(rsrc).is_err()
}

/// The ID in the resource file `DIR/.rsrc/NAME` of the object at `path`, None without one.
pub fn rsrc_id(path: &Path) -> Option<u32> {
    let rsrc = deskd_volume::rsrc::rsrc_path(path)?;
    match deskd_volume::rsrc::read_header(&rsrc) {
        Ok(Some(h)) => Some(h.id),
        _ => None,
    }
}

/// A free TCP port on 127.0.0.1 (bound, then let go: the caller binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether process `pid` holds a socket listening on TCP `port` of 127.0.0.1 (its entry in
/// /proc/net/tcp, whose inode is one of the process's descriptors).
fn listens_on(pid: u32, port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl, local_address, rem_address, st (0A: LISTEN), ..., inode (the tenth).
            (fields.len() > 9 && fields[1] == local && fields[3] == "0A")
                .then(|| format!("socket:[{}]", fields[9]))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

/// A real smbd (Debian's `samba`) serving `share` (`vol`) on 127.0.0.1 at a free high port,
/// as root, with its own smb.conf and private/lock/state/cache/pid dirs under `dir`. Only
/// root, with a password made up for this smbd (in its own passdb), may connect: any local
/// user could reach the port, and guests would act as root on the share. Killed with its whole
/// process group when dropped.
pub struct Samba {
    pub port: u16,
    pub log: PathBuf,
    password: String,
    child: Child,
}

impl Samba {
    /// Start smbd for the directory `path` as share `vol`; wait until its port answers.
    /// Panics (the test fails) when smbd is missing: scripts/test.sh installs it.
    pub fn start(dir: &Path, path: &Path) -> Samba {
        // A port found free is free only until someone else binds it (another test's server,
        // between our look and smbd's bind): smbd then says so and ends, and we try another.
        for attempt in 1.. {
            match Samba::start_on(dir, path, free_port()) {
                Ok(samba) => return samba,
                Err(log) => assert!(
                    attempt < 5 && log.contains("Address already in use"),
                    "smbd did not start: {log}"
                ),
            }
        }
        unreachable!()
    }

    /// One try at [`Samba::start`] on `port`; smbd's log when it ended before it listened.
    fn start_on(dir: &Path, path: &Path, port: u16) -> Result<Samba, String> {
        use std::os::unix::process::CommandExt;
        let base = dir.join("samba");
        for sub in [
            "private", "lock", "state", "cache", "pid", "ncalrpc", "logs",
        ] {
            std::fs::create_dir_all(base.join(sub)).unwrap();
        }
        let b = base.display();
        // deskd's own names are hidden from SMB clients (veto), and a folder holding only
        // them may still be deleted (delete veto files).
        let conf = format!(
            "[global]
  server role = standalone server
  interfaces = 127.0.0.1
  bind interfaces only = yes
  smb ports = {port}
  disable netbios = yes
  server min protocol = SMB2
  private dir = {b}/private
  lock directory = {b}/lock
  state directory = {b}/state
  cache directory = {b}/cache
  pid directory = {b}/pid
  ncalrpc dir = {b}/ncalrpc
  log file = {b}/logs/log.%m
  map to guest = Never
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
[vol]
  path = {}
  read only = no
  guest ok = no
  valid users = root
  veto files = /.rsrc/.Desktop*/
  delete veto files = yes
",
            path.display()
        );
        let conf_path = base.join("smb.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let password = format!("t{:x}", rand_u64());
        let mut smbpasswd = Command::new("smbpasswd")
            .arg("-c")
            .arg(&conf_path)
            .args(["-a", "-s", "root"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("smbpasswd: {e} (scripts/test.sh installs samba)"));
        {
            use std::io::Write;
            let mut stdin = smbpasswd.stdin.take().unwrap();
            write!(stdin, "{password}\n{password}\n").unwrap();
        }
        assert!(smbpasswd.wait().unwrap().success(), "smbpasswd -a root");
        let log = base.join(format!("smbd-{port}.log"));
        let child = Command::new("smbd")
            .args(["--foreground", "--no-process-group", "--debug-stdout", "-s"])
            .arg(&conf_path)
            .process_group(0)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("smbd: {e} (scripts/test.sh installs samba)"));
        let mut samba = Samba {
            port,
            log,
            password,
            child,
        };
        let began = Instant::now();
        // Listening, and smbd itself: a connection alone could reach whoever took the port.
        while !listens_on(samba.child.id(), port) {
            if let Some(status) = samba.child.try_wait().unwrap() {
                return Err(format!("smbd exited with {status}: {}", samba.log_text()));
            }
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "smbd did not listen on {port}: {}",
                samba.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(samba)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `smbclient //127.0.0.1/vol -p PORT -U root -c COMMANDS` (`PASSWD` set); returns its stdout,
    /// failing the test when smbclient fails or reports an NT_STATUS error.
    pub fn client(&self, commands: &str) -> String {
        let out = run_ok(
            Command::new("smbclient")
                .arg("//127.0.0.1/vol")
                .arg("-p")
                .arg(self.port.to_string())
                // The password in the environment (only root reads it in /proc), not in the
                // arguments every user sees.
                .env("PASSWD", &self.password)
                .args(["-U", "root", "-c", commands]),
        );
        assert!(
            !out.contains("NT_STATUS_"),
            "smbclient -c {commands:?}: {out}"
        );
        out
    }
}

/// A number no other test run guesses (the clock and the process id, mixed by std's hasher).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

impl Drop for Samba {
    fn drop(&mut self) {
        // smbd forks a child per connection into its process group (ours: process_group(0)).
        // SAFETY: signalling the process group of our own child.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

// --- watchapply ---

impl Env {
    /// Serve the named volumes (relative to the temp dir) with live tracking off (`watch =
    /// "off"` in `[defaults]`): for tests of what changes made outside deskd do without it, and
    /// of rebuild jobs, which the watcher's start-up rescan would otherwise share the volume
    /// with. `extra`: more `deskd serve` arguments.
    pub fn serve_unwatched_with(&mut self, volumes: &[&str], extra: &[&str]) -> Duration {
        let cfg = self.path("unwatched.toml");
        if !cfg.exists() {
            std::fs::write(&cfg, "[defaults]\nwatch = \"off\"\n").unwrap();
        }
        let mut args: Vec<String> = vec!["--config".into(), cfg.display().to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        args.extend(volumes.iter().map(|v| self.path(v).display().to_string()));
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        self.start(&refs)
    }

    /// [`Env::serve_unwatched_with`] with no other argument.
    pub fn serve_unwatched(&mut self, volumes: &[&str]) -> Duration {
        self.serve_unwatched_with(volumes, &[])
    }
}

// --- rebuild memory ---

/// `dirs` folders of `per_dir` files each below the temp dir's `vol`, made with plain file
/// system calls, then a desktop for them from `rebuild -f` (resource files and mirrors
/// everywhere), offline. Returns how many objects the desktop holds.
pub fn files_registered_offline(env: &Env, dirs: usize, per_dir: usize) -> usize {
    for d in 0..dirs {
        let dir = env.path(&format!("vol/d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..per_dir {
            std::fs::write(dir.join(format!("file {f}.txt")), b"x").unwrap();
        }
    }
    let out = env.deskd(&["rebuild", "-f", "vol"]);
    assert!(out.status.success(), "{}", stderr(&out));
    desktop_paths(&env.path("vol")).len()
}

// --- PostgreSQL volumes (issue 28) ---

/// A throw-away PostgreSQL (deskd_pg::test_cluster) with database `db` and a password file
/// (mode 0600) holding its password: (cluster, the database's URL without a password, the
/// password file), where every PostgreSQL test of this crate starts. None when the machine
/// has no PostgreSQL (`start_or_skip` skips; CI fails). The cluster stops when dropped.
pub fn pg_database(db: &str) -> Option<(deskd_pg::test_cluster::TestCluster, String, PathBuf)> {
    let cluster = deskd_pg::test_cluster::TestCluster::start_or_skip()?;
    let url = cluster.create_database(db);
    let pw = cluster.password_file("pw", cluster.password());
    Some((cluster, url, pw))
}

/// A served PostgreSQL volume "vol" of a new Env, its desktop in database `db` of a new
/// cluster: (cluster, env, root, config file). None as [`pg_database`].
pub fn served_pg(db: &str) -> Option<(deskd_pg::test_cluster::TestCluster, Env, PathBuf, PathBuf)> {
    let (cluster, url, pw) = pg_database(db)?;
    let mut env = Env::new(&["vol"]);
    let root = std::fs::canonicalize(env.path("vol")).unwrap();
    env.serve_with_defaults("vol", &backend_lines(&url, &pw));
    let config = env.path("deskd.toml");
    Some((cluster, env, root, config))
}

/// Two servers (A, of a new Env, and a [`second_server`] B) serving the same volume "vol",
/// its desktop in database `db` of a new cluster: (cluster, A, B, root, A's `[defaults]`).
/// None as [`pg_database`].
pub fn two_servers_pg(
    db: &str,
) -> Option<(
    deskd_pg::test_cluster::TestCluster,
    Env,
    Env,
    PathBuf,
    String,
)> {
    let (cluster, url, pw) = pg_database(db)?;
    let defaults = backend_lines(&url, &pw);
    let mut a = Env::new(&["vol"]);
    let root = std::fs::canonicalize(a.path("vol")).unwrap();
    a.serve_with_defaults("vol", &defaults);
    let b = second_server(&root, &defaults, &[]);
    Some((cluster, a, b, root, defaults))
}

/// Give volume `name` of `env` a registered SQLite desktop (served, a file made, stopped):
/// what `backend` set without `deskd migrate` must not start afresh. Its root (resolved).
pub fn sqlite_desktop_with_objects(env: &mut Env, name: &str) -> PathBuf {
    env.serve(&[name]);
    let file = format!("{name}/kept.txt");
    env.dt_ok(&[b"touch", file.as_bytes()]);
    env.term();
    std::fs::canonicalize(env.path(name)).unwrap()
}

/// Write `env`'s deskd.toml: `defaults` in `[defaults]`, and a table for each of `volumes`
/// (paths); its path.
pub fn config_with_volumes(env: &Env, defaults: &str, volumes: &[&Path]) -> PathBuf {
    let cfg = env.path("deskd.toml");
    let tables: String = volumes
        .iter()
        .map(|v| format!("[volume.\"{}\"]\n", v.display()))
        .collect();
    std::fs::write(&cfg, format!("[defaults]\n{defaults}{tables}")).unwrap();
    cfg
}

/// `[defaults]` lines pointing every volume at `url`, the password in `password_file`.
pub fn backend_lines(url: &str, password_file: &Path) -> String {
    format!(
        "backend = \"{url}\"\nbackend_password_file = \"{}\"\n",
        password_file.display()
    )
}

/// A second server (its own socket and temp dir) serving `root` with `defaults`, its process
/// given the environment variables `env`.
pub fn second_server(root: &Path, defaults: &str, env: &[(&str, &str)]) -> Env {
    let mut server = Env::new(&[]);
    server.server_env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let cfg = server.path("deskd.toml");
    std::fs::write(
        &cfg,
        format!("[defaults]\n{defaults}[volume.\"{}\"]\n", root.display()),
    )
    .unwrap();
    server.start(&["--config", cfg.to_str().unwrap()]);
    server
}

// --- shared by dt_races and pg_ops ---

/// dt (as the test's user), started with the pause hook at `step` (released by `go` existing).
pub fn dt_paused(env: &Env, step: &str, go: &Path, args: &[&[u8]]) -> Child {
    env.command_for(DT, args)
        .env("DESKD_TEST_DT_PAUSE", format!("{step}:{}", go.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait for `child` to say it paused at `step`, run `attack`, release it; its exit status and
/// stderr.
pub fn at_pause(
    mut child: Child,
    step: &str,
    go: &Path,
    attack: impl FnOnce(),
) -> (std::process::ExitStatus, String) {
    use std::io::{BufRead as _, Read as _};
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            panic!("dt ended before pausing at {step}: {seen}");
        }
        seen.push_str(&line);
        if line.trim_end() == format!("dt: test pause at {step}") {
            break;
        }
    }
    attack();
    std::fs::write(go, b"").unwrap();
    err.read_to_string(&mut seen).unwrap();
    (child.wait().unwrap(), seen)
}
