"""One error tree (common/errors.py): every public error class of the edge agent and the ingest
says what its caller does next by deriving from exactly one branch."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import common
import edge_agent
import ingest
from common.errors import Fatal, Refused, Retryable, TelematicsError

BRANCHES = (Fatal, Refused, Retryable)


def _error_classes() -> list[type[BaseException]]:
    out = []
    for pkg in (common, edge_agent, ingest):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            try:
                mod = importlib.import_module(info.name)
            except ImportError:  # an optional dependency (the EVM backend's web3) is not installed
                continue
            for name, obj in vars(mod).items():
                if (
                    inspect.isclass(obj)
                    and issubclass(obj, BaseException)
                    and obj.__module__ == mod.__name__
                    and not name.startswith("_")
                ):
                    out.append(obj)
    return out


# Errors that never leave their adapter: it maps them into the tree where it calls the library.
ADAPTER_INTERNAL = {"EvmError", "EvmRejected"}


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_error_is_on_exactly_one_branch(cls: type[BaseException]) -> None:
    if cls.__name__ in ADAPTER_INTERNAL or cls in (TelematicsError, *BRANCHES):
        return
    assert [b.__name__ for b in BRANCHES if issubclass(cls, b)] != [], f"{cls} is outside the tree"
    assert sum(issubclass(cls, b) for b in BRANCHES) == 1, f"{cls} is on more than one branch"


def test_the_adapter_internal_errors_are_mapped() -> None:
    """The EVM client's errors become LedgerError (retry) at the EVM ledger's boundary."""
    src = inspect.getsource(importlib.import_module("ingest.ledger.evm"))
    assert "except EvmError as exc:" in src and 'raise LedgerError(f"EVM node: {exc}")' in src
