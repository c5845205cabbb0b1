#!/usr/bin/env bash
# Netatalk's own AFP conformance tests (afptest: spectest and T2_spectest, AFP 3.4, two users, two
# volumes) through a real afpd (Netatalk 3.2.0) with deskd as its CNID server, configured as
# docs/netatalk.md says: `deskd serve` answering afpd itself (`[netatalk]` in deskd.toml), or
# with DESKD_CNID=bridge through the standalone `deskd netatalk` bridge. Fails on every test that the stock back end passes
# (third_party/netatalk/stock-baseline.txt) and that does not pass through deskd, and when afpd's
# log says its CNID back end failed.
#
# Usage: scripts/afp-conformance.sh [suite|speed]   (root; Debian; apt reachable the first time)
#   suite (default)   the conformance run above
#   speed             lantest (Netatalk's HELIOS LanTest clone) through the stock back end,
#                     through deskd and through the stock back end again, alternating, ROUNDS
#                     each (default 5): the median of each figure, deskd/stock, and stock
#                     again/stock, the run's own noise (docs/PERFORMANCE.md); SPEED_BRIDGE=1
#                     adds deskd through the standalone bridge to each round (bridge / stock)
#   SPEED_TESTS=37    speed runs only these lantest tests (lantest -t: 1-7 in its figures'
#                     order; 3 brings 2 with it): quicker rounds to iterate on one figure
#   DESKD=path        the deskd binary (default target/release/deskd)
#   DESKD_CNID=inserve|bridge
#                     how afpd reaches deskd (default inserve: deskd serve's own listener, the
#                     setup docs/netatalk.md recommends; bridge: `deskd netatalk`)
#   NETATALK_WORK=dir where afpd and the suite are built and kept between runs
#                     (default /var/tmp/netatalk-kit; delete it to build anew)
# The first run installs the build dependencies and builds afpd and the suite (about 4 minutes
# on 2 cores); later runs reuse the build and take about a minute. Results:
# $NETATALK_WORK/run/deskd-veto-*.log (per test), *-afpd.log, *-deskd-*.out.
set -euo pipefail
export LC_ALL=C   # one sort order for sort and join
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KIT=$ROOT/third_party/netatalk
export WORK=${NETATALK_WORK:-/var/tmp/netatalk-kit}
export RUN=$WORK/run
DESKD_BIN=$(realpath "${DESKD:-$ROOT/target/release/deskd}")
case "${DESKD_CNID:-inserve}" in
    inserve) export INSERVE=1 ;;
    bridge) export INSERVE=0 ;;
    *) echo "afp-conformance: DESKD_CNID is inserve or bridge, not $DESKD_CNID" >&2; exit 2 ;;
esac
log() { echo "afp-conformance: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root: it builds and starts afpd and makes two throw-away users (afpt1, afpt2)"
    exit 1
fi
[ -x "$DESKD_BIN" ] || { log "no deskd binary at $DESKD_BIN (cargo build --release)"; exit 1; }

# Build dependencies: only what is missing (the kit's list; apt the first time).
need=(build-essential autoconf automake libtool pkg-config meson ninja-build
      libgcrypt20-dev libevent-dev libdb-dev libsqlite3-dev libiniparser-dev
      libacl1-dev libattr1-dev libpam0g-dev libssl-dev libtalloc-dev libtdb-dev
      bison flex libldap2-dev libkrb5-dev libwrap0-dev libglib2.0-dev file perl openssl)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    bash "$KIT/spectest.sh" deps >"$WORK.deps.log" 2>&1 || { tail -20 "$WORK.deps.log"; exit 1; }
fi
mkdir -p "$WORK"
log "building afpd and afptest in $WORK (kept between runs)"
bash "$KIT/spectest.sh" build >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; exit 1; }

# deskd as an administrator would run it for these volumes. The suite makes its two volumes
# mode 0777 (its two users share them), which deskd serves only when told to. T2 test235 wants
# Netatalk's answer to a file replaced outside AFP (a new ID): `replaced = "new-id"`, the
# setting docs/netatalk.md names for Netatalk's exact behaviour (with the default, keep-id,
# test235 alone differs, by design).
mkdir -p "$RUN"
VOL1=$WORK/afpvol1 VOL2=$WORK/afpvol2
cat >"$RUN/deskd.toml" <<EOF
[defaults]
world_writable = true
replaced = "new-id"

