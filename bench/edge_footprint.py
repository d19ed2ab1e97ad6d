"""Edge agent footprint: RSS and CPU of the real `edge-agent run` with the default collection.

    .venv/bin/python bench/edge_footprint.py --duration 120              # simulator, hard-brake trigger
    .venv/bin/python bench/edge_footprint.py --duration 120 --no-trigger
    .venv/bin/python bench/edge_footprint.py --duration 600 --json out.json
    .venv/bin/python bench/edge_footprint.py --can                       # frames over python-can udp_multicast

What runs: a private mosquitto on a free loopback port, an MQTT subscriber in this process on
``vehicles/+/blocks`` and ``vehicles/+/state`` (without one the broker answers PUBACK 16 "no matching
subscribers" and the agent keeps its blocks in the spool), and the agent as a subprocess
(``python -m edge_agent.cli --config X run --duration D``) with a fresh key, ``fsync = true`` and the
default collection: the ``driving`` group at 10 Hz (15 signals) and ``battery`` at 1 Hz (16 signals),
31 VSS signals of which 5 are GNSS fields, 11 records/s. ``--trigger`` (the default) adds a 50 Hz
hard-brake trigger with a 2 s ring buffer; the built-in simulator then steps its model at 50 Hz, the
fastest configured rate, which is more work than 10 Hz. A hard brake is injected once inside the
measured window so that the trigger fires.

The agent's ``/proc/<pid>/stat`` (utime + stime) and ``/proc/<pid>/status`` (VmRSS, VmHWM, RssAnon,
RssFile) are sampled once a second. The first ``--warmup`` seconds (interpreter start, imports,
connection) are reported separately from the measured window of ``--duration`` seconds. CPU % is
CPU time over wall time, in % of one core. An idle interpreter that only imports what the agent
imports gives the baseline: RSS = interpreter + libraries + the agent's own working set. The
simulator's model runs inside the agent process: to split the CPU figure, the agent's main-thread
stages (simulator, collector, block sealing, spool) are replayed afterwards in this process, paced to
the wall clock like the agent paces them, each timed with the thread's CPU clock (no MQTT).

Targets from the issue (<= 40 MiB RSS, <= 2 % of one core) are printed as PASS / MISS, never
asserted: the exit code is 0 whatever the numbers are.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from common.progress import ProgressBar
from edge_agent.builder import BlockBuilder
from edge_agent.collect import CollectConfig, Collector, TriggerConfig
from edge_agent.sources.simulated import SimulatedSignals
from edge_agent.sources.vehicle import VehicleModel
from edge_agent.spool import Spool
from schemas.block import decode_envelope, decode_record
from schemas.crypto import SigningKey, device_id_for
from schemas.transport import BLOCKS_FILTER, STATE_FILTER

REPO = Path(__file__).resolve().parent.parent
DBC = REPO / "deploy" / "edge" / "ev.dbc"
MIB = 1 << 20
TARGET_RSS_BYTES = 40 * MIB
TARGET_CPU_PCT = 2.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
CAN_GROUP = "239.74.163.2"  # python-can's default IPv4 group for udp_multicast (port 43113)
HARD_BRAKE = TriggerConfig(
    name="hard_brake",
    signal="Vehicle.Acceleration.Longitudinal",
    op="<",
    threshold=-6.5,
    record="driving",
    rate_hz=50.0,
    pre_s=2.0,
    post_s=3.0,
    cooldown_s=10.0,
)
# What the baseline interpreter imports, in this order (each row of the import ladder is cumulative):
# the agent's own imports, then those of its source: the simulator, or (--can) the CAN source and
# python-can's udp_multicast interface (with SocketCAN on a vehicle: can.interfaces.socketcan).
IMPORT_LADDER = (
    "sqlite3",
    "msgspec",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
    "ssl",
    "paho.mqtt.client",
    "edge_agent.cli",
)
IMPORT_LADDER_SIM = ("edge_agent.sources.simulated",)
IMPORT_LADDER_CAN = ("can", "cantools", "edge_agent.sources.can", "can.interfaces.udp_multicast")
_LADDER_SCRIPT = """
import importlib, json, os, sys, time
def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0])
    return out
