"""A real anvil node for EVM tests, started by the project's own ``devtools.anvil``.

A missing anvil is an error (``AnvilError`` names ``deploy/evm/install.sh``), never a skip.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from devtools.anvil import ANVIL_DEV_KEY_0, Anvil
from ingest.ledger.evm_client import EvmClient


@contextlib.contextmanager
def anvil_node(tmp: Path, *, block_time: float | None = None, chain_id: int | None = None) -> Iterator[Anvil]:
    """An anvil on a free port with its state file and log in ``tmp``; stopped (or killed) afterwards."""
    node = Anvil(
        state_path=tmp / "anvil-state.json",
        log_path=tmp / "anvil.log",
        block_time=block_time,
        chain_id=chain_id,
    )
    node.start()
    try:
        yield node
    finally:
        try:
            node.stop()
        finally:
            node.kill()


def dev_client(
    node: Anvil,
    *,
    private_key: str | None = ANVIL_DEV_KEY_0,
    chain_id: int | None = None,
    timeout_s: float = 2.0,
) -> EvmClient:
    """A client of ``node`` signing with anvil's public dev account 0 (local use only)."""
    return EvmClient(
        node.url, private_key=private_key, chain_id=chain_id, timeout_s=timeout_s, poll_interval_s=0.05
    )
