"""CAN input: VSS values -> frames (deploy/edge/ev.dbc) -> a python-can bus -> CanSource -> VSS values.

The round trips run on python-can's ``virtual`` interface (two bus objects on one channel), and
on SocketCAN ``vcan0`` when the kernel has it.
"""

from __future__ import annotations

import random
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import can
import pytest

from common.config import ConfigError, load_toml
from edge_agent.inputs import SignalSource, SignalUpdate
from edge_agent.sources.can import CanConfig, CanSource, encode_frames, load_database

ROOT = Path(__file__).resolve().parents[2]
DBC = ROOT / "deploy" / "edge" / "ev.dbc"
TB = "Vehicle.Powertrain.TractionBattery"
TS = 1_700_000_000.25  # exactly representable: the ns conversion is exact

# Every signal the sample DBC maps, with a value on its resolution grid: driving away (negative
# current and power, reverse gear, steering to the right, braking) ...
DRIVING = {
    "Vehicle.Speed": 87.65,
    "Vehicle.AngularVelocity.Yaw": -12.34,
    "Vehicle.Acceleration.Longitudinal": -3.456,
    "Vehicle.Acceleration.Lateral": 2.345,
    "Vehicle.Acceleration.Vertical": -0.123,
    "Vehicle.Chassis.SteeringWheel.Angle": -123.4,
    "Vehicle.Chassis.Accelerator.PedalPosition": 37.2,
    "Vehicle.Chassis.Brake.PedalPosition": 12.4,
    "Vehicle.Powertrain.Transmission.CurrentGear": -1,
    "Vehicle.TraveledDistance": 123456.78,
    f"{TB}.CurrentVoltage": 398.7,
    f"{TB}.CurrentCurrent": -245.6,
    f"{TB}.CurrentPower": -97920,
    f"{TB}.StateOfCharge.Current": 76.54,
    f"{TB}.StateOfHealth": 97.5,
    f"{TB}.Temperature.Min": -5.2,
    f"{TB}.Temperature.Max": 3.1,
    f"{TB}.Temperature.Average": -1.4,
    f"{TB}.CellVoltage.Min": 3.712,
    f"{TB}.CellVoltage.Max": 3.734,
    f"{TB}.AccumulatedChargedEnergy": 1234.567,
    f"{TB}.AccumulatedConsumedEnergy": 2345.678,
    f"{TB}.AccumulatedChargedThroughput": 3456.789,
    f"{TB}.AccumulatedConsumedThroughput": 5678.901,
    f"{TB}.Charging.IsCharging": False,
    f"{TB}.Charging.ChargePower": 0,
}
# ... and charging (positive current and power, forward gear, steering to the left).
CHARGING = DRIVING | {
    "Vehicle.Speed": 0.0,
    "Vehicle.Chassis.SteeringWheel.Angle": 540.0,
    "Vehicle.Powertrain.Transmission.CurrentGear": 0,
    f"{TB}.CurrentCurrent": 27.5,
    f"{TB}.CurrentPower": 10980,
    f"{TB}.Charging.IsCharging": True,
    f"{TB}.Charging.ChargePower": 11050,
}
INTS = {"Vehicle.Powertrain.Transmission.CurrentGear", f"{TB}.CurrentPower", f"{TB}.Charging.ChargePower"}
BOOLS = {f"{TB}.Charging.IsCharging"}


def _channel() -> str:
    return f"test-{uuid.uuid4().hex}"


def _cfg(channel: str = "unused", **kw: object) -> CanConfig:
    return CanConfig(dbc_path=str(DBC), interface="virtual", channel=channel, **kw)  # type: ignore[arg-type]


class Pair:
    """A sending virtual bus and a CanSource reading another bus on the same channel."""

    def __init__(self, **cfg: object) -> None:
        channel = _channel()
        self.tx = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
        self.rx = can.Bus(interface="virtual", channel=channel)
        self.source = CanSource(_cfg(channel, **cfg), bus=self.rx)

    def send(self, frames: list[can.Message]) -> None:
        for f in frames:
            self.tx.send(f)

    def close(self) -> None:
        self.source.close()
        self.tx.shutdown()
        self.rx.shutdown()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    yield p
    p.close()


