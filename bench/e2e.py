"""End-to-end load benchmark: the fleet simulator against the real local stack.

    .venv/bin/telematics bench e2e --vehicles 200 --duration 30 --rate 200000

Three phases, each on a fresh stack (mosquitto, the Kafka-protocol broker, a bridge process, a
consumer process, a new DuckDB file and ledger) in ``<out>/<phase>/``:

``full``         the offered load (``--rate`` records/s) through the whole pipeline: every
                 signature verified, every block's Merkle root recomputed, every batch anchored.
``passthrough``  the same signed blocks through MQTT -> bridge -> Kafka -> DuckDB with signature,
                 Merkle and anchor work switched off: the transport-and-storage baseline.
``half``         a new fleet offering half of what ``full`` stored per second, paced in real time:
                 the sample -> queryable latency at half of the maximum load.

The fleet is generated ahead through the real edge code path and released on schedule
(``simulators/load.py``). For every phase the report gives offered and stored records/s, blocks/s,
batches/s, anchor lag, sample -> queryable latency (p50/p95/p99; a sample's time is when its
vehicle took it on the schedule clock, it is queryable when its batch's DuckDB transaction
committed), CPU per component (in cores, and once a second), broker memory, and lost and
duplicated records (every generated block is looked up by device, sequence number and block hash).
Results go to ``<out>/e2e.json``, ``<out>/e2e.md`` (the table) and ``<out>/e2e.png`` (throughput,
latency and CPU by component over time).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.machine import machine, reference_unit_us, speed_line
from common.progress import ProgressBar
from ingest import wiring
from ingest.ops.broker_auth import BRIDGE_USER

if TYPE_CHECKING:  # the heavy imports wait until a benchmark runs (this module also builds CLI help)
    from collections.abc import Iterator

    from bench.analysts import Analysts
    from ingest.config import Config
    from simulators.load import LoadFleet, Manifest, ReleaseStats

CLK_TCK = os.sysconf("SC_CLK_TCK")
CATALOG = "catalog (PostgreSQL)"  # the lake's catalog server and its backends
# The dashboard queries run in this benchmark's own process (bench/analysts.py), which otherwise
# only polls the consumers' status files: its CPU during the phase is theirs.
ANALYSTS = "analysts (benchmark process)"
COMPONENTS = ("simulator", "mosquitto", "kafka broker", "bridge", "consumer", CATALOG, ANALYSTS)
# Not the pipeline: the vehicles' load and the dashboards, which production runs on other hosts.
NOT_PIPELINE = ("simulator", ANALYSTS)
PHASES = ("full", "passthrough", "half")


@dataclass
class PhaseResult:
    name: str
    paced: bool
    passthrough: bool
    vehicles: int
    generated_records: int
    generated_blocks: int
    stored_records: int = 0
    stored_blocks: int = 0
    lost_blocks: int = 0
    lost_records: int = 0
    duplicated_records: int = 0
    unexpected_blocks: int = 0
    rejections: int = 0
    redelivered_blocks: int = 0  # recognised as duplicates at ingest and not stored again
    batches: int = 0
    anchored: int = 0
    offered_rps: float = 0.0
    stored_rps: float = 0.0
    blocks_ps: float = 0.0
    batches_ps: float = 0.0
    seconds: float = 0.0  # t0 -> last batch committed
    release_s: float = 0.0  # t0 -> last block published
    latency_ms: dict[str, float] = field(default_factory=dict)
    anchor_lag_ms: dict[str, float] = field(default_factory=dict)
    sim_lag_ms: dict[str, float] = field(default_factory=dict)
    refused: int = 0
    cpu_cores: dict[str, float] = field(default_factory=dict)
    rss_mib: dict[str, float] = field(default_factory=dict)
    timeline: list[dict[str, float]] = field(default_factory=list)
    # Per second after t0: each component's CPU in cores (sampled once a second while the phase ran).
    cpu_timeline: list[dict[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sessions: int = 0  # MQTT sessions the fleet held (one per vehicle with --sessions vehicle)
    broker_fds: int = 0  # mosquitto's open files once the fleet connected
    connect_s: float = 0.0  # to open every session
    mqtt_tls: str = ""  # the TLS version the fleet's sessions negotiated ("": plain MQTT)
    mqtt_logins: int = 0  # vehicles that logged in with a password, under the production ACL (0: anonymous)
    cpu_us_per_block: dict[str, float] = field(default_factory=dict)
    analysts_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # query -> p50/p95/max/n
    analyst_errors: list[str] = field(default_factory=list)
    cpus: str = ""  # --cpus: the CPUs the run's processes were pinned to ("": every CPU of the host)
    consumer_cpus: str = ""  # --consumer-cpus: the consumers' CPUs, when apart from the rest
    # Each component's processes -> the CPUs the kernel let them run on, read from /proc during the run.
    cpus_allowed: dict[str, list[str]] = field(default_factory=dict)


# -- processes ------------------------------------------------------------------------------------


def cpu_list(text: str) -> tuple[int, ...]:
    """``--cpus``: CPU numbers like ``0``, ``0,1`` or ``0-3``, each one this process may run on."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a CPU list such as 0 or 0,1 or 0-3") from None
    have = os.sched_getaffinity(0)
    if not cpus or not cpus <= have:
        raise argparse.ArgumentTypeError(f"{text!r}: this process may run on CPUs {_cpu_text(have)} only")
    return tuple(sorted(cpus))


