"""`telematics query`: every output format carries the same result, and every everyday mistake (an
empty statement, bad SQL, an unknown table, a write on the read-only store) is one line, exit 1."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from ingest.ops.query import QueryError, csv_text, json_text, run, table, write_parquet
from ingest.storage.store import FileStore

SQL = "SELECT * FROM t ORDER BY n"


@pytest.fixture()
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    c.execute("CREATE TABLE t (n INTEGER, name VARCHAR, raw BLOB, x DOUBLE, ts TIMESTAMP_NS, ok BOOLEAN)")
    c.execute(
        "INSERT INTO t VALUES (1, 'a', '\\x01\\xff'::BLOB, 2.5, '2026-01-02 03:04:05', true),"
        " (22, NULL, NULL, -0.125, NULL, false), (333, 'ccc', ''::BLOB, NULL, '2026-12-06 00:00:00', NULL)"
    )
    return c


def test_table_is_aligned_and_numbers_right_aligned(con: duckdb.DuckDBPyConnection) -> None:
    text = table(*run(con, SQL))
    lines = text.splitlines()
    assert lines[0].split(" | ")[0].strip() == "n" and lines[-1] == "(3 rows)"
    assert lines[1].replace("-", "").replace("+", "") == ""
    body = lines[2:-1]
    assert [ln.split(" | ")[0] for ln in body] == ["  1", " 22", "333"]  # right-aligned numbers
    assert "01ff" in body[0] and "2026-01-02 03:04:05" in body[0]
    pipes = {ln.index(" | ") for ln in lines[:-1] if " | " in ln}
    assert len(pipes) == 1, "every row's first separator at the same column"


def test_csv_and_json_carry_the_same_values(con: duckdb.DuckDBPyConnection) -> None:
    cols, rows = run(con, SQL)
    parsed = list(csv.reader(io.StringIO(csv_text(cols, rows))))
    assert parsed[0] == cols and parsed[1] == ["1", "a", "01ff", "2.5", "2026-01-02 03:04:05", "True"]
    assert parsed[2][1:3] == ["", ""]
    objs = json.loads(json_text(cols, rows))
    assert objs[0] == {"n": 1, "name": "a", "raw": "01ff", "x": 2.5, "ts": "2026-01-02 03:04:05", "ok": True}
    assert objs[1]["name"] is None and objs[2]["x"] is None and objs[2]["raw"] == ""
    assert json.loads(json_text(cols, [])) == []


def test_parquet_round_trips(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    assert write_parquet(con, SQL, out) == 3
    back = pq.read_table(out)
    assert back.column_names == ["n", "name", "raw", "x", "ts", "ok"]
    assert back.column("raw").to_pylist() == [b"\x01\xff", None, b""]


@pytest.mark.parametrize(
    ("sql", "says"),
    [
        ("   ", "empty statement"),
        ("SELEC 1", "syntax error"),
        ("SELECT * FROM nowhere", "nowhere"),
    ],
)
def test_mistakes_are_query_errors(con: duckdb.DuckDBPyConnection, sql: str, says: str) -> None:
    with pytest.raises(QueryError) as exc:
        run(con, sql)
    assert says.lower() in str(exc.value).lower() and "\n" not in str(exc.value)


def test_cli_formats(tmp_path: Path) -> None:
    FileStore(tmp_path / "data" / "telematics.duckdb").close()
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[store]\nbackend = "duckdb"\n')

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ingest.cli", "--config", str(cfg), "query", *argv],
            capture_output=True,
            text=True,
            timeout=120,
        )

    ok = cli("SELECT 42 AS answer, 'x' AS s", "--format", "json")
    assert ok.returncode == 0 and json.loads(ok.stdout) == [{"answer": 42, "s": "x"}]
    out = tmp_path / "r.parquet"
    assert cli("SELECT 1 AS one", "--format", "parquet", "-o", str(out)).returncode == 0
    assert pq.read_table(out).column("one").to_pylist() == [1]
    assert cli("SELECT 1", "--format", "parquet").returncode == 2
    # bad statements: tests/integration/test_mistakes.py
