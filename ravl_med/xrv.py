"""torchxrayvision, imported without its process-wide side effect.

Importing torchxrayvision runs ``warnings.filterwarnings("ignore")``, which would silence every
warning of the whole process (including ravl_med's own). Import it through :func:`torchxrayvision`.
"""

from __future__ import annotations

import warnings
from types import ModuleType

__all__ = ["torchxrayvision"]


def torchxrayvision() -> ModuleType:
    """The ``torchxrayvision`` module, with the caller's warning filters left as they were."""
    saved = warnings.filters[:]
    try:
        import torchxrayvision as xrv  # noqa: PLC0415
        import torchxrayvision.datasets  # noqa: F401, PLC0415
    finally:
        warnings.filters[:] = saved
    return xrv
