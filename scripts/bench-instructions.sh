#!/usr/bin/env bash
# Instructions one routine of a criterion bench executes, counted by valgrind's
# cachegrind: a figure that does not move with the machine's load, where timings on this
# shared machine move by 10 % and more. Compare builds with it; report time beside it
# (an instruction is not a cycle: a division counts one, a cache miss nothing).
#
# usage: scripts/bench-instructions.sh [BENCH_BINARY] [ROUTINE]
#        (default: the features bench, built here, and events_to_examples_without_arrow;
#        the routine runs once in criterion's --test mode, after the bench's preamble, so
#        the figure is the run with the routine minus the run without it; identical runs
#        differ by about 0.1 %)
set -euo pipefail

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
command -v valgrind > /dev/null || { echo "valgrind is not installed (Debian: apt-get install valgrind)" >&2; exit 2; }
bin="${1:-}"
routine="${2:-events_to_examples_without_arrow}"
if [ -z "$bin" ]; then
    bin="$(cargo bench --locked -p shopstream-features --bench features --no-run 2>&1 \
        | sed -n 's/.*Executable benches\/features.rs (\(.*\))/\1/p' | tail -1)"
fi
[ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }

# Instructions of a --test run with `filter`: the bench's process, not the helper it spawns.
count() {
    valgrind --tool=cachegrind --cache-sim=no --branch-sim=no --cachegrind-out-file=/dev/null \
        "$bin" --bench --test "$1" 2>&1 \
        | sed -n 's/.*I \{1,\}refs: *\([0-9,]*\).*/\1/p' | tr -d , | sort -n | tail -1
}
without="$(count 'no_such_benchmark$')"
with="$(count "${routine}\$")"
printf 'preamble only      %15d instructions\n' "$without"
printf 'with %-13s %15d instructions\n' "the routine" "$with"
printf '%s: %d instructions\n' "$routine" "$((with - without))"
