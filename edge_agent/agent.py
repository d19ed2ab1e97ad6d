"""The agent loop: samples -> block builder -> signed block -> publisher.

Durability order on the vehicle: a block is sealed, the chain state (next sequence
number, head hash) is persisted, then the block is handed to the publisher. A restart
never reuses a sequence number. Until the on-disk spool lands (the publisher's next
seam), blocks that the broker has not acknowledged yet live only in memory: a crash or
power loss loses them (up to ``mqtt.max_inflight`` blocks), and the ingest records the
hole as a sequence gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_agent.builder import BlockBuilder
from edge_agent.config import EdgeConfig
from edge_agent.publisher import Publisher, blocks_topic
from edge_agent.source import SampleSource
from edge_agent.state import ChainState, StateStore
from schemas.block import Block
from schemas.crypto import SigningKey, device_id_for
from schemas.records import Record


@dataclass
class AgentStats:
    records: int = 0
    blocks: int = 0
    payload_bytes: int = 0
    last_seq: int = -1
    block_hashes: list[bytes] = field(default_factory=list)


class Agent:
    """One vehicle: signs blocks with its key and publishes them on ``vehicles/<device_id>/blocks``."""

    def __init__(
        self,
        key: SigningKey,
        cfg: EdgeConfig,
        publisher: Publisher,
        state_store: StateStore,
        *,
        device_id: str | None = None,
        keep_hashes: bool = False,
    ) -> None:
        self.key = key
        self.device_id = device_id or device_id_for(key.public_key)
        self.publisher = publisher
        self.state_store = state_store
        self.state: ChainState = state_store.begin_boot(self.device_id)
        self.topic = blocks_topic(self.device_id)
        self.stats = AgentStats()
        self._keep_hashes = keep_hashes
        self.builder = BlockBuilder(
            key,
            self.state,
            max_records=cfg.block_max_records,
            max_age_ns=cfg.block_max_age_ms * 1_000_000,
            on_sealed=state_store.save,
        )

    def _send(self, block: Block) -> None:
        payload = block.to_wire()
        self.publisher.publish(self.topic, payload)
        st = self.stats
        st.blocks += 1
        st.records += block.header.count
        st.payload_bytes += len(payload)
        st.last_seq = block.header.seq
        if self._keep_hashes:
            st.block_hashes.append(block.hash)

    def offer(self, record: Record) -> None:
        block = self.builder.add(record)
        if block is not None:
            self._send(block)

    def flush(self) -> None:
        """Seal and send what is pending (on shutdown or at the end of a source)."""
        block = self.builder.seal()
        if block is not None:
            self._send(block)

    def rotate_key(self, new_key: SigningKey) -> None:
        """Switch to a new signing key: the pending records are sealed and sent under the old key,
        every later block is signed with the new one. The device id and the chain continue. The
        ingest must know the new key first (`telematics devices rotate`)."""
        self.flush()
        self.key = new_key
        self.builder.key = new_key

    def run(self, source: SampleSource) -> AgentStats:
        for record in source.samples():
            self.offer(record)
        self.flush()
        return self.stats
