"""MQTT -> Kafka bridge. Moves blocks, never decodes them.

MQTT 5 (``common/mqtt5.py``: one asyncio session, whole socket reads split into messages),
shared subscription ``$share/<group>/vehicles/+/blocks``, persistent session, acknowledgement
by the bridge: a PUBACK goes back to the broker only after Kafka has acknowledged the produce,
and PUBACKs are sent in the order the messages arrived. A crash
of the bridge therefore loses nothing: the broker redelivers every unacknowledged message,
and the consumer recognises the ones Kafka already had as duplicates.

Session messages (``vehicles/+/state``) travel the same way, so a vehicle's birth, blocks and
death stay in order. A block the agent replayed from its spool carries the MQTT 5 user property
``vt-historical``, forwarded as the Kafka header of the same name.

Each vehicle's messages keep their order in one partition: the one Kafka's default partitioner
gives its device id. The messages of one burst bound for one partition travel as one Kafka record,
a bundle (WIRE.md 12.5, ``[bridge] bundle_max_*``), so Kafka, the bridge and the consumer pay their
per-record costs once per bundle; with bundling off each message is a record keyed by its device
id. Payloads too large for Kafka are not dropped: a marker with the payload's size, SHA-256 and
first KiB goes to Kafka, and the consumer dead-letters it as "oversized".

One device cannot take the pipeline for itself: each device id has a quota (a token bucket of
messages and bytes per second, ``[bridge] device_quota_*``). Messages over it are not forwarded
one by one: every ``quota_report_ms`` the bridge produces one marker per device that counts them
(number, bytes, SHA-256 over their payloads in order, the first one's first KiB), and acknowledges
them to MQTT only once Kafka has that marker. The consumer dead-letters it as "quota_exceeded".
MQTT cannot pass a subscriber's refusal back to the publisher (the broker acknowledged the
vehicle already), so the reference agent paces its replay below the quota (edge.replay_max_per_s).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from common.mqtt5 import RETAIN_DO_NOT_SEND, SESSION_TAKEN_OVER, Inbound, MqttError, Subscriber
from common.mqtt_tls import security
from common.retry import worth_logging
from ingest.config import Config
from ingest.pipeline.metrics import Metric, Metrics, MetricsServer, counter, gauge
from schemas.transport import (
    BLOCKS_FILTER,
    BUNDLE_HEADER,
    BUNDLE_VERSION,
    COUNT_HEADER,
    DETAIL_HEADER,
    HISTORICAL_HEADER,
    HISTORICAL_PROPERTY,
    MQTT_TOPIC_HEADER,
    REJECT_HEADER,
    SHA256_HEADER,
    SIZE_HEADER,
    STATE_FILTER,
    blocks_topic,
    encode_bundle,
    topic_key,
)

log = logging.getLogger(__name__)


@dataclass
class BridgeStats:
    received: int = 0
    forwarded: int = 0
    bundles: int = 0  # Kafka records that carry a bundle (WIRE.md 12.5)
    oversized: int = 0
    over_quota: int = 0  # messages not forwarded because their device was over its quota
    over_quota_bytes: int = 0


def refused_count(detail: str) -> int:
    """How many messages a stored ``quota_exceeded`` rejection stands for: its detail, as the
    consumer stores a marker's (``flagged by the bridge: <N> messages (...)``), starts with the count."""
    return int(detail.removeprefix("flagged by the bridge: ").split(" messages", 1)[0])


class Quotas:
    """A token bucket per device for messages and bytes (pure: the caller passes the time)."""

    def __init__(self, msgs_per_s: float, bytes_per_s: float, burst_s: float) -> None:
        self.msgs_per_s = msgs_per_s
        self.bytes_per_s = bytes_per_s
        self.burst_s = burst_s
        self._buckets: dict[bytes, list[float]] = {}  # device -> [message tokens, byte tokens, time]

    def admit(self, device: bytes, size: int, now: float) -> bool:
        """True if the device may send this message now (and charge it)."""
        b = self._buckets.get(device)
        cap_m, cap_b = self.msgs_per_s * self.burst_s, self.bytes_per_s * self.burst_s
        if b is None:
            b = self._buckets[device] = [cap_m, cap_b, now]
        else:
            dt = max(0.0, now - b[2])
            b[0] = min(cap_m, b[0] + dt * self.msgs_per_s)
            b[1] = min(cap_b, b[1] + dt * self.bytes_per_s)
            b[2] = now
        ok_m = self.msgs_per_s <= 0 or b[0] >= 1.0
        ok_b = self.bytes_per_s <= 0 or b[1] >= size
        if ok_m and ok_b:
            b[0] -= 1.0
            b[1] -= size
            return True
        return False


