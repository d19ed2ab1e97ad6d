"""Run the ingest roles (bridge, consumer) in one asyncio process with one signal handler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Protocol

from common.errors import Fatal

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


class RoleFailed(Fatal):
    """A role run in a process of its own exited with an error."""


class ChildProcess:
    """A role run by another Python process of this installation (one more consumer): stopped with
    SIGTERM; exiting on its own with an error fails the whole ingest, like any role."""

    def __init__(self, name: str, args: list[str]) -> None:
        self.name = name
        self.args = args
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = False

    async def run(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(sys.executable, *self.args)
        rc = await self._proc.wait()
        if rc != 0 and not self._stopping:
            raise RoleFailed(f"{self.name} exited with status {rc} (its log is above)")

    def stop(self) -> None:
        self._stopping = True
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGTERM)
