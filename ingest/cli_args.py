"""Argument types of the `telematics` command line: each one either gives a value or one line that
says what is wrong (argparse prints it with the usage and exits 2)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path

from schemas.witness import Cosigner

_HEX = re.compile(r"(0x)?([0-9a-fA-F]{64})")


def public_key(text: str) -> bytes:
    """An Ed25519 public key: 64 hex digits (``0x`` allowed), or a file holding them (the ``.pub``
    that `edge-agent keygen` writes). Never a private key: the ingest side needs none."""
    given = text.strip()
    p = Path(given)
    if not _HEX.fullmatch(given) and not p.exists() and (os.sep in given or p.suffix in (".pub", ".key")):
        raise argparse.ArgumentTypeError(
            f"{p}: no such file (a public key is 64 hex digits or its .pub file)"
        )
    if not _HEX.fullmatch(given) and p.is_file():
        try:
            data = p.read_text().strip()
        except (OSError, UnicodeDecodeError):
            raise argparse.ArgumentTypeError(f"{p} is not a public key file (64 hex digits)") from None
        if "PRIVATE KEY" in data:
            raise argparse.ArgumentTypeError(
                f"{p} is a PRIVATE key: give its public key (the .pub beside it); the ingest never needs a"
                " vehicle's private key"
            )
        m = _HEX.fullmatch(data)
        if m is None:
            raise argparse.ArgumentTypeError(f"{p} does not hold an Ed25519 public key (64 hex digits)")
        given = data
    m = _HEX.fullmatch(given)
    if m is None:
        raise argparse.ArgumentTypeError(
            f"not an Ed25519 public key: expected 64 hex digits or a .pub file, got {text[:80]!r}"
        )
    return bytes.fromhex(m.group(2))


def _named_key(text: str, what: str) -> tuple[str, bytes]:
    name, sep, key = text.rpartition("=")
    if not sep or not name or any(c.isspace() for c in name):
        raise argparse.ArgumentTypeError(
            f"expected {what}=KEY (KEY: 64 hex digits or a .pub file), got {text[:80]!r}"
        )
    return name, public_key(key)


def origin_key(text: str) -> tuple[str, bytes]:
    """``ORIGIN=KEY``: a log's checkpoint origin and its operator's Ed25519 public key."""
    return _named_key(text, "ORIGIN")


def key_name(text: str) -> str:
    """A signed-note key name: not empty, no whitespace, no '+'."""
    if not text or "+" in text or any(c.isspace() or ord(c) < 0x20 for c in text):
        raise argparse.ArgumentTypeError(f"a key name is not empty and has no space or '+': {text!r}")
    return text


def cosigner(text: str) -> Cosigner:
    """``NAME=KEY``: a witness's key name and its Ed25519 public key."""
    name, key = _named_key(text, "NAME")
    return Cosigner(key_name(name), key)


def instant_ns(text: str) -> int:
    """A moment: nanoseconds since the epoch, ISO 8601 (``2026-12-01T10:00Z``; no zone: UTC) or ``now``."""
    t = text.strip()
    if t.isdigit():
        return int(t)
    if t.lower() == "now":
        return time.time_ns()
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (ISO 8601 such as 2026-12-01T10:00Z, nanoseconds since the epoch, or now)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


GLOBAL_FLAGS = ("-v", "--verbose")
GLOBAL_VALUES = ("--config", "--log-level", "--log-format")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg`` (and ``exc``)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def hoist_global_options(argv: list[str]) -> list[str]:
    """``telematics CMD ... --config X`` means ``telematics --config X CMD ...``: global options are
    moved before the subcommand wherever they are given (an exact token only; ``--`` ends the scan)."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest += argv[i:]
            break
        if a in GLOBAL_FLAGS:
            front.append(a)
        elif a in GLOBAL_VALUES and i + 1 < len(argv):
            front += [a, argv[i + 1]]
            i += 1
        elif any(a.startswith(g + "=") for g in GLOBAL_VALUES):
            front.append(a)
        else:
            rest.append(a)
        i += 1
    return front + rest
