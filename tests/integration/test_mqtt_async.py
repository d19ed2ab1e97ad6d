"""The asyncio MQTT 5 clients against the real mosquitto. The load generator's publisher
(simulators/mqtt_async.py): many sessions in one process, QoS 1 with PUBACK reason codes, every message
delivered, a refusal reported. The bridge's subscriber (common/mqtt5.py): a persistent session that
redelivers exactly what was not acknowledged, user properties, TLS with the bridge's password."""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from common.mqtt5 import RETAIN_DO_NOT_SEND, SESSION_TAKEN_OVER, Inbound, Subscriber
from common.mqtt_tls import security
from edge_agent.publisher import MqttPublisher
from ingest.ops.broker_auth import BRIDGE_USER
from schemas.transport import blocks_topic
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


def test_subscriber_session_redelivers_exactly_what_was_not_acknowledged(env: Any) -> None:
    """A persistent session (clean start off): of ten messages the subscriber acknowledges the even
    ones and disconnects; three more are published while it is away. The same client id connecting
    again receives the five odd ones and the three new ones, and none of the acknowledged."""
    m = env.cfg.mqtt
    tag = os.urandom(4).hex()
    cid = f"sub-{tag}"
    filters = [(f"redeliver-{tag}/#", 1 | RETAIN_DO_NOT_SEND)]

    async def session(ack: Any, want: int) -> list[Inbound]:
        got: list[Inbound] = []
        arrived = asyncio.Event()

        def on(batch: list[Inbound]) -> None:
            got.extend(batch)
            if len(got) >= want:
                arrived.set()

        sub = Subscriber(m.host, m.port, cid, on, clean_start=False, session_expiry_s=300, keepalive_s=10)
        assert await sub.connect(filters) == [1]
        return_ = got
        try:
            if want:
                await asyncio.wait_for(arrived.wait(), 10)
            await asyncio.sleep(0.3)  # anything more would arrive now
            for msg in got:
                if ack(msg):
                    sub.ack(msg.packet_id)
        finally:
            await sub.close()
        return return_

    async def publish(first: int, n: int) -> None:
        p = AsyncPublisher(m.host, m.port, f"pub-{tag}")
        await p.connect()
        for i in range(first, first + n):
            assert await p.publish(f"redeliver-{tag}/{i}", f"m{i}".encode()) == 0
        await p.close()

    async def go() -> tuple[list[Inbound], list[Inbound]]:
        await session(lambda _: False, 0)  # creates the session and its subscription
        await publish(0, 10)
        first = await session(lambda msg: int(msg.payload[1:]) % 2 == 0, 10)
        await publish(10, 3)
        again = await session(lambda _: True, 8)
        return first, again

    first, again = asyncio.run(go())
    assert [x.payload for x in first] == [f"m{i}".encode() for i in range(10)]
    assert all(x.qos == 1 and x.packet_id for x in first)
    assert sorted(x.payload for x in again) == sorted(f"m{i}".encode() for i in [1, 3, 5, 7, 9, 10, 11, 12])


def test_subscriber_receives_the_exact_bytes_and_user_properties(env: Any) -> None:
    m = env.cfg.mqtt
    tag = os.urandom(4).hex()
    payload = os.urandom(70_000) + b"\x00\xff"
    pub = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"p-{tag}", protocol=mqtt.MQTTv5
    )
    pub.connect(m.host, m.port)
    pub.loop_start()
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = [("vt-historical", "1"), ("other", "x")]

    async def go() -> list[Inbound]:
        got: list[Inbound] = []
        sub = Subscriber(m.host, m.port, f"s-{tag}", got.extend)
        assert await sub.connect([(f"exact-{tag}/#", 1)]) == [1]
        pub.publish(f"exact-{tag}/1", payload, qos=1, properties=props).wait_for_publish(10)
        pub.publish(f"exact-{tag}/2", b"plain", qos=0).wait_for_publish(10)
        assert await _wait(lambda: len(got) == 2, 10)
        await sub.close()
        return got

    try:
        got = asyncio.run(go())
    finally:
        pub.loop_stop()
        pub.disconnect()
    assert (got[0].topic, got[0].payload, got[0].qos) == (f"exact-{tag}/1", payload, 1)
    assert got[0].user_properties == (("vt-historical", "1"), ("other", "x"))
    assert (got[1].topic, got[1].payload, got[1].qos, got[1].packet_id) == (f"exact-{tag}/2", b"plain", 0, 0)


