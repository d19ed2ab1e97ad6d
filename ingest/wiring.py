"""The composition root: one ``Config`` in, the objects the commands and the services run on out.

This is the only module that turns configuration paths into files, keys, stores and ledgers; the
pipeline, storage, ledger and ops modules take what they need as arguments. Every command of
``telematics`` and every service role is built here, so a change of where a thing lives, or of
which ledger backend anchors, touches one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import ConfigError
from ingest.config import Config

if TYPE_CHECKING:
    from ingest.ledger.base import Ledger
    from ingest.ledger.cosigning import WitnessEndpoint
    from ingest.ledger.evm import EvmLedger
    from ingest.ledger.local import LocalLedger
    from ingest.ops.access import AccessService
    from ingest.ops.proofs import Prover
    from ingest.pipeline.service import Role
    from ingest.storage.consent import ConsentStore
    from ingest.storage.registry import Registry
    from ingest.storage.store import Store
    from schemas.crypto import SigningKey


@dataclass(frozen=True)
class Paths:
    """Every file the ingest side reads or writes, resolved against ``data_dir``."""

    store: Path
    registry: Path
    ledger: Path
    operator_key: Path  # the ingest's Ed25519 key (PEM); signs ledger entries, checkpoints, statements
    operator_pub: Path  # its public key, hex: what auditors pin
    evm_key: Path  # the EVM account key (hex) of the EVM ledger backend
    ingest_status: Path  # the consumer's status file (JSON)
    bridge_status: Path  # the bridge's status file (JSON)
    sim_keys: Path  # the simulated fleet's device keys


def paths(cfg: Config) -> Paths:
    return Paths(
        store=cfg.path(cfg.store.path),
        registry=cfg.path(cfg.registry.path),
        ledger=cfg.path(cfg.ledger.path),
        operator_key=cfg.path(cfg.ledger.key_path),
        operator_pub=cfg.path(cfg.ledger.key_path + ".pub"),
        evm_key=cfg.path(cfg.ledger.evm.key_path),
        ingest_status=cfg.path("ingest-status.json"),
        bridge_status=cfg.path("bridge-status.json"),
        sim_keys=cfg.path(cfg.sim.keys_dir),
    )


# -- storage ------------------------------------------------------------------------------------------
def local_catalog(cfg: Config) -> str:
    """The libpq connection string of the local stack's PostgreSQL (``telematics stack up``)."""
    return f"host=127.0.0.1 port={cfg.stack.postgres_port} user=telematics dbname=telematics"


def catalog(cfg: Config) -> str:
    """The lake's catalog: ``[store] catalog``, else the local stack's PostgreSQL."""
    return cfg.store.catalog or local_catalog(cfg)


def data_path(cfg: Config) -> str:
    """Where the lake's Parquet files go: an s3:// URL as given, a directory resolved against data_dir."""
    d = cfg.store.data_path
    return d if "://" in d else str(cfg.path(d).absolute())


def s3_settings(cfg: Config) -> dict[str, str] | None:
    s3 = cfg.store.s3
    if not cfg.store.data_path.startswith("s3://"):
        return None
    secret = ""
    if s3.secret_path:
        try:
            secret = cfg.path(s3.secret_path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"store.s3.secret_path: cannot read the S3 secret key: {exc}") from exc
    return {
        "endpoint": s3.endpoint,
        "region": s3.region,
        "url_style": s3.url_style,
        "use_ssl": "true" if s3.use_ssl else "false",
        "key_id": s3.key_id,
        "secret": secret,
    }


def open_store(cfg: Config, *, read_only: bool = False, threads: int = 0) -> Store:
    """The configured store: the lake (several writers, live readers) or one DuckDB file.
    ``threads``: DuckDB's threads for its connection (0: DuckDB's default, one per core)."""
    if cfg.store.backend == "lake":
        from ingest.storage.lakestore import LakeStore

        return LakeStore(
            catalog(cfg),
            data_path(cfg),
            read_only=read_only,
            group=cfg.ingest.group_id,
            inline_rows=cfg.store.inline_rows,
            s3=s3_settings(cfg),
            threads=threads,
            parquet_compression=cfg.store.parquet_compression,
        )
    from ingest.storage.store import FileStore

    return FileStore(
        paths(cfg).store,
        read_only=read_only,
        checkpoint_threshold_mb=cfg.store.checkpoint_threshold_mb,
        threads=threads,
    )


