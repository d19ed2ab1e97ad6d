"""Owner grants and revocations (schemas/consent.py): signatures over exact bytes, flipped bits, and
every reason the access decision gives, in its order; an access checked offline."""

from __future__ import annotations

import msgspec
import pytest

from schemas.consent import (
    ConsentError,
    Ownership,
    Query,
    Reason,
    Refused,
    judge,
    new_grant,
    new_revocation,
    open_grant,
    open_revocation,
    read_signed,
)
from schemas.crypto import SigningKey

OWNER, GRANTEE, OTHER = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
DEV, DEV2 = "a" * 32, "b" * 32
NOW = 1_800_000_000 * 10**9


def _grant(**kw: object) -> bytes:
    args: dict[str, object] = {
        "grantee_key": GRANTEE.public_key,
        "devices": [DEV],
        "kinds": ["battery"],
        "records_from_ns": NOW - 10**12,
        "records_to_ns": NOW + 10**12,
        "purpose": "battery health check",
        "expires_ns": NOW + 10**12,
        "raw": True,
        "issued_ns": NOW,
    }
    args.update(kw)
    return new_grant(OWNER, **args).to_json()  # type: ignore[arg-type]


def test_a_grant_round_trips_and_a_flipped_bit_breaks_it() -> None:
    data = _grant()
    g = open_grant(read_signed(data))
    assert (g.owner_key, g.grantee_key, g.devices, g.kinds) == (
        OWNER.public_key,
        GRANTEE.public_key,
        [DEV],
        ["battery"],
    )
    obj = msgspec.json.decode(data)
    for field in ("statement", "signature"):
        raw = bytearray(bytes.fromhex(obj[field]))
        raw[len(raw) // 2] ^= 0x04
        forged = msgspec.json.encode({**obj, field: raw.hex()})
        with pytest.raises(ConsentError):
            open_grant(read_signed(forged))


def test_an_edited_scope_or_another_signer_does_not_verify() -> None:
    """Re-encoding the grant with a wider scope keeps the owner's signature over the old bytes: refused;
    signing it with another key makes it another owner's grant."""
    s = read_signed(_grant())
    g = open_grant(s)
    wider = msgspec.msgpack.encode(msgspec.structs.replace(g, kinds=["battery", "driving", "position"]))
    with pytest.raises(ConsentError, match="signature"):
        open_grant(type(s)(wider, s.signature))
    other = open_grant(
        read_signed(
            new_grant(
                OTHER,
                grantee_key=GRANTEE.public_key,
                devices=[DEV],
                kinds=["battery"],
                records_from_ns=0,
                records_to_ns=1,
                purpose="x",
                expires_ns=1,
                raw=True,
                issued_ns=0,
            ).to_json()
        )
    )
    assert other.owner_key == OTHER.public_key


def test_a_grant_out_of_its_limits_is_never_signed() -> None:
    for bad in ({"devices": ["A" * 32]}, {"purpose": ""}, {"expires_ns": 2**63}):
        with pytest.raises(ConsentError):
            _grant(**bad)


def test_revocation_is_signed_by_the_owner() -> None:
    g = open_grant(read_signed(_grant()))
    r = open_revocation(read_signed(new_revocation(OWNER, g.grant_id, NOW).to_json()))
    assert (r.grant_id, r.owner_key) == (g.grant_id, OWNER.public_key)


def test_judge_gives_each_reason() -> None:
    g = open_grant(read_signed(_grant()))
    own = Ownership(OWNER.public_key, NOW - 10**13)
    ok = Query(DEV, "battery_samples", NOW - 10**9, NOW)
    judge(g, requester_key=GRANTEE.public_key, query=ok, owner=own, revoked=False, now_ns=NOW)

    def reason(**kw: object) -> Reason:
        args: dict[str, object] = {
            "requester_key": GRANTEE.public_key,
            "query": ok,
            "owner": own,
            "revoked": False,
            "now_ns": NOW,
        }
        args.update(kw)
        with pytest.raises(Refused) as e:
            judge(g, **args)  # type: ignore[arg-type]
        return e.value.reason

    assert reason(owner=Ownership(OTHER.public_key, NOW - 10)) == Reason.NOT_OWNER  # sold: the old grant ends
    assert reason(owner=None) == Reason.NOT_OWNER
    assert reason(revoked=True) == Reason.REVOKED
    assert reason(now_ns=NOW + 10**12 + 1) == Reason.EXPIRED
    assert reason(requester_key=OTHER.public_key) == Reason.NOT_GRANTEE
    assert reason(query=Query(DEV2, "battery_samples", NOW - 10**9, NOW)) == Reason.DEVICE_NOT_GRANTED
    assert reason(query=Query(DEV, "driving_samples", NOW - 10**9, NOW)) == Reason.KIND_NOT_GRANTED
    assert reason(query=Query(DEV, "battery_samples", NOW - 10**12 - 1, NOW)) == Reason.OUTSIDE_TIME_RANGE
    assert reason(query=Query(DEV, "battery_samples", NOW, NOW + 10**12 + 1)) == Reason.OUTSIDE_TIME_RANGE
    # a new owner since NOW - 1 s: records sampled before that are never covered by their grants
    assert reason(owner=Ownership(OWNER.public_key, NOW - 10**8)) == Reason.OUTSIDE_TIME_RANGE
    # bought back: the owner's grants from before the current ownership do not come back
    assert reason(owner=Ownership(OWNER.public_key, NOW + 1)) == Reason.NOT_OWNER
    derived = open_grant(read_signed(_grant(raw=False)))
    with pytest.raises(Refused) as e:
        judge(derived, requester_key=GRANTEE.public_key, query=ok, owner=own, revoked=False, now_ns=NOW)
    assert e.value.reason == Reason.RAW_NOT_GRANTED


def test_driving_rows_need_driving_and_position() -> None:
    """Wire v1: a driving row is one leaf holding its position, so it is released only with both."""
    own = Ownership(OWNER.public_key, 0)
    q = Query(DEV, "driving_samples", NOW - 10**9, NOW)
    no_pos = open_grant(read_signed(_grant(kinds=["driving"])))
    with pytest.raises(Refused, match="position"):
        judge(no_pos, requester_key=GRANTEE.public_key, query=q, owner=own, revoked=False, now_ns=NOW)
    both = open_grant(read_signed(_grant(kinds=["driving", "position"])))
    judge(both, requester_key=GRANTEE.public_key, query=q, owner=own, revoked=False, now_ns=NOW)
    # a driving score releases no position: "driving" is enough, even for a derived-only grant
    figure = Query(DEV, "driving_samples", NOW - 10**9, NOW, "driving-score")
    derived = open_grant(read_signed(_grant(kinds=["driving"], raw=False)))
    judge(derived, requester_key=GRANTEE.public_key, query=figure, owner=own, revoked=False, now_ns=NOW)
    battery_only = open_grant(read_signed(_grant()))
    with pytest.raises(Refused, match="lacks driving"):
        judge(
            battery_only, requester_key=GRANTEE.public_key, query=figure, owner=own, revoked=False, now_ns=NOW
        )


def test_rate_limiter_allows_bursts_then_the_rate() -> None:
    from ingest.ops.access import RateLimiter

    lim = RateLimiter(rate=2.0, burst=3)
    k = b"k" * 32
    assert [lim.allow(k, 0.0) for _ in range(4)] == [True, True, True, False]
    assert lim.allow(k, 0.4) is False and lim.allow(k, 0.6) is True  # 2 per second refill
    assert lim.allow(b"x" * 32, 0.6) is True  # per key
