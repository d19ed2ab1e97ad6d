"""`telematics audit`: recompute every leaf, block root, signature, chain link, batch root and ledger
entry from DuckDB and report exactly which rows, blocks or batches differ.

Stages (each timed in the report):
  rows      row set per block: rows without a block, duplicated or out-of-range positions (inserted),
            positions missing from a block (deleted), rows of erased blocks left behind
  leaves    SHA-256(0x00 || salt || raw) recomputed inside DuckDB (vectorized, all cores) and compared
            with the leaf verified at ingest: names the row whose raw bytes changed
  values    every raw record decoded and compared with its columns, floats bit for bit (-0.0 is not
            0.0): names the row and column changed
  blocks    records root from the row leaves = the signed header root; header hash, Ed25519 signature
            with the registry key valid at the block's time, header fields = block columns; chain links
  devices   each chain head (last sequence number and hash, block and record counts) = its stored blocks
  batches   RFC 6962 root over each batch's block hashes (erased blocks keep theirs) = stored root,
            record count = the sum of its blocks' signed counts
  ledger    every batch anchored, its ledger entry holds the same root, the log (hash chain,
            signatures, checkpoints, consistency) verifies
The erasure statements are checked first, so that the later stages know which blocks were erased.
"""

from __future__ import annotations

import struct
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from ingest.ledger.local import LocalLedger
from ingest.storage.registry import DeviceKey, Registry
from ingest.storage.schema import RECORD_TABLES
from ingest.storage.store import Store
from schemas import merkle
from schemas.block import WireError, decode_header
from schemas.crypto import ZERO_HASH, block_hash, verify, verify_block_signature
from schemas.erasure import TAG_ERASURE, erasure_decoder
from schemas.records import Record

TABLES = {t.name: t.columns for t in RECORD_TABLES}
_KIND = {t.name: t.kind for t in RECORD_TABLES}
_list_decoder = msgspec.msgpack.Decoder(list[Record])

# Finding kinds, grouped by what they concern.
ROW_KINDS = ("row_changed", "row_inserted", "row_missing", "row_without_block", "row_not_erased")
BLOCK_KINDS = ("block_root", "block_header", "block_signature", "block_key", "block_missing", "chain_broken")
DEVICE_KINDS = ("device_head",)
BATCH_KINDS = (
    "batch_count",
    "batch_root",
    "batch_missing",
    "anchor_missing",
    "ledger_entry_missing",
    "ledger_root",
    "ledger_log",
)
ERASURE_KINDS = ("erasure_invalid",)


@dataclass(frozen=True)
class Finding:
    kind: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind:<20} {self.where}: {self.detail}"


@dataclass
class AuditReport:
    findings: list[Finding] = field(default_factory=list)
    records: int = 0
    blocks: int = 0
    batches: int = 0
    anchors: int = 0
    signatures: int = 0
    erased_blocks: int = 0
    erased_records: int = 0
    erasures: list[tuple[int, str, int, int]] = field(default_factory=list)  # id, device, blocks, records
    # A live store (the lake while ingest runs): batches stored in the snapshot but not anchored yet
    # (newer than ANCHOR_GRACE_S), and ledger entries of batches committed after the snapshot.
    pending_anchor: int = 0
    after_snapshot: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # per stage
    sub_seconds: dict[str, float] = field(default_factory=dict)  # parts of a stage

    @property
    def ok(self) -> bool:
        return not self.findings

    def add(self, kind: str, where: str, detail: str) -> None:
        self.findings.append(Finding(kind, where, detail))

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for f in self.findings:
            out[f.kind] += 1
        return dict(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "blocks": self.blocks,
            "batches": self.batches,
            "anchors": self.anchors,
            "signatures": self.signatures,
            "pending_anchor": self.pending_anchor,
            "after_snapshot": self.after_snapshot,
            "erased": {
                "blocks": self.erased_blocks,
                "records": self.erased_records,
                "statements": [
                    {"erasure_id": i, "device_id": d, "blocks": b, "records": r}
                    for i, d, b, r in self.erasures
                ],
            },
            "findings": [{"kind": f.kind, "where": f.where, "detail": f.detail} for f in self.findings],
            "by_kind": self.by_kind(),
            "seconds": self.seconds,
            "sub_seconds": self.sub_seconds,
        }


