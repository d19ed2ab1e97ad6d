"""Edge agent: key files, persistent chain state across restarts, block sealing."""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

import pytest

from common.config import EdgeConfig
from common.keys import KeyFileError, generate_key_file, load_key_file
from edge_agent.agent import Agent
from edge_agent.publisher import MemoryPublisher
from edge_agent.sources.vehicle import VehicleModel
from edge_agent.spool import Spool
from schemas.block import decode_envelope, decode_header, open_envelope
from schemas.crypto import ZERO_HASH, device_id_for
from schemas.transport import blocks_topic


def test_keygen_mode_0600_and_never_overwrites(tmp_path: Path) -> None:
    p = tmp_path / "k" / "device.key"
    key = generate_key_file(p)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert load_key_file(p).public_key == key.public_key
    before = p.read_bytes()
    with pytest.raises(KeyFileError, match="exists already"):
        generate_key_file(p)
    assert p.read_bytes() == before


def test_load_refuses_world_readable_key(tmp_path: Path) -> None:
    p = tmp_path / "device.key"
    generate_key_file(p)
    os.chmod(p, 0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        load_key_file(p)


def _run(tmp_path: Path, key_path: Path, n_ticks: int, cfg: EdgeConfig) -> tuple[Agent, MemoryPublisher]:
    key = load_key_file(key_path)
    pub = MemoryPublisher()
    agent = Agent(key, cfg, pub, Spool(tmp_path / "spool", fsync=False))
    model = VehicleModel(3, start_ns=1_700_000_000_000_000_000 + agent.state.boot * 10**12)
    for _ in range(n_ticks):
        for r in model.step():
            agent.offer(r)
    assert agent.drain(timeout=5)
    agent.spool.close()
    return agent, pub


def test_chain_continues_across_restarts(tmp_path: Path) -> None:
    kp = tmp_path / "device.key"
    key = generate_key_file(kp)
    cfg = EdgeConfig(block_max_records=25, block_max_age_ms=10_000)
    a1, p1 = _run(tmp_path, kp, 100, cfg)
    a2, p2 = _run(tmp_path, kp, 60, cfg)
    headers = [decode_header(decode_envelope(m).header) for _, m in p1.messages + p2.messages]
    assert [h.seq for h in headers] == list(range(len(headers)))
    assert headers[0].prev == ZERO_HASH
    envs = [decode_envelope(m) for _, m in p1.messages + p2.messages]
    opened = [open_envelope(e, key.public_key) for e in envs]
    for prev, cur in itertools.pairwise(opened):
        assert cur.header.prev == prev.hash
    assert {h.boot for h in headers[: len(p1.messages)]} == {1}
    assert {h.boot for h in headers[len(p1.messages) :]} == {2}
    assert all(t == blocks_topic(device_id_for(key.public_key)) for t, _ in p1.messages)
    assert all(h.count <= 25 for h in headers)
    assert sum(h.count for h in headers) == a1.stats.records + a2.stats.records


def test_block_closes_on_age(tmp_path: Path) -> None:
    kp = tmp_path / "device.key"
    generate_key_file(kp)
    # 10 Hz, 1 s blocks: every block spans at most 1 s of samples.
    _, pub = _run(tmp_path, kp, 55, EdgeConfig(block_max_records=10_000, block_max_age_ms=1000))
    headers = [decode_header(decode_envelope(m).header) for _, m in pub.messages]
    assert len(headers) >= 5
    assert all(h.t_last - h.t_first <= 1_000_000_000 for h in headers)
