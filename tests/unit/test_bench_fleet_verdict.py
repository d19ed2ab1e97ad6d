"""`bench fleet`'s verdict names who fell behind: the pipeline, the load generator, or both. A
sample's latency counts from its schedule time, so it carries the generator's lag."""

from __future__ import annotations

from bench.e2e import ANALYSTS, PhaseResult
from bench.fleet import plan, plan_line, sustained


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


def _costs(vehicles: int, p99_ms: float, us: dict[str, float]) -> PhaseResult:
    r = _phase(p99_ms, 5)
    r.vehicles = vehicles
    r.cpu_us_per_block = us
    return r


def test_the_plan_scales_the_largest_sustained_runs_costs_and_splits_off_what_production_runs_elsewhere() -> (
    None
):
    small = _costs(1000, 900, {"consumer": 200.0, "simulator": 50.0})
    best = _costs(3000, 1900, {"consumer": 250.0, "mosquitto": 30.0, "simulator": 80.0, ANALYSTS: 20.0})
    over = _costs(4000, 5000, {"consumer": 400.0, "simulator": 90.0})
    results = [small, best, over]
    p = plan(results, [sustained(r, 2000) for r in results], 10_000)
    assert p is not None
    assert (p["from_vehicles"], p["from_sustained"], p["us_per_block"]) == (3000, True, 380.0)
    assert (p["cores"], p["cores_ingest"], p["cores_consumers"]) == (3.8, 2.8, 2.5)
    assert plan_line(p, 2) == (
        "at the costs per block of the 3,000-vehicle run (380 µs of CPU per block in all), 10,000 vehicles"
        " need about **3.8 cores**: 2.8 for the pipeline (consumers 2.5), the rest for the load generator"
        " and the dashboard; this run had 2 CPUs"
    )


def test_with_no_size_sustained_the_plan_says_it_comes_from_the_smallest() -> None:
    results = [_costs(4000, 5000, {"consumer": 400.0}), _costs(5000, 9000, {"consumer": 500.0})]
    p = plan(results, [sustained(r, 2000) for r in results], 10_000)
    assert p is not None and (p["from_vehicles"], p["from_sustained"], p["cores"]) == (4000, False, 4.0)
    assert "of the 4,000-vehicle run, not sustained (" in plan_line(p, 2)
