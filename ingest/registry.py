"""The device registry: device id -> public keys, status and validity.

A small SQLite file (WAL) so that `telematics devices add|revoke` and the simulator can
change it while the consumer reads it. Unknown keys are rejected: there is no
trust-on-first-use.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from schemas.crypto import device_id_for, key_id_for

SCHEMA = """
CREATE TABLE IF NOT EXISTS device_keys (
    key_id        TEXT PRIMARY KEY,
    device_id     TEXT NOT NULL,
    public_key    BLOB NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    registered_at INTEGER NOT NULL,   -- ns since epoch
    revoked_at    INTEGER,            -- ns since epoch
    label         TEXT
);
CREATE INDEX IF NOT EXISTS device_keys_device ON device_keys(device_id);
"""


class RegistryError(Exception):
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

    @property
    def active(self) -> bool:
        return self.status == "active"


class KeyRing(Protocol):
    """What the consumer needs from a registry."""

    def lookup(self, key_ids: set[str]) -> dict[str, DeviceKey]: ...


class Registry:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add(self, public_key: bytes, *, label: str | None = None, device_id: str | None = None) -> DeviceKey:
        """Register a key. ``device_id`` defaults to the id derived from this key (enrolment)."""
        dev = device_id or device_id_for(public_key)
        kid = key_id_for(public_key)
        now = time.time_ns()
        try:
            self._db.execute(
                "INSERT INTO device_keys VALUES (?, ?, ?, 'active', ?, NULL, ?)",
                (kid, dev, public_key, now, label),
            )
        except sqlite3.IntegrityError as exc:
            existing = self.get(kid)
            if existing is not None and existing.device_id == dev and existing.active:
                return existing
            raise RegistryError(f"key {kid} is already registered (device {dev})") from exc
        return DeviceKey(kid, dev, public_key, "active", now, None, label)

    def revoke(self, device_id: str) -> int:
        """Revoke every active key of a device; returns how many keys were revoked."""
        cur = self._db.execute(
            "UPDATE device_keys SET status='revoked', revoked_at=? WHERE device_id=? AND status='active'",
            (time.time_ns(), device_id),
        )
        if cur.rowcount == 0 and not self.keys_of(device_id):
            raise RegistryError(f"device {device_id} is not registered")
        return cur.rowcount

    def get(self, key_id: str) -> DeviceKey | None:
        row = self._db.execute("SELECT * FROM device_keys WHERE key_id=?", (key_id,)).fetchone()
        return DeviceKey(*row) if row else None

    def keys_of(self, device_id: str) -> list[DeviceKey]:
        rows = self._db.execute("SELECT * FROM device_keys WHERE device_id=?", (device_id,)).fetchall()
        return [DeviceKey(*r) for r in rows]

    def lookup(self, key_ids: set[str]) -> dict[str, DeviceKey]:
        if not key_ids:
            return {}
        ids = list(key_ids)
        out: dict[str, DeviceKey] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            q = f"SELECT * FROM device_keys WHERE key_id IN ({','.join('?' * len(chunk))})"
            for row in self._db.execute(q, chunk):
                k = DeviceKey(*row)
                out[k.key_id] = k
        return out

    def all(self) -> list[DeviceKey]:
        return [DeviceKey(*r) for r in self._db.execute("SELECT * FROM device_keys ORDER BY registered_at")]
