#!/usr/bin/env bash
# deskd over TCP loopback against deskd over its Unix socket, in the same run, one server:
# resolve/lookup latency of one client (one request at a time) and pipelined throughput of 4
# clients. Runs alternate between the two transports; medians of RUNS.
#
#   scripts/bench-tcp.sh                         # 10 x 10,000 files, 5 runs each
#   DIRS=4 PER_DIR=5000 RUNS=3 scripts/bench-tcp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DIRS=${DIRS:-10}
PER_DIR=${PER_DIR:-10000}
RUNS=${RUNS:-5}
WORK=$(mktemp -d /tmp/deskd-bench-tcp.XXXXXX)
VOL="$WORK/vol"
SOCK="$WORK/deskd.sock"
TOKEN="$WORK/token"

cargo build --release --quiet
BIN=target/release
. scripts/bench-common.sh
SERVER=
stop() { [ -z "$SERVER" ] || { kill -TERM "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; } || true; rm -rf "$WORK"; }
trap stop EXIT

mkdir -p "$VOL"
(umask 077; head -c 32 /dev/urandom | base64 >"$TOKEN")
export DESKD_TOKEN_FILE="$TOKEN"
"$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" populate --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
"$BIN/deskd" serve --socket "$SOCK" --listen 127.0.0.1:0 "$VOL" 2>"$WORK/server.log" & SERVER=$!
wait_for_line "$WORK/server.log" "deskd serving"
TCP="tcp://$(sed -n 's/.*listening on tcp \([^ ]*\).*/\1/p' "$WORK/server.log")"
echo "== register $((DIRS * PER_DIR)) files over the Unix socket; TCP endpoint $TCP"
"$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" create --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null

run() { "$BIN/deskd-bench" --socket "$1" --volume "$VOL" "${@:2}"; }
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read())['$1'])"; }
declare -A VALUES
for i in $(seq "$RUNS"); do
    for t in unix tcp; do
        endpoint=$SOCK
        [ $t = tcp ] && endpoint=$TCP
        lat=$(run "$endpoint" latency --dirs "$DIRS" --per-dir "$PER_DIR" --ops 20000)
        thr=$(run "$endpoint" throughput --dirs "$DIRS" --per-dir "$PER_DIR" --seconds 3)
        echo "run $i $t: $lat $thr"
        for k in resolve_p50_us resolve_p99_us lookup_p50_us; do
            VALUES[$t.$k]+="$(echo "$lat" | field $k) "
        done
        VALUES[$t.ops_per_s]+="$(echo "$thr" | field ops_per_s) "
    done
done
echo
echo "| measure | Unix socket | TCP loopback | TCP / Unix |"
echo "|---|---|---|---|"
for k in resolve_p50_us resolve_p99_us lookup_p50_us ops_per_s; do
    # shellcheck disable=SC2086
    u=$(printf '%s\n' ${VALUES[unix.$k]} | median)
    # shellcheck disable=SC2086
    t=$(printf '%s\n' ${VALUES[tcp.$k]} | median)
    python3 -c "print(f'| $k | {$u:.1f} | {$t:.1f} | {$t / $u:.2f} |')"
done
