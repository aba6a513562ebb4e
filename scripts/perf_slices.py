#!/usr/bin/env python3
"""How busy the machine's cores were, slice by slice, and who kept them busy.

A run's average CPU (the throughput bench's `cores` column) mixes its start and end, when
few threads have work, with its steady state. This reads a system-wide recording without
call graphs, every CPU sampled, idle included:

    perf record -F 999 -a -o sys.data -- \
        target/release/examples/throughput ADDR 200000 1 0
    perf script -i sys.data -F comm,pid,tid,time > sys.txt
    scripts/perf_slices.py sys.txt --cpus 2

and prints, per slice (200 ms by default), the samples of the most sampled process (the
job), the second (the broker, when it runs on the machine), the idle task and everything
else. Then, over the steady state (the slices where the job held at least
--steady-share of all the CPUs' samples), the cores each thread of the job kept busy, and
the broker, idle and the rest.
"""

import argparse
import collections
import sys


def parse(path):
    """(seconds, pid, tid, comm) per sample of `perf script -F comm,pid,tid,time`."""
    rows = []
    with open(path, errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 3 or "/" not in fields[-2]:
                continue
            pid, tid = fields[-2].split("/", 1)
            rows.append((float(fields[-1].rstrip(":")), pid, tid, " ".join(fields[:-2])))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("script", help="output of perf script -F comm,pid,tid,time")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs recorded (default 2)")
    parser.add_argument("--hz", type=float, default=999.0, help="sampling rate (default 999)")
    parser.add_argument("--slice-ms", type=float, default=200.0, help="slice (default 200)")
    parser.add_argument(
        "--steady-share",
        type=float,
        default=0.6,
        help="share of all samples the job holds in a steady slice (default 0.6)",
    )
    args = parser.parse_args()
    rows = parse(args.script)
    if not rows:
        sys.exit(f"no samples in {args.script}: is it `perf script -F comm,pid,tid,time`?")
    start = min(r[0] for r in rows)
    width = args.slice_ms / 1000.0
    busy = [p for p, _ in collections.Counter(r[1] for r in rows).most_common() if p != "0"]
    job = busy[0]
    broker = busy[1] if len(busy) > 1 else None

    def role(pid):
        if pid == job:
            return "job"
        if pid == broker:
            return "broker"
        return "idle" if pid == "0" else "other"

    slices = collections.defaultdict(collections.Counter)
    for t, pid, _, _ in rows:
        slices[int((t - start) / width)][role(pid)] += 1
    full = args.cpus * args.hz * width
    print(f"job pid {job}, broker pid {broker}; {full:.0f} samples a slice = {args.cpus} busy CPUs")
    print(f"{'from s':>7} {'job':>6} {'broker':>7} {'idle':>6} {'other':>6} {'busy':>6}")
    for k in sorted(slices):
        c = slices[k]
        total = sum(c.values())
        share = 1 - c["idle"] / total if total else 0
        print(
            f"{k * width:7.1f} {c['job']:6} {c['broker']:7} {c['idle']:6} {c['other']:6}"
            f" {share:6.0%}"
        )
    steady = {k for k, c in slices.items() if c["job"] >= args.steady_share * full}
    if not steady:
        print("no steady slice")
        return
    samples = sum(sum(slices[k].values()) for k in steady)
    idle = sum(slices[k]["idle"] for k in steady)
    print(
        f"steady state: {len(steady)} slices from {min(steady) * width:.1f} s to"
        f" {(max(steady) + 1) * width:.1f} s, {1 - idle / samples:.0%} of the CPUs busy"
    )
    names = collections.Counter()
    threads = collections.Counter()
    for t, pid, tid, comm in rows:
        if int((t - start) / width) in steady:
            names[f"job: {comm}" if pid == job else role(pid)] += 1
            if pid == job:
                threads[f"{comm} ({tid})"] += 1
    per_core = len(steady) * args.hz * width
    print("by thread name (a name's threads together):")
    for name, n in names.most_common():
        print(f"{n / per_core:6.2f} cores  {name}")
    print("the job's busiest threads:")
    for name, n in threads.most_common(8):
        print(f"{n / per_core:6.2f} cores  {name}")


if __name__ == "__main__":
    main()
