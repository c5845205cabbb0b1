//! `deskd find` answered from the name index's trigram lists (issue 29): names made, renamed
//! and removed after the index is ready are found under their current names only, in every
//! mode, exactly as a test of each name would find them; and equal names next to each other in
//! the index are all found by an exact search.

mod common;
use common::*;

fn lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(|l| l.to_string()).collect();
    v.sort();
    v
}

const WORDS: [&str; 4] = ["invoice", "photo", "draft", "scan"];

/// Relative paths of the files: enough names for many blocks of the trigram lists.
fn names() -> Vec<String> {
    let mut out = Vec::new();
    for d in 0..3 {
        for f in 0..120 {
            out.push(format!(
                "vol/d{d}/{}-{d:02}-{}-{f:04}.dat",
                WORDS[f % 4],
                WORDS[(f / 4) % 4]
            ));
        }
    }
    out
}

#[test]
fn the_trigram_lists_follow_every_change_and_find_what_a_scan_finds() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    // The lists are built after the index answers: from here on every change goes through them.
    env.wait_for_log("name index trigram lists ready", 1);
    env.dt_ok(&[
        b"mkdir", b"vol/d0", b"vol/d1", b"vol/d2", b"vol/a", b"vol/b",
    ]);
    let mut files = names();
    for chunk in files.chunks(60) {
        let mut args: Vec<&[u8]> = vec![b"touch"];
        args.extend(chunk.iter().map(|p| p.as_bytes()));
        env.dt_ok(&args);
    }
    // Two equal names in one request: adjacent entries of the index.
    env.dt_ok(&[b"touch", b"vol/a/README.txt", b"vol/b/readme.TXT"]);
    env.dt_ok(&[
        b"mv",
        b"vol/d1/photo-01-photo-0021.dat",
        b"vol/d1/Renamed Quarterly.pdf",
    ]);
    env.dt_ok(&[b"rm", b"vol/d2/draft-02-invoice-0002.dat"]);
    files.retain(|p| {
        !p.ends_with("photo-01-photo-0021.dat") && !p.ends_with("draft-02-invoice-0002.dat")
    });
    files.push("vol/d1/Renamed Quarterly.pdf".into());
    let vol = env.path("vol").display().to_string();
    let root = env
        .path("vol")
        .canonicalize()
        .unwrap()
        .display()
        .to_string();
    let full = |rel: &str| format!("{root}/{}", rel.strip_prefix("vol/").unwrap());

    let exact = lines(&env.deskd_ok(&["find", "--exact", "readme.txt"]));
    assert_eq!(
        exact,
        vec![full("vol/a/README.txt"), full("vol/b/readme.TXT")]
    );

    // Each mode against a test of every file name (folded as find folds: lower case).
    let base = |p: &String| p.rsplit('/').next().unwrap().to_lowercase();
    type Test = fn(&str) -> bool;
    let cases: [(&[&str], Test); 7] = [
        (&["invoice-01"], |n| n.contains("invoice-01")),
        (&["-scan-00"], |n| n.contains("-scan-00")),
        (&["PHOTO-02-DRAFT"], |n| n.contains("photo-02-draft")),
        (&["--prefix", "draft-00-ph"], |n| {
            n.starts_with("draft-00-ph")
        }),
        (&["*-invoice-011?.dat"], |n| {
            n.rfind("-invoice-011")
                .is_some_and(|at| n.len() - at == "-invoice-011x.dat".len())
                && n.ends_with(".dat")
        }),
        (&["quarterly"], |n| n.contains("quarterly")),
        (&["photo-0021"], |n| n.contains("photo-0021")),
    ];
    for (args, test) in cases {
        let mut want: Vec<String> = files
            .iter()
            .filter(|p| test(&base(p)))
            .map(|p| full(p))
            .collect();
        want.sort();
        let mut cmd = vec!["find", "--volume", vol.as_str(), "--limit", "1000"];
        let (pattern, options) = args.split_last().unwrap();
        cmd.extend_from_slice(options);
        cmd.extend(["--", pattern]);
        assert_eq!(lines(&env.deskd_ok(&cmd)), want, "{args:?}");
    }
    // The renamed and removed names are gone; the new name is found.
    assert!(env
        .deskd_ok(&["find", "--exact", "photo-01-photo-0021.dat"])
        .is_empty());
    assert!(env.deskd_ok(&["find", "draft-02-invoice-0002"]).is_empty());
}
