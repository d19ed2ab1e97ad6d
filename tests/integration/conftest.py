"""Integration fixtures: the real local stack (mosquitto + Tansu), started by the project's own code.

A service that cannot start is a test error, never a skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from ingest.config import Config
from ingest.stack import Stack, ensure_topics
from tests.integration.harness import IngestProc, write_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def stack_cfg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:
    base = tmp_path_factory.mktemp("stack")
    cfg = msgspec.convert(
        {"data_dir": str(base), "mqtt": {"port": free_port()}, "kafka": {"port": free_port()}}, Config
    )
    stack = Stack(cfg)
    stack.up()
    try:
        yield cfg
    finally:
        stack.down()


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

    def __init__(self, stack_cfg: Config, tmp: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        b = msgspec.to_builtins(stack_cfg)
        b["data_dir"] = str(tmp)
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
        self.cfg = msgspec.convert(b, Config)
        self.config_path = write_config(self.cfg, tmp / "telematics.toml")
        asyncio.run(ensure_topics(self.cfg, time.monotonic() + 30))
        self.procs: list[IngestProc] = []

    def start(self, role: str) -> IngestProc:
        p = IngestProc(self.cfg, self.config_path, role).start()
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.stop()
