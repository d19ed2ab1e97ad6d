"""Shared record factories for the tests: a plausible record of each kind at ``ts``, any field
overridden by keyword (``driving(T0, speed_mps=3.0)``)."""

from __future__ import annotations

import math

import msgspec

from schemas.records import BatterySample, DrivingSample, TriggerEvent

T0 = 1_700_000_000_000_000_000

_DRIVING = DrivingSample(
    ts_ns=T0,
    speed_mps=12.5,
    accel_long_mps2=-0.3,
    accel_lat_mps2=0.2,
    accel_vert_mps2=0.05,
    yaw_rate_radps=0.01,
    latitude_deg=48.137,
    longitude_deg=11.575,
    altitude_m=520.0,
    heading_deg=90.0,
    h_accuracy_m=2.5,
    accel_pedal_pct=12.0,
    brake_pedal_pct=0.0,
    steering_angle_rad=math.radians(30.0),
    gear=1,
    odometer_m=12_345_678.0,
)
_BATTERY = BatterySample(
    ts_ns=T0,
    soc_pct=55.0,
    soh_pct=96.0,
    pack_voltage_v=380.0,
    pack_current_a=-20.0,
    power_w=-7600.0,
    temp_min_c=24.0,
    temp_max_c=27.0,
    temp_avg_c=25.0,
    cell_voltage_min_v=3.95,
    cell_voltage_max_v=3.97,
    charged_energy_j=7.2e6,
    consumed_energy_j=3.6e7,
    charged_throughput_c=36_000.0,
    consumed_throughput_c=72_000.0,
    is_charging=False,
    charge_power_w=0.0,
)
_TRIGGER = TriggerEvent(
    ts_ns=T0,
    name="hard_brake",
    signal="Vehicle.Acceleration.Longitudinal",
    value=-7.0,
    window_start_ns=T0,
    window_end_ns=T0,
    rate_hz=50.0,
)


def driving(ts: int = T0, **kw: object) -> DrivingSample:
    return msgspec.structs.replace(_DRIVING, ts_ns=ts, **kw)


def battery(ts: int = T0, **kw: object) -> BatterySample:
    return msgspec.structs.replace(_BATTERY, ts_ns=ts, **kw)


def trigger(ts: int = T0, **kw: object) -> TriggerEvent:
    return msgspec.structs.replace(_TRIGGER, ts_ns=ts, **kw)
