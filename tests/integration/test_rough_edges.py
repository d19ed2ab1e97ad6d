"""Operational mistakes end in one clear line or a loud, recoverable hold, never a traceback: a second
consumer on the same store, a registry locked by another process while ingest runs."""

from __future__ import annotations

import sqlite3

import pytest

from ingest.storage.registry import BUSY_TIMEOUT_S, Registry
from tests.integration.harness import error_line, run_cli

pytestmark = pytest.mark.integration


def test_a_second_consumer_on_the_same_store_says_so(env) -> None:  # type: ignore[no-untyped-def]
    env.start("consumer")
    out = run_cli(env.config_path, "ingest", "--only", "consumer")
    assert "another `telematics ingest` running" in error_line(out)


def test_ingest_on_a_locked_registry_says_so_in_one_line(env) -> None:  # type: ignore[no-untyped-def]
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
