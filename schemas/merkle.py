"""RFC 6962 / RFC 9162 Merkle tree hashing over SHA-256. Pure functions on bytes.

leaf hash  = SHA-256(0x00 || leaf data)
node hash  = SHA-256(0x01 || left || right)
empty tree = SHA-256("")

The tree over n leaves splits at the largest power of two strictly below n
(RFC 6962 section 2.1). Building it bottom-up, pairing neighbours and carrying an
odd last node up unchanged, gives exactly that tree; ``root_from_leaf_hashes`` does
that without recursion.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    return _sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(NODE_PREFIX + left + right).digest()


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """Merkle tree hash given the leaf hashes (already 0x00-prefixed and hashed)."""
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    sha = _sha256
    while len(level) > 1:
        nxt = [sha(NODE_PREFIX + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def root(leaves: Sequence[bytes]) -> bytes:
    """Merkle tree hash of the raw leaf data."""
    return root_from_leaf_hashes([leaf_hash(d) for d in leaves])


class MerkleFrontier:
    """An RFC 6962 tree grown one leaf at a time: keeps only the roots of its perfect subtrees, left
    to right (largest first), so appending and taking the root cost O(log n)."""

    __slots__ = ("_nodes", "size")

    def __init__(self) -> None:
        self._nodes: list[tuple[int, bytes]] = []  # (subtree size, subtree root)
        self.size = 0

    def append(self, leaf: bytes) -> None:
        """Add a leaf hash (already 0x00-prefixed and hashed)."""
        nodes = self._nodes
        nodes.append((1, leaf))
        while len(nodes) >= 2 and nodes[-1][0] == nodes[-2][0]:
            (n, right), (_, left) = nodes.pop(), nodes.pop()
            nodes.append((2 * n, node_hash(left, right)))
        self.size += 1

    def root(self) -> bytes:
        if not self._nodes:
            return EMPTY_ROOT
        acc = self._nodes[-1][1]
        for _, h in reversed(self._nodes[:-1]):
            acc = node_hash(h, acc)
        return acc


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_path(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Audit path (RFC 6962 2.1.1) for leaf ``index`` given all leaf hashes, leaf-most first."""
    n = len(hashes)
    if not 0 <= index < n:
        raise IndexError(f"leaf index {index} outside tree of size {n}")
    path: list[bytes] = []
    lo, hi = 0, n
    # Walk down from the root, collecting siblings, then reverse (RFC order is bottom-up).
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(root_from_leaf_hashes(hashes[lo + k : hi]))
            hi = lo + k
        else:
            path.append(root_from_leaf_hashes(hashes[lo : lo + k]))
            lo = lo + k
    path.reverse()
    return path


def root_from_inclusion_path(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes:
    """Recompute the root from a leaf hash and its audit path (RFC 9162 2.1.3.2)."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} outside tree of size {size}")
    fn, sn = index, size - 1
    r = leaf
    for p in path:
        if sn == 0:
            raise ValueError("inclusion path is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("inclusion path is shorter than the tree is deep")
    return r


# -- Consistency proofs (RFC 9162 section 2.1.4) ------------------------------------------


class ProofError(ValueError):
    """A proof does not verify; the message says which check failed."""


HASH_SIZE = 32


def consistency_proof(hashes: Sequence[bytes], m: int) -> list[bytes]:
    """Proof (RFC 9162 2.1.4.1) that the tree of the first ``m`` leaf hashes is a prefix of
    the tree of all of them; ``0 < m <= len(hashes)``, and ``m == len(hashes)`` gives ``[]``.

    This is SUBPROOF(m, D[n], true) unrolled: walk down from the root, keeping the subtree
    [lo, hi) that still contains the old tree's right edge, and collect the sibling subtree
    hashes on the way. If the walk ever steps into a right subtree, the old tree is not a
    single complete subtree of the new one, so the subtree where the walk stops is not a known
    root and its hash goes into the proof too. The result lists the deepest node first.
    """
    n = len(hashes)
    if m == 0:
        raise ValueError("RFC 9162 defines no consistency proof from the empty tree (m == 0)")
    if not 0 < m <= n:
        raise ValueError(f"old tree size {m} outside 1..{n}")
    path: list[bytes] = []
    lo, hi = 0, n
    old_is_subtree = True  # SUBPROOF's b: is [lo, lo + m) still the whole old tree?
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            path.append(root_from_leaf_hashes(hashes[lo + k : hi]))
            hi = lo + k
        else:
            path.append(root_from_leaf_hashes(hashes[lo : lo + k]))
            lo += k
            m -= k
            old_is_subtree = False
    if not old_is_subtree:
        path.append(root_from_leaf_hashes(hashes[lo:hi]))
    path.reverse()
    return path


def consistency_proof_length(m: int, n: int) -> int:
    """Number of hashes in the consistency proof from size ``m`` to size ``n`` (0 < m <= n)."""
    if m == 0:
        raise ValueError("RFC 9162 defines no consistency proof from the empty tree (m == 0)")
    if not 0 < m <= n:
        raise ValueError(f"old tree size {m} outside 1..{n}")
    count = 0
    size = n
    old_is_subtree = True
    while m != size:
        k = _split(size)
        count += 1
        if m <= k:
            size = k
        else:
            size -= k
            m -= k
            old_is_subtree = False
    return count if old_is_subtree else count + 1


def verify_consistency(m: int, n: int, root_m: bytes, root_n: bytes, proof: Sequence[bytes]) -> None:
    """Check that the tree of size ``m`` with root ``root_m`` is a prefix of the tree of size
    ``n`` with root ``root_n`` (RFC 9162 2.1.4.2). Returns None or raises ``ProofError``.

    The roots do not commit to the tree sizes: the sizes must come from the same signed
    statements as the roots (a checkpoint), not from whoever supplies the proof.
    """
    if m < 1:
        raise ProofError(f"old tree size must be at least 1, got {m} (no consistency proof from empty tree)")
    if m > n:
        raise ProofError(f"m > n: old tree size {m} is larger than new tree size {n}")
    if len(root_m) != HASH_SIZE:
        raise ProofError(f"old root is {len(root_m)} bytes, not {HASH_SIZE}")
    if len(root_n) != HASH_SIZE:
        raise ProofError(f"new root is {len(root_n)} bytes, not {HASH_SIZE}")
    want = consistency_proof_length(m, n)
    if len(proof) != want:
        raise ProofError(f"proof has wrong length: {len(proof)} hashes, tree sizes {m} -> {n} need {want}")
    for i, node in enumerate(proof):
        if len(node) != HASH_SIZE:
            raise ProofError(f"proof node {i} is {len(node)} bytes, not {HASH_SIZE}")
    if m == n:
        if root_m != root_n:
            raise ProofError("trees of equal size have different roots")
        return

    path = list(proof)
    if m & (m - 1) == 0:
        # The old tree is a complete subtree of the new one: its root is the starting node.
        path.insert(0, root_m)
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("proof has wrong length: longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn & 1 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("proof has wrong length: shorter than the tree is deep")
    if fr != root_m:
        raise ProofError("consistency proof does not reproduce the old root")
    if sr != root_n:
        raise ProofError("consistency proof does not reproduce the new root")