def test_subscriber_over_tls_with_the_bridge_password(secure_broker: SecureBroker) -> None:
    """The bridge's own credentials (``security`` of its [mqtt] config) over TLS, on the bridge's
    shared subscription: a device's block arrives byte for byte; a wrong password is refused."""
    dev = device_name()
    secure_broker.add_user(dev)
    secure_broker.reload_until(secure_broker.mqtt_cfg(dev), accepted=True)
    sec = security(secure_broker.mqtt_cfg(BRIDGE_USER), default_username=None)
    assert sec.tls is not None and sec.username == BRIDGE_USER and sec.password
    payload = os.urandom(4096)

    async def go() -> list[Inbound]:
        got: list[Inbound] = []
        sub = Subscriber(
            "127.0.0.1",
            secure_broker.port,
            f"bridge-{os.urandom(3).hex()}",
            got.extend,
            username=sec.username,
            password=(sec.password or "").encode(),
            tls=sec.tls,
        )
        assert await sub.connect([("$share/ingest/vehicles/+/blocks", 1 | RETAIN_DO_NOT_SEND)]) == [1]
        dev_pub = MqttPublisher(secure_broker.mqtt_cfg(dev, username=""), dev)
        await asyncio.to_thread(dev_pub.connect, timeout=10)
        try:
            dev_pub.publish(blocks_topic(dev), payload)
            assert await asyncio.to_thread(dev_pub.flush, 10)
        finally:
            await asyncio.to_thread(dev_pub.close, 10)
        assert await _wait(lambda: len(got) == 1, 10)
        for p in got:
            sub.ack(p.packet_id)
        await sub.close()
        bad = Subscriber(
            "127.0.0.1",
            secure_broker.port,
            "bridge-bad",
            got.extend,
            username=BRIDGE_USER,
            password=b"wrong",
            tls=sec.tls,
        )
        with pytest.raises(MqttError, match=r"connection refused, reason code 0x8[67]"):
            await bad.connect([("$share/ingest/vehicles/+/blocks", 1)])
        return got

    got = asyncio.run(go())
    assert [(x.topic, x.payload) for x in got] == [(blocks_topic(dev), payload)]


def test_subscriber_paused_reads_nothing_and_resumed_gets_the_rest(env: Any) -> None:
    """The bridge's memory cap: once paused (from its message callback), the session reads nothing
    more from the socket, so nothing more is delivered, and it is not declared dead while it does
    not read (4 s paused, keep-alive 2 s); resumed, every message arrives in order."""
    m = env.cfg.mqtt
    tag = os.urandom(4).hex()
    n = 2000

    async def go() -> tuple[int, int, list[bytes]]:
        got: list[Inbound] = []
        sub: Subscriber | None = None

        def on(batch: list[Inbound]) -> None:
            got.extend(batch)
            assert sub is not None
            sub.pause()

        sub = Subscriber(m.host, m.port, f"pause-{tag}", on, keepalive_s=2)
        assert await sub.connect([(f"pause-{tag}/#", 1)]) == [1]
        p = AsyncPublisher(m.host, m.port, f"pp-{tag}")
        await p.connect()
        await asyncio.gather(*(p.publish(f"pause-{tag}/x", b"%05d" % i + bytes(1000)) for i in range(n)))
        await p.close()
        await asyncio.sleep(0.5)
        while_paused = len(got)
        await asyncio.sleep(4)  # over 1.5 keep-alives: a paused session is not taken for dead
        still = len(got)
        assert not sub.closed.done(), sub.closed.result()
        sub._on_messages = got.extend  # no more pausing
        sub.resume()
        assert await _wait(lambda: len(got) == n, 10)
        for x in got:
            sub.ack(x.packet_id)
        await sub.close()
        return while_paused, still, [x.payload[:5] for x in got]

    while_paused, still, order = asyncio.run(go())
    assert 0 < while_paused < n and still == while_paused
    assert order == [b"%05d" % i for i in range(n)]


def test_a_second_session_with_the_same_client_id_takes_the_first_over(env: Any) -> None:
    """What two bridges with one [bridge] client_id do to each other: the first session ends, the
    second stays. (mosquitto 2.0 closes the first connection without a DISCONNECT; a broker that
    sends one gives reason 0x8E, "session taken over", which the bridge logs as such.)"""
    m = env.cfg.mqtt
    cid = f"twin-{os.urandom(4).hex()}"

    async def go() -> MqttError:
        first = Subscriber(m.host, m.port, cid, lambda _: None)
        await first.connect([("nothing/#", 1)])
        second = Subscriber(m.host, m.port, cid, lambda _: None)
        await second.connect([("nothing/#", 1)])
        err = await asyncio.wait_for(first.closed, 10)
        assert second.connected
        await second.close()
        await first.close()
        return err

    err = asyncio.run(go())
    assert err.reason in (None, SESSION_TAKEN_OVER), err


def test_a_session_paused_by_its_backlog_still_reads_its_suback(env: Any) -> None:
    """A persistent session comes back to a backlog, which the broker sends before the SUBACK.
    A callback that pauses at once (the bridge over its byte cap) must not stop the SUBACK from
    being read: connect returns, and after resume the whole backlog arrives."""
    m = env.cfg.mqtt
    tag = os.urandom(4).hex()
    cid, filters = f"backlog-{tag}", [(f"backlog-{tag}/#", 1)]
    n = 300

    async def go() -> list[bytes]:
        first = Subscriber(m.host, m.port, cid, lambda _: None, clean_start=False, session_expiry_s=300)
        assert await first.connect(filters) == [1]
        await first.close()
        p = AsyncPublisher(m.host, m.port, f"bp-{tag}")
        await p.connect()
        await asyncio.gather(*(p.publish(f"backlog-{tag}/x", b"%04d" % i + bytes(2000)) for i in range(n)))
        await p.close()
        got: list[Inbound] = []
        again: Subscriber | None = None

        def on(batch: list[Inbound]) -> None:
            got.extend(batch)
            assert again is not None
            again.pause()

        again = Subscriber(m.host, m.port, cid, on, clean_start=False, session_expiry_s=300)
        assert await asyncio.wait_for(again.connect(filters), 15) == [1]
        assert again.session_present
        again._on_messages = got.extend
        again.resume()
        assert await _wait(lambda: len(got) >= n, 10)
        for x in got:
            again.ack(x.packet_id)
        await again.close()
        return [x.payload[:4] for x in got]

    assert asyncio.run(go()) == [b"%04d" % i for i in range(n)]
