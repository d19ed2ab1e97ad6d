"""Ed25519 against RFC 8032, identifiers, salts and domain separation."""

from __future__ import annotations

import hashlib

from schemas import crypto

# RFC 8032 section 7.1, TEST 1 (empty message).
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIG = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
    "d25bf5f0595bbe24655141438e7a100b"
)


def test_rfc8032_test1_sign() -> None:
    key = crypto.SigningKey.from_seed(RFC8032_SECRET)
    assert key.public_key == RFC8032_PUBLIC
    assert key.sign(b"") == RFC8032_SIG


def test_rfc8032_test1_verify_and_bit_flips() -> None:
    assert crypto.verify(RFC8032_PUBLIC, b"", RFC8032_SIG)
    for i in range(0, 64 * 8, 37):
        bad = bytearray(RFC8032_SIG)
        bad[i // 8] ^= 1 << (i % 8)
        assert not crypto.verify(RFC8032_PUBLIC, b"", bytes(bad))
    assert not crypto.verify(RFC8032_PUBLIC, b"\x00", RFC8032_SIG)


def test_libsodium_and_openssl_verifiers_agree_on_every_bit_flip() -> None:
    """The ingest verifies with libsodium (PyNaCl, installed with the ingest extra); the vehicle
    and any verifier without PyNaCl use OpenSSL. They must agree on honest signatures and on
    every single-bit corruption of signature, key and message."""
    assert crypto.VERIFIER == "libsodium"  # the ingest extra is installed in the test environment
    key = crypto.SigningKey.from_seed(RFC8032_SECRET)
    msg = crypto.signing_input(b"\x9a\x01header bytes of a block")
    sig = key.sign(msg)
    cases = [(key.public_key, msg, sig), (RFC8032_PUBLIC, b"", RFC8032_SIG)]
    for pk, m, s in list(cases):
        for i in range(len(s) * 8):
            cases.append((pk, m, _flip(s, i)))
        for i in range(len(pk) * 8):
            cases.append((_flip(pk, i), m, s))
        for i in range(0, len(m) * 8, 3):
            cases.append((pk, _flip(m, i), s))
    results = [(crypto._verify_sodium(*c), crypto._verify_openssl(*c)) for c in cases]
    assert results[0] == results[1] == (True, True)
    assert all(a == b for a, b in results), [i for i, (a, b) in enumerate(results) if a != b]
    assert sum(a for a, _ in results) == 2  # only the two honest signatures verify


def _flip(b: bytes, bit: int) -> bytes:
    out = bytearray(b)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_block_signature_is_domain_separated() -> None:
    key = crypto.SigningKey.from_seed(RFC8032_SECRET)
    header = b"\x9a\x01some header bytes"
    sig = key.sign_header(header)
    assert crypto.verify_block_signature(key.public_key, header, sig)
    # The same bytes signed without the tag must not pass as a block signature, and vice versa.
    assert not crypto.verify_block_signature(key.public_key, header, key.sign(header))
    assert not crypto.verify(key.public_key, header, sig)


def test_identifiers() -> None:
    dev = crypto.device_id_for(RFC8032_PUBLIC)
    kid = crypto.key_id_for(RFC8032_PUBLIC)
    assert dev == hashlib.sha256(b"vt/v1/device-id\x00" + RFC8032_PUBLIC).hexdigest()[:32]
    assert kid == hashlib.sha256(b"vt/v1/key-id\x00" + RFC8032_PUBLIC).hexdigest()[:16]
    assert len(dev) == 32 and len(kid) == 16


def test_salts_are_distinct_and_match_single_derivation() -> None:
    seed = bytes(range(32))
    salts = crypto.leaf_salts(seed, 50)
    assert len(set(salts)) == 50
    assert salts[7] == crypto.leaf_salt(seed, 7)
    assert salts[7] == hashlib.sha256(b"vt/v1/leaf-salt\x00" + seed + (7).to_bytes(4, "big")).digest()
