"""A short run of `telematics bench e2e --smoke`: the benchmark's machinery against the real stack.

No timing is asserted (speed lives in docs/PERFORMANCE.md); what is checked can fail: every phase
ran, every generated block is stored exactly once, the report and the chart were written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.e2e import main

pytestmark = pytest.mark.integration


def test_bench_e2e_smoke_stores_every_block_once_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "e2e"
    assert main(["--smoke", "--out", str(out)]) == 0
    report = json.loads((out / "e2e.json").read_text())
    phases = {p["name"]: p for p in report["phases"]}
    assert set(phases) == {"full", "passthrough", "half"}
    for p in phases.values():
        assert p["generated_records"] > 0
        assert p["stored_records"] == p["generated_records"]
        assert p["stored_blocks"] == p["generated_blocks"]
        assert p["lost_records"] == p["duplicated_records"] == p["unexpected_blocks"] == 0
        assert p["rejections"] == 0
        assert p["stored_rps"] > 0
        assert sum(s.get("stored", 0) for s in p["timeline"]) == p["stored_records"]
        # Each component's CPU once a second, for the chart's third panel.
        cpu = p["cpu_timeline"]
        assert cpu and all(set(s) == {"t", *p["cpu_cores"]} - {"total"} for s in cpu), cpu[:2]
        assert all(v >= 0 for s in cpu for v in s.values()) and max(s["consumer"] for s in cpu) > 0
    # Verified phases anchor every batch; the pass-through baseline anchors none.
    assert phases["full"]["anchored"] == phases["full"]["batches"] > 0
    assert phases["passthrough"]["anchored"] == 0
    # Latency is measured on the paced phases (sample -> queryable), and is positive.
    assert phases["half"]["latency_ms"]["p50"] > 0
    assert report["full_over_passthrough"] > 0
    png = (out / "e2e.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "stored records/s" in (out / "e2e.md").read_text()
    # The box's speed at the start and the end of the run, to compare runs of different days.
    speed = report["machine"]["reference_unit_us"]
    assert speed["start"] > 0 and speed["end"] > 0
    assert "box speed during the run" in (out / "e2e.md").read_text()


def test_bench_fleet_smoke_one_session_per_vehicle_and_the_dashboard(tmp_path: Path) -> None:
    """`telematics bench fleet --smoke`: two small fleets, each vehicle on its own MQTT session, every
    block stored once, the analysts' five queries answered on read-only snapshots during the run (one
    reader, refreshed each round)."""
    from bench import fleet
    from bench.analysts import DASHBOARD, OPEN, REFRESH

    out = tmp_path / "fleet"
    assert fleet.main(["--smoke", "--out", str(out)]) == 0
    report = json.loads((out / "fleet.json").read_text())
    assert [p["vehicles"] for p in report["phases"]] == [20, 40]
    for p in report["phases"]:
        assert p["sessions"] == p["vehicles"]  # one MQTT session per vehicle
        assert p["broker_fds"] >= p["vehicles"]  # and mosquitto holds a socket for each
        assert p["stored_blocks"] == p["generated_blocks"] > 0
        assert p["lost_records"] == p["duplicated_records"] == p["unexpected_blocks"] == 0
        assert p["anchored"] == p["batches"] > 0
        assert not p["analyst_errors"]
        queries = {q[0] for q in DASHBOARD}  # the reader opened once, refreshed for every later round
        assert {OPEN, *queries} <= set(p["analysts_ms"]) <= {OPEN, REFRESH, *queries}
        assert p["analysts_ms"][OPEN]["n"] == 1
        assert all(v["n"] >= 1 for v in p["analysts_ms"].values())
        assert p["cpu_us_per_block"]["consumer"] > 0
    assert {s["vehicles"] for s in report["sustained"]} == {20, 40}
    assert (out / "fleet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "MQTT sessions" in (out / "fleet.md").read_text()
    assert report["machine"]["reference_unit_us"]["end"] > 0
    assert "box speed during the run" in (out / "fleet.md").read_text()
    # the cores 10,000 vehicles would need at the measured costs per block
    plan = report["plan"]
    assert plan["vehicles"] == 10_000 and plan["from_vehicles"] in (20, 40)
    assert plan["cores"] >= plan["cores_ingest"] >= plan["cores_consumers"] > 0
    assert "10,000 vehicles need about" in (out / "fleet.md").read_text()


def test_bench_e2e_vehicles_over_tls_store_every_block_once(tmp_path: Path) -> None:
    """`bench e2e --mqtt-tls`: each vehicle's session is TLS to the broker's TLS listener (its log
    names the port of every new connection; the bridge stays on the plain one), and every block is
    stored once."""
    from ingest.config import load_config

    out = tmp_path / "tls"
    argv = ["--smoke", "--mqtt-tls", "--sessions", "vehicle", "--phases", "full", "--out", str(out)]
    assert main(argv) == 0
    p = json.loads((out / "e2e.json").read_text())["phases"][0]
    assert p["mqtt_tls"] in ("TLSv1.2", "TLSv1.3")
    assert p["sessions"] == p["vehicles"] > 0
    assert p["stored_blocks"] == p["generated_blocks"] > 0
    assert p["lost_records"] == p["duplicated_records"] == p["unexpected_blocks"] == 0
    cfg = load_config(out / "full" / "telematics.toml")
    log = (cfg.path(cfg.stack.state_dir) / "mosquitto.log").read_text()
    # the listener of each MQTT client, by its address: a connection that never became a client
    # (the stack's start check opening the port) and a session opened again count once at most
    port_of = dict(re.findall(r"New connection from (\S+) on port (\d+)\.", log))
    clients = re.findall(r"New client connected from (\S+) as (\S+) \(", log)
    over_tls = {c for a, c in clients if port_of.get(a) == str(cfg.stack.mosquitto_tls_port)}
    plain = {c for a, c in clients if port_of.get(a) == str(cfg.mqtt.port)}
    assert len(over_tls) == p["vehicles"], clients
    assert plain and not plain & over_tls, clients  # the bridge, on the plain listener
    assert "MQTT transport | TLSv1." in (out / "e2e.md").read_text()


def test_bench_e2e_pins_the_run_and_the_consumers_to_their_cpus(tmp_path: Path) -> None:
    """`bench e2e --cpus A --consumer-cpus B`: the kernel lets every process of the run (the
    generator, both brokers, the bridge, the catalog) run on A only and the consumer on B only, as
    /proc says during the run; the benchmark's own process gets its CPUs back afterwards."""
    import os

    before = os.sched_getaffinity(0)
    first, last = min(before), max(before)
    out = tmp_path / "pinned"
    argv = ["--smoke", "--phases", "full", "--cpus", str(first), "--consumer-cpus", str(last)]
    assert main([*argv, "--out", str(out)]) == 0
    assert os.sched_getaffinity(0) == before
    p = json.loads((out / "e2e.json").read_text())["phases"][0]
    assert p["stored_blocks"] == p["generated_blocks"] > 0
    allowed = p["cpus_allowed"]
    assert allowed.pop("consumer") == [str(last)]
    assert set(allowed) >= {"simulator", "mosquitto", "kafka broker", "bridge", "catalog (PostgreSQL)"}
    assert all(v == [str(first)] for v in allowed.values()), allowed
    assert f"| CPUs each component ran on | {first}: simulator" in (out / "e2e.md").read_text()


