"""``Registry.lookup`` keeps the keys it read between polls and reads them again as soon as the file
changes: a revocation, rotation or enrolment made through another connection (the CLI in another
process) or through the same one takes effect at the next lookup."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ingest.storage.registry import Registry
from schemas.crypto import SigningKey, device_id_for, key_id_for


def _key() -> tuple[bytes, str, str]:
    pk = SigningKey.generate().public_key
    return pk, key_id_for(pk), device_id_for(pk)


def _statements(reg: Registry) -> list[str]:
    seen: list[str] = []
    reg._db.set_trace_callback(seen.append)  # the registry's own connection
    return seen


def test_an_unchanged_file_costs_one_query_per_lookup(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    ids = set()
    for _ in range(3):
        pk, kid, _dev = _key()
        reg.add(pk)
        ids.add(kid)
    first = reg.lookup(ids | {"unknown"})
    assert set(first) == ids
    seen = _statements(reg)
    again = reg.lookup(ids | {"unknown"})
    assert again == first
    assert seen == ["PRAGMA data_version"]


@pytest.mark.parametrize("same_connection", [False, True], ids=["another connection", "this connection"])
def test_a_change_to_the_file_is_seen_at_the_next_lookup(tmp_path: Path, same_connection: bool) -> None:
    path = tmp_path / "r.sqlite"
    reg = Registry(path)
    other = reg if same_connection else Registry(path)
    pk, kid, dev = _key()
    later_pk, later_kid, _ = _key()
    reg.add(pk)
    assert reg.lookup({kid, later_kid})[kid].active  # the second not registered yet
    other.add(later_pk)  # an enrolment
    assert set(reg.lookup({kid, later_kid})) == {kid, later_kid}
    other.revoke(dev, at=5)  # a revocation
    got = reg.lookup({kid})[kid]
    assert (got.status, got.valid_until) == ("revoked", 5)
    new_pk, new_kid, _ = _key()
    other.rotate(device_id_for(later_pk), new_pk, at=7)  # a rotation
    keys = reg.lookup({later_kid, new_kid})
    assert (keys[later_kid].status, keys[later_kid].valid_until, keys[new_kid].valid_from) == (
        "retired",
        7,
        7,
    )


def test_a_change_written_by_plain_sqlite_is_seen_too(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    reg = Registry(path)
    pk, kid, _ = _key()
    reg.add(pk)
    assert reg.lookup({kid})[kid].active
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM device_keys WHERE key_id = ?", [kid])
    assert reg.lookup({kid}) == {}