def _by_path(updates: list[SignalUpdate]) -> dict[str, float | int | bool]:
    out: dict[str, float | int | bool] = {}
    for path, value, _ in updates:
        assert path not in out, f"{path} twice"
        out[path] = value
    return out


def _check_types(values: dict[str, float | int | bool]) -> None:
    for path, value in values.items():
        if path in BOOLS:
            assert type(value) is bool, path
        elif path in INTS:
            assert type(value) is int, path
        else:
            assert type(value) is float, path


def test_the_sample_dbc_maps_every_non_gnss_signal() -> None:
    db = load_database(DBC)
    assert 8 <= len(db.messages) <= 12
    source = CanSource(_cfg(), bus=can.Bus(interface="virtual", channel=_channel()))
    try:
        assert sorted(source.mapping.values()) == sorted(DRIVING)
        assert all(m.cycle_time for m in db.messages)
    finally:
        source._bus.shutdown()


@pytest.mark.parametrize("values", [DRIVING, CHARGING], ids=["driving", "charging"])
def test_round_trip_is_exact_on_the_resolution_grid(
    pair: Pair, values: dict[str, float | int | bool]
) -> None:
    frames = encode_frames(pair.source, values, TS)
    assert len(frames) == 12
    pair.send(frames)
    updates = pair.source.read(5.0)  # one read: the first frame, then everything already waiting
    got = _by_path(updates)
    assert got == values
    _check_types(got)
    assert {ts for _, _, ts in updates} == {1_700_000_000_250_000_000}
    st = pair.source.stats
    assert (st.frames, st.decoded, st.unknown_id, st.errors) == (12, 12, 0, 0)
    assert st.unmapped == 2  # SAS_AliveCounter and BMS_AliveCounter


def test_round_trip_of_random_values_is_within_half_a_step(pair: Pair) -> None:
    db = pair.source.db
    signals = {
        path: db.get_message_by_name(name.split(".")[0]).get_signal_by_name(name.split(".")[1])
        for name, path in pair.source.mapping.items()
    }
    rng = random.Random(20240601)
    for _ in range(50):
        values: dict[str, float | int | bool] = {}
        for path, sig in signals.items():
            assert sig.minimum is not None and sig.maximum is not None
            if path in BOOLS:
                values[path] = rng.random() < 0.5
            elif path in INTS:
                values[path] = rng.randrange(int(sig.minimum), int(sig.maximum) + 1, int(sig.scale))
            else:
                values[path] = rng.uniform(sig.minimum + sig.scale, sig.maximum - sig.scale)
        pair.send(encode_frames(pair.source, values, TS))
        got = _by_path(pair.source.read(5.0))
        _check_types(got)
        for path, value in values.items():
            assert abs(got[path] - value) <= signals[path].scale / 2 * (1 + 1e-9), path


def test_values_off_the_grid_round_to_the_nearest_step(pair: Pair) -> None:
    pair.send(encode_frames(pair.source, {"Vehicle.Speed": 50.004, f"{TB}.CurrentCurrent": -0.26}, TS))
    got = _by_path(pair.source.read(5.0))
    assert got["Vehicle.Speed"] == 50.0
    assert got[f"{TB}.CurrentCurrent"] == -0.3
    assert got["Vehicle.AngularVelocity.Yaw"] == 0.0  # not given: 0
    assert got[f"{TB}.CurrentVoltage"] == 0.0


