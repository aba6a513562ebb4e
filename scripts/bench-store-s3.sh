#!/usr/bin/env bash
# The store on local disk vs in an S3 bucket, in one run: starts moto's S3 server
# (moto_server, or python3 -m moto.server) on a free 127.0.0.1 port, creates a bucket, and
# runs sinks/examples/store_backends.rs, which writes the same generated windows to both
# (alternating, ROUNDS times) and queries them. Prints rows/s and MB/s written and query
# latency per backend.
#
# usage: scripts/bench-store-s3.sh [ROWS] [ROUNDS]   (default 200000 2)
set -euo pipefail
rows="${1:-200000}"
rounds="${2:-2}"
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'kill "$moto" 2>/dev/null || true; rm -rf "$work"' EXIT
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
if command -v moto_server >/dev/null; then
    moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
else
    python3 -m moto.server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
fi
moto=$!
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" && break
    sleep 0.1
done
curl -s -X PUT "http://127.0.0.1:$port/bench" >/dev/null
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true \
    AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
cargo run --quiet --release -p shopstream-sinks --example store_backends -- \
    "$work/local" "s3://bench/store" "$rows" "$rounds"
