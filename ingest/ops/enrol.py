"""Enrol one vehicle: its signing key, its broker password, its registry entry and its agent config.

``python -m ingest.ops.enrol --out bundles/van-17 --passwd-file /etc/mosquitto/passwd \\
--broker-host mqtt.example.net --ca-file /etc/mosquitto/certs/ca.crt`` (or deploy/edge/enrol-device.sh)
writes a bundle directory for the vehicle::

    device.key        Ed25519 signing key, PKCS#8 PEM, 0600 (the device id is derived from it)
    device.key.pub    its public key, hex
    mqtt.password     the vehicle's MQTT password, 0600
    ca.crt            the CA that signed the broker's certificate
    edge-agent.toml   mqtt host/port, tls = true, username = device id; paths under --vehicle-dir

and, on the ingest side, adds ``<device id>:<hash>`` to the broker's password file (mosquitto reads
it at start and on SIGHUP) and the public key to the device registry (as ``telematics devices add``).

Nothing is half done: the bundle is assembled in a hidden staging directory (mode 0700), the
password is added, the bundle is renamed into place, and the registry entry, the one step
without an undo, comes last; a failure before it removes the password entry and the bundle.
An existing bundle is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
from cryptography import x509

from common.config import ConfigError, EdgeConfig, MqttConfig, load_toml
from common.errors import Fatal
from common.keys import KeyFileError, generate_key_file
from common.mqtt_tls import write_secret
from ingest import cli_args
from ingest.config import Config, load_config
from ingest.ops.broker_auth import MqttSecurityError, delete_password, password_users, set_password
from ingest.storage.registry import Registry, RegistryError
from schemas.crypto import device_id_for, key_id_for

KEY_FILE = "device.key"
PASSWORD_FILE = "mqtt.password"
CA_FILE = "ca.crt"
AGENT_CONFIG = "edge-agent.toml"


class EnrolError(Fatal):
    """Enrolment refused or failed; nothing was left half done (the message says what, if anything, was)."""


@dataclass(frozen=True)
class Enrolment:
    device_id: str
    key_id: str
    public_key: bytes
    bundle: Path
    agent_config: Path
    vehicle_dir: str


def _toml_str(s: str) -> str:
    # A JSON string without \\u escapes for non-ASCII is a valid TOML basic string, except DEL.
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


class _VehicleConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The sections of the vehicle's edge-agent.toml that enrolment writes."""

    mqtt: MqttConfig
    edge: EdgeConfig


def agent_toml(
    *, device_id: str, broker_host: str, broker_port: int, vehicle_dir: str, state_dir: str
) -> str:
    v, st = vehicle_dir.rstrip("/") or "/", state_dir.rstrip("/") or "/"
    return "\n".join(
        [
            f"# edge-agent configuration of device {device_id}, written by `python -m ingest.ops.enrol`.",
            f"# Files live in {v} on the vehicle; the agent's spool in {st}.",
            "# Every other key keeps its default (see deploy/config/edge-agent.example.toml).",
            "",
            "[mqtt]",
            f"host = {_toml_str(broker_host)}",
            f"port = {broker_port}",
            "tls = true",
            f"ca_file = {_toml_str(f'{v}/{CA_FILE}')}",
            "# The broker's ACL lets this user publish to vehicles/<username>/# only.",
            f"username = {_toml_str(device_id)}",
            f"password_file = {_toml_str(f'{v}/{PASSWORD_FILE}')}",
            "",
            "[edge]",
            f"key_path = {_toml_str(f'{v}/{KEY_FILE}')}",
            "# The enrolment id; keep it after a key rotation so that the device keeps its chain.",
            f"device_id = {_toml_str(device_id)}",
            "# Chain state and unacknowledged blocks (SQLite); the unit's StateDirectory.",
            f"spool_path = {_toml_str(f'{st}/spool.sqlite')}",
            "",
        ]
    )


def _check_ca(ca_file: Path) -> None:
    try:
        x509.load_pem_x509_certificates(ca_file.read_bytes())
    except OSError as exc:
        raise EnrolError(f"CA file {ca_file} cannot be read: {exc.strerror}") from exc
    except ValueError as exc:
        raise EnrolError(f"CA file {ca_file} holds no PEM certificate: {exc}") from exc


