"""The SQL table macros (figures/figures.sql) give analysts the same figures as the reference algorithms,
fleet-wide in one query, on a store filled through the real commit sequence."""

from __future__ import annotations

from pathlib import Path

import pytest

from figures.battery import passport
from figures.score import score
from ingest.ledger.local import LocalLedger
from ingest.ops.figures import battery_records, driving_records
from ingest.ops.query import load_figures
from ingest.storage.registry import Registry
from ingest.storage.store import FileStore
from schemas.crypto import SigningKey
from simulators.life import fleet_plan, life_fleet
from simulators.offline import ingest_blocks

START = 1_767_225_600_000_000_000  # 2026-01-01T00:00Z
DAYS = 2


def test_sql_macros_agree_with_the_reference(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "t.duckdb")
    registry = Registry(tmp_path / "r.sqlite")
    ledger = LocalLedger(tmp_path / "l.jsonl", SigningKey.generate())
    vehicles, blocks = life_fleet(fleet_plan(3, seed=4), start_ns=START, days=DAYS)
    for v in vehicles:
        registry.add(v.key.public_key, device_id=v.device_id)
    ingest_blocks(store, registry, ledger, blocks)
    end = START + DAYS * 86_400 * 10**9
    load_figures(store.con)
    span = f"make_timestamp_ns({START}), make_timestamp_ns({end})"
    sql = {r[0]: r for r in store.con.execute(f"SELECT device_id, score, km, braking + braking_severe, acceleration + acceleration_severe, cornering + cornering_severe, speeding_s, night_s FROM vt_score({span})").fetchall()}  # fmt: skip
    bat = {r[0]: r for r in store.con.execute(f"SELECT device_id, soh_last, full_cycles FROM vt_battery({span})").fetchall()}  # fmt: skip
    assert set(sql) == set(bat) == {v.device_id for v in vehicles}
    scores = []
    for v in vehicles:
        ds, ts = driving_records(store, v.device_id, START, end)
        ref = score(v.device_id, ds, ts, START, end).period
        e = ref.events
        _, s, km, brakes, accels, corners, speeding, night = sql[v.device_id]
        assert s == ref.score and km == pytest.approx(ref.distance_km, rel=1e-9)
        assert (brakes, accels, corners) == (
            e["braking"] + e["braking_severe"],
            e["acceleration"] + e["acceleration_severe"],
            e["cornering"] + e["cornering_severe"],
        )
        assert (speeding, night) == pytest.approx((ref.speeding_s, ref.night_s), abs=1e-6)
        pp = passport(v.device_id, battery_records(store, v.device_id, START, end), START, end)
        assert (
            bat[v.device_id][1]
            == pp.battery_condition["stateOfCertifiedEnergy"]["stateOfCertifiedEnergyValue"]
        )
        assert bat[v.device_id][2] == pytest.approx(pp.equivalent_full_cycles, rel=1e-9)
        scores.append(ref.score)
    assert len(set(scores)) > 1  # profiles that drive differently score differently


def test_the_file_store_keeps_its_write_ahead_log_under_the_threshold(tmp_path: Path) -> None:
    """DuckDB's automatic checkpoint never ran while the store was open (a year of a fleet left a
    15 GB log beside a 12 kB file): an unfinished fetchone() kept a transaction open."""
    store = FileStore(tmp_path / "t.duckdb", checkpoint_threshold_mb=1)
    registry = Registry(tmp_path / "r.sqlite")
    ledger = LocalLedger(tmp_path / "l.jsonl", SigningKey.generate())
    vehicles, blocks = life_fleet(fleet_plan(2, seed=5), start_ns=START, days=3)
    for v in vehicles:
        registry.add(v.key.public_key, device_id=v.device_id)
    stored = ingest_blocks(store, registry, ledger, blocks, batch_blocks=100)
    wal = tmp_path / "t.duckdb.wal"
    assert (wal.stat().st_size if wal.exists() else 0) < 2 << 20
    assert (tmp_path / "t.duckdb").stat().st_size > 4 << 20  # the rows are in the file
    assert store.counts()["records"] == stored
