"""Figures from the store: the records a driving score or a battery passport is computed from, as the
vehicle signed them (decoded from ``raw``, so the numbers are the ones a proof bundle carries)."""

from __future__ import annotations

from typing import Any

from common.times import iso_utc
from figures.battery import Passport
from figures.score import Score
from ingest.storage.store import Store
from schemas.block import decode_record
from schemas.records import BatterySample, DrivingSample, TriggerEvent


def _records(store: Store, table: str, device_id: str, from_ns: int, to_ns: int) -> list[Any]:
    """The device's records of ``table`` with ``from_ns <= ts <= to_ns``, decoded from ``raw``."""
    rows = store.con.execute(
        f"SELECT raw FROM {table} WHERE device_id = ? AND epoch_ns(ts) BETWEEN ? AND ? ORDER BY ts, block_seq, idx",
        [device_id, from_ns, to_ns],
    ).fetchall()
    return [decode_record(bytes(r[0])) for r in rows]


def driving_records(
    store: Store, device_id: str, from_ns: int, to_ns: int
) -> tuple[list[DrivingSample], list[TriggerEvent]]:
    """The device's driving samples and trigger events with ``from_ns <= ts <= to_ns``."""
    return (
        _records(store, "driving_samples", device_id, from_ns, to_ns),
        _records(store, "trigger_events", device_id, from_ns, to_ns),
    )


def battery_records(store: Store, device_id: str, from_ns: int, to_ns: int) -> list[BatterySample]:
    """The device's battery samples with ``from_ns <= ts <= to_ns``."""
    return _records(store, "battery_samples", device_id, from_ns, to_ns)


def declared_drops(store: Store, device_id: str, from_ns: int, to_ns: int) -> tuple[int, int]:
    """Blocks and records the vehicle declared dropped by its spool while it sealed the period."""
    row = store.con.execute(
        "SELECT coalesce(sum(last_seq - first_seq + 1), 0), coalesce(sum(records), 0) FROM spool_drops"
        " WHERE device_id = $1 AND first_seq <= (SELECT max(seq) FROM blocks WHERE device_id = $1"
        " AND epoch_ns(t_first) <= $3) AND last_seq >= (SELECT min(seq) FROM blocks WHERE device_id = $1"
        " AND epoch_ns(t_last) >= $2)",
        [device_id, from_ns, to_ns],
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def fleet_table(
    store: Store, devices: list[tuple[str, str]], from_ns: int, to_ns: int
) -> list[dict[str, Any]]:
    """Per vehicle (``(device_id, label)``): distance, driving score, harsh events, SoH at the start
    and end, equivalent full cycles: the figures of docs/SCORING.md and docs/BATTERY.md."""
    from figures.battery import passport
    from figures.score import score

    rows = []
    for device, label in devices:
        ds, ts = driving_records(store, device, from_ns, to_ns)
        bs = battery_records(store, device, from_ns, to_ns)
        sc = score(device, ds, ts, from_ns, to_ns).period
        pp = passport(device, bs, from_ns, to_ns)
        rows.append(
            {
                "device_id": device,
                "label": label,
                "km": sc.distance_km,
                "score": sc.score,
                "harsh_per_100km": 100 * sum(sc.events.values()) / max(sc.distance_km, 1.0),
                "soh_start": pp.soh_by_day[0][1] if pp.soh_by_day else None,
                "soh_end": pp.soh_by_day[-1][1] if pp.soh_by_day else None,
                "full_cycles": pp.equivalent_full_cycles,
                "fast_charge_share": _fast_share(pp),
            }
        )
    return rows


def _fast_share(pp: Any) -> float:
    total = sum(s.energy_kwh for s in pp.charging_sessions)
    return sum(s.energy_kwh * s.high_power_share for s in pp.charging_sessions) / total if total else 0.0


def render_fleet_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'device':<10} {'profile/climate/usage':<28} {'km':>8} {'score':>6} {'harsh/100km':>11}"
        f" {'SoH start':>9} {'SoH end':>8} {'cycles':>7} {'DC share':>8}"
    ]
    for r in rows:
        lines.append(
            f"{r['device_id'][:8]:<10} {r['label']:<28} {r['km']:>8,.0f} {r['score']:>6.1f} {r['harsh_per_100km']:>11.1f}"
            f" {r['soh_start'] or 0:>9.2f} {r['soh_end'] or 0:>8.2f} {r['full_cycles']:>7.1f} {100 * r['fast_charge_share']:>7.0f}%"
        )
    return "\n".join(lines)


