"""Publishing blocks: a small Protocol, a paho-mqtt 2.x (MQTT 5) backend and an in-memory one.

The publisher does not keep messages: the spool does. It publishes what the agent hands it,
reports which messages the broker acknowledged (PUBACK) and which were lost with a
connection, and the agent sends those again from the spool after the next connect.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from common.config import MqttConfig
from common.errors import Retryable
from common.mqtt_tls import apply_security
from common.retry import worth_logging
from schemas.transport import HISTORICAL_PROPERTY, state_topic

log = logging.getLogger(__name__)

# MQTT 5 user property on a block replayed from the spool (not published live); the bridge
# carries it to Kafka as a header and the ingest stores it in blocks.historical.
NO_MATCHING_SUBSCRIBERS = 16


class PublishError(Retryable):
    """The broker cannot be reached or refused the connection at start."""


@dataclass(frozen=True)
class SessionMessages:
    """What the publisher announces for connection number ``session``: a birth published on
    connect and a last will the broker publishes if the connection is lost (both retained on
    ``vehicles/<id>/state``), and the message of a clean shutdown."""

    birth: Callable[[int], bytes]
    death: Callable[[int], bytes]
    shutdown: Callable[[int], bytes]


class Publisher(Protocol):
    @property
    def connected(self) -> bool:
        """True while messages can be handed over."""

    def publish(self, topic: str, payload: bytes, *, tag: int = -1, historical: bool = False) -> None:
        """Hand one QoS 1 message over; ``tag`` comes back from ``take_acks``."""

    def take_acks(self) -> tuple[list[int], list[int]]:
        """(tags acknowledged by the broker, tags lost: in flight when a connection dropped,
        refused by the broker, or with no subscriber to take them) since the last call."""


class MemoryPublisher:
    """In-memory publisher for unit tests and dry runs; ``online = False`` simulates an outage."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.historical: list[bool] = []
        self.online = True
        self._acked: list[int] = []

    @property
    def connected(self) -> bool:
        return self.online

    def publish(self, topic: str, payload: bytes, *, tag: int = -1, historical: bool = False) -> None:
        assert self.online, "published while offline"
        self.messages.append((topic, payload))
        self.historical.append(historical)
        self._acked.append(tag)

    def take_acks(self) -> tuple[list[int], list[int]]:
        acked, self._acked = self._acked, []
        return acked, []


