"""The audit's former blind spots: a float's sign bit, batch record counts, anchor entry indices and
device chain heads. Each tamper flips or edits one value of a clean store; the audit names it."""

from __future__ import annotations

import math
from pathlib import Path

from tests.unit.test_proofs import _one, build_world


def test_a_negated_zero_is_caught(tmp_path: Path) -> None:
    w = build_world(tmp_path)
    con = w.store.con
    row = con.execute(
        "SELECT device_id, block_seq, idx FROM driving_samples WHERE brake_pedal_pct = 0 LIMIT 1"
    ).fetchone()
    assert row is not None, "the model brakes only sometimes: some pedal readings are exactly 0.0"
    dev, seq, idx = row
    where = "WHERE device_id = ? AND block_seq = ? AND idx = ?"
    # (DuckDB skips an UPDATE from 0.0 to -0.0 as "no change": go through another value.)
    con.execute(f"UPDATE driving_samples SET brake_pedal_pct = 1 {where}", [dev, seq, idx])
    con.execute(f"UPDATE driving_samples SET brake_pedal_pct = ? {where}", [-0.0, dev, seq, idx])
    (v,) = con.execute(f"SELECT brake_pedal_pct FROM driving_samples {where}", [dev, seq, idx]).fetchone()  # type: ignore[misc]
    assert v == 0.0 and math.copysign(1.0, v) == -1.0  # stored: a negative zero
    rep = w.audit()
    assert _one(rep) == ("row_changed", f"driving_samples {dev}/{seq}/{idx}")
    assert "-0.0" in rep.findings[0].detail


def test_batch_record_count_edit(tmp_path: Path) -> None:
    w = build_world(tmp_path)
    w.store.con.execute("UPDATE batches SET record_count = record_count + 1 WHERE batch_no = 1")
    assert _one(w.audit()) == ("batch_count", "batch 1")


def test_anchor_entry_index_edit(tmp_path: Path) -> None:
    w = build_world(tmp_path)
    w.store.con.execute("UPDATE anchors SET entry_index = entry_index + 1 WHERE batch_no = 2")
    assert _one(w.audit()) == ("ledger_root", "batch 2")


def test_device_head_ahead_of_the_blocks(tmp_path: Path) -> None:
    w = build_world(tmp_path)
    con = w.store.con
    dev = w.fleet[1].device_id
    for edit in ("last_seq = last_seq + 1", "blocks = blocks + 1", "records = records - 1"):
        w2 = build_world(tmp_path / edit.split()[0])
        d2 = w2.fleet[1].device_id
        w2.store.con.execute(f"UPDATE devices SET {edit} WHERE device_id = ?", [d2])
        assert _one(w2.audit()) == ("device_head", f"device {d2}"), edit
    con.execute("DELETE FROM devices WHERE device_id = ?", [dev])
    assert _one(w.audit()) == ("device_head", f"device {dev}")


def test_newest_block_deleted_with_its_rows_is_caught_by_the_head(tmp_path: Path) -> None:
    """Deleting a device's newest block and its rows leaves a batch short (block_missing) and the
    head ahead (device_head)."""
    w = build_world(tmp_path)
    con = w.store.con
    dev = w.fleet[0].device_id
    (last,) = con.execute("SELECT max(seq) FROM blocks WHERE device_id = ?", [dev]).fetchone()  # type: ignore[misc]
    for t in ("driving_samples", "battery_samples"):
        con.execute(f"DELETE FROM {t} WHERE device_id = ? AND block_seq = ?", [dev, last])
    con.execute("DELETE FROM blocks WHERE device_id = ? AND seq = ?", [dev, last])
    kinds = {(f.kind, f.where) for f in w.audit().findings}
    assert ("device_head", f"device {dev}") in kinds
