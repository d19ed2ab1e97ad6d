"""Values the store cannot hold: refused at decode with a reason, and — for anything the decoder lets
through — found by bisection when a batch fails to store, dead-lettered, and the rest stored."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest

from ingest.pipeline.processor import Processor
from ingest.pipeline.processor import RawMessage as Msg
from ingest.storage.registry import Registry
from ingest.storage.schema import DRIVING_COLUMNS, _sample_table
from ingest.storage.store import FileStore, Store, StoreContentError
from schemas.block import build_block
from schemas.crypto import TAG_SESSION, ZERO_HASH, SigningKey, device_id_for
from schemas.records import MAX_TIMESTAMP_NS
from schemas.session import SESSION_VERSION, SessionEvent, SignedSession, sign_session
from simulators.hostile import T0, drive


class Dev:
    def __init__(self) -> None:
        self.key = SigningKey.generate()
        self.id = device_id_for(self.key.public_key)
        self.seq = 0
        self.head = ZERO_HASH

    def block(self, records: list[bytes], *, t_first: int | None = None, t_last: int | None = None) -> bytes:
        ts = [msgspec.msgpack.decode(r)[1] for r in records]
        b = build_block(
            self.key,
            device_id=self.id,
            boot=1,
            seq=self.seq,
            prev=self.head,
            records=records,
            t_first=min(ts) if t_first is None else t_first,
            t_last=max(ts) if t_last is None else t_last,
            seed=os.urandom(32),
        )
        self.seq += 1
        self.head = b.hash
        return b.to_wire()

    def session(self, ts_ns: int = T0, body: bytes | None = None) -> bytes:
        ev = SessionEvent("birth", self.id, self.key.key_id, 1, 1, ts_ns, 0, "test", 1, {"block_records": 3})
        if body is None:
            return sign_session(self.key, ev)
        sig = self.key.sign(TAG_SESSION + b"\x00" + body)
        return msgspec.msgpack.encode(SignedSession(SESSION_VERSION, self.key.key_id, body, sig))


@pytest.fixture()
def parts(tmp_path: Path) -> Any:
    store = FileStore(tmp_path / "t.duckdb")
    reg = Registry(tmp_path / "r.sqlite")
    yield store, reg, tmp_path
    store.close()
    reg.close()


def _proc(store: Store, reg: Registry, *devs: Dev) -> Processor:
    for d in devs:
        reg.add(d.key.public_key)
    return Processor(store, reg, max_block_bytes=512 * 1024)


def _feed(proc: Processor, *msgs: tuple[str, bytes, bytes]) -> None:
    """(device id, payload, topic suffix) -> one Kafka message each, offsets from 0."""
    base = proc.pending.messages
    proc.process_all(
        [
            Msg(
                "blocks",
                0,
                base + i,
                dev.encode(),
                v,
                [("mqtt-topic", f"vehicles/{dev}/{suffix.decode()}".encode())],
            )
            for i, (dev, v, suffix) in enumerate(msgs)
        ]
    )


def test_largest_timestamp_is_refused_at_decode_with_a_reason(parts: Any) -> None:
    """2^63-1 is DuckDB's 'infinity': a record, a header or a session message carrying it is refused
    with its reason before it can reach the store (before the fix it was accepted, and the batch
    holding it failed to store for ever, or was stored as 'infinity')."""
    store, reg, _ = parts
    dev = Dev()
    proc = _proc(store, reg, dev)
    t_inf = 2**63 - 1
    _feed(
        proc,
        (dev.id, dev.block([drive(T0), drive(t_inf)], t_last=MAX_TIMESTAMP_NS), b"blocks"),  # record ts
        (dev.id, dev.block([drive(T0)], t_last=t_inf), b"blocks"),  # header t_last
        (dev.id, dev.session(ts_ns=t_inf), b"state"),
        (dev.id, dev.session(ts_ns=MAX_TIMESTAMP_NS), b"state"),  # the largest allowed is fine
    )
    assert [r.reason for r in proc.pending.rejections] == ["bad_record", "bad_header", "decode_error"]
    assert len(proc.pending.sessions) == 1
    store.write_batch(proc.build_rows(0))
    (ts,) = store.con.execute("SELECT epoch_ns(ts) FROM session_events").fetchone() or (None,)
    assert ts == MAX_TIMESTAMP_NS  # stored as a time, not as 'infinity'


def test_signed_session_body_that_does_not_decode_is_a_decode_error(parts: Any) -> None:
    store, reg, _ = parts
    dev = Dev()
    proc = _proc(store, reg, dev)
    forged = bytearray(dev.session())
    forged[-1] ^= 0x01  # flip a bit of the signature
    _feed(
        proc,
        (dev.id, dev.session(body=b"\x93\x01\x02"), b"state"),  # validly signed, wrong shape
        (dev.id, bytes(forged), b"state"),
    )
    assert [r.reason for r in proc.pending.rejections] == ["decode_error", "bad_signature"]
    assert "does not decode" in proc.pending.rejections[0].detail


def _strict_store(path: Path) -> Store:
    """A store whose driving table refuses speeds of 150 m/s or more, which the wire schema allows
    (up to 200): a real DuckDB constraint standing in for any value the store cannot hold."""
    ddl = _sample_table("driving_samples", DRIVING_COLUMNS).replace(
        "speed_mps DOUBLE", "speed_mps DOUBLE CHECK (speed_mps < 150)"
    )
    con = duckdb.connect(str(path))
    con.execute(ddl)
    con.close()
    return FileStore(path)


def test_bisection_names_exactly_the_refused_block_and_the_rest_is_stored(tmp_path: Path) -> None:
    store = _strict_store(tmp_path / "s.duckdb")
    reg = Registry(tmp_path / "r.sqlite")
    try:
        a, b = Dev(), Dev()
        proc = _proc(store, reg, a, b)
        msgs = []
        for i in range(40):
            dev = a if i % 2 else b
            speed = 180.0 if (dev is a and i == 21) else 10.0
            msgs.append((dev.id, dev.block([drive(T0 + i, speed), drive(T0 + i + 1)]), b"blocks"))
        _feed(proc, *msgs)
        rows = proc.build_rows(0)
        with pytest.raises(StoreContentError):
            store.write_batch(rows)
        [bad] = store.find_unstorable(rows)
        assert (bad.topic, bad.partition, bad.offset) == ("blocks", 0, 21)
        assert "CHECK" in bad.detail
        assert store.counts()["records"] == 0  # every probe was rolled back

        # As the consumer does: quarantine, forget the batch, process the same messages again.
        proc.quarantine[(bad.topic, bad.partition, bad.offset, bad.identity)] = bad.detail
        proc.reset()
        _feed(proc, *msgs)
        assert [(r.offset, r.reason) for r in proc.pending.rejections] == [(21, "unstorable")]
        store.write_batch(proc.build_rows(0))
        c = store.counts()
        assert c["blocks"] == 39 and c["records"] == 78 and c["rejections"] == 1
        # Device a's next block after the refused one is a gap, not a chain break.
        assert store.con.execute("SELECT device_id, from_seq, to_seq FROM gaps").fetchall() == [
            (a.id, 10, 10)
        ]
    finally:
        store.close()
        reg.close()


def test_quarantine_matches_the_exact_message_only(tmp_path: Path) -> None:
    """A different block arriving at a quarantined position (a reset broker reuses positions) is
    judged on its own."""
    store = _strict_store(tmp_path / "s.duckdb")
    reg = Registry(tmp_path / "r.sqlite")
    try:
        a = Dev()
        proc = _proc(store, reg, a)
        proc.quarantine[("blocks", 0, 0, b"\x00" * 32)] = "refused earlier"
        _feed(proc, (a.id, a.block([drive(T0)]), b"blocks"))
        assert not proc.pending.rejections and len(proc.pending.blocks) == 1
        proc.quarantine_prune({("blocks", 0): 1})
        assert not proc.quarantine
    finally:
        store.close()
        reg.close()


def test_a_reused_kafka_position_keeps_both_rejections(parts: Any) -> None:
    """A broker that lost its log hands out positions again: a new message rejected at a position an
    earlier rejection holds is stored too (before the fix it was silently skipped)."""
    store, reg, _ = parts
    proc = _proc(store, reg)
    for batch_no, junk in enumerate((b"\xc1 first", b"\xc1 second")):
        proc.process_all([Msg("blocks", 0, 7, None, junk)])
        store.write_batch(proc.build_rows(batch_no))
        proc.pending = type(proc.pending)()
    proc.process_all([Msg("blocks", 0, 7, None, b"\xc1 second")])  # a true redelivery: once
    store.write_batch(proc.build_rows(2))
    assert store.counts()["rejections"] == 2


def test_session_next_seq_reveals_a_loss_at_the_end_of_a_stream(parts: Any) -> None:
    from ingest.ops.gaps import gap_report

    store, reg, _ = parts
    dev = Dev()
    proc = _proc(store, reg, dev)
    _feed(proc, *[(dev.id, dev.block([drive(T0 + i)]), b"blocks") for i in range(3)])
    store.write_batch(proc.build_rows(0))
    assert gap_report(store.con) == []
    # The vehicle sealed blocks 3..5, which never arrived; it reconnects and announces next_seq 6.
    proc.pending = type(proc.pending)()
    ev = SessionEvent("birth", dev.id, dev.key.key_id, 1, 2, T0 + 100, 6, "test", 1, {})
    _feed(proc, (dev.id, sign_session(dev.key, ev), b"state"))
    store.write_batch(proc.build_rows(1))
    [g] = gap_report(store.con)
    assert (g.from_seq, g.to_seq, g.status, g.tail) == (3, 5, "missing", True)
