"""A dependency-free progress bar on stderr with rate and ETA (a line per 10% when stderr is not a
terminal). Dependency-free because ``common`` is shared with the edge agent, which stays lean."""

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

    def _pace(self, done: int, now: float) -> str:
        """``12,345/s, ETA 0:42``, or ``0.4/s`` below ten a second (nothing before the first second)."""
        dt = now - self.t0
        if dt < 1.0 or done <= 0:
            return ""
        rate = done / dt
        left = max(0, self.total - done) / rate
        pace = f"{rate:,.0f}" if rate >= 10 else f"{rate:.1f}"
        return f"{pace}{self.unit.strip() and ' ' + self.unit.strip()}/s, ETA {int(left // 60)}:{int(left % 60):02d}"

    def update(self, done: int, extra: str = "") -> None:
        frac = min(1.0, done / self.total)
        now = time.monotonic()
        extra = ", ".join(x for x in (self._pace(done, now), extra) if x)
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
