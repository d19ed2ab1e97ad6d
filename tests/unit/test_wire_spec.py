"""schemas/WIRE.md against the code.

* the test vector (tests/vectors/block_v1.json) is what our code produces;
* every hex value, annotated dump, record table and field table in WIRE.md matches the code;
* an independent implementation written from WIRE.md alone (hand-written MessagePack, hashlib,
  `cryptography` Ed25519; nothing from schemas/, edge_agent/ or ingest/) reproduces the vector
  byte for byte and builds blocks our verifier and consumer accept;
* single-bit corruptions are rejected with the documented reason;
* property: random records survive build -> wire -> verify -> decode unchanged;
* the committed JSON Schema files equal a fresh export.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.sources.vehicle import VehicleModel
from schemas import crypto
from schemas.block import (
    BlockHeader,
    Envelope,
    Reason,
    WireError,
    build_block,
    decode_envelope,
    decode_record,
    encode_record,
    open_envelope,
)
from schemas.export_jsonschema import TYPES, export, main, render
from schemas.records import RECORD_KINDS, BatterySample, DrivingSample, Record
from schemas.session import SessionError, SessionEvent, SignedSession, open_session, verify_session

ROOT = Path(__file__).resolve().parents[2]
WIRE_MD = ROOT / "schemas" / "WIRE.md"
VECTOR_JSON = ROOT / "tests" / "vectors" / "block_v1.json"
MAKE_VECTOR = ROOT / "tests" / "vectors" / "make_block_v1.py"
JSONSCHEMA_DIR = ROOT / "schemas" / "jsonschema"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_block_v1", MAKE_VECTOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()
VECTOR: dict[str, Any] = json.loads(VECTOR_JSON.read_text())
DOC = WIRE_MD.read_text()


def vector_value(name: str) -> Any:
    """``name`` or ``name[i]``, looked up in the vector's outputs, then its inputs."""
    m = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", name)
    assert m, name
    key, idx = m.group(1), m.group(2)
    section = VECTOR["outputs"] if key in VECTOR["outputs"] else VECTOR["inputs"]
    value = section[key]
    return value[int(idx)] if idx is not None else value


# =============================================================================================
# (a) the vector file is what our code produces
# =============================================================================================


def test_vector_file_is_regenerated_exactly() -> None:
    fresh = GEN.build_vector()
    assert fresh == VECTOR
    assert GEN.render(fresh) == VECTOR_JSON.read_text()


def test_vector_is_internally_consistent() -> None:
    out = VECTOR["outputs"]
    env = decode_envelope(bytes.fromhex(out["envelope"]))
    opened = open_envelope(env, bytes.fromhex(out["public_key"]))
    assert opened.hash.hex() == out["block_hash"]
    assert [x.hex() for x in opened.leaf_hashes] == out["leaf_hashes"]
    assert env.header.hex() == out["header_bytes"]
    assert [r.hex() for r in env.records] == out["record_bytes"]
    for raw, rec in zip(env.records, GEN.RECORDS, strict=True):
        assert decode_record(raw) == rec


# =============================================================================================
# (b) WIRE.md quotes the vector
# =============================================================================================

_BLOCK = r"```[a-z]*\n(?P<body>.*?)\n```"
VECTOR_BLOCKS = re.compile(r"<!-- vector: (?P<name>[\w\[\]]+) -->\n" + _BLOCK, re.S)
ANNOTATED_BLOCKS = re.compile(r"<!-- annotated: (?P<name>[\w\[\]]+) -->\n" + _BLOCK, re.S)
RECORD_TABLES = re.compile(r"<!-- vector-record: (?P<idx>\d+) -->\n(?P<table>(?:\|.*\|\n)+)")

REQUIRED_IN_DOC = {
    "ed25519_secret_key",
    "public_key",
    "key_id",
    "device_id",
    "salt_seed",
    "record_bytes[0]",
    "record_bytes[1]",
    "salts[0]",
    "salts[1]",
    "leaf_hashes[0]",
    "leaf_hashes[1]",
    "root",
    "header_bytes",
    "signing_input",
    "signature",
    "block_hash",
    "envelope",
    "batch_root",
    "session_signing_input",
    "session_signature",
    "session_message",
}


def test_every_hex_value_in_wire_md_equals_the_vector() -> None:
    found = {}
    for m in VECTOR_BLOCKS.finditer(DOC):
        lines = m.group("body").split("\n")
        assert all(len(line) <= 64 and re.fullmatch(r"[0-9a-f]+", line) for line in lines), m.group("name")
        found[m.group("name")] = "".join(lines)
    assert set(found) >= REQUIRED_IN_DOC, REQUIRED_IN_DOC - set(found)
    for name, value in found.items():
        assert value == vector_value(name), name


