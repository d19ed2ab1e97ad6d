"""A fleet's life (simulators/life.py): batteries age faster hot and with cycles, aggressive drivers score
worse than calm ones, and the lives go through the real commit sequence into a store whose figures
prove and recompute."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edge_agent.sources.vehicle import VehicleModel
from figures.score import score
from schemas.block import decode_envelope, decode_header
from schemas.crypto import SigningKey
from schemas.records import BatterySample, DrivingSample, Record
from simulators.life import LifeVehicle, life_records, seal_day
from simulators.offline import OfflineVehicle

START = 1_767_225_600_000_000_000  # 2026-01-01T00:00Z
DAY = 86_400 * 10**9


def _live(v: LifeVehicle, days: int) -> tuple[VehicleModel, list[Record]]:
    m = VehicleModel(v.seed, start_ns=START, rate_hz=1.0, battery_every=10, profile=v.profile, soh_pct=100.0)
    return m, [r for day in life_records(v, m, START, days) for r in day]


def test_batteries_age_faster_hot_and_with_more_cycles() -> None:
    soh = {
        (climate, usage): _live(LifeVehicle("normal", climate, usage, seed=7), 20)[0].soh_pct
        for climate in ("cold", "hot")
        for usage in ("light", "heavy")
    }
    assert soh[("hot", "light")] < soh[("cold", "light")] < 100.0, soh
    assert soh[("hot", "heavy")] < soh[("hot", "light")], soh
    assert soh[("cold", "heavy")] < soh[("cold", "light")], soh


def test_aggressive_drivers_score_worse_over_their_days() -> None:
    def period_score(profile: str) -> float:
        _, recs = _live(LifeVehicle(profile, "temperate", "commuter", seed=11), 7)
        ds = [r for r in recs if isinstance(r, DrivingSample)]
        return score("d", ds, [], START, START + 7 * DAY).period.score

    calm, aggressive = period_score("calm"), period_score("aggressive")
    assert calm >= aggressive + 40, (calm, aggressive)


def test_days_are_parked_at_night_and_blocks_never_span_the_night() -> None:
    v = LifeVehicle("normal", "temperate", "commuter", seed=3)
    m, recs = _live(v, 3)
    assert [r.ts_ns for r in recs] == sorted(r.ts_ns for r in recs)
    night = [r for r in recs if (r.ts_ns % DAY) < 5 * 3600 * 10**9]
    assert night and all(isinstance(r, BatterySample) for r in night)  # parked: battery samples only
    ov = OfflineVehicle(SigningKey.generate(), m)
    for wire in seal_day(ov, recs, block_records=100, block_age_s=60.0):
        h = decode_header(decode_envelope(wire).header)
        assert h.t_last - h.t_first <= 60 * 10**9 and h.count <= 100


def test_life_command_stores_a_fleet_whose_passport_proves_and_recomputes(tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[store]\nbackend = "duckdb"\n')

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ingest.cli", "--config", str(cfg), *argv],
            capture_output=True,
            text=True,
            timeout=300,
        )

    r = cli("life", "--vehicles", "3", "--days", "3", "--start", "2026-01-01T00:00Z")
    assert r.returncode == 0 and "every batch anchored" in r.stdout, r.stdout + r.stderr
    table = r.stdout.splitlines()[-3:]
    assert [line.split()[1] for line in table] == [
        "calm/cold/light",
        "normal/cold/commuter",
        "aggressive/cold/heavy",
    ]
    devices = json.loads(
        cli("query", "SELECT device_id FROM devices ORDER BY device_id", "--format", "json").stdout
    )
    device = devices[0]["device_id"]
    out = tmp_path / "passport.json"
    r = cli("battery-passport", "--device", device, "--from", "2026-01-02T00:00Z", "--to", "2026-01-03T00:00Z",
            "--prove", str(out))  # fmt: skip
    assert r.returncode == 0 and "COMPLETE device" in r.stdout, r.stdout + r.stderr
    pub = (tmp_path / "data" / "ingest.key.pub").read_text().strip()
    r = cli("verify-proof", str(out), "--operator-key", pub, "--recompute-passport")
    assert r.returncode == 0 and "RECOMPUTED battery-passport" in r.stdout, r.stdout + r.stderr
