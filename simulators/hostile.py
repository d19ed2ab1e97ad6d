"""Hostile devices: every kind of malformed or malicious frame a device can publish, each with the
outcome the ingest must give it (a rejection reason, or ``duplicate``).

Used by the adversarial campaign (``tests/integration/test_campaign.py`` for CI, ``telematics bench
campaign`` for the long run): frames are published beside an honest fleet and every one must be
accounted for: stored, dead-lettered with its reason, or counted as a duplicate.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from schemas.block import (
    Block,
    BlockHeader,
    Envelope,
    build_block,
    encode_envelope,
    encode_header,
    encode_record,
)
from schemas.crypto import TAG_SESSION, ZERO_HASH, SigningKey, device_id_for
from schemas.records import MAX_TIMESTAMP_NS, DrivingSample
from schemas.session import SESSION_VERSION, SessionEvent, SignedSession, sign_session
from schemas.transport import blocks_topic, state_topic

T0 = 1_700_000_000_000_000_000
INF = 2**63 - 1  # the store's "infinity": outside every timestamp range of the contract


@dataclass(frozen=True)
class Frame:
    kind: str  # what this frame is
    topic: str
    payload: bytes
    expect: str  # rejection reason, "duplicate", "stored", or REFUSED_AT_BROKER


# The broker disconnects the sender of a packet above its limit (MQTT 5 reason 0x95, "packet too
# large") before reading it: the frame never reaches the pipeline, and the sender knows.
REFUSED_AT_BROKER = "packet_too_large"


def drive(ts: int, speed: float = 10.0) -> bytes:
    return encode_record(
        DrivingSample(ts, speed, 0.0, 0.0, 0.0, 0.0, None, None, None, None, None, 0.0, 0.0, 0.0, 1, 0.0)
    )


@dataclass
class Attacker:
    """A registered device (its key is in the registry) that signs whatever it likes. Its honest
    chain advances only with blocks the ingest stores, so every refused frame leaves the next
    honest block chaining correctly."""

    key: SigningKey = field(default_factory=SigningKey.generate)
    seq: int = 0
    head: bytes = ZERO_HASH
    t: int = T0
    stored: list[Block] = field(default_factory=list)

    @property
    def id(self) -> str:
        return device_id_for(self.key.public_key)

    @property
    def blocks(self) -> str:
        return blocks_topic(self.id)

    @property
    def state(self) -> str:
        return state_topic(self.id)

    def _records(self, n: int = 3) -> list[bytes]:
        self.t += 1000
        return [drive(self.t + i) for i in range(n)]

    def block(self, records: list[bytes] | None = None, **over: int | bytes) -> Block:
        recs = records if records is not None else self._records()
        args: dict[str, object] = {
            "device_id": self.id,
            "boot": 1,
            "seq": self.seq,
            "prev": self.head,
            "records": recs,
            "seed": os.urandom(32),
        }
        if "t_first" not in over or "t_last" not in over:
            ts = [msgspec.msgpack.decode(r)[1] for r in recs]
            args.update(t_first=min(ts), t_last=max(ts))
        args.update(over)
        return build_block(self.key, **args)  # type: ignore[arg-type]

    def honest(self) -> Frame:
        """A valid block that will be stored (advances the chain)."""
        b = self.block()
        self.seq += 1
        self.head = b.hash
        self.stored.append(b)
        return Frame("honest", self.blocks, b.to_wire(), "stored")

    def _env(self, b: Block, **over: object) -> bytes:
        e = b.envelope()
        fields = {f: getattr(e, f) for f in e.__struct_fields__}
        fields.update(over)
        return encode_envelope(Envelope(**fields))  # type: ignore[arg-type]

    def _signed_header(self, header_bytes: bytes, records: list[bytes]) -> bytes:
        sig = self.key.sign_header(header_bytes)
        return encode_envelope(Envelope(1, self.key.key_id, header_bytes, sig, os.urandom(32), records))

    def _session(self, ts_ns: int = T0, body: bytes | None = None, flip: bool = False) -> bytes:
        if body is None:
            ev = SessionEvent("birth", self.id, self.key.key_id, 1, 1, ts_ns, self.seq, "hostile", 1, {})
            raw = sign_session(self.key, ev)
            if flip:
                b = bytearray(raw)
                b[-1] ^= 0x01
                raw = bytes(b)
            return raw
        sig = self.key.sign(TAG_SESSION + b"\x00" + body)
        return msgspec.msgpack.encode(SignedSession(SESSION_VERSION, self.key.key_id, body, sig))

    def frames(
        self, rng: random.Random, *, broker_max: int, bridge_max: int, consumer_max: int, other: str
    ) -> list[Frame]:
        """One frame of every kind (``other``: another registered device's id, for topic theft)."""
        out: list[Frame] = []
        add = out.append
        b = self.block()
        recs = list(b.records)
        # -- the envelope ---------------------------------------------------------------------------
        add(Frame("random_bytes", self.blocks, b"\xc1" + rng.randbytes(rng.randint(0, 300)), "decode_error"))
        add(Frame("empty", self.blocks, b"", "decode_error"))
        wire = b.to_wire()
        add(Frame("truncated", self.blocks, wire[: rng.randint(1, len(wire) - 1)], "decode_error"))
        add(Frame("trailing_bytes", self.blocks, wire + b"\x00", "decode_error"))
        add(
            Frame(
                "map_not_array", self.blocks, msgspec.msgpack.encode({"v": 1, "records": []}), "decode_error"
            )
        )
        add(Frame("short_array", self.blocks, msgspec.msgpack.encode([1, 2, 3]), "decode_error"))
        add(Frame("envelope_v2", self.blocks, self._env(b, v=2), "decode_error"))
        add(Frame("no_records", self.blocks, self._env(b, records=[]), "decode_error"))
        add(Frame("short_sig", self.blocks, self._env(b, sig=b.signature[:63]), "decode_error"))
        add(Frame("key_id_not_hex", self.blocks, self._env(b, key_id="zz" * 8), "decode_error"))
        # -- keys and signatures --------------------------------------------------------------------
        stranger = Attacker()
        add(Frame("unknown_key", self.blocks, stranger.block().to_wire(), "unknown_key"))
        sig = bytearray(b.signature)
        bit = rng.randrange(512)
        sig[bit // 8] ^= 1 << (bit % 8)
        add(Frame("signature_bit_flip", self.blocks, self._env(b, sig=bytes(sig)), "bad_signature"))
        hdr = bytearray(b.header_bytes)
        hdr[-1] ^= 0x01
        add(Frame("header_bit_flip", self.blocks, self._env(b, header=bytes(hdr)), "bad_signature"))
        # -- signed but wrong --------------------------------------------------------------------------
        add(
            Frame(
                "signed_garbage_header",
                self.blocks,
                self._signed_header(b"\x93\x01\x02\x03", recs),
                "bad_header",
            )
        )
        other_key = SigningKey.generate().key_id
        add(
            Frame(
                "header_key_id_mismatch",
                self.blocks,
                self._signed_header(encode_header(_header(b, key_id=other_key)), recs),
                "bad_header",
            )
        )
        add(
            Frame(
                "t_last_before_t_first",
                self.blocks,
                self.block(t_first=self.t + 10, t_last=self.t).to_wire(),
                "bad_header",
            )
        )
        add(
            Frame("record_outside_window", self.blocks, self.block(t_last=self.t - 1).to_wire(), "bad_header")
        )
        add(Frame("header_t_infinity", self.blocks, self.block(t_last=INF).to_wire(), "bad_header"))
        add(
            Frame(
                "count_mismatch",
                self.blocks,
                self._signed_header(encode_header(_header(b, count=len(recs) + 1)), recs),
                "merkle_mismatch",
            )
        )
        r0 = bytearray(recs[0])
        r0[-1] ^= 0x01
        add(
            Frame(
                "record_bit_flip",
                self.blocks,
                self._env(b, records=[bytes(r0), *recs[1:]]),
                "merkle_mismatch",
            )
        )
        add(Frame("seed_changed", self.blocks, self._env(b, seed=os.urandom(32)), "merkle_mismatch"))
        fast = msgspec.msgpack.encode(
            ["d", self.t + 5, 999.0] + [0.0] * 4 + [None] * 5 + [0.0, 0.0, 0.0, 1, 0.0]
        )
        add(Frame("record_out_of_range", self.blocks, self.block([fast]).to_wire(), "bad_record"))
        add(
            Frame(
                "record_ts_infinity",
                self.blocks,
                self.block([drive(self.t), drive(INF)], t_last=MAX_TIMESTAMP_NS).to_wire(),
                "bad_record",
            )
        )
        add(
            Frame(
                "unknown_record_kind",
                self.blocks,
                self.block([msgspec.msgpack.encode(["z", self.t])], t_first=self.t, t_last=self.t).to_wire(),
                "bad_record",
            )
        )
        add(
            Frame(
                "record_not_msgpack",
                self.blocks,
                self.block([b"\xc1"], t_first=self.t, t_last=self.t).to_wire(),
                "bad_record",
            )
        )
        add(
            Frame(
                "topic_of_another_device",
                blocks_topic(other),
                self.block().to_wire(),
                "device_mismatch",
            )
        )
        # -- the chain (needs at least one stored block) ----------------------------------------------
        if self.stored:
            last = self.stored[-1]
            add(Frame("replay", self.blocks, last.to_wire(), "duplicate"))
            conflict = self.block(seq=last.header.seq, prev=last.header.prev)
            add(Frame("seq_conflict", self.blocks, conflict.to_wire(), "seq_conflict"))
        add(Frame("chain_broken", self.blocks, self.block(prev=os.urandom(32)).to_wire(), "chain_broken"))
        # -- sizes ------------------------------------------------------------------------------------
        add(Frame("oversized_at_broker", self.blocks, b"\xc1" + rng.randbytes(broker_max), REFUSED_AT_BROKER))
        add(Frame("oversized_at_bridge", self.blocks, b"\xc1" + rng.randbytes(bridge_max), "oversized"))
        add(Frame("oversized_at_consumer", self.blocks, b"\xc1" + rng.randbytes(consumer_max), "oversized"))
        # -- session messages ---------------------------------------------------------------------------
        add(Frame("session_garbage", self.state, b"\xc1" + rng.randbytes(40), "decode_error"))
        add(Frame("session_bad_signature", self.state, self._session(flip=True), "bad_signature"))
        add(
            Frame(
                "session_body_undecodable",
                self.state,
                self._session(body=b"\x93\x01\x02\x03"),
                "decode_error",
            )
        )
        add(Frame("session_ts_infinity", self.state, self._session(ts_ns=INF), "decode_error"))
        add(Frame("session_unknown_key", self.state, stranger._session(), "unknown_key"))
        rng.shuffle(out)
        return out


def _header(b: Block, **over: object) -> BlockHeader:
    h = b.header
    fields = {f: getattr(h, f) for f in h.__struct_fields__}
    fields.update(over)
    return type(h)(**fields)


def campaign(
    attackers: list[Attacker],
    rounds: int,
    rng: random.Random,
    *,
    broker_max: int,
    bridge_max: int,
    consumer_max: int,
) -> Iterator[Frame]:
    """``rounds`` rounds; in each, every attacker sends one honest block then one frame of every kind
    (another attacker's topic stands in for a stolen one)."""
    for _ in range(rounds):
        for i, a in enumerate(attackers):
            yield a.honest()
            other = attackers[(i + 1) % len(attackers)].id
            yield from a.frames(
                rng, broker_max=broker_max, bridge_max=bridge_max, consumer_max=consumer_max, other=other
            )


def publish_refused(host: str, port: int, frame: Frame, client_id: str, timeout_s: float = 30.0) -> bool:
    """Publish ``frame`` (QoS 1) on an MQTT 5 connection of its own named ``client_id``: True when
    the broker closed it without acknowledging the frame. (The sender may see the broker's
    DISCONNECT with reason 0x95, or only the closed socket if that came first while it
    was still writing; the broker logs "Client <id> disconnected due to oversize packet".)"""
    gone: list[int] = []
    c = mqtt.Client(
        client_id=client_id, callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5
    )
    c.on_disconnect = lambda _c, _u, _f, rc, _p: gone.append(int(rc.value))
    c.connect(host, port)
    info = c.publish(frame.topic, frame.payload, qos=1)

    def acknowledged() -> bool:
        try:
            return info.is_published()
        except (RuntimeError, ValueError):  # the write already failed: the connection was lost
            return False

    deadline = time.monotonic() + timeout_s
    while not gone and info.rc == 0 and not acknowledged() and time.monotonic() < deadline:
        c.loop(0.1)  # no loop thread: nothing reconnects and re-sends the frame
    if gone or info.rc != 0:
        return not acknowledged()
    c.disconnect()
    return False
