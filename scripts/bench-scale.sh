#!/usr/bin/env bash
# Throughput of the job with 1 and 2 workers against a bare librdkafka consumer on the
# same topics (issue 15; figures in BENCHMARKS.md). Starts its own tansu broker (memory
# storage; BROKER_STORAGE=sqlite for the live part at the wall clock's pace, see
# scripts/local-broker.sh) on a free port, builds in release mode, and runs
# examples/throughput.rs.
#
# usage: scripts/bench-scale.sh [EVENTS] [ROUNDS] [RATE]   (default 200000 2 3000;
#        RATE 0 skips the live serving-latency part)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="${SHOPSTREAM_TOOLS:-$HOME/.cache/shopstream/tools}"
"$here/install-tansu.sh" "$root"
# shellcheck source=scripts/local-broker.sh
source "$here/local-broker.sh"

cd "$here/.."
cargo build --release --locked --example throughput
export SHOPSTREAM_TOOLS="$root"
broker_log="$(mktemp)"
trap 'stop_local_broker; rm -f "$broker_log"' EXIT INT TERM
start_local_broker "$broker_log" || exit 1
THROUGHPUT_BROKER_PID="${BROKER_TANSU_PID:-}" SHOPSTREAM_LOG="${SHOPSTREAM_LOG:-warn}" \
    "${CARGO_TARGET_DIR:-target}/release/examples/throughput" "127.0.0.1:$BROKER_PORT" "${1:-200000}" "${2:-2}" "${3:-3000}"
