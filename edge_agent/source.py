"""Where samples come from. The simulator is one source; CAN and GNSS sources come later."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from schemas.records import Record


class SampleSource(Protocol):
    def samples(self) -> Iterator[Record]:
        """Yield records in time order; pacing (real time or as fast as possible) is the source's."""
        ...
