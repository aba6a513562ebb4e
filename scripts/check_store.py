"""Opens a shopstream store with two other engines, pyarrow and DuckDB, and checks that
they agree with the store's own commit manifest.

usage: python check_store.py STORE   (a directory, or s3://BUCKET/PREFIX with the
standard AWS_* environment, AWS_ENDPOINT_URL included)

For every table with commit records (STORE_DIR/_manifest/TABLE/*.json) it prints, and
checks equal: the rows the manifest committed, the rows pyarrow reads file by file, the
rows of pyarrow's hive dataset over the table directory (what a directory-scanning engine
sees), and the rows DuckDB's read_parquet(..., hive_partitioning = true) returns. It also
checks that every `ts` column is a UTC microsecond timestamp in both engines and that the
files are zstd-compressed. Exit status 1 on any disagreement.
"""
import json
import os
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def open_store(store: str):
    """(pyarrow filesystem, root inside it, DuckDB path prefix) of a directory or an
    s3://bucket/prefix URL. S3 credentials and endpoint come from the standard
    environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL."""
    if store.startswith("s3://"):
        options = {"region": os.environ.get("AWS_REGION", "us-east-1")}
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            options.update(endpoint_override=host, scheme=scheme)
        root = store[len("s3://"):].rstrip("/")
        return pafs.S3FileSystem(**options), root, "s3://"
    root = str(Path(store).resolve())
    return pafs.LocalFileSystem(), root, ""


def duckdb_connection(prefix: str):
    """DuckDB, able to read the store's paths: local files, or S3 through httpfs (or, when
    the httpfs extension cannot be installed, as on a machine without internet, through
    fsspec's s3fs registered as DuckDB's filesystem). Returns (connection, how)."""
    con = duckdb.connect()
    if not prefix:
        return con, "local files"
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    try:
        con.execute("INSTALL httpfs")
        con.execute("LOAD httpfs")
        scheme, _, host = endpoint.partition("://")
        con.execute(
            "CREATE SECRET store (TYPE s3, KEY_ID ?, SECRET ?, REGION ?"
            + (", ENDPOINT ?, URL_STYLE 'path', USE_SSL ?" if endpoint else "")
            + ")",
            [
                os.environ.get("AWS_ACCESS_KEY_ID", ""),
                os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
                os.environ.get("AWS_REGION", "us-east-1"),
            ]
            + ([host, scheme == "https"] if endpoint else []),
        )
        return con, "httpfs"
    except duckdb.Error:
        import s3fs

        con.register_filesystem(s3fs.S3FileSystem(endpoint_url=endpoint or None))
        return con, "fsspec s3fs (httpfs not installable here)"


def live_files(fs, root: str, table: str) -> dict[str, int]:
    """Relative path -> committed rows: what shopstream shows (see sinks/src/manifest.rs)."""
    commits = []
    selector = pafs.FileSelector(f"{root}/_manifest/{table}", allow_not_found=True)
    for info in sorted(fs.get_file_info(selector), key=lambda i: i.path):
        name = info.base_name
        if info.type == pafs.FileType.File and name.endswith(".json") and not name.startswith("."):
            with fs.open_input_stream(info.path) as record:
                commits.append(json.loads(record.read()))
    replaced = {path for c in commits for path in c.get("replaces", [])}
    live = {}
    for commit in commits:
        for f in commit["files"]:
            if f["path"] not in replaced:
                live[f["path"]] = f["rows"]
    return live


def check_table(fs, root: str, prefix: str, table: str) -> bool:
    live = live_files(fs, root, table)
    paths = [f"{root}/{table}/{rel}" for rel in sorted(live)]
    committed = sum(live.values())
    metadata = {p: pq.ParquetFile(fs.open_input_file(p)).metadata for p in paths}
    per_file = sum(m.num_rows for m in metadata.values())
    dataset = ds.dataset(f"{root}/{table}", filesystem=fs, format="parquet", partitioning="hive")
    hive = dataset.to_table()
    con, how = duckdb_connection(prefix)
    files = [prefix + p for p in paths]
    duck_rows = con.execute(
        "SELECT count(*) FROM read_parquet(?, hive_partitioning = true)", [files]
    ).fetchone()[0]
    duck_types = dict(
        con.execute(
            "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet(?, hive_partitioning = true))",
            [files],
        ).fetchall()
    )
    compression = {m.row_group(0).column(0).compression for m in metadata.values()}
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
        f"pyarrow hive dataset {hive.num_rows}, duckdb ({how}) {duck_rows}; ts: pyarrow {arrow_ts}, "
        f"duckdb {duck_types.get('ts')}; hive columns date/hour: pyarrow "
        f"{hive.schema.field('date').type}/{hive.schema.field('hour').type}, duckdb "
        f"{duck_types.get('date')}/{duck_types.get('hour')}; compression {sorted(compression)}"
        + ("" if ok else "  <-- MISMATCH")
    )
    return ok


def main(store: str) -> int:
    fs, root, prefix = open_store(store)
    listed = fs.get_file_info(pafs.FileSelector(f"{root}/_manifest", allow_not_found=True))
    tables = sorted(i.base_name for i in listed if i.type == pafs.FileType.Directory)
    if not tables:
        print(f"no committed tables under {store} (no {store}/_manifest)", file=sys.stderr)
        return 1
    print(f"pyarrow {pa.__version__}, duckdb {duckdb.__version__}")
    results = [check_table(fs, root, prefix, t) for t in tables]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "demo-store"))
