"""One device flooding its topic beside an honest fleet: its excess is counted in quota markers and
dead-lettered as quota_exceeded, every frame it sent is accounted for, honest data is all stored."""

from __future__ import annotations

import asyncio
import os
import time

import msgspec
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ingest.pipeline.bridge import refused_count
from ingest.storage.registry import Registry
from ingest.storage.store import FileStore
from ingest.wiring import read_status
from schemas.transport import blocks_topic
from tests.integration.harness import IngestProc, publish, wait_until, write_config
from tests.integration.test_rejections import read_dead_letters

pytestmark = pytest.mark.integration

FLOOD = 3000
RATE = 10.0  # far below any rate the bridge reads a flood at, even on a loaded machine


def test_a_flooding_device_is_held_to_its_quota_and_every_frame_is_accounted(env) -> None:  # type: ignore[no-untyped-def]
    bridge = msgspec.structs.replace(
        env.cfg.bridge, device_quota_msgs_per_s=RATE, device_quota_burst_s=1.0, quota_report_ms=100
    )
    cfg = msgspec.structs.replace(env.cfg, bridge=bridge)
    path = write_config(cfg, env.config_path.with_name("quota.toml"))
    procs = [IngestProc(cfg, path, "consumer").start(), IngestProc(cfg, path, "bridge").start()]
    env.procs.extend(procs)

    flooder = "f" * 32
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.connect(cfg.mqtt.host, cfg.mqtt.port)
    c.loop_start()
    t0 = time.monotonic()
    infos = [c.publish(blocks_topic(flooder), b"\xc1" + os.urandom(200), qos=1) for _ in range(FLOOD)]
    reg = Registry(cfg.path(cfg.registry.path))
    n = publish(cfg, 4, 300, 51, reg)  # the honest fleet, while the flood is queued
    for i in infos:
        i.wait_for_publish(30)
    c.loop_stop()
    c.disconnect()
    reg.close()

    wait_until(cfg, lambda s: s["records"] >= n, what="honest records stored")
    last, stable = -1, 0
    while stable < 20:  # the flood is accounted when the rejections stop growing for 2 s
        now = (read_status(cfg) or {}).get("rejections", 0)
        stable = stable + 1 if now == last else 0
        last = now
        time.sleep(0.1)
    elapsed = time.monotonic() - t0
    for p in procs:
        assert p.stop() == 0
    s = FileStore(cfg.path(cfg.store.path), read_only=True)
    try:
        forwarded = s.con.execute(
            "SELECT count(*) FROM rejections WHERE device_id = ? AND reason = 'decode_error'", [flooder]
        ).fetchone()[0]  # type: ignore[index]
        details = s.con.execute(
            "SELECT detail FROM rejections WHERE device_id = ? AND reason = 'quota_exceeded'", [flooder]
        ).fetchall()
        records = s.counts()["records"]
        (others,) = s.con.execute(
            "SELECT count(*) FROM rejections WHERE device_id <> ?", [flooder]
        ).fetchone() or (0,)
    finally:
        s.close()
    refused = sum(refused_count(d) for (d,) in details)
    assert records == n and others == 0  # the honest fleet: everything stored, nothing refused
    assert refused > 0 and forwarded > 0
    assert forwarded + refused == FLOOD  # every frame: forwarded and rejected, or counted by a marker
    assert forwarded <= RATE * (1.0 + elapsed)  # the burst plus the rate over the run, at most
    letters = asyncio.run(read_dead_letters(cfg.kafka.bootstrap, cfg.kafka.deadletter_topic, len(details)))
    quota = [h for h, _ in letters if h["vt-reason"] == b"quota_exceeded"]
    assert len(quota) == len(details)
