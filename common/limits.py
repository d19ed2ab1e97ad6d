"""Process limits: a broker or a load generator holds one open file (a socket) per MQTT session."""

from __future__ import annotations

import contextlib
import resource


def raise_open_files() -> int:
    """Raise this process's soft open-file limit to its hard limit (children inherit it); the new
    soft limit. Past the hard limit only root or the service manager (``LimitNOFILE=``) can go."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
