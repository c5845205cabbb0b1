#!/usr/bin/env bash
# Live tracking (issue 23), for docs/PERFORMANCE.md "Live tracking (issue 23)": what the
# watcher costs and how fast the desktop follows changes made without dt. Every part runs a
# fresh volume and server; (a) and (c) side by side with `watch = "off"` in the same run.
#
#   (a) RENAMES plain renames (rename(2) from deskd-bench watch-lag, no dt): with the server
#       polled after each until the desktop shows it, the lag per rename (p50/p99/max); the
#       server's own lag_p99_ms from `deskd status --json`; and, paced at RATE renames a second
#       with nobody polling, the server's CPU (utime+stime from /proc/PID/stat) as % of a core,
#       watch = auto vs off, from a flushed desktop, with what the server read from the disk
#       meanwhile (/proc/PID/io read_bytes: page cache misses).
#   (b) `mv` of a directory of BIG objects: the time from the mv returning until the desktop
#       shows the directory's new name.
#   (c) MANY files created by a plain program (deskd-bench populate: create(2) in a loop) with
#       watch = auto vs off, and the floor (no server: `populate --fanotify-floor` marks the
#       file system as the watcher does and reads its events into nothing, which no watcher
#       can beat): the creation rate ratios, the server's peak RSS (VmHWM), the time of
#       the barrier (`deskd flush --volume`) after it and the stamps it left owed, the most
#       bytes of events the watcher held, and `deskd rebuild -s` afterwards (the number of lines
#       it prints: 0 when the desktop agrees).
#
#   scripts/bench-watch.sh                                   # the issue's sizes, RUNS=3
#   RENAMES=2000 BIG=20000 MANY=100000 RUNS=1 scripts/bench-watch.sh   # a quick check
#   PARTS="a c" scripts/bench-watch.sh                       # some parts only
#   PROFILE=debug ...                                        # the debug build (checks the script)
#   STRACE=1 PARTS=a ...             # also (a): the server's system calls per rename (strace -c)
#   LAG=0 PARTS=a ...                # (a) without the polled lag (4-5 min a run): CPU only
#   MODES=auto PARTS=a ...           # (a) without the watch = off side
#   BIN=/some/target/release ...     # another build's binaries (an A/B), nothing built
#   PERF=1 PARTS=a ...               # also (a): a perf profile of the server (perf record), by
#                                    # stage (scripts/watch-stages.py): share and µs per rename
set -euo pipefail
cd "$(dirname "$0")/.."
RENAMES=${RENAMES:-10000}
RATE=${RATE:-1000}
LAG=${LAG:-1}
BIG=${BIG:-100000}
MANY=${MANY:-1000000}
RUNS=${RUNS:-3}
PARTS=${PARTS:-a b c}
PROFILE=${PROFILE:-release}
WORK=${BENCH_DIR:-$(mktemp -d /tmp/deskd-watch.XXXXXX)}

if [ -n "${BIN:-}" ]; then
    : # binaries given (an A/B against another build): nothing built
elif [ "$PROFILE" = release ]; then
    cargo build --release --quiet -p deskd-cli
else
    cargo build --quiet -p deskd-cli
fi
BIN=${BIN:-target/$PROFILE}
MODES=${MODES:-auto off}
. scripts/bench-common.sh
SERVER=
VOL=
SOCK="$WORK/deskd.sock"
LOG=
trap 'kill -9 $SERVER 2>/dev/null || true' EXIT

