"""(b) Bad input lands in the dead-letter topic with the right reason; duplicates are counted, never stored twice;
nothing good is lost."""

from __future__ import annotations

import asyncio
import os
from collections import Counter

import pytest
from aiokafka import AIOKafkaConsumer

from edge_agent.publisher import MqttPublisher
from edge_agent.sources.vehicle import VehicleModel
from ingest.storage.registry import Registry
from ingest.storage.store import FileStore
from schemas.block import Block, build_block, encode_envelope, encode_record
from schemas.crypto import ZERO_HASH, SigningKey, device_id_for
from schemas.transport import blocks_topic
from tests.integration.checks import recheck
from tests.integration.harness import wait_until

pytestmark = pytest.mark.integration


class Device:
    def __init__(self, seed: int) -> None:
        self.key = SigningKey.generate()
        self.id = device_id_for(self.key.public_key)
        self.model = VehicleModel(seed, start_ns=1_700_000_000_000_000_000)
        self.seq = 0
        self.head = ZERO_HASH

    def records(self, n: int) -> list[bytes]:
        out: list[bytes] = []
        while len(out) < n:
            out += [encode_record(r) for r in self.model.step()]
        return out[:n]

    def block(
        self, records: list[bytes], *, seq: int | None = None, prev: bytes | None = None, advance: bool = True
    ) -> Block:
        from schemas.block import decode_record

        ts = [decode_record(r).ts_ns for r in records]
        b = build_block(
            self.key,
            device_id=self.id,
            boot=1,
            seq=self.seq if seq is None else seq,
            prev=self.head if prev is None else prev,
            records=records,
            t_first=min(ts),
            t_last=max(ts),
            seed=os.urandom(32),
        )
        if advance:
            self.seq += 1
            self.head = b.hash
        return b


def flip_bit_in_record(block: Block, record: int, bit: int) -> bytes:
    env = block.envelope()
    recs = list(env.records)
    r = bytearray(recs[record])
    r[bit // 8] ^= 1 << (bit % 8)
    recs[record] = bytes(r)
    from schemas.block import Envelope

    return encode_envelope(Envelope(env.v, env.key_id, env.header, env.sig, env.seed, recs))


async def read_dead_letters(bootstrap: str, topic: str, n: int) -> list[tuple[dict[str, bytes], bytes]]:
    c = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await c.start()
    out: list[tuple[dict[str, bytes], bytes]] = []
    try:
        for _ in range(100):
            batch = await c.getmany(timeout_ms=200)
            for msgs in batch.values():
                out += [(dict(m.headers), m.value) for m in msgs]
            if len(out) >= n:
                break
    finally:
        await c.stop()
    return out


def test_bad_input_is_dead_lettered_and_good_input_is_kept(env) -> None:  # type: ignore[no-untyped-def]
    cfg = env.cfg
    env.start("consumer")
    env.start("bridge")
    good, revoked, stranger = Device(1), Device(2), Device(3)
    reg = Registry(cfg.path(cfg.registry.path))
    reg.add(good.key.public_key)
    reg.add(revoked.key.public_key)

    pub = MqttPublisher(cfg.mqtt, "test-publisher")
    pub.connect()
    sent_good: list[Block] = []

    def send(dev: Device, payload: bytes) -> None:
        pub.publish(blocks_topic(dev.id), payload)

    def send_good(n: int = 20) -> Block:
        b = good.block(good.records(n))
        send(good, b.to_wire())
        sent_good.append(b)
        return b

    send_good()  # seq 0
    b1 = send_good()  # seq 1
    tampered = good.block(good.records(20), advance=False)  # would be seq 2
    send(good, flip_bit_in_record(tampered, record=7, bit=93))  # merkle_mismatch
    send(stranger, stranger.block(stranger.records(10)).to_wire())  # unknown_key
    reg.revoke(revoked.id, at=1_700_000_000_000_000_000)  # trusted no longer from the model's start
    send(revoked, revoked.block(revoked.records(10)).to_wire())  # revoked_key
    conflict = good.block(good.records(20), seq=1, prev=sent_good[0].hash, advance=False)
    assert conflict.hash != b1.hash
    send(good, conflict.to_wire())  # seq_conflict
    send(good, os.urandom(16) + b"\xc1" * (cfg.bridge.max_payload_bytes + 10))  # oversized (bridge marker)
    send(good, b"\xc1 this is not MessagePack")  # decode_error
    send(good, b1.to_wire())  # replay: duplicate
    send_good()  # seq 2
    send_good()  # seq 3
    assert pub.close(30)
    reg.close()

    want_records = sum(b.header.count for b in sent_good)
    st = wait_until(
        cfg,
        lambda s: s["records"] >= want_records and s["rejections"] >= 6 and s["duplicates"] >= 1,
        what="good blocks stored and rejections recorded",
    )
    for p in env.procs:
        assert p.stop() == 0
    assert st["records"] == want_records
    assert st["duplicates"] == 1

    expected = Counter(
        {
            "merkle_mismatch": 1,
            "unknown_key": 1,
            "revoked_key": 1,
            "seq_conflict": 1,
            "oversized": 1,
            "decode_error": 1,
        }
    )
    s = FileStore(cfg.path(cfg.store.path), read_only=True)
    try:
        got = Counter(r for (r,) in s.con.execute("SELECT reason FROM rejections").fetchall())
        assert got == expected
        stored = [bytes(h) for (h,) in s.con.execute("SELECT block_hash FROM blocks ORDER BY seq").fetchall()]
        assert stored == [b.hash for b in sent_good]
        dup = s.con.execute("SELECT device_id, seq, block_hash FROM duplicates").fetchall()
        assert [(d, q, bytes(h)) for d, q, h in dup] == [(good.id, 1, b1.hash)]
    finally:
        s.close()

    letters = asyncio.run(read_dead_letters(cfg.kafka.bootstrap, cfg.kafka.deadletter_topic, 6))
    assert Counter(h["vt-reason"].decode() for h, _ in letters) == expected
    for h, value in letters:
        assert h["vt-detail"], "every dead letter explains itself"
        if h["vt-reason"] == b"oversized":
            assert int(h["vt-size"]) == cfg.bridge.max_payload_bytes + 26
            assert len(value) <= 1024

    summary = recheck(cfg.path(cfg.store.path), cfg.path(cfg.registry.path), cfg.path(cfg.ledger.path))
    assert summary["records"] == want_records and summary["blocks"] == 4
