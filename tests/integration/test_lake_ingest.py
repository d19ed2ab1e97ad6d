"""The pipeline on the lake store, end to end on the real brokers and PostgreSQL: an analyst process
reads while ingest writes; several consumer processes share the partitions through a SIGKILL, a
restart and a consumer added mid-run; a zombie consumer cannot commit for partitions it lost.
Each checks that exactly the published rows are stored, once, and that every batch root is in the
ledger once (``checks.recheck``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from ingest import wiring
from ingest.config import Config
from ingest.ops.proofs import select_rows
from ingest.storage.store import StoreError
from schemas.proof import encode_bundle, verify_bundle
from simulators.fleet import FleetResult
from tests.integration.checks import recheck
from tests.integration.harness import REPO, FleetInBackground, run_cli

pytestmark = pytest.mark.integration

# The read-only recipe of docs/ANALYSTS.md, with nothing of ours: the duckdb package, two LOADs, ATTACH.
ANALYST = """
import sys, time, duckdb
loads, catalog, out, stop = sys.argv[1].split(","), sys.argv[2], sys.argv[3], sys.argv[4]
import os
con = duckdb.connect()
for path in loads:
    con.execute(f"LOAD '{path}'")
con.execute(f"ATTACH 'ducklake:postgres:{catalog}' AS lake (READ_ONLY)")
with open(out, "w", buffering=1) as f:
    while not os.path.exists(stop):
        try:
            (n,) = con.execute(
                "SELECT (SELECT count(*) FROM lake.driving_samples) + (SELECT count(*) FROM lake.battery_samples)"
            ).fetchone()
            f.write(f"{n}\\n")
        except Exception as exc:
            f.write(f"ERROR {exc}\\n")
        time.sleep(0.5)
"""

# A reader open when the catalog dies, closed after: its process must exit 0 (DuckDB 1.5.5 aborted it,
# rolling back in a destructor, until LakeStore.close ended the transaction first).
READER_CLOSED_AFTER = """
import sys, time, pathlib
from ingest import wiring
from ingest.config import load_config
reader = wiring.open_store(load_config(sys.argv[1]), read_only=True)
print(reader.counts()["records"], flush=True)
while not pathlib.Path(sys.argv[2]).exists():
    time.sleep(0.1)
