//! Test harness: a real slapd (scripts/slapd-fixture.sh) on a free loopback port in a temp dir,
//! LDAP reads and writes through the OpenLDAP command-line tools, and the real prov-backup
//! binary with its log lines collected from stdout.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SUFFIX: &str = "dc=stoney-cloud,dc=org";
pub const ADMIN: &str = "cn=admin,dc=stoney-cloud,dc=org";
pub const PASSWORD: &str = "secret";
pub const ACCOUNTS: &str = "ou=accounts,ou=backup,ou=services,dc=stoney-cloud,dc=org";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A slapd of our own; stopped when dropped.
pub struct Slapd {
    pub dir: PathBuf,
    pub port: u16,
    /// With TLS (`start_tls`): the ldaps:// port; plain simple binds are then refused.
    pub ldaps_port: Option<u16>,
}

impl Slapd {
    /// Starts slapd with the sst schema and the example tree (one account asking for add).
    pub fn start(dir: &Path, syncprov: bool) -> Slapd {
        Slapd::start_with(dir, syncprov, false)
    }

    /// Like `start`, with TLS on a second port and StartTLS on the first; a simple bind
    /// without TLS is refused ("confidentiality required").
    pub fn start_tls(dir: &Path) -> Slapd {
        Slapd::start_with(dir, true, true)
    }

    fn start_with(dir: &Path, syncprov: bool, tls: bool) -> Slapd {
        // A port found free is free only until someone else takes it: another test's server
        // between our look and slapd's bind. Then slapd says so, and we start afresh elsewhere.
        for attempt in 1.. {
            let port = free_port();
            let ldaps_port = tls.then(|| loop {
                let p = free_port();
                if p != port {
                    break p;
                }
            });
            let mut cmd = Command::new("bash");
            cmd.arg(repo_root().join("scripts/slapd-fixture.sh"))
                .arg("start")
                .arg(dir)
                .arg(port.to_string());
            if !syncprov {
                cmd.arg("--no-syncprov");
            }
            if let Some(p) = ldaps_port {
                cmd.arg("--tls").arg(p.to_string());
            }
            let out = cmd.output().expect("run slapd-fixture.sh");
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() {
                return Slapd {
                    dir: dir.to_owned(),
                    port,
                    ldaps_port,
                };
            }
            assert!(
                attempt < 5 && said.contains("Address already in use"),
                "slapd-fixture start failed: {said}"
            );
            std::fs::remove_dir_all(dir).unwrap();
        }
        unreachable!()
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}/", self.port)
    }

    /// The CA that signed the server certificate of a `start_tls` server.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }

    /// An OpenLDAP tool bound as the admin, over StartTLS when the server wants TLS.
    fn admin_tool(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        cmd.args(["-x", "-H", &self.url(), "-D", ADMIN, "-w", PASSWORD]);
        if self.ldaps_port.is_some() {
            cmd.arg("-ZZ").env("LDAPTLS_CACERT", self.ca_file());
        }
        cmd
    }

    /// Runs a verb of scripts/slapd-fixture.sh on this server's directory.
    fn fixture(&self, verb: &str) -> std::process::Output {
        Command::new("bash")
            .arg(repo_root().join("scripts/slapd-fixture.sh"))
            .arg(verb)
            .arg(&self.dir)
            .output()
            .unwrap()
    }

    pub fn stop(&self) {
        let out = self.fixture("stop");
        assert!(
            out.status.success(),
            "stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn restart(&self) {
        let out = self.fixture("restart");
        assert!(
            out.status.success(),
            "restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn tool(&self, tool: &str, ldif: &str) {
        let mut child = self
            .admin_tool(tool)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ldif.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{tool} failed: {}\n{ldif}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn add(&self, ldif: &str) {
        self.tool("ldapadd", ldif);
    }

    pub fn modify(&self, ldif: &str) {
        self.tool("ldapmodify", ldif);
    }

    /// Replaces attributes of one entry.
    pub fn set(&self, dn: &str, pairs: &[(&str, &str)]) {
        let mut ldif = format!("dn: {dn}\nchangetype: modify\n");
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                ldif.push_str("-\n");
            }
            ldif.push_str(&format!("replace: {k}\n{k}: {v}\n"));
        }
        self.modify(&ldif);
    }

    /// The attributes of one entry (first value of each), None when it does not exist.
    pub fn get(&self, dn: &str) -> Option<HashMap<String, String>> {
        let out = self
            .admin_tool("ldapsearch")
            .args([
                "-LLL",
                "-o",
                "ldif-wrap=no",
                "-s",
                "base",
                "-b",
                dn,
                "(objectClass=*)",
            ])
            .output()
            .unwrap();
        if out.status.code() == Some(32) {
            return None;
        }
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut map = HashMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((k, v)) = line.split_once(": ") {
                map.entry(k.to_owned()).or_insert_with(|| v.to_owned());
            }
        }
        Some(map)
    }

    /// Waits until the entry's sstProvisioningMode is `mode` and the state satisfies `state_ok`.
    /// The entry once `attr` has `value` (the daemon logs a failure before it writes it).
    pub fn wait_attr(&self, dn: &str, attr: &str, value: &str) -> HashMap<String, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let e = self.get(dn).unwrap_or_default();
            if e.get(attr).map(String::as_str) == Some(value) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "{dn}: still {e:?} after 30 s, waiting for {attr} {value}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_for(
        &self,
        dn: &str,
        mode: &str,
        state_ok: impl Fn(&str) -> bool,
    ) -> HashMap<String, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let e = self.get(dn).unwrap_or_default();
            if e.get("sstProvisioningMode").map(String::as_str) == Some(mode)
                && e.get("sstProvisioningState").is_some_and(|s| state_ok(s))
            {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "{dn}: still {e:?} after 30 s, waiting for {mode}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.fixture("stop");
    }
}

