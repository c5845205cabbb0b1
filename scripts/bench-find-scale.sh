#!/usr/bin/env bash
# Does find's candidate search grow with the volume (issue 29)? In memory, no server and no
# disk: for each size in SIZES, the name index is built over the names `deskd-bench populate`
# gives a volume of that many objects (folders of 10,000; INTERLEAVE folders' files in turn, as
# `deskd-bench create`'s four clients number them), once with its posting lists (trigrams and four-grams) and once scanning
# only, and the patterns of scripts/bench-scale.sh are timed on both (candidates only: the
# confirmation against the desktop and the round trip are the same either way). Prints a table
# for docs/PERFORMANCE.md, "Find at scale".
#
#   scripts/bench-find-scale.sh                         # SIZES="1000000 5000000" (~15 s)
#   SIZES="100000 200000" RUNS=11 scripts/bench-find-scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a SIZES <<<"${SIZES:-1000000 5000000}"
RUNS=${RUNS:-51}
INTERLEAVE=${INTERLEAVE:-4}
PATTERNS=(invoice-0042 proof-0099-dra ft-0007-photo scan-0050-final-0000 REPORT-0013-LAYOUT)

cargo build --release --quiet -p deskd-db --example find_scale
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs; sizes ${SIZES[*]}; $RUNS runs"
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
for size in "${SIZES[@]}"; do
    target/release/examples/find_scale --names "$size" --runs "$RUNS" \
        --interleave "$INTERLEAVE" "${PATTERNS[@]}" >>"$OUT"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "## Find at scale, $(date -u +%F), $(nproc) CPUs, p50 of $RUNS runs"
python3 - "$OUT" <<'PY'
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
def ms(v):
    return f"{v * 1000:.1f} µs" if v < 1 else f"{v:.1f} ms"
head = "| measure |" + "".join(f" {r['names']:,} |" for r in runs)
if len(runs) > 1:
    head += f" {runs[-1]['names']:,} / {runs[0]['names']:,} |"
print(head)
print("|---" * (head.count("|") - 1) + "|")
def row(label, get, fmt):
    vals = [get(r) for r in runs]
    line = f"| {label} |" + "".join(f" {fmt(v)} |" for v in vals)
    if len(runs) > 1:
        line += f" {vals[-1] / vals[0]:.2f}× |"
    print(line)
row("candidates p50, scan", lambda r: r["scan"]["p50_ms"], ms)
row("candidates p50, gram lists", lambda r: r["trigram"]["p50_ms"], ms)
row("scan / gram lists", lambda r: r["scan"]["p50_ms"] / r["trigram"]["p50_ms"], lambda v: f"{v:,.0f}×")
for i, p in enumerate(runs[0]["patterns"]):
    hits = " / ".join(f"{r['patterns'][i]['hits']:,}" for r in runs)
    line = f"| `{p['pattern']}` ({hits} hits): scan → gram lists |"
    for r in runs:
        line += f" {ms(r['patterns'][i]['scan_ms'])} → {ms(r['patterns'][i]['trigram_ms'])} |"
    if len(runs) > 1:
        line += f" {runs[-1]['patterns'][i]['trigram_ms'] / runs[0]['patterns'][i]['trigram_ms']:.2f}× |"
    print(line)
row("index heap, scan only (B/name)", lambda r: r["scan"]["heap_bytes_per_name"], lambda v: f"{v:.1f}")
row("index heap, with gram lists (B/name)", lambda r: r["trigram"]["heap_bytes_per_name"], lambda v: f"{v:.1f}")
row("of which gram lists (B/name)", lambda r: r["trigram_lists_bytes_per_name"], lambda v: f"{v:.1f}")
row("load in memory until the index answers, scan only", lambda r: r["scan"]["load_ms"], ms)
row("load in memory until the index answers, with gram lists", lambda r: r["trigram"]["load_ms"], ms)
row("then the gram lists' build", lambda r: r["trigram"]["trigrams_ms"], ms)
PY
