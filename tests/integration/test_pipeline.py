"""(a) 10 vehicles x 1,000 records through real MQTT + Kafka: exactly 10,000 rows, all verified and anchored."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from ingest.storage.registry import Registry
from ingest.storage.store import FileStore
from simulators.fleet import run_fleet
from tests.integration.checks import recheck
from tests.integration.harness import wait_until

pytestmark = pytest.mark.integration


def test_ten_vehicles_thousand_records_each(env) -> None:  # type: ignore[no-untyped-def]
    cfg = env.cfg
    env.start("consumer")
    env.start("bridge")
    reg = Registry(cfg.path(cfg.registry.path))
    fleet = run_fleet(
        mqtt=cfg.mqtt,
        edge=cfg.edge,
        keys_dir=cfg.path("sim"),
        vehicles=10,
        ticks=10_000,
        rate_hz=10.0,
        seed=7,
        realtime=False,
        records_per_vehicle=1000,
        register=lambda k: reg.add(k.public_key),
        keep_hashes=True,
    )
    reg.close()
    assert fleet.records == 10_000 and fleet.unacked == 0
    assert set(fleet.per_vehicle.values()) == {1000}

    st = wait_until(
        cfg, lambda s: s["records"] >= 10_000 and s["anchored"] == s["batches"], what="10,000 stored"
    )
    for p in env.procs:
        assert p.stop() == 0
    assert st["records"] == 10_000 and st["rejections"] == 0 and st["duplicates"] == 0

    summary = recheck(cfg.path(cfg.store.path), cfg.path(cfg.registry.path), cfg.path(cfg.ledger.path))
    assert summary["records"] == 10_000
    assert summary["devices"] == 10
    assert summary["ledger_entries"] == summary["batches"] > 0

    s = FileStore(cfg.path(cfg.store.path), read_only=True)
    try:
        per_dev = dict(
            s.con.execute(
                "SELECT device_id, count(*) FROM (SELECT device_id FROM driving_samples UNION ALL "
                "SELECT device_id FROM battery_samples) GROUP BY 1"
            ).fetchall()
        )
        assert per_dev == fleet.per_vehicle
        stored: dict[Any, Any] = {}
        for dev, _seq, bh in s.con.execute(
            "SELECT device_id, seq, block_hash FROM blocks ORDER BY seq"
        ).fetchall():
            stored.setdefault(dev, []).append(bytes(bh))
        # Every block the vehicles signed is stored, byte for byte (same hash), in chain order.
        assert stored == fleet.block_hashes
        assert s.con.execute("SELECT count(*) FROM gaps").fetchone() == (0,)
    finally:
        s.close()

    # Random rows of this real run: `telematics prove` writes a bundle that `verify-proof` accepts offline
    # (operator key pinned), and `telematics audit` finds nothing to report.
    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ingest.cli", "--config", str(env.config_path), *argv],
            capture_output=True,
            text=True,
            timeout=300,
        )

    bundle = cfg.path("proof.json")
    r = cli("prove", "--sample", "--limit", "25", "-o", str(bundle))
    assert r.returncode == 0, r.stderr
    pub = cfg.path(cfg.ledger.key_path + ".pub")
    r = cli("verify-proof", str(bundle), "--operator-key", str(pub))
    assert r.returncode == 0 and "OK: 25 record(s) proven" in r.stdout, r.stdout + r.stderr
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    bundle.write_bytes(bytes(data))
    r = cli("verify-proof", str(bundle), "--operator-key", str(pub))
    assert r.returncode == 1 and "FAIL" in r.stdout
    r = cli("audit")
    assert r.returncode == 0 and "0 findings" in r.stdout, r.stdout + r.stderr
    assert "audited 10,000 records" in r.stdout
