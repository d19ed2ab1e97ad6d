"""CAN input: frames from a python-can bus, decoded with a DBC file into VSS signal updates.

Which signal feeds which VSS path comes from the DBC itself, in a custom signal attribute::

    BA_DEF_ SG_ "VSSPath" STRING ;
    BA_ "VSSPath" SG_ 200 VehicleSpeed "Vehicle.Speed";

and the DBC's physical values are in the VSS unit of that path (km/h for ``Vehicle.Speed``).
``CanConfig.signals`` overrides or completes that mapping for DBCs without the attribute
(DBC signal name, or ``Message.Signal``, to VSS path; an empty path drops a signal).
``deploy/edge/ev.dbc`` is a sample.

Value types follow the DBC: a one-bit unsigned signal with scale 1 and offset 0 is a ``bool``;
an IEEE float signal (``SIG_VALTYPE_``) is a ``float``; an integer signal whose scale and offset
are integers is an ``int`` (choices decode to their number, never to their label); anything else
is a ``float`` rounded to the decimals of its scale and offset (so 0.4 × 3 is 1.2, not
1.2000000000000002).

Timestamps are the frame's receive time from the bus (SocketCAN: the kernel's), in ns since the
Unix epoch. A frame without a timestamp, or with one that cannot be wall-clock time (before
2000: some interfaces count from their own start), gets the host's clock.

Bad input never raises: unknown identifiers, frames of the wrong length, frames that do not
decode and bus errors are counted in ``CanSource.stats`` for the agent to report.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import can
import cantools
from cantools.database.can import Database, Message, Signal

from common.config import ConfigError
from edge_agent.inputs import SignalUpdate
from edge_agent.sources.can_config import CanConfig

__all__ = ["CanConfig", "CanSource", "CanStats", "encode_frames", "load_database"]

VSS_ATTRIBUTE = "VSSPath"
# `read` returns after this many frames even if more are waiting, so that a flooded bus cannot
# keep it from returning (a saturated 1 Mbit/s classic CAN bus carries ~8k frames/s).
MAX_FRAMES_PER_READ = 4096
# Frame timestamps before this (2000-01-01T00:00:00Z) are not wall-clock time.
_MIN_EPOCH_S = 946_684_800.0


# An empty path in `CanConfig.signals` drops a signal that the DBC maps.
@dataclass(slots=True)
class CanStats:
    """Counters since the source was opened. ``frames == decoded + unknown_id + errors``."""

    frames: int = 0  # frames received
    decoded: int = 0  # frames of a known identifier that decoded
    unknown_id: int = 0  # frames whose identifier is not in the DBC
    errors: int = 0  # error frames, remote frames, wrong length, undecodable payload
    unmapped: int = 0  # decoded signal values dropped because the signal has no VSS path
    bus_errors: int = 0  # failed receive calls (interface down, bus off, ...)
    last_error: str = ""  # the most recent error or bus error, for the agent's report


@dataclass(frozen=True, slots=True)
class _Spec:
    """How one DBC signal becomes a signal update."""

    path: str
    kind: type  # bool, int or float
    ndigits: int | None  # decimals kept for floats; None: IEEE float signals, kept whole


@dataclass(frozen=True, slots=True)
class _Plan:
    """One DBC message and its mapped signals."""

    message: Message
    specs: dict[str, _Spec]


def _decimals(x: float) -> int:
    exponent = Decimal(repr(float(x))).as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _spec(signal: Signal, path: str) -> _Spec:
    scale, offset = signal.scale, signal.offset
    if signal.length == 1 and not signal.is_signed and scale == 1 and offset == 0:
        return _Spec(path, bool, 0)
    if signal.is_float:
        return _Spec(path, float, None)
    if float(scale).is_integer() and float(offset).is_integer():
        return _Spec(path, int, 0)
    return _Spec(path, float, max(_decimals(scale), _decimals(offset)))


def _attribute_path(signal: Signal) -> str:
    dbc = signal.dbc
    attribute = dbc.attributes.get(VSS_ATTRIBUTE) if dbc is not None else None
    value = attribute.value if attribute is not None else ""
    return value if isinstance(value, str) else ""


def load_database(path: str | Path) -> Database:
    """Load a signal database, mapping every failure to ``ConfigError``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"can.dbc_path: {p} does not exist or is not a file")
    try:
        db = cantools.database.load_file(p, strict=True)
    except (OSError, UnicodeDecodeError, ValueError, cantools.database.errors.Error) as exc:
        raise ConfigError(f"can.dbc_path: {p} is not a valid signal database: {exc}") from exc
    if not isinstance(db, Database):
        raise ConfigError(f"can.dbc_path: {p} is a diagnostics database, not a CAN signal database")
    return db


