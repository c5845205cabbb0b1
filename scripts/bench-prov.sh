#!/usr/bin/env bash
# prov-backup performance (docs/PERFORMANCE.md):
#  1. latency: median time from an ldapmodify that sets sstProvisioningMode add (state 0) to the
#     completion timestamp in the entry, over RUNS requests one after another;
#  2. throughput: ACCOUNTS accounts added in one LDIF until all of them read "added".
# Runs a private slapd (scripts/slapd-fixture.sh) and the release binary; real rsnapshot
# configtest for every account.
#   RUNS=21 ACCOUNTS=1000 WORKERS=4 scripts/bench-prov.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-21}"
ACCOUNTS="${ACCOUNTS:-1000}"
WORKERS="${WORKERS:-4}"
bash scripts/slapd-fixture.sh install
cargo build --release -q -p prov-backup
work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
url="ldap://127.0.0.1:$port/"
base="ou=accounts,ou=backup,ou=services,dc=stoney-cloud,dc=org"
auth=(-x -H "$url" -D "cn=admin,dc=stoney-cloud,dc=org" -w secret)
cleanup() {
    [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
    bash scripts/slapd-fixture.sh stop "$work/ldap" || true
    rm -rf "$work"
}
trap cleanup EXIT
bash scripts/slapd-fixture.sh start "$work/ldap" "$port" --no-tree
ldapadd "${auth[@]}" >/dev/null <<LDIF
dn: dc=stoney-cloud,dc=org
objectClass: dcObject
objectClass: organization
dc: stoney-cloud
o: x

dn: ou=services,dc=stoney-cloud,dc=org
objectClass: organizationalUnit
ou: services

dn: ou=backup,ou=services,dc=stoney-cloud,dc=org
objectClass: organizationalUnit
ou: backup

dn: $base
objectClass: organizationalUnit
ou: accounts
LDIF
mkdir -p "$work/backup"
cat >"$work/service.conf" <<CONF
[Global]
LOG_DEBUG = 0
LOG_INFO = 0
LOG_WARNING = 1
LOG_ERR = 1
[Database]
SERVER = 127.0.0.1
PORT = $port
ADMIN_USER = cn=admin,dc=stoney-cloud,dc=org
ADMIN_PASSWORD = secret
SERVICE_SUBTREE = $base
COOKIE_FILE = $work/cookie
[Service]
MODUS = selfcare
SERVICE = Backup
TYPE = Rsnapshot
SYSLOG = Backup-Rsnapshot
[Backup]
BACKUP_ROOT = $work/backup
RSNAPSHOT_CONFIG_DIR = $work/rsnapshot.d
RSNAPSHOT_LOCK_DIR = $work
LOCK_FILE = $work/lock
WORKERS = $WORKERS
CONF
account() { # uid mode
    cat <<LDIF
dn: uid=$1,$base
objectClass: account
objectClass: posixAccount
objectClass: sstBackup
objectClass: sstProvisioning
uid: $1
cn: $1
uidNumber: $1
gidNumber: $1
homeDirectory: /var/backup/$1
sstBackupIntervalHourly: 0
sstBackupIntervalDaily: 7
sstBackupIntervalWeekly: 4
sstBackupIntervalMonthly: 3
sstBackupIntervalYearly: 0
sstBackupWarningOn: TRUE
sstBackupWarningNumbers: 3
sstBackupWarningDays: 3
sstNotificationWarningLevel: 85
sstNotificationWarningMedium: mail
sstUseSelfcare: TRUE
sstUseSSH: TRUE
sstIsActive: TRUE
sstQuota: 1073741824
sstProvisioningMode: $2
sstProvisioningState: 0
sstProvisioningExecutionDate: 0

LDIF
}
target/release/prov-backup -c "$work/service.conf" >"$work/daemon.log" 2>&1 &
daemon=$!
sleep 1

# 1. latency: entries made idle ("none"), then switched to add one at a time.
for i in $(seq 1 "$RUNS"); do account $((3000000 + i)) none; done | ldapadd "${auth[@]}" >/dev/null
lat=()
for i in $(seq 1 "$RUNS"); do
    dn="uid=$((3000000 + i)),$base"
    t0=$(date +%s%N)
    ldapmodify "${auth[@]}" >/dev/null <<LDIF
dn: $dn
changetype: modify
replace: sstProvisioningMode
sstProvisioningMode: add
LDIF
    while :; do
        s=$(ldapsearch "${auth[@]}" -LLL -s base -b "$dn" sstProvisioningState | sed -n 's/^sstProvisioningState: //p')
        [ "$s" != "0" ] && break
        sleep 0.005
    done
    t1=$(date +%s%N)
    lat+=($(( (t1 - t0) / 1000000 )))
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "latency ldapmodify -> timestamp over $RUNS requests: median $(median "${lat[@]}") ms, min $(printf '%s\n' "${lat[@]}" | sort -n | head -1) ms, max $(printf '%s\n' "${lat[@]}" | sort -n | tail -1) ms"

# 2. throughput: ACCOUNTS accounts in one LDIF.
for i in $(seq 1 "$ACCOUNTS"); do account $((4000000 + i)) add; done >"$work/bulk.ldif"
t0=$(date +%s%N)
ldapadd "${auth[@]}" -f "$work/bulk.ldif" >/dev/null
while :; do
    n=$(ldapsearch "${auth[@]}" -LLL -b "$base" '(&(sstProvisioningMode=added)(uid=4*))' 1.1 | grep -c '^dn:' || true)
    [ "$n" -ge "$ACCOUNTS" ] && break
    sleep 0.2
done
t1=$(date +%s%N)
echo "throughput: $ACCOUNTS accounts added in one LDIF, all provisioned in $(( (t1 - t0) / 1000000 )) ms ($(ls "$work/rsnapshot.d" | wc -l) rsnapshot configs)"
# 3. the anchor, same run: the one tool every account's work runs, rsnapshot configtest, alone.
for conf in "$work/rsnapshot.d"/*.conf; do break; done
ct=()
for i in $(seq 1 "$RUNS"); do
    t0=$(date +%s%N)
    rsnapshot -c "$conf" configtest >/dev/null
    t1=$(date +%s%N)
    ct+=($(( (t1 - t0) / 1000000 )))
done
m=$(median "${ct[@]}")
echo "anchor: rsnapshot configtest alone, median of $RUNS: $m ms; $ACCOUNTS of them one after another: $(( m * ACCOUNTS )) ms"
if grep -q ERROR "$work/daemon.log"; then
    echo "errors in the daemon log:" >&2
    grep ERROR "$work/daemon.log" | head >&2
    exit 1
fi
