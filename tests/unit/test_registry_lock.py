"""A registry locked by another process is a clear, bounded error, not a 30 s hang and a traceback."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ingest.storage.registry import BUSY_TIMEOUT_S, Registry, RegistryError
from schemas.crypto import SigningKey
from tests.integration.harness import error_line, run_cli

REPO = Path(__file__).resolve().parents[2]


def _locked(path: Path) -> sqlite3.Connection:
    Registry(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def test_locked_registry_is_a_registry_error_within_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    holder = _locked(path)
    try:
        with pytest.raises(RegistryError, match=f"lock on it for more than {BUSY_TIMEOUT_S:g} s"):
            reg = Registry(path)
            reg.add(SigningKey.generate().public_key)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    reg = Registry(path)  # released: works again
    reg.add(SigningKey.generate().public_key)
    reg.close()


def test_devices_add_on_a_locked_registry_says_so_in_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'data_dir = "{tmp_path}"\n')
    holder = _locked(tmp_path / "registry.sqlite")
    try:
        out = run_cli(cfg, "devices", "add", "--public-key", "11" * 32)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    line = error_line(out)
    assert len(out.stderr.strip().splitlines()) == 1 and "lock" in line and "try again" in line, out.stderr


def test_not_a_registry_file(tmp_path: Path) -> None:
    bad = tmp_path / "registry.sqlite"
    bad.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(RegistryError, match="is it a registry file"):
        Registry(bad)