def render_score(sc: Score, show: int) -> str:
    """The score, its totals, trips and events, one screen."""
    t = sc.period
    e = t.events

    def pct(x: float) -> str:
        return f"{100 * x / t.driving_s:.1f} %" if t.driving_s else "-"

    lines = [
        f"driving score ({sc.algorithm}) of device {sc.device_id}, {iso_utc(sc.from_ns)} .. {iso_utc(sc.to_ns)}",
        f"  SCORE {t.score:.1f} / 100   {t.distance_km:,.1f} km, {t.driving_s / 3600:,.2f} h driving,"
        f" {pct(t.night_s)} at night, {pct(t.speeding_s)} speeding ({sc.samples:,} samples)",
        "  harsh events: "
        + ", ".join(
            f"{k} {e[k]} (+{e[k + '_severe']} severe)" for k in ("braking", "acceleration", "cornering")
        ),
        f"  {len(sc.trips)} trip(s):",
    ]
    for tr in sc.trips[:show]:
        n = sum(tr.events.values())
        lines.append(
            f"    {iso_utc(tr.start_ns)} .. {iso_utc(tr.end_ns)}  {tr.distance_km:7,.1f} km  {tr.driving_s / 60:6.1f} min"
            f"  {n:3d} events  score {tr.score:5.1f}"
        )
    if len(sc.trips) > show:
        lines.append(f"    … {len(sc.trips) - show} more (--show N, or --json)")
    for ev in sc.events[:show]:
        lines.append(
            f"  {iso_utc(ev.start_ns)}  {ev.kind:<12} {'SEVERE' if ev.severe else 'harsh':<6} peak {ev.peak_g:.2f} g"
            + (" (vehicle trigger)" if ev.trigger else "")
        )
    if len(sc.events) > show:
        lines.append(f"  … {len(sc.events) - show} more events (--show N, or --json)")
    return "\n".join(lines)


def render_passport(pp: Passport, first_ns: int, last_ns: int, device: str) -> str:
    """The passport's figures, one screen."""
    c = pp.battery_condition
    t = c["temperatureInformation"]
    soh = pp.soh_by_day
    r = pp.resistance
    lines = [
        f"battery passport ({pp.algorithm}) of device {device}, {iso_utc(first_ns)} .. {iso_utc(last_ns)}"
        f" ({pp.samples:,} samples)",
        f"  state of certified energy (SOCE) {c['stateOfCertifiedEnergy']['stateOfCertifiedEnergyValue']:.2f} %"
        + (f", from {soh[0][1]:.2f} % on {iso_utc(soh[0][0])[:10]}" if len(soh) > 1 else ""),
        f"  {pp.equivalent_full_cycles:,.2f} equivalent full cycles; throughput {c['energyThroughput']:,.1f} kWh,"
        f" {c['capacityThroughput']['capacityThroughputValue']:,.1f} Ah (charge + discharge)",
        f"  {len(pp.charging_sessions)} charging session(s), {sum(x.energy_kwh for x in pp.charging_sessions):,.1f} kWh,"
        f" peak {max((x.peak_power_kw for x in pp.charging_sessions), default=0):,.0f} kW",
        f"  extreme temperatures: {t['timeExtremeHighTemp']:,.0f} min hot ({t['timeExtremeHighTempCharging']:,.0f} charging),"
        f" {t['timeExtremeLowTemp']:,.0f} min cold ({t['timeExtremeLowTempCharging']:,.0f} charging)",
        f"  deep discharges: {len(pp.deep_discharges)}",
        "  internal resistance: "
        + (
            f"{r['ohm'] * 1000:.1f} mΩ (median of {r['steps']} current steps, IQR {r['iqr_ohm'] * 1000:.2f} mΩ)"
            if r["ohm"] is not None
            else f"not enough current steps ({r['steps']})"
        ),
    ]
    return "\n".join(lines)
