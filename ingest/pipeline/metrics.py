"""What the bridge and the consumer expose to operators over HTTP: ``/metrics`` (Prometheus text
format), ``/healthz`` (the process answers) and ``/readyz`` (the role is doing its work: 200, else 503
with the reason).

Nothing here runs per record or per message: a scrape reads the counters the roles keep anyway
(the consumer's per-batch counts, the bridge's stats) through a collector, plus two histograms
observed once per batch. The server is a thread of the role's process; a port that cannot be bound
is logged and the role runs without it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

__all__ = [
    "CounterMetricFamily",
    "GaugeMetricFamily",
    "Metric",
    "Metrics",
    "MetricsServer",
    "counter",
    "gauge",
]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Ready = Callable[[], str | None]  # None: ready; else why not


def counter(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> CounterMetricFamily:
    m = CounterMetricFamily(name, doc, labels=list(labels or {}))
    m.add_metric(list((labels or {}).values()), value)
    return m


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class _Collect(Collector):
    def __init__(self, fn: Callable[[], Iterable[Metric]]) -> None:
        self.fn = fn

    def collect(self) -> Iterable[Metric]:
        return self.fn()


class Metrics:
    """One role's registry: its collector, the process's CPU and memory, and its histograms."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collect(collect))
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes

    def histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, doc, registry=self.registry, buckets=buckets)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    def __init__(self, metrics: Metrics, host: str, port: int, ready: Ready) -> None:
        self.metrics, self.host, self.port, self.ready = metrics, host, port, ready
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        """Serve in a daemon thread; a port that cannot be bound is logged, not fatal."""
        if self.port == 0:
            return
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, server.metrics.render(), CONTENT_TYPE)
                elif path == "/healthz":
                    self._send(200, b"ok\n")
                elif path == "/readyz":
                    why = server.ready()
                    self._send(200, b"ready\n") if why is None else self._send(503, why.encode() + b"\n")
                else:
                    self._send(404, b"/metrics, /healthz, /readyz\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                return None  # scrapes every few seconds would drown the log

        try:
            self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as exc:
            log.error(
                "metrics: cannot listen on %s:%d (%s); running without /metrics", self.host, self.port, exc
            )
            return
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True).start()
        log.info("metrics: http://%s:%d/metrics (/healthz, /readyz)", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
