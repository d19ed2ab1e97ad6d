"""The command line's rough edges (issue 14): global options after the command, --version, public keys
as hex, 0x-hex or a .pub file (a private key refused), times as ISO 8601 or ns, erase asks first.
The mistakes themselves, one line each: tests/integration/test_mistakes.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common.keys import generate_key_file
from ingest.cli_args import hoist_global_options, instant_ns

ROOT = Path(__file__).resolve().parents[2]


def _cli(tmp: Path, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    cfg = tmp / "t.toml"
    if not cfg.exists():
        cfg.write_text(f'data_dir = "{tmp / "data"}"\n[store]\nbackend = "duckdb"\n')
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        input=stdin,
        env={"TELEMATICS_CONFIG": str(cfg), "PATH": "/usr/bin:/bin"},
    )


def _one_line(r: subprocess.CompletedProcess[str], says: str) -> None:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("telematics")]
    assert says in r.stderr and lines, r.stderr


def test_global_options_after_the_command() -> None:
    assert hoist_global_options(["devices", "list", "--config", "x.toml", "-v"]) == [
        "--config",
        "x.toml",
        "-v",
        "devices",
        "list",
    ]
    assert hoist_global_options(["query", "SELECT '--config'", "--config=y"]) == [
        "--config=y",
        "query",
        "SELECT '--config'",
    ]
    assert hoist_global_options(["query", "--", "--config"]) == ["query", "--", "--config"]


def test_times_are_iso_or_nanoseconds() -> None:
    assert instant_ns("1700000000000000000") == 1_700_000_000_000_000_000
    assert instant_ns("2023-11-14T22:13:20Z") == 1_700_000_000_000_000_000
    assert instant_ns("2023-11-14T22:13:20") == 1_700_000_000_000_000_000  # no zone: UTC
    assert instant_ns("2023-11-14T23:13:20.5+01:00") == 1_700_000_000_500_000_000


def test_version_on_both_tools() -> None:
    for tool in ("ingest.cli", "edge_agent.cli"):
        r = subprocess.run(
            [sys.executable, "-m", tool, "--version"], capture_output=True, text=True, cwd=ROOT
        )
        assert r.returncode == 0 and r.stdout.split()[0] in ("telematics", "edge-agent"), r
        assert r.stdout.split()[1][0].isdigit(), r.stdout


def test_devices_add_takes_hex_0x_or_pub_file_and_refuses_a_private_key(tmp_path: Path) -> None:
    key = generate_key_file(tmp_path / "device.key")
    other = generate_key_file(tmp_path / "other.key")
    third = generate_key_file(tmp_path / "third.key")
    ok = _cli(
        tmp_path,
        "devices",
        "add",
        "--public-key",
        str(tmp_path / "device.key.pub"),
        "--config",
        str(tmp_path / "t.toml"),
    )
    assert ok.returncode == 0 and "registered device" in ok.stdout, ok.stderr
    assert _cli(tmp_path, "devices", "add", "--public-key", "0x" + other.public_key.hex()).returncode == 0
    assert _cli(tmp_path, "devices", "add", "--key-file", str(tmp_path / "third.key.pub")).returncode == 0
    listed = _cli(tmp_path, "devices", "list").stdout
    assert all(k.key_id in listed for k in (key, other, third))


def test_json_logs_one_object_per_line(tmp_path: Path) -> None:
    import json

    r = _cli(tmp_path, "devices", "list", "--log-format", "json", "--log-level", "debug")
    assert r.returncode == 0, r.stderr
    import logging

    from ingest.cli_args import JsonFormatter

    rec = logging.LogRecord("ingest.x", logging.WARNING, __file__, 1, "dead-lettered %d", (3,), None)
    line = json.loads(JsonFormatter().format(rec))
    assert line["level"] == "warning" and line["msg"] == "dead-lettered 3" and line["ts"].endswith("+00:00")