print(json.dumps({"step": "python", **status()}), flush=True)
for name in sys.argv[2:]:
    importlib.import_module(name)
    print(json.dumps({"step": name, **status()}), flush=True)
time.sleep(float(sys.argv[1]))
t = os.times()
print(json.dumps({"step": "idle", "cpu_s": t.user + t.system, **status()}), flush=True)
"""


class BenchError(Exception):
    """The environment cannot run the benchmark (no mosquitto, the agent did not start, ...)."""


# -- /proc sampling ---------------------------------------------------------------------------------


@dataclass
class ProcSample:
    t: float  # seconds since the agent was started
    cpu_s: float  # utime + stime
    stime_s: float  # of which in the kernel (system calls: sleeps, sockets, writes, fsync)
    rss_kb: int
    hwm_kb: int
    anon_kb: int
    file_kb: int
    threads: int
    write_bytes: int  # /proc/<pid>/io: bytes sent to the storage layer (-1: not readable)


def read_proc(pid: int, t: float) -> ProcSample | None:
    """One sample of ``pid``; ``None`` once it is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state is field 3 of the man page
    if fields[0] == "Z":
        return None
    cpu_s = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime (14), stime (15)
    st: dict[str, int] = {}
    for line in status.splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
            st[k] = int(v.split()[0])
    write_bytes = -1
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                write_bytes = int(line.split()[1])
    return ProcSample(
        t=t,
        cpu_s=cpu_s,
        stime_s=int(fields[12]) / CLK_TCK,
        rss_kb=st.get("VmRSS", 0),
        hwm_kb=st.get("VmHWM", 0),
        anon_kb=st.get("RssAnon", 0),
        file_kb=st.get("RssFile", 0),
        threads=st.get("Threads", 0),
        write_bytes=write_bytes,
    )


