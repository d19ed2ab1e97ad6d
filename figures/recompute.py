"""Repeat the figures a vt-proof/2 bundle carries from its proven rows alone (PROOFS.md §14.5).

A figure counts only if a completeness claim of the bundle covers its device and period, so that
no row it depends on can have been left out; then the algorithm named in the figure is run again
with the figure's parameters on the bundle's rows, and the result must be identical.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgspec

from figures.battery import ALGORITHM as BATTERY_ALGORITHM
from figures.battery import PassportParams, passport
from figures.score import ALGORITHM as SCORE_ALGORITHM
from figures.score import ScoreParams, score
from schemas.completeness import ClaimResult
from schemas.proof import Figure, bundle_decoder, proven_records
from schemas.records import BatterySample, DrivingSample, TriggerEvent


@dataclass(frozen=True)
class Recomputed:
    index: int
    figure: Figure
    problem: str | None  # None: recomputed, identical
    headline: str  # e.g. "score 87.5"


def compute(kind: str, device_id: str, records: list[tuple[str, Any]], from_ns: int, to_ns: int,
            params: dict[str, Any] | None = None) -> tuple[str, dict[str, Any], dict[str, Any]]:  # fmt: skip
    """``(algorithm, params, result)`` of figure ``kind`` over ``records`` (``(device, record)``)."""
    mine = [r for d, r in records if d == device_id]
    if kind == "driving-score":
        sp = msgspec.convert(params or {}, ScoreParams)
        ds = [r for r in mine if isinstance(r, DrivingSample)]
        ts = [r for r in mine if isinstance(r, TriggerEvent)]
        res: Any = score(device_id, ds, ts, from_ns, to_ns, sp)
        return SCORE_ALGORITHM, _plain(sp), _plain(res)
    if kind == "battery-passport":
        pp = msgspec.convert(params or {}, PassportParams)
        res = passport(device_id, [r for r in mine if isinstance(r, BatterySample)], from_ns, to_ns, pp)
        return BATTERY_ALGORITHM, _plain(pp), _plain(res)
    raise ValueError(f"unknown figure kind {kind!r}")


def _plain(obj: Any) -> dict[str, Any]:
    """As it reads back from the bundle's JSON (tuples become lists)."""
    out: dict[str, Any] = json.loads(msgspec.json.encode(obj))
    return out


def headline(f: Figure) -> str:
    if f.kind == "driving-score":
        return f"score {f.result.get('period', {}).get('score')}"
    soce = (
        f.result.get("battery_condition", {})
        .get("stateOfCertifiedEnergy", {})
        .get("stateOfCertifiedEnergyValue")
    )
    return f"SOCE {soce:.2f} %" if isinstance(soce, float) else f"SOCE {soce}"


def first_difference(mine: Any, theirs: Any, path: str = "") -> str:
    """Where two results first differ: ``period.score 87.4, the bundle says 87.5``."""
    if isinstance(mine, dict) and isinstance(theirs, dict):
        for k in sorted(set(mine) | set(theirs)):
            if mine.get(k, ...) != theirs.get(k, ...):
                return first_difference(mine.get(k), theirs.get(k), f"{path}.{k}" if path else k)
    if isinstance(mine, list) and isinstance(theirs, list) and len(mine) == len(theirs):
        for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            if a != b:
                return first_difference(a, b, f"{path}[{i}]")
    return f"{path or 'the result'} {json.dumps(mine)[:80]}, the bundle says {json.dumps(theirs)[:80]}"


def recompute(data: bytes, claims: list[ClaimResult], kinds: set[str]) -> list[Recomputed]:
    """Recompute every figure of a kind in ``kinds``; ``claims``: the bundle's valid claims (from
    ``verify_bundle``). Call it on a bundle ``verify_bundle`` accepted."""
    b = bundle_decoder.decode(data)
    records = proven_records(data)
    out: list[Recomputed] = []
    for i, f in enumerate(b.figures or []):
        if f.kind not in kinds:
            continue
        covered = any(
            c.claim.device_id == f.device_id and c.claim.from_ns <= f.from_ns and c.covered_to_ns >= f.to_ns
            for c in claims
        )
        if not covered:
            out.append(
                Recomputed(
                    i, f, "no completeness claim of the bundle covers its device and period", headline(f)
                )
            )
            continue
        try:
            algorithm, params, result = compute(f.kind, f.device_id, records, f.from_ns, f.to_ns, f.params)
        except (msgspec.ValidationError, ValueError) as exc:
            out.append(Recomputed(i, f, f"cannot recompute: {exc}", headline(f)))
            continue
        if algorithm != f.algorithm:
            problem: str | None = f"algorithm {f.algorithm!r} is not {algorithm!r} (this verifier's)"
        elif params != f.params:
            problem = "the parameters do not read back as given (unknown or out of range)"
        elif result != f.result:
            problem = f"recomputed {first_difference(result, f.result)}"
        else:
            problem = None
        out.append(Recomputed(i, f, problem, headline(f)))
    return out
