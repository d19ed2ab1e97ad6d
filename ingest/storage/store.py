"""The DuckDB store: columnar inserts, one transaction per batch, keys that make redelivery idempotent.

Tables (see docs/DATA.md for every column and example queries):
  driving_samples, battery_samples  one row per record, with the exact record bytes (``raw``)
  trigger_events, spool_drops       the same for the agent's own records: trigger windows, spool drops
  blocks                            one row per block: header bytes, signature, salt seed, batch position
  batches                           one row per batch: the RFC 6962 root over its block hashes
  anchors                           the ledger receipt of each batch
  devices                           chain head per device (last sequence number and block hash)
  gaps                              sequence gaps detected per device
  rejections                        every dead-lettered message, keyed by its Kafka position and payload hash
  duplicates                        every redelivered identical block, keyed by its Kafka position and hash
  broker_resets                     partitions whose log went backwards (acknowledged messages may be lost)
  erasures, erased_blocks           signed erasure statements and the block hashes they keep
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa

from schemas.records import (
    BATTERY_FIELDS,
    DRIVING_FIELDS,
    DROP_FIELDS,
    TABLE_OF_KIND,
    TRIGGER_FIELDS,
    BatterySample,
    DrivingSample,
    SpoolDrop,
    TriggerEvent,
)

_FLOAT = "DOUBLE"
Columns = list[
    tuple[str, str, pa.DataType]
]  # (column, DuckDB type, Arrow type), after device_id/block_seq/idx/ts

DRIVING_COLUMNS: Columns = [
    (f, "SMALLINT" if f == "gear" else _FLOAT, pa.int16() if f == "gear" else pa.float64())
    for f in DRIVING_FIELDS
    if f != "ts_ns"
]
BATTERY_COLUMNS: Columns = [
    (f, "BOOLEAN" if f == "is_charging" else _FLOAT, pa.bool_() if f == "is_charging" else pa.float64())
    for f in BATTERY_FIELDS
    if f != "ts_ns"
]
TRIGGER_COLUMNS: Columns = [
    ("name", "VARCHAR", pa.string()),
    ("signal", "VARCHAR", pa.string()),
    ("value", _FLOAT, pa.float64()),
    ("window_start_ns", "BIGINT", pa.int64()),
    ("window_end_ns", "BIGINT", pa.int64()),
    ("rate_hz", _FLOAT, pa.float64()),
]
DROP_COLUMNS: Columns = [
    ("first_seq", "UBIGINT", pa.uint64()),
    ("last_seq", "UBIGINT", pa.uint64()),
    ("records", "UBIGINT", pa.uint64()),
    ("prev", "BLOB", pa.binary()),
    ("last_hash", "BLOB", pa.binary()),
    ("reason", "VARCHAR", pa.string()),
]
assert [c for c, _, _ in TRIGGER_COLUMNS] == list(TRIGGER_FIELDS[1:])
assert [c for c, _, _ in DROP_COLUMNS] == list(DROP_FIELDS[1:])


@dataclass(frozen=True)
class RecordTable:
    """Where one record kind is stored: one row per record, its columns in the record's field order."""

    name: str
    kind: type[msgspec.Struct]
    columns: Columns


# Every record kind and its table. Processor, audit, proofs and erasure all go through this list.
RECORD_TABLES: tuple[RecordTable, ...] = tuple(
    RecordTable(TABLE_OF_KIND[kind], kind, cols)
    for kind, cols in (
        (DrivingSample, DRIVING_COLUMNS),
        (BatterySample, BATTERY_COLUMNS),
        (TriggerEvent, TRIGGER_COLUMNS),
        (SpoolDrop, DROP_COLUMNS),
    )
)
TABLE_NAMES: tuple[str, ...] = tuple(t.name for t in RECORD_TABLES)


def _sample_table(name: str, cols: Columns) -> str:
    body = ",\n    ".join(f"{c} {t}" for c, t, _ in cols)
    return f"""
CREATE TABLE IF NOT EXISTS {name} (
    device_id VARCHAR NOT NULL,
    block_seq UBIGINT NOT NULL,
    idx       USMALLINT NOT NULL,   -- position of the record in its block (its Merkle leaf index)
    ts        TIMESTAMP_NS NOT NULL, -- UTC
    {body},
    raw       BLOB NOT NULL,        -- the record bytes exactly as signed
    leaf      BLOB NOT NULL         -- its Merkle leaf hash as verified at ingest: SHA-256(0x00 || salt || raw)
);"""


