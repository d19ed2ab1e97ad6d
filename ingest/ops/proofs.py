"""`telematics prove`: build self-contained proof bundles for selected rows (format: docs/PROOFS.md).

The prover reads DuckDB (rows, blocks, batches, anchors), the registry (device keys) and the
ledger (entries, checkpoints); it signs key statements with the operator key. It checks every
bundle it writes with the same offline verifier a third party would use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from common.errors import Fatal
from common.times import iso_utc
from ingest.ledger.local import LocalLedger
from ingest.storage.registry import DeviceKey, Registry
from ingest.storage.schema import TABLE_NAMES
from ingest.storage.store import Store
from schemas import merkle
from schemas.completeness import BlockContents, ClaimResult, Completeness
from schemas.crypto import TAG_KEY_STATEMENT, SigningKey, leaf_salt
from schemas.proof import (
    FORMAT_V2,
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


@dataclass
class _Parts:
    """What a bundle is built from, filled block by block."""

    blocks: dict[str, BlockProof] = field(default_factory=dict)
    batches: dict[str, BatchProof] = field(default_factory=dict)
    keys: dict[str, KeyStatement] = field(default_factory=dict)
    checkpoints: dict[str, str] = field(default_factory=dict)
    evm: dict[tuple[str, int], EvmAnchor] = field(default_factory=dict)
    contents: dict[str, BlockContents] = field(default_factory=dict)
    records: list[RecordProof] = field(default_factory=list)

    def add(self, part: Bundle) -> None:
        """Merge another bundle's parts (its rows, blocks, batches, keys, checkpoints, anchors)."""
        self.blocks.update(part.blocks)
        self.batches.update(part.batches)
        self.keys.update(part.keys)
        self.checkpoints.update(part.checkpoints)
        self.evm.update({(a.kind, a.number): a for a in part.evm})
        self.records += part.records


