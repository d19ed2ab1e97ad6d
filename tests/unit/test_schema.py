"""One column order: every typed row's fields are its table's columns, in the DDL's order, and a
batch of each row type goes through DuckDB and back unchanged."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb
import pytest

from ingest.storage.schema import ARROW_TYPES, DDL, RECORD_TABLES, TABLE_OF_ROW, Row, rows_table
from ingest.storage.store import FileStore


@pytest.mark.parametrize("typ", list(TABLE_OF_ROW), ids=lambda t: t.__name__)
def test_row_fields_are_the_table_columns(typ: type[Row]) -> None:
    con = duckdb.connect()
    con.execute(DDL)
    cols = [r[0] for r in con.execute(f"DESCRIBE {TABLE_OF_ROW[typ]}").fetchall()]
    assert cols == list(typ._fields)
    assert len(ARROW_TYPES[typ]) == len(typ._fields)


def test_record_tables_have_their_columns_in_order() -> None:
    con = duckdb.connect()
    con.execute(DDL)
    for t in RECORD_TABLES:
        cols = [r[0] for r in con.execute(f"DESCRIBE {t.name}").fetchall()]
        assert cols == ["device_id", "block_seq", "idx", "ts", *(c for c, _, _ in t.columns), "raw", "leaf"]


def test_rows_round_trip_through_the_store(tmp_path: Path) -> None:
    from ingest.storage.schema import DuplicateRow, GapRow, RejectionRow

    s = FileStore(tmp_path / "s.duckdb")
    try:
        rows: dict[type[Row], Sequence[Row]] = {
            GapRow: [GapRow("a" * 32, 3, 5, 1_700_000_000_000_000_000)],
            RejectionRow: [
                RejectionRow(
                    "t",
                    0,
                    7,
                    "bad_header",
                    "x",
                    None,
                    None,
                    None,
                    12,
                    b"\x01" * 32,
                    1_700_000_000_000_000_001,
                    3,
                )
            ],
            DuplicateRow: [DuplicateRow("t", 1, 8, "b" * 32, 9, b"\x02" * 32, 1_700_000_000_000_000_002, 4)],
        }
        for typ, rs in rows.items():
            s.con.register("_in", rows_table(rs, typ))
            s.con.execute(f"INSERT INTO {TABLE_OF_ROW[typ]} SELECT * FROM _in")
            s.con.unregister("_in")
            got = s.con.execute(
                f"SELECT {', '.join(f'epoch_ns({c})' if c in ('detected_at', 'received_at') else c for c in typ._fields)}"
                f" FROM {TABLE_OF_ROW[typ]}"
            ).fetchall()
            assert [typ(*r) for r in got] == rs
    finally:
        s.close()


def test_a_store_of_old_is_rekeyed_by_bundle_index_and_keeps_its_rows(tmp_path: Path) -> None:
    """A DuckDB file written before rejections and duplicates had a bundle index (nor, earlier,
    the payload in their key): opened by this version, every row is kept with index 0 and the new
    key lets two messages of one bundle with the same bytes both be stored."""
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE rejections (kafka_topic VARCHAR NOT NULL, kafka_partition INTEGER NOT NULL,"
        " kafka_offset BIGINT NOT NULL, reason VARCHAR NOT NULL, detail VARCHAR NOT NULL, device_id VARCHAR,"
        " key_id VARCHAR, seq UBIGINT, payload_size BIGINT NOT NULL, payload_sha256 BLOB NOT NULL,"
        " received_at TIMESTAMP_NS NOT NULL, PRIMARY KEY (kafka_topic, kafka_partition, kafka_offset))"
    )
    con.execute(
        "CREATE TABLE duplicates (kafka_topic VARCHAR NOT NULL, kafka_partition INTEGER NOT NULL,"
        " kafka_offset BIGINT NOT NULL, device_id VARCHAR NOT NULL, seq UBIGINT NOT NULL,"
        " block_hash BLOB NOT NULL, received_at TIMESTAMP_NS NOT NULL,"
        " PRIMARY KEY (kafka_topic, kafka_partition, kafka_offset, block_hash))"
    )
    con.execute(
        "INSERT INTO rejections VALUES ('t', 0, 7, 'decode_error', 'x', NULL, NULL, NULL, 1, '\\x01', make_timestamp_ns(5))"
    )
    con.execute("INSERT INTO duplicates VALUES ('t', 1, 8, 'd', 9, '\\x02', make_timestamp_ns(6))")
    con.close()
    s = FileStore(path)
    try:
        assert s.con.execute("SELECT kafka_offset, reason, bundle_index FROM rejections").fetchall() == [
            (7, "decode_error", 0)
        ]
        assert s.con.execute("SELECT kafka_offset, seq, bundle_index FROM duplicates").fetchall() == [
            (8, 9, 0)
        ]
        s.con.execute(
            "INSERT INTO rejections VALUES ('t', 0, 7, 'decode_error', 'x', NULL, NULL, NULL, 1, '\\x01', make_timestamp_ns(5), 1)"
        )
        s.con.execute("INSERT INTO duplicates VALUES ('t', 1, 8, 'd', 9, '\\x02', make_timestamp_ns(6), 1)")
        with pytest.raises(duckdb.ConstraintException):
            s.con.execute(
                "INSERT INTO duplicates VALUES ('t', 1, 8, 'd', 9, '\\x02', make_timestamp_ns(6), 1)"
            )
    finally:
        s.close()
