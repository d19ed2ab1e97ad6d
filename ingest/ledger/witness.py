"""The witness role (``telematics witness serve``): cosigns a log's checkpoints over HTTP, per C2SP
tlog-witness ``add-checkpoint``, only when each extends the last one it cosigned for that log.

A witness runs apart from the ingest, with its own key and its own state (a directory holding
``witness.key``, ``witness.pub`` and ``witness.sqlite``), ideally on another host under another
operator. Its state holds, per log origin, the last cosigned checkpoint (size, root, note), and every
refused request with its reason (but the routine 409 that tells a log the size to prove from): the
evidence of a log that showed two histories. Checkpoints carry
a log's origin, size and root only: nothing personal is ever stored here.

Checking the old size and recording the new checkpoint happen in one SQLite write transaction, so
two concurrent requests can never roll the recorded tree back (the race the specification names).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ingest.ledger.base import load_or_create_key
from schemas.crypto import SigningKey
from schemas.witness import SIZE_CONTENT_TYPE, AddCheckpoint, Refusal, cosign, judge, parse_add_checkpoint

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024  # a note with 100 signatures and 63 proof lines is far smaller

_DDL = """
CREATE TABLE IF NOT EXISTS latest (
    origin TEXT PRIMARY KEY,
    size   INTEGER NOT NULL,
    root   BLOB NOT NULL,
    note   TEXT NOT NULL,
    at_s   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS refused (
    at_s   INTEGER NOT NULL,
    origin TEXT NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL,
    body   BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, content type, body."""

    status: int
    content_type: str
    body: bytes


class Witness:
    """A witness's key and state: ``add_checkpoint`` answers one request (thread-safe, atomic)."""

    def __init__(self, state_dir: Path, name: str, logs: Mapping[str, bytes]) -> None:
        self.name = name
        self.logs = dict(logs)  # origin -> the log's Ed25519 public key
        self.key: SigningKey = load_or_create_key(state_dir / "witness.key")
        pub = state_dir / "witness.pub"
        if not pub.exists():
            pub.write_text(self.key.public_key.hex() + "\n")
        self._db = sqlite3.connect(
            state_dir / "witness.sqlite", isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_DDL)

    def close(self) -> None:
        self._db.close()

    def latest(self, origin: str) -> tuple[int, bytes] | None:
        row = self._db.execute("SELECT size, root FROM latest WHERE origin = ?", [origin]).fetchone()
        return (int(row[0]), bytes(row[1])) if row else None

    def refused(self) -> list[tuple[str, int, str]]:
        """(origin, status, reason) of every refused request, oldest first."""
        return [
            (o, s, r)
            for o, s, r in self._db.execute("SELECT origin, status, reason FROM refused ORDER BY rowid")
        ]

    def add_checkpoint(self, body: bytes) -> Answer:
        now = int(time.time())
        req: AddCheckpoint | None = None
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # one writer: the check and the update are one step
        try:
            try:
                req = parse_add_checkpoint(body)
                origin = req.note.split("\n", 1)[0]
                cp = judge(req, self.logs, self.latest(origin))
                line = cosign(cp, self.name, self.key, now)
                db.execute(
                    "INSERT INTO latest VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE"
                    " SET size = excluded.size, root = excluded.root, note = excluded.note, at_s = excluded.at_s",
                    [cp.origin, cp.size, cp.root, req.note, now],
                )
            except Refusal as r:
                origin = req.note.split("\n", 1)[0] if req is not None else ""
                if r.status not in (404, 409):  # 409 is how a log learns the size: routine, not evidence
                    db.execute(
                        "INSERT INTO refused VALUES (?, ?, ?, ?, ?)", [now, origin, r.status, r.reason, body]
                    )
                db.execute("COMMIT")
                level = logging.INFO if r.status == 409 else logging.WARNING
                log.log(
                    level,
                    "witness %s refused a checkpoint of %r: %s %s",
                    self.name,
                    origin,
                    r.status,
                    r.reason,
                )
                if r.status == 409:
                    return Answer(409, SIZE_CONTENT_TYPE, f"{r.size}\n".encode())
                return Answer(r.status, "text/plain", (r.reason + "\n").encode())
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        log.info("witness %s cosigned %s at size %d", self.name, cp.origin, cp.size)
        return Answer(200, "text/plain", line.encode())


def app(witness: Witness) -> object:
    """The witness's HTTP application: ``POST /add-checkpoint``."""
    import asyncio

    from aiohttp import web

    lock = asyncio.Lock()

    async def add_checkpoint(request: web.Request) -> web.Response:
        body = await request.read()  # the whole body; over client_max_size: 413
        async with lock:  # one request at a time; SQLite, fsync and signing off the event loop
            a = await asyncio.to_thread(witness.add_checkpoint, body)
        return web.Response(status=a.status, body=a.body, content_type=a.content_type)

    application = web.Application(client_max_size=MAX_REQUEST_BYTES)
    application.router.add_post("/add-checkpoint", add_checkpoint)
    return application


def serve(witness: Witness, host: str, port: int) -> None:
    """Serve until interrupted."""
    from aiohttp import web

    web.run_app(app(witness), host=host, port=port, print=None, handle_signals=True)  # type: ignore[arg-type]
