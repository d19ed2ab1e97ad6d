"""The edge agent's configuration: one frozen, typed struct decoded once from TOML.

Unknown keys are an error. Secrets are file paths, never values.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from edge_agent.can_config import CanConfig
from edge_agent.collect import CollectConfig
from edge_agent.errors import ConfigError
from edge_agent.gnss import GnssConfig
from edge_agent.privacy import PrivacyConfig

__all__ = ["AgentConfig", "ConfigError", "EdgeConfig", "MqttConfig", "load_toml"]

T = TypeVar("T")

Port = Annotated[int, Meta(ge=1, le=65535)]


class MqttConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Port = 1883
    keepalive_s: Annotated[int, Meta(ge=5, le=3600)] = 30
    # Unacknowledged QoS 1 messages in flight per client (paho's default of 20 is far too small).
    max_inflight: Annotated[int, Meta(ge=1, le=65535)] = 1000
    session_expiry_s: Annotated[int, Meta(ge=0)] = 86400
    # Credentials. Empty username: the device id (the broker's ACL pattern `vehicles/%u/#`).
    # The password is read from a file (a secret is a path, never a value); empty: no password.
    username: str = ""
    password_file: str = ""
    # TLS: on when `tls` is true. `ca_file` verifies the broker (empty: the system CAs); a client
    # certificate (`cert_file` + `key_file`) is optional, for brokers that require mutual TLS.
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    # Reconnect with exponential backoff and full jitter: a random wait in
    # [0, min(reconnect_max_s, reconnect_min_s * 2**attempt)].
    reconnect_min_s: Annotated[float, Meta(gt=0)] = 0.5
    reconnect_max_s: Annotated[float, Meta(gt=0)] = 60.0


class EdgeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    key_path: str = "device.key"
    # Empty: derived from the key (enrolment). After a key rotation, set it to the enrolment id:
    # the device keeps its id and its chain while it signs with the new key.
    device_id: Annotated[str, Meta(pattern="^([0-9a-f]{32})?$")] = ""
    # The spool (SQLite): chain state (boot counter, next sequence number, chain head) and every
    # signed block the broker has not acknowledged yet. Survives SIGKILL and power loss.
    spool_path: str = "spool.sqlite"
    # Spool bounds: beyond them the oldest blocks are dropped (and the drop declared, signed, in a
    # later block). 0 = no age limit.
    spool_max_bytes: Annotated[int, Meta(ge=65536)] = 256 << 20
    spool_max_age_s: Annotated[float, Meta(ge=0)] = 7 * 86400.0
    # Backlog blocks published per call of the agent loop, after the live one.
    replay_burst: Annotated[int, Meta(ge=1, le=10_000)] = 50
    # Backlog blocks replayed per second at most: below the ingest's per-device quota
    # (bridge.device_quota_msgs_per_s, default 200), so a replay is never refused. One day offline
    # at one block a second (86,400 blocks) replays in 14.4 minutes beside the live blocks.
    replay_max_per_s: Annotated[float, Meta(gt=0)] = 100.0
    # After a block was not delivered (no subscriber, refused, connection lost), wait this long
    # before replaying again.
    retry_s: Annotated[float, Meta(gt=0, le=3600)] = 2.0
    block_max_records: Annotated[int, Meta(ge=1, le=10_000)] = 100
    block_max_age_ms: Annotated[int, Meta(ge=1)] = 1000
    # fsync every spool commit (turn off only for simulations).
    fsync: bool = True
    sample_rate_hz: Annotated[float, Meta(gt=0, le=1000)] = 10.0


class SourceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Where signals come from: "simulator" (the built-in vehicle model, paced to the wall clock)
    # or "can" (a CAN bus decoded with the DBC of [can]).
    kind: Literal["simulator", "can"] = "simulator"
    # Also read position from an NMEA 0183 GNSS receiver ([gnss]).
    gnss: bool = False


class AgentConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    mqtt: MqttConfig = MqttConfig()
    edge: EdgeConfig = EdgeConfig()
    source: SourceConfig = SourceConfig()
    can: CanConfig = CanConfig()
    gnss: GnssConfig = GnssConfig()
    collect: CollectConfig = CollectConfig()
    privacy: PrivacyConfig = PrivacyConfig()


def load_toml(path: str | Path | None, typ: type[T]) -> T:
    """Decode a TOML file into ``typ``; ``None`` gives the embedded defaults."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {p} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    try:
        return msgspec.convert(data, typ)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
