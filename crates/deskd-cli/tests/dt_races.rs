//! dt's path races (docs/security.md, "dt's path races"): root runs an ordinary dt command in
//! a folder an unprivileged user (`nobody`) may write, and the user swaps a name for a symlink
//! to root's files at the dangerous step. The step is made deterministic: dt waits there
//! (test hook `DESKD_TEST_DT_PAUSE=<step>:<file>`, or a question of `-i`) until the test, as
//! nobody, has swapped the name. Each test fails if root's file was changed, removed, replaced
//! or copied for the user. They need root (to act as nobody): run without it they fail.

mod common;
use common::*;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const NOBODY: u32 = 65534;

fn b(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

fn need_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the dt race tests need root (to act as nobody)"
    );
}

/// An Env whose directory nobody may search, serving volume `a`.
fn env_for_races() -> Env {
    need_root();
    let mut env = Env::new(&["a"]);
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    env.serve(&["a"]);
    env
}

/// Give the tree at `path` (in a volume) to nobody, the attacker of these tests.
fn give_to_nobody(env: &Env, path: &Path) {
    env.dt_ok(&[b"chown", b"-R", b"65534:65534", b(path)]);
}

/// `cmd args` as nobody; must succeed.
fn as_nobody(cmd: &str, args: &[&Path]) {
    let out = Command::new(cmd)
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} as nobody: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Nobody swaps `path` for a symlink to `target` (the original kept at `path.real`).
fn swap_for_symlink(path: &Path, target: &Path) {
    let mut real = path.as_os_str().to_owned();
    real.push(".real");
    as_nobody("mv", &[path, Path::new(&real)]);
    as_nobody("ln", &[Path::new("-s"), target, path]);
}