DDL = (
    "".join(_sample_table(t.name, t.columns) for t in RECORD_TABLES)
    + """
CREATE TABLE IF NOT EXISTS blocks (
    device_id      VARCHAR NOT NULL,
    seq            UBIGINT NOT NULL,
    block_hash     BLOB NOT NULL,
    header         BLOB NOT NULL,     -- exact signed header bytes
    signature      BLOB NOT NULL,
    salt_seed      BLOB NOT NULL,     -- off-ledger: derives each record's leaf salt
    key_id         VARCHAR NOT NULL,
    boot           UINTEGER NOT NULL,
    record_count   USMALLINT NOT NULL,
    t_first        TIMESTAMP_NS NOT NULL,
    t_last         TIMESTAMP_NS NOT NULL,
    merkle_root    BLOB NOT NULL,
    batch_no       UBIGINT NOT NULL,
    batch_index    UINTEGER NOT NULL, -- leaf index of this block in its batch tree
    kafka_partition INTEGER NOT NULL,
    kafka_offset   BIGINT NOT NULL,
    received_at    TIMESTAMP_NS NOT NULL,
    historical     BOOLEAN NOT NULL,  -- replayed from the vehicle's spool, not published live
    PRIMARY KEY (device_id, seq)
);
CREATE TABLE IF NOT EXISTS batches (
    batch_no     UBIGINT PRIMARY KEY,
    root         BLOB NOT NULL,
    block_count  UINTEGER NOT NULL,
    record_count UINTEGER NOT NULL,
    created_at   TIMESTAMP_NS NOT NULL
);
CREATE TABLE IF NOT EXISTS anchors (
    batch_no     UBIGINT PRIMARY KEY,
    ledger       VARCHAR NOT NULL,
    entry_index  UBIGINT NOT NULL,
    entry_hash   BLOB NOT NULL,
    anchored_at  TIMESTAMP_NS NOT NULL,
    receipt      VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device_id       VARCHAR PRIMARY KEY,
    key_id          VARCHAR NOT NULL,
    last_seq        UBIGINT NOT NULL,
    last_block_hash BLOB NOT NULL,
    blocks          UBIGINT NOT NULL,
    records         UBIGINT NOT NULL,
    first_seen      TIMESTAMP_NS NOT NULL,
    last_seen       TIMESTAMP_NS NOT NULL
);
CREATE TABLE IF NOT EXISTS gaps (
    device_id   VARCHAR NOT NULL,
    from_seq    UBIGINT NOT NULL,
    to_seq      UBIGINT NOT NULL,
    detected_at TIMESTAMP_NS NOT NULL,
    PRIMARY KEY (device_id, from_seq)
);
CREATE TABLE IF NOT EXISTS session_events (
    device_id      VARCHAR NOT NULL,
    boot           UINTEGER NOT NULL,
    session        UINTEGER NOT NULL,  -- MQTT connects since that boot
    event          VARCHAR NOT NULL,   -- birth | death (last will: connection lost) | shutdown
    key_id         VARCHAR NOT NULL,
    ts             TIMESTAMP_NS NOT NULL,  -- vehicle clock: the connect (birth, death) or the stop
    next_seq       UBIGINT NOT NULL,   -- the vehicle's next block sequence number then
    agent_version  VARCHAR NOT NULL,
    schema_version USMALLINT NOT NULL,
    config         VARCHAR NOT NULL,   -- sampling configuration, JSON
    message        BLOB NOT NULL,      -- the signed message exactly as received
    received_at    TIMESTAMP_NS NOT NULL,  -- when the broker passed it on (Kafka timestamp)
    PRIMARY KEY (device_id, boot, session, event)
);
CREATE VIEW IF NOT EXISTS sessions AS
SELECT device_id, boot, session,
       max(ts) FILTER (WHERE event = 'birth') AS started_at,
       max(next_seq) FILTER (WHERE event = 'birth') AS first_seq,
       max(received_at) FILTER (WHERE event <> 'birth') AS ended_at,
       max(event) FILTER (WHERE event <> 'birth') AS end_reason,
       any_value(agent_version) AS agent_version,
       any_value(config) AS config
FROM session_events GROUP BY device_id, boot, session;
CREATE TABLE IF NOT EXISTS erasures (
    erasure_id  UBIGINT PRIMARY KEY,
    device_id   VARCHAR NOT NULL,
    erased_at   TIMESTAMP_NS NOT NULL,
    reason      VARCHAR NOT NULL,
    blocks      UBIGINT NOT NULL,
    records     UBIGINT NOT NULL,
    statement   BLOB NOT NULL,    -- MessagePack statement the operator signed (docs/PROOFS.md)
    signature   BLOB NOT NULL     -- Ed25519 by the operator key over "vt/v1/erasure" || 0x00 || statement
);
CREATE TABLE IF NOT EXISTS erased_blocks (
    device_id    VARCHAR NOT NULL,
    seq          UBIGINT NOT NULL,
    block_hash   BLOB NOT NULL,     -- still a leaf of its batch tree, so every other proof verifies
    batch_no     UBIGINT NOT NULL,
    batch_index  UINTEGER NOT NULL,
    record_count USMALLINT NOT NULL,
    erasure_id   UBIGINT NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE TABLE IF NOT EXISTS rejections (
    kafka_topic     VARCHAR NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT NOT NULL,
    reason          VARCHAR NOT NULL,
    detail          VARCHAR NOT NULL,
    device_id       VARCHAR,
    key_id          VARCHAR,
    seq             UBIGINT,
    payload_size    BIGINT NOT NULL,
    payload_sha256  BLOB NOT NULL,
    received_at     TIMESTAMP_NS NOT NULL,
    -- the position AND the payload: a broker that lost its log reuses positions for new messages
    PRIMARY KEY (kafka_topic, kafka_partition, kafka_offset, payload_sha256)
);
CREATE TABLE IF NOT EXISTS broker_resets (
    kafka_topic     VARCHAR NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kind            VARCHAR NOT NULL,  -- offsets_regressed | log_truncated
    expected_offset BIGINT NOT NULL,   -- the next offset the consumer expected
    broker_offset   BIGINT NOT NULL,   -- the offset the broker delivered, or its high-water mark
    detected_at     TIMESTAMP_NS NOT NULL
);
CREATE TABLE IF NOT EXISTS duplicates (
    kafka_topic     VARCHAR NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT NOT NULL,
    device_id       VARCHAR NOT NULL,
    seq             UBIGINT NOT NULL,
    block_hash      BLOB NOT NULL,
    received_at     TIMESTAMP_NS NOT NULL,
    PRIMARY KEY (kafka_topic, kafka_partition, kafka_offset, block_hash)
);
"""
)


