#!/usr/bin/env python3
"""Where a profiled run's CPU went, by component of the job.

Reads the output of `perf script -F tid,ip,sym` of a run recorded with call graphs, e.g.

    perf record -F 499 --call-graph dwarf,32768 -o job.data -- \
        target/release/examples/throughput ADDR 200000 1 0
    perf script -i job.data -F tid,ip,sym > job.txt
    scripts/perf_components.py job.txt

and prints the share of samples of each component (training, features, store writes, ...).
Frames are matched by symbol name; the table below is the one place that says which
names make a component, and in which order they are tried.

With --threads, also prints the samples of each thread (by thread id) and its top
components, which shows what runs serially on one thread.
"""

import argparse
import collections
import re
import sys

# In priority order: a sample belongs to the first component any frame of its stack
# matches, so allocator, memcpy and codec time counts towards the work that called them
# (zstd inside a checkpoint is the checkpoint's).
COMPONENTS = [
    ("bench harness (generator, bare read)", r"throughput::bare_read|shopstream_ingest::generator"),
    ("checkpoints", r"shopstream_sinks::checkpoint|checkpoint::encode|rmp_serde"),
    ("store: compaction", r"ParquetStore::compact|GlobalStage::compact|compact_all"),
    ("store: writes", r"ParquetStore|held_rows"),
    ("training", r"Trainer::train|train_window|train_batch"),
    ("serving (predictions)", r"Trainer::predict|Trainer::score|predict"),
    ("demand forecasts", r"forecast"),
    ("drift", r"shopstream_drift"),
    ("Kafka: produce", r"Publisher::send|rdkafka::producer"),
    ("features", r"shopstream_features"),
    ("decode", r"shopstream_ingest::decode"),
    ("cleaning", r"shopstream_ingest::clean"),
    ("Kafka: consume", r"rdkafka::consumer|shopstream_kafka::source"),
    # librdkafka's own threads (fetching, batching, network) show only its C functions.
    ("Kafka: librdkafka threads", r"rd_kafka"),
]

# Cross-cutting: the share of samples with such a frame, whichever component they are in.
ACROSS = [
    ("zstd (any component)", r"ZSTD_"),
    ("malloc and free (any component)", r"malloc|_int_free|cfree|unlink_chunk"),
]


def read_samples(path):
    """[(tid, [frame symbol, innermost first])]."""
    samples = []
    current = None
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            if not line.startswith("\t"):
                current = (line.split()[0], [])
                samples.append(current)
            elif current is not None:
                parts = line.strip().split(" ", 1)
                current[1].append(parts[1] if len(parts) > 1 else "?")
    return samples


def component(frames):
    for name, pattern in COMPONENTS:
        if any(re.search(pattern, frame) for frame in frames):
            return name
    if any("[k]" in f or "entry_SYSCALL" in f for f in frames):
        return "kernel"
    return "other"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("script", help="output of `perf script -F tid,ip,sym`")
    parser.add_argument("--threads", action="store_true", help="also per thread")
    args = parser.parse_args()
    samples = read_samples(args.script)
    if not samples:
        sys.exit(f"no samples in {args.script}: is it the output of `perf script -F tid,ip,sym`?")
    total = len(samples)
    by_component = collections.Counter()
    by_thread = collections.defaultdict(collections.Counter)
    for tid, frames in samples:
        name = component(frames)
        by_component[name] += 1
        by_thread[tid][name] += 1
    print(f"{total} samples")
    for name, count in by_component.most_common():
        print(f"{count:7d} {100 * count / total:5.1f} %  {name}")
    for name, pattern in ACROSS:
        count = sum(1 for _, frames in samples if any(re.search(pattern, f) for f in frames))
        print(f"{count:7d} {100 * count / total:5.1f} %  {name}")
    if args.threads:
        threads = sorted(by_thread.items(), key=lambda kv: -sum(kv[1].values()))
        for tid, counts in threads[:8]:
            n = sum(counts.values())
            top = ", ".join(f"{k} {100 * v / n:.0f} %" for k, v in counts.most_common(4))
            print(f"thread {tid}: {n} samples ({100 * n / total:.1f} %): {top}")


if __name__ == "__main__":
    main()
