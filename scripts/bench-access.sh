#!/usr/bin/env bash
# `deskd find` by a local user who is not root (every hit checked as that user, by the kernel)
# against the same find by root (no checks), and against find(1) run by that user, in the same
# run, one server. Half of the folders are closed to the user (0700). Then `dt touch` of new
# files by that user (every registration checked) against the same by root. Then the latency
# of one resolve and one AddPath at a time (p50) by that user and by root, against this
# build's server and, when BASE names a directory holding another build's `deskd` (such as
# main's target/release), against that server too, on a volume made the same way, in the same
# run: each run sends blocks of requests to the two servers in turn. Runs alternate; medians of RUNS.
#
#   scripts/bench-access.sh                      # 10 x 10,000 files, 7 runs each
#   DIRS=4 PER_DIR=5000 RUNS=3 scripts/bench-access.sh
#   git worktree add /tmp/base 2cae7ae && (cd /tmp/base && cargo build --release -p deskd-cli)
#   BASE=/tmp/base/target/release scripts/bench-access.sh
#   ONLY=latency BASE=/tmp/base/target/release scripts/bench-access.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DIRS=${DIRS:-10}
PER_DIR=${PER_DIR:-10000}
RUNS=${RUNS:-7}
# A broad pattern, one that hits a folder nobody may list, and one that hits an open one.
PATTERNS=${PATTERNS:-invoice photo-0004-draft photo-0003-draft}
WORK=$(mktemp -d /tmp/deskd-bench-access.XXXXXX)
VOL="$WORK/vol"
SOCK="$WORK/deskd.sock"

