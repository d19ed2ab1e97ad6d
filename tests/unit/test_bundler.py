"""The bridge's Bundler (ingest/pipeline/bridge.py): which messages share a Kafka record, in which
partition, and when a bundle closes. Kafka is a recording stand-in here (the integration tests run
the bridge against the real broker); the bundles it records are decoded with the spec's codec."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from ingest.pipeline.bridge import ENTRY_OVERHEAD, BridgeStats, Bundler, entry_size
from schemas.transport import BUNDLE_HEADER, blocks_topic, decode_bundle


class Recorder:
    """Records each produce call; its futures complete at once, as Kafka's acknowledgements."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, topic: str, value: bytes, **kw: Any) -> asyncio.Future[object]:
        self.sent.append({"topic": topic, "value": value, **kw})
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


DEVICES = [f"{i:032x}" for i in range(40)]


def test_a_burst_goes_out_as_one_bundle_per_partition_in_arrival_order() -> None:
    async def run() -> tuple[Recorder, list[asyncio.Future[object]]]:
        rec, stats = Recorder(), BridgeStats()
        b = Bundler("blocks", [0, 1, 2, 3], max_messages=1000, max_bytes=1 << 20)
        futs = []
        for n in range(3):
            for d in DEVICES:
                futs.append(await b.add(rec, d.encode(), blocks_topic(d), f"{d}/{n}".encode(), n == 2, stats))  # type: ignore[arg-type]
        await b.flush(rec, stats)  # type: ignore[arg-type]
        assert stats.bundles == len(rec.sent)
        return rec, futs

    rec, futs = asyncio.run(run())
    all_parts = [0, 1, 2, 3]
    want = {
        p: [d for d in DEVICES if DefaultPartitioner()(d.encode(), all_parts, all_parts) == p]
        for p in all_parts
    }
    assert {s["partition"] for s in rec.sent} == {p for p, ds in want.items() if ds}
    for s in rec.sent:
        assert s["headers"] == [(BUNDLE_HEADER, b"1")] and s.get("key") is None
        entries = decode_bundle(s["value"])
        # Each device's three messages, in the order they arrived, all in its key's partition.
        assert [e.payload for e in entries] == [
            f"{d}/{n}".encode() for n in range(3) for d in want[s["partition"]]
        ]
        assert [e.historical for e in entries] == [n == 2 for n in range(3) for _ in want[s["partition"]]]
    assert all(f.done() for f in futs)


def test_a_bundle_closes_at_its_message_and_byte_limits() -> None:
    d = DEVICES[0]
    topic, payload = blocks_topic(d), bytes(1000)
    one = entry_size(topic, payload)
    assert one == 1000 + 48 + ENTRY_OVERHEAD

    async def run(max_messages: int, max_bytes: int) -> list[int]:
        rec, stats = Recorder(), BridgeStats()
        b = Bundler("blocks", [0], max_messages=max_messages, max_bytes=max_bytes)
        for _ in range(10):
            await b.add(rec, d.encode(), topic, payload, False, stats)  # type: ignore[arg-type]
        await b.flush(rec, stats)  # type: ignore[arg-type]
        sizes = [len(decode_bundle(s["value"])) for s in rec.sent]
        assert all(len(s["value"]) <= max_bytes for s in rec.sent)
        return sizes

    assert asyncio.run(run(4, 1 << 20)) == [4, 4, 2]
    assert asyncio.run(run(1000, 3 * one)) == [3, 3, 3, 1]
    assert asyncio.run(run(1, 1 << 20)) == [1] * 10
