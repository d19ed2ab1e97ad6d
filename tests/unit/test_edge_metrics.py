"""The agent's monitoring textfile: written by a real `edge-agent run` (broker down: the blocks wait
in the spool, and the file says so), in a format Prometheus's own parser reads."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from edge_agent.metrics import METRICS, render

ROOT = Path(__file__).resolve().parents[2]


def test_render_is_prometheus_text() -> None:
    fams = {
        f.name: f
        for f in text_string_to_metric_families(render("ab" * 16, {"telematics_edge_spool_blocks": 7}))
    }
    names = {n.removesuffix("_total") for n in METRICS}
    assert set(fams) == names
    s = fams["telematics_edge_spool_blocks"].samples[0]
    assert s.value == 7 and s.labels == {"device": "ab" * 16}


def test_agent_writes_its_state_while_the_broker_is_down(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics = tmp_path / "edge.prom"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""[mqtt]
port = {port}
reconnect_min_s = 0.05
reconnect_max_s = 0.2
[edge]
key_path = "{tmp_path / "device.key"}"
spool_path = "{tmp_path / "spool.sqlite"}"
fsync = false
block_max_age_ms = 200
metrics_file = "{metrics}"
metrics_interval_s = 0.2
"""
    )
    run = [sys.executable, "-m", "edge_agent.cli", "--config", str(cfg)]
    assert subprocess.run([*run, "keygen"], capture_output=True, cwd=ROOT).returncode == 0
    r = subprocess.run(
        [*run, "run", "--duration", "2"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert r.returncode == 0, r.stderr
    fams = {f.name: f.samples[0].value for f in text_string_to_metric_families(metrics.read_text())}
    assert fams["telematics_edge_connected"] == 0
    assert fams["telematics_edge_blocks_sealed"] >= 3  # counters lose _total in the parsed family name
    assert fams["telematics_edge_spool_blocks"] == fams["telematics_edge_blocks_sealed"]  # none delivered
    assert fams["telematics_edge_blocks_acked"] == 0
