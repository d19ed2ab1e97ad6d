"""What the edge agent and the ingest share in their configuration: loading one frozen, typed struct
from TOML (unknown keys are an error), the MQTT connection and the edge ([edge]) sections, and the
error every configuration problem raises.

Secrets are file paths, never values.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from common.errors import Fatal
from common.retry import Backoff


class ConfigError(Fatal):
    """Configuration is invalid: fail at start, naming the file and the key."""


T = TypeVar("T")


Port = Annotated[int, Meta(ge=1, le=65535)]


class MqttConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Port = 1883
    keepalive_s: Annotated[int, Meta(ge=5, le=3600)] = 30
    # A publisher's unacknowledged QoS 1 messages in flight (the edge agent's; paho's default of 20
    # is far too small). What the bridge receives in flight is [bridge] max_pending.
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
    # Reconnect with the project's one retry policy (common/retry.py): after the n-th consecutive
    # failure a random wait in [0, min(reconnect_max_s, reconnect_min_s * 2**(n-1))].
    reconnect_min_s: Annotated[float, Meta(gt=0, le=3600)] = 0.5
    reconnect_max_s: Annotated[float, Meta(gt=0, le=86400)] = 60.0

    @property
    def reconnect(self) -> Backoff:
        return Backoff(self.reconnect_min_s, self.reconnect_max_s)


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
    # The agent's state for monitoring (spool depth, connection, blocks sealed/published/dropped) in
    # Prometheus text format, rewritten every metrics_interval_s (node_exporter textfile collector).
    # Empty: none.
    metrics_file: str = ""
    metrics_interval_s: Annotated[float, Meta(gt=0)] = 10.0


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
        except IsADirectoryError as exc:
            raise ConfigError(f"config file {p} is a directory: give the TOML file") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {p} cannot be read: {exc}") from exc
    try:
        return msgspec.convert(data, typ)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
