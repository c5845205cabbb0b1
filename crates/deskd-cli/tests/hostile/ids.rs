//! Hostile-user tests, part `ids` (see main.rs): user `nobody` tries to move the ID counter to
//! the end of the 32-bit space, to get a deleted object's ID (so its old aliases open nobody's
//! file) and to take an ID in use — by request (raw and through `dt`), by a planted
//! `user.deskd.id` mirror and by a planted `.rsrc/NAME` header, each followed by every admin
//! action (online and offline `rebuild -s`, repair, `-f`, backup and restore, `-f` with the
//! desktop lost). The trusted paths still keep IDs: root's `dt cp --keep-ids` and a plain `mv`.
//! The status warning for a nearly exhausted ID space is checked too.
//!
//! The nobody side of a test is this test binary run again as nobody with a small script in
//! `DESKD_IDS_PROBE` (write a file, set an xattr, plant a resource file, send a hinted request).
//! The servers here do not watch (`watch = "off"`): these are the client paths' rules; what
//! the watcher does with the same plants is `deskd-server`'s `watch::tests`.

use std::path::{Path, PathBuf};

use crate::common::*;

const NOBODY: u32 = 65534;
/// The hint and claims that would move the counter near the end of the space.
const FAR: u32 = 0xFFFF_FFF0;
/// Past this, a counter has jumped: the tests make a few dozen objects.
const SANE: u32 = 100_000;
/// What the nobody side of a test is told to do.
const PROBE: &str = "DESKD_IDS_PROBE";

/// When this process is the nobody side of a test: run the script in [`PROBE`] (steps split by
/// `;`, words by spaces) and return true; the caller then returns.
fn nobody_side() -> bool {
    let Ok(script) = std::env::var(PROBE) else {
        return false;
    };
    for step in script.split(';').filter(|s| !s.is_empty()) {
        let words: Vec<&str> = step.split(' ').collect();
        match words[..] {
            ["write", path] => std::fs::write(path, b"nobody's file").unwrap(),
            ["mkdir", path] => std::fs::create_dir_all(path).unwrap(),
            ["xattr", path, id] => xattr::set(
                path,
                deskd_volume::ID_XATTR,
                &id.parse::<u32>().unwrap().to_be_bytes(),
            )
            .unwrap(),
            ["rsrc", object, id] => {
                // The 512-byte HELIOS header, the ID at offset 20.
                let header = deskd_volume::rsrc::ResourceHeader::new(
                    id.parse().unwrap(),
                    *b"TEXT",
                    *b"EVIL",
                    0,
                )
                .encode();
                let path = deskd_volume::rsrc::rsrc_path(Path::new(object)).unwrap();
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                // nobody's .rsrc folder: a resource file root wrote there can be replaced.
                let _ = std::fs::remove_file(&path);
                std::fs::write(&path, header).unwrap();
            }
            ["add", volume, rel, hint] => {
                let socket = std::env::var_os("DESKD_SOCKET").unwrap();
                let mut c = deskd_client::Client::connect(
                    Path::new(&socket),
                    std::time::Duration::from_secs(10),
                )
                .unwrap();
                let vol = c.open_volume(Path::new(volume)).unwrap().vol;
                let answer = c.call(deskd_client::Request::AddPath {
                    vol,
                    path: rel.as_bytes().to_vec(),
                    hint: Some(hint.parse().unwrap()),
                    type_code: None,
                    creator: None,
                    carried: None,
                });
                match answer {
                    Ok(deskd_client::Response::Object(o)) => println!("probe {rel}={}", o.id),
                    other => println!("probe {rel}=failed {other:?}"),
                }
            }
            _ => panic!("unknown probe step {step:?}"),
        }
    }
    true
}

/// Run `test`'s nobody side with `script`; returns its output. Fails (never skips) when the
/// tests cannot act as nobody.
fn as_nobody(env: &Env, test: &str, script: &str) -> String {
    let me = std::env::current_exe().unwrap();
    let name = format!("ids::{test}");
    let args: [&[u8]; 4] = [
        b"--exact",
        name.as_bytes(),
        b"--nocapture",
        b"--test-threads=1",
    ];
    let out = env
        .as_user(
            NOBODY,
            me.to_str().unwrap(),
            &args,
            &[(PROBE, script.to_owned())],
        )
        .expect("the hostile tests must run as root (to act as nobody)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "nobody side failed: {stdout}{}",
        stderr(&out)
    );
    stdout
}

