"""A short run of `telematics bench e2e --smoke`: the benchmark's machinery against the real stack.

No timing is asserted (speed lives in docs/PERFORMANCE.md); what is checked can fail: every phase
ran, every generated block is stored exactly once, the report and the chart were written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.e2e import main

pytestmark = pytest.mark.integration


def test_bench_e2e_smoke_stores_every_block_once_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "e2e"
    assert main(["--smoke", "--out", str(out)]) == 0
    report = json.loads((out / "e2e.json").read_text())
    phases = {p["name"]: p for p in report["phases"]}
    assert set(phases) == {"full", "passthrough", "half"}
    for p in phases.values():
        assert p["generated_records"] > 0
        assert p["stored_records"] == p["generated_records"]
        assert p["stored_blocks"] == p["generated_blocks"]
        assert p["lost_records"] == p["duplicated_records"] == p["unexpected_blocks"] == 0
        assert p["rejections"] == 0
        assert p["stored_rps"] > 0
        assert sum(s.get("stored", 0) for s in p["timeline"]) == p["stored_records"]
    # Verified phases anchor every batch; the pass-through baseline anchors none.
    assert phases["full"]["anchored"] == phases["full"]["batches"] > 0
    assert phases["passthrough"]["anchored"] == 0
    # Latency is measured on the paced phases (sample -> queryable), and is positive.
    assert phases["half"]["latency_ms"]["p50"] > 0
    assert report["full_over_passthrough"] > 0
    png = (out / "e2e.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "stored records/s" in (out / "e2e.md").read_text()
