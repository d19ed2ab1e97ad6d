"""A Kafka ConsumerRecord stand-in for feeding the Processor without a broker (it reads only these fields)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any = ()
