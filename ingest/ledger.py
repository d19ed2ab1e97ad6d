"""Ledgers that anchor batch Merkle roots. One Protocol, a local append-only log, an in-memory one.

Local log entry (one JSON line per entry, ``ledger.jsonl``)::

    entry_bytes = MessagePack [index, batch_no, root(32), prev(32), time_ns]
    entry_hash  = SHA-256("vt/v1/ledger-entry" || 0x00 || entry_bytes)
    signature   = Ed25519(ingest key, "vt/v1/ledger-entry" || 0x00 || entry_bytes)

``prev`` is the previous entry's hash (32 zero bytes for the first), so the log is a
hash chain signed by the ingest's own key. The ledger only ever sees batch roots: no
device ids, no VINs, no positions.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import msgspec

from schemas.crypto import TAG_LEDGER_ENTRY, ZERO_HASH, SigningKey, tagged_hash, verify


class LedgerError(Exception):
    """The ledger is unreachable or refused the entry: retry the batch, do not commit offsets."""


class LedgerConflict(LedgerError):
    """The ledger already holds a different root for this batch: a bug or tampering, never retried."""


@dataclass(frozen=True)
class Receipt:
    ledger: str
    batch_no: int
    root: bytes
    index: int
    entry_hash: bytes
    time_ns: int

    def to_json(self) -> str:
        return json.dumps(
            {
                "ledger": self.ledger,
                "batch_no": self.batch_no,
                "root": self.root.hex(),
                "index": self.index,
                "entry_hash": self.entry_hash.hex(),
                "time_ns": self.time_ns,
            },
            sort_keys=True,
        )


@dataclass
class VerifyReport:
    entries: int
    ok: bool
    problems: list[str]


class Ledger(Protocol):
    name: str

    def anchor(self, batch_no: int, root: bytes) -> Receipt:
        """Anchor ``root`` for ``batch_no``; idempotent: the same pair returns the same receipt."""
        ...

    def receipt(self, batch_no: int) -> Receipt | None: ...

    def verify(self) -> VerifyReport: ...


class _Entry(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    index: int
    batch_no: int
    root: bytes
    prev: bytes
    time_ns: int


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(_Entry)


def _signing_input(entry_bytes: bytes) -> bytes:
    return TAG_LEDGER_ENTRY + b"\x00" + entry_bytes


class MemoryLedger:
    """For unit tests: same semantics as the local log, nothing on disk, can be told to fail."""

    name = "memory"

    def __init__(self) -> None:
        self._by_batch: dict[int, Receipt] = {}
        self.down = False

    def anchor(self, batch_no: int, root: bytes) -> Receipt:
        if self.down:
            raise LedgerError("memory ledger is down")
        r = self._by_batch.get(batch_no)
        if r is not None:
            if r.root != root:
                raise LedgerConflict(f"batch {batch_no} already anchored with another root")
            return r
        r = Receipt(self.name, batch_no, root, len(self._by_batch), tagged_hash(TAG_LEDGER_ENTRY, root), 0)
        self._by_batch[batch_no] = r
        return r

    def receipt(self, batch_no: int) -> Receipt | None:
        return self._by_batch.get(batch_no)

    def verify(self) -> VerifyReport:
        return VerifyReport(len(self._by_batch), True, [])


def load_or_create_key(path: Path) -> SigningKey:
    if path.exists():
        return SigningKey.from_pem(path.read_bytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.to_pem())
    path.with_suffix(path.suffix + ".pub").write_text(key.public_key.hex() + "\n")
    return key


class LocalLedger:
    """Append-only, hash-chained, signed log in one JSON-lines file, fsynced per entry."""

    name = "local"

    def __init__(self, path: str | Path, key: SigningKey | None = None) -> None:
        self.path = Path(path)
        self.key = key
        self._by_batch: dict[int, Receipt] = {}
        self._head = ZERO_HASH
        self._count = 0
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        good = 0
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # a torn last write: never acknowledged, so dropped below
            obj = json.loads(line)
            entry = _dec.decode(bytes.fromhex(obj["entry"]))
            h = bytes.fromhex(obj["hash"])
            self._by_batch[entry.batch_no] = Receipt(
                self.name, entry.batch_no, entry.root, entry.index, h, entry.time_ns
            )
            self._head = h
            self._count += 1
            good += len(line)
        if good != len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(good)

    def anchor(self, batch_no: int, root: bytes) -> Receipt:
        r = self._by_batch.get(batch_no)
        if r is not None:
            if r.root != root:
                raise LedgerConflict(f"batch {batch_no} already anchored with root {r.root.hex()}")
            return r
        if self.key is None:
            raise LedgerError("this ledger was opened read-only (no signing key)")
        entry = _Entry(self._count, batch_no, root, self._head, time.time_ns())
        eb = _enc.encode(entry)
        h = tagged_hash(TAG_LEDGER_ENTRY, eb)
        line = {
            "index": entry.index,
            "batch_no": batch_no,
            "root": root.hex(),
            "prev": entry.prev.hex(),
            "time_ns": entry.time_ns,
            "entry": eb.hex(),
            "hash": h.hex(),
            "sig": self.key.sign(_signing_input(eb)).hex(),
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                f.write(json.dumps(line).encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise LedgerError(f"cannot append to {self.path}: {exc}") from exc
        r = Receipt(self.name, batch_no, root, entry.index, h, entry.time_ns)
        self._by_batch[batch_no] = r
        self._head = h
        self._count += 1
        return r

    def receipt(self, batch_no: int) -> Receipt | None:
        return self._by_batch.get(batch_no)

    def roots(self) -> dict[int, bytes]:
        return {b: r.root for b, r in self._by_batch.items()}

    def verify(self, public_key: bytes | None = None) -> VerifyReport:
        return verify_log(
            self.path, public_key or (self.key.public_key if self.key else _read_pub(self.path))
        )


def _read_pub(path: Path) -> bytes:
    cand = [path.with_name("ingest.key.pub"), path.with_suffix(".pub")]
    for c in cand:
        if c.exists():
            return bytes.fromhex(c.read_text().strip())
    raise LedgerError(f"no public key given and none found beside {path}")


def verify_log(path: Path, public_key: bytes) -> VerifyReport:
    """Check every entry: decodes, index sequence, prev links, hash, signature, readable fields."""
    problems: list[str] = []
    prev = ZERO_HASH
    n = 0
    seen: set[int] = set()
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return VerifyReport(0, True, [])
    for lineno, line in enumerate(lines, 1):
        try:
            obj = json.loads(line)
            eb = bytes.fromhex(obj["entry"])
            entry = _dec.decode(eb)
            h = bytes.fromhex(obj["hash"])
            sig = bytes.fromhex(obj["sig"])
        except (ValueError, KeyError, msgspec.DecodeError) as exc:
            problems.append(f"line {lineno}: unreadable entry ({exc})")
            prev = b""
            n += 1
            continue
        if entry.index != n:
            problems.append(f"line {lineno}: index {entry.index}, expected {n}")
        if entry.prev != prev:
            problems.append(f"line {lineno}: prev link broken (entry {entry.index})")
        if tagged_hash(TAG_LEDGER_ENTRY, eb) != h:
            problems.append(f"line {lineno}: entry hash mismatch (entry {entry.index})")
        if not verify(public_key, _signing_input(eb), sig):
            problems.append(f"line {lineno}: bad signature (entry {entry.index})")
        if (obj.get("batch_no"), obj.get("root"), obj.get("index")) != (
            entry.batch_no,
            entry.root.hex(),
            entry.index,
        ):
            problems.append(f"line {lineno}: readable fields differ from the signed entry")
        if entry.batch_no in seen:
            problems.append(f"line {lineno}: batch {entry.batch_no} anchored twice")
        seen.add(entry.batch_no)
        prev = h
        n += 1
    return VerifyReport(n, not problems, problems)
