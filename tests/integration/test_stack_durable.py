"""The local stack is durable by default: what the brokers acknowledged survives a SIGKILL of any of
its services, and ``Stack.up()`` starts just the dead one again, on the same data.

These tests kill and restart services, so they run on a stack of their own (same code and port
choice as the session-wide one), not on the shared one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devtools.stack import Stack
from ingest.config import Config
from tests.integration.conftest import stack_config
from tests.integration.harness import run_cli, write_config

pytestmark = pytest.mark.integration

N = 2000  # acknowledged messages per test
PARTITIONS = 2


@pytest.fixture(scope="module")
def durable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Config, Stack]]:
    cfg = stack_config(tmp_path_factory.mktemp("durable"))
    assert cfg.stack.kafka_storage == "s3", "durable is the default"
    stack = Stack(cfg)
    stack.up()
    try:
        yield cfg, stack
    finally:
        stack.down()


def _pids(stack: Stack) -> dict[str, int | None]:
    return {s.name: s.pid for s in stack.status()}


def _value(i: int) -> bytes:
    return f"message {i:06d} ".encode() + bytes(200)


# -- Kafka helpers ------------------------------------------------------------------------------------
async def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, lo: int, hi: int) -> None:
    """Send messages lo..hi-1 with acks=all and wait until every one is acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futs = [await producer.send(topic, _value(i), key=str(i).encode()) for i in range(lo, hi)]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def _consume_and_commit(bootstrap: str, topic: str, group: str, at_least: int) -> dict[int, int]:
    """Consume at least ``at_least`` messages in ``group``, commit, return the committed offsets."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    try:
        seen = 0
        deadline = time.monotonic() + 20
        while seen < at_least:
            assert time.monotonic() < deadline, f"consumed {seen}/{at_least}"
            batches = await consumer.getmany(timeout_ms=500, max_records=200)
            seen += sum(len(v) for v in batches.values())
        await consumer.commit()
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp.partition: (await consumer.committed(tp)) or 0 for tp in tps}
    finally:
        await consumer.stop()


async def _committed(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        got = await admin.list_consumer_group_offsets(group, partitions=tps)
        return {tp.partition: meta.offset for tp, meta in got.items()}
    finally:
        await admin.close()


async def _read_all(bootstrap: str, topic: str, expect: int) -> list[bytes]:
    """Every message of ``topic`` from the beginning (no group), once ``expect`` are there."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(out) < expect and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            out += [m.value for msgs in batches.values() for m in msgs if m.value is not None]
        return out
    finally:
        await consumer.stop()


def _check_everything_readable(cfg: Config, topic: str, n: int) -> None:
    got = asyncio.run(_read_all(cfg.kafka.bootstrap, topic, n))
    assert len(got) == n, f"{len(got)}/{n} acknowledged messages readable"
    assert sorted(got) == [_value(i) for i in range(n)], "each acknowledged message once, unchanged"


