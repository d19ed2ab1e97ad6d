"""Store-and-forward on the vehicle, against the real stack: a broker outage, 20 SIGKILLs of the
agent, and a full spool whose drops the ingest reports exactly as the vehicle declared them."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest

from common.config import EdgeConfig, MqttConfig
from common.keys import generate_key_file
from devtools.stack import Stack
from edge_agent.agent import Agent
from edge_agent.publisher import MqttPublisher
from edge_agent.sources.vehicle import VehicleModel
from edge_agent.spool import Spool
from ingest.ops.gaps import gap_report
from ingest.storage.registry import Registry
from ingest.storage.store import FileStore
from schemas.crypto import SigningKey, device_id_for
from tests.integration.checks import recheck
from tests.integration.harness import REPO, wait_until

pytestmark = pytest.mark.integration


def _mqtt(env_cfg: MqttConfig, **kw: object) -> MqttConfig:
    return msgspec.structs.replace(env_cfg, reconnect_min_s=0.2, reconnect_max_s=1.5, **kw)  # type: ignore[arg-type]


def _stored(cfg_path: Path) -> dict[str, list[tuple[int, bytes, bool]]]:
    s = FileStore(cfg_path, read_only=True)
    try:
        out: dict[str, list[tuple[int, bytes, bool]]] = {}
        for dev, seq, bh, hist in s.con.execute(
            "SELECT device_id, seq, block_hash, historical FROM blocks ORDER BY device_id, seq"
        ).fetchall():
            out.setdefault(dev, []).append((int(seq), bytes(bh), bool(hist)))
        return out
    finally:
        s.close()


def _finish(env, *, records: int = 0, blocks: int = 0) -> None:  # type: ignore[no-untyped-def]
    cfg = env.cfg
    wait_until(
        cfg,
        lambda s: s["records"] >= records and s["blocks"] >= blocks and s["anchored"] == s["batches"],
        timeout=120,
        what=f"{records} records / {blocks} blocks stored and anchored",
    )
    for p in env.procs:
        assert p.stop() == 0


def test_broker_outage_of_30s_loses_and_duplicates_nothing(env, stack_cfg) -> None:  # type: ignore[no-untyped-def]
    cfg = env.cfg
    env.start("consumer")
    env.start("bridge")
    reg = Registry(cfg.path(cfg.registry.path))
    edge = EdgeConfig(block_max_records=10, block_max_age_ms=10_000, fsync=False)
    mqtt = _mqtt(cfg.mqtt)
    agents: list[Agent] = []
    pubs: list[MqttPublisher] = []
    for i in range(4):
        key = SigningKey.generate()
        reg.add(key.public_key)
        spool = Spool(cfg.path(f"v{i}.spool"), fsync=False)
        pub = MqttPublisher(mqtt, device_id_for(key.public_key))
        agent = Agent(key, edge, pub, spool, keep_hashes=True)
        pub.session = agent.session_messages()
        pub.connect()
        agents.append(agent)
        pubs.append(pub)
    models = [VehicleModel(100 + i, start_ns=time.time_ns(), rate_hz=20.0) for i in range(4)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            t0 = time.monotonic()
            tick = 0
            while not stop.is_set():
                for a, m in zip(agents, models, strict=True):
                    for r in m.step():
                        a.offer(r)
                tick += 1
                time.sleep(max(0.0, t0 + tick / 20.0 - time.monotonic()))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=drive)
    t.start()
    stack = Stack(stack_cfg)
    try:
        time.sleep(4)
        stack.stop("mosquitto")
        down_at = [a.stats.blocks for a in agents]
        time.sleep(30)
        assert all(not p.connected for p in pubs)
        spooled = [a.spool.count for a in agents]
        stack.up()
        time.sleep(6)
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors
    assert all(p.connects >= 2 for p in pubs), "each vehicle reconnected after the outage"
    for a, p in zip(agents, pubs, strict=True):
        assert a.drain(timeout=60), f"{a.device_id}: {a.spool.count} blocks still spooled"
        p.close(timeout=5)
        a.spool.close()
    # The outage really held blocks back on the vehicles (about 30 s x 2 blocks/s each).
    assert min(spooled) >= 40, spooled
    assert all(a.stats.blocks > d + 40 for a, d in zip(agents, down_at, strict=True))
    records = sum(a.stats.records for a in agents)
    _finish(env, records=records)

    stored = _stored(cfg.path(cfg.store.path))
    for a in agents:
        rows = stored[a.device_id]
        assert [s for s, _, _ in rows] == list(range(a.stats.blocks)), "every block, in order, once"
        assert [h for _, h, _ in rows] == a.stats.block_hashes
        assert any(hist for _, _, hist in rows), "blocks sent from the spool are marked historical"
        assert not all(hist for _, _, hist in rows)
        assert a.stats.replayed >= 40
    summary = recheck(cfg.path(cfg.store.path), cfg.path(cfg.registry.path), cfg.path(cfg.ledger.path))
    assert summary["records"] == records
    s = FileStore(cfg.path(cfg.store.path), read_only=True)
    try:
        assert gap_report(s.con) == []
        births = dict(
            s.con.execute(
                "SELECT device_id, count(*) FROM session_events WHERE event = 'birth' GROUP BY 1"
            ).fetchall()
        )
        # Every vehicle announced itself with a signed birth. (A birth published while no bridge is
        # subscribed, as right after the broker restart, stays only retained on the broker.)
        assert set(births) == {a.device_id for a in agents}
        assert s.con.execute("SELECT count(*) FROM rejections").fetchone() == (0,)
    finally:
        s.close()


def _agent_config(tmp: Path, mqtt: MqttConfig, key_path: Path, spool: Path) -> Path:
    path = tmp / "edge-agent.toml"
    path.write_text(
        "\n".join(
            [
                "[mqtt]",
                f'host = "{mqtt.host}"',
                f"port = {mqtt.port}",
                "reconnect_min_s = 0.2",
                "reconnect_max_s = 1.0",
                "[edge]",
                f'key_path = "{key_path}"',
                f'spool_path = "{spool}"',
                "block_max_records = 10",
                "block_max_age_ms = 10000",
                "fsync = true",
                "[[collect.groups]]",
                'name = "driving"',
                'record = "driving"',
                "rate_hz = 50.0",
                "",
            ]
        )
    )
    return path


def test_sigkill_of_the_agent_20_times_loses_and_duplicates_no_block(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = env.cfg
    env.start("consumer")
    env.start("bridge")
    key = generate_key_file(tmp_path / "device.key")
    Registry(cfg.path(cfg.registry.path)).add(key.public_key)
    spool_path = tmp_path / "spool.sqlite"
    conf = _agent_config(tmp_path, cfg.mqtt, tmp_path / "device.key", spool_path)
    rng = random.Random(7)
    environ = dict(os.environ, PYTHONPATH=str(REPO))
    log = (tmp_path / "agent.log").open("ab")

    def start(duration: float, seed: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge_agent.cli",
                "--config",
                str(conf),
                "run",
                "--seed",
                str(seed),
                "--duration",
                str(duration),
            ],
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    for i in range(20):
        p = start(0, i)
        time.sleep(rng.uniform(1.5, 3.0))  # start-up (~0.5 s), then sampling, sealing, publishing
        p.send_signal(signal.SIGKILL)
        assert p.wait(10) == -signal.SIGKILL, "the agent must still be running when it is killed"
    # A last, clean run replays whatever the killed runs left in the spool and stops when it is empty.
    p = start(2, 99)
    assert p.wait(90) == 0, (tmp_path / "agent.log").read_text()[-3000:]

    spool = Spool(spool_path, fsync=False)
    dev = device_id_for(key.public_key)
    state = spool.begin_boot(dev)
    assert spool.count == 0
    spool.close()
    assert state.boot == 22  # 21 runs, and this check
    assert state.next_seq > 40, "the runs sealed blocks"
    _finish(env, blocks=state.next_seq)
    s = FileStore(cfg.path(cfg.store.path), read_only=True)
    try:
        seqs = [
            int(x)
            for (x,) in s.con.execute(
                "SELECT seq FROM blocks WHERE device_id = ? ORDER BY seq", [dev]
            ).fetchall()
        ]
        boots = s.con.execute("SELECT count(DISTINCT boot) FROM blocks").fetchone()
        assert gap_report(s.con) == []
    finally:
        s.close()
    # Every sealed block arrived, exactly once, and the chain links every one to the one before.
    assert seqs == list(range(state.next_seq))
    assert boots is not None and boots[0] >= 15
    recheck(cfg.path(cfg.store.path), cfg.path(cfg.registry.path), cfg.path(cfg.ledger.path))


def test_full_spool_drops_the_oldest_and_ingest_reports_that_gap(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = env.cfg
    env.start("consumer")
    env.start("bridge")
    key = SigningKey.generate()
    Registry(cfg.path(cfg.registry.path)).add(key.public_key)
    edge = EdgeConfig(block_max_records=10, block_max_age_ms=10_000, fsync=False)
    model = VehicleModel(5, start_ns=time.time_ns(), rate_hz=10.0)
    # Offline: nothing listens on this port. The spool holds ~40 blocks of ~1.6 kB.
    offline = _mqtt(cfg.mqtt, port=1)
    spool = Spool(tmp_path / "spool.sqlite", fsync=False, max_bytes=64 << 10)
    dev = device_id_for(key.public_key)
    pub = MqttPublisher(offline, dev)
    agent = Agent(key, edge, pub, spool, keep_hashes=True)
    pub.start()
    for _ in range(1000):
        for r in model.step():
            agent.offer(r)
    agent.flush()
    pub.close(timeout=0)
    dropped = agent.stats.dropped_blocks
    held = spool.count
    assert dropped > 50 and held > 10
    assert agent.stats.blocks == dropped + held
    kept = {seq for seq, _ in spool.pending(0, 10**6)}
    expected_dropped = sorted(set(range(agent.stats.blocks)) - kept)
    spool.close()

    # Back online (a restart, with room in the spool): it replays, and declares the drops.
    spool = Spool(tmp_path / "spool.sqlite", fsync=False, max_bytes=4 << 20)
    pub = MqttPublisher(_mqtt(cfg.mqtt), dev)
    agent2 = Agent(key, edge, pub, spool)
    pub.session = agent2.session_messages()
    pub.connect()
    for _ in range(30):
        for r in model.step():
            agent2.offer(r)
    assert agent2.drain(timeout=60)
    pub.close(timeout=5)
    spool.close()
    total_blocks = agent2.state.next_seq
    _finish(env, blocks=total_blocks - len(expected_dropped))

    s = FileStore(cfg.path(cfg.store.path), read_only=True)
    try:
        stored = {int(x) for (x,) in s.con.execute("SELECT seq FROM blocks").fetchall()}
        report = gap_report(s.con)
        declared = s.con.execute("SELECT count(*) FROM spool_drops").fetchone()
    finally:
        s.close()
    assert stored == set(range(total_blocks)) - set(expected_dropped)
    assert declared is not None and declared[0] >= 1
    # Exactly the dropped blocks are reported, all as dropped on the vehicle (declared, signed).
    reported = sorted(seq for g in report for seq in range(g.from_seq, g.to_seq + 1))
    assert reported == expected_dropped
    assert {g.status for g in report} == {"dropped_on_vehicle"}
    assert {g.reason for g in report} == {"full"}
