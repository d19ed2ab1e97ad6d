"""The log's side of witnessing: every checkpoint the ledger signs is submitted to the configured
witnesses (C2SP tlog-witness ``add-checkpoint``, schemas/witness.py), on a background thread so
that a slow, down or refusing witness never holds up anchoring, and their cosignatures are kept
by the log (``LocalLedger.keep_cosignature``: ``<ledger>.cosignatures``). Proof bundles then carry each checkpoint note with its cosignatures.

A refusal is loud (an ERROR naming the witness, the size and the reason: a witness that refuses a
consistent log is misconfigured, and one that refuses because it saw another history has caught a
fork) and counted; ingestion goes on. A witness that is unreachable is retried with the next
checkpoint, whose consistency proof starts from whatever that witness last cosigned.
"""

from __future__ import annotations

import logging
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from schemas.witness import SIZE_CONTENT_TYPE, AddCheckpoint, Cosigner, WitnessError, verify_cosignatures

log = logging.getLogger(__name__)

MAX_BACKLOG = 16  # more checkpoints waiting than this: only the newest is submitted
MAX_ANSWER_BYTES = 64 * 1024  # a witness's answer: a few signature lines


class WitnessedLog(Protocol):
    """What the cosigning thread needs from the log (``LocalLedger``)."""

    def consistency(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 6962 consistency proof between two of its tree sizes."""
        ...

    def keep_cosignature(self, size: int, witness: str, line: str) -> None:
        """Store a verified cosignature line of the checkpoint of ``size``."""
        ...

    @property
    def size(self) -> int:
        """Entries in the log as this process knows it."""
        ...


@dataclass(frozen=True)
class WitnessEndpoint:
    """A witness the log submits to: its name and key (to check what it answers) and its URL
    prefix (``<url>/add-checkpoint``)."""

    name: str
    url: str
    public_key: bytes

    @property
    def cosigner(self) -> Cosigner:
        return Cosigner(self.name, self.public_key)


@dataclass
class WitnessTally:
    cosigned: int = 0
    refused: int = 0
    unreachable: int = 0
    last_size: int | None = None  # the size this witness last cosigned, as far as we know
    last_problem: str = ""


@dataclass
class _Answer:
    status: int
    content_type: str
    body: bytes


@dataclass
class Cosigning:
    """Submits checkpoints to ``witnesses`` on one background thread (``submit`` never blocks)."""

    log: WitnessedLog
    witnesses: Sequence[WitnessEndpoint]
    timeout_s: float = 5.0
    tally: dict[str, WitnessTally] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tally = {w.name: WitnessTally() for w in self.witnesses}
        self._queue: queue.Queue[tuple[int, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="cosigning", daemon=True)
        self._thread.start()

    def submit(self, size: int, note: str) -> None:
        self._queue.put((size, note))

    def close(self, wait_s: float = 10.0) -> None:
        """Submit what is queued, then stop (waiting at most ``wait_s``)."""
        self._queue.put(None)
        self._thread.join(wait_s)

    def drain(self) -> None:
        """Wait until every checkpoint submitted so far has been offered to every witness."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            todo = sorted(b for b in batch if b is not None)
            if len(todo) > MAX_BACKLOG:  # behind: the newest checkpoint covers the ones skipped
                todo = todo[-1:]
            for cp in todo:
                for w in self.witnesses:
                    try:
                        self._offer(w, *cp)
                    except Exception as exc:  # never let the thread die; the next witness still gets it
                        t = self.tally[w.name]
                        t.unreachable += 1
                        t.last_problem = f"failed: {exc!r}"
                        log.exception("submitting checkpoint %d to witness %s failed", cp[0], w.name)
            for _ in batch:
                self._queue.task_done()
            if None in batch:
                return

    def _offer(self, w: WitnessEndpoint, size: int, note: str) -> None:
        t = self.tally[w.name]
        old = t.last_size if t.last_size is not None and t.last_size <= size else 0
        for _ in range(2):  # a 409 names the size the witness has: one retry from there
            try:
                a = self._post(
                    w, AddCheckpoint(old, self.log.consistency(old, size) if 0 < old < size else [], note)
                )
            except OSError as exc:
                t.unreachable += 1
                t.last_problem = f"unreachable: {exc}"
                log.warning(
                    "witness %s at %s is unreachable (%s); retried with the next checkpoint",
                    w.name,
                    w.url,
                    exc,
                )
                return
            theirs = _size_of(a) if a.status == 409 else None
            if theirs is not None and theirs <= size and theirs != old:
                old = t.last_size = theirs
                continue
            if theirs is not None and theirs > size:
                t.last_size = theirs
                if theirs <= self.log.size:  # another writer's newer checkpoint of this log
                    return
                self._refused(w, size, f"it has cosigned a tree of {theirs} entries, larger than this log")
                return
            if a.status == 200:
                self._keep(w, size, note, a.body)
                return
            self._refused(w, size, f"{a.status} {a.body.decode(errors='replace').strip()}")
            return

    def _refused(self, w: WitnessEndpoint, size: int, problem: str) -> None:
        t = self.tally[w.name]
        t.refused += 1
        t.last_problem = problem
        log.error(
            "witness %s REFUSED checkpoint %d of the log: %s (a consistent log is never refused:"
            " check the witness's configuration, or the log was forked or rolled back)",
            w.name,
            size,
            problem,
        )

    def _keep(self, w: WitnessEndpoint, size: int, note: str, body: bytes) -> None:
        t = self.tally[w.name]
        lines = [ln + "\n" for ln in body.decode(errors="replace").splitlines() if ln]
        good = []
        for line in lines:
            try:
                if verify_cosignatures(note + line, [w.cosigner]):
                    good.append(line)
            except WitnessError as exc:
                log.error("witness %s answered checkpoint %d with a bad cosignature: %s", w.name, size, exc)
        if not good:
            self._refused(w, size, "200 without a valid cosignature by its key")
            return
        for line in good:
            self.log.keep_cosignature(size, w.name, line)
        t.cosigned += 1
        t.last_size = size

    def _post(self, w: WitnessEndpoint, req: AddCheckpoint) -> _Answer:
        r = urllib.request.Request(
            w.url.rstrip("/") + "/add-checkpoint",
            data=req.body(),
            method="POST",
            headers={"Content-Type": "text/plain; charset=utf-8"},
        )
        try:
            with urllib.request.urlopen(r, timeout=self.timeout_s) as resp:
                return _Answer(resp.status, resp.headers.get("Content-Type", ""), resp.read(MAX_ANSWER_BYTES))
        except urllib.error.HTTPError as e:
            return _Answer(e.code, e.headers.get("Content-Type", ""), e.read(MAX_ANSWER_BYTES))


def _size_of(a: _Answer) -> int | None:
    """The size a 409 answer names (``text/x.tlog.size``), if it is one."""
    if not a.content_type.startswith(SIZE_CONTENT_TYPE):
        return None
    text = a.body.decode(errors="replace").strip()
    return int(text) if text.isdigit() else None