@dataclass
class _Refused:
    """The messages of one device refused since its last quota marker."""

    fut: asyncio.Future[object]
    opened: float
    head: bytes
    count: int = 0
    size: int = 0
    sha: Any = None


def _chain(src: asyncio.Future[object], dst: asyncio.Future[object]) -> None:
    """Complete ``dst`` as ``src`` completed (a quota marker's Kafka ack releases its messages)."""
    if dst.done():
        return
    if src.cancelled():
        dst.cancel()
    elif src.exception() is not None:
        dst.set_exception(src.exception())  # type: ignore[arg-type]
    else:
        dst.set_result(None)


@dataclass
class _Bundle:
    """The messages gathered for one Kafka partition; ``fut`` completes when Kafka acknowledged it."""

    fut: asyncio.Future[object]
    entries: list[tuple[str, bytes | bytearray, bool]]
    size: int = 0  # of the encoded value, within a few bytes


# MessagePack framing of one bundle entry beyond its topic and payload bytes, at most: array header
# (1), str header (3, a topic under 64 KiB), bin header (5), bool (1); and the outer array's (5).
ENTRY_OVERHEAD = 10


def entry_size(topic: str, payload: bytes | bytearray) -> int:
    """What one message adds to a bundle's encoded size, at most."""
    return len(payload) + len(topic.encode()) + ENTRY_OVERHEAD


class Bundler:
    """Gathers the messages of one burst into one Kafka record per partition (WIRE.md 12.5). Each
    message's partition is the one Kafka's default partitioner gives its device id, so a device's
    messages, bundled or not, stay in one partition in arrival order."""

    def __init__(self, topic: str, partitions: list[int], max_messages: int, max_bytes: int) -> None:
        self.topic = topic
        self.partitions = sorted(partitions)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._open: dict[int, _Bundle] = {}
        self._partition_of: dict[bytes, int] = {}

    def partition(self, key: bytes) -> int:
        p = self._partition_of.get(key)
        if p is None:
            if len(self._partition_of) > 1_000_000:
                self._partition_of.clear()
            p = self._partition_of[key] = DefaultPartitioner()(key, self.partitions, self.partitions)
        return p

    async def add(
        self,
        producer: AIOKafkaProducer,
        key: bytes,
        topic: str,
        payload: bytes | bytearray,
        historical: bool,
        stats: BridgeStats,
    ) -> asyncio.Future[object]:
        """Put one message in its partition's bundle; the future completes when Kafka has that bundle."""
        part = self.partition(key)
        b = self._open.get(part)
        size = entry_size(topic, payload)
        if b is not None and (len(b.entries) >= self.max_messages or b.size + size > self.max_bytes):
            await self._send(producer, part, stats)
            b = None
        if b is None:
            b = self._open[part] = _Bundle(asyncio.get_running_loop().create_future(), [])
        b.entries.append((topic, payload, historical))
        b.size += size
        return b.fut

    async def flush(self, producer: AIOKafkaProducer, stats: BridgeStats, key: bytes | None = None) -> None:
        """Send the open bundles (only the one of ``key``'s partition, when given)."""
        parts = list(self._open) if key is None else [self.partition(key)]
        for part in parts:
            if part in self._open:
                await self._send(producer, part, stats)

    async def _send(self, producer: AIOKafkaProducer, part: int, stats: BridgeStats) -> None:
        b = self._open.pop(part)
        kfut = await producer.send(
            self.topic, encode_bundle(b.entries), partition=part, headers=[(BUNDLE_HEADER, BUNDLE_VERSION)]
        )
        kfut.add_done_callback(lambda f, out=b.fut: _chain(f, out))
        stats.bundles += 1


