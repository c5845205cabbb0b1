#!/usr/bin/env bash
# The one test command: installs what the tests need, then checks formatting and lints, builds
# and runs every test of the workspace. Used by the README and by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests drive for real: the sqlite3 CLI reads desktops; a C compiler builds
# the bundled SQLite; mkfs.ext4 and mount make the small file system fileset's full-disk test
# fills.
missing=()
command -v sqlite3 >/dev/null 2>&1 || missing+=(sqlite3)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v mkfs.ext4 >/dev/null 2>&1 || missing+=(e2fsprogs)
# fileset's wait for a write under way is shown on xfs and btrfs too (each takes the writer's
# lock in another call).
command -v mkfs.xfs >/dev/null 2>&1 || missing+=(xfsprogs)
command -v mkfs.btrfs >/dev/null 2>&1 || missing+=(btrfs-progs)
command -v mount >/dev/null 2>&1 || missing+=(mount)
# The package test (crates/deskd-cli/tests/package.rs) builds the .deb (dpkg-deb, dpkg-shlibdeps)
# and reads it as a user would: man pages with man, completions in bash (with bash-completion's
# loader), zsh and fish; lintian checks it against Debian policy.
command -v dpkg-shlibdeps >/dev/null 2>&1 || missing+=(dpkg-dev)
command -v man >/dev/null 2>&1 || missing+=(man-db)
[ -f /usr/share/bash-completion/bash_completion ] || missing+=(bash-completion)
command -v zsh >/dev/null 2>&1 || missing+=(zsh)
command -v fish >/dev/null 2>&1 || missing+=(fish)
command -v lintian >/dev/null 2>&1 || missing+=(lintian)
# contrib/helios's commands are Perl (core modules, File::Temp among them: not in perl-base);
# their tests install them in a private mount namespace (unshare, mount -t overlay).
perl -MFile::Temp -MSocket -e1 >/dev/null 2>&1 || missing+=(perl)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
# strings shows that release binaries hold no test hook (below).
command -v strings >/dev/null 2>&1 || missing+=(binutils)
# systemd-analyze checks the unit file in contrib/ (systemd need not be running).
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# promtool checks `deskd metrics` and the alert rules in contrib/prometheus (tests/metrics.rs).
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# script(1) gives `deskd backup VOL -` a terminal to refuse (tests/cli_options.rs).
command -v script >/dev/null 2>&1 || missing+=(bsdutils)
# A real browser loads the admin page and clicks its buttons (tests/http_admin.rs).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# Live tracking (issue 23) is shown with a real Samba: the tests start smbd on 127.0.0.1 and
# drive it with smbclient (tests/watch_samba.rs); rsync copies into a watched volume (watch.rs).
command -v smbd >/dev/null 2>&1 || [ -x /usr/sbin/smbd ] || missing+=(samba)
command -v smbclient >/dev/null 2>&1 || missing+=(smbclient)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
# The desktop on PostgreSQL (issue 28, crates/deskd-pg) is tested against a throw-away cluster
# that the tests make with Debian's initdb and postgres (deskd_pg::test_cluster).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "scripts/test.sh: please install: ${missing[*]} (or run as root)" >&2
        exit 1
    fi
    echo "scripts/test.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
fi

# prov-backup's tests run a real slapd and real rsnapshot (installed here when missing).
bash scripts/slapd-fixture.sh install

# Tests place sockets and volumes in a temp dir; keep it on a file system with xattrs.
export TMPDIR="${TMPDIR:-/tmp}"

# The Rust version Cargo.toml promises must build every locked crate.
bash scripts/check-msrv.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The fuzz targets (docs/fuzzing.md) are their own workspace; keep them building and clean.
cargo fmt --manifest-path fuzz/Cargo.toml --all -- --check
cargo clippy --manifest-path fuzz/Cargo.toml --target-dir target --all-targets --locked -- -D warnings
# The release build comes before the tests: the package and README tests (package.rs,
# readme.rs) use target/release as a user would, and find it up to date.
cargo build --release --workspace --locked --bins
# The test hooks (docs/ARCHITECTURE.md) are compiled only with the `test-hooks` feature, which
# deskd-cli and fileset turn on for their own tests (a dev-dependency on themselves), so the
# test run above has them; `cargo test` alone does too.
cargo test --workspace --locked

# A release build leaves the feature off: its binaries must not hold a hook's name.
hooks='DESKD_TEST_|_CRASH_AFTER|DESKD_REBUILD_DIR_DELAY_MS|test hook'
for bin in deskd dt deskd-bench fileset fileset-bench prov-backup; do
    if strings "target/release/$bin" | grep -E "$hooks"; then
        echo "scripts/test.sh: target/release/$bin holds a test hook (above)" >&2
        exit 1
    fi
done

# Netatalk's own AFP conformance suite through a real afpd with deskd as its CNID server
# (docs/netatalk.md, "Conformance"); afpd and the suite are built once and kept outside the
# clone (/var/tmp/netatalk-kit).
bash scripts/afp-conformance.sh
