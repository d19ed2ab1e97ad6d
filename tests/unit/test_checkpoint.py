"""Signed checkpoints: the signed-note known answer, round trips, strict parsing, tampering."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import checkpoint as cpm
from schemas.checkpoint import Checkpoint, CheckpointError
from schemas.crypto import SigningKey

# The Ed25519 example of the signed-note reference implementation (golang.org/x/mod/sumdb/note):
# verifier key "PeterNeumann+c74f20a3+<base64(0x01 || public key)>" and signer key
# "PRIVATE+KEY+PeterNeumann+c74f20a3+<base64(0x01 || seed)>".
PETER = "PeterNeumann"
PETER_KEY_ID = "c74f20a3"
PETER_VKEY = base64.b64decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
PETER_SKEY = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")
PETER_TEXT = (
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
PETER_NOTE = (
    PETER_TEXT
    + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)

NAME = "vt.example/ledger"
KEY = SigningKey.from_seed(hashlib.sha256(b"checkpoint test key").digest())
OTHER_KEY = SigningKey.from_seed(hashlib.sha256(b"another key").digest())
ROOT = hashlib.sha256(b"root").digest()
CP = Checkpoint(NAME, 5, ROOT)


def peter_key() -> SigningKey:
    assert PETER_SKEY[0] == 1 and PETER_VKEY[0] == 1  # signature type byte: Ed25519
    return SigningKey.from_seed(PETER_SKEY[1:])


# -- signed-note known answer --------------------------------------------------------------


def test_signed_note_known_answer() -> None:
    key = peter_key()
    assert key.public_key == PETER_VKEY[1:]
    assert cpm.note_key_id(PETER, key.public_key).hex() == PETER_KEY_ID
    assert cpm.sign_note(PETER_TEXT, PETER, key) == PETER_NOTE  # Ed25519 is deterministic
    assert cpm.open_note(PETER_NOTE, PETER, PETER_VKEY[1:]) == PETER_TEXT


def test_signed_note_known_answer_tampered() -> None:
    with pytest.raises(CheckpointError, match="bad signature"):
        cpm.open_note(PETER_NOTE.replace("cryptography", "cryptographY"), PETER, PETER_VKEY[1:])


def test_known_note_is_not_a_checkpoint() -> None:
    # The signature verifies; the two-line text is then not a checkpoint body.
    with pytest.raises(CheckpointError, match="fewer than three lines"):
        cpm.open_checkpoint(PETER_NOTE, PETER, PETER_VKEY[1:])


def test_key_id_definition() -> None:
    want = hashlib.sha256(NAME.encode() + b"\n\x01" + KEY.public_key).digest()[:4]
    assert cpm.note_key_id(NAME, KEY.public_key) == want


# -- format and round trip -----------------------------------------------------------------


def test_body_format() -> None:
    # The body of the example checkpoint in C2SP tlog-checkpoint.
    root = base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    cp = Checkpoint("example.com/behind-the-sofa", 20852163, root)
    assert (
        cp.body() == "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    )
    assert cpm.parse_checkpoint_body(cp.body()) == cp


def test_round_trip() -> None:
    note = cpm.sign_checkpoint(CP, NAME, KEY)
    body, sig_line = note.split("\n\n")
    assert body + "\n" == CP.body()
    assert sig_line.startswith("\u2014 " + NAME + " ")
    blob = base64.b64decode(sig_line.split(" ")[2])
    assert blob[:4] == cpm.note_key_id(NAME, KEY.public_key) and len(blob) == 68
    assert cpm.open_checkpoint(note, NAME, KEY.public_key) == CP


def test_empty_tree() -> None:
    cp = Checkpoint(NAME, 0, hashlib.sha256(b"").digest())
    assert cp.body().split("\n")[1] == "0"
    assert cpm.open_checkpoint(cpm.sign_checkpoint(cp, NAME, KEY), NAME, KEY.public_key) == cp


def test_largest_size() -> None:
    cp = Checkpoint(NAME, 2**64 - 1, ROOT)
    assert cpm.open_checkpoint(cpm.sign_checkpoint(cp, NAME, KEY), NAME, KEY.public_key) == cp


origins = st.text(alphabet=st.characters(min_codepoint=0x20, codec="utf-8"), min_size=1, max_size=40)


@given(origins, st.integers(0, 2**64 - 1), st.binary(min_size=32, max_size=32))
def test_round_trip_property(origin: str, size: int, root: bytes) -> None:
    cp = Checkpoint(origin, size, root)
    note = cpm.sign_checkpoint(cp, NAME, KEY)
    assert cpm.open_checkpoint(note, NAME, KEY.public_key) == cp
    assert cpm.parse_checkpoint_body(cp.body()) == cp


@given(origins, st.integers(0, 2**64 - 1), st.binary(min_size=32, max_size=32), st.data())
def test_changed_body_property(origin: str, size: int, root: bytes, data: st.DataObject) -> None:
    """Re-pairing a valid signature with another body is rejected."""
    note = cpm.sign_checkpoint(Checkpoint(origin, size, root), NAME, KEY)
    which = data.draw(st.sampled_from(["origin", "size", "root"]))
    if which == "origin":
        other = Checkpoint(data.draw(origins.filter(lambda o: o != origin)), size, root)
    elif which == "size":
        other = Checkpoint(origin, data.draw(st.integers(0, 2**64 - 1).filter(lambda s: s != size)), root)
    else:
        other = Checkpoint(
            origin, size, data.draw(st.binary(min_size=32, max_size=32).filter(lambda r: r != root))
        )
    forged = other.body() + note[len(Checkpoint(origin, size, root).body()) :]
    with pytest.raises(CheckpointError, match="bad signature"):
        cpm.open_checkpoint(forged, NAME, KEY.public_key)


# -- tampering -----------------------------------------------------------------------------


def test_every_single_bit_flip_is_rejected() -> None:
    """Flip each bit of the whole note (body, blank line, em dash, name, key id, signature,
    base64 padding, final newline): every variant is rejected. Flips that break UTF-8 are
    carried into the string as lone surrogates, which the parser must refuse too."""
    raw = cpm.sign_checkpoint(CP, NAME, KEY).encode("utf-8")
    for bit in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        text = bytes(flipped).decode("utf-8", errors="surrogateescape")
        with pytest.raises(CheckpointError):
            cpm.open_checkpoint(text, NAME, KEY.public_key)


def test_non_canonical_base64_signature() -> None:
    """68 bytes of signature blob leave 2 unused bits in the last base64 character; setting
    them decodes to the same bytes in a lenient decoder but must be rejected here."""
    note = cpm.sign_checkpoint(CP, NAME, KEY)
    assert note.endswith("=\n")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = note[-3]
    assert alphabet.index(last) & 0b11 == 0
    loose = note[:-3] + alphabet[alphabet.index(last) | 1] + note[-2:]
    assert base64.b64decode(loose.split(" ")[-1]) == base64.b64decode(note.split(" ")[-1])
    with pytest.raises(CheckpointError, match="canonical"):
        cpm.open_checkpoint(loose, NAME, KEY.public_key)


def test_wrong_key() -> None:
    note = cpm.sign_checkpoint(CP, NAME, KEY)
    with pytest.raises(CheckpointError, match=re.escape(f"no signature by {NAME}")):
        cpm.open_checkpoint(note, NAME, OTHER_KEY.public_key)


def test_wrong_name() -> None:
    note = cpm.sign_checkpoint(CP, NAME, KEY)
    with pytest.raises(CheckpointError, match=re.escape("no signature by vt.example/other")):
        cpm.open_checkpoint(note, "vt.example/other", KEY.public_key)


def test_matching_key_id_with_bad_signature() -> None:
    """Name and key id match the expected key, the signature does not verify: rejected."""
    note = cpm.sign_checkpoint(CP, NAME, KEY)
    forged_sig = OTHER_KEY.sign(CP.body().encode())
    blob = base64.b64encode(cpm.note_key_id(NAME, KEY.public_key) + forged_sig).decode()
    forged = CP.body() + f"\n— {NAME} {blob}\n"
    with pytest.raises(CheckpointError, match="bad signature"):
        cpm.open_checkpoint(forged, NAME, KEY.public_key)
    # ... even when a good signature by the same key is also present.
    with pytest.raises(CheckpointError, match="bad signature"):
        cpm.open_checkpoint(note + f"— {NAME} {blob}\n", NAME, KEY.public_key)


def test_signature_of_wrong_length_from_matching_key() -> None:
    blob = base64.b64encode(cpm.note_key_id(NAME, KEY.public_key) + b"\x00" * 10).decode()
    with pytest.raises(CheckpointError, match="bad signature"):
        cpm.open_checkpoint(CP.body() + f"\n— {NAME} {blob}\n", NAME, KEY.public_key)


def test_other_signatures_are_ignored() -> None:
    """Cosignatures and signatures by rotated keys sit next to ours; they are skipped."""
    ours = cpm.sign_checkpoint(CP, NAME, KEY)
    theirs = cpm.sign_checkpoint(CP, "witness.example/w1", OTHER_KEY)
    same_name_other_key = cpm.sign_checkpoint(CP, NAME, OTHER_KEY)
    lines = [n.split("\n\n")[1] for n in (theirs, ours, same_name_other_key)]
    for order in (lines, lines[::-1]):
        note = CP.body() + "\n" + "".join(order)
        assert cpm.open_checkpoint(note, NAME, KEY.public_key) == CP
        assert cpm.open_checkpoint(note, "witness.example/w1", OTHER_KEY.public_key) == CP
    only_theirs = CP.body() + "\n" + lines[0] + lines[2]
    with pytest.raises(CheckpointError, match="no signature by"):
        cpm.open_checkpoint(only_theirs, NAME, KEY.public_key)


def test_too_many_signatures() -> None:
    note = cpm.sign_checkpoint(CP, NAME, KEY)
    extra = cpm.sign_checkpoint(CP, "witness.example/w1", OTHER_KEY).split("\n\n")[1]
    assert cpm.open_checkpoint(note + extra * 15, NAME, KEY.public_key) == CP  # 16 in all
    with pytest.raises(CheckpointError, match="more than 100"):
        cpm.open_checkpoint(note + extra * 100, NAME, KEY.public_key)


# -- strict parsing ------------------------------------------------------------------------


def signed(body: str) -> str:
    """Sign an arbitrary body, so the body parser is what rejects it."""
    return cpm.sign_note(body, NAME, KEY)


ROOT_B64 = base64.b64encode(ROOT).decode()
URLSAFE_ROOT = base64.urlsafe_b64encode(b"\xff" * 32).decode()  # "_" and "-" are not standard base64


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (f"{NAME}\n05\n{ROOT_B64}\n", "size is not a decimal"),
        (f"{NAME}\n00\n{ROOT_B64}\n", "size is not a decimal"),
        (f"{NAME}\n+5\n{ROOT_B64}\n", "size is not a decimal"),
        (f"{NAME}\n-1\n{ROOT_B64}\n", "size is not a decimal"),
        (f"{NAME}\n 5\n{ROOT_B64}\n", "size is not a decimal"),
        (f"{NAME}\n5 \n{ROOT_B64}\n", "size is not a decimal"),
        (f"{NAME}\n1_000\n{ROOT_B64}\n", "size is not a decimal"),
        (f"{NAME}\n\u0665\n{ROOT_B64}\n", "size is not a decimal"),  # ARABIC-INDIC DIGIT FIVE
        (f"{NAME}\n0x5\n{ROOT_B64}\n", "size is not a decimal"),
        (f"{NAME}\n\n{ROOT_B64}\n", "size is not a decimal"),
        (f"{NAME}\n{2**64}\n{ROOT_B64}\n", "64 bits"),
        (f"{NAME}\n{'9' * 5000}\n{ROOT_B64}\n", "64 bits"),
        (f"{NAME}\n5\n{base64.b64encode(ROOT[:31]).decode()}\n", "root is not 32 bytes"),
        (f"{NAME}\n5\n{base64.b64encode(ROOT + b'x').decode()}\n", "root is not 32 bytes"),
        (f"{NAME}\n5\n{ROOT_B64.rstrip('=')}\n", "root is not base64"),
        (f"{NAME}\n5\n{URLSAFE_ROOT}\n", "root is not base64"),
        (f"{NAME}\n5\n{ROOT_B64} \n", "root is not base64"),
        (f"{NAME}\n5\n\n", "root is not 32 bytes"),
        (f"\n5\n{ROOT_B64}\n", "origin is empty"),
        (f"{NAME}\n5\n", "fewer than three lines"),
        (f"{NAME}\n", "fewer than three lines"),
        (f"{NAME}\n5\n{ROOT_B64}\nextension\n", "extension lines"),
    ],
)
def test_malformed_bodies(body: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        cpm.open_checkpoint(signed(body), NAME, KEY.public_key)


def test_root_with_nonzero_padding_bits() -> None:
    # 32 bytes leave 2 unused bits in the 43rd character.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    loose = ROOT_B64[:42] + alphabet[alphabet.index(ROOT_B64[42]) ^ 1] + "="
    with pytest.raises(CheckpointError, match="root is not canonical base64"):
        cpm.open_checkpoint(signed(f"{NAME}\n5\n{loose}\n"), NAME, KEY.public_key)


@pytest.mark.parametrize(
    ("note", "message"),
    [
        (CP.body(), "no blank line"),
        (CP.body() + "\n", "no signature lines"),
        (CP.body() + "\n\n", "no signature lines"),
        (CP.body().rstrip("\n"), "does not end with a newline"),
        (CP.body() + "\n- vt.example/ledger AAAA\n", "em dash"),
        (CP.body() + "\n—vt.example/ledger AAAA\n", "em dash"),
        (CP.body() + "\n— vt.example/ledger\n", "has no signature"),
        (CP.body() + "\n—  AAAAAAAA\n", "key name is empty"),
        (CP.body() + "\n— a+b AAAAAAAA\n", "key name contains"),
        (CP.body() + "\n— vt.example/ledger AAAA\n", "too short"),
        (CP.body() + "\n— vt.example/ledger AAAAAAA\n", "signature is not base64"),
        (CP.body() + "\n— vt.example/ledger AAAAAAAA \n", "signature is not base64"),
        (CP.body().replace("\n", "\r\n", 1) + "\n— x AAAAAAAA\n", "control character"),
        ("\t" + CP.body() + "\n— x AAAAAAAA\n", "control character"),
        (CP.body() + "\n— x AAAAAAAA\n" + "\ud800", "UTF-8"),
    ],
)
def test_malformed_notes(note: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        cpm.open_checkpoint(note, NAME, KEY.public_key)


def test_last_blank_line_separates_signatures() -> None:
    """A body containing a blank line: the signatures start after the last one, so the body
    keeps its blank line and is then rejected as a checkpoint (checkpoint lines are non-empty)."""
    body = f"{NAME}\n\n5\n{ROOT_B64}\n"
    note = cpm.sign_note(body, NAME, KEY)
    assert cpm.open_note(note, NAME, KEY.public_key) == body
    with pytest.raises(CheckpointError, match="extension lines"):
        cpm.open_checkpoint(note, NAME, KEY.public_key)


# -- construction checks -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "size", "root", "message"),
    [
        ("", 1, ROOT, "origin is empty"),
        ("a\nb", 1, ROOT, "origin contains"),
        ("a\tb", 1, ROOT, "origin contains"),
        ("a\ud800", 1, ROOT, "UTF-8"),
        (NAME, -1, ROOT, "size"),
        (NAME, 2**64, ROOT, "size"),
        (NAME, 1, ROOT[:31], "root is not 32 bytes"),
    ],
)
def test_checkpoint_rejects_bad_fields(origin: str, size: int, root: bytes, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        Checkpoint(origin, size, root)


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\u00a0b", "a\nb"])
def test_bad_key_names(name: str) -> None:
    with pytest.raises(CheckpointError, match="key name"):
        cpm.sign_checkpoint(CP, name, KEY)
    with pytest.raises(CheckpointError, match="key name"):
        cpm.open_checkpoint(cpm.sign_checkpoint(CP, NAME, KEY), name, KEY.public_key)


def test_bad_public_key_length() -> None:
    with pytest.raises(CheckpointError, match="32 bytes"):
        cpm.open_checkpoint(cpm.sign_checkpoint(CP, NAME, KEY), NAME, KEY.public_key[:31])


def test_note_text_must_end_with_newline() -> None:
    with pytest.raises(CheckpointError, match="newline"):
        cpm.sign_note("no newline", NAME, KEY)
