"""Publishing blocks: a two-method Protocol, a paho-mqtt 2.x (MQTT 5) backend and an in-memory one."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.config import MqttConfig
from edge_agent.mqtt_security import apply_security

log = logging.getLogger(__name__)


def blocks_topic(device_id: str) -> str:
    return f"vehicles/{device_id}/blocks"


def state_topic(device_id: str) -> str:
    return f"vehicles/{device_id}/state"


class PublishError(Exception):
    """The broker refused or could not take a message; the caller keeps it and retries."""


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes) -> None:
        """Queue one QoS 1 message; may block while too many are unacknowledged."""

    def flush(self, timeout: float) -> bool:
        """Wait until every queued message is acknowledged; False on timeout."""


class MemoryPublisher:
    """In-memory publisher for unit tests and dry runs."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))

    def flush(self, timeout: float) -> bool:
        return True


class MqttPublisher:
    """paho-mqtt 2.x, MQTT 5, QoS 1, persistent session (clean_start=False, session expiry > 0).

    A retained "online" birth and an "offline" last will go to ``vehicles/<id>/state``.
    Outstanding QoS 1 messages are bounded by ``max_inflight``: ``publish`` blocks beyond it.
    """

    def __init__(self, cfg: MqttConfig, device_id: str, *, client_id: str | None = None) -> None:
        self.cfg = cfg
        self.device_id = device_id
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or device_id,
            protocol=mqtt.MQTTv5,
        )
        apply_security(self._client, cfg, default_username=device_id)
        self._client.max_inflight_messages_set(cfg.max_inflight)
        self._client.max_queued_messages_set(0)
        self._client.will_set(state_topic(device_id), b"offline", qos=1, retain=True)
        self._client.on_publish = self._on_publish
        self._client.on_connect = self._on_connect
        # Outstanding QoS 1 messages. The PUBACK callback may run before publish() has seen the
        # mid, so early acks are parked in ``_early``. Never hold ``_cv`` while calling into paho:
        # paho holds its own lock while it runs ``_on_publish``.
        self._cv = threading.Condition()
        self._mine: set[int] = set()
        self._early: set[int] = set()
        self._ignore: set[int] = set()
        self._outstanding = 0
        self._connected = threading.Event()
        self.refused: list[tuple[int, str]] = []
        self.acked = 0

    # paho callbacks run on its network thread.
    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, rc: ReasonCode, props: object
    ) -> None:
        if rc.is_failure:
            log.error("MQTT connect refused for %s: %s", self.device_id, rc)
            return
        # The PUBACK of this birth is read by this same thread, so it cannot overtake us.
        info = client.publish(state_topic(self.device_id), b"online", qos=1, retain=True)
        with self._cv:
            self._ignore.add(info.mid)
        self._connected.set()

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, rc: ReasonCode, props: object
    ) -> None:
        with self._cv:
            if mid in self._ignore:
                self._ignore.discard(mid)
                return
            if rc.is_failure:
                log.error("broker refused message %d from %s: %s", mid, self.device_id, rc)
                self.refused.append((mid, str(rc)))
            if mid in self._mine:
                self._mine.discard(mid)
                self._done_locked()
            else:
                self._early.add(mid)

    def _done_locked(self) -> None:
        self._outstanding -= 1
        self.acked += 1
        self._cv.notify_all()

    def connect(self, timeout: float = 10.0) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        try:
            self._client.connect(
                self.cfg.host,
                self.cfg.port,
                keepalive=self.cfg.keepalive_s,
                clean_start=False,
                properties=props,
            )
        except OSError as exc:
            raise PublishError(f"cannot reach MQTT broker {self.cfg.host}:{self.cfg.port}: {exc}") from exc
        self._client.loop_start()
        if not self._connected.wait(timeout):
            self._client.loop_stop()
            raise PublishError(f"MQTT broker {self.cfg.host}:{self.cfg.port} did not accept {self.device_id}")

    def publish(self, topic: str, payload: bytes) -> None:
        with self._cv:
            while self._outstanding >= self.cfg.max_inflight:
                self._cv.wait(1.0)
            self._outstanding += 1
        info = self._client.publish(topic, payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            with self._cv:
                self._outstanding -= 1
            raise PublishError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        # MQTT_ERR_NO_CONN: paho keeps QoS 1 messages and resends them after it reconnects.
        with self._cv:
            if info.mid in self._early:
                self._early.discard(info.mid)
                self._done_locked()
            else:
                self._mine.add(info.mid)

    @property
    def outstanding(self) -> int:
        with self._cv:
            return self._outstanding

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._outstanding > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 1.0))
        return True

    def close(self, timeout: float = 30.0) -> bool:
        """Wait for acknowledgements, announce "offline" and disconnect cleanly."""
        ok = self.flush(timeout)
        info = self._client.publish(state_topic(self.device_id), b"offline", qos=1, retain=True)
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(5)
        self._client.disconnect()
        self._client.loop_stop()
        return ok