bench() { "$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" "$@"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# A fresh volume $WORK/NAME served with `watch = MODE`; returns once the log says how it is
# watched.
start_server() {
    local name=$1 mode=$2
    VOL="$WORK/$name"
    rm -rf "$VOL"
    mkdir -p "$VOL"
    LOG="$WORK/$name.log"
    printf '[defaults]\nwatch = "%s"\n' "$mode" > "$WORK/deskd.toml"
    "$BIN/deskd" serve --socket "$SOCK" --config "$WORK/deskd.toml" "$VOL" \
        >/dev/null 2>"$LOG" & SERVER=$!
    wait_for_line "$LOG" "watching $VOL"
}
stop_server() {
    kill -TERM "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    SERVER=
}
# The server's CPU time so far, in clock ticks (utime + stime).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER/stat"; }
# Bytes the server's reads fetched from the disk so far (not from the page cache).
read_bytes() { awk '/^read_bytes/ {print $2}' "/proc/$SERVER/io"; }
# The server's peak resident set (VmHWM), MiB.
peak_rss_mib() { awk '/^VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$SERVER/status"; }
barrier() { "$BIN/deskd" flush --socket "$SOCK" --volume "$VOL" >/dev/null; }
watch_field() {
    "$BIN/deskd" status --socket "$SOCK" --json | json "d.get('watch') and d['watch'].get('$1')"
}
# Wait until no watch rescan (after an overflow) runs: a rebuild job started meanwhile would
# be refused.
rescans_idle() {
    local i
    for i in $(seq 6000); do
        [ "$(watch_field rescan | sed 's/.*running.: \([A-Za-z]*\).*/\1/')" != True ] && return 0
        sleep 0.1
    done
    echo "a watch rescan still runs after 600 s" >&2
    return 1
}
# The number of lines `deskd rebuild -s` prints (0: the desktop agrees with the disk), after
# the barrier and any rescan; "failed" when it could not run.
scan_lines() {
    barrier
    rescans_idle
    local out status=0
    out=$("$BIN/deskd" rebuild -s --socket "$SOCK" "$VOL" 2>"$WORK/scan.err") || status=$?
    if [ "$status" -gt 1 ]; then echo "failed ($(head -1 "$WORK/scan.err"))"; return; fi
    printf '%s' "$out" | grep -c . || true
}
# Wait until the stamper has written every stamp the watcher owes (none owed, or not
# watched): the setup's registration races the watcher, whose winning batches owe stamps that
# would otherwise be paid inside a measuring window (stop 41: 3,857 in one run, 12.6 % instead
# of 9 %).
stamps_paid() {
    local i owed
    for i in $(seq 1200); do
        owed=$(watch_field owed_stamps)
        [ "$owed" = 0 ] || [ "$owed" = None ] && return 0
        sleep 0.1
    done
    echo "stamps still owed after 120 s: $owed" >&2
    return 1
}
# `dirs` and `per_dir` for N files: one directory up to 10,000, else 10,000 a directory.
shape() { local n=$1; if [ "$n" -le 10000 ]; then echo "1 $n"; else echo "$((n / 10000)) 10000"; fi; }
# Populate and register N files (registration through a client, so both modes start alike).
populate_registered() {
    local dirs per_dir
    read -r dirs per_dir < <(shape "$1")
    bench populate --dirs "$dirs" --per-dir "$per_dir" >/dev/null
    bench create --dirs "$dirs" --per-dir "$per_dir" --clients 2 --depth 256 >/dev/null
    barrier
}
TCK=$(getconf CLK_TCK)
echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores; PROFILE=$PROFILE"

part_a() {
    echo "== (a) $RENAMES plain renames"
    for run in $(seq "$RUNS"); do
        start_server rename auto
        populate_registered "$RENAMES"
        local lag
        if [ "$LAG" = 1 ]; then
            lag=$(bench watch-lag --dir dir0000 --wait)
            echo "run $run: lag per rename (polled): $(echo "$lag" | json \
                "'p50 %.2f ms, p99 %.2f ms, max %.2f ms, %d renames in %.1f s' % (d['lag_p50_ms'], \
d['lag_p99_ms'], d['lag_max_ms'], d['renames'], d['seconds'])"); server lag_p99_ms" \
                "$(watch_field lag_p99_ms), overflows $(watch_field overflows)"
            echo "$lag" | json "d['lag_p99_ms']" >> "$WORK/a-lag-p99"
        fi
        for mode in $MODES; do
            [ "$mode" = off ] && { stop_server; start_server rename-off off; \
                populate_registered "$RENAMES"; }
            # The window starts from a checkpointed WAL and nothing owed, whatever ran before
            # it: after the polled pass, its 10,000 commits' WAL was otherwise checkpointed by
            # the window's own flush, and the setup's stamps paid in it (stop 41,
            # docs/PERFORMANCE.md).
            barrier
            stamps_paid
            local t0 t1 r0 r1 out
            t0=$(cpu_ticks); r0=$(read_bytes)
            out=$(bench watch-lag --dir dir0000 --rate "$RATE")
            barrier
            t1=$(cpu_ticks); r1=$(read_bytes)
            local pct
            pct=$(echo "$out" | json "round(100.0 * ($t1 - $t0) / $TCK / d['seconds'], 1)")
            # Reads from the disk cost the server CPU too (a VM exit each on this test VM):
            # resource files or WAL pages evicted from the page cache by other work.
            echo "run $run: watch=$mode, $(echo "$out" | json "'%.0f renames/s' % d['rate']"):" \
                "server CPU $pct % of a core; read from disk $(( (r1 - r0) / 1024 )) KiB"
            echo "$pct" >> "$WORK/a-cpu-$mode"
            if [ "$mode" = auto ] && [ -n "${PERF:-}" ]; then
                # Where the CPU goes (perf slows the server: a pass of its own, not timed):
                # `perf report -i $WORK/a-perf-RUN.data` afterwards.
                perf record -F 2000 --call-graph dwarf,16384 -p "$SERVER" \
                    -o "$WORK/a-perf-$run.data" 2>/dev/null & local profiler=$!
                sleep 1
                bench watch-lag --dir dir0000 --rate "$RATE" >/dev/null
                barrier
                kill -INT "$profiler"; wait "$profiler" || true
                echo "run $run: perf profile in $WORK/a-perf-$run.data; by stage (µs at the" \
                    "timed window's $pct %):"
                perf script -i "$WORK/a-perf-$run.data" -F comm,tid,ip,sym --no-inline 2>/dev/null | \
                    scripts/watch-stages.py - "$(echo "$pct * 10000 / $RATE" | bc -l)" | sed 's/^/    /'
            fi
            if [ "$mode" = auto ] && [ -n "${STRACE:-}" ]; then
                # Exact, whatever the load: the server's system calls per rename (strace -c
                # slows the server, so in a pass of its own, not timed).
                strace -c -f -p "$SERVER" -o "$WORK/a-strace" 2>/dev/null & local tracer=$!
                sleep 1
                out=$(bench watch-lag --dir dir0000 --rate "$RATE")
                barrier
                kill -INT "$tracer"; wait "$tracer" || true
                echo "run $run: watch=auto: $(awk '$NF == "total" {print $4}' "$WORK/a-strace") system" \
                    "calls for $(echo "$out" | json "d['renames']") renames; most:" \
                    "$(awk '$4 ~ /^[0-9]+$/ && $NF != "total" {print $4, $NF}' "$WORK/a-strace" | \
                        sort -rn | head -5 | tr '\n' ' ')"
            fi
        done
        stop_server
    done
    [ "$LAG" = 1 ] && echo "(a) median p99 lag $(median < "$WORK/a-lag-p99" | xargs printf %.1f) ms"
    echo "(a) CPU at $RATE renames/s:" $(for mode in $MODES; do \
        echo "watch=$mode $(median < "$WORK/a-cpu-$mode") %"; done) "of a core"
}

part_b() {
    echo "== (b) mv of a directory of $BIG objects"
    for run in $(seq "$RUNS"); do
        start_server big auto
        local dirs per_dir
        read -r dirs per_dir < <(shape "$BIG")
        mkdir -p "$VOL/big"
        "$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL/big" populate --dirs "$dirs" \
            --per-dir "$per_dir" >/dev/null
        # Registered by the online repair (whatever the watcher did meanwhile).
        barrier
        "$BIN/deskd" rebuild --socket "$SOCK" "$VOL" >/dev/null 2>&1
        local out
        out=$(bench watch-lag --dir "" --count 1 --wait)
        echo "run $run: $(echo "$out" | json "'applied %.2f ms after the mv' % d['lag_max_ms']")" \
            "($((dirs * per_dir + dirs)) objects below it); rebuild -s lines: $(scan_lines)"
        echo "$out" | json "d['lag_max_ms']" >> "$WORK/b-ms"
        stop_server
    done
    echo "(b) median $(median < "$WORK/b-ms" | xargs printf %.1f) ms"
}

part_c() {
    echo "== (c) $MANY files created by a plain program"
    local dirs per_dir
    read -r dirs per_dir < <(shape "$MANY")
    local rate
    for run in $(seq "$RUNS"); do
        # The floor: the same files under a fanotify mark whose events are thrown away.
        local floor="$WORK/many-floor-$run"
        rm -rf "$floor"
        mkdir -p "$floor"
        sync
        rate=$("$BIN/deskd-bench" --socket "$SOCK" --volume "$floor" populate --dirs "$dirs" \
            --per-dir "$per_dir" --fanotify-floor | json "round(d['files'] / d['populate_s'])")
        echo "run $run: floor (a fanotify mark, events read and dropped, no server): $rate files/s"
        echo "$rate" >> "$WORK/c-rate-floor"
        for mode in off auto; do
            start_server "many-$mode-$run" "$mode"
            # Written back and settled before the clock starts, as for every contender.
            sync
            local out flush_s
            out=$(bench populate --dirs "$dirs" --per-dir "$per_dir")
            rate=$(echo "$out" | json "round(d['files'] / d['populate_s'])")
            flush_s=$(elapsed barrier)
            echo "run $run: watch=$mode: $rate files/s, then the barrier took ${flush_s} s;" \
                "server peak RSS $(peak_rss_mib) MiB$( [ "$mode" = auto ] && \
                echo "; stamps owed after it $(watch_field owed_stamps), events held at most" \
                    "$(( $(watch_field queued_peak_bytes) / 1048576 )) MiB;" \
                    "rebuild -s lines: $(scan_lines); overflows $(watch_field overflows);" \
                    "bursts deferred $(grep -c 'a burst (' "$LOG")")"
            echo "$rate" >> "$WORK/c-rate-$mode"
            stop_server
            # Kept until the part ends: on ext4, files created soon after others were
            # deleted run at a fraction of the speed (freed inodes and discards), and the next
            # contender would pay for this one's volume.
        done
    done
    rm -rf "$WORK"/many-*
    local on off floor_rate
    on=$(median < "$WORK/c-rate-auto")
    off=$(median < "$WORK/c-rate-off")
    floor_rate=$(median < "$WORK/c-rate-floor")
    echo "(c) median creation rate: watch=auto $on files/s, off $off files/s, floor" \
        "$floor_rate files/s: auto/off $(echo "scale=2; $on / $off" | bc), floor/off" \
        "$(echo "scale=2; $floor_rate / $off" | bc), auto/floor $(echo "scale=2; $on / $floor_rate" | bc)"
}

for part in $PARTS; do "part_$part"; done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"
