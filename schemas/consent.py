"""Owner consent: grants, revocations, signed data requests and access records (docs/CONSENT.md).

Every statement is a MessagePack array with a fixed field order (``array_like``), signed as exact
bytes and carried as those bytes, never re-encoded to check (like a block header):

* **Grant** (signed by the vehicle owner's Ed25519 key, ``TAG_GRANT``): grant id (16 random
  bytes), owner key, grantee key, device ids, record kinds, the time range of the records it
  covers, purpose, expiry, whether raw rows may be released, issue time.
* **Revocation** (signed by the same owner key, ``TAG_REVOCATION``): grant id, owner key, time.
* **Request** (signed by the grantee, ``TAG_REQUEST``): method, path with its query, time, SHA-256
  of the body — what the data-access API authenticates.
* **Access record** (``TAG_ACCESS``): what the API served under which grant; only its hash enters
  the access log, so the log holds nothing personal in clear.

Record kinds a grant names: ``battery`` (battery_samples), ``driving`` (the driving samples'
motion fields) and ``position`` (their latitude, longitude, altitude, heading and accuracy). In
wire version 1 a driving record is one Merkle leaf that includes its position, so a driving row
can be proven only with its position: raw driving rows need both ``driving`` and ``position``.

Pure functions on bytes: no I/O, no clock (callers pass the time).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import Meta

from schemas import crypto, merkle
from schemas.checkpoint import CheckpointError, open_checkpoint
from schemas.crypto import TAG_ACCESS, TAG_GRANT, TAG_REQUEST, TAG_REVOCATION
from schemas.patterns import HexId32
from schemas.proof import entry_decoder

CONSENT_VERSION: Literal[1] = 1

Kind = Literal["battery", "driving", "position"]
KINDS: tuple[Kind, ...] = ("battery", "driving", "position")
# The record tables a grant's kinds open to raw rows (wire v1: a driving row carries its position).
TABLE_KINDS: dict[str, frozenset[str]] = {
    "battery_samples": frozenset({"battery"}),
    "driving_samples": frozenset({"driving", "position"}),
}
# Derived figures: what each is computed from, and the kinds a grant needs for it (no position is
# released: a driving score reports events and totals, not places).
FIGURES: dict[str, tuple[str, frozenset[str]]] = {
    "driving-score": ("driving_samples", frozenset({"driving"})),
    "battery-passport": ("battery_samples", frozenset({"battery"})),
}
Released = Literal["rows", "driving-score", "battery-passport"]
MAX_CLOCK_SKEW_NS = 300 * 10**9  # a request's time may differ from the server's by this much

Ns = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Key32 = Annotated[bytes, Meta(min_length=32, max_length=32)]
GrantId = Annotated[bytes, Meta(min_length=16, max_length=16)]


class Grant(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    v: Literal[1]
    grant_id: GrantId
    owner_key: Key32
    grantee_key: Key32
    devices: Annotated[list[HexId32], Meta(min_length=1, max_length=1000)]
    kinds: Annotated[list[Kind], Meta(min_length=1, max_length=3)]
    records_from_ns: Ns  # the records it covers: sampled in [records_from_ns, records_to_ns]
    records_to_ns: Ns
    purpose: Annotated[str, Meta(min_length=1, max_length=500)]
    expires_ns: Ns  # no request is answered after this
    raw: bool  # raw rows may be released (else only derived figures)
    issued_ns: Ns


class Revocation(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    v: Literal[1]
    grant_id: GrantId
    owner_key: Key32
    revoked_ns: Ns


class AccessRecord(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """A served request: the grant, the grantee's key id, the scope, the rows and the bundle's hash."""

    v: Literal[1]
    grant_id: GrantId
    grantee_key_id: Annotated[bytes, Meta(min_length=8, max_length=8)]
    device_id: HexId32
    table: str
    released: Released  # raw rows (a proof bundle) or a derived figure
    from_ns: Ns
    to_ns: Ns
    rows: Ns
    bundle_sha256: Key32
    served_ns: Ns


class Signed(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A statement's exact bytes and its Ed25519 signature, as files and the API carry them (hex in
    JSON: ``{"statement": hex, "signature": hex}``)."""

    statement: bytes
    signature: Annotated[bytes, Meta(min_length=64, max_length=64)]

    def to_json(self) -> bytes:
        return msgspec.json.encode({"statement": self.statement.hex(), "signature": self.signature.hex()})


