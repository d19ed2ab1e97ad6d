"""What a benchmark report says about the box it ran on: CPUs, Python, platform, and how fast the box
was at the start and at the end of the run.

This box is shared: the same command at the same commit ran 2.1 times slower on one day than on
another (docs/PERFORMANCE.md, "Stage costs"). Ratios within one run stay comparable; figures of two
runs are comparable only next to the box's speed during each. The speed is the time of a fixed
reference unit of the consumer's own kinds of per-block work, on one core, best of a few rounds:
one Ed25519 block-signature check (as the consumer does it), 22 SHA-256 of 64 bytes (a block's
leaf and tree hashes) and 11 MessagePack decodes of a sample-sized array (its records)."""

from __future__ import annotations

import hashlib
import os
import platform
import time
from typing import Any

import msgspec

from schemas.crypto import SigningKey, verify_block_signature

REFERENCE = (
    "one Ed25519 block-signature check, 22 SHA-256 of 64 bytes, 11 MessagePack decodes of a"
    " 13-field array (one core, best of 3)"
)


def reference_unit_us(units: int = 300, rounds: int = 3) -> float:
    """Microseconds for one reference unit on this box now (lower is faster)."""
    key = SigningKey.generate()
    header = bytes(range(160))
    sig = key.sign_header(header)
    leaves = [bytes([i]) * 64 for i in range(22)]
    record = msgspec.msgpack.encode(
        ["d", 1_700_000_000_000_000_000, 23.5, 1.25, -0.5, 0.1, 2, 3, 80.0, 1, 0, None, 7]
    )
    decode = msgspec.msgpack.Decoder().decode
    sha = hashlib.sha256
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(units):
            if not verify_block_signature(key.public_key, header, sig):
                raise RuntimeError("the reference signature does not verify")
            for leaf in leaves:
                sha(leaf).digest()
            for _ in range(11):
                decode(record)
        best = min(best, time.perf_counter() - t)
    return best / units * 1e6


def machine(speed_start_us: float, speed_end_us: float) -> dict[str, Any]:
    """The report's ``machine`` entry."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "reference_unit": REFERENCE,
        "reference_unit_us": {"start": round(speed_start_us, 2), "end": round(speed_end_us, 2)},
    }


def speed_line(m: dict[str, Any]) -> str:
    """One line for a report: the box's speed during the run."""
    s = m["reference_unit_us"]
    return (
        f"box speed during the run: {s['start']:.1f} µs (start) / {s['end']:.1f} µs (end) per reference"
        f" unit ({m['reference_unit']}; lower is faster; {m['cpus']} CPUs)"
    )
