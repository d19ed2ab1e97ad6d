"""`bench fleet`'s verdict names who fell behind: the pipeline, the load generator, or both. A
sample's latency counts from its schedule time, so it carries the generator's lag."""

from __future__ import annotations

from bench.e2e import PhaseResult
from bench.fleet import sustained


def _phase(p99_ms: float, lag_ms: float) -> PhaseResult:
    r = PhaseResult("10-vehicles", True, False, 10, 1000, 100, stored_records=1000, stored_blocks=100)
    r.latency_ms = {"p50": p99_ms / 2, "p95": p99_ms, "p99": p99_ms}
    r.sim_lag_ms = {"p50": 0.0, "p99": lag_ms, "max": lag_ms}
    return r


def test_a_fleet_kept_up_with_is_sustained() -> None:
    assert sustained(_phase(1800, 4), 2000) == (True, "sustained")


def test_the_pipeline_behind_the_line_is_named() -> None:
    ok, why = sustained(_phase(2309, 5), 2000)
    assert not ok and why == "p99 sample -> queryable 2,309 ms > 2,000 ms"


def test_a_late_generator_alone_is_named_as_the_limit() -> None:
    # 2.6 s of latency, of which 1.2 s is the generator's lag: the pipeline took 1.4 s.
    ok, why = sustained(_phase(2600, 1200), 2000)
    assert not ok and why == "the load generator fell 1,200 ms behind (p99): it was the limit"


def test_both_behind_names_both() -> None:
    # 42 s of latency: far more than the generator's 0.7 s lag.
    ok, why = sustained(_phase(41_875, 682), 2000)
    assert not ok
    assert (
        why
        == "p99 sample -> queryable 41,875 ms > 2,000 ms; the load generator also fell 682 ms behind (p99)"
    )


def test_losses_come_first() -> None:
    r = _phase(1800, 4)
    r.lost_records = 3
    assert sustained(r, 2000) == (False, "3 lost, 0 duplicated records")
