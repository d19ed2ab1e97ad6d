"""A dependency-free progress bar on stderr (a line per 10% when stderr is not a terminal)."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    def __init__(self, label: str, total: int, *, width: int = 30, unit: str = "") -> None:
        self.label = label
        self.total = max(1, total)
        self.width = width
        self.unit = unit
        self.tty = sys.stderr.isatty()
        self._last_decile = -1
        self._last_draw = 0.0
        self.t0 = time.monotonic()

    def update(self, done: int, extra: str = "") -> None:
        frac = min(1.0, done / self.total)
        now = time.monotonic()
        if self.tty:
            if now - self._last_draw < 0.1 and frac < 1.0:
                return
            self._last_draw = now
            filled = int(frac * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            sys.stderr.write(
                f"\r{self.label:<12} [{bar}] {frac * 100:5.1f}% {done}/{self.total}{self.unit} {extra}   "
            )
            sys.stderr.flush()
        else:
            decile = int(frac * 10)
            if decile != self._last_decile:
                self._last_decile = decile
                sys.stderr.write(
                    f"{self.label}: {frac * 100:3.0f}% ({done}/{self.total}{self.unit}) {extra}\n"
                )
                sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()
