#!/usr/bin/env bash
# Installs the tansu 0.6.0 Kafka-protocol broker (used by the test suite and
# scripts/broker.sh) into a tool directory outside the clone, once. A cold build takes
# about 20 minutes on 2 cores; later runs find the binary and return at once.
#
# It is tansu 0.6.0 from crates.io (sources checked against the registry's checksums)
# with the patches in scripts/tansu/ applied:
#   0001  a group member that stops heartbeating (SIGKILL) starts a rebalance. Unpatched,
#         the group keeps the dead member's assignment (and, when it was the leader, no
#         member is ever assigned its partitions again), so nothing fails over.
#
# usage: scripts/install-tansu.sh [TOOLS_DIR]
#   TOOLS_DIR defaults to $SHOPSTREAM_TOOLS or ~/.cache/shopstream/tools; the binary ends up
#   in TOOLS_DIR/bin/tansu, and TOOLS_DIR/bin/tansu.build names what was built.
set -euo pipefail

version="0.6.0"
build="$version+shopstream.1"
here="$(cd "$(dirname "$0")" && pwd)"
root="${1:-${SHOPSTREAM_TOOLS:-$HOME/.cache/shopstream/tools}}"
bin="$root/bin/tansu"
stamp="$root/bin/tansu.build"

if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$build" ]; then
    exit 0
fi
for tool in cargo curl sha256sum tar patch; do
    if ! command -v "$tool" >/dev/null; then
        echo "error: $tool is needed to install tansu (cargo: install Rust from rustup)" >&2
        exit 1
    fi
done
echo "installing tansu $build into $root (about 20 minutes on 2 cores, once)" >&2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# crate, version, sha256 (the registry index's cksum)
fetch() {
    curl -sSfL --retry 3 -o "$work/$1.crate" "https://static.crates.io/crates/$1/$1-$2.crate"
    echo "$3  $work/$1.crate" | sha256sum -c --quiet -
    tar xzf "$work/$1.crate" -C "$work"
}
fetch tansu "$version" 4fdd85473ec265140488cf8d55e82b844f5c051c8916fabdd4a71156ac053f6d
fetch tansu-broker "$version" 93c1e91b40c2a706dfdbe9a795c08c70918c874ad23f6e0e87564cc0a180e720
for p in "$here"/tansu/*.patch; do
    patch -d "$work/tansu-broker-$version" -p1 --quiet < "$p"
done
printf '\n[patch.crates-io]\ntansu-broker = { path = "../tansu-broker-%s" }\n' "$version" \
    >> "$work/tansu-$version/Cargo.toml"
# Point the packaged lock file at the patched crate (changes nothing else), then build
# exactly the locked versions.
(cd "$work/tansu-$version" && cargo metadata --format-version 1 >/dev/null)
mkdir -p "$root"
cargo install --path "$work/tansu-$version" --locked --features dynostore,libsql --root "$root" --force
echo "$build" > "$stamp"
"$bin" --version >&2
