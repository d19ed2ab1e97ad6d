"""The consumer's verification and chain rules on a real DuckDB file and registry, without brokers."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from edge_agent.sources.vehicle import VehicleModel
from ingest.pipeline.processor import RECENT_BLOCKS, Processor
from ingest.pipeline.processor import RawMessage as Msg
from ingest.storage.registry import Registry
from ingest.storage.store import FileStore, Store
from schemas.block import Block, build_block, encode_record, leaf_hashes
from schemas.crypto import ZERO_HASH, SigningKey, device_id_for
from schemas.records import DrivingSample


class Dev:
    def __init__(self) -> None:
        self.key = SigningKey.generate()
        self.id = device_id_for(self.key.public_key)
        self.model = VehicleModel(5, start_ns=1_700_000_000_000_000_000)
        self.blocks: list[Block] = []

    def block(self, seq: int, prev: bytes | None = None, records: list[bytes] | None = None) -> Block:
        recs = records or [encode_record(r) for _ in range(3) for r in self.model.step()]
        ts = [msgspec.msgpack.decode(r)[1] for r in recs]
        if prev is None:
            prev = self.blocks[seq - 1].hash if seq > 0 else ZERO_HASH
        b = build_block(
            self.key,
            device_id=self.id,
            boot=1,
            seq=seq,
            prev=prev,
            records=recs,
            t_first=min(ts),
            t_last=max(ts),
            seed=os.urandom(32),
        )
        if seq == len(self.blocks):
            self.blocks.append(b)
        return b


@pytest.fixture()
def setup(tmp_path: Path) -> Any:
    store = FileStore(tmp_path / "t.duckdb")
    reg = Registry(tmp_path / "r.sqlite")
    dev = Dev()
    reg.add(dev.key.public_key)
    proc = Processor(store, reg, max_block_bytes=512 * 1024)
    offset = iter(range(10**6))

    def feed(*payloads: tuple[bytes, bytes | None]) -> None:
        proc.process_all([Msg("t", 0, next(offset), k, v) for v, k in payloads])

    yield store, dev, proc, feed
    store.close()
    reg.close()


def _flush(store: Store, proc: Processor) -> None:
    store.write_batch(proc.build_rows(store.next_batch_no()))
    proc.pending = type(proc.pending)()


def test_gap_then_late_fill_then_chain_break(setup: Any) -> None:
    store, dev, proc, feed = setup
    k = dev.id.encode()
    b0, b1, b2 = dev.block(0), dev.block(1), dev.block(2)
    feed((b0.to_wire(), k), (b2.to_wire(), k))
    assert proc.pending.gaps and proc.pending.gaps[0][1:3] == (1, 1)
    feed((b1.to_wire(), k))  # arrives late: fills the gap, checked against block 0
    bad = dev.block(3, prev=b1.hash)  # must chain to block 2
    feed((bad.to_wire(), k))
    assert [r.reason for r in proc.pending.rejections] == ["chain_broken"]
    _flush(store, proc)
    assert store.counts()["blocks"] == 3
    assert store.heads()[dev.id].last_seq == 2


def test_heads_survive_a_new_processor(setup: Any, tmp_path: Path) -> None:
    store, dev, proc, feed = setup
    k = dev.id.encode()
    feed((dev.block(0).to_wire(), k), (dev.block(1).to_wire(), k))
    _flush(store, proc)
    fresh = Processor(store, proc.keyring, max_block_bytes=512 * 1024)
    fresh.process_all([Msg("t", 0, 99, k, dev.blocks[1].to_wire())])  # redelivery after a restart
    assert len(fresh.pending.duplicates) == 1 and not fresh.pending.blocks
    fresh.process_all([Msg("t", 0, 100, k, dev.block(2).to_wire())])
    assert len(fresh.pending.blocks) == 1


def test_record_out_of_range_is_rejected_whole(setup: Any) -> None:
    _, dev, proc, feed = setup
    good = encode_record(
        DrivingSample(
            1_700_000_000_000_000_000,
            10.0,
            0.0,
            0.0,
            0.0,
            0.0,
            None,
            None,
            None,
            None,
            None,
            0.0,
            0.0,
            0.0,
            1,
            0.0,
        )
    )
    fast = msgspec.msgpack.encode(
        ["d", 1_700_000_000_000_000_001, 999.0] + [0.0] * 4 + [None] * 5 + [0.0, 0.0, 0.0, 1, 0.0]
    )
    feed((dev.block(0, records=[good, fast]).to_wire(), dev.id.encode()))
    assert [r.reason for r in proc.pending.rejections] == ["bad_record"]
    assert "speed_mps" in proc.pending.rejections[0].detail


def test_topic_of_another_device_is_rejected(setup: Any) -> None:
    _, dev, proc, feed = setup
    feed((dev.block(0).to_wire(), b"0" * 32))
    assert [r.reason for r in proc.pending.rejections] == ["device_mismatch"]


def test_malformed_marker_headers_do_not_crash(setup: Any) -> None:
    _, _dev, proc, _feed = setup
    junk = [("vt-reject", b"no-such-reason"), ("vt-size", b"12x"), ("vt-sha256", b"zz")]
    proc.process_all([Msg("t", 0, 0, None, b"abc", junk)])
    [r] = proc.pending.rejections
    assert r.reason == "decode_error" and r.payload_size == 3


def test_oversized_and_garbage(setup: Any) -> None:
    _, _dev, proc, feed = setup
    feed((b"\x93" + os.urandom(600 * 1024), None), (b"\xc1", None), (b"", None))
    assert [r.reason for r in proc.pending.rejections] == ["oversized", "decode_error", "decode_error"]


def test_failed_flush_reset_reloads_heads(setup: Any) -> None:
    _store, dev, proc, feed = setup
    k = dev.id.encode()
    feed((dev.block(0).to_wire(), k))
    proc.reset()  # as after a store failure: the pending batch is gone, heads come from the store
    assert dev.id not in proc.heads and proc.pending.empty
    feed((dev.blocks[0].to_wire(), k))
    assert len(proc.pending.blocks) == 1


def test_a_stored_batch_holds_the_heads_of_its_own_blocks(setup: Any, tmp_path: Path) -> None:
    """The writer stores batch N while the processor already verifies batch N+1 (consumer: the
    write runs in a thread). A crash after N's commit must leave `devices` at N's last block: the
    heads in N's rows are a snapshot, not the processor's live objects."""
    store, dev, proc, feed = setup
    k = dev.id.encode()
    feed(*((dev.block(s).to_wire(), k) for s in range(3)))
    rows = proc.build_rows(store.next_batch_no())  # batch N: blocks 0-2
    proc.pending = type(proc.pending)()
    feed(*((dev.block(s).to_wire(), k) for s in range(3, 5)))  # batch N+1 moves the live head on
    store.write_batch(rows)  # ... before N is written; then "crash": N+1 is never written
    head = store.heads()[dev.id]
    (last, n) = store.con.execute(
        "SELECT max(seq), count(*) FROM blocks WHERE device_id = ?", [dev.id]
    ).fetchone()  # type: ignore[misc]
    assert (
        (head.last_seq, head.last_hash, head.blocks)
        == (last, dev.blocks[2].hash, n)
        == (2, dev.blocks[2].hash, 3)
    )
    # a restarted processor takes the stored head: blocks 3-4 redelivered chain on and are stored
    again = Processor(store, proc.keyring, max_block_bytes=512 * 1024)
    again.process_all([Msg("t", 0, 100 + s, k, dev.blocks[s].to_wire()) for s in range(3, 5)])
    assert not again.pending.rejections and not again.pending.duplicates and not again.pending.gaps
    store.write_batch(again.build_rows(store.next_batch_no()))
    assert store.heads()[dev.id].last_seq == 4 and store.counts()["blocks"] == 5


def test_a_block_of_mixed_kinds_lands_in_each_table_at_its_positions(setup: Any) -> None:
    """Driving and battery records interleaved in one block (after a one-kind block): each table holds
    its records with their index in the block, exact bytes and leaf hash; one-kind and mixed blocks
    take different paths into the batch's columns."""
    store, dev, proc, feed = setup
    k = dev.id.encode()
    recs: list[bytes] = []
    while len({msgspec.msgpack.decode(r)[0] for r in recs}) < 2:
        recs += [encode_record(r) for r in dev.model.step()]
    one_kind = [r for r in recs if msgspec.msgpack.decode(r)[0] == "d"]
    mixed = recs[-1:] + recs[:-1]  # the last step's battery record (if any) moves first
    blocks = [dev.block(0, records=one_kind), dev.block(1, records=mixed)]
    feed(*((b.to_wire(), k) for b in blocks))
    assert not proc.pending.rejections
    _flush(store, proc)
    want: dict[str, list[tuple[int, int, bytes, bytes]]] = {"d": [], "b": []}  # kind -> rows in block order
    for seq, b in enumerate(blocks):
        leaves = leaf_hashes(b.seed, b.records)
        for i, raw in enumerate(b.records):
            want[msgspec.msgpack.decode(raw)[0]].append((seq, i, raw, leaves[i]))
    for kind, table in (("d", "driving_samples"), ("b", "battery_samples")):
        got = store.con.execute(
            f"SELECT block_seq, idx, raw, leaf FROM {table} WHERE device_id = ? ORDER BY block_seq, idx",
            [dev.id],
        ).fetchall()
        assert [tuple(r) for r in got] == want[kind] and want[kind]


