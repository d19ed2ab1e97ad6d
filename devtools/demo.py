"""`telematics demo`: the whole pipeline once, on the embedded defaults, with a summary."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from common.progress import ProgressBar
from devtools.stack import Stack
from ingest import wiring
from ingest.config import Config
from ingest.ops import query
from ingest.wiring import read_status
from simulators.fleet import run_fleet

EXAMPLE_QUERIES = [
    (
        "Mean speed (km/h) and distance per vehicle",
        "SELECT device_id, round(avg(speed_mps) * 3.6, 1) AS mean_kmh,"
        " round((max(odometer_m) - min(odometer_m)) / 1000, 2) AS km"
        " FROM driving_samples GROUP BY device_id ORDER BY km DESC LIMIT 5",
    ),
    (
        "State of charge and charging per vehicle",
        "SELECT device_id, round(min(soc_pct), 1) AS soc_min, round(max(soc_pct), 1) AS soc_max,"
        " bool_or(is_charging) AS charged FROM battery_samples GROUP BY device_id ORDER BY soc_min LIMIT 5",
    ),
]


def start_ingest(config_path: str | None, log: Path, roles: str | None = None) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "ingest.cli"]
    if config_path:
        argv += ["--config", config_path]
    argv += ["ingest"] + (["--only", roles] if roles else [])
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_for_status(cfg: Config, pid: int, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = read_status(cfg)
        if st is not None and st.get("pid") == pid:
            return st
        time.sleep(0.1)
    raise TimeoutError(f"the ingest (pid {pid}) did not report ready within {timeout:.0f}s")


def run_demo(
    cfg: Config,
    *,
    config_path: str | None,
    vehicles: int,
    duration: float,
    rate: float,
    seed: int,
    keep_stack: bool,
) -> int:
    data = Path(cfg.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    print(f"demo: data directory {data.resolve()}")
    stack = Stack(cfg)
    was_up = all(s.healthy for s in stack.status())
    stack.up()
    print(
        f"demo: mosquitto on {cfg.mqtt.host}:{cfg.mqtt.port}, Kafka-protocol broker on {cfg.kafka.bootstrap}"
    )
    try:
        return _run(cfg, data, config_path, vehicles, duration, rate, seed)
    finally:
        if not keep_stack and not was_up:
            stack.down()


def _run(
    cfg: Config, data: Path, config_path: str | None, vehicles: int, duration: float, rate: float, seed: int
) -> int:
    pre = wiring.open_store(cfg)  # creates the store (the lake's tables) before the ingest starts
    before = pre.counts()
    pre.close()
    ingest = start_ingest(config_path, data / "ingest.log")
    try:
        wait_for_status(cfg, ingest.pid, 60)
        print(f"demo: ingest running (pid {ingest.pid}, log {data / 'ingest.log'})")
        reg = wiring.open_registry(cfg)
        ticks = int(duration * rate)
        bar = ProgressBar("publishing", ticks, unit=" ticks")
        t_start = time.time_ns()
        try:
            fleet = run_fleet(
                mqtt=cfg.mqtt,
                edge=cfg.edge,
                keys_dir=wiring.paths(cfg).sim_keys,
                vehicles=vehicles,
                ticks=ticks,
                rate_hz=rate,
                seed=seed,
                realtime=True,
                register=lambda key: reg.add(key.public_key, label="demo"),
                progress=lambda d, t: bar.update(d),
            )
        finally:
            bar.close()
            reg.close()
        want = before["records"] + fleet.records
        bar = ProgressBar("storing", fleet.records, unit=" records")
        deadline = time.monotonic() + 120
        st: dict[str, int] = {}
        while time.monotonic() < deadline:
            st = read_status(cfg) or {}
            stored = st.get("records", 0) - before["records"]
            bar.update(stored, f"blocks {st.get('blocks', 0) - before['blocks']}")
            if st.get("records", 0) >= want and st.get("anchored") == st.get("batches"):
                break
            if ingest.poll() is not None:
                raise RuntimeError(f"the ingest exited with {ingest.returncode}; see {data / 'ingest.log'}")
            time.sleep(0.2)
        bar.close()
        wall = time.monotonic() - bar.t0 + fleet.seconds
    finally:
        if ingest.poll() is None:
            ingest.send_signal(signal.SIGTERM)
            try:
                ingest.wait(30)
            except subprocess.TimeoutExpired:
                ingest.kill()
                ingest.wait()

    store = wiring.open_store(cfg, read_only=True)
    try:
        after = store.counts()
        batches = store.con.execute(
            "SELECT b.batch_no, b.root FROM batches b JOIN anchors a USING (batch_no) ORDER BY batch_no"
        ).fetchall()
        results = [
            (title, sql, store.con.execute(sql).fetchall(), [d[0] for d in store.con.description or []])
            for title, sql in EXAMPLE_QUERIES
        ]
        query.load_figures(store.con)
        span = f"make_timestamp_ns({t_start - 10**9}), make_timestamp_ns({time.time_ns()})"
        figures = store.con.execute(
            f"SELECT s.device_id, s.km, s.score, s.braking + s.braking_severe + s.acceleration"
            f" + s.acceleration_severe + s.cornering + s.cornering_severe, b.soh_last"
            f" FROM vt_score({span}) s LEFT JOIN vt_battery({span}) b USING (device_id) ORDER BY s.score DESC"
        ).fetchall()
    finally:
        store.close()
    ledger = wiring.open_log(cfg)
    report = ledger.verify()
    roots = ledger.roots()
    proof_line, audit_line, proof_ok, audit_ok = _prove_and_audit(cfg, data)
    anchors_ok = sum(1 for n, r in batches if roots.get(int(n)) == bytes(r))
    d = {k: after[k] - before[k] for k in after}
    ok = (
        d["records"] == fleet.records
        and d["rejections"] == 0
        and after["anchored"] == after["batches"]
        and anchors_ok == after["batches"]
        and report.ok
        and proof_ok
        and audit_ok
    )
    print()
    print("=" * 64)
    print("demo summary: this run")
    print("=" * 64)
    rows = [
        ("vehicles", f"{fleet.vehicles}"),
        ("records published", f"{fleet.records:,}"),
        ("records stored", f"{d['records']:,}"),
        ("blocks stored", f"{d['blocks']:,} (signatures and Merkle roots verified)"),
        ("batches", f"{d['batches']:,}"),
        ("rejections", f"{d['rejections']:,}"),
        ("duplicates", f"{d['duplicates']:,}"),
        (
            "gap detections",
            f"{d['gaps']:,} (out-of-order arrivals included; `telematics gaps` lists what is missing)",
        ),
        (
            "records/s",
            f"{fleet.records / wall:,.0f} end to end ({fleet.records:,} records in {wall:.1f}s; the fleet drives"
            f" in real time at {rate:g} Hz, so this is the offered load, not the ceiling)",
        ),
        ("", ""),
        ("the whole store", "(this run and earlier ones)"),
        ("anchors verified", f"{anchors_ok:,}/{after['batches']:,} batch roots found in the ledger"),
        (
            "ledger",
            f"{report.entries:,} entries, {'verified' if report.ok else 'INVALID: ' + '; '.join(report.problems[:3])}",
        ),
        ("proof bundle", proof_line),
        ("audit", audit_line),
    ]
    for k, v in rows:
        print(f"  {k:<18} {v}")
    if cfg.store.backend == "lake":
        print(f"\nStore: DuckLake, catalog {wiring.catalog(cfg)}, data {wiring.data_path(cfg)}")
    else:
        print(f"\nStore: DuckDB file {wiring.paths(cfg).store.resolve()}")
    print(f"Ledger: {wiring.paths(cfg).ledger.resolve()}")
    cfg_opt = f" --config {config_path}" if config_path else ""
    print(
        f"\nThis run's fleet by driving score (docs/SCORING.md; {duration:g} s of driving each, so few km),"
        " with the battery's state of health (docs/BATTERY.md):"
    )
    shown = figures if len(figures) <= 10 else [*figures[:5], None, *figures[-5:]]
    print(f"  {'device':<34} {'km':>6} {'score':>6} {'harsh events':>13} {'SoH %':>7}")
    for f in shown:
        if f is None:
            print(f"  {'…':<34}")
            continue
        print(f"  {f[0]:<34} {f[1]:>6.2f} {f[2]:>6.1f} {f[3]:>13} {f[4] if f[4] is not None else 0:>7.2f}")
    if figures:
        frm = datetime.fromtimestamp(t_start / 1e9 - 1, UTC).isoformat(timespec="seconds")
        print(
            f"  one vehicle in full: .venv/bin/telematics{cfg_opt} score --device {figures[-1][0]} --from {frm} --to now\n"
            f"                       .venv/bin/telematics{cfg_opt} battery-passport --device {figures[-1][0]}"
        )
    if cfg.store.backend == "lake":
        print(
            "\nTry these (read-only; they work while an ingest writes; the lake's catalog is the stack's"
            " PostgreSQL: `telematics stack up` first; docs/ANALYSTS.md for duckdb, pandas and polars):"
        )
    else:
        print(
            "\nTry these (read-only; DuckDB allows one writer or several readers, so not while an ingest runs):"
        )
    for title, sql, res, cols in results:
        print(f'\n  -- {title}\n  .venv/bin/telematics{cfg_opt} query "{sql}"')
        for ln in query.table(cols, res).splitlines():
            print("  " + ln)
    print(
        f"\nProve rows to a third party, check offline, audit everything:\n"
        f'  .venv/bin/telematics{cfg_opt} prove --where "speed_mps > 25" --table driving --limit 3 -o proof.json\n'
        f"  .venv/bin/telematics verify-proof proof.json --operator-key {wiring.paths(cfg).operator_pub}\n"
        f"  .venv/bin/telematics{cfg_opt} audit"
    )
    print("\nresult:", "OK" if ok else "MISMATCH")
    return 0 if ok else 1


def _prove_and_audit(cfg: Config, data: Path) -> tuple[str, str, bool, bool]:
    """Prove 5 random rows (bundle verified offline, operator key pinned) and audit the whole store."""
    from ingest.ops.audit import Auditor
    from ingest.ops.proofs import Prover, select_rows
    from schemas.proof import encode_bundle, verify_bundle

    operator = wiring.operator_key(cfg, create=True)
    log = wiring.open_log(cfg, operator)
    store = wiring.open_store(cfg, read_only=True)
    registry = wiring.open_registry(cfg)
    try:
        bundle = encode_bundle(
            Prover(store, registry, log, operator).bundle(select_rows(store, None, None, 5, True))
        )
        out = data / "demo-proof.json"
        out.write_bytes(bundle)
        rep = verify_bundle(bundle, operator_key=operator.public_key)
        proof = f"{rep.records} random rows -> {out}, {'verified offline' if rep.ok else 'INVALID'}"
        t = time.monotonic()
        audit = Auditor(store, registry, log, operator.public_key).run()
        took = time.monotonic() - t
        line = (
            f"{audit.records:,} records, {audit.blocks:,} signatures, {audit.batches:,} batches recomputed"
            f" in {took:.1f}s: {len(audit.findings)} findings"
        )
        return proof, line, rep.ok, audit.ok
    finally:
        store.close()
        registry.close()