/// `dt` run as nobody.
fn dt_as_nobody(env: &Env, args: &[&[u8]]) -> std::process::Output {
    env.as_user(NOBODY, DT, args, &[])
        .expect("the hostile tests must run as root (to act as nobody)")
}

/// A served volume (owned by root) with root's registered `public/root.txt`, the ID of root's
/// `public/gone.txt` registered and then deleted (a dead ID), and nobody's own folder
/// `nobodys/`.
struct Scene {
    env: Env,
    root_id: u32,
    dead_id: u32,
}

fn scene() -> Scene {
    let mut env = Env::new(&["vol"]);
    env.serve_unwatched(&["vol"]);
    env.dt_ok(&[b"mkdir", b"vol/public", b"vol/nobodys"]);
    std::os::unix::fs::chown(env.path("vol/nobodys"), Some(NOBODY), Some(NOBODY)).unwrap();
    env.dt_ok(&[b"touch", b"vol/public/root.txt", b"vol/public/gone.txt"]);
    let root_id = env.id_of(&env.path("vol/public/root.txt"));
    let dead_id = env.id_of(&env.path("vol/public/gone.txt"));
    env.dt_ok(&[b"rm", b"vol/public/gone.txt"]);
    Scene {
        env,
        root_id,
        dead_id,
    }
}

fn desktop(env: &Env) -> PathBuf {
    env.path("vol/.Desktop")
}

/// The ID counter as stored in the desktop (read with sqlite3; the WAL counts).
fn last_id(env: &Env) -> u32 {
    sqlite3(
        &desktop(env),
        "SELECT value FROM meta WHERE key = 'last_id'",
    )
    .parse()
    .unwrap()
}

/// The ID the desktop has for the object called `name` (names are unique in these tests).
fn id_named(env: &Env, name: &str) -> Option<u32> {
    let out = sqlite3(
        &desktop(env),
        &format!("SELECT id FROM objects WHERE CAST(name AS TEXT) = '{name}'"),
    );
    (!out.is_empty()).then(|| out.parse().unwrap())
}

fn has_id(env: &Env, id: u32) -> bool {
    sqlite3(
        &desktop(env),
        &format!("SELECT count(*) FROM objects WHERE id = {id}"),
    ) != "0"
}

fn probe_id(out: &str, rel: &str) -> String {
    // (libtest prints its "test … " before the first line.)
    let key = format!("probe {rel}=");
    out.lines()
        .find_map(|l| l.find(&key).map(|at| &l[at + key.len()..]))
        .unwrap_or_else(|| panic!("no answer for {rel} in {out}"))
        .to_owned()
}

#[test]
fn a_hint_at_the_end_of_the_id_space_from_nobody_moves_nothing() {
    if nobody_side() {
        return;
    }
    let Scene { env, .. } = scene();
    let before = last_id(&env);
    let vol = env.path("vol");
    let (vol_s, file) = (
        vol.display().to_string(),
        vol.join("nobodys/last").display().to_string(),
    );
    // A raw request asking for the very last ID (the next create would find the space used up).
    let out = as_nobody(
        &env,
        "a_hint_at_the_end_of_the_id_space_from_nobody_moves_nothing",
        &format!(
            "write {file};add {vol_s} nobodys/last {}",
            deskd_db::LAST_USABLE_ID
        ),
    );
    let given: u32 = probe_id(&out, "nobodys/last").parse().expect("registered");
    assert!(given < SANE, "nobody's hint was honoured: ID {given}");
    // Through dt: a copy with --keep-ids whose resource file claims an ID near the end.
    let src = vol.join("nobodys/src");
    let evil = src.join("evil").display().to_string();
    as_nobody(
        &env,
        "a_hint_at_the_end_of_the_id_space_from_nobody_moves_nothing",
        &format!("mkdir {};write {evil};rsrc {evil} {FAR}", src.display()),
    );
    let copy = dt_as_nobody(
        &env,
        &[
            b"cp",
            b"--keep-ids",
            evil.as_bytes(),
            vol.join("nobodys/copy").as_os_str().as_encoded_bytes(),
        ],
    );
    assert!(copy.status.success(), "dt cp as nobody: {}", stderr(&copy));
    let copied = id_named(&env, "copy").expect("the copy is registered");
    assert_ne!(copied, FAR);
    assert!(copied < SANE, "dt cp --keep-ids by nobody took ID {copied}");
    // The counter did not jump, and everyone's next create gets a normal ID.
    let after = last_id(&env);
    assert!(
        after < SANE && after >= before,
        "counter {before} -> {after}"
    );
    env.dt_ok(&[b"touch", b"vol/public/roots-next.txt"]);
    assert!(env.id_of(&env.path("vol/public/roots-next.txt")) < SANE);
    let mine = dt_as_nobody(&env, &[b"touch", b"vol/nobodys/nobodys-next"]);
    assert!(
        mine.status.success(),
        "nobody's next create: {}",
        stderr(&mine)
    );
    assert!(id_named(&env, "nobodys-next").unwrap() < SANE);
    assert!(last_id(&env) < SANE);
}

