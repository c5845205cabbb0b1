#!/usr/bin/env bash
# What a configuration change costs the clients, for docs/PERFORMANCE.md: the longest time one
# client resolving IDs back to back waits for an answer while (a) nothing happens (the noise
# floor), (b) a SIGHUP reopens the volume to apply a read_only change, and (c) deskd is
# restarted (SIGTERM, then a new `deskd serve`; the client reconnects), which is what the
# change needed before. Same volume, same run; medians of RUNS runs.
#
#   scripts/bench-reload.sh                          # 200,000 objects, 5 runs
#   DIRS=100 PER_DIR=10000 scripts/bench-reload.sh   # 1,000,000 objects
set -euo pipefail
cd "$(dirname "$0")/.."
DIRS=${DIRS:-100}
PER_DIR=${PER_DIR:-2000}
RUNS=${RUNS:-5}
WORK=${BENCH_DIR:-$(mktemp -d /tmp/deskd-reload.XXXXXX)}
VOL="$WORK/vol"
SOCK="$WORK/deskd.sock"
CONFIG="$WORK/deskd.toml"
LOG="$WORK/server.log"

cargo build --release --quiet -p deskd-cli
BIN=target/release
. scripts/bench-common.sh
bench() { "$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" "$@"; }
SERVER=
start_server() {
    "$BIN/deskd" serve --socket "$SOCK" --config "$CONFIG" >/dev/null 2>>"$LOG" & SERVER=$!
}
stop_server() { kill -TERM "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }
trap 'kill -9 $SERVER 2>/dev/null || true' EXIT
write_config() { printf '[volume."%s"]\nread_only = %s\n' "$VOL" "$1" > "$CONFIG"; }

mkdir -p "$VOL"
objects=$((DIRS * PER_DIR))
echo "== populate and register $objects files"
bench populate --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
write_config false
start_server
wait_for_line "$LOG" "deskd serving"
bench create --dirs "$DIRS" --per-dir "$PER_DIR" --clients 2 --depth 256 >/dev/null
"$BIN/deskd" flush --socket "$SOCK"
# The files are 17 .. 17 + objects + DIRS - 1 (directories among them).
MAX_ID=$((16 + objects + DIRS))

# Runs the stall client for 4 s and, 1.5 s in, whatever "${@:2}" says; appends the longest
# wait to the file $1. (Not in a command substitution: the server it may start must be this
# shell's child.)
stall_during() {
    local out="$WORK/stall.json"
    bench stall --max-id "$MAX_ID" --seconds 4 > "$out" &
    local client=$!
    sleep 1.5
    "${@:2}"
    wait "$client"
    python3 -c "import json; print(round(json.load(open('$out'))['longest_wait_ms'], 1))" >> "$1"
}
nothing() { :; }
reload_count=0
# Flip read_only and SIGHUP; return once the log says the reload is done.
reopen() {
    reload_count=$((reload_count + 1))
    if [ $((reload_count % 2)) = 1 ]; then write_config true; else write_config false; fi
    kill -HUP "$SERVER"
    for _ in $(seq 200); do
        [ "$(grep -c 'reconfigured: ' "$LOG")" -ge "$reload_count" ] && return 0
        sleep 0.01
    done
    echo "no reload in the log" >&2
    return 1
}
restart() { stop_server; start_server; }

for run in $(seq "$RUNS"); do
    stall_during "$WORK/floor" nothing
    stall_during "$WORK/reopen" reopen
    stall_during "$WORK/restart" restart
    echo "run $run: floor $(tail -1 "$WORK/floor") ms, reopen $(tail -1 "$WORK/reopen") ms," \
        "restart $(tail -1 "$WORK/restart") ms"
done
reopened=$(grep -c "reopened, " "$LOG")
[ "$reopened" -ge "$RUNS" ] || { echo "only $reopened reopenings in the log" >&2; exit 1; }
stop_server

f=$(median < "$WORK/floor")
o=$(median < "$WORK/reopen")
r=$(median < "$WORK/restart")
echo
echo "## Applying read_only: longest wait of a client, $objects objects ($(date -u +%Y-%m-%d), $(nproc) cores, median of $RUNS)"
echo "| | longest wait for an answer |"
echo "|---|---|"
echo "| nothing happening (noise floor) | $f ms |"
echo "| SIGHUP reopening the volume | $o ms |"
echo "| restart (SIGTERM + deskd serve; the client reconnects) | $r ms |"
echo "| reopen / restart | $(echo "scale=2; $o / $r" | bc | sed 's/^\./0./') |"
# The server's own account of each reopening: "closed in C ms, open again after O ms".
closed=$(sed -n 's/.*reopened, .*(closed in \([0-9]*\) ms.*/\1/p' "$LOG" | median)
open_again=$(sed -n 's/.*open again after \([0-9]*\) ms).*/\1/p' "$LOG" | median)
echo
echo "In the server (medians): desktop closed after $closed ms, open again after $open_again ms."
rm -rf "$WORK"
