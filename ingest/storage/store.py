"""The store boundary (``Store``) and its DuckDB-file implementation (``FileStore``): columnar inserts,
one transaction per batch, keys that make redelivery idempotent. The lake implementation, several
writers and readers in other processes, is ``ingest/storage/lakestore.py``.

Tables (see docs/DATA.md for every column and example queries):
  driving_samples, battery_samples  one row per record, with the exact record bytes (``raw``)
  trigger_events, spool_drops       the same for the agent's own records: trigger windows, spool drops
  blocks                            one row per block: header bytes, signature, salt seed, batch position
  batches                           one row per batch: the RFC 6962 root over its block hashes
  anchors                           the ledger receipt of each batch
  devices                           chain head per device (last sequence number and block hash)
  gaps                              sequence gaps detected per device
  rejections                        every dead-lettered message, keyed by its Kafka position, bundle index and payload hash
  duplicates                        every redelivered identical block, keyed by its Kafka position, bundle index and hash
  broker_resets                     partitions whose log went backwards (acknowledged messages may be lost)
  kafka_offsets                     the next Kafka offset per partition, written with each batch
  erasures, erased_blocks           signed erasure statements and the block hashes they keep
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pyarrow as pa

from common.errors import Retryable
from ingest.storage.schema import (
    DDL,
    TABLE_NAMES,
    TABLE_OF_ROW,
    BlockRow,
    DeviceRow,
    DuplicateRow,
    GapRow,
    RejectionRow,
    Row,
    SessionRow,
    rows_table,
)


class StoreError(Retryable):
    """The store could not write a batch: retry it without committing Kafka offsets."""


class StoreFenced(StoreError):
    """Another consumer claimed a partition of this batch since this one was assigned it: the batch is
    not written (a zombie's commit fails instead of writing twice); the consumer rejoins its group."""


class StoreContentError(StoreError):
    """The store refused a value of the batch (a conversion, range or constraint error): the batch's
    content, not the infrastructure, is at fault. ``Store.find_unstorable`` names the messages."""


# DuckDB errors caused by the values written, not by the database: a bad value, a constraint, invalid
# input. Everything else (I/O, out of memory, a transaction conflict, an internal error) is
# infrastructure: the batch is retried and the pipeline holds, loudly.
_CONTENT_ERRORS = (duckdb.DataError, duckdb.IntegrityError, duckdb.InvalidInputException)


@dataclass(frozen=True)
class Unstorable:
    """A message whose rows the store refused on their own: dead-lettered as ``unstorable``."""

    topic: str
    partition: int
    offset: int
    identity: bytes  # the block hash, or SHA-256 of a session message: what exactly was refused
    detail: str


@dataclass
class DeviceHead:
    key_id: str
    last_seq: int
    last_hash: bytes
    blocks: int = 0
    records: int = 0
    first_seen: int = 0
    last_seen: int = 0


@dataclass
class BatchRows:
    """Everything one flush writes, already in columns where it matters."""

    batch_no: int
    root: bytes
    created_at: int
    records: dict[str, pa.Table]  # record table name -> its new rows
    blocks: list[BlockRow] = field(default_factory=list)
    gaps: list[GapRow] = field(default_factory=list)
    sessions: list[SessionRow] = field(default_factory=list)
    rejections: list[RejectionRow] = field(default_factory=list)
    duplicates: list[DuplicateRow] = field(default_factory=list)
    heads: list[DeviceRow] = field(default_factory=list)  # the chain head of each device the batch moved
    record_count: int = 0
    # Kafka (topic, partition, offset) of each block and session row, in the same order.
    block_sources: list[tuple[str, int, int]] = field(default_factory=list)
    session_sources: list[tuple[str, int, int]] = field(default_factory=list)
    # (topic, partition) -> the next offset to process: stored in the batch's transaction, so that a
    # consumer resumes exactly after the last stored batch (``Store.positions``).
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)


Positions = dict[tuple[str, int], int]


