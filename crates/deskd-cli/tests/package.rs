//! The Debian package (scripts/package-deb.sh), built once per run from this tree's release
//! binaries: `dpkg-deb -c` lists the tools (and no benchmark), every unit of contrib/, a man
//! page for every binary and verb, the completions, the docs and the sample configuration (a
//! conffile). Extracted with `dpkg-deb -x`: its deskd runs, every man page shows its verb's
//! options (`man -l`), the completion scripts complete in bash, zsh and fish. Installed with
//! `apt-get install ./deskd_….deb` in a private mount namespace (overlays: the host is not
//! touched): `systemd-analyze verify` passes on its units where systemd reads them, man,
//! bash-completion, zsh and fish find its files by name, and `dpkg -r` / `dpkg -P` remove it
//! (an edited configuration stays until the purge). The packaged deskd serves with its
//! /etc/deskd/deskd.toml, and with the same file with every setting it shows uncommented.
//! lintian reports nothing; a unit added to contrib/ is packaged, one starting a program the
//! package lacks is refused; `BIN __generate-docs DIR`, which makes the pages, writes through
//! no planted symlink.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;

/// The tools the package ships; the benchmarks stay out.
const TOOLS: [&str; 4] = ["deskd", "dt", "prov-backup", "fileset"];

struct Package {
    deb: PathBuf,
    /// The package extracted with `dpkg-deb -x`.
    root: PathBuf,
    /// Where the release binaries are (to ask them for their help).
    bins: PathBuf,
}

/// Builds the package (uncompressed: the tests need no xz) and extracts it, once for all the
/// tests of this file. None when there is no release build (skipped; a failure under CI).
fn package() -> Option<&'static Package> {
    static PACKAGE: OnceLock<Option<Package>> = OnceLock::new();
    PACKAGE
        .get_or_init(|| {
            let bins = release_bins()?;
            let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package-test");
            let _ = std::fs::remove_dir_all(&work);
            std::fs::create_dir_all(&work).unwrap();
            let out = run_ok(
                Command::new(workspace_root().join("scripts/package-deb.sh"))
                    .arg("--bin-dir")
                    .arg(&bins)
                    .arg("--out")
                    .arg(&work)
                    .args(["--compress", "none"]),
            );
            let deb = PathBuf::from(out.trim());
            let name = format!(
                "deskd_{}_{}.deb",
                env!("CARGO_PKG_VERSION"),
                run_ok(Command::new("dpkg").arg("--print-architecture")).trim()
            );
            assert_eq!(deb, work.join(name));
            let root = work.join("root");
            run_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
            Some(Package { deb, root, bins })
        })
        .as_ref()
}

/// The paths `dpkg-deb -c` lists, as installed ("/usr/bin/deskd"; directories end in '/').
fn listing(deb: &Path) -> BTreeSet<String> {
    run_ok(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .map(|l| {
            let path = l.split_whitespace().nth(5).expect("a path column");
            path.strip_prefix('.').unwrap().to_string()
        })
        .collect()
}

/// The verbs a binary's `--help` lists under "Commands:" (clap's `help` aside).
fn verbs(bin: &Path) -> Vec<String> {
    let help = run_ok(Command::new(bin).arg("--help"));
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|v| *v != "help")
        .map(str::to_string)
        .collect()
}

/// The long options (`--name`) a `--help` text lists on its option lines.
fn long_options(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .flat_map(|l| l.split([' ', ',', '=', '[', ']', '<']))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect()
}

/// Every man page the package must hold: one per binary and one per verb.
fn expected_pages(p: &Package) -> Vec<(String, Vec<String>)> {
    TOOLS
        .iter()
        .flat_map(|tool| {
            let mut pages = vec![(tool.to_string(), Vec::new())];
            for verb in verbs(&p.bins.join(tool)) {
                pages.push((format!("{tool}-{verb}"), vec![verb]));
            }
            pages.into_iter().map(move |(page, args)| {
                let mut cmd = vec![tool.to_string()];
                cmd.extend(args);
                (page, cmd)
            })
        })
        .collect()
}

