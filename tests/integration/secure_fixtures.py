"""Fixtures for the secured broker: a dev PKI, a password file, the ACL and a real mosquitto on free ports.

A broker that cannot start is a test error, never a skip.
"""

from __future__ import annotations

import queue
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import msgspec
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from common.config import MqttConfig
from common.mqtt_tls import apply_security
from devtools.secure_broker import DevPki, SecureBrokerConfig, SecureMosquitto, create_dev_pki
from ingest.ops.broker_auth import BRIDGE_USER, set_password, write_acl

TIMEOUT = 3.0

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def device_name() -> str:
    """A device-id-shaped username (32 hex digits), unique per call."""
    return secrets.token_hex(16)


@dataclass
class SecureBroker:
    """A running secured mosquitto and what a test needs to log in to it."""

    dir: Path
    pki: DevPki
    cfg: SecureBrokerConfig
    proc: SecureMosquitto
    secrets_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.secrets_dir = self.dir / "secrets"
        self.secrets_dir.mkdir(exist_ok=True)

    @property
    def port(self) -> int:
        return self.cfg.tls_port

    def add_user(self, username: str) -> Path:
        """Add ``username`` with a fresh password to the broker's password file (takes effect at the
        next start or ``reload_until``); returns the client-side password file."""
        password = secrets.token_urlsafe(24)
        set_password(self.cfg.password_file, username, password)
        path = self.secrets_dir / f"{username}.password"
        path.write_text(password + "\n")
        path.chmod(0o600)
        return path

    def password_file(self, username: str) -> Path:
        return self.secrets_dir / f"{username}.password"

    def mqtt_cfg(self, username: str, /, **over: object) -> MqttConfig:
        """The client config of a user over TLS, trusting the test CA; ``over`` replaces keys."""
        base: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.port,
            "tls": True,
            "ca_file": str(self.pki.ca.cert),
            "username": username,
            "password_file": str(self.password_file(username)),
        }
        base.update(over)
        return msgspec.convert(base, MqttConfig)

    def reload_until(self, cfg: MqttConfig, *, accepted: bool, timeout: float = 4 * TIMEOUT) -> None:
        """SIGHUP the broker, then poll until a client with ``cfg`` logs in (or is refused): no blind
        sleep. The signal goes again every second: on a busy host a CI run once saw a new user still
        refused 3 s after a single reload."""
        self.proc.reload()
        deadline = time.monotonic() + timeout
        again = time.monotonic() + 1.0
        while True:
            if time.monotonic() > again:
                self.proc.reload()
                again = time.monotonic() + 1.0
            probe = Probe(cfg, f"poll-{secrets.token_hex(4)}")
            try:
                rc = probe.connect()
            finally:
                probe.close()
            if rc is not None and (not rc.is_failure) == accepted:
                return
            if time.monotonic() > deadline:
                state = "refused" if accepted else "accepted"
                raise AssertionError(f"after a reload {cfg.username} is still {state} ({rc})")
            time.sleep(0.05)


def start_secure_broker(
    base: Path,
    *,
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"),
    require_certificate: bool = False,
    local_listener: bool = False,
) -> SecureBroker:
    pki = create_dev_pki(base / "pki", hosts=hosts)
    cfg = SecureBrokerConfig(
        state_dir=base / "broker",
        tls_port=free_port(),
        ca_file=pki.ca.cert,
        cert_file=pki.server.cert,
        key_file=pki.server.key,
        password_file=base / "passwd",
        acl_file=write_acl(base / "acl"),
        local_port=free_port() if local_listener else None,
        require_certificate=require_certificate,
    )
    broker = SecureBroker(base, pki, cfg, SecureMosquitto(cfg))
    broker.add_user(BRIDGE_USER)
    broker.proc.start()
    return broker


@pytest.fixture()
def secure_broker(tmp_path: Path) -> Iterator[SecureBroker]:
    broker = start_secure_broker(tmp_path)
    try:
        yield broker
    finally:
        broker.proc.stop()


class Probe:
    """A raw paho MQTT 5 client set up by the project's ``apply_security``; records the broker's answers.

    ``connect`` runs the network loop by hand until the CONNACK, so a refused client does not
    reconnect in the background; only an accepted one gets paho's network thread."""

    def __init__(self, cfg: MqttConfig, client_id: str, *, default_username: str | None = None) -> None:
        self.cfg = cfg
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        apply_security(self.client, cfg, default_username=default_username)
        self.connack: ReasonCode | None = None
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.disconnected = threading.Event()
        self.disconnect_rc: ReasonCode | None = None
        self._cv = threading.Condition()
        self._pubacks: dict[int, ReasonCode] = {}
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._looping = False
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object) -> None:
        self.connack = rc

    def _on_disconnect(self, c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: object) -> None:
        self.disconnect_rc = rc
        self.disconnected.set()

    def _on_publish(self, c: mqtt.Client, u: object, mid: int, rc: ReasonCode, p: object) -> None:
        with self._cv:
            self._pubacks[mid] = rc
            self._cv.notify_all()

    def _on_subscribe(self, c: mqtt.Client, u: object, mid: int, rcs: list[ReasonCode], p: object) -> None:
        with self._cv:
            self._subacks[mid] = rcs
            self._cv.notify_all()

    def connect(self, timeout: float = TIMEOUT) -> ReasonCode | None:
        """The CONNACK's reason code; None when the broker closed the connection without one.
        TLS handshake failures raise from here (ssl.SSLError, an OSError)."""
        self.client.connect(self.cfg.host, self.cfg.port, keepalive=30)
        deadline = time.monotonic() + timeout
        while self.connack is None and not self.disconnected.is_set():
            if time.monotonic() > deadline:
                raise AssertionError(f"no CONNACK and no disconnect from {self.cfg.host}:{self.cfg.port}")
            rc = self.client.loop(timeout=0.05)
            if rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
                break
        if self.connack is not None and not self.connack.is_failure:
            self.client.loop_start()
            self._looping = True
        return self.connack

    def _wait(self, table: dict[int, T], mid: int, what: str, timeout: float) -> T:
        deadline = time.monotonic() + timeout
        with self._cv:
            while mid not in table:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} for message {mid}")
                self._cv.wait(left)
            return table.pop(mid)

    def publish(self, topic: str, payload: bytes, timeout: float = TIMEOUT) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1)
        return self._wait(self._pubacks, info.mid, "PUBACK", timeout)

    def subscribe(self, topic: str, timeout: float = TIMEOUT) -> list[ReasonCode]:
        """Subscribe at QoS 1 and return the SUBACK's reason codes."""
        _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        return self._wait(self._subacks, mid, "SUBACK", timeout)

    def tls_version(self) -> str | None:
        sock = self.client.socket()
        version = getattr(sock, "version", None)
        return version() if callable(version) else None

    def close(self) -> None:
        if self._looping:
            self.client.disconnect()
            self.client.loop_stop()
            self._looping = False
        else:
            self.client.disconnect()
            self.client.loop(timeout=0.01)
        sock = self.client.socket()
        if sock is not None:
            sock.close()