# On a live store, a batch younger than this without a ledger receipt is being anchored, not missing.
ANCHOR_GRACE_S = 300


def _row(table: str, dev: str, seq: int, idx: int) -> str:
    return f"{table} {dev}/{seq}/{idx}"


class Auditor:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        ledger: LocalLedger,
        operator_key: bytes,
        *,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.con = store.con
        # When the snapshot was taken, if writers may commit meanwhile (None: nobody writes).
        self.snapshot_ns: int | None = store.snapshot_ns
        self.registry = registry
        self.ledger = ledger
        self.operator_key = operator_key
        self.progress = progress or (lambda _s: None)

    def run(self) -> AuditReport:
        rep = AuditReport()
        for name, fn in (
            ("erasures", self._erasures),
            ("rows", self._rows),
            ("leaves", self._leaves),
            ("values", self._values),
            ("blocks", self._blocks),
            ("devices", self._devices),
            ("batches", self._batches),
            ("ledger", self._ledger),
        ):
            self.progress(name)
            t = time.perf_counter()
            fn(rep)
            rep.seconds[name] = time.perf_counter() - t
        return rep

    # -- erasures ---------------------------------------------------------------------------------
    def _erasures(self, rep: AuditReport) -> None:
        self._erased: dict[tuple[str, int], int] = {}
        stmts = self.con.execute(
            "SELECT erasure_id, device_id, statement, signature FROM erasures ORDER BY erasure_id"
        ).fetchall()
        for eid, dev, stmt, sig in stmts:
            where = f"erasure {eid}"
            stmt, sig = bytes(stmt), bytes(sig)
            if not verify(self.operator_key, TAG_ERASURE + b"\x00" + stmt, sig):
                rep.add("erasure_invalid", where, "statement signature does not verify with the operator key")
                continue
            try:
                st = erasure_decoder.decode(stmt)
            except msgspec.DecodeError as exc:
                rep.add("erasure_invalid", where, f"statement does not decode ({exc})")
                continue
            rows = self.con.execute(
                "SELECT seq, block_hash, record_count FROM erased_blocks WHERE erasure_id = ?"
                " ORDER BY batch_no, batch_index",
                [eid],
            ).fetchall()
            hashes = [bytes(h) for _, h, _ in rows]
            n_rec = sum(int(c) for _, _, c in rows)
            if (st.erasure_id, st.device_id) != (eid, dev):
                rep.add("erasure_invalid", where, "statement is for another erasure or device")
                continue
            if (
                st.blocks != len(rows)
                or st.records != n_rec
                or st.blocks_root != merkle.root_from_leaf_hashes([merkle.leaf_hash(h) for h in hashes])
            ):
                rep.add("erasure_invalid", where, "erased_blocks differ from the signed statement")
                continue
            for seq, _, _ in rows:
                self._erased[(dev, int(seq))] = eid
            rep.erased_blocks += len(rows)
            rep.erased_records += n_rec
            rep.erasures.append((int(eid), str(dev), len(rows), n_rec))
        # erased_blocks rows that no valid statement covers
        for dev, seq, eid in self.con.execute(
            "SELECT device_id, seq, erasure_id FROM erased_blocks"
        ).fetchall():
            if (dev, int(seq)) not in self._erased:
                rep.add(
                    "erasure_invalid",
                    f"block {dev}/{seq}",
                    f"listed as erased by erasure {eid}, not covered by a valid statement",
                )

    # -- rows -------------------------------------------------------------------------------------
    def _rows(self, rep: AuditReport) -> None:
        # Rows reported here (inserted, orphaned, left behind) are not reported again by later stages.
        self._flagged: set[str] = set()
        union = " UNION ALL ".join(f"SELECT '{t}' AS t, device_id, block_seq, idx FROM {t}" for t in TABLES)
        con = self.con
        rep.records = int(con.execute(f"SELECT count(*) FROM ({union})").fetchone()[0])  # type: ignore[index]
        for t, dev, seq, idx, what in con.execute(
            f"""WITH r AS ({union}),
            dup AS (SELECT device_id, block_seq, idx FROM r GROUP BY ALL HAVING count(*) > 1)
            SELECT r.t, r.device_id, r.block_seq, r.idx,
                   CASE WHEN e.device_id IS NOT NULL THEN 'erased'
                        WHEN b.device_id IS NULL THEN 'orphan'
                        WHEN r.idx >= b.record_count THEN 'range'
                        ELSE 'dup' END
            FROM r LEFT JOIN blocks b ON b.device_id = r.device_id AND b.seq = r.block_seq
                   LEFT JOIN erased_blocks e ON e.device_id = r.device_id AND e.seq = r.block_seq
            WHERE e.device_id IS NOT NULL OR b.device_id IS NULL OR r.idx >= b.record_count
               OR (r.device_id, r.block_seq, r.idx) IN (SELECT (device_id, block_seq, idx) FROM dup)
            ORDER BY 2, 3, 4, 1"""
        ).fetchall():
            where = _row(t, dev, seq, idx)
            self._flagged.add(where)
            if what == "erased":
                rep.add("row_not_erased", where, "row of an erased block is still stored")
            elif what == "orphan":
                rep.add("row_without_block", where, "no stored block has this device and sequence number")
            elif what == "range":
                rep.add("row_inserted", where, "position beyond the block's signed record count")
            else:
                rep.add("row_inserted", where, "a second row at this position of the block")
        for dev, seq, idx in con.execute(
            f"""WITH r AS ({union})
            SELECT b.device_id, b.seq, i.idx FROM blocks b, range(b.record_count) i(idx)
            WHERE NOT EXISTS (SELECT 1 FROM r WHERE r.device_id = b.device_id AND r.block_seq = b.seq
                              AND r.idx = i.idx)
            ORDER BY 1, 2, 3"""
        ).fetchall():
            rep.add("row_missing", f"{dev}/{seq}/{idx}", "the block's signed record count includes this row")

    # -- leaves -----------------------------------------------------------------------------------
    def _leaves(self, rep: AuditReport) -> None:
        for t in TABLES:
            for dev, seq, idx in self.con.execute(
                rf"""SELECT r.device_id, r.block_seq, r.idx FROM {t} r
                JOIN blocks b ON b.device_id = r.device_id AND b.seq = r.block_seq
                WHERE unhex(sha256('\x00'::BLOB || unhex(sha256('vt/v1/leaf-salt\x00'::BLOB || b.salt_seed
                      || unhex(printf('%08x', r.idx)))) || r.raw)) != r.leaf
                ORDER BY 1, 2, 3"""
            ).fetchall():
                where = _row(t, dev, seq, idx)
                if where not in self._flagged:
                    rep.add("row_changed", where, "raw bytes differ from the record verified at ingest")

    # -- values -----------------------------------------------------------------------------------
    def _values(self, rep: AuditReport) -> None:
        for t, cols in TABLES.items():
            names = ["ts"] + [c for c, _, _ in cols]
            q = f"SELECT device_id, block_seq, idx, epoch_ns(ts) AS ts, {', '.join(names[1:])}, raw FROM {t}"
            for batch in _reader(self.con, q, 200_000):
                raws = batch.column("raw").to_pylist()
                n = len(raws)
                try:
                    recs = _list_decoder.decode(b"\xdd" + n.to_bytes(4, "big") + b"".join(raws))
                except msgspec.DecodeError:
                    recs = [_decode_or_none(r) for r in raws]
                kind = _KIND[t]
                wrong = {i for i, r in enumerate(recs) if r is not None and type(r) is not kind}
                bad = self._compare(batch, [None if i in wrong else r for i, r in enumerate(recs)], cols)
                for i in wrong:
                    bad[i] = f"raw bytes are a {type(recs[i]).__name__}, not a row of {t}"
                if bad:
                    devs = batch.column("device_id").to_pylist()
                    seqs = batch.column("block_seq").to_pylist()
                    idxs = batch.column("idx").to_pylist()
                    for i, what in sorted(bad.items()):
                        where = _row(t, devs[i], seqs[i], idxs[i])
                        if where not in self._flagged:
                            rep.add("row_changed", where, what)

    @staticmethod
    def _compare(
        batch: pa.RecordBatch, recs: list[Any], cols: list[tuple[str, str, pa.DataType]]
    ) -> dict[int, str]:
        bad: dict[int, str] = {}
        good = [i for i, r in enumerate(recs) if r is not None]
        for i, r in enumerate(recs):
            if r is None:
                bad[i] = "raw bytes do not decode as a record"
        if not good:
            return bad
        ok_recs = [recs[i] for i in good]
        fields = ("ts_ns", *(c for c, _, _ in cols))
        values = [list(map(attrgetter(f), ok_recs)) for f in fields]  # column by column: no per-row tuples
        whole = len(good) == len(recs)
        take = None if whole else pa.array(good, pa.int64())
        specs = [("ts", pa.int64())] + [(c, typ) for c, _, typ in cols]
        for (name, typ), col in zip(specs, values, strict=True):
            stored = batch.column(name) if take is None else batch.column(name).take(take)
            signed = pa.array(col, typ)
            if stored.type != signed.type:
                stored = stored.cast(signed.type)
            if pa.types.is_floating(typ):
                # Bit for bit: 0.0 == -0.0 as numbers, but they are different signed values.
                stored, signed = stored.view(pa.int64()), signed.view(pa.int64())
            diff = pc.fill_null(pc.not_equal(stored, signed), True)
            both_null = pc.and_(pc.is_null(stored), pc.is_null(signed))
            diff = pc.and_not(diff, both_null)
            if pc.any(diff).as_py():
                for j in pc.indices_nonzero(diff).to_pylist():
                    i = good[j]
                    prev = bad.get(i)
                    a, b = stored[j].as_py(), signed[j].as_py()
                    if pa.types.is_floating(typ):
                        a, b = (_float(x) for x in (a, b))
                    msg = f"column {name} = {a!r}, the signed record says {b!r}"
                    bad[i] = msg if prev is None else prev + "; " + msg
        return bad

    # -- blocks -----------------------------------------------------------------------------------
    def _blocks(self, rep: AuditReport) -> None:
        con = self.con
        keys: dict[str, DeviceKey | None] = {}
        union = " UNION ALL ".join(f"SELECT device_id, block_seq, idx, leaf FROM {t}" for t in TABLES)
        # Each block with its rows' leaves in leaf order (NULL unless the row set is exactly 0..count-1,
        # which the rows stage reports otherwise).
        rows = con.execute(
            f"""WITH agg AS (SELECT device_id, block_seq, list(leaf ORDER BY idx) AS leaves, count(*) AS n,
                    count(DISTINCT idx) AS u, max(idx) AS m FROM ({union}) GROUP BY ALL)
            SELECT b.device_id, b.seq, b.block_hash, b.header, b.signature, b.key_id, b.boot, b.record_count,
                   epoch_ns(b.t_first), epoch_ns(b.t_last), b.merkle_root,
                   CASE WHEN a.n = b.record_count AND a.u = a.n AND a.m = a.n - 1 THEN a.leaves END
            FROM blocks b LEFT JOIN agg a ON a.device_id = b.device_id AND a.block_seq = b.seq
            ORDER BY b.device_id, b.seq"""
        ).fetchall()
        t_sig = t_tree = 0.0
        clock = time.perf_counter
        rep.blocks = len(rows)
        prev_dev, prev_seq, prev_hash = None, -1, ZERO_HASH
        for dev, seq, bh, header, sig, key_id, boot, count, t0, t1, mroot, lv in rows:
            where = f"block {dev}/{seq}"
            header, bh, sig, mroot = bytes(header), bytes(bh), bytes(sig), bytes(mroot)
            real_hash = block_hash(header)
            if real_hash != bh:
                rep.add("block_header", where, "header bytes do not hash to the stored block hash")
            try:
                h = decode_header(header)
            except WireError as exc:
                rep.add("block_header", where, f"header does not decode ({exc.detail})")
                prev_dev = None
                continue
            cols = (dev, seq, key_id, boot, count, t0, t1, mroot)
            signed = (h.device_id, h.seq, h.key_id, h.boot, h.count, h.t_first, h.t_last, h.root)
            names = ("device_id", "seq", "key_id", "boot", "record_count", "t_first", "t_last", "merkle_root")
            diffs = [n for n, a, b in zip(names, cols, signed, strict=True) if a != b]
            if diffs:
                rep.add("block_header", where, f"columns differ from the signed header: {', '.join(diffs)}")
            if h.key_id not in keys:
                keys[h.key_id] = self.registry.get(h.key_id)
            key = keys[h.key_id]
            if key is None:
                rep.add("block_key", where, f"key {h.key_id} is not in the registry")
            else:
                rep.signatures += 1
                c0 = clock()
                good_sig = verify_block_signature(key.public_key, header, sig)
                t_sig += clock() - c0
                if not good_sig:
                    rep.add("block_signature", where, f"signature does not verify with key {h.key_id}")
                if key.device_id != h.device_id:
                    rep.add("block_key", where, f"key {h.key_id} belongs to device {key.device_id}")
                elif not key.covers(h.t_first, h.t_last):
                    rep.add(
                        "block_key", where, f"block time outside key {h.key_id}'s validity {key.validity()}"
                    )
            if lv is not None:
                c0 = clock()
                same = merkle.root_from_leaf_hashes(lv) == h.root
                t_tree += clock() - c0
                if not same:
                    rep.add("block_root", where, "its rows' leaves do not reproduce the signed records root")
            # chain link to the previous stored (or erased) block of the same device
            if prev_dev == dev and seq == prev_seq + 1 and h.prev != prev_hash:
                rep.add("chain_broken", where, f"prev does not match block {prev_seq}'s hash")
            elif prev_dev != dev and seq == 0 and h.prev != ZERO_HASH:
                rep.add("chain_broken", where, "block 0 does not chain to the zero hash")
            prev_dev, prev_seq, prev_hash = dev, seq, bh  # a changed header is reported once, above
        rep.sub_seconds["blocks.signatures"] = t_sig
        rep.sub_seconds["blocks.trees"] = t_tree

    # -- device chain heads -----------------------------------------------------------------------
    def _devices(self, rep: AuditReport) -> None:
        """Each device's chain head (``devices``) against its stored blocks: the highest sequence
        number and its hash, the block and record counts. A head ahead of the blocks means blocks
        were deleted (or the head written beyond them); a consistent deletion of the newest blocks
        from the store, the ledger and its checkpoints is visible only against a checkpoint kept
        elsewhere (``telematics ledger verify --since``)."""
        for dev, what, detail in self.con.execute(
            """WITH b AS (SELECT device_id, max(seq) AS last_seq, arg_max(block_hash, seq) AS last_hash,
                                 count(*) AS blocks, sum(record_count) AS records
                          FROM (SELECT device_id, seq, block_hash, record_count FROM blocks
                                -- blocks erased by retention still count in a head that stays
                                UNION ALL SELECT device_id, seq, block_hash, record_count FROM erased_blocks
                                WHERE device_id IN (SELECT device_id FROM devices))
                          GROUP BY ALL)
            SELECT coalesce(d.device_id, b.device_id),
                   CASE WHEN d.device_id IS NULL THEN 'missing' WHEN b.device_id IS NULL THEN 'orphan'
                        ELSE 'differs' END,
                   concat_ws(', ',
                       CASE WHEN d.last_seq <> b.last_seq THEN
                           printf('last_seq %d, newest stored block %d', d.last_seq, b.last_seq) END,
                       CASE WHEN d.last_seq = b.last_seq AND d.last_block_hash <> b.last_hash THEN
                           'last_block_hash is not the newest block''s hash' END,
                       CASE WHEN d.blocks <> b.blocks THEN printf('blocks %d, %d stored', d.blocks, b.blocks) END,
                       CASE WHEN d.records <> b.records THEN
                           printf('records %d, %d in stored blocks', d.records, b.records) END)
            FROM devices d FULL JOIN b ON d.device_id = b.device_id
            WHERE d.device_id IS NULL OR b.device_id IS NULL OR d.last_seq <> b.last_seq
               OR d.last_block_hash <> b.last_hash OR d.blocks <> b.blocks OR d.records <> b.records
            ORDER BY 1"""
        ).fetchall():
            where = f"device {dev}"
            if what == "missing":
                rep.add("device_head", where, "has stored blocks but no chain head")
            elif what == "orphan":
                if not any(d == dev for d, _ in self._erased):
                    rep.add("device_head", where, "has a chain head but no stored block")
            else:
                rep.add("device_head", where, detail)

    # -- batches ----------------------------------------------------------------------------------
    def _batches(self, rep: AuditReport) -> None:
        con = self.con
        stored = {
            int(n): (bytes(r), int(c), int(rc))
            for n, r, c, rc in con.execute(
                "SELECT batch_no, root, block_count, record_count FROM batches"
            ).fetchall()
        }
        rep.batches = len(stored)
        members: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        records: dict[int, int] = defaultdict(int)
        for n, i, h, rc in con.execute(
            "SELECT batch_no, batch_index, block_hash, record_count FROM blocks"
            " UNION ALL SELECT batch_no, batch_index, block_hash, record_count FROM erased_blocks ORDER BY 1, 2"
        ).fetchall():
            members[int(n)].append((int(i), bytes(h)))
            records[int(n)] += int(rc)
        for n in sorted(set(members) - set(stored)):
            rep.add(
                "batch_missing",
                f"batch {n}",
                f"{len(members[n])} stored blocks belong to a batch that is not stored",
            )
        for n, (root, count, n_records) in sorted(stored.items()):
            where = f"batch {n}"
            if records.get(n, 0) != n_records:
                rep.add(
                    "batch_count",
                    where,
                    f"records column says {n_records}, its blocks' signed counts add up to {records.get(n, 0)}",
                )
            m = members.get(n, [])
            idx = [i for i, _ in m]
            if idx != list(range(count)):
                missing = sorted(set(range(count)) - set(idx))
                extra = sorted(set(idx) - set(range(count)))
                rep.add(
                    "block_missing",
                    where,
                    f"batch holds {count} blocks; missing positions {missing[:20]}"
                    + (f", unexpected {extra[:20]}" if extra else ""),
                )
                continue
            if merkle.root_from_leaf_hashes([merkle.leaf_hash(h) for _, h in m]) != root:
                rep.add("batch_root", where, "block hashes do not reproduce the stored batch root")

    # -- ledger -----------------------------------------------------------------------------------
    def _ledger(self, rep: AuditReport) -> None:
        con = self.con
        anchors = {
            int(n): (bytes(h), int(i))
            for n, h, i in con.execute("SELECT batch_no, entry_hash, entry_index FROM anchors").fetchall()
        }
        rep.anchors = len(anchors)
        stored = con.execute("SELECT batch_no, root, epoch_ns(created_at) FROM batches").fetchall()
        roots = {int(n): bytes(r) for n, r, _ in stored}
        created = {int(n): int(c) for n, _, c in stored}
        snap = self.snapshot_ns
        for n, root in sorted(roots.items()):
            where = f"batch {n}"
            rc = self.ledger.receipt(n)
            if n not in anchors and snap is not None and created[n] > snap - ANCHOR_GRACE_S * 1e9:
                rep.pending_anchor += 1  # a live ingest anchors it in a moment
                if rc is None or rc.root == root:
                    continue
            if n not in anchors:
                rep.add("anchor_missing", where, "no ledger receipt recorded")
            if rc is None:
                rep.add("ledger_entry_missing", where, "the ledger has no entry for this batch")
            elif rc.root != root:
                rep.add("ledger_root", where, "the ledger entry holds another root")
            elif n in anchors and anchors[n] != (rc.entry_hash, rc.index):
                rep.add("ledger_root", where, "the recorded receipt names another ledger entry")
        for n in sorted(set(self.ledger.roots()) - set(roots)):
            rc = self.ledger.receipt(n)
            if snap is not None and rc is not None and rc.time_ns >= snap:
                rep.after_snapshot += 1  # committed after this audit's snapshot
                continue
            rep.add("batch_missing", f"batch {n}", "anchored in the ledger but not stored")
        for p in self.ledger.verify(self.operator_key).problems:
            rep.add("ledger_log", str(self.ledger.path.name), p)


def _float(bits: int | None) -> float | None:
    return None if bits is None else struct.unpack("<d", struct.pack("<q", bits))[0]  # type: ignore[no-any-return]


def _reader(con: Any, sql: str, rows: int) -> pa.RecordBatchReader:
    r = con.sql(sql).to_arrow_reader(rows)
    assert r is not None
    return r


def _decode_or_none(raw: bytes) -> Any:
    try:
        return msgspec.msgpack.decode(raw, type=Record)
    except msgspec.DecodeError:
        return None
