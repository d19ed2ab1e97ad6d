"""The wire contract shared by the edge agent and the ingest side.

Everything in this package is pure: types, encoders/decoders and the crypto core
(hashing, Merkle trees, Ed25519). No I/O, no logging, no global state.
"""

from schemas.block import (
    Block,
    BlockHeader,
    Envelope,
    Reason,
    WireError,
    build_block,
    decode_envelope,
    decode_header,
    decode_record,
    encode_envelope,
    encode_record,
    open_envelope,
)
from schemas.crypto import (
    SigningKey,
    block_hash,
    device_id_for,
    key_id_for,
    leaf_salt,
    verify_block_signature,
)
from schemas.records import SCHEMA_VERSION, BatterySample, DrivingSample, Record

__all__ = [
    "SCHEMA_VERSION",
    "BatterySample",
    "Block",
    "BlockHeader",
    "DrivingSample",
    "Envelope",
    "Reason",
    "Record",
    "SigningKey",
    "WireError",
    "block_hash",
    "build_block",
    "decode_envelope",
    "decode_header",
    "decode_record",
    "device_id_for",
    "encode_envelope",
    "encode_record",
    "key_id_for",
    "leaf_salt",
    "open_envelope",
    "verify_block_signature",
]
