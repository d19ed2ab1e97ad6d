"""What every ledger backend shares: the Protocol the consumer anchors through, the receipt, the
errors (grouped by what the caller does next), an in-memory ledger for tests, and the operator key.

Backends: ``local`` (the signed Merkle log on disk), ``evm`` (the local log plus anchors on an EVM
chain, over ``evm_client``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from common.config import ConfigError
from common.errors import Fatal, Retryable
from schemas.crypto import TAG_LEDGER_ENTRY, SigningKey, tagged_hash


class LedgerError(Retryable):
    """The ledger is unreachable or refused the entry: retry the batch, do not commit offsets."""


class LedgerConflict(Fatal):
    """The ledger already holds a different root for this batch: a bug or tampering, never retried."""


class LedgerDamaged(Fatal):
    """The log file vanished, shrank, was replaced, changed behind the writer's back, holds a line that
    does not read, or disagrees with the anchors the store recorded. Never retried and never repaired
    by starting a new log: anchoring stops (Kafka offsets stay uncommitted) until the operator
    restores the file."""


@dataclass(frozen=True)
class Receipt:
    ledger: str
    batch_no: int
    root: bytes
    index: int
    entry_hash: bytes
    time_ns: int
    # EVM backend: the chain anchors covering this batch when it was anchored (see evm_ledger.py).
    evm: list[dict[str, Any]] | None = None

    def to_json(self) -> str:
        obj: dict[str, Any] = {
            "ledger": self.ledger,
            "batch_no": self.batch_no,
            "root": self.root.hex(),
            "index": self.index,
            "entry_hash": self.entry_hash.hex(),
            "time_ns": self.time_ns,
        }
        if self.evm:
            obj["evm"] = self.evm
        return json.dumps(obj, sort_keys=True)


@dataclass
class VerifyReport:
    entries: int
    ok: bool
    problems: list[str]


class Ledger(Protocol):
    name: str

    @property
    def location(self) -> str:
        """Where its entries live (a file, a chain), for messages to the operator."""
        ...

    def anchor(self, batch_no: int, root: bytes, blocks: int) -> Receipt:
        """Anchor ``root`` (a tree of ``blocks`` leaves) for ``batch_no``; idempotent: the same pair
        returns the same receipt."""
        ...

    def receipt(self, batch_no: int) -> Receipt | None: ...

    def verify(self) -> VerifyReport: ...

    def sync(self, force: bool = False) -> None:
        """Publish whatever is due (the EVM backend's checkpoint mode); a no-op elsewhere."""
        ...

    def close(self) -> None:
        """At shutdown: offer the last checkpoint to the witnesses, if any are configured."""
        ...

    def witness_counts(self) -> dict[str, dict[str, int]]:
        """Per configured witness: checkpoints ``cosigned``, ``refused``, ``unreachable`` (metrics)."""
        ...


class MemoryLedger:
    """For unit tests: same semantics as the local log, nothing on disk, can be told to fail."""

    name = "memory"
    location = "memory"

    def __init__(self) -> None:
        self._by_batch: dict[int, Receipt] = {}
        self.down = False

    def anchor(self, batch_no: int, root: bytes, blocks: int) -> Receipt:
        if self.down:
            raise LedgerError("memory ledger is down")
        r = self._by_batch.get(batch_no)
        if r is not None:
            if r.root != root:
                raise LedgerConflict(f"batch {batch_no} already anchored with another root")
            return r
        r = Receipt(self.name, batch_no, root, len(self._by_batch), tagged_hash(TAG_LEDGER_ENTRY, root), 0)
        self._by_batch[batch_no] = r
        return r

    def receipt(self, batch_no: int) -> Receipt | None:
        return self._by_batch.get(batch_no)

    def verify(self) -> VerifyReport:
        return VerifyReport(len(self._by_batch), True, [])

    def sync(self, force: bool = False) -> None:
        return None

    def close(self) -> None:
        return None

    def witness_counts(self) -> dict[str, dict[str, int]]:
        return {}


def load_key(path: Path) -> SigningKey:
    """The operator key, which must exist (commands other than the ingest never create one)."""
    try:
        return SigningKey.from_pem(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(
            f"no operator key at {path} (check [ledger] key_path; the ingest creates it)"
        ) from None


def load_or_create_key(path: Path) -> SigningKey:
    if path.exists():
        return SigningKey.from_pem(path.read_bytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.to_pem())
    path.with_suffix(path.suffix + ".pub").write_text(key.public_key.hex() + "\n")
    return key