def test_annotated_dumps_in_wire_md_equal_the_vector() -> None:
    found = set()
    for m in ANNOTATED_BLOCKS.finditer(DOC):
        name = m.group("name")
        hexes = []
        for line in m.group("body").split("\n"):
            h = line.split(";", 1)[0].strip()
            assert re.fullmatch(r"[0-9a-f]+", h) and len(h) <= 64, (name, line)
            hexes.append(h)
        assert "".join(hexes) == vector_value(name), name
        found.add(name)
    assert {"header_bytes", "record_bytes[0]", "record_bytes[1]", "envelope", "session_body"} <= found


def _doc_value(text: str) -> Any:
    text = text.strip()
    if text.startswith("nil"):
        return None
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return float(text)


def test_record_tables_in_wire_md_equal_the_vector_inputs() -> None:
    tables = {int(m.group("idx")): m.group("table") for m in RECORD_TABLES.finditer(DOC)}
    assert set(tables) == {0, 1}
    for idx, table in tables.items():
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.strip().split("\n")[2:]]
        expected = dict(vector_value(f"records[{idx}]"))
        expected.pop("kind")
        got = {field: _doc_value(value) for field, value in rows}
        assert list(got) == list(expected)
        for field, value in expected.items():
            assert got[field] == value and type(got[field]) is type(value), field


def test_rejection_reasons_in_wire_md_are_exactly_the_reason_enum() -> None:
    section = DOC.split("Rejection reasons (", 1)[1].split("\n\n", 2)[1]
    names = re.findall(r"^\| `(\w+)` \|", section, re.M)
    assert sorted(names) == sorted(r.value for r in Reason)
    # Every reason named in the check-order table is a real one.
    checks = DOC.split("## 13.", 1)[1].split("Chain rules", 1)[0]
    for name in re.findall(r"`([a-z_]+)`\s*(?:/|\|\s*$)", checks, re.M):
        assert name in {r.value for r in Reason}, name


def test_domain_separation_table_lists_every_tag() -> None:
    section = DOC.split("## 15. Domain separation", 1)[1].split("\n## ", 1)[0]
    doc_tags = set(re.findall(r"^\| `(vt/v\d+/[a-z-]+)` \|", section, re.M))
    code_tags = {v.decode() for k, v in vars(crypto).items() if k.startswith("TAG_")}
    assert doc_tags == code_tags


# =============================================================================================
# (c) an independent implementation, from WIRE.md only
# =============================================================================================
# The record layouts are read from WIRE.md's own tables (sections 5.1 and 5.2), as a third
# party would; everything else below follows the document's text.


@dataclass(frozen=True)
class DocField:
    name: str
    type: str  # "str", "integer", "float", "float or nil", "bool"
    lo: float | None
    hi: float | None


def _doc_number(text: str) -> float:
    text = text.replace("−", "-").strip()
    m = re.fullmatch(r"(-?)2\^(\d+)(?:-(\d+))?", text)
    if m:
        v = (1 << int(m.group(2))) - int(m.group(3) or 0)
        return -v if m.group(1) else v
    return float(text) if re.search(r"[.e]", text) else int(text)


def _first_table(section: str) -> str:
    return next(p for p in section.split("\n\n") if p.startswith("| #"))


def doc_layout(heading: str) -> tuple[str, list[DocField]]:
    """Kind tag and fields (after the tag) of a record table in WIRE.md."""
    section = DOC.split(heading, 1)[1]
    tag = re.search(r'tag `"(\w)"`', section.split("\n", 1)[0])
    assert tag
    table = _first_table(section)
    fields = []
    for line in table.split("\n")[2:]:
        _, name, typ, rng, _ = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip("|"))]
        lo = hi = None
        if "…" in rng:
            a, b = rng.split("…")
            lo, hi = _doc_number(a), _doc_number(b)
        fields.append(DocField(name, typ, lo, hi))
    assert fields[0].name == "kind"
    return tag.group(1), fields[1:]


TP_DRIVING = doc_layout("### 5.1 `DrivingSample`")
TP_BATTERY = doc_layout("### 5.2 `BatterySample`")
TP_TRIGGER = doc_layout("### 5.3 `TriggerEvent`")
TP_DROP = doc_layout("### 5.4 `SpoolDrop`")


