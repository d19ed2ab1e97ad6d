"""How blocks and session messages travel (schemas/WIRE.md section 12): MQTT topics and filters, the
MQTT 5 user property of a replayed block, and the Kafka header names the bridge and the consumer
write. One list: the agent, the bridge, the processor and the dead-letter producer all use these."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import msgspec
from msgspec import Meta

# -- MQTT (agent -> broker -> bridge), WIRE.md 12.1 --------------------------------------------------
BLOCKS_FILTER = "vehicles/+/blocks"  # the bridge's subscriptions (under $share/<group>/)
STATE_FILTER = "vehicles/+/state"  # session births, deaths and shutdowns (WIRE.md 12.4)
# User property on a block the agent replayed from its spool (value "1").
HISTORICAL_PROPERTY = "vt-historical"


def blocks_topic(device_id: str) -> str:
    return f"vehicles/{device_id}/blocks"


def state_topic(device_id: str) -> str:
    return f"vehicles/{device_id}/state"


def topic_key(topic: str) -> bytes | None:
    """The Kafka key of a message on an MQTT topic: its device id (``vehicles/<id>/...``), or
    None for a topic of another shape (WIRE.md 12.2)."""
    parts = topic.split("/")
    return parts[1].encode() if len(parts) == 3 else None


# -- Kafka headers written by the bridge, WIRE.md 12.2 -----------------------------------------------
MQTT_TOPIC_HEADER = "mqtt-topic"  # the full MQTT topic
HISTORICAL_HEADER = HISTORICAL_PROPERTY  # forwarded from the user property of the same name
REJECT_HEADER = "vt-reject"  # a marker instead of the payload: "oversized" or "quota_exceeded"
DETAIL_HEADER = "vt-detail"  # human-readable detail (UTF-8)
SIZE_HEADER = "vt-size"  # the original payload's (or payloads') size in bytes, decimal
SHA256_HEADER = "vt-sha256"  # hex SHA-256 of the original payload(s)
COUNT_HEADER = "vt-count"  # quota markers: how many messages the marker stands for

BUNDLE_HEADER = "vt-bundle"  # the value is a bundle of MQTT messages (WIRE.md 12.5); header value "1"

# -- Kafka headers of a dead letter, WIRE.md 12.3 ----------------------------------------------------
REASON_HEADER = "vt-reason"  # the rejection reason (WIRE.md 13)
SOURCE_HEADER = "vt-source"  # <topic>/<partition>/<offset> of the rejected message
INDEX_HEADER = "vt-index"  # the rejected message's index in its bundle (WIRE.md 12.5), decimal


# -- Bundles: several MQTT messages in one Kafka record, WIRE.md 12.5 --------------------------------
BUNDLE_VERSION = b"1"  # the value of the vt-bundle header
MAX_BUNDLE_ENTRIES = 65_535


class BundleEntry(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One MQTT message of a bundle: its topic, its payload unchanged, and whether the agent
    replayed it from its spool (the ``vt-historical`` user property)."""

    topic: Annotated[str, Meta(min_length=1, max_length=65_535)]
    payload: bytes
    historical: bool


_bundle_encoder = msgspec.msgpack.Encoder()
_bundle_decoder = msgspec.msgpack.Decoder(
    Annotated[list[BundleEntry], Meta(min_length=1, max_length=MAX_BUNDLE_ENTRIES)]
)


def encode_bundle(entries: Sequence[tuple[str, bytes | bytearray, bool]]) -> bytes:
    """The value of a bundle record: a MessagePack array of ``[topic, payload, historical]``."""
    return _bundle_encoder.encode(entries)


def decode_bundle(value: bytes) -> list[BundleEntry]:
    """The entries of a bundle record, in order. Raises ``msgspec.ValidationError`` or
    ``msgspec.DecodeError`` for anything that is not a bundle."""
    return _bundle_decoder.decode(value)
