"""Signed tree-head checkpoints: C2SP tlog-checkpoint bodies in C2SP signed notes, Ed25519.

A checkpoint body is exactly three lines, each ending in a newline::

    <origin>
    <tree size, ASCII decimal, no leading zeros>
    <root hash, standard base64 with padding>

and the signed note appends a blank line and one or more signature lines::

    — <key name> <base64(4-byte key id || 64-byte Ed25519 signature over the body)>

The em dash is U+2014. The key id is the first four bytes of
SHA-256(key name || 0x0A || 0x01 || 32-byte public key).

Parsing is strict, so that every byte of a note is either signed or checked:

* the note must be UTF-8 without control characters other than newline;
* the text ends at the last blank line; every line after it must be a well-formed signature
  line (em dash, space, a name without spaces or '+', space, canonical base64, newline);
* base64 must be canonical (the decoded bytes re-encode to the same text), so that the unused
  low bits of the last character cannot be changed without the note being rejected;
* signatures by other keys are ignored (key rotation, witness cosignatures), but a signature
  whose name and key id both match the expected key must verify, or the note is rejected;
* tlog-checkpoint allows optional extension lines after the root hash. This project does not
  use them and ``Checkpoint`` has no place for them, so a body with more than three lines is
  rejected rather than silently accepted with lines the caller never sees.

Pure functions on bytes and strings: no I/O, no logging.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from schemas import crypto

SIGNATURE_PREFIX = "— "  # U+2014 EM DASH, U+0020 SPACE
ED25519_SIG_TYPE = b"\x01"
KEY_ID_SIZE = 4
ROOT_SIZE = 32
MAX_SIGNATURES = 100  # signed-note: verifiers SHOULD limit, MUST accept at least 16
MAX_TREE_SIZE = 2**64 - 1

_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")  # ASCII controls other than newline


class CheckpointError(ValueError):
    """A checkpoint or signed note is malformed, unsigned or signed wrongly."""


class SignatureError(CheckpointError):
    """The note carries no signature by the expected key, or one that does not verify."""


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: who (origin), how many leaves (size), and the RFC 6962 root."""

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        _check_origin(self.origin)
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise CheckpointError("size is not an integer")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError(f"size {self.size} outside 0..2^64-1")
        if not isinstance(self.root, bytes) or len(self.root) != ROOT_SIZE:
            raise CheckpointError(f"root is not {ROOT_SIZE} bytes")

    def body(self) -> str:
        """The tlog-checkpoint note text: origin, size and root, each line newline-terminated."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode('ascii')}\n"


def note_key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte signed-note key id of an Ed25519 key: SHA-256(name || 0x0A || 0x01 || key)[:4]."""
    _check_key_name(name)
    if len(public_key) != crypto.PUBLIC_KEY_SIZE:
        raise CheckpointError(
            f"an Ed25519 public key has {crypto.PUBLIC_KEY_SIZE} bytes, got {len(public_key)}"
        )
    return hashlib.sha256(name.encode("utf-8") + b"\n" + ED25519_SIG_TYPE + public_key).digest()[:KEY_ID_SIZE]


def sign_note(text: str, name: str, key: crypto.SigningKey) -> str:
    """A signed note: ``text`` (newline-terminated), a blank line, and one Ed25519 signature
    line by ``key`` under ``name``."""
    _check_note_text(text)
    key_id = note_key_id(name, key.public_key)
    signature = key.sign(text.encode("utf-8"))
    blob = base64.b64encode(key_id + signature).decode("ascii")
    return f"{text}\n{SIGNATURE_PREFIX}{name} {blob}\n"


