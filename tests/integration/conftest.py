"""Integration fixtures: the real local stack (SeaweedFS + Tansu on it + mosquitto), started by the
project's own code.

A service that cannot start is a test error, never a skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devtools.stack import Stack, ensure_topics, free_port_block, free_ports
from ingest.config import Config
from tests.integration.harness import IngestProc, write_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stack_config(base: Path, **stack: Any) -> Config:
    """A stack config under ``base`` on free ports (the S3 server's ten included), durable by default.

    The brokers' ports come from below the ephemeral range, so a restarted broker finds them free."""
    ports = free_ports()
    return msgspec.convert(
        {"data_dir": str(base), **ports, "stack": {**ports["stack"], **stack}},
        Config,
    )


@pytest.fixture(scope="session")
def stack_cfg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:
    cfg = stack_config(tmp_path_factory.mktemp("stack"))
    stack = Stack(cfg)
    stack.up()
    try:
        yield cfg
    finally:
        stack.down()


@contextlib.contextmanager
def new_database(stack_cfg: Config) -> Iterator[str]:
    """A fresh PostgreSQL database on the stack's server (a lake catalog): its libpq string."""
    import psycopg

    name = f"lake_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(Stack(stack_cfg).pg_dsn, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    try:
        yield f"host=127.0.0.1 port={stack_cfg.stack.postgres_port} user=telematics dbname={name}"
    finally:
        with psycopg.connect(Stack(stack_cfg).pg_dsn, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture()
def lake_catalog(stack_cfg: Config) -> Iterator[str]:
    """A fresh database for one test's lake catalog."""
    with new_database(stack_cfg) as catalog:
        yield catalog


@pytest.fixture()
def lake_env(stack_cfg: Config, tmp_path: Path, lake_catalog: str) -> Iterator[TestEnv]:
    """``env`` with the store in a lake of its own on the stack's PostgreSQL."""
    e = TestEnv(stack_cfg, tmp_path, catalog=lake_catalog)
    try:
        yield e
    finally:
        e.stop_all()


@pytest.fixture()
def env(stack_cfg: Config, tmp_path: Path) -> Iterator[TestEnv]:
    e = TestEnv(stack_cfg, tmp_path)
    try:
        yield e
    finally:
        e.stop_all()


class TestEnv:
    """A test's own topics, consumer group, bridge session, DuckDB, registry and ledger on the shared brokers."""

    __test__ = False

    def __init__(self, stack_cfg: Config, tmp: Path, catalog: str | None = None) -> None:
        """``catalog``: store in a lake with this catalog (``lake_catalog``), else in a DuckDB file
        (the tests written against the file store open it directly)."""
        tag = uuid.uuid4().hex[:8]
        b = msgspec.to_builtins(stack_cfg)
        b["data_dir"] = str(tmp)
        b["store"] = {"backend": "duckdb"} if catalog is None else {"backend": "lake", "catalog": catalog}
        # consumer --instance I listens on consumer_port + I: a block of ports for up to 4 consumers
        b["metrics"] = {"bridge_port": free_port(), "consumer_port": free_port_block(4)}
        b["kafka"].update(blocks_topic=f"blocks-{tag}", deadletter_topic=f"dlq-{tag}", partitions=4)
        b["bridge"] = {"client_id": f"bridge-{tag}", "share_group": f"g{tag}"}
        b["ingest"] = {
            "group_id": f"ingest-{tag}",
            "session_timeout_ms": 2000,
            "batch_max_records": 2000,
            "batch_max_age_ms": 300,
        }
        b["edge"] = {"fsync": False}
        b["mqtt"].update(reconnect_min_s=0.2, reconnect_max_s=2.0)
        b["retry"] = {"min_s": 0.2, "max_s": 2.0}
        self.cfg = msgspec.convert(b, Config)
        self.config_path = write_config(self.cfg, tmp / "telematics.toml")
        asyncio.run(ensure_topics(self.cfg, time.monotonic() + 30))
        self.procs: list[IngestProc] = []

    def start(self, role: str, instance: int = 0) -> IngestProc:
        p = IngestProc(self.cfg, self.config_path, role, instance).start()
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.stop()
        if any(p.role == "bridge" for p in self.procs):
            end_mqtt_session(self.cfg, self.cfg.bridge.client_id)


def end_mqtt_session(cfg: Config, client_id: str) -> None:
    """Discard a persistent MQTT session and its queue (a finished test's bridge).

    Otherwise the shared mosquitto keeps queueing every later test's blocks for it, and its
    persistence file, rewritten after every change, grows with each test."""
    done = threading.Event()
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    c.on_connect = lambda *_a: done.set()
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    c.connect(cfg.mqtt.host, cfg.mqtt.port, clean_start=True, properties=props)
    c.loop_start()
    try:
        assert done.wait(10), f"could not end the MQTT session {client_id}"
    finally:
        c.disconnect()
        c.loop_stop()
