"""A secured mosquitto: TLS listener, a password per device, an ACL that confines each device to its topics.

The pieces, each usable alone:

* a development / test PKI made with trustme: a CA, a server certificate for the broker's
  names (``localhost``, ``127.0.0.1``, ``::1`` by default) and optional client certificates.
  Production brokers get their certificate from the operator's CA (deploy/mosquitto/README.md);
* the mosquitto configuration (the same shape as deploy/mosquitto/mosquitto.conf) and the ACL
  (the same rules as deploy/mosquitto/acl);
* password entries, added, replaced and deleted with ``mosquitto_passwd`` (the password goes to
  its standard input, never onto a command line where ``ps`` would show it);
* ``SecureMosquitto``: start, reload (SIGHUP) and stop such a broker, for tests and local trials.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import trustme

from devtools.stack import StackError, port_open
from ingest.config import BridgeConfig
from ingest.ops.broker_auth import MqttSecurityError

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


# -- PKI -------------------------------------------------------------------------------------------------
# Made with trustme: this PKI serves development and tests only. Production enrolment never makes
# certificates (ingest.ops.enrol checks the operator's CA file); the broker's certificate comes from
# the operator's CA (deploy/mosquitto/README.md).


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its PEM private key (mode 0600)."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class DevPki:
    """A development CA and the broker's server certificate, in one directory."""

    dir: Path
    ca: CertPair
    server: CertPair

    def issue_client(self, name: str) -> CertPair:
        """A client certificate (CN = ``name``) for brokers that require mutual TLS."""
        try:
            ca = trustme.CA.from_pem(self.ca.cert.read_bytes(), self.ca.key.read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            raise MqttSecurityError(f"CA {self.ca.cert} / {self.ca.key} cannot be loaded: {exc}") from exc
        return _write_pair(self.dir, name, ca.issue_cert(name, common_name=name))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write a file that must not exist yet (a key or certificate is never silently replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise MqttSecurityError(f"{path} exists already; refusing to overwrite it") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_pair(out: Path, name: str, leaf: trustme.LeafCert) -> CertPair:
    pair = CertPair(out / f"{name}.crt", out / f"{name}.key")
    _write_new(pair.key, leaf.private_key_pem.bytes(), 0o600)
    _write_new(pair.cert, b"".join(pem.bytes() for pem in leaf.cert_chain_pems), 0o644)
    return pair


def create_dev_pki(
    out_dir: str | Path, *, hosts: Sequence[str] = DEFAULT_HOSTS, ca_name: str = "telematics dev CA"
) -> DevPki:
    """A CA (``ca.crt``/``ca.key``) and a server certificate (``server.crt``/``server.key``) for
    ``hosts`` in ``out_dir``. For development and tests only."""
    out = Path(out_dir)
    ca = trustme.CA(organization_name=ca_name)
    pair = CertPair(out / "ca.crt", out / "ca.key")
    _write_new(pair.key, ca.private_key_pem.bytes(), 0o600)
    _write_new(pair.cert, ca.cert_pem.bytes(), 0o644)
    server = _write_pair(out, "server", ca.issue_cert(*hosts, common_name="server"))
    return DevPki(out, pair, server)


# -- ACL and broker configuration ------------------------------------------------------------------------


@dataclass(frozen=True)
class SecureBrokerConfig:
    """Where a secured mosquitto listens and which files it uses."""

    state_dir: Path
    tls_port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    password_file: Path
    acl_file: Path
    bind: str = "127.0.0.1"
    # A plain listener on 127.0.0.1 for a bridge on the same host (passwords still required); None: none.
    local_port: int | None = None
    # Mutual TLS: clients must present a certificate from ca_file (and still log in with a password).
    require_certificate: bool = False
    # The client id becomes the username on the TLS listener: a device cannot take over another
    # device's session (or disconnect it) by connecting with that device's client id.
    username_as_clientid: bool = True
    # The broker's packet limit: [bridge] max_packet_bytes of the pipeline's config.
    max_packet_bytes: int = BridgeConfig().max_packet_bytes

    @property
    def conf_path(self) -> Path:
        return self.state_dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "mosquitto.log"


def secure_mosquitto_conf(c: SecureBrokerConfig) -> str:
    """The mosquitto.conf for ``c``; mosquitto wants comments on their own lines."""
    paths = (c.state_dir, c.ca_file, c.cert_file, c.key_file, c.password_file, c.acl_file)
    for path in paths:
        if any(ch.isspace() for ch in str(path)):
            raise MqttSecurityError(f"mosquitto.conf cannot hold the path {str(path)!r}: it has whitespace")
    lines = [
        "# generated by devtools.secure_broker; edits are overwritten",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {c.password_file}",
        f"acl_file {c.acl_file}",
        "persistence true",
        f"persistence_location {c.state_dir}/",
        "# write the persistence file after every change (it still acknowledges before it writes)",
        "autosave_on_changes true",
        "autosave_interval 1",
        "# queue for offline persistent sessions (the bridge) without dropping",
        "max_queued_messages 1000000",
        "max_inflight_messages 0",
        "persistent_client_expiration 7d",
        "# refuse packets above [bridge] max_payload_bytes plus the topic and properties (MQTT 5 0x95)",
        f"max_packet_size {c.max_packet_bytes}",
        f"log_dest file {c.log_path}",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if os.geteuid() == 0:
        lines += [
            "# started as root (a test): keep root instead of dropping to the mosquitto user, which",
            "# could not read the test's private directories",
            "user root",
        ]
    lines += [
        "# devices: TLS only",
        f"listener {c.tls_port} {c.bind}",
        "protocol mqtt",
        f"cafile {c.ca_file}",
        f"certfile {c.cert_file}",
        f"keyfile {c.key_file}",
        "tls_version tlsv1.2",
        f"require_certificate {'true' if c.require_certificate else 'false'}",
        f"use_username_as_clientid {'true' if c.username_as_clientid else 'false'}",
    ]
    if c.local_port is not None:
        lines += [
            "# the ingest bridge on the same host: loopback only, password and ACL still apply",
            f"listener {c.local_port} 127.0.0.1",
            "protocol mqtt",
        ]
    return "\n".join([*lines, ""])


# -- password file ---------------------------------------------------------------------------------------


# -- the broker process ----------------------------------------------------------------------------------


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class SecureMosquitto:
    """A secured mosquitto started from ``SecureBrokerConfig`` (tests, local trials).

    ``start`` raises StackError when it exits or does not listen in time; the message carries its
    output and log. Use as a context manager, or call ``stop``."""

    def __init__(
        self, cfg: SecureBrokerConfig, *, mosquitto_bin: str | None = None, conf_text: str | None = None
    ) -> None:
        """``conf_text`` replaces the generated configuration (for example the production example
        with its paths and ports rewritten); ``cfg`` still says which ports to wait for."""
        self.cfg = cfg
        self.conf_text = conf_text
        self.bin = mosquitto_bin or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def out_path(self) -> Path:
        return self.cfg.state_dir / "mosquitto.out"

    def _ports(self) -> list[int]:
        return [self.cfg.tls_port] + ([self.cfg.local_port] if self.cfg.local_port is not None else [])

    def _fail(self, what: str) -> StackError:
        return StackError(
            f"secured mosquitto {what}; config {self.cfg.conf_path}\n"
            f"--- {self.out_path}\n{_tail(self.out_path)}\n--- {self.cfg.log_path}\n{_tail(self.cfg.log_path)}"
        )

    def start(self, timeout: float = 10.0) -> SecureMosquitto:
        if not Path(self.bin).exists():
            raise StackError("mosquitto is not installed (Debian: apt-get install -y mosquitto)")
        for f in (
            self.cfg.ca_file,
            self.cfg.cert_file,
            self.cfg.key_file,
            self.cfg.password_file,
            self.cfg.acl_file,
        ):
            if not Path(f).is_file():
                raise StackError(f"secured mosquitto: {f} does not exist")
        host = self.cfg.bind
        for port in self._ports():
            if port_open(host if port == self.cfg.tls_port else "127.0.0.1", port):
                raise StackError(f"port {port} for the secured mosquitto is taken by another process")
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.cfg.conf_path.write_text(
            self.conf_text if self.conf_text is not None else secure_mosquitto_conf(self.cfg)
        )
        with self.out_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [self.bin, "-c", str(self.cfg.conf_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        for port in self._ports():
            h = host if port == self.cfg.tls_port else "127.0.0.1"
            while not port_open(h, port, timeout=0.2):
                if self.proc.poll() is not None:
                    self.proc = None
                    raise self._fail("exited at start")
                if time.monotonic() > deadline:
                    self.stop()
                    raise self._fail(f"does not listen on {h}:{port} after {timeout} s")
                time.sleep(0.02)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads the password file and the ACL (not the listeners)."""
        if not self.running or self.proc is None:
            raise StackError("secured mosquitto is not running")
        self.proc.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def __enter__(self) -> SecureMosquitto:
        return self.start() if self.proc is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m devtools.secure_broker dev-pki --out DIR [--host NAME ...]``: a development PKI."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m devtools.secure_broker", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dev-pki", help="a development CA and broker certificate (not for production)")
    d.add_argument("--out", required=True, help="directory for ca.crt, ca.key, server.crt, server.key")
    d.add_argument(
        "--host",
        action="append",
        help="a name or IP the clients dial (repeatable; default localhost, 127.0.0.1, ::1)",
    )
    d.add_argument(
        "--client", action="append", default=[], help="also issue a client certificate with this CN"
    )
    args = p.parse_args(argv)
    try:
        pki = create_dev_pki(args.out, hosts=args.host or DEFAULT_HOSTS)
        clients = [pki.issue_client(name) for name in args.client]
    except MqttSecurityError as exc:
        print(f"mqtt_secure: {exc}", file=sys.stderr)
        return 1
    for pair in (pki.ca, pki.server, *clients):
        print(f"{pair.cert}  (key {pair.key}, mode 0600)")
    print("broker: cafile/certfile/keyfile = ca.crt/server.crt/server.key; vehicles get ca.crt only")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
