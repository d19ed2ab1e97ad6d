"""Configuration: the example files show every key with its default; unknown keys fail at start."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from common.config import ConfigError, load_toml
from edge_agent.config import AgentConfig
from ingest.config import BridgeConfig, Config, load_config

ROOT = Path(__file__).resolve().parents[2]


def _keys(d: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in d.items():
        out |= _keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return out


@pytest.mark.parametrize(
    ("path", "typ"),
    [
        ("deploy/config/telematics.example.toml", Config),
        ("deploy/config/edge-agent.example.toml", AgentConfig),
    ],
)
def test_example_shows_every_key_with_its_default(path: str, typ: type) -> None:
    data = tomllib.loads((ROOT / path).read_text())
    assert _keys(data) == _keys(msgspec.to_builtins(typ()))
    assert load_toml(ROOT / path, typ) == typ()


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ("[kafka]\nbootstrap = 'x'\n", "bootstrap"),  # an unknown key
        ("[mqtt]\nport = 70000\n", r"mqtt\.port"),  # a value out of range
        ("[store]\nparquet_compression = 'snapy'\n", r"store\.parquet_compression"),  # not a codec
        (  # logins on the local mosquitto need both the password file and the ACL
            "[stack]\nmosquitto_password_file = 'logins/passwd'\n",
            "mosquitto_password_file and mosquitto_acl_file are set together",
        ),
    ],
    ids=["unknown key", "bad value", "unknown codec", "password file without acl"],
)
def test_a_refused_config_is_one_line_naming_what_is_wrong(tmp_path: Path, toml: str, names: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(toml)
    with pytest.raises(ConfigError, match=names) as e:
        load_config(p)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("path", ["deploy/mosquitto/mosquitto.conf", "deploy/compose.yaml"])
def test_deployed_broker_packet_limit_is_the_bridges(path: str) -> None:
    """The shipped mosquitto configs refuse exactly what the bridge could not forward."""
    text = (ROOT / path).read_text()
    limits = re.findall(r"(?m)^\s*max_packet_size (\d+)$", text)
    assert limits == [str(BridgeConfig().max_packet_bytes)]


def test_compose_ingest_config_is_valid_and_uses_the_lake(tmp_path: Path) -> None:
    """The telematics.toml embedded in deploy/compose.yaml loads, and describes the production store."""
    import textwrap

    text = (ROOT / "deploy/compose.yaml").read_text()
    block = text[text.index("  telematics_toml:\n    content: |\n") :].split("\n", 2)[2]
    body = textwrap.dedent(block[: block.index("\nsecrets:")])
    p = tmp_path / "compose.toml"
    p.write_text(body)
    cfg = load_config(p)
    assert cfg.store.backend == "lake" and cfg.store.data_path.startswith("s3://")
    assert "passfile=" in cfg.store.catalog and "password" not in cfg.store.catalog
    assert cfg.store.s3.secret_path.startswith("/run/secrets/")


def test_dashboard_and_docs_name_only_metrics_the_code_exports() -> None:
    """deploy/grafana/telematics.json and PRODUCTION.md's metrics table against the names the bridge,
    the consumer (ingest/pipeline) and the data-access API (ingest/ops/access.py) register."""
    import json

    files = ("ingest/pipeline/consumer.py", "ingest/pipeline/bridge.py", "ingest/ops/access.py")
    code = "".join((ROOT / f).read_text() for f in files)
    exported = set(re.findall(r'"(telematics_[a-z_]+)"', code))
    counters = set(re.findall(r'(?:counter|CounterMetricFamily)\(\s*"(telematics_[a-z_]+)"', code))
    names = {n + "_total" if n in counters else n for n in exported}
    names |= {n + s for n in exported for s in ("_bucket", "_sum", "_count") if n.endswith("_seconds")}
    dash = json.loads((ROOT / "deploy/grafana/telematics.json").read_text())
    used = {
        m for p in dash["panels"] for t in p["targets"] for m in re.findall(r"telematics_[a-z_]+", t["expr"])
    }
    assert used and used <= names, used - names
    doc = (ROOT / "docs/PRODUCTION.md").read_text()
    table = set(re.findall(r"`(telematics_[a-z_]+)", doc[doc.index("| metric | type | what |") :][:4000]))
    plain = {n for n in names if not n.endswith(("_bucket", "_sum", "_count"))}
    assert table == plain, table ^ plain


def test_a_tls_listener_needs_its_certificate_and_key(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[stack]\nmosquitto_tls_port = 8883\nmosquitto_tls_cert = 'server.crt'\n")
    with pytest.raises(
        ConfigError, match="mosquitto_tls_port needs mosquitto_tls_cert and mosquitto_tls_key"
    ):
        load_config(p)


def test_the_local_mosquitto_listens_with_tls_only_when_configured(tmp_path: Path) -> None:
    from devtools.stack import mosquitto_conf

    plain = mosquitto_conf(Config(), tmp_path)
    assert "certfile" not in plain and plain.count("listener ") == 1
    p = tmp_path / "c.toml"
    p.write_text(
        "[stack]\nmosquitto_tls_port = 8883\n"
        f"mosquitto_tls_cert = '{tmp_path / 's.crt'}'\nmosquitto_tls_key = '{tmp_path / 's.key'}'\n"
    )
    conf = mosquitto_conf(load_config(p), tmp_path).splitlines()
    at = conf.index("listener 8883 127.0.0.1")  # after the plain listener: the options that follow are its
    assert conf.index("listener 1883 127.0.0.1") < at
    assert conf[at + 1 : at + 4] == [
        f"certfile {tmp_path / 's.crt'}",
        f"keyfile {tmp_path / 's.key'}",
        "tls_version tlsv1.2",
    ]


@pytest.mark.parametrize(
    ("keys", "missing"),
    [
        (
            "mosquitto_tls_port = 8883\nmosquitto_tls_cert = 'pki/server.crt'\nmosquitto_tls_key = 'pki/server.key'\n",
            r"mosquitto_tls_cert .*pki/server.crt",
        ),
        (
            "mosquitto_password_file = 'logins/passwd'\nmosquitto_acl_file = 'logins/acl'\n",
            r"mosquitto_password_file .*logins/passwd",
        ),
    ],
    ids=["tls certificate", "password file"],
)
def test_a_missing_file_of_the_local_mosquitto_is_one_line_before_it_starts(
    tmp_path: Path, keys: str, missing: str
) -> None:
    from devtools.stack import Stack, StackError

    p = tmp_path / "c.toml"
    p.write_text(f"data_dir = '{tmp_path}'\n[stack]\n{keys}")
    with pytest.raises(StackError, match=rf"\[stack\] {missing} does not exist"):
        Stack(load_config(p))._command("mosquitto")


def test_the_local_mosquitto_is_anonymous_unless_logins_are_configured(tmp_path: Path) -> None:
    from devtools.stack import mosquitto_conf

    plain = mosquitto_conf(Config(), tmp_path).splitlines()
    assert "allow_anonymous true" in plain and not [
        x for x in plain if x.startswith(("password_file", "acl_file"))
    ]
    p = tmp_path / "c.toml"
    p.write_text(
        f"data_dir = '{tmp_path}'\n[stack]\n"
        "mosquitto_password_file = 'logins/passwd'\nmosquitto_acl_file = 'logins/acl'\n"
    )
    conf = mosquitto_conf(load_config(p), tmp_path).splitlines()
    assert "allow_anonymous true" not in conf
    at = conf.index("allow_anonymous false")
    assert conf[at + 1 : at + 3] == [
        f"password_file {tmp_path / 'logins/passwd'}",
        f"acl_file {tmp_path / 'logins/acl'}",
    ]
