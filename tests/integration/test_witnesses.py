"""Independent witnesses (`telematics witness serve`, real processes over HTTP) cosign the ledger's
checkpoints during a real pipeline run; a bundle with their cosignatures verifies with
--min-witnesses 2 and not 3; a witness shown a forked log refuses it, the log says so loudly and
goes on anchoring; nothing personal reaches the ledger or the witnesses' state."""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from ingest.config import WitnessConfig
from ingest.ledger.base import load_or_create_key
from ingest.ledger.cosigning import WitnessEndpoint
from ingest.ledger.local import LocalLedger
from ingest.storage.registry import Registry
from ingest.storage.store import FileStore
from schemas.crypto import SigningKey
from schemas.witness import Cosigner, verify_cosignatures
from tests.integration.conftest import free_port
from tests.integration.harness import REPO, drive, run_cli, wait_listening, wait_until, write_config

pytestmark = pytest.mark.integration

ORIGIN = "telematics.local/ledger"


class WitnessProc:
    def __init__(self, state: Path, name: str, logs: list[tuple[str, bytes]]) -> None:
        self.state, self.name = state, name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "ingest.cli", "witness"]
        args = ["--dir", str(state), "--name", name]
        subprocess.run([*cmd, "init", *args], check=True, capture_output=True, cwd=REPO, timeout=60)
        self.public_key = bytes.fromhex((state / "witness.pub").read_text())
        logs_args = [a for o, k in logs for a in ("--log-key", f"{o}={k.hex()}")]
        self.out = (state / "witness.log").open("ab")
        self.proc = subprocess.Popen(
            [*cmd, "serve", *args, *logs_args, "--listen", f"127.0.0.1:{self.port}"],
            stdout=self.out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        wait_listening(self.proc, self.port, state / "witness.log")

    @property
    def endpoint(self) -> WitnessEndpoint:
        return WitnessEndpoint(self.name, self.url, self.public_key)

    @property
    def cosigner(self) -> Cosigner:
        return Cosigner(self.name, self.public_key)

    def refused(self) -> list[tuple[int, str]]:
        db = sqlite3.connect(self.state / "witness.sqlite")
        try:
            return [(int(s), str(r)) for s, r in db.execute("SELECT status, reason FROM refused")]
        finally:
            db.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.out.close()


@pytest.fixture()
def witnesses(tmp_path: Path) -> Iterator[list[WitnessProc]]:
    started: list[WitnessProc] = []
    yield started
    for w in started:
        w.stop()


def _start(witnesses: list[WitnessProc], tmp: Path, name: str, log_key: bytes) -> WitnessProc:
    state = tmp / name.replace("/", "_")
    state.mkdir()
    w = WitnessProc(state, name, [(ORIGIN, log_key)])
    witnesses.append(w)
    return w


def test_two_witnesses_cosign_every_checkpoint_of_a_pipeline_run(env, witnesses, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two honest witnesses cosign every checkpoint; a third, which was shown a forked history of this
    log before the run, refuses every one, loudly in the consumer's log, and ingestion goes on."""
    cfg = env.cfg
    op = load_or_create_key(cfg.path(cfg.ledger.key_path))  # the ingest uses the key it finds
    w1 = _start(witnesses, tmp_path, "witness.example/w1", op.public_key)
    w2 = _start(witnesses, tmp_path, "witness.example/w2", op.public_key)
    w3 = _start(witnesses, tmp_path, "witness.example/w3", op.public_key)
    fork = LocalLedger(
        tmp_path / "fork" / "ledger.jsonl", op, origin=cfg.ledger.origin, witnesses=[w3.endpoint]
    )
    for b in range(2):
        fork.anchor(b, bytes([0xEE, b]) * 16, 1)  # another history under the operator's key
    assert fork.cosigning is not None
    fork.cosigning.drain()
    assert fork.cosigning.tally[w3.name].last_size == 2
    fork.close()
    ledger_cfg = msgspec.structs.replace(
        cfg.ledger,
        witnesses=[WitnessConfig(w.name, w.url, w.public_key.hex()) for w in (w1, w2, w3)],
    )
    env.cfg = cfg = msgspec.structs.replace(cfg, ledger=ledger_cfg)
    write_config(cfg, env.config_path)
    env.start("consumer")
    env.start("bridge")
    reg = Registry(cfg.path(cfg.registry.path))
    for half in (1, 2):  # two rounds, each stored before the next: at least two batches, two checkpoints
        fleet = drive(cfg, 3, 1_000, 11, reg)  # the same vehicles go on
        assert fleet.records == 3_000
        wait_until(
            cfg, lambda s, n=half * 3_000: s["records"] >= n and s["anchored"] == s["batches"], what="stored"
        )
    reg.close()
    wait_until(cfg, lambda s: s["records"] >= 6_000 and s["anchored"] == s["batches"], what="6,000 stored")

    def witness_metric(text: str, witness: str, outcome: str) -> float:
        labels = (f'witness="{witness}"', f'outcome="{outcome}"')
        for line in text.splitlines():
            if line.startswith("telematics_witness_checkpoints_total{") and all(x in line for x in labels):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    metrics = ""
    for _ in range(100):  # the operator sees each witness's outcomes on the consumer's /metrics
        with urllib.request.urlopen(f"http://127.0.0.1:{cfg.metrics.consumer_port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        if (
            witness_metric(metrics, w3.name, "refused") > 0
            and witness_metric(metrics, w1.name, "cosigned") > 0
        ):
            break
        time.sleep(0.1)
    assert (
        witness_metric(metrics, w1.name, "cosigned") > 0 and witness_metric(metrics, w1.name, "refused") == 0
    )
    assert (
        witness_metric(metrics, w3.name, "refused") > 0 and witness_metric(metrics, w3.name, "cosigned") == 0
    )
    for p in env.procs:
        assert p.stop() == 0  # the consumer offers its last checkpoint to the witnesses as it stops

    log = LocalLedger(cfg.path(cfg.ledger.path))
    cps = log.checkpoints()
    assert len(cps) >= 2
    for size, note in cps.items():
        got = {c.name for c in verify_cosignatures(note, [w1.cosigner, w2.cosigner, w3.cosigner])}
        assert got == {w1.name, w2.name}, f"checkpoint {size} cosigned by {got}"
    assert w1.refused() == [] and w2.refused() == []
    assert {status for status, _ in w3.refused()} == {422}  # shown this log after the fork: inconsistent
    consumer_log = env.procs[0].log.read_text()
    assert f"witness {w3.name} REFUSED checkpoint" in consumer_log

    bundle = cfg.path("proof.json")
    r = run_cli(env.config_path, "prove", "--sample", "--limit", "10", "-o", str(bundle))
    assert r.returncode == 0, r.stderr
    pub = str(cfg.path(cfg.ledger.key_path + ".pub"))
    trusted = [
        "--witness",
        f"{w1.name}={w1.public_key.hex()}",
        "--witness",
        f"{w2.name}={w2.public_key.hex()}",
    ]
    r = run_cli(
        env.config_path, "verify-proof", str(bundle), "--operator-key", pub, *trusted, "--min-witnesses", "2"
    )
    assert r.returncode == 0 and "cosigned by 2 trusted witness(es)" in r.stdout, r.stdout + r.stderr
    third = ["--witness", f"witness.example/w3={SigningKey.generate().public_key.hex()}"]
    r = run_cli(
        env.config_path,
        "verify-proof",
        str(bundle),
        "--operator-key",
        pub,
        *trusted,
        *third,
        "--min-witnesses",
        "3",
    )
    assert r.returncode == 1 and "cosigned by 2 of the trusted witnesses" in r.stdout, r.stdout + r.stderr

    # Nothing personal in the ledger's files or the witnesses' state: no device id and no position
    # of a stored row, in any form (text, bytes, IEEE 754 double as MessagePack or DuckDB store it).
    devices = list(fleet.per_vehicle)
    assert len(devices) == 3
    store = FileStore(cfg.path(cfg.store.path), read_only=True)
    try:
        places = store.con.execute(
            "SELECT latitude_deg, longitude_deg FROM driving_samples WHERE latitude_deg IS NOT NULL LIMIT 20"
        ).fetchall()
    finally:
        store.close()
    assert places
    needles = [n for d in devices for n in (d.encode(), bytes.fromhex(d))]
    for lat, lon in places:
        for x in (lat, lon):
            needles += [repr(x).encode(), struct.pack(">d", x), struct.pack("<d", x)]
    files = [p for p in cfg.path(cfg.ledger.path).parent.glob("ledger*") if p.is_file()]
    files += [p for w in (w1, w2, w3) for p in w.state.iterdir() if p.name.startswith("witness.sqlite")]
    assert len(files) >= 5
    for f in files:
        data = f.read_bytes()
        for n in needles:
            assert n not in data, f"{n!r} in {f}"


def test_a_witness_refuses_a_forked_log_and_the_log_goes_on(witnesses, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    key = SigningKey.generate()
    w = _start(witnesses, tmp_path, "witness.example/w1", key.public_key)
    real = LocalLedger(tmp_path / "real" / "ledger.jsonl", key, witnesses=[w.endpoint])
    for b in range(6):
        real.anchor(b, bytes([b]) * 32, 1)
    assert real.cosigning is not None
    real.cosigning.drain()
    assert real.cosigning.tally[w.name].last_size == 6 and real.cosigning.tally[w.name].refused == 0

    # The same operator key and origin, another history: the witness refuses, the log goes on.
    fork = LocalLedger(tmp_path / "fork" / "ledger.jsonl", key, witnesses=[w.endpoint])
    with caplog.at_level(logging.WARNING, logger="ingest.ledger.cosigning"):
        for b in range(8):
            fork.anchor(b, bytes([b + 100]) * 32, 1)
        assert fork.cosigning is not None
        fork.cosigning.drain()
    assert fork.size == 8
    assert fork.cosigning.tally[w.name].refused >= 1
    assert any(r.levelno == logging.ERROR and "REFUSED" in r.getMessage() for r in caplog.records)
    assert all(not verify_cosignatures(n, [w.cosigner]) for n in fork.checkpoints().values())
    assert {s for s, _ in w.refused()} == {422}

    # The real log still extends what the witness cosigned, and is cosigned again.
    for b in range(6, 9):
        real.anchor(b, bytes([b]) * 32, 1)
    real.cosigning.drain()
    assert real.cosigning.tally[w.name].last_size == 9
    assert verify_cosignatures(real.checkpoints()[9], [w.cosigner])
    real.close()
    fork.close()
