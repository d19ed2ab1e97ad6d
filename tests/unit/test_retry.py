"""The one retry policy (common/retry.py): bounds, jitter, what is retried, the log, stopping."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from common.errors import Fatal, Retryable
from common.retry import Backoff, aretrying, worth_logging
from ingest.config import Config

log = logging.getLogger("test.retry")


def test_the_wait_doubles_from_min_to_max_with_full_jitter() -> None:
    b = Backoff(min_s=0.5, max_s=6.0)
    assert [b.cap(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 6.0, 6.0]
    assert b.cap(0) == 0.5 and b.cap(10_000) == 6.0  # no overflow after a long outage
    waits = [b.delay(3) for _ in range(2000)]
    assert all(0.0 <= w <= 2.0 for w in waits)
    # full jitter: spread over the whole interval, not bunched at its top
    assert min(waits) < 0.2 and max(waits) > 1.8


def test_logged_at_powers_of_two() -> None:
    assert [n for n in range(0, 70) if worth_logging(n)] == [1, 2, 4, 8, 16, 32, 64]


def test_configured_in_one_section() -> None:
    cfg = Config()
    assert cfg.retry == Backoff(min_s=0.5, max_s=30.0)
    assert cfg.mqtt.reconnect == Backoff(cfg.mqtt.reconnect_min_s, cfg.mqtt.reconnect_max_s)


def test_retries_the_given_error_logs_and_returns(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 5:
            raise Retryable(f"down {len(calls)}")
        return "up"

    async def go() -> str:
        async for attempt in aretrying(Backoff(0.001, 0.002), Retryable, what="the thing", log=log):
            with attempt:
                return await flaky()
        raise AssertionError("unreachable")

    with caplog.at_level(logging.WARNING, "test.retry"):
        assert asyncio.run(go()) == "up"
    assert len(calls) == 5
    lines = [r.getMessage() for r in caplog.records]
    # failures 1, 2 and 4 of 4 are logged, with what failed, the error and the attempt number
    assert len(lines) == 3, lines
    assert lines[0].startswith("the thing: down 1; retrying in ") and lines[-1].endswith("(attempt 4)")


def test_other_errors_propagate_at_once() -> None:
    calls = []

    async def go() -> None:
        async for attempt in aretrying(Backoff(0.001, 0.002), Retryable, what="x", log=log):
            with attempt:
                calls.append(1)
                raise Fatal("damaged")

    with pytest.raises(Fatal, match="damaged"):
        asyncio.run(go())
    assert len(calls) == 1


def test_stop_ends_the_wait_and_raises_the_last_error() -> None:
    async def go() -> float:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.2, stop.set)
        t0 = time.monotonic()
        with pytest.raises(Retryable, match="still down"):
            # min_s = max_s = 60: without the stop this would sleep up to a minute
            async for attempt in aretrying(Backoff(60.0, 60.0), Retryable, what="x", log=log, stop=stop):
                with attempt:
                    raise Retryable("still down")
        return time.monotonic() - t0

    assert asyncio.run(go()) < 10.0


def test_another_kind_of_error_is_always_logged(caplog: pytest.LogCaptureFixture) -> None:
    class Fenced(Retryable):
        pass

    # attempt 3 is a new kind (logged although 3 is no power of two); 5 the same kind again (not logged)
    errors: list[Exception | None] = [Retryable("down 1"), Retryable("down 2"), Fenced("lost"), Fenced("lost 2"),
                                      Fenced("lost 3"), None]  # fmt: skip

    async def go() -> None:
        async for attempt in aretrying(Backoff(0.001, 0.002), Retryable, what="store", log=log):
            with attempt:
                e = errors.pop(0)
                if e is not None:
                    raise e

    with caplog.at_level(logging.WARNING, "test.retry"):
        asyncio.run(go())
    got = [r.getMessage().split(";")[0] for r in caplog.records]
    assert got == ["store: down 1", "store: down 2", "store: lost", "store: lost 2"], got