[volume."$VOL1"]
[volume."$VOL2"]
EOF
# The same with deskd serve's own afpd listener on the port the kit's afp.conf names, reading
# afp.conf for afpd's vol dbpath folders.
cp "$RUN/deskd.toml" "$RUN/deskd-inserve.toml"
cat >>"$RUN/deskd-inserve.toml" <<EOF

[netatalk]
listen = "127.0.0.1:4700"
afp_conf = "$RUN/afp.conf"
EOF
# The suite starts "\$DESKD serve VOL1 VOL2" (with DESKD_INSERVE=1 when deskd answers afpd
# itself) and otherwise "\$DESKD netatalk --listen …": add the configuration file and afp.conf
# (for afpd's vol dbpath folders) as docs/netatalk.md does.
cat >"$RUN/deskd-as-documented" <<EOF
#!/bin/sh
case "\$1" in
    serve) shift
        config="$RUN/deskd.toml"
        [ "\${DESKD_INSERVE:-0}" = 1 ] && config="$RUN/deskd-inserve.toml"
        exec "$DESKD_BIN" serve --config "\$config" "\$@" ;;
    netatalk) shift; exec "$DESKD_BIN" netatalk --afp-conf "$RUN/afp.conf" "\$@" ;;
    *) exec "$DESKD_BIN" "\$@" ;;
esac
EOF
chmod 755 "$RUN/deskd-as-documented"

if [ "${1:-suite}" = speed ]; then
    rounds=${ROUNDS:-5}
    log "lantest, stock, deskd and stock again alternating, $rounds rounds each"
    rm -f "$RUN"/speed-*-lantest.log
    [ "${SPEED_BRIDGE:-0}" = 1 ] && log "and deskd through the standalone bridge in each round"
    VETO=1 SPEED_AA=1 SPEED_ROUNDS=$rounds SPEED_TESTS=${SPEED_TESTS:-} DESKD="$RUN/deskd-as-documented" bash "$KIT/spectest.sh" speed \
        >"$RUN/speed.log" 2>&1 || { tail -30 "$RUN/speed.log"; exit 1; }
    python3 - "$RUN" "$INSERVE" <<'PY'
import glob, re, statistics, sys
run, inserve = sys.argv[1], sys.argv[2] == "1"
def figures(path):
    out, on = {}, False
    for line in open(path, errors="replace"):
        if "Lantest Results" in line:
            on = True
        m = re.match(r"(.+?)\s+(\d+) ms", line)
        if on and m:
            out[m.group(1).strip()] = int(m.group(2))
    return out
runs = {b: [figures(f) for f in sorted(glob.glob(f"{run}/speed-{b}-veto-[0-9]*-lantest.log"))]
        for b in ("stock", "deskd", "stock2", "bridge")}
if not runs["stock"] or not runs["deskd"] or not runs["stock"][0]:
    sys.exit("afp-conformance: no lantest figures (see speed.log)")
# "stock again": the stock back end run a second time in each round; its ratio to the first
# is the run's own noise for that figure (the floor no back end can be judged below).
print(f"lantest: {len(runs['stock'])} rounds each; median ms (lower is better)")
bridge = bool(runs["bridge"])
print(f"deskd: {'deskd serve answering afpd itself' if inserve else 'the standalone bridge'}")
if bridge:
    print("| figure | stock | deskd | stock again | bridge | deskd / stock | stock again / stock | bridge / stock |")
    print("|---|---|---|---|---|---|---|---|")
else:
    print("| figure | stock | deskd | stock again | deskd / stock | stock again / stock |")
    print("|---|---|---|---|---|---|")
worst = 0.0
for key in runs["stock"][0]:
    s = [r[key] for r in runs["stock"] if key in r]
    d = [r[key] for r in runs["deskd"] if key in r]
    a = [r[key] for r in runs["stock2"] if key in r]
    if not s or not d:
        continue
    ms, md = statistics.median(s), statistics.median(d)
    ma = statistics.median(a) if a else float("nan")
    ratio = md / ms if ms else float("nan")
    floor = ma / ms if ms else float("nan")
    worst = max(worst, ratio if ms else 0)
    if bridge:
        b = [r[key] for r in runs["bridge"] if key in r]
        mb = statistics.median(b) if b else float("nan")
        print(f"| {key} | {ms:g} | {md:g} | {ma:g} | {mb:g} | {ratio:.2f} | {floor:.2f} | {mb / ms if ms else float('nan'):.2f} |")
    else:
        print(f"| {key} | {ms:g} | {md:g} | {ma:g} | {ratio:.2f} | {floor:.2f} |")
