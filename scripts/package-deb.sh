#!/usr/bin/env bash
# Builds the Debian package target/debian/deskd_<version>_<arch>.deb from binaries already built
# (by default target/release: run `cargo build --release --workspace` first) with dpkg-deb on a
# staging tree. What goes where: docs/deskd.md, "Installing the Debian package".
#
#   scripts/package-deb.sh [--bin-dir DIR] [--out DIR] [--compress xz|gzip|none]
#
# --bin-dir  where deskd, dt, prov-backup and fileset are (default target/release)
# --out      where the .deb goes (default target/debian)
# --compress dpkg-deb's compressor (default xz; the tests use none to spare the CPU)
#
# Relative directories are taken from the current directory. The package's maintainer is
# "$DEBFULLNAME <$DEBEMAIL>" when those are set. Man pages and shell completions come from each
# packaged binary itself (`BIN __generate-docs DIR`, crates/deskd-docgen): they describe exactly
# the binary shipped. Prints the path of the package on stdout.
set -euo pipefail
umask 022
workspace=$(realpath "$(dirname "$0")/..")

bin_dir=$workspace/target/release
out_dir=$workspace/target/debian
compress=xz
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) bin_dir=$(realpath -m "${2:?--bin-dir needs a directory}"); shift 2 ;;
        --out) out_dir=$(realpath -m "${2:?--out needs a directory}"); shift 2 ;;
        --compress) compress=${2:?--compress needs xz, gzip or none}; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "package-deb.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$compress" in xz|gzip|none) ;; *) echo "package-deb.sh: --compress xz|gzip|none" >&2; exit 2 ;; esac
cd "$workspace"

# The tools an administrator runs; the benchmarks (deskd-bench, fileset-bench) stay out.
bins=(deskd dt prov-backup fileset)
for b in "${bins[@]}"; do
    [ -x "$bin_dir/$b" ] || {
        echo "package-deb.sh: $bin_dir/$b missing: run cargo build --release --workspace first" >&2
        exit 1
    }
done

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
arch=$(dpkg --print-architecture)
[ -n "$version" ] || { echo "package-deb.sh: no version in Cargo.toml" >&2; exit 1; }

mkdir -p "$out_dir"
stage=$(mktemp -d "$out_dir/stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
doc="$root/usr/share/doc/deskd"
install -d "$root/DEBIAN" "$root/usr/bin" "$root/usr/share/man/man1" "$doc/examples" \
    "$root/usr/lib/systemd/system" "$root/etc/deskd" \
    "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
    "$root/usr/share/fish/vendor_completions.d"

# Binaries, stripped as Debian ships them (release builds keep line tables for backtraces).
# A binary built with the `test-hooks` feature (a `cargo test --release` leaves such builds in
# target/release) holds hooks that stop it at chosen points: never shipped (the names as
# scripts/test.sh checks them).
hooks='DESKD_TEST_|_CRASH_AFTER|DESKD_REBUILD_DIR_DELAY_MS|test hook'
for b in "${bins[@]}"; do
    # (grep reads to the end: with -q, strings would die of SIGPIPE and pipefail hide the match)
    if strings "$bin_dir/$b" | grep -E "$hooks" >/dev/null; then
        echo "package-deb.sh: $bin_dir/$b was built with test hooks (the test-hooks feature); build it with cargo build --release" >&2
        exit 1
    fi
    install -m 755 "$bin_dir/$b" "$root/usr/bin/$b"
    strip --strip-unneeded "$root/usr/bin/$b"
done

# Man pages and completions, from the staged binaries themselves.
for b in "${bins[@]}"; do
    "$root/usr/bin/$b" __generate-docs "$stage/docs/$b"
    install -m 644 "$stage/docs/$b"/man1/*.1 "$root/usr/share/man/man1/"
    install -m 644 "$stage/docs/$b/bash/$b" "$root/usr/share/bash-completion/completions/"
    install -m 644 "$stage/docs/$b/zsh/_$b" "$root/usr/share/zsh/vendor-completions/"
    install -m 644 "$stage/docs/$b/fish/$b.fish" "$root/usr/share/fish/vendor_completions.d/"
done
gzip -9n "$root"/usr/share/man/man1/*.1

# Every unit in contrib/, with the installed binaries' paths (/usr/local/bin becomes /usr/bin). A
# unit naming a /usr/local/bin program the package lacks would fail only when started: refuse it.
shopt -s nullglob
units=()
for unit in contrib/*.service; do
    name=$(basename "$unit")
    # The unit's header says what it is and how to set it up by hand; the explanations stay,
    # with the package's paths, and the steps the package has done are said to be done.
    {
        echo "# Installed by the deskd package: the programs are in /usr/bin, this unit in"
        echo "# /usr/lib/systemd/system, samples in /usr/share/doc/deskd/examples/ (the steps below"
        echo "# that install a program or copy this file are done already)."
        sed -e 's|cp contrib/[^ ]* /etc/systemd/system/ && ||' \
            -e 's|/usr/local/bin|/usr/bin|g' \
            -e 's|contrib/prov-backup/|/usr/share/doc/deskd/examples/prov-backup/|g' "$unit"
    } >"$root/usr/lib/systemd/system/$name"
    chmod 644 "$root/usr/lib/systemd/system/$name"
    units+=("$name")
    for exe in $(grep -o '/usr/local/bin/[^ ";]*' "$unit" | sort -u); do
        [ -x "$root/usr/bin/${exe##*/}" ] || {
            echo "package-deb.sh: $name runs $exe, which the package does not hold" >&2
            exit 1
        }
    done