_BLOCK_TYPES: list[pa.DataType] = [
    pa.string(),
    pa.uint64(),
    pa.binary(),
    pa.binary(),
    pa.binary(),
    pa.binary(),
    pa.string(),
    pa.uint32(),
    pa.uint16(),
    pa.int64(),
    pa.int64(),
    pa.binary(),
    pa.uint64(),
    pa.uint32(),
    pa.int32(),
    pa.int64(),
    pa.int64(),
    pa.bool_(),
]
_BLOCK_NAMES = [
    "device_id",
    "seq",
    "block_hash",
    "header",
    "signature",
    "salt_seed",
    "key_id",
    "boot",
    "record_count",
    "t_first",
    "t_last",
    "merkle_root",
    "batch_no",
    "batch_index",
    "kafka_partition",
    "kafka_offset",
    "received_at",
    "historical",
]
_DEVICE_NAMES = [
    "device_id",
    "key_id",
    "last_seq",
    "last_block_hash",
    "blocks",
    "records",
    "first_seen",
    "last_seen",
]
_DEVICE_TYPES: list[pa.DataType] = [
    pa.string(),
    pa.string(),
    pa.uint64(),
    pa.binary(),
    pa.uint64(),
    pa.uint64(),
    pa.int64(),
    pa.int64(),
]
_TIMESTAMPS = {"t_first", "t_last", "received_at", "first_seen", "last_seen", "detected_at", "ts"}  # ns
# The small per-batch tables, inserted from Arrow like the records (executemany costs ~0.5 ms a row,
# which made rejecting junk ten times slower than accepting blocks): (table, columns, Arrow types).
_SIDE_TABLES: tuple[tuple[str, list[str], list[pa.DataType]], ...] = (
    (
        "gaps",
        ["device_id", "from_seq", "to_seq", "detected_at"],
        [pa.string(), pa.uint64(), pa.uint64(), pa.int64()],
    ),
    (
        "session_events",
        [
            "device_id",
            "boot",
            "session",
            "event",
            "key_id",
            "ts",
            "next_seq",
            "agent_version",
            "schema_version",
            "config",
            "message",
            "received_at",
        ],
        [
            pa.string(),
            pa.uint32(),
            pa.uint32(),
            pa.string(),
            pa.string(),
            pa.int64(),
            pa.uint64(),
            pa.string(),
            pa.uint16(),
            pa.string(),
            pa.binary(),
            pa.int64(),
        ],
    ),
    (
        "rejections",
        [
            "kafka_topic",
            "kafka_partition",
            "kafka_offset",
            "reason",
            "detail",
            "device_id",
            "key_id",
            "seq",
            "payload_size",
            "payload_sha256",
            "received_at",
        ],
        [
            pa.string(),
            pa.int32(),
            pa.int64(),
            pa.string(),
            pa.string(),
            pa.string(),
            pa.string(),
            pa.uint64(),
            pa.int64(),
            pa.binary(),
            pa.int64(),
        ],
    ),
    (
        "duplicates",
        ["kafka_topic", "kafka_partition", "kafka_offset", "device_id", "seq", "block_hash", "received_at"],
        [pa.string(), pa.int32(), pa.int64(), pa.string(), pa.uint64(), pa.binary(), pa.int64()],
    ),
)


