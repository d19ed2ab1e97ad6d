"""A root conflict on chain is a LedgerConflict (the consumer stops), as in the local ledger, never
a plain LedgerError (which the consumer retries for ever)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.config import EvmConfig
from ingest.ledger.base import LedgerConflict
from ingest.ledger.evm import EvmLedger, anchors_path
from ingest.ledger.local import LocalLedger, append_json_line
from schemas.crypto import SigningKey


def test_on_chain_root_conflict_is_a_ledger_conflict(tmp_path: Path) -> None:
    operator = SigningKey.generate()
    local = LocalLedger(tmp_path / "ledger.jsonl", operator)
    # What the anchors file says the chain holds for batch 0: another root than the one we anchor.
    anchor = {
        "chain_id": 31337,
        "tx_hash": "aa" * 32,
        "block_number": 7,
        "block_hash": "bb" * 32,
        "kind": "batch",
        "number": 0,
        "root": "cc" * 32,
        "signature": "dd" * 64,
    }
    append_json_line(
        anchors_path(local.path), {"kind": "batch", "number": 0, "state": "confirmed", "anchor": anchor}
    )
    ledger = EvmLedger(local, None, operator, EvmConfig(mode="batch"))
    with pytest.raises(LedgerConflict, match="batch 0 was anchored on chain with another root"):
        ledger.anchor(0, b"\x01" * 32, 1)
    # the same root is no conflict: the recorded anchor is returned
    local2 = LocalLedger(tmp_path / "other.jsonl", operator)
    append_json_line(
        anchors_path(local2.path), {"kind": "batch", "number": 0, "state": "confirmed", "anchor": anchor}
    )
    receipt = EvmLedger(local2, None, operator, EvmConfig(mode="batch")).anchor(0, b"\xcc" * 32, 1)
    assert receipt.batch_no == 0
