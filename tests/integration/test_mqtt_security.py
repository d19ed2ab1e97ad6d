"""The secured broker against the real mosquitto: TLS, a password per device, the per-device ACL,
enrolment, revocation, and the production example files (deploy/mosquitto/)."""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from common.config import ConfigError, MqttConfig, load_toml
from common.keys import load_key_file
from common.mqtt_tls import apply_security
from devtools.secure_broker import SecureBrokerConfig, SecureMosquitto, create_dev_pki
from devtools.stack import StackError
from edge_agent.config import AgentConfig
from edge_agent.publisher import MqttPublisher
from ingest.config import Config
from ingest.ops.broker_auth import BRIDGE_USER, acl_rules, delete_password, password_users, set_password
from ingest.ops.enrol import EnrolError, enrol_device
from ingest.storage.consent import ConsentStore
from ingest.storage.registry import Registry, RegistryError
from schemas.crypto import SigningKey
from schemas.transport import blocks_topic, state_topic
from tests.integration.secure_fixtures import (
    TIMEOUT,
    Probe,
    SecureBroker,
    device_name,
    free_port,
    secure_broker,
    start_secure_broker,
)

__all__ = ["secure_broker"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

REPO = Path(__file__).resolve().parents[2]
NOT_AUTHORIZED = 135
BAD_USER_OR_PASSWORD = 134
SHARED_BLOCKS = "$share/ingest/vehicles/+/blocks"


@pytest.fixture()
def bridge(secure_broker: SecureBroker) -> Iterator[Probe]:
    """The bridge user over TLS, on the bridge's own shared subscription."""
    probe = connected(secure_broker.mqtt_cfg(BRIDGE_USER), "bridge-test")
    assert [rc.value for rc in probe.subscribe(SHARED_BLOCKS)] == [1]
    try:
        yield probe
    finally:
        probe.close()


def connected(cfg: MqttConfig, client_id: str) -> Probe:
    probe = Probe(cfg, client_id)
    rc = probe.connect()
    assert rc is not None and not rc.is_failure, f"{cfg.username} refused: {rc}"
    return probe


def accepted(rc: ReasonCode) -> bool:
    """A PUBACK below 128: success, or "no matching subscribers" (16) when nobody listens."""
    return not rc.is_failure


def receive(probe: Probe, timeout: float = TIMEOUT) -> tuple[str, bytes]:
    msg = probe.messages.get(timeout=timeout)
    return msg.topic, bytes(msg.payload)


# -- 1. TLS with the test CA ------------------------------------------------------------------------------


def test_device_publishes_over_tls_and_the_bridge_receives_the_exact_bytes(
    secure_broker: SecureBroker, bridge: Probe
) -> None:
    dev = device_name()
    secure_broker.add_user(dev)
    secure_broker.reload_until(secure_broker.mqtt_cfg(dev), accepted=True)
    # An empty username means the device id: the ACL's %u.
    cfg = secure_broker.mqtt_cfg(dev, username="")
    payload = secrets.token_bytes(4096) + b"\x00\xff"
    pub = MqttPublisher(cfg, dev)
    pub.connect(timeout=TIMEOUT)
    try:
        pub.publish(blocks_topic(dev), payload)
        assert pub.flush(TIMEOUT)
    finally:
        assert pub.close(TIMEOUT)
    assert receive(bridge) == (blocks_topic(dev), payload)
    assert bridge.tls_version() in ("TLSv1.2", "TLSv1.3")


# -- 2. and 5. the per-device ACL -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "vehicles/{other}/blocks",
        "vehicles/{other}/state",
        "vehicles/{me}0/blocks",
        "vehicles",
        "elsewhere/{me}",
    ],
)
def test_a_device_cannot_publish_outside_its_own_topics(secure_broker: SecureBroker, topic: str) -> None:
    me, other = device_name(), device_name()
    secure_broker.add_user(me)
    secure_broker.add_user(other)
    secure_broker.reload_until(secure_broker.mqtt_cfg(other), accepted=True)
    watcher = connected(secure_broker.mqtt_cfg(BRIDGE_USER), "watcher")
    intruder = connected(secure_broker.mqtt_cfg(me), me)
    victim = connected(secure_broker.mqtt_cfg(other), other)
    try:
        assert [rc.value for rc in watcher.subscribe("vehicles/#")] == [1]
        rc = intruder.publish(topic.format(me=me, other=other), b"forged")
        assert rc.value == NOT_AUTHORIZED, rc
        # The device's own topic still works: it is the ACL, not the connection.
        assert accepted(intruder.publish(blocks_topic(me), b"mine"))
        assert accepted(victim.publish(blocks_topic(other), b"sentinel"))
        # One broker loop handled all three in this order: a forged message that got through
        # would reach the watcher first.
        assert [receive(watcher), receive(watcher)] == [
            (blocks_topic(me), b"mine"),
            (blocks_topic(other), b"sentinel"),
        ]
    finally:
        watcher.close()
        intruder.close()
        victim.close()


