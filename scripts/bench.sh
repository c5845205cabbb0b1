#!/usr/bin/env bash
# Benchmarks for docs/PERFORMANCE.md. Builds release binaries, makes a volume of DIRS x PER_DIR
# files (default 100 x 10,000 = 1,000,000), serves it, and measures deskd against the tools a
# user would otherwise use, in the same run: file creation on disk, stat(2), plocate.
#
#   scripts/bench.sh                      # full run (1,000,000 objects; about 10 minutes)
#   DIRS=10 PER_DIR=10000 scripts/bench.sh  # quicker
#
# With BASE naming a directory that holds another build's `deskd` (such as main's
# target/release), only the three numbers a change must keep are measured, for this build's
# server and for BASE's in the same run, on the same files: ID creation rate, resolve p50 (one
# client) and pipelined resolve throughput (4 clients). Each run serves the volume with both
# servers in turn (alternating which goes first), each from a fresh desktop; medians of RUNS.
#
#   git worktree add /tmp/base main && (cd /tmp/base && cargo build --release -p deskd-cli)
#   BASE=/tmp/base/target/release DIRS=10 PER_DIR=10000 scripts/bench.sh
#
# BASE_OWN_CLIENT=1: the base server's client is BASE's own deskd-bench (needed when the two
# builds speak different protocol versions; the clients then differ too).
set -euo pipefail
cd "$(dirname "$0")/.."
DIRS=${DIRS:-100}
PER_DIR=${PER_DIR:-10000}
RUNS=${RUNS:-5}
WORK=${BENCH_DIR:-$(mktemp -d /tmp/deskd-bench.XXXXXX)}
VOL="$WORK/vol"
SOCK="$WORK/deskd.sock"

