"""Stage microbenchmarks: the per-record cost of each step of the pipeline's hot path, on one core.

    .venv/bin/python -m bench.stages                      # 2,000 blocks of 100 records, best of 3
    .venv/bin/python -m bench.stages --quick              # a few seconds, for a smoke test
    .venv/bin/python -m bench.stages --json /tmp/stages.json

Signed blocks are generated first (not timed) by simulated vehicles through the real edge code
(simulators.offline: VehicleModel -> encode_record -> build_block), round robin over the fleet,
and run once through the real Processor to get each consumer batch's rows. Then every stage
below is timed with time.perf_counter over all blocks, calling the project's own functions, so
the numbers follow the code when it changes; each stage runs --repeat times and the best
(minimum) time is reported. While timing, the corpus is frozen out of the garbage collector
(gc.freeze): the real consumer holds one batch, not the whole corpus, and full collections walking
hundreds of thousands of corpus objects would inflate the allocation-heavy stages.

  edge (for context)  model step, record encode, block seal + sign (leaf hashes, root, Ed25519)
  ingest              envelope decode, Ed25519 verify (cryptography, PyNaCl, and whatever
                      schemas.crypto uses), leaf hashing, records tree, record decode, Arrow build,
                      batch tree, DuckDB insert + commit, anchor to the local ledger
  consumer total      Processor.process_all + build_rows + Store.write_batch + ledger anchor
                      (+ receipt), batch after batch: the consumer without Kafka, i.e. its
                      single-core ceiling; again with a poll's signatures checked on 2 threads

Prints a markdown table on stdout (stage | µs/record | µs/block | µs/batch | records/s on one
core = 1e6 / µs per record), then the sum of the ingest stages per record next to the measured
consumer total. Progress and setup times go to stderr. --json PATH writes the same numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bench.machine import machine, reference_unit_us, speed_line
from common.progress import ProgressBar
from edge_agent.sources.vehicle import VehicleModel
from ingest.config import StoreConfig
from ingest.ledger.local import LocalLedger
from ingest.pipeline import (
    processor as _processor,  # private helpers: used only in _decode_records
)
from ingest.pipeline.processor import Message, Pending, Processor, RawMessage, TableRows
from ingest.storage.registry import Registry
from ingest.storage.schema import RECORD_TABLES
from ingest.storage.store import BatchRows, FileStore
from schemas.block import (
    BlockHeader,
    Envelope,
    build_block,
    decode_envelope,
    decode_header,
    decode_record,
    encode_record,
    leaf_hashes,
)
from schemas.crypto import SigningKey, signing_input, verify_block_signature
from schemas.merkle import leaf_hash, root_from_leaf_hashes
from schemas.records import Record
from simulators.offline import START_NS, make_fleet

# Sizes for --quick: enough for several batches, small enough for a unit test.
QUICK = {"vehicles": 4, "blocks": 40, "block_records": 20, "batch_records": 200, "repeat": 1}
DEFAULTS = {"vehicles": 20, "blocks": 2000, "block_records": 100, "batch_records": 20_000, "repeat": 3}

FLEET_SEED = 1  # make_fleet's default: the model-step stage rebuilds the same vehicle models


# ================================================================================================
# Data (not timed)
# ================================================================================================


@dataclass
class Batch:
    """One consumer batch as the real Processor accumulated it."""

    rows: dict[str, TableRows]  # record table name -> its rows as columns (Pending.rows)
    block_hashes: list[bytes]
    batch_rows: BatchRows  # what Processor.build_rows made of it, ready for Store.write_batch


@dataclass
class Corpus:
    vehicles: int
    blocks_per_batch: int
    messages: list[Message]  # one per block, in arrival order
    envs: list[Envelope] = field(default_factory=list)
    headers: list[BlockHeader] = field(default_factory=list)
    public_keys: list[bytes] = field(default_factory=list)  # the signer of each block
    signing_keys: list[SigningKey] = field(default_factory=list)
    leaves: list[list[bytes]] = field(default_factory=list)  # leaf hashes of each block
    records: list[Record] = field(default_factory=list)  # every record, decoded
    batches: list[Batch] = field(default_factory=list)
    fleet_keys: list[tuple[bytes, str]] = field(default_factory=list)  # (public key, device id)

    @property
    def record_count(self) -> int:
        return len(self.records)

    def message_batches(self) -> list[list[Message]]:
        n = self.blocks_per_batch
        return [self.messages[i : i + n] for i in range(0, len(self.messages), n)]


def build_corpus(vehicles: int, blocks: int, block_records: int, batch_records: int, work: Path) -> Corpus:
    """Generate ``blocks`` signed blocks round robin over ``vehicles`` simulated vehicles, decode them,
    and run them once through a real Processor, batch by batch, to capture each batch's rows."""
    t0 = time.perf_counter()
    fleet = make_fleet(vehicles, seed=FLEET_SEED)
    bar = ProgressBar("generating", blocks, unit=" blocks")
    messages: list[Message] = []
    signers: list[SigningKey] = []
    for i in range(blocks):
        v = fleet[i % vehicles]
        messages.append(RawMessage("bench", 0, i, v.device_id.encode(), v.next_block(block_records)))
        signers.append(v.key)
        bar.update(i + 1)
    bar.close()
    c = Corpus(
        vehicles=vehicles,
        blocks_per_batch=max(1, batch_records // block_records),
        messages=messages,
        signing_keys=signers,
        fleet_keys=[(v.key.public_key, v.device_id) for v in fleet],
    )
    for m, key in zip(messages, signers, strict=True):
        env = decode_envelope(m.value or b"")
        c.envs.append(env)
        c.headers.append(decode_header(env.header))
        c.public_keys.append(key.public_key)
        c.leaves.append(leaf_hashes(env.seed, env.records))
        c.records += [decode_record(r) for r in env.records]
    print(
        f"generated {blocks:,} blocks ({c.record_count:,} records) from {vehicles} vehicles"
        f" in {time.perf_counter() - t0:.1f}s",
        file=sys.stderr,
    )

    t0 = time.perf_counter()
    store, registry = _consumer_state(c, work / "prep")
    proc = Processor(store, registry, max_block_bytes=64 * 1024 * 1024)
    for batch_no, msgs in enumerate(c.message_batches()):
        proc.process_all(msgs)
        p = proc.pending
        if p.rejections:
            raise RuntimeError(f"the Processor rejected generated blocks: {p.rejections[0].detail}")
        rows = proc.build_rows(batch_no)
        c.batches.append(Batch(p.rows, p.block_hashes, rows))
        proc.pending = Pending()
    store.close()
    registry.close()
    print(
        f"prepared {len(c.batches)} batches of up to {c.blocks_per_batch} blocks through the Processor"
        f" in {time.perf_counter() - t0:.1f}s",
        file=sys.stderr,
    )
    return c


def _file_store(path: Path) -> FileStore:
    """A fresh DuckDB-file store set up as the consumer opens it (its checkpoint threshold, its threads)."""
    s = StoreConfig()
    return FileStore(
        path, checkpoint_threshold_mb=s.checkpoint_threshold_mb, threads=s.consumer_duckdb_threads
    )


def _consumer_state(c: Corpus, work: Path) -> tuple[FileStore, Registry]:
    """A fresh DuckDB store and a device registry holding the fleet's keys, in ``work``."""
    work.mkdir(parents=True)
    registry = Registry(work / "registry.sqlite")
    for pk, device_id in c.fleet_keys:
        registry.add(pk, device_id=device_id)
    return _file_store(work / "telematics.duckdb"), registry


# ================================================================================================
# Processor internals: the ONLY place that reaches into ingest.pipeline.processor's private helpers. If
# they are renamed or replaced, adapt these two functions to what Processor does now (_arrow_tables
# mirrors build_rows through the public TableRows).
# ================================================================================================


def _decode_records(env: Envelope) -> list[Any]:
    """Decode a block's records the way Processor._accept does."""
    decode = _processor._record_list_decoder.decode
    return [decode(r) for r in env.records]


def _arrow_tables(rows: dict[str, TableRows]) -> dict[str, pa.Table]:
    """Build a batch's record tables the way Processor.build_rows does."""
    return {t.name: rows[t.name].table(t.columns) for t in RECORD_TABLES if rows[t.name]}


# ================================================================================================
# Stages: each returns (seconds, records handled), timing only its hot loop with perf_counter.
# ================================================================================================

Timing = tuple[float, int]


def stage_model_step(c: Corpus) -> Timing:
    # The same vehicle models as make_fleet builds, stepped round robin until they have produced as
    # many records as the corpus holds; the cost is per record produced.
    models = [
        VehicleModel(FLEET_SEED * 100_003 + i, start_ns=START_NS, rate_hz=10.0) for i in range(c.vehicles)
    ]
    target, produced, i = c.record_count, 0, 0
    t = time.perf_counter()
    while produced < target:
        produced += len(models[i % len(models)].step())
        i += 1
    return time.perf_counter() - t, produced


def stage_record_encode(c: Corpus) -> Timing:
    enc = encode_record
    t = time.perf_counter()
    for r in c.records:
        enc(r)
    return time.perf_counter() - t, len(c.records)


def stage_block_seal(c: Corpus) -> Timing:
    t = time.perf_counter()
    for key, h, env in zip(c.signing_keys, c.headers, c.envs, strict=True):
        build_block(
            key,
            device_id=h.device_id,
            boot=h.boot,
            seq=h.seq,
            prev=h.prev,
            records=env.records,
            t_first=h.t_first,
            t_last=h.t_last,
            seed=env.seed,
        )
    return time.perf_counter() - t, c.record_count


def stage_envelope_decode(c: Corpus) -> Timing:
    t = time.perf_counter()
    for m in c.messages:
        decode_envelope(m.value or b"")
    return time.perf_counter() - t, c.record_count


def stage_verify_cryptography(c: Corpus) -> Timing:
    load = Ed25519PublicKey.from_public_bytes
    t = time.perf_counter()
    for pk, env in zip(c.public_keys, c.envs, strict=True):
        load(pk).verify(env.sig, signing_input(env.header))  # raises InvalidSignature
    return time.perf_counter() - t, c.record_count


def _stage_verify_nacl() -> Callable[[Corpus], Timing] | None:
    try:
        from nacl.bindings import crypto_sign_open
    except ImportError:
        return None

    def stage(c: Corpus) -> Timing:
        t = time.perf_counter()
        for pk, env in zip(c.public_keys, c.envs, strict=True):
            # libsodium's API takes the signed message (signature || message); raises BadSignatureError.
            crypto_sign_open(env.sig + signing_input(env.header), pk)
        return time.perf_counter() - t, c.record_count

    return stage


def stage_verify_configured(c: Corpus) -> Timing:
    bad = 0
    t = time.perf_counter()
    for pk, env in zip(c.public_keys, c.envs, strict=True):
        if not verify_block_signature(pk, env.header, env.sig):
            bad += 1
    elapsed = time.perf_counter() - t
    if bad:
        raise RuntimeError(f"{bad} generated blocks failed signature verification")
    return elapsed, c.record_count


def stage_leaf_hashing(c: Corpus) -> Timing:
    t = time.perf_counter()
    for env in c.envs:
        leaf_hashes(env.seed, env.records)
    return time.perf_counter() - t, c.record_count


def stage_records_tree(c: Corpus) -> Timing:
    t = time.perf_counter()
    for leaves in c.leaves:
        root_from_leaf_hashes(leaves)
    return time.perf_counter() - t, c.record_count


def stage_record_decode(c: Corpus) -> Timing:
    t = time.perf_counter()
    for env in c.envs:
        _decode_records(env)
    return time.perf_counter() - t, c.record_count


def stage_arrow_build(c: Corpus) -> Timing:
    t = time.perf_counter()
    for b in c.batches:
        _arrow_tables(b.rows)
    return time.perf_counter() - t, c.record_count


def stage_batch_tree(c: Corpus) -> Timing:
    t = time.perf_counter()
    for b in c.batches:
        root_from_leaf_hashes([leaf_hash(bh) for bh in b.block_hashes])
    return time.perf_counter() - t, c.record_count


def stage_duckdb_insert(c: Corpus) -> Timing:
    # With the consumer's checkpoint threshold, and the checkpoint that folds this run's write-ahead
    # log into the file timed too: the consumer pays it every ``checkpoint_threshold_mb`` of log.
    with tempfile.TemporaryDirectory(prefix="bench-stages-db-") as tmp:
        store = _file_store(Path(tmp) / "telematics.duckdb")
        t = time.perf_counter()
        for b in c.batches:
            store.write_batch(b.batch_rows)
        store.purge()
        elapsed = time.perf_counter() - t
        stored = store.counts()["records"]
        store.close()
    return elapsed, stored


def stage_anchor(c: Corpus) -> Timing:
    with tempfile.TemporaryDirectory(prefix="bench-stages-ledger-") as tmp:
        ledger = LocalLedger(Path(tmp) / "ledger.jsonl", SigningKey.generate())
        t = time.perf_counter()
        for b in c.batches:
            ledger.anchor(b.batch_rows.batch_no, b.batch_rows.root, len(b.batch_rows.blocks))
        elapsed = time.perf_counter() - t
    return elapsed, c.record_count


def stage_consumer_total(c: Corpus, verify_threads: int = 0) -> Timing:
    # What ingest.pipeline.consumer does per poll and per flush, minus Kafka (and the dead-letter producer,
    # idle here: nothing is rejected). Returns the records actually stored, counted in DuckDB.
    # ``verify_threads``: a poll's signatures checked on that many threads ([ingest] verify_threads).
    with tempfile.TemporaryDirectory(prefix="bench-stages-consumer-") as tmp:
        store, registry = _consumer_state(c, Path(tmp) / "consumer")
        ledger = LocalLedger(Path(tmp) / "ledger.jsonl", SigningKey.generate())
        proc = Processor(store, registry, max_block_bytes=64 * 1024 * 1024, verify_threads=verify_threads)
        batches = c.message_batches()
        t = time.perf_counter()
        for msgs in batches:
            proc.process_all(msgs)
            batch_no = store.next_batch_no()
            rows = proc.build_rows(batch_no)
            store.write_batch(rows)
            if rows.blocks:
                store.record_anchor(ledger.anchor(batch_no, rows.root, len(rows.blocks)))
            proc.pending = Pending()
        store.purge()  # the checkpoint this run's log costs the consumer (as in the insert stage)
        elapsed = time.perf_counter() - t
        stored = store.counts()["records"]
        proc.close()
        store.close()
        registry.close()
    return elapsed, stored


@dataclass(frozen=True)
class Stage:
    name: str
    side: str  # "edge" or "ingest"
    unit: str  # what one call of the timed code handles: "record", "block" or "batch"
    run: Callable[[Corpus], Timing] | None  # None: unavailable, ``note`` says why
    note: str = ""


def stages() -> list[Stage]:
    nacl = _stage_verify_nacl()
    return [
        Stage("edge: model step", "edge", "record", stage_model_step),
        Stage("edge: record encode", "edge", "record", stage_record_encode),
        Stage("edge: block seal + sign", "edge", "block", stage_block_seal),
        Stage("envelope decode", "ingest", "block", stage_envelope_decode),
        Stage("signature verify (cryptography)", "ingest", "block", stage_verify_cryptography),
        Stage("signature verify (PyNaCl)", "ingest", "block", nacl, "" if nacl else "not installed"),
        Stage("signature verify (as configured)", "ingest", "block", stage_verify_configured),
        Stage("leaf hashing", "ingest", "block", stage_leaf_hashing),
        Stage("records tree", "ingest", "block", stage_records_tree),
        Stage("record decode", "ingest", "block", stage_record_decode),
        Stage("Arrow build", "ingest", "batch", stage_arrow_build),
        Stage("batch tree", "ingest", "batch", stage_batch_tree),
        Stage("DuckDB insert + commit", "ingest", "batch", stage_duckdb_insert),
        Stage("anchor (local ledger)", "ingest", "batch", stage_anchor),
        Stage("consumer total (Processor)", "ingest", "batch", stage_consumer_total),
        Stage(
            "consumer total, 2 verify threads",
            "ingest",
            "batch",
            lambda c: stage_consumer_total(c, verify_threads=2),
        ),
    ]


# The stages the consumer runs one after the other; the cryptography and PyNaCl verify rows are
# alternatives to "as configured", not extra work.
INGEST_SUM = (
    "envelope decode",
    "signature verify (as configured)",
    "leaf hashing",
    "records tree",
    "record decode",
    "Arrow build",
    "batch tree",
    "DuckDB insert + commit",
    "anchor (local ledger)",
)
CONSUMER_TOTAL = "consumer total (Processor)"


# ================================================================================================
# Measuring and reporting
# ================================================================================================


def _best(run: Callable[[Corpus], Timing], c: Corpus, repeat: int) -> Timing:
    best: Timing | None = None
    for _ in range(repeat):
        gc.collect()  # start each run from the same heap, not from the previous stage's garbage
        got = run(c)
        if best is None or got[0] < best[0]:
            best = got
    assert best is not None
    return best


def measure(todo: list[Stage], c: Corpus, repeat: int) -> list[dict[str, Any]]:
    """Run every stage, best of ``repeat``; one result row per stage."""
    blocks, batches = len(c.messages), len(c.batches)
    bar = ProgressBar("measuring", len(todo))
    results: list[dict[str, Any]] = []
    for i, st in enumerate(todo):
        bar.update(i, st.name)
        row: dict[str, Any] = {"name": st.name, "side": st.side, "unit": st.unit, "note": st.note}
        row.update(seconds=None, records_handled=None, us_per_record=None, us_per_block=None)
        row.update(us_per_batch=None, records_per_s=None)
        if st.run is not None:
            seconds, handled = _best(st.run, c, repeat)
            us = seconds / handled * 1e6
            row.update(seconds=round(seconds, 6), records_handled=handled, us_per_record=round(us, 4))
            row["records_per_s"] = round(1e6 / us)
            # Per block and per batch where the stage works in those units (the consumer total: both).
            if st.unit == "block" or st.name == CONSUMER_TOTAL:
                row["us_per_block"] = round(seconds / blocks * 1e6, 2)
            if st.unit == "batch":
                row["us_per_batch"] = round(seconds / batches * 1e6, 1)
        results.append(row)
    bar.update(len(todo), "done")
    bar.close()
    return results


def _fmt(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:,.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="telematics bench stages",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--vehicles", type=int, help=f"simulated vehicles, round robin (default {DEFAULTS['vehicles']})"
    )
    ap.add_argument("--blocks", type=int, help=f"signed blocks in all (default {DEFAULTS['blocks']})")
    ap.add_argument(
        "--block-records", type=int, help=f"records per block (default {DEFAULTS['block_records']})"
    )
    ap.add_argument(
        "--batch-records",
        type=int,
        help=f"records per consumer batch, as the consumer's batch size (default {DEFAULTS['batch_records']})",
    )
    ap.add_argument(
        "--repeat", type=int, help=f"runs per stage; the best is reported (default {DEFAULTS['repeat']})"
    )
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--quick", action="store_true", help=f"tiny sizes for a smoke test: {QUICK}")
    args = ap.parse_args(argv)
    # Explicit options win over --quick's sizes, which win over the defaults.
    base = QUICK if args.quick else DEFAULTS
    sizes = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    if min(sizes.values()) < 1:
        ap.error("sizes and --repeat must be at least 1")
    blocks, block_records, repeat = sizes["blocks"], sizes["block_records"], sizes["repeat"]

    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp:
        c = build_corpus(sizes["vehicles"], blocks, block_records, sizes["batch_records"], Path(tmp))
    n, n_batches = c.record_count, len(c.batches)

    # The corpus is large and lives for the whole run; the consumer only ever holds one batch. Freeze
    # it out of the garbage collector so its full collections do not walk the corpus on every pass.
    gc.collect()
    gc.freeze()
    speed_start = reference_unit_us()
    try:
        results = measure(stages(), c, repeat)
    finally:
        gc.unfreeze()
    box = machine(speed_start, reference_unit_us())
    consumer_stored = next(r["records_handled"] for r in results if r["name"] == CONSUMER_TOTAL)

    by_name = {r["name"]: r for r in results}
    ingest_sum = sum(by_name[s]["us_per_record"] for s in INGEST_SUM)
    total = by_name[CONSUMER_TOTAL]["us_per_record"]

    print(
        f"{n:,} records: {blocks:,} blocks of {block_records} from {c.vehicles} vehicles,"
        f" {n_batches} batches of up to {c.blocks_per_batch} blocks; best of {repeat}"
    )
    print()
    print("| stage | µs/record | µs/block | µs/batch | records/s (one core) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in results:
        if r["us_per_record"] is None:
            print(f"| {r['name']} | {r['note']} | | | |")
            continue
        print(
            f"| {r['name']} | {r['us_per_record']:.3f} | {_fmt(r['us_per_block'])} | {_fmt(r['us_per_batch'], 0)}"
            f" | {r['records_per_s']:,} |"
        )
    print()
    print(
        f"sum of the ingest stages (envelope decode, verify as configured, leaf hashing, records tree,"
        f" record decode, Arrow build, batch tree, DuckDB, anchor): {ingest_sum:.3f} µs/record;"
        f" measured consumer total {total:.3f} µs/record ({ingest_sum / total:.0%} accounted for);"
        f" one-core consumer ceiling {1e6 / total:,.0f} records/s"
    )
    print(speed_line(box))

    if args.json:
        out = {
            "records": n,
            "blocks": blocks,
            "block_records": block_records,
            "batch_records": sizes["batch_records"],
            "blocks_per_batch": c.blocks_per_batch,
            "batches": n_batches,
            "vehicles": c.vehicles,
            "repeat": repeat,
            "stages": results,
            "ingest_sum_us_per_record": round(ingest_sum, 4),
            "consumer_total_us_per_record": total,
            "consumer_ceiling_records_per_s": round(1e6 / total),
            "consumer_stored_records": consumer_stored,
            "machine": box,
        }
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
