"""Group records into blocks, seal them (Merkle root, chain link) and sign them."""

from __future__ import annotations

import os
from collections.abc import Callable

from edge_agent.state import ChainState
from schemas.block import Block, build_block, encode_record
from schemas.crypto import SEED_SIZE, SigningKey
from schemas.records import Record


class BlockBuilder:
    """Collects records; a block closes at ``max_records`` or when it spans ``max_age_ns``.

    Sealing advances the chain state (and calls ``on_sealed`` with it, if given) before the
    block is returned; the agent then commits block and state to its spool together.
    """

    def __init__(
        self,
        key: SigningKey,
        state: ChainState,
        *,
        max_records: int,
        max_age_ns: int,
        on_sealed: Callable[[ChainState], None] | None = None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.key = key
        self.state = state
        self.max_records = max_records
        self.max_age_ns = max_age_ns
        self._on_sealed = on_sealed
        self._random = random
        self._records: list[bytes] = []
        self._t_first = 0
        self._t_last = 0

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: Record) -> Block | None:
        """Add one record; return the sealed block if this record closed one."""
        ts = record.ts_ns
        if self._records:
            self._t_first = min(self._t_first, ts)
            self._t_last = max(self._t_last, ts)
        else:
            self._t_first = self._t_last = ts
        self._records.append(encode_record(record))
        if len(self._records) >= self.max_records or self._t_last - self._t_first >= self.max_age_ns:
            return self.seal()
        return None

    def seal(self) -> Block | None:
        """Close the current block (if any records are pending)."""
        if not self._records:
            return None
        st = self.state
        block = build_block(
            self.key,
            device_id=st.device_id,
            boot=st.boot,
            seq=st.next_seq,
            prev=st.head,
            records=self._records,
            t_first=self._t_first,
            t_last=self._t_last,
            seed=self._random(SEED_SIZE),
        )
        self._records = []
        st.next_seq += 1
        st.head = block.hash
        if self._on_sealed is not None:
            self._on_sealed(st)
        return block
