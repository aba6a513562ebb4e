#!/usr/bin/env bash
# The joint model against Vowpal Wabbit on a real log (issue 19; table in BENCHMARKS.md).
# LOG is a sample of ../shared/data: it is imported through its mapping onto a fresh
# tansu broker and the job runs over it to the end into STORE (kept, so that later runs
# evaluate other model settings without rebuilding it; delete it to rebuild). Then
# `shopstream model evaluate` scores the store's examples prequentially with the joint
# model and the smartcore baselines, and writes the same examples, conversion-labelled,
# for VW one pass (`scripts/vw-compare.sh`, extra VW options after STORE, e.g. -q ui).
# Model settings come from the environment as for the job (SHOPSTREAM__MODEL__...).
#
# usage: scripts/real-log-eval.sh taobao|rees46 STORE [VW OPTIONS...]
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="${SHOPSTREAM_TOOLS:-$HOME/.cache/shopstream/tools}"
log="${1:-}"
store="${2:-}"
case "$log" in
taobao) sample="taobao-userbehavior-sample.csv" ;;
rees46) sample="rees46-2019oct-sample.csv" ;;
*)
    echo "usage: $0 taobao|rees46 STORE [VW OPTIONS...]" >&2
    exit 2
    ;;
esac
if [ -z "$store" ]; then
    echo "usage: $0 taobao|rees46 STORE [VW OPTIONS...]" >&2
    exit 2
fi
shift 2
data="$here/../../shared/data/$sample"
if [ ! -f "$data" ]; then
    echo "real-log-eval: $data is missing (the shared data directory beside the clone)" >&2
    exit 1
fi
mkdir -p "$(dirname "$store")"
store="$(cd "$(dirname "$store")" && pwd)/$(basename "$store")"
cd "$here/.."
cargo build --release --locked --bin shopstream
bin="${CARGO_TARGET_DIR:-target}/release/shopstream"
work="$(mktemp -d)"
# shellcheck source=scripts/local-broker.sh
source "$here/local-broker.sh"
export SHOPSTREAM_TOOLS="$root"
trap 'stop_local_broker; rm -rf "$work"' EXIT INT TERM
export SHOPSTREAM_LOG="${SHOPSTREAM_LOG:-warn}" SHOPSTREAM__HTTP__ENABLED=false

if [ ! -d "$store/examples" ]; then
    "$here/install-tansu.sh" "$root" >/dev/null
    start_local_broker "$work/broker.log"
    rm -rf "$store"
    SHOPSTREAM__KAFKA__BROKERS="127.0.0.1:$BROKER_PORT" \
        "$bin" import --mapping "$log" "$data" >"$work/import.log"
    tail -1 "$work/import.log"
    SHOPSTREAM__KAFKA__BROKERS="127.0.0.1:$BROKER_PORT" SHOPSTREAM__STORE__PATH="$store" \
        "$bin" run --stop-at-end >"$work/run.log" 2>&1 || {
        tail -20 "$work/run.log" >&2
        exit 1
    }
    stop_local_broker
fi
"$bin" model evaluate --store "$store" --vw-out "$work/stream.vw"
"$here/vw-compare.sh" "$work/stream.vw" "$@"
