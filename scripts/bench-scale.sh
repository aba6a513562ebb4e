#!/usr/bin/env bash
# Throughput of the job with 1 and 2 workers against a bare librdkafka consumer on the
# same topics (issue 15; figures in BENCHMARKS.md). Starts its own tansu broker (memory
# storage) on a free port, builds in release mode, and runs examples/throughput.rs.
#
# usage: scripts/bench-scale.sh [EVENTS] [ROUNDS] [RATE]   (default 200000 2 3000;
#        RATE 0 skips the live serving-latency part)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="${SHOPSTREAM_TOOLS:-$HOME/.cache/shopstream/tools}"
"$here/install-tansu.sh" "$root"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"

cd "$here/.."
cargo build --release --locked --example throughput
# scripts/broker.sh runs tansu in memory and stops it when it is stopped itself.
PORT="$port" SHOPSTREAM_TOOLS="$root" "$here/broker.sh" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT INT TERM
up=""
for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then up=1; break; fi
    sleep 0.1
done
if [ -z "$up" ]; then
    echo "bench-scale: the broker did not listen on 127.0.0.1:$port within 30 s" >&2
    exit 1
fi
SHOPSTREAM_LOG="${SHOPSTREAM_LOG:-warn}" \
    "${CARGO_TARGET_DIR:-target}/release/examples/throughput" "127.0.0.1:$port" "${1:-200000}" "${2:-2}" "${3:-3000}"
