"""Generate tests/vectors/block_v1.json: the worked example of schemas/WIRE.md (a block, and the
birth session message of the same device).

Every value is produced by our own code (schemas/). The output is deterministic: the
key is RFC 8032 test 1, the salt seed is bytes(range(32)), the records are fixed and
Ed25519 signatures are deterministic.

    python tests/vectors/make_block_v1.py            # rewrite the JSON file
    python tests/vectors/make_block_v1.py --check    # exit 1 if the file is stale
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import msgspec

from schemas import crypto
from schemas.block import build_block, encode_record, leaf_hashes
from schemas.merkle import leaf_hash, root_from_leaf_hashes
from schemas.records import BatterySample, DrivingSample, Record
from schemas.session import SessionEvent, sign_session

VECTOR_PATH = Path(__file__).with_name("block_v1.json")

# RFC 8032 section 7.1, TEST 1: the 32-byte Ed25519 private key ("seed" in RFC terms).
SECRET_KEY = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
SALT_SEED = bytes(range(32))
BOOT = 1
SEQ = 0
PREV = crypto.ZERO_HASH

RECORDS: list[Record] = [
    DrivingSample(
        ts_ns=1_700_000_000_000_000_000,
        speed_mps=13.89,
        accel_long_mps2=-0.75,
        accel_lat_mps2=0.125,
        accel_vert_mps2=-0.0625,
        yaw_rate_radps=0.01,
        latitude_deg=48.137154,
        longitude_deg=11.576124,
        altitude_m=519.5,
        heading_deg=None,  # no course-over-ground fix: encoded as nil
        h_accuracy_m=2.5,
        accel_pedal_pct=18.0,
        brake_pedal_pct=0.0,
        steering_angle_rad=-0.05,
        gear=1,
        odometer_m=12_345_678.9,
    ),
    BatterySample(
        ts_ns=1_700_000_000_100_000_000,
        soc_pct=72.5,
        soh_pct=96.25,
        pack_voltage_v=389.6,
        pack_current_a=-42.3,
        power_w=-16_480.08,
        temp_min_c=24.5,
        temp_max_c=27.75,
        temp_avg_c=26.0,
        cell_voltage_min_v=4.051,
        cell_voltage_max_v=4.062,
        charged_energy_j=0.0,
        consumed_energy_j=1_234_567.5,
        charged_throughput_c=0.0,
        consumed_throughput_c=3_170.25,
        is_charging=False,
        charge_power_w=0.0,
    ),
]


# The birth the agent publishes when it connects before sealing this block (WIRE.md 12.4).
SESSION = SessionEvent(
    event="birth",
    device_id="",  # filled in from the key
    key_id="",
    boot=BOOT,
    session=1,
    ts_ns=1_699_999_999_000_000_000,
    next_seq=SEQ,
    agent_version="0.1.0",
    schema_version=1,
    config={"block_max_records": 100, "block_max_age_ms": 1000, "privacy": True},
)


def record_to_json(record: Record) -> dict[str, Any]:
    """Kind tag first, then the fields in wire order."""
    kind = "d" if isinstance(record, DrivingSample) else "b"
    return {"kind": kind, **msgspec.structs.asdict(record)}


def build_vector() -> dict[str, Any]:
    key = crypto.SigningKey.from_seed(SECRET_KEY)
    device_id = crypto.device_id_for(key.public_key)
    record_bytes = [encode_record(r) for r in RECORDS]
    tss = [r.ts_ns for r in RECORDS]
    block = build_block(
        key,
        device_id=device_id,
        boot=BOOT,
        seq=SEQ,
        prev=PREV,
        records=record_bytes,
        t_first=min(tss),
        t_last=max(tss),
        seed=SALT_SEED,
    )
    h = block.header
    leaves = leaf_hashes(SALT_SEED, record_bytes)
    birth = msgspec.structs.replace(SESSION, device_id=device_id, key_id=key.key_id)
    session_message = sign_session(key, birth)
    signed = msgspec.msgpack.decode(session_message)
    batch_leaf = leaf_hash(block.hash)
    return {
        "description": (
            "Worked example of schemas/WIRE.md: one v1 block of two records, signed with the "
            "RFC 8032 test 1 key. Byte strings are lowercase hex."
        ),
        "inputs": {
            "ed25519_secret_key": SECRET_KEY.hex(),
            "salt_seed": SALT_SEED.hex(),
            "boot": BOOT,
            "seq": SEQ,
            "prev": PREV.hex(),
            "records": [record_to_json(r) for r in RECORDS],
            "session": {
                k: v for k, v in msgspec.structs.asdict(SESSION).items() if k not in ("device_id", "key_id")
            },
        },
        "outputs": {
            "public_key": key.public_key.hex(),
            "device_id": device_id,
            "key_id": key.key_id,
            "record_bytes": [b.hex() for b in record_bytes],
            "salts": [s.hex() for s in crypto.leaf_salts(SALT_SEED, len(record_bytes))],
            "leaf_hashes": [x.hex() for x in leaves],
            "root": h.root.hex(),
            "header": {
                "v": h.v,
                "device_id": h.device_id,
                "key_id": h.key_id,
                "boot": h.boot,
                "seq": h.seq,
                "prev": h.prev.hex(),
                "count": h.count,
                "t_first": h.t_first,
                "t_last": h.t_last,
                "root": h.root.hex(),
            },
            "header_bytes": block.header_bytes.hex(),
            "signing_input": crypto.signing_input(block.header_bytes).hex(),
            "signature": block.signature.hex(),
            "block_hash": block.hash.hex(),
            "envelope": block.to_wire().hex(),
            # A batch holding only this block: leaf data = block hash.
            "batch_leaf_hash": batch_leaf.hex(),
            "batch_root": root_from_leaf_hashes([batch_leaf]).hex(),
            # The session message (WIRE.md 12.4): body, what is signed, the whole payload.
            "session_body": signed[2].hex(),
            "session_signing_input": (crypto.TAG_SESSION + b"\x00" + signed[2]).hex(),
            "session_signature": signed[3].hex(),
            "session_message": session_message.hex(),
        },
    }


def render(vector: dict[str, Any]) -> str:
    return json.dumps(vector, indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render(build_vector())
    if "--check" in argv:
        if not VECTOR_PATH.exists() or VECTOR_PATH.read_text() != text:
            print(f"{VECTOR_PATH} is stale; run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    VECTOR_PATH.write_text(text)
    print(f"wrote {VECTOR_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
