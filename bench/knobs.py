"""How the pipeline's maximum grows or shrinks with one knob at a time: vehicles, block size, batch size.

    .venv/bin/telematics bench knobs --duration 10

Each setting is one ``bench e2e`` run of the ``full`` phase alone (every signature verified, every
root recomputed, every batch anchored), offered more than the pipeline can take (``--rate``), so
the stored records/s is the maximum for that setting. Everything else stays at the e2e defaults:
200 vehicles, 100 records per block, 50,000 records per batch. Prints one small markdown table per
knob and writes ``<out>/knobs.md`` and ``<out>/knobs.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

KNOBS: dict[str, tuple[str, list[int]]] = {
    "vehicles": ("--vehicles", [50, 200, 1000]),
    "block records": ("--block-records", [25, 100, 400]),
    "batch records": ("--batch-records", [10_000, 50_000, 200_000]),
}


def build_parser(ap: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    ap = ap or argparse.ArgumentParser(
        prog="telematics bench knobs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of load per setting")
    ap.add_argument("--rate", type=float, default=200_000, help="records/s offered (above the maximum)")
    ap.add_argument("--knobs", default=",".join(KNOBS), help=f"comma-separated subset of {', '.join(KNOBS)}")
    ap.add_argument("--out", default="bench/out/knobs")
    return ap


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    from bench import e2e

    if args is None:
        args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {}
    md: list[str] = []
    ok = True
    for knob in [k.strip() for k in args.knobs.split(",") if k.strip()]:
        if knob not in KNOBS:
            print(f"bench knobs: unknown knob {knob!r}; choose from {', '.join(KNOBS)}", file=sys.stderr)
            return 2
        flag, values = KNOBS[knob]
        rows = []
        for v in values:
            run_out = out / f"{knob.replace(' ', '-')}-{v}"
            argv = ["--phases", "full", "--duration", str(args.duration), "--rate", str(args.rate)]
            argv += [flag, str(v), "--out", str(run_out)]
            print(f"bench knobs: {knob} = {v}", file=sys.stderr)
            rc = e2e.main(argv)
            ok = ok and rc == 0
            full = json.loads((run_out / "e2e.json").read_text())["phases"][0]
            n = full["stored_records"]
            rows.append(
                {
                    knob: v,
                    "stored_rps": round(full["stored_rps"]),
                    "blocks_ps": round(full["blocks_ps"]),
                    "cpu": full["cpu_cores"],
                    "cpu_us_per_record": round(full["cpu_cores"]["total"] * full["seconds"] / n * 1e6, 2)
                    if n
                    else None,
                    "lost": full["lost_records"],
                    "duplicated": full["duplicated_records"],
                }
            )
        results[knob] = rows
        md.append(
            f"| {knob} | stored records/s | blocks/s | CPU µs per record (all processes)"
            " | consumer cores | bridge cores | Kafka broker cores | lost / duplicated |"
        )
        md.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            c = r["cpu"]
            md.append(
                f"| {r[knob]:,} | {r['stored_rps']:,} | {r['blocks_ps']:,} | {r['cpu_us_per_record']}"
                f" | {c['consumer']:.2f} | {c['bridge']:.2f} | {c['kafka broker']:.2f}"
                f" | {r['lost']} / {r['duplicated']} |"
            )
        md.append("")
    text = "\n".join(md)
    (out / "knobs.md").write_text(text + "\n")
    (out / "knobs.json").write_text(json.dumps(results, indent=1) + "\n")
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