def test_signatures_checked_on_threads_give_the_same_verdicts(setup: Any, tmp_path: Path) -> None:
    """A poll of 300 blocks with one signature bit flipped in block 137: on the verify threads
    (chunks of 64) exactly that block is rejected for its signature, as in line."""
    _, dev, _, _ = setup
    k = dev.id.encode()
    wires = [dev.block(i).to_wire() for i in range(300)]
    env = msgspec.msgpack.decode(wires[137])
    sig = bytearray(env[3])
    sig[5] ^= 0x10
    env[3] = bytes(sig)
    wires[137] = msgspec.msgpack.encode(env)
    verdicts = []
    for threads in (0, 2):
        store = FileStore(tmp_path / f"v{threads}.duckdb")
        reg = Registry(tmp_path / f"v{threads}.sqlite")
        reg.add(dev.key.public_key)
        proc = Processor(store, reg, max_block_bytes=512 * 1024, verify_threads=threads)
        proc.process_all([Msg("t", 0, i, k, w) for i, w in enumerate(wires)])
        verdicts.append(
            (
                [(r.offset, str(r.reason)) for r in proc.pending.rejections],
                [b.seq for b in proc.pending.blocks],
            )
        )
        proc.close()
        store.close()
        reg.close()
    assert verdicts[0] == verdicts[1]
    assert verdicts[1][0] == [(137, "bad_signature")]
    assert len(verdicts[1][1]) == 299 and 137 not in verdicts[1][1]


