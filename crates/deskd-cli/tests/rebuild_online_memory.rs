//! Issue 29 for the online rebuild: a server's memory during and after a `rebuild -s` and a
//! repair job of a served volume (docs/ARCHITECTURE.md, "Rebuild memory"; at 1M objects
//! scripts/bench-rebuild-memory.sh measures it with `ONLINE=1`).
//!
//! The server's figures come from its `/proc/PID/status`: `RssAnon` before and after a job,
//! and the peak (`VmHWM`, reset through `/proc/PID/clear_refs` before each job). What does not
//! grow with the volume (threads, caches of fixed size) is left out by measuring two volumes,
//! 10,000 and 100,000 files, and dividing the difference by the difference in objects.

mod common;

use std::path::Path;

use common::{stdout, Env};

/// `dirs` folders of `per_dir` files each below `vol`, with a desktop, resource files and
/// mirrors everywhere (made offline, before the volume is served).
fn volume_of(env: &Env, dirs: usize, per_dir: usize) -> usize {
    common::files_registered_offline(env, dirs, per_dir)
}

/// A field of `/proc/PID/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

/// What one online job did to the server's memory, in bytes.
#[derive(Debug, Clone, Copy)]
struct JobMemory {
    /// Peak resident memory during the job above the resident memory before it.
    peak_growth: u64,
    /// Anonymous memory still held after the job above what was held before it.
    kept: u64,
}

/// Run `deskd rebuild ARGS` against the Env's server (online) and measure it.
fn online_job(env: &Env, args: &[&str]) -> JobMemory {
    let pid = env.server.as_ref().unwrap().id();
    // 5: reset the peak resident memory (VmHWM) to the current one.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let (rss_before, anon_before) = (status_bytes(pid, "VmRSS"), status_bytes(pid, "RssAnon"));
    let mut all = vec!["rebuild"];
    all.extend_from_slice(args);
    all.push("vol");
    let out = env.deskd(&all);
    assert_eq!(
        out.status.code(),
        Some(0),
        "rebuild {args:?}: {}",
        stdout(&out)
    );
    JobMemory {
        peak_growth: status_bytes(pid, "VmHWM").saturating_sub(rss_before),
        kept: status_bytes(pid, "RssAnon").saturating_sub(anon_before),
    }
}

/// Serve the Env's volume and wait until its name index is loaded (its load would count as
/// the job's).
fn serve_settled(env: &mut Env) {
    let root = env.path("vol");
    env.serve(&[root.to_str().unwrap()]);
    env.wait_for_log("name index ready", 1);
}

/// Bytes an object between the small and the big volume.
fn per_object(small: u64, big: u64, objects: (usize, usize)) -> u64 {
    big.saturating_sub(small) / (objects.1 - objects.0) as u64
}

/// Issue 29: an online `rebuild -s` and a repair job (nothing to repair) grow the server by at
/// most 300 bytes an object at their peak, and give what they allocated back when they end.
/// Before glibc's mmap threshold was fixed and the arenas trimmed after a job (the server's
/// allocator.rs), a 1M-object `-s` grew the server by some 315 bytes an object and kept about
/// 100 of them after the job. At this test's 100,000 objects the peak does not tell the two
/// apart (217 bytes an object before, 191 after); what is kept does (34 before; 5 for `-s`
/// and 13 for the repair after).
#[test]
fn online_jobs_grow_the_server_by_at_most_300_bytes_an_object_and_give_it_back() {
    let (mut small, mut big) = (Env::new(&["vol"]), Env::new(&["vol"]));
    let objects = (volume_of(&small, 10, 1000), volume_of(&big, 100, 1000));
    assert_eq!(objects, (10_011, 100_101));
    serve_settled(&mut small);
    serve_settled(&mut big);
    for (mode, args) in [("scan", &["-s"][..]), ("repair", &[][..])] {
        let (s, b) = (online_job(&small, args), online_job(&big, args));
        let peak = per_object(s.peak_growth, b.peak_growth, objects);
        let kept = per_object(s.kept, b.kept, objects);
        eprintln!("{mode}: small {s:?}, big {b:?}: peak {peak} B/object, kept {kept} B/object");
        assert!(
            peak <= 300,
            "{mode}: the peak grew by {peak} bytes an object"
        );
        assert!(
            kept <= 25,
            "{mode}: {kept} bytes an object kept after the job"
        );
    }
    assert!(big.log_text().contains("online rebuild done"));
    assert!(Path::new(&big.path("vol/.Desktop")).exists());
}