def _cpu_text(cpus: tuple[int, ...] | set[int] | None) -> str:
    return ",".join(map(str, sorted(cpus))) if cpus else ""


@contextlib.contextmanager
def pinned(cpus: tuple[int, ...] | None) -> Iterator[None]:
    """Keep this thread on ``cpus`` (None: as it is) while the block runs, then give it its CPUs
    back. ``--cpus`` around a run: every process it starts (the generator, the
    brokers, the bridge, the consumers) inherits them; the consumers are started inside
    ``pinned(--consumer-cpus)`` (``_spawn``)."""
    before = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _allowed_cpus(pid: int) -> str:
    """The CPUs the kernel lets ``pid`` run on, as it lists them (``0-1``, ``0``)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def cores_given(args: argparse.Namespace) -> int:
    """How many CPUs the run's processes may use, all together."""
    return len({*(args.cpus or os.sched_getaffinity(0)), *(args.consumer_cpus or ())})


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (``telematics ingest --consumers N`` starts N-1)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _tree_cpu_s(pid: int) -> float:
    """CPU of ``pid`` and its children, the exited ones included (PostgreSQL's backends)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    own = sum(int(f) for f in fields[11:15]) / CLK_TCK  # utime, stime, cutime, cstime
    return own + sum(_cpu_s(c) for c in _children(pid))


def _rss_mib(pid: int, key: str = "VmHWM") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def measured(results: list[PhaseResult]) -> list[str]:
    """The components whose CPU was measured in any of ``results`` (analysts only when they ran)."""
    return [c for c in COMPONENTS if any(c in r.cpu_cores for r in results)]


def _cpu_of(who: dict[str, list[int]]) -> dict[str, float]:
    return {k: sum((_tree_cpu_s if k == CATALOG else _cpu_s)(p) for p in v) for k, v in who.items()}


def _open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _analysts(cfg: Config, args: argparse.Namespace, res: PhaseResult) -> Analysts | None:
    """The dashboard queries during the phase (bench/analysts.py): the lake only, which readers
    open while the consumer writes (one DuckDB file admits one process)."""
    if not args.analysts_every:
        return None
    if cfg.store.backend != "lake":
        res.notes.append(
            "no analysts: one DuckDB file cannot be read while the consumer writes it (--store lake)"
        )
        return None
    from bench.analysts import Analysts

    return Analysts(cfg, args.analysts_every)


def _write_config(path: Path, data: Path, args: argparse.Namespace) -> Path | None:
    """The phase's config; with ``--mqtt-tls``, the CA the vehicles verify the broker with."""
    from devtools.stack import free_port_block, free_ports

    p = free_ports()
    mosquitto, ca = "", None  # the [stack] keys of mosquitto's TLS listener and logins
    if args.mqtt_tls:  # the vehicles over TLS, on a listener of its own (the bridge stays plain)
        from devtools.secure_broker import create_dev_pki

        pki = create_dev_pki(data / "pki")
        ca = pki.ca.cert
        mosquitto = (
            f"mosquitto_tls_port = {free_port_block(1)}\n"
            f'mosquitto_tls_cert = "{pki.server.cert}"\nmosquitto_tls_key = "{pki.server.key}"\n'
        )
    login = ""
    if args.mqtt_auth:  # logins as in production: the files are written by _write_logins
        mosquitto += f'mosquitto_password_file = "{LOGINS}/passwd"\nmosquitto_acl_file = "{LOGINS}/acl"\n'
        login = f'username = "{BRIDGE_USER}"\npassword_file = "{data / LOGINS}/bridge.password"\n'
    path.write_text(
        f"""# written by `telematics bench e2e`
data_dir = "{data}"

[mqtt]
port = {p["mqtt"]["port"]}
{login}
[kafka]
port = {p["kafka"]["port"]}
partitions = {args.partitions}

[bridge]
client_id = "bench-bridge"
max_pending = {args.bridge_pending}
linger_ms = {args.bridge_linger_ms}
bundle_max_messages = {args.bridge_bundle}

[stack]
kafka_storage = "{args.kafka_storage}"
# a snapshot per second: per change, mosquitto rewrites its whole queue each time (docs/PRODUCTION.md)
mosquitto_save = "second"
s3_port = {p["stack"]["s3_port"]}
postgres_port = {p["stack"]["postgres_port"]}
{mosquitto}
[store]
backend = "{args.store}"
consumer_duckdb_threads = {args.consumer_duckdb_threads}

[ingest]
batch_max_records = {args.batch_records}
batch_max_age_ms = {args.batch_age_ms}
poll_max_records = {args.poll_records}
verify_threads = {args.verify_threads}
session_timeout_ms = 6000
"""
    )
    return ca


LOGINS = "mqtt-logins"  # under the phase's data_dir


def _write_logins(data: Path, manifests: list[Manifest]) -> bytes:
    """``--mqtt-auth``: mosquitto's password file (every vehicle, its device id as username, and
    the bridge), the production ACL and the bridge's password; the key the vehicles' passwords
    are derived from (``simulators.load.vehicle_password``)."""
    from common.mqtt_tls import write_secret
    from ingest.ops.broker_auth import write_acl, write_password_file
    from simulators.load import vehicle_password

    key = os.urandom(16)
    d = data / LOGINS
    d.mkdir(parents=True, exist_ok=True)
    bridge_pw = os.urandom(16).hex()
    write_secret(d / "bridge.password", bridge_pw + "\n")
    logins = {dev: vehicle_password(key, dev) for m in manifests for dev, _ in m.keys}
    write_password_file(d / "passwd", {**logins, BRIDGE_USER: bridge_pw})
    write_acl(d / "acl")
    return key


