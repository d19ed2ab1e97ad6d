"""The EVM ledger backend: the local signed Merkle log, witnessed on an EVM chain.

Every batch is first appended to the local log (signed entry, signed checkpoint), exactly as
with the local backend. Then, by ``ledger.evm.mode``:

* ``batch``: one 0-value transaction per batch whose calldata is ``anchor_calldata(0, batch_no,
  batch_root)``. ``anchor`` returns only after ``confirmations`` blocks, so the consumer commits
  Kafka offsets only for batches that are on chain; a node that is down makes ``anchor`` raise
  ``LedgerError`` and the consumer retries the batch without committing.
* ``checkpoint``: one transaction per log checkpoint, ``anchor_calldata(1, tree_size, log_root)``,
  covering every batch since the previous one (amortization: ``checkpoint_batches`` batches per
  transaction). ``anchor`` publishes when ``checkpoint_batches`` batches wait or the oldest waited
  ``checkpoint_max_age_s``; in between, batches are committed once they are in DuckDB and in the
  signed local log, and they reach the chain with the next checkpoint. When a checkpoint is due
  and the node is down, ``anchor`` raises and nothing more is committed until it is back.

Each confirmed transaction is recorded in ``<ledger>.evm.jsonl`` (chain id, tx hash, block number
and hash, what it anchors), signed by the operator key so that proof bundles bind it offline.
A transaction is signed and recorded as pending before it is broadcast, so a crash never sends a
second, different transaction for the same root: on restart the recorded bytes are re-broadcast
(idempotent) or, if already mined, just awaited.

Reorgs and finality: a recorded anchor is final for this backend once it has ``confirmations``
blocks on top. On Ethereum mainnet choose a depth you accept as final (e.g. 64 blocks, two epochs),
on PlatON its confirmation depth; ``verify-proof --rpc`` re-checks the recorded block hash, so a
reorg that dropped an anchor is reported, never silently trusted.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.config import EvmConfig
from ingest.ledger.base import LedgerConflict, LedgerError, Receipt, VerifyReport
from ingest.ledger.evm_client import (
    ANCHOR_KIND_BATCH,
    ANCHOR_KIND_CHECKPOINT,
    EvmClient,
    EvmError,
    EvmRejected,
    EvmSignedTx,
    anchor_calldata,
)
from ingest.ledger.local import LocalLedger, append_json_line
from schemas.crypto import TAG_EVM_ANCHOR, SigningKey
from schemas.proof import EvmAnchor, evm_anchor_bytes

log = logging.getLogger(__name__)

KINDS = {"batch": ANCHOR_KIND_BATCH, "checkpoint": ANCHOR_KIND_CHECKPOINT}


def anchors_path(ledger_path: Path) -> Path:
    return ledger_path.with_name(ledger_path.stem + ".evm.jsonl")


@dataclass
class _Pending:
    kind: str
    number: int
    root: bytes
    signed: EvmSignedTx


class EvmLedger:
    name = "evm"

    @property
    def location(self) -> str:
        return f"{self.log.path} (chain anchors: {self.path})"

    def __init__(
        self, log_: LocalLedger, client: EvmClient | None, operator: SigningKey | None, cfg: EvmConfig
    ) -> None:
        """``client`` and ``operator`` None: read-only (proofs and the audit read the recorded anchors)."""
        self.log = log_
        self.client = client
        self.operator = operator
        self.cfg = cfg
        self.path = anchors_path(log_.path)
        self.anchors: dict[tuple[str, int], EvmAnchor] = {}
        self._pending: dict[tuple[str, int], _Pending] = {}
        self._witnessed_size = 0  # checkpoint mode: largest tree size on chain
        self._oldest_unwitnessed: float | None = None
        self._load()

    # -- persistence ------------------------------------------------------------------------------
    def _load(self) -> None:
        if not self.path.exists():
            return
        for line in self.path.read_bytes().splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                break  # a torn last line
            key = (str(obj["kind"]), int(obj["number"]))
            if obj.get("state") == "pending":
                self._pending[key] = _Pending(
                    key[0],
                    key[1],
                    bytes.fromhex(obj["root"]),
                    EvmSignedTx(
                        tx_hash=obj["tx_hash"],
                        raw=bytes.fromhex(obj["raw"]),
                        chain_id=int(obj["chain_id"]),
                        nonce=int(obj["nonce"]),
                        sender=obj["sender"],
                        to=obj["to"],
                        data=bytes.fromhex(obj["data"]),
                    ),
                )
            else:
                a = EvmAnchor(**obj["anchor"])
                self.anchors[key] = a
                self._pending.pop(key, None)
                if a.kind == "checkpoint":
                    self._witnessed_size = max(self._witnessed_size, a.number)

    # -- the Ledger Protocol ----------------------------------------------------------------------
    def anchor(self, batch_no: int, root: bytes, blocks: int) -> Receipt:
        r = self.log.anchor(batch_no, root, blocks)
        if self.cfg.mode == "batch":
            a = self._publish("batch", batch_no, root)
            return _with_evm(r, [a])
        if self._oldest_unwitnessed is None and self.log.size > self._witnessed_size:
            self._oldest_unwitnessed = time.monotonic()
        if self._checkpoint_due():
            self.sync(force=True)
        return r

    def receipt(self, batch_no: int) -> Receipt | None:
        return self.log.receipt(batch_no)

    def verify(self, public_key: bytes | None = None) -> VerifyReport:
        return self.log.verify(public_key)

    def close(self) -> None:
        self.log.close()

    def witness_counts(self) -> dict[str, dict[str, int]]:
        return self.log.witness_counts()

    def sync(self, force: bool = False) -> None:
        """Checkpoint mode: put the current log checkpoint on chain if it is due (or ``force``)."""
        if self.cfg.mode != "checkpoint" or self.log.size <= self._witnessed_size:
            return
        if not force and not self._checkpoint_due():
            return
        note_size = self.log.size
        self.log.checkpoint()
        self._publish("checkpoint", note_size, self.log.tree_root(note_size))
        self._witnessed_size = note_size
        self._oldest_unwitnessed = None

    def _checkpoint_due(self) -> bool:
        waiting = self.log.size - self._witnessed_size
        if waiting <= 0:
            return False
        if waiting >= self.cfg.checkpoint_batches:
            return True
        return (
            self._oldest_unwitnessed is not None
            and time.monotonic() - self._oldest_unwitnessed >= self.cfg.checkpoint_max_age_s
        )

    # -- lookups for proofs and the audit ---------------------------------------------------------
    def anchors_for(self, batch_no: int, log_index: int) -> list[EvmAnchor]:
        """The chain anchors that cover a batch: its own (batch mode) or the first checkpoint whose
        tree includes its log entry (checkpoint mode)."""
        out = []
        a = self.anchors.get(("batch", batch_no))
        if a is not None:
            out.append(a)
        cps = sorted(n for k, n in self.anchors if k == "checkpoint" and n > log_index)
        if cps:
            out.append(self.anchors[("checkpoint", cps[0])])
        return out

    # -- publishing -------------------------------------------------------------------------------
    def _publish(self, kind: str, number: int, root: bytes) -> EvmAnchor:
        key = (kind, number)
        done = self.anchors.get(key)
        if done is not None:
            if done.root != root.hex():
                raise LedgerConflict(f"{kind} {number} was anchored on chain with another root ({done.root})")
            return done
        if self.client is None or self.operator is None:
            raise LedgerError("this EVM ledger was opened read-only")
        try:
            p = self._pending.get(key)
            if p is None or p.root != root:
                signed = self.client.sign(anchor_calldata(KINDS[kind], number, root))
                p = _Pending(kind, number, root, signed)
                self._record_pending(p)
            elif self.client.fetch(p.signed.tx_hash) is None:
                log.info("re-broadcasting the recorded anchor transaction %s", p.signed.tx_hash)
            try:
                self.client.broadcast(p.signed)
            except EvmRejected as exc:
                if "nonce too low" not in str(exc) or self.client.fetch(p.signed.tx_hash) is not None:
                    raise
                # The nonce went to another transaction: sign anew next time.
                self._pending.pop(key, None)
                raise LedgerError(f"anchor transaction for {kind} {number} must be re-signed: {exc}") from exc
            tx = self.client.wait(p.signed.tx_hash, self.cfg.confirmations, self.cfg.timeout_s)
        except EvmError as exc:
            raise LedgerError(f"EVM node: {exc}") from exc
        body = evm_anchor_bytes(
            tx.chain_id,
            bytes.fromhex(tx.tx_hash[2:]),
            tx.block_number,
            bytes.fromhex(tx.block_hash[2:]),
            kind,
            number,
            root,
        )
        a = EvmAnchor(
            chain_id=tx.chain_id,
            tx_hash=tx.tx_hash[2:],
            block_number=tx.block_number,
            block_hash=tx.block_hash[2:],
            kind=kind,  # type: ignore[arg-type]
            number=number,
            root=root.hex(),
            signature=self.operator.sign(TAG_EVM_ANCHOR + b"\x00" + body).hex(),
        )
        append_json_line(
            self.path, {"kind": kind, "number": number, "state": "confirmed", "anchor": _builtins(a)}
        )
        self.anchors[key] = a
        self._pending.pop(key, None)
        return a

    def _record_pending(self, p: _Pending) -> None:
        s = p.signed
        append_json_line(
            self.path,
            {
                "kind": p.kind,
                "number": p.number,
                "state": "pending",
                "root": p.root.hex(),
                "tx_hash": s.tx_hash,
                "raw": s.raw.hex(),
                "chain_id": s.chain_id,
                "nonce": s.nonce,
                "sender": s.sender,
                "to": s.to,
                "data": s.data.hex(),
            },
        )
        self._pending[(p.kind, p.number)] = p


def _builtins(a: EvmAnchor) -> dict[str, Any]:
    return {f: getattr(a, f) for f in a.__struct_fields__}


def _with_evm(r: Receipt, anchors: list[EvmAnchor]) -> Receipt:
    return Receipt(
        r.ledger, r.batch_no, r.root, r.index, r.entry_hash, r.time_ns, evm=[_builtins(a) for a in anchors]
    )


def check_anchors_on_chain(
    rpc_url: str, anchors: list[EvmAnchor], *, confirmations: int = 1, timeout_s: float = 10.0
) -> list[str]:
    """Check recorded anchors against the chain: the transaction exists in the recorded block (no
    reorg dropped it), on the recorded chain, with the expected calldata and enough confirmations."""
    problems: list[str] = []
    try:
        client = EvmClient(rpc_url, timeout_s=timeout_s)
    except EvmError as exc:
        return [f"evm: cannot reach {rpc_url}: {exc}"]
    with client:
        for i, a in enumerate(anchors):
            where = f"evm[{i}] ({a.kind} {a.number}, tx 0x{a.tx_hash[:12]}…)"
            try:
                tx = client.fetch("0x" + a.tx_hash)
            except EvmError as exc:
                problems.append(f"{where}: node error: {exc}")
                continue
            if tx is None or not tx.mined:
                problems.append(f"{where}: transaction not found on chain (or not mined)")
                continue
            if tx.chain_id != a.chain_id:
                problems.append(f"{where}: node is chain {tx.chain_id}, the anchor says {a.chain_id}")
            if tx.data != anchor_calldata(KINDS[a.kind], a.number, bytes.fromhex(a.root)):
                problems.append(f"{where}: calldata is not this {a.kind} root")
            if (tx.block_number, tx.block_hash[2:]) != (a.block_number, a.block_hash):
                problems.append(
                    f"{where}: mined in block {tx.block_number}, recorded {a.block_number} (reorg?)"
                )
            if tx.status != 1:
                problems.append(f"{where}: transaction failed (status {tx.status})")
            if tx.confirmations < confirmations:
                problems.append(f"{where}: {tx.confirmations} confirmations < {confirmations}")
    return problems