def enrol_device(
    cfg: Config,
    *,
    out: str | Path,
    passwd_file: str | Path,
    broker_host: str,
    broker_port: int = 8883,
    ca_file: str | Path,
    vehicle_dir: str = "/etc/edge-agent",
    state_dir: str = "/var/lib/edge-agent",
    label: str | None = None,
    owner_key: bytes | None = None,
) -> Enrolment:
    """Enrol one vehicle into the bundle directory ``out`` (which must not exist, or be empty);
    ``owner_key``: its owner from now on (docs/CONSENT.md), recorded once the vehicle is enrolled."""
    bundle, passwd, ca = Path(out), Path(passwd_file), Path(ca_file)
    if bundle.exists() and (not bundle.is_dir() or any(bundle.iterdir())):
        raise EnrolError(f"bundle {bundle} exists already; refusing to overwrite it")
    if not 1 <= broker_port <= 65535:
        raise EnrolError(f"broker port {broker_port} is not a TCP port")
    _check_ca(ca)
    bundle.parent.mkdir(parents=True, exist_ok=True)
    staging = bundle.parent / f".{bundle.name}.enrol-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700)
    registry: Registry | None = None
    added_password = False
    device_id = ""
    try:
        key = generate_key_file(staging / KEY_FILE)
        pub = key.public_key
        device_id, key_id = device_id_for(pub), key_id_for(pub)
        write_secret(staging / PASSWORD_FILE, secrets.token_urlsafe(32) + "\n")
        shutil.copyfile(ca, staging / CA_FILE)
        config_path = staging / AGENT_CONFIG
        config_path.write_text(
            agent_toml(
                device_id=device_id,
                broker_host=broker_host,
                broker_port=broker_port,
                vehicle_dir=vehicle_dir,
                state_dir=state_dir,
            )
        )
        # The written file must be one the agent accepts (the sections written are the shared ones).
        load_toml(config_path, _VehicleConfig)

        registry = Registry(cfg.path(cfg.registry.path))
        if registry.keys_of(device_id):
            raise EnrolError(f"device {device_id} is already in the registry {registry.path}")
        if device_id in password_users(passwd):
            raise EnrolError(f"device {device_id} already has a password in {passwd}")
        password = (staging / PASSWORD_FILE).read_text().strip()
        set_password(passwd, device_id, password, replace=False)
        added_password = True
        staging.rename(bundle)
        staging = bundle
        # Last: the registry has no undo (a revocation is not a deletion).
        registry.add(pub, label=label)
    except BaseException as exc:
        undone = ""
        if added_password:
            try:
                delete_password(passwd, device_id)
            except MqttSecurityError as undo_exc:
                undone = f"; REMOVE user {device_id} from {passwd} by hand: {undo_exc}"
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, EnrolError) and not undone:
            raise
        expected = (
            EnrolError,
            KeyFileError,
            MqttSecurityError,
            RegistryError,
            ConfigError,
            OSError,
            sqlite3.Error,
        )
        if isinstance(exc, expected):
            raise EnrolError(f"enrolment of {bundle} failed: {exc}{undone}") from exc
        raise
    finally:
        if registry is not None:
            registry.close()
    if owner_key is not None:
        _record_owner(cfg, device_id, owner_key, bundle)
    return Enrolment(device_id, key_id, pub, bundle, bundle / AGENT_CONFIG, vehicle_dir)


def _record_owner(cfg: Config, device_id: str, owner_key: bytes, bundle: Path) -> None:
    """After the registry entry (which has no undo): a failure here leaves an enrolled vehicle."""
    from ingest.storage.consent import ConsentStore, OwnershipError

    try:
        store = ConsentStore(cfg.path(cfg.consent.path))
        try:
            store.set_owner(device_id, owner_key, time.time_ns())
        finally:
            store.close()
    except (OwnershipError, sqlite3.Error, OSError) as exc:
        raise EnrolError(
            f"device {device_id} is enrolled ({bundle}) but its owner was not recorded: {exc};"
            f" run `telematics owners set --device {device_id} --owner-key {owner_key.hex()}`"
        ) from exc


def instructions(e: Enrolment, passwd_file: str | Path, service_user: str = "edge-agent") -> str:
    v = e.vehicle_dir.rstrip("/") or "/"
    b = e.bundle
    return "\n".join(
        [
            f"enrolled device {e.device_id} (key {e.key_id}) into {b}",
            f"  broker: {passwd_file} has user {e.device_id}; reload the broker to let it in:"
            " systemctl reload mosquitto (or kill -HUP its pid)",
            "  registry: its public key is registered (telematics devices list)",
            f"copy to the vehicle's {v} (as deploy/edge/install-pi.sh expects), e.g. from the copied bundle:",
            f"  sudo install -m 0640 -o root -g {service_user} edge-agent.toml ca.crt {v}/",
            f"  sudo install -m 0600 -o {service_user} -g {service_user} device.key mqtt.password {v}/",
            f"then: sudo systemctl enable --now edge-agent  (edge-agent --config {v}/{AGENT_CONFIG} run)",
            f"and delete {b} here once the vehicle has it: it holds the device's private key.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ingest.ops.enrol",
        description="Enrol one vehicle: key, MQTT password, registry entry and edge-agent.toml in a new bundle.",
    )
    p.add_argument("--config", help="ingest TOML (default: $TELEMATICS_CONFIG, else the defaults)")
    p.add_argument("--out", required=True, help="bundle directory to create (must not exist)")
    p.add_argument(
        "--passwd-file", required=True, help="the broker's password file (mosquitto password_file)"
    )
    p.add_argument(
        "--broker-host", required=True, help="broker host name as the vehicle dials it (in its certificate)"
    )
    p.add_argument("--broker-port", type=int, default=8883, help="broker TLS port (default 8883)")
    p.add_argument("--ca-file", required=True, help="CA certificate that signed the broker's certificate")
    p.add_argument("--vehicle-dir", default="/etc/edge-agent", help="where the bundle goes on the vehicle")
    p.add_argument(
        "--state-dir", default="/var/lib/edge-agent", help="the agent's state directory on the vehicle"
    )
    p.add_argument("--label", help="registry label, e.g. the vehicle's fleet number")
    p.add_argument(
        "--owner-key",
        type=cli_args.public_key,
        help="the owner's Ed25519 public key (hex or .pub): only its grants release the vehicle's data",
    )
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        e = enrol_device(
            cfg,
            out=args.out,
            passwd_file=args.passwd_file,
            broker_host=args.broker_host,
            broker_port=args.broker_port,
            ca_file=args.ca_file,
            vehicle_dir=args.vehicle_dir,
            state_dir=args.state_dir,
            label=args.label,
            owner_key=args.owner_key,
        )
    except (EnrolError, ConfigError) as exc:
        print(f"enrol: {exc}", file=sys.stderr)
        return 1
    print(instructions(e, args.passwd_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