def _reads(store: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """The (device, seq) of every block hash the processor reads from the store."""
    seen: list[tuple[str, int]] = []
    real = store.block_hash_at

    def spy(device_id: str, seq: int) -> bytes | None:
        seen.append((device_id, seq))
        return real(device_id, seq)  # type: ignore[no-any-return]

    monkeypatch.setattr(store, "block_hash_at", spy)
    return seen


def test_a_recent_block_published_again_is_known_without_reading_the_store(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lake has no index: a block looked up by device and number reads the whole blocks table."""
    store, dev, proc, feed = setup
    k = dev.id.encode()
    n = RECENT_BLOCKS + 4
    feed(*[(dev.block(i).to_wire(), k) for i in range(n)])
    _flush(store, proc)
    reads = _reads(store, monkeypatch)
    # the latest blocks again (an MQTT redelivery after a reconnect), and one of them forged
    feed(*[(dev.blocks[i].to_wire(), k) for i in range(n - 3, n)])
    feed((dev.block(n - 2, prev=dev.blocks[n - 3].hash).to_wire(), k))
    assert len(proc.pending.duplicates) == 3
    assert [r.reason for r in proc.pending.rejections] == ["seq_conflict"]
    assert reads == []
    # an older one is looked up in the store, as before
    feed((dev.blocks[0].to_wire(), k))
    assert len(proc.pending.duplicates) == 4 and reads == [(dev.id, 0)]


def test_a_gap_seen_open_is_filled_by_late_blocks_without_reading_the_store(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, dev, proc, feed = setup
    k = dev.id.encode()
    blocks = [dev.block(i) for i in range(6)]
    feed((blocks[0].to_wire(), k), (blocks[5].to_wire(), k))  # 1-4 missing: a gap
    _flush(store, proc)
    reads = _reads(store, monkeypatch)
    forged = dev.block(2, prev=blocks[0].hash)  # another block 2
    feed(*[(b.to_wire(), k) for b in blocks[1:5]], (blocks[3].to_wire(), k))
    _flush(store, proc)
    feed((forged.to_wire(), k))
    assert [r.reason for r in proc.pending.rejections] == ["seq_conflict"]
    assert reads == []
    assert store.counts()["blocks"] == 6 and store.counts()["duplicates"] == 1
    # after a rewind the window is gone: the store answers again
    proc.reset()
    feed((blocks[4].to_wire(), k))
    assert len(proc.pending.duplicates) == 1 and reads == [(dev.id, 4)]


def test_a_late_block_that_does_not_chain_is_refused_from_the_window(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, dev, proc, feed = setup
    k = dev.id.encode()
    blocks = [dev.block(i) for i in range(4)]
    feed((blocks[0].to_wire(), k), (blocks[1].to_wire(), k), (blocks[3].to_wire(), k))
    _flush(store, proc)
    reads = _reads(store, monkeypatch)
    feed((dev.block(2, prev=blocks[0].hash).to_wire(), k))  # late, but claims block 0 as its predecessor
    assert [r.reason for r in proc.pending.rejections] == ["chain_broken"] and reads == []
    feed((blocks[2].to_wire(), k))
    assert len(proc.pending.blocks) == 1 and reads == []


def test_a_long_gap_is_filled_by_a_spool_replayed_in_order_without_reading_the_store(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A vehicle back online publishes live blocks while it replays what it spooled offline."""
    store, dev, proc, feed = setup
    k = dev.id.encode()
    n = 3 * RECENT_BLOCKS
    blocks = [dev.block(i) for i in range(n + 2)]
    feed((blocks[0].to_wire(), k), (blocks[n].to_wire(), k), (blocks[n + 1].to_wire(), k))
    _flush(store, proc)
    reads = _reads(store, monkeypatch)
    for i in range(1, n):  # the spool, oldest first, a batch stored every 5 blocks
        feed((blocks[i].to_wire(), k))
        if i % 5 == 0:
            _flush(store, proc)
    _flush(store, proc)
    assert reads == [] and not proc.pending.rejections
    assert store.counts()["blocks"] == n + 2
    # a forged block in place of one replayed is refused; the latest replayed, again, is a duplicate
    feed((dev.block(n - 1, prev=blocks[0].hash).to_wire(), k), (blocks[n - 1].to_wire(), k))
    assert [r.reason for r in proc.pending.rejections] == ["seq_conflict"]
    assert len(proc.pending.duplicates) == 1 and reads == []


def test_late_blocks_out_of_order_split_the_gap_and_chain_where_they_can(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, dev, proc, feed = setup
    k = dev.id.encode()
    n = 2 * RECENT_BLOCKS + 10
    blocks = [dev.block(i) for i in range(n + 1)]
    feed((blocks[0].to_wire(), k), (blocks[n].to_wire(), k))
    _flush(store, proc)
    reads = _reads(store, monkeypatch)
    feed((blocks[9].to_wire(), k))  # the middle of the gap: its predecessor is not stored
    feed((dev.block(11, prev=blocks[0].hash).to_wire(), k))  # after 10, which is missing: unchecked
    _flush(store, proc)
    feed((dev.block(10, prev=blocks[0].hash).to_wire(), k))  # 9 is stored now: this one must chain to it
    assert [r.reason for r in proc.pending.rejections] == ["chain_broken"]
    feed((blocks[10].to_wire(), k), (blocks[8].to_wire(), k), (blocks[1].to_wire(), k))
    _flush(store, proc)
    assert reads == [] and store.counts()["blocks"] == 7


@pytest.mark.parametrize("seed", range(4))
def test_every_window_size_gives_the_verdicts_of_the_store_alone(tmp_path: Path, seed: int) -> None:
    """Random streams of live blocks, jumps ahead (gaps), late and repeated blocks and forged ones,
    with batches stored and rewinds between, through processors keeping 0 (the store answers every
    time), 1, 3 and 16 block hashes per device: the same blocks stored, duplicates and rejections."""
    rng = random.Random(seed)
    devs = [Dev() for _ in range(3)]
    reg = Registry(tmp_path / "r.sqlite")
    for d in devs:
        reg.add(d.key.public_key)
    chains = {d.id: [d.block(i) for i in range(80)] for d in devs}
    runs = []
    for size in (0, 1, 3, 16):
        store = FileStore(tmp_path / f"w{size}.duckdb")
        runs.append((store, Processor(store, reg, max_block_bytes=512 * 1024, recent_blocks=size)))
    head = dict.fromkeys(chains, -1)
    for step in range(400):
        d = rng.choice(devs)
        r = rng.random()
        if r < 0.5 or head[d.id] < 0:  # live: the next one, or a jump ahead
            seq = min(79, head[d.id] + 1 + rng.choice([0, 0, 0, 1, 2, 4, 17, 30]))
            b = chains[d.id][seq]
            head[d.id] = max(head[d.id], seq)
        elif r < 0.85:  # late, or published again
            b = chains[d.id][rng.randint(max(0, head[d.id] - 40), head[d.id])]
        else:  # forged: another block with a number the chain has, or its predecessor's hash wrong
            seq = rng.randint(0, head[d.id] + 1)
            b = d.block(seq, prev=rng.choice([ZERO_HASH, chains[d.id][max(0, seq - 2)].hash]))
        msg = Msg("t", 0, step, d.id.encode(), b.to_wire())
        verdicts = []
        for _, proc in runs:
            proc.process_all([msg])
            p = proc.pending
            verdicts.append(
                (
                    [(x.device_id, x.seq) for x in p.blocks],
                    [(x.device_id, x.seq) for x in p.duplicates],
                    [str(x.reason) for x in p.rejections],
                    [tuple(g[:3]) for g in p.gaps],
                )
            )
        assert all(v == verdicts[0] for v in verdicts), (step, verdicts)
        if step % 7 == 6:
            for store, proc in runs:
                _flush(store, proc)
        if step % 97 == 96:  # as after a failed write: the pending batch gone, the heads reloaded
            for _, proc in runs:
                proc.reset()
    stored = [
        store.con.execute("SELECT device_id, seq, block_hash FROM blocks ORDER BY ALL").fetchall()
        for store, _ in runs
    ]
    assert stored[0] and all(s == stored[0] for s in stored)
    for store, _ in runs:
        store.close()
    reg.close()


def test_a_block_the_retention_erased_published_again_is_a_duplicate_not_stored_again(setup: Any) -> None:
    """The erased block's hash stays (``erased_blocks``): the store answers for it as for a stored
    one, as the window does while it holds it."""
    from ingest.ops.erase import drop_older_than

    store, dev, proc, feed = setup
    k = dev.id.encode()
    feed(*[(dev.block(i).to_wire(), k) for i in range(5)])
    _flush(store, proc)
    gone = drop_older_than(store, SigningKey.generate(), dev.blocks[2].header.t_last + 1, reason="retention")
    assert [(e.device_id, e.blocks) for e in gone] == [(dev.id, 3)]
    proc.reset()  # a consumer started anew: the store answers
    feed((dev.blocks[1].to_wire(), k), (dev.block(2, prev=dev.blocks[1].hash).to_wire(), k))
    assert [(d.device_id, d.seq) for d in proc.pending.duplicates] == [(dev.id, 1)]
    assert [r.reason for r in proc.pending.rejections] == ["seq_conflict"] and not proc.pending.blocks
