#!/usr/bin/env bash
# fileset benchmark for docs/PERFORMANCE.md: save and load of FILES files of SIZE bytes between
# tmpfs (/dev/shm) and disk (the directory of BENCH_DIR), against cp and a plain 64 KiB
# read/write loop, in the same run; medians of RUNS runs.
#
#   scripts/bench-fileset.sh            # 200 files of 5 MB, 7 runs
#   PIPE_MAX_SIZE=16777216 scripts/bench-fileset.sh
#       # as root: raise /proc/sys/fs/pipe-max-size for the run (put back at the end), so
#       # fileset gets the 16 MiB pipes that root with CAP_SYS_RESOURCE gets on a normal server
#   TMPFS_HUGE=within_size scripts/bench-fileset.sh
#       # as root: the working directory on a tmpfs of its own mounted with huge=within_size
#       # (transparent huge pages for its files), unmounted at the end; all contenders use it
#   NO_PAGE_REPORTING=1 scripts/bench-fileset.sh
#       # as root in a VM with free-page reporting (virtio-balloon): stop the guest handing
#       # freed memory back to the host for the run, and touch the free memory once first, so
#       # no contender pays host faults for pages another one freed (see docs/PERFORMANCE.md)
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${FILES:-200}
SIZE=${SIZE:-5000000}
RUNS=${RUNS:-7}
TMPFS=${TMPFS:-/dev/shm/fileset-bench}
DISK=${BENCH_DIR:-/tmp/fileset-bench}

cargo build --release --quiet -p fileset
PIPE_MAX=/proc/sys/fs/pipe-max-size
old_pipe_max=$(cat "$PIPE_MAX")
huge_mount=""
REPORTING=/sys/module/page_reporting/parameters/page_reporting_order
old_reporting=""
# Puts back what the run changed on the machine, however it ends.
restore() {
    [ -n "${PIPE_MAX_SIZE:-}" ] && echo "$old_pipe_max" > "$PIPE_MAX"
    [ -n "$old_reporting" ] && echo "$old_reporting" > "$REPORTING"
    if [ -n "$huge_mount" ]; then
        umount "$huge_mount" && rmdir "$huge_mount"
    fi
    return 0
}
trap restore EXIT
if [ -n "${PIPE_MAX_SIZE:-}" ]; then
    echo "$PIPE_MAX_SIZE" > "$PIPE_MAX"
