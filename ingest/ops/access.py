"""The data-access API (``telematics serve``): a grantee fetches rows as proof bundles, within an
active owner grant only, and every answer it serves is first written to the access log.

Endpoints (docs/CONSENT.md 4):

* ``POST /v1/grants``, ``POST /v1/revocations``: an owner-signed statement
  (``{"statement": hex, "signature": hex}``); checked, kept, and logged.
* ``GET /v1/rows?grant=G&device=D&table=T&from=NS&to=NS[&limit=N]``, signed by the grantee
  (``X-VT-Key``, ``X-VT-Time``, ``X-VT-Signature`` over ``schemas.consent.request_message``):
  a vt-proof/1 bundle of at most N anchored rows (default 100, at most 1,000), oldest first.

The access log is a second signed Merkle log of the ledger's format (its own file and origin,
``<[ledger] origin>/accesses``, the same operator key, witnessed like the ledger): entry ``i``
anchors, under number = the time it was logged (ns), the SHA-256 digest of a grant, a revocation
or an access record, with ``blocks`` = the rows served (1 for a statement: the format needs ≥ 1). The digests reveal
nothing; the records themselves stay in the operator's consent store, where ``telematics
accesses`` shows them to the owner with their inclusion proofs.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import msgspec

from common.errors import Retryable, TelematicsError
from ingest.ledger.local import LocalLedger
from ingest.ops.proofs import ProveError, Prover, RowRef
from ingest.storage.consent import ConsentStore, OwnershipError
from ingest.storage.store import Store, StoreError
from schemas import crypto
from schemas.consent import (
    FIGURES,
    MAX_CLOCK_SKEW_NS,
    AccessRecord,
    ConsentError,
    Grant,
    Ownership,
    Query,
    Reason,
    Refused,
    Released,
    access_digest,
    access_record_bytes,
    judge,
    open_grant,
    open_revocation,
    read_signed,
    request_message,
)
from schemas.crypto import TAG_GRANT, TAG_REVOCATION
from schemas.proof import encode_bundle, verify_bundle

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024
MAX_ROWS = 1000
DEFAULT_ROWS = 100
_STATUS = {
    Reason.BAD_REQUEST: 400,
    Reason.BAD_REQUEST_SIGNATURE: 401,
    Reason.STALE_REQUEST: 401,
    Reason.UNKNOWN_GRANT: 404,
    Reason.RATE_LIMITED: 429,
}


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _refusal(r: Refused) -> Answer:
    return Answer(
        _STATUS.get(r.reason, 403), msgspec.json.encode({"refused": str(r.reason), "detail": r.detail})
    )


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per grantee key: ``rate`` requests per second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[bytes, _Bucket] = {}

    def allow(self, key: bytes, now: float) -> bool:
        if len(self._buckets) > 10_000:  # forget keys that have refilled: new keys cost no memory for long
            full = self.burst / self.rate
            self._buckets = {k: b for k, b in self._buckets.items() if now - b.at < full}
        b = self._buckets.setdefault(key, _Bucket(float(self.burst), now))
        b.tokens = min(float(self.burst), b.tokens + (now - b.at) * self.rate)
        b.at = now
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True


class Provers(Protocol):
    """Where the service takes a prover, and the store it reads, for one request."""

    def open(self) -> AbstractContextManager[tuple[Prover, Store]]: ...
    def close(self) -> None: ...


class AccessService:
    """The API's logic, synchronous (the HTTP layer runs it on a thread, one request at a time)."""

    def __init__(
        self,
        consent: ConsentStore,
        access_log: LocalLedger,
        provers: Provers,
        *,
        rate: float = 5.0,
        burst: int = 20,
    ) -> None:
        self.consent = consent
        self.log = access_log
        self.provers = provers
        self.limiter = RateLimiter(rate, burst)
        self._lock = threading.Lock()
        self._last = 0  # the last access log entry number this process used

    def close(self) -> None:
        """Close the consent store, the access log (its last checkpoint offered to the witnesses)
        and the provers' reader."""
        try:
            self.provers.close()
        finally:
            try:
                self.consent.close()
            finally:
                self.log.close()

    def _log(self, digest: bytes, rows: int) -> int:
        """Append a digest to the access log (fsynced) and return its entry index. The entry's number
        is the time in ns, made distinct within this process."""
        with self._lock:
            self._last = max(time.time_ns(), self._last + 1)
            number = self._last
        try:
            return self.log.anchor(number, digest, rows).index
        except TelematicsError as exc:
            raise LogUnavailable(str(exc)) from exc

    # -- statements ---------------------------------------------------------------------------------
    def add_statement(self, kind: str, body: bytes) -> Answer:
        """Keep an owner-signed grant or revocation: checked, logged, then kept (so nothing takes
        effect unlogged)."""
        try:
            s = read_signed(body)
            if kind == "grant":
                g = open_grant(s)
                now = time.time_ns()
                for d in g.devices:
                    _check_owner(g, d, self.consent.owner(d))
                if self.consent.kept_grant(g.grant_id, s):
                    return Answer(200, msgspec.json.encode({"grant": g.grant_id.hex(), "new": False}))
                index = self._log(crypto.tagged_hash(TAG_GRANT, s.statement + s.signature), 1)
                self.consent.add_grant(g.grant_id, s, index)
                log.info(
                    "grant %s kept (access log entry %d, %d s to expiry)",
                    g.grant_id.hex(),
                    index,
                    (g.expires_ns - now) // 10**9,
                )
                return Answer(201, msgspec.json.encode({"grant": g.grant_id.hex(), "log_index": index}))
            r = open_revocation(s)
            if self.consent.revoked(r.grant_id, r.owner_key):
                return Answer(200, msgspec.json.encode({"revoked": r.grant_id.hex(), "new": False}))
            kept = self.consent.grant(r.grant_id)
            if kept is not None and open_grant(kept).owner_key != r.owner_key:
                raise Refused(Reason.NOT_OWNER, "the revocation is not signed by the grant's owner")
            index = self._log(crypto.tagged_hash(TAG_REVOCATION, s.statement + s.signature), 1)
            self.consent.add_revocation(r.grant_id, r.owner_key, s, index)
            log.info("grant %s revoked (access log entry %d)", r.grant_id.hex(), index)
            return Answer(201, msgspec.json.encode({"revoked": r.grant_id.hex(), "log_index": index}))
        except (ConsentError, OwnershipError) as exc:
            return self._refuse(Refused(Reason.BAD_GRANT, str(exc)))
        except Refused as r:
            return self._refuse(r)
        except LogUnavailable as exc:
            return _unavailable("access log", exc)

    def _refuse(self, r: Refused) -> Answer:
        self.consent.refuse(str(r.reason))
        log.info("refused: %s %s", r.reason, r.detail)
        return _refusal(r)

    # -- rows ---------------------------------------------------------------------------------------
    def rows(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        """``GET /v1/rows``: a proof bundle of the rows."""
        return self._serve(method, target, headers, body, figure=False)

    def figures(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        """``GET /v1/figures``: a driving score or a battery passport computed from the rows."""
        return self._serve(method, target, headers, body, figure=True)

    def _serve(
        self, method: str, target: str, headers: dict[str, str], body: bytes, *, figure: bool
    ) -> Answer:
        try:
            q, limit, grant_id = _parse_query(target, figure=figure)
            key = self._authenticate(method, target, headers, body)
            if not self.limiter.allow(key, time.monotonic()):
                raise Refused(Reason.RATE_LIMITED, "too many requests for this key; slow down")
            kept = self.consent.grant(grant_id)
            if kept is None:
                raise Refused(Reason.UNKNOWN_GRANT, f"no grant {grant_id.hex()}")
            try:
                g = open_grant(kept)
            except ConsentError as exc:
                raise Refused(Reason.BAD_GRANT, str(exc)) from None
            judge(
                g,
                requester_key=key,
                query=q,
                owner=self.consent.owner(q.device_id),
                revoked=self.consent.revoked(grant_id, g.owner_key),
                now_ns=time.time_ns(),
            )
        except Refused as r:
            return self._refuse(r)
        try:
            data, n = self._figure(q) if figure else self._bundle(q, limit)
        except ProveError as exc:
            return Answer(404, msgspec.json.encode({"error": str(exc)}))
        except StoreError as exc:  # the catalog down, the DuckDB file held by the ingest: try later
            return _unavailable("store", exc)
        record = AccessRecord(
            1,
            grant_id,
            bytes.fromhex(crypto.key_id_for(key)),
            q.device_id,
            q.table,
            q.released,
            q.from_ns,
            q.to_ns,
            n,
            hashlib.sha256(data).digest(),
            time.time_ns(),
        )
        rb = access_record_bytes(record)
        access_id = self.consent.add_access(rb, record)  # kept first: a logged access always has its record
        try:
            index = self._log(access_digest(rb), n)  # logged before the answer leaves
        except LogUnavailable as exc:
            self.consent.forget_access(access_id)
            return _unavailable("access log", exc)
        self.consent.logged(access_id, index)
        return Answer(200, data, headers={"X-VT-Access-Index": str(index), "X-VT-Access-Record": rb.hex()})

    def _figure(self, q: Query) -> tuple[bytes, int]:
        """The figure as JSON and the number of rows it was computed from."""
        from figures.battery import passport
        from figures.score import score
        from ingest.ops.figures import battery_records, driving_records

        with self.provers.open() as (_, store):
            if q.released == "driving-score":
                samples, triggers = driving_records(store, q.device_id, q.from_ns, q.to_ns)
                fig: object = score(q.device_id, samples, triggers, q.from_ns, q.to_ns) if samples else None
            else:
                samples = battery_records(store, q.device_id, q.from_ns, q.to_ns)  # type: ignore[assignment]
                fig = passport(q.device_id, samples, q.from_ns, q.to_ns) if samples else None  # type: ignore[arg-type]
        if fig is None:
            raise ProveError("no rows of that device in that range")
        return msgspec.json.encode(fig), len(samples)

    def _authenticate(self, method: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
        try:
            key = bytes.fromhex(headers["x-vt-key"])
            t = int(headers["x-vt-time"])
            sig = bytes.fromhex(headers["x-vt-signature"])
        except (KeyError, ValueError):
            raise Refused(
                Reason.BAD_REQUEST_SIGNATURE, "the request needs X-VT-Key, X-VT-Time and X-VT-Signature"
            ) from None
        if not 0 <= t < 2**63:
            raise Refused(Reason.BAD_REQUEST_SIGNATURE, "X-VT-Time is not a time in ns")
        msg = request_message(method, target, t, hashlib.sha256(body).digest())
        if len(key) != crypto.PUBLIC_KEY_SIZE or not crypto.verify(key, msg, sig):
            raise Refused(Reason.BAD_REQUEST_SIGNATURE, "X-VT-Signature does not verify with X-VT-Key")
        now = time.time_ns()
        if abs(now - t) > MAX_CLOCK_SKEW_NS:
            raise Refused(
                Reason.STALE_REQUEST, f"X-VT-Time is {abs(now - t) // 10**9} s from the server's clock"
            )
        if not self.consent.first_use(sig, now, 2 * MAX_CLOCK_SKEW_NS):
            raise Refused(Reason.STALE_REQUEST, "this signed request was already answered (a replay)")
        return key

    def _bundle(self, q: Query, limit: int) -> tuple[bytes, int]:
        with self.provers.open() as (prover, store):
            rows = store.con.execute(
                f"SELECT block_seq, idx FROM {q.table} r WHERE device_id = ?"
                " AND ts BETWEEN make_timestamp_ns(?) AND make_timestamp_ns(?)"
                " AND EXISTS (SELECT 1 FROM blocks b JOIN anchors a USING (batch_no)"
                " WHERE b.device_id = r.device_id AND b.seq = r.block_seq)"
                " ORDER BY ts, block_seq, idx LIMIT ?",
                [q.device_id, q.from_ns, q.to_ns, limit],
            ).fetchall()
            if not rows:
                raise ProveError("no anchored rows of that device in that range")
            bundle = prover.bundle([RowRef(q.table, q.device_id, int(s), int(i)) for s, i in rows])
        data = encode_bundle(bundle)
        rep = verify_bundle(data, operator_key=prover.operator.public_key)
        if not rep.ok:
            raise ProveError(f"the stored data does not prove: {'; '.join(rep.problems[:3])}")
        return data, len(rows)


class LogUnavailable(Retryable):
    """The access log could not take the entry: nothing is served or kept."""


def _unavailable(what: str, exc: Exception) -> Answer:
    """503: ``what`` (the access log, the store) could not be used, so nothing was served or logged."""
    log.error("the %s is unavailable, request not served: %s", what, exc)
    detail = " ".join(str(exc).split())
    return Answer(
        503, msgspec.json.encode({"error": f"the {what} is unavailable; nothing was served ({detail})"})
    )


def _check_owner(g: Grant, device_id: str, owner: Ownership | None) -> None:
    """A grant counts only while its signer owns the device, and only if signed during that ownership."""
    if owner is None or owner.owner_key != g.owner_key:
        raise Refused(Reason.NOT_OWNER, f"the grant's signer does not own device {device_id} now")
    if g.issued_ns < owner.since_ns:
        raise Refused(
            Reason.NOT_OWNER, f"the grant was signed before its signer's current ownership of {device_id}"
        )


def _parse_query(target: str, *, figure: bool) -> tuple[Query, int, bytes]:
    qs = parse_qs(urlsplit(target).query, strict_parsing=False)

    def one(name: str) -> str:
        v = qs.get(name)
        if not v or len(v) != 1:
            raise Refused(Reason.BAD_REQUEST, f"query parameter {name!r} is required once")
        return v[0]

    try:
        grant_id = bytes.fromhex(one("grant"))
        if figure:
            name = one("figure")
            if name not in FIGURES:
                raise Refused(Reason.BAD_REQUEST, f"figure is one of {', '.join(FIGURES)}, not {name!r}")
            released: Released = name  # type: ignore[assignment]
            table = FIGURES[name][0]
        else:
            released, table = "rows", one("table")
        q = Query(one("device"), table, int(one("from")), int(one("to")), released)
        limit = int(qs.get("limit", [str(DEFAULT_ROWS)])[0])
    except ValueError as exc:
        raise Refused(Reason.BAD_REQUEST, f"malformed query: {exc}") from None
    if len(grant_id) != 16:
        raise Refused(Reason.BAD_REQUEST, "grant is 32 hex digits")
    if not 1 <= limit <= MAX_ROWS:
        raise Refused(Reason.BAD_REQUEST, f"limit must be within 1..{MAX_ROWS}")
    return q, limit, grant_id


def metrics_text(consent: ConsentStore) -> bytes:
    """The API's ``/metrics`` (Prometheus text format), read from the consent store at each scrape."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, Metric

    class _Consent:
        def collect(self) -> Iterator[Metric]:
            c = consent.counts()
            yield CounterMetricFamily(
                "telematics_access_accesses", "requests served, each in the access log", value=c["accesses"]
            )
            yield CounterMetricFamily("telematics_access_grants", "owner grants kept", value=c["grants"])
            yield CounterMetricFamily(
                "telematics_access_revocations", "owner revocations kept", value=c["revocations"]
            )
            ref = CounterMetricFamily(
                "telematics_access_refusals", "requests refused, by reason", labels=["reason"]
            )
            for reason, n in sorted(consent.refusals().items()):
                ref.add_metric([reason], n)
            yield ref

    registry = CollectorRegistry()
    registry.register(_Consent())  # type: ignore[arg-type]
    return generate_latest(registry)


def app(service: AccessService) -> object:
    """The HTTP application (aiohttp); request bodies over 16 KiB are refused with 413."""
    import asyncio

    from aiohttp import web

    lock = asyncio.Lock()

    def respond(a: Answer) -> web.Response:
        return web.Response(status=a.status, body=a.body, content_type=a.content_type, headers=a.headers)

    async def run(fn: Callable[..., Answer], *args: object) -> web.Response:
        async with lock:
            return respond(await asyncio.to_thread(fn, *args))

    def statement(kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            return await run(service.add_statement, kind, await request.read())

        return handle

    def query(
        fn: Callable[[str, str, dict[str, str], bytes], Answer],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            headers = {k.lower(): v for k, v in request.headers.items()}
            return await run(fn, request.method, request.raw_path, headers, body)

        return handle

    application = web.Application(client_max_size=MAX_BODY_BYTES)
    application.router.add_post("/v1/grants", statement("grant"))
    application.router.add_post("/v1/revocations", statement("revocation"))
    application.router.add_get("/v1/rows", query(service.rows), allow_head=False)
    application.router.add_get("/v1/figures", query(service.figures), allow_head=False)

    async def metrics(request: web.Request) -> web.Response:
        async with lock:
            text = await asyncio.to_thread(metrics_text, service.consent)
        return web.Response(body=text, content_type="text/plain", charset="utf-8")

    application.router.add_get("/metrics", metrics)
    return application


def signed_headers(key: crypto.SigningKey, method: str, target: str, body: bytes = b"") -> dict[str, str]:
    """The headers a grantee sends with a request (what a client library would do)."""
    t = time.time_ns()
    sig = key.sign(request_message(method, target, t, hashlib.sha256(body).digest()))
    return {"X-VT-Key": key.public_key.hex(), "X-VT-Time": str(t), "X-VT-Signature": sig.hex()}


def iter_access_proofs(
    consent: ConsentStore, access_log: LocalLedger, device_id: str
) -> Iterator[dict[str, object]]:
    """For each access to ``device_id``: the record, its log entry, an inclusion path and the
    signed checkpoint it reaches (everything an owner needs to check it offline)."""
    for index, rb, rec in consent.accesses(device_id):
        cov = access_log.covering_checkpoint(index)
        if cov is None:
            access_log.checkpoint()
            cov = access_log.covering_checkpoint(index)
        assert cov is not None
        size, note = cov
        eb, sig = access_log.entry(index)
        grant = consent.grant(rec.grant_id)
        yield {
            "record": rb.hex(),
            "grant": None
            if grant is None
            else {"statement": grant.statement.hex(), "signature": grant.signature.hex()},
            "log_index": index,
            "entry": eb.hex(),
            "entry_signature": sig.hex(),
            "checkpoint_size": size,
            "checkpoint": note,
            "path": [p.hex() for p in access_log.inclusion(index, size)],
        }