def mp(obj: object) -> bytes:
    """A minimal MessagePack encoder: the canonical (shortest) forms of WIRE.md section 4."""
    if obj is None:
        return b"\xc0"
    if obj is False:
        return b"\xc2"
    if obj is True:
        return b"\xc3"
    if isinstance(obj, int):
        if 0 <= obj <= 0x7F:
            return bytes([obj])
        if obj > 0:
            for tag, fmt, limit in ((0xCC, ">B", 8), (0xCD, ">H", 16), (0xCE, ">I", 32), (0xCF, ">Q", 64)):
                if obj < 1 << limit:
                    return bytes([tag]) + struct.pack(fmt, obj)
            raise OverflowError(obj)
        if obj >= -32:
            return struct.pack(">b", obj)
        for tag, fmt, limit in ((0xD0, ">b", 7), (0xD1, ">h", 15), (0xD2, ">i", 31), (0xD3, ">q", 63)):
            if obj >= -(1 << limit):
                return bytes([tag]) + struct.pack(fmt, obj)
        raise OverflowError(obj)
    if isinstance(obj, float):
        return b"\xcb" + struct.pack(">d", obj)
    if isinstance(obj, str):
        data = obj.encode("utf-8")
        if len(data) < 32:
            return bytes([0xA0 | len(data)]) + data
        return _sized(len(data), 0xD9, 0xDA, 0xDB) + data
    if isinstance(obj, bytes):
        return _sized(len(obj), 0xC4, 0xC5, 0xC6) + obj
    if isinstance(obj, list):
        n = len(obj)
        if n < 16:
            head = bytes([0x90 | n])
        elif n < 1 << 16:
            head = b"\xdc" + struct.pack(">H", n)
        else:
            head = b"\xdd" + struct.pack(">I", n)
        return head + b"".join(mp(x) for x in obj)
    if isinstance(obj, dict):  # only a session message's config (section 12.4)
        n = len(obj)
        head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
        return head + b"".join(mp(k) + mp(v) for k, v in obj.items())
    raise TypeError(type(obj))


def _sized(n: int, t8: int, t16: int, t32: int) -> bytes:
    if n < 1 << 8:
        return bytes([t8, n])
    if n < 1 << 16:
        return bytes([t16]) + struct.pack(">H", n)
    return bytes([t32]) + struct.pack(">I", n)


def tp_record(values: dict[str, Any]) -> bytes:
    """A record from field values (by name), per its WIRE.md table."""
    tag, fields = TP_DRIVING if values["kind"] == "d" else TP_BATTERY
    out: list[object] = [tag]
    for f in fields:
        v = values[f.name]
        if f.type == "float" or (f.type == "float or nil" and v is not None):
            v = float(v)
        elif f.type == "integer":
            v = int(v)
        elif f.type == "bool":
            v = bool(v)
        out.append(v)
    return mp(out)


def tp_tagged(tag: str, data: bytes) -> bytes:
    return hashlib.sha256(tag.encode("ascii") + b"\x00" + data).digest()