fn contrib_files(dir: &str, suffix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(workspace_root().join("contrib").join(dir)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect();
    names.sort();
    names
}

#[test]
fn the_package_lists_the_tools_units_pages_completions_and_sample_config() {
    let Some(p) = package() else { return };
    let files = listing(&p.deb);
    let mut want: Vec<String> = Vec::new();
    for tool in TOOLS {
        want.push(format!("/usr/bin/{tool}"));
        want.push(format!("/usr/share/bash-completion/completions/{tool}"));
        want.push(format!("/usr/share/zsh/vendor-completions/_{tool}"));
        want.push(format!("/usr/share/fish/vendor_completions.d/{tool}.fish"));
    }
    for (page, _) in expected_pages(p) {
        want.push(format!("/usr/share/man/man1/{page}.1.gz"));
    }
    let units = contrib_files("", ".service");
    assert!(units.contains(&"deskd.service".to_string()), "{units:?}");
    for unit in &units {
        want.push(format!("/usr/lib/systemd/system/{unit}"));
    }
    for example in contrib_files("prov-backup", "") {
        want.push(format!(
            "/usr/share/doc/deskd/examples/prov-backup/{example}"
        ));
    }
    for (dir, suffix) in [
        ("prometheus", ".yml"),
        ("prometheus/tests", ".yml"),
        ("grafana", ".json"),
    ] {
        let files = contrib_files(dir, suffix);
        assert!(!files.is_empty(), "nothing in contrib/{dir}");
        for file in files {
            want.push(format!("/usr/share/doc/deskd/examples/{dir}/{file}"));
        }
    }
    want.push("/etc/deskd/deskd.toml".into());
    want.push("/usr/share/doc/deskd/copyright".into());
    want.push("/usr/share/doc/deskd/README.md".into());
    for doc in std::fs::read_dir(workspace_root().join("docs")).unwrap() {
        let name = doc.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            want.push(format!("/usr/share/doc/deskd/docs/{name}"));
        }
    }
    let missing: Vec<&String> = want.iter().filter(|w| !files.contains(*w)).collect();
    assert!(missing.is_empty(), "missing {missing:?} in {files:#?}");

    // Only the tools are programs: no benchmark, nothing else in a bin directory.
    let programs: Vec<&String> = files
        .iter()
        .filter(|f| f.contains("/bin/") && !f.ends_with('/'))
        .collect();
    assert_eq!(programs.len(), TOOLS.len(), "{programs:?}");
    assert!(!files.iter().any(|f| f.contains("bench")), "{files:#?}");

    // The sample configuration is a conffile (dpkg keeps an administrator's edits), and the
    // package depends on the C library its binaries link.
    let conffiles = run_ok(
        Command::new("dpkg-deb")
            .arg("-I")
            .arg(&p.deb)
            .arg("conffiles"),
    );
    assert_eq!(conffiles.trim(), "/etc/deskd/deskd.toml");
    let depends = run_ok(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&p.deb)
            .arg("Depends"),
    );
    assert!(depends.contains("libc6 (>= "), "{depends}");
    let version = run_ok(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&p.deb)
            .arg("Version"),
    );
    assert_eq!(version.trim(), env!("CARGO_PKG_VERSION"));

    // Units name the installed binaries, never /usr/local.
    for unit in &units {
        let text =
            std::fs::read_to_string(p.root.join("usr/lib/systemd/system").join(unit)).unwrap();
        assert!(!text.contains("/usr/local/bin"), "{unit}: {text}");
        for line in text.lines().filter(|l| l.starts_with("ExecStart=")) {
            let exe = line["ExecStart=".len()..]
                .split_whitespace()
                .next()
                .unwrap();
            assert!(exe.starts_with("/usr/bin/"), "{unit}: {line}");
            assert!(p.root.join(&exe[1..]).exists(), "{unit}: {line}");
        }
    }
}