def _plans(db: Database, overrides: Mapping[str, str], source: str) -> dict[tuple[int, bool], _Plan]:
    """The mapped signals of every message, keyed by (frame id, extended)."""
    known = {s.name for m in db.messages for s in m.signals}
    known |= {f"{m.name}.{s.name}" for m in db.messages for s in m.signals}
    missing = sorted(set(overrides) - known)
    if missing:
        raise ConfigError(f"can.signals: no signal {', '.join(map(repr, missing))} in {source}")
    plans: dict[tuple[int, bool], _Plan] = {}
    for message in db.messages:
        specs: dict[str, _Spec] = {}
        for signal in message.signals:
            qualified = f"{message.name}.{signal.name}"
            if qualified in overrides:
                path = overrides[qualified]
            elif signal.name in overrides:
                path = overrides[signal.name]
            else:
                path = _attribute_path(signal)
            if path:
                specs[signal.name] = _spec(signal, path)
        plans[(message.frame_id, message.is_extended_frame)] = _Plan(message, specs)
    return plans


def _frame_ts_ns(timestamp: float) -> int:
    if timestamp >= _MIN_EPOCH_S:
        # Not round(timestamp * 1e9): that product is past 2**53 and loses up to 128 ns.
        seconds = int(timestamp)
        return seconds * 1_000_000_000 + round((timestamp - seconds) * 1e9)
    return time.time_ns()


class CanSource:
    """A ``SignalSource`` over a CAN bus. A bus passed in stays the caller's to shut down."""

    def __init__(self, cfg: CanConfig, bus: can.BusABC | None = None) -> None:
        self.cfg = cfg
        self.db = load_database(cfg.dbc_path)
        self._plans = _plans(self.db, cfg.signals, cfg.dbc_path)
        self.stats = CanStats()
        self._owns_bus = bus is None
        self._bus = bus if bus is not None else _open_bus(cfg)

    @property
    def mapping(self) -> dict[str, str]:
        """``Message.Signal`` -> VSS path, for every mapped signal."""
        return {
            f"{plan.message.name}.{name}": spec.path
            for plan in self._plans.values()
            for name, spec in plan.specs.items()
        }

    def read(self, timeout: float) -> list[SignalUpdate]:
        """Wait up to ``timeout`` s for a frame, then take the frames already waiting, and decode them."""
        out: list[SignalUpdate] = []
        deadline = time.monotonic() + max(timeout, 0.0)
        wait = max(timeout, 0.0)
        for _ in range(MAX_FRAMES_PER_READ):
            try:
                frame = self._bus.recv(timeout=wait)
            except can.CanError as exc:
                self.stats.bus_errors += 1
                self.stats.last_error = f"receive on {self.cfg.interface}:{self.cfg.channel}: {exc}"
                if not out:  # do not spin on a bus that fails at once: spend the rest of the wait
                    time.sleep(max(0.0, deadline - time.monotonic()))
                break
            if frame is None:
                break
            self._decode(frame, out)
            wait = 0.0
        return out

    def _decode(self, frame: can.Message, out: list[SignalUpdate]) -> None:
        stats = self.stats
        stats.frames += 1
        if frame.is_error_frame or frame.is_remote_frame:
            stats.errors += 1
            stats.last_error = (
                f"{'error' if frame.is_error_frame else 'remote'} frame 0x{frame.arbitration_id:x}"
            )
            return
        plan = self._plans.get((frame.arbitration_id, frame.is_extended_id))
        if plan is None:
            stats.unknown_id += 1
            return
        message = plan.message
        data = bytes(frame.data)
        if len(data) != message.length:
            stats.errors += 1
            stats.last_error = f"{message.name}: {len(data)} bytes, the DBC says {message.length}"
            return
        try:
            values = message.decode(data, decode_choices=False, allow_truncated=False, allow_excess=False)
        except Exception as exc:  # hostile payloads: the decoder's failure modes are not a documented set
            stats.errors += 1
            stats.last_error = f"{message.name}: {exc}"
            return
        if not isinstance(values, dict):  # a container message: not supported
            stats.errors += 1
            stats.last_error = f"{message.name}: container messages are not supported"
            return
        stats.decoded += 1
        ts_ns = _frame_ts_ns(frame.timestamp)
        specs = plan.specs
        # decode_choices=False: numbers only, never NamedSignalValue or str.
        for name, value in cast("dict[str, int | float]", values).items():
            spec = specs.get(name)
            if spec is None:
                stats.unmapped += 1
            elif spec.kind is float:
                v = float(value)
                out.append((spec.path, v if spec.ndigits is None else round(v, spec.ndigits), ts_ns))
            elif spec.kind is bool:
                out.append((spec.path, bool(value), ts_ns))
            else:
                out.append((spec.path, int(value), ts_ns))

    def close(self) -> None:
        if self._owns_bus:
            self._bus.shutdown()


