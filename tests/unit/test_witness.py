"""Witness cosignatures and add-checkpoint (schemas/witness.py): the C2SP specifications' examples,
an independent construction of the signed bytes, bit flips, and every answer of the witness's checks."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from schemas import merkle
from schemas.checkpoint import Checkpoint, sign_checkpoint
from schemas.crypto import SigningKey
from schemas.witness import (
    AddCheckpoint,
    Cosigner,
    Refusal,
    WitnessError,
    cosign,
    judge,
    parse_add_checkpoint,
    verify_cosignatures,
)

ORIGIN = "example.com/behind-the-sofa"
LOG = SigningKey.generate()
W1, W2 = SigningKey.generate(), SigningKey.generate()
T = 1679315147

# tlog-cosignature's example note: a checkpoint with one log signature and one witness cosignature.
SPEC_COSIGNATURE = (
    "— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZ"
    "qhf5nNo0xUe+mbIUBkBIfZ+qnA=="
)
# tlog-witness's example add-checkpoint request body.
SPEC_REQUEST = (
    "old 20852014\n"
    "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n"
    "jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n"
    "5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=\n"
    "/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=\n"
    "\n"
    "example.com/behind-the-sofa\n"
    "20852163\n"
    "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    "\n"
    "— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+"
    "zyWE+xeMcTOAYQ8=\n"
    "— example.com/behind-the-sofa opLqBQsREYCgu6xQkYQwJr9fo45a62DN9EdmHXnZdXNqlcVGlCum2Wks+49/V6267UEjw6QUXTS5"
    "Rovnzv++qbSzm9Q=\n"
)


def _leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(f"entry {i}".encode()) for i in range(n)]


def _note(leaves: list[bytes], key: SigningKey = LOG) -> str:
    return sign_checkpoint(Checkpoint(ORIGIN, len(leaves), merkle.root_from_leaf_hashes(leaves)), ORIGIN, key)


def test_the_specifications_cosignature_example_carries_its_time_line() -> None:
    """The example cosignature's blob is key id (4) || timestamp (8, big-endian) || signature (64),
    and its timestamp is the example signed message's `time 1679315147`."""
    blob = base64.b64decode(SPEC_COSIGNATURE.split(" ")[-1])
    assert len(blob) == 76
    assert struct.unpack(">Q", blob[4:12])[0] == T


def test_the_specifications_request_example_parses() -> None:
    req = parse_add_checkpoint(SPEC_REQUEST.encode())
    assert req.old_size == 20852014 and len(req.proof) == 4 and all(len(h) == 32 for h in req.proof)
    assert req.note.startswith("example.com/behind-the-sofa\n20852163\n")
    assert AddCheckpoint(req.old_size, req.proof, req.note).body() == SPEC_REQUEST.encode()


def test_cosignature_bytes_built_independently() -> None:
    """Key id and signed message rebuilt from the specification's words, verified with another
    Ed25519 implementation (cryptography's OpenSSL) than the one that signed."""
    cp = Checkpoint(ORIGIN, 5, merkle.root_from_leaf_hashes(_leaves(5)))
    line = cosign(cp, "witness.example/w1", W1, T)
    name, b64 = line.removeprefix("\u2014 ").removesuffix("\n").split(" ")
    blob = base64.b64decode(b64)
    assert name == "witness.example/w1"
    assert blob[:4] == hashlib.sha256(b"witness.example/w1\n\x04" + W1.public_key).digest()[:4]
    assert blob[4:12] == T.to_bytes(8, "big")
    message = b"cosignature/v1\ntime 1679315147\n" + cp.body().encode()
    Ed25519PublicKey.from_public_bytes(W1.public_key).verify(blob[12:], message)  # raises if not


