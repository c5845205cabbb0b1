//! Big replies and many of them: the entries of a big directory and the difference lines of a
//! rebuild of a big volume reach the client whole (a reply over the 1 MiB request limit used to
//! be dropped, and the client waited for its timeout), and a client that sends all its requests
//! before it reads a reply is answered without stalling anyone (the server used to stop reading
//! while it waited to write, and both sides waited for each other).

mod common;
use common::*;

#[test]
fn a_directory_of_20000_long_names_lists_with_ids() {
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    std::fs::create_dir(env.path("vol/big")).unwrap();
    let names: Vec<String> = (0..20_000)
        .map(|i| {
            format!("big/a-name-long-enough-that-twenty-thousand-overflow-one-mebibyte-{i:05}")
        })
        .collect();
    make_and_register(&env, "vol", &names);
    let out = env.dt(&[b"--timeout", b"20", b"ls", b"-l", b"vol/big"]);
    let err = stderr(&out);
    assert!(
        out.status.success() && !err.contains("without IDs"),
        "{err}"
    );
    let listing = String::from_utf8(out.stdout).unwrap();
    // ls -l's "total" line, then one line per entry.
    let (total, listing) = listing.split_once('\n').unwrap();
    assert!(total.starts_with("total "), "{total}");
    assert_eq!(listing.lines().count(), 20_000);
    // A reader that stops early ends the listing quietly, as with ls(1).
    let piped = env
        .command_for(
            "sh",
            &[b"-c", format!("{DT} ls -l vol/big | head -1").as_bytes()],
        )
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&piped.stdout).lines().count(), 1);
    assert_eq!(stderr(&piped), "", "no broken-pipe error");
    // Every line has an ID (the 9th column, after ls -l's own), not "-".
    let id_of = |l: &str| l.split_whitespace().nth(8).unwrap().parse::<u32>();
    assert!(
        listing.lines().all(|l| id_of(l).is_ok()),
        "{}",
        listing.lines().find(|l| id_of(l).is_err()).unwrap_or("")
    );
}

#[test]
fn an_online_scan_with_more_lines_than_one_reply_holds_prints_them_all() {
    let mut env = Env::new(&["vol"]);
    // Not watched: the files must stay unknown to the server for the scan to report them.
    env.serve_unwatched(&["vol"]);
    std::fs::create_dir(env.path("vol/plain")).unwrap();
    // Files made without dt: each is new, lacks its resource file and its mirror.
    for i in 0..12_000 {
        std::fs::write(env.path(&format!("vol/plain/file-{i:05}")), b"").unwrap();
    }
    let vol = env.path("vol");
    let out = env.deskd(&["--timeout", "20", "rebuild", "-s", vol.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let summary = stderr(&out);
    let lines = String::from_utf8(out.stdout).unwrap();
    assert!(summary.contains("online"), "{summary}");
    // Every object has its "new" line, and no line is sent twice.
    let new: std::collections::HashSet<&str> =
        lines.lines().filter(|l| l.starts_with("new ")).collect();
    assert_eq!(new.len(), 12_001, "{summary}");
    assert!(lines.lines().count() > 30_000, "{summary}");
    let total = lines.lines().count();
    let unique: std::collections::HashSet<&str> = lines.lines().collect();
    assert_eq!(unique.len(), total, "a line came twice");
    // The repair, which shows no lines, ends too.
    let out = env.deskd(&["--timeout", "20", "rebuild", vol.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.deskd(&["--timeout", "20", "rebuild", "-s", vol.to_str().unwrap()]);
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_client_that_sends_everything_before_reading_is_answered_and_stalls_nobody() {
    use deskd_client::{Request, Response};
    let mut env = Env::new(&["vol"]);
    env.serve(&["vol"]);
    std::fs::create_dir(env.path("vol/many")).unwrap();
    let names: Vec<String> = (0..20_000).map(|i| format!("many/f{i:05}")).collect();
    for n in &names {
        std::fs::write(env.path(&format!("vol/{n}")), b"").unwrap();
    }
    let mut a = env.client();
    let vol = a.open_volume(&env.path("vol")).unwrap().vol;
    // Writes and reads, all sent before a single reply is read: megabytes of replies, far more
    // than the socket holds. Each send would time out (10 s) if the server stopped reading.
    let mut ids = Vec::new();
    for n in &names {
        ids.push(
            a.send(Request::AddPath {
                vol,
                path: n.clone().into_bytes(),
                hint: None,
                type_code: None,
                creator: None,
                carried: None,
            })
            .unwrap(),
        );
        ids.push(a.send(Request::Resolve { vol, id: 2 }).unwrap());
    }
    a.flush().unwrap();
    // Meanwhile the volume's writer goes on for everyone else.
    env.dt_ok(&[b"--timeout", b"10", b"touch", b"vol/someone-else"]);
    for id in ids {
        match a.wait(id).unwrap() {
            Response::Object(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        sqlite3(&env.path("vol/.Desktop"), "SELECT count(*) FROM objects"),
        "20003"
    );
}
