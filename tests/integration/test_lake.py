"""The lake recipe (ingest/storage/lake.py) against the stack's real PostgreSQL: extensions loaded
offline from their wheels, a writer process committing batches while a reader in another process
polls through a read-only ATTACH: no error, counts never go down, the final count is everything
written. (A DuckDB file locks every other process out while one writes.)"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from devtools.stack import Stack
from ingest.config import Config
from ingest.storage.lake import LakeError, LakeSetupError, attach, connect, extension_path, load_extensions

pytestmark = pytest.mark.integration

BATCHES, ROWS = 30, 5000

WRITER = """
import sys, time
from ingest.storage.lake import connect
catalog, data, table, batches, rows = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
con = connect(catalog, data_path=data)
con.execute(f"CREATE TABLE IF NOT EXISTS lake.{table} (batch INTEGER, i INTEGER, payload VARCHAR)")
for b in range(batches):
    con.execute(
        f"INSERT INTO lake.{table} SELECT {b}, i, repeat('x', 40) FROM range({rows}) r(i)"
    )
    time.sleep(0.05)
print("done")
"""


def test_a_reader_process_sees_every_commit_of_a_writer_process(stack_cfg: Config, tmp_path: Path) -> None:
    catalog = Stack(stack_cfg).pg_dsn
    data = tmp_path / "lake"
    table = f"t_{uuid.uuid4().hex[:12]}"
    # the lake exists (and knows its data path) before the reader attaches
    setup = connect(catalog, data_path=str(data))
    setup.execute(f"CREATE TABLE lake.{table} (batch INTEGER, i INTEGER, payload VARCHAR)")
    setup.close()

    writer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WRITER), catalog, str(data), table, str(BATCHES), str(ROWS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reader = connect(catalog, read_only=True)
    seen: list[int] = []
    errors: list[str] = []
    try:
        while True:
            try:
                (n,) = reader.execute(f"SELECT count(*) FROM lake.{table}").fetchone() or (0,)
                seen.append(int(n))
            except Exception as exc:
                errors.append(repr(exc))
            if writer.poll() is not None:
                break
            time.sleep(0.1)
        out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0 and "done" in out, err
        (final,) = reader.execute(f"SELECT count(*) FROM lake.{table}").fetchone() or (0,)
    finally:
        reader.close()
    assert errors == []
    assert all(a <= b for a, b in itertools.pairwise(seen)), "a count went down"
    assert len(set(seen)) > 2, f"the reader saw too few commits to mean anything: {sorted(set(seen))}"
    assert final == BATCHES * ROWS
    assert any(p.suffix == ".parquet" for p in data.rglob("*")), "the rows are in Parquet files"


def test_setup_and_catalog_errors_are_typed(stack_cfg: Config) -> None:
    import duckdb

    assert extension_path("ducklake").is_file()
    with pytest.raises(LakeSetupError):
        extension_path("no_such_extension")
    con = duckdb.connect()
    load_extensions(con)
    with pytest.raises(LakeError, match="cannot attach the lake"):
        attach(
            con, "host=127.0.0.1 port=1 user=telematics dbname=telematics connect_timeout=2", read_only=True
        )