class Store(Protocol):
    """Where batches go, and what the consumer, the commands and the analysts read back. ``con`` is
    a DuckDB connection on which every table of docs/DATA.md is queried by its plain name."""

    con: Any
    location: str
    device_table: str  # the table erasure deletes a device's chain head from
    # A reader of a store others write meanwhile: when its snapshot was taken (ns). None: nobody
    # else writes while it is open (a DuckDB file, or the writer itself).
    snapshot_ns: int | None

    def close(self) -> None: ...
    def refresh(self) -> None:
        """A reader: move to the latest committed snapshot, without opening the store again (a new
        ``snapshot_ns`` with it). Anything else sees every commit already: nothing to do."""

    def release(self) -> None:
        """A reader between uses: end its snapshot (nothing held open meanwhile); ``refresh`` takes
        the next. Anything else: nothing to do."""

    def heads(self) -> dict[str, DeviceHead]: ...
    def block_hash_at(self, device_id: str, seq: int) -> bytes | None: ...
    def next_batch_no(self) -> int: ...
    def unanchored(self) -> list[tuple[int, bytes, int]]: ...
    def anchor_entries(self) -> list[tuple[int, int, bytes]]: ...
    def record_broker_reset(
        self, topic: str, partition: int, kind: str, expected: int, got: int, at_ns: int
    ) -> None: ...
    def counts(self) -> dict[str, int]: ...
    def rejection_reasons(self) -> dict[str, int]: ...
    def claim(self, topic: str, partitions: list[int], owner: str) -> None:
        """Take ``partitions`` of ``topic`` for this writer (on assignment, before ``positions``):
        a batch another writer is committing for them finishes first, and none of its later ones will."""

    def positions(self, topic: str) -> Positions: ...
    def write_batch(self, b: BatchRows) -> None: ...
    def find_unstorable(self, b: BatchRows) -> list[Unstorable]: ...
    def record_anchor(self, receipt: Any) -> None: ...
    def purge(self) -> None:
        """Remove every byte of deleted rows from the store's files (after an erasure)."""


def _append(con: Any, typ: type[Row], rows: list[Any], *, insert: str = "INSERT", where: str = "") -> None:
    """Insert ``rows`` (as ``i``) into the table of ``typ``, those that ``where`` keeps, from columns."""
    if rows:
        con.register("_incoming", rows_table(rows, typ))
        con.execute(
            f"{insert} INTO {TABLE_OF_ROW[typ]} ({', '.join(typ._fields)}) SELECT * FROM _incoming i{where}"
        )
        con.unregister("_incoming")


