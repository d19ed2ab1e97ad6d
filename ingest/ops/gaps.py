"""Sequence gaps per vehicle, and what the vehicle said about them.

A device's blocks carry consecutive sequence numbers, so every number below its head that is
neither stored nor erased is a missing block. The vehicle's spool declares the blocks it
dropped (signed ``SpoolDrop`` records, table ``spool_drops``), which splits the missing
numbers into two kinds:

* ``dropped_on_vehicle``: the spool dropped them (full or expired) and said so, signed;
* ``missing``: nobody said anything. Lost in transit, still in a vehicle's spool waiting to be
  replayed, or held back by a vehicle that is offline.

Missing numbers are found below each device's highest stored block, and also **above** it: every
signed session message (birth, death, shutdown) carries the vehicle's ``next_seq``, so a loss at
the end of a vehicle's stream shows as soon as the vehicle next connects or stops, even when no
later block arrives. Such a tail range has ``tail=True``; until the vehicle's spool replays it, it
may also be blocks that are simply not sent yet.

A Kafka-protocol broker that lost acknowledged messages (its log went backwards) is reported by
the consumer in ``broker_resets`` (``broker_resets`` below): every gap on such a partition may be a
broker loss rather than a vehicle's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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
    tail: bool = False  # above the highest stored block: announced by a session message's next_seq

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
    tails = con.execute(
        f"""WITH have AS (SELECT device_id, max(seq) AS head FROM
                            (SELECT device_id, seq FROM blocks {where}
                             UNION ALL SELECT device_id, seq FROM erased_blocks {where}) GROUP BY device_id),
            said AS (SELECT device_id, max(next_seq) AS next_seq FROM session_events {where} GROUP BY device_id)
            SELECT said.device_id, coalesce(have.head + 1, 0) AS a, said.next_seq - 1 AS b
            FROM said LEFT JOIN have USING (device_id)
            WHERE said.next_seq > coalesce(have.head + 1, 0) ORDER BY said.device_id""",
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
    for dev, a, b in tails:
        out.extend(replace(g, tail=True) for g in _split(dev, int(a), int(b), declared.get(dev, [])))
    out.sort(key=lambda g: (g.device_id, g.from_seq))
    return out


@dataclass(frozen=True)
class BrokerReset:
    """The consumer saw a partition's log go backwards: acknowledged messages may be lost there."""

    topic: str
    partition: int
    kind: str  # "offsets_regressed" | "log_truncated"
    expected_offset: int  # the next offset the consumer expected
    broker_offset: int  # the offset the broker delivered, or its high-water mark
    detected_at: int  # ns since the epoch


def broker_resets(con: Any) -> list[BrokerReset]:
    rows = con.execute(
        "SELECT kafka_topic, kafka_partition, kind, expected_offset, broker_offset, epoch_ns(detected_at)"
        " FROM broker_resets ORDER BY detected_at"
    ).fetchall()
    return [BrokerReset(str(t), int(p), str(k), int(e), int(b), int(d)) for t, p, k, e, b, d in rows]


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
