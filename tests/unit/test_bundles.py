"""Bundles (schemas/WIRE.md 12.5): several MQTT messages in one Kafka record. The bytes as the spec
describes them, and the processor taking a bundle apart exactly as it would take its messages one by
one, on a real DuckDB file and registry."""

from __future__ import annotations

import hashlib
import itertools
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ingest.pipeline.processor import Processor, in_chunks, unbundle
from ingest.pipeline.processor import RawMessage as Msg
from ingest.storage.registry import Registry
from ingest.storage.store import FileStore
from schemas.transport import (
    BUNDLE_HEADER,
    HISTORICAL_HEADER,
    MQTT_TOPIC_HEADER,
    BundleEntry,
    blocks_topic,
    decode_bundle,
    encode_bundle,
)
from tests.unit.test_processor import Dev

BUNDLE = [(BUNDLE_HEADER, b"1")]


def _by_hand(entries: list[tuple[str, bytes, bool]]) -> bytes:
    """A bundle's value written from WIRE.md 12.5 and section 4's table, not with a MessagePack
    library: an array of [str, bin, bool] arrays, each in its shortest form."""

    def length(n: int, small: int | None, widths: list[tuple[int, int]]) -> bytes:
        if small is not None and n < 16 and small != 0xA0:
            return bytes([small | n])
        if small == 0xA0 and n < 32:
            return bytes([0xA0 | n])
        for code, size in widths:
            if n < 1 << (8 * size):
                return bytes([code]) + n.to_bytes(size, "big")
        raise ValueError(n)

    out = length(len(entries), 0x90, [(0xDC, 2), (0xDD, 4)])
    for topic, payload, historical in entries:
        t = topic.encode()
        out += b"\x93"
        out += length(len(t), 0xA0, [(0xD9, 1), (0xDA, 2), (0xDB, 4)]) + t
        out += length(len(payload), None, [(0xC4, 1), (0xC5, 2), (0xC6, 4)]) + payload
        out += b"\xc3" if historical else b"\xc2"
    return out


def test_the_bundle_bytes_are_what_the_spec_says() -> None:
    dev = Dev()
    entries = [
        (blocks_topic(dev.id), dev.block(0).to_wire(), False),
        (blocks_topic(dev.id), dev.block(1).to_wire(), True),
        (f"vehicles/{dev.id}/state", b"\x94", False),
    ]
    hand = _by_hand(entries)
    assert encode_bundle(entries) == hand
    assert decode_bundle(hand) == [BundleEntry(*e) for e in entries]
    # Any valid width is accepted (section 4): an array32 header and a bin32 payload.
    wide = b"\xdd\x00\x00\x00\x01\x93\xa1t\xc6\x00\x00\x00\x02ab\xc2"
    assert decode_bundle(wide) == [BundleEntry("t", b"ab", False)]
    for bad in (
        b"\x90",  # no entries
        b"\x91\x92\xa1t\xc4\x00",  # an entry of two fields
        b"\x91\x94\xa1t\xc4\x00\xc2\xc0",  # an entry of four fields
        b"\x91\x93\xa1t\xa1x\xc2",  # a payload as str
        b"\x91\x93\xa1t\xc4\x00\x01",  # historical as an integer
        b"\x91\x93\xa0\xc4\x00\xc2",  # an empty topic
        hand[:-1],  # truncated
        hand + b"\x00",  # bytes after the value
    ):
        with pytest.raises(msgspec.MsgspecError):
            decode_bundle(bad)


@pytest.fixture()
def two(tmp_path: Path) -> Any:
    """Two registered vehicles with six blocks each, and a fresh processor on a store per call."""
    reg = Registry(tmp_path / "r.sqlite")
    devs = [Dev(), Dev()]
    for d in devs:
        reg.add(d.key.public_key)
        for s in range(6):
            d.block(s)
    stores: list[FileStore] = []

    def processor(name: str) -> tuple[FileStore, Processor]:
        store = FileStore(tmp_path / f"{name}.duckdb")
        stores.append(store)
        return store, Processor(store, reg, max_block_bytes=512 * 1024)

    yield devs, processor
    for st in stores:
        st.close()
    reg.close()


def _interleaved(devs: list[Dev]) -> list[tuple[str, bytes, bool]]:
    return [(blocks_topic(d.id), d.blocks[s].to_wire(), s == 5) for s in range(6) for d in devs]