/// A UTC completion stamp: YYYYMMDDThhmmssZ.
pub fn is_stamp(s: &str) -> bool {
    s.len() == 16
        && s.as_bytes()[8] == b'T'
        && s.ends_with('Z')
        && s[..8].bytes().all(|b| b.is_ascii_digit())
        && s[9..15].bytes().all(|b| b.is_ascii_digit())
}

pub fn account_dn(uid: &str) -> String {
    format!("uid={uid},{ACCOUNTS}")
}

/// An account entry in LDIF. `extra` lines are appended; `intervals` are hourly, daily, weekly,
/// monthly, yearly.
pub fn account_ldif(
    uid: &str,
    mode: &str,
    state: &str,
    date: &str,
    intervals: [i32; 5],
    extra: &str,
) -> String {
    format!(
        "dn: {dn}\nobjectClass: account\nobjectClass: posixAccount\nobjectClass: sstBackup\n\
         objectClass: sstProvisioning\nuid: {uid}\ncn: {uid}\nuidNumber: {n}\ngidNumber: {n}\n\
         homeDirectory: /var/backup/{uid}\nsstBackupIntervalHourly: {}\nsstBackupIntervalDaily: {}\n\
         sstBackupIntervalWeekly: {}\nsstBackupIntervalMonthly: {}\nsstBackupIntervalYearly: {}\n\
         sstBackupWarningOn: TRUE\nsstBackupWarningNumbers: 3\nsstBackupWarningDays: 3\n\
         sstNotificationWarningLevel: 85\nsstNotificationWarningMedium: mail\nsstUseSelfcare: TRUE\n\
         sstUseSSH: TRUE\nsstIsActive: TRUE\nsstQuota: 1073741824\nsstProvisioningMode: {mode}\n\
         sstProvisioningState: {state}\nsstProvisioningExecutionDate: {date}\n{extra}\n",
        intervals[0],
        intervals[1],
        intervals[2],
        intervals[3],
        intervals[4],
        dn = account_dn(uid),
        n = uid.bytes().filter(u8::is_ascii_digit).fold(5000u64, |a, b| (a * 10 + (b - b'0') as u64) % 2_000_000_000),
    )
}

/// A backup root, configuration files and a cookie file for one daemon.
pub struct Setup {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub conf_dir: PathBuf,
    pub service_conf: PathBuf,
    pub global_conf: PathBuf,
}

