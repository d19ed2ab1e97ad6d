"""The device registry: device id -> public keys, each with a validity interval.

A small SQLite file (WAL) so that `telematics devices add|rotate|revoke` and the simulator
can change it while the consumer reads it. Unknown keys are rejected: there is no
trust-on-first-use.

Validity is judged on the block's own timestamps (``t_first``, ``t_last``, device clock):
a block verifies against a key only if ``valid_from <= t_first`` and, once the key has
a ``valid_until``, ``t_last < valid_until``. So a rotation (old key retired at T, new key
valid from T) keeps every old block verifiable, including blocks that arrive late from
the vehicle's spool, while a block signed with the retired key after T is rejected.
A revocation (suspected compromise) sets ``valid_until`` to the time the key is no
longer trusted, which may lie in the past. See docs/SECURITY.md for what this does and
does not protect against.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from common.errors import Refused, Retryable
from schemas.crypto import device_id_for, key_id_for

_TABLE = """
CREATE TABLE IF NOT EXISTS device_keys (
    key_id        TEXT PRIMARY KEY,
    device_id     TEXT NOT NULL,
    public_key    BLOB NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('active', 'retired', 'revoked')),
    registered_at INTEGER NOT NULL,   -- ns since epoch
    revoked_at    INTEGER,            -- ns since epoch: when the key was retired or revoked
    label         TEXT,
    valid_from    INTEGER NOT NULL DEFAULT 0,  -- ns since epoch, device clock, inclusive
    valid_until   INTEGER                      -- ns since epoch, device clock, exclusive; NULL = open
);
"""
_INDEX = "CREATE INDEX IF NOT EXISTS device_keys_device ON device_keys(device_id);"

KEY_STATUSES = ("active", "retired", "revoked")


class RegistryRefused(Refused):
    """The registry refuses the request: a key registered already, a device it does not know."""


class RegistryError(Retryable):
    """A registry change is invalid (for example: the key is already registered)."""


@dataclass(frozen=True)
class DeviceKey:
    key_id: str
    device_id: str
    public_key: bytes
    status: str
    registered_at: int
    revoked_at: int | None
    label: str | None
    valid_from: int = 0
    valid_until: int | None = None

    @property
    def active(self) -> bool:
        return self.status == "active"

    def covers(self, t_first: int, t_last: int) -> bool:
        """Whether a block stamped [t_first, t_last] lies inside this key's validity interval."""
        return self.valid_from <= t_first and (self.valid_until is None or t_last < self.valid_until)

    def validity(self) -> str:
        until = "open" if self.valid_until is None else str(self.valid_until)
        return f"[{self.valid_from}, {until})"


class KeyRing(Protocol):
    """What the consumer needs from a registry."""

    def lookup(self, key_ids: set[str]) -> dict[str, DeviceKey]: ...


BUSY_TIMEOUT_S = 5.0  # how long a write waits for another process's lock on the registry
# Keys ``Registry.lookup`` keeps between polls (a fleet's worth); more (junk key ids): forgotten.
MAX_CACHED_KEYS = 100_000