def test_timestamps(pair: Pair) -> None:
    before = time.time_ns()
    pair.send(encode_frames(pair.source, {"Vehicle.Speed": 1.0}, None))  # no timestamp: host clock
    pair.send(encode_frames(pair.source, {"Vehicle.Speed": 2.0}, 12.5))  # not wall-clock: host clock
    pair.send(encode_frames(pair.source, {"Vehicle.Speed": 3.0}, 1_750_000_000.5))
    updates = pair.source.read(5.0)
    after = time.time_ns()
    speeds = [(v, ts) for p, v, ts in updates if p == "Vehicle.Speed"]
    assert [v for v, _ in speeds] == [1.0, 2.0, 3.0]
    assert before <= speeds[0][1] <= after
    assert before <= speeds[1][1] <= after
    assert speeds[2][1] == 1_750_000_000_500_000_000


def test_bad_frames_are_counted_not_raised(pair: Pair) -> None:
    (speed,) = encode_frames(pair.source, {"Vehicle.Speed": 10.0}, TS)
    pair.send(
        [
            can.Message(
                arbitration_id=0x7FF, is_extended_id=False, data=b"\x01\x02", timestamp=TS
            ),  # unknown id
            can.Message(arbitration_id=0xC8, is_extended_id=True, data=speed.data, timestamp=TS),
            can.Message(
                arbitration_id=0xC8, is_extended_id=False, data=speed.data[:3], timestamp=TS
            ),  # truncated
            can.Message(
                arbitration_id=0xC8, is_extended_id=False, data=bytes(speed.data) + b"\x00", timestamp=TS
            ),  # too long
            can.Message(arbitration_id=0xC8, is_extended_id=False, is_remote_frame=True, dlc=4, timestamp=TS),
            can.Message(is_error_frame=True, timestamp=TS),
            speed,
        ]
    )
    got = _by_path(pair.source.read(5.0))
    assert got == {"Vehicle.Speed": 10.0, "Vehicle.AngularVelocity.Yaw": 0.0}
    st = pair.source.stats
    assert (st.frames, st.decoded, st.unknown_id, st.errors) == (7, 1, 2, 4)
    assert st.frames == st.decoded + st.unknown_id + st.errors
    assert "ESP_Speed" in st.last_error or "frame" in st.last_error


def test_an_empty_bus_gives_nothing(pair: Pair) -> None:
    assert pair.source.read(0.01) == []
    assert pair.source.read(0.0) == []
    assert pair.source.stats.frames == 0


def test_a_failing_bus_is_counted_not_raised(pair: Pair) -> None:
    pair.rx.shutdown()  # recv now raises can.CanOperationError
    assert pair.source.read(0.01) == []
    assert pair.source.stats.bus_errors == 1
    assert "virtual" in pair.source.stats.last_error


def test_overrides_rename_add_and_drop_signals() -> None:
    p = Pair(
        signals={
            "SAS_AliveCounter": "Vehicle.Private.Steering.AliveCounter",  # add
            "ESP_Speed.VehicleSpeed": "Vehicle.Private.WheelSpeed",  # rename, qualified
            "YawRate": "",  # drop
        }
    )
    try:
        p.send(encode_frames(p.source, {"Vehicle.Private.WheelSpeed": 42.0}, TS))
        p.send(encode_frames(p.source, {"Vehicle.Private.Steering.AliveCounter": 7}, TS))
        got = _by_path(p.source.read(5.0))
        assert got == {
            "Vehicle.Private.WheelSpeed": 42.0,
            "Vehicle.Private.Steering.AliveCounter": 7,
            "Vehicle.Chassis.SteeringWheel.Angle": 0.0,
        }
        assert p.source.stats.unmapped == 1  # YawRate
    finally:
        p.close()


