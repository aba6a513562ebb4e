#!/usr/bin/env bash
# Makes moto's S3 server (the real S3-compatible server the store tests write to) available
# and prints the command that runs it: `moto_server` when the machine has it (the image
# ships moto 5.2), else `python3 -m moto.server` when that imports, else a venv outside
# the clone (TOOLS_DIR/moto-venv) into which moto[server] is installed from PyPI once.
#
# usage: scripts/install-moto.sh TOOLS_DIR
set -euo pipefail
tools="${1:-$HOME/.cache/shopstream/tools}"
if command -v moto_server >/dev/null && moto_server --help >/dev/null 2>&1; then
    command -v moto_server
    exit 0
fi
venv="$tools/moto-venv"
if [[ ! -x "$venv/bin/moto_server" ]]; then
    echo "installing moto[server] into $venv" >&2
    mkdir -p "$tools"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "moto[server]>=5.1,<6"
fi
echo "$venv/bin/moto_server"
