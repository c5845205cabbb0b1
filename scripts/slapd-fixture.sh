#!/usr/bin/env bash
# A throw-away OpenLDAP server for the prov-backup tests and benchmarks (research/prov-backup.md §6).
#
#   scripts/slapd-fixture.sh install               apt-install slapd, ldap-utils, rsnapshot if missing
#   scripts/slapd-fixture.sh start DIR PORT [--no-syncprov] [--no-tree] [--tls LDAPS_PORT]
#                                                   slapd on ldap://127.0.0.1:PORT, state in DIR
#   scripts/slapd-fixture.sh stop DIR               stop the slapd started in DIR (data kept)
#   scripts/slapd-fixture.sh restart DIR            start it again on the same port with the same data
#
# The server has the mdb backend under dc=stoney-cloud,dc=org, the syncprov overlay (unless
# --no-syncprov), the sst schema subset of crates/prov-backup/testdata/sst-schema.ldif and the
# example tree of crates/prov-backup/testdata/example-tree.ldif (unless --no-tree).
# Root DN cn=admin,dc=stoney-cloud,dc=org, password "secret".
# With --tls it also answers ldaps://127.0.0.1:LDAPS_PORT and StartTLS, with a server certificate
# (for 127.0.0.1 and localhost) signed by a CA made for it, DIR/tls/ca.pem; and it refuses simple
# binds without TLS (olcSecurity simple_bind=128), so a bind that works was encrypted. The
# OpenLDAP tools then need LDAPTLS_CACERT=DIR/tls/ca.pem and -ZZ.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
testdata="$here/crates/prov-backup/testdata"
SUFFIX="dc=stoney-cloud,dc=org"
ROOTDN="cn=admin,$SUFFIX"
ROOTPW="secret"

install_packages() {
    local missing=()
    command -v slapd >/dev/null 2>&1 || [ -x /usr/sbin/slapd ] || missing+=(slapd)
    command -v ldapadd >/dev/null 2>&1 || missing+=(ldap-utils)
    command -v rsnapshot >/dev/null 2>&1 || missing+=(rsnapshot)
    command -v rsync >/dev/null 2>&1 || missing+=(rsync)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "slapd-fixture: please install: ${missing[*]} (or run as root)" >&2
        exit 1
    fi
    echo "slapd-fixture: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q "${missing[@]}" >&2
    # The package may start a system slapd on port 389; the tests do not use it.
}

wait_for() {
    local port="$1" i
    for i in $(seq 1 200); do
        if ldapsearch -x -H "ldap://127.0.0.1:$port/" -b "" -s base '(objectClass=*)' namingContexts \
            >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.05
    done
    echo "slapd-fixture: slapd did not answer on port $port" >&2
    return 1
}

# A CA and a server certificate for 127.0.0.1/localhost in DIR/tls (P-256 keys: quick to make).
make_certificates() {
    local tls="$1/tls"
    mkdir -p "$tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -subj "/CN=deskd test CA" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=127.0.0.1" -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' \
        >"$tls/server.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
        -CAcreateserial -days 30 -extfile "$tls/server.ext" -out "$tls/server.pem" 2>/dev/null
}

start_slapd() {
    local dir="$1" port urls
    port="$(cat "$dir/port")"
    urls="ldap://127.0.0.1:$port/"
    [ -f "$dir/ldaps_port" ] && urls="$urls ldaps://127.0.0.1:$(cat "$dir/ldaps_port")/"
    # slapd forks and writes its pid file itself.
    /usr/sbin/slapd -F "$dir/slapd.d" -h "$urls" -s 0 >"$dir/slapd.log" 2>&1 || {
        cat "$dir/slapd.log" >&2
        # slapd tells only syslog why; the commonest reason, said where the caller sees it
        # (the tests then start afresh on another port).
        local p
        for p in "$port" $([ -f "$dir/ldaps_port" ] && cat "$dir/ldaps_port"); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
                echo "slapd-fixture: 127.0.0.1:$p: Address already in use" >&2
            fi
        done
        return 1
    }
    wait_for "$port"
}