#[test]
fn the_extracted_deskd_runs_and_every_man_page_shows_its_verbs_options() {
    let Some(p) = package() else { return };
    let version = run_ok(Command::new(p.root.join("usr/bin/deskd")).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("deskd {}", env!("CARGO_PKG_VERSION"))
    );
    for tool in ["dt", "prov-backup", "fileset"] {
        let v = run_ok(Command::new(p.root.join("usr/bin").join(tool)).arg("--version"));
        assert_eq!(v.trim(), format!("{tool} {}", env!("CARGO_PKG_VERSION")));
    }
    for (page, cmd) in expected_pages(p) {
        let file = p.root.join(format!("usr/share/man/man1/{page}.1.gz"));
        // Wide lines, so no option name is split across two.
        let text = run_ok(
            Command::new("man")
                .arg("-l")
                .arg(&file)
                .env("MANWIDTH", "250")
                .env("MAN_KEEP_FORMATTING", "")
                .env("MANPAGER", "cat")
                .env("PAGER", "cat"),
        );
        let help = run_ok(
            Command::new(p.root.join("usr/bin").join(&cmd[0]))
                .args(&cmd[1..])
                .arg("--help"),
        );
        let options = long_options(&help);
        assert!(options.contains("--help"), "{page}: {help}");
        // man renders '-' as U+2010 in some locales: compare on plain hyphens.
        let plain = text.replace('\u{2010}', "-");
        for option in &options {
            assert!(
                plain.contains(option.as_str()),
                "{page}: no {option} in\n{text}"
            );
        }
        assert!(
            plain.contains(&cmd.join(" ")),
            "{page}: no synopsis {cmd:?} in\n{text}"
        );
        // Every page a page names is in the package (no `deskd-help(1)` for clap's help verb).
        assert!(
            !plain.contains("-help("),
            "{page}: names a help page\n{text}"
        );
    }
}

#[test]
fn the_extracted_completion_scripts_complete_verbs_and_options() {
    let Some(p) = package() else { return };
    let share = p.root.join("usr/share");
    // bash: the script registers _dt for dt, which completes verbs and a verb's options.
    let bash = share.join("bash-completion/completions/dt");
    let script = r#"source "$1"
complete -p dt
complete_words() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
    _dt dt "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"; printf '%s\n' "${COMPREPLY[@]}"; }
complete_words dt m
complete_words dt mv --f
complete_words dt set -l v"#;
    let out = run_ok(
        Command::new("bash")
            .args(["--norc", "-c", script, "bash"])
            .arg(&bash),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].ends_with(" -F _dt dt"), "{out}");
    // A label is completed from its names.
    assert_eq!(&lines[1..], ["mkdir", "mv", "--force", "violet"], "{out}");

    // fish: the script's completions, as `complete -C` lists them for a command line.
    let fish = share.join("fish/vendor_completions.d/deskd.fish");
    let home = tempfile::tempdir().unwrap();
    let out = run_ok(
        Command::new("fish")
            .args([
                "--no-config",
                "-c",
                "source $argv[1]; complete -C 'deskd serve --re'",
            ])
            .arg(&fish)
            .env("HOME", home.path()),
    );
    assert!(out.starts_with("--read-only\t"), "{out}");

    // zsh: the script parses, and defines the completion function compinit would load.
    let zsh = share.join("zsh/vendor-completions/_fileset");
    run_ok(Command::new("zsh").arg("-n").arg(&zsh));
    let out = run_ok(
        Command::new("zsh")
            .args(["-f", "-c", "source $1; whence -w _fileset", "zsh"])
            .arg(&zsh),
    );
    assert_eq!(out.trim(), "_fileset: function");
}

/// A bash script run in a private mount namespace with overlays on /usr, /etc and /var (on a
/// private tmpfs: the host's files and package database are not touched), after
/// `apt-get install ./deskd_….deb` installed the package there as README.md says (its output
/// in `$HOME/apt.log`); None (skipped, a failure under CI) where that needs what is not here.
fn installed(p: &Package, scratch: &Path, script: &str) -> Option<Command> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("installing over /usr in a mount namespace needs root");
        return None;
    }
    if !Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        skip("unshare -m does not work here");
        return None;
    }
    let setup = r#"set -e
