"""What a reader of the lake costs: opening one, taking the latest snapshot on one kept open
(``Store.refresh``), and one request of the data-access API (a proof bundle of ``--rows`` anchored
driving rows, what `telematics serve` builds for ``GET /v1/rows``) on a new reader per request
against the reader `telematics serve` keeps (``wiring.ServedProvers``).

    .venv/bin/telematics demo --keep-stack        # a lake with anchored rows, its stack left running
    .venv/bin/telematics bench readers --rounds 10

It reads the configured store (`telematics --config FILE bench readers`), which must be the lake
and hold anchored rows; the ingest may run meanwhile. Reported: wall and CPU time of this process
per operation, the mean over ``--rounds``, and the CPU one reader per request costs against one
kept (docs/PERFORMANCE.md, "Readers of the lake").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

OPEN = "open a reader"
REFRESH = "take the latest snapshot (refresh)"
NEW = "a request, a new reader each"
KEPT = "a request, the reader kept (serve)"


def _timed(rounds: int, fn: Callable[[], None]) -> dict[str, float]:
    fn()  # warm: imports and the first attach are not what a running service pays
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        fn()
    return {
        "wall_ms": round((time.perf_counter() - wall) / rounds * 1e3, 1),
        "cpu_ms": round((time.process_time() - cpu) / rounds * 1e3, 1),
    }


def measure(cfg: Any, rounds: int, rows: int) -> dict[str, dict[str, float]]:
    from ingest import wiring
    from ingest.ops.proofs import Prover, RowRef, select_rows
    from ingest.storage.store import Store
    from schemas.proof import encode_bundle

    with wiring.prover(cfg) as (_, store):
        refs: list[RowRef] = select_rows(store, "driving", None, rows, sample=False)
    if len(refs) < rows:
        raise SystemExit(
            f"bench readers: {len(refs)} anchored driving rows, {rows} wanted: run the demo first"
        )

    def request(opener: Callable[[], AbstractContextManager[tuple[Prover, Store]]]) -> Callable[[], None]:
        def go() -> None:
            with opener() as (prover, _):
                encode_bundle(prover.bundle(refs))

        return go

    out = {OPEN: _timed(rounds, lambda: wiring.open_store(cfg, read_only=True).close())}
    reader = wiring.open_store(cfg, read_only=True)
    try:
        out[REFRESH] = _timed(rounds, reader.refresh)
    finally:
        reader.close()
    out[NEW] = _timed(rounds, request(lambda: wiring.prover(cfg)))
    served = wiring.ServedProvers(cfg)
    try:
        out[KEPT] = _timed(rounds, request(served.open))
    finally:
        served.close()
    return out


def main(argv: list[str] | None = None) -> int:
    from common.errors import TelematicsError
    from ingest.config import load_config

    ap = argparse.ArgumentParser(
        prog="telematics bench readers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--rounds", type=int, default=10, help="times each operation runs (default 10)")
    ap.add_argument("--rows", type=int, default=20, help="rows in each request's bundle (default 20)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.rows < 1:
        ap.error("--rounds and --rows are at least 1")
    try:
        cfg = load_config()
        if cfg.store.backend != "lake":
            print(
                "bench readers: the store is a DuckDB file; readers of the lake are measured", file=sys.stderr
            )
            return 2
        res = measure(cfg, args.rounds, args.rows)
    except TelematicsError as exc:
        print(f"bench readers: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(f"{args.rounds} rounds, bundles of {args.rows} rows\n")
    print("| operation | wall ms | CPU ms |\n| --- | ---: | ---: |")
    for name, t in res.items():
        print(f"| {name} | {t['wall_ms']:,} | {t['cpu_ms']:,} |")
    new, kept = res[NEW]["cpu_ms"], res[KEPT]["cpu_ms"]
    print(
        f"\nthe kept reader: {new - kept:,.1f} ms of CPU less per request ({kept / new:.0%} of a new reader's)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rounds": args.rounds, "rows": args.rows, "results": res}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
