"""Ledgers that anchor batch Merkle roots. One Protocol, a local append-only log, an in-memory one.

Local log entry (one JSON line per entry, ``ledger.jsonl``)::

    entry_bytes = MessagePack [index, batch_no, root(32), prev(32), time_ns, blocks]
    entry_hash  = SHA-256("vt/v1/ledger-entry" || 0x00 || entry_bytes)
    signature   = Ed25519(ingest key, "vt/v1/ledger-entry" || 0x00 || entry_bytes)

``prev`` is the previous entry's hash (32 zero bytes for the first), so the log is a
hash chain signed by the ingest's own key. It is also an RFC 9162 Merkle log: leaf i is
``SHA-256(0x00 || entry_bytes_i)``, and signed checkpoints in the C2SP tlog-checkpoint
note format (origin, tree size, root) are appended to ``ledger.checkpoints``, so anyone who
kept an old checkpoint can check a newer one extends it (a consistency proof) and a proof
bundle can show that one batch is in the log (an inclusion proof). The ledger only ever
sees batch roots: no device ids, no VINs, no positions.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from ingest.ledger.base import LedgerConflict, LedgerDamaged, LedgerError, Receipt, VerifyReport
from ingest.ledger.cosigning import Cosigning, WitnessEndpoint
from schemas import merkle
from schemas.checkpoint import Checkpoint, CheckpointError, open_checkpoint, sign_checkpoint
from schemas.crypto import TAG_LEDGER_ENTRY, ZERO_HASH, SigningKey, tagged_hash, verify
from schemas.proof import LedgerEntry, entry_decoder

DEFAULT_ORIGIN = "telematics.local/ledger"


_enc = msgspec.msgpack.Encoder()


def _signing_input(entry_bytes: bytes) -> bytes:
    return TAG_LEDGER_ENTRY + b"\x00" + entry_bytes


class LocalLedger:
    """Append-only, hash-chained, signed log in one JSON-lines file, fsynced per entry, that is also
    an RFC 9162 Merkle log: leaf ``i`` is entry ``i``'s bytes, and signed checkpoints (tree size,
    root) are appended to ``<name>.checkpoints`` every ``checkpoint_every`` entries."""

    name = "local"

    @property
    def location(self) -> str:
        return str(self.path)

    def __init__(
        self,
        path: str | Path,
        key: SigningKey | None = None,
        *,
        origin: str = DEFAULT_ORIGIN,
        checkpoint_every: int = 1,
        witnesses: Sequence[WitnessEndpoint] = (),
    ) -> None:
        """``witnesses``: with a signing key, every checkpoint signed is submitted to them in the
        background (``ingest.ledger.cosigning``) and their cosignatures kept in ``<name>.cosignatures``."""
        self.path = Path(path)
        self.key = key
        self.origin = origin
        self.checkpoint_every = max(1, checkpoint_every)
        self.checkpoint_path = checkpoints_path(self.path)
        self._by_batch: dict[int, Receipt] = {}
        self._head = ZERO_HASH
        self._entries: list[tuple[bytes, bytes]] = []  # (entry bytes, signature) by index
        self._leaves: list[bytes] = []  # RFC 6962 leaf hashes of the entries
        self._tree = merkle.MerkleFrontier()
        self._checkpoints: dict[int, str] = {}  # tree size -> signed note
        self._file: tuple[int, int, int] | None = None  # (st_dev, st_ino, size) as last written
        self.cosignatures_path = cosignatures_path(self.path)
        self._load()
        self.cosigning = Cosigning(self, witnesses) if witnesses and key is not None else None

    def close(self) -> None:
        """Offer the last checkpoint to the witnesses (a few seconds at most), then stop doing so."""
        if self.cosigning is not None:
            self.cosigning.close()

    def witness_counts(self) -> dict[str, dict[str, int]]:
        if self.cosigning is None:
            return {}
        return {
            name: {"cosigned": t.cosigned, "refused": t.refused, "unreachable": t.unreachable}
            for name, t in self.cosigning.tally.items()
        }

    def _load(self) -> None:
        """Read the log and its checkpoints. A torn last line (no newline: never acknowledged) is
        dropped, and the writer truncates it. The writer refuses to open a log with any other damage
        (LedgerDamaged): a line that does not read, or an entry that does not follow the one before.
        A reader skips unreadable lines and lists them in ``self.damage``; the audit and ``ledger
        verify`` report every problem."""
        self.damage: list[str] = []
        self._pos = 0  # bytes of the log read so far (whole lines)
        self._cp_pos = 0  # bytes of the checkpoints file read so far
        self._lines = 0
        self._cp_lines = 0
        if self.key is None:
            self._read_new()  # a reader: no lock, and it never truncates
        else:
            with self._locked():  # a writer may truncate a torn tail: not while another appends
                self._read_new()
                self._remember_file()
        if self.damage and self.key is not None:
            raise LedgerDamaged(
                f"{self.damage[0]}: the ledger log is damaged; restore {self.path} from a backup"
                " (`telematics ledger verify` lists every problem); anchoring is stopped"
            )
        self._remember_file()

    def _read_new(self) -> None:
        """Read what was appended since the last read (by this process or, under the append lock,
        by another writer); only a writer truncates a torn last line."""
        if self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                raw = f.read()
            good = 0
            for line in raw.splitlines(keepends=True):
                if not line.endswith(b"\n"):
                    break  # a torn last write: never acknowledged, so dropped below
                good += len(line)
                self._lines += 1
                try:
                    eb, h, sig, entry = _read_entry_line(line)
                except ValueError as exc:
                    self.damage.append(f"{self.path.name} line {self._lines}: {exc}")
                    continue
                if entry.index != self.size or entry.prev != self._head:
                    self.damage.append(
                        f"{self.path.name} line {self._lines}: entry {entry.index} does not follow entry {self.size - 1}"
                    )
                self._by_batch[entry.batch_no] = Receipt(
                    self.name, entry.batch_no, entry.root, entry.index, h, entry.time_ns
                )
                self._append_leaf(eb, sig)
                self._head = h
            self._pos += good
            if good != len(raw) and self.key is not None and not self.damage:
                with open(self.path, "r+b") as f:  # only the writer repairs a torn tail; readers ignore it
                    f.truncate(self._pos)
        if self.checkpoint_path.exists():
            with open(self.checkpoint_path, "rb") as f:
                f.seek(self._cp_pos)
                raw = f.read()
            good = 0
            for line in raw.splitlines(keepends=True):
                if not line.endswith(b"\n"):
                    break
                good += len(line)
                self._cp_lines += 1
                try:
                    obj = json.loads(line)
                    size, note = int(obj["size"]), str(obj["note"])
                except (ValueError, KeyError, TypeError) as exc:
                    self.damage.append(
                        f"{self.checkpoint_path.name} line {self._cp_lines}: unreadable checkpoint ({exc})"
                    )
                    continue
                self._checkpoints[size] = note
            self._cp_pos += good
            if good != len(raw) and self.key is not None and not self.damage:
                with open(self.checkpoint_path, "r+b") as f:
                    f.truncate(self._cp_pos)

    def _remember_file(self) -> None:
        """The log file's identity, and how many of its bytes this process has read: the size it
        must have before this writer appends (more: another writer appended; read it first)."""
        try:
            st = os.stat(self.path)
            self._file = (st.st_dev, st.st_ino, self._pos)
        except FileNotFoundError:
            self._file = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the log's append lock (``<log>.lock``, an exclusive flock)."""
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise LedgerError(f"cannot open the ledger's lock {lock}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextlib.contextmanager
    def _appending(self) -> Iterator[None]:
        """Several consumer processes on one host append to one log, one at a time (the lock), each
        first reading what the others appended."""
        with self._locked():
            self._catch_up()
            yield

    def _catch_up(self) -> None:
        """The file must be the one this writer read, whole: it never recreates a vanished log. What
        another writer appended meanwhile is read (and checked) before this one appends."""
        try:
            st = os.stat(self.path)
            now = (st.st_dev, st.st_ino, st.st_size)
        except FileNotFoundError:
            now = None
        if now == self._file:
            return
        if self._file is None:
            what = "appeared while the ingest was writing a new log" if self.size else None
        elif now is None:
            what = f"vanished (it held {self.size} entries)"
        elif now[:2] != self._file[:2]:
            what = "was replaced by another file"
        elif now[2] < self._file[2]:
            what = f"shrank from {self._file[2]} to {now[2]} bytes"
        else:
            what = None
        if what is None:  # another writer of this log appended under the lock: read its entries
            self._read_new()
            self._remember_file()
            if not self.damage:
                return
            what = f"holds an entry another writer appended that does not read or follow: {self.damage[0]}"
        raise LedgerDamaged(
            f"ledger log {self.path} {what}: anchoring stopped, Kafka offsets are held; restore the file"
            " from a backup and restart the ingest"
        )

    def _append_leaf(self, eb: bytes, sig: bytes) -> None:
        self._entries.append((eb, sig))
        leaf = merkle.leaf_hash(eb)
        self._leaves.append(leaf)
        self._tree.append(leaf)

    # -- the Ledger Protocol ----------------------------------------------------------------------
    def anchor(self, batch_no: int, root: bytes, blocks: int) -> Receipt:
        r = self._by_batch.get(batch_no)
        if r is None:
            if self.key is None:
                raise LedgerError("this ledger was opened read-only (no signing key)")
            with self._appending():
                r = self._by_batch.get(batch_no)  # another writer may have anchored it meanwhile
                if r is None:
                    return self._append(batch_no, root, blocks)
        if r.root != root or self._entry_blocks(r.index) != blocks:
            raise LedgerConflict(f"batch {batch_no} already anchored with root {r.root.hex()}")
        return r

    def _append(self, batch_no: int, root: bytes, blocks: int) -> Receipt:
        assert self.key is not None
        entry = LedgerEntry(self.size, batch_no, root, self._head, time.time_ns(), blocks)
        eb = _enc.encode(entry)
        h = tagged_hash(TAG_LEDGER_ENTRY, eb)
        sig = self.key.sign(_signing_input(eb))
        line = {
            "index": entry.index,
            "batch_no": batch_no,
            "root": root.hex(),
            "prev": entry.prev.hex(),
            "time_ns": entry.time_ns,
            "blocks": blocks,
            "entry": eb.hex(),
            "hash": h.hex(),
            "sig": sig.hex(),
        }
        self._pos += append_json_line(self.path, line)
        self._lines += 1
        self._remember_file()
        r = Receipt(self.name, batch_no, root, entry.index, h, entry.time_ns)
        self._by_batch[batch_no] = r
        self._head = h
        self._append_leaf(eb, sig)
        last = max(self._checkpoints, default=0)
        if self.size - last >= self.checkpoint_every:
            self._sign_checkpoint()
        return r

    def receipt(self, batch_no: int) -> Receipt | None:
        """The batch's receipt; a batch this process has not seen is looked for in what other
        writers of the log appended since it last read it."""
        r = self._by_batch.get(batch_no)
        if r is None and self.path.exists():
            if self.key is None:
                self._read_new()  # a reader never truncates: a torn last line may be an append in progress
            else:
                with self._appending():
                    pass
            r = self._by_batch.get(batch_no)
        return r

    def sync(self, force: bool = False) -> None:
        return None

    def verify(self, public_key: bytes | None = None) -> VerifyReport:
        return verify_log(
            self.path,
            public_key or (self.key.public_key if self.key else _read_pub(self.path)),
            origin=self.origin,
        )

    # -- the Merkle log ---------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self._entries)

    def roots(self) -> dict[int, bytes]:
        return {b: r.root for b, r in self._by_batch.items()}

    def tree_root(self, size: int | None = None) -> bytes:
        """Root of the log's Merkle tree over the first ``size`` entries (default: all)."""
        if size is None or size == self.size:
            return self._tree.root()
        if not 0 <= size <= self.size:
            raise LedgerError(f"tree size {size} outside the log's {self.size} entries")
        return merkle.root_from_leaf_hashes(self._leaves[:size])

    def _entry_blocks(self, index: int) -> int:
        return entry_decoder.decode(self._entries[index][0]).blocks

    def entry(self, index: int) -> tuple[bytes, bytes]:
        """Entry ``index``'s exact bytes and the ingest's signature over them."""
        return self._entries[index]

    def inclusion(self, index: int, size: int) -> list[bytes]:
        return merkle.inclusion_path(self._leaves[:size], index)

    def consistency(self, old_size: int, new_size: int) -> list[bytes]:
        return merkle.consistency_proof(self._leaves[:new_size], old_size)

    def checkpoint(self) -> str:
        """Sign a checkpoint for the current tree size (once per size) and append it; return the note."""
        if self.key is None:
            raise LedgerError("this ledger was opened read-only (no signing key)")
        with self._appending():
            return self._sign_checkpoint()

    def _sign_checkpoint(self) -> str:
        """``checkpoint`` with the append lock held."""
        assert self.key is not None
        if self.size in self._checkpoints:
            return self._checkpoints[self.size]
        cp = Checkpoint(self.origin, self.size, self.tree_root())
        note = sign_checkpoint(cp, self.origin, self.key)
        self._cp_pos += append_json_line(self.checkpoint_path, {"size": self.size, "note": note})
        self._cp_lines += 1
        self._checkpoints[self.size] = note
        if self.cosigning is not None:
            self.cosigning.submit(self.size, note)
        return note

    def keep_cosignature(self, size: int, witness: str, line: str) -> None:
        """Keep a witness's (verified) cosignature line on the checkpoint of ``size``."""
        append_json_line(self.cosignatures_path, {"size": size, "witness": witness, "line": line})

    def cosignatures(self) -> dict[int, list[str]]:
        """Tree size -> the distinct cosignature lines kept for that checkpoint, as received (read
        from the file each time: another process's witnesses may have answered)."""
        out: dict[int, list[str]] = {}
        try:
            raw = self.cosignatures_path.read_text()
        except FileNotFoundError:
            return out
        for text in raw.splitlines():
            try:
                obj = json.loads(text)
                size, line = int(obj["size"]), str(obj["line"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line while a writer appends
            if line not in out.setdefault(size, []):
                out[size].append(line)
        return out

    def checkpoints(self) -> dict[int, str]:
        """Tree size -> the signed checkpoint note, with the witnesses' cosignature lines kept for it."""
        cos = self.cosignatures()
        return {s: note + "".join(cos.get(s, ())) for s, note in self._checkpoints.items()}

    def covering_checkpoint(self, index: int) -> tuple[int, str] | None:
        """The signed checkpoint whose tree includes entry ``index`` cosigned by the most witnesses (the
        latest among those): the newest checkpoint may not be cosigned yet. (Cosignatures were
        verified when they were kept; a verifier checks them again.)"""
        cos = self.cosignatures()
        sizes = [s for s in self._checkpoints if s > index]
        if not sizes:
            return None
        s = max(sizes, key=lambda s: (len({line.split(" ")[1] for line in cos.get(s, ())}), s))
        return s, self._checkpoints[s] + "".join(cos.get(s, ()))


def checkpoints_path(ledger_path: Path) -> Path:
    return ledger_path.with_name(ledger_path.stem + ".checkpoints")


def cosignatures_path(ledger_path: Path) -> Path:
    return ledger_path.with_name(ledger_path.stem + ".cosignatures")


def append_json_line(path: Path, obj: dict[str, Any]) -> int:
    """Append one JSON line and fsync it (the ledger's files are append-only); its length in bytes."""
    data = json.dumps(obj).encode() + b"\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise LedgerError(f"cannot append to {path}: {exc}") from exc
    return len(data)


_READABLE = ("index", "batch_no", "root", "prev", "time_ns", "blocks")  # plain copies of the signed fields


def _read_entry_line(line: bytes) -> tuple[bytes, bytes, bytes, LedgerEntry]:
    """(entry bytes, entry hash, signature, entry) of one log line; ValueError names what is wrong."""
    try:
        obj = json.loads(line)
    except ValueError:
        raise ValueError("not a JSON line") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    out = []
    for k, n in (("entry", None), ("hash", 32), ("sig", 64)):
        v = obj.get(k)
        if not isinstance(v, str):
            raise ValueError(f"field {k!r} missing or not a string")
        try:
            b = bytes.fromhex(v)
        except ValueError:
            raise ValueError(f"field {k!r} is not hex") from None
        if n is not None and len(b) != n:
            raise ValueError(f"field {k!r} is {len(b)} bytes, not {n}")
        out.append(b)
    try:
        entry = entry_decoder.decode(out[0])
    except msgspec.DecodeError as exc:
        raise ValueError(f"entry does not decode ({exc})") from None
    return out[0], out[1], out[2], entry


def _read_pub(path: Path) -> bytes:
    cand = [path.with_name("ingest.key.pub"), path.with_suffix(".pub")]
    for c in cand:
        if c.exists():
            return bytes.fromhex(c.read_text().strip())
    raise LedgerError(f"no public key given and none found beside {path}")


def verify_log(path: Path, public_key: bytes, *, origin: str = DEFAULT_ORIGIN) -> VerifyReport:
    """Check every entry (decodes, index sequence, prev links, hash, signature, readable fields) and
    every checkpoint (signature, size within the log, root = the log's tree root at that size, sizes
    never shrinking)."""
    problems: list[str] = []
    prev = ZERO_HASH
    n = 0
    seen: set[int] = set()
    leaves: list[bytes] = []
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        lines = []
    for lineno, line in enumerate(lines, 1):
        try:
            eb, h, sig, entry = _read_entry_line(line)
            obj = json.loads(line)
        except ValueError as exc:
            problems.append(f"line {lineno}: {exc}")
            prev = b""
            n += 1
            leaves.append(b"")
            continue
        leaves.append(merkle.leaf_hash(eb))
        if entry.index != n:
            problems.append(f"line {lineno}: index {entry.index}, expected {n}")
        if entry.prev != prev:
            problems.append(f"line {lineno}: prev link broken (entry {entry.index})")
        if tagged_hash(TAG_LEDGER_ENTRY, eb) != h:
            problems.append(f"line {lineno}: entry hash mismatch (entry {entry.index})")
        if not verify(public_key, _signing_input(eb), sig):
            problems.append(f"line {lineno}: bad signature (entry {entry.index})")
        readable = {k: obj.get(k) for k in _READABLE}
        signed = {
            "index": entry.index,
            "batch_no": entry.batch_no,
            "root": entry.root.hex(),
            "prev": entry.prev.hex(),
            "time_ns": entry.time_ns,
            "blocks": entry.blocks,
        }
        if readable != signed:
            diff = ", ".join(k for k in _READABLE if readable[k] != signed[k])
            problems.append(f"line {lineno}: readable fields differ from the signed entry ({diff})")
        if entry.batch_no in seen:
            problems.append(f"line {lineno}: batch {entry.batch_no} anchored twice")
        seen.add(entry.batch_no)
        prev = h
        n += 1
    problems += _verify_checkpoints(checkpoints_path(path), leaves, public_key, origin)
    return VerifyReport(n, not problems, problems)


def _verify_checkpoints(cp_path: Path, leaves: list[bytes], public_key: bytes, origin: str) -> list[str]:
    """Each checkpoint's signature, origin and size, and its root against the log's tree at that size.
    The log's roots are computed in one pass over the leaves. Two checkpoints whose roots both match
    this one log are consistent by construction; consistency proofs matter for a checkpoint kept
    elsewhere (``verify_extension``)."""
    problems: list[str] = []
    try:
        lines = cp_path.read_bytes().splitlines()
    except FileNotFoundError:
        return problems
    cps: list[tuple[str, Checkpoint]] = []
    for lineno, line in enumerate(lines, 1):
        where = f"{cp_path.name} line {lineno}"
        try:
            cp = open_checkpoint(str(json.loads(line)["note"]), origin, public_key)
        except (ValueError, KeyError, TypeError, CheckpointError) as exc:
            problems.append(f"{where}: unreadable or unsigned checkpoint ({exc})")
            continue
        if cp.origin != origin:
            problems.append(f"{where}: origin {cp.origin!r}, expected {origin!r}")
        if cp.size > len(leaves):
            problems.append(f"{where}: checkpoint size {cp.size} > {len(leaves)} entries in the log")
            continue
        cps.append((where, cp))
    wanted = {cp.size for _, cp in cps}
    roots: dict[int, bytes] = {0: merkle.EMPTY_ROOT} if 0 in wanted else {}
    tree = merkle.MerkleFrontier()
    for leaf in leaves[: max(wanted, default=0)]:
        tree.append(leaf)
        if tree.size in wanted:
            roots[tree.size] = tree.root()
    last = 0
    for where, cp in cps:
        if roots[cp.size] != cp.root:
            problems.append(f"{where}: checkpoint root differs from the log's tree at size {cp.size}")
        elif cp.size < last:
            problems.append(f"{where}: tree size {cp.size} smaller than the previous {last}")
        else:
            last = cp.size
    return problems


def verify_extension(ledger: LocalLedger, old_note: str, public_key: bytes) -> tuple[Checkpoint, Checkpoint]:
    """Check that the ledger's latest checkpoint extends ``old_note`` (a checkpoint someone kept):
    both signatures and an RFC 9162 consistency proof. Returns (old, new); raises LedgerError."""
    try:
        old = open_checkpoint(old_note, ledger.origin, public_key)
    except CheckpointError as exc:
        raise LedgerError(f"the old checkpoint does not verify: {exc}") from exc
    cps = ledger.checkpoints()
    if not cps:
        raise LedgerError("the ledger has no checkpoint yet")
    size = max(cps)
    new = open_checkpoint(cps[size], ledger.origin, public_key)
    if old.size > new.size:
        raise LedgerError(f"the old checkpoint's size {old.size} exceeds the latest {new.size}: a fork")
    if old.size > 0:
        try:
            merkle.verify_consistency(
                old.size, new.size, old.root, new.root, ledger.consistency(old.size, new.size)
            )
        except ValueError as exc:
            raise LedgerError(
                f"checkpoint {new.size} is not an extension of checkpoint {old.size}: {exc}"
            ) from exc
    return old, new
