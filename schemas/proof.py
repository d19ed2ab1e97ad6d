"""Proof bundles: a row's path from its exact bytes up to a signed ledger checkpoint (docs/PROOFS.md).

Pure: no DuckDB, no network. ``verify_bundle`` checks everything a bundle carries offline; an
EVM anchor's presence on chain is checked separately (``telematics verify-proof --rpc``).

The chain of custody for one record::

    raw, salt ──leaf──► block records root (inclusion path) ══ header.root
    header bytes ──Ed25519(device key)──► signature; key statement (operator-signed validity)
    block hash ──leaf──► batch root (inclusion path)
    ledger entry [index, batch_no, batch root, prev, time, blocks] ──operator signature
    entry ──leaf──► log root (inclusion path) ══ signed checkpoint (origin, size, root)
    optionally: batch root or checkpoint root in an EVM transaction's calldata

Every field of a bundle is bound by one of these checks, so flipping any bit of a bundle makes
verification fail, and the failure names the part that broke. That is why a bundle carries no
decoded copy of a record: a float written in decimal can change in its last digit and still
parse to the same number; the values are what ``raw`` decodes to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from schemas import merkle
from schemas.block import BlockHeader, WireError, decode_header, decode_record, records_root
from schemas.checkpoint import CheckpointError, open_checkpoint
from schemas.completeness import BlockContents, ClaimFailed, ClaimResult, Completeness, check_claim
from schemas.crypto import (
    TAG_EVM_ANCHOR,
    TAG_KEY_STATEMENT,
    TAG_LEDGER_ENTRY,
    block_hash,
    key_id_for,
    verify,
    verify_block_signature,
)
from schemas.patterns import DecimalKey, Hex, Hex32, Hex64, HexId16, HexId32, whole
from schemas.records import RECORD_KINDS, TABLE_OF_KIND, SpoolDrop
from schemas.witness import Cosignature, Cosigner, WitnessError, verify_cosignatures

FORMAT = "vt-proof/1"
# vt-proof/2: vt-proof/1 plus completeness claims and whole block contents (docs/PROOFS.md §14).
FORMAT_V2 = "vt-proof/2"
# The table of a proven row: one of the record kinds' tables.
RecordTableName = Annotated[str, Meta(pattern=whole("|".join(k.table for k in RECORD_KINDS)))]


Uint = Annotated[int, Meta(ge=0, le=2**63 - 1)]  # bounded, so that re-encoding never overflows

_enc = msgspec.msgpack.Encoder()


class LedgerEntry(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """One local-log entry, MessagePack ``[index, batch_no, root, prev, time_ns, blocks]``: ``blocks`` is
    the number of leaves of the batch tree, so the tree size a proof uses is signed too."""

    index: Uint
    batch_no: Uint
    root: Annotated[bytes, Meta(min_length=32, max_length=32)]
    prev: Annotated[bytes, Meta(min_length=32, max_length=32)]
    time_ns: Uint
    blocks: Annotated[int, Meta(ge=1)]


entry_decoder = msgspec.msgpack.Decoder(LedgerEntry)


class KeyStatement(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The operator's signed statement of a device key and its validity, as of ``as_of``."""

    device_id: HexId32
    key_id: HexId16
    public_key: Hex32
    status: Literal["active", "retired", "revoked"]
    valid_from: Uint
    valid_until: Uint | None
    as_of: Uint
    signature: Hex64

    def signed_bytes(self) -> bytes:
        return key_statement_bytes(
            self.device_id,
            self.key_id,
            bytes.fromhex(self.public_key),
            self.status,
            self.valid_from,
            self.valid_until,
            self.as_of,
        )


def key_statement_bytes(
    device_id: str,
    key_id: str,
    public_key: bytes,
    status: str,
    valid_from: int,
    valid_until: int | None,
    as_of: int,
) -> bytes:
    """The operator signs ``"vt/v1/key-statement" || 0x00 || these bytes``."""
    return _enc.encode([device_id, key_id, public_key, status, valid_from, valid_until, as_of])


