"""Per-device quotas: the bridge's token bucket, and the reference agent's replay pacing that keeps
an honest vehicle below it."""

from __future__ import annotations

import time
from pathlib import Path

from common.config import EdgeConfig
from edge_agent.agent import Agent
from edge_agent.publisher import MemoryPublisher
from edge_agent.sources.vehicle import VehicleModel
from edge_agent.spool import Spool
from ingest.pipeline.bridge import Quotas
from schemas.crypto import SigningKey


def test_bucket_allows_the_burst_then_the_rate() -> None:
    q = Quotas(msgs_per_s=10, bytes_per_s=0, burst_s=2)
    a, b = b"a" * 32, b"b" * 32
    assert [q.admit(a, 100, 0.0) for _ in range(25)].count(True) == 20  # 2 s worth of burst
    assert q.admit(b, 100, 0.0)  # another device has its own bucket
    assert not q.admit(a, 100, 0.05)  # half a token refilled
    assert q.admit(a, 100, 0.1)
    admitted = sum(q.admit(a, 100, 0.1 + i * 0.01) for i in range(1, 1001))  # 10 s at 100 msgs/s offered
    assert 95 <= admitted <= 101  # the rate, 10/s


def test_byte_limit_and_off() -> None:
    q = Quotas(msgs_per_s=0, bytes_per_s=1000, burst_s=1)
    assert q.admit(b"x", 600, 0.0) and not q.admit(b"x", 600, 0.0)
    assert q.admit(b"x", 600, 0.2)  # 400 left + 200 refilled
    off = Quotas(msgs_per_s=0, bytes_per_s=0, burst_s=1)
    assert all(off.admit(b"x", 10**9, 0.0) for _ in range(1000))


def test_agent_replays_its_backlog_no_faster_than_replay_max_per_s(tmp_path: Path) -> None:
    pub = MemoryPublisher()
    cfg = EdgeConfig(block_max_records=1, fsync=False, replay_burst=20, replay_max_per_s=200.0)
    agent = Agent(SigningKey.generate(), cfg, pub, Spool(tmp_path / "spool", fsync=False))
    model = VehicleModel(3, start_ns=1_700_000_000_000_000_000)
    pub.online = False
    while agent.spool.count < 300:  # a backlog of 300 one-record blocks sealed while offline
        for r in model.step():
            agent.offer(r)
    pub.online = True
    t0 = time.monotonic()
    while len(pub.messages) < 300 and time.monotonic() - t0 < 10:
        agent.pump()
        time.sleep(0.001)
    elapsed = time.monotonic() - t0
    assert len(pub.messages) == 300 and all(pub.historical)
    # 20 at once, then 200 a second: at least (300 - 20) / 200 = 1.4 s.
    assert elapsed >= 1.3, elapsed
