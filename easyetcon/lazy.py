"""Package exports imported on first use (PEP 562).

The host imports every installed plugin package to list its commands; a package whose
``__init__`` imported its modules eagerly would make ``easyetcon --help`` load torch. A package
instead declares ``name -> module`` and binds what this returns::

    __getattr__, __dir__ = lazy_exports(__name__, {"EditChain": "easyetcon.chain", ...})
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package``: each name of ``exports``
    is imported from its module when first used, then bound on the package (later lookups are
    ordinary attribute reads)."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
