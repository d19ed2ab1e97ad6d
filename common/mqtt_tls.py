"""Credentials and TLS for an MQTT client, from the one ``MqttConfig`` (the agent and the bridge share it).

Every problem is a ConfigError raised before the client connects (fail at start), naming the
config key and the file.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from common.config import ConfigError, MqttConfig


def read_secret(path: str, what: str) -> str:
    """A one-line secret file's content without surrounding whitespace; ``what`` names the config key."""
    p = Path(path)
    try:
        value = p.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{what} {p} cannot be read: {exc.strerror}") from exc
    if not value:
        raise ConfigError(f"{what} {p} is empty")
    if "\n" in value:
        raise ConfigError(f"{what} {p} has more than one line")
    return value


def write_secret(path: Path, text: str) -> None:
    """A new private (0600) file holding ``text``, on disk before this returns; an existing file
    is never replaced (FileExistsError)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and a daemon would hang there.
    raise ConfigError("mqtt.key_file is encrypted; the client key must be stored without a passphrase")


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """A client context that verifies the broker's certificate and host name (TLS 1.2 or later)."""
    for name in ("ca_file", "cert_file", "key_file"):
        value = getattr(cfg, name)
        if value and not Path(value).is_file():
            raise ConfigError(f"mqtt.{name} {value} does not exist")
    if bool(cfg.cert_file) != bool(cfg.key_file):
        raise ConfigError("mqtt.cert_file and mqtt.key_file go together (mutual TLS)")
    try:
        # With a ca_file only that CA is trusted; without one, the system's CAs.
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ca_file or None)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"mqtt.ca_file {cfg.ca_file} is not a usable CA certificate: {exc}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.cert_file:
        try:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file, password=_no_passphrase)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"mqtt.cert_file {cfg.cert_file} / mqtt.key_file {cfg.key_file} are not a usable pair: {exc}"
            ) from exc
    return ctx


@dataclass(frozen=True)
class Security:
    """What a client presents to the broker, read and checked once from ``MqttConfig``."""

    username: str | None
    password: str | None
    tls: ssl.SSLContext | None


def security(cfg: MqttConfig, *, default_username: str | None) -> Security:
    """The credentials and TLS context ``cfg`` asks for.

    ``default_username`` is used when ``mqtt.username`` is empty (the agent passes its device id).
    Raises ConfigError (fail at start) when a configured file is missing or unusable, when a
    password has no username, or when TLS files are set while ``mqtt.tls`` is off (the password
    would otherwise travel in clear text to a broker the operator meant to reach over TLS)."""
    username = cfg.username or default_username
    password = None
    if cfg.password_file:
        password = read_secret(cfg.password_file, "mqtt.password_file")
        if not username:
            raise ConfigError(f"mqtt.password_file {cfg.password_file} is set but mqtt.username is empty")
    if not cfg.tls:
        for name in ("ca_file", "cert_file", "key_file"):
            if getattr(cfg, name):
                raise ConfigError(f"mqtt.{name} is set but mqtt.tls is false; set tls = true or clear it")
    return Security(username or None, password, tls_context(cfg) if cfg.tls else None)


def apply_security(client: mqtt.Client, cfg: MqttConfig, *, default_username: str | None) -> None:
    """Set :func:`security`'s username/password and TLS options on a paho ``client`` before it
    connects (same errors)."""
    sec = security(cfg, default_username=default_username)
    if sec.username:
        client.username_pw_set(sec.username, sec.password)
    if sec.tls is None:
        return
    try:
        client.tls_set_context(sec.tls)
    except ValueError as exc:
        raise ConfigError(f"MQTT TLS setup failed: {exc}") from exc
