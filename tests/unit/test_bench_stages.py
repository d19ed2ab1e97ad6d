"""Smoke test of the stage microbenchmarks (bench/stages.py) at --quick sizes. Never asserts speed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from bench import stages

STAGE_NAMES = [
    "edge: model step",
    "edge: record encode",
    "edge: block seal + sign",
    "envelope decode",
    "signature verify (cryptography)",
    "signature verify (PyNaCl)",
    "signature verify (as configured)",
    "leaf hashing",
    "records tree",
    "record decode",
    "Arrow build",
    "batch tree",
    "DuckDB insert + commit",
    "anchor (local ledger)",
    "consumer total (Processor)",
    "consumer total, 2 verify threads",
]


def test_quick_run_reports_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    assert stages.main(["--quick", "--json", str(out)]) == 0
    got = json.loads(out.read_text())

    assert got["records"] == got["blocks"] * got["block_records"]
    assert got["records"] == stages.QUICK["blocks"] * stages.QUICK["block_records"]
    by_name = {s["name"]: s for s in got["stages"]}
    assert list(by_name) == STAGE_NAMES
    for name in STAGE_NAMES:
        if name == "signature verify (PyNaCl)" and importlib.util.find_spec("nacl") is None:
            assert by_name[name]["note"] == "not installed"  # an optional library: a row, not a crash
            continue
        assert by_name[name]["us_per_record"] > 0, name
        assert by_name[name]["records_handled"] >= got["records"], name
    # The consumer stage counted its rows in the DuckDB file it wrote: every record, exactly once.
    assert got["consumer_stored_records"] == got["records"]
    assert by_name["consumer total (Processor)"]["records_handled"] == got["records"]
    assert by_name["DuckDB insert + commit"]["records_handled"] == got["records"]
    # The box's speed around the run, to compare runs of different days (bench/machine.py).
    speed = got["machine"]["reference_unit_us"]
    assert speed["start"] > 0 and speed["end"] > 0
