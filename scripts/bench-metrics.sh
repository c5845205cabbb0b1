#!/usr/bin/env bash
# The metrics (issue 27): time of one scrape with VOLUMES volumes (each with some request figures
# recorded), over the socket (`deskd metrics`) and over HTTP (GET /metrics on `http_listen`, a new
# connection each, as Prometheus after its idle gap); and the resolve throughput of 4 pipelining
# socket clients with no scraper, with `deskd metrics` asked every 100 ms and with GET /metrics
# every 100 ms, in the same run against one server, the order rotating; medians of RUNS.
#
#   scripts/bench-metrics.sh                          # 10 volumes x 4 x 2,500 files, 5 runs
#   VOLUMES=10 DIRS=2 PER_DIR=1000 RUNS=3 SECONDS_PER_RUN=3 scripts/bench-metrics.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VOLUMES=${VOLUMES:-10}
DIRS=${DIRS:-4}
PER_DIR=${PER_DIR:-2500}
RUNS=${RUNS:-5}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
WORK=$(mktemp -d /tmp/deskd-bench-metrics.XXXXXX)
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

field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read())['$1'])"; }

# GET /metrics COUNT times (every INTERVAL s, 0: back to back) or for SECONDS, each on a new
# connection; prints JSON with p50/p99/max in ms, as `deskd-bench scrape` does for the socket.
http_scrape() {
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

echo "== scrape time, back to back"
socket_scrapes=$("$BIN/deskd-bench" --socket "$SOCK" scrape --count 500)
echo "socket: $socket_scrapes"
http_scrapes=$(http_scrape 0 500 count)
echo "http:   $http_scrapes"

VOL1="${vols[0]}"
throughput() {
    "$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL1" throughput --dirs "$DIRS" --per-dir "$PER_DIR" \
        --clients 4 --seconds "$SECONDS_PER_RUN" | field ops_per_s
}
# The throughput while a scraper asks every 100 ms: `socket` or `http`.
scraped_by() {
    if [ "$1" = socket ]; then
        "$BIN/deskd-bench" --socket "$SOCK" scrape --interval-ms 100 --seconds "$SECONDS_PER_RUN" >"$WORK/scraper.json" &
    else
        http_scrape 0.1 "$SECONDS_PER_RUN" seconds >"$WORK/scraper.json" &
    fi
    local scraper=$!
    throughput
    wait "$scraper"
}
# The order rotates from run to run, so that a neighbour's load drifting during a run weighs on
# every side alike; each run's own ratios are kept too.
plain=() by_socket=() by_http=() socket_ratios=() http_ratios=()
for i in $(seq "$RUNS"); do
    case $((i % 3)) in
        1) a=$(throughput); s=$(scraped_by socket); h=$(scraped_by http) ;;
        2) s=$(scraped_by socket); h=$(scraped_by http); a=$(throughput) ;;
        0) h=$(scraped_by http); a=$(throughput); s=$(scraped_by socket) ;;
    esac
    echo "run $i: no scraper $a ops/s, deskd metrics every 100 ms $s ops/s, GET /metrics every 100 ms $h ops/s"
    plain+=("$a") by_socket+=("$s") by_http+=("$h")
    socket_ratios+=("$(python3 -c "print($s / $a)")") http_ratios+=("$(python3 -c "print($h / $a)")")
done
a=$(printf '%s\n' "${plain[@]}" | median)
s=$(printf '%s\n' "${by_socket[@]}" | median)
h=$(printf '%s\n' "${by_http[@]}" | median)
sr=$(printf '%s\n' "${socket_ratios[@]}" | median)
hr=$(printf '%s\n' "${http_ratios[@]}" | median)
times() { echo "$(echo "$1" | field p50_ms) / $(echo "$1" | field p99_ms) / $(echo "$1" | field max_ms)"; }
echo
echo "| measure | value |"
echo "|---|---|"
echo "| scrape over the socket (\`deskd metrics\`) p50 / p99 / max, $VOLUMES volumes (ms, round trip included) | $(times "$socket_scrapes") |"
echo "| GET /metrics over HTTP p50 / p99 / max (ms, a new connection each) | $(times "$http_scrapes") |"
echo "| metrics text (bytes) | $(echo "$http_scrapes" | field bytes) |"
python3 -c "print(f'| resolves/s, 4 pipelining clients, no scraper (median of $RUNS) | {$a:.0f} |')"
python3 -c "print(f'| resolves/s, same, deskd metrics every 100 ms: / no scraper (ratio of medians; median of the runs\' ratios) | {$s:.0f}: {$s / $a:.3f}; {$sr:.3f} |')"
python3 -c "print(f'| resolves/s, same, GET /metrics every 100 ms: / no scraper (ratio of medians; median of the runs\' ratios) | {$h:.0f}: {$h / $a:.3f}; {$hr:.3f} |')"
