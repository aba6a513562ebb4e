#!/usr/bin/env python3
"""Random-kill soak of the real job, at the size of issue 13's recipe.

Starts a tansu broker on a free 127.0.0.1 port, publishes generated traffic, runs the job
once to the end (never killed), then runs it again on a second store and model path,
SIGKILLing it after a random 0.3-3.8 s each time, --kills times in a row, and finally lets
one run finish. Then it compares the two stores: every file below the store root except
the checkpoints (commit records without their `source_offsets`, which depend on how the
partitions interleaved), the files no commit names, and the model files. With DuckDB
installed (scripts/check-store.sh installs it), it also counts the examples a directory
glob sees. Exits 1 when anything differs.

usage: scripts/kill_soak.py [--events 80000] [--seed 21] [--kills 20] [--kill-seed 1]
                            [--bin target/release/shopstream] [--dir /tmp/soak]
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listing(root):
    """path -> bytes for everything but the checkpoints; records without source_offsets."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel.startswith("_checkpoints"):
            continue
        if path.is_dir():
            out[rel + "/"] = b""
        elif rel.startswith("_manifest/") and rel.endswith(".json"):
            record = json.loads(path.read_bytes())
            record.pop("source_offsets", None)
            out[rel] = json.dumps(record, sort_keys=True).encode()
        else:
            out[rel] = path.read_bytes()
    return out


def outside_manifest(root):
    """Data files on disk that no commit record makes visible."""
    live = set()
    manifest = root / "_manifest"
    if manifest.is_dir():
        for table_dir in manifest.iterdir():
            replaced, named = set(), set()
            for record in table_dir.glob("*.json"):
                commit = json.loads(record.read_bytes())
                named.update(f["path"] for f in commit["files"])
                replaced.update(commit.get("replaces", []))
            live.update(f"{table_dir.name}/{p}" for p in named - replaced)
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.parquet")
        if str(p.relative_to(root)) not in live
    )


def duckdb_rows(root):
    venv = Path(os.environ.get("SHOPSTREAM_TOOLS", Path.home() / ".cache/shopstream/tools"))
    python = venv / "pyenv/bin/python"
    if not python.exists():
        return None
    query = (
        "import duckdb,sys; print(duckdb.sql(\"SELECT count(*), count(DISTINCT event_id) "
        "FROM read_parquet('\" + sys.argv[1] + \"/examples/**/*.parquet', "
        "hive_partitioning=true)\").fetchall()[0])"
    )
    out = subprocess.run([str(python), "-c", query, str(root)], capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=80_000)
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--kill-seed", type=int, default=1)
    ap.add_argument("--min-secs", type=float, default=0.3)
    ap.add_argument("--max-secs", type=float, default=3.8)
    ap.add_argument("--bin", default=str(HERE.parent / "target/release/shopstream"))
    ap.add_argument("--dir", default="/tmp/shopstream-kill-soak")
    args = ap.parse_args()

    work = Path(args.dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tools = Path(os.environ.get("SHOPSTREAM_TOOLS", Path.home() / ".cache/shopstream/tools"))
    tansu = os.environ.get("SHOPSTREAM_TANSU", str(tools / "bin/tansu"))
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = subprocess.Popen(
        [tansu, "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=open(work / "broker.log", "w"), stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        env = dict(os.environ)
        env.update({
            "SHOPSTREAM__KAFKA__BROKERS": f"127.0.0.1:{port}",
            "SHOPSTREAM__KAFKA__SEEK_BACK_MESSAGES": "10000",
            "SHOPSTREAM__KAFKA__TOPIC_PARTITIONS": "4",
            "SHOPSTREAM__CHECKPOINT__MIN_INTERVAL_SECS": "0",
            "SHOPSTREAM__HTTP__ENABLED": "false",
        })
        subprocess.run([args.bin, "generate", "--events", str(args.events), "--seed",
                        str(args.seed), "--malformed-fraction", "0.005"],
                       env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=open(work / "generate.log", "w"))

        def job_env(name):
            e = dict(env)
            e["SHOPSTREAM__STORE__PATH"] = str(work / name)
            e["SHOPSTREAM__MODEL__PATH"] = str(work / f"{name}.ssm")
            e["SHOPSTREAM__KAFKA__GROUP_ID"] = f"soak-{name}"
            return e

        def start(name):
            return subprocess.Popen([args.bin, "run", "--stop-at-end"], env=job_env(name),
                                    stdout=subprocess.DEVNULL,
                                    stderr=open(work / f"{name}.log", "a"))

        t0 = time.time()
        if start("reference").wait() != 0:
            sys.exit("the never-killed run failed; see reference.log")
        print(f"never-killed run: {time.time() - t0:.1f} s")

        rng = random.Random(args.kill_seed)
        kills, ended = [], 0
        while len(kills) < args.kills:
            delay = rng.uniform(args.min_secs, args.max_secs)
            job = start("killed")
            time.sleep(delay)
            if job.poll() is None:
                job.send_signal(signal.SIGKILL)
                job.wait()
                kills.append(round(delay, 2))
            else:
                ended += 1
                if job.returncode != 0:
                    sys.exit(f"a run ended with {job.returncode}; see killed.log")
        if start("killed").wait() != 0:
            sys.exit("the final run failed; see killed.log")
        print(f"{len(kills)} SIGKILLs at {kills} s ({ended} runs ended before their kill)")

        ref, got = listing(work / "reference"), listing(work / "killed")
        differing = sorted(k for k in set(ref) | set(got) if ref.get(k) != got.get(k))
        orphans = outside_manifest(work / "killed")
        same_model = (work / "reference.ssm").read_bytes() == (work / "killed.ssm").read_bytes()
        data = [k for k in ref if not k.startswith("_manifest") and not k.endswith("/")]
        print(f"store: {len(data)} data files, {len(ref) - len(data)} records and directories; "
              f"{len(differing)} paths differ {differing[:5]}")
        print(f"files outside the manifest after the kills: {len(orphans)} {orphans[:5]}")
        print(f"model identical: {same_model}")
        for name in ("reference", "killed"):
            rows = duckdb_rows(work / name)
            if rows is not None:
                print(f"DuckDB glob over {name}/examples: (rows, distinct event_id) = {rows}")
        if differing or orphans or not same_model:
            sys.exit(1)
    finally:
        broker.terminate()
        broker.wait()


if __name__ == "__main__":
    main()
