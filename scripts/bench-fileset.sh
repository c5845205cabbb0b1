#!/usr/bin/env bash
# fileset benchmark for docs/PERFORMANCE.md: save and load of FILES files of SIZE bytes between
# tmpfs (/dev/shm) and disk (the directory of BENCH_DIR), against cp and a plain 64 KiB
# read/write loop, in the same run; medians of RUNS runs.
#
#   scripts/bench-fileset.sh            # 200 files of 5 MB, 5 runs
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${FILES:-200}
SIZE=${SIZE:-5000000}
RUNS=${RUNS:-5}
TMPFS=${TMPFS:-/dev/shm/fileset-bench}
DISK=${BENCH_DIR:-/tmp/fileset-bench}

cargo build --release --quiet -p fileset
FS=target/release/fileset
RW="target/release/fileset-bench rwcopy"
rm -rf "$TMPFS" "$DISK"
mkdir -p "$TMPFS/src" "$DISK"
for i in $(seq -w 1 "$FILES"); do head -c "$SIZE" /dev/urandom > "$TMPFS/src/f$i.dat"; done

# Prints "elapsed user+sys" of a command (its children's CPU, from getrusage).
measure() {
    python3 - "$@" <<'PY'
import resource, subprocess, sys, time
t = time.perf_counter()
subprocess.run(sys.argv[1:], check=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{time.perf_counter() - t:.4f} {r.ru_utime + r.ru_stime:.4f}")
PY
}
# Empty the page cache (root only; otherwise loads may read cached data, said in the output).
COLD=yes
cold() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || COLD=no; }
results=$(mktemp)
for run in $(seq "$RUNS"); do
    rm -rf "$DISK"/* "$TMPFS"/load* "$TMPFS"/cpload "$TMPFS"/rwload
    mkdir -p "$DISK/cp" "$DISK/rw" "$TMPFS/cpload" "$TMPFS/rwload"
    echo "save_fileset $(measure $FS -m save "$DISK/perm" "$TMPFS/src")" >> "$results"
    echo "save_cp_sync $(measure bash -c "cp $TMPFS/src/* $DISK/cp/ && sync $DISK/cp/*")" >> "$results"
    rm -rf "$DISK/cp"; mkdir -p "$DISK/cp"
    echo "save_cp $(measure bash -c "cp $TMPFS/src/* $DISK/cp/")" >> "$results"
    echo "save_rw64k $(measure $RW "$TMPFS/src" "$DISK/rw")" >> "$results"
    # Each load starts cold, as at boot: the set is read from the disk, not the page cache.
    cold; echo "load_fileset $(measure $FS -m load "$DISK/perm" "$TMPFS/load")" >> "$results"
    cold; echo "load_cp $(measure bash -c "cp $DISK/perm/*.dat $TMPFS/cpload/")" >> "$results"
    cold; echo "load_rw64k $(measure $RW "$DISK/perm" "$TMPFS/rwload")" >> "$results"
    cmp -s "$TMPFS/src/f$(printf "%0${#FILES}d" 1).dat" "$TMPFS/load/f$(printf "%0${#FILES}d" 1).dat" || { echo "load produced different data" >&2; exit 1; }
done
echo "## fileset: $FILES files of $SIZE bytes, $(nproc) cores, median of $RUNS runs ($(date -u +%Y-%m-%d)); loads from a cold cache: $COLD"
python3 - "$results" "$FILES" "$SIZE" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, el, cpu = line.split()
    rows.setdefault(name, []).append((float(el), float(cpu)))
total_mb = int(sys.argv[2]) * int(sys.argv[3]) / 1e6
med = lambda name, i: statistics.median(r[i] for r in rows[name])
mbs = lambda name: total_mb / med(name, 0)
print("| operation | fileset | cp | ratio to cp | fileset CPU | 64 KiB read/write loop CPU | CPU ratio |")
print("|---|---|---|---|---|---|---|")
for op, cp in (("save", "save_cp_sync"), ("load", "load_cp")):
    f = f"{op}_fileset"
    print(f"| {op} | {mbs(f):.0f} MB/s | {mbs(cp):.0f} MB/s ({'cp + sync of the files' if op == 'save' else 'cp'}) | {mbs(f)/mbs(cp):.2f} | {med(f,1):.3f} s | {med(op + '_rw64k',1):.3f} s | {med(f,1)/med(op + '_rw64k',1):.2f} |")
print(f"\nplain cp without sync (save direction): {mbs('save_cp'):.0f} MB/s; read/write loop (with fsync, like fileset): save {mbs('save_rw64k'):.0f} MB/s, load {mbs('load_rw64k'):.0f} MB/s")
PY
rm -rf "$TMPFS" "$DISK" "$results"
