#!/usr/bin/env bash
# Opens a shopstream store with pyarrow and DuckDB (other engines than the writer's) and
# checks, table by table, that both read the rows the store committed, with UTC
# microsecond timestamps and hive partition columns. Installs pyarrow and duckdb into a
# venv outside the clone when they are missing.
#
# usage: scripts/check-store.sh [STORE_DIR]   (default: demo-store)
set -euo pipefail
store="${1:-demo-store}"
venv="${SHOPSTREAM_TOOLS:-$HOME/.cache/shopstream/tools}/pyenv"
if ! "$venv/bin/python" -c "import pyarrow, duckdb" 2>/dev/null; then
    echo "installing pyarrow and duckdb into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet pyarrow duckdb
fi
"$venv/bin/python" "$(dirname "$0")/check_store.py" "$store"
