"""Session messages: what a vehicle announces on ``vehicles/<id>/state`` (schemas/WIRE.md 12.4,
docs/EDGE.md).

On every MQTT connect the agent publishes a **birth**; the broker publishes the agent's
**death** (its last will, registered with that connect) if the connection is lost, and a clean
stop publishes a **shutdown**. Each is a MessagePack ``SessionEvent`` signed by the device key
over ``"vt/v1/session" || 0x00 || body`` and carried in a ``SignedSession`` envelope, so the
ingest records sessions only from the vehicle itself. A death's ``ts_ns`` and ``next_seq`` are
those of the connect it was registered with: the broker sends it later, unchanged.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.crypto import TAG_SESSION, SigningKey, verify
from schemas.patterns import HexId16, HexId32, whole
from schemas.records import MAX_TIMESTAMP_NS

SESSION_VERSION = 1
EVENTS = ("birth", "death", "shutdown")

ConfigValue = str | int | float | bool


class SessionEvent(msgspec.Struct, frozen=True, array_like=True):
    event: Annotated[str, Meta(pattern=whole("birth|death|shutdown"))]
    device_id: HexId32
    key_id: HexId16
    boot: Annotated[int, Meta(ge=0, le=2**32 - 1)]
    session: Annotated[int, Meta(ge=1, le=2**32 - 1)]  # connects since this boot
    ts_ns: Annotated[int, Meta(ge=0, le=MAX_TIMESTAMP_NS)]
    next_seq: Annotated[int, Meta(ge=0, le=2**63 - 1)]  # the next block's sequence number
    agent_version: Annotated[str, Meta(max_length=64)]
    schema_version: Annotated[int, Meta(ge=1, le=255)]
    # The sampling configuration in effect: block size and age, group and trigger rates.
    config: Annotated[dict[str, ConfigValue], Meta(max_length=256)]


class SignedSession(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    v: int
    key_id: HexId16
    body: Annotated[bytes, Meta(max_length=16_384)]
    sig: Annotated[bytes, Meta(min_length=64, max_length=64)]


_enc = msgspec.msgpack.Encoder()
_signed_dec = msgspec.msgpack.Decoder(SignedSession)
_event_dec = msgspec.msgpack.Decoder(SessionEvent)


class SessionError(ValueError):
    """A session message that does not decode or verify. ``reason`` is the rejection reason the ingest
    records (schemas/WIRE.md section 13): ``decode_error`` (envelope or signed body does not decode),
    ``bad_signature``, or ``bad_header`` (the body's key id is not the envelope's)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def sign_session(key: SigningKey, event: SessionEvent) -> bytes:
    body = _enc.encode(event)
    return _enc.encode(
        SignedSession(SESSION_VERSION, key.key_id, body, key.sign(TAG_SESSION + b"\x00" + body))
    )


def open_session(payload: bytes) -> SignedSession:
    """Decode the envelope (the key id tells the verifier which public key to use)."""
    try:
        s = _signed_dec.decode(payload)
    except msgspec.DecodeError as exc:
        raise SessionError("decode_error", f"not a session message: {exc}") from exc
    if s.v != SESSION_VERSION:
        raise SessionError("decode_error", f"session message version {s.v} is not supported")
    return s


def verify_session(s: SignedSession, public_key: bytes) -> SessionEvent:
    """Verify the signature, then decode the body; its key id must be the envelope's."""
    if not verify(public_key, TAG_SESSION + b"\x00" + s.body, s.sig):
        raise SessionError("bad_signature", f"session signature does not verify with key {s.key_id}")
    try:
        ev = _event_dec.decode(s.body)
    except msgspec.DecodeError as exc:
        raise SessionError("decode_error", f"signed session body does not decode: {exc}") from exc
    if ev.key_id != s.key_id:
        raise SessionError("bad_header", f"session body key id {ev.key_id} != envelope key id {s.key_id}")
    return ev