def read_threads(pid: int) -> dict[int, float]:
    """CPU seconds (utime + stime) per thread of ``pid``."""
    out: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                out[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def read_pss_kb(pid: int) -> int:
    """Proportional set size (shared pages divided among the processes mapping them); -1 if unreadable."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return -1


def thread_split(pid: int, start: dict[int, float], end: dict[int, float], span: float) -> dict[str, float]:
    """% of one core per thread over ``span`` seconds; the agent's threads are named by start order
    (Python 3.11 does not name OS threads): main (the runner: source, collector, sealing, spool),
    then the MQTT supervisor, then paho's network loop (one per connection)."""
    names = ["mqtt supervisor", "paho network loop"]
    out: dict[str, float] = {}
    others = sorted(t for t in end if t != pid)
    for tid in [pid, *others]:
        if tid == pid:
            name = "main"
        elif len(others) == len(names):
            name = names[others.index(tid)]
        else:
            name = f"thread {tid}"
        out[name] = round((end[tid] - start.get(tid, 0.0)) / span * 100, 3) if span > 0 else 0.0
    return out


def import_ladder(sleep_s: float, modules: tuple[str, ...]) -> list[dict[str, Any]]:
    """RSS of a fresh interpreter after each import of ``modules``, then after ``sleep_s`` idle."""
    out = subprocess.run(
        [sys.executable, "-c", _LADDER_SCRIPT, str(sleep_s), *modules],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=120 + sleep_s,
    )
    rows: list[dict[str, Any]] = [json.loads(line) for line in out.stdout.splitlines() if line]
    return rows


# -- broker and subscriber --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start_mosquitto(work: Path, port: int) -> subprocess.Popen[bytes]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise BenchError("mosquitto is not installed (Debian: apt-get install -y mosquitto)")
    conf = work / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                "# edge footprint benchmark: a private broker, no persistence",
                f"listener {port} 127.0.0.1",
                "allow_anonymous true",
                "persistence false",
                "max_inflight_messages 0",
                f"log_dest file {work}/mosquitto.log",
                "log_type error",
                "log_type warning",
                "",
            ]
        )
    )
    with (work / "mosquitto.out").open("wb") as out:
        proc = subprocess.Popen(
            [exe, "-c", str(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches only this process; the finally block stops it
        )
    deadline = time.monotonic() + 10
    while not port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc, timeout=2)
            raise BenchError(f"mosquitto did not listen on 127.0.0.1:{port}; see {work}/mosquitto.out")
        time.sleep(0.05)
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


class Subscriber:
    """Takes every block and state message, so that the broker acknowledges blocks as delivered."""

    def __init__(self, port: int) -> None:
        self._lock = threading.Lock()
        self.blocks = 0
        self.block_bytes = 0
        self.records = 0
        self.kinds: Counter[str] = Counter()
        self.state_messages = 0
        self.undecodable = 0
        self._ready = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"edge-footprint-{os.getpid()}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._ready.wait(10):
            self.close()
            raise BenchError(f"the subscriber did not get its subscription on 127.0.0.1:{port}")

    def _on_connect(self, c: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
        c.subscribe([(BLOCKS_FILTER, 1), (STATE_FILTER, 1)])

    def _on_subscribe(self, c: mqtt.Client, u: object, mid: int, rcs: object, p: object) -> None:
        self._ready.set()

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/state"):
            with self._lock:
                self.state_messages += 1
            return
        kinds: list[str] = []
        try:
            env = decode_envelope(bytes(msg.payload))
            kinds = [type(decode_record(r)).__name__ for r in env.records]
        except Exception:  # a benchmark counts what it cannot decode; it does not stop on it
            with self._lock:
                self.undecodable += 1
        with self._lock:
            self.blocks += 1
            self.block_bytes += len(msg.payload)
            self.records += len(kinds)
            self.kinds.update(kinds)

    def snapshot(self) -> tuple[int, int, int]:
        with self._lock:
            return self.blocks, self.records, self.block_bytes

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


# -- CAN over udp_multicast -------------------------------------------------------------------------


def can_unavailable() -> str | None:
    """Why frames cannot be sent to the agent subprocess over python-can's udp_multicast, or None."""
    if importlib.util.find_spec("msgpack") is None:
        return (
            "python-can's udp_multicast interface needs the 'msgpack' package, which is not installed"
            " (it is not a dependency of this project; to try it without touching the venv:"
            " `pip install --target DIR msgpack` and PYTHONPATH=DIR); python-can's 'virtual'"
            " interface is in-process only and cannot feed the agent subprocess"
        )
    import can

    try:
        rx = can.Bus(interface="udp_multicast", channel=CAN_GROUP)
    except Exception as exc:  # whatever the interface raises, the answer is "not here"
        return f"cannot open a udp_multicast bus on {CAN_GROUP}: {exc}"
    try:
        with can.Bus(interface="udp_multicast", channel=CAN_GROUP) as tx:
            tx.send(can.Message(arbitration_id=0x7FF, data=b"\x01", is_extended_id=False))
        got = rx.recv(timeout=2.0)
    finally:
        rx.shutdown()
    if got is None:
        return f"a frame sent to the udp_multicast group {CAN_GROUP} was not received on this host"
    return None


class CanFeeder(threading.Thread):
    """Steps a simulated vehicle in real time and sends its signals as CAN frames (deploy/edge/ev.dbc)."""

    def __init__(self, seed: int, rate_hz: float, hard_brake_at_s: float | None) -> None:
        super().__init__(name="can-feeder", daemon=True)
        import can

        from edge_agent.sources.can import CanConfig, CanSource

        self.bus = can.Bus(interface="udp_multicast", channel=CAN_GROUP)
        # A source over our own bus gives encode_frames the DBC's signal plans; it never reads.
        self.source = CanSource(CanConfig(dbc_path=str(DBC)), bus=self.bus)
        self.mapped = set(self.source.mapping.values())
        model = VehicleModel(seed, start_ns=time.time_ns(), rate_hz=rate_hz)
        self.sim = SimulatedSignals(model, ticks=2**62, realtime=True, hard_brake_at_s=hard_brake_at_s)
        self.stop = threading.Event()
        self.frames = 0
        self.errors = 0

    def run(self) -> None:
        from edge_agent.sources.can import encode_frames

        while not self.stop.is_set():
            updates = self.sim.read(0.05)
            if not updates:
                continue
            values = {path: v for path, v, _ in updates if path in self.mapped}
            try:
                frames = encode_frames(self.source, values)
            except Exception:  # a value out of the DBC's range: count it, keep going
                self.errors += 1
                continue
            for frame in frames:
                self.bus.send(frame)
                self.frames += 1

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        self.bus.shutdown()


# -- the agent --------------------------------------------------------------------------------------


def write_agent_config(work: Path, port: int, *, trigger: bool, can: bool, fsync: bool) -> Path:
    lines = [
        "[mqtt]",
        'host = "127.0.0.1"',
        f"port = {port}",
        "",
        "[edge]",
        f'key_path = "{work / "device.key"}"',
        f'spool_path = "{work / "spool.sqlite"}"',
        f"fsync = {'true' if fsync else 'false'}",
        "",
        "[source]",
        f'kind = "{"can" if can else "simulator"}"',
        "",
    ]
    if can:
        lines += [
            "[can]",
            f'dbc_path = "{DBC}"',
            'interface = "udp_multicast"',
            f'channel = "{CAN_GROUP}"',
            "",
        ]
    if trigger:
        t = HARD_BRAKE
        lines += [
            "[[collect.triggers]]",
            f'name = "{t.name}"',
            f'signal = "{t.signal}"',
            f'op = "{t.op}"',
            f"threshold = {t.threshold}",
            f'record = "{t.record}"',
            f"rate_hz = {t.rate_hz}",
            f"pre_s = {t.pre_s}",
            f"post_s = {t.post_s}",
            f"cooldown_s = {t.cooldown_s}",
            "",
        ]
    path = work / "edge-agent.toml"
    path.write_text("\n".join(lines))
    return path


def keygen(work: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "keygen", "--out", str(work / "device.key")],
        check=True,
        capture_output=True,
        cwd=work,
    )


# -- in-process cost split --------------------------------------------------------------------------


def pipeline_split(seed: int, *, trigger: bool, fsync: bool, seconds: float, work: Path) -> dict[str, Any]:
    """The agent's main-thread work, replayed here paced to the wall clock like the agent does it
    (the same source, collector, block sealing and spool, no MQTT), with the CPU time of each stage
    (``time.thread_time_ns``): the simulator's ``read`` when it returns a tick (the sleep until it is
    due, the model step, the signal updates), the reads that time out with nothing (the runner reads
    with a 20 ms timeout: wake-ups), ``Collector.feed``, sealing (encode, Merkle root, Ed25519, wire form) and the
    spool (one ``put`` and one ``ack`` transaction per block). Paced, not as fast as possible: run
    back to back, the same steps cost several times less (warm caches), which is not the agent's case."""
    collect = CollectConfig(triggers=(HARD_BRAKE,) if trigger else ())
    rate = max([10.0, *[g.rate_hz for g in collect.groups], *[t.rate_hz for t in collect.triggers]])
    ticks = int(seconds * rate)
    key = SigningKey.generate()
    spool_path = work / "split.sqlite"
    for p in work.glob("split.sqlite*"):
        p.unlink()
    spool = Spool(spool_path, fsync=fsync)
    state = spool.begin_boot(device_id_for(key.public_key))
    builder = BlockBuilder(key, state, max_records=100, max_age_ns=1_000_000_000)
    model = VehicleModel(seed, start_ns=time.time_ns(), rate_hz=rate)
    sim = SimulatedSignals(model, ticks=ticks, realtime=True, hard_brake_at_s=seconds / 2)
    collector = Collector(collect)
    cost: Counter[str] = Counter()
    loops = updates = records = blocks = 0
    clock = time.thread_time_ns
    start_cpu, start_wall = clock(), time.monotonic()
    try:
        while not sim.done:
            loops += 1
            t0 = clock()
            batch = sim.read(0.02)  # the runner's read timeout
            t1 = clock()
            if not batch:  # the read timed out before the next tick: a wake-up with nothing to do
                cost["idle reads"] += t1 - t0
                continue
            cost["source"] += t1 - t0
            updates += len(batch)
            out = collector.feed(batch)
            t2 = clock()
            cost["collector"] += t2 - t1
            for rec in out:
                records += 1
                t3 = clock()
                block = builder.add(rec)
                payload = block.to_wire() if block is not None else None
                t4 = clock()
                cost["sealing"] += t4 - t3
                if block is not None and payload is not None:
                    blocks += 1
                    spool.put(state, block, payload, now_ns=rec.ts_ns)
                    spool.ack([block.header.seq])
                    cost["spool"] += clock() - t4
    finally:
        spool.close()
    wall = time.monotonic() - start_wall
    total = clock() - start_cpu
    cost["loop and timing"] = max(0, total - sum(cost.values()))
    return {
        "model_rate_hz": rate,
        "seconds": round(wall, 1),
        "fsync": fsync,
        "cpu_pct_total": round(total / 1e9 / wall * 100, 3),
        "cpu_pct_of_core": {k: round(v / 1e9 / wall * 100, 3) for k, v in cost.items()},
        "per_s": {
            "loops": round(loops / wall, 1),
            "updates": round(updates / wall, 1),
            "records": round(records / wall, 1),
            "blocks": round(blocks / wall, 2),
        },
    }


# -- report -----------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def cpu_pct(a: ProcSample, b: ProcSample) -> float:
    return (b.cpu_s - a.cpu_s) / (b.t - a.t) * 100 if b.t > a.t else 0.0


def mib(kb: float) -> float:
    return kb * 1024 / MIB


def summarize(
    samples: list[ProcSample],
    warm: ProcSample,
    marks: tuple[tuple[int, int, int], tuple[int, int, int]],
    window_s: float = 10.0,
) -> dict[str, Any]:
    steady = [s for s in samples if s.t >= warm.t]
    end = steady[-1]
    span = end.t - warm.t
    windows = []
    i = 0
    for j, s in enumerate(steady):
        while s.t - steady[i].t > window_s:
            i += 1
        if s.t - steady[i].t >= window_s * 0.9 and j > i:
            windows.append(cpu_pct(steady[i], s))
    (b0, r0, n0), (b1, r1, n1) = marks
    readable = end.write_bytes >= 0 and warm.write_bytes >= 0
    writes = end.write_bytes - warm.write_bytes if readable else -1
    return {
        "startup": {
            "seconds": round(warm.t, 1),
            "cpu_s": round(warm.cpu_s, 2),
            "cpu_pct": round(warm.cpu_s / warm.t * 100, 2) if warm.t > 0 else 0.0,
            "rss_mib": round(mib(warm.rss_kb), 2),
            "hwm_mib": round(mib(warm.hwm_kb), 2),
        },
        "steady": {
            "seconds": round(span, 1),
            "samples": len(steady),
            "cpu_s": round(end.cpu_s - warm.cpu_s, 2),
            "cpu_pct": round(cpu_pct(warm, end), 3),
            "system_cpu_pct": round((end.stime_s - warm.stime_s) / span * 100, 3) if span else 0.0,
            "cpu_pct_max_10s": round(max(windows), 2) if windows else None,
            "rss_mib_median": round(mib(statistics.median(s.rss_kb for s in steady)), 2),
            "rss_mib_min": round(mib(min(s.rss_kb for s in steady)), 2),
            "rss_mib_max": round(mib(max(s.rss_kb for s in steady)), 2),
            "rss_mib_growth": round(mib(end.rss_kb - warm.rss_kb), 2),
            "anon_mib_median": round(mib(statistics.median(s.anon_kb for s in steady)), 2),
            "file_mib_median": round(mib(statistics.median(s.file_kb for s in steady)), 2),
            "peak_rss_mib": round(mib(end.hwm_kb), 2),
            "threads": end.threads,
            "storage_write_kib_per_s": round(writes / 1024 / span, 2) if writes >= 0 and span else None,
        },
        "published": {
            "blocks": b1 - b0,
            "records": r1 - r0,
            "bytes": n1 - n0,
            "blocks_per_s": round((b1 - b0) / span, 3) if span else 0.0,
            "records_per_s": round((r1 - r0) / span, 2) if span else 0.0,
            "bytes_per_s": round((n1 - n0) / span, 1) if span else 0.0,
        },
    }


def _is_can(result: dict[str, Any]) -> bool:
    return str(result["config"]["source"]).startswith("can")


def print_report(result: dict[str, Any]) -> None:
    st, su, pub = result["steady"], result["startup"], result["published"]
    base = result.get("baseline") or {}
    peak_ok = st["peak_rss_mib"] * MIB <= TARGET_RSS_BYTES
    cpu_ok = st["cpu_pct"] <= TARGET_CPU_PCT
    print()
    print(
        f"edge-agent footprint: source {result['config']['source']},"
        f" trigger {'on' if result['config']['trigger'] else 'off'},"
        f" {'CAN feed' if _is_can(result) else 'model'} {result['config']['model_rate_hz']:g} Hz,"
        f" fsync {result['config']['fsync']};"
        f" {st['seconds']:.0f} s measured after {su['seconds']:.0f} s warm-up"
    )
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['cpus']} CPUs, Linux {m['kernel']}, Python {m['python']}")
    print()
    print("| measure | value | target |")
    print("| --- | ---: | --- |")
    print(
        f"| peak RSS (VmHWM, whole run) | {st['peak_rss_mib']:.1f} MiB |"
        f" ≤ {TARGET_RSS_BYTES / MIB:.0f} MiB: {'PASS' if peak_ok else 'MISS'} |"
    )
    print(
        f"| steady RSS, median (min–max) | {st['rss_mib_median']:.1f} MiB"
        f" ({st['rss_mib_min']:.1f}–{st['rss_mib_max']:.1f}) | |"
    )
    print(
        f"| steady RSS: anonymous / file-backed | {st['anon_mib_median']:.1f} / {st['file_mib_median']:.1f} MiB | |"
    )
    if st.get("pss_mib_end") is not None:
        print(f"| PSS at the end (shared pages divided) | {st['pss_mib_end']:.1f} MiB | |")
    print(f"| RSS growth over the window | {st['rss_mib_growth']:+.2f} MiB | |")
    print(
        f"| CPU, steady (mean) | {st['cpu_pct']:.2f} % of one core"
        f" (kernel {st['system_cpu_pct']:.2f}) |"
        f" ≤ {TARGET_CPU_PCT:g} %: {'PASS' if cpu_ok else 'MISS'} |"
    )
    split = ", ".join(f"{k} {v:.2f}" for k, v in st.get("threads_cpu_pct", {}).items())
    if split:
        print(f"| CPU per thread (% of one core) | {split} | |")
    if st["cpu_pct_max_10s"] is not None:
        print(f"| CPU, busiest 10 s | {st['cpu_pct_max_10s']:.2f} % | |")
    print(
        f"| start-up: first {su['seconds']:.0f} s | {su['cpu_s']:.2f} s CPU ({su['cpu_pct']:.1f} %),"
        f" RSS {su['rss_mib']:.1f} MiB | |"
    )
    if base:
        print(
            f"| idle interpreter + the agent's imports | {base['idle_rss_mib']:.1f} MiB"
            f" (anon {base['idle_anon_mib']:.1f}, file {base['idle_file_mib']:.1f}) | |"
        )
        print(
            f"| agent's own working set (steady − idle) | {st['rss_mib_median'] - base['idle_rss_mib']:.1f} MiB | |"
        )
    print(f"| threads | {st['threads']} | |")
    print(
        f"| published | {pub['blocks_per_s']:.2f} blocks/s, {pub['records_per_s']:.1f} records/s,"
        f" {pub['bytes_per_s'] / 1024:.2f} KiB/s | |"
    )
    if st["storage_write_kib_per_s"] is not None:
        print(f"| storage writes (/proc/pid/io) | {st['storage_write_kib_per_s']:.1f} KiB/s | |")
    pc = result.get("pipeline")
    if pc:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in pc["cpu_pct_of_core"].items())
        print(
            f"| main-thread stages replayed in-process, {pc['model_rate_hz']:g} Hz model, no MQTT"
            f" (% of one core) | total {pc['cpu_pct_total']:.2f}: {parts} | |"
        )
    if base:
        print()
        print("| import (cumulative, fresh interpreter) | RSS MiB | + MiB |")
        print("| --- | ---: | ---: |")
        prev = None
        for row in base["ladder"]:
            rss = mib(row["VmRSS"])
            delta = "" if prev is None else f"{rss - prev:+.1f}"
            print(f"| {row['step']} | {rss:.1f} | {delta} |")
            prev = rss
    print()
    d = result["delivery"]
    print(
        f"subscriber: {d['blocks']} blocks, {d['records']} records {d['kinds']},"
        f" {d['state_messages']} state messages, {d['undecodable']} undecodable"
    )
    if result.get("can_feeder"):
        f = result["can_feeder"]
        print(f"CAN feeder: {f['frames']} frames sent, {f['encode_errors']} ticks not encodable")
    if result.get("agent_summary"):
        print(result["agent_summary"])


