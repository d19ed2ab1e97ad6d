"""Load generation for the end-to-end benchmark: many vehicles per process, several processes.

Each worker process owns a slice of the fleet and works in two steps.

1. **Generate.** Every vehicle's model produces its samples and the real edge agent (block
   builder, salted Merkle root, hash chain, Ed25519 signature, spool) seals them into signed
   blocks, exactly as on a vehicle. The samples are stamped on a *schedule clock* that starts at
   ``epoch_ns``. This is the vehicle side's whole per-record cost (about 10 µs per record here),
   which a real fleet spreads over thousands of vehicles, so it is done before the measured run.
2. **Release.** Each block is published over MQTT 5, QoS 1, at the moment its vehicle would have
   sealed it: ``t0 + (t_last - epoch_ns)``, where ``t_last`` is its newest sample. Vehicles start
   at different moments within one block age, so blocks close spread over each second. Either the
   vehicles are multiplexed over one connection per worker (paho), each still on its own topic
   ``vehicles/<device_id>/blocks``, or each vehicle holds its own session (``per_vehicle``: a real
   fleet's connection count; ``mqtt_async``, thousands per process). The sessions are connected
   before the schedule's clock starts. A worker that cannot keep its schedule reports how late it
   published (``lag``): a growing lag means the simulator, not the pipeline, is the bottleneck.

``paced=False`` releases everything as fast as the broker acknowledges (a flood), bounded by the
in-flight window.

The parent talks to workers through ``LoadFleet``; the messages are plain tuples over a pipe.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import multiprocessing as mp
import os
import random
import shutil
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from common.config import EdgeConfig
from common.limits import raise_open_files
from edge_agent.agent import Agent
from edge_agent.publisher import MemoryPublisher
from edge_agent.sources.vehicle import VehicleModel
from edge_agent.spool import Spool
from schemas.block import decode_envelope, decode_header
from schemas.crypto import SigningKey, block_hash, device_id_for
from schemas.transport import blocks_topic

BATTERY_EVERY = 10  # one battery sample per 10 driving samples: 1.1 records per tick


@dataclass(frozen=True)
class LoadSpec:
    """What one worker generates: ``vehicles`` vehicles, ``rate`` records/s in total, for ``duration`` s."""

    worker: int
    vehicles: int
    rate: float
    duration: float
    block_records: int
    block_age_ms: int
    seed: int
    epoch_ns: int
    work_dir: str

    @property
    def tick_hz(self) -> float:
        """Driving samples per second per vehicle (battery adds one per ``BATTERY_EVERY``)."""
        return self.rate / self.vehicles / (1 + 1 / BATTERY_EVERY)


@dataclass
class Manifest:
    """What a worker generated: the keys to register and every block, to check for loss later."""

    worker: int
    keys: list[tuple[str, bytes]]  # (device_id, public key)
    blocks: list[tuple[str, int, bytes, int]]  # (device_id, seq, block hash, records)
    records: int
    payload_bytes: int
    last_offset_ns: int  # release time of the last block, after t0
    seconds: float  # generation time


@dataclass
class ReleaseStats:
    worker: int
    blocks: int = 0
    records: int = 0
    acked: int = 0
    refused: int = 0  # PUBACK with a failure code or "no matching subscribers"
    seconds: float = 0.0  # t0 -> every PUBACK received
    seconds_published: float = 0.0  # t0 -> the last block published
    cpu_s: float = 0.0
    lag_ms: dict[str, float] = field(default_factory=dict)  # p50 / p99 / max of publish - due
    per_second: list[int] = field(default_factory=list)  # records published in each second after t0
    sessions: int = 1  # MQTT sessions this worker held
    tls: str = ""  # the TLS version its sessions negotiated ("": plain MQTT)


def _generate(spec: LoadSpec, conn: Connection) -> tuple[Manifest, list[tuple[int, str, bytes, int]]]:
    t = time.monotonic()
    work = Path(spec.work_dir) / f"worker-{spec.worker}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    edge = EdgeConfig(
        block_max_records=spec.block_records,
        block_max_age_ms=spec.block_age_ms,
        fsync=False,
        spool_max_bytes=1 << 40,
        spool_max_age_s=0,
    )
    ticks = max(1, round(spec.duration * spec.tick_hz))
    keys: list[tuple[str, bytes]] = []
    manifest: list[tuple[str, int, bytes, int]] = []
    out: list[tuple[int, str, bytes, int]] = []  # (release offset ns, topic, payload, records)
    records = payload_bytes = 0
    last_report = 0.0
    for v in range(spec.vehicles):
        key = SigningKey.generate()
        dev = device_id_for(key.public_key)
        keys.append((dev, key.public_key))
        pub = MemoryPublisher()
        spool = Spool(work / f"{dev}.spool", fsync=False, max_bytes=edge.spool_max_bytes)
        agent = Agent(key, edge, pub, spool)
        vseed = spec.seed * 1_000_003 + spec.worker * 10_007 + v
        # Vehicles start at different moments: their blocks close spread over each second, not in a
        # fleet-wide burst (a real fleet is not synchronised). Within one block age of the epoch.
        phase_ns = random.Random(vseed).randrange(max(1, spec.block_age_ms) * 1_000_000)
        model = VehicleModel(
            vseed,
            start_ns=spec.epoch_ns + phase_ns,
            rate_hz=spec.tick_hz,
            battery_every=BATTERY_EVERY,
        )
        for _ in range(ticks):
            for rec in model.step():
                agent.offer(rec)
        agent.flush()
        agent.drain(timeout=5)
        spool.close()
        topic = blocks_topic(dev)
        for _, payload in pub.messages:
            env = decode_envelope(payload)
            h = decode_header(env.header)
            manifest.append((dev, h.seq, block_hash(env.header), h.count))
            out.append((h.t_last - spec.epoch_ns, topic, payload, h.count))
            records += h.count
            payload_bytes += len(payload)
        now = time.monotonic()
        if now - last_report > 0.5:
            conn.send(("progress", records))
            last_report = now
    shutil.rmtree(work, ignore_errors=True)
    out.sort(key=lambda b: b[0])
    m = Manifest(
        worker=spec.worker,
        keys=keys,
        blocks=manifest,
        records=records,
        payload_bytes=payload_bytes,
        last_offset_ns=out[-1][0] if out else 0,
        seconds=time.monotonic() - t,
    )
    return m, out


def _release(
    worker: int,
    blocks: list[tuple[int, str, bytes, int]],
    *,
    host: str,
    port: int,
    start: Callable[[int], int],
    paced: bool,
    window: int,
    conn: Connection,
    ca_file: str | None = None,
) -> ReleaseStats:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    st = ReleaseStats(worker)
    acked = [0]
    refused = [0]
    connected = threading.Event()

    def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            connected.set()

    def on_publish(c: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
        # 16 = "no matching subscribers": a success code in MQTT 5, but nobody got the block.
        if rc.is_failure or rc.value == 16:
            refused[0] += 1
        acked[0] += 1

    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"load-{worker}-{os.getpid()}",
        protocol=mqtt.MQTTv5,
    )
    client.max_inflight_messages_set(window)
    client.on_connect = on_connect
    client.on_publish = on_publish
    if ca_file:
        client.tls_set(ca_certs=ca_file)
    client.connect(host, port, keepalive=60, clean_start=True)
    client.loop_start()
    if not connected.wait(30):
        raise RuntimeError(f"load worker {worker}: no MQTT connection to {host}:{port}")
    sock = client.socket()
    st.tls = (sock.version() or "") if isinstance(sock, ssl.SSLSocket) else ""
    tally = _Tally(st, start(1), paced, conn)
    for offset, topic, payload, nrec in blocks:
        due = tally.t0_ns + offset
        if paced:
            ahead = due - time.time_ns()
            if ahead > 1_000_000:
                time.sleep(ahead / 1e9)
        while tally.sent - acked[0] >= window:
            time.sleep(0.0005)
        client.publish(topic, payload, qos=1)
        tally.published(due, nrec)
    tally.all_published()
    deadline = time.monotonic() + 120
    while acked[0] < tally.sent and time.monotonic() < deadline:
        time.sleep(0.01)
    tally.finish(acked[0], refused[0])
    client.disconnect()
    client.loop_stop()
    return st


def _release_sessions(
    worker: int,
    blocks: list[tuple[int, str, bytes, int]],
    *,
    host: str,
    port: int,
    start: Callable[[int], int],
    paced: bool,
    window: int,
    conn: Connection,
    ca_file: str | None = None,
    password_key: bytes | None = None,
) -> ReleaseStats:
    """Like ``_release``, but each vehicle has its own MQTT 5 session (client id = its device id),
    as in a real fleet: thousands of connections, one asyncio client each (``mqtt_async``); over
    TLS, verifying the broker with ``ca_file``, when given; logged in as its device id with
    ``vehicle_password(password_key, ...)`` when a key is given."""
    import asyncio

    from simulators.mqtt_async import AsyncPublisher

    topics = list(dict.fromkeys(topic for _, topic, _, _ in blocks))
    limit = raise_open_files()
    if len(topics) + 64 > limit:
        raise RuntimeError(
            f"{len(topics)} sessions need {len(topics) + 64} open files; this process may open {limit}"
            " (raise the hard limit: `ulimit -Hn`, or LimitNOFILE in a systemd unit)"
        )
    st = ReleaseStats(worker)

    async def run() -> None:
        tls = ssl.create_default_context(cafile=ca_file) if ca_file else None

        def publisher(device_id: str) -> AsyncPublisher:
            login: dict[str, Any] = {}
            if password_key is not None:
                login = {
                    "username": device_id,
                    "password": vehicle_password(password_key, device_id).encode(),
                }
            return AsyncPublisher(host, port, device_id, keepalive_s=60, tls=tls, **login)

        pubs = {t: publisher(t.split("/")[1]) for t in topics}
        gate = asyncio.Semaphore(200)  # connections being opened at once

        async def connect(p: AsyncPublisher) -> None:
            async with gate:
                await p.connect(timeout=60)

        await asyncio.gather(*(connect(p) for p in pubs.values()))
        st.sessions = len(pubs)
        st.tls = ",".join(sorted({p.tls_version or "" for p in pubs.values()} - {""}))
        t0_ns = start(len(pubs))
        acked = [0]
        refused = [0]
        room = asyncio.Event()

        def on_ack(fut: asyncio.Future[int]) -> None:
            acked[0] += 1
            exc = fut.exception()
            # 16 = "no matching subscribers": a success code in MQTT 5, but nobody got the block.
            if exc is not None or fut.result() >= 0x80 or fut.result() == 0x10:
                refused[0] += 1
            room.set()

        tally = _Tally(st, t0_ns, paced, conn)
        for offset, topic, payload, nrec in blocks:
            due = t0_ns + offset
            if paced:
                ahead = due - time.time_ns()
                if ahead > 1_000_000:
                    await asyncio.sleep(ahead / 1e9)
            while tally.sent - acked[0] >= window:
                room.clear()
                await room.wait()
            pub = pubs[topic]
            while not pub.room:  # this vehicle's broker receive maximum: wait for its PUBACKs
                await asyncio.sleep(0.001)
            pub.publish_nowait(topic, payload).add_done_callback(on_ack)
            tally.published(due, nrec)
            if tally.sent % 64 == 0:
                await asyncio.sleep(0)  # let the sessions read their PUBACKs
        tally.all_published()
        deadline = time.monotonic() + 120
        while acked[0] < tally.sent and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        tally.finish(acked[0], refused[0])
        await asyncio.gather(*(p.close() for p in pubs.values()))

    asyncio.run(run())
    return st


class _Tally:
    """What a worker published, second by second, and how late against its schedule (both ways of
    releasing); progress goes to the parent four times a second."""

    def __init__(self, st: ReleaseStats, t0_ns: int, paced: bool, conn: Connection) -> None:
        self.st, self.t0_ns, self.paced, self.conn = st, t0_ns, paced, conn
        self.sent = 0
        self.lags: list[int] = []
        self.per_second: list[int] = []
        self.cpu0 = time.process_time()
        self.last_report = time.monotonic()

    def published(self, due_ns: int, records: int) -> None:
        now = time.time_ns()
        self.sent += 1
        self.st.records += records
        if self.paced:
            self.lags.append(now - due_ns)
        sec = max(0, (now - self.t0_ns) // 1_000_000_000)
        while len(self.per_second) <= sec:
            self.per_second.append(0)
        self.per_second[sec] += records
        if time.monotonic() - self.last_report > 0.25:
            self.conn.send(("released", self.st.records))
            self.last_report = time.monotonic()

    def all_published(self) -> None:
        self.st.seconds_published = (time.time_ns() - self.t0_ns) / 1e9

    def finish(self, acked: int, refused: int) -> None:
        """Every PUBACK is in (or the wait for them ended)."""
        st = self.st
        st.seconds = (time.time_ns() - self.t0_ns) / 1e9
        st.cpu_s = time.process_time() - self.cpu0
        st.blocks, st.acked, st.refused, st.per_second = self.sent, acked, refused, self.per_second
        if self.lags:
            lags = sorted(self.lags)
            st.lag_ms = {
                "p50": lags[len(lags) // 2] / 1e6,
                "p99": lags[min(len(lags) - 1, int(len(lags) * 0.99))] / 1e6,
                "max": lags[-1] / 1e6,
            }


def vehicle_password(key: bytes, device_id: str) -> str:
    """A vehicle's MQTT password in a load run with logins: derived from the run's ``key``, so the
    parent writes the broker's password file and the workers log in without passing 10,000 secrets."""
    return hmac.new(key, device_id.encode(), hashlib.sha256).hexdigest()


