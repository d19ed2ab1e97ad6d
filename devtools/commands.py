"""The ``telematics`` commands for developers: the local stack, the simulated fleet, the demo and
the benchmarks. ``ingest.cli`` finds them through the ``telematics.commands`` entry point group (see
pyproject.toml), so the product never imports this package, and ``telematics --help`` imports no
benchmark code: a benchmark's own parser reads its arguments when it runs."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from ingest import cli_args, wiring
from ingest.config import CONFIG_ENV, Config, load_config

# `telematics bench <name> ...`: the module whose main(argv) runs it, and its one-line help.
BENCHES: dict[str, tuple[str, str]] = {
    "e2e": ("bench.e2e", "the fleet simulator against the real local stack: throughput, latency, CPU, loss"),
    "fleet": (
        "bench.fleet",
        "a real fleet's shape (10 Hz, 1-s blocks, a session per vehicle): vehicles sustained",
    ),
    "knobs": ("bench.knobs", "the maximum e2e throughput per vehicles, block size and batch size"),
    "rejections": ("bench.rejections", "rejected junk vs accepted blocks through the real consumer"),
    "campaign": ("bench.campaign", "hostile frames beside an honest fleet: accounting, delay, peak memory"),
    "stages": ("bench.stages", "per-record cost of each hot-path stage"),
    "readers": ("bench.readers", "a reader of the lake: opened, refreshed, and per data-access request"),
}


def _cfg(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def cmd_stack(args: argparse.Namespace) -> int:
    from devtools.stack import Stack, StackError

    stack = Stack(_cfg(args))
    try:
        if args.action == "up":
            statuses = stack.up()
        elif args.action == "down":
            stack.down()
            statuses = stack.status()
        else:
            statuses = stack.status()
    except StackError as exc:
        print(f"telematics stack {args.action}: {exc}", file=sys.stderr)
        return 1
    for s in statuses:
        state = "healthy" if s.healthy else ("running" if s.running else "stopped")
        print(f"{s.name:<10} {state:<8} {s.endpoint:<22} pid={s.pid or '-'}  log={s.log}")
    return 0 if args.action == "down" or all(s.healthy for s in statuses) else 1


def cmd_sim(args: argparse.Namespace) -> int:
    from common.progress import ProgressBar
    from edge_agent.publisher import PublishError
    from simulators.fleet import run_fleet

    cfg = _cfg(args)
    reg = wiring.open_registry(cfg) if args.register else None
    ticks = int(args.duration * args.rate)
    bar = ProgressBar("simulating", ticks, unit=" ticks")
    try:
        res = run_fleet(
            mqtt=cfg.mqtt,
            edge=cfg.edge,
            keys_dir=wiring.paths(cfg).sim_keys,
            vehicles=args.vehicles,
            ticks=ticks,
            rate_hz=args.rate,
            seed=args.seed,
            realtime=not args.fast,
            records_per_vehicle=args.records_per_vehicle,
            register=(lambda key: reg.add(key.public_key, label="sim")) if reg else None,
            progress=lambda d, t: bar.update(d),
        )
    except PublishError as exc:
        print(
            f"telematics sim: {exc} (is the broker up? `telematics stack up` starts one; else check"
            " [mqtt] host and port)",
            file=sys.stderr,
        )
        return 1
    finally:
        bar.close()
        if reg:
            reg.close()
    print(
        f"published {res.records} records in {res.blocks} blocks from {res.vehicles} vehicles"
        f" in {res.seconds:.1f}s ({res.records_per_s:,.0f} records/s); unacknowledged: {res.unacked}"
    )
    return 0 if res.unacked == 0 else 1


def cmd_life(args: argparse.Namespace) -> int:
    from common.progress import ProgressBar
    from ingest.ops.figures import fleet_table, render_fleet_table
    from ingest.storage.store import StoreError
    from simulators.life import fleet_plan, life_fleet
    from simulators.offline import ingest_blocks

    cfg = _cfg(args)
    start_ns = args.start
    try:
        store = wiring.open_store(cfg)
    except StoreError as exc:
        print(f"telematics life: {exc} (is the stack up? `telematics stack up`)", file=sys.stderr)
        return 1
    registry = wiring.open_registry(cfg)
    operator = wiring.operator_key(cfg, create=True)
    ledger = wiring.open_log(cfg, operator)
    plan = fleet_plan(args.vehicles, args.seed)
    bar = ProgressBar("living", args.vehicles * args.days, unit=" vehicle-days")
    try:
        vehicles, blocks = life_fleet(
            plan,
            start_ns=start_ns,
            days=args.days,
            rate_hz=args.rate_hz,
            battery_every=args.battery_every,
            progress=bar.update,
        )
        for v in vehicles:
            registry.add(v.key.public_key, device_id=v.device_id, label="life")
        stored = ingest_blocks(store, registry, ledger, blocks, batch_blocks=500)
        bar.close()
        print(
            f"stored {stored:,} records of {args.vehicles} vehicles over {args.days} days, every batch anchored"
        )
        end_ns = start_ns + args.days * 86_400 * 10**9
        rows = fleet_table(
            store, [(v.device_id, p.label) for v, p in zip(vehicles, plan, strict=True)], start_ns, end_ns
        )
    finally:
        bar.close()
        store.close()
        registry.close()
    print(render_fleet_table(rows))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from devtools.demo import run_demo

    return run_demo(
        _cfg(args),
        config_path=args.config,
        vehicles=args.vehicles,
        duration=args.duration,
        rate=args.rate,
        seed=args.seed,
        keep_stack=args.keep_stack,
    )


def cmd_bench(args: argparse.Namespace) -> int:
    if args.config:  # for a benchmark that reads the configured store (``load_config()``)
        os.environ[CONFIG_ENV] = args.config
    module = importlib.import_module(BENCHES[args.which][0])
    return int(module.main(args.rest))


def register(sub: Any) -> None:
    """Add the developer commands to ``telematics`` (``sub``: its subparsers)."""
    p = sub.add_parser("stack", help="start, stop or inspect the local mosquitto + Kafka-protocol broker")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(fn=cmd_stack)

    p = sub.add_parser("sim", help="drive N simulated vehicles through the real edge agent over MQTT")
    p.add_argument("--vehicles", type=int, default=10)
    p.add_argument("--duration", type=float, default=10.0, help="simulated seconds")
    p.add_argument("--rate", type=float, default=10.0, help="driving samples per second per vehicle")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--fast", action="store_true", help="as fast as possible instead of real time")
    p.add_argument(
        "--records-per-vehicle", type=int, help="stop each vehicle after exactly this many records"
    )
    p.add_argument(
        "--no-register",
        dest="register",
        action="store_false",
        help="do not add the vehicles' keys to the registry",
    )
    p.set_defaults(fn=cmd_sim)

    p = sub.add_parser(
        "life",
        help="months or years of a simulated fleet's life, signed and stored in minutes (simulators/life.py)",
    )
    p.add_argument("--vehicles", type=int, default=20)
    p.add_argument("--days", type=int, default=365)
    p.add_argument(
        "--start",
        type=cli_args.instant_ns,
        default=cli_args.instant_ns("2026-01-01T00:00Z"),
        help="the first day's midnight, ISO 8601 or ns (default 2026-01-01)",
    )
    p.add_argument("--rate-hz", type=float, default=1.0, help="driving samples per second (default 1)")
    p.add_argument(
        "--battery-every",
        type=int,
        default=10,
        help="a battery sample every N driving samples (default 10; the internal-resistance estimate needs"
        " samples at most 2 s apart, e.g. 1 or 2 at 1 Hz)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(fn=cmd_life)

    p = sub.add_parser("demo", help="stack up, ingest, simulate a fleet, wait for anchoring, summarize")
    p.add_argument("--vehicles", type=int, default=20)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep-stack", action="store_true", help="leave the brokers running afterwards")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser(
        "bench",
        help="benchmarks: " + ", ".join(BENCHES),
        description="\n".join(f"{name}: {what}" for name, (_, what) in BENCHES.items())
        + "\n\n`telematics bench <name> --help` lists a benchmark's options; see docs/PERFORMANCE.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("which", choices=list(BENCHES), metavar="name", help=", ".join(BENCHES))
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own options")
    p.set_defaults(fn=cmd_bench)
