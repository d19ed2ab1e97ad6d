"""A plausible, deterministic-per-seed battery-electric vehicle.

``VehicleModel`` runs a trip state machine (accelerate, cruise, brake to a stop,
stand at lights, charge) over a simple longitudinal/lateral model and a 96s battery
pack, and emits ``DrivingSample`` every tick plus a ``BatterySample`` every
``battery_every`` ticks. All randomness comes from ``random.Random(seed)``.

Conventions follow schemas/records.py and COVESA VSS: SI units; battery current and
power positive into the pack (charging); yaw rate, lateral acceleration and steering
angle positive to the left (ISO 8855); heading in compass degrees (0 = north,
clockwise). Sample k is stamped ``start_ns + k / rate_hz``.
"""

from __future__ import annotations

import enum
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

from schemas.records import BatterySample, DrivingSample, Record

G = 9.81
EARTH_RADIUS_M = 6_371_000.0
AIR_DENSITY = 1.2
CELLS_IN_SERIES = 96
PACK_CAPACITY_J = 75_000.0 * 3600.0  # 75 kWh nominal
NOMINAL_PACK_V = CELLS_IN_SERIES * 3.7
PACK_CAPACITY_C = PACK_CAPACITY_J / NOMINAL_PACK_V
PACK_RESISTANCE_OHM = 0.06
PACK_HEAT_CAPACITY_J_PER_K = 450_000.0
MAX_TRACTION_W = 220_000.0
MAX_REGEN_W = 60_000.0
JERK_MPS3 = 4.0
WHEELBASE_M = 2.9
STEERING_RATIO = 15.0
LOW_SOC_PCT = 20.0
# Ageing (docs/BATTERY.md §5): capacity fade = calendar fade + cycle fade, faster when hot, at high
# state of charge and at high C-rates; the resistance grows with the fade.
CAL_FADE_PCT = 2.5 / math.sqrt(365.0)  # per sqrt(day at 25 °C and 50 % SoC): 2.5 % after a year
CYC_FADE_PCT_PER_EFC = 0.01  # 10 % after 1000 equivalent full cycles at 25 °C and at most 1C
ARRHENIUS_K = 50_000.0 / 8.314  # activation energy / gas constant, K
RESISTANCE_GROWTH = 0.03  # +3 % resistance per percent of capacity lost
PACK_CAPACITY_AH = PACK_CAPACITY_C / 3600.0


@dataclass(frozen=True)
class DriverProfile:
    """How a driver drives: the ranges the trip state machine draws from (before ``factor``)."""

    name: str
    factor: tuple[float, float]  # aggressiveness, drawn once per vehicle; scales acceleration and braking
    accel: tuple[float, float]  # m/s², the acceleration limit of a start
    decel: tuple[float, float]  # m/s², braking from cruise to a stop
    hard_stop_p: float  # share of stops that are hard stops
    hard_decel: tuple[float, float]  # m/s², a hard stop
    turn: tuple[float, float]  # m/s², peak lateral acceleration of a turn
    speed: float  # target speeds scaled by this


# Harsh-event rates these produce at the score's default thresholds: docs/SCORING.md.
PROFILES: dict[str, DriverProfile] = {
    p.name: p
    for p in (
        DriverProfile("calm", (0.8, 0.95), (1.0, 1.8), (1.0, 2.0), 0.01, (2.6, 3.4), (0.5, 2.0), 0.92),
        DriverProfile("normal", (0.9, 1.1), (1.2, 2.2), (1.2, 2.4), 0.06, (3.0, 4.2), (0.5, 2.6), 1.0),
        DriverProfile("aggressive", (1.05, 1.25), (1.8, 3.0), (2.0, 3.6), 0.15, (4.5, 6.5), (1.0, 3.8), 1.12),
    )
}


class Mode(enum.Enum):
    STOPPED = "stopped"
    APPROACH = "approach"  # accelerate (or ease off) towards a target speed
    CRUISE = "cruise"
    BRAKE = "brake"  # brake to a standstill
    CHARGING = "charging"