def _worker_main(spec: LoadSpec, conn: Connection) -> None:
    try:
        manifest, blocks = _generate(spec, conn)
        conn.send(("ready", manifest))
        while True:
            msg = conn.recv()
            if msg[0] == "quit":
                return
            _, host, port, paced, window, per_vehicle, ca_file, password_key = msg

            def start(sessions: int) -> int:
                """Report the sessions connected; the schedule's t0 from the parent."""
                conn.send(("connected", sessions))
                go = conn.recv()
                if go[0] != "go":
                    raise LoadError(f"expected go, got {go[0]}")
                return int(go[1])

            kw: dict[str, Any] = dict(
                host=host, port=port, start=start, paced=paced, window=window, conn=conn, ca_file=ca_file
            )
            if per_vehicle:
                stats = _release_sessions(spec.worker, blocks, password_key=password_key, **kw)
            else:
                stats = _release(spec.worker, blocks, **kw)
            conn.send(("done", stats))
    except Exception as exc:  # reported to the parent, which stops the run with it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


class LoadError(Exception):
    """A load worker failed; the message carries its error."""


class LoadFleet:
    """``procs`` worker processes sharing ``vehicles`` vehicles and ``rate`` records/s."""

    def __init__(
        self,
        *,
        vehicles: int,
        rate: float,
        duration: float,
        block_records: int,
        block_age_ms: int,
        procs: int,
        seed: int,
        work_dir: Path,
    ) -> None:
        if vehicles < procs or procs < 1:
            raise ValueError(
                f"need at least one vehicle per process ({vehicles} vehicles, {procs} processes)"
            )
        if rate <= 0 or duration <= 0:
            raise ValueError("rate and duration must be positive")
        self.epoch_ns = time.time_ns()
        ctx = mp.get_context("spawn")
        self.specs = []
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for w in range(procs):
            n = vehicles // procs + (1 if w < vehicles % procs else 0)
            spec = LoadSpec(
                worker=w,
                vehicles=n,
                rate=rate * n / vehicles,
                duration=duration,
                block_records=block_records,
                block_age_ms=block_age_ms,
                seed=seed,
                epoch_ns=self.epoch_ns,
                work_dir=str(work_dir),
            )
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(spec, child), name=f"load-{w}", daemon=True)
            p.start()
            self.specs.append(spec)
            self.conns.append(parent)
            self.procs.append(p)
        self.progress = [0] * procs
        self.sessions = [0] * procs  # MQTT sessions connected, per worker
        self.manifests: list[Manifest] = []
        self._done: dict[int, ReleaseStats] = {}  # workers that finished the current release

    @property
    def pids(self) -> list[int]:
        return [int(p.pid) for p in self.procs]

    def _recv(self, w: int, timeout: float) -> tuple[Any, ...] | None:
        c = self.conns[w]
        if not c.poll(timeout):
            if not self.procs[w].is_alive():
                raise LoadError(f"load worker {w} exited with code {self.procs[w].exitcode}")
            return None
        msg: tuple[Any, ...] = c.recv()
        if msg[0] == "error":
            raise LoadError(f"load worker {w}: {msg[1]}")
        return msg

    def wait_generated(self, on_progress: Any = None) -> list[Manifest]:
        got: dict[int, Manifest] = {}
        while len(got) < len(self.conns):
            for w in range(len(self.conns)):
                if w in got:
                    continue
                msg = self._recv(w, 0.05)
                if msg is None:
                    continue
                if msg[0] == "progress":
                    self.progress[w] = msg[1]
                elif msg[0] == "ready":
                    got[w] = msg[1]
                    self.progress[w] = msg[1].records
            if on_progress is not None:
                on_progress(sum(self.progress))
        self.manifests = [got[w] for w in range(len(self.conns))]
        return self.manifests

    def connect(
        self,
        *,
        host: str,
        port: int,
        paced: bool,
        window: int = 1000,
        per_vehicle: bool = False,
        ca_file: str | None = None,
        password_key: bytes | None = None,
    ) -> int:
        """Open the workers' MQTT sessions, one per worker or one per vehicle (``per_vehicle``: a real
        fleet's connection count), over TLS verified with ``ca_file`` when given; the number
        connected. With ``password_key`` each vehicle logs in as its device id with
        ``vehicle_password`` (per-vehicle sessions only: the broker's ACL lets a login publish
        under its own topics only). ``go`` then starts the release."""
        if password_key is not None and not per_vehicle:
            raise LoadError(
                "vehicle logins need a session per vehicle: a shared session may not publish for others"
            )
        self.progress = [0] * len(self.conns)
        self.sessions = [0] * len(self.conns)
        for c in self.conns:
            c.send(("release", host, port, paced, window, per_vehicle, ca_file, password_key))
        waiting = set(range(len(self.conns)))
        while waiting:
            for w in list(waiting):
                msg = self._recv(w, 0.05)
                if msg is not None and msg[0] == "connected":
                    self.sessions[w] = msg[1]
                    waiting.discard(w)
        return sum(self.sessions)

    def go(self, t0_ns: int) -> None:
        """Publish every block at ``t0_ns`` + its offset (``paced``), or as fast as acknowledged."""
        for c in self.conns:
            c.send(("go", t0_ns))

    def poll_release(self, timeout: float = 0.05) -> list[ReleaseStats] | None:
        """Collect progress; the stats of every worker once all are done, else None."""
        done = self._done
        for w in range(len(self.conns)):
            if w in done:
                continue
            msg = self._recv(w, timeout / len(self.conns))
            if msg is None:
                continue
            if msg[0] == "released":
                self.progress[w] = msg[1]
            elif msg[0] == "done":
                done[w] = msg[1]
                self.progress[w] = msg[1].records
        if len(done) == len(self.conns):
            self._done = {}
            return [done[w] for w in range(len(self.conns))]
        return None

    def close(self) -> None:
        for c, p in zip(self.conns, self.procs, strict=True):
            if p.is_alive():
                with contextlib.suppress(OSError):
                    c.send(("quit",))
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
