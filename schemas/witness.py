"""Witness cosignatures on checkpoints, and the witness's add-checkpoint exchange (docs/PROOFS.md 8.4).

A witness is an independent party that keeps, per log origin, the last checkpoint it cosigned, and
cosigns a new checkpoint of that log only if a consistency proof shows the new tree extends the old
one. A verifier that requires K cosignatures from witnesses it trusts knows that the log showed
those K witnesses one history: the operator cannot show another history to someone else without a
witness having refused it (equivocation needs the witnesses' collusion).

Formats, from the C2SP specifications (c2sp.org):

* **tlog-cosignature** (Ed25519, ``cosignature/v1``): a signed-note signature line
  ``— <witness name> base64(key id || u64be(timestamp) || Ed25519 signature)``, where
  key id = SHA-256(name || 0x0A || 0x04 || 32-byte public key)[:4] and the signature is over
  ``"cosignature/v1\\n" || "time " || decimal(timestamp) || "\\n" || checkpoint body``
  (timestamp: POSIX seconds, never zero).
* **tlog-witness** ``add-checkpoint``: the request body is ``old <size>\\n``, up to 63 lines of
  one base64 hash each (the RFC 6962 consistency proof from ``old`` to the checkpoint's size),
  an empty line, then the signed checkpoint note. The witness answers 200 with its cosignature
  line(s); 400 malformed; 403 no valid signature by a key it trusts for the origin; 404 unknown
  origin; 409 ``old`` is not the size it last cosigned (body: that size and a newline,
  Content-Type ``text/x.tlog.size``); 422 the proof does not verify, or a size-0 tree whose root
  is not the empty tree's.

Pure functions on bytes and strings: no I/O, no clock (the caller passes the timestamp).
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from schemas import crypto, merkle
from schemas.checkpoint import (
    KEY_ID_SIZE,
    SIGNATURE_PREFIX,
    Checkpoint,
    CheckpointError,
    SignatureError,
    open_checkpoint,
    split_note,
)

COSIGNATURE_SIG_TYPE = b"\x04"  # tlog-cosignature's Ed25519 "cosignature/v1" key id type byte
COSIGNATURE_HEADER = "cosignature/v1\n"
TIMESTAMP_SIZE = 8
MAX_TIMESTAMP = 2**63 - 1
MAX_PROOF_LINES = 63
SIZE_CONTENT_TYPE = "text/x.tlog.size"  # a 409 answer's body: the size the witness last cosigned

_OLD = re.compile(r"old (0|[1-9][0-9]*)")


class WitnessError(ValueError):
    """A cosignature is malformed or does not verify."""


@dataclass(frozen=True)
class Cosigner:
    """A witness a verifier trusts: its name (a schema-less URL) and Ed25519 public key."""

    name: str
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        return cosigner_key_id(self.name, self.public_key)


@dataclass(frozen=True)
class Cosignature:
    """A verified cosignature: which witness, and when (POSIX seconds) it cosigned."""

    name: str
    timestamp: int


def cosigner_key_id(name: str, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || 0x04 || public key)[:4]: a witness's key id in its signature lines."""
    if len(public_key) != crypto.PUBLIC_KEY_SIZE:
        raise WitnessError(f"an Ed25519 public key has {crypto.PUBLIC_KEY_SIZE} bytes, got {len(public_key)}")
    return hashlib.sha256(name.encode("utf-8") + b"\n" + COSIGNATURE_SIG_TYPE + public_key).digest()[
        :KEY_ID_SIZE
    ]


def cosigned_message(body: str, timestamp: int) -> bytes:
    """The exact bytes a cosignature signs: header line, time line, checkpoint body."""
    return f"{COSIGNATURE_HEADER}time {timestamp}\n{body}".encode()


def cosign(cp: Checkpoint, name: str, key: crypto.SigningKey, timestamp: int) -> str:
    """The witness ``name``'s cosignature line (newline-terminated) on ``cp`` at ``timestamp``."""
    if not 0 < timestamp <= MAX_TIMESTAMP:
        raise WitnessError(f"timestamp {timestamp} outside 1..2^63-1")
    signature = key.sign(cosigned_message(cp.body(), timestamp))
    blob = cosigner_key_id(name, key.public_key) + struct.pack(">Q", timestamp) + signature
    return f"{SIGNATURE_PREFIX}{name} {base64.b64encode(blob).decode('ascii')}\n"


