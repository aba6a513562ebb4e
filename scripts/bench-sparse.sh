#!/usr/bin/env bash
# A sparse real log against dense generated traffic of the same size, per message (issue
# 17; figures in BENCHMARKS.md). The sparse input is the Taobao sample of ../shared/data
# repeated COPIES times with user ids shifted per copy: the same 9 days of event time and
# the same items, COPIES times the users (20 copies: 86,420 rows, 860 users, about the
# density of a random 815-user sample of the public log). The dense input is as many
# generated messages (seed 1). Each run gets its own tansu broker (memory storage) and
# store; they alternate ROUNDS times. Prints msg/s per run and the ratio sparse / dense,
# and the files each table of the last sparse store ended with.
#
# usage: scripts/bench-sparse.sh [COPIES] [ROUNDS]   (default 20 2)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="${SHOPSTREAM_TOOLS:-$HOME/.cache/shopstream/tools}"
sample="$here/../../shared/data/taobao-userbehavior-sample.csv"
copies="${1:-20}"
rounds="${2:-2}"
if [ ! -f "$sample" ]; then
    echo "bench-sparse: $sample is missing (the shared data directory beside the clone)" >&2
    exit 1
fi
"$here/install-tansu.sh" "$root" >/dev/null
cd "$here/.."
cargo build --release --locked --bin shopstream
bin="${CARGO_TARGET_DIR:-target}/release/shopstream"
work="$(mktemp -d)"
# shellcheck source=scripts/local-broker.sh
source "$here/local-broker.sh"
export SHOPSTREAM_TOOLS="$root"
trap 'stop_local_broker; rm -rf "$work"' EXIT INT TERM

awk -F, -v copies="$copies" '{ rows[NR] = $0 } END {
    for (k = 0; k < copies; k++) for (i = 1; i <= NR; i++) {
        split(rows[i], f, ",");
        printf "%d,%s,%s,%s,%s\n", f[1] + k * 100000000, f[2], f[3], f[4], f[5] } }' \
    "$sample" > "$work/taobao.csv"

export SHOPSTREAM_LOG="${SHOPSTREAM_LOG:-warn}" SHOPSTREAM__HTTP__ENABLED=false
messages=""
# run KIND ROUND: publishes KIND's input to a fresh broker, runs the job to the end; prints
# the run's line and sets $rate.
run() {
    start_local_broker "$work/broker.log" || exit 1
    # A new store per run, the old ones kept until the end: deleting the last run's
    # thousands of files just before this one would slow this run's file creation (ext4
    # skips inodes freed in the last minutes when it has no journal), which the job did
    # not cause.
    export SHOPSTREAM__KAFKA__BROKERS="127.0.0.1:$BROKER_PORT" SHOPSTREAM__STORE__PATH="$work/store-$1-$2"
    if [ "$1" = sparse ]; then
        "$bin" import taobao "$work/taobao.csv" >"$work/input.log"
    else
        "$bin" generate --events "$messages" --seed 1 >"$work/input.log"
    fi
    "$bin" run --stop-at-end --summary-json "$work/$1.json" >"$work/run.log" 2>&1 || {
        tail -20 "$work/run.log" >&2
        exit 1
    }
    stop_local_broker
    read -r n rate line < <(python3 - "$work/$1.json" "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
n = sum(d["consumed"].values())
rate = n / d["elapsed_ms"] * 1000
print(n, round(rate), f"{sys.argv[2]:<7} round {sys.argv[3]}: {n} messages in {d['elapsed_ms'] / 1000:.2f} s = {rate:,.0f} msg/s; {d['windows_closed']} windows, {d['files_written']} example files written, {d['compactions']} compacted files")
PY
)
    echo "$line"
    [ -z "$messages" ] && messages="$n"
    return 0
}
for round in $(seq 1 "$rounds"); do
    run sparse "$round"; sparse_rate="$rate"
    run dense "$round"; dense_rate="$rate"
    python3 -c "print(f'round $round: sparse / dense = {$sparse_rate / $dense_rate:.2f}')"
done
echo "files per table in the sparse store (table, files, hour partitions):"
for dir in "$work/store-sparse-$rounds"/*/; do
    table="$(basename "$dir")"
    case "$table" in _*) continue ;; esac
    files="$(find "$dir" -name '*.parquet' | wc -l)"
    hours="$(find "$dir" -name '*.parquet' -exec dirname {} \; | sort -u | wc -l)"
    echo "  $table $files $hours"
done
