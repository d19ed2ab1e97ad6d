"""The consent commands of `telematics` (docs/CONSENT.md): owners, grants and revocations, the
data-access API, and the accesses an owner can check.

    telematics owners keygen --out owner.key
    telematics owners set --device D --owner-key KEY [--since T]      (operator)
    telematics owners list [--device D]
    telematics grant new --owner-key-file owner.key --grantee KEY --device D --kinds battery \\
        --from T --to T --expires T --purpose TEXT [--derived-only] -o grant.json   (owner, offline)
    telematics grant revoke --owner-key-file owner.key --grant grant.json -o revocation.json
    telematics grant show FILE
    telematics consent add FILE...                                     (operator: keep and log)
    telematics serve [--listen HOST:PORT]
    telematics accesses --device D [--json]
    telematics verify-access FILE --owner-key KEY [--operator-key KEY]  (owner, offline)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ingest import cli_args, wiring
from ingest.config import load_config


def _fail(command: str, msg: str, code: int = 1) -> int:
    print(f"telematics {command}: {msg}", file=sys.stderr)
    return code


def _owner_key(path: str) -> Any:
    from schemas.crypto import SigningKey

    try:
        return SigningKey.from_pem(Path(path).read_bytes())
    except OSError as exc:
        raise SystemExit(f"telematics: cannot read the owner key {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise SystemExit(f"telematics: {path} is not an Ed25519 private key (PEM): {exc}") from None


def cmd_owners(args: argparse.Namespace) -> int:
    from common.keys import KeyFileError, generate_key_file
    from common.times import iso_utc
    from ingest.storage.consent import OwnershipError
    from schemas.crypto import key_id_for

    if args.action == "keygen":
        if not args.out:
            return _fail("owners", "keygen needs --out FILE", 2)
        try:
            key = generate_key_file(args.out)
        except KeyFileError as exc:
            return _fail("owners", str(exc))
        print(
            f"owner key {key_id_for(key.public_key)} in {args.out}; public key {key.public_key.hex()} in {args.out}.pub"
        )
        return 0
    cfg = load_config(args.config)
    store = wiring.open_consent(cfg)
    try:
        if args.action == "set":
            if not args.device or args.owner_key is None:
                return _fail("owners", "set needs --device and --owner-key", 2)
            since = args.since if args.since is not None else time.time_ns()
            try:
                store.set_owner(args.device, args.owner_key, since)
            except OwnershipError as exc:
                return _fail("owners", str(exc))
            print(f"device {args.device}: owner {key_id_for(args.owner_key)} from {iso_utc(since)}")
            return 0
        for p in store.history(args.device):
            until = "now" if p.until_ns is None else iso_utc(p.until_ns)
            print(f"{p.device_id}  owner {key_id_for(p.owner_key)}  {iso_utc(p.since_ns)} .. {until}")
        return 0
    finally:
        store.close()


def cmd_grant(args: argparse.Namespace) -> int:
    from common.times import iso_utc
    from schemas.consent import KINDS, ConsentError, new_grant, new_revocation, open_grant, read_signed

    def read_grant(path: str | None, what: str) -> Any:
        """The grant in ``path``, opened; the exit status (the failure printed) if it cannot be."""
        if not path:
            return _fail("grant", f"{args.action} needs {what}", 2)
        try:
            return open_grant(read_signed(Path(path).read_bytes()))
        except (OSError, ConsentError) as exc:
            return _fail("grant", f"{path}: {exc}")

    if args.action == "show":
        g = read_grant(args.file, "the grant FILE")
        if isinstance(g, int):
            return g
        print(
            f"grant {g.grant_id.hex()} (owner signature verified)\n  owner {g.owner_key.hex()}\n"
            f"  grantee {g.grantee_key.hex()}\n  devices {', '.join(g.devices)}\n  kinds {', '.join(g.kinds)}"
            f"  ({'raw rows' if g.raw else 'derived figures only'})\n"
            f"  records {iso_utc(g.records_from_ns)} .. {iso_utc(g.records_to_ns)}\n"
            f"  expires {iso_utc(g.expires_ns)}\n  purpose {g.purpose}"
        )
        return 0
    if not args.owner_key_file or not args.out:
        return _fail("grant", f"{args.action} needs --owner-key-file and -o/--out", 2)
    owner = _owner_key(args.owner_key_file)
    now = time.time_ns()
    if args.action == "new":
        kinds = [k.strip() for k in (args.kinds or "").split(",") if k.strip()]
        bad = [k for k in kinds if k not in KINDS]
        if not kinds or bad or args.grantee is None or not args.device:
            return _fail(
                "grant",
                f"new needs --grantee, --device and --kinds from {', '.join(KINDS)}"
                + (f" (not {bad})" if bad else ""),
                2,
            )
        try:
            s = new_grant(
                owner,
                grantee_key=args.grantee,
                devices=args.device,
                kinds=kinds,  # type: ignore[arg-type]
                records_from_ns=args.from_ns if args.from_ns is not None else 0,
                records_to_ns=args.to_ns if args.to_ns is not None else now + 365 * 86400 * 10**9,
                purpose=args.purpose,
                expires_ns=args.expires if args.expires is not None else now + 30 * 86400 * 10**9,
                raw=not args.derived_only,
                issued_ns=now,
            )
        except ConsentError as exc:
            return _fail("grant", str(exc))
        return _write("grant", args.out, s.to_json(), f"grant {open_grant(s).grant_id.hex()}")
    g = read_grant(args.grant, "--grant FILE (the grant to revoke)")
    if isinstance(g, int):
        return g
    if g.owner_key != owner.public_key:
        return _fail("grant", "this owner key did not sign that grant")
    return _write(
        "grant",
        args.out,
        new_revocation(owner, g.grant_id, now).to_json(),
        f"revocation of grant {g.grant_id.hex()}",
    )


def _write(command: str, out: str, data: bytes, what: str) -> int:
    try:
        Path(out).write_bytes(data + b"\n")
    except OSError as exc:
        return _fail(command, f"cannot write {out}: {exc.strerror}")
    print(f"wrote {out}: {what}")
    return 0


def cmd_consent(args: argparse.Namespace) -> int:
    """Keep and log owner-signed grants and revocations, as the API's POST endpoints do."""
    import msgspec

    cfg = load_config(args.config)
    svc = wiring.access_service(cfg)
    worst = 0
    try:
        for f in args.files:
            try:
                data = Path(f).read_bytes()
            except OSError as exc:
                worst = max(worst, _fail("consent", f"cannot read {f}: {exc.strerror}"))
                continue
            kind = "revocation" if _is_revocation(data) else "grant"
            a = svc.add_statement(kind, data)
            body = msgspec.json.decode(a.body)
            if a.status >= 400:
                why = (
                    f"refused ({body['refused']}): {body['detail']}"
                    if "refused" in body
                    else body.get("error", "")
                )
                worst = max(worst, _fail("consent", f"{f}: {why}"))
            else:
                print(
                    f"{f}: {kind} {'kept and logged' if body.get('log_index') is not None else 'already kept'}"
                    + (
                        f" (access log entry {body['log_index']})"
                        if body.get("log_index") is not None
                        else ""
                    )
                )
    finally:
        svc.close()
    return worst


