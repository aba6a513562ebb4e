#!/usr/bin/env bash
# Installs the tansu 0.6.0 Kafka-protocol broker (used by the test suite and
# scripts/broker.sh) into a tool directory outside the clone, once. A cold build takes
# about 20 minutes on 2 cores; later runs find the binary and return at once.
#
# usage: scripts/install-tansu.sh [TOOLS_DIR]
#   TOOLS_DIR defaults to $SHOPSTREAM_TOOLS or ~/.cache/shopstream/tools; the binary ends up
#   in TOOLS_DIR/bin/tansu.
set -euo pipefail

version="0.6.0"
root="${1:-${SHOPSTREAM_TOOLS:-$HOME/.cache/shopstream/tools}}"
bin="$root/bin/tansu"

if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -qx "tansu $version"; then
    exit 0
fi
if ! command -v cargo >/dev/null; then
    echo "error: cargo is needed to install tansu; install Rust from rustup first" >&2
    exit 1
fi
echo "installing tansu $version into $root (about 20 minutes on 2 cores, once)" >&2
mkdir -p "$root"
cargo install "tansu@$version" --locked --features dynostore,libsql --root "$root"
"$bin" --version >&2