#[test]
fn a_dead_or_taken_id_asked_for_by_nobody_is_not_given() {
    if nobody_side() {
        return;
    }
    let Scene {
        env,
        root_id,
        dead_id,
    } = scene();
    let vol = env.path("vol");
    let vol_s = vol.display().to_string();
    let (dead_file, taken_file) = (
        vol.join("nobodys/wants-dead").display().to_string(),
        vol.join("nobodys/wants-taken").display().to_string(),
    );
    let out = as_nobody(
        &env,
        "a_dead_or_taken_id_asked_for_by_nobody_is_not_given",
        &format!(
            "write {dead_file};write {taken_file};\
             add {vol_s} nobodys/wants-dead {dead_id};add {vol_s} nobodys/wants-taken {root_id}"
        ),
    );
    let got_dead: u32 = probe_id(&out, "nobodys/wants-dead").parse().unwrap();
    let got_taken: u32 = probe_id(&out, "nobodys/wants-taken").parse().unwrap();
    assert_ne!(got_dead, dead_id, "nobody got the deleted file's ID");
    assert_ne!(got_taken, root_id);
    assert!(
        !has_id(&env, dead_id),
        "the dead ID {dead_id} is in use again"
    );
    assert_eq!(env.id_of(&env.path("vol/public/root.txt")), root_id);
    // And root (an admin restoring) still may revive it.
    std::fs::write(env.path("vol/public/gone.txt"), b"restored").unwrap();
    let mut c = env.client();
    let v = c.open_volume(&vol).unwrap().vol;
    let revived = c
        .call(deskd_client::Request::AddPath {
            vol: v,
            path: b"public/gone.txt".to_vec(),
            hint: Some(dead_id),
            type_code: None,
            creator: None,
            carried: None,
        })
        .unwrap();
    assert!(matches!(revived, deskd_client::Response::Object(o) if o.id == dead_id));
}

/// How nobody plants its claims: on the three files `far`, `dead` and `taken` in its folder.
#[derive(Clone, Copy, PartialEq)]
enum Carrier {
    Xattr,
    Rsrc,
}

/// One admin action after the plant; returns its output (for `-s`, the difference lines).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    OnlineScan,
    OnlineRepair,
    OfflineScan,
    OfflineRepair,
    Fresh,
    BackupRestore,
    /// A restore with the live desktop gone: the backup is the only reference.
    RestoreWithoutDesktop,
    /// `rebuild -f` with the desktop gone: nothing to check claims against.
    FreshWithoutDesktop,
}

const ACTIONS: [Action; 8] = [
    Action::OnlineScan,
    Action::OnlineRepair,
    Action::OfflineScan,
    Action::OfflineRepair,
    Action::Fresh,
    Action::BackupRestore,
    Action::RestoreWithoutDesktop,
    Action::FreshWithoutDesktop,
];

