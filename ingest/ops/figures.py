"""Figures from the store: the records a driving score or a battery passport is computed from, as the
vehicle signed them (decoded from ``raw``, so the numbers are the ones a proof bundle carries)."""

from __future__ import annotations

from typing import Any

from ingest.storage.store import Store
from schemas.block import decode_record
from schemas.records import BatterySample, DrivingSample, TriggerEvent


def driving_records(
    store: Store, device_id: str, from_ns: int, to_ns: int
) -> tuple[list[DrivingSample], list[TriggerEvent]]:
    """The device's driving samples and trigger events with ``from_ns <= ts <= to_ns``."""
    got: dict[str, list[Any]] = {}
    for table in ("driving_samples", "trigger_events"):
        rows = store.con.execute(
            f"SELECT raw FROM {table} WHERE device_id = ? AND epoch_ns(ts) BETWEEN ? AND ?"
            " ORDER BY ts, block_seq, idx",
            [device_id, from_ns, to_ns],
        ).fetchall()
        got[table] = [decode_record(bytes(r[0])) for r in rows]
    return got["driving_samples"], got["trigger_events"]


def battery_records(store: Store, device_id: str, from_ns: int, to_ns: int) -> list[BatterySample]:
    """The device's battery samples with ``from_ns <= ts <= to_ns``."""
    rows = store.con.execute(
        "SELECT raw FROM battery_samples WHERE device_id = ? AND epoch_ns(ts) BETWEEN ? AND ?"
        " ORDER BY ts, block_seq, idx",
        [device_id, from_ns, to_ns],
    ).fetchall()
    return [decode_record(bytes(r[0])) for r in rows]  # type: ignore[misc]


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