class _DuckStore:
    """What both stores share: the batch's inserts from Arrow, reads of committed state, bisection
    of a batch the store refuses. Subclasses say how keyed rows are inserted and how a batch commits."""

    con: Any
    _w: Any
    location: str

    def close(self) -> None:
        self._w.close()
        self.con.close()

    def _use_threads(self, threads: int) -> None:
        """DuckDB's threads for this connection (0: its default, one per core)."""
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")

    def refresh(self) -> None:
        """Nothing: a DuckDB file has one writer, and no reader in another process while it writes."""

    def release(self) -> None:
        """Nothing: as ``refresh``."""

    # -- reads used by the consumer ---------------------------------------------------------------
    def _read(self, sql: str, params: list[Any] | None = None) -> list[Any]:
        """Rows of a read of committed state; an unreachable store is a ``StoreError`` (retried)."""
        try:
            return list(self.con.execute(sql, params or []).fetchall())
        except duckdb.Error as exc:
            raise StoreError(
                f"cannot read the store ({self.location}): {' '.join(str(exc).split())}"
            ) from exc

    def heads(self) -> dict[str, DeviceHead]:
        rows = self._read(
            "SELECT device_id, key_id, last_seq, last_block_hash, blocks, records,"
            " epoch_ns(first_seen), epoch_ns(last_seen) FROM devices"
        )
        return {r[0]: DeviceHead(r[1], r[2], bytes(r[3]), r[4], r[5], r[6], r[7]) for r in rows}

    def block_hash_at(self, device_id: str, seq: int) -> bytes | None:
        """The hash of the block stored at ``seq``, or of the one erased there (an erasure or the
        retention keeps its hash): a copy published again is not stored again."""
        for table in ("blocks", "erased_blocks"):  # one after the other: in the lake each reads all
            rows = self._read(
                f"SELECT block_hash FROM {table} WHERE device_id = ? AND seq = ?", [device_id, seq]
            )
            if rows:
                return bytes(rows[0][0])
        return None

    def positions(self, topic: str) -> Positions:
        """The next offset per partition of ``topic`` after the last stored batch (the latest commit:
        a later claim's commits all come after, ingest/storage/lakestore.py)."""
        rows = self._read(
            "SELECT kafka_partition, arg_max(next_offset, commit_seq) FROM kafka_offsets"
            " WHERE kafka_topic = ? GROUP BY kafka_partition",
            [topic],
        )
        return {(topic, int(p)): int(o) for p, o in rows}

    def unanchored(self) -> list[tuple[int, bytes, int]]:
        """(batch_no, root, block_count) of stored batches without a ledger receipt."""
        rows = self._read(
            "SELECT b.batch_no, b.root, b.block_count FROM batches b ANTI JOIN anchors a USING (batch_no)"
            " ORDER BY b.batch_no"
        )
        return [(int(n), bytes(r), int(c)) for n, r, c in rows]

    def anchor_entries(self) -> list[tuple[int, int, bytes]]:
        """(batch_no, ledger entry index, entry hash) of every recorded anchor."""
        rows = self._read("SELECT DISTINCT batch_no, entry_index, entry_hash FROM anchors ORDER BY batch_no")
        return [(int(n), int(i), bytes(h)) for n, i, h in rows]

    def record_broker_reset(
        self, topic: str, partition: int, kind: str, expected: int, got: int, at_ns: int
    ) -> None:
        """Record at once (not with the batch, which may be rolled back) that a partition went backwards."""
        try:
            self.con.execute(
                "INSERT INTO broker_resets VALUES (?, ?, ?, ?, ?, make_timestamp_ns(?))",
                [topic, partition, kind, expected, got, at_ns],
            )
        except duckdb.Error as exc:
            raise StoreError(f"broker reset on {topic}/{partition} not recorded: {exc}") from exc

    def rejection_reasons(self) -> dict[str, int]:
        """Stored rejections per reason."""
        return {
            str(r): int(n) for r, n in self._read("SELECT reason, count(*) FROM rejections GROUP BY reason")
        }

    def counts(self) -> dict[str, int]:
        q = f"""SELECT
            {" + ".join(f"(SELECT count(*) FROM {t})" for t in TABLE_NAMES)},
            (SELECT count(*) FROM blocks), (SELECT count(*) FROM batches),
            (SELECT count(DISTINCT batch_no) FROM anchors),
            (SELECT count(*) FROM rejections), (SELECT count(*) FROM duplicates), (SELECT count(*) FROM gaps),
            (SELECT count(*) FROM broker_resets)"""
        row = self._read(q)[0]
        keys = (
            "records",
            "blocks",
            "batches",
            "anchored",
            "rejections",
            "duplicates",
            "gaps",
            "broker_resets",
        )
        return dict(zip(keys, (int(x) for x in row), strict=True))

    # -- the one write transaction per batch ------------------------------------------------------
    def _insert(self, con: Any, b: BatchRows, seq: int) -> None:
        """Every row of ``b``; ``seq`` orders this commit among the store's commits (heads, positions)."""
        for name, tbl in b.records.items():
            if tbl.num_rows:
                con.register("_incoming", tbl)
                cols = ", ".join(tbl.column_names)
                con.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM _incoming")
                con.unregister("_incoming")
        if b.blocks:
            _append(con, BlockRow, b.blocks)
            con.execute(
                "INSERT INTO batches VALUES (?, ?, ?, ?, make_timestamp_ns(?))",
                [b.batch_no, b.root, len(b.blocks), b.record_count, b.created_at],
            )
        side: tuple[tuple[type[GapRow | SessionRow | RejectionRow | DuplicateRow], list[Any]], ...] = (
            (GapRow, b.gaps),
            (SessionRow, b.sessions),
            (RejectionRow, b.rejections),
            (DuplicateRow, b.duplicates),
        )
        for typ, rows in side:
            if rows:
                self._insert_keyed(con, typ, rows)
        if b.heads:
            con.register("_incoming", rows_table(b.heads, DeviceRow))
            self._insert_heads(con, seq)
            con.unregister("_incoming")
        if b.offsets:
            con.executemany(
                f"{self._offsets_sql()} VALUES (?, ?, ?, ?, ?, make_timestamp_ns(?))",
                [
                    (t, part, o, self._epoch_of(t, part), seq, b.created_at)
                    for (t, part), o in sorted(b.offsets.items())
                ],
            )

    def _transaction(self, b: BatchRows, seq: int) -> None:
        """``_insert`` in one transaction on the writer's cursor: all of it or nothing. A value the
        store refuses raises ``StoreContentError``; any other failure ``StoreError``."""
        con = self._w
        try:
            con.execute("BEGIN TRANSACTION")
            self._insert(con, b, seq)
            con.execute("COMMIT")
        except duckdb.Error as exc:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            cls = StoreContentError if isinstance(exc, _CONTENT_ERRORS) else StoreError
            raise cls(f"batch {b.batch_no} not written to {self.location}: {exc}") from exc

    def _insert_keyed(self, con: Any, typ: type[Row], rows: list[Any]) -> None:
        """Insert the ``rows`` of ``typ`` whose key is not stored yet."""
        raise NotImplementedError

    def _insert_heads(self, con: Any, seq: int) -> None:
        """Make ``_incoming`` (DeviceRow columns) the devices' chain heads."""
        raise NotImplementedError

    def _epoch_of(self, topic: str, partition: int) -> int:
        return 0

    def _offsets_sql(self) -> str:
        return "INSERT INTO kafka_offsets"

    def _anchor_sql(self) -> str:
        """Insert the receipt ($1 batch_no .. $6 receipt JSON) unless its batch has one."""
        raise NotImplementedError

    def record_anchor(self, receipt: Any) -> None:
        try:
            self._w.execute(
                self._anchor_sql(),
                [
                    receipt.batch_no,
                    receipt.ledger,
                    receipt.index,
                    receipt.entry_hash,
                    receipt.time_ns,
                    receipt.to_json(),
                ],
            )
        except duckdb.Error as exc:
            raise StoreError(f"anchor of batch {receipt.batch_no} not recorded: {exc}") from exc

    # -- a batch the store refused ----------------------------------------------------------------
    def find_unstorable(self, b: BatchRows) -> list[Unstorable]:
        """The block and session messages of ``b`` whose rows the store refuses on their own, found
        by bisection: each probe writes a subset in a transaction that is always rolled back, so
        about 2·log2(n) probes find one culprit among n messages. Empty if no message fails alone
        (then the batch as a whole, or the database, is at fault)."""
        units = [("block", i) for i in range(len(b.blocks))] + [
            ("session", i) for i in range(len(b.sessions))
        ]
        found: list[Unstorable] = []

        def bisect(part: list[tuple[str, int]], err: str | None) -> None:
            if err is None:
                err = self._probe(b, part)
                if err is None:
                    return
            if len(part) == 1:
                kind, i = part[0]
                if kind == "block":
                    (topic, partition, offset), ident = b.block_sources[i], b.blocks[i].block_hash
                else:
                    (topic, partition, offset), ident = (
                        b.session_sources[i],
                        sha256(b.sessions[i].message).digest(),
                    )
                found.append(
                    Unstorable(topic, partition, offset, ident, f"the store refuses this {kind}: {err}")
                )
                return
            mid = len(part) // 2
            bisect(part[:mid], None)
            bisect(part[mid:], None)

        bisect(units, None)
        return found

    def _probe(self, b: BatchRows, units: list[tuple[str, int]]) -> str | None:
        """Write the rows of ``units`` in a transaction and roll it back: the store's error, or None."""
        blocks = [b.blocks[i] for kind, i in units if kind == "block"]
        keys = {(blk.device_id, blk.seq) for blk in blocks}
        records = {}
        for name, tbl in b.records.items():
            mask = [
                (d, q) in keys
                for d, q in zip(
                    tbl.column("device_id").to_pylist(), tbl.column("block_seq").to_pylist(), strict=True
                )
            ]
            records[name] = tbl.filter(pa.array(mask, pa.bool_()))
        part = BatchRows(
            batch_no=b.batch_no,
            root=b.root,
            created_at=b.created_at,
            records=records,
            blocks=blocks,
            sessions=[b.sessions[i] for kind, i in units if kind == "session"],
        )
        con = self._w
        try:
            con.execute("BEGIN TRANSACTION")
            self._insert(con, part, 0)
            return None
        except _CONTENT_ERRORS as exc:
            return str(exc)
        except duckdb.Error as exc:
            raise StoreError(
                f"batch {b.batch_no}: probing which rows the store refuses failed: {exc}"
            ) from exc
        finally:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")


