//! A throw-away PostgreSQL cluster for tests (feature `test-cluster`, never in a release
//! build): `initdb` into a temp directory, the server run as an unprivileged user (PostgreSQL
//! refuses root: the `postgres` system user if there is one, else nobody), listening on
//! 127.0.0.1 on a free port with its unix socket in the temp directory; stopped and removed
//! on drop.
//!
//! The superuser `deskd_test` logs in with a password over TCP (scram-sha-256) and without
//! one on the unix socket, whose directory only the server's user (and root) may enter. Tests
//! call [`TestCluster::start_or_skip`]: a machine without PostgreSQL skips, except under CI
//! (`CI` set), where the test fails.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Uid, User};
use std::os::unix::fs::chown;

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The superuser the cluster is made with.
pub const SUPERUSER: &str = "deskd_test";

/// A running throw-away cluster.
pub struct TestCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    server: Child,
    port: u16,
    password: String,
    user: (Uid, Gid),
}

impl TestCluster {
    /// Start a cluster, or say why not: no PostgreSQL installed, or it did not start.
    pub fn start() -> Result<TestCluster, String> {
        let bin = find_bin_dir()?;
        let user = server_user()?;
        let dir = tempfile::Builder::new()
            .prefix("deskd-pg-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        // The server's user must reach its directories below it (not list it).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        for d in [&data, &sock] {
            std::fs::create_dir(d).map_err(|e| e.to_string())?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| e.to_string())?;
            chown(d, Some(user.0.as_raw()), Some(user.1.as_raw()))
                .map_err(|e| format!("chown {d:?}: {e}"))?;
        }
        let password = random_password()?;
        let pwfile = dir.path().join("pwfile");
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&pwfile)
                .map_err(|e| e.to_string())?;
            writeln!(f, "{password}").map_err(|e| e.to_string())?;
        }
        chown(&pwfile, Some(user.0.as_raw()), Some(user.1.as_raw())).map_err(|e| e.to_string())?;
        let out = as_user(Command::new(bin.join("initdb")), user)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        std::fs::remove_file(&pwfile).map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // A port another process takes between our probe and the server's bind is tried again.
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port()?;
            let (mut server, log) = spawn_server(&bin, dir.path(), port, user)?;
            match wait_ready(&mut server, &log) {
                Ok(()) => {
                    return Ok(TestCluster {
                        dir,
                        bin,
                        server,
                        port,
                        password,
                        user,
                    })
                }
                Err(text) => {
                    let _ = server.kill();
                    let _ = server.wait();
                    last_log = text;
                }
            }
        }
        Err(format!("postgres did not start: {last_log}"))
    }

    /// Start a cluster; without PostgreSQL on this machine say so and return `None` (the
    /// test returns early), except under CI, where that fails the test.
    pub fn start_or_skip() -> Option<TestCluster> {
        match TestCluster::start() {
            Ok(cluster) => Some(cluster),
            Err(why) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "cannot start PostgreSQL under CI, which must run every test: {why}"
                );
                eprintln!("skipped: cannot start PostgreSQL: {why}");
                None
            }
        }
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password (for TCP logins).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The cluster's temp directory (a test may put password files there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A URL to database `db` over TCP, as the superuser, without the password.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    /// A superuser connection to database `db` on the unix socket (no password).
    pub fn admin(&self, db: &str) -> postgres::Client {
        postgres::Config::new()
            .host_path(self.socket_dir())
            .port(self.port)
            .user(SUPERUSER)
            .dbname(db)
            .connect(postgres::NoTls)
            .expect("superuser connection on the unix socket")
    }

    /// Create an empty database `name` and return its TCP URL.
    pub fn create_database(&self, name: &str) -> String {
        self.admin("postgres")
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .expect("CREATE DATABASE");
        self.url(name)
    }

    /// A password file (mode 0600, owned by the test's user) holding `password`.
    pub fn password_file(&self, name: &str, password: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("password file");
        writeln!(f, "{password}").expect("write password file");
        path
    }

    /// The directory of the server's unix socket (only the server's user may enter it: the
    /// socket trusts whoever connects).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The directory of the server's programs (`psql` is there too).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The uid the server runs as.
    pub fn server_uid(&self) -> u32 {
        self.user.0.as_raw()
    }

    /// Stop the server (fast shutdown: sessions are cut, committed work is kept), as an
    /// outage of the database would.
    pub fn stop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown (clients are disconnected, no waiting for them).
        let pid = nix::unistd::Pid::from_raw(self.server.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.server.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.server.kill();
                    let _ = self.server.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Start the stopped server again on the same port and data.
    pub fn restart(&mut self) {
        let (mut server, log) = spawn_server(&self.bin, self.dir.path(), self.port, self.user)
            .expect("postgres starts again");
        if let Err(text) = wait_ready(&mut server, &log) {
            let _ = server.kill();
            let _ = server.wait();
            panic!("postgres did not start again: {text}");
        }
        self.server = server;
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.stop();
        // The temp dir (data, socket, logs) goes with `self.dir`.
    }
}

/// Run `postgres` on `port` with the data and socket directories below `dir`, its output in
/// a log of its own (`server-PORT-N.log`); returns it and its log.
fn spawn_server(
    bin: &Path,
    dir: &Path,
    port: u16,
    user: (Uid, Gid),
) -> Result<(Child, PathBuf), String> {
    let log = (0..)
        .map(|n| dir.join(format!("server-{port}-{n}.log")))
        .find(|p| !p.exists())
        .expect("a free log name");
    let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let server = as_user(Command::new(bin.join("postgres")), user)
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-k")
        .arg(dir.join("sock"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("postgres: {e}"))?;
    Ok((server, log))
}

/// The directory of `initdb` and `postgres`: `$DESKD_TEST_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian's layout).
fn find_bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("DESKD_TEST_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("no /usr/lib/postgresql ({e}); install Debian's postgresql"))?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no /usr/lib/postgresql/*/bin/initdb; install postgresql".to_owned())
}

/// The user the server runs as: root may not run it, so the `postgres` system user, else
/// nobody; anyone else runs it as themselves.
fn server_user() -> Result<(Uid, Gid), String> {
    if !Uid::effective().is_root() {
        return Ok((Uid::effective(), Gid::effective()));
    }
    for name in ["postgres", "nobody"] {
        if let Ok(Some(user)) = User::from_name(name) {
            return Ok((user.uid, user.gid));
        }
    }
    Err("running as root and neither a postgres nor a nobody user exists".to_owned())
}

fn as_user(mut cmd: Command, (uid, gid): (Uid, Gid)) -> Command {
    if Uid::effective().is_root() {
        // std drops root's supplementary groups when it sets the uid.
        cmd.uid(uid.as_raw()).gid(gid.as_raw());
    }
    cmd.env_remove("PGDATA").env("LC_ALL", "C");
    cmd
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// Wait until the log says the server accepts connections, or it exited (its log, as the
/// error).
fn wait_ready(server: &mut Child, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("database system is ready to accept connections") {
            return Ok(());
        }
        if let Ok(Some(status)) = server.try_wait() {
            return Err(format!("exited ({status}): {text}"));
        }
        if Instant::now() > deadline {
            return Err(format!("not ready after {START_TIMEOUT:?}: {text}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn random_password() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
