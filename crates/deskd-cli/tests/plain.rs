//! Outside any volume dt behaves like the plain commands; across volumes mv copies and the
//! copies get new IDs.

mod common;
use common::*;

#[test]
fn outside_volumes_dt_is_the_plain_command() {
    let env = Env::new(&["plain"]);
    // No server is running at all.
    env.dt_ok(&[b"mkdir", b"-p", b"plain/a/b"]);
    env.dt_ok(&[b"touch", b"plain/a/b/f"]);
    env.dt_ok(&[b"mv", b"plain/a", b"plain/z"]);
    assert!(env.path("plain/z/b/f").exists());
    assert_eq!(env.dt_ok(&[b"ls", b"plain/z/b"]), "f\n");
    let out = env.dt(&[b"rm", b"plain/z"]);
    assert!(!out.status.success());
    env.dt_ok(&[b"rm", b"-r", b"plain/z"]);
    assert!(!env.path("plain/z").exists());
    assert!(
        !env.path("plain/.rsrc").exists(),
        "no resource files outside volumes"
    );
    let out = env.dt(&[b"mkdir", b"plain"]);
    assert!(
        !out.status.success(),
        "mkdir of an existing directory fails like mkdir(1)"
    );
}

#[test]
fn mv_across_volumes_and_into_and_out_of_one() {
    let mut env = Env::new(&["one", "two", "plain"]);
    env.serve(&["one", "two"]);
    env.dt_ok(&[b"mkdir", b"-p", b"one/dir/sub"]);
    env.dt_ok(&[b"touch", b"one/dir/sub/f", b"one/dir/g"]);
    // Burn some IDs in "two" so the numbers cannot coincide by accident.
    env.dt_ok(&[
        b"touch", b"two/x1", b"two/x2", b"two/x3", b"two/x4", b"two/x5", b"two/x6",
    ]);
    let before = env.ids(&[env.path("one/dir"), env.path("one/dir/sub/f")]);
    env.dt_ok(&[b"mv", b"one/dir", b"two/dir"]);
    assert!(!env.path("one/dir").exists());
    assert_eq!(
        sqlite3(&env.path("one/.Desktop"), "SELECT count(*) FROM objects"),
        "1",
        "gone from one"
    );
    let after = env.ids(&[
        env.path("two/dir"),
        env.path("two/dir/sub/f"),
        env.path("two/dir/g"),
    ]);
    assert_eq!(after.len(), 3);
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(b["id"], a["id"], "the copy got a new ID");
    }
    assert_eq!(
        sqlite3(&env.path("two/.Desktop"), "SELECT count(*) FROM objects"),
        "11"
    );
    let rsrc = deskd_volume::rsrc::read_header(&env.path("two/dir/sub/.rsrc/f"))
        .unwrap()
        .unwrap();
    assert_eq!(rsrc.id as u64, after[1]["id"].as_u64().unwrap());
    // Out of a volume: removed from its desktop.
    env.dt_ok(&[b"mv", b"two/dir", b"plain/dir"]);
    assert!(env.path("plain/dir/sub/f").exists());
    assert_eq!(
        sqlite3(&env.path("two/.Desktop"), "SELECT count(*) FROM objects"),
        "7"
    );
    // Into a volume: registered with new IDs.
    env.dt_ok(&[b"mv", b"plain/dir", b"one/back"]);
    let ids = env.ids(&[env.path("one/back/sub/f")]);
    assert!(ids[0]["id"].as_u64().unwrap() >= 17);
    assert_eq!(
        sqlite3(&env.path("one/.Desktop"), "SELECT count(*) FROM objects"),
        "5"
    );
    // An existing target is replaced, as mv(1) does (-f still accepted); -n refuses.
    env.dt_ok(&[b"touch", b"one/t1", b"one/t2", b"one/t3"]);
    let t1 = env.id_of(&env.path("one/t1"));
    let t3 = env.id_of(&env.path("one/t3"));
    env.dt_ok(&[b"mv", b"-n", b"one/t1", b"one/t2"]);
    assert_eq!(env.id_of(&env.path("one/t1")), t1);
    env.dt_ok(&[b"mv", b"one/t1", b"one/t2"]);
    assert_eq!(env.id_of(&env.path("one/t2")), t1);
    env.dt_ok(&[b"mv", b"-f", b"one/t3", b"one/t2"]);
    assert_eq!(env.id_of(&env.path("one/t2")), t3);
}
