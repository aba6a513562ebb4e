"""Opens a shopstream store with two other engines, pyarrow and DuckDB, and checks that
they agree with the store's own commit manifest.

usage: python check_store.py STORE_DIR

For every table with commit records (STORE_DIR/_manifest/TABLE/*.json) it prints, and
checks equal: the rows the manifest committed, the rows pyarrow reads file by file, the
rows of pyarrow's hive dataset over the table directory (what a directory-scanning engine
sees), and the rows DuckDB's read_parquet(..., hive_partitioning = true) returns. It also
checks that every `ts` column is a UTC microsecond timestamp in both engines and that the
files are zstd-compressed. Exit status 1 on any disagreement.
"""
import json
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq


def live_files(root: Path, table: str) -> dict[str, int]:
    """Relative path -> committed rows: what shopstream shows (see sinks/src/manifest.rs)."""
    commits = []
    for record in sorted((root / "_manifest" / table).glob("*.json")):
        commits.append(json.loads(record.read_text()))
    replaced = {path for c in commits for path in c.get("replaces", [])}
    live = {}
    for commit in commits:
        for f in commit["files"]:
            if f["path"] not in replaced:
                live[f["path"]] = f["rows"]
    return live


def check_table(root: Path, table: str) -> bool:
    live = live_files(root, table)
    paths = [root / table / rel for rel in sorted(live)]
    committed = sum(live.values())
    per_file = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
    dataset = ds.dataset(root / table, format="parquet", partitioning="hive")
    hive = dataset.to_table()
    con = duckdb.connect()
    files = [str(p) for p in paths]
    duck_rows = con.execute(
        "SELECT count(*) FROM read_parquet(?, hive_partitioning = true)", [files]
    ).fetchone()[0]
    duck_types = dict(
        con.execute(
            "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet(?, hive_partitioning = true))",
            [files],
        ).fetchall()
    )
    compression = {
        pq.ParquetFile(p).metadata.row_group(0).column(0).compression for p in paths
    }
    ok = committed == per_file == hive.num_rows == duck_rows
    arrow_ts = hive.schema.field("ts").type if "ts" in hive.schema.names else None
    if arrow_ts is not None and arrow_ts != pa.timestamp("us", tz="UTC"):
        print(f"  {table}.ts is {arrow_ts} in pyarrow, expected timestamp[us, tz=UTC]")
        ok = False
    if duck_types.get("ts") not in (None, "TIMESTAMP WITH TIME ZONE"):
        print(f"  {table}.ts is {duck_types.get('ts')} in DuckDB, expected TIMESTAMP WITH TIME ZONE")
        ok = False
    if compression != {"ZSTD"}:
        print(f"  {table}: compression {sorted(compression)}, expected ZSTD")
        ok = False
    print(
        f"{table}: files {len(paths)}, rows committed {committed}, pyarrow per file {per_file}, "
        f"pyarrow hive dataset {hive.num_rows}, duckdb {duck_rows}; ts: pyarrow {arrow_ts}, "
        f"duckdb {duck_types.get('ts')}; hive columns date/hour: pyarrow "
        f"{hive.schema.field('date').type}/{hive.schema.field('hour').type}, duckdb "
        f"{duck_types.get('date')}/{duck_types.get('hour')}; compression {sorted(compression)}"
        + ("" if ok else "  <-- MISMATCH")
    )
    return ok


def main(store: str) -> int:
    root = Path(store)
    tables = sorted(p.name for p in (root / "_manifest").iterdir() if p.is_dir()) if (root / "_manifest").is_dir() else []
    if not tables:
        print(f"no committed tables under {root} (no {root}/_manifest)", file=sys.stderr)
        return 1
    print(f"pyarrow {pa.__version__}, duckdb {duckdb.__version__}")
    results = [check_table(root, t) for t in tables]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "demo-store"))