class Bridge:
    def __init__(self, cfg: Config, *, status_path: Path) -> None:
        """``status_path``: written once the subscriptions are in place (a readiness signal)."""
        self.cfg = cfg
        self.status_path = status_path
        self.stats = BridgeStats()
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: asyncio.Queue[Inbound | None] = asyncio.Queue()
        self._sub: Subscriber | None = None  # this MQTT session's
        self._session = 0  # MQTT sessions opened so far
        self._had_session = False  # a session was established before (the broker should keep it)
        # Credentials and TLS checked now: a mistake stops the bridge at start (read again per session).
        security(cfg.mqtt, default_username=None)
        self._connected = asyncio.Event()
        b = cfg.bridge
        self.quotas = Quotas(b.device_quota_msgs_per_s, b.device_quota_bytes_per_s, b.device_quota_burst_s)
        self._quota_on = b.device_quota_msgs_per_s > 0 or b.device_quota_bytes_per_s > 0
        self._refused: dict[bytes, _Refused] = {}
        self._bundler: Bundler | None = None  # this Kafka session's
        self._warned: dict[bytes, float] = {}
        # Payload bytes received from MQTT and not yet handed to the producer (max_pending_bytes):
        # over the cap the session stops reading until the producer has taken them.
        self._inbox_bytes = 0
        self._subscribed = False
        m = cfg.metrics
        self.metrics_server = MetricsServer(Metrics(self._collect), m.host, m.bridge_port, self._not_ready)

    # -- operators' view (ingest/pipeline/metrics.py) --------------------------------------------
    def _collect(self) -> Iterator[Metric]:
        st = self.stats
        yield counter("telematics_bridge_received", "MQTT messages received", st.received)
        yield counter(
            "telematics_bridge_forwarded", "messages acknowledged by Kafka, then to MQTT", st.forwarded
        )
        yield counter(
            "telematics_bridge_bundles",
            "Kafka records that carry a bundle of messages (WIRE.md 12.5)",
            st.bundles,
        )
        yield counter(
            "telematics_bridge_oversized",
            "messages over max_payload_bytes (a marker forwarded)",
            st.oversized,
        )
        yield counter(
            "telematics_bridge_over_quota",
            "messages of devices over their quota (not forwarded)",
            st.over_quota,
        )
        yield gauge(
            "telematics_bridge_pending_bytes",
            "payload received and not yet handed to Kafka",
            self._inbox_bytes,
        )
        yield gauge(
            "telematics_bridge_connected",
            "1 while connected to the MQTT broker",
            1 if self._connected.is_set() else 0,
        )

    def _not_ready(self) -> str | None:
        if not self._connected.is_set():
            return "not connected to the MQTT broker"
        if not self._subscribed:
            return "not subscribed yet"
        return None

    # -- MQTT side ---------------------------------------------------------------------------------
    def _arrive(self, batch: list[Inbound]) -> None:
        """(one socket read) Queue what arrived, in arrival order; over ``max_pending_bytes`` stop
        reading: mosquitto keeps the messages it has not had acknowledged."""
        for m in batch:
            self._inbox_bytes += len(m.payload)
            self._inbox.put_nowait(m)
        if self._inbox_bytes >= self.cfg.bridge.max_pending_bytes and self._sub is not None:
            self._sub.pause()

    def _handed_over(self, size: int) -> None:
        self._inbox_bytes -= size
        if self._inbox_bytes < self.cfg.bridge.max_pending_bytes and self._sub is not None:
            self._sub.resume()

    async def _connect(self) -> Subscriber:
        """A new MQTT session (the persistent one of ``[bridge] client_id``), subscribed. Messages
        a session hands over after a newer one began are dropped: the broker redelivers them."""
        m, sec = self.cfg.mqtt, security(self.cfg.mqtt, default_username=None)  # rotated secrets too
        self._session += 1
        session, inbox = self._session, self._inbox
        sub = Subscriber(
            m.host,
            m.port,
            self.cfg.bridge.client_id,
            lambda batch: self._arrive(batch) if self._session == session else None,
            username=sec.username,
            password=sec.password.encode() if sec.password is not None else None,
            tls=sec.tls,
            keepalive_s=m.keepalive_s,
            session_expiry_s=m.session_expiry_s,
            clean_start=False,
            # Flow control: the broker keeps at most this many unacknowledged messages in flight to us.
            receive_maximum=min(65535, self.cfg.bridge.max_pending),
            # No packet larger than the broker takes from a vehicle (with room for its header).
            maximum_packet_size=self.cfg.bridge.max_packet_bytes + 65536,
        )
        self._sub = sub
        share = f"$share/{self.cfg.bridge.share_group}/"
        # Retain handling 2: no retained messages at subscribe time (old births of any vehicle); the
        # bridge forwards what is published while it is subscribed, and its session queues the rest.
        codes = await sub.connect(
            [(share + f, 1 | RETAIN_DO_NOT_SEND) for f in (BLOCKS_FILTER, STATE_FILTER)]
        )
        try:
            sub.closed.add_done_callback(lambda _: inbox.put_nowait(None))  # wakes this session's pump
            if any(c >= 0x80 for c in codes):
                raise MqttError(
                    f"subscription refused, reason codes {', '.join(f'0x{c:02x}' for c in codes)}"
                )
            if self._had_session and not sub.session_present:
                log.warning(
                    "bridge: the MQTT broker kept no session for client id %r: what it held for the"
                    " bridge while it was away is gone ([mqtt] session_expiry_s %d, or the broker lost"
                    " its state)",
                    self.cfg.bridge.client_id,
                    m.session_expiry_s,
                )
            self._had_session = True
            self._connected.set()
            self._subscribed = True
            path = self.status_path
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"pid": os.getpid(), "subscribed_ns": time.time_ns()}))
            os.replace(tmp, path)
        except BaseException:
            await sub.close()
            raise
        return sub

    # -- Kafka side (asyncio) ---------------------------------------------------------------------
    async def _produce(
        self, producer: AIOKafkaProducer, msg: Inbound, bundler: Bundler | None
    ) -> asyncio.Future[object]:
        """Forward one message: into its partition's bundle, or as a Kafka record of its own (no
        bundler, a payload too large for a bundle, a topic without a device id)."""
        key = topic_key(msg.topic)
        payload = msg.payload
        self.stats.received += 1
        if key is not None and self._quota_on and not self.quotas.admit(key, len(payload), time.monotonic()):
            return self._refuse(key, payload)
        historical = [v for n, v in msg.user_properties if n == HISTORICAL_PROPERTY]
        partition = None
        if bundler is not None and key is not None:
            if entry_size(msg.topic, payload) <= bundler.max_bytes:
                return await bundler.add(producer, key, msg.topic, payload, bool(historical), self.stats)
            await bundler.flush(producer, self.stats, key)  # what came before it goes first
            partition = bundler.partition(key)  # after it, in the same partition
        headers: list[tuple[str, bytes]] = [(MQTT_TOPIC_HEADER, msg.topic.encode())]
        headers += [(HISTORICAL_HEADER, v.encode()) for v in historical]
        if len(payload) > self.cfg.bridge.max_payload_bytes:
            self.stats.oversized += 1
            headers += [
                (REJECT_HEADER, b"oversized"),
                (
                    DETAIL_HEADER,
                    f"{len(payload)} bytes > bridge max_payload_bytes {self.cfg.bridge.max_payload_bytes}".encode(),
                ),
                (SIZE_HEADER, str(len(payload)).encode()),
                (SHA256_HEADER, hashlib.sha256(payload).hexdigest().encode()),
            ]
            payload = payload[:1024]
        fut: asyncio.Future[object] = await producer.send(
            self.cfg.kafka.blocks_topic, payload, key=key, headers=headers, partition=partition
        )
        return fut

    def _refuse(self, key: bytes, payload: bytes | bytearray) -> asyncio.Future[object]:
        """Count a message over its device's quota; its acknowledgement waits for the marker."""
        r = self._refused.get(key)
        if r is None:
            assert self._loop is not None
            r = self._refused[key] = _Refused(
                self._loop.create_future(), time.monotonic(), bytes(payload[:1024]), sha=hashlib.sha256()
            )
        r.count += 1
        r.size += len(payload)
        r.sha.update(payload)
        self.stats.over_quota += 1
        self.stats.over_quota_bytes += len(payload)
        return r.fut

    async def _report_quota(self, producer: AIOKafkaProducer, *, all_: bool = False) -> None:
        """Produce the marker of every device whose refusals are older than quota_report_ms."""
        now = time.monotonic()
        due = self.cfg.bridge.quota_report_ms / 1000
        for key, r in list(self._refused.items()):
            if not all_ and now - r.opened < due:
                continue
            del self._refused[key]
            b = self.cfg.bridge
            detail = (
                f"{r.count} messages ({r.size} bytes) over the device quota of {b.device_quota_msgs_per_s:g}"
                f" messages/s and {b.device_quota_bytes_per_s:g} bytes/s (bursts of {b.device_quota_burst_s:g} s)"
            )
            headers = [
                (MQTT_TOPIC_HEADER, blocks_topic(key.decode(errors="replace")).encode()),
                (REJECT_HEADER, b"quota_exceeded"),
                (DETAIL_HEADER, detail.encode()),
                (SIZE_HEADER, str(r.size).encode()),
                (SHA256_HEADER, r.sha.hexdigest().encode()),
                (COUNT_HEADER, str(r.count).encode()),
            ]
            # In the partition of the device's bundles (the list the bundler holds for this session).
            part = self._bundler.partition(key) if self._bundler is not None else None
            kfut = await producer.send(
                self.cfg.kafka.blocks_topic, r.head, key=key, headers=headers, partition=part
            )
            kfut.add_done_callback(lambda f, out=r.fut: _chain(f, out))
            if now - self._warned.get(key, -1e9) >= 10.0:
                self._warned[key] = now
                log.warning("bridge: device %s over its quota: %s", key.decode(errors="replace"), detail)

    async def _make_bundler(self, producer: AIOKafkaProducer) -> Bundler | None:
        b = self.cfg.bridge
        if b.bundle_max_messages <= 1:
            return None
        topic = self.cfg.kafka.blocks_topic
        partitions = await producer.partitions_for(topic)
        return Bundler(topic, sorted(partitions), b.bundle_max_messages, b.bundle_max_bytes)

    async def _pump(self, producer: AIOKafkaProducer, sub: Subscriber) -> None:
        """Forward messages in arrival order; a separate task acknowledges them, in the same order,
        as Kafka acknowledges them. A Kafka failure or the MQTT connection's end ends the session
        (the caller rebuilds it; what was not acknowledged to MQTT is redelivered).
        With bundling on, the messages that have arrived when the loop looks (a burst) go out as
        one bundle per partition: bundling waits for nothing."""
        bundler = self._bundler = await self._make_bundler(producer)
        # (packet id, Kafka future): the payload itself is not held once it was handed to the producer.
        pending: deque[tuple[int, asyncio.Future[object]]] = deque()
        wake = asyncio.Event()
        failure: list[BaseException] = []

        async def acker() -> None:
            while True:
                while not pending:
                    wake.clear()
                    await wake.wait()
                pid, fut = pending[0]
                if not fut.done():  # (a done one costs no turn of the event loop)
                    await asyncio.wait([fut])  # returns however it ended; cancelling this task raises
                exc = None if fut.cancelled() else fut.exception()
                if fut.cancelled() or exc is not None:
                    # Never acknowledged to MQTT: the session ends and the broker redelivers it.
                    failure.append(
                        exc
                        if isinstance(exc, KafkaError)
                        else KafkaError(f"Kafka send ended: {exc or 'cancelled'}")
                    )
                    self._inbox.put_nowait(None)
                    return
                pending.popleft()
                sub.ack(pid)
                self.stats.forwarded += 1

        ack_task = asyncio.create_task(acker())
        tick = self.cfg.bridge.quota_report_ms / 1000
        try:
            while True:
                if self._refused:
                    try:
                        msg = await asyncio.wait_for(self._inbox.get(), tick)
                    except TimeoutError:
                        await self._report_quota(producer)
                        continue
                    await self._report_quota(producer)
                else:
                    msg = await self._inbox.get()
                if msg is None or failure:
                    break
                burst = [msg]
                end = False
                while bundler is not None and len(burst) < 10_000 and not self._inbox.empty():
                    nxt = self._inbox.get_nowait()
                    if nxt is None:
                        end = True
                        break
                    burst.append(nxt)
                size = 0
                for m in burst:
                    pending.append((m.packet_id, await self._produce(producer, m, bundler)))
                    size += len(m.payload)
                if bundler is not None:
                    await bundler.flush(producer, self.stats)
                self._handed_over(size)
                wake.set()
                if end:
                    break
            if sub.closed.done() and not self._stop.is_set():
                raise sub.closed.result()  # nothing more can be acknowledged on this connection
            await self._report_quota(producer, all_=True)
            if not failure:
                # Drain: wait for Kafka to acknowledge what was forwarded, then ack it to MQTT.
                await producer.flush()
                while pending and not ack_task.done():
                    await asyncio.sleep(0.01)
            if failure:
                raise failure[0]
        finally:
            ack_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ack_task

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.metrics_server.start()
        try:
            await self._run()
        finally:
            self.metrics_server.stop()

    async def _run(self) -> None:
        failures = 0  # consecutive; reset by a session that reached both brokers
        while not self._stop.is_set():
            producer = AIOKafkaProducer(
                bootstrap_servers=self.cfg.kafka.bootstrap,
                acks="all",
                linger_ms=self.cfg.bridge.linger_ms,
                # Large producer batches: with the durable local broker every batch is an S3 write
                # (aiokafka's default 16 KB made that one block per write: docs/PRODUCTION.md).
                max_batch_size=1024 * 1024,
                max_request_size=max(1_048_576, self.cfg.bridge.max_payload_bytes + 65536),
            )
            sub: Subscriber | None = None
            delay = 0.0
            try:
                await producer.start()
                # Unforwarded messages of an earlier session are redelivered by the broker: start empty.
                self._inbox = asyncio.Queue()
                self._inbox_bytes = 0
                self._refused = {}
                if self._stop.is_set():
                    break
                sub = await self._connect()
                failures = 0
                await self._pump(producer, sub)
            except (KafkaError, OSError, MqttError) as exc:
                failures += 1
                # MQTT's reconnection follows [mqtt] reconnect_*, Kafka's [retry].
                kafka = isinstance(exc, KafkaError)
                delay = (self.cfg.retry if kafka else self.cfg.mqtt.reconnect).delay(failures)
                if (
                    worth_logging(failures)
                    and isinstance(exc, MqttError)
                    and exc.reason == SESSION_TAKEN_OVER
                ):
                    log.error(
                        "bridge: another client connected with client id %r and took this session over:"
                        " two bridges with the same [bridge] client_id steal it from each other; give each"
                        " its own",
                        self.cfg.bridge.client_id,
                    )
                elif worth_logging(failures):
                    log.error(
                        "bridge: %s; reconnecting in %.1fs (attempt %d; unacknowledged MQTT messages"
                        " will be redelivered)",
                        exc,
                        delay,
                        failures,
                    )
            finally:
                # Both sessions end before the wait: the broker can give this bridge's in-flight
                # messages of the shared subscription to another bridge meanwhile.
                self._connected.clear()
                self._subscribed = False
                self._sub = None
                if sub is not None:
                    await sub.close()  # after the acknowledgements written so far
                with contextlib.suppress(KafkaError):
                    await producer.stop()
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)

    def stop(self) -> None:
        """Stop after the messages already forwarded are acknowledged (call from the event loop)."""
        self._stop.set()
        self._inbox.put_nowait(None)
