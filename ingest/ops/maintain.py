"""`telematics maintain`: keep the lake small and fast while ingest runs.

Each step is one of DuckLake's own maintenance functions, or a delete of rows no reader needs:

1. ``flush``    rows small commits kept in the catalog (``[store] inline_rows``) go to Parquet files;
2. ``heads``    superseded device heads and Kafka positions are deleted (only each device's and each
                partition's latest is ever read: the ``devices`` view, ``Store.positions``);
3. ``merge``    adjacent small Parquet files of a table are merged (a batch writes one per table);
4. ``rewrite``  files whose rows are mostly deleted are rewritten without them;
5. ``expire``   snapshots older than ``keep`` are expired: time travel (``AT (VERSION => n)``) reaches
                back that far, no further;
6. ``cleanup``  files no remaining snapshot references are deleted (after ``grace``, so that a reader
                that started before the expiry can finish).

Nothing here removes a row a query of the current snapshot returns: proofs, the audit and every
analyst's result stay the same. A step that conflicts with a concurrent commit fails alone; run
``maintain`` again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb

from common.errors import Retryable
from ingest.storage.store import Store


class MaintainError(Retryable):
    """A maintenance step failed (often a conflict with a concurrent commit): run it again."""


@dataclass
class MaintainReport:
    steps: list[tuple[str, float, str]] = field(default_factory=list)  # (step, seconds, what it did)
    files_before: int = 0
    files_after: int = 0
    snapshots_before: int = 0
    snapshots_after: int = 0


def _files(con: duckdb.DuckDBPyConnection) -> int:
    tables = [
        r[0]
        for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = 'lake'").fetchall()
    ]
    n = 0
    for t in tables:
        row = con.execute(f"SELECT count(*) FROM ducklake_list_files('lake', '{t}')").fetchone()
        n += int(row[0]) if row else 0
    return n


def _snapshots(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute("SELECT count(*) FROM ducklake_snapshots('lake')").fetchone()
    return int(row[0]) if row else 0


def maintain(
    store: Store,
    *,
    keep_hours: float = 24.0,
    grace_minutes: float = 10.0,
    say: Callable[[str], None] = lambda _: None,
) -> MaintainReport:
    """Run the steps above on a lake store (``store.device_table == "device_heads"``)."""
    con = store.con
    rep = MaintainReport(files_before=_files(con), snapshots_before=_snapshots(con))
    keep_s, grace_s = int(keep_hours * 3600), int(grace_minutes * 60)
    steps: list[tuple[str, list[str], str]] = [
        ("flush", ["CALL ducklake_flush_inlined_data('lake')"], "inlined rows written to Parquet"),
        (
            "heads",
            [
                "DELETE FROM device_heads WHERE (device_id, commit_seq) NOT IN"
                " (SELECT (device_id, max(commit_seq)) FROM device_heads GROUP BY device_id)",
                "DELETE FROM kafka_offsets WHERE (kafka_topic, kafka_partition, commit_seq) NOT IN"
                " (SELECT (kafka_topic, kafka_partition, max(commit_seq)) FROM kafka_offsets"
                " GROUP BY kafka_topic, kafka_partition)",
            ],
            "superseded heads and positions deleted",
        ),
        ("merge", ["CALL ducklake_merge_adjacent_files('lake')"], "adjacent files merged"),
        ("rewrite", ["CALL ducklake_rewrite_data_files('lake')"], "files with many deleted rows rewritten"),
        (
            "expire",
            [f"CALL ducklake_expire_snapshots('lake', older_than => now() - INTERVAL {keep_s} SECOND)"],
            f"snapshots older than {keep_hours:g} h expired",
        ),
        (
            "cleanup",
            [f"CALL ducklake_cleanup_old_files('lake', older_than => now() - INTERVAL {grace_s} SECOND)"],
            f"unreferenced files older than {grace_minutes:g} min deleted",
        ),
    ]
    for name, sqls, what in steps:
        t = time.perf_counter()
        try:
            for sql in sqls:
                con.execute(sql)
        except duckdb.Error as exc:
            raise MaintainError(
                f"step {name} failed: {' '.join(str(exc).split())}; run `telematics maintain` again"
            ) from exc
        dt = time.perf_counter() - t
        rep.steps.append((name, dt, what))
        say(f"{name:<8} {dt:6.2f}s  {what}")
    rep.files_after, rep.snapshots_after = _files(con), _snapshots(con)
    return rep
