"""Completeness proofs (docs/PROOFS.md §14): a vt-proof/2 bundle holds every block a vehicle sealed in a
period, passing only holes the vehicle declared; remove a block or a record and verification names the
hole. Built through the real Processor, store and signed ledger (simulators.offline)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ingest import wiring
from ingest.config import load_config
from ingest.ops.proofs import ProveError, Prover
from ingest.storage.registry import Registry
from ingest.storage.store import FileStore
from schemas.block import decode_envelope, decode_header, encode_record
from schemas.crypto import SigningKey, block_hash
from schemas.proof import encode_bundle, proven_rows, verify_bundle
from schemas.records import SpoolDrop
from simulators.offline import OfflineVehicle, ingest_blocks, make_fleet

RECORDS = 10  # per block; the simulated vehicle samples at 10 Hz: one block per second


@dataclass
class Chain:
    prover: Prover
    operator: SigningKey
    device: str
    # seq -> (t_first, t_last) of every block the vehicle sealed (sent or not)
    times: dict[int, tuple[int, int]]
    config: Path  # a config whose store, registry, ledger and operator key these are


def _drive(tmp: Path, blocks: int, *, drop: tuple[int, int] | None = None, lose: int | None = None) -> Chain:
    """One vehicle seals ``blocks`` blocks. ``drop = (a, b)``: its spool drops blocks a..b and declares
    it in the next block it seals; ``lose``: a block that never arrives and is not declared."""
    config = tmp / "t.toml"
    config.write_text(f'data_dir = "{tmp / "data"}"\n[store]\nbackend = "duckdb"\n')
    cfg = load_config(str(config))
    operator = wiring.operator_key(cfg, create=True)
    store = FileStore(wiring.paths(cfg).store)
    registry = Registry(wiring.paths(cfg).registry)
    ledger = wiring.open_log(cfg, operator)
    v: OfflineVehicle = make_fleet(1, seed=5, profiles=("aggressive",))[0]
    registry.add(v.key.public_key, device_id=v.device_id)
    times: dict[int, tuple[int, int]] = {}

    def blocks_() -> Iterator[tuple[str, bytes]]:
        dropped: list[tuple[int, bytes, bytes, int]] = []  # seq, prev, hash, records
        for _ in range(blocks):
            if drop and v.seq == drop[1] + 1:
                first, last = dropped[0], dropped[-1]
                v.pending.insert(
                    0,
                    encode_record(
                        SpoolDrop(
                            times[v.seq - 1][1],
                            first[0],
                            last[0],
                            sum(d[3] for d in dropped),
                            first[1],
                            last[2],
                            "full",
                        )
                    ),
                )
            prev = v.head
            wire = v.next_block(RECORDS)
            hdr = decode_header(decode_envelope(wire).header)
            times[hdr.seq] = (hdr.t_first, hdr.t_last)
            if drop and drop[0] <= hdr.seq <= drop[1]:
                dropped.append((hdr.seq, prev, block_hash(decode_envelope(wire).header), hdr.count))
                continue
            if hdr.seq == lose:
                continue
            yield v.device_id, wire

    ingest_blocks(store, registry, ledger, blocks_(), batch_blocks=3)
    return Chain(Prover(store, registry, ledger, operator), operator, v.device_id, times, config)


@pytest.fixture
def chain(tmp_path: Path) -> Chain:
    return _drive(tmp_path, 12)


def _verify(data: bytes, c: Chain) -> Any:
    return verify_bundle(data, operator_key=c.operator.public_key)


def _edit(data: bytes, fn: Any) -> bytes:
    b = json.loads(data)
    fn(b)
    return json.dumps(b).encode()


def test_a_period_proves_complete_from_the_block_before_to_the_block_after(chain: Chain) -> None:
    t = chain.times
    bundle = chain.prover.complete(chain.device, t[3][0], t[7][1])
    data = encode_bundle(bundle)
    rep = _verify(data, chain)
    assert rep.ok, rep.problems
    (c,) = rep.claims
    assert (c.claim.first_seq, c.claim.last_seq, c.claim.start, c.claim.end) == (2, 8, "before", "after")
    assert c.blocks == 7 and c.records == 5 * RECORDS and not c.holes
    rows = proven_rows(data)
    assert sorted({r["block_seq"] for r in rows}) == [3, 4, 5, 6, 7]
    assert len(rows) == rep.records == 5 * RECORDS


def test_the_first_block_and_the_last_anchored_block_bound_an_open_period(chain: Chain) -> None:
    t = chain.times
    rep = _verify(
        encode_bundle(chain.prover.complete(chain.device, t[0][0] - 10**9, t[11][1] + 10**12)), chain
    )
    assert rep.ok, rep.problems
    (c,) = rep.claims
    assert (c.claim.first_seq, c.claim.last_seq, c.claim.start, c.claim.end) == (0, 11, "genesis", "head")
    assert c.complete_until_ns == t[11][1] and c.records == 12 * RECORDS


@pytest.mark.parametrize("seq", [2, 5, 8])
def test_removing_any_block_names_the_hole(chain: Chain, seq: int) -> None:
    t = chain.times
    data = encode_bundle(chain.prover.complete(chain.device, t[3][0], t[7][1]))
    bh = next(
        h
        for h, b in json.loads(data)["blocks"].items()
        if decode_header(bytes.fromhex(b["header"])).seq == seq
    )

    def cut(b: dict[str, Any]) -> None:
        del b["blocks"][bh]
        b["contents"].pop(bh, None)

    rep = _verify(_edit(data, cut), chain)
    assert not rep.ok
    (p,) = [p for p in rep.problems if p.startswith("complete[0]")]
    want = {2: "the first block (seq 2)", 5: "hole at seq 5", 8: "the last block (seq 8)"}[seq]
    assert want in p, p


def test_removing_any_record_names_the_block(chain: Chain) -> None:
    t = chain.times
    data = encode_bundle(chain.prover.complete(chain.device, t[3][0], t[7][1]))
    bh = next(iter(json.loads(data)["contents"]))
    rep = _verify(_edit(data, lambda b: b["contents"][bh]["records"].pop(4)), chain)
    assert any(p.startswith(f"contents[{bh[:16]}") and f"{RECORDS - 1} records" in p for p in rep.problems)
    assert any(p.startswith("complete[0]") and "records are not all in the bundle" in p for p in rep.problems)
    # a record swapped for another of the same block: the root no longer rebuilds
    rep = _verify(_edit(data, lambda b: b["contents"][bh]["records"].reverse()), chain)
    assert any("do not rebuild the block's records root" in p for p in rep.problems), rep.problems


def test_a_declared_drop_is_a_hole_shown_not_hidden(tmp_path: Path) -> None:
    c = _drive(tmp_path, 12, drop=(4, 5))
    t = c.times
    rep = _verify(encode_bundle(c.prover.complete(c.device, t[2][0], t[8][1])), c)
    assert rep.ok, rep.problems
    (claim,) = rep.claims
    (hole,) = claim.holes
    assert (hole.first_seq, hole.last_seq, hole.records, hole.reason) == (4, 5, 2 * RECORDS, "full")
    assert (hole.after_ns, hole.before_ns) == (t[3][1], t[6][0])


def test_an_undeclared_gap_cannot_be_proven_complete(tmp_path: Path) -> None:
    c = _drive(tmp_path, 10, lose=5)
    t = c.times
    with pytest.raises(ProveError, match=f"block {c.device}/5 is missing and the vehicle declared no drop"):
        c.prover.complete(c.device, t[2][0], t[8][1])
    # a period that does not reach the gap is still provable
    assert _verify(encode_bundle(c.prover.complete(c.device, t[7][0], t[8][1])), c).ok


def test_a_v1_bundle_may_not_carry_v2_parts_and_v2_needs_them(chain: Chain) -> None:
    t = chain.times
    data = encode_bundle(chain.prover.complete(chain.device, t[3][0], t[7][1]))
    rep = _verify(_edit(data, lambda b: b.update(format="vt-proof/1")), chain)
    assert rep.problems == [
        "bundle: vt-proof/1 has no 'complete', 'contents' or 'figures' (those are vt-proof/2)"
    ]
    rep = _verify(_edit(data, lambda b: b.pop("complete")), chain)
    assert rep.problems == ["bundle: a vt-proof/2 bundle needs 'complete'"]


def test_prove_and_verify_proof_commands_say_what_is_complete(chain: Chain, tmp_path: Path) -> None:
    t = chain.times
    data = encode_bundle(chain.prover.complete(chain.device, t[3][0], t[7][1]))
    (tmp_path / "b.json").write_bytes(data)
    (tmp_path / "c.toml").write_text(f'data_dir = "{tmp_path / "nothing"}"\n')
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ingest.cli",
            "--config",
            str(tmp_path / "c.toml"),
            "verify-proof",
            str(tmp_path / "b.json"),
            "--operator-key",
            chain.operator.public_key.hex(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"COMPLETE device {chain.device}" in r.stdout and "seq 2..8 (7 blocks, 50 records" in r.stdout, (
        r.stdout
    )


def _cli(c: Chain, *argv: str) -> subprocess.CompletedProcess[str]:
    c.prover.store.close()  # DuckDB: one process at a time
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli", "--config", str(c.config), *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(("command", "flag", "says"), [
    ("score", "--recompute-score", "score "),
    ("battery-passport", "--recompute-passport", "SOCE "),
])  # fmt: skip
def test_a_proven_figure_is_recomputed_offline_and_tampering_fails(
    tmp_path: Path, command: str, flag: str, says: str
) -> None:
    c = _drive(tmp_path, 40)
    t = c.times
    out = tmp_path / "fig.json"
    r = _cli(
        c, command, "--device", c.device, "--from", str(t[5][0]), "--to", str(t[30][1]), "--prove", str(out)
    )
    assert r.returncode == 0 and "COMPLETE device" in r.stdout, r.stdout + r.stderr
    key = c.operator.public_key.hex()
    r = _cli(c, "verify-proof", str(out), "--operator-key", key, flag)
    assert r.returncode == 0 and "RECOMPUTED" in r.stdout and says in r.stdout, r.stdout + r.stderr
    b = json.loads(out.read_bytes())
    fig = b["figures"][0]
    if command == "score":
        fig["result"]["period"]["score"] += 0.1
    else:
        fig["result"]["battery_condition"]["energyThroughput"] *= 1.01
    out.write_text(json.dumps(b))
    r = _cli(c, "verify-proof", str(out), "--operator-key", key, flag)
    field = "period.score" if command == "score" else "battery_condition.energyThroughput"
    assert r.returncode == 1 and f"FAIL figures[0] ({fig['kind']}): recomputed {field} " in r.stdout, r.stdout
    # the figure's period must be covered by a claim: widen it past the claim
    fig["result"] = json.loads(out.read_bytes())["figures"][0]["result"]
    fig["to_ns"] = t[39][1] + 10**12
    out.write_text(json.dumps(b))
    r = _cli(c, "verify-proof", str(out), "--operator-key", key, flag)
    assert r.returncode == 1 and "no completeness claim of the bundle covers" in r.stdout, r.stdout


def test_a_declared_drop_in_a_scored_period_is_shown_with_what_it_covers(tmp_path: Path) -> None:
    c = _drive(tmp_path, 30, drop=(10, 12))
    t = c.times
    out = tmp_path / "score.json"
    r = _cli(
        c, "score", "--device", c.device, "--from", str(t[5][0]), "--to", str(t[20][1]), "--prove", str(out)
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"DECLARED HOLE: seq 10..12, {3 * RECORDS} records dropped by the vehicle (full)" in r.stdout, (
        r.stdout
    )
    assert "the driving-score leaves out 3 s of the period" in r.stdout, r.stdout
    r = _cli(c, "verify-proof", str(out), "--operator-key", c.operator.public_key.hex(), "--recompute-score")
    assert r.returncode == 0 and "RECOMPUTED driving-score" in r.stdout and "DECLARED HOLE" in r.stdout, (
        r.stdout
    )


def test_a_drop_declared_in_the_block_after_the_period_travels_as_a_proven_row(tmp_path: Path) -> None:
    c = _drive(tmp_path, 12, drop=(4, 5))  # the drop record is in block 6
    t = c.times
    data = encode_bundle(c.prover.complete(c.device, t[1][0], t[3][1]))
    b = json.loads(data)
    assert [r["table"] for r in b["records"]] == ["spool_drops"] and b["records"][0]["block_seq"] == 6
    rep = _verify(data, c)
    assert rep.ok, rep.problems
    (claim,) = rep.claims
    assert (claim.claim.last_seq, [(h.first_seq, h.last_seq) for h in claim.holes]) == (6, [(4, 5)])
    # without it the hole is undeclared
    b["records"] = []
    rep = _verify(json.dumps(b).encode(), c)
    assert any("hole at seq 4" in p for p in rep.problems), rep.problems
