"""The adversarial campaign at full size: hostile frames beside an honest fleet, memory and delay.

    .venv/bin/telematics bench campaign --frames 184000 --oversized-mb 1800

On a fresh local stack (durable by default) with a bridge and a consumer process, an honest fleet
of ``--vehicles`` vehicles drives through the real edge code path at 10 Hz with one block a second,
in real time, while ``--attackers`` registered devices publish ``--frames`` hostile frames of every
kind (``simulators/hostile.py``) as fast as mosquitto takes them, ``--oversized-mb`` of them in
oversized payloads. Reported: every frame accounted for (rejections by reason, duplicates, quota
markers, frames mosquitto refused above its packet limit), honest records stored exactly once, the honest fleet's delay (sample -> stored, from the
batch log), and each process's peak RSS, against the caps documented in docs/PERFORMANCE.md.
Results: ``<out>/campaign.json`` and ``<out>/campaign.md``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.e2e import _rss_mib, _spawn, _stop, _wait_file
from common.progress import ProgressBar
from ingest import wiring

# The memory each process must stay under during the campaign (MiB); docs/PERFORMANCE.md.
CAPS_MIB = {"consumer": 1024, "bridge": 512, "mosquitto": 1024, "tansu": 512, "seaweedfs": 1024}


def _config(path: Path, data: Path, args: argparse.Namespace) -> None:
    from devtools.stack import free_ports

    p = free_ports()
    path.write_text(
        f"""# written by `telematics bench campaign`
data_dir = "{data}"

[mqtt]
port = {p["mqtt"]["port"]}

[kafka]
port = {p["kafka"]["port"]}

[stack]
kafka_storage = "{args.kafka_storage}"
s3_port = {p["stack"]["s3_port"]}
postgres_port = {p["stack"]["postgres_port"]}
mosquitto_save = "second"