class ConsentError(ValueError):
    """A consent statement is malformed or its signature does not verify."""


class Reason(StrEnum):
    """Why the data-access API refuses a request: each refusal names one."""

    UNKNOWN_GRANT = "unknown_grant"
    BAD_GRANT = "bad_grant"
    NOT_OWNER = "not_owner"  # the grant's signer does not own the device now
    REVOKED = "revoked"
    EXPIRED = "expired"
    NOT_GRANTEE = "not_grantee"
    BAD_REQUEST_SIGNATURE = "bad_request_signature"
    STALE_REQUEST = "stale_request"
    DEVICE_NOT_GRANTED = "device_not_granted"
    KIND_NOT_GRANTED = "kind_not_granted"
    OUTSIDE_TIME_RANGE = "outside_time_range"
    RAW_NOT_GRANTED = "raw_not_granted"
    BAD_REQUEST = "bad_request"
    RATE_LIMITED = "rate_limited"


class Refused(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


T = TypeVar("T", Grant, Revocation)
_enc = msgspec.msgpack.Encoder()
_grant_dec = msgspec.msgpack.Decoder(Grant)
_revocation_dec = msgspec.msgpack.Decoder(Revocation)
_access_dec = msgspec.msgpack.Decoder(AccessRecord)
_signed_json = msgspec.json.Decoder(dict[str, str])


def _message(tag: bytes, statement: bytes) -> bytes:
    return tag + b"\x00" + statement


def sign(tag: bytes, statement: bytes, key: crypto.SigningKey) -> Signed:
    return Signed(statement, key.sign(_message(tag, statement)))


def new_grant(
    owner: crypto.SigningKey,
    *,
    grantee_key: bytes,
    devices: Sequence[str],
    kinds: Sequence[Kind],
    records_from_ns: int,
    records_to_ns: int,
    purpose: str,
    expires_ns: int,
    raw: bool,
    issued_ns: int,
    grant_id: bytes | None = None,
) -> Signed:
    """An owner-signed grant (a fresh random grant id unless given)."""
    g = Grant(
        CONSENT_VERSION,
        grant_id or secrets.token_bytes(16),
        owner.public_key,
        grantee_key,
        sorted(set(devices)),
        [k for k in KINDS if k in set(kinds)],
        records_from_ns,
        records_to_ns,
        purpose,
        expires_ns,
        raw,
        issued_ns,
    )
    data = _enc.encode(g)
    try:
        _check_grant(_grant_dec.decode(data))  # constraints are checked on decoding, not construction
    except msgspec.DecodeError as exc:
        raise ConsentError(f"not a valid grant: {exc}") from None
    return sign(TAG_GRANT, data, owner)


def new_revocation(owner: crypto.SigningKey, grant_id: bytes, revoked_ns: int) -> Signed:
    return sign(
        TAG_REVOCATION,
        _enc.encode(Revocation(CONSENT_VERSION, grant_id, owner.public_key, revoked_ns)),
        owner,
    )


def read_signed(data: bytes) -> Signed:
    """A ``{"statement": hex, "signature": hex}`` JSON document."""
    try:
        obj = _signed_json.decode(data)
        s = Signed(bytes.fromhex(obj["statement"]), bytes.fromhex(obj["signature"]))
    except (msgspec.DecodeError, KeyError, ValueError) as exc:
        raise ConsentError(
            f"not a signed statement ({{'statement': hex, 'signature': hex}}): {exc}"
        ) from None
    if len(s.signature) != crypto.SIGNATURE_SIZE:
        raise ConsentError("the signature is not 64 bytes")
    return s


def _open(s: Signed, decoder: msgspec.msgpack.Decoder[T], tag: bytes, what: str) -> T:
    """Decode a statement and verify it is signed by the owner key it names."""
    try:
        st = decoder.decode(s.statement)
    except msgspec.DecodeError as exc:
        raise ConsentError(f"not a v{CONSENT_VERSION} {what}: {exc}") from None
    if not crypto.verify(st.owner_key, _message(tag, s.statement), s.signature):  # type: ignore[attr-defined]
        raise ConsentError(f"the {what}'s signature does not verify with the owner key it names")
    return st


def open_grant(s: Signed) -> Grant:
    """Decode a grant and verify it is signed by the owner key it names. Raises ``ConsentError``."""
    g = _open(s, _grant_dec, TAG_GRANT, "grant")
    _check_grant(g)
    return g


def open_revocation(s: Signed) -> Revocation:
    """Decode a revocation and verify it is signed by the owner key it names. Raises ``ConsentError``."""
    return _open(s, _revocation_dec, TAG_REVOCATION, "revocation")


def _check_grant(g: Grant) -> None:
    if g.records_to_ns < g.records_from_ns:
        raise ConsentError("the grant's record range ends before it starts")
    if len(set(g.devices)) != len(g.devices) or g.devices != sorted(g.devices):
        raise ConsentError("the grant's devices must be sorted and distinct")
    if len(set(g.kinds)) != len(g.kinds) or [k for k in KINDS if k in g.kinds] != g.kinds:
        raise ConsentError("the grant's kinds must be distinct, in the order battery, driving, position")


def request_message(method: str, target: str, time_ns: int, body_sha256: bytes) -> bytes:
    """The bytes a grantee signs for one API request: ``TAG_REQUEST || 0x00 ||`` the method, the
    path with its query, the time (decimal ns) and the body's SHA-256 (hex), one per line."""
    return _message(TAG_REQUEST, f"{method}\n{target}\n{time_ns}\n{body_sha256.hex()}\n".encode())


def access_record_bytes(a: AccessRecord) -> bytes:
    return _enc.encode(a)


def access_digest(record: bytes) -> bytes:
    """What the access log anchors for a record: SHA-256(TAG_ACCESS || 0x00 || record bytes)."""
    return crypto.tagged_hash(TAG_ACCESS, record)


def decode_access_record(record: bytes) -> AccessRecord:
    return _access_dec.decode(record)


@dataclass(frozen=True)
class Ownership:
    """Who owns a device now, and since when (from the operator's ownership history)."""

    owner_key: bytes
    since_ns: int


@dataclass(frozen=True)
class Query:
    """What a grantee asks for: one device's rows of one table in ``[from_ns, to_ns]``, or a figure
    (``released``) computed from them."""

    device_id: str
    table: str
    from_ns: int
    to_ns: int
    released: Released = "rows"

    @property
    def kinds(self) -> frozenset[str] | None:
        """The kinds a grant needs for this query (None: an unknown table or figure)."""
        if self.released == "rows":
            return TABLE_KINDS.get(self.table)
        table, kinds = FIGURES[self.released]
        return kinds if table == self.table else None


def judge(
    grant: Grant,
    *,
    requester_key: bytes,
    query: Query,
    owner: Ownership | None,
    revoked: bool,
    now_ns: int,
) -> None:
    """Whether ``grant`` (already opened: signature verified) lets ``requester_key`` have ``query``
    now; ``Refused`` with the first reason that fails, in the order of docs/CONSENT.md."""
    if requester_key != grant.grantee_key:
        raise Refused(Reason.NOT_GRANTEE, "the request is not signed by the grant's grantee")
    if query.device_id not in grant.devices:
        raise Refused(Reason.DEVICE_NOT_GRANTED, f"device {query.device_id} is not in the grant")
    if owner is None or owner.owner_key != grant.owner_key:
        raise Refused(
            Reason.NOT_OWNER,
            f"the grant is signed by {crypto.key_id_for(grant.owner_key)}, who does not own device"
            f" {query.device_id} now",
        )
    if grant.issued_ns < owner.since_ns:
        raise Refused(
            Reason.NOT_OWNER,
            f"the grant was signed before its signer's current ownership of device {query.device_id}",
        )
    if revoked:
        raise Refused(Reason.REVOKED, f"grant {grant.grant_id.hex()} was revoked by its owner")
    if now_ns > grant.expires_ns:
        raise Refused(Reason.EXPIRED, f"grant {grant.grant_id.hex()} expired at {grant.expires_ns}")
    need = query.kinds
    if need is None:
        raise Refused(Reason.BAD_REQUEST, f"no table {query.table!r} (battery_samples, driving_samples)")
    missing = sorted(need - set(grant.kinds))
    if missing:
        raise Refused(
            Reason.KIND_NOT_GRANTED,
            f"{query.table} needs {' and '.join(sorted(need))}; the grant lacks {', '.join(missing)}",
        )
    lo = max(grant.records_from_ns, owner.since_ns)
    if query.from_ns < lo or query.to_ns > grant.records_to_ns or query.to_ns < query.from_ns:
        raise Refused(
            Reason.OUTSIDE_TIME_RANGE,
            f"[{query.from_ns}, {query.to_ns}] is not within the grant's [{lo}, {grant.records_to_ns}]"
            + (
                " (records from before the owner's ownership are never covered)"
                if owner.since_ns > grant.records_from_ns
                else ""
            ),
        )
    if query.released == "rows" and not grant.raw:
        raise Refused(Reason.RAW_NOT_GRANTED, "the grant releases derived figures only, not raw rows")


# -- an access, checked offline by the owner ----------------------------------------------------------


class AccessProof(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What ``telematics accesses --json`` gives an owner for one access (hex strings)."""

    record: str
    grant: dict[str, str] | None
    log_index: int
    entry: str
    entry_signature: str
    checkpoint_size: int
    checkpoint: str
    path: list[str]


def verify_access(proof: AccessProof, *, operator_key: bytes, origin: str, owner_key: bytes) -> AccessRecord:
    """Check one access offline: the record is entry ``log_index`` of the access log (entry hash
    signed by the operator, inclusion path to a checkpoint the operator signed for ``origin``), and
    it was served under a grant ``owner_key`` signed that covers it (device, table, range, before
    expiry). Raises ``ConsentError`` naming the first check that fails."""
    try:
        rb = bytes.fromhex(proof.record)
        rec = decode_access_record(rb)
        eb = bytes.fromhex(proof.entry)
        entry = entry_decoder.decode(eb)
        path = [bytes.fromhex(p) for p in proof.path]
        sig = bytes.fromhex(proof.entry_signature)
    except (ValueError, msgspec.DecodeError) as exc:
        raise ConsentError(f"malformed access proof: {exc}") from None
    if entry.root != access_digest(rb):
        raise ConsentError("the log entry does not anchor this access record")
    if entry.index != proof.log_index:
        raise ConsentError(f"the log entry has index {entry.index}, not {proof.log_index}")
    if not crypto.verify(operator_key, crypto.TAG_LEDGER_ENTRY + b"\x00" + eb, sig):
        raise ConsentError("the log entry's signature does not verify with the operator key")
    try:
        cp = open_checkpoint(proof.checkpoint, origin, operator_key)
    except CheckpointError as exc:
        raise ConsentError(f"checkpoint: {exc}") from None
    if cp.size != proof.checkpoint_size:
        raise ConsentError(f"the checkpoint is for size {cp.size}, not {proof.checkpoint_size}")
    try:
        got = merkle.root_from_inclusion_path(merkle.leaf_hash(eb), proof.log_index, cp.size, path)
    except ValueError as exc:
        raise ConsentError(f"inclusion path: {exc}") from None
    if got != cp.root:
        raise ConsentError("the access is not in the access log at that checkpoint (inclusion path fails)")
    if proof.grant is None:
        raise ConsentError("the proof carries no grant")
    try:
        g = open_grant(
            Signed(bytes.fromhex(proof.grant["statement"]), bytes.fromhex(proof.grant["signature"]))
        )
    except (KeyError, ValueError) as exc:
        raise ConsentError(f"malformed grant: {exc}") from None
    if g.owner_key != owner_key:
        raise ConsentError("the grant is not signed by this owner key")
    if g.grant_id != rec.grant_id:
        raise ConsentError("the access names another grant")
    need = Query(rec.device_id, rec.table, rec.from_ns, rec.to_ns, rec.released).kinds
    if rec.device_id not in g.devices or need is None or not need <= set(g.kinds):
        raise ConsentError(
            f"the grant does not cover {rec.released} of {rec.table} of device {rec.device_id}"
        )
    if rec.from_ns < g.records_from_ns or rec.to_ns > g.records_to_ns or rec.served_ns > g.expires_ns:
        raise ConsentError("the access is outside the grant's time range or after its expiry")
    if rec.released == "rows" and not g.raw:
        raise ConsentError("raw rows were served under a grant for derived figures only")
    if crypto.key_id_for(g.grantee_key) != rec.grantee_key_id.hex():
        raise ConsentError("the access was served to another key than the grant's grantee")
    return rec
