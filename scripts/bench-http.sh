#!/usr/bin/env bash
# The HTTP side (GET /metrics over [server] http_listen): time of one scrape over HTTP with
# VOLUMES volumes, and the resolve throughput of 4 pipelining socket clients while an HTTP
# scraper asks every 100 ms, against the same clients with no HTTP traffic, in the same run
# (one server, alternating); medians of RUNS.
#
#   scripts/bench-http.sh                          # 10 volumes x 4 x 2,500 files, 5 runs
#   VOLUMES=10 DIRS=2 PER_DIR=1000 RUNS=3 SECONDS_PER_RUN=3 scripts/bench-http.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VOLUMES=${VOLUMES:-10}
DIRS=${DIRS:-4}
PER_DIR=${PER_DIR:-2500}
RUNS=${RUNS:-5}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
WORK=$(mktemp -d /tmp/deskd-bench-http.XXXXXX)
SOCK="$WORK/deskd.sock"

cargo build --release --quiet -p deskd-cli --bin deskd --bin deskd-bench
BIN=target/release
. scripts/bench-common.sh
SERVER=
stop() { [ -z "$SERVER" ] || { kill -TERM "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; } || true; rm -rf "$WORK"; }
trap stop EXIT

vols=()
for v in $(seq "$VOLUMES"); do
    mkdir -p "$WORK/vol$v"
    "$BIN/deskd-bench" --socket "$SOCK" --volume "$WORK/vol$v" populate --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
    vols+=("$WORK/vol$v")
done
(umask 077; head -c 32 /dev/urandom | base64 >"$WORK/token")
cat >"$WORK/deskd.toml" <<TOML
[server]
http_listen = "127.0.0.1:0"
http_token_file = "$WORK/token"
TOML
"$BIN/deskd" serve --socket "$SOCK" --config "$WORK/deskd.toml" "${vols[@]}" 2>"$WORK/server.log" & SERVER=$!
wait_for_line "$WORK/server.log" "listening on http"
ADDR=$(sed -n 's/.*listening on http \([^ ]*\).*/\1/p' "$WORK/server.log")
echo "== $VOLUMES volumes of $((DIRS * PER_DIR)) files, each registered, then resolved a little; HTTP on $ADDR"
for v in "${vols[@]}"; do
    "$BIN/deskd-bench" --socket "$SOCK" --volume "$v" create --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
    "$BIN/deskd-bench" --socket "$SOCK" --volume "$v" throughput --dirs "$DIRS" --per-dir "$PER_DIR" --seconds 0.2 >/dev/null
done

# GET /metrics COUNT times (every INTERVAL s, 0: back to back) or for SECONDS, each on a new
# connection as Prometheus would after an idle gap; prints JSON with p50/p99/max in ms.
scrape() {
    python3 - "$ADDR" "$@" <<'PY'
import http.client, json, sys, time
addr, interval, limit, by_time = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "seconds"
host, port = addr.rsplit(":", 1)
times, size, began = [], 0, time.monotonic()
while (time.monotonic() - began < limit) if by_time else (len(times) < limit):
    t = time.perf_counter()
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    c.request("GET", "/metrics")
    r = c.getresponse()
    body = r.read()
    c.close()
    assert r.status == 200, r.status
    times.append((time.perf_counter() - t) * 1000)
    size = len(body)
    if interval:
        time.sleep(max(0.0, interval - (time.perf_counter() - t)))
times.sort()
print(json.dumps({"scrapes": len(times), "p50_ms": round(times[len(times) // 2], 3),
                  "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3),
                  "max_ms": round(times[-1], 3), "bytes": size}))
PY
}
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read())['$1'])"; }
echo "== scrape time over HTTP, back to back"
scrapes=$(scrape 0 500 count)
echo "$scrapes"

VOL1="${vols[0]}"
throughput() {
    "$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL1" throughput --dirs "$DIRS" --per-dir "$PER_DIR" \
        --clients 4 --seconds "$SECONDS_PER_RUN" | field ops_per_s
}
plain=()
scraped=()
for i in $(seq "$RUNS"); do
    a=$(throughput)
    scrape 0.1 "$SECONDS_PER_RUN" seconds >"$WORK/scraper.json" &
    scraper=$!
    b=$(throughput)
    wait "$scraper"
    echo "run $i: no HTTP traffic $a ops/s, /metrics scraped over HTTP every 100 ms $b ops/s ($(field scrapes <"$WORK/scraper.json") scrapes)"
    plain+=("$a")
    scraped+=("$b")
done
a=$(printf '%s\n' "${plain[@]}" | median)
b=$(printf '%s\n' "${scraped[@]}" | median)
echo
echo "| measure | value |"
echo "|---|---|"
echo "| GET /metrics p50 / p99 / max, $VOLUMES volumes (ms, new connection each) | $(echo "$scrapes" | field p50_ms) / $(echo "$scrapes" | field p99_ms) / $(echo "$scrapes" | field max_ms) |"
echo "| metrics text (bytes) | $(echo "$scrapes" | field bytes) |"
python3 -c "print(f'| resolves/s, 4 pipelining clients, no HTTP traffic (median of $RUNS) | {$a:.0f} |')"
python3 -c "print(f'| resolves/s, same, /metrics scraped over HTTP every 100 ms | {$b:.0f} |')"
python3 -c "print(f'| scraped / not scraped | {$b / $a:.3f} |')"
