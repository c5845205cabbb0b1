#!/usr/bin/env bash
# deskd rebuild against `find VOLUME -printf '%s\n'` on the same tree, warm cache, same run.
#
#   scripts/bench-rebuild.sh              # makes a 1,000,000-object volume with deskd-bench
#   VOL=/path/to/volume scripts/bench-rebuild.sh   # an existing volume (its desktop is rebuilt)
#
# The tree gets its resource files and mirrors from one `deskd rebuild` (untimed set-up); then
# `find`, `rebuild -s` and `rebuild -f` each run once to warm up and RUNS times timed; medians.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
cargo build --release --quiet
BIN=$PWD/target/release
if [ -z "${VOL:-}" ]; then
    WORK=$(mktemp -d /tmp/deskd-rebuild-bench.XXXXXX)
    VOL=$WORK/vol
    mkdir -p "$VOL"
    "$BIN/deskd-bench" --socket "$WORK/s.sock" --volume "$VOL" populate --dirs "${DIRS:-100}" --per-dir "${PER_DIR:-10000}"
    "$BIN/deskd" rebuild -f --force "$VOL" >/dev/null
fi
"$BIN/deskd" rebuild --force "$VOL" >/dev/null      # set-up: resource files and mirrors everywhere
. scripts/bench-common.sh
# rebuild -s reports differences on standard error; they are not wanted here.
t() { elapsed "$@" 2>/dev/null; }
# Warm cache, as the target asks: each command runs once untimed, then RUNS times in a row.
# (Interleaving them lets rebuild -f's desktop writes evict the resource-file pages that
# rebuild -s then reads from disk: that measures a cold cache.)
F=(); S=(); R=()
find "$VOL" -printf '%s\n' >/dev/null
for i in $(seq "$RUNS"); do F+=("$(t find "$VOL" -printf '%s\n')"); done
"$BIN/deskd" rebuild -s "$VOL" >/dev/null 2>&1 || true
for i in $(seq "$RUNS"); do S+=("$(t "$BIN/deskd" rebuild -s "$VOL")"); done
"$BIN/deskd" rebuild -f --force "$VOL" >/dev/null 2>&1 || true
for i in $(seq "$RUNS"); do R+=("$(t "$BIN/deskd" rebuild -f --force "$VOL")"); done
"$BIN/deskd" rebuild -s "$VOL" && echo "rebuild -s after the runs: up to date"
objects=$(sqlite3 "$VOL/.Desktop" 'SELECT count(*) FROM objects')
fm=$(printf '%s\n' "${F[@]}" | median); sm=$(printf '%s\n' "${S[@]}" | median); rm_=$(printf '%s\n' "${R[@]}" | median)
echo "objects in the desktop: $objects; entries find visits: $(find "$VOL" | wc -l)"
echo "find runs: ${F[*]}"; echo "rebuild -s runs: ${S[*]}"; echo "rebuild -f runs: ${R[*]}"
printf '| find VOLUME -printf %%s | %.2f s | | |\n' "$fm"
printf '| rebuild -s | %.2f s | %.2fx find | <= 3x |\n' "$sm" "$(echo "$sm / $fm" | bc -l)"
printf '| rebuild -f | %.2f s | %.2fx find | <= 6x |\n' "$rm_" "$(echo "$rm_ / $fm" | bc -l)"
# Online: the same volume served by deskd; the rebuild runs as a server job (warm, in a row).
if [ "${ONLINE:-1}" = 1 ]; then
    SOCK=$(mktemp -u /tmp/deskd-rebuild-bench-sock.XXXXXX)
    "$BIN/deskd" serve --socket "$SOCK" "$VOL" 2>/dev/null &
    SERVER=$!
    trap 'kill $SERVER 2>/dev/null || true' EXIT
    for _ in $(seq 200); do [ -S "$SOCK" ] && break; sleep 0.1; done
    OS=(); OR=()
    "$BIN/deskd" --socket "$SOCK" rebuild -s "$VOL" >/dev/null 2>&1 || true
    for i in $(seq "$RUNS"); do OS+=("$(t "$BIN/deskd" --socket "$SOCK" rebuild -s "$VOL")"); done
    for i in $(seq "$RUNS"); do OR+=("$(t "$BIN/deskd" --socket "$SOCK" rebuild "$VOL")"); done
    "$BIN/deskd" --socket "$SOCK" rebuild -s "$VOL" && echo "online rebuild -s after the runs: up to date"
    kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
    osm=$(printf '%s\n' "${OS[@]}" | median); orm=$(printf '%s\n' "${OR[@]}" | median)
    echo "online rebuild -s runs: ${OS[*]}"; echo "online rebuild (repair) runs: ${OR[*]}"
    printf '| online rebuild -s (server job) | %.2f s | %.2fx find | |\n' "$osm" "$(echo "$osm / $fm" | bc -l)"
    printf '| online rebuild (repair, nothing to repair) | %.2f s | %.2fx find | |\n' "$orm" "$(echo "$orm / $fm" | bc -l)"
fi
