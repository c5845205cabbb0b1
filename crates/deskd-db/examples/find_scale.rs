//! How `find`'s candidate search grows with the volume (issue 29), in memory, no server and
//! no disk: the name index is built over the names `deskd-bench populate` gives a volume of
//! N objects (folders of 10,000; both take the names from `deskd_db::bench_names`), once
//! keeping trigram lists and once scanning only, and each pattern's candidates are timed on
//! both. Driven by scripts/bench-find-scale.sh; prints one
//! JSON object per size.

use std::time::Instant;

use anyhow::{ensure, Result};
use clap::Parser;
use deskd_db::{bench_names, FindMode, NameIndex};

#[derive(Parser)]
#[command(about = "Time the name index's candidate search at a given size, in memory")]
struct Cli {
    /// Objects in the volume (rounded up to whole folders).
    #[arg(long, default_value_t = 1_000_000)]
    names: u32,
    /// Files per folder.
    #[arg(long, default_value_t = 10_000)]
    per_dir: u32,
    /// Folders created side by side, their files' IDs interleaved one by one (as by
    /// `deskd-bench create`'s pipelining clients, each on its own folder; 1: one after another).
    #[arg(long, default_value_t = 4)]
    interleave: u32,
    /// Timed runs of each pattern (p50 reported).
    #[arg(long, default_value_t = 51)]
    runs: u32,
    /// Substring patterns.
    #[arg(required = true)]
    patterns: Vec<String>,
}

/// `(id, search key)` in ID order: each group of `interleave` folders, then their files in turn.
fn keys(cli: &Cli) -> Vec<(u32, String)> {
    let dirs = cli.names.div_ceil(cli.per_dir);
    let mut out = Vec::with_capacity((dirs * (cli.per_dir + 1)) as usize);
    let mut id = 16;
    let mut next = || {
        id += 1;
        id
    };
    for group in (0..dirs).step_by(cli.interleave as usize) {
        let folders: Vec<u32> = (group..(group + cli.interleave).min(dirs)).collect();
        for &d in &folders {
            out.push((next(), bench_names::dir_name(d)));
        }
        for f in 0..cli.per_dir {
            for &d in &folders {
                out.push((
                    next(),
                    deskd_db::names::search_key(bench_names::file_name(d, f).as_bytes()),
                ));
            }
        }
    }
    out
}

fn p50(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// One index's figures.
struct Measured {
    /// Until the index answers (by scanning).
    load_ms: f64,
    /// The trigram lists' build after that (0 for a scan-only index).
    trigrams_ms: f64,
    heap_bytes: u64,
    /// Per pattern: p50 ms, hits.
    patterns: Vec<(f64, usize)>,
    /// p50 of every run of every pattern (as `deskd-bench find` reports it).
    p50_ms: f64,
}

/// Build one index and time every pattern on it.
fn measure(index: NameIndex, keys: &[(u32, String)], cli: &Cli) -> Measured {
    let began = Instant::now();
    index.load_keys(keys.iter().map(|(id, k)| (*id, k.as_str())));
    let load_ms = began.elapsed().as_secs_f64() * 1e3;
    let began = Instant::now();
    index.index_trigrams();
    let trigrams_ms = began.elapsed().as_secs_f64() * 1e3;
    let mut every = Vec::new();
    let patterns = cli
        .patterns
        .iter()
        .map(|p| {
            let mut hits = 0;
            let times = (0..cli.runs)
                .map(|_| {
                    let t = Instant::now();
                    hits = index.candidates(FindMode::Substring, p, 0).unwrap().len();
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect::<Vec<f64>>();
            every.extend_from_slice(&times);
            (p50(times), hits)
        })
        .collect();
    Measured {
        load_ms,
        trigrams_ms,
        heap_bytes: index.heap_bytes(),
        patterns,
        p50_ms: p50(every),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    ensure!(
        cli.per_dir > 0 && cli.interleave > 0 && cli.runs > 0,
        "sizes must be positive"
    );
    let keys = keys(&cli);
    let names = keys.len() as f64;
    let key_bytes: usize = keys.iter().map(|(_, k)| k.len()).sum();
    let scan = measure(NameIndex::scan_only(), &keys, &cli);
    let grams = measure(NameIndex::new(), &keys, &cli);
    let patterns: Vec<_> = cli
        .patterns
        .iter()
        .zip(scan.patterns.iter().zip(&grams.patterns))
        .map(|(p, (&(scan_ms, scan_hits), &(grams_ms, grams_hits)))| {
            assert_eq!(scan_hits, grams_hits, "{p}: both ways find the same names");
            serde_json::json!({"pattern": p, "hits": grams_hits, "scan_ms": scan_ms, "trigram_ms": grams_ms})
        })
        .collect();
    let figures = |m: &Measured| {
        serde_json::json!({
            "load_ms": m.load_ms,
            "trigrams_ms": m.trigrams_ms,
            "heap_bytes_per_name": m.heap_bytes as f64 / names,
            "p50_ms": m.p50_ms,
        })
    };
    println!(
        "{}",
        serde_json::json!({
            "names": keys.len(),
            "key_bytes_per_name": key_bytes as f64 / names,
            "scan": figures(&scan),
            "trigram": figures(&grams),
            "trigram_lists_bytes_per_name": (grams.heap_bytes - scan.heap_bytes) as f64 / names,
            "patterns": patterns,
        })
    );
    Ok(())
}