class EvmAnchor(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A transaction whose calldata carries a batch root (kind "batch", number = batch number) or
    a checkpoint root (kind "checkpoint", number = tree size); signed by the operator so that it
    is bound offline too. ``--rpc`` checks it against the chain itself."""

    chain_id: Uint
    tx_hash: Hex32
    block_number: Uint
    block_hash: Hex32
    kind: Literal["batch", "checkpoint"]
    number: Uint
    root: Hex32
    signature: Hex64

    def signed_bytes(self) -> bytes:
        return evm_anchor_bytes(
            self.chain_id,
            bytes.fromhex(self.tx_hash),
            self.block_number,
            bytes.fromhex(self.block_hash),
            self.kind,
            self.number,
            bytes.fromhex(self.root),
        )


def evm_anchor_bytes(
    chain_id: int, tx_hash: bytes, block_number: int, block_hash_: bytes, kind: str, number: int, root: bytes
) -> bytes:
    """The operator signs ``"vt/v1/evm-anchor" || 0x00 || these bytes``."""
    return _enc.encode([chain_id, tx_hash, block_number, block_hash_, kind, number, root])


class RecordProof(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    table: RecordTableName
    device_id: HexId32
    block_seq: Uint
    idx: Uint
    raw: Hex
    salt: Hex32
    block: Hex32
    path: list[Hex32]


class BlockProof(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    header: Hex
    signature: Hex64
    batch_no: Uint
    batch_index: Uint
    path: list[Hex32]


class BatchProof(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    root: Hex32
    block_count: Annotated[int, Meta(ge=1)]
    log_index: Uint
    entry: Hex
    entry_signature: Hex64
    checkpoint: DecimalKey
    log_path: list[Hex32]


class Figure(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A figure the operator computed from the bundle's rows (vt-proof/2, PROOFS.md §14.5): which
    algorithm, over which device and period, with which parameters, and what it gave. Not signed and
    not checked by ``verify_bundle``: ``verify-proof --recompute-…`` repeats it from the rows."""

    kind: Literal["driving-score", "battery-passport"]
    algorithm: str
    device_id: HexId32
    from_ns: Uint
    to_ns: Uint
    params: dict[str, Any]
    result: dict[str, Any]


class Bundle(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: Literal["vt-proof/1", "vt-proof/2"]
    operator_key: Hex32
    origin: str
    checkpoints: dict[DecimalKey, str]
    keys: dict[HexId16, KeyStatement]
    blocks: dict[Hex32, BlockProof]
    batches: dict[DecimalKey, BatchProof]
    evm: list[EvmAnchor]
    records: list[RecordProof]
    # vt-proof/2 only (and then both required): completeness claims, and every record of a block
    # by block hash.
    complete: list[Completeness] | msgspec.UnsetType = msgspec.UNSET
    contents: dict[Hex32, BlockContents] | msgspec.UnsetType = msgspec.UNSET
    figures: list[Figure] | msgspec.UnsetType = msgspec.UNSET


bundle_decoder = msgspec.json.Decoder(Bundle)


def encode_bundle(bundle: Bundle) -> bytes:
    return msgspec.json.format(msgspec.json.encode(bundle), indent=1) + b"\n"


@dataclass
class Report:
    records: int = 0
    problems: list[str] = field(default_factory=list)
    checkpoints: dict[int, bytes] = field(default_factory=dict)
    anchors: list[EvmAnchor] = field(default_factory=list)
    claims: list[ClaimResult] = field(default_factory=list)
    cosignatures: dict[int, list[Cosignature]] = field(default_factory=dict)  # by trusted witnesses

    @property
    def ok(self) -> bool:
        return not self.problems and self.records > 0


class _Fail(Exception):
    pass


def _hx(s: str) -> bytes:
    return bytes.fromhex(s)


def verify_bundle(
    data: bytes,
    *,
    operator_key: bytes | None = None,
    witnesses: Sequence[Cosigner] = (),
    min_witnesses: int = 0,
) -> Report:
    """Verify a bundle offline. ``operator_key`` pins the ingest operator's public key; without it
    the key carried by the bundle is used (and the caller should say so). ``min_witnesses``: every
    checkpoint must carry valid cosignatures by at least that many of ``witnesses`` (PROOFS.md 8.4)."""
    rep = Report()
    try:
        b = bundle_decoder.decode(data)
    except (msgspec.DecodeError, ValueError) as exc:  # ValueError: includes invalid UTF-8
        rep.problems.append(f"bundle: not a {FORMAT} or {FORMAT_V2} bundle ({exc})")
        return rep
    v2 = b.format == FORMAT_V2
    v2_parts = ("complete", "contents", "figures")
    unset = [n for n in v2_parts if getattr(b, n) is msgspec.UNSET]
    if v2 and unset:
        rep.problems.append(f"bundle: a {FORMAT_V2} bundle needs {' and '.join(repr(n) for n in unset)}")
        return rep
    if not v2 and len(unset) < len(v2_parts):
        rep.problems.append(
            f"bundle: {FORMAT} has no 'complete', 'contents' or 'figures' (those are {FORMAT_V2})"
        )
        return rep
    op = _hx(b.operator_key)
    if operator_key is not None and op != operator_key:
        rep.problems.append("operator_key: not the pinned operator key")
        return rep

    def check(where: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (_Fail, ValueError, WireError, CheckpointError, ClaimFailed) as exc:
            rep.problems.append(f"{where}: {exc}")
            return None

    cps: dict[str, bytes] = {}
    for size, note in b.checkpoints.items():
        root = check(f"checkpoints[{size}]", _checkpoint, b, op, size, note)
        if root is not None and (witnesses or min_witnesses):
            cos = check(f"checkpoints[{size}]", _cosigned, note, witnesses, min_witnesses)
            rep.cosignatures[int(size)] = cos or []
            root = root if cos is not None else None
        if root is not None:
            cps[size] = root
            rep.checkpoints[int(size)] = root
    keys: dict[str, KeyStatement] = {}
    for kid, ks in b.keys.items():
        if check(f"keys[{kid}]", _key, op, kid, ks) is not None:
            keys[kid] = ks
    batches: dict[str, bytes] = {}
    for no, bp in b.batches.items():
        root = check(f"batches[{no}]", _batch, op, no, bp, cps)
        if root is not None:
            batches[no] = root
    headers: dict[str, BlockHeader] = {}
    for bh, blk in b.blocks.items():
        hdr = check(f"blocks[{bh[:16]}…]", _block, bh, blk, keys, b.batches, batches)
        if hdr is not None:
            headers[bh] = hdr
    for i, a in enumerate(b.evm):
        if check(f"evm[{i}]", _evm, op, a, batches, cps) is not None:
            rep.anchors.append(a)
    drops: list[tuple[str, SpoolDrop]] = []  # (device, drop) of every proven SpoolDrop record
    for i, r in enumerate(b.records):
        rec = check(f"records[{i}]", _record, r, headers)
        if rec is not None:
            rep.records += 1
            if isinstance(rec, SpoolDrop):
                drops.append((r.device_id, rec))
    complete_blocks: dict[str, int] = {}
    for bh, c in (b.contents or {}).items():
        recs = check(f"contents[{bh[:16]}…]", _contents, bh, c, headers)
        if recs is not None:
            complete_blocks[bh] = len(recs)
            rep.records += len(recs)
            drops += [(headers[bh].device_id, r) for r in recs if isinstance(r, SpoolDrop)]
    for i, claim in enumerate(b.complete or []):
        mine = [d for dev, d in drops if dev == claim.device_id]
        res = check(f"complete[{i}]", check_claim, claim, headers, complete_blocks, mine)
        if res is not None:
            rep.claims.append(res)
    if not b.records and not b.contents:
        rep.problems.append("records: the bundle proves no record")
    return rep


def _checkpoint(b: Bundle, op: bytes, size: str, note: str) -> bytes:
    cp = open_checkpoint(note, b.origin, op)
    if cp.origin != b.origin:
        raise _Fail(f"origin {cp.origin!r} is not the bundle's {b.origin!r}")
    if str(cp.size) != size:
        raise _Fail(f"checkpoint is for tree size {cp.size}, listed under {size}")
    return cp.root


def _cosigned(note: str, witnesses: Sequence[Cosigner], k: int) -> list[Cosignature]:
    try:
        got = verify_cosignatures(note, witnesses)
    except WitnessError as exc:
        raise _Fail(str(exc)) from None
    if len(got) < k:
        names = ", ".join(c.name for c in got) or "none"
        raise _Fail(f"cosigned by {len(got)} of the trusted witnesses ({names}); {k} required")
    return got


def _key(op: bytes, kid: str, ks: KeyStatement) -> KeyStatement:
    if ks.key_id != kid:
        raise _Fail(f"statement is for key {ks.key_id}")
    if key_id_for(_hx(ks.public_key)) != kid:
        raise _Fail("public key does not hash to this key id")
    if ks.valid_until is not None and ks.valid_until < ks.valid_from:
        raise _Fail("inverted validity interval")
    msg = TAG_KEY_STATEMENT + b"\x00" + ks.signed_bytes()
    if not verify(op, msg, _hx(ks.signature)):
        raise _Fail("key statement signature does not verify with the operator key")
    return ks


def _batch(op: bytes, no: str, bp: BatchProof, cps: dict[str, bytes]) -> bytes:
    eb = _hx(bp.entry)
    try:
        e = entry_decoder.decode(eb)
    except msgspec.DecodeError as exc:
        raise _Fail(f"ledger entry does not decode ({exc})") from None
    if str(e.batch_no) != no:
        raise _Fail(f"ledger entry is for batch {e.batch_no}")
    if e.index != bp.log_index:
        raise _Fail(f"ledger entry has index {e.index}, the proof says {bp.log_index}")
    if e.root.hex() != bp.root:
        raise _Fail("ledger entry root differs from the batch root")
    if e.blocks != bp.block_count:
        raise _Fail(f"ledger entry says {e.blocks} blocks, the proof says {bp.block_count}")
    if not verify(op, TAG_LEDGER_ENTRY + b"\x00" + eb, _hx(bp.entry_signature)):
        raise _Fail("ledger entry signature does not verify with the operator key")
    if bp.checkpoint not in cps:
        raise _Fail(f"checkpoint {bp.checkpoint} is missing or invalid")
    got = merkle.root_from_inclusion_path(
        merkle.leaf_hash(eb), bp.log_index, int(bp.checkpoint), [_hx(p) for p in bp.log_path]
    )
    if got != cps[bp.checkpoint]:
        raise _Fail(f"ledger entry is not in the log at checkpoint {bp.checkpoint} (inclusion path fails)")
    return _hx(bp.root)


def _block(
    bh: str,
    blk: BlockProof,
    keys: dict[str, KeyStatement],
    all_batches: dict[str, BatchProof],
    batches: dict[str, bytes],
) -> BlockHeader:
    hb = _hx(blk.header)
    if block_hash(hb).hex() != bh:
        raise _Fail("header bytes do not hash to this block hash")
    hdr = decode_header(hb)
    ks = keys.get(hdr.key_id)
    if ks is None:
        raise _Fail(f"no valid key statement for key {hdr.key_id}")
    if not verify_block_signature(_hx(ks.public_key), hb, _hx(blk.signature)):
        raise _Fail(f"block signature does not verify with key {hdr.key_id}")
    if hdr.device_id != ks.device_id:
        raise _Fail(f"signed by a key of device {ks.device_id}, header says {hdr.device_id}")
    if hdr.t_first < ks.valid_from or (ks.valid_until is not None and hdr.t_last >= ks.valid_until):
        raise _Fail(f"block time [{hdr.t_first}, {hdr.t_last}] is outside key {hdr.key_id}'s validity")
    no = str(blk.batch_no)
    if no not in batches:
        raise _Fail(f"batch {no} is missing or invalid")
    got = merkle.root_from_inclusion_path(
        merkle.leaf_hash(block_hash(hb)),
        blk.batch_index,
        all_batches[no].block_count,
        [_hx(p) for p in blk.path],
    )
    if got != batches[no]:
        raise _Fail(f"block is not in batch {no} (inclusion path fails)")
    return hdr


def _evm(op: bytes, a: EvmAnchor, batches: dict[str, bytes], cps: dict[str, bytes]) -> EvmAnchor:
    msg = TAG_EVM_ANCHOR + b"\x00" + a.signed_bytes()
    if not verify(op, msg, _hx(a.signature)):
        raise _Fail("anchor record signature does not verify with the operator key")
    table = batches if a.kind == "batch" else cps
    if table.get(str(a.number)) != _hx(a.root):
        raise _Fail(f"anchored root is not the bundle's {a.kind} {a.number} root")
    return a


def _decode(raw: bytes) -> Any:
    try:
        return decode_record(raw)
    except (msgspec.DecodeError, WireError, ValueError) as exc:  # ValueError: invalid UTF-8 in a string
        raise _Fail(f"raw record does not decode ({exc})") from None


def _contents(bh: str, c: BlockContents, headers: dict[str, BlockHeader]) -> list[Any]:
    hdr = headers.get(bh)
    if hdr is None:
        raise _Fail("its block is missing or invalid")
    if len(c.records) != hdr.count:
        raise _Fail(f"{len(c.records)} records, the block's header says {hdr.count}")
    raws = [_hx(r) for r in c.records]
    recs = []
    for i, raw in enumerate(raws):
        try:
            rec = _decode(raw)
        except _Fail as exc:
            raise _Fail(f"record {i}: {exc}") from None
        if not hdr.t_first <= rec.ts_ns <= hdr.t_last:
            raise _Fail(f"record {i}: time outside the block's [t_first, t_last]")
        recs.append(rec)
    if records_root(_hx(c.seed), raws) != hdr.root:
        raise _Fail(
            "the records and seed do not rebuild the block's records root (a record is missing or changed)"
        )
    return recs


def _record(r: RecordProof, headers: dict[str, BlockHeader]) -> Any:
    raw = _hx(r.raw)
    rec = _decode(raw)
    want = TABLE_OF_KIND[type(rec)]
    if r.table != want:
        raise _Fail(f"a {type(rec).__name__} does not belong in {r.table}")
    hdr = headers.get(r.block)
    if hdr is None:
        raise _Fail(f"block {r.block[:16]}… is missing or invalid")
    if (hdr.device_id, hdr.seq) != (r.device_id, r.block_seq):
        raise _Fail(
            f"block is device {hdr.device_id} seq {hdr.seq}, the row says {r.device_id} seq {r.block_seq}"
        )
    if not hdr.t_first <= rec.ts_ns <= hdr.t_last:
        raise _Fail("record time outside the block's [t_first, t_last]")
    leaf = merkle.leaf_hash(_hx(r.salt) + raw)
    got = merkle.root_from_inclusion_path(leaf, r.idx, hdr.count, [_hx(p) for p in r.path])
    if got != hdr.root:
        raise _Fail("record is not in its block (leaf, salt or inclusion path fails)")
    return rec


def bundle_figures(data: bytes) -> list[Figure]:
    """The figures a bundle carries (none for vt-proof/1); on a bundle that decodes."""
    return list(bundle_decoder.decode(data).figures or [])


def proven_records(data: bytes) -> list[tuple[str, Any]]:
    """``(device_id, record)`` of every record the bundle proves, in ``records`` then ``contents``
    order. Call it on a bundle ``verify_bundle`` accepted."""
    return bundle_records(bundle_decoder.decode(data))


def bundle_records(b: Bundle) -> list[tuple[str, Any]]:
    """``proven_records`` of a bundle already decoded (or being built)."""
    out = [(r.device_id, decode_record(_hx(r.raw))) for r in b.records]
    for bh, c in (b.contents or {}).items():
        device = decode_header(_hx(b.blocks[bh].header)).device_id
        out += [(device, decode_record(_hx(raw))) for raw in c.records]
    return out


def proven_rows(data: bytes) -> list[dict[str, Any]]:
    """What a bundle proves, one dict per record: table, device, block sequence number, position,
    the record's decoded fields (``ts_ns`` is the vehicle clock), and the chain it is proven through:
    the block's batch, the batch's ledger entry and the signed checkpoint covering it. Call it on a
    bundle ``verify_bundle`` accepted; it checks nothing itself."""
    b = bundle_decoder.decode(data)
    out = []
    refs = [(r.block, r.table, r.device_id, r.block_seq, r.idx, r.raw) for r in b.records]
    for bh, c in (b.contents or {}).items():
        hdr = decode_header(_hx(b.blocks[bh].header))
        for i, raw in enumerate(c.records):
            kind = TABLE_OF_KIND[type(decode_record(_hx(raw)))]
            refs.append((bh, kind, hdr.device_id, hdr.seq, i, raw))
    for bh, table, device_id, seq, idx, raw in refs:
        blk = b.blocks[bh]
        batch = b.batches[str(blk.batch_no)]
        rec = msgspec.structs.asdict(decode_record(_hx(raw)))
        out.append(
            {
                "table": table,
                "device_id": device_id,
                "block_seq": seq,
                "idx": idx,
                "values": rec,
                "batch_no": blk.batch_no,
                "ledger_entry": batch.log_index,
                "checkpoint_size": int(batch.checkpoint),
                # the EVM transactions carrying this batch's root, or a checkpoint that covers it
                "evm_tx": [
                    a.tx_hash
                    for a in b.evm
                    if (a.kind == "batch" and a.number == blk.batch_no)
                    or (a.kind == "checkpoint" and a.number > batch.log_index)
                ],
            }
        )
    return out
