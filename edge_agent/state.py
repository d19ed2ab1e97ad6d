"""The agent's chain state: boot counter, next sequence number, chain head.

It is persisted by the spool (edge_agent/spool.py), in the same transaction as the block that
advanced it, so a restart never reuses a sequence number of a block that may have been sent.
"""

from __future__ import annotations

import msgspec

from schemas.crypto import ZERO_HASH


class ChainState(msgspec.Struct):
    device_id: str
    boot: int = 0
    next_seq: int = 0
    head: bytes = ZERO_HASH
