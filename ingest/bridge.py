"""MQTT -> Kafka bridge. Moves blocks, never decodes them.

paho-mqtt 2.x, MQTT 5, shared subscription ``$share/<group>/vehicles/+/blocks``, persistent
session, manual acknowledgement: a PUBACK goes back to the broker only after Kafka has
acknowledged the produce, and PUBACKs are sent in the order the messages arrived. A crash
of the bridge therefore loses nothing: the broker redelivers every unacknowledged message,
and the consumer recognises the ones Kafka already had as duplicates.

Session messages (``vehicles/+/state``) travel the same way, so a vehicle's birth, blocks and
death stay in order. A block the agent replayed from its spool carries the MQTT 5 user property
``vt-historical``, forwarded as the Kafka header of the same name.

Records are keyed by the device id from the topic, so each vehicle's blocks keep their order
in one partition. Payloads too large for Kafka are not dropped: a marker with the payload's
size, SHA-256 and first KiB goes to Kafka, and the consumer dead-letters it as "oversized".
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
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.mqtt_security import apply_security
from edge_agent.publisher import HISTORICAL_PROPERTY
from ingest.config import Config
from ingest.processor import HISTORICAL_HEADER, REJECT_HEADER

log = logging.getLogger(__name__)

BLOCKS_FILTER = "vehicles/+/blocks"
STATE_FILTER = "vehicles/+/state"  # session births, deaths and shutdowns (schemas/session.py)


@dataclass
class BridgeStats:
    received: int = 0
    forwarded: int = 0
    oversized: int = 0


class Bridge:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stats = BridgeStats()
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: asyncio.Queue[mqtt.MQTTMessage | None] = asyncio.Queue()
        self._client: mqtt.Client | None = None
        self._connected = asyncio.Event()

    # -- MQTT side (paho network thread) ----------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.cfg.bridge.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        apply_security(c, self.cfg.mqtt, default_username=None)
        c.max_inflight_messages_set(self.cfg.mqtt.max_inflight)
        # paho reconnects by itself; with exponential backoff between these bounds.
        c.reconnect_delay_set(self.cfg.mqtt.reconnect_min_s, self.cfg.mqtt.reconnect_max_s)  # type: ignore[arg-type]
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        return c

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, rc: ReasonCode, props: object
    ) -> None:
        if rc.is_failure:
            log.error("bridge: MQTT connect refused: %s", rc)
            return
        share = f"$share/{self.cfg.bridge.share_group}/"
        # retainHandling=2: no retained messages at subscribe time (old births of any vehicle); the
        # bridge forwards what is published while it is subscribed, and its session queues the rest.
        opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        client.subscribe([(share + f, opts) for f in (BLOCKS_FILTER, STATE_FILTER)])
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._connected.set)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, rcs: list[ReasonCode], props: object
    ) -> None:
        if any(rc.is_failure for rc in rcs):
            log.error("bridge: subscription refused: %s", rcs)
            return
        path = self.cfg.path("bridge-status.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "subscribed_ns": time.time_ns()}))
        os.replace(tmp, path)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, rc: ReasonCode, props: object
    ) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._connected.clear)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._inbox.put_nowait, msg)

    def _connect(self) -> mqtt.Client:
        m = self.cfg.mqtt
        c = self._make_client()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = m.session_expiry_s
        # Flow control: the broker keeps at most this many unacknowledged messages in flight to us.
        props.ReceiveMaximum = min(65535, self.cfg.bridge.max_pending)
        c.connect(m.host, m.port, keepalive=m.keepalive_s, clean_start=False, properties=props)
        c.loop_start()
        return c

    # -- Kafka side (asyncio) ---------------------------------------------------------------------
    async def _produce(self, producer: AIOKafkaProducer, msg: mqtt.MQTTMessage) -> asyncio.Future[object]:
        parts = msg.topic.split("/")
        key = parts[1].encode() if len(parts) == 3 else None
        payload = msg.payload
        self.stats.received += 1
        headers: list[tuple[str, bytes]] = [("mqtt-topic", msg.topic.encode())]
        props = getattr(msg, "properties", None)
        for name, value in getattr(props, "UserProperty", None) or ():
            if name == HISTORICAL_PROPERTY:
                headers.append((HISTORICAL_HEADER, value.encode()))
        if len(payload) > self.cfg.bridge.max_payload_bytes:
            self.stats.oversized += 1
            headers += [
                (REJECT_HEADER, b"oversized"),
                (
                    "vt-detail",
                    f"{len(payload)} bytes > bridge max_payload_bytes {self.cfg.bridge.max_payload_bytes}".encode(),
                ),
                ("vt-size", str(len(payload)).encode()),
                ("vt-sha256", hashlib.sha256(payload).hexdigest().encode()),
            ]
            payload = payload[:1024]
        fut: asyncio.Future[object] = await producer.send(
            self.cfg.kafka.blocks_topic, payload, key=key, headers=headers
        )
        return fut

    async def _pump(self, producer: AIOKafkaProducer, client: mqtt.Client) -> None:
        """Forward messages in arrival order; a separate task acknowledges them, in the same order,
        as Kafka acknowledges them. A Kafka failure ends the session (the caller rebuilds it)."""
        pending: deque[tuple[mqtt.MQTTMessage, asyncio.Future[object]]] = deque()
        wake = asyncio.Event()
        failure: list[BaseException] = []

        async def acker() -> None:
            try:
                while True:
                    while not pending:
                        wake.clear()
                        await wake.wait()
                    msg, fut = pending[0]
                    await fut
                    pending.popleft()
                    client.ack(msg.mid, msg.qos)
                    self.stats.forwarded += 1
            except KafkaError as exc:
                failure.append(exc)
                self._inbox.put_nowait(None)

        ack_task = asyncio.create_task(acker())
        try:
            while True:
                msg = await self._inbox.get()
                if msg is None or failure:
                    break
                pending.append((msg, await self._produce(producer, msg)))
                wake.set()
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
        backoff = 0.5
        while not self._stop.is_set():
            producer = AIOKafkaProducer(
                bootstrap_servers=self.cfg.kafka.bootstrap,
                acks="all",
                linger_ms=2,
                max_request_size=max(1_048_576, self.cfg.bridge.max_payload_bytes + 65536),
            )
            client: mqtt.Client | None = None
            try:
                await producer.start()
                # Unforwarded messages of an earlier session are redelivered by the broker: start empty.
                self._inbox = asyncio.Queue()
                if self._stop.is_set():
                    break
                client = await asyncio.to_thread(self._connect)
                await self._pump(producer, client)
                backoff = 0.5
            except (KafkaError, OSError) as exc:
                log.error(
                    "bridge: %s; reconnecting in %.1fs (unacknowledged MQTT messages will be redelivered)",
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                if client is not None:
                    client.disconnect()
                    client.loop_stop()
                with contextlib.suppress(KafkaError):
                    await producer.stop()

    def stop(self) -> None:
        """Stop after the messages already forwarded are acknowledged (call from the event loop)."""
        self._stop.set()
        self._inbox.put_nowait(None)