mount --make-rprivate /
mount -t tmpfs tmpfs "$LAYER"
for dir in /usr /etc /var; do
    mkdir -p "$LAYER/upper$dir" "$LAYER/work$dir"
    mount -t overlay overlay -o "lowerdir=$dir,upperdir=$LAYER/upper$dir,workdir=$LAYER/work$dir" "$dir"
done
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$DEB" >"$HOME/apt.log" 2>&1; then
    cat "$HOME/apt.log" >&2
    exit 1
fi
"#;
    let layer = scratch.join("layer");
    std::fs::create_dir_all(&layer).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "bash", "-c", &format!("{setup}{script}")])
        .env("LAYER", &layer)
        .env("DEB", &p.deb)
        .env("PKGROOT", &p.root)
        .env("HOME", scratch)
        .current_dir(scratch);
    Some(cmd)
}

/// Runs an [`installed`] script; its stdout lines. Fails unless it exits 0 with nothing on
/// stderr.
fn run_installed(mut cmd: Command) -> Vec<String> {
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}\nstdout:\n{text}\nstderr:\n{}",
        out.status,
        stderr(&out)
    );
    text.lines().map(str::to_string).collect()
}

#[test]
fn apt_installs_it_and_its_units_verify_and_man_and_the_shells_find_its_files() {
    let Some(p) = package() else { return };
    let scratch = tempfile::tempdir().unwrap();
    // Every unit together (deskd-netatalk Requires deskd), from where systemd reads them, with
    // the binaries they start at the paths they name (a template is verified as one).
    let script = r#"
units=()
for u in "$PKGROOT"/usr/lib/systemd/system/*.service; do
    units+=("/usr/lib/systemd/system/$(basename "$u")")
done
systemd-analyze verify "${units[@]}"
echo "verified ${#units[@]}"
man -w deskd-serve
man -w dt-mv
source /usr/share/bash-completion/bash_completion
if declare -F _comp_complete_load >/dev/null; then _comp_complete_load dt || true; else _completion_loader dt || true; fi
complete -p dt
fish -c "complete -C 'dt mkd'"
zsh -f -c 'autoload -Uz compinit && compinit -u -D && print -r -- $_comps[prov-backup]'
"#;
    let Some(cmd) = installed(p, scratch.path(), script) else {
        return;
    };
    let lines = run_installed(cmd);
    let units = contrib_files("", ".service").len();
    assert_eq!(
        lines,
        [
            format!("verified {units}").as_str(),
            "/usr/share/man/man1/deskd-serve.1.gz",
            "/usr/share/man/man1/dt-mv.1.gz",
            "complete -o bashdefault -o default -o nosort -F _dt dt",
            "mkdir\tCreate directories",
            "_prov-backup",
        ]
    );
}

#[test]
fn dpkg_removes_it_keeping_an_edited_configuration_until_purged() {
    let Some(p) = package() else { return };
    let scratch = tempfile::tempdir().unwrap();
    let script = r##"
dpkg-query -W -f '${Status} ${Version}\n' deskd
echo "# an administrator's line" >>/etc/deskd/deskd.toml
dpkg -r deskd >>"$HOME/apt.log"
for f in /usr/bin/deskd /usr/lib/systemd/system/deskd.service /usr/share/man/man1/dt-mv.1.gz; do
    [ -e "$f" ] && echo "left: $f"
done
tail -n 1 /etc/deskd/deskd.toml
dpkg -P deskd >>"$HOME/apt.log"
[ -e /etc/deskd ] && echo "left: /etc/deskd"
echo end
"##;
    let Some(cmd) = installed(p, scratch.path(), script) else {
        return;
    };
    let lines = run_installed(cmd);
    assert_eq!(
        lines,
        [
            format!("install ok installed {}", env!("CARGO_PKG_VERSION")).as_str(),
            "# an administrator's line",
            "end",
        ]
    );
}

/// Makes `env` start the packaged deskd (not the test build) for its servers.
fn serve_with_the_packaged_deskd(p: &Package, env: &mut Env) {
    let deskd = p.root.join("usr/bin/deskd");
    // Env::start runs WRAPPER… DESKD serve …: the wrapper drops DESKD for the packaged one.
    env.server_wrapper = vec![
        "sh".into(),
        "-c".into(),
        format!("shift; exec '{}' \"$@\"", deskd.display()),
        "sh".into(),
    ];
}

/// The packaged /etc/deskd/deskd.toml with `edit` applied, written into `env`'s directory.
fn sample_config(p: &Package, env: &Env, edit: impl Fn(&str) -> String) -> PathBuf {
    let text = std::fs::read_to_string(p.root.join("etc/deskd/deskd.toml")).unwrap();
    let path = env.path("deskd.toml");
    std::fs::write(&path, edit(&text)).unwrap();
    path
}

#[test]
fn the_sample_configuration_serves_a_volume() {
    let Some(p) = package() else { return };
    let mut env = Env::new(&["vol"]);
    serve_with_the_packaged_deskd(p, &mut env);
    let config = sample_config(p, &env, str::to_string);
    let vol = env.path("vol").display().to_string();
    env.start(&["--config", config.to_str().unwrap(), &vol]);
    let status = env.deskd_ok(&["status", "--json"]);
    assert_eq!(status.lines().count(), 1, "{status}");
    assert!(status.contains(&vol), "{status}");
}

#[test]
fn every_setting_the_sample_configuration_shows_is_accepted() {
    let Some(p) = package() else { return };
    let mut env = Env::new(&["public", "archive", "state"]);
    serve_with_the_packaged_deskd(p, &mut env);
    let token = env.path("token");
    std::fs::write(&token, "a-shared-token-of-32-bytes-here!").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // Three ports, held at once so they differ (each let go before the next bind could give
    // the same number again); let go together for the server to bind.
    let held: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = held
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    drop(held);
    let (port, http_port, cnid_port) = (ports[0], ports[1], ports[2]);
    let backups = env.path("backups");
    std::fs::create_dir(&backups).unwrap();
    std::fs::set_permissions(
        &backups,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let afp_conf = env.path("afp.conf");
    std::fs::write(&afp_conf, "[Global]\n").unwrap();
    let dir = env.dir.path().display().to_string();
    let config = sample_config(p, &env, |text| {
        // Every commented `key = value` line and volume table, uncommented as it stands; only
        // the host's paths and port are this test's.
        let mut out = String::new();
        let mut uncommented = 0;
        for line in text.lines() {
            let body = line.strip_prefix("# ").unwrap_or("");
            let setting = body
                .split_once(" = ")
                .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            if setting || body.starts_with("[volume.") || body == "[netatalk]" {
                out.push_str(body);
                uncommented += 1;
            } else {
                out.push_str(line);
            }
            out.push('\n');
        }
        assert!(uncommented >= 25, "{uncommented} settings in\n{text}");
        out.replace("/srv/", &format!("{dir}/"))
            .replace("/var/lib/deskd", &format!("{dir}/state"))
            .replace("/etc/deskd/token", token.to_str().unwrap())
            .replace("/etc/deskd/http-token", token.to_str().unwrap())
            .replace("/var/backups/deskd", backups.to_str().unwrap())
            .replace("127.0.0.1:7420", &format!("127.0.0.1:{port}"))
            .replace("127.0.0.1:8470", &format!("127.0.0.1:{http_port}"))
            .replace("127.0.0.1:4700", &format!("127.0.0.1:{cnid_port}"))
            .replace("/etc/netatalk/afp.conf", afp_conf.to_str().unwrap())
            .replace("/var/lib/netatalk/", &format!("{dir}/netatalk/"))
    });
    env.start(&["--config", config.to_str().unwrap()]);
    // Both volume tables are served, the archive read-only; desktop_location put the desktops
    // under state_dir; TCP answers on `listen`.
    let status = env.deskd_ok(&["status", "--json"]);
    let volumes: Vec<serde_json::Value> = status
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(volumes.len(), 2, "{status}");
    for v in &volumes {
        let path = v["path"].as_str().unwrap();
        let archive = path.ends_with("/archive");
        assert_eq!(v["read_only"], archive, "{status}");
        let desktop = std::fs::read_link(Path::new(path).join(".Desktop")).unwrap();
        assert!(
            desktop.starts_with(env.path("state/desktops")),
            "{desktop:?}"
        );
    }
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    // And HTTP on `http_listen`, and afpd's CNID protocol on `[netatalk] listen`.
    env.wait_for_log(&format!("listening on http 127.0.0.1:{http_port}"), 1);
    env.wait_for_log(&format!("CNID protocol on 127.0.0.1:{cnid_port}"), 1);
}

#[test]
fn generate_docs_writes_only_new_files() {
    // The hidden word that writes the pages is harmless to others' files: run as root into a
    // directory where someone planted a symlink, it writes nothing through it.
    let dir = tempfile::tempdir().unwrap();
    let out = run_ok(Command::new(DT).arg("__generate-docs").arg(dir.path()));
    assert!(out.is_empty(), "{out}");
    assert!(dir.path().join("man1/dt-mv.1").exists());
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    let again = tempfile::tempdir().unwrap();
    std::fs::create_dir(again.path().join("man1")).unwrap();
    std::os::unix::fs::symlink(&victim, again.path().join("man1/dt.1")).unwrap();
    let out = Command::new(DT)
        .arg("__generate-docs")
        .arg(again.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("dt.1: File exists"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    // Without a directory it is a usage error, and the word appears in no help.
    let out = Command::new(DT).arg("__generate-docs").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let help = run_ok(Command::new(DT).arg("--help"));
    assert!(!help.contains("generate"), "{help}");
}

/// A copy of what scripts/package-deb.sh reads (the script, Cargo.toml, README.md, docs/,
/// contrib/) in `dir`, to package with a changed contrib/.
fn workspace_copy(dir: &Path) {
    let ws = workspace_root();
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    for file in ["scripts/package-deb.sh", "Cargo.toml", "README.md"] {
        std::fs::copy(ws.join(file), dir.join(file)).unwrap();
    }
    run_ok(
        Command::new("cp")
            .arg("-R")
            .arg(ws.join("docs"))
            .arg(ws.join("contrib"))
            .arg(dir),
    );
}

#[test]
fn a_unit_added_to_contrib_is_packaged_and_one_naming_a_tool_not_packaged_is_refused() {
    let Some(bins) = release_bins() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    workspace_copy(&ws);
    let unit = "[Unit]\nDescription=a new unit\n\n[Service]\nType=oneshot\n\
                ExecStart=/usr/local/bin/fileset test /var/lib/%i\n";
    std::fs::write(ws.join("contrib/new@.service"), unit).unwrap();
    let package = |out: &str| {
        Command::new(ws.join("scripts/package-deb.sh"))
            .arg("--bin-dir")
            .arg(&bins)
            .args(["--compress", "none", "--out"])
            .arg(dir.path().join(out))
            .output()
            .unwrap()
    };
    let out = package("good");
    assert!(out.status.success(), "{}", stderr(&out));
    let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let root = dir.path().join("root");
    run_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let packaged =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/new@.service")).unwrap();
    assert!(
        packaged.contains("ExecStart=/usr/bin/fileset test /var/lib/%i\n")
            && packaged.starts_with("# Installed by the deskd package"),
        "{packaged}"
    );
    // A unit's own explanations stay (how to configure an instance, what to order after it);
    // the steps the package did (copying the unit) are gone, the package's paths are named.
    let fileset =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/fileset@.service")).unwrap();
    assert!(
        fileset.contains("FILESET_PERMDIR=")
            && fileset.contains("Requires=fileset@mme.service")
            && fileset.contains("#   systemctl enable --now fileset@mme")
            && !fileset.contains("cp contrib/")
            && !fileset.contains("/usr/local/bin"),
        "{fileset}"
    );
    let prov =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/prov-backup.service")).unwrap();
    assert!(
        prov.contains("/usr/share/doc/deskd/examples/prov-backup/Rsnapshot.conf")
            && prov.contains("-g /etc/Provisioning/Global.conf"),
        "{prov}"
    );

    // A benchmark is no tool of the package: a unit starting one is refused, and no package
    // is left behind.
    let bench = unit.replace("/usr/local/bin/fileset", "/usr/local/bin/fileset-bench");
    std::fs::write(ws.join("contrib/new@.service"), bench).unwrap();
    let out = package("bad");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "new@.service runs /usr/local/bin/fileset-bench, which the package does not hold"
        ),
        "{}",
        stderr(&out)
    );
    let left: Vec<_> = std::fs::read_dir(dir.path().join("bad")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn lintian_reports_neither_error_nor_warning() {
    let Some(bins) = release_bins() else { return };
    let dir = tempfile::tempdir().unwrap();
    // Compressed, as shipped, and with a maintainer's address (the default one, root@localhost,
    // is lintian's bogus-mail-host: a package to publish is built with DEBFULLNAME/DEBEMAIL).
    let deb = run_ok(
        Command::new(workspace_root().join("scripts/package-deb.sh"))
            .arg("--bin-dir")
            .arg(&bins)
            .arg("--out")
            .arg(dir.path())
            .args(["--compress", "gzip"])
            .env("DEBFULLNAME", "Jane Admin")
            .env("DEBEMAIL", "jane@deskd.example.net"),
    );
    let report = run_ok(
        Command::new("lintian")
            .args(["--fail-on", "error,warning"])
            .arg(deb.trim()),
    );
    assert_eq!(report, "");
}

/// The `key = value` settings (commented out or not) and tables of a TOML text, in order.
fn shown_settings(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .filter_map(|l| {
            if l.starts_with('[') && l.ends_with(']') {
                return Some(l.to_string());
            }
            let (key, _) = l.split_once(" = ")?;
            key.chars()
                .all(|c| c.is_ascii_lowercase() || c == '_')
                .then(|| key.to_string())
        })
        .collect()
}

#[test]
fn the_sample_configuration_shows_the_keys_docs_deskd_md_shows() {
    let sample = std::fs::read_to_string(workspace_root().join("contrib/deskd.toml")).unwrap();
    let docs = std::fs::read_to_string(workspace_root().join("docs/deskd.md")).unwrap();
    let block: String = docs[docs.find("### Configuration").unwrap()..]
        .lines()
        .skip_while(|l| *l != "```toml")
        .skip(1)
        .take_while(|l| *l != "```")
        .map(|l| format!("{l}\n"))
        .collect();
    let documented = shown_settings(&block);
    assert!(documented.len() > 20, "{block}");
    assert_eq!(shown_settings(&sample), documented, "{sample}");
}

#[test]
fn a_binary_built_with_test_hooks_is_never_packaged() {
    let Some(bins) = release_bins() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mixed = dir.path().join("bin");
    std::fs::create_dir(&mixed).unwrap();
    for b in ["deskd", "dt", "prov-backup", "fileset"] {
        std::fs::copy(bins.join(b), mixed.join(b)).unwrap();
    }
    // The deskd these tests run was built with the `test-hooks` feature (cargo test turns it on).
    std::fs::copy(DESKD, mixed.join("deskd")).unwrap();
    let out = Command::new(workspace_root().join("scripts/package-deb.sh"))
        .arg("--bin-dir")
        .arg(&mixed)
        .args(["--compress", "none", "--out"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("was built with test hooks"),
        "{}",
        stderr(&out)
    );
    assert!(
        std::fs::read_dir(dir.path().join("out")).map_or(true, |mut d| d.next().is_none()),
        "a package was left behind"
    );
}