def _rows_table(rows: list[tuple[Any, ...]], names: list[str], types: list[pa.DataType]) -> pa.Table:
    """Rows as Arrow columns, in the DDL's column order: one INSERT per batch, not one per row
    (``executemany`` costs about 0.5 ms per row)."""
    cols = list(zip(*rows, strict=True))
    arrays = []
    for name, typ, col in zip(names, types, cols, strict=True):
        arr = pa.array(col, typ)
        arrays.append(arr.cast(pa.timestamp("ns")) if name in _TIMESTAMPS else arr)
    return pa.table(arrays, names=names)


class StoreError(Exception):
    """The store could not write a batch: retry it without committing Kafka offsets."""


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
    blocks: list[tuple[Any, ...]] = field(default_factory=list)
    gaps: list[tuple[Any, ...]] = field(default_factory=list)
    sessions: list[tuple[Any, ...]] = field(default_factory=list)
    rejections: list[tuple[Any, ...]] = field(default_factory=list)
    duplicates: list[tuple[Any, ...]] = field(default_factory=list)
    heads: dict[str, DeviceHead] = field(default_factory=dict)
    record_count: int = 0
    # Kafka (topic, partition, offset) of each block and session row, in the same order.
    block_sources: list[tuple[str, int, int]] = field(default_factory=list)
    session_sources: list[tuple[str, int, int]] = field(default_factory=list)


