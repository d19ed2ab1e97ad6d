"""Record kinds carried in blocks, mapped to COVESA VSS signals (see schemas/README.md).

Units are SI (angles of position in degrees, ratios in percent, temperatures in
degrees Celsius). Timestamps are integer nanoseconds since the Unix epoch, UTC.

Records travel as MessagePack arrays (``array_like``) whose first element is the
kind tag: ``"d"`` driving, ``"b"`` battery. Field order is the wire order and is
frozen for schema version 1: new fields are only ever appended, with a default, and
decoders ignore trailing fields they do not know (forward compatibility). The leaf
hash covers the record bytes exactly as sent, so unknown fields are still signed.

Records hold scalars only, so they can never be part of a reference cycle: ``gc=False`` keeps
them out of the garbage collector, which would otherwise walk every record of a consumer batch.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

import msgspec
from msgspec import Meta

from schemas.patterns import Name, whole

SCHEMA_VERSION = 1

# The largest timestamp: 2^63 - 2 ns (2262-04-11). 2^63 - 1 is excluded because the store (DuckDB's
# TIMESTAMP_NS) reserves it for 'infinity' and cannot hold it as a time: a value the store cannot
# hold is refused here, at decode, with a reason, never discovered when a batch fails to commit.
MAX_TIMESTAMP_NS = 2**63 - 2
TimestampNs = Annotated[int, Meta(ge=0, le=MAX_TIMESTAMP_NS, description="ns since Unix epoch, UTC")]
Percent = Annotated[float, Meta(ge=0.0, le=100.0)]
Latitude = Annotated[float, Meta(ge=-90.0, le=90.0)]
Longitude = Annotated[float, Meta(ge=-180.0, le=180.0)]


class DrivingSample(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="d", tag_field="kind"):
    ts_ns: TimestampNs
    speed_mps: Annotated[float, Meta(ge=0.0, le=200.0)]
    accel_long_mps2: Annotated[float, Meta(ge=-200.0, le=200.0)]
    accel_lat_mps2: Annotated[float, Meta(ge=-200.0, le=200.0)]
    accel_vert_mps2: Annotated[float, Meta(ge=-200.0, le=200.0)]
    yaw_rate_radps: Annotated[float, Meta(ge=-50.0, le=50.0)]
    latitude_deg: Latitude | None
    longitude_deg: Longitude | None
    altitude_m: Annotated[float, Meta(ge=-1000.0, le=20000.0)] | None
    heading_deg: Annotated[float, Meta(ge=0.0, le=360.0)] | None
    h_accuracy_m: Annotated[float, Meta(ge=0.0, le=1e6)] | None
    accel_pedal_pct: Percent
    brake_pedal_pct: Percent
    steering_angle_rad: Annotated[float, Meta(ge=-30.0, le=30.0)]
    gear: Annotated[int, Meta(ge=-1, le=15)]
    odometer_m: Annotated[float, Meta(ge=0.0, le=1e10)]


class BatterySample(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="b", tag_field="kind"):
    ts_ns: TimestampNs
    soc_pct: Percent
    soh_pct: Percent
    pack_voltage_v: Annotated[float, Meta(ge=0.0, le=2000.0)]
    pack_current_a: Annotated[float, Meta(ge=-5000.0, le=5000.0)]
    power_w: Annotated[float, Meta(ge=-5e6, le=5e6)]
    temp_min_c: Annotated[float, Meta(ge=-100.0, le=200.0)]
    temp_max_c: Annotated[float, Meta(ge=-100.0, le=200.0)]
    temp_avg_c: Annotated[float, Meta(ge=-100.0, le=200.0)]
    cell_voltage_min_v: Annotated[float, Meta(ge=0.0, le=10.0)]
    cell_voltage_max_v: Annotated[float, Meta(ge=0.0, le=10.0)]
    charged_energy_j: Annotated[float, Meta(ge=0.0, le=1e15)]
    consumed_energy_j: Annotated[float, Meta(ge=0.0, le=1e15)]
    charged_throughput_c: Annotated[float, Meta(ge=0.0, le=1e15)]
    consumed_throughput_c: Annotated[float, Meta(ge=0.0, le=1e15)]
    is_charging: bool
    charge_power_w: Annotated[float, Meta(ge=0.0, le=5e6)]


Hash32 = Annotated[bytes, Meta(min_length=32, max_length=32)]
Seq = Annotated[int, Meta(ge=0, le=2**63 - 1)]


class TriggerEvent(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="t", tag_field="kind"):
    """A collection trigger fired on the vehicle: it recorded ``rate_hz`` samples over
    ``[window_start_ns, window_end_ns]``, the pre-trigger part coming from its ring buffer."""

    ts_ns: TimestampNs  # when the condition became true
    name: Name  # the trigger's name in the agent's configuration
    signal: Annotated[str, Meta(min_length=1, max_length=128)]  # the VSS path it watches
    value: Annotated[float, Meta(ge=-1e12, le=1e12)]  # that signal's value then, in VSS units
    window_start_ns: TimestampNs
    window_end_ns: TimestampNs
    rate_hz: Annotated[float, Meta(gt=0.0, le=1000.0)]


class SpoolDrop(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="x", tag_field="kind"):
    """The vehicle's spool dropped the signed blocks ``first_seq ..= last_seq`` before the broker
    acknowledged them (oldest first, when the spool was full or the blocks too old). The block
    after the range chains to ``last_hash``; the first dropped block chained to ``prev``."""

    ts_ns: TimestampNs
    first_seq: Seq
    last_seq: Seq
    records: Annotated[int, Meta(ge=0, le=2**63 - 1)]
    prev: Hash32
    last_hash: Hash32
    reason: Annotated[str, Meta(pattern=whole("full|expired"))]


Sample = DrivingSample | BatterySample
Record = DrivingSample | BatterySample | TriggerEvent | SpoolDrop


class RecordKind(NamedTuple):
    """One record kind. The store, the proof format and the prover derive their table lists from
    :data:`RECORD_KINDS`, so a new kind is added here once."""

    type: type[Record]
    table: str  # the ingest's table for it, also the ``table`` of a proof bundle (PROOFS.md 3)
    short: str  # its name on the command line (``telematics prove --table driving``)

    @property
    def tag(self) -> str:
        """The kind tag on the wire (WIRE.md 5)."""
        return str(self.type.__struct_config__.tag)


RECORD_KINDS: tuple[RecordKind, ...] = (
    RecordKind(DrivingSample, "driving_samples", "driving"),
    RecordKind(BatterySample, "battery_samples", "battery"),
    RecordKind(TriggerEvent, "trigger_events", "triggers"),
    RecordKind(SpoolDrop, "spool_drops", "drops"),
)
TABLE_OF_KIND: dict[type, str] = {k.type: k.table for k in RECORD_KINDS}

DRIVING_FIELDS: tuple[str, ...] = DrivingSample.__struct_fields__
BATTERY_FIELDS: tuple[str, ...] = BatterySample.__struct_fields__
TRIGGER_FIELDS: tuple[str, ...] = TriggerEvent.__struct_fields__
DROP_FIELDS: tuple[str, ...] = SpoolDrop.__struct_fields__
