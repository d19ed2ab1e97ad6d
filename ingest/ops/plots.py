"""Charts for people who would rather look than read (matplotlib, imported only when asked for)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from figures.battery import Passport


def plot_passport(pp: Passport, out: str | Path) -> None:
    """SoH per day, and each charging session's energy (DC fast charging apart), over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def day(ns: int) -> datetime:
        return datetime.fromtimestamp(ns / 1e9, UTC)

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    ax1.plot([day(d) for d, _ in pp.soh_by_day], [v for _, v in pp.soh_by_day], marker=".", color="tab:green")
    ax1.set_ylabel("state of health (SOCE), %")
    ax1.set_title(
        f"battery passport {pp.device_id} ({pp.algorithm}): {pp.equivalent_full_cycles:,.1f} full cycles"
    )
    ax1.grid(alpha=0.3)
    ax1b = ax1.twinx()
    ax1b.plot(
        [day(d) for d, _ in pp.throughput_by_day],
        [v for _, v in pp.throughput_by_day],
        color="tab:gray",
        alpha=0.7,
    )
    ax1b.set_ylabel("energy throughput so far, kWh", color="tab:gray")
    s = pp.charging_sessions
    fast = [x for x in s if x.high_power_share >= 0.5]
    slow = [x for x in s if x.high_power_share < 0.5]
    ax2.bar(
        [day(x.start_ns) for x in slow],
        [x.energy_kwh for x in slow],
        width=0.02,
        color="tab:blue",
        label="AC",
    )
    ax2.bar(
        [day(x.start_ns) for x in fast],
        [x.energy_kwh for x in fast],
        width=0.02,
        color="tab:red",
        label="DC fast",
    )
    ax2.set_ylabel("energy per session, kWh")
    ax2.legend(loc="upper right")
    ax2.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