def _spawn(argv: list[str], log: Path, cpus: tuple[int, ...] | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` with its output in ``log``; on ``cpus`` when given (the child inherits this
    thread's CPUs: no code runs between fork and exec)."""
    with log.open("ab") as out, pinned(cpus):
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _stop(p: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _wait_file(path: Path, pid: int | None, key: str, timeout: float) -> None:
    """Until ``path`` is written by ``pid`` (None: any process) and has a truthy ``key``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = json.loads(path.read_text())
            if (pid is None or st.get("pid") == pid) and st.get(key):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{path} not written by pid {pid} within {timeout:.0f}s")


# -- one phase ------------------------------------------------------------------------------------


def run_phase(
    name: str,
    fleet: LoadFleet,
    manifests: list[Manifest],
    args: argparse.Namespace,
    *,
    paced: bool,
    passthrough: bool,
) -> PhaseResult:
    from devtools.stack import Stack
    from ingest.config import load_config
    from ingest.wiring import read_status

    out = Path(args.out)
    data = (out / name).resolve()
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    cfg_path = data / "telematics.toml"
    ca_file = _write_config(cfg_path, data, args)
    cfg = load_config(cfg_path)
    total = sum(m.records for m in manifests)
    res = PhaseResult(
        name,
        paced,
        passthrough,
        vehicles=sum(len(m.keys) for m in manifests),
        generated_records=total,
        generated_blocks=sum(len(m.blocks) for m in manifests),
        cpus=_cpu_text(args.cpus),
        consumer_cpus=_cpu_text(args.consumer_cpus),
    )
    password_key = _write_logins(data, manifests) if args.mqtt_auth else None
    res.mqtt_logins = res.vehicles if args.mqtt_auth else 0
    stack = Stack(cfg)
    stack.up()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        reg = wiring.open_registry(cfg)
        for m in manifests:
            for dev, pub in m.keys:
                reg.add(pub, device_id=dev, label="bench")
        reg.close()
        base = [sys.executable, "-m", "ingest.cli", "--config", str(cfg_path), "ingest"]
        batch_log = data / "batches.jsonl"
        consumer_argv = [*base, "--only", "consumer", "--batch-log", str(batch_log)]
        if args.consumers > 1:
            consumer_argv += ["--consumers", str(args.consumers)]
        if passthrough:
            consumer_argv.append("--benchmark-passthrough")
        consumer = _spawn(consumer_argv, data / "consumer.log", args.consumer_cpus)
        bridge = _spawn([*base, "--only", "bridge"], data / "bridge.log")
        procs = [consumer, bridge]
        _wait_file(wiring.paths(cfg).ingest_status, consumer.pid, "partitions", 60)
        for i in range(1, args.consumers):
            _wait_file(wiring.status_path(cfg, i), None, "partitions", 60)
        _wait_file(wiring.paths(cfg).bridge_status, bridge.pid, "subscribed_ns", 60)
        pids = {s.name: s.pid for s in stack.status()}
        who = {
            "simulator": fleet.pids,
            "mosquitto": [pids["mosquitto"] or 0],
            # with kafka_storage = "s3", the S3 server it keeps its log in counts as part of it
            "kafka broker": [pids["tansu"] or 0, *([pids["seaweedfs"] or 0] if "seaweedfs" in pids else [])],
            "bridge": [bridge.pid],
            "consumer": [consumer.pid, *_children(consumer.pid)],
        }
        if pids.get("postgres"):
            who[CATALOG] = [pids["postgres"] or 0]
        t = time.monotonic()
        res.sessions = fleet.connect(
            host=cfg.mqtt.host,
            port=cfg.stack.mosquitto_tls_port or cfg.mqtt.port,
            paced=paced,
            per_vehicle=args.sessions == "vehicle",
            ca_file=str(ca_file) if ca_file else None,
            password_key=password_key,
        )
        res.connect_s = round(time.monotonic() - t, 2)
        res.broker_fds = _open_files(pids["mosquitto"] or 0)
        res.cpus_allowed = {k: sorted({_allowed_cpus(p) for p in v}) for k, v in who.items()}
        analysts = _analysts(cfg, args, res)
        if analysts is not None:
            who[ANALYSTS] = [os.getpid()]
        samples = [(time.time_ns(), _cpu_of(who))]  # each component's CPU: start, once a second, end
        t0 = time.time_ns() + 300_000_000
        fleet.go(t0)
        if analysts is not None:
            analysts.start()
        bar = ProgressBar(name, total, unit=" records")
        stats: list[ReleaseStats] | None = None
        drain_s = max(120.0, 3 * args.duration)
        deadline: float | None = None
        stored = 0
        st: dict[str, Any] = {}
        while True:
            got = fleet.poll_release(0.1)
            if got is not None:
                stats = got
                deadline = time.monotonic() + drain_s
            sts = [read_status(cfg, i) or {} for i in range(args.consumers)]
            st = {k: sum(int(x.get(k, 0)) for x in sts) for k in ("records", "anchored", "batches")}
            stored = int(st.get("records", 0))
            bar.update(stored, f"published {sum(fleet.progress):,}")
            if time.time_ns() - samples[-1][0] >= 1_000_000_000:
                samples.append((time.time_ns(), _cpu_of(who)))
            done = (
                stats is not None
                and stored >= total
                and (passthrough or st.get("anchored") == st.get("batches"))
            )
            if done:
                break
            for p, role in ((consumer, "consumer"), (bridge, "bridge")):
                if p.poll() is not None:
                    raise RuntimeError(f"the {role} exited with {p.returncode}; see {data / role}.log")
            if deadline is not None and time.monotonic() > deadline:
                res.notes.append(
                    f"stopped waiting {drain_s:.0f}s after the last publish: {stored:,}/{total:,} stored"
                )
                break
        bar.close()
        t_end = time.time_ns()
        if analysts is not None:
            analysts.stop()
            res.analysts_ms, res.analyst_errors = analysts.latencies(), analysts.errors[:10]
        samples.append((time.time_ns(), _cpu_of(who)))
        res.rss_mib = {
            k: round(sum(_rss_mib(p) for p in v), 1)
            for k, v in who.items()
            if k not in ("simulator", CATALOG, ANALYSTS)
        }
        # the largest consumer process (the memory target is per process)
        res.rss_mib["one consumer"] = round(max(_rss_mib(p) for p in who["consumer"]), 1)
        assert stats is not None
    except BaseException:
        for p in procs:
            _stop(p)
        stack.down()  # the run failed: leave no broker behind
        raise
    for p in procs:
        _stop(p)
    try:
        _analyse(
            res,
            stack_cfg=cfg,
            data=data,
            batch_log=batch_log,
            t0=t0,
            t_end=t_end,
            who=who,
            cpu_samples=samples,
            stats=stats,
            total=total,
            paced=paced,
            fleet=fleet,
            manifests=manifests,
        )
    finally:
        stack.down()  # after the analysis: the lake's catalog is the stack's PostgreSQL
    return res


def _analyse(
    res: PhaseResult,
    *,
    stack_cfg: Config,
    data: Path,
    batch_log: Path,
    t0: int,
    t_end: int,
    who: dict[str, list[int]],
    cpu_samples: list[tuple[int, dict[str, float]]],
    stats: list[ReleaseStats],
    total: int,
    paced: bool,
    fleet: LoadFleet,
    manifests: list[Manifest],
) -> None:
    """From the batch log and the store."""
    cfg = stack_cfg
    (_, cpu0), (_, cpu1) = cpu_samples[0], cpu_samples[-1]  # the phase's start and end
    batches = [json.loads(line) for line in batch_log.read_text().splitlines() if line.strip()]
    last_commit = max((b["committed_ns"] for b in batches), default=t_end)
    res.seconds = (last_commit - t0) / 1e9
    wall = (t_end - t0) / 1e9
    res.cpu_cores = {k: round((cpu1[k] - cpu0[k]) / wall, 3) for k in who}
    res.cpu_cores["total"] = round(sum(res.cpu_cores.values()), 3)
    res.release_s = max((s.seconds_published for s in stats), default=0.0)
    res.offered_rps = total / res.release_s if res.release_s > 0 else 0.0
    res.refused = sum(s.refused for s in stats)
    res.mqtt_tls = ",".join(sorted({s.tls for s in stats} - {""}))
    if paced:
        res.sim_lag_ms = {
            "p50": max(s.lag_ms.get("p50", 0.0) for s in stats),
            "p99": max(s.lag_ms.get("p99", 0.0) for s in stats),
            "max": max(s.lag_ms.get("max", 0.0) for s in stats),
        }
    _analyse_store(res, data, cfg, manifests, batches, t0, fleet.epoch_ns if paced else None)
    res.stored_rps = res.stored_records / res.seconds if res.seconds > 0 else 0.0
    res.blocks_ps = res.stored_blocks / res.seconds if res.seconds > 0 else 0.0
    res.batches_ps = res.batches / res.seconds if res.seconds > 0 else 0.0
    if res.stored_blocks:
        res.cpu_us_per_block = {k: round((cpu1[k] - cpu0[k]) / res.stored_blocks * 1e6, 1) for k in who}
    _timeline(res, stats, batches, t0)
    res.cpu_timeline = _cpu_timeline(cpu_samples, t0)


def _cpu_timeline(samples: list[tuple[int, dict[str, float]]], t0: int) -> list[dict[str, float]]:
    """Cores per component between consecutive samples, at each interval's end (seconds after t0)."""
    out = []
    for (ta, a), (tb, b) in itertools.pairwise(samples):
        if tb > max(ta, t0):
            dt = (tb - ta) / 1e9
            out.append({"t": round((tb - t0) / 1e9, 2), **{k: round((b[k] - a[k]) / dt, 3) for k in b}})
    return out


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)

    def q(p: float) -> float:
        return round(v[min(len(v) - 1, int(p * len(v)))], 1)

    return {"p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "max": round(v[-1], 1)}


def _analyse_store(
    res: PhaseResult,
    data: Path,
    cfg: Config,
    manifests: list[Manifest],
    batches: list[dict[str, Any]],
    t0: int,
    epoch_ns: int | None,
) -> None:
    import duckdb

    from ingest.storage.schema import TABLE_NAMES

    con = duckdb.connect()
    if cfg.store.backend == "lake":
        from ingest.storage import lake

        lake.load_extensions(con)
        lake.attach(con, wiring.catalog(cfg), alias="s", read_only=True)
    else:
        con.execute(f"ATTACH '{wiring.paths(cfg).store}' AS s (READ_ONLY)")
    stored = {
        (d, int(q)): (bytes(h), int(n))
        for d, q, h, n in con.execute(
            "SELECT device_id, seq, block_hash, record_count FROM s.blocks"
        ).fetchall()
    }
    expected = 0
    for m in manifests:
        for dev, seq, h, n in m.blocks:
            expected += 1
            got = stored.pop((dev, seq), None)
            if got is None or got[0] != h:
                res.lost_blocks += 1
                res.lost_records += n
    res.unexpected_blocks = len(stored)
    union = " UNION ALL ".join(f"SELECT device_id, block_seq, idx, ts FROM s.{t}" for t in TABLE_NAMES)
    row = con.execute(
        f"SELECT count(*), count(DISTINCT (device_id, block_seq, idx)) FROM ({union})"
    ).fetchone()
    assert row is not None
    res.stored_records = int(row[0])
    res.duplicated_records = int(row[0]) - int(row[1])
    counts = con.execute(
        "SELECT (SELECT count(*) FROM s.blocks), (SELECT count(*) FROM s.batches),"
        " (SELECT count(*) FROM s.anchors), (SELECT count(*) FROM s.rejections),"
        " (SELECT count(*) FROM s.duplicates)"
    ).fetchone()
    assert counts is not None
    res.stored_blocks, res.batches, res.anchored, res.rejections, res.redelivered_blocks = map(int, counts)
    if not res.passthrough:
        res.anchor_lag_ms = _quantiles([(b["anchored_ns"] - b["committed_ns"]) / 1e6 for b in batches])
    if epoch_ns is None or not batches:
        con.close()
        return
    # Sample -> queryable: a sample taken at schedule time ts (t0 + ts - epoch on the wall clock)
    # becomes queryable when its batch commits.
    con.execute("CREATE TEMP TABLE bl (batch UBIGINT, committed_ns BIGINT)")
    con.executemany("INSERT INTO bl VALUES (?, ?)", [(b["batch"], b["committed_ns"]) for b in batches])
    shift = t0 - epoch_ns
    lat = f"""
        SELECT bl.committed_ns AS c, (bl.committed_ns - (epoch_ns(r.ts) + {shift})) / 1e6 AS ms
        FROM ({union}) r JOIN s.blocks b ON b.device_id = r.device_id AND b.seq = r.block_seq
        JOIN bl ON bl.batch = b.batch_no"""
    q = con.execute(
        f"SELECT quantile_cont(ms, 0.5), quantile_cont(ms, 0.95), quantile_cont(ms, 0.99), max(ms) FROM ({lat})"
    ).fetchone()
    assert q is not None
    res.latency_ms = {k: round(float(v), 1) for k, v in zip(("p50", "p95", "p99", "max"), q, strict=True)}
    per_s = con.execute(
        f"SELECT (c - {t0}) // 1000000000 AS sec, quantile_cont(ms, 0.5), quantile_cont(ms, 0.99)"
        f" FROM ({lat}) GROUP BY sec ORDER BY sec"
    ).fetchall()
    res.timeline = [{"t": float(s), "p50_ms": float(a), "p99_ms": float(b)} for s, a, b in per_s]
    con.close()


def _timeline(res: PhaseResult, stats: list[ReleaseStats], batches: list[dict[str, Any]], t0: int) -> None:
    """Per second after t0: records published and stored (and latency, when measured)."""
    by_sec: dict[int, dict[str, float]] = {int(p["t"]): dict(p) for p in res.timeline}
    for s in stats:
        for sec, n in enumerate(s.per_second):
            by_sec.setdefault(sec, {"t": float(sec)})
            by_sec[sec]["offered"] = by_sec[sec].get("offered", 0.0) + n
    for b in batches:
        sec = max(0, (b["committed_ns"] - t0) // 1_000_000_000)
        by_sec.setdefault(sec, {"t": float(sec)})
        by_sec[sec]["stored"] = by_sec[sec].get("stored", 0.0) + b["records"]
    res.timeline = [
        {"offered": 0.0, "stored": 0.0, **by_sec[s]}
        for s in range(0, max(by_sec, default=-1) + 1)
        if s in by_sec
    ]


# -- report ---------------------------------------------------------------------------------------


def _fmt(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def table(results: list[PhaseResult], ratio: float | None) -> str:
    cols = [r.name for r in results]
    rows: list[tuple[str, list[str]]] = [
        ("mode", ["pass-through (no verification)" if r.passthrough else "full" for r in results]),
        ("vehicles", [str(r.vehicles) for r in results]),
        ("records offered", [_fmt(r.generated_records) for r in results]),
        ("offered records/s", [_fmt(r.offered_rps) for r in results]),
        ("**stored records/s**", [f"**{_fmt(r.stored_rps)}**" for r in results]),
        ("blocks/s", [_fmt(r.blocks_ps) for r in results]),
        ("batches/s", [_fmt(r.batches_ps, 1) for r in results]),
        ("latency p50 / p95 / p99 ms", [_lat(r.latency_ms) for r in results]),
        ("anchor lag p50 / max ms", [_pair(r.anchor_lag_ms, "p50", "max") for r in results]),
        ("simulator lag p99 ms", [_pair(r.sim_lag_ms, "p99") for r in results]),
        ("lost / duplicated records", [f"{r.lost_records} / {r.duplicated_records}" for r in results]),
        ("rejections", [str(r.rejections) for r in results]),
        ("redelivered blocks (deduplicated)", [str(r.redelivered_blocks) for r in results]),
    ]
    rows += session_rows(results)
    comps = measured(results)
    for comp in (*comps, "total"):
        rows.append((f"CPU {comp} (cores)", [f"{r.cpu_cores.get(comp, 0):.2f}" for r in results]))
    for comp in comps:
        rows.append((f"CPU {comp} (µs per block)", [_fmt(r.cpu_us_per_block.get(comp, 0)) for r in results]))
    for q in dict.fromkeys(q for r in results for q in r.analysts_ms):
        rows.append((f"analysts: {q}, p95 ms", [_pair(r.analysts_ms.get(q, {}), "p95") for r in results]))
    for comp in ("mosquitto", "kafka broker", "bridge", "consumer", "one consumer"):
        rows.append((f"peak RSS {comp} (MiB)", [_fmt(r.rss_mib.get(comp, 0)) for r in results]))
    lines = ["| | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
    lines += [f"| {k} | " + " | ".join(v) + " |" for k, v in rows]
    if ratio is not None:
        lines.append(f"\nfull / pass-through stored records/s: **{ratio:.2f}**")
    return "\n".join(lines)


def session_rows(results: list[PhaseResult]) -> list[tuple[str, list[str]]]:
    """The rows on how the fleet connected and where the run's processes ran (e2e and fleet)."""
    rows = [
        ("MQTT sessions (mosquitto open files)", [f"{r.sessions:,} ({r.broker_fds:,})" for r in results]),
        ("MQTT transport", [r.mqtt_tls or "plain" for r in results]),
        (
            "MQTT logins",
            [
                f"password each, production ACL ({r.mqtt_logins:,})" if r.mqtt_logins else "anonymous"
                for r in results
            ],
        ),
    ]
    if any(r.cpus or r.consumer_cpus for r in results):
        rows.append(("CPUs each component ran on", [_cpus_cell(r) for r in results]))
    return rows


def _cpus_cell(r: PhaseResult) -> str:
    """Which CPUs each component ran on, as /proc listed them: ``0: simulator, bridge; 1: consumer``."""
    by: dict[str, list[str]] = {}
    for comp, lists in r.cpus_allowed.items():
        if comp != ANALYSTS:  # the benchmark's own process
            by.setdefault(" + ".join(lists), []).append(comp)
    return "; ".join(f"{cpus}: {', '.join(comps)}" for cpus, comps in by.items())


def _lat(d: dict[str, float]) -> str:
    return f"{d['p50']:,.0f} / {d['p95']:,.0f} / {d['p99']:,.0f}" if d else "-"


def _pair(d: dict[str, float], *keys: str) -> str:
    return " / ".join(f"{d[k]:,.0f}" for k in keys) if d else "-"


def chart(results: list[PhaseResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 10.5), sharex=True)
    colors = {"full": "tab:blue", "passthrough": "tab:gray", "half": "tab:green"}
    for r in results:
        t = [p["t"] for p in r.timeline]
        c = colors.get(r.name)
        # Batches commit every ~0.5 s, so per-second counts alias; a centred 5 s mean reads better.
        stored = _moving_mean([p["stored"] / 1000 for p in r.timeline], 5)
        ax1.plot(t, stored, color=c, label=f"{r.name}: stored")
        ax1.plot(t, [p["offered"] / 1000 for p in r.timeline], color=c, ls=":", label=f"{r.name}: offered")
        lt = [p for p in r.timeline if "p99_ms" in p]
        if lt:
            ax2.plot([p["t"] for p in lt], [p["p50_ms"] for p in lt], color=c, ls=":", label=f"{r.name}: p50")
            ax2.plot([p["t"] for p in lt], [p["p99_ms"] for p in lt], color=c, label=f"{r.name}: p99")
    ax1.set_ylabel("thousand records/s")
    ax1.set_title("Throughput (stored = committed to DuckDB, 5 s mean; offered = published by the fleet)")
    ax1.legend(fontsize=8, ncol=3)
    ax1.grid(alpha=0.3)
    ax2.set_ylabel("sample → queryable (ms)")
    ax2.set_title("Latency of the records stored in each second")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    _cpu_panel(ax3, results)
    ax3.set_xlabel("seconds since the fleet started publishing")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cpu_panel(ax: Any, results: list[PhaseResult]) -> None:
    """Each component's CPU over time (a colour per component, a line style per phase): a cost
    that grows during a run shows as a rising line (docs/PERFORMANCE.md, "Long runs")."""
    styles = {"full": "-", "passthrough": ":", "half": "--"}
    colors = {c: f"C{i}" for i, c in enumerate(COMPONENTS)}
    labelled: set[str] = set()
    for r in results:
        if not r.cpu_timeline:
            continue
        t = [p["t"] for p in r.cpu_timeline]
        for comp in (c for c in COMPONENTS if c in r.cpu_timeline[0]):
            cores = _moving_mean([p.get(comp, 0.0) for p in r.cpu_timeline], 5)
            label = None if comp in labelled else comp
            labelled.add(comp)
            ax.plot(t, cores, color=colors[comp], ls=styles.get(r.name, "-"), label=label)
    ax.set_ylabel("cores")
    ax.set_title("CPU by component (5 s mean; phases: full —, pass-through ···, half – –)")
    ax.legend(fontsize=7, ncol=3)
    ax.grid(alpha=0.3)


def _moving_mean(xs: list[float], width: int) -> list[float]:
    half = width // 2
    return [
        sum(xs[max(0, i - half) : i + half + 1]) / len(xs[max(0, i - half) : i + half + 1])
        for i in range(len(xs))
    ]


def replot(out: Path) -> None:
    """Render ``<out>/e2e.png`` again from ``<out>/e2e.json``."""
    report = json.loads((out / "e2e.json").read_text())
    chart([PhaseResult(**p) for p in report["phases"]], out / "e2e.png")


def verdict(results: list[PhaseResult], cores: int) -> list[str]:
    out = []
    for r in results:
        if r.sim_lag_ms and r.sim_lag_ms.get("p99", 0) > 500:
            out.append(
                f"{r.name}: the simulator fell behind its schedule (p99 {r.sim_lag_ms['p99']:,.0f} ms late):"
                " it, not the pipeline, limited the offered load; use more --procs or a lower --rate"
            )
        elif r.offered_rps > 0 and r.stored_rps < 0.95 * r.offered_rps:
            busiest = max(
                (k for k in r.cpu_cores if k != "total" and k not in NOT_PIPELINE),
                key=lambda k: r.cpu_cores[k],
            )
            out.append(
                f"{r.name}: the pipeline stored {r.stored_rps:,.0f} of {r.offered_rps:,.0f} records/s offered;"
                f" busiest component: {busiest} ({r.cpu_cores[busiest]:.2f} cores of {cores})"
            )
        else:
            out.append(f"{r.name}: the pipeline kept up with the offered load")
        if r.lost_records or r.duplicated_records or r.unexpected_blocks:
            out.append(
                f"{r.name}: LOSS OR DUPLICATION: {r.lost_records} lost, {r.duplicated_records} duplicated"
                f" records, {r.unexpected_blocks} unexpected blocks"
            )
    return out


# -- main -----------------------------------------------------------------------------------------

# The options `bench fleet` passes through to its phases as they are.
STACK_ARGS = (
    "procs",
    "partitions",
    "consumers",
    "verify_threads",
    "consumer_duckdb_threads",
    "bridge_linger_ms",
    "bridge_bundle",
    "kafka_storage",
    "mqtt_tls",
    "mqtt_auth",
    "cpus",
    "consumer_cpus",
    "seed",
)


def add_stack_args(ap: argparse.ArgumentParser) -> None:
    """The generator's processes and the pipeline's knobs (``STACK_ARGS``), for e2e and fleet."""
    ap.add_argument(
        "--procs", type=int, default=2, help="simulator processes (vehicles are split between them)"
    )
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--consumers", type=int, default=1, help="consumer processes (the lake only)")
    ap.add_argument(
        "--verify-threads",
        type=int,
        default=2,
        help="threads checking signatures in each consumer (0: in line)",
    )
    ap.add_argument(
        "--consumer-duckdb-threads",
        type=int,
        default=1,
        help="[store] consumer_duckdb_threads: DuckDB's threads in each consumer (0: one per core)",
    )
    ap.add_argument(
        "--mqtt-tls",
        action="store_true",
        help="the vehicles connect over TLS (a development CA made for the run; the broker's"
        " certificate verified), the bridge on the plain listener",
    )
    ap.add_argument(
        "--mqtt-auth",
        action="store_true",
        help="logins as in production: each vehicle a password (its device id as username), the bridge"
        " its own, the production ACL (deploy/mosquitto/acl); sessions per vehicle only",
    )
    ap.add_argument("--bridge-linger-ms", type=int, default=20, help="the bridge's Kafka producer linger")
    ap.add_argument(
        "--bridge-bundle",
        type=int,
        default=1000,
        help="[bridge] bundle_max_messages: messages per Kafka record (1: no bundles; WIRE.md 12.5)",
    )
    ap.add_argument(
        "--kafka-storage",
        choices=("memory", "s3"),
        default="memory",
        help="the local Kafka-protocol broker's storage: memory (as measured in docs/PERFORMANCE.md; "
        "loses acknowledged messages if it stops) or s3 (the stack's durable default, on SeaweedFS)",
    )
    ap.add_argument(
        "--cpus",
        type=cpu_list,
        help="run every process of the benchmark on these CPUs only (e.g. 0: one core; default: all)",
    )
    ap.add_argument(
        "--consumer-cpus",
        type=cpu_list,
        help="run the consumers on these CPUs (e.g. 1, with --cpus 0: a core of their own)",
    )
    ap.add_argument("--seed", type=int, default=1)


def build_parser(ap: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    ap = ap or argparse.ArgumentParser(
        prog="telematics bench e2e", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--vehicles", type=int, default=200)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load per phase")
    ap.add_argument(
        "--rate",
        type=float,
        default=200_000,
        help="records/s offered in the full and pass-through phases (above capacity: they measure the maximum)",
    )
    ap.add_argument(
        "--half-rate", type=float, help="records/s of the half phase (default: half of full's stored)"
    )
    ap.add_argument("--block-records", type=int, default=100, help="records per block (edge)")
    ap.add_argument("--block-age-ms", type=int, default=500, help="a block closes after this span (edge)")
    ap.add_argument("--batch-records", type=int, default=50_000, help="records per consumer batch")
    ap.add_argument("--batch-age-ms", type=int, default=500, help="a batch is flushed after this age")
    ap.add_argument("--poll-records", type=int, default=2000, help="Kafka messages per consumer poll")
    ap.add_argument("--bridge-pending", type=int, default=5000, help="MQTT messages the bridge holds unacked")
    add_stack_args(ap)
    ap.add_argument(
        "--store",
        choices=["lake", "duckdb"],
        default="lake",
        help="the consumer's store: the lake (DuckLake on the stack's PostgreSQL) or one DuckDB file",
    )
    ap.add_argument(
        "--sessions",
        choices=("worker", "vehicle"),
        default="worker",
        help="MQTT sessions: one per simulator process, vehicles multiplexed on it (worker), or one per"
        " vehicle as in a real fleet (vehicle)",
    )
    ap.add_argument(
        "--analysts-every",
        type=float,
        default=0.0,
        help="seconds between rounds of five dashboard queries on a read-only snapshot (0: none; the lake only)",
    )
    ap.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}"
    )
    ap.add_argument("--out", default="bench/out/e2e", help="directory for data, logs and the report")
    ap.add_argument(
        "--smoke", action="store_true", help="a few seconds of tiny load (CI): checks the machinery"
    )
    return ap


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    if args is None:
        args = build_parser().parse_args(argv)
    with pinned(args.cpus):
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    if args.smoke:
        args.vehicles, args.duration, args.rate, args.procs = 4, 3.0, 2000.0, 2
    if args.mqtt_auth and args.sessions != "vehicle":
        print(
            "bench e2e: --mqtt-auth needs --sessions vehicle (the ACL lets a login publish as itself only)",
            file=sys.stderr,
        )
        return 2
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    bad = [p for p in phases if p not in PHASES]
    if bad:
        print(f"bench e2e: unknown phase(s) {bad}; choose from {PHASES}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[PhaseResult] = []

    from simulators.load import LoadFleet

    def fleet_at(rate: float) -> tuple[LoadFleet, list[Manifest]]:
        fleet = LoadFleet(
            vehicles=args.vehicles,
            rate=rate,
            duration=args.duration,
            block_records=args.block_records,
            block_age_ms=args.block_age_ms,
            procs=args.procs,
            seed=args.seed,
            work_dir=out / "spools",
        )
        n = int(rate * args.duration)
        bar = ProgressBar("generating", n, unit=" records")
        t = time.monotonic()
        try:
            manifests = fleet.wait_generated(lambda d: bar.update(d))
        except BaseException:
            fleet.close()
            raise
        bar.close()
        took = time.monotonic() - t
        recs = sum(m.records for m in manifests)
        print(
            f"generated {recs:,} records in {sum(len(m.blocks) for m in manifests):,} signed blocks"
            f" from {args.vehicles} vehicles in {took:.1f}s ({args.procs} processes,"
            f" {took * args.procs / max(1, recs) * 1e6:.1f} µs per record per process)",
            file=sys.stderr,
        )
        return fleet, manifests

    speed_start = reference_unit_us()
    t_start = time.monotonic()
    if "full" in phases or "passthrough" in phases:
        fleet, manifests = fleet_at(args.rate)
        try:
            for name in ("full", "passthrough"):
                if name in phases:
                    r = run_phase(name, fleet, manifests, args, paced=True, passthrough=name == "passthrough")
                    results.append(r)
                    print(f"{name}: stored {r.stored_rps:,.0f} records/s", file=sys.stderr)
        finally:
            fleet.close()
    if "half" in phases:
        full = next((r for r in results if r.name == "full"), None)
        rate = args.half_rate or (0.5 * full.stored_rps if full is not None else 0.5 * args.rate)
        fleet, manifests = fleet_at(rate)
        try:
            results.append(run_phase("half", fleet, manifests, args, paced=True, passthrough=False))
        finally:
            fleet.close()
    shutil.rmtree(out / "spools", ignore_errors=True)

    full_r = next((r for r in results if r.name == "full"), None)
    pt = next((r for r in results if r.name == "passthrough"), None)
    ratio = full_r.stored_rps / pt.stored_rps if full_r and pt and pt.stored_rps else None
    md = table(results, ratio)
    box = machine(speed_start, reference_unit_us())
    lines = verdict(results, cores_given(args))
    report = {
        "machine": box,
        "args": {k: v for k, v in vars(args).items() if k != "fn"},
        "phases": [asdict(r) for r in results],
        "full_over_passthrough": ratio,
        "verdict": lines,
        "seconds": round(time.monotonic() - t_start, 1),
    }
    (out / "e2e.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "e2e.md").write_text(md + "\n\n" + "\n".join(f"- {v}" for v in lines) + f"\n\n{speed_line(box)}\n")
    chart(results, out / "e2e.png")
    print()
    print(md)
    print()
    for v in lines:
        print(f"- {v}")
    print(f"\n{speed_line(box)}")
    print(f"\nreport: {out / 'e2e.md'}, {out / 'e2e.json'}, chart: {out / 'e2e.png'}")
    ok = all(r.lost_records == 0 and r.duplicated_records == 0 and r.unexpected_blocks == 0 for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
