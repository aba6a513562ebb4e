#!/usr/bin/env bash
# Opens a shopstream store with pyarrow (another engine than the writer's) and prints the
# row count and schema of its examples table. Installs pyarrow into a venv outside the
# clone when it is missing.
#
# usage: scripts/check-store.sh [STORE_DIR]   (default: demo-store)
set -euo pipefail
store="${1:-demo-store}"
venv="${SHOPSTREAM_TOOLS:-$HOME/.cache/shopstream/tools}/pyenv"
if ! "$venv/bin/python" -c "import pyarrow" 2>/dev/null; then
    echo "installing pyarrow into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet pyarrow
fi
"$venv/bin/python" "$(dirname "$0")/check_store.py" "$store"
