"""The one retry policy: exponential backoff with full jitter, logged at the 1st, 2nd, 4th, 8th … failure.

Everything that waits for infrastructure to come back uses it: the edge agent's MQTT supervisor
(``[mqtt] reconnect_min_s`` / ``reconnect_max_s``), and on the ingest side the bridge's and the
consumer's Kafka connections, the store and the ledger (``[retry] min_s`` / ``max_s``).

The n-th consecutive failure (n = 1, 2, …) waits a random time in
``[0, min(max_s, min_s · 2^(n-1))]`` ("full jitter": many clients cut off together do not come back
together). A failure is logged with what failed, the error, the wait and the attempt number when n
is a power of two, or when the error is of another type than the one logged last, so an outage of
an hour is a dozen lines, not thousands, and a new kind of failure is never hidden.

Loops that retry one call use :func:`aretrying` (tenacity: the error types that are retried, the
wait above, a sleep that stopping interrupts, the log line); loops that hold a connection for a long
time and count failures themselves (reset by a success) use :meth:`Backoff.delay` and
:func:`worth_logging`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Annotated

import msgspec
import tenacity
from msgspec import Meta


class Backoff(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Exponential backoff with full jitter between these bounds, in seconds."""

    min_s: Annotated[float, Meta(gt=0, le=3600)] = 0.5
    max_s: Annotated[float, Meta(gt=0, le=86400)] = 30.0

    def cap(self, failures: int) -> float:
        """The longest wait after ``failures`` consecutive failures (1 = the first)."""
        return min(self.max_s, self.min_s * 2.0 ** min(max(failures, 1) - 1, 60))

    def delay(self, failures: int) -> float:
        """A wait after ``failures`` consecutive failures: uniform in ``[0, cap(failures)]``."""
        return random.uniform(0.0, self.cap(failures))


def worth_logging(failures: int) -> bool:
    """True at the 1st, 2nd, 4th, 8th, … consecutive failure."""
    return failures > 0 and failures & (failures - 1) == 0


def _log_failure(log: logging.Logger, what: Callable[[], str]) -> Callable[[tenacity.RetryCallState], None]:
    last: list[str] = []  # the type of the error logged last

    def before_sleep(state: tenacity.RetryCallState) -> None:
        n = state.attempt_number
        exc = state.outcome.exception() if state.outcome is not None else None
        said = type(exc).__name__
        if worth_logging(n) or last != [said]:  # another kind of error is always said
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            log.warning("%s: %s; retrying in %.1fs (attempt %d)", what(), exc, wait, n)
            last[:] = [said]

    return before_sleep


def _wait(backoff: Backoff) -> Callable[[tenacity.RetryCallState], float]:
    return lambda state: backoff.delay(state.attempt_number)


def aretrying(
    backoff: Backoff,
    on: type[BaseException] | tuple[type[BaseException], ...],
    *,
    what: str | Callable[[], str],
    log: logging.Logger,
    stop: asyncio.Event | None = None,
) -> tenacity.AsyncRetrying:
    """``async for attempt in aretrying(...): with attempt: await call()``: retry ``call`` while it
    raises ``on``; any other error propagates at once. With ``stop``: the wait ends, and the last
    error is raised, as soon as the event is set."""
    label = what if callable(what) else (lambda: what)

    async def sleep(seconds: float) -> None:
        if stop is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception_type(on),
        wait=_wait(backoff),
        sleep=sleep,
        stop=(lambda _state: stop.is_set()) if stop is not None else tenacity.stop_never,
        before_sleep=_log_failure(log, label),
        reraise=True,
    )
