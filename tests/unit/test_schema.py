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
                )
            ],
            DuplicateRow: [DuplicateRow("t", 1, 8, "b" * 32, 9, b"\x02" * 32, 1_700_000_000_000_000_002)],
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