def tp_public_key(secret: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()


def tp_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash, recursive, split at the largest power of two < n."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + tp_mth(leaves[:k]) + tp_mth(leaves[k:])).digest()


def tp_block(
    secret: bytes,
    *,
    boot: int,
    seq: int,
    prev: bytes,
    seed: bytes,
    records: list[bytes],
    t_first: int,
    t_last: int,
) -> dict[str, Any]:
    pub = tp_public_key(secret)
    device_id = tp_tagged("vt/v1/device-id", pub)[:16].hex()
    key_id = tp_tagged("vt/v1/key-id", pub)[:8].hex()
    salts = [tp_tagged("vt/v1/leaf-salt", seed + struct.pack(">I", i)) for i in range(len(records))]
    leaves = [hashlib.sha256(b"\x00" + s + r).digest() for s, r in zip(salts, records, strict=True)]
    root = tp_mth(leaves)
    header = mp([1, device_id, key_id, boot, seq, prev, len(records), t_first, t_last, root])
    sig = Ed25519PrivateKey.from_private_bytes(secret).sign(b"vt/v1/block-sig\x00" + header)
    envelope = mp([1, key_id, header, sig, seed, list(records)])
    block_hash = tp_tagged("vt/v1/block-hash", header)
    return {
        "public_key": pub,
        "device_id": device_id,
        "key_id": key_id,
        "salts": salts,
        "leaf_hashes": leaves,
        "root": root,
        "header_bytes": header,
        "signature": sig,
        "block_hash": block_hash,
        "envelope": envelope,
        "batch_root": tp_mth([hashlib.sha256(b"\x00" + block_hash).digest()]),
    }


def test_doc_field_tables_match_the_msgspec_types() -> None:
    layouts = {"d": TP_DRIVING, "b": TP_BATTERY, "t": TP_TRIGGER, "x": TP_DROP}
    assert sorted(layouts) == sorted(k.tag for k in RECORD_KINDS)  # every kind is specified
    for kind in RECORD_KINDS:
        (tag, fields), typ = layouts[kind.tag], kind.type
        info = mi.type_info(typ)
        assert isinstance(info, mi.StructType) and info.tag == tag
        assert [f.name for f in fields] == [f.name for f in info.fields]
        for doc, real in zip(fields, info.fields, strict=True):
            t: Any = real.type
            if isinstance(t, mi.Metadata):
                t = t.type
            nullable = isinstance(t, mi.UnionType)
            if nullable:
                assert doc.type == "float or nil", doc
                t = next(x for x in t.types if not isinstance(x, mi.NoneType))
            type_names: dict[type, str] = {
                mi.FloatType: "float",
                mi.IntType: "integer",
                mi.BoolType: "bool",
                mi.StrType: "str",
                mi.BytesType: "bin",
            }
            expected_type = type_names[type(t)]
            assert doc.type == (expected_type + " or nil" if nullable else expected_type), doc
            if isinstance(t, mi.FloatType) and t.gt is not None:  # "above 0, at most 1000"
                assert doc.lo is None and f"above {t.gt:g}, at most {t.le:g}" in DOC, doc
            elif isinstance(t, mi.FloatType | mi.IntType) and (t.ge, t.le) != (None, None):
                assert (doc.lo, doc.hi) == (t.ge, t.le), doc
            elif isinstance(t, mi.StrType | mi.BytesType):
                length = "exactly {0} bytes" if t.min_length == t.max_length else "{0} to {1} characters"
                if t.max_length is not None:
                    assert length.format(t.min_length or 0, t.max_length) in DOC, doc
            else:
                assert doc.lo is None and doc.hi is None, doc


def test_doc_header_and_envelope_tables_match_the_msgspec_types() -> None:
    session = DOC.split("### 12.4 Session messages", 1)[1]
    tables = [
        (_first_table(DOC.split("## 8. Block header", 1)[1]), BlockHeader),
        (_first_table(DOC.split("## 10. Envelope", 1)[1]), Envelope),
        (_first_table(session), SignedSession),
        (_first_table(session.split("`session_body` is the MessagePack", 1)[1]), SessionEvent),
    ]
    for table, typ in tables:
        names = [line.strip("|").split("|")[1].strip() for line in table.split("\n")[2:]]
        assert names == list(typ.__struct_fields__), typ


def tp_session(secret: bytes, inputs: dict[str, Any]) -> dict[str, bytes]:
    """A session message from WIRE.md section 12.4: body array of 10, then the signed envelope."""
    pub = tp_public_key(secret)
    device_id = tp_tagged("vt/v1/device-id", pub)[:16].hex()
    key_id = tp_tagged("vt/v1/key-id", pub)[:8].hex()
    i = inputs
    body = mp(
        [
            i["event"],
            device_id,
            key_id,
            i["boot"],
            i["session"],
            i["ts_ns"],
            i["next_seq"],
            i["agent_version"],
            i["schema_version"],
            i["config"],
        ]
    )
    signing_input = b"vt/v1/session\x00" + body
    sig = Ed25519PrivateKey.from_private_bytes(secret).sign(signing_input)
    return {
        "session_body": body,
        "session_signing_input": signing_input,
        "session_signature": sig,
        "session_message": mp([1, key_id, body, sig]),
    }


def test_third_party_session_message_is_the_vector_and_is_accepted() -> None:
    secret = bytes.fromhex(VECTOR["inputs"]["ed25519_secret_key"])
    got = tp_session(secret, VECTOR["inputs"]["session"])
    for name, value in got.items():
        assert value.hex() == VECTOR["outputs"][name], name
    pub = tp_public_key(secret)
    ev = verify_session(open_session(got["session_message"]), pub)
    assert (ev.event, ev.device_id, ev.config) == (
        "birth",
        VECTOR["outputs"]["device_id"],
        VECTOR["inputs"]["session"]["config"],
    )
    # config entries in another order, and a trailing unknown body field: still accepted (12.4)
    inputs = dict(VECTOR["inputs"]["session"], config={"privacy": True, "block_max_records": 100})
    again = tp_session(secret, inputs)
    body = again["session_body"]
    longer = bytes([body[0] + 1]) + body[1:] + mp("future")
    sig = Ed25519PrivateKey.from_private_bytes(secret).sign(b"vt/v1/session\x00" + longer)
    ev = verify_session(open_session(mp([1, ev.key_id, longer, sig])), pub)
    assert ev.config == {"privacy": True, "block_max_records": 100}
    # an id followed by a newline is not the id; a map where an id is due is no id either
    for bad in ({"event": "birth\n"}, {"agent_version": {"x": 1}}):
        b2 = tp_session(secret, dict(VECTOR["inputs"]["session"], **bad))
        with pytest.raises(SessionError) as exc:
            verify_session(open_session(b2["session_message"]), pub)
        assert exc.value.reason == "decode_error"


def test_third_party_reproduces_the_vector_byte_for_byte() -> None:
    inp = VECTOR["inputs"]
    records = [tp_record(r) for r in inp["records"]]
    tss = [r["ts_ns"] for r in inp["records"]]
    got = tp_block(
        bytes.fromhex(inp["ed25519_secret_key"]),
        boot=inp["boot"],
        seq=inp["seq"],
        prev=bytes.fromhex(inp["prev"]),
        seed=bytes.fromhex(inp["salt_seed"]),
        records=records,
        t_first=min(tss),
        t_last=max(tss),
    )
    out = VECTOR["outputs"]
    assert [r.hex() for r in records] == out["record_bytes"]
    for name, value in got.items():
        expected = out[name]
        if isinstance(value, list):
            assert [v.hex() for v in value] == expected, name
        else:
            assert (value if isinstance(value, str) else value.hex()) == expected, name
    assert got["envelope"].hex() == out["envelope"]


TS0 = 1_763_000_000_000_000_000
TP_DRIVE_VALUES: dict[str, Any] = {
    "kind": "d",
    "ts_ns": TS0,
    "speed_mps": 0.0,
    "accel_long_mps2": -1.25,
    "accel_lat_mps2": 0.0,
    "accel_vert_mps2": 9.5,
    "yaw_rate_radps": -0.2,
    "latitude_deg": None,
    "longitude_deg": None,
    "altitude_m": None,
    "heading_deg": None,
    "h_accuracy_m": None,
    "accel_pedal_pct": 0,  # an integer in a float field: encoded as 0.0 by the writer
    "brake_pedal_pct": 100.0,
    "steering_angle_rad": 12.5,
    "gear": -1,
    "odometer_m": 1e10,
}
TP_BATTERY_VALUES: dict[str, Any] = {
    "kind": "b",
    "ts_ns": TS0 + 500_000_000,
    "soc_pct": 100.0,
    "soh_pct": 0.0,
    "pack_voltage_v": 812.25,
    "pack_current_a": 199.5,
    "power_w": 162_043.875,
    "temp_min_c": -40.0,
    "temp_max_c": 60.5,
    "temp_avg_c": 21.0,
    "cell_voltage_min_v": 3.3,
    "cell_voltage_max_v": 4.2,
    "charged_energy_j": 1e15,
    "consumed_energy_j": 0.0,
    "charged_throughput_c": 3.5e6,
    "consumed_throughput_c": 0.0,
    "is_charging": True,
    "charge_power_w": 150_000.0,
}


def _expected_record(values: dict[str, Any]) -> Record:
    typ: type[Record] = DrivingSample if values["kind"] == "d" else BatterySample
    fields = {k: v for k, v in values.items() if k != "kind"}
    return typ(**fields)


def _tp_fresh_block(secret: bytes, seq: int = 0, prev: bytes = bytes(32)) -> dict[str, Any]:
    values = [TP_DRIVE_VALUES, TP_BATTERY_VALUES]
    return tp_block(
        secret,
        boot=7,
        seq=seq,
        prev=prev,
        seed=os.urandom(32),
        records=[tp_record(v) for v in values],
        t_first=TS0,
        t_last=TS0 + 500_000_000,
    )


def test_third_party_block_is_accepted_by_our_verifier() -> None:
    secret = os.urandom(32)
    tp = _tp_fresh_block(secret, seq=41, prev=os.urandom(32))
    env = decode_envelope(tp["envelope"])
    opened = open_envelope(env, tp["public_key"])
    h = opened.header
    assert (h.v, h.device_id, h.key_id, h.boot, h.seq, h.count) == (
        1,
        tp["device_id"],
        tp["key_id"],
        7,
        41,
        2,
    )
    assert tp["device_id"] == crypto.device_id_for(tp["public_key"])
    assert tp["key_id"] == crypto.key_id_for(tp["public_key"])
    assert opened.hash == tp["block_hash"] and h.root == tp["root"]
    assert opened.leaf_hashes == tp["leaf_hashes"]
    decoded = [decode_record(r) for r in env.records]
    assert decoded == [_expected_record(TP_DRIVE_VALUES), _expected_record(TP_BATTERY_VALUES)]
    assert isinstance(decoded[0], DrivingSample) and decoded[0].latitude_deg is None
    assert isinstance(decoded[1], BatterySample) and decoded[1].is_charging is True


def test_third_party_chain_is_accepted_by_the_consumer(tmp_path: Path) -> None:
    """Two chained third-party blocks through the real Processor (registry + DuckDB store)."""
    from ingest.pipeline.processor import Processor
    from ingest.pipeline.processor import RawMessage as Msg
    from ingest.storage.registry import Registry
    from ingest.storage.store import FileStore

    secret = os.urandom(32)
    b0 = _tp_fresh_block(secret)
    b1 = _tp_fresh_block(secret, seq=1, prev=b0["block_hash"])
    store, reg = FileStore(tmp_path / "t.duckdb"), Registry(tmp_path / "r.sqlite")
    try:
        reg.add(b0["public_key"])
        proc = Processor(store, reg, max_block_bytes=512 * 1024)
        key = b0["device_id"].encode()
        proc.process_all([Msg("telematics.blocks", 0, i, key, b["envelope"]) for i, b in enumerate((b0, b1))])
        assert proc.pending.rejections == []
        assert [b.block_hash for b in proc.pending.blocks] == [b0["block_hash"], b1["block_hash"]]
        assert proc.heads[b0["device_id"]].last_seq == 1
    finally:
        store.close()
        reg.close()


# What WIRE.md section 4 and 5 say decoders accept and reject.
def _drive_array(**changes: Any) -> list[Any]:
    tag, fields = TP_DRIVING
    values = dict(TP_DRIVE_VALUES, **changes)
    return [tag, *(values[f.name] for f in fields)]


def test_decoders_accept_what_wire_md_says() -> None:
    base = decode_record(tp_record(TP_DRIVE_VALUES))
    arr = _drive_array()
    # Any integer in a float field.
    assert decode_record(mp(_drive_array(speed_mps=3, odometer_m=2**33))) == msgspec.structs.replace(
        base, speed_mps=3.0, odometer_m=float(2**33)
    )
    chunks = [mp(x) for x in arr]
    gear = 1 + [f.name for f in TP_DRIVING[1]].index("gear")
    # float32 in a float field (index 2 is speed_mps).
    f32 = [*chunks[:2], b"\xca" + struct.pack(">f", 1.5), *chunks[3:]]
    assert decode_record(b"\xdc\x00\x11" + b"".join(f32)) == msgspec.structs.replace(base, speed_mps=1.5)
    # Wider-than-needed widths: int64 for gear -1, array32 header, str8 for the tag.
    wide = [b"\xd9\x01d", *chunks[1:gear], b"\xd3" + struct.pack(">q", -1), *chunks[gear + 1 :]]
    assert decode_record(b"\xdd\x00\x00\x00\x11" + b"".join(wide)) == base
    # Trailing unknown record fields are ignored, whatever their type (a map, an extension).
    assert decode_record(mp([*arr, 1, "future", None])) == base
    assert decode_record(msgspec.msgpack.encode([*arr, {"a": [1, {"b": None}]}])) == base
    assert decode_record(msgspec.msgpack.encode([*arr, msgspec.msgpack.Ext(1, b"x")])) == base


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(_drive_array(gear=1.0), id="float-in-integer-field"),
        pytest.param(_drive_array(ts_ns=float(TS0)), id="float-timestamp"),
        pytest.param(_drive_array(speed_mps=None), id="nil-in-required-float"),
        pytest.param(_drive_array(speed_mps=math.nan), id="nan"),
        pytest.param(_drive_array(odometer_m=math.inf), id="infinity"),
        pytest.param(_drive_array(latitude_deg=90.5), id="out-of-range"),
        pytest.param(_drive_array(gear=True), id="bool-in-integer-field"),
        pytest.param(_drive_array()[:-1], id="missing-field"),
        pytest.param(["x", *_drive_array()[1:]], id="unknown-kind"),
    ],
)
def test_decoders_reject_what_wire_md_says(bad: list[Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_record(mp(bad))


def test_record_decoder_rejects_int_for_bool_and_trailing_bytes() -> None:
    tag, fields = TP_BATTERY
    arr = [tag, *(TP_BATTERY_VALUES[f.name] for f in fields)]
    arr[[f.name for f in fields].index("is_charging") + 1] = 1
    with pytest.raises(msgspec.ValidationError):
        decode_record(mp(arr))
    with pytest.raises(msgspec.DecodeError):
        decode_record(tp_record(TP_BATTERY_VALUES) + b"\xc0")


def _sign(secret: bytes, header: list[Any]) -> tuple[bytes, bytes]:
    hb = mp(header)
    return hb, Ed25519PrivateKey.from_private_bytes(secret).sign(b"vt/v1/block-sig\x00" + hb)


def test_header_and_envelope_are_closed() -> None:
    secret, seed = os.urandom(32), os.urandom(32)
    pub = tp_public_key(secret)
    device_id, key_id = tp_tagged("vt/v1/device-id", pub)[:16].hex(), tp_tagged("vt/v1/key-id", pub)[:8].hex()
    records = [tp_record(TP_DRIVE_VALUES), tp_record(TP_BATTERY_VALUES)]
    salts = [tp_tagged("vt/v1/leaf-salt", seed + struct.pack(">I", i)) for i in range(2)]
    root = tp_mth([hashlib.sha256(b"\x00" + s + r).digest() for s, r in zip(salts, records, strict=True)])
    header = [1, device_id, key_id, 7, 0, bytes(32), 2, TS0, TS0 + 500_000_000, root]

    def envelope(hdr: list[Any], env_key_id: str = key_id) -> bytes:
        hb, sig = _sign(secret, hdr)
        return mp([1, env_key_id, hb, sig, seed, records])

    def reason(payload: bytes) -> Reason:
        with pytest.raises(WireError) as exc:
            open_envelope(decode_envelope(payload), pub)
        return exc.value.reason

    open_envelope(decode_envelope(envelope(header)), pub)
    # Validly signed, but: an unknown trailing header field; str where bin is due; header key id
    # differs from the envelope's; count differs from the records carried; t_last < t_first.
    assert reason(envelope([*header, 0])) == Reason.HEADER
    assert reason(envelope([*header[:5], "0" * 32, *header[6:]])) == Reason.HEADER
    assert reason(envelope([*header[:2], "0" * 16, *header[3:]])) == Reason.HEADER
    assert reason(envelope([*header[:6], 3, *header[7:]])) == Reason.MERKLE
    assert reason(envelope([*header[:7], TS0 + 1, TS0, root])) == Reason.HEADER
    # Patterns match whole strings (section 1): an id followed by a newline is a bad header.
    assert reason(envelope([header[0], device_id + "\n", *header[2:]])) == Reason.HEADER
    # Envelope: unknown trailing field, another version, trailing bytes, str records -> decode_error.
    hb, sig = _sign(secret, header)
    for payload in (
        mp([1, key_id, hb, sig, seed, records, 0]),
        mp([2, key_id, hb, sig, seed, records]),
        mp([1, key_id, hb, sig, seed, records]) + b"\xc0",
        mp([1, key_id, hb, sig, seed, ["not bin"]]),
        mp([1, key_id, hb, sig, seed, []]),
        mp([1, key_id + "\n", hb, sig, seed, records]),
    ):
        with pytest.raises(WireError) as exc:
            decode_envelope(payload)
        assert exc.value.reason == Reason.DECODE


# =============================================================================================
# (d) single-bit corruption of the vector envelope
# =============================================================================================


def _flips(payload: bytes, part: bytes) -> Iterator[bytes]:
    """``payload`` with each single bit of its (unique) sub-string ``part`` flipped in turn."""
    start = payload.find(part)
    assert start >= 0 and payload.find(part, start + 1) < 0, "part must occur exactly once"
    for i in range(start, start + len(part)):
        for bit in range(8):
            bad = bytearray(payload)
            bad[i] ^= 1 << bit
            yield bytes(bad)


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        ("signature", Reason.SIGNATURE),
        ("header_bytes", Reason.SIGNATURE),
        ("record_bytes[0]", Reason.MERKLE),
        ("record_bytes[1]", Reason.MERKLE),
        ("salt_seed", Reason.MERKLE),
    ],
)
def test_every_single_bit_flip_is_rejected(part: str, expected: Reason) -> None:
    payload = bytes.fromhex(VECTOR["outputs"]["envelope"])
    pub = bytes.fromhex(VECTOR["outputs"]["public_key"])
    open_envelope(decode_envelope(payload), pub)
    n = 0
    for bad in _flips(payload, bytes.fromhex(vector_value(part))):
        env = decode_envelope(bad)  # the envelope still decodes: only the field's content changed
        with pytest.raises(WireError) as exc:
            open_envelope(env, pub)
        assert exc.value.reason == expected
        n += 1
    assert n == 8 * len(bytes.fromhex(vector_value(part)))


