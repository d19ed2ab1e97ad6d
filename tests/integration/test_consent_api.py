"""The data-access API (`telematics serve`, a real process over HTTP) on rows a real pipeline stored:
a battery-only grantee gets a vehicle's battery rows as a bundle that verifies; position, another
vehicle, outside the range, after expiry and after revocation are refused with their reason and
counted; forged grants and a previous owner's grant are refused; every served request is in
`telematics accesses` with a verifying inclusion proof, checked offline by the owner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ingest.ops.access import signed_headers
from ingest.storage.registry import Registry
from schemas.consent import new_grant, new_revocation, open_grant, read_signed
from schemas.crypto import SigningKey
from schemas.proof import verify_bundle
from tests.integration.conftest import free_port
from tests.integration.harness import REPO, drive, run_cli, wait_listening, wait_until, write_config

pytestmark = pytest.mark.integration

HOUR = 3600 * 10**9


def _call(
    url: str, method: str = "GET", body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(
        url, data=body if method == "POST" else None, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_grants_scope_every_answer_and_every_access_is_logged(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = env.cfg
    port = free_port()
    cfg = msgspec.structs.replace(
        cfg, consent=msgspec.structs.replace(cfg.consent, listen=f"127.0.0.1:{port}", burst=50)
    )
    env.cfg = cfg
    write_config(cfg, env.config_path)
    env.start("consumer")
    env.start("bridge")
    reg = Registry(cfg.path(cfg.registry.path))
    fleet = drive(cfg, 2, 1_000, 5, reg)
    reg.close()
    wait_until(cfg, lambda s: s["records"] >= 2_000 and s["anchored"] == s["batches"], what="2,000 stored")
    for p in env.procs:
        assert p.stop() == 0  # the DuckDB file store: one process at a time

    dev, dev2 = sorted(fleet.per_vehicle)
    owner, grantee, buyer = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    now = time.time_ns()
    cli = env.config_path
    for d, k in ((dev, owner), (dev2, buyer)):
        r = run_cli(
            cli,
            "owners",
            "set",
            "--device",
            d,
            "--owner-key",
            k.public_key.hex(),
            "--since",
            str(now - 10 * HOUR),
        )
        assert r.returncode == 0, r.stderr

    def grant(signer: SigningKey = owner, **kw: Any) -> bytes:
        args: dict[str, Any] = {
            "grantee_key": grantee.public_key,
            "devices": [dev],
            "kinds": ["battery"],
            "records_from_ns": now - 5 * HOUR,
            "records_to_ns": now + HOUR,
            "purpose": "battery health check",
            "expires_ns": now + HOUR,
            "raw": True,
            "issued_ns": now,
        }
        args.update(kw)
        return new_grant(signer, **args).to_json()

    serve = subprocess.Popen(
        [sys.executable, "-m", "ingest.cli", "--config", str(cli), "serve"],
        stdout=(tmp_path / "serve.log").open("ab"),
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_listening(serve, port, tmp_path / "serve.log")

        battery = grant()
        gid = open_grant(read_signed(battery)).grant_id.hex()
        st, body, _ = _call(base + "/v1/grants", "POST", battery)
        assert st == 201, body

        def rows(
            table: str,
            device: str = dev,
            lo: int = now - 5 * HOUR,
            hi: int = now,
            g: str = gid,
            key: SigningKey = grantee,
        ) -> tuple[int, Any, dict[str, str]]:
            target = "/v1/rows?" + urllib.parse.urlencode(
                {"grant": g, "device": device, "table": table, "from": lo, "to": hi, "limit": 50}
            )
            st, body, hdr = _call(base + target, headers=signed_headers(key, "GET", target))
            return st, (body if st == 200 else json.loads(body)), hdr

        st, data, hdr = rows("battery_samples")
        assert st == 200, data
        assert isinstance(data, bytes)
        rep = verify_bundle(
            data, operator_key=bytes.fromhex(cfg.path(cfg.ledger.key_path + ".pub").read_text())
        )
        assert rep.ok and rep.records > 0, rep.problems
        served_index = int(hdr["X-VT-Access-Index"])

        # the store unavailable (here the ingest holds the DuckDB file): 503, one line, nothing served
        held = env.start("consumer")  # returns once the consumer runs, its store open
        st, body, _ = rows("battery_samples")
        assert held.stop() == 0
        assert st == 503 and body["error"].startswith("the store is unavailable; nothing was served"), body
        assert "\n" not in body["error"]

        refusals = {
            "kind_not_granted": rows("driving_samples"),  # position: never granted
            "device_not_granted": rows("battery_samples", device=dev2),
            "outside_time_range": rows("battery_samples", lo=now - 6 * HOUR),
            "not_grantee": rows("battery_samples", key=buyer),
        }
        for reason, (st, body, _) in refusals.items():
            assert st == 403 and isinstance(body, dict) and body["refused"] == reason, (reason, st, body)

        # a replayed request: the same signed headers again
        target = "/v1/rows?" + urllib.parse.urlencode(
            {"grant": gid, "device": dev, "table": "battery_samples", "from": now - HOUR, "to": now}
        )
        h = signed_headers(grantee, "GET", target)
        assert _call(base + target, headers=h)[0] == 200
        st, body, _ = _call(base + target, headers=h)
        assert st == 401 and json.loads(body)["refused"] == "stale_request"

        # derived figures only: a driving score (no position released), never the driving rows
        derived = grant(kinds=["driving"], raw=False)
        did = open_grant(read_signed(derived)).grant_id.hex()
        assert _call(base + "/v1/grants", "POST", derived)[0] == 201
        target = "/v1/figures?" + urllib.parse.urlencode(
            {"grant": did, "device": dev, "figure": "driving-score", "from": now - 5 * HOUR, "to": now}
        )
        st, body, _ = _call(base + target, headers=signed_headers(grantee, "GET", target))
        assert st == 200 and json.loads(body)["algorithm"], body
        st, body, _ = rows("driving_samples", g=did)
        assert st == 403 and body["refused"] == "kind_not_granted"

        # expired: a grant whose expiry has passed
        old = grant(expires_ns=now - 1)
        assert _call(base + "/v1/grants", "POST", old)[0] == 201
        st, body, _ = rows("battery_samples", g=open_grant(read_signed(old)).grant_id.hex())
        assert st == 403 and body["refused"] == "expired"

        # forged: a flipped bit in the statement; signed by a key that does not own the vehicle
        forged = json.loads(grant())
        raw = bytearray(bytes.fromhex(forged["statement"]))
        raw[-3] ^= 0x01
        forged["statement"] = raw.hex()
        st, body, _ = _call(base + "/v1/grants", "POST", json.dumps(forged).encode())
        assert st == 403 and json.loads(body)["refused"] == "bad_grant"
        st, body, _ = _call(base + "/v1/grants", "POST", grant(signer=buyer))
        assert st == 403 and json.loads(body)["refused"] == "not_owner"

        # revocation: effective at once
        st, body, _ = _call(
            base + "/v1/revocations",
            "POST",
            new_revocation(owner, bytes.fromhex(gid), time.time_ns()).to_json(),
        )
        assert st == 201, body
        st, body, _ = rows("battery_samples")
        assert st == 403 and body["refused"] == "revoked"

        # a revocation that arrives before its grant is kept: the grant is refused from the start
        early = grant()
        early_id = open_grant(read_signed(early)).grant_id
        assert (
            _call(
                base + "/v1/revocations", "POST", new_revocation(owner, early_id, time.time_ns()).to_json()
            )[0]
            == 201
        )
        assert _call(base + "/v1/grants", "POST", early)[0] == 201
        st, body, _ = rows("battery_samples", g=early_id.hex())
        assert st == 403 and body["refused"] == "revoked"

        # the vehicle is sold: a grant by the previous owner is refused, even a fresh one
        second = grant()
        assert _call(base + "/v1/grants", "POST", second)[0] == 201
        assert (
            run_cli(cli, "owners", "set", "--device", dev, "--owner-key", buyer.public_key.hex()).returncode
            == 0
        )
        st, body, _ = rows("battery_samples", g=open_grant(read_signed(second)).grant_id.hex())
        assert st == 403 and body["refused"] == "not_owner"
        st, body, _ = _call(base + "/v1/grants", "POST", grant())
        assert st == 403 and json.loads(body)["refused"] == "not_owner"

        # what an operator scrapes
        st, body, _ = _call(base + "/metrics")
        text = body.decode()
        assert st == 200 and "telematics_access_accesses_total 3.0" in text, text
        assert 'telematics_access_refusals_total{reason="revoked"} 2.0' in text, text
    finally:
        serve.terminate()
        serve.wait(15)

    # the owner sees the one served access with a verifying inclusion proof; refusals are counted
    r = run_cli(cli, "accesses", "--device", dev)
    assert r.returncode == 0, r.stderr
    assert "3 access(es) to device" in r.stdout and r.stdout.count("proof OK") == 3, r.stdout
    assert "kind_not_granted 2" in r.stdout and "revoked 2" in r.stdout and "stale_request 1" in r.stdout, (
        r.stdout
    )
    r = run_cli(cli, "accesses", "--device", dev, "--json")
    proofs = json.loads(r.stdout)
    assert len(proofs) == 3 and proofs[0]["log_index"] == served_index
    f = tmp_path / "accesses.json"
    f.write_text(r.stdout)
    pub = str(cfg.path(cfg.ledger.key_path + ".pub"))
    r = run_cli(cli, "verify-access", str(f), "--owner-key", owner.public_key.hex(), "--operator-key", pub)
    assert r.returncode == 0 and r.stdout.count("OK access log entry") == 3, r.stdout + r.stderr
    proofs[0]["record"] = proofs[0]["record"][:-2] + ("00" if proofs[0]["record"][-2:] != "00" else "01")
    f.write_text(json.dumps(proofs))
    r = run_cli(cli, "verify-access", str(f), "--owner-key", owner.public_key.hex(), "--operator-key", pub)
    assert r.returncode == 1 and "does not anchor this access record" in r.stdout, r.stdout

    # nothing personal in the access log: no device id, in any form
    data = cfg.path(cfg.consent.access_log).read_bytes()
    for d in (dev, dev2):
        assert d.encode() not in data and bytes.fromhex(d) not in data
