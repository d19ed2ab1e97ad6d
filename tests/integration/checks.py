"""Independent re-verification of a DuckDB written by the consumer: every row, block, batch and anchor."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ingest.ledger.local import LocalLedger
from ingest.storage.registry import Registry
from ingest.storage.schema import TABLE_NAMES
from ingest.storage.store import FileStore, Store
from schemas.block import decode_header, records_root
from schemas.crypto import block_hash, verify_block_signature
from schemas.merkle import leaf_hash, root_from_leaf_hashes


def recheck(store_path: Path | Store, registry_path: Path, ledger_path: Path) -> dict[str, int]:
    """Recompute signatures, block roots, chain links, batch roots and ledger anchors. Raises on any
    mismatch. ``store_path``: a DuckDB file, or an open store (closed here)."""
    s = store_path if not isinstance(store_path, Path) else FileStore(store_path, read_only=True)
    reg = Registry(registry_path)
    try:
        con = s.con
        raws: dict[tuple[str, int], list[tuple[int, bytes]]] = {}
        for table in TABLE_NAMES:
            for dev, seq, idx, raw in con.execute(
                f"SELECT device_id, block_seq, idx, raw FROM {table}"
            ).fetchall():
                raws.setdefault((dev, int(seq)), []).append((int(idx), bytes(raw)))
        dup_rows = con.execute(
            "SELECT count(*) - count(DISTINCT (device_id, block_seq, idx)) FROM "
            "(" + " UNION ALL ".join(f"SELECT device_id, block_seq, idx FROM {t}" for t in TABLE_NAMES) + ")"
        ).fetchone()
        assert dup_rows is not None and dup_rows[0] == 0, f"{(dup_rows or (None,))[0]} duplicated record rows"
        blocks = con.execute(
            "SELECT device_id, seq, block_hash, header, signature, salt_seed, key_id, batch_no, batch_index "
            "FROM blocks ORDER BY device_id, seq"
        ).fetchall()
        keys = {k.key_id: k for k in reg.all()}
        by_batch: dict[int, list[tuple[int, bytes]]] = {}
        prev_hash: dict[str, tuple[int, bytes]] = {}
        for dev, seq, bh, header, sig, seed, key_id, batch_no, bidx in blocks:
            header, sig, seed, bh = bytes(header), bytes(sig), bytes(seed), bytes(bh)
            assert verify_block_signature(keys[key_id].public_key, header, sig), f"signature {dev}/{seq}"
            h = decode_header(header)
            assert block_hash(header) == bh
            recs = [r for _, r in sorted(raws.get((dev, int(seq)), []))]
            assert len(recs) == h.count, f"block {dev}/{seq}: {len(recs)} rows stored, header says {h.count}"
            assert records_root(seed, recs) == h.root, f"Merkle root of stored rows of block {dev}/{seq}"
            if dev in prev_hash and prev_hash[dev][0] == seq - 1:
                assert h.prev == prev_hash[dev][1], f"chain link {dev}/{seq}"
            prev_hash[dev] = (int(seq), bh)
            by_batch.setdefault(int(batch_no), []).append((int(bidx), bh))
        ledger = LocalLedger(ledger_path)
        report = ledger.verify()
        assert report.ok, report.problems
        roots = ledger.roots()
        batches = con.execute("SELECT batch_no, root FROM batches").fetchall()
        assert len({int(n) for n, _ in batches}) == len(batches), "a batch number stored twice"
        # every stored batch is in the ledger once: one entry per batch number, no other entries
        assert report.entries == len(roots) == len(batches), (report.entries, len(roots), len(batches))
        for batch_no, root in batches:
            hashes = [bh for _, bh in sorted(by_batch[int(batch_no)])]
            assert root_from_leaf_hashes([leaf_hash(x) for x in hashes]) == bytes(root), (
                f"batch {batch_no} root"
            )
            assert roots.get(int(batch_no)) == bytes(root), f"batch {batch_no} not anchored in the ledger"
        per_device = Counter(dev for (dev, _seq) in raws for _ in raws[(dev, _seq)])
        return {
            "records": sum(len(v) for v in raws.values()),
            "blocks": len(blocks),
            "batches": len(batches),
            "ledger_entries": report.entries,
            "devices": len(per_device),
        }
    finally:
        s.close()
        reg.close()
