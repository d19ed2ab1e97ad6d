"""Rejection throughput: junk must not cost the consumer more than honest blocks do.

    .venv/bin/telematics bench rejections --messages 20000

On a fresh local stack, the same number of Kafka messages is produced twice, straight to Kafka (the
bridge forwards without decoding, so junk and blocks cost it the same):

``accept``   honest signed blocks of ``--block-records`` records (a realistic 10 Hz vehicle seals
             ~10 records a second) from ``--vehicles`` registered vehicles;
``reject``   a mix of every kind of junk a device can send, in equal shares: bytes that are not
             MessagePack (``decode_error``), blocks signed by an unregistered key (``unknown_key``),
             a flipped signature bit (``bad_signature``), a flipped record bit (``merkle_mismatch``),
             a record out of range (``bad_record``), and one oversized payload in ``--oversized-every``.

The real consumer (``BatchConsumer``: verification, DuckDB, ledger, dead-letter topic, offsets)
then drains each topic in turn, in this process, timed from the moment it joined its group until
the last message is committed; the report gives messages/s, CPU seconds per message and the ratio
reject/accept, which must be at least 1 (docs/PERFORMANCE.md). Results go to
``<out>/rejections.json`` and ``<out>/rejections.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.progress import ProgressBar
from ingest import wiring

if TYPE_CHECKING:
    from ingest.config import Config


@dataclass
class Phase:
    name: str
    messages: int
    seconds: float
    cpu_s: float
    counted: dict[str, int]

    @property
    def per_s(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.messages * 1e6 if self.messages else 0.0


def _config(data: Path, topic: str, args: argparse.Namespace) -> Config:
    import msgspec

    from ingest.config import Config

    return msgspec.convert(
        {
            "data_dir": str(data),
            "mqtt": args.ports["mqtt"],
            "stack": args.ports["stack"],
            "kafka": {
                **args.ports["kafka"],
                "blocks_topic": topic,
                "deadletter_topic": f"{topic}-dlq",
                "partitions": args.partitions,
            },
            "ingest": {"group_id": f"bench-{topic}", "session_timeout_ms": 6000},
        },
        Config,
    )


def _honest(args: argparse.Namespace) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    """(Kafka key, payload) of ``--messages`` honest blocks, and the public keys to register."""
    from edge_agent.sources.vehicle import VehicleModel
    from schemas.block import build_block, encode_record
    from schemas.crypto import ZERO_HASH, SigningKey, device_id_for

    keys = [SigningKey.generate() for _ in range(args.vehicles)]
    models = [VehicleModel(i, start_ns=1_700_000_000_000_000_000) for i in range(args.vehicles)]
    heads = [ZERO_HASH] * args.vehicles
    out: list[tuple[bytes, bytes]] = []
    for n in range(args.messages):
        v = n % args.vehicles
        objs: list[Any] = []
        while len(objs) < args.block_records:
            objs += models[v].step()
        objs = objs[: args.block_records]
        recs = [encode_record(r) for r in objs]
        ts = [r.ts_ns for r in objs]
        dev = device_id_for(keys[v].public_key)
        b = build_block(
            keys[v],
            device_id=dev,
            boot=1,
            seq=n // args.vehicles,
            prev=heads[v],
            records=recs,
            t_first=min(ts),
            t_last=max(ts),
            seed=os.urandom(32),
        )
        heads[v] = b.hash
        out.append((dev.encode(), b.to_wire()))
    return out, [k.public_key for k in keys]


def _junk(args: argparse.Namespace, honest: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``--messages`` junk messages of every kind, built from honest blocks where a kind needs one."""
    import msgspec

    from schemas.block import Envelope, build_block, decode_envelope, encode_envelope
    from schemas.crypto import SigningKey, device_id_for

    stranger = SigningKey.generate()
    sdev = device_id_for(stranger.public_key)
    out: list[tuple[bytes, bytes]] = []
    for n in range(args.messages):
        key, payload = honest[n % len(honest)]
        env = decode_envelope(payload)
        kind = n % 5
        if args.oversized_every and n % args.oversized_every == args.oversized_every - 1:
            out.append((key, b"\xc1" * (args.max_block_bytes + 1)))
            continue
        if kind == 0:
            junk = os.urandom(len(payload))
            out.append((key, b"\xc1" + junk[1:]))
        elif kind == 1:
            b = build_block(
                stranger,
                device_id=sdev,
                boot=1,
                seq=n,
                prev=b"\x00" * 32,
                records=list(env.records),
                t_first=0,
                t_last=2**62,
                seed=env.seed,
            )
            out.append((sdev.encode(), b.to_wire()))
        elif kind == 2:
            sig = bytearray(env.sig)
            sig[n % 64] ^= 1 << (n % 8)
            out.append(
                (
                    key,
                    encode_envelope(
                        Envelope(env.v, env.key_id, env.header, bytes(sig), env.seed, env.records)
                    ),
                )
            )
        elif kind == 3:
            recs = list(env.records)
            r = bytearray(recs[0])
            r[-1] ^= 0x01
            recs[0] = bytes(r)
            out.append(
                (key, encode_envelope(Envelope(env.v, env.key_id, env.header, env.sig, env.seed, recs)))
            )
        else:
            bad = msgspec.msgpack.encode(["d", 1, 999.0] + [0.0] * 4 + [None] * 5 + [0.0, 0.0, 0.0, 1, 0.0])
            out.append(
                (key, encode_envelope(Envelope(env.v, env.key_id, env.header, env.sig, env.seed, [bad])))
            )
    return out


