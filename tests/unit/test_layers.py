"""The import layering of pyproject.toml ([tool.importlinter]) holds: schemas <- common <- edge_agent |
ingest <- devtools, simulators, bench, and inside ingest: cli <- wiring <- ops | pipeline <- storage |
ledger <- config. (`make check` runs the same tool.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_layers_are_kept() -> None:
    tool = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(tool)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout
