"""The installed project's version, for `--version` of both command-line tools."""

from __future__ import annotations


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("vehicle-telematics")
    except PackageNotFoundError:
        return "(not installed)"
