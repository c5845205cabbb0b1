//! Hostile-user tests, part `oracle` (issue 21, items 3 and 4): user `nobody` asks the server
//! about objects inside a root-owned 0700 folder and must learn nothing — every request kind
//! answers them exactly as it answers an ID or a name that does not exist — and races a
//! directory against a symlink into that folder (`renameat2(RENAME_EXCHANGE)`) while
//! registering names under it, which must never reach inside.
//!
//! The requests come straight from a client process running as nobody (no `dt` in between,
//! whose own file operations would fail first): this test binary, run again as nobody with
//! `DESKD_ORACLE_ROLE` set, as tests/access.rs does.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use deskd_proto::{FindMode, Request, Response};

/// An ID no object has.
const MISSING: u32 = 999_999;

/// The names inside the vault; no reply to nobody may contain any of them.
const HIDDEN_NAMES: &[&str] = &["vault", "inner", "secret-name", "top-secret", "sub"];

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown_nobody(path: &Path) {
    std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
}

fn role() -> Option<String> {
    std::env::var("DESKD_ORACLE_ROLE").ok()
}

fn var(name: &str) -> String {
    std::env::var(format!("DESKD_ORACLE_{name}")).unwrap()
}

fn id(name: &str) -> u32 {
    var(name).parse().unwrap()
}

fn connect() -> (deskd_client::Client, u32) {
    let socket = std::env::var("DESKD_SOCKET").unwrap();
    let mut c = deskd_client::Client::connect(Path::new(&socket), Duration::from_secs(10)).unwrap();
    let vol = c.volumes().unwrap()[0].vol;
    (c, vol)
}

/// A reply as raw as the client gives it: the error's code and message, or the response.
fn raw(answer: deskd_client::Result<Response>) -> String {
    match answer {
        Ok(r) => format!("ok {r:?}"),
        Err(deskd_client::ClientError::Server(e)) => format!("{:?} {}", e.code, e.message),
        Err(other) => format!("client error {other}"),
    }
}

/// Run this test again as nobody in `role`, with `vars` as `DESKD_ORACLE_<NAME>`.
fn run_as_nobody(env: &Env, test: &str, role: &str, vars: &[(&str, String)]) -> String {
    let mut envs: Vec<(&str, String)> = vec![("DESKD_ORACLE_ROLE", role.to_owned())];
    for (k, v) in vars {
        envs.push((["DESKD_ORACLE_", k].concat().leak(), v.clone()));
    }
    let me = std::env::current_exe().unwrap();
    let args: [&[u8]; 4] = [
        b"--exact",
        test.as_bytes(),
        b"--nocapture",
        b"--test-threads=1",
    ];
    let out = env
        .as_nobody_with(me.to_str().unwrap(), &args, &envs)
        .expect("the hostile tests need root, to act as nobody");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", stderr(&out));
    stdout
}

/// A served volume with a root-owned 0700 `vault` (registered: `vault/inner/secret-name.txt`,
/// `vault/inner/sub/`, `vault/top-secret.txt`; an APPL record of root's for the secret file),
/// an open `public/` and nobody's own `mine/` (with `own.txt`, and `gone.txt`, registered but
/// no longer on disk).
fn volume_with_a_vault() -> Env {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    env.dt_ok(&[
        b"mkdir",
        b"vol/vault",
        b"vol/vault/inner",
        b"vol/vault/inner/sub",
        b"vol/public",
        b"vol/mine",
    ]);
    env.dt_ok(&[
        b"touch",
        b"vol/vault/inner/secret-name.txt",
        b"vol/vault/top-secret.txt",
        b"vol/public/open.txt",
        b"vol/mine/own.txt",
        b"vol/mine/gone.txt",
    ]);
    // Registered, then moved away on disk without telling deskd: a rename's `from`.
    std::fs::remove_file(env.path("vol/mine/gone.txt")).unwrap();
    let secret = env.id_of(&env.path("vol/vault/inner/secret-name.txt"));
    let mut c = env.client();
    let vol = c.volumes().unwrap()[0].vol;
    c.call(Request::ApplAdd {
        vol,
        creator: *b"SECR",
        app_id: secret,
        tag: 7,
    })
    .unwrap();
    c.call(Request::CommentSet {
        vol,
        id: secret,
        text: b"root's note".to_vec(),
    })
    .unwrap();
    chmod(&env.path("vol/vault"), 0o700);
    for rel in ["vol/mine", "vol/mine/own.txt", "vol/mine/.rsrc"] {
        if env.path(rel).exists() {
            chown_nobody(&env.path(rel));
        }
    }
    if let Ok(entries) = std::fs::read_dir(env.path("vol/mine/.rsrc")) {
        for e in entries {
            chown_nobody(&e.unwrap().path());
        }
    }
    env
}