fn deskd_ok_or_diff(env: &Env, args: &[&str]) -> String {
    let out = env.deskd(args);
    // `-s` exits 1 when it found differences.
    let code = out.status.code();
    assert!(
        code == Some(0) || (args.contains(&"-s") && code == Some(1)),
        "deskd {args:?}: {code:?} {}",
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run(env: &mut Env, action: Action) -> String {
    let online = matches!(action, Action::OnlineScan | Action::OnlineRepair);
    assert!(!online || env.server.is_some());
    if !online {
        env.term();
    }
    match action {
        Action::OnlineScan | Action::OfflineScan => {
            deskd_ok_or_diff(env, &["rebuild", "-s", "vol"])
        }
        Action::OnlineRepair | Action::OfflineRepair => deskd_ok_or_diff(env, &["rebuild", "vol"]),
        Action::Fresh => deskd_ok_or_diff(env, &["rebuild", "-f", "vol"]),
        Action::BackupRestore | Action::RestoreWithoutDesktop => {
            let backup = env.path("backup.desktop");
            let _ = std::fs::remove_file(&backup);
            env.deskd_ok(&["backup", "--force", "vol", backup.to_str().unwrap()]);
            if action == Action::RestoreWithoutDesktop {
                remove_desktop(env);
            }
            env.deskd_ok(&["restore", backup.to_str().unwrap(), "vol"])
        }
        Action::FreshWithoutDesktop => {
            remove_desktop(env);
            deskd_ok_or_diff(env, &["rebuild", "-f", "vol"])
        }
    }
}

fn remove_desktop(env: &Env) {
    for side in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(env.path(&format!("vol/.Desktop{side}")));
    }
}

/// For each admin action, on a fresh volume: plant nobody's claims with `carrier` on three
/// new files of its own, run the action, plant again (a repair rewrote them; the files may now
/// be registered) and run it again; after each run check that the counter did not jump, no
/// dead or taken ID went to nobody's files, root's file kept its ID, and `-s` reported the
/// claim. Every problem of every action is collected, then reported together.
fn claims_survive_no_admin_action(test: &str, carrier: Carrier) {
    let mut problems = Vec::new();
    for action in ACTIONS {
        let Scene {
            mut env,
            root_id,
            dead_id,
        } = scene();
        let vol = env.path("vol");
        let file = |name: &str| vol.join("nobodys").join(name).display().to_string();
        let plant_step = |name: &str, id: u32| match carrier {
            Carrier::Xattr => format!("xattr {} {id};", file(name)),
            Carrier::Rsrc => format!("rsrc {} {id};", file(name)),
        };
        let plant =
            plant_step("far", FAR) + &plant_step("dead", dead_id) + &plant_step("taken", root_id);
        let make = format!(
            "write {};write {};write {};",
            file("far"),
            file("dead"),
            file("taken")
        );
        for round in ["unregistered", "registered"] {
            let script = match round {
                "unregistered" => make.clone() + &plant,
                _ => plant.clone(),
            };
            as_nobody(&env, test, &script);
            let before = last_id(&env);
            let out = run(&mut env, action);
            let what = format!(
                "{} on {round} files, then {action:?}",
                match carrier {
                    Carrier::Xattr => "xattr",
                    Carrier::Rsrc => "resource file",
                }
            );
            let counter = last_id(&env);
            // (A restore without the live desktop moves the counter --id-gap on, by design.)
            let limit = match action {
                Action::RestoreWithoutDesktop => before + deskd_backup::DEFAULT_ID_GAP + 1000,
                _ => SANE,
            };
            if counter >= limit {
                problems.push(format!("{what}: the counter jumped {before} -> {counter}"));
            }
            if has_id(&env, FAR) {
                problems.push(format!("{what}: ID {FAR} was given"));
            }
            if id_named(&env, "root.txt") != Some(root_id) {
                problems.push(format!("{what}: root's file lost its ID {root_id}"));
            }
            if id_named(&env, "taken") == Some(root_id) {
                problems.push(format!("{what}: nobody's file took root's ID {root_id}"));
            }
            // With the desktop lost, a dead ID below the counter cannot be told from a live
            // one (docs/security.md says so); everywhere else it must stay dead.
            if action != Action::FreshWithoutDesktop && has_id(&env, dead_id) {
                problems.push(format!("{what}: the dead ID {dead_id} was given"));
            }
            // Reported: rejected, or (when a resource file root wrote gives the ID first) a
            // mirror to be rewritten.
            if matches!(action, Action::OnlineScan | Action::OfflineScan)
                && !out.contains(&format!("claims ID {FAR}"))
                && !out.contains(&format!("says ID {FAR}"))
            {
                problems.push(format!("{what}: -s does not report the claim:\n{out}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn planted_xattr_mirrors_move_no_counter_and_take_no_id() {
    if nobody_side() {
        return;
    }
    claims_survive_no_admin_action(
        "planted_xattr_mirrors_move_no_counter_and_take_no_id",
        Carrier::Xattr,
    );
}

#[test]
fn planted_resource_files_move_no_counter_and_take_no_id() {
    if nobody_side() {
        return;
    }
    claims_survive_no_admin_action(
        "planted_resource_files_move_no_counter_and_take_no_id",
        Carrier::Rsrc,
    );
}

#[test]
fn trusted_restores_and_plain_moves_keep_their_ids() {
    if nobody_side() {
        return;
    }
    let Scene { mut env, .. } = scene();
    // Root restores a file-level backup with --keep-ids: the old ID comes back.
    env.dt_ok(&[b"mkdir", b"vol/public/job"]);
    env.dt_ok(&[b"touch", b"vol/public/job/page"]);
    let page_id = env.id_of(&env.path("vol/public/job/page"));
    // A file-level backup, as tar makes it: the data and its .rsrc folders.
    let backup = env.path("tar-backup");
    std::fs::create_dir(&backup).unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(env.path("vol/public/job"))
        .arg(&backup)
        .status()
        .unwrap();
    assert!(status.success());
    env.dt_ok(&[b"rm", b"-r", b"vol/public/job"]);
    assert!(!has_id(&env, page_id));
    env.dt_ok(&[
        b"cp",
        b"-R",
        b"--keep-ids",
        backup.join("job").as_os_str().as_encoded_bytes(),
        b"vol/public/job",
    ]);
    assert_eq!(env.id_of(&env.path("vol/public/job/page")), page_id);

    // nobody's own file, moved by a plain mv (no dt): it keeps its ID through its mirror
    // (the desktop's row is the same inode), online and offline.
    let made = dt_as_nobody(&env, &[b"touch", b"vol/nobodys/moved"]);
    assert!(made.status.success(), "{}", stderr(&made));
    let moved_id = id_named(&env, "moved").unwrap();
    std::fs::create_dir(env.path("vol/nobodys/sub")).unwrap();
    std::os::unix::fs::chown(env.path("vol/nobodys/sub"), Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::rename(
        env.path("vol/nobodys/moved"),
        env.path("vol/nobodys/sub/moved"),
    )
    .unwrap();
    // ...and a cp -a copy carrying the mirror gets a new ID (nobody copies its own file).
    let copied = env
        .as_user(
            NOBODY,
            "/bin/cp",
            &[
                b"-a",
                env.path("vol/nobodys/sub/moved")
                    .as_os_str()
                    .as_encoded_bytes(),
                env.path("vol/nobodys/copy-a")
                    .as_os_str()
                    .as_encoded_bytes(),
            ],
            &[],
        )
        .unwrap();
    assert!(copied.status.success(), "cp -a: {}", stderr(&copied));
    assert_eq!(
        deskd_volume::read_id_xattr(&env.path("vol/nobodys/copy-a")),
        Some(moved_id),
        "cp -a did not copy the mirror (the case below would prove nothing)"
    );
    env.deskd_ok(&["rebuild", "vol"]);
    assert_eq!(id_named(&env, "moved"), Some(moved_id));
    let copy_id = id_named(&env, "copy-a").unwrap();
    assert_ne!(copy_id, moved_id);
    env.term();
    env.deskd_ok(&["rebuild", "-f", "vol"]);
    assert_eq!(id_named(&env, "moved"), Some(moved_id));
    assert_eq!(id_named(&env, "copy-a"), Some(copy_id));

    // nobody's file replaced by save-by-rename at the same path keeps its ID through the
    // resource file (the desktop has that ID at that path).
    env.serve_unwatched(&["vol"]);
    let made = dt_as_nobody(&env, &[b"touch", b"vol/nobodys/doc"]);
    assert!(made.status.success(), "{}", stderr(&made));
    let doc_id = id_named(&env, "doc").unwrap();
    std::fs::write(env.path("vol/nobodys/doc.new"), b"saved").unwrap();
    std::fs::rename(env.path("vol/nobodys/doc.new"), env.path("vol/nobodys/doc")).unwrap();
    std::os::unix::fs::chown(env.path("vol/nobodys/doc"), Some(NOBODY), Some(NOBODY)).unwrap();
    env.term();
    env.deskd_ok(&["rebuild", "vol"]);
    assert_eq!(id_named(&env, "doc"), Some(doc_id));
}

#[test]
fn status_warns_long_before_the_id_space_runs_out() {
    if nobody_side() {
        return;
    }
    let Scene { mut env, .. } = scene();
    let status = env.deskd_ok(&["status", "--volume", "vol"]);
    assert!(!status.contains("WARNING"), "{status}");
    // Seed the counter on the stopped server's desktop: 95% of the space used.
    env.term();
    let seeded = 4_080_218_931u32;
    sqlite3(
        &desktop(&env),
        &format!("UPDATE meta SET value = {seeded} WHERE key = 'last_id'"),
    );
    env.serve_unwatched(&["vol"]);
    assert!(
        env.log_text().contains("ID space nearly exhausted"),
        "no warning in the log at open: {}",
        env.log_text()
    );
    let status = env.deskd_ok(&["status", "--volume", "vol"]);
    assert!(
        status.contains("WARNING:") && status.contains("ID space nearly exhausted"),
        "{status}"
    );
    let json = env.deskd_ok(&["status", "--json", "--volume", "vol"]);
    let v: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert!(v["id_space_warning"]
        .as_str()
        .is_some_and(|w| w.contains("nearly exhausted")));
    assert!(v["ids_left"].as_u64().unwrap() < 300_000_000);
    // Creates still work meanwhile.
    env.dt_ok(&[b"touch", b"vol/public/still-works"]);
    assert_eq!(env.id_of(&env.path("vol/public/still-works")), seeded + 1);
}

/// Serve `vol` on the Unix socket and on a TCP port (token `token`, the config `config` if
/// any); returns the TCP address from the server's log.
fn serve_tcp(env: &mut Env, token: &Path, config: Option<&Path>) -> String {
    let vol = env.path("vol").display().to_string();
    let token = token.display().to_string();
    // Not watched (as every server of this file): the hints under test would find their
    // files registered by the watcher first.
    let unwatched = env.path("unwatched-tcp.toml");
    std::fs::write(&unwatched, "[defaults]\nwatch = \"off\"\n").unwrap();
    let config = Some(config.unwrap_or(&unwatched).display().to_string());
    let mut args = vec!["--listen", "127.0.0.1:0", "--token-file", &token];
    if let Some(c) = &config {
        args.extend(["--config", c.as_str()]);
    }
    args.push(&vol);
    env.start(&args);
    // The listener is logged as it starts, which may be just after the server is ready.
    env.wait_for_log("listening on tcp ", 1);
    let text = env.log_text();
    text.split("listening on tcp ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no TCP listener in the log: {text}"))
        .to_owned()
}

/// Register `rel` over TCP with `hint`; the ID given.
fn add_over_tcp(env: &Env, addr: &str, token: &[u8], rel: &str, hint: u32) -> u32 {
    std::fs::write(env.path("vol").join(rel), b"x").unwrap();
    let mut c = deskd_client::Client::connect_to(
        &deskd_proto::transport::Endpoint::Tcp(addr.to_owned()),
        Some(token),
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    let vol = c.open_volume(&env.path("vol")).unwrap().vol;
    match c
        .call(deskd_client::Request::AddPath {
            vol,
            path: rel.as_bytes().to_vec(),
            hint: Some(hint),
            type_code: None,
            creator: None,
            carried: None,
        })
        .unwrap()
    {
        deskd_client::Response::Object(o) => o.id,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn tcp_token_holders_choose_ids_only_with_tcp_admin() {
    if nobody_side() {
        return;
    }
    const TOKEN: &[u8] = b"k3Jq9vX2pL7sW0eRt5YzA8bN1cM4dF6h\n";
    let mut env = Env::new(&["vol"]);
    let token = env.path("token");
    std::fs::write(&token, TOKEN).unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // A token holder is a service acting for remote users: its hint is a user's.
    let addr = serve_tcp(&mut env, &token, None);
    let given = add_over_tcp(
        &env,
        &addr,
        TOKEN.trim_ascii_end(),
        "remote",
        deskd_db::LAST_USABLE_ID,
    );
    assert!(given < SANE, "a TCP hint was honoured: ID {given}");
    assert!(last_id(&env) < SANE);
    env.term();
    // With tcp_admin = true the token is an admin's, and its hint is honoured.
    let config = env.path("deskd.toml");
    std::fs::write(
        &config,
        "[server]\ntcp_admin = true\n[defaults]\nwatch = \"off\"\n",
    )
    .unwrap();
    let addr = serve_tcp(&mut env, &token, Some(&config));
    assert_eq!(
        add_over_tcp(&env, &addr, TOKEN.trim_ascii_end(), "admin", 50_000),
        50_000
    );
}

#[test]
fn trust_ids_is_the_admins_way_to_accept_every_claim_offline() {
    if nobody_side() {
        return;
    }
    let Scene {
        mut env, dead_id, ..
    } = scene();
    let file = env.path("vol/nobodys/restored").display().to_string();
    as_nobody(
        &env,
        "trust_ids_is_the_admins_way_to_accept_every_claim_offline",
        &format!("write {file};xattr {file} {dead_id}"),
    );
    // Online it is refused: the server's rebuild has no such switch.
    let online = env.deskd(&["rebuild", "--trust-ids", "vol"]);
    assert_eq!(online.status.code(), Some(2), "{}", stderr(&online));
    assert!(stderr(&online).contains("offline only"));
    env.term();
    env.deskd_ok(&["rebuild", "vol"]);
    assert_ne!(id_named(&env, "restored"), Some(dead_id));
    // The admin vouches for the files (say, just restored from tar): the claim is taken.
    let file = env.path("vol/nobodys/restored");
    xattr::set(&file, deskd_volume::ID_XATTR, &dead_id.to_be_bytes()).unwrap();
    std::fs::remove_file(env.path("vol/nobodys/.rsrc/restored")).unwrap();
    env.deskd_ok(&["rebuild", "--trust-ids", "vol"]);
    assert_eq!(id_named(&env, "restored"), Some(dead_id));
}

#[test]
fn the_volume_owner_may_choose_ids() {
    if nobody_side() {
        return;
    }
    // A volume nobody owns: nobody is its administrator, so its hint is honoured.
    let mut env = Env::new(&["vol"]);
    std::os::unix::fs::chown(env.path("vol"), Some(NOBODY), Some(NOBODY)).unwrap();
    env.serve_unwatched(&["vol"]);
    let vol = env.path("vol");
    let file = vol.join("owned").display().to_string();
    let out = as_nobody(
        &env,
        "the_volume_owner_may_choose_ids",
        &format!("write {file};add {} owned 70000", vol.display()),
    );
    assert_eq!(probe_id(&out, "owned"), "70000");
    // And a rebuild takes the owner's mirror as written.
    let other = vol.join("mirrored").display().to_string();
    as_nobody(
        &env,
        "the_volume_owner_may_choose_ids",
        &format!("write {other};xattr {other} 80000"),
    );
    env.term();
    env.deskd_ok(&["rebuild", "vol"]);
    assert_eq!(id_named(&env, "mirrored"), Some(80_000));
}

#[test]
fn afpd_cached_cnids_reach_deskd_as_no_hint() {
    if nobody_side() {
        return;
    }
    use deskd_netatalk::wire::{self, op, res, Handshake, Request};
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    let Scene {
        env,
        root_id,
        dead_id,
    } = scene();
    // `deskd netatalk`, which connects as root, on a port of its choosing.
    let bridge = Bridge::start(&env, &[]);
    let mut s = std::net::TcpStream::connect(&bridge.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(&wire::encode_handshake(&Handshake {
        volume_name: b"Public".to_vec(),
        volume_path: env.path("vol").as_os_str().as_encoded_bytes().to_vec(),
        user: b"nobody".to_vec(),
    }))
    .unwrap();
    let nobodys = id_named(&env, "nobodys").unwrap();
    // afpd sends the CNID it read from the file's AppleDouble metadata, which nobody wrote.
    let mut given = Vec::new();
    for (name, cached) in [
        ("afp-far", deskd_db::LAST_USABLE_ID),
        ("afp-dead", dead_id),
        ("afp-taken", root_id),
    ] {
        let path = env.path("vol/nobodys").join(name);
        std::fs::write(&path, b"x").unwrap();
        let m = std::fs::metadata(&path).unwrap();
        s.write_all(&wire::encode_request(&Request {
            op: op::ADD,
            cnid: cached,
            dev: m.dev(),
            ino: m.ino(),
            kind: 0,
            did: nobodys,
            name: name.as_bytes().to_vec(),
        }))
        .unwrap();
        let reply = wire::read_reply(&mut s).unwrap();
        assert_eq!(reply.result, res::OK, "{name}");
        given.push((name, cached, reply.cnid));
    }
    drop(bridge);
    for (name, cached, id) in given {
        assert_ne!(id, cached, "{name}: afpd's cached CNID was taken");
        assert!(id < SANE, "{name}: ID {id}");
    }
    assert!(last_id(&env) < SANE);
    assert!(!has_id(&env, dead_id));
}