def open_registry(cfg: Config) -> Registry:
    from ingest.storage.registry import Registry

    return Registry(paths(cfg).registry)


# -- keys and ledgers ---------------------------------------------------------------------------------
def operator_key(cfg: Config, *, create: bool = False) -> SigningKey:
    """The operator key; only the ingest creates it (``create``), every other command needs it to exist."""
    from ingest.ledger.base import load_key, load_or_create_key

    p = paths(cfg).operator_key
    return load_or_create_key(p) if create else load_key(p)


def operator_public_key(cfg: Config, given: bytes | None = None) -> bytes:
    """The operator public key an auditor pins: ``given`` (parsed by ``cli_args.public_key``), else
    the ``.pub`` beside the operator key."""
    if given:
        return given
    pub = paths(cfg).operator_pub
    if not pub.exists():
        raise ConfigError(f"no operator public key at {pub}: pass --operator-key")
    try:
        return bytes.fromhex(pub.read_text().strip())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{pub} does not hold the operator public key (64 hex digits): {exc}") from None


def open_log(cfg: Config, key: SigningKey | None = None, *, witnessed: bool = False) -> LocalLedger:
    """The local signed Merkle log: read-only without ``key``, appendable (and checkpointing) with it;
    ``witnessed``: its checkpoints are also submitted to the configured witnesses."""
    from ingest.ledger.local import LocalLedger

    lc = cfg.ledger
    return LocalLedger(
        paths(cfg).ledger,
        key,
        origin=lc.origin,
        checkpoint_every=lc.checkpoint_every,
        witnesses=witness_endpoints(cfg) if witnessed else (),
    )


def witness_endpoints(cfg: Config) -> list[WitnessEndpoint]:
    """The configured witnesses (``[[ledger.witnesses]]``), for the ledger and the access log."""
    from ingest.ledger.cosigning import WitnessEndpoint

    return [WitnessEndpoint(w.name, w.url, bytes.fromhex(w.public_key)) for w in cfg.ledger.witnesses]


def open_witness(cfg: Config, local: LocalLedger) -> EvmLedger | None:
    """The EVM backend's recorded chain anchors (read-only), for proofs; None with the local backend."""
    if cfg.ledger.backend != "evm":
        return None
    from ingest.ledger.evm import EvmLedger

    return EvmLedger(local, None, None, cfg.ledger.evm)


def open_ledger(cfg: Config) -> Ledger:
    """The configured ledger backend, ready to anchor (creates the operator key on first use): the
    local log, or the local log witnessed on an EVM chain."""
    lc = cfg.ledger
    key = operator_key(cfg, create=True)
    local = open_log(cfg, key, witnessed=True)
    if lc.backend == "local":
        return local
    from ingest.ledger.evm import EvmLedger
    from ingest.ledger.evm_client import EvmClient, EvmError

    try:
        evm_key = paths(cfg).evm_key.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"ledger.evm.key_path: cannot read the EVM account key: {exc}") from exc
    try:
        client = EvmClient(
            lc.evm.rpc_url,
            private_key=evm_key,
            to_address=lc.evm.to_address or None,
            chain_id=lc.evm.chain_id or None,
            timeout_s=min(lc.evm.timeout_s, 10.0),
        )
    except EvmError as exc:
        raise ConfigError(f"ledger.evm: {exc}") from exc
    return EvmLedger(local, client, key, lc.evm)


# -- service roles ------------------------------------------------------------------------------------
def status_path(cfg: Config, instance: int = 0) -> Path:
    """The status file of consumer ``instance`` (0: ``ingest-status.json``, else ``ingest-status-<i>.json``)."""
    p = paths(cfg).ingest_status
    return p if instance == 0 else p.with_name(f"{p.stem}-{instance}{p.suffix}")


def roles(
    cfg: Config,
    names: list[str],
    *,
    batch_log: Path | None = None,
    passthrough: bool = False,
    instance: int = 0,
) -> list[Role]:
    """The service roles (``bridge``, ``consumer``) with their resources; ``instance``: the
    consumer's number among several sharing the data directory."""
    out: list[Role] = []
    if "bridge" in names:
        from ingest.pipeline.bridge import Bridge

        out.append(Bridge(cfg, status_path=paths(cfg).bridge_status))
    if "consumer" in names:
        from ingest.pipeline.consumer import ConsumerService

        out.append(
            ConsumerService(
                cfg,
                ledger=open_ledger(cfg),
                store=open_store(cfg, threads=cfg.store.consumer_duckdb_threads),
                registry=open_registry(cfg),
                status_path=status_path(cfg, instance),
                batch_log=batch_log,
                passthrough=passthrough,
                instance=instance,
            )
        )
    return out


