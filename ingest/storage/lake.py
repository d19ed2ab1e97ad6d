"""DuckLake: DuckDB's own lakehouse format, a catalog in PostgreSQL and the data in Parquet files.

The store is moving here (issue 13) because a DuckDB file has one writer and no reader in any other
process, while a lake takes several writer processes and readers that see each commit. This module is
the connection recipe, shared by the store, the analysts' tools and the tests:

* the ``ducklake`` and ``postgres_scanner`` extensions come from their Python wheels (for DuckDB
  ``DUCKDB_VERSION`` exactly) and are LOADed from those files, offline, with DuckDB's signature
  checks on; nothing is downloaded;
* ``attach`` names the catalog with a libpq connection string and, when creating the lake, the data
  path (a directory, or an ``s3://`` URL); readers attach ``read_only`` and need only the catalog,
  which records the data path.

An analyst does the same with the ``duckdb`` package or CLI of that version::

    LOAD '<site-packages>/duckdb_extension_ducklake/extensions/v1.5.5/ducklake.duckdb_extension';
    LOAD '<site-packages>/duckdb_extension_postgres_scanner/extensions/v1.5.5/postgres_scanner.duckdb_extension';
    ATTACH 'ducklake:postgres:host=127.0.0.1 port=5433 user=telematics dbname=telematics' AS lake (READ_ONLY);
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import duckdb

from common.errors import Fatal, Retryable

DUCKDB_VERSION = "1.5.5"  # the extension wheels are built for exactly this DuckDB
EXTENSIONS = ("ducklake", "postgres_scanner")


class LakeSetupError(Fatal):
    """DuckDB or an extension is missing or of another version: install the 'ingest' extra."""


class LakeError(Retryable):
    """The lake's catalog or data path is unreachable, or refused the commit: retry later."""


def extension_path(name: str) -> Path:
    """The extension file inside its wheel (``duckdb-extension-<name>``)."""
    spec = importlib.util.find_spec(f"duckdb_extension_{name}")
    if spec is None or not spec.submodule_search_locations:
        raise LakeSetupError(
            f"the DuckDB extension {name} is missing: install the 'ingest' extra (duckdb-extension-{name})"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "extensions" / f"v{DUCKDB_VERSION}" / f"{name}.duckdb_extension"
    if not path.is_file():
        found = sorted(p.parent.name for p in root.glob(f"extensions/*/{name}.duckdb_extension"))
        raise LakeSetupError(f"the {name} extension is built for DuckDB {found}, not {DUCKDB_VERSION}")
    return path


def load_extensions(con: Any) -> None:
    """LOAD the lake's extensions into ``con`` from their wheels (offline)."""
    if duckdb.__version__ != DUCKDB_VERSION:
        raise LakeSetupError(f"DuckLake needs duckdb {DUCKDB_VERSION}; this is duckdb {duckdb.__version__}")
    for name in EXTENSIONS:
        path = extension_path(name)
        try:
            con.execute(f"LOAD '{path}'")
        except duckdb.Error as exc:
            raise LakeSetupError(f"cannot load the DuckDB extension {path}: {exc}") from exc


def s3_secret(con: Any, s3: dict[str, str]) -> None:
    """Load the httpfs extension and create the S3 secret the lake's s3:// data path is read and
    written with: ``endpoint`` (host:port), ``key_id``, ``secret``, ``region``, ``url_style``
    (path | vhost), ``use_ssl`` (true | false)."""
    path = extension_path("httpfs")
    try:
        con.execute(f"LOAD '{path}'")
    except duckdb.Error as exc:
        raise LakeSetupError(f"cannot load the DuckDB extension {path}: {exc}") from exc
    opts = {k: v for k, v in s3.items() if v != ""}
    bad = [k for k in opts if k not in ("endpoint", "key_id", "secret", "region", "url_style", "use_ssl")]
    if bad or any("'" in v for v in opts.values()):
        raise LakeSetupError(f"bad S3 settings: {bad or 'a value contains a single quote'}")
    body = ", ".join(
        f"{k.upper()} {v}" if k == "use_ssl" else f"{k.upper()} '{v}'" for k, v in sorted(opts.items())
    )
    try:
        con.execute(f"CREATE OR REPLACE SECRET lake_s3 (TYPE s3{', ' + body if body else ''})")
    except duckdb.Error as exc:
        raise LakeSetupError(f"cannot create the lake's S3 secret: {exc}") from exc


def attach(
    con: Any,
    catalog: str,
    *,
    alias: str = "lake",
    data_path: str | None = None,
    read_only: bool = False,
    inline_rows: int | None = None,
) -> None:
    """ATTACH the lake whose catalog is the PostgreSQL database ``catalog`` (a libpq connection
    string) as ``alias``. ``data_path``: where a new lake keeps its Parquet files (a directory or an
    s3:// URL); an existing lake knows its own. ``inline_rows``: this connection's commits of fewer
    rows per table go into the catalog, not into a Parquet file each (an ATTACH option: DuckDB 1.5.5
    crashes in ``set_option('data_inlining_row_limit', …)`` on a lake that holds a view)."""
    if "'" in catalog or (data_path is not None and "'" in data_path):
        raise LakeSetupError("a lake catalog or data path cannot contain a single quote")
    opts = []
    if data_path is not None:
        opts.append(f"DATA_PATH '{data_path}'")
    if read_only:
        opts.append("READ_ONLY")
    if inline_rows is not None:
        opts.append(f"DATA_INLINING_ROW_LIMIT {int(inline_rows)}")
    sql = f"ATTACH 'ducklake:postgres:{catalog}' AS {alias}"
    if opts:
        sql += f" ({', '.join(opts)})"
    try:
        con.execute(sql)
    except duckdb.Error as exc:
        raise LakeError(f"cannot attach the lake (catalog {catalog}): {exc}") from exc


def set_parquet_compression(con: Any, codec: str, *, alias: str = "lake") -> None:
    """Make ``codec`` the compression of the Parquet files the lake ``alias`` writes from now on:
    a lake-wide option kept in the catalog (files written before keep theirs). Nothing is written
    to the catalog when it is the lake's codec already; DuckLake's default is snappy."""
    try:
        now = con.execute(
            f"SELECT value FROM {alias}.options() WHERE option_name = 'parquet_compression'"
        ).fetchall()
        if (now[0][0] if now else "snappy") != codec:
            con.execute(f"CALL {alias}.set_option('parquet_compression', ?)", [codec])
    except duckdb.Error as exc:
        raise LakeError(f"cannot set the lake's Parquet compression to {codec!r}: {exc}") from exc


def connect(
    catalog: str, *, alias: str = "lake", data_path: str | None = None, read_only: bool = False
) -> Any:
    """An in-memory DuckDB connection with the lake attached as ``alias``."""
    con = duckdb.connect()
    load_extensions(con)
    attach(con, catalog, alias=alias, data_path=data_path, read_only=read_only)
    return con
