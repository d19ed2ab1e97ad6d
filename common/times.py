"""Times as people read them."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_utc(ns: int) -> str:
    """Nanoseconds since the epoch as ISO 8601 to the second, UTC: ``2026-12-01T10:00:00+00:00``."""
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="seconds")
