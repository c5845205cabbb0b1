#!/usr/bin/env bash
# PostgreSQL back end against SQLite (issue 28), for docs/PERFORMANCE.md: ID creation with 4
# clients, resolve p50 (one client; with the floor, a prepared SELECT 1 to the same cluster
# timed right after its requests) and find p50 (substring queries, one client), then two
# servers of one PostgreSQL volume creating together (2 clients each, half the folders each)
# against one server; the first three from the same files served from a fresh desktop in SQLite
# and from a fresh volume in PostgreSQL, alternating which goes first, RUNS times; medians and
# ratios. Each backend's server is then restarted on the same desktop (the same database) and
# the same 20,000 resolves are timed twice: cold (caches empty) and warm. Starts its own
# throw-away PostgreSQL cluster (initdb into the work directory, run as the `postgres` user, on
# loopback TCP with trust authentication) and removes it at the end.
#
#   DIRS=10 PER_DIR=10000 RUNS=3 scripts/bench-pg.sh
#
# BIN names the directory of the deskd and deskd-bench to measure (default: a release build of
# this tree). CLIENT_SPIN sets $DESKD_SPIN for the measuring client only (e.g. `always`: it polls
# for each reply instead of sleeping once answers were slow; the servers keep their own rule).
# PG_LOG_STATEMENTS=1 also logs every statement the server runs
# (log_min_duration_statement = 0) to $WORK/pgdata/pg.log, to count round trips.
set -euo pipefail
cd "$(dirname "$0")/.."
DIRS=${DIRS:-10}
PER_DIR=${PER_DIR:-10000}
RUNS=${RUNS:-3}
DEPTH=${DEPTH:-1024}
WORK=${BENCH_DIR:-$(mktemp -d /tmp/deskd-bench-pg.XXXXXX)}
VOL="$WORK/vol"
SOCK="$WORK/deskd.sock"
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
PGUSER_OS=${PGUSER_OS:-postgres}
. scripts/bench-common.sh
jget() { python3 -c "import json,sys; print(json.loads(sys.stdin.read())['$1'])"; }

if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet -p deskd-cli
    BIN=target/release
fi
bench() { env ${CLIENT_SPIN:+DESKD_SPIN="$CLIENT_SPIN"} "$BIN/deskd-bench" --socket "$SOCK" --volume "$VOL" "$@"; }

