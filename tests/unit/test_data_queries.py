"""The example queries of docs/DATA.md run on a store the real Processor filled (every one of them:
when the store moves, this says which no longer works)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.records import T0, trigger
from tests.unit.test_proofs import World, build_world

ROOT = Path(__file__).resolve().parents[2]
QUERIES = re.findall(r"```sql\n(.*?)\n```", (ROOT / "docs" / "DATA.md").read_text(), re.S)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("data"), vehicles=3, blocks=8, extra=[trigger(T0)])


def test_data_md_has_its_fifteen_queries() -> None:
    assert len(QUERIES) == 15


@pytest.mark.parametrize("sql", QUERIES, ids=[f"q{i + 1}" for i in range(len(QUERIES))])
def test_every_data_md_query_runs(world: World, sql: str) -> None:
    cur = world.store.con.execute(sql)
    assert cur.description, "a query returns columns"
    cur.fetchall()