class MqttPublisher:
    """paho-mqtt 2.x, MQTT 5, QoS 1, TLS and credentials from the config.

    A supervisor thread owns the connection: it connects, and after a lost connection or a
    failed attempt waits as the project's retry policy says (``common.retry``: exponential
    backoff with full jitter between ``reconnect_min_s`` and ``reconnect_max_s``) before it
    tries again with a new client. Messages in
    flight on a dropped connection are reported lost: the agent re-sends them from its spool.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        device_id: str,
        *,
        client_id: str | None = None,
        session: SessionMessages | None = None,
    ) -> None:
        self.cfg = cfg
        self.device_id = device_id
        self.client_id = client_id or device_id
        self.session = session
        self.session_no = 0
        self._lock = threading.Condition()
        self._client: mqtt.Client | None = None
        self._mids: dict[int, int] = {}  # mid -> tag, on the current connection
        self._early: dict[int, str] = {}  # acks that overtook publish(): mid -> outcome
        self._acked: list[int] = []
        self._lost: list[int] = []
        self._connected = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error = ""
        self.connects = 0
        self.refused = 0
        self.unrouted = 0
        self.lost = 0
        self._first = threading.Event()
        self._make_client()  # fail at start on a bad TLS or credentials configuration

    # -- connection supervisor --------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5
        )
        apply_security(c, self.cfg, default_username=self.device_id)
        c.max_inflight_messages_set(self.cfg.max_inflight)
        c.max_queued_messages_set(0)
        return c

    def connect(self, timeout: float = 10.0) -> None:
        """Start the supervisor and wait for the first connection (PublishError after ``timeout``:
        the supervisor keeps trying; call ``close`` to stop it)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._supervise, name=f"mqtt-{self.device_id}", daemon=True
            )
            self._thread.start()
        if not self._first.wait(timeout):
            raise PublishError(
                f"MQTT broker {self.cfg.host}:{self.cfg.port} did not accept {self.device_id}"
                f" within {timeout:.0f}s: {self.last_error or 'no answer'}"
            )

    def start(self) -> None:
        """Start the supervisor without waiting: the agent spools until the broker is reachable."""
        with contextlib.suppress(PublishError):
            self.connect(timeout=0)

    def _supervise(self) -> None:
        failures = 0  # consecutive; reset by an accepted connection
        while not self._stop.is_set():
            if self._run_connection():
                if failures:
                    log.info("%s: connected to %s:%d again", self.device_id, self.cfg.host, self.cfg.port)
                failures = 0
            else:
                failures += 1
            if self._stop.is_set():
                break
            delay = self.cfg.reconnect.delay(failures)  # after a lost connection: as after one failure
            if worth_logging(failures):
                log.warning(
                    "%s: MQTT broker %s:%d: %s; retrying in %.1fs (attempt %d); blocks wait in the spool",
                    self.device_id,
                    self.cfg.host,
                    self.cfg.port,
                    self.last_error or "connection lost",
                    delay,
                    failures,
                )
            self._stop.wait(delay)

    def _run_connection(self) -> bool:
        """One connection, from connect to loss; True if the broker accepted it."""
        self.session_no += 1
        n = self.session_no
        client = self._make_client()
        accepted = threading.Event()
        gone = threading.Event()
        if self.session is not None:
            client.will_set(state_topic(self.device_id), self.session.death(n), qos=1, retain=True)

        def on_connect(c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object) -> None:
            if rc.is_failure:
                self.last_error = f"connection refused: {rc}"
                gone.set()
                return
            if self.session is not None:
                c.publish(state_topic(self.device_id), self.session.birth(n), qos=1, retain=True)
            accepted.set()

        def on_disconnect(c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object) -> None:
            if rc.is_failure:
                self.last_error = f"disconnected: {rc}"
            gone.set()

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = self._on_publish
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0  # the spool, not the broker session, keeps what is unsent
        try:
            client.connect(
                self.cfg.host,
                self.cfg.port,
                keepalive=self.cfg.keepalive_s,
                clean_start=True,
                properties=props,
            )
        except (OSError, ssl.SSLError) as exc:
            self.last_error = f"cannot reach {self.cfg.host}:{self.cfg.port}: {exc}"
            return False
        client.loop_start()
        ok = False
        deadline = time.monotonic() + max(10.0, self.cfg.keepalive_s)
        while not self._stop.is_set() and not gone.is_set():
            if ok:
                gone.wait(0.2)
            elif accepted.wait(0.05):
                ok = True
                self.connects += 1
                with self._lock:
                    self._client = client
                    self._connected = True
                self._first.set()
            elif time.monotonic() > deadline:
                self.last_error = "no CONNACK from the broker"
                break
        with self._lock:
            self._connected = False
            self._client = None
            lost = list(self._mids.values())
            self._mids.clear()
            self._early.clear()
            self._lost.extend(lost)
            self.lost += len(lost)
            self._lock.notify_all()
        if self._stop.is_set() and not gone.is_set():
            with contextlib.suppress(Exception):
                if self.session is not None and ok:
                    info = client.publish(
                        state_topic(self.device_id), self.session.shutdown(n), qos=1, retain=True
                    )
                    info.wait_for_publish(5)
                client.disconnect()
        client.loop_stop()
        return ok

    def _on_publish(self, client: mqtt.Client, u: object, mid: int, rc: ReasonCode, p: object) -> None:
        # MQTT 5 PUBACK 16 "No matching subscribers" is a success code, but nobody took the
        # message (the ingest bridge is not connected): it counts as not delivered.
        outcome = "refused" if rc.is_failure else "unrouted" if rc.value == NO_MATCHING_SUBSCRIBERS else "ok"
        with self._lock:
            tag = self._mids.pop(mid, None)
            if tag is None:
                self._early[mid] = outcome
                return
            self._settle(tag, outcome, rc)

    def _settle(self, tag: int, outcome: str, rc: object) -> None:
        if outcome == "ok":
            self._acked.append(tag)
        else:
            if outcome == "refused":
                log.error("broker refused message %d of %s: %s", tag, self.device_id, rc)
                self.refused += 1
            else:
                self.unrouted += 1
            self._lost.append(tag)
        self._lock.notify_all()

    # -- the Publisher protocol -------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def inflight(self) -> int:
        with self._lock:
            return len(self._mids)

    def publish(self, topic: str, payload: bytes, *, tag: int = -1, historical: bool = False) -> None:
        with self._lock:
            client = self._client
        if client is None:
            with self._lock:
                self._lost.append(tag)
                self.lost += 1
            return
        props = None
        if historical:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = (HISTORICAL_PROPERTY, "1")
        info = client.publish(topic, payload, qos=1, properties=props)
        with self._lock:
            if info.rc != mqtt.MQTT_ERR_SUCCESS or self._client is not client:
                # Not on the wire, or its connection is already gone: the spool keeps it.
                self._lost.append(tag)
                self.lost += 1
                return
            early = self._early.pop(info.mid, None)
            if early is None:
                self._mids[info.mid] = tag
            else:
                self._settle(tag, early, early)

    def take_acks(self) -> tuple[list[int], list[int]]:
        with self._lock:
            acked, lost = self._acked, self._lost
            self._acked, self._lost = [], []
            return acked, lost

    def flush(self, timeout: float) -> bool:
        """Wait until nothing is in flight; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._mids:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.5))
        return True

    def close(self, timeout: float = 30.0) -> bool:
        """Wait for acknowledgements, announce the shutdown and disconnect."""
        ok = self.flush(timeout)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return ok
