"""Privacy zones: hide or coarsen the position of driving samples taken near configured places
(home, work) before the agent signs them.

A ``DrivingSample`` whose position lies within ``radius_m`` of a zone's centre (distance on the
equirectangular approximation, accurate to well under 1 % for radii below 50 km; a point exactly on
the circle is inside) is changed according to the zone's ``action``:

* ``drop``: latitude, longitude, altitude, heading and horizontal accuracy become ``None`` (as without
  a GNSS fix).
* ``coarsen``: latitude and longitude are replaced by the centre of the cell of a fixed global grid
  of ``grid_m`` metres that contains the position (rows of ``grid_m`` metres of latitude from the
  south pole; in each row, columns of ``grid_m`` metres of longitude measured at the row's central
  latitude, from the antimeridian). A position maps to the same cell on every visit, and the output
  is the cell's centre whatever the position inside it. ``h_accuracy_m`` becomes at least
  ``grid_m``; heading and altitude become ``None``.

If zones overlap, ``drop`` wins over ``coarsen``, and the coarsest grid wins among ``coarsen``
zones. Samples outside every zone, samples without a position and records of other kinds are
returned unchanged (the same object).

What this does **not** protect:

* Everything but the position. Speed, acceleration, pedal, steering, odometer and battery traces
  (charging at home!) and their timestamps are unchanged, so a trace that stops in a zone, or the
  odometer difference between leaving and coming back, can point to the place; map matching a speed
  and yaw-rate trace from the zone edge can reconstruct the path inside it.
* The zone edge. Positions just outside a zone are exact, so the points where the track appears and
  disappears, over many trips, outline the zone and hint at its centre. The radius should be large
  compared with the distance to the protected place's neighbours, and the centre should not be the
  place itself.
* A coarsened cell still says which ``grid_m`` cell the vehicle is in: choose ``grid_m`` large for
  the area's density (1 km in a city contains thousands of addresses, in the countryside a few).
* Trigger events: a ``TriggerEvent`` has no position, but its window's samples are driving samples
  and are filtered like any other; its time still tells when something happened near the place.
* Data already sent: changing the zones does not change signed blocks already published.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from edge_agent.signals import config_error
from schemas.patterns import Name
from schemas.records import DrivingSample, Record

EARTH_RADIUS_M: Final = 6_371_000.0
M_PER_DEG: Final = EARTH_RADIUS_M * math.pi / 180.0
_MIN_COS: Final = 1e-3  # column width near the poles stays finite


class ZoneConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[[privacy.zones]]``"""

    name: Name
    latitude_deg: Annotated[float, Meta(ge=-90.0, le=90.0)]
    longitude_deg: Annotated[float, Meta(ge=-180.0, le=180.0)]
    radius_m: Annotated[float, Meta(gt=0.0, le=50_000.0)]
    action: Literal["drop", "coarsen"] = "drop"
    # Cell size of the coarse grid (for "coarsen"); below 100 m a cell would be about a GNSS fix.
    grid_m: Annotated[float, Meta(ge=100.0, le=100_000.0)] = 1000.0


class PrivacyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[privacy]`` in the agent's TOML."""

    zones: tuple[ZoneConfig, ...] = ()

    def __post_init__(self) -> None:
        names = [z.name for z in self.zones]
        for name in names:
            if names.count(name) > 1:
                raise config_error(f"privacy: the zone name {name!r} is used twice")


@dataclass
class PrivacyStats:
    dropped: int = 0  # driving samples whose position was removed
    coarsened: int = 0  # driving samples whose position was snapped to a grid cell
    zones: Counter[str] = field(default_factory=Counter)  # samples inside each zone


class _Zone:
    __slots__ = ("cos_lat", "drop", "grid_m", "lat", "lat_span", "lon", "name", "radius_m")

    def __init__(self, z: ZoneConfig) -> None:
        self.name, self.lat, self.lon, self.radius_m = z.name, z.latitude_deg, z.longitude_deg, z.radius_m
        self.drop, self.grid_m = z.action == "drop", z.grid_m
        self.cos_lat = math.cos(math.radians(z.latitude_deg))
        self.lat_span = z.radius_m / M_PER_DEG  # quick rejection on latitude alone


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Equirectangular distance in metres (longitude difference taken across the antimeridian)."""
    dlon = (lon2 - lon1 + 180.0) % 360.0 - 180.0
    x = math.radians(dlon) * math.cos(math.radians(0.5 * (lat1 + lat2)))
    y = math.radians(lat2 - lat1)
    return EARTH_RADIUS_M * math.hypot(x, y)


def grid_cell_centre(lat: float, lon: float, grid_m: float) -> tuple[float, float]:
    """Centre of the cell of the fixed global ``grid_m`` grid that contains (lat, lon)."""
    dlat = grid_m / M_PER_DEG
    rows = max(1, math.ceil(180.0 / dlat))
    row = min(rows - 1, max(0, math.floor((lat + 90.0) / dlat)))
    c_lat = min(90.0, -90.0 + (row + 0.5) * dlat)
    cos_c = max(_MIN_COS, math.cos(math.radians(c_lat)))
    dlon = min(360.0, grid_m / (M_PER_DEG * cos_c))
    cols = max(1, math.ceil(360.0 / dlon))
    col = min(cols - 1, max(0, math.floor((lon + 180.0) / dlon)))
    c_lon = min(180.0, -180.0 + (col + 0.5) * dlon)
    return c_lat, c_lon


class PrivacyFilter:
    """Applies the privacy zones to records; see the module docstring."""

    def __init__(self, cfg: PrivacyConfig) -> None:
        try:  # the struct's Meta bounds are checked when decoding, not by its constructor
            cfg = msgspec.convert(msgspec.to_builtins(cfg), PrivacyConfig)
        except msgspec.ValidationError as exc:
            raise config_error(f"privacy: {exc}") from exc
        self.cfg = cfg
        self.stats = PrivacyStats()
        self._zones = [_Zone(z) for z in cfg.zones]

    def apply(self, record: Record) -> Record:
        if not self._zones or type(record) is not DrivingSample:
            return record
        lat, lon = record.latitude_deg, record.longitude_deg
        if lat is None or lon is None:
            return record
        drop, grid_m = False, 0.0
        for z in self._zones:
            if abs(lat - z.lat) > z.lat_span or distance_m(z.lat, z.lon, lat, lon) > z.radius_m:
                continue
            self.stats.zones[z.name] += 1
            if z.drop:
                drop = True
            else:
                grid_m = max(grid_m, z.grid_m)
        if drop:
            self.stats.dropped += 1
            return msgspec.structs.replace(
                record,
                latitude_deg=None,
                longitude_deg=None,
                altitude_m=None,
                heading_deg=None,
                h_accuracy_m=None,
            )
        if grid_m > 0.0:
            self.stats.coarsened += 1
            c_lat, c_lon = grid_cell_centre(lat, lon, grid_m)
            return msgspec.structs.replace(
                record,
                latitude_deg=c_lat,
                longitude_deg=c_lon,
                altitude_m=None,
                heading_deg=None,
                h_accuracy_m=max(record.h_accuracy_m or 0.0, grid_m),
            )
        return record
