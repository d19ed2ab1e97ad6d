"""The agent loop: records -> block builder -> signed block -> spool -> publisher.

Durability order on the vehicle, written once here:

1. a block is sealed (Merkle root, chain link, signature) in memory;
2. the block **and** the chain state after it (next sequence number, head hash) are committed
   to the spool in one SQLite transaction (``Spool.put``; fsync'ed with ``edge.fsync``),
   together with the bounds check that may drop the oldest spooled blocks;
3. only then is it published (QoS 1), live if connected, else later from the spool;
4. it leaves the spool when the broker acknowledges it (PUBACK).

A crash before 2 loses only records that never left the process (at most one block's worth)
and the sequence number is reused for other content that nobody has seen; a crash after 2
loses nothing: the next start replays the spool. A drop made in 2 is carried as a signed
``SpoolDrop`` record in a later block (see spool.py).

Live blocks go first; the backlog (blocks spooled while offline, or left from before a
restart) is replayed oldest first, at most ``replay_burst`` per call and within the in-flight
window, and published with the ``vt-historical`` property, so live data is never starved.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from common.config import EdgeConfig
from edge_agent.builder import BlockBuilder
from edge_agent.publisher import Publisher, SessionMessages
from edge_agent.spool import PendingDrop, Spool
from edge_agent.state import ChainState
from schemas.block import Block
from schemas.crypto import SigningKey, device_id_for
from schemas.records import SCHEMA_VERSION, Record
from schemas.session import ConfigValue, SessionEvent, sign_session
from schemas.transport import blocks_topic

AGENT_VERSION = "0.1.0"


@dataclass
class AgentStats:
    records: int = 0  # records sealed into blocks (samples and the agent's own records)
    blocks: int = 0  # blocks sealed
    payload_bytes: int = 0
    last_seq: int = -1
    live: int = 0  # blocks published right after sealing
    replayed: int = 0  # blocks published from the spool (historical)
    acked: int = 0
    dropped_blocks: int = 0  # blocks the spool dropped (full / expired)
    block_hashes: list[bytes] = field(default_factory=list)


class Agent:
    """One vehicle: signs blocks with its key and publishes them on ``vehicles/<device_id>/blocks``."""

    def __init__(
        self,
        key: SigningKey,
        cfg: EdgeConfig,
        publisher: Publisher,
        spool: Spool,
        *,
        device_id: str | None = None,
        keep_hashes: bool = False,
        max_inflight: int = 1000,
        sampling: dict[str, ConfigValue] | None = None,
    ) -> None:
        self.key = key
        self.cfg = cfg
        self.device_id = device_id or device_id_for(key.public_key)
        self.publisher = publisher
        self.spool = spool
        self.state: ChainState = spool.begin_boot(self.device_id)
        self.topic = blocks_topic(self.device_id)
        self.stats = AgentStats()
        self.max_inflight = max_inflight
        self.sampling: dict[str, ConfigValue] = {
            "block_max_records": cfg.block_max_records,
            "block_max_age_ms": cfg.block_max_age_ms,
            **(sampling or {}),
        }
        self._keep_hashes = keep_hashes
        self.builder = BlockBuilder(
            key,
            self.state,
            max_records=cfg.block_max_records,
            max_age_ns=cfg.block_max_age_ms * 1_000_000,
        )
        self._inflight: set[int] = set()
        self._replay_from = 0  # next spooled seq to consider for replay on this connection
        self._replay_tokens = float(cfg.replay_burst)  # replay pacing (replay_max_per_s)
        self._replay_at = time.monotonic()
        self._backlog = spool.count > 0
        self._was_connected = False
        self._last_ts = 0
        self._drop_ids: list[int] = []  # drops carried by the records pending in the builder
        self._acks: list[int] = []
        self._acks_at = time.monotonic()
        self._hold_until = 0.0
        for d in spool.undeclared():
            self._declare(d)

    # -- session messages (called on the publisher's thread) -------------------------------------
    def session_messages(self) -> SessionMessages:
        def make(event: str) -> Callable[[int], bytes]:
            def build(session: int) -> bytes:
                st = self.state
                ev = SessionEvent(
                    event=event,
                    device_id=self.device_id,
                    key_id=self.key.key_id,
                    boot=st.boot,
                    session=session,
                    ts_ns=time.time_ns(),
                    next_seq=st.next_seq,
                    agent_version=AGENT_VERSION,
                    schema_version=SCHEMA_VERSION,
                    config=self.sampling,
                )
                return sign_session(self.key, ev)

            return build

        return SessionMessages(make("birth"), make("death"), make("shutdown"))

    # -- records in -------------------------------------------------------------------------------
    def offer(self, record: Record) -> None:
        if record.ts_ns > self._last_ts:
            self._last_ts = record.ts_ns
        block = self.builder.add(record)
        self._after(block)

    def flush(self) -> None:
        """Seal what is pending (on shutdown, at the end of a source, before a key rotation)."""
        self._after(self.builder.seal())

    def rotate_key(self, new_key: SigningKey) -> None:
        """Switch to a new signing key: the pending records are sealed and sent under the old key,
        every later block is signed with the new one. The device id and the chain continue. The
        ingest must know the new key first (`telematics devices rotate`)."""
        self.flush()
        self.key = new_key
        self.builder.key = new_key

    def _declare(self, d: PendingDrop) -> None:
        self._drop_ids.append(d.id)
        block = self.builder.add(d.record)
        if block is not None:  # a full builder: the drop is in this block
            self._after(block)

    # -- blocks out -------------------------------------------------------------------------------
    def _after(self, block: Block | None) -> None:
        payload = self._store(block) if block is not None else None
        self.pump(fresh=block, payload=payload)

    def _store(self, block: Block) -> bytes:
        payload = block.to_wire()
        declared, self._drop_ids = self._drop_ids, []
        drops = self.spool.put(
            self.state, block, payload, now_ns=self._last_ts or time.time_ns(), declared=declared
        )
        st = self.stats
        st.blocks += 1
        st.records += block.header.count
        st.payload_bytes += len(payload)
        st.last_seq = block.header.seq
        if self._keep_hashes:
            st.block_hashes.append(block.hash)
        for d in drops:
            st.dropped_blocks += d.record.last_seq - d.record.first_seq + 1
            self._inflight.difference_update(range(d.record.first_seq, d.record.last_seq + 1))
        for d in drops:
            self._declare(d)
        return payload

    def pump(self, fresh: Block | None = None, payload: bytes | None = None) -> None:
        """Settle acknowledgements, publish ``fresh`` live, and replay some of the backlog."""
        acked, lost = self.publisher.take_acks()
        if acked:
            self._inflight.difference_update(acked)
            self._acks.extend(acked)
            self.stats.acked += len(acked)
        now = time.monotonic()
        if lost:
            self._inflight.difference_update(lost)
            self._replay_from = min(self._replay_from, *lost)
            self._backlog = True
            # Not delivered (no subscriber, refused, connection gone): retry later, not in a tight loop.
            self._hold_until = now + self.cfg.retry_s
        # Acks are applied in groups: a lost delete only means one duplicate send, which ingest drops.
        if self._acks and (len(self._acks) >= 64 or now - self._acks_at >= 0.5 or fresh is None):
            self.spool.ack(self._acks)
            self._acks = []
            self._acks_at = now
        connected = self.publisher.connected
        if connected and not self._was_connected:
            self._replay_from = 0
            self._backlog = self._backlog or self.spool.count > len(self._inflight)
        self._was_connected = connected
        if not connected:
            if fresh is not None:
                self._backlog = True
            return
        if fresh is not None and payload is not None:
            if len(self._inflight) < self.max_inflight:
                seq = fresh.header.seq
                self.publisher.publish(self.topic, payload, tag=seq)
                self._inflight.add(seq)
                self.stats.live += 1
            else:
                self._backlog = True
        if self._backlog and now >= self._hold_until:
            self._replay()

    def _replay(self) -> None:
        # Paced at replay_max_per_s (a token bucket holding up to replay_burst): below the ingest's
        # per-device quota, which would refuse the excess after the broker acknowledged it.
        now = time.monotonic()
        rate = self.cfg.replay_max_per_s
        self._replay_tokens = min(
            float(self.cfg.replay_burst), self._replay_tokens + (now - self._replay_at) * rate
        )
        self._replay_at = now
        budget = min(self.cfg.replay_burst, self.max_inflight - len(self._inflight), int(self._replay_tokens))
        if budget <= 0:
            return
        rows = self.spool.pending(self._replay_from, budget + len(self._inflight))
        sent = 0
        for seq, payload in rows:
            self._replay_from = seq + 1
            if seq in self._inflight:
                continue
            self.publisher.publish(self.topic, payload, tag=seq, historical=True)
            self._inflight.add(seq)
            self.stats.replayed += 1
            self._replay_tokens -= 1
            sent += 1
            if sent >= budget:
                return
        if len(rows) < budget + len(self._inflight):
            self._backlog = False

    def drain(self, timeout: float) -> bool:
        """Seal, then publish until the spool is empty or ``timeout`` passes; True if empty."""
        self.flush()
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            if self.spool.count == len(self._acks) and not self._inflight and not self._backlog:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if self._acks:
            self.spool.ack(self._acks)
            self._acks = []
        return self.spool.count == 0
