"""The bridge's memory cap ([bridge] max_pending_bytes): it stops reading MQTT once that much payload
is received and not yet handed to Kafka, and reads again below it. The MQTT session is a recording
stand-in here (its own pause and resume are tested against mosquitto in
tests/integration/test_mqtt_async.py)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from common.mqtt5 import Inbound
from ingest.config import Config
from ingest.pipeline.bridge import Bridge


class Session:
    """Records the bridge's pause / resume calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause(self) -> None:
        self.calls.append("pause")

    def resume(self) -> None:
        self.calls.append("resume")


def test_reading_stops_at_the_byte_cap_and_resumes_below_it(tmp_path: Path) -> None:
    cfg = msgspec.convert({"data_dir": str(tmp_path), "bridge": {"max_pending_bytes": 1 << 20}}, Config)
    bridge = Bridge(cfg, status_path=tmp_path / "bridge-status.json")
    session = Session()
    bridge._sub = session  # type: ignore[assignment]
    kb300 = [Inbound(f"vehicles/{i:032x}/blocks", bytes([i]) * 300_000, 1, i + 1) for i in range(5)]
    bridge._arrive(kb300[:3])  # 900,000 bytes: under 1 MiB
    assert session.calls == []
    bridge._arrive(kb300[3:4])  # 1,200,000: over it
    assert session.calls == ["pause"]
    bridge._handed_over(300_000)  # 900,000 left: under 1 MiB
    assert session.calls == ["pause", "resume"]
    bridge._arrive(kb300[4:])  # 1,200,000 again
    assert session.calls == ["pause", "resume", "pause"]
    got = [bridge._inbox.get_nowait() for _ in range(5)]
    assert [m.packet_id for m in got if m is not None] == [1, 2, 3, 4, 5]  # arrival order kept
