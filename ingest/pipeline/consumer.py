"""The verifying batch consumer: Kafka -> Processor -> DuckDB -> ledger -> offsets."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from common.errors import Fatal
from common.retry import aretrying, worth_logging
from ingest.config import Config
from ingest.ledger.base import Ledger, LedgerDamaged, LedgerError
from ingest.pipeline.batch import Checkpoint, Offsets, SealedBatch, UnstorableMessages
from ingest.pipeline.metrics import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    Metrics,
    MetricsServer,
    counter,
    gauge,
)
from ingest.pipeline.processor import Processor, RejectionKey, in_chunks
from ingest.storage.registry import Registry, RegistryError
from ingest.storage.store import Store, StoreError
from schemas.transport import (
    DETAIL_HEADER,
    INDEX_HEADER,
    REASON_HEADER,
    SHA256_HEADER,
    SIZE_HEADER,
    SOURCE_HEADER,
)

log = logging.getLogger(__name__)

POLL_CHUNK = 64  # messages processed between checks of the batch limits (whole bundles: WIRE.md 12.5)
GC_THRESHOLD = 50_000  # allocations between young-generation collections (Python's default: 700)


class BatchConsumer:
    def __init__(
        self,
        cfg: Config,
        *,
        store: Store,
        ledger: Ledger,
        registry: Registry,
        status_path: Path,
        batch_log: Path | None = None,
        passthrough: bool = False,
        instance: int = 0,
    ) -> None:
        """``instance``: this consumer's number among several (its metrics port).
        ``status_path``: the status file this consumer keeps current. ``batch_log``: append one JSON line per flushed batch (its size and when it was built,
        committed to DuckDB and anchored; the load benchmark reads it). ``passthrough``: the
        benchmark's baseline only: blocks are stored without verification, Merkle work or anchors."""
        self.cfg = cfg
        self.store = store
        self.ledger = ledger
        self.passthrough = passthrough
        self.proc = Processor(
            store,
            registry,
            max_block_bytes=cfg.ingest.max_block_bytes,
            verify=not passthrough,
            verify_threads=cfg.ingest.verify_threads,
        )
        # Steps 1-6 of every batch, in order (ingest/pipeline/batch.py).
        self.checkpoint = Checkpoint(
            self.proc,
            store,
            anchor=None if passthrough else self._anchor,
            dead_letter=self._dead_letter,
            commit_offsets=self._commit_offsets,
        )
        self._batch_log = batch_log.open("a", buffering=1) if batch_log is not None else None
        self.status_path = status_path
        self.counts = store.counts()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self._stop = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._inflight: asyncio.Task[None] | None = None  # the batch being stored (steps 2-6)
        self._last_batch_no = 0  # shown by a batch of rejections only (it has no number of its own)
        self.owner = f"{socket.gethostname()}/{os.getpid()}"  # named in partition claims and fences
        # Raised by every assignment: messages fetched under an older one are dropped, not processed.
        self.generation = 0
        # Messages per Kafka record, averaged over the polls (bundles, WIRE.md 12.5): a poll asks for
        # poll_max_records messages, not records, or one poll of bundles would hold a minute of load.
        self.per_record = 1.0
        # Kafka positions dead-lettered whose batch is not stored yet (pruned as batches commit).
        # Keyed as the rejections table (Rejection.at).
        self._dead_lettered: set[RejectionKey] = set()
        # Set after a failed flush: a batch may be stored but not yet anchored.
        self._recover_pending = False
        # Set when given partitions: their previous owner may have died between a commit and its anchor.
        self._orphans_pending = False
        # Why the pipeline holds (an infrastructure failure: store or Kafka), shown in the status file
        # until a batch commits again: {"since_ns", "retries", "error"}.
        self.stalled: dict[str, Any] | None = None
        self.started_ns = time.time_ns()
        self.partitions: list[int] = []  # assigned to this consumer now
        # The next offset each assigned partition must deliver: a smaller one, or a high-water mark
        # below it, means the broker's log went backwards (acknowledged messages may be lost).
        self._expect: dict[TopicPartition, int] = {}
        self.alarms: list[dict[str, Any]] = []  # the latest broker resets, for the status file
        # Operators' view (ingest/pipeline/metrics.py): read at scrape time, updated per batch or poll.
        self.rejected: Counter[str] = Counter(store.rejection_reasons())
        self.stored_pos: dict[int, int] = {}  # partition -> next offset after the last stored batch
        self.lag: dict[int, int] = {}  # partition -> messages the broker holds beyond it
        self.metrics = Metrics(self._collect)
        buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        self._commit_s = self.metrics.histogram(
            "telematics_batch_commit_seconds", "batch built -> store transaction committed", buckets
        )
        self._anchor_s = self.metrics.histogram(
            "telematics_batch_anchor_seconds",
            "store transaction committed -> ledger receipt recorded",
            buckets,
        )
        m = cfg.metrics
        port = m.consumer_port + instance if m.consumer_port else 0
        self.metrics_server = MetricsServer(self.metrics, m.host, port, self._not_ready)

    # -- the durability order ---------------------------------------------------------------------
    async def flush(self) -> None:
        """Seal the pending batch and start writing it. The durability order, and why each crash
        point is safe:

        1. batch root = RFC 6962 root over the batch's block hashes (in arrival order); a batch
           number from the store (the lake: a PostgreSQL sequence every consumer shares);
        2. rejected messages are produced to the dead-letter topic and acknowledged;
        3. ONE store transaction: records, blocks, the batch, gaps, rejections, duplicates, device
           chain heads, and the next Kafka offset of each partition in the batch (all or nothing);
           the lake commits it only while this consumer's claim on those partitions is the latest;
        4. the batch root is anchored to the ledger (idempotent per batch number);
        5. the ledger receipt is recorded in the store (anchors);
        6. Kafka offsets are committed.

        ``Checkpoint`` (ingest/pipeline/batch.py) runs steps 1-6 in this order; this consumer
        supplies the Kafka parts (dead letters, offsets) and the anchor's retry policy.
        Steps 2-6 run in the background (``_store``) while the next batch is verified and built:
        at most one batch is in flight, and a batch is sealed only after the previous one has
        finished step 6, so batches are written, anchored and committed strictly in order.
        (They start when the event loop next runs. Under a backlog ``getmany`` returns buffered
        records without suspending, so that is the next flush's wait, and building and storing
        alternate; letting the loop run sooner overlaps them but costs more CPU, the write then
        waiting for the GIL: docs/PERFORMANCE.md, "A batch's cycle in the consumer".)

        A crash before 3 leaves nothing stored: the messages are read again from the stored
        positions (a rejection may then reach the dead-letter topic twice: its ``vt-source``
        header, with ``vt-index`` in a bundle, names the position). A crash after 3 reads nothing
        of this batch again: its positions are stored with it. On start and after a rewind
        (``recover``), and after being given partitions (``anchor_unanchored``), the consumer
        anchors every stored batch that has no receipt yet (after 3, before 5), another's included.
        A consumer that lost its partitions (a rebalance while it was paused) fails step 3
        (``StoreFenced``) and writes nothing; the new owner's claim waited for any step 3 in flight.
        Store failure at 3: roll back, forget this batch and the one being built, seek back to
        the stored positions. Ledger failure at 4: the batch stays stored and unanchored; retry
        with backoff and do not commit offsets until it is anchored.
        """
        await self._settle()
        if self._recover_pending or self._orphans_pending:
            await (self.recover() if self._recover_pending else self.anchor_unanchored())
            self._recover_pending = self._orphans_pending = False
        p = self.proc.pending
        if p.empty:
            return
        # A number no other batch (of any consumer of this store) has: only batches with blocks take one.
        batch_no = await asyncio.to_thread(self.store.next_batch_no) if p.blocks else self._last_batch_no
        self._last_batch_no = batch_no
        sealed = self.checkpoint.seal(batch_no)
        self._inflight = asyncio.create_task(self._store(sealed))

    async def _settle(self) -> None:
        """Wait for the batch in flight (if any) to be stored, anchored and committed; re-raise
        its failure."""
        task, self._inflight = self._inflight, None
        if task is not None:
            await task

    async def _store(self, sealed: SealedBatch) -> None:
        """Steps 2-6 of ``flush`` for one sealed batch (``Checkpoint.commit``), then the counts."""
        committed_ns = await self.checkpoint.commit(sealed)
        rows, p = sealed.rows, sealed.pending
        anchor = bool(rows.blocks) and not self.passthrough
        self.stalled = None
        c = self.counts
        c["records"] += rows.record_count
        c["blocks"] += len(rows.blocks)
        c["batches"] += 1 if rows.blocks else 0
        c["anchored"] += 1 if anchor else 0
        c["rejections"] += len(rows.rejections)
        c["duplicates"] += len(rows.duplicates)
        c["gaps"] += len(rows.gaps)
        if rows.rejections:  # one line per batch, not per message: junk must not flood the log
            by = Counter(r.reason for r in rows.rejections)
            self.rejected.update(by)
            log.warning(
                "dead-lettered %d message(s) of batch %d: %s (`telematics status`, topic %s)",
                len(rows.rejections),
                rows.batch_no,
                ", ".join(f"{n} {reason}" for reason, n in by.most_common()),
                self.cfg.kafka.deadletter_topic,
            )
        if rows.gaps:
            log.warning(
                "sequence gaps detected for %d device(s), e.g. %s blocks %d..%d missing so far (`telematics gaps`)",
                len({g.device_id for g in rows.gaps}),
                rows.gaps[0].device_id,
                rows.gaps[0].from_seq,
                rows.gaps[0].to_seq,
            )
        for (_t, part), o in sealed.offsets.items():
            self.stored_pos[part] = o
        self._commit_s.observe(max(0, committed_ns - rows.created_at) / 1e9)
        if anchor:
            self._anchor_s.observe(max(0, time.time_ns() - committed_ns) / 1e9)
        self.write_status()
        if self._batch_log is not None:
            self._batch_log.write(
                json.dumps(
                    {
                        "batch": rows.batch_no,
                        "records": rows.record_count,
                        "blocks": len(rows.blocks),
                        "messages": p.messages,
                        "built_ns": rows.created_at,
                        "committed_ns": committed_ns,
                        "anchored_ns": time.time_ns(),
                    }
                )
                + "\n"
            )

    async def _anchor(self, batch_no: int, root: bytes, blocks: int) -> None:
        try:
            async for attempt in aretrying(
                self.cfg.retry, LedgerError, what=f"ledger unavailable for batch {batch_no}", log=log
            ):
                with attempt:
                    await asyncio.to_thread(self._anchor_and_record, batch_no, root, blocks)
        except Fatal as exc:  # a conflicting or damaged ledger: never retried
            self._fatal(exc)
            raise

    def _fatal(self, exc: Exception) -> None:
        """Record in the status file why the consumer stops without committing."""
        log.critical("STOPPING: %s", exc)
        self.stalled = {"since_ns": time.time_ns(), "retries": 0, "error": str(exc)[:500], "fatal": True}
        self.write_status()

    def check_ledger(self) -> None:
        """Every anchor the store recorded must be in the ledger, naming the same entry: a ledger that
        vanished, shrank or was replaced stops the consumer before it anchors anything."""
        anchors = self.store.anchor_entries()
        wrong = [(n, i) for n, i, h in anchors if (r := self.ledger.receipt(n)) is None or r.entry_hash != h]
        if wrong:
            n, i = wrong[0]
            exc = LedgerDamaged(
                f"the store records {len(anchors)} ledger anchors but {len(wrong)} of them are not in the ledger"
                f" {self.ledger.location} as recorded (first: batch {n}, entry {i}): restore the"
                " ledger from a backup; the consumer will not start a new one"
            )
            self._fatal(exc)
            raise exc

    def _anchor_and_record(self, batch_no: int, root: bytes, blocks: int) -> None:
        self.store.record_anchor(self.ledger.anchor(batch_no, root, blocks))

    async def recover(self) -> None:
        """Anchor batches stored by an earlier run that crashed before their receipt was recorded,
        and take the store's totals as this process's counts again."""
        await self.anchor_unanchored()
        self.counts = self.store.counts()

    async def anchor_unanchored(self) -> None:
        """Anchor every stored batch without a receipt: its consumer died between the commit and the
        receipt (or is between the two right now: the ledger anchors a batch once)."""
        for batch_no, root, blocks in self.store.unanchored():
            log.info("anchoring batch %d, stored without its anchor", batch_no)
            await self._anchor(batch_no, root, blocks)

    async def _commit_offsets(self, offsets: Offsets) -> None:
        assert self.consumer is not None
        await self.consumer.commit(
            {TopicPartition(t, part): OffsetAndMetadata(o, "") for (t, part), o in offsets.items()}
        )
        # Stored now: those positions are never read again.
        self._dead_lettered = {
            pos for pos in self._dead_lettered if pos[2] >= offsets.get((pos[0], pos[1]), 0)
        }

    async def _dead_letter(self, rejections: list[Any]) -> None:
        """Step 2. A message dead-lettered by an attempt that did not store its batch (a rewind)
        is not produced again when it comes round (a crash may still repeat it: at least once)."""
        rejections = [r for r in rejections if r.at not in self._dead_lettered]
        if not rejections:
            return
        assert self.producer is not None
        futs = []
        for r in rejections:
            headers = [
                (REASON_HEADER, str(r.reason).encode()),
                (DETAIL_HEADER, r.detail.encode()[:1000]),
                (SOURCE_HEADER, f"{r.topic}/{r.partition}/{r.offset}".encode()),
                (SIZE_HEADER, str(r.payload_size).encode()),
                (SHA256_HEADER, r.payload_sha256.hex().encode()),
            ]
            if r.index is not None:
                headers.append((INDEX_HEADER, str(r.index).encode()))
            futs.append(
                await self.producer.send(
                    self.cfg.kafka.deadletter_topic, r.payload, key=r.key, headers=headers
                )
            )
        await asyncio.gather(*futs)
        self._dead_lettered.update(r.at for r in rejections)

    def _collect(self) -> Iterator[Metric]:
        c = self.counts
        yield counter(
            "telematics_records_stored",
            "records stored (the store's total at start, then this process)",
            c["records"],
        )
        yield counter("telematics_blocks_stored", "blocks stored", c["blocks"])
        yield counter("telematics_batches_stored", "batches stored", c["batches"])
        yield counter("telematics_batches_anchored", "batches anchored in the ledger", c["anchored"])
        yield counter(
            "telematics_duplicates", "redelivered blocks recognised and not stored again", c["duplicates"]
        )
        yield counter(
            "telematics_gap_detections", "sequence gaps detected (late blocks may fill them)", c["gaps"]
        )
        yield counter(
            "telematics_broker_resets", "partitions whose log went backwards", c.get("broker_resets", 0)
        )
        rej = CounterMetricFamily(
            "telematics_rejections", "messages dead-lettered, by reason", labels=["reason"]
        )
        for reason, n in sorted(self.rejected.items()):
            rej.add_metric([reason], n)
        yield rej
        wit = CounterMetricFamily(
            "telematics_witness_checkpoints",
            "checkpoints offered to each witness, by outcome (cosigned, refused, unreachable)",
            labels=["witness", "outcome"],
        )
        for name, counts in sorted(self.ledger.witness_counts().items()):
            for outcome, n in sorted(counts.items()):
                wit.add_metric([name, outcome], n)
        yield wit
        lag = GaugeMetricFamily(
            "telematics_consumer_lag",
            "Kafka records (a bundle counts once) the broker holds beyond the last stored batch",
            labels=["partition"],
        )
        for part, n in sorted(self.lag.items()):
            if part in self.partitions:
                lag.add_metric([str(part)], n)
        yield lag
        yield gauge(
            "telematics_consumer_partitions", "partitions assigned to this consumer", len(self.partitions)
        )
        yield gauge(
            "telematics_consumer_stalled",
            "1 while an infrastructure failure holds the pipeline",
            1 if self.stalled else 0,
        )
        yield gauge(
            "telematics_consumer_pending_records",
            "records in the batch being built",
            self.proc.pending.records,
        )

    def _not_ready(self) -> str | None:
        if self.stalled:
            return f"held: {self.stalled.get('error', '')}"
        if not self.partitions:
            return "no partition assigned (yet)"
        return None

    def write_status(self) -> None:
        status: dict[str, Any] = dict(
            self.counts,
            pid=os.getpid(),
            updated_ns=time.time_ns(),
            started_ns=self.started_ns,
            partitions=self.partitions,
            stalled=self.stalled,
            alarms=self.alarms,
        )
        # Gap rows count detections, including gaps late blocks filled since: named for what they
        # are, so that nobody reads them as losses (`telematics gaps` lists what is missing).
        status["gap_detections"] = status.pop("gaps", 0)
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        os.replace(tmp, self.status_path)

    # -- the loop ---------------------------------------------------------------------------------
    async def _start_kafka(self) -> bool:
        """Connect the consumer and the dead-letter producer, retrying while the broker is
        unreachable (it may start after the ingest), as the bridge does; False if stopped first."""
        try:
            async for attempt in aretrying(
                self.cfg.retry,
                KafkaError,
                what="consumer start",
                log=log,
                stop=self._stop,
            ):
                with attempt:
                    await self._connect_kafka()
        except KafkaError:
            if self._stop.is_set():
                return False
            raise
        return not self._stop.is_set()

    async def _connect_kafka(self) -> None:
        k, ing = self.cfg.kafka, self.cfg.ingest
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=k.bootstrap,
            group_id=ing.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=ing.session_timeout_ms,
            heartbeat_interval_ms=max(100, ing.session_timeout_ms // 5),
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        # Dead letters go out a batch at a time: large producer batches (the default 16 KB made
        # rejecting junk slower than accepting blocks, docs/PERFORMANCE.md).
        self.producer = AIOKafkaProducer(
            bootstrap_servers=k.bootstrap, acks="all", linger_ms=5, max_batch_size=1024 * 1024
        )
        try:
            await self.producer.start()
            await self.consumer.start()
        except (KafkaError, OSError) as exc:
            with contextlib.suppress(Exception):
                await self.producer.stop()
            with contextlib.suppress(Exception):
                await self.consumer.stop()
            held = KafkaError(f"the Kafka-protocol broker {k.bootstrap} is unreachable ({exc})")
            self._held(held)
            raise held from exc

    async def run(self) -> None:
        k, ing = self.cfg.kafka, self.cfg.ingest
        # Before joining the group: a consumer whose ledger lost anchors takes no partition.
        await asyncio.to_thread(self.check_ledger)
        self.metrics_server.start()
        if not await self._start_kafka():
            self.metrics_server.stop()
            return  # stopped while the broker was unreachable
        assert self.consumer is not None and self.producer is not None
        self.stalled = None
        self.consumer.subscribe([k.blocks_topic], listener=_FlushOnRevoke(self))
        await self.recover()
        self.write_status()
        max_age = ing.batch_max_age_ms / 1000
        try:
            while not self._stop.is_set():
                batch = await self.consumer.getmany(
                    timeout_ms=min(200, ing.batch_max_age_ms),
                    max_records=max(1, round(ing.poll_max_records / self.per_record)),
                )
                # aiokafka returns only records at the partitions' current positions; a rebalance
                # or rewind during the awaits below seeks them again, and the rest of this poll
                # is then dropped (it is fetched again from the new positions).
                gen = self.generation
                await self._watch_positions(batch)
                msgs = [m for part in batch.values() for m in part]
                # In chunks, so a batch closes near batch_max_records whatever one poll brought
                # (bundles opened; a chunk ends where a Kafka record ends).
                taken = 0
                for chunk in in_chunks(msgs, POLL_CHUNK):
                    taken += len(chunk)
                    if gen != self.generation:
                        break  # a rebalance sought the partitions again: the rest is fetched again
                    try:
                        self.proc.process_all(chunk)
                    except (RegistryError, StoreError) as exc:  # an input is unreachable: hold
                        # Part of a bundle may be pending: nothing of this batch may be sealed (by a
                        # revocation's flush while the hold waits) with the bundle's offset.
                        self.proc.discard_pending()
                        await self._hold(exc)
                        break  # rewound: the rest of this poll is fetched again
                    if (
                        self.proc.due(ing.batch_max_records, max_age, ing.batch_max_bytes)
                        and not await self._flush_or_rewind()
                    ):
                        break  # rewound: the rest of this poll is fetched again
                if msgs:  # (a poll cut short by a rewind counts only what was taken)
                    self.per_record = 0.8 * self.per_record + 0.2 * max(1.0, taken / len(msgs))
                elif self.proc.due(ing.batch_max_records, max_age, ing.batch_max_bytes):
                    await self._flush_or_rewind()
                elif self._inflight is None or self._inflight.done():
                    await self._flush_or_rewind(seal=False)  # settle the finished batch
                    await self._sync_ledger()
            await self._flush_or_rewind(wait=True)
            await self._sync_ledger(force=True)
        finally:
            self.metrics_server.stop()
            await self.consumer.stop()
            await self.producer.stop()
            if self._batch_log is not None:
                self._batch_log.close()

    # -- broker log resets -------------------------------------------------------------------------
    async def _watch_positions(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Raise an alarm within one poll when a partition's log went backwards: the broker delivered
        an offset below the next expected one (it reset the consumer's position, or reuses positions
        that acknowledged messages held), or its high-water mark is below it (it lost messages). In
        the second case the consumer would wait for an offset the new log reaches only later, and
        skip every message before it: it reads the partition again from its beginning instead
        (what was stored already is recognised as duplicates)."""
        assert self.consumer is not None
        for tp, msgs in batch.items():
            exp = self._expect.get(tp)
            if msgs and exp is not None and msgs[0].offset < exp:
                self._alarm(tp, "offsets_regressed", exp, msgs[0].offset)
            if msgs:
                self._expect[tp] = msgs[-1].offset + 1
        for tp in self.consumer.assignment():
            hw = self.consumer.highwater(tp)
            pos = self.stored_pos.get(tp.partition, self._expect.get(tp))
            if hw is not None and pos is not None:
                self.lag[tp.partition] = max(0, hw - pos)  # never negative: a reset is alarmed below
        for tp, exp in list(self._expect.items()):
            hw = self.consumer.highwater(tp)
            if hw is not None and hw < exp:
                self._alarm(tp, "log_truncated", exp, hw)
                del self._expect[tp]
                await self.consumer.seek_to_beginning(tp)

    def _alarm(self, tp: TopicPartition, kind: str, expected: int, got: int) -> None:
        now = time.time_ns()
        log.critical(
            "BROKER LOG WENT BACKWARDS on %s/%d (%s): expected offset %d, broker at %d; acknowledged"
            " messages may be lost: see `telematics gaps` for the vehicles concerned",
            tp.topic,
            tp.partition,
            kind,
            expected,
            got,
        )
        try:
            self.store.record_broker_reset(tp.topic, tp.partition, kind, expected, got, now)
        except StoreError as exc:
            log.error("%s", exc)
        self.counts["broker_resets"] = self.counts.get("broker_resets", 0) + 1
        a = {"kind": kind, "topic": tp.topic, "partition": tp.partition, "expected": expected, "broker": got}
        self.alarms = [*self.alarms, {**a, "at_ns": now}][-10:]
        self.write_status()

    async def _sync_ledger(self, force: bool = False) -> None:
        """Let the ledger publish what is due while idle (EVM checkpoint mode). Offsets of the batches
        it covers are already committed: they are in DuckDB and the signed local log."""
        try:
            await asyncio.to_thread(self.ledger.sync, force)
        except LedgerError as exc:
            log.warning("ledger checkpoint not published yet (%s); will retry", exc)

    async def _flush_or_rewind(self, *, wait: bool = False, seal: bool = True) -> bool:
        """Flush (with ``wait``, also wait until the batch is committed; with ``seal=False`` only
        settle the batch in flight); False if that failed and the consumer rewound to the
        committed offsets."""
        async with self._flush_lock:
            return await self._flush_or_rewind_locked(wait, seal)

    async def _flush_or_rewind_locked(self, wait: bool, seal: bool) -> bool:
        try:
            if seal:
                await self.flush()
            if wait or not seal:
                await self._settle()
            return True
        except UnstorableMessages as exc:
            # The content is at fault, not the infrastructure: the messages the store refuses are
            # dead-lettered when they come round again, everything else is stored. No backoff.
            for u in exc.found:
                log.warning(
                    "dead-lettering %s/%d/%d as unstorable: %s", u.topic, u.partition, u.offset, u.detail
                )
                self.proc.quarantine[(u.topic, u.partition, u.offset, u.identity)] = u.detail
            await self._rewind()
            return False
        except (StoreError, KafkaError) as exc:
            delay = self._stall(exc)
            await self._rewind()
            await asyncio.sleep(delay)
            return False

    def _held(self, exc: Exception) -> int:
        """Record in the status file (and the stalled gauge) that an infrastructure failure holds
        the pipeline; the number of consecutive failures."""
        now = time.time_ns()
        st = self.stalled or {"since_ns": now, "retries": 0}
        self.stalled = {
            **st,
            "retries": st["retries"] + 1,
            "error": str(exc)[:500],
            "kind": type(exc).__name__,
        }
        self.write_status()
        return int(self.stalled["retries"])

    def _stall(self, exc: Exception) -> float:
        """Say loudly (log and status file) that an infrastructure failure holds the pipeline; how
        long to wait before retrying (the retry policy, common/retry.py)."""
        before = (self.stalled or {}).get("kind")
        failures = self._held(exc)
        delay = self.cfg.retry.delay(failures)
        if worth_logging(failures) or type(exc).__name__ != before:  # a new kind of failure is always said
            log.error(
                "PIPELINE HELD: %s; nothing is committed, rewinding to the committed offsets"
                " and retrying in %.1fs (attempt %d, since %.0fs)",
                exc,
                delay,
                failures,
                (time.time_ns() - (self.stalled or {}).get("since_ns", time.time_ns())) / 1e9,
            )
        return delay

    async def _hold(self, exc: Exception) -> None:
        """An input the processor needs is unavailable (the registry): let the batch in flight
        finish, forget the one being built, rewind, back off."""
        async with self._flush_lock:
            try:
                await self._settle()
            except (StoreError, KafkaError) as inflight_exc:
                log.error("the batch in flight failed too (%s)", inflight_exc)
            delay = self._stall(exc)
            await self._rewind()
        await asyncio.sleep(delay)

    async def _rewind(self) -> None:
        """Forget the batches being built and stored and seek back to the committed offsets."""
        self._inflight = None
        self._recover_pending = True
        self.generation += 1
        assert self.consumer is not None
        await self._reposition(self.consumer.assignment(), [])

    async def _reposition(self, tps: Any, claim: list[int]) -> None:
        """Claim ``claim``, reload the chain heads and seek ``tps`` to the stored positions, in
        this order (the heads and positions read include a commit the claim waited for). The
        store may be what failed: hold until it answers, or the consumer stops."""
        async for attempt in aretrying(
            self.cfg.retry,
            StoreError,
            what="store (claiming partitions, reading positions)",
            log=log,
            stop=self._stop,
        ):
            with attempt:
                try:
                    await self._claim(claim)
                    self.proc.reset()
                    await self._resume(tps)
                except StoreError as exc:
                    self._held(exc)
                    raise

    async def _claim(self, parts: list[int]) -> None:
        """Claim ``parts`` in the store (on assignment only: a consumer that was fenced must not
        claim its lost partitions back; it waits for the group to give it partitions)."""
        if parts:
            await asyncio.to_thread(self.store.claim, self.cfg.kafka.blocks_topic, parts, self.owner)

    async def _resume(self, tps: Any) -> None:
        """Seek each partition to where the store says the last stored batch ended (the positions
        are written in the batch's own transaction), else to Kafka's committed offset, else to the
        beginning; and expect it to deliver from there."""
        assert self.consumer is not None
        stored = await asyncio.to_thread(self.store.positions, self.cfg.kafka.blocks_topic)
        for tp in tps:
            pos = stored.get((tp.topic, tp.partition))
            if pos is None:
                pos = await self.consumer.committed(tp)
            if pos is None:
                await self.consumer.seek_to_beginning(tp)
                self._expect.pop(tp, None)
            else:
                self.consumer.seek(tp, pos)
                self._expect[tp] = pos

    def stop(self) -> None:
        self._stop.set()


class _FlushOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, bc: BatchConsumer) -> None:
        self.bc = bc

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.bc._flush_or_rewind(wait=True)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        """Claim the partitions in the store (a batch another consumer is committing for them
        finishes first; none of its later ones will), reload the chain heads that consumer may have
        advanced, resume each partition after the last batch stored, and anchor what it left
        unanchored.

        aiokafka fetches the new assignment while this runs: the partitions are paused first, what
        was processed is forgotten, and what a poll returned before the seek is dropped
        (``generation``)."""
        bc = self.bc
        assert bc.consumer is not None
        bc.generation += 1
        bc.consumer.pause(*assigned)
        await bc._flush_or_rewind(seal=False)  # the batch in flight is stored (or rewound) first
        bc._expect = {}
        parts = sorted(tp.partition for tp in assigned)
        # The claim returns once a commit in flight under an older claim is done, so the heads and
        # positions read after it include that commit.
        await bc._reposition(assigned, parts)
        # A batch the previous owner stored and did not anchor (it died in between) is anchored by
        # this one before its next batch: no restart of that consumer needed.
        bc._orphans_pending = True
        bc.consumer.resume(*assigned)
        bc.partitions = parts
        bc.write_status()


class ConsumerService:
    """Owns the consumer's resources (store, registry, ledger; built by ``ingest.wiring``) for one run."""

    def __init__(
        self,
        cfg: Config,
        *,
        ledger: Ledger,
        store: Store,
        registry: Registry,
        status_path: Path,
        batch_log: Path | None = None,
        passthrough: bool = False,
        instance: int = 0,
    ) -> None:
        # A batch allocates a few objects per record, nearly all freed together when it is written:
        # collect the young generation less often, and never walk what exists at start.
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 20, 20)
        self.store = store
        self.registry = registry
        if passthrough:
            log.warning("PASS-THROUGH BENCHMARK MODE: blocks are stored without any verification")
        self.consumer = BatchConsumer(
            cfg,
            store=store,
            ledger=ledger,
            registry=registry,
            status_path=status_path,
            batch_log=batch_log,
            passthrough=passthrough,
            instance=instance,
        )

    async def run(self) -> None:
        try:
            await self.consumer.run()
        finally:
            self.consumer.proc.close()
            await asyncio.to_thread(self.consumer.ledger.close)  # may wait on the witnesses
            self.store.close()
            self.registry.close()

    def stop(self) -> None:
        self.consumer.stop()


def read_status_file(p: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(p.read_text()))
    except (OSError, ValueError):
        return None
