"""Operational mistakes end in one clear line or a loud, recoverable hold, never a traceback: a second
consumer on the same store, a registry locked by another process while ingest runs."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from ingest.registry import BUSY_TIMEOUT_S, Registry
from tests.integration.harness import REPO

pytestmark = pytest.mark.integration


def test_a_second_consumer_on_the_same_store_says_so(env) -> None:  # type: ignore[no-untyped-def]
    env.start("consumer")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ingest.cli",
            "--config",
            str(env.config_path),
            "ingest",
            "--only",
            "consumer",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "another `telematics ingest` running" in out.stderr.strip().splitlines()[-1]


def test_ingest_on_a_locked_registry_says_so_in_one_line(env) -> None:  # type: ignore[no-untyped-def]
    """In WAL mode a running consumer's reads are never blocked by another writer; what can block is
    opening the registry while another process holds it exclusively: a bounded wait, one line."""
    path = env.cfg.path(env.cfg.registry.path)
    Registry(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "ingest.cli",
                "--config",
                str(env.config_path),
                "ingest",
                "--only",
                "consumer",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert out.returncode == 1 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert "device registry" in last and "lock" in last and "try again" in last, out.stderr
    assert f"more than {BUSY_TIMEOUT_S:g} s" in last  # a bounded wait (it was 30 s, then a traceback)
