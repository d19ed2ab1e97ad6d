"""The agent's persistent chain state: boot counter, next sequence number, chain head.

Written atomically (temp file, fsync, rename) after every block is sealed and before it
is published, so a restart never reuses a sequence number and continues the hash chain.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from schemas.crypto import ZERO_HASH


class ChainState(msgspec.Struct):
    device_id: str
    boot: int = 0
    next_seq: int = 0
    head: bytes = ZERO_HASH


class StateStore:
    def __init__(self, path: str | Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync

    def load(self, device_id: str) -> ChainState:
        try:
            state = msgspec.json.decode(self.path.read_bytes(), type=ChainState)
        except FileNotFoundError:
            return ChainState(device_id=device_id)
        if state.device_id != device_id:
            raise ValueError(f"state file {self.path} belongs to device {state.device_id}, not {device_id}")
        return state

    def save(self, state: ChainState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with open(tmp, "wb") as f:
            f.write(msgspec.json.encode(state))
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.path)
        if self.fsync:
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def begin_boot(self, device_id: str) -> ChainState:
        """Load the state and count this start as a new boot."""
        state = self.load(device_id)
        state.boot += 1
        self.save(state)
        return state
