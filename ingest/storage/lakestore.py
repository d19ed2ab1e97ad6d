"""The lake store: the tables of docs/DATA.md in a DuckLake (catalog in PostgreSQL, data in Parquet
files), written by several consumer processes while analysts read every commit from other processes.

DuckLake has no PRIMARY KEY. What the DuckDB file's keys did is done here:

* **Exactly once.** Each batch's transaction also appends, per Kafka partition it consumed, the next
  offset to process (``kafka_offsets``). A consumer that is assigned a partition resumes from there
  (``positions``), not from Kafka's committed offset, so a batch stored before a crash is never
  processed again, and nothing after it is skipped.
* **Fencing.** Kafka keys messages by device, so a partition, and each device's chain, belongs to one
  consumer at a time. The claims live in PostgreSQL (``telematics_ingest.partition_owners``: one row
  per partition with an epoch): a consumer assigned a partition raises its epoch (``claim``), and
  every batch commits while holding a share lock on its partitions' rows, after checking that their
  epochs are still its own. A claim therefore waits for a commit in flight under the old epoch, and
  the old owner's next commit fails (``StoreFenced``) instead of writing rows the new owner writes too.
* **Batch numbers** come from a PostgreSQL sequence: several writers never reuse one.
* **Keys that one message may repeat** (a session event published twice, a gap) are checked against
  the stored rows in the batch's transaction; no other writer adds rows of the same device. That
  check reads the whole table, so the writer keeps each device's latest keys (``KeyMarks``): a key
  above them is new, and one of them redelivered is stored already, without the check.
* ``devices`` is a view over appended heads (``ingest/storage/schema.py``: ``lake_ddl``).

PostgreSQL holds only what must be locked or counted across writers (claims, the batch number); every
row analysts query is in the lake, with the Kafka positions in the same snapshot as the rows.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from typing import Any

import duckdb

from ingest.config import ParquetCodec, StoreConfig
from ingest.storage import lake
from ingest.storage.schema import (
    SAMPLE_PARTITIONING,
    TABLE_NAMES,
    TABLE_OF_ROW,
    GapRow,
    Row,
    SessionRow,
    lake_ddl,
)
from ingest.storage.store import (
    BatchRows,
    StoreError,
    StoreFenced,
    _append,
    _DuckStore,
)

SCHEMA = "telematics_ingest"  # our own PostgreSQL schema beside DuckLake's catalog tables
_INIT_LOCK = 0x7E1E_0013  # advisory lock: one process at a time creates the lake and its tables
# Advisory lock (with a batch number's low 31 bits): the one writer recording that batch's receipt.
# Batches 2**31 apart share a key; the receipts recorded at one time are all of recent batches.
_ANCHOR_LOCK = 0x7E1E_0014
_CREATE = re.compile(r"CREATE (?:OR REPLACE )?(?:TABLE|VIEW) (?:IF NOT EXISTS )?(\w+)")
# Keys the DuckDB file declares on rows one message may bring twice; checked before inserting here.
_KEYS: dict[type[Row], tuple[str, ...]] = {
    GapRow: ("device_id", "from_seq"),
    SessionRow: ("device_id", "boot", "session", "event"),
}
# Devices whose latest stored keys a writer keeps per keyed table (a few hundred bytes each); a
# lake with more checks every keyed row against its table, as before the marks.
MAX_MARKED_DEVICES = 250_000
RECENT_KEYS = 8  # the latest keys kept per device: what a redelivery repeats

Key = tuple[Any, ...]  # a row's key after its device_id
# device -> its latest keys known stored, ascending (the last: its highest)
Marks = dict[str, tuple[Key, ...]]


def split_by_marks(
    typ: type[Row], rows: list[Any], marks: Marks | None
) -> tuple[list[Any], list[Any], dict[str, list[Key]]]:
    """A batch's keyed rows, the first of each key only, as (new, doubtful, added): ``new`` rows
    have a key above their device's highest known (or a device with none stored), so the table
    cannot hold it; ``doubtful`` rows must be checked against the table; a row whose key is one of
    its device's latest known is in neither (stored already); ``added`` holds each device's new
    keys, in order. With no marks (``None``) every row is doubtful."""
    at = [typ._fields.index(c) for c in _KEYS[typ][1:]]
    seen: set[tuple[str, Key]] = set()
    new: list[Any] = []
    doubtful: list[Any] = []
    added: dict[str, list[Key]] = {}
    for r in rows:
        dev, k = r[0], tuple(r[i] for i in at)
        if (dev, k) in seen:
            continue
        seen.add((dev, k))
        if marks is None:
            doubtful.append(r)
            continue
        known = marks.get(dev, ())
        mine = added.get(dev)
        top = mine[-1] if mine else known[-1] if known else None
        if top is None or k > top:
            new.append(r)
            added.setdefault(dev, []).append(k)
        elif k not in known:
            doubtful.append(r)
    return new, doubtful, added


class KeyMarks:
    """Each device's latest stored keys, per keyed table (sessions, gaps), as this writer knows them.

    A device's keys grow (its boots and sessions count up, its gaps follow its chain head), so a row
    whose key is above its device's highest is new without reading the table, whose check costs more
    with every row stored; and a redelivered row repeats one of the latest keys. Exact while each
    device's highest known key is at least the highest the table holds for it. The keys are read
    inside a batch's transaction, added only once a batch is stored, and forgotten on every claim
    and every failed write, to be read again; a writer writes only the devices of the partitions it
    holds (Kafka keys every message by its device), and held since its keys were read, so no other
    writer added rows of them meanwhile. Erasure only removes rows, so a highest key stays high
    enough; a redelivered copy of one of a device's latest keys is not appended again even if
    erased since (the check would have stored it again, bringing erased data back)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[type[Row], Marks | None] = {}  # None: too many devices to keep
        self._generation = 0

    def forget(self) -> None:
        """Read the keys again at the next batch (a table found too large stays unmarked)."""
        with self._lock:
            self._known = {t: None for t, m in self._known.items() if m is None}
            self._generation += 1

    def begin(self) -> tuple[int, dict[type[Row], Marks | None]]:
        with self._lock:
            return self._generation, dict(self._known)

    def stored(
        self,
        generation: int,
        read: dict[type[Row], Marks | None],
        added: dict[type[Row], dict[str, list[Key]]],
    ) -> None:
        """A batch begun at ``generation`` is stored: keep the keys it read and the keys it added."""
        with self._lock:
            if generation != self._generation:
                return  # forgotten meanwhile: read again
            for typ, marks in read.items():
                self._known.setdefault(typ, marks)
            for typ, up in added.items():
                marks = self._known.get(typ)
                if marks is not None:
                    for dev, keys in up.items():
                        marks[dev] = (*marks.get(dev, ()), *keys)[-RECENT_KEYS:]
                    if len(marks) > MAX_MARKED_DEVICES:
                        self._known[typ] = None


