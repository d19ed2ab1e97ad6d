"""The store's schema, one column order: the DDL, the record tables (derived from the record-kind
registry), and a typed row per per-batch table whose fields are the table's columns in order, with
their Arrow types (rows reach DuckDB as Arrow columns)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

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
    bundle_index    INTEGER NOT NULL DEFAULT 0,  -- the message's place in its bundle (0: not a bundle)
    -- the position AND the payload: a broker that lost its log reuses positions for new messages
    PRIMARY KEY (kafka_topic, kafka_partition, kafka_offset, bundle_index, payload_sha256)
);
CREATE TABLE IF NOT EXISTS broker_resets (
    kafka_topic     VARCHAR NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kind            VARCHAR NOT NULL,  -- offsets_regressed | log_truncated
    expected_offset BIGINT NOT NULL,   -- the next offset the consumer expected
    broker_offset   BIGINT NOT NULL,   -- the offset the broker delivered, or its high-water mark
    detected_at     TIMESTAMP_NS NOT NULL
);
CREATE TABLE IF NOT EXISTS kafka_offsets (
    kafka_topic     VARCHAR NOT NULL,
    kafka_partition INTEGER NOT NULL,
    next_offset     BIGINT NOT NULL,   -- the next message of the partition to process
    epoch           BIGINT NOT NULL,   -- the writer's claim on the partition (0: the one-writer DuckDB file)
    commit_seq      BIGINT NOT NULL,   -- the order of the commits (in a lake: of every writer's)
    committed_at    TIMESTAMP_NS NOT NULL,
    PRIMARY KEY (kafka_topic, kafka_partition)
);
CREATE TABLE IF NOT EXISTS duplicates (
    kafka_topic     VARCHAR NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT NOT NULL,
    device_id       VARCHAR NOT NULL,
    seq             UBIGINT NOT NULL,
    block_hash      BLOB NOT NULL,
    received_at     TIMESTAMP_NS NOT NULL,
    bundle_index    INTEGER NOT NULL DEFAULT 0,  -- the copy's place in its bundle (0: not a bundle)
    PRIMARY KEY (kafka_topic, kafka_partition, kafka_offset, bundle_index, block_hash)
);
"""
)


# -- typed rows of the per-batch tables: field order = the DDL's column order ------------------------
class BlockRow(NamedTuple):
    device_id: str
    seq: int
    block_hash: bytes
    header: bytes
    signature: bytes
    salt_seed: bytes
    key_id: str
    boot: int
    record_count: int
    t_first: int
    t_last: int
    merkle_root: bytes
    batch_no: int  # set when the batch is sealed (Processor.build_rows)
    batch_index: int
    kafka_partition: int
    kafka_offset: int
    received_at: int
    historical: bool


class DeviceRow(NamedTuple):
    device_id: str
    key_id: str
    last_seq: int
    last_block_hash: bytes
    blocks: int
    records: int
    first_seen: int
    last_seen: int


class GapRow(NamedTuple):
    device_id: str
    from_seq: int
    to_seq: int
    detected_at: int


class SessionRow(NamedTuple):
    device_id: str
    boot: int
    session: int
    event: str
    key_id: str
    ts: int
    next_seq: int
    agent_version: str
    schema_version: int
    config: str  # JSON
    message: bytes  # the signed message exactly as received
    received_at: int


class RejectionRow(NamedTuple):
    kafka_topic: str
    kafka_partition: int
    kafka_offset: int
    reason: str
    detail: str
    device_id: str | None
    key_id: str | None
    seq: int | None
    payload_size: int
    payload_sha256: bytes
    received_at: int
    bundle_index: int  # the message's index in its bundle (WIRE.md 12.5); 0 for a record of its own


class DuplicateRow(NamedTuple):
    kafka_topic: str
    kafka_partition: int
    kafka_offset: int
    device_id: str
    seq: int
    block_hash: bytes
    received_at: int
    bundle_index: int


Row = BlockRow | DeviceRow | GapRow | SessionRow | RejectionRow | DuplicateRow

