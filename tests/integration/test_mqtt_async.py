"""The load generator's asyncio MQTT 5 client (simulators/mqtt_async.py) against the real mosquitto: many
sessions in one process, QoS 1 with PUBACK reason codes, every message delivered, a refusal reported."""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators.mqtt_async import AsyncPublisher, MqttError
from tests.integration.secure_fixtures import SecureBroker, device_name, secure_broker

pytestmark = pytest.mark.integration
__all__ = ["secure_broker"]

SESSIONS = 300
PER_SESSION = 4


def test_hundreds_of_sessions_publish_qos1_and_every_message_arrives(env: Any) -> None:
    m = env.cfg.mqtt
    tag = os.urandom(4).hex()
    got: set[bytes] = set()
    lock = threading.Lock()
    subscribed = threading.Event()
    sub = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"sub-{tag}", protocol=mqtt.MQTTv5
    )

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            got.add(bytes(msg.payload))

    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect(m.host, m.port)
    sub.subscribe(f"load-{tag}/#", qos=1)
    sub.loop_start()
    assert subscribed.wait(10)

    async def fleet() -> list[int]:
        pubs = [AsyncPublisher(m.host, m.port, f"load-{tag}-{i}") for i in range(SESSIONS)]
        await asyncio.gather(*(p.connect() for p in pubs))
        codes = await asyncio.gather(
            *(
                p.publish(f"load-{tag}/{i}/blocks", f"{i}:{k}".encode())
                for i, p in enumerate(pubs)
                for k in range(PER_SESSION)
            )
        )
        await asyncio.gather(*(p.close() for p in pubs))
        return list(codes)

    try:
        codes = asyncio.run(fleet())
        assert codes == [0] * (SESSIONS * PER_SESSION)  # success: a subscriber matched every one
        want = {f"{i}:{k}".encode() for i in range(SESSIONS) for k in range(PER_SESSION)}
        deadline = asyncio.run(_wait(lambda: got >= want, 10))
        assert deadline, f"{len(want - got)} of {len(want)} messages not delivered"
    finally:
        sub.loop_stop()
        sub.disconnect()


def test_one_session_over_the_brokers_receive_maximum(env: Any) -> None:
    """More messages in flight than the receive maximum: ``publish`` waits for room and every message is
    acknowledged; ``publish_nowait`` refuses once it is full. (mosquitto announces none, which means
    65,535; the limit is set as a CONNACK announcing 8 would set it.)"""
    m = env.cfg.mqtt

    async def go() -> tuple[list[int], int, int]:
        p = AsyncPublisher(m.host, m.port, f"rm-{os.urandom(4).hex()}")
        await p.connect()
        assert p._max_inflight == 65535
        limit = p._max_inflight = 8
        codes = await asyncio.gather(*(p.publish(f"nobody-{i}/x", b"x") for i in range(5 * limit)))
        futs = []
        while p.room:
            futs.append(p.publish_nowait("nobody/y", b"y"))
        with pytest.raises(MqttError, match="receive maximum"):
            p.publish_nowait("nobody/y", b"y")
        await asyncio.gather(*futs)
        await p.close()
        return list(codes), len(futs), limit

    codes, nowait, limit = asyncio.run(go())
    assert nowait == limit
    assert codes == [0x10] * (5 * limit)  # acknowledged: "no matching subscribers"


async def _wait(pred: Any, seconds: float) -> bool:
    for _ in range(int(seconds * 20)):
        if pred():
            return True
        await asyncio.sleep(0.05)
    return bool(pred())


def test_tls_credentials_a_refusal_and_a_closed_session(secure_broker: SecureBroker) -> None:
    """Over TLS to the secured broker: the right password publishes, a wrong one is refused with the
    broker's reason code, a closed session refuses to publish, an unreachable broker raises."""
    dev = device_name()
    secure_broker.add_user(dev)
    secure_broker.reload_until(secure_broker.mqtt_cfg(dev), accepted=True)
    tls = ssl.create_default_context(cafile=str(secure_broker.pki.ca.cert))
    password = secure_broker.password_file(dev).read_text().strip().encode()

    async def go() -> None:
        ok = AsyncPublisher("127.0.0.1", secure_broker.port, dev, username=dev, password=password, tls=tls)
        await ok.connect()
        assert await ok.publish(f"vehicles/{dev}/blocks", b"block") in (0, 0x10)  # accepted
        await ok.close()
        with pytest.raises(MqttError, match="not connected"):
            await ok.publish(f"vehicles/{dev}/blocks", b"x")
        bad = AsyncPublisher("127.0.0.1", secure_broker.port, dev, username=dev, password=b"wrong", tls=tls)
        with pytest.raises(MqttError, match=r"connection refused, reason code 0x8[67]"):
            await bad.connect()
        with pytest.raises(OSError):
            await AsyncPublisher("127.0.0.1", _closed_port(), "nowhere").connect(timeout=5)

    asyncio.run(go())


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
