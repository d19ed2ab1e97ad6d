"""The driving score, algorithm ``vt-score/1`` (docs/SCORING.md).

Pure and deterministic: the same samples and parameters give the same figures to the last bit, so
``verify-proof --recompute-score`` repeats an operator's score from a completeness bundle alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from schemas.records import DrivingSample, TriggerEvent

ALGORITHM = "vt-score/1"
STANDARD_G = 9.80665  # m/s² per g
SIGNAL_LONG = "Vehicle.Acceleration.Longitudinal"
SIGNAL_LAT = "Vehicle.Acceleration.Lateral"

Kind = Literal["braking", "acceleration", "cornering"]
KINDS: tuple[Kind, ...] = ("braking", "acceleration", "cornering")

Pos = Annotated[float, Meta(gt=0)]
NonNeg = Annotated[float, Meta(ge=0)]


class ScoreParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Every number the score depends on; a bundle carries them with the algorithm name."""

    # Harsh events: |acceleration| at or above these, in g. Harsh defaults after Positrace (braking
    # 250 mg, acceleration 200 mg, cornering 300 mg); severe after Digital Matter's defaults
    # (4.4 m/s² ≈ 0.45 g braking and acceleration, 5.5 m/s² ≈ 0.56 g cornering).
    braking_g: Pos = 0.25
    acceleration_g: Pos = 0.20
    cornering_g: Pos = 0.30
    braking_severe_g: Pos = 0.45
    acceleration_severe_g: Pos = 0.45
    cornering_severe_g: Pos = 0.56
    # Points over a threshold at most this far apart belong to one event (more than the sampling
    # interval: at 1 Hz, consecutive samples of one manoeuvre are one event).
    event_gap_s: Pos = 2.0
    # Speeding: above this speed (130 km/h) for at least speeding_min_s in a row.
    speed_limit_mps: Pos = 130 / 3.6
    speeding_min_s: NonNeg = 5.0
    # Night: local time in [night_from_h, night_to_h), local = UTC + longitude / 15 h (solar time) when
    # the sample has a position, else UTC + utc_offset_h.
    night_from_h: Annotated[float, Meta(ge=0, lt=24)] = 22.0
    night_to_h: Annotated[float, Meta(ge=0, lt=24)] = 5.0
    utc_offset_h: Annotated[float, Meta(ge=-14, le=14)] = 0.0
    # Moving: speed at or above this. Trips are split by a standstill or a gap in the data this long.
    moving_mps: Pos = 0.5
    trip_split_s: Pos = 300.0
    # Time and distance between two samples count only if they are at most this far apart.
    max_step_s: Pos = 5.0
    # Penalty points: per event per 100 km (harsh, severe), per percent of driving time.
    points_braking: tuple[NonNeg, NonNeg] = (1.0, 3.0)
    points_acceleration: tuple[NonNeg, NonNeg] = (0.5, 2.0)
    points_cornering: tuple[NonNeg, NonNeg] = (0.5, 2.0)
    points_speeding_pct: NonNeg = 1.0
    points_night_pct: NonNeg = 0.2
    # Event rates use at least this distance, so that a short drive is not judged on one event.
    min_distance_km: Pos = 10.0


class Event(msgspec.Struct, frozen=True):
    kind: Kind
    severe: bool
    start_ns: int
    end_ns: int
    peak_g: float
    trigger: bool  # a trigger event recorded on the vehicle is part of it


class Totals(msgspec.Struct, frozen=True):
    start_ns: int
    end_ns: int
    distance_km: float
    driving_s: float
    night_s: float
    speeding_s: float
    events: dict[str, int]  # "braking", "braking_severe", ... -> count
    score: float


class Score(msgspec.Struct, frozen=True):
    algorithm: str
    params: ScoreParams
    device_id: str
    from_ns: int
    to_ns: int
    samples: int
    period: Totals
    trips: list[Totals]
    events: list[Event]