class FileStore(_DuckStore):
    """One DuckDB file: one writer process, no reader in another process while it writes."""

    device_table = "devices"
    snapshot_ns: int | None = None

    def __init__(
        self,
        path: str | Path,
        *,
        read_only: bool = False,
        checkpoint_threshold_mb: int | None = None,
        threads: int = 0,
    ) -> None:
        """``checkpoint_threshold_mb``: DuckDB folds its write-ahead log into the file once the log
        is this large. Its default (16 MB) re-compresses partly filled row groups several times;
        the consumer uses 256 MB (``[store] checkpoint_threshold_mb``, docs/PERFORMANCE.md).
        ``threads``: DuckDB's threads for this connection (0: its default, one per core)."""
        self.path = Path(path)
        self.location = str(self.path)
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.Error as exc:
            raise StoreError(f"cannot open DuckDB file {self.path}: {exc}") from exc
        if not read_only:
            self.con.execute(DDL)
            self._migrate()
            if checkpoint_threshold_mb is not None:
                self.con.execute(f"SET checkpoint_threshold = '{int(checkpoint_threshold_mb)}MB'")
        self._use_threads(threads)
        # Batches are written on this cursor, from the consumer's writer thread, while the
        # processor reads committed state on ``con`` (one DuckDB connection per thread).
        self._w = self.con.cursor()
        self._last_batch_no = -1
        self._commits = 0  # one writer: the positions table keeps one row per partition

    def _migrate(self) -> None:
        """Stores written before rejections and duplicates were keyed by payload, then by index in a
        bundle too: re-key them (a row of old is not from a bundle: index 0)."""
        keys = dict(
            self.con.execute(
                "SELECT table_name, constraint_column_names FROM duckdb_constraints()"
                " WHERE constraint_type = 'PRIMARY KEY' AND table_name IN ('rejections', 'duplicates')"
            ).fetchall()
        )
        for table in ("rejections", "duplicates"):
            if "bundle_index" in keys.get(table, ["bundle_index"]):
                continue
            ddl = DDL[DDL.index(f"CREATE TABLE IF NOT EXISTS {table} (") :]
            ddl = ddl[: ddl.index(");") + 2].replace(f"EXISTS {table} (", f"EXISTS {table}_rekeyed (")
            cols = ", ".join(r[0] for r in self.con.execute(f"DESCRIBE {table}").fetchall())
            self.con.execute("BEGIN TRANSACTION")
            self.con.execute(ddl)
            self.con.execute(f"INSERT INTO {table}_rekeyed ({cols}) SELECT {cols} FROM {table}")
            self.con.execute(f"DROP TABLE {table}")
            self.con.execute(f"ALTER TABLE {table}_rekeyed RENAME TO {table}")
            self.con.execute("COMMIT")

    def next_batch_no(self) -> int:
        """A batch number no batch of this store has used, nor will be given again by this process."""
        # fetchall, never fetchone: an unfinished result keeps its transaction open, and an open
        # transaction stops every checkpoint (the write-ahead log then grows without bound)
        rows = self._read("SELECT coalesce(max(batch_no) + 1, 0) FROM batches")
        self._last_batch_no = max(self._last_batch_no + 1, int(rows[0][0]) if rows else 0)
        return self._last_batch_no

    def claim(self, topic: str, partitions: list[int], owner: str) -> None:
        return None  # DuckDB lets one process open the file: there is no other writer to fence

    def write_batch(self, b: BatchRows) -> None:
        """One transaction: every row of the batch and its Kafka positions, or nothing. A value the
        store refuses raises ``StoreContentError``; any other failure ``StoreError``."""
        self._commits += 1
        self._transaction(b, self._commits)

    def _insert_keyed(self, con: Any, typ: type[Row], rows: list[Any]) -> None:
        _append(con, typ, rows, insert="INSERT OR IGNORE")

    def _insert_heads(self, con: Any, seq: int) -> None:
        con.execute("INSERT OR REPLACE INTO devices SELECT * FROM _incoming")

    def _offsets_sql(self) -> str:
        return "INSERT OR REPLACE INTO kafka_offsets"

    def _anchor_sql(self) -> str:
        return "INSERT OR IGNORE INTO anchors VALUES ($1, $2, $3, $4, make_timestamp_ns($5), $6)"

    def purge(self) -> None:
        """Fold the write-ahead log into the file. Deleted bytes may stay in free pages until they are
        reused: ``ingest.ops.erase.compact`` rewrites the file (with no process holding it)."""
        self.con.execute("CHECKPOINT")
