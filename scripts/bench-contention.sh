#!/usr/bin/env bash
# Resolve and lookup latency (one client, one request at a time) on a quiet machine and with a
# busy loop pinned to each CPU beside the benchmark, for the three polling rules: always (the
# default: poll 100 µs before sleeping), adaptive (DESKD_SPIN_ADAPT=1: poll only while no thread
# waits for a CPU) and never (DESKD_SPIN_US=0). The rule is set for the server and the client alike. Runs
# alternate the rules; medians of RUNS.
#
#   scripts/bench-contention.sh                      # 10 x 10,000 files, 5 runs
#   DIRS=4 PER_DIR=5000 RUNS=3 scripts/bench-contention.sh
#   PINNED=0 scripts/bench-contention.sh             # the busy loops not pinned to a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
DIRS=${DIRS:-10}
PER_DIR=${PER_DIR:-10000}
RUNS=${RUNS:-5}
OPS=${OPS:-20000}
WORK=$(mktemp -d /tmp/deskd-bench-contention.XXXXXX)
VOL="$WORK/vol"
SOCK="$WORK/deskd.sock"

cargo build --release --quiet
BIN=target/release
. scripts/bench-common.sh
SERVER=
LOOPS=()
stop_loops() {
    for pid in "${LOOPS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; done
    LOOPS=()
}
stop() {
    stop_loops
    [ -n "$SERVER" ] && { kill -TERM "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true; }
    rm -rf "$WORK"
}
trap stop EXIT

mkdir -p "$VOL"
"$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" populate --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
"$BIN/deskd" serve --socket "$SOCK" "$VOL" 2>"$WORK/server.log" & SERVER=$!
wait_for_line "$WORK/server.log" "deskd serving"
"$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" create --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
kill -TERM "$SERVER"; wait "$SERVER" || true; SERVER=

# One server per measurement, started with the rule's environment.
measure() { # rule load
    local env=()
    case $1 in
        adaptive) env=(DESKD_SPIN_ADAPT=1) ;;
        always) env=(DESKD_SPIN_ADAPT=0) ;;
        never) env=(DESKD_SPIN_US=0) ;;
    esac
    : >"$WORK/server.log"
    env "${env[@]}" "$BIN/deskd" serve --socket "$SOCK" "$VOL" 2>"$WORK/server.log" & SERVER=$!
    wait_for_line "$WORK/server.log" "deskd serving"
    if [ "$2" = loaded ]; then
        for cpu in $(seq 0 $(($(nproc) - 1))); do
            if [ "${PINNED:-1}" = 1 ]; then
                taskset -c "$cpu" sh -c 'while :; do :; done' & LOOPS+=($!)
            else
                sh -c 'while :; do :; done' & LOOPS+=($!)
            fi
        done
    fi
    env "${env[@]}" "$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" latency \
        --dirs "$DIRS" --per-dir "$PER_DIR" --ops "$OPS"
    stop_loops
    kill -TERM "$SERVER"; wait "$SERVER" || true; SERVER=
}

field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read())['$1'])"; }
declare -A VALUES
RULES=(adaptive always never)
for i in $(seq "$RUNS"); do
    for load in quiet loaded; do
        # Alternate which rule goes first.
        for rule in "${RULES[@]:i%3}" "${RULES[@]:0:i%3}"; do
            out=$(measure "$rule" "$load")
            echo "run $i $load $rule: $out"
            for k in resolve_p50_us resolve_p99_us lookup_p50_us lookup_p99_us; do
                VALUES[$load.$rule.$k]+="$(echo "$out" | field $k) "
            done
        done
    done
done
echo
echo "## Polling rules, $(date +%F), $(nproc) CPUs, $((DIRS * PER_DIR)) objects, median of $RUNS (µs)"
echo "| load | rule | resolve p50 | resolve p99 | lookup p50 | lookup p99 |"
echo "|---|---|---|---|---|---|"
for load in quiet loaded; do
    for rule in "${RULES[@]}"; do
        row="| $load | $rule |"
        for k in resolve_p50_us resolve_p99_us lookup_p50_us lookup_p99_us; do
            # shellcheck disable=SC2086
            row+=" $(printf '%s\n' ${VALUES[$load.$rule.$k]} | median) |"
        done
        echo "$row"
    done
done
