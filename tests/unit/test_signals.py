"""Signal catalog and cache: VSS <-> our units, bad input, missing and stale signals."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.signals import (
    BY_FIELD,
    BY_PATH,
    CATALOG,
    CHARGE_POWER_PATH,
    RecordKind,
    Signal,
    SignalCache,
    SignalUpdate,
    record_to_updates,
)
from schemas.block import decode_record, encode_record
from schemas.records import (
    BATTERY_FIELDS,
    DRIVING_FIELDS,
    MAX_TIMESTAMP_NS,
    BatterySample,
    DrivingSample,
    TriggerEvent,
)
from tests.records import battery, driving

T0 = 1_700_000_000_000_000_000
MS = 1_000_000
AGE = 2000 * MS


# -- catalog ---------------------------------------------------------------------------


def test_catalog_covers_every_sample_field_once() -> None:
    assert [s.field for s in CATALOG if s.kind == "driving"] == list(DRIVING_FIELDS[1:])
    assert [s.field for s in CATALOG if s.kind == "battery"] == list(BATTERY_FIELDS[1:])
    assert len(BY_PATH) == len(CATALOG) == 31
    assert {s.field for s in CATALOG if s.optional} == {
        "latitude_deg",
        "longitude_deg",
        "altitude_m",
        "heading_deg",
        "h_accuracy_m",
    }
    assert BY_FIELD["driving", "gear"].type == "int"
    assert BY_FIELD["battery", "is_charging"].type == "bool"
    assert BY_FIELD["battery", "charge_power_w"].path == CHARGE_POWER_PATH
    assert {s.field for s in CATALOG if s.vss_integer} == {
        "accel_pedal_pct",
        "brake_pedal_pct",
        "steering_angle_rad",
        "gear",
    }
    # bounds come from the records' Meta
    assert (BY_FIELD["driving", "speed_mps"].lo, BY_FIELD["driving", "speed_mps"].hi) == (0.0, 200.0)
    assert (BY_FIELD["driving", "gear"].lo, BY_FIELD["driving", "gear"].hi) == (-1.0, 15.0)


@pytest.mark.parametrize(
    ("path", "vss", "ours"),
    [
        ("Vehicle.Speed", 36.0, 10.0),
        ("Vehicle.AngularVelocity.Yaw", 180.0, math.pi),
        ("Vehicle.Chassis.SteeringWheel.Angle", -90, -math.pi / 2),
        ("Vehicle.TraveledDistance", 1.5, 1500.0),
        ("Vehicle.Powertrain.TractionBattery.AccumulatedChargedEnergy", 1.0, 3.6e6),
        ("Vehicle.Powertrain.TractionBattery.AccumulatedConsumedEnergy", 2.0, 7.2e6),
        ("Vehicle.Powertrain.TractionBattery.AccumulatedChargedThroughput", 1.0, 3600.0),
        ("Vehicle.Powertrain.TractionBattery.AccumulatedConsumedThroughput", 0.5, 1800.0),
        ("Vehicle.Acceleration.Longitudinal", -7.0, -7.0),
        ("Vehicle.Chassis.Brake.PedalPosition", 85, 85.0),
    ],
)
def test_conversion_factors(path: str, vss: float, ours: float) -> None:
    cache = SignalCache(AGE)
    assert cache.update([(path, vss, T0)]) == 1
    got = cache.get(path)
    assert got is not None
    assert math.isclose(got[0], ours, rel_tol=1e-12) and got[1] == T0
    assert type(got[0]) is float  # ints from integer VSS types become our floats


def _value(s: Signal) -> st.SearchStrategy[object]:
    if s.type == "bool":
        return st.booleans()
    if s.type == "int":
        return st.integers(int(s.lo), int(s.hi))
    floats = st.floats(s.lo, s.hi, allow_nan=False, allow_infinity=False)
    return st.none() | floats if s.optional else floats


def _record(cls: type[DrivingSample] | type[BatterySample]) -> st.SearchStrategy[object]:
    kind = "driving" if cls is DrivingSample else "battery"
    kwargs = {s.field: _value(s) for s in CATALOG if s.kind == kind}
    return st.builds(cls, ts_ns=st.integers(AGE, MAX_TIMESTAMP_NS), **kwargs)


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300)
    return a == b and type(a) is type(b)


@settings(max_examples=300, deadline=None)
@given(record=_record(DrivingSample) | _record(BatterySample))
def test_every_field_round_trips_ours_to_vss_to_ours(record: DrivingSample | BatterySample) -> None:
    updates = record_to_updates(record, vss_integers=False)
    cache = SignalCache(AGE)
    assert cache.update(updates) == len(updates)
    kind: RecordKind = "driving" if isinstance(record, DrivingSample) else "battery"
    lat_lon = (
        isinstance(record, DrivingSample)
        and record.latitude_deg is not None
        and record.longitude_deg is not None
    )
    rebuilt = cache.build(kind, record.ts_ns)
    assert rebuilt is not None
    for name in type(record).__struct_fields__:
        expected = getattr(record, name)
        if (
            name in ("latitude_deg", "longitude_deg", "altitude_m", "heading_deg", "h_accuracy_m")
            and not lat_lon
        ):
            expected = None  # no position: the cache gives no partial GNSS fix
        assert _same(getattr(rebuilt, name), expected), name
    assert decode_record(encode_record(rebuilt)) == rebuilt  # within the ingest's bounds


@settings(max_examples=200, deadline=None)
@given(record=_record(DrivingSample) | _record(BatterySample))
def test_vss_to_ours_to_vss_round_trips(record: DrivingSample | BatterySample) -> None:
    updates = record_to_updates(record)  # VSS integer types rounded
    cache = SignalCache(AGE)
    cache.update(updates)
    kind: RecordKind = "driving" if isinstance(record, DrivingSample) else "battery"
    rebuilt = cache.build(kind, record.ts_ns)
    assert rebuilt is not None
    again = {p: v for p, v, _ in record_to_updates(rebuilt)}
    for path, v, ts in updates:
        assert ts == record.ts_ns
        if BY_PATH[path].vss_integer:
            assert type(v) is int
        if path in again:
            assert _same(again[path], v), path


def test_integer_vss_types_are_rounded_on_the_way_out() -> None:
    # rounding stays within our range: 30 rad is 1718.87 degrees, 1719 would be out of range
    ((_, deg, _),) = [u for u in record_to_updates(driving(steering_angle_rad=30.0)) if "Steering" in u[0]]
    assert deg == 1718
    ((_, deg, _),) = [u for u in record_to_updates(driving(steering_angle_rad=-30.0)) if "Steering" in u[0]]
    assert deg == -1718
    ups = dict((p, v) for p, v, _ in record_to_updates(driving(accel_pedal_pct=12.6, steering_angle_rad=0.5)))
    assert ups["Vehicle.Chassis.Accelerator.PedalPosition"] == 13
    assert ups["Vehicle.Chassis.SteeringWheel.Angle"] == round(math.degrees(0.5)) == 29
    assert ups["Vehicle.Powertrain.Transmission.CurrentGear"] == 1
    assert ups["Vehicle.Speed"] == pytest.approx(45.0)
    assert ups["Vehicle.TraveledDistance"] == pytest.approx(12_345.678)
    assert record_to_updates(driving(latitude_deg=None, longitude_deg=None, altitude_m=None)) == [
        u for u in record_to_updates(driving()) if not u[0].endswith(("Latitude", "Longitude", "Altitude"))
    ]
    event = TriggerEvent(
        ts_ns=T0,
        name="x",
        signal="Vehicle.Speed",
        value=1.0,
        window_start_ns=T0,
        window_end_ns=T0,
        rate_hz=1.0,
    )
    assert record_to_updates(event) == []


# -- bad input ---------------------------------------------------------------------------


def test_bad_input_is_counted_and_ignored() -> None:
    cache = SignalCache(AGE)
    cache.update(record_to_updates(driving()))
    before = cache.snapshot()
    bad: list[object] = [
        ("Vehicle.Bogus", 1.0, T0),
        ("Vehicle.Bogus", 2.0, T0),
        ("Vehicle.Speed", "fast", T0),
        ("Vehicle.Speed", None, T0),
        ("Vehicle.Speed", True, T0),  # a bool is not a number here
        ("Vehicle.Speed", math.nan, T0),
        ("Vehicle.Speed", math.inf, T0),
        ("Vehicle.Speed", 10**400, T0),  # too large for a float
        ("Vehicle.Speed", 1000.0, T0),  # 277 m/s: outside 0..200
        ("Vehicle.Speed", -1.0, T0),
        ("Vehicle.Powertrain.Transmission.CurrentGear", 1.5, T0),
        ("Vehicle.Powertrain.Transmission.CurrentGear", 16, T0),
        ("Vehicle.Chassis.Accelerator.PedalPosition", 255, T0),  # CAN "not available"
        ("Vehicle.Powertrain.TractionBattery.Charging.IsCharging", 2, T0),
        ("Vehicle.Powertrain.TractionBattery.Charging.IsCharging", "yes", T0),
        ("Vehicle.Speed", 10.0, -1),
        ("Vehicle.Speed", 10.0, 2**63),
        ("Vehicle.Speed", 10.0, 2**63 - 1),  # the store's "infinity": not a time
        ("Vehicle.Speed", 10.0, 1.7e18),
        ("Vehicle.Speed", 10.0),
        "Vehicle.Speed",
        None,
        (["unhashable"], 1.0, T0),
        (42, 1.0, T0),
    ]
    assert cache.update(bad) == 0  # type: ignore[arg-type]
    assert cache.snapshot() == before
    s = cache.stats
    assert s.unknown == {"Vehicle.Bogus": 2, "<not a string>": 1}
    assert s.bad_value == {
        "Vehicle.Speed": 6,
        "Vehicle.Powertrain.Transmission.CurrentGear": 1,
        "Vehicle.Powertrain.TractionBattery.Charging.IsCharging": 2,
    }
    assert s.out_of_range == {
        "Vehicle.Speed": 2,
        "Vehicle.Powertrain.Transmission.CurrentGear": 1,
        "Vehicle.Chassis.Accelerator.PedalPosition": 1,
    }
    assert s.bad_update == 8
    assert cache.driving(T0) is not None


def test_lenient_but_exact_types() -> None:
    cache = SignalCache(AGE)
    n = cache.update(
        [
            ("Vehicle.Powertrain.Transmission.CurrentGear", 3.0, T0),  # integral float
            ("Vehicle.Powertrain.TractionBattery.Charging.IsCharging", 1, T0),  # 0/1
            ("Vehicle.Speed", 720.0, T0),  # exactly the 200 m/s bound after conversion
        ]
    )
    assert n == 3
    assert cache.get("Vehicle.Powertrain.Transmission.CurrentGear") == (3, T0)
    assert cache.get("Vehicle.Powertrain.TractionBattery.Charging.IsCharging") == (True, T0)
    got = cache.get("Vehicle.Speed")
    assert got is not None and got[0] <= 200.0


def test_late_updates_do_not_overwrite_newer_values() -> None:
    cache = SignalCache(AGE)
    cache.update([("Vehicle.Speed", 36.0, T0 + 10)])
    cache.update([("Vehicle.Speed", 72.0, T0)])
    got = cache.get("Vehicle.Speed")
    assert got is not None and got[0] == pytest.approx(10.0) and got[1] == T0 + 10
    assert cache.stats.late == {"Vehicle.Speed": 1}


# -- building records -----------------------------------------------------------------


def test_missing_required_signal_gives_no_record_and_is_counted() -> None:
    cache = SignalCache(AGE)
    cache.update([u for u in record_to_updates(driving()) if u[0] != "Vehicle.Speed"])
    assert cache.driving(T0) is None
    assert cache.driving(T0 + MS) is None
    assert cache.stats.missing == {"Vehicle.Speed": 2}
    assert cache.battery(T0) is None
    assert cache.stats.missing["Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"] == 1


def test_stale_signal_gives_no_record_and_gnss_becomes_none() -> None:
    cache = SignalCache(AGE)
    cache.update(record_to_updates(driving()))
    fresh = cache.driving(T0 + AGE)  # exactly max_age old: still fresh
    assert fresh is not None and fresh.ts_ns == T0 + AGE and fresh.speed_mps == pytest.approx(12.5)
    later = T0 + AGE + 1
    gnss = ("Latitude", "Longitude", "Altitude", "Heading", "HorizontalAccuracy")
    cache.update([(p, v, later) for p, v, _ in record_to_updates(driving()) if not p.endswith(gnss)])
    rec = cache.driving(later)
    assert rec is not None
    assert (rec.latitude_deg, rec.longitude_deg, rec.altitude_m, rec.heading_deg, rec.h_accuracy_m) == (
        None,
    ) * 5
    cache.update([("Vehicle.Speed", 10.0, later + 1)])
    # everything but speed goes stale at later + AGE + 1
    assert cache.driving(later + AGE + 1) is None
    assert cache.stats.stale["Vehicle.Acceleration.Longitudinal"] == 1
    assert "Vehicle.Speed" not in cache.stats.stale


def test_a_position_needs_latitude_and_longitude() -> None:
    cache = SignalCache(AGE)
    cache.update([u for u in record_to_updates(driving()) if not u[0].endswith("Longitude")])
    rec = cache.driving(T0)
    assert rec is not None and rec.latitude_deg is None and rec.altitude_m is None and rec.speed_mps == 12.5


def test_snapshot_is_frozen() -> None:
    cache = SignalCache(AGE)
    cache.update(record_to_updates(battery()))
    snap = cache.snapshot()
    cache.update([("Vehicle.Powertrain.TractionBattery.StateOfCharge.Current", 60.0, T0 + 1)])
    old, new = cache.build("battery", T0 + 1, snap), cache.battery(T0 + 1)
    assert isinstance(old, BatterySample) and new is not None
    assert old.soc_pct == 55.0 and new.soc_pct == 60.0


def test_inputs_contract_alias() -> None:
    u: SignalUpdate = ("Vehicle.Speed", 1.0, T0)
    assert len(u) == 3