# -- Kafka-protocol broker and S3 server ---------------------------------------------------------------
@pytest.mark.parametrize("victim", ["tansu", "seaweedfs"])
def test_acked_messages_and_group_offsets_survive_sigkill(durable: tuple[Config, Stack], victim: str) -> None:
    cfg, stack = durable
    boot = cfg.kafka.bootstrap
    topic, group = f"durable-{victim}-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_topic(boot, topic))
    asyncio.run(_produce(boot, topic, 0, N))
    committed = asyncio.run(_consume_and_commit(boot, topic, group, N // 3))
    assert N // 3 <= sum(committed.values()) <= N, committed

    before = _pids(stack)
    stack.kill(victim)
    assert _pids(stack)[victim] is None
    stack.up()
    after = _pids(stack)
    assert after[victim] not in (None, before[victim]), "the killed service was started again"
    assert {k: v for k, v in after.items() if k != victim} == {
        k: v for k, v in before.items() if k != victim
    }, "and nothing else was restarted"

    _check_everything_readable(cfg, topic, N)
    assert asyncio.run(_committed(boot, topic, group)) == committed, "the group's offsets survived"
    # The log goes on after the restart: new messages get new offsets, nothing is overwritten.
    asyncio.run(_produce(boot, topic, N, N + 100))
    _check_everything_readable(cfg, topic, N + 100)

    if victim == "seaweedfs":
        # The broker above kept running; now read everything through a fresh one, i.e. from what the
        # restarted S3 server has on disk.
        stack.kill("tansu")
        stack.up()
        _check_everything_readable(cfg, topic, N + 100)
        assert asyncio.run(_committed(boot, topic, group)) == committed


def test_up_right_after_a_graceful_stop_starts_the_service_again(durable: tuple[Config, Stack]) -> None:
    """SIGTERM (a graceful stop from outside), then `up` at once: the service is running again,
    not taken for alive while it shuts down."""
    cfg, stack = durable
    topic = f"term-{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_topic(cfg.kafka.bootstrap, topic))
    asyncio.run(_produce(cfg.kafka.bootstrap, topic, 0, 200))
    for name in ("tansu", "mosquitto", "seaweedfs"):
        old = _pids(stack)[name]
        assert old is not None
        os.kill(old, signal.SIGTERM)
        stack.up()  # returns once the restarted service answered its health probe
        deadline = time.monotonic() + 10
        while True:  # status() probes again: on a loaded box one probe may time out
            st = {s.name: s for s in stack.status()}[name]
            if st.healthy or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert st.healthy and st.pid not in (None, old), f"{name}: {st}"
    _check_everything_readable(cfg, topic, 200)


def test_a_stale_pid_file_is_removed_and_its_process_left_alone(tmp_path: Path) -> None:
    """A pid file whose pid now belongs to another program: nothing is signalled, the file goes."""
    stack = Stack(stack_config(tmp_path))  # nothing started
    stack.state.mkdir(parents=True)
    other = subprocess.Popen(["sleep", "60"])
    try:
        for action in ("down", "stop", "kill"):
            for name in ("seaweedfs", "tansu", "mosquitto"):
                # the pid alone (older pid files) and pid + argv (another argv than this process runs)
                legacy = name != "tansu"
                text = (
                    f"{other.pid}\n"
                    if legacy
                    else f'{{"pid": {other.pid}, "argv": ["/x/tansu", "broker"]}}\n'
                )
                (stack.state / f"{name}.pid").write_text(text)
            if action == "down":
                stack.down()
            else:
                for name in ("seaweedfs", "tansu", "mosquitto"):
                    getattr(stack, action)(name)
            assert other.poll() is None, f"{action} signalled a process that is not the stack's"
            assert not list(stack.state.glob("*.pid")), f"{action} left stale pid files"
        assert all(s.pid is None and not s.running for s in stack.status())
    finally:
        other.kill()
        other.wait()


# -- mosquitto ------------------------------------------------------------------------------------------
class _Sub:
    """A persistent MQTT 5 session (clean_start=False, session expiry) that collects payloads."""

    def __init__(self, cfg: Config, client_id: str, topic: str) -> None:
        self.got: list[bytes] = []
        self.subscribed = threading.Event()
        self.c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.c.on_message = lambda _c, _u, msg: self.got.append(bytes(msg.payload))
        self.c.on_subscribe = lambda *_a: self.subscribed.set()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self.c.connect(cfg.mqtt.host, cfg.mqtt.port, clean_start=False, properties=props)
        self.c.loop_start()
        self.topic = topic

    def subscribe(self) -> None:
        self.c.subscribe(self.topic, qos=1)
        assert self.subscribed.wait(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_mosquitto_persists_queued_messages_across_sigkill(durable: tuple[Config, Stack]) -> None:
    """Also as root (CI): the persistence file is written, no "Permission denied", and what a
    persistent session had queued is delivered after a SIGKILL of mosquitto and `up`."""
    cfg, stack = durable
    conf = (stack.state / "mosquitto.conf").read_text()
    assert ("\nuser root\n" in conf) == (os.geteuid() == 0)
    tag = uuid.uuid4().hex[:8]
    topic = f"persist/{tag}"
    sub = _Sub(cfg, f"sub-{tag}", topic)
    sub.subscribe()
    sub.close()  # offline: from now on mosquitto queues for this session

    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect(cfg.mqtt.host, cfg.mqtt.port)
    pub.loop_start()
    payloads = [f"queued {tag} {i:04d}".encode() for i in range(50)]
    try:
        for p in payloads:
            pub.publish(topic, p, qos=1).wait_for_publish(10)
    finally:
        pub.disconnect()
        pub.loop_stop()

    db = stack.state / "mosquitto.db"
    deadline = time.monotonic() + 10
    while not (db.exists() and payloads[-1] in db.read_bytes()):
        assert time.monotonic() < deadline, "mosquitto did not write the queued messages to mosquitto.db"
        time.sleep(0.1)
    log = {s.name: s.log for s in stack.status()}["mosquitto"]
    assert "Permission denied" not in log.read_text()

    stack.kill("mosquitto")
    stack.up()
    sub = _Sub(cfg, f"sub-{tag}", topic)
    try:
        deadline = time.monotonic() + 10
        while len(sub.got) < len(payloads) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        sub.close()
    assert sorted(set(sub.got)) == payloads, f"{len(set(sub.got))}/{len(payloads)} queued messages delivered"
    assert "Permission denied" not in log.read_text()


def test_status_lists_every_service_with_its_log(durable: tuple[Config, Stack], tmp_path: Path) -> None:
    cfg, stack = durable
    st = stack.status()
    assert [s.name for s in st] == ["seaweedfs", "tansu", "mosquitto", "postgres"]
    for s in st:
        assert s.healthy, s
        assert s.log.is_file() and s.log.stat().st_size > 0, s.log
    # the operator's screen names the same processes
    out = run_cli(write_config(cfg, tmp_path / "t.toml"), "status", "--json")
    assert out.returncode == 0, out.stderr
    view = json.loads(out.stdout)["stack"]
    assert {n: p["pid"] for n, p in view.items()} == {s.name: s.pid for s in st}
    assert all(p["alive"] for p in view.values()), view


def test_memory_storage_is_an_explicit_opt_in_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stack = Stack(stack_config(tmp_path, kafka_storage="memory"))
    with caplog.at_level(logging.WARNING, logger="devtools.stack"):
        stack.up()
    try:
        assert [s.name for s in stack.status()] == ["tansu", "mosquitto", "postgres"]
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("acknowledged messages" in m and "lost" in m for m in warned), warned
        assert not (stack.state / "seaweedfs").exists()
    finally:
        stack.down()


def _psql(stack: Stack, sql: str) -> str:
    from devtools.stack import PG_DATABASE, PG_ROLE, find_postgres

    argv = [
        str(find_postgres(stack.cfg) / "psql"),
        "-h",
        "127.0.0.1",
        "-p",
        str(stack.cfg.stack.postgres_port),
    ]
    out = subprocess.run(
        [*argv, "-U", PG_ROLE, "-d", PG_DATABASE, "-v", "ON_ERROR_STOP=1", "-tAc", sql],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_postgres_runs_unprivileged_and_keeps_commits_across_sigkill(durable: tuple[Config, Stack]) -> None:
    """PostgreSQL (the lake's catalog) is part of the stack: never as root (it refuses; CI is root),
    its database exists, and a committed row survives a SIGKILL of the server and `up`."""
    _, stack = durable
    pid = _pids(stack)["postgres"]
    assert pid is not None
    uid = int(
        next(
            ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("Uid:")
        ).split()[1]
    )
    assert (uid != 0) and (uid == os.geteuid() or os.geteuid() == 0)
    tag = uuid.uuid4().hex
    _psql(stack, "CREATE TABLE IF NOT EXISTS probe (tag text)")
    _psql(stack, f"INSERT INTO probe VALUES ('{tag}')")
    os.kill(pid, signal.SIGKILL)
    stack.up()  # at once: the old server's processes may still hold the data directory for a moment
    assert _pids(stack)["postgres"] not in (None, pid)
    assert tag in _psql(stack, "SELECT tag FROM probe").split()
