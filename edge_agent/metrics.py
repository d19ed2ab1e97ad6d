"""The agent's state for the host's monitoring, in a file: Prometheus text format, the node
exporter's textfile-collector convention (``[edge] metrics_file``; node_exporter
``--collector.textfile.directory`` picks it up). A file, not a port: nothing listens on the vehicle,
and the footprint is one small write every ``metrics_interval_s``."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

# name -> (type, help); values come from ``snapshot()``
METRICS: dict[str, tuple[str, str]] = {
    "telematics_edge_spool_blocks": ("gauge", "signed blocks in the spool, not acknowledged by the broker"),
    "telematics_edge_spool_bytes": ("gauge", "payload bytes in the spool"),
    "telematics_edge_connected": ("gauge", "1 while connected to the MQTT broker"),
    "telematics_edge_last_seq": ("gauge", "sequence number of the last block sealed"),
    "telematics_edge_records_sealed_total": ("counter", "records sealed into blocks since start"),
    "telematics_edge_blocks_sealed_total": ("counter", "blocks sealed since start"),
    "telematics_edge_blocks_published_live_total": ("counter", "blocks published right after sealing"),
    "telematics_edge_blocks_replayed_total": ("counter", "blocks published from the spool"),
    "telematics_edge_blocks_acked_total": ("counter", "blocks the broker acknowledged"),
    "telematics_edge_blocks_dropped_total": (
        "counter",
        "blocks the spool dropped (full or expired; declared)",
    ),
}


def render(device_id: str, values: dict[str, float]) -> str:
    out = []
    for name, (typ, doc) in METRICS.items():
        out.append(f"# HELP {name} {doc}")
        out.append(f"# TYPE {name} {typ}")
        out.append(f'{name}{{device="{device_id}"}} {values.get(name, 0)}')
    return "\n".join(out) + "\n"


def write(path: Path, text: str) -> None:
    """Atomically: a collector never reads half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Textfile:
    """Writes ``render(snapshot())`` to ``path`` every ``interval_s`` in a daemon thread, and once
    more at ``stop``. A write that fails is retried at the next interval."""

    def __init__(
        self, path: Path, device_id: str, snapshot: Callable[[], dict[str, float]], interval_s: float
    ) -> None:
        self.path, self.device_id, self.snapshot, self.interval_s = path, device_id, snapshot, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edge-metrics", daemon=True)

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def _write(self) -> None:
        # a full or read-only disk must not stop the agent; the next interval retries
        with contextlib.suppress(OSError):
            write(self.path, render(self.device_id, self.snapshot()))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._write()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._write()
