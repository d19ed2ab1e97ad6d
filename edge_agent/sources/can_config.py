"""``[can]`` in the agent's TOML, apart from the CAN source so the config loads without python-can."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

VssPath = Annotated[str, Meta(pattern=r"^(Vehicle(\.[A-Za-z0-9_]+)+)?$", max_length=256)]


class CanConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # The signal database (DBC; cantools also reads KCD, SYM and ARXML by file extension).
    dbc_path: str = "ev.dbc"
    # A python-can interface name ("socketcan" on Linux, "virtual" for tests) and its channel.
    interface: str = "socketcan"
    channel: str = "can0"
    # 0: leave the bitrate alone (SocketCAN sets it with `ip link set can0 type can bitrate ...`).
    bitrate: Annotated[int, Meta(ge=0, le=10_000_000)] = 0
    # DBC signal name (or "Message.Signal") -> VSS path; wins over the DBC's VSSPath attribute.
    signals: dict[str, VssPath] = {}
