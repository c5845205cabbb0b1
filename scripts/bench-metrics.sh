#!/usr/bin/env bash
# The metrics (`deskd metrics`, what GET /metrics serves): time of one scrape with VOLUMES volumes
# (each with some request figures recorded), and the resolve throughput of 4 pipelining clients
# with and without a scraper asking every 100 ms, in the same run, alternating; medians of RUNS.
#
#   scripts/bench-metrics.sh                          # 10 volumes x 4 x 2,500 files, 5 runs
#   VOLUMES=10 DIRS=2 PER_DIR=1000 RUNS=3 SECONDS_PER_RUN=3 scripts/bench-metrics.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VOLUMES=${VOLUMES:-10}
DIRS=${DIRS:-4}
PER_DIR=${PER_DIR:-2500}
RUNS=${RUNS:-5}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
WORK=$(mktemp -d /tmp/deskd-bench-metrics.XXXXXX)
SOCK="$WORK/deskd.sock"

cargo build --release --quiet -p deskd-cli --bin deskd --bin deskd-bench
BIN=target/release
. scripts/bench-common.sh
SERVER=
stop() { [ -z "$SERVER" ] || { kill -TERM "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; } || true; rm -rf "$WORK"; }
trap stop EXIT

vols=()
for v in $(seq "$VOLUMES"); do
    mkdir -p "$WORK/vol$v"
    "$BIN/deskd-bench" --socket "$SOCK" --volume "$WORK/vol$v" populate --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
    vols+=("$WORK/vol$v")
done
"$BIN/deskd" serve --socket "$SOCK" "${vols[@]}" 2>"$WORK/server.log" & SERVER=$!
wait_for_line "$WORK/server.log" "deskd serving"
echo "== $VOLUMES volumes of $((DIRS * PER_DIR)) files, each registered, then resolved a little"
for v in "${vols[@]}"; do
    "$BIN/deskd-bench" --socket "$SOCK" --volume "$v" create --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
    "$BIN/deskd-bench" --socket "$SOCK" --volume "$v" throughput --dirs "$DIRS" --per-dir "$PER_DIR" --seconds 0.2 >/dev/null
done

field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read())['$1'])"; }
echo "== scrape time, back to back"
scrapes=$("$BIN/deskd-bench" --socket "$SOCK" scrape --count 500)
echo "$scrapes"

VOL1="${vols[0]}"
throughput() {
    "$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL1" throughput --dirs "$DIRS" --per-dir "$PER_DIR" \
        --clients 4 --seconds "$SECONDS_PER_RUN" | field ops_per_s
}
with_scrapes() {
    "$BIN/deskd-bench" --socket "$SOCK" scrape --interval-ms 100 --seconds "$SECONDS_PER_RUN" >"$WORK/scraper.json" &
    local scraper=$!
    throughput
    wait "$scraper"
}
# Alternating which goes first, so that a neighbour's load drifting during a run weighs on
# both sides alike; each run's own ratio is kept too.
plain=()
scraped=()
ratios=()
for i in $(seq "$RUNS"); do
    if [ $((i % 2)) -eq 1 ]; then
        a=$(throughput)
        b=$(with_scrapes)
    else
        b=$(with_scrapes)
        a=$(throughput)
    fi
    echo "run $i: without scrapes $a ops/s, scraped every 100 ms $b ops/s ($(field scrapes <"$WORK/scraper.json") scrapes)"
    plain+=("$a")
    scraped+=("$b")
    ratios+=("$(python3 -c "print($b / $a)")")
done
a=$(printf '%s\n' "${plain[@]}" | median)
b=$(printf '%s\n' "${scraped[@]}" | median)
echo
echo "| measure | value |"
echo "|---|---|"
echo "| scrape p50 / p99 / max, $VOLUMES volumes (ms, round trip included) | $(echo "$scrapes" | field p50_ms) / $(echo "$scrapes" | field p99_ms) / $(echo "$scrapes" | field max_ms) |"
echo "| metrics text (bytes) | $(echo "$scrapes" | field bytes) |"
python3 -c "print(f'| resolves/s, 4 pipelining clients, no scrapes (median of $RUNS) | {$a:.0f} |')"
python3 -c "print(f'| resolves/s, same, scraped every 100 ms | {$b:.0f} |')"
r=$(printf '%s\n' "${ratios[@]}" | median)
python3 -c "print(f'| scraped / not scraped: ratio of the medians, median of the runs\' ratios | {$b / $a:.3f}, {$r:.3f} |')"