def test_bench_e2e_vehicles_log_in_under_the_production_acl_and_store_every_block_once(
    tmp_path: Path,
) -> None:
    """`bench e2e --mqtt-auth`: mosquitto takes no anonymous client; each vehicle logs in as its
    device id with its own password and the bridge as the bridge user (mosquitto's log names the
    username of every new client), under the production ACL, and every block is stored once."""
    from ingest.config import load_config
    from ingest.ops.broker_auth import BRIDGE_USER

    out = tmp_path / "auth"
    argv = ["--smoke", "--mqtt-auth", "--sessions", "vehicle", "--phases", "full", "--out", str(out)]
    assert main(argv) == 0
    p = json.loads((out / "e2e.json").read_text())["phases"][0]
    assert p["mqtt_logins"] == p["sessions"] == p["vehicles"] > 0
    assert p["stored_blocks"] == p["generated_blocks"] > 0
    assert p["lost_records"] == p["duplicated_records"] == p["unexpected_blocks"] == 0
    cfg = load_config(out / "full" / "telematics.toml")
    assert "allow_anonymous false" in (cfg.path(cfg.stack.state_dir) / "mosquitto.conf").read_text()
    log = (cfg.path(cfg.stack.state_dir) / "mosquitto.log").read_text()
    logins = re.findall(r"New client connected from \S+ as (\S+) \(.*u'([^']+)'\)", log)
    vehicles = {(c, u) for c, u in logins if u != BRIDGE_USER}  # a session opened again counts once
    assert len(vehicles) == p["vehicles"] and all(c == u for c, u in vehicles), logins
    assert any(u == BRIDGE_USER for _, u in logins)
    assert "MQTT logins | password each, production ACL" in (out / "e2e.md").read_text()


def test_bench_lake_stores_each_reconnecting_vehicles_session_event_once_with_and_without_marks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench.lake import main as lake_main

    args = ["--sessions", "0,2000", "--devices", "100", "--wave", "30", "--batches", "3"]
    assert lake_main(args) == 0
    out = capsys.readouterr().out
    assert "batches of 30 reconnecting vehicles' births (+ 3 redelivered), 3 per lake" in out
    rows = {r.split("|")[1].strip(): r for r in out.splitlines() if r.startswith("| ") and "---" not in r}
    # each lake holds what was there and every birth once, the redelivered ones too
    assert rows["0"].rstrip(" |").endswith("| 90 / 90"), rows
    assert rows["2,000"].rstrip(" |").endswith("| 2,090 / 2,090"), rows


def test_bench_lake_recognises_every_replayed_and_redelivered_block_with_and_without_the_recent_hashes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench.lake import main as lake_main

    assert lake_main(["--lookups", "2000"]) == 0
    out = capsys.readouterr().out
    row = next(r for r in out.splitlines() if r.startswith("| 2,000 |"))
    cells = [c.strip() for c in row.strip("| ").split("|")]
    assert cells[1].endswith("(2)") and cells[2].endswith("(1)"), cells  # files as written, compacted
    # store reads: two per late block of the spool and one per block again; with the hashes kept, none
    assert cells[3].startswith("1,200 + 1,000, ") and cells[4].startswith("0 + 0, 0.0, "), cells
    assert cells[5] == "1,000 / 1,000", cells


def test_bench_lake_writes_every_record_through_the_lake_store_with_each_codec(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench.lake import main as lake_main

    args = ["--vehicles", "4", "--blocks", "24", "--block-records", "11", "--batch-records", "88"]
    assert lake_main([*args, "--codecs", "snappy,uncompressed", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "264 records (24 blocks of 11)" in out
    rows = {r.split("|")[1].strip(): r for r in out.splitlines() if r.startswith("| ")}
    # each codec's lake holds every record written
    for codec in ("snappy", "uncompressed"):
        assert rows[codec].rstrip(" |").endswith("| 264"), rows[codec]
    for statement in ("INSERT INTO driving_samples", "INSERT INTO blocks", "COMMIT"):
        assert statement in rows, sorted(rows)
    assert "box speed during the run" in out
