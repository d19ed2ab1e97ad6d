"""The store's write path: today's DuckDB file vs a DuckLake with a PostgreSQL catalog, same batches.

    .venv/bin/python -m bench.lake                       # 4,000 blocks of 100 records, batches of 20,000
    .venv/bin/python -m bench.lake --blocks 400 --batch-records 2000
    .venv/bin/python -m bench.lake --codecs snappy,uncompressed,zstd --vehicles 2000 --blocks 22000 \
        --block-records 11 --batch-records 12100 --rounds 4   # the lake store's write, per Parquet codec

Signed blocks are generated and run through the real Processor once (``bench.stages``); each batch's
rows (the record tables as Arrow, and the blocks) are then written, timed, into (1) a fresh DuckDB
file with the store's schema and keys (``Store.write_batch``), and (2) a fresh DuckLake on the local
stack's PostgreSQL (``ingest/storage/lake.py``), one transaction per batch: the record tables and the
blocks appended, no keys (DuckLake has none). Reported: µs per record, batch commit p50/max, the
Parquet files written. Measures the storage engine only: not the lake store's deduplication or its
Kafka positions (issue 13), which will cost more.

``--codecs``: instead, the same batches written through the lake store as the consumer writes them
(``LakeStore.write_batch``: the partition fence in PostgreSQL, then one lake transaction with the
record tables, blocks, batch row, heads and Kafka positions; DuckDB on ``[store]
consumer_duckdb_threads`` threads), once per Parquet codec (``[store] parquet_compression``) and
round, each into a fresh lake of its own, the codecs alternating. Reported per codec: wall and CPU
time per record and per block (this process does nothing else meanwhile), the Parquet bytes, and
the CPU of each statement of the transaction per block, timed around the store's writer cursor.

``--sessions SIZES``: the keyed rows of a reconnecting fleet instead. For each size, a fresh lake's
``session_events`` is filled with that many events (``--devices`` vehicles, boots counting up), and
then ``--batches`` batches are written through ``LakeStore.write_batch``, each with the births of
``--wave`` vehicles a boot above any stored, and a tenth of the previous batch's births again (an
MQTT redelivery). Twice per size, each into a fresh lake: every row checked against the table (as
before the writer kept each device's latest keys), and with the keys kept (``KeyMarks``: the
first batch reads them). Reported: the CPU per batch, and the events each lake holds (exit 1 if a
redelivered event was stored twice or one was lost).

``--lookups SIZES``: a block looked up by device and number (``Store.block_hash_at``, what the
Processor asks of a block published again, or of a late one) in a lake of that many blocks of
3,000 other vehicles, written 1,000 a file as batches write them, and again once compacted (median
CPU of 20 lookups). Then, in two fresh lakes of that size, a fleet of 200 vehicles back after an
outage, through the real Processor: each vehicle's block 0 stored, then its latest block live
(its chain skips the ones between), then its spool filling the gap in order, then every block
published again (a reconnection's redeliveries); with no block hashes kept, and with each
device's latest kept and its gaps open (``RECENT_BLOCKS``). Reported: the store reads and their
CPU, and the duplicates recognised (exit 1 if one was missed or a block refused).
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple, cast, get_args

import msgspec
import psycopg

from bench.machine import machine, reference_unit_us, speed_line
from bench.stages import Corpus, _consumer_state, build_corpus
from common.progress import ProgressBar
from devtools.stack import PG_DATABASE, Stack, free_ports
from ingest.config import Config, ParquetCodec, StoreConfig
from ingest.pipeline.processor import RECENT_BLOCKS, Processor
from ingest.storage.lake import connect
from ingest.storage.lakestore import LakeStore
from ingest.storage.schema import BlockRow, SessionRow, rows_table
from ingest.storage.store import BatchRows, FileStore


def _stack(work: Path) -> Stack:
    """A local stack of its own (only its PostgreSQL is used), on free ports."""
    ports = free_ports()
    cfg = msgspec.convert(
        {"data_dir": str(work / "data"), **ports, "stack": {**ports["stack"], "kafka_storage": "memory"}},
        Config,
    )
    return Stack(cfg)


def codec_list(text: str) -> list[ParquetCodec]:
    """``--codecs``: Parquet codecs, comma-separated (argparse type: one line for a wrong name)."""
    known = get_args(ParquetCodec)
    codecs = [c.strip() for c in text.split(",") if c.strip()]
    wrong = [c for c in codecs if c not in known]
    if wrong or not codecs:
        raise argparse.ArgumentTypeError(
            f"{', '.join(wrong) or repr(text)}: not a Parquet codec (one of {', '.join(known)})"
        )
    return [cast(ParquetCodec, c) for c in codecs]


def size_list(text: str) -> list[int]:
    """``--sessions``, ``--lookups``: table sizes, comma-separated (argparse type: one line for a
    wrong one)."""
    try:
        sizes = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: not a list of row counts (e.g. 0,1000000)")
    return sizes


class _TimedCursor:
    """The lake store's writer cursor with the CPU of each statement added up by its first words."""

    def __init__(self, cursor: Any, cpu: collections.defaultdict[str, float]) -> None:
        self._cursor = cursor
        self._cpu = cpu

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def _timed(self, what: str, call: Any, *args: Any) -> Any:
        t = time.process_time()
        try:
            return call(*args)
        finally:
            self._cpu[what] += time.process_time() - t

    def execute(self, sql: str, *args: Any) -> Any:
        return self._timed(" ".join(sql.split()[:3]), self._cursor.execute, sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        return self._timed(" ".join(sql.split()[:3]), self._cursor.executemany, sql, *args)


class LakeRun(NamedTuple):
    wall_s: float
    cpu_s: float
    parquet_bytes: int
    stored: int  # records counted in the lake afterwards


def _lake_store_write(
    c: Corpus,
    stack: Stack,
    work: Path,
    codec: ParquetCodec,
    name: str,
    cpu: collections.defaultdict[str, float],
) -> LakeRun:
    """Every batch of ``c`` through ``LakeStore.write_batch`` into a fresh lake (a database of its
    own in the stack's PostgreSQL) writing ``codec``; each statement's CPU added to ``cpu``."""
    data = work / name
    store = _fresh_lake(stack, work, name, parquet_compression=codec)
    try:
        store.claim("bench", [0], "bench.lake")  # the corpus's one partition, as a consumer claims it
        store._w = _TimedCursor(store._w, cpu)  # the benchmark's instrument, not the store's API
        wall, proc = time.perf_counter(), time.process_time()
        for b in c.batches:
            store.write_batch(b.batch_rows)
        run = LakeRun(
            time.perf_counter() - wall,
            time.process_time() - proc,
            sum(f.stat().st_size for f in data.rglob("*.parquet")),
            store.counts()["records"],
        )
    finally:
        store.close()
    return run


def _fresh_lake(stack: Stack, work: Path, name: str, **kw: Any) -> LakeStore:
    """A lake store on a database of its own in the stack's PostgreSQL, as the consumer opens it."""
    with psycopg.connect(stack.pg_dsn, autocommit=True) as pg:
        pg.execute(f"CREATE DATABASE {name}")
    return LakeStore(
        stack.pg_dsn.replace(f"dbname={PG_DATABASE}", f"dbname={name}"),
        str(work / name),
        threads=StoreConfig().consumer_duckdb_threads,
        **kw,
    )


class KeyedRun(NamedTuple):
    cpu_ms: list[float]  # per batch
    stored: int  # session events in the lake afterwards
    expected: int


def _keyed_write(
    args: argparse.Namespace, stack: Stack, work: Path, name: str, size: int, marks: bool
) -> KeyedRun:
    """``size`` events stored, then ``args.batches`` reconnection batches through ``write_batch``."""
    store = _fresh_lake(stack, work, name, key_marks=marks)
    try:
        devices, wave = args.devices, args.wave
        store.con.execute(  # synthetic history: one birth per device and boot
            "INSERT INTO session_events SELECT 'v' || (i % $1)::VARCHAR, (i // $1)::UINTEGER, 0, 'birth',"
            " 'k', make_timestamp_ns(1700000000000000000 + i), 0, '1', 1, '{}', repeat('m', 100)::BLOB,"
            " make_timestamp_ns(1700000000000000000 + i) FROM range($2) t(i)",
            [devices, size],
        )
        store.claim("bench", [0], "bench.lake")
        boot, now = size // devices + 1, time.time_ns()
        cpu: list[float] = []
        prev: list[SessionRow] = []
        expected = size
        for k in range(args.batches):
            fresh = [
                SessionRow(
                    f"v{(k * wave + j) % devices}", boot + k, 0, "birth", "k", now, 0, "1", 1, "{}", b"m", now
                )
                for j in range(wave)
            ]
            b = BatchRows(
                store.next_batch_no(), b"\0" * 32, time.time_ns(), {}, offsets={("bench", 0): k + 1}
            )
            b.sessions = fresh + prev[: max(1, wave // 10)]
            t = time.process_time()
            store.write_batch(b)
            cpu.append((time.process_time() - t) * 1e3)
            expected, prev = expected + len(fresh), fresh
        row = store.con.execute("SELECT count(*) FROM session_events").fetchone()
        return KeyedRun(cpu, int(row[0]) if row else 0, expected)
    finally:
        store.close()


def sessions_main(args: argparse.Namespace, stack: Stack, work: Path) -> int:
    sizes: list[int] = args.sessions
    speed_start = reference_unit_us()
    runs: dict[tuple[int, bool], KeyedRun] = {}
    bar = ProgressBar("writing", 2 * len(sizes), unit=" lakes")
    for i, size in enumerate(sizes):
        for j, marks in enumerate((False, True)):
            runs[(size, marks)] = _keyed_write(args, stack, work, f"keyed_{i}_{j}", size, marks)
            bar.update(2 * i + j + 1)
    bar.close()
    print(
        f"\nbatches of {args.wave} reconnecting vehicles' births (+ {max(1, args.wave // 10)} redelivered),"
        f" {args.batches} per lake, through LakeStore.write_batch; {args.devices:,} vehicles' history\n"
    )
    print(
        "| session events stored | every row checked: CPU ms per batch (median) | keys kept: the first"
        " batch (reads them) | keys kept: each batch after (median) | events stored (checked / kept) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: |")
    wrong = []
    for size in sizes:
        old, new = runs[(size, False)], runs[(size, True)]
        after = f"{statistics.median(new.cpu_ms[1:]):.1f}" if len(new.cpu_ms) > 1 else "-"
        print(
            f"| {size:,} | {statistics.median(old.cpu_ms):.1f} | {new.cpu_ms[0]:.1f} | {after}"
            f" | {old.stored:,} / {new.stored:,} |"
        )
        wrong += [
            f"{size:,} ({r.stored:,}, not {r.expected:,})" for r in (old, new) if r.stored != r.expected
        ]
    print(f"\n{speed_line(machine(speed_start, reference_unit_us()))}")
    if wrong:
        print(f"bench.lake: a lake does not hold each event once: {', '.join(wrong)}", file=sys.stderr)
        return 1
    return 0


def _pad_blocks(store: LakeStore, n: int) -> None:
    """``n`` blocks of 3,000 other vehicles (device ids of 32 hex digits, as real ones; their numbers
    far apart, as a fleet of all ages has them), 1,000 a Parquet file as batches write them."""
    for lo in range(0, n, 1000):
        store.con.execute(
            "INSERT INTO blocks SELECT md5((i % 3000)::VARCHAR), hash(i % 3000) % 10000000 + i // 3000,"
            " sha256(i::VARCHAR)::BLOB, 'h'::BLOB, 's'::BLOB, 'x'::BLOB, 'k', 0, 11,"
            " make_timestamp_ns(1700000000000000000 + i), make_timestamp_ns(1700000000000000000 + i),"
            " 'r'::BLOB, 0, 0, 0, i, make_timestamp_ns(1700000000000000000 + i), false FROM range($1, $2) t(i)",
            [lo, min(n, lo + 1000)],
        )


def _lookup_ms(store: LakeStore, n: int) -> float:
    """Median CPU of 20 lookups of stored blocks (of absent ones in an empty lake), by device and number."""
    rng, cpu = random.Random(n), []
    for _ in range(20):
        i = rng.randrange(max(n, 1))
        row = store.con.execute(
            "SELECT md5(($1 % 3000)::VARCHAR), min(seq) FROM blocks WHERE device_id = md5(($1 % 3000)::VARCHAR)",
            [i],
        ).fetchone()
        dev, seq = (str(row[0]), int(row[1] or 0)) if row else ("", 0)
        t = time.process_time()
        store.block_hash_at(dev, seq)
        cpu.append((time.process_time() - t) * 1e3)
    return statistics.median(cpu)


class ReplayRun(NamedTuple):
    spool_reads: int  # store reads while the spool filled the gaps
    reads: int  # store reads while every block was published again
    read_cpu_s: float  # both
    process_cpu_s: float  # the Processor's whole work on the messages, the reads included
    duplicates: int
    expected: int
    rejected: int


def _replays(
    c: Corpus, registry: Any, stack: Stack, work: Path, name: str, pad: int, recent: int
) -> ReplayRun:
    """The fleet of ``c`` (its batch k: block k of every vehicle) back after an outage, through a
    Processor keeping ``recent``: block 0 stored, then the latest live block (a gap), then the spool
    in order filling it, then every block published again."""
    store = _fresh_lake(stack, work, name)
    try:
        _pad_blocks(store, pad)
        store.claim("bench", [0], "bench.lake")
        proc = Processor(store, registry, max_block_bytes=64 * 1024 * 1024, recent_blocks=recent)
        reads: list[int] = []  # CPU ns of each store read
        look = store.block_hash_at

        def counted(device_id: str, seq: int) -> bytes | None:  # the benchmark's instrument
            t = time.process_time_ns()
            try:
                return look(device_id, seq)
            finally:
                reads.append(time.process_time_ns() - t)

        store.block_hash_at = counted  # type: ignore[method-assign]
        batches = c.message_batches()
        order = [batches[0], batches[-1], *batches[1:-1]]
        duplicates = rejected = spool_reads = 0
        process_ns = 0
        for i, msgs in enumerate([*order, *batches]):
            t = time.process_time_ns()
            proc.process_all(msgs)
            process_ns += time.process_time_ns() - t
            duplicates += len(proc.pending.duplicates) if i >= len(order) else 0
            rejected += len(proc.pending.rejections)
            rows = proc.build_rows(store.next_batch_no())
            rows.offsets = {("bench", 0): i + 1}
            proc.seal()
            store.write_batch(rows)
            proc.settled()
            if i == len(order) - 1:
                spool_reads = len(reads)
        return ReplayRun(
            spool_reads,
            len(reads) - spool_reads,
            sum(reads) / 1e9,
            process_ns / 1e9,
            duplicates,
            len(c.messages),
            rejected,
        )
    finally:
        store.close()


def lookups_main(args: argparse.Namespace, stack: Stack, work: Path) -> int:
    sizes: list[int] = args.lookups
    c = build_corpus(200, 1000, 11, 2200, work / "corpus")
    _, registry = _consumer_state(c, work / "registry")
    speed_start = reference_unit_us()
    bar = ProgressBar("writing", 3 * len(sizes), unit=" lakes")
    rows, wrong = [], []
    for i, n in enumerate(sizes):
        store = _fresh_lake(stack, work, f"lookups_{i}")
        try:
            _pad_blocks(store, n)
            files = len(store.con.execute("SELECT * FROM ducklake_list_files('lake', 'blocks')").fetchall())
            written = _lookup_ms(store, n)
            for call in (
                "ducklake_merge_adjacent_files('lake')",
                "ducklake_expire_snapshots('lake', older_than => now())",
                "ducklake_cleanup_old_files('lake', cleanup_all => true)",
            ):
                store.con.execute(f"CALL {call}")
            merged = len(store.con.execute("SELECT * FROM ducklake_list_files('lake', 'blocks')").fetchall())
            compacted = _lookup_ms(store, n)
        finally:
            store.close()
        bar.update(3 * i + 1)
        runs = []
        for j, recent in enumerate((0, RECENT_BLOCKS)):
            runs.append(_replays(c, registry, stack, work, f"replayed_{i}_{j}", n, recent))
            bar.update(3 * i + 2 + j)
        wrong += [
            f"{n:,} ({r.duplicates:,} duplicates of {r.expected:,}, {r.rejected:,} rejected)"
            for r in runs
            if r.duplicates != r.expected or r.rejected
        ]
        rows.append((n, written, files, compacted, merged, runs))
    bar.close()
    print(
        f"\na block looked up by device and number; then {c.vehicles} vehicles back after an outage through"
        f" the Processor: block 0 stored, the latest ({len(c.messages) // c.vehicles - 1}) live, the"
        " spool filling the gap, then every block published again\n"
    )
    print(
        "| blocks stored | a lookup, CPU ms: as written (files) | compacted (files) | store reads (spool +"
        f" again), their CPU s, the Processor's CPU s: none kept | {RECENT_BLOCKS} kept per device, gaps open"
        " | duplicates recognised |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, written, files, compacted, merged, (old, new) in rows:
        print(
            f"| {n:,} | {written:.1f} ({files:,}) | {compacted:.1f} ({merged:,})"
            f" | {old.spool_reads:,} + {old.reads:,}, {old.read_cpu_s:.1f}, {old.process_cpu_s:.1f}"
            f" | {new.spool_reads:,} + {new.reads:,}, {new.read_cpu_s:.1f}, {new.process_cpu_s:.2f}"
            f" | {old.duplicates:,} / {new.duplicates:,} |"
        )
    print(f"\n{speed_line(machine(speed_start, reference_unit_us()))}")
    if wrong:
        print(f"bench.lake: a block was not recognised or was refused: {', '.join(wrong)}", file=sys.stderr)
        return 1
    return 0


def codecs_main(args: argparse.Namespace, c: Corpus, stack: Stack, work: Path) -> int:
    codecs: list[ParquetCodec] = args.codecs
    runs: dict[str, list[LakeRun]] = {k: [] for k in codecs}
    cpu: dict[str, collections.defaultdict[str, float]] = {k: collections.defaultdict(float) for k in codecs}
    speed_start = reference_unit_us()
    bar = ProgressBar("writing", args.rounds * len(codecs), unit=" lakes")
    for r in range(args.rounds):
        for i, codec in enumerate(codecs):
            runs[codec].append(_lake_store_write(c, stack, work, codec, f"lake_{r}_{i}", cpu[codec]))
            bar.update(r * len(codecs) + i + 1)
    bar.close()
    n, nb = c.record_count, len(c.messages)
    print(
        f"\n{n:,} records ({nb:,} blocks of {args.block_records}) in {len(c.batches)} batches of up to"
        f" {c.blocks_per_batch} blocks, through LakeStore.write_batch; {args.rounds} round(s),"
        " each codec into a fresh lake\n"
    )
    print(
        "| codec | wall µs/record (per round) | CPU µs/record (per round) | CPU µs/block (mean)"
        " | Parquet MiB | records stored |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for codec in codecs:
        rs = runs[codec]
        w = " / ".join(f"{x.wall_s / n * 1e6:.2f}" for x in rs)
        p = " / ".join(f"{x.cpu_s / n * 1e6:.2f}" for x in rs)
        mean = statistics.mean(x.cpu_s for x in rs) / nb * 1e6
        stored = (
            " / ".join(f"{x.stored:,}" for x in rs)
            if len({x.stored for x in rs}) > 1
            else f"{rs[0].stored:,}"
        )
        print(f"| {codec} | {w} | {p} | {mean:.1f} | {rs[-1].parquet_bytes / 2**20:.1f} | {stored} |")
    print(f"\nCPU µs per block of each statement of the lake transaction (mean of {args.rounds} round(s)):\n")
    print("| statement | " + " | ".join(codecs) + " |")
    print("| --- |" + " ---: |" * len(codecs))
    per = args.rounds * nb / 1e6
    for what in sorted({k for v in cpu.values() for k in v}, key=lambda k: -cpu[codecs[0]][k]):
        print(f"| {what} | " + " | ".join(f"{cpu[k][what] / per:.1f}" for k in codecs) + " |")
    rest = [sum(x.cpu_s for x in runs[k]) - sum(cpu[k].values()) for k in codecs]
    print(
        "| the rest: the partition fence in PostgreSQL, the row tables built in Python | "
        + " | ".join(f"{r / per:.1f}" for r in rest)
        + " |"
    )
    print(f"\n{speed_line(machine(speed_start, reference_unit_us()))}")
    short = [f"{k}: {x.stored:,}" for k in codecs for x in runs[k] if x.stored != n]
    if short:
        print(
            f"bench.lake: a lake does not hold the {n:,} records written ({', '.join(short)})",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.lake", description=__doc__)
    ap.add_argument("--vehicles", type=int, default=20)
    ap.add_argument("--blocks", type=int, default=4000)
    ap.add_argument("--block-records", type=int, default=100)
    ap.add_argument("--batch-records", type=int, default=20_000)
    ap.add_argument(
        "--codecs",
        type=codec_list,
        metavar="LIST",
        help="write through the lake store once per Parquet codec, e.g. snappy,uncompressed,zstd",
    )
    ap.add_argument("--rounds", type=int, default=2, help="with --codecs: rounds of every codec (default 2)")
    ap.add_argument(
        "--sessions",
        type=size_list,
        metavar="SIZES",
        help="the session events of reconnecting vehicles on tables of these sizes, e.g. 0,1000000,3000000",
    )
    ap.add_argument(
        "--lookups",
        type=size_list,
        metavar="SIZES",
        help="a block looked up by device and number, and redeliveries, in lakes of these many blocks",
    )
    ap.add_argument("--devices", type=int, default=10_000, help="with --sessions: vehicles (default 10,000)")
    ap.add_argument("--wave", type=int, default=500, help="with --sessions: births per batch (default 500)")
    ap.add_argument("--batches", type=int, default=6, help="with --sessions: batches per lake (default 6)")
    args = ap.parse_args(argv)
    for opt in ("rounds", "devices", "wave", "batches"):
        if getattr(args, opt) < 1:
            ap.error(f"--{opt} must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="bench-lake-"))
    stack = _stack(work)
    try:
        if args.sessions or args.lookups:
            stack.up()
            return sessions_main(args, stack, work) if args.sessions else lookups_main(args, stack, work)
        c = build_corpus(args.vehicles, args.blocks, args.block_records, args.batch_records, work / "corpus")
        stack.up()
        if args.codecs:
            return codecs_main(args, c, stack, work)
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
