//! A `.rsrc` that a folder's owner replaced by a symlink is never followed when root's `dt`
//! moves or copies a file of that folder: no race to win, only a link to plant (second hostile
//! review, findings 3 and 4). The user links `.rsrc` to a directory of root's holding a file of
//! the same name as theirs; root's file must stay as it was, and dt must say why it refuses.

mod common;
use common::*;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn b(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// A served volume `a` in a directory others may enter (the attacker must reach it).
fn served() -> Env {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "these tests need root");
    let mut env = Env::new(&["a"]);
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    env.serve(&["a"]);
    env
}

/// A folder of nobody's (made as nobody would) with a file `name` and `.rsrc` linked to
/// `victim`.
fn lure(folder: &Path, name: &str, victim: &Path) {
    std::fs::create_dir_all(folder).unwrap();
    std::fs::write(folder.join(name), b"the user's").unwrap();
    std::os::unix::fs::symlink(victim, folder.join(".rsrc")).unwrap();
    for p in [folder.to_path_buf(), folder.join(name)] {
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    }
    std::os::unix::fs::lchown(folder.join(".rsrc"), Some(65534), Some(65534)).unwrap();
}

/// Root's directory outside the volume, holding a 0600 file `name` longer than a record's
/// header.
fn roots_dir(env: &Env, name: &str) -> std::path::PathBuf {
    let dir = env.path("rootdir");
    std::fs::create_dir_all(&dir).unwrap();
    let secret = vec![b'S'; 2048];
    std::fs::write(dir.join(name), &secret).unwrap();
    std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o600)).unwrap();
    dir
}

fn untouched(dir: &Path, name: &str) {
    assert_eq!(
        std::fs::read(dir.join(name)).ok(),
        Some(vec![b'S'; 2048]),
        "root's {name} outside the volume was moved, removed or overwritten"
    );
}

#[test]
fn mv_out_of_a_folder_whose_rsrc_is_a_link_leaves_roots_file() {
    let env = served();
    let victim = roots_dir(&env, "victim");
    let folder = env.path("a/users/nobody");
    lure(&folder, "victim", &victim);
    env.dt_ok(&[b"mkdir", b(&env.path("a/pub"))]);
    let out = env.dt(&[
        b"mv",
        b(&folder.join("victim")),
        b(&env.path("a/pub/victim")),
    ]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("where a real .rsrc directory belongs"),
        "{said}"
    );
    untouched(&victim, "victim");
    assert!(
        folder.join("victim").exists(),
        "the user's file stays where it was"
    );
}

#[test]
fn mv_into_a_folder_whose_rsrc_is_a_link_leaves_roots_file() {
    let env = served();
    let victim = roots_dir(&env, "victim2");
    let inbox = env.path("a/users/inbox");
    lure(&inbox, "other", &victim);
    // A file with no record yet (made by a plain shell), moved into the user's folder.
    std::fs::write(env.path("a/handout"), b"handout").unwrap();
    let out = env.dt(&[b"mv", b(&env.path("a/handout")), b(&inbox.join("victim2"))]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("where a real .rsrc directory belongs"),
        "{said}"
    );
    untouched(&victim, "victim2");
}

#[test]
fn cp_from_a_folder_whose_rsrc_is_a_link_copies_no_file_of_roots() {
    let env = served();
    let victim = roots_dir(&env, "secret");
    let folder = env.path("n2");
    lure(&folder, "secret", &victim);
    let copy = env.path("a/copy");
    env.dt_ok(&[b"cp", b(&folder.join("secret")), b(&copy)]);
    assert_eq!(std::fs::read(&copy).unwrap(), b"the user's");
    // The copy's record holds no byte of root's file.
    let record = std::fs::read(env.path("a/.rsrc/copy")).unwrap_or_default();
    assert!(
        !record.windows(64).any(|w| w.iter().all(|&c| c == b'S')),
        "root's file was copied into the copy's resource file"
    );
    untouched(&victim, "secret");
}

/// A Finder comment is as private as its file on disk too: the resource file holding it gets
/// the file's read and write bits when dt makes it, and a copy's record the copy's (second
/// review, finding 6: both were 0644 for a 0600 file).
#[test]
fn a_private_files_record_is_private() {
    let env = served();
    let file = env.path("a/priv");
    std::fs::write(&file, b"x").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.dt_ok(&[b"set", b"--comment", b"ROOT-PRIVATE", b(&file)]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&env.path("a/.rsrc/priv")), 0o600);
    env.dt_ok(&[b"mkdir", b(&env.path("a/pub2"))]);
    env.dt_ok(&[b"cp", b"-p", b(&file), b(&env.path("a/pub2/copy"))]);
    assert_eq!(mode(&env.path("a/pub2/copy")), 0o600);
    assert_eq!(mode(&env.path("a/pub2/.rsrc/copy")), 0o600);
    // nobody reads neither record.
    let out = env
        .as_nobody("/bin/cat", &[b(&env.path("a/pub2/.rsrc/copy"))])
        .expect("runs as nobody");
    assert!(!out.status.success(), "nobody read the copy's record");
}