def _round1(x: float) -> float:
    """Round half away from zero to one decimal."""
    return math.floor(x * 10.0 + 0.5) / 10.0 if x >= 0 else -math.floor(-x * 10.0 + 0.5) / 10.0


def _local_hour(s: DrivingSample, p: ScoreParams) -> float:
    offset_h = s.longitude_deg / 15.0 if s.longitude_deg is not None else p.utc_offset_h
    return ((s.ts_ns / 3.6e12) + offset_h) % 24.0


def _is_night(hour: float, p: ScoreParams) -> bool:
    if p.night_from_h <= p.night_to_h:
        return p.night_from_h <= hour < p.night_to_h
    return hour >= p.night_from_h or hour < p.night_to_h


def _threshold(kind: Kind, p: ScoreParams, severe: bool) -> float:
    return {
        "braking": (p.braking_g, p.braking_severe_g),
        "acceleration": (p.acceleration_g, p.acceleration_severe_g),
        "cornering": (p.cornering_g, p.cornering_severe_g),
    }[kind][severe]


def _g_of(s: DrivingSample, kind: Kind) -> float:
    """The sample's acceleration in g, in the direction ``kind`` is about (positive = harsher)."""
    if kind == "braking":
        return -s.accel_long_mps2 / STANDARD_G
    if kind == "acceleration":
        return s.accel_long_mps2 / STANDARD_G
    return abs(s.accel_lat_mps2) / STANDARD_G


def _trigger_kind(t: TriggerEvent) -> tuple[Kind, float] | None:
    if t.signal == SIGNAL_LONG:
        return ("braking", -t.value / STANDARD_G) if t.value < 0 else ("acceleration", t.value / STANDARD_G)
    if t.signal == SIGNAL_LAT:
        return "cornering", abs(t.value) / STANDARD_G
    return None


def detect_events(
    samples: Sequence[DrivingSample], triggers: Iterable[TriggerEvent], p: ScoreParams
) -> list[Event]:
    """Harsh events: runs of samples at or over a kind's harsh threshold, merged when at most
    ``event_gap_s`` apart, with the trigger events of the same kind that fall in or near them."""
    gap_ns = round(p.event_gap_s * 1e9)
    out: list[Event] = []
    for kind in KINDS:
        harsh = _threshold(kind, p, False)
        # (ts, g, from a trigger)
        points = [(s.ts_ns, _g_of(s, kind), False) for s in samples if _g_of(s, kind) >= harsh]
        for t in triggers:
            k = _trigger_kind(t)
            if k is not None and k[0] == kind and k[1] >= harsh:
                points.append((t.ts_ns, k[1], True))
        points.sort()
        run: list[tuple[int, float, bool]] = []
        for pt in [*points, (2**63, 0.0, False)]:
            if run and pt[0] - run[-1][0] > gap_ns:
                peak = max(g for _, g, _ in run)
                out.append(
                    Event(
                        kind,
                        peak >= _threshold(kind, p, True),
                        run[0][0],
                        run[-1][0],
                        peak,
                        any(t for *_, t in run),
                    )
                )
                run = []
            if pt[0] < 2**63:
                run.append(pt)
    out.sort(key=lambda e: (e.start_ns, KINDS.index(e.kind)))
    return out


