#!/usr/bin/env bash
# Query benchmark: `shopstream query` next to DuckDB on the same store files.
#
# Builds (once) a store of ROWS example rows (default 10,000,000) with the real writer
# (sinks/examples/build_store.rs: generated traffic -> feature pipeline -> store, with hour
# compaction), then times two queries in both engines: one user's last 24 h (point lookup)
# and hourly aggregates by scenario over one day. Prints medians and ratios; figures go to
# BENCHMARKS.md. Installs pyarrow and duckdb into a venv outside the clone when missing.
#
# usage: scripts/bench-query.sh [STORE_DIR]   (env: ROWS, RUNS)
set -euo pipefail
cd "$(dirname "$0")/.."
tools="${SHOPSTREAM_TOOLS:-$HOME/.cache/shopstream/tools}"
store="${1:-$HOME/.cache/shopstream/bench-store}"
rows="${ROWS:-10000000}"
# One invocation: building the packages separately would unify features differently and
# compile polars twice.
cargo build --release --quiet -p shopstream --bin shopstream -p shopstream-sinks --example build_store
target="${CARGO_TARGET_DIR:-target}/release"
if [ ! -d "$store/_manifest/examples" ]; then
    echo "building a store of $rows example rows in $store (once)" >&2
    "$target/examples/build_store" "$store" "$rows"
fi
venv="$tools/pyenv"
if ! "$venv/bin/python" -c "import pyarrow, duckdb" 2>/dev/null; then
    echo "installing pyarrow and duckdb into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet pyarrow duckdb
fi
"$venv/bin/python" scripts/bench_query.py "$store" "$target/shopstream" "${RUNS:-7}"
