"""`telematics`: everything off the vehicle (devices, ingest, query, gaps, sessions, prove,
verify-proof, audit, erase, ledger), plus the command groups other installed packages register under
the ``telematics.commands`` entry point group (the developer tools: stack, sim, demo, bench)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from common.argparser import OneLineParser
from common.config import ConfigError
from common.errors import TelematicsError
from common.times import iso_utc
from common.version import version
from ingest import cli_args, wiring
from ingest.config import Config, load_config

if TYPE_CHECKING:
    from collections.abc import Callable

    from ingest.ledger.local import LocalLedger
    from ingest.ops.proofs import Prover
    from ingest.storage.store import Store
    from schemas.crypto import SigningKey
    from schemas.proof import Bundle, Report


# Where other packages add commands: an entry point whose object is ``register(subparsers)``.
COMMAND_GROUP = "telematics.commands"


def _cfg(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _open_store(cfg: Config, command: str, *, read_only: bool = True) -> Store | None:
    """The store for a command; None (reason printed, one line) when it cannot be opened."""
    from ingest.storage.lake import LakeError, LakeSetupError
    from ingest.storage.store import StoreError

    never_ingested = " (nothing was ingested with this config yet: `telematics ingest` or `telematics demo`)"
    try:
        return wiring.open_store(cfg, read_only=read_only)
    except (StoreError, LakeError) as exc:
        if cfg.store.backend == "lake" and "creating a new DuckLake is explicitly disabled" in str(exc):
            print(f"telematics {command}: no lake at {wiring.catalog(cfg)}{never_ingested}", file=sys.stderr)
            return None
        if cfg.store.backend == "lake":
            hint = " (is the local stack up? `telematics stack up` starts its PostgreSQL)"
        elif not wiring.paths(cfg).store.exists():
            hint = never_ingested
        else:
            hint = " (is the ingest running? DuckDB allows one writer or several readers)"

        print(f"telematics {command}: {' '.join(str(exc).split())}{hint}", file=sys.stderr)
        return None
    except LakeSetupError as exc:
        print(f"telematics {command}: {exc}", file=sys.stderr)
        return None


def cmd_devices(args: argparse.Namespace) -> int:
    from ingest.storage.registry import RegistryError, RegistryRefused

    cfg = _cfg(args)
    try:
        reg = wiring.open_registry(cfg)
    except RegistryError as exc:
        print(f"telematics devices: {exc}", file=sys.stderr)
        return 1
    try:
        if args.action == "add":
            if args.public_key is None:
                print(
                    "telematics devices add: give --public-key HEX or --public-key FILE.pub", file=sys.stderr
                )
                return 2
            k = reg.add(args.public_key, label=args.label)
            print(f"registered device {k.device_id} key {k.key_id}")
        elif args.action == "revoke":
            n = reg.revoke(args.device_id, at=args.at)
            print(f"revoked {n} key(s) of device {args.device_id}")
        elif args.action == "rotate":
            if args.public_key is None:
                print(
                    "telematics devices rotate: give --public-key HEX or --public-key FILE.pub",
                    file=sys.stderr,
                )
                return 2
            k = reg.rotate(args.device_id, args.public_key, at=args.at)
            print(f"device {k.device_id}: key {k.key_id} valid from {k.valid_from}; earlier key(s) retired")
        else:
            for k in reg.all():
                print(
                    f"{k.device_id}  key={k.key_id}  {k.status:<7}  valid={k.validity()}  label={k.label or ''}"
                )
    except (RegistryError, RegistryRefused) as exc:
        print(f"telematics devices: {exc}", file=sys.stderr)
        return 1
    finally:
        reg.close()
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ingest.ledger.base import LedgerConflict, LedgerDamaged
    from ingest.pipeline.service import ROLES, RoleFailed, run_roles

    roles = [args.only] if args.only else list(ROLES)
    batch_log = Path(args.batch_log) if args.batch_log else None
    from ingest.storage.registry import RegistryError
    from ingest.storage.store import StoreError

    try:
        cfg = _cfg(args)
        if args.consumers < 1 or args.instance < 0:
            raise ConfigError("--consumers must be at least 1 and --instance at least 0")
        if (args.consumers > 1 or args.instance > 0) and cfg.store.backend != "lake":
            raise ConfigError(
                'several consumer processes need [store] backend = "lake" (a DuckDB file has one writer)'
            )
        if (args.consumers > 1 or args.instance > 0) and cfg.ledger.backend == "evm":
            raise ConfigError(
                "the EVM ledger backend anchors from one consumer process (one account's nonces)"
                " (docs/PRODUCTION.md, several consumers)"
            )
        services = wiring.roles(
            cfg, roles, batch_log=batch_log, passthrough=args.benchmark_passthrough, instance=args.instance
        )
        names = list(roles)
        if "consumer" in roles:
            logs = [
                "--log-level",
                "debug" if args.verbose else args.log_level,
                "--log-format",
                args.log_format,
            ]
            for i in range(1, args.consumers):
                services.append(wiring.consumer_process(args.config, args.instance + i, logs))
                names.append(f"consumer {args.instance + i}")
        asyncio.run(run_roles(services, names))
    except (LedgerConflict, LedgerDamaged, RegistryError, RoleFailed) as exc:
        print(f"telematics ingest: stopped: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        hint = (
            " (is another `telematics ingest` running on this store?)"
            if cfg.store.backend == "duckdb"
            else ""
        )
        print(f"telematics ingest: {exc}{hint}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"telematics ingest: {exc} (is the data directory writable?)", file=sys.stderr)
        return 1
    return 0


def _open_log(cfg: Config, *, sign: bool = False) -> LocalLedger:
    return wiring.open_log(cfg, wiring.operator_key(cfg) if sign else None)


def cmd_ledger(args: argparse.Namespace) -> int:
    from ingest.ledger.base import LedgerError
    from ingest.ledger.local import verify_extension

    cfg = _cfg(args)
    if args.action == "checkpoint":
        try:
            log = _open_log(cfg, sign=True)
            print(log.checkpoint(), end="")
        except LedgerError as exc:
            print(f"telematics ledger: {exc}", file=sys.stderr)
            return 1
        return 0
    pub = wiring.operator_public_key(cfg, args.operator_key)
    log = _open_log(cfg)
    report = log.verify(pub)
    for p in report.problems:
        print(p)
    cps = log.checkpoints()
    print(
        f"ledger {log.location}: {report.entries} entries, {len(cps)} checkpoints"
        f" (latest size {max(cps, default=0)}), {'OK' if report.ok else 'INVALID'}"
    )
    ok = report.ok
    if args.since:
        from pathlib import Path

        try:
            old, new = verify_extension(log, Path(args.since).read_text(), pub)
            print(
                f"checkpoint {new.size} is an extension of checkpoint {old.size} (consistency proof verified)"
            )
        except (LedgerError, OSError) as exc:
            print(f"NOT CONSISTENT: {exc}")
            ok = False
    return 0 if ok else 1


def _build_bundle(
    cfg: Config, command: str, build: Callable[[Prover, Store], Bundle]
) -> tuple[Bundle, SigningKey] | None:
    """Open the store, the registry and the operator's log, ``build`` a bundle and close them; None
    (the reason printed, one line) when the stored data cannot make it."""
    from ingest.ledger.base import LedgerError
    from ingest.ops.proofs import ProveError, Prover

    store = _open_store(cfg, command)
    if store is None:
        return None
    registry = wiring.open_registry(cfg)
    try:
        operator = wiring.operator_key(cfg)
        local = wiring.open_log(cfg, operator)
        prover = Prover(store, registry, local, operator, witness=wiring.open_witness(cfg, local))
        return build(prover, store), operator
    except (ProveError, LedgerError) as exc:
        print(f"telematics {command}: {exc}", file=sys.stderr)
        return None
    finally:
        store.close()
        registry.close()


def _checked(command: str, bundle: Bundle, operator: SigningKey) -> tuple[bytes, Report] | None:
    """The bundle's bytes and what the offline verifier a third party uses says of them; None (the
    problems printed) if it does not verify: nothing is written then."""
    from schemas.proof import encode_bundle, verify_bundle

    data = encode_bundle(bundle)
    rep = verify_bundle(data, operator_key=operator.public_key)
    if rep.ok:
        return data, rep
    for p in rep.problems:
        print(f"telematics {command}: the stored data does not prove: {p}", file=sys.stderr)
    print(f"telematics {command}: run `telematics audit`; no bundle written", file=sys.stderr)
    return None


def cmd_prove(args: argparse.Namespace) -> int:
    from ingest.ops.proofs import RowRef, claim_line, select_rows, table_name

    if args.complete and (args.device is None or args.from_ns is None or args.to_ns is None):
        print("telematics prove: --complete needs --device, --from and --to", file=sys.stderr)
        return 2
    if (
        not args.complete
        and args.device is not None
        and (args.seq is None or args.idx is None or not args.table)
    ):
        print("telematics prove: --device needs --seq, --idx and --table (or --complete)", file=sys.stderr)
        return 2

    def build(prover: Prover, store: Store) -> Bundle:
        if args.complete:
            return prover.complete(args.device, args.from_ns, args.to_ns)
        if args.device is not None:
            return prover.bundle([RowRef(table_name(args.table), args.device, args.seq, args.idx)])
        return prover.bundle(select_rows(store, args.table, args.where, args.limit, args.sample))

    built = _build_bundle(_cfg(args), "prove", build)
    if built is None:
        return 1
    bundle, operator = built
    checked = _checked("prove", bundle, operator)
    if checked is None:
        return 1
    data, rep = checked
    if args.out == "-":
        sys.stdout.buffer.write(data)
    else:
        from pathlib import Path

        Path(args.out).write_bytes(data)
        print(
            f"wrote {args.out}: {rep.records} records, {len(bundle.blocks)} blocks,"
            f" {len(bundle.batches)} batches, {len(bundle.evm)} chain anchors ({len(data):,} bytes)"
        )
        for c in rep.claims:
            print(claim_line(c))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    import msgspec

    from figures.score import score
    from ingest.ops.figures import declared_drops, driving_records, render_score

    if args.from_ns > args.to_ns:
        print("telematics score: --from is after --to", file=sys.stderr)
        return 2
    cfg = _cfg(args)
    if args.prove:
        return _prove_figure(cfg, "driving-score", args.device, args.from_ns, args.to_ns, args.prove)
    store = _open_store(cfg, "score")
    if store is None:
        return 1
    try:
        samples, triggers = driving_records(store, args.device, args.from_ns, args.to_ns)
        dropped = declared_drops(store, args.device, args.from_ns, args.to_ns)
    finally:
        store.close()
    if not samples:
        print(f"telematics score: no driving samples of device {args.device} in that period", file=sys.stderr)
        return 1
    sc = score(args.device, samples, triggers, args.from_ns, args.to_ns)
    if args.json:
        out = msgspec.to_builtins(sc)
        out["declared_drops"] = {"blocks": dropped[0], "records": dropped[1]}
        print(json.dumps(out, indent=1))
        return 0
    print(render_score(sc, args.show))
    if dropped[0]:
        print(
            f"  the vehicle declared {dropped[0]} block(s), {dropped[1]:,} record(s) dropped by its spool in this period"
        )
    return 0


def cmd_battery_passport(args: argparse.Namespace) -> int:
    import msgspec

    from figures.battery import passport
    from ingest.ops.figures import battery_records, render_passport

    cfg = _cfg(args)
    frm, to = args.from_ns or 0, args.to_ns or 2**63 - 2
    if args.prove:
        return _prove_figure(cfg, "battery-passport", args.device, frm, to, args.prove)
    store = _open_store(cfg, "battery-passport")
    if store is None:
        return 1
    try:
        samples = battery_records(store, args.device, frm, to)
    finally:
        store.close()
    if not samples:
        print(f"telematics battery-passport: no battery samples of device {args.device}", file=sys.stderr)
        return 1
    pp = passport(args.device, samples, frm, to)
    if args.plot:
        from ingest.ops.plots import plot_passport

        try:
            plot_passport(pp, args.plot)
        except ImportError:
            print("telematics battery-passport: --plot needs matplotlib (the 'bench' extra)", file=sys.stderr)
            return 1
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.json:
        print(json.dumps(msgspec.to_builtins(pp), indent=1))
        return 0
    print(render_passport(pp, samples[0].ts_ns, samples[-1].ts_ns, args.device))
    return 0


def _prove_figure(cfg: Config, kind: str, device: str, frm: int, to: int, out: str) -> int:
    """A completeness bundle of ``device`` over ``[frm, to]`` carrying figure ``kind`` computed from
    the bundle's own rows (what ``verify-proof --recompute-…`` repeats)."""
    import msgspec

    from figures.recompute import compute, headline
    from ingest.ops.proofs import claim_line
    from schemas.proof import Figure, bundle_records

    command = "score" if kind == "driving-score" else "battery-passport"
    built = _build_bundle(cfg, command, lambda prover, _store: prover.complete(device, frm, to))
    if built is None:
        return 1
    bundle, operator = built
    algorithm, params, result = compute(kind, device, bundle_records(bundle), frm, to)
    fig = Figure(kind, algorithm, device, frm, to, params, result)  # type: ignore[arg-type]
    checked = _checked(command, msgspec.structs.replace(bundle, figures=[fig]), operator)
    if checked is None:
        return 1
    data, rep = checked
    from pathlib import Path

    Path(out).write_bytes(data)
    print(
        f"wrote {out}: {algorithm} {headline(fig)} of device {device}, {rep.records:,} records ({len(data):,} bytes)"
    )
    for c in rep.claims:
        print(claim_line(c))
        lost_ns = sum(
            max(0, min(h.before_ns, to) - max(h.after_ns, frm))
            for h in c.holes
            if h.after_ns is not None and h.before_ns is not None
        )
        if c.holes:
            records = sum(h.records or 0 for h in c.holes)
            print(
                f"  the {kind} leaves out {lost_ns / 1e9:,.0f} s of the period that the vehicle declared"
                f" dropped ({records:,} records): it is computed from the rest"
            )
    return 0


