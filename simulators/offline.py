"""Offline ingest: signed blocks from simulated vehicles fed straight into the real Processor,
Store and ledger, without brokers. Builds realistic databases quickly for the audit benchmark
and for the proof, audit and erasure tests. The transports are covered by the integration tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from edge_agent.sources.vehicle import VehicleModel
from ingest.ledger.base import Ledger
from ingest.pipeline.batch import Checkpoint
from ingest.pipeline.processor import Processor, RawMessage
from ingest.storage.registry import Registry
from ingest.storage.store import Store
from schemas.block import build_block, decode_record, encode_record
from schemas.crypto import ZERO_HASH, SigningKey, device_id_for

START_NS = 1_700_000_000_000_000_000


@dataclass
class OfflineVehicle:
    key: SigningKey
    model: VehicleModel
    device_id: str = ""
    seq: int = 0
    head: bytes = ZERO_HASH
    pending: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.device_id = self.device_id or device_id_for(self.key.public_key)

    def next_block(self, n: int) -> bytes:
        while len(self.pending) < n:
            self.pending += [encode_record(r) for r in self.model.step()]
        recs, self.pending = self.pending[:n], self.pending[n:]
        return self.seal(recs)

    def seal(self, recs: list[bytes]) -> bytes:
        """The next block of the chain, holding ``recs``: signed, as an envelope."""
        ts = [decode_record(r).ts_ns for r in recs]
        b = build_block(
            self.key,
            device_id=self.device_id,
            boot=1,
            seq=self.seq,
            prev=self.head,
            records=recs,
            t_first=min(ts),
            t_last=max(ts),
            seed=os.urandom(32),
        )
        self.seq += 1
        self.head = b.hash
        return b.to_wire()


def make_fleet(
    vehicles: int, *, seed: int = 1, rate_hz: float = 10.0, profiles: Sequence[str] = ("normal",)
) -> list[OfflineVehicle]:
    """``vehicles`` vehicles, their driver profiles taken from ``profiles`` in turn."""
    return [
        OfflineVehicle(
            SigningKey.generate(),
            VehicleModel(
                seed * 100_003 + i, start_ns=START_NS, rate_hz=rate_hz, profile=profiles[i % len(profiles)]
            ),
        )
        for i in range(vehicles)
    ]


def ingest_offline(
    store: Store,
    registry: Registry,
    ledger: Ledger,
    fleet: list[OfflineVehicle],
    *,
    blocks_per_vehicle: int,
    block_records: int = 100,
    batch_records: int = 20_000,
    register: bool = True,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Drive every vehicle for ``blocks_per_vehicle`` blocks, round robin; return records stored."""
    if register:
        for v in fleet:
            if registry.get(v.key.key_id) is None:
                registry.add(v.key.public_key, device_id=v.device_id)

    def blocks() -> Iterator[tuple[str, bytes]]:
        for _ in range(blocks_per_vehicle):
            for v in fleet:
                yield v.device_id, v.next_block(block_records)

    return ingest_blocks(
        store,
        registry,
        ledger,
        blocks(),
        batch_blocks=max(1, batch_records // block_records),
        progress=progress,
    )


def ingest_blocks(
    store: Store,
    registry: Registry,
    ledger: Ledger,
    blocks: Iterable[tuple[str, bytes]],
    *,
    batch_blocks: int = 200,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Feed ``(device_id, envelope)`` pairs through the consumer's commit sequence, ``batch_blocks``
    envelopes per batch; return records stored. The devices' keys must be registered."""
    store.claim("offline", [0], "offline ingest")  # its one "partition": a writer of its own
    proc = Processor(store, registry, max_block_bytes=4 * 1024 * 1024)

    async def anchor(batch_no: int, root: bytes, blocks: int) -> None:
        store.record_anchor(ledger.anchor(batch_no, root, blocks))

    # The consumer's commit sequence, without a transport: no dead-letter topic; the positions of the
    # one "partition" are stored with each batch, as the consumer's are.
    checkpoint = Checkpoint(proc, store, anchor=anchor)
    offset = store.positions("offline").get(("offline", 0), 0)
    stored = 0
    msgs: list[RawMessage] = []

    def flush() -> None:
        nonlocal stored, msgs
        if msgs:
            proc.process_all(msgs)
            msgs = []
        if proc.pending.empty:
            return
        sealed = checkpoint.seal(store.next_batch_no())
        checkpoint.commit_sync(sealed)
        stored += sealed.rows.record_count
        if progress:
            progress(sealed.rows.record_count)

    for device_id, wire in blocks:
        msgs.append(RawMessage("offline", 0, offset, device_id.encode(), wire))
        offset += 1
        if len(msgs) >= batch_blocks:
            flush()
    flush()
    return stored
