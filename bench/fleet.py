"""A real fleet's shape against the real local stack: how many vehicles this host takes.

    .venv/bin/telematics bench fleet --vehicles 1000,2000,3000,4000 --duration 30

Every vehicle samples at 10 Hz (a battery sample with every tenth driving sample: 11 records/s),
seals a signed block every second (~11 records) and holds **its own MQTT 5 session** (QoS 1), as
on the road. For each fleet size in ``--vehicles`` a fresh stack runs one paced phase of
`bench e2e` (every signature verified, every Merkle root recomputed, every batch anchored) while
analysts run five dashboard queries every 5 s through the read-only path (bench/analysts.py).

A fleet size is **sustained** when nothing is lost or duplicated, the pipeline stored what was
offered, the p99 sample -> queryable latency is at most ``--p99-ms`` and the simulator kept its
schedule (when it did not, the load generator, not the pipeline, was the limit: said so).
The report gives per size: records and blocks/s, latency, CPU per component in cores and in µs per
block, sessions (and mosquitto's open files), analysts' p95 per query, peak memory; and the largest
sustained size. Results: ``<out>/fleet.json``, ``<out>/fleet.md``, ``<out>/fleet.png``.
With ``--mqtt-tls`` every session is TLS (a development CA made for the run; the vehicles verify
the broker's certificate), as vehicles on the road connect; with ``--mqtt-auth`` every vehicle logs
in with a password of its own under the production ACL. ``--cpus`` keeps the whole run on the CPUs
given (``--consumer-cpus``: the consumers on others), to measure what a core carries. The report
ends with the cores ``--plan-vehicles`` vehicles (10,000 by default) would need at the measured CPU
cost per block of the largest size sustained: a linear estimate, split into the pipeline (what an
ingest host runs) and the load generator and dashboard (which production runs elsewhere).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import e2e
from bench.machine import machine, reference_unit_us, speed_line
from common.progress import ProgressBar

HZ = 10  # driving samples per second per vehicle
RECORDS_PER_S = HZ * 1.1  # with one battery sample per ten driving samples (simulators/load.py)
GENERATOR_LAG_MS = 500.0  # a generator later than this (p99) did not offer the fleet's load on time


def sustained(r: e2e.PhaseResult, p99_ms: float) -> tuple[bool, str]:
    """Whether the phase kept up with the fleet, and why not."""
    if r.lost_records or r.duplicated_records or r.unexpected_blocks:
        return False, f"{r.lost_records} lost, {r.duplicated_records} duplicated records"
    if r.stored_records < r.generated_records:
        return False, f"stored {r.stored_records:,} of {r.generated_records:,} records"
    lag = r.sim_lag_ms.get("p99", 0.0)
    p99 = r.latency_ms.get("p99", float("inf"))
    late = lag > GENERATOR_LAG_MS
    # A sample's latency counts from its schedule time, so it includes the generator's lag: the
    # pipeline fell behind too when the latency is over the line by more than that lag.
    if p99 - (lag if late else 0.0) > p99_ms:
        also = f"; the load generator also fell {lag:,.0f} ms behind (p99)" if late else ""
        return False, f"p99 sample -> queryable {p99:,.0f} ms > {p99_ms:,.0f} ms{also}"
    if late:
        return False, f"the load generator fell {lag:,.0f} ms behind (p99): it was the limit"
    return True, "sustained"


def plan(
    results: list[e2e.PhaseResult], verdicts: list[tuple[bool, str]], vehicles: int
) -> dict[str, Any] | None:
    """The cores ``vehicles`` need at the CPU cost per block of the largest fleet size sustained
    (of the smallest size measured when none was): a vehicle sends a block a second, so a component
    costing c µs per block takes c × vehicles / 10⁶ cores. A linear estimate from one run: costs
    per block change with load and with the box's speed."""
    kept = [r for r, (ok, _) in zip(results, verdicts, strict=True) if ok]
    base = max(kept, key=lambda r: r.vehicles) if kept else min(results, key=lambda r: r.vehicles)
    us = {k: v for k, v in base.cpu_us_per_block.items() if v > 0}
    if not us:
        return None
    cores = {k: v * vehicles / 1e6 for k, v in us.items()}
    return {
        "vehicles": vehicles,
        "from_vehicles": base.vehicles,
        "from_sustained": bool(kept),
        "us_per_block": round(sum(us.values()), 1),
        "cores": round(sum(cores.values()), 2),
        "cores_ingest": round(sum(v for k, v in cores.items() if k not in e2e.NOT_PIPELINE), 2),
        "cores_consumers": round(cores.get("consumer", 0.0), 2),
        "cores_by_component": {k: round(v, 2) for k, v in cores.items()},
    }


