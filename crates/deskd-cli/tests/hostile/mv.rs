//! Hostile-user tests, part `mv` (see main.rs): a `dt mv` between two volumes of one deskd,
//! killed (SIGKILL, at a step named by dt's `DESKD_TEST_MV_PAUSE_AT` hook) at each step, then
//! repaired by `deskd rebuild` offline and online. What it must leave (docs/dt.md, "A move
//! between volumes cut short"): the source in A with A's IDs, and/or the copy in B with
//! new IDs of B — never the copy with A's IDs, whether dt ran as root or as the user who owns the
//! tree (`nobody`, who must not be able to import a foreign ID into B that way). No ID B had
//! acknowledged changes, and running the same `dt mv` again finishes the move. Also: a `dt cp`
//! killed the same way, and a move refused for want of permission, which must leave the
//! source's IDs alone. The servers here do not watch (`watch = "off"`): what is checked is
//! dt's own recovery and the repair's; a watcher would record the half-done move itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{
    desktop_counter, desktop_paths, disk_objects, dt_killed_at, Env, Mounted, DESKD, DT,
};
use deskd_volume::{netatalk, rsrc};

/// The moved tree, below `home/` of volume A (then of volume B).
const TREE_DIRS: &[&str] = &["tree/d1/d2", "tree/e"];
const TREE_FILES: &[&str] = &["tree/f0", "tree/d1/f1", "tree/d1/d2/f2", "tree/e/f3"];
/// Every object of the tree, sorted.
const TREE: &[&str] = &[
    "tree",
    "tree/d1",
    "tree/d1/d2",
    "tree/d1/d2/f2",
    "tree/d1/f1",
    "tree/e",
    "tree/e/f3",
    "tree/f0",
];

/// How the cut-short move is repaired.
#[derive(Clone, Copy, Debug)]
enum Repair {
    /// `deskd rebuild` of both volumes with the server stopped.
    Offline,
    /// `deskd rebuild` of both volumes through the running server.
    Online,
}

/// Two served volumes `a` and `b` (b on its own tmpfs for a move between file systems), each
/// with a `home` directory owned by `user` (root when `None`); A holds `home/tree` made by
/// `user`, and more objects than B so that A's IDs are not B's.
struct Scene {
    /// First, so it is dropped (unmounted, lazily) before `env` removes the temp dir.
    _mount: Option<Mounted>,
    env: Env,
    a: PathBuf,
    b: PathBuf,
    user: Option<u32>,
    /// The IDs A gave the tree's objects, by path relative to A.
    tree_in_a: BTreeMap<String, u32>,
    /// B's counter before the move: every ID B gives the arrivals is above it.
    b_counter: u32,
}

fn bytes(p: &Path) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes()
}

