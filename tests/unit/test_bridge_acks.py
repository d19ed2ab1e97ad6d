"""The bridge's acknowledger: an MQTT message is acknowledged only after Kafka acknowledged it, in
arrival order, and a Kafka send that ends any other way (an error, a cancelled future) ends the session
with a KafkaError, so the broker redelivers what was not acknowledged. The producer and the MQTT session
are recording stand-ins; the bridge's code between them is the real one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka.errors import KafkaError

from common.mqtt5 import Inbound
from ingest.config import Config
from ingest.pipeline.bridge import Bridge


class Producer:
    """Hands out one future per send; the test completes them."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[object]] = []

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[object]:
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return fut

    async def flush(self) -> None:
        await asyncio.gather(*self.futures, return_exceptions=True)


class Session:
    """Records the packet ids the bridge acknowledges."""

    def __init__(self) -> None:
        self.acked: list[int] = []
        self.closed: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()

    def ack(self, pid: int) -> None:
        self.acked.append(pid)

    def resume(self) -> None:
        pass


def _bridge(tmp_path: Path) -> Bridge:
    cfg = msgspec.convert(
        {"data_dir": str(tmp_path), "bridge": {"bundle_max_messages": 1, "device_quota_msgs_per_s": 0}},
        Config,
    )
    return Bridge(cfg, status_path=tmp_path / "bridge-status.json")


def _messages(n: int) -> list[Inbound]:
    return [Inbound(f"vehicles/{i:032x}/blocks", b"block %d" % i, 1, i + 1) for i in range(n)]


async def _run(tmp_path: Path, end: Any) -> tuple[list[int], BaseException | None]:
    """Forward 4 messages; Kafka acknowledges the first, then ``end`` ends the second's send."""
    bridge, producer, session = _bridge(tmp_path), Producer(), Session()
    for m in _messages(4):
        bridge._inbox.put_nowait(m)
    bridge._inbox.put_nowait(None)  # the MQTT session ends: the bridge drains what it forwarded
    pump = asyncio.create_task(bridge._pump(producer, session))  # type: ignore[arg-type]
    while len(producer.futures) < 4:
        await asyncio.sleep(0.001)
    producer.futures[0].set_result(None)
    end(producer.futures[1])
    for f in producer.futures[2:]:
        f.set_result(None)
    try:
        await asyncio.wait_for(pump, 5)
    except KafkaError as exc:
        return session.acked, exc
    return session.acked, None


def test_acknowledged_in_arrival_order_once_kafka_has_them(tmp_path: Path) -> None:
    acked, exc = asyncio.run(_run(tmp_path, lambda f: f.set_result(None)))
    assert exc is None
    assert acked == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "end",
    [
        pytest.param(lambda f: f.cancel(), id="cancelled"),
        pytest.param(lambda f: f.set_exception(KafkaError("broker gone")), id="kafka-error"),
        pytest.param(lambda f: f.set_exception(RuntimeError("producer bug")), id="other-error"),
    ],
)
def test_a_send_that_did_not_reach_kafka_ends_the_session(tmp_path: Path, end: Any) -> None:
    acked, exc = asyncio.run(_run(tmp_path, end))
    assert isinstance(exc, KafkaError)  # the bridge's reconnect path, not a silent stall
    assert acked == [1]  # nothing after the failed send is acknowledged: the broker redelivers it
