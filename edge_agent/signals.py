"""The signal catalog and the signal cache: VSS signals in, ``DrivingSample`` / ``BatterySample`` out.

Sources (CAN, GNSS, the simulator) deliver ``SignalUpdate`` tuples ``(VSS path, value, ts_ns)`` with
values in **VSS units** (km/h, deg/s, kWh, Ah, ...). The catalog maps every record field (except
``ts_ns``) to its VSS path and to the factor that turns a VSS value into ours (schemas/README.md,
"Mapping to COVESA VSS"). ``charge_power_w`` has no VSS signal; it is read from the project extension
``Vehicle.Powertrain.TractionBattery.Charging.ChargePower`` (W).

The cache keeps the latest value (in our units) and its timestamp per signal. Updating it is a dict
lookup, a type check, one multiplication and two list assignments per update; records are built only
when a collector asks for one.

Bad input never raises: an unknown path, a value of the wrong type, a non-finite value, a value
outside the record field's accepted range, a malformed tuple or a bad timestamp is counted in
``SignalCache.stats`` and ignored, and the cache keeps the previous value (which then goes stale).
Out-of-range values are **rejected, not clamped**: clamping would manufacture data (a CAN "not
available" pedal of 255 would become a full 100 % pedal). Values that miss a bound only by floating
point roundoff of the unit conversion (relative 1e-9) are snapped onto the bound. So the cache never
holds a value that would make the ingest reject a record as ``bad_record``.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple

import msgspec

from edge_agent.inputs import SignalUpdate as SignalUpdate  # re-exported: the input contract
from schemas.records import MAX_TIMESTAMP_NS, BatterySample, DrivingSample, Record

Value = float | int | bool
RecordKind = Literal["driving", "battery"]
ValueType = Literal["float", "int", "bool"]
Sample = DrivingSample | BatterySample
# A frozen copy of the cache: values (ours, ``None`` never received) and their timestamps.
Snapshot = tuple[tuple[Value | None, ...], tuple[int, ...]]

TB: Final = "Vehicle.Powertrain.TractionBattery"
CHARGE_POWER_PATH: Final = f"{TB}.Charging.ChargePower"  # project extension, W
_DEG: Final = math.pi / 180.0
MAX_TS_NS: Final = MAX_TIMESTAMP_NS  # what a record can carry (schemas/records.py)
NEVER: Final = -(2**63)  # timestamp of a signal never received
_MAX_COUNTED_UNKNOWN: Final = 256  # distinct unknown paths counted by name; the rest as "<other>"


class Signal(NamedTuple):
    """One catalog entry: a record field and the VSS signal it comes from."""

    path: str  # VSS path
    field: str  # record field
    kind: RecordKind  # the record it belongs to
    factor: float  # VSS value x factor = our value
    type: ValueType  # our type
    optional: bool  # None without a GNSS fix
    vss_integer: bool  # VSS has an integer type: ours -> VSS rounds
    lo: float  # accepted range of the record field (ours), inclusive
    hi: float


# (VSS path, field, factor, VSS integer type)
_DRIVING: Final[tuple[tuple[str, str, float, bool], ...]] = (
    ("Vehicle.Speed", "speed_mps", 1.0 / 3.6, False),
    ("Vehicle.Acceleration.Longitudinal", "accel_long_mps2", 1.0, False),
    ("Vehicle.Acceleration.Lateral", "accel_lat_mps2", 1.0, False),
    ("Vehicle.Acceleration.Vertical", "accel_vert_mps2", 1.0, False),
    ("Vehicle.AngularVelocity.Yaw", "yaw_rate_radps", _DEG, False),
    ("Vehicle.CurrentLocation.Latitude", "latitude_deg", 1.0, False),
    ("Vehicle.CurrentLocation.Longitude", "longitude_deg", 1.0, False),
    ("Vehicle.CurrentLocation.Altitude", "altitude_m", 1.0, False),
    ("Vehicle.CurrentLocation.Heading", "heading_deg", 1.0, False),
    ("Vehicle.CurrentLocation.HorizontalAccuracy", "h_accuracy_m", 1.0, False),
    ("Vehicle.Chassis.Accelerator.PedalPosition", "accel_pedal_pct", 1.0, True),
    ("Vehicle.Chassis.Brake.PedalPosition", "brake_pedal_pct", 1.0, True),
    ("Vehicle.Chassis.SteeringWheel.Angle", "steering_angle_rad", _DEG, True),
    ("Vehicle.Powertrain.Transmission.CurrentGear", "gear", 1.0, True),
    ("Vehicle.TraveledDistance", "odometer_m", 1000.0, False),
)
_BATTERY: Final[tuple[tuple[str, str, float, bool], ...]] = (
    (f"{TB}.StateOfCharge.Current", "soc_pct", 1.0, False),
    (f"{TB}.StateOfHealth", "soh_pct", 1.0, False),
    (f"{TB}.CurrentVoltage", "pack_voltage_v", 1.0, False),
    (f"{TB}.CurrentCurrent", "pack_current_a", 1.0, False),
    (f"{TB}.CurrentPower", "power_w", 1.0, False),
    (f"{TB}.Temperature.Min", "temp_min_c", 1.0, False),
    (f"{TB}.Temperature.Max", "temp_max_c", 1.0, False),
    (f"{TB}.Temperature.Average", "temp_avg_c", 1.0, False),
    (f"{TB}.CellVoltage.Min", "cell_voltage_min_v", 1.0, False),
    (f"{TB}.CellVoltage.Max", "cell_voltage_max_v", 1.0, False),
    (f"{TB}.AccumulatedChargedEnergy", "charged_energy_j", 3.6e6, False),
    (f"{TB}.AccumulatedConsumedEnergy", "consumed_energy_j", 3.6e6, False),
    (f"{TB}.AccumulatedChargedThroughput", "charged_throughput_c", 3600.0, False),
    (f"{TB}.AccumulatedConsumedThroughput", "consumed_throughput_c", 3600.0, False),
    (f"{TB}.Charging.IsCharging", "is_charging", 1.0, False),
    (CHARGE_POWER_PATH, "charge_power_w", 1.0, False),
)
_GNSS_FIELDS: Final = ("latitude_deg", "longitude_deg", "altitude_m", "heading_deg", "h_accuracy_m")


def _field_info(cls: type[Sample], name: str) -> tuple[ValueType, bool, float, float]:
    """Type, optionality and bounds of a record field, read from its msgspec ``Meta``."""
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    (f,) = [f for f in info.fields if f.name == name]
    t: Any = f.type
    optional = False
    if isinstance(t, msgspec.inspect.UnionType):
        optional = any(isinstance(u, msgspec.inspect.NoneType) for u in t.types)
        (t,) = [u for u in t.types if not isinstance(u, msgspec.inspect.NoneType)]
    if isinstance(t, msgspec.inspect.BoolType):
        return "bool", optional, 0.0, 1.0
    kind: ValueType = "int" if isinstance(t, msgspec.inspect.IntType) else "float"
    assert isinstance(t, msgspec.inspect.IntType | msgspec.inspect.FloatType) and t.ge is not None
    assert t.le is not None
    return kind, optional, float(t.ge), float(t.le)


def _catalog() -> tuple[Signal, ...]:
    out: list[Signal] = []
    for kind, cls, rows in (("driving", DrivingSample, _DRIVING), ("battery", BatterySample, _BATTERY)):
        for path, name, factor, vss_integer in rows:
            typ, optional, lo, hi = _field_info(cls, name)
            out.append(Signal(path, name, kind, factor, typ, optional, vss_integer, lo, hi))  # type: ignore[arg-type]
    return tuple(out)


CATALOG: Final[tuple[Signal, ...]] = _catalog()
BY_PATH: Final[dict[str, Signal]] = {s.path: s for s in CATALOG}
BY_FIELD: Final[dict[tuple[RecordKind, str], Signal]] = {(s.kind, s.field): s for s in CATALOG}
RECORD_TYPES: Final[dict[RecordKind, type[Sample]]] = {"driving": DrivingSample, "battery": BatterySample}
assert [s.field for s in CATALOG if s.kind == "driving"] == list(DrivingSample.__struct_fields__[1:])
assert [s.field for s in CATALOG if s.kind == "battery"] == list(BatterySample.__struct_fields__[1:])
assert {s.field for s in CATALOG if s.optional} == set(_GNSS_FIELDS)


@functools.cache
def _config_error_type() -> type[Exception]:
    # Imported late: edge_agent.config embeds the collect and privacy configs, which use this.
    from common.config import ConfigError

    class SignalConfigError(ConfigError, ValueError):
        """A ``ConfigError``; also a ``ValueError`` so msgspec reports the key path while decoding."""

    return SignalConfigError


def config_error(message: str) -> Exception:
    """A ``ConfigError`` to raise from a config struct's ``__post_init__``: msgspec turns it into a
    ``ValidationError`` with the key path (``load_toml`` then raises ``ConfigError`` naming the file),
    and constructing the struct directly raises it as a ``ConfigError``."""
    return _config_error_type()(message)


def _bounded_key(counter: Counter[str], key: object) -> str:
    k = key[:128] if isinstance(key, str) else "<not a string>"
    return k if k in counter or len(counter) < _MAX_COUNTED_UNKNOWN else "<other>"


@dataclass
class SignalStats:
    """What the cache did with its input, and why records could not be built."""

    accepted: int = 0
    unknown: Counter[str] = field(default_factory=Counter)  # per path not in the catalog
    bad_value: Counter[str] = field(default_factory=Counter)  # wrong type, NaN or infinite, per path
    out_of_range: Counter[str] = field(default_factory=Counter)  # outside the record field's range
    late: Counter[str] = field(default_factory=Counter)  # older than the value already held
    bad_update: int = 0  # not a (path, value, ts) tuple, or ts not an int in 0 .. MAX_TS_NS
    missing: Counter[str] = field(default_factory=Counter)  # record not built: never received
    stale: Counter[str] = field(default_factory=Counter)  # record not built: older than max_age_ns


_FLOAT, _INT, _BOOL = 0, 1, 2
_CODES: Final = {"float": _FLOAT, "int": _INT, "bool": _BOOL}


class SignalCache:
    """Latest value (our units) and timestamp per catalog signal; builds records on demand.

    A record at ``ts_ns`` uses each signal's latest value if it is at most ``max_age_ns`` older than
    ``ts_ns``. A required signal that is missing or older makes ``build`` return ``None`` (counted
    per VSS path in ``stats.missing`` / ``stats.stale``). An optional GNSS field that is missing or
    older is ``None``; latitude and longitude go together: without both, all five GNSS fields are
    ``None``.
    """

    def __init__(self, max_age_ns: int) -> None:
        if max_age_ns < 0:
            raise ValueError("max_age_ns must be >= 0")
        self.max_age_ns = max_age_ns
        self.stats = SignalStats()
        self._values: list[Value | None] = [None] * len(CATALOG)
        self._stamps: list[int] = [NEVER] * len(CATALOG)
        self._lookup: dict[str, tuple[int, int, float, float, float]] = {
            s.path: (i, _CODES[s.type], s.factor, s.lo, s.hi) for i, s in enumerate(CATALOG)
        }
        self._index = {s.path: i for i, s in enumerate(CATALOG)}
        self._fields: dict[RecordKind, list[tuple[int, bool]]] = {
            kind: [(i, s.optional) for i, s in enumerate(CATALOG) if s.kind == kind]
            for kind in ("driving", "battery")
        }
        lat = self._index["Vehicle.CurrentLocation.Latitude"]
        lon = self._index["Vehicle.CurrentLocation.Longitude"]
        self._lat_arg = [i for i, _ in self._fields["driving"]].index(lat)
        assert [i for i, _ in self._fields["driving"]].index(lon) == self._lat_arg + 1

    # -- input --------------------------------------------------------------------

    def update(self, updates: Iterable[SignalUpdate]) -> int:
        """Apply updates (VSS units); return how many were accepted. Never raises on bad input."""
        lookup, values, stamps, st = self._lookup, self._values, self._stamps, self.stats
        accepted = 0
        for u in updates:
            try:
                path, value, ts = u
                entry = lookup.get(path)
            except (TypeError, ValueError):
                st.bad_update += 1
                continue
            if entry is None:
                st.unknown[_bounded_key(st.unknown, path)] += 1
                continue
            i, code, factor, lo, hi = entry
            if type(ts) is not int or ts < 0 or ts > MAX_TS_NS:
                st.bad_update += 1
                continue
            if ts < stamps[i]:
                st.late[path] += 1
                continue
            tv = type(value)
            v: Value
            if code == _FLOAT:
                if tv is not float and tv is not int:
                    st.bad_value[path] += 1
                    continue
                try:
                    v = value * factor
                except OverflowError:  # an int too large for a float
                    st.bad_value[path] += 1
                    continue
            elif code == _INT:
                if tv is int:
                    v = value
                elif tv is float and value.is_integer():  # type: ignore[union-attr]
                    v = int(value)
                else:
                    st.bad_value[path] += 1
                    continue
            elif tv is bool:
                v = value
            elif tv is int and (value == 0 or value == 1):
                v = value == 1
            else:
                st.bad_value[path] += 1
                continue
            if not lo <= v <= hi:  # NaN fails both comparisons
                if code == _FLOAT and math.isfinite(v):
                    tol = 1e-9 * max(1.0, abs(lo), abs(hi))
                    if lo - tol <= v <= hi + tol:  # roundoff of the unit conversion
                        v = min(hi, max(lo, v))
                    else:
                        st.out_of_range[path] += 1
                        continue
                elif code == _FLOAT:
                    st.bad_value[path] += 1
                    continue
                else:
                    st.out_of_range[path] += 1
                    continue
            values[i] = v
            stamps[i] = ts
            accepted += 1
        st.accepted += accepted
        return accepted

    # -- output -------------------------------------------------------------------

    def get(self, path: str) -> tuple[Value, int] | None:
        """The latest value of a signal (our units) and its timestamp, or ``None``."""
        i = self._index.get(path)
        if i is None:
            return None
        v = self._values[i]
        return None if v is None else (v, self._stamps[i])

    def index(self, path: str) -> int:
        """Position of a catalog signal in ``values`` / ``stamps`` (KeyError if unknown)."""
        return self._index[path]

    @property
    def values(self) -> list[Value | None]:
        """Live values, indexed by ``index(path)``; read only."""
        return self._values

    @property
    def stamps(self) -> list[int]:
        """Live timestamps (``NEVER`` if never received), indexed by ``index(path)``; read only."""
        return self._stamps

    def snapshot(self) -> Snapshot:
        return tuple(self._values), tuple(self._stamps)

    def build(self, kind: RecordKind, ts_ns: int, snapshot: Snapshot | None = None) -> Sample | None:
        """A record of ``kind`` at ``ts_ns`` from the cache (or from ``snapshot``), or ``None``."""
        values: Sequence[Value | None]
        stamps: Sequence[int]
        values, stamps = snapshot if snapshot is not None else (self._values, self._stamps)
        oldest = ts_ns - self.max_age_ns
        args: list[Value | None] = []
        ok = True
        for i, optional in self._fields[kind]:
            s = stamps[i]
            if s >= oldest:
                args.append(values[i])
            elif optional:
                args.append(None)
            else:
                ok = False
                path = CATALOG[i].path
                if s == NEVER:
                    self.stats.missing[path] += 1
                else:
                    self.stats.stale[path] += 1
        if not ok:
            return None
        if kind == "driving":
            k = self._lat_arg
            if args[k] is None or args[k + 1] is None:
                args[k : k + 5] = [None] * 5
            return DrivingSample(ts_ns, *args)  # type: ignore[arg-type]
        return BatterySample(ts_ns, *args)  # type: ignore[arg-type]

    def driving(self, ts_ns: int) -> DrivingSample | None:
        rec = self.build("driving", ts_ns)
        assert rec is None or isinstance(rec, DrivingSample)
        return rec

    def battery(self, ts_ns: int) -> BatterySample | None:
        rec = self.build("battery", ts_ns)
        assert rec is None or isinstance(rec, BatterySample)
        return rec


_SIGNALS_OF: Final[dict[type, tuple[Signal, ...]]] = {
    DrivingSample: tuple(s for s in CATALOG if s.kind == "driving"),
    BatterySample: tuple(s for s in CATALOG if s.kind == "battery"),
}


# Integer VSS values whose conversion stays within the field's range.
_VSS_INT_RANGE: Final[dict[str, tuple[int, int]]] = {
    s.path: (math.ceil(s.lo / s.factor), math.floor(s.hi / s.factor)) for s in CATALOG if s.vss_integer
}
assert all(BY_PATH[p].lo <= lo * BY_PATH[p].factor for p, (lo, _) in _VSS_INT_RANGE.items())
assert all(hi * BY_PATH[p].factor <= BY_PATH[p].hi for p, (_, hi) in _VSS_INT_RANGE.items())


def record_to_updates(record: Record, *, vss_integers: bool = True) -> list[SignalUpdate]:
    """The inverse of the cache: a sample's fields as VSS signal updates (VSS units) at its ``ts_ns``.

    GNSS fields that are ``None`` give no update. Where VSS has an integer type (pedal positions,
    steering wheel angle, gear) the value is rounded to an ``int`` unless ``vss_integers`` is false
    (then it is the exact float, for lossless round trips). Records other than driving and battery
    samples give no updates.
    """
    specs = _SIGNALS_OF.get(type(record))
    if specs is None:
        return []
    ts = record.ts_ns
    out: list[SignalUpdate] = []
    for s in specs:
        v = getattr(record, s.field)
        if v is None:
            continue
        if s.type != "float":
            out.append((s.path, v, ts))
            continue
        x = v / s.factor if s.factor != 1.0 else float(v)
        if vss_integers and s.vss_integer:
            lo, hi = _VSS_INT_RANGE[s.path]  # rounding must not leave our range
            out.append((s.path, min(hi, max(lo, round(x))), ts))
        else:
            out.append((s.path, x, ts))
    return out
