"""The consumer's store connection runs DuckDB on ``[store] consumer_duckdb_threads`` threads (one
by default: less CPU per batch, docs/PERFORMANCE.md); every other store keeps DuckDB's default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import msgspec

from ingest import wiring
from ingest.config import Config


def _threads(con: Any) -> int:
    row = con.execute("SELECT current_setting('threads')").fetchone()
    return int(row[0])


DEFAULT = _threads(duckdb.connect())  # a plain connection's


def _cfg(tmp_path: Path, **store: Any) -> Config:
    return msgspec.convert({"data_dir": str(tmp_path), "store": {"backend": "duckdb", **store}}, Config)


def test_the_consumers_store_runs_on_the_configured_threads(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    wiring.operator_key(cfg, create=True)
    (consumer,) = wiring.roles(cfg, ["consumer"])
    store = consumer.consumer.store  # type: ignore[attr-defined]
    try:
        assert _threads(store.con) == 1
    finally:
        store.close()
    other = wiring.open_store(cfg)  # maintenance, erasure: DuckDB's own default
    try:
        assert _threads(other.con) == DEFAULT
    finally:
        other.close()


def test_zero_keeps_duckdbs_default(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, consumer_duckdb_threads=0)
    store = wiring.open_store(cfg, threads=cfg.store.consumer_duckdb_threads)
    try:
        assert _threads(store.con) == DEFAULT
    finally:
        store.close()
