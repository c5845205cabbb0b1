#!/usr/bin/env bash
# Checks that the workspace's `rust-version` (Cargo.toml) is at least the `rust-version` of every
# crate that Cargo.lock builds on Linux, so the Rust we promise really builds the locked tree.
# Exit 1, naming the crates, when a dependency needs a newer Rust than we say.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --locked --filter-platform "$(rustc -vV | sed -n 's/^host: //p')" |
    python3 -c '
import json, re, sys
meta = json.load(sys.stdin)
declared = re.search(r"^rust-version = \"([^\"]+)\"", open("Cargo.toml").read(), re.M).group(1)
def key(v):
    return tuple(int(x) for x in v.split(".")) + (0,) * (3 - len(v.split(".")))
built = {n["id"] for n in meta["resolve"]["nodes"]}
above = sorted(
    (p["rust_version"], p["name"], p["version"])
    for p in meta["packages"]
    if p["id"] in built and p.get("rust_version") and key(p["rust_version"]) > key(declared)
)
if above:
    print(f"check-msrv: Cargo.toml says rust-version = {declared}, but these crates need more:")
    for need, name, version in above:
        print(f"  {name} {version} needs Rust {need}")
    sys.exit(1)
print(f"check-msrv: every locked crate builds with Rust {declared}")
'
