"""The battery passport, vt-battery/1 (docs/BATTERY.md): counters, sessions, temperatures, deep
discharges, the resistance estimate, and names that are the BatteryPass model's as the doc maps them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from edge_agent.sources.vehicle import PACK_RESISTANCE_OHM, VehicleModel
from figures.battery import PassportParams, passport
from schemas.records import BatterySample

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000_000_000_000
S = 10**9


def _b(t_s: float, **kw: Any) -> BatterySample:
    base: dict[str, Any] = dict(
        soc_pct=50.0, soh_pct=97.0, pack_voltage_v=360.0, pack_current_a=0.0, power_w=0.0, temp_min_c=20.0,
        temp_max_c=22.0, temp_avg_c=21.0, cell_voltage_min_v=3.7, cell_voltage_max_v=3.72, charged_energy_j=0.0,
        consumed_energy_j=0.0, charged_throughput_c=0.0, consumed_throughput_c=0.0, is_charging=False,
        charge_power_w=0.0,
    )  # fmt: skip
    return BatterySample(ts_ns=T0 + round(t_s * S), **{**base, **kw})


def test_counters_sum_increases_and_survive_a_reset() -> None:
    kwh = 3.6e6
    ss = [_b(0, consumed_energy_j=10 * kwh), _b(1, consumed_energy_j=40 * kwh), _b(2, consumed_energy_j=5 * kwh),
          _b(3, consumed_energy_j=50 * kwh)]  # fmt: skip
    pp = passport("d", ss, T0, T0 + 10 * S, PassportParams(rated_energy_kwh=50.0))
    assert pp.equivalent_full_cycles == pytest.approx(75 / 50)  # 30 + (reset) + 45 kWh
    assert pp.battery_condition["numberOfFullCycles"]["numberOfFullCyclesValue"] == 1
    assert pp.battery_condition["energyThroughput"] == pytest.approx(75.0)


def test_sessions_temperatures_and_deep_discharges() -> None:
    kwh = 3.6e6
    ss = [_b(t, is_charging=True, charge_power_w=150e3 if t < 30 else 11e3, charged_energy_j=t * kwh,
             temp_max_c=45.0 if t < 10 else 30.0) for t in range(0, 60, 10)]  # fmt: skip
    ss += [
        _b(1000 + t, is_charging=True, charge_power_w=7e3, charged_energy_j=(60 + t) * kwh)
        for t in range(0, 30, 10)
    ]
    ss += [_b(2000 + t, soc_pct=soc, temp_min_c=-15.0) for t, soc in enumerate([8, 4.5, 3.0, 6.0, 4.0])]
    pp = passport("d", ss, T0, T0 + 10**5 * S)
    a, b = pp.charging_sessions
    assert (a.energy_kwh, a.peak_power_kw, a.high_power_share) == pytest.approx((50.0, 150.0, 0.6))
    assert (b.energy_kwh, b.high_power_share) == pytest.approx((20.0, 0.0))
    t = pp.battery_condition["temperatureInformation"]
    assert (
        t["timeExtremeHighTemp"] == pytest.approx(10 / 60)
        and t["timeExtremeHighTempCharging"] == t["timeExtremeHighTemp"]
    )
    assert t["timeExtremeLowTemp"] == pytest.approx(4 / 60) and t["timeExtremeLowTempCharging"] == 0
    assert [(round((s - T0) / S), soc) for s, soc in pp.deep_discharges] == [(2001, 3.0), (2004, 4.0)]
    assert len(pp.battery_condition["negativeEvents"]) == 2


def test_the_resistance_estimate_recovers_the_packs() -> None:
    m = VehicleModel(5, start_ns=T0, rate_hz=10.0)
    ss = [r for _ in range(36_000) for r in m.step() if isinstance(r, BatterySample)]
    r = passport("d", ss, T0, T0 + 10**6 * S, PassportParams(initial_resistance_ohm=0.05)).resistance
    assert r["steps"] > 100 and r["ohm"] == pytest.approx(PACK_RESISTANCE_OHM, abs=0.001)
    inc = passport("d", ss, T0, T0 + 10**6 * S, PassportParams(initial_resistance_ohm=0.05))
    assert inc.battery_condition["internalResistanceIncrease"][0][
        "internalResistanceIncreaseValue"
    ] == pytest.approx(20.0, abs=2.5)


def test_names_are_the_ones_the_mapping_documents() -> None:
    """Every BatteryPass name the passport writes is in docs/BATTERY.md's mapping, and back."""
    doc = (ROOT / "docs" / "BATTERY.md").read_text()
    table = doc[
        doc.index("| figure | BatteryPass name") : doc.index("Every object (and every list entry) carries")
    ]
    documented = set()
    for cell in re.findall(r"^\|[^|]*\| ([^|]*) \|", table, re.M)[2:]:
        for path in re.findall(r"`([A-Za-z.\[\]…]+)`", cell):
            documented.add(path)

    def names(prefix: str, v: Any) -> set[str]:
        if isinstance(v, dict):
            out = set()
            for k, x in v.items():
                if k != "lastUpdate":
                    out |= names(f"{prefix}.{k}" if prefix else k, x) or {f"{prefix}.{k}" if prefix else k}
            return out
        if isinstance(v, list) and v:
            return names(prefix + "[]", v[0])
        return set()

    m = VehicleModel(5, start_ns=T0, rate_hz=10.0)
    ss = [r for _ in range(3000) for r in m.step() if isinstance(r, BatterySample)] + [_b(10**4, soc_pct=4.0)]
    bc = msgspec.to_builtins(
        passport("d", ss, T0, T0 + 10**5 * S, PassportParams(initial_resistance_ohm=1.0))
    )
    assert names("", bc["battery_condition"]) == documented
