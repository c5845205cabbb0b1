#!/usr/bin/env bash
# Resolve and lookup latency, one request at a time, on a quiet machine and with a busy loop
# pinned to each CPU beside the benchmark, for each polling rule (DESKD_SPIN, docs/deskd.md):
# adaptive (the default: poll while polling pays on that connection), always (poll the whole
# window every time), load (poll while no thread waits for a CPU) and never (DESKD_SPIN_US=0).
# The rule is set for the server (and the bridge); four paths are measured against it:
#
#   pair     a deskd client with the same rule (both ends poll: deskd-bench latency)
#   nopoll   a deskd client that never polls (DESKD_SPIN=never on the client only), as a client
#            built with polling off, or any peer sleeping in read(2)
#   inserve  afpd's CNID requests (RESOLVE, GET) to deskd serve's own listener ([netatalk] in
#            deskd.toml), from a client that reads without polling as afpd does
#   bridge   the same through the standalone bridge (deskd netatalk), a deskd client in between
#
# Runs alternate the order of the rules; the table gives medians of RUNS (µs).
#
#   scripts/bench-contention.sh                      # 10 x 10,000 files, 5 runs
#   DIRS=4 PER_DIR=5000 RUNS=3 OPS=5000 scripts/bench-contention.sh
#   PINNED=0 scripts/bench-contention.sh             # the busy loops not pinned to a CPU
#   RULES="adaptive never" PATHS="pair nopoll" scripts/bench-contention.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DIRS=${DIRS:-10}
PER_DIR=${PER_DIR:-10000}
RUNS=${RUNS:-5}
OPS=${OPS:-20000}
read -r -a RULES <<<"${RULES:-adaptive always load never}"
read -r -a PATHS <<<"${PATHS:-pair nopoll inserve bridge}"
WORK=$(mktemp -d /tmp/deskd-bench-contention.XXXXXX)
VOL="$WORK/vol"
SOCK="$WORK/deskd.sock"

cargo build --release --quiet -p deskd-cli --bins
BIN=target/release
. scripts/bench-common.sh
SERVER=
BRIDGE=
LOOPS=()
stop_loops() {
    for pid in "${LOOPS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; done
    LOOPS=()
}
stop_servers() {
    for pid in $BRIDGE $SERVER; do kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; done
    SERVER= BRIDGE=
}
stop() {
    stop_loops
    stop_servers
    rm -rf "$WORK"
}
trap stop EXIT

mkdir -p "$VOL"
printf '[netatalk]\nlisten = "127.0.0.1:0"\nafp_conf = "/dev/null"\n' >"$WORK/deskd.toml"
"$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" populate --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
"$BIN/deskd" serve --socket "$SOCK" "$VOL" 2>"$WORK/server.log" & SERVER=$!
wait_for_line "$WORK/server.log" "deskd serving"
"$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" create --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
stop_servers

spin_env() { # rule
    case $1 in
        never) echo DESKD_SPIN_US=0 ;;
        *) echo "DESKD_SPIN=$1" ;;
    esac
}

# One server (and bridge) per rule and load, started with the rule's environment; prints one
# line per path: "path json".
measure() { # rule load
    local env
    env=$(spin_env "$1")
    : >"$WORK/server.log"
    : >"$WORK/bridge.log"
    env "$env" "$BIN/deskd" serve --socket "$SOCK" --config "$WORK/deskd.toml" "$VOL" \
        2>"$WORK/server.log" & SERVER=$!
    wait_for_line "$WORK/server.log" "deskd serving"
    wait_for_line "$WORK/server.log" "CNID protocol on"
    local inserve bridge
    inserve=$(sed -n 's/.*CNID protocol on \([^ ]*\).*/\1/p' "$WORK/server.log")
    env "$env" "$BIN/deskd" netatalk --socket "$SOCK" --listen 127.0.0.1:0 2>"$WORK/bridge.log" & BRIDGE=$!
    wait_for_line "$WORK/bridge.log" "CNID protocol on"
    bridge=$(sed -n 's/.*CNID protocol on \([^ ]*\).*/\1/p' "$WORK/bridge.log")
    if [ "$2" = loaded ]; then
        for cpu in $(seq 0 $(($(nproc) - 1))); do
            if [ "${PINNED:-1}" = 1 ]; then
                taskset -c "$cpu" sh -c 'while :; do :; done' & LOOPS+=($!)
            else
                sh -c 'while :; do :; done' & LOOPS+=($!)
            fi
        done
    fi
    local path shape=(--dirs "$DIRS" --per-dir "$PER_DIR" --ops "$OPS")
    for path in "${PATHS[@]}"; do
        case $path in
            pair) echo "pair $(env "$env" "$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" latency "${shape[@]}")" ;;
            nopoll) echo "nopoll $(DESKD_SPIN=never "$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" latency "${shape[@]}")" ;;
            inserve) echo "inserve $("$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" netatalk-latency "${shape[@]}" --addr "$inserve")" ;;
            bridge) echo "bridge $("$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" netatalk-latency "${shape[@]}" --addr "$bridge")" ;;
        esac
    done
    stop_loops
    stop_servers
}

field() { python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(d.get('$1', d.get('${2:-}')))"; }
declare -A VALUES
n=${#RULES[@]}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$RUNS"); do
    for load in quiet loaded; do
        # Alternate which rule goes first.
        for rule in "${RULES[@]:i%n}" "${RULES[@]:0:i%n}"; do
            while read -r path out; do
                echo "run $i $load $rule $path: $out"
                # lookup (deskd) and GET (afpd's) are the same question by name.
                VALUES[$load.$rule.$path.rp50]+="$(echo "$out" | field resolve_p50_us) "
                VALUES[$load.$rule.$path.rp99]+="$(echo "$out" | field resolve_p99_us) "
                VALUES[$load.$rule.$path.lp50]+="$(echo "$out" | field lookup_p50_us get_p50_us) "
                VALUES[$load.$rule.$path.lp99]+="$(echo "$out" | field lookup_p99_us get_p99_us) "
            done < <(measure "$rule" "$load")
        done
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "## Polling rules, $(date +%F), $(nproc) CPUs, $((DIRS * PER_DIR)) objects, median of $RUNS (µs)"
echo "busy loops: $(nproc), $([ "${PINNED:-1}" = 1 ] && echo pinned || echo not pinned)"
echo "| load | path | rule | resolve p50 | resolve p99 | lookup/GET p50 | lookup/GET p99 |"
echo "|---|---|---|---|---|---|---|"
for load in quiet loaded; do
    for path in "${PATHS[@]}"; do
        for rule in "${RULES[@]}"; do
            row="| $load | $path | $rule |"
            for k in rp50 rp99 lp50 lp99; do
                # shellcheck disable=SC2086
                row+=" $(printf '%s\n' ${VALUES[$load.$rule.$path.$k]} | median | xargs printf "%.1f") |"
            done
            echo "$row"
        done
    done
done
