"""Failure points of the flush: ledger down (no offsets committed, nothing lost, anchoring resumes) and a
crash between the DuckDB commit and the anchor (the next start anchors the stored batch)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from aiokafka import TopicPartition

from ingest.ledger.base import MemoryLedger, load_or_create_key
from ingest.ledger.local import LocalLedger
from ingest.pipeline.consumer import BatchConsumer
from ingest.storage.registry import Registry
from ingest.storage.store import FileStore, Store
from tests.integration.harness import publish

pytestmark = pytest.mark.integration


def _unanchored(store: Store) -> list[tuple[int, bytes]]:
    """Read through a separate cursor: the consumer may be writing on the store's connection in a thread."""
    rows = (
        store.con.cursor()
        .execute(
            "SELECT b.batch_no, b.root FROM batches b LEFT JOIN anchors a USING (batch_no) WHERE a.batch_no IS NULL"
        )
        .fetchall()
    )
    return [(int(n), bytes(r)) for n, r in rows]


async def _committed(bc: BatchConsumer, topic: str, partitions: int) -> int:
    assert bc.consumer is not None
    total = 0
    for p in range(partitions):
        off = await bc.consumer.committed(TopicPartition(topic, p))
        total += off or 0
    return total


def test_ledger_down_holds_offsets_then_resumes(env) -> None:  # type: ignore[no-untyped-def]
    cfg = env.cfg
    env.start("bridge")
    store = FileStore(cfg.path(cfg.store.path))
    reg = Registry(cfg.path(cfg.registry.path))
    ledger = MemoryLedger()
    ledger.down = True
    bc = BatchConsumer(
        cfg, store=store, ledger=ledger, registry=reg, status_path=cfg.path("ingest-status.json")
    )

    async def scenario() -> None:
        task = asyncio.create_task(bc.run())
        n = await asyncio.to_thread(publish, cfg, 3, 300, 21, reg)
        # The first batch is written to DuckDB, then the ledger refuses it: it must stay uncommitted.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _unanchored(store):
            await asyncio.sleep(0.1)
        assert _unanchored(store), "a batch should be stored and waiting for the ledger"
        await asyncio.sleep(2.5)  # several retries
        assert await _committed(bc, cfg.kafka.blocks_topic, cfg.kafka.partitions) == 0
        assert ledger.receipt(0) is None
        ledger.down = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and bc.counts["records"] < n:
            await asyncio.sleep(0.1)
        assert bc.counts["records"] == n
        assert _unanchored(store) == []
        assert await _committed(bc, cfg.kafka.blocks_topic, cfg.kafka.partitions) > 0
        bc.stop()
        await asyncio.wait_for(task, 30)

    try:
        asyncio.run(scenario())
        counts = store.counts()
        assert counts["anchored"] == counts["batches"] > 0
        assert counts["duplicates"] == 0 and counts["rejections"] == 0
        for batch_no, root in store.con.execute("SELECT batch_no, root FROM batches").fetchall():
            r = ledger.receipt(int(batch_no))
            assert r is not None and r.root == bytes(root)
    finally:
        store.close()
        reg.close()


def test_batch_stored_but_not_anchored_is_anchored_on_restart(env) -> None:  # type: ignore[no-untyped-def]
    cfg = env.cfg
    env.start("bridge")
    store = FileStore(cfg.path(cfg.store.path))
    reg = Registry(cfg.path(cfg.registry.path))
    ledger = LocalLedger(cfg.path(cfg.ledger.path), load_or_create_key(cfg.path(cfg.ledger.key_path)))

    class Crash(Exception):
        pass

    class CrashAfterStore(MemoryLedger):
        def anchor(self, batch_no: int, root: bytes, blocks: int):  # type: ignore[no-untyped-def]
            raise Crash("simulated crash between the DuckDB commit and the anchor")

    async def first_run() -> int:
        bc = BatchConsumer(
            cfg,
            store=store,
            ledger=CrashAfterStore(),
            registry=reg,
            status_path=cfg.path("ingest-status.json"),
        )
        task = asyncio.create_task(bc.run())
        n = await asyncio.to_thread(publish, cfg, 2, 200, 31, reg)
        with contextlib.suppress(Crash):
            await asyncio.wait_for(task, 60)
        return n

    async def second_run(n: int) -> None:
        bc = BatchConsumer(
            cfg, store=store, ledger=ledger, registry=reg, status_path=cfg.path("ingest-status.json")
        )
        task = asyncio.create_task(bc.run())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (bc.counts["records"] < n or _unanchored(store)):
            await asyncio.sleep(0.1)
        bc.stop()
        await asyncio.wait_for(task, 30)

    try:
        n = asyncio.run(first_run())
        stranded = store.unanchored()
        assert stranded, "the simulated crash must leave a stored, unanchored batch"
        asyncio.run(second_run(n))
        counts = store.counts()
        assert counts["records"] == n
        assert counts["anchored"] == counts["batches"]
        # The stranded batch's Kafka positions were stored with it: the restart resumed after it,
        # so nothing was delivered again (Kafka's committed offsets were still before it).
        assert counts["duplicates"] == 0
        roots = ledger.roots()
        for batch_no, root, _blocks in stranded:
            assert roots[batch_no] == root
        assert ledger.verify().ok
    finally:
        store.close()
        reg.close()
