"""Blocks: the signed unit that travels from a vehicle to the ingest.

A block groups up to N records. Its header commits to them through an RFC 6962
Merkle root over salted leaves, to the previous block of the same device through a
hash chain, and is signed with the device's Ed25519 key. The header is encoded once;
those exact bytes are signed, carried, verified and stored, never re-encoded.

See schemas/WIRE.md for the byte layout.
"""

from __future__ import annotations

import enum
import hashlib
from typing import Annotated

import msgspec
from msgspec import Meta

from schemas import crypto
from schemas.merkle import root_from_leaf_hashes
from schemas.patterns import HexId16, HexId32
from schemas.records import MAX_TIMESTAMP_NS, SCHEMA_VERSION, Record

ENVELOPE_VERSION = 1
MAX_RECORDS_PER_BLOCK = 10_000

Hash32 = Annotated[bytes, Meta(min_length=32, max_length=32)]
U32 = Annotated[int, Meta(ge=0, le=2**32 - 1)]
U64 = Annotated[int, Meta(ge=0)]  # MessagePack integers stop at 2**64 - 1
TimeNs = Annotated[int, Meta(ge=0, le=MAX_TIMESTAMP_NS)]  # see schemas/records.py


class Reason(enum.StrEnum):
    """Why a message was rejected. Stable, machine-readable; stored and sent to the dead-letter topic."""

    OVERSIZED = "oversized"
    DECODE = "decode_error"
    UNKNOWN_KEY = "unknown_key"
    REVOKED_KEY = "revoked_key"
    KEY_VALIDITY = "key_not_valid"
    SIGNATURE = "bad_signature"
    HEADER = "bad_header"
    DEVICE_MISMATCH = "device_mismatch"
    MERKLE = "merkle_mismatch"
    RECORD = "bad_record"
    SEQ_CONFLICT = "seq_conflict"
    CHAIN = "chain_broken"
    UNSTORABLE = "unstorable"
    QUOTA = "quota_exceeded"


class WireError(Exception):
    """Input that must be dead-lettered: carries a machine-readable reason and a detail."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BlockHeader(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    v: Annotated[int, Meta(ge=1, le=255)]
    device_id: HexId32
    key_id: HexId16
    boot: U32
    seq: U64
    prev: Hash32
    count: Annotated[int, Meta(ge=1, le=MAX_RECORDS_PER_BLOCK)]
    t_first: TimeNs
    t_last: TimeNs
    root: Hash32


class Envelope(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """What travels on MQTT and Kafka: header bytes, signature and record bytes exactly as signed."""

    v: int
    key_id: HexId16
    header: bytes
    sig: Annotated[bytes, Meta(min_length=64, max_length=64)]
    seed: Annotated[bytes, Meta(min_length=32, max_length=32)]
    records: Annotated[list[bytes], Meta(min_length=1, max_length=MAX_RECORDS_PER_BLOCK)]


_record_encoder = msgspec.msgpack.Encoder()
_record_decoder = msgspec.msgpack.Decoder(Record)
_header_decoder = msgspec.msgpack.Decoder(BlockHeader)
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)


def encode_record(record: Record) -> bytes:
    return _record_encoder.encode(record)


def decode_record(data: bytes) -> Record:
    rec: Record = _record_decoder.decode(data)
    return rec


def encode_header(header: BlockHeader) -> bytes:
    return _record_encoder.encode(header)


def decode_header(data: bytes) -> BlockHeader:
    try:
        return _header_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise WireError(Reason.HEADER, f"block header does not decode: {exc}") from exc


def encode_envelope(env: Envelope) -> bytes:
    return _record_encoder.encode(env)


def decode_envelope(payload: bytes) -> Envelope:
    try:
        env = _envelope_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise WireError(Reason.DECODE, f"payload is not a v{ENVELOPE_VERSION} block envelope: {exc}") from exc
    if env.v != ENVELOPE_VERSION:
        raise WireError(Reason.DECODE, f"envelope version {env.v} is not supported")
    return env


def leaf_hashes(seed: bytes, records: list[bytes]) -> list[bytes]:
    """RFC 6962 leaf hashes of a block's records: SHA-256(0x00 || salt_i || record_i)."""
    sha = hashlib.sha256
    return [
        sha(b"\x00" + s + r).digest()
        for s, r in zip(crypto.leaf_salts(seed, len(records)), records, strict=False)
    ]