def _totals(
    samples: Sequence[DrivingSample], events: Sequence[Event], p: ScoreParams, start_ns: int, end_ns: int
) -> Totals:
    step_ns = round(p.max_step_s * 1e9)
    distance_m = driving_s = night_s = speeding_s = 0.0
    over_s = 0.0  # the current run above the limit
    for a, b in itertools.pairwise(samples):
        dt_ns = b.ts_ns - a.ts_ns
        if dt_ns == 0:  # two samples of one instant (a trigger window's and a periodic one)
            continue
        if dt_ns > step_ns:
            if over_s >= p.speeding_min_s:
                speeding_s += over_s
            over_s = 0.0
            continue
        dt = dt_ns / 1e9
        distance_m += max(0.0, b.odometer_m - a.odometer_m)
        if a.speed_mps >= p.moving_mps:
            driving_s += dt
            if _is_night(_local_hour(a, p), p):
                night_s += dt
        if a.speed_mps > p.speed_limit_mps:
            over_s += dt
        else:
            if over_s >= p.speeding_min_s:
                speeding_s += over_s
            over_s = 0.0
    if over_s >= p.speeding_min_s:
        speeding_s += over_s
    counts = {k: 0 for k in KINDS} | {f"{k}_severe": 0 for k in KINDS}
    for e in events:
        counts[f"{e.kind}_severe" if e.severe else e.kind] += 1
    km = distance_m / 1000.0
    per_100 = 100.0 / max(km, p.min_distance_km)
    points = {
        "braking": p.points_braking,
        "acceleration": p.points_acceleration,
        "cornering": p.points_cornering,
    }
    penalty = 0.0
    for k in KINDS:
        penalty += per_100 * (counts[k] * points[k][0] + counts[f"{k}_severe"] * points[k][1])
    if driving_s > 0:
        penalty += p.points_speeding_pct * 100.0 * speeding_s / driving_s
        penalty += p.points_night_pct * 100.0 * night_s / driving_s
    return Totals(
        start_ns=start_ns,
        end_ns=end_ns,
        distance_km=km,
        driving_s=driving_s,
        night_s=night_s,
        speeding_s=speeding_s,
        events=counts,
        score=_round1(min(100.0, max(0.0, 100.0 - penalty))),
    )


def split_trips(samples: Sequence[DrivingSample], p: ScoreParams) -> list[tuple[int, int]]:
    """Index ranges ``[i, j)`` of trips: from the first moving sample after a standstill or a data gap
    of at least ``trip_split_s`` to the last moving sample before the next one."""
    split_ns = round(p.trip_split_s * 1e9)
    trips: list[tuple[int, int]] = []
    start = last_moving = None
    for i, s in enumerate(samples):
        if i and start is not None and last_moving is not None:
            still = s.ts_ns - samples[last_moving].ts_ns
            if still >= split_ns:
                trips.append((start, last_moving + 1))
                start = last_moving = None
        if s.speed_mps >= p.moving_mps:
            if start is None:
                start = i
            last_moving = i
    if start is not None and last_moving is not None:
        trips.append((start, last_moving + 1))
    return trips


def sample_order(s: DrivingSample) -> tuple[int, float, float, float, float]:
    """Samples in time order; samples of one instant by odometer, speed, then the accelerations."""
    return (s.ts_ns, s.odometer_m, s.speed_mps, s.accel_long_mps2, s.accel_lat_mps2)


def score(
    device_id: str,
    samples: Iterable[DrivingSample],
    triggers: Iterable[TriggerEvent],
    from_ns: int,
    to_ns: int,
    params: ScoreParams | None = None,
) -> Score:
    """The score of ``device_id`` over ``[from_ns, to_ns]`` (vehicle clock, inclusive): the samples and
    trigger events in the period are used, whatever else is passed."""
    p = params or ScoreParams()
    ss = sorted((s for s in samples if from_ns <= s.ts_ns <= to_ns), key=sample_order)
    ts = [t for t in triggers if from_ns <= t.ts_ns <= to_ns]
    events = detect_events(ss, ts, p)
    trips = []
    for i, j in split_trips(ss, p):
        a, b = ss[i].ts_ns, ss[j - 1].ts_ns
        trips.append(_totals(ss[i:j], [e for e in events if e.start_ns <= b and e.end_ns >= a], p, a, b))
    return Score(
        algorithm=ALGORITHM,
        params=p,
        device_id=device_id,
        from_ns=from_ns,
        to_ns=to_ns,
        samples=len(ss),
        period=_totals(ss, events, p, from_ns, to_ns),
        trips=trips,
        events=events,
    )
