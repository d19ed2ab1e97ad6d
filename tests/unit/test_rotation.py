"""Key rotation and revocation with validity intervals: the real Agent signs, the real Processor verifies
against a real registry and DuckDB file; proofs of blocks on both sides of a rotation verify."""

from __future__ import annotations

from pathlib import Path

from common.config import EdgeConfig
from edge_agent.agent import Agent
from edge_agent.publisher import MemoryPublisher
from edge_agent.sources.vehicle import VehicleModel
from edge_agent.spool import Spool
from ingest.ledger.local import LocalLedger
from ingest.ops.audit import Auditor
from ingest.ops.proofs import Prover, select_rows
from ingest.pipeline.processor import Pending, Processor
from ingest.pipeline.processor import RawMessage as Msg
from ingest.storage.registry import Registry
from ingest.storage.store import FileStore
from schemas.block import build_block, decode_envelope, decode_header, encode_record
from schemas.crypto import SigningKey, device_id_for
from schemas.proof import encode_bundle, verify_bundle

T0 = 1_700_000_000_000_000_000


def test_rotation_mid_run(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "t.duckdb")
    reg = Registry(tmp_path / "r.sqlite")
    operator = SigningKey.generate()
    ledger = LocalLedger(tmp_path / "ledger.jsonl", operator)
    old, new = SigningKey.generate(), SigningKey.generate()
    dev = device_id_for(old.public_key)
    reg.add(old.public_key)
    pub = MemoryPublisher()
    agent = Agent(
        old,
        EdgeConfig(block_max_records=10, fsync=False),
        pub,
        Spool(tmp_path / "spool", fsync=False),
        device_id=dev,
    )
    model = VehicleModel(9, start_ns=T0)
    for _ in range(50):
        for r in model.step():
            agent.offer(r)
    # The operator registers the new key valid from the next sample's time, then the vehicle switches.
    switch_at = T0 + 60 * 100_000_000
    while True:
        recs = model.step()
        if recs[0].ts_ns >= switch_at:
            break
        for r in recs:
            agent.offer(r)
    agent.flush()
    reg.rotate(dev, new.public_key, at=switch_at)
    agent.rotate_key(new)
    for r in recs:
        agent.offer(r)
    for _ in range(50):
        for r in model.step():
            agent.offer(r)
    agent.flush()
    # A block signed with the retired key after the rotation (a stolen or stale key).
    later = model.step()
    late = [encode_record(r) for r in later]
    ts = [r.ts_ns for r in later]
    assert min(ts) >= switch_at
    forged = build_block(
        old,
        device_id=dev,
        boot=1,
        seq=10_000,
        prev=bytes(32),
        records=late,
        t_first=min(ts),
        t_last=max(ts),
        seed=bytes(32),
    )
    payloads = [p for _, p in pub.messages] + [forged.to_wire()]
    keys_used = [decode_header(decode_envelope(p).header).key_id for p in payloads[:-1]]
    assert old.key_id in keys_used and new.key_id in keys_used

    proc = Processor(store, reg, max_block_bytes=1 << 20)
    proc.process_all([Msg("t", 0, i, dev.encode(), p) for i, p in enumerate(payloads)])
    p = proc.pending
    assert [r.reason for r in p.rejections] == ["key_not_valid"]
    assert "outside key" in p.rejections[0].detail
    assert len(p.blocks) == len(payloads) - 1
    rows = proc.build_rows(0)
    store.write_batch(rows)
    store.record_anchor(ledger.anchor(0, rows.root, len(rows.blocks)))
    proc.pending = Pending()

    # Proofs on both sides of the rotation verify, each against the key valid when it was signed.
    for cond in (f"ts < make_timestamp_ns({switch_at})", f"ts >= make_timestamp_ns({switch_at})"):
        rows_ = select_rows(store, "driving", cond, 3, sample=True)
        bundle = Prover(store, reg, ledger, operator).bundle(rows_)
        assert verify_bundle(encode_bundle(bundle), operator_key=operator.public_key).ok
        (k,) = bundle.keys.values()
        assert k.key_id == (old.key_id if "<" in cond else new.key_id)
    assert Auditor(store, reg, ledger, operator.public_key).run().ok

    # Revocation: distrust the new key from a time inside the data; the audit now flags exactly the
    # stored blocks stamped after it, and new blocks after it are rejected as revoked.
    reg.revoke(dev, at=switch_at + 2 * 10**9)
    rep = Auditor(store, reg, ledger, operator.public_key).run()
    assert set(rep.by_kind()) == {"block_key"}
    proc.process_all([Msg("t", 0, 999, dev.encode(), agent_block_after(new, dev, switch_at + 10 * 10**9))])
    assert [r.reason for r in proc.pending.rejections] == ["revoked_key"]


def agent_block_after(key: SigningKey, dev: str, t: int) -> bytes:
    m = VehicleModel(1, start_ns=t)
    recs = [encode_record(r) for r in m.step()]
    return build_block(
        key,
        device_id=dev,
        boot=2,
        seq=5000,
        prev=bytes(32),
        records=recs,
        t_first=t,
        t_last=t + 10**9,
        seed=bytes(32),
    ).to_wire()


def test_revoking_before_a_rotation_empties_the_later_key(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.sqlite")
    old, new = SigningKey.generate(), SigningKey.generate()
    dev = reg.add(old.public_key).device_id
    reg.rotate(dev, new.public_key, at=T0 + 10)
    assert reg.revoke(dev, at=T0 + 5) == 2
    keys = {k.key_id: k for k in reg.keys_of(dev)}
    assert (keys[old.key_id].valid_from, keys[old.key_id].valid_until) == (0, T0 + 5)
    assert (keys[new.key_id].valid_from, keys[new.key_id].valid_until) == (T0 + 10, T0 + 10)
    assert not keys[new.key_id].covers(T0 + 10, T0 + 10)
