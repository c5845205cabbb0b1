//! `deskd-bench`: load generators for docs/PERFORMANCE.md, driven by `scripts/bench.sh`.
//! Each subcommand prints one JSON object with its measurements.

#![forbid(unsafe_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use clap::{Parser, Subcommand};
use deskd_client::{Client, FindMode, Request, Response};
use deskd_db::bench_names;

#[derive(Parser)]
#[command(
    name = "deskd-bench",
    about = "Benchmarks for deskd (see scripts/bench.sh)"
)]
struct Cli {
    /// Socket path, or tcp://HOST:PORT (token from $DESKD_TOKEN_FILE).
    #[arg(long)]
    socket: PathBuf,
    /// The volume root (every subcommand but the echo pair).
    #[arg(long)]
    volume: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// The populated tree: DIRS directories of PER_DIR files each.
#[derive(clap::Args, Clone, Copy)]
struct Shape {
    #[arg(long)]
    dirs: u32,
    #[arg(long)]
    per_dir: u32,
}

#[derive(Subcommand)]
enum Command {
    /// Create DIRS×PER_DIR empty files on disk (untimed set-up) and time nothing.
    Populate {
        #[command(flatten)]
        shape: Shape,
        /// Live tracking's floor (issue 23): while creating, the volume's file system carries
        /// a fanotify mark of the watcher's kind whose events a thread reads and throws away
        /// (needs root): the creation rate no watcher can beat.
        #[arg(long)]
        fanotify_floor: bool,
    },
    /// Register every populated file through CLIENTS pipelining clients (ID creation rate).
    Create {
        #[command(flatten)]
        shape: Shape,
        #[arg(long, default_value_t = 4)]
        clients: u32,
        #[arg(long, default_value_t = 64)]
        depth: usize,
        /// Register only share I of N of the folders (I/N: folders whose number modulo N is I),
        /// so that N processes, each talking to its own server of one volume, split the files.
        #[arg(long, default_value = "0/1")]
        share: String,
    },
    /// One client, one request at a time: resolve and lookup latency percentiles.
    Latency {
        #[command(flatten)]
        shape: Shape,
        #[arg(long, default_value_t = 20000)]
        ops: u32,
        /// Then also time OPS prepared `SELECT 1`s to this PostgreSQL (a `postgresql://` URL,
        /// no password) from this process: the bare round trip a resolve of a volume in
        /// PostgreSQL cannot go below (issue 28), measured in the same run.
        #[arg(long)]
        pg_floor: Option<String>,
        /// Run the same OPS resolves (the same IDs, in the same order) this many times: after
        /// a server's restart the first pass is cold (its caches empty) and the next warm.
        /// `resolve_p50_us_by_pass` gives each pass's p50; the other figures are the first's
        /// (only the first has a `Lookup` after each resolve).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10))]
        passes: u32,
    },
    /// One client, one request at a time, in the open folder DIR: resolve of its files by
    /// ID and AddPath of them by path (already registered: the path is walked and checked,
    /// nothing new is recorded). Latency percentiles of both.
    /// With --base-socket and --base-volume, blocks of 100 steps alternate between this server
    /// and that one (another build's), so both are measured under the same load.
    AccessLatency {
        #[arg(long)]
        dir: String,
        #[arg(long, default_value_t = 5000)]
        ops: u32,
        #[arg(long, requires = "base_volume")]
        base_socket: Option<PathBuf>,
        #[arg(long)]
        base_volume: Option<PathBuf>,
    },
    /// CLIENTS clients pipelining DEPTH resolve/lookup requests each for SECONDS.
    Throughput {
        #[command(flatten)]
        shape: Shape,
        #[arg(long, default_value_t = 4)]
        clients: u32,
        #[arg(long, default_value_t = 64)]
        depth: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Substring find queries through one client: per-query latency.
    Find {
        #[arg(long, default_value_t = 7)]
        runs: u32,
        patterns: Vec<String>,
    },
    /// Test helper (hostile tests): open COUNT connections to --socket and hold them, the
    /// first HALF_FRAMES of those accepted with half a request frame sent. Prints one JSON
    /// line (accepted, refused, the first refusal) at once, then holds them until stdin is
    /// closed or SECONDS pass.
    Hold {
        #[arg(long)]
        count: u32,
        #[arg(long, default_value_t = 0)]
        half_frames: u32,
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
    },
    /// Serve a bare echo on --socket (16-byte messages): the floor for a round trip.
    EchoServer,
    /// Round trips against echo-server: p50/p99 of a bare Unix-socket exchange.
    EchoClient {
        #[arg(long, default_value_t = 20000)]
        ops: u32,
    },
    /// Like `latency`, through `deskd netatalk` at ADDR: RESOLVE and GET as afpd sends them.
    NetatalkLatency {
        #[command(flatten)]
        shape: Shape,
        #[arg(long, default_value_t = 20000)]
        ops: u32,
        #[arg(long)]
        addr: String,
        /// Also create this many files, one at a time, in a new folder, each registered with an
        /// ADD as afpd sends it after creating a file (the ADD's latency: a write).
        #[arg(long, default_value_t = 0)]
        adds: u32,
        /// Also make lantest's folder tree (its test 7): in a new folder, 10 folders, 10 in
        /// each and 10 in each of those (1,110), each registered with an ADD as afpd sends it
        /// after FPCreateDir (the ADD's latency: a write whose parent is 1 to 3 folders deep).
        #[arg(long)]
        tree: bool,
        /// Wait this long after making each folder of the tree before its ADD (afpd's own
        /// work between two ADDs: a server that does work after its reply, as cnid_dbd
        /// fdatasyncs its log, then has it done before the next ADD is timed).
        #[arg(long, default_value_t = 0)]
        pause_us: u64,
    },
    /// Time from now until the server answers a resolve (run right after starting it).
    FirstAnswer {
        #[arg(long, default_value_t = 17)]
        id: u32,
    },
    /// One client resolving IDs 17..=MAX_ID one at a time for SECONDS, reconnecting whenever
    /// the server goes away: the longest time between two answers, as a client sees a reload
    /// or a restart in that time.
    Stall {
        #[arg(long)]
        max_id: u32,
        #[arg(long, default_value_t = 4.0)]
        seconds: f64,
    },
    /// Live tracking (issue 23): rename the registered children of DIR (relative to the volume;
    /// "" for the root) with plain rename(2), as any program would, up to COUNT of them, at
    /// RATE renames a second (0: back to back). With --wait, after each rename poll the server
    /// (resolve by ID) until the desktop shows the new name: the lag of each rename. Each name
    /// gets ".r" appended, or taken off when it has one, so runs can repeat.
    WatchLag {
        #[arg(long, default_value = "")]
        dir: String,
        #[arg(long, default_value_t = u32::MAX)]
        count: u32,
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        #[arg(long)]
        wait: bool,
        /// Give up on a rename the desktop has not shown after this many seconds.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// Ask for the server's metrics (`deskd metrics`) COUNT times, waiting INTERVAL_MS between
    /// two (0: back to back), or every INTERVAL_MS for SECONDS: the time of each scrape, round
    /// trip included, and the text's size.
    Scrape {
        #[arg(long, default_value_t = 200)]
        count: u32,
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        /// Scrape for this long instead of COUNT times.
        #[arg(long)]
        seconds: Option<f64>,
    },
}

/// Connect to `--socket`: a socket path, or `tcp://HOST:PORT` with the token of
/// `$DESKD_TOKEN_FILE`.
fn connect(socket: &Path) -> Result<Client> {
    deskd_cli::connection::ServerAddress {
        endpoint: deskd_proto::Endpoint::parse(socket.as_os_str()),
        chosen_by: deskd_cli::connection::SocketChoice::Option,
        token_file: std::env::var_os("DESKD_TOKEN_FILE").map(Into::into),
        timeout: Duration::from_secs(120),
    }
    .connect()
    .map_err(|e| anyhow!("{e}"))
}

/// One server's open folder for `access-latency`, and the times measured against it.
struct AccessTarget {
    client: Client,
    vol: u32,
    dir: String,
    files: Vec<deskd_client::ObjectInfo>,
    resolve: Vec<f64>,
    add_path: Vec<f64>,
}

impl AccessTarget {
    fn open(socket: &Path, root: &Path, dir: &str) -> Result<AccessTarget> {
        let mut client = connect(socket)?;
        let vol = client.open_volume(root).map_err(|e| anyhow!("{e}"))?.vol;
        let folder = client
            .maybe_object(Request::LookupPath {
                vol,
                path: dir.as_bytes().to_vec(),
            })
            .map_err(|e| anyhow!("{e}"))?
            .ok_or_else(|| anyhow!("{dir}: not registered"))?;
        let files = client
            .objects(Request::Children {
                vol,
                dir: folder.id,
            })
            .map_err(|e| anyhow!("{e}"))?;
        anyhow::ensure!(!files.is_empty(), "{dir}: no registered files");
        Ok(AccessTarget {
            client,
            vol,
            dir: dir.to_owned(),
            files,
            resolve: Vec::new(),
            add_path: Vec::new(),
        })
    }

    /// One resolve of a file by ID, then one AddPath of a file by path (both picked by `a`, `b`).
    fn step(&mut self, a: u64, b: u64) -> Result<()> {
        let vol = self.vol;
        let file = &self.files[(a % self.files.len() as u64) as usize];
        let t = Instant::now();
        self.client
            .object(Request::Resolve { vol, id: file.id })
            .map_err(|e| anyhow!("resolve: {e}"))?;
        self.resolve.push(t.elapsed().as_secs_f64() * 1e6);
        let mut path = self.dir.clone().into_bytes();
        path.push(b'/');
        path.extend_from_slice(&self.files[(b % self.files.len() as u64) as usize].name);
        let t = Instant::now();
        self.client
            .object(Request::add_path(vol, path))
            .map_err(|e| anyhow!("add path: {e}"))?;
        self.add_path.push(t.elapsed().as_secs_f64() * 1e6);
        Ok(())
    }
}

/// The same pseudo-random sequence (xorshift64) for every run, so runs compare.
fn xorshift() -> impl FnMut() -> u64 {
    let mut rng = 0x2545F4914F6CDD1Du64;
    move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::EchoServer => return echo_server(&cli.socket),
        Command::EchoClient { ops } => return echo_client(&cli.socket, ops),
        Command::Hold {
            count,
            half_frames,
            seconds,
        } => return hold(&cli.socket, count, half_frames, seconds),
        Command::Scrape {
            count,
            interval_ms,
            seconds,
        } => return scrape(&cli.socket, count, interval_ms, seconds),
        _ => {}
    }
    let root = cli
        .volume
        .as_ref()
        .ok_or_else(|| anyhow!("--volume is required"))?
        .canonicalize()?;
    match cli.command {
        Command::EchoServer
        | Command::EchoClient { .. }
        | Command::Hold { .. }
        | Command::Scrape { .. } => {
            unreachable!("handled above")
        }
        Command::WatchLag {
            dir,
            count,
            rate,
            wait,
            timeout,
        } => watch_lag(&cli.socket, &root, &dir, count, rate, wait, timeout)?,
        Command::Populate {
            shape: Shape { dirs, per_dir },
            fanotify_floor,
        } => {
            let floor = fanotify_floor
                .then(|| deskd_watch::Floor::start(&root))
                .transpose()?;
            let t = Instant::now();
            for d in 0..dirs {
                let dir = root.join(bench_names::dir_name(d));
                std::fs::create_dir_all(&dir)?;
                for f in 0..per_dir {
                    std::fs::File::create(dir.join(bench_names::file_name(d, f)))?;
                }
            }
            let populate_s = t.elapsed().as_secs_f64();
            let event_bytes = floor.map(deskd_watch::Floor::stop);
            println!(
                "{}",
                serde_json::json!({"populate_s": populate_s, "files": dirs * per_dir,
                    "floor_event_bytes": event_bytes})
            );
        }
        Command::Create {
            shape: Shape { dirs, per_dir },
            clients,
            depth,
            share,
        } => {
            let (part, parts) = share
                .split_once('/')
                .and_then(|(i, n)| Some((i.parse::<u32>().ok()?, n.parse::<u32>().ok()?)))
                .filter(|&(i, n)| n > 0 && i < n)
                .ok_or_else(|| anyhow!("--share is I/N with I < N, not {share:?}"))?;
            let mine: std::sync::Arc<Vec<u32>> =
                std::sync::Arc::new((0..dirs).filter(|d| d % parts == part).collect());
            let started = Instant::now();
            let started_unix = unix_now();
            let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let total = (mine.len() as u64) * (per_dir as u64);
            // Sample the acknowledged count every 250 ms to see whether the rate holds up; told
            // when the clients are done, so its wait never delays the end of the run (several
            // runs' start and end times are compared: the two servers of bench-pg.sh).
            let (done, finished) = std::sync::mpsc::channel::<()>();
            let sampler = {
                let acked = acked.clone();
                std::thread::spawn(move || {
                    let mut samples = vec![(0.0f64, 0u64)];
                    loop {
                        let over = !matches!(
                            finished.recv_timeout(Duration::from_millis(250)),
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                        );
                        let n = acked.load(std::sync::atomic::Ordering::Relaxed);
                        samples.push((started.elapsed().as_secs_f64(), n));
                        if over || n >= total {
                            return samples;
                        }
                    }
                })
            };
            let mut threads = Vec::new();
            for c in 0..clients {
                let (socket, root, acked) = (cli.socket.clone(), root.clone(), acked.clone());
                let mine = mine.clone();
                threads.push(std::thread::spawn(move || -> Result<()> {
                    let mut client = connect(&socket)?;
                    let vol = client.open_volume(&root).map_err(|e| anyhow!("{e}"))?.vol;

                    for &d in mine.iter().skip(c as usize).step_by(clients as usize) {
                        let dir = client
                            .object(Request::AddPath {
                                vol,
                                path: bench_names::dir_name(d).into_bytes(),
                                hint: None,
                                type_code: None,
                                creator: None,
                                carried: None,
                            })
                            .map_err(|e| anyhow!("{e}"))?;
                        let dir_path = root.join(bench_names::dir_name(d));
                        let mut inflight = std::collections::VecDeque::new();
                        for f in 0..per_dir {
                            let n = bench_names::file_name(d, f);
                            let meta = std::fs::symlink_metadata(dir_path.join(&n))?;
                            let id = client
                                .send(Request::Add {
                                    vol,
                                    parent: dir.id,
                                    name: n.into_bytes(),
                                    dev: meta.dev(),
                                    ino: meta.ino(),
                                    hint: None,
                                    type_code: None,
                                    creator: None,
                                    carried: None,
                                })
                                .map_err(|e| anyhow!("{e}"))?;
                            inflight.push_back(id);
                            if inflight.len() >= depth {
                                client.flush().map_err(|e| anyhow!("{e}"))?;
                                let id = inflight.pop_front().unwrap();
                                client.wait(id).map_err(|e| anyhow!("{e}"))?;
                                acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        client.flush().map_err(|e| anyhow!("{e}"))?;
                        while let Some(id) = inflight.pop_front() {
                            client.wait(id).map_err(|e| anyhow!("{e}"))?;
                            acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    Ok(())
                }));
            }
            for t in threads {
                t.join().map_err(|_| anyhow!("thread panicked"))??;
            }
            let secs = started.elapsed().as_secs_f64();
            let ended_unix = unix_now();
            let _ = done.send(());
            let samples = sampler.join().map_err(|_| anyhow!("sampler panicked"))?;
            // Slowest one-second window, and the rate over the last tenth of the objects.
            let mut slowest = f64::MAX;
            for (i, &(t0, n0)) in samples.iter().enumerate() {
                if let Some(&(t1, n1)) = samples[i..].iter().find(|(t, _)| *t >= t0 + 1.0) {
                    slowest = slowest.min((n1 - n0) as f64 / (t1 - t0));
                }
            }
            let tail_from = samples
                .iter()
                .find(|(_, n)| *n >= total * 9 / 10)
                .copied()
                .unwrap_or((0.0, 0));
            let mean = total as f64 / secs;
            // Runs shorter than a sampling period have no windows: report the mean there.
            let tail_rate = if tail_from.0 < secs && tail_from.1 < total {
                (total - tail_from.1) as f64 / (secs - tail_from.0)
            } else {
                mean
            };
            println!(
                "{}",
                serde_json::json!({
                    "objects": total, "seconds": secs, "objects_per_s": mean,
                    "started_unix_s": started_unix, "ended_unix_s": ended_unix,
                    "slowest_1s_window_per_s": if slowest == f64::MAX { mean } else { slowest },
                    "last_10pct_per_s": tail_rate,
                })
            );
        }
        Command::NetatalkLatency {
            shape: Shape { dirs, per_dir },
            ops,
            addr,
            adds,
            tree,
            pause_us,
        } => {
            use deskd_netatalk::wire;
            use std::io::Write as _;
            use std::os::unix::fs::MetadataExt as _;
            let mut s = std::net::TcpStream::connect(&addr)?;
            s.set_nodelay(true)?;
            s.write_all(&wire::encode_handshake(&wire::Handshake {
                volume_name: b"bench".to_vec(),
                volume_path: root.as_os_str().as_encoded_bytes().to_vec(),
                user: Vec::new(),
            }))?;
            let mut call = |op: i32, cnid: u32, did: u32, name: Vec<u8>| -> Result<wire::Reply> {
                s.write_all(&wire::encode_request(&wire::Request::new(
                    op, cnid, did, &name,
                )))?;
                Ok(wire::read_reply(&mut s)?)
            };
            let max_id = 17 + dirs * (per_dir + 1);
            let mut next = xorshift();
            let mut resolve = Vec::with_capacity(ops as usize);
            let mut get = Vec::with_capacity(ops as usize);
            for _ in 0..ops {
                let id = 17 + (next() % (max_id as u64 - 17)) as u32;
                let t = Instant::now();
                let r = call(wire::op::RESOLVE, id, 0, Vec::new())?;
                resolve.push(t.elapsed().as_secs_f64() * 1e6);
                if r.result == wire::res::OK && r.payload.len() > 29 {
                    let name = r.payload[28..r.payload.len() - 1].to_vec();
                    let t = Instant::now();
                    call(wire::op::GET, 0, r.did, name)?;
                    get.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            // ADDs as afpd sends them after FPCreateFile: the file exists, its dev/ino given.
            let mut add = Vec::with_capacity(adds as usize);
            let mut add_again = Vec::with_capacity(adds as usize);
            if adds > 0 {
                let folder_name = format!("bench-adds-{}", std::process::id());
                let folder = root.join(&folder_name);
                std::fs::create_dir(&folder)?;
                let meta = std::fs::metadata(&folder)?;
                let mut add_call = |did: u32, name: &str, meta: &std::fs::Metadata, kind: u32| {
                    let mut q = wire::Request::new(wire::op::ADD, 0, did, name.as_bytes());
                    (q.dev, q.ino, q.kind) = (meta.dev(), meta.ino(), kind);
                    s.write_all(&wire::encode_request(&q))?;
                    let r = wire::read_reply(&mut s)?;
                    anyhow::ensure!(r.result == wire::res::OK, "ADD {name}: result {}", r.result);
                    Ok::<u32, anyhow::Error>(r.cnid)
                };
                // afpd's did of the volume root is 2.
                let did = add_call(2, &folder_name, &meta, 1)?;
                for i in 0..adds {
                    let name = format!("file-{i:06}");
                    let path = folder.join(&name);
                    std::fs::File::create(&path)?;
                    let meta = std::fs::metadata(&path)?;
                    let t = Instant::now();
                    add_call(did, &name, &meta, 0)?;
                    add.push(t.elapsed().as_secs_f64() * 1e6);
                }
                // afpd sends ADD again for an object it already registered (get_id() on every
                // FPGetFileDirParams): answered with the same ID, nothing to write.
                for i in 0..adds {
                    let name = format!("file-{i:06}");
                    let meta = std::fs::metadata(folder.join(&name))?;
                    let t = Instant::now();
                    add_call(did, &name, &meta, 0)?;
                    add_again.push(t.elapsed().as_secs_f64() * 1e6);
                }
                add.sort_by(f64::total_cmp);
                add_again.sort_by(f64::total_cmp);
            }
            // lantest's "Create directory tree": FPCreateDir 10 x 10 x 10 deep, one ADD each.
            let mut tree_add = Vec::new();
            if tree {
                let top_name = format!("bench-tree-{}", std::process::id());
                let top = root.join(&top_name);
                let mut add_dir = |did: u32, path: &Path, name: &str| -> Result<(u32, f64)> {
                    std::fs::create_dir(path)?;
                    let meta = std::fs::metadata(path)?;
                    if pause_us > 0 {
                        std::thread::sleep(std::time::Duration::from_micros(pause_us));
                    }
                    let mut q = wire::Request::new(wire::op::ADD, 0, did, name.as_bytes());
                    (q.dev, q.ino, q.kind) = (meta.dev(), meta.ino(), 1);
                    let t = Instant::now();
                    s.write_all(&wire::encode_request(&q))?;
                    let r = wire::read_reply(&mut s)?;
                    let took = t.elapsed().as_secs_f64() * 1e6;
                    anyhow::ensure!(r.result == wire::res::OK, "ADD {name}: result {}", r.result);
                    Ok((r.cnid, took))
                };
                let (top_id, _) = add_dir(2, &top, &top_name)?;
                let name = |n: usize| format!("dir{:02}", n + 1);
                for i in 0..10 {
                    let a = top.join(name(i));
                    let (a_id, took) = add_dir(top_id, &a, &name(i))?;
                    tree_add.push(took);
                    for j in 0..10 {
                        let b = a.join(name(j));
                        let (b_id, took) = add_dir(a_id, &b, &name(j))?;
                        tree_add.push(took);
                        for k in 0..10 {
                            let (_, took) = add_dir(b_id, &b.join(name(k)), &name(k))?;
                            tree_add.push(took);
                        }
                    }
                }
                tree_add.sort_by(f64::total_cmp);
            }
            resolve.sort_by(f64::total_cmp);
            get.sort_by(f64::total_cmp);
            let mut figures = serde_json::json!({});
            // `--ops 0` times only the ADDs (e.g. against Netatalk's own cnid_metad, whose
            // volume holds nothing to resolve).
            if ops > 0 {
                anyhow::ensure!(
                    !get.is_empty(),
                    "no object resolved: is the volume registered?"
                );
                figures = serde_json::json!({
                    "resolve_p50_us": percentile(&resolve, 0.5), "resolve_p99_us": percentile(&resolve, 0.99),
                    "get_p50_us": percentile(&get, 0.5), "get_p99_us": percentile(&get, 0.99),
                });
            }
            if !add.is_empty() {
                figures["add_p50_us"] = percentile(&add, 0.5).into();
                figures["add_p99_us"] = percentile(&add, 0.99).into();
                figures["add_again_p50_us"] = percentile(&add_again, 0.5).into();
                figures["add_again_p99_us"] = percentile(&add_again, 0.99).into();
            }
            if !tree_add.is_empty() {
                figures["tree_add_p50_us"] = percentile(&tree_add, 0.5).into();
                figures["tree_add_p99_us"] = percentile(&tree_add, 0.99).into();
                figures["tree_add_mean_us"] =
                    (tree_add.iter().sum::<f64>() / tree_add.len() as f64).into();
            }
            println!("{figures}");
        }
        Command::Latency {
            shape: Shape { dirs, per_dir },
            ops,
            pg_floor,
            passes,
        } => {
            let mut floor_db = match pg_floor {
                Some(target) => {
                    let mut db = deskd_pg::connect(&deskd_pg::ConnectOptions {
                        target,
                        password: deskd_pg::PasswordSource::None,
                    })?;
                    let select = db.prepare("SELECT 1")?;
                    Some((db, select))
                }
                None => None,
            };
            let mut floor = Vec::with_capacity(if floor_db.is_some() { ops as usize } else { 0 });
            let mut client = connect(&cli.socket)?;
            let vol = client.open_volume(&root).map_err(|e| anyhow!("{e}"))?.vol;
            let max_id = 17 + dirs * (per_dir + 1);
            let mut resolve = Vec::with_capacity(ops as usize);
            let mut lookup = Vec::with_capacity(ops as usize);
            let mut by_pass = Vec::new();
            for pass in 0..passes {
                // The same IDs each pass: a later pass asks what the first made the server hold.
                let mut next = xorshift();
                let mut times = Vec::with_capacity(ops as usize);
                for _ in 0..ops {
                    let id = 17 + (next() % (max_id as u64 - 17)) as u32;
                    let t = Instant::now();
                    let o = client.object(Request::Resolve { vol, id });
                    times.push(t.elapsed().as_secs_f64() * 1e6);
                    if let (Ok(o), 0) = (o, pass) {
                        let t = Instant::now();
                        client
                            .maybe_object(Request::Lookup {
                                vol,
                                parent: o.parent,
                                name: o.name,
                            })
                            .map_err(|e| anyhow!("{e}"))?;
                        lookup.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                }
                times.sort_by(f64::total_cmp);
                by_pass.push(percentile(&times, 0.5));
                if pass == 0 {
                    resolve = times;
                }
            }
            // After the requests, not between them: interleaved, it slowed SQLite's resolve
            // (10 to 14 µs), the very figure the floor is added to.
            if let Some((db, select)) = floor_db.as_mut() {
                for _ in 0..ops {
                    let t = Instant::now();
                    db.query_one(&*select, &[])?;
                    floor.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            lookup.sort_by(f64::total_cmp);
            floor.sort_by(f64::total_cmp);
            let mut figures = serde_json::json!({
                "resolve_p50_us": percentile(&resolve, 0.5), "resolve_p99_us": percentile(&resolve, 0.99),
                "lookup_p50_us": percentile(&lookup, 0.5), "lookup_p99_us": percentile(&lookup, 0.99),
                "resolve_p50_us_by_pass": by_pass,
            });
            if !floor.is_empty() {
                figures["pg_select1_p50_us"] = percentile(&floor, 0.5).into();
                figures["pg_select1_p99_us"] = percentile(&floor, 0.99).into();
            }
            println!("{figures}");
        }
        Command::AccessLatency {
            dir,
            ops,
            base_socket,
            base_volume,
        } => {
            let mut targets = vec![AccessTarget::open(&cli.socket, &root, &dir)?];
            if let (Some(socket), Some(volume)) = (base_socket, base_volume) {
                targets.push(AccessTarget::open(&socket, &volume.canonicalize()?, &dir)?);
            }
            let mut next = xorshift();
            // In blocks: a request to the other server between two of this one's would let
            // this one's connection stop spinning and sleep, which is not what one client sees.
            const BLOCK: u32 = 100;
            for _ in 0..ops.div_ceil(BLOCK) {
                for target in &mut targets {
                    for _ in 0..BLOCK {
                        target.step(next(), next())?;
                    }
                }
            }
            let mut out = serde_json::Map::new();
            for (target, prefix) in targets.iter_mut().zip(["", "base_"]) {
                target.resolve.sort_by(f64::total_cmp);
                target.add_path.sort_by(f64::total_cmp);
                for (what, times) in [("resolve", &target.resolve), ("addpath", &target.add_path)] {
                    out.insert(
                        format!("{prefix}{what}_p50_us"),
                        percentile(times, 0.5).into(),
                    );
                    out.insert(
                        format!("{prefix}{what}_p99_us"),
                        percentile(times, 0.99).into(),
                    );
                }
            }
            println!("{}", serde_json::Value::Object(out));
        }
        Command::Throughput {
            shape: Shape { dirs, per_dir },
            clients,
            depth,
            seconds,
        } => {
            let max_id = 17 + dirs * (per_dir + 1);
            let deadline = Instant::now() + Duration::from_secs_f64(seconds);
            let started = Instant::now();
            let mut threads = Vec::new();
            for c in 0..clients {
                let (socket, root) = (cli.socket.clone(), root.clone());
                threads.push(std::thread::spawn(move || -> Result<u64> {
                    let mut client = connect(&socket)?;
                    let vol = client.open_volume(&root).map_err(|e| anyhow!("{e}"))?.vol;
                    let mut done = 0u64;
                    let mut i = c as u64 * 7919;
                    while Instant::now() < deadline {
                        let mut ids = Vec::with_capacity(depth);
                        for _ in 0..depth {
                            i = i
                                .wrapping_mul(6364136223846793005)
                                .wrapping_add(1442695040888963407);
                            let id = 17 + ((i >> 33) % (max_id as u64 - 17)) as u32;
                            ids.push(
                                client
                                    .send(Request::Resolve { vol, id })
                                    .map_err(|e| anyhow!("{e}"))?,
                            );
                        }
                        client.flush().map_err(|e| anyhow!("{e}"))?;
                        for id in ids {
                            let _ = client.wait(id);
                            done += 1;
                        }
                    }
                    Ok(done)
                }));
            }
            let mut total = 0;
            for t in threads {
                total += t.join().map_err(|_| anyhow!("thread panicked"))??;
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({"ops": total, "seconds": secs, "ops_per_s": total as f64 / secs})
            );
        }
        Command::Find { runs, patterns } => {
            let mut client = connect(&cli.socket)?;
            let vol = client.open_volume(&root).map_err(|e| anyhow!("{e}"))?.vol;
            let mut times = Vec::new();
            let mut hits = Vec::new();
            for p in &patterns {
                let mut count = 0;
                for _ in 0..runs {
                    let t = Instant::now();
                    let mut after_id = 0;
                    count = 0;
                    loop {
                        let page = match client
                            .call(Request::Find {
                                vol,
                                pattern: p.clone(),
                                mode: FindMode::Substring,
                                limit: 10_000,
                                after_id,
                            })
                            .map_err(|e| anyhow!("{e}"))?
                        {
                            Response::Objects(o) => o,
                            other => return Err(anyhow!("unexpected {other:?}")),
                        };
                        count += page.len();
                        match page.last() {
                            Some(last) if page.len() == 10_000 => after_id = last.id,
                            _ => break,
                        }
                    }
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
                hits.push(serde_json::json!({"pattern": p, "hits": count}));
            }
            times.sort_by(f64::total_cmp);
            println!(
                "{}",
                serde_json::json!({"find_p50_ms": percentile(&times, 0.5), "find_max_ms": times.last(), "queries": hits})
            );
        }
        Command::Stall { max_id, seconds } => {
            let deadline = Instant::now() + Duration::from_secs_f64(seconds);
            let (mut answers, mut refusals, mut reconnects) = (0u64, 0u64, 0u64);
            let mut longest = Duration::ZERO;
            let mut last_answer = Instant::now();
            let mut next = 17u32;
            'connection: while Instant::now() < deadline {
                let Ok(mut client) = Client::connect(&cli.socket, Duration::from_secs(10)) else {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                };
                let Ok(vol) = client.open_volume(&root) else {
                    continue;
                };
                while Instant::now() < deadline {
                    match client.object(Request::Resolve {
                        vol: vol.vol,
                        id: next,
                    }) {
                        Ok(_) => {
                            longest = longest.max(last_answer.elapsed());
                            last_answer = Instant::now();
                            answers += 1;
                            next = if next >= max_id { 17 } else { next + 1 };
                        }
                        Err(e) if e.code().is_some() => refusals += 1,
                        Err(_) => {
                            reconnects += 1;
                            continue 'connection;
                        }
                    }
                }
            }
            println!(
                "{}",
                serde_json::json!({"longest_wait_ms": longest.as_secs_f64() * 1e3,
                    "answers": answers, "refusals": refusals, "reconnects": reconnects})
            );
        }
        Command::FirstAnswer { id } => {
            let t = Instant::now();
            loop {
                if let Ok(mut c) = Client::connect(&cli.socket, Duration::from_secs(10)) {
                    if let Ok(v) = c.open_volume(&root) {
                        if c.object(Request::Resolve { vol: v.vol, id }).is_ok() {
                            break;
                        }
                    }
                }
                if t.elapsed() > Duration::from_secs(60) {
                    return Err(anyhow!("no answer within 60 s"));
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            println!(
                "{}",
                serde_json::json!({"first_answer_ms": t.elapsed().as_secs_f64() * 1e3})
            );
        }
    }
    Ok(())
}

/// `hold`: a bounded flood of connections, some stalled in the middle of a frame.
fn hold(socket: &Path, count: u32, half_frames: u32, seconds: f64) -> Result<()> {
    use std::io::{Read, Write};
    let mut held = Vec::new();
    let (mut refused, mut failed) = (0u32, 0u32);
    let mut refusal: Option<String> = None;
    for _ in 0..count.min(10_000) {
        let stream = std::os::unix::net::UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        match deskd_proto::transport::client_handshake(&stream, None) {
            Ok(()) => held.push(stream),
            Err(deskd_proto::ProtoError::Refused(why)) => {
                refused += 1;
                refusal.get_or_insert(format!("deskd refused the connection: {why}"));
            }
            Err(_) => failed += 1,
        }
    }
    for mut stream in held.iter().take(half_frames as usize) {
        // A length of 100 bytes, then 10 of them.
        stream.write_all(&100u32.to_be_bytes())?;
        stream.write_all(&[0u8; 10])?;
    }
    println!(
        "{}",
        serde_json::json!({"accepted": held.len(), "refused": refused, "failed": failed,
            "refusal": refusal})
    );
    std::io::stdout().flush()?;
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = done.send(());
    });
    let _ = wait.recv_timeout(Duration::from_secs_f64(seconds.min(600.0)));
    Ok(())
}

fn echo_server(socket: &Path) -> Result<()> {
    use std::io::{Read, Write};
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket)?;
    for stream in listener.incoming() {
        let mut stream = stream?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            while stream.read_exact(&mut buf).is_ok() {
                if stream.write_all(&buf).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

fn echo_client(socket: &Path, ops: u32) -> Result<()> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut buf = [7u8; 16];
    let mut times = Vec::with_capacity(ops as usize);
    for _ in 0..ops {
        let t = Instant::now();
        stream.write_all(&buf)?;
        stream.read_exact(&mut buf)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({"echo_p50_us": percentile(&times, 0.5), "echo_p99_us": percentile(&times, 0.99)})
    );
    Ok(())
}

/// `scrape`: ask for the metrics text COUNT times (or for SECONDS), INTERVAL_MS apart; the
/// scrape times' median, 99th percentile and maximum in milliseconds, and the text's size.
fn scrape(socket: &Path, count: u32, interval_ms: u64, seconds: Option<f64>) -> Result<()> {
    let mut client = connect(socket)?;
    let began = Instant::now();
    let mut times = Vec::new();
    let mut bytes = 0;
    loop {
        let done = match seconds {
            Some(s) => began.elapsed().as_secs_f64() >= s,
            None => times.len() as u32 >= count,
        };
        if done {
            break;
        }
        let t = Instant::now();
        bytes = client.metrics().map_err(|e| anyhow!("{e}"))?.len();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(interval_ms));
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "{}",
        serde_json::json!({
            "scrapes": times.len(),
            "p50_ms": at(0.5),
            "p99_ms": at(0.99),
            "max_ms": at(1.0),
            "bytes": bytes,
        })
    );
    Ok(())
}

/// The new name of a `watch-lag` rename: ".r" appended, or taken off.
fn toggled_name(name: &[u8]) -> Vec<u8> {
    match name.strip_suffix(b".r") {
        Some(base) => base.to_vec(),
        None => [name, b".r"].concat(),
    }
}

/// `watch-lag`: plain renames of DIR's registered children, paced at `rate` a second, each
/// optionally followed by polling until the desktop shows it.
fn watch_lag(
    socket: &Path,
    root: &Path,
    dir: &str,
    count: u32,
    rate: f64,
    wait: bool,
    timeout: f64,
) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let mut client = connect(socket)?;
    let vol = client.open_volume(root).map_err(|e| anyhow!("{e}"))?.vol;
    let folder_id = if dir.is_empty() {
        2
    } else {
        client
            .maybe_object(Request::LookupPath {
                vol,
                path: dir.as_bytes().to_vec(),
            })
            .map_err(|e| anyhow!("{e}"))?
            .ok_or_else(|| anyhow!("{dir}: not registered"))?
            .id
    };
    let mut children = client
        .objects(Request::Children {
            vol,
            dir: folder_id,
        })
        .map_err(|e| anyhow!("{e}"))?;
    children.truncate(count as usize);
    anyhow::ensure!(!children.is_empty(), "{dir}: no registered children");
    let folder = root.join(dir);
    let pace = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let mut lags_ms = Vec::with_capacity(children.len());
    let started = Instant::now();
    for (i, child) in children.iter().enumerate() {
        if let Some(pace) = pace {
            let due = started + pace * i as u32;
            if let Some(ahead) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(ahead);
            }
        }
        let new_name = toggled_name(&child.name);
        std::fs::rename(
            folder.join(std::ffi::OsStr::from_bytes(&child.name)),
            folder.join(std::ffi::OsStr::from_bytes(&new_name)),
        )?;
        if !wait {
            continue;
        }
        let renamed = Instant::now();
        loop {
            let now = client
                .object(Request::Resolve { vol, id: child.id })
                .map_err(|e| anyhow!("resolve {}: {e}", child.id))?;
            if now.name == new_name {
                break;
            }
            anyhow::ensure!(
                renamed.elapsed().as_secs_f64() < timeout,
                "ID {}: the desktop did not show its rename within {timeout} s",
                child.id
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        lags_ms.push(renamed.elapsed().as_secs_f64() * 1e3);
    }
    let seconds = started.elapsed().as_secs_f64();
    lags_ms.sort_by(f64::total_cmp);
    let (p50, p99, max) = match lags_ms.last() {
        Some(&max) => (percentile(&lags_ms, 0.5), percentile(&lags_ms, 0.99), max),
        None => (0.0, 0.0, 0.0),
    };
    println!(
        "{}",
        serde_json::json!({
            "renames": children.len(),
            "seconds": seconds,
            "rate": children.len() as f64 / seconds,
            "lag_p50_ms": p50,
            "lag_p99_ms": p99,
            "lag_max_ms": max,
        })
    );
    Ok(())
}

/// Seconds since the Unix epoch: runs in several processes are placed on one clock.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
