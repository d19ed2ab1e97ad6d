"""Privacy zones: drop and coarsen inside, untouched outside, a fixed global grid."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.config import ConfigError, load_toml
from edge_agent.privacy import (
    EARTH_RADIUS_M,
    PrivacyConfig,
    PrivacyFilter,
    ZoneConfig,
    distance_m,
    grid_cell_centre,
)
from schemas.block import decode_record, encode_record
from schemas.records import DrivingSample
from tests.records import battery, driving, trigger

T0 = 1_700_000_000_000_000_000
HOME = (48.137, 11.575)
WORK = (48.20, 11.60)


def at(lat: float | None, lon: float | None, ts_ns: int = T0, **kw: object) -> DrivingSample:
    return driving(ts_ns, latitude_deg=lat, longitude_deg=lon, **kw)


def north_of(lat: float, lon: float, metres: float) -> tuple[float, float]:
    return lat + math.degrees(metres / EARTH_RADIUS_M), lon


def filt(*zones: ZoneConfig) -> PrivacyFilter:
    return PrivacyFilter(PrivacyConfig(zones=zones))


HOME_DROP = ZoneConfig(name="home", latitude_deg=HOME[0], longitude_deg=HOME[1], radius_m=300.0)
WORK_COARSE = ZoneConfig(
    name="work", latitude_deg=WORK[0], longitude_deg=WORK[1], radius_m=2000.0, action="coarsen", grid_m=1000.0
)


def test_drop_inside_unchanged_outside() -> None:
    f = filt(HOME_DROP)
    inside = f.apply(at(*north_of(*HOME, 250.0)))
    assert isinstance(inside, DrivingSample)
    assert (inside.latitude_deg, inside.longitude_deg, inside.altitude_m, inside.heading_deg) == (None,) * 4
    assert inside.h_accuracy_m is None
    assert inside.speed_mps == 12.5 and inside.odometer_m == 12_345_678.0 and inside.ts_ns == T0
    outside = at(*north_of(*HOME, 350.0))
    assert f.apply(outside) is outside
    assert f.stats.dropped == 1 and f.stats.coarsened == 0 and f.stats.zones == {"home": 1}


def test_the_edge_is_inside() -> None:
    f = filt(HOME_DROP)
    just_in = at(*north_of(*HOME, 300.0 * (1 - 1e-9)))
    just_out = at(*north_of(*HOME, 300.0 * (1 + 1e-9)))
    assert f.apply(just_in).latitude_deg is None  # type: ignore[union-attr]
    assert f.apply(just_out) is just_out
    # east-west: the longitude distance shrinks with the cosine of the latitude
    dlon = math.degrees(299.0 / (EARTH_RADIUS_M * math.cos(math.radians(HOME[0]))))
    assert f.apply(at(HOME[0], HOME[1] + dlon)).latitude_deg is None  # type: ignore[union-attr]
    assert f.apply(at(HOME[0], HOME[1] + dlon * 1.01)).latitude_deg is not None  # type: ignore[union-attr]


def test_coarsen_snaps_to_a_cell_centre_and_widens_the_accuracy() -> None:
    f = filt(WORK_COARSE)
    lat, lon = north_of(*WORK, 700.0)
    rec = at(lat, lon)
    out = f.apply(rec)
    assert isinstance(out, DrivingSample) and out is not rec
    assert out.latitude_deg is not None and out.longitude_deg is not None
    assert (out.latitude_deg, out.longitude_deg) != (lat, lon)
    assert (out.latitude_deg, out.longitude_deg) == grid_cell_centre(lat, lon, 1000.0)
    assert distance_m(lat, lon, out.latitude_deg, out.longitude_deg) <= 1000.0 / math.sqrt(2) + 1
    assert out.h_accuracy_m == 1000.0 and out.heading_deg is None and out.altitude_m is None
    assert out.speed_mps == rec.speed_mps and out.ts_ns == rec.ts_ns
    assert f.stats.coarsened == 1
    # an accuracy worse than the grid is kept
    worse = f.apply(at(*WORK, h_accuracy_m=5000.0))
    assert worse.h_accuracy_m == 5000.0  # type: ignore[union-attr]


def test_revisits_give_the_same_cell() -> None:
    f = filt(WORK_COARSE)
    first = f.apply(at(*WORK))
    again = f.apply(at(*WORK, ts_ns=T0 + 86_400 * 10**9))
    assert (first.latitude_deg, first.longitude_deg) == (again.latitude_deg, again.longitude_deg)  # type: ignore[union-attr]
    # a nearby position in the same cell maps to the same centre: the cell says nothing finer
    c_lat, c_lon = grid_cell_centre(*WORK, 1000.0)
    near = [(c_lat + dy, c_lon + dx) for dy in (-0.004, 0.0, 0.004) for dx in (-0.006, 0.0, 0.006)]
    assert {grid_cell_centre(lat, lon, 1000.0) for lat, lon in near} == {(c_lat, c_lon)}
    # and a fresh filter (a restart) uses the same grid
    assert filt(WORK_COARSE).apply(at(*WORK)) == first


@settings(max_examples=400, deadline=None)
@given(
    lat=st.floats(-90.0, 90.0),
    lon=st.floats(-180.0, 180.0),
    grid_m=st.floats(100.0, 100_000.0),
)
def test_grid_cells_are_valid_and_near(lat: float, lon: float, grid_m: float) -> None:
    c_lat, c_lon = grid_cell_centre(lat, lon, grid_m)
    assert -90.0 <= c_lat <= 90.0 and -180.0 <= c_lon <= 180.0
    assert abs(c_lat - lat) <= math.degrees(grid_m / EARTH_RADIUS_M) / 2 * (1 + 1e-9)
    if abs(lat) < 80.0:
        assert distance_m(lat, lon, c_lat, c_lon) <= grid_m * 0.75
        assert (c_lat, c_lon) == grid_cell_centre(c_lat, c_lon, grid_m)  # a centre is in its own cell


@settings(max_examples=200, deadline=None)
@given(dist=st.floats(0.0, 2000.0), bearing=st.floats(0.0, 360.0))
def test_coarsened_position_is_never_the_exact_one(dist: float, bearing: float) -> None:
    lat = WORK[0] + math.degrees(dist * math.cos(math.radians(bearing)) / EARTH_RADIUS_M)
    lon = WORK[1] + math.degrees(
        dist * math.sin(math.radians(bearing)) / (EARTH_RADIUS_M * math.cos(math.radians(WORK[0])))
    )
    rec = at(lat, lon)
    out = filt(WORK_COARSE).apply(rec)
    if out is rec:
        assert distance_m(*WORK, lat, lon) > 2000.0
        return
    assert isinstance(out, DrivingSample)
    assert (out.latitude_deg, out.longitude_deg) == grid_cell_centre(lat, lon, 1000.0)
    assert (out.latitude_deg, out.longitude_deg) != (lat, lon)
    assert decode_record(encode_record(out)) == out


def test_overlapping_zones_drop_wins_and_the_coarsest_grid_wins() -> None:
    big = ZoneConfig(
        name="city",
        latitude_deg=HOME[0],
        longitude_deg=HOME[1],
        radius_m=5000.0,
        action="coarsen",
        grid_m=2000.0,
    )
    small = msgspec.structs.replace(big, name="district", radius_m=1000.0, grid_m=500.0)
    f = filt(big, small, HOME_DROP)
    assert f.apply(at(*HOME)).latitude_deg is None  # type: ignore[union-attr]
    out = f.apply(at(*north_of(*HOME, 600.0)))
    assert out.h_accuracy_m == 2000.0  # type: ignore[union-attr]
    assert f.stats.zones == {"city": 2, "district": 2, "home": 1}


def test_other_records_and_no_fix_are_untouched() -> None:
    f = filt(HOME_DROP, WORK_COARSE)
    event = trigger(T0)
    no_fix = at(None, None, altitude_m=None, heading_deg=None, h_accuracy_m=None)
    for rec in (battery(T0, is_charging=True, charge_power_w=11_000.0), event, no_fix):
        assert f.apply(rec) is rec
    assert f.stats.dropped == f.stats.coarsened == 0
    # no zones: everything passes as is
    home = at(*HOME)
    assert filt().apply(home) is home


def test_antimeridian_zone() -> None:
    f = filt(ZoneConfig(name="fiji", latitude_deg=-17.0, longitude_deg=179.999, radius_m=1000.0))
    assert f.apply(at(-17.0, -179.999)).latitude_deg is None  # type: ignore[union-attr]  # 213 m east
    assert f.apply(at(-17.0, -179.98)).latitude_deg is not None  # type: ignore[union-attr]


class _AgentToml(msgspec.Struct, forbid_unknown_fields=True):
    privacy: PrivacyConfig = msgspec.field(default_factory=PrivacyConfig)


def test_toml(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        """
        [[privacy.zones]]
        name = "home"
        latitude_deg = 48.137
        longitude_deg = 11.575
        radius_m = 300.0
        action = "drop"
        [[privacy.zones]]
        name = "work"
        latitude_deg = 48.2
        longitude_deg = 11.6
        radius_m = 2000.0
        action = "coarsen"
        """
    )
    cfg = load_toml(path, _AgentToml).privacy
    assert cfg.zones[0] == HOME_DROP
    assert cfg.zones[1] == WORK_COARSE  # grid_m defaults to 1000


@pytest.mark.parametrize(
    ("zone", "needle"),
    [
        ('name = "z"\nlatitude_deg = 91.0\nlongitude_deg = 0.0\nradius_m = 1.0', "latitude_deg"),
        ('name = "z"\nlatitude_deg = 0.0\nlongitude_deg = -181.0\nradius_m = 1.0', "longitude_deg"),
        ('name = "z"\nlatitude_deg = 0.0\nlongitude_deg = 0.0\nradius_m = 0.0', "radius_m"),
        ('name = "z"\nlatitude_deg = 0.0\nlongitude_deg = 0.0\nradius_m = 1.0\naction = "blur"', "action"),
        ('name = "z"\nlatitude_deg = 0.0\nlongitude_deg = 0.0\nradius_m = 1.0\ngrid_m = 5.0', "grid_m"),
        ('name = "z"\nlatitude_deg = 0.0\nlongitude_deg = 0.0\nradius_m = 1.0\ncolour = 1', "colour"),
        ('name = "z"\nlatitude_deg = 0.0\nlongitude_deg = 0.0\nradius_m = 1.0\n[[privacy.zones]]\n'
         'name = "z"\nlatitude_deg = 1.0\nlongitude_deg = 1.0\nradius_m = 1.0', "'z' is used twice"),
    ],
)  # fmt: skip
def test_invalid_zones(tmp_path: Path, zone: str, needle: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[[privacy.zones]]\n" + zone)
    with pytest.raises(ConfigError, match=needle):
        load_toml(path, _AgentToml)


def test_invalid_zones_built_in_code() -> None:
    with pytest.raises(ConfigError, match="used twice"):
        PrivacyConfig(zones=(HOME_DROP, HOME_DROP))
    with pytest.raises(ConfigError, match="radius_m"):
        filt(msgspec.structs.replace(HOME_DROP, radius_m=-1.0))
