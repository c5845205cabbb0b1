#!/usr/bin/env bash
# How deskd grows with the number of objects (issue 29): for each size in SIZES, a volume of
# that many empty files (directories of 10,000) is measured for
#
#   creation      ID creation rate, 4 clients pipelining 1024 requests (fresh desktop)
#   resolve       one client, one request at a time: p50 / p99, quiet and with a busy loop
#                 pinned to each of two CPUs (the default polling rule; DESKD_SPIN to change)
#   find          substring queries through one client, p50
#   restart       the first answer after a SIGKILL (something in the WAL), median of RUNS
#   rebuild -f / -s / repair   offline, each once, in that order (the repair after every
#                 resource file was removed, so it writes one per object; -s after it must
#                 find nothing to do), each after its floor: what standard tools take for the
#                 least any rebuild must do (stat every object; read every resource file;
#                 write one per object), so that growth the machine imposes (a page cache too
#                 small for the larger volume) is told from growth deskd adds
#
# each with its peak memory: the server's VmHWM after the step (the server's whole life so far;
# restart: the new server's), GNU time's maximum RSS for the rebuilds. Prints a table (value,
# peak, and the last size against the first) for docs/PERFORMANCE.md, "Scale (issue 29)".
#
#   SIZES="1000000 5000000" scripts/bench-scale.sh     # the issue's sizes (5M: ~1 hour, 16M inodes)
#   SIZES="100000 200000" RUNS=3 scripts/bench-scale.sh
#   BENCH_DIR=/big/disk KEEP=1 scripts/bench-scale.sh  # where the volumes go; keep them after
#   STEPS="find restart" scripts/bench-scale.sh        # only these steps (the objects are still
#                                                      # created; their rate is not recorded)
#   KEEP=1 ... then REUSE=/that/run/dir STEPS="find restart rebuild" scripts/bench-scale.sh
#                                                      # measure the volumes a KEEP=1 run left
#
# STEPS (default: all) names the steps to measure: creation resolve find restart rebuild
# (-f and -s) repair.
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a SIZES <<<"${SIZES:-1000000 5000000}"
RUNS=${RUNS:-3}
OPS=${OPS:-20000}
PER_DIR=10000
DEPTH=1024
BUSY_CPUS=${BUSY_CPUS:-0 1}
STEPS=" ${STEPS:-creation resolve find restart rebuild repair} "
for s in $STEPS; do
    case $s in creation | resolve | find | restart | rebuild | repair) ;; *)
        echo "bench-scale.sh: unknown step \"$s\" in STEPS (creation resolve find restart rebuild repair)" >&2
        exit 2
        ;;
    esac
done
step() { [[ $STEPS == *" $1 "* ]]; }
PATTERNS=(invoice-0042 proof-0099-dra ft-0007-photo scan-0050-final-0000 REPORT-0013-LAYOUT)
WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/deskd-bench-scale.XXXXXX")
SOCK="$WORK/deskd.sock"
RESULTS="$WORK/results.tsv"

for tool in /usr/bin/time taskset sqlite3; do
    command -v "$tool" >/dev/null || { echo "bench-scale.sh: needs $tool" >&2; exit 1; }
done
cargo build --release --quiet -p deskd-cli --bins
BIN=target/release
. scripts/bench-common.sh
SERVER=
LOOPS=()
stop_loops() {
    for pid in "${LOOPS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; done
    LOOPS=()
}
stop_server() {
    [ -n "$SERVER" ] || return 0
    kill -TERM "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    SERVER=
}
finish() {
    stop_loops
    stop_server
    if [ "${KEEP:-0}" = 1 ]; then echo "volumes kept in $WORK"; else rm -rf "$WORK"; fi
}
trap finish EXIT