def _open_bus(cfg: CanConfig) -> can.BusABC:
    kwargs: dict[str, Any] = {}
    if cfg.bitrate:
        kwargs["bitrate"] = cfg.bitrate
    try:
        return can.Bus(interface=cfg.interface, channel=cfg.channel, **kwargs)
    except can.CanInterfaceNotImplementedError as exc:
        raise ConfigError(
            f"can.interface: {cfg.interface!r} is not a usable python-can interface: {exc}"
        ) from exc
    except (can.CanError, OSError, ValueError, ImportError) as exc:
        raise ConfigError(
            f"can.channel: cannot open {cfg.channel!r} on interface {cfg.interface!r}: {exc}"
        ) from exc


def _default(signal: Signal) -> float:
    lo = signal.minimum if signal.minimum is not None else float("-inf")
    hi = signal.maximum if signal.maximum is not None else float("inf")
    if lo <= 0 <= hi:
        return 0
    return lo if signal.minimum is not None else hi


def encode_frames(
    db_or_source: Database | CanSource,
    values: Mapping[str, float | int | bool],
    ts: float | None = None,
) -> list[can.Message]:
    """Frames carrying ``values`` (VSS path -> value in VSS units), for tests and benchmarks.

    One frame per message that carries at least one of the paths; its other signals take 0, or
    their minimum when 0 is out of range. ``ts`` is the frames' timestamp in seconds since the
    epoch (``None``: no timestamp). The mapping is the source's (overrides included) or, for a
    bare database, its VSSPath attributes. Raises ``KeyError`` for a path nothing maps and
    cantools' ``EncodeError`` for a value out of the signal's range.
    """
    if isinstance(db_or_source, CanSource):
        plans = db_or_source._plans
    else:
        plans = _plans(db_or_source, {}, "the database")
    by_message: dict[tuple[int, bool], dict[str, float | int]] = {}
    unmapped = set(values)
    for key, plan in plans.items():
        for name, spec in plan.specs.items():
            if spec.path in values:
                by_message.setdefault(key, {})[name] = (
                    int(values[spec.path]) if spec.kind is bool else values[spec.path]
                )
                unmapped.discard(spec.path)
    if unmapped:
        raise KeyError(f"no signal maps {', '.join(sorted(unmapped))}")
    frames = []
    for key, given in by_message.items():
        message = plans[key].message
        data: dict[str, float | int] = {s.name: _default(s) for s in message.signals}
        data.update(given)
        frames.append(
            can.Message(
                arbitration_id=message.frame_id,
                is_extended_id=message.is_extended_frame,
                is_fd=message.is_fd,
                data=message.encode(data, strict=True),
                timestamp=ts if ts is not None else 0.0,
            )
        )
    return frames