def test_devices_are_write_only(secure_broker: SecureBroker, bridge: Probe) -> None:
    me, other = device_name(), device_name()
    secure_broker.add_user(me)
    secure_broker.add_user(other)
    secure_broker.reload_until(secure_broker.mqtt_cfg(other), accepted=True)
    spy = connected(secure_broker.mqtt_cfg(me), me)
    victim = connected(secure_broker.mqtt_cfg(other), other)
    try:
        filters = [
            f"vehicles/{other}/#",
            "vehicles/+/blocks",
            "#",
            SHARED_BLOCKS.replace("ingest", "spy"),
            f"vehicles/{me}/#",
        ]
        suback = {f: [rc.value for rc in spy.subscribe(f)] for f in filters}
        # mosquitto 2.0.11 grants a SUBACK outside the ACL (it checks reads at delivery); a later
        # version may refuse with 135. Either way nothing may arrive.
        for f, codes in suback.items():
            assert codes in ([1], [NOT_AUTHORIZED]), (f, codes)
        assert accepted(victim.publish(blocks_topic(other), b"private"))
        assert accepted(spy.publish(state_topic(me), b"own"))
        assert receive(bridge) == (blocks_topic(other), b"private")
        # A second round trip of the spy's own: anything queued for it before would have come first.
        assert accepted(spy.publish(blocks_topic(me), b"own again"))
        assert receive(bridge) == (blocks_topic(me), b"own again")
        assert spy.messages.empty()
    finally:
        spy.close()
        victim.close()


def test_a_device_cannot_take_over_another_devices_session(secure_broker: SecureBroker) -> None:
    me, other = device_name(), device_name()
    secure_broker.add_user(me)
    secure_broker.add_user(other)
    secure_broker.reload_until(secure_broker.mqtt_cfg(other), accepted=True)
    victim = connected(secure_broker.mqtt_cfg(other), other)
    # Same client id as the victim, own credentials: the TLS listener renames it to its username.
    intruder = connected(secure_broker.mqtt_cfg(me), other)
    try:
        assert accepted(victim.publish(blocks_topic(other), b"still here"))
        assert not victim.disconnected.is_set()
    finally:
        intruder.close()
        victim.close()


# -- 3. authentication ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["wrong password", "unknown user", "anonymous"])
def test_bad_credentials_are_refused(secure_broker: SecureBroker, tmp_path: Path, case: str) -> None:
    dev = device_name()
    secure_broker.add_user(dev)
    secure_broker.reload_until(secure_broker.mqtt_cfg(dev), accepted=True)
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    if case == "wrong password":
        cfg = secure_broker.mqtt_cfg(dev, password_file=str(wrong))
    elif case == "unknown user":
        cfg = secure_broker.mqtt_cfg(device_name(), password_file=str(wrong))
    else:
        cfg = secure_broker.mqtt_cfg("", password_file="")
    probe = Probe(cfg, device_name())
    try:
        rc = probe.connect()
    finally:
        probe.close()
    assert rc is not None, "no CONNACK"
    assert rc.value in (BAD_USER_OR_PASSWORD, NOT_AUTHORIZED), rc


# -- 4. TLS verification ----------------------------------------------------------------------------------


def test_a_client_trusting_another_ca_fails_the_handshake(
    secure_broker: SecureBroker, tmp_path: Path
) -> None:
    other_pki = create_dev_pki(tmp_path / "other-pki", ca_name="someone else's CA")
    cfg = secure_broker.mqtt_cfg(BRIDGE_USER, ca_file=str(other_pki.ca.cert))
    probe = Probe(cfg, "distrustful")
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            probe.connect()
    finally:
        probe.close()


