"""The string shapes of the contract, one list: each pattern matches the WHOLE string.

msgspec checks ``pattern`` with Python's ``re.search``, where ``$`` also matches just before a final
newline, so ``^[0-9a-f]{32}$`` would accept 32 hex digits followed by ``\\n``. Every pattern here ends
in ``$(?!\\n)``: the same meaning under Python and under JSON Schema's ECMA-262 regular expressions
(where ``$`` is already the end of the string), so the exported JSON Schemas say what the code does.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta


def whole(regex: str) -> str:
    """A pattern that matches ``regex`` against the whole string, and nothing after it."""
    return f"^(?:{regex})$(?!\\n)"


HexId16 = Annotated[str, Meta(pattern=whole("[0-9a-f]{16}"))]  # key ids
HexId32 = Annotated[str, Meta(pattern=whole("[0-9a-f]{32}"))]  # device ids
Hex = Annotated[str, Meta(pattern=whole("(?:[0-9a-f]{2})*"))]  # bytes, lowercase hex
Hex32 = Annotated[str, Meta(pattern=whole("[0-9a-f]{64}"))]  # 32 bytes: hashes, public keys
Hex64 = Annotated[str, Meta(pattern=whole("[0-9a-f]{128}"))]  # 64 bytes: signatures
DecimalKey = Annotated[str, Meta(pattern=whole("0|[1-9][0-9]*"))]  # a number as a JSON object key
Name = Annotated[str, Meta(min_length=1, max_length=64, pattern=whole("[A-Za-z0-9_.-]+"))]
