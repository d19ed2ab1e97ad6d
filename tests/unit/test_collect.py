"""Collection policies: periodic groups, triggers with a pre-trigger ring buffer, config validation."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from common.config import ConfigError, load_toml
from edge_agent.collect import CollectConfig, Collector, GroupConfig, TriggerConfig
from edge_agent.privacy import PrivacyConfig, PrivacyFilter, ZoneConfig
from edge_agent.signals import SignalUpdate, record_to_updates
from edge_agent.sources.simulated import SimulatedSignals
from edge_agent.sources.vehicle import VehicleModel
from schemas.block import decode_record, encode_record
from schemas.records import BatterySample, DrivingSample, Record, TriggerEvent

START = 1_700_000_000_000_000_000  # on every sampling grid used here
MS = 1_000_000
S = 1_000_000_000
ACCEL = "Vehicle.Acceleration.Longitudinal"
HARD_BRAKE = TriggerConfig(name="hard_brake", signal=ACCEL, op="<", threshold=-6.5)
SEED = 3  # a vehicle moving at 60 s


def simulate(
    cfg: CollectConfig,
    seconds: float,
    *,
    brake_at: float | None = None,
    seed: int = SEED,
    rate_hz: float = 50.0,
    start_ns: int = START,
    privacy: PrivacyFilter | None = None,
) -> tuple[Collector, list[Record]]:
    model = VehicleModel(seed, start_ns=start_ns, rate_hz=rate_hz, battery_every=10)
    source = SimulatedSignals(model, ticks=round(seconds * rate_hz), hard_brake_at_s=brake_at)
    collector = Collector(cfg, privacy)
    out: list[Record] = []
    for updates in source.updates():
        out += collector.feed(updates)
    return collector, out


def of(records: list[Record], cls: type) -> list[Record]:
    return [r for r in records if isinstance(r, cls)]


def assert_no_duplicates_and_valid(records: list[Record]) -> None:
    per_kind = Counter((type(r).__name__, r.ts_ns) for r in records)
    assert max(per_kind.values()) == 1
    for r in records:
        assert decode_record(encode_record(r)) == r  # the ingest would accept it


# -- periodic groups --------------------------------------------------------------------


def test_default_groups_over_a_simulated_minute() -> None:
    collector, records = simulate(CollectConfig(), 60.0)
    driving, battery = of(records, DrivingSample), of(records, BatterySample)
    assert [r.ts_ns for r in driving] == [START + k * 100 * MS for k in range(600)]
    assert [r.ts_ns for r in battery] == [START + k * S for k in range(60)]
    assert len(records) == 660
    assert collector.stats.records == {"driving": 600, "battery": 60}
    assert not collector.stats.skipped and not collector.stats.gap_skipped
    assert not collector.signal_stats.missing and not collector.signal_stats.stale
    assert_no_duplicates_and_valid(records)


def test_grid_is_independent_of_the_source_phase_and_rate() -> None:
    cfg = CollectConfig(groups=(GroupConfig(name="fast", record="driving", rate_hz=4.0),))
    _, records = simulate(cfg, 30.0, rate_hz=15.0, start_ns=START + 7 * MS)
    ts = [r.ts_ns for r in records]
    assert ts[0] == START + 250 * MS  # the first grid point after the first data
    assert all(b - a == 250 * MS for a, b in itertools.pairwise(ts))
    assert len(ts) == 119  # 30 s of data from START + 7 ms; points START + 0.25 s .. START + 29.75 s


def test_sample_and_hold_uses_the_values_at_the_sampling_point() -> None:
    cfg = CollectConfig(groups=(GroupConfig(name="d", record="driving", rate_hz=10.0),))
    collector = Collector(cfg)
    base = _driving_updates(START, speed_kmh=36.0)
    assert [r.ts_ns for r in collector.feed(base)] == [START]
    # one batch with values at +50 ms and +150 ms: the point at +100 ms sees only the first
    batch = _driving_updates(START + 150 * MS, speed_kmh=108.0) + _driving_updates(
        START + 50 * MS, speed_kmh=72.0
    )
    (rec,) = collector.feed(batch)
    assert isinstance(rec, DrivingSample) and rec.ts_ns == START + 100 * MS
    assert rec.speed_mps == pytest.approx(20.0)
    (rec,) = collector.tick(START + 200 * MS)
    assert isinstance(rec, DrivingSample) and rec.speed_mps == pytest.approx(30.0)


# -- triggers ---------------------------------------------------------------------------


def test_hard_brake_records_one_window_with_pre_trigger_samples() -> None:
    cfg = CollectConfig(triggers=(HARD_BRAKE,))
    collector, records = simulate(cfg, 120.0, brake_at=60.0)
    (event,) = of(records, TriggerEvent)
    assert isinstance(event, TriggerEvent)
    t0 = START + 60 * S
    assert event.ts_ns == t0 and event.name == "hard_brake" and event.signal == ACCEL
    assert event.value == pytest.approx(-7.0) and event.rate_hz == 50.0
    assert (event.window_start_ns, event.window_end_ns) == (t0 - 2 * S, t0 + 3 * S)
    window = [
        r for r in of(records, DrivingSample) if event.window_start_ns <= r.ts_ns <= event.window_end_ns
    ]
    ts = sorted(r.ts_ns for r in window)
    assert ts == list(range(event.window_start_ns, event.window_end_ns + 1, 20 * MS))
    assert len(ts) == round((2.0 + 3.0) * 50) + 1
    # the pre-trigger samples are what the signals were then, not what they are at the trigger
    before = {r.ts_ns: r for r in window if r.ts_ns < t0}
    assert len(before) == 100
    assert all(r.brake_pedal_pct != 85.0 and r.accel_long_mps2 > -6.5 for r in before.values())  # type: ignore[union-attr]
    after = [r for r in window if t0 <= r.ts_ns < t0 + 1500 * MS]
    assert all(r.brake_pedal_pct == 85.0 for r in after)  # type: ignore[union-attr]
    # the event comes before its back-filled samples, which come in time order
    i = records.index(event)
    assert [r.ts_ns for r in records[i + 1 : i + 81]] == [
        t for t in range(t0 - 2 * S, t0, 20 * MS) if t % (100 * MS) != 0
    ]
    # periodic samples are not duplicated: 1200 periodic + 251 window - 51 shared points
    assert collector.stats.records == {"driving": 1400, "battery": 120, "trigger": 1}
    assert collector.stats.triggers == {"hard_brake": 1}
    assert_no_duplicates_and_valid(records)


def test_no_trigger_without_braking() -> None:
    collector, records = simulate(CollectConfig(triggers=(HARD_BRAKE,)), 300.0)
    assert not of(records, TriggerEvent)
    assert not collector.stats.triggers
    assert collector.stats.records == {"driving": 3000, "battery": 300}


def test_no_hard_brake_when_standing() -> None:
    _, records = simulate(CollectConfig(triggers=(HARD_BRAKE,)), 10.0, brake_at=0.0)
    assert not of(records, TriggerEvent)  # seed 3 stands at 0 s


def _driving_updates(ts: int, *, speed_kmh: float = 50.0, accel: float = 0.0) -> list[SignalUpdate]:
    rec = DrivingSample(
        ts_ns=ts,
        speed_mps=speed_kmh / 3.6,
        accel_long_mps2=accel,
        accel_lat_mps2=0.0,
        accel_vert_mps2=0.0,
        yaw_rate_radps=0.0,
        latitude_deg=48.1,
        longitude_deg=11.5,
        altitude_m=500.0,
        heading_deg=10.0,
        h_accuracy_m=3.0,
        accel_pedal_pct=0.0,
        brake_pedal_pct=0.0,
        steering_angle_rad=0.0,
        gear=1,
        odometer_m=1e6,
    )
    return record_to_updates(rec)


def _run(collector: Collector, accel_at: dict[int, float], seconds: float, hz: int = 50) -> list[Record]:
    """Drive a collector with synthetic driving signals at ``hz``; ``accel_at`` maps a tick to the
    longitudinal acceleration from that tick on."""
    out: list[Record] = []
    accel = 0.0
    for k in range(round(seconds * hz)):
        accel = accel_at.get(k, accel)
        out += collector.feed(_driving_updates(START + k * S // hz, accel=accel))
    return out


def test_cooldown_suppresses_a_second_event() -> None:
    cfg = CollectConfig(groups=(), triggers=(HARD_BRAKE,))
    collector = Collector(cfg)
    # brake at 10 s, release at 10.5 s, brake again at 14 s (cooldown 10 s), and at 25 s
    records = _run(collector, {500: -8.0, 525: 0.0, 700: -8.0, 725: 0.0, 1250: -8.0, 1275: 0.0}, 40.0)
    events = of(records, TriggerEvent)
    assert [e.ts_ns for e in events] == [START + 10 * S, START + 25 * S]
    assert collector.stats.triggers == {"hard_brake": 2}
    assert collector.stats.suppressed == {"hard_brake": 1}
    # a condition that stays true does not fire again (edge-triggered)
    collector = Collector(cfg)
    records = _run(collector, {500: -8.0}, 40.0)
    assert len(of(records, TriggerEvent)) == 1
    # only window samples (no periodic group)
    assert collector.stats.records["driving"] == 251


def test_trigger_right_after_start_has_a_short_pre_window() -> None:
    collector = Collector(CollectConfig(groups=(), triggers=(HARD_BRAKE,)))
    records = _run(collector, {25: -8.0}, 10.0)  # at 0.5 s: only 0.5 s in the ring buffer
    (event,) = of(records, TriggerEvent)
    assert isinstance(event, TriggerEvent)
    assert event.window_start_ns == START and event.window_end_ns == START + 3500 * MS
    assert len(of(records, DrivingSample)) == 176


def test_trigger_on_a_battery_signal_and_off_grid_times() -> None:
    trig = TriggerConfig(
        name="hot",
        signal="Vehicle.Powertrain.TractionBattery.Temperature.Max",
        op=">=",
        threshold=60.0,
        record="battery",
        rate_hz=3.0,
        pre_s=1.0,
        post_s=1.0,
    )
    collector = Collector(CollectConfig(groups=(), triggers=(trig,)))
    period = round(1e9 / 3)
    out: list[Record] = []
    base = BatterySample(
        ts_ns=0,
        soc_pct=50.0,
        soh_pct=95.0,
        pack_voltage_v=400.0,
        pack_current_a=0.0,
        power_w=0.0,
        temp_min_c=20.0,
        temp_max_c=30.0,
        temp_avg_c=25.0,
        cell_voltage_min_v=4.0,
        cell_voltage_max_v=4.0,
        charged_energy_j=0.0,
        consumed_energy_j=0.0,
        charged_throughput_c=0.0,
        consumed_throughput_c=0.0,
        is_charging=False,
        charge_power_w=0.0,
    )
    for k in range(100):  # 10 Hz source, off the 3 Hz grid by 7 ms
        ts = START + 7 * MS + k * 100 * MS
        temp = 61.0 if k >= 50 else 30.0
        out += collector.feed(record_to_updates(msgspec.structs.replace(base, ts_ns=ts, temp_max_c=temp)))
    (event,) = of(out, TriggerEvent)
    assert isinstance(event, TriggerEvent)
    t0 = START + 5007 * MS
    assert event.ts_ns == t0 and event.value == 61.0
    samples = [r.ts_ns for r in of(out, BatterySample)]
    assert samples == list(range(event.window_start_ns, event.window_end_ns + 1, period))
    assert event.window_start_ns >= t0 - S and event.window_end_ns <= t0 + S
    assert len(samples) == 6


# -- missing, stale, gaps, bad input ------------------------------------------------------


def test_missing_signal_gives_no_record_and_is_counted() -> None:
    collector = Collector()
    out: list[Record] = []
    for k in range(50):
        ups = [u for u in _driving_updates(START + k * 100 * MS) if u[0] != "Vehicle.Speed"]
        out += collector.feed(ups)
    assert out == []
    assert collector.stats.skipped == {"driving": 50, "battery": 5}  # no battery signal at all
    missing = collector.signal_stats.missing
    assert missing["Vehicle.Speed"] == 50
    assert missing["Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"] == 5
    assert "Vehicle.Acceleration.Longitudinal" not in missing


def test_stale_signal_stops_records_after_max_age() -> None:
    collector = Collector(CollectConfig(max_signal_age_ms=500))
    out: list[Record] = []
    for k in range(50):
        ups = _driving_updates(START + k * 100 * MS)
        if k >= 20:
            ups = [u for u in ups if u[0] != "Vehicle.Speed"]
        out += collector.feed(ups)
    driving = of(out, DrivingSample)
    assert [r.ts_ns for r in driving] == [START + k * 100 * MS for k in range(25)]  # 1.9 s + 0.5 s
    assert collector.signal_stats.stale == {"Vehicle.Speed": 25}


def test_a_silent_source_is_a_gap_not_missing_signals() -> None:
    collector = Collector()
    out = collector.feed(_driving_updates(START))
    out += collector.tick(START + 60 * S - 1)
    out += collector.feed(_driving_updates(START + 60 * S))
    ts = [r.ts_ns for r in out]
    # held for max_signal_age (2 s), then skipped in one step, then again from the new data
    assert ts == [START + k * 100 * MS for k in range(21)] + [START + 60 * S]
    assert collector.stats.gap_skipped["driving"] == 600 - 21
    assert not collector.signal_stats.stale and not collector.signal_stats.missing["Vehicle.Speed"]


def test_garbage_never_crashes_the_collector() -> None:
    collector = Collector(CollectConfig(triggers=(HARD_BRAKE,)))
    garbage: list[object] = [
        ("Vehicle.Speed", "x", START),
        ("Vehicle.Speed", 1.0, "now"),
        ("Vehicle.Speed",),
        None,
        ("Nope", 1.0, START),
        (ACCEL, float("nan"), START),
        (ACCEL, -100.0, START + 1),
    ]
    out = collector.feed(garbage + _driving_updates(START))  # type: ignore[arg-type]
    assert [type(r) for r in out] == [DrivingSample, TriggerEvent]  # at START, then the event at +1 ns
    assert collector.feed([]) == []
    assert collector.feed([None, None]) == []  # type: ignore[list-item]
    assert collector.signal_stats.bad_update == 5


def test_privacy_filter_applies_to_what_the_collector_returns() -> None:
    zone = ZoneConfig(name="home", latitude_deg=48.1, longitude_deg=11.5, radius_m=500.0)
    privacy = PrivacyFilter(PrivacyConfig(zones=(zone,)))
    collector = Collector(CollectConfig(triggers=(HARD_BRAKE,)), privacy)
    out = _run(collector, {100: -8.0}, 4.0)
    driving = of(out, DrivingSample)
    assert len(driving) == 200  # the window from 0 s (ring buffer) to the end of the data at 3.98 s
    assert all(r.latitude_deg is None and r.longitude_deg is None for r in driving)  # type: ignore[union-attr]
    assert privacy.stats.dropped == len(driving)


# -- configuration ----------------------------------------------------------------------


class _AgentToml(msgspec.Struct, forbid_unknown_fields=True):
    collect: CollectConfig = msgspec.field(default_factory=CollectConfig)


def _load(tmp_path: Path, text: str) -> CollectConfig:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return load_toml(path, _AgentToml).collect


def test_toml_with_groups_and_triggers(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        """
        [collect]
        max_signal_age_ms = 2000
        [[collect.groups]]
        name = "driving"
        record = "driving"
        rate_hz = 10.0
        [[collect.groups]]
        name = "battery"
        record = "battery"
        rate_hz = 1.0
        [[collect.triggers]]
        name = "hard_brake"
        signal = "Vehicle.Acceleration.Longitudinal"
        op = "<"
        threshold = -4.0
        record = "driving"
        rate_hz = 50.0
        pre_s = 2.0
        post_s = 3.0
        cooldown_s = 10.0
        """,
    )
    assert cfg.groups == CollectConfig().groups
    assert cfg.triggers == (msgspec.structs.replace(HARD_BRAKE, threshold=-4.0),)
    assert _load(tmp_path, "") == CollectConfig()
    assert CollectConfig().triggers == ()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            '[[collect.triggers]]\nname = "t"\nsignal = "Vehicle.Speeed"\nop = ">"\nthreshold = 1.0',
            "Vehicle.Speeed",
        ),
        ('[[collect.triggers]]\nname = "t"\nsignal = "Vehicle.Speed"\nop = "=="\nthreshold = 1.0', "op"),
        ('[[collect.groups]]\nname = "g"\nrecord = "driving"\nrate_hz = 1001.0', "rate_hz"),
        ('[[collect.groups]]\nname = "g"\nrecord = "driving"\nrate_hz = 0.0', "rate_hz"),
        ('[[collect.groups]]\nname = "g"\nrecord = "trips"\nrate_hz = 1.0', "record"),
        ('[[collect.groups]]\nname = "a b"\nrecord = "driving"\nrate_hz = 1.0', "name"),
        ('[[collect.groups]]\nname = "g"\nrecord = "driving"\nrate_hz = 1.0\nrate = 2', "rate"),
        (
            '[[collect.groups]]\nname = "x"\nrecord = "driving"\nrate_hz = 1.0\n'
            '[[collect.triggers]]\nname = "x"\nsignal = "Vehicle.Speed"\nop = ">"\nthreshold = 1.0',
            "'x' is used twice",
        ),
        (
            '[[collect.triggers]]\nname = "t"\nsignal = "Vehicle.Speed"\nop = ">"\nthreshold = 1.0\npre_s = -1.0',
            "pre_s",
        ),
        (
            '[[collect.triggers]]\nname = "t"\nsignal = "Vehicle.Speed"\nop = ">"\nthreshold = 1.0\npost_s = 1e6',
            "post_s",
        ),
        (
            '[[collect.triggers]]\nname = "t"\nsignal = "Vehicle.Speed"\nop = ">"\nthreshold = 1.0\n'
            "rate_hz = 1000.0\npre_s = 10.0\npost_s = 10.0",
            "20000 samples",
        ),
        ("[collect]\nmax_signal_age_ms = 0", "max_signal_age_ms"),
    ],
)
def test_invalid_config_is_a_config_error_naming_the_key(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        _load(tmp_path, text)
    assert "agent.toml" in str(info.value)


def test_unknown_signal_is_a_config_error_when_built_in_code_too() -> None:
    with pytest.raises(ConfigError, match=r"Vehicle\.Nope"):
        TriggerConfig(name="t", signal="Vehicle.Nope", op="<", threshold=0.0)
    with pytest.raises(ConfigError, match="used twice"):
        CollectConfig(groups=(GroupConfig(name="g", record="driving", rate_hz=1.0),) * 2)
    with pytest.raises(ConfigError, match="rate_hz"):  # Meta bounds, checked by the Collector
        Collector(CollectConfig(groups=(GroupConfig(name="g", record="driving", rate_hz=0.0),)))


# -- the simulator as a signal source ------------------------------------------------------


def test_simulated_signals_updates_and_read_agree() -> None:
    def source(**kw: object) -> SimulatedSignals:
        return SimulatedSignals(VehicleModel(5, start_ns=START, rate_hz=50.0), ticks=100, **kw)  # type: ignore[arg-type]

    via_updates = list(source().updates())
    reader = source()
    via_read = [reader.read(1.0) for _ in range(100)]
    assert via_read == via_updates and reader.done and reader.read(1.0) == []
    assert [u[2] for u in via_updates[1]] == [START + 20 * MS] * len(via_updates[1])
    assert len(via_updates[0]) == 31 and len(via_updates[1]) == 15  # battery every 10th tick
    paced = source(realtime=True)
    assert paced.read(1.0) == via_updates[0]  # tick 0 is due at once
    while not paced.done:
        paced.read(0.0)  # returns [] until the next tick is due; never blocks
    closed = source()
    closed.close()
    assert closed.done and list(closed.updates()) == []


def test_simulated_hard_brake_is_confined_to_its_duration() -> None:
    def speeds(brake_at: float | None) -> dict[int, tuple[float, float]]:
        model = VehicleModel(SEED, start_ns=START, rate_hz=50.0)
        out = {}
        for ups in SimulatedSignals(model, ticks=50 * 65, hard_brake_at_s=brake_at).updates():
            d = {p: v for p, v, _ in ups}
            out[ups[0][2]] = (float(d["Vehicle.Speed"]), float(d[ACCEL]))
        return out

    plain, braked = speeds(None), speeds(60.0)
    t0 = START + 60 * S
    changed = sorted(t for t in plain if plain[t] != braked[t])
    assert changed[0] == t0 and changed[-1] < t0 + 1500 * MS
    v0 = plain[t0][0]
    speed, accel = braked[t0 + S]  # km/h and m/s^2
    assert speed == pytest.approx(max(0.0, v0 - 7 * 3.6)) and accel == (-7.0 if v0 > 7 * 3.6 else 0.0)
