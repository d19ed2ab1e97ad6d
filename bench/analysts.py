"""Analysts during a load run: a fixed dashboard of five queries every few seconds through the
read-only path, each query's latency recorded. The dashboard opens its reader once
(``wiring.open_store(read_only=True)``, as `telematics query` does) and takes the latest snapshot of
the lake at the start of each round (``Store.refresh``), as a live dashboard keeps its connection.

The queries look at the last minutes of the fleet, as a live dashboard would. ``ts`` is the sample's
time on the vehicle's clock (the schedule clock in a benchmark, which runs in step with the wall clock).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ingest.config import Config
    from ingest.storage.store import Store

G = 9.80665

# (name, SQL with one parameter: the window's start as a UTC timestamp, window seconds)
DASHBOARD: tuple[tuple[str, str, int], ...] = (
    (
        "vehicles seen in the last minute",
        "SELECT count(DISTINCT device_id) FROM driving_samples WHERE ts > ?",
        60,
    ),
    (
        "20 fastest vehicles now",
        "SELECT device_id, arg_max(speed_mps, ts) AS v FROM driving_samples WHERE ts > ?"
        " GROUP BY device_id ORDER BY v DESC LIMIT 20",
        60,
    ),
    (
        "records per 10 s, last 5 minutes",
        "SELECT time_bucket(INTERVAL 10 SECOND, ts) AS b, count(*) FROM driving_samples WHERE ts > ?"
        " GROUP BY b ORDER BY b",
        300,
    ),
    (
        "batteries below 20 % now",
        "SELECT device_id, arg_max(soc_pct, ts) AS soc FROM battery_samples WHERE ts > ?"
        " GROUP BY device_id HAVING soc < 20 ORDER BY soc",
        300,
    ),
    (
        "harshest brakers, last 5 minutes",
        f"SELECT device_id, count(*) AS n FROM driving_samples WHERE ts > ? AND accel_long_mps2 < {-0.25 * G}"
        " GROUP BY device_id ORDER BY n DESC LIMIT 10",
        300,
    ),
)
OPEN = "open a reader (once)"
REFRESH = "take the latest snapshot"


class Analysts:
    """Runs ``DASHBOARD`` every ``every_s`` seconds in a thread until ``stop``; ``latencies()`` gives
    p50/p95/max ms per query (and for opening the reader, taking each snapshot), ``errors`` what failed."""

    def __init__(self, cfg: Config, every_s: float) -> None:
        self.cfg, self.every_s = cfg, every_s
        self.times: dict[str, list[float]] = {
            name: [] for name in (OPEN, REFRESH, *(q[0] for q in DASHBOARD))
        }
        self.rows: dict[str, int] = {}
        self.errors: list[str] = []
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="analysts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        from ingest import wiring

        store: Store | None = None
        try:
            while not self._stop.wait(self.every_s):
                t = time.perf_counter()
                step = OPEN if store is None else REFRESH
                try:
                    if store is None:
                        store = wiring.open_store(self.cfg, read_only=True)
                    else:
                        store.refresh()
                except Exception as exc:  # reported in the benchmark's result, the run goes on
                    self.errors.append(f"{step}: {type(exc).__name__}: {exc}")
                    if store is not None:  # open it again next round
                        with contextlib.suppress(Exception):
                            store.close()
                        store = None
                    continue
                self.times[step].append((time.perf_counter() - t) * 1e3)
                self._round(store.con)
                self.rounds += 1
                with contextlib.suppress(Exception):  # a failure shows at the next refresh
                    store.release()  # nothing held open in the catalog until the next round
        finally:
            if store is not None:
                store.close()

    def _round(self, con: Any) -> None:
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        for name, sql, window_s in DASHBOARD:
            t = time.perf_counter()
            try:
                rows = con.execute(sql, [now - dt.timedelta(seconds=window_s)]).fetchall()
            except Exception as exc:
                self.errors.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                continue
            self.times[name].append((time.perf_counter() - t) * 1e3)
            self.rows[name] = len(rows)

    def latencies(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, ts in self.times.items():
            if ts:
                v = sorted(ts)
                out[name] = {
                    "p50": round(v[len(v) // 2], 1),
                    "p95": round(v[min(len(v) - 1, int(0.95 * len(v)))], 1),
                    "max": round(v[-1], 1),
                    "n": len(v),
                }
        return out