/// One probe's requests: the same request about each of `of` (a hidden object, then missing
/// ones), in that order.
fn alike<T: Copy>(of: &[T], request: impl Fn(T) -> Request) -> Vec<Request> {
    of.iter().map(|&x| request(x)).collect()
}

/// The probes: for each request kind that names an object, the request about a hidden object
/// and the same request about a missing one (or several), whose replies must be identical.
fn probes(vol: u32) -> Vec<(&'static str, Vec<Request>)> {
    let (secret, inner, top, own, mine) =
        (id("SECRET"), id("INNER"), id("TOP"), id("OWN"), id("MINE"));
    let vault = id("VAULT");
    let (dev, ino): (u64, u64) = (var("DEV").parse().unwrap(), var("INO").parse().unwrap());
    let add_path = |path: &[u8]| Request::AddPath {
        vol,
        path: path.to_vec(),
        hint: None,
        type_code: None,
        creator: None,
        carried: None,
    };
    let lookup_path = |path: &[u8]| Request::LookupPath {
        vol,
        path: path.to_vec(),
    };
    let set_info = |id| Request::SetInfo {
        vol,
        id,
        type_code: Some(*b"EVIL"),
        creator: None,
        flags: None,
    };
    let rename_path = |from: &[u8], to: &[u8]| Request::RenamePath {
        vol,
        from: from.to_vec(),
        to: to.to_vec(),
        replace: false,
        hint: None,
    };
    let find = |pattern: &str| Request::Find {
        vol,
        pattern: pattern.to_owned(),
        mode: FindMode::Substring,
        limit: 100,
        after_id: 0,
    };
    vec![
        (
            "Resolve of a file",
            alike(&[secret, MISSING], |id| Request::Resolve { vol, id }),
        ),
        (
            "Resolve of a folder",
            alike(&[inner, MISSING], |id| Request::Resolve { vol, id }),
        ),
        (
            "Resolve of a file at the top of the vault",
            alike(&[top, MISSING], |id| Request::Resolve { vol, id }),
        ),
        (
            "Children",
            alike(&[inner, MISSING], |dir| Request::Children { vol, dir }),
        ),
        (
            "Lookup",
            vec![
                Request::Lookup {
                    vol,
                    parent: inner,
                    name: b"secret-name.txt".to_vec(),
                },
                Request::Lookup {
                    vol,
                    parent: inner,
                    name: b"no-such.txt".to_vec(),
                },
                Request::Lookup {
                    vol,
                    parent: MISSING,
                    name: b"secret-name.txt".to_vec(),
                },
            ],
        ),
        (
            // The vault itself is in nobody's listing of the root; what is in it is not.
            "Lookup in the vault itself",
            vec![
                Request::Lookup {
                    vol,
                    parent: vault,
                    name: b"top-secret.txt".to_vec(),
                },
                Request::Lookup {
                    vol,
                    parent: vault,
                    name: b"no-such.txt".to_vec(),
                },
                Request::Lookup {
                    vol,
                    parent: MISSING,
                    name: b"top-secret.txt".to_vec(),
                },
            ],
        ),
        (
            "Add in the vault itself",
            alike(&[vault, MISSING], |parent| Request::Add {
                vol,
                parent,
                name: b"top-secret.txt".to_vec(),
                dev,
                ino,
                hint: None,
                type_code: None,
                creator: None,
                carried: None,
            }),
        ),
        (
            "LookupPath",
            vec![
                lookup_path(b"vault/inner/secret-name.txt"),
                lookup_path(b"vault/inner/no-such.txt"),
                lookup_path(b"vault/no-such/secret-name.txt"),
                lookup_path(b"no-such/inner/secret-name.txt"),
            ],
        ),
        (
            "AddPath",
            vec![
                add_path(b"vault/inner/secret-name.txt"),
                add_path(b"vault/inner/no-such.txt"),
                add_path(b"no-such/inner/secret-name.txt"),
            ],
        ),
        (
            "Add",
            vec![
                Request::Add {
                    vol,
                    parent: inner,
                    name: b"secret-name.txt".to_vec(),
                    dev,
                    ino,
                    hint: None,
                    type_code: None,
                    creator: None,
                    carried: None,
                },
                Request::Add {
                    vol,
                    parent: inner,
                    name: b"no-such.txt".to_vec(),
                    dev,
                    ino: ino + 1_000_000,
                    hint: None,
                    type_code: None,
                    creator: None,
                    carried: None,
                },
                Request::Add {
                    vol,
                    parent: MISSING,
                    name: b"secret-name.txt".to_vec(),
                    dev,
                    ino,
                    hint: None,
                    type_code: None,
                    creator: None,
                    carried: None,
                },
            ],
        ),
        ("SetInfo", vec![set_info(secret), set_info(MISSING)]),
        (
            "CommentGet",
            alike(&[secret, MISSING], |id| Request::CommentGet { vol, id }),
        ),
        (
            "CommentSet",
            alike(&[secret, MISSING], |id| Request::CommentSet {
                vol,
                id,
                text: b"defaced".to_vec(),
            }),
        ),
        (
            "CommentRemove",
            alike(&[secret, MISSING], |id| Request::CommentRemove { vol, id }),
        ),
        (
            "ApplAdd",
            alike(&[secret, MISSING], |app_id| Request::ApplAdd {
                vol,
                creator: *b"EVIL",
                app_id,
                tag: 0,
            }),
        ),
        (
            "ApplRemove",
            alike(&[secret, MISSING], |app_id| Request::ApplRemove {
                vol,
                creator: *b"SECR",
                app_id,
            }),
        ),
        (
            "ApplGet",
            alike(&[*b"SECR", *b"NONE"], |creator| Request::ApplGet {
                vol,
                creator,
            }),
        ),
        (
            "Delete",
            alike(&[secret, MISSING], |id| Request::Delete {
                vol,
                id,
                recursive: false,
            }),
        ),
        (
            "DeletePath",
            vec![
                Request::DeletePath {
                    vol,
                    path: b"vault/inner/secret-name.txt".to_vec(),
                    recursive: false,
                },
                Request::DeletePath {
                    vol,
                    path: b"vault/inner/no-such.txt".to_vec(),
                    recursive: false,
                },
                Request::DeletePath {
                    vol,
                    path: b"no-such/inner/secret-name.txt".to_vec(),
                    recursive: false,
                },
            ],
        ),
        (
            "Rename of a hidden object",
            alike(&[secret, MISSING], |id| Request::Rename {
                vol,
                id,
                new_parent: mine,
                new_name: b"stolen.txt".to_vec(),
                replace: false,
            }),
        ),
        (
            "Rename into a hidden folder",
            alike(&[inner, MISSING], |new_parent| Request::Rename {
                vol,
                id: own,
                new_parent,
                new_name: b"secret-name.txt".to_vec(),
                replace: false,
            }),
        ),
        (
            "RenamePath from a hidden path",
            vec![
                rename_path(b"vault/inner/secret-name.txt", b"mine/moved.txt"),
                rename_path(b"vault/inner/no-such.txt", b"mine/moved.txt"),
                rename_path(b"no-such/inner/secret-name.txt", b"mine/moved.txt"),
            ],
        ),
        (
            "RenamePath to a hidden path",
            vec![
                rename_path(b"mine/gone.txt", b"vault/inner/secret-name.txt"),
                rename_path(b"mine/gone.txt", b"vault/inner/no-such.txt"),
                rename_path(b"mine/gone.txt", b"no-such/inner/secret-name.txt"),
            ],
        ),
        (
            // The paths through the vault: resolvable only if the names in it exist.
            "OpenVolume",
            vec![
                Request::OpenVolume {
                    root: format!("{}/vault/inner/sub/../../..", var("VOLUME")).into_bytes(),
                },
                Request::OpenVolume {
                    root: format!("{}/vault/no-such/sub/../../..", var("VOLUME")).into_bytes(),
                },
            ],
        ),
        (
            "Find",
            vec![find("secret-name"), find("no-such-name-at-all")],
        ),
        (
            "Find of a folder",
            vec![find("inner"), find("no-such-folder")],
        ),
    ]
}

