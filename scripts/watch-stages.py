#!/usr/bin/env python3
"""Where the server's CPU went during part (a) of scripts/bench-watch.sh (PERF=1), by stage.

Reads `perf script -F comm,tid,ip,sym --no-inline` output (a profile with call graphs) and
puts each sample in the first stage of STAGES that a frame of its stack matches, so a
sample inside the carry's rename(2) counts as the carry's rename, one in the writer's commit
as the commit. Prints each stage's share of the server's samples and, given the window's
server CPU in µs per rename (the CPU line's % of a core × 10,000 / RATE), its
µs per rename.

    perf script -i a-perf-1.data -F comm,tid,ip,sym --no-inline | \
        scripts/watch-stages.py - [US_PER_RENAME]
"""
import collections
import re
import sys

STAGES = [
    ("writer: commit (WAL write, checkpoint)", r"Batch::commit|checkpoint"),
    ("writer: the old name checked (verify_gone, its walk)", r"verify_gone"),
    ("writer: walks from the root (openat per folder)", r"deskd_server::walk::"),
    ("writer: birth time (statx)", r"born_no_later"),
    ("writer: SQLite statements", r"sqlite3|rusqlite|deskd_db::"),
    ("writer: the rest (batch copies, allocation)", r"apply::watched::"),
    ("writer: wake-ups, begin, other", r"deskd_server::writer::"),
    ("watch: event read and coalescing (deskd_watch)", r"^deskd_watch::"),
    ("watch: creates already known (drop_known)", r"watch::known::"),
    ("watch: carry, the rename(2) itself", r"disk::Pins::rename_with"),
    ("watch: held folders (readlink check, paths)", r"disk::Pins::pin|deskd_volume::pin::pin"),
    ("watch: statat checks (resource file, object inode)", r"disk::Pins::stat|disk::is_inode"),
    ("watch: resource header read", r"rsrc::look_at|rsrc::ensure_id|rsrc::read_header"),
    ("watch: mirror read (lgetxattr)", r"read_id_xattr"),
    ("watch: other disk work", r"watch::disk::"),
    ("watch: stamps retried", r"retry_moved_on"),
    ("watch: batch handling (asking the writer, figures)", r"watch::thread::process"),
    ("watch: loop (settle, gather, waits)", r"watch::thread::run"),
]
STAGE_RE = [(label, re.compile(p)) for label, p in STAGES]


def main():
    source = sys.stdin if len(sys.argv) < 2 or sys.argv[1] == "-" else open(sys.argv[1])
    per = float(sys.argv[2]) if len(sys.argv) > 2 else None
    counts = collections.Counter()
    threads = collections.Counter()
    total = 0
    comm, frames = None, []

    def flush():
        nonlocal total
        if comm is None:
            return
        total += 1
        threads[comm] += 1
        label = next((l for l, r in STAGE_RE if any(r.search(f) for f in frames)), None)
        counts[label or f"{comm}: other"] += 1

    for line in source:
        if not line.strip():
            continue
        if not line[0].isspace():
            flush()
            comm, frames = line.split()[0], []
        else:
            parts = line.strip().split(None, 1)
            frames.append(parts[1] if len(parts) > 1 else "")
    flush()
    if total == 0:
        print("no samples")
        return
    print(f"{total} samples; threads: "
          + ", ".join(f"{t} {100 * c / total:.1f} %" for t, c in threads.most_common()))
    for label, c in counts.most_common():
        us = f"  {per * c / total:5.1f} µs/rename" if per else ""
        print(f"{100 * c / total:5.1f} %{us}  {label}")


if __name__ == "__main__":
    main()
