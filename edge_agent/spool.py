"""The store-and-forward spool: every signed block is on disk before it is published.

One SQLite file (WAL) holds the chain state (boot counter, next sequence number, chain head),
the blocks the broker has not acknowledged yet, and the drops still to be declared. A sealed
block and the chain state that follows it are written in **one transaction**, so after a
SIGKILL or a power loss the file holds either both or neither: a sequence number is never
reused for a block that may have left the vehicle, and nothing that was published is missing
from the spool until the broker acknowledged it.

``synchronous=FULL`` (``edge.fsync = true``) makes every commit durable before ``put``
returns; with ``fsync = false`` (simulations) a crash of the process still loses nothing,
a power loss may lose the last commits.

Bounds and the drop policy. After each ``put`` the spool enforces ``max_bytes`` (payload
bytes held) and ``max_age_s`` (age of a block since it was sealed): the **oldest** blocks are
dropped first, in the same transaction. Every contiguous run of dropped sequence numbers
becomes a signed ``SpoolDrop`` record that the agent puts into its next block; the drop stays
"undeclared" until that block is acknowledged, and is declared again if that block is itself
dropped or the agent restarts first. Ingest can therefore tell "dropped on the vehicle" from
"lost in transit".
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from common.errors import Fatal
from edge_agent.state import ChainState
from schemas.block import Block
from schemas.records import SpoolDrop

_DDL = """
CREATE TABLE IF NOT EXISTS state (
    device_id TEXT PRIMARY KEY, boot INTEGER NOT NULL, next_seq INTEGER NOT NULL, head BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS blocks (
    seq INTEGER PRIMARY KEY, hash BLOB NOT NULL, prev BLOB NOT NULL, records INTEGER NOT NULL,
    sealed_ns INTEGER NOT NULL, payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS drops (
    id INTEGER PRIMARY KEY, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    records INTEGER NOT NULL, prev BLOB NOT NULL, last_hash BLOB NOT NULL, reason TEXT NOT NULL,
    ts_ns INTEGER NOT NULL, declared_in INTEGER
);
CREATE INDEX IF NOT EXISTS drops_declared ON drops (declared_in);
"""


class SpoolError(Fatal):
    """The spool file cannot be opened or written (disk full, corrupt, another agent holds it)."""


@dataclass(frozen=True)
class PendingDrop:
    """A drop not yet carried by an acknowledged block."""

    id: int
    record: SpoolDrop


class Spool:
    """SQLite spool and chain state of one device. ``path=":memory:"`` gives an in-memory spool
    (unit tests); the fleet simulator uses files with ``fsync=False``."""

    def __init__(
        self, path: str | Path, *, fsync: bool = True, max_bytes: int = 256 << 20, max_age_s: float = 0
    ) -> None:
        self.path = str(path)
        self.max_bytes = max_bytes
        self.max_age_ns = int(max_age_s * 1e9)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'OFF'}")
            # A second agent on the same file would fork the chain: take the write lock for good.
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.executescript(_DDL)
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("COMMIT")
            self._resync()
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    # -- chain state ------------------------------------------------------------------------------
    def begin_boot(self, device_id: str) -> ChainState:
        """Load the chain state and count this start as a new boot (committed)."""
        row = self._db.execute("SELECT device_id, boot, next_seq, head FROM state").fetchone()
        if row is not None and row[0] != device_id:
            raise SpoolError(f"spool {self.path} belongs to device {row[0]}, not {device_id}")
        state = ChainState(device_id) if row is None else ChainState(row[0], row[1], row[2], bytes(row[3]))
        state.boot += 1
        with self._txn():
            self._save_state(state)
        return state

    def _save_state(self, st: ChainState) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO state VALUES (?, ?, ?, ?)", (st.device_id, st.boot, st.next_seq, st.head)
        )

    # -- blocks -----------------------------------------------------------------------------------
    def put(
        self, state: ChainState, block: Block, payload: bytes, *, now_ns: int, declared: Iterable[int] = ()
    ) -> list[PendingDrop]:
        """Store a sealed block and the chain state after it, mark the drops it carries as declared
        in it, and enforce the bounds: one transaction. Returns the drops this made."""
        h = block.header
        with self._txn():
            self._db.execute(
                "INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?)",
                (h.seq, block.hash, h.prev, h.count, now_ns, payload),
            )
            self._save_state(state)
            ids = list(declared)
            if ids:
                self._db.executemany(
                    "UPDATE drops SET declared_in = ? WHERE id = ?", [(h.seq, i) for i in ids]
                )
            self.count += 1
            self.bytes += len(payload)
            made = self._enforce(now_ns)
        return made

    def _enforce(self, now_ns: int) -> list[PendingDrop]:
        victims: list[tuple[int, bytes, bytes, int, int, str]] = []
        if self.max_age_ns:
            for seq, bh, prev, n, size in self._db.execute(
                "SELECT seq, hash, prev, records, length(payload) FROM blocks WHERE sealed_ns < ? ORDER BY seq",
                (now_ns - self.max_age_ns,),
            ):
                victims.append((seq, bytes(bh), bytes(prev), n, size, "expired"))
        over = self.bytes - sum(v[4] for v in victims) - self.max_bytes
        if over > 0:
            after = victims[-1][0] if victims else -1
            # The newest block is never dropped: it is the one being published.
            for seq, bh, prev, n, size in self._db.execute(
                "SELECT seq, hash, prev, records, length(payload) FROM blocks WHERE seq > ?"
                " AND seq < (SELECT max(seq) FROM blocks) ORDER BY seq",
                (after,),
            ):
                if over <= 0:
                    break
                victims.append((seq, bytes(bh), bytes(prev), n, size, "full"))
                over -= size
        if not victims:
            return []
        self._db.executemany("DELETE FROM blocks WHERE seq = ?", [(v[0],) for v in victims])
        self.count -= len(victims)
        self.bytes -= sum(v[4] for v in victims)
        made: list[PendingDrop] = []
        run: list[tuple[int, bytes, bytes, int, int, str]] = []
        for v in [*victims, None]:
            if v is not None and run and v[0] == run[-1][0] + 1 and v[5] == run[-1][5]:
                run.append(v)
                continue
            if run:
                first, last = run[0], run[-1]
                # A drop whose declaring block is now dropped must be declared again.
                self._db.execute(
                    "UPDATE drops SET declared_in = NULL WHERE declared_in BETWEEN ? AND ?",
                    (first[0], last[0]),
                )
                rec = SpoolDrop(
                    ts_ns=now_ns,
                    first_seq=first[0],
                    last_seq=last[0],
                    records=sum(r[3] for r in run),
                    prev=first[2],
                    last_hash=last[1],
                    reason=first[5],
                )
                cur = self._db.execute(
                    "INSERT INTO drops (first_seq, last_seq, records, prev, last_hash, reason, ts_ns)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        rec.first_seq,
                        rec.last_seq,
                        rec.records,
                        rec.prev,
                        rec.last_hash,
                        rec.reason,
                        rec.ts_ns,
                    ),
                )
                assert cur.lastrowid is not None
                made.append(PendingDrop(cur.lastrowid, rec))
            run = [v] if v is not None else []
        return made

    def pending(self, from_seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` spooled blocks with ``seq >= from_seq``, oldest first: (seq, payload)."""
        rows = self._db.execute(
            "SELECT seq, payload FROM blocks WHERE seq >= ? ORDER BY seq LIMIT ?", (from_seq, limit)
        ).fetchall()
        return [(int(s), bytes(p)) for s, p in rows]

    def ack(self, seqs: Iterable[int]) -> None:
        """The broker acknowledged these blocks: forget them and the drops they declared."""
        params = [(s,) for s in seqs]
        if not params:
            return
        with self._txn():
            for (s,) in params:
                cur = self._db.execute("DELETE FROM blocks WHERE seq = ? RETURNING length(payload)", (s,))
                row = cur.fetchone()
                if row is not None:
                    self.count -= 1
                    self.bytes -= int(row[0])
            self._db.executemany("DELETE FROM drops WHERE declared_in = ?", params)

    def undeclared(self) -> list[PendingDrop]:
        """Drops to put into the next block: never declared, or declared in a block that was never
        stored (the agent stopped before sealing it)."""
        rows = self._db.execute(
            "SELECT id, first_seq, last_seq, records, prev, last_hash, reason, ts_ns FROM drops"
            " WHERE declared_in IS NULL OR declared_in NOT IN (SELECT seq FROM blocks) ORDER BY id"
        ).fetchall()
        return [
            PendingDrop(i, SpoolDrop(ts, a, b, n, bytes(p), bytes(h), r)) for i, a, b, n, p, h, r, ts in rows
        ]

    # -- helpers ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _txn(self) -> Iterator[None]:
        """One write transaction; SQLite errors become SpoolError. After a rollback the running
        count and size are read back from the file."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise SpoolError(f"spool {self.path}: {exc}") from exc
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            self._resync()
            if isinstance(exc, sqlite3.Error):
                raise SpoolError(f"spool {self.path}: {exc}") from exc
            raise

    def _resync(self) -> None:
        row = self._db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM blocks").fetchone()
        self.count, self.bytes = int(row[0]), int(row[1])
