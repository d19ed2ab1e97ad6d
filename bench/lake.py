"""The store's write path: today's DuckDB file vs a DuckLake with a PostgreSQL catalog, same batches.

    .venv/bin/python -m bench.lake                       # 4,000 blocks of 100 records, batches of 20,000
    .venv/bin/python -m bench.lake --blocks 400 --batch-records 2000
    .venv/bin/python -m bench.lake --receipts --vehicles 1000 --blocks 40000 --block-records 10 --batch-records 10000

Signed blocks are generated and run through the real Processor once (``bench.stages``); each batch's
rows (the record tables as Arrow, and the blocks) are then written, timed, into (1) a fresh DuckDB
file with the store's schema and keys (``Store.write_batch``), and (2) a fresh DuckLake on the local
stack's PostgreSQL (``ingest/storage/lake.py``), one transaction per batch: the record tables and the
blocks appended, no keys (DuckLake has none). Reported: µs per record, batch commit p50/max, the
Parquet files written. Measures the storage engine only: not the lake store's deduplication or its
Kafka positions (issue 13), which will cost more.

``--receipts`` measures the lake store itself instead (``LakeStore.write_batch``: the fence, the
positions, the heads) with step 5 of the durability order done two ways, alternating, ``--rounds``
times each on a fresh lake: each batch's ledger receipt recorded in a transaction of its own right
after it (as the consumer did before: one ``INSERT … WHERE NOT EXISTS``), or carried by the next
batch's transaction (as it does now).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from bench.stages import Corpus, build_corpus
from devtools.stack import Stack, free_ports
from ingest.config import Config
from ingest.ledger.base import Receipt
from ingest.storage.lake import connect
from ingest.storage.lakestore import LakeStore
from ingest.storage.schema import BlockRow, rows_table
from ingest.storage.store import FileStore, receipt_row


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
    ap.add_argument("--receipts", action="store_true", help="the receipts' two ways through the lake store")
    ap.add_argument("--rounds", type=int, default=2, help="with --receipts: runs of each way, alternating")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-lake-"))
    stack = _stack(work)
    try:
        c = build_corpus(args.vehicles, args.blocks, args.block_records, args.batch_records, work / "corpus")
        stack.up()
        if args.receipts:
            _receipts(c, stack, work, args.rounds)
            return 0
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


def _receipts(c: Corpus, stack: Stack, work: Path, rounds: int) -> None:
    """Every batch of ``c`` through a fresh ``LakeStore`` per run, each receipt alone or carried."""
    import psycopg

    rows: list[tuple[str, float, float, float]] = []
    for run in range(2 * rounds):
        carried = run % 2 == 1
        db = f"receipts_{run}"
        with psycopg.connect(stack.pg_dsn, autocommit=True) as pg:
            pg.execute(f"CREATE DATABASE {db}")
        dsn, n = re.subn(r"dbname=\S+", f"dbname={db}", stack.pg_dsn)
        assert n == 1, f"no dbname in the stack's connection string {stack.pg_dsn}"
        store = LakeStore(dsn, str(work / db))
        store.claim("bench", [0], "bench")
        snaps = "SELECT count(*) FROM ducklake_snapshots('lake')"
        (s0,) = store.con.execute(snaps).fetchone()
        held: list[Receipt] = []
        writes, totals = [], []
        for i, b in enumerate(c.batches):
            r = dataclasses.replace(
                b.batch_rows, batch_no=store.next_batch_no(), offsets={("bench", 0): i + 1}
            )
            r.receipts, held = (held, []) if carried else ([], [])
            t = time.perf_counter()
            store.write_batch(r)
            t1 = time.perf_counter()
            receipt = Receipt("local", r.batch_no, r.root, i, bytes(32), time.time_ns())
            if carried:
                held = [receipt]
            else:  # the consumer before: the receipt in an autocommit statement of its own
                store.con.execute(
                    "INSERT INTO anchors SELECT ?, ?, ?, ?, make_timestamp_ns(?), ?"
                    " WHERE NOT EXISTS (SELECT 1 FROM anchors WHERE batch_no = ?)",
                    [*receipt_row(receipt), receipt.batch_no],
                )
            writes.append(t1 - t)
            totals.append(time.perf_counter() - t)
        store.record_anchors(held)
        (s1,) = store.con.execute(snaps).fetchone()
        store.close()
        what = "with the next batch" if carried else "on its own"
        rows.append((what, statistics.median(writes), statistics.mean(totals), (s1 - s0) / len(c.batches)))
        print(
            f"run {run + 1}: receipt {what}: {statistics.mean(totals) * 1e3:.1f} ms per batch",
            file=sys.stderr,
        )
    print(f"\n{c.record_count:,} records in {len(c.batches)} batches of up to {c.blocks_per_batch} blocks\n")
    print(
        "| run | receipt recorded | batch transaction p50 ms | store time per batch, mean ms | lake commits per batch |"
    )
    print("| ---: | --- | ---: | ---: | ---: |")
    for n, (what, w, tot, commits) in enumerate(rows, 1):
        print(f"| {n} | {what} | {w * 1e3:.1f} | {tot * 1e3:.1f} | {commits:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
