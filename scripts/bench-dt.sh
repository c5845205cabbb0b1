#!/usr/bin/env bash
# dt against the plain commands on the same tree, in the same run: cp -R, chmod -R, chown -R,
# and mv of a whole tree, on DIRS x PER_DIR files in a served volume; medians of RUNS runs,
# each contender in turn (dt, then the plain command) so both meet the same machine state.
#
#   scripts/bench-dt.sh                  # 100 x 100 = 10,000 files, 5 runs
#   DIRS=100 PER_DIR=1000 RUNS=3 scripts/bench-dt.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
DIRS=${DIRS:-100}
PER_DIR=${PER_DIR:-100}
cargo build --release --quiet
BIN=$PWD/target/release
WORK=$(mktemp -d /tmp/deskd-dt-bench.XXXXXX)
VOL=$WORK/vol
PLAIN=$WORK/plain
export DESKD_SOCKET=$WORK/deskd.sock
mkdir -p "$VOL/src" "$PLAIN"
SERVER=""
cleanup() {
    [ -n "$SERVER" ] && kill -TERM "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
for d in $(seq -w 1 "$DIRS"); do
    mkdir "$VOL/src/d$d"
    for f in $(seq -w 1 "$PER_DIR"); do printf 'file %s/%s\n' "$d" "$f" > "$VOL/src/d$d/f$f"; done
done
"$BIN/deskd" serve "$VOL" 2>>"$WORK/server.log" & SERVER=$!
until "$BIN/deskd" status >/dev/null 2>&1; do sleep 0.1; done
# Every object gets its ID, resource file and mirror (set-up, untimed).
"$BIN/deskd" rebuild "$VOL" >/dev/null
# A copy of the tree outside the volume, with its .rsrc directories, for the plain commands.
cp -a "$VOL/src" "$PLAIN/src"
objects=$(find "$VOL/src" -not -path '*/.rsrc*' | wc -l)

. scripts/bench-common.sh
# Written data from the previous run is on the disk before the clock starts.
t() { sync; elapsed "$@"; }
declare -A T
add() { T[$1]="${T[$1]:-} $2"; }
for run in $(seq "$RUNS"); do
    add dt_cp "$(t "$BIN/dt" cp -R "$VOL/src" "$VOL/copy$run")"
    add cp "$(t cp -R "$PLAIN/src" "$PLAIN/copy$run")"
    add dt_chmod "$(t "$BIN/dt" chmod -R go-w,u+rwX "$VOL/copy$run")"
    add chmod "$(t chmod -R go-w,u+rwX "$PLAIN/copy$run")"
    add dt_chown "$(t "$BIN/dt" chown -R nobody:nogroup "$VOL/copy$run")"
    add chown "$(t chown -R nobody:nogroup "$PLAIN/copy$run")"
    add dt_mv "$(t "$BIN/dt" mv "$VOL/copy$run" "$VOL/moved$run")"
    add mv "$(t mv "$PLAIN/copy$run" "$PLAIN/moved$run")"
done
echo "tree: $objects objects ($DIRS directories x $PER_DIR files), $RUNS runs"
for pair in "dt_cp cp -R" "dt_chmod chmod -R" "dt_chown chown -R" "dt_mv mv"; do
    set -- $pair
    a=$(echo ${T[$1]} | tr ' ' '\n' | median); b=$(echo ${T[$2]} | tr ' ' '\n' | median)
    printf '| dt %s %s | %.3f s | %s %s | %.3f s | %.2fx | runs: %s / %s |\n' \
        "$2" "${3:-}" "$a" "$2" "${3:-}" "$b" "$(echo "$a / $b" | bc -l)" "${T[$1]}" "${T[$2]}"
done
"$BIN/deskd" rebuild -s "$VOL" && echo "rebuild -s after the runs: the volume is consistent"