def _is_revocation(data: bytes) -> bool:
    from schemas.consent import ConsentError, open_revocation, read_signed

    try:
        open_revocation(read_signed(data))
    except ConsentError:
        return False
    return True


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from ingest.ops.access import app

    cfg = load_config(args.config)
    listen = args.listen or cfg.consent.listen
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        return _fail("serve", f"--listen / [consent] listen is HOST:PORT, not {listen!r}", 2)
    svc = wiring.access_service(cfg, witnessed=True)
    print(f"data-access API on http://{listen} (access log {svc.log.location})", flush=True)
    try:
        web.run_app(app(svc), host=host or "127.0.0.1", port=int(port), print=None)  # type: ignore[arg-type]
    finally:
        svc.close()
    return 0


def cmd_accesses(args: argparse.Namespace) -> int:
    import json

    from common.times import iso_utc
    from ingest.ops.access import iter_access_proofs
    from schemas.consent import AccessProof, ConsentError, verify_access

    cfg = load_config(args.config)
    store = wiring.open_consent(cfg)
    log = wiring.open_access_log(cfg, wiring.operator_key(cfg))
    try:
        proofs = list(iter_access_proofs(store, log, args.device))
        refused = store.refusals()
    finally:
        store.close()
    if args.json:
        print(json.dumps(proofs, indent=1))
        return 0
    import msgspec

    op = wiring.operator_public_key(cfg)
    for p in proofs:
        ap = msgspec.convert(p, AccessProof)
        grant = ap.grant or {}
        from schemas.consent import Signed, open_grant

        owner = open_grant(
            Signed(bytes.fromhex(grant["statement"]), bytes.fromhex(grant["signature"]))
        ).owner_key
        try:
            rec = verify_access(ap, operator_key=op, origin=wiring.access_origin(cfg), owner_key=owner)
            ok = "proof OK"
        except ConsentError as exc:
            rec = None
            ok = f"PROOF FAILS: {exc}"
        if rec is not None:
            print(
                f"{iso_utc(rec.served_ns)}  grant {rec.grant_id.hex()}  grantee {rec.grantee_key_id.hex()}"
                f"  {rec.table} {iso_utc(rec.from_ns)} .. {iso_utc(rec.to_ns)}  {rec.rows} rows"
                f"  bundle {rec.bundle_sha256.hex()[:16]}…  access log entry {ap.log_index}: {ok}"
            )
        else:
            print(f"access log entry {ap.log_index}: {ok}")
    total = sum(refused.values())
    print(
        f"{len(proofs)} access(es) to device {args.device}; {total} refused request(s) in all"
        + (f" ({', '.join(f'{r} {n}' for r, n in sorted(refused.items()))})" if refused else "")
    )
    return 0