# A block read for its proofs: its hash (hex), its Merkle leaves, its salt seed, and its rows in idx
# order as (table, raw bytes).
_Block = tuple[str, list[bytes], bytes, list[tuple[str, bytes]]]


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
        blocks: dict[str, BlockProof] = {}
        batches: dict[str, BatchProof] = {}
        keys: dict[str, KeyStatement] = {}
        checkpoints: dict[str, str] = {}
        evm: dict[tuple[str, int], EvmAnchor] = {}
        records: list[RecordProof] = []
        block_cache: dict[tuple[str, int], _Block] = {}
        now = time.time_ns()
        for r in rows:
            key = (r.device_id, r.block_seq)
            if key not in block_cache:
                block_cache[key] = self._block(r, blocks, batches, keys, checkpoints, evm, now)
            bh, leaves, seed, stored = block_cache[key]
            # the row's raw bytes come with its block's (read once per block, not once per row)
            if not 0 <= r.idx < len(stored) or stored[r.idx][0] != r.table:
                raise ProveError(f"{r.table} row {r.device_id}/{r.block_seq}/{r.idx} is gone")
            raw = stored[r.idx][1]
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
    ) -> _Block:
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
                f"SELECT idx, '{t}', raw FROM {t} WHERE device_id = $1 AND block_seq = $2" for t in TABLES
            )
            + " ORDER BY idx",
            [r.device_id, r.block_seq],
        ).fetchall()
        if [int(i) for i, _, _ in raws] != list(range(count)):
            raise ProveError(
                f"block {r.device_id}/{r.block_seq} has rows {len(raws)} of {count}: run `telematics audit`"
            )
        stored = [(str(t), bytes(raw)) for _, t, raw in raws]
        leaves = [merkle.leaf_hash(leaf_salt(seed, i) + raw) for i, (_, raw) in enumerate(stored)]
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
        self._key(key_id, f"{r.device_id}/{r.block_seq}", keys, now)
        no = str(batch_no)
        if no not in batches:
            batches[no] = self._batch(int(batch_no), len(batch_hashes), checkpoints, evm)
        return bhx, leaves, seed, stored

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

    def complete(self, device_id: str, from_ns: int, to_ns: int) -> Bundle:
        """A vt-proof/2 bundle holding EVERY block ``device_id`` sealed in ``[from_ns, to_ns]``
        (device clock), each anchored, with all records of each block that meets the period: the
        chain from the block before the period (or the device's first block) to the block after
        it (or the device's last anchored block), passing only holes the vehicle declared
        (docs/PROOFS.md §14). ProveError names the first hole it cannot prove."""
        if from_ns > to_ns:
            raise ProveError("--from is after --to")
        claim = self._claim(device_id, from_ns, to_ns)
        lo, hi = claim.first_seq, claim.last_seq
        rows = self.store.con.execute(
            "SELECT seq, block_hash, header, signature, salt_seed, key_id, record_count, batch_no,"
            " batch_index, epoch_ns(t_first), epoch_ns(t_last), batch_no IN (SELECT batch_no FROM anchors)"
            " FROM blocks WHERE device_id = ? AND seq BETWEEN ? AND ? ORDER BY seq",
            [device_id, lo, hi],
        ).fetchall()
        have = {int(r[0]): r for r in rows}
        if lo not in have:
            raise ProveError(f"block {device_id}/{lo}, where the proof must start, is not stored")
        unanchored = [int(r[0]) for r in rows if not r[11]]
        if unanchored:
            raise ProveError(
                f"block {device_id}/{unanchored[0]} is not anchored yet (is the ingest still catching up?)"
            )
        drops = self._declared_drops(device_id, lo, hi, set(have))
        raws = self._records_of(device_id, [s for s, r in have.items() if r[9] <= to_ns and r[10] >= from_ns])
        b = _Parts()
        batch_leaves = self._batch_leaves({int(r[7]) for r in rows})
        now = time.time_ns()
        for s, r in sorted(have.items()):
            _, bh, header, sig, seed, key_id, count, batch_no, batch_index = r[:9]
            bhx = bytes(bh).hex()
            b.blocks[bhx] = BlockProof(
                header=bytes(header).hex(),
                signature=bytes(sig).hex(),
                batch_no=int(batch_no),
                batch_index=int(batch_index),
                path=[p.hex() for p in merkle.inclusion_path(batch_leaves[int(batch_no)], int(batch_index))],
            )
            self._key(key_id, f"{device_id}/{s}", b.keys, now)
            if str(batch_no) not in b.batches:
                b.batches[str(batch_no)] = self._batch(
                    int(batch_no), len(batch_leaves[int(batch_no)]), b.checkpoints, b.evm
                )
            if s in raws:
                got = sorted(raws[s])
                if [i for i, _ in got] != list(range(int(count))):
                    raise ProveError(
                        f"block {device_id}/{s} has rows {len(got)} of {count}: run `telematics audit`"
                    )
                b.contents[bhx] = BlockContents(seed=bytes(seed).hex(), records=[raw.hex() for _, raw in got])
        # a declared drop travelling in a block outside the period's blocks: proven as a row
        outside = [RowRef("spool_drops", device_id, bs, idx) for bs, idx in sorted(drops) if bs not in raws]
        if outside:
            b.add(self.bundle(outside))
        return Bundle(
            format=FORMAT_V2,  # type: ignore[arg-type]
            operator_key=self.operator.public_key.hex(),
            origin=self.ledger.origin,
            checkpoints=b.checkpoints,
            keys=b.keys,
            blocks=b.blocks,
            batches=b.batches,
            evm=list(b.evm.values()),
            records=b.records,
            complete=[claim],
            contents=b.contents,
            figures=[],
        )

    def _claim(self, device_id: str, from_ns: int, to_ns: int) -> Completeness:
        """The chain run a completeness bundle must hold (PROOFS.md §14.2, points 1 and 2)."""

        def one(q: str, *args: object) -> int | None:
            rows = self.store.con.execute(q, [device_id, *args]).fetchall()
            return None if not rows or rows[0][0] is None else int(rows[0][0])

        anchored = "batch_no IN (SELECT batch_no FROM anchors)"
        meet = "device_id = ? AND epoch_ns(t_first) <= ? AND epoch_ns(t_last) >= ?"
        first_meet = one(f"SELECT min(seq) FROM blocks WHERE {meet}", to_ns, from_ns)
        last_meet = one(f"SELECT max(seq) FROM blocks WHERE {meet}", to_ns, from_ns)
        lo = one(
            "SELECT max(seq) FROM blocks WHERE device_id = ? AND epoch_ns(t_last) < ? AND seq < ?",
            from_ns,
            first_meet if first_meet is not None else 2**63 - 1,
        )
        start = "before" if lo is not None else "genesis"
        lo = lo if lo is not None else 0
        hi = one(
            f"SELECT min(seq) FROM blocks WHERE device_id = ? AND epoch_ns(t_first) > ? AND seq > ? AND {anchored}",
            to_ns,
            last_meet if last_meet is not None else lo,
        )
        end = "after" if hi is not None else "head"
        if hi is None:
            hi = one(f"SELECT max(seq) FROM blocks WHERE device_id = ? AND {anchored}")
            if hi is None:
                raise ProveError(f"device {device_id} has no anchored block")
        return Completeness(device_id, from_ns, to_ns, lo, hi, start, end)  # type: ignore[arg-type]

    def _declared_drops(self, device_id: str, lo: int, hi: int, have: set[int]) -> set[tuple[int, int]]:
        """The ``(block_seq, idx)`` of the SpoolDrop records declaring every seq in ``lo..hi`` not in
        ``have``; ProveError at the first one no drop declares (a gap, or an erased block)."""
        con = self.store.con
        drops = con.execute(
            "SELECT block_seq, idx, first_seq, last_seq FROM spool_drops WHERE device_id = ?"
            " AND last_seq >= ? AND first_seq <= ? ORDER BY first_seq",
            [device_id, lo, hi],
        ).fetchall()
        need: set[tuple[int, int]] = set()
        for s in range(lo, hi + 1):
            if s in have:
                continue
            d = next(((int(b), int(i)) for b, i, f, la in drops if f <= s <= la), None)
            if d is None:
                erased = con.execute(
                    "SELECT erasure_id FROM erased_blocks WHERE device_id = ? AND seq = ?", [device_id, s]
                ).fetchall()
                why = (
                    f"it was erased (erasure {erased[0][0]})"
                    if erased
                    else "the vehicle declared no drop of it (a gap: `telematics gaps`)"
                )
                raise ProveError(f"cannot prove completeness: block {device_id}/{s} is missing and {why}")
            need.add(d)
        return need

    def _records_of(self, device_id: str, seqs: list[int]) -> dict[int, list[tuple[int, bytes]]]:
        """``(idx, raw)`` of every record of the device's blocks ``seqs``, all record tables."""
        raws: dict[int, list[tuple[int, bytes]]] = {s: [] for s in seqs}
        if seqs:
            for t in TABLES:
                for bs, idx, raw in self.store.con.execute(
                    f"SELECT block_seq, idx, raw FROM {t} WHERE device_id = ? AND block_seq BETWEEN ? AND ?",
                    [device_id, min(seqs), max(seqs)],
                ).fetchall():
                    if int(bs) in raws:
                        raws[int(bs)].append((int(idx), bytes(raw)))
        return raws

    def _batch_leaves(self, batch_nos: set[int]) -> dict[int, list[bytes]]:
        """The leaf hashes of each batch's tree, erased blocks included, in one query."""
        out: dict[int, list[tuple[int, bytes]]] = {n: [] for n in batch_nos}
        if batch_nos:
            ns = ",".join(str(n) for n in sorted(batch_nos))
            for no, idx, h in self.store.con.execute(
                f"SELECT batch_no, batch_index, block_hash FROM blocks WHERE batch_no IN ({ns})"
                f" UNION ALL SELECT batch_no, batch_index, block_hash FROM erased_blocks WHERE batch_no IN ({ns})"
            ).fetchall():
                out[int(no)].append((int(idx), bytes(h)))
        return {n: [merkle.leaf_hash(h) for _, h in sorted(v)] for n, v in out.items()}

    def _key(self, key_id: str, where: str, keys: dict[str, KeyStatement], now: int) -> None:
        if key_id not in keys:
            k = self.registry.get(key_id)
            if k is None:
                raise ProveError(f"key {key_id} of block {where} is not in the registry")
            keys[key_id] = key_statement(k, self.operator, now)

    def _evm_anchors(self, batch_no: int, index: int) -> list[EvmAnchor]:
        return self.witness.anchors_for(batch_no, index) if self.witness is not None else []


def claim_line(c: ClaimResult) -> str:
    """What a completeness claim proved, in one paragraph."""
    k = c.claim
    line = (
        f"COMPLETE device {k.device_id} {iso_utc(k.from_ns)} .. {iso_utc(c.covered_to_ns)}: every block"
        f" seq {k.first_seq}..{k.last_seq} ({c.blocks} blocks, {c.records:,} records in the period's blocks)"
    )
    if c.complete_until_ns is not None and c.complete_until_ns < k.to_ns:
        line += (
            f"\n  OPEN END: the device's last anchored block ends at {iso_utc(c.complete_until_ns)};"
            " later blocks were not held when the bundle was built"
        )
    for h in c.holes:
        span = (
            f", {(h.before_ns - h.after_ns) / 1e9:,.0f} s between {iso_utc(h.after_ns)} and {iso_utc(h.before_ns)}"
            if h.after_ns is not None and h.before_ns is not None
            else ""
        )
        n = f"{h.records:,} records" if h.records is not None else "records"
        line += f"\n  DECLARED HOLE: seq {h.first_seq}..{h.last_seq}, {n} dropped by the vehicle ({h.reason}){span}"
    return line