print(f"worst ratio {worst:.2f}")
PY
    exit 0
fi

log "running spectest and T2_spectest through deskd"
VETO=1 MKDBDIR=0 DESKD="$RUN/deskd-as-documented" bash "$KIT/spectest.sh" deskd \
    >"$RUN/conformance.log" 2>&1 || { tail -30 "$RUN/conformance.log"; exit 1; }

# Per test: "prog:testNNN RESULT", as the kit's summary parses it.
results=$RUN/deskd-veto.results
for prog in spectest T2_spectest; do
    grep -a " - summary - " "$RUN/deskd-veto-$prog.log" | sed -E 's/\x1b\[[0-9;]*m//g' \
        | sed -E 's/^(test[0-9]+) - summary - (PASSED|FAILED|SKIPPED|NOT TESTED).*/\1 \2/' \
        | sed 's/NOT TESTED/NOT_TESTED/' | sort -u | sed "s/^/$prog:/"
done | sort >"$results"

# Per group, for docs/netatalk.md: passed/failed/skipped by the stock back end and by deskd.
python3 - "$RUN" "$KIT/stock-baseline.txt" "$results" <<'PY' >"$RUN/groups.md"
import re, sys
run, baseline, deskd = sys.argv[1:]
group_of = {}
for prog in ("spectest", "T2_spectest"):
    group = None
    for line in open(f"{run}/deskd-veto-{prog}.log", errors="replace"):
        if line.startswith("##### group "):
            group = f"{prog} {line.split()[2]}"
        m = re.match(r"(test\d+) - summary - ", re.sub(r"\x1b\[[0-9;]*m", "", line))
        if m and group:
            group_of[f"{prog}:{m.group(1)}"] = group
def tally(path):
    out = {}
    for line in open(path):
        test, result = line.split()
        g = group_of.get(test, test.split(":")[0] + " (no result)")
        out.setdefault(g, {}).setdefault(result, 0)
        out[g][result] += 1
    return out
s, d = tally(baseline), tally(deskd)
def cell(t, g):
    r = t.get(g, {})
    return f"{r.get('PASSED', 0)} / {r.get('FAILED', 0)} / {r.get('SKIPPED', 0) + r.get('NOT_TESTED', 0)}"
print("| group | stock: passed / failed / skipped | deskd: passed / failed / skipped |")
print("|---|---|---|")
for g in sorted(set(s) | set(d)):
    print(f"| {g} | {cell(s, g)} | {cell(d, g)} |")
PY

status=0
sort "$KIT/stock-baseline.txt" >"$RUN/stock-baseline.sorted"
regressions=$(join -a1 -e MISSING -o 0,1.2,2.2 "$RUN/stock-baseline.sorted" "$results" \
    | awk '$2 == "PASSED" && $3 != "PASSED"')
if [ -n "$regressions" ]; then
    log "tests the stock back end passes that do not pass through deskd (test stock deskd):"
    echo "$regressions" >&2
    status=1
fi
fatal=$(grep -ac 'CNID backend DB failed' "$RUN/deskd-veto-afpd.log" || true)
if [ "$fatal" != 0 ]; then
    log "afpd's log says its CNID back end failed ($fatal times): $RUN/deskd-veto-afpd.log"
    status=1
fi
count() { awk -v r="$1" '$2 == r' "$2" | wc -l; }
log "stock: $(count PASSED "$KIT/stock-baseline.txt") passed, $(count FAILED "$KIT/stock-baseline.txt") failed, $(count SKIPPED "$KIT/stock-baseline.txt") skipped; deskd: $(count PASSED "$results") passed, $(count FAILED "$results") failed, $(count SKIPPED "$results") skipped"
log "per group: $RUN/groups.md"
[ $status = 0 ] && log "every test the stock back end passes passes through deskd"
exit $status
