#!/usr/bin/env bash
# afpd's CNID requests through `deskd netatalk` against the same lookups sent to deskd directly,
# in the same run, one server: RESOLVE (ID -> parent and name) and GET (parent and name -> ID),
# one request at a time. Also ADD through the bridge: ADDS new files created one at a time, each
# ADD sent as afpd sends it after creating the file (a write), then an ADD of each again (afpd's
# get_id() on an object it knows: nothing to write). Runs alternate; medians of RUNS.
# Without BASE, each run also sends the same requests to `deskd serve`'s own afpd listener
# (`[netatalk]` in deskd.toml, docs/netatalk.md): the same server, no bridge between.
# (Netatalk's own cnid_dbd is measured beside deskd by `scripts/afp-conformance.sh speed`.)
# Each run also makes lantest's folder tree (its test 7: 10 x 10 x 10 folders, FPCreateDir then
# one ADD each, parents 1 to 3 folders deep): tree_add_p50_us / tree_add_p99_us.
#
#   scripts/bench-netatalk.sh                          # 10 x 10,000 files, 5 runs each
#   DIRS=4 PER_DIR=5000 RUNS=3 scripts/bench-netatalk.sh
#
# With BASE naming a directory that holds another build's `deskd` (server and bridge), the
# bridge's figures are measured for this build and for BASE in the same run, alternating which
# goes first, each on a fresh desktop of the same files:
#
#   git worktree add /tmp/base main && (cd /tmp/base && cargo build --release -p deskd-cli)
#   BASE=/tmp/base/target/release scripts/bench-netatalk.sh
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
stop_both() {
    for pid in $BRIDGE $SERVER; do kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; done
    BRIDGE= SERVER=
}
stop() {
    stop_both
    rm -rf "$WORK"
}
trap stop EXIT

# Serve the volume from a fresh desktop with the deskd in $1 (without BASE, with its own afpd
# listener too), register every file, start the bridge; sets SERVER, BRIDGE, ADDR (the bridge's)
# and INSERVE_ADDR (the server's own listener).
start_both() {
    rm -f "$VOL"/.Desktop* "$WORK/server.log" "$WORK/netatalk.log"
    rm -rf "$VOL"/bench-adds-* "$VOL"/bench-tree-*
    local config=()
    if [ -z "${BASE:-}" ]; then
        printf '[netatalk]\nlisten = "127.0.0.1:0"\nafp_conf = "/dev/null"\n' >"$WORK/deskd.toml"
        config=(--config "$WORK/deskd.toml")
    fi
    "$1/deskd" serve --socket "$SOCK" "${config[@]}" "$VOL" 2>"$WORK/server.log" & SERVER=$!
    wait_for_line "$WORK/server.log" "deskd serving"
    if [ -z "${BASE:-}" ]; then
        wait_for_line "$WORK/server.log" "CNID protocol on"
        INSERVE_ADDR=$(sed -n 's/.*CNID protocol on \([^ ]*\).*/\1/p' "$WORK/server.log")
    fi
    "$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" create --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
    "$1/deskd" netatalk --socket "$SOCK" --listen 127.0.0.1:0 2>"$WORK/netatalk.log" & BRIDGE=$!
    wait_for_line "$WORK/netatalk.log" "CNID protocol on"
    ADDR=$(sed -n 's/.*CNID protocol on \([^ ]*\).*/\1/p' "$WORK/netatalk.log")
}

mkdir -p "$VOL"
"$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" populate --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
echo "== $((DIRS * PER_DIR)) files; ${BASE:+this build against $BASE, }$RUNS runs"

field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read())['$1'])"; }
bridged() { # label [address: default the bridge's]
    local out
    out=$("$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" netatalk-latency --dirs "$DIRS" \
        --per-dir "$PER_DIR" --ops 20000 --adds "$ADDS" --tree --addr "${2:-$ADDR}")
    echo "run $i: $1 at ${2:-$ADDR} $out"
    for k in resolve_p50_us resolve_p99_us get_p50_us add_p50_us add_p99_us add_again_p50_us \
        tree_add_p50_us tree_add_p99_us; do
        VALUES[$1.$k]+="$(echo "$out" | field $k) "
    done
}
declare -A VALUES
for i in $(seq "$RUNS"); do
    if [ -n "${BASE:-}" ]; then
        builds=(this base)
        [ $((i % 2)) -eq 0 ] && builds=(base this)
        for b in "${builds[@]}"; do
            if [ "$b" = this ]; then start_both "$BIN"; else start_both "$BASE"; fi
            bridged "$b"
            stop_both
        done
        continue
    fi
    start_both "$BIN"
    direct=$("$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" latency --dirs "$DIRS" --per-dir "$PER_DIR" --ops 20000)
    echo "run $i: direct $direct"
    VALUES[direct.resolve_p50_us]+="$(echo "$direct" | field resolve_p50_us) "
    VALUES[direct.get_p50_us]+="$(echo "$direct" | field lookup_p50_us) "
    VALUES[direct.resolve_p99_us]+="$(echo "$direct" | field resolve_p99_us) "
    # Alternate which of the two afpd paths goes first.
    if [ $((i % 2)) -eq 1 ]; then
        bridged this; bridged inserve "$INSERVE_ADDR"
    else
        bridged inserve "$INSERVE_ADDR"; bridged this
    fi
    stop_both
done

med() { printf '%s\n' ${VALUES[$1]} | median; }
echo
if [ -n "${BASE:-}" ]; then
    echo "| measure (µs, median of $RUNS) | this build | base | this / base |"
    echo "|---|---|---|---|"
    for k in resolve_p50_us resolve_p99_us get_p50_us add_p50_us add_p99_us add_again_p50_us \
        tree_add_p50_us tree_add_p99_us; do
        t=$(med this.$k); b=$(med base.$k)
        python3 -c "print(f'| $k | {$t:.1f} | {$b:.1f} | {$t / $b:.2f} |')"
    done
    exit 0
fi
echo "| measure (µs, median of $RUNS) | deskd directly | through deskd netatalk | in deskd serve | bridge / direct | in serve / bridge |"
echo "|---|---|---|---|---|---|"
for k in resolve_p50_us get_p50_us resolve_p99_us; do
    d=$(med direct.$k); b=$(med this.$k); s=$(med inserve.$k)
    python3 -c "print(f'| $k | {$d:.1f} | {$b:.1f} | {$s:.1f} | {$b / $d:.2f} | {$s / $b:.2f} |')"
done
for k in add_p50_us add_p99_us add_again_p50_us tree_add_p50_us tree_add_p99_us; do
    b=$(med this.$k); s=$(med inserve.$k)
    python3 -c "print(f'| $k | (a write: not asked directly) | {$b:.1f} | {$s:.1f} | | {$s / $b:.2f} |')"
done
