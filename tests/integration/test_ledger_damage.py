"""Deleting the ledger file while ingest runs: the consumer stops with one clear line and commits nothing,
no new ledger appears, a restart refuses to start a new one, and restoring the file resumes ingestion
with every record stored once and the ledger verifying."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from ingest.storage.registry import Registry
from tests.integration.checks import recheck
from tests.integration.harness import error_line, publish, run_cli, wait_until

pytestmark = pytest.mark.integration


def test_deleted_ledger_stops_the_consumer_and_is_never_recreated(env) -> None:  # type: ignore[no-untyped-def]
    cfg = env.cfg
    ledger_path = cfg.path(cfg.ledger.path)
    consumer = env.start("consumer")
    env.start("bridge")
    reg = Registry(cfg.path(cfg.registry.path))
    n1 = publish(cfg, 3, 200, 31, reg)
    wait_until(
        cfg, lambda s: s["records"] >= n1 and s["anchored"] == s["batches"], what="first part anchored"
    )
    backup = ledger_path.with_name("ledger-backup.jsonl")
    shutil.copy(ledger_path, backup)
    ledger_path.unlink()  # its checkpoints file stays

    n2 = publish(cfg, 3, 200, 31, reg)  # continues the same vehicles
    assert consumer.proc is not None
    rc = consumer.proc.wait(60)
    assert rc == 1
    out = consumer.log.read_text()
    assert "vanished" in out and "restore" in out and "Traceback" not in out
    assert not ledger_path.exists()
    st = json.loads(cfg.path("ingest-status.json").read_text())
    assert st["stalled"]["fatal"] and "vanished" in st["stalled"]["error"]

    # A restart without the file refuses too (the store remembers the anchors).
    env.procs.remove(consumer)
    again = run_cli(env.config_path, "ingest", "--only", "consumer")
    assert "not in the ledger" in error_line(again)
    assert not ledger_path.exists()

    # The operator restores the file: ingestion resumes, nothing lost or doubled.
    shutil.copy(backup, ledger_path)
    env.start("consumer")
    st = wait_until(
        cfg, lambda s: s["records"] >= n1 + n2 and s["anchored"] == s["batches"], what="everything anchored"
    )
    time.sleep(0.5)
    for p in env.procs:
        assert p.stop() == 0
    reg.close()
    summary = recheck(cfg.path(cfg.store.path), cfg.path(cfg.registry.path), ledger_path)
    assert summary["records"] == n1 + n2