def records_root(seed: bytes, records: list[bytes]) -> bytes:
    return root_from_leaf_hashes(leaf_hashes(seed, records))


class Block(msgspec.Struct, frozen=True):
    """A signed block as built on the vehicle."""

    header: BlockHeader
    header_bytes: bytes
    signature: bytes
    seed: bytes
    records: list[bytes]

    @property
    def hash(self) -> bytes:
        return crypto.block_hash(self.header_bytes)

    def envelope(self) -> Envelope:
        return Envelope(
            v=ENVELOPE_VERSION,
            key_id=self.header.key_id,
            header=self.header_bytes,
            sig=self.signature,
            seed=self.seed,
            records=self.records,
        )

    def to_wire(self) -> bytes:
        return encode_envelope(self.envelope())


def build_block(
    key: crypto.SigningKey,
    *,
    device_id: str,
    boot: int,
    seq: int,
    prev: bytes,
    records: list[bytes],
    t_first: int,
    t_last: int,
    seed: bytes,
) -> Block:
    """Commit to ``records`` (already encoded), chain to ``prev`` and sign."""
    header = BlockHeader(
        v=SCHEMA_VERSION,
        device_id=device_id,
        key_id=key.key_id,
        boot=boot,
        seq=seq,
        prev=prev,
        count=len(records),
        t_first=t_first,
        t_last=t_last,
        root=records_root(seed, records),
    )
    header_bytes = encode_header(header)
    return Block(header, header_bytes, key.sign_header(header_bytes), seed, records)


class OpenedBlock(msgspec.Struct, frozen=True):
    header: BlockHeader
    hash: bytes
    leaf_hashes: list[bytes]


def open_envelope(env: Envelope, public_key: bytes, *, signature_ok: bool | None = None) -> OpenedBlock:
    """Verify a decoded envelope against the signer's public key, in this order:

    1. Ed25519 signature over the exact header bytes (before the header is decoded);
    2. decode the header; its key id must be the envelope's;
    3. record count, timestamps and the Merkle root recomputed from the carried records.

    Raises WireError with the reason of the first check that fails. ``signature_ok``: step 1's
    answer when the caller verified the signature already (``crypto.verify_block_signatures``).
    """
    if signature_ok is None:
        signature_ok = crypto.verify_block_signature(public_key, env.header, env.sig)
    if not signature_ok:
        raise WireError(Reason.SIGNATURE, f"signature does not verify with key {env.key_id}")
    header = decode_header(env.header)
    if header.v != SCHEMA_VERSION:
        raise WireError(
            Reason.HEADER, f"schema version {header.v} is not supported (this verifier: {SCHEMA_VERSION})"
        )
    if header.key_id != env.key_id:
        raise WireError(Reason.HEADER, f"header key id {header.key_id} != envelope key id {env.key_id}")
    if header.count != len(env.records):
        raise WireError(Reason.MERKLE, f"header count {header.count} != {len(env.records)} records carried")
    if header.t_last < header.t_first:
        raise WireError(Reason.HEADER, f"t_last {header.t_last} < t_first {header.t_first}")
    leaves = leaf_hashes(env.seed, env.records)
    if root_from_leaf_hashes(leaves) != header.root:
        raise WireError(Reason.MERKLE, f"Merkle root of {len(leaves)} records does not match the header")
    return OpenedBlock(header, crypto.block_hash(env.header), leaves)