def consumer_process(config: str | None, instance: int, options: list[str] | None = None) -> Role:
    """One more consumer in a process of its own (``telematics ingest --consumers N``);
    ``options``: global options it inherits (logging)."""
    from ingest.pipeline.service import ChildProcess

    argv = ["-m", "ingest.cli", *(options or [])] + (["--config", config] if config else [])
    return ChildProcess(
        f"consumer {instance}", [*argv, "ingest", "--only", "consumer", "--instance", str(instance)]
    )


def read_status(cfg: Config, instance: int = 0) -> dict[str, Any] | None:
    """Consumer ``instance``'s status file, or None when there is none (yet)."""
    from ingest.pipeline.consumer import read_status_file

    return read_status_file(status_path(cfg, instance))


# -- consent and the data-access API ---------------------------------------------------------------
def access_origin(cfg: Config) -> str:
    """The access log's origin: the ledger's, with ``/accesses``."""
    return cfg.ledger.origin + "/accesses"


def open_consent(cfg: Config) -> ConsentStore:
    from ingest.storage.consent import ConsentStore

    return ConsentStore(cfg.path(cfg.consent.path))


def open_access_log(cfg: Config, key: SigningKey | None = None, *, witnessed: bool = False) -> LocalLedger:
    """The access log (the ledger's format, its own file and origin): read-only without ``key``."""
    from ingest.ledger.local import LocalLedger

    return LocalLedger(
        cfg.path(cfg.consent.access_log),
        key,
        origin=access_origin(cfg),
        witnesses=witness_endpoints(cfg) if witnessed else (),
    )


@contextmanager
def prover(cfg: Config, store: Store | None = None) -> Iterator[tuple[Prover, Store]]:
    """A prover for one bundle (as ``telematics prove``), over ``store``: a reader the caller keeps
    open, or None: a new read-only snapshot, closed after."""
    from ingest.ops.proofs import Prover

    own = store is None
    reader = open_store(cfg, read_only=True) if store is None else store
    try:
        registry = open_registry(cfg)
        try:
            operator = operator_key(cfg)
            local = open_log(cfg, operator)
            yield Prover(reader, registry, local, operator, witness=open_witness(cfg, local)), reader
        finally:
            registry.close()
    finally:
        if own:
            reader.close()


class ServedProvers:
    """The data-access API's provers, one request at a time. On the lake, one reader stays open
    across requests and moves to the latest snapshot for each (``Store.refresh``: milliseconds;
    opening a reader attaches the lake anew, ~0.5 s of CPU), its snapshot released in between. A
    DuckDB file's reader is closed after each request: held open, it would lock the ingest out."""

    def __init__(self, cfg: Config) -> None:
        import threading

        self.cfg = cfg
        self._reader: Store | None = None
        self._lock = threading.Lock()  # one request at a time (as the API calls it): one reader

    @contextmanager
    def open(self) -> Iterator[tuple[Prover, Store]]:
        with self._lock, self._open() as p:
            yield p

    @contextmanager
    def _open(self) -> Iterator[tuple[Prover, Store]]:
        from ingest.storage.store import StoreError

        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                reader.refresh()
            except StoreError:  # the catalog restarted, say: a new reader
                self._close(reader)
                reader = None
        if reader is None:
            reader = open_store(self.cfg, read_only=True)
        try:
            with prover(self.cfg, reader) as p:
                yield p
        finally:
            if reader.snapshot_ns is None:  # not a live snapshot: nobody may write while it is open
                self._close(reader)
            else:
                try:
                    reader.release()  # no catalog transaction left open between requests
                    self._reader = reader
                except StoreError:
                    self._close(reader)

    @staticmethod
    def _close(reader: Store) -> None:
        import contextlib

        with contextlib.suppress(Exception):
            reader.close()

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._close(self._reader)
                self._reader = None


def access_service(cfg: Config, *, witnessed: bool = False) -> AccessService:
    """The data-access API's service: consent store, access log (signed with the operator key)."""
    from ingest.ops.access import AccessService

    c = cfg.consent
    return AccessService(
        open_consent(cfg),
        open_access_log(cfg, operator_key(cfg), witnessed=witnessed),
        ServedProvers(cfg),
        rate=c.rate_per_s,
        burst=c.burst,
    )
