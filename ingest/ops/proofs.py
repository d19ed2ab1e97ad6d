"""`telematics prove`: build self-contained proof bundles for selected rows (format: docs/PROOFS.md).

The prover reads DuckDB (rows, blocks, batches, anchors), the registry (device keys) and the
ledger (entries, checkpoints); it signs key statements with the operator key. It checks every
bundle it writes with the same offline verifier a third party would use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from common.errors import Fatal
from ingest.ledger.local import LocalLedger
from ingest.storage.registry import DeviceKey, Registry
from ingest.storage.schema import TABLE_NAMES
from ingest.storage.store import Store
from schemas import merkle
from schemas.crypto import TAG_KEY_STATEMENT, SigningKey, leaf_salt
from schemas.proof import (
    BatchProof,
    BlockProof,
    Bundle,
    EvmAnchor,
    KeyStatement,
    RecordProof,
    key_statement_bytes,
)
from schemas.records import RECORD_KINDS

TABLES = TABLE_NAMES
_ALIASES = {k.short: k.table for k in RECORD_KINDS}


class Witness(Protocol):
    """Where chain anchors are recorded (the EVM backend)."""

    def anchors_for(self, batch_no: int, log_index: int) -> list[EvmAnchor]: ...


class ProveError(Fatal):
    """The selection or the stored data cannot produce a proof (message says which row and why)."""


@dataclass(frozen=True)
class RowRef:
    table: str
    device_id: str
    block_seq: int
    idx: int


def table_name(name: str) -> str:
    t = _ALIASES.get(name, name)
    if t not in TABLES:
        raise ProveError(f"unknown table {name!r} (driving, battery, {', '.join(TABLES)})")
    return t


def select_rows(store: Store, table: str | None, where: str | None, limit: int, sample: bool) -> list[RowRef]:
    """Rows matching a SQL filter (on one table, or every record table the filter applies to when
    ``table`` is None) whose batch is anchored: while the ingest runs, the newest batch may be
    stored and not yet anchored."""
    out: list[RowRef] = []
    tables = [table_name(table)] if table else list(TABLES)
    refused: list[str] = []
    for t in tables:
        q = (
            f"SELECT device_id, block_seq, idx FROM {t} r WHERE EXISTS (SELECT 1 FROM blocks b"
            " JOIN anchors a USING (batch_no) WHERE b.device_id = r.device_id AND b.seq = r.block_seq)"
        )
        if where:
            q += f" AND ({where})"
        if sample:
            q = f"SELECT * FROM ({q}) USING SAMPLE reservoir({limit} ROWS) REPEATABLE (7)"
        q += f" LIMIT {limit - len(out)}"
        try:
            rows = store.con.execute(q).fetchall()
        except Exception as exc:  # DuckDB parser / binder errors: the user's filter
            msg = " ".join(str(exc).split())
            if table is None and "Binder Error" in msg:  # a column another record table has
                refused.append(f"{t}: {msg}")
                continue
            raise ProveError(f"cannot select rows from {t}: {msg}") from exc
        out += [RowRef(t, d, int(s), int(i)) for d, s, i in rows]
        if len(out) >= limit:
            break
    if len(refused) == len(tables):
        raise ProveError(f"the filter applies to no record table ({'; '.join(refused)[:400]})")
    return out


def key_statement(key: DeviceKey, operator: SigningKey, as_of: int) -> KeyStatement:
    status = key.status if key.status in ("active", "retired", "revoked") else "revoked"
    body = key_statement_bytes(
        key.device_id, key.key_id, key.public_key, status, key.valid_from, key.valid_until, as_of
    )
    sig = operator.sign(TAG_KEY_STATEMENT + b"\x00" + body)
    return KeyStatement(
        device_id=key.device_id,
        key_id=key.key_id,
        public_key=key.public_key.hex(),
        status=status,  # type: ignore[arg-type]
        valid_from=key.valid_from,
        valid_until=key.valid_until,
        as_of=as_of,
        signature=sig.hex(),
    )


class Prover:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        ledger: LocalLedger,
        operator: SigningKey,
        *,
        witness: Witness | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.ledger = ledger
        self.operator = operator
        self.witness = witness

    def bundle(self, rows: list[RowRef]) -> Bundle:
        if not rows:
            raise ProveError("no rows selected")
        con = self.store.con
        blocks: dict[str, BlockProof] = {}
        batches: dict[str, BatchProof] = {}
        keys: dict[str, KeyStatement] = {}
        checkpoints: dict[str, str] = {}
        evm: dict[tuple[str, int], EvmAnchor] = {}
        records: list[RecordProof] = []
        block_cache: dict[tuple[str, int], tuple[str, list[bytes], bytes]] = {}
        now = time.time_ns()
        for r in rows:
            key = (r.device_id, r.block_seq)
            if key not in block_cache:
                block_cache[key] = self._block(r, blocks, batches, keys, checkpoints, evm, now)
            bh, leaves, seed = block_cache[key]
            row = con.execute(
                f"SELECT raw FROM {r.table} WHERE device_id = ? AND block_seq = ? AND idx = ?",
                [r.device_id, r.block_seq, r.idx],
            ).fetchone()
            if row is None:
                raise ProveError(f"{r.table} row {r.device_id}/{r.block_seq}/{r.idx} is gone")
            raw = bytes(row[0])
            records.append(
                RecordProof(
                    table=r.table,
                    device_id=r.device_id,
                    block_seq=r.block_seq,
                    idx=r.idx,
                    raw=raw.hex(),
                    salt=leaf_salt(seed, r.idx).hex(),
                    block=bh,
                    path=[p.hex() for p in merkle.inclusion_path(leaves, r.idx)],
                )
            )
        return Bundle(
            format="vt-proof/1",
            operator_key=self.operator.public_key.hex(),
            origin=self.ledger.origin,
            checkpoints=checkpoints,
            keys=keys,
            blocks=blocks,
            batches=batches,
            evm=list(evm.values()),
            records=records,
        )

    def _block(
        self,
        r: RowRef,
        blocks: dict[str, BlockProof],
        batches: dict[str, BatchProof],
        keys: dict[str, KeyStatement],
        checkpoints: dict[str, str],
        evm: dict[tuple[str, int], EvmAnchor],
        now: int,
    ) -> tuple[str, list[bytes], bytes]:
        con = self.store.con
        b = con.execute(
            "SELECT block_hash, header, signature, salt_seed, key_id, record_count, batch_no, batch_index"
            " FROM blocks WHERE device_id = ? AND seq = ?",
            [r.device_id, r.block_seq],
        ).fetchone()
        if b is None:
            raise ProveError(f"block {r.device_id}/{r.block_seq} of the selected row is not stored")
        bh, header, sig, seed, key_id, count, batch_no, batch_index = b
        seed = bytes(seed)
        raws = con.execute(
            " UNION ALL ".join(
                f"SELECT idx, raw FROM {t} WHERE device_id = $1 AND block_seq = $2" for t in TABLES
            )
            + " ORDER BY idx",
            [r.device_id, r.block_seq],
        ).fetchall()
        if [int(i) for i, _ in raws] != list(range(count)):
            raise ProveError(
                f"block {r.device_id}/{r.block_seq} has rows {len(raws)} of {count}: run `telematics audit`"
            )
        leaves = [merkle.leaf_hash(leaf_salt(seed, int(i)) + bytes(raw)) for i, raw in raws]
        bhx = bytes(bh).hex()
        batch_hashes = [
            bytes(h)
            for (h,) in con.execute(
                "SELECT block_hash FROM (SELECT block_hash, batch_index FROM blocks WHERE batch_no = $1"
                " UNION ALL SELECT block_hash, batch_index FROM erased_blocks WHERE batch_no = $1)"
                " ORDER BY batch_index",
                [batch_no],
            ).fetchall()
        ]
        blocks[bhx] = BlockProof(
            header=bytes(header).hex(),
            signature=bytes(sig).hex(),
            batch_no=int(batch_no),
            batch_index=int(batch_index),
            path=[
                p.hex()
                for p in merkle.inclusion_path([merkle.leaf_hash(h) for h in batch_hashes], batch_index)
            ],
        )
        if key_id not in keys:
            k = self.registry.get(key_id)
            if k is None:
                raise ProveError(f"key {key_id} of block {r.device_id}/{r.block_seq} is not in the registry")
            keys[key_id] = key_statement(k, self.operator, now)
        no = str(batch_no)
        if no not in batches:
            batches[no] = self._batch(int(batch_no), len(batch_hashes), checkpoints, evm)
        return bhx, leaves, seed

    def _batch(
        self,
        batch_no: int,
        block_count: int,
        checkpoints: dict[str, str],
        evm: dict[tuple[str, int], EvmAnchor],
    ) -> BatchProof:
        row = self.store.con.execute("SELECT root FROM batches WHERE batch_no = ?", [batch_no]).fetchone()
        if row is None:
            raise ProveError(f"batch {batch_no} is not stored")
        rc = self.ledger.receipt(batch_no)
        if rc is None:
            raise ProveError(
                f"batch {batch_no} is not anchored in the ledger (is the ingest still catching up?)"
            )
        cov = self.ledger.covering_checkpoint(rc.index)
        if cov is None:
            if self.ledger.key is None:
                raise ProveError(f"no signed checkpoint covers batch {batch_no} yet")
            self.ledger.checkpoint()
            cov = self.ledger.covering_checkpoint(rc.index)
            assert cov is not None
        size, note = cov
        eb, sig = self.ledger.entry(rc.index)
        for a in self._evm_anchors(batch_no, rc.index):
            evm[(a.kind, a.number)] = a
            if a.kind == "checkpoint":
                # The on-chain checkpoint is the one the entry's inclusion proof should reach.
                cp = self.ledger.checkpoints().get(a.number)
                if cp is not None:
                    size, note = a.number, cp
        checkpoints[str(size)] = note
        return BatchProof(
            root=bytes(row[0]).hex(),
            block_count=block_count,
            log_index=rc.index,
            entry=eb.hex(),
            entry_signature=sig.hex(),
            checkpoint=str(size),
            log_path=[p.hex() for p in self.ledger.inclusion(rc.index, size)],
        )

    def _evm_anchors(self, batch_no: int, index: int) -> list[EvmAnchor]:
        return self.witness.anchors_for(batch_no, index) if self.witness is not None else []
