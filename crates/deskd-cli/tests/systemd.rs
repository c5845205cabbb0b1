//! deskd under systemd: the unit files in contrib/ pass `systemd-analyze verify`, the netatalk
//! unit's command line starts a bridge that reaches deskd, and the
//! server started with its ExecStart line tells `$NOTIFY_SOCKET` READY=1 only once it answers,
//! and STOPPING=1 when SIGTERM begins the clean shutdown.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn unit_text() -> String {
    contrib("deskd.service")
}

fn contrib(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../contrib")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

/// The unit's ExecStart arguments with the installed paths replaced by this test's.
fn exec_start_args(config: &Path, socket: &Path) -> Vec<String> {
    let text = unit_text();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/deskd"));
    words
        .map(|w| match w {
            "/etc/deskd/deskd.toml" => config.display().to_string(),
            "/run/deskd/deskd.sock" => socket.display().to_string(),
            other => other.to_string(),
        })
        .collect()
}

/// Kills the server if the test fails before it stopped it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_unit_files_verify() {
    // Verified together, so the netatalk unit's Requires=deskd.service is found.
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for name in ["deskd.service", "deskd-netatalk.service"] {
        let unit = dir.path().join(name);
        std::fs::write(&unit, contrib(name).replace("/usr/local/bin/deskd", DESKD)).unwrap();
        units.push(unit);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze (package systemd; scripts/test.sh installs it)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        stderr(&out)
    );
}

#[test]
fn the_netatalk_units_command_line_starts_a_bridge_on_deskd() {
    let text = contrib("deskd-netatalk.service");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=/usr/local/bin/deskd "))
        .expect("an ExecStart line");
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    // The unit's arguments, with a free port and this test's socket.
    let socket = env.socket.display().to_string();
    let args: Vec<&str> = line
        .split_whitespace()
        .map(|w| match w {
            "127.0.0.1:4700" => "127.0.0.1:0",
            "/run/deskd/deskd.sock" => socket.as_str(),
            other => other,
        })
        .collect();
    let log = env.path("bridge.log");
    let _bridge = KillOnDrop(
        Command::new(DESKD)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let began = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("serving Netatalk's CNID protocol")
    {
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ready_is_sent_once_the_server_answers_and_stopping_on_sigterm() {
    let env = Env::new(&["vol"]);
    let config = env.path("deskd.toml");
    std::fs::write(
        &config,
        format!("[volume.\"{}\"]\n", env.path("vol").display()),
    )
    .unwrap();
    let notify_path: PathBuf = env.path("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut server = KillOnDrop(
        Command::new(DESKD)
            .args(exec_start_args(&config, &env.socket))
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("a READY message within 30 s");
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    // Ready means serving: the socket answers at once.
    let mut client = deskd_client::Client::connect(&env.socket, Duration::from_secs(5))
        .expect("the socket answers when READY=1 arrives");
    assert_eq!(client.volumes().unwrap().len(), 1);
    assert!(message.lines().any(|l| l == "READY=1"), "{message}");
    assert!(
        message
            .lines()
            .any(|l| l == "STATUS=serving 1 of 1 volume(s)"),
        "{message}"
    );
    drop(client);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    let n = notify.recv(&mut buf).expect("a STOPPING message");
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(message.lines().any(|l| l == "STOPPING=1"), "{message}");
    assert!(server.0.wait().unwrap().success());
    let clean = sqlite3(
        &env.path("vol/.Desktop"),
        "SELECT value FROM meta WHERE key = 'clean'",
    );
    assert_eq!(clean.trim(), "1", "flushed and marked clean after STOPPING");
}