def test_plain_mqtt_to_the_tls_port_gets_no_connack(secure_broker: SecureBroker) -> None:
    cfg = secure_broker.mqtt_cfg(BRIDGE_USER, tls=False, ca_file="")
    probe = Probe(cfg, "plaintext")
    try:
        rc = probe.connect()
    finally:
        probe.close()
    assert rc is None
    assert probe.disconnected.is_set()


def test_the_broker_name_must_match_its_certificate(tmp_path: Path) -> None:
    broker = start_secure_broker(tmp_path, hosts=("mqtt.fleet.internal",))
    try:
        probe = Probe(broker.mqtt_cfg(BRIDGE_USER), "by-ip")
        try:
            with pytest.raises(ssl.SSLCertVerificationError, match=r"IP address mismatch|hostname mismatch"):
                probe.connect()
        finally:
            probe.close()
    finally:
        broker.proc.stop()


def test_mutual_tls_requires_a_client_certificate(tmp_path: Path) -> None:
    broker = start_secure_broker(tmp_path, require_certificate=True)
    try:
        dev = device_name()
        broker.add_user(dev)
        client = broker.pki.issue_client(dev)
        with_cert = broker.mqtt_cfg(dev, cert_file=str(client.cert), key_file=str(client.key))
        broker.reload_until(with_cert, accepted=True)
        probe = connected(with_cert, dev)
        try:
            assert accepted(probe.publish(blocks_topic(dev), b"mtls"))
        finally:
            probe.close()
        bare = Probe(broker.mqtt_cfg(dev), dev)
        try:
            try:
                rc = bare.connect()
            except (ssl.SSLError, OSError):
                rc = None
        finally:
            bare.close()
        assert rc is None
    finally:
        broker.proc.stop()


# -- revocation -------------------------------------------------------------------------------------------


def test_a_revoked_device_is_disconnected_and_refused(secure_broker: SecureBroker) -> None:
    dev = device_name()
    secure_broker.add_user(dev)
    cfg = secure_broker.mqtt_cfg(dev)
    secure_broker.reload_until(cfg, accepted=True)
    probe = connected(cfg, dev)
    try:
        assert delete_password(secure_broker.cfg.password_file, dev)
        assert dev not in password_users(secure_broker.cfg.password_file)
        secure_broker.proc.reload()
        # mosquitto re-checks connected clients on reload and drops those without a valid password.
        assert probe.disconnected.wait(TIMEOUT)
    finally:
        probe.close()
    again = Probe(cfg, dev)
    try:
        rc = again.connect()
    finally:
        again.close()
    assert rc is not None and rc.value in (BAD_USER_OR_PASSWORD, NOT_AUTHORIZED)


def test_a_rotated_password_replaces_the_old_one(secure_broker: SecureBroker, tmp_path: Path) -> None:
    dev = device_name()
    old = secure_broker.mqtt_cfg(dev)
    secure_broker.add_user(dev)
    secure_broker.reload_until(old, accepted=True)
    probe = connected(old, dev)
    new_file = tmp_path / "new.password"
    new_file.write_text("rotated-" + secrets.token_urlsafe(16) + "\n")
    try:
        set_password(secure_broker.cfg.password_file, dev, new_file.read_text().strip(), replace=True)
        secure_broker.proc.reload()
        # Connected with a password the file no longer holds: dropped on the reload.
        assert probe.disconnected.wait(TIMEOUT)
    finally:
        probe.close()
    refused = Probe(old, dev)
    try:
        rc = refused.connect()
    finally:
        refused.close()
    assert rc is not None and rc.value in (BAD_USER_OR_PASSWORD, NOT_AUTHORIZED)
    fresh = connected(secure_broker.mqtt_cfg(dev, password_file=str(new_file)), dev)
    fresh.close()


def test_a_broker_that_cannot_start_is_an_error_naming_its_output(secure_broker: SecureBroker) -> None:
    cfg = dataclasses.replace(secure_broker.cfg, state_dir=secure_broker.dir / "bad", tls_port=free_port())
    with pytest.raises(StackError, match="exited at start") as err:
        SecureMosquitto(cfg, conf_text="no_such_option true\n").start()
    assert "no_such_option" in str(err.value)


# -- 6. enrolment -----------------------------------------------------------------------------------------


OWNER = SigningKey.generate()


def ingest_config(base: Path) -> Config:
    return msgspec.convert({"data_dir": str(base / "ingest")}, Config)


