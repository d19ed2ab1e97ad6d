"""Helpers for integration tests: a per-test config on the shared real stack, ingest subprocesses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from ingest.config import Config
from ingest.storage.registry import Registry
from ingest.wiring import read_status
from simulators.fleet import FleetResult, run_fleet

REPO = Path(__file__).resolve().parents[2]


def write_config(cfg: Config, path: Path) -> Path:
    """Write ``cfg`` as TOML (tables, nested tables as [a.b]) for the subprocesses to load."""
    lines: list[str] = []

    def value(v: Any) -> str:  # TOML: JSON for scalars, inline tables for a list's tables
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    def emit(prefix: str, table: dict[str, Any]) -> None:
        if prefix:
            lines.append(f"\n[{prefix}]")
        for k, v in table.items():
            if not isinstance(v, dict):
                lines.append(f"{k} = {value(v)}")
        for k, v in table.items():
            if isinstance(v, dict):
                emit(f"{prefix}.{k}" if prefix else k, v)

    emit("", msgspec.to_builtins(cfg))
    path.write_text("\n".join(lines) + "\n")
    return path


class IngestProc:
    """One ingest role (bridge or consumer) in its own process, so tests can SIGKILL it."""

    def __init__(self, cfg: Config, config_path: Path, role: str, instance: int = 0) -> None:
        """``instance``: the consumer's number among several on one data directory."""
        self.cfg = cfg
        self.config_path = config_path
        self.role = role
        self.instance = instance
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(cfg.data_dir) / (f"{role}.log" if instance == 0 else f"{role}-{instance}.log")

    def start(self, timeout: float = 60) -> IngestProc:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ingest.cli",
                    "--config",
                    str(self.config_path),
                    "ingest",
                    "--only",
                    self.role,
                    *(["--instance", str(self.instance)] if self.instance else []),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=REPO,
            )
        status = "bridge-status.json"
        if self.role == "consumer":
            status = "ingest-status.json" if self.instance == 0 else f"ingest-status-{self.instance}.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.role} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                st = json.loads(self.cfg.path(status).read_text())
                if st.get("pid") == self.proc.pid:
                    return self
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        raise TimeoutError(f"{self.role} not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def run_cli(config_path: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """``telematics --config CONFIG ARGS...`` in a subprocess, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli", "--config", str(config_path), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=check,
    )


def wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 60) -> None:
    """Until a server process accepts connections on 127.0.0.1:``port``; its log if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on port {port} after {timeout} s")
        time.sleep(0.05)


def error_line(out: subprocess.CompletedProcess[str]) -> str:
    """The last line a failed command printed on stderr; it must have failed without a traceback."""
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    return out.stderr.strip().splitlines()[-1]


def wait_until(cfg: Config, pred: Any, timeout: float = 120, what: str = "condition") -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = read_status(cfg) or {}
        if st and pred(st):
            return st
        time.sleep(0.1)
    raise TimeoutError(f"{what} not reached in {timeout}s; last status {st}")


def publish(cfg: Config, vehicles: int, records: int, seed: int, registry: Registry) -> int:
    """Drive ``vehicles`` simulated vehicles (keys and chains kept in ``<data_dir>/sim``, so a second call
    continues them) for exactly ``records`` records each, registering their keys; all acknowledged."""
    return drive(cfg, vehicles, records, seed, registry).records


def drive(cfg: Config, vehicles: int, records: int, seed: int, registry: Registry) -> FleetResult:
    """``publish``, returning the fleet's result (its device ids in ``per_vehicle``)."""
    fleet = run_fleet(
        mqtt=cfg.mqtt,
        edge=cfg.edge,
        keys_dir=cfg.path("sim"),
        vehicles=vehicles,
        ticks=10**6,
        rate_hz=100.0,
        seed=seed,
        realtime=False,
        records_per_vehicle=records,
        register=lambda k: registry.add(k.public_key),
    )
    assert fleet.unacked == 0
    return fleet


class FleetInBackground:
    """``run_fleet`` in a thread, in real time, every vehicle registered and its block hashes kept:
    the test kills, pauses or reads while the vehicles publish, then ``join``s."""

    def __init__(self, cfg: Config, *, vehicles: int, records: int, seed: int, rate_hz: float) -> None:
        self.result: FleetResult | None = None
        self.errors: list[BaseException] = []
        reg = Registry(cfg.path(cfg.registry.path))

        def go() -> None:
            try:
                self.result = run_fleet(
                    mqtt=cfg.mqtt,
                    edge=cfg.edge,
                    keys_dir=cfg.path("sim"),
                    vehicles=vehicles,
                    ticks=1_000_000,  # records_per_vehicle ends the run
                    rate_hz=rate_hz,
                    seed=seed,
                    realtime=True,
                    records_per_vehicle=records,
                    register=lambda k: reg.add(k.public_key),
                    keep_hashes=True,
                )
            except BaseException as exc:  # surfaced by join
                self.errors.append(exc)

        self.thread = threading.Thread(target=go)
        self.thread.start()

    def join(self, timeout: float = 180) -> FleetResult:
        self.thread.join(timeout)
        assert not self.errors, self.errors
        assert self.result is not None, f"the fleet did not finish within {timeout:.0f}s"
        return self.result
