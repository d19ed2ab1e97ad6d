"""The commit sequence of one batch, owned by one object (``Checkpoint``), in the only order that
loses nothing and writes nothing twice (the consumer's ``flush`` says why each crash point is safe):

1. seal: the batch root over the block hashes, frozen rows, a batch number from the store
   (``Checkpoint.seal``);
2. rejected messages go to the dead-letter topic (at least once: before the positions that would
   skip them are stored);
3. ONE store transaction: records, blocks, the batch, gaps, rejections, duplicates, device heads,
   AND the next Kafka offset of every partition the batch consumed; in the lake it commits only
   while those partitions are still this consumer's (``StoreFenced`` otherwise);
4. the batch root is anchored to the ledger, 5. and the receipt recorded in the store;
6. Kafka offsets are committed (for lag monitoring and tools: a consumer resumes from the
   positions stored in step 3); the processor forgets the batch.

The consumer drives it with Kafka and retries around it; the offline ingest
(``simulators/offline.py``) with no transport at all. Both run these steps, in this order, here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from common.errors import Refused
from ingest.pipeline.processor import Pending, Processor, Rejection
from ingest.storage.store import BatchRows, Store, StoreContentError, StoreError, Unstorable

Offsets = dict[tuple[str, int], int]  # (topic, partition) -> the next offset to commit


@dataclass(frozen=True)
class SealedBatch:
    """A batch that no longer changes: its rows and what the processor accumulated for it."""

    rows: BatchRows
    pending: Pending

    @property
    def offsets(self) -> Offsets:
        return self.pending.offsets

    @property
    def rejections(self) -> list[Rejection]:
        return self.pending.rejections


class UnstorableMessages(Refused):
    """Messages of a sealed batch the store refuses on their own (``Store.find_unstorable``): the
    content is at fault, not the infrastructure. The caller dead-letters them when they come round."""

    def __init__(self, found: list[Unstorable]) -> None:
        super().__init__(f"{len(found)} message(s) the store refuses")
        self.found = found


async def _nothing(*_: object) -> None:
    return None


class Checkpoint:
    def __init__(
        self,
        proc: Processor,
        store: Store,
        *,
        anchor: Callable[[int, bytes, int], Awaitable[None]] | None,
        dead_letter: Callable[[list[Rejection]], Awaitable[None]] = _nothing,
        commit_offsets: Callable[[Offsets], Awaitable[None]] = _nothing,
    ) -> None:
        """``anchor(batch_no, root, blocks)``: steps 4-5 (with whatever retry policy the caller
        wants); None stores without anchoring (the benchmark's pass-through baseline only).
        ``dead_letter``: step 2. ``commit_offsets``: step 6."""
        self.proc = proc
        self.store = store
        self._anchor = anchor
        self._dead_letter = dead_letter
        self._commit_offsets = commit_offsets

    def seal(self, batch_no: int) -> SealedBatch:
        """Step 1: freeze the processor's pending batch as ``batch_no``; the processor starts the next."""
        sealed = SealedBatch(self.proc.build_rows(batch_no), self.proc.pending)
        self.proc.seal()
        return sealed

    async def commit(self, b: SealedBatch) -> int:
        """Steps 2-6; returns when the store transaction committed (ns). Raises on the first
        failure and leaves the rest undone, so nothing later in the order happens without it."""
        await self._dead_letter(b.rejections)
        try:
            await asyncio.to_thread(self.store.write_batch, b.rows)
        except StoreContentError as exc:
            found = await asyncio.to_thread(self.store.find_unstorable, b.rows)
            if not found:
                raise StoreError(f"{exc} (no single block or session message is refused on its own)") from exc
            raise UnstorableMessages(found) from exc
        stored_ns = time.time_ns()
        if b.rows.blocks and self._anchor is not None:
            await self._anchor(b.rows.batch_no, b.rows.root, len(b.rows.blocks))
        await self._commit_offsets(b.offsets)
        self.proc.settled()
        self.proc.quarantine_prune(b.offsets)
        return stored_ns

    def commit_sync(self, b: SealedBatch) -> int:
        """``commit`` for callers without an event loop (the offline ingest)."""
        return asyncio.run(self.commit(b))
