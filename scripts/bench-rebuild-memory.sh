#!/usr/bin/env bash
# Peak memory (max RSS) and time of `deskd rebuild -s`, `-f` and the repair that writes every
# resource file, for two deskd binaries on the same volume in the same run (docs/PERFORMANCE.md,
# "Rebuild memory").
#
#   BEFORE=/path/to/old/deskd scripts/bench-rebuild-memory.sh          # 1,000,000 objects
#   BEFORE=... DIRS=10 PER_DIR=10000 scripts/bench-rebuild-memory.sh    # 100,000 objects
#   BEFORE=... AFTER=/path/to/new/deskd VOL=/path/to/volume scripts/bench-rebuild-memory.sh
#
# MODES (default "scan fresh repair") picks the measures; the repair is the slow one (every
# resource file is removed before each run). AFTER defaults to this tree's release build. Each (binary, mode) runs RUNS times (default 3),
# interleaved binary by binary so load shifts hit both; the table gives medians. The repair
# runs after every resource file is removed, so it writes one per object (as after a copy that
# lost them). Max RSS comes from GNU time (`/usr/bin/time -f %M`, KiB).
#
# ONLINE=1 (the default) then serves the volume with each binary and runs `rebuild -s` and then
# a repair (nothing to repair) as jobs of that server: the table gives the server's RssAnon
# before the job, at its peak (sampled every 0.1 s) and after it, the peak's growth per object,
# and the job's time; then the server's VmHWM (its whole life's peak, which includes the mapped
# desktop). ONLINE=0 skips it; MODES="" with ONLINE=1 measures only the online jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
: "${BEFORE:?set BEFORE to the deskd binary to compare with (e.g. built from the main branch)}"
if [ -z "${AFTER:-}" ]; then
    cargo build --release --quiet -p deskd-cli --bins
    AFTER=$PWD/target/release/deskd
fi
BENCH=${BENCH:-$(dirname "$AFTER")/deskd-bench}
. scripts/bench-common.sh
if [ -z "${VOL:-}" ]; then
    WORK=$(mktemp -d /tmp/deskd-rebuild-memory.XXXXXX)
    VOL=$WORK/vol
    mkdir -p "$VOL"
    "$BENCH" --socket "$WORK/s.sock" --volume "$VOL" populate --dirs "${DIRS:-100}" --per-dir "${PER_DIR:-10000}"
    "$AFTER" rebuild -f --force "$VOL" >/dev/null
fi
"$AFTER" rebuild --force "$VOL" >/dev/null # resource files and mirrors everywhere
objects=$(sqlite3 "$VOL/.Desktop" 'SELECT count(*) FROM objects')
echo "volume $VOL: $objects objects; load before: $(cut -d' ' -f1-3 /proc/loadavg)"

# One measured run: prints "seconds max_rss_kib".
measure() {
    local out
    out=$(mktemp)
    /usr/bin/time -o "$out" -f '%e %M' "$@" >/dev/null 2>&1 || true
    cat "$out"
    rm -f "$out"
}
# Every resource file gone, so the repair writes one per object.
strip_rsrc() { find "$VOL" -name .rsrc -type d -prune -exec rm -rf {} +; }

declare -A T M
MODES=${MODES-scan fresh repair}
for mode in $MODES; do
    for bin in before after; do
        T[$bin.$mode]=""
        M[$bin.$mode]=""
    done
done
for i in $(seq "$RUNS"); do
    for bin in before after; do
        exe=$BEFORE
        [ "$bin" = after ] && exe=$AFTER
        for mode in $MODES; do
            case $mode in
            scan) read -r s m < <(measure "$exe" rebuild -s "$VOL") ;;
            fresh) read -r s m < <(measure "$exe" rebuild -f --force "$VOL") ;;
            repair)
                strip_rsrc
                read -r s m < <(measure "$exe" rebuild --force "$VOL")
                "$exe" rebuild -s "$VOL" >/dev/null 2>&1 ||
                    { echo "$bin: rebuild -s after the repair found differences" >&2; exit 1; }
                ;;
            esac
            T[$bin.$mode]+="$s "; M[$bin.$mode]+="$m "
        done
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
med() { printf '%s\n' $1 | median; }
echo "| mode | before: time | before: peak RSS | after: time | after: peak RSS | time after/before | bytes/object before -> after |"
echo "|---|---|---|---|---|---|---|"
for mode in $MODES; do
    bt=$(med "${T[before.$mode]}"); bm=$(med "${M[before.$mode]}")
    at=$(med "${T[after.$mode]}"); am=$(med "${M[after.$mode]}")
    case $mode in scan) label="rebuild -s" ;; fresh) label="rebuild -f" ;; repair) label="rebuild (repair writing $objects resource files)" ;; esac
    printf '| %s | %.2f s | %.0f MB | %.2f s | %.0f MB | %.2fx | %.0f -> %.0f |\n' "$label" "$bt" \
        "$(echo "$bm / 1024" | bc -l)" "$at" "$(echo "$am / 1024" | bc -l)" "$(echo "$at / $bt" | bc -l)" \
        "$(echo "$bm * 1024 / $objects" | bc -l)" "$(echo "$am * 1024 / $objects" | bc -l)"