def test_verify_cosignatures_counts_trusted_witnesses_and_catches_a_flipped_bit() -> None:
    note = _note(_leaves(7))
    cp = Checkpoint(ORIGIN, 7, merkle.root_from_leaf_hashes(_leaves(7)))
    both = note + cosign(cp, "w1", W1, T) + cosign(cp, "w2", W2, T + 1)
    trusted = [Cosigner("w1", W1.public_key), Cosigner("w2", W2.public_key)]
    assert [(c.name, c.timestamp) for c in verify_cosignatures(both, trusted)] == [("w1", T), ("w2", T + 1)]
    assert [c.name for c in verify_cosignatures(both, trusted[1:])] == ["w2"]  # w1 not trusted: ignored
    assert verify_cosignatures(note, trusted) == []
    # one key listed under a second name is still one witness
    alias = [*trusted, Cosigner("w1-again", W1.public_key)]
    twice = both + cosign(cp, "w1-again", W1, T)
    assert len(verify_cosignatures(twice, alias)) == 2
    # a bit flipped in w2's signature, in its timestamp, or in the checkpoint's size: w2 fails loudly
    line = cosign(cp, "w2", W2, T)
    blob = bytearray(base64.b64decode(line.split(" ")[-1]))
    for at in (40, 11):
        bad = bytearray(blob)
        bad[at] ^= 0x01
        forged = note + f"\u2014 w2 {base64.b64encode(bytes(bad)).decode()}\n"
        with pytest.raises(WitnessError, match="bad cosignature by w2"):
            verify_cosignatures(forged, trusted)
    other = _note(_leaves(6)) + line  # w2's line moved onto another checkpoint
    with pytest.raises(WitnessError, match="bad cosignature by w2"):
        verify_cosignatures(other, trusted)


def test_judge_answers_each_case_of_the_specification() -> None:
    logs = {ORIGIN: LOG.public_key}
    l5, l9 = _leaves(5), _leaves(9)
    first = judge(AddCheckpoint(0, [], _note(l5)), logs, None)
    assert (first.size, first.root) == (5, merkle.root_from_leaf_hashes(l5))
    latest = (5, first.root)
    ok = judge(AddCheckpoint(5, merkle.consistency_proof(l9, 5), _note(l9)), logs, latest)
    assert ok.size == 9
    same = judge(AddCheckpoint(5, [], _note(l5)), logs, latest)  # the same tree again: cosigned again
    assert same.size == 5

    def refused(req: AddCheckpoint, latest: tuple[int, bytes] | None = latest) -> tuple[int, int | None]:
        with pytest.raises(Refusal) as e:
            judge(req, logs, latest)
        return e.value.status, e.value.size

    proof = merkle.consistency_proof(l9, 5)
    assert refused(AddCheckpoint(5, proof, _note(l9).replace(ORIGIN, "other.example/log"))) == (404, None)
    assert refused(AddCheckpoint(5, proof, _note(l9, SigningKey.generate()))) == (403, None)
    assert refused(AddCheckpoint(10, proof, _note(l9))) == (400, None)  # old > size
    assert refused(AddCheckpoint(3, proof, _note(l9))) == (409, 5)  # not the size last cosigned
    assert refused(AddCheckpoint(0, [], _note(l9))) == (409, 5)
    bad = [bytes(proof[0][:5] + bytes([proof[0][5] ^ 1]) + proof[0][6:]), *proof[1:]]
    assert refused(AddCheckpoint(5, bad, _note(l9))) == (422, None)  # a flipped bit in the proof
    fork = [*l9[:3], merkle.leaf_hash(b"another history"), *l9[4:]]  # entry 3 differs
    assert refused(AddCheckpoint(5, merkle.consistency_proof(fork, 5), _note(fork))) == (422, None)
    assert refused(AddCheckpoint(5, [], _note([*l5[:4], merkle.leaf_hash(b"x")]))) == (422, None)
    assert refused(AddCheckpoint(0, proof, _note(l9)), None) == (422, None)  # a proof from size 0
    empty_wrong = sign_checkpoint(Checkpoint(ORIGIN, 0, b"\x01" * 32), ORIGIN, LOG)
    assert refused(AddCheckpoint(0, [], empty_wrong), None) == (422, None)


def test_malformed_requests_are_400() -> None:
    note = _note(_leaves(3))
    for body in (
        b"\xff\xfe",
        b"old 1\n" + note.encode(),  # no empty line
        b"old 01\n\n" + note.encode(),  # leading zero
        b"new 1\n\n" + note.encode(),
        b"old 1\nnot base64!\n\n" + note.encode(),
        b"old 1\n" + base64.b64encode(b"short") + b"\n\n" + note.encode(),
        ("old 1\n" + ("A" * 43 + "=\n") * 64 + "\n" + note).encode(),  # 64 proof lines
    ):
        with pytest.raises(Refusal) as e:
            parse_add_checkpoint(body)
        assert e.value.status == 400, body[:40]