/// The probe half: every request of [`probes`], as nobody; one line per probe.
fn probe_as_nobody() {
    let (mut c, vol) = connect();
    // Made by the probe, so that the renames have something of nobody's to land on.
    std::fs::write(Path::new(&var("VOLUME")).join("mine/moved.txt"), "nobody's").unwrap();
    for (kind, requests) in probes(vol) {
        let answers: Vec<String> = requests.into_iter().map(|r| raw(c.call(r))).collect();
        println!("PROBE {kind}\t{}", answers.join("\t"));
    }
}

#[test]
fn every_request_kind_answers_a_hidden_object_as_a_missing_one() {
    if role().as_deref() == Some("probe") {
        return probe_as_nobody();
    }
    let env = volume_with_a_vault();
    let vol_root = env.path("vol");
    let secret_meta = std::fs::metadata(env.path("vol/vault/inner/secret-name.txt")).unwrap();
    let vars: Vec<(&str, String)> = vec![
        ("SECRET", "vol/vault/inner/secret-name.txt"),
        ("INNER", "vol/vault/inner"),
        ("TOP", "vol/vault/top-secret.txt"),
        ("OWN", "vol/mine/own.txt"),
        ("MINE", "vol/mine"),
        ("VAULT", "vol/vault"),
    ]
    .into_iter()
    .map(|(k, rel)| (k, env.id_of(&env.path(rel)).to_string()))
    .chain([
        ("DEV", secret_meta.dev().to_string()),
        ("INO", secret_meta.ino().to_string()),
        ("VOLUME", vol_root.to_str().unwrap().to_owned()),
    ])
    .collect();
    let out = run_as_nobody(
        &env,
        "oracle::every_request_kind_answers_a_hidden_object_as_a_missing_one",
        "probe",
        &vars,
    );
    let lines: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split("PROBE ").nth(1))
        .collect();
    assert_eq!(lines.len(), 26, "{out}");
    eprintln!("{}", lines.join("\n"));
    let hidden_ids: Vec<&String> = vars[..3].iter().map(|(_, v)| v).collect();
    assert_probes_tell_nothing(&lines, HIDDEN_NAMES, &vol_root, &hidden_ids);
    // Nothing the probes asked for changed the vault's records.
    let db = env.path("vol/.Desktop");
    assert_eq!(
        sqlite3(
            &db,
            "SELECT CAST(type AS TEXT) FROM objects WHERE CAST(name AS TEXT) = 'secret-name.txt'"
        )
        .trim(),
        "UNIX"
    );
    assert_eq!(
        sqlite3(&db, "SELECT CAST(text AS TEXT) FROM comments").trim(),
        "root's note"
    );
    assert_eq!(
        sqlite3(&db, "SELECT CAST(creator AS TEXT) FROM appl").trim(),
        "SECR"
    );
    // Root (a trusted peer) still hears the details.
    let mut c = env.client();
    let vol = c.volumes().unwrap()[0].vol;
    let missing = raw(c.call(Request::Resolve { vol, id: MISSING }));
    assert!(missing.contains(&MISSING.to_string()), "{missing}");
}

