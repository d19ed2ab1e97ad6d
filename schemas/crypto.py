"""Identifiers, salts, block hashes and Ed25519 signatures. Pure functions on bytes.

Every hash input is domain separated: ``SHA-256(tag || 0x00 || data)`` with one ASCII
tag per purpose, so a value hashed for one purpose can never be mistaken for another.
Merkle leaves and nodes use RFC 6962's 0x00 / 0x01 prefixes instead (see merkle.py).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from concurrent.futures import Executor

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

TAG_DEVICE_ID = b"vt/v1/device-id"
TAG_KEY_ID = b"vt/v1/key-id"
TAG_LEAF_SALT = b"vt/v1/leaf-salt"
TAG_BLOCK_SIG = b"vt/v1/block-sig"
TAG_BLOCK_HASH = b"vt/v1/block-hash"
TAG_LEDGER_ENTRY = b"vt/v1/ledger-entry"
TAG_KEY_STATEMENT = b"vt/v1/key-statement"
TAG_EVM_ANCHOR = b"vt/v1/evm-anchor"
TAG_ERASURE = b"vt/v1/erasure"
TAG_SESSION = b"vt/v1/session"
TAG_GRANT = b"vt/v1/grant"
TAG_REVOCATION = b"vt/v1/grant-revocation"
TAG_REQUEST = b"vt/v1/access-request"
TAG_ACCESS = b"vt/v1/access-record"

SEED_SIZE = 32
HASH_SIZE = 32
SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)


def tagged_hash(tag: bytes, data: bytes) -> bytes:
    return hashlib.sha256(tag + b"\x00" + data).digest()


def device_id_for(public_key: bytes) -> str:
    """Pseudonymous device id: first 16 bytes of the tagged hash of the enrolment key, hex."""
    _check_public_key(public_key)
    return tagged_hash(TAG_DEVICE_ID, public_key)[:16].hex()


def key_id_for(public_key: bytes) -> str:
    """Key id: first 8 bytes of the tagged hash of a signing key, hex."""
    _check_public_key(public_key)
    return tagged_hash(TAG_KEY_ID, public_key)[:8].hex()


def leaf_salt(seed: bytes, index: int) -> bytes:
    """Salt of record ``index`` in a block: SHA-256(tag || 0x00 || seed || u32be(index)).

    Knowing one record's salt reveals neither the seed nor any other record's salt.
    """
    return hashlib.sha256(TAG_LEAF_SALT + b"\x00" + seed + struct.pack(">I", index)).digest()


def leaf_salts(seed: bytes, count: int) -> list[bytes]:
    prefix = hashlib.sha256(TAG_LEAF_SALT + b"\x00" + seed)
    out = []
    for i in range(count):
        h = prefix.copy()
        h.update(struct.pack(">I", i))
        out.append(h.digest())
    return out


def block_hash(header_bytes: bytes) -> bytes:
    """Hash of a block header: the per-device chain link and the batch-tree leaf data."""
    return tagged_hash(TAG_BLOCK_HASH, header_bytes)


def signing_input(header_bytes: bytes) -> bytes:
    """The exact bytes an Ed25519 block signature covers."""
    return TAG_BLOCK_SIG + b"\x00" + header_bytes


def _verify_openssl(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


try:  # libsodium (PyNaCl, in the ingest extra) verifies about twice as fast as OpenSSL here.
    from nacl.bindings import crypto_sign_open as _sodium_open
    from nacl.exceptions import CryptoError as _SodiumError

    def _verify_sodium(public_key: bytes, message: bytes, signature: bytes) -> bool:
        if len(public_key) != PUBLIC_KEY_SIZE:
            return False
        try:
            _sodium_open(signature + message, public_key)
        except (_SodiumError, ValueError, TypeError):
            return False
        return True

    VERIFIER = "libsodium"
    _verify = _verify_sodium
except ImportError:  # the vehicle side: cryptography (OpenSSL) only
    VERIFIER = "openssl"
    _verify = _verify_openssl


def verify_block_signature(public_key: bytes, header_bytes: bytes, signature: bytes) -> bool:
    if len(signature) != SIGNATURE_SIZE:
        return False
    return _verify(public_key, signing_input(header_bytes), signature)


def verify_block_signatures(
    items: Sequence[tuple[bytes, bytes, bytes]], pool: Executor | None = None, *, chunk: int = 64
) -> list[bool]:
    """``verify_block_signature`` of each (public key, header bytes, signature), in order. With a
    ``pool`` the items are verified in chunks on its threads: libsodium runs without Python's global
    lock, so several cores verify, and other threads of the process go on meanwhile."""
    if pool is None or len(items) <= chunk:
        return [verify_block_signature(pk, h, s) for pk, h, s in items]
    parts = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    out: list[bool] = []
    for got in pool.map(lambda part: [verify_block_signature(pk, h, s) for pk, h, s in part], parts):
        out += got
    return out


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Plain Ed25519 verification (RFC 8032) of ``message``, with libsodium when PyNaCl is
    installed, else OpenSSL. Both implement RFC 8032's checks (S < L, canonical encodings);
    libsodium also refuses small-order public keys and R values, which no honest signer makes."""
    if len(signature) != SIGNATURE_SIZE:
        return False
    return _verify(public_key, message, signature)


def _check_public_key(public_key: bytes) -> None:
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError(f"an Ed25519 public key has {PUBLIC_KEY_SIZE} bytes, got {len(public_key)}")


class SigningKey:
    """An Ed25519 private key with the identifiers derived from it."""

    __slots__ = ("_key", "key_id", "public_key")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id: str = key_id_for(self.public_key)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """From the 32-byte RFC 8032 private key (the 'seed')."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the key file does not hold an Ed25519 private key")
        return cls(key)

    def to_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign(self, message: bytes) -> bytes:
        """Plain Ed25519 signature over ``message``."""
        return self._key.sign(message)

    def sign_header(self, header_bytes: bytes) -> bytes:
        return self._key.sign(signing_input(header_bytes))