# -- main -------------------------------------------------------------------------------------------


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=120.0, help="measured seconds, after the warm-up")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds of start-up reported separately")
    ap.add_argument(
        "--trigger",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="configure the 50 Hz hard-brake trigger (the simulator's model then steps at 50 Hz)",
    )
    ap.add_argument("--fsync", action=argparse.BooleanOptionalAction, default=True, help="edge.fsync")
    ap.add_argument("--can", action="store_true", help="CAN input: frames over python-can udp_multicast")
    ap.add_argument("--can-hz", type=float, default=10.0, help="--can: model steps (frame bursts) per second")
    ap.add_argument("--seed", type=int, default=1, help="simulator seed")
    ap.add_argument(
        "--hard-brake-at",
        type=float,
        default=None,
        help="seconds after start (default: 30 s into the measured window, or its middle if shorter)",
    )
    ap.add_argument("--baseline-seconds", type=float, default=5.0, help="idle interpreter: seconds (0: skip)")
    ap.add_argument(
        "--split-seconds",
        type=float,
        default=60.0,
        help="seconds of the paced in-process CPU split (0: skip)",
    )
    ap.add_argument("--dir", help="work directory (default: a temporary one, removed at the end)")
    ap.add_argument("--json", help="also write the results (with the per-second samples) to this file")
    args = ap.parse_args(argv)

    if args.can:
        why = can_unavailable()
        if why is not None:
            print(f"edge_footprint: --can skipped: {why}", file=sys.stderr)
            return 0
    signal.signal(signal.SIGTERM, _interrupt)
    brake_at = args.hard_brake_at
    if brake_at is None:
        brake_at = args.warmup + min(30.0, args.duration / 2)
    collect = CollectConfig(triggers=(HARD_BRAKE,) if args.trigger else ())
    model_rate = max([10.0, *[g.rate_hz for g in collect.groups], *[t.rate_hz for t in collect.triggers]])
    tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="edge-footprint-")
    work = Path(args.dir or (tmp.name if tmp else ".")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("spool.sqlite", "spool.sqlite-wal", "spool.sqlite-shm", "device.key"):
        (work / stale).unlink(missing_ok=True)

    result: dict[str, Any] = {
        "machine": machine(),
        "config": {
            "source": "can (udp_multicast)" if args.can else "simulator",
            "trigger": args.trigger,
            "model_rate_hz": args.can_hz if args.can else model_rate,
            "fsync": args.fsync,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "seed": args.seed,
            "hard_brake_at_s": brake_at,
        },
    }
    if args.baseline_seconds > 0:
        print(
            f"baseline: idle interpreter with the agent's imports ({args.baseline_seconds:g} s)",
            file=sys.stderr,
        )
        ladder = import_ladder(
            args.baseline_seconds, IMPORT_LADDER + (IMPORT_LADDER_CAN if args.can else IMPORT_LADDER_SIM)
        )
        idle = ladder[-1]
        result["baseline"] = {
            "idle_rss_mib": round(mib(idle["VmRSS"]), 2),
            "idle_hwm_mib": round(mib(idle["VmHWM"]), 2),
            "idle_anon_mib": round(mib(idle["RssAnon"]), 2),
            "idle_file_mib": round(mib(idle["RssFile"]), 2),
            "ladder": ladder,
        }

    broker: subprocess.Popen[bytes] | None = None
    sub: Subscriber | None = None
    agent: subprocess.Popen[bytes] | None = None
    feeder: CanFeeder | None = None
    samples: list[ProcSample] = []
    interrupted = False
    try:
        port = free_port()
        broker = start_mosquitto(work, port)
        sub = Subscriber(port)
        keygen(work)
        cfg = write_agent_config(work, port, trigger=args.trigger, can=args.can, fsync=args.fsync)
        # The agent runs a few seconds past the window and stops by itself (--duration), draining.
        run_s = args.warmup + args.duration + 3.0
        cmd = [sys.executable, "-m", "edge_agent.cli", "--config", str(cfg), "run"]
        cmd += ["--duration", f"{run_s:g}", "--seed", str(args.seed)]
        if not args.can:
            cmd += ["--hard-brake-at", f"{brake_at:g}"]
        log = (work / "agent.log").open("wb")
        t0 = time.monotonic()
        agent = subprocess.Popen(
            cmd,
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        if args.can:
            feeder = CanFeeder(args.seed, args.can_hz, brake_at)
            feeder.start()
        total = args.warmup + args.duration
        bar = ProgressBar("edge-agent", round(total), unit=" s")
        warm: ProcSample | None = None
        marks: list[tuple[int, int, int]] = []
        threads_warm: dict[int, float] = {}
        threads_end: dict[int, float] = {}
        pss_kb = -1
        k = 0
        while True:
            k += 1
            due = t0 + k * 1.0
            time.sleep(max(0.0, due - time.monotonic()))
            t = time.monotonic() - t0
            s = read_proc(agent.pid, t)
            if s is None:
                break
            samples.append(s)
            if warm is None and t >= args.warmup:
                warm = s
                marks.append(sub.snapshot())
                threads_warm = read_threads(agent.pid)
            prev = samples[-2] if len(samples) > 1 else None
            now_cpu = f"{cpu_pct(prev, s):.1f}" if prev is not None else "-"
            bar.update(min(round(t), round(total)), f"RSS {mib(s.rss_kb):.1f} MiB, CPU {now_cpu} %")
            if t >= total:
                marks.append(sub.snapshot())
                threads_end = read_threads(agent.pid)
                pss_kb = read_pss_kb(agent.pid)
                break
        bar.close()
        if warm is None or len(marks) < 2:
            tail = (work / "agent.log").read_text(errors="replace")[-2000:]
            raise BenchError(f"the agent exited after {samples[-1].t if samples else 0:.0f} s:\n{tail}")
        result.update(summarize(samples, warm, (marks[0], marks[1])))
        result["steady"]["pss_mib_end"] = round(mib(pss_kb), 2) if pss_kb >= 0 else None
        result["steady"]["threads_cpu_pct"] = thread_split(
            agent.pid, threads_warm, threads_end, samples[-1].t - warm.t
        )
    except KeyboardInterrupt:
        interrupted = True
        print("\nedge_footprint: interrupted, stopping the agent and the broker", file=sys.stderr)
    except (BenchError, subprocess.CalledProcessError) as exc:
        print(f"edge_footprint: {exc}", file=sys.stderr)
        return 2
    finally:
        if agent is not None:
            try:
                agent.wait(timeout=5.0 if interrupted else 60.0)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                stop_process(agent, timeout=40)
        if feeder is not None:
            feeder.close()
        if sub is not None:
            time.sleep(0.5)  # the agent's last blocks and its shutdown message
            sub.close()
        if broker is not None:
            stop_process(broker, timeout=5)
        if agent is not None:
            lines = (work / "agent.log").read_text(errors="replace").splitlines()
            result["agent_summary"] = next((x for x in reversed(lines) if "sealed" in x), "")
        if tmp is not None and interrupted:
            tmp.cleanup()
    if interrupted:
        return 0
    assert sub is not None
    result["delivery"] = {
        "blocks": sub.blocks,
        "records": sub.records,
        "bytes": sub.block_bytes,
        "kinds": dict(sub.kinds),
        "state_messages": sub.state_messages,
        "undecodable": sub.undecodable,
    }
    if feeder is not None:
        result["can_feeder"] = {"frames": feeder.frames, "encode_errors": feeder.errors}
    if args.split_seconds > 0 and not args.can:
        print(
            f"CPU split: the agent's main-thread stages in this process, paced, {args.split_seconds:g} s",
            file=sys.stderr,
        )
        result["pipeline"] = pipeline_split(
            args.seed, trigger=args.trigger, fsync=args.fsync, seconds=args.split_seconds, work=work
        )
    print_report(result)
    if args.json:
        out = {**result, "samples": [asdict(s) for s in samples]}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
