"""The edge agent says when its broker is unreachable (issue 14: it said nothing for 35 s), without
flooding: the 1st, 2nd, 4th, 8th ... failure in a row are logged."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from common.config import MqttConfig
from edge_agent.publisher import MqttPublisher


def test_unreachable_broker_is_logged_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    cfg = MqttConfig(host="127.0.0.1", port=port, reconnect_min_s=0.05, reconnect_max_s=0.1)
    pub = MqttPublisher(cfg, "d" * 32)
    caplog.set_level(logging.WARNING, logger="edge_agent.publisher")
    pub.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(caplog.records) < 3:
            time.sleep(0.05)
    finally:
        pub.close(timeout=1)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) >= 3 and all(f"127.0.0.1:{port}" in m and "retrying in" in m for m in msgs), msgs
    attempts = [int(m.split("(attempt ")[1].split(")")[0]) for m in msgs]
    assert attempts[:3] == [1, 2, 4], attempts  # not every attempt: 1, 2, 4, 8, ...
