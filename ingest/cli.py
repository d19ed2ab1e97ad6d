"""`telematics`: everything off the vehicle (stack, devices, ingest, sim, demo, ledger)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from edge_agent.config import ConfigError
from ingest.config import Config, load_config


def _cfg(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def cmd_stack(args: argparse.Namespace) -> int:
    from ingest.stack import Stack

    stack = Stack(_cfg(args))
    if args.action == "up":
        statuses = stack.up()
    elif args.action == "down":
        stack.down()
        statuses = stack.status()
    else:
        statuses = stack.status()
    for s in statuses:
        state = "healthy" if s.healthy else ("running" if s.running else "stopped")
        print(f"{s.name:<10} {state:<8} {s.endpoint:<22} pid={s.pid or '-'}  log={s.log}")
    return 0 if args.action == "down" or all(s.healthy for s in statuses) else 1


def cmd_devices(args: argparse.Namespace) -> int:
    from edge_agent.keys import load_key_file
    from ingest.registry import Registry

    cfg = _cfg(args)
    reg = Registry(cfg.path(cfg.registry.path))
    try:
        if args.action == "add":
            if args.key_file:
                pub = load_key_file(args.key_file).public_key
            elif args.public_key:
                pub = bytes.fromhex(args.public_key)
            else:
                print("devices add: give --public-key HEX or --key-file PATH", file=sys.stderr)
                return 2
            k = reg.add(pub, label=args.label)
            print(f"registered device {k.device_id} key {k.key_id}")
        elif args.action == "revoke":
            n = reg.revoke(args.device_id)
            print(f"revoked {n} key(s) of device {args.device_id}")
        else:
            for k in reg.all():
                print(f"{k.device_id}  key={k.key_id}  {k.status:<7}  label={k.label or ''}")
    finally:
        reg.close()
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from ingest.service import ROLES, run_roles

    roles = [args.only] if args.only else list(ROLES)
    asyncio.run(run_roles(_cfg(args), roles))
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    from ingest.progress import ProgressBar
    from ingest.registry import Registry
    from simulators.fleet import run_fleet

    cfg = _cfg(args)
    reg = Registry(cfg.path(cfg.registry.path)) if args.register else None
    ticks = int(args.duration * args.rate)
    bar = ProgressBar("simulating", ticks, unit=" ticks")
    try:
        res = run_fleet(
            mqtt=cfg.mqtt,
            edge=cfg.edge,
            keys_dir=cfg.path(cfg.sim.keys_dir),
            vehicles=args.vehicles,
            ticks=ticks,
            rate_hz=args.rate,
            seed=args.seed,
            realtime=not args.fast,
            records_per_vehicle=args.records_per_vehicle,
            register=(lambda key: reg.add(key.public_key, label="sim")) if reg else None,
            progress=lambda d, t: bar.update(d),
        )
    finally:
        bar.close()
        if reg:
            reg.close()
    print(
        f"published {res.records} records in {res.blocks} blocks from {res.vehicles} vehicles"
        f" in {res.seconds:.1f}s ({res.records_per_s:,.0f} records/s); unacknowledged: {res.unacked}"
    )
    return 0 if res.unacked == 0 else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from ingest.demo import run_demo

    return run_demo(
        _cfg(args),
        config_path=args.config,
        vehicles=args.vehicles,
        duration=args.duration,
        rate=args.rate,
        seed=args.seed,
        keep_stack=args.keep_stack,
    )


def cmd_ledger(args: argparse.Namespace) -> int:
    from ingest.ledger import LocalLedger

    cfg = _cfg(args)
    pub = bytes.fromhex(args.public_key) if args.public_key else None
    report = LocalLedger(cfg.path(cfg.ledger.path)).verify(pub)
    for p in report.problems:
        print(p)
    print(f"ledger {cfg.path(cfg.ledger.path)}: {report.entries} entries, {'OK' if report.ok else 'INVALID'}")
    return 0 if report.ok else 1


def cmd_query(args: argparse.Namespace) -> int:
    from ingest.store import Store, StoreError

    cfg = _cfg(args)
    try:
        store = Store(cfg.path(cfg.store.path), read_only=True)
    except StoreError as exc:
        print(
            f"telematics query: {exc} (is the ingest running? DuckDB allows one writer or several readers)",
            file=sys.stderr,
        )
        return 1
    try:
        cur = store.con.execute(args.sql)
        cols = [d[0] for d in cur.description or []]
        print(" | ".join(cols))
        for row in cur.fetchall():
            print(" | ".join("" if v is None else (v.hex() if isinstance(v, bytes) else str(v)) for v in row))
    finally:
        store.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="telematics", description=__doc__)
    ap.add_argument("--config", help="TOML config (default: $TELEMATICS_CONFIG, else embedded defaults)")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("stack", help="start, stop or inspect the local mosquitto + Kafka-protocol broker")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(fn=cmd_stack)

    p = sub.add_parser("devices", help="the device registry")
    dsub = p.add_subparsers(dest="action", required=True)
    a = dsub.add_parser("add", help="register a device key")
    a.add_argument("--public-key", help="Ed25519 public key, hex")
    a.add_argument("--key-file", help="read the public key from a device key file")
    a.add_argument("--label")
    dsub.add_parser("list", help="list registered keys")
    r = dsub.add_parser("revoke", help="revoke every key of a device")
    r.add_argument("device_id")
    p.set_defaults(fn=cmd_devices)

    p = sub.add_parser("ingest", help="run the MQTT->Kafka bridge and the verifying consumer")
    p.add_argument("--only", choices=["bridge", "consumer"], help="run one role only")
    p.set_defaults(fn=cmd_ingest)

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

    p = sub.add_parser("demo", help="stack up, ingest, simulate a fleet, wait for anchoring, summarize")
    p.add_argument("--vehicles", type=int, default=20)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep-stack", action="store_true", help="leave the brokers running afterwards")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("query", help="run one SQL statement on the DuckDB store (read-only)")
    p.add_argument("sql")
    p.set_defaults(fn=cmd_query)

    p = sub.add_parser("ledger", help="verify the local ledger")
    p.add_argument("action", choices=["verify"])
    p.add_argument("--public-key", help="the ingest's public key, hex (default: the .pub beside the key)")
    p.set_defaults(fn=cmd_ledger)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        print(f"telematics: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