def cmd_witness(args: argparse.Namespace) -> int:
    """A witness (its own key and state in --dir): ``init`` prints its public key, ``serve`` cosigns
    the listed logs' checkpoints over HTTP (C2SP tlog-witness add-checkpoint)."""
    from pathlib import Path

    from ingest.ledger.witness import Witness, serve

    state = Path(args.dir)
    state.mkdir(parents=True, exist_ok=True)
    w = Witness(state, args.name, dict(args.log or []))
    try:
        if args.action == "init":
            print(f"witness {args.name}: public key {w.key.public_key.hex()} (in {state / 'witness.pub'})")
            return 0
        if not w.logs:
            print(
                "telematics witness serve: no log to witness (--log-key ORIGIN=PUBLIC_KEY)", file=sys.stderr
            )
            return 2
        host, _, port = args.listen.rpartition(":")
        print(
            f"witness {args.name} ({w.key.public_key.hex()}) on http://{args.listen}: "
            + ", ".join(sorted(w.logs)),
            flush=True,
        )
        serve(w, host or "127.0.0.1", int(port))
        return 0
    finally:
        w.close()


def cmd_verify_proof(args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, datetime
    from pathlib import Path

    import msgspec

    from figures.recompute import headline
    from ingest.ops.proofs import claim_line
    from schemas.proof import bundle_figures, proven_rows, verify_bundle

    cfg = _cfg(args)
    pinned, pinned_from = None, ""
    if args.operator_key:
        pinned, pinned_from = args.operator_key, "--operator-key"
    elif wiring.paths(cfg).operator_pub.exists():
        pinned = wiring.operator_public_key(cfg)
        pinned_from = str(wiring.paths(cfg).operator_pub)
    try:
        data = Path(args.bundle).read_bytes()
    except OSError as exc:
        print(f"telematics verify-proof: cannot read {args.bundle}: {exc}", file=sys.stderr)
        return 2
    if args.min_witnesses > len(args.witness or []):
        print(
            f"telematics verify-proof: --min-witnesses {args.min_witnesses} but only"
            f" {len(args.witness or [])} --witness given",
            file=sys.stderr,
        )
        return 2
    rep = verify_bundle(
        data, operator_key=pinned, witnesses=args.witness or [], min_witnesses=args.min_witnesses
    )
    problems = list(rep.problems)
    if args.rpc and not problems:
        from ingest.ledger.evm import check_anchors_on_chain

        if not rep.anchors:
            problems.append(
                "--rpc: the bundle has no EVM anchor to check (made with the local ledger backend)"
            )
        problems += check_anchors_on_chain(args.rpc, rep.anchors, confirmations=args.confirmations)
    kinds = {
        k
        for k, on in (("driving-score", args.recompute_score), ("battery-passport", args.recompute_passport))
        if on
    }
    redone = []
    if kinds and not problems and rep.ok:
        from figures.recompute import recompute

        redone = recompute(data, rep.claims, kinds)
        problems += [f"figures[{r.index}] ({r.figure.kind}): {r.problem}" for r in redone if r.problem]
        if not redone:
            problems.append(f"--recompute: the bundle carries no {' or '.join(sorted(kinds))}")
    unpinned = pinned is None and not args.trust_bundle_key
    rows = proven_rows(data) if not problems and rep.ok else []
    if args.json:
        out = {
            "ok": not problems and rep.ok and not unpinned,
            "problems": problems,
            "pinned": pinned_from or None,
            "cosignatures": {
                str(n): [{"witness": c.name, "timestamp": c.timestamp} for c in cos]
                for n, cos in sorted(rep.cosignatures.items())
            },
        }
        claims = [
            {
                **msgspec.structs.asdict(c.claim),
                "covered_to_ns": c.covered_to_ns,
                "blocks": c.blocks,
                "records": c.records,
                "declared_holes": [h.__dict__ for h in c.holes],
            }
            for c in rep.claims
        ]
        print(json.dumps({**out, "complete": claims, "records": rows}, indent=1, default=str))
        return 0 if out["ok"] else 1
    for prob in problems:
        print(f"FAIL {prob}")
    if problems or not rep.ok:
        print(f"INVALID: {len(problems)} problem(s)")
        return 1
    cps = ", ".join(f"size {n} root {r.hex()[:16]}…" for n, r in sorted(rep.checkpoints.items()))
    print(f"OK: {rep.records} record(s) proven up to signed checkpoint(s) {cps}")
    for n, cos in sorted(rep.cosignatures.items()):
        names = ", ".join(
            f"{c.name} at {datetime.fromtimestamp(c.timestamp, UTC):%Y-%m-%dT%H:%M:%SZ}" for c in cos
        )
        print(f"    checkpoint {n} cosigned by {len(cos)} trusted witness(es): {names or 'none'}")
    for c in rep.claims:
        print(claim_line(c))
    for rc in redone:
        f = rc.figure
        print(
            f"RECOMPUTED {f.kind} ({f.algorithm}) of device {f.device_id}: {rc.headline}, identical to the bundle's"
        )
    for i, f in enumerate(bundle_figures(data)):
        if f.kind not in kinds:
            flag = "--recompute-score" if f.kind == "driving-score" else "--recompute-passport"
            print(f"  carries figures[{i}] {f.kind} ({f.algorithm}) {headline(f)}: not recomputed ({flag})")
    for r in rows[: args.show]:
        v = dict(r["values"])
        ts = v.pop("ts_ns", None)
        when = datetime.fromtimestamp(ts / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if ts else "-"
        shown = ", ".join(f"{k}={x:.9g}" if isinstance(x, float) else f"{k}={x}" for k, x in v.items())
        print(
            f"  {r['table']} device {r['device_id']} block {r['block_seq']} #{r['idx']} at {when}: {shown}"
            f"  [batch {r['batch_no']} -> ledger entry {r['ledger_entry']} -> checkpoint {r['checkpoint_size']}"
            + (f" -> EVM tx {r['evm_tx'][0][:18]}…" if r["evm_tx"] else "")
            + "]"
        )
    if len(rows) > args.show:
        print(f"  … {len(rows) - args.show} more (--show N, or --json for all)")
    if rep.anchors:
        where = (
            "checked on chain"
            if args.rpc
            else "signed by the operator; pass --rpc URL to check them on chain"
        )
        print(f"    {len(rep.anchors)} EVM anchor(s) ({where})")
    if pinned_from:
        print(f"    operator key pinned from {pinned_from}")
    elif args.trust_bundle_key:
        print("    operator key: the bundle's own (--trust-bundle-key); anyone could have made this bundle")
    if unpinned:
        print(
            "UNPINNED: the bundle verifies against the operator key it carries itself, which proves nothing"
            " about who made it: pass --operator-key (the operator's published key) or --trust-bundle-key"
        )
        return 1
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    import json

    from ingest.ops.audit import Auditor

    cfg = _cfg(args)
    store = _open_store(cfg, "audit")
    if store is None:
        return 1
    registry = wiring.open_registry(cfg)
    try:
        quiet = args.json or not sys.stderr.isatty()
        auditor = Auditor(
            store,
            registry,
            _open_log(cfg),
            wiring.operator_public_key(cfg, args.operator_key),
            progress=None if quiet else (lambda stage: print(f"audit: {stage}…", file=sys.stderr)),
        )
        rep = auditor.run()
    finally:
        store.close()
        registry.close()
    if args.json:
        print(json.dumps(rep.to_dict(), indent=1))
        return 0 if rep.ok else 1
    total = sum(rep.seconds.values())
    print(
        f"audited {rep.records:,} records, {rep.blocks:,} blocks ({rep.signatures:,} signatures),"
        f" {rep.batches:,} batches, {rep.anchors:,} anchors in {total:.2f}s"
        f" ({rep.records / total if total else 0:,.0f} records/s)"
    )
    print("  stages: " + ", ".join(f"{k} {v:.2f}s" for k, v in rep.seconds.items()))
    if rep.pending_anchor or rep.after_snapshot:
        print(
            f"  live: the ingest is writing; {rep.pending_anchor:,} batches of this snapshot are being"
            f" anchored, {rep.after_snapshot:,} ledger entries belong to batches committed after it"
        )
    if rep.erasures:
        print(
            f"  erased: {rep.erased_records:,} records in {rep.erased_blocks:,} blocks (signed erasure statements):"
        )
        for eid, dev, nb, nr in rep.erasures:
            print(f"    erasure {eid}: device {dev}, {nb} blocks, {nr} records")
    if rep.ok:
        print("0 findings: every row, block, batch and ledger entry verifies")
        return 0
    print(
        f"{len(rep.findings)} finding(s): " + ", ".join(f"{k} {n}" for k, n in sorted(rep.by_kind().items()))
    )
    for f in rep.findings[: args.max_findings]:
        print(f"  {f}")
    if len(rep.findings) > args.max_findings:
        print(f"  … {len(rep.findings) - args.max_findings} more (use --json for all)")
    return 1


def cmd_erase(args: argparse.Namespace) -> int:
    from ingest.ledger.base import LedgerError
    from ingest.ops.erase import EraseError, compact, erase_device

    cfg = _cfg(args)
    path = wiring.paths(cfg).store
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                "telematics erase: erasing cannot be undone; add --yes to erase without asking",
                file=sys.stderr,
            )
            return 2
        answer = input(f"erase every record of device {args.device}? this cannot be undone [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("telematics erase: nothing erased")
            return 1
    store = _open_store(cfg, "erase", read_only=False)
    if store is None:
        return 1
    try:
        e = erase_device(store, wiring.operator_key(cfg), args.device, reason=args.reason)
    except (EraseError, LedgerError) as exc:
        print(f"telematics erase: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(
        f"erasure {e.erasure_id}: deleted {e.records:,} records in {e.blocks:,} blocks of device {e.device_id};"
        " their block hashes and a signed erasure statement remain"
    )
    if cfg.store.backend == "lake":
        print("rewrote the lake's files: no data file and no snapshot holds the deleted rows")
    elif args.compact:
        compact(path)
        print(f"compacted {path}: deleted bytes no longer in the file")
    return 0


def cmd_maintain(args: argparse.Namespace) -> int:
    import time

    from ingest.ops.erase import EraseError, drop_older_than
    from ingest.ops.maintain import MaintainError, maintain

    cfg = _cfg(args)
    if args.drop_older_than_days is None and cfg.store.backend != "lake":
        print(
            "telematics maintain: the DuckDB file store has nothing to maintain (`erase --compact` rewrites it)"
        )
        return 0
    store = _open_store(cfg, "maintain", read_only=False)
    if store is None:
        return 1
    try:
        if args.drop_older_than_days is not None:
            days = args.drop_older_than_days
            cutoff = time.time_ns() - int(days * 86400e9)
            dry = not args.yes
            gone = drop_older_than(
                store,
                wiring.operator_key(cfg),
                cutoff,
                reason=f"retention: older than {days:g} days",
                dry_run=dry,
            )
            blocks, records = sum(e.blocks for e in gone), sum(e.records for e in gone)
            verb = "would drop" if dry else "dropped"
            print(
                f"retention: {verb} {records:,} records in {blocks:,} blocks of {len(gone):,} vehicles"
                f" older than {days:g} days (signed erasure statements; every other proof still verifies)"
            )
            if dry:
                print("retention: nothing changed; add --yes to drop them")
        if cfg.store.backend == "lake":
            rep = maintain(store, keep_hours=args.keep_hours, grace_minutes=args.grace_minutes, say=print)
            print(
                f"files {rep.files_before:,} -> {rep.files_after:,}, snapshots {rep.snapshots_before:,}"
                f" -> {rep.snapshots_after:,}"
            )
    except (MaintainError, EraseError) as exc:
        print(f"telematics maintain: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ingest.ops import status
    from ingest.pipeline.consumer import read_status_file

    cfg = _cfg(args)
    k, m = cfg.kafka, cfg.mqtt
    services: dict[str, tuple[str, bool]] = {
        "mqtt": (f"{m.host}:{m.port}", status.reachable(m.host, m.port)),
        "kafka": (k.bootstrap, status.reachable(k.host, k.port)),
    }
    if cfg.store.backend == "lake":
        cat = wiring.catalog(cfg)
        kv = dict(p.split("=", 1) for p in cat.split() if "=" in p)
        services["postgresql"] = (
            f"{kv.get('host', '?')}:{kv.get('port', '5432')}",
            status.reachable(kv.get("host", "127.0.0.1"), int(kv.get("port", "5432"))),
        )
    roles: dict[str, dict[str, object] | None] = {"bridge": read_status_file(wiring.paths(cfg).bridge_status)}
    p0 = wiring.status_path(cfg, 0)
    for i, path in enumerate([p0, *sorted(p0.parent.glob(f"{p0.stem}-*{p0.suffix}"))]):
        st = read_status_file(path)
        if st is not None or i == 0:
            roles["consumer" if i == 0 else f"consumer {Path(path).stem.rsplit('-', 1)[-1]}"] = st
    for st in roles.values():
        if st is not None:
            st["alive"] = status.alive(st.get("pid"))
    view: dict[str, object] = {
        "services": services,
        "stack": status.stack_processes(cfg.path(cfg.stack.state_dir)),
        "roles": roles,
    }
    high = status.end_offsets(k.bootstrap, k.blocks_topic) if services["kafka"][1] else None
    store = _open_store(cfg, "status") if services.get("postgresql", ("", True))[1] else None
    if store is None:
        view["store"] = None
        view["store_error"] = (
            "the lake's catalog (PostgreSQL) is down"
            if not services.get("postgresql", ("", True))[1]
            else "not readable (the reason is on stderr)"
        )
    else:
        try:
            view["store"] = status.store_view(store, k.blocks_topic, high)
        finally:
            store.close()
    if args.json:
        print(json.dumps(view, indent=1, default=str))
    else:
        print(status.render(view))
    return 0


def cmd_gaps(args: argparse.Namespace) -> int:
    from ingest.ops.gaps import broker_resets, gap_report

    cfg = _cfg(args)
    store = _open_store(cfg, "gaps")
    if store is None:
        return 1
    try:
        segs = gap_report(store.con, args.device)
        resets = broker_resets(store.con)
    finally:
        store.close()
    if args.json:
        print(
            json.dumps(
                {
                    "gaps": [{**vars(s), "blocks": s.blocks} for s in segs],
                    "broker_resets": [vars(r) for r in resets],
                },
                indent=2,
            )
        )
        return 0
    for r in resets:
        print(
            f"ALARM: the broker's log of {r.topic}/{r.partition} went backwards ({r.kind}: expected offset"
            f" {r.expected_offset}, broker at {r.broker_offset}) at {iso_utc(r.detected_at)}: acknowledged"
            " messages may be lost; gaps below may be broker losses"
        )
    if not segs:
        print(
            "no gaps: every device's blocks are stored from sequence 0 to its head and to what its sessions announced"
        )
        return 0
    print(f"{'device':32}  {'from':>8}  {'to':>8}  {'blocks':>6}  status")
    for s in segs:
        what = s.status
        if s.status == "dropped_on_vehicle":
            what += f" ({s.reason}; declared in block {s.declared_in}, {s.declared_records} records)"
        if s.tail:
            what += " (after the last stored block; announced by a session message)"
        print(f"{s.device_id:32}  {s.from_seq:8}  {s.to_seq:8}  {s.blocks:6}  {what}")
    dropped = sum(s.blocks for s in segs if s.status == "dropped_on_vehicle")
    missing = sum(s.blocks for s in segs if s.status == "missing")
    print(
        f"{dropped} blocks dropped on the vehicle (declared, signed), {missing} missing without a declaration"
    )
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    store = _open_store(cfg, "sessions")
    if store is None:
        return 1
    try:
        where = "WHERE device_id = ?" if args.device else ""
        rows = store.con.execute(
            f"SELECT device_id, boot, session, started_at, first_seq, ended_at, end_reason, agent_version"
            f" FROM sessions {where} ORDER BY device_id, boot, session LIMIT {int(args.limit)}",
            [args.device] if args.device else [],
        ).fetchall()
    finally:
        store.close()
    print(f"{'device':32}  {'boot':>4}  {'sess':>4}  {'started (vehicle clock)':26}  {'from seq':>8}  end")
    for dev, boot, sess, start, seq, end, reason, _ver in rows:
        ended = f"{reason} at {end}" if reason else "open"
        print(f"{dev:32}  {boot:4}  {sess:4}  {start!s:26}  {seq if seq is not None else '-':>8}  {ended}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ingest.ops import query

    if args.format == "parquet" and not args.out:
        print("telematics query: --format parquet needs --out FILE", file=sys.stderr)
        return 2
    if not args.sql.strip():
        print(f"telematics query: {query.EMPTY}", file=sys.stderr)
        return 2
    cfg = _cfg(args)
    store = _open_store(cfg, "query")
    if store is None:
        return 1
    try:
        query.load_figures(store.con)  # vt_score, vt_battery, …: docs/ANALYSTS.md §3
        if args.format == "parquet":
            n = query.write_parquet(store.con, args.sql, Path(args.out))
            print(f"wrote {args.out}: {n:,} rows", file=sys.stderr)
            return 0
        cols, rows = query.run(store.con, args.sql)
    except query.QueryError as exc:  # the statement is the user's: a usage mistake
        print(f"telematics query: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    text = query.render(args.format, cols, rows)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}: {len(rows):,} rows", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


OPERATOR_KEY_HELP = (
    "pin the operator's (ingest's) Ed25519 public key: 64 hex digits or its .pub file;"
    " default: ingest.key.pub of the config, if any"
)


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="telematics", description=__doc__)
    ap.add_argument("--config", help="TOML config (default: $TELEMATICS_CONFIG, else embedded defaults)")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging (= --log-level debug)")
    ap.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], default="info", help="default info"
    )
    ap.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="json: one object per line (ts, level, logger, msg)",
    )
    ap.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("devices", help="the device registry")
    dsub = p.add_subparsers(dest="action", required=True)
    a = dsub.add_parser("add", help="register a device key")
    a.add_argument(
        "--public-key",
        "--key-file",
        dest="public_key",
        type=cli_args.public_key,
        help="the device's Ed25519 public key: 64 hex digits, or the .pub file `edge-agent keygen` wrote",
    )
    a.add_argument("--label")
    dsub.add_parser("list", help="list registered keys")
    r = dsub.add_parser("revoke", help="revoke a device's keys: blocks stamped from --at on are rejected")
    r.add_argument("device_id")
    r.add_argument(
        "--at",
        type=cli_args.instant_ns,
        help="from when (device clock) the keys are distrusted: ISO 8601 (2026-12-01T10:00Z) or ns; default now",
    )
    r = dsub.add_parser("rotate", help="retire a device's key and register its new one, valid from --at")
    r.add_argument("device_id")
    r.add_argument(
        "--public-key",
        "--key-file",
        dest="public_key",
        type=cli_args.public_key,
        help="the new Ed25519 public key: 64 hex digits, or the .pub file `edge-agent keygen` wrote",
    )
    r.add_argument(
        "--at",
        type=cli_args.instant_ns,
        help="when (device clock) the new key takes over: ISO 8601 (2026-12-01T10:00Z) or ns; default now",
    )
    p.set_defaults(fn=cmd_devices)

    p = sub.add_parser("ingest", help="run the MQTT->Kafka bridge and the verifying consumer")
    p.add_argument("--only", choices=["bridge", "consumer"], help="run one role only")
    p.add_argument(
        "--consumers",
        type=int,
        default=1,
        metavar="N",
        help='consumer processes sharing the partitions (needs [store] backend = "lake")',
    )
    p.add_argument(
        "--instance",
        type=int,
        default=0,
        metavar="I",
        help="this consumer's number among several on one data directory (its status file)",
    )
    p.add_argument(
        "--batch-log", help="append one JSON line per stored batch (size; built, committed, anchored times)"
    )
    # The load benchmark's baseline (bench/e2e.py): stores blocks WITHOUT verifying them. Not for use.
    p.add_argument("--benchmark-passthrough", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_ingest)

    p = sub.add_parser(
        "status",
        help="services, roles, consumer lag per partition, batches waiting for anchors, last rejections",
    )
    p.add_argument("--json", action="store_true", help="machine-readable")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser(
        "maintain",
        help="compact the lake: flush inlined rows, merge files, expire old snapshots, delete old files",
    )
    p.add_argument(
        "--keep-hours", type=float, default=24.0, help="time travel reaches back this far (default 24)"
    )
    p.add_argument(
        "--grace-minutes",
        type=float,
        default=10.0,
        help="unreferenced files are deleted only after this long (readers finish; default 10)",
    )
    p.add_argument(
        "--drop-older-than-days",
        type=float,
        metavar="N",
        help="retention: erase blocks older than N days (signed statements, like `erase`); with --yes only",
    )
    p.add_argument("--yes", action="store_true", help="really drop (without it: say what would go)")
    p.set_defaults(fn=cmd_maintain)

    p = sub.add_parser("gaps", help="missing block sequence numbers per vehicle: declared drops vs missing")
    p.add_argument("--device", help="one device id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_gaps)
    p = sub.add_parser("sessions", help="vehicle sessions: births, deaths (connection lost) and shutdowns")
    p.add_argument("--device", help="one device id")
    p.add_argument("--limit", type=int, default=200)
    p.set_defaults(fn=cmd_sessions)
    p = sub.add_parser("query", help="run one SQL statement on the DuckDB store (read-only)")
    p.add_argument("sql")
    p.add_argument(
        "--format",
        choices=["table", "csv", "json", "parquet"],
        default="table",
        help="aligned table (default), CSV, a JSON array of objects, or a Parquet file (needs --out)",
    )
    p.add_argument("-o", "--out", help="write the result to this file instead of standard output")
    p.set_defaults(fn=cmd_query)

    p = sub.add_parser("ledger", help="verify the ledger log, or print its latest signed checkpoint")
    p.add_argument("action", choices=["verify", "checkpoint"])
    p.add_argument(
        "--operator-key",
        "--public-key",
        dest="operator_key",
        type=cli_args.public_key,
        help=OPERATOR_KEY_HELP,
    )
    p.add_argument("--since", help="a checkpoint note you kept: verify the latest checkpoint extends it")
    p.set_defaults(fn=cmd_ledger)

    from ingest import cli_consent

    cli_consent.register(sub, OPERATOR_KEY_HELP)

    p = sub.add_parser("witness", help="run an independent witness that cosigns a log's checkpoints")
    p.add_argument("action", choices=["init", "serve"])
    p.add_argument("--dir", required=True, help="the witness's own key and state (created if missing)")
    p.add_argument(
        "--name",
        required=True,
        type=cli_args.key_name,
        help="its key name in cosignature lines, e.g. witness.example/w1",
    )
    p.add_argument(
        "--log-key",
        action="append",
        dest="log",
        type=cli_args.origin_key,
        metavar="ORIGIN=KEY",
        help="a log to witness: its checkpoint origin and the operator's hex public key (repeat)",
    )
    p.add_argument("--listen", default="127.0.0.1:7381", help="host:port (default 127.0.0.1:7381)")
    p.set_defaults(fn=cmd_witness)

    p = sub.add_parser("prove", help="write a self-contained proof bundle for selected rows (docs/PROOFS.md)")
    p.add_argument("--table", help="driving or battery (default: both)")
    p.add_argument("--where", help='SQL filter on the table, e.g. "speed_mps > 30"')
    p.add_argument("--limit", type=int, default=10, help="at most this many rows (default 10)")
    p.add_argument("--sample", action="store_true", help="a random sample of the matching rows")
    p.add_argument(
        "--device", help="one row by key: device id (with --seq, --idx, --table); or with --complete"
    )
    p.add_argument(
        "--complete",
        action="store_true",
        help="every block --device sealed from --from to --to, with all their records (vt-proof/2)",
    )
    p.add_argument("--from", dest="from_ns", type=cli_args.instant_ns, help="with --complete: ISO 8601 or ns")
    p.add_argument("--to", dest="to_ns", type=cli_args.instant_ns, help="with --complete: ISO 8601 or ns")
    p.add_argument("--seq", type=int, help="block sequence number of the row")
    p.add_argument("--idx", type=int, help="position of the row in its block")
    p.add_argument("-o", "--out", default="proof.json", help="output file, - for stdout (default proof.json)")
    p.set_defaults(fn=cmd_prove)

    p = sub.add_parser(
        "score", help="a vehicle's driving score over a period, with its trips and events (docs/SCORING.md)"
    )
    p.add_argument("--device", required=True, help="device id")
    p.add_argument("--from", dest="from_ns", required=True, type=cli_args.instant_ns, help="ISO 8601 or ns")
    p.add_argument("--to", dest="to_ns", required=True, type=cli_args.instant_ns, help="ISO 8601 or ns")
    p.add_argument("--json", action="store_true", help="everything, as JSON")
    p.add_argument("--show", type=int, default=20, help="trips and events to print (default 20)")
    p.add_argument(
        "--prove", metavar="FILE", help="write a completeness bundle carrying the score (vt-proof/2)"
    )
    p.set_defaults(fn=cmd_score)

    p = sub.add_parser(
        "battery-passport", help="a vehicle's battery life-cycle figures, BatteryPass names (docs/BATTERY.md)"
    )
    p.add_argument("--device", required=True, help="device id")
    p.add_argument(
        "--from", dest="from_ns", type=cli_args.instant_ns, help="ISO 8601 or ns (default: the first sample)"
    )
    p.add_argument(
        "--to", dest="to_ns", type=cli_args.instant_ns, help="ISO 8601 or ns (default: the last sample)"
    )
    p.add_argument("--json", action="store_true", help="everything, as JSON")
    p.add_argument("--plot", help="also draw SoH, throughput and charging over time into this PNG")
    p.add_argument(
        "--prove", metavar="FILE", help="write a completeness bundle carrying the passport (vt-proof/2)"
    )
    p.set_defaults(fn=cmd_battery_passport)

    p = sub.add_parser("verify-proof", help="verify a proof bundle offline (no DuckDB needed)")
    p.add_argument("bundle")
    p.add_argument("--operator-key", type=cli_args.public_key, help=OPERATOR_KEY_HELP)
    p.add_argument(
        "--trust-bundle-key",
        action="store_true",
        help="accept the operator key the bundle carries (proves the bundle is consistent, not who made it)",
    )
    p.add_argument(
        "--witness",
        action="append",
        type=cli_args.cosigner,
        metavar="NAME=KEY",
        help="a witness you trust: its name and hex Ed25519 public key (repeat for several)",
    )
    p.add_argument(
        "--min-witnesses",
        type=int,
        default=0,
        metavar="K",
        help="require valid cosignatures by at least K of the --witness keys on every checkpoint",
    )
    p.add_argument("--rpc", help="also check each EVM anchor transaction on this JSON-RPC node")
    p.add_argument("--confirmations", type=int, default=1, help="with --rpc: required confirmations")
    p.add_argument("--show", type=int, default=20, help="proven records to print (default 20)")
    p.add_argument("--json", action="store_true", help="every proven record with its values, as JSON")
    p.add_argument(
        "--recompute-score", action="store_true", help="recompute the bundle's driving scores from its rows"
    )
    p.add_argument(
        "--recompute-passport",
        action="store_true",
        help="recompute the bundle's battery passports from its rows",
    )
    p.set_defaults(fn=cmd_verify_proof)

    p = sub.add_parser("audit", help="recompute every leaf, root, signature and ledger link from DuckDB")
    p.add_argument("--operator-key", type=cli_args.public_key, help=OPERATOR_KEY_HELP)
    p.add_argument("--json", action="store_true", help="the full report as JSON")
    p.add_argument("--max-findings", type=int, default=50, help="findings to print (default 50)")
    p.set_defaults(fn=cmd_audit)

    p = sub.add_parser("erase", help="erase a vehicle's records; every other proof keeps verifying")
    p.add_argument("--device", required=True, help="device id")
    p.add_argument("--reason", default="erasure request", help="recorded in the signed erasure statement")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--compact",
        action="store_true",
        help="then rewrite the DuckDB file so no deleted bytes remain (the lake always rewrites its files)",
    )
    p.set_defaults(fn=cmd_erase)
    for ep in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError:  # a command group whose package is not installed
            continue
        register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(cli_args.hoist_global_options(sys.argv[1:] if argv is None else argv))
    handler = logging.StreamHandler()
    handler.setFormatter(
        cli_args.JsonFormatter()
        if args.log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else getattr(logging, args.log_level.upper()), handlers=[handler]
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        print(f"telematics: configuration error: {exc}", file=sys.stderr)
        return 2
    except TelematicsError as exc:  # every error of ours is one line (common/errors.py)
        print(f"telematics {args.cmd}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