async def _produce(cfg: Config, msgs: list[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(
        bootstrap_servers=cfg.kafka.bootstrap, acks="all", linger_ms=5, max_request_size=4 * 1024 * 1024
    )
    await p.start()
    try:
        futs = [await p.send(cfg.kafka.blocks_topic, v, key=k) for k, v in msgs]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def _drain(cfg: Config, name: str, total: int, counter: str) -> Phase:
    """Run the real consumer until ``counter`` in its counts reaches ``total``."""
    from ingest.pipeline.consumer import BatchConsumer
    from ingest.wiring import open_ledger, paths

    store = wiring.open_store(cfg)
    reg = wiring.open_registry(cfg)
    bc = BatchConsumer(
        cfg, store=store, ledger=open_ledger(cfg), registry=reg, status_path=paths(cfg).ingest_status
    )
    bar = ProgressBar(name, total, unit=" msgs")
    base = bc.counts[counter]
    task = asyncio.create_task(bc.run())
    try:
        while not bc.partitions and not task.done():  # the clock starts when the group is joined
            await asyncio.sleep(0.005)
        t0, c0 = time.monotonic(), time.process_time()
        while bc.counts[counter] - base < total and not task.done():
            bar.update(bc.counts[counter] - base)
            await asyncio.sleep(0.02)
        seconds, cpu = time.monotonic() - t0, time.process_time() - c0
    finally:
        bar.close()
        bc.stop()
        await asyncio.wait_for(task, 60)
        store.close()
        reg.close()
    if task.exception() is not None:
        raise RuntimeError(f"{name}: the consumer failed: {task.exception()}")
    return Phase(name, total, seconds, cpu, dict(bc.counts))


def run(args: argparse.Namespace) -> list[Phase]:
    from devtools.stack import Stack, ensure_topics, free_ports

    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    args.ports = free_ports()  # one stack, shared by both configs
    accept_cfg = _config(out / "accept", "bench-accept", args)
    reject_cfg = _config(out / "reject", "bench-reject", args)
    args.max_block_bytes = accept_cfg.ingest.max_block_bytes
    stack = Stack(accept_cfg)
    stack.up()
    try:
        t = time.monotonic()
        honest, pubs = _honest(args)
        junk = _junk(args, honest)
        print(f"generated {len(honest)} blocks and {len(junk)} junk messages in {time.monotonic() - t:.1f}s")
        phases = []
        for cfg, msgs, name, counter in (
            (accept_cfg, honest, "accept", "blocks"),
            (reject_cfg, junk, "reject", "rejections"),
        ):
            cfg.path(".").mkdir(parents=True, exist_ok=True)
            asyncio.run(ensure_topics(cfg, time.monotonic() + 30))
            reg = wiring.open_registry(cfg)
            for pub in pubs:
                reg.add(pub)
            reg.close()
            asyncio.run(_produce(cfg, msgs))
            phases.append(asyncio.run(_drain(cfg, name, len(msgs), counter)))
    finally:
        stack.down()
    a, r = phases
    result = {
        "messages": args.messages,
        "block_records": args.block_records,
        "accept_msgs_per_s": a.per_s,
        "reject_msgs_per_s": r.per_s,
        "ratio": r.per_s / a.per_s if a.per_s else 0.0,
        "accept_cpu_us_per_msg": a.cpu_us,
        "reject_cpu_us_per_msg": r.cpu_us,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "phases": [asdict(p) for p in phases],
    }
    (out / "rejections.json").write_text(json.dumps(result, indent=2))
    md = table(phases)
    (out / "rejections.md").write_text(md + "\n")
    print(md)
    print(f"reject/accept throughput ratio: {result['ratio']:.2f} (must be >= 1); results in {out}")
    return phases


def table(phases: list[Phase]) -> str:
    rows = [
        "| phase | messages | seconds | messages/s | consumer CPU µs/message |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for p in phases:
        rows.append(f"| {p.name} | {p.messages:,} | {p.seconds:.2f} | {p.per_s:,.0f} | {p.cpu_us:,.0f} |")
    return "\n".join(rows)


def build_parser(ap: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    ap = ap or argparse.ArgumentParser(prog="telematics bench rejections", description=__doc__)
    ap.add_argument("--messages", type=int, default=20_000, help="messages per phase (default 20000)")
    ap.add_argument("--vehicles", type=int, default=200, help="honest vehicles (default 200)")
    ap.add_argument("--block-records", type=int, default=10, help="records per honest block (default 10)")
    ap.add_argument(
        "--oversized-every",
        type=int,
        default=500,
        help="one oversized junk payload in N (default 500; 0: none)",
    )
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--out", default="bench/out/rejections", help="output directory")
    return ap


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    args = args or build_parser().parse_args(argv)
    a, r = run(args)
    return 0 if r.per_s >= a.per_s else 1