def _stored(store: FileStore) -> list[Any]:
    return store.con.execute(  # type: ignore[no-any-return]
        "SELECT device_id, seq, block_hash, kafka_partition, kafka_offset, historical FROM blocks"
        " ORDER BY device_id, seq"
    ).fetchall()


def test_a_bundle_is_stored_as_its_messages_one_by_one(two: Any) -> None:
    devs, processor = two
    entries = _interleaved(devs)
    one_store, one = processor("one")
    one.process_all(
        [
            Msg(
                "t",
                0,
                0,
                t.split("/")[1].encode(),
                p,
                [(MQTT_TOPIC_HEADER, t.encode())] + [(HISTORICAL_HEADER, b"1")] * h,
            )
            for t, p, h in entries
        ]
    )
    b_store, b = processor("bundled")
    b.process_all(unbundle(Msg("t", 0, 0, None, encode_bundle(entries), BUNDLE)))
    for store, proc in ((one_store, one), (b_store, b)):
        assert not proc.pending.rejections and len(proc.pending.blocks) == 12
        assert proc.pending.offsets == {("t", 0): 1}
        store.write_batch(proc.build_rows(store.next_batch_no()))
    assert _stored(b_store) == _stored(one_store)
    assert sum(r[5] for r in _stored(b_store)) == 2  # the replayed flag travels in the bundle
    rec = "SELECT device_id, block_seq, idx, raw, leaf FROM driving_samples ORDER BY ALL"
    assert b_store.con.execute(rec).fetchall() == one_store.con.execute(rec).fetchall()


