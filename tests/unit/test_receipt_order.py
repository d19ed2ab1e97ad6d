"""Step 5 of the durability order (ingest/pipeline/batch.py): each batch's ledger receipt is written
by the next batch's store transaction, the last one on its own; a failed write keeps the receipts it
carried, so no stored, anchored batch is left without its receipt."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.ledger.local import LocalLedger
from ingest.storage.registry import Registry
from ingest.storage.store import BatchRows, FileStore, StoreError
from schemas.crypto import SigningKey
from simulators.offline import ingest_offline, make_fleet


class WatchedStore(FileStore):
    """A real DuckDB-file store that notes what each batch carried, and can fail one write."""

    def __init__(self, path: Path, fail_write: int = 0) -> None:
        super().__init__(path)
        self.carried: list[list[int]] = []
        self.fail_write = fail_write

    def write_batch(self, b: BatchRows) -> None:
        self.carried.append([r.batch_no for r in b.receipts])
        if len(self.carried) == self.fail_write:
            raise StoreError("the disk is full")
        super().write_batch(b)


def _run(tmp: Path, store: WatchedStore) -> LocalLedger:
    ledger = LocalLedger(tmp / "ledger.jsonl", SigningKey.generate())
    reg = Registry(tmp / "registry.sqlite")
    try:
        ingest_offline(
            store,
            reg,
            ledger,
            make_fleet(3, seed=5),
            blocks_per_vehicle=4,
            block_records=10,
            batch_records=30,
        )
    finally:
        reg.close()
    return ledger


def _anchors(store: FileStore) -> dict[int, bytes]:
    return {
        int(n): bytes(h) for n, h in store.con.execute("SELECT batch_no, entry_hash FROM anchors").fetchall()
    }


def test_each_batch_carries_the_receipt_of_the_one_before(tmp_path: Path) -> None:
    store = WatchedStore(tmp_path / "t.duckdb")
    ledger = _run(tmp_path, store)
    batches = [int(n) for (n,) in store.con.execute("SELECT batch_no FROM batches ORDER BY 1").fetchall()]
    assert len(batches) == 4
    assert store.carried == [[], *[[n] for n in batches[:-1]]]
    # the last batch's receipt was written on its own; every receipt is the ledger's
    anchors = _anchors(store)
    assert sorted(anchors) == batches and store.unanchored() == []
    for n, h in anchors.items():
        r = ledger.receipt(n)
        assert r is not None and r.entry_hash == h
    # recording a receipt that is stored already adds nothing (the DuckDB file's key)
    store.record_anchors([r for n in batches if (r := ledger.receipt(n)) is not None])
    assert store.con.execute("SELECT count(*) FROM anchors").fetchone() == (len(batches),)


def test_a_failed_write_keeps_the_receipts_it_carried(tmp_path: Path) -> None:
    store = WatchedStore(tmp_path / "t.duckdb", fail_write=3)
    with pytest.raises(StoreError, match="disk is full"):
        _run(tmp_path, store)
    # two batches were stored and anchored; the third write (carrying the second's receipt) failed
    batches = [int(n) for (n,) in store.con.execute("SELECT batch_no FROM batches ORDER BY 1").fetchall()]
    assert len(batches) == 2 and store.carried[2] == [batches[1]]
    assert sorted(_anchors(store)) == batches and store.unanchored() == []