def test_a_dbc_without_the_attribute_is_mapped_by_the_config(tmp_path: Path) -> None:
    dbc = tmp_path / "plain.dbc"
    dbc.write_text(
        'VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: ECU\n\n'
        "BO_ 1 Motion: 2 ECU\n"
        ' SG_ Spd : 0|12@1+ (0.1,0) [0|409.5] "km/h" Vector__XXX\n'
        ' SG_ Rev : 12|1@1+ (1,0) [0|1] "" Vector__XXX\n'
        ' SG_ Gear : 13|3@1- (1,0) [-1|3] "" Vector__XXX\n'
    )
    channel = _channel()
    tx = can.Bus(interface="virtual", channel=channel)
    rx = can.Bus(interface="virtual", channel=channel)
    cfg = CanConfig(
        dbc_path=str(dbc),
        interface="virtual",
        channel=channel,
        signals={"Spd": "Vehicle.Speed", "Gear": "Vehicle.Powertrain.Transmission.CurrentGear"},
    )
    source = CanSource(cfg, bus=rx)
    try:
        for frame in encode_frames(
            source, {"Vehicle.Speed": 123.4, "Vehicle.Powertrain.Transmission.CurrentGear": -1}, None
        ):
            tx.send(frame)
        assert _by_path(source.read(5.0)) == {
            "Vehicle.Speed": 123.4,
            "Vehicle.Powertrain.Transmission.CurrentGear": -1,
        }
        assert source.stats.unmapped == 1  # Rev
        # A bare database maps nothing without the attribute.
        with pytest.raises(KeyError, match=r"Vehicle\.Speed"):
            encode_frames(load_database(dbc), {"Vehicle.Speed": 1.0}, None)
    finally:
        source.close()
        tx.shutdown()
        rx.shutdown()


def test_ieee_float_signals_are_not_rounded(tmp_path: Path) -> None:
    dbc = tmp_path / "float.dbc"
    dbc.write_text(
        'VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: ECU\n\n'
        "BO_ 2 Imu: 8 ECU\n"
        ' SG_ Ax : 0|32@1- (1,0) [-1000|1000] "m/s2" Vector__XXX\n'
        ' SG_ Yaw : 32|32@1- (1,0) [-1000|1000] "deg/s" Vector__XXX\n\n'
        "SIG_VALTYPE_ 2 Ax : 1;\n"
        "SIG_VALTYPE_ 2 Yaw : 1;\n"
    )
    channel = _channel()
    tx = can.Bus(interface="virtual", channel=channel)
    rx = can.Bus(interface="virtual", channel=channel)
    cfg = CanConfig(
        dbc_path=str(dbc),
        interface="virtual",
        channel=channel,
        signals={"Ax": "Vehicle.Acceleration.Longitudinal", "Yaw": "Vehicle.AngularVelocity.Yaw"},
    )
    source = CanSource(cfg, bus=rx)
    try:
        for frame in encode_frames(
            source, {"Vehicle.Acceleration.Longitudinal": -1.2345, "Vehicle.AngularVelocity.Yaw": 0.25}, None
        ):
            tx.send(frame)
        got = _by_path(source.read(5.0))
        assert got["Vehicle.Acceleration.Longitudinal"] == pytest.approx(-1.2345, rel=1e-7)  # float32
        assert got["Vehicle.Acceleration.Longitudinal"] != -1.0
        assert got["Vehicle.AngularVelocity.Yaw"] == 0.25
        _check_types(got)
    finally:
        source.close()
        tx.shutdown()
        rx.shutdown()


def test_encode_frames_takes_a_database() -> None:
    db = load_database(DBC)
    (frame,) = encode_frames(db, {f"{TB}.Charging.IsCharging": True, f"{TB}.Charging.ChargePower": 7400}, 5.0)
    assert frame.is_extended_id and frame.arbitration_id == 0x18FF50E5
    assert frame.timestamp == 5.0
    assert bytes(frame.data) == bytes([0x01]) + (740).to_bytes(2, "little")
    with pytest.raises(KeyError, match=r"Vehicle\.Nothing"):
        encode_frames(db, {"Vehicle.Nothing": 1}, None)


