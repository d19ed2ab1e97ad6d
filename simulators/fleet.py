"""A fleet of simulated vehicles, each running the real edge-agent code path over real MQTT.

Vehicles are multiplexed in one process: every tick, each vehicle's model produces its
samples, its Agent seals and signs blocks with the vehicle's own key and publishes them
through its own MQTT connection. Keys and chain state live in ``<data_dir>/sim`` and are
reused, so a second run continues each vehicle's chain.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.config import EdgeConfig, MqttConfig
from common.keys import generate_key_file, load_key_file
from edge_agent.agent import Agent
from edge_agent.publisher import MqttPublisher, Publisher
from edge_agent.sources.vehicle import PROFILES, VehicleModel
from edge_agent.spool import Spool
from schemas.crypto import SigningKey, device_id_for

Progress = Callable[[int, int], None]
# Vehicle i drives with profile DRIVERS[i % 3]: calm, normal, aggressive.
DRIVERS = list(PROFILES)


@dataclass
class Vehicle:
    index: int
    key: SigningKey
    device_id: str
    model: VehicleModel
    agent: Agent
    publisher: Publisher
    records: int = 0


@dataclass
class FleetResult:
    vehicles: int
    records: int
    blocks: int
    payload_bytes: int
    seconds: float
    per_vehicle: dict[str, int] = field(default_factory=dict)
    block_hashes: dict[str, list[bytes]] = field(default_factory=dict)
    unacked: int = 0

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


def vehicle_key(keys_dir: Path, seed: int, i: int) -> SigningKey:
    path = keys_dir / f"vehicle-{seed}-{i:04d}.key"
    return load_key_file(path) if path.exists() else generate_key_file(path)


def fleet_keys(keys_dir: Path, vehicles: int, seed: int) -> list[SigningKey]:
    return [vehicle_key(keys_dir, seed, i) for i in range(vehicles)]


def run_fleet(
    *,
    mqtt: MqttConfig,
    edge: EdgeConfig,
    keys_dir: Path,
    vehicles: int,
    ticks: int,
    rate_hz: float,
    seed: int,
    realtime: bool,
    records_per_vehicle: int | None = None,
    register: Callable[[SigningKey], object] | None = None,
    progress: Progress | None = None,
    keep_hashes: bool = False,
    publisher_factory: Callable[[str], Publisher] | None = None,
) -> FleetResult:
    keys = fleet_keys(keys_dir, vehicles, seed)
    fleet: list[Vehicle] = []
    start_ns = time.time_ns()
    try:
        for i, key in enumerate(keys):
            dev = device_id_for(key.public_key)
            if register is not None:
                register(key)
            if publisher_factory is not None:
                pub: Publisher = publisher_factory(dev)
            else:
                mp = MqttPublisher(mqtt, dev)
                mp.connect()
                pub = mp
            agent = Agent(
                key,
                edge,
                pub,
                Spool(keys_dir / f"{dev}.spool", fsync=edge.fsync, max_bytes=edge.spool_max_bytes),
                keep_hashes=keep_hashes,
                max_inflight=mqtt.max_inflight,
            )
            model = VehicleModel(
                seed * 100_003 + i, start_ns=start_ns, rate_hz=rate_hz, profile=DRIVERS[i % 3]
            )
            fleet.append(Vehicle(i, key, dev, model, agent, pub))

        t0 = time.monotonic()
        total_ticks = ticks
        for tick in range(total_ticks):
            if realtime:
                delay = t0 + tick / rate_hz - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            active = 0
            for v in fleet:
                if records_per_vehicle is not None and v.records >= records_per_vehicle:
                    continue
                active += 1
                for rec in v.model.step():
                    if records_per_vehicle is not None and v.records >= records_per_vehicle:
                        break
                    v.agent.offer(rec)
                    v.records += 1
            if progress is not None:
                progress(tick + 1, total_ticks)
            if active == 0:
                break
        for v in fleet:
            v.agent.flush()
        deadline = time.monotonic() + 60
        unacked = 0
        for v in fleet:
            if not v.agent.drain(timeout=max(0.0, deadline - time.monotonic())):
                unacked += v.agent.spool.count
            if isinstance(v.publisher, MqttPublisher):
                v.publisher.close(timeout=5)
            v.agent.spool.close()
        seconds = time.monotonic() - t0
    except BaseException:
        for v in fleet:
            if isinstance(v.publisher, MqttPublisher):
                v.publisher.close(timeout=1)
            v.agent.spool.close()
        raise
    return FleetResult(
        vehicles=len(fleet),
        records=sum(v.agent.stats.records for v in fleet),
        blocks=sum(v.agent.stats.blocks for v in fleet),
        payload_bytes=sum(v.agent.stats.payload_bytes for v in fleet),
        seconds=seconds,
        per_vehicle={v.device_id: v.agent.stats.records for v in fleet},
        block_hashes={v.device_id: v.agent.stats.block_hashes for v in fleet} if keep_hashes else {},
        unacked=unacked,
    )
