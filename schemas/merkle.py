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
