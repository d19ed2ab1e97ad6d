"""Every hostile frame kind gets exactly the outcome the campaign expects, checked without brokers
(Processor + a real DuckDB store), so the integration campaign's accounting rests on known answers."""

from __future__ import annotations

import random
from pathlib import Path

from ingest.pipeline.processor import Processor
from ingest.pipeline.processor import RawMessage as Msg
from ingest.storage.registry import Registry
from ingest.storage.store import FileStore
from simulators.hostile import REFUSED_AT_BROKER, Attacker, Frame, campaign


def test_each_frame_kind_has_its_expected_outcome(tmp_path: Path) -> None:
    store, reg = FileStore(tmp_path / "s.duckdb"), Registry(tmp_path / "r.sqlite")
    try:
        attackers = [Attacker(), Attacker()]
        for a in attackers:
            reg.add(a.key.public_key)
        proc = Processor(store, reg, max_block_bytes=4096)
        frames = list(
            campaign(attackers, 2, random.Random(7), broker_max=9216, bridge_max=8192, consumer_max=4096)
        )
        kinds = {f.kind for f in frames}
        assert len(kinds) >= 38
        for off, f in enumerate(frames):
            if f.expect == REFUSED_AT_BROKER:  # never reaches the pipeline (the campaign checks the broker)
                assert len(f.payload) > 9216
                continue
            _feed(proc, off, f)
            got = _outcome(proc, off)
            assert got == f.expect, (f.kind, got, proc.pending.rejections[-1:])
            store.write_batch(proc.build_rows(store.next_batch_no()))
            proc.settled()
            proc.pending = type(proc.pending)()
    finally:
        store.close()
        reg.close()


def _feed(proc: Processor, off: int, f: Frame) -> None:
    dev = f.topic.split("/")[1].encode()
    proc.process_all([Msg("blocks", 0, off, dev, f.payload, [("mqtt-topic", f.topic.encode())])])


def _outcome(proc: Processor, off: int) -> str:
    p = proc.pending
    if p.rejections and p.rejections[-1].offset == off:
        return str(p.rejections[-1].reason)
    if p.duplicates and p.duplicates[-1].kafka_offset == off:
        return "duplicate"
    if p.blocks and p.blocks[-1].kafka_offset == off:
        return "stored"
    return "nothing"