need=()
for tool in plocate hyperfine sqlite3; do command -v $tool >/dev/null || need+=($tool); done
if [ ${#need[@]} -gt 0 ]; then apt-get update -q && apt-get install -y -q "${need[@]}"; fi

cargo build --release --quiet
BIN=target/release
# The client binaries; in BASE mode with BASE_OWN_CLIENT=1 the base server gets BASE's own (for a
# base that speaks another protocol version, which refuses this build's client).
CLIENT=$BIN
bench() { "$CLIENT/deskd-bench" --socket "$SOCK" --volume "$VOL" "$@"; }
DEPTH=${DEPTH:-1024}
. scripts/bench-common.sh
jget() { python3 -c "import json,sys; print(json.loads(sys.stdin.read())['$1'])"; }
SERVER=
start_server() { "$BIN/deskd" serve --socket "$SOCK" "$VOL" 2>>"$WORK/server.log" & SERVER=$!; }
stop_server() { kill -TERM "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }
trap 'kill -9 $SERVER 2>/dev/null || true' EXIT

mkdir -p "$VOL"
echo "== populate $((DIRS * PER_DIR)) files in $VOL (this is the file-creation anchor)"
POP=$(bench populate --dirs "$DIRS" --per-dir "$PER_DIR")
echo "$POP"
# Let the kernel write the new files back first, so ID creation is not measured against it.
sync
if [ -n "${BASE:-}" ]; then
    [ -x "$BASE/deskd" ] || { echo "bench.sh: no deskd in BASE=$BASE" >&2; exit 1; }
    declare -A CREATED=() P50=() TPS=()
    serve_fresh() { # DESKD LOG: a fresh desktop, served by DESKD
        rm -f "$VOL"/.Desktop "$VOL"/.Desktop-wal "$VOL"/.Desktop-shm
        : >"$2"
        "$1" serve --socket "$SOCK" "$VOL" 2>>"$2" & SERVER=$!
        wait_for_line "$2" "deskd serving"
    }
    for i in $(seq "$RUNS"); do
        order="this base"
        [ $((i % 2)) = 1 ] || order="base this"
        for server in $order; do
            deskd=$BIN/deskd
            CLIENT=$BIN
            [ "$server" = this ] || deskd=$BASE/deskd
            [ "$server" = this ] || [ -z "${BASE_OWN_CLIENT:-}" ] || CLIENT=$BASE
            serve_fresh "$deskd" "$WORK/server-$server.log"
            created=$(bench create --dirs "$DIRS" --per-dir "$PER_DIR" --clients 4 --depth "$DEPTH" | jget objects_per_s)
            CREATED[$server]+="$created "
            "$CLIENT/deskd" flush --socket "$SOCK" >/dev/null
            P50[$server]+="$(bench latency --dirs "$DIRS" --per-dir "$PER_DIR" --ops 20000 | jget resolve_p50_us) "
            TPS[$server]+="$(bench throughput --dirs "$DIRS" --per-dir "$PER_DIR" --clients 4 --seconds 3 | jget ops_per_s) "
            stop_server
            echo "run $i $server: $created objects/s created"
        done
    done
    echo
    echo "## This build against BASE ($BASE), same run ($(date -u +%Y-%m-%d), $(nproc) cores, $((DIRS * PER_DIR)) objects, median of $RUNS)"
    echo "| measure | this build | base | this / base | median of the runs' own ratios |"
    echo "|---|---|---|---|---|"
    row() { # NAME UNIT THIS_VALUES BASE_VALUES
        # The last column pairs the two servers of each run (measured back to back), so a burst
        # of outside load that hits both of a run's measurements cancels out.
        python3 - "$@" <<'PY'
import statistics, sys
name, unit, this, base = sys.argv[1:5]
this, base = [float(v) for v in this.split()], [float(v) for v in base.split()]
paired = statistics.median(t / b for t, b in zip(this, base))
t, b = statistics.median(this), statistics.median(base)
print(f"| {name} | {t:,.1f} {unit} | {b:,.1f} {unit} | {t / b:.3f} | {paired:.3f} |")
PY
    }
    row "ID creation, 4 clients pipelining $DEPTH" "objects/s" "${CREATED[this]}" "${CREATED[base]}"
    row "resolve p50, 1 client" "µs" "${P50[this]}" "${P50[base]}"
    row "resolve, 4 pipelining clients" "ops/s" "${TPS[this]}" "${TPS[base]}"
    echo "work directory: $WORK (remove it when done)"
    exit 0
fi
CREATE_RUNS=${CREATE_RUNS:-3}
echo "== ID creation, 4 clients pipelining $DEPTH requests each (median of $CREATE_RUNS fresh desktops)"
CREATES=()
for i in $(seq "$CREATE_RUNS"); do
    rm -f "$VOL"/.Desktop "$VOL"/.Desktop-wal "$VOL"/.Desktop-shm
    start_server
    sleep 0.5
    CREATES+=("$(bench create --dirs "$DIRS" --per-dir "$PER_DIR" --clients 4 --depth "$DEPTH")")
    echo "${CREATES[-1]}"
    [ "$i" = "$CREATE_RUNS" ] || stop_server
done
CREATE=$(printf '%s\n' "${CREATES[@]}" | python3 -c "
import json, sys
runs = sorted((json.loads(l) for l in sys.stdin if l.strip()), key=lambda r: r['objects_per_s'])
print(json.dumps(runs[len(runs) // 2]))")
"$BIN/deskd" flush --socket "$SOCK"

echo "== resolve/lookup latency, one client (median of $RUNS runs)"
LAT=()
for i in $(seq "$RUNS"); do LAT+=("$(bench latency --dirs "$DIRS" --per-dir "$PER_DIR" --ops 20000)"); done
printf '%s\n' "${LAT[@]}"
echo "== bare Unix-socket echo between two processes (the round-trip floor; median of $RUNS runs)"
"$BIN/deskd-bench" --socket "$WORK/echo.sock" echo-server & ECHO=$!
sleep 0.3
ECHO_RUNS=()
for i in $(seq "$RUNS"); do ECHO_RUNS+=("$("$BIN/deskd-bench" --socket "$WORK/echo.sock" echo-client)"); done
kill "$ECHO" 2>/dev/null || true
printf '%s\n' "${ECHO_RUNS[@]}"
echo "== stat(2) latency of the same kind of paths (anchor)"
STAT_US=$(python3 - "$VOL" <<'PY'
import os, sys, time, random
vol = sys.argv[1]
dirs = sorted(os.listdir(vol))
dirs = [d for d in dirs if d.startswith("dir")]
names = []
for d in dirs[:10]:
    names += [os.path.join(vol, d, n) for n in os.listdir(os.path.join(vol, d))[:2000]]
random.seed(1)
samples = []
for p in random.choices(names, k=20000):
    t = time.perf_counter_ns(); os.lstat(p); samples.append((time.perf_counter_ns() - t) / 1000)
samples.sort()
print(samples[len(samples) // 2])
PY
)
echo "stat p50 us: $STAT_US"

echo "== resolve throughput, 4 pipelining clients (median of $RUNS runs)"
TPS=()
for i in $(seq "$RUNS"); do TPS+=("$(bench throughput --dirs "$DIRS" --per-dir "$PER_DIR" --clients 4 --seconds 3)"); done
printf '%s\n' "${TPS[@]}"

PATTERNS=(invoice-0042 proof-0099-dra ft-0007-photo scan-0050-final-0000 REPORT-0013-LAYOUT)
echo "== find: substring queries through the client (in-process)"
FIND=$(bench find --runs "$RUNS" "${PATTERNS[@]}")
echo "$FIND"
echo "== find vs plocate, whole commands (hyperfine, $RUNS+ runs each)"
"$BIN/deskd" status --socket "$SOCK" --json > "$WORK/status.json"
find "$VOL" -name '*.dat' > "$WORK/names.txt"
plocate-build -p "$WORK/names.txt" "$WORK/plocate.db" 2>/dev/null || plocate-build -p "$WORK/names.txt" "$WORK/plocate.db"
HF=()
for p in "${PATTERNS[@]}"; do
    n_deskd=$("$BIN/deskd" find --socket "$SOCK" --volume "$VOL" "$p" | wc -l)
    n_plocate=$( (plocate -i -d "$WORK/plocate.db" "$p" || true) | wc -l)
    echo "pattern $p: deskd $n_deskd hits, plocate $n_plocate hits"
    hyperfine -N --warmup 2 --runs "$((RUNS * 4))" --export-json "$WORK/hf.json" \
        "$BIN/deskd find --socket $SOCK --volume $VOL $p" \
        "plocate -i -d $WORK/plocate.db $p" -i >/dev/null
    HF+=("$(python3 -c "import json; r=json.load(open('$WORK/hf.json'))['results']; print(r[0]['median']*1e3, r[1]['median']*1e3)")")
done
printf '%s\n' "${HF[@]}" > "$WORK/find-vs-plocate.txt"

echo "== restart after SIGKILL with $((DIRS * PER_DIR)) objects (median of $RUNS)"
RESTART=()
for i in $(seq "$RUNS"); do
    "$BIN/dt" --socket "$SOCK" touch "$VOL/dir0000/after-$i"   # something in the WAL
    kill -9 "$SERVER"; wait "$SERVER" 2>/dev/null || true
    start_server
    RESTART+=("$(bench first-answer | jget first_answer_ms)")
done
stop_server

echo
echo "## Results ($(date -u +%Y-%m-%d), $(nproc) cores, $((DIRS * PER_DIR)) objects)"
python3 - "$POP" "$CREATE" "$STAT_US" "$FIND" "$WORK/find-vs-plocate.txt" "${RESTART[*]}" "${LAT[@]}" -- "${TPS[@]}" -- "${ECHO_RUNS[@]}" <<'PY'
import json, statistics, sys
args = sys.argv[1:]
pop, create, stat_us, find, hf_file, restart = json.loads(args[0]), json.loads(args[1]), float(args[2]), json.loads(args[3]), args[4], args[5]
rest = args[6:]
sep = rest.index("--")
lat = [json.loads(x) for x in rest[:sep]]
rest = rest[sep + 1:]
sep = rest.index("--")
tps = [json.loads(x) for x in rest[:sep]]
echo = [json.loads(x) for x in rest[sep + 1:]]
med = lambda xs: statistics.median(xs)
files_per_s = pop["files"] / pop["populate_s"]
print("| measure | deskd | anchor (same run) | ratio | target |")
print("|---|---|---|---|---|")
r50 = med([l["resolve_p50_us"] for l in lat]); r99 = med([l["resolve_p99_us"] for l in lat])
l50 = med([l["lookup_p50_us"] for l in lat]); l99 = med([l["lookup_p99_us"] for l in lat])
e50 = med([e["echo_p50_us"] for e in echo]); e99 = med([e["echo_p99_us"] for e in echo])
print(f"| bare socket echo between processes p50 / p99 (the floor) | | {e50:.1f} / {e99:.1f} µs | | |")
print(f"| resolve p50 / p99, 1 client | {r50:.1f} / {r99:.1f} µs | echo {e50:.1f} µs; stat(2) {stat_us:.1f} µs | {r50/e50:.2f}× echo | ≤ 20 / ≤ 200 µs |")
print(f"| lookup p50 / p99, 1 client | {l50:.1f} / {l99:.1f} µs | echo {e50:.1f} µs | {l50/e50:.2f}× echo | ≤ 20 / ≤ 200 µs |")
t = med([x["ops_per_s"] for x in tps])
print(f"| resolve, 4 pipelining clients | {t:,.0f} ops/s | | | ≥ 150,000 ops/s |")
print(f"| ID creation, 4 clients, {create['objects']:,} objects, mean (median run) | {create['objects_per_s']:,.0f} objects/s | creating the files: {files_per_s:,.0f} files/s | {create['objects_per_s']/files_per_s:.2f}× | ≥ 50,000 objects/s |")
print(f"| ID creation: slowest 1 s window / last 10 % | {create['slowest_1s_window_per_s']:,.0f} / {create['last_10pct_per_s']:,.0f} objects/s | | | sustained |")
print(f"| find substring, in-process client, p50 | {find['find_p50_ms']:.2f} ms | | | ≤ 20 ms |")
rows = [l.split() for l in open(hf_file)]
d = med([float(r[0]) for r in rows]); p = med([float(r[1]) for r in rows])
print(f"| `deskd find` command vs `plocate -i`, median of patterns | {d:.2f} ms | plocate {p:.2f} ms | {d/p:.2f}× plocate | |")
rs = [float(x) for x in restart.split()]
print(f"| first answer after SIGKILL restart | {med(rs):.0f} ms | | | ≤ 1,000 ms |")
print()
print("find queries:", ", ".join(f"{q['pattern']} ({q['hits']} hits)" for q in find["queries"]))
PY
echo "work directory: $WORK (remove it when done)"
