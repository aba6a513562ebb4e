# Sourced by the bench scripts (not run): a tansu broker for one measurement.
#
# start_local_broker LOG   starts scripts/broker.sh (the shop.* topics) on a
#                          free 127.0.0.1 port, logging to LOG; returns once its topics
#                          exist, with BROKER_PORT and BROKER_PID set (1 after 30 s without),
#                          and BROKER_TANSU_PID the tansu process itself (its CPU time)
# stop_local_broker        stops it (and its data with it); does nothing when none runs
#
# BROKER_STORAGE picks tansu's storage engine: `memory` (the default) or `sqlite`, a
# database in a temporary directory removed by stop_local_broker. The memory engine lists
# every stored batch of a partition on each fetch (tansu-storage 0.6, dynostore.rs
# `fetch`), so its fetches grow dearer as a topic grows; sqlite's read an index. Live runs
# of minutes at the wall clock's pace use sqlite for that (BENCHMARKS.md, "The broker's
# storage engine").

start_local_broker() {
    local log="$1" dir
    dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    BROKER_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    # Never empty: tansu's subcommands read STORAGE_ENGINE themselves and refuse ''.
    local engine="memory://tansu/"
    case "${BROKER_STORAGE:-memory}" in
        memory) ;;
        sqlite)
            BROKER_DATA="$(mktemp -d)"
            # tansu drops the first `/` of the path: `sqlite:///tmp/x` opens `tmp/x`.
            engine="sqlite:///$BROKER_DATA/tansu.db"
            ;;
        *)
            echo "$(basename "$0"): BROKER_STORAGE must be memory or sqlite, not ${BROKER_STORAGE}" >&2
            return 1
            ;;
    esac
    STORAGE_ENGINE="$engine" PORT="$BROKER_PORT" "$dir/broker.sh" >"$log" 2>&1 &
    BROKER_PID=$!
    for _ in $(seq 1 300); do
        if grep -q "tansu listening" "$log" 2>/dev/null; then
            BROKER_TANSU_PID="$(pgrep -P "$BROKER_PID" -x tansu | head -n 1 || true)"
            return 0
        fi
        sleep 0.1
    done
    echo "$(basename "$0"): the broker did not start on 127.0.0.1:$BROKER_PORT within 30 s:" >&2
    cat "$log" >&2
    return 1
}

stop_local_broker() {
    [ -n "${BROKER_PID:-}" ] || return 0
    kill "$BROKER_PID" 2>/dev/null
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
    BROKER_TANSU_PID=""
    if [ -n "${BROKER_DATA:-}" ]; then
        rm -rf "$BROKER_DATA"
        BROKER_DATA=""
    fi
}
