#!/usr/bin/env bash
# afpd's CNID requests through `deskd netatalk` against the same lookups sent to deskd directly,
# in the same run, one server: RESOLVE (ID -> parent and name) and GET (parent and name -> ID),
# one request at a time. Runs alternate; medians of RUNS. Also ADD through the bridge (ADDS new
# files, one at a time, each ADD sent as afpd sends it after creating the file: a write).
# (Netatalk's own cnid_dbd is measured beside deskd by `scripts/afp-conformance.sh speed`.)
#
#   scripts/bench-netatalk.sh                          # 10 x 10,000 files, 5 runs each
#   DIRS=4 PER_DIR=5000 RUNS=3 scripts/bench-netatalk.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DIRS=${DIRS:-10}
PER_DIR=${PER_DIR:-10000}
RUNS=${RUNS:-5}
ADDS=${ADDS:-2000}
WORK=$(mktemp -d /tmp/deskd-bench-netatalk.XXXXXX)
VOL="$WORK/vol"
SOCK="$WORK/deskd.sock"

cargo build --release --quiet
BIN=target/release
. scripts/bench-common.sh
SERVER=
BRIDGE=
stop() {
    for pid in $BRIDGE $SERVER; do kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap stop EXIT

mkdir -p "$VOL"
"$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" populate --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
"$BIN/deskd" serve --socket "$SOCK" "$VOL" 2>"$WORK/server.log" & SERVER=$!
wait_for_line "$WORK/server.log" "deskd serving"
"$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" create --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
"$BIN/deskd" netatalk --socket "$SOCK" --listen 127.0.0.1:0 2>"$WORK/netatalk.log" & BRIDGE=$!
wait_for_line "$WORK/netatalk.log" "CNID protocol on"
ADDR=$(sed -n 's/.*CNID protocol on \([^ ]*\).*/\1/p' "$WORK/netatalk.log")
echo "== $((DIRS * PER_DIR)) registered files; deskd netatalk on $ADDR"

field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read())['$1'])"; }
declare -A VALUES
for i in $(seq "$RUNS"); do
    direct=$("$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" latency --dirs "$DIRS" --per-dir "$PER_DIR" --ops 20000)
    bridged=$("$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" netatalk-latency --dirs "$DIRS" --per-dir "$PER_DIR" --ops 20000 --adds "$ADDS" --addr "$ADDR")
    echo "run $i: direct $direct; through deskd netatalk $bridged"
    VALUES[direct.resolve]+="$(echo "$direct" | field resolve_p50_us) "
    VALUES[direct.lookup]+="$(echo "$direct" | field lookup_p50_us) "
    VALUES[direct.resolve99]+="$(echo "$direct" | field resolve_p99_us) "
    VALUES[bridged.resolve]+="$(echo "$bridged" | field resolve_p50_us) "
    VALUES[bridged.lookup]+="$(echo "$bridged" | field get_p50_us) "
    VALUES[bridged.resolve99]+="$(echo "$bridged" | field resolve_p99_us) "
    VALUES[bridged.add]+="$(echo "$bridged" | field add_p50_us) "
    VALUES[bridged.add99]+="$(echo "$bridged" | field add_p99_us) "
done
echo
echo "| measure | deskd directly | through deskd netatalk | ratio |"
echo "|---|---|---|---|"
for k in resolve lookup resolve99; do
    # shellcheck disable=SC2086
    d=$(printf '%s\n' ${VALUES[direct.$k]} | median)
    # shellcheck disable=SC2086
    b=$(printf '%s\n' ${VALUES[bridged.$k]} | median)
    python3 -c "print(f'| $k (µs) | {$d:.1f} | {$b:.1f} | {$b / $d:.2f} |')"
done
for k in add add99; do
    # shellcheck disable=SC2086
    b=$(printf '%s\n' ${VALUES[bridged.$k]} | median)
    python3 -c "print(f'| $k (µs) | (a write: not asked directly) | {$b:.1f} | |')"
done
