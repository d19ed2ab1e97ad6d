"""The lake store (ingest/storage/lakestore.py) on the stack's real PostgreSQL, filled through the real
Processor (simulators.offline): proofs and the audit work on it, a fenced writer cannot commit, a
claim waits for the commit in flight, a receipt two writers record at once is stored once, a reader
keeps one snapshot, and an erasure leaves none of the vehicle's rows in any file under the data
path or in the catalog."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest.ledger.base import Receipt
from ingest.ops.erase import erase_device
from ingest.ops.proofs import select_rows
from ingest.storage.lakestore import _ANCHOR_LOCK, SCHEMA, LakeStore
from ingest.storage.schema import GapRow, SessionRow
from ingest.storage.store import BatchRows, Store, StoreFenced
from schemas.proof import verify_bundle
from tests.records import T0, trigger
from tests.unit.test_data_queries import QUERIES
from tests.unit.test_proofs import build_world

pytestmark = pytest.mark.integration


def _batch(store: Store, offsets: dict[tuple[str, int], int]) -> BatchRows:
    return BatchRows(
        batch_no=store.next_batch_no(),
        root=b"\0" * 32,
        created_at=time.time_ns(),
        records={},
        offsets=offsets,
    )


def test_proofs_audit_and_tamper_on_the_lake(lake_catalog: str, tmp_path: Path) -> None:
    # on one DuckDB thread, as the consumer opens it ([store] consumer_duckdb_threads)
    w = build_world(tmp_path, store=LakeStore(lake_catalog, str(tmp_path / "lake"), threads=1))
    assert w.store.con.execute("SELECT current_setting('threads')").fetchone() == (1,)
    rows = select_rows(w.store, None, None, 12, sample=True)
    assert len(rows) == 12
    assert verify_bundle(w.bundle(rows), operator_key=w.operator.public_key).ok
    rep = w.audit()
    assert rep.ok, [str(f) for f in rep.findings[:5]]
    assert rep.records == 4 * 6 * 11 and rep.batches == rep.anchors > 0
    assert w.store.counts()["records"] == 4 * 6 * 11
    # a bit flipped in a stored value is found, in the lake as in a DuckDB file
    dev = w.fleet[1].device_id
    w.store.con.execute(
        "UPDATE driving_samples SET speed_mps = speed_mps + 1 WHERE device_id = ? AND block_seq = 2 AND idx = 3",
        [dev],
    )
    rep = w.audit()
    assert [(f.kind, f.where) for f in rep.findings] == [("row_changed", f"driving_samples {dev}/2/3")], (
        rep.findings
    )


def test_a_fenced_writer_cannot_commit(lake_catalog: str, tmp_path: Path) -> None:
    a = LakeStore(lake_catalog, str(tmp_path / "lake"), group="g")
    b = LakeStore(lake_catalog, str(tmp_path / "lake"), group="g")
    a.claim("t", [0, 1], "a")
    a.write_batch(_batch(a, {("t", 0): 5, ("t", 1): 2}))
    b.claim("t", [0], "b")  # a rebalance gave partition 0 to b; a does not know yet (a zombie)
    with pytest.raises(StoreFenced, match="claimed by b"):
        a.write_batch(_batch(a, {("t", 0): 9, ("t", 1): 3}))
    assert b.positions("t") == {("t", 0): 5, ("t", 1): 2}  # nothing of the fenced batch
    a.write_batch(_batch(a, {("t", 1): 3}))  # a still owns partition 1
    b.write_batch(_batch(b, {("t", 0): 7}))
    assert a.positions("t") == {("t", 0): 7, ("t", 1): 3}
    # a writer that never claimed a partition cannot write it either
    c = LakeStore(lake_catalog, str(tmp_path / "lake"), group="g")
    with pytest.raises(StoreFenced):
        c.write_batch(_batch(c, {("t", 2): 1}))
    # batch numbers are never given twice, whichever writer asks
    nums = [s.next_batch_no() for s in (a, b, c, a, b, c)]
    assert len(set(nums)) == 6 and nums == sorted(nums)
    for s in (a, b, c):
        s.close()


def test_a_claim_waits_for_the_commit_in_flight(lake_catalog: str, tmp_path: Path) -> None:
    a = LakeStore(lake_catalog, str(tmp_path / "lake"), group="g")
    b = LakeStore(lake_catalog, str(tmp_path / "lake"), group="g")
    a.claim("t", [0], "a")
    # What a's write_batch holds while its lake transaction commits: a share lock on the claim.
    with psycopg.connect(lake_catalog) as pg, pg.transaction():
        pg.execute(
            f"SELECT epoch FROM {SCHEMA}.partition_owners WHERE consumer_group = 'g' AND topic = 't'"
            " AND kafka_partition = 0 FOR SHARE"
        )
        done = threading.Event()

        def claim() -> None:
            b.claim("t", [0], "b")
            done.set()

        t = threading.Thread(target=claim)
        t.start()
        assert not done.wait(0.5), "the claim did not wait for the commit in flight"
    t.join(10)
    assert done.is_set()
    with pytest.raises(StoreFenced):
        a.write_batch(_batch(a, {("t", 0): 1}))
    a.close()
    b.close()


def _keyed(store: Store, sessions: list[SessionRow], gaps: list[GapRow]) -> BatchRows:
    b = _batch(store, {("t", 0): store.next_batch_no()})
    b.sessions, b.gaps = sessions, gaps
    return b


def _ev(dev: str, boot: int, session: int, event: str = "birth") -> SessionRow:
    return SessionRow(dev, boot, session, event, "k", T0, 0, "1", 1, "{}", b"m", T0)


def test_session_events_and_gaps_are_stored_once_across_writers_claims_and_restarts(
    lake_catalog: str, tmp_path: Path
) -> None:
    def sessions(s: LakeStore, dev: str = "d") -> Any:
        q = "SELECT boot, session, event FROM session_events WHERE device_id = ? ORDER BY ALL"
        return s.con.execute(q, [dev]).fetchall()

    def gaps(s: LakeStore) -> Any:
        return s.con.execute("SELECT device_id, from_seq FROM gaps ORDER BY ALL").fetchall()

    a = LakeStore(lake_catalog, str(tmp_path / "lake"), group="g")
    a.claim("t", [0], "a")
    a.write_batch(_keyed(a, [_ev("d", 1, 1), _ev("e", 0, 0)], [GapRow("d", 0, 4, T0)]))
    # redelivered beside new ones: each key once
    a.write_batch(_keyed(a, [_ev("d", 1, 1), _ev("d", 1, 2)], [GapRow("d", 0, 4, T0), GapRow("d", 7, 8, T0)]))
    assert sessions(a) == [(1, 1, "birth"), (1, 2, "birth")] and sessions(a, "e") == [(0, 0, "birth")]
    assert gaps(a) == [("d", 0), ("d", 7)]
    # what a keeps: each device's latest keys, so that neither a key above them nor one of them
    # redelivered needs a read of the table
    assert a._marks.begin()[1] == {
        SessionRow: {"d": ((1, 1, "birth"), (1, 2, "birth")), "e": ((0, 0, "birth"),)},
        GapRow: {"d": ((0,), (7,))},
    }
    # b takes the partition over and stores d's next session; a's next write is fenced
    b = LakeStore(lake_catalog, str(tmp_path / "lake"), group="g")
    b.claim("t", [0], "b")
    b.write_batch(_keyed(b, [_ev("d", 1, 2), _ev("d", 1, 3)], []))
    with pytest.raises(StoreFenced):
        a.write_batch(_keyed(a, [_ev("d", 1, 4)], []))
    assert a._marks.begin()[1] == {}, "a failed write forgets the keys"
    a.claim("t", [0], "a")
    a.write_batch(_keyed(a, [_ev("d", 1, 3)], [GapRow("d", 7, 8, T0)]))
    assert sessions(a) == [(1, 1, "birth"), (1, 2, "birth"), (1, 3, "birth")]
    # b again, and a takes the partition back with no failed write between: the claim forgets
    b.claim("t", [0], "b")
    b.write_batch(_keyed(b, [_ev("d", 1, 4)], []))
    a.claim("t", [0], "a")
    a.write_batch(_keyed(a, [_ev("d", 1, 4)], []))
    assert sessions(a)[-2:] == [(1, 3, "birth"), (1, 4, "birth")]
    # keys out of order are checked against the table (a device id with a quote, too), once each
    odd = [_ev("o'k", 1, 5), _ev("o'k", 1, 1)]
    a.write_batch(_keyed(a, odd, []))
    a.write_batch(_keyed(a, odd, []))
    assert sessions(a, "o'k") == [(1, 1, "birth"), (1, 5, "birth")]
    # a writer started afresh reads each device's highest key from the table: that key
    # redelivered, the ones below it and a gap again are not stored twice; the next event is
    c = LakeStore(lake_catalog, str(tmp_path / "lake"), group="g")
    c.claim("t", [0], "c")
    again = [_ev("d", 1, 4), _ev("e", 0, 0), _ev("d", 1, 1), _ev("d", 1, 4, "death"), _ev("d", 2, 0)]
    c.write_batch(_keyed(c, again, [GapRow("d", 0, 4, T0), GapRow("d", 7, 8, T0)]))
    assert sessions(c) == [
        (1, 1, "birth"),
        (1, 2, "birth"),
        (1, 3, "birth"),
        (1, 4, "birth"),
        (1, 4, "death"),
        (2, 0, "birth"),
    ]
    assert sessions(c, "e") == [(0, 0, "birth")] and gaps(c) == [("d", 0), ("d", 7)]
    for s in (a, b, c):
        s.close()


def test_a_receipt_two_writers_record_at_once_is_stored_once(lake_catalog: str, tmp_path: Path) -> None:
    # A new owner recovers a batch the old one stored but has not yet recorded: both record the
    # same receipt at the same moment. The lake has no key; the store must still keep one row.
    a = LakeStore(lake_catalog, str(tmp_path / "lake"), group="g")
    b = LakeStore(lake_catalog, str(tmp_path / "lake"), group="g")
    batches = range(12)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def record(store: LakeStore) -> None:
        try:
            for n in batches:
                start.wait(10)
                store.record_anchor(Receipt("test", n, b"\1" * 32, n, bytes([n]) * 32, T0))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=record, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    rows = a.con.execute("SELECT batch_no, count(*) FROM anchors GROUP BY ALL ORDER BY 1").fetchall()
    assert rows == [(n, 1) for n in batches], rows
    assert a.anchor_entries() == [(n, n, bytes([n]) * 32) for n in batches]
    # One-row commits stay in the catalog (``inline_rows``): receipts add no Parquet file, which
    # every later receipt's check would have to open.
    assert a.con.execute("SELECT count(*) FROM ducklake_list_files('lake', 'anchors')").fetchone() == (0,)
    a.close()
    b.close()


def test_a_receipt_being_recorded_by_a_paused_writer_is_not_waited_for(
    lake_catalog: str, tmp_path: Path
) -> None:
    # A consumer paused (SIGSTOP) while recording batch 5's receipt holds its lock: a new owner
    # recovering batch 5 must not hang on it (it would never become ready), and other batches go on.
    store = LakeStore(lake_catalog, str(tmp_path / "lake"), group="g")
    paused = psycopg.connect(lake_catalog)
    paused.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_ANCHOR_LOCK, 5])  # its transaction stays open
    done = threading.Event()

    def record() -> None:
        for n in (5, 6):
            store.record_anchor(Receipt("test", n, b"\1" * 32, n, bytes([n]) * 32, T0))
        done.set()

    t = threading.Thread(target=record, daemon=True)
    t.start()
    t.join(60)
    try:
        assert done.is_set(), "recording a receipt waited for a paused writer's lock"
        assert [n for n, _i, _h in store.anchor_entries()] == [6]  # batch 5 is its holder's to record
    finally:
        paused.rollback()  # the holder goes away without recording: a later recovery records it
        paused.close()
    store.record_anchor(Receipt("test", 5, b"\1" * 32, 5, bytes([5]) * 32, T0))
    assert [n for n, _i, _h in store.anchor_entries()] == [5, 6]
    store.close()


def _codecs(files: list[Path]) -> set[str]:
    return {
        md.row_group(g).column(c).compression
        for f in files
        for md in (pq.ParquetFile(f).metadata,)
        for g in range(md.num_row_groups)
        for c in range(md.num_columns)
    }


def test_the_lake_writes_its_parquet_files_with_the_configured_codec(
    lake_catalog: str, tmp_path: Path
) -> None:
    data = tmp_path / "lake"
    w = build_world(
        tmp_path, vehicles=2, blocks=2, store=LakeStore(lake_catalog, str(data), parquet_compression="zstd")
    )
    first = sorted(data.rglob("*.parquet"))
    assert first and _codecs(first) == {"ZSTD"}
    w.store.close()
    # another writer, configured otherwise: its files are uncompressed, the older ones stay as they
    # were, and both read as one table
    store = LakeStore(lake_catalog, None, inline_rows=0, parquet_compression="uncompressed")
    store.claim("t", [0], "w")
    store.write_batch(_batch(store, {("t", 0): 1}))
    new = sorted(set(data.rglob("*.parquet")) - set(first))
    assert new and _codecs(new) == {"UNCOMPRESSED"} and _codecs(first) == {"ZSTD"}
    assert store.counts()["records"] == 2 * 2 * 11 and store.positions("t") == {("t", 0): 1}
    # a writer that sets nothing leaves the lake's codec as it is
    store.close()
    store = LakeStore(lake_catalog, None)
    assert store.con.execute(
        "SELECT value FROM lake.options() WHERE option_name = 'parquet_compression'"
    ).fetchall() == [("uncompressed",)]
    store.close()


def test_a_reader_keeps_one_snapshot(lake_catalog: str, tmp_path: Path) -> None:
    w = build_world(tmp_path, vehicles=2, blocks=2, store=LakeStore(lake_catalog, str(tmp_path / "lake")))
    reader = LakeStore(lake_catalog, str(tmp_path / "lake"), read_only=True)
    before = reader.counts()
    (version,) = reader.con.execute("SELECT max(snapshot_id) FROM ducklake_snapshots('lake')").fetchone()
    w.store.claim("t", [0], "w")
    w.store.write_batch(_batch(w.store, {("t", 0): 1}))  # a new snapshot, not seen by the open reader
    assert reader.positions("t") == {} and reader.counts() == before
    fresh = LakeStore(lake_catalog, str(tmp_path / "lake"), read_only=True)
    assert fresh.positions("t") == {("t", 0): 1}
    # time travel (docs/ANALYSTS.md): the store as it was at the older snapshot
    q = "SELECT count(*) FROM kafka_offsets AT (VERSION => {}) WHERE kafka_topic = 't'"
    assert fresh.con.execute(q.format(version)).fetchone() == (0,)
    assert fresh.con.execute(q.format(version + 1)).fetchone() == (1,)
    with pytest.raises(Exception, match=r"read-only|read only"):
        reader.con.execute("DELETE FROM blocks")
    # refresh: the open reader moves to the latest snapshot, and its snapshot time with it
    taken = reader.snapshot_ns
    assert taken is not None
    reader.refresh()
    assert reader.positions("t") == {("t", 0): 1} and reader.counts() == fresh.counts()
    assert reader.snapshot_ns is not None and reader.snapshot_ns > taken
    w.store.write_batch(_batch(w.store, {("t", 0): 2}))
    assert reader.positions("t") == {("t", 0): 1}  # one snapshot again until the next refresh
    reader.refresh()
    assert reader.positions("t") == {("t", 0): 2}
    with pytest.raises(Exception, match=r"read-only|read only"):
        reader.con.execute("DELETE FROM blocks")
    w.store.refresh()  # the writer sees its own commits: nothing to do
    assert w.store.positions("t") == {("t", 0): 2}
    fresh.close()

    # release: between uses a reader holds no catalog transaction open (it would hold back vacuum)
    def open_in_catalog() -> int:
        with psycopg.connect(lake_catalog) as pg:
            row = pg.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND state LIKE 'idle in transaction%'"
            ).fetchone()
        assert row is not None
        return int(row[0])

    held = open_in_catalog()
    assert held >= 1  # the reader's snapshot
    reader.release()
    assert open_in_catalog() == held - 1 == 0
    w.store.write_batch(_batch(w.store, {("t", 0): 3}))
    assert reader.positions("t") == {("t", 0): 3}  # released: each query sees the latest
    reader.refresh()
    assert open_in_catalog() >= 1
    reader.release()
    reader.release()  # twice: nothing to end
    reader.refresh()
    reader.con.execute("COMMIT")  # a caller's own end of the transaction
    reader.refresh()  # still moves on
    assert reader.positions("t") == {("t", 0): 3}
    reader.close()


KEPT = ("erasures", "erased_blocks")  # name the erased device by design: the signed statement, the hashes


def _traces(data: Path, catalog: str, device: str, needles: set[bytes]) -> list[str]:
    """Where the erased vehicle is still stored: its raw records, block headers or salt seeds anywhere,
    its device id anywhere but the erasure tables. Every file under the data path, referenced by a
    snapshot or not, read as Parquet (or as bytes); every table of the catalog database, DuckLake's
    inlined data and column statistics included."""
    found = []
    for p in (f for f in data.rglob("*") if f.is_file()):
        keep = p.parent.name in KEPT
        try:
            t = pq.read_table(p)
        except Exception:  # not Parquet: look at the bytes themselves
            blob = p.read_bytes()
            found += [f"{p.name}: bytes" for n in needles if n in blob][:1]
            continue
        for name in t.column_names:
            typ = t.schema.field(name).type
            if not (pa.types.is_string(typ) or pa.types.is_binary(typ) or pa.types.is_large_binary(typ)):
                continue
            vals = [v.encode() if isinstance(v, str) else v for v in t.column(name).to_pylist()]
            hits = [v for v in vals if v in needles or (v == device.encode() and not keep)]
            if hits:
                found.append(f"{p.parent.name}/{p.name}:{name} ({len(hits)} values)")
    with psycopg.connect(catalog) as pg:
        kept_ids = {
            int(i)
            for (i,) in pg.execute(
                "SELECT table_id FROM ducklake_table WHERE table_name = ANY(%s)", [list(KEPT)]
            )
        }
        tables = pg.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        for schema, table in tables:
            cur = pg.execute(f'SELECT * FROM "{schema}"."{table}"')
            cols = [d.name for d in cur.description or []]
            m = re.fullmatch(r"ducklake_inlined_data_(\d+)_\d+", table)
            inlined = m is not None and int(m.group(1)) in kept_ids
            for row in cur.fetchall():
                rec = dict(zip(cols, row, strict=True))
                keep = inlined or rec.get("table_id") in kept_ids
                for v in row:
                    b = (
                        v.encode()
                        if isinstance(v, str)
                        else bytes(v)
                        if isinstance(v, bytes | memoryview)
                        else None
                    )
                    if b is not None and (b in needles or (device.encode() in b and not keep)):
                        found.append(f"catalog {schema}.{table}: {str(rec)[:200]}")
                        break
    return found


@pytest.mark.parametrize("inline_rows", [0, 1000], ids=["files", "inlined"])
def test_erasure_leaves_nothing_in_any_file_or_snapshot(
    lake_catalog: str, tmp_path: Path, inline_rows: int
) -> None:
    data = tmp_path / "lake"
    store = LakeStore(lake_catalog, str(data), inline_rows=inline_rows)
    w = build_world(tmp_path, vehicles=6, blocks=5, block_records=11, store=store)
    con = w.store.con
    gone = w.fleet[2].device_id
    needles: set[bytes] = set()
    for t in ("driving_samples", "battery_samples"):
        needles |= {
            bytes(r) for (r,) in con.execute(f"SELECT raw FROM {t} WHERE device_id = ?", [gone]).fetchall()
        }
    for h, s in con.execute("SELECT header, salt_seed FROM blocks WHERE device_id = ?", [gone]).fetchall():
        needles |= {bytes(h), bytes(s)}
    assert len(needles) == 55 + 2 * 5
    (version,) = con.execute("SELECT max(snapshot_id) FROM ducklake_snapshots('lake')").fetchone()
    before = _traces(data, lake_catalog, gone, needles)
    assert before, "the erased vehicle's rows must be found before the erasure"

    e = erase_device(w.store, w.operator, gone, reason="owner request")
    assert (e.blocks, e.records) == (5, 55)
    after = _traces(data, lake_catalog, gone, needles)
    assert after == [], after
    # an older snapshot cannot bring them back
    with pytest.raises(Exception, match=r"snapshot|version|Snapshot"):
        n = con.execute(f"SELECT count(*) FROM blocks AT (VERSION => {version}) WHERE device_id = ?", [gone])
        assert n.fetchone() == (0,)
        raise RuntimeError("snapshot gone: no rows")
    rep = w.audit()
    assert rep.ok, [str(f) for f in rep.findings[:5]]
    assert (rep.erased_blocks, rep.erased_records) == (5, 55)
    for v in w.fleet:
        if v.device_id != gone:
            rows = select_rows(w.store, None, f"device_id = '{v.device_id}'", 4, sample=True)
            assert verify_bundle(w.bundle(rows), operator_key=w.operator.public_key).ok


@pytest.fixture(scope="module")
def lake_world(stack_cfg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.integration.conftest import new_database

    with new_database(stack_cfg) as catalog:
        tmp = tmp_path_factory.mktemp("lake-data")
        w = build_world(
            tmp, vehicles=3, blocks=8, extra=[trigger(T0)], store=LakeStore(catalog, str(tmp / "lake"))
        )
        yield w
        w.store.close()


@pytest.mark.parametrize("sql", QUERIES, ids=[f"q{i + 1}" for i in range(len(QUERIES))])
def test_every_data_md_query_runs_on_the_lake(lake_world: Any, sql: str) -> None:
    cur = lake_world.store.con.execute(sql)
    assert cur.description
    cur.fetchall()


def test_maintain_compacts_and_changes_no_answer(lake_catalog: str, tmp_path: Path) -> None:
    from ingest.ops.maintain import maintain

    data = tmp_path / "lake"
    # every commit in Parquet files (no inlining), so that there are small files to merge
    w = build_world(tmp_path, vehicles=4, blocks=6, store=LakeStore(lake_catalog, str(data), inline_rows=0))
    con = w.store.con
    q: dict[str, Callable[[], object]] = {
        "counts": lambda: w.store.counts(),
        "heads": lambda: w.store.heads(),
        "positions": lambda: w.store.positions("offline"),
        "rows": lambda: con.execute(
            "SELECT device_id, block_seq, idx, raw FROM driving_samples ORDER BY ALL"
        ).fetchall(),
    }
    before = {k: f() for k, f in q.items()}
    rep = maintain(w.store, keep_hours=0, grace_minutes=0)
    assert [s for s, _, _ in rep.steps] == ["flush", "heads", "merge", "rewrite", "expire", "cleanup"]
    assert {k: f() for k, f in q.items()} == before
    assert rep.files_after < rep.files_before, rep
    assert rep.snapshots_after < rep.snapshots_before, rep
    # superseded heads are gone: one row per device
    assert con.execute("SELECT count(*), count(DISTINCT device_id) FROM device_heads").fetchone() == (4, 4)
    assert len(list(data.rglob("*.parquet"))) == rep.files_after  # the unreferenced files were deleted
    assert w.audit().ok
    rows = select_rows(w.store, None, None, 5, sample=True)
    assert verify_bundle(w.bundle(rows), operator_key=w.operator.public_key).ok


def test_the_lake_on_an_s3_object_store(stack_cfg: Any, lake_catalog: str, tmp_path: Path) -> None:
    """Data in a real S3 API server (the stack's SeaweedFS), as in production on any S3-compatible store."""
    from devtools.stack import _http_status

    port = stack_cfg.stack.s3_port
    bucket = f"lake-{time.time_ns()}"
    assert _http_status("PUT", "127.0.0.1", port, f"/{bucket}") in (200, 409)
    s3 = {
        "endpoint": f"127.0.0.1:{port}",
        "use_ssl": "false",
        "url_style": "path",
        "region": "us-east-1",
        "key_id": "telematics-local",
        "secret": "telematics-local",
    }
    w = build_world(
        tmp_path, vehicles=3, blocks=4, store=LakeStore(lake_catalog, f"s3://{bucket}/data/", s3=s3)
    )
    files = w.store.con.execute(
        "SELECT data_file FROM ducklake_list_files('lake', 'driving_samples')"
    ).fetchall()
    assert files and all(f.startswith(f"s3://{bucket}/data/") for (f,) in files), files
    assert w.audit().ok
    rows = select_rows(w.store, None, None, 4, sample=True)
    assert verify_bundle(w.bundle(rows), operator_key=w.operator.public_key).ok
    erase_device(w.store, w.operator, w.fleet[0].device_id)
    rep = w.audit()
    assert rep.ok and rep.erased_blocks == 4, rep.findings[:3]
    # a reader needs only the catalog and the S3 secret: the data path is in the catalog
    r = LakeStore(lake_catalog, None, read_only=True, s3=s3)
    assert r.counts()["records"] == w.store.counts()["records"] > 0
    r.close()


def test_retention_drops_old_blocks_and_keeps_every_other_proof(lake_catalog: str, tmp_path: Path) -> None:
    from ingest.ops.erase import drop_older_than
    from ingest.ops.gaps import gap_report

    w = build_world(tmp_path, vehicles=3, blocks=6, store=LakeStore(lake_catalog, str(tmp_path / "lake")))
    con = w.store.con
    (cutoff,) = con.execute("SELECT epoch_ns(median(t_last)) FROM blocks").fetchone()
    old = con.execute(
        "SELECT count(*), sum(record_count) FROM blocks WHERE epoch_ns(t_last) < ?", [cutoff]
    ).fetchone()
    heads = w.store.heads()
    dry = drop_older_than(w.store, w.operator, cutoff, reason="retention", dry_run=True)
    assert sum(e.blocks for e in dry) == old[0] and w.store.counts()["blocks"] == 18
    gone = drop_older_than(w.store, w.operator, cutoff, reason="retention: older than 30 days")
    assert (sum(e.blocks for e in gone), sum(e.records for e in gone)) == (old[0], old[1])
    assert con.execute("SELECT count(*) FROM blocks WHERE epoch_ns(t_last) < ?", [cutoff]).fetchone() == (0,)
    assert w.store.heads() == heads  # the chains go on
    rep = w.audit()
    assert rep.ok, [str(f) for f in rep.findings[:5]]
    assert rep.erased_blocks == old[0]
    assert not [s for s in gap_report(con, None) if s.status == "missing"], "an erased block is not missing"
    rows = select_rows(w.store, None, None, 6, sample=True)
    assert rows and verify_bundle(w.bundle(rows), operator_key=w.operator.public_key).ok


def test_a_lake_of_old_gains_the_bundle_index_and_keeps_its_rows(lake_catalog: str, tmp_path: Path) -> None:
    """A lake written before rejections and duplicates had a bundle index: opened by this version,
    the column is added (old rows: 0) and new rows carry their index."""
    from ingest.storage.schema import RejectionRow

    s = LakeStore(lake_catalog, str(tmp_path / "lake"), group="g")
    for t in ("rejections", "duplicates"):
        s.con.execute(f"ALTER TABLE {t} DROP COLUMN bundle_index")
    s.con.execute(
        "INSERT INTO rejections VALUES ('t', 0, 7, 'decode_error', 'x', NULL, NULL, NULL, 1, '\\x01',"
        " make_timestamp_ns(5))"
    )
    s.close()
    s = LakeStore(lake_catalog, str(tmp_path / "lake"), group="g")
    try:
        assert [r[0] for r in s.con.execute("DESCRIBE duplicates").fetchall()][-1] == "bundle_index"
        s.claim("t", [0], "me")
        b = _batch(s, {("t", 0): 8})
        b.rejections = [RejectionRow("t", 0, 7, "decode_error", "x", None, None, None, 1, b"\x01", 6, 1)]
        s.write_batch(b)
        rows = "SELECT kafka_offset, bundle_index FROM rejections ORDER BY bundle_index"
        assert s.con.execute(rows).fetchall() == [(7, 0), (7, 1)]
    finally:
        s.close()
