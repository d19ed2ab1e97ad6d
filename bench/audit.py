"""Audit benchmark: build a database through the real Processor (offline ingest, no brokers), then run
`telematics audit`'s Auditor on it and report per-stage costs.

    .venv/bin/python bench/audit.py --vehicles 20 --blocks 500 --block-records 100

Reports records/s for the whole audit and for its hashing (leaves recomputed in DuckDB plus the
records trees rebuilt per block), and per-record costs of each stage. Numbers go in docs/PROOFS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common.progress import ProgressBar
from ingest.ledger.local import LocalLedger
from ingest.ops.audit import Auditor
from ingest.storage.registry import Registry
from ingest.storage.store import FileStore
from schemas.crypto import SigningKey
from simulators.offline import ingest_offline, make_fleet


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vehicles", type=int, default=20)
    ap.add_argument("--blocks", type=int, default=500, help="blocks per vehicle")
    ap.add_argument("--block-records", type=int, default=100, help="records per block")
    ap.add_argument("--dir", help="work directory (default: a temporary one); reused if it holds a database")
    ap.add_argument("--runs", type=int, default=3, help="audit runs; the best is reported")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)

    work = Path(args.dir or tempfile.mkdtemp(prefix="audit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "telematics.duckdb"
    fresh = not db.exists()
    store = FileStore(db)
    registry = Registry(work / "registry.sqlite")
    key_path = work / "ingest.key"
    operator = SigningKey.from_pem(key_path.read_bytes()) if key_path.exists() else SigningKey.generate()
    if not key_path.exists():
        key_path.write_bytes(operator.to_pem())
        os.chmod(key_path, 0o600)
    ledger = LocalLedger(work / "ledger.jsonl", operator)
    if fresh:
        total = args.vehicles * args.blocks * args.block_records
        bar = ProgressBar("building database (offline ingest)", total, unit=" records")
        t = time.perf_counter()
        done = [0]

        def progress(n: int) -> None:
            done[0] += n
            bar.update(done[0])

        ingest_offline(
            store,
            registry,
            ledger,
            make_fleet(args.vehicles),
            blocks_per_vehicle=args.blocks,
            block_records=args.block_records,
            progress=progress,
        )
        bar.close()
        print(f"built {db} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    store.close()
    store = FileStore(db, read_only=True)

    best = None
    for i in range(args.runs):
        rep = Auditor(store, registry, ledger, operator.public_key).run()
        total_s = sum(rep.seconds.values())
        print(
            f"run {i + 1}: {rep.records:,} records in {total_s:.2f}s, findings {len(rep.findings)}",
            file=sys.stderr,
        )
        if best is None or total_s < sum(best.seconds.values()):
            best = rep
    assert best is not None
    n = best.records
    total_s = sum(best.seconds.values())
    hashing_s = best.seconds["leaves"] + best.sub_seconds["blocks.trees"]
    result = {
        "records": n,
        "blocks": best.blocks,
        "batches": best.batches,
        "block_records": args.block_records,
        "findings": len(best.findings),
        "audit_seconds": round(total_s, 3),
        "audit_records_per_s": round(n / total_s),
        "hashing_seconds": round(hashing_s, 3),
        "hashing_records_per_s": round(n / hashing_s),
        "stages_us_per_record": {
            k: round(v / n * 1e6, 3) for k, v in {**best.seconds, **best.sub_seconds}.items()
        },
        "cpu_count": os.cpu_count(),
    }
    print()
    print("| stage | seconds | µs/record |")
    print("| --- | ---: | ---: |")
    for k, v in {**best.seconds, **best.sub_seconds}.items():
        print(f"| {k} | {v:.3f} | {v / n * 1e6:.3f} |")
    print(f"| **audit total** | {total_s:.3f} | {total_s / n * 1e6:.3f} |")
    print()
    print(
        f"{n:,} records ({best.blocks:,} blocks of {args.block_records}, {best.signatures:,} signatures):"
        f" audit {n / total_s:,.0f} records/s; hashing (leaves + trees) {n / hashing_s:,.0f} records/s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    store.close()
    registry.close()
    return 0 if not best.findings else 1


if __name__ == "__main__":
    sys.exit(main())
