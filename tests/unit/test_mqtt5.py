"""The MQTT 5 codec the bridge and the load generator share (common/mqtt5.py), against the standard's
own encodings (OASIS MQTT 5.0) and against paho's encoder, split at every possible byte."""

from __future__ import annotations

import struct

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common.mqtt5 import (
    PUBLISH,
    Inbound,
    MqttError,
    decode_publish,
    packet,
    properties,
    puback_packet,
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
