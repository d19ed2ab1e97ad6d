"""Collection policies: periodic sampling per signal group, and condition triggers that record a
high-rate window around an event, its first part from a pre-trigger ring buffer.

The ``Collector`` runs on the **source's clock**: time advances with the timestamps of the updates
it is fed (``feed``), or explicitly (``tick``), never with the wall clock. A simulator can therefore
run it faster than real time, and a real-time source just feeds it as data comes.

Sampling points are on a fixed grid per rate: multiples of ``round(1e9 / rate_hz)`` ns since the
epoch. A sample at ``t`` holds, per signal, the latest value stamped at or before ``t`` (sample and
hold), if it is at most ``max_signal_age_ms`` old (see ``SignalCache``). Within one ``feed``,
updates are applied in timestamp order; before the updates stamped ``T`` are applied, every sampling
point before ``T`` is taken, and after them, the points at ``T``. A trigger condition is evaluated
on every new value of its signal (edge-triggered, in VSS units), at that value's timestamp ``T0``.

When a trigger fires it emits a ``TriggerEvent`` and the ring-buffer samples of
``[T0 - pre_s, T0]`` (taken at the trigger's rate all along, but built into records only now), then
one sample per period until ``T0 + post_s``. ``window_start_ns`` / ``window_end_ns`` are the first
and last sampling points of that window (the first held by the ring buffer: less than ``pre_s`` right
after start). A rising edge during the cooldown or during the trigger's own open window is ignored
(counted in ``stats.suppressed``).

No two records of the same kind share a ``ts_ns``: a sampling point that a periodic group and a
trigger window (or two windows) both want is emitted once.

When no signal at all has been fresh for ``max_signal_age_ms`` (the source fell silent, or a gap in
a replay), the sampling points of that gap are skipped in one step and counted per group and
trigger in ``stats.gap_skipped``; they are not counted as missing signals.

Every record passes the privacy filter (if any) before it is returned: the agent signs what
``feed`` and ``tick`` return.

Source time is assumed to move forward. Updates older than the value already held for their signal
are ignored (``signal_stats.late``), and a ``tick`` or update far in the future moves the sampling
grid there: a source whose clock jumps back is only sampled again once it passes that point. A
``Collector`` is not thread-safe: call ``feed`` and ``tick`` from one thread.
"""

from __future__ import annotations

import operator
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Final, Literal

import msgspec
from msgspec import Meta

from edge_agent.inputs import SignalUpdate
from edge_agent.signals import (
    BY_PATH,
    NEVER,
    RecordKind,
    SignalCache,
    SignalStats,
    Snapshot,
    config_error,
)
from schemas.patterns import Name
from schemas.records import Record, TriggerEvent

if TYPE_CHECKING:
    from edge_agent.privacy import PrivacyFilter

