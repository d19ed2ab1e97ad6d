"""The adversarial campaign, CI size: hostile devices send every kind of malformed or malicious frame
(simulators/hostile.py) beside an honest fleet, through mosquitto, the bridge, Kafka and the consumer.
Every frame is accounted for (stored, dead-lettered with its reason, counted as a duplicate, or
refused by mosquitto with "packet too large" before it took any memory), the
honest fleet's records are all stored exactly once, and no service restarts."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections import Counter

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devtools.stack import Stack
from ingest.storage.registry import Registry
from ingest.storage.store import FileStore
from simulators.hostile import REFUSED_AT_BROKER, Attacker, campaign, publish_refused
from tests.integration.checks import recheck
from tests.integration.harness import publish, wait_until
from tests.integration.test_rejections import read_dead_letters

pytestmark = pytest.mark.integration

ROUNDS = 3


def test_every_hostile_frame_is_accounted_and_honest_data_is_whole(env, stack_cfg) -> None:  # type: ignore[no-untyped-def]
    cfg = env.cfg
    consumer, bridge = env.start("consumer"), env.start("bridge")
    pids = (consumer.proc.pid, bridge.proc.pid)
    attackers = [Attacker(), Attacker()]
    reg = Registry(cfg.path(cfg.registry.path))
    for a in attackers:
        reg.add(a.key.public_key)
    frames = list(
        campaign(
            attackers,
            ROUNDS,
            random.Random(11),
            broker_max=cfg.bridge.max_packet_bytes,
            bridge_max=cfg.bridge.max_payload_bytes,
            consumer_max=cfg.ingest.max_block_bytes,
        )
    )
    expect = Counter(f.expect for f in frames)

    honest: list[int] = []
    t = threading.Thread(target=lambda: honest.append(publish_fleet(cfg, reg)))
    t.start()
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(100)
    c.connect(cfg.mqtt.host, cfg.mqtt.port)
    c.loop_start()
    refused: dict[str, bool] = {}
    for f in frames:
        if f.expect == REFUSED_AT_BROKER:
            cid = f"oversize-{uuid.uuid4().hex}"
            refused[cid] = publish_refused(cfg.mqtt.host, cfg.mqtt.port, f, cid)
        else:
            c.publish(f.topic, f.payload, qos=1).wait_for_publish(30)
    c.loop_stop()
    c.disconnect()
    t.join(120)
    reg.close()
    assert honest, "the honest fleet did not finish"
    n_honest = honest[0] + sum(b.header.count for a in attackers for b in a.stored)

    # the broker refused every frame above its packet limit without acknowledging it, and says so
    assert len(refused) == expect.pop(REFUSED_AT_BROKER) and all(refused.values())
    log = (Stack(stack_cfg).state / "mosquitto.log").read_text()
    assert all(f"Client {cid} disconnected due to oversize packet" in log for cid in refused)
    rejected = sum(v for k, v in expect.items() if k not in ("stored", "duplicate"))
    st = wait_until(
        cfg,
        lambda s: (
            s["records"] >= n_honest
            and s["rejections"] >= rejected
            and s["duplicates"] >= expect["duplicate"]
        ),
        what="every frame accounted for",
    )
    assert (st["pid"], st["stalled"]) == (pids[0], None)
    assert "gap_detections" in st and "gaps" not in st  # detections, not a loss signal
    for p in env.procs:
        assert p.stop() == 0
    assert bridge.proc.pid == pids[1] and "Traceback" not in consumer.log.read_text() + bridge.log.read_text()

    s = FileStore(cfg.path(cfg.store.path), read_only=True)
    try:
        got = Counter(r for (r,) in s.con.execute("SELECT reason FROM rejections").fetchall())
        (dups,) = s.con.execute("SELECT count(*) FROM duplicates").fetchone() or (0,)
    finally:
        s.close()
    assert got == Counter({k: v for k, v in expect.items() if k not in ("stored", "duplicate")})
    assert dups == expect["duplicate"]
    summary = recheck(cfg.path(cfg.store.path), cfg.path(cfg.registry.path), cfg.path(cfg.ledger.path))
    assert summary["records"] == n_honest  # every honest record once, every signature re-verified
    letters = asyncio.run(read_dead_letters(cfg.kafka.bootstrap, cfg.kafka.deadletter_topic, rejected))
    assert Counter(h["vt-reason"].decode() for h, _ in letters) == got


def publish_fleet(cfg, reg: Registry) -> int:  # type: ignore[no-untyped-def]
    return publish(cfg, 4, 400, 71, reg)