def test_enrolment_end_to_end(secure_broker: SecureBroker, bridge: Probe, tmp_path: Path) -> None:
    cfg = ingest_config(tmp_path)
    bundle = tmp_path / "bundle"
    e = enrol_device(
        cfg,
        out=bundle,
        passwd_file=secure_broker.cfg.password_file,
        broker_host="localhost",
        broker_port=secure_broker.port,
        ca_file=secure_broker.pki.ca.cert,
        vehicle_dir=str(bundle),
        state_dir=str(tmp_path / "vehicle-spool"),
        label="van 17",
        owner_key=OWNER.public_key,
    )
    assert e.bundle == bundle and e.agent_config == bundle / "edge-agent.toml"
    consent = ConsentStore(cfg.path(cfg.consent.path))
    owner = consent.owner(e.device_id)
    consent.close()
    assert owner is not None and owner.owner_key == OWNER.public_key  # its owner, from enrolment
    assert sorted(p.name for p in bundle.iterdir()) == [
        "ca.crt",
        "device.key",
        "device.key.pub",
        "edge-agent.toml",
        "mqtt.password",
    ]
    for secret in ("device.key", "mqtt.password"):
        assert (bundle / secret).stat().st_mode & 0o777 == 0o600
    assert bundle.stat().st_mode & 0o077 == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle.enrol-")]

    agent = load_toml(e.agent_config, AgentConfig)
    m = agent.mqtt
    assert (m.host, m.port, m.tls, m.username) == ("localhost", secure_broker.port, True, e.device_id)
    assert Path(m.ca_file).read_bytes() == secure_broker.pki.ca.cert.read_bytes()
    assert agent.edge.device_id == e.device_id
    key = load_key_file(agent.edge.key_path)
    assert key.public_key == e.public_key
    assert e.device_id in password_users(secure_broker.cfg.password_file)

    secure_broker.reload_until(m, accepted=True)
    pub = MqttPublisher(m, agent.edge.device_id)
    pub.connect(timeout=TIMEOUT)
    try:
        pub.publish(blocks_topic(e.device_id), b"first block")
        assert pub.flush(TIMEOUT)
    finally:
        assert pub.close(TIMEOUT)
    assert receive(bridge) == (blocks_topic(e.device_id), b"first block")

    reg = Registry(cfg.path(cfg.registry.path))
    try:
        keys = reg.keys_of(e.device_id)
    finally:
        reg.close()
    assert [(k.public_key, k.key_id, k.active, k.label) for k in keys] == [
        (key.public_key, e.key_id, True, "van 17")
    ]

    # The bundle is never overwritten, and a refused enrolment changes nothing.
    before = secure_broker.cfg.password_file.read_bytes()
    with pytest.raises(EnrolError, match="exists already"):
        enrol_device(
            cfg,
            out=bundle,
            passwd_file=secure_broker.cfg.password_file,
            broker_host="localhost",
            ca_file=secure_broker.pki.ca.cert,
        )
    assert secure_broker.cfg.password_file.read_bytes() == before


def test_enrolment_undoes_the_password_when_the_registry_refuses(
    secure_broker: SecureBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Registry, public_key: bytes, **kw: object) -> None:
        raise RegistryError("registry refuses (test)")

    monkeypatch.setattr(Registry, "add", refuse)
    before = password_users(secure_broker.cfg.password_file)
    with pytest.raises(EnrolError, match="registry refuses"):
        enrol_device(
            ingest_config(tmp_path),
            out=tmp_path / "bundle",
            passwd_file=secure_broker.cfg.password_file,
            broker_host="localhost",
            ca_file=secure_broker.pki.ca.cert,
        )
    assert password_users(secure_broker.cfg.password_file) == before
    assert not (tmp_path / "bundle").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle.enrol-")]


def test_the_enrol_script(secure_broker: SecureBroker, tmp_path: Path) -> None:
    config = tmp_path / "telematics.toml"
    config.write_text(f'data_dir = "{tmp_path / "ingest"}"\n')
    argv = [
        str(REPO / "deploy/edge/enrol-device.sh"),
        "--config",
        str(config),
        "--out",
        "bundle",
        "--passwd-file",
        str(secure_broker.cfg.password_file),
        "--broker-host",
        "localhost",
        "--broker-port",
        str(secure_broker.port),
        "--ca-file",
        str(secure_broker.pki.ca.cert),
    ]
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    device_id = re.search(r"enrolled device ([0-9a-f]{32})", done.stdout)
    assert device_id, done.stdout
    assert "device.key mqtt.password /etc/edge-agent/" in done.stdout
    agent = load_toml(tmp_path / "bundle/edge-agent.toml", AgentConfig)
    assert agent.mqtt.username == device_id.group(1)
    assert agent.mqtt.password_file == "/etc/edge-agent/mqtt.password"
    assert agent.edge.spool_path == "/var/lib/edge-agent/spool.sqlite"
    assert agent.edge.key_path == "/etc/edge-agent/device.key"

    again = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert again.returncode == 1
    assert "exists already" in again.stderr


