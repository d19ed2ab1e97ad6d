"""The contract between the vehicle's signal inputs (CAN, GNSS, ...) and the agent that samples them."""

from __future__ import annotations

from typing import Protocol

SignalUpdate = tuple[str, float | int | bool, int]
"""One signal update: ``(VSS path, value, ts_ns)``.

The value is in the VSS unit and type of the path (schemas/README.md, "Mapping to COVESA VSS"):
km/h for ``Vehicle.Speed``, degrees for angles, kWh for accumulated energies, a ``bool`` for
``...Charging.IsCharging``. ``ts_ns`` is when the value was observed, in nanoseconds since the
Unix epoch, UTC.
"""


class SignalSource(Protocol):
    """Something that produces signal updates: a CAN bus, a GNSS receiver, a replay file."""

    def read(self, timeout: float) -> list[SignalUpdate]:
        """Return the updates that arrived within ``timeout`` seconds, oldest first; may be empty.

        Returns as soon as something has arrived (after taking whatever else is immediately
        available), else after ``timeout``. Bad input is counted by the source, never raised.
        """
        ...

    def close(self) -> None:
        """Release what the source opened; ``read`` must not be called afterwards."""
        ...
