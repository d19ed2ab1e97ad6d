"""Consistency proofs (RFC 9162 2.1.4): known answers, a recursive reference, tampering."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import merkle
from schemas.merkle import ProofError
from tests.unit.test_merkle import RFC6962_LEAVES, RFC6962_ROOTS, reference_root

RFC_HASHES = [merkle.leaf_hash(d) for d in RFC6962_LEAVES]

# Consistency proofs over the RFC 6962 reference leaf set, as published with Certificate
# Transparency's test data (old size, new size, proof).
KNOWN_PROOFS: list[tuple[int, int, list[str]]] = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


def reference_mth(hashes: list[bytes]) -> bytes:
    """MTH (RFC 6962 2.1) over leaf hashes, recursive. Test-only; checked against
    test_merkle's reference_root below."""
    n = len(hashes)
    if n == 1:
        return hashes[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return merkle.node_hash(reference_mth(hashes[:k]), reference_mth(hashes[k:]))


def reference_subproof(m: int, hashes: list[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 9162 2.1.4.1, written literally and recursively. Test-only."""
    n = len(hashes)
    if m == n:
        return [] if b else [reference_mth(hashes)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*reference_subproof(m, hashes[:k], b), reference_mth(hashes[k:])]
    return [*reference_subproof(m - k, hashes[k:], False), reference_mth(hashes[:k])]


def reference_proof(m: int, hashes: list[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true)."""
    return reference_subproof(m, hashes, True)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def tree(n: int) -> list[bytes]:
    return [merkle.leaf_hash(i.to_bytes(2, "big")) for i in range(n)]


# -- known answers -------------------------------------------------------------------------


def test_reference_mth_agrees_with_reference_root() -> None:
    for n in range(1, 9):
        assert reference_mth(RFC_HASHES[:n]) == reference_root(RFC6962_LEAVES[:n])


@pytest.mark.parametrize(("m", "n", "proof"), KNOWN_PROOFS)
def test_known_proofs(m: int, n: int, proof: list[str]) -> None:
    assert [p.hex() for p in merkle.consistency_proof(RFC_HASHES[:n], m)] == proof
    assert [p.hex() for p in reference_proof(m, RFC_HASHES[:n])] == proof
    merkle.verify_consistency(
        m,
        n,
        bytes.fromhex(RFC6962_ROOTS[m - 1]),
        bytes.fromhex(RFC6962_ROOTS[n - 1]),
        [bytes.fromhex(p) for p in proof],
    )


def test_known_proof_with_wrong_old_root() -> None:
    m, n, proof = KNOWN_PROOFS[2]
    with pytest.raises(ProofError, match="old root"):
        merkle.verify_consistency(
            m,
            n,
            bytes.fromhex(RFC6962_ROOTS[4]),
            bytes.fromhex(RFC6962_ROOTS[n - 1]),
            [bytes.fromhex(p) for p in proof],
        )


def test_every_pair_of_the_reference_set_and_every_bit() -> None:
    """All 1 <= m <= n <= 8 of the RFC 6962 set: the proof verifies, and flipping any one bit
    of any proof node or of either root is caught."""
    for n in range(1, 9):
        for m in range(1, n + 1):
            proof = merkle.consistency_proof(RFC_HASHES[:n], m)
            root_m, root_n = bytes.fromhex(RFC6962_ROOTS[m - 1]), bytes.fromhex(RFC6962_ROOTS[n - 1])
            merkle.verify_consistency(m, n, root_m, root_n, proof)
            for i in range(len(proof)):
                for bit in range(256):
                    bad = [*proof[:i], flip(proof[i], bit), *proof[i + 1 :]]
                    with pytest.raises(ProofError):
                        merkle.verify_consistency(m, n, root_m, root_n, bad)
            for bit in range(256):
                with pytest.raises(ProofError):
                    merkle.verify_consistency(m, n, flip(root_m, bit), root_n, proof)
                with pytest.raises(ProofError):
                    merkle.verify_consistency(m, n, root_m, flip(root_n, bit), proof)


# -- argument checks -----------------------------------------------------------------------


def test_proof_from_empty_tree_is_refused() -> None:
    with pytest.raises(ValueError, match="empty tree"):
        merkle.consistency_proof(RFC_HASHES, 0)
    with pytest.raises(ProofError, match="empty tree"):
        merkle.verify_consistency(0, 8, merkle.EMPTY_ROOT, bytes.fromhex(RFC6962_ROOTS[7]), [])


@pytest.mark.parametrize("m", [-1, 9, 100])
def test_proof_size_out_of_range(m: int) -> None:
    with pytest.raises(ValueError):
        merkle.consistency_proof(RFC_HASHES, m)


def test_old_size_larger_than_new_size() -> None:
    with pytest.raises(ProofError, match="m > n"):
        merkle.verify_consistency(
            8,
            6,
            bytes.fromhex(RFC6962_ROOTS[7]),
            bytes.fromhex(RFC6962_ROOTS[5]),
            merkle.consistency_proof(RFC_HASHES, 6),
        )


def test_equal_sizes() -> None:
    root = bytes.fromhex(RFC6962_ROOTS[4])
    assert merkle.consistency_proof(RFC_HASHES[:5], 5) == []
    merkle.verify_consistency(5, 5, root, root, [])
    with pytest.raises(ProofError, match="wrong length"):
        merkle.verify_consistency(5, 5, root, root, [root])
    with pytest.raises(ProofError, match="different roots"):
        merkle.verify_consistency(5, 5, root, bytes.fromhex(RFC6962_ROOTS[5]), [])


def test_wrong_sized_hashes() -> None:
    m, n = 6, 8
    proof = merkle.consistency_proof(RFC_HASHES, m)
    root_m, root_n = bytes.fromhex(RFC6962_ROOTS[m - 1]), bytes.fromhex(RFC6962_ROOTS[n - 1])
    with pytest.raises(ProofError, match="proof node 1"):
        merkle.verify_consistency(m, n, root_m, root_n, [proof[0], proof[1] + b"\x00", proof[2]])
    with pytest.raises(ProofError, match="old root"):
        merkle.verify_consistency(m, n, root_m[:31], root_n, proof)
    with pytest.raises(ProofError, match="new root"):
        merkle.verify_consistency(m, n, root_m, root_n + b"\x00", proof)


def test_new_size_is_not_bound_by_the_roots() -> None:
    """An RFC 6962 root does not commit to the tree size: the tree of 8 leaves hashes as
    H(MTH(D[0:4]) || MTH(D[4:8])), and a tree of 6 leaves whose right subtree hashed to
    MTH(D[4:8]) would have the same root. So the honest proof 4 -> 8 also verifies when the
    new size is claimed to be 6 (same depth, same shape along the proof). This is why the sizes
    given to verify_consistency must come from the signed checkpoints, never from the party
    supplying the proof."""
    proof = merkle.consistency_proof(RFC_HASHES, 4)
    root_4, root_8 = bytes.fromhex(RFC6962_ROOTS[3]), bytes.fromhex(RFC6962_ROOTS[7])
    merkle.verify_consistency(4, 6, root_4, root_8, proof)
    # With the honest roots of the claimed sizes, the same proof is rejected.
    with pytest.raises(ProofError):
        merkle.verify_consistency(4, 6, root_4, bytes.fromhex(RFC6962_ROOTS[5]), proof)


# -- properties ----------------------------------------------------------------------------

sizes = st.integers(1, 70).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n)))


