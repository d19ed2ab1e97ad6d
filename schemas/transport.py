"""How blocks and session messages travel (schemas/WIRE.md section 12): MQTT topics and filters, the
MQTT 5 user property of a replayed block, and the Kafka header names the bridge and the consumer
write. One list: the agent, the bridge, the processor and the dead-letter producer all use these."""

from __future__ import annotations

# -- MQTT (agent -> broker -> bridge), WIRE.md 12.1 --------------------------------------------------
BLOCKS_FILTER = "vehicles/+/blocks"  # the bridge's subscriptions (under $share/<group>/)
STATE_FILTER = "vehicles/+/state"  # session births, deaths and shutdowns (WIRE.md 12.4)
# User property on a block the agent replayed from its spool (value "1").
HISTORICAL_PROPERTY = "vt-historical"


def blocks_topic(device_id: str) -> str:
    return f"vehicles/{device_id}/blocks"


def state_topic(device_id: str) -> str:
    return f"vehicles/{device_id}/state"


# -- Kafka headers written by the bridge, WIRE.md 12.2 -----------------------------------------------
MQTT_TOPIC_HEADER = "mqtt-topic"  # the full MQTT topic
HISTORICAL_HEADER = HISTORICAL_PROPERTY  # forwarded from the user property of the same name
REJECT_HEADER = "vt-reject"  # a marker instead of the payload: "oversized" or "quota_exceeded"
DETAIL_HEADER = "vt-detail"  # human-readable detail (UTF-8)
SIZE_HEADER = "vt-size"  # the original payload's (or payloads') size in bytes, decimal
SHA256_HEADER = "vt-sha256"  # hex SHA-256 of the original payload(s)
COUNT_HEADER = "vt-count"  # quota markers: how many messages the marker stands for

# -- Kafka headers of a dead letter, WIRE.md 12.3 ----------------------------------------------------
REASON_HEADER = "vt-reason"  # the rejection reason (WIRE.md 13)
SOURCE_HEADER = "vt-source"  # <topic>/<partition>/<offset> of the rejected message