cmd="${1:-}"
case "$cmd" in
install)
    install_packages
    ;;
start)
    dir="${2:?DIR}"
    port="${3:?PORT}"
    shift 3
    syncprov=1
    tree=1
    ldaps_port=
    while [ $# -gt 0 ]; do
        case "$1" in
        --no-syncprov) syncprov=0 ;;
        --no-tree) tree=0 ;;
        --tls) ldaps_port="${2:?--tls LDAPS_PORT}"; shift ;;
        *) echo "slapd-fixture: unknown option $1" >&2; exit 2 ;;
        esac
        shift
    done
    install_packages
    mkdir -p "$dir/slapd.d" "$dir/db"
    dir="$(cd "$dir" && pwd)"
    echo "$port" >"$dir/port"
    tool_tls=()
    if [ -n "$ldaps_port" ]; then
        echo "$ldaps_port" >"$dir/ldaps_port"
        make_certificates "$dir"
        export LDAPTLS_CACERT="$dir/tls/ca.pem"
        tool_tls=(-ZZ)
    fi
    {
        cat <<LDIF
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: $dir/slapd.pid
olcLogLevel: none
LDIF
        if [ -n "$ldaps_port" ]; then
            cat <<LDIF
olcTLSCACertificateFile: $dir/tls/ca.pem
olcTLSCertificateFile: $dir/tls/server.pem
olcTLSCertificateKeyFile: $dir/tls/server.key
olcSecurity: simple_bind=128
LDIF
        fi
        cat <<LDIF

dn: cn=module{0},cn=config
objectClass: olcModuleList
cn: module{0}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb
LDIF
        [ "$syncprov" = 1 ] && echo "olcModuleLoad: syncprov"
        cat <<LDIF

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

LDIF
        for s in core cosine nis inetorgperson; do
            cat "/etc/ldap/schema/$s.ldif"
            echo
        done
        cat "$testdata/sst-schema.ldif"
        cat <<LDIF

dn: olcDatabase={-1}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {-1}frontend
olcSizeLimit: unlimited

dn: olcDatabase={0}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {0}config
olcRootDN: $ROOTDN

dn: olcDatabase={1}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {1}mdb
olcSuffix: $SUFFIX
olcRootDN: $ROOTDN
olcRootPW: $ROOTPW
olcDbDirectory: $dir/db
olcDbMaxSize: 1073741824
olcDbIndex: objectClass eq
olcDbIndex: entryCSN,entryUUID eq
olcDbIndex: sstProvisioningMode,sstProvisioningState eq
olcLimits: dn.exact="$ROOTDN" size=unlimited time=unlimited
LDIF
        if [ "$syncprov" = 1 ]; then
            cat <<LDIF

dn: olcOverlay={0}syncprov,olcDatabase={1}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcSyncProvConfig
olcOverlay: {0}syncprov
olcSpCheckpoint: 100 1
LDIF
        fi
    } >"$dir/config.ldif"
    slapadd -n0 -F "$dir/slapd.d" -l "$dir/config.ldif" >"$dir/slapadd.log" 2>&1 || {
        cat "$dir/slapadd.log" >&2
        exit 1
    }
    start_slapd "$dir"
    if [ "$tree" = 1 ]; then
        ldapadd -x "${tool_tls[@]}" -H "ldap://127.0.0.1:$port/" -D "$ROOTDN" -w "$ROOTPW" \
            -f "$testdata/example-tree.ldif" >/dev/null
    fi
    ;;
stop)
    dir="${2:?DIR}"
    if [ -f "$dir/slapd.pid" ]; then
        pid="$(cat "$dir/slapd.pid")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 200); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$dir/slapd.pid"
    fi
    ;;
restart)
    dir="${2:?DIR}"
    start_slapd "$dir"
    ;;
*)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