@given(sizes)
def test_matches_reference_and_verifies(mn: tuple[int, int]) -> None:
    m, n = mn
    hashes = tree(n)
    proof = merkle.consistency_proof(hashes, m)
    assert proof == reference_proof(m, hashes)
    assert len(proof) == merkle.consistency_proof_length(m, n)
    merkle.verify_consistency(m, n, reference_mth(hashes[:m]), reference_mth(hashes), proof)


@given(sizes, st.data())
def test_any_bit_flip_is_caught(mn: tuple[int, int], data: st.DataObject) -> None:
    m, n = mn
    hashes = tree(n)
    proof = merkle.consistency_proof(hashes, m)
    root_m, root_n = merkle.root_from_leaf_hashes(hashes[:m]), merkle.root_from_leaf_hashes(hashes)
    targets = len(proof) + 2
    target = data.draw(st.integers(0, targets - 1), label="target")
    bit = data.draw(st.integers(0, 255), label="bit")
    if target < len(proof):
        proof = [*proof[:target], flip(proof[target], bit), *proof[target + 1 :]]
    elif target == len(proof):
        root_m = flip(root_m, bit)
    else:
        root_n = flip(root_n, bit)
    with pytest.raises(ProofError):
        merkle.verify_consistency(m, n, root_m, root_n, proof)


