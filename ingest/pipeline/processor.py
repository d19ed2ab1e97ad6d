"""Verify blocks and accumulate them into batches. Synchronous and I/O-free except for the Store.

For each message, in this order (the first failing check dead-letters it with its reason):
bridge marker / size -> envelope decode -> registry key (unknown) -> Ed25519 signature over the
exact header bytes -> header decode (version, key id) -> record count and Merkle root recomputed
from the carried records -> key validity interval (revoked / retired) -> device id (registry and MQTT topic) -> record decode and
timestamps within [t_first, t_last] -> sequence and hash chain (duplicate / conflict / chain
break / gap). Accepted blocks are appended to the pending batch in columnar form.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Protocol

import msgspec
import pyarrow as pa

from ingest.storage.registry import DeviceKey, KeyRing
from ingest.storage.schema import (
    RECORD_TABLES,
    BlockRow,
    Columns,
    DeviceRow,
    DuplicateRow,
    GapRow,
    RejectionRow,
    SessionRow,
)
from ingest.storage.store import BatchRows, DeviceHead, Store
from schemas.block import (
    Envelope,
    OpenedBlock,
    Reason,
    WireError,
    decode_envelope,
    decode_header,
    open_envelope,
)
from schemas.crypto import ZERO_HASH, block_hash, verify_block_signatures
from schemas.merkle import leaf_hash, root_from_leaf_hashes
from schemas.records import Record
from schemas.session import SessionError, SignedSession, open_session, verify_session
from schemas.transport import (
    BUNDLE_HEADER,
    BUNDLE_VERSION,
    DETAIL_HEADER,
    HISTORICAL_HEADER,
    MQTT_TOPIC_HEADER,
    REJECT_HEADER,
    SHA256_HEADER,
    SIZE_HEADER,
    decode_bundle,
    topic_key,
)

DEAD_LETTER_HEAD = 1024  # bytes of an oversized payload kept for the dead-letter topic
_record_list_decoder = msgspec.msgpack.Decoder(Record)
_TABLE_OF = {t.kind: t.name for t in RECORD_TABLES}


class Message(Protocol):
    """The part of a Kafka ConsumerRecord the processor reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any


@dataclass
class RawMessage:
    """A ``Message`` that did not come from Kafka: the offline ingest, the benchmarks and the tests
    feed the processor with these. ``headers``: (name, value) pairs, as Kafka's."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass(slots=True)
class BundledMessage:
    """One MQTT message of a bundle record (WIRE.md 12.5). It is processed as a Kafka record of its
    own at the bundle's position; ``index``, its place in the bundle, tells it from the others."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    index: int
    timestamp: int | None  # the bundle's Kafka timestamp (ms)


def bundle_index(m: Message) -> int | None:
    """A message's index in its bundle; None for a Kafka record that is not a bundle."""
    return m.index if isinstance(m, BundledMessage) else None


def unbundle(m: Message) -> list[Message]:
    """A Kafka record's messages: a bundle's entries in order, or the record itself (also a bundle
    that does not decode, which ``Processor`` dead-letters whole)."""
    if not m.headers or _header_value(m.headers, BUNDLE_HEADER) != BUNDLE_VERSION:
        return [m]
    try:
        entries = decode_bundle(m.value or b"")
    except (msgspec.MsgspecError, ValueError):  # a topic that is not UTF-8: UnicodeDecodeError
        return [m]
    out: list[Message] = []
    ts = getattr(m, "timestamp", None)
    for i, e in enumerate(entries):
        headers = [(MQTT_TOPIC_HEADER, e.topic.encode())]
        if e.historical:
            headers.append((HISTORICAL_HEADER, b"1"))
        out.append(
            BundledMessage(m.topic, m.partition, m.offset, topic_key(e.topic), e.payload, headers, i, ts)
        )
    return out


def in_chunks(records: Sequence[Message], size: int) -> Iterator[list[Message]]:
    """The messages of Kafka ``records`` (bundles opened) in lists of at least ``size`` (the last
    may be shorter), each ending where a record ends: a batch never holds part of a bundle, whose
    one offset is committed with it."""
    chunk: list[Message] = []
    for r in records:
        chunk += unbundle(r)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _bundle_problem(m: Message) -> str:
    version = _header_value(m.headers, BUNDLE_HEADER)
    if version != BUNDLE_VERSION:
        return f"bundle version {version!r} is not {BUNDLE_VERSION!r}"
    try:
        decode_bundle(m.value or b"")
    except (msgspec.MsgspecError, ValueError) as exc:
        return f"not a bundle: {exc}"
    return "not a bundle"


