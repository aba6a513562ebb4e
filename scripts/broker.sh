#!/usr/bin/env bash
# Starts a tansu broker on 127.0.0.1 with in-memory storage and creates the shopstream
# topics, then waits in the foreground (Ctrl-C stops it; the data is gone with it).
#
# usage: scripts/broker.sh            # port 9092, 4 partitions
#        PORT=19092 PARTITIONS=8 scripts/broker.sh
#        STORAGE_ENGINE=sqlite:////tmp/tansu.db scripts/broker.sh   # tansu's storage engine
# Then: SHOPSTREAM__KAFKA__BROKERS=127.0.0.1:9092 shopstream generate / run
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="${SHOPSTREAM_TOOLS:-$HOME/.cache/shopstream/tools}"
"$here/install-tansu.sh" "$root"
tansu="$root/bin/tansu"
port="${PORT:-9092}"
partitions="${PARTITIONS:-4}"
url="tcp://127.0.0.1:$port"
topics=(shop.clicks shop.orders shop.inventory shop.predictions shop.dead-letter shop.alerts)

"$tansu" broker --listener-url "$url" --advertised-listener-url "$url" \
    --storage-engine "${STORAGE_ENGINE:-memory://tansu/}" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT INT TERM

for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
done
for topic in "${topics[@]}"; do
    "$tansu" topic create "$topic" --broker "$url" --partitions "$partitions" >/dev/null
done
echo "tansu listening on 127.0.0.1:$port with topics: ${topics[*]} ($partitions partitions each)" >&2
wait $pid