@settings(max_examples=60)
@given(st.integers(2, 70).flatmap(lambda n: st.tuples(st.integers(1, n - 1), st.just(n))))
def test_every_bit_of_every_node(mn: tuple[int, int]) -> None:
    m, n = mn
    hashes = tree(n)
    proof = merkle.consistency_proof(hashes, m)
    root_m, root_n = merkle.root_from_leaf_hashes(hashes[:m]), merkle.root_from_leaf_hashes(hashes)
    for i in range(len(proof)):
        for bit in range(256):
            bad = [*proof[:i], flip(proof[i], bit), *proof[i + 1 :]]
            with pytest.raises(ProofError):
                merkle.verify_consistency(m, n, root_m, root_n, bad)


@given(sizes, st.data())
def test_truncated_or_extended_proof_is_caught(mn: tuple[int, int], data: st.DataObject) -> None:
    m, n = mn
    hashes = tree(n)
    proof = merkle.consistency_proof(hashes, m)
    root_m, root_n = merkle.root_from_leaf_hashes(hashes[:m]), merkle.root_from_leaf_hashes(hashes)
    if proof:
        cut = data.draw(st.integers(0, len(proof) - 1), label="keep")
        with pytest.raises(ProofError, match="wrong length"):
            merkle.verify_consistency(m, n, root_m, root_n, proof[:cut])
        with pytest.raises(ProofError, match="wrong length"):
            merkle.verify_consistency(m, n, root_m, root_n, proof[1:])
    extra = data.draw(st.binary(min_size=32, max_size=32), label="extra")
    at = data.draw(st.integers(0, len(proof)), label="at")
    with pytest.raises(ProofError, match="wrong length"):
        merkle.verify_consistency(m, n, root_m, root_n, [*proof[:at], extra, *proof[at:]])


@given(sizes, st.data())
def test_changed_old_size_is_caught(mn: tuple[int, int], data: st.DataObject) -> None:
    """Claiming another old size with the same roots and proof fails (including sizes above n)."""
    m, n = mn
    hashes = tree(n)
    proof = merkle.consistency_proof(hashes, m)
    root_m, root_n = merkle.root_from_leaf_hashes(hashes[:m]), merkle.root_from_leaf_hashes(hashes)
    other = data.draw(st.integers(0, n + 2).filter(lambda x: x != m), label="other m")
    with pytest.raises(ProofError):
        merkle.verify_consistency(other, n, root_m, root_n, proof)


@given(sizes, st.data())
def test_changed_new_size_is_caught(mn: tuple[int, int], data: st.DataObject) -> None:
    """Claiming another new size fails when the roots are the honest roots for the claimed
    sizes, and, with the original roots, whenever the claimed tree has a different depth.
    (With the original roots and the same depth it may pass: see
    test_new_size_is_not_bound_by_the_roots.)"""
    m, n = mn
    big = tree(80)
    hashes = big[:n]
    proof = merkle.consistency_proof(hashes, m)
    root_m, root_n = merkle.root_from_leaf_hashes(hashes[:m]), merkle.root_from_leaf_hashes(hashes)
    other = data.draw(st.integers(max(m - 2, 0), 80).filter(lambda x: x != n), label="other n")
    with pytest.raises(ProofError):
        merkle.verify_consistency(m, other, root_m, merkle.root_from_leaf_hashes(big[:other]), proof)
    if other < m or (other - 1).bit_length() != (n - 1).bit_length():
        with pytest.raises(ProofError):
            merkle.verify_consistency(m, other, root_m, root_n, proof)


@given(sizes)
def test_proof_for_other_leaves_is_caught(mn: tuple[int, int]) -> None:
    """A proof that the old tree is a prefix of a tree that differs in one later leaf."""
    m, n = mn
    hashes = tree(n)
    if m == n:
        return
    forged = [*hashes[:-1], merkle.leaf_hash(b"forged")]
    proof = merkle.consistency_proof(forged, m)
    with pytest.raises(ProofError, match="new root"):
        merkle.verify_consistency(
            m, n, merkle.root_from_leaf_hashes(hashes[:m]), merkle.root_from_leaf_hashes(hashes), proof
        )
