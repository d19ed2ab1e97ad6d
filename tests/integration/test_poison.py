"""A registered device sending values the store cannot hold, beside honest devices, on the real stack:
the poison is dead-lettered with a reason, every honest record is stored, the consumer never restarts
and never reports itself held."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from edge_agent.publisher import MqttPublisher
from ingest.storage.registry import Registry
from ingest.storage.store import FileStore
from schemas.records import MAX_TIMESTAMP_NS
from schemas.transport import blocks_topic, state_topic
from simulators.hostile import T0, drive
from tests.integration.harness import wait_until
from tests.integration.test_rejections import read_dead_letters
from tests.unit.test_poison import Dev, _strict_store

pytestmark = pytest.mark.integration


def test_poison_is_dead_lettered_and_honest_data_flows(env) -> None:  # type: ignore[no-untyped-def]
    cfg = env.cfg
    # Speeds of 150 m/s or more are schema-valid but this store refuses them (a real CHECK constraint
    # standing in for any value the store cannot hold): only bisection can find such a block.
    _strict_store(cfg.path(cfg.store.path)).close()
    consumer = env.start("consumer")
    env.start("bridge")
    honest, poison = Dev(), Dev()
    reg = Registry(cfg.path(cfg.registry.path))
    reg.add(honest.key.public_key)
    reg.add(poison.key.public_key)
    reg.close()

    pub = MqttPublisher(cfg.mqtt, "poison-test")
    pub.connect()
    want = 0
    for i in range(30):
        pub.publish(blocks_topic(honest.id), honest.block([drive(T0 + 10 * i + j) for j in range(5)]))
        want += 5
        if i == 5:  # a record stamped with the store's 'infinity'
            pub.publish(
                blocks_topic(poison.id),
                poison.block([drive(T0 + i), drive(2**63 - 1)], t_last=MAX_TIMESTAMP_NS),
            )
        if i == 8:  # a session message stamped with it
            pub.publish(state_topic(poison.id), poison.session(ts_ns=2**63 - 1))
        if i in (10, 20):  # schema-valid, refused by the store
            pub.publish(blocks_topic(poison.id), poison.block([drive(T0 + i, 180.0), drive(T0 + i + 1)]))
        if i == 15:  # the poison device's honest block between its poisoned ones
            pub.publish(blocks_topic(poison.id), poison.block([drive(T0 + i), drive(T0 + i + 1)]))
            want += 2
    assert pub.close(30)

    st = wait_until(
        cfg,
        lambda s: s["records"] >= want and s["rejections"] >= 4,
        what="honest records stored and the poison dead-lettered",
    )
    assert st["pid"] == consumer.proc.pid and st["stalled"] is None
    for p in env.procs:
        assert p.stop() == 0
    assert st["records"] == want

    expected = Counter({"bad_record": 1, "decode_error": 1, "unstorable": 2})
    s = FileStore(cfg.path(cfg.store.path), read_only=True)
    try:
        got = Counter(r for (r,) in s.con.execute("SELECT reason FROM rejections").fetchall())
        assert got == expected
        (n,) = s.con.execute("SELECT count(*) FROM blocks WHERE device_id = ?", [honest.id]).fetchone() or (
            0,
        )
        assert n == 30
        seqs = s.con.execute(
            "SELECT seq FROM blocks WHERE device_id = ? ORDER BY seq", [poison.id]
        ).fetchall()
        assert seqs == [(2,)]  # 0 bad_record, 1 and 3 unstorable; 2 stored
    finally:
        s.close()
    letters = asyncio.run(read_dead_letters(cfg.kafka.bootstrap, cfg.kafka.deadletter_topic, 4))
    assert Counter(h["vt-reason"].decode() for h, _ in letters) == expected
    assert all(b"CHECK" in h["vt-detail"] for h, _ in letters if h["vt-reason"] == b"unstorable")