impl Scene {
    fn new(across_file_systems: bool, user: Option<u32>) -> Scene {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the hostile tests need root (to act as nobody and to mount a file system)"
        );
        let mut env = Env::new(&["a", "b"]);
        let mount = across_file_systems.then(|| {
            Mounted::tmpfs_of(env.path("b"), "32m").expect("a tmpfs for volume b (needs root)")
        });
        let (a, b) = (env.path("a"), env.path("b"));
        env.serve_unwatched(&["a", "b"]);
        let filler: Vec<String> = (0..40)
            .map(|i| a.join(format!("filler-{i}")).display().to_string())
            .collect();
        let mut args: Vec<&[u8]> = vec![b"touch"];
        args.extend(filler.iter().map(|p| p.as_bytes()));
        env.dt_ok(&args);
        for v in [&a, &b] {
            env.dt_ok(&[b"mkdir", bytes(&v.join("home"))]);
            if let Some(uid) = user {
                let owner = format!("{uid}:{uid}");
                env.dt_ok(&[b"chown", owner.as_bytes(), bytes(&v.join("home"))]);
            }
        }
        env.dt_ok(&[b"mkdir", b"-p", bytes(&b.join("keep/sub"))]);
        env.dt_ok(&[
            b"touch",
            bytes(&b.join("keep/x")),
            bytes(&b.join("keep/sub/y")),
        ]);
        let scene = Scene {
            _mount: mount,
            env,
            a,
            b,
            user,
            tree_in_a: BTreeMap::new(),
            b_counter: 0,
        };
        for d in TREE_DIRS {
            scene.dt_as_user(
                &[b"mkdir", b"-p", bytes(&scene.a.join("home").join(d))],
                "setting up",
            );
        }
        for f in TREE_FILES {
            std::fs::write(scene.a.join("home").join(f), f.as_bytes()).unwrap();
            if let Some(uid) = user {
                std::os::unix::fs::chown(scene.a.join("home").join(f), Some(uid), Some(uid))
                    .unwrap();
            }
            scene.dt_as_user(
                &[b"touch", bytes(&scene.a.join("home").join(f))],
                "setting up",
            );
        }
        scene.dt_as_user(
            &[
                b"set",
                b"-t",
                b"TEXT",
                b"-c",
                b"ttxt",
                bytes(&scene.a.join("home/tree/d1/f1")),
            ],
            "setting up",
        );
        let tree_in_a: BTreeMap<String, u32> = desktop_paths(&scene.a)
            .into_iter()
            .filter(|(p, _)| p.starts_with("home/tree"))
            .collect();
        assert_eq!(tree_in_a.len(), 8, "{tree_in_a:?}");
        // A file Netatalk's afpd served through deskd caches its CNID (= its ID in A) in its
        // metadata xattr, which a rebuild reads when nothing else gives an ID.
        let f0 = scene.a.join("home/tree/f0");
        let blob = netatalk::netatalk3_blob(tree_in_a["home/tree/f0"], b"TEXT", b"ttxt");
        xattr::set(&f0, netatalk::NETATALK_XATTR, &blob).unwrap();
        let b_counter = desktop_counter(&scene.b);
        assert!(
            tree_in_a.values().all(|&id| id > b_counter),
            "A's IDs must not be B's for the test to tell them apart"
        );
        Scene {
            tree_in_a,
            b_counter,
            ..scene
        }
    }

    /// dt as the scene's user; must succeed (`context` says where the test is).
    fn dt_as_user(&self, args: &[&[u8]], context: &str) {
        let out = match self.user {
            None => self.env.dt(args),
            Some(uid) => self.env.as_user(uid, DT, args, &[]).unwrap(),
        };
        let shown: Vec<String> = args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert!(
            out.status.success(),
            "{context}: dt {shown:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn mv_args(&self) -> [PathBuf; 2] {
        [self.a.join("home/tree"), self.b.join("home/tree")]
    }

    /// `dt cp -R` of the tree to B, killed at `step`.
    fn kill_copy_at(&self, step: &str) {
        let [from, to] = self.mv_args();
        dt_killed_at(
            &self.env,
            self.user,
            step,
            &[b"cp", b"-R", bytes(&from), bytes(&to)],
        );
    }

    /// `dt mv` of the tree, killed at `step`.
    fn kill_move_at(&self, step: &str) {
        let [from, to] = self.mv_args();
        dt_killed_at(
            &self.env,
            self.user,
            step,
            &[b"mv", bytes(&from), bytes(&to)],
        );
    }

    /// `deskd rebuild` (a repair) of both volumes.
    fn repair(&mut self, how: Repair) {
        match how {
            Repair::Offline => {
                self.env.term();
                for v in [&self.a, &self.b] {
                    let out = Command::new(DESKD).arg("rebuild").arg(v).output().unwrap();
                    assert!(
                        out.status.success(),
                        "offline rebuild of {}: {}",
                        v.display(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                self.env.serve_unwatched(&["a", "b"]);
            }
            Repair::Online => {
                for v in [&self.a, &self.b] {
                    let out = self.env.deskd_ok(&["rebuild", &v.display().to_string()]);
                    assert!(out.contains("(online,"), "not an online rebuild: {out}");
                }
            }
        }
    }

    /// What the scene's volumes hold now must keep every promise; `acknowledged` are rows of
    /// B (path: ID) that must be there unchanged.
    fn check(&self, acknowledged: &BTreeMap<String, u32>, context: &str) {
        let (in_a, in_b) = (desktop_paths(&self.a), desktop_paths(&self.b));
        let a_ids: BTreeSet<u32> = self.tree_in_a.values().copied().collect();
        // Whatever of the source is still in A has A's IDs.
        for path in disk_objects(&self.a, "home/tree") {
            assert_eq!(
                in_a.get(&path),
                self.tree_in_a.get(&path),
                "{context}: {path} in A lost its ID"
            );
        }
        // No ID B had acknowledged changed.
        for (path, id) in acknowledged {
            assert_eq!(
                in_b.get(path),
                Some(id),
                "{context}: B's {path} changed its ID"
            );
        }
        // Everything that arrived in B is registered with a new ID of B's, in its desktop and
        // its resource file alike; none of A's IDs is anywhere in B.
        for (path, id) in &in_b {
            assert!(
                !a_ids.contains(id),
                "{context}: B's {path} has ID {id}, one of A's for the moved tree"
            );
        }
        for path in disk_objects(&self.b, "home/tree") {
            let id = *in_b
                .get(&path)
                .unwrap_or_else(|| panic!("{context}: {path} is not registered in B"));
            assert!(
                id > self.b_counter,
                "{context}: B's {path} has ID {id}, not a new one (B's counter was {})",
                self.b_counter
            );
            let on_disk = self.b.join(&path);
            let record = rsrc::read_header(&rsrc::rsrc_path(&on_disk).unwrap())
                .unwrap()
                .unwrap_or_else(|| panic!("{context}: {path} has no resource file"));
            assert_eq!(record.id, id, "{context}: B's {path}: resource file");
            if let Some(mirror) = deskd_volume::read_id_xattr(&on_disk) {
                assert_eq!(mirror, id, "{context}: B's {path}: xattr mirror");
            }
        }
    }

    /// Finish the move as docs/dt.md says: when the source is still there, the same `dt mv`
    /// again (after `dt rm -r` of the copy when one is in B too); when it is gone, the move is finished
    /// already (by the repair) or the same `dt mv` finishes it (without one). Then the tree is
    /// in B alone, complete, with new IDs, and B's acknowledged IDs are kept.
    fn finish(&self, context: &str) {
        let [from, to] = self.mv_args();
        let both = from.exists() && to.exists();
        let before = desktop_paths(&self.b);
        let acknowledged: BTreeMap<String, u32> = before
            .into_iter()
            .filter(|(p, _)| !(both && p.starts_with("home/tree")))
            .collect();
        let finished = !from.exists()
            && !desktop_paths(&self.a)
                .keys()
                .any(|p| p.starts_with("home/tree"))
            && !rsrc::rsrc_path(&from).unwrap().exists()
            && self.set_aside().is_none();
        let context = if finished {
            format!("{context}: finished")
        } else {
            if both {
                // Cut short while copying: the source is whole, the copy perhaps not.
                self.dt_as_user(&[b"rm", b"-r", bytes(&to)], context);
            }
            self.dt_as_user(&[b"mv", bytes(&from), bytes(&to)], context);
            format!("{context}, then run again")
        };
        self.check_finished(&acknowledged, &context);
    }

    /// What dt put aside of the source in A to remove it (a hidden `.dt-mv-*` name), if any.
    fn set_aside(&self) -> Option<PathBuf> {
        std::fs::read_dir(self.a.join("home"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".dt-mv-")
            })
    }

    /// The move is done: the tree is in B alone, complete, with new IDs, and the rows of B in
    /// `acknowledged` are kept.
    fn check_finished(&self, acknowledged: &BTreeMap<String, u32>, context: &str) {
        let [from, _] = self.mv_args();
        assert!(!from.exists(), "{context}: the source is still there");
        assert_eq!(self.set_aside(), None, "{context}: remains of the source");
        assert!(
            !desktop_paths(&self.a)
                .keys()
                .any(|p| p.starts_with("home/tree")),
            "{context}: A's desktop still has the tree"
        );
        let want: Vec<String> = TREE.iter().map(|p| format!("home/{p}")).collect();
        assert_eq!(disk_objects(&self.b, "home/tree"), want, "{context}");
        for f in TREE_FILES {
            assert_eq!(
                std::fs::read(self.b.join("home").join(f)).unwrap(),
                f.as_bytes(),
                "{context}: {f}"
            );
        }
        self.check(acknowledged, context);
        let f1 = rsrc::read_header(&self.b.join("home/tree/d1/.rsrc/f1"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (&f1.type_code, &f1.creator),
            (b"TEXT", b"ttxt"),
            "{context}: type and creator travel"
        );
    }
}

/// Kill the move at each step; repair, check, finish, check; and (another time) run it again
/// at once, check, repair, check.
fn killed_at_each_step(across_file_systems: bool, user: Option<u32>, how: Repair, steps: &[&str]) {
    let where_ = if across_file_systems {
        "between file systems"
    } else {
        "on one file system"
    };
    for step in steps {
        let context = format!("killed at {step} ({where_}, as {user:?}), {how:?} repair");
        let mut scene = Scene::new(across_file_systems, user);
        scene.kill_move_at(step);
        // What B's desktop had acknowledged when dt died (objects registered before the kill
        // included) stays.
        let acknowledged = desktop_paths(&scene.b);
        scene.repair(how);
        scene.check(&acknowledged, &context);
        scene.finish(&context);

        let context = format!("killed at {step} ({where_}, as {user:?}), run again at once");
        let mut scene = Scene::new(across_file_systems, user);
        scene.kill_move_at(step);
        // finish() holds B's rows as they are now (after the kill) to what it leaves.
        scene.finish(&context);
        let finished = desktop_paths(&scene.b);
        scene.repair(how);
        scene.check_finished(&finished, &format!("{context}, then {how:?} repair"));
    }
}

/// On one file system the move is a rename: the steps before it, at it, and after.
const RENAME_STEPS: &[&str] = &[
    "record",
    "cleared",
    "landed",
    "registered:3",
    "registered",
    "forgotten",
];

/// Between file systems the move is a copy, then the source is removed.
const COPY_STEPS: &[&str] = &[
    "record",
    "landed",
    "aside",
    "source-removed",
    "registered:3",
    "forgotten",
];

#[test]
fn mv_killed_on_one_file_system_then_repaired_offline_gives_new_ids_only() {
    killed_at_each_step(false, None, Repair::Offline, RENAME_STEPS);
}

#[test]
fn mv_killed_on_one_file_system_then_repaired_online_gives_new_ids_only() {
    killed_at_each_step(false, None, Repair::Online, RENAME_STEPS);
}

#[test]
fn mv_killed_between_file_systems_then_repaired_offline_gives_new_ids_only() {
    killed_at_each_step(true, None, Repair::Offline, COPY_STEPS);
}

#[test]
fn mv_killed_between_file_systems_then_repaired_online_gives_new_ids_only() {
    killed_at_each_step(true, None, Repair::Online, COPY_STEPS);
}

#[test]
fn mv_killed_as_the_trees_owner_imports_no_foreign_id() {
    killed_at_each_step(
        false,
        Some(65534),
        Repair::Offline,
        &["landed", "registered:3"],
    );
    killed_at_each_step(false, Some(65534), Repair::Online, &["landed", "record"]);
    killed_at_each_step(true, Some(65534), Repair::Online, &["landed", "record"]);
}

#[test]
fn cp_killed_between_volumes_imports_no_foreign_id() {
    // A copy is a new object in B too; its resource files are written without A's IDs.
    for how in [Repair::Offline, Repair::Online] {
        let mut scene = Scene::new(false, Some(65534));
        scene.kill_copy_at("copied");
        let acknowledged = desktop_paths(&scene.b);
        scene.repair(how);
        scene.check(
            &acknowledged,
            &format!("dt cp killed after copying, {how:?} repair"),
        );
        assert_eq!(
            disk_objects(&scene.b, "home/tree").len(),
            TREE.len(),
            "the copy is all there"
        );
        // The original is whole in A, with A's IDs (check() saw to the IDs).
        assert_eq!(disk_objects(&scene.a, "home/tree").len(), TREE.len());
    }
}

#[test]
fn a_move_refused_for_want_of_permission_leaves_the_sources_ids_alone() {
    // A file-level copy of A's tree outside every volume (resource files and mirrors with A's
    // IDs: what a later `dt cp --keep-ids` restores from), owned by nobody, moved by nobody into
    // a directory of B nobody may not write: refused, and the copy's IDs are as they were.
    let scene = Scene::new(false, Some(65534));
    let outside = scene.env.path("outside");
    std::fs::create_dir(&outside).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(scene.a.join("home/tree"))
        .arg(&outside)
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&outside)
        .status()
        .unwrap();
    assert!(status.success());
    let carriers = |root: &Path| -> Vec<(String, u32, Option<u32>)> {
        let mut all = Vec::new();
        for rel in disk_objects(root, "tree") {
            let path = root.join(&rel);
            let record = rsrc::read_header(&rsrc::rsrc_path(&path).unwrap())
                .unwrap()
                .map_or(0, |h| h.id);
            all.push((rel, record, deskd_volume::read_id_xattr(&path)));
        }
        all
    };
    let before = carriers(&outside);
    assert!(
        before
            .iter()
            .filter(|(rel, ..)| rel != "tree")
            .all(|(_, id, _)| *id != 0),
        "{before:?}"
    );
    let target = scene.b.join("keep/tree");
    let out = scene
        .env
        .as_user(
            65534,
            DT,
            &[b"mv", bytes(&outside.join("tree")), bytes(&target)],
            &[],
        )
        .unwrap();
    assert!(!out.status.success(), "nobody may not write in B's keep/");
    assert!(!target.exists());
    assert_eq!(carriers(&outside), before);
}

#[test]
fn an_object_of_b_with_the_same_number_keeps_its_id_after_a_killed_mv() {
    // B gives an object the very number A gave the moved tree's f0, and that object has lost
    // its resource file and mirror (plain-Unix damage: nothing but B's desktop knows its ID).
    // A killed move must not let the arriving f0 take that number from it in B's repair.
    for how in [Repair::Offline, Repair::Online] {
        let mut scene = Scene::new(false, None);
        let wanted = scene.tree_in_a["home/tree/f0"];
        let fillers: Vec<String> = (desktop_counter(&scene.b) + 1..wanted)
            .map(|i| {
                scene
                    .b
                    .join(format!("keep/filler-{i}"))
                    .display()
                    .to_string()
            })
            .collect();
        let mut args: Vec<&[u8]> = vec![b"touch"];
        args.extend(fillers.iter().map(|p| p.as_bytes()));
        scene.env.dt_ok(&args);
        let victim = scene.b.join("keep/victim");
        scene.env.dt_ok(&[b"touch", bytes(&victim)]);
        assert_eq!(scene.env.id_of(&victim), wanted);
        std::fs::remove_file(scene.b.join("keep/.rsrc/victim")).unwrap();
        xattr::remove(&victim, deskd_volume::ID_XATTR).unwrap();
        let b_counter = desktop_counter(&scene.b);
        let before = desktop_paths(&scene.b);

        scene.kill_move_at("landed");
        scene.repair(how);
        let context = format!("killed at landed, {how:?} repair");
        let after = desktop_paths(&scene.b);
        for (path, id) in &before {
            assert_eq!(after.get(path), Some(id), "{context}: B's {path}");
        }
        for path in disk_objects(&scene.b, "home/tree") {
            let id = after[&path];
            assert!(id > b_counter, "{context}: {path} got {id}, not a new ID");
        }
    }
}
