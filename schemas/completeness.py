"""Completeness claims: a bundle holds EVERY block a vehicle sealed in a period (docs/PROOFS.md §14).

Pure, like ``schemas.proof``, which calls :func:`check_claim` on the blocks it verified. The
vehicle's hash chain does the work: block ``seq`` names the hash of block ``seq - 1`` (WIRE §11),
so an unbroken run of signed blocks from one before the period to one after it leaves no room
for a block the bundle left out. A run may pass a hole only where the vehicle itself declared
one, in a signed ``SpoolDrop`` record (WIRE §5.4); such a hole is reported, never hidden.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas.block import BlockHeader
from schemas.patterns import Hex, Hex32, HexId32
from schemas.records import SpoolDrop

Uint = Annotated[int, Meta(ge=0, le=2**63 - 1)]
ZERO32 = bytes(32)


class Completeness(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The claim: the bundle holds device ``device_id``'s blocks ``first_seq ..= last_seq``, each
    anchored, and every record of each of them whose time span meets ``[from_ns, to_ns]``.

    ``start``: ``"before"``, block ``first_seq`` ends before the period (``t_last < from_ns``);
    ``"genesis"``, it is the device's first block (``seq 0``, ``prev`` all zero).
    ``end``: ``"after"``, block ``last_seq`` starts after the period (``t_first > to_ns``);
    ``"head"``, it is the last block the operator held when it built the bundle: complete up to
    that block's ``t_last`` only."""

    device_id: HexId32
    from_ns: Uint
    to_ns: Uint
    first_seq: Uint
    last_seq: Uint
    start: Literal["before", "genesis"]
    end: Literal["after", "head"]


class BlockContents(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """All of a block's records, in order, and its salt seed (WIRE §6): the verifier rebuilds the
    records root from them, so none can be left out or changed."""

    seed: Hex32
    records: list[Hex]


@dataclass(frozen=True)
class DeclaredHole:
    """Blocks the vehicle declared dropped (its spool was full, or they were too old)."""

    first_seq: int
    last_seq: int
    records: int | None  # None: the drop also names blocks the bundle holds (they arrived anyway)
    reason: str
    after_ns: int | None  # t_last of the block before the hole
    before_ns: int | None  # t_first of the block after it


@dataclass
class ClaimResult:
    claim: Completeness
    blocks: int = 0
    records: int = 0
    holes: list[DeclaredHole] = field(default_factory=list)
    complete_until_ns: int | None = None  # end "head": the covered part ends here

    @property
    def covered_to_ns(self) -> int:
        return (
            self.claim.to_ns
            if self.complete_until_ns is None
            else min(self.claim.to_ns, self.complete_until_ns)
        )


class ClaimFailed(Exception):
    """The first place where the claim does not hold."""


def _meets(hdr: BlockHeader, c: Completeness) -> bool:
    return hdr.t_first <= c.to_ns and hdr.t_last >= c.from_ns


def check_claim(
    c: Completeness,
    headers: dict[str, BlockHeader],
    complete_blocks: dict[str, int],
    drops: list[SpoolDrop],
) -> ClaimResult:
    """Check ``c`` against the blocks a bundle proved.

    ``headers``: block hash (hex) -> header, every block whose signature, key and anchoring verified.
    ``complete_blocks``: block hash (hex) -> record count, the blocks whose every record the bundle
    carries (contents that rebuild the header's records root). ``drops``: the ``SpoolDrop``
    records of this device the bundle proved. Raises ``ClaimFailed`` naming the first hole."""
    if c.from_ns > c.to_ns:
        raise ClaimFailed(f"the period is inverted ({c.from_ns} > {c.to_ns})")
    if c.first_seq > c.last_seq:
        raise ClaimFailed(f"first_seq {c.first_seq} is after last_seq {c.last_seq}")
    by_seq: dict[int, tuple[str, BlockHeader]] = {}
    for bh, hdr in headers.items():
        if hdr.device_id != c.device_id or not c.first_seq <= hdr.seq <= c.last_seq:
            continue
        if hdr.seq in by_seq and by_seq[hdr.seq][0] != bh:
            raise ClaimFailed(f"two different blocks carry seq {hdr.seq}: the device signed both")
        by_seq[hdr.seq] = (bh, hdr)
    res = ClaimResult(c)
    for end, which in ((c.first_seq, "first"), (c.last_seq, "last")):
        if end not in by_seq:
            raise ClaimFailed(f"the {which} block (seq {end}) is not in the bundle")
    first = by_seq[c.first_seq][1]
    if c.start == "genesis" and (first.seq != 0 or first.prev != ZERO32):
        raise ClaimFailed(f"start 'genesis' but block seq {first.seq} is not the device's first block")
    if c.start == "before" and first.t_last >= c.from_ns:
        raise ClaimFailed(
            f"block seq {first.seq} (t_last {first.t_last}) does not end before from_ns {c.from_ns}"
        )
    last = by_seq[c.last_seq][1]
    if c.end == "after" and last.t_first <= c.to_ns:
        raise ClaimFailed(
            f"block seq {last.seq} (t_first {last.t_first}) does not start after to_ns {c.to_ns}"
        )
    if c.end == "head":
        res.complete_until_ns = last.t_last

    s = c.first_seq
    prev_hash: bytes | None = None  # the hash block s must name as its prev; None: not knowable
    prev_t: int | None = None
    while s <= c.last_seq:
        if s in by_seq:
            bh, hdr = by_seq[s]
            if s > c.first_seq and prev_hash is not None and hdr.prev != prev_hash:
                raise ClaimFailed(f"chain broken at seq {s}: its prev is not the hash of block {s - 1}")
            if _meets(hdr, c):
                if bh not in complete_blocks:
                    raise ClaimFailed(
                        f"block seq {s} (t {hdr.t_first}..{hdr.t_last}) meets the period but its records"
                        " are not all in the bundle"
                    )
                res.records += complete_blocks[bh]
            res.blocks += 1
            prev_hash, prev_t = bytes.fromhex(bh), hdr.t_last
            s += 1
            continue
        d = next((d for d in drops if d.first_seq <= s <= d.last_seq), None)
        if d is None:
            raise ClaimFailed(
                f"hole at seq {s}: block {s} is missing and the vehicle declared no drop of it (after t {prev_t})"
            )
        if s == d.first_seq and prev_hash is not None and d.prev != prev_hash:
            raise ClaimFailed(
                f"the drop of seq {d.first_seq}..{d.last_seq} does not start after block {s - 1}"
            )
        run_end = s
        while run_end + 1 <= d.last_seq and run_end + 1 not in by_seq:
            run_end += 1
        nxt = by_seq.get(run_end + 1)
        res.holes.append(
            DeclaredHole(
                s,
                run_end,
                d.records if (s, run_end) == (d.first_seq, d.last_seq) else None,
                d.reason,
                prev_t,
                nxt[1].t_first if nxt else None,
            )
        )
        prev_hash = d.last_hash if run_end == d.last_seq else None
        s = run_end + 1
    return res
