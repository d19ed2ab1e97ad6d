"""Run the ingest roles (bridge, consumer) in one asyncio process with one signal handler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from typing import Protocol

ROLES = ("bridge", "consumer")


class Role(Protocol):
    async def run(self) -> None: ...

    def stop(self) -> None: ...


async def run_roles(services: Sequence[Role], names: Sequence[str]) -> None:
    """Run ``services`` (built by ``ingest.wiring.roles``) until one fails or a signal stops them all."""
    loop = asyncio.get_running_loop()

    def stop_all() -> None:
        logging.getLogger(__name__).info("stopping %s", ", ".join(names))
        for s in services:
            s.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop_all)
    tasks = [asyncio.create_task(s.run()) for s in services]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception() is not None:
                stop_all()
                raise t.exception()  # type: ignore[misc]
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
