//! Issue 25, part TOOLS: each `deskd` verb lists (and takes) only the options that apply to it
//! — the client options on the verbs that ask a running deskd, the server's own on `serve`, none
//! on the offline file verbs — with the spelling before the verb still accepted where it
//! applies and refused where it does not; and `deskd backup VOL -` refuses a terminal and writes
//! its manifest where `deskd verify` and `deskd restore` find it.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The long options `deskd VERB --help` lists, without `--help`.
fn listed_options(verb: &str) -> BTreeSet<String> {
    let out = Command::new(DESKD).args([verb, "--help"]).output().unwrap();
    assert!(out.status.success(), "{verb} --help: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Every section of options: "Options:", and "Connection to deskd:" of the client verbs.
    let options = text
        .split_once("\nOptions:\n")
        .unwrap_or_else(|| panic!("{verb} --help has no Options:\n{text}"))
        .1;
    options
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            // `-c, --config <CONFIG>  …` or `--json  …`: the option's name starts the line.
            let l = l
                .strip_prefix("-")
                .filter(|r| !r.starts_with('-'))
                .map_or(l, |r| r.split_once(", ").map_or(r, |(_, rest)| rest));
            l.strip_prefix("--")
                .map(|r| r.split([' ', '\t']).next().unwrap().to_owned())
        })
        .filter(|o| o != "help")
        .collect()
}

const CLIENT: [&str; 3] = ["socket", "token-file", "timeout"];

