"""Every common mistake issue 14 lists, tried as an operator would: each ends in one line on stderr that
says what is wrong and what to do, exit status 2 for usage or configuration and 1 at run time, never a
traceback. Infrastructure that is down at start is waited for, loudly, instead."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from common.keys import generate_key_file
from devtools.stack import Stack
from ingest.storage.registry import BUSY_TIMEOUT_S, Registry
from ingest.storage.store import FileStore
from tests.integration.conftest import free_port, stack_config
from tests.integration.harness import IngestProc, error_line, run_cli, write_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _telematics(cfg: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"TELEMATICS_CONFIG": str(cfg), "PATH": "/usr/bin:/bin"},
    )


def _one_line(r: subprocess.CompletedProcess[str], code: int, *says: str) -> str:
    """Exit ``code``, no traceback, and exactly one line of ours (log lines aside) that says ``says``."""
    assert "Traceback" not in r.stderr, r.stderr
    ours = [ln for ln in r.stderr.splitlines() if ln.startswith("telematics")]
    assert r.returncode == code and len(ours) == 1, (r.returncode, r.stderr)
    assert all(s in ours[0] for s in says), (says, ours[0])
    return ours[0]


@pytest.fixture
def duck(tmp_path: Path) -> Path:
    """A config on an empty DuckDB store, brokers on ports where nothing listens."""
    cfg = tmp_path / "t.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[store]\nbackend = "duckdb"\n'
        f"[mqtt]\nport = {free_port()}\n[kafka]\nport = {free_port()}\n"
    )
    FileStore(tmp_path / "data" / "telematics.duckdb").close()
    generate_key_file(tmp_path / "device.key")
    (tmp_path / "garbage.pub").write_text("not a key\n")
    return cfg


# (what the operator did, argv, exit status, what the line must say)
USAGE: list[tuple[str, list[str], int, tuple[str, ...]]] = [
    ("a directory as --config", ["--config", "{tmp}", "devices", "list"], 2, ("is a directory",)),
    ("a missing --config", ["devices", "list", "--config", "{tmp}/none.toml"], 2, ("does not exist",)),
    ("public key not hex", ["devices", "add", "--public-key", "zz12"], 2, ("expected 64 hex digits",)),
    ("public key too short", ["devices", "add", "--public-key", "ab" * 31], 2, ("expected 64 hex digits",)),
    ("the private key", ["devices", "add", "--key-file", "{tmp}/device.key"], 2, ("PRIVATE key", ".pub")),
    ("a missing key file", ["devices", "add", "--key-file", "{tmp}/gone.pub"], 2, ("no such file",)),
    ("a garbage key file", ["devices", "add", "--key-file", "{tmp}/garbage.pub"], 2, ("does not hold",)),
    ("query: empty", ["query", " "], 2, ("empty statement", "SELECT")),
    ("query: not SQL", ["query", "SELEC 1"], 2, ("syntax error",)),
    ("query: unknown table", ["query", "SELECT * FROM trips"], 2, ("trips", "driving_samples", "DATA.md")),
    ("query: a write", ["query", "DELETE FROM driving_samples"], 2, ("only reads", "telematics erase")),
    (
        "operator key: a path to another file",
        ["verify-proof", "x.json", "--operator-key", "{tmp}/t.toml"],
        2,
        ("--operator-key", "does not hold"),
    ),
    (
        "operator key: a missing file",
        ["verify-proof", "x.json", "--operator-key", "{tmp}/op.pub"],
        2,
        ("no such file",),
    ),
    ("erase without --yes", ["erase", "--device", "ab" * 16], 2, ("--yes",)),
    ("a time nobody can read", ["devices", "revoke", "ab" * 16, "--at", "yesterday"], 2, ("not a time",)),
    ("an unknown command", ["ingst"], 2, ("invalid choice", "--help")),
    (
        "sim with the broker down",
        ["sim", "--vehicles", "1", "--duration", "1"],
        1,
        ("is the broker up?", "telematics stack up", "[mqtt]"),
    ),
]


@pytest.mark.parametrize(("what", "argv", "code", "says"), USAGE, ids=[u[0] for u in USAGE])
def test_each_mistake_is_one_line(
    duck: Path, what: str, argv: list[str], code: int, says: tuple[str, ...]
) -> None:
    tmp = str(duck.parent)
    _one_line(_telematics(duck, *[a.replace("{tmp}", tmp) for a in argv]), code, *says)


def test_port_taken_on_stack_up(tmp_path: Path) -> None:
    cfg = stack_config(tmp_path, kafka_storage="memory")  # the Kafka-protocol broker starts first
    with socket.socket() as squatter:
        squatter.bind((cfg.kafka.host, cfg.kafka.port))
        squatter.listen()
        try:
            r = _telematics(write_config(cfg, tmp_path / "t.toml"), "stack", "up")
        finally:
            Stack(cfg).down()
    _one_line(r, 1, f"{cfg.kafka.port}", "taken by another process", "choose another")


def test_the_consumer_waits_for_kafka_down_at_start(env: Any, tmp_path: Path) -> None:
    """Kafka down when the consumer starts: it says so (log, status file) and retries until stopped."""
    cfg = msgspec.structs.replace(env.cfg, kafka=msgspec.structs.replace(env.cfg.kafka, port=free_port()))
    p = IngestProc(cfg, write_config(cfg, tmp_path / "no-broker.toml"), "consumer").start()
    try:
        time.sleep(3)
        assert p.proc is not None and p.proc.poll() is None, p.log.read_text()[-2000:]
        st = json.loads(cfg.path("ingest-status.json").read_text())
        assert st["stalled"] and "unreachable" in st["stalled"]["error"], st
        log = p.log.read_text()
        assert "Traceback" not in log and f"{cfg.kafka.port}" in log and "retrying in" in log, log[-2000:]
    finally:
        assert p.stop() == 0


def test_a_second_consumer_on_the_same_store_says_so(env: Any) -> None:
    env.start("consumer")
    out = run_cli(env.config_path, "ingest", "--only", "consumer")
    assert "another `telematics ingest` running" in error_line(out)


def test_ingest_on_a_locked_registry_says_so_in_one_line(env: Any) -> None:
    """In WAL mode a running consumer's reads are never blocked by another writer; what can block is
    opening the registry while another process holds it exclusively: a bounded wait, one line."""
    path = env.cfg.path(env.cfg.registry.path)
    Registry(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        out = run_cli(env.config_path, "ingest", "--only", "consumer")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    last = error_line(out)
    assert "device registry" in last and "lock" in last and "try again" in last, out.stderr
    assert f"more than {BUSY_TIMEOUT_S:g} s" in last  # a bounded wait (it was 30 s, then a traceback)
