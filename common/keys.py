"""Device keys on disk: PKCS#8 PEM, mode 0600, never overwritten."""

from __future__ import annotations

import os
from pathlib import Path

from common.errors import Fatal
from schemas.crypto import SigningKey, device_id_for


class KeyFileError(Fatal):
    """The key file is missing, unreadable, exists already or has unsafe permissions."""


def generate_key_file(path: str | Path) -> SigningKey:
    """Create a new Ed25519 key at ``path`` (mode 0600). Refuses to overwrite an existing file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{p} exists already; refusing to overwrite a device key") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(key.to_pem())
        f.flush()
        os.fsync(f.fileno())
    pub = p.with_suffix(p.suffix + ".pub")
    pub.write_text(key.public_key.hex() + "\n")
    return key


def load_key_file(path: str | Path) -> SigningKey:
    p = Path(path)
    try:
        mode = p.stat().st_mode & 0o777
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise KeyFileError(f"device key {p} does not exist; run `edge-agent keygen` first") from exc
    if mode & 0o077:
        raise KeyFileError(f"device key {p} is readable by others (mode {mode:o}); chmod 600 it")
    try:
        return SigningKey.from_pem(data)
    except ValueError as exc:
        raise KeyFileError(f"{p} is not an Ed25519 private key: {exc}") from exc


def device_id_of(key: SigningKey) -> str:
    return device_id_for(key.public_key)
