"""A damaged ledger is an alarm, never a new ledger: a vanished, shrunk, replaced or grown log stops the
writer; a malformed line is a finding for readers and a clear refusal for the writer, never a
traceback; every readable field of an entry is checked against the signed bytes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ingest.ledger.base import LedgerDamaged
from ingest.ledger.local import LocalLedger, verify_log
from schemas.crypto import SigningKey


def _log(tmp_path: Path, n: int = 3) -> tuple[LocalLedger, SigningKey]:
    key = SigningKey.generate()
    led = LocalLedger(tmp_path / "ledger.jsonl", key)
    for i in range(n):
        led.anchor(i, bytes([i]) * 32, 1 + i)
    return led, key


def test_vanished_log_is_never_recreated(tmp_path: Path) -> None:
    led, _ = _log(tmp_path)
    led.path.unlink()
    with pytest.raises(LedgerDamaged, match="vanished"):
        led.anchor(3, b"\x03" * 32, 1)
    assert not led.path.exists()


@pytest.mark.parametrize("how", ["shrank", "replaced", "grew"])
def test_changed_log_stops_the_writer(tmp_path: Path, how: str) -> None:
    led, _ = _log(tmp_path)
    data = led.path.read_bytes()
    if how == "shrank":
        led.path.write_bytes(data[: data.rindex(b"\n", 0, len(data) - 1) + 1])
    elif how == "replaced":
        tmp = led.path.with_suffix(".new")
        tmp.write_bytes(data)
        os.replace(tmp, led.path)
    else:
        with open(led.path, "ab") as f:
            f.write(data.splitlines(keepends=True)[-1])
    # A grown log is read (another writer may have appended under the lock): this line does not follow.
    with pytest.raises(LedgerDamaged, match={"grew": "does not follow"}.get(how, how)):
        led.anchor(3, b"\x03" * 32, 1)


def test_same_batch_again_is_still_idempotent(tmp_path: Path) -> None:
    led, _ = _log(tmp_path)
    r = led.anchor(1, b"\x01" * 32, 2)
    assert r.index == 1 and led.size == 3


MALFORMED = {
    "broken_json": b'{"index": 1, "entry": \n',
    "bad_hex": None,  # filled below from a real line
    "undecodable_entry": None,
    "missing_key": None,
    "blank_line": b"\n",
    "not_an_object": b"[1, 2, 3]\n",
}


def _damage(line: bytes, case: str) -> bytes:
    obj = json.loads(line)
    if case == "bad_hex":
        obj["sig"] = "zz" + obj["sig"][2:]
    elif case == "undecodable_entry":
        obj["entry"] = "c1"
    elif case == "missing_key":
        del obj["hash"]
    else:
        return MALFORMED[case] or b""
    return json.dumps(obj).encode() + b"\n"


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_line_is_a_finding_not_a_traceback(tmp_path: Path, case: str) -> None:
    led, key = _log(tmp_path)
    lines = led.path.read_bytes().splitlines(keepends=True)
    lines[1] = _damage(lines[1], case)
    led.path.write_bytes(b"".join(lines))
    # The writer refuses, naming the line and what to do.
    with pytest.raises(LedgerDamaged, match=r"ledger.jsonl line 2: .*restore"):
        LocalLedger(led.path, key)
    # Readers (prove, audit) load what reads; ledger verify names the line.
    reader = LocalLedger(led.path)
    assert reader.damage and reader.damage[0].startswith("ledger.jsonl line 2")
    rep = verify_log(led.path, key.public_key)
    assert not rep.ok and any(p.startswith("line 2:") for p in rep.problems), rep.problems


def test_malformed_checkpoint_line_is_a_finding(tmp_path: Path) -> None:
    led, key = _log(tmp_path)
    with open(led.checkpoint_path, "ab") as f:
        f.write(b"{oops\n")
    with pytest.raises(LedgerDamaged, match="checkpoints line 4"):
        LocalLedger(led.path, key)
    rep = verify_log(led.path, key.public_key)
    assert any("line 4" in p for p in rep.problems)


@pytest.mark.parametrize("field", ["time_ns", "prev", "blocks", "index", "batch_no", "root"])
def test_every_readable_field_is_checked(tmp_path: Path, field: str) -> None:
    led, key = _log(tmp_path)
    lines = led.path.read_bytes().splitlines(keepends=True)
    obj = json.loads(lines[1])
    v = obj[field]
    obj[field] = v + 1 if isinstance(v, int) else ("1" if v[0] != "1" else "0") + v[1:]
    lines[1] = json.dumps(obj).encode() + b"\n"
    led.path.write_bytes(b"".join(lines))
    rep = verify_log(led.path, key.public_key)
    assert any(f"readable fields differ from the signed entry ({field})" in p for p in rep.problems), (
        rep.problems
    )