[ "$(id -u)" -eq 0 ] || { echo "bench-access.sh: run as root (it acts as user nobody too)" >&2; exit 1; }
cargo build --release --quiet
. scripts/bench-common.sh
SERVER=
stop() { [ -z "$SERVER" ] || { kill -TERM "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; } || true; rm -rf "$WORK"; }
trap stop EXIT

# The binaries where nobody can run them.
chmod 755 "$WORK"
cp target/release/deskd target/release/deskd-bench target/release/dt "$WORK/"
BIN=$WORK
if [ -n "${BASE:-}" ]; then
    mkdir -p "$WORK/base"
    cp "$BASE/deskd" "$WORK/base/"
fi
mkdir -p "$VOL"
"$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" populate --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
"$BIN/deskd" serve --socket "$SOCK" "$VOL" 2>"$WORK/server.log" & SERVER=$!
wait_for_line "$WORK/server.log" "deskd serving"
"$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" create --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
for d in $(seq 0 2 $((DIRS - 1))); do chmod 700 "$VOL/$(printf 'dir%04d' "$d")"; done
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@" 2>/dev/null; }
export DESKD_SOCKET=$SOCK
if [ "${ONLY:-}" != latency ]; then  # ONLY=latency: just the last table
echo "== $((DIRS * PER_DIR)) files in $DIRS folders, every other folder 0700; warm cache"
echo
echo "| pattern | hits root / nobody | deskd find, root | deskd find, nobody (checked) | nobody / root | find(1), nobody | deskd as nobody / find(1) |"
echo "|---|---|---|---|---|---|---|"
for pattern in $PATTERNS; do
    root_hits=$("$BIN/deskd" find "$pattern" | wc -l)
    user_hits=$(as_nobody "$BIN/deskd" find "$pattern" | wc -l)
    find_hits=$( (as_nobody find "$VOL" -name "*$pattern*" 2>/dev/null || true) | wc -l)
    [ "$user_hits" = "$find_hits" ] || { echo "nobody: deskd found $user_hits, find(1) $find_hits" >&2; exit 1; }
    declare -A T=()
    for i in $(seq "$RUNS"); do
        T[root]+="$(elapsed "$BIN/deskd" find "$pattern") "
        T[user]+="$(elapsed as_nobody "$BIN/deskd" find "$pattern") "
        T[find]+="$(elapsed as_nobody find "$VOL" -name "*$pattern*") "
    done
    # shellcheck disable=SC2086
    root=$(printf '%s\n' ${T[root]} | median)
    # shellcheck disable=SC2086
    user=$(printf '%s\n' ${T[user]} | median)
    # shellcheck disable=SC2086
    find=$(printf '%s\n' ${T[find]} | median)
    python3 -c "print(f'| $pattern | $root_hits / $user_hits | {$root*1000:.1f} ms | {$user*1000:.1f} ms | {$user / $root:.2f} | {$find*1000:.1f} ms | {$user / $find:.2f} |')"
done

# Writes: `dt touch` of PER_DIR new files in a folder of nobody's, by nobody (every
# registration checked) and by root (not), alternating; the files removed before the next run.
mkdir -p "$VOL/nobodys"
chown 65534:65534 "$VOL/nobodys"
names=$(seq -f "$VOL/nobodys/new-%06g" 1 "$PER_DIR")
declare -A C=()
for i in $(seq "$RUNS"); do
    sync
    # shellcheck disable=SC2086
    C[user]+="$(elapsed as_nobody "$BIN/dt" touch $names) "
    as_nobody "$BIN/dt" rm -r "$VOL/nobodys"/new-*
    sync
    # shellcheck disable=SC2086
    C[root]+="$(elapsed "$BIN/dt" touch $names) "
    "$BIN/dt" rm -r "$VOL/nobodys"/new-*
done
# shellcheck disable=SC2086
user=$(printf '%s\n' ${C[user]} | median)
# shellcheck disable=SC2086
root=$(printf '%s\n' ${C[root]} | median)
echo
echo "| dt touch of $PER_DIR new files | root (no checks) | nobody (checked) | nobody / root |"
echo "|---|---|---|---|"
python3 -c "print(f'| seconds (median of $RUNS) | {$root:.3f} | {$user:.3f} | {$user / $root:.2f} |')"

fi

# Latency: one request at a time, files of an open folder: resolve by ID, AddPath by path. With
# BASE, the other build's server serves a second volume made the same way, beside this one's.
OPEN_DIR=$(printf 'dir%04d' 1)
OPS=${OPS:-3000}
# Fresh volumes with the same history for each server (the first one's has seen the runs above).
kill -TERM "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true; SERVER=
declare -A SOCKET=() VOLUME=() PID=()
trap 'for p in "${PID[@]}"; do kill -TERM "$p" 2>/dev/null; done; stop' EXIT
fresh_volume() { # NAME DESKD
    SOCKET[$1]=$WORK/$1.sock
    VOLUME[$1]=$WORK/vol-$1
    mkdir -p "${VOLUME[$1]}"
    "$BIN/deskd-bench" --socket "${SOCKET[$1]}" --volume "${VOLUME[$1]}" populate --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
    "$2" serve --socket "${SOCKET[$1]}" "${VOLUME[$1]}" 2>"$WORK/server-$1.log" & PID[$1]=$!
    wait_for_line "$WORK/server-$1.log" "deskd serving"
    "$BIN/deskd-bench" --socket "${SOCKET[$1]}" --volume "${VOLUME[$1]}" create --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
    for d in $(seq 0 2 $((DIRS - 1))); do chmod 700 "${VOLUME[$1]}/$(printf 'dir%04d' "$d")"; done
}
servers="this"
fresh_volume this "$BIN/deskd"
if [ -n "${BASE:-}" ]; then
    servers="this base"
    fresh_volume base "$WORK/base/deskd"
fi
# Each run alternates blocks of 100 steps between the two servers (one client process for
# both), so they are measured under the same load; runs alternate between root and nobody.
latency() { # [as_nobody]
    local base=()
    [ -z "${BASE:-}" ] || base=(--base-socket "${SOCKET[base]}" --base-volume "${VOLUME[base]}")
    "$@" "$BIN/deskd-bench" --socket "${SOCKET[this]}" --volume "${VOLUME[this]}" access-latency --dir "$OPEN_DIR" --ops "$OPS" "${base[@]}"
}
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read())['$1'])"; }
latency >/dev/null; latency as_nobody >/dev/null  # warm up
declare -A R=()
for i in $(seq "$RUNS"); do
    root_json=$(latency)
    user_json=$(latency as_nobody)
    for server in $servers; do
        prefix=
        [ "$server" = this ] || prefix=base_
        for what in resolve addpath; do
            R[${server}_root_$what]+="$(echo "$root_json" | field ${prefix}${what}_p50_us) "
            R[${server}_user_$what]+="$(echo "$user_json" | field ${prefix}${what}_p50_us) "
        done
    done
done
echo
echo "| one request at a time, $OPS each, p50 (median of $RUNS) | server | root | nobody (checked) | nobody / root |"
echo "|---|---|---|---|---|"
declare -A P=()
for server in $servers; do
    for what in resolve addpath; do
        # shellcheck disable=SC2086
        root=$(printf '%s\n' ${R[${server}_root_$what]} | median)
        # shellcheck disable=SC2086
        user=$(printf '%s\n' ${R[${server}_user_$what]} | median)
        P[${server}_$what]=$user
        python3 -c "print(f'| $what | $server | {$root:.1f} µs | {$user:.1f} µs | {$user / $root:.2f} |')"
    done
done
if [ -n "${BASE:-}" ]; then
    echo
    for what in resolve addpath; do
        python3 -c "print(f'$what, checked: this build / base = {${P[this_$what]} / ${P[base_$what]}:.2f}')"
    done
fi