# =============================================================================================
# (e) property: build -> wire -> verify -> decode
# =============================================================================================


def _float_strategy(t: Any) -> st.SearchStrategy[float]:
    return st.floats(min_value=t.ge, max_value=t.le, allow_nan=False, allow_infinity=False)


def _field_strategy(t: Any) -> st.SearchStrategy[Any]:
    if isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.UnionType):
        (inner,) = [x for x in t.types if not isinstance(x, mi.NoneType)]
        return st.none() | _field_strategy(inner)
    if isinstance(t, mi.FloatType):
        return _float_strategy(t)
    if isinstance(t, mi.IntType):
        return st.integers(min_value=t.ge, max_value=t.le)
    if isinstance(t, mi.BoolType):
        return st.booleans()
    raise TypeError(t)


def _record_strategy(typ: type[Record]) -> st.SearchStrategy[Record]:
    info = mi.type_info(typ)
    assert isinstance(info, mi.StructType)
    return st.builds(typ, **{f.name: _field_strategy(f.type) for f in info.fields})


def _simulated(seed: int, n: int) -> list[Record]:
    model = VehicleModel(seed, start_ns=TS0, battery_every=3)
    out: list[Record] = []
    while len(out) < n:
        out.extend(model.step())
    return out[:n]


RECORD_LISTS = st.lists(
    st.one_of(_record_strategy(DrivingSample), _record_strategy(BatterySample)), min_size=1, max_size=40
) | st.builds(_simulated, st.integers(0, 2**32), st.integers(1, 40))


