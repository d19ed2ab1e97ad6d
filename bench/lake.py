"""The store's write path: today's DuckDB file vs a DuckLake with a PostgreSQL catalog, same batches.

    .venv/bin/python -m bench.lake                       # 4,000 blocks of 100 records, batches of 20,000
    .venv/bin/python -m bench.lake --blocks 400 --batch-records 2000

Signed blocks are generated and run through the real Processor once (``bench.stages``); each batch's
rows (the record tables as Arrow, and the blocks) are then written, timed, into (1) a fresh DuckDB
file with the store's schema and keys (``Store.write_batch``), and (2) a fresh DuckLake on the local
stack's PostgreSQL (``ingest/storage/lake.py``), one transaction per batch: the record tables and the
blocks appended, no keys (DuckLake has none). Reported: µs per record, batch commit p50/max, the
Parquet files written. Measures the storage engine only: not the lake store's deduplication or its
Kafka positions (issue 13), which will cost more.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from bench.stages import build_corpus
from devtools.stack import Stack, free_ports
from ingest.config import Config
from ingest.storage.lake import connect
from ingest.storage.schema import BlockRow, rows_table
from ingest.storage.store import FileStore


def _stack(work: Path) -> Stack:
    """A local stack of its own (only its PostgreSQL is used), on free ports."""
    ports = free_ports()
    cfg = msgspec.convert(
        {"data_dir": str(work / "data"), **ports, "stack": {**ports["stack"], "kafka_storage": "memory"}},
        Config,
    )
    return Stack(cfg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.lake", description=__doc__)
    ap.add_argument("--vehicles", type=int, default=20)
    ap.add_argument("--blocks", type=int, default=4000)
    ap.add_argument("--block-records", type=int, default=100)
    ap.add_argument("--batch-records", type=int, default=20_000)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-lake-"))
    stack = _stack(work)
    try:
        c = build_corpus(args.vehicles, args.blocks, args.block_records, args.batch_records, work / "corpus")
        stack.up()
        results: dict[str, tuple[list[float], int | None]] = {}
        # (1) the DuckDB file, as the consumer writes it today
        store = FileStore(work / "file.duckdb", checkpoint_threshold_mb=256)
        times = []
        for b in c.batches:
            t = time.perf_counter()
            store.write_batch(b.batch_rows)
            times.append(time.perf_counter() - t)
        store.close()
        results["DuckDB file (keys)"] = (times, None)
        # (2) a DuckLake on PostgreSQL, data in a local directory
        data = work / "lake"
        con = connect(stack.pg_dsn, data_path=str(data))
        first = c.batches[0].batch_rows
        for name, tbl in first.records.items():
            con.register("_t", tbl.slice(0, 0))
            con.execute(f"CREATE TABLE lake.{name} AS SELECT * FROM _t")
            con.unregister("_t")
        con.register("_t", rows_table(first.blocks[:0], BlockRow))
        con.execute("CREATE TABLE lake.blocks AS SELECT * FROM _t")
        con.unregister("_t")
        times = []
        for b in c.batches:
            rows = b.batch_rows
            t = time.perf_counter()
            con.execute("BEGIN TRANSACTION")
            for name, tbl in rows.records.items():
                con.register("_t", tbl)
                con.execute(f"INSERT INTO lake.{name} SELECT * FROM _t")
                con.unregister("_t")
            con.register("_t", rows_table(rows.blocks, BlockRow))
            con.execute("INSERT INTO lake.blocks SELECT * FROM _t")
            con.unregister("_t")
            con.execute("COMMIT")
            times.append(time.perf_counter() - t)
        files = sum(1 for _ in data.rglob("*.parquet"))
        con.close()
        results["DuckLake (PostgreSQL catalog, local files)"] = (times, files)
        n = c.record_count
        print(
            f"\n{n:,} records in {len(c.batches)} batches of up to {c.blocks_per_batch} blocks"
            f" ({args.block_records} records each)\n"
        )
        print("| store | µs/record | batch commit p50 / max ms | Parquet files |")
        print("| --- | ---: | ---: | ---: |")
        for what, (ts, nfiles) in results.items():
            print(
                f"| {what} | {sum(ts) / n * 1e6:.2f} | {statistics.median(ts) * 1e3:.0f} / {max(ts) * 1e3:.0f}"
                f" | {'-' if nfiles is None else nfiles} |"
            )
    finally:
        stack.down()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
