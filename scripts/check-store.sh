#!/usr/bin/env bash
# Opens a shopstream store with pyarrow and DuckDB (other engines than the writer's) and
# checks, table by table, that both read the rows the store committed, with UTC
# microsecond timestamps and hive partition columns. Installs pyarrow and duckdb into a
# venv outside the clone when they are missing.
#
# usage: scripts/check-store.sh [STORE]   (default: demo-store)
#   STORE is a directory or s3://BUCKET/PREFIX; for S3 the standard environment gives the
#   credentials and endpoint (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
#   AWS_ENDPOINT_URL). DuckDB reads S3 through its httpfs extension, or through fsspec's
#   s3fs where httpfs cannot be installed (no internet); s3fs is installed for S3 stores.
set -euo pipefail
store="${1:-demo-store}"
venv="${SHOPSTREAM_TOOLS:-$HOME/.cache/shopstream/tools}/pyenv"
if ! "$venv/bin/python" -c "import pyarrow, duckdb" 2>/dev/null; then
    echo "installing pyarrow and duckdb into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet pyarrow duckdb
fi
if [[ "$store" == s3://* ]] && ! "$venv/bin/python" -c "import s3fs" 2>/dev/null; then
    echo "installing s3fs into $venv" >&2
    "$venv/bin/pip" install --quiet s3fs
fi
"$venv/bin/python" "$(dirname "$0")/check_store.py" "$store"
