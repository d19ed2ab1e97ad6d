"""`--cpus` / `--consumer-cpus` of `bench e2e` and `bench fleet`: the CPU lists they take, and the
one line they print for one they cannot use."""

from __future__ import annotations

import argparse
import os

import pytest

from bench import e2e, fleet


def test_cpu_lists_take_numbers_commas_and_ranges() -> None:
    have = sorted(os.sched_getaffinity(0))
    assert e2e.cpu_list(str(have[0])) == (have[0],)
    assert e2e.cpu_list(f"{have[-1]},{have[0]}") == tuple(sorted({have[0], have[-1]}))
    assert e2e.cpu_list(f"{have[0]}-{have[0]}") == (have[0],)


@pytest.mark.parametrize("text", ["a", "0-x", "", ","])
def test_a_cpu_list_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is not a CPU list"):
        e2e.cpu_list(text)


def test_a_cpu_this_process_may_not_use_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    missing = max(os.sched_getaffinity(0)) + 1
    with pytest.raises(SystemExit) as exc:
        fleet.build_parser().parse_args(["--cpus", str(missing)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(
        f"'{missing}': this process may run on CPUs {e2e._cpu_text(os.sched_getaffinity(0))} only"
    )


def test_the_cores_given_to_a_run_count_both_lists() -> None:
    have = sorted(os.sched_getaffinity(0))
    args = e2e.build_parser().parse_args(["--cpus", str(have[0]), "--consumer-cpus", str(have[-1])])
    assert e2e.cores_given(args) == len({have[0], have[-1]})
    assert e2e.cores_given(e2e.build_parser().parse_args([])) == len(have)