SERVER=
PGDATA="$WORK/pgdata"
PGSOCK="$WORK/pgsock"
cleanup() {
    kill -9 $SERVER 2>/dev/null || true
    runuser -u "$PGUSER_OS" -- "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
    [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$VOL" "$PGDATA" "$PGSOCK"
chmod 711 "$WORK"
chown "$PGUSER_OS" "$PGDATA" "$PGSOCK"
chmod 700 "$PGDATA"
runuser -u "$PGUSER_OS" -- "$PGBIN/initdb" -D "$PGDATA" -U deskd -E UTF8 --auth-local=trust \
    --auth-host=trust --no-instructions >/dev/null
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
{
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$PGSOCK'"
    echo "port = $PGPORT"
    [ -z "${PG_LOG_STATEMENTS:-}" ] || echo "log_min_duration_statement = 0"
} >>"$PGDATA/postgresql.conf"
runuser -u "$PGUSER_OS" -- "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/pg.log" -w start >/dev/null
# Loopback TCP, trust authentication (as a database on the file server itself would be).
URL="postgresql://deskd@127.0.0.1:$PGPORT/"

echo "== populate $((DIRS * PER_DIR)) files in $VOL"
bench populate --dirs "$DIRS" --per-dir "$PER_DIR" >/dev/null
sync

declare -A CREATED=() P50=() FIND=() FLOOR=() COLD=() WARM=()
# Substring patterns for `find` (issue 28: as fast as on SQLite, from the in-memory name index).
PATTERNS=(invoice-0002 proof-0001-dra ft-0003-photo scan-0000-final-0000 REPORT-0001-LAYOUT)
serve_fresh() { # BACKEND LOG
    rm -f "$VOL"/.Desktop "$VOL"/.Desktop-wal "$VOL"/.Desktop-shm
    # A PostgreSQL run marks the root (user.deskd.backend), which an SQLite server refuses.
    python3 -c 'import os, sys
try: os.removexattr(sys.argv[1], "user.deskd.backend")
except OSError: pass' "$VOL"
    local cfg="$WORK/deskd-$1.toml"
    if [ "$1" = pg ]; then
        local db="bench$RANDOM$RANDOM"
        runuser -u "$PGUSER_OS" -- "$PGBIN/psql" -h "$PGSOCK" -p "$PGPORT" -U deskd -d postgres -qc "CREATE DATABASE $db"
        printf '[defaults]\nbackend = "%s%s"\n[volume."%s"]\n' "$URL" "$db" "$VOL" >"$cfg"
    else
        printf '[volume."%s"]\n' "$VOL" >"$cfg"
    fi
    start_server "$1" "$2"
}
start_server() { # BACKEND LOG: a server of the desktop (or database) deskd-BACKEND.toml names
    : >"$2"
    "$BIN/deskd" serve --socket "$SOCK" --config "$WORK/deskd-$1.toml" 2>>"$2" & SERVER=$!
    wait_for_line "$2" "deskd serving" 60
}
stop_server() { kill -TERM "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }

for i in $(seq "$RUNS"); do
    order="sqlite pg"
    [ $((i % 2)) = 1 ] || order="pg sqlite"
    for backend in $order; do
        serve_fresh "$backend" "$WORK/server-$backend.log"
        created=$(bench create --dirs "$DIRS" --per-dir "$PER_DIR" --clients 4 --depth "$DEPTH" | jget objects_per_s)
        CREATED[$backend]+="$created "
        "$BIN/deskd" flush --socket "$SOCK" >/dev/null
        # The floor of a PostgreSQL resolve, timed right after the requests: a prepared
        # SELECT 1 over the same kind of connection (loopback TCP) to the same cluster.
        bench latency --dirs "$DIRS" --per-dir "$PER_DIR" --ops 20000 --pg-floor "${URL}postgres" \
            >"$WORK/latency.json"
        p50=$(jget resolve_p50_us <"$WORK/latency.json")
        floor=$(jget pg_select1_p50_us <"$WORK/latency.json")
        P50[$backend]+="$p50 "
        FLOOR[$backend]+="$floor "
        found=$(bench find --runs 7 "${PATTERNS[@]}" | jget find_p50_ms)
        FIND[$backend]+="$found "
        stop_server
        # Cold and warm: a new server on the same desktop (its caches empty), the same
        # resolves twice.
        start_server "$backend" "$WORK/server-$backend-again.log"
        bench latency --dirs "$DIRS" --per-dir "$PER_DIR" --ops 20000 --passes 2 >"$WORK/latency2.json"
        read -r cold warm < <(python3 -c 'import json,sys; print(*json.load(sys.stdin)["resolve_p50_us_by_pass"])' <"$WORK/latency2.json")
        COLD[$backend]+="$cold "
        WARM[$backend]+="$warm "
        stop_server
        echo "run $i $backend: $created objects/s created, resolve p50 $p50 us (PostgreSQL SELECT 1 p50 $floor us), find p50 $found ms; restarted: resolve p50 $cold us cold, $warm us warm"
    done
done

# Two servers on the one volume and database (issue 28), 2 clients each, each registering half
# the folders, at once: their aggregate creation rate against one server's with 4 clients
# (above). Each run a fresh database; the second server started once the first made the volume.
TWO=()
for i in $(seq "$RUNS"); do
    serve_fresh pg "$WORK/server-two-a.log"
    FIRST=$SERVER
    cfg="$WORK/deskd-pg.toml"
    "$BIN/deskd" serve --socket "$SOCK.b" --config "$cfg" 2>"$WORK/server-two-b.log" & SECOND=$!
    wait_for_line "$WORK/server-two-b.log" "deskd serving" 60
    bench create --dirs "$DIRS" --per-dir "$PER_DIR" --clients 2 --depth "$DEPTH" --share 0/2 >"$WORK/two-a.json" &
    A=$!
    env ${CLIENT_SPIN:+DESKD_SPIN="$CLIENT_SPIN"} "$BIN/deskd-bench" --socket "$SOCK.b" --volume "$VOL" \
        create --dirs "$DIRS" --per-dir "$PER_DIR" --clients 2 --depth "$DEPTH" --share 1/2 >"$WORK/two-b.json"
    wait $A
    # From the first client's start to the last one's end, on the clients' own clocks (as one
    # server's rate above: not the processes' start-up and exit).
    rate=$(python3 -c 'import json, sys
runs = [json.load(open(f)) for f in sys.argv[1:]]
print(sum(r["objects"] for r in runs) / (max(r["ended_unix_s"] for r in runs) - min(r["started_unix_s"] for r in runs)))' \
        "$WORK/two-a.json" "$WORK/two-b.json")
    TWO+=("$rate")
    kill -TERM "$SECOND" 2>/dev/null || true; wait "$SECOND" 2>/dev/null || true
    SERVER=$FIRST; stop_server
    echo "run $i two servers: $rate objects/s created together"
done

med() { tr ' ' '\n' <<<"$1" | grep . | median; }
c_sq=$(med "${CREATED[sqlite]}"); c_pg=$(med "${CREATED[pg]}")
p_sq=$(med "${P50[sqlite]}"); p_pg=$(med "${P50[pg]}")
echo
echo "medians of $RUNS runs, $((DIRS * PER_DIR)) files:"
printf 'creation, 4 clients: SQLite %.0f, PostgreSQL %.0f objects/s: %.3fx (target >= 0.25x)\n' \
    "$c_sq" "$c_pg" "$(echo "$c_pg / $c_sq" | bc -l)"
printf 'resolve p50: SQLite %.1f, PostgreSQL %.1f us: %.1fx (target <= 5x)\n' \
    "$p_sq" "$p_pg" "$(echo "$p_pg / $p_sq" | bc -l)"
# The floor: SQLite's resolve plus one bare PostgreSQL round trip (the one statement a
# resolve on PostgreSQL sends), both from the SQLite runs.
fl_sq=$(med "${FLOOR[sqlite]}"); fl_pg=$(med "${FLOOR[pg]}")
printf 'resolve floor: SQLite resolve %.1f + SELECT 1 %.1f us = %.1f us; PostgreSQL resolve %.1f us is %.2fx the floor (SELECT 1 during the PostgreSQL runs: %.1f us)\n' \
    "$p_sq" "$fl_sq" "$(echo "$p_sq + $fl_sq" | bc -l)" "$p_pg" "$(echo "$p_pg / ($p_sq + $fl_sq)" | bc -l)" "$fl_pg"
# After a restart on the same desktop: the first pass of the same resolves cold (PostgreSQL's
# read cache empty: each a round trip), the second warm (from the server's memory).
co_sq=$(med "${COLD[sqlite]}"); co_pg=$(med "${COLD[pg]}")
wa_sq=$(med "${WARM[sqlite]}"); wa_pg=$(med "${WARM[pg]}")
printf 'resolve p50 after a restart, cold: SQLite %.1f, PostgreSQL %.1f us: %.1fx (%.2fx the floor %.1f us)\n' \
    "$co_sq" "$co_pg" "$(echo "$co_pg / $co_sq" | bc -l)" "$(echo "$co_pg / ($co_sq + $fl_sq)" | bc -l)" "$(echo "$co_sq + $fl_sq" | bc -l)"
printf 'resolve p50 after a restart, warm (same IDs again): SQLite %.1f, PostgreSQL %.1f us: %.1fx (target <= 5x)\n' \
    "$wa_sq" "$wa_pg" "$(echo "$wa_pg / $wa_sq" | bc -l)"
f_sq=$(med "${FIND[sqlite]}"); f_pg=$(med "${FIND[pg]}")
printf 'find p50 (%d patterns): SQLite %.3f, PostgreSQL %.3f ms: %.2fx (target: as fast)\n' \
    "${#PATTERNS[@]}" "$f_sq" "$f_pg" "$(echo "$f_pg / $f_sq" | bc -l)"
t_pg=$(med "${TWO[*]}")
printf 'two servers, 2 clients each: %.0f objects/s together, one server with 4 clients %.0f: %.2fx (target >= 0.9x)\n' \
    "$t_pg" "$c_pg" "$(echo "$t_pg / $c_pg" | bc -l)"
