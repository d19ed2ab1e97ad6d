"""The driving score, vt-score/1 (docs/SCORING.md): events, speeding, night, trips, and profiles that
drive differently score differently."""

from __future__ import annotations

import random

import pytest

from edge_agent.sources.vehicle import VehicleModel
from figures.score import STANDARD_G, ScoreParams, detect_events, score, split_trips
from schemas.records import DrivingSample, TriggerEvent

T0 = 1_700_000_000_000_000_000 - 12 * 3600 * 10**9  # 2023-11-14 10:13 UTC: daytime in Europe
S = 10**9


def _sample(
    t_s: float,
    *,
    v: float = 15.0,
    a: float = 0.0,
    lat_a: float = 0.0,
    lon: float | None = 11.5,
    odo: float | None = None,
) -> DrivingSample:
    return DrivingSample(
        ts_ns=T0 + round(t_s * S), speed_mps=v, accel_long_mps2=a, accel_lat_mps2=lat_a, accel_vert_mps2=0.0,
        yaw_rate_radps=0.0, latitude_deg=48.0 if lon is not None else None, longitude_deg=lon, altitude_m=None,
        heading_deg=None, h_accuracy_m=None, accel_pedal_pct=0.0, brake_pedal_pct=0.0, steering_angle_rad=0.0,
        gear=1, odometer_m=odo if odo is not None else 1000.0 + v * t_s,
    )  # fmt: skip


def _drive(seconds: float, hz: float = 10.0, **kw: float) -> list[DrivingSample]:
    return [_sample(i / hz, **kw) for i in range(int(seconds * hz))]


P = ScoreParams()


def test_thresholds_severity_and_merging() -> None:
    g = STANDARD_G
    ss = _drive(60)
    brake = [_sample(10 + i / 10, a=-0.3 * g) for i in range(10)]  # 1 s at 0.3 g: harsh
    severe = [_sample(20 + i / 10, a=-0.5 * g) for i in range(5)]  # 0.5 g: severe
    split = [
        _sample(30, a=-0.3 * g),
        _sample(32, a=-0.3 * g),
        _sample(34.5, a=-0.3 * g),
    ]  # 2 s: one; 2.5 s: two
    corner = [_sample(40, lat_a=-0.35 * g)]
    accel = [_sample(50, a=0.19 * g), _sample(51, a=0.21 * g)]  # below, then at the threshold
    ev = detect_events(sorted(ss + brake + severe + split + corner + accel, key=lambda s: s.ts_ns), [], P)
    got = [(e.kind, e.severe, round((e.start_ns - T0) / S, 1)) for e in ev]
    assert got == [
        ("braking", False, 10.0),
        ("braking", True, 20.0),
        ("braking", False, 30.0),
        ("braking", False, 34.5),
        ("cornering", False, 40.0),
        ("acceleration", False, 51.0),
    ]
    assert ev[1].peak_g == pytest.approx(0.5)


def test_a_vehicle_trigger_joins_or_makes_an_event() -> None:
    g = STANDARD_G
    ss = [*_drive(30), _sample(10, a=-0.3 * g)]
    trig = [
        TriggerEvent(
            T0 + 10 * S + S // 2, "hard_brake", "Vehicle.Acceleration.Longitudinal", -0.6 * g, 0, 0, 50.0
        ),
        TriggerEvent(T0 + 20 * S, "hard_brake", "Vehicle.Acceleration.Longitudinal", -0.3 * g, 0, 0, 50.0),
        TriggerEvent(T0 + 25 * S, "other", "Vehicle.Speed", 50.0, 0, 0, 50.0),
    ]
    ev = detect_events(sorted(ss, key=lambda s: s.ts_ns), trig, P)
    assert [(e.kind, e.severe, e.trigger) for e in ev] == [("braking", True, True), ("braking", False, True)]


def test_speeding_counts_runs_of_at_least_the_minimum() -> None:
    limit = P.speed_limit_mps
    ss = _drive(100, v=20) + [_sample(200 + i / 10, v=limit + 1) for i in range(40)]  # 4 s: no
    ss += [_sample(300 + i / 10, v=limit + 1) for i in range(70)]  # 7 s: yes
    sc = score("d", ss, [], T0, T0 + 10**6 * S)
    assert sc.period.speeding_s == pytest.approx(6.9)  # 70 samples span 6.9 s


def test_night_is_local_solar_time() -> None:
    # 10:13 UTC; at 180° east it is 22:13 solar time: night
    day = score("d", _drive(60, lon=11.5), [], T0, T0 + 100 * S).period
    night = score("d", _drive(60, lon=180.0), [], T0, T0 + 100 * S).period
    assert day.night_s == 0 and night.driving_s > 0 and night.night_s == pytest.approx(night.driving_s)
    assert night.score < day.score


def test_trips_are_split_by_a_long_standstill_or_gap() -> None:
    ss = _drive(60) + [_sample(60 + i, v=0.0) for i in range(400)]  # standing 400 s
    ss += [_sample(500 + i / 10) for i in range(300)]
    ss += [_sample(1200 + i / 10) for i in range(300)]  # a 670 s gap in the data
    assert [(ss[i].ts_ns - T0) // S for i, _ in split_trips(ss, P)] == [0, 500, 1200]


def test_deterministic_whatever_the_order() -> None:
    ss = [r for r in _model("aggressive", 1, 6000) if isinstance(r, DrivingSample)]
    a = score("d", ss, [], T0, T0 + 10**5 * S)
    shuffled = ss[:]
    random.Random(4).shuffle(shuffled)
    assert score("d", shuffled, [], T0, T0 + 10**5 * S) == a


def _model(profile: str, seed: int, ticks: int) -> list[object]:
    m = VehicleModel(seed, start_ns=T0, rate_hz=10.0, profile=profile)
    return [r for _ in range(ticks) for r in m.step()]


def test_aggressive_drivers_score_worse_than_calm_ones() -> None:
    def period(profile: str, seed: int) -> float:
        ss = [r for r in _model(profile, seed, 18_000) if isinstance(r, DrivingSample)]  # 30 min
        return score("d", ss, [], T0, T0 + 10**5 * S).period.score

    calm = [period("calm", s) for s in range(3)]
    normal = [period("normal", s) for s in range(3)]
    aggressive = [period("aggressive", s) for s in range(3)]
    assert min(calm) >= max(aggressive) + 30, (calm, normal, aggressive)
    assert sum(calm) >= sum(normal) >= sum(aggressive), (calm, normal, aggressive)
