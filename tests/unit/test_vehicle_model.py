"""Vehicle simulator: determinism, schema bounds, timing, battery bookkeeping, charging."""

from __future__ import annotations

import itertools
import math

import pytest

from edge_agent.sources.vehicle import SimulatedSource, VehicleModel
from schemas.block import decode_record, encode_record
from schemas.records import BatterySample, DrivingSample, Record

START_NS = 1_700_000_000_000_000_000


def run(seed: int, ticks: int, *, rate_hz: float = 10.0, battery_every: int = 10) -> list[Record]:
    model = VehicleModel(seed, start_ns=START_NS, rate_hz=rate_hz, battery_every=battery_every)
    return list(SimulatedSource(model, ticks=ticks).samples())


def split(records: list[Record]) -> tuple[list[DrivingSample], list[BatterySample]]:
    driving = [r for r in records if isinstance(r, DrivingSample)]
    battery = [r for r in records if isinstance(r, BatterySample)]
    return driving, battery


def test_same_seed_is_deterministic_and_seeds_differ() -> None:
    assert run(3, 500) == run(3, 500)
    assert run(3, 500) != run(4, 500)


@pytest.mark.parametrize("seed", [1, 2, 5, 11, 42])
def test_every_record_round_trips_through_the_validating_decoder(seed: int) -> None:
    records = run(seed, 3000)
    for record in records:
        assert decode_record(encode_record(record)) == record
    driving, battery = split(records)
    for d in driving:
        assert d.speed_mps >= 0.0
        assert -6.5 <= d.accel_long_mps2 <= 3.5
        assert isinstance(d.speed_mps, float) and isinstance(d.odometer_m, float)
        if d.speed_mps == 0.0:
            assert d.gear == 0
        else:
            assert d.gear == 1
    for b in battery:
        assert b.temp_min_c <= b.temp_avg_c <= b.temp_max_c
        assert b.cell_voltage_min_v <= b.cell_voltage_max_v
        assert 92.0 <= b.soh_pct <= 99.0
        assert isinstance(b.power_w, float) and isinstance(b.pack_current_a, float)


@pytest.mark.parametrize(("rate_hz", "every", "ticks"), [(10.0, 10, 3000), (4.0, 7, 101), (1.0, 1, 50)])
def test_timestamps_and_battery_cadence(rate_hz: float, every: int, ticks: int) -> None:
    records = run(7, ticks, rate_hz=rate_hz, battery_every=every)
    driving, battery = split(records)
    assert len(driving) == ticks
    assert len(battery) == math.ceil(ticks / every)
    step_ns = round(1e9 / rate_hz)
    assert driving[0].ts_ns == START_NS
    assert all(b.ts_ns - a.ts_ns == step_ns for a, b in itertools.pairwise(driving))
    assert battery[0].ts_ns == START_NS
    # A battery sample directly follows the driving sample it shares a timestamp with.
    for i, r in enumerate(records):
        if isinstance(r, BatterySample):
            prev = records[i - 1]
            assert isinstance(prev, DrivingSample) and prev.ts_ns == r.ts_ns


def test_soc_falls_while_driving_and_odometer_and_energies_accumulate() -> None:
    driving, battery = split(run(1, 6000))
    assert not any(b.is_charging for b in battery)
    assert battery[-1].soc_pct < battery[0].soc_pct
    assert max(d.speed_mps for d in driving) > 8.0
    assert driving[-1].odometer_m > driving[0].odometer_m
    for a, b in itertools.pairwise(battery):
        assert b.charged_energy_j >= a.charged_energy_j
        assert b.consumed_energy_j >= a.consumed_energy_j
        assert b.charged_throughput_c >= a.charged_throughput_c
        assert b.consumed_throughput_c >= a.consumed_throughput_c
    for d0, d1 in itertools.pairwise(driving):
        assert d1.odometer_m >= d0.odometer_m


def test_initial_charging_session_for_seeds_divisible_by_five() -> None:
    records = run(10, 3000)
    driving, battery = split(records)
    charging = [b for b in battery if b.is_charging]
    assert charging and battery[0].is_charging
    charging_ts = {b.ts_ns for b in charging}
    for b in charging:
        assert 50_000.0 <= b.charge_power_w <= 150_000.0
        assert b.pack_current_a > 0.0 and b.power_w > 0.0
    assert all(d.speed_mps == 0.0 and d.gear == 0 for d in driving if d.ts_ns in charging_ts)
    assert charging[-1].soc_pct > charging[0].soc_pct
    assert not battery[-1].is_charging  # the session is short, then the car drives off
    assert max(d.speed_mps for d in driving) > 0.0


def test_low_soc_stops_the_car_and_charges_to_about_80_percent() -> None:
    model = VehicleModel(1, start_ns=START_NS)  # seed 1 starts at about 35 % SoC
    session: list[BatterySample] = []
    was_low = False
    for _ in range(10 * 3600 * 3):  # at most three simulated hours
        records = model.step()
        driving = records[0]
        assert isinstance(driving, DrivingSample)
        battery = records[1] if len(records) > 1 else None
        if not isinstance(battery, BatterySample):
            continue
        # Regen while braking to the stop can lift SoC back just above 20 % between samples.
        was_low = was_low or battery.soc_pct < 21.0
        if was_low and battery.is_charging:
            assert driving.speed_mps == 0.0 and driving.gear == 0
            session.append(battery)
        elif session:
            break
    assert session, "the battery never ran low and recharged"
    assert session[0].soc_pct < 21.0
    assert 77.0 <= session[-1].soc_pct <= 83.0