Op = Literal["<", "<=", ">", ">="]
RateHz = Annotated[float, Meta(gt=0.0, le=1000.0)]
MAX_WINDOW_SAMPLES: Final = 10_000  # (pre_s + post_s) * rate_hz per trigger: memory on a Pi
_OPS: Final[dict[str, Callable[[float, float], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_TRIGGER_KIND: Final = "trigger"


class GroupConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Periodic sampling: one ``record`` every ``1 / rate_hz`` seconds of source time."""

    name: Name
    record: RecordKind
    rate_hz: RateHz


class TriggerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """When ``signal op threshold`` becomes true (VSS path and units), record ``record`` samples at
    ``rate_hz`` from ``pre_s`` before to ``post_s`` after, then ignore new edges for ``cooldown_s``."""

    name: Name
    signal: Annotated[str, Meta(min_length=1, max_length=128)]
    op: Op
    threshold: Annotated[float, Meta(ge=-1e12, le=1e12)]
    record: RecordKind = "driving"
    rate_hz: RateHz = 50.0
    pre_s: Annotated[float, Meta(ge=0.0, le=60.0)] = 2.0
    post_s: Annotated[float, Meta(ge=0.0, le=600.0)] = 3.0
    cooldown_s: Annotated[float, Meta(ge=0.0, le=86_400.0)] = 10.0

    def __post_init__(self) -> None:
        if self.signal not in BY_PATH:
            raise config_error(
                f"trigger {self.name!r}: unknown VSS signal {self.signal!r} "
                "(the signals of the catalog in edge_agent/signals.py)"
            )
        samples = (self.pre_s + self.post_s) * self.rate_hz
        if samples > MAX_WINDOW_SAMPLES:
            raise config_error(
                f"trigger {self.name!r}: (pre_s + post_s) * rate_hz = {samples:.0f} samples, "
                f"more than {MAX_WINDOW_SAMPLES}"
            )


def _default_groups() -> tuple[GroupConfig, ...]:
    return (
        GroupConfig(name="driving", record="driving", rate_hz=10.0),
        GroupConfig(name="battery", record="battery", rate_hz=1.0),
    )


class CollectConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[collect]`` in the agent's TOML."""

    max_signal_age_ms: Annotated[int, Meta(ge=1, le=3_600_000)] = 2000
    groups: tuple[GroupConfig, ...] = msgspec.field(default_factory=_default_groups)
    triggers: tuple[TriggerConfig, ...] = ()

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for name in [g.name for g in self.groups] + [t.name for t in self.triggers]:
            if name in seen:
                raise config_error(f"collect: the name {name!r} is used twice (groups and triggers)")
            seen.add(name)


@dataclass
class CollectStats:
    # records returned, per kind: driving, battery, trigger
    records: Counter[str] = field(default_factory=Counter)
    # samples not built because a required signal was missing or stale, per kind
    skipped: Counter[str] = field(default_factory=Counter)
    # sampling points skipped because no signal at all was fresh, per group / trigger
    gap_skipped: Counter[str] = field(default_factory=Counter)
    # events fired, per trigger
    triggers: Counter[str] = field(default_factory=Counter)
    # rising edges ignored (cooldown, open window), per trigger
    suppressed: Counter[str] = field(default_factory=Counter)


def _period_ns(rate_hz: float) -> int:
    return max(1, round(1e9 / rate_hz))


def _ceil_grid(t: int, period: int) -> int:
    return -(-t // period) * period


class _Schedule:
    """A sampling grid: a periodic group, or a trigger (ring buffer and window)."""

    __slots__ = ("kind", "name", "next_due", "period")

    def __init__(self, name: str, kind: RecordKind, rate_hz: float) -> None:
        self.name, self.kind = name, kind
        self.period = _period_ns(rate_hz)
        self.next_due = -1


class _Trigger(_Schedule):
    __slots__ = (
        "cfg",
        "cooldown_ns",
        "cooldown_until",
        "factor",
        "index",
        "last_stamp",
        "post_ns",
        "pre_ns",
        "ring",
        "test",
        "was_true",
        "window_end",
    )

    def __init__(self, cfg: TriggerConfig, cache: SignalCache) -> None:
        super().__init__(cfg.name, cfg.record, cfg.rate_hz)
        self.cfg = cfg
        self.index = cache.index(cfg.signal)
        self.factor = BY_PATH[cfg.signal].factor
        self.test = _OPS[cfg.op]
        self.pre_ns = round(cfg.pre_s * 1e9)
        self.post_ns = round(cfg.post_s * 1e9)
        self.cooldown_ns = round(cfg.cooldown_s * 1e9)
        # Snapshots of [now - pre_s, now], plus a little slack for a late trigger (``tick`` ahead).
        self.ring: deque[tuple[int, Snapshot]] | None = (
            deque(maxlen=self.pre_ns // self.period + 3) if self.pre_ns > 0 else None
        )
        self.last_stamp = NEVER
        self.was_true = False
        self.window_end = -1
        self.cooldown_until = -1


class Collector:
    """Turns signal updates into records per ``CollectConfig``; see the module docstring.

    ``feed(updates)`` and ``tick(now_ns)`` return the records that became due, each through the
    privacy filter. Counters: ``stats`` (records, skips, triggers) and ``signal_stats`` (the
    cache's input and missing-signal counters).
    """

    def __init__(self, cfg: CollectConfig | None = None, privacy: PrivacyFilter | None = None) -> None:
        cfg = CollectConfig() if cfg is None else cfg
        try:  # the struct's Meta bounds are checked when decoding, not by its constructor
            cfg = msgspec.convert(msgspec.to_builtins(cfg), CollectConfig)
        except msgspec.ValidationError as exc:
            raise config_error(f"collect: {exc}") from exc
        self.cfg = cfg
        self.cache = SignalCache(cfg.max_signal_age_ms * 1_000_000)
        self.stats = CollectStats()
        self._filter: Callable[[Record], Record] = privacy.apply if privacy is not None else _identity
        self._groups = [_Schedule(g.name, g.record, g.rate_hz) for g in cfg.groups]
        self._triggers = [_Trigger(t, self.cache) for t in cfg.triggers]
        self._schedules: list[_Schedule] = [*self._groups, *self._triggers]
        self._now = -1  # source time up to which sampling points are taken
        self._last_data = -1  # newest timestamp of an accepted update; -1: none yet
        # Timestamps emitted per kind, kept as long as a ring buffer can reach back.
        self._seen: dict[str, set[int]] = {"driving": set(), "battery": set()}
        self._seen_order: dict[str, deque[int]] = {"driving": deque(), "battery": deque()}
        self._horizon = max([t.pre_ns + 3 * t.period for t in self._triggers], default=0) + 10**10

    @property
    def signal_stats(self) -> SignalStats:
        return self.cache.stats

    @property
    def now_ns(self) -> int:
        """Source time up to which sampling points have been taken (-1 before any data)."""
        return self._now

    # -- input --------------------------------------------------------------------

    def feed(self, updates: Sequence[SignalUpdate]) -> list[Record]:
        """Apply updates (any order inside the batch) and return the records that became due."""
        out: list[Record] = []
        if not updates:
            return out
        try:
            stamps = [u[2] for u in updates]
            lo, hi = min(stamps), max(stamps)
            single = type(lo) is int and lo == hi
        except (TypeError, IndexError, KeyError, ValueError):
            single = False
        if single:
            self._run(hi, updates, out)
            return out
        runs: dict[int, list[SignalUpdate]] = {}
        for u in updates:
            ts = u[2] if type(u) is tuple and len(u) == 3 else None
            if type(ts) is not int or ts < 0:
                self.cache.stats.bad_update += 1
                continue
            runs.setdefault(ts, []).append(u)
        for ts in sorted(runs):
            self._run(ts, runs[ts], out)
        return out

    def tick(self, now_ns: int) -> list[Record]:
        """Take the sampling points up to ``now_ns`` (source time) without new data."""
        out: list[Record] = []
        self._advance(now_ns, out)
        return out

    def _run(self, ts: int, updates: Sequence[SignalUpdate], out: list[Record]) -> None:
        self._advance(ts - 1, out)
        if self.cache.update(updates) and ts > self._last_data:
            if self._last_data < 0:
                for s in self._schedules:
                    s.next_due = _ceil_grid(ts, s.period)
            self._last_data = ts
        if self._triggers:
            self._check_triggers(out)
        self._advance(ts, out)

    # -- sampling -------------------------------------------------------------------

    def _advance(self, limit: int, out: list[Record]) -> None:
        schedules = self._schedules
        if limit <= self._now or self._last_data < 0 or not schedules:
            self._now = max(self._now, limit)
            return
        live_until = self._last_data + self.cache.max_age_ns
        stop = min(limit, live_until)
        while True:
            t = min([s.next_due for s in schedules])
            if t > stop:
                break
            for s in schedules:
                if s.next_due == t:
                    if type(s) is _Trigger:
                        self._trigger_point(s, t, out)
                    else:
                        self._emit(s.kind, t, None, out)
                    s.next_due = t + s.period
        if limit > live_until:  # no signal is fresh any more: skip the gap in one step
            for s in schedules:
                if s.next_due <= limit:
                    n = (limit - s.next_due) // s.period + 1
                    self.stats.gap_skipped[s.name] += n
                    s.next_due += n * s.period
        self._now = limit

    def _trigger_point(self, tr: _Trigger, t: int, out: list[Record]) -> None:
        if tr.ring is not None:
            tr.ring.append((t, self.cache.snapshot()))
        if t <= tr.window_end:
            self._emit(tr.kind, t, None, out)

    def _emit(self, kind: RecordKind, t: int, snapshot: Snapshot | None, out: list[Record]) -> None:
        seen = self._seen[kind]
        if t in seen:
            return
        seen.add(t)
        order = self._seen_order[kind]
        order.append(t)
        while order[0] < t - self._horizon:
            seen.discard(order.popleft())
        rec = self.cache.build(kind, t, snapshot)
        if rec is None:
            self.stats.skipped[kind] += 1
            return
        self.stats.records[kind] += 1
        out.append(self._filter(rec))

    # -- triggers -------------------------------------------------------------------

    def _check_triggers(self, out: list[Record]) -> None:
        values, stamps = self.cache.values, self.cache.stamps
        for tr in self._triggers:
            t0 = stamps[tr.index]
            if t0 == tr.last_stamp:
                continue
            tr.last_stamp = t0
            value = values[tr.index]
            assert value is not None
            vss = float(value) / tr.factor
            now_true = tr.test(vss, tr.cfg.threshold)
            if now_true and not tr.was_true:
                if t0 < tr.cooldown_until or t0 <= tr.window_end:
                    self.stats.suppressed[tr.name] += 1
                else:
                    self._fire(tr, t0, vss, out)
            tr.was_true = now_true

    def _fire(self, tr: _Trigger, t0: int, vss: float, out: list[Record]) -> None:
        start = t0 - tr.pre_ns
        end = (t0 + tr.post_ns) // tr.period * tr.period
        pre = [(t, snap) for t, snap in tr.ring if start <= t <= end] if tr.ring is not None else []
        if pre:
            window_start = pre[0][0]
        else:
            window_start = _ceil_grid(t0, tr.period)
            if window_start > end:  # no sampling point in the window at all
                window_start = end = t0
        event = TriggerEvent(
            ts_ns=t0,
            name=tr.name,
            signal=tr.cfg.signal,
            value=min(1e12, max(-1e12, vss)),
            window_start_ns=window_start,
            window_end_ns=end,
            rate_hz=tr.cfg.rate_hz,
        )
        self.stats.triggers[tr.name] += 1
        self.stats.records[_TRIGGER_KIND] += 1
        out.append(self._filter(event))
        for t, snap in pre:
            self._emit(tr.kind, t, snap, out)
        tr.window_end = end
        tr.cooldown_until = t0 + tr.cooldown_ns


def _identity(record: Record) -> Record:
    return record
