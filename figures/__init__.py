"""Figures anyone can recompute from proven rows: the driving score (docs/SCORING.md) and the battery
passport (docs/BATTERY.md). Pure: records in, figures out; no store, no network, no clock."""
