"""Merkle core: RFC 6962 known answers, a recursive reference, inclusion paths, properties."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import merkle

# The RFC 6962 reference leaf set used by Certificate Transparency implementations.
RFC6962_LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
RFC6962_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, written literally and recursively. Test-only."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + reference_root(leaves[:k]) + reference_root(leaves[k:])).digest()


def test_empty_tree() -> None:
    assert merkle.root([]).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_one_leaf() -> None:
    assert merkle.root(RFC6962_LEAVES[:1]).hex() == RFC6962_ROOTS[0]


@pytest.mark.parametrize("n", range(1, 9))
def test_rfc6962_reference_set(n: int) -> None:
    assert merkle.root(RFC6962_LEAVES[:n]).hex() == RFC6962_ROOTS[n - 1]


def test_flipped_bit_changes_root() -> None:
    leaves = list(RFC6962_LEAVES)
    leaves[5] = bytes([leaves[5][0] ^ 0x01]) + leaves[5][1:]
    assert merkle.root(leaves).hex() != RFC6962_ROOTS[7]


@given(st.lists(st.binary(max_size=40), max_size=70))
def test_matches_recursive_reference(leaves: list[bytes]) -> None:
    assert merkle.root(leaves) == reference_root(leaves)


@given(st.lists(st.binary(max_size=16), min_size=1, max_size=70), st.data())
def test_inclusion_path_round_trip(leaves: list[bytes], data: st.DataObject) -> None:
    hashes = [merkle.leaf_hash(x) for x in leaves]
    index = data.draw(st.integers(0, len(leaves) - 1))
    path = merkle.inclusion_path(hashes, index)
    assert merkle.root_from_inclusion_path(hashes[index], index, len(hashes), path) == merkle.root(leaves)


@given(st.lists(st.binary(max_size=16), min_size=2, max_size=40), st.data())
def test_inclusion_path_rejects_other_leaf(leaves: list[bytes], data: st.DataObject) -> None:
    hashes = [merkle.leaf_hash(x) for x in leaves]
    index = data.draw(st.integers(0, len(leaves) - 1))
    path = merkle.inclusion_path(hashes, index)
    bad = bytearray(hashes[index])
    bad[data.draw(st.integers(0, 31))] ^= 1 << data.draw(st.integers(0, 7))
    assert merkle.root_from_inclusion_path(bytes(bad), index, len(hashes), path) != merkle.root(leaves)
