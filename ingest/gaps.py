"""Sequence gaps per vehicle, and what the vehicle said about them.

A device's blocks carry consecutive sequence numbers, so every number below its head that is
neither stored nor erased is a missing block. The vehicle's spool declares the blocks it
dropped (signed ``SpoolDrop`` records, table ``spool_drops``), which splits the missing
numbers into two kinds:

* ``dropped_on_vehicle``: the spool dropped them (full or expired) and said so, signed;
* ``missing``: nobody said anything. Lost in transit, still in a vehicle's spool waiting to be
  replayed, or held back by a vehicle that is offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GapSegment:
    device_id: str
    from_seq: int
    to_seq: int  # inclusive
    status: str  # "dropped_on_vehicle" | "missing"
    reason: str = ""  # for a drop: "full" or "expired"
    declared_in: int | None = None  # the block whose SpoolDrop record declared it
    declared_records: int | None = None  # records the vehicle said the dropped range held

    @property
    def blocks(self) -> int:
        return self.to_seq - self.from_seq + 1


def gap_report(con: Any, device_id: str | None = None) -> list[GapSegment]:
    """Missing sequence ranges of every device (or one), split by the vehicle's drop declarations."""
    where = "WHERE device_id = $dev" if device_id else ""
    params = {"dev": device_id} if device_id else {}
    missing = con.execute(
        f"""WITH have AS (SELECT device_id, seq FROM blocks {where}
                          UNION SELECT device_id, seq FROM erased_blocks {where}),
            runs AS (SELECT device_id, seq, lag(seq) OVER (PARTITION BY device_id ORDER BY seq) AS prev FROM have)
            SELECT device_id, coalesce(prev + 1, 0) AS a, seq - 1 AS b FROM runs
            WHERE seq > coalesce(prev + 1, 0) ORDER BY device_id, a""",
        params,
    ).fetchall()
    declared: dict[str, list[tuple[int, int, str, int, int]]] = {}
    for dev, a, b, reason, blk, n in con.execute(
        f"""SELECT device_id, first_seq, last_seq, any_value(reason), min(block_seq), any_value(records)
            FROM spool_drops {where} GROUP BY device_id, first_seq, last_seq ORDER BY device_id, first_seq""",
        params,
    ).fetchall():
        declared.setdefault(dev, []).append((int(a), int(b), reason, int(blk), int(n)))
    out: list[GapSegment] = []
    for dev, a, b in missing:
        out.extend(_split(dev, int(a), int(b), declared.get(dev, [])))
    return out


def _split(dev: str, a: int, b: int, drops: list[tuple[int, int, str, int, int]]) -> list[GapSegment]:
    """Cut the missing range [a, b] into the parts the vehicle declared and the parts it did not."""
    out: list[GapSegment] = []
    cur = a
    for da, db, reason, blk, n in drops:
        if db < cur or da > b:
            continue
        if da > cur:
            out.append(GapSegment(dev, cur, da - 1, "missing"))
        lo, hi = max(da, cur), min(db, b)
        out.append(GapSegment(dev, lo, hi, "dropped_on_vehicle", reason, blk, n))
        cur = hi + 1
        if cur > b:
            break
    if cur <= b:
        out.append(GapSegment(dev, cur, b, "missing"))
    return out