#[test]
fn each_verb_lists_exactly_its_options() {
    let with_client = |own: &[&str]| -> BTreeSet<String> {
        own.iter()
            .chain(CLIENT.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let only = |own: &[&str]| -> BTreeSet<String> { own.iter().map(|s| s.to_string()).collect() };
    let expected = [
        (
            "serve",
            // --socket and --token-file are the server's own here: where it listens, and the
            // token TCP clients must hold. No --timeout.
            only(&[
                "config",
                "listen",
                "socket",
                "token-file",
                "nested",
                "world-writable",
                "read-only",
            ]),
        ),
        ("status", with_client(&["volume", "json"])),
        ("metrics", with_client(&[])),
        ("flush", with_client(&["volume"])),
        ("freeze", with_client(&["volume"])),
        ("thaw", with_client(&["volume"])),
        (
            "find",
            with_client(&["volume", "exact", "prefix", "glob", "json", "limit"]),
        ),
        (
            "rebuild",
            with_client(&[
                "fresh",
                "scan",
                "verbose",
                "json",
                "threads",
                "force",
                "downgrade",
                "nested",
                "world-writable",
                "trust-ids",
                "config",
            ]),
        ),
        ("backup", only(&["force", "json", "manifest", "config"])),
        ("verify", only(&["json", "manifest"])),
        (
            "restore",
            only(&[
                "verbose",
                "json",
                "threads",
                "force",
                "id-gap",
                "nested",
                "world-writable",
                "trust-ids",
                "manifest",
                "leave-postgresql",
                "ids-from-backup",
                "config",
            ]),
        ),
        (
            "migrate",
            only(&[
                "to",
                "from",
                "password-file",
                "password-env",
                "name",
                "replace",
            ]),
        ),
        (
            "netatalk",
            with_client(&[
                "listen",
                "max-connections",
                "frame-timeout",
                "afp-conf",
                "dbpath",
            ]),
        ),
    ];
    for (verb, want) in &expected {
        assert_eq!(&listed_options(verb), want, "deskd {verb} --help");
    }
    // The client options are listed apart, under their own heading.
    let out = Command::new(DESKD)
        .args(["status", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let connection = text.split_once("\nConnection to deskd:\n").unwrap().1;
    for option in CLIENT {
        assert!(connection.contains(&format!("--{option} <")), "{text}");
    }
    // The serve help says what its --socket means: where it listens, not whom it asks.
    let out = Command::new(DESKD)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("The Unix socket to listen on"), "{text}");
    assert!(
        !text.contains("read-only;") && !text.contains("give up"),
        "{text}"
    );
    // `deskd --help` lists the verbs and no connection option (each verb has its own).
    let out = Command::new(DESKD).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let options = text.split_once("\nOptions:\n").unwrap().1;
    for option in CLIENT {
        assert!(!options.contains(&format!("--{option}")), "{text}");
    }
    // Every verb is covered above.
    let verbs: BTreeSet<&str> = text
        .split_once("Commands:\n")
        .unwrap()
        .1
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|v| *v != "help")
        .collect();
    let tested: BTreeSet<&str> = expected.iter().map(|(v, _)| *v).collect();
    assert_eq!(verbs, tested);
}

/// `deskd ARGS` without a server's environment, in `dir`.
fn deskd_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(DESKD)
        .current_dir(dir)
        .args(args)
        .env_remove("DESKD_SOCKET")
        .env_remove("DESKD_TOKEN_FILE")
        .env_remove("DESKD_CLIENT_TIMEOUT")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn an_option_before_the_verb_is_refused_where_it_does_not_apply() {
    let dir = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (
            vec!["--timeout", "1", "verify", "x.desktop"],
            "--timeout does not apply to `deskd verify`: it reads a backup file and asks no \
             running deskd",
        ),
        (
            vec!["--socket", "s.sock", "backup", "vol", "-"],
            "--socket does not apply to `deskd backup`",
        ),
        (
            vec!["--token-file", "t", "restore", "b", "vol"],
            "--token-file does not apply to `deskd restore`",
        ),
        (
            vec!["--timeout", "5", "serve", "vol"],
            "--timeout does not apply to `deskd serve`: it is how long a client waits for deskd",
        ),
    ] {
        let out = deskd_in(dir.path(), &args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
    // After the verb, an option it does not take is clap's usage error.
    for args in [
        vec!["verify", "--socket", "s.sock", "x.desktop"],
        vec!["serve", "--timeout", "5", "vol"],
        vec!["restore", "--timeout", "5", "b", "vol"],
    ] {
        let out = deskd_in(dir.path(), &args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains("unexpected argument"),
            "{}",
            stderr(&out)
        );
    }
    // The environment is no option: an offline verb ignores a client's variables.
    let out = deskd_in(
        dir.path(),
        &["verify", "x.desktop"],
        &[
            ("DESKD_CLIENT_TIMEOUT", "inf"),
            ("DESKD_TOKEN_FILE", "/nonexistent"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a complete deskd backup"),
        "{}",
        stderr(&out)
    );
    // A client verb still reads and checks them.
    let out = deskd_in(dir.path(), &["status"], &[("DESKD_CLIENT_TIMEOUT", "inf")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("$DESKD_CLIENT_TIMEOUT=inf: inf: not a number of seconds"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_option_before_the_verb_still_works_where_it_applies() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    let sock = env.socket.to_str().unwrap().to_owned();
    let missing = env.path("missing.sock");
    let missing = missing.to_str().unwrap();
    // Before the verb (the spelling of scripts/bench-rebuild.sh and earlier docs) and after it.
    for args in [
        vec!["--socket", sock.as_str(), "status", "--json"],
        vec!["status", "--json", "--socket", sock.as_str()],
        // Written in both places, the verb's own wins.
        vec![
            "--socket",
            missing,
            "status",
            "--json",
            "--socket",
            sock.as_str(),
        ],
        vec!["--timeout", "20", "--socket", sock.as_str(), "flush"],
    ] {
        let out = deskd_in(&env.path("."), &args, &[]);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    let out = deskd_in(&env.path("."), &["--socket", missing, "status"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("(from --socket;"), "{}", stderr(&out));
    // A rebuild asks the server through the socket given before the verb (an online scan).
    let vol = env.path("vol");
    let out = deskd_in(
        &env.path("."),
        &[
            "--timeout",
            "20",
            "--socket",
            &sock,
            "rebuild",
            "-s",
            vol.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // `deskd --socket PATH serve` is serve's own --socket: it must be a Unix socket path.
    let out = deskd_in(
        &env.path("."),
        &[
            "--socket",
            "tcp://127.0.0.1:1",
            "serve",
            vol.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--listen HOST:PORT"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_backup_to_a_terminal_is_refused() {
    if Command::new("script").arg("--version").output().is_err() {
        return skip("no script(1) (package bsdutils) to give deskd a terminal");
    }
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/a"]);
    let vol = env.path("vol");
    let log = env.path("typescript");
    // script(1) runs deskd on a pseudo-terminal and exits with its status (-e).
    let out = Command::new("script")
        .args(["-qec"])
        .arg(format!("{DESKD} backup {} -", vol.display()))
        .arg(&log)
        .env("DESKD_SOCKET", &env.socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let seen = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(out.status.code(), Some(2), "{seen}");
    assert!(
        seen.contains(
            "deskd backup: standard output is a terminal; redirect it to a file or a pipe"
        ),
        "{seen}"
    );
    assert!(!seen.contains("SQLite format"), "{seen}");
}

/// `deskd backup VOL - ARGS > out`; the exit status and stderr.
fn backup_to_file(env: &Env, args: &[&str], out: &Path) -> Output {
    let file = std::fs::File::create(out).unwrap();
    let mut cmd = env.command_for(DESKD, &[b"backup"]);
    cmd.args(args).stdout(Stdio::from(file)).output().unwrap()
}

#[test]
fn a_stream_backup_writes_its_manifest_where_verify_and_restore_find_it() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[b"touch", b"vol/a", b"vol/b"]);
    let vol = env.path("vol");
    let vol = vol.to_str().unwrap();
    let stream = env.path("public.desktop");
    let m = env.path("public.desktop.manifest.json");
    let m_str = m.to_str().unwrap();

    // The documented pair: the manifest named after the file the stream goes to.
    let out = backup_to_file(&env, &[vol, "-", "--manifest", m_str], &stream);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "integrity ok -> standard output, manifest {m_str}"
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(mode_of(&m) & 0o777, 0o600);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&m).unwrap()).unwrap();
    assert_eq!(manifest["file"], "public.desktop");
    assert_eq!(manifest["bytes"], std::fs::metadata(&stream).unwrap().len());
    let out = env.deskd(&["verify", stream.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": good: the desktop of"));

    // Any other name: verify --manifest (of a newer backup: one more object).
    env.dt_ok(&[b"touch", b"vol/d"]);
    let other = env.path("elsewhere.json");
    let stream2 = env.path("stream2");
    let out = backup_to_file(
        &env,
        &[vol, "-", "--manifest", other.to_str().unwrap()],
        &stream2,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&other).unwrap()).unwrap();
    assert_eq!(manifest["file"], "-");
    let out = env.deskd(&["verify", stream2.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "no manifest beside it: {}",
        stderr(&out)
    );
    let out = env.deskd(&[
        "verify",
        "--manifest",
        other.to_str().unwrap(),
        stream2.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The manifest of another stream does not fit.
    let out = env.deskd(&["verify", "--manifest", m_str, stream2.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    // An existing manifest is not replaced without --force, and nothing is streamed then.
    let stream3 = env.path("stream3");
    let out = backup_to_file(&env, &[vol, "-", "--manifest", m_str], &stream3);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("{m_str}: exists; give another name, or --force")),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::metadata(&stream3).unwrap().len(), 0);
    let out = backup_to_file(&env, &["--force", vol, "-", "--manifest", m_str], &stream);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(env
        .deskd(&["verify", stream.to_str().unwrap()])
        .status
        .success());
    // --manifest is for a stream only.
    let out = env.deskd(&[
        "backup",
        vol,
        env.path("f").to_str().unwrap(),
        "--manifest",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--manifest is for a backup to standard output"));

    // A flipped byte in the stream: verify says so (exit 1).
    let mut bytes = std::fs::read(&stream).unwrap();
    let copy = env.path("flipped.desktop");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&copy, &bytes).unwrap();
    let out = env.deskd(&["verify", "--manifest", m_str, copy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("does not match the manifest"),
        "{}",
        stderr(&out)
    );

    // Restore from the stream with its manifest, the volume no longer served.
    env.dt_ok(&[b"touch", b"vol/c"]);
    env.term();
    let out = env.deskd(&[
        "restore",
        "--manifest",
        other.to_str().unwrap(),
        stream2.to_str().unwrap(),
        vol,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.deskd(&["rebuild", "-s", vol]);
    assert!(
        out.status.success(),
        "up to date after the restore: {}",
        stderr(&out)
    );
}
