#!/usr/bin/env bash
# Runs the quality benchmark's example stream through Vowpal Wabbit (installed from PyPI
# into a venv outside the clone when missing).
# usage: scripts/vw-compare.sh STREAM.vw [VW OPTIONS...]   (the stream from
#        `shopstream model quality --vw-out` or `shopstream model evaluate --vw-out`)
set -euo pipefail
venv="${SHOPSTREAM_TOOLS:-$HOME/.cache/shopstream/tools}/pyenv"
if ! "$venv/bin/python" -c "import vowpalwabbit, numpy" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet vowpalwabbit numpy
fi
"$venv/bin/python" "$(dirname "$0")/vw_compare.py" "$@"
