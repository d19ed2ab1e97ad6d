"""The operator's consent records (``consent.sqlite`` beside the registry): vehicle owners with their
history, the owner-signed grants and revocations it received, the accesses it served under them
(each with its entry in the access log) and the requests it refused (counted, never served).

Grants and revocations are kept as the exact signed bytes the owner sent; nothing here is trusted
without its signature: the data-access API opens every grant again before it serves.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from common.errors import Refused
from schemas.consent import AccessRecord, Ownership, Signed, decode_access_record

_DDL = """
CREATE TABLE IF NOT EXISTS owners (
    device_id   TEXT NOT NULL,
    owner_key   BLOB NOT NULL,
    since_ns    INTEGER NOT NULL,
    until_ns    INTEGER,               -- NULL: the owner now
    recorded_ns INTEGER NOT NULL,
    PRIMARY KEY (device_id, since_ns)
);
CREATE TABLE IF NOT EXISTS grants (
    grant_id    BLOB PRIMARY KEY,
    statement   BLOB NOT NULL,
    signature   BLOB NOT NULL,
    received_ns INTEGER NOT NULL,
    log_index   INTEGER
);
CREATE TABLE IF NOT EXISTS revocations (
    grant_id    BLOB NOT NULL,         -- kept even before its grant arrives
    owner_key   BLOB NOT NULL,         -- the signer: it revokes the grant only if it signed it
    statement   BLOB NOT NULL,
    signature   BLOB NOT NULL,
    received_ns INTEGER NOT NULL,
    log_index   INTEGER,
    PRIMARY KEY (grant_id, owner_key)
);
CREATE TABLE IF NOT EXISTS accesses (
    id          INTEGER PRIMARY KEY,
    log_index   INTEGER,               -- its entry in the access log (NULL until logged)
    grant_id    BLOB NOT NULL,
    device_id   TEXT NOT NULL,
    record      BLOB NOT NULL          -- the AccessRecord's exact bytes; the log anchors their hash
);
CREATE TABLE IF NOT EXISTS refusals (
    reason    TEXT PRIMARY KEY,
    count     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS seen_requests (
    signature BLOB PRIMARY KEY,        -- answered request signatures, for the clock-skew window
    at_ns     INTEGER NOT NULL
);
"""


class OwnershipError(Refused):
    """An ownership change that does not follow the history (one line, for the command line)."""


@dataclass(frozen=True)
class OwnerPeriod:
    device_id: str
    owner_key: bytes
    since_ns: int
    until_ns: int | None


class ConsentStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_DDL)

    def close(self) -> None:
        self._db.close()

    # -- owners -----------------------------------------------------------------------------------
    def set_owner(self, device_id: str, owner_key: bytes, since_ns: int) -> OwnerPeriod:
        """``owner_key`` owns ``device_id`` from ``since_ns`` on; the previous owner's period ends
        there (kept: the history is never rewritten)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute(
                "SELECT owner_key, since_ns FROM owners WHERE device_id = ? AND until_ns IS NULL", [device_id]
            ).fetchone()
            if cur is not None:
                if bytes(cur[0]) == owner_key:
                    raise OwnershipError(f"device {device_id} is already owned by that key")
                if since_ns <= int(cur[1]):
                    raise OwnershipError(
                        f"device {device_id}: a new owner from {since_ns} must start after the current"
                        f" owner's start {int(cur[1])}"
                    )
                db.execute(
                    "UPDATE owners SET until_ns = ? WHERE device_id = ? AND until_ns IS NULL",
                    [since_ns, device_id],
                )
            db.execute(
                "INSERT INTO owners VALUES (?, ?, ?, NULL, ?)",
                [device_id, owner_key, since_ns, time.time_ns()],
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return OwnerPeriod(device_id, owner_key, since_ns, None)

    def owner(self, device_id: str) -> Ownership | None:
        row = self._db.execute(
            "SELECT owner_key, since_ns FROM owners WHERE device_id = ? AND until_ns IS NULL", [device_id]
        ).fetchone()
        return Ownership(bytes(row[0]), int(row[1])) if row else None

    def history(self, device_id: str | None = None) -> list[OwnerPeriod]:
        q = "SELECT device_id, owner_key, since_ns, until_ns FROM owners"
        args: list[object] = []
        if device_id is not None:
            q += " WHERE device_id = ?"
            args.append(device_id)
        return [
            OwnerPeriod(d, bytes(k), int(s), None if u is None else int(u))
            for d, k, s, u in self._db.execute(q + " ORDER BY device_id, since_ns", args)
        ]

    # -- grants and revocations ---------------------------------------------------------------------
    def kept_grant(self, grant_id: bytes, s: Signed) -> bool:
        """Whether exactly this grant is kept already; ``OwnershipError`` if another one has its id."""
        cur = self._db.execute("SELECT statement FROM grants WHERE grant_id = ?", [grant_id]).fetchone()
        if cur is not None and bytes(cur[0]) != s.statement:
            raise OwnershipError(f"another grant with id {grant_id.hex()} is kept already")
        return cur is not None

    def add_grant(self, grant_id: bytes, s: Signed, log_index: int) -> None:
        """Keep a grant (already logged at ``log_index``); a second copy of the same bytes is ignored."""
        self._db.execute(
            "INSERT OR IGNORE INTO grants VALUES (?, ?, ?, ?, ?)",
            [grant_id, s.statement, s.signature, time.time_ns(), log_index],
        )

    def grant(self, grant_id: bytes) -> Signed | None:
        row = self._db.execute(
            "SELECT statement, signature FROM grants WHERE grant_id = ?", [grant_id]
        ).fetchone()
        return Signed(bytes(row[0]), bytes(row[1])) if row else None

    def add_revocation(self, grant_id: bytes, owner_key: bytes, s: Signed, log_index: int) -> None:
        """Keep a revocation (already logged at ``log_index``), also before its grant arrives."""
        self._db.execute(
            "INSERT OR IGNORE INTO revocations VALUES (?, ?, ?, ?, ?, ?)",
            [grant_id, owner_key, s.statement, s.signature, time.time_ns(), log_index],
        )

    def revoked(self, grant_id: bytes, owner_key: bytes) -> bool:
        """Whether ``owner_key`` (the grant's signer) revoked the grant."""
        q = "SELECT 1 FROM revocations WHERE grant_id = ? AND owner_key = ?"
        return self._db.execute(q, [grant_id, owner_key]).fetchone() is not None

    # -- accesses and refusals ----------------------------------------------------------------------
    def add_access(self, record: bytes, a: AccessRecord) -> int:
        """Keep an access record before it is logged; its id, for ``logged``."""
        cur = self._db.execute(
            "INSERT INTO accesses (log_index, grant_id, device_id, record) VALUES (NULL, ?, ?, ?)",
            [a.grant_id, a.device_id, record],
        )
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def logged(self, access_id: int, log_index: int) -> None:
        self._db.execute("UPDATE accesses SET log_index = ? WHERE id = ?", [log_index, access_id])

    def forget_access(self, access_id: int) -> None:
        """The access could not be logged, so it was not served: drop its record."""
        self._db.execute("DELETE FROM accesses WHERE id = ?", [access_id])

    def accesses(self, device_id: str | None = None) -> list[tuple[int, bytes, AccessRecord]]:
        """(access log index, the record's exact bytes, the record) of logged accesses, oldest first."""
        q = "SELECT log_index, record FROM accesses WHERE log_index IS NOT NULL"
        args: list[object] = []
        if device_id is not None:
            q += " AND device_id = ?"
            args.append(device_id)
        rows = self._db.execute(q + " ORDER BY log_index", args)
        return [(int(i), bytes(r), decode_access_record(bytes(r))) for i, r in rows]

    def refuse(self, reason: str) -> None:
        """Count a refused request (by reason; the details go to the service's log)."""
        self._db.execute(
            "INSERT INTO refusals VALUES (?, 1) ON CONFLICT (reason) DO UPDATE SET count = count + 1",
            [reason],
        )

    def counts(self) -> dict[str, int]:
        """Accesses served (logged), grants and revocations kept."""
        q = (
            "SELECT (SELECT count(*) FROM accesses WHERE log_index IS NOT NULL),"
            " (SELECT count(*) FROM grants), (SELECT count(*) FROM revocations)"
        )
        a, g, r = self._db.execute(q).fetchone()
        return {"accesses": int(a), "grants": int(g), "revocations": int(r)}

    def refusals(self) -> dict[str, int]:
        return {str(r): int(n) for r, n in self._db.execute("SELECT reason, count FROM refusals")}

    def first_use(self, signature: bytes, now_ns: int, window_ns: int) -> bool:
        """Record an answered request's signature; False if it was seen within ``window_ns`` (a
        replay). Older ones are forgotten: the clock check refuses them anyway."""
        db = self._db
        db.execute("DELETE FROM seen_requests WHERE at_ns < ?", [now_ns - window_ns])
        cur = db.execute("INSERT OR IGNORE INTO seen_requests VALUES (?, ?)", [signature, now_ns])
        return cur.rowcount == 1