[edge]
fsync = false
"""
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from devtools.stack import Stack
    from ingest.config import load_config
    from ingest.pipeline.bridge import refused_count
    from ingest.wiring import read_status
    from simulators.fleet import run_fleet
    from simulators.hostile import REFUSED_AT_BROKER, Attacker, campaign, publish_refused

    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cfg_path = out / "telematics.toml"
    _config(cfg_path, out, args)
    cfg = load_config(cfg_path)
    stack = Stack(cfg)
    stack.up()
    procs = []
    peak: dict[str, float] = {}
    try:
        reg = wiring.open_registry(cfg)
        attackers = [Attacker() for _ in range(args.attackers)]
        for a in attackers:
            reg.add(a.key.public_key)
        rng = random.Random(args.seed)
        frames = []
        oversized_left = args.oversized_mb << 20
        bar = ProgressBar("generating", args.frames, unit=" frames")
        for f in campaign(
            attackers,
            10**9,
            rng,
            broker_max=cfg.bridge.max_packet_bytes,
            bridge_max=cfg.bridge.max_payload_bytes,
            consumer_max=cfg.ingest.max_block_bytes,
        ):
            if f.kind.startswith("oversized"):
                if oversized_left <= 0:
                    continue
                oversized_left -= len(f.payload)
            frames.append(f)
            bar.update(len(frames))
            if len(frames) >= args.frames:
                break
        bar.close()
        expect = Counter(f.expect for f in frames)
        base = [sys.executable, "-m", "ingest.cli", "--config", str(cfg_path), "ingest"]
        consumer = _spawn(
            [*base, "--only", "consumer", "--batch-log", str(out / "batches.jsonl")], out / "consumer.log"
        )
        bridge = _spawn([*base, "--only", "bridge"], out / "bridge.log")
        procs = [consumer, bridge]
        _wait_file(wiring.paths(cfg).ingest_status, consumer.pid, "partitions", 60)
        _wait_file(wiring.paths(cfg).bridge_status, bridge.pid, "subscribed_ns", 60)
        pids = {s.name: s.pid or 0 for s in stack.status()}
        who = {"consumer": consumer.pid, "bridge": bridge.pid, **pids}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                for name, pid in who.items():
                    peak[name] = max(peak.get(name, 0.0), _rss_mib(pid, "VmRSS"))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        honest: list[Any] = []
        t_honest = threading.Thread(
            target=lambda: honest.append(
                run_fleet(
                    mqtt=cfg.mqtt,
                    edge=cfg.edge,
                    keys_dir=cfg.path("sim"),
                    vehicles=args.vehicles,
                    ticks=int(args.duration * 10),
                    rate_hz=10.0,
                    seed=args.seed,
                    realtime=True,
                    register=lambda k: reg.add(k.public_key),
                )
            )
        )
        t_honest.start()
        t0 = time.monotonic()
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.max_inflight_messages_set(1000)
        c.connect(cfg.mqtt.host, cfg.mqtt.port)
        c.loop_start()
        bar = ProgressBar("attacking", len(frames), unit=" frames")
        infos = []
        at_door: Counter[bool] = Counter()
        for i, f in enumerate(frames):
            if f.expect == REFUSED_AT_BROKER:
                at_door[publish_refused(cfg.mqtt.host, cfg.mqtt.port, f, f"oversize-{i}")] += 1
                bar.update(i + 1)
                continue
            infos.append(c.publish(f.topic, f.payload, qos=1))
            if len(infos) >= 2000:
                for info in infos:
                    info.wait_for_publish(60)
                infos = []
            bar.update(i + 1)
        for info in infos:
            info.wait_for_publish(60)
        bar.close()
        c.loop_stop()
        c.disconnect()
        attack_s = time.monotonic() - t0
        t_honest.join()
        honest_done = time.monotonic()
        fleet = honest[0]
        n_honest = fleet.records
        attacker_valid = sum(b.header.count for a in attackers for b in a.stored)
        deadline = time.monotonic() + args.drain_s
        st: dict[str, Any] = {}
        honest_stored: float | None = None
        while time.monotonic() < deadline:
            st = read_status(cfg) or {}
            # (the attackers' valid blocks count too; this assumes the quota refused none of them)
            if honest_stored is None and st.get("records", 0) >= n_honest + attacker_valid:
                honest_stored = time.monotonic()
            if st.get("records", 0) >= n_honest and st.get("rejections", 0) + st.get("duplicates", 0) > 0:
                # quota markers stand for several frames: settle when the counts stop moving
                time.sleep(3)
                st2 = read_status(cfg) or {}
                if st2.get("rejections") == st.get("rejections") and st2.get("records") == st.get("records"):
                    break
            time.sleep(0.5)
        total_s = time.monotonic() - t0
        stop.set()
        sampler.join()
        for p in procs:
            _stop(p)
        reg.close()
        s = wiring.open_store(cfg, read_only=True)
        try:
            reasons = Counter(
                {
                    r: int(n)
                    for r, n in s.con.execute(
                        "SELECT reason, count(*) FROM rejections WHERE reason <> 'quota_exceeded' GROUP BY ALL"
                    ).fetchall()
                }
            )
            over_quota = sum(
                refused_count(d)
                for (d,) in s.con.execute(
                    "SELECT detail FROM rejections WHERE reason = 'quota_exceeded'"
                ).fetchall()
            )
            (dups,) = s.con.execute("SELECT count(*) FROM duplicates").fetchone() or (0,)
            ids = [a.id for a in attackers]
            (attacker_blocks,) = s.con.execute(
                "SELECT count(*) FROM blocks WHERE list_contains($ids, device_id)", {"ids": ids}
            ).fetchone() or (0,)
            (attacker_records,) = s.con.execute(
                "SELECT coalesce(sum(record_count), 0) FROM blocks WHERE list_contains($ids, device_id)",
                {"ids": ids},
            ).fetchone() or (0,)
            records = s.counts()["records"] - int(attacker_records)
            rows = s.con.execute(
                "SELECT count(*) - count(DISTINCT (device_id, block_seq, idx)) FROM driving_samples"
            ).fetchone()
        finally:
            s.close()
        accounted = (
            sum(reasons.values())
            + over_quota
            + int(dups)
            + len([f for f in frames if f.expect == "stored"])
            + at_door[True]
        )
        lat = _latencies(out / "batches.jsonl")
    finally:
        for p in procs:
            _stop(p)
        stack.down()
    result = {
        "frames": len(frames),
        "oversized_mb": sum(len(f.payload) for f in frames if f.kind.startswith("oversized")) / 2**20,
        "attack_seconds": attack_s,
        "total_seconds": total_s,
        "expected": dict(expect),
        "rejections_by_reason": dict(reasons),
        "over_quota_frames": over_quota,
        # frames above the packet limit: closed unacknowledged by the broker / acknowledged (must be 0)
        "refused_by_broker": at_door[True],
        "not_refused_by_broker": at_door[False],
        "duplicates": int(dups),
        "frames_accounted": accounted,
        "honest_records_expected": n_honest,
        "records_stored": records,
        "attacker_blocks_stored": int(attacker_blocks),
        "duplicated_rows": int(rows[0]) if rows else -1,
        "batch_commit_lag_s": lat,
        # from the honest fleet's last acknowledged block to all its records stored (polled every 0.5 s)
        "honest_drain_s": (honest_stored - honest_done) if honest_stored is not None else None,
        "peak_rss_mib": peak,
        "caps_mib": CAPS_MIB,
        "under_caps": all(peak.get(k, 0) <= v for k, v in CAPS_MIB.items()),
    }
    (out / "campaign.json").write_text(json.dumps(result, indent=2))
    md = _table(result)
    (out / "campaign.md").write_text(md + "\n")
    print(md)
    return result


def _latencies(path: Path) -> dict[str, float]:
    """Per batch: commit time minus build time, as a rough delay measure (seconds)."""
    xs = []
    try:
        for line in path.read_text().splitlines():
            b = json.loads(line)
            xs.append((b["committed_ns"] - b["built_ns"]) / 1e9)
    except (OSError, ValueError, KeyError):
        return {}
    xs.sort()
    if not xs:
        return {}
    return {"p50": xs[len(xs) // 2], "p99": xs[min(len(xs) - 1, int(len(xs) * 0.99))], "max": xs[-1]}


def _table(r: dict[str, Any]) -> str:
    lines = [
        f"frames {r['frames']:,} ({r['oversized_mb']:.0f} MiB oversized) in {r['attack_seconds']:.1f} s;"
        f" accounted {r['frames_accounted']:,} (rejected {sum(r['rejections_by_reason'].values()):,}, over quota"
        f" {r['over_quota_frames']:,}, refused by the broker {r['refused_by_broker']:,},"
        f" duplicates {r['duplicates']:,}, stored {r['attacker_blocks_stored']:,});"
        f" honest records {r['records_stored']:,}/{r['honest_records_expected']:,},"
        f" duplicated rows {r['duplicated_rows']}; honest data stored {r['honest_drain_s']:.1f} s after its last block"
        if r["honest_drain_s"] is not None
        else f" duplicated rows {r['duplicated_rows']}; honest data NOT all stored",
        "",
        "| process | peak RSS MiB | cap MiB |",
        "| --- | ---: | ---: |",
    ]
    for k, cap in CAPS_MIB.items():
        lines.append(f"| {k} | {r['peak_rss_mib'].get(k, 0):,.0f} | {cap:,} |")
    return "\n".join(lines)


def build_parser(ap: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    ap = ap or argparse.ArgumentParser(prog="telematics bench campaign", description=__doc__)
    ap.add_argument("--frames", type=int, default=184_000, help="hostile frames (default 184000)")
    ap.add_argument("--oversized-mb", type=int, default=1800, help="MiB of oversized frames among them")
    ap.add_argument("--attackers", type=int, default=20, help="registered hostile devices (default 20)")
    ap.add_argument("--vehicles", type=int, default=50, help="honest vehicles at 10 Hz (default 50)")
    ap.add_argument("--duration", type=float, default=30.0, help="honest fleet's run, seconds (default 30)")
    ap.add_argument("--drain-s", type=float, default=600.0, help="how long to wait for the backlog to drain")
    ap.add_argument("--kafka-storage", choices=("s3", "memory"), default="s3")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="bench/out/campaign")
    return ap


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    args = args or build_parser().parse_args(argv)
    r = run(args)
    ok = r["frames_accounted"] == r["frames"] and r["records_stored"] == r["honest_records_expected"]
    print(
        f"accounting {'complete' if ok else 'INCOMPLETE'}; memory {'under' if r['under_caps'] else 'OVER'} the caps;"
        f" results in {args.out}"
    )
    return 0 if ok and r["under_caps"] else 1