fi
if [ -n "${NO_PAGE_REPORTING:-}" ]; then
    [ -w "$REPORTING" ] || { echo "bench-fileset: no writable $REPORTING" >&2; exit 1; }
    old_reporting=$(cat "$REPORTING")
    # Only free blocks of this order or larger are reported; none is that large.
    echo 11 > "$REPORTING"
    # Every free page once, through tmpfs, leaving 1 GiB: handed back pages come home now.
    warm_mb=$(( $(awk '/MemAvailable/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    head -c "${warm_mb}M" /dev/zero > /dev/shm/fileset-bench-warm || true
    rm -f /dev/shm/fileset-bench-warm
fi
if [ -n "${TMPFS_HUGE:-}" ]; then
    huge_mount=$(mktemp -d /tmp/fileset-bench-tmpfs.XXXXXX)
    # Room for the set and the four copies the loads make (fileset, cp, loop, write floor).
    mount -t tmpfs -o "huge=$TMPFS_HUGE,size=$((6 * FILES * SIZE + (64 << 20)))" tmpfs "$huge_mount"
    TMPFS=$huge_mount/fileset-bench
fi
FS=target/release/fileset
BENCH=target/release/fileset-bench
RW="$BENCH rwcopy"
rm -rf "$TMPFS" "$DISK"
mkdir -p "$TMPFS/src" "$DISK"
need=$((RUNS * 4 * FILES * SIZE))
avail=$(df --output=avail -B1 "$DISK" | tail -1)
if [ "$avail" -lt "$need" ]; then
    echo "bench-fileset: $DISK needs $((need / 1000000)) MB free ($((avail / 1000000)) MB are)" >&2
    exit 1
fi
for i in $(seq -w 1 "$FILES"); do head -c "$SIZE" /dev/urandom > "$TMPFS/src/f$i.dat"; done

# Prints "elapsed user+sys" of a command: the CPU of its process tree, from getrusage, taken
# as a difference — whatever started python3 may have charged children of its own to it (a
# pyenv shim runs ~0.06 s of them), which must not be charged to the command.
measure() {
    python3 - "$@" <<'PY'
import resource, subprocess, sys, time
cpu = lambda r: r.ru_utime + r.ru_stime
before = cpu(resource.getrusage(resource.RUSAGE_CHILDREN))
t = time.perf_counter()
subprocess.run(sys.argv[1:], check=True)
elapsed = time.perf_counter() - t
print(f"{elapsed:.4f} {cpu(resource.getrusage(resource.RUSAGE_CHILDREN)) - before:.4f}")
PY
}
# Every contender starts from the same memory: an empty page cache, as at boot (root only;
# otherwise said in the output), and the working set on the active list, as a working set in
# use is. drop_caches moves every tmpfs page to the inactive list, so the set is read twice
# after it; else whoever reads it first pays for moving all its pages back — a cost of the
# benchmark, not of copying.
COLD=yes
reset() {
    sync
    echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || COLD=no
    cat "$TMPFS"/src/* > /dev/null
    cat "$TMPFS"/src/* > /dev/null
}
results=$(mktemp)
# Every run writes into new directories on the disk and nothing there is deleted until the
# end: ext4 without a journal (as here) makes each file creation step over inodes freed in the
# last 30-300 s, which would charge a previous run's `rm -rf` to whoever creates files next.
save_fileset() { measure $FS -m save "$out/perm" "$TMPFS/src"; }
save_cp_sync() { measure bash -c "cp $TMPFS/src/* $out/cpsync/ && sync $out/cpsync/*"; }
save_rw64k() { measure $RW "$TMPFS/src" "$out/rw"; }
save_cp() { measure bash -c "cp $TMPFS/src/* $out/cp/"; }
# Loads read the set from the disk (the cache was emptied), as at boot.
load_fileset() { measure $FS -m load "$out/perm" "$TMPFS/load"; }
load_cp() { measure bash -c "cp $out/perm/*.dat $TMPFS/cpload/"; }
load_rw64k() { measure $RW "$out/perm" "$TMPFS/rwload"; }
# The two halves every load needs, each alone: getting the set off the disk (O_DIRECT, one
# request per file, nothing written) and putting its bytes into new tmpfs files (written from
# memory, nothing read). Their sum bounds from below what any way of loading can cost.
load_readfloor() { measure $BENCH readfloor "$out/perm"; }
load_writefloor() { measure $BENCH writefloor "$out/perm" "$TMPFS/floorload"; }
# Each run starts with a different contender (the order rotates), so no one always goes first.
rotate() { local n=$1; shift; local a=("$@"); echo "${a[@]:n%${#a[@]}}" "${a[@]:0:n%${#a[@]}}"; }
for run in $(seq "$RUNS"); do
    out="$DISK/run$run"
    rm -rf "$TMPFS"/load "$TMPFS"/cpload "$TMPFS"/rwload "$TMPFS"/floorload
    mkdir -p "$out/cpsync" "$out/cp" "$out/rw" "$TMPFS/cpload" "$TMPFS/rwload" "$TMPFS/floorload"
    # All saves first: every load reads the set fileset saved.
    for c in $(rotate "$run" save_fileset save_cp_sync save_rw64k save_cp); do
        reset; echo "$c $($c)" >> "$results"
    done
    for c in $(rotate "$run" load_fileset load_cp load_rw64k load_readfloor load_writefloor); do
        reset; echo "$c $($c)" >> "$results"
    done
    cmp -s "$TMPFS/src/f$(printf "%0${#FILES}d" 1).dat" "$TMPFS/load/f$(printf "%0${#FILES}d" 1).dat" || { echo "load produced different data" >&2; exit 1; }
done
# The write size fileset chose for this disk and pipe: it prints it at -vvv; one small file
# is enough to see it.
write_size() {
    mkdir -p "$TMPFS/probe"
    head -c 4096 /dev/urandom > "$TMPFS/probe/one.dat"
    "$FS" -m -vvv save "$DISK/probe" "$TMPFS/probe" | sed -n 's/^O_DIRECT writes of up to //p'
}
echo "## fileset: $FILES files of $SIZE bytes, $(nproc) cores, median of $RUNS runs ($(date -u +%Y-%m-%d)); loads from a cold cache: $COLD; pipe-max-size $(cat "$PIPE_MAX"); tmpfs huge=${TMPFS_HUGE:-never, /dev/shm}; free-page reporting held: ${NO_PAGE_REPORTING:-no}; O_DIRECT writes of up to $(write_size)"
python3 - "$results" "$FILES" "$SIZE" <<'PY'
import statistics, sys
rows = {}
runs = lambda name: ", ".join(f"{c:.2f}" for _, c in rows[name])
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
for op in ("save", "load"):
    print(f"\n{op} CPU of each run: fileset {runs(op + '_fileset')}; loop {runs(op + '_rw64k')} (s)")
rf, wf, loop = med("load_readfloor", 1), med("load_writefloor", 1), med("load_rw64k", 1)
print(f"\nfloor of any load (each half alone, medians): read {rf:.3f} s + write {wf:.3f} s = {rf + wf:.3f} s = {(rf + wf) / loop:.2f} of the loop's CPU (fileset: {med('load_fileset', 1) / loop:.2f})")
print(f"load floor CPU of each run: read {runs('load_readfloor')}; write {runs('load_writefloor')} (s)")
print(f"\nplain cp without sync (save direction): {mbs('save_cp'):.0f} MB/s; read/write loop (with fsync, like fileset): save {mbs('save_rw64k'):.0f} MB/s, load {mbs('load_rw64k'):.0f} MB/s")
PY
rm -rf "$TMPFS" "$DISK" "$results"