reader.close()
"""


def _records(cfg: Config) -> int:
    s = wiring.open_store(cfg, read_only=True)
    try:
        return s.counts()["records"]
    finally:
        s.close()


def _wait_records(cfg: Config, want: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    n = -1
    while time.monotonic() < deadline:
        n = _records(cfg)
        if n >= want:
            return
        time.sleep(0.5)
    raise AssertionError(f"{n} of {want} records stored after {timeout}s")


def _drive(cfg: Config, vehicles: int, records: int, seed: int, rate_hz: float) -> FleetInBackground:
    return FleetInBackground(cfg, vehicles=vehicles, records=records, seed=seed, rate_hz=rate_hz)


def _finish(run: FleetInBackground) -> FleetResult:
    fleet = run.join()
    assert fleet.unacked == 0
    return fleet


def _exactly(cfg: Config, fleet: FleetResult) -> None:
    """Exactly the published blocks, each once, every batch root in the ledger once, audit clean."""
    _wait_records(cfg, fleet.records)
    summary = recheck(
        wiring.open_store(cfg, read_only=True), cfg.path(cfg.registry.path), cfg.path(cfg.ledger.path)
    )
    assert summary["records"] == fleet.records
    s = wiring.open_store(cfg, read_only=True)
    try:
        stored: dict[str, list[bytes]] = {}
        for dev, bh in s.con.execute(
            "SELECT device_id, block_hash FROM blocks ORDER BY device_id, seq"
        ).fetchall():
            stored.setdefault(dev, []).append(bytes(bh))
        assert stored == fleet.block_hashes
        rejected = s.con.execute(
            "SELECT reason, kafka_partition, kafka_offset, bundle_index, detail FROM rejections LIMIT 5"
        ).fetchall()
        assert rejected == [], rejected
    finally:
        s.close()
    # Every batch has exactly one receipt row once the consumers have anchored their last batch (the
    # lake has no key: a receipt recorded twice would be a second row).
    deadline = time.monotonic() + 30
    while True:
        s = wiring.open_store(cfg, read_only=True)
        try:
            batches = {n for (n,) in s.con.execute("SELECT batch_no FROM batches").fetchall()}
            anchors = [n for (n,) in s.con.execute("SELECT batch_no FROM anchors").fetchall()]
        finally:
            s.close()
        if set(anchors) == batches or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(anchors) == batches and len(anchors) == len(batches), (len(anchors), len(batches))
    audit = run_cli(Path(cfg.data_dir) / "telematics.toml", "audit")
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_an_analyst_reads_live_while_ingest_writes(
    lake_env: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cfg = lake_env.cfg
    lake_env.start("consumer")
    lake_env.start("bridge")
    from ingest.storage.lake import EXTENSIONS, extension_path

    out, stop = tmp_path / "analyst.txt", tmp_path / "analyst.stop"
    analyst = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(ANALYST),
            ",".join(str(extension_path(e)) for e in EXTENSIONS),
            cfg.store.catalog,
            str(out),
            str(stop),
        ]
    )
    run = _drive(cfg, vehicles=6, records=2000, seed=21, rate_hz=200.0)
    # Every read path works during the ingest, on a consistent snapshot.
    time.sleep(3)
    # The data-access API's provers keep one lake reader and take the latest snapshot per request.
    served = wiring.ServedProvers(cfg)
    request.addfinalizer(served.close)
    with served.open() as (_, reader):
        early = reader.counts()["records"]
        (top,) = reader.con.execute("SELECT coalesce(max(seq), -1) FROM blocks").fetchone()
    conf = lake_env.config_path
    for args in (
        ("query", "SELECT device_id, count(*) AS n FROM blocks GROUP BY 1 ORDER BY 1", "--format", "csv"),
        ("gaps",),
        ("sessions",),
        ("audit",),
        ("prove", "--table", "driving", "--limit", "3", "--out", str(tmp_path / "live.proof")),
    ):
        r = run_cli(conf, *args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    fleet = _finish(run)
    _wait_records(cfg, fleet.records)
    with served.open() as (prover, again):
        assert again is reader and early < fleet.records
        assert again.counts()["records"] == fleet.records  # the rows stored since the first request
        newest = select_rows(again, "driving", f"block_seq > {top}", 3, False)  # anchored since
        assert len(newest) == 3
        bundle = encode_bundle(prover.bundle(newest))
        assert verify_bundle(bundle, operator_key=prover.operator.public_key).ok
    # the benchmark of these readers runs on this lake (a smoke run: docs/PERFORMANCE.md has the figures)
    r = run_cli(conf, "bench", "readers", "--rounds", "1", "--rows", "3")
    assert r.returncode == 0 and "the kept reader:" in r.stdout, r.stdout + r.stderr
    time.sleep(1.5)  # the analyst's next reads see the last commit
    stop.touch()
    analyst.wait(30)
    lines = out.read_text().split()
    assert lines and not [x for x in lines if x.startswith("ERROR")], lines[:5]
    counts = [int(x) for x in lines]
    assert counts == sorted(counts), "an analyst's count went down"
    assert counts[-1] == fleet.records
    assert len(set(counts)) > 2, "the analyst should have seen the count grow"
    v = run_cli(conf, "verify-proof", str(tmp_path / "live.proof"))
    assert v.returncode == 0, v.stdout + v.stderr
    _exactly(cfg, fleet)
    # the operator's screen: everything up, the consumer running, nothing behind, nothing waiting
    st = run_cli(conf, "status", "--json")
    assert st.returncode == 0, st.stderr
    view = json.loads(st.stdout)
    assert all(up for _w, up in view["services"].values()), view["services"]
    assert view["roles"]["consumer"]["alive"] and view["roles"]["bridge"]["alive"]
    lag = view["store"]["lag"]
    assert lag and all(n == 0 for n in lag.values()), lag
    assert view["store"]["pending_anchor"] == [] and view["store"]["counts"]["records"] == fleet.records
    screen = run_cli(conf, "status")
    assert screen.returncode == 0 and "0 messages behind" in screen.stdout, screen.stdout


def test_consumers_share_partitions_through_kill_restart_and_rebalance(lake_env: Any) -> None:
    cfg = lake_env.cfg
    a = lake_env.start("consumer", 0)
    lake_env.start("consumer", 1)
    lake_env.start("bridge")
    run = _drive(cfg, vehicles=8, records=2500, seed=23, rate_hz=250.0)
    _wait_records(cfg, 2000, timeout=60)
    killed_at = _records(cfg)
    a.kill()  # SIGKILL mid-run
    time.sleep(1.5)
    lake_env.start("consumer", 0)
    time.sleep(1.5)
    lake_env.start("consumer", 2)  # a third one joins: a rebalance mid-run
    fleet = _finish(run)
    assert killed_at < fleet.records, "the kill must happen mid-run"
    _exactly(cfg, fleet)
    for p in lake_env.procs:
        if p.proc.poll() is None:
            assert p.stop() == 0


def test_a_zombie_consumer_cannot_commit_for_partitions_it_lost(lake_env: Any) -> None:
    cfg = lake_env.cfg  # session timeout 2 s
    z = lake_env.start("consumer", 0)
    lake_env.start("bridge")
    run = _drive(cfg, vehicles=6, records=3000, seed=29, rate_hz=250.0)
    _wait_records(cfg, 1500, timeout=60)
    os.kill(z.proc.pid, signal.SIGSTOP)  # paused with a batch in hand, past its session timeout
    try:
        lake_env.start("consumer", 1)  # takes every partition over
        time.sleep(5)
    finally:
        os.kill(z.proc.pid, signal.SIGCONT)
    fleet = _finish(run)
    _exactly(cfg, fleet)
    log = z.log.read_text()
    # Where the pause caught it decides how its commit fails; either way nothing of it counts twice
    # (``_exactly`` above). Paused while building a batch: its store write is fenced (StoreFenced).
    # Paused with a batch already in its store transaction or after it: the new owner's claim waited
    # for that commit, and the zombie's Kafka offset commit is refused; it rewinds. (The fence alone,
    # deterministically: tests/integration/test_lakestore.py.)
    assert "was claimed by" in log or "CommitFailedError" in log, log[-3000:]
    for p in lake_env.procs:
        if p.proc.poll() is None:
            assert p.stop() == 0


def test_ingest_consumers_option_runs_several_processes(lake_env: Any) -> None:
    cfg = lake_env.cfg
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ingest.cli",
            "--config",
            str(lake_env.config_path),
            "ingest",
            "--consumers",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (cfg.path("ingest-status-1.json").exists() and cfg.path("ingest-status.json").exists()):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        run = _drive(cfg, vehicles=4, records=1000, seed=31, rate_hz=200.0)
        fleet = _finish(run)
        _exactly(cfg, fleet)
        # both consumers took partitions
        parts = [wiring.read_status(cfg, i) for i in (0, 1)]
        assert all(p and p["partitions"] for p in parts), parts
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


# A consumer that SIGKILLs itself at one point of the durability order, at its Nth batch with blocks:
# the real code, wrapped from outside (nothing in the product knows about it).
CRASHING_CONSUMER = """
import os, signal, sys
point, nth, config = sys.argv[1], int(sys.argv[2]), sys.argv[3]
from ingest.ledger.local import LocalLedger
from ingest.storage.lakestore import LakeStore
seen = {"n": 0}