def plan_line(p: dict[str, Any], cores_given: int) -> str:
    base = f"{p['from_vehicles']:,}-vehicle run" + ("" if p["from_sustained"] else ", not sustained")
    return (
        f"at the costs per block of the {base} ({p['us_per_block']:,.0f} µs of CPU per block in all),"
        f" {p['vehicles']:,} vehicles need about **{p['cores']:.1f} cores**: {p['cores_ingest']:.1f} for"
        f" the pipeline (consumers {p['cores_consumers']:.1f}), the rest for the load generator and the"
        f" dashboard; this run had {cores_given} CPUs"
    )


def table(results: list[e2e.PhaseResult], verdicts: list[tuple[bool, str]]) -> str:
    cols = [f"{r.vehicles:,} vehicles" for r in results]
    f = e2e._fmt
    rows: list[tuple[str, list[str]]] = [
        ("**sustained**", [("**yes**" if ok else f"no: {why}") for ok, why in verdicts]),
        *e2e.session_rows(results),
        ("sessions connected in (s)", [f"{r.connect_s:.1f}" for r in results]),
        ("offered records/s", [f(r.offered_rps) for r in results]),
        ("stored records/s", [f(r.stored_rps) for r in results]),
        ("blocks/s", [f(r.blocks_ps) for r in results]),
        ("latency p50 / p95 / p99 ms", [e2e._lat(r.latency_ms) for r in results]),
        ("simulator lag p99 ms", [e2e._pair(r.sim_lag_ms, "p99") for r in results]),
        ("lost / duplicated records", [f"{r.lost_records} / {r.duplicated_records}" for r in results]),
        ("anchor lag p50 / max ms", [e2e._pair(r.anchor_lag_ms, "p50", "max") for r in results]),
    ]
    comps = e2e.measured(results)
    for comp in (*comps, "total"):
        rows.append((f"CPU {comp} (cores)", [f"{r.cpu_cores.get(comp, 0):.2f}" for r in results]))
    for comp in comps:
        rows.append((f"CPU {comp} (µs per block)", [f(r.cpu_us_per_block.get(comp, 0)) for r in results]))
    for q in dict.fromkeys(q for r in results for q in r.analysts_ms):
        rows.append((f"analysts: {q}, p95 ms", [e2e._pair(r.analysts_ms.get(q, {}), "p95") for r in results]))
    for comp in ("mosquitto", "kafka broker", "bridge", "consumer"):
        rows.append((f"peak RSS {comp} (MiB)", [f(r.rss_mib.get(comp, 0)) for r in results]))
    lines = ["| | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
    lines += [f"| {k} | " + " | ".join(v) + " |" for k, v in rows]
    return "\n".join(lines)


def chart(results: list[e2e.PhaseResult], p99_ms: float, path: Path, cores: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r.vehicles for r in results]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.5))
    ax1.plot(n, [r.offered_rps / 1000 for r in results], "o:", color="tab:gray", label="offered")
    ax1.plot(n, [r.stored_rps / 1000 for r in results], "o-", color="tab:blue", label="stored")
    ax1.set_title("Throughput")
    ax1.set_ylabel("thousand records/s")
    ax2.plot(n, [r.latency_ms.get("p50", 0) for r in results], "o:", color="tab:green", label="p50")
    ax2.plot(n, [r.latency_ms.get("p99", 0) for r in results], "o-", color="tab:green", label="p99")
    ax2.axhline(p99_ms, color="tab:red", lw=0.8, label=f"target p99 {p99_ms:,.0f} ms")
    ax2.set_title("Sample → queryable")
    ax2.set_ylabel("ms")
    bottom = [0.0] * len(results)
    width = max(1, min(n) // 3) if len(n) == 1 else (max(n) - min(n)) / len(n) / 2
    for comp in e2e.measured(results):
        v = [r.cpu_cores.get(comp, 0) for r in results]
        ax3.bar(n, v, width=width, bottom=bottom, label=comp)
        bottom = [a + b for a, b in zip(bottom, v, strict=True)]
    ax3.axhline(cores, color="tab:red", lw=0.8, label="cores given to the run")
    ax3.set_title("CPU by component")
    ax3.set_ylabel("cores")
    for ax in (ax1, ax2, ax3):
        ax.set_xlabel("vehicles (10 Hz, a block a second, one MQTT session each)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="telematics bench fleet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--vehicles", default="1000,2000,3000,4000", help="comma-separated fleet sizes, one phase each"
    )
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of driving per fleet size")
    ap.add_argument("--p99-ms", type=float, default=2000.0, help="the latency a sustained fleet keeps")
    ap.add_argument(
        "--analysts-every", type=float, default=5.0, help="seconds between dashboard rounds (0: none)"
    )
    ap.add_argument(
        "--batch-age-ms", type=int, default=250, help="a consumer batch is flushed after this age"
    )
    ap.add_argument(
        "--plan-vehicles",
        type=int,
        default=10_000,
        metavar="N",
        help="estimate the cores N vehicles need at the measured costs per block (default 10,000)",
    )
    e2e.add_stack_args(ap)
    ap.add_argument("--out", default="bench/out/fleet", help="directory for data, logs and the report")
    ap.add_argument(
        "--smoke", action="store_true", help="two tiny fleets for a few seconds (CI): the machinery"
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with e2e.pinned(args.cpus):
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    if args.smoke:
        args.vehicles, args.duration, args.analysts_every = "20,40", 4.0, 1.0
    try:
        sizes = [int(v) for v in args.vehicles.split(",") if v.strip()]
    except ValueError:
        print(
            f"bench fleet: --vehicles wants comma-separated numbers, not {args.vehicles!r}", file=sys.stderr
        )
        return 2
    if args.plan_vehicles < 1:
        print("bench fleet: --plan-vehicles wants a number of vehicles, at least 1", file=sys.stderr)
        return 2
    if not sizes or min(sizes) < args.procs:
        print(f"bench fleet: each fleet needs at least --procs ({args.procs}) vehicles", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # one phase of `bench e2e` per size, with a real fleet's shape
    e2e_args = e2e.build_parser().parse_args([])
    e2e_args.__dict__.update(
        {k: getattr(args, k) for k in e2e.STACK_ARGS},
        duration=args.duration,
        block_records=100,  # a block closes on age (1 s, ~11 records), not on size
        block_age_ms=1000,
        batch_age_ms=args.batch_age_ms,
        sessions="vehicle",
        analysts_every=args.analysts_every,
        store="lake",
        out=str(out),
    )
    from devtools.stack import StackError
    from simulators.load import LoadError, LoadFleet

    speed_start = reference_unit_us()
    t_start = time.monotonic()
    results: list[e2e.PhaseResult] = []
    verdicts: list[tuple[bool, str]] = []
    for n in sizes:
        rate = n * RECORDS_PER_S
        fleet = LoadFleet(
            vehicles=n,
            rate=rate,
            duration=args.duration,
            block_records=e2e_args.block_records,
            block_age_ms=e2e_args.block_age_ms,
            procs=args.procs,
            seed=args.seed,
            work_dir=out / "spools",
        )
        try:
            bar = ProgressBar(f"generating {n:,} vehicles", int(rate * args.duration), unit=" records")
            manifests = fleet.wait_generated(bar.update)
            bar.close()
            e2e_args.vehicles, e2e_args.rate = n, rate
            r = e2e.run_phase(f"{n}-vehicles", fleet, manifests, e2e_args, paced=True, passthrough=False)
        except (LoadError, StackError) as exc:  # a worker or the stack failed: one line, not a traceback
            print(f"bench fleet: {n:,} vehicles: {exc}", file=sys.stderr)
            return 1
        finally:
            fleet.close()
        results.append(r)
        verdicts.append(sustained(r, args.p99_ms))
        print(
            f"{n:,} vehicles: {r.stored_rps:,.0f} records/s, p99 {r.latency_ms.get('p99', 0):,.0f} ms,"
            f" {verdicts[-1][1]}",
            file=sys.stderr,
        )
    shutil.rmtree(out / "spools", ignore_errors=True)
    best = max((r.vehicles for r, (ok, _) in zip(results, verdicts, strict=True) if ok), default=0)
    md = table(results, verdicts)
    box = machine(speed_start, reference_unit_us())
    summary = (
        f"largest fleet sustained: **{best:,} vehicles** (10 Hz, 1-s blocks, own MQTT session each;"
        f" 0 lost, p99 ≤ {args.p99_ms:,.0f} ms)"
        if best
        else "no fleet size was sustained"
    )
    estimate = plan(results, verdicts, args.plan_vehicles)
    if estimate is not None:
        summary += "\n\n" + plan_line(estimate, e2e.cores_given(args))
    summary += f"\n\n{speed_line(box)}"
    report = {
        "machine": box,
        "args": vars(args),
        "phases": [asdict(r) for r in results],
        "sustained": [
            {"vehicles": r.vehicles, "ok": ok, "why": why}
            for r, (ok, why) in zip(results, verdicts, strict=True)
        ],
        "largest_sustained": best,
        "plan": estimate,
        "seconds": round(time.monotonic() - t_start, 1),
    }
    (out / "fleet.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "fleet.md").write_text(md + "\n\n" + summary + "\n")
    chart(results, args.p99_ms, out / "fleet.png", e2e.cores_given(args))
    print()
    print(md)
    print()
    print(summary)
    print(f"\nreport: {out / 'fleet.md'}, {out / 'fleet.json'}, chart: {out / 'fleet.png'}")
    ok = all(r.lost_records == 0 and r.duplicated_records == 0 and r.unexpected_blocks == 0 for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