impl Setup {
    pub fn new(dir: &Path, slapd_url: &str, backup_extra: &str) -> Setup {
        let root = dir.join("backup");
        std::fs::create_dir_all(&root).unwrap();
        let conf_dir = dir.join("rsnapshot.d");
        let service_conf = dir.join("Rsnapshot.conf");
        let global_conf = dir.join("Global.conf");
        let (host_port, _) = slapd_url
            .trim_start_matches("ldap://")
            .split_once('/')
            .unwrap();
        let (host, port) = host_port.split_once(':').unwrap();
        std::fs::write(
            &service_conf,
            format!(
                "[Global]\nLOG_DEBUG = 1\nLOG_INFO = 1\nLOG_WARNING = 1\nLOG_ERR = 1\nENVIRONMENT = test\n\n\
                 [Database]\nBACKEND = LDAP\nSERVER = {host}\nPORT = {port}\nADMIN_USER = {ADMIN}\n\
                 ADMIN_PASSWORD = {PASSWORD}\nSERVICE_SUBTREE = {ACCOUNTS}\nCOOKIE_FILE = {cookie}\n\
                 DEFAULT_COOKIE = rid=001,csn=\nSEARCH_FILTER = (&(entryCSN>=%entryCSN%)(objectClass=*))\n\n\
                 [Service]\nMODUS = selfcare\nTRANSPORTAPI = LocalCLI\nSERVICE = Backup\nTYPE = Rsnapshot\n\
                 SYSLOG = Backup-Rsnapshot\n\n[Backup]\nBACKUP_ROOT = {root}\nRSNAPSHOT_CONFIG_DIR = {conf}\n\
                 RSNAPSHOT_LOCK_DIR = {dir}\nLOCK_FILE = {dir}/prov-backup.lock\nPOLL_INTERVAL = 1\n{backup_extra}\n",
                cookie = dir.join("cookie").display(),
                root = root.display(),
                conf = conf_dir.display(),
                dir = dir.display(),
            ),
        )
        .unwrap();
        std::fs::write(
            &global_conf,
            "[Global]\nSLEEP = 1\nATTEMPTS = 3\n\n[Operation Mode]\nSLEEP = 1\nATTEMPTS = 60\n",
        )
        .unwrap();
        Setup {
            dir: dir.to_owned(),
            root,
            conf_dir,
            service_conf,
            global_conf,
        }
    }

    /// Replaces `from` (once) by `to` in the service file.
    pub fn edit_service(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.service_conf).unwrap();
        assert_eq!(text.matches(from).count(), 1, "{from} in {text}");
        std::fs::write(&self.service_conf, text.replace(from, to)).unwrap();
    }

    pub fn start(&self, extra_args: &[&str]) -> Daemon {
        self.start_with(extra_args, true)
    }

    /// With `stdout_read` false, the daemon's stdout is a pipe whose reader is gone (as in
    /// `prov-backup -d | head`); only stderr is collected.
    pub fn start_with(&self, extra_args: &[&str], stdout_read: bool) -> Daemon {
        self.spawn(extra_args, stdout_read, &[])
    }

    /// Started as systemd would, telling its states to the datagram socket `notify`.
    pub fn start_notified(&self, notify: &Path) -> Daemon {
        self.spawn(&[], true, &[("NOTIFY_SOCKET", notify)])
    }

    fn spawn(&self, extra_args: &[&str], stdout_read: bool, envs: &[(&str, &Path)]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_prov-backup"))
            .envs(envs.iter().copied())
            .arg("-c")
            .arg(&self.service_conf)
            .arg("-g")
            .arg(&self.global_conf)
            .arg("-d")
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let stdout = child.stdout.take().unwrap();
        let mut streams =
            vec![Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>];
        if stdout_read {
            streams.push(Box::new(stdout));
        }
        let readers = streams
            .into_iter()
            .map(|stream| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines().map_while(Result::ok) {
                        log.lock().unwrap().push(line);
                    }
                })
            })
            .collect();
        Daemon {
            child,
            log,
            readers,
        }
    }

    /// The account's home under the backup root.
    pub fn home(&self, uid: &str) -> PathBuf {
        self.account_dir(uid).join("chroot/home").join(uid)
    }

    pub fn account_dir(&self, uid: &str) -> PathBuf {
        let padded = format!("{uid:0>6}");
        let n = padded.len();
        self.root
            .join(&padded[n - 1..])
            .join(&padded[n - 3..])
            .join(&padded[n - 6..n - 3])
            .join(uid)
    }
}

/// A running prov-backup; killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    /// The threads copying the daemon's output into `log`; they end when the output does.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Daemon {
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log after 30 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit code.
    pub fn terminate(&mut self) -> i32 {
        self.send_sigterm();
        self.wait_exit()
    }

    /// SIGTERM, without waiting for the exit.
    pub fn send_sigterm(&self) {
        // SAFETY: kill(2) on the pid of our own child, which is not reaped before its Drop.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Its last lines are in the log once the readers have met the end of its output.
                for reader in self.readers.drain(..) {
                    reader.join().unwrap();
                }
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "prov-backup did not exit:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
