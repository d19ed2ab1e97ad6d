"""Several consumer processes append to one local log: one at a time (an flock), each reading what
the others appended first, so the log stays one hash chain and a batch is anchored once."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from ingest.ledger.base import load_or_create_key
from ingest.ledger.local import LocalLedger, verify_log


def _writer(path: str, key_path: str, batches: list[int]) -> None:
    led = LocalLedger(Path(path), load_or_create_key(Path(key_path)), checkpoint_every=3)
    for n in batches:
        led.anchor(n, n.to_bytes(32, "big"), 1 + n % 5)


def test_two_writers_in_one_process_see_each_other(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "k")
    a = LocalLedger(tmp_path / "ledger.jsonl", key)
    b = LocalLedger(tmp_path / "ledger.jsonl", key)
    a.anchor(0, b"\x00" * 32, 1)
    rb = b.anchor(1, b"\x01" * 32, 1)  # b reads a's entry first: index 1, chained to it
    assert rb.index == 1 and b.size == 2
    assert a.anchor(1, b"\x01" * 32, 1) == rb  # a finds b's entry: the same receipt, no second entry
    assert a.anchor(2, b"\x02" * 32, 1).index == 2
    rep = verify_log(a.path, key.public_key)
    assert rep.ok and rep.entries == 3, rep
    # a receipt another writer appended is found (the consumer's start-up check of the store's anchors)
    c = LocalLedger(tmp_path / "ledger.jsonl", key)
    reader = LocalLedger(tmp_path / "ledger.jsonl")
    a.anchor(3, b"\x03" * 32, 1)
    assert c.receipt(3) == reader.receipt(3) == a.receipt(3)
    assert c.receipt(4) is None


def test_processes_interleave_into_one_chain(tmp_path: Path) -> None:
    """Six writers started one after another while the others append (a writer opening the log
    mid-append once took an entry it had not read for the log's end, and two entries got the same
    index); overlapping batch ranges are anchored twice (a recovery race): once in the log."""
    path, key_path = tmp_path / "ledger.jsonl", tmp_path / "ingest.key"
    key = load_or_create_key(key_path)
    jobs = [list(range(i * 60, i * 60 + 90)) for i in range(6)]  # 0..389, 30 of each range shared
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), str(key_path), j)) for j in jobs]
    for p in procs:
        p.start()
        time.sleep(0.05)
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    led = LocalLedger(path)
    assert led.size == 390 and sorted(led.roots()) == list(range(390))
    rep = verify_log(path, key.public_key)
    assert rep.ok, rep
