"""The simulator as a signal source: a ``VehicleModel``'s records as VSS signal updates.

``SimulatedSignals`` steps the model and turns each step's records into ``SignalUpdate`` lists
(VSS units, via ``record_to_updates``), one list per model tick, stamped with the model's own
clock. Build the model with the rate the source should have (e.g. ``rate_hz=50`` so a 50 Hz trigger
window sees distinct samples). The battery signals come every ``battery_every`` ticks of the model.

A hard brake can be injected at ``hard_brake_at_s`` seconds after the first tick: for
``brake_duration_s`` the driving signals are post-processed (the model itself is not touched) to a
constant deceleration of ``brake_decel_mps2`` from the speed at the start of the brake, down to a
standstill at most: longitudinal acceleration ``-brake_decel_mps2`` (0 once stopped), speed
decreasing linearly, brake pedal at ``brake_pedal_pct``, accelerator released, gear 0 once stopped.
The model does not know about it: after the brake the signals are the model's again, so the speed
jumps back to what the model would have had. Everything else (position, yaw, battery) is the
model's. If the vehicle is standing at that moment, nothing changes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgspec

from edge_agent.inputs import SignalUpdate
from edge_agent.signals import record_to_updates
from edge_agent.sources.vehicle import VehicleModel
from schemas.records import DrivingSample, Record


class SimulatedSignals:
    """``ticks`` steps of ``model`` as lists of signal updates; see the module docstring.

    Two ways to consume it: ``updates()`` yields one list per tick (as fast as possible, or paced
    to the wall clock with ``realtime=True``), and ``read(timeout)`` / ``close()`` make it an
    ``edge_agent.inputs.SignalSource`` (``done`` tells when the ticks are used up).
    """

    def __init__(
        self,
        model: VehicleModel,
        *,
        ticks: int,
        hard_brake_at_s: float | None = None,
        brake_decel_mps2: float = 7.0,
        brake_duration_s: float = 1.5,
        brake_pedal_pct: float = 85.0,
        realtime: bool = False,
        vss_integers: bool = True,
    ) -> None:
        if ticks < 0 or brake_decel_mps2 <= 0.0 or brake_duration_s < 0.0:
            raise ValueError("ticks must be >= 0, brake_decel_mps2 > 0 and brake_duration_s >= 0")
        if not 0.0 <= brake_pedal_pct <= 100.0:
            raise ValueError("brake_pedal_pct must be within 0 .. 100")
        self._model, self._ticks, self._realtime = model, ticks, realtime
        self._brake_at_s = hard_brake_at_s
        self._decel, self._brake_len_ns = brake_decel_mps2, round(brake_duration_s * 1e9)
        self._pedal = brake_pedal_pct
        self._vss_integers = vss_integers
        self._brake_start_ns = -1  # first tick of the brake, once reached
        self._brake_v0 = 0.0
        self._first_ts: int | None = None
        self._k = 0  # next tick
        self._t_start: float | None = None  # wall clock (monotonic) of tick 0, when paced

    @property
    def done(self) -> bool:
        return self._k >= self._ticks

    def updates(self) -> Iterator[list[SignalUpdate]]:
        """One list of updates per model tick, in time order; paced to the wall clock if ``realtime``."""
        while not self.done:
            if self._realtime:
                delay = self._due() - time.monotonic()
                if delay > 0.0:
                    time.sleep(delay)
            yield self._step()

    def read(self, timeout: float) -> list[SignalUpdate]:
        """The next tick's updates; when paced, waits for it at most ``timeout`` seconds (then ``[]``).
        ``[]`` once ``done``."""
        if self.done:
            return []
        if self._realtime:
            delay = self._due() - time.monotonic()
            if delay > timeout:
                time.sleep(max(0.0, timeout))
                return []
            if delay > 0.0:
                time.sleep(delay)
        return self._step()

    def close(self) -> None:
        self._k = self._ticks

    def _due(self) -> float:
        if self._t_start is None:
            self._t_start = time.monotonic()
        return self._t_start + self._k / self._model.rate_hz

    def _step(self) -> list[SignalUpdate]:
        self._k += 1
        out: list[SignalUpdate] = []
        for record in self._model.step():
            if self._first_ts is None:
                self._first_ts = record.ts_ns
            if self._brake_at_s is not None and isinstance(record, DrivingSample):
                record = self._brake(record, self._first_ts)
            out.extend(record_to_updates(record, vss_integers=self._vss_integers))
        return out

    def _brake(self, d: DrivingSample, first_ts: int) -> Record:
        assert self._brake_at_s is not None
        begin = first_ts + round(self._brake_at_s * 1e9)
        if d.ts_ns < begin:
            return d
        if self._brake_start_ns < 0:
            if d.speed_mps <= 0.0:  # standing: nothing to brake
                self._brake_at_s = None
                return d
            self._brake_start_ns, self._brake_v0 = d.ts_ns, d.speed_mps
        elapsed_ns = d.ts_ns - self._brake_start_ns
        if elapsed_ns >= self._brake_len_ns:
            return d
        v = max(0.0, self._brake_v0 - self._decel * elapsed_ns / 1e9)
        return msgspec.structs.replace(
            d,
            speed_mps=v,
            accel_long_mps2=-self._decel if v > 0.0 else 0.0,
            accel_pedal_pct=0.0,
            brake_pedal_pct=self._pedal,
            gear=d.gear if v > 0.0 else 0,
        )