# The Arrow type of each field, in field order (rows go to DuckDB as Arrow columns: one INSERT per
# batch, not one per row; ``executemany`` costs about 0.5 ms a row).
ARROW_TYPES: dict[type[Row], tuple[pa.DataType, ...]] = {
    BlockRow: (
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
    ),
    DeviceRow: (
        pa.string(),
        pa.string(),
        pa.uint64(),
        pa.binary(),
        pa.uint64(),
        pa.uint64(),
        pa.int64(),
        pa.int64(),
    ),
    GapRow: (pa.string(), pa.uint64(), pa.uint64(), pa.int64()),
    SessionRow: (
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
    ),
    RejectionRow: (
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
        pa.int32(),
    ),
    DuplicateRow: (
        pa.string(),
        pa.int32(),
        pa.int64(),
        pa.string(),
        pa.uint64(),
        pa.binary(),
        pa.int64(),
        pa.int32(),
    ),
}
assert all(len(t) == len(r._fields) for r, t in ARROW_TYPES.items())
# The table each row type is written to.
TABLE_OF_ROW: dict[type[Row], str] = {
    BlockRow: "blocks",
    DeviceRow: "devices",
    GapRow: "gaps",
    SessionRow: "session_events",
    RejectionRow: "rejections",
    DuplicateRow: "duplicates",
}
_TIMESTAMPS = {"t_first", "t_last", "received_at", "first_seen", "last_seen", "detected_at", "ts"}  # ns


def rows_table(rows: Sequence[Row], typ: type[Row]) -> pa.Table:
    """Rows of one type as an Arrow table, in the DDL's column order (timestamps as ns)."""
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in typ._fields]
    arrays = []
    for name, arrow, col in zip(typ._fields, ARROW_TYPES[typ], cols, strict=True):
        arr = pa.array(col, arrow)
        arrays.append(arr.cast(pa.timestamp("ns")) if name in _TIMESTAMPS else arr)
    return pa.table(arrays, names=list(typ._fields))


# -- the lake's variant ------------------------------------------------------------------------------
_KEY = re.compile(r",([ \t]*(?:--[^\n]*)?)((?:\n[ \t]*--[^\n]*)*)\n[ \t]*PRIMARY KEY \([^)]*\)")
_DEVICES = DDL[DDL.index("CREATE TABLE IF NOT EXISTS devices (") :]
_DEVICES = _DEVICES[: _DEVICES.index(");") + 2]
# Every record table is partitioned by day of the vehicle clock: retention drops whole files, and a
# query on a time range reads only its days.
SAMPLE_PARTITIONING = "year(ts), month(ts), day(ts)"


def lake_ddl() -> str:
    """The same tables for DuckLake, which has no PRIMARY KEY or UNIQUE constraint. What the keys did
    there is done by the lake store (ingest/storage/lakestore.py): Kafka positions stored with each
    batch (exactly-once), and keys checked before inserting where one message may come twice.

    ``devices`` is the one row per device that the DuckDB file rewrites per batch; a lake rewrite
    of a small table by every batch of several writers would conflict, so the lake appends the new
    heads to ``device_heads`` and ``devices`` is a view of the latest one per device (by the order
    of the writers' commits, a PostgreSQL sequence)."""
    ddl = _KEY.sub(r"\1\2", DDL).replace(" PRIMARY KEY,", " NOT NULL,")
    heads = _KEY.sub(r"\1\2", _DEVICES).replace(" PRIMARY KEY,", " NOT NULL,")
    heads = heads.replace("devices (", "device_heads (").replace(
        "last_seen       TIMESTAMP_NS NOT NULL",
        "last_seen       TIMESTAMP_NS NOT NULL,\n    commit_seq      BIGINT NOT NULL",
    )
    cols = ", ".join(DeviceRow._fields)
    view = (
        f"CREATE OR REPLACE VIEW devices AS SELECT {cols} FROM device_heads"
        " QUALIFY row_number() OVER (PARTITION BY device_id ORDER BY commit_seq DESC) = 1;"
    )
    ddl = ddl.replace(_KEY.sub(r"\1\2", _DEVICES).replace(" PRIMARY KEY,", " NOT NULL,"), heads + "\n" + view)
    ddl = ddl.replace("CREATE VIEW IF NOT EXISTS", "CREATE OR REPLACE VIEW")
    assert "PRIMARY KEY" not in ddl and "device_heads" in ddl
    return ddl
