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
