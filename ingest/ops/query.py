"""`telematics query`: one read-only SQL statement, its result as an aligned table, CSV, JSON or a
Parquet file. BLOBs are lowercase hex in text formats (and bytes in Parquet); NULL is empty in the
table and CSV, ``null`` in JSON; timestamps are ISO 8601 (UTC, as stored)."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb

from common.errors import Refused

FORMATS = ("table", "csv", "json", "parquet")


class QueryError(Refused):
    """The statement is refused: empty, not valid SQL, an unknown table or column, a write on the
    read-only store. The message is DuckDB's first line."""


EMPTY = 'empty statement: give one SQL statement, e.g. "SELECT count(*) FROM driving_samples"'


def run(con: Any, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of ``sql``."""
    cur = _execute(con, sql)
    cols = [d[0] for d in cur.description or []]
    return cols, cur.fetchall()


def load_figures(con: Any) -> None:
    """The figures' table macros (``vt_score``, ``vt_score_events``, ``vt_battery``: figures/figures.sql)."""
    con.execute((resources.files("figures") / "figures.sql").read_text())


def _execute(con: Any, sql: str) -> Any:
    if not sql.strip():
        raise QueryError(EMPTY)
    try:
        return con.execute(sql)
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QueryError(first + _hint(con, exc)) from None


def _hint(con: Any, exc: Exception) -> str:
    """What to do next, for the mistakes people make most."""
    if isinstance(exc, duckdb.CatalogException) and "Table with name" in str(exc):
        try:
            names = [
                r[0]
                for r in con.execute(
                    "SELECT DISTINCT table_name FROM duckdb_tables() UNION SELECT DISTINCT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1"
                ).fetchall()
            ]
        except duckdb.Error:
            return " (the tables: docs/DATA.md)"
        return f" (the tables: {', '.join(names)}; docs/DATA.md)"
    if "read-only" in str(exc):
        return (
            " (`telematics query` only reads: `telematics erase` removes a vehicle's records,"
            " `telematics maintain --drop-older-than-days N` old ones, both keeping every other proof valid)"
        )
    return ""


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).hex()
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v.isoformat()
    return str(v)


def _json(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, list | tuple):
        return [_json(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json(x) for k, x in v.items()}
    return _text(v)


def table(cols: list[str], rows: list[tuple[Any, ...]]) -> str:
    """Aligned columns: numbers to the right, everything else to the left; a rule under the header."""
    cells = [[_text(v) for v in r] for r in rows]
    numeric = [
        all(
            isinstance(r[i], int | float | decimal.Decimal) and not isinstance(r[i], bool)
            for r in rows
            if r[i] is not None
        )
        and any(r[i] is not None for r in rows)
        for i in range(len(cols))
    ]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(cols)]

    def line(vals: list[str]) -> str:
        return " | ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric, strict=True)
        ).rstrip()

    out = [line(cols), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out) + "\n"


def csv_text(cols: list[str], rows: list[tuple[Any, ...]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    w.writerows([_text(v) for v in r] for r in rows)
    return buf.getvalue()


def json_text(cols: list[str], rows: list[tuple[Any, ...]]) -> str:
    """A JSON array with one object per row (one per line)."""
    objs = [json.dumps(dict(zip(cols, (_json(v) for v in r), strict=True))) for r in rows]
    return "[\n" + ",\n".join(objs) + ("\n]\n" if objs else "]\n")


def write_parquet(con: Any, sql: str, out: Path) -> int:
    """Write the result of ``sql`` to the Parquet file ``out``; the number of rows."""
    import pyarrow.parquet as pq

    tbl = _execute(con, sql).to_arrow_table()
    pq.write_table(tbl, out)
    return int(tbl.num_rows)


def render(fmt: str, cols: list[str], rows: list[tuple[Any, ...]]) -> str:
    if fmt == "csv":
        return csv_text(cols, rows)
    if fmt == "json":
        return json_text(cols, rows)
    return table(cols, rows)
