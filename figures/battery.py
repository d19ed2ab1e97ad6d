"""The battery passport's in-use figures, algorithm ``vt-battery/1`` (docs/BATTERY.md).

From a vehicle's signed battery samples: state of health (SOCE) over time, equivalent full cycles,
energy and capacity throughput, charging sessions, time (and charging) at extreme temperatures,
deep discharges and an internal-resistance estimate. Pure and deterministic, like the score: the
same samples and parameters give the same figures, so ``verify-proof --recompute-passport`` repeats
them from a completeness bundle alone. Output names follow the BatteryPass data model 1.2.0
(``PerformanceAndDurability.batteryCondition``); the mapping is in docs/BATTERY.md.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from schemas.records import BatterySample

ALGORITHM = "vt-battery/1"
Pos = Annotated[float, Meta(gt=0)]
DAY_NS = 86_400 * 10**9


class PassportParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # The pack's rated (certified usable) energy and rated capacity: cycles and fades are relative to them.
    rated_energy_kwh: Pos = 75.0
    rated_capacity_ah: Pos = 75_000.0 / 355.2  # 75 kWh at a nominal 355.2 V
    # Extreme temperatures (the hottest / coldest cell), °C.
    high_temp_c: float = 40.0
    low_temp_c: float = -10.0
    # A deep discharge: state of charge at or below this, %.
    deep_discharge_pct: Annotated[float, Meta(ge=0, le=100)] = 5.0
    # A charging session at or above this charger power is high-power (DC fast) charging, W.
    high_power_w: Pos = 50_000.0
    # Time between two samples counts only if they are at most this far apart; a charging session
    # ends at a longer gap.
    max_step_s: Pos = 120.0
    # Internal resistance: a current step of at least this between two samples at most
    # resistance_step_s apart gives one estimate |ΔV / ΔI| of the pack's ohmic resistance.
    resistance_min_step_a: Pos = 50.0
    resistance_step_s: Pos = 2.0
    # The pack's begin-of-life internal resistance (the passport's initialInternalResistance), if known:
    # then internalResistanceIncrease is reported against it.
    initial_resistance_ohm: Pos | None = None


class Session(msgspec.Struct, frozen=True):
    start_ns: int
    end_ns: int
    energy_kwh: float
    peak_power_kw: float
    high_power_share: float  # of the session's energy, charged at >= high_power_w


class Passport(msgspec.Struct, frozen=True):
    algorithm: str
    params: PassportParams
    device_id: str
    from_ns: int
    to_ns: int
    samples: int
    equivalent_full_cycles: float  # discharged energy / rated energy
    battery_condition: dict[str, Any]  # BatteryPass names
    soh_by_day: list[tuple[int, float]]  # (day start ns, mean SoH %), days with samples
    throughput_by_day: list[
        tuple[int, float]
    ]  # (day start ns, energy throughput so far, kWh) at the day's end
    charging_sessions: list[Session]
    deep_discharges: list[tuple[int, float]]  # (start ns, lowest SoC %)
    resistance: dict[str, Any]  # the estimate and how good it is


def _increase(values: Iterable[float]) -> float:
    """The sum of a cumulative counter's increases (a decrease is a reset, not negative use)."""
    return sum(max(0.0, b - a) for a, b in itertools.pairwise(values))