def test_a_bad_message_in_a_bundle_is_dead_lettered_alone_with_its_index(two: Any) -> None:
    devs, processor = two
    entries = _interleaved(devs)
    topic, wire, hist = entries[3]
    flipped = bytearray(wire)
    flipped[len(flipped) // 2] ^= 0x10  # a bit in the records: the Merkle root no longer matches
    entries[3] = (topic, bytes(flipped), hist)
    entries.insert(7, (blocks_topic(devs[0].id), b"\xc1junk", False))
    entries.insert(8, (blocks_topic(devs[0].id), b"\xc1junk", False))  # the same bytes again: a message too
    store, proc = processor("p")
    bundle = Msg("t", 2, 40, None, encode_bundle(entries), BUNDLE)
    proc.process_all(unbundle(bundle))
    got = [(r.reason, r.index, r.partition, r.offset, r.payload_sha256) for r in proc.pending.rejections]
    assert got[0][:4] == ("merkle_mismatch", 3, 2, 40) and got[0][4] == hashlib.sha256(flipped).digest()
    assert got[1][:4] == ("decode_error", 7, 2, 40) and got[2][:4] == ("decode_error", 8, 2, 40)
    assert len(got) == 3
    # Every other block is kept; the second device's chain continues past its broken block 1 as a gap.
    assert len(proc.pending.blocks) == 11
    proc.process_all(unbundle(bundle))  # the same record again in the same batch: nothing more
    assert len(proc.pending.rejections) == 3
    store.write_batch(proc.build_rows(store.next_batch_no()))
    rows = "SELECT reason, bundle_index FROM rejections ORDER BY bundle_index"
    assert store.con.execute(rows).fetchall() == [
        ("merkle_mismatch", 3),
        ("decode_error", 7),
        ("decode_error", 8),
    ]


def test_copies_of_a_stored_block_in_one_bundle_are_each_a_duplicate(two: Any) -> None:
    devs, processor = two
    store, proc = processor("p")
    first = [(blocks_topic(devs[0].id), devs[0].blocks[s].to_wire(), False) for s in range(2)]
    proc.process_all(unbundle(Msg("t", 0, 0, None, encode_bundle(first), BUNDLE)))
    store.write_batch(proc.build_rows(store.next_batch_no()))
    proc.reset()  # the batch is stored: the next one starts from the stored heads
    again = Msg("t", 0, 1, None, encode_bundle([first[1]] * 3 + [first[0]]), BUNDLE)
    proc.process_all(unbundle(again))
    proc.process_all(unbundle(again))  # redelivered within the batch: one row per message still
    store.write_batch(proc.build_rows(store.next_batch_no()))
    rows = "SELECT kafka_offset, bundle_index, seq FROM duplicates ORDER BY bundle_index"
    assert store.con.execute(rows).fetchall() == [(1, 0, 1), (1, 1, 1), (1, 2, 1), (1, 3, 0)]
    (n,) = store.con.execute("SELECT count(*) FROM blocks").fetchone() or (0,)
    assert n == 2


def test_a_record_that_is_not_a_bundle_is_dead_lettered_whole(two: Any) -> None:
    devs, processor = two
    good = encode_bundle(_interleaved(devs))
    _, proc = processor("p")
    for i, (value, headers) in enumerate(
        ((good[:-3], BUNDLE), (b"\x91\x92\xa1t\xc4\x00", BUNDLE), (good, [(BUNDLE_HEADER, b"2")]))
    ):
        msgs = unbundle(Msg("t", 0, i, None, value, headers))
        assert len(msgs) == 1
        proc.process_all(msgs)
    rej = proc.pending.rejections
    assert [(r.reason, r.index, r.offset) for r in rej] == [("decode_error", None, i) for i in range(3)]
    assert rej[0].payload == good[:-3] and rej[0].payload_sha256 == hashlib.sha256(good[:-3]).digest()
    assert "bundle version b'2'" in rej[2].detail
    assert not proc.pending.blocks and proc.pending.offsets == {("t", 0): 3}


def test_chunks_end_where_a_kafka_record_ends(two: Any) -> None:
    devs, _ = two
    entries = _interleaved(devs)  # 12 messages
    records: list[Any] = [Msg("t", 0, 0, None, encode_bundle(entries), BUNDLE)]
    records += [Msg("t", 0, o, None, b"\xc1") for o in range(1, 4)]
    records += [Msg("t", 0, 4, None, encode_bundle(entries[:5]), BUNDLE)]
    chunks = list(in_chunks(records, 8))
    assert [[m.offset for m in c] for c in chunks] == [[0] * 12, [1, 2, 3, 4, 4, 4, 4, 4]]
    chunks = list(in_chunks(records, 2))
    assert [len(c) for c in chunks] == [12, 2, 6]
    for earlier, later in itertools.pairwise(chunks):
        assert not {m.offset for m in earlier} & {m.offset for m in later}


def test_the_spec_example_is_what_the_bridge_writes() -> None:
    """WIRE.md 12.5's example, read from the spec's text, against ``encode_bundle``."""
    text = (Path(__file__).resolve().parents[2] / "schemas" / "WIRE.md").read_text()
    example = text.split("Example: one block of 1 000 bytes, not replayed, as a bundle, in hex:\n`", 1)[1]
    parts = re.findall(r'<the 48 bytes of "[^"]*">|<the [^>]*>|[0-9a-f]{2}', example.split("`", 1)[0])
    topic, payload = blocks_topic("0123456789abcdef" * 2), bytes(range(256)) * 3 + bytes(232)
    hand = b""
    for p in parts:
        if p.startswith("<the 48 bytes"):
            hand += topic.encode()
        elif p.startswith("<the"):
            hand += payload
        else:
            hand += bytes.fromhex(p)
    assert len(payload) == 1000 and len(topic) == 48
    assert encode_bundle([(topic, payload, False)]) == hand


def test_a_bundle_whose_topic_is_not_utf8_is_dead_lettered_not_a_crash(two: Any) -> None:
    """msgspec reports a str that is not UTF-8 as a UnicodeDecodeError, not a DecodeError."""
    _, processor = two
    _, proc = processor("p")
    value = b"\x91\x93\xa1\xff\xc4\x00\xc2"
    msgs = unbundle(Msg("t", 0, 5, None, value, BUNDLE))
    assert len(msgs) == 1
    proc.process_all(msgs)
    [r] = proc.pending.rejections
    assert (r.reason, r.offset, r.index) == ("decode_error", 5, None) and "not a bundle" in r.detail


def test_a_large_record_that_is_not_a_bundle_is_kept_as_its_first_kib(two: Any) -> None:
    _, processor = two
    _, proc = processor("p")
    value = b"\xc1" + bytes(900_000)
    proc.process_all(unbundle(Msg("t", 0, 6, None, value, BUNDLE)))
    [r] = proc.pending.rejections
    assert r.reason == "decode_error" and len(r.payload) == 1024
    assert (r.payload_size, r.payload_sha256) == (len(value), hashlib.sha256(value).digest())
