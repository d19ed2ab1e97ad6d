"""`telematics status`: one screen for an operator. Are the services the config names reachable, is
each role running, how far behind is the consumer per partition (the broker's high-water mark minus
the position stored with the last batch: never negative), are batches waiting for their anchor, how
long does anchoring take, and what was rejected last."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingest.storage.store import Store


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def end_offsets(bootstrap: str, topic: str, timeout_s: float = 5.0) -> dict[int, int] | None:
    """The high-water mark of each partition of ``topic``; None when the broker does not answer."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    async def go() -> dict[int, int]:
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
        await c.start()
        try:
            parts = c.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            got = await c.end_offsets(tps) if tps else {}
            return {tp.partition: int(o) for tp, o in got.items()}
        finally:
            await c.stop()

    try:
        return asyncio.run(asyncio.wait_for(go(), timeout_s))
    except (KafkaError, OSError, TimeoutError):
        return None


def alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stack_processes(state_dir: Path) -> dict[str, dict[str, Any]]:
    """The processes `telematics stack up` started, from its pid files in ``state_dir``: name ->
    {pid, alive, log}. Empty when the services run elsewhere (compose, a managed service)."""
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(state_dir.glob("*.pid")):
        try:
            text = f.read_text().strip()
            pid = int(json.loads(text)["pid"]) if text.startswith("{") else int(text)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out[f.stem] = {"pid": pid, "alive": alive(pid), "log": str(state_dir / f"{f.stem}.log")}
    return out


def store_view(store: Store, topic: str, high: dict[int, int] | None) -> dict[str, Any]:
    """Lag per partition, batches waiting for an anchor, anchor timing, the last rejections."""
    pos = store.positions(topic)
    lag = None
    if high is not None:
        lag = {p: max(0, h - pos.get((topic, p), 0)) for p, h in sorted(high.items())}
    con = store.con
    pending = store.unanchored()
    timing = con.execute(
        "SELECT quantile_cont(d, 0.5), max(d), count(*) FROM (SELECT (epoch_ns(a.anchored_at)"
        " - epoch_ns(b.created_at)) / 1e6 AS d FROM batches b JOIN anchors a USING (batch_no)"
        " ORDER BY b.batch_no DESC LIMIT 100)"
    ).fetchone()
    last = con.execute(
        "SELECT epoch_ns(received_at), reason, coalesce(device_id, '-'), detail FROM rejections"
        " ORDER BY received_at DESC LIMIT 5"
    ).fetchall()
    return {
        "counts": store.counts(),
        "lag": lag,
        "positions": {p: o for (_t, p), o in sorted(pos.items())},
        "pending_anchor": [n for n, _r, _c in pending],
        "anchor_ms": None
        if not timing or not timing[2]
        else {
            "p50": round(float(timing[0]), 1),
            "max": round(float(timing[1]), 1),
            "batches": int(timing[2]),
        },
        "last_rejections": [
            {"at_ns": int(t), "reason": r, "device_id": d, "detail": str(x)[:160]} for t, r, d, x in last
        ],
    }


def render(view: dict[str, Any]) -> str:
    """The one screen."""
    out = []
    out.append("services")
    for name, (where, up) in view["services"].items():
        out.append(f"  {name:<12} {where:<28} {'up' if up else 'DOWN'}")
    stack = view.get("stack") or {}
    if stack:
        out.append(
            "stack  "
            + ", ".join(
                f"{name} pid {p['pid']}" + ("" if p["alive"] else " GONE") for name, p in stack.items()
            )
            + "  (`telematics stack status` for logs)"
        )
    out.append("roles")
    for name, st in view["roles"].items():
        if st is None:
            out.append(f"  {name:<12} not started (no status file)")
            continue
        state = "running" if st.get("alive") else "NOT RUNNING (stale status file)"
        extra = ""
        if st.get("partitions") is not None:
            extra = f", partitions {st['partitions']}"
        if st.get("stalled"):
            extra += f", HELD: {st['stalled'].get('error', '')[:100]}"
        out.append(f"  {name:<12} pid {st.get('pid')} {state}{extra}")
    s = view.get("store")
    if s is None:
        out.append(f"store  unreachable: {view.get('store_error', '')}")
        return "\n".join(out)
    c = s["counts"]
    out.append(
        f"store  {c['records']:,} records, {c['blocks']:,} blocks, {c['batches']:,} batches"
        f" ({c['anchored']:,} anchored), {c['rejections']:,} rejections, {c['duplicates']:,} duplicates"
    )
    if s["lag"] is None:
        out.append("lag    the Kafka-protocol broker does not answer")
    else:
        total = sum(s["lag"].values())
        per = ", ".join(f"{p}: {n:,}" for p, n in s["lag"].items())
        out.append(f"lag    {total:,} messages behind ({per})")
    pend = s["pending_anchor"]
    out.append(
        f"anchor {len(pend)} batch(es) waiting"
        + (f" ({', '.join(map(str, pend[:10]))})" if pend else "")
        + (
            f"; batch built -> anchored p50 {s['anchor_ms']['p50']:,} ms, max {s['anchor_ms']['max']:,} ms"
            f" (last {s['anchor_ms']['batches']} batches)"
            if s["anchor_ms"]
            else ""
        )
    )
    if s["last_rejections"]:
        out.append("last rejections")
        for r in s["last_rejections"]:
            when = datetime.fromtimestamp(r["at_ns"] / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")
            out.append(f"  {when}  {r['reason']:<16} {r['device_id'][:32]:<32} {r['detail'][:70]}")
    out.append(f"(at {datetime.fromtimestamp(time.time(), UTC).strftime('%Y-%m-%d %H:%M:%S')} UTC)")
    return "\n".join(out)
