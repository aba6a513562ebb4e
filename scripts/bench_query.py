"""Times `shopstream query` next to DuckDB on the same files (see bench-query.sh).

usage: python bench_query.py STORE_DIR SHOPSTREAM_BINARY [RUNS]

Both engines read exactly the files the store's manifest commits (DuckDB gets the list,
shopstream reads the manifest itself), with hive partitioning. Each query runs RUNS
times; the median is reported. shopstream is timed as a whole process (start-up, manifest,
planning, scan, CSV output); DuckDB both as a whole `python -c` process and in-process
(connection already open: its best case). Results are compared row for row.
"""
import csv
import io
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).parent))
from check_store import live_files  # noqa: E402


def timed(cmd):
    started = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - started, out.stdout


def main(store, binary, runs):
    root = Path(store)
    live = live_files(root, "examples")
    files = [str(root / "examples" / rel) for rel in sorted(live)]
    rows = sum(live.values())
    con = duckdb.connect()
    con.execute(
        f"CREATE VIEW examples AS SELECT * FROM read_parquet({files!r}, hive_partitioning = true)"
    )
    last_ts, last_date = con.execute("SELECT max(ts), max(date) FROM examples").fetchone()
    since = (last_ts - __import__("datetime").timedelta(hours=24)).strftime("%Y-%m-%d %H:%M:%S")
    user = con.execute(
        f"SELECT user_id FROM examples WHERE ts >= TIMESTAMPTZ '{since}+00' "
        "GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1"
    ).fetchone()[0]
    day = str(last_date - __import__("datetime").timedelta(days=1))
    queries = {
        "point lookup: one user's last 24 h": (
            f"SELECT * FROM examples WHERE user_id = '{user}' AND ts >= TIMESTAMP '{since}'",
            f"SELECT * EXCLUDE (date, hour) FROM examples WHERE user_id = '{user}' AND ts >= TIMESTAMPTZ '{since}+00'",
        ),
        f"hourly aggregates by scenario over {day}": (
            "SELECT hour, scenario, count(*) AS n, avg(CAST(clicked AS DOUBLE)) AS ctr "
            f"FROM examples WHERE date = '{day}' GROUP BY hour, scenario ORDER BY hour, scenario",
            "SELECT CAST(hour AS INTEGER) AS hour, scenario, count(*) AS n, avg(CAST(clicked AS DOUBLE)) AS ctr "
            f"FROM examples WHERE date = DATE '{day}' GROUP BY ALL ORDER BY 1, 2",
        ),
    }
    print(f"store: {root}, {len(files)} files, {rows} example rows; user {user}; runs {runs}")
    print(f"duckdb {duckdb.__version__}, {os.cpu_count()} cores")
    for name, (ours, theirs) in queries.items():
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        ss = [timed([binary, "query", "--store", store, "--format", "csv", ours]) for _ in range(runs)]
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        ss_rows = list(csv.reader(io.StringIO(ss[0][1])))[1:]
        script = (
            "import duckdb,sys; c=duckdb.connect(); "
            f"c.execute(\"CREATE VIEW examples AS SELECT * FROM read_parquet({files!r}, hive_partitioning = true)\"); "
            f"r=c.execute({theirs!r}).fetchall(); print(len(r))"
        )
        dd_proc = [timed([sys.executable, "-c", script])[0] for _ in range(runs)]
        dd_in = []
        for _ in range(runs):
            started = time.perf_counter()
            result = con.execute(theirs).fetchall()
            dd_in.append(time.perf_counter() - started)
        if len(result) != len(ss_rows):
            print(f"  MISMATCH: duckdb {len(result)} rows, shopstream {len(ss_rows)} rows")
            return 1
        if "hourly" in name:
            ours_n = [(int(r[0]), r[1], int(r[2])) for r in ss_rows]
            theirs_n = [(int(r[0]), r[1], int(r[2])) for r in result]
            if ours_n != theirs_n:
                print("  MISMATCH in the aggregates")
                return 1
        s, p, i = (statistics.median([t for t, _ in ss]), statistics.median(dd_proc), statistics.median(dd_in))
        print(f"{name}: {len(result)} rows, identical in both engines")
        print(f"  shopstream query (process)      {s * 1000:8.1f} ms   peak RSS {peak_kib / 1024:.0f} MiB" + ("" if peak_kib > before else " (max over runs so far)"))
        print(f"  duckdb (python -c process)      {p * 1000:8.1f} ms   ratio shopstream/duckdb {s / p:.2f}")
        print(f"  duckdb (in-process, warm)       {i * 1000:8.1f} ms   ratio shopstream/duckdb {s / i:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 7))
