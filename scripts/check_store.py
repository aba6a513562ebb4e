"""Reads a shopstream store with pyarrow and prints what it finds.

usage: python check_store.py STORE_DIR
Prints the number of files, rows, the hive partitions seen and the schema of `examples`;
exits 1 if the store cannot be read or a timestamp column is not UTC microseconds.
"""
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq


def main(store: str) -> int:
    root = Path(store) / "examples"
    files = sorted(p for p in root.rglob("*.parquet") if not p.name.startswith((".", "_")))
    if not files:
        print(f"no Parquet files under {root}", file=sys.stderr)
        return 1
    rows = sum(pq.read_table(f).num_rows for f in files)
    dataset = ds.dataset(root, format="parquet", partitioning="hive")
    table = dataset.to_table()
    ts = table.schema.field("ts").type
    if ts != pa.timestamp("us", tz="UTC"):
        print(f"ts column has type {ts}, expected timestamp[us, tz=UTC]", file=sys.stderr)
        return 1
    compression = {pq.ParquetFile(f).metadata.row_group(0).column(0).compression for f in files}
    print(f"files: {len(files)}")
    print(f"rows (pyarrow.parquet.read_table per file): {rows}")
    print(f"rows (hive dataset): {table.num_rows}")
    print(f"partitions: {sorted(set(zip(table['date'].to_pylist(), table['hour'].to_pylist())))[:3]} ...")
    print(f"compression: {sorted(compression)}")
    print(table.schema)
    return 0 if rows == table.num_rows else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "demo-store"))