class Store:
    def __init__(
        self, path: str | Path, *, read_only: bool = False, checkpoint_threshold_mb: int | None = None
    ) -> None:
        """``checkpoint_threshold_mb``: DuckDB folds its write-ahead log into the file once the log
        is this large. Its default (16 MB) re-compresses partly filled row groups several times;
        the consumer uses 256 MB (``[store] checkpoint_threshold_mb``, docs/PERFORMANCE.md)."""
        self.path = Path(path)
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
        # Batches are written on this cursor, from the consumer's writer thread, while the
        # processor reads committed state on ``con`` (one DuckDB connection per thread).
        self._w = self.con.cursor()

    def _migrate(self) -> None:
        """Stores written before rejections and duplicates were keyed by payload too: re-key them."""
        keys = dict(
            self.con.execute(
                "SELECT table_name, constraint_column_names FROM duckdb_constraints()"
                " WHERE constraint_type = 'PRIMARY KEY' AND table_name IN ('rejections', 'duplicates')"
            ).fetchall()
        )
        for table, extra in (("rejections", "payload_sha256"), ("duplicates", "block_hash")):
            if extra in keys.get(table, [extra]):
                continue
            ddl = DDL[DDL.index(f"CREATE TABLE IF NOT EXISTS {table} (") :]
            ddl = ddl[: ddl.index(");") + 2].replace(f"EXISTS {table} (", f"EXISTS {table}_rekeyed (")
            self.con.execute("BEGIN TRANSACTION")
            self.con.execute(ddl)
            self.con.execute(f"INSERT INTO {table}_rekeyed SELECT * FROM {table}")
            self.con.execute(f"DROP TABLE {table}")
            self.con.execute(f"ALTER TABLE {table}_rekeyed RENAME TO {table}")
            self.con.execute("COMMIT")

    def close(self) -> None:
        self._w.close()
        self.con.close()

    # -- reads used by the consumer ---------------------------------------------------------------
    def heads(self) -> dict[str, DeviceHead]:
        rows = self.con.execute(
            "SELECT device_id, key_id, last_seq, last_block_hash, blocks, records,"
            " epoch_ns(first_seen), epoch_ns(last_seen) FROM devices"
        ).fetchall()
        return {r[0]: DeviceHead(r[1], r[2], bytes(r[3]), r[4], r[5], r[6], r[7]) for r in rows}

    def block_hash_at(self, device_id: str, seq: int) -> bytes | None:
        row = self.con.execute(
            "SELECT block_hash FROM blocks WHERE device_id = ? AND seq = ?", [device_id, seq]
        ).fetchone()
        return bytes(row[0]) if row else None

    def next_batch_no(self) -> int:
        row = self.con.execute("SELECT coalesce(max(batch_no) + 1, 0) FROM batches").fetchone()
        return int(row[0]) if row else 0

    def unanchored(self) -> list[tuple[int, bytes, int]]:
        """(batch_no, root, block_count) of stored batches without a ledger receipt."""
        rows = self.con.execute(
            "SELECT b.batch_no, b.root, b.block_count FROM batches b LEFT JOIN anchors a USING (batch_no)"
            " WHERE a.batch_no IS NULL ORDER BY b.batch_no"
        ).fetchall()
        return [(int(n), bytes(r), int(c)) for n, r, c in rows]

    def anchor_entries(self) -> list[tuple[int, int, bytes]]:
        """(batch_no, ledger entry index, entry hash) of every recorded anchor."""
        rows = self.con.execute(
            "SELECT batch_no, entry_index, entry_hash FROM anchors ORDER BY batch_no"
        ).fetchall()
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

    def counts(self) -> dict[str, int]:
        q = f"""SELECT
            {" + ".join(f"(SELECT count(*) FROM {t})" for t in TABLE_NAMES)},
            (SELECT count(*) FROM blocks), (SELECT count(*) FROM batches), (SELECT count(*) FROM anchors),
            (SELECT count(*) FROM rejections), (SELECT count(*) FROM duplicates), (SELECT count(*) FROM gaps),
            (SELECT count(*) FROM broker_resets)"""
        row = self.con.execute(q).fetchone()
        assert row is not None
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
    def write_batch(self, b: BatchRows) -> None:
        """One transaction: every row of the batch, or nothing. A value the store refuses raises
        ``StoreContentError``; any other failure ``StoreError``."""
        con = self._w
        try:
            con.execute("BEGIN TRANSACTION")
            self._insert(con, b)
            con.execute("COMMIT")
        except duckdb.Error as exc:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            cls = StoreContentError if isinstance(exc, _CONTENT_ERRORS) else StoreError
            raise cls(f"batch {b.batch_no} not written to {self.path}: {exc}") from exc

    def _insert(self, con: Any, b: BatchRows) -> None:
        for name, tbl in b.records.items():
            if tbl.num_rows:
                con.register("_incoming", tbl)
                cols = ", ".join(tbl.column_names)
                con.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM _incoming")
                con.unregister("_incoming")
        if b.blocks:
            con.register("_incoming", _rows_table(b.blocks, _BLOCK_NAMES, _BLOCK_TYPES))
            con.execute("INSERT INTO blocks SELECT * FROM _incoming")
            con.unregister("_incoming")
            con.execute(
                "INSERT INTO batches VALUES (?, ?, ?, ?, make_timestamp_ns(?))",
                [b.batch_no, b.root, len(b.blocks), b.record_count, b.created_at],
            )
        for (table, names, types), rows in zip(
            _SIDE_TABLES, (b.gaps, b.sessions, b.rejections, b.duplicates), strict=True
        ):
            if rows:
                con.register("_incoming", _rows_table(rows, names, types))
                con.execute(f"INSERT OR IGNORE INTO {table} ({', '.join(names)}) SELECT * FROM _incoming")
                con.unregister("_incoming")
        if b.heads:
            heads = [
                (d, h.key_id, h.last_seq, h.last_hash, h.blocks, h.records, h.first_seen, h.last_seen)
                for d, h in b.heads.items()
            ]
            con.register("_incoming", _rows_table(heads, _DEVICE_NAMES, _DEVICE_TYPES))
            con.execute("INSERT OR REPLACE INTO devices SELECT * FROM _incoming")
            con.unregister("_incoming")

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
                    (topic, partition, offset), ident = b.block_sources[i], b.blocks[i][2]
                else:
                    (topic, partition, offset), ident = (
                        b.session_sources[i],
                        sha256(b.sessions[i][10]).digest(),
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
        keys = {(blk[0], blk[1]) for blk in blocks}
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
            self._insert(con, part)
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

    def record_anchor(self, receipt: Any) -> None:
        try:
            self._w.execute(
                "INSERT OR IGNORE INTO anchors VALUES (?, ?, ?, ?, make_timestamp_ns(?), ?)",
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