done
for mode in $MODES; do
    echo "runs $mode: before times ${T[before.$mode]}/ RSS ${M[before.$mode]}; after times ${T[after.$mode]}/ RSS ${M[after.$mode]}"
done

if [ "${ONLINE:-1}" = 1 ]; then
    # The server's anonymous memory (RssAnon) sampled every 0.1 s while the job runs; its
    # growth is the peak minus what the server held before the job (once its name index is
    # loaded: that load is the server's, not the job's). VmHWM is the whole process's peak.
    echo
    echo "| online job ($objects objects) | before: RssAnon before -> peak -> after | before: growth/object | before: time (server CPU) | after: RssAnon before -> peak -> after | after: growth/object | after: time (server CPU) | time after/before | CPU after/before |"
    echo "|---|---|---|---|---|---|---|---|---|"
    declare -A O
    for bin in before after; do
        exe=$BEFORE
        [ "$bin" = after ] && exe=$AFTER
        SOCK=$(mktemp -u /tmp/deskd-rebuild-memory-sock.XXXXXX)
        LOG=$(mktemp /tmp/deskd-rebuild-memory-log.XXXXXX)
        "$exe" serve --socket "$SOCK" "$VOL" 2>"$LOG" &
        SERVER=$!
        for _ in $(seq 1200); do
            [ -S "$SOCK" ] && grep -q "name index ready" "$LOG" && break
            sleep 0.1
        done
        anon() { awk '/RssAnon/ {print $2}' "/proc/$SERVER/status"; }
        # The server's CPU time (user + system) in clock ticks: fields 14 and 15 of its stat,
        # counted after the command name (which may hold spaces) and its closing parenthesis.
        cpu() { sed 's/.*) //' "/proc/$SERVER/stat" | awk '{print $12 + $13}'; }
        for job in scan repair; do
            flag=-s
            [ "$job" = repair ] && flag=
            a0=$(anon)
            peak=$a0
            t0=$(date +%s.%N)
            c0=$(cpu)
            # shellcheck disable=SC2086
            "$exe" --socket "$SOCK" rebuild $flag "$VOL" >/dev/null 2>&1 &
            CLIENT=$!
            while kill -0 "$CLIENT" 2>/dev/null; do
                a=$(anon)
                [ "$a" -gt "$peak" ] && peak=$a
                sleep 0.1
            done
            wait "$CLIENT" || { echo "$bin: online rebuild $flag failed" >&2; exit 1; }
            t1=$(date +%s.%N)
            c1=$(cpu)
            O[$bin.$job]="$((a0 / 1024)) -> $((peak / 1024)) -> $(($(anon) / 1024)) MiB|$(((peak - a0) * 1024 / objects)) B|$(printf '%.2f' "$(echo "$t1 - $t0" | bc -l)")|$(printf '%.2f' "$(echo "($c1 - $c0) / $(getconf CLK_TCK)" | bc -l)")"
        done
        O[$bin.hwm]=$(awk '/VmHWM/ {printf "%.0f MiB", $2 / 1024}' "/proc/$SERVER/status")
        kill "$SERVER"
        wait "$SERVER" 2>/dev/null || true
        rm -f "$LOG"
    done
    for job in scan repair; do
        IFS='|' read -r bm bg bt bc <<<"${O[before.$job]}"
        IFS='|' read -r am ag at ac <<<"${O[after.$job]}"
        label="rebuild -s"
        [ "$job" = repair ] && label="rebuild (repair, nothing to repair)"
        printf '| %s | %s | %s | %s s (%s s) | %s | %s | %s s (%s s) | %.2fx | %.2fx |\n' "$label" \
            "$bm" "$bg" "$bt" "$bc" "$am" "$ag" "$at" "$ac" "$(echo "$at / $bt" | bc -l)" "$(echo "$ac / $bc" | bc -l)"
    done
    echo "server VmHWM at the end: before ${O[before.hwm]}, after ${O[after.hwm]}"
fi
