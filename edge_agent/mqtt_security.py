"""Credentials and TLS for a paho client, from the one ``MqttConfig`` (the agent and the bridge share it)."""

from __future__ import annotations

import ssl
from pathlib import Path

import paho.mqtt.client as mqtt

from edge_agent.config import ConfigError, MqttConfig


def read_secret(path: str, what: str) -> str:
    p = Path(path)
    try:
        value = p.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{what} file {p} cannot be read: {exc.strerror}") from exc
    if not value:
        raise ConfigError(f"{what} file {p} is empty")
    return value


def apply_security(client: mqtt.Client, cfg: MqttConfig, *, default_username: str | None) -> None:
    """Set the username/password and TLS options on ``client`` before it connects.

    Raises ConfigError (fail at start) when a configured file is missing or unusable."""
    username = cfg.username or default_username
    password = read_secret(cfg.password_file, "MQTT password") if cfg.password_file else None
    if username or password:
        client.username_pw_set(username, password)
    if not cfg.tls:
        return
    for name in ("ca_file", "cert_file", "key_file"):
        value = getattr(cfg, name)
        if value and not Path(value).is_file():
            raise ConfigError(f"mqtt.{name} {value} does not exist")
    if bool(cfg.cert_file) != bool(cfg.key_file):
        raise ConfigError("mqtt.cert_file and mqtt.key_file go together (mutual TLS)")
    try:
        client.tls_set(
            ca_certs=cfg.ca_file or None,
            certfile=cfg.cert_file or None,
            keyfile=cfg.key_file or None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"MQTT TLS setup failed: {exc}") from exc
