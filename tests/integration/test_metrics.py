"""Operators' view: a real Prometheus (Debian's package) scrapes the bridge and the consumer while a
forged block is dead-lettered; its HTTP API then returns the rejection counter by reason. Health and
readiness answer on the same port."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ingest.storage.registry import Registry
from schemas.block import encode_envelope
from simulators.hostile import Attacker
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _query(port: int, q: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    code, body = _get(url)
    assert code == 200, body
    return list(json.loads(body)["data"]["result"])


def test_prometheus_scrapes_the_rejection_counter_by_reason(env: Any, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus") or "/usr/bin/prometheus"
    assert Path(prometheus).exists(), "Prometheus is missing: deploy/setup.sh installs Debian's package"
    cfg = env.cfg
    m = cfg.metrics
    env.start("consumer")
    env.start("bridge")
    cport, bport = m.consumer_port, m.bridge_port
    # health and readiness, before any data
    assert _get(f"http://127.0.0.1:{cport}/healthz")[0] == 200
    deadline = time.monotonic() + 30
    while _get(f"http://127.0.0.1:{cport}/readyz")[0] != 200:
        assert time.monotonic() < deadline, _get(f"http://127.0.0.1:{cport}/readyz")
        time.sleep(0.2)
    assert _get(f"http://127.0.0.1:{bport}/readyz")[0] == 200

    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: telematics\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{cport}', '127.0.0.1:{bport}']\n"
    )
    prom = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        # A registered vehicle's block with one signature bit flipped: dead-lettered as bad_signature.
        attacker = Attacker()
        reg = Registry(cfg.path(cfg.registry.path))
        reg.add(attacker.key.public_key)
        reg.close()
        b = attacker.block()
        sig = bytearray(b.signature)
        sig[7] ^= 0x10
        forged = encode_envelope(msgspec.structs.replace(b.envelope(), sig=bytes(sig)))
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.connect(cfg.mqtt.host, cfg.mqtt.port)
        c.loop_start()
        c.publish(attacker.blocks, forged, qos=1).wait_for_publish(10)
        c.loop_stop()
        c.disconnect()

        q = 'telematics_rejections_total{reason="bad_signature"}'
        deadline = time.monotonic() + 60
        got: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            try:
                got = _query(port, q)
            except (OSError, AssertionError):
                got = []
            if got and float(got[0]["value"][1]) >= 1:
                break
            time.sleep(0.5)
        assert got and float(got[0]["value"][1]) == 1, (
            got,
            (tmp_path / "prometheus.log").read_text()[-2000:],
        )
        deadline = time.monotonic() + 30  # both targets scraped at least once
        while len(up := _query(port, 'up{job="telematics"}')) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert sorted(float(u["value"][1]) for u in up) == [1.0, 1.0], up
        lag = _query(port, "telematics_consumer_lag")
        assert lag and all(float(x["value"][1]) >= 0 for x in lag), lag
        assert _query(port, "telematics_bridge_received_total")
        assert _query(port, "process_resident_memory_bytes")
    finally:
        prom.terminate()
        prom.wait(30)
