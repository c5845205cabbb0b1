#!/usr/bin/env bash
# The server's memory with several clients, and what the mapping cap ([server] mmap_total)
# costs the clients, for docs/PERFORMANCE.md ("Memory"). One volume of DIRS x PER_DIR files
# (default 100 x 10,000 = 1,000,000) is registered once; then, for each setting of mmap_total,
# in turn within each run (the order alternating between runs):
#
#   - 4 clients pipelining resolves for SECONDS (deskd-bench throughput: ops/s),
#   - meanwhile a fifth client measures resolve and lookup latency one request at a time (it
#     connects after the four: under a cap it is the one left with pread),
#   - half-way through, `deskd status --json` gives RssAnon, RssFile, VmHWM (the peak so far)
#     and the desktop mappings (the status connection's own among them).
#
# Settings: "uncapped" (1TiB: every connection maps the whole desktop, as before the cap), the
# default (1GiB), 256MiB (the four clients' mappings cut to one and a half desktops at 1,000,000
# objects) and 0 (no read connection maps). Medians of RUNS; ratios against uncapped.
#
#   scripts/bench-memory.sh                         # 1,000,000 objects, about 5 minutes
#   DIRS=20 PER_DIR=10000 RUNS=3 scripts/bench-memory.sh
#   BENCH_DIR=/tmp/m REUSE=1 scripts/bench-memory.sh  # again on the volume an earlier run left
set -euo pipefail
cd "$(dirname "$0")/.."
DIRS=${DIRS:-100}
PER_DIR=${PER_DIR:-10000}
RUNS=${RUNS:-3}
SECONDS_EACH=${SECONDS_EACH:-8}
OPS=${OPS:-20000}
WORK=${BENCH_DIR:-$(mktemp -d /tmp/deskd-bench-memory.XXXXXX)}
VOL="$WORK/vol"
SOCK="$WORK/deskd.sock"
. scripts/bench-common.sh

cargo build --release --quiet -p deskd-cli --bins
BIN=target/release
bench() { "$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" "$@"; }
SERVER=
trap 'kill -9 $SERVER 2>/dev/null || true' EXIT
serve() { # MMAP_TOTAL LOG
    printf '[server]\nmmap_total = %s\n[volume."%s"]\n' "$1" "$VOL" >"$WORK/deskd.toml"
    : >"$2"
    "$BIN/deskd" serve --socket "$SOCK" --config "$WORK/deskd.toml" 2>>"$2" & SERVER=$!
    wait_for_line "$2" "deskd serving"
    wait_for_line "$2" "name index ready"
}
stop_server() { kill -TERM "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }

mkdir -p "$VOL"
if [ -n "${REUSE:-}" ] && [ -s "$VOL/.Desktop" ]; then
    echo "== reusing the volume of an earlier run in $VOL (REUSE=1)"
else
    echo "== populate and register $((DIRS * PER_DIR)) files in $VOL"
    bench populate --dirs "$DIRS" --per-dir "$PER_DIR"
    serve '"1TiB"' "$WORK/create.log"
    bench create --dirs "$DIRS" --per-dir "$PER_DIR" --clients 4
    "$BIN/deskd" flush --socket "$SOCK"
    stop_server
fi
echo "desktop: $(stat -c %s "$VOL/.Desktop") bytes"

SETTINGS=('"1TiB"' '"1GiB"' '"256MiB"' '0')
: >"$WORK/results.jsonl"
for run in $(seq "$RUNS"); do
    order=("${SETTINGS[@]}")
    [ $((run % 2)) = 1 ] || order=('0' '"256MiB"' '"1GiB"' '"1TiB"')
    for setting in "${order[@]}"; do
        serve "$setting" "$WORK/server.log"
        bench throughput --dirs "$DIRS" --per-dir "$PER_DIR" --clients 4 \
            --seconds "$SECONDS_EACH" >"$WORK/tps.json" &
        TPS=$!
        # The four connect and map first; the latency client comes fifth.
        sleep 1
        bench latency --dirs "$DIRS" --per-dir "$PER_DIR" --ops "$OPS" >"$WORK/lat.json" &
        LAT=$!
        # Half-way through the four clients' run, whatever the latency client has done.
        sleep "$((SECONDS_EACH / 2))"
        "$BIN/deskd" status --socket "$SOCK" --json >"$WORK/status.json"
        wait "$TPS" "$LAT"
        stop_server
        python3 - "$setting" "$run" "$WORK" >>"$WORK/results.jsonl" <<'PY'
import json, sys
setting, run, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lat = json.load(open(f"{work}/lat.json"))
tps = json.load(open(f"{work}/tps.json"))
status = json.loads(open(f"{work}/status.json").readline())
m, v = status["server_memory"], status["memory"]
print(json.dumps({"setting": setting.strip('"'), "run": run, **lat, "ops_per_s": tps["ops_per_s"],
                  "rss_anon": m["rss_anon_bytes"], "rss_file": m["rss_file_bytes"],
                  "vm_hwm": m["vm_hwm_bytes"], "mappings": v["mappings"],
                  "mapped_resident": m["mapped_resident_bytes"], "short": m["short_readers"],
                  "desktop": v["desktop_bytes"]}))
PY
        tail -1 "$WORK/results.jsonl"
    done
done

echo
echo "## Memory and mmap_total ($(date -u +%Y-%m-%d), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $((DIRS * PER_DIR)) objects, median of $RUNS)"
python3 - "$WORK/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
settings = ["1TiB", "1GiB", "256MiB", "0"]
med = lambda s, k: statistics.median(r[k] for r in rows if r["setting"] == s)
mib = lambda b: f"{b / 2**20:,.0f} MiB"
print(f"desktop: {mib(rows[0]['desktop'])}")
print("| mmap_total | VmHWM | RssAnon | RssFile | desktop mappings (resident) | resolve p50 / p99, 5th client | lookup p50 / p99 | 4-client resolves/s | p50 / uncapped | resolves/s / uncapped |")
print("|---|---|---|---|---|---|---|---|---|---|")
for s in settings:
    base_p50, base_tps = med("1TiB", "resolve_p50_us"), med("1TiB", "ops_per_s")
    name = {"1TiB": "1TiB (uncapped: as before)", "1GiB": "1GiB (default)", "256MiB": "256MiB", "0": "0"}[s]
    print(f"| {name} | {mib(med(s, 'vm_hwm'))} | {mib(med(s, 'rss_anon'))} | {mib(med(s, 'rss_file'))} "
          f"| {med(s, 'mappings'):.0f} ({mib(med(s, 'mapped_resident'))}) "
          f"| {med(s, 'resolve_p50_us'):.1f} / {med(s, 'resolve_p99_us'):.1f} µs "
          f"| {med(s, 'lookup_p50_us'):.1f} / {med(s, 'lookup_p99_us'):.1f} µs "
          f"| {med(s, 'ops_per_s'):,.0f} | {med(s, 'resolve_p50_us') / base_p50:.2f} "
          f"| {med(s, 'ops_per_s') / base_tps:.2f} |")
PY
echo "work directory: $WORK (remove it when done)"
