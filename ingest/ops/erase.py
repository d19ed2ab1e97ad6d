"""`telematics erase --device ID`: delete one vehicle's records so that every other proof still holds.

Deletion, not crypto-shredding: analysts query plaintext columns, so the records themselves go.
What stays, and why (docs/SECURITY.md has the full discussion):

* each erased block's hash, batch number and position (``erased_blocks``): the leaves of the
  batch trees that other blocks' proofs climb through. A block hash is a salted commitment; with
  the records and the salt seed deleted it reveals nothing of the records.
* a signed erasure statement (``erasures``): the operator's Ed25519 signature over which blocks
  were erased, when and why, so ``telematics audit`` reports the rows as *erased*, not *missing*.
* the ledger: it only ever held batch roots and checkpoints, nothing to erase there.

Deleted in one transaction: the device's rows in every record table, its blocks (header,
signature, salt seed), its chain head, gaps, duplicates, rejections and session events. Then
``Store.purge``: in the lake, every data file holding deleted rows is rewritten, every older
snapshot expired and every unreferenced file deleted, so no file and no snapshot (``AT (VERSION
=> n)``) still holds them. A DuckDB file may keep deleted bytes in free pages until they are
reused: ``compact`` rewrites it into a fresh file so none remain.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from common.errors import Fatal
from ingest.storage.schema import TABLE_NAMES
from ingest.storage.store import Store, StoreError
from schemas import merkle
from schemas.crypto import SigningKey
from schemas.erasure import ErasureStatement, erasure_encoder, signing_input

_ERASED_COLUMNS = ("device_id", "seq", "block_hash", "batch_no", "batch_index", "record_count", "erasure_id")
_ERASED_TYPES = (pa.string(), pa.uint64(), pa.binary(), pa.uint64(), pa.uint32(), pa.uint16(), pa.uint64())


class EraseError(Fatal):
    """Nothing to erase, or the erasure could not be written (nothing was changed)."""


@dataclass(frozen=True)
class Erasure:
    erasure_id: int
    device_id: str
    blocks: int
    records: int


def erase_device(
    store: Store, operator: SigningKey, device_id: str, *, reason: str = "erasure request"
) -> Erasure:
    """Erase every stored block of the device, its chain head and everything else it left."""
    con = store.con
    blocks = con.execute(
        "SELECT seq, block_hash, batch_no, batch_index, record_count FROM blocks WHERE device_id = ?"
        " ORDER BY batch_no, batch_index",
        [device_id],
    ).fetchall()
    if not blocks:
        already = con.execute(
            "SELECT count(*) FROM erased_blocks WHERE device_id = ?", [device_id]
        ).fetchone()
        if already and already[0]:
            raise EraseError(
                f"device {device_id} was already erased ({already[0]} blocks); nothing left to erase"
            )
        raise EraseError(f"device {device_id} has no stored blocks")
    e = _erase(store, operator, device_id, blocks, reason, whole=True, before_ns=None)
    _purge(store, f"device {device_id} is erased from the tables")
    return e


def drop_older_than(
    store: Store, operator: SigningKey, cutoff_ns: int, *, reason: str, dry_run: bool = False
) -> list[Erasure]:
    """Retention: erase every block whose newest record is older than ``cutoff_ns``, per device, with
    a signed statement each, exactly like an erasure of those blocks: their hashes stay (every
    other proof still verifies, the audit reports them as erased), the chain heads stay. Session
    events older than the cutoff go too. ``dry_run``: say what would go, change nothing."""
    con = store.con
    rows = con.execute(
        "SELECT device_id, seq, block_hash, batch_no, batch_index, record_count FROM blocks"
        " WHERE t_last < make_timestamp_ns(?) ORDER BY device_id, batch_no, batch_index",
        [cutoff_ns],
    ).fetchall()
    by_dev: dict[str, list[tuple[int, bytes, int, int, int]]] = {}
    for dev, *rest in rows:
        by_dev.setdefault(dev, []).append(tuple(rest))  # type: ignore[arg-type]
    out = []
    for dev, blocks in sorted(by_dev.items()):
        if dry_run:
            out.append(Erasure(-1, dev, len(blocks), sum(int(b[4]) for b in blocks)))
        else:
            out.append(_erase(store, operator, dev, blocks, reason, whole=False, before_ns=cutoff_ns))
    if out and not dry_run:
        _purge(store, f"{len(out)} devices' old blocks are erased from the tables")
    return out


def _purge(store: Store, done: str) -> None:
    try:
        store.purge()  # the lake: no file and no snapshot keeps the rows; a DuckDB file: see compact
    except StoreError as exc:
        raise EraseError(
            f"{done}, but their bytes are still in old files: {exc}; run `telematics maintain` to finish"
        ) from exc


def _erase(
    store: Store,
    operator: SigningKey,
    device_id: str,
    blocks: list[Any],
    reason: str,
    *,
    whole: bool,
    before_ns: int | None,
) -> Erasure:
    """One signed statement and one transaction for ``blocks`` (seq, hash, batch_no, batch_index,
    record_count) of one device; ``whole``: the device's head, gaps, duplicates, rejections and
    sessions go too; else only the duplicates of these blocks and sessions before ``before_ns``."""
    con = store.con
    row = con.execute("SELECT coalesce(max(erasure_id) + 1, 0) FROM erasures").fetchone()
    erasure_id = int(row[0]) if row else 0
    records = sum(int(b[4]) for b in blocks)
    now = time.time_ns()
    st = ErasureStatement(
        erasure_id=erasure_id,
        device_id=device_id,
        erased_at=now,
        reason=reason,
        blocks=len(blocks),
        records=records,
        blocks_root=merkle.root_from_leaf_hashes([merkle.leaf_hash(bytes(b[1])) for b in blocks]),
    )
    sb = erasure_encoder.encode(st)
    sig = operator.sign(signing_input(sb))
    try:
        con.execute("BEGIN TRANSACTION")
        # One INSERT (a lake writes a file per statement), from columns.
        cols = list(zip(*[(device_id, s, h, n, i, c, erasure_id) for s, h, n, i, c in blocks], strict=True))
        kept = pa.table(
            [pa.array(c, t) for c, t in zip(cols, _ERASED_TYPES, strict=True)], names=list(_ERASED_COLUMNS)
        )
        con.register("_erased", kept)
        con.execute("INSERT INTO erased_blocks SELECT * FROM _erased")
        con.execute(
            "INSERT INTO erasures VALUES (?, ?, make_timestamp_ns(?), ?, ?, ?, ?, ?)",
            [erasure_id, device_id, now, reason, len(blocks), records, sb, sig],
        )
        if whole:
            for table in TABLE_NAMES:
                con.execute(f"DELETE FROM {table} WHERE device_id = ?", [device_id])
            for table in ("blocks", store.device_table, "gaps", "duplicates", "rejections", "session_events"):
                con.execute(f"DELETE FROM {table} WHERE device_id = ?", [device_id])
        else:
            these = "SELECT seq FROM _erased"
            for table in TABLE_NAMES:
                con.execute(
                    f"DELETE FROM {table} WHERE device_id = ? AND block_seq IN ({these})", [device_id]
                )
            for table in ("blocks", "duplicates"):
                con.execute(f"DELETE FROM {table} WHERE device_id = ? AND seq IN ({these})", [device_id])
            con.execute(
                "DELETE FROM session_events WHERE device_id = ? AND ts < make_timestamp_ns(?)",
                [device_id, before_ns],
            )
        con.execute("COMMIT")
    except duckdb.Error as exc:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise EraseError(f"erasure of device {device_id} not written: {exc}") from exc
    finally:
        with contextlib.suppress(duckdb.Error):
            con.unregister("_erased")
    return Erasure(erasure_id, device_id, len(blocks), records)


def compact(path: Path) -> None:
    """Rewrite the DuckDB file into a fresh one (no free pages holding deleted bytes), then swap it in.
    The store must be closed; no other process may hold the file."""
    tmp = path.with_name(path.name + ".compact")
    tmp.unlink(missing_ok=True)
    try:
        con = duckdb.connect(str(path))
        try:
            src = con.execute("SELECT current_database()").fetchone()
            assert src is not None
            con.execute(f"ATTACH '{tmp}' AS fresh")
            con.execute(f'COPY FROM DATABASE "{src[0]}" TO fresh')
            con.execute("DETACH fresh")
        finally:
            con.close()
    except duckdb.Error as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot compact {path}: {exc}") from exc
    os.replace(tmp, path)
    wal = path.with_name(path.name + ".wal")
    wal.unlink(missing_ok=True)