/// How long the symlink race runs (`DESKD_ORACLE_RACE_SECS` shortens it locally; CI runs
/// the full 30 seconds).
fn race_duration() -> Duration {
    let secs = match std::env::var("DESKD_ORACLE_RACE_SECS") {
        Ok(v) if std::env::var_os("CI").is_none() => v.parse().unwrap(),
        _ => 30.0,
    };
    Duration::from_secs_f64(secs)
}

/// The swapping half: exchange `mine/d` (a directory) and `mine/l` (a symlink into the vault)
/// as fast as possible until the stop file appears.
fn swap_as_nobody() {
    let mine = std::path::PathBuf::from(var("MINE_PATH"));
    let stop = mine.join("stop");
    let (d, l) = (mine.join("d"), mine.join("l"));
    let mut swaps = 0u64;
    while !stop.exists() {
        for _ in 0..1000 {
            exchange(&d, &l);
            swaps += 1;
        }
    }
    println!("SWAPS {swaps}");
}

/// `renameat2(d, l, RENAME_EXCHANGE)`.
fn exchange(a: &Path, b: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::CString::new(a.as_os_str().as_bytes()).unwrap();
    let b = std::ffi::CString::new(b.as_os_str().as_bytes()).unwrap();
    // SAFETY: two valid NUL-terminated paths; renameat2 only reads them.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(rc, 0, "renameat2: {}", std::io::Error::last_os_error());
}

/// The registering half: AddPath of names under `mine/d` (pipelined, 16 at a time) for the
/// length of the race; prints every reply that shows anything of the vault.
fn register_as_nobody() {
    let (mut c, vol) = connect();
    let hidden: Vec<u32> = var("HIDDEN_IDS")
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let paths: [&[u8]; 5] = [
        b"mine/d",
        b"mine/d/inner/secret-name.txt",
        b"mine/d/inner",
        b"mine/d/inner/sub",
        b"mine/d/top-secret.txt",
    ];
    let until = Instant::now() + Duration::from_secs_f64(var("SECS").parse().unwrap());
    let (mut sent, mut ok) = (0u64, 0u64);
    while Instant::now() < until {
        let mut ids = Vec::new();
        for _ in 0..4 {
            for path in paths {
                ids.push(
                    c.send(Request::AddPath {
                        vol,
                        path: path.to_vec(),
                        hint: None,
                        type_code: None,
                        creator: None,
                        carried: None,
                    })
                    .unwrap(),
                );
            }
        }
        c.flush().unwrap();
        for id in ids {
            sent += 1;
            let answer = c.wait(id);
            if let Ok(Response::Object(o)) = &answer {
                ok += 1;
                let path = String::from_utf8_lossy(o.path.as_deref().unwrap_or_default());
                if hidden.contains(&o.id) || path.starts_with("vault") {
                    println!("LEAK {o:?}");
                }
            }
            // The requests never say "vault": any reply that does shows a path inside it.
            let shown = raw(answer);
            if shown.contains("vault") {
                println!("LEAK {shown}");
            }
        }
    }
    println!("SENT {sent} OK {ok}");
}