# A rejection's Kafka topic, partition, offset, index in its bundle (0: none) and payload SHA-256.
RejectionKey = tuple[str, int, int, int, bytes]


@dataclass(frozen=True)
class Rejection:
    topic: str
    partition: int
    offset: int
    reason: Reason
    detail: str
    key: bytes | None
    payload: bytes
    payload_size: int
    payload_sha256: bytes
    device_id: str | None = None
    key_id: str | None = None
    seq: int | None = None
    index: int | None = None  # in its bundle (WIRE.md 12.5)

    @property
    def at(self) -> RejectionKey:
        """The key of its row in the rejections table: its position, index in its bundle and payload."""
        return (self.topic, self.partition, self.offset, self.index or 0, self.payload_sha256)


@dataclass
class Pending:
    """The batch being accumulated."""

    started: float = 0.0
    messages: int = 0
    records: int = 0
    size: int = 0  # payload bytes of the messages in this batch
    blocks: list[BlockRow] = field(default_factory=list)  # batch_no 0 until the batch is sealed
    block_sources: list[tuple[str, int, int]] = field(default_factory=list)  # Kafka position per block
    block_hashes: list[bytes] = field(default_factory=list)
    block_index: dict[tuple[str, int], bytes] = field(default_factory=dict)
    rows: dict[str, TableRows] = field(default_factory=lambda: {t.name: TableRows() for t in RECORD_TABLES})
    gaps: list[GapRow] = field(default_factory=list)
    sessions: list[SessionRow] = field(default_factory=list)
    session_sources: list[tuple[str, int, int]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    rejected: set[RejectionKey] = field(default_factory=set)
    duplicates: list[DuplicateRow] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset to commit

    @property
    def empty(self) -> bool:
        return self.messages == 0


# A device's latest sequence numbers the Processor keeps the block hash of, so that a block published
# again (an MQTT redelivery after a reconnect) is recognised without a read of the store, whose
# lookup by device and number reads the whole blocks table (no index in the lake).
RECENT_BLOCKS = 16
# The gaps in a device's chain the Processor keeps open, so that the late blocks filling one (a
# vehicle's spool replayed) need no read of the store either.
OPEN_GAPS = 8


class _Window:
    """What this Processor knows of a device's chain without the store: the block hash of each of
    its latest sequence numbers up to the chain head, or None where the chain skipped one; and the
    gaps it saw the chain skip, as [first, last, hash of the block before first] while not filled.
    A number it skipped is stored by no one but this Processor, which forgets all this whenever it
    reloads the heads (``Processor.reset``)."""

    __slots__ = ("gaps", "hashes", "last")

    def __init__(self, size: int, last: int, last_hash: bytes) -> None:
        self.last = last
        self.hashes: deque[bytes | None] = deque([last_hash], maxlen=size)
        self.gaps: list[list[Any]] = []

    def _index(self, seq: int) -> int | None:
        i = seq - self.last + len(self.hashes) - 1
        return i if 0 <= i < len(self.hashes) else None

    def get(self, seq: int) -> tuple[bool, bytes | None]:
        """(whether this is known, the block hash of ``seq`` or None when it is not stored)."""
        i = self._index(seq)
        if i is not None:
            return True, self.hashes[i]
        for lo, hi, before in self.gaps:
            if lo <= seq <= hi:
                return True, None
            if seq == lo - 1:
                return True, before
        return False, None

    def advance(self, seq: int, h: bytes) -> None:
        """The chain head moves to ``seq`` (the numbers between it and the last were skipped)."""
        if seq == self.last + 1:  # the next one: nearly always
            self.hashes.append(h)
            self.last = seq
            return
        skipped, size = seq - self.last - 1, self.hashes.maxlen or 1
        if skipped > 0:
            self.gaps = [*self.gaps, [self.last + 1, seq - 1, self.hashes[-1]]][-OPEN_GAPS:]
        if skipped >= size - 1:
            self.hashes.clear()
        self.hashes.extend([None] * min(skipped, size - 1))
        self.hashes.append(h)
        self.last = seq

    def fill(self, seq: int, h: bytes) -> None:
        """A late block of a skipped number is accepted."""
        i = self._index(seq)
        if i is not None:
            self.hashes[i] = h
        for n, (lo, hi, before) in enumerate(self.gaps):
            if lo <= seq <= hi:  # what is left open of it: before and after ``seq``
                parts = [[lo, seq - 1, before]] if seq > lo else []
                parts += [[seq + 1, hi, h]] if seq < hi else []
                self.gaps[n : n + 1] = parts
                del self.gaps[:-OPEN_GAPS]  # filled out of order: the oldest gaps are the store's
                return


@dataclass
class TableRows:
    """One record table's rows of the pending batch, as columns: a block's rows are appended at once
    (a list extended per column, not a tuple per row), and the Arrow table is built from the columns."""

    records: list[Any] = field(default_factory=list)  # decoded, one kind
    device_id: list[str] = field(default_factory=list)
    block_seq: list[int] = field(default_factory=list)
    idx: list[int] = field(default_factory=list)  # the record's position in its block
    raw: list[bytes] = field(default_factory=list)  # its exact bytes
    leaf: list[bytes] = field(default_factory=list)  # its leaf hash

    def __len__(self) -> int:
        return len(self.records)

    def extend(
        self,
        device_id: str,
        seq: int,
        records: Sequence[Any],
        idx: Sequence[int],
        raw: Sequence[bytes],
        leaf: Sequence[bytes],
    ) -> None:
        n = len(records)
        self.records += records
        self.device_id += [device_id] * n
        self.block_seq += [seq] * n
        self.idx += idx
        self.raw += raw
        self.leaf += leaf

    def table(self, columns: Columns) -> pa.Table:
        """The Arrow table (at least one row). A column is gathered field by field (a C-level map
        per column: about half the cost of turning each record into a tuple and transposing)."""
        recs = self.records
        fields = type(recs[0]).__struct_fields__  # one record kind per table: ts first, then ``columns``

        def column(f: str) -> list[Any]:
            return list(map(attrgetter(f), recs))

        arrays: dict[str, pa.Array] = {
            "device_id": pa.array(self.device_id, pa.string()),
            "block_seq": pa.array(self.block_seq, pa.uint64()),
            "idx": pa.array(self.idx, pa.uint16()),
            "ts": pa.array(column(fields[0]), pa.int64()).cast(pa.timestamp("ns")),
        }
        for (name, _, typ), f in zip(columns, fields[1:], strict=True):
            arrays[name] = pa.array(column(f), typ)
        arrays["raw"] = pa.array(self.raw, pa.binary())
        arrays["leaf"] = pa.array(self.leaf, pa.binary())
        return pa.table(arrays)


def _header_value(headers: Any, name: str) -> bytes | None:
    for k, v in headers or ():
        if k == name:
            return bytes(v) if v is not None else b""
    return None


class Processor:
    def __init__(
        self,
        store: Store,
        keyring: KeyRing,
        *,
        max_block_bytes: int,
        verify: bool = True,
        verify_threads: int = 0,
        recent_blocks: int = RECENT_BLOCKS,
    ) -> None:
        """``verify=False`` is the benchmark's pass-through baseline only (``bench/e2e.py``): no
        signature, no Merkle root, no leaf hashes (stored empty), no batch root. Never in production.
        ``verify_threads``: a poll's signatures are checked in parallel on this many threads before
        its blocks are processed (0: in line, one by one).
        ``recent_blocks``: the latest block hashes kept per device (0: none, every block published
        again is looked up in the store; a benchmark's baseline)."""
        self.verify = verify
        self.recent_blocks = recent_blocks
        self._pool = ThreadPoolExecutor(verify_threads, "verify") if verify_threads > 0 else None
        self.store = store
        self.keyring = keyring
        self.max_block_bytes = max_block_bytes
        self.heads: dict[str, DeviceHead] = store.heads()
        self.pending = Pending()
        # Block hashes of the sealed batch being written (not yet visible in the store).
        self.inflight: dict[tuple[str, int], bytes] = {}
        self.windows: dict[str, _Window] = {}  # device -> its latest accepted blocks
        self._keys: dict[str, DeviceKey] = {}
        # Messages the store refused (Store.find_unstorable): Kafka position -> (block hash, or SHA-256
        # of a session message; why). Kept across ``reset`` so that exactly that message, when it is
        # redelivered at that position, is dead-lettered as ``unstorable`` instead of stored.
        # Keyed by (topic, partition, offset, identity): a bundle holds several messages at one offset.
        self.quarantine: dict[tuple[str, int, int, bytes], str] = {}

    def quarantine_prune(self, committed: dict[tuple[str, int], int]) -> None:
        """Forget quarantined positions below the committed offsets: they are never redelivered."""
        for pos in [q for q in self.quarantine if q[2] < committed.get((q[0], q[1]), 0)]:
            del self.quarantine[pos]

    def discard_pending(self) -> None:
        """Forget the batch being built, store untouched (a poll failed part of the way through a
        bundle: its offset must not be committed with half of it). The chain heads it advanced are
        reloaded by ``reset`` when the consumer rewinds; the windows it moved go now."""
        self.pending = Pending()
        self.windows = {}

    def reset(self) -> None:
        """Forget the pending and in-flight batches and reload chain heads from the store (after a
        failed flush)."""
        self.pending = Pending()
        self.inflight = {}
        self.windows = {}
        self.heads = self.store.heads()

    def seal(self) -> None:
        """The pending batch was built and is being written: start a new one. Until ``settled``,
        its blocks still count as stored for duplicate detection."""
        self.inflight = self.pending.block_index
        self.pending = Pending()

    def settled(self) -> None:
        """The sealed batch is committed: the store answers for its blocks now."""
        self.inflight = {}

    # -- per poll ---------------------------------------------------------------------------------
    def process_all(self, messages: Sequence[Message]) -> None:
        """Process one poll's messages. Registry entries are read once per poll, so a revocation
        takes effect at the next poll."""
        key_ids: set[str] = set()
        envs: list[Envelope | SignedSession | WireError] = []
        for m in messages:
            try:
                env = self._decode(m)
                envs.append(env)
                key_ids.add(env.key_id)
            except WireError as e:
                envs.append(e)
        self._keys = self.keyring.lookup(key_ids)
        signed = self._signatures(envs)
        for i, (m, decoded) in enumerate(zip(messages, envs, strict=True)):
            self._process(m, decoded, signed.get(i))

    def _signatures(self, envs: list[Envelope | SignedSession | WireError]) -> dict[int, bool]:
        """Whether each block's signature verifies with its registered key (by position in the
        poll), checked all at once on the verify threads; the other checks then use the answers."""
        if not self.verify or self._pool is None:
            return {}
        at: list[int] = []
        items: list[tuple[bytes, bytes, bytes]] = []
        for i, env in enumerate(envs):
            if isinstance(env, Envelope) and (key := self._keys.get(env.key_id)) is not None:
                at.append(i)
                items.append((key.public_key, env.header, env.sig))
        return dict(zip(at, verify_block_signatures(items, self._pool), strict=True))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def _decode(self, m: Message) -> Envelope | SignedSession:
        value = m.value or b""
        if _header_value(m.headers, BUNDLE_HEADER) is not None:  # only one that did not open
            raise WireError(Reason.DECODE, _bundle_problem(m))
        marker = _header_value(m.headers, REJECT_HEADER)
        if marker is not None:
            try:
                reason = Reason(marker.decode(errors="replace"))
            except ValueError:
                reason = Reason.DECODE
            raise WireError(
                reason,
                "flagged by the bridge: "
                + ((_header_value(m.headers, DETAIL_HEADER) or b"").decode(errors="replace")),
            )
        if len(value) > self.max_block_bytes:
            raise WireError(Reason.OVERSIZED, f"{len(value)} bytes > max_block_bytes {self.max_block_bytes}")
        if (_header_value(m.headers, MQTT_TOPIC_HEADER) or b"").endswith(b"/state"):
            try:
                return open_session(value)
            except SessionError as exc:
                raise WireError(Reason(exc.reason), str(exc)) from None
        return decode_envelope(value)

    def _process(
        self, m: Message, env: Envelope | SignedSession | WireError, signature_ok: bool | None
    ) -> None:
        p = self.pending
        if p.messages == 0:
            p.started = time.monotonic()
        p.messages += 1
        p.size += len(m.value or b"")
        tp = (m.topic, m.partition)
        p.offsets[tp] = m.offset + 1  # the last message's: after a seek back it may be lower
        try:
            if isinstance(env, WireError):
                raise env
            if isinstance(env, SignedSession):
                self._session(m, env)
            else:
                self._accept(m, env, signature_ok)
        except WireError as e:
            self._reject(m, e, env if not isinstance(env, WireError) else None)

    def _quarantined(self, m: Message, identity: bytes) -> None:
        why = self.quarantine.get((m.topic, m.partition, m.offset, identity))
        if why is not None:
            raise WireError(Reason.UNSTORABLE, why)

    def _reject(self, m: Message, e: WireError, env: Envelope | SignedSession | None) -> None:
        value = m.value or b""
        # Size and hash of the original payload: from the bridge's marker when it truncated it. The
        # headers are input too, so a malformed one falls back to what the message itself carries.
        size, sha = len(value), hashlib.sha256(value).digest()
        size_h = _header_value(m.headers, SIZE_HEADER)
        sha_h = _header_value(m.headers, SHA256_HEADER)
        try:
            if size_h is not None and sha_h is not None:
                size, sha = int(size_h), bytes.fromhex(sha_h.decode())
        except ValueError:
            pass
        rejection = Rejection(
            m.topic,
            m.partition,
            m.offset,
            e.reason,
            e.detail,
            m.key,
            # An oversized payload (or a record that did not open as a bundle and is larger than
            # a block may be) is kept as its first KiB, like the bridge's marker, so junk never
            # holds more than that in memory per message while its batch is built.
            value[:DEAD_LETTER_HEAD]
            if e.reason == Reason.OVERSIZED or len(value) > self.max_block_bytes
            else value,
            size,
            sha,
            m.key.decode(errors="replace") if m.key else None,
            env.key_id if env is not None else None,
            index=bundle_index(m),
        )
        # Keyed as the rejections table: a message processed twice in one batch is one rejection.
        if (at := rejection.at) not in self.pending.rejected:
            self.pending.rejected.add(at)
            self.pending.rejections.append(rejection)

    def _session(self, m: Message, s: SignedSession) -> None:
        """A birth, death or shutdown: verified with the device key, recorded in session_events."""
        key = self._keys.get(s.key_id)
        if key is None:
            raise WireError(Reason.UNKNOWN_KEY, f"key {s.key_id} is not in the device registry")
        try:
            ev = verify_session(s, key.public_key)
        except SessionError as exc:
            raise WireError(Reason(exc.reason), str(exc)) from None
        if not key.covers(ev.ts_ns, ev.ts_ns):
            raise WireError(
                Reason.REVOKED_KEY if key.status == "revoked" else Reason.KEY_VALIDITY,
                f"session message of {key.device_id} stamped {ev.ts_ns} is outside key {key.key_id}'s"
                f" validity {key.validity()}",
            )
        topic_dev = m.key.decode(errors="replace") if m.key is not None else None
        if ev.device_id != key.device_id or (topic_dev is not None and topic_dev != ev.device_id):
            raise WireError(
                Reason.DEVICE_MISMATCH,
                f"session of {ev.device_id} signed by {key.device_id}'s key on the topic of {topic_dev}",
            )
        if self.quarantine:
            self._quarantined(m, hashlib.sha256(m.value or b"").digest())
        ts_ms = getattr(m, "timestamp", None)
        at = int(ts_ms) * 1_000_000 if isinstance(ts_ms, int) and ts_ms > 0 else time.time_ns()
        self.pending.session_sources.append((m.topic, m.partition, m.offset))
        self.pending.sessions.append(
            SessionRow(
                ev.device_id,
                ev.boot,
                ev.session,
                ev.event,
                ev.key_id,
                ev.ts_ns,
                ev.next_seq,
                ev.agent_version,
                ev.schema_version,
                msgspec.json.encode(ev.config).decode(),
                m.value or b"",
                at,
            )
        )

    def _accept(self, m: Message, env: Envelope, signature_ok: bool | None) -> None:
        key = self._keys.get(env.key_id)
        if key is None:
            raise WireError(Reason.UNKNOWN_KEY, f"key {env.key_id} is not in the device registry")
        opened = (
            open_envelope(env, key.public_key, signature_ok=signature_ok)
            if self.verify
            else _open_unverified(env)
        )
        h = opened.header
        if not key.covers(h.t_first, h.t_last):
            # Judged after the signature: only the key's holder can have chosen these timestamps.
            raise WireError(
                Reason.REVOKED_KEY if key.status == "revoked" else Reason.KEY_VALIDITY,
                f"device {key.device_id} block {h.seq} stamped [{h.t_first}, {h.t_last}] is outside"
                f" key {key.key_id}'s validity {key.validity()} ({key.status})",
            )
        if h.device_id != key.device_id:
            raise WireError(
                Reason.DEVICE_MISMATCH,
                f"header device {h.device_id} but key {key.key_id} belongs to {key.device_id}",
            )
        if m.key is not None and m.key.decode(errors="replace") != h.device_id:
            raise WireError(
                Reason.DEVICE_MISMATCH,
                f"published on the topic of {m.key.decode(errors='replace')}, signed by {h.device_id}",
            )
        try:
            recs = [_record_list_decoder.decode(r) for r in env.records]
        except msgspec.DecodeError:
            raise WireError(
                Reason.RECORD, f"device {h.device_id} block {h.seq}: {_explain(env.records)}"
            ) from None
        tss = [r.ts_ns for r in recs]
        if min(tss) < h.t_first or max(tss) > h.t_last:
            raise WireError(Reason.HEADER, f"record timestamps outside [t_first, t_last] of block {h.seq}")
        if self.quarantine:
            self._quarantined(m, opened.hash)
        try:
            self._chain(m, h.device_id, h.seq, h.prev, opened, key)
        except _Duplicate:
            return
        self._append(m, env, opened, recs)

    def _stored_hash(self, device_id: str, seq: int) -> bytes | None:
        got = self.pending.block_index.get((device_id, seq)) or self.inflight.get((device_id, seq))
        if got is not None:
            return got
        w = self.windows.get(device_id)
        if w is not None:
            inside, h = w.get(seq)
            if inside:
                return h
        return self.store.block_hash_at(device_id, seq)

    def _chain(
        self, m: Message, dev: str, seq: int, prev: bytes, opened: OpenedBlock, key: DeviceKey
    ) -> None:
        head = self.heads.get(dev)
        now = time.time_ns()
        if head is None:
            if seq == 0 and prev != ZERO_HASH:
                raise WireError(Reason.CHAIN, f"device {dev} block 0 must chain to the zero hash")
            if seq > 0:
                self.pending.gaps.append(GapRow(dev, 0, seq - 1, now))
            self.heads[dev] = DeviceHead(key.key_id, seq, opened.hash, 0, 0, now, now)
            if self.recent_blocks:  # (the numbers below its first: the store's to answer, as a
                # device with no head may be one whose blocks were erased, their hashes kept)
                self.windows[dev] = _Window(self.recent_blocks, seq, opened.hash)
            return
        w = self.windows.get(dev)
        if w is None and self.recent_blocks:  # the head as stored: its block is, those before unknown
            w = self.windows[dev] = _Window(self.recent_blocks, head.last_seq, head.last_hash)
        if seq == head.last_seq + 1:
            if prev != head.last_hash:
                raise WireError(
                    Reason.CHAIN, f"device {dev} block {seq} does not chain to block {head.last_seq}"
                )
        elif seq > head.last_seq + 1:
            self.pending.gaps.append(GapRow(dev, head.last_seq + 1, seq - 1, now))
        else:
            stored = self._stored_hash(dev, seq)
            if stored == opened.hash:
                self.pending.duplicates.append(
                    DuplicateRow(
                        m.topic,
                        m.partition,
                        m.offset,
                        dev,
                        seq,
                        opened.hash,
                        now,
                        bundle_index(m) or 0,
                    )
                )
                raise _Duplicate
            if stored is not None:
                raise WireError(
                    Reason.SEQ_CONFLICT, f"device {dev} block {seq} differs from the stored block {seq}"
                )
            before = self._stored_hash(dev, seq - 1) if seq > 0 else ZERO_HASH
            if before is not None and before != prev:
                raise WireError(
                    Reason.CHAIN, f"late block {seq} of device {dev} does not chain to block {seq - 1}"
                )
            # A late block filling a gap: stored, the head does not move back. (The successor's prev link
            # could not be checked when it arrived; the audit re-checks every stored link.)
            if w is not None:
                w.fill(seq, opened.hash)
            return
        if w is not None:
            w.advance(seq, opened.hash)
        head.last_seq = seq
        head.last_hash = opened.hash
        head.key_id = key.key_id
        head.last_seen = now

    def _append(self, m: Message, env: Envelope, opened: OpenedBlock, recs: list[Any]) -> None:
        p = self.pending
        h = opened.header
        dev = h.device_id
        head = self.heads[dev]
        head.blocks += 1
        head.records += h.count
        p.touched.add(dev)
        p.block_index[(dev, h.seq)] = opened.hash
        p.blocks.append(
            BlockRow(
                dev,
                h.seq,
                opened.hash,
                env.header,
                env.sig,
                env.seed,
                h.key_id,
                h.boot,
                h.count,
                h.t_first,
                h.t_last,
                h.root,
                0,
                len(p.block_hashes),
                m.partition,
                m.offset,
                time.time_ns(),
                _header_value(m.headers, HISTORICAL_HEADER) is not None,
            )
        )
        p.block_sources.append((m.topic, m.partition, m.offset))
        p.block_hashes.append(opened.hash)
        kinds = set(map(type, recs))
        if len(kinds) == 1:  # a block of one kind: its columns are appended as they are
            p.rows[_TABLE_OF[kinds.pop()]].extend(
                dev, h.seq, recs, range(len(recs)), env.records, opened.leaf_hashes
            )
        else:
            for kind in kinds:
                at = [i for i, r in enumerate(recs) if type(r) is kind]
                p.rows[_TABLE_OF[kind]].extend(
                    dev,
                    h.seq,
                    [recs[i] for i in at],
                    at,
                    [env.records[i] for i in at],
                    [opened.leaf_hashes[i] for i in at],
                )
        p.records += h.count

    # -- at flush ---------------------------------------------------------------------------------
    def due(self, max_records: int, max_age_s: float, max_bytes: int = 1 << 62) -> bool:
        """A rejected or duplicate message counts as one record: a batch of junk closes as soon as a
        batch of records would, so junk is written in batches of the same size. A batch also closes
        at ``max_bytes`` of payload, the bound on what it holds in memory."""
        p = self.pending
        n = p.records + len(p.rejections) + len(p.duplicates)
        return p.messages > 0 and (
            n >= max_records or p.size >= max_bytes or time.monotonic() - p.started >= max_age_s
        )

    def build_rows(self, batch_no: int) -> BatchRows:
        p = self.pending
        root = root_from_leaf_hashes([leaf_hash(bh) for bh in p.block_hashes]) if self.verify else ZERO_HASH
        blocks = [b._replace(batch_no=batch_no) for b in p.blocks]
        rej = [
            RejectionRow(
                r.topic,
                r.partition,
                r.offset,
                str(r.reason),
                r.detail,
                r.device_id,
                r.key_id,
                r.seq,
                r.payload_size,
                r.payload_sha256,
                time.time_ns(),
                r.index or 0,
            )
            for r in p.rejections
        ]
        return BatchRows(
            batch_no=batch_no,
            root=root,
            created_at=time.time_ns(),
            records={t.name: p.rows[t.name].table(t.columns) for t in RECORD_TABLES if p.rows[t.name]},
            blocks=blocks,
            gaps=p.gaps,
            sessions=p.sessions,
            rejections=rej,
            # One row per position (a bundle's index in it) and block: a message processed twice in
            # one batch is one duplicate.
            duplicates=list(
                {
                    (d.kafka_offset, d.kafka_partition, d.kafka_topic, d.bundle_index, d.block_hash): d
                    for d in p.duplicates
                }.values()
            ),
            # Snapshots: the live heads move on while the writer thread stores this batch.
            heads=[
                DeviceRow(
                    d, h.key_id, h.last_seq, h.last_hash, h.blocks, h.records, h.first_seen, h.last_seen
                )
                for d in p.touched
                for h in (self.heads[d],)
            ],
            offsets=dict(p.offsets),
            record_count=p.records,
            block_sources=p.block_sources,
            session_sources=p.session_sources,
        )


def _explain(records: list[bytes]) -> str:
    """Name the first invalid record and field (the error path only; msgspec reports array positions)."""
    fields = {t.kind.__struct_config__.tag: ("kind", *t.kind.__struct_fields__) for t in RECORD_TABLES}
    for i, raw in enumerate(records):
        try:
            _record_list_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            msg = str(exc)
            m = re.search(r"at `\$\[(\d+)\]`", msg)
            try:
                kind = msgspec.msgpack.decode(raw)[0]
                name = fields[kind][int(m.group(1))] if m else None
            except Exception:
                name = None
            return f"record {i}" + (f" field {name}" if name else "") + f": {msg}"
    return "a record does not decode"


def _open_unverified(env: Envelope) -> OpenedBlock:
    """The pass-through baseline: the header decoded and hashed (for the chain), nothing verified."""
    header = decode_header(env.header)
    return OpenedBlock(header, block_hash(env.header), [b""] * len(env.records))


class _Duplicate(Exception):
    pass
