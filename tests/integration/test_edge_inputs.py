"""CAN frames on a virtual bus -> DBC decode -> VSS signals -> collection policy (with a hard-brake
trigger) -> signed blocks -> real MQTT -> bridge -> Kafka -> DuckDB: the values arrive, signed, and the
trigger's high-rate window carries its pre-trigger samples."""

from __future__ import annotations

import bisect
import itertools
import time
import uuid
from pathlib import Path

import can
import msgspec
import pytest

from common.config import EdgeConfig
from edge_agent.agent import Agent
from edge_agent.collect import CollectConfig, Collector, TriggerConfig
from edge_agent.publisher import MqttPublisher
from edge_agent.runner import Runner
from edge_agent.sources.can import CanConfig, CanSource, encode_frames
from edge_agent.sources.simulated import SimulatedSignals
from edge_agent.sources.vehicle import VehicleModel
from edge_agent.spool import Spool
from ingest.storage.registry import Registry
from ingest.storage.store import FileStore
from schemas.crypto import SigningKey, device_id_for
from tests.integration.checks import recheck
from tests.integration.harness import REPO, wait_until

pytestmark = pytest.mark.integration

DBC = REPO / "deploy" / "edge" / "ev.dbc"
RATE = 50.0


def _moving_at(seed: int, start_ns: int) -> float:
    """Seconds into the drive when the model first goes faster than 10 m/s."""
    m = VehicleModel(seed, start_ns=start_ns, rate_hz=RATE)
    for k in range(200_000):
        for r in m.step():
            if getattr(r, "speed_mps", 0.0) > 10.0:
                return k / RATE
    raise AssertionError("the model never drove")


def test_can_frames_reach_duckdb_signed_with_a_trigger_window(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = env.cfg
    env.start("consumer")
    env.start("bridge")
    key = SigningKey.generate()
    dev = device_id_for(key.public_key)
    Registry(cfg.path(cfg.registry.path)).add(key.public_key)

    channel = f"vt-{uuid.uuid4().hex[:8]}"
    tx = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    rx = can.Bus(interface="virtual", channel=channel)
    source = CanSource(CanConfig(dbc_path=str(DBC), interface="virtual", channel=channel), bus=rx)
    mapped = set(source.mapping.values())

    collect = CollectConfig(
        triggers=(
            TriggerConfig(
                name="hard_brake",
                signal="Vehicle.Acceleration.Longitudinal",
                op="<",
                threshold=-6.5,
                rate_hz=RATE,
                pre_s=2.0,
                post_s=3.0,
                cooldown_s=30.0,
            ),
        )
    )
    spool = Spool(tmp_path / "spool.sqlite", fsync=False)
    pub = MqttPublisher(msgspec.structs.replace(cfg.mqtt, reconnect_max_s=1.0), dev)
    agent = Agent(key, EdgeConfig(block_max_records=100, fsync=False), pub, spool)
    pub.session = agent.session_messages()
    pub.connect()
    runner = Runner(agent, Collector(collect), [source], wall_clock_ticks=False, read_timeout=0.0)

    start_ns = time.time_ns() - 600 * 10**9
    brake_at = _moving_at(3, start_ns) + 3.0
    sim = SimulatedSignals(
        VehicleModel(3, start_ns=start_ns, rate_hz=RATE),
        ticks=int((brake_at + 8) * RATE),
        hard_brake_at_s=brake_at,
    )
    speeds: list[tuple[int, float]] = []  # what went onto the bus: (ts, km/h)
    frames = 0
    for updates in sim.updates():
        values = {p: v for p, v, _ in updates if p in mapped}
        ts_ns = updates[0][2]
        if "Vehicle.Speed" in values:
            speeds.append((ts_ns, float(values["Vehicle.Speed"])))
        for f in encode_frames(source, values, ts_ns / 1e9):
            tx.send(f)
            frames += 1
        runner.step()
    for _ in range(5):
        runner.step()
    agent.flush()
    assert agent.drain(timeout=60)
    pub.close(timeout=5)
    spool.close()
    tx.shutdown()
    rx.shutdown()
    assert source.stats.decoded == frames and source.stats.errors == 0

    wait_until(
        cfg,
        lambda s: s["records"] >= agent.stats.records and s["anchored"] == s["batches"],
        timeout=120,
        what="the CAN-sourced records stored",
    )
    for p in env.procs:
        assert p.stop() == 0
    recheck(cfg.path(cfg.store.path), cfg.path(cfg.registry.path), cfg.path(cfg.ledger.path))
    s = FileStore(cfg.path(cfg.store.path), read_only=True)
    try:
        rows = s.con.execute(
            "SELECT epoch_ns(ts), speed_mps FROM driving_samples WHERE device_id = ? ORDER BY ts", [dev]
        ).fetchall()
        events = s.con.execute(
            "SELECT epoch_ns(ts), name, window_start_ns, window_end_ns, rate_hz FROM trigger_events"
            " WHERE device_id = ?",
            [dev],
        ).fetchall()
        battery = s.con.execute("SELECT count(*) FROM battery_samples WHERE device_id = ?", [dev]).fetchone()
    finally:
        s.close()

    # Decoded values: each sample holds the last speed put on the bus at or before its time, to the
    # DBC's resolution (0.01 km/h).
    tss = [t for t, _ in speeds]
    assert len(rows) > 100
    for ts, v in rows:
        i = bisect.bisect_right(tss, ts) - 1
        assert i >= 0
        assert abs(v - speeds[i][1] / 3.6) <= 0.01 / 3.6 + 1e-9, (ts, v, speeds[i])
    assert battery is not None and battery[0] >= 5

    # The trigger fired once; its window is sampled at 50 Hz, from 2 s before the brake.
    assert len(events) == 1
    t0, name, w0, w1, rate = events[0]
    assert name == "hard_brake" and rate == RATE
    assert w1 - w0 == pytest.approx(5e9, abs=0.05e9)
    window = [ts for ts, _ in rows if w0 <= ts <= w1]
    gaps = {b - a for a, b in itertools.pairwise(window)}
    assert gaps == {20_000_000}
    assert len(window) == pytest.approx(5 * RATE + 1, abs=2)
    pre = [ts for ts in window if ts < t0]
    assert len(pre) >= 2 * RATE - 2, "pre-trigger samples from the ring buffer"
    outside = [ts for ts, _ in rows if ts < w0 - 1_000_000_000]
    assert {b - a for a, b in itertools.pairwise(outside)} == {100_000_000}