done

# The sample configuration, a conffile: dpkg keeps an administrator's changes on upgrade.
install -m 644 contrib/deskd.toml "$root/etc/deskd/deskd.toml"
echo /etc/deskd/deskd.toml >"$root/DEBIAN/conffiles"

# prov-backup's sample configurations (contrib/prov-backup/, when there are any).
examples=(contrib/prov-backup/*)
if [ ${#examples[@]} -gt 0 ]; then
    install -d "$doc/examples/prov-backup"
    install -m 644 "${examples[@]}" "$doc/examples/prov-backup/"
fi
install -m 644 contrib/deskd.toml "$doc/examples/deskd.toml"

# Monitoring: the Prometheus alert rules (with their promtool unit tests) and the Grafana
# dashboard (docs/deskd.md, "deskd metrics").
install -d "$doc/examples/prometheus/tests" "$doc/examples/grafana"
install -m 644 contrib/prometheus/*.yml "$doc/examples/prometheus/"
install -m 644 contrib/prometheus/tests/*.yml "$doc/examples/prometheus/tests/"
install -m 644 contrib/grafana/*.json "$doc/examples/grafana/"

# Documentation, with the links between pages kept (README links docs/…).
install -d "$doc/docs"
install -m 644 README.md "$doc/"
install -m 644 docs/*.md "$doc/docs/"

# Who the package names as its maintainer: Debian's usual DEBFULLNAME and DEBEMAIL.
maintainer="${DEBFULLNAME:-deskd maintainers} <${DEBEMAIL:-root@localhost}>"

# Copyright (machine-readable format), and the changelog Debian policy asks for.
cat >"$doc/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: deskd
Comment: The binaries link Rust crates from crates.io (MIT, Apache-2.0, or both; Cargo.lock
 names them) and SQLite (public domain), bundled by rusqlite.

Files: *
Copyright: the deskd contributors
License: MIT or Apache-2.0

License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a copy of this software
 and associated documentation files (the "Software"), to deal in the Software without
 restriction, including without limitation the rights to use, copy, modify, merge, publish,
 distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
 Software is furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in all copies or
 substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING
 BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
 NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
 DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.

License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
chmod 644 "$doc/copyright"
# The date of the commit packaged (not the build's): the same tree gives the same changelog.
date=$(git log -1 --format=%aD 2>/dev/null || date -R)
# A native package (no Debian revision): changelog.gz, not changelog.Debian.gz.
printf 'deskd (%s) unstable; urgency=medium\n\n  * Built from the deskd workspace (scripts/package-deb.sh).\n\n -- %s  %s\n' \
    "$version" "$maintainer" "$date" | gzip -9n >"$doc/changelog.gz"

# Maintainer scripts: systemd learns of new or changed units; a removed package's services stop.
# Nothing is enabled or started: the volumes must be in /etc/deskd/deskd.toml first.
plain_units=()
for u in "${units[@]}"; do
    case "$u" in *@.service) ;; *) plain_units+=("$u") ;; esac
done
cat >"$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
EOF
# fileset@ instances are stopped too (systemctl, which deb-systemd-invoke runs, takes the
# pattern): stopping one saves its set, which needs the binary that is about to go.
cat >"$root/DEBIAN/prerm" <<EOF
#!/bin/sh
set -e
if [ "\$1" = remove ] && [ -d /run/systemd/system ]; then
    deb-systemd-invoke stop ${plain_units[*]} 'fileset@*.service' >/dev/null || true
fi
EOF
cat >"$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
EOF
chmod 755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

# Depends: the shared libraries the binaries link, as dpkg-shlibdeps finds them (it wants a
# debian/control to read, so it runs in a scratch source tree).
mkdir -p "$stage/src/debian"
printf 'Source: deskd\n\nPackage: deskd\nArchitecture: any\n' >"$stage/src/debian/control"
shlibs=$(cd "$stage/src" && dpkg-shlibdeps -O "${bins[@]/#/$root/usr/bin/}")
depends=$(sed -n 's/^shlibs:Depends=//p' <<<"$shlibs")
[ -n "$depends" ] || { echo "package-deb.sh: dpkg-shlibdeps found no dependencies" >&2; exit 1; }

installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: deskd
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $depends
Suggests: rsnapshot, netatalk
Section: admin
Priority: optional
Description: desktop database server for file-server volumes
 deskd gives every file and folder of a volume a 32-bit ID that never changes
 on rename or move and is never reused, keeps the Mac APPL, icon and comment
 records, answers "find file" from an index, survives crashes without a
 rebuild, and can be flushed and frozen for consistent online backups: the
 job of the HELIOS desktop server and Netatalk's CNID daemons.
 .
 This package holds deskd (the server and its control verbs), dt (file verbs
 that keep the IDs), prov-backup (rsnapshot accounts provisioned from LDAP)
 and fileset (checkpoint copies of a file set), with their systemd units,
 man pages, shell completions and a sample /etc/deskd/deskd.toml.
EOF

deb="$out_dir/deskd_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"$compress" --build "$root" "$deb" >/dev/null
echo "$deb"