#[test]
fn a_symlink_swapped_in_during_registration_never_leads_inside() {
    match role().as_deref() {
        Some("swap") => return swap_as_nobody(),
        Some("register") => return register_as_nobody(),
        _ => {}
    }
    let env = volume_with_a_vault();
    // nobody's decoy: mine/d/inner/sub, a real tree shaped like the vault's (so a check made
    // on it passes), and mine/l, a symlink into the vault.
    let mine = env.path("vol/mine");
    std::fs::create_dir_all(mine.join("d/inner/sub")).unwrap();
    for p in ["d", "d/inner", "d/inner/sub"] {
        chown_nobody(&mine.join(p));
    }
    std::os::unix::fs::symlink(env.path("vol/vault"), mine.join("l")).unwrap();
    std::os::unix::fs::lchown(mine.join("l"), Some(65534), Some(65534)).unwrap();
    let link_ino = std::fs::symlink_metadata(mine.join("l")).unwrap().ino();
    let hidden: Vec<String> = [
        "vol/vault",
        "vol/vault/inner",
        "vol/vault/inner/sub",
        "vol/vault/inner/secret-name.txt",
        "vol/vault/top-secret.txt",
    ]
    .iter()
    .map(|rel| env.id_of(&env.path(rel)).to_string())
    .collect();
    let secs = race_duration();
    let vars = vec![
        ("MINE_PATH", mine.to_str().unwrap().to_owned()),
        ("HIDDEN_IDS", hidden.join(",")),
        ("SECS", secs.as_secs_f64().to_string()),
    ];
    let test = "oracle::a_symlink_swapped_in_during_registration_never_leads_inside";
    // Linked for nobody once, before the two runs start side by side.
    env.linked_for_others(std::env::current_exe().unwrap().to_str().unwrap());
    // What the desktop says while the race runs, read back to back with sqlite3 (a bad record
    // may be overwritten again before the end): dir rows with the symlink's inode, and rows
    // with an inode of the vault's (exactly its own 5 objects).
    let db = env.path("vol/.Desktop");
    let vault_inos: Vec<String> = [
        "vault",
        "vault/inner",
        "vault/inner/sub",
        "vault/inner/secret-name.txt",
        "vault/top-secret.txt",
    ]
    .iter()
    .map(|rel| {
        let m = std::fs::symlink_metadata(env.path("vol").join(rel)).unwrap();
        m.ino().to_string()
    })
    .collect();
    let census = format!(
        "SELECT (SELECT count(*) FROM objects WHERE kind = 1 AND ino = {link_ino}) || ' ' || \
         (SELECT count(*) FROM objects WHERE ino IN ({}))",
        vault_inos.join(",")
    );
    let stop = mine.join("stop");
    let (out, seen) = std::thread::scope(|s| {
        let swapper = s.spawn(|| run_as_nobody(&env, test, "swap", &vars));
        let watcher = s.spawn(|| {
            let mut seen = std::collections::BTreeMap::new();
            while !stop.exists() {
                *seen
                    .entry(sqlite3(&db, &census).trim().to_owned())
                    .or_insert(0) += 1;
            }
            seen
        });
        let registered = run_as_nobody(&env, test, "register", &vars);
        std::fs::write(&stop, "").unwrap();
        let swapped = swapper.join().unwrap();
        (format!("{registered}{swapped}"), watcher.join().unwrap())
    });
    eprintln!("desktop census during the race (symlink-inode dirs, vault-inode rows): {seen:?}");
    assert!(
        seen.keys().all(|k| k == "0 5"),
        "the desktop recorded the symlink as a directory, or a vault object twice: {seen:?}"
    );
    assert!(seen.values().sum::<u32>() > 10, "{seen:?}");
    eprintln!(
        "{}",
        out.lines()
            .filter(|l| !l.contains("LEAK"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let leaks: Vec<&str> = out.lines().filter(|l| l.contains("LEAK")).collect();
    assert!(
        leaks.is_empty(),
        "replies showed the vault:\n{}",
        leaks.join("\n")
    );
    let count = |tag: &str| -> u64 {
        out.lines()
            .find_map(|l| l.split(tag).nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {tag} in:\n{out}"))
            .parse()
            .unwrap()
    };
    // The race really ran: many swaps, many registrations, some of them of nobody's own tree.
    assert!(count("SWAPS ") > 1000, "{out}");
    assert!(count("SENT ") > 100, "{out}");
    assert!(count(" OK ") > 0, "no registration ever succeeded:\n{out}");
    // And at the end: nothing recorded is the symlink dressed as a directory, and nothing
    // under nobody's names is an object of the vault.
    assert_eq!(
        sqlite3(
            &db,
            &format!("SELECT count(*) FROM objects WHERE kind = 1 AND ino = {link_ino}")
        )
        .trim(),
        "0"
    );
    for rel in [
        "vault/inner",
        "vault/inner/sub",
        "vault/inner/secret-name.txt",
    ] {
        let ino = std::fs::symlink_metadata(env.path("vol").join(rel))
            .unwrap()
            .ino();
        assert_eq!(
            sqlite3(
                &db,
                &format!("SELECT count(*) FROM objects WHERE ino = {ino}")
            )
            .trim(),
            "1",
            "{rel} is recorded twice"
        );
    }
}

/// A failed online rebuild's reason can name a path inside a folder nobody may list (here: the
/// volume found inside the closed folder); `deskd status` tells nobody only that it failed.
#[test]
fn status_tells_nobody_no_hidden_path_of_a_failed_rebuild() {
    if role().is_some() {
        return;
    }
    let mut env = Env::new(&["vol/vault/inner-volume"]);
    let (vol, vault) = (env.path("vol"), env.path("vol/vault"));
    let inner = env.path("vol/vault/inner-volume");
    let ok = |out: std::process::Output| assert!(out.status.success(), "{}", stderr(&out));
    ok(env.deskd(&["rebuild", "-f", vol.to_str().unwrap()]));
    ok(env.deskd(&["rebuild", "-f", "--nested", inner.to_str().unwrap()]));
    chmod(&vault, 0o700);
    env.serve(&["vol"]);
    // Root's online rebuild meets the inner volume's desktop and stops, saying where.
    let out = env.deskd(&["rebuild", vol.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("inner-volume"), "{}", stderr(&out));
    let root_sees = String::from_utf8_lossy(&env.deskd(&["status", "--json"]).stdout).into_owned();
    assert!(root_sees.contains("inner-volume"), "{root_sees}");

    let out = env
        .as_nobody(DESKD, &[b"status", b"--json"])
        .expect("needs root to run as nobody");
    assert!(out.status.success(), "{}", stderr(&out));
    let nobody_sees = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(nobody_sees.contains("failed"), "{nobody_sees}");
    for hidden in ["inner-volume", "vault"] {
        assert!(!nobody_sees.contains(hidden), "{hidden}: {nobody_sees}");
    }
}

/// The names of a search-only folder's contents; no reply to nobody may contain them.
const UNLISTED_NAMES: &[&str] = &["hiddenname", "deep", "readme", "secret.txt"];

/// [`raw`], with the names and paths of the objects in it also written out as text (the
/// response's own form shows them as bytes).
fn shown(answer: deskd_client::Result<Response>) -> String {
    let objects: Vec<deskd_proto::ObjectInfo> = match &answer {
        Ok(Response::Object(o)) | Ok(Response::MaybeObject(Some(o))) => vec![o.clone()],
        Ok(Response::Objects(os)) => os.clone(),
        _ => Vec::new(),
    };
    let mut out = raw(answer);
    for o in objects {
        out.push_str(&format!(
            " [{} {}]",
            String::from_utf8_lossy(&o.name),
            String::from_utf8_lossy(&o.path.unwrap_or_default())
        ));
    }
    out
}

/// The probe half of [`names_in_a_search_only_folder_are_not_shown`], as nobody: for each
/// request kind, the request about an object under `a/hiddenname` and the same about a
/// missing ID, name or path, one line each; then nobody's own box, one `OWN` line each.
fn probe_unlisted_as_nobody() {
    let (mut c, vol) = connect();
    let (hidden, deep, readme, secret) = (id("HIDDEN"), id("DEEP"), id("README"), id("SECRET"));
    let (dev, ino): (u64, u64) = (var("DEV").parse().unwrap(), var("INO").parse().unwrap());
    let add = |parent: u32, name: &[u8]| Request::Add {
        vol,
        parent,
        name: name.to_vec(),
        dev,
        ino,
        hint: None,
        type_code: None,
        creator: None,
        carried: None,
    };
    let add_path = |path: &[u8]| Request::AddPath {
        vol,
        path: path.to_vec(),
        hint: None,
        type_code: None,
        creator: None,
        carried: None,
    };
    let lookup = |parent: u32, name: &[u8]| Request::Lookup {
        vol,
        parent,
        name: name.to_vec(),
    };
    let lookup_path = |path: &[u8]| Request::LookupPath {
        vol,
        path: path.to_vec(),
    };
    let find = |pattern: &str| Request::Find {
        vol,
        pattern: pattern.to_owned(),
        mode: FindMode::Substring,
        limit: 100,
        after_id: 0,
    };
    let rename = |id: u32, new_parent: u32| Request::Rename {
        vol,
        id,
        new_parent,
        new_name: b"renamed".to_vec(),
        replace: false,
    };
    let set_info = |id| Request::SetInfo {
        vol,
        id,
        type_code: Some(*b"EVIL"),
        creator: None,
        flags: None,
    };
    let own = id("OWN");
    let probes: Vec<(&str, Vec<Request>)> = vec![
        (
            "Resolve of a file in the unlisted folder",
            alike(&[readme, MISSING], |id| Request::Resolve { vol, id }),
        ),
        (
            "Resolve of a file deeper",
            alike(&[secret, MISSING], |id| Request::Resolve { vol, id }),
        ),
        (
            "Resolve of the folders",
            alike(&[deep, hidden, MISSING], |id| Request::Resolve { vol, id }),
        ),
        (
            "Children",
            alike(&[hidden, deep, MISSING], |dir| Request::Children {
                vol,
                dir,
            }),
        ),
        (
            "Lookup",
            vec![
                lookup(hidden, b"readme"),
                lookup(deep, b"secret.txt"),
                lookup(MISSING, b"readme"),
            ],
        ),
        (
            "LookupPath",
            vec![
                lookup_path(b"a/hiddenname/readme"),
                lookup_path(b"a/hiddenname/deep/secret.txt"),
                lookup_path(b"a/no-such/readme"),
            ],
        ),
        (
            "Find",
            vec![find("readme"), find("secret.txt"), find("no-such-name")],
        ),
        (
            "Find of the folders",
            vec![find("hiddenname"), find("deep"), find("no-such-folder")],
        ),
        ("Add", vec![add(hidden, b"readme"), add(MISSING, b"readme")]),
        (
            "AddPath",
            vec![
                add_path(b"a/hiddenname/readme"),
                add_path(b"a/hiddenname/deep/secret.txt"),
                add_path(b"a/no-such/readme"),
            ],
        ),
        (
            "Rename by ID",
            vec![rename(readme, ROOT), rename(MISSING, ROOT)],
        ),
        (
            "Rename into the unlisted folder",
            vec![rename(own, hidden), rename(own, MISSING)],
        ),
        (
            "Delete by ID",
            alike(&[readme, MISSING], |id| Request::Delete {
                vol,
                id,
                recursive: false,
            }),
        ),
        (
            "DeletePath",
            vec![
                Request::DeletePath {
                    vol,
                    path: b"a/hiddenname/readme".to_vec(),
                    recursive: false,
                },
                Request::DeletePath {
                    vol,
                    path: b"a/no-such/readme".to_vec(),
                    recursive: false,
                },
            ],
        ),
        ("SetInfo", vec![set_info(readme), set_info(MISSING)]),
        (
            "CommentGet",
            alike(&[readme, MISSING], |id| Request::CommentGet { vol, id }),
        ),
        (
            "CommentSet",
            alike(&[readme, MISSING], |id| Request::CommentSet {
                vol,
                id,
                text: b"x".to_vec(),
            }),
        ),
        (
            "CommentRemove",
            alike(&[readme, MISSING], |id| Request::CommentRemove { vol, id }),
        ),
        (
            "ApplAdd",
            alike(&[readme, MISSING], |app_id| Request::ApplAdd {
                vol,
                creator: *b"EVIL",
                app_id,
                tag: 1,
            }),
        ),
        (
            "ApplGet",
            alike(&[*b"SECR", *b"NONE"], |creator| Request::ApplGet {
                vol,
                creator,
            }),
        ),
    ];
    for (kind, requests) in probes {
        let answers: Vec<String> = requests.into_iter().map(|r| shown(c.call(r))).collect();
        println!("PROBE {kind}\t{}", answers.join("\t"));
    }
    let box_id = id("BOX");
    for (kind, request) in [
        ("Resolve", Request::Resolve { vol, id: own }),
        ("Lookup", lookup(box_id, b"b.txt")),
        ("LookupPath", lookup_path(b"drop/nobodys-box/b.txt")),
        ("Children", Request::Children { vol, dir: box_id }),
        ("Find", find("b.txt")),
    ] {
        println!("OWN {kind}\t{}", shown(c.call(request)));
    }
}

/// The root's ID.
const ROOT: u32 = 2;

#[test]
fn names_in_a_search_only_folder_are_not_shown() {
    if role().as_deref() == Some("unlisted") {
        return probe_unlisted_as_nobody();
    }
    let mut env = Env::new(&["vol"]);
    chmod(env.dir.path(), 0o755);
    env.serve(&["vol"]);
    env.dt_ok(&[
        b"mkdir",
        b"vol/a",
        b"vol/a/hiddenname",
        b"vol/a/hiddenname/deep",
        b"vol/drop",
        b"vol/drop/nobodys-box",
    ]);
    env.dt_ok(&[
        b"touch",
        b"vol/a/hiddenname/readme",
        b"vol/a/hiddenname/deep/secret.txt",
        b"vol/drop/nobodys-box/b.txt",
    ]);
    let secret = env.id_of(&env.path("vol/a/hiddenname/deep/secret.txt"));
    let mut c = env.client();
    let vol = c.volumes().unwrap()[0].vol;
    c.call(Request::ApplAdd {
        vol,
        creator: *b"SECR",
        app_id: secret,
        tag: 7,
    })
    .unwrap();
    // `a` and `drop` may be searched by all and listed by root alone; what is inside may be
    // listed by all. nobody's box in `drop` is its own.
    chmod(&env.path("vol/a"), 0o711);
    chmod(&env.path("vol/drop"), 0o711);
    for rel in ["vol/drop/nobodys-box", "vol/drop/nobodys-box/b.txt"] {
        chown_nobody(&env.path(rel));
    }
    let readme = std::fs::metadata(env.path("vol/a/hiddenname/readme")).unwrap();
    let vars: Vec<(&str, String)> = vec![
        ("HIDDEN", "vol/a/hiddenname"),
        ("DEEP", "vol/a/hiddenname/deep"),
        ("README", "vol/a/hiddenname/readme"),
        ("SECRET", "vol/a/hiddenname/deep/secret.txt"),
        ("OWN", "vol/drop/nobodys-box/b.txt"),
        ("BOX", "vol/drop/nobodys-box"),
    ]
    .into_iter()
    .map(|(k, rel)| (k, env.id_of(&env.path(rel)).to_string()))
    .chain([
        ("DEV", readme.dev().to_string()),
        ("INO", readme.ino().to_string()),
    ])
    .collect();
    assert_eq!(env.id_of(&env.path("vol")), ROOT);
    let out = run_as_nobody(
        &env,
        "oracle::names_in_a_search_only_folder_are_not_shown",
        "unlisted",
        &vars,
    );
    eprintln!("{out}");
    let lines: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split("PROBE ").nth(1))
        .collect();
    assert_eq!(lines.len(), 20, "{out}");
    let hidden_ids: Vec<&String> = vars[..4].iter().map(|(_, v)| v).collect();
    let vol_root = env.path("vol");
    assert_probes_tell_nothing(&lines, UNLISTED_NAMES, &vol_root, &hidden_ids);
    // nobody's own box: its name is nobody's to know, and what is in it is shown as before.
    let own: Vec<&str> = out.lines().filter_map(|l| l.split("OWN ").nth(1)).collect();
    assert_eq!(own.len(), 5, "{out}");
    for line in &own {
        let (kind, answer) = line.split_once('\t').unwrap();
        let wanted = if kind == "Children" {
            "b.txt ]"
        } else {
            "drop/nobodys-box/b.txt]"
        };
        assert!(answer.contains(wanted), "{kind}: {answer}");
    }
    // dt find as nobody: no path through the search-only folder.
    let out = env.as_nobody(DT, &[b"find", b"vol", b""]).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let found = String::from_utf8_lossy(&out.stdout).into_owned();
    for name in UNLISTED_NAMES {
        assert!(!found.contains(name), "dt find shows {name}:\n{found}");
    }
    assert!(found.contains("drop/nobodys-box/b.txt"), "{found}");
    // Nothing the probes asked for changed the records.
    let db = env.path("vol/.Desktop");
    assert_eq!(
        sqlite3(
            &db,
            "SELECT CAST(type AS TEXT) FROM objects WHERE CAST(name AS TEXT) = 'readme'"
        )
        .trim(),
        "UNIX"
    );
    assert_eq!(sqlite3(&db, "SELECT count(*) FROM comments").trim(), "0");
    assert_eq!(
        sqlite3(&db, "SELECT CAST(creator AS TEXT) FROM appl").trim(),
        "SECR"
    );
    // Root still sees it all.
    let answer = shown(c.call(Request::Resolve { vol, id: secret }));
    assert!(answer.contains("a/hiddenname/deep/secret.txt"), "{answer}");
}

/// Each probe line is `kind<TAB>answer<TAB>answer…`: the answers about a hidden object and about
/// missing ones. They must be identical, and name none of `names`, no path of the volume and
/// none of `hidden_ids`.
fn assert_probes_tell_nothing(
    lines: &[&str],
    names: &[&str],
    vol_root: &Path,
    hidden_ids: &[&String],
) {
    for line in lines {
        let mut fields = line.split('\t');
        let kind = fields.next().unwrap();
        let answers: Vec<&str> = fields.collect();
        assert!(
            answers.iter().all(|a| *a == answers[0]),
            "{kind}: a hidden object is answered differently from a missing one:\n{}",
            answers.join("\n")
        );
        for name in names {
            assert!(
                !answers[0].contains(name),
                "{kind}: names {name}: {}",
                answers[0]
            );
        }
        assert!(
            !answers[0].contains(vol_root.to_str().unwrap()),
            "{kind}: a path: {}",
            answers[0]
        );
        for hidden in hidden_ids {
            assert!(
                !answers[0].contains(&format!("id: {hidden},")),
                "{kind}: a hidden ID: {}",
                answers[0]
            );
        }
    }
}
