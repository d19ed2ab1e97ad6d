"""A Kafka-protocol broker whose log goes backwards (here: the blocks topic deleted and created again
while the consumer runs, as a broker that lost its data does) raises an alarm within one poll, which
the status file, the store and `telematics gaps` show; ingestion goes on."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devtools.stack import ensure_topics
from ingest.storage.registry import Registry
from ingest.storage.store import FileStore
from tests.integration.harness import publish, run_cli, wait_until

pytestmark = pytest.mark.integration


async def _recreate(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        for _ in range(50):
            if topic not in set(await admin.list_topics()):
                break
            await asyncio.sleep(0.1)
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


def test_broker_log_reset_raises_an_alarm_and_ingestion_goes_on(env) -> None:  # type: ignore[no-untyped-def]
    cfg = env.cfg
    env.start("consumer")
    env.start("bridge")
    reg = Registry(cfg.path(cfg.registry.path))
    n1 = publish(cfg, 4, 300, 41, reg)
    wait_until(cfg, lambda s: s["records"] >= n1, what="first part stored")

    asyncio.run(_recreate(cfg.kafka.bootstrap, cfg.kafka.blocks_topic, cfg.kafka.partitions))
    asyncio.run(ensure_topics(cfg, time.monotonic() + 30))
    n2 = publish(cfg, 4, 100, 41, reg)  # the same vehicles go on
    st = wait_until(
        cfg,
        lambda s: s["records"] >= n1 + n2 and s["broker_resets"] >= 1,
        what="alarm raised and second part stored",
    )
    assert st["alarms"] and st["alarms"][-1]["kind"] in ("offsets_regressed", "log_truncated")
    for p in env.procs:
        assert p.stop() == 0
    reg.close()
    assert st["records"] == n1 + n2

    s = FileStore(cfg.path(cfg.store.path), read_only=True)
    try:
        rows = s.con.execute("SELECT DISTINCT kafka_topic, kafka_partition FROM broker_resets").fetchall()
    finally:
        s.close()
    assert rows and {t for t, _ in rows} == {cfg.kafka.blocks_topic}
    out = run_cli(env.config_path, "gaps", check=True).stdout
    assert "ALARM: the broker's log of" in out and "went backwards" in out
