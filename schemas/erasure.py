"""Erasure statements: what the operator signs when a vehicle's records are erased (docs/PROOFS.md).

The records of an erased block are deleted, but its block hash stays a leaf of its batch tree
(table ``erased_blocks``), so every other row's proof still verifies. The statement commits to
exactly which blocks were erased: ``blocks_root`` is the RFC 6962 root over
``SHA-256(0x00 || block_hash)`` of the erased blocks, ordered by (batch_no, batch_index).
The operator signs ``"vt/v1/erasure" || 0x00 || statement_bytes`` with the ingest key, so an
audit can tell rows erased on request from rows deleted by someone else.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.crypto import TAG_ERASURE

__all__ = ["TAG_ERASURE", "ErasureStatement", "erasure_decoder", "erasure_encoder", "signing_input"]


class ErasureStatement(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """MessagePack ``[erasure_id, device_id, erased_at_ns, reason, blocks, records, blocks_root]``."""

    erasure_id: Annotated[int, Meta(ge=0)]
    device_id: str
    erased_at: Annotated[int, Meta(ge=0)]
    reason: str
    blocks: Annotated[int, Meta(ge=0)]
    records: Annotated[int, Meta(ge=0)]
    blocks_root: Annotated[bytes, Meta(min_length=32, max_length=32)]


erasure_encoder = msgspec.msgpack.Encoder()
erasure_decoder = msgspec.msgpack.Decoder(ErasureStatement)


def signing_input(statement_bytes: bytes) -> bytes:
    return TAG_ERASURE + b"\x00" + statement_bytes