def die(at):
    if point == at and seen["n"] == nth:
        print(f"SIGKILL {at} batch", seen["n"], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

write, anchor, record = LakeStore.write_batch, LocalLedger.anchor, LakeStore.record_anchor

def write_batch(self, b):
    seen["n"] += 1 if b.blocks else 0
    die("before_commit")
    write(self, b)
    die("after_commit")

def anchor_(self, *a):
    r = anchor(self, *a)
    die("after_anchor")
    return r

def record_(self, r):
    record(self, r)
    die("after_receipt")

LakeStore.write_batch, LocalLedger.anchor, LakeStore.record_anchor = write_batch, anchor_, record_
from ingest.cli import main
sys.exit(main(["--config", config, "ingest", "--only", "consumer"]))
"""


@pytest.mark.parametrize("point", ["before_commit", "after_commit", "after_anchor", "after_receipt"])
def test_sigkill_at_each_step_of_the_durability_order(lake_env: Any, point: str) -> None:
    cfg = lake_env.cfg
    log = Path(cfg.data_dir) / "crashing-consumer.log"
    with log.open("wb") as out:
        crashing = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CRASHING_CONSUMER), point, "3", str(lake_env.config_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    lake_env.start("bridge")
    run = _drive(cfg, vehicles=4, records=1500, seed=37, rate_hz=150.0)
    assert crashing.wait(90) == -signal.SIGKILL, log.read_text()[-2000:]
    assert f"SIGKILL {point}" in log.read_text()
    lake_env.start("consumer")  # the real one takes over from what the store holds
    fleet = _finish(run)
    _exactly(cfg, fleet)


def test_a_batch_left_unanchored_by_a_dead_consumer_is_anchored_by_the_one_given_its_partitions(
    lake_env: Any,
) -> None:
    """Killed between its commit and its anchor, and not restarted: the consumer already running
    takes its partitions and anchors that batch too (``Consumer.anchor_unanchored`` on assignment)."""
    cfg = lake_env.cfg
    lake_env.start("consumer", 1)  # shares the partitions with the crashing one until it dies
    log = Path(cfg.data_dir) / "crashing-consumer.log"
    with log.open("wb") as out:
        crashing = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(CRASHING_CONSUMER),
                "after_commit",
                "3",
                str(lake_env.config_path),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60  # both in the group, each with its share of the partitions
    while not all((wiring.read_status(cfg, i) or {}).get("partitions") for i in (0, 1)):
        assert crashing.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)
    lake_env.start("bridge")
    # 16 vehicles (device ids from fresh keys): the crashing consumer's two partitions carry none
    # about 3 times in 100,000 runs; with 4 vehicles it was 1 in 8 (it then never crashed)
    run = _drive(cfg, vehicles=16, records=1500, seed=43, rate_hz=150.0)
    assert crashing.wait(90) == -signal.SIGKILL, log.read_text()[-2000:]
    assert "SIGKILL after_commit" in log.read_text()
    fleet = _finish(run)
    _exactly(cfg, fleet)  # every batch anchored, the dead consumer's last one included


def test_the_catalog_going_away_holds_the_pipeline_and_loses_nothing(
    lake_env: Any, stack_cfg: Config, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """PostgreSQL (the lake's catalog) SIGKILLed mid-run and restarted: the consumer holds (no crash,
    no commit), then goes on; exactly the published rows."""
    from devtools.stack import Stack

    cfg = lake_env.cfg
    c = lake_env.start("consumer")
    lake_env.start("bridge")
    run = _drive(cfg, vehicles=4, records=2000, seed=41, rate_hz=200.0)
    _wait_records(cfg, 1000, timeout=60)
    served = wiring.ServedProvers(cfg)  # the data-access API's reader, kept open across requests
    request.addfinalizer(served.close)
    with served.open():
        pass
    go = tmp_path / "close"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER_CLOSED_AFTER, str(lake_env.config_path), str(go)],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    request.addfinalizer(reader.kill)
    assert reader.stdout is not None and reader.stderr is not None
    first = reader.stdout.readline()
    assert first.strip().isdigit() and int(first) > 0, (first, reader.stderr.read())
    stack = Stack(stack_cfg)
    stack.kill("postgres")
    go.touch()
    assert reader.wait(30) == 0, reader.stderr.read()
    # the API answers 503 with this error (ops/access.py), and the next request opens a new reader
    with pytest.raises(StoreError, match="cannot reach the lake's PostgreSQL catalog"), served.open():
        pass
    time.sleep(3)  # the fleet keeps publishing; the consumer cannot commit
    assert c.proc.poll() is None, c.log.read_text()[-2000:]
    stack.up()
    with served.open() as (_, again):  # a new reader: the old one's catalog session is gone
        assert again.counts()["records"] >= 1000
    fleet = _finish(run)
    _exactly(cfg, fleet)
    assert c.proc.poll() is None
    assert "PIPELINE HELD" in c.log.read_text()
