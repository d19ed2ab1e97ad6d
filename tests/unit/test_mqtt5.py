"""The MQTT 5 codec the bridge and the load generator share (common/mqtt5.py), against the standard's
own encodings (OASIS MQTT 5.0) and against paho's encoder, split at every possible byte."""

from __future__ import annotations

import asyncio
import contextlib
import struct

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common.mqtt5 import (
    DISCONNECT,
    PUBACK,
    PUBLISH,
    Inbound,
    MqttError,
    Subscriber,
    decode_publish,
    packet,
    properties,
    puback_packet,
    read_packet,
    receive_maximum,
    split_packets,
    string,
    varint,
)


@pytest.mark.parametrize(
    ("n", "encoded"),
    [  # the table of 1.5.5
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_variable_byte_integers_as_the_standard_encodes_them(n: int, encoded: bytes) -> None:
    assert varint(n) == encoded


def _publish(topic: str, payload: bytes, *, qos: int, pid: int = 0, props: bytes = b"\x00") -> bytes:
    body = string(topic) + (struct.pack(">H", pid) if qos else b"") + props + payload
    return packet(PUBLISH, qos << 1, body)


def _paho_properties(*pairs: tuple[str, str]) -> bytes:
    p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    p.UserProperty = list(pairs)
    p.MessageExpiryInterval = 3600
    p.ContentType = "application/octet-stream"
    return bytes(p.pack())  # type: ignore[no-untyped-call]


def test_a_stream_of_publishes_splits_the_same_at_every_chunk_boundary() -> None:
    """Messages of every size class (a remaining length of 1, 2 and 3 bytes), QoS 0 and 1, with and
    without properties (encoded by paho), read in two chunks cut at every byte: the same messages,
    exact bytes, in order, and nothing left over."""
    msgs = [
        Inbound("vehicles/a/blocks", b"", 1, 1),
        Inbound("vehicles/b/blocks", bytes(range(256)) * 3, 1, 65535),
        Inbound("vehicles/c/state", b"\x00" * 20_000, 0, 0),
        Inbound("vehicles/d/blocks", b"\xff" * 100, 1, 7, (("vt-historical", "1"), ("k", "v"))),
    ]
    stream = b"".join(
        _publish(
            m.topic,
            m.payload,
            qos=m.qos,
            pid=m.packet_id,
            props=_paho_properties(*m.user_properties) if m.user_properties else b"\x00",
        )
        for m in msgs
    ) + puback_packet(9)  # a packet the subscriber does not act on, between reads
    for cut in range(len(stream) + 1):
        buf, got, kinds = bytearray(), [], []
        for chunk in (stream[:cut], stream[cut:]):
            buf += chunk
            found, used = split_packets(buf)
            for kind, flags, start, end in found:
                kinds.append(kind)
                if kind == PUBLISH:
                    got.append(decode_publish(buf, flags, start, end))
            del buf[:used]
        assert got == msgs, cut
        assert kinds == [PUBLISH] * 4 + [4] and not buf


def test_every_property_type_decodes() -> None:
    raw = (
        b"\x01\x01"  # payload format indicator: byte
        + b"\x23\x00\x05"  # topic alias: two bytes
        + b"\x02\x00\x00\x0e\x10"  # message expiry: four bytes
        + b"\x0b\x80\x01"  # subscription identifier: variable byte integer (128)
        + b"\x03"
        + string("text/plain")  # content type: string
        + b"\x09"
        + string(b"\x00\x01")  # correlation data: binary
        + b"\x26"
        + string("a")
        + string("b")  # user property: string pair
    )
    assert properties(raw) == [
        (0x01, 1),
        (0x23, 5),
        (0x02, 3600),
        (0x0B, 128),
        (0x03, "text/plain"),
        (0x09, b"\x00\x01"),
        (0x26, ("a", "b")),
    ]


@pytest.mark.parametrize(
    "raw",
    [b"\x7f\x00", b"\x02\x00\x00", b"\x26\x00\x05ab", b"\x03\x00\x02\xff\xfe", b"\x0b\x80\x80\x80\x80\x01"],
    ids=["unknown id", "truncated integer", "truncated pair", "not utf-8", "overlong varint"],
)
def test_malformed_properties_are_a_typed_error(raw: bytes) -> None:
    with pytest.raises(MqttError):
        properties(raw)


def test_a_publish_whose_header_overruns_the_packet_is_refused() -> None:
    buf = bytearray(packet(PUBLISH, 0x02, string("vehicles/x/blocks") + b"\x00"))  # no room for props
    found, _ = split_packets(buf)
    _, flags, start, end = found[0]
    with pytest.raises(MqttError, match="malformed PUBLISH"):
        decode_publish(buf, flags, start, end)


def test_receive_maximum_from_a_connack() -> None:
    assert receive_maximum(b"\x00\x00") == 65535  # no properties: the default
    assert receive_maximum(b"\x00\x00\x00") == 65535
    props = b"\x27\x00\x10\x00\x00" + b"\x21\x00\x08"  # maximum packet size, then receive maximum
    assert receive_maximum(b"\x00\x00" + varint(len(props)) + props) == 8


def test_a_qos_2_publish_is_refused() -> None:
    """The subscriptions ask for QoS 1: QoS 2 (which would need PUBREC, not PUBACK) and the
    malformed QoS 3 are errors, not messages acknowledged the wrong way."""
    for qos in (2, 3):
        buf = bytearray(_publish("vehicles/x/blocks", b"p", qos=1, pid=5)[:1]) + bytearray(
            _publish("vehicles/x/blocks", b"p", qos=1, pid=5)[1:]
        )
        buf[0] = (PUBLISH << 4) | (qos << 1)
        found, _ = split_packets(buf)
        _, flags, start, end = found[0]
        with pytest.raises(MqttError, match=f"QoS {qos}"):
            decode_publish(buf, flags, start, end)


def test_a_publish_whose_properties_overrun_it_into_the_next_packet_is_refused() -> None:
    """A property length that reaches past the end of its packet (into the next one) is refused,
    not read from the neighbour."""
    bad = packet(PUBLISH, 0x02, string("vehicles/x/blocks") + b"\x00\x01" + b"\x10")  # 16 bytes of props
    buf = bytearray(bad + _publish("vehicles/y/blocks", b"y" * 40, qos=1, pid=2))
    found, _ = split_packets(buf)
    _, flags, start, end = found[0]
    with pytest.raises(MqttError, match="malformed"):
        decode_publish(buf, flags, start, end)


class FakeBroker:
    """A TCP peer that answers CONNECT and SUBSCRIBE with the packets a test gives it, and then
    stays silent (no PINGRESP): what a broker could send, without a broker."""

    def __init__(self, connack: bytes | None, suback: bytes | None) -> None:
        self.connack, self.suback = connack, suback
        self.server: asyncio.base_events.Server | None = None
        self.received: list[tuple[int, bytes]] = []  # (packet type, body) after the SUBSCRIBE

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)  # CONNECT
        if self.connack is None:
            writer.close()
            return
        writer.write(self.connack)
        await read_packet(reader)  # SUBSCRIBE
        if self.suback is not None:
            writer.write(self.suback)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                kind, _, body = await read_packet(reader)  # PINGREQ is never answered
                self.received.append((kind, body))
                if kind == DISCONNECT:  # the broker's end of it
                    writer.close()
                    return

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def test_a_broker_that_hangs_up_before_connack_is_a_typed_error() -> None:
    async def go() -> None:
        async with FakeBroker(None, None) as port:
            sub = Subscriber("127.0.0.1", port, "c", lambda _: None)
            with pytest.raises(MqttError, match="before its CONNACK"):
                await sub.connect([("a/#", 1)], timeout=5)

    asyncio.run(go())


def test_a_suback_with_too_few_codes_is_refused() -> None:
    async def go() -> None:
        suback = packet(9, 0, b"\x00\x01\x00\x01")  # packet id 1, no properties, ONE code
        async with FakeBroker(packet(2, 0, b"\x00\x00\x00"), suback) as port:
            sub = Subscriber("127.0.0.1", port, "c", lambda _: None)
            with pytest.raises(MqttError, match="1 codes for 2 filters"):
                await sub.connect([("a/#", 1), ("b/#", 1)], timeout=5)
            assert sub.closed.done()

    asyncio.run(go())


def test_the_servers_keep_alive_is_used_and_a_silent_broker_ends_the_session() -> None:
    """CONNACK's Server Keep Alive (1 s) replaces the client's 60 s; a broker that then answers no
    PINGREQ ends the session within 1.5 keep-alives (plus a ping interval)."""

    async def go() -> MqttError:
        props = b"\x13\x00\x01"  # Server Keep Alive = 1 s
        connack = packet(2, 0, b"\x00\x00" + varint(len(props)) + props)
        async with FakeBroker(connack, packet(9, 0, b"\x00\x01\x00\x01")) as port:
            sub = Subscriber("127.0.0.1", port, "c", lambda _: None, keepalive_s=60)
            assert await sub.connect([("a/#", 1)], timeout=5) == [1]
            err = await asyncio.wait_for(asyncio.shield(sub.closed), 10)
            await sub.close()
            return err

    assert "no answer from the broker in 1.5s" in str(asyncio.run(go()))


def test_acknowledgements_go_out_in_order_and_before_the_disconnect() -> None:
    """PUBACKs are written once per turn of the event loop; those acknowledged just before
    ``close`` still precede its DISCONNECT, in the order acknowledged."""

    async def go() -> list[tuple[int, bytes]]:
        connack = packet(2, 0, b"\x00\x00\x00")
        broker = FakeBroker(connack, packet(9, 0, b"\x00\x01\x00\x01"))
        async with broker as broker_port:
            sub = Subscriber("127.0.0.1", broker_port, "c", lambda _: None)
            assert await sub.connect([("a/#", 1)], timeout=5) == [1]
            sub.ack(7)
            sub.ack(5)
            await asyncio.sleep(0.05)  # written on the next turn of the loop
            sub.ack(3)
            sub.ack(1)
            sub.ack(2)
            await sub.close()  # at once: these three are still queued
            await asyncio.sleep(0.05)
            return broker.received

    got = asyncio.run(go())
    assert got == [(PUBACK, struct.pack(">H", pid)) for pid in (7, 5, 3, 1, 2)] + [(DISCONNECT, b"\x00\x00")]