@settings(max_examples=150, deadline=None)
@given(
    records=RECORD_LISTS,
    secret=st.binary(min_size=32, max_size=32),
    seed=st.binary(min_size=32, max_size=32),
    boot=st.integers(0, 2**32 - 1),
    seq=st.integers(0, 2**64 - 1),
    prev=st.binary(min_size=32, max_size=32),
)
def test_property_build_wire_open_decode(
    records: list[Record], secret: bytes, seed: bytes, boot: int, seq: int, prev: bytes
) -> None:
    key = crypto.SigningKey.from_seed(secret)
    raw = [encode_record(r) for r in records]
    tss = [r.ts_ns for r in records]
    block = build_block(
        key,
        device_id=crypto.device_id_for(key.public_key),
        boot=boot,
        seq=seq,
        prev=prev,
        records=raw,
        t_first=min(tss),
        t_last=max(tss),
        seed=seed,
    )
    payload = block.to_wire()
    env = decode_envelope(payload)
    opened = open_envelope(env, key.public_key)
    # The header bytes carried are the ones signed, byte for byte.
    assert env.header == block.header_bytes
    try:
        Ed25519PublicKey.from_public_bytes(key.public_key).verify(
            env.sig, b"vt/v1/block-sig\x00" + env.header
        )
    except InvalidSignature:  # pragma: no cover - the assertion message is the point
        pytest.fail("signature does not cover the carried header bytes")
    assert opened.header == block.header and opened.hash == block.hash
    assert env.records == raw
    for r, carried in zip(records, env.records, strict=True):
        assert decode_record(encode_record(r)) == r
        assert decode_record(carried) == r
    # WIRE.md's canonical encoding: the independent writer produces the same bytes.
    assert [
        tp_record({"kind": "d" if isinstance(r, DrivingSample) else "b", **msgspec.structs.asdict(r)})
        for r in records
    ] == raw
    tp = tp_block(
        secret, boot=boot, seq=seq, prev=prev, seed=seed, records=raw, t_first=min(tss), t_last=max(tss)
    )
    assert tp["envelope"] == payload