def cmd_verify_access(args: argparse.Namespace) -> int:
    import json

    import msgspec

    from common.times import iso_utc
    from schemas.consent import AccessProof, ConsentError, verify_access

    cfg = load_config(args.config)
    op = args.operator_key or wiring.operator_public_key(cfg)
    origin = args.origin or wiring.access_origin(cfg)
    try:
        items = json.loads(Path(args.file).read_text())
        proofs = [msgspec.convert(p, AccessProof) for p in (items if isinstance(items, list) else [items])]
    except (OSError, ValueError, msgspec.ValidationError) as exc:
        return _fail("verify-access", f"{args.file}: {exc}")
    bad = 0
    for ap in proofs:
        try:
            rec = verify_access(ap, operator_key=op, origin=origin, owner_key=args.owner_key)
            print(
                f"OK access log entry {ap.log_index}: {rec.rows} {rec.table} rows of {rec.device_id} served {iso_utc(rec.served_ns)} under grant {rec.grant_id.hex()}"
            )
        except ConsentError as exc:
            bad += 1
            print(f"FAIL access log entry {ap.log_index}: {exc}")
    return 1 if bad else 0


def register(sub: Any, operator_key_help: str) -> None:
    p = sub.add_parser("owners", help="vehicle owners and their history (docs/CONSENT.md)")
    p.add_argument("action", choices=["keygen", "set", "list"])
    p.add_argument("--device", help="a device id")
    p.add_argument(
        "--owner-key", type=cli_args.public_key, help="the owner's Ed25519 public key (hex or .pub)"
    )
    p.add_argument("--since", type=cli_args.instant_ns, help="the ownership starts then (default: now)")
    p.add_argument("--out", help="keygen: the new owner key file (PEM, 0600; its .pub beside it)")
    p.set_defaults(fn=cmd_owners)

    p = sub.add_parser("grant", help="an owner signs or revokes a grant (offline), or shows one")
    p.add_argument("action", choices=["new", "revoke", "show"])
    p.add_argument("file", nargs="?", help="show: the grant file")
    p.add_argument("--owner-key-file", help="the owner's private key (PEM)")
    p.add_argument("--grantee", type=cli_args.public_key, help="the grantee's Ed25519 public key")
    p.add_argument("--device", action="append", help="a device the grant covers (repeat)")
    p.add_argument("--kinds", help="comma-separated: battery, driving, position")
    p.add_argument(
        "--from", dest="from_ns", type=cli_args.instant_ns, help="records sampled from (default: all)"
    )
    p.add_argument(
        "--to", dest="to_ns", type=cli_args.instant_ns, help="records sampled until (default: a year ahead)"
    )
    p.add_argument("--expires", type=cli_args.instant_ns, help="no request answered after (default: 30 days)")
    p.add_argument("--purpose", default="unspecified", help="why the grantee may read the data")
    p.add_argument("--derived-only", action="store_true", help="only derived figures, never raw rows")
    p.add_argument("--grant", help="revoke: the grant file")
    p.add_argument("-o", "--out", help="where to write the signed statement (JSON)")
    p.set_defaults(fn=cmd_grant)

    p = sub.add_parser("consent", help="keep and log owner-signed grants and revocations (operator)")
    p.add_argument("action", choices=["add"])
    p.add_argument("files", nargs="+")
    p.set_defaults(fn=cmd_consent)

    p = sub.add_parser("serve", help="the data-access API: rows as proof bundles, within owner grants only")
    p.add_argument("--listen", help="host:port (default [consent] listen)")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("accesses", help="every access to a device's data, with its inclusion proof")
    p.add_argument("--device", required=True)
    p.add_argument("--json", action="store_true", help="the access proofs, for verify-access")
    p.set_defaults(fn=cmd_accesses)

    p = sub.add_parser("verify-access", help="check accesses offline: logged, and under a grant of yours")
    p.add_argument("file", help="the output of `telematics accesses --json`")
    p.add_argument("--owner-key", type=cli_args.public_key, required=True, help="your owner public key")
    p.add_argument("--operator-key", type=cli_args.public_key, help=operator_key_help)
    p.add_argument(
        "--origin", help="the access log's origin (default: the config's ledger origin + /accesses)"
    )
    p.set_defaults(fn=cmd_verify_access)