class LakeStore(_DuckStore):
    device_table = "device_heads"

    def __init__(
        self,
        catalog: str,
        data_path: str | None,
        *,
        read_only: bool = False,
        group: str = "telematics-ingest",
        inline_rows: int = StoreConfig().inline_rows,
        s3: dict[str, str] | None = None,
        threads: int = 0,
        parquet_compression: ParquetCodec | None = None,
        key_marks: bool = True,
    ) -> None:
        """``catalog``: a libpq connection string of the PostgreSQL database holding the catalog;
        ``data_path``: where a new lake writes its Parquet files (a directory or an s3:// URL); None:
        an existing lake's own (the catalog records it).
        ``read_only``: an analyst's view: one snapshot for the life of the connection.
        ``group``: the consumer group whose partition claims fence the writes. ``inline_rows``:
        commits of fewer rows per table go into the catalog instead of a Parquet file each (by
        default ``[store] inline_rows``'s: a batch's one-row tables and its receipt; 0: none).
        ``s3``: the S3 secret's settings (endpoint, key_id, secret, region, url_style, use_ssl).
        ``threads``: DuckDB's threads for this connection (0: its default, one per core).
        ``parquet_compression``: the codec of the Parquet files the lake writes from now on, set
        lake-wide by a writer (``[store] parquet_compression``); None: the lake's as it is.
        ``key_marks``: False checks every session event and gap against its table (``KeyMarks``;
        a benchmark's baseline)."""
        self.location = f"DuckLake on postgres:{catalog}"
        self.catalog = catalog
        self.group = group
        self._epochs: dict[tuple[str, int], int] = {}
        self._pg_lock = threading.Lock()
        self._marks = KeyMarks()
        self._keep_marks = key_marks
        # The batch being written: the keys its keyed rows are split by, and the keys it adds.
        self._reading: dict[type[Row], Marks | None] = {}
        self._adding: dict[type[Row], dict[str, list[Key]]] = {}
        try:
            import psycopg

            self._psycopg = psycopg
            # Two sessions: claims (rebalance callbacks) never wait behind a batch's fence.
            self._conns: dict[str, Any] = {
                "claims": psycopg.connect(catalog, autocommit=True),
                "fence": psycopg.connect(catalog),
            }
        except Exception as exc:  # psycopg.Error, or a malformed connection string
            raise StoreError(f"cannot reach the lake's PostgreSQL catalog ({catalog}): {exc}") from exc
        try:
            self.con = duckdb.connect()
            self._use_threads(threads)
            lake.load_extensions(self.con)
            if s3:
                lake.s3_secret(self.con, s3)
            with self._advisory(not read_only):
                lake.attach(
                    self.con,
                    catalog,
                    data_path=data_path,
                    read_only=read_only,
                    inline_rows=None if read_only else inline_rows,
                )
                self.con.execute("USE lake")
                if not read_only:
                    if parquet_compression is not None:
                        lake.set_parquet_compression(self.con, parquet_compression)
                    self._create()
                    self._pg_objects()
        except duckdb.Error as exc:
            raise StoreError(f"cannot open the lake ({catalog}): {exc}") from exc
        self.snapshot_ns: int | None = None
        self._in_snapshot = False  # a reader's transaction is open
        if read_only:
            try:
                self._snapshot()
            except StoreError:
                self._close_connections()
                raise
        self._w = self.con.cursor()
        self._w.execute("USE lake")

    def _snapshot(self) -> None:
        """Start the reader's transaction: one snapshot, the latest committed, for all its queries."""
        try:
            # Read before the snapshot is taken: a batch anchored in the ledger before this time was
            # committed before it too, so it is in the snapshot (the audit's live mode relies on it).
            self.snapshot_ns = time.time_ns()
            self.con.execute("BEGIN TRANSACTION")
            self._in_snapshot = True
            self.con.execute("SELECT count(*) FROM batches").fetchone()  # taken now
        except duckdb.Error as exc:
            raise StoreError(f"cannot read the lake ({self.catalog}): {exc}") from exc

    def _end_snapshot(self) -> None:
        if self._in_snapshot:
            self._in_snapshot = False
            try:
                self.con.execute("ROLLBACK")
            except duckdb.TransactionException:
                pass  # ended already (a COMMIT or ROLLBACK of the caller's own on ``con``)
            except duckdb.Error as exc:
                raise StoreError(f"cannot read the lake ({self.catalog}): {exc}") from exc

    def refresh(self) -> None:
        """A reader moves to the latest snapshot: its transaction ends and a new one begins, on the
        same connection (milliseconds; opening a reader again attaches the lake anew, ~0.5 s of CPU)."""
        if self.snapshot_ns is not None:  # (the writer sees its own commits)
            self._end_snapshot()
            self._snapshot()

    def release(self) -> None:
        """A reader between uses ends its snapshot: the PostgreSQL session under it then holds no
        transaction open (an idle one holds back PostgreSQL's clean-up of the catalog's dead rows).
        Until the next ``refresh``, each query sees the latest snapshot of its own."""
        self._end_snapshot()  # (a writer has none)

    @contextlib.contextmanager
    def _advisory(self, take: bool) -> Any:
        if not take:
            yield
            return
        self._pg("claims").execute("SELECT pg_advisory_lock(%s)", [_INIT_LOCK])
        try:
            yield
        finally:
            self._pg("claims").execute("SELECT pg_advisory_unlock(%s)", [_INIT_LOCK])

    def _create(self) -> None:
        have = {r[0] for r in self.con.execute("SHOW TABLES").fetchall()}
        for stmt in lake_ddl().split(";"):
            m = _CREATE.search(stmt)
            if m is not None and m.group(1) not in have:  # a restart changes no schema
                self.con.execute(stmt)
        # A lake of old: its rows are not from bundles. (DuckLake adds no column with a constraint,
        # so there the column may hold NULL; every writer sets it.)
        for t in ("rejections", "duplicates"):
            if t in have and "bundle_index" not in {
                r[0] for r in self.con.execute(f"DESCRIBE {t}").fetchall()
            }:
                self.con.execute(f"ALTER TABLE {t} ADD COLUMN bundle_index INTEGER DEFAULT 0")
        if "driving_samples" not in have:
            for t in TABLE_NAMES:
                self.con.execute(f"ALTER TABLE {t} SET PARTITIONED BY ({SAMPLE_PARTITIONING})")

    def _pg_objects(self) -> None:
        c = self._pg("claims")
        c.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        c.execute(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA}.partition_owners ("
            " consumer_group text NOT NULL, topic text NOT NULL, kafka_partition integer NOT NULL,"
            " epoch bigint NOT NULL, owner text NOT NULL, claimed_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (consumer_group, topic, kafka_partition))"
        )
        c.execute(f"CREATE SEQUENCE IF NOT EXISTS {SCHEMA}.batch_no MINVALUE 0 START 0")
        # The order of every writer's commits: the latest device head and Kafka position win.
        c.execute(f"CREATE SEQUENCE IF NOT EXISTS {SCHEMA}.commit_seq")
        # A lake filled before the sequence existed (or restored from a backup): never reuse a number.
        row = next(iter(self.con.execute("SELECT max(batch_no) FROM batches").fetchall()), None)
        if row and row[0] is not None:
            c.execute(
                f"SELECT setval('{SCHEMA}.batch_no', greatest(%s,"
                f" (SELECT last_value FROM {SCHEMA}.batch_no)))",
                [int(row[0])],
            )

    def close(self) -> None:
        self._w.close()
        self._close_connections()

    def _close_connections(self) -> None:
        # A reader ends its transaction first: closed inside it, DuckDB rolls back in a destructor
        # and aborts the process when the catalog is gone (DuckDB 1.5.5).
        with contextlib.suppress(StoreError):
            self._end_snapshot()
        self.con.close()
        for pg in self._conns.values():
            with contextlib.suppress(Exception):
                pg.close()

    def _pg(self, name: str) -> Any:
        """PostgreSQL session ``name``, connected again if the server closed it (a restart)."""
        c = self._conns[name]
        if c.closed or c.broken:
            with contextlib.suppress(Exception):
                c.close()
            c = self._psycopg.connect(self.catalog, autocommit=name == "claims")
            self._conns[name] = c
        return c

    # -- partitions, batch numbers ----------------------------------------------------------------
    def claim(self, topic: str, partitions: list[int], owner: str) -> None:
        """Raise the epoch of each partition to this writer's (waiting for a commit in flight under
        an older one); later batches commit only while these epochs are still the latest."""
        try:
            with self._pg_lock:
                for p in sorted(partitions):
                    row = (
                        self._pg("claims")
                        .execute(
                            f"INSERT INTO {SCHEMA}.partition_owners AS o"
                            " (consumer_group, topic, kafka_partition, epoch, owner) VALUES (%s, %s, %s, 1, %s)"
                            " ON CONFLICT (consumer_group, topic, kafka_partition) DO UPDATE"
                            " SET epoch = o.epoch + 1, owner = EXCLUDED.owner, claimed_at = now()"
                            " RETURNING epoch",
                            [self.group, topic, p, owner],
                        )
                        .fetchone()
                    )
                    assert row is not None
                    # The keys are read again, after the claim: the partition's last owner may have
                    # added rows of its devices until now. (Before the epoch is taken up: a batch
                    # that passes the fence under it begins after this.)
                    self._marks.forget()
                    self._epochs[(topic, p)] = int(row[0])
        except self._psycopg.Error as exc:
            raise StoreError(f"cannot claim partitions {partitions} of {topic}: {exc}") from exc

    def _epoch_of(self, topic: str, partition: int) -> int:
        return self._epochs.get((topic, partition), 0)

    def next_batch_no(self) -> int:
        try:
            with self._pg_lock:
                row = self._pg("claims").execute(f"SELECT nextval('{SCHEMA}.batch_no')").fetchone()
        except self._psycopg.Error as exc:
            raise StoreError(f"cannot take a batch number: {exc}") from exc
        assert row is not None
        return int(row[0])

    # -- the one write transaction per batch ------------------------------------------------------
    def write_batch(self, b: BatchRows) -> None:
        """One lake transaction: every row of the batch and its Kafka positions, committed while the
        batch's partitions are still this writer's (``StoreFenced`` if not)."""
        try:
            pg = self._pg("fence")
            with pg.transaction():
                self._check_claims(pg, b)
                # Taken under the claims' share lock: a later owner's commits all come after.
                row = pg.execute(f"SELECT nextval('{SCHEMA}.commit_seq')").fetchone()
                assert row is not None
                generation, self._reading = self._marks.begin()  # after the claims' check
                self._adding = {}
                self._transaction(b, int(row[0]))
        except self._psycopg.Error as exc:
            self._marks.forget()
            # Raised after the lake's commit too (the fence's own commit failed): the batch is then
            # stored with its positions, and the rewind resumes after it.
            raise StoreError(f"batch {b.batch_no}: the partition claims cannot be checked: {exc}") from exc
        except BaseException:
            self._marks.forget()
            raise
        self._marks.stored(generation, self._reading, self._adding)

    def _check_claims(self, pg: Any, b: BatchRows) -> None:
        by_topic: dict[str, list[int]] = {}
        for t, p in b.offsets:
            by_topic.setdefault(t, []).append(p)
        for topic, parts in by_topic.items():
            rows = pg.execute(
                f"SELECT kafka_partition, epoch, owner FROM {SCHEMA}.partition_owners"
                " WHERE consumer_group = %s AND topic = %s AND kafka_partition = ANY(%s)"
                " ORDER BY kafka_partition FOR SHARE",
                [self.group, topic, parts],
            ).fetchall()
            now = {int(p): (int(e), str(o)) for p, e, o in rows}
            for p in parts:
                mine = self._epochs.get((topic, p), 0)
                epoch, owner = now.get(p, (0, ""))
                if epoch != mine or mine == 0:
                    raise StoreFenced(
                        f"batch {b.batch_no} not written: partition {topic}/{p} was claimed by {owner}"
                        f" (epoch {epoch}; this consumer holds epoch {mine}); it belongs to that consumer now"
                    )

    def _insert_keyed(self, con: Any, typ: type[Row], rows: list[Any]) -> None:
        table = TABLE_OF_ROW[typ]
        key = _KEYS.get(typ)
        if key is None:  # keyed by a Kafka position: stored once, with the position's batch
            _append(con, typ, rows)
            return
        if typ not in self._reading:
            self._reading[typ] = self._read_marks(con, typ) if self._keep_marks else None
        new, doubtful, self._adding[typ] = split_by_marks(typ, rows, self._reading[typ])
        _append(con, typ, new)
        _append(  # only these read the table: every row's key columns
            con,
            typ,
            doubtful,
            where=f" WHERE NOT EXISTS (SELECT 1 FROM {table} s WHERE "
            + " AND ".join(f"s.{c} = i.{c}" for c in key)
            + ")",
        )

    def _read_marks(self, con: Any, typ: type[Row]) -> Marks | None:
        """Each device's highest key in the table of ``typ`` (one read of its key columns), or None
        for a table of more than ``MAX_MARKED_DEVICES`` devices."""
        k = ", ".join(_KEYS[typ][1:])
        got = con.execute(
            f"SELECT device_id, max(row({k})) FROM {TABLE_OF_ROW[typ]} GROUP BY device_id"
            f" LIMIT {MAX_MARKED_DEVICES + 1}"
        ).fetchall()
        return None if len(got) > MAX_MARKED_DEVICES else {d: (tuple(m),) for d, m in got}

    def _insert_heads(self, con: Any, seq: int) -> None:
        con.execute("INSERT INTO device_heads SELECT *, ? FROM _incoming", [seq])

    def _anchor_sql(self) -> str:
        return (  # no key in the lake: the receipt is appended unless its batch has one already
            "INSERT INTO anchors SELECT $1, $2, $3, $4, make_timestamp_ns($5), $6"
            " WHERE NOT EXISTS (SELECT 1 FROM anchors WHERE batch_no = $1)"
        )

    def record_anchor(self, receipt: Any) -> None:
        """The receipt, once per batch across writers. Two consumers may anchor one batch (a new
        owner recovers a batch the old one stored and has not yet recorded): the lake would take
        both appends (no key, and appends to one table do not conflict), so the check and the
        append run under a PostgreSQL lock on the batch, the check's snapshot taken after the
        other's commit. A writer that finds the lock taken leaves the receipt to its holder, which
        is recording this same receipt (the ledger anchors a batch once) and may be paused: it is
        never waited for. Should the holder die first, the batch stays without a receipt until a
        consumer next starts, rewinds or is given partitions (``Consumer.anchor_unanchored``)."""
        try:
            pg = self._pg("fence")
            with pg.transaction():
                row = pg.execute(
                    "SELECT pg_try_advisory_xact_lock(%s, %s)", [_ANCHOR_LOCK, receipt.batch_no % 2**31]
                ).fetchone()
                if row is not None and row[0]:
                    super().record_anchor(receipt)
        except self._psycopg.Error as exc:
            raise StoreError(f"anchor of batch {receipt.batch_no} not recorded: {exc}") from exc

    # -- files ------------------------------------------------------------------------------------
    def purge(self) -> None:
        """Rewrite every data file that has deleted rows, then expire every older snapshot and delete
        every file no snapshot references: the deleted rows are in no file and no snapshot after."""
        try:
            self.con.execute("CALL ducklake_flush_inlined_data('lake')")
            self.con.execute("CALL ducklake_rewrite_data_files('lake', delete_threshold => 0)")
            self.con.execute("CALL ducklake_expire_snapshots('lake', older_than => now())")
            self.con.execute("CALL ducklake_cleanup_old_files('lake', cleanup_all => true)")
        except duckdb.Error as exc:
            raise StoreError(f"cannot rewrite the lake's files: {exc}") from exc