def split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    """A note's text (up to and including the newline before the blank line) and its signature
    lines as (key name, decoded blob = 4-byte key id || signature), strictly parsed, not verified.

    Raises ``CheckpointError`` if the note is malformed.
    """
    try:
        note.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError("malformed note: not valid UTF-8") from None
    if _CONTROL.search(note):
        raise CheckpointError("malformed note: control character other than newline")
    if not note.endswith("\n"):
        raise CheckpointError("malformed note: does not end with a newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise CheckpointError("malformed note: no blank line before the signatures")
    signature_lines = note[split + 2 : -1].split("\n")
    if signature_lines == [""]:
        raise CheckpointError("malformed note: no signature lines")
    if len(signature_lines) > MAX_SIGNATURES:
        raise CheckpointError(f"malformed note: more than {MAX_SIGNATURES} signatures")
    return note[: split + 1], [_parse_signature_line(line) for line in signature_lines]


def open_note(note: str, name: str, public_key: bytes) -> str:
    """Verify ``note`` against the Ed25519 key ``public_key`` named ``name``; return its text.

    Raises ``CheckpointError`` if the note is malformed, carries no signature by that key, or
    carries one that does not verify.
    """
    key_id = note_key_id(name, public_key)
    text, signatures = split_note(note)
    message = text.encode("utf-8")
    found = False
    for signer, blob in signatures:
        if signer != name or blob[:KEY_ID_SIZE] != key_id:
            continue  # another key's signature: ignored, as signed-note requires
        signature = blob[KEY_ID_SIZE:]
        if len(signature) != crypto.SIGNATURE_SIZE or not crypto.verify(public_key, message, signature):
            raise SignatureError(f"bad signature by {name}")
        found = True
    if not found:
        raise SignatureError(f"no signature by {name}")
    return text


def sign_checkpoint(cp: Checkpoint, name: str, key: crypto.SigningKey) -> str:
    """The signed note for ``cp``: its body, a blank line, and ``key``'s signature line."""
    return sign_note(cp.body(), name, key)


def open_checkpoint(text: str, name: str, public_key: bytes) -> Checkpoint:
    """Verify a signed checkpoint note and parse its body. Raises ``CheckpointError``.

    The origin is returned, not checked: callers that expect a particular log compare it.
    """
    return parse_checkpoint_body(open_note(text, name, public_key))


def parse_checkpoint_body(body: str) -> Checkpoint:
    """Parse an (already verified) checkpoint body strictly. Raises ``CheckpointError``."""
    if not body.endswith("\n"):
        raise CheckpointError("malformed checkpoint: body does not end with a newline")
    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("malformed checkpoint: fewer than three lines")
    if len(lines) > 3:
        raise CheckpointError("malformed checkpoint: extension lines are not supported")
    origin, size_text, root_text = lines
    if not origin:
        raise CheckpointError("malformed checkpoint: origin is empty")
    if not _DECIMAL.fullmatch(size_text):
        raise CheckpointError("size is not a decimal without leading zeros")
    if len(size_text) > len(str(MAX_TREE_SIZE)) or int(size_text) > MAX_TREE_SIZE:
        raise CheckpointError("size does not fit in 64 bits")
    root = _decode_base64(root_text, "root")
    if len(root) != ROOT_SIZE:
        raise CheckpointError(f"root is not {ROOT_SIZE} bytes")
    return Checkpoint(origin, int(size_text), root)


def _parse_signature_line(line: str) -> tuple[str, bytes]:
    if not line.startswith(SIGNATURE_PREFIX):
        raise CheckpointError("malformed note: signature line does not start with an em dash and a space")
    signer, sep, blob_text = line[len(SIGNATURE_PREFIX) :].partition(" ")
    if not sep:
        raise CheckpointError("malformed note: signature line has no signature")
    try:
        _check_key_name(signer)
    except CheckpointError as e:
        raise CheckpointError(f"malformed note: {e}") from None
    blob = _decode_base64(blob_text, "signature")
    if len(blob) <= KEY_ID_SIZE:
        raise CheckpointError("malformed note: signature is too short")
    return signer, blob


def _decode_base64(text: str, what: str) -> bytes:
    """Standard base64 with padding, canonical only (re-encoding gives back ``text``)."""
    if not _BASE64.fullmatch(text) or len(text) % 4:
        raise CheckpointError(f"{what} is not base64")
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise CheckpointError(f"{what} is not base64") from None
    if base64.b64encode(data).decode("ascii") != text:
        raise CheckpointError(f"{what} is not canonical base64")
    return data


def _check_key_name(name: str) -> None:
    if not name:
        raise CheckpointError("key name is empty")
    if "+" in name or any(c.isspace() for c in name) or _CONTROL.search(name):
        raise CheckpointError("key name contains a space, a '+' or a control character")


def _check_origin(origin: str) -> None:
    if not isinstance(origin, str) or not origin:
        raise CheckpointError("origin is empty")
    if "\n" in origin or _CONTROL.search(origin):
        raise CheckpointError("origin contains a newline or a control character")
    try:
        origin.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError("origin is not valid UTF-8") from None


def _check_note_text(text: str) -> None:
    if not text.endswith("\n"):
        raise CheckpointError("note text must end with a newline")
    if _CONTROL.search(text):
        raise CheckpointError("note text contains a control character other than newline")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError("note text is not valid UTF-8") from None
