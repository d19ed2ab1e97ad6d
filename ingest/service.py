"""Run the ingest roles (bridge, consumer) in one asyncio process with one signal handler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from ingest.config import Config

ROLES = ("bridge", "consumer")


class Role(Protocol):
    async def run(self) -> None: ...

    def stop(self) -> None: ...


async def run_roles(
    cfg: Config, roles: Sequence[str], *, batch_log: Path | None = None, passthrough: bool = False
) -> None:
    services: list[Role] = []
    if "bridge" in roles:
        from ingest.bridge import Bridge

        services.append(Bridge(cfg))
    if "consumer" in roles:
        from ingest.consumer import ConsumerService

        services.append(ConsumerService(cfg, batch_log=batch_log, passthrough=passthrough))
    loop = asyncio.get_running_loop()

    def stop_all() -> None:
        logging.getLogger(__name__).info("stopping %s", ", ".join(roles))
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
