//! What reading events costs the watcher: events inside the volume (placed, reported) and
//! events elsewhere on the same file system (which a filesystem mark also sees and the
//! watcher must drop). Run as root (fanotify):
//!
//! ```sh
//! cargo run --release -p deskd-watch --example watch_cost -- [fanotify|inotify] [FILES]
//! ```
//!
//! It makes FILES files in 100 directories, renames them and deletes them, first inside the
//! watched root, then in a sibling directory outside it, and prints the watcher's time per
//! event for each (the time spent in `drain_now`, which reads, places, filters and coalesces).

use std::fs;
use std::time::{Duration, Instant};

use deskd_watch::{Started, WatchMode, WatchOptions, Watcher};

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = match args.next().as_deref() {
        None | Some("fanotify") => WatchMode::Fanotify,
        Some("inotify") => WatchMode::Inotify,
        Some(other) => panic!("unknown mode {other}"),
    };
    let files: usize = args.next().map(|n| n.parse().unwrap()).unwrap_or(20_000);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("vol");
    let outside = tmp.path().join("outside");
    for base in [&root, &outside] {
        for d in 0..100 {
            fs::create_dir_all(base.join(format!("d{d}"))).unwrap();
        }
    }
    let mut watcher = match Watcher::start(&root, mode, WatchOptions::default()).unwrap() {
        Started::Watching(w, _) => w,
        Started::Off(why) => panic!("{why}"),
    };
    println!(
        "watcher: {:?}, {files} files x 3 operations",
        watcher.kind()
    );
    for (label, base) in [("inside", &root), ("outside", &outside)] {
        let mut spent = Duration::ZERO;
        let mut reported = 0usize;
        let steps: [&dyn Fn(usize); 3] = [
            &|i| fs::write(base.join(format!("d{}/f{i}", i % 100)), b"x").unwrap(),
            &|i| {
                let d = base.join(format!("d{}", i % 100));
                fs::rename(d.join(format!("f{i}")), d.join(format!("g{i}"))).unwrap()
            },
            &|i| fs::remove_file(base.join(format!("d{}/g{i}", i % 100))).unwrap(),
        ];
        for step in steps {
            for chunk in (0..files).collect::<Vec<_>>().chunks(1000) {
                for &i in chunk {
                    step(i);
                }
                let t = Instant::now();
                loop {
                    let batch = watcher.drain_now().unwrap();
                    assert!(!batch.overflow, "overflow: use fewer files per chunk");
                    reported += batch.changes.len();
                    if batch.oldest.is_none() && batch.changes.is_empty() {
                        break;
                    }
                }
                spent += t.elapsed();
            }
        }
        let events = files * 3;
        println!(
            "{label:8} {events} events: {:.2} µs per event ({} changes reported)",
            spent.as_secs_f64() * 1e6 / events as f64,
            reported
        );
    }
}
