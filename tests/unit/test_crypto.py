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