/// A directory of nobody's at `path`.
fn nobodys_dir(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

/// A file of nobody's at `path` holding `text`.
fn nobodys_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

/// F1: `dt mkdir -m 4777` by root in nobody's folder; nobody swaps the new directory for a
/// symlink to root's file before its mode is set. The mode must not reach root's file.
#[test]
fn mkdir_mode_never_reaches_a_symlink_swapped_for_the_new_directory() {
    let env = env_for_races();
    let pub_dir = env.path("a/pub");
    env.dt_ok(&[b"mkdir", b(&pub_dir)]);
    env.dt_ok(&[b"chown", b"65534:65534", b(&pub_dir)]);
    let victim = env.path("victim");
    std::fs::write(&victim, b"root's").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let go = env.path("go");
    let new = pub_dir.join("new");
    let child = dt_paused(
        &env,
        "mkdir-made",
        &go,
        &[b"mkdir", b"-m", b"4777", b(&new)],
    );
    let (status, stderr) = at_pause(child, "mkdir-made", &go, || swap_for_symlink(&new, &victim));
    assert_eq!(
        mode_of(&victim),
        0o644,
        "root's file got the new directory's mode: {stderr}"
    );
    assert!(!status.success(), "the swap must be reported: {stderr}");
}

/// F2: `dt rm -ri` by root of nobody's folder; while root reads the question about an entry,
/// nobody swaps the folder for a symlink to root's directory holding a file of that name.
#[test]
fn rm_ri_never_follows_a_folder_swapped_while_root_answers() {
    let env = env_for_races();
    let base = env.path("pub");
    nobodys_dir(&base.join("d"));
    std::os::unix::fs::chown(&base, Some(NOBODY), Some(NOBODY)).unwrap();
    nobodys_file(&base.join("d/precious"), "nobody's");
    let victim_dir = env.path("victimdir");
    std::fs::create_dir(&victim_dir).unwrap();
    std::fs::write(victim_dir.join("precious"), b"root's").unwrap();
    let d = base.join("d");
    let questions = rm_ri_swapping_at_second_question(&env, &d, &victim_dir);
    assert!(
        questions[1].contains("precious"),
        "the second question is about the entry: {questions:?}"
    );
    assert_eq!(
        std::fs::read(victim_dir.join("precious")).ok().as_deref(),
        Some(&b"root's"[..]),
        "root's file was removed through the swapped folder: {questions:?}"
    );
}

/// F3: `dt mv` by root of a file into nobody's folder in the volume; after the checks, nobody
/// swaps the destination folder for a symlink to root's directory outside the volume holding a
/// file of the destination's name.
#[test]
fn mv_into_a_folder_swapped_for_a_symlink_stays_where_it_was_checked() {
    let env = env_for_races();
    let pub_dir = env.path("a/pub");
    env.dt_ok(&[b"mkdir", b"-p", b(&pub_dir.join("sub"))]);
    give_to_nobody(&env, &pub_dir);
    let mine = env.path("a/mine");
    env.dt_ok(&[b"touch", b(&mine)]);
    std::fs::write(&mine, b"moved").unwrap();
    let victim_dir = env.path("victimdir");
    std::fs::create_dir(&victim_dir).unwrap();
    std::fs::write(victim_dir.join("target"), b"root's").unwrap();
    let go = env.path("go");
    let sub = pub_dir.join("sub");
    let child = dt_paused(
        &env,
        "mv-placed",
        &go,
        &[b"mv", b(&mine), b(&sub.join("target"))],
    );
    let (_, stderr) = at_pause(child, "mv-placed", &go, || {
        swap_for_symlink(&sub, &victim_dir)
    });
    assert_eq!(
        std::fs::read(victim_dir.join("target")).ok().as_deref(),
        Some(&b"root's"[..]),
        "root's file outside the volume was replaced: {stderr}"
    );
    assert!(
        !victim_dir.join(".rsrc").exists(),
        "a resource file was put outside the volume: {stderr}"
    );
}

/// F4: `dt cp -a` by root of nobody's tree; between the look at a file and its opening, nobody
/// swaps the folder holding it for a symlink to root's directory with a secret of that name.
/// The copy (which keeps nobody as its owner) must not hold root's secret.
#[test]
fn cp_a_never_copies_root_s_file_for_the_tree_s_owner() {
    let env = env_for_races();
    let src = env.path("src");
    nobodys_dir(&src);
    nobodys_dir(&src.join("sub"));
    nobodys_file(&src.join("sub/f"), "nobody's");
    let secret_dir = env.path("secret");
    std::fs::create_dir(&secret_dir).unwrap();
    std::fs::set_permissions(&secret_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(secret_dir.join("f"), b"root's secret").unwrap();
    std::fs::set_permissions(secret_dir.join("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let dst: PathBuf = env.path("dst");
    let go = env.path("go");
    let child = dt_paused(&env, "cp-open", &go, &[b"cp", b"-a", b(&src), b(&dst)]);
    let (_, stderr) = at_pause(child, "cp-open", &go, || {
        swap_for_symlink(&src.join("sub"), &secret_dir)
    });
    let copy = dst.join("sub/f");
    if let Ok(text) = std::fs::read(&copy) {
        assert_ne!(
            text,
            b"root's secret",
            "root's secret was copied (owner {}, mode {:o}): {stderr}",
            std::fs::metadata(&copy).unwrap().uid(),
            mode_of(&copy)
        );
    }
}

/// F1, the resource file: `dt mkdir -m` by root in nobody's folder makes the new directory's
/// resource file follow the mode; between the look at it and the change, nobody puts a
/// symlink to root's file in its place (nobody may write the folder's `.rsrc`).
#[test]
fn mkdir_mode_never_reaches_a_symlink_put_in_the_resource_file_s_place() {
    let env = env_for_races();
    let pub_dir = env.path("a/pub");
    env.dt_ok(&[b"mkdir", b(&pub_dir)]);
    env.dt_ok(&[b"mkdir", b(&pub_dir.join("other"))]);
    give_to_nobody(&env, &pub_dir);
    let victim = env.path("victim");
    std::fs::write(&victim, b"root's").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let go = env.path("go");
    let new = pub_dir.join("new");
    let record = pub_dir.join(".rsrc/new");
    let child = dt_paused(
        &env,
        "records-looked-at",
        &go,
        &[b"mkdir", b"-m", b"777", b(&new)],
    );
    let (_, stderr) = at_pause(child, "records-looked-at", &go, || {
        let link = pub_dir.join(".rsrc/link");
        as_nobody("ln", &[Path::new("-s"), &victim, &link]);
        as_nobody("mv", &[Path::new("-T"), &link, &record]);
    });
    assert_eq!(
        mode_of(&victim),
        0o600,
        "root's file got the resource file's mode: {stderr}"
    );
}

/// F9: `dt mkdir -m 700` in a volume: the new directory's resource file is never open to
/// others, not even between its registration and the change of its mode.
#[test]
fn mkdir_mode_s_resource_file_is_never_open_to_others() {
    let env = env_for_races();
    let go = env.path("go");
    let new = env.path("a/private");
    let mut cmd = env.command_for(
        "sh",
        &[b"-c", b"umask 022 && exec \"$@\"", b"sh", DT.as_bytes()],
    );
    cmd.args([OsStr::new("mkdir"), OsStr::new("-m"), OsStr::new("700")])
        .arg(&new)
        .env(
            "DESKD_TEST_DT_PAUSE",
            format!("mkdir-registered:{}", go.display()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let record = env.path("a/.rsrc/private");
    let mut seen = 0;
    let (status, stderr) = at_pause(child, "mkdir-registered", &go, || {
        seen = mode_of(&record);
    });
    assert!(status.success(), "{stderr}");
    assert_eq!(
        seen & 0o077,
        0,
        "the resource file was open to others ({seen:o}) before its mode was set"
    );
    assert_eq!(mode_of(&record), 0o600);
}

/// F2, without questions: `dt rm -r` by root of an entry of nobody's folder in the volume;
/// after dt found the entry, nobody swaps its folder for a symlink to root's directory outside
/// the volume holding a file of that name.
#[test]
fn rm_never_follows_a_folder_swapped_after_the_entry_was_found() {
    let env = env_for_races();
    let pub_dir = env.path("a/pub");
    env.dt_ok(&[b"mkdir", b"-p", b(&pub_dir.join("sub"))]);
    env.dt_ok(&[b"touch", b(&pub_dir.join("sub/target"))]);
    give_to_nobody(&env, &pub_dir);
    let victim_dir = env.path("victimdir");
    std::fs::create_dir(&victim_dir).unwrap();
    std::fs::write(victim_dir.join("target"), b"root's").unwrap();
    let go = env.path("go");
    let sub = pub_dir.join("sub");
    let child = dt_paused(
        &env,
        "rm-placed",
        &go,
        &[b"rm", b"-r", b(&sub.join("target"))],
    );
    let (_, stderr) = at_pause(child, "rm-placed", &go, || {
        swap_for_symlink(&sub, &victim_dir)
    });
    assert_eq!(
        std::fs::read(victim_dir.join("target")).ok().as_deref(),
        Some(&b"root's"[..]),
        "root's file outside the volume was removed: {stderr}"
    );
}

/// `dt chown -R` and `dt chmod -R` by root of nobody's folder in the volume: after dt listed
/// the folder, nobody swaps an entry for a symlink to root's file. Neither the owner nor the
/// mode may reach root's file (not a finding of the review; the same race in the same tool).
#[test]
fn chown_and_chmod_r_never_follow_an_entry_swapped_after_the_listing() {
    let env = env_for_races();
    let pub_dir = env.path("a/pub");
    env.dt_ok(&[b"mkdir", b(&pub_dir)]);
    env.dt_ok(&[b"touch", b(&pub_dir.join("f"))]);
    give_to_nobody(&env, &pub_dir);
    let victim = env.path("victim");
    std::fs::write(&victim, b"root's").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    for (i, args) in [
        [&b"chown"[..], b"-R", b"65534:65534"],
        [&b"chmod"[..], b"-R", b"777"],
    ]
    .iter()
    .enumerate()
    {
        let go = env.path(&format!("go{i}"));
        let mut all: Vec<&[u8]> = args.to_vec();
        all.push(b(&pub_dir));
        let child = dt_paused(&env, "change-listed", &go, &all);
        let f = pub_dir.join("f");
        let (_, stderr) = at_pause(child, "change-listed", &go, || {
            let link = pub_dir.join("link");
            as_nobody("ln", &[Path::new("-s"), &victim, &link]);
            as_nobody("mv", &[Path::new("-T"), &link, &f]);
        });
        let meta = std::fs::metadata(&victim).unwrap();
        assert_eq!(
            (meta.uid(), mode_of(&victim)),
            (0, 0o600),
            "dt {args:?} changed root's file: {stderr}"
        );
        // Back to a file of nobody's for the next round.
        as_nobody("rm", &[&f]);
        as_nobody("touch", &[&f]);
    }
}

/// `dt rmdir` by root of nobody's empty folder in the volume: after dt found it, nobody swaps
/// it for a symlink to root's directory outside the volume whose `.rsrc` holds records. They
/// must stay (not a finding of the review; the same race in the same tool).
#[test]
fn rmdir_never_empties_a_directory_swapped_for_the_one_found() {
    let env = env_for_races();
    let pub_dir = env.path("a/pub");
    env.dt_ok(&[b"mkdir", b"-p", b(&pub_dir.join("sub"))]);
    give_to_nobody(&env, &pub_dir);
    let victim_dir = env.path("victimdir");
    std::fs::create_dir_all(victim_dir.join(".rsrc")).unwrap();
    std::fs::write(victim_dir.join(".rsrc/precious"), b"root's").unwrap();
    let go = env.path("go");
    let sub = pub_dir.join("sub");
    let child = dt_paused(&env, "rmdir-placed", &go, &[b"rmdir", b(&sub)]);
    let (_, stderr) = at_pause(child, "rmdir-placed", &go, || {
        swap_for_symlink(&sub, &victim_dir)
    });
    assert!(
        victim_dir.join(".rsrc/precious").exists(),
        "root's records outside the volume were removed: {stderr}"
    );
}

/// `dt cp -a` by root of nobody's tree into nobody's folder: while dt copies, nobody swaps the
/// copy's top directory (root's, in nobody's folder) for a symlink to root's directory that
/// holds a directory of the same name as one in the tree. Root's directory must keep its owner
/// and mode and get no file (not a finding of the review; F4's other side).
#[test]
fn cp_a_never_writes_through_a_destination_folder_swapped_for_a_symlink() {
    let env = env_for_races();
    let home = env.path("home");
    nobodys_dir(&home);
    let src = home.join("src");
    nobodys_dir(&src.join("sub"));
    std::os::unix::fs::chown(&src, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(src.join("sub"), std::fs::Permissions::from_mode(0o777)).unwrap();
    nobodys_file(&src.join("sub/f"), "nobody's");
    let victim_dir = env.path("victimdir");
    std::fs::create_dir_all(victim_dir.join("sub")).unwrap();
    std::fs::set_permissions(
        victim_dir.join("sub"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let dst = home.join("dst");
    let go = env.path("go");
    let child = dt_paused(&env, "cp-open", &go, &[b"cp", b"-a", b(&src), b(&dst)]);
    let (_, stderr) = at_pause(child, "cp-open", &go, || {
        swap_for_symlink(&dst, &victim_dir)
    });
    let meta = std::fs::metadata(victim_dir.join("sub")).unwrap();
    assert_eq!(
        (meta.uid(), mode_of(&victim_dir.join("sub"))),
        (0, 0o755),
        "root's directory was given the copy's owner or mode: {stderr}"
    );
    assert!(
        !victim_dir.join("sub/f").exists(),
        "a file was copied into root's directory: {stderr}"
    );
}

/// `dt mv` by root into nobody's folder in the volume: after the server registered the
/// arrival, before dt writes its resource file and ID mirror, nobody swaps the folder for a
/// symlink to root's directory outside the volume holding a file of that name (and a record).
/// Root's files must not be written, nor given an ID mirror (the registration after a move,
/// by path before).
#[test]
fn mv_never_writes_the_record_through_a_folder_swapped_after_registering() {
    let env = env_for_races();
    let pub_dir = env.path("a/pub");
    env.dt_ok(&[b"mkdir", b"-p", b(&pub_dir.join("sub"))]);
    give_to_nobody(&env, &pub_dir);
    let mine = env.path("a/mine");
    env.dt_ok(&[b"touch", b(&mine)]);
    let victim_dir = env.path("victimdir");
    std::fs::create_dir_all(victim_dir.join(".rsrc")).unwrap();
    std::fs::write(victim_dir.join(".rsrc/target"), b"root's").unwrap();
    std::fs::write(victim_dir.join("target"), b"root's").unwrap();
    let go = env.path("go");
    let sub = pub_dir.join("sub");
    let child = dt_paused(
        &env,
        "before-record",
        &go,
        &[b"mv", b(&mine), b(&sub.join("target"))],
    );
    let (_, stderr) = at_pause(child, "before-record", &go, || {
        swap_for_symlink(&sub, &victim_dir)
    });
    assert_eq!(
        std::fs::read(victim_dir.join(".rsrc/target"))
            .ok()
            .as_deref(),
        Some(&b"root's"[..]),
        "root's file outside the volume was written: {stderr}"
    );
    assert_eq!(
        xattr::get(victim_dir.join("target"), "user.deskd.id").unwrap(),
        None,
        "root's file outside the volume got an ID mirror: {stderr}"
    );
}

/// `dt mv` by root of nobody's tree into another volume clears the IDs in the tree's records
/// before the rename: while it walks the tree, nobody swaps the tree for a symlink to another
/// directory holding records of the same names. Their IDs must stay.
#[test]
fn mv_between_volumes_never_clears_ids_through_a_tree_swapped_for_a_symlink() {
    need_root();
    let mut env = Env::new(&["a", "b"]);
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    env.serve(&["a", "b"]);
    let home = env.path("a/home");
    env.dt_ok(&[b"mkdir", b"-p", b(&home.join("tree/sub"))]);
    env.dt_ok(&[b"touch", b(&home.join("tree/sub/x"))]);
    give_to_nobody(&env, &home);
    let victim_dir = env.path("victimdir");
    std::fs::create_dir_all(victim_dir.join("sub/.rsrc")).unwrap();
    std::fs::write(victim_dir.join("sub/x"), b"").unwrap();
    let record = victim_dir.join("sub/.rsrc/x");
    let header = deskd_volume::rsrc::ResourceHeader::new(4321, *b"TEXT", *b"ttxt", 0);
    deskd_volume::rsrc::write_header(&record, &header).unwrap();
    let go = env.path("go");
    let tree = home.join("tree");
    let child = dt_paused(
        &env,
        "clear-entry",
        &go,
        &[b"mv", b(&tree), b(&env.path("b/tree"))],
    );
    let (_, stderr) = at_pause(child, "clear-entry", &go, || {
        swap_for_symlink(&tree, &victim_dir)
    });
    let after = deskd_volume::rsrc::read_header(&record).unwrap().unwrap();
    assert_eq!(
        after.id, 4321,
        "a record outside the tree lost its ID: {stderr}"
    );
}

/// `dt cp -R` by root into nobody's folder in the volume: after the checks, nobody swaps the
/// destination folder for a symlink to root's directory outside the volume. Nothing may be
/// copied there.
#[test]
fn cp_into_a_folder_swapped_for_a_symlink_stays_in_the_volume() {
    let env = env_for_races();
    let pub_dir = env.path("a/pub");
    env.dt_ok(&[b"mkdir", b"-p", b(&pub_dir.join("sub"))]);
    give_to_nobody(&env, &pub_dir);
    let src = env.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), b"copied").unwrap();
    let victim_dir = env.path("victimdir");
    std::fs::create_dir(&victim_dir).unwrap();
    let go = env.path("go");
    let sub = pub_dir.join("sub");
    let child = dt_paused(
        &env,
        "cp-placed",
        &go,
        &[b"cp", b"-R", b(&src), b(&sub.join("x"))],
    );
    let (_, stderr) = at_pause(child, "cp-placed", &go, || {
        swap_for_symlink(&sub, &victim_dir)
    });
    assert!(
        !victim_dir.join("x").exists() && !victim_dir.join(".rsrc").exists(),
        "the copy landed outside the volume: {stderr}"
    );
}

/// `dt touch` by root of a file in nobody's folder in the volume: after the checks, nobody
/// swaps the folder for a symlink to root's directory outside the volume holding a file of
/// that name. Its times must not change.
#[test]
fn touch_never_reaches_a_file_through_a_folder_swapped_for_a_symlink() {
    let env = env_for_races();
    let pub_dir = env.path("a/pub");
    env.dt_ok(&[b"mkdir", b"-p", b(&pub_dir.join("sub"))]);
    env.dt_ok(&[b"touch", b(&pub_dir.join("sub/f"))]);
    give_to_nobody(&env, &pub_dir);
    let victim_dir = env.path("victimdir");
    std::fs::create_dir(&victim_dir).unwrap();
    std::fs::write(victim_dir.join("f"), b"root's").unwrap();
    deskd_cli::fsops::set_times(&victim_dir.join("f"), Some((1000, 0, 2000, 0))).unwrap();
    let go = env.path("go");
    let sub = pub_dir.join("sub");
    let child = dt_paused(&env, "touch-placed", &go, &[b"touch", b(&sub.join("f"))]);
    let (_, stderr) = at_pause(child, "touch-placed", &go, || {
        swap_for_symlink(&sub, &victim_dir)
    });
    let meta = std::fs::metadata(victim_dir.join("f")).unwrap();
    assert_eq!(
        (meta.atime(), meta.mtime()),
        (1000, 2000),
        "root's file outside the volume was touched: {stderr}"
    );
}

/// `dt set` by root of a file in nobody's folder in the volume: after the checks, nobody swaps
/// the folder for a symlink to root's directory outside the volume holding a `.rsrc` with a
/// record of that name. It must not be written.
#[test]
fn set_never_writes_a_record_through_a_folder_swapped_for_a_symlink() {
    let env = env_for_races();
    let pub_dir = env.path("a/pub");
    env.dt_ok(&[b"mkdir", b"-p", b(&pub_dir.join("sub"))]);
    env.dt_ok(&[b"touch", b(&pub_dir.join("sub/f"))]);
    give_to_nobody(&env, &pub_dir);
    let victim_dir = env.path("victimdir");
    std::fs::create_dir_all(victim_dir.join(".rsrc")).unwrap();
    std::fs::write(victim_dir.join("f"), b"root's").unwrap();
    let record = victim_dir.join(".rsrc/f");
    let header = deskd_volume::rsrc::ResourceHeader::new(4321, *b"APPL", *b"ttxt", 0);
    deskd_volume::rsrc::write_header(&record, &header).unwrap();
    let go = env.path("go");
    let sub = pub_dir.join("sub");
    let child = dt_paused(
        &env,
        "set-placed",
        &go,
        &[b"set", b"-t", b"TEXT", b(&sub.join("f"))],
    );
    let (_, stderr) = at_pause(child, "set-placed", &go, || {
        swap_for_symlink(&sub, &victim_dir)
    });
    let after = deskd_volume::rsrc::read_header(&record).unwrap().unwrap();
    assert_eq!(
        (after.id, after.type_code),
        (4321, *b"APPL"),
        "root's record outside the volume was written: {stderr}"
    );
}

/// Run root's `dt rm -ri d`, answering yes to every question; while root reads the second one,
/// nobody swaps `d` for a symlink to `target`. The questions asked.
fn rm_ri_swapping_at_second_question(env: &Env, d: &Path, target: &Path) -> Vec<String> {
    let mut child = env
        .command_for(DT, &[b"rm", b"-ri", b(d)])
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut questions = Vec::new();
    loop {
        let mut q = Vec::new();
        let mut byte = [0u8];
        while !q.ends_with(b"? ") {
            if err.read(&mut byte).unwrap() == 0 {
                break;
            }
            q.push(byte[0]);
        }
        let asked = q.ends_with(b"? ");
        questions.push(String::from_utf8_lossy(&q).into_owned());
        if !asked {
            break;
        }
        if questions.len() == 2 {
            swap_for_symlink(d, target);
        }
        stdin.write_all(b"y\n").unwrap();
        stdin.flush().unwrap();
    }
    drop(stdin);
    child.wait().unwrap();
    questions
}

/// F2 inside a volume: `dt rm -ri` by root of nobody's folder; while root reads the question
/// about an entry, nobody swaps the folder for a symlink to another folder of the volume
/// holding another user's (root's) file of that name. That file must stay, with its ID.
#[test]
fn rm_ri_in_a_volume_never_removes_another_user_s_file_or_its_id() {
    let env = env_for_races();
    let pub_dir = env.path("a/pub");
    env.dt_ok(&[b"mkdir", b"-p", b(&pub_dir.join("d"))]);
    env.dt_ok(&[b"touch", b(&pub_dir.join("d/precious"))]);
    give_to_nobody(&env, &pub_dir);
    let other = env.path("a/other");
    env.dt_ok(&[b"mkdir", b(&other)]);
    env.dt_ok(&[b"touch", b(&other.join("precious"))]);
    let id = env.id_of(&other.join("precious"));
    let d = pub_dir.join("d");
    let questions = rm_ri_swapping_at_second_question(&env, &d, &other);
    assert!(
        questions[1].contains("precious"),
        "the second question is about the entry: {questions:?}"
    );
    assert!(
        other.join("precious").exists(),
        "root's file was removed through the swapped folder: {questions:?}"
    );
    assert_eq!(
        env.id_of(&other.join("precious")),
        id,
        "root's file lost its ID: {questions:?}"
    );
}

/// Second review, 1: `dt cp` by root onto an existing file in nobody's folder in the volume;
/// after the look at the target, nobody swaps the folder for a symlink to root's directory
/// outside the volume holding a file of that name. Root's file must not be overwritten.
#[test]
fn cp_onto_an_existing_file_never_writes_through_a_folder_swapped_for_a_symlink() {
    let env = env_for_races();
    let pub_dir = env.path("a/pub");
    env.dt_ok(&[b"mkdir", b"-p", b(&pub_dir.join("sub"))]);
    let target = pub_dir.join("sub/target.txt");
    env.dt_ok(&[b"touch", b(&target)]);
    give_to_nobody(&env, &pub_dir);
    let src = env.path("src.txt");
    std::fs::write(&src, b"copied").unwrap();
    let victim_dir = env.path("victimdir");
    std::fs::create_dir(&victim_dir).unwrap();
    std::fs::write(victim_dir.join("target.txt"), b"root's").unwrap();
    let go = env.path("go");
    let sub = pub_dir.join("sub");
    let child = dt_paused(&env, "cp-exists", &go, &[b"cp", b(&src), b(&target)]);
    let (_, stderr) = at_pause(child, "cp-exists", &go, || {
        swap_for_symlink(&sub, &victim_dir)
    });
    assert_eq!(
        std::fs::read(victim_dir.join("target.txt")).ok().as_deref(),
        Some(&b"root's"[..]),
        "root's file outside the volume was overwritten: {stderr}"
    );
}

/// A tree of nobody's for the `dt cp -R` onto an existing file tests: `n/src/secret` and
/// `n/dst` (nobody's), root's directory `rootdir` (0700) with `secret` (0600, TOPSECRET).
fn cp_onto_existing_setup(env: &Env) -> (PathBuf, PathBuf, PathBuf) {
    let n = env.path("n");
    nobodys_dir(&n);
    nobodys_dir(&n.join("src"));
    nobodys_file(&n.join("src/secret"), "nobody's");
    nobodys_file(&n.join("dst"), "old");
    let rootdir = env.path("rootdir");
    std::fs::create_dir(&rootdir).unwrap();
    std::fs::set_permissions(&rootdir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(rootdir.join("secret"), b"TOPSECRET").unwrap();
    std::fs::set_permissions(
        rootdir.join("secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    (n.join("src"), n.join("dst"), rootdir)
}

/// Second review, 2: `dt cp -R` by root of nobody's file onto nobody's existing file; after
/// the look at the source, nobody swaps its folder for a symlink to root's directory holding
/// a secret of that name. Nobody's file must not get root's secret.
#[test]
fn cp_r_onto_an_existing_file_never_copies_root_s_file_for_the_user() {
    let env = env_for_races();
    let (src, dst, rootdir) = cp_onto_existing_setup(&env);
    let go = env.path("go");
    let child = dt_paused(
        &env,
        "cp-exists",
        &go,
        &[b"cp", b"-R", b(&src.join("secret")), b(&dst)],
    );
    let (_, stderr) = at_pause(child, "cp-exists", &go, || swap_for_symlink(&src, &rootdir));
    assert_ne!(
        std::fs::read(&dst).unwrap(),
        b"TOPSECRET",
        "root's secret was copied into nobody's file: {stderr}"
    );
}

/// Second review, 2, the swap before dt resolves the source's folder: the source opened must
/// be the file looked at ("replaced while being worked on", exit 1), not root's secret.
#[test]
fn cp_r_onto_an_existing_file_refuses_a_source_swapped_after_the_look() {
    let env = env_for_races();
    let (src, dst, rootdir) = cp_onto_existing_setup(&env);
    let go = env.path("go");
    let child = dt_paused(
        &env,
        "cp-looked",
        &go,
        &[b"cp", b"-R", b(&src.join("secret")), b(&dst)],
    );
    let (status, stderr) = at_pause(child, "cp-looked", &go, || swap_for_symlink(&src, &rootdir));
    assert_ne!(
        std::fs::read(&dst).unwrap(),
        b"TOPSECRET",
        "root's secret was copied into nobody's file: {stderr}"
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("replaced while being worked on"),
        "{stderr}"
    );
}

/// `dt cp` by root onto nobody's existing file outside a volume; after the look at it, nobody
/// swaps the file for a symlink to root's file. Root's file must not be overwritten (the
/// target opened must be the file looked at).
#[test]
fn cp_onto_an_existing_file_refuses_a_target_swapped_for_a_symlink() {
    let env = env_for_races();
    let (_, dst, rootdir) = cp_onto_existing_setup(&env);
    let src = env.path("src.txt");
    std::fs::write(&src, b"copied").unwrap();
    let go = env.path("go");
    let child = dt_paused(&env, "cp-exists", &go, &[b"cp", b(&src), b(&dst)]);
    let (status, stderr) = at_pause(child, "cp-exists", &go, || {
        swap_for_symlink(&dst, &rootdir.join("secret"))
    });
    assert_eq!(
        std::fs::read(rootdir.join("secret")).unwrap(),
        b"TOPSECRET",
        "root's file was overwritten through the link: {stderr}"
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
}

/// Second review, 5: `dt mkdir -m 777` by root in nobody's folder in the volume; before dt
/// resolves the folder, nobody swaps it for a symlink to root's directory outside the volume.
/// Nothing may be made there.
#[test]
fn mkdir_m_in_a_volume_never_makes_a_directory_through_a_swapped_folder() {
    let env = env_for_races();
    let pub_dir = env.path("a/pub");
    env.dt_ok(&[b"mkdir", b"-p", b(&pub_dir.join("s2"))]);
    give_to_nobody(&env, &pub_dir);
    let victim_dir = env.path("etc2");
    std::fs::create_dir(&victim_dir).unwrap();
    let go = env.path("go");
    let s2 = pub_dir.join("s2");
    let child = dt_paused(
        &env,
        "mkdir-placed",
        &go,
        &[b"mkdir", b"-m", b"777", b(&s2.join("new1"))],
    );
    let (status, stderr) = at_pause(child, "mkdir-placed", &go, || {
        swap_for_symlink(&s2, &victim_dir)
    });
    assert!(
        !victim_dir.join("new1").exists(),
        "a directory was made outside the volume: {stderr}"
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
}

/// Second review, 5, `-p`: the folders on the way are made one name at a time from the
/// volume root, never through a symlink nobody put in a folder's place.
#[test]
fn mkdir_p_in_a_volume_never_makes_folders_through_a_swapped_folder() {
    let env = env_for_races();
    let pub_dir = env.path("a/pub");
    env.dt_ok(&[b"mkdir", b"-p", b(&pub_dir.join("s2"))]);
    give_to_nobody(&env, &pub_dir);
    let victim_dir = env.path("etc2");
    std::fs::create_dir(&victim_dir).unwrap();
    let go = env.path("go");
    let s2 = pub_dir.join("s2");
    let child = dt_paused(
        &env,
        "mkdir-placed",
        &go,
        &[b"mkdir", b"-p", b(&s2.join("x/y"))],
    );
    let (status, stderr) = at_pause(child, "mkdir-placed", &go, || {
        swap_for_symlink(&s2, &victim_dir)
    });
    assert!(
        !victim_dir.join("x").exists(),
        "a directory was made outside the volume: {stderr}"
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
}