def test_the_source_opens_its_own_bus_and_closes_it() -> None:
    channel = _channel()
    tx = can.Bus(interface="virtual", channel=channel)
    source: SignalSource = CanSource(_cfg(channel))
    try:
        assert isinstance(source, CanSource)
        for frame in encode_frames(source, {"Vehicle.Speed": 33.3}, None):
            tx.send(frame)
        assert _by_path(source.read(5.0))["Vehicle.Speed"] == 33.3
    finally:
        source.close()
        tx.shutdown()
    with pytest.raises(can.CanOperationError):
        source._bus.recv(0)


# -- configuration errors ---------------------------------------------------------------------


def test_missing_dbc_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"can\.dbc_path: .*nope\.dbc does not exist"):
        CanSource(CanConfig(dbc_path=str(tmp_path / "nope.dbc"), interface="virtual"))


def test_unparsable_dbc_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dbc"
    bad.write_text('VERSION ""\nBO_ 1 Broken 8 ECU\n SG_ x : what\n')
    with pytest.raises(ConfigError, match=r"can\.dbc_path: .*bad\.dbc is not a valid signal database"):
        CanSource(CanConfig(dbc_path=str(bad), interface="virtual"))


def test_unknown_interface_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"can\.interface: 'no-such-bus'"):
        CanSource(CanConfig(dbc_path=str(DBC), interface="no-such-bus", channel="x"))


def test_override_of_an_unknown_signal_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"can\.signals: no signal 'Nope' in .*ev\.dbc"):
        CanSource(_cfg(signals={"Nope": "Vehicle.Speed"}), bus=None)


def test_config_from_toml(tmp_path: Path) -> None:
    p = tmp_path / "can.toml"
    p.write_text(
        f'dbc_path = "{DBC}"\ninterface = "virtual"\nchannel = "vcan9"\n'
        '[signals]\nYawRate = ""\nSAS_AliveCounter = "Vehicle.Private.Counter"\n'
    )
    cfg = load_toml(p, CanConfig)
    assert cfg.signals == {"YawRate": "", "SAS_AliveCounter": "Vehicle.Private.Counter"}
    assert cfg.bitrate == 0
    p.write_text(f'dbc_path = "{DBC}"\nbaud = 500000\n')
    with pytest.raises(ConfigError, match="baud"):
        load_toml(p, CanConfig)
    p.write_text(f'dbc_path = "{DBC}"\n[signals]\nYawRate = "not a path"\n')
    with pytest.raises(ConfigError, match="signals"):
        load_toml(p, CanConfig)


# -- SocketCAN ----------------------------------------------------------------------------------


def _vcan0_missing() -> str | None:
    """Why the SocketCAN round trip cannot run here, or None."""
    try:
        probe = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
    except (AttributeError, OSError) as exc:
        return f"this kernel has no SocketCAN (socket(AF_CAN, SOCK_RAW, CAN_RAW) failed: {exc})"
    probe.close()
    if not Path("/sys/class/net/vcan0").exists():
        return (
            "SocketCAN works but there is no vcan0 interface (as root: modprobe vcan; "
            "ip link add dev vcan0 type vcan; ip link set up vcan0)"
        )
    return None


def test_round_trip_on_socketcan_vcan0() -> None:
    reason = _vcan0_missing()
    if reason is not None:
        pytest.skip(reason)
    cfg = CanConfig(dbc_path=str(DBC), interface="socketcan", channel="vcan0")
    tx = can.Bus(interface="socketcan", channel="vcan0")
    source = CanSource(cfg)
    try:
        before = time.time_ns()
        for frame in encode_frames(source, CHARGING, None):
            tx.send(frame)
        updates: list[SignalUpdate] = []
        deadline = time.monotonic() + 5.0
        while len(updates) < len(CHARGING) and time.monotonic() < deadline:
            updates += [u for u in source.read(1.0) if u[0] in CHARGING]
        assert _by_path(updates) == CHARGING
        assert all(before <= ts <= time.time_ns() for _, _, ts in updates)  # kernel timestamps
    finally:
        source.close()
        tx.shutdown()