# =============================================================================================
# JSON Schema: the committed files are a fresh export
# =============================================================================================


def test_jsonschema_files_equal_a_fresh_export() -> None:
    fresh = export()
    assert set(fresh) == set(TYPES.values())
    committed = {p.name for p in JSONSCHEMA_DIR.glob("*.json")}
    assert committed == set(fresh), "run: python -m schemas.export_jsonschema"
    for name, doc in fresh.items():
        assert (JSONSCHEMA_DIR / name).read_text() == render(doc), (
            f"{name} is stale: python -m schemas.export_jsonschema"
        )


def test_jsonschema_cli_writes_to_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "out")]) == 0
    for name in TYPES.values():
        assert (tmp_path / "out" / name).read_text() == (JSONSCHEMA_DIR / name).read_text()
    assert main(["--help"]) == 2


def test_jsonschema_describes_positional_arrays() -> None:
    fresh = export()
    for typ, name in TYPES.items():
        (component,) = fresh[name]["$defs"].values()
        assert component["type"] == "array"
        titles = [item["title"] for item in component["prefixItems"]]
        tagged = typ in (DrivingSample, BatterySample)
        assert titles == (["kind"] if tagged else []) + list(typ.__struct_fields__)
    # Records are open at the end (trailing fields ignored); header and envelope are closed.
    assert "maxItems" not in fresh["driving_sample.schema.json"]["$defs"]["DrivingSample"]
    assert fresh["block_header.schema.json"]["$defs"]["BlockHeader"]["maxItems"] == 10
    assert fresh["envelope.schema.json"]["$defs"]["Envelope"]["maxItems"] == 6