# -- 7. apply_security refuses a bad configuration --------------------------------------------------------


def _encrypted_key(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    return path


@pytest.mark.parametrize(
    "case",
    [
        "missing ca_file",
        "missing password_file",
        "empty password_file",
        "garbage ca_file",
        "missing cert_file",
        "cert without key",
        "encrypted key_file",
        "password without username",
        "ca_file without tls",
    ],
)
def test_apply_security_refuses_a_bad_configuration(tmp_path: Path, case: str) -> None:
    pki = create_dev_pki(tmp_path / "pki")
    client_pair = pki.issue_client("dev")
    password = tmp_path / "pw"
    password.write_text("secret\n")
    ok: dict[str, object] = {
        "tls": True,
        "ca_file": str(pki.ca.cert),
        "username": "dev",
        "password_file": str(password),
    }
    missing = str(tmp_path / "nowhere" / "file.pem")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate\n")
    # case -> (config changes, what the error must name)
    cases: dict[str, tuple[dict[str, object], str]] = {
        "missing ca_file": ({"ca_file": missing}, missing),
        "missing password_file": ({"password_file": missing}, missing),
        "empty password_file": ({"password_file": str(empty)}, str(empty)),
        "garbage ca_file": ({"ca_file": str(garbage)}, str(garbage)),
        "missing cert_file": ({"cert_file": missing, "key_file": str(client_pair.key)}, missing),
        "cert without key": ({"cert_file": str(client_pair.cert)}, "mqtt.key_file"),
        "encrypted key_file": (
            {"cert_file": str(client_pair.cert), "key_file": str(_encrypted_key(tmp_path / "enc.key"))},
            "mqtt.key_file",
        ),
        "password without username": ({"username": ""}, str(password)),
        "ca_file without tls": ({"tls": False}, "mqtt.ca_file"),
    }
    over, named = cases[case]
    cfg = msgspec.convert({**ok, **over}, MqttConfig)
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    with pytest.raises(ConfigError) as err:
        apply_security(client, cfg, default_username=None)
    assert named in str(err.value)


def test_apply_security_accepts_a_good_configuration(tmp_path: Path) -> None:
    pki = create_dev_pki(tmp_path / "pki")
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    apply_security(client, MqttConfig(tls=True, ca_file=str(pki.ca.cert)), default_username="dev")


# -- the production example files -------------------------------------------------------------------------


def acl_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_production_acl_is_the_tested_one() -> None:
    assert acl_lines((REPO / "deploy/mosquitto/acl").read_text()) == acl_rules()


def test_production_config_starts_and_enforces_tls_passwords_and_acl(tmp_path: Path) -> None:
    pki = create_dev_pki(tmp_path / "pki")
    state = tmp_path / "state"
    state.mkdir()
    passwd = tmp_path / "passwd"
    tls_port, local_port = free_port(), free_port()
    text = (REPO / "deploy/mosquitto/mosquitto.conf").read_text()
    for old, new in [
        ("/etc/mosquitto/passwd", str(passwd)),
        ("/etc/mosquitto/acl", str(REPO / "deploy/mosquitto/acl")),
        ("/etc/mosquitto/certs/ca.crt", str(pki.ca.cert)),
        ("/etc/mosquitto/certs/server.crt", str(pki.server.cert)),
        ("/etc/mosquitto/certs/server.key", str(pki.server.key)),
        ("/var/lib/mosquitto/", f"{state}/"),
        ("/var/log/mosquitto/mosquitto.log", str(state / "mosquitto.log")),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    text, n_tls = re.subn(r"(?m)^listener 8883$", f"listener {tls_port} 127.0.0.1", text)
    text, n_local = re.subn(r"(?m)^listener 1883 127\.0\.0\.1$", f"listener {local_port} 127.0.0.1", text)
    assert (n_tls, n_local) == (1, 1)
    assert not re.search(r"/etc/|/var/", "\n".join(acl_lines(text)))
    if os.geteuid() == 0:
        text += "user root\n"
    cfg = SecureBrokerConfig(
        state_dir=state,
        tls_port=tls_port,
        ca_file=pki.ca.cert,
        cert_file=pki.server.cert,
        key_file=pki.server.key,
        password_file=passwd,
        acl_file=REPO / "deploy/mosquitto/acl",
        local_port=local_port,
    )
    broker = SecureBroker(tmp_path, pki, cfg, SecureMosquitto(cfg, conf_text=text))
    dev = device_name()
    broker.add_user(BRIDGE_USER)
    broker.add_user(dev)
    with broker.proc:
        # The bridge on the loopback listener: plain, but still a password.
        local = broker.mqtt_cfg(BRIDGE_USER, port=local_port, tls=False, ca_file="")
        bridge = connected(local, "telematics-bridge-0")
        anon = Probe(MqttConfig(port=local_port), "anon")
        device = connected(broker.mqtt_cfg(dev), dev)
        try:
            assert [rc.value for rc in bridge.subscribe(SHARED_BLOCKS)] == [1]
            anon_rc = anon.connect()
            assert anon_rc is not None and anon_rc.value in (BAD_USER_OR_PASSWORD, NOT_AUTHORIZED)
            assert device.tls_version() in ("TLSv1.2", "TLSv1.3")
            assert device.publish(blocks_topic(device_name()), b"forged").value == NOT_AUTHORIZED
            assert accepted(device.publish(blocks_topic(dev), b"block"))
            assert receive(bridge) == (blocks_topic(dev), b"block")
        finally:
            anon.close()
            device.close()
            bridge.close()


def test_the_local_stacks_mosquitto_with_logins_refuses_strangers_and_confines_each_vehicle(
    tmp_path: Path,
) -> None:
    """`[stack] mosquitto_password_file` and `_acl_file` (what `bench e2e --mqtt-auth` sets): the
    stack's own mosquitto refuses an anonymous client and a wrong password, and a vehicle logged in
    may publish under its own topics only (the production ACL); the password file is written for a
    whole fleet at once (`write_password_file`) and holds no password in clear."""
    import asyncio
    import time

    from common.mqtt5 import MqttError
    from devtools.stack import Stack, port_open
    from ingest.config import load_config
    from ingest.ops.broker_auth import write_acl, write_password_file
    from simulators.mqtt_async import AsyncPublisher

    port = free_port()
    (tmp_path / "c.toml").write_text(
        f"data_dir = '{tmp_path}'\n[mqtt]\nport = {port}\n[stack]\n"
        "mosquitto_password_file = 'logins/passwd'\nmosquitto_acl_file = 'logins/acl'\n"
    )
    a, b = device_name(), device_name()
    pw = {a: secrets.token_hex(16), b: secrets.token_hex(16), BRIDGE_USER: secrets.token_hex(16)}
    passwd = write_password_file(tmp_path / "logins" / "passwd", pw)
    assert all(secret not in passwd.read_text() for secret in pw.values())
    write_acl(tmp_path / "logins" / "acl")
    stack = Stack(load_config(tmp_path / "c.toml"))
    stack.state.mkdir(parents=True)
    argv, _ = stack._command("mosquitto")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)

        async def scenario() -> tuple[list[str], int, int]:
            refused = []
            for user, password in ((None, None), (a, b"wrong"), (a, pw[b].encode())):
                try:
                    await AsyncPublisher("127.0.0.1", port, a, username=user, password=password).connect(5)
                except MqttError as exc:
                    refused.append(str(exc))
            pub = AsyncPublisher("127.0.0.1", port, a, username=a, password=pw[a].encode())
            await pub.connect(5)
            own = await pub.publish(f"vehicles/{a}/blocks", b"x")
            other = await pub.publish(f"vehicles/{b}/blocks", b"x")
            await pub.close()
            return refused, own, other

        refused, own, other = asyncio.run(scenario())
    finally:
        proc.terminate()
        proc.wait(10)
    assert len(refused) == 3 and all("connection refused, reason code 0x8" in r for r in refused), refused
    assert own == 0x10  # accepted: no subscriber yet
    assert other == NOT_AUTHORIZED  # another vehicle's topic