@contextlib.contextmanager
def _db_errors(path: Path, what: str) -> Iterator[None]:
    """SQLite failures as RegistryError, naming the file and what to do."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        hint = (
            f"another process holds a lock on it for more than {BUSY_TIMEOUT_S:g} s; try again"
            if "locked" in str(exc) or "busy" in str(exc)
            else "check that the file and its directory are writable"
        )
        raise RegistryError(f"device registry {path}: cannot {what} ({exc}): {hint}") from exc
    except sqlite3.DatabaseError as exc:
        raise RegistryError(f"device registry {path}: cannot {what} ({exc}): is it a registry file?") from exc


class Registry:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RegistryError(f"device registry {self.path}: cannot create its directory ({exc})") from exc
        with _db_errors(self.path, "open it"):
            self._open()

    def _open(self) -> None:
        # Keys read by ``lookup``, None for a key id not registered, valid while SQLite's
        # data_version says no other connection changed the file (this one's writes clear it).
        self._keys: dict[str, DeviceKey | None] = {}
        self._version: int | None = None
        self._db = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        self._db.executescript(_TABLE)
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(device_keys)")}
        if "valid_from" not in cols:  # a registry written before validity intervals existed
            self._db.execute("ALTER TABLE device_keys ADD COLUMN valid_from INTEGER NOT NULL DEFAULT 0")
            self._db.execute("ALTER TABLE device_keys ADD COLUMN valid_until INTEGER")
            self._db.execute(
                "UPDATE device_keys SET valid_until = revoked_at WHERE status = 'revoked' AND valid_until IS NULL"
            )
        self._db.executescript(_INDEX)

    def close(self) -> None:
        self._db.close()

    def add(
        self,
        public_key: bytes,
        *,
        label: str | None = None,
        device_id: str | None = None,
        valid_from: int = 0,
    ) -> DeviceKey:
        """Register a key. ``device_id`` defaults to the id derived from this key (enrolment)."""
        with _db_errors(self.path, "register a key"):
            try:
                return self._add(public_key, label, device_id, valid_from)
            finally:
                self._keys = {}  # this connection's writes leave data_version as it was

    def _add(self, public_key: bytes, label: str | None, device_id: str | None, valid_from: int) -> DeviceKey:
        dev = device_id or device_id_for(public_key)
        kid = key_id_for(public_key)
        now = time.time_ns()
        try:
            self._db.execute(
                "INSERT INTO device_keys VALUES (?, ?, ?, 'active', ?, NULL, ?, ?, NULL)",
                (kid, dev, public_key, now, label, valid_from),
            )
        except sqlite3.IntegrityError as exc:
            existing = self.get(kid)
            if existing is not None and existing.device_id == dev and existing.active:
                return existing
            raise RegistryRefused(f"key {kid} is already registered (device {dev})") from exc
        return DeviceKey(kid, dev, public_key, "active", now, None, label, valid_from, None)

    def rotate(self, device_id: str, new_public_key: bytes, *, at: int | None = None) -> DeviceKey:
        """Retire the device's active key(s) at ``at`` (default: now) and register the new key as
        valid from ``at``, in one transaction. Blocks stamped before ``at`` keep verifying against
        the old key; blocks signed with the old key from ``at`` on are rejected."""
        with _db_errors(self.path, "rotate a key"):
            try:
                return self._rotate(device_id, new_public_key, at)
            finally:
                self._keys = {}  # this connection's writes leave data_version as it was

    def _rotate(self, device_id: str, new_public_key: bytes, at: int | None) -> DeviceKey:
        at = time.time_ns() if at is None else at
        active = [k for k in self.keys_of(device_id) if k.active]
        if not active:
            raise RegistryRefused(f"device {device_id} has no active key to rotate")
        kid = key_id_for(new_public_key)
        if self.get(kid) is not None:
            raise RegistryRefused(f"key {kid} is already registered")
        for k in active:
            if at <= k.valid_from:
                raise RegistryRefused(
                    f"rotation time {at} is not after key {k.key_id}'s valid_from {k.valid_from}"
                )
        now = time.time_ns()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "UPDATE device_keys SET status='retired', revoked_at=?, valid_until=?"
                " WHERE device_id=? AND status='active'",
                (now, at, device_id),
            )
            self._db.execute(
                "INSERT INTO device_keys VALUES (?, ?, ?, 'active', ?, NULL, NULL, ?, NULL)",
                (kid, device_id, new_public_key, now, at),
            )
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._db.execute("ROLLBACK")
            raise
        return DeviceKey(kid, device_id, new_public_key, "active", now, None, None, at, None)

    def revoke(self, device_id: str, *, at: int | None = None) -> int:
        """Revoke every key of a device still trusted at ``at`` (default: now): blocks stamped from
        ``at`` on are rejected. Returns how many keys were revoked."""
        with _db_errors(self.path, "revoke keys"):
            try:
                return self._revoke(device_id, at)
            finally:
                self._keys = {}  # this connection's writes leave data_version as it was

    def _revoke(self, device_id: str, at: int | None) -> int:
        now = time.time_ns()
        at = now if at is None else at
        cur = self._db.execute(
            "UPDATE device_keys SET status='revoked', revoked_at=?,"
            " valid_until = CASE WHEN valid_until IS NULL OR valid_until > ? THEN max(?, valid_from)"
            " ELSE valid_until END"
            " WHERE device_id=? AND status != 'revoked' AND (valid_until IS NULL OR valid_until > ?)",
            (now, at, at, device_id, at),
        )
        if cur.rowcount == 0 and not self.keys_of(device_id):
            raise RegistryRefused(f"device {device_id} is not registered")
        return cur.rowcount

    def get(self, key_id: str) -> DeviceKey | None:
        row = self._db.execute("SELECT * FROM device_keys WHERE key_id=?", (key_id,)).fetchone()
        return DeviceKey(*row) if row else None

    def keys_of(self, device_id: str) -> list[DeviceKey]:
        rows = self._db.execute("SELECT * FROM device_keys WHERE device_id=?", (device_id,)).fetchall()
        return [DeviceKey(*r) for r in rows]

    def lookup(self, key_ids: set[str]) -> dict[str, DeviceKey]:
        with _db_errors(self.path, "read keys"):
            return self._lookup(key_ids)

    def _lookup(self, key_ids: set[str]) -> dict[str, DeviceKey]:
        """The registered keys among ``key_ids``, as the file holds them now: from the keys read
        before while no other connection has written to the file since (SQLite's data_version,
        one query), else read again. A poll of a fleet's blocks then costs one query, not one row
        and one object per block."""
        if not key_ids:
            return {}
        (version,) = self._db.execute("PRAGMA data_version").fetchone()
        known = self._keys  # replaced, never emptied: a lookup on another thread keeps its own
        if version != self._version or len(known) > MAX_CACHED_KEYS:
            known = self._keys = {}
            self._version = version
        ids = [k for k in key_ids if k not in known]
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            q = f"SELECT * FROM device_keys WHERE key_id IN ({','.join('?' * len(chunk))})"
            known.update(dict.fromkeys(chunk))
            for row in self._db.execute(q, chunk):
                key = DeviceKey(*row)
                known[key.key_id] = key
        return {kid: k for kid in key_ids if (k := known[kid]) is not None}

    def all(self) -> list[DeviceKey]:
        return [DeviceKey(*r) for r in self._db.execute("SELECT * FROM device_keys ORDER BY registered_at")]