def _clamp(x: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, x))


def cell_ocv(soc_pct: float) -> float:
    """Open-circuit voltage of one cell: 3.0 V empty, 4.2 V full, knee at the bottom."""
    s = _clamp(soc_pct / 100.0, 0.0, 1.0)
    return 3.0 + 0.3 * (1.0 - math.exp(-20.0 * s)) + 0.6 * s + 0.3 * s**4


class VehicleModel:
    def __init__(
        self,
        seed: int,
        *,
        start_ns: int,
        rate_hz: float = 10.0,
        battery_every: int = 10,
        origin: tuple[float, float] = (48.137, 11.575),
        profile: str = "normal",
        soh_pct: float | None = None,
    ) -> None:
        if rate_hz <= 0.0 or battery_every < 1 or start_ns < 0:
            raise ValueError("rate_hz must be > 0, battery_every >= 1 and start_ns >= 0")
        if profile not in PROFILES:
            raise ValueError(f"unknown driver profile {profile!r} (one of {', '.join(PROFILES)})")
        self.profile = PROFILES[profile]
        self.rate_hz = float(rate_hz)
        self.battery_every = battery_every
        self._start_ns = start_ns
        self._dt = 1.0 / self.rate_hz
        self._rng = rng = random.Random(seed)
        self._tick = 0
        # Per-vehicle constants.
        self._mass = rng.uniform(1800.0, 2400.0)
        self._cda = rng.uniform(0.50, 0.70)
        self._crr = rng.uniform(0.008, 0.012)
        self._driver = rng.uniform(*self.profile.factor)  # aggressiveness
        self._ambient_c = rng.uniform(5.0, 30.0)
        self._aux_w = 300.0 + 60.0 * abs(self._ambient_c - 21.0)
        self._soh = rng.uniform(92.0, 99.0)
        if soh_pct is not None:
            self._soh = soh_pct
        self._soh0 = self._soh  # at the start; calendar and cycle fade accumulate from here
        self._age_days = 0.0  # calendar age, in days at 25 °C and 50 % SoC
        self._cycle_fade = 0.0
        self._resistance = PACK_RESISTANCE_OHM
        self._offset_ns = 0  # time spent parked (no ticks)
        # Driving state.
        self._mode = Mode.STOPPED
        self._mode_t = 0.0  # seconds spent in the current mode
        self._mode_len = rng.uniform(1.0, 5.0)
        self._target = 0.0
        self._a_max = 2.0
        self._decel = 3.0
        self._v = 0.0
        self._a_cmd = 0.0
        self._turn_a = 0.0  # signed peak lateral acceleration of the current turn
        self._turn_t = 0.0
        self._turn_len = 0.0
        self._heading = rng.uniform(0.0, 360.0)
        self._lat = origin[0] + rng.uniform(-0.02, 0.02)
        self._lon = origin[1] + rng.uniform(-0.02, 0.02)
        self._alt = 500.0 + rng.uniform(-20.0, 20.0)
        self._grade = 0.0
        self._h_acc = rng.uniform(1.0, 5.0)
        self._err_n = 0.0
        self._err_e = 0.0
        self._odo = rng.uniform(1e6, 1e8)
        # Battery state.
        self._soc = rng.uniform(35.0, 90.0)
        self._temp = self._ambient_c + rng.uniform(0.0, 3.0)
        self._current = 0.0
        self._voltage = CELLS_IN_SERIES * cell_ocv(self._soc)
        self._power = 0.0
        self._charged_j = self._consumed_j = self._charged_c = self._consumed_c = 0.0
        self._charge_w = 0.0
        self._charge_to_soc = 0.0
        self._charge_until_s = math.inf
        self._need_charge = False
        if seed % 5 == 0:  # a short initial session so short simulations show charging too
            self._start_charging(until_s=rng.uniform(30.0, 120.0), to_soc=100.0)

    # -- trip state machine -------------------------------------------------------

    def _enter(self, mode: Mode, length_s: float = math.inf) -> None:
        self._mode, self._mode_t, self._mode_len = mode, 0.0, length_s

    def _start_charging(self, *, until_s: float, to_soc: float) -> None:
        self._enter(Mode.CHARGING)
        self._charge_w = self._rng.uniform(50_000.0, 150_000.0)
        self._charge_until_s, self._charge_to_soc = until_s, to_soc
        self._need_charge = False

    def _update_mode(self) -> None:
        rng, m = self._rng, self._mode
        if self._soc < LOW_SOC_PCT and m is not Mode.CHARGING:
            self._need_charge = True
        if m is Mode.CHARGING:
            if self._soc >= self._charge_to_soc or self._mode_t >= self._charge_until_s:
                self._charge_w = 0.0
                self._enter(Mode.STOPPED, rng.uniform(5.0, 20.0))  # unplug
        elif self._need_charge and m in (Mode.APPROACH, Mode.CRUISE):
            self._decel = rng.uniform(1.5, 3.0)
            self._enter(Mode.BRAKE)
        elif m is Mode.STOPPED and self._need_charge:
            self._start_charging(until_s=math.inf, to_soc=rng.uniform(78.0, 82.0))
        elif m is Mode.STOPPED and self._mode_t >= self._mode_len:
            self._target = rng.uniform(8.0, 35.0) * self.profile.speed
            self._a_max = _clamp(rng.uniform(*self.profile.accel) * self._driver, 0.8, 4.0)
            self._enter(Mode.APPROACH)
        elif m is Mode.APPROACH and abs(self._target - self._v) < 0.5:
            self._enter(Mode.CRUISE, rng.uniform(20.0, 120.0))
        elif m is Mode.CRUISE and self._mode_t >= self._mode_len:
            if rng.random() < 0.35:
                prof = self.profile
                hard = rng.random() < prof.hard_stop_p
                self._decel = _clamp(
                    rng.uniform(*(prof.hard_decel if hard else prof.decel)) * self._driver, 1.0, 8.0
                )
                self._enter(Mode.BRAKE)
            else:
                self._target = rng.uniform(8.0, 35.0) * self.profile.speed
                self._enter(Mode.APPROACH)

    def _resistance_n(self, v: float) -> float:
        rolling = self._crr * self._mass * G if v > 0.0 else 0.0
        return rolling + 0.5 * AIR_DENSITY * self._cda * v * v

    def _desired_accel(self) -> float:
        v, m = self._v, self._mode
        if m is Mode.APPROACH:
            power_limit = (MAX_TRACTION_W / max(v, 1.0) - self._resistance_n(v)) / self._mass
            ease_off = self.profile.decel[1] * self._driver  # slowing to a lower target speed
            return _clamp(0.5 * (self._target - v), -ease_off, min(self._a_max, power_limit))
        if m is Mode.CRUISE:
            return _clamp(0.4 * (self._target - v) + self._rng.gauss(0.0, 0.15), -1.0, 1.0)
        if m is Mode.BRAKE:
            return -min(self._decel, max(1.0, 0.8 * v))
        return 0.0

    def _update_turn(self) -> float:
        """Advance the current gentle turn; return the path curvature (1/m, + = left)."""
        can_turn = self._turn_len == 0.0 and self._v > 5.0 and self._mode in (Mode.APPROACH, Mode.CRUISE)
        if can_turn and self._rng.random() < self._dt / 25.0:  # about one turn every 25 s of driving
            self._turn_a = self._rng.choice((-1.0, 1.0)) * self._rng.uniform(*self.profile.turn)
            self._turn_t, self._turn_len = 0.0, self._rng.uniform(3.0, 12.0)
        if self._turn_len == 0.0:
            return 0.0
        self._turn_t += self._dt
        if self._turn_t >= self._turn_len or self._v < 1.0:
            self._turn_len = 0.0
            return 0.0
        lat_a = self._turn_a * math.sin(math.pi * self._turn_t / self._turn_len)
        return lat_a / max(self._v, 5.0) ** 2

    # -- one tick -----------------------------------------------------------------

    def step(self) -> list[Record]:
        rng, dt = self._rng, self._dt
        ts = self.now_ns
        self._update_mode()
        self._mode_t += dt

        v0 = self._v
        a_des = self._desired_accel()
        self._a_cmd += _clamp(a_des - self._a_cmd, -JERK_MPS3 * dt, JERK_MPS3 * dt)
        v1 = 0.0 if self._mode in (Mode.STOPPED, Mode.CHARGING) else max(0.0, v0 + self._a_cmd * dt)
        if v1 == 0.0:
            self._a_cmd = 0.0
            if self._mode is Mode.BRAKE:
                self._enter(Mode.STOPPED, rng.uniform(5.0, 45.0))
        self._v = v1
        accel = (v1 - v0) / dt
        v_avg = 0.5 * (v0 + v1)

        # Lateral motion, heading and position.
        curvature = self._update_turn()
        yaw = v1 * curvature
        self._heading = (self._heading - math.degrees(yaw * dt)) % 360.0
        dist = v_avg * dt
        self._odo += dist
        hdg = math.radians(self._heading)
        self._lat = _clamp(self._lat + math.degrees(dist * math.cos(hdg) / EARTH_RADIUS_M), -89.9, 89.9)
        cos_lat = math.cos(math.radians(self._lat))
        lon = self._lon + math.degrees(dist * math.sin(hdg) / (EARTH_RADIUS_M * cos_lat))
        self._lon = (lon + 180.0) % 360.0 - 180.0
        grade = 0.998 * self._grade + rng.gauss(0.0, 0.0005) - 2e-6 * (self._alt - 500.0)  # drifts, reverts
        self._grade = _clamp(grade, -0.06, 0.06)
        self._alt += dist * self._grade
        self._h_acc = _clamp(self._h_acc + rng.gauss(0.0, 0.05), 1.0, 5.0)
        k = 0.99  # GNSS error as a first-order Gauss-Markov process, std ~ h_acc / 2
        noise = 0.5 * self._h_acc * math.sqrt(1.0 - k * k)
        self._err_n = k * self._err_n + rng.gauss(0.0, noise)
        self._err_e = k * self._err_e + rng.gauss(0.0, noise)
        gnss_lat = _clamp(self._lat + math.degrees(self._err_n / EARTH_RADIUS_M), -90.0, 90.0)
        gnss_lon = _clamp(self._lon + math.degrees(self._err_e / (EARTH_RADIUS_M * cos_lat)), -180.0, 180.0)

        # Longitudinal force, pedals and battery power.
        force = self._mass * accel + self._resistance_n(v_avg)
        mech_w = force * v_avg
        accel_pedal = brake_pedal = 0.0
        if self._mode is Mode.CHARGING:
            battery_w = 0.94 * self._charge_w_now() - self._aux_w
        else:
            if v1 == 0.0:
                brake_pedal = _clamp(25.0 + rng.gauss(0.0, 2.0), 0.0, 100.0)  # holding at a standstill
            elif force > 0.0:
                accel_pedal = _clamp(100.0 * force / (self._mass * 3.5 + 1000.0), 0.0, 100.0)
            else:
                brake_pedal = _clamp(100.0 * -force / (self._mass * 8.0), 0.0, 100.0)
            if mech_w >= 0.0:
                battery_w = -(mech_w / 0.9 + self._aux_w)
            else:
                battery_w = min(-mech_w * 0.7, MAX_REGEN_W) - self._aux_w
        self._update_battery(battery_w, dt)

        driving = DrivingSample(
            ts_ns=ts,
            speed_mps=v1,
            accel_long_mps2=accel + rng.gauss(0.0, 0.02),
            accel_lat_mps2=v1 * yaw + rng.gauss(0.0, 0.02),
            accel_vert_mps2=rng.gauss(0.0, 0.05 + 0.005 * v1),
            yaw_rate_radps=yaw,
            latitude_deg=gnss_lat,
            longitude_deg=gnss_lon,
            altitude_m=self._alt + rng.gauss(0.0, 0.5 * self._h_acc),
            heading_deg=self._heading,
            h_accuracy_m=self._h_acc,
            accel_pedal_pct=accel_pedal,
            brake_pedal_pct=brake_pedal,
            steering_angle_rad=STEERING_RATIO * math.atan(WHEELBASE_M * curvature),
            gear=1 if v1 > 0.0 else 0,
            odometer_m=self._odo,
        )
        out: list[Record] = [driving]
        if self._tick % self.battery_every == 0:
            out.append(self._battery_sample(ts))
        self._tick += 1
        return out

    # -- battery ------------------------------------------------------------------

    def _charge_w_now(self) -> float:
        """Charger power: a DC charger tapers above 60 % SoC but never under 50 kW; AC stays flat."""
        taper = 1.0 if self._soc < 60.0 else 1.0 - 0.65 * (self._soc - 60.0) / 40.0
        return max(min(50_000.0, self._charge_w), self._charge_w * taper)

    @property
    def now_ns(self) -> int:
        """The time of the next sample."""
        return self._start_ns + self._offset_ns + round(self._tick * 1e9 / self.rate_hz)

    def _age(self, dt: float) -> None:
        """Calendar and cycle fade over ``dt`` seconds at the present temperature, SoC and current."""
        t = self._temp
        arrhenius = math.exp(ARRHENIUS_K * (1.0 / 298.15 - 1.0 / (t + 273.15)))
        self._age_days += dt / 86_400.0 * arrhenius * (0.6 + 0.8 * self._soc / 100.0)
        c_rate = abs(self._current) / PACK_CAPACITY_AH
        stress = (1.0 + 0.5 * max(0.0, c_rate - 1.0)) * (
            1.0 + 0.04 * max(0.0, t - 30.0) + 0.03 * max(0.0, 10.0 - t)
        )
        self._cycle_fade += (
            CYC_FADE_PCT_PER_EFC * abs(self._current) * dt / 3600.0 / (2.0 * PACK_CAPACITY_AH) * stress
        )
        fade = CAL_FADE_PCT * math.sqrt(self._age_days) + self._cycle_fade
        self._soh = max(0.0, self._soh0 - fade)
        self._resistance = PACK_RESISTANCE_OHM * (1.0 + RESISTANCE_GROWTH * fade)

    # -- a life: parking, charging at home, the end of a trip ----------------------

    def set_ambient(self, celsius: float) -> None:
        """The air temperature from now on (seasons, day and night)."""
        self._ambient_c = celsius
        self._aux_w = 300.0 + 60.0 * abs(celsius - 21.0)

    @property
    def soc_pct(self) -> float:
        return self._soc

    @property
    def soh_pct(self) -> float:
        return self._soh

    def _standstill(self) -> None:
        self._v = self._a_cmd = 0.0
        self._turn_len = 0.0
        self._need_charge = False
        self._charge_w = 0.0
        self._enter(Mode.STOPPED, self._rng.uniform(1.0, 5.0))

    def park(self, seconds: float, *, sample_every_s: float = 1800.0) -> list[Record]:
        """Stand parked, switched off, for ``seconds``: the pack cools towards the air and ages by
        the calendar; a battery sample every ``sample_every_s``. No driving samples."""
        self._standstill()
        out: list[Record] = []
        left = seconds
        while left > 0:
            dt = min(sample_every_s, left)
            self._temp = self._ambient_c + (self._temp - self._ambient_c) * math.exp(-dt / 1800.0)
            self._current = self._power = 0.0
            self._voltage = CELLS_IN_SERIES * cell_ocv(self._soc)
            self._age(dt)
            self._offset_ns += round(dt * 1e9)
            left -= dt
            out.append(self._battery_sample(self.now_ns))
        return out

    def charge(
        self, power_w: float, to_soc: float, max_s: float, *, sample_every_s: float = 60.0
    ) -> list[Record]:
        """Plugged in while parked (an AC wallbox, or a DC charger), until ``to_soc`` or ``max_s``;
        a battery sample every ``sample_every_s``."""
        self._standstill()
        self._enter(Mode.CHARGING)
        self._charge_w = power_w
        out: list[Record] = []
        t = 0.0
        while t < max_s and self._soc < to_soc:
            dt = min(sample_every_s, max_s - t)
            self._update_battery(0.94 * self._charge_w_now() - 200.0, dt)
            self._offset_ns += round(dt * 1e9)
            t += dt
            out.append(self._battery_sample(self.now_ns))
        self._standstill()
        return out

    def finish_trip(self, max_s: float = 120.0) -> list[Record]:
        """Brake gently to a standstill (the end of a trip); the samples until stopped."""
        out: list[Record] = []
        if self._mode is not Mode.STOPPED:
            self._decel = self._rng.uniform(*self.profile.decel) * self._driver * 0.7
            self._need_charge = False
            self._enter(Mode.BRAKE)
            for _ in range(round(max_s * self.rate_hz)):
                out += self.step()
                if self._v == 0.0:
                    break
        self._standstill()
        return out

    def _update_battery(self, power_w: float, dt: float) -> None:
        r = self._resistance
        ocv = CELLS_IN_SERIES * cell_ocv(self._soc)
        power_w = max(power_w, -0.8 * ocv * ocv / (4.0 * r))  # stay on the solvable side
        # Terminal voltage V = OCV + I·R with I > 0 charging; solve V·I = P for I.
        current = (-ocv + math.sqrt(ocv * ocv + 4.0 * r * power_w)) / (2.0 * r)
        self._current, self._voltage = current, ocv + current * r
        self._power = self._voltage * current
        if self._power >= 0.0:
            self._charged_j += self._power * dt
            self._charged_c += current * dt
        else:
            self._consumed_j -= self._power * dt
            self._consumed_c -= current * dt
        capacity_c = PACK_CAPACITY_C * self._soh / 100.0
        self._soc = _clamp(self._soc + 100.0 * current * dt / capacity_c, 0.0, 100.0)
        heat_w = current * current * r
        cooling = (self._temp - self._ambient_c) / 1800.0 + max(0.0, self._temp - 32.0) / 120.0
        self._temp += dt * (heat_w / PACK_HEAT_CAPACITY_J_PER_K - cooling)
        self._age(dt)

    def _battery_sample(self, ts: int) -> BatterySample:
        spread_t = 0.8 + 0.004 * abs(self._current)
        cell = self._voltage / CELLS_IN_SERIES
        spread_v = 0.004 + 0.00003 * abs(self._current) + 0.0002 * abs(self._soc - 50.0)
        return BatterySample(
            ts_ns=ts,
            soc_pct=self._soc,
            soh_pct=self._soh,
            pack_voltage_v=self._voltage,
            pack_current_a=self._current,
            power_w=self._power,
            temp_min_c=self._temp - spread_t,
            temp_max_c=self._temp + 1.5 * spread_t,
            temp_avg_c=self._temp,
            cell_voltage_min_v=cell - spread_v,
            cell_voltage_max_v=cell + 0.5 * spread_v,
            charged_energy_j=self._charged_j,
            consumed_energy_j=self._consumed_j,
            charged_throughput_c=self._charged_c,
            consumed_throughput_c=self._consumed_c,
            is_charging=self._mode is Mode.CHARGING,
            charge_power_w=self._charge_w_now() if self._mode is Mode.CHARGING else 0.0,
        )


class SimulatedSource:
    """Records of ``ticks`` steps of a model, paced in real time or not."""

    def __init__(self, model: VehicleModel, *, ticks: int, realtime: bool = False) -> None:
        self._model, self._ticks, self._realtime = model, ticks, realtime

    def samples(self) -> Iterator[Record]:
        start = time.monotonic()
        for k in range(self._ticks):
            if self._realtime:
                delay = start + k / self._model.rate_hz - time.monotonic()
                if delay > 0.0:
                    time.sleep(delay)
            yield from self._model.step()