start_server() { # volume
    : >"$WORK/server.log"
    "$BIN/deskd" serve --socket "$SOCK" "$1" 2>"$WORK/server.log" & SERVER=$!
    wait_for_line "$WORK/server.log" "deskd serving"
}
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$SERVER/status"; }
jget() { python3 -c "import json,sys; print(json.loads(sys.stdin.read())['$1'])"; }
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; } # size measure value unit peak_kib
# Prints "seconds max_rss_kib" of one command (GNU time), its output discarded. Its exit status
# is not a failure: `rebuild -s` says "differences" with 1.
timed() {
    local out
    out=$(mktemp)
    /usr/bin/time -o "$out" -f '%e %M' "$@" >/dev/null 2>"$WORK/timed.err" || true
    tail -1 "$out"
    rm -f "$out"
}
med() { printf '%s\n' "$@" | median; }

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs; sizes ${SIZES[*]}"
for size in "${SIZES[@]}"; do
    dirs=$(((size + PER_DIR - 1) / PER_DIR))
    objects=$((dirs * PER_DIR))
    vol="$WORK/vol-$objects"
    shape=(--dirs "$dirs" --per-dir "$PER_DIR")
    bench() { "$BIN/deskd-bench" --socket "$SOCK" --volume "$vol" "$@"; }
    if [ -n "${REUSE:-}" ]; then
        # A volume a KEEP=1 run left, registered already: measured as it is, not made again.
        vol="$REUSE/vol-$objects"
        [ -f "$vol/.Desktop" ] || { echo "bench-scale.sh: no $vol/.Desktop to reuse" >&2; exit 1; }
        step creation && { echo "bench-scale.sh: REUSE cannot measure creation" >&2; exit 2; }
        echo "== $objects objects: reusing $vol"
        start_server "$vol"
    else
        mkdir -p "$vol"
        echo "== $objects objects: populate (untimed)"
        bench populate "${shape[@]}" >/dev/null
        sync
        start_server "$vol"
        rate=$(bench create "${shape[@]}" --clients 4 --depth "$DEPTH" | jget objects_per_s)
        "$BIN/deskd" flush --socket "$SOCK" >/dev/null
    fi
    if step creation; then
        record "$objects" creation "$rate" objects/s "$(hwm_kib)"
        echo "creation: $rate objects/s"
    fi

    step resolve && for load in quiet busy; do
        p50s=() p99s=()
        for _ in $(seq "$RUNS"); do
            if [ "$load" = busy ]; then
                for cpu in $BUSY_CPUS; do taskset -c "$cpu" sh -c 'while :; do :; done' & LOOPS+=($!); done
            fi
            out=$(bench latency "${shape[@]}" --ops "$OPS")
            stop_loops
            p50s+=("$(echo "$out" | jget resolve_p50_us)")
            p99s+=("$(echo "$out" | jget resolve_p99_us)")
        done
        record "$objects" "resolve p50, $load" "$(med "${p50s[@]}")" µs "$(hwm_kib)"
        record "$objects" "resolve p99, $load" "$(med "${p99s[@]}")" µs "$(hwm_kib)"
        echo "resolve $load: p50 ${p50s[*]}; p99 ${p99s[*]}"
    done

    if step find; then
        # Answered from the name index with its lists, as a server that has run a while does.
        wait_for_line "$WORK/server.log" "name index trigram lists ready" 300
        find_p50=$(bench find --runs "$RUNS" "${PATTERNS[@]}" | jget find_p50_ms)
        record "$objects" "find p50" "$find_p50" ms "$(hwm_kib)"
        echo "find p50: $find_p50 ms"
    fi

    restarts=() hwms=()
    step restart && for i in $(seq "$RUNS"); do
        "$BIN/dt" --socket "$SOCK" touch "$vol/dir0000/after-$i" # something in the WAL
        kill -9 "$SERVER"
        wait "$SERVER" 2>/dev/null || true
        "$BIN/deskd" serve --socket "$SOCK" "$vol" 2>"$WORK/server.log" & SERVER=$!
        # The root (ID 2): every desktop has it, whatever IDs a rebuild gave the rest.
        restarts+=("$(bench first-answer --id 2 | jget first_answer_ms)")
        hwms+=("$(hwm_kib)")
    done
    if step restart; then
        record "$objects" "first answer after SIGKILL" "$(med "${restarts[@]}")" ms "$(med "${hwms[@]}")"
        echo "first answer after SIGKILL: ${restarts[*]} ms"
    fi
    stop_server

    if ! step rebuild && ! step repair; then
        [ "${KEEP:-0}" = 1 ] || [ -n "${REUSE:-}" ] || rm -rf "$vol"
        continue
    fi
    # The floors of the rebuilds, just before each: what any rebuild must do at least, by
    # standard tools. Every object's inode (`-f` reads each one's and its mirror, an inline
    # xattr), then that and every resource file read (`-s` compares them), then every resource
    # file written anew (the repair). Past what the page cache holds (about 1M objects per
    # 6 GB here) these become disk reads, for any implementation.
    if step rebuild; then
        read -r s m < <(timed find "$vol" -printf '%s\n')
        record "$objects" "floor of -f: find -printf %s (every inode)" "$s" s "$m"
        read -r s m < <(timed "$BIN/deskd" rebuild -f --force "$vol")
        record "$objects" "rebuild -f" "$s" s "$m"
        read -r s m < <(timed sh -c "find '$vol' -printf '%s\n' >/dev/null &&
            find '$vol' -path '*/.rsrc/*' -type f -print0 | xargs -0 cat >/dev/null")
        record "$objects" "floor of -s: find, then cat every resource file" "$s" s "$m"
        read -r s m < <(timed "$BIN/deskd" rebuild -s "$vol")
        record "$objects" "rebuild -s" "$s" s "$m"
    fi
    if ! step repair; then
        echo "rebuilds: $(grep -P "^$objects\t(rebuild|floor)" "$RESULTS" | cut -f2-5 | tr '\t\n' ' ;')"
        [ "${KEEP:-0}" = 1 ] || [ -n "${REUSE:-}" ] || rm -rf "$vol"
        continue
    fi
    find "$vol" -name .rsrc -type d -prune -exec rm -rf {} +
    sync
    read -r s m < <(timed sh -c "find '$vol' -mindepth 1 -maxdepth 1 -type d -exec mkdir {}/.rsrc \; &&
        find '$vol' -mindepth 2 -path '*/.rsrc' -prune -o -type f -printf '%h/.rsrc/%f\n' |
        xargs -d '\n' -n 2000 sh -c 'for f; do printf %512s \"\" > \"\$f\"; done' sh")
    record "$objects" "floor of the repair: write a 512-byte file per object (sh)" "$s" s "$m"
    find "$vol" -name .rsrc -type d -prune -exec rm -rf {} +
    sync
    read -r s m < <(timed "$BIN/deskd" rebuild --force "$vol")
    record "$objects" "rebuild repair (writes every resource file)" "$s" s "$m"
    "$BIN/deskd" rebuild -s "$vol" >/dev/null ||
        { echo "bench-scale.sh: rebuild -s after the repair found differences" >&2; exit 1; }
    echo "rebuilds: $(grep -P "^$objects\t(rebuild|floor)" "$RESULTS" | cut -f2-5 | tr '\t\n' ' ;')"
    [ "${KEEP:-0}" = 1 ] || [ -n "${REUSE:-}" ] || rm -rf "$vol"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

echo
echo "## Scale, $(date -u +%F), $(nproc) CPUs, median of $RUNS where repeated"
python3 - "$RESULTS" <<'PY'
import sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
sizes = list(dict.fromkeys(int(r[0]) for r in rows))
measures = list(dict.fromkeys(r[1] for r in rows))
at = {(int(r[0]), r[1]): (float(r[2]), r[3], float(r[4])) for r in rows}
def value(v, unit):
    if unit == "objects/s":
        return f"{v:,.0f} {unit}"
    if v < 10:
        return f"{v:,.2f} {unit}"
    return f"{v:,.1f} {unit}" if v < 100 else f"{v:,.0f} {unit}"
head = "| measure |" + "".join(f" {s:,}: value | peak memory (B/object) |" for s in sizes)
if len(sizes) > 1:
    head += f" {sizes[-1]:,} / {sizes[0]:,}: value | peak memory |"
print(head)
print("|---" * (head.count("|") - 1) + "|")
for m in measures:
    row = f"| {m} |"
    for s in sizes:
        if (s, m) not in at:
            row += " – | – |"
            continue
        v, unit, peak = at[(s, m)]
        row += f" {value(v, unit)} | {peak / 1024:,.0f} MB ({peak * 1024 / s:,.0f}) |"
    if len(sizes) > 1 and (sizes[0], m) in at and (sizes[-1], m) in at:
        (v0, _, p0), (v1, _, p1) = at[(sizes[0], m)], at[(sizes[-1], m)]
        row += f" {v1 / v0:.2f}× | {p1 / p0:.2f}× |"
    print(row)
PY
