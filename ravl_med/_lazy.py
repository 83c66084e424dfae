"""Lazy public names for a package (PEP 562): each is imported from its module on first use.

Used by packages whose modules import heavy libraries (torch, MONAI, scikit-learn) while the command
line only needs a light corner of them for ``--help`` and config validation.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` for ``exports`` (public name -> submodule name).

    Example, in a package's ``__init__.py``::

        __getattr__, __dir__ = lazy_exports(__name__, {"RaVLDiscoverer": "ravl"})
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
