//! README.md as a new user follows it: in a clean `git clone` of this repository, the first
//! line of the first ```sh block (build everything, start the server) runs in the background as
//! written; once the socket answers, every line of the "Try it" block runs in a second shell,
//! each must succeed, and a line whose comment says `# -> TEXT` must print TEXT.
//!
//! What is changed, and why it stays honest:
//! - `/tmp/` in the README's lines becomes this test's temp directory, so the test neither meets
//!   nor disturbs a server someone started from the README.
//! - The clone's `target` is a symlink to this build's target directory, and each cloned file
//!   that is byte for byte the file cargo built from gets that file's modification time. Cargo
//!   then decides, as ever, what is up to date: after scripts/test.sh's release build (which
//!   runs before the tests) nothing is, and the README's `cargo build --release --workspace`
//!   takes seconds, not the minutes of a build from nothing; a file that differs (a change not
//!   built yet) keeps the clone's new time and is rebuilt, so the binaries run are the clone's;
//!   the working tree's copy of such a file then gets a new time too, so the next build there
//!   rebuilds it from the working tree.
//!   Without a release build at all the test skips (a failure under CI).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The lines of the first fenced block that follows `after` (a heading; "" for the first block).
fn sh_block(readme: &str, after: &str) -> Vec<String> {
    let start = readme
        .find(after)
        .unwrap_or_else(|| panic!("no {after:?} in README.md"));
    readme[start..]
        .lines()
        .skip_while(|l| *l != "```sh")
        .skip(1)
        .take_while(|l| *l != "```")
        .map(str::to_string)
        .collect()
}

/// A clean clone of the committed repository at `dest`, sharing this build's target directory;
/// returns the files of the working tree that differ from the clone's (uncommitted changes).
fn clone_repository(dest: &Path) -> Vec<PathBuf> {
    let ws = workspace_root();
    run_ok(
        Command::new("git")
            .args(["clone", "--quiet"])
            .arg(&ws)
            .arg(dest),
    );
    let files = run_ok(Command::new("git").arg("ls-files").current_dir(dest));
    let mut differing = Vec::new();
    for rel in files.lines() {
        let (ours, theirs) = (ws.join(rel), dest.join(rel));
        let (Ok(a), Ok(b)) = (std::fs::read(&ours), std::fs::read(&theirs)) else {
            continue;
        };
        if a == b {
            let mtime = std::fs::metadata(&ours).unwrap().modified().unwrap();
            let file = std::fs::File::options().write(true).open(&theirs).unwrap();
            file.set_modified(mtime).unwrap();
        } else {
            differing.push(ours);
        }
    }
    std::os::unix::fs::symlink(target_dir(), dest.join("target")).unwrap();
    differing
}

/// Makes cargo rebuild from the working tree, when dropped (the test passed or not), what the
/// clone's build replaced: that build left artifacts newer than the working tree's changed
/// files, which cargo would otherwise take for up to date.
struct RebuildLater(Vec<PathBuf>);

impl Drop for RebuildLater {
    fn drop(&mut self) {
        for path in &self.0 {
            if let Ok(file) = std::fs::File::options().write(true).open(path) {
                let _ = file.set_modified(std::time::SystemTime::now());
            }
        }
    }
}

/// The README's server, with its whole process group (the shell, cargo, deskd) ended on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the group is the one this test made.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Waits until a deskd answers on `socket`, or the server's shell ends (its log tells why).
fn wait_for_server(server: &mut Server, socket: &Path, log: &Path) {
    let began = Instant::now();
    loop {
        if let Ok(mut c) = deskd_client::Client::connect(socket, Duration::from_secs(5)) {
            if c.volumes().is_ok() {
                return;
            }
        }
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!(
                "the README's first line ended ({status}) before serving:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        // A release build from nothing takes minutes on 2 CPUs; an up-to-date one seconds.
        assert!(
            began.elapsed() < Duration::from_secs(30 * 60),
            "no server after 30 minutes:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_readmes_first_line_builds_and_serves_and_every_try_it_line_works() {
    if release_bins().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let clone = tmp.path().join("clone");
    let _rebuild_later = RebuildLater(clone_repository(&clone));
    // The README as committed: the clone's.
    let readme = std::fs::read_to_string(clone.join("README.md")).unwrap();
    let first = sh_block(&readme, "");
    assert_eq!(first.len(), 2, "run; test: {first:?}");
    assert!(
        first[0].starts_with("cargo build --release --workspace ")
            && first[0].contains("deskd serve"),
        "the first line builds everything and serves: {first:?}"
    );
    assert_eq!(first[1], "scripts/test.sh");
    let try_it = sh_block(&readme, "## Try it");
    assert!(try_it.len() > 3, "{try_it:?}");

    let scratch = tmp.path().join("tmp");
    std::fs::create_dir(&scratch).unwrap();
    let ours = |line: &str| line.replace("/tmp/", &format!("{}/", scratch.display()));

    // The first terminal: build and serve, as written (the server stays in the foreground).
    let log = tmp.path().join("first-terminal.log");
    let mut server = Server({
        use std::os::unix::process::CommandExt;
        let output = std::fs::File::create(&log).unwrap();
        let mut first_terminal = Command::new("sh");
        without_cargos_test_env(&mut first_terminal);
        first_terminal
            .args(["-c", &ours(&first[0])])
            .current_dir(&clone)
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .process_group(0)
            .spawn()
            .unwrap()
    });
    let socket: PathBuf = scratch.join("deskd.sock");
    wait_for_server(&mut server, &socket, &log);
    let first_terminal = std::fs::read_to_string(&log).unwrap();
    assert!(
        first_terminal.contains("Finished `release` profile"),
        "cargo built before deskd served:\n{first_terminal}"
    );

    // The second terminal: each line in turn, with the environment the lines before exported.
    let mut exported = String::new();
    for line in &try_it {
        let line = ours(line);
        if line.starts_with("export ") {
            exported.push_str(&line);
            exported.push('\n');
            continue;
        }
        let script = format!("set -e\n{exported}{line}\n");
        let out = Command::new("bash")
            .args(["--norc", "-c", &script])
            .current_dir(&clone)
            .env_remove("DESKD_SOCKET")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{line}: {}\nstdout:\n{stdout}\nstderr:\n{}\nserver:\n{}",
            out.status,
            stderr(&out),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        if let Some((_, expected)) = line.split_once("# -> ") {
            assert_eq!(stdout.trim_end(), expected.trim(), "{line}");
        }
    }
}
