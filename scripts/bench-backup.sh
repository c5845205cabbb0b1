#!/usr/bin/env bash
# deskd backup against what a user would otherwise run on a live desktop, on the same
# 1,000,000-object desktop in the same run (medians of RUNS runs, server up and idle):
#   sqlite3 .backup (the CLI's online backup, 100-page steps), the same plus integrity_check
#   (what deskd backup also does), VACUUM INTO, and the HELIOS way (deskd flush, cp, sync).
# Then once each under write load (a dt touch loop): whether it finishes, and the writes/s the
# loop kept up meanwhile.
#
#   scripts/bench-backup.sh                      # 100 x 10,000 objects, 5 runs
#   DIRS=10 PER_DIR=10000 RUNS=3 scripts/bench-backup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
DIRS=${DIRS:-100}
PER_DIR=${PER_DIR:-10000}
LOAD_LIMIT=${LOAD_LIMIT:-120}
cargo build --release --quiet
BIN=$PWD/target/release
WORK=$(mktemp -d /tmp/deskd-backup-bench.XXXXXX)
VOL=$WORK/vol
OUT=$WORK/out
export DESKD_SOCKET=$WORK/deskd.sock
mkdir -p "$VOL" "$OUT"
SERVER=""
LOAD=""
cleanup() {
    [ -n "$LOAD" ] && kill "$LOAD" 2>/dev/null
    [ -n "$SERVER" ] && kill -TERM "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
"$BIN/deskd-bench" --socket "$DESKD_SOCKET" --volume "$VOL" populate --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
"$BIN/deskd" serve "$VOL" 2>>"$WORK/server.log" & SERVER=$!
until "$BIN/deskd" status >/dev/null 2>&1; do sleep 0.1; done
"$BIN/deskd-bench" --socket "$DESKD_SOCKET" --volume "$VOL" create --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
"$BIN/deskd" flush
DESKTOP=$VOL/.Desktop
objects=$(sqlite3 "$DESKTOP" 'SELECT count(*) FROM objects')
bytes=$(stat -c %s "$DESKTOP")

. scripts/bench-common.sh
t() { elapsed "$@" 2>/dev/null; }
deskd_backup() { "$BIN/deskd" backup --force "$VOL" "$OUT/deskd.desktop"; }
sqlite_backup() { rm -f "$OUT/sqlite.desktop"; sqlite3 "$DESKTOP" ".backup '$OUT/sqlite.desktop'"; }
sqlite_backup_check() {
    sqlite_backup && [ "$(sqlite3 "$OUT/sqlite.desktop" 'PRAGMA integrity_check')" = ok ]
}
vacuum_into() { rm -f "$OUT/vacuum.desktop"; sqlite3 "$DESKTOP" "VACUUM INTO '$OUT/vacuum.desktop'"; }
helios_way() { "$BIN/deskd" flush && cp "$DESKTOP" "$OUT/cp.desktop" && sync "$OUT/cp.desktop"; }
contenders=(deskd_backup sqlite_backup sqlite_backup_check vacuum_into helios_way)
declare -A times
for run in $(seq "$RUNS"); do
    # The order rotates, so no contender always goes first.
    for k in $(seq 0 $((${#contenders[@]} - 1))); do
        c=${contenders[$(( (k + run) % ${#contenders[@]} ))]}
        times[$c]="${times[$c]:-} $(t "$c")"
    done
done
echo "desktop: $objects objects, $bytes bytes; $RUNS runs, server up and idle"
d=$(echo ${times[deskd_backup]} | tr ' ' '\n' | median)
for c in "${contenders[@]}"; do
    m=$(echo ${times[$c]} | tr ' ' '\n' | median)
    printf '| %s | %.2f s | %.0f MB/s | deskd backup / this: %.2f | runs: %s |\n' \
        "$c" "$m" "$(echo "$bytes / $m / 1000000" | bc -l)" "$(echo "$d / $m" | bc -l)" "${times[$c]}"
done

# Under write load: a loop of dt touch (one commit each) runs through every contender.
echo "under write load (dt touch loop), at most $LOAD_LIMIT s each:"
mkdir -p "$VOL/load"
# (The count is renamed into place, so a reader never sees a half-written file.)
( i=0; while :; do
    "$BIN/dt" touch "$VOL/load/f$i" >/dev/null 2>&1; i=$((i + 1))
    echo "$i" > "$WORK/load.count.new" && mv "$WORK/load.count.new" "$WORK/load.count"
done ) &
LOAD=$!
sleep 2
before=$(cat "$WORK/load.count"); sleep 5; after=$(cat "$WORK/load.count")
printf '| the loop alone | | 5 s | %.0f writes/s |\n' "$(echo "($after - $before) / 5" | bc -l)"
for c in deskd_backup sqlite_backup vacuum_into; do
    before=$(cat "$WORK/load.count"); s=$(date +%s.%N)
    if timeout "$LOAD_LIMIT" bash -c "$(declare -f "$c"); BIN=$BIN VOL=$VOL OUT=$OUT DESKTOP=$DESKTOP $c" >/dev/null 2>&1; then
        verdict=done
    else
        verdict="did not finish in $LOAD_LIMIT s"
    fi
    e=$(date +%s.%N); after=$(cat "$WORK/load.count")
    printf '| %s under load | %s | %.2f s | %.0f writes/s kept up |\n' "$c" "$verdict" \
        "$(echo "$e - $s" | bc)" "$(echo "($after - $before) / ($e - $s)" | bc -l)"
done
kill "$LOAD" 2>/dev/null; LOAD=""
"$BIN/deskd" verify "$OUT/deskd.desktop"
