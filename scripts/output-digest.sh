#!/usr/bin/env bash
# The sha256 of everything the job writes for one fixed input, so that a change that must
# not change output (a refactor, a dependency bump) can show it did not:
#
#   - `shopstream demo --events 100000 --seed 1`: every file of the store (data files and
#     commit records of all tables) and the model file;
#   - `shopstream drift bench --json` for seeds 1 and 2 (alerts, delays, counts).
#
# Left out: `_checkpoints/`, whose number and sequence follow the wall clock
# (checkpoint.min_interval_secs); the model file holds the state they would.
#
# usage: scripts/output-digest.sh [--bin PATH] [--keep DIR] [--workers N]   print the digest
#        scripts/output-digest.sh [--bin PATH] --check FILE [--workers N]  compare with FILE
#
# --bin defaults to target/release/shopstream, built (or brought up to date) with `cargo
# build --release --locked` first: a stale binary would digest an older version. --workers sets the demo's pipeline.workers (default: one per core); the
# digest must not depend on it. Lines of FILE starting with '#' are comments. --check prints each
# differing line and exits 1 when anything differs.
set -euo pipefail
cd "$(dirname "$0")/.."

default_bin=target/release/shopstream
bin="$default_bin"
check=""
keep=""
workers=""
while [ $# -gt 0 ]; do
    case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --check) check="$2"; shift 2 ;;
    --keep) keep="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ "$bin" = "$default_bin" ]; then
    echo "building $bin (cargo build --release --locked)" >&2
    cargo build --release --locked >&2
fi

if [ -n "$keep" ]; then
    work="$keep"
    rm -rf "$work"
    mkdir -p "$work"
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
fi

# The demo and the bench must not pick up a developer's configuration.
unset SHOPSTREAM_CONFIG
while IFS= read -r name; do unset "$name"; done < <(env | sed -n 's/^\(SHOPSTREAM__[^=]*\)=.*/\1/p')

[ -n "$workers" ] && export SHOPSTREAM__PIPELINE__WORKERS="$workers"
SHOPSTREAM__MODEL__PATH="$work/model.ssm" \
    "$bin" demo --events 100000 --seed 1 --store "$work/store" >"$work/demo.log" 2>&1 ||
    { echo "the demo failed; its output: $work/demo.log" >&2; tail -20 "$work/demo.log" >&2; exit 2; }
for seed in 1 2; do
    # The bench exits 1 when a detection misses its deadline; its JSON is written either
    # way and is what is compared.
    "$bin" drift bench --seed "$seed" --json "$work/bench-seed-$seed.json" \
        >"$work/bench-seed-$seed.log" 2>&1 || true
    [ -s "$work/bench-seed-$seed.json" ] ||
        { echo "drift bench --seed $seed wrote no JSON: $work/bench-seed-$seed.log" >&2; exit 2; }
done

digest() {
    (
        cd "$work"
        find store -type f ! -path 'store/_checkpoints/*' -print0 | sort -z | xargs -0 sha256sum
        sha256sum model.ssm bench-seed-1.json bench-seed-2.json
    )
}

if [ -z "$check" ]; then
    digest
    exit 0
fi
got=$(digest)
expected=$(grep -v '^#' "$check")
if [ "$got" = "$expected" ]; then
    echo "identical: $(echo "$got" | wc -l) files (store, model, drift bench seeds 1 and 2) match $check"
else
    echo "differs from $check (< expected, > now):"
    diff <(echo "$expected") <(echo "$got") || true
    exit 1
fi
