"""Proof bundles, the audit and erasure on a real DuckDB file, registry and signed ledger, filled
through the real Processor (simulators.offline; the transports are covered by tests/integration)."""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ingest.ledger.local import LocalLedger
from ingest.ops.audit import Auditor, AuditReport
from ingest.ops.erase import EraseError, compact, erase_device
from ingest.ops.proofs import Prover, RowRef, select_rows
from ingest.storage.registry import Registry
from ingest.storage.store import FileStore, Store
from schemas.block import encode_record
from schemas.crypto import SigningKey
from schemas.proof import encode_bundle, verify_bundle
from schemas.records import RECORD_KINDS, Record, SpoolDrop, TriggerEvent
from simulators.offline import OfflineVehicle, ingest_offline, make_fleet

PARTS = ("bundle", "operator_key", "checkpoints[", "keys[", "batches[", "blocks[", "evm[", "records[")


@dataclass
class World:
    dir: Path
    store: Store
    registry: Registry
    ledger: LocalLedger
    operator: SigningKey
    fleet: list[OfflineVehicle]

    def prover(self) -> Prover:
        return Prover(self.store, self.registry, self.ledger, self.operator)

    def audit(self) -> AuditReport:
        return Auditor(self.store, self.registry, self.ledger, self.operator.public_key).run()

    def bundle(self, rows: list[RowRef]) -> bytes:
        return encode_bundle(self.prover().bundle(rows))


def build_world(
    tmp: Path,
    vehicles: int = 4,
    blocks: int = 6,
    block_records: int = 11,
    extra: list[Record] | None = None,
    store: Store | None = None,
) -> World:
    """``extra`` records open the first vehicle's first block; ``store``: a DuckDB file by default."""
    store = store if store is not None else FileStore(tmp / "t.duckdb")
    registry = Registry(tmp / "registry.sqlite")
    operator = SigningKey.generate()
    ledger = LocalLedger(tmp / "ledger.jsonl", operator)
    fleet = make_fleet(vehicles, seed=3)
    fleet[0].pending = [encode_record(r) for r in extra or []]
    ingest_offline(
        store,
        registry,
        ledger,
        fleet,
        blocks_per_vehicle=blocks,
        block_records=block_records,
        batch_records=60,
    )
    return World(tmp, store, registry, ledger, operator, fleet)


@pytest.fixture()
def world(tmp_path: Path) -> World:
    return build_world(tmp_path)


def test_random_rows_prove_and_verify(world: World) -> None:
    rows = select_rows(world.store, None, None, 12, sample=True)
    assert len(rows) == 12
    data = world.bundle(rows)
    rep = verify_bundle(data, operator_key=world.operator.public_key)
    assert rep.ok, rep.problems
    assert rep.records == 12
    # one bundle per row too, for rows of both tables
    for t in ("driving_samples", "battery_samples"):
        (r,) = select_rows(world.store, t, "idx % 2 = 1", 1, sample=True)
        assert verify_bundle(world.bundle([r]), operator_key=world.operator.public_key).ok


def test_every_byte_of_a_bundle_is_bound(world: World) -> None:
    """Flip one bit in every byte of a one-row bundle: each variant fails, naming the part that broke."""
    (row,) = select_rows(world.store, "battery", None, 1, sample=True)
    data = world.bundle([row])
    assert verify_bundle(data, operator_key=world.operator.public_key).ok
    rng = random.Random(11)
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= 1 << rng.randrange(8)
        rep = verify_bundle(bytes(bad), operator_key=world.operator.public_key)
        assert not rep.ok, f"flip at byte {pos} ({data[max(0, pos - 20) : pos + 20]!r}) went unnoticed"
        assert rep.problems and all(p.startswith(PARTS) for p in rep.problems), rep.problems