def verify_cosignatures(note: str, witnesses: Sequence[Cosigner]) -> list[Cosignature]:
    """The cosignatures in ``note`` by ``witnesses`` that verify over the note's checkpoint body.

    Lines by other keys are ignored (signed-note). A line whose name and key id match a listed
    witness but whose signature does not verify makes the note malformed: ``WitnessError``.
    """
    try:
        text, lines = split_note(note)
    except CheckpointError as exc:
        raise WitnessError(str(exc)) from None
    by_id = {(w.name, w.key_id): w for w in witnesses}
    out: dict[bytes, Cosignature] = {}  # by public key: cosignature/v1 does not commit to the name
    for name, blob in lines:
        w = by_id.get((name, blob[:KEY_ID_SIZE]))
        if w is None:
            continue
        rest = blob[KEY_ID_SIZE:]
        if len(rest) != TIMESTAMP_SIZE + crypto.SIGNATURE_SIZE:
            raise WitnessError(f"cosignature by {name} is {len(blob)} bytes, not 76")
        (timestamp,) = struct.unpack(">Q", rest[:TIMESTAMP_SIZE])
        if not 0 < timestamp <= MAX_TIMESTAMP:
            raise WitnessError(f"cosignature by {name} has timestamp {timestamp} outside 1..2^63-1")
        if not crypto.verify(w.public_key, cosigned_message(text, timestamp), rest[TIMESTAMP_SIZE:]):
            raise WitnessError(f"bad cosignature by {name}")
        out.setdefault(w.public_key, Cosignature(name, timestamp))
    return list(out.values())


# -- add-checkpoint ---------------------------------------------------------------------------------


class Refusal(Exception):
    """The witness does not cosign: HTTP ``status``, a one-line ``reason``, and for 409 the size it
    last cosigned (the answer's body)."""

    def __init__(self, status: int, reason: str, size: int | None = None) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        self.size = size


@dataclass(frozen=True)
class AddCheckpoint:
    old_size: int
    proof: list[bytes]
    note: str

    def body(self) -> bytes:
        """The request body: ``old N``, the proof's hashes, an empty line, the note."""
        if len(self.proof) > MAX_PROOF_LINES:
            raise WitnessError(f"a consistency proof of {len(self.proof)} hashes exceeds {MAX_PROOF_LINES}")
        lines = [f"old {self.old_size}\n"] + [base64.b64encode(h).decode("ascii") + "\n" for h in self.proof]
        return ("".join(lines) + "\n" + self.note).encode()


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Parse an add-checkpoint request body strictly; ``Refusal(400)`` if it is malformed."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refusal(400, "request body is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise Refusal(400, "no empty line between the proof and the checkpoint")
    lines = head.split("\n")
    m = _OLD.fullmatch(lines[0])
    if m is None:
        raise Refusal(400, "the first line is not `old <size>` (decimal, no leading zeros)")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise Refusal(400, f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = []
    for i, line in enumerate(lines[1:]):
        try:
            h = base64.b64decode(line, validate=True)
        except ValueError:
            raise Refusal(400, f"proof line {i + 1} is not base64") from None
        if len(h) != merkle.HASH_SIZE or base64.b64encode(h).decode("ascii") != line:
            raise Refusal(400, f"proof line {i + 1} is not a canonical base64 32-byte hash")
        proof.append(h)
    return AddCheckpoint(int(m.group(1)), proof, note)


def judge(req: AddCheckpoint, logs: Mapping[str, bytes], latest: tuple[int, bytes] | None) -> Checkpoint:
    """The witness's checks on an add-checkpoint request, in the specification's order; returns the
    checkpoint to cosign (and to record as the origin's latest) or raises ``Refusal``.

    ``logs``: origin -> the log's Ed25519 public key (its signature lines are named by the origin);
    ``latest``: the (size, root) this witness last cosigned for the request's origin, if any.
    """
    origin = req.note.split("\n", 1)[0]
    key = logs.get(origin)
    if key is None:
        raise Refusal(404, f"unknown log origin {origin!r}")
    try:
        cp = open_checkpoint(req.note, origin, key)
    except SignatureError as exc:
        raise Refusal(403, f"checkpoint of {origin}: {exc}") from None
    except CheckpointError as exc:
        raise Refusal(400, f"checkpoint of {origin}: {exc}") from None
    if req.old_size > cp.size:
        raise Refusal(400, f"old size {req.old_size} is larger than the checkpoint's size {cp.size}")
    last_size = latest[0] if latest else 0
    if req.old_size != last_size:
        raise Refusal(409, f"old size {req.old_size}, but the last cosigned size is {last_size}", last_size)
    if cp.size == 0 and cp.root != merkle.EMPTY_ROOT:
        raise Refusal(422, "a checkpoint of size 0 must have the empty tree's root")
    if req.old_size == 0:
        if req.proof:
            raise Refusal(422, "a consistency proof from size 0 must be empty")
        return cp
    assert latest is not None
    try:
        merkle.verify_consistency(req.old_size, cp.size, latest[1], cp.root, req.proof)
    except merkle.ProofError as exc:
        raise Refusal(422, f"not consistent with the cosigned tree of size {req.old_size}: {exc}") from None
    return cp
