//! `deskd find`: prefix, substring and glob, case-insensitive, NFC and NFD alike, never a
//! protected name.

mod common;
use common::*;

/// The physical path of a directory of the test, as find prints it.
fn canonical(env: &Env, rel: &str) -> String {
    env.path(rel).canonicalize().unwrap().display().to_string()
}

fn lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(|l| l.to_string()).collect();
    v.sort();
    v
}

#[test]
fn find_matches_prefix_substring_glob_case_and_normalisation() {
    let mut env = Env::new(&["vol", "other"]);
    env.serve(&["vol", "other"]);
    env.dt_ok(&[b"mkdir", b"-p", b"vol/Projects/2024"]);
    for name in [
        "Report Final.PDF",
        "report-draft.pdf",
        "Caf\u{e9} Menu.txt",
        "notes.txt",
    ] {
        let p = format!("vol/Projects/2024/{name}");
        env.dt_ok(&[b"touch", p.as_bytes()]);
    }
    env.dt_ok(&[
        b"touch",
        "vol/Cafe\u{301} NFD.doc".as_bytes(),
        b"other/report-other.pdf",
    ]);
    let root = canonical(&env, "vol");
    let other = canonical(&env, "other");
    let vol = env.path("vol").display().to_string();

    // Substring, case-insensitive, across all volumes by default.
    let out = lines(&env.deskd_ok(&["find", "REPORT"]));
    assert_eq!(
        out,
        vec![
            format!("{other}/report-other.pdf"),
            format!("{root}/Projects/2024/Report Final.PDF"),
            format!("{root}/Projects/2024/report-draft.pdf"),
        ]
    );
    // --volume restricts; --prefix anchors.
    assert_eq!(
        lines(&env.deskd_ok(&["find", "--volume", &vol, "port"])).len(),
        2
    );
    assert_eq!(
        lines(&env.deskd_ok(&["find", "--volume", &vol, "--prefix", "port"])).len(),
        0
    );
    assert_eq!(
        lines(&env.deskd_ok(&["find", "--volume", &vol, "--prefix", "rEp"])).len(),
        2
    );
    // Globs (automatic when the pattern has * ? [).
    assert_eq!(
        lines(&env.deskd_ok(&["find", "--volume", &vol, "*.pdf"])),
        vec![
            format!("{root}/Projects/2024/Report Final.PDF"),
            format!("{root}/Projects/2024/report-draft.pdf")
        ]
    );
    assert_eq!(
        lines(&env.deskd_ok(&["find", "--volume", &vol, "report?draft.*"])).len(),
        1
    );
    assert_eq!(
        lines(&env.deskd_ok(&["find", "--volume", &vol, "[nN]otes.txt"])).len(),
        1
    );
    assert_eq!(
        lines(&env.deskd_ok(&["find", "--volume", &vol, "--exact", "NOTES.TXT"])).len(),
        1
    );
    // NFC pattern finds the NFD name and vice versa.
    let nfc = lines(&env.deskd_ok(&["find", "caf\u{e9}"]));
    let nfd = lines(&env.deskd_ok(&["find", "CAFE\u{301}"]));
    assert_eq!(nfc.len(), 2, "{nfc:?}");
    assert_eq!(nfc, nfd);
    // Protected names never appear.
    for p in [".Desktop", "desktop", ".rsrc", "rsrc", "*"] {
        let out = env.deskd_ok(&["find", p]);
        assert!(
            !out.contains(".Desktop") && !out.contains(".rsrc"),
            "{p}: {out}"
        );
    }
    // --json and --limit.
    let json = env.deskd_ok(&["find", "--json", "--limit", "1", "report"]);
    assert_eq!(json.lines().count(), 1);
    let v: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    for key in ["path", "id", "parent_id", "name", "kind", "volume"] {
        assert!(!v[key].is_null(), "{key}");
    }
    // Renames are reflected at once.
    env.dt_ok(&[
        b"mv",
        b"vol/Projects/2024/notes.txt",
        b"vol/Projects/2024/minutes.txt",
    ]);
    assert!(env.deskd_ok(&["find", "notes"]).is_empty());
    assert_eq!(lines(&env.deskd_ok(&["find", "minutes"])).len(), 1);
}

#[test]
fn find_pages_through_many_results() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    std::fs::create_dir(env.path("vol/many")).unwrap();
    let mut paths = Vec::new();
    for i in 0..12_000 {
        let p = env.path(&format!("vol/many/item-{i:05}"));
        std::fs::write(&p, b"").unwrap();
        paths.push(p);
    }
    // Register them through one pipelined client, as a file server would.
    let mut c = env.client();
    let vol = c.open_volume(&env.path("vol")).unwrap().vol;
    let names: Vec<String> = (0..12_000).map(|i| format!("many/item-{i:05}")).collect();
    register_pipelined(&mut c, vol, &names);
    let out = env.deskd_ok(&["find", "item-"]);
    assert_eq!(
        out.lines().count(),
        12_000,
        "more than one page (5,000) comes back whole"
    );
}

#[test]
fn brackets_in_names_and_bad_globs_and_limits() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    for name in ["vol/[draft notes.txt", "vol/Photo [1].jpg", "vol/1"] {
        env.dt_ok(&[b"touch", name.as_bytes()]);
    }
    let root = canonical(&env, "vol");
    // An unclosed '[' cannot be a glob: the name part is looked for as written.
    assert_eq!(
        lines(&env.deskd_ok(&["find", "[draft"])),
        [format!("{root}/[draft notes.txt")]
    );
    // A closed class is a glob; "[[]" is a literal '['.
    assert_eq!(
        lines(&env.deskd_ok(&["find", "*[[]1]*"])),
        [format!("{root}/Photo [1].jpg")]
    );
    assert_eq!(
        lines(&env.deskd_ok(&["find", "[1]"])),
        [format!("{root}/1")]
    );
    // Asked for as a glob, an unclosed '[' is an error that says so, not an empty answer.
    let out = env.deskd(&["find", "--glob", "[draft"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("has no closing ']'"),
        "{}",
        stderr(&out)
    );
    // --limit 0 is a usage error (it used to print one match).
    let out = env.deskd(&["find", "--limit", "0", "Photo"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        lines(&env.deskd_ok(&["find", "--limit", "1", "o"])).len(),
        1
    );
}