def test_bit_flips_name_what_broke(world: World) -> None:
    (row,) = select_rows(world.store, "driving", None, 1, sample=True)
    b = json.loads(world.bundle([row]))

    def broken(path: list[str | int], keep_key: bool = True) -> list[str]:
        obj = json.loads(json.dumps(b))
        tgt = obj
        for p in path[:-1]:
            tgt = tgt[p]
        v = tgt[path[-1]]
        if isinstance(v, str):
            s = bytearray(bytes.fromhex(v))
            s[len(s) // 2] ^= 0x10
            tgt[path[-1]] = s.hex()
        else:
            tgt[path[-1]] = v ^ 1
        rep = verify_bundle(json.dumps(obj).encode(), operator_key=world.operator.public_key)
        assert not rep.ok
        return rep.problems

    rec: list[str | int] = ["records", 0]
    assert "not in its block" in broken([*rec, "raw"])[0] or "does not decode" in broken([*rec, "raw"])[0]
    assert "not in its block" in broken([*rec, "salt"])[0]
    assert "not in its block" in broken([*rec, "path", 0])[0]
    (bh,) = b["blocks"]
    assert "hash to this block hash" in broken(["blocks", bh, "header"])[0]
    assert "block signature" in broken(["blocks", bh, "signature"])[0]
    assert "not in batch" in broken(["blocks", bh, "path", 0])[0] if b["blocks"][bh]["path"] else True
    (no,) = b["batches"]
    assert "entry signature" in " ".join(broken(["batches", no, "entry_signature"]))
    assert "root" in broken(["batches", no, "root"])[0]
    assert "ledger entry says" in broken(["batches", no, "block_count"])[0]
    (kid,) = b["keys"]
    assert "key statement signature" in broken(["keys", kid, "signature"])[0]
    assert any("key statement signature" in p for p in broken(["keys", kid, "valid_from"]))
    # a different operator key than the pinned one
    other = SigningKey.generate().public_key
    rep = verify_bundle(world.bundle([row]), operator_key=other)
    assert rep.problems == ["operator_key: not the pinned operator key"]


def test_audit_clean_database_has_no_findings(world: World) -> None:
    rep = world.audit()
    assert rep.ok, rep.findings[:10]
    assert rep.records == 4 * 6 * 11
    assert rep.blocks == 24
    assert rep.signatures == 24
    assert rep.batches == rep.anchors > 0


def _one(rep: AuditReport) -> tuple[str, str]:
    assert len(rep.findings) == 1, [str(f) for f in rep.findings]
    f = rep.findings[0]
    return f.kind, f.where


def test_audit_pinpoints_a_bit_flipped_in_a_stored_value(world: World) -> None:
    con = world.store.con
    dev, seq, idx, v = con.execute(
        "SELECT device_id, block_seq, idx, speed_mps FROM driving_samples ORDER BY device_id, block_seq, idx LIMIT 1 OFFSET 17"
    ).fetchone()  # type: ignore[misc]
    flipped = struct.unpack(
        "<d", (struct.unpack("<Q", struct.pack("<d", v))[0] ^ (1 << 3)).to_bytes(8, "little")
    )[0]
    assert flipped != v
    con.execute(
        "UPDATE driving_samples SET speed_mps = ? WHERE device_id = ? AND block_seq = ? AND idx = ?",
        [flipped, dev, seq, idx],
    )
    kind, where = _one(world.audit())
    assert (kind, where) == ("row_changed", f"driving_samples {dev}/{seq}/{idx}")
    assert "speed_mps" in world.audit().findings[0].detail


def test_audit_pinpoints_a_bit_flipped_in_raw_bytes(world: World) -> None:
    con = world.store.con
    dev, seq, idx, raw = con.execute(
        "SELECT device_id, block_seq, idx, raw FROM battery_samples ORDER BY device_id, block_seq LIMIT 1"
    ).fetchone()  # type: ignore[misc]
    bad = bytearray(raw)
    bad[-1] ^= 0x01  # the last byte of the last float field
    con.execute(
        "UPDATE battery_samples SET raw = ? WHERE device_id = ? AND block_seq = ? AND idx = ?",
        [bytes(bad), dev, seq, idx],
    )
    rep = world.audit()
    kinds = {(f.kind, f.where) for f in rep.findings}
    assert ("row_changed", f"battery_samples {dev}/{seq}/{idx}") in kinds
    assert all(f.where == f"battery_samples {dev}/{seq}/{idx}" for f in rep.findings), rep.findings


def test_audit_pinpoints_a_deleted_row(world: World) -> None:
    con = world.store.con
    dev, seq = con.execute(
        "SELECT device_id, seq FROM blocks ORDER BY device_id, seq LIMIT 1 OFFSET 5"
    ).fetchone()  # type: ignore[misc]
    con.execute("DELETE FROM driving_samples WHERE device_id = ? AND block_seq = ? AND idx = 3", [dev, seq])
    assert _one(world.audit()) == ("row_missing", f"{dev}/{seq}/3")


def test_audit_pinpoints_an_inserted_row(world: World) -> None:
    con = world.store.con
    row = con.execute("SELECT * FROM driving_samples ORDER BY device_id, block_seq, idx LIMIT 1").fetchone()
    assert row is not None
    cols = [d[0] for d in con.description or []]
    fake = dict(zip(cols, row, strict=True))
    fake["idx"] = 11  # the block holds idx 0..10
    con.execute(f"INSERT INTO driving_samples VALUES ({', '.join('?' * len(cols))})", list(fake.values()))
    assert _one(world.audit()) == (
        "row_inserted",
        f"driving_samples {fake['device_id']}/{fake['block_seq']}/11",
    )
    # a row for a block that does not exist
    fake["block_seq"] = 999
    con.execute(f"INSERT INTO driving_samples VALUES ({', '.join('?' * len(cols))})", list(fake.values()))
    kinds = world.audit().by_kind()
    assert kinds == {"row_inserted": 1, "row_without_block": 1}


def test_audit_pinpoints_a_modified_block_header(world: World) -> None:
    con = world.store.con
    dev, seq, header = con.execute(
        "SELECT device_id, seq, header FROM blocks ORDER BY device_id, seq LIMIT 1 OFFSET 7"
    ).fetchone()  # type: ignore[misc]
    bad = bytearray(header)
    bad[-40] ^= 0x04  # inside the 32-byte prev hash / counters: still decodes
    con.execute("UPDATE blocks SET header = ? WHERE device_id = ? AND seq = ?", [bytes(bad), dev, seq])
    rep = world.audit()
    assert rep.findings and all(f.where == f"block {dev}/{seq}" for f in rep.findings), rep.findings
    assert {"block_header", "block_signature"} <= set(rep.by_kind())


def test_audit_pinpoints_a_removed_ledger_entry(world: World) -> None:
    lines = world.ledger.path.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 3
    removed = json.loads(lines[1])["batch_no"]
    world.ledger.path.write_bytes(b"".join(lines[:1] + lines[2:]))
    reopened = LocalLedger(world.ledger.path)
    rep = Auditor(world.store, world.registry, reopened, world.operator.public_key).run()
    kinds = rep.by_kind()
    assert ("ledger_entry_missing", f"batch {removed}") in {(f.kind, f.where) for f in rep.findings}
    assert kinds["ledger_entry_missing"] == 1
    assert kinds["ledger_log"] >= 1  # index sequence, prev link and checkpoints no longer match


def test_erasure_keeps_every_other_proof(tmp_path: Path) -> None:
    w = build_world(tmp_path, vehicles=10, blocks=5, block_records=11)
    gone = w.fleet[3].device_id
    before = w.store.counts()["records"]
    e = erase_device(w.store, w.operator, gone, reason="owner request")
    assert (e.blocks, e.records) == (5, 55)
    con = w.store.con
    for t in ("driving_samples", "battery_samples", "blocks"):
        col = "device_id"
        assert con.execute(f"SELECT count(*) FROM {t} WHERE {col} = ?", [gone]).fetchone() == (0,)
    assert w.store.counts()["records"] == before - 55
    rep = w.audit()
    assert rep.ok, [str(f) for f in rep.findings]
    assert (rep.erased_blocks, rep.erased_records) == (5, 55)
    assert rep.erasures == [(0, gone, 5, 55)]
    for v in w.fleet:
        if v.device_id == gone:
            continue
        rows = select_rows(w.store, None, f"device_id = '{v.device_id}'", 4, sample=True)
        assert verify_bundle(w.bundle(rows), operator_key=w.operator.public_key).ok
    with pytest.raises(EraseError, match="already erased"):
        erase_device(w.store, w.operator, gone)
    # deleting rows by hand is not an erasure: the audit says so
    other = w.fleet[4].device_id
    con.execute("DELETE FROM battery_samples WHERE device_id = ?", [other])
    assert set(w.audit().by_kind()) == {"row_missing"}
    # a forged erasure statement is caught
    con.execute("UPDATE erasures SET reason = 'x', statement = statement || '\\x00'::BLOB")
    assert "erasure_invalid" in w.audit().by_kind()


def test_compact_keeps_everything_else(tmp_path: Path) -> None:
    w = build_world(tmp_path, vehicles=3, blocks=3)
    erase_device(w.store, w.operator, w.fleet[0].device_id)
    counts = w.store.counts()
    w.store.close()
    compact(Path(w.store.location))
    w.store = FileStore(w.store.location)
    assert w.store.counts() == counts
    assert w.audit().ok


def test_a_newline_after_an_id_is_not_the_id(world: World) -> None:
    """Ids match whole strings (WIRE.md section 1): "<id>\\n" makes the bundle malformed, whether in
    a field or as an object key (before, the newline passed the format and only a later check, if
    any, noticed)."""
    (row,) = select_rows(world.store, "driving", None, 1, sample=True)
    b = json.loads(world.bundle([row]))
    kid, bh, no = next(iter(b["keys"])), next(iter(b["blocks"])), next(iter(b["batches"]))

    def field(o: Any) -> None:
        o["records"][0]["device_id"] += "\n"

    def key_of(table: str, k: str) -> Callable[[Any], None]:
        return lambda o: o[table].__setitem__(k + "\n", o[table].pop(k))

    for change in (field, key_of("keys", kid), key_of("blocks", bh), key_of("batches", no)):
        obj = json.loads(json.dumps(b))
        change(obj)
        rep = verify_bundle(json.dumps(obj).encode(), operator_key=world.operator.public_key)
        assert len(rep.problems) == 1 and rep.problems[0].startswith(
            "bundle: not a vt-proof/1 or vt-proof/2 bundle"
        )


def test_every_record_kind_proves_and_verifies(tmp_path: Path) -> None:
    """`prove --table` works for every record kind the store holds (the proof format once allowed
    only two of the four tables)."""
    ts = 1_700_000_000_000_000_000
    extra: list[Record] = [
        TriggerEvent(
            ts, "hard_brake", "Vehicle.Acceleration.Longitudinal", -5.5, ts - 10**9, ts + 10**9, 50.0
        ),
        SpoolDrop(ts, 900, 901, 20, b"\x01" * 32, b"\x02" * 32, "full"),
    ]
    w = build_world(tmp_path, vehicles=1, blocks=2, extra=extra)
    for kind in RECORD_KINDS:
        rows = select_rows(w.store, kind.short, None, 1, sample=False)
        assert len(rows) == 1, kind
        rep = verify_bundle(w.bundle(rows), operator_key=w.operator.public_key)
        assert rep.ok and rep.records == 1, (kind.table, rep.problems)


def test_where_without_table_uses_the_tables_it_applies_to(world: World) -> None:
    from ingest.ops.proofs import ProveError

    rows = select_rows(world.store, None, "speed_mps >= 0", 5, sample=False)  # driving only
    assert rows and {r.table for r in rows} == {"driving_samples"}
    rows = select_rows(world.store, None, "soc_pct >= 0", 5, sample=False)  # battery only
    assert rows and {r.table for r in rows} == {"battery_samples"}
    with pytest.raises(ProveError, match="applies to no record table"):
        select_rows(world.store, None, "no_such_column > 1", 5, sample=False)
    with pytest.raises(ProveError, match="cannot select rows from driving_samples"):
        select_rows(world.store, "driving", "soc_pct > 1", 5, sample=False)


def test_verify_proof_shows_what_was_proven_and_wants_a_pinned_key(world: World, tmp_path: Path) -> None:
    import subprocess
    import sys

    from schemas.proof import proven_rows

    rows = select_rows(world.store, "driving", None, 3, sample=False)
    data = world.bundle(rows)
    bundle = tmp_path / "b.json"
    bundle.write_bytes(data)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "nothing-here"}"\n')

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ingest.cli", "--config", str(cfg), "verify-proof", str(bundle), *argv],
            capture_output=True,
            text=True,
            timeout=120,
        )

    proven = proven_rows(data)
    assert [(p["device_id"], p["block_seq"], p["idx"]) for p in proven] == [
        (r.device_id, r.block_seq, r.idx) for r in rows
    ]
    assert all(p["table"] == "driving_samples" and "speed_mps" in p["values"] for p in proven)
    r = cli()  # valid, but the key is only the bundle's own
    assert r.returncode == 1 and "UNPINNED" in r.stdout and "OK: 3 record(s)" in r.stdout, r.stdout
    r = cli("--trust-bundle-key")
    assert r.returncode == 0 and "speed_mps=" in r.stdout and "ledger entry" in r.stdout, r.stdout
    r = cli("--operator-key", world.operator.public_key.hex())
    assert r.returncode == 0 and "pinned from --operator-key" in r.stdout, r.stdout
    r = cli("--operator-key", world.operator.public_key.hex(), "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["ok"] and out["records"][0]["values"]["ts_ns"] > 0
    r = cli("--operator-key", "zz")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


def test_a_row_not_stored_under_its_table_and_index_is_refused(world: World) -> None:
    """A bundle reads each block's rows once; a reference to a row that is not among them is refused,
    whether its table is wrong or its index is past the block's last row."""
    from ingest.ops.proofs import ProveError

    (r,) = select_rows(world.store, "driving", None, 1, sample=False)
    assert verify_bundle(world.bundle([r]), operator_key=world.operator.public_key).ok
    (count,) = world.store.con.execute(
        "SELECT record_count FROM blocks WHERE device_id = ? AND seq = ?", [r.device_id, r.block_seq]
    ).fetchone()
    for bad in (
        RowRef("battery_samples", r.device_id, r.block_seq, r.idx),
        RowRef(r.table, r.device_id, r.block_seq, count),
        RowRef(r.table, r.device_id, r.block_seq, -1),
    ):
        with pytest.raises(
            ProveError, match=f"{bad.table} row {r.device_id}/{r.block_seq}/{bad.idx} is gone"
        ):
            world.bundle([bad])
