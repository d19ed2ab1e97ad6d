"""`edge-agent`: the vehicle side. `keygen` creates the device key; `run` signs and publishes samples."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from common.argparser import OneLineParser
from common.config import load_toml
from common.errors import TelematicsError
from common.keys import device_id_of, generate_key_file, load_key_file
from common.version import version
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.inputs import SignalSource
from edge_agent.metrics import Textfile
from edge_agent.publisher import MqttPublisher
from edge_agent.runner import Runner, make_collector, model_rate_hz, sampling_summary
from edge_agent.spool import Spool


def cmd_keygen(args: argparse.Namespace) -> int:
    cfg = load_toml(args.config, AgentConfig)
    path = Path(args.out or cfg.edge.key_path)
    key = generate_key_file(path)
    print(f"device key   {path} (mode 0600)")
    print(f"public key   {key.public_key.hex()} (also in {path}.pub)")
    print(f"device id    {device_id_of(key)}")
    print(f"key id       {key.key_id}")
    print(f"register it on the ingest side: telematics devices add --public-key {key.public_key.hex()}")
    return 0


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def _sources(
    cfg: AgentConfig, args: argparse.Namespace
) -> tuple[list[SignalSource], bool, Callable[[], bool]]:
    """The configured signal sources, whether to tick the collector with the wall clock, and
    a predicate telling when a finite source (the simulator with --duration) is used up."""
    sources: list[SignalSource] = []
    done: Callable[[], bool] = lambda: False  # noqa: E731
    if cfg.source.kind == "simulator":
        from edge_agent.sources.simulated import SimulatedSignals
        from edge_agent.sources.vehicle import VehicleModel

        rate = model_rate_hz(cfg)
        ticks = int(args.duration * rate) if args.duration else 2**62
        model = VehicleModel(args.seed, start_ns=time.time_ns(), rate_hz=rate)
        sim = SimulatedSignals(model, ticks=ticks, realtime=True, hard_brake_at_s=args.hard_brake_at)
        sources.append(sim)
        done = lambda: sim.done  # noqa: E731
    else:
        from edge_agent.sources.can import CanSource

        sources.append(CanSource(cfg.can))
        if args.duration:
            deadline = time.monotonic() + args.duration
            done = lambda: time.monotonic() >= deadline  # noqa: E731
    if cfg.source.gnss:
        from edge_agent.sources.gnss import NmeaSource

        sources.append(NmeaSource.open(cfg.gnss))
    return sources, cfg.source.kind != "simulator", done


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_toml(args.config, AgentConfig)
    key = load_key_file(cfg.edge.key_path)
    dev = cfg.edge.device_id or device_id_of(key)
    sources, wall_clock, done = _sources(cfg, args)
    spool = Spool(
        cfg.edge.spool_path,
        fsync=cfg.edge.fsync,
        max_bytes=cfg.edge.spool_max_bytes,
        max_age_s=cfg.edge.spool_max_age_s,
    )
    pub = MqttPublisher(cfg.mqtt, dev)
    agent = Agent(
        key,
        cfg.edge,
        pub,
        spool,
        device_id=dev,
        max_inflight=cfg.mqtt.max_inflight,
        sampling=sampling_summary(cfg),
    )
    pub.session = agent.session_messages()
    pub.start()  # not connected yet: blocks wait in the spool
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(
        f"edge-agent: device {dev} boot {agent.state.boot} from seq {agent.state.next_seq}"
        f" ({spool.count} blocks spooled) -> {cfg.mqtt.host}:{cfg.mqtt.port}, source {cfg.source.kind}",
        file=sys.stderr,
    )
    textfile = None
    if cfg.edge.metrics_file:
        textfile = Textfile(
            Path(cfg.edge.metrics_file), dev, _snapshot(agent, spool, pub), cfg.edge.metrics_interval_s
        )
        textfile.start()
    runner = Runner(agent, make_collector(cfg), sources, wall_clock_ticks=wall_clock)
    try:
        runner.run(lambda: stop.requested, done=done)
    finally:
        for src in sources:
            src.close()
    ok = agent.drain(timeout=30)
    if textfile is not None:
        textfile.stop()
    pub.close(timeout=5)
    spool.close()
    st = agent.stats
    print(
        f"edge-agent: sealed {st.records} records in {st.blocks} blocks (last seq {st.last_seq}),"
        f" {st.live} published live, {st.replayed} replayed, {st.dropped_blocks} dropped by the spool;"
        f" {'spool empty' if ok else f'{spool.count} blocks left in the spool for the next start'}",
        file=sys.stderr,
    )
    return 0


def _snapshot(agent: Agent, spool: Spool, pub: MqttPublisher) -> Callable[[], dict[str, float]]:
    def values() -> dict[str, float]:
        st = agent.stats
        return {
            "telematics_edge_spool_blocks": spool.count,
            "telematics_edge_spool_bytes": spool.bytes,
            "telematics_edge_connected": 1 if pub.connected else 0,
            "telematics_edge_last_seq": st.last_seq,
            "telematics_edge_records_sealed_total": st.records,
            "telematics_edge_blocks_sealed_total": st.blocks,
            "telematics_edge_blocks_published_live_total": st.live,
            "telematics_edge_blocks_replayed_total": st.replayed,
            "telematics_edge_blocks_acked_total": st.acked,
            "telematics_edge_blocks_dropped_total": st.dropped_blocks,
        }

    return values


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="edge-agent", description=__doc__)
    ap.add_argument("--config", help="agent TOML (see deploy/config/edge-agent.example.toml)")
    ap.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("keygen", help="create this vehicle's Ed25519 key (mode 0600, never overwrites)")
    p.add_argument("--out", help="key path (default: edge.key_path from the config)")
    p.set_defaults(fn=cmd_keygen)
    p = sub.add_parser("run", help="collect, sign, spool and publish (source: [source] in the config)")
    p.add_argument("--seed", type=int, default=1, help="simulator seed")
    p.add_argument("--duration", type=float, default=0, help="seconds to run (0: until SIGTERM)")
    p.add_argument(
        "--hard-brake-at", type=float, default=None, help="simulator: brake hard this many seconds in"
    )
    p.set_defaults(fn=cmd_run)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.fn(args))
    except TelematicsError as exc:  # configuration, key file, broker, spool: one line (common/errors.py)
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
