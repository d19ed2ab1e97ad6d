"""The anchor calldata format: b"VTA1" || u8 kind || u64 BE number || root(32)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.ledger.evm_client import (
    ANCHOR_CALLDATA_LEN,
    ANCHOR_KIND_BATCH,
    ANCHOR_KIND_CHECKPOINT,
    anchor_calldata,
    parse_anchor_calldata,
)

ROOT = bytes(range(32))


def flip(data: bytes, bit: int) -> bytes:
    b = bytearray(data)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def test_known_answer() -> None:
    data = anchor_calldata(ANCHOR_KIND_CHECKPOINT, 0x0102030405060708, ROOT)
    assert data.hex() == "56544131" + "01" + "0102030405060708" + ROOT.hex()
    assert len(data) == ANCHOR_CALLDATA_LEN == 45
    assert (
        anchor_calldata(ANCHOR_KIND_BATCH, 7, b"\xff" * 32)
        == b"VTA1\x00" + (7).to_bytes(8, "big") + b"\xff" * 32
    )


@given(
    kind=st.sampled_from([ANCHOR_KIND_BATCH, ANCHOR_KIND_CHECKPOINT]),
    number=st.integers(0, 2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
)
def test_round_trip(kind: int, number: int, root: bytes) -> None:
    data = anchor_calldata(kind, number, root)
    assert len(data) == 45
    assert parse_anchor_calldata(data) == (kind, number, root)


@pytest.mark.parametrize(
    ("kind", "number", "root", "needle"),
    [
        (2, 1, ROOT, "kind"),
        (-1, 1, ROOT, "kind"),
        (0, -1, ROOT, "number"),
        (0, 2**64, ROOT, "number"),
        (0, True, ROOT, "number"),
        (0, 1.0, ROOT, "number"),
        (0, 1, ROOT[:31], "32 bytes, got 31"),
        (0, 1, ROOT + b"\x00", "32 bytes, got 33"),
        (0, 1, ROOT.hex(), "32 bytes, got str"),
    ],
)
def test_build_rejects(kind: int, number: int, root: bytes, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        anchor_calldata(kind, number, root)


def test_parse_rejects_wrong_length() -> None:
    data = anchor_calldata(ANCHOR_KIND_BATCH, 1, ROOT)
    for bad in (b"", data[:-1], data + b"\x00", b"VTA1"):
        with pytest.raises(ValueError, match="45 bytes"):
            parse_anchor_calldata(bad)


@pytest.mark.parametrize("bit", range(32))
def test_parse_rejects_flipped_magic(bit: int) -> None:
    with pytest.raises(ValueError, match="VTA1"):
        parse_anchor_calldata(flip(anchor_calldata(ANCHOR_KIND_BATCH, 1, ROOT), bit))


@pytest.mark.parametrize("bit", range(1, 8))
def test_parse_rejects_unknown_kind(bit: int) -> None:
    # Bit 0 of the kind byte turns 0 into 1 (a valid kind); every other bit makes it unknown.
    with pytest.raises(ValueError, match="kind"):
        parse_anchor_calldata(flip(anchor_calldata(ANCHOR_KIND_BATCH, 1, ROOT), 32 + bit))


def test_flipped_payload_parses_to_other_values() -> None:
    data = anchor_calldata(ANCHOR_KIND_BATCH, 1, ROOT)
    for bit in [32, *range(13 * 8, 45 * 8)]:  # kind bit 0, then every bit of the number and the root
        assert parse_anchor_calldata(flip(data, bit)) != (ANCHOR_KIND_BATCH, 1, ROOT)


def test_parse_rejects_non_bytes() -> None:
    with pytest.raises(ValueError, match="bytes"):
        parse_anchor_calldata(anchor_calldata(0, 1, ROOT).hex())  # type: ignore[arg-type]