def passport(
    device_id: str,
    samples: Iterable[BatterySample],
    from_ns: int,
    to_ns: int,
    params: PassportParams | None = None,
) -> Passport:
    p = params or PassportParams()
    ss = sorted(
        (s for s in samples if from_ns <= s.ts_ns <= to_ns),
        key=lambda s: (s.ts_ns, s.charged_energy_j, s.consumed_energy_j, s.soc_pct),
    )
    step_ns = round(p.max_step_s * 1e9)
    charged_j = _increase(s.charged_energy_j for s in ss)
    discharged_j = _increase(s.consumed_energy_j for s in ss)
    charged_c = _increase(s.charged_throughput_c for s in ss)
    discharged_c = _increase(s.consumed_throughput_c for s in ss)
    hot = cold = hot_chg = cold_chg = 0.0
    for a, b in itertools.pairwise(ss):
        dt_ns = b.ts_ns - a.ts_ns
        if dt_ns <= 0 or dt_ns > step_ns:
            continue
        minutes = dt_ns / 6e10
        if a.temp_max_c >= p.high_temp_c:
            hot += minutes
            hot_chg += minutes if a.is_charging else 0.0
        if a.temp_min_c <= p.low_temp_c:
            cold += minutes
            cold_chg += minutes if a.is_charging else 0.0
    sessions = _sessions(ss, p, step_ns)
    deep = _deep_discharges(ss, p)
    days: dict[int, list[float]] = {}
    for s in ss:
        days.setdefault(s.ts_ns // DAY_NS * DAY_NS, []).append(s.soh_pct)
    soh_by_day = [(d, sum(v) / len(v)) for d, v in sorted(days.items())]
    throughput_by_day: list[tuple[int, float]] = []
    total_j = 0.0
    for a, b in itertools.pairwise(ss):
        total_j += max(0.0, b.charged_energy_j - a.charged_energy_j) + max(
            0.0, b.consumed_energy_j - a.consumed_energy_j
        )
        day = b.ts_ns // DAY_NS * DAY_NS
        if throughput_by_day and throughput_by_day[-1][0] == day:
            throughput_by_day[-1] = (day, total_j / 3.6e6)
        else:
            throughput_by_day.append((day, total_j / 3.6e6))
    last = ss[-1] if ss else None
    resistance = _resistance(ss, p)
    soce = last.soh_pct if last else None
    condition: dict[str, Any] = {
        "energyThroughput": (charged_j + discharged_j) / 3.6e6,
        "capacityThroughput": {"capacityThroughputValue": (charged_c + discharged_c) / 3600.0},
        "numberOfFullCycles": {"numberOfFullCyclesValue": int(discharged_j / 3.6e6 / p.rated_energy_kwh)},
        "stateOfCertifiedEnergy": {"stateOfCertifiedEnergyValue": soce},
        # (sic: the data model 1.2.0 spells this property "remainingEnergyalue")
        "remainingEnergy": {"remainingEnergyalue": None if soce is None else p.rated_energy_kwh * soce / 100},
        "remainingCapacity": {
            "remainingCapacityValue": None if soce is None else p.rated_capacity_ah * soce / 100
        },
        "capacityFade": {"capacityFadeValue": None if soce is None else 100.0 - soce},
        "stateOfCharge": {"stateOfChargeValue": last.soc_pct if last else None},
        "temperatureInformation": {
            "timeExtremeHighTemp": hot,
            "timeExtremeLowTemp": cold,
            "timeExtremeHighTempCharging": hot_chg,
            "timeExtremeLowTempCharging": cold_chg,
        },
        "negativeEvents": [
            {"negativeEvent": f"deep discharge to {soc:.1f} % state of charge", "lastUpdate": t}
            for t, soc in deep
        ],
        "internalResistanceIncrease": []
        if resistance["ohm"] is None or p.initial_resistance_ohm is None
        else [
            {
                "internalResistanceIncreaseValue": 100.0
                * (resistance["ohm"] - p.initial_resistance_ohm)
                / p.initial_resistance_ohm,
                "batteryComponent": "pack",
            }
        ],
    }
    if last is not None:
        for v in condition.values():
            for entry in v if isinstance(v, list) else [v] if isinstance(v, dict) else []:
                entry.setdefault("lastUpdate", last.ts_ns)
    return Passport(
        algorithm=ALGORITHM,
        params=p,
        device_id=device_id,
        from_ns=from_ns,
        to_ns=to_ns,
        samples=len(ss),
        equivalent_full_cycles=discharged_j / 3.6e6 / p.rated_energy_kwh,
        battery_condition=condition,
        soh_by_day=soh_by_day,
        throughput_by_day=throughput_by_day,
        charging_sessions=sessions,
        deep_discharges=deep,
        resistance=resistance,
    )


def _sessions(ss: Sequence[BatterySample], p: PassportParams, step_ns: int) -> list[Session]:
    out: list[Session] = []
    run: list[BatterySample] = []
    for s in [*ss, None]:
        if s is not None and s.is_charging and (not run or s.ts_ns - run[-1].ts_ns <= step_ns):
            run.append(s)
            continue
        if run:
            energy_j = high_j = 0.0
            for a, b in itertools.pairwise(run):
                e = max(0.0, b.charged_energy_j - a.charged_energy_j)
                energy_j += e
                if a.charge_power_w >= p.high_power_w:
                    high_j += e
            peak = max(max(r.charge_power_w for r in run), max(r.power_w for r in run))
            out.append(
                Session(
                    run[0].ts_ns,
                    run[-1].ts_ns,
                    energy_j / 3.6e6,
                    peak / 1000.0,
                    high_j / energy_j if energy_j else 0.0,
                )
            )
            run = []
        if s is not None and s.is_charging:
            run.append(s)
    return out


def _deep_discharges(ss: Sequence[BatterySample], p: PassportParams) -> list[tuple[int, float]]:
    out: list[tuple[int, float]] = []
    low: tuple[int, float] | None = None
    for s in ss:
        if s.soc_pct <= p.deep_discharge_pct:
            low = (low[0], min(low[1], s.soc_pct)) if low else (s.ts_ns, s.soc_pct)
        elif low:
            out.append(low)
            low = None
    if low:
        out.append(low)
    return out


def _resistance(ss: Sequence[BatterySample], p: PassportParams) -> dict[str, Any]:
    """Ohmic resistance from current steps: over a short step the open-circuit voltage barely moves,
    so ΔV ≈ R·ΔI. The median of the estimates, with their count and interquartile range."""
    step_ns = round(p.resistance_step_s * 1e9)
    est = [
        abs((b.pack_voltage_v - a.pack_voltage_v) / (b.pack_current_a - a.pack_current_a))
        for a, b in itertools.pairwise(ss)
        if 0 < b.ts_ns - a.ts_ns <= step_ns
        and abs(b.pack_current_a - a.pack_current_a) >= p.resistance_min_step_a
    ]
    if len(est) < 4:
        return {"ohm": None, "steps": len(est), "iqr_ohm": None}
    q = statistics.quantiles(est, n=4)
    return {"ohm": statistics.median(est), "steps": len(est), "iqr_ohm": q[2] - q[0]}
