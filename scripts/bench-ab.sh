#!/usr/bin/env bash
# Two builds of the job, alternated on one broker: each round runs the bare consumer and
# the job of build A, then of build B, on freshly published topics, so both see the same
# machine load (issue 17: compare ratios in one run; figures in BENCHMARKS.md).
#
# usage: scripts/bench-ab.sh A_THROUGHPUT B_THROUGHPUT [EVENTS] [ROUNDS]
#        (default 200000 3; each argument a copy of target/release/examples/throughput,
#        e.g. built from two commits; THROUGHPUT_WORKERS picks the worker count, default 1)
set -euo pipefail

if [ $# -lt 2 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
a="$1" b="$2" events="${3:-200000}" rounds="${4:-3}"
for bin in "$a" "$b"; do
    [ -x "$bin" ] || { echo "not an executable: $bin (build it with: cargo build --release --example throughput)" >&2; exit 2; }
done

here="$(cd "$(dirname "$0")" && pwd)"
root="${SHOPSTREAM_TOOLS:-$HOME/.cache/shopstream/tools}"
"$here/install-tansu.sh" "$root"
source "$here/local-broker.sh"
export SHOPSTREAM_TOOLS="$root"
broker_log="$(mktemp)"
trap 'stop_local_broker; rm -f "$broker_log"' EXIT INT TERM
start_local_broker "$broker_log" || exit 1
for round in $(seq 1 "$rounds"); do
    for side in A B; do
        bin="$a"
        [ "$side" = B ] && bin="$b"
        echo "== round $round, $side ($bin)"
        THROUGHPUT_BROKER_PID="${BROKER_TANSU_PID:-}" \
        THROUGHPUT_WORKERS="${THROUGHPUT_WORKERS:-1}" THROUGHPUT_GROUPS= SHOPSTREAM_LOG="${SHOPSTREAM_LOG:-warn}" \
            "$bin" "127.0.0.1:$BROKER_PORT" "$events" 1 0 | grep -E '^(bare|workers)'
    done
done
